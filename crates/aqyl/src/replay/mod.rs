//! `aqyl replay`: the dataflow of `aqyl run` over files instead of MQTT.
//!
//! The pipeline is the one `aqyl run` builds from the configuration (windows, SAX, areas,
//! rules, quality), run in event time only: no wall-clock idle advance, the quality clock in
//! event time. The files are shared out among the timely workers, and each worker reads its
//! own: rows one at a time ([`rows`]), merged across its files by event time and decoded
//! ([`merge`]) between steps of the dataflow, while the outputs are drained concurrently (a
//! full output channel makes the workers wait): memory does not grow with the input. At the
//! end of input the input closes and every open window is emitted. [`report`] prints
//! progress and the summary.

pub mod files;
pub mod merge;
pub mod report;
pub mod rows;

use anyhow::Context;
use aqyl_core::config::Loaded;
use aqyl_core::ingest::decode::Registry;
use aqyl_core::ingest::descriptor::{PayloadFormat, SensorType};
use aqyl_core::metrics::{Metrics, Output as Delivered};
use aqyl_core::{DeadLetter, Reason};
use aqyl_dataflow::{Outputs, PipelineSpec};
use aqyl_sink::{file::FileSink, Sinks};
use merge::{Counters, Merge};
use report::{Progress, Summary};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::mpsc;

/// What to replay, from the command line.
#[derive(Debug, Clone)]
pub struct Options {
    /// Configuration file.
    pub config: PathBuf,
    /// Sensor type (`--type`); may be left out when there is only one.
    pub sensor_type: Option<String>,
    /// Directory for line protocol and `deadletter.jsonl`; `None`: the configured sinks.
    pub out: Option<PathBuf>,
    /// Timely workers (default: `pipeline.workers`).
    pub workers: Option<usize>,
    /// Files and directories.
    pub paths: Vec<PathBuf>,
    /// Show the progress line (stderr is a terminal).
    pub progress: bool,
}

/// Runs the replay to the end and returns its summary. Bad rows are dead-lettered and
/// counted; unreadable files and configuration mistakes are errors.
pub fn run(opts: &Options) -> anyhow::Result<Summary> {
    let started = Instant::now();
    let loaded = aqyl_core::config::load(&opts.config, |k| std::env::var(k).ok()).map_err(|e| {
        anyhow::anyhow!(
            "{e}\nFix the configuration (aqyl check --config {}) and start again.",
            opts.config.display()
        )
    })?;
    let ty = pick_type(&loaded.sensor_types, opts.sensor_type.as_deref())?;
    replayable(&ty)?;
    let (sources, skipped_files) = inputs(&loaded, &ty, opts)?;
    let spec = replay_spec(&loaded, opts.workers);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let _guard = rt.enter();
    let sensor_type = ty.name.to_string();
    // Every input opens before any output is replaced.
    let counters = Arc::new(Counters::default());
    let files = sources.len();
    let merges = share_out(&ty.name, sources, spec.workers.max(1))
        .into_iter()
        .map(|part| Merge::open(ty.clone(), part, spec.max_payload_bytes, counters.clone()))
        .collect::<anyhow::Result<Vec<Merge>>>()?;
    let out = Output::open(&loaded, opts.out.as_deref())?;
    let mut summary = Summary {
        sensor_type,
        files,
        skipped_files,
        output: out.description.clone(),
        dead_letter_file: out.dead_letter_path.clone(),
        ..Default::default()
    };
    let counts = execute(&rt, spec, out, merges, counters, opts.progress)?;
    summary.rows = counts.rows;
    summary.observations = counts.observations;
    summary.windows = counts.windows;
    summary.events = counts.events;
    summary.quality = counts.quality;
    summary.dead_letters = counts.dead_letters;
    summary.elapsed = started.elapsed();
    Ok(summary)
}

/// Shares the files out among `workers` (see [`readers`]).
fn share_out(
    sensor_type: &str,
    sources: Vec<files::Source>,
    workers: usize,
) -> Vec<Vec<files::Source>> {
    let loads: Vec<FileLoad> = sources
        .iter()
        .map(|s| FileLoad {
            bytes: std::fs::metadata(&s.path).map_or(0, |m| m.len()),
            home: match &s.sensor {
                files::SensorOf::File(id) => {
                    Some((aqyl_dataflow::stable_hash(&[sensor_type, id]) % workers as u64) as usize)
                }
                files::SensorOf::Field { .. } => None,
            },
        })
        .collect();
    let mut parts: Vec<Vec<files::Source>> = (0..workers).map(|_| Vec::new()).collect();
    for (source, reader) in sources.into_iter().zip(readers(&loads, workers)) {
        parts[reader].push(source);
    }
    parts
}

/// The share of a row's work done by the worker that reads it, in percent: reading and
/// decoding the row, the duplicate check, handing it to the exchange. The rest (windows,
/// rules) is done by the worker that owns the row's sensor. Fitted to the two workers' CPU
/// time in citypulse-hourly replays shared out at 25% and by bytes alone.
const READ_SHARE: u64 = 55;

/// What a file costs the workers: its size, and the worker owning its sensor (`None`: its
/// rows name their sensors, which then spread over every worker).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileLoad {
    bytes: u64,
    home: Option<usize>,
}

/// The worker that reads each file, so that the workers' loads (their files' reading, plus
/// the windows and rules of the sensors they own, wherever those are read) come out as even
/// as the files allow. Each file starts at its sensor's worker (its rows then cross to no
/// other), and files move from the most to the least loaded worker while a move lowers the
/// larger load. Files whose rows name their sensors are all read by worker 0 and never move:
/// a sensor's rows in several such files keep the order the merge gives them.
fn readers(files: &[FileLoad], workers: usize) -> Vec<usize> {
    let workers = workers.max(1);
    let mut reader: Vec<usize> = files
        .iter()
        .map(|f| f.home.unwrap_or(0) % workers)
        .collect();
    let mut load = vec![0u64; workers];
    for (f, r) in files.iter().zip(&reader) {
        load[*r] += f.bytes * READ_SHARE;
        let owned = f.bytes * (100 - READ_SHARE);
        match f.home {
            Some(home) => load[home % workers] += owned,
            None => load.iter_mut().for_each(|l| *l += owned / workers as u64),
        }
    }
    loop {
        let most = (0..workers).max_by_key(|w| (load[*w], std::cmp::Reverse(*w)));
        let least = (0..workers).min_by_key(|w| (load[*w], *w));
        let (Some(most), Some(least)) = (most, least) else {
            break;
        };
        // The file whose move evens the two loads best, if moving it lowers the larger.
        let gap = load[most] - load[least];
        let movable = (0..files.len())
            .filter(|i| reader[*i] == most && files[*i].home.is_some())
            .map(|i| (i, files[i].bytes * READ_SHARE))
            .filter(|(_, cost)| *cost > 0 && *cost < gap)
            .min_by_key(|(i, cost)| (gap.abs_diff(2 * cost), *i));
        let Some((i, cost)) = movable else { break };
        reader[i] = least;
        load[most] -= cost;
        load[least] += cost;
    }
    reader
}

/// The files to replay and how many were skipped in the directories given; an error when
/// there are none or some cannot be attributed to sensors.
fn inputs(
    loaded: &Loaded,
    ty: &SensorType,
    opts: &Options,
) -> anyhow::Result<(Vec<files::Source>, usize)> {
    let (mut paths, mut skipped_files) = files::discover(&opts.paths)?;
    // An output directory inside the input must not feed the replay its own dead letters.
    let own = own_outputs(loaded, opts.out.as_deref());
    let before = paths.len();
    paths.retain(|p| !p.canonicalize().is_ok_and(|c| own.contains(&c)));
    skipped_files += before - paths.len();
    if paths.is_empty() {
        anyhow::bail!(
            "no .csv, .jsonl, .ndjson, .json or .senml files to replay under the paths given"
        );
    }
    let sources = files::sources(&paths, ty).map_err(|problems| match problems.as_slice() {
        [one] => anyhow::anyhow!("cannot replay: {one}"),
        _ => anyhow::anyhow!(
            "cannot replay {} of the files:\n  {}{}",
            problems.len(),
            problems[..problems.len().min(10)].join("\n  "),
            if problems.len() > 10 { "\n  ..." } else { "" }
        ),
    })?;
    Ok((sources, skipped_files))
}

/// The files a replay writes that already exist (canonical paths), so that a directory walk
/// does not read them back.
fn own_outputs(loaded: &Loaded, out: Option<&Path>) -> Vec<PathBuf> {
    let dirs = match out {
        Some(dir) => vec![dir.to_path_buf()],
        None => vec![loaded.config.file.dir.clone(), loaded.state_dir()],
    };
    dirs.iter()
        .flat_map(|d| [d.join("deadletter.jsonl"), d.join("aggregate.lp")])
        .filter_map(|p| p.canonicalize().ok())
        .collect()
}

/// The sensor type to replay: the one named, or the only one there is.
pub fn pick_type(types: &[SensorType], name: Option<&str>) -> anyhow::Result<SensorType> {
    let names = || {
        types
            .iter()
            .map(|t| t.name.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    };
    match (name, types) {
        (Some(n), _) => types
            .iter()
            .find(|t| &*t.name == n)
            .cloned()
            .ok_or_else(|| anyhow::anyhow!("no sensor type {n:?}; the types are: {}", names())),
        (None, [only]) => Ok(only.clone()),
        (None, _) => anyhow::bail!(
            "there are several sensor types ({}): say which the files hold with --type NAME",
            names()
        ),
    }
}

/// Whether rows of `ty` can be replayed: they must carry their event time, and the topic must
/// be one a row can fill.
pub fn replayable(ty: &SensorType) -> anyhow::Result<()> {
    if ty.time.is_none() && ty.format != PayloadFormat::Senml {
        anyhow::bail!(
            "sensor type {:?} has no [time]: its readings are stamped on receipt, so a replay has no event time for them; add a [time] section to {}",
            &*ty.name,
            ty.source.display()
        );
    }
    if ty.topic.topic_of("x").is_none() {
        anyhow::bail!(
            "sensor type {:?} takes its area from the topic ({}), which a file row cannot give; use area_field or the sensor registry in {} to replay it",
            &*ty.name,
            ty.topic.as_str(),
            ty.source.display()
        );
    }
    Ok(())
}

/// The pipeline of `aqyl run` for this configuration, in event time only.
pub fn replay_spec(loaded: &Loaded, workers: Option<usize>) -> PipelineSpec {
    let registry = aqyl_dataflow::shared(Registry::new(loaded.sensor_types.clone()));
    let mut spec = crate::service::pipeline_spec(loaded, registry);
    // No wall clock: windows close as the rows' time passes them, and at the end of input.
    spec.idle_timeout = None;
    // Rows have no receipt time to be ahead of.
    spec.max_future = None;
    if let Some(w) = workers {
        spec.workers = w.max(1);
    }
    if let Some(q) = &mut spec.quality {
        q.wall_clock = false;
    }
    spec
}

/// Where results go.
struct Output {
    sinks: Sinks,
    dead_letters: std::fs::File,
    dead_letter_path: PathBuf,
    description: String,
}

impl Output {
    /// `--out DIR` (its `aggregate.lp` and `deadletter.jsonl` replaced), else the configured
    /// sinks, with dead letters appended to `deadletter.jsonl` in `[file] dir`, or in the state
    /// directory when the file sink is off.
    fn open(loaded: &Loaded, out: Option<&Path>) -> anyhow::Result<Self> {
        let cfg = &loaded.config;
        let (sinks, dir, replace, description) = match out {
            Some(dir) => {
                std::fs::create_dir_all(dir).with_context(|| {
                    format!("cannot create the output directory {}", dir.display())
                })?;
                let lp = dir.join("aggregate.lp");
                std::fs::File::create(&lp)
                    .with_context(|| format!("cannot write {}", lp.display()))?;
                let sinks = Sinks {
                    influx: None,
                    file: Some(FileSink::open(dir)?),
                    batch_size: cfg.influx.batch_size,
                    flush_interval: cfg.influx.flush_interval,
                };
                (sinks, dir.to_path_buf(), true, lp.display().to_string())
            }
            None => {
                let sinks = crate::service::sinks(loaded)?;
                let mut to = Vec::new();
                if let Some(f) = &sinks.file {
                    to.push(f.path().display().to_string());
                }
                if sinks.influx.is_some() {
                    to.push(format!(
                        "InfluxDB {} (bucket {})",
                        cfg.influx.url, cfg.influx.bucket
                    ));
                }
                if to.is_empty() {
                    anyhow::bail!(
                        "no output: pass --out DIR, or enable [influx] or [file] in {}",
                        loaded.path.display()
                    );
                }
                let dir = if cfg.file.enabled {
                    cfg.file.dir.clone()
                } else {
                    loaded.state_dir()
                };
                (sinks, dir, false, to.join(" and "))
            }
        };
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create the directory {}", dir.display()))?;
        let dead_letter_path = dir.join("deadletter.jsonl");
        let dead_letters = std::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .append(!replace)
            .truncate(replace)
            .open(&dead_letter_path)
            .with_context(|| format!("cannot write {}", dead_letter_path.display()))?;
        Ok(Self {
            sinks,
            dead_letters,
            dead_letter_path,
            description,
        })
    }
}

/// What [`execute`] counted.
struct Counted {
    rows: u64,
    observations: u64,
    windows: u64,
    events: u64,
    quality: u64,
    dead_letters: [u64; Reason::ALL.len()],
}

/// Starts the dataflow, each worker reading its share of the files, and the output tasks;
/// waits until every window is closed and written.
fn execute(
    rt: &tokio::runtime::Runtime,
    spec: PipelineSpec,
    out: Output,
    merges: Vec<Merge>,
    counters: Arc<Counters>,
    progress: bool,
) -> anyhow::Result<Counted> {
    let metrics = Arc::new(Metrics::default());
    let (outputs, received) = Outputs::channels();
    let dl_rx = received.deadletters;
    let sink_task = rt.spawn(aqyl_sink::run(
        out.sinks,
        received.aggregates,
        received.events,
        received.quality,
        metrics.clone(),
    ));
    let dl_task = rt.spawn_blocking(move || write_dead_letters(dl_rx, out.dead_letters));
    let files: usize = merges.iter().map(Merge::files).sum();
    let sources = merges
        .into_iter()
        .map(|m| Box::new(m) as Box<dyn aqyl_dataflow::input::Source>)
        .collect();
    let running = aqyl_dataflow::start_sources(spec, sources, outputs, metrics.clone())
        .map_err(|e| anyhow::anyhow!("cannot start the dataflow: {e}"))?;
    let mut progress = Progress::new(progress);
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    let joiner = std::thread::spawn(move || {
        let joined = running.join();
        let _ = done_tx.send(());
        joined
    });
    let newest = || Some(counters.newest.load(Relaxed)).filter(|t| *t > i64::MIN);
    while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) =
        done_rx.recv_timeout(std::time::Duration::from_millis(100))
    {
        let files_done = counters.files_done.load(Relaxed) as usize;
        progress.tick(counters.rows.load(Relaxed), files_done, files, newest());
    }
    let joined = joiner
        .join()
        .map_err(|_| anyhow::anyhow!("the dataflow panicked"))
        .and_then(|r| r.map_err(|e| anyhow::anyhow!("the dataflow failed: {e}")));
    let written = rt.block_on(async {
        sink_task.await.context("the sink task panicked")??;
        dl_task.await.context("the dead-letter writer panicked")?
    });
    progress.finish();
    if let Some(e) = counters.error.lock().ok().and_then(|mut e| e.take()) {
        anyhow::bail!(e);
    }
    joined?;
    let dead_letters = written?;
    Ok(Counted {
        rows: counters.rows.load(Relaxed),
        observations: metrics.observations.load(Relaxed),
        // What the dataflow emitted (each counts as sent before it is handed on).
        windows: metrics.delivery.sent[Delivered::Aggregates as usize].load(Relaxed),
        events: metrics.delivery.sent[Delivered::Events as usize].load(Relaxed),
        quality: metrics.delivery.sent[Delivered::Quality as usize].load(Relaxed),
        dead_letters,
    })
}

/// Writes each dead letter as one JSON line and counts them by reason.
fn write_dead_letters(
    mut rx: mpsc::Receiver<DeadLetter>,
    file: std::fs::File,
) -> anyhow::Result<[u64; Reason::ALL.len()]> {
    let mut counts = [0u64; Reason::ALL.len()];
    let mut out = std::io::BufWriter::new(file);
    while let Some(d) = rx.blocking_recv() {
        counts[d.reason.index()] += 1;
        serde_json::to_writer(&mut out, &d)?;
        out.write_all(b"\n")?;
    }
    out.flush().context("cannot write the dead letters")?;
    Ok(counts)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(bytes: u64, home: usize) -> FileLoad {
        FileLoad {
            bytes,
            home: Some(home),
        }
    }

    #[test]
    fn files_are_read_at_home_when_that_is_even() {
        let files = [file(10, 0), file(10, 1), file(5, 0), file(5, 1)];
        assert_eq!(readers(&files, 2), [0, 1, 0, 1]);
        assert_eq!(readers(&files, 1), [0, 0, 0, 0]);
    }

    #[test]
    fn the_busier_owner_reads_less() {
        // Worker 1 owns 30 of 40 units of windows and rules: worker 0 reads its 10 and
        // most of worker 1's files.
        let files = [file(10, 0), file(10, 1), file(10, 1), file(10, 1)];
        let r = readers(&files, 2);
        let load = |w: usize| {
            let read: u64 = (0..4).filter(|i| r[*i] == w).map(|i| files[i].bytes).sum();
            let owned: u64 = files
                .iter()
                .filter(|f| f.home == Some(w))
                .map(|f| f.bytes)
                .sum();
            read * READ_SHARE + owned * (100 - READ_SHARE)
        };
        assert_eq!(r[0], 0, "a file stays home unless moving it helps");
        assert!(r.iter().filter(|w| **w == 0).count() >= 3, "{r:?}");
        assert!(load(0).abs_diff(load(1)) < 10 * READ_SHARE, "{r:?}");
    }

    #[test]
    fn files_naming_their_sensors_stay_together_on_worker_0() {
        let spread = FileLoad {
            bytes: 100,
            home: None,
        };
        let files = [spread, spread, file(1, 1)];
        assert_eq!(readers(&files, 2), [0, 0, 1]);
    }
}
