//! InfluxDB v2 writes through the `influxdb2` crate, with a disk spill for outages.
//!
//! A batch is written at once. If the write fails (connection refused, timeout, 5xx, 429,
//! or any other status), the batch is appended to a spill file under `spill_dir` and the sink
//! carries on with new data, so an outage neither blocks the pipeline nor grows memory.
//! Spilled batches are replayed oldest first with exponential backoff (100 ms doubling up to
//! `max_backoff`) while the store is down, and on the next start if Aqyl stopped before they
//! could be written: nothing accepted is lost. Each point is keyed by series and timestamp,
//! so a batch written twice (a retry after an ambiguous failure) stores the same data.

use aqyl_core::metrics::Metrics;
use influxdb2::api::write::TimestampPrecision;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

/// A configured InfluxDB v2 destination.
pub struct InfluxSink {
    client: influxdb2::Client,
    org: String,
    bucket: String,
    max_backoff: Duration,
    spill_dir: PathBuf,
    spill_seq: u64,
    backoff: Duration,
    next_replay: Instant,
}

impl InfluxSink {
    /// Builds a client for `url` (e.g. `http://127.0.0.1:8086`) that spills to `spill_dir`.
    pub fn new(
        url: &str,
        org: &str,
        bucket: &str,
        token: &str,
        max_backoff: Duration,
        spill_dir: &Path,
    ) -> Result<Self, crate::SinkError> {
        let client = influxdb2::ClientBuilder::new(url, org, token)
            .build()
            .map_err(|e| crate::SinkError::InfluxUrl {
                url: url.to_string(),
                reason: e.to_string(),
            })?;
        Ok(Self {
            client,
            org: org.to_string(),
            bucket: bucket.to_string(),
            max_backoff,
            spill_dir: spill_dir.to_path_buf(),
            spill_seq: 0,
            backoff: Duration::from_millis(100),
            next_replay: Instant::now(),
        })
    }

    async fn send(&self, body: String) -> Result<(), influxdb2::RequestError> {
        self.client
            .write_line_protocol_with_precision(
                &self.org,
                &self.bucket,
                body,
                TimestampPrecision::Milliseconds,
            )
            .await
    }

    /// Writes one batch; on failure spills it to disk for a later replay.
    pub async fn write(
        &mut self,
        batch: &str,
        points: usize,
        metrics: &Metrics,
    ) -> Result<(), crate::SinkError> {
        // While older batches wait on disk the store is probably down: keep the order cheap
        // and spill directly, the replay will catch up.
        if self.spilled_files().is_empty() {
            match self.send(batch.to_string()).await {
                Ok(()) => {
                    metrics
                        .influx_points_written
                        .fetch_add(points as u64, Relaxed);
                    return Ok(());
                }
                Err(e) => {
                    metrics.influx_write_failures.fetch_add(1, Relaxed);
                    tracing::warn!(error = %e, points, bucket = %self.bucket, spill = %self.spill_dir.display(), "InfluxDB write failed; the batch is kept on disk and retried.");
                }
            }
        }
        self.spill(batch, points, metrics)
    }

    fn spill(
        &mut self,
        batch: &str,
        points: usize,
        metrics: &Metrics,
    ) -> Result<(), crate::SinkError> {
        let err = |source| crate::SinkError::File {
            path: self.spill_dir.display().to_string(),
            source,
        };
        std::fs::create_dir_all(&self.spill_dir).map_err(err)?;
        self.spill_seq += 1;
        let ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or(0);
        let path = self
            .spill_dir
            .join(format!("{ms:015}-{:06}.lp", self.spill_seq));
        let tmp = path.with_extension("tmp");
        // Write then rename, so a crash never leaves half a batch to replay.
        std::fs::write(&tmp, batch)
            .and_then(|_| std::fs::rename(&tmp, &path))
            .map_err(|source| crate::SinkError::File {
                path: path.display().to_string(),
                source,
            })?;
        metrics
            .influx_points_spilled
            .fetch_add(points as u64, Relaxed);
        Ok(())
    }

    /// Spill files waiting, oldest first.
    pub fn spilled_files(&self) -> Vec<PathBuf> {
        let Ok(entries) = std::fs::read_dir(&self.spill_dir) else {
            return Vec::new();
        };
        let mut files: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "lp"))
            .collect();
        files.sort();
        files
    }

    /// Replays spilled batches (if the backoff allows, or `force`), oldest first, until one
    /// fails. Returns how many files are still waiting.
    pub async fn replay(&mut self, metrics: &Metrics, force: bool) -> usize {
        let files = self.spilled_files();
        if files.is_empty() || (!force && Instant::now() < self.next_replay) {
            return files.len();
        }
        for (i, path) in files.iter().enumerate() {
            let Ok(body) = std::fs::read_to_string(path) else {
                tracing::error!(file = %path.display(), "Cannot read a spilled batch; leaving it in place.");
                return files.len() - i;
            };
            let points = body.lines().count() as u64;
            match self.send(body).await {
                Ok(()) => {
                    metrics.influx_points_written.fetch_add(points, Relaxed);
                    if let Err(e) = std::fs::remove_file(path) {
                        tracing::warn!(error = %e, file = %path.display(), "Cannot remove a replayed spill file; it will be written again (harmless).");
                    }
                    self.backoff = Duration::from_millis(100);
                }
                Err(e) => {
                    metrics.influx_write_failures.fetch_add(1, Relaxed);
                    tracing::warn!(error = %e, waiting = files.len() - i, retry_in_ms = self.backoff.as_millis() as u64, "InfluxDB is still unavailable.");
                    self.next_replay = Instant::now() + self.backoff;
                    self.backoff = (self.backoff * 2).min(self.max_backoff);
                    return files.len() - i;
                }
            }
        }
        tracing::info!(
            files = files.len(),
            "Replayed the batches spilled during the outage."
        );
        0
    }
}
