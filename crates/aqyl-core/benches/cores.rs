//! Criterion benchmarks of the pure cores on the hot path: decoding a CityPulse traffic row,
//! window statistics, SAX words, and line-protocol encoding.
//!
//! ```text
//! cargo bench -p aqyl-core --bench cores
//! ```

#![allow(missing_docs, clippy::unwrap_used)]

use aqyl_core::ingest::decode::Registry;
use aqyl_core::ingest::descriptor::SensorType;
use aqyl_core::windows::sax::{sax_word, SaxParams};
use aqyl_core::windows::window::WindowStats;
use aqyl_core::{Aggregate, RawMessage, Scope};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use std::hint::black_box;
use std::path::Path;

const TRAFFIC: &str = include_str!("../../../config/sensors/traffic.toml");

fn decode(c: &mut Criterion) {
    let registry = Registry::new(vec![SensorType::from_toml(
        Path::new("traffic.toml"),
        TRAFFIC,
    )
    .unwrap()]);
    let msg = RawMessage {
        topic: "city/traffic/158324".into(),
        payload: br#"{"status":"OK","avgMeasuredTime":74,"avgSpeed":50,"extID":668,"medianMeasuredTime":74,"TIMESTAMP":"2014-08-01T07:50:00","vehicleCount":5,"_id":20746220,"REPORT_ID":158324}"#.to_vec(),
        received_at: 0,
    };
    let mut g = c.benchmark_group("decode");
    g.throughput(Throughput::Elements(1));
    g.bench_function("citypulse_traffic_row", |b| {
        b.iter(|| registry.decode(black_box(&msg), 65536).unwrap())
    });
    g.finish();
}

fn series(n: usize) -> Vec<f64> {
    let mut rng = fastrand::Rng::with_seed(1);
    (0..n)
        .map(|i| 40.0 + 20.0 * ((i as f64) / 10.0).sin() + rng.f64())
        .collect()
}

fn windows(c: &mut Criterion) {
    let mut g = c.benchmark_group("window_stats");
    for n in [12usize, 48, 1000] {
        let values = series(n);
        g.throughput(Throughput::Elements(n as u64));
        g.bench_with_input(BenchmarkId::from_parameter(n), &values, |b, v| {
            b.iter(|| WindowStats::compute(&mut black_box(v.clone())).unwrap())
        });
    }
    g.finish();
}

fn sax(c: &mut Criterion) {
    let params = SaxParams::default();
    let mut g = c.benchmark_group("sax_word");
    for n in [48usize, 2880] {
        let values = series(n);
        g.throughput(Throughput::Elements(n as u64));
        g.bench_with_input(BenchmarkId::from_parameter(n), &values, |b, v| {
            b.iter(|| sax_word(black_box(v), &params))
        });
    }
    g.finish();
}

fn line_protocol(c: &mut Criterion) {
    let a = Aggregate {
        sensor_type: "traffic".into(),
        scope: Scope::Sensor,
        subject: "158324".into(),
        field: "avgSpeed".into(),
        window: "5m".into(),
        start: 1_406_872_200_000,
        end: 1_406_872_500_000,
        stats: WindowStats::compute(&mut series(12)).unwrap(),
        sax: None,
        sax_code: None,
    };
    let mut out = String::with_capacity(256);
    c.bench_function("line_protocol/aggregate", |b| {
        b.iter(|| {
            out.clear();
            black_box(&a).write_line(&mut out).unwrap();
        })
    });
}

criterion_group!(benches, decode, windows, sax, line_protocol);
criterion_main!(benches);
