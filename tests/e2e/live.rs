//! Live incidents reach operators on arrival (issue #11): with the shipped configuration,
//! whose 10-minute allowed lateness holds the watermark 10 minutes behind the newest reading,
//! a congestion's `start` and `end` are still published within seconds of the reading that
//! causes them, on the event topic and on the retained active topic. The deadline is
//! generous; the test asserts that nothing waits for the watermark, not a speed.

use super::Aqyl;
use aqyl_tests::{publish, shipped_config, wait_until, Mosquitto, Subscriber, VictoriaMetrics};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Far below the 10 minutes a reading waits for the watermark, far above a loaded machine's
/// delay.
const ON_ARRIVAL: Duration = Duration::from_secs(20);
/// A real Aarhus road segment.
const SEGMENT: &str = "158324";

/// Sleeps until the next whole second of the wall clock and returns it (Unix seconds): the
/// descriptor's time format counts whole seconds, so readings a second apart are strictly
/// newer than the segment's previous one.
fn next_second() -> i64 {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    std::thread::sleep(Duration::from_secs(1) - Duration::from_nanos(now.subsec_nanos().into()));
    now.as_secs() as i64 + 1
}

/// A CityPulse row of `SEGMENT` at `unix_s`.
fn reading(unix_s: i64, speed: u32, vehicles: u32) -> (String, Vec<u8>) {
    aqyl_tests::citypulse_row(SEGMENT, unix_s, speed, vehicles)
}

fn json(payload: &[u8]) -> serde_json::Value {
    serde_json::from_slice(payload).unwrap()
}

/// The event time of an event message, Unix seconds.
fn time_s(event: &serde_json::Value) -> i64 {
    chrono::DateTime::parse_from_rfc3339(event["time"].as_str().unwrap())
        .unwrap()
        .timestamp()
}

/// Waits for the `n`th message on `sub`, naming `what` if it does not come; returns it and
/// prints when it was seen, counted from `sent`.
fn nth(sub: &Subscriber, n: usize, what: &str, sent: Instant) -> aqyl_tests::Received {
    wait_until(
        ON_ARRIVAL,
        &format!(
            "{what} (it must be published on arrival, not when the watermark, 10 minutes \
             behind, passes the reading)"
        ),
        || sub.messages().len() >= n,
    );
    // An upper bound: it includes the test publisher's connect and disconnect (the latency
    // benchmark, crates/aqyl/benches/latency.rs, measures the delay itself).
    println!(
        "{what}: seen {:?} after starting to publish the reading",
        sent.elapsed()
    );
    sub.messages()[n - 1].clone()
}

#[test]
fn a_live_congestion_is_published_on_arrival_not_after_the_allowed_lateness() {
    let mqtt = Mosquitto::start();
    let vm = VictoriaMetrics::start();
    let dir = shipped_config();
    let status = Subscriber::start(mqtt.port, "aqyl/status");
    let events = Subscriber::start(mqtt.port, "aqyl/events/congestion/#");
    let aqyl = Aqyl::start(&dir.path().join("aqyl.toml"), &mqtt, &vm);
    aqyl.wait_online(&status);
    let topic = format!("aqyl/events/congestion/{SEGMENT}");
    let active_topic = format!("aqyl/active/congestion/{SEGMENT}");

    // Free flow, then a crawl a second later: the crawl starts a congestion.
    publish(mqtt.port, &[reading(next_second(), 60, 3)]);
    let crawl = next_second();
    let sent = Instant::now();
    publish(mqtt.port, &[reading(crawl, 20, 10)]);
    let start = nth(&events, 1, "the congestion start", sent);
    assert_eq!(start.topic, topic);
    let start = json(&start.payload);
    assert_eq!(start["state"], "start", "{start}");
    assert_eq!(start["subject"], SEGMENT);
    assert_eq!(time_s(&start), crawl, "the start is the crawl's: {start}");

    // An operator who connects now sees the ongoing congestion.
    let operator = Subscriber::start(mqtt.port, "aqyl/active/congestion/#");
    let active = nth(&operator, 1, "the retained active congestion", sent);
    assert!(active.retain, "delivered from the retained store");
    assert_eq!(active.topic, active_topic);
    let active = json(&active.payload);
    assert_eq!(active["id"], start["id"], "{active}");
    assert_eq!(active["state"], "start");

    // Traffic flows again: the congestion ends and the retained incident is cleared.
    let flow = next_second();
    let sent = Instant::now();
    publish(mqtt.port, &[reading(flow, 60, 3)]);
    let end = nth(&events, 2, "the congestion end", sent);
    assert_eq!(end.topic, topic);
    let end = json(&end.payload);
    assert_eq!(end["state"], "end", "{end}");
    assert_eq!(end["id"], start["id"], "one id per incident");
    assert_eq!(time_s(&end), flow, "the end is the free flow's: {end}");
    let cleared = nth(&operator, 2, "the cleared active congestion", sent);
    assert_eq!(cleared.topic, active_topic);
    assert!(
        cleared.payload.is_empty(),
        "an empty message clears the retained incident"
    );
    aqyl.stop();
}
