//! `aqyl demo`: the whole pipeline on a machine with nothing installed but Rust.
//!
//! An embedded rumqttd broker, the `aqyl-sim` city simulator publishing Aarhus-style traffic
//! for about 50 road segments with accelerated event time, the real service (same code as
//! `aqyl run`) writing line protocol under `./data/`, and a live summary on the terminal.
//! The simulator injects a few malformed and late readings, so the summary shows
//! dead-lettering at work.

use anyhow::Context;
use aqyl_core::config::{Config, Loaded};
use aqyl_core::ingest::descriptor::SensorType;
use aqyl_core::metrics::Snapshot;
use aqyl_core::windows::window::WindowSpec;
use aqyl_core::Reason;
use rumqttc::{AsyncClient, MqttOptions, QoS};
use std::io::{IsTerminal, Write};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use aqyl_sim::faults::{parse_fault_spec, FaultKind};
use aqyl_sim::publish::Pacer;
use aqyl_sim::scenario::FaultPlan;
use aqyl_sim::sensors::{CityConfig, SensorType as SimSensorType};
use aqyl_sim::simulation::{SimConfig, Simulation};

/// The shipped traffic descriptor, embedded so the demo runs from any directory.
pub const TRAFFIC_DESCRIPTOR: &str = include_str!("../../../config/sensors/traffic.toml");

/// Options of `aqyl demo`.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// Port of the embedded broker (falls back to a free port when taken).
    pub port: u16,
    /// Number of simulated road segments.
    pub sensors: usize,
    /// Simulated seconds per real second.
    pub speed: f64,
    /// Stop after this long (wall clock); `None` runs until Ctrl-C.
    pub duration: Option<Duration>,
    /// Where the line-protocol files go.
    pub data_dir: PathBuf,
    /// Timely workers.
    pub workers: usize,
    /// Random seed of the synthetic city.
    pub seed: u64,
}

/// Starts the embedded broker on `port` (or a free port if it is taken) and returns the port.
pub fn start_broker(port: u16) -> anyhow::Result<u16> {
    let port = match TcpListener::bind(("127.0.0.1", port)) {
        Ok(l) => l.local_addr()?.port(),
        Err(_) => {
            let l = TcpListener::bind(("127.0.0.1", 0))
                .context("cannot find a free port for the embedded broker")?;
            let free = l.local_addr()?.port();
            eprintln!("Port {port} is in use; the embedded broker listens on {free} instead.");
            free
        }
    };
    let listen: SocketAddr = ([127, 0, 0, 1], port).into();
    let connections = rumqttd::ConnectionSettings {
        connection_timeout_ms: 60_000,
        max_payload_size: 1024 * 1024,
        max_inflight_count: 1000,
        auth: None,
        external_auth: None,
        dynamic_filters: true,
    };
    let server = rumqttd::ServerSettings {
        name: "demo".into(),
        listen,
        tls: None,
        next_connection_delay_ms: 1,
        connections,
    };
    let config = rumqttd::Config {
        id: 0,
        router: rumqttd::RouterConfig {
            max_connections: 64,
            max_outgoing_packet_count: 1000,
            // rumqttd keeps messages in memory segments; small ones keep the demo lean.
            max_segment_size: 1024 * 1024,
            max_segment_count: 4,
            custom_segment: None,
            initialized_filters: None,
            shared_subscriptions_strategy: Default::default(),
        },
        v4: Some([("demo".to_string(), server)].into_iter().collect()),
        ..Default::default()
    };
    std::thread::Builder::new()
        .name("rumqttd".into())
        .spawn(move || {
            let mut broker = rumqttd::Broker::new(config);
            if let Err(e) = broker.start() {
                eprintln!("The embedded broker stopped: {e}");
            }
        })?;
    // Wait until it accepts connections.
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(listen).is_err() {
        if Instant::now() > deadline {
            anyhow::bail!("the embedded broker did not start listening on {listen}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(port)
}

/// The configuration the demo runs with.
pub fn demo_config(port: u16, data_dir: &Path, workers: usize) -> anyhow::Result<Loaded> {
    let text = format!(
        r#"
[mqtt]
url = "mqtt://127.0.0.1:{port}"
client_id = "aqyl-demo-{pid}"
clean_session = true
[pipeline]
workers = {workers}
allowed_lateness = "10m"
idle_timeout = "2s"
[influx]
enabled = false
flush_interval = "500ms"
[file]
enabled = true
dir = {dir:?}
[state]
# The demo's broker lives and dies with it: nothing to recover.
durable = false
[quality]
# The simulated city runs hundreds of times faster than the wall clock: its silences and
# ages are judged in event time.
clock = "event"
"#,
        pid = std::process::id(),
        dir = data_dir.display().to_string(),
    );
    let path = Path::new("<demo>");
    let config = Config::from_toml(path, &text).map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut traffic =
        SensorType::from_toml(Path::new("config/sensors/traffic.toml"), TRAFFIC_DESCRIPTOR)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
    // The Aarhus segment registry gives the simulated segments their areas (area roll-ups).
    let registry = aqyl_core::ingest::sensor_registry::SensorRegistry::parse(
        Path::new("config/sensors/registry/aarhus-traffic.csv"),
        include_str!("../../../config/sensors/registry/aarhus-traffic.csv"),
    )
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    traffic.registry = Some(std::sync::Arc::new(registry));
    // Readings come every 5 minutes, so the demo shows hourly statistics (twelve readings
    // each) instead of the shipped 5-minute ones, next to CityPulse's 4-hour SAX words.
    for w in &mut traffic.windows {
        if w.sax.is_none() {
            let fields = w.fields.take();
            *w = WindowSpec::tumbling(Duration::from_secs(3600));
            w.fields = fields;
        }
    }
    let sensor_types = vec![traffic];
    let rules = aqyl_core::rules::parse_rules(
        Path::new("config/rules/traffic.toml"),
        include_str!("../../../config/rules/traffic.toml"),
        &sensor_types,
    )
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(Loaded {
        config,
        sensor_types,
        path: path.into(),
        sensors_dir: "<embedded>".into(),
        rules,
        subscriptions: Vec::new(),
        corroborate: Vec::new(),
    })
}

/// The simulated city of the demo: `sensors` traffic segments in five areas from
/// 2014-08-01 (Copenhagen), for ten simulated years, with rare malformed and late readings, a
/// segment silent from 01:00 to 02:00 and one reading impossible values from 03:00 to 04:00.
pub fn demo_city(sensors: usize, seed: u64) -> anyhow::Result<Simulation> {
    let start =
        aqyl_sim::time::parse_time("2014-08-01T00:00:00").map_err(|e| anyhow::anyhow!("{e}"))?;
    let city = CityConfig {
        sensors,
        areas: 5,
        types: vec![SimSensorType::Traffic],
    };
    let layout = aqyl_sim::sensors::City::generate(&city, seed);
    let mut config = SimConfig::new(city, start, chrono::Duration::days(3650), seed);
    // Passing faults: a quality report shows each, no incident is opened.
    for spec in ["malformed=0.0005", "late=0.0005"] {
        config
            .rates
            .push(parse_fault_spec(spec).map_err(|e| anyhow::anyhow!("{e}"))?);
    }
    // Faults that last, so the demo shows quality incidents worth an operator's time: one
    // segment falls silent for an hour, another reads impossible values for an hour.
    let hour = |h: i64| start + chrono::Duration::hours(h);
    for (kind, index, from) in [(FaultKind::Dropout, 0, 1), (FaultKind::OutOfRange, 1, 3)] {
        let Some(sensor) = layout.sensors.get(index) else {
            continue;
        };
        config.faults.push(FaultPlan {
            kind,
            sensor_type: SimSensorType::Traffic,
            sensor: Some(sensor.id.clone()),
            area: None,
            start: hour(from),
            end: hour(from + 1),
            delay: chrono::Duration::zero(),
            skew: chrono::Duration::zero(),
            origin: "aqyl demo".into(),
        });
    }
    Simulation::new(config).map_err(|e| anyhow::anyhow!("{e}"))
}

/// Publishes the simulated city, paced at `speed`, until the task is aborted. `sim_time`
/// holds the event time of the latest reading (Unix ms), for the summary.
async fn publish_city(
    client: AsyncClient,
    opts: DemoOptions,
    sim_time: Arc<AtomicI64>,
) -> anyhow::Result<()> {
    let city = demo_city(opts.sensors, opts.seed)?;
    let start =
        aqyl_sim::time::parse_time("2014-08-01T00:00:00").map_err(|e| anyhow::anyhow!("{e}"))?;
    let pacer = Pacer::new(start, Some(opts.speed));
    for m in city {
        pacer.wait(m.due).await;
        sim_time.store(m.event_time.timestamp_millis(), Relaxed);
        client
            .publish(m.topic.clone(), QoS::AtLeastOnce, false, m.encode(None))
            .await?;
    }
    Ok(())
}

fn summary_line(elapsed: Duration, sim_ms: i64, s: &Snapshot, rate: f64, file: &Path) -> String {
    let sim = chrono::DateTime::from_timestamp_millis(sim_ms)
        .map(|t| {
            t.with_timezone(&chrono_tz::Europe::Copenhagen)
                .format("%Y-%m-%d %H:%M")
                .to_string()
        })
        .unwrap_or_default();
    format!(
        "[{:>4}s] city time {sim} | {} observations ({rate:.0}/s) | {} windows closed | late {} | rejected {} | {} incident messages, {} quality alerts | {} points -> {}",
        elapsed.as_secs(),
        s.observations,
        s.windows_closed,
        s.rejected(Reason::Late),
        s.rejected_total(),
        s.events_published,
        s.quality_incidents,
        s.file_points_written,
        file.display(),
    )
}

/// Runs the demo until Ctrl-C or `--duration`.
pub async fn run(opts: DemoOptions) -> anyhow::Result<()> {
    let port = start_broker(opts.port)?;
    let loaded = demo_config(port, &opts.data_dir, opts.workers)?;
    let file = opts.data_dir.join("aggregate.lp");
    eprintln!(
        "Aqyl demo: embedded MQTT broker on mqtt://127.0.0.1:{port}, {} simulated road segments at {}x speed, hourly statistics and 4-hour SAX words -> {}",
        opts.sensors,
        opts.speed,
        file.display()
    );
    eprintln!("Watch the raw stream with: mosquitto_sub -p {port} -t 'city/traffic/#' -v   (Ctrl-C stops the demo)");
    eprintln!("Incidents: mosquitto_sub -p {port} -t 'aqyl/events/#' -v; each segment's quality: -t 'aqyl/quality/#'");
    let service = crate::service::start(loaded, std::future::pending())?;

    let mut mqtt = MqttOptions::new(
        format!("aqyl-demo-publisher-{}", std::process::id()),
        "127.0.0.1",
        port,
    );
    mqtt.set_keep_alive(Duration::from_secs(30))
        .set_max_packet_size(1 << 20, 1 << 20);
    let (client, mut eventloop) = AsyncClient::new(mqtt, 1024);
    let sim_time = Arc::new(AtomicI64::new(0));
    let driver = tokio::spawn(async move {
        loop {
            if eventloop.poll().await.is_err() {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    });
    // Let the service subscribe before the city starts talking.
    let ready = Instant::now();
    while service.metrics.snapshot().received == 0 && ready.elapsed() < Duration::from_millis(500) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let publisher = tokio::spawn(publish_city(client.clone(), opts.clone(), sim_time.clone()));

    let tty = std::io::stderr().is_terminal();
    let start = Instant::now();
    let mut last = (Instant::now(), 0u64);
    let mut ticker = tokio::time::interval(Duration::from_secs(1));
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    loop {
        tokio::select! {
            _ = &mut ctrl_c => break,
            _ = ticker.tick() => {
                let s = service.metrics.snapshot();
                let rate = (s.observations - last.1) as f64 / last.0.elapsed().as_secs_f64().max(1e-3);
                last = (Instant::now(), s.observations);
                let line = summary_line(start.elapsed(), sim_time.load(Relaxed), &s, rate, &file);
                if tty {
                    eprint!("\r\x1b[2K{line}");
                    let _ = std::io::stderr().flush();
                } else if start.elapsed().as_secs() % 5 == 0 {
                    eprintln!("{line}");
                }
                if opts.duration.is_some_and(|d| start.elapsed() >= d) {
                    break;
                }
            }
        }
    }
    if tty {
        eprintln!();
    }
    publisher.abort();
    eprintln!(
        "Stopping: closing open windows and flushing {} ...",
        file.display()
    );
    let metrics = service.metrics.clone();
    service.stop().await?;
    driver.abort();
    let s = metrics.snapshot();
    eprintln!(
        "{}",
        summary_line(
            start.elapsed(),
            sim_time.load(Relaxed),
            &s,
            s.observations as f64 / start.elapsed().as_secs_f64(),
            &file
        )
    );
    eprintln!(
        "Done. {} points (aggregates, events, quality) in {} (line protocol, ms precision). Dead letters went to aqyl/deadletter/traffic.",
        s.file_points_written,
        file.display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn demo_city_publishes_traffic_the_descriptor_decodes() {
        let loaded = demo_config(1883, Path::new("data"), 2).unwrap();
        let registry = aqyl_core::ingest::decode::Registry::new(loaded.sensor_types);
        let messages: Vec<_> = demo_city(50, 42).unwrap().take(5000).collect();
        let decoded = messages
            .iter()
            .filter(|m| {
                let raw = aqyl_core::RawMessage {
                    topic: m.topic.clone(),
                    payload: m.encode(None),
                    received_at: 0,
                };
                registry.decode(&raw, 65536).is_ok()
            })
            .count();
        // All but the rare injected malformed payloads decode.
        assert!(
            (4990..=5000).contains(&decoded),
            "{decoded} of 5000 decoded"
        );
        assert!(messages
            .iter()
            .all(|m| m.topic.starts_with("city/traffic/")));
    }

    #[test]
    fn the_demo_city_has_two_faults_that_last_an_hour() {
        let loaded = demo_config(1883, Path::new("data"), 2).unwrap();
        let registry = aqyl_core::ingest::decode::Registry::new(loaded.sensor_types.clone());
        let traffic = &loaded.sensor_types[0];
        let mut city = demo_city(50, 42).unwrap();
        let start = city.config().start;
        let in_hour = |m: &aqyl_sim::simulation::Message, h: i64| {
            let t = m.event_time - start;
            t >= chrono::Duration::hours(h) && t < chrono::Duration::hours(h + 1)
        };
        let messages: Vec<_> = city.by_ref().take(50 * 12 * 5).collect();
        let silent = messages.iter().filter(|m| m.sensor == 0 && in_hour(m, 1));
        assert_eq!(silent.count(), 0, "segment 0 is silent from 01:00 to 02:00");
        let wrong: Vec<usize> = messages
            .iter()
            .filter(|m| m.sensor == 1 && in_hour(m, 3))
            .map(|m| {
                let raw = aqyl_core::RawMessage {
                    topic: m.topic.clone(),
                    payload: m.encode(None),
                    received_at: 0,
                };
                let obs = registry.decode(&raw, 65536).unwrap();
                traffic.out_of_range_count(&obs[0].fields)
            })
            .collect();
        assert_eq!(wrong.len(), 12, "segment 1 keeps reporting");
        assert!(
            wrong.iter().all(|n| *n > 0),
            "every reading out of range: {wrong:?}"
        );
    }

    #[test]
    fn demo_configuration_is_valid() {
        let loaded = demo_config(1883, Path::new("data"), 2).unwrap();
        assert!(loaded.config.file.enabled);
        let labels: Vec<&str> = loaded.sensor_types[0]
            .windows
            .iter()
            .map(|w| &**w.label())
            .collect();
        assert_eq!(labels, ["1h", "4h"]);
        assert_eq!(&*loaded.sensor_types[0].name, "traffic");
    }
}
