//! Test harness: real services on free loopback ports, started and stopped by the tests.
//!
//! - [`Mosquitto`]: Debian's `mosquitto` with a config that loses nothing
//!   (`max_queued_messages 0`: the default of 1000 silently drops QoS 1 messages for a slow
//!   subscriber); [`Mosquitto::start_tls`] adds a TLS listener with a password file, with
//!   certificates from [`Pki`] (made by the `openssl` command).
//! - [`VictoriaMetrics`]: Debian's `victoria-metrics`, which accepts InfluxDB v2 writes on
//!   `/api/v2/write`; read back with [`VictoriaMetrics::export`].
//! - [`Subscriber`] and [`publish`]: plain rumqttc clients for the test's side of MQTT.
//! - [`browser`]: headless Chromium on a page.
//! - [`shipped_config`]: a private copy of the shipped `config/`, for `aqyl run` as shipped.
//!
//! Each process is killed when its handle drops. Waits are bounded and fail with a message
//! that says what did not happen; nothing asserts on timing.

pub mod browser;

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("no free loopback port")
}

/// `n` distinct free ports on 127.0.0.1 below the kernel's ephemeral range (so no outgoing
/// connection takes one before the process that is to listen on it does), for a cluster's
/// peer addresses.
pub fn free_ports_below_ephemeral(n: usize) -> Vec<u16> {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let seed = std::process::id() as u64 ^ nanos;
    let mut held = Vec::new();
    let mut x = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    while held.len() < n {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let port = 20_000 + ((x >> 33) % 12_000) as u16;
        if let Ok(l) = TcpListener::bind(("127.0.0.1", port)) {
            held.push(l);
        }
    }
    held.iter()
        .map(|l| l.local_addr().expect("a bound port").port())
        .collect()
}

/// Finds an executable on PATH or in the usual sbin directories, or panics saying how to
/// install it.
pub fn find_exe(name: &str) -> PathBuf {
    let path = std::env::var("PATH").unwrap_or_default();
    for dir in path
        .split(':')
        .chain(["/usr/sbin", "/usr/local/sbin", "/sbin"])
    {
        let p = Path::new(dir).join(name);
        if p.is_file() {
            return p;
        }
    }
    panic!("`{name}` is not installed: run the test command from the README (tests/run), which installs it with apt-get")
}

/// A private copy of the shipped configuration (`config/aqyl.toml`, `config/sensors/`,
/// `config/rules/`, `config/subscriptions/`) in a temporary directory: `aqyl run --config <dir>/aqyl.toml` then runs
/// exactly as shipped, while its state directory (`[state] dir`, relative to the file, with
/// the store spill) stays private.
pub fn shipped_config() -> tempfile::TempDir {
    let from = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config");
    let dir = tempfile::tempdir().expect("tempdir");
    for entry in ["aqyl.toml", "sensors", "rules", "subscriptions"] {
        copy_tree(&from.join(entry), &dir.path().join(entry));
    }
    dir
}

fn copy_tree(from: &Path, to: &Path) {
    if from.is_dir() {
        std::fs::create_dir_all(to).expect("create a config directory");
        for entry in std::fs::read_dir(from).expect("read the shipped config") {
            let entry = entry.expect("read the shipped config");
            copy_tree(&entry.path(), &to.join(entry.file_name()));
        }
    } else {
        std::fs::copy(from, to)
            .unwrap_or_else(|e| panic!("copy {} to {}: {e}", from.display(), to.display()));
    }
}

/// A numeric option `NAME VALUE` from a benchmark driver's command line, or `default`.
pub fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Waits until `cond` holds, checking every 20 ms, for at most `limit`; panics with `what`.
pub fn wait_until(limit: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !cond() {
        assert!(
            Instant::now() < deadline,
            "gave up after {limit:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn wait_for_port(port: u16, child: &mut Child, name: &str) {
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    wait_until(
        Duration::from_secs(20),
        &format!("{name} to listen on {addr}"),
        || {
            if let Ok(Some(status)) = child.try_wait() {
                panic!("{name} exited with {status} before listening on {addr}");
            }
            TcpStream::connect(addr).is_ok()
        },
    );
}

/// Starts `mosquitto -c conf` and waits until it listens on `port`.
fn spawn_mosquitto(conf: &Path, port: u16) -> Child {
    let mut child = Command::new(find_exe("mosquitto"))
        .arg("-c")
        .arg(conf)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start mosquitto");
    wait_for_port(port, &mut child, "mosquitto");
    child
}

/// A running Mosquitto broker.
pub struct Mosquitto {
    /// Its port on 127.0.0.1.
    pub port: u16,
    /// Its TLS port on 127.0.0.1 ([`Mosquitto::start_tls`]).
    pub tls_port: Option<u16>,
    child: Child,
    _dir: tempfile::TempDir,
}

/// Certificates made for one test by the `openssl` command, in a private directory: a CA
/// (`ca`), a broker certificate it signed for the IP address 127.0.0.1 only (so a connection
/// to `localhost` fails the name check), a client certificate it signed, and an unrelated CA
/// (`other_ca`) that signed nothing the broker has. All keys are ECDSA P-256, unencrypted.
pub struct Pki {
    /// The CA certificate (PEM).
    pub ca: PathBuf,
    /// Another CA, which did not sign the broker's certificate.
    pub other_ca: PathBuf,
    /// The broker's certificate and key.
    pub server_cert: PathBuf,
    /// The broker's key.
    pub server_key: PathBuf,
    /// A client certificate signed by `ca` (for mutual TLS).
    pub client_cert: PathBuf,
    /// Its key.
    pub client_key: PathBuf,
    _dir: tempfile::TempDir,
}

impl Pki {
    /// Makes the certificates (valid for two days).
    pub fn generate() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path();
        // One openssl command line (no argument has a space in it).
        let openssl = |line: &str| {
            let args: Vec<&str> = line.split_whitespace().collect();
            let out = Command::new("openssl")
                .args(&args)
                .current_dir(d)
                .output()
                .unwrap_or_else(|e| {
                    panic!("`openssl` is not installed ({e}): run tests/run, which installs it")
                });
            assert!(
                out.status.success(),
                "openssl {line} failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        let new_key = "-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes";
        for (name, cn) in [("ca", "aqyl-test-ca"), ("other-ca", "some-other-ca")] {
            openssl(&format!(
                "req -x509 {new_key} -keyout {name}.key -out {name}.pem -days 2 -subj /CN={cn} \
                 -addext basicConstraints=critical,CA:TRUE \
                 -addext keyUsage=critical,keyCertSign,cRLSign"
            ));
        }
        let leaves = [
            (
                "server",
                2,
                "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
            ),
            ("client", 3, "extendedKeyUsage=clientAuth\n"),
        ];
        for (name, serial, ext) in leaves {
            openssl(&format!(
                "req {new_key} -keyout {name}.key -out {name}.csr -subj /CN=aqyl-test-{name}"
            ));
            std::fs::write(
                d.join(format!("{name}.ext")),
                format!("basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\n{ext}"),
            )
            .expect("write the extensions");
            openssl(&format!(
                "x509 -req -in {name}.csr -CA ca.pem -CAkey ca.key -set_serial {serial} -days 2 \
                 -out {name}.pem -extfile {name}.ext"
            ));
        }
        // Started as root, Mosquitto reads its files after dropping to its own user.
        open_to_all(d);
        Self {
            ca: d.join("ca.pem"),
            other_ca: d.join("other-ca.pem"),
            server_cert: d.join("server.pem"),
            server_key: d.join("server.key"),
            client_cert: d.join("client.pem"),
            client_key: d.join("client.key"),
            _dir: dir,
        }
    }
}

/// Makes a test's directory and its files readable by every user (Mosquitto, started as
/// root, reads its certificates and password file as its own user).
fn open_to_all(dir: &Path) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))
        .expect("open the directory");
    for entry in std::fs::read_dir(dir)
        .expect("read the directory")
        .flatten()
    {
        std::fs::set_permissions(entry.path(), std::fs::Permissions::from_mode(0o644))
            .expect("open a file");
    }
}

impl Mosquitto {
    /// Starts a broker on a free port.
    pub fn start() -> Self {
        Self::start_on(free_port())
    }

    /// Starts a broker on `port` (e.g. the port of a broker that was stopped, to test
    /// reconnection).
    pub fn start_on(port: u16) -> Self {
        Self::start_configured(port, "")
    }

    /// Starts a broker on a free port with `extra` lines appended to the config, e.g.
    /// `set_tcp_nodelay true` (Mosquitto leaves Nagle's algorithm on by default, which holds
    /// small messages back for milliseconds at low rates).
    pub fn start_with(extra: &str) -> Self {
        Self::start_configured(free_port(), extra)
    }

    /// Starts a broker on a free port that keeps its sessions and queued messages on disk, so
    /// [`Mosquitto::restart`] loses nothing (as `deploy/mosquitto/aqyl.conf` ships it).
    pub fn start_persistent() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        // Started as root, Mosquitto drops to its own user, which must be able to save there.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777))
            .expect("open the persistence directory to the broker's user");
        let extra = format!(
            "persistence true\npersistence_location {}/\n",
            dir.path().display()
        );
        Self::start_in(dir, free_port(), &extra)
    }

    /// Stops the broker cleanly (SIGTERM: a persistent one saves its state) and starts it
    /// again on the same port with the same configuration.
    pub fn restart(&mut self) {
        signal(self.child.id(), "-TERM");
        let _ = self.child.wait();
        self.child = spawn_mosquitto(&self._dir.path().join("mosquitto.conf"), self.port);
    }

    /// Starts a broker with two listeners: the plain one on `port` (anonymous, for the
    /// test's own clients), and a TLS one on `tls_port` with the certificates of `pki`, where
    /// only `user` with `password` (from a `mosquitto_passwd` file) may connect, and with
    /// `require_client_cert` only clients presenting a certificate signed by `pki.ca`.
    pub fn start_tls(pki: &Pki, user: &str, password: &str, require_client_cert: bool) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let passwd = dir.path().join("passwd");
        let status = Command::new(find_exe("mosquitto_passwd"))
            .args(["-b", "-c"])
            .arg(&passwd)
            .args([user, password])
            .status()
            .expect("run mosquitto_passwd");
        assert!(status.success(), "mosquitto_passwd failed");
        let (port, tls_port) = (free_port(), free_port());
        let conf = dir.path().join("mosquitto.conf");
        std::fs::write(
            &conf,
            format!(
                "per_listener_settings true\n\
                 listener {port} 127.0.0.1\nallow_anonymous true\n\
                 listener {tls_port} 127.0.0.1\nallow_anonymous false\npassword_file {}\n\
                 cafile {}\ncertfile {}\nkeyfile {}\nrequire_certificate {require_client_cert}\n\
                 max_queued_messages 0\nmax_inflight_messages 0\nlog_dest stderr\nlog_type error\n",
                passwd.display(),
                pki.ca.display(),
                pki.server_cert.display(),
                pki.server_key.display(),
            ),
        )
        .expect("write mosquitto.conf");
        open_to_all(dir.path());
        let mut child = spawn_mosquitto(&conf, port);
        wait_for_port(tls_port, &mut child, "mosquitto's TLS listener");
        Self {
            port,
            tls_port: Some(tls_port),
            child,
            _dir: dir,
        }
    }

    /// `mqtts://127.0.0.1:<tls port>`.
    pub fn tls_url(&self) -> String {
        format!(
            "mqtts://127.0.0.1:{}",
            self.tls_port.expect("a broker started with start_tls")
        )
    }

    fn start_configured(port: u16, extra: &str) -> Self {
        Self::start_in(tempfile::tempdir().expect("tempdir"), port, extra)
    }

    fn start_in(dir: tempfile::TempDir, port: u16, extra: &str) -> Self {
        let conf = dir.path().join("mosquitto.conf");
        std::fs::write(
            &conf,
            format!(
                "listener {port} 127.0.0.1\nallow_anonymous true\n\
                 # Lose nothing: the default max_queued_messages (1000) drops QoS 1 messages.\n\
                 max_queued_messages 0\nmax_inflight_messages 0\nlog_dest stderr\nlog_type error\n{extra}"
            ),
        )
        .expect("write mosquitto.conf");
        Self {
            port,
            tls_port: None,
            child: spawn_mosquitto(&conf, port),
            _dir: dir,
        }
    }

    /// `mqtt://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port)
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A running VictoriaMetrics, standing in for InfluxDB v2's write API.
pub struct VictoriaMetrics {
    /// Its HTTP port on 127.0.0.1.
    pub port: u16,
    child: Child,
    _dir: tempfile::TempDir,
}

/// One exported series: its labels and (timestamp ms, value) samples, sorted by time.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    /// Labels, `__name__` included (`aggregate_mean`).
    pub labels: serde_json::Map<String, serde_json::Value>,
    /// Samples.
    pub samples: Vec<(i64, f64)>,
}

impl Series {
    /// A label's value.
    pub fn label(&self, name: &str) -> &str {
        self.labels.get(name).and_then(|v| v.as_str()).unwrap_or("")
    }
}

impl VictoriaMetrics {
    /// Starts VictoriaMetrics on a free port with a 100-year retention (for 2014 data).
    pub fn start() -> Self {
        Self::start_on(free_port())
    }

    /// Starts VictoriaMetrics on `port` (to test a store that comes up late).
    pub fn start_on(port: u16) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut child = Command::new(find_exe("victoria-metrics"))
            .arg(format!("-httpListenAddr=127.0.0.1:{port}"))
            .arg(format!("-storageDataPath={}", dir.path().display()))
            .arg("-retentionPeriod=100y")
            .arg("-loggerLevel=ERROR")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start victoria-metrics");
        wait_for_port(port, &mut child, "victoria-metrics");
        let vm = Self {
            port,
            child,
            _dir: dir,
        };
        wait_until(Duration::from_secs(20), "victoria-metrics /health", || {
            reqwest::blocking::get(format!("{}/health", vm.url()))
                .map(|r| r.status().is_success())
                .unwrap_or(false)
        });
        vm
    }

    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Freezes the process (SIGSTOP): it keeps accepting connections and never answers, as a
    /// hung store does.
    pub fn freeze(&self) {
        signal(self.child.id(), "-STOP");
    }

    /// Lets a frozen process run again (SIGCONT).
    pub fn thaw(&self) {
        signal(self.child.id(), "-CONT");
    }

    /// Makes recent writes visible, then exports every series matching `selector`
    /// (e.g. `{__name__=~"aggregate_.*"}`).
    pub fn export(&self, selector: &str) -> Vec<Series> {
        let client = reqwest::blocking::Client::new();
        client
            .get(format!("{}/internal/force_flush", self.url()))
            .send()
            .expect("force_flush");
        let body = client
            .get(format!("{}/api/v1/export", self.url()))
            .query(&[("match[]", selector)])
            .send()
            .and_then(|r| r.error_for_status())
            .and_then(|r| r.text())
            .expect("export");
        let mut out: Vec<Series> = body
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|line| {
                let v: serde_json::Value = serde_json::from_str(line).expect("export line is JSON");
                let labels = v["metric"].as_object().cloned().unwrap_or_default();
                let ts = v["timestamps"].as_array().cloned().unwrap_or_default();
                let vals = v["values"].as_array().cloned().unwrap_or_default();
                let mut samples: Vec<(i64, f64)> = ts
                    .iter()
                    .zip(vals.iter())
                    .map(|(t, v)| (t.as_i64().unwrap_or(0), v.as_f64().unwrap_or(f64::NAN)))
                    .collect();
                samples.sort_by_key(|s| s.0);
                Series { labels, samples }
            })
            .collect();
        out.sort_by(|a, b| format!("{:?}", a.labels).cmp(&format!("{:?}", b.labels)));
        out
    }
}

impl Drop for VictoriaMetrics {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn signal(pid: u32, which: &str) {
    let ok = Command::new("kill")
        .args([which, &pid.to_string()])
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(ok, "kill {which} {pid}");
}

/// A message received by a [`Subscriber`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    /// Topic.
    pub topic: String,
    /// Payload.
    pub payload: Vec<u8>,
    /// Retained flag.
    pub retain: bool,
}

/// An MQTT subscriber on its own thread, collecting everything it receives.
pub struct Subscriber {
    messages: Arc<Mutex<Vec<Received>>>,
    client: rumqttc::Client,
}

impl Subscriber {
    /// Connects to the broker on `port` and subscribes to `filter` (QoS 1); returns once the
    /// subscription is acknowledged.
    pub fn start(port: u16, filter: &str) -> Self {
        let id = format!("test-sub-{}-{}", std::process::id(), free_port());
        let mut opts = rumqttc::MqttOptions::new(id, "127.0.0.1", port);
        opts.set_max_packet_size(1 << 24, 1 << 24);
        let (client, mut connection) = rumqttc::Client::new(opts, 100);
        client
            .subscribe(filter, rumqttc::QoS::AtLeastOnce)
            .expect("subscribe");
        let messages = Arc::new(Mutex::new(Vec::new()));
        let (subacked_tx, subacked_rx) = std::sync::mpsc::channel();
        let sink = messages.clone();
        std::thread::spawn(move || {
            for event in connection.iter() {
                match event {
                    Ok(rumqttc::Event::Incoming(rumqttc::Packet::SubAck(_))) => {
                        let _ = subacked_tx.send(());
                    }
                    Ok(rumqttc::Event::Incoming(rumqttc::Packet::Publish(p))) => {
                        if let Ok(mut m) = sink.lock() {
                            m.push(Received {
                                topic: p.topic.clone(),
                                payload: p.payload.to_vec(),
                                retain: p.retain,
                            });
                        }
                    }
                    Ok(_) => {}
                    Err(_) => break,
                }
            }
        });
        subacked_rx
            .recv_timeout(Duration::from_secs(20))
            .expect("the subscription was not acknowledged");
        Self { messages, client }
    }

    /// Everything received so far.
    pub fn messages(&self) -> Vec<Received> {
        self.messages.lock().map(|m| m.clone()).unwrap_or_default()
    }

    /// Waits until at least `n` messages arrived (bounded wait) and returns them.
    pub fn wait_for(&self, n: usize, limit: Duration) -> Vec<Received> {
        wait_until(limit, &format!("{n} MQTT messages"), || {
            self.messages().len() >= n
        });
        self.messages()
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        let _ = self.client.disconnect();
    }
}

/// Publishes `(topic, payload)` pairs at QoS 1 in order and returns once the broker has
/// acknowledged every one.
pub fn publish(port: u16, messages: &[(String, Vec<u8>)]) {
    let id = format!("test-pub-{}-{}", std::process::id(), free_port());
    let mut opts = rumqttc::MqttOptions::new(id, "127.0.0.1", port);
    opts.set_max_packet_size(1 << 24, 1 << 24).set_inflight(100);
    let (client, mut connection) = rumqttc::Client::new(opts, 1000);
    let total = messages.len();
    let to_send = messages.to_vec();
    let publisher = std::thread::spawn(move || {
        for (topic, payload) in to_send {
            client
                .publish(topic, rumqttc::QoS::AtLeastOnce, false, payload)
                .expect("publish");
        }
        client
    });
    let mut acked = 0;
    let deadline = Instant::now() + Duration::from_secs(60);
    while acked < total {
        assert!(
            Instant::now() < deadline,
            "only {acked} of {total} publishes were acknowledged"
        );
        match connection.recv_timeout(Duration::from_secs(1)) {
            Ok(Ok(rumqttc::Event::Incoming(rumqttc::Packet::PubAck(_)))) => acked += 1,
            Ok(Ok(_)) => {}
            Ok(Err(e)) => panic!("publisher connection failed: {e}"),
            Err(_) => {}
        }
    }
    let client = publisher.join().expect("publisher thread");
    let _ = client.disconnect();
    for _ in 0..10 {
        if connection.recv_timeout(Duration::from_millis(100)).is_err() {
            break;
        }
    }
}

/// A CityPulse traffic row of segment `id` at Unix second `unix_s`, in Copenhagen local time
/// as the shipped descriptor reads it.
pub fn citypulse_row(id: &str, unix_s: i64, speed: u32, vehicles: u32) -> (String, Vec<u8>) {
    use chrono::TimeZone;
    let local = chrono_tz::Europe::Copenhagen
        .timestamp_opt(unix_s, 0)
        .unwrap()
        .format("%Y-%m-%dT%H:%M:%S");
    let payload = format!(
        r#"{{"status":"OK","avgMeasuredTime":60,"avgSpeed":{speed},"extID":668,"medianMeasuredTime":60,"TIMESTAMP":"{local}","vehicleCount":{vehicles},"_id":1,"REPORT_ID":1}}"#
    );
    (format!("city/traffic/{id}"), payload.into_bytes())
}
