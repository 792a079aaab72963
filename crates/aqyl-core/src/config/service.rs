//! The service's own sections: `[state]`, where an instance keeps its state on disk (used by
//! the `aqyl` binary's durable ingest with `aqyl-state`), and `[http]`, its metrics and health
//! endpoint. Neither component is in aqyl-core, so the sections stay here.

use super::{FileSetting, Secret};
use crate::error::{ConfigError, ConfigErrors};
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::time::Duration;

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

/// `[city]`: the city services on top of the pipeline: the live city state (retained on
/// `<prefix>/state/<sensor_type>/<sensor_id>` and served at `/api/state`) and the sensor
/// catalogue (OGC SensorThings API at `/v1.1`, SOSA/SSN JSON-LD at `/sensors/...`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CityConfig {
    /// Keep the city state and serve the catalogue. It reads the sensor topics on a
    /// connection of its own (QoS 0), so it costs one more delivery and decoding of every
    /// reading; turn it off when only the pipeline's outputs matter (throughput runs).
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Readings kept per sensor, newest first, for `Observations` (1 to 1000).
    #[serde(default = "default_observations")]
    pub observations: usize,
    /// A sensor's retained state message is published at most once per this interval,
    /// carrying whatever changed meanwhile (`"0s"`: no state topics).
    #[serde(
        default = "default_state_interval",
        deserialize_with = "crate::duration::deserialize"
    )]
    pub state_interval: Duration,
    /// Most sensors kept; readings of further sensors are counted and left out.
    #[serde(default = "default_max_sensors")]
    pub max_sensors: usize,
}

impl Default for CityConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            observations: default_observations(),
            state_interval: default_state_interval(),
            max_sensors: default_max_sensors(),
        }
    }
}

fn default_observations() -> usize {
    16
}

fn default_state_interval() -> Duration {
    Duration::from_secs(1)
}

fn default_max_sensors() -> usize {
    100_000
}

/// `[http]`: metrics and health endpoint.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    /// Listen address such as `127.0.0.1:9464` (env `AQYL_HTTP_ADDR`); off when absent.
    pub addr: Option<String>,
    /// Bearer token that `GET /metrics` requires (`Authorization: Bearer <token>`); `/health`
    /// stays open for probes (env `AQYL_HTTP_TOKEN`).
    pub token: Option<Secret>,
    /// A file holding the token instead, trailing line ending trimmed (env
    /// `AQYL_HTTP_TOKEN_FILE`).
    pub token_file: Option<FileSetting>,
    /// A map tile URL template for the status page (`https://tile.example/{z}/{x}/{y}.png`);
    /// without it the page draws the sensors on a plain projection and needs nothing from
    /// outside.
    pub tiles: Option<String>,
}

/// What is wrong with a map tile URL template (`http.tiles`), if anything: the page fetches
/// it with `{z}`, `{x}` and `{y}` replaced, over http or https.
pub fn tiles_problem(template: &str) -> Option<String> {
    if !(template.starts_with("https://") || template.starts_with("http://")) {
        return Some(format!(
            "{template:?} is not an http:// or https:// URL; write it as e.g. \"https://tile.openstreetmap.org/{{z}}/{{x}}/{{y}}.png\""
        ));
    }
    let missing: Vec<&str> = ["{z}", "{x}", "{y}"]
        .into_iter()
        .filter(|p| !template.contains(p))
        .collect();
    (!missing.is_empty()).then(|| {
        format!(
            "{template:?} lacks {}; the page fills in the zoom {{z}} and the tile column {{x}} and row {{y}}",
            missing.join(" and ")
        )
    })
}

impl HttpConfig {
    /// The bearer token, read from `token_file` when set; `config` is the configuration file.
    pub fn bearer_token(&self, config: &Path) -> Result<Option<Secret>, ConfigErrors> {
        match (&self.token, &self.token_file) {
            (Some(_), Some(file)) => Err(file
                .error(
                    config,
                    "set as well as http.token (or AQYL_HTTP_TOKEN); keep one of them",
                )
                .into()),
            (Some(t), None) if t.expose().is_empty() => Err(ConfigError::file(
                config,
                "http.token is empty; set a token or remove it",
            )
            .into()),
            (Some(t), None) => Ok(Some(t.clone())),
            (None, Some(file)) => super::file_setting::read_secret(file)
                .map(Some)
                .map_err(|e| file.error(config, e).into()),
            (None, None) => Ok(None),
        }
    }
}
