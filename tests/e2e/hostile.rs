//! Hostile input against the real service: a sensor whose clock runs hours or decades ahead,
//! a thousand idle clients on the HTTP endpoint, and a rule nested 30,000 deep. Each must be
//! refused or contained with a clear answer while the rest of the city carries on.

use super::{config_dir, Aqyl, AQYL, WAIT};
use aqyl_tests::{publish, wait_until, Mosquitto, Subscriber, VictoriaMetrics};
use std::time::Duration;

/// A CityPulse traffic row of segment `id` at Unix second `t`, 5 vehicles.
pub(super) fn row(id: &str, t: i64, speed: u32) -> (String, Vec<u8>) {
    aqyl_tests::citypulse_row(id, t, speed, 5)
}

fn now_s() -> i64 {
    chrono::Utc::now().timestamp()
}

#[test]
fn a_sensor_clock_running_ahead_is_dead_lettered_and_makes_no_other_reading_late() {
    let mqtt = Mosquitto::start();
    let vm = VictoriaMetrics::start();
    // One worker: every segment shares the watermark a runaway clock would poison.
    let dir = config_dir(1);
    let status = Subscriber::start(mqtt.port, "aqyl/status");
    let dead = Subscriber::start(mqtt.port, "aqyl/deadletter/#");
    let aqyl = Aqyl::start(&dir.path().join("aqyl.toml"), &mqtt, &vm);
    aqyl.wait_online(&status);
    let t0 = now_s() - 8 * 60;
    let segments = ["158324", "158355", "158386"];
    let minute = |m: i64| -> Vec<_> { segments.iter().map(|s| row(s, t0 + 60 * m, 50)).collect() };
    let mut msgs = minute(0);
    // A segment whose clock says 2099, and one three hours ahead ...
    msgs.push(row("158324", 4_070_908_800, 50));
    msgs.push(row("158355", t0 + 3 * 3600, 50));
    // ... then eight more minutes of real readings, all within the 10-minute lateness.
    for m in 1..=8 {
        msgs.extend(minute(m));
    }
    publish(mqtt.port, &msgs);
    let real = 9 * segments.len() as u64;
    wait_until(WAIT, "every real reading accepted", || {
        aqyl.metric("aqyl_observations_total ") == Some(real)
    });
    let letters = dead.wait_for(2, WAIT);
    assert_eq!(
        aqyl.metric("aqyl_rejected_total{reason=\"future\"} "),
        Some(2)
    );
    assert!(
        matches!(
            aqyl.metric("aqyl_rejected_total{reason=\"late\"} "),
            None | Some(0)
        ),
        "no real reading was made late"
    );
    for letter in &letters {
        let v: serde_json::Value = serde_json::from_slice(&letter.payload).unwrap();
        assert_eq!(v["reason"], "future", "{v}");
        assert!(
            v["detail"].as_str().unwrap().contains("ingest.max_future"),
            "the dead letter names the knob: {v}"
        );
    }
    aqyl.stop();
}

#[test]
fn a_thousand_idle_http_clients_neither_silence_health_nor_starve_the_pipeline() {
    let mqtt = Mosquitto::start();
    let vm = VictoriaMetrics::start();
    let dir = config_dir(1);
    let aqyl = Aqyl::online(&dir.path().join("aqyl.toml"), &mqtt, &vm);
    let addr = aqyl.http.trim_start_matches("http://").to_string();
    // A thousand clients connect and never send a byte.
    let idle: Vec<_> = (0..1000)
        .filter_map(|_| std::net::TcpStream::connect(&addr).ok())
        .collect();
    assert!(idle.len() >= 900, "only {} connections opened", idle.len());
    // The pipeline goes on: an hour of one segment, 12 five-minute windows, reaches the store.
    let t0 = 1_406_851_200;
    let msgs: Vec<_> = (0..=60)
        .map(|m| row("idle-test", t0 + 60 * m, 40))
        .collect();
    publish(mqtt.port, &msgs);
    wait_until(
        WAIT,
        "every reading accepted while the clients hang",
        || aqyl.metric("aqyl_observations_total ") == Some(61),
    );
    // A health probe gets through while they are still connected.
    let client = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let mut health = String::new();
    wait_until(WAIT, "/health to answer ok", || {
        health = client
            .get(format!("{}/health", aqyl.http))
            .send()
            .and_then(|r| r.text())
            .unwrap_or_default();
        health == "ok\n"
    });
    aqyl.stop();
    drop(idle);
    let counts = vm.export(
        r#"{__name__="aggregate_count",field="avgSpeed",window="5m",sensor_id="idle-test"}"#,
    );
    assert_eq!(counts.len(), 1, "{counts:?}");
    assert_eq!(
        counts[0].samples.len(),
        13,
        "every window, the last one at the stop"
    );
}

/// A rules file whose condition nests `depth` parentheses deep, on line 5.
fn deep_rule(dir: &std::path::Path, depth: usize) {
    let condition = format!("{}avgSpeed < 10{}", "(".repeat(depth), ")".repeat(depth));
    std::fs::create_dir_all(dir.join("rules")).unwrap();
    std::fs::write(
        dir.join("rules/deep.toml"),
        format!(
            "# a rule nobody should write\n[[rule]]\nname = \"deep\"\nsensor_type = \"traffic\"\nenter = \"{condition}\"\nlevel = \"info\"\n"
        ),
    )
    .unwrap();
}

#[test]
fn a_rule_nested_30_000_deep_is_a_file_and_line_error_for_check_and_run() {
    let dir = config_dir(1);
    deep_rule(dir.path(), 30_000);
    let config = dir.path().join("aqyl.toml");
    let check = std::process::Command::new(AQYL)
        .args(["check", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&check.stderr).to_string()
        + &String::from_utf8_lossy(&check.stdout);
    assert_eq!(check.status.code(), Some(1), "{said}");
    assert!(
        said.contains("deep.toml:5"),
        "names the file and line: {said}"
    );
    assert!(
        said.contains("split it into simpler rules"),
        "says what to do: {said}"
    );

    let run = std::process::Command::new(AQYL)
        .args(["run", "--config"])
        .arg(&config)
        .env("AQYL_MQTT_URL", "mqtt://127.0.0.1:9")
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&run.stderr);
    assert_eq!(run.status.code(), Some(1), "refused, not aborted: {said}");
    assert!(
        said.contains("deep.toml:5") && said.contains("simpler rules"),
        "{said}"
    );
    // Within the size limit, nesting alone is refused too.
    deep_rule(dir.path(), 200);
    let check = std::process::Command::new(AQYL)
        .args(["check", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&check.stderr);
    assert_eq!(check.status.code(), Some(1), "{said}");
    assert!(
        said.contains("deep.toml:5") && said.contains("nests deeper"),
        "{said}"
    );
}
