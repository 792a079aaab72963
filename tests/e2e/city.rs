//! City services end to end: the SensorThings catalogue driven by an independent client
//! (FROST's `frost-sta-client`, installed by `tests/run` in a virtualenv) over `aqyl run` fed
//! by `aqyl-sim`'s city, and the live city state on `/api/state` and the retained
//! `aqyl/state/<sensor_type>/<sensor_id>` topics, over a real Mosquitto.

use super::{config_dir, repo, Aqyl, AQYL, WAIT};
use aqyl_sim::sensors::{CityConfig, SensorType};
use aqyl_sim::simulation::{SimConfig, Simulation};
use aqyl_tests::{
    citypulse_row, publish, shipped_config, wait_until, Mosquitto, Subscriber, VictoriaMetrics,
};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::PathBuf;

/// The Python of the virtualenv `tests/run` makes (`AQYL_TEST_PYTHON`, or
/// `<target>/sta-venv/bin/python` beside the binary under test).
fn python() -> PathBuf {
    if let Some(p) = std::env::var_os("AQYL_TEST_PYTHON") {
        return p.into();
    }
    let target = std::path::Path::new(AQYL)
        .ancestors()
        .nth(2)
        .unwrap()
        .to_path_buf();
    let p = target.join("sta-venv/bin/python");
    assert!(
        p.exists(),
        "{} is missing: run the test command (bash tests/run), which installs frost-sta-client into it",
        p.display()
    );
    p
}

fn get(url: &str) -> (u16, String) {
    let r = reqwest::blocking::get(url).unwrap();
    (r.status().as_u16(), r.text().unwrap())
}

fn get_json(url: &str) -> Value {
    let (status, body) = get(url);
    assert_eq!(status, 200, "{url}: {body}");
    serde_json::from_str(&body).unwrap()
}

#[test]
fn frost_sta_client_lists_filters_and_reads_the_catalogue_of_a_simulated_city() {
    let mqtt = Mosquitto::start();
    let vm = VictoriaMetrics::start();
    let config = shipped_config();
    // One process: the catalogue takes the readings the ingest lets in, so online (ingest
    // subscribed) is all there is to wait for.
    let aqyl = Aqyl::online(&config.path().join("aqyl.toml"), &mqtt, &vm);

    // aqyl-sim's city: 3 sensors of each of the five types over two hours of readings.
    let city = CityConfig {
        sensors: 3,
        areas: 2,
        types: SensorType::ALL.to_vec(),
    };
    let start = aqyl_sim::time::parse_time("2014-08-01T00:00:00").unwrap();
    let (messages, _) =
        Simulation::generate(SimConfig::new(city, start, chrono::Duration::hours(2), 7)).unwrap();
    let msgs: Vec<(String, Vec<u8>)> = messages
        .iter()
        .map(|m| (m.topic.clone(), m.encode(None)))
        .collect();
    publish(mqtt.port, &msgs);
    let sensors: std::collections::BTreeSet<&str> = msgs.iter().map(|(t, _)| t.as_str()).collect();

    // Wait until the catalogue has every sensor's last reading (its time as Aqyl's own
    // decoder reads it; the client below compares the values independently).
    let loaded = aqyl_core::config::load(&config.path().join("aqyl.toml"), |_| None).unwrap();
    let registry = aqyl_core::ingest::decode::Registry::new(loaded.sensor_types.clone());
    let mut last: BTreeMap<(String, String), u64> = BTreeMap::new();
    for (topic, payload) in &msgs {
        let raw = aqyl_core::RawMessage {
            topic: topic.clone(),
            payload: payload.clone(),
            received_at: 0,
        };
        for o in registry.decode(&raw, 1 << 20).unwrap() {
            let t = last
                .entry((o.sensor_type.to_string(), o.sensor_id.to_string()))
                .or_default();
            *t = (*t).max(o.event_time);
        }
    }
    assert_eq!(last.len(), sensors.len());
    let state = format!("{}/api/state", aqyl.http);
    wait_until(WAIT, "every simulated sensor's last reading", || {
        let v = get_json(&state);
        let now: BTreeMap<(String, String), Value> = v["sensors"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| {
                let key = (
                    s["sensor_type"].as_str().unwrap().to_string(),
                    s["sensor_id"].as_str().unwrap().to_string(),
                );
                (key, s["reading"]["time"].clone())
            })
            .collect();
        last.iter().all(|(k, t)| {
            now.get(k) == Some(&Value::from(aqyl_core::output::rfc3339_ms(*t as i64)))
        })
    });

    let published: Vec<Value> = msgs
        .iter()
        .map(|(t, p)| serde_json::json!({"topic": t, "payload": serde_json::from_slice::<Value>(p).unwrap()}))
        .collect();
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), serde_json::to_vec(&published).unwrap()).unwrap();
    let out = std::process::Command::new(python())
        .arg(repo().join("tests/e2e/sensorthings_client.py"))
        .arg(format!("{}/v1.1", aqyl.http))
        .arg(file.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!("frost-sta-client: {stdout}");
    assert!(
        out.status.success(),
        "the client's checks failed: {}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    let checked: Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(checked["things"], sensors.len());
    assert!(
        checked["observations"].as_u64().unwrap() >= 3 * 16,
        "{checked}"
    );
    assert!(checked["in_box"].as_u64().unwrap() >= 1, "{checked}");

    // The SOSA/SSN description of a sensor.
    let ld = get_json(&format!("{}/sensors/traffic/158324.jsonld", aqyl.http));
    assert_eq!(ld["@type"], "sosa:Sensor");
    assert_eq!(ld["sosa:observes"].as_array().unwrap().len(), 4, "{ld}");
    assert!(ld["sosa:isHostedBy"]["geo:lat"].is_number(), "{ld}");
    assert!(!ld["sosa:madeObservation"].as_array().unwrap().is_empty());
    let negotiated = reqwest::blocking::Client::new()
        .get(format!("{}/v1.1/Things('traffic%2F158324')", aqyl.http))
        .header("accept", "application/ld+json")
        .send()
        .unwrap();
    assert_eq!(
        negotiated.headers()["content-type"],
        "application/ld+json",
        "content negotiation"
    );
    let negotiated: Value = negotiated.json().unwrap();
    assert_eq!(negotiated["@id"], ld["@id"]);
}

/// A config of `config_dir` with the traffic rules and a bearer token.
fn traffic_config(extra: &str) -> tempfile::TempDir {
    let dir = config_dir(1);
    super::with_traffic_rules(dir.path());
    let file = dir.path().join("aqyl.toml");
    let mut text = std::fs::read_to_string(&file).unwrap();
    text = text.replace("[pipeline]\n", "[pipeline]\nstate_ttl = \"1h\"\n");
    text.push_str(extra);
    std::fs::write(&file, text).unwrap();
    dir
}

#[test]
fn live_city_state_is_served_by_area_and_box_and_retained_per_sensor_coalesced() {
    let mqtt = Mosquitto::start();
    let dir = traffic_config("[http]\ntoken = \"city-token\"\n[city]\nstate_interval = \"1s\"\n");
    let states = Subscriber::start(mqtt.port, "aqyl/state/#");
    let status = Subscriber::start(mqtt.port, "aqyl/status");
    let aqyl = Aqyl::start_with(&dir.path().join("aqyl.toml"), &mqtt.url(), None);
    aqyl.wait_online(&status);

    // Segment 158324 congested (20 readings in one burst), 158325 flowing, and a hostile id.
    let t0 = 1_406_869_200; // 2014-08-01 05:00 UTC
    let mut msgs: Vec<(String, Vec<u8>)> = (0..20)
        .map(|i| citypulse_row("158324", t0 + i * 300, 20, 15))
        .collect();
    msgs.push(citypulse_row("158325", t0 + 19 * 300, 60, 3));
    let hostile = "we'ird (id)%1";
    let (_, payload) = citypulse_row("x", t0 + 19 * 300, 50, 2);
    msgs.push((format!("city/traffic/{hostile}"), payload));
    publish(mqtt.port, &msgs);

    let token = "token=city-token";
    let (status_code, _) = get(&format!("{}/api/state", aqyl.http));
    assert_eq!(status_code, 401, "the state needs the token like the rest");
    let (status_code, _) = get(&format!("{}/v1.1/Things", aqyl.http));
    assert_eq!(status_code, 401, "so does the catalogue");
    let url = |q: &str| format!("{}/api/state?{token}&{q}", aqyl.http);
    wait_until(
        WAIT,
        "three sensors, a quality report and the congestion",
        || {
            let v = get_json(&url("type=traffic"));
            v["total"] == 3
                && v["sensors"].as_array().unwrap().iter().any(|s| {
                    s["incidents"].as_array().is_some_and(|i| i.len() == 3)
                        && s["quality"]["score"].is_number()
                        && s["reading"]["time"] == "2014-08-01T06:35:00.000Z"
                })
        },
    );
    let v = get_json(&url("type=traffic"));
    let congested = v["sensors"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["sensor_id"] == "158324")
        .unwrap();
    assert_eq!(
        congested["reading"]["fields"]["avgSpeed"], 20.0,
        "{congested}"
    );
    assert_eq!(congested["reading"]["time"], "2014-08-01T06:35:00.000Z");
    assert!(congested["incidents"]
        .as_array()
        .unwrap()
        .iter()
        .any(|i| i["event_type"] == "congestion" && i["state"] != "end"));
    let area = congested["area"].as_str().unwrap().to_string();
    let (lat, lon) = (
        congested["lat"].as_f64().unwrap(),
        congested["lon"].as_f64().unwrap(),
    );

    // Filters by area and by box select the segment; a box elsewhere selects nothing.
    let by_area = get_json(&url(&format!("area={area}")));
    assert!(by_area["sensors"]
        .as_array()
        .unwrap()
        .iter()
        .all(|s| s["area"] == area.as_str()));
    assert!(by_area["sensors"]
        .as_array()
        .unwrap()
        .iter()
        .any(|s| s["sensor_id"] == "158324"));
    let bbox = format!(
        "bbox={},{},{},{}",
        lon - 0.001,
        lat - 0.001,
        lon + 0.001,
        lat + 0.001
    );
    let boxed = get_json(&url(&bbox));
    assert_eq!(boxed["sensors"][0]["sensor_id"], "158324", "{boxed}");
    assert_eq!(get_json(&url("bbox=0,0,1,1"))["total"], 0);
    let (code, body) = get(&url("bbox=1,2,3"));
    assert_eq!(code, 400, "{body}");

    // Retained per sensor (a hostile id stays one topic level), coalesced: 20 readings, their
    // quality reports and three incidents make far fewer than 60 messages for the segment.
    let escaped = "aqyl/state/traffic/we'ird (id)%251";
    wait_until(WAIT, "the state topics of all three", || {
        let got = states.messages();
        let topic = |t: &str| got.iter().any(|m| m.topic == t);
        topic(escaped)
            && topic("aqyl/state/traffic/158325")
            && got.iter().any(|m| {
                m.topic == "aqyl/state/traffic/158324"
                    && serde_json::from_slice::<Value>(&m.payload).is_ok_and(|v| {
                        v["reading"]["time"] == "2014-08-01T06:35:00.000Z"
                            && v["incidents"].as_array().is_some_and(|i| i.len() == 3)
                    })
            })
    });
    let for_segment = states
        .messages()
        .iter()
        .filter(|m| m.topic == "aqyl/state/traffic/158324")
        .count();
    assert!(
        for_segment < 20,
        "{for_segment} state messages for one segment"
    );
    let late = Subscriber::start(mqtt.port, "aqyl/state/traffic/158325");
    let got = late.wait_for(1, WAIT);
    assert!(
        got[0].retain,
        "an operator connecting later gets the state retained"
    );

    // The hostile id is addressable in the catalogue through its quoted, encoded link.
    let things = get_json(&format!(
        "{}/v1.1/Things?{token}&$filter=name%20eq%20%27we%27%27ird%20(id)%251%27",
        aqyl.http
    ));
    let link = things["value"][0]["@iot.selfLink"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        link.contains("Things('traffic%2Fwe%27%27ird%20%28id%29%251')"),
        "{link}"
    );
    let thing = get_json(&format!("{link}?{token}"));
    assert_eq!(thing["name"], hostile);

    // Two hours of event time later only 158325 still reports: the others are released
    // after state_ttl (1h) and their retained states cleared.
    publish(
        mqtt.port,
        &[citypulse_row("158325", t0 + 19 * 300 + 7200, 60, 3)],
    );
    wait_until(WAIT, "the silent segment's state to be cleared", || {
        states
            .messages()
            .iter()
            .any(|m| m.topic == "aqyl/state/traffic/158324" && m.payload.is_empty())
    });
    let v = get_json(&url(""));
    assert_eq!(v["total"], 1, "{v}");
    assert_eq!(v["sensors"][0]["sensor_id"], "158325");
    let (code, _) = get(&format!(
        "{}/v1.1/Things('traffic%2F158324')?{token}",
        aqyl.http
    ));
    assert_eq!(code, 404);
}
