//! In-process throughput of the dataflow alone (decode, watermark, exchange, windows), without
//! MQTT: observations per second for 1 and 2 workers over the demo-like traffic workload.
//!
//! ```text
//! cargo bench -p aqyl-dataflow --bench pipeline -- --messages 500000
//! cargo bench -p aqyl-dataflow --bench pipeline -- --messages 500000 --quality
//! ```

#![allow(clippy::unwrap_used, clippy::expect_used)] // a benchmark driver

use aqyl_core::ingest::decode::Registry;
use aqyl_core::ingest::descriptor::SensorType;
use aqyl_core::RawMessage;
use aqyl_dataflow::quality::QualitySpec;
use aqyl_dataflow::{run_batch, PipelineSpec};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

const DESCRIPTOR: &str = include_str!("../../../config/sensors/traffic.toml");

fn workload(n: usize, sensors: usize) -> Vec<RawMessage> {
    let mut rng = fastrand::Rng::with_seed(3);
    (0..n)
        .map(|i| {
            let sensor = 158_324 + i % sensors;
            let minutes = 5 * (i / sensors) as i64;
            let (d, h, m) = (1 + minutes / 1440, (minutes / 60) % 24, minutes % 60);
            let payload = format!(
                r#"{{"status":"OK","avgMeasuredTime":{t},"avgSpeed":{s},"extID":668,"medianMeasuredTime":{t},"TIMESTAMP":"2014-08-{d:02}T{h:02}:{m:02}:00","vehicleCount":{c},"_id":{i},"REPORT_ID":{sensor}}}"#,
                t = rng.u32(30..120),
                s = rng.u32(10..90),
                c = rng.u32(0..40),
                d = d.min(28),
            );
            RawMessage { topic: format!("city/traffic/{sensor}"), payload: payload.into_bytes(), received_at: 0 }
        })
        .collect()
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let n = args
        .iter()
        .position(|a| a == "--messages")
        .and_then(|i| args.get(i + 1)?.parse().ok())
        .unwrap_or(500_000);
    let sensors: usize = args
        .iter()
        .position(|a| a == "--sensors")
        .and_then(|i| args.get(i + 1)?.parse().ok())
        .unwrap_or(50);
    // `--quality` scores every stream as `aqyl run` does by default.
    let quality = args
        .iter()
        .any(|a| a == "--quality")
        .then(|| QualitySpec::from_config(&Default::default(), false));
    let types = vec![SensorType::from_toml(Path::new("traffic.toml"), DESCRIPTOR).unwrap()];
    let registry = aqyl_dataflow::shared(Registry::new(types));
    println!(
        "workload: {n} CityPulse traffic messages, {sensors} sensors, the shipped traffic windows (5m; 4h with SAX){}",
        if quality.is_some() { ", quality scoring" } else { "" }
    );
    for workers in [1, 2] {
        let mut rates = Vec::new();
        for _ in 0..3 {
            let msgs = workload(n, sensors);
            let spec = PipelineSpec {
                corroborate: Default::default(),
                registry: registry.clone(),
                workers,
                window: Duration::from_secs(300),
                allowed_lateness: Duration::from_secs(3600),
                idle_timeout: None,
                max_payload_bytes: 65536,
                max_future: None,
                update_horizon: None,
                rule_timing: Default::default(),
                state_ttl: None,
                quality,
                rules: Default::default(),
            };
            let start = Instant::now();
            let batch = run_batch(spec, msgs).unwrap();
            let secs = start.elapsed().as_secs_f64();
            assert!(batch.deadletters.is_empty() && !batch.aggregates.is_empty());
            rates.push(n as f64 / secs);
        }
        rates.sort_by(f64::total_cmp);
        println!(
            "workers {workers}: median {:.0} obs/s (min {:.0}, max {:.0})",
            rates[1], rates[0], rates[2]
        );
    }
    state_per_sensor(&registry, 20_000);
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// Memory held per sensor while its windows are open: `sensors` traffic sensors report every
/// 5 minutes for 4 hours (48 rows), so each holds a full 4-hour SAX window of two fields plus
/// its open 5-minute windows. Messages are generated as they are sent and closed windows are
/// dropped as they come out, so the growth in resident memory is the open state.
fn state_per_sensor(registry: &aqyl_dataflow::SharedRegistry, sensors: usize) {
    use aqyl_core::metrics::Metrics;
    use aqyl_dataflow::{start, Outputs};
    let (agg_tx, mut agg_rx) = tokio::sync::mpsc::channel(1024);
    let (dl_tx, _dl_rx) = tokio::sync::mpsc::channel(1);
    let drain = std::thread::spawn(move || while agg_rx.blocking_recv().is_some() {});
    let metrics = Arc::new(Metrics::default());
    let spec = PipelineSpec {
        corroborate: Default::default(),
        registry: registry.clone(),
        workers: 2,
        window: Duration::from_secs(300),
        allowed_lateness: Duration::from_secs(600),
        idle_timeout: None,
        max_payload_bytes: 65536,
        max_future: None,
        update_horizon: None,
        rule_timing: Default::default(),
        state_ttl: None,
        quality: None,
        rules: Default::default(),
    };
    let (router, running) = start(
        spec,
        1024,
        Outputs {
            aggregates: agg_tx,
            deadletters: dl_tx,
            events: tokio::sync::mpsc::channel(1).0,
            quality: tokio::sync::mpsc::channel(1).0,
            readings: None,
        },
        metrics.clone(),
    )
    .unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let before = rss_kib();
    // Rounds from 00:00 UTC-local+2 so that all 48 fall into one 4-hour window.
    for round in 0..48usize {
        let (h, m) = (2 + round * 5 / 60, round * 5 % 60);
        for s in 0..sensors {
            let payload = format!(
                r#"{{"avgSpeed":{},"vehicleCount":{},"avgMeasuredTime":60,"medianMeasuredTime":60,"TIMESTAMP":"2014-08-01T{h:02}:{m:02}:00"}}"#,
                30 + (s + round) % 50,
                (s * 7 + round) % 40
            );
            router.route_blocking(RawMessage {
                topic: format!("city/traffic/{}", 100_000 + s),
                payload: payload.into_bytes(),
                received_at: 0,
            });
        }
    }
    let total = (48 * sensors) as u64;
    while metrics.snapshot().observations < total {
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(300));
    let open = rss_kib();
    println!(
        "state: {sensors} sensors with open 4-hour SAX windows (48 values x 2 fields) and 5-minute windows: +{} MiB resident, about {} bytes per sensor",
        open.saturating_sub(before) / 1024,
        open.saturating_sub(before) * 1024 / sensors as u64
    );
    drop(router);
    running.join().unwrap();
    drain.join().unwrap();
}
