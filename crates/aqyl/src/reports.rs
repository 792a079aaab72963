//! Citizen reports over HTTP (`POST /api/reports`): the thin I/O around the checks of
//! [`aqyl_core::reports`]. A good report gets an id and is published on
//! `city/reports/<category>/<id>` at QoS 1, so it enters the dataflow through the same ingest
//! as a report published there by anyone else (the `citizen_report` sensor type). Every
//! refusal is counted (`aqyl_reports_rejected_total{reason}`) and dead-lettered on
//! `<prefix>/deadletter/citizen_report`, as refused sensor input is.

use aqyl_core::metrics::Metrics;
use aqyl_core::reports::{self, Rejection, ReportsConfig};
use aqyl_core::{DeadLetter, Reason};
use rumqttc::{AsyncClient, QoS};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// The sensor type reports are decoded as, and dead-lettered under.
pub const SENSOR_TYPE: &str = "citizen_report";
/// The topic prefix reports are published under.
pub const TOPIC_PREFIX: &str = "city/reports";
/// What a dead letter of a refused report names as its topic.
pub const ENDPOINT: &str = "POST /api/reports";
/// How long a report may wait for the broker connection's queue before the client is told
/// to try again.
pub const PUBLISH_TIMEOUT: Duration = Duration::from_secs(5);

/// The answer to one request: status, JSON body, and seconds to wait (429).
#[derive(Debug)]
pub struct Answer {
    /// HTTP status.
    pub status: u16,
    /// JSON body.
    pub body: serde_json::Value,
    /// `Retry-After`, in seconds.
    pub retry_after: Option<u64>,
}

/// The intake of citizen reports.
#[derive(Debug)]
pub struct Reports {
    config: ReportsConfig,
    limiter: Mutex<reports::RateLimiter>,
    client: OnceLock<AsyncClient>,
    deadletter_topic: String,
    /// `ingest.max_future`, ms (0: no check).
    max_future_ms: i64,
    metrics: Arc<Metrics>,
    clock: Instant,
}

impl Reports {
    /// An intake with `config`, dead-lettering under `prefix` (`outputs.topic_prefix`),
    /// refusing times further ahead than `max_future` (`ingest.max_future`; zero: no check).
    pub fn new(
        config: ReportsConfig,
        prefix: &str,
        max_future: Duration,
        metrics: Arc<Metrics>,
    ) -> Arc<Self> {
        Arc::new(Reports {
            limiter: Mutex::new(reports::RateLimiter::new(config.per_minute)),
            config,
            client: OnceLock::new(),
            deadletter_topic: format!("{prefix}/deadletter/{SENSOR_TYPE}"),
            max_future_ms: max_future.as_millis() as i64,
            metrics,
            clock: Instant::now(),
        })
    }

    /// The largest body taken.
    pub fn max_bytes(&self) -> usize {
        self.config.max_bytes
    }

    /// Publishes through `client` from now on (the output connection, made after the HTTP
    /// endpoint starts); until then reports get 503.
    pub fn connect(&self, client: AsyncClient) {
        let _ = self.client.set(client);
    }

    /// Takes one request's `body` (read up to a little beyond `max_bytes`; `declared` is its
    /// `Content-Length`) from `peer`.
    pub async fn receive(&self, peer: &str, body: &[u8], declared: Option<usize>) -> Answer {
        let size = declared.unwrap_or(0).max(body.len());
        let limited = {
            let now = self.clock.elapsed().as_millis() as u64;
            let mut l = self.limiter.lock().unwrap_or_else(|p| p.into_inner());
            l.check(peer, now)
        };
        if let Err(wait) = limited {
            let r = Rejection {
                reason: Reason::RateLimited,
                status: 429,
                field: None,
                message: format!(
                    "more than {} reports a minute from {peer}; wait {wait} s (reports.per_minute)",
                    self.config.per_minute
                ),
            };
            return self.refuse(r, body, size, Some(wait));
        }
        let checked = if size > self.config.max_bytes {
            Err(reports::oversized(size, self.config.max_bytes))
        } else {
            reports::validate(
                body,
                self.config.max_bytes,
                reports::new_id(fastrand::u64(..)),
            )
        };
        let now = chrono::Utc::now().timestamp_millis();
        let checked =
            checked.and_then(|r| reports::check_time(&r, now, self.max_future_ms).map(|()| r));
        let report = match checked {
            Ok(r) => r,
            Err(r) => return self.refuse(r, body, size, None),
        };
        let Some(client) = self.client.get() else {
            return unavailable("Aqyl is starting and not connected to the broker yet; try again");
        };
        let topic = report.topic(TOPIC_PREFIX);
        let publish = client.publish(topic.clone(), QoS::AtLeastOnce, false, report.to_json());
        match tokio::time::timeout(PUBLISH_TIMEOUT, publish).await {
            Ok(Ok(())) => {
                self.metrics.reports_accepted.fetch_add(1, Relaxed);
                tracing::info!(id = %report.id, category = %report.category, "Took a citizen report.");
                Answer {
                    status: 202,
                    body: serde_json::json!({"id": report.id, "topic": topic}),
                    retry_after: None,
                }
            }
            _ => unavailable("the broker connection is not taking messages; try again"),
        }
    }

    /// Counts and dead-letters a refusal, and says why.
    fn refuse(&self, r: Rejection, body: &[u8], size: usize, wait: Option<u64>) -> Answer {
        self.metrics.reports_rejected[r.reason.index()].fetch_add(1, Relaxed);
        let received = chrono::Utc::now().timestamp_millis();
        let mut dl = DeadLetter::new(
            SENSOR_TYPE,
            r.reason,
            r.message.clone(),
            ENDPOINT,
            body,
            received,
        );
        dl.payload_bytes = size;
        dl.truncated |= size > body.len();
        tracing::debug!(reason = %r.reason, detail = %r.message, "Refused a citizen report.");
        if let Some(client) = self.client.get() {
            // Never wait here: a flood of refusals must not hold up the connection.
            let sent = client.try_publish(
                self.deadletter_topic.clone(),
                QoS::AtLeastOnce,
                false,
                dl.to_json(),
            );
            if sent.is_ok() {
                self.metrics.deadletters_published.fetch_add(1, Relaxed);
            }
        }
        Answer {
            status: r.status,
            body: serde_json::json!({"error": r.message, "reason": r.reason.as_str(), "field": r.field}),
            retry_after: wait,
        }
    }
}

fn unavailable(message: &str) -> Answer {
    Answer {
        status: 503,
        body: serde_json::json!({ "error": message }),
        retry_after: Some(1),
    }
}
