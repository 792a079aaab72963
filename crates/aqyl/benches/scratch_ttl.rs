#![allow(missing_docs, clippy::unwrap_used)]
use aqyl_core::metrics::Metrics;
use aqyl_core::RawMessage;
use aqyl_dataflow::checkpoint::Control;
use aqyl_dataflow::{Durable, Outputs, Receivers};
use chrono::TimeZone;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

fn row(id: &str, t: i64) -> RawMessage {
    let local = chrono_tz::Europe::Copenhagen
        .timestamp_opt(t, 0)
        .unwrap()
        .format("%Y-%m-%dT%H:%M:%S");
    RawMessage { topic: format!("city/traffic/{id}"), payload: format!(r#"{{"status":"OK","avgMeasuredTime":60,"avgSpeed":50,"extID":668,"medianMeasuredTime":60,"TIMESTAMP":"{local}","vehicleCount":5,"_id":1,"REPORT_ID":1}}"#).into_bytes(), received_at: 0 }
}

fn main() {
    let n = aqyl_tests::arg("--ids", 20000);
    let config = aqyl_tests::shipped_config();
    let path = config.path().join("aqyl.toml");
    let text = std::fs::read_to_string(&path)
        .unwrap()
        .replace("state_ttl = \"1d\"", "state_ttl = \"1h\"")
        .replace("idle_timeout = \"30s\"", "idle_timeout = \"0s\"");
    std::fs::write(&path, text).unwrap();
    let loaded = aqyl_core::config::load(&path, |_| None).unwrap();
    let registry = aqyl_dataflow::shared(aqyl_core::ingest::decode::Registry::new(
        loaded.sensor_types.clone(),
    ));
    let spec = aqyl::service::pipeline_spec(&loaded, registry);
    println!("ttl {:?}", spec.state_ttl);
    let (outputs, receivers) = Outputs::channels();
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
    let metrics = Arc::new(Metrics::default());
    let (control, mut taken) = Control::new(2, vec![]);
    let control = Arc::new(control);
    let (router, running) = aqyl_dataflow::start_durable(
        spec,
        16384,
        outputs,
        metrics.clone(),
        Durable {
            control: control.clone(),
            restore: None,
        },
    )
    .unwrap();
    let t0 = 1_406_851_200i64;
    for i in 0..n {
        router.route_blocking(row(&format!("x{i}"), t0 + (i % 60) as i64));
    }
    let report = |label: &str, taken: &mut tokio::sync::mpsc::UnboundedReceiver<_>| {
        control.request(false);
        let snap: aqyl_dataflow::checkpoint::Snapshot = taken.blocking_recv().unwrap();
        let mut sizes: std::collections::BTreeMap<String, usize> = Default::default();
        for w in &snap.workers {
            for (name, b) in &w.operators {
                *sizes.entry(name.clone()).or_default() += b.len();
            }
        }
        let ingest: usize = snap
            .workers
            .iter()
            .map(|w| aqyl_dataflow::state::encode(&w.ingest).unwrap().len())
            .sum();
        println!("{label}: ingest {ingest} {sizes:?}");
    };
    while metrics.observations.load(Relaxed) < n as u64 {
        std::thread::sleep(Duration::from_millis(10));
    }
    std::thread::sleep(Duration::from_millis(500));
    report("held", &mut taken);
    for k in 0..84 {
        for s in 0..8 {
            router.route_blocking(row(&format!("steady{s}"), t0 + 300 * (k + 1)));
        }
    }
    while metrics.observations.load(Relaxed) < n as u64 + 8 * 84 {
        std::thread::sleep(Duration::from_millis(10));
    }
    std::thread::sleep(Duration::from_millis(500));
    report("after", &mut taken);
    control.request(true);
    let _ = taken.blocking_recv();
    drop(router);
    running.join().unwrap();
}
