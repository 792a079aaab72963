//! Checkpoints through the real runtime: a dataflow stopped at a checkpoint and restored from
//! it produces exactly what one uninterrupted run produces.

#![allow(clippy::unwrap_used)] // test helpers: a failed unwrap is a failed test

use aqyl_core::ingest::decode::Registry;
use aqyl_core::ingest::descriptor::SensorType;
use aqyl_core::metrics::Metrics;
use aqyl_core::{Aggregate, Event, RawMessage};
use aqyl_dataflow::checkpoint::{Control, Snapshot};
use aqyl_dataflow::{Durable, Outputs, PipelineSpec, Receivers};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

const DESCRIPTOR: &str = r#"
name = "traffic"
[time]
field = "/ts"
format = "epoch_ms"
[[fields]]
name = "avgSpeed"
[[fields]]
name = "vehicleCount"
[[windows]]
size = "5m"
[[windows]]
size = "1h"
slide = "15m"
[[windows]]
size = "4h"
sax = { alphabet = 5, word_length = 3 }
fields = ["avgSpeed"]
"#;

const CONGESTION: &str = "[[rule]]\nname = \"congestion\"\nsensor_type = \"traffic\"\nenter = \"avgSpeed <= 35 and vehicleCount >= 10\"\nexit = \"avgSpeed > 35 and vehicleCount < 10\"\n";

const T0: u64 = 1_406_851_200_000;
const MINUTE: u64 = 60_000;

fn spec(workers: usize) -> PipelineSpec {
    let t = SensorType::from_toml(Path::new("traffic.toml"), DESCRIPTOR).unwrap();
    let rules =
        aqyl_core::rules::parse_rules(Path::new("r.toml"), CONGESTION, std::slice::from_ref(&t))
            .unwrap();
    PipelineSpec {
        corroborate: Default::default(),
        registry: aqyl_dataflow::shared(Registry::new(vec![t])),
        workers,
        window: Duration::from_secs(300),
        allowed_lateness: Duration::from_secs(120),
        idle_timeout: None,
        max_payload_bytes: 4096,
        max_future: None,
        update_horizon: None,
        rule_timing: Default::default(),
        state_ttl: None,
        quality: None,
        rules: Arc::new(rules),
    }
}

/// Eight sensors, one reading every 5 minutes for 10 hours, with congestions.
fn messages() -> Vec<RawMessage> {
    let mut rng = fastrand::Rng::with_seed(7);
    let mut out = Vec::new();
    for step in 0..120u64 {
        for s in 0..8 {
            let t = T0 + step * 5 * MINUTE + rng.u64(0..MINUTE);
            let jam = (step / 10 + s) % 4 == 0;
            let speed = if jam { 20.0 } else { 50.0 } + rng.f64() * 10.0;
            let count = if jam { 30 } else { 5 };
            out.push(RawMessage {
                topic: format!("city/traffic/s{s}"),
                payload: format!(r#"{{"ts":{t},"avgSpeed":{speed},"vehicleCount":{count}}}"#)
                    .into_bytes(),
                received_at: 0,
            });
        }
    }
    out
}

struct Got {
    aggregates: Vec<Aggregate>,
    events: Vec<Event>,
    snapshot: Snapshot,
}

/// Runs `messages` (logged as `first_seq`, `first_seq + 1`, …) through a durable dataflow
/// restored from `restore`, then checkpoints with stop.
fn run(workers: usize, restore: Option<Snapshot>, messages: &[RawMessage], first_seq: u64) -> Got {
    let (outputs, receivers) = Outputs::channels();
    let Receivers {
        aggregates: mut agg_rx,
        events: mut ev_rx,
        mut quality,
        ..
    } = receivers;
    std::thread::spawn(move || while quality.blocking_recv().is_some() {});
    let (control, mut taken) = Control::new(workers, vec!["congestion".into()]);
    let control = Arc::new(control);
    let durable = Durable {
        control: control.clone(),
        restore,
        held: Default::default(),
    };
    let metrics = Arc::new(Metrics::default());
    let (router, running) =
        aqyl_dataflow::start_durable(spec(workers), 64, outputs, metrics, durable).unwrap();
    for (i, m) in messages.iter().enumerate() {
        assert!(router.route_logged_blocking(first_seq + i as u64, m.clone()));
    }
    // Every message taken before the checkpoint: the queues drain while we wait.
    std::thread::sleep(Duration::from_millis(200));
    control.request(true);
    let snapshot = taken.blocking_recv().expect("a snapshot");
    drop(router);
    running.join().unwrap();
    let mut aggregates = Vec::new();
    while let Ok(a) = agg_rx.try_recv() {
        aggregates.push(a);
    }
    let mut events = Vec::new();
    while let Ok(e) = ev_rx.try_recv() {
        events.push(e);
    }
    Got {
        aggregates,
        events,
        snapshot,
    }
}

fn sorted(mut a: Vec<Aggregate>) -> Vec<Aggregate> {
    a.sort_by(|x, y| x.sort_key().cmp(&y.sort_key()));
    a
}

fn event_keys(events: &[Event]) -> Vec<(String, String, String, u64)> {
    let mut k: Vec<_> = events
        .iter()
        .map(|e| {
            (
                e.id.clone(),
                e.state.as_str().to_string(),
                e.subject.clone(),
                e.time,
            )
        })
        .collect();
    k.sort();
    k
}

#[test]
fn a_run_restored_from_a_checkpoint_gives_what_an_uninterrupted_run_gives() {
    let all = messages();
    for workers in [1, 2] {
        let whole = run(workers, None, &all, 1);
        let cut = all.len() * 2 / 5;
        let first = run(workers, None, &all[..cut], 1);
        assert!(
            first
                .snapshot
                .workers
                .iter()
                .any(|w| !w.operators.is_empty()),
            "operator state in the snapshot"
        );
        let encoded = first.snapshot.encode().unwrap();
        let restored = Snapshot::decode(&encoded).unwrap();
        assert_eq!(restored.log_from(), cut as u64 + 1, "every message covered");
        let second = run(workers, Some(restored), &all[cut..], cut as u64 + 1);
        let mut pieced = first.aggregates.clone();
        pieced.extend(second.aggregates.clone());
        assert!(!whole.aggregates.is_empty());
        assert!(!first.aggregates.is_empty() && !second.aggregates.is_empty());
        assert_eq!(
            sorted(pieced),
            sorted(whole.aggregates.clone()),
            "{workers} workers: aggregates"
        );
        let mut events = first.events.clone();
        events.extend(second.events.clone());
        assert!(!whole.events.is_empty(), "congestions happen");
        assert_eq!(
            event_keys(&events),
            event_keys(&whole.events),
            "{workers} workers: incidents"
        );
    }
}

#[test]
fn a_checkpoint_of_another_worker_count_is_refused_with_what_to_set() {
    let all = messages();
    let first = run(2, None, &all[..100], 1);
    let (outputs, _receivers) = Outputs::channels();
    let (control, _taken) = Control::new(3, vec![]);
    let durable = Durable {
        control: Arc::new(control),
        restore: Some(first.snapshot),
        held: Default::default(),
    };
    let Err(e) =
        aqyl_dataflow::start_durable(spec(3), 64, outputs, Arc::new(Metrics::default()), durable)
    else {
        panic!("a 2-worker checkpoint was restored into 3 workers")
    };
    assert!(e.contains("pipeline.workers = 2"), "{e}");
}
