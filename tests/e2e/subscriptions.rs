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

/// `PUT`, `GET`, `DELETE` with the bearer token, answering JSON.
fn call(method: &str, url: &str, token: Option<&str>, body: Option<&str>) -> (u16, String) {
    let client = reqwest::blocking::Client::new();
    let mut request = client.request(method.parse().unwrap(), url);
    if let Some(t) = token {
        request = request.bearer_auth(t);
    }
    if let Some(b) = body {
        request = request
            .header("content-type", "application/json")
            .body(b.to_string());
    }
    let response = request.send().unwrap();
    (response.status().as_u16(), response.text().unwrap())
}

/// Follows a server-sent-event stream on a thread; the lines received so far.
fn follow(url: &str, token: &str) -> std::sync::Arc<std::sync::Mutex<Vec<String>>> {
    use std::io::BufRead;
    let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let response = reqwest::blocking::Client::builder()
        .timeout(None)
        .build()
        .unwrap()
        .get(url)
        .bearer_auth(token)
        .send()
        .unwrap();
    assert_eq!(response.status().as_u16(), 200, "the live feed answers");
    let kept = lines.clone();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(response).lines() {
            let Ok(line) = line else { break };
            kept.lock().unwrap().push(line);
        }
    });
    lines
}

#[test]
fn subscriptions_over_http_need_the_token_stream_their_incidents_and_survive_a_restart() {
    let mqtt = Mosquitto::start();
    let vm = VictoriaMetrics::start();
    let dir = shipped_config();
    let config = dir.path().join("aqyl.toml");
    let token = "subs-token";
    let env = [("AQYL_HTTP_TOKEN", token)];
    let all = Subscriber::start(mqtt.port, "aqyl/subscriptions/#");
    let status = Subscriber::start(mqtt.port, "aqyl/status");
    let aqyl = Aqyl::start_env(&config, &mqtt.url(), Some(&vm.url()), &env);
    aqyl.wait_online(&status);
    let api = format!("{}/api/subscriptions", aqyl.http);
    let mine = format!("{api}/my-route");
    let body = r#"{"event_types":["congestion"],"route":["158324"]}"#;

    let (code, _) = call("PUT", &mine, None, Some(body));
    assert_eq!(code, 401, "a write without the token");
    let (code, text) = call("PUT", &mine, Some(token), Some(r#"{"route":"158324"}"#));
    assert_eq!(code, 400, "{text}");
    let err: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert!(err["error"].as_str().unwrap().contains("route"), "{text}");
    let (code, text) = call("PUT", &format!("{api}/north-west"), Some(token), Some("{}"));
    assert_eq!(code, 409, "a file's subscription: {text}");
    assert!(text.contains("examples.toml"), "{text}");
    let (code, text) = call("PUT", &mine, Some(token), Some(body));
    assert_eq!(code, 201, "{text}");
    let (code, text) = call("GET", &api, Some(token), None);
    assert_eq!(code, 200, "{text}");
    let list: serde_json::Value = serde_json::from_str(&text).unwrap();
    let origin = |name: &str| {
        list["subscriptions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["name"] == name)
            .map(|s| s["origin"]["kind"].clone())
    };
    assert_eq!(origin("my-route"), Some("http".into()), "{text}");
    assert_eq!(origin("north-west"), Some("file".into()), "{text}");

    // Its live feed, then a congestion on its route and one elsewhere.
    let feed = follow(&format!("{mine}/events"), token);
    let t = now_s();
    publish(
        mqtt.port,
        &[
            citypulse_row(ON_ROUTE, t - 5, 60, 3),
            citypulse_row(ELSEWHERE, t - 5, 60, 3),
        ],
    );
    publish(
        mqtt.port,
        &[
            citypulse_row(ON_ROUTE, t, 20, 12),
            citypulse_row(ELSEWHERE, t, 20, 12),
        ],
    );
    let topic = format!("aqyl/subscriptions/my-route/congestion/{ON_ROUTE}");
    wait_until(
        Duration::from_secs(30),
        "the HTTP subscription on MQTT",
        || all.messages().iter().any(|m| m.topic == topic),
    );
    wait_until(
        Duration::from_secs(30),
        "the incident on the live feed",
        || feed.lock().unwrap().iter().any(|l| l.starts_with("data:")),
    );
    let lines = feed.lock().unwrap().clone();
    assert!(lines.iter().any(|l| l == "event: incident"), "{lines:?}");
    let data: Vec<serde_json::Value> = lines
        .iter()
        .filter_map(|l| l.strip_prefix("data:"))
        .map(|d| serde_json::from_str(d.trim()).unwrap())
        .collect();
    assert_eq!(data[0]["subject"], ON_ROUTE, "{lines:?}");
    assert_eq!(data[0]["state"], "start");
    assert!(
        data.iter().all(|d| d["subject"] == ON_ROUTE),
        "only what the subscription selects: {lines:?}"
    );
    assert!(!all.messages().iter().any(
        |m| m.topic.starts_with("aqyl/subscriptions/my-route/") && m.topic.contains(ELSEWHERE)
    ));

    // Kept in the state directory: there after a restart; then deleted.
    aqyl.stop();
    let status = Subscriber::start(mqtt.port, "aqyl/status");
    let aqyl = Aqyl::start_env(&config, &mqtt.url(), Some(&vm.url()), &env);
    aqyl.wait_online(&status);
    let mine = format!("{}/api/subscriptions/my-route", aqyl.http);
    let (code, text) = call("GET", &mine, Some(token), None);
    assert_eq!(code, 200, "after a restart: {text}");
    assert!(text.contains("158324"), "{text}");
    let north_west = format!("{}/api/subscriptions/north-west", aqyl.http);
    let (code, text) = call("DELETE", &north_west, Some(token), None);
    assert_eq!(code, 409, "{text}");
    assert_eq!(call("DELETE", &mine, None, None).0, 401);
    assert_eq!(call("DELETE", &mine, Some(token), None).0, 204);
    assert_eq!(call("GET", &mine, Some(token), None).0, 404);
    assert_eq!(call("GET", &north_west, Some(token), None).0, 200);
}
