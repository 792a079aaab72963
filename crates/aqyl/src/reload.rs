//! Hot reload of sensor descriptors: `aqyl run` polls `sensors_dir` and, when a descriptor
//! is added, changed or removed, loads the whole directory again. A valid set replaces the
//! registry the workers decode with (from their next batch) and the MQTT subscriptions; an
//! invalid one is logged with its `file:line` errors and counted, and the previous set keeps
//! running. Nothing in flight is lost: observations already decoded keep flowing, and open
//! windows close with the window definitions they were opened with.
//!
//! Polling (every `reload_interval`, 2 s by default) rather than inotify: it works the same on
//! every file system, including the network and container mounts configs often live on, and
//! costs one directory listing.
//!
//! In a durable cluster a valid set is only *staged*: every process puts the same descriptors
//! in force at one quiet moment of a cluster checkpoint ([`aqyl_dataflow::reload`]), and
//! [`follow`] then changes the subscriptions. A cluster without durable state reloads nothing
//! (its processes could not agree on a moment): change descriptors by restarting every process.

use aqyl_core::fnv::{fnv_byte, fnv_bytes, FNV_START};
use aqyl_core::ingest::decode::Registry;
use aqyl_core::ingest::descriptor::{self, SensorType};
use aqyl_core::metrics::Metrics;
use aqyl_dataflow::reload::Reloads;
use aqyl_dataflow::SharedRegistry;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::sync::watch;

/// What identifies the directory's state: each descriptor's path, modification time and size.
pub type Fingerprint = Vec<(PathBuf, Option<SystemTime>, u64)>;

/// The fingerprint of the `*.toml` files in `dir` (empty when it cannot be read).
pub fn fingerprint(dir: &Path) -> Fingerprint {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out: Fingerprint = entries
        .filter_map(|e| e.ok())
        .filter(|e| e.path().extension().is_some_and(|x| x == "toml"))
        .filter_map(|e| {
            let meta = e.metadata().ok()?;
            Some((e.path(), meta.modified().ok(), meta.len()))
        })
        .collect();
    out.sort();
    out
}

/// The MQTT filters for a registry: each type's, behind the subscription prefix, plus the
/// catch-all when configured.
pub fn subscriptions(registry: &Registry, prefix: &str, catch_all: Option<&str>) -> Vec<String> {
    let mut out: Vec<String> = registry
        .filters()
        .iter()
        .map(|f| format!("{prefix}{f}"))
        .collect();
    if let Some(c) = catch_all {
        out.push(format!("{prefix}{c}"));
    }
    out
}

/// The digest of the descriptors `types`: each file's name and contents, and its sensor
/// registry's path and contents, in file-name order. Equal files give equal digests on every
/// machine, wherever their directory is.
pub fn digest(types: &[SensorType]) -> u64 {
    let mut types: Vec<&SensorType> = types.iter().collect();
    types.sort_by(|a, b| a.source.file_name().cmp(&b.source.file_name()));
    let read = |path: &Path| std::fs::read(path).unwrap_or_default();
    types.iter().fold(FNV_START, |h, t| {
        let name = t.source.file_name().unwrap_or_default();
        let mut h = fnv_bytes(fnv_byte(h, 0xff), name.as_encoded_bytes());
        h = fnv_bytes(fnv_byte(h, 0xff), &read(&t.source));
        if let Some(file) = &t.registry_file {
            let dir = t.source.parent().unwrap_or(Path::new("."));
            h = fnv_bytes(fnv_byte(h, 0xff), file.as_os_str().as_encoded_bytes());
            h = fnv_bytes(fnv_byte(h, 0xff), &read(&dir.join(file)));
        }
        h
    })
}

/// How a valid reload takes effect.
pub enum Apply {
    /// At once, in this process's registry (one process).
    Now(SharedRegistry),
    /// Staged, in force once the whole cluster puts it in force at a checkpoint.
    InCluster(Arc<Reloads>),
}

/// Watches `dir` every `interval` until the task is aborted.
pub async fn watch(
    dir: PathBuf,
    interval: Duration,
    apply: Apply,
    filters: Arc<watch::Sender<Vec<String>>>,
    subscription_prefix: String,
    catch_all: Option<String>,
    metrics: Arc<Metrics>,
) {
    let mut last = fingerprint(&dir);
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let now = fingerprint(&dir);
        if now == last {
            continue;
        }
        last = now;
        match descriptor::load_dir(&dir) {
            Ok(types) => {
                let names: Vec<String> = types.iter().map(|t| t.name.to_string()).collect();
                let registry = match &apply {
                    Apply::Now(registry) => registry,
                    Apply::InCluster(reloads) => {
                        reloads.stage(digest(&types), Registry::new(types));
                        tracing::info!(dir = %dir.display(), types = ?names, "Loaded changed sensor descriptors: the cluster puts them in force at a checkpoint, once every process has the same.");
                        continue;
                    }
                };
                let next = Registry::new(types);
                let topics = subscriptions(&next, &subscription_prefix, catch_all.as_deref());
                registry.store(Arc::new(next));
                let _ = filters.send(topics);
                metrics.descriptor_reloads.fetch_add(1, Relaxed);
                tracing::info!(dir = %dir.display(), types = ?names, "Reloaded the sensor descriptors.");
            }
            Err(errors) => {
                metrics.descriptor_reload_failures.fetch_add(1, Relaxed);
                tracing::error!(
                    dir = %dir.display(),
                    "Rejected the changed sensor descriptors; the previous ones keep running.\n{errors}"
                );
            }
        }
    }
}

/// In a durable cluster: each time the cluster puts reloaded descriptors in force (in
/// `registry`), subscribes to their topics and counts the reload. Runs until aborted.
pub async fn follow(
    reloads: Arc<Reloads>,
    registry: SharedRegistry,
    filters: Arc<watch::Sender<Vec<String>>>,
    (subscription_prefix, catch_all): (String, Option<String>),
    metrics: Arc<Metrics>,
) {
    let mut in_force = reloads.watch_in_force();
    while in_force.changed().await.is_ok() {
        let current = registry.load();
        let topics = subscriptions(&current, &subscription_prefix, catch_all.as_deref());
        let _ = filters.send(topics);
        metrics.descriptor_reloads.fetch_add(1, Relaxed);
        tracing::info!("Reloaded the sensor descriptors: in force on every process of the cluster from one checkpoint on.");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn descriptors(dir: &Path, extra: &str) -> Vec<SensorType> {
        let text = format!(
            "name = \"noise\"\ntopic = \"city/noise/{{sensor_id}}\"\nformat = \"senml\"\n[[fields]]\nname = \"laeq\"\n{extra}"
        );
        std::fs::write(dir.join("noise.toml"), text).unwrap();
        descriptor::load_dir(dir).unwrap()
    }

    #[test]
    fn equal_files_in_other_directories_have_one_digest_and_a_change_another() {
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let (one, two) = (descriptors(a.path(), ""), descriptors(b.path(), ""));
        assert_eq!(
            digest(&one),
            digest(&two),
            "the same files, wherever they are"
        );
        let changed = descriptors(b.path(), "[[windows]]\nsize = \"10m\"\n");
        assert_ne!(digest(&one), digest(&changed));
    }
}
