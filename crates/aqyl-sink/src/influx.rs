//! InfluxDB v2 writes through the `influxdb2` crate, retried with exponential backoff.
//!
//! A failed write (connection refused, timeout, 5xx, 429, or any other status) is retried
//! with the same batch, the wait doubling from 100 ms up to `max_backoff`, until it succeeds
//! or shutdown's deadline passes; failures are logged with the status and counted. Because
//! each point is keyed by series and timestamp, a batch written twice stores the same data.

use aqyl_core::metrics::Metrics;
use influxdb2::api::write::TimestampPrecision;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

/// A configured InfluxDB v2 destination.
pub struct InfluxSink {
    client: influxdb2::Client,
    org: String,
    bucket: String,
    max_backoff: Duration,
}

impl InfluxSink {
    /// Builds a client for `url` (e.g. `http://127.0.0.1:8086`).
    pub fn new(
        url: &str,
        org: &str,
        bucket: &str,
        token: &str,
        max_backoff: Duration,
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
        })
    }

    /// Writes one batch, retrying until it is accepted.
    pub async fn write(&mut self, batch: &str, points: usize, metrics: &Metrics) {
        let mut backoff = Duration::from_millis(100);
        loop {
            let body = batch.to_string();
            match self
                .client
                .write_line_protocol_with_precision(
                    &self.org,
                    &self.bucket,
                    body,
                    TimestampPrecision::Milliseconds,
                )
                .await
            {
                Ok(()) => {
                    metrics
                        .influx_points_written
                        .fetch_add(points as u64, Relaxed);
                    return;
                }
                Err(e) => {
                    metrics.influx_write_failures.fetch_add(1, Relaxed);
                    tracing::warn!(error = %e, points, retry_in_ms = backoff.as_millis() as u64, bucket = %self.bucket, "InfluxDB write failed; retrying.");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(self.max_backoff);
                }
            }
        }
    }
}
