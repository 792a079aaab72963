//! Quality scoring in the dataflow: the neighbour check, and readings that fail correctness
//! kept out of aggregates and rules.

#![allow(clippy::unwrap_used)] // test helpers: a failed unwrap is a failed test

use aqyl_core::decode::Registry;
use aqyl_core::descriptor::SensorType;
use aqyl_core::quality::{Neighbours, QualityRecord, QualityReport};
use aqyl_core::RawMessage;
use aqyl_dataflow::quality::QualitySpec;
use aqyl_dataflow::{run_batch, Batch, PipelineSpec};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

const DESCRIPTOR: &str = r#"
name = "traffic"
area_field = "/area"
expected_interval = "5m"
[time]
field = "/ts"
format = "epoch_ms"
[[fields]]
name = "avgSpeed"
min = 0
max = 250
[[fields]]
name = "vehicleCount"
min = 0
"#;

const T0: u64 = 1_406_851_200_000; // 2014-08-01T00:00:00Z
const MINUTE: u64 = 60_000;

/// The default `[quality]` settings, replayed, with or without excluding incorrect readings.
fn quality(exclude_incorrect: bool) -> QualitySpec {
    QualitySpec {
        exclude_incorrect,
        ..QualitySpec::from_config(&Default::default(), false)
    }
}

fn run(messages: Vec<RawMessage>, workers: usize, q: QualitySpec, rules: &str) -> Batch {
    let types = vec![SensorType::from_toml(Path::new("traffic.toml"), DESCRIPTOR).unwrap()];
    let rules = aqyl_core::rules::parse_rules(Path::new("r.toml"), rules, &types).unwrap();
    let spec = PipelineSpec {
        registry: aqyl_dataflow::shared(Registry::new(types)),
        workers,
        window: Duration::from_secs(3600),
        allowed_lateness: Duration::from_secs(600),
        idle_timeout: None,
        max_payload_bytes: 4096,
        max_future: None,
        update_horizon: None,
        rule_timing: Default::default(),
        rules: Arc::new(rules),
        quality: Some(q),
    };
    run_batch(spec, messages).unwrap()
}

fn reading(id: &str, area: &str, minute: u64, speed: f64, count: f64) -> RawMessage {
    RawMessage {
        topic: format!("city/traffic/{id}"),
        payload: format!(
            r#"{{"ts":{},"avgSpeed":{speed},"vehicleCount":{count},"area":"{area}"}}"#,
            T0 + minute * MINUTE
        )
        .into_bytes(),
        received_at: 0,
    }
}

fn reports(batch: &Batch, sensor: &str) -> Vec<QualityReport> {
    let mut out: Vec<QualityReport> = batch
        .quality
        .iter()
        .filter_map(|q| match q {
            QualityRecord::Report(r) if r.sensor_id == sensor => Some(r.clone()),
            _ => None,
        })
        .collect();
    out.sort_by_key(|r| r.time);
    out
}

/// Three segments of one area, a reading every 5 minutes for 5 hours. From minute 120 to 180
/// all three crawl (a real congestion); from minute 240, s2 alone reads 5 km/h (a broken
/// detector) while the others flow freely.
fn area_day() -> Vec<RawMessage> {
    let mut rng = fastrand::Rng::with_seed(21);
    let mut out = Vec::new();
    for minute in (0..300u64).step_by(5) {
        for id in ["s0", "s1", "s2"] {
            let normal = 55.0 + rng.f64() * 10.0;
            let speed = match minute {
                120..180 => 15.0 + rng.f64() * 10.0,
                240.. if id == "s2" => 5.0 + rng.f64() * 0.5,
                _ => normal,
            };
            let count = 10.0 + rng.u32(0..10) as f64;
            out.push(reading(id, "north", minute, speed, count));
        }
    }
    out
}

#[test]
fn the_neighbour_check_tells_a_broken_sensor_from_an_area_wide_change() {
    for workers in [1, 3] {
        let batch = run(area_day(), workers, quality(true), "");
        let incidents: Vec<(String, u64)> = batch
            .events
            .iter()
            .filter(|e| e.event_type == "quality" && e.state == aqyl_core::EventState::Start)
            .map(|e| (e.subject.clone(), (e.started_at - T0) / MINUTE))
            .collect();
        // Only the broken detector, at its second reading (a jump that stays is a shift).
        assert_eq!(
            incidents,
            vec![("s2".to_string(), 245)],
            "{workers} workers"
        );
        // The congestion's shifts were seen and found shared by the neighbours.
        for id in ["s0", "s1", "s2"] {
            let r = reports(&batch, id);
            let congestion = r.iter().find(|r| r.time == T0 + 125 * MINUTE).unwrap();
            assert_eq!(
                congestion.findings.neighbours,
                Neighbours::Agree,
                "{id}: {:?}",
                congestion.findings
            );
            assert!(congestion.score >= 0.6);
        }
        let broken = reports(&batch, "s2")
            .into_iter()
            .find(|r| r.time == T0 + 245 * MINUTE)
            .unwrap();
        assert_eq!(broken.findings.neighbours, Neighbours::Disagree);
        assert!(
            broken.findings.problems()[0].contains("neighbours do not show"),
            "{:?}",
            broken.findings.problems()
        );
    }
}

#[test]
fn readings_that_fail_correctness_stay_out_of_aggregates_and_rules() {
    // One sensor, a reading a minute for an hour; minute 30 reads -40 km/h (below min 0).
    let messages: Vec<RawMessage> = (0..60u64)
        .map(|m| {
            let speed = if m == 30 { -40.0 } else { 50.0 };
            reading("s0", "north", m, speed, 10.0)
        })
        .collect();
    let rule = "[[rule]]\nname = \"crawl\"\nsensor_type = \"traffic\"\nenter = \"avgSpeed < 10\"\n";
    let mean = |batch: &Batch| {
        batch
            .aggregates
            .iter()
            .find(|a| &*a.field == "avgSpeed" && a.scope == aqyl_core::Scope::Sensor)
            .map(|a| (a.stats.count, a.stats.mean))
            .unwrap()
    };
    let kept_out = run(messages.clone(), 2, quality(true), rule);
    assert_eq!(mean(&kept_out), (59, 50.0));
    assert!(
        kept_out.events.iter().all(|e| e.rule != "crawl"),
        "the rule never saw it"
    );
    let report = reports(&kept_out, "s0")
        .into_iter()
        .find(|r| r.time == T0 + 30 * MINUTE)
        .unwrap();
    assert_eq!(
        report.findings.incorrect,
        ["avgSpeed = -40 is below its minimum 0"]
    );
    assert!(report.score < 0.6);
    assert!(kept_out
        .events
        .iter()
        .any(|e| e.event_type == "quality" && e.message.contains("below its minimum")));

    let let_in = run(messages, 2, quality(false), rule);
    assert_eq!(mean(&let_in), (60, (59.0 * 50.0 - 40.0) / 60.0));
    assert!(let_in.events.iter().any(|e| e.rule == "crawl"));
}

#[test]
fn a_rejected_message_of_a_known_sensor_costs_it_completeness() {
    let mut messages: Vec<RawMessage> = (0..30u64)
        .map(|m| {
            reading(
                "s0",
                "north",
                m * 5,
                50.0 + (m % 3) as f64,
                10.0 + (m % 4) as f64,
            )
        })
        .collect();
    // Minute 152: vehicleCount missing.
    messages.push(RawMessage {
        topic: "city/traffic/s0".into(),
        payload: format!(
            r#"{{"ts":{},"avgSpeed":50,"area":"north"}}"#,
            T0 + 152 * MINUTE
        )
        .into_bytes(),
        received_at: 0,
    });
    messages
        .extend((31..40u64).map(|m| reading("s0", "north", m * 5, 51.0, 10.0 + (m % 4) as f64)));
    let batch = run(messages, 1, quality(true), "");
    assert_eq!(batch.deadletters.len(), 1);
    let incomplete = reports(&batch, "s0")
        .into_iter()
        .find(|r| r.findings.incomplete.is_some())
        .unwrap();
    assert_eq!(incomplete.metrics.completeness.absolute, 0.5);
    assert!((incomplete.metrics.completeness.rated - 0.6).abs() < 1e-9);
    assert!(incomplete.score < 0.6);
}

/// Live, the watchdog follows the wall clock: a sensor that stops reporting is reported
/// silent although no later reading moves event time.
#[test]
fn live_the_watchdog_notices_silence_by_the_wall_clock() {
    let descriptor = DESCRIPTOR.replace(
        "expected_interval = \"5m\"",
        "expected_interval = \"200ms\"",
    );
    let types = vec![SensorType::from_toml(Path::new("traffic.toml"), &descriptor).unwrap()];
    let spec = PipelineSpec {
        registry: aqyl_dataflow::shared(Registry::new(types)),
        workers: 2,
        window: Duration::from_secs(60),
        allowed_lateness: Duration::from_secs(1),
        idle_timeout: Some(Duration::from_millis(100)),
        max_payload_bytes: 4096,
        max_future: None,
        update_horizon: None,
        rule_timing: Default::default(),
        rules: Arc::new(Vec::new()),
        quality: Some(QualitySpec {
            wall_clock: true,
            ..quality(true)
        }),
    };
    let (agg, _agg_rx) = tokio::sync::mpsc::unbounded_channel();
    let (dl, _dl_rx) = tokio::sync::mpsc::unbounded_channel();
    let (ev, mut ev_rx) = tokio::sync::mpsc::unbounded_channel();
    let (q, mut q_rx) = tokio::sync::mpsc::channel(64);
    let outputs = aqyl_dataflow::Outputs {
        aggregates: agg,
        deadletters: dl,
        events: ev,
        quality: q,
    };
    let (router, running) =
        aqyl_dataflow::start(spec, 64, outputs, Arc::new(Default::default())).unwrap();
    let now = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64
    };
    // Fifteen readings 100 ms apart, as they happen, then nothing. The allowed lateness (1 s)
    // is five expected intervals: readings wait that long to be judged, yet while they keep
    // coming the sensor must not be called silent.
    let mut early_silence = Vec::new();
    for i in 0..15 {
        let ts = now();
        assert!(router.route_blocking(RawMessage {
            topic: "city/traffic/s0".into(),
            payload: format!(
                r#"{{"ts":{ts},"avgSpeed":{},"vehicleCount":5,"area":"north"}}"#,
                50 + i
            )
            .into_bytes(),
            received_at: ts as i64,
        }));
        std::thread::sleep(Duration::from_millis(100));
        while let Ok(batch) = q_rx.try_recv() {
            early_silence.extend(batch.into_iter().filter_map(|r| match r {
                QualityRecord::Report(r) if r.findings.silent => Some(r.time),
                _ => None,
            }));
        }
    }
    assert!(
        early_silence.is_empty(),
        "called silent while reporting: {early_silence:?}"
    );
    // The silence is reported (and a quality incident starts) while nothing else arrives.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let mut silent = None;
    while silent.is_none() && std::time::Instant::now() < deadline {
        while let Ok(batch) = q_rx.try_recv() {
            silent = silent.or(batch.into_iter().find_map(|r| match r {
                QualityRecord::Report(r) if r.findings.silent => Some(r),
                _ => None,
            }));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let silent = silent.expect("a silent report within 30 s");
    assert_eq!(silent.sensor_id, "s0");
    assert!(silent.findings.problems()[0].starts_with("silent"));
    let mut incident = false;
    while let Ok(e) = ev_rx.try_recv() {
        incident |= e.event_type == "quality" && e.subject == "s0";
    }
    assert!(incident, "a quality incident");
    drop(router);
    // Drain so the workers can finish.
    let drain = std::thread::spawn(move || while q_rx.blocking_recv().is_some() {});
    running.join().unwrap();
    drain.join().unwrap();
}

/// A sensor whose very first message is unusable (its area not known yet) and whose later
/// readings are fine: its quality incident starts and ends on the same tracker, whatever the
/// number of workers, so no incident is left open.
#[test]
fn an_incident_opened_before_the_sensor_area_is_known_still_closes() {
    for workers in [1, 3] {
        for sensor in ["s0", "s1", "s2", "s3", "s4", "s5"] {
            let mut messages = vec![RawMessage {
                topic: format!("city/traffic/{sensor}"),
                payload: format!(r#"{{"ts":{T0},"avgSpeed":50,"area":"north"}}"#).into_bytes(),
                received_at: 0,
            }];
            messages.extend(
                (1..30u64).map(|m| reading(sensor, "north", m * 5, 50.0 + (m % 3) as f64, 12.0)),
            );
            let batch = run(messages, workers, quality(true), "");
            let states: Vec<&str> = batch
                .events
                .iter()
                .filter(|e| e.event_type == "quality")
                .map(|e| e.state.as_str())
                .collect();
            assert_eq!(states, ["start", "end"], "{sensor}, {workers} workers");
        }
    }
}
