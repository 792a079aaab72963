//! The service configuration (`config/aqyl.toml`): typed, validated, with `file:line` errors
//! and the `AQYL_*` environment overrides applied on top (they win over the file).
//!
//! This module holds the file as a whole ([`Config`]), loading ([`load`], [`Loaded`]),
//! validation and the environment overrides. Each section's struct lives beside what it
//! configures and is re-exported here, so `aqyl_core::config::X` names every one:
//!
//! | section | struct | lives in |
//! |---|---|---|
//! | `[ingest]` | [`IngestConfig`] | [`crate::ingest::config`] |
//! | `[pipeline]` | [`PipelineConfig`], [`LatePolicy`], [`RuleTiming`] | [`crate::windows::config`] |
//! | `[quality]` | [`QualityConfig`], [`QualityClock`] | [`crate::quality::config`] |
//! | `[mqtt]`, `[outputs]` | [`MqttConfig`], [`MqttUrl`], [`OutputsConfig`] | `config/mqtt.rs` |
//! | `[influx]`, `[file]` | [`InfluxConfig`], [`FileConfig`] | `config/sinks.rs` |
//! | `[state]`, `[http]` | [`StateConfig`], [`HttpConfig`] | `config/service.rs` |
//! | `[cluster]` | [`ClusterConfig`] | `config/cluster.rs` |
//!
//! The last four files hold the sections of components in other crates (the MQTT edge in
//! `aqyl-mqtt`, the sinks in `aqyl-sink`, the durable state and the HTTP endpoint in the `aqyl`
//! binary with `aqyl-state`); aqyl-core depends on none of them, so their sections stay here.

mod cluster;
mod file_setting;
mod mqtt;
mod service;
mod sinks;

pub use crate::ingest::config::IngestConfig;
pub use crate::quality::config::{QualityClock, QualityConfig};
pub use crate::windows::config::{LatePolicy, PipelineConfig, RuleTiming};
pub use cluster::ClusterConfig;
pub use file_setting::{read_secret, FileSetting};
pub use mqtt::{BrokerSettings, MqttConfig, MqttUrl, OutputsConfig};
pub use service::{CityConfig, HttpConfig, StateConfig};
pub use sinks::{FileConfig, InfluxConfig};

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
    /// Directory of contextual subscriptions (`*.toml`), relative to the config file.
    #[serde(default = "default_subscriptions_dir")]
    pub subscriptions_dir: PathBuf,
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
    /// City services: live state and the sensor catalogue.
    #[serde(default)]
    pub city: CityConfig,
    /// One dataflow over several processes.
    #[serde(default)]
    pub cluster: ClusterConfig,
    /// Citizen reports over HTTP (`POST /api/reports`).
    #[serde(default)]
    pub reports: crate::reports::ReportsConfig,
}

fn default_rules_dir() -> PathBuf {
    PathBuf::from("rules")
}

fn default_subscriptions_dir() -> PathBuf {
    PathBuf::from("subscriptions")
}

fn default_reload() -> Duration {
    Duration::from_secs(2)
}

fn default_sensors_dir() -> PathBuf {
    PathBuf::from("sensors")
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
    /// The contextual subscriptions from `subscriptions_dir`.
    pub subscriptions: Vec<crate::subscriptions::Subscription>,
    /// The `[[corroborate]]` sections of the rule files.
    pub corroborate: Vec<crate::rules::corroborate::CorroborateRule>,
}

impl Config {
    /// Parses configuration text (no overrides, no descriptor loading).
    pub fn from_toml(path: &Path, text: &str) -> Result<Self, ConfigErrors> {
        let mut config: Config =
            toml::from_str(text).map_err(|e| ConfigError::from_toml(path, text, &e))?;
        config.locate_files(path, text);
        let mut errors = Vec::new();
        let at = |span: std::ops::Range<usize>, msg: String| {
            ConfigError::at(path, text, (span.end > 0).then_some(span.start), msg)
        };
        if let Err(e) = MqttUrl::parse(config.mqtt.url.get_ref()) {
            errors.push(at(config.mqtt.url.span(), e));
        }
        if let Err(e) = sinks::check_influx_url(&config.influx.url) {
            // The line of `url` in [influx] (or of the value, written with a dotted key).
            let key = text.find("[influx]").and_then(|t| {
                let table = &text[t..];
                let end = table[1..].find("\n[").map_or(table.len(), |e| e + 1);
                table[..end].find("\nurl").map(|u| t + u + 1)
            });
            let value = text.find(&format!("\"{}\"", config.influx.url));
            errors.push(ConfigError::at(
                path,
                text,
                key.or(value),
                format!("influx.url: {e}"),
            ));
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
        if let Some(problem) = config
            .http
            .tiles
            .as_deref()
            .and_then(service::tiles_problem)
        {
            errors.push(ConfigError::at(
                path,
                text,
                text.find("tiles"),
                format!("http.tiles: {problem}"),
            ));
        }
        for problem in config.reports.problems() {
            errors.push(ConfigError::at(path, text, text.find("[reports]"), problem));
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
        let has_password = config.mqtt.password.is_some() || config.mqtt.password_file.is_some();
        if config.mqtt.username.is_some() != has_password {
            errors.push(ConfigError::at(
                path,
                text,
                text.find("[mqtt]"),
                "mqtt.username and mqtt.password (or mqtt.password_file) must both be set or both be absent",
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
        if config.influx.max_spill < 1 << 20 {
            errors.push(ConfigError::at(
                path,
                text,
                text.find("max_spill"),
                "influx.max_spill must be at least 1MiB (one batch must fit)",
            ));
        }
        if !(1..=1000).contains(&config.city.observations) || config.city.max_sensors == 0 {
            errors.push(ConfigError::at(
                path,
                text,
                text.find("[city]"),
                format!(
                    "[city]: observations must be 1 to 1000 and max_sensors at least 1; got observations {} and max_sensors {}",
                    config.city.observations, config.city.max_sensors
                ),
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
            || !(2..=crate::quality::metrics::MAX_WINDOW).contains(&q.long_window)
            || !(2..=crate::quality::metrics::MAX_WINDOW).contains(&q.short_window)
            || q.flat_line < 2
            || q.spike_window < 4
            || q.spike_threshold.is_nan()
            || q.spike_threshold <= 0.0
        {
            errors.push(ConfigError::at(
                path,
                text,
                text.find("[quality]"),
                "[quality]: threshold must be within 0..1, long_window and short_window between 2 and 64, flat_line at least 2, spike_window at least 4 and spike_threshold above 0",
            ));
        }
        if config.mqtt.subscription_prefix.starts_with("$share/") {
            errors.push(ConfigError::at(
                path,
                text,
                text.find("subscription_prefix"),
                "mqtt.subscription_prefix starts with $share/: independent instances on a shared subscription each see part of every sensor's readings and write partial windows over one another. Run them as one cluster ([cluster] hosts and process), which subscribes through $share/<cluster.group>/ itself, and leave this prefix for a topic namespace",
            ));
        }
        if let Some(problem) = config.cluster_problem() {
            errors.push(ConfigError::at(path, text, text.find("[cluster]"), problem));
        }
        if errors.is_empty() {
            Ok(config)
        } else {
            Err(ConfigErrors(errors))
        }
    }

    /// What is wrong with `[cluster]`. (A durable cluster takes its checkpoints together:
    /// every `[state]` setting works in a cluster.)
    fn cluster_problem(&self) -> Option<String> {
        self.cluster.problem()
    }

    /// Gives every file setting read from the file its key, line and place beside the file.
    fn locate_files(&mut self, path: &Path, text: &str) {
        let base = path.parent().unwrap_or(Path::new("."));
        let m = &mut self.mqtt;
        for (setting, key) in [
            (&mut m.ca_file, "mqtt.ca_file"),
            (&mut m.client_cert, "mqtt.client_cert"),
            (&mut m.client_key, "mqtt.client_key"),
            (&mut m.password_file, "mqtt.password_file"),
            (&mut self.influx.ca_file, "influx.ca_file"),
            (&mut self.http.token_file, "http.token_file"),
        ] {
            if let Some(s) = setting {
                s.locate(key, text, base);
            }
        }
    }

    /// Applies the `AQYL_*` environment overrides; `env` looks a variable up. Paths from the
    /// environment are taken as given (relative to the working directory).
    pub fn apply_env(&mut self, env: impl Fn(&str) -> Option<String>) -> Result<(), String> {
        // An empty path variable counts as unset (`AQYL_MQTT_CA_FILE=` in a container file).
        let file = |var: &'static str| {
            env(var)
                .filter(|p| !p.is_empty())
                .map(|p| FileSetting::given(var, p))
        };
        if env("AQYL_MQTT_PASSWORD").is_some() && env("AQYL_MQTT_PASSWORD_FILE").is_some() {
            return Err(
                "AQYL_MQTT_PASSWORD and AQYL_MQTT_PASSWORD_FILE are both set; keep one of them"
                    .into(),
            );
        }
        if env("AQYL_HTTP_TOKEN").is_some() && env("AQYL_HTTP_TOKEN_FILE").is_some() {
            return Err(
                "AQYL_HTTP_TOKEN and AQYL_HTTP_TOKEN_FILE are both set; keep one of them".into(),
            );
        }
        if let Some(f) = file("AQYL_MQTT_PASSWORD_FILE") {
            self.mqtt.password = None;
            self.mqtt.password_file = Some(f);
        }
        if let Some(f) = file("AQYL_MQTT_CA_FILE") {
            self.mqtt.ca_file = Some(f);
        }
        if let Some(f) = file("AQYL_MQTT_CLIENT_CERT") {
            self.mqtt.client_cert = Some(f);
        }
        if let Some(f) = file("AQYL_MQTT_CLIENT_KEY") {
            self.mqtt.client_key = Some(f);
        }
        if let Some(f) = file("AQYL_INFLUX_CA_FILE") {
            self.influx.ca_file = Some(f);
        }
        if let Some(t) = env("AQYL_HTTP_TOKEN") {
            self.http.token_file = None;
            self.http.token = Some(Secret::new(t));
        }
        if let Some(f) = file("AQYL_HTTP_TOKEN_FILE") {
            self.http.token = None;
            self.http.token_file = Some(f);
        }
        if let Some(url) = env("AQYL_MQTT_URL") {
            MqttUrl::parse(&url).map_err(|e| format!("AQYL_MQTT_URL: {e}"))?;
            self.mqtt.url = Spanned::new(0..0, url);
        }
        if let Some(u) = env("AQYL_MQTT_USERNAME") {
            self.mqtt.username = Some(u);
        }
        if let Some(p) = env("AQYL_MQTT_PASSWORD") {
            self.mqtt.password_file = None;
            self.mqtt.password = Some(Secret::new(p));
        }
        if let Some(url) = env("AQYL_INFLUX_URL") {
            sinks::check_influx_url(&url).map_err(|e| format!("AQYL_INFLUX_URL: {e}"))?;
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
        if let Some(d) = env("AQYL_STATE_DURABLE") {
            self.state.durable = match d.trim() {
                "true" | "1" => true,
                "false" | "0" => false,
                _ => return Err(format!("AQYL_STATE_DURABLE is {d:?}; write true or false")),
            };
        }
        self.cluster.apply_env(&env)?;
        if let Some(problem) = self.cluster_problem() {
            return Err(problem);
        }
        if self.mqtt.username.is_some()
            != (self.mqtt.password.is_some() || self.mqtt.password_file.is_some())
        {
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
    // The broker's settings and the HTTP token as every command reads them (the password
    // and token files too); the certificates are read where they are used (aqyl-connect).
    let mut errors = Vec::new();
    if let Err(e) = config.mqtt.broker(path) {
        errors.extend(e.0);
    }
    if let Err(e) = config.http.bearer_token(path) {
        errors.extend(e.0);
    }
    let base = path.parent().unwrap_or(Path::new("."));
    let sensors_dir = base.join(&config.sensors_dir);
    let subscriptions = crate::subscriptions::load_dir(&base.join(&config.subscriptions_dir))
        .unwrap_or_else(|e| {
            errors.extend(e.0);
            Vec::new()
        });
    let loaded = descriptor::load_dir(&sensors_dir).and_then(|sensor_types| {
        let rules_dir = base.join(&config.rules_dir);
        let rules = crate::rules::load_rules(&rules_dir, &sensor_types)?;
        let names: Vec<&str> = sensor_types.iter().map(|t| &*t.name).collect();
        let corroborate = crate::rules::corroborate::load_dir(&rules_dir, &names)?;
        Ok((sensor_types, (rules, corroborate)))
    });
    let (sensor_types, (rules, corroborate)) = match loaded {
        Ok(l) if errors.is_empty() => l,
        Ok(_) => return Err(ConfigErrors(errors)),
        Err(e) => {
            errors.extend(e.0);
            return Err(ConfigErrors(errors));
        }
    };
    Ok(Loaded {
        config,
        sensor_types,
        rules,
        subscriptions,
        corroborate,
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
    fn tls_and_credential_files_are_resolved_beside_the_config_and_named_by_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("aqyl.toml");
        std::fs::write(dir.path().join("mqtt.pass"), "hunter2-from-file\r\n").unwrap();
        let text = "[mqtt]\nurl = \"mqtts://broker.city:8883\"\nusername = \"aqyl\"\npassword_file = \"mqtt.pass\"\nca_file = \"tls/ca.pem\"\nclient_cert = \"/etc/aqyl/client.pem\"\nclient_key = \"/etc/aqyl/client.key\"\n[influx]\nca_file = \"tls/store-ca.pem\"\n";
        let c = Config::from_toml(&path, text).unwrap();
        let ca = c.mqtt.ca_file.clone().unwrap();
        assert_eq!(
            ca.path,
            dir.path().join("tls/ca.pem"),
            "relative to the file"
        );
        assert_eq!((ca.name.as_str(), ca.line), ("mqtt.ca_file", Some(5)));
        assert_eq!(
            c.mqtt.client_cert.as_ref().unwrap().path,
            PathBuf::from("/etc/aqyl/client.pem"),
            "absolute paths stay"
        );
        assert_eq!(c.influx.ca_file.as_ref().unwrap().line, Some(9));
        let broker = c.mqtt.broker(&path).unwrap();
        assert!(broker.url.tls);
        assert_eq!(broker.address(), "mqtts://broker.city:8883");
        assert_eq!(
            broker.password.as_ref().unwrap().expose(),
            "hunter2-from-file",
            "the trailing line ending is not part of the password"
        );
        for shown in [format!("{c:?}"), format!("{broker:?}")] {
            assert!(!shown.contains("hunter2"), "{shown}");
        }

        // The environment wins, its paths taken as given.
        let mut env_c = c.clone();
        env_c
            .apply_env(|k| match k {
                "AQYL_MQTT_CA_FILE" => Some("other/ca.pem".into()),
                "AQYL_MQTT_PASSWORD" => Some("from-env".into()),
                "AQYL_INFLUX_CA_FILE" => Some("/srv/ca.pem".into()),
                "AQYL_HTTP_TOKEN_FILE" => Some("/run/secrets/token".into()),
                _ => None,
            })
            .unwrap();
        let ca = env_c.mqtt.ca_file.as_ref().unwrap();
        assert_eq!(
            (ca.path.as_path(), ca.name.as_str(), ca.line),
            (Path::new("other/ca.pem"), "AQYL_MQTT_CA_FILE", None)
        );
        assert!(
            env_c.mqtt.password_file.is_none(),
            "the variable's password wins"
        );
        assert_eq!(
            env_c.mqtt.broker(&path).unwrap().password.unwrap().expose(),
            "from-env"
        );
        assert_eq!(
            env_c.influx.ca_file.unwrap().path,
            PathBuf::from("/srv/ca.pem")
        );
        assert_eq!(env_c.http.token_file.unwrap().name, "AQYL_HTTP_TOKEN_FILE");
        let both = c.clone().apply_env(|k| {
            matches!(k, "AQYL_MQTT_PASSWORD" | "AQYL_MQTT_PASSWORD_FILE").then(|| "x".into())
        });
        assert!(both.unwrap_err().contains("keep one of them"));
    }

    #[test]
    fn broker_settings_that_cannot_work_are_refused_with_the_line_and_what_to_do() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("aqyl.toml");
        let errors = |text: &str| -> Vec<String> {
            match Config::from_toml(&path, text).map(|c| c.mqtt.broker(&path)) {
                Ok(Ok(_)) => Vec::new(),
                Ok(Err(e)) | Err(e) => e.0.iter().map(|e| e.to_string()).collect(),
            }
        };
        let file = path.display().to_string();
        // TLS files with a plain URL: the password would cross the network in the clear.
        let plain = errors("[mqtt]\nurl = \"mqtt://broker\"\nca_file = \"ca.pem\"\n");
        assert_eq!(plain.len(), 1, "{plain:?}");
        assert!(
            plain[0].starts_with(&format!("{file}:3: mqtt.ca_file ("))
                && plain[0].contains("use mqtts://"),
            "{plain:?}"
        );
        let half = errors("[mqtt]\nurl = \"mqtts://broker\"\nclient_cert = \"c.pem\"\n");
        assert!(
            half[0].starts_with(&format!("{file}:3: mqtt.client_cert"))
                && half[0].contains("set mqtt.client_key"),
            "{half:?}"
        );
        let missing = errors("[mqtt]\nusername = \"u\"\npassword_file = \"nope.pass\"\n");
        assert!(
            missing[0].starts_with(&format!("{file}:3: mqtt.password_file ("))
                && missing[0].contains("cannot read it"),
            "{missing:?}"
        );
        std::fs::write(dir.path().join("empty.pass"), "\n").unwrap();
        let empty = errors("[mqtt]\nusername = \"u\"\npassword_file = \"empty.pass\"\n");
        assert!(empty[0].contains("it is empty"), "{empty:?}");
        let twice =
            errors("[mqtt]\nusername = \"u\"\npassword = \"p\"\npassword_file = \"empty.pass\"\n");
        assert!(
            twice[0].starts_with(&format!("{file}:4:")) && twice[0].contains("keep one of them"),
            "{twice:?}"
        );
        let lonely = errors("[mqtt]\npassword_file = \"empty.pass\"\n");
        assert!(lonely[0].contains("must both be set"), "{lonely:?}");
        assert!(errors("[mqtt]\nurl = \"mqtts://broker\"\n").is_empty());
    }

    #[test]
    fn the_http_token_comes_from_the_file_or_the_setting_never_both() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("aqyl.toml");
        std::fs::write(dir.path().join("token"), "t0ken\n").unwrap();
        let token = |text: &str| {
            Config::from_toml(&path, text)
                .unwrap()
                .http
                .bearer_token(&path)
                .map(|t| t.map(|t| t.expose().to_string()))
                .map_err(|e| e.to_string())
        };
        assert_eq!(token(""), Ok(None));
        assert_eq!(token("[http]\ntoken = \"abc\"\n"), Ok(Some("abc".into())));
        assert_eq!(
            token("[http]\ntoken_file = \"token\"\n"),
            Ok(Some("t0ken".into()))
        );
        let both = token("[http]\ntoken = \"abc\"\ntoken_file = \"token\"\n").unwrap_err();
        assert!(
            both.contains(":3: http.token_file (") && both.contains("keep one"),
            "{both}"
        );
        assert!(token("[http]\ntoken = \"\"\n")
            .unwrap_err()
            .contains("empty"));
        let c = Config::from_toml(&path, "[http]\ntoken = \"abc\"\n").unwrap();
        assert!(!format!("{c:?}").contains("abc"), "redacted in Debug");
    }

    #[test]
    fn load_reports_every_problem_of_the_broker_and_the_descriptors() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("sensors")).unwrap();
        let file = dir.path().join("aqyl.toml");
        std::fs::write(
            &file,
            "[mqtt]\nusername = \"u\"\npassword_file = \"missing\"\n",
        )
        .unwrap();
        std::fs::write(dir.path().join("sensors/t.toml"), "name = 3\n").unwrap();
        let err = load(&file, |_| None).unwrap_err();
        assert_eq!(err.0.len(), 2, "{err}");
        assert!(err.0[0].message.starts_with("mqtt.password_file"), "{err}");
        assert!(err.0[1].file.ends_with("t.toml"), "{err}");
    }

    #[test]
    fn check_refuses_what_run_would_refuse_with_the_line() {
        let err = |text: &str| {
            Config::from_toml(Path::new("aqyl.toml"), text)
                .unwrap_err()
                .to_string()
        };
        assert!(
            Config::from_toml(Path::new("aqyl.toml"), "[mqtt]\nurl = \"mqtts://broker\"\n").is_ok()
        );
        let http = err("[http]\naddr = \"not an address\"\n");
        assert!(
            http.contains("aqyl.toml:1") && http.contains("IP:port"),
            "{http}"
        );
        let tiles = err("[http]\ntiles = \"https://tile.example/{z}/{x}.png\"\n");
        assert!(
            tiles.contains("aqyl.toml:2") && tiles.contains("{y}"),
            "{tiles}"
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
