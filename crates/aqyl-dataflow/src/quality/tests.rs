//! The whole quality chain (`ScoreQuality` to `EmitQuality`) across a checkpoint, and with
//! sensors that come and go (`state_ttl`).

use super::feed::FeedState;
use super::neighbours::AreaState;
use super::score::ScoreState;
use super::track::AlertState;
use super::*;
use aqyl_core::ingest::decode::Registry;
use aqyl_core::ingest::descriptor::SensorType;
use aqyl_core::EventState;
use std::collections::HashMap;
use std::sync::atomic::AtomicI64;
use timely::dataflow::operators::Probe;
use timely::dataflow::{InputHandleVec, ProbeHandle};

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
const MIN: u64 = 60_000;
/// The input time (the watermark) trails the newest event time by this much.
const LATENESS: u64 = 9 * MIN;

fn registry() -> crate::SharedRegistry {
    let ty = SensorType::from_toml(std::path::Path::new("traffic.toml"), DESCRIPTOR).unwrap();
    crate::shared(Registry::new(vec![ty]))
}

fn spec() -> QualitySpec {
    QualitySpec::from_config(&Default::default(), false)
}

/// One batch of input: sent at input time `at`, after which the input moves to `then`.
#[derive(Clone)]
struct Batch {
    at: u64,
    readings: Vec<Observation>,
    side: Vec<Side>,
    then: u64,
}

/// Five hours of four sensors reporting every 5 minutes: s0, s1 and s2 in one area, s3 in
/// none. All three of the area crawl from minute 120 to 180 (shifts the neighbours share);
/// s2 is stuck from minute 60 to 170 (a `quality` incident); s1 is silent from minute 100
/// to 140 (another, from its watchdog); s0 sends out-of-range readings and s3 rejected and
/// late messages.
fn stream(registry: &crate::SharedRegistry) -> Vec<Batch> {
    let types = registry.load();
    let ty = types.get("traffic").unwrap();
    let mut rng = fastrand::Rng::with_seed(7);
    let mut batches = Vec::new();
    let mut at = 0;
    for m in (0..=300u64).step_by(5) {
        let time = T0 + m * MIN;
        let mut batch = Batch {
            at,
            readings: Vec::new(),
            side: Vec::new(),
            then: time - LATENESS,
        };
        for id in ["s0", "s1", "s2", "s3"] {
            if id == "s1" && (100..=140).contains(&m) {
                continue;
            }
            let mut speed = 55.0 + rng.f64() * 10.0;
            let mut count = 10.0 + rng.u32(0..10) as f64;
            if id != "s3" && (120..180).contains(&m) {
                speed = 15.0 + rng.f64() * 10.0;
            }
            if id == "s2" && (60..=170).contains(&m) {
                (speed, count) = (42.0, 7.0);
            }
            if id == "s0" && (m == 50 || m == 135) {
                speed = -5.0;
            }
            let area = (id != "s3").then_some("north");
            let obs = reading(ty, id, area, time, speed, count);
            if obs.arrival.out_of_range > 0 {
                batch.side.push(Side::Incorrect(obs));
            } else {
                batch.readings.push(obs);
            }
        }
        if m == 125 || m == 200 {
            batch.side.push(Side::Rejected {
                at,
                sensor_type: "traffic".into(),
                sensor_id: "s3".into(),
                reason: Reason::MissingField,
                detail: "field vehicleCount is missing".into(),
                latency_ms: None,
            });
        }
        if m == 140 || m == 210 {
            batch.side.push(Side::Late {
                at,
                sensor_type: "traffic".into(),
                sensor_id: "s3".into(),
                age_ms: 30 * MIN,
                latency_ms: None,
            });
        }
        at = batch.then;
        batches.push(batch);
    }
    batches
}

/// A traffic reading of sensor `id` at event time `time`.
fn reading(
    ty: &SensorType,
    id: &str,
    area: Option<&str>,
    time: u64,
    speed: f64,
    count: f64,
) -> Observation {
    let fields: Vec<(Arc<str>, f64)> =
        vec![("avgSpeed".into(), speed), ("vehicleCount".into(), count)];
    Observation {
        sensor_type: "traffic".into(),
        sensor_id: id.into(),
        area: area.map(Arc::from),
        event_time: time,
        received_at: 0,
        time_from_receive: false,
        location: None,
        arrival: aqyl_core::Arrival {
            ingested_at: 0,
            stream_time: time,
            out_of_range: ty.out_of_range_count(&fields) as u16,
            digest: 0,
        },
        fields,
    }
}

/// A checkpoint: the input time reached, and the operator states by name.
type Checkpoint = (u64, Vec<(String, Vec<u8>)>);

/// What one run gave out, and the operator states taken at its end.
struct Run {
    records: Vec<QualityRecord>,
    events: Vec<Event>,
    taken: Vec<(String, Vec<u8>)>,
}

/// Drives `score_quality` through `batches`, stepping until quiet after each; starts from
/// a checkpoint `(time it had reached, states)` if given; ends the input if `close`, else
/// takes the states (a checkpoint).
fn drive(batches: Vec<Batch>, from: Option<Checkpoint>, close: bool) -> Run {
    drive_with(spec(), batches, from, close)
}

/// [`drive`] with the quality settings `spec`.
fn drive_with(
    spec: QualitySpec,
    batches: Vec<Batch>,
    from: Option<Checkpoint>,
    close: bool,
) -> Run {
    let registry = registry();
    let (records_tx, mut records_rx) = tokio::sync::mpsc::channel(1 << 20);
    let (events_tx, mut events_rx) = tokio::sync::mpsc::channel(1 << 20);
    let taken = timely::execute_directly(move |worker| {
        let in_flight = Arc::new(AtomicI64::new(0));
        let (states, start) = match from {
            Some((time, taken)) => (
                OperatorStates::restored(in_flight, taken.into_iter().collect()),
                time,
            ),
            None => (OperatorStates::new(in_flight), 0),
        };
        let mut readings = InputHandleVec::<u64, Observation>::new();
        let mut side = InputHandleVec::<u64, Side>::new();
        let probe = ProbeHandle::new();
        let dataflow = worker.next_dataflow_index();
        worker.dataflow::<u64, _, _>(|scope| {
            let scored = readings
                .to_stream(scope)
                .score_quality(side.to_stream(scope), registry, spec, &states)
                .probe_with(&probe);
            emit(scored, records_tx, events_tx, &states, Default::default());
        });
        assert_eq!(states.finish_restore(), Ok(()));
        readings.advance_to(start);
        side.advance_to(start);
        for batch in batches {
            assert_eq!(*readings.time(), batch.at);
            for r in batch.readings {
                readings.send(r);
            }
            for s in batch.side {
                side.send(s);
            }
            readings.advance_to(batch.then);
            side.advance_to(batch.then);
            while probe.less_than(readings.time()) || states.in_flight() != 0 {
                worker.step();
            }
        }
        if close {
            readings.close();
            side.close();
            while !probe.done() {
                worker.step();
            }
            Vec::new()
        } else {
            assert_eq!(states.in_flight(), 0, "quiet at the checkpoint");
            let taken = states.take().unwrap();
            // Stopped here, as by a crash: nothing more comes out of this run.
            worker.drop_dataflow(dataflow);
            taken
        }
    });
    let mut records = Vec::new();
    while let Ok(batch) = records_rx.try_recv() {
        records.extend(batch);
    }
    let mut events = Vec::new();
    while let Ok(e) = events_rx.try_recv() {
        events.push(e);
    }
    Run {
        records,
        events,
        taken,
    }
}

/// In a canonical order (emission order may depend on how activations fall).
fn sorted<T: std::fmt::Debug>(mut list: Vec<T>) -> Vec<T> {
    list.sort_by_cached_key(|x| format!("{x:?}"));
    list
}

fn starts_and_ends(events: &[Event], sensor: &str) -> Vec<EventState> {
    events
        .iter()
        .filter(|e| e.subject == sensor)
        .map(|e| e.state)
        .collect()
}

#[test]
fn a_checkpoint_in_the_middle_changes_no_quality_output() {
    let batches = stream(&registry());
    // The cut: after the batch of minute 140, the input time is minute 131.
    let cut = batches
        .iter()
        .position(|b| b.then == T0 + 131 * MIN)
        .unwrap()
        + 1;
    let whole = drive(batches.clone(), None, true);
    let first = drive(batches[..cut].to_vec(), None, false);
    let reached = batches[cut].at;

    // State is open at the cut: incidents started and not ended, readings waiting for the
    // watermark, assessments waiting for their neighbours, watchdog checks to come.
    let by_name: HashMap<String, Vec<u8>> = first.taken.iter().cloned().collect();
    assert_eq!(
        first
            .taken
            .iter()
            .map(|(n, _)| n.as_str())
            .collect::<Vec<_>>(),
        [
            "quality/sensor",
            "quality/area",
            "quality/type",
            "quality/alerts"
        ]
    );
    let score: ScoreState = crate::state::decode(&by_name["quality/sensor"]).unwrap();
    assert!(
        score.pending.keys().any(|t| *t >= reached),
        "readings wait for the watermark"
    );
    assert_eq!(score.sensors.all.len(), 4);
    assert!(score.sensors.all.iter().any(|s| s.scheduled.is_some()));
    let mut area: AreaState = crate::state::decode(&by_name["quality/area"]).unwrap();
    let (hood, window, ..) = area
        .hoods
        .get_mut("traffic")
        .unwrap()
        .get_mut("north")
        .unwrap();
    let held = hood.ready(None, *window, spec().spike_threshold);
    assert!(
        held.iter().any(|(_, a)| a.time + *window >= reached),
        "assessments wait for their neighbours"
    );
    let alerts: AlertState = crate::state::decode(&by_name["quality/alerts"]).unwrap();
    for id in ["s1", "s2"] {
        let (alarm, rollups) = &alerts.trackers["traffic"][id];
        assert!(alarm.is_active() && !rollups.is_empty(), "{id}");
        assert_eq!(starts_and_ends(&first.events, id), [EventState::Start]);
    }

    let second = drive(batches[cut..].to_vec(), Some((reached, first.taken)), true);
    for id in ["s1", "s2"] {
        assert_eq!(starts_and_ends(&second.events, id), [EventState::End]);
        assert_eq!(
            starts_and_ends(&whole.events, id),
            [EventState::Start, EventState::End]
        );
    }
    let mut records = first.records;
    records.extend(second.records);
    let mut events = first.events;
    events.extend(second.events);
    assert_eq!(records.len(), whole.records.len());
    assert_eq!(sorted(records), sorted(whole.records));
    assert_eq!(sorted(events), sorted(whole.events));
}

const HOUR: u64 = 60 * MIN;
/// The TTL of the tests: well past the watchdog's twenty failures (105 minutes).
const TTL: u64 = 3 * HOUR;

/// Batches every 5 minutes from minute `from` to minute `to` (inclusive), of the readings
/// `at(type, minute, time)` gives, the input time trailing them by [`LATENESS`].
fn every_five_minutes(
    from: u64,
    to: u64,
    mut at: impl FnMut(&SensorType, u64, u64) -> Vec<Observation>,
) -> Vec<Batch> {
    let registry = registry();
    let types = registry.load();
    let ty = types.get("traffic").unwrap();
    let mut input = 0;
    (from..=to)
        .step_by(5)
        .map(|m| {
            let time = T0 + m * MIN;
            let batch = Batch {
                at: input,
                readings: at(ty, m, time),
                side: Vec::new(),
                then: time - LATENESS,
            };
            input = batch.then;
            batch
        })
        .collect()
}

/// A sensor reporting healthy values.
fn healthy(ty: &SensorType, id: &str, time: u64, rng: &mut fastrand::Rng) -> Observation {
    let speed = 55.0 + rng.f64() * 10.0;
    let count = 10.0 + rng.u32(0..10) as f64;
    reading(ty, id, Some("north"), time, speed, count)
}

/// How many sensors each quality operator keeps something of, from a checkpoint: scoring,
/// neighbour evidence (area "north"), feed and alarms; and the checkpoint's size in bytes.
fn kept(taken: &[(String, Vec<u8>)]) -> ([usize; 4], usize) {
    let by_name: HashMap<String, Vec<u8>> = taken.iter().cloned().collect();
    let score: ScoreState = crate::state::decode(&by_name["quality/sensor"]).unwrap();
    let area: AreaState = crate::state::decode(&by_name["quality/area"]).unwrap();
    let feed: FeedState = crate::state::decode(&by_name["quality/type"]).unwrap();
    let alerts: AlertState = crate::state::decode(&by_name["quality/alerts"]).unwrap();
    let counts = [
        score.sensors.all.len(),
        area.hoods
            .get("traffic")
            .and_then(|areas| areas.get("north"))
            .map_or(0, |hood| hood.0.sensors()),
        feed.feeds.get("traffic").map_or(0, |f| f.sensors()),
        alerts.trackers.get("traffic").map_or(0, BTreeMap::len),
    ];
    (counts, taken.iter().map(|(_, b)| b.len()).sum())
}

/// 2,000 sensors send one reading each (every other one a second, five minutes later) and
/// are never heard of again; one sensor reports every five minutes for seven hours. Half of
/// them are in area "north".
fn come_and_go() -> Vec<Batch> {
    let mut rng = fastrand::Rng::with_seed(11);
    every_five_minutes(0, 7 * 60, move |ty, m, time| {
        let mut readings = vec![healthy(ty, "steady", time, &mut rng)];
        if m <= 5 {
            for i in (0..2000).filter(|i| m == 0 || i % 2 == 0) {
                let mut r = healthy(ty, &format!("gone{i}"), time, &mut rng);
                if i % 4 >= 2 {
                    r.area = None;
                }
                readings.push(r);
            }
        }
        readings
    })
}

/// The settings for [`come_and_go`]: a watchdog that rests after four failures (each of the
/// 2,000 silences is judged against all the others: twenty each would make a slow test).
fn come_and_go_spec(state_ttl_ms: Option<u64>) -> QualitySpec {
    QualitySpec {
        state_ttl_ms,
        long_window: 4,
        ..spec()
    }
}

#[test]
fn sensors_silent_past_the_ttl_are_forgotten_by_every_quality_operator() {
    let run = drive_with(come_and_go_spec(Some(TTL)), come_and_go(), None, false);
    let (counts, bytes) = kept(&run.taken);
    // Scoring, the feed and the alarms keep the steady sensor only; the neighbour check
    // holds the evidence of the last few intervals, the steady sensor's.
    assert_eq!(counts, [1, 1, 1, 1], "{bytes} bytes");
    let by_name: HashMap<String, Vec<u8>> = run.taken.iter().cloned().collect();
    let score: ScoreState = crate::state::decode(&by_name["quality/sensor"]).unwrap();
    assert_eq!(&*score.sensors.all[0].key.1, "steady");
    assert!(
        score.sensors.all[0].scheduled.is_some(),
        "its watchdog still runs"
    );
    let alerts: AlertState = crate::state::decode(&by_name["quality/alerts"]).unwrap();
    assert!(alerts.trackers["traffic"].contains_key("steady"));
    assert!(bytes < 16 * 1024, "{bytes} bytes left of one sensor");
    // Their silence was the feed's (all of them stopped at once): no incident to end.
    assert!(run.events.is_empty(), "{:?}", run.events);
    // The steady sensor's reports went on to the end (the last two readings wait for the
    // watermark and their neighbours).
    let last = run.records.iter().rev().find_map(|r| match r {
        QualityRecord::Report(r) if &*r.sensor_id == "steady" => Some(r.time),
        _ => None,
    });
    assert_eq!(last, Some(T0 + 7 * HOUR - 15 * MIN));
}

#[test]
fn without_a_ttl_nothing_is_forgotten() {
    let run = drive_with(come_and_go_spec(None), come_and_go(), None, false);
    let (counts, bytes) = kept(&run.taken);
    // The neighbour check forgets old evidence by itself, as before.
    assert_eq!(counts, [2001, 1, 2001, 2001], "{bytes} bytes");
    assert!(bytes > 2000 * 512, "{bytes} bytes");

    // A sensor in an incident that falls silent keeps it open for ever.
    let run = drive(stuck_then_silent(false), None, false);
    assert_eq!(starts_and_ends(&run.events, "stuck"), [EventState::Start]);
}

/// "stuck" repeats the same values for two hours (a flat line: a `quality` incident), then
/// falls silent (the incident goes on: lone silences score low); "steady" reports all along,
/// for ten hours. With `back`, "stuck" reports healthy values again from hour 9.
fn stuck_then_silent(back: bool) -> Vec<Batch> {
    let mut rng = fastrand::Rng::with_seed(5);
    every_five_minutes(0, 10 * 60, move |ty, m, time| {
        let mut readings = vec![healthy(ty, "steady", time, &mut rng)];
        if m <= 120 {
            readings.push(reading(ty, "stuck", Some("north"), time, 42.0, 7.0));
        } else if back && m >= 9 * 60 {
            readings.push(healthy(ty, "stuck", time, &mut rng));
        }
        readings
    })
}

#[test]
fn an_incident_of_a_forgotten_sensor_ends_once() {
    let with_ttl = QualitySpec {
        state_ttl_ms: Some(TTL),
        ..spec()
    };
    let run = drive_with(with_ttl, stuck_then_silent(true), None, true);
    let of_stuck: Vec<&Event> = run.events.iter().filter(|e| e.subject == "stuck").collect();
    assert_eq!(
        of_stuck.iter().map(|e| e.state).collect::<Vec<_>>(),
        [EventState::Start, EventState::End],
        "{of_stuck:#?}"
    );
    let (start, end) = (of_stuck[0], of_stuck[1]);
    assert_eq!(end.id, start.id);
    assert_eq!(end.started_at, start.started_at);
    assert_eq!(
        end.message,
        "traffic sensor stuck quality incident ended: no reading for 3h; the sensor is forgotten"
    );
    // Dated when it had been silent for the TTL.
    assert_eq!(end.time, T0 + 120 * MIN + TTL);
    assert!(starts_and_ends(&run.events, "steady").is_empty());
    // Back after that, it is scored as a new sensor: its reports are healthy from the start.
    let back: Vec<&aqyl_core::quality::QualityReport> = run
        .records
        .iter()
        .filter_map(|r| match r {
            QualityRecord::Report(r) if &*r.sensor_id == "stuck" && r.time >= T0 + 9 * HOUR => {
                Some(r)
            }
            _ => None,
        })
        .collect();
    assert_eq!(back.len(), 13);
    assert!(back.iter().all(|r| r.score > 0.9), "{back:#?}");
    // Its day's roll-up, still open when it was forgotten, was given out then, with every
    // report it had sent (readings, then the watchdog's failures).
    let first_back = run
        .records
        .iter()
        .position(|r| matches!(r, QualityRecord::Report(r) if &*r.sensor_id == "stuck" && r.time >= T0 + 9 * HOUR))
        .unwrap();
    let before = run.records[..first_back]
        .iter()
        .filter(|r| matches!(r, QualityRecord::Report(r) if &*r.sensor_id == "stuck"))
        .count() as u64;
    let day = run.records[..first_back].iter().find_map(|r| match r {
        QualityRecord::Rollup(r) if &*r.sensor_id == "stuck" && r.window == "1d" => Some(r),
        _ => None,
    });
    assert_eq!(
        day.map(|d| (d.end, d.count)),
        Some((T0 + 24 * HOUR, before))
    );
}

/// `n` sensors send one reading each in the first minute (half of them in area "north") and
/// are never heard of again; "steady" reports every five minutes for seven hours. With
/// `leap`, the frontier leaps past all of it at once after the first minute (a replay whose
/// backlog a worker takes in one batch), else it moves every five minutes.
fn one_reading_each(leap: bool, n: u64) -> Vec<Batch> {
    let mut rng = fastrand::Rng::with_seed(13);
    let batches = every_five_minutes(0, 7 * 60, move |ty, m, time| {
        let mut readings = vec![healthy(ty, "steady", time, &mut rng)];
        if m == 0 {
            for i in 0..n {
                let mut r = healthy(ty, &format!("once{i}"), time + i % 60 * 1000, &mut rng);
                if i % 2 == 1 {
                    r.area = None;
                }
                readings.push(r);
            }
        }
        readings
    });
    if leap {
        leapt(batches)
    } else {
        batches
    }
}

/// The same input, with the frontier leaping from the end of the first batch to the end of
/// the last at once (a replay whose backlog a worker takes in one batch).
fn leapt(mut batches: Vec<Batch>) -> Vec<Batch> {
    let rest = batches.split_off(1);
    let mut all = Batch {
        at: batches[0].then,
        readings: Vec::new(),
        side: Vec::new(),
        then: rest.last().map_or(batches[0].then, |b| b.then),
    };
    for b in rest {
        all.readings.extend(b.readings);
        all.side.extend(b.side);
    }
    batches.push(all);
    batches
}

/// With the shipped settings that matter (a TTL of an hour, shorter than the twenty watchdog
/// failures of 105 minutes), a sensor's watchdog counts failures until the sensor is
/// forgotten, and no further, however the frontier moves. When the frontier leapt past the
/// TTL, it counted all twenty first (the sweep came after the watchdog in the same
/// activation): every one of them, for each of thousands of vanished sensors, went through the
/// feed check, which judged each against every other sensor, and waited in the alarms'
/// operator for the frontier (a checkpoint then held 4 KB a vanished sensor in
/// `quality/alerts`). With 1,600 vanished sensors, the leap makes more failures (17,600) than
/// `ScoreQuality` gives out in one activation: they leave in steps, with the same result.
#[test]
fn a_sensor_is_reported_silent_until_its_ttl_however_the_frontier_moves() {
    let vanished = 1_600;
    let spec = QualitySpec {
        state_ttl_ms: Some(HOUR),
        ..spec()
    };
    assert_eq!(spec.long_window, 20, "the shipped watchdog span");
    let mut outputs = Vec::new();
    for leap in [false, true] {
        let run = drive_with(spec, one_reading_each(leap, vanished), None, false);
        let (counts, bytes) = kept(&run.taken);
        assert_eq!(counts, [1, 1, 1, 1], "leap {leap}: {bytes} bytes");
        assert!(bytes < 16 * 1024, "leap {leap}: {bytes} bytes");
        // Per vanished sensor, its reading and the failures before its TTL: 57.75 minutes
        // (eleven watchdog periods of 5.25) after the reading, never 63.
        let mut silences: HashMap<&str, Vec<u64>> = HashMap::new();
        for r in &run.records {
            if let QualityRecord::Report(r) = r {
                if r.sensor_id.starts_with("once") && r.findings.silent {
                    let read = T0 + r.sensor_id[4..].parse::<u64>().unwrap() % 60 * 1000;
                    silences
                        .entry(&r.sensor_id)
                        .or_default()
                        .push(r.time - read);
                }
            }
        }
        assert_eq!(silences.len(), vanished as usize, "leap {leap}");
        let ticks: Vec<u64> = (1..=11).map(|k| k * 315_000).collect();
        for (id, mut after) in silences {
            after.sort_unstable();
            assert_eq!(after, ticks, "leap {leap}: {id}");
        }
        // All silent at once: the feed's outage, no incident.
        assert!(run.events.is_empty(), "leap {leap}: {:?}", run.events);
        outputs.push(sorted(run.records));
    }
    assert!(
        outputs[0] == outputs[1],
        "the same reports whether the frontier leaps"
    );
}

/// A sensor that comes back after its TTL is forgotten (its incident ends, it is scored
/// afresh) whether or not a sweep came by in between.
#[test]
fn a_sensor_back_after_its_ttl_ends_its_incident_however_the_frontier_moves() {
    // The frontier leaps from the first reading to the end: no sweep comes between the
    // sensor's silence and its return, yet it is forgotten, as when the frontier moves every
    // five minutes.
    let with_ttl = QualitySpec {
        state_ttl_ms: Some(TTL),
        ..spec()
    };
    let step = drive_with(with_ttl, stuck_then_silent(true), None, true);
    let leap = drive_with(with_ttl, leapt(stuck_then_silent(true)), None, true);
    let of_stuck = |run: &Run| -> Vec<(EventState, u64, u64, String)> {
        let mut events: Vec<_> = run
            .events
            .iter()
            .filter(|e| e.subject == "stuck")
            .map(|e| (e.state, e.started_at, e.time, e.message.clone()))
            .collect();
        events.sort_by_key(|e| e.2);
        events
    };
    let ended = of_stuck(&leap);
    assert_eq!(ended, of_stuck(&step));
    assert_eq!(
        ended.iter().map(|e| e.0).collect::<Vec<_>>(),
        [EventState::Start, EventState::End]
    );
    assert_eq!(ended[1].2, T0 + 120 * MIN + TTL);
    assert!(
        ended[1].3.ends_with("the sensor is forgotten"),
        "{}",
        ended[1].3
    );
    // Back, it is scored afresh: the same reports either way.
    let back = |run: &Run| {
        sorted(
            run.records
                .iter()
                .filter(|r| {
                    matches!(r, QualityRecord::Report(r)
                        if &*r.sensor_id == "stuck" && r.time >= T0 + 9 * HOUR)
                })
                .cloned()
                .collect(),
        )
    };
    let (back_step, back_leap) = (back(&step), back(&leap));
    assert_eq!(back_leap.len(), 13);
    assert!(back_leap == back_step);
}
