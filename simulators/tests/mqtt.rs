//! Integration tests against a real Mosquitto started on a free loopback port: the built
//! `aqyl-sim` binary publishes, a rumqttc client subscribed at QoS 1 checks what arrives.
#![allow(clippy::unwrap_used, missing_docs)]

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use aqyl_sim::faults::parse_fault_spec;
use aqyl_sim::scenario::Scenario;
use aqyl_sim::sensors::{CityConfig, SensorType};
use aqyl_sim::simulation::{SimConfig, Simulation};
use aqyl_sim::truth::{read_file, TruthRecord};
use aqyl_tests::{Mosquitto, Subscriber};
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_aqyl-sim");

/// Topic and payload of each message received.
type Received = Vec<(String, Vec<u8>)>;

/// Everything received on `filter`, in arrival order (the shared harness's subscriber).
struct Collector(Subscriber);

impl Collector {
    fn start(port: u16, filter: &str) -> Collector {
        Collector(Subscriber::start(port, filter))
    }

    /// Waits until `n` messages arrived (or 20 s passed) plus a short grace for extras.
    fn wait_for(&self, n: usize) -> Received {
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.0.messages().len() < n && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(20));
        }
        thread::sleep(Duration::from_millis(200));
        self.0
            .messages()
            .into_iter()
            .map(|m| (m.topic, m.payload))
            .collect()
    }
}

fn sim(args: &[&str]) -> std::process::Output {
    let out = Command::new(BIN)
        .args(args)
        .env("AQYL_LOG", "warn")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "aqyl-sim {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// The payload with the wall-clock `sent_at` removed, or `None` when it does not parse.
fn normalise(body: &[u8]) -> Option<String> {
    let mut v: Value = serde_json::from_slice(body).ok()?;
    match &mut v {
        Value::Object(m) => {
            m.remove("sent_at");
        }
        Value::Array(a) => {
            if let Some(Value::Object(m)) = a.first_mut() {
                m.remove("sent_at");
            }
        }
        _ => {}
    }
    Some(v.to_string())
}

fn seq_of(body: &[u8]) -> Option<u64> {
    let v: Value = serde_json::from_slice(body).ok()?;
    let obj = if v.is_array() { v.get(0)? } else { &v };
    obj.get("seq")?.as_u64()
}

const SCENARIO: &str = r#"
[[incident]]
type = "congestion"
area = "area-2"
start = "2014-08-01T07:30:00"
end = "2014-08-01T08:30:00"

[[incident]]
type = "outage"
sensor_type = "traffic"
sensor = "158324"
start = "2014-08-01T02:00:00"
end = "2014-08-01T03:00:00"

[[fault]]
type = "duplicate"
sensor_type = "pollution"
sensor = "158325"
start = "2014-08-01T04:00:00"
end = "2014-08-01T04:20:00"

[[fault]]
type = "malformed"
sensor_type = "parking"
sensor = "NORREPORT"
start = "2014-08-01T05:00:00"
end = "2014-08-01T07:00:00"
"#;

#[test]
fn run_delivers_exactly_what_the_ground_truth_says() {
    let broker = Mosquitto::start();
    let dir = tempfile::tempdir().unwrap();
    let scenario = dir.path().join("scenario.toml");
    std::fs::write(&scenario, SCENARIO).unwrap();
    let truth_path = dir.path().join("truth.jsonl");
    let faults = [
        "dropout=0.02:20m",
        "duplicate=0.02",
        "malformed=0.02",
        "stuck=0.01",
    ];
    let collector = Collector::start(broker.port, "city/#");
    let url = broker.url();
    let mut args = vec![
        "run",
        "--url",
        &url,
        "--qos",
        "1",
        "--max",
        "--trace",
        "--sensors",
        "3",
        "--areas",
        "2",
        "--start",
        "2014-08-01T00:00:00",
        "--duration",
        "10h",
        "--seed",
        "7",
        "--connections",
        "2",
    ];
    let scenario_arg = scenario.to_str().unwrap();
    let truth_arg = truth_path.to_str().unwrap();
    args.extend(["--scenario", scenario_arg, "--truth", truth_arg]);
    for f in &faults {
        args.extend(["--fault", f]);
    }
    sim(&args);

    // The same configuration through the library gives the expected stream.
    let mut config = SimConfig::new(
        CityConfig {
            sensors: 3,
            areas: 2,
            types: SensorType::ALL.to_vec(),
        },
        aqyl_sim::time::parse_time("2014-08-01T00:00:00").unwrap(),
        chrono::Duration::hours(10),
        7,
    )
    .with_scenario(&Scenario::load(&scenario).unwrap());
    for f in &faults {
        config.rates.push(parse_fault_spec(f).unwrap());
    }
    let (expected, expected_truth) = Simulation::generate(config).unwrap();
    let truth = read_file(&truth_path).unwrap();
    assert_eq!(
        truth, expected_truth,
        "the truth file is deterministic for the seed"
    );

    let received = collector.wait_for(expected.len());
    assert_eq!(received.len(), expected.len());

    // Per topic, the same payloads in the same order (malformed ones as None).
    let mut want: BTreeMap<String, Vec<Option<String>>> = BTreeMap::new();
    for m in &expected {
        let body = aqyl_sim::payload::encode(
            &m.payload,
            Some(aqyl_sim::payload::Trace {
                seq: m.seq,
                sent_at: 0,
            }),
            m.truncate,
        );
        want.entry(m.topic.clone())
            .or_default()
            .push(normalise(&body));
    }
    let mut got: BTreeMap<String, Vec<Option<String>>> = BTreeMap::new();
    for (topic, body) in &received {
        got.entry(topic.clone()).or_default().push(normalise(body));
    }
    assert_eq!(got, want);

    // And explicitly, fault by fault.
    let mut kinds = BTreeMap::new();
    for rec in &truth {
        let TruthRecord::Fault(f) = rec else { continue };
        *kinds.entry(f.kind.clone()).or_insert(0) += 1;
        let topic = format!("city/{}/{}", f.sensor_type, f.sensor);
        let window: Vec<&(String, Vec<u8>)> = received
            .iter()
            .filter(|(t, b)| {
                *t == topic
                    && event_time(f.sensor_type.as_str(), b)
                        .is_some_and(|t| f.start <= t && t <= f.end)
            })
            .collect();
        match f.kind.as_str() {
            "dropout" => assert!(
                window.is_empty(),
                "dropout {f:?} but received {}",
                window.len()
            ),
            "duplicate" => {
                assert_eq!(window.len() as u64, 2 * f.messages, "{f:?}");
                assert_eq!(window[0].1.len(), window[1].1.len());
                assert_eq!(seq_of(&window[0].1), seq_of(&window[1].1));
            }
            "malformed" => {
                let bad = received
                    .iter()
                    .filter(|(t, b)| *t == topic && serde_json::from_slice::<Value>(b).is_err())
                    .count();
                assert!(bad as u64 >= f.messages, "{f:?}");
            }
            _ => {}
        }
    }
    for k in ["dropout", "duplicate", "malformed"] {
        assert!(
            kinds.get(k).is_some_and(|n| *n > 0),
            "no {k} episode in {kinds:?}"
        );
    }
    // Sequence numbers: every reading has one; gaps are exactly the dropped ones.
    let mut seqs: HashMap<&str, Vec<u64>> = HashMap::new();
    for (topic, body) in &received {
        if let Some(s) = seq_of(body) {
            seqs.entry(topic).or_default().push(s);
        }
    }
    let outage_topic = "city/traffic/158324";
    let outage_seqs = &seqs[outage_topic];
    assert!(
        outage_seqs.windows(2).all(|w| w[0] <= w[1]),
        "per-sensor order is kept"
    );
    // The outage: no traffic row of 158324 between 02:00 and 03:00 local time.
    assert!(!received.iter().any(|(t, b)| t == outage_topic
        && serde_json::from_slice::<Value>(b)
            .ok()
            .and_then(|v| v["TIMESTAMP"].as_str().map(str::to_owned))
            .is_some_and(
                |ts| ("2014-08-01T02:00:00".."2014-08-01T03:00:00").contains(&ts.as_str())
            )));
}

fn event_time(sensor_type: &str, body: &[u8]) -> Option<chrono::DateTime<chrono::Utc>> {
    let v: Value = serde_json::from_slice(body).ok()?;
    let kind: SensorType = sensor_type.parse().ok()?;
    let field = v.get(0).unwrap_or(&v).get(kind.time_field())?;
    match field {
        Value::Number(n) => chrono::DateTime::from_timestamp(n.as_i64()?, 0),
        Value::String(s) => aqyl_sim::time::parse_local(s),
        _ => None,
    }
}

#[test]
fn load_test_counts_every_message_at_qos_1() {
    let broker = Mosquitto::start();
    let url = broker.url();
    let out = sim(&[
        "load",
        "--url",
        &url,
        "--max",
        "--qos",
        "1",
        "--connections",
        "2",
        "--count",
        "20000",
        "--sensors",
        "10",
        "--json",
    ]);
    let summary: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(summary["published"], 20000);
    assert_eq!(summary["lost"], 0);
    assert_eq!(summary["duplicates"], 0);
    assert_eq!(summary["received"], 20000);
    assert_eq!(summary["latency"]["count"], 20000);
    assert!(summary["publish_rate"].as_f64().unwrap() > 0.0);
}

fn write_traffic(dir: &Path, id: u32, times: &[&str]) {
    let path = dir.join(format!("traffic/AarhusTrafficData{id}.csv"));
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let mut text = String::from("status,avgMeasuredTime,avgSpeed,extID,medianMeasuredTime,TIMESTAMP,vehicleCount,_id,REPORT_ID\r\n");
    for (i, t) in times.iter().enumerate() {
        text.push_str(&format!(
            "OK,74,{},668,74,{t},{i},{},{id}\r\n",
            40 + i,
            100 * id as usize + i
        ));
    }
    std::fs::write(path, text).unwrap();
}

#[test]
fn replay_keeps_each_sensors_order_over_several_connections() {
    let broker = Mosquitto::start();
    let data = tempfile::tempdir().unwrap();
    let times: Vec<String> = (0..50)
        .map(|i| format!("2014-08-01T{:02}:{:02}:00", i * 5 / 60, i * 5 % 60))
        .collect();
    let times: Vec<&str> = times.iter().map(String::as_str).collect();
    for id in [11, 12, 13] {
        write_traffic(data.path(), id, &times);
    }
    let collector = Collector::start(broker.port, "city/traffic/#");
    let url = broker.url();
    sim(&[
        "replay",
        "--url",
        &url,
        "--data",
        data.path().to_str().unwrap(),
        "--types",
        "traffic",
        "--max",
        "--connections",
        "3",
        "--trace",
        "--limit",
        "40",
    ]);
    let received = collector.wait_for(120);
    assert_eq!(received.len(), 120);
    for id in [11, 12, 13] {
        let topic = format!("city/traffic/{id}");
        let rows: Vec<Value> = received
            .iter()
            .filter(|(t, _)| *t == topic)
            .map(|(_, b)| serde_json::from_slice(b).unwrap())
            .collect();
        assert_eq!(rows.len(), 40);
        for (i, r) in rows.iter().enumerate() {
            assert_eq!(r["seq"], i as u64);
            assert_eq!(r["TIMESTAMP"], times[i]);
            assert_eq!(r["REPORT_ID"], id);
            assert_eq!(r["vehicleCount"], i as u64);
        }
    }
}

#[test]
fn run_publishes_over_mqtts_with_a_password_file_and_a_client_certificate() {
    let pki = aqyl_tests::Pki::generate();
    let broker = Mosquitto::start_tls(&pki, "sim", "Sim-pw-91c3", true);
    let dir = tempfile::tempdir().unwrap();
    let pass = dir.path().join("sim.pass");
    std::fs::write(&pass, "Sim-pw-91c3\n").unwrap();
    let collector = Collector::start(broker.port, "city/traffic/#");
    let url = broker.tls_url();
    let (ca, cert, key) = (
        pki.ca.to_str().unwrap(),
        pki.client_cert.to_str().unwrap(),
        pki.client_key.to_str().unwrap(),
    );
    let pass_arg = pass.to_str().unwrap();
    let tls = [
        "--url",
        &url,
        "--ca-file",
        ca,
        "--client-cert",
        cert,
        "--client-key",
        key,
        "--username",
        "sim",
        "--password-file",
        pass_arg,
    ];
    let city = [
        "--types",
        "traffic",
        "--sensors",
        "2",
        "--duration",
        "10m",
        "--max",
        "--qos",
        "1",
    ];
    let args: Vec<&str> = ["run"].iter().chain(&tls).chain(&city).copied().collect();
    sim(&args);
    let got = collector.wait_for(4);
    assert!(got.len() >= 4, "{} messages over TLS", got.len());

    // Another CA, or another password: an error saying what to fix, at once.
    let failing = |args: Vec<&str>| {
        let out = Command::new(BIN).args(&args).output().unwrap();
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let mut wrong_ca: Vec<&str> = ["run"].iter().chain(&tls).chain(&city).copied().collect();
    let other = pki.other_ca.to_str().unwrap();
    wrong_ca[4] = other; // the value of --ca-file

    let err = failing(wrong_ca);
    assert!(
        err.contains("is not signed by the CA certificate(s) in --ca-file ("),
        "{err}"
    );
    std::fs::write(&pass, "Wrong-pw-77\n").unwrap();
    let err = failing(["run"].iter().chain(&tls).chain(&city).copied().collect());
    assert!(err.contains("refused user \"sim\""), "{err}");
    assert!(
        !err.contains("Sim-pw-91c3") && !err.contains("Wrong-pw-77"),
        "{err}"
    );
}
