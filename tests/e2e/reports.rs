//! Citizen reports (issue #17) with the shipped configuration: `POST /api/reports` refuses
//! bad JSON, an oversized body and a client over its rate limit with the right 4xx, counts
//! and dead-letters each; a good report is published on `city/reports/<category>/<id>`, taken
//! into the dataflow as a `citizen_report` observation, and corroborates the congestion of the
//! segment 220 m from it (the shipped `config/rules/citizen_report.toml`).

use super::Aqyl;
use aqyl_tests::{
    citypulse_row, publish, shipped_config, wait_until, Mosquitto, Subscriber, VictoriaMetrics,
};
use std::time::Duration;

/// Segment 158324 of the shipped registry, and a point 222 m north of it.
const SEGMENT: &str = "158324";
const NEAR: (f64, f64) = (56.230758, 10.110788);

const TOKEN: &str = "reports-token";

fn post(url: &str, token: Option<&str>, body: String) -> (u16, Option<String>, serde_json::Value) {
    let mut request = reqwest::blocking::Client::new()
        .post(url)
        .header("content-type", "application/json")
        .body(body);
    if let Some(t) = token {
        request = request.bearer_auth(t);
    }
    let response = request.send().unwrap();
    let status = response.status().as_u16();
    let retry = response
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_string());
    let text = response.text().unwrap();
    let json = serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text));
    (status, retry, json)
}

fn report(lat: f64, lon: f64) -> String {
    let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    serde_json::json!({
        "category": "traffic",
        "position": {"lat": lat, "lon": lon},
        "time": now,
        "text": "Queue back to the bridge",
        "photo_url": "https://example.org/p/1.jpg"
    })
    .to_string()
}

#[test]
fn reports_are_checked_limited_dead_lettered_and_good_ones_become_observations() {
    let mqtt = Mosquitto::start();
    let vm = VictoriaMetrics::start();
    let dir = shipped_config();
    let config = dir.path().join("aqyl.toml");
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, text.replace("per_minute = 10", "per_minute = 4")).unwrap();
    let dead = Subscriber::start(mqtt.port, "aqyl/deadletter/citizen_report");
    let reports = Subscriber::start(mqtt.port, "city/reports/#");
    let events = Subscriber::start(mqtt.port, &format!("aqyl/events/congestion/{SEGMENT}"));
    let status = Subscriber::start(mqtt.port, "aqyl/status");
    let aqyl = Aqyl::start_env(
        &config,
        &mqtt.url(),
        Some(&vm.url()),
        &[("AQYL_HTTP_TOKEN", TOKEN)],
    );
    aqyl.wait_online(&status);
    // A congestion under way on the segment (the shipped traffic rules, judged on arrival).
    let t = chrono::Utc::now().timestamp();
    publish(mqtt.port, &[citypulse_row(SEGMENT, t - 5, 60, 3)]);
    publish(mqtt.port, &[citypulse_row(SEGMENT, t, 20, 12)]);
    events.wait_for(1, Duration::from_secs(30));
    let url = format!("{}/api/reports", aqyl.http);
    // `/metrics` needs the token here.
    let metric = |line: &str| -> Option<u64> {
        reqwest::blocking::Client::new()
            .get(format!("{}/metrics", aqyl.http))
            .bearer_auth(TOKEN)
            .send()
            .ok()?
            .text()
            .ok()?
            .lines()
            .find_map(|l| l.strip_prefix(line)?.trim().parse().ok())
    };
    let observations = |_: &Aqyl| metric("aqyl_observations_total ").unwrap_or(0);
    let before = observations(&aqyl);

    let (code, _, _) = post(&url, None, report(56.15, 10.2));
    assert_eq!(code, 401, "without the token");
    let (code, _, body) = post(&url, Some(TOKEN), "{\"category\": ".into());
    assert_eq!(
        (code, body["reason"].as_str()),
        (400, Some("malformed_json")),
        "{body}"
    );
    let (code, _, body) = post(&url, Some(TOKEN), format!("{:9000}", report(56.15, 10.2)));
    assert_eq!(
        (code, body["reason"].as_str()),
        (413, Some("oversized")),
        "{body}"
    );
    let (code, _, body) = post(&url, Some(TOKEN), report(96.0, 10.2));
    assert_eq!(
        (code, body["field"].as_str()),
        (400, Some("position.lat")),
        "{body}"
    );
    let (code, _, good) = post(&url, Some(TOKEN), report(NEAR.0, NEAR.1));
    assert_eq!(code, 202, "{good}");
    let (code, retry, body) = post(&url, Some(TOKEN), report(56.15, 10.2));
    assert_eq!(
        (code, body["reason"].as_str()),
        (429, Some("rate_limited")),
        "{body}"
    );
    let retry: u64 = retry.expect("Retry-After").parse().unwrap();
    assert!((1..=15).contains(&retry), "a token every 15 s: {retry}");

    // Counted per reason and dead-lettered, each with its reason.
    for reason in [
        "malformed_json",
        "oversized",
        "invalid_value",
        "rate_limited",
    ] {
        let line = format!("aqyl_reports_rejected_total{{reason=\"{reason}\"}} ");
        assert_eq!(metric(&line), Some(1), "{reason}");
    }
    assert_eq!(metric("aqyl_reports_accepted_total "), Some(1));
    let letters = dead.wait_for(4, Duration::from_secs(20));
    let mut reasons: Vec<String> = letters
        .iter()
        .map(|m| {
            let v: serde_json::Value = serde_json::from_slice(&m.payload).unwrap();
            assert_eq!(v["topic"], "POST /api/reports");
            v["reason"].as_str().unwrap().to_string()
        })
        .collect();
    reasons.sort();
    assert_eq!(
        reasons,
        [
            "invalid_value",
            "malformed_json",
            "oversized",
            "rate_limited"
        ]
    );

    // The good one on its topic, then through ingest into the dataflow.
    let id = good["id"].as_str().unwrap();
    let topic = format!("city/reports/traffic/{id}");
    assert_eq!(good["topic"], topic);
    let got = reports.wait_for(1, Duration::from_secs(20));
    assert_eq!(got.len(), 1, "only the good report is published");
    assert_eq!(got[0].topic, topic);
    let payload: serde_json::Value = serde_json::from_slice(&got[0].payload).unwrap();
    assert_eq!(payload["position"]["lat"], NEAR.0);
    wait_until(
        Duration::from_secs(30),
        "the report as an observation",
        || observations(&aqyl) > before,
    );
    let state = || -> serde_json::Value {
        let text = reqwest::blocking::Client::new()
            .get(format!("{}/api/state?type=citizen_report", aqyl.http))
            .bearer_auth(TOKEN)
            .send()
            .unwrap()
            .text()
            .unwrap();
        serde_json::from_str(&text).unwrap()
    };
    wait_until(
        Duration::from_secs(30),
        "the report in the city state",
        || state()["sensors"][0]["sensor_id"] == id,
    );
    let state = state();
    let sensor = &state["sensors"][0];
    assert_eq!(
        sensor["area"], "traffic",
        "the category is the report's area: {state}"
    );
    assert_eq!(sensor["reading"]["fields"]["lat"], NEAR.0, "{state}");

    // It corroborates the congestion: an update of the same incident.
    let update = || {
        events.messages().into_iter().find_map(|m| {
            let v: serde_json::Value = serde_json::from_slice(&m.payload).ok()?;
            (v["state"] == "update").then_some(v)
        })
    };
    wait_until(Duration::from_secs(30), "the corroboration", || {
        update().is_some()
    });
    let update = update().unwrap();
    let start: serde_json::Value = serde_json::from_slice(&events.messages()[0].payload).unwrap();
    assert_eq!(start["state"], "start");
    assert_eq!(update["id"], start["id"], "the same incident: {update}");
    assert_eq!(update["values"]["corroborated"], true, "{update}");
    assert_eq!(update["values"]["report_id"], id, "{update}");
    let d = update["values"]["distance_m"].as_f64().unwrap();
    assert!((200.0..250.0).contains(&d), "{d}");
}
