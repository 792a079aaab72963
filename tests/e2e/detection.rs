//! Detection quality: the simulator's default scenario (a day in Aarhus with two area
//! congestions, a full garage and a sensor outage, ground truth known) with the shipped
//! descriptors and rules, scored by `aqyl-sim`'s scorer: once through the dataflow in process,
//! once through the real service over a real Mosquitto.

use super::{repo, Aqyl, WAIT};
use aqyl_core::config::RuleTiming;
use aqyl_core::RawMessage;
use aqyl_dataflow::run_batch;
use aqyl_sim::scenario::Scenario;
use aqyl_sim::sensors::{CityConfig, SensorType};
use aqyl_sim::simulation::{Message, SimConfig, Simulation};
use aqyl_sim::truth::TruthRecord;
use aqyl_tests::{publish, wait_until, Mosquitto, Subscriber};
use std::collections::{BTreeMap, BTreeSet};

/// The default scenario's messages in publish order, and its ground truth.
fn default_scenario() -> (Vec<Message>, Vec<TruthRecord>) {
    let scenario = Scenario::load(&repo().join("simulators/scenarios/default.toml")).unwrap();
    let start = aqyl_sim::time::parse_time("2014-08-01T00:00:00").unwrap();
    let city = CityConfig {
        sensors: 10,
        areas: 5,
        types: vec![SensorType::Traffic, SensorType::Parking],
    };
    let config =
        SimConfig::new(city, start, chrono::Duration::days(1), 42).with_scenario(&scenario);
    Simulation::generate(config).unwrap()
}

/// Scores event messages (JSON payloads) against the truth with a 10-minute match window,
/// prints precision, recall and mean detection delay (event time) per incident type, and
/// asserts at least 0.98 for both.
fn assert_detected(label: &str, events: &[serde_json::Value], truth: &[TruthRecord]) {
    let (detections, skipped) = aqyl_sim::score::detections(events, &Default::default());
    assert_eq!(
        skipped, 0,
        "{label}: event messages without id, type, subject or time"
    );
    let report = aqyl_sim::score::score(truth, &detections, chrono::Duration::minutes(10), &[]);
    for t in ["congestion", "parking_full", "outage"] {
        let s = report
            .types
            .iter()
            .find(|s| s.incident_type == t)
            .unwrap_or_else(|| panic!("{t} scored"));
        println!(
            "{label}, {t}: precision {:.3}, recall {:.3}, mean delay {:?} s ({} incidents, {} events)",
            s.precision, s.recall, s.delay_mean_s, s.incidents, s.events
        );
        assert!(
            s.precision >= 0.98 && s.recall >= 0.98,
            "{label}, {t}: {s:?}"
        );
    }
}

/// The event messages (JSON) of the dataflow run in process over `(topic, payload)` pairs,
/// with the shipped descriptors, rules and settings, the watermark in event time only.
fn in_process(
    messages: &[(String, Vec<u8>)],
    workers: usize,
    timing: aqyl_core::config::RuleTiming,
) -> Vec<String> {
    let (_, mut spec) = super::shipped_replay(workers, true);
    spec.rule_timing = timing;
    let raw = messages
        .iter()
        .map(|(topic, payload)| RawMessage {
            topic: topic.clone(),
            payload: payload.clone(),
            received_at: 0,
        })
        .collect();
    let batch = run_batch(spec, raw).unwrap();
    assert!(
        batch.deadletters.is_empty(),
        "{:?}",
        batch.deadletters.first()
    );
    batch.events.iter().map(|e| e.to_json()).collect()
}

/// An event message without what depends on the wall clock: a quality incident's score (and
/// so its message) counts Aqyl's own processing delay, which differs between runs.
fn comparable(json: &str) -> String {
    let mut v: serde_json::Value = serde_json::from_str(json).unwrap();
    if v["event_type"] == "quality" {
        if let Some(o) = v.as_object_mut() {
            o.remove("message");
            o.remove("values");
        }
    }
    v.to_string()
}

/// The scenario's messages as published: (topic, payload).
fn encoded(messages: &[Message]) -> Vec<(String, Vec<u8>)> {
    messages
        .iter()
        .map(|m| (m.topic.clone(), m.encode(None)))
        .collect()
}

#[test]
fn the_default_scenario_is_detected_with_full_precision_and_recall() {
    let (messages, truth) = default_scenario();
    let messages = encoded(&messages);
    let mut runs = Vec::new();
    for workers in [1, 4] {
        let mut json = in_process(&messages, workers, RuleTiming::Arrival);
        let events: Vec<serde_json::Value> = json
            .iter()
            .map(|e| serde_json::from_str(e).unwrap())
            .collect();
        assert_detected(&format!("{workers} workers"), &events, &truth);
        json.sort();
        runs.push(json);
    }
    assert!(!runs[0].is_empty());
    assert_eq!(runs[0], runs[1], "the same incidents with 1 and 4 workers");
}

/// Judging readings on arrival is the live path; on in-order data a replay at full speed must
/// give exactly the incidents of the event-time evaluation at the watermark.
#[test]
fn on_in_order_data_judging_on_arrival_gives_the_incidents_of_the_watermark() {
    let (messages, _) = default_scenario();
    let messages = encoded(&messages);
    let run = |workers, timing| {
        let mut json: Vec<String> = in_process(&messages, workers, timing)
            .iter()
            .map(|e| comparable(e))
            .collect();
        json.sort();
        json
    };
    let watermark = run(2, RuleTiming::Watermark);
    let rules: std::collections::BTreeSet<String> = watermark
        .iter()
        .map(|e| serde_json::from_str::<serde_json::Value>(e).unwrap()["rule"].to_string())
        .collect();
    assert!(
        rules.len() >= 4,
        "the scenario exercises several kinds of rule: {rules:?}"
    );
    assert_eq!(run(1, RuleTiming::Arrival), watermark, "1 worker");
    assert_eq!(run(3, RuleTiming::Arrival), watermark, "3 workers");
}

/// A traffic segment outside the simulated city, used to check the shutdown drain.
const DRAIN_PROBE: &str = "drain-probe";

/// The same day through the real system: published at QoS 1 on a real Mosquitto, detected by
/// `aqyl run` with the shipped descriptors and rules, its `aqyl/events/...` messages received
/// by a separate client and scored.
#[test]
fn the_default_scenario_is_detected_over_mqtt_by_the_service() {
    let (messages, truth) = default_scenario();
    let mqtt = Mosquitto::start();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("aqyl.toml");
    std::fs::write(
        &config,
        format!(
            r#"
sensors_dir = '{sensors}'
rules_dir = '{rules}'
reload_interval = "0s"
[mqtt]
client_id = "aqyl-e2e-detect-{pid}"
[pipeline]
workers = 2
window = "5m"
allowed_lateness = "10m"
# A replay of 2014: the watermark follows event time only, never the wall clock.
idle_timeout = "0s"
[influx]
enabled = false
[state]
durable = false
"#,
            sensors = repo().join("config/sensors").display(),
            rules = repo().join("config/rules").display(),
            pid = std::process::id()
        ),
    )
    .unwrap();

    // The scenario in generation order, then two readings of a segment the simulator does
    // not know, 8 and 3 minutes before the newest reading: congested, then clear. They are
    // within the allowed lateness of the newest reading, so the watermark never passes them
    // while the service runs: the incident they start and end (congestion, and a pollution
    // level) is released only when SIGTERM drains the dataflow. The scenario alone has no
    // event message in its last 10 minutes.
    let mut msgs = encoded(&messages);
    let newest = messages.iter().map(|m| m.event_time).max().unwrap();
    for (before, speed, count) in [(8, 20, 20), (3, 50, 2)] {
        // Copenhagen summer time (UTC+2), as CityPulse writes it.
        let local = newest - chrono::Duration::minutes(before) + chrono::Duration::hours(2);
        msgs.push((
            format!("city/traffic/{DRAIN_PROBE}"),
            format!(
                r#"{{"avgSpeed":{speed},"vehicleCount":{count},"TIMESTAMP":"{}"}}"#,
                local.format("%Y-%m-%dT%H:%M:%S")
            )
            .into_bytes(),
        ));
    }

    // One client for everything under aqyl/, subscribed before anything is published: the
    // events, any dead letter, and the status. Aqyl publishes all of them on one connection,
    // `offline` last, so once `offline` has arrived every event has too.
    let outputs = Subscriber::start(mqtt.port, "aqyl/#");
    let aqyl = Aqyl::start_with(&config, &mqtt.url(), None);
    aqyl.wait_online(&outputs);
    // One publisher at QoS 1, in order: each sensor's readings stay in order.
    publish(mqtt.port, &msgs);
    // Everything must be in the dataflow before SIGTERM: messages still at the broker then
    // stay there for the next start.
    let total = msgs.len() as u64;
    wait_until(WAIT, "aqyl to receive every published message", || {
        aqyl.metric("aqyl_received_total ") == Some(total)
    });
    aqyl.stop();
    wait_until(
        WAIT,
        "aqyl's `offline`, published after its last event",
        || {
            outputs
                .messages()
                .iter()
                .any(|m| m.topic == "aqyl/status" && m.payload == b"offline")
        },
    );

    let received = outputs.messages();
    let dead: Vec<_> = received
        .iter()
        .filter(|m| m.topic.starts_with("aqyl/deadletter/"))
        .collect();
    assert!(dead.is_empty(), "dead letters: {:?}", dead.first());
    let mut payloads = Vec::new();
    let mut events = Vec::new();
    for m in received
        .iter()
        .filter(|m| m.topic.starts_with("aqyl/events/"))
    {
        let v: serde_json::Value = serde_json::from_slice(&m.payload).unwrap();
        let (ty, subject) = (
            v["event_type"].as_str().unwrap(),
            v["subject"].as_str().unwrap(),
        );
        assert_eq!(m.topic, format!("aqyl/events/{ty}/{subject}"));
        payloads.push(String::from_utf8(m.payload.clone()).unwrap());
        events.push(v);
    }

    // No duplicate: each incident starts once and ends at most once, no message twice.
    let mut lifecycle: BTreeMap<&str, (usize, usize)> = BTreeMap::new();
    for e in &events {
        let counts = lifecycle.entry(e["id"].as_str().unwrap()).or_default();
        match e["state"].as_str().unwrap() {
            "start" => counts.0 += 1,
            "end" => counts.1 += 1,
            _ => {}
        }
    }
    for (id, (starts, ends)) in &lifecycle {
        assert!(
            *starts == 1 && *ends <= 1,
            "{id}: {starts} starts, {ends} ends"
        );
    }
    let distinct: BTreeSet<&String> = payloads.iter().collect();
    assert_eq!(distinct.len(), payloads.len(), "a message arrived twice");

    // No loss: the drain released the probe's incidents, start and end ...
    let probe: BTreeSet<(&str, &str)> = events
        .iter()
        .filter(|e| e["subject"] == DRAIN_PROBE)
        .map(|e| {
            (
                e["event_type"].as_str().unwrap(),
                e["state"].as_str().unwrap(),
            )
        })
        .collect();
    for (ty, state) in [
        ("congestion", "start"),
        ("congestion", "end"),
        ("pollution_level", "start"),
        ("pollution_level", "end"),
    ] {
        assert!(
            probe.contains(&(ty, state)),
            "no {ty} {state} from the drain: {probe:?}"
        );
    }
    // ... and the service sent exactly what the dataflow computes in process.
    let mut got: Vec<String> = payloads.iter().map(|p| comparable(p)).collect();
    got.sort();
    let mut want: Vec<String> = in_process(&msgs, 2, RuleTiming::Arrival)
        .iter()
        .map(|p| comparable(p))
        .collect();
    want.sort();
    assert!(
        got == want,
        "{} event messages over MQTT, {} in process",
        got.len(),
        want.len()
    );
    println!(
        "over MQTT: {total} messages published; {} event messages about {} incidents received, \
         the same as in process",
        events.len(),
        lifecycle.len(),
    );

    // The probe is not part of the scenario: scored without it.
    events.retain(|e| e["subject"] != DRAIN_PROBE);
    assert_detected("over MQTT, 2 workers", &events, &truth);
}
