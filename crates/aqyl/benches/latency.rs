//! Live latency of incidents: how long after a road segment's reading is published the
//! congestion it starts or ends reaches an operator, on `aqyl/events/congestion/<segment>`
//! and on the retained `aqyl/active/congestion/<segment>`.
//!
//! ```text
//! cargo bench -p aqyl --bench latency -- --rate 1000 --seconds 20
//! cargo bench -p aqyl --bench latency -- --rate 10000 --seconds 20
//! ```
//! Starts a real Mosquitto (the harness's settings, which lose nothing), a VictoriaMetrics for
//! the InfluxDB sink the shipped configuration enables, and `aqyl run` with a private copy of
//! the shipped `config/` (10-minute allowed lateness; `AQYL_LOG=warn`, so that the service
//! does not write an info line per incident to the terminal). Then publishes live CityPulse
//! traffic rows at a steady `--rate` for `--seconds`: `--rate` segments, each sending one
//! reading a second with event time = now (Copenhagen local time, as the descriptor reads it;
//! one second is the format's resolution, so one reading a second per segment keeps each
//! segment's readings strictly newer than its last). One segment in `--probe-every` alternates
//! `--run` free readings and `--run` congested ones (staggered, so that starts and ends spread
//! evenly over time), so a known subset of readings starts or ends a congestion; the others
//! flow freely. A separate MQTT client in this process receives the event and active topics;
//! each message is matched to its reading by segment, state and event time, and the delay is
//! measured from just before the publish call to the receipt with the same `Instant` clock. Waits at most `--drain` seconds after the last publish, then
//! prints p50, p99 and max per topic and state, how many arrived of those expected (the rest
//! did not arrive before that deadline), and the achieved publish rate. Asserts nothing on
//! timing: it is a measurement.
//!
//! `--nodelay 1` starts Mosquitto with `set_tcp_nodelay true`: by default it leaves Nagle's
//! algorithm on, which holds a small packet back while an earlier one is still unacknowledged
//! by TCP: at low rates, milliseconds per hop out of the broker. `--timeline 1` also prints the event topic's
//! p50 and max per second of publishing, to tell a steady tail from a stall.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a benchmark driver: failing loudly is right

use aqyl_tests::{free_port, shipped_config, wait_until, Mosquitto, Subscriber, VictoriaMetrics};
use chrono::TimeZone;
use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Packet, QoS};
use std::collections::HashMap;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Command-line settings.
#[derive(Debug, Clone, Copy)]
struct Args {
    /// Target publish rate, readings per second (also the number of segments).
    rate: usize,
    /// How long to publish.
    seconds: usize,
    /// One segment in this many alternates free and congested readings.
    probe_every: usize,
    /// Readings per free or congested run of a probe segment.
    run: usize,
    /// Longest wait for the last incidents after the last publish, seconds.
    drain: u64,
    /// Start Mosquitto with `set_tcp_nodelay true` (Nagle's algorithm off).
    nodelay: bool,
    /// Also print the event topic's delays per second of publishing.
    timeline: bool,
}

impl Args {
    fn parse() -> Self {
        Self {
            rate: aqyl_tests::arg("--rate", 1000).max(1),
            seconds: aqyl_tests::arg("--seconds", 20).max(1),
            probe_every: aqyl_tests::arg("--probe-every", 10).max(1),
            run: aqyl_tests::arg("--run", 2).max(1),
            drain: aqyl_tests::arg("--drain", 15) as u64,
            nodelay: aqyl_tests::arg("--nodelay", 0) != 0,
            timeline: aqyl_tests::arg("--timeline", 0) != 0,
        }
    }
}

/// `aqyl run` as a child process, stopped (SIGTERM, then kill) when dropped.
struct Service {
    child: Child,
    http: String,
}

impl Service {
    /// Starts the service on `config` against `mqtt` and `vm`, and waits until it is online.
    fn start(config: &Path, mqtt: &Mosquitto, vm: &VictoriaMetrics) -> Self {
        let status = Subscriber::start(mqtt.port, "aqyl/status");
        let http_port = free_port();
        let child = Command::new(env!("CARGO_BIN_EXE_aqyl"))
            .args(["run", "--config"])
            .arg(config)
            .env("AQYL_MQTT_URL", mqtt.url())
            .env("AQYL_INFLUX_URL", vm.url())
            .env("AQYL_HTTP_ADDR", format!("127.0.0.1:{http_port}"))
            .env("AQYL_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start aqyl");
        let mut service = Self {
            child,
            http: format!("http://127.0.0.1:{http_port}"),
        };
        wait_until(Duration::from_secs(60), "aqyl/status online", || {
            if let Ok(Some(code)) = service.child.try_wait() {
                panic!("aqyl exited early with {code}");
            }
            status.messages().iter().any(|m| m.payload == b"online")
        });
        service
    }

    /// A counter from `/metrics` (0 when absent).
    fn metric(&self, line_prefix: &str) -> u64 {
        reqwest::blocking::get(format!("{}/metrics", self.http))
            .and_then(|r| r.text())
            .ok()
            .and_then(|body| {
                body.lines()
                    .find_map(|l| l.strip_prefix(line_prefix)?.trim().parse().ok())
            })
            .unwrap_or(0)
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An incident lifecycle state a reading is expected to cause.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum State {
    Start,
    End,
}

/// A reading that starts or ends a congestion, and when it was published.
#[derive(Debug, Clone)]
struct Transition {
    segment: String,
    state: State,
    event_ms: i64,
    published: Instant,
}

/// The publish plan: reading `k` (second `k`) of segment `s`.
#[derive(Debug, Clone, Copy)]
struct Plan {
    args: Args,
}

impl Plan {
    fn segment(self, s: usize) -> String {
        format!("lat-{s:05}")
    }

    fn is_probe(self, s: usize) -> bool {
        s % self.args.probe_every == 0
    }

    /// Whether reading `k` of segment `s` is congested. The probes' cycles are staggered, so
    /// that their starts and ends spread evenly over the seconds instead of coming in bursts.
    fn congested(self, s: usize, k: usize) -> bool {
        let shift = (s / self.args.probe_every) % (2 * self.args.run);
        self.is_probe(s) && ((k + shift) / self.args.run) % 2 == 1
    }

    /// The state reading `k` of segment `s` causes, if any.
    fn transition(self, s: usize, k: usize) -> Option<State> {
        let before = k > 0 && self.congested(s, k - 1);
        match (before, self.congested(s, k)) {
            (false, true) => Some(State::Start),
            (true, false) => Some(State::End),
            _ => None,
        }
    }

    /// A CityPulse traffic row. Speeds vary so that no segment looks stuck to quality scoring;
    /// a congested row has exactly 10 vehicles (congestion, but a low traffic-derived
    /// pollution level) and a speed above 25 km/h (no sudden slowdown), so the congestion
    /// rule is the only one these rows trigger.
    fn payload(self, s: usize, k: usize, local_time: &str) -> Vec<u8> {
        let (speed, count) = if self.congested(s, k) {
            (26 + (s + k) % 9, 10)
        } else {
            (50 + (s + k) % 20, 1 + (s + k) % 8)
        };
        format!(
            r#"{{"status":"OK","avgMeasuredTime":60,"avgSpeed":{speed},"extID":{s},"medianMeasuredTime":60,"TIMESTAMP":"{local_time}","vehicleCount":{count},"_id":{k},"REPORT_ID":{s}}}"#
        )
        .into_bytes()
    }
}

/// A second of Unix time as the shipped traffic descriptor reads it: Copenhagen local time.
fn copenhagen(unix_s: i64) -> String {
    chrono_tz::Europe::Copenhagen
        .timestamp_opt(unix_s, 0)
        .single()
        .expect("a valid instant")
        .format("%Y-%m-%dT%H:%M:%S")
        .to_string()
}

/// Sleeps until the next whole second of the wall clock; returns it (Unix seconds) and the
/// `Instant` it corresponds to.
async fn next_second() -> (i64, Instant) {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    let wait = Duration::from_secs(1) - Duration::from_nanos(u64::from(now.subsec_nanos()));
    tokio::time::sleep(wait).await;
    (now.as_secs() as i64 + 1, Instant::now())
}

/// What the publisher did.
struct Published {
    readings: usize,
    elapsed: Duration,
    transitions: Vec<Transition>,
}

/// Publishes the plan at QoS 1 on one connection (so each segment's readings stay in order),
/// reading `j` at `j / rate` seconds after a whole second, and returns once the broker has
/// acknowledged every reading.
async fn publish(port: u16, plan: Plan) -> Published {
    let mut opts = MqttOptions::new(format!("lat-pub-{}", free_port()), "127.0.0.1", port);
    opts.set_inflight(1000)
        .set_max_packet_size(1 << 20, 1 << 20);
    let (client, eventloop) = AsyncClient::new(opts, 10_000);
    let total = plan.args.rate * plan.args.seconds;
    let acks = tokio::spawn(count_acks(eventloop, total));
    let (first_second, t0) = next_second().await;
    let mut transitions = Vec::new();
    let mut local = String::new();
    for j in 0..total {
        let (k, s) = (j / plan.args.rate, j % plan.args.rate);
        if s == 0 {
            local = copenhagen(first_second + k as i64);
        }
        let due = t0 + Duration::from_secs_f64(j as f64 / plan.args.rate as f64);
        if due > Instant::now() {
            tokio::time::sleep_until(due.into()).await;
        }
        let published = Instant::now();
        client
            .publish(
                format!("city/traffic/{}", plan.segment(s)),
                QoS::AtLeastOnce,
                false,
                plan.payload(s, k, &local),
            )
            .await
            .expect("publish");
        if let Some(state) = plan.transition(s, k) {
            transitions.push(Transition {
                segment: plan.segment(s),
                state,
                event_ms: (first_second + k as i64) * 1000,
                published,
            });
        }
    }
    let elapsed = t0.elapsed();
    acks.await.expect("publisher connection");
    let _ = client.disconnect().await;
    Published {
        readings: total,
        elapsed,
        transitions,
    }
}

async fn count_acks(mut eventloop: EventLoop, total: usize) {
    let mut acked = 0;
    while acked < total {
        if let Event::Incoming(Packet::PubAck(_)) =
            eventloop.poll().await.expect("publisher connection")
        {
            acked += 1;
        }
    }
}

/// A message received by a [`Receiver`], with the instant it arrived.
struct Arrival {
    at: Instant,
    topic: String,
    payload: Vec<u8>,
}

/// A separate MQTT client that timestamps everything it receives on one filter.
struct Receiver {
    arrivals: Arc<Mutex<Vec<Arrival>>>,
    count: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Receiver {
    /// Subscribes to `filter` (QoS 1) and returns once the broker has acknowledged it.
    async fn start(port: u16, filter: &str) -> Self {
        let mut opts = MqttOptions::new(format!("lat-sub-{}", free_port()), "127.0.0.1", port);
        opts.set_max_packet_size(1 << 20, 1 << 20);
        let (client, mut eventloop) = AsyncClient::new(opts, 100);
        client.subscribe(filter, QoS::AtLeastOnce).await.unwrap();
        loop {
            if let Event::Incoming(Packet::SubAck(_)) = eventloop.poll().await.unwrap() {
                break;
            }
        }
        let arrivals = Arc::new(Mutex::new(Vec::new()));
        let count = Arc::new(AtomicUsize::new(0));
        let (sink, counter) = (arrivals.clone(), count.clone());
        let task = tokio::spawn(async move {
            let _client = client; // keeps the connection open
            while let Ok(event) = eventloop.poll().await {
                if let Event::Incoming(Packet::Publish(p)) = event {
                    let at = Instant::now();
                    sink.lock().unwrap().push(Arrival {
                        at,
                        topic: p.topic.clone(),
                        payload: p.payload.to_vec(),
                    });
                    counter.fetch_add(1, Relaxed);
                }
            }
        });
        Self {
            arrivals,
            count,
            task,
        }
    }

    fn received(&self) -> usize {
        self.count.load(Relaxed)
    }

    /// Stops receiving and returns what arrived.
    fn finish(self) -> Vec<Arrival> {
        self.task.abort();
        std::mem::take(&mut *self.arrivals.lock().unwrap())
    }
}

/// Waits until both receivers have at least `expected` messages or `drain` has passed.
async fn drain(receivers: [&Receiver; 2], expected: usize, drain: Duration) {
    let deadline = Instant::now() + drain;
    while Instant::now() < deadline && receivers.iter().any(|r| r.received() < expected) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `(segment, state, event time)` of an event message's JSON payload.
fn identify(payload: &[u8]) -> Option<(String, State, i64)> {
    let v: serde_json::Value = serde_json::from_slice(payload).ok()?;
    let state = match v["state"].as_str()? {
        "start" => State::Start,
        "end" => State::End,
        _ => return None,
    };
    let time = chrono::DateTime::parse_from_rfc3339(v["time"].as_str()?).ok()?;
    Some((
        v["subject"].as_str()?.to_string(),
        state,
        time.timestamp_millis(),
    ))
}

/// Delays per expected transition (`None`: not received), and the count of messages that
/// matched no expected transition (or matched one twice).
struct Matched {
    delays: Vec<Option<Duration>>,
    unexpected: usize,
}

impl Matched {
    fn new(n: usize) -> Self {
        Self {
            delays: vec![None; n],
            unexpected: 0,
        }
    }

    fn record(&mut self, index: Option<usize>, published: &[Transition], at: Instant) {
        match index {
            Some(i) if self.delays[i].is_none() => {
                self.delays[i] = Some(at.saturating_duration_since(published[i].published));
            }
            _ => self.unexpected += 1,
        }
    }
}

fn by_key(transitions: &[Transition]) -> HashMap<(String, State, i64), usize> {
    transitions
        .iter()
        .enumerate()
        .map(|(i, t)| ((t.segment.clone(), t.state, t.event_ms), i))
        .collect()
}

/// Matches event messages by segment, state and event time.
fn match_events(transitions: &[Transition], arrivals: &[Arrival]) -> Matched {
    let keys = by_key(transitions);
    let mut matched = Matched::new(transitions.len());
    for a in arrivals {
        let index = identify(&a.payload).and_then(|k| keys.get(&k).copied());
        matched.record(index, transitions, a.at);
    }
    matched
}

/// Matches retained active messages: a set (the start's JSON) by segment and event time; a
/// clear (empty payload, no time in it) to the segment's oldest end not yet matched.
fn match_active(transitions: &[Transition], arrivals: &[Arrival]) -> Matched {
    let keys = by_key(transitions);
    let mut ends: HashMap<&str, std::collections::VecDeque<usize>> = HashMap::new();
    for (i, t) in transitions.iter().enumerate() {
        if t.state == State::End {
            ends.entry(t.segment.as_str()).or_default().push_back(i);
        }
    }
    let mut matched = Matched::new(transitions.len());
    for a in arrivals {
        let index = if a.payload.is_empty() {
            let segment = a.topic.rsplit('/').next().unwrap_or("");
            ends.get_mut(segment).and_then(|q| q.pop_front())
        } else {
            identify(&a.payload).and_then(|k| keys.get(&k).copied())
        };
        matched.record(index, transitions, a.at);
    }
    matched
}

/// Nearest-rank percentile of sorted delays.
fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

/// One line: received of expected, and p50, p99, max of those received; `which` names the
/// state (or `all`).
fn summary(
    label: &str,
    which: &str,
    transitions: &[Transition],
    matched: &Matched,
    state: Option<State>,
) {
    let mut delays: Vec<Duration> = Vec::new();
    let mut expected = 0;
    for (t, d) in transitions.iter().zip(&matched.delays) {
        if state.is_none_or(|s| s == t.state) {
            expected += 1;
            delays.extend(d);
        }
    }
    delays.sort();
    let line = format!(
        "{label:<28} {which:<6} received {:>6} of {:>6}",
        delays.len(),
        expected
    );
    if delays.is_empty() {
        println!("{line}  (none before the deadline)");
        return;
    }
    println!(
        "{line}  p50 {:>10}  p99 {:>10}  max {:>10}",
        ms(percentile(&delays, 0.50)),
        ms(percentile(&delays, 0.99)),
        ms(delays[delays.len() - 1]),
    );
}

/// The lines of one topic; `names` are what a start and an end are called there.
fn report(label: &str, names: [&str; 2], transitions: &[Transition], matched: &Matched) {
    for (which, state) in [
        (names[0], Some(State::Start)),
        (names[1], Some(State::End)),
        ("all", None),
    ] {
        summary(label, which, transitions, matched, state);
    }
    let missing = |s: State| {
        transitions
            .iter()
            .zip(&matched.delays)
            .filter(|(t, d)| t.state == s && d.is_none())
            .count()
    };
    println!(
        "{label:<28} not received before the deadline: {} {}s, {} {}s; unexpected or duplicate messages: {}",
        missing(State::Start),
        names[0],
        missing(State::End),
        names[1],
        matched.unexpected
    );
}

/// Observations accepted and late records, once every published reading is one or the
/// other (the last incidents can arrive before the last free-flow readings are counted), or
/// after 10 s.
fn accepted(service: &Service, published: u64) -> (u64, u64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let observations = service.metric("aqyl_observations_total ");
        let late = service.metric("aqyl_rejected_total{reason=\"late\"} ");
        if observations + late >= published || Instant::now() > deadline {
            return (observations, late);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The event topic's delays per second of publishing: whether the tail is spread out or one
/// stall.
fn timeline(transitions: &[Transition], matched: &Matched) {
    let mut seconds: std::collections::BTreeMap<i64, Vec<Duration>> = Default::default();
    for (t, d) in transitions.iter().zip(&matched.delays) {
        seconds.entry(t.event_ms / 1000).or_default().extend(d);
    }
    let first = seconds.keys().next().copied().unwrap_or(0);
    for (second, mut delays) in seconds {
        delays.sort();
        if let Some(max) = delays.last() {
            println!(
                "  second {:>3}: {:>5} received  p50 {:>10}  max {:>10}",
                second - first,
                delays.len(),
                ms(percentile(&delays, 0.5)),
                ms(*max)
            );
        }
    }
}

fn main() {
    let args = Args::parse();
    let plan = Plan { args };
    let mqtt = if args.nodelay {
        Mosquitto::start_with("set_tcp_nodelay true\n")
    } else {
        Mosquitto::start()
    };
    let vm = VictoriaMetrics::start();
    let config = shipped_config();
    let service = Service::start(&config.path().join("aqyl.toml"), &mqtt, &vm);
    println!(
        "live latency: aqyl run with the shipped config (allowed_lateness 10m, InfluxDB sink on VictoriaMetrics), mosquitto max_queued_messages 0{}, QoS 1",
        if args.nodelay { ", set_tcp_nodelay true" } else { "" }
    );
    println!(
        "workload: {} segments x 1 reading/s for {} s (target {} msg/s, event time = now); 1 segment in {} alternates {} free / {} congested readings",
        args.rate, args.seconds, args.rate, args.probe_every, args.run, args.run
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (published, events, active) = rt.block_on(async {
        let events = Receiver::start(mqtt.port, "aqyl/events/congestion/#").await;
        let active = Receiver::start(mqtt.port, "aqyl/active/congestion/#").await;
        let published = publish(mqtt.port, plan).await;
        let expected = published.transitions.len();
        drain(
            [&events, &active],
            expected,
            Duration::from_secs(args.drain),
        )
        .await;
        (published, events.finish(), active.finish())
    });
    let (observations, late) = accepted(&service, published.readings as u64);
    let out_of_order = service.metric("aqyl_rules_out_of_order_total ");
    let written = service.metric("aqyl_influx_points_written_total ");
    let failures = service.metric("aqyl_influx_write_failures_total ");
    let quality = service.metric("aqyl_quality_reports_published_total ");
    drop(service);
    println!(
        "published {} readings in {:.2} s: {:.0} msg/s achieved, all acknowledged; aqyl accepted {observations} observations, {late} late, {out_of_order} out of order for the rules; {written} points written to InfluxDB (VictoriaMetrics), {failures} failed writes; {quality} quality reports published",
        published.readings,
        published.elapsed.as_secs_f64(),
        published.readings as f64 / published.elapsed.as_secs_f64(),
    );
    println!(
        "expected {} congestion transitions; waited at most {} s after the last publish",
        published.transitions.len(),
        args.drain
    );
    let t = &published.transitions;
    let events = match_events(t, &events);
    report("aqyl/events/congestion/#", ["start", "end"], t, &events);
    if args.timeline {
        timeline(t, &events);
    }
    let active = match_active(t, &active);
    report("aqyl/active/congestion/#", ["set", "clear"], t, &active);
}
