//! The `aqyl` command line.

use anyhow::Context;
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

/// mimalloc instead of the system allocator: it gives freed memory back to the operating
/// system (after 200,000 sensors' state was released, glibc's kept 3.9 GiB resident,
/// mimalloc 1.8 GiB; see README "Limits").
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Aqyl: smart-city sensor streams in, windowed aggregates out.
///
/// Subscribes to city sensor topics over MQTT, decodes each payload with a sensor type
/// descriptor, computes event-time window statistics in a timely dataflow and writes them to
/// InfluxDB v2 (or line-protocol files). Rejected input goes to aqyl/deadletter/<type>.
#[derive(Parser)]
#[command(
    name = "aqyl",
    version,
    propagate_version = true,
    after_help = "Start with `aqyl demo`: it needs nothing installed.\nEnvironment: AQYL_MQTT_URL, AQYL_MQTT_USERNAME, AQYL_MQTT_PASSWORD, AQYL_MQTT_PASSWORD_FILE,\nAQYL_MQTT_CA_FILE, AQYL_MQTT_CLIENT_CERT, AQYL_MQTT_CLIENT_KEY, AQYL_INFLUX_URL, AQYL_INFLUX_ORG,\nAQYL_INFLUX_BUCKET, AQYL_INFLUX_TOKEN, AQYL_INFLUX_CA_FILE, AQYL_HTTP_ADDR, AQYL_HTTP_TOKEN,\nAQYL_HTTP_TOKEN_FILE, AQYL_STATE_DIR override the config file; AQYL_LOG sets the log filter."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the service: MQTT in, windows, InfluxDB out. Stops cleanly on Ctrl-C or SIGTERM.
    Run {
        /// Configuration file; sensor descriptors are read from its `sensors_dir`.
        #[arg(long, short, default_value = "config/aqyl.toml")]
        config: PathBuf,
    },
    /// Zero-install demo: embedded broker, synthetic traffic of ~50 road segments, files under ./data/.
    Demo {
        /// Port of the embedded MQTT broker (a free one is used if it is taken).
        #[arg(long, default_value_t = 1883)]
        port: u16,
        /// Number of simulated road segments.
        #[arg(long, default_value_t = 50)]
        sensors: usize,
        /// Simulated seconds per real second (600: a city day in 2.4 minutes).
        #[arg(long, default_value_t = 600.0)]
        speed: f64,
        /// Stop after this long, e.g. 30s or 2m (default: until Ctrl-C).
        #[arg(long, value_parser = parse_duration)]
        duration: Option<Duration>,
        /// Directory for the line-protocol output.
        #[arg(long, default_value = "data")]
        data_dir: PathBuf,
        /// Timely worker threads.
        #[arg(long, default_value_t = 2)]
        workers: usize,
        /// Seed of the synthetic city.
        #[arg(long, default_value_t = 42)]
        seed: u64,
    },
    /// Work with sensor types: `aqyl sensors test <type> <payload-file>`.
    Sensors {
        #[command(subcommand)]
        command: SensorsCommand,
    },
    /// Follow incidents: `aqyl events tail [--type congestion]`.
    Events {
        #[command(subcommand)]
        command: EventsCommand,
    },
    /// Show every sensor's latest quality report, worst first: `aqyl quality [--below 0.6]`.
    Quality {
        /// Only sensors scoring below this.
        #[arg(long)]
        below: Option<f64>,
        /// Print the raw JSON reports, one per line.
        #[arg(long)]
        json: bool,
        /// Configuration file (for the broker, its TLS and credentials, and the topic prefix; the AQYL_MQTT_* variables win).
        #[arg(long, short, default_value = "config/aqyl.toml")]
        config: PathBuf,
    },
    /// Replay recorded rows (CSV, JSON lines, SenML) through the same dataflow, in event time.
    #[command(
        long_about = "Replay recorded rows through the same dataflow as `aqyl run` (windows, SAX, areas, rules,\nquality), in event time: files instead of MQTT, no wall clock. Files are merged by event time;\nat the end of input every window closes. Bad rows are dead-lettered with their reason and\ncounted, never fatal; an unreadable file or a bad configuration stops with an error.\n\nEach row is decoded by the sensor type's descriptor. Its sensor is the descriptor's\nsensor_id_field (a JSON Pointer into the row, e.g. \"/REPORT_ID\") or, without it, the\n{sensor_id} in the file name by its replay_files pattern (e.g.\n\"AarhusTrafficData{sensor_id}.csv\").\n\nFormats, by extension: .csv (a header line; each row becomes a JSON object of strings keyed by\ncolumn), .jsonl/.ndjson/.json (one JSON object per line), and for SenML types .json/.senml/.jsonl\n(one pack per line, or the whole file one pack).",
        after_help = "Examples:\n  # Two months of Aarhus traffic, line protocol and dead letters into ./out\n  aqyl replay --type traffic --out out data/traffic/\n\n  # A JSON-lines dump, summary as JSON for a script\n  aqyl replay --type parking --out out --json parking.jsonl | jq .dead_letters_by_reason\n\n  # Into the configured InfluxDB (backfill), four workers\n  aqyl replay --config config/aqyl.toml --type traffic --workers 4 data/traffic/\n\nWith --out DIR: DIR/aggregate.lp (aggregates, events and quality, ms timestamps; load it with\n`influx write --precision ms --file DIR/aggregate.lp`) and DIR/deadletter.jsonl, both replaced.\nWithout --out: the configured sinks, as `aqyl run` writes them.\nRecords older than pipeline.allowed_lateness behind their worker's newest are late (dead-lettered);\nraise it in the config when the files jump back in time."
    )]
    Replay {
        /// Configuration file (windows, rules, quality, sinks; sensor descriptors from its sensors_dir).
        #[arg(long, short, default_value = "config/aqyl.toml")]
        config: PathBuf,
        /// Sensor type of the rows (a descriptor's name); needed when there are several.
        #[arg(long = "type", value_name = "NAME")]
        sensor_type: Option<String>,
        /// Write line protocol and deadletter.jsonl into DIR instead of the configured sinks.
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
        /// Timely worker threads (default: pipeline.workers of the config).
        #[arg(long, value_name = "N")]
        workers: Option<usize>,
        /// Print the summary as one JSON object on stdout.
        #[arg(long)]
        json: bool,
        /// Files and directories (read recursively, in sorted order).
        #[arg(required = true, value_name = "PATH")]
        paths: Vec<PathBuf>,
    },
    /// Validate the configuration and every sensor descriptor; prints file:line errors.
    Check {
        /// Configuration file.
        #[arg(long, short, default_value = "config/aqyl.toml")]
        config: PathBuf,
    },
}

#[derive(Subcommand)]
enum EventsCommand {
    /// Print incidents (start, end) live, one line each, until Ctrl-C.
    Tail {
        /// Only this event type (e.g. congestion).
        #[arg(long = "type")]
        event_type: Option<String>,
        /// Print the raw JSON payloads.
        #[arg(long)]
        json: bool,
        /// Configuration file (for the broker, its TLS and credentials, and the topic prefix; the AQYL_MQTT_* variables win).
        #[arg(long, short, default_value = "config/aqyl.toml")]
        config: PathBuf,
    },
}

#[derive(Subcommand)]
enum SensorsCommand {
    /// Decode one payload with a sensor type and show the observation, or exactly why it is rejected.
    Test {
        /// Sensor type name (a descriptor's `name`).
        sensor_type: String,
        /// File holding one payload, as a sensor would publish it.
        payload_file: PathBuf,
        /// Topic it arrives on (default: the type's pattern with sensor id `test-sensor`).
        #[arg(long)]
        topic: Option<String>,
        /// Configuration file.
        #[arg(long, short, default_value = "config/aqyl.toml")]
        config: PathBuf,
    },
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    aqyl_core::duration::parse(s)
}

fn init_tracing(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("AQYL_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

/// Completes on Ctrl-C or SIGTERM. The SIGTERM handler is installed when this is called, not
/// when the future is first polled (after start-up: restoring the checkpoint, replaying the
/// log): a SIGTERM while the service starts must stop it cleanly, not kill it.
fn shutdown_signal() -> impl std::future::Future<Output = ()> + Send + 'static {
    #[cfg(unix)]
    let term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate());
    async move {
        #[cfg(unix)]
        {
            let Ok(mut term) = term else {
                return std::future::pending().await;
            };
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        #[cfg(not(unix))]
        let _ = tokio::signal::ctrl_c().await;
        after_signal();
    }
}

/// What happens once the service was asked to stop.
fn after_signal() {
    // A second Ctrl-C while draining (e.g. a sink that stays down) exits at once.
    tokio::spawn(async {
        let _ = tokio::signal::ctrl_c().await;
        eprintln!("Second interrupt: exiting without finishing the drain.");
        std::process::exit(130);
    });
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Check { config } => {
            let (report, ok) = aqyl::check::check(&config);
            if ok {
                print!("{report}");
                ExitCode::SUCCESS
            } else {
                eprint!("{report}");
                ExitCode::FAILURE
            }
        }
        Command::Sensors {
            command:
                SensorsCommand::Test {
                    sensor_type,
                    payload_file,
                    topic,
                    config,
                },
        } => {
            let (report, ok) =
                aqyl::check::sensors_test(&config, &sensor_type, &payload_file, topic.as_deref());
            print!("{report}");
            if ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Command::Events {
            command:
                EventsCommand::Tail {
                    event_type,
                    json,
                    config,
                },
        } => {
            let result = tokio_main(async move {
                let (cfg, broker) = client_config(&config)?;
                aqyl::tail::run(
                    &broker,
                    &cfg.outputs.topic_prefix,
                    event_type.as_deref(),
                    json,
                )
                .await
            });
            report(result)
        }
        Command::Quality {
            below,
            json,
            config,
        } => {
            let result = tokio_main(async move {
                let (cfg, broker) = client_config(&config)?;
                aqyl::quality_view::show(&broker, &cfg.outputs.topic_prefix, below, json).await
            });
            report(result)
        }
        Command::Replay {
            config,
            sensor_type,
            out,
            workers,
            json,
            paths,
        } => {
            init_tracing("warn");
            let opts = aqyl::replay::Options {
                config,
                sensor_type,
                out,
                workers,
                paths,
                progress: std::io::IsTerminal::is_terminal(&std::io::stderr()),
            };
            report(aqyl::replay::run(&opts).map(|summary| {
                if json {
                    println!("{}", summary.to_json());
                } else {
                    print!("{}", summary.to_text());
                }
            }))
        }
        Command::Run { config } => {
            init_tracing("info");
            let result = tokio_main(async move {
                let loaded =
                    aqyl_core::config::load(&config, |k| std::env::var(k).ok()).map_err(|e| {
                        anyhow::anyhow!(
                            "{e}\nFix the configuration (aqyl check --config {}) and start again.",
                            config.display()
                        )
                    })?;
                let service = aqyl::service::start(loaded, shutdown_signal())?;
                service.wait().await
            });
            report(result)
        }
        Command::Demo {
            port,
            sensors,
            speed,
            duration,
            data_dir,
            workers,
            seed,
        } => {
            init_tracing("warn,rumqttd=off,aqyl=info");
            let opts = aqyl::demo::DemoOptions {
                port,
                sensors: sensors.max(1),
                speed,
                duration,
                data_dir,
                workers: workers.max(1),
                seed,
            };
            report(tokio_main(aqyl::demo::run(opts)))
        }
    }
}

fn tokio_main<F: std::future::Future<Output = anyhow::Result<()>>>(f: F) -> anyhow::Result<()> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?
        .block_on(f)
}

fn report(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The settings a client command needs (the broker with its TLS and credentials, the topic
/// prefix): the file if it exists, else the defaults, with the `AQYL_*` overrides applied.
fn client_config(
    path: &std::path::Path,
) -> anyhow::Result<(aqyl_core::config::Config, aqyl_connect::Connector)> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let mut cfg =
        aqyl_core::config::Config::from_toml(path, &text).map_err(|e| anyhow::anyhow!("{e}"))?;
    cfg.apply_env(|k| std::env::var(k).ok())
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    let broker = aqyl::connections::broker(&cfg, path).map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok((cfg, broker))
}
