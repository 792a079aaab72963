//! The sinks' sections: `[influx]`, the InfluxDB v2 write API, and `[file]`, line-protocol
//! files. The sinks are in `aqyl-sink`, which aqyl-core does not depend on, so the sections
//! stay here.

use super::mqtt::default_max_backoff;
use super::{FileSetting, Secret};
use serde::Deserialize;
use std::path::PathBuf;
use std::time::Duration;

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
    /// PEM file of the CA certificate(s) to trust for an `https://` URL instead of the
    /// system's roots, e.g. a private CA (env `AQYL_INFLUX_CA_FILE`).
    pub ca_file: Option<FileSetting>,
    /// Most points per write request.
    #[serde(default = "default_batch")]
    pub batch_size: usize,
    /// Where batches wait during an outage, relative to `[state] dir`; replayed when the
    /// store is back, also after a restart.
    #[serde(default = "default_spill")]
    pub spill_dir: PathBuf,
    /// Most the spill may hold (`"1GiB"`, `"500MB"` or bytes). A full spill holds the sink
    /// back, and through it the workers and the broker, instead of filling the disk.
    #[serde(
        default = "default_max_spill",
        deserialize_with = "crate::bytesize::deserialize"
    )]
    pub max_spill: u64,
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

/// Why `url` cannot be the store's base URL: it must be `http://` or `https://`, a host, an
/// optional port and an optional path, without spaces.
pub fn check_influx_url(url: &str) -> Result<(), String> {
    let fix = "write it like http://127.0.0.1:8086";
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
        .ok_or_else(|| format!("{url:?} is not an http:// or https:// URL; {fix}"))?;
    if url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!(
            "{url:?} contains a space or a control character; {fix}"
        ));
    }
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let (host, port) = if let Some(v6) = host_port.strip_prefix('[') {
        let (h, after) = v6
            .split_once(']')
            .ok_or_else(|| format!("{url:?} has an unclosed [IPv6] host; {fix}"))?;
        (h, after.strip_prefix(':'))
    } else {
        match host_port.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (host_port, None),
        }
    };
    if host.is_empty() {
        return Err(format!("{url:?} has no host; {fix}"));
    }
    if let Some(p) = port {
        if p.parse::<u16>().is_err() {
            return Err(format!("{url:?} has an invalid port {p:?}; {fix}"));
        }
    }
    Ok(())
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

fn default_max_spill() -> u64 {
    1 << 30
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
            ca_file: None,
            batch_size: default_batch(),
            spill_dir: default_spill(),
            max_spill: default_max_spill(),
            write_timeout: default_write_timeout(),
            flush_interval: default_flush(),
            max_backoff: default_max_backoff(),
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
