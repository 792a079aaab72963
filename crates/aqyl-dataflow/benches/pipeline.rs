//! In-process throughput of the dataflow alone (decode, watermark, exchange, windows), without
//! MQTT: observations per second for 1 and 2 workers over the demo-like traffic workload.
//!
//! ```text
//! cargo bench -p aqyl-dataflow --bench pipeline -- --messages 500000
//! ```

#![allow(clippy::unwrap_used, clippy::expect_used)] // a benchmark driver

use aqyl_core::decode::Registry;
use aqyl_core::descriptor::SensorType;
use aqyl_core::RawMessage;
use aqyl_dataflow::{run_batch, PipelineSpec};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

const DESCRIPTOR: &str = include_str!("../../../config/sensors/traffic.toml");

fn workload(n: usize) -> Vec<RawMessage> {
    let mut rng = fastrand::Rng::with_seed(3);
    (0..n)
        .map(|i| {
            let sensor = 158_324 + i % 50;
            let minutes = 5 * (i / 50) as i64;
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
    let types = vec![SensorType::from_toml(Path::new("traffic.toml"), DESCRIPTOR).unwrap()];
    let registry = Arc::new(Registry::new(types));
    println!("workload: {n} CityPulse traffic messages, 50 sensors, 5-minute windows");
    for workers in [1, 2] {
        let mut rates = Vec::new();
        for _ in 0..3 {
            let msgs = workload(n);
            let spec = PipelineSpec {
                registry: registry.clone(),
                workers,
                window: Duration::from_secs(300),
                allowed_lateness: Duration::from_secs(3600),
                idle_timeout: None,
                max_payload_bytes: 65536,
                update_horizon: None,
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
}
