//! Durable state, measured: how fast the ingest log is written, how long a restart takes to
//! replay it (recovery time per million logged readings, through the shipped dataflow), and
//! how big a checkpoint is per sensor.
//!
//! ```text
//! cargo bench -p aqyl --bench recovery -- --messages 1000000 --sensors 449
//! ```
//! The workload is the demo's (`aqyl-sim` road segments, one CityPulse row each per simulated
//! 5 minutes); the dataflow is `aqyl run`'s with the shipped configuration (windows, SAX,
//! areas, rules, quality), fed from the log instead of a broker, with no sink.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a benchmark driver: failing loudly is right

use aqyl_core::metrics::Metrics;
use aqyl_core::RawMessage;
use aqyl_dataflow::checkpoint::Control;
use aqyl_dataflow::{Durable, Outputs, Receivers};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

fn workload(n: usize, sensors: usize) -> Vec<RawMessage> {
    use aqyl_sim::sensors::{CityConfig, SensorType};
    use aqyl_sim::simulation::{SimConfig, Simulation};
    let start = aqyl_sim::time::parse_time("2014-08-01T00:00:00").unwrap();
    let city = CityConfig {
        sensors,
        areas: 8,
        types: vec![SensorType::Traffic],
    };
    let config = SimConfig::new(city, start, chrono::Duration::days(3650), 7);
    Simulation::new(config)
        .unwrap()
        .take(n)
        .map(|m| RawMessage {
            topic: m.topic.clone(),
            payload: m.encode(None),
            received_at: 0,
        })
        .collect()
}

/// Drains every output channel on its own thread, so the workers never wait.
fn drain(receivers: Receivers) {
    let Receivers {
        mut aggregates,
        mut deadletters,
        mut events,
        mut quality,
    } = receivers;
    std::thread::spawn(move || while aggregates.blocking_recv().is_some() {});
    std::thread::spawn(move || while deadletters.blocking_recv().is_some() {});
    std::thread::spawn(move || while events.blocking_recv().is_some() {});
    std::thread::spawn(move || while quality.blocking_recv().is_some() {});
}

fn main() {
    let n = aqyl_tests::arg("--messages", 1_000_000);
    let sensors = aqyl_tests::arg("--sensors", 449);
    let config = aqyl_tests::shipped_config();
    let loaded = aqyl_core::config::load(&config.path().join("aqyl.toml"), |_| None).unwrap();
    let registry = aqyl_dataflow::shared(aqyl_core::ingest::decode::Registry::new(
        loaded.sensor_types.clone(),
    ));
    let spec = aqyl::service::pipeline_spec(&loaded, registry);
    let workers = spec.workers;
    let msgs = workload(n, sensors);
    let bytes: usize = msgs.iter().map(|m| m.payload.len() + m.topic.len()).sum();
    println!(
        "workload: {n} messages ({} bytes avg), {sensors} sensors, shipped configuration, {workers} workers",
        bytes / n.max(1)
    );

    let state = tempfile::tempdir().unwrap();
    let store = aqyl_state::Store::open(state.path()).unwrap();
    let started = Instant::now();
    let mut seq = 1;
    for group in msgs.chunks(4096) {
        store.append(seq, group).unwrap();
        seq += group.len() as u64;
    }
    let logged = started.elapsed();
    let file = std::fs::metadata(state.path().join(aqyl_state::FILE))
        .unwrap()
        .len();
    println!(
        "ingest log: {n} messages in groups of 4096 (one fsync each) in {:.2} s = {:.0} msg/s; file {} MiB",
        logged.as_secs_f64(),
        n as f64 / logged.as_secs_f64(),
        file >> 20
    );

    let (outputs, receivers) = Outputs::channels();
    drain(receivers);
    let metrics = Arc::new(Metrics::default());
    let (control, mut taken) = Control::new(workers, vec![]);
    let control = Arc::new(control);
    let durable = Durable {
        control: control.clone(),
        restore: None,
        held: Default::default(),
    };
    let (router, running) =
        aqyl_dataflow::start_durable(spec, 16_384, outputs, metrics.clone(), durable).unwrap();
    let started = Instant::now();
    let replayed = aqyl::durable::recover(&store, &router, None, &metrics).unwrap();
    while metrics.observations.load(Relaxed)
        + metrics.snapshot().rejected_total()
        + metrics.duplicates.load(Relaxed)
        < replayed
    {
        std::thread::sleep(Duration::from_millis(5));
    }
    let recovered = started.elapsed();
    println!(
        "recovery: {replayed} logged messages replayed through the dataflow in {:.2} s = {:.2} s per million ({:.0} msg/s)",
        recovered.as_secs_f64(),
        recovered.as_secs_f64() * 1e6 / replayed.max(1) as f64,
        replayed as f64 / recovered.as_secs_f64()
    );

    let started = Instant::now();
    control.request(true);
    let snapshot = taken.blocking_recv().unwrap();
    let paused = started.elapsed();
    let encoded = snapshot.encode().unwrap();
    println!(
        "checkpoint: {} KiB for {sensors} sensors = {:.1} KiB per sensor (taken in {:.1} ms, every open window, SAX, rule and quality state included)",
        encoded.len() >> 10,
        encoded.len() as f64 / 1024.0 / sensors as f64,
        paused.as_secs_f64() * 1e3
    );
    drop(router);
    running.join().unwrap();
}
