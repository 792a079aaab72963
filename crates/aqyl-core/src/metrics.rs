//! Counters for everything Aqyl receives, rejects, computes and writes. Shared by the MQTT
//! edge, the dataflow workers and the sinks; rendered for the demo summary and for Prometheus
//! at `GET /metrics` when `AQYL_HTTP_ADDR` (or `http.addr`) is set.

use crate::ingest::deadletter::Reason;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Process-wide counters (lock-free).
#[derive(Debug, Default)]
pub struct Metrics {
    /// MQTT messages received on ingest topics.
    pub received: AtomicU64,
    /// Observations decoded and accepted into the dataflow.
    pub observations: AtomicU64,
    /// Rejected inputs per [`Reason`] (index = `Reason::index`), late records included.
    pub rejected: [AtomicU64; Reason::ALL.len()],
    /// Windows closed (one per sensor, field and window).
    pub windows_closed: AtomicU64,
    /// Late records that corrected a closed window (`pipeline.late = "update"`).
    pub late_updates: AtomicU64,
    /// Readings the rules did not judge because their sensor had already sent a newer one
    /// (`pipeline.rule_timing = "arrival"`).
    pub rules_out_of_order: AtomicU64,
    /// Points written successfully to the InfluxDB sink.
    pub influx_points_written: AtomicU64,
    /// Failed InfluxDB write attempts (each retried).
    pub influx_write_failures: AtomicU64,
    /// Points InfluxDB rejected for good (kept in the rejected directory with its answer).
    pub influx_points_rejected: AtomicU64,
    /// Points spilled to disk during an InfluxDB outage (replayed later).
    pub influx_points_spilled: AtomicU64,
    /// Points appended to line-protocol files.
    pub file_points_written: AtomicU64,
    /// Points that could not be encoded (e.g. a control character in a tag).
    pub points_unencodable: AtomicU64,
    /// Dead-letter messages published.
    pub deadletters_published: AtomicU64,
    /// Aggregates published on MQTT (`outputs.aggregates`).
    pub aggregates_published: AtomicU64,
    /// Incident lifecycle messages published.
    pub events_published: AtomicU64,
    /// Quality reports published (retained, `aqyl/quality/<sensor_id>`).
    pub quality_reports_published: AtomicU64,
    /// Quality reports not published because the connection's queue was full (the next
    /// report of the sensor replaces them; the store gets every report).
    pub quality_reports_skipped: AtomicU64,
    /// Readings kept out of aggregates and rules because they failed correctness.
    pub quality_excluded: AtomicU64,
    /// Quality incidents started (a sensor's score fell below the threshold).
    pub quality_incidents: AtomicU64,
    /// MQTT connection errors (each followed by a reconnect attempt).
    pub mqtt_connection_errors: AtomicU64,
    /// Subscription filters in force (set when the broker acknowledges a subscription).
    pub subscriptions: AtomicU64,
    /// Components that cannot do their job right now, with why: `/health` answers 503 while
    /// any is listed.
    pub problems: std::sync::Mutex<std::collections::BTreeMap<&'static str, String>>,
    /// Successful reloads of the sensor descriptors.
    pub descriptor_reloads: AtomicU64,
    /// Descriptor changes rejected as invalid (the previous descriptors stay in force).
    pub descriptor_reload_failures: AtomicU64,
    /// Readings dropped as duplicates (same sensor, event time and values as one already
    /// taken: a QoS 1 redelivery, or a message logged again after a crash).
    pub duplicates: AtomicU64,
    /// Checkpoints committed to the state file.
    pub checkpoints: AtomicU64,
    /// Checkpoints taken but not committed (the sinks did not confirm their outputs in time).
    pub checkpoints_skipped: AtomicU64,
    /// Messages replayed from the ingest log at start (recovery).
    pub log_replayed: AtomicU64,
    /// How long the workers paused for the last checkpoint, microseconds (gauge).
    pub checkpoint_pause_us: AtomicU64,
    /// Size of the last committed checkpoint, bytes (gauge).
    pub checkpoint_bytes: AtomicU64,
    /// Outputs the dataflow handed to the sinks, and those the sinks made durable.
    pub delivery: Delivery,
}

/// What the dataflow has emitted and what has reached its destination, per output, so a
/// checkpoint is committed only once everything emitted before it is safe.
#[derive(Debug, Default)]
pub struct Delivery {
    /// Emitted by the dataflow, per [`Output`].
    pub sent: [AtomicU64; 4],
    /// Written, spilled, published or deliberately dropped, per [`Output`].
    pub done: [AtomicU64; 4],
}

/// The dataflow's outputs, for [`Delivery`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    /// Closed windows (done when written or spilled by the store sink).
    Aggregates = 0,
    /// Incident messages (done when published and written by the sinks).
    Events = 1,
    /// Quality records (done when written by the sinks).
    Quality = 2,
    /// Dead letters (done when published).
    DeadLetters = 3,
}

impl Delivery {
    /// Counts `n` outputs emitted.
    pub fn sent(&self, output: Output, n: u64) {
        self.sent[output as usize].fetch_add(n, Relaxed);
    }

    /// Counts `n` outputs safe.
    pub fn done(&self, output: Output, n: u64) {
        self.done[output as usize].fetch_add(n, Relaxed);
    }

    /// The emitted counts now.
    pub fn sent_now(&self) -> [u64; 4] {
        std::array::from_fn(|i| self.sent[i].load(Relaxed))
    }

    /// Whether everything counted in `sent` is safe.
    pub fn covers(&self, sent: &[u64; 4]) -> bool {
        (0..4).all(|i| self.done[i].load(Relaxed) >= sent[i])
    }
}

/// A copy of the counters at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// See [`Metrics::received`].
    pub received: u64,
    /// See [`Metrics::observations`].
    pub observations: u64,
    /// Rejections per reason.
    pub rejected: [u64; Reason::ALL.len()],
    /// See [`Metrics::windows_closed`].
    pub windows_closed: u64,
    /// See [`Metrics::influx_points_written`].
    pub influx_points_written: u64,
    /// See [`Metrics::file_points_written`].
    pub file_points_written: u64,
    /// See [`Metrics::events_published`].
    pub events_published: u64,
    /// See [`Metrics::quality_incidents`].
    pub quality_incidents: u64,
}

impl Snapshot {
    /// Rejections for one reason.
    pub fn rejected(&self, reason: Reason) -> u64 {
        self.rejected[reason.index()]
    }

    /// All rejections except `late`.
    pub fn rejected_total(&self) -> u64 {
        Reason::ALL
            .iter()
            .filter(|r| **r != Reason::Late)
            .map(|r| self.rejected(*r))
            .sum()
    }
}

impl Metrics {
    /// Records that `component` cannot do its job, and why (shown by `/health`).
    pub fn set_problem(&self, component: &'static str, why: String) {
        if let Ok(mut p) = self.problems.lock() {
            p.insert(component, why);
        }
    }

    /// Records that `component` works again.
    pub fn clear_problem(&self, component: &'static str) {
        if let Ok(mut p) = self.problems.lock() {
            p.remove(component);
        }
    }

    /// What is wrong now, one line per component; empty when all is well.
    pub fn problems(&self) -> Vec<String> {
        self.problems
            .lock()
            .map(|p| p.iter().map(|(c, why)| format!("{c}: {why}")).collect())
            .unwrap_or_default()
    }

    /// Counts one rejection.
    pub fn reject(&self, reason: Reason) {
        self.rejected[reason.index()].fetch_add(1, Relaxed);
    }

    /// Reads every counter.
    pub fn snapshot(&self) -> Snapshot {
        let mut rejected = [0; Reason::ALL.len()];
        for (slot, c) in rejected.iter_mut().zip(&self.rejected) {
            *slot = c.load(Relaxed);
        }
        Snapshot {
            received: self.received.load(Relaxed),
            observations: self.observations.load(Relaxed),
            rejected,
            windows_closed: self.windows_closed.load(Relaxed),
            influx_points_written: self.influx_points_written.load(Relaxed),
            file_points_written: self.file_points_written.load(Relaxed),
            events_published: self.events_published.load(Relaxed),
            quality_incidents: self.quality_incidents.load(Relaxed),
        }
    }

    /// Prometheus text exposition format.
    pub fn render_prometheus(&self) -> String {
        let mut out = String::new();
        let mut counter = |name: &str, help: &str, v: &AtomicU64| {
            let _ = writeln!(
                out,
                "# HELP aqyl_{name} {help}\n# TYPE aqyl_{name} counter\naqyl_{name} {}",
                v.load(Relaxed)
            );
        };
        counter(
            "received_total",
            "MQTT messages received on ingest topics.",
            &self.received,
        );
        counter(
            "observations_total",
            "Observations accepted into the dataflow.",
            &self.observations,
        );
        counter(
            "windows_closed_total",
            "Windows closed.",
            &self.windows_closed,
        );
        counter(
            "duplicates_total",
            "Readings dropped as duplicates (redelivered or logged twice).",
            &self.duplicates,
        );
        counter(
            "checkpoints_total",
            "Checkpoints of the dataflow's state committed.",
            &self.checkpoints,
        );
        counter(
            "checkpoints_skipped_total",
            "Checkpoints not committed because the sinks did not confirm in time.",
            &self.checkpoints_skipped,
        );
        counter(
            "log_replayed_total",
            "Messages replayed from the ingest log at start.",
            &self.log_replayed,
        );
        counter(
            "late_updates_total",
            "Late records that corrected a closed window.",
            &self.late_updates,
        );
        counter(
            "rules_out_of_order_total",
            "Readings not judged by the rules because their sensor had sent a newer one.",
            &self.rules_out_of_order,
        );
        counter(
            "influx_points_written_total",
            "Points written to InfluxDB.",
            &self.influx_points_written,
        );
        counter(
            "influx_write_failures_total",
            "Failed InfluxDB write attempts.",
            &self.influx_write_failures,
        );
        counter(
            "influx_points_rejected_total",
            "Points InfluxDB rejected for good (kept in the rejected directory).",
            &self.influx_points_rejected,
        );
        counter(
            "influx_points_spilled_total",
            "Points spilled to disk during an InfluxDB outage.",
            &self.influx_points_spilled,
        );
        counter(
            "file_points_written_total",
            "Points appended to line-protocol files.",
            &self.file_points_written,
        );
        counter(
            "points_unencodable_total",
            "Points that could not be encoded.",
            &self.points_unencodable,
        );
        counter(
            "deadletters_published_total",
            "Dead-letter messages published.",
            &self.deadletters_published,
        );
        counter(
            "aggregates_published_total",
            "Aggregates published on MQTT.",
            &self.aggregates_published,
        );
        counter(
            "events_published_total",
            "Incident lifecycle messages published.",
            &self.events_published,
        );
        counter(
            "quality_reports_published_total",
            "Quality reports published on MQTT.",
            &self.quality_reports_published,
        );
        counter(
            "quality_reports_skipped_total",
            "Quality reports skipped because the MQTT connection's queue was full.",
            &self.quality_reports_skipped,
        );
        counter(
            "quality_incidents_total",
            "Quality incidents started (a score fell below quality.threshold).",
            &self.quality_incidents,
        );
        counter(
            "quality_excluded_total",
            "Readings kept out of aggregates and rules because a value is outside its range.",
            &self.quality_excluded,
        );
        counter(
            "mqtt_connection_errors_total",
            "MQTT connection errors.",
            &self.mqtt_connection_errors,
        );
        counter(
            "descriptor_reloads_total",
            "Successful reloads of the sensor descriptors.",
            &self.descriptor_reloads,
        );
        counter(
            "descriptor_reload_failures_total",
            "Invalid descriptor changes that were rejected.",
            &self.descriptor_reload_failures,
        );
        let _ = writeln!(
            out,
            "# HELP aqyl_checkpoint_pause_seconds How long the workers paused for the last checkpoint.\n# TYPE aqyl_checkpoint_pause_seconds gauge\naqyl_checkpoint_pause_seconds {}",
            self.checkpoint_pause_us.load(Relaxed) as f64 / 1e6
        );
        let _ = writeln!(
            out,
            "# HELP aqyl_checkpoint_bytes Size of the last committed checkpoint.\n# TYPE aqyl_checkpoint_bytes gauge\naqyl_checkpoint_bytes {}",
            self.checkpoint_bytes.load(Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP aqyl_subscriptions Subscription filters in force.\n# TYPE aqyl_subscriptions gauge\naqyl_subscriptions {}",
            self.subscriptions.load(Relaxed)
        );
        let _ = writeln!(out, "# HELP aqyl_rejected_total Rejected inputs by reason.\n# TYPE aqyl_rejected_total counter");
        for r in Reason::ALL {
            let _ = writeln!(
                out,
                "aqyl_rejected_total{{reason=\"{r}\"}} {}",
                self.rejected[r.index()].load(Relaxed)
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejections_are_counted_per_reason() {
        let m = Metrics::default();
        m.reject(Reason::Late);
        m.reject(Reason::WrongType);
        m.reject(Reason::WrongType);
        let s = m.snapshot();
        assert_eq!(s.rejected(Reason::WrongType), 2);
        assert_eq!(s.rejected(Reason::Late), 1);
        assert_eq!(s.rejected_total(), 2);
        assert!(m
            .render_prometheus()
            .contains("aqyl_rejected_total{reason=\"wrong_type\"} 2\n"));
    }
}
