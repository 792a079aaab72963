//! End-to-end tests: the real `aqyl` binary against a real Mosquitto and a real
//! VictoriaMetrics (InfluxDB v2 write API), each started here on free loopback ports.

#![allow(clippy::unwrap_used)] // test helpers: a failed unwrap is a failed test

use aqyl_tests::{publish, wait_until, Mosquitto, Subscriber, VictoriaMetrics};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

mod city;
mod cluster;
mod deploy;
mod detection;
mod durable;
mod faults;
mod hostile;
mod live;
mod ops;
mod quality;
mod replay;
mod replay_cli;
mod reports;
mod subscriptions;
mod tls;

const AQYL: &str = env!("CARGO_BIN_EXE_aqyl");
const WAIT: Duration = Duration::from_secs(60);

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The shipped configuration, and the dataflow as `aqyl run` sets it up to replay data with
/// it: the watermark in event time only, quality scoring in event time, `workers` workers,
/// the shipped rules or none.
fn shipped_replay(
    workers: usize,
    rules: bool,
) -> (aqyl_core::config::Loaded, aqyl_dataflow::PipelineSpec) {
    let loaded = aqyl_core::config::load(&repo().join("config/aqyl.toml"), |_| None).unwrap();
    let mut config = loaded.config.clone();
    config.pipeline.idle_timeout = Duration::ZERO;
    let spec = aqyl_dataflow::PipelineSpec {
        corroborate: Default::default(),
        registry: aqyl_dataflow::shared(aqyl_core::ingest::decode::Registry::new(
            loaded.sensor_types.clone(),
        )),
        workers,
        window: Duration::from_secs(300),
        allowed_lateness: Duration::from_secs(600),
        idle_timeout: None,
        max_payload_bytes: 65536,
        max_future: None,
        update_horizon: None,
        rule_timing: Default::default(),
        state_ttl: None,
        rules: std::sync::Arc::new(if rules {
            loaded.rules.clone()
        } else {
            Vec::new()
        }),
        quality: aqyl::service::quality_spec(&config),
    };
    (loaded, spec)
}

/// A config directory whose file points at unreachable services: the test passes the real
/// addresses through the environment, which must win.
fn config_dir(workers: usize) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("sensors")).unwrap();
    std::fs::copy(
        repo().join("config/sensors/traffic.toml"),
        dir.path().join("sensors/traffic.toml"),
    )
    .unwrap();
    std::fs::create_dir(dir.path().join("sensors/registry")).unwrap();
    std::fs::copy(
        repo().join("config/sensors/registry/aarhus-traffic.csv"),
        dir.path().join("sensors/registry/aarhus-traffic.csv"),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("aqyl.toml"),
        format!(
            r#"
reload_interval = "100ms"
[mqtt]
url = "mqtt://127.0.0.1:9"
client_id = "aqyl-e2e-{pid}"
[pipeline]
workers = {workers}
window = "5m"
allowed_lateness = "10m"
idle_timeout = "0s"
[influx]
enabled = false
url = "http://127.0.0.1:9"
flush_interval = "100ms"
[state]
# These tests read the store after a stop, which writes every open window only without
# durability (a durable stop keeps them for the next start; tests/e2e/durable.rs).
durable = false
"#,
            pid = std::process::id()
        ),
    )
    .unwrap();
    dir
}

struct Aqyl {
    child: std::sync::Mutex<Child>,
    http: String,
}

impl Aqyl {
    fn start(config: &Path, mqtt: &Mosquitto, vm: &VictoriaMetrics) -> Self {
        Self::start_with(config, &mqtt.url(), Some(&vm.url()))
    }

    /// [`Aqyl::start`], then waits until it is online (subscribed).
    fn online(config: &Path, mqtt: &Mosquitto, vm: &VictoriaMetrics) -> Self {
        let status = Subscriber::start(mqtt.port, "aqyl/status");
        let aqyl = Self::start(config, mqtt, vm);
        aqyl.wait_online(&status);
        aqyl
    }

    /// With `influx_url` `None`, the store stays as the config file says (setting
    /// `AQYL_INFLUX_URL` would enable it).
    fn start_with(config: &Path, mqtt_url: &str, influx_url: Option<&str>) -> Self {
        Self::start_env(config, mqtt_url, influx_url, &[])
    }

    /// [`Aqyl::start_with`] with extra environment variables.
    fn start_env(
        config: &Path,
        mqtt_url: &str,
        influx_url: Option<&str>,
        env: &[(&str, &str)],
    ) -> Self {
        let (mut command, http) = Self::command(config, mqtt_url, influx_url);
        let child = command
            .envs(env.iter().copied())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start aqyl");
        Self {
            child: std::sync::Mutex::new(child),
            http,
        }
    }

    /// Starts `aqyl run` with its log captured, for a test that reads why it exits (by
    /// itself: `wait_with_output`).
    fn spawn_captured(config: &Path, mqtt: &Mosquitto, vm: &VictoriaMetrics) -> Child {
        let (mut command, _) = Self::command(config, &mqtt.url(), Some(&vm.url()));
        command.stderr(Stdio::piped()).spawn().expect("start aqyl")
    }

    /// The `aqyl run` command of [`Aqyl::start_env`] and the HTTP address it serves.
    fn command(config: &Path, mqtt_url: &str, influx_url: Option<&str>) -> (Command, String) {
        let http_port = aqyl_tests::free_port();
        let mut command = Command::new(AQYL);
        if let Some(url) = influx_url {
            command.env("AQYL_INFLUX_URL", url);
        }
        command
            .args(["run", "--config"])
            .arg(config)
            .env("AQYL_MQTT_URL", mqtt_url)
            .env("AQYL_INFLUX_ORG", "city")
            .env("AQYL_INFLUX_BUCKET", "aarhus")
            .env("AQYL_INFLUX_TOKEN", "test-token")
            .env("AQYL_HTTP_ADDR", format!("127.0.0.1:{http_port}"))
            .env("AQYL_LOG", "info")
            .stdout(Stdio::null());
        (command, format!("http://127.0.0.1:{http_port}"))
    }

    /// Waits for `online` on `aqyl/status` (published after the subscriptions, on the same
    /// connection, so the service is then listening), failing at once if it exits.
    fn wait_online(&self, status: &Subscriber) {
        wait_until(WAIT, "aqyl/status online", || {
            if let Ok(Some(code)) = self.child.lock().unwrap().try_wait() {
                panic!("aqyl exited early with {code}; its log is above");
            }
            status.messages().iter().any(|m| m.payload == b"online")
        });
    }

    /// A counter from `/metrics`.
    /// A counter from `/metrics`. Panics if the service has exited, so a test whose service
    /// failed to start says so at once instead of waiting for a metric that never comes.
    fn metric(&self, line_prefix: &str) -> Option<u64> {
        if let Ok(Some(status)) = self.child.lock().unwrap().try_wait() {
            panic!("aqyl exited early with {status}; its log is above");
        }
        let body = reqwest::blocking::get(format!("{}/metrics", self.http))
            .ok()?
            .text()
            .ok()?;
        body.lines()
            .find_map(|l| l.strip_prefix(line_prefix)?.trim().parse().ok())
    }

    /// The process id.
    fn pid(&self) -> u32 {
        self.child.lock().unwrap().id()
    }

    /// Waits until the service exits by itself.
    fn wait_exit(self) {
        wait_until(WAIT, "aqyl to exit", || {
            self.child.lock().unwrap().try_wait().unwrap().is_some()
        });
    }

    /// `kill -9`: the service dies at once, mid-work.
    fn crash(self) {
        let mut child = self.child.lock().unwrap();
        let _ = child.kill();
        let _ = child.wait();
    }

    /// SIGTERM, then wait for a clean exit (the service drains and flushes first).
    fn stop(self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.lock().unwrap().id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        let mut exit = None;
        wait_until(WAIT, "aqyl to exit after SIGTERM", || {
            exit = self.child.lock().unwrap().try_wait().unwrap();
            exit.is_some()
        });
        assert!(exit.unwrap().success(), "aqyl exited with {exit:?}");
    }
}

impl Drop for Aqyl {
    fn drop(&mut self) {
        if let Ok(child) = self.child.get_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Adds the shipped traffic rules to a config directory of [`config_dir`].
fn with_traffic_rules(dir: &Path) {
    std::fs::create_dir(dir.join("rules")).unwrap();
    std::fs::copy(
        repo().join("config/rules/traffic.toml"),
        dir.join("rules/traffic.toml"),
    )
    .unwrap();
}

/// Copenhagen local time string for minute `m` after 2014-08-01 07:00 (UTC+2).
fn local(m: u64) -> String {
    format!("2014-08-01T{:02}:{:02}:00", 7 + m / 60, m % 60)
}
/// The same instant in Unix ms.
fn utc_ms(m: u64) -> i64 {
    1_406_869_200_000 + (m as i64) * 60_000
}

#[test]
fn aggregates_reach_victoria_metrics_exactly_and_bad_input_is_dead_lettered() {
    let mqtt = Mosquitto::start();
    let vm = VictoriaMetrics::start();
    let dir = config_dir(2);
    let status = Subscriber::start(mqtt.port, "aqyl/status");
    let dead = Subscriber::start(mqtt.port, "aqyl/deadletter/#");
    let aqyl = Aqyl::start(&dir.path().join("aqyl.toml"), &mqtt, &vm);
    // "online" is published after the subscription on the same connection, so once it is
    // seen, Aqyl's subscription is in place.
    aqyl.wait_online(&status);

    // Three sensors, one hostile id; 40 minutes of one reading a minute, out of order within
    // each 10-minute block; plus two bad payloads and one late record in the stream.
    let sensors = ["158324", "a b,c=d\"e\\f", "Århus-7"];
    let mut rng = 17u64;
    let mut next = || {
        rng = rng
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        rng >> 33
    };
    let mut readings: Vec<(String, u64, f64, u64)> = Vec::new();
    let mut msgs: Vec<(String, Vec<u8>)> = Vec::new();
    for block in 0..4u64 {
        let mut minutes: Vec<u64> = (block * 10..block * 10 + 10).collect();
        minutes.reverse();
        for m in minutes {
            for s in sensors {
                let speed = 20.0 + (next() % 600) as f64 / 10.0;
                let count = next() % 30;
                readings.push((s.to_string(), m, speed, count));
                let payload = format!(
                    r#"{{"status":"OK","avgMeasuredTime":60,"avgSpeed":{speed},"extID":1,"medianMeasuredTime":60,"TIMESTAMP":"{}","vehicleCount":{count},"_id":1,"REPORT_ID":1}}"#,
                    local(m)
                );
                msgs.push((format!("city/traffic/{s}"), payload.into_bytes()));
            }
        }
        if block == 1 {
            msgs.push((
                "city/traffic/158324".into(),
                b"{\"avgSpeed\": 50, \"TIMESTAMP\": ".to_vec(),
            ));
            msgs.push((
                "city/traffic/158324".into(),
                format!(
                    r#"{{"avgSpeed":"fast","vehicleCount":3,"TIMESTAMP":"{}"}}"#,
                    local(15)
                )
                .into_bytes(),
            ));
        }
    }
    // 07:00 is 39 minutes behind the newest reading: beyond the 10-minute lateness.
    msgs.push((
        "city/traffic/158324".into(),
        format!(
            r#"{{"avgSpeed":10,"vehicleCount":3,"TIMESTAMP":"{}"}}"#,
            local(0)
        )
        .into_bytes(),
    ));
    publish(mqtt.port, &msgs);

    let observations = readings.len() as u64;
    wait_until(WAIT, "all observations to be accepted", || {
        aqyl.metric("aqyl_observations_total ") == Some(observations)
    });
    let letters = dead.wait_for(3, WAIT);
    assert_eq!(
        aqyl.metric("aqyl_rejected_total{reason=\"malformed_json\"} "),
        Some(1)
    );
    assert_eq!(
        aqyl.metric("aqyl_rejected_total{reason=\"wrong_type\"} "),
        Some(1)
    );
    assert_eq!(
        aqyl.metric("aqyl_rejected_total{reason=\"late\"} "),
        Some(1)
    );
    aqyl.stop();

    // Dead letters: reason, topic and payload for each bad message, in publish order.
    let reasons: Vec<(String, String, String)> = letters
        .iter()
        .map(|m| {
            let v: serde_json::Value = serde_json::from_slice(&m.payload).unwrap();
            assert_eq!(m.topic, "aqyl/deadletter/traffic");
            assert!(v["received_at"].as_str().unwrap().ends_with('Z'));
            (
                v["reason"].as_str().unwrap().into(),
                v["topic"].as_str().unwrap().into(),
                v["payload"].as_str().unwrap().into(),
            )
        })
        .collect();
    assert_eq!(reasons[0].0, "malformed_json");
    assert_eq!(reasons[1].0, "wrong_type");
    assert_eq!(reasons[2].0, "late");
    assert!(reasons.iter().all(|r| r.1 == "city/traffic/158324"));
    assert!(reasons[1].2.contains("\"fast\""));

    // Expected aggregates, computed independently: (sensor, field, window end) -> stats.
    let mut groups: BTreeMap<(String, String, i64), Vec<f64>> = BTreeMap::new();
    for (s, m, speed, count) in &readings {
        let end = (utc_ms(*m) / 300_000 + 1) * 300_000;
        groups
            .entry((s.clone(), "avgSpeed".into(), end))
            .or_default()
            .push(*speed);
        groups
            .entry((s.clone(), "vehicleCount".into(), end))
            .or_default()
            .push(*count as f64);
        groups
            .entry((s.clone(), "avgMeasuredTime".into(), end))
            .or_default()
            .push(60.0);
        groups
            .entry((s.clone(), "medianMeasuredTime".into(), end))
            .or_default()
            .push(60.0);
    }
    let series = vm.export(r#"{__name__=~"aggregate_.*"}"#);
    let mut got: BTreeMap<(String, String, String, i64), f64> = BTreeMap::new();
    let mut four_hour = Vec::new();
    // Sensor 158324 is in the registry's area grid-11-03: its area roll-ups are checked below.
    let (per_area, series): (Vec<_>, Vec<_>) = series
        .into_iter()
        .partition(|s| !s.label("area").is_empty());
    for s in &series {
        assert_eq!(s.label("sensor_type"), "traffic");
        if s.label("window") == "4h" {
            four_hour.push(s.clone());
            continue;
        }
        assert_eq!(s.label("window"), "5m");
        for (t, v) in &s.samples {
            let stat = s
                .label("__name__")
                .trim_start_matches("aggregate_")
                .to_string();
            got.insert(
                (
                    s.label("sensor_id").into(),
                    s.label("field").into(),
                    stat,
                    *t,
                ),
                *v,
            );
        }
    }
    assert_eq!(
        got.len(),
        groups.len() * 7,
        "count, mean, min, max, stddev, p50, p95 per window"
    );
    for ((sensor, field, end), values) in &groups {
        let n = values.len() as f64;
        let mean = values.iter().sum::<f64>() / n;
        let var = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n;
        let expected = [
            ("count", n),
            ("mean", mean),
            ("min", values.iter().cloned().fold(f64::INFINITY, f64::min)),
            (
                "max",
                values.iter().cloned().fold(f64::NEG_INFINITY, f64::max),
            ),
            ("stddev", var.sqrt()),
            ("p50", quantile(values, 0.5)),
            ("p95", quantile(values, 0.95)),
        ];
        for (stat, want) in expected {
            let key = (sensor.clone(), field.clone(), stat.to_string(), *end);
            let have = got.get(&key).unwrap_or_else(|| panic!("missing {key:?}"));
            assert!(
                (have - want).abs() <= 1e-9 * want.abs().max(1.0),
                "{key:?}: stored {have}, expected {want}"
            );
        }
    }

    // The area roll-up of grid-11-03 holds only 158324 (the other test ids are not in the
    // registry), so its 5-minute means equal that sensor's.
    let area_means: Vec<_> = per_area
        .iter()
        .filter(|s| {
            s.label("__name__") == "aggregate_mean"
                && s.label("field") == "avgSpeed"
                && s.label("window") == "5m"
        })
        .collect();
    assert_eq!(area_means.len(), 1);
    assert_eq!(area_means[0].label("area"), "grid-11-03");
    assert_eq!(area_means[0].samples.len(), 8);
    for (t, v) in &area_means[0].samples {
        let key = (
            "158324".to_string(),
            "avgSpeed".to_string(),
            "mean".to_string(),
            *t,
        );
        assert_eq!(got.get(&key), Some(v), "area mean at {t}");
    }

    // CityPulse's SAX: one 4-hour window [04:00, 08:00) UTC per sensor for speed and count,
    // its word coded as a number (the string itself becomes a 0-valued series here).
    let codes: Vec<_> = four_hour
        .iter()
        .filter(|s| s.label("__name__") == "aggregate_sax_code")
        .collect();
    assert_eq!(
        codes.len(),
        sensors.len() * 2,
        "sax_code for avgSpeed and vehicleCount of each sensor"
    );
    for s in codes {
        let speed = s.label("field") == "avgSpeed";
        let mut in_time: Vec<(u64, f64)> = readings
            .iter()
            .filter(|r| r.0 == s.label("sensor_id"))
            .map(|r| (r.1, if speed { r.2 } else { r.3 as f64 }))
            .collect();
        in_time.sort_by_key(|a| a.0);
        let values: Vec<f64> = in_time.iter().map(|v| v.1).collect();
        let word = aqyl_core::windows::sax::sax_word(
            &values,
            &aqyl_core::windows::sax::SaxParams::default(),
        )
        .unwrap();
        let code = aqyl_core::windows::sax::sax_code(&word, 5).unwrap() as f64;
        assert_eq!(
            s.samples,
            vec![(utc_ms(180), code)],
            "{} {} word {word}",
            s.label("sensor_id"),
            s.label("field")
        );
    }
}

/// Linear interpolation between closest ranks (NumPy's default), computed independently.
fn quantile(values: &[f64], q: f64) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let pos = q * (v.len() - 1) as f64;
    let (i, frac) = (pos as usize, pos.fract());
    if i + 1 < v.len() {
        v[i] * (1.0 - frac) + v[i + 1] * frac
    } else {
        v[i]
    }
}

#[test]
fn check_names_file_and_line_and_fails() {
    let dir = config_dir(1);
    std::fs::write(
        dir.path().join("sensors/bad.toml"),
        "name = \"bad\"\nexpected_interval = \"soon\"\n[[fields]]\nname = \"x\"\n",
    )
    .unwrap();
    let out = Command::new(AQYL)
        .args(["check", "--config"])
        .arg(dir.path().join("aqyl.toml"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("bad.toml:2: invalid duration \"soon\""),
        "{stderr}"
    );

    std::fs::remove_file(dir.path().join("sensors/bad.toml")).unwrap();
    let out = Command::new(AQYL)
        .args(["check", "--config"])
        .arg(dir.path().join("aqyl.toml"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("city/traffic/{sensor_id}"));
}

#[test]
fn demo_runs_with_nothing_installed_and_writes_line_protocol() {
    let dir = tempfile::tempdir().unwrap();
    let port = aqyl_tests::free_port();
    let out = Command::new(AQYL)
        .args([
            "demo",
            "--duration",
            "3s",
            "--port",
            &port.to_string(),
            "--speed",
            "3000",
            "--data-dir",
        ])
        .arg(dir.path().join("data"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("windows closed"), "{stderr}");
    let lines = std::fs::read_to_string(dir.path().join("data/aggregate.lp")).unwrap();
    let aggregates: Vec<&str> = lines
        .lines()
        .filter(|l| l.starts_with("aggregate,"))
        .collect();
    assert!(!aggregates.is_empty(), "no aggregate in {lines}");
    assert!(aggregates
        .iter()
        .all(|l| l.contains(",sensor_type=traffic,window=")));
    // Every simulated segment is scored too.
    assert!(
        lines
            .lines()
            .any(|l| l.starts_with("quality,sensor_id=") && l.contains(",score=")),
        "no quality point"
    );
    assert!(lines.lines().all(|l| l.starts_with("aggregate,")
        || l.starts_with("quality")
        || l.starts_with("event,")));
}

/// One traffic message for `sensor` at minute `m`.
fn reading(sensor: &str, m: u64, speed: f64) -> (String, Vec<u8>) {
    (
        format!("city/traffic/{sensor}"),
        format!(
            r#"{{"avgSpeed":{speed},"vehicleCount":4,"TIMESTAMP":"{}"}}"#,
            local(m)
        )
        .into_bytes(),
    )
}

#[test]
fn broker_restart_is_survived_by_reconnecting() {
    let mut mqtt = Mosquitto::start();
    let port = mqtt.port;
    let vm = VictoriaMetrics::start();
    let dir = config_dir(2);
    let status = Subscriber::start(port, "aqyl/status");
    let aqyl = Aqyl::start(&dir.path().join("aqyl.toml"), &mqtt, &vm);
    aqyl.wait_online(&status);
    let first: Vec<_> = (0..10).map(|m| reading("1", m, 50.0)).collect();
    publish(port, &first);
    wait_until(WAIT, "the first batch", || {
        aqyl.metric("aqyl_observations_total ") == Some(10)
    });

    drop(status);
    drop(mqtt); // the broker goes away
    wait_until(WAIT, "aqyl to notice the broken connection", || {
        aqyl.metric("aqyl_mqtt_connection_errors_total ")
            .unwrap_or(0)
            > 0
    });
    mqtt = Mosquitto::start_on(port);
    let status = Subscriber::start(port, "aqyl/status");
    wait_until(WAIT, "aqyl to reconnect and announce itself", || {
        status.messages().iter().any(|m| m.payload == b"online")
    });
    let second: Vec<_> = (10..20).map(|m| reading("1", m, 30.0)).collect();
    publish(mqtt.port, &second);
    wait_until(WAIT, "the second batch", || {
        aqyl.metric("aqyl_observations_total ") == Some(20)
    });
    aqyl.stop();

    let means = vm.export(r#"{__name__="aggregate_mean",field="avgSpeed",window="5m"}"#);
    assert_eq!(means.len(), 1);
    let values: Vec<f64> = means[0].samples.iter().map(|s| s.1).collect();
    assert_eq!(
        values,
        vec![50.0, 50.0, 30.0, 30.0],
        "four 5-minute windows, before and after the restart"
    );
}

#[test]
fn store_outage_is_retried_until_the_store_comes_up() {
    let mqtt = Mosquitto::start();
    let vm_port = aqyl_tests::free_port();
    let dir = config_dir(1);
    let status = Subscriber::start(mqtt.port, "aqyl/status");
    let aqyl = Aqyl::start_with(
        &dir.path().join("aqyl.toml"),
        &mqtt.url(),
        Some(&format!("http://127.0.0.1:{vm_port}")),
    );
    aqyl.wait_online(&status);
    let msgs: Vec<_> = (0..30).map(|m| reading("store", m, m as f64)).collect();
    publish(mqtt.port, &msgs);
    // Windows up to 07:20 close (watermark 07:19); their writes fail: nothing listens yet.
    wait_until(WAIT, "failed writes to the absent store", || {
        aqyl.metric("aqyl_influx_write_failures_total ")
            .unwrap_or(0)
            >= 2
    });
    let vm = VictoriaMetrics::start_on(vm_port);
    wait_until(WAIT, "the retried write to succeed", || {
        aqyl.metric("aqyl_influx_points_written_total ")
            .unwrap_or(0)
            > 0
    });
    aqyl.stop();
    let counts = vm.export(r#"{__name__="aggregate_count",field="avgSpeed",window="5m"}"#);
    assert_eq!(counts.len(), 1);
    let samples: Vec<(i64, f64)> = counts[0].samples.clone();
    let expected: Vec<(i64, f64)> = (0..6).map(|w| (utc_ms(5 * w + 5), 5.0)).collect();
    assert_eq!(
        samples, expected,
        "every window, written once the store was up"
    );
}

#[test]
fn aggregates_are_published_on_mqtt_when_configured() {
    let mqtt = Mosquitto::start();
    let vm = VictoriaMetrics::start();
    let dir = config_dir(2);
    let config = dir.path().join("aqyl.toml");
    let text = std::fs::read_to_string(&config).unwrap() + "[outputs]\naggregates = true\n";
    std::fs::write(&config, text).unwrap();
    let status = Subscriber::start(mqtt.port, "aqyl/status");
    let live = Subscriber::start(mqtt.port, "aqyl/aggregates/#");
    let aqyl = Aqyl::start(&config, &mqtt, &vm);
    aqyl.wait_online(&status);
    let msgs: Vec<_> = (0..10)
        .map(|m| reading("158324", m, (m * 10) as f64))
        .collect();
    publish(mqtt.port, &msgs);
    wait_until(WAIT, "the observations", || {
        aqyl.metric("aqyl_observations_total ") == Some(10)
    });
    aqyl.stop();
    // 5-minute windows: 2 windows x 2 fields; the 4-hour SAX window: 1 window x 2 fields;
    // all of it once for the sensor and once for its area (grid-11-03 in the registry).
    let got = live.wait_for(12, WAIT);
    assert_eq!(got.len(), 12);
    let topics: std::collections::BTreeSet<&str> = got.iter().map(|m| m.topic.as_str()).collect();
    assert_eq!(
        topics.into_iter().collect::<Vec<_>>(),
        [
            "aqyl/aggregates/traffic/158324",
            "aqyl/aggregates/traffic/grid-11-03"
        ]
    );
    let got: Vec<_> = got
        .into_iter()
        .filter(|m| m.topic.ends_with("/158324"))
        .collect();
    let first_speed = got
        .iter()
        .map(|m| serde_json::from_slice::<serde_json::Value>(&m.payload).unwrap())
        .find(|v| {
            v["field"] == "avgSpeed"
                && v["window"] == "5m"
                && v["end"] == "2014-08-01T05:05:00.000Z"
        })
        .expect("the first 5-minute window of avgSpeed");
    assert_eq!(first_speed["count"], 5);
    assert_eq!(first_speed["mean"], 20.0); // 0, 10, 20, 30, 40
    assert_eq!(first_speed["p95"], 38.0); // rank 3.8: 30 + 0.8 x 10
    assert_eq!(first_speed["scope"], "sensor");
    let sax = got
        .iter()
        .map(|m| serde_json::from_slice::<serde_json::Value>(&m.payload).unwrap())
        .find(|v| v["field"] == "avgSpeed" && v["window"] == "4h")
        .expect("the 4-hour window");
    assert_eq!(sax["sax"], "ace", "a steady ramp reads low, middle, high");
    assert_eq!(sax["sax_code"], 14);
}

#[test]
fn a_new_sensor_type_is_plugged_in_at_run_time_and_a_broken_one_is_refused() {
    let mqtt = Mosquitto::start();
    let vm = VictoriaMetrics::start();
    let dir = config_dir(2);
    let aqyl = Aqyl::online(&dir.path().join("aqyl.toml"), &mqtt, &vm);
    wait_until(WAIT, "the traffic subscription", || {
        aqyl.metric("aqyl_subscriptions ") == Some(1)
    });

    // A broken descriptor is refused; traffic keeps flowing.
    std::fs::write(
        dir.path().join("sensors/noise.toml"),
        "name = \"noise\"\nformat = \"senml\"\n[[fields]]\nname = \"laeq\"\nunit = \"decibels\"\n",
    )
    .unwrap();
    wait_until(WAIT, "the broken descriptor to be refused", || {
        aqyl.metric("aqyl_descriptor_reload_failures_total ")
            .unwrap_or(0)
            >= 1
    });
    publish(mqtt.port, &[reading("158324", 0, 50.0)]);
    wait_until(WAIT, "traffic after the refused change", || {
        aqyl.metric("aqyl_observations_total ") == Some(1)
    });

    // Fixed: the noise sensor type is plugged in without a restart.
    std::fs::write(
        dir.path().join("sensors/noise.toml"),
        "name = \"noise\"\nformat = \"senml\"\n[[fields]]\nname = \"laeq\"\nunit = \"dB\"\n[[windows]]\nsize = \"15m\"\n",
    )
    .unwrap();
    wait_until(WAIT, "the reload", || {
        aqyl.metric("aqyl_descriptor_reloads_total ").unwrap_or(0) >= 1
    });
    wait_until(WAIT, "the noise subscription", || {
        aqyl.metric("aqyl_subscriptions ") == Some(2)
    });
    // Three SenML packs, 5 minutes apart, for one street: 60, 62, 70 dB.
    let packs: Vec<(String, Vec<u8>)> = [(0, 60.0), (300, 62.0), (600, 70.0)]
        .iter()
        .map(|(t, v)| {
            let pack = format!(
                r#"[{{"bn":"urn:dev:noise:n1:","bt":{},"n":"laeq","u":"dB","v":{v}}}]"#,
                1_406_851_200 + t
            );
            ("city/noise/n1".to_string(), pack.into_bytes())
        })
        .collect();
    publish(mqtt.port, &packs);
    wait_until(WAIT, "the noise observations", || {
        aqyl.metric("aqyl_observations_total ") == Some(4)
    });
    aqyl.stop();

    let means = vm.export(r#"{__name__="aggregate_mean",sensor_type="noise"}"#);
    assert_eq!(means.len(), 1, "{means:?}");
    assert_eq!(means[0].label("window"), "15m");
    assert_eq!(means[0].label("sensor_id"), "n1");
    assert_eq!(
        means[0].samples,
        vec![(1_406_852_100_000, 64.0)],
        "one 15-minute window, mean of 60, 62, 70"
    );
}

#[test]
fn every_rejection_reason_is_dead_lettered_counted_and_the_next_message_still_flows() {
    let mqtt = Mosquitto::start();
    let vm = VictoriaMetrics::start();
    let dir = config_dir(2);
    let config = dir.path().join("aqyl.toml");
    let text = std::fs::read_to_string(&config).unwrap()
        + "[ingest]\nmax_payload_bytes = 2048\ncatch_all = \"city/#\"\n";
    std::fs::write(&config, text).unwrap();
    std::fs::copy(
        repo().join("config/sensors/noise.toml"),
        dir.path().join("sensors/noise.toml"),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("sensors/counter.toml"),
        "name = \"counter\"\nformat = \"csv\"\ncolumns = [\"ts\", \"count\"]\n[time]\nfield = \"/ts\"\nformat = \"rfc3339\"\n[[fields]]\nname = \"count\"\ntype = \"integer\"\n",
    )
    .unwrap();
    let status = Subscriber::start(mqtt.port, "aqyl/status");
    let dead = Subscriber::start(mqtt.port, "aqyl/deadletter/#");
    let aqyl = Aqyl::start(&config, &mqtt, &vm);
    aqyl.wait_online(&status);
    wait_until(WAIT, "four subscriptions", || {
        aqyl.metric("aqyl_subscriptions ") == Some(4)
    });

    let traffic_ok = |m: u64| reading("158324", m, 40.0);
    let noise_ok = |m: u64| {
        let pack = format!(r#"[{{"bt":{},"n":"laeq","v":55}}]"#, 1_406_869_200 + m * 60);
        ("city/noise/n1".to_string(), pack.into_bytes())
    };
    let counter_ok = |m: u64| {
        (
            "city/counter/c1".to_string(),
            format!("2014-08-01T05:{m:02}:00Z,7").into_bytes(),
        )
    };
    let bad = |topic: &str, payload: &[u8]| (topic.to_string(), payload.to_vec());
    type Message = (String, Vec<u8>);
    let cases: Vec<(&str, Message, Message)> = vec![
        (
            "malformed_json",
            bad("city/traffic/158324", b"{\"avgSpeed\": 5, "),
            traffic_ok(1),
        ),
        (
            "malformed_senml",
            bad("city/noise/n1", br#"{"n":"laeq","v":1}"#),
            noise_ok(2),
        ),
        (
            "malformed_csv",
            bad("city/counter/c1", b"2014-08-01T05:03:00Z"),
            counter_ok(3),
        ),
        (
            "missing_field",
            bad(
                "city/traffic/158324",
                br#"{"vehicleCount":3,"TIMESTAMP":"2014-08-01T07:04:00"}"#,
            ),
            traffic_ok(5),
        ),
        (
            "wrong_type",
            bad(
                "city/traffic/158324",
                br#"{"avgSpeed":[1],"vehicleCount":3,"TIMESTAMP":"2014-08-01T07:06:00"}"#,
            ),
            traffic_ok(7),
        ),
        (
            "invalid_timestamp",
            bad(
                "city/traffic/158324",
                br#"{"avgSpeed":1,"vehicleCount":3,"TIMESTAMP":"soon"}"#,
            ),
            traffic_ok(8),
        ),
        (
            "oversized",
            (String::from("city/traffic/158324"), vec![b' '; 3000]),
            traffic_ok(9),
        ),
        (
            "unknown_topic",
            bad("city/bikes/7", br#"{"docked":3}"#),
            traffic_ok(11),
        ),
    ];
    for (i, (reason, bad, good)) in cases.iter().enumerate() {
        publish(mqtt.port, &[bad.clone(), good.clone()]);
        let n = i as u64 + 1;
        wait_until(WAIT, &format!("the message after the {reason} one"), || {
            aqyl.metric("aqyl_observations_total ") == Some(n)
        });
        let letters = dead.wait_for(i + 1, WAIT);
        let v: serde_json::Value = serde_json::from_slice(&letters[i].payload).unwrap();
        assert_eq!(v["reason"], *reason, "{v}");
        assert_eq!(v["topic"], bad.0.as_str());
        let sensor_type = match *reason {
            "unknown_topic" => "unknown",
            _ => bad.0.split('/').nth(1).unwrap(),
        };
        assert_eq!(letters[i].topic, format!("aqyl/deadletter/{sensor_type}"));
        assert!(
            v["payload"].as_str().unwrap().len() <= 1024,
            "payload copy is bounded"
        );
        assert!(!v["detail"].as_str().unwrap().is_empty());
        assert_eq!(
            aqyl.metric(&format!("aqyl_rejected_total{{reason=\"{reason}\"}} ")),
            Some(1),
            "{reason}"
        );
    }
    aqyl.stop();
}

/// Spilled batches waiting under a config directory's state (one subdirectory per store).
fn spilled(config_dir: &Path) -> usize {
    let root = config_dir.join("state/spill/influx");
    let Ok(stores) = std::fs::read_dir(root) else {
        return 0;
    };
    stores
        .filter_map(|s| std::fs::read_dir(s.ok()?.path()).ok())
        .flat_map(|files| files.filter_map(Result::ok))
        .filter(|f| f.path().extension().is_some_and(|x| x == "lp"))
        .count()
}

#[test]
fn batches_spilled_during_an_outage_survive_a_restart() {
    let mqtt = Mosquitto::start();
    let vm_port = aqyl_tests::free_port();
    let vm_url = format!("http://127.0.0.1:{vm_port}");
    let dir = config_dir(1);
    let config = dir.path().join("aqyl.toml");
    let status = Subscriber::start(mqtt.port, "aqyl/status");
    let aqyl = Aqyl::start_with(&config, &mqtt.url(), Some(&vm_url));
    aqyl.wait_online(&status);
    let msgs: Vec<_> = (0..20)
        .map(|m| reading("spill", m, 10.0 + m as f64))
        .collect();
    publish(mqtt.port, &msgs);
    wait_until(WAIT, "the observations", || {
        aqyl.metric("aqyl_observations_total ") == Some(20)
    });
    // The store is down: stopping drains the windows into the spill, and does not hang.
    aqyl.stop();
    assert!(spilled(dir.path()) > 0, "batches wait on disk");

    let vm = VictoriaMetrics::start_on(vm_port);
    let aqyl = Aqyl::start_with(&config, &mqtt.url(), Some(&vm_url));
    wait_until(WAIT, "the spilled batches to be written", || {
        aqyl.metric("aqyl_influx_points_written_total ")
            .unwrap_or(0)
            > 0
    });
    aqyl.stop();
    assert_eq!(spilled(dir.path()), 0, "the spill is emptied");
    let counts =
        vm.export(r#"{__name__="aggregate_count",field="avgSpeed",window="5m",sensor_id="spill"}"#);
    assert_eq!(counts.len(), 1);
    let expected: Vec<(i64, f64)> = (0..4).map(|w| (utc_ms(5 * w + 5), 5.0)).collect();
    assert_eq!(
        counts[0].samples, expected,
        "all four windows, written after the restart"
    );
}

#[test]
fn incidents_are_published_kept_for_late_subscribers_and_cleared_when_over() {
    let mqtt = Mosquitto::start();
    let vm = VictoriaMetrics::start();
    let dir = config_dir(1);
    with_traffic_rules(dir.path());
    // The readings below repeat the same values, which quality scoring rightly calls stuck;
    // this test counts the rule incidents only (quality incidents have their own test).
    let config = dir.path().join("aqyl.toml");
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, format!("{text}[quality]\nenabled = false\n")).unwrap();
    let status = Subscriber::start(mqtt.port, "aqyl/status");
    let events = Subscriber::start(mqtt.port, "aqyl/events/#");
    // An operator's terminal: `aqyl events tail --type congestion`.
    let mut tail = Command::new(AQYL)
        .args(["events", "tail", "--type", "congestion", "--config"])
        .arg(dir.path().join("aqyl.toml"))
        .env("AQYL_MQTT_URL", mqtt.url())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // It says "Listening" once subscribed.
    let mut tail_stderr = std::io::BufReader::new(tail.stderr.take().unwrap());
    let mut first = String::new();
    std::io::BufRead::read_line(&mut tail_stderr, &mut first).unwrap();
    assert!(
        first.starts_with("Listening on aqyl/events/congestion/#"),
        "{first}"
    );
    let aqyl = Aqyl::start(&dir.path().join("aqyl.toml"), &mqtt, &vm);
    aqyl.wait_online(&status);

    // Segment 158324 is congested from minute 0 to 40 (10 vehicles: congestion, but a low
    // traffic-derived pollution level); 158355 flows freely alongside.
    let congested = |m: u64| {
        let p = format!(
            r#"{{"avgSpeed":20,"vehicleCount":10,"TIMESTAMP":"{}"}}"#,
            local(m)
        );
        ("city/traffic/158324".to_string(), p.into_bytes())
    };
    let mut msgs: Vec<_> = (0..=40).map(congested).collect();
    msgs.extend((0..=40).map(|m| reading("158355", m, 60.0)));
    publish(mqtt.port, &msgs);
    wait_until(WAIT, "congestion and jam to start", || {
        aqyl.metric("aqyl_events_published_total ") == Some(2)
    });

    // An operator connecting now sees both ongoing incidents.
    let late = Subscriber::start(mqtt.port, "aqyl/active/#");
    let active = late.wait_for(2, WAIT);
    let mut types: Vec<String> = active
        .iter()
        .map(|m| {
            assert!(m.retain, "delivered from the retained store");
            let v: serde_json::Value = serde_json::from_slice(&m.payload).unwrap();
            assert_eq!(
                (v["state"].as_str(), v["subject"].as_str()),
                (Some("start"), Some("158324"))
            );
            assert!(v["message"].as_str().unwrap().contains("158324"), "{v}");
            v["event_type"].as_str().unwrap().to_string()
        })
        .collect();
    types.sort();
    assert_eq!(types, ["congestion", "traffic_jam"]);

    // Traffic flows again at minute 41: both end, and the retained incidents are cleared.
    let mut msgs: Vec<_> = (41..=45).map(|m| reading("158324", m, 60.0)).collect();
    msgs.extend((41..=60).map(|m| reading("158355", m, 60.0)));
    publish(mqtt.port, &msgs);
    wait_until(WAIT, "both incidents to end", || {
        aqyl.metric("aqyl_events_published_total ") == Some(4)
    });
    let cleared = late.wait_for(4, WAIT);
    assert!(
        cleared[2..].iter().all(|m| m.payload.is_empty()),
        "empty messages clear the retained incidents"
    );
    aqyl.stop();
    Command::new("kill")
        .args(["-INT", &tail.id().to_string()])
        .status()
        .unwrap();
    let out = tail.wait_with_output().unwrap();
    drop(tail_stderr);
    let printed = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = printed.lines().collect();
    assert_eq!(lines.len(), 2, "only congestion, start and end: {printed}");
    assert!(
        lines[0].starts_with("2014-08-01 05:00:00  START  congestion       158324"),
        "{printed}"
    );
    assert!(
        lines[1].contains("END") && lines[1].contains("congestion ended"),
        "{printed}"
    );

    let lifecycle: Vec<(String, String, String)> = events
        .wait_for(4, WAIT)
        .iter()
        .map(|m| {
            let v: serde_json::Value = serde_json::from_slice(&m.payload).unwrap();
            (
                m.topic.clone(),
                v["state"].as_str().unwrap().to_string(),
                v["id"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(lifecycle.len(), 4);
    let congestion: Vec<_> = lifecycle
        .iter()
        .filter(|l| l.0 == "aqyl/events/congestion/158324")
        .collect();
    assert_eq!(
        congestion.iter().map(|l| l.1.as_str()).collect::<Vec<_>>(),
        ["start", "end"]
    );
    assert_eq!(congestion[0].2, congestion[1].2, "one id per incident");
    // The store has the congestion's duration: from minute 0 to minute 41.
    let durations =
        vm.export(r#"{__name__="event_duration_s",event_type="congestion",state="end"}"#);
    assert_eq!(durations.len(), 1);
    assert_eq!(durations[0].samples, vec![(utc_ms(41), 41.0 * 60.0)]);
}
