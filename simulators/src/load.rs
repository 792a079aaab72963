//! The load test: publish traced traffic rows at a target rate (or flat out) over several
//! connections, receive them back on a separate connection, and report rates, loss,
//! duplicates and end-to-end latency.
//!
//! Messages are CityPulse traffic rows for `sensors` road segments with ids from
//! [`FIRST_LOAD_ID`] (so they never collide with `aqyl-sim run`), each with `seq` and
//! `sent_at` appended. Payloads are pre-rendered per sensor for one simulated day and reused,
//! so the publisher spends its time on MQTT, not on JSON. Latency has 1 ms resolution
//! (`sent_at` is in milliseconds) and assumes publisher and subscriber share a clock, which
//! they do since both are this process.

use std::collections::{BTreeMap, HashMap};
use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use crate::error::{Error, Result};
use crate::mqtt::{client_id, Broker, Connection};
use crate::publish::now_ms;
use crate::sensors::{CityConfig, SensorType};
use crate::simulation::{SimConfig, Simulation};
use crate::stats::{Latencies, Percentiles, SeqTracker};

/// First `REPORT_ID` used by load-test sensors.
pub const FIRST_LOAD_ID: u64 = 900_000;

/// Request-queue bound per publisher: enough to keep the socket busy, small enough that
/// `sent_at` measures the broker and not a queue inside this process.
const LOAD_QUEUE: usize = 64;

/// Load-test settings.
#[derive(Debug, Clone)]
pub struct LoadConfig {
    /// Broker.
    pub broker: Broker,
    /// Publisher connections.
    pub connections: usize,
    /// QoS for publishing and subscribing.
    pub qos: rumqttc::QoS,
    /// Target messages per second over all connections; `None` for flat out.
    pub rate: Option<f64>,
    /// Stop after this many messages.
    pub count: Option<u64>,
    /// Stop after this long (wall clock).
    pub duration: Option<Duration>,
    /// Number of simulated road segments.
    pub sensors: usize,
    /// Extra filters to count (e.g. `aqyl/#`).
    pub watch: Vec<String>,
    /// How long to wait for stragglers after the last publish.
    pub drain: Duration,
    /// Seed for the payload values.
    pub seed: u64,
    /// Draw a progress line on stderr (only when it is a terminal).
    pub progress: bool,
}

/// What a load test measured.
#[derive(Debug, Clone, Default, Serialize)]
pub struct LoadSummary {
    /// 0 or 1.
    pub qos: u8,
    /// Publisher connections.
    pub connections: usize,
    /// Simulated sensors.
    pub sensors: usize,
    /// Requested rate (`null` for max).
    pub target_rate: Option<f64>,
    /// Messages published.
    pub published: u64,
    /// Seconds spent publishing (until the last message was handed to the client).
    pub publish_secs: f64,
    /// published / publish_secs.
    pub publish_rate: f64,
    /// QoS 1 messages the broker never acknowledged.
    pub unacked: u64,
    /// Messages received back (including duplicates).
    pub received: u64,
    /// Received messages per second, from the first publish to the last arrival.
    pub receive_rate: f64,
    /// Published messages never received.
    pub lost: u64,
    /// Messages received more than once (extra copies).
    pub duplicates: u64,
    /// Messages that arrived after a higher `seq` of the same sensor.
    pub reordered: u64,
    /// Received payloads without `seq`/`sent_at`.
    pub untraced: u64,
    /// End-to-end latency (publish call to arrival).
    pub latency: Percentiles,
    /// Messages counted per watched topic prefix (first two levels).
    pub watch: BTreeMap<String, u64>,
}

#[derive(Deserialize)]
struct TraceFields {
    seq: Option<u64>,
    sent_at: Option<u64>,
}

#[derive(Default)]
struct Received {
    sensors: HashMap<String, SeqTracker>,
    latencies: Latencies,
    untraced: u64,
    watch: BTreeMap<String, u64>,
    last: Option<Instant>,
}

struct SensorFeed {
    topic: String,
    prefixes: Vec<Vec<u8>>,
}

fn feeds(cfg: &LoadConfig) -> Result<Vec<SensorFeed>> {
    let start = crate::time::parse_time("2014-08-01T00:00:00")?;
    let sensors = cfg.sensors.max(cfg.connections).max(1);
    let city = CityConfig {
        sensors,
        areas: 5,
        types: vec![SensorType::Traffic],
    };
    let (messages, _) = Simulation::generate(SimConfig::new(
        city,
        start,
        chrono::Duration::days(1),
        cfg.seed,
    ))?;
    let mut out: Vec<SensorFeed> = (0..sensors)
        .map(|i| SensorFeed {
            topic: format!("city/traffic/{}", FIRST_LOAD_ID + i as u64),
            prefixes: Vec::new(),
        })
        .collect();
    for m in messages {
        let mut p = m.payload;
        if let Some(f) = p.fields_mut() {
            f.set("REPORT_ID", FIRST_LOAD_ID + m.sensor as u64);
        }
        let mut bytes = crate::payload::encode(&p, None, None);
        bytes.pop(); // the closing brace; seq and sent_at go before it
        out[m.sensor].prefixes.push(bytes);
    }
    Ok(out)
}

fn body(prefix: &[u8], seq: u64) -> Vec<u8> {
    let mut b = Vec::with_capacity(prefix.len() + 40);
    b.extend_from_slice(prefix);
    // Writing to a Vec cannot fail.
    let _ = write!(b, ",\"seq\":{seq},\"sent_at\":{}}}", now_ms());
    b
}

/// Runs a load test and returns its summary.
pub async fn run(cfg: LoadConfig) -> Result<LoadSummary> {
    if cfg.rate.is_some_and(|r| r <= 0.0 || !r.is_finite()) {
        return Err(Error::Invalid(
            "--rate must be a positive number of messages per second".into(),
        ));
    }
    let feeds = Arc::new(feeds(&cfg)?);
    let topics: HashMap<String, ()> = feeds.iter().map(|f| (f.topic.clone(), ())).collect();
    let received = Arc::new(Mutex::new(Received::default()));
    let arrivals = Arc::new(AtomicU64::new(0));

    let mut filters = vec!["city/traffic/#".to_owned()];
    filters.extend(cfg.watch.iter().cloned());
    let sub = {
        let received = received.clone();
        let arrivals = arrivals.clone();
        Connection::subscriber(
            &cfg.broker,
            &client_id("load-sub", 0),
            cfg.qos,
            &filters,
            move |p| {
                let now = Instant::now();
                let now_us = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_micros() as i64);
                let Ok(mut r) = received.lock() else { return };
                if !topics.contains_key(&p.topic) {
                    if !p.topic.starts_with("city/traffic/") {
                        let prefix: String =
                            p.topic.split('/').take(2).collect::<Vec<_>>().join("/");
                        *r.watch.entry(prefix).or_default() += 1;
                    }
                    return;
                }
                arrivals.fetch_add(1, Ordering::Relaxed);
                r.last = Some(now);
                let trace =
                    crate::stats::trace_fields(&p.payload).or_else(
                        || match serde_json::from_slice::<TraceFields>(&p.payload) {
                            Ok(TraceFields {
                                seq: Some(seq),
                                sent_at: Some(sent_at),
                            }) => Some((seq, sent_at)),
                            _ => None,
                        },
                    );
                match trace {
                    Some((seq, sent_at)) => {
                        r.latencies.record_us(now_us - sent_at as i64 * 1000);
                        r.sensors.entry(p.topic).or_default().record(seq);
                    }
                    None => r.untraced += 1,
                }
            },
        )
        .await?
    };

    let n = cfg.connections.max(1);
    let mut conns = Vec::new();
    for i in 0..n {
        conns.push(Arc::new(
            Connection::publisher(&cfg.broker, &client_id("load-pub", i), cfg.qos, LOAD_QUEUE)
                .await?,
        ));
    }
    let started = Instant::now();
    let total_sent = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for (c, conn) in conns.iter().enumerate() {
        let mine: Vec<usize> = (0..feeds.len()).filter(|s| s % n == c).collect();
        if mine.is_empty() {
            continue;
        }
        let count = cfg
            .count
            .map(|k| k / n as u64 + u64::from((c as u64) < k % n as u64));
        let rate = cfg.rate.map(|r| r / n as f64);
        let (conn, feeds, total_sent, duration) = (
            conn.clone(),
            feeds.clone(),
            total_sent.clone(),
            cfg.duration,
        );
        tasks.push(tokio::spawn(async move {
            let mut seqs = vec![0u64; mine.len()];
            let mut k = 0u64;
            let t0 = Instant::now();
            loop {
                if count.is_some_and(|l| k >= l)
                    || (k % 64 == 0 && duration.is_some_and(|d| t0.elapsed() >= d))
                {
                    break;
                }
                if let Some(r) = rate {
                    let due = Duration::from_secs_f64(k as f64 / r);
                    if due > t0.elapsed() {
                        tokio::time::sleep_until(t0 + due).await;
                    }
                }
                let slot = (k % mine.len() as u64) as usize;
                let feed = &feeds[mine[slot]];
                let seq = seqs[slot];
                let prefix = &feed.prefixes[(seq % feed.prefixes.len() as u64) as usize];
                conn.publish(feed.topic.clone(), body(prefix, seq)).await?;
                seqs[slot] += 1;
                k += 1;
                total_sent.fetch_add(1, Ordering::Relaxed);
            }
            Ok::<_, Error>(mine.into_iter().zip(seqs).collect::<Vec<_>>())
        }));
    }

    let progress = cfg.progress && std::io::stderr().is_terminal();
    let ticker = progress.then(|| {
        let (total_sent, arrivals) = (total_sent.clone(), arrivals.clone());
        tokio::spawn(async move {
            let mut last = (0, 0, Instant::now());
            loop {
                tokio::time::sleep(Duration::from_millis(500)).await;
                let (s, r, now) = (
                    total_sent.load(Ordering::Relaxed),
                    arrivals.load(Ordering::Relaxed),
                    Instant::now(),
                );
                let dt = (now - last.2).as_secs_f64().max(1e-3);
                eprint!(
                    "\r\x1b[2Kpublished {s} ({:.0}/s)  received {r} ({:.0}/s)  in flight {}",
                    (s - last.0) as f64 / dt,
                    (r - last.1) as f64 / dt,
                    s.saturating_sub(r)
                );
                last = (s, r, now);
            }
        })
    });

    let mut sent_per_sensor: HashMap<String, u64> = HashMap::new();
    for t in tasks {
        let sent = t
            .await
            .map_err(|e| Error::Invalid(format!("a publisher task failed: {e}")))??;
        for (s, k) in sent {
            sent_per_sensor.insert(feeds[s].topic.clone(), k);
        }
    }
    let publish_secs = started.elapsed().as_secs_f64();
    let published: u64 = sent_per_sensor.values().sum();
    let mut unacked = 0;
    for conn in conns {
        if let Ok(conn) = Arc::try_unwrap(conn) {
            unacked += conn.close(Duration::from_secs(60)).await;
        }
    }

    // Wait until everything arrived, or until nothing has arrived for `drain`.
    loop {
        let got = arrivals.load(Ordering::Relaxed);
        let last = received.lock().ok().and_then(|r| r.last).unwrap_or(started);
        if got >= published || last.elapsed() >= cfg.drain {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    if !cfg.watch.is_empty() {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    sub.close(Duration::from_secs(1)).await;
    if let Some(t) = ticker {
        t.abort();
        eprintln!();
    }

    let mut r = received
        .lock()
        .map_err(|_| Error::Invalid("the subscriber panicked".into()))?;
    let r = &mut *r;
    let mut summary = LoadSummary {
        qos: cfg.qos as u8,
        connections: n,
        sensors: feeds.len(),
        target_rate: cfg.rate,
        published,
        publish_secs,
        publish_rate: published as f64 / publish_secs.max(1e-9),
        unacked,
        untraced: r.untraced,
        latency: r.latencies.percentiles(),
        watch: std::mem::take(&mut r.watch),
        ..LoadSummary::default()
    };
    for (topic, sent) in &sent_per_sensor {
        match r.sensors.get(topic) {
            Some(t) => {
                summary.lost += t.lost(*sent);
                summary.duplicates += t.duplicates();
                summary.reordered += t.reordered();
                summary.received += t.distinct() + t.duplicates();
            }
            None => summary.lost += sent,
        }
    }
    let span = r.last.map_or(0.0, |l| (l - started).as_secs_f64());
    summary.receive_rate = if span > 0.0 {
        summary.received as f64 / span
    } else {
        0.0
    };
    Ok(summary)
}

impl LoadSummary {
    /// A plain-text table for the terminal.
    pub fn table(&self) -> String {
        let target = self
            .target_rate
            .map_or("max".to_owned(), |r| format!("{r:.0}/s"));
        let mut out = String::new();
        let mut row = |k: &str, v: String| out.push_str(&format!("{k:<18} {v}\n"));
        row("qos", self.qos.to_string());
        row("connections", self.connections.to_string());
        row("sensors", self.sensors.to_string());
        row("target rate", target);
        row(
            "published",
            format!("{} in {:.2} s", self.published, self.publish_secs),
        );
        row("publish rate", format!("{:.0} msg/s", self.publish_rate));
        row("received", self.received.to_string());
        row("receive rate", format!("{:.0} msg/s", self.receive_rate));
        let pct = if self.published > 0 {
            100.0 * self.lost as f64 / self.published as f64
        } else {
            0.0
        };
        row("lost", format!("{} ({pct:.3} %)", self.lost));
        row("duplicates", self.duplicates.to_string());
        row("reordered", self.reordered.to_string());
        if self.unacked > 0 {
            row("unacked", self.unacked.to_string());
        }
        if self.untraced > 0 {
            row("untraced", self.untraced.to_string());
        }
        let l = &self.latency;
        row(
            "latency ms",
            format!(
                "p50 {:.1}  p95 {:.1}  p99 {:.1}  max {:.1}",
                l.p50_ms, l.p95_ms, l.p99_ms, l.max_ms
            ),
        );
        for (k, v) in &self.watch {
            row(&format!("watch {k}"), v.to_string());
        }
        out
    }
}
