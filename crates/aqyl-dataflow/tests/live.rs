//! The dataflow running live (`aqyl run`): rules judge a reading when it arrives, not when the
//! watermark (newest event time − allowed lateness) passes it, and absence rules notice a
//! silence by the wall clock. The lateness here is the shipped 10 minutes, so anything that
//! waited for the watermark could not arrive within these tests' deadlines.

#![allow(clippy::unwrap_used)] // test helpers: a failed unwrap is a failed test

use aqyl_core::ingest::decode::Registry;
use aqyl_core::ingest::descriptor::SensorType;
use aqyl_core::{Event, RawMessage};
use aqyl_dataflow::PipelineSpec;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

const DESCRIPTOR: &str = r#"
name = "traffic"
[time]
field = "/ts"
format = "epoch_ms"
[[fields]]
name = "avgSpeed"
[[fields]]
name = "vehicleCount"
"#;

const RULES: &str = r#"
[[rule]]
name = "congestion"
sensor_type = "traffic"
enter = "avgSpeed <= 35 and vehicleCount >= 10"
exit = "avgSpeed > 35 and vehicleCount < 10"
[[rule]]
name = "outage"
sensor_type = "traffic"
kind = "absence"
for = "2s"
"#;

/// Generous: the point is "long before the 10-minute lateness", not a speed.
const DEADLINE: Duration = Duration::from_secs(20);

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

struct Live {
    router: aqyl_dataflow::input::Router,
    running: aqyl_dataflow::Running,
    events: tokio::sync::mpsc::Receiver<Event>,
}

impl Live {
    fn start(workers: usize) -> Self {
        let types = vec![SensorType::from_toml(Path::new("traffic.toml"), DESCRIPTOR).unwrap()];
        let rules = aqyl_core::rules::parse_rules(Path::new("r.toml"), RULES, &types).unwrap();
        let spec = PipelineSpec {
            corroborate: Default::default(),
            registry: aqyl_dataflow::shared(Registry::new(types)),
            workers,
            window: Duration::from_secs(300),
            allowed_lateness: Duration::from_secs(600),
            // Live, but the watermark never moves by the wall clock within this test.
            idle_timeout: Some(Duration::from_secs(3600)),
            max_payload_bytes: 4096,
            max_future: None,
            update_horizon: None,
            rule_timing: Default::default(),
            state_ttl: None,
            rules: Arc::new(rules),
            quality: None,
        };
        let (outputs, received) = aqyl_dataflow::Outputs::channels();
        let (router, running) =
            aqyl_dataflow::start(spec, 64, outputs, Arc::new(Default::default())).unwrap();
        Self {
            router,
            running,
            events: received.events,
        }
    }

    /// Publishes a reading of `sensor` stamped now; returns its event time.
    fn send(&self, sensor: &str, speed: u32, count: u32) -> u64 {
        // Distinct event times: a second reading in the same millisecond is not newer.
        std::thread::sleep(Duration::from_millis(2));
        self.send_at(now_ms(), sensor, speed, count)
    }

    fn send_at(&self, ts: u64, sensor: &str, speed: u32, count: u32) -> u64 {
        assert!(self.router.route_blocking(RawMessage {
            topic: format!("city/traffic/{sensor}"),
            payload: format!(r#"{{"ts":{ts},"avgSpeed":{speed},"vehicleCount":{count}}}"#)
                .into_bytes(),
            received_at: now_ms() as i64,
        }));
        ts
    }

    /// The next event of `rule`, waiting up to the deadline.
    fn next(&mut self, rule: &str) -> Event {
        let until = Instant::now() + DEADLINE;
        while Instant::now() < until {
            match self.events.try_recv() {
                Ok(e) if e.rule == rule => return e,
                Ok(_) => {}
                Err(_) => std::thread::sleep(Duration::from_millis(5)),
            }
        }
        panic!("no {rule} event within {DEADLINE:?}: it waited for the watermark");
    }

    fn stop(self) {
        drop(self.router);
        self.running.join().unwrap();
    }
}

#[test]
fn live_a_congestion_starts_and_ends_when_its_readings_arrive() {
    // Another sensor's clock runs a minute ahead on the same ingest worker (of two), so the
    // segment's readings never move that worker's watermark: they must still go through the
    // exchange to the rules and be judged at once.
    let ingest = |id: &str| aqyl_dataflow::stable_hash(&[&format!("city/traffic/{id}")]) % 2;
    let ahead = "s9";
    let segment = (0..100)
        .map(|i| format!("seg{i}"))
        .find(|id| ingest(id) == ingest(ahead))
        .unwrap();
    let mut live = Live::start(2);
    live.send_at(now_ms() + 60_000, ahead, 60, 3);
    live.send(&segment, 60, 3);
    let jammed = live.send(&segment, 20, 25);
    let start = live.next("congestion");
    assert_eq!(start.state.as_str(), "start");
    assert_eq!(
        (start.subject.as_str(), start.time),
        (segment.as_str(), jammed)
    );
    let free = live.send(&segment, 60, 2);
    let end = live.next("congestion");
    assert_eq!(end.state.as_str(), "end");
    assert_eq!((end.id, end.time), (start.id, free));
    live.stop();
}

#[test]
fn live_an_outage_starts_by_the_wall_clock() {
    let mut live = Live::start(2);
    // s1 keeps reporting; s0 falls silent after one reading.
    let last = live.send("s0", 60, 3);
    let keep_alive = Instant::now() + Duration::from_secs(4);
    while Instant::now() < keep_alive {
        live.send("s1", 60, 3);
        std::thread::sleep(Duration::from_millis(200));
    }
    let outage = live.next("outage");
    assert_eq!(outage.state.as_str(), "start");
    assert_eq!(outage.subject, "s0", "s1 kept reporting");
    assert_eq!(
        outage.started_at,
        last + 2_000,
        "`for` after its last reading"
    );
    // Its next reading ends it.
    let back = live.send("s0", 60, 3);
    let end = live.next("outage");
    assert_eq!((end.subject.as_str(), end.time), ("s0", back));
    live.stop();
}
