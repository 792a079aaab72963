//! Counters for everything Aqyl receives, rejects, computes and writes. Shared by the MQTT
//! edge, the dataflow workers and the sinks; rendered for the demo summary and for Prometheus
//! at `GET /metrics` when `AQYL_HTTP_ADDR` (or `http.addr`) is set.
//!
//! Each metric is declared once, in the table of [`declare_metrics!`]: its field, its kind,
//! its exposed name and its help text. The field is a plain [`AtomicU64`], so counting costs
//! one relaxed atomic add on the hot path; a scrape reads every field and hands the values to
//! the Prometheus project's own client library (`prometheus-client`), which writes the text
//! exposition format (HELP and TYPE lines, escaping, label sets).

use crate::ingest::deadletter::Reason;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};

/// The content type of [`Metrics::render_prometheus`]'s output (text format 0.0.4).
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// Components and why each is not well (for `/health` and `/ready`).
#[derive(Debug, Default)]
pub struct Reasons(std::sync::Mutex<std::collections::BTreeMap<&'static str, String>>);

impl Reasons {
    fn set(&self, component: &'static str, why: String) {
        if let Ok(mut r) = self.0.lock() {
            r.insert(component, why);
        }
    }

    fn clear(&self, component: &'static str) {
        if let Ok(mut r) = self.0.lock() {
            r.remove(component);
        }
    }

    /// `component: why`, one line each, by component.
    fn lines(&self) -> Vec<String> {
        self.0
            .lock()
            .map(|r| r.iter().map(|(c, why)| format!("{c}: {why}")).collect())
            .unwrap_or_default()
    }
}

/// How a declared metric is exposed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Only ever grows; the exposed name ends in `_total`.
    Counter,
    /// A level that goes up and down.
    Gauge,
    /// A gauge kept in microseconds and exposed in seconds.
    MicrosAsSeconds,
}

/// Declares the [`Metrics`] struct from one table: `field: Kind "exposed_name" "help";`.
/// The help text is also the field's documentation.
macro_rules! declare_metrics {
    ($( $field:ident : $kind:ident $name:literal $help:literal; )*) => {
        /// Process-wide counters (lock-free).
        #[derive(Debug, Default)]
        pub struct Metrics {
            $( #[doc = $help] pub $field: AtomicU64, )*
            /// Rejected inputs per [`Reason`] (index = `Reason::index`), late records included;
            /// exposed as `aqyl_rejected_total{reason="..."}`.
            pub rejected: [AtomicU64; Reason::ALL.len()],
            /// Citizen reports refused by `POST /api/reports`, per [`Reason`]; exposed as
            /// `aqyl_reports_rejected_total{reason="..."}`.
            pub reports_rejected: [AtomicU64; Reason::ALL.len()],
            /// Sensors whose latest quality score lies in each fifth of 0..=1 (a gauge, kept by
            /// the status board); exposed as `aqyl_quality_sensors{band="0.0-0.2"}` etc.
            pub quality_bands: [AtomicU64; QUALITY_BANDS.len()],
            /// Components that cannot do their job right now, with why: `/health` answers 503
            /// while any is listed.
            pub problems: Reasons,
            /// Whatever keeps the service from taking messages yet (recovery under way, the
            /// broker subscription not acknowledged): `/ready` answers 503 while any is listed.
            pub not_ready: Reasons,
            /// Set once the service has finished starting (recovery done).
            pub started: AtomicBool,
            /// Outputs the dataflow handed to the sinks, and those the sinks made durable.
            pub delivery: Delivery,
            /// In a cluster, this process's index: every metric carries it as the label
            /// `process`.
            pub process: std::sync::OnceLock<String>,
        }

        impl Metrics {
            /// Every declared metric: exposed name, help, kind and its field.
            pub fn declared(&self) -> impl Iterator<Item = (&'static str, &'static str, Kind, &AtomicU64)> {
                [$( ($name, $help, Kind::$kind, &self.$field) ),*].into_iter()
            }
        }
    };
}

/// The bands of [`Metrics::quality_bands`], as exposed.
pub const QUALITY_BANDS: [&str; 5] = ["0.0-0.2", "0.2-0.4", "0.4-0.6", "0.6-0.8", "0.8-1.0"];

/// The band of [`QUALITY_BANDS`] a score falls in.
pub fn quality_band(score: f64) -> usize {
    ((score.clamp(0.0, 1.0) * 5.0) as usize).min(QUALITY_BANDS.len() - 1)
}

declare_metrics! {
    received: Counter "aqyl_received_total" "MQTT messages received on ingest topics.";
    observations: Counter "aqyl_observations_total" "Observations decoded and accepted into the dataflow.";
    windows_closed: Counter "aqyl_windows_closed_total" "Windows closed (one per sensor, field and window).";
    duplicates: Counter "aqyl_duplicates_total" "Readings dropped as duplicates (same sensor, event time and values as one already taken: a QoS 1 redelivery, or a message logged again after a crash).";
    checkpoints: Counter "aqyl_checkpoints_total" "Checkpoints of the dataflow's state committed.";
    checkpoints_delayed: Counter "aqyl_checkpoints_delayed_total" "Checkpoints that waited longer than three checkpoint intervals (at least 15 s) for the sinks to confirm their outputs (in a cluster, abandoned for the next).";
    log_replayed: Counter "aqyl_log_replayed_total" "Messages replayed from the ingest log at start (recovery).";
    late_updates: Counter "aqyl_late_updates_total" "Late records that corrected a closed window (pipeline.late = \"update\").";
    rules_out_of_order: Counter "aqyl_rules_out_of_order_total" "Readings the rules did not judge because their sensor had already sent a newer one (pipeline.rule_timing = \"arrival\").";
    influx_points_written: Counter "aqyl_influx_points_written_total" "Points written successfully to InfluxDB.";
    influx_write_failures: Counter "aqyl_influx_write_failures_total" "Failed InfluxDB write attempts (each retried).";
    influx_points_rejected: Counter "aqyl_influx_points_rejected_total" "Points InfluxDB rejected for good (kept in the rejected directory with its answer).";
    influx_points_spilled: Counter "aqyl_influx_points_spilled_total" "Points spilled to disk during an InfluxDB outage (replayed later).";
    file_points_written: Counter "aqyl_file_points_written_total" "Points appended to line-protocol files.";
    points_unencodable: Counter "aqyl_points_unencodable_total" "Points that could not be encoded (e.g. a control character in a tag).";
    deadletters_published: Counter "aqyl_deadletters_published_total" "Dead-letter messages published.";
    aggregates_published: Counter "aqyl_aggregates_published_total" "Aggregates published on MQTT (outputs.aggregates).";
    events_published: Counter "aqyl_events_published_total" "Incident lifecycle messages published.";
    quality_reports_published: Counter "aqyl_quality_reports_published_total" "Quality reports published (retained, aqyl/quality/<sensor_id>).";
    quality_reports_skipped: Counter "aqyl_quality_reports_skipped_total" "Quality reports not published because the MQTT connection's queue was full (the sensor's next report replaces them; the store gets every report).";
    quality_incidents: Counter "aqyl_quality_incidents_total" "Quality incidents started (a score fell below quality.threshold).";
    quality_excluded: Counter "aqyl_quality_excluded_total" "Readings kept out of aggregates and rules because they failed correctness (a value outside its range).";
    mqtt_connection_errors: Counter "aqyl_mqtt_connection_errors_total" "MQTT connection errors (each followed by a reconnect attempt).";
    descriptor_reloads: Counter "aqyl_descriptor_reloads_total" "Successful reloads of the sensor descriptors.";
    descriptor_reload_failures: Counter "aqyl_descriptor_reload_failures_total" "Descriptor changes rejected as invalid, or in a cluster differing from process 0's (the previous descriptors stay in force).";
    checkpoint_pause_us: MicrosAsSeconds "aqyl_checkpoint_pause_seconds" "How long the workers paused for the last checkpoint.";
    checkpoint_bytes: Gauge "aqyl_checkpoint_bytes" "Size of the last committed checkpoint, bytes.";
    subscriptions: Gauge "aqyl_subscriptions" "Subscription filters in force (set when the broker acknowledges a subscription).";
    incidents_active: Gauge "aqyl_incidents_active" "Incidents under way (started and not ended), as the status board counts them.";
    city_sensors: Gauge "aqyl_city_sensors" "Sensors in the live city state (and the SensorThings catalogue).";
    city_subscriptions: Gauge "aqyl_city_subscriptions" "Sensor topic filters the city tap is subscribed to (set when the broker acknowledges; 0 while its connection is down).";
    city_readings: Counter "aqyl_city_readings_total" "Readings taken into the live city state from the city tap.";
    city_readings_skipped: Counter "aqyl_city_readings_skipped_total" "Messages the city tap skipped because decoding was behind (a sensor's state catches up with its next reading).";
    city_sensors_refused: Counter "aqyl_city_sensors_refused_total" "Readings of sensors beyond city.max_sensors, left out of the city state.";
    reports_accepted: Counter "aqyl_reports_accepted_total" "Citizen reports accepted by POST /api/reports and handed to the broker.";
    city_states_published: Counter "aqyl_city_states_published_total" "Sensor states published (retained, aqyl/state/<sensor_type>/<sensor_id>; cleared ones included).";
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
        self.problems.set(component, why);
    }

    /// Records that `component` works again.
    pub fn clear_problem(&self, component: &'static str) {
        self.problems.clear(component);
    }

    /// What is wrong now, one line per component; empty when all is well.
    pub fn problems(&self) -> Vec<String> {
        self.problems.lines()
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

    /// Records that the service cannot take messages yet because of `what` (shown by `/ready`).
    pub fn set_not_ready(&self, what: &'static str, why: String) {
        self.not_ready.set(what, why);
    }

    /// Records that `what` no longer keeps the service from taking messages.
    pub fn clear_not_ready(&self, what: &'static str) {
        self.not_ready.clear(what);
    }

    /// Why the service is not ready, one line each; empty when it is: started (recovery
    /// done) and subscribed. (A store that is down does not make it unready: it spills.)
    pub fn not_ready(&self) -> Vec<String> {
        let mut why = self.not_ready.lines();
        if !self.started.load(Relaxed) {
            why.push("service: starting (recovery under way)".into());
        }
        if self.subscriptions.load(Relaxed) == 0 {
            why.push("broker: the ingest subscriptions are not acknowledged yet".into());
        }
        why
    }

    /// Prometheus text exposition format (version 0.0.4, [`CONTENT_TYPE`]).
    pub fn render_prometheus(&self) -> String {
        let scrape = Scrape {
            declared: self
                .declared()
                .map(|(name, help, kind, v)| (name, help, kind, v.load(Relaxed)))
                .collect(),
            rejected: std::array::from_fn(|i| self.rejected[i].load(Relaxed)),
            reports_rejected: std::array::from_fn(|i| self.reports_rejected[i].load(Relaxed)),
            bands: std::array::from_fn(|i| self.quality_bands[i].load(Relaxed)),
        };
        let labels = self
            .process
            .get()
            .map(|p| (std::borrow::Cow::Borrowed("process"), p.clone().into()));
        let mut registry = prometheus_client::registry::Registry::with_labels(labels.into_iter());
        registry.register_collector(Box::new(scrape));
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::prometheus_text::encode(&mut out, &registry);
        out
    }
}

/// The values of one scrape, encoded by `prometheus-client`.
#[derive(Debug)]
struct Scrape {
    declared: Vec<(&'static str, &'static str, Kind, u64)>,
    rejected: [u64; Reason::ALL.len()],
    reports_rejected: [u64; Reason::ALL.len()],
    bands: [u64; QUALITY_BANDS.len()],
}

impl Collector for Scrape {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        for &(name, help, kind, v) in &self.declared {
            match kind {
                Kind::Counter => {
                    // The library appends `_total` to a counter's name.
                    let name = name.strip_suffix("_total").unwrap_or(name);
                    let c = ConstCounter::new(v);
                    c.encode(encoder.encode_descriptor(name, help, None, c.metric_type())?)?;
                }
                Kind::Gauge => {
                    let g = ConstGauge::new(v);
                    g.encode(encoder.encode_descriptor(name, help, None, g.metric_type())?)?;
                }
                Kind::MicrosAsSeconds => {
                    let g = ConstGauge::new(v as f64 / 1e6);
                    g.encode(encoder.encode_descriptor(name, help, None, g.metric_type())?)?;
                }
            }
        }
        let mut family = encoder.encode_descriptor(
            "aqyl_rejected",
            "Rejected inputs by reason.",
            None,
            MetricType::Counter,
        )?;
        for r in Reason::ALL {
            let labels = [("reason", r.to_string())];
            ConstCounter::new(self.rejected[r.index()]).encode(family.encode_family(&labels)?)?;
        }
        let mut family = encoder.encode_descriptor(
            "aqyl_reports_rejected",
            "Citizen reports refused by POST /api/reports, by reason (each also dead-lettered).",
            None,
            MetricType::Counter,
        )?;
        for r in Reason::ALL {
            let labels = [("reason", r.to_string())];
            ConstCounter::new(self.reports_rejected[r.index()])
                .encode(family.encode_family(&labels)?)?;
        }
        let mut family = encoder.encode_descriptor(
            "aqyl_quality_sensors",
            "Sensors whose latest quality score lies in each band (lower bound inclusive).",
            None,
            MetricType::Gauge,
        )?;
        for (band, n) in QUALITY_BANDS.iter().zip(self.bands) {
            ConstGauge::new(n).encode(family.encode_family(&[("band", *band)])?)?;
        }
        Ok(())
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
        m.process.set("1".into()).unwrap();
        let text = m.render_prometheus();
        assert!(
            text.contains("aqyl_rejected_total{process=\"1\",reason=\"wrong_type\"} 2\n")
                && text.contains("aqyl_received_total{process=\"1\"} 0\n"),
            "{text}"
        );
    }

    #[test]
    fn every_metric_is_exposed_once_with_its_help_and_type() {
        let m = Metrics::default();
        m.received.fetch_add(3, Relaxed);
        m.checkpoint_pause_us.store(1_500_000, Relaxed);
        m.checkpoint_bytes.store(4096, Relaxed);
        m.quality_bands[quality_band(0.95)].store(7, Relaxed);
        let text = m.render_prometheus();
        assert!(text.contains("# HELP aqyl_received_total MQTT messages received on ingest topics.\n# TYPE aqyl_received_total counter\naqyl_received_total 3\n"), "{text}");
        assert!(
            text.contains(
                "# TYPE aqyl_checkpoint_pause_seconds gauge\naqyl_checkpoint_pause_seconds 1.5\n"
            ),
            "{text}"
        );
        assert!(text.contains("aqyl_checkpoint_bytes 4096\n"), "{text}");
        assert!(
            text.contains("aqyl_quality_sensors{band=\"0.8-1.0\"} 7\n"),
            "{text}"
        );
        let mut names = std::collections::HashSet::new();
        for (name, _, kind, _) in m.declared() {
            assert!(names.insert(name), "{name} is declared twice");
            assert_eq!(kind == Kind::Counter, name.ends_with("_total"), "{name}");
            assert!(
                text.contains(&format!("\n{name} ")),
                "{name} is not exposed: {text}"
            );
        }
    }

    #[test]
    fn ready_only_once_started_and_subscribed() {
        let m = Metrics::default();
        assert_eq!(m.not_ready().len(), 2, "{:?}", m.not_ready());
        m.started.store(true, Relaxed);
        m.subscriptions.store(3, Relaxed);
        assert!(m.not_ready().is_empty());
        m.set_not_ready("broker", "disconnected".into());
        assert_eq!(m.not_ready(), ["broker: disconnected"]);
    }
}
