//! TLS and authentication end to end (issue #16): Mosquitto with a TLS listener that
//! requires a password and a client certificate, certificates made by the test (`openssl`).
//! `aqyl run` ingests over `mqtts://` and `aqyl events tail` follows its incidents over it,
//! both configured from the file (paths relative to it, the password from a file); readings
//! are published over TLS by the simulator's client. A wrong CA, a wrong password, a host the
//! certificate does not name and a missing client certificate are each a clear error, not a
//! retry for ever. The secrets appear in no log line, debug or not, and not in `aqyl check`.
//!
//! The test's own clients (status subscriber) use the broker's plain listener.

use super::{Aqyl, AQYL, WAIT};
use aqyl_tests::{shipped_config, wait_until, Mosquitto, Pki, Subscriber};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const USER: &str = "aqyl";
const PASSWORD: &str = "Mqtt-pw-4c9f1e2a";
const TOKEN: &str = "Http-token-8b7d3f60";
/// A real Aarhus road segment of the shipped registry.
const SEGMENT: &str = "158324";

/// The shipped configuration, over TLS to the broker with the password from a file and the
/// certificates beside it (relative paths), `/metrics` behind a token from a file, the file
/// sink instead of the store.
fn tls_config(pki: &Pki, mqtt: &Mosquitto) -> (tempfile::TempDir, PathBuf) {
    let dir = shipped_config();
    let d = dir.path();
    std::fs::create_dir_all(d.join("tls")).unwrap();
    std::fs::create_dir_all(d.join("secrets")).unwrap();
    for (from, to) in [
        (&pki.ca, "tls/ca.pem"),
        (&pki.client_cert, "tls/client.pem"),
        (&pki.client_key, "tls/client.key"),
    ] {
        std::fs::copy(from, d.join(to)).unwrap();
    }
    // As `echo` and editors write them: a trailing line ending, not part of the secret.
    std::fs::write(d.join("secrets/mqtt.pass"), format!("{PASSWORD}\n")).unwrap();
    std::fs::write(d.join("secrets/http.token"), format!("{TOKEN}\n")).unwrap();
    let path = d.join("aqyl.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    let text = text
        .replacen(
            "url = \"mqtt://127.0.0.1:1883\"",
            &format!(
                "url = \"{}\"\nusername = \"{USER}\"\npassword_file = \"secrets/mqtt.pass\"\n\
                 ca_file = \"tls/ca.pem\"\nclient_cert = \"tls/client.pem\"\nclient_key = \"tls/client.key\"",
                mqtt.tls_url()
            ),
            1,
        )
        .replacen("[influx]\n", "[influx]\nenabled = false\n", 1)
        .replacen("\nenabled = true\nurl = \"http://", "\nurl = \"http://", 1)
        .replacen(
            "[file]\nenabled = false\ndir = \"data\"",
            &format!("[file]\nenabled = true\ndir = \"{}\"", d.join("data").display()),
            1,
        )
        .replacen("[http]\n", "[http]\ntoken_file = \"secrets/http.token\"\n", 1);
    assert!(text.contains("ca_file = \"tls/ca.pem\""), "{text}");
    assert!(text.contains("[file]\nenabled = true"), "{text}");
    std::fs::write(&path, text).unwrap();
    (dir, path)
}

/// Starts `aqyl <args>` with stdout and stderr in files of `dir` (so the test can read them).
fn spawn(dir: &Path, name: &str, args: &[&str], env: &[(&str, &str)]) -> Child {
    Command::new(AQYL)
        .args(args)
        .env_remove("AQYL_MQTT_URL")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(dir.join(format!("{name}.out"))).unwrap())
        .stderr(std::fs::File::create(dir.join(format!("{name}.err"))).unwrap())
        .spawn()
        .expect("start aqyl")
}

fn read(dir: &Path, file: &str) -> String {
    std::fs::read_to_string(dir.join(file)).unwrap_or_default()
}

/// Waits (bounded) for a command to exit by itself and returns its exit status and stderr.
fn exits(mut child: Child, dir: &Path, name: &str) -> (std::process::ExitStatus, String) {
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return (status, read(dir, &format!("{name}.err")));
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "gave up after {WAIT:?} waiting for `{name}` to exit with an error (it must not retry for ever); its stderr:\n{}",
                read(dir, &format!("{name}.err"))
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A CityPulse row of `SEGMENT` at `unix_s`.
fn reading(unix_s: i64, speed: u32, vehicles: u32) -> (String, Vec<u8>) {
    aqyl_tests::citypulse_row(SEGMENT, unix_s, speed, vehicles)
}

/// Publishes over TLS with the simulator's client (`aqyl-sim --ca-file ... --password-file
/// ...` builds the same), waiting for every acknowledgement.
fn publish_tls(config_dir: &Path, mqtt: &Mosquitto, messages: Vec<(String, Vec<u8>)>) {
    use aqyl_core::config::{read_secret, FileSetting};
    let file = |flag: &str, p: &str| FileSetting::given(flag, config_dir.join(p));
    let password = read_secret(&file("--password-file", "secrets/mqtt.pass")).unwrap();
    let tls = aqyl_sim::mqtt::TlsFiles {
        ca_file: Some(file("--ca-file", "tls/ca.pem")),
        client_cert: Some(file("--client-cert", "tls/client.pem")),
        client_key: Some(file("--client-key", "tls/client.key")),
    };
    let broker =
        aqyl_sim::mqtt::Broker::with_tls(&mqtt.tls_url(), Some(USER.into()), Some(password), tls)
            .unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let id = aqyl_sim::mqtt::client_id("tls-test", 0);
        let conn =
            aqyl_sim::mqtt::Connection::publisher(&broker, &id, rumqttc::QoS::AtLeastOnce, 16)
                .await
                .unwrap();
        for (topic, payload) in messages {
            conn.publish(topic, payload).await.unwrap();
        }
        assert_eq!(
            conn.close(Duration::from_secs(30)).await,
            0,
            "all acknowledged"
        );
    });
}

/// The next whole second of the wall clock (Unix seconds), after sleeping until it.
fn next_second() -> i64 {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    std::thread::sleep(Duration::from_secs(1) - Duration::from_nanos(now.subsec_nanos().into()));
    now.as_secs() as i64 + 1
}

/// `GET /metrics` with an optional bearer token: (status line, body).
fn metrics(http: &str, token: Option<&str>) -> (u16, String) {
    let client = reqwest::blocking::Client::new();
    let mut req = client.get(format!("{http}/metrics"));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    match req.send() {
        Ok(r) => (r.status().as_u16(), r.text().unwrap_or_default()),
        Err(_) => (0, String::new()),
    }
}

fn assert_no_secret(what: &str, text: &str) {
    for secret in [PASSWORD, TOKEN] {
        assert!(
            !text.contains(secret),
            "{what} shows a secret ({secret}):\n{text}"
        );
    }
}

#[test]
fn aqyl_ingests_and_tails_incidents_over_mqtts_with_a_password_and_a_client_certificate() {
    let pki = Pki::generate();
    let mqtt = Mosquitto::start_tls(&pki, USER, PASSWORD, true);
    let (dir, config) = tls_config(&pki, &mqtt);
    let d = dir.path();
    let config_arg = config.to_str().unwrap();

    // `aqyl check` accepts it, says how the broker is reached, and shows no secret.
    let check = Command::new(AQYL)
        .args(["check", "--config", config_arg])
        .env("AQYL_LOG", "trace")
        .output()
        .unwrap();
    let check_out = format!(
        "{}{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );
    assert!(check.status.success(), "{check_out}");
    assert!(
        check_out.contains(&format!(
            "broker: {}, TLS trusting mqtt.ca_file (",
            mqtt.tls_url()
        )) && check_out.contains("client certificate mqtt.client_cert (")
            && check_out.contains("user \"aqyl\" (password from mqtt.password_file ("),
        "{check_out}"
    );
    assert_no_secret("aqyl check", &check_out);

    let status = Subscriber::start(mqtt.port, "aqyl/status");
    let http_port = aqyl_tests::free_port();
    let http = format!("http://127.0.0.1:{http_port}");
    let addr = format!("127.0.0.1:{http_port}");
    let run = spawn(
        d,
        "run",
        &["run", "--config", config_arg],
        &[("AQYL_LOG", "trace"), ("AQYL_HTTP_ADDR", &addr)],
    );
    let aqyl = Aqyl {
        child: std::sync::Mutex::new(run),
        http: http.clone(),
    };
    // `online` is published on the ingest connection after its subscriptions: Aqyl is in.
    aqyl.wait_online(&status);

    // An operator follows incidents over the same TLS settings, from the same file.
    let mut tail = spawn(
        d,
        "tail",
        &["events", "tail", "--config", config_arg],
        &[("AQYL_LOG", "trace")],
    );
    wait_until(WAIT, "`aqyl events tail` to listen", || {
        if let Ok(Some(s)) = tail.try_wait() {
            panic!("aqyl events tail exited with {s}: {}", read(d, "tail.err"));
        }
        read(d, "tail.err").contains("Listening on aqyl/events/+/#")
    });

    // Free flow, then a crawl a second later: a congestion starts.
    let first = next_second();
    publish_tls(d, &mqtt, vec![reading(first, 60, 3)]);
    let crawl = next_second();
    publish_tls(d, &mqtt, vec![reading(crawl, 20, 10)]);
    wait_until(WAIT, "the congestion in `aqyl events tail`", || {
        read(d, "tail.out")
            .lines()
            .any(|l| l.contains("START") && l.contains("congestion") && l.contains(SEGMENT))
    });

    // /metrics needs the token (from the token file); /health stays open.
    assert_eq!(metrics(&http, None).0, 401);
    assert_eq!(metrics(&http, Some("not-the-token")).0, 401);
    wait_until(WAIT, "both readings counted on /metrics", || {
        let (code, body) = metrics(&http, Some(TOKEN));
        code == 200
            && body
                .lines()
                .find_map(|l| l.strip_prefix("aqyl_observations_total "))
                .and_then(|v| v.trim().parse::<u64>().ok())
                .is_some_and(|n| n >= 2)
    });
    let health = reqwest::blocking::get(format!("{http}/health")).unwrap();
    assert!(health.status().is_success());

    let _ = tail.kill();
    let _ = tail.wait();
    aqyl.stop();
    // The readings reached the file sink (the incident is written there too).
    let written = read(&d.join("data"), "aggregate.lp");
    assert!(
        written.lines().any(|l| l.contains(SEGMENT)),
        "the file sink holds the segment's output:\n{written}"
    );

    // Nothing, even at the trace level, shows the password or the token.
    let run_log = read(d, "run.err");
    assert!(
        run_log.contains("Connected to the MQTT broker"),
        "{run_log}"
    );
    assert!(
        run_log.contains("DEBUG") || run_log.contains("TRACE"),
        "{run_log}"
    );
    assert_no_secret("aqyl run's log", &run_log);
    assert_no_secret(
        "aqyl events tail",
        &(read(d, "tail.err") + &read(d, "tail.out")),
    );
}

#[test]
fn a_wrong_ca_a_wrong_password_a_wrong_host_or_no_client_certificate_is_a_clear_error() {
    let pki = Pki::generate();
    let mqtt = Mosquitto::start_tls(&pki, USER, PASSWORD, true);
    let (dir, config) = tls_config(&pki, &mqtt);
    let d = dir.path();
    let config_arg = config.to_str().unwrap();
    let other_ca = pki.other_ca.to_str().unwrap();
    let tls_port = mqtt.tls_port.unwrap();
    let localhost = format!("mqtts://localhost:{tls_port}");
    let run = ["run", "--config", config_arg];
    let tail = ["events", "tail", "--config", config_arg];
    let quality = ["quality", "--config", config_arg];
    // The same without the client certificate, which this broker requires.
    let nocert = d.join("nocert.toml");
    let text = std::fs::read_to_string(&config).unwrap();
    let text: Vec<&str> = text
        .lines()
        .filter(|l| !l.starts_with("client_cert") && !l.starts_with("client_key"))
        .collect();
    std::fs::write(&nocert, text.join("\n")).unwrap();
    let run_nocert = ["run", "--config", nocert.to_str().unwrap()];

    // (name, command, environment, what stderr must say)
    type Case<'a> = (&'a str, &'a [&'a str], Vec<(&'a str, &'a str)>, Vec<String>);
    let cases: Vec<Case> = vec![
        (
            "run-wrong-ca",
            &run,
            vec![("AQYL_MQTT_CA_FILE", other_ca)],
            vec![
                "the broker's certificate is not signed by the CA certificate(s) in AQYL_MQTT_CA_FILE (".into(),
                "UnknownIssuer".into(),
            ],
        ),
        (
            "tail-wrong-ca",
            &tail,
            vec![("AQYL_MQTT_CA_FILE", other_ca)],
            vec!["is not signed by the CA certificate(s) in AQYL_MQTT_CA_FILE (".into()],
        ),
        (
            "run-wrong-password",
            &run,
            vec![("AQYL_MQTT_PASSWORD", "not-the-password")],
            vec![
                format!("the broker at {} refused user \"aqyl\" with the configured password", mqtt.tls_url()),
                "check mqtt.username and mqtt.password".into(),
            ],
        ),
        (
            "tail-wrong-password",
            &tail,
            vec![("AQYL_MQTT_PASSWORD", "not-the-password")],
            vec!["refused user \"aqyl\" with the configured password".into()],
        ),
        (
            "quality-wrong-password",
            &quality,
            vec![("AQYL_MQTT_PASSWORD", "not-the-password")],
            vec!["refused user \"aqyl\" with the configured password".into()],
        ),
        (
            "run-wrong-host",
            &run,
            vec![("AQYL_MQTT_URL", &localhost)],
            vec!["the broker's certificate does not name the host \"localhost\"".into()],
        ),
        (
            "run-no-client-certificate",
            &run_nocert,
            vec![],
            vec!["the broker refused the handshake".into()],
        ),
    ];
    for (name, args, env, expected) in cases {
        let child = spawn(d, name, args, &env);
        let (status, err) = exits(child, d, name);
        println!("{name}: {err}");
        assert!(!status.success(), "{name}: {err}");
        for e in &expected {
            assert!(
                err.contains(e.as_str()),
                "{name}: expected {e:?} in:\n{err}"
            );
        }
        assert_no_secret(name, &err);
    }
}
