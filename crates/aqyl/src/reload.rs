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

use aqyl_core::ingest::decode::Registry;
use aqyl_core::ingest::descriptor;
use aqyl_core::metrics::Metrics;
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

/// Watches `dir` every `interval` until the task is aborted.
pub async fn watch(
    dir: PathBuf,
    interval: Duration,
    registry: SharedRegistry,
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
