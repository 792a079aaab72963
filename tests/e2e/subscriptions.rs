//! Contextual subscriptions (issue #17) with the shipped examples
//! (`config/subscriptions/examples.toml`): a congestion on a segment of the north-west grid
//! cell and of the bus route reaches both subscriptions, the area congestion it makes with a
//! second segment reaches them too, and a congestion elsewhere reaches none; the centre's
//! critical-only subscription sees nothing of the north-west.

use super::Aqyl;
use aqyl_tests::{
    citypulse_row, publish, shipped_config, wait_until, Mosquitto, Subscriber, VictoriaMetrics,
};
use std::collections::BTreeSet;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// In grid-11-03 and on the bus route.
const ON_ROUTE: &str = "158324";
/// In grid-11-03, also on the route.
const NEIGHBOUR: &str = "158355";
/// In grid-10-05, on no route, north of the centre's box.
const ELSEWHERE: &str = "158655";

fn now_s() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

#[test]
fn incidents_reach_the_subscriptions_that_select_them_and_no_other() {
    let mqtt = Mosquitto::start();
    let vm = VictoriaMetrics::start();
    let dir = shipped_config();
    // One subscriber for both, so the order Aqyl published in (a subscription's copy before
    // the lifecycle message) is the order seen.
    let all = Subscriber::start(mqtt.port, "aqyl/#");
    let _aqyl = Aqyl::online(&dir.path().join("aqyl.toml"), &mqtt, &vm);

    // Free flow on the three segments, then a crawl a few seconds later: three congestions,
    // and two in grid-11-03 make an area congestion.
    let t = now_s();
    let segments = [ON_ROUTE, NEIGHBOUR, ELSEWHERE];
    let free: Vec<_> = segments
        .iter()
        .map(|s| citypulse_row(s, t - 5, 60, 3))
        .collect();
    publish(mqtt.port, &free);
    let crawl: Vec<_> = segments
        .iter()
        .map(|s| citypulse_row(s, t, 20, 12))
        .collect();
    publish(mqtt.port, &crawl);

    let topics = |under: &str| -> BTreeSet<String> {
        all.messages()
            .into_iter()
            .map(|m| m.topic)
            .filter(|t| t.starts_with(under))
            .collect()
    };
    let expected: BTreeSet<String> = [
        "north-west/congestion/158324",
        "north-west/congestion/158355",
        "north-west/area_congestion/grid-11-03",
        "bus-route-2a/congestion/158324",
        "bus-route-2a/congestion/158355",
        "bus-route-2a/area_congestion/grid-11-03",
    ]
    .iter()
    .map(|t| format!("aqyl/subscriptions/{t}"))
    .collect();
    wait_until(
        Duration::from_secs(30),
        "the subscriptions' incidents",
        || expected.is_subset(&topics("aqyl/subscriptions/")),
    );
    // Everything that was raised has been published by now, the congestion elsewhere too.
    let elsewhere = format!("aqyl/events/congestion/{ELSEWHERE}");
    wait_until(Duration::from_secs(30), "the congestion elsewhere", || {
        topics("aqyl/events/").contains(&elsewhere)
    });
    let got = topics("aqyl/subscriptions/");
    let extra: Vec<_> = got.difference(&expected).collect();
    assert!(
        extra
            .iter()
            .all(|t| !t.contains(ELSEWHERE) && !t.contains("centre-critical")),
        "selected by no subscription, yet published: {extra:?}"
    );
    // The payload is the lifecycle message itself.
    let start = all
        .messages()
        .into_iter()
        .find(|m| m.topic == "aqyl/subscriptions/bus-route-2a/congestion/158324")
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&start.payload).unwrap();
    assert_eq!(v["state"], "start");
    assert_eq!(v["subject"], ON_ROUTE);
    assert_eq!(v["event_type"], "congestion");
}
