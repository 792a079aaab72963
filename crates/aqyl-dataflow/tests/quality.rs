//! Quality scoring in the dataflow: the neighbour check, the feed check of silences, quality
//! incidents with hysteresis, the activity field of the flat-line detector, and readings that
//! fail correctness kept out of aggregates and rules.

#![allow(clippy::unwrap_used)] // test helpers: a failed unwrap is a failed test

use aqyl_core::ingest::decode::Registry;
use aqyl_core::ingest::descriptor::SensorType;
use aqyl_core::quality::{Neighbours, QualityRecord, QualityReport};
use aqyl_core::RawMessage;
use aqyl_core::{Event, EventState};
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

/// The default settings without hysteresis: an incident at the first low report, ended by the
/// first good one (what quality incidents were before `alert_after`).
fn immediate() -> QualitySpec {
    QualitySpec {
        alert_after: 0.0,
        recover_margin: 0.0,
        ..quality(true)
    }
}

fn run(messages: Vec<RawMessage>, workers: usize, q: QualitySpec, rules: &str) -> Batch {
    run_with(DESCRIPTOR, messages, workers, q, rules)
}

fn run_with(
    descriptor: &str,
    messages: Vec<RawMessage>,
    workers: usize,
    q: QualitySpec,
    rules: &str,
) -> Batch {
    let types = vec![SensorType::from_toml(Path::new("traffic.toml"), descriptor).unwrap()];
    let rules = aqyl_core::rules::parse_rules(Path::new("r.toml"), rules, &types).unwrap();
    let spec = PipelineSpec {
        corroborate: Default::default(),
        registry: aqyl_dataflow::shared(Registry::new(types)),
        workers,
        window: Duration::from_secs(3600),
        allowed_lateness: Duration::from_secs(600),
        idle_timeout: None,
        max_payload_bytes: 4096,
        max_future: None,
        update_horizon: None,
        rule_timing: Default::default(),
        state_ttl: None,
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

/// The quality incidents' lifecycle messages of one sensor.
fn incidents<'a>(batch: &'a Batch, sensor: &str) -> Vec<&'a Event> {
    batch
        .events
        .iter()
        .filter(|e| e.event_type == "quality" && e.subject == sensor)
        .collect()
}

fn states(batch: &Batch, sensor: &str) -> Vec<EventState> {
    incidents(batch, sensor).iter().map(|e| e.state).collect()
}

fn reports(batch: &Batch, sensor: &str) -> Vec<QualityReport> {
    let mut out: Vec<QualityReport> = batch
        .quality
        .iter()
        .filter_map(|q| match q {
            QualityRecord::Report(r) if &*r.sensor_id == sensor => Some(r.clone()),
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
        // Without hysteresis, so that each verdict shows as an incident or none.
        let batch = run(area_day(), workers, immediate(), "");
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
    // One bad reading is told by its report, not by an incident.
    assert_eq!(states(&kept_out, "s0"), []);
    let without_hysteresis = run(messages.clone(), 2, immediate(), rule);
    assert!(without_hysteresis
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

/// A live pipeline (quality by the wall clock, a reading expected every 200 ms, two workers)
/// with `allowed_lateness` and `idle_timeout`; its router, workers, events and quality records.
fn start_live(
    expected_interval: &str,
    allowed_lateness: Duration,
    idle_timeout: Duration,
) -> (
    aqyl_dataflow::input::Router,
    aqyl_dataflow::Running,
    tokio::sync::mpsc::Receiver<aqyl_core::Event>,
    tokio::sync::mpsc::Receiver<Vec<QualityRecord>>,
) {
    let descriptor = DESCRIPTOR.replace(
        "expected_interval = \"5m\"",
        &format!("expected_interval = \"{expected_interval}\""),
    );
    let types = vec![SensorType::from_toml(Path::new("traffic.toml"), &descriptor).unwrap()];
    let spec = PipelineSpec {
        corroborate: Default::default(),
        registry: aqyl_dataflow::shared(Registry::new(types)),
        workers: 2,
        window: Duration::from_secs(60),
        allowed_lateness,
        idle_timeout: Some(idle_timeout),
        max_payload_bytes: 4096,
        max_future: None,
        update_horizon: None,
        rule_timing: Default::default(),
        state_ttl: None,
        rules: Arc::new(Vec::new()),
        quality: Some(QualitySpec {
            wall_clock: true,
            ..quality(true)
        }),
    };
    let (outputs, received) = aqyl_dataflow::Outputs::channels();
    let (router, running) =
        aqyl_dataflow::start(spec, 64, outputs, Arc::new(Default::default())).unwrap();
    (router, running, received.events, received.quality)
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// Live, the watchdog follows the wall clock: a sensor that stops reporting is reported
/// silent although no later reading moves event time.
#[test]
fn live_the_watchdog_notices_silence_by_the_wall_clock() {
    let (router, running, mut ev_rx, mut q_rx) =
        start_live("600ms", Duration::from_secs(3), Duration::from_millis(100));
    let now = now_ms;
    // Fifteen readings 100 ms apart, as they happen, then nothing. The allowed lateness (3 s)
    // is five expected intervals (600 ms): readings wait that long to be judged, yet while
    // they keep coming the sensor must not be called silent. (Readings six times as often as
    // expected, so that a loaded machine pausing this thread cannot make a real silence.)
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
    assert_eq!(&*silent.sensor_id, "s0");
    assert!(silent.findings.problems()[0].starts_with("silent"));
    // The incident starts at the second missed interval.
    let mut incident = false;
    while !incident && std::time::Instant::now() < deadline {
        while let Ok(e) = ev_rx.try_recv() {
            incident |= e.event_type == "quality" && e.subject == "s0";
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(incident, "a quality incident");
    drop(router);
    // Drain so the workers can finish.
    let drain = std::thread::spawn(move || while q_rx.blocking_recv().is_some() {});
    let drain_events = std::thread::spawn(move || while ev_rx.blocking_recv().is_some() {});
    running.join().unwrap();
    drain.join().unwrap();
    drain_events.join().unwrap();
}

/// A sensor whose very first message is unusable (its area not known yet) and whose later
/// readings are fine: its quality incident starts and ends on the same tracker, whatever the
/// number of workers, so no incident is left open.
#[test]
fn an_incident_opened_before_the_sensor_area_is_known_still_closes() {
    // Without hysteresis, so that the one unusable first message opens the incident.
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
            let batch = run(messages, workers, immediate(), "");
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

/// Good readings of `id` every 5 minutes over `minutes`, varying enough never to look stuck.
fn good(id: &str, minutes: impl Iterator<Item = u64>) -> Vec<RawMessage> {
    minutes
        .map(|m| {
            let k = m / 5;
            reading(id, "north", m, 50.0 + (k % 7) as f64, 10.0 + (k % 5) as f64)
        })
        .collect()
}

/// Merges per-sensor message lists in event-time order (as a broker would deliver them).
fn merged(mut lists: Vec<Vec<(u64, RawMessage)>>) -> Vec<RawMessage> {
    let mut all: Vec<(u64, RawMessage)> = lists.drain(..).flatten().collect();
    all.sort_by_key(|(t, _)| *t);
    all.into_iter().map(|(_, m)| m).collect()
}

fn timed(list: Vec<RawMessage>, minutes: impl Iterator<Item = u64>) -> Vec<(u64, RawMessage)> {
    minutes.zip(list).collect()
}

#[test]
fn one_malformed_message_among_good_readings_starts_no_incident() {
    // Five malformed messages over two hours, each between two good readings: today's demo.
    let mut messages = Vec::new();
    for m in (0..120u64).step_by(5) {
        messages.extend(good("s0", std::iter::once(m)));
        if m % 25 == 10 {
            messages.push(RawMessage {
                topic: "city/traffic/s0".into(),
                payload: br#"{"ts":"#.to_vec(),
                received_at: 0,
            });
        }
    }
    for workers in [1, 2] {
        let batch = run(messages.clone(), workers, quality(true), "");
        assert_eq!(batch.deadletters.len(), 5);
        let low = reports(&batch, "s0")
            .iter()
            .filter(|r| r.score < 0.6)
            .count();
        assert_eq!(low, 5, "each malformed message shows in its report");
        assert_eq!(states(&batch, "s0"), [], "{workers} workers");
    }
    // Without hysteresis: five incidents, each ended by the next good reading.
    let flapping = run(messages, 1, immediate(), "");
    assert_eq!(states(&flapping, "s0").len(), 10);
}

#[test]
fn a_broken_sensor_gives_one_incident_without_flapping() {
    // An hour of readings; from minute 60 to 120 three readings in four are out of range
    // (a failing detector with good moments), then it is repaired.
    let messages: Vec<RawMessage> = (0..180u64)
        .step_by(5)
        .map(|m| {
            let k = m / 5;
            let broken = (60..120).contains(&m) && k % 4 != 3;
            let speed = if broken { -40.0 } else { 50.0 + (k % 7) as f64 };
            reading("s0", "north", m, speed, 10.0 + (k % 5) as f64)
        })
        .collect();
    for workers in [1, 2] {
        let batch = run(messages.clone(), workers, quality(true), "");
        let lifecycle = incidents(&batch, "s0");
        let summary: Vec<(EventState, u64, u64)> = lifecycle
            .iter()
            .map(|e| {
                (
                    e.state,
                    (e.started_at - T0) / MINUTE,
                    (e.time - T0) / MINUTE,
                )
            })
            .collect();
        // Starts once the score has been low for more than an interval (third low reading),
        // dated from the first; ends once it has been good again for as long.
        assert_eq!(
            summary,
            [
                (EventState::Start, 60, 70),
                // Good from minute 115 (one of its good moments) on.
                (EventState::End, 60, 125)
            ],
            "{workers} workers"
        );
        assert!(
            lifecycle[0].message.contains("below its minimum"),
            "{}",
            lifecycle[0].message
        );
    }
    // Without hysteresis: an incident per bad stretch.
    assert_eq!(states(&run(messages, 1, immediate(), ""), "s0").len(), 6);
}

#[test]
fn a_missed_reading_is_no_incident_a_dead_sensor_is_and_a_feed_outage_is_not() {
    // Four segments report every 5 minutes for 6 hours. s0 misses its reading at minute 50,
    // and dies at minute 200 (last reading at 195). From minute 280 to 320 the whole feed is
    // down (last readings at 275, next at 320).
    let feed_down = |m: &u64| !(280..320).contains(m);
    let mut lists = Vec::new();
    for id in ["s0", "s1", "s2", "s3"] {
        let minutes: Vec<u64> = (0..360u64)
            .step_by(5)
            .filter(feed_down)
            .filter(|m| id != "s0" || (*m != 50 && *m < 200))
            .collect();
        lists.push(timed(
            good(id, minutes.clone().into_iter()),
            minutes.into_iter(),
        ));
    }
    let messages = merged(lists);
    for workers in [1, 3] {
        let batch = run(messages.clone(), workers, quality(true), "");
        // The missed reading: one silent report, below the threshold, and no incident before
        // the sensor died.
        let s0 = reports(&batch, "s0");
        let missed: Vec<&QualityReport> = s0
            .iter()
            .filter(|r| r.findings.silent && r.time < T0 + 200 * MINUTE)
            .collect();
        assert_eq!(missed.len(), 1, "{workers} workers");
        assert!(missed[0].score < 0.6);
        assert_eq!(missed[0].findings.neighbours, Neighbours::Disagree);
        // The dead sensor: one incident, from its first missed interval, started at its
        // second.
        let lifecycle = incidents(&batch, "s0");
        assert_eq!(lifecycle.len(), 1, "{workers} workers: {lifecycle:?}");
        let grace = 315_000;
        assert_eq!(
            (
                lifecycle[0].state,
                lifecycle[0].started_at,
                lifecycle[0].time
            ),
            (
                EventState::Start,
                T0 + 195 * MINUTE + grace,
                T0 + 195 * MINUTE + 2 * grace
            )
        );
        assert!(lifecycle[0].message.contains("silent"));
        // The feed outage: every segment silent together, judged the feed's, no incident.
        for id in ["s1", "s2", "s3"] {
            let outage: Vec<QualityReport> = reports(&batch, id)
                .into_iter()
                .filter(|r| r.findings.silent)
                .collect();
            assert_eq!(outage.len(), 8, "{id}: 45 minutes without a reading");
            assert!(
                outage
                    .iter()
                    .all(|r| r.findings.neighbours == Neighbours::Agree && r.score >= 0.6),
                "{id}: {outage:?}"
            );
            assert_eq!(states(&batch, id), [], "{id}");
        }
    }
}

#[test]
fn an_empty_road_repeating_its_speed_is_not_stuck_a_stuck_detector_is() {
    let descriptor = DESCRIPTOR.replace(
        "expected_interval = \"5m\"",
        "expected_interval = \"5m\"\nactivity_field = \"vehicleCount\"",
    );
    // Night: from minute 60 to 240 no vehicles, and the detector repeats its last speed.
    // s1 is stuck from minute 60 to 120 while vehicles pass (it repeats 12 vehicles, 48 km/h).
    let night = |id: &str| -> Vec<RawMessage> {
        (0..300u64)
            .step_by(5)
            .map(|m| {
                let k = m / 5;
                match (id, m) {
                    ("s1", 60..120) => reading(id, "north", m, 48.0, 12.0),
                    (_, 60..240) => reading(id, "north", m, 52.0, 0.0),
                    _ => reading(id, "north", m, 50.0 + (k % 7) as f64, 10.0 + (k % 5) as f64),
                }
            })
            .collect()
    };
    let minutes = || (0..300u64).step_by(5);
    let messages = merged(vec![
        timed(night("s0"), minutes()),
        timed(night("s1"), minutes()),
    ]);
    let batch = run_with(&descriptor, messages.clone(), 2, quality(true), "");
    assert!(
        reports(&batch, "s0").iter().all(|r| !r.findings.flat_line),
        "an empty road is not stuck"
    );
    assert_eq!(states(&batch, "s0"), []);
    let stuck: Vec<u64> = reports(&batch, "s1")
        .iter()
        .filter(|r| r.findings.flat_line)
        .map(|r| (r.time - T0) / MINUTE)
        .collect();
    assert_eq!(stuck.first(), Some(&70), "the third identical reading");
    assert!(stuck.iter().all(|m| (70..120).contains(m)), "{stuck:?}");
    assert_eq!(states(&batch, "s1"), [EventState::Start, EventState::End]);
    // Without the activity field, the night is a flat line (and an incident) on both.
    let plain = run(messages, 2, quality(true), "");
    assert!(reports(&plain, "s0").iter().any(|r| r.findings.flat_line));
    assert_eq!(states(&plain, "s0"), [EventState::Start, EventState::End]);
}

/// Live, a silence reaches the output at the watchdog's ticks, although the neighbour check
/// holds its area's readings until the watermark (a minute behind) passes them: s1 keeps
/// reporting in s0's area the whole time.
#[test]
fn live_a_silence_is_reported_at_once_whatever_the_neighbour_check_holds() {
    // Readings wait a minute for the watermark: the neighbour check holds them as long.
    let (router, running, mut ev_rx, mut q_rx) =
        start_live("200ms", Duration::from_secs(60), Duration::from_secs(60));
    let now = now_ms;
    let send = |id: &str, i: u64| {
        let ts = now();
        assert!(router.route_blocking(RawMessage {
            topic: format!("city/traffic/{id}"),
            payload: format!(
                r#"{{"ts":{ts},"avgSpeed":{},"vehicleCount":{},"area":"north"}}"#,
                50 + i % 7,
                5 + i % 3
            )
            .into_bytes(),
            received_at: ts as i64,
        }));
    };
    // Both report every 100 ms for 1.5 s; then s0 falls silent while s1 goes on for up to
    // 15 s (far less than the minute a reading waits for the watermark).
    for i in 0..15 {
        send("s0", i);
        send("s1", i);
        std::thread::sleep(Duration::from_millis(100));
    }
    let mut silent = Vec::new();
    let mut started = None;
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    let mut i = 15;
    while started.is_none() && std::time::Instant::now() < deadline {
        send("s1", i);
        i += 1;
        std::thread::sleep(Duration::from_millis(100));
        while let Ok(batch) = q_rx.try_recv() {
            silent.extend(batch.into_iter().filter_map(|r| match r {
                QualityRecord::Report(r) if r.findings.silent => Some(r),
                _ => None,
            }));
        }
        while let Ok(e) = ev_rx.try_recv() {
            if e.event_type == "quality" && e.subject == "s0" && e.state == EventState::Start {
                started = Some(e);
            }
        }
    }
    assert!(
        silent.iter().all(|r| &*r.sensor_id == "s0"),
        "s1 never silent: {silent:?}"
    );
    assert!(!silent.is_empty(), "s0's silence reported while s1 reports");
    assert_eq!(silent[0].findings.neighbours, Neighbours::Disagree);
    let started = started.expect("a quality incident for s0's silence within 15 s");
    assert!(started.message.contains("silent"), "{}", started.message);
    // Its second missed interval started it: 1.05 intervals after the first.
    assert_eq!(started.time - started.started_at, 210);
    drop(router);
    let drain = std::thread::spawn(move || while q_rx.blocking_recv().is_some() {});
    running.join().unwrap();
    drain.join().unwrap();
}
