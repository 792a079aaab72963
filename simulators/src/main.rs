//! `aqyl-sim`: the command line. Parses flags, wires the library's cores to MQTT and files,
//! and prints summaries; everything else lives in the library.

use std::collections::BTreeMap;
use std::io::{BufWriter, IsTerminal, Write};
use std::path::PathBuf;
use std::time::Duration as StdDuration;

use anyhow::{bail, Context, Result};
use aqyl_sim::faults::parse_fault_spec;
use aqyl_sim::mqtt::{self, Broker, Connection, Secret};
use aqyl_sim::publish::{Pacer, Pool};
use aqyl_sim::replay::{discover, Replay, ReplayOptions};
use aqyl_sim::scenario::Scenario;
use aqyl_sim::sensors::{parse_types, CityConfig, SensorType};
use aqyl_sim::simulation::{Message, SimConfig, Simulation};
use aqyl_sim::truth::TruthRecord;
use aqyl_sim::{load, score, time};
use clap::{Args, Parser, Subcommand};

/// City sensor simulator for Aqyl: realistic streams, faults, scripted incidents with ground
/// truth, replay of the CityPulse Aarhus data, load tests and detection scoring.
#[derive(Debug, Parser)]
#[command(name = "aqyl-sim", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Simulate a city and publish its sensor streams.
    Run(RunArgs),
    /// Replay CityPulse CSV files as MQTT messages.
    Replay(ReplayArgs),
    /// Measure broker (and Aqyl) throughput, loss and latency.
    Load(LoadArgs),
    /// Score Aqyl's incident events against a ground-truth file.
    Score(ScoreArgs),
    /// Print the simulated city's sensors (id, type, area, position) as JSON lines.
    Layout(LayoutArgs),
}

#[derive(Debug, Args)]
struct BrokerArgs {
    /// MQTT broker URL: mqtt://host:port, or mqtts://host:port for TLS.
    #[arg(long, env = "AQYL_MQTT_URL", default_value = "mqtt://127.0.0.1:1883")]
    url: String,
    /// MQTT user name.
    #[arg(long, env = "AQYL_MQTT_USERNAME")]
    username: Option<String>,
    /// MQTT password (visible to other users in the process list: prefer --password-file or
    /// the environment).
    #[arg(long, env = "AQYL_MQTT_PASSWORD", hide_env_values = true)]
    password: Option<String>,
    /// File holding the MQTT password (a trailing line ending is not part of it).
    #[arg(
        long,
        env = "AQYL_MQTT_PASSWORD_FILE",
        value_name = "FILE",
        conflicts_with = "password"
    )]
    password_file: Option<PathBuf>,
    /// PEM file of the CA certificate(s) to trust for mqtts:// instead of the system's.
    #[arg(long, env = "AQYL_MQTT_CA_FILE", value_name = "FILE")]
    ca_file: Option<PathBuf>,
    /// PEM file of the client certificate, for brokers that require one (mutual TLS).
    #[arg(long, env = "AQYL_MQTT_CLIENT_CERT", value_name = "FILE")]
    client_cert: Option<PathBuf>,
    /// PEM file of the client certificate's private key.
    #[arg(long, env = "AQYL_MQTT_CLIENT_KEY", value_name = "FILE")]
    client_key: Option<PathBuf>,
}

impl BrokerArgs {
    fn broker(&self) -> Result<Broker> {
        let file = |flag: &str, p: &Option<PathBuf>| {
            p.as_ref()
                .map(|p| aqyl_core::config::FileSetting::given(flag, p))
        };
        let password = match (&self.password, file("--password-file", &self.password_file)) {
            (Some(p), _) => Some(Secret::new(p.clone())),
            (None, Some(f)) => Some(
                aqyl_core::config::read_secret(&f)
                    .map_err(|e| anyhow::anyhow!("{}: {e}", f.describe()))?,
            ),
            (None, None) => None,
        };
        let tls = mqtt::TlsFiles {
            ca_file: file("--ca-file", &self.ca_file),
            client_cert: file("--client-cert", &self.client_cert),
            client_key: file("--client-key", &self.client_key),
        };
        Ok(Broker::with_tls(
            &self.url,
            self.username.clone(),
            password,
            tls,
        )?)
    }
}

#[derive(Debug, Args)]
struct CityArgs {
    /// Sensors per type [default: 10, or the scenario's].
    #[arg(long)]
    sensors: Option<usize>,
    /// Number of areas, named area-1 .. area-N [default: 5].
    #[arg(long)]
    areas: Option<usize>,
    /// Sensor types, comma-separated [default: traffic,parking,pollution,weather,noise].
    #[arg(long)]
    types: Option<String>,
    /// Simulated start, Europe/Copenhagen local time or RFC 3339 [default: 2014-08-01T00:00:00].
    #[arg(long)]
    start: Option<String>,
    /// Simulated duration [default: 1d].
    #[arg(long)]
    duration: Option<String>,
    /// Random seed: the same seed gives the same messages and truth [default: 1].
    #[arg(long)]
    seed: Option<u64>,
    /// Scenario file (TOML): city settings, incidents, scheduled faults and fault rates.
    #[arg(long)]
    scenario: Option<PathBuf>,
    /// Random fault, KIND=RATE[:DURATION] (e.g. stuck=0.01:30m); repeatable. Kinds: dropout,
    /// stuck, spike, out_of_range, missing_field, malformed, duplicate, late, out_of_order,
    /// clock_skew.
    #[arg(long = "fault", value_name = "SPEC")]
    faults: Vec<String>,
}

impl CityArgs {
    fn config(&self) -> Result<SimConfig> {
        let scenario = match &self.scenario {
            Some(p) => Scenario::load(p)?,
            None => Scenario::default(),
        };
        let c = &scenario.city;
        let types = match (&self.types, &c.types) {
            (Some(t), _) => parse_types(t)?,
            (None, Some(list)) => parse_types(&list.join(","))?,
            (None, None) => SensorType::ALL.to_vec(),
        };
        let city = CityConfig {
            sensors: self.sensors.or(c.sensors).unwrap_or(10),
            areas: self.areas.or(c.areas).unwrap_or(5),
            types,
        };
        let start = time::parse_time(
            self.start
                .as_deref()
                .or(c.start.as_deref())
                .unwrap_or("2014-08-01T00:00:00"),
        )?;
        let duration = time::parse_duration(
            self.duration
                .as_deref()
                .or(c.duration.as_deref())
                .unwrap_or("1d"),
        )?;
        let seed = self.seed.or(c.seed).unwrap_or(1);
        let mut config = SimConfig::new(city, start, duration, seed).with_scenario(&scenario);
        for spec in &self.faults {
            config.rates.push(parse_fault_spec(spec)?);
        }
        Ok(config)
    }
}

#[derive(Debug, Args)]
struct OutputArgs {
    /// QoS for publishing (0 or 1).
    #[arg(long, default_value_t = 1)]
    qos: u8,
    /// Publisher connections (each sensor always uses the same one).
    #[arg(long, default_value_t = 1)]
    connections: usize,
    /// Add "seq" (per sensor, from 0) and "sent_at" (Unix ms) to every message.
    #[arg(long)]
    trace: bool,
    /// Print "topic payload" lines on stdout instead of publishing (no broker needed).
    #[arg(long)]
    print: bool,
}

#[derive(Debug, Args)]
struct RunArgs {
    #[command(flatten)]
    broker: BrokerArgs,
    #[command(flatten)]
    city: CityArgs,
    #[command(flatten)]
    output: OutputArgs,
    /// Simulated seconds per real second (1440: a day per minute; 1: real time).
    #[arg(long, default_value_t = 1440.0)]
    speed: f64,
    /// Publish as fast as possible, ignoring --speed.
    #[arg(long)]
    max: bool,
    /// Write the ground truth (incidents and fault episodes) here as JSON lines.
    #[arg(long)]
    truth: Option<PathBuf>,
}

#[derive(Debug, Args)]
struct ReplayArgs {
    #[command(flatten)]
    broker: BrokerArgs,
    #[command(flatten)]
    output: OutputArgs,
    /// Directory holding traffic/, parking/, pollution/ and weather/ CityPulse CSV folders.
    #[arg(long)]
    data: PathBuf,
    /// Types to replay, comma-separated.
    #[arg(long, default_value = "traffic")]
    types: String,
    /// Simulated seconds per real second.
    #[arg(long, default_value_t = 60.0)]
    speed: f64,
    /// Replay as fast as possible, ignoring --speed.
    #[arg(long)]
    max: bool,
    /// Rows per file at most.
    #[arg(long)]
    limit: Option<usize>,
    /// Drop rows whose timestamp repeats or goes backwards within a file.
    #[arg(long)]
    dedup: bool,
}

#[derive(Debug, Args)]
struct LoadArgs {
    #[command(flatten)]
    broker: BrokerArgs,
    /// Target rate in messages per second over all connections.
    #[arg(long, conflicts_with = "max")]
    rate: Option<f64>,
    /// Publish flat out.
    #[arg(long)]
    max: bool,
    /// Publisher connections.
    #[arg(long, default_value_t = 1)]
    connections: usize,
    /// QoS (0 or 1).
    #[arg(long, default_value_t = 0)]
    qos: u8,
    /// Stop after this many messages [default: 100000 unless --duration].
    #[arg(long)]
    count: Option<u64>,
    /// Stop after this long (wall clock), e.g. 30s.
    #[arg(long)]
    duration: Option<String>,
    /// Simulated road segments.
    #[arg(long, default_value_t = 100)]
    sensors: usize,
    /// Also count messages on these filters (e.g. 'aqyl/#'); repeatable.
    #[arg(long)]
    watch: Vec<String>,
    /// How long to wait for stragglers after the last publish.
    #[arg(long, default_value = "3s")]
    drain: String,
    /// Seed for the payload values.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Print the summary as JSON on stdout.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
struct ScoreArgs {
    /// Ground-truth file written by `aqyl-sim run --truth`.
    #[arg(long)]
    truth: PathBuf,
    /// Recorded event messages, one per line (bare JSON, {"topic","payload"} or `mosquitto_sub -v` lines).
    #[arg(long, conflicts_with = "duration")]
    events: Option<PathBuf>,
    #[command(flatten)]
    broker: BrokerArgs,
    /// Listen live on aqyl/events/# for this long (wall clock) instead of reading --events.
    #[arg(long)]
    duration: Option<String>,
    /// Topic filter for live listening.
    #[arg(long, default_value = "aqyl/events/#")]
    topic: String,
    /// Save the live events here as JSON lines for later scoring.
    #[arg(long)]
    save: Option<PathBuf>,
    /// How far outside an incident's interval an event may start and still match.
    #[arg(long, default_value = "10m")]
    tolerance: String,
    /// Rename an event type to a truth type, EVENT=TRUTH (e.g. garage_full=parking_full); repeatable.
    #[arg(long, value_name = "EVENT=TRUTH")]
    alias: Vec<String>,
    /// Also score these incident types when the truth has none (their events become false alarms).
    #[arg(long)]
    types: Option<String>,
    /// Print the report as JSON on stdout.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
struct LayoutArgs {
    #[command(flatten)]
    city: CityArgs,
}

fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("AQYL_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    rt.block_on(async {
        match cli.command {
            Command::Run(a) => run(a).await,
            Command::Replay(a) => replay(a).await,
            Command::Load(a) => load_test(a).await,
            Command::Score(a) => score_events(a).await,
            Command::Layout(a) => layout(a),
        }
    })
}

/// Where messages go: a broker, or stdout.
enum Sink {
    Mqtt(Pool),
    Print(BufWriter<std::io::Stdout>),
}

impl Sink {
    async fn open(broker: &BrokerArgs, out: &OutputArgs) -> Result<Sink> {
        if out.print {
            return Ok(Sink::Print(BufWriter::new(std::io::stdout())));
        }
        let broker = broker.broker()?;
        Ok(Sink::Mqtt(
            Pool::connect(&broker, out.connections, mqtt::qos(out.qos)?, out.trace).await?,
        ))
    }

    async fn send(&mut self, m: &Message, trace: bool) -> Result<()> {
        match self {
            Sink::Mqtt(pool) => Ok(pool.send(m).await?),
            Sink::Print(w) => {
                let body = m.encode(trace.then(aqyl_sim::publish::now_ms));
                write!(w, "{} ", m.topic)?;
                w.write_all(&body)?;
                writeln!(w)?;
                Ok(())
            }
        }
    }

    async fn close(self) -> Result<()> {
        match self {
            Sink::Mqtt(pool) => {
                let unacked = pool.close(StdDuration::from_secs(30)).await;
                if unacked > 0 {
                    bail!("{unacked} QoS 1 messages were not acknowledged by the broker");
                }
                Ok(())
            }
            Sink::Print(mut w) => Ok(w.flush()?),
        }
    }
}

fn write_truth(
    w: &mut Option<BufWriter<std::fs::File>>,
    records: Vec<TruthRecord>,
    faults: &mut BTreeMap<String, u64>,
) -> Result<()> {
    for r in records {
        if let TruthRecord::Fault(f) = &r {
            *faults.entry(f.kind.clone()).or_default() += 1;
        }
        if let Some(w) = w.as_mut() {
            writeln!(w, "{}", r.to_line())?;
        }
    }
    Ok(())
}

async fn run(a: RunArgs) -> Result<()> {
    let config = a.city.config()?;
    let mut sim = Simulation::new(config.clone())?;
    let mut truth = match &a.truth {
        Some(p) => Some(BufWriter::new(
            std::fs::File::create(p).with_context(|| format!("cannot create {}", p.display()))?,
        )),
        None => None,
    };
    let mut sink = Sink::open(&a.broker, &a.output).await?;
    let speed = (!a.max).then_some(a.speed);
    tracing::info!(
        sensors = sim.city().sensors.len(),
        areas = sim.city().areas.len(),
        start = %time::rfc3339(config.start),
        end = %time::rfc3339(config.end()),
        seed = config.seed,
        speed = ?speed,
        "Simulation started."
    );
    let pacer = Pacer::new(config.start, speed);
    let mut counts: BTreeMap<&'static str, u64> = BTreeMap::new();
    let mut faults = BTreeMap::new();
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    let mut interrupted = false;
    while let Some(m) = sim.next() {
        tokio::select! {
            _ = pacer.wait(m.due) => {}
            _ = &mut ctrl_c => { interrupted = true; break; }
        }
        sink.send(&m, a.output.trace).await?;
        *counts.entry(m.sensor_type.as_str()).or_default() += 1;
        write_truth(&mut truth, sim.take_truth(), &mut faults)?;
    }
    write_truth(&mut truth, sim.take_truth(), &mut faults)?;
    if let Some(mut w) = truth {
        w.flush()?;
    }
    sink.close().await?;
    let total: u64 = counts.values().sum();
    tracing::info!(messages = total, per_type = ?counts, fault_episodes = ?faults, interrupted, "Simulation finished.");
    Ok(())
}

async fn replay(a: ReplayArgs) -> Result<()> {
    let types = parse_types(&a.types)?;
    let files = discover(&a.data, &types)?;
    let mut replay = Replay::open(
        files,
        ReplayOptions {
            limit: a.limit,
            dedup: a.dedup,
        },
    )?;
    tracing::info!(files = replay.streams(), dir = %a.data.display(), "Replay started.");
    let mut sink = Sink::open(&a.broker, &a.output).await?;
    let speed = (!a.max).then_some(a.speed);
    let mut pacer = None;
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    for m in replay.by_ref() {
        let m = m?;
        let p = *pacer.get_or_insert_with(|| Pacer::new(m.due, speed));
        tokio::select! {
            _ = p.wait(m.due) => {}
            _ = &mut ctrl_c => break,
        }
        sink.send(&m, a.output.trace).await?;
    }
    sink.close().await?;
    let c = replay.counters();
    tracing::info!(
        rows = c.rows,
        out_of_order = c.out_of_order,
        dropped = c.dropped,
        bad_time = c.bad_time,
        bad_rows = c.bad_rows,
        "Replay finished."
    );
    Ok(())
}

async fn load_test(a: LoadArgs) -> Result<()> {
    let duration = a
        .duration
        .as_deref()
        .map(humantime::parse_duration)
        .transpose()
        .context("--duration")?;
    let count = match (a.count, duration) {
        (None, None) => Some(100_000),
        (c, _) => c,
    };
    if !a.max && a.rate.is_none() {
        bail!("give a target rate (--rate 50000) or --max");
    }
    let cfg = load::LoadConfig {
        broker: a.broker.broker()?,
        connections: a.connections,
        qos: mqtt::qos(a.qos)?,
        rate: a.rate,
        count,
        duration,
        sensors: a.sensors,
        watch: a.watch,
        drain: humantime::parse_duration(&a.drain).context("--drain")?,
        seed: a.seed,
        progress: true,
    };
    let summary = load::run(cfg).await?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else {
        print!("{}", summary.table());
    }
    Ok(())
}

async fn score_events(a: ScoreArgs) -> Result<()> {
    let truth = aqyl_sim::truth::read_file(&a.truth)?;
    let tolerance = time::parse_duration(&a.tolerance)?;
    let mut aliases = BTreeMap::new();
    for s in &a.alias {
        let (e, t) = s
            .split_once('=')
            .with_context(|| format!("--alias {s:?}: expected EVENT=TRUTH"))?;
        aliases.insert(e.trim().to_owned(), t.trim().to_owned());
    }
    let events = match (&a.events, &a.duration) {
        (Some(path), _) => score::read_events(path)?,
        (None, Some(d)) => listen(&a, humantime::parse_duration(d).context("--duration")?).await?,
        (None, None) => bail!(
            "give --events FILE or --duration D to listen live on {}",
            a.topic
        ),
    };
    let (detections, skipped) = score::detections(&events, &aliases);
    let types: Vec<String> = a
        .types
        .as_deref()
        .map(|t| t.split(',').map(|s| s.trim().to_owned()).collect())
        .unwrap_or_default();
    let mut report = score::score(&truth, &detections, tolerance, &types);
    report.skipped_messages = skipped;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.table());
    }
    Ok(())
}

async fn listen(a: &ScoreArgs, duration: StdDuration) -> Result<Vec<serde_json::Value>> {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let broker = a.broker.broker()?;
    let sub = Connection::subscriber(
        &broker,
        &mqtt::client_id("score", 0),
        rumqttc::QoS::AtLeastOnce,
        std::slice::from_ref(&a.topic),
        move |p| {
            let _ = tx.send((p.topic, p.payload));
        },
    )
    .await?;
    tracing::info!(topic = %a.topic, seconds = duration.as_secs(), "Listening for events.");
    tokio::time::sleep(duration).await;
    sub.close(StdDuration::from_secs(1)).await;
    let mut save = match &a.save {
        Some(p) => Some(BufWriter::new(
            std::fs::File::create(p).with_context(|| format!("cannot create {}", p.display()))?,
        )),
        None => None,
    };
    let mut out = Vec::new();
    while let Ok((topic, payload)) = rx.try_recv() {
        let Ok(v) = serde_json::from_slice::<serde_json::Value>(&payload) else {
            continue;
        };
        if let Some(w) = save.as_mut() {
            writeln!(w, "{}", serde_json::json!({"topic": topic, "payload": v}))?;
        }
        out.push(v);
    }
    if let Some(mut w) = save {
        w.flush()?;
    }
    Ok(out)
}

fn layout(a: LayoutArgs) -> Result<()> {
    let config = a.city.config()?;
    let sim = Simulation::new(config)?;
    let mut out = BufWriter::new(std::io::stdout());
    for s in &sim.city().sensors {
        let line = serde_json::json!({
            "sensor_id": s.id, "sensor_type": s.kind.as_str(), "area": s.area,
            "latitude": s.lat, "longitude": s.lon, "topic": s.topic(),
        });
        writeln!(out, "{line}")?;
    }
    out.flush()?;
    Ok(())
}
