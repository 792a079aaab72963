//! The service configuration (`config/aqyl.toml`): typed, validated, with `file:line` errors
//! and the `AQYL_*` environment overrides applied on top (they win over the file).

use crate::error::{ConfigError, ConfigErrors};
use crate::ingest::descriptor::{self, SensorType};
use serde::Deserialize;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;
use toml::Spanned;

/// A secret (password, token): its `Debug` and `Display` never print the value.
#[derive(Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// Wraps a value.
    pub fn new(s: impl Into<String>) -> Self {
        Self(s.into())
    }
    /// The value, for the one place that sends it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("**redacted**")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("**redacted**")
    }
}

/// The whole configuration file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Directory of sensor type descriptors, relative to the config file.
    #[serde(default = "default_sensors_dir")]
    pub sensors_dir: PathBuf,
    /// Directory of event rules (`*.toml`), relative to the config file.
    #[serde(default = "default_rules_dir")]
    pub rules_dir: PathBuf,
    /// How often `aqyl run` looks for changed descriptors and reloads them (`"0s"`: never).
    #[serde(
        default = "default_reload",
        deserialize_with = "crate::duration::deserialize"
    )]
    pub reload_interval: Duration,
    /// Broker connection.
    #[serde(default)]
    pub mqtt: MqttConfig,
    /// Ingest limits.
    #[serde(default)]
    pub ingest: IngestConfig,
    /// Dataflow settings.
    #[serde(default)]
    pub pipeline: PipelineConfig,
    /// MQTT outputs (dead-letter, status).
    #[serde(default)]
    pub outputs: OutputsConfig,
    /// InfluxDB v2 sink.
    #[serde(default)]
    pub influx: InfluxConfig,
    /// Line-protocol file sink.
    #[serde(default)]
    pub file: FileConfig,
    /// HTTP endpoint for `/metrics` and `/health`.
    #[serde(default)]
    pub http: HttpConfig,
    /// Quality of Information scoring.
    #[serde(default)]
    pub quality: QualityConfig,
    /// Where this instance keeps its state on disk.
    #[serde(default)]
    pub state: StateConfig,
}

/// `[state]`: one directory per running instance for everything it keeps on disk (the ingest
/// log, checkpoints of the dataflow's state, the spill of batches the store could not take),
/// so two instances never share files and a service manager can give it a place of its own
/// (systemd `StateDirectory=`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StateConfig {
    /// The directory, relative to the config file (env `AQYL_STATE_DIR`, taken as given).
    #[serde(default = "default_state_dir")]
    pub dir: PathBuf,
    /// Durable ingest: every message is written to the ingest log (fsync, grouped) before it
    /// is acknowledged to the broker, and the dataflow's state is checkpointed, so a crash or
    /// a restart loses nothing and changes no result. `false`: messages are acknowledged when
    /// queued, and a stop or crash loses open windows (faster; for benchmarks and demos).
    #[serde(default = "default_true")]
    pub durable: bool,
    /// How often the dataflow's state is checkpointed (the ingest log is truncated behind
    /// each checkpoint, and a restart replays what came after the last one).
    #[serde(
        default = "default_checkpoint_interval",
        deserialize_with = "crate::duration::deserialize"
    )]
    pub checkpoint_interval: Duration,
}

fn default_state_dir() -> PathBuf {
    PathBuf::from("state")
}

fn default_true() -> bool {
    true
}

fn default_checkpoint_interval() -> Duration {
    Duration::from_secs(10)
}

impl Default for StateConfig {
    fn default() -> Self {
        Self {
            dir: default_state_dir(),
            durable: true,
            checkpoint_interval: default_checkpoint_interval(),
        }
    }
}

fn default_rules_dir() -> PathBuf {
    PathBuf::from("rules")
}

fn default_reload() -> Duration {
    Duration::from_secs(2)
}

fn default_sensors_dir() -> PathBuf {
    PathBuf::from("sensors")
}

/// `[mqtt]`: the broker Aqyl subscribes to and publishes on.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MqttConfig {
    /// Broker URL, `mqtt://host:port` (env `AQYL_MQTT_URL`).
    #[serde(default = "default_mqtt_url")]
    pub url: Spanned<String>,
    /// Client id; default `aqyl-<hostname>`. Keep it stable across restarts so the broker
    /// keeps the persistent session, and unique per running instance.
    pub client_id: Option<String>,
    /// User name (env `AQYL_MQTT_USERNAME`).
    pub username: Option<String>,
    /// Password (env `AQYL_MQTT_PASSWORD`).
    pub password: Option<Secret>,
    /// Keep-alive interval.
    #[serde(
        default = "default_keep_alive",
        deserialize_with = "crate::duration::deserialize"
    )]
    pub keep_alive: Duration,
    /// Start with a clean session (loses messages queued while Aqyl was away). Default false.
    #[serde(default)]
    pub clean_session: bool,
    /// Prefix added to every ingest subscription, e.g. `$share/aqyl/` to spread the load over
    /// several instances with MQTT shared subscriptions.
    #[serde(default)]
    pub subscription_prefix: String,
    /// Longest wait between reconnect attempts (backoff doubles from 100 ms up to this).
    #[serde(
        default = "default_max_backoff",
        deserialize_with = "crate::duration::deserialize"
    )]
    pub max_reconnect_backoff: Duration,
}

fn default_mqtt_url() -> Spanned<String> {
    Spanned::new(0..0, "mqtt://127.0.0.1:1883".into())
}
fn default_keep_alive() -> Duration {
    Duration::from_secs(30)
}
fn default_max_backoff() -> Duration {
    Duration::from_secs(30)
}

impl Default for MqttConfig {
    fn default() -> Self {
        Self {
            url: default_mqtt_url(),
            client_id: None,
            username: None,
            password: None,
            keep_alive: default_keep_alive(),
            clean_session: false,
            subscription_prefix: String::new(),
            max_reconnect_backoff: default_max_backoff(),
        }
    }
}

/// `[ingest]`: limits on what is accepted.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IngestConfig {
    /// Largest payload accepted, in bytes; larger ones are dead-lettered as `oversized`.
    #[serde(default = "default_max_payload")]
    pub max_payload_bytes: usize,
    /// Messages buffered per worker between the MQTT task and the dataflow. When full, the
    /// MQTT task waits (back-pressure to the broker) instead of dropping.
    #[serde(default = "default_queue")]
    pub queue_capacity: usize,
    /// An extra subscription such as `"city/#"`: messages on topics no descriptor matches are
    /// dead-lettered as `unknown_topic` on `aqyl/deadletter/unknown`, so sensors that publish
    /// before they are configured show up instead of going unnoticed. Off by default.
    pub catch_all: Option<String>,
    /// How far a reading's event time may be ahead of the time it was received. Further
    /// ahead, it is dead-lettered as `future`: one sensor with a clock in 2099 must not move
    /// the watermark and make every other sensor's readings late. `"0s"` turns the check off.
    /// Readings that were never received from a broker (replays of files) are not checked.
    #[serde(
        default = "default_max_future",
        deserialize_with = "crate::duration::deserialize"
    )]
    pub max_future: Duration,
}

fn default_max_future() -> Duration {
    Duration::from_secs(300)
}

fn default_max_payload() -> usize {
    64 * 1024
}
fn default_queue() -> usize {
    16 * 1024
}

impl Default for IngestConfig {
    fn default() -> Self {
        Self {
            max_payload_bytes: default_max_payload(),
            queue_capacity: default_queue(),
            catch_all: None,
            max_future: default_max_future(),
        }
    }
}

/// `[pipeline]`: the dataflow.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineConfig {
    /// Timely worker threads.
    #[serde(default = "default_workers")]
    pub workers: Spanned<usize>,
    /// Tumbling window size.
    #[serde(default = "default_window", deserialize_with = "spanned_duration")]
    pub window: Spanned<Duration>,
    /// How far behind the newest event time a record may arrive and still count.
    #[serde(
        default = "default_lateness",
        deserialize_with = "crate::duration::deserialize"
    )]
    pub allowed_lateness: Duration,
    /// After this much wall-clock silence the watermark advances with the wall clock, so
    /// windows close even when sensors stop. `"0s"` disables it (replays).
    #[serde(
        default = "default_idle",
        deserialize_with = "crate::duration::deserialize"
    )]
    pub idle_timeout: Duration,
    /// What happens to a record older than the watermark: `drop` (count and dead-letter it)
    /// or `update` (add it to its closed window and emit the corrected window again, which
    /// overwrites the same series and timestamp in the store).
    #[serde(default)]
    pub late: LatePolicy,
    /// With `late = "update"`: how long after a window closed a late record may still
    /// correct it; older ones are dropped. Closed windows are kept this long.
    #[serde(
        default = "default_update_horizon",
        deserialize_with = "crate::duration::deserialize"
    )]
    pub update_horizon: Duration,
    /// When reading rules judge a reading: `arrival` (at once, in each sensor's order; live
    /// incidents within milliseconds) or `watermark` (once the watermark has passed it, in
    /// event-time order whatever the arrival order; incidents `allowed_lateness` later).
    #[serde(default)]
    pub rule_timing: RuleTiming,
}

/// When reading rules judge a reading (`pipeline.rule_timing`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RuleTiming {
    /// On arrival: a reading newer than everything its sensor has sent is judged at once; an
    /// older one is not judged by the rules (it still counts in windows and quality), and is
    /// counted in `aqyl_rules_out_of_order_total`.
    #[default]
    Arrival,
    /// Once the watermark passes the reading, in event-time order: every arrival order
    /// within the allowed lateness gives the same incidents, `allowed_lateness` later.
    Watermark,
}

/// The late-data policy.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LatePolicy {
    /// Count and dead-letter late records (reason `late`).
    #[default]
    Drop,
    /// Correct and re-emit the closed window, within `update_horizon`.
    Update,
}

fn default_update_horizon() -> Duration {
    Duration::from_secs(3600)
}

fn spanned_duration<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Spanned<Duration>, D::Error> {
    let s: Spanned<String> = Spanned::deserialize(d)?;
    let span = s.span();
    crate::duration::parse(s.get_ref())
        .map(|v| Spanned::new(span, v))
        .map_err(serde::de::Error::custom)
}

fn default_workers() -> Spanned<usize> {
    Spanned::new(0..0, 2)
}
fn default_window() -> Spanned<Duration> {
    Spanned::new(0..0, Duration::from_secs(300))
}
fn default_lateness() -> Duration {
    Duration::from_secs(600)
}
fn default_idle() -> Duration {
    Duration::from_secs(30)
}

impl Default for PipelineConfig {
    fn default() -> Self {
        Self {
            workers: default_workers(),
            window: default_window(),
            allowed_lateness: default_lateness(),
            idle_timeout: default_idle(),
            late: LatePolicy::Drop,
            update_horizon: default_update_horizon(),
            rule_timing: RuleTiming::Arrival,
        }
    }
}

/// `[outputs]`: MQTT topics Aqyl publishes on.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutputsConfig {
    /// Prefix of every output topic (`aqyl` → `aqyl/deadletter/traffic`).
    #[serde(default = "default_prefix")]
    pub topic_prefix: String,
    /// Also publish every closed window as JSON on
    /// `<prefix>/aggregates/<sensor_type>/<subject>` (QoS 1), for live dashboards.
    #[serde(default)]
    pub aggregates: bool,
}

fn default_prefix() -> String {
    "aqyl".into()
}

impl Default for OutputsConfig {
    fn default() -> Self {
        Self {
            topic_prefix: default_prefix(),
            aggregates: false,
        }
    }
}

/// `[influx]`: the InfluxDB v2 write API.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InfluxConfig {
    /// Write to InfluxDB (also turned on by `AQYL_INFLUX_URL`).
    #[serde(default)]
    pub enabled: bool,
    /// Base URL, e.g. `http://127.0.0.1:8086` (env `AQYL_INFLUX_URL`).
    #[serde(default = "default_influx_url")]
    pub url: String,
    /// Organization (env `AQYL_INFLUX_ORG`).
    #[serde(default = "default_org")]
    pub org: String,
    /// Bucket (env `AQYL_INFLUX_BUCKET`).
    #[serde(default = "default_org")]
    pub bucket: String,
    /// API token (env `AQYL_INFLUX_TOKEN`).
    #[serde(default)]
    pub token: Secret,
    /// Most points per write request.
    #[serde(default = "default_batch")]
    pub batch_size: usize,
    /// Where batches wait during an outage, relative to `[state] dir`; replayed when the
    /// store is back, also after a restart.
    #[serde(default = "default_spill")]
    pub spill_dir: PathBuf,
    /// Longest a point waits before its batch is sent.
    #[serde(
        default = "default_flush",
        deserialize_with = "crate::duration::deserialize"
    )]
    pub flush_interval: Duration,
    /// Longest a write may take before it counts as failed and its batch is spilled (a store
    /// that accepts connections and never answers must not stop the pipeline).
    #[serde(
        default = "default_write_timeout",
        deserialize_with = "crate::duration::deserialize"
    )]
    pub write_timeout: Duration,
    /// Longest wait between retries of a failed write (backoff doubles from 100 ms).
    #[serde(
        default = "default_max_backoff",
        deserialize_with = "crate::duration::deserialize"
    )]
    pub max_backoff: Duration,
}

fn default_influx_url() -> String {
    "http://127.0.0.1:8086".into()
}
fn default_org() -> String {
    "aqyl".into()
}
fn default_write_timeout() -> Duration {
    Duration::from_secs(10)
}

fn default_spill() -> PathBuf {
    PathBuf::from("spill/influx")
}
fn default_batch() -> usize {
    5000
}
fn default_flush() -> Duration {
    Duration::from_secs(1)
}

impl Default for InfluxConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            url: default_influx_url(),
            org: default_org(),
            bucket: default_org(),
            token: Secret::default(),
            batch_size: default_batch(),
            spill_dir: default_spill(),
            write_timeout: default_write_timeout(),
            flush_interval: default_flush(),
            max_backoff: default_max_backoff(),
        }
    }
}

/// `[quality]`: Quality of Information scoring of every sensor stream.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QualityConfig {
    /// Score every stream (reports, roll-ups, quality incidents).
    pub enabled: bool,
    /// A sensor whose score stays below this for more than `alert_after` starts a `quality`
    /// incident.
    pub threshold: f64,
    /// The incident ends once the score has stayed at or above `threshold + recover_margin`
    /// for more than `alert_after`.
    pub recover_margin: f64,
    /// How long the score must stay below `threshold` to start an incident (or at or above
    /// `threshold + recover_margin` to end it), in expected intervals of the sensor's type:
    /// every report from the first low one to the current one low, spanning more than this.
    /// Reports are readings, unusable or late messages and watchdog failures (one per missed
    /// interval, 1.05 intervals apart), so with 1 a sensor reporting every interval needs
    /// three low readings in a row, and a silent one two missed intervals. `0`: at once.
    pub alert_after: f64,
    /// Processing delay inside Aqyl above which latency fails.
    #[serde(deserialize_with = "crate::duration::deserialize")]
    pub max_latency: Duration,
    /// Rating window of frequency and correctness (CityPulse: 20).
    pub long_window: usize,
    /// Rating window of age, latency and completeness (CityPulse: 5).
    pub short_window: usize,
    /// Identical readings in a row that count as a stuck sensor.
    pub flat_line: usize,
    /// Readings of history the spike detector compares against.
    pub spike_window: usize,
    /// Robust z-score beyond which a value is a spike.
    pub spike_threshold: f64,
    /// Keep readings that fail correctness (a value outside its range) out of aggregates and
    /// event rules; they are still scored and counted (`aqyl_quality_excluded_total`).
    pub exclude_incorrect: bool,
    /// Which clock the watchdog and the age metric follow: `auto` (wall clock when the
    /// pipeline runs live, i.e. `pipeline.idle_timeout` is set; event time for replays),
    /// `wall` or `event`.
    pub clock: QualityClock,
}

/// The clock of the watchdog and the age metric.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum QualityClock {
    /// Wall clock live, event time in replays.
    #[default]
    Auto,
    /// The wall clock.
    Wall,
    /// Event time.
    Event,
}

impl QualityConfig {
    /// Whether the watchdog and age follow the wall clock, for a pipeline that runs `live`
    /// (an idle timeout is set) or replays.
    pub fn wall_clock(&self, live: bool) -> bool {
        match self.clock {
            QualityClock::Wall => true,
            QualityClock::Event => false,
            QualityClock::Auto => live,
        }
    }
}

impl Default for QualityConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            threshold: 0.6,
            recover_margin: 0.1,
            alert_after: 1.0,
            max_latency: Duration::from_secs(1),
            long_window: crate::quality::LONG_WINDOW,
            short_window: crate::quality::SHORT_WINDOW,
            flat_line: 3,
            spike_window: 12,
            spike_threshold: 8.0,
            exclude_incorrect: true,
            clock: QualityClock::Auto,
        }
    }
}

/// `[file]`: line-protocol files, the zero-install sink.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// Append aggregates to `<dir>/aggregate.lp`.
    #[serde(default)]
    pub enabled: bool,
    /// Directory (relative to the working directory).
    #[serde(default = "default_data_dir")]
    pub dir: PathBuf,
}

fn default_data_dir() -> PathBuf {
    PathBuf::from("data")
}

impl Default for FileConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            dir: default_data_dir(),
        }
    }
}

/// `[http]`: metrics and health endpoint.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    /// Listen address such as `127.0.0.1:9464` (env `AQYL_HTTP_ADDR`); off when absent.
    pub addr: Option<String>,
}

/// A parsed MQTT broker URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MqttUrl {
    /// Host name or address.
    pub host: String,
    /// Port.
    pub port: u16,
    /// TLS requested (`mqtts://`).
    pub tls: bool,
}

impl MqttUrl {
    /// Parses `mqtt://host[:port]`, `tcp://…` or `mqtts://…`.
    pub fn parse(url: &str) -> Result<Self, String> {
        let (scheme, rest) = url.split_once("://").ok_or_else(|| {
            format!("broker URL {url:?} has no scheme; write it like mqtt://127.0.0.1:1883")
        })?;
        let tls = match scheme {
            "mqtt" | "tcp" => false,
            "mqtts" | "ssl" => true,
            other => {
                return Err(format!(
                    "broker URL scheme {other:?} is not supported; use mqtt:// or mqtts://"
                ))
            }
        };
        let authority = rest.split(['/', '?']).next().unwrap_or("");
        if authority.contains('@') {
            return Err("put MQTT credentials in mqtt.username/mqtt.password (or AQYL_MQTT_USERNAME/AQYL_MQTT_PASSWORD), not in the URL".into());
        }
        let default_port = if tls { 8883 } else { 1883 };
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => (
                h,
                p.parse::<u16>()
                    .map_err(|_| format!("broker URL {url:?} has an invalid port {p:?}"))?,
            ),
            _ => (authority, default_port),
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() {
            return Err(format!("broker URL {url:?} has no host"));
        }
        Ok(Self {
            host: host.to_string(),
            port,
            tls,
        })
    }
}

impl Loaded {
    /// `[state] dir`, resolved against the configuration file's directory.
    pub fn state_dir(&self) -> PathBuf {
        self.path
            .parent()
            .unwrap_or(Path::new("."))
            .join(&self.config.state.dir)
    }
}

/// A loaded configuration: the file, its sensor types, and where they came from.
#[derive(Debug, Clone)]
pub struct Loaded {
    /// The configuration, overrides applied.
    pub config: Config,
    /// The sensor types from `sensors_dir`.
    pub sensor_types: Vec<SensorType>,
    /// The configuration file.
    pub path: PathBuf,
    /// `sensors_dir` resolved against the file's directory.
    pub sensors_dir: PathBuf,
    /// The event rules from `rules_dir`.
    pub rules: Vec<crate::rules::Rule>,
}

impl Config {
    /// Parses configuration text (no overrides, no descriptor loading).
    pub fn from_toml(path: &Path, text: &str) -> Result<Self, ConfigErrors> {
        let config: Config =
            toml::from_str(text).map_err(|e| ConfigError::from_toml(path, text, &e))?;
        let mut errors = Vec::new();
        let at = |span: std::ops::Range<usize>, msg: String| {
            ConfigError::at(path, text, (span.end > 0).then_some(span.start), msg)
        };
        match MqttUrl::parse(config.mqtt.url.get_ref()) {
            Err(e) => errors.push(at(config.mqtt.url.span(), e)),
            Ok(url) if url.tls => errors.push(at(
                config.mqtt.url.span(),
                "mqtts:// is not supported yet: connect over mqtt:// (e.g. through a local TLS-terminating broker bridge)".into(),
            )),
            Ok(_) => {}
        }
        if let Some(addr) = &config.http.addr {
            if addr.parse::<std::net::SocketAddr>().is_err() {
                errors.push(ConfigError::at(
                    path,
                    text,
                    text.find("[http]"),
                    format!("http.addr {addr:?} is not an address to listen on; write it as IP:port, e.g. \"127.0.0.1:9464\""),
                ));
            }
        }
        let workers = *config.pipeline.workers.get_ref();
        if !(1..=256).contains(&workers) {
            errors.push(at(
                config.pipeline.workers.span(),
                format!("pipeline.workers is {workers}; use 1 to 256"),
            ));
        }
        if config.pipeline.window.get_ref().as_millis() == 0 {
            errors.push(at(
                config.pipeline.window.span(),
                "pipeline.window must be at least 1ms".into(),
            ));
        }
        if config.mqtt.username.is_some() != config.mqtt.password.is_some() {
            errors.push(ConfigError::file(
                path,
                "mqtt.username and mqtt.password must both be set or both be absent",
            ));
        }
        if config.ingest.queue_capacity == 0 {
            errors.push(ConfigError::at(
                path,
                text,
                text.find("queue_capacity"),
                "ingest.queue_capacity must be at least 1",
            ));
        }
        if config.state.checkpoint_interval < Duration::from_millis(100) {
            errors.push(ConfigError::at(
                path,
                text,
                text.find("checkpoint_interval"),
                "state.checkpoint_interval must be at least 100ms",
            ));
        }
        if config.influx.batch_size == 0 {
            errors.push(ConfigError::at(
                path,
                text,
                text.find("batch_size"),
                "influx.batch_size must be at least 1",
            ));
        }
        let q = &config.quality;
        // (A threshold outside 0..1 is reported below.)
        if (0.0..=1.0).contains(&q.threshold)
            && (!(0.0..=1.0).contains(&q.recover_margin)
                || q.threshold + q.recover_margin > 1.0
                || !(0.0..=q.long_window as f64).contains(&q.alert_after))
        {
            errors.push(ConfigError::at(
                path,
                text,
                text.find("[quality]"),
                format!(
                    "[quality]: recover_margin must be at least 0 with threshold + recover_margin at most 1 (or no incident could end), and alert_after between 0 and long_window ({}) expected intervals; got recover_margin {}, threshold {}, alert_after {}",
                    q.long_window, q.recover_margin, q.threshold, q.alert_after
                ),
            ));
        }
        if !(0.0..=1.0).contains(&q.threshold)
            || q.long_window < 2
            || q.short_window < 2
            || q.flat_line < 2
            || q.spike_window < 4
            || q.spike_threshold.is_nan()
            || q.spike_threshold <= 0.0
        {
            errors.push(ConfigError::at(
                path,
                text,
                text.find("[quality]"),
                "[quality]: threshold must be within 0..1, long_window and short_window at least 2, flat_line at least 2, spike_window at least 4 and spike_threshold above 0",
            ));
        }
        if errors.is_empty() {
            Ok(config)
        } else {
            Err(ConfigErrors(errors))
        }
    }

    /// Applies the `AQYL_*` environment overrides; `env` looks a variable up.
    pub fn apply_env(&mut self, env: impl Fn(&str) -> Option<String>) -> Result<(), String> {
        if let Some(url) = env("AQYL_MQTT_URL") {
            MqttUrl::parse(&url).map_err(|e| format!("AQYL_MQTT_URL: {e}"))?;
            self.mqtt.url = Spanned::new(0..0, url);
        }
        if let Some(u) = env("AQYL_MQTT_USERNAME") {
            self.mqtt.username = Some(u);
        }
        if let Some(p) = env("AQYL_MQTT_PASSWORD") {
            self.mqtt.password = Some(Secret::new(p));
        }
        if let Some(url) = env("AQYL_INFLUX_URL") {
            self.influx.url = url;
            self.influx.enabled = true;
        }
        if let Some(org) = env("AQYL_INFLUX_ORG") {
            self.influx.org = org;
        }
        if let Some(bucket) = env("AQYL_INFLUX_BUCKET") {
            self.influx.bucket = bucket;
        }
        if let Some(token) = env("AQYL_INFLUX_TOKEN") {
            self.influx.token = Secret::new(token);
        }
        if let Some(addr) = env("AQYL_HTTP_ADDR") {
            self.http.addr = Some(addr);
        }
        if let Some(dir) = env("AQYL_STATE_DIR") {
            self.state.dir = PathBuf::from(dir);
        }
        if self.mqtt.username.is_some() != self.mqtt.password.is_some() {
            return Err("the MQTT username and password must both be set or both be absent".into());
        }
        Ok(())
    }
}

/// Loads a configuration file, applies the environment and loads its sensor descriptors,
/// reporting every problem with its file and line.
pub fn load(path: &Path, env: impl Fn(&str) -> Option<String>) -> Result<Loaded, ConfigErrors> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        ConfigError::file(
            path,
            format!("cannot read the configuration file: {e}; pass another with --config PATH"),
        )
    })?;
    let mut config = Config::from_toml(path, &text)?;
    config
        .apply_env(env)
        .map_err(|e| ConfigError::file(path, e))?;
    let base = path.parent().unwrap_or(Path::new("."));
    let sensors_dir = base.join(&config.sensors_dir);
    let sensor_types = descriptor::load_dir(&sensors_dir)?;
    let rules = crate::rules::load_rules(&base.join(&config.rules_dir), &sensor_types)?;
    Ok(Loaded {
        config,
        sensor_types,
        rules,
        path: path.to_path_buf(),
        sensors_dir,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_sane() {
        let c = Config::from_toml(Path::new("a.toml"), "").unwrap();
        assert_eq!(*c.pipeline.workers.get_ref(), 2);
        assert_eq!(*c.pipeline.window.get_ref(), Duration::from_secs(300));
        assert_eq!(c.outputs.topic_prefix, "aqyl");
        assert!(!c.influx.enabled);
    }

    #[test]
    fn quality_settings_are_checked() {
        let ok = Config::from_toml(Path::new("aqyl.toml"), "").unwrap();
        assert!(ok.quality.enabled && ok.quality.exclude_incorrect);
        assert_eq!(ok.quality.clock, QualityClock::Auto);
        assert_eq!(
            (ok.quality.alert_after, ok.quality.recover_margin),
            (1.0, 0.1)
        );
        let text = "[pipeline]\nworkers = 2\n\n[quality]\nthreshold = 1.5\n";
        let err = Config::from_toml(Path::new("aqyl.toml"), text)
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("aqyl.toml:4: [quality]: threshold must be within 0..1"),
            "{err}"
        );
        let text = "[quality]\nthreshold = 0.6\nrecover_margin = 0.5\n";
        let err = Config::from_toml(Path::new("aqyl.toml"), text)
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("aqyl.toml:1: [quality]: recover_margin must be at least 0 with threshold + recover_margin at most 1"),
            "{err}"
        );
        let err = Config::from_toml(Path::new("aqyl.toml"), "[quality]\nalert_after = -1.0\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("alert_after between 0 and long_window (20)"),
            "{err}"
        );
        let err = Config::from_toml(Path::new("aqyl.toml"), "[quality]\nalert_afte = 2\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("aqyl.toml:2: unknown field `alert_afte`"),
            "{err}"
        );
        let ok = Config::from_toml(
            Path::new("aqyl.toml"),
            "[quality]\nalert_after = 2.5\nrecover_margin = 0.0\n",
        )
        .unwrap();
        assert_eq!(
            (ok.quality.alert_after, ok.quality.recover_margin),
            (2.5, 0.0)
        );
        let err = Config::from_toml(Path::new("aqyl.toml"), "[quality]\nclock = \"sundial\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("aqyl.toml:2:"), "{err}");
    }

    #[test]
    fn errors_name_file_and_line() {
        let text = "[pipeline]\nworkers = 0\nwindow = \"5 parsecs\"\n";
        let err = Config::from_toml(Path::new("aqyl.toml"), text)
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("aqyl.toml:3: invalid duration"), "{err}");
        let text = "[pipeline]\nworkers = 0\n";
        let err = Config::from_toml(Path::new("aqyl.toml"), text)
            .unwrap_err()
            .to_string();
        assert_eq!(err, "aqyl.toml:2: pipeline.workers is 0; use 1 to 256");
        let text = "[mqtt]\nurl = \"http://x\"\n";
        let err = Config::from_toml(Path::new("aqyl.toml"), text)
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("aqyl.toml:2: broker URL scheme \"http\""),
            "{err}"
        );
        let err = Config::from_toml(
            Path::new("aqyl.toml"),
            "[mqtt]\nurl = \"mqtt://h\"\nport = 1\n",
        )
        .unwrap_err();
        assert!(
            err.to_string()
                .starts_with("aqyl.toml:3: unknown field `port`"),
            "{err}"
        );
    }

    #[test]
    fn environment_wins_over_the_file() {
        let mut c =
            Config::from_toml(Path::new("a.toml"), "[mqtt]\nurl = \"mqtt://file:1\"\n").unwrap();
        let env = |k: &str| match k {
            "AQYL_MQTT_URL" => Some("mqtt://env:2".to_string()),
            "AQYL_INFLUX_URL" => Some("http://vm:8428".to_string()),
            "AQYL_INFLUX_TOKEN" => Some("s3cret".to_string()),
            "AQYL_HTTP_ADDR" => Some("127.0.0.1:9".to_string()),
            _ => None,
        };
        c.apply_env(env).unwrap();
        assert_eq!(c.mqtt.url.get_ref(), "mqtt://env:2");
        assert!(c.influx.enabled);
        assert_eq!(c.influx.url, "http://vm:8428");
        assert_eq!(c.influx.token.expose(), "s3cret");
        assert!(
            !format!("{c:?}").contains("s3cret"),
            "secrets are redacted in Debug"
        );
        assert_eq!(c.http.addr.as_deref(), Some("127.0.0.1:9"));
        assert!(c
            .apply_env(|k| (k == "AQYL_MQTT_URL").then(|| "nope".into()))
            .is_err());
        assert!(c
            .apply_env(|k| (k == "AQYL_MQTT_USERNAME").then(|| "u".into()))
            .is_err());
    }

    #[test]
    fn mqtt_urls() {
        assert_eq!(
            MqttUrl::parse("mqtt://127.0.0.1:1883").unwrap(),
            MqttUrl {
                host: "127.0.0.1".into(),
                port: 1883,
                tls: false
            }
        );
        assert_eq!(MqttUrl::parse("mqtts://broker").unwrap().port, 8883);
    }

    #[test]
    fn state_lives_in_one_directory_beside_the_config_unless_the_environment_says_otherwise() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("sensors")).unwrap();
        std::fs::create_dir(dir.path().join("rules")).unwrap();
        std::fs::write(
            dir.path().join("sensors/t.toml"),
            "name = \"t\"\n[[fields]]\nname = \"v\"\n",
        )
        .unwrap();
        let file = dir.path().join("aqyl.toml");
        std::fs::write(&file, "").unwrap();
        let loaded = load(&file, |_| None).unwrap();
        assert_eq!(loaded.state_dir(), dir.path().join("state"));
        let loaded = load(&file, |k| {
            (k == "AQYL_STATE_DIR").then(|| "/var/lib/aqyl".into())
        })
        .unwrap();
        assert_eq!(loaded.state_dir(), PathBuf::from("/var/lib/aqyl"));
    }

    #[test]
    fn check_refuses_what_run_would_refuse_with_the_line() {
        let err = |text: &str| {
            Config::from_toml(Path::new("aqyl.toml"), text)
                .unwrap_err()
                .to_string()
        };
        let tls = err("[mqtt]\nurl = \"mqtts://broker\"\n");
        assert!(
            tls.contains("aqyl.toml:2") && tls.contains("not supported yet"),
            "{tls}"
        );
        let http = err("[http]\naddr = \"not an address\"\n");
        assert!(
            http.contains("aqyl.toml:1") && http.contains("IP:port"),
            "{http}"
        );
        let batch = err("[influx]\nbatch_size = 0\n");
        assert!(
            batch.contains("aqyl.toml:2") && batch.contains("batch_size"),
            "{batch}"
        );
        assert_eq!(MqttUrl::parse("mqtt://[::1]:1884").unwrap().host, "::1");
        assert!(MqttUrl::parse("broker:1883").is_err());
        assert!(MqttUrl::parse("mqtt://u:p@broker").is_err());
        assert!(MqttUrl::parse("mqtt://broker:99999").is_err());
    }
}
