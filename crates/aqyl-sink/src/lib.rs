//! Aqyl's sinks: where closed windows are written.
//!
//! [`run`] drains the dataflow's aggregate channel, encodes each aggregate once as line
//! protocol ([`aqyl_core::output::line_protocol`]), batches lines and hands each batch to every
//! configured sink: [`influx`] (InfluxDB v2 write API through the `influxdb2` crate, retried
//! with backoff) and [`file`] (append-only `.lp` files, the zero-install default). Writes are
//! idempotent (same series, same timestamp), so retrying after an ambiguous failure is safe.

pub mod file;
pub mod influx;

use aqyl_core::metrics::{Metrics, Output};
use aqyl_core::quality::QualityRecord;
use aqyl_core::{Aggregate, Event};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

/// Errors of the sinks.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// The InfluxDB client could not be built (bad URL).
    #[error("cannot use the InfluxDB URL {url:?}: {reason}; set influx.url or AQYL_INFLUX_URL to e.g. http://127.0.0.1:8086")]
    InfluxUrl {
        /// The URL.
        url: String,
        /// Why.
        reason: String,
    },
    /// `influx.ca_file` cannot be used.
    #[error("{setting}: {reason}")]
    InfluxCa {
        /// The setting and its file.
        setting: String,
        /// Why, and what to do.
        reason: String,
    },
    /// A line-protocol file could not be opened or written.
    #[error("cannot write {path}: {source}; check that the directory exists and is writable")]
    File {
        /// The file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
}

/// The sinks to write to.
pub struct Sinks {
    /// InfluxDB v2, when enabled.
    pub influx: Option<influx::InfluxSink>,
    /// Line-protocol files, when enabled.
    pub file: Option<file::FileSink>,
    /// Most points per batch.
    pub batch_size: usize,
    /// Longest a point waits for its batch.
    pub flush_interval: Duration,
}

impl Sinks {
    async fn write(
        &mut self,
        batch: &str,
        points: usize,
        metrics: &Metrics,
    ) -> Result<(), SinkError> {
        if let Some(f) = &mut self.file {
            f.append(batch)?;
            metrics
                .file_points_written
                .fetch_add(points as u64, Relaxed);
        }
        if let Some(i) = &mut self.influx {
            i.write(batch, points, metrics).await?;
        }
        Ok(())
    }
}

/// Encodes one point into the batch, or counts and logs it when it cannot be encoded.
fn counted(
    points: &mut usize,
    metrics: &Metrics,
    encoded: Result<(), aqyl_core::output::line_protocol::LineError>,
    what: std::fmt::Arguments<'_>,
) {
    match encoded {
        Ok(()) => *points += 1,
        Err(err) => {
            metrics.points_unencodable.fetch_add(1, Relaxed);
            tracing::warn!(error = %err, "Skipped {what}: it cannot be encoded as line protocol.");
        }
    }
}

/// Outputs in the batch being built, per kind: safe once the batch is written.
#[derive(Default)]
struct InBatch([u64; 3]);

impl InBatch {
    const KINDS: [Output; 3] = [Output::Aggregates, Output::Events, Output::Quality];

    fn add(&mut self, output: Output, n: u64) {
        if let Some(i) = Self::KINDS.iter().position(|k| *k == output) {
            self.0[i] += n;
        }
    }

    /// The batch was written (or spilled): its outputs are safe.
    fn done(&mut self, metrics: &Metrics) {
        for (kind, n) in Self::KINDS.iter().zip(&mut self.0) {
            metrics.delivery.done(*kind, std::mem::take(n));
        }
    }
}

/// Most aggregates or events [`run`] takes from its channel at once.
const RUN: usize = 256;

/// Writes every aggregate, event and quality record received until all channels close,
/// then flushes and returns. Each record counts as done in `metrics.delivery` once the batch
/// holding it is written, spilled or filed as rejected.
pub async fn run(
    mut sinks: Sinks,
    mut rx: mpsc::Receiver<Aggregate>,
    mut events: mpsc::Receiver<Event>,
    mut quality: mpsc::Receiver<Vec<QualityRecord>>,
    metrics: Arc<Metrics>,
) -> Result<(), SinkError> {
    let (mut aggregates_open, mut events_open, mut quality_open) = (true, true, true);
    let mut batch = String::new();
    let mut points = 0usize;
    let mut in_batch = InBatch::default();
    let (mut taken_aggregates, mut taken_events) = (Vec::new(), Vec::new());
    // Batches spilled before a restart are written in the background, beside new ones.
    if let Some(i) = &mut sinks.influx {
        i.start_replay(metrics.clone());
    }
    // Without a sink nothing is encoded: the outputs are safe as soon as they arrive.
    let encode = sinks.file.is_some() || sinks.influx.is_some();
    let mut tick = tokio::time::interval(sinks.flush_interval.max(Duration::from_millis(10)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while aggregates_open || events_open || quality_open {
        // A full batch goes out at once, whichever channel filled it.
        if points >= sinks.batch_size {
            sinks.write(&batch, points, &metrics).await?;
            in_batch.done(&metrics);
            batch.clear();
            points = 0;
        }
        // Aggregates and events are taken in runs of what has queued up (one wake-up, not
        // one per record), never past the batch size.
        let room = sinks.batch_size.saturating_sub(points).clamp(1, RUN);
        tokio::select! {
            n = events.recv_many(&mut taken_events, room), if events_open => {
                events_open = n > 0;
                in_batch.add(Output::Events, n as u64);
                for e in taken_events.drain(..).filter(|_| encode) {
                    counted(&mut points, &metrics, e.write_line(&mut batch), format_args!("a {} event", e.event_type));
                }
            },
            next = quality.recv(), if quality_open => match next {
                Some(records) => {
                    in_batch.add(Output::Quality, records.len() as u64);
                    for q in records.iter().filter(|_| encode) {
                        counted(&mut points, &metrics, q.write_line(&mut batch), format_args!("a quality record"));
                    }
                }
                None => quality_open = false,
            },
            n = rx.recv_many(&mut taken_aggregates, room), if aggregates_open => {
                aggregates_open = n > 0;
                in_batch.add(Output::Aggregates, n as u64);
                for agg in taken_aggregates.drain(..).filter(|_| encode) {
                    counted(&mut points, &metrics, agg.write_line(&mut batch), format_args!("a {} {} aggregate", agg.sensor_type, agg.field));
                }
            },
            _ = tick.tick() => {
                if points > 0 {
                    sinks.write(&batch, points, &metrics).await?;
                    batch.clear();
                    points = 0;
                }
                in_batch.done(&metrics);
            }
        }
    }
    if points > 0 {
        sinks.write(&batch, points, &metrics).await?;
    }
    in_batch.done(&metrics);
    if let Some(i) = &mut sinks.influx {
        let waiting = i.finish(&metrics).await;
        if waiting > 0 {
            tracing::warn!(files = waiting, "InfluxDB is unavailable at shutdown; the spilled batches are kept on disk and written at the next start.");
        }
    }
    if let Some(f) = &mut sinks.file {
        f.flush()?;
    }
    Ok(())
}
