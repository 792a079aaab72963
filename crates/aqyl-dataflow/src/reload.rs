//! Descriptor reloads in a cluster: applied by every process at one quiet moment.
//!
//! One process swaps its registry between two batches of a worker; in a cluster that would
//! let two processes decode the same sensor's readings with different descriptors for a
//! while, and a process whose files differ run other descriptors for good. Instead:
//!
//! - Each process loads its own descriptor files when they change and *stages* them with
//!   their digest (names and contents of the files, so equal files give equal digests on every
//!   machine); they are not in force yet.
//! - At every quiet round of a cluster checkpoint ([`crate::coordinate`]) each process reports
//!   the digest it loaded last. Process 0 decides ([`decide`]): when every process loaded the
//!   same descriptors as process 0, and they are not in force, the verdict names them, and
//!   every process swaps its registry while all its workers wait at the quiet moment. Every
//!   record taken before was handled with the old descriptors, every one after with the new,
//!   on every process: the same cut as the checkpoint's.
//! - A process whose files differ from process 0's keeps the descriptors in force with all
//!   the others, and both sides log it (once per set of files); the reload is applied at the
//!   first checkpoint after the files agree. At start, processes with different files refuse
//!   to form a cluster.
//!
//! Process 0 takes a checkpoint soon after its own files change (see `aqyl run`), so a reload
//! waits for about two reload intervals, not a whole checkpoint interval.

use crate::SharedRegistry;
use aqyl_core::ingest::decode::Registry;
use aqyl_core::metrics::Metrics;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use tokio::sync::watch;

/// What a process loaded last from its descriptor files.
#[derive(Debug, Clone)]
pub struct Loaded {
    /// Their digest.
    pub digest: u64,
    /// The registry, until it is in force.
    registry: Option<Arc<Registry>>,
}

/// One process's descriptor reloads (see the module doc).
#[derive(Debug)]
pub struct Reloads {
    registry: SharedRegistry,
    loaded: watch::Sender<Loaded>,
    in_force: watch::Sender<u64>,
    /// The last digest of process 0's files that this process was told differ from its own.
    warned: Mutex<Option<u64>>,
    /// Counts each difference (`aqyl_descriptor_reload_failures_total`).
    metrics: Arc<Metrics>,
}

impl Reloads {
    /// Reloads of `registry`, whose descriptors (in force) have digest `digest`.
    pub fn new(registry: SharedRegistry, digest: u64, metrics: Arc<Metrics>) -> Self {
        Self {
            registry,
            loaded: watch::Sender::new(Loaded {
                digest,
                registry: None,
            }),
            in_force: watch::Sender::new(digest),
            warned: Mutex::new(None),
            metrics,
        }
    }

    /// Stages descriptors this process loaded (digest `digest`): in force once the cluster
    /// applies them.
    pub fn stage(&self, digest: u64, registry: Registry) {
        let registry = (digest != *self.in_force.borrow()).then(|| Arc::new(registry));
        self.loaded.send_replace(Loaded { digest, registry });
    }

    /// The digest of what this process loaded last.
    pub fn loaded(&self) -> u64 {
        self.loaded.borrow().digest
    }

    /// The digest of the descriptors in force.
    pub fn in_force(&self) -> u64 {
        *self.in_force.borrow()
    }

    /// Follows the digest in force (it changes when the cluster applies a reload).
    pub fn watch_in_force(&self) -> watch::Receiver<u64> {
        self.in_force.subscribe()
    }

    /// Follows what this process loads.
    pub fn watch_loaded(&self) -> watch::Receiver<Loaded> {
        self.loaded.subscribe()
    }

    /// Puts the descriptors of digest `digest` in force, as the cluster decided; whether the
    /// registry changed. Called while every worker of this process waits.
    pub(crate) fn apply(&self, digest: u64) -> bool {
        let loaded = self.loaded.borrow().clone();
        match loaded.registry {
            Some(registry) if loaded.digest == digest => {
                self.registry.store(registry);
                self.loaded.send_modify(|l| l.registry = None);
                self.in_force.send_replace(digest);
                true
            }
            _ => false,
        }
    }

    /// Elsewhere than at process 0: process 0 loaded `wanted`; logs once that this process's
    /// files differ, if they do.
    pub(crate) fn heard(&self, wanted: u64) {
        if wanted != self.loaded() && self.first_warning(wanted) {
            tracing::error!("This process's sensor descriptors differ from process 0's: the cluster keeps the descriptors in force until every process has the same files in its sensors_dir.");
        }
    }

    /// At process 0: the processes `differ` loaded other descriptors than process 0; logs it
    /// once.
    pub(crate) fn differ(&self, differ: &[usize]) {
        if self.first_warning(self.loaded()) {
            tracing::error!(processes = ?differ, "These processes' sensor descriptors differ from process 0's: the cluster keeps the descriptors in force until every process has the same files in its sensors_dir.");
        }
    }

    /// Whether this is the first warning about process 0's descriptors `wanted` (counted).
    fn first_warning(&self, wanted: u64) -> bool {
        let first = self
            .warned
            .lock()
            .is_ok_and(|mut w| w.replace(wanted) != Some(wanted));
        if first {
            self.metrics
                .descriptor_reload_failures
                .fetch_add(1, Relaxed);
        }
        first
    }
}

/// At process 0, at a quiet moment: the descriptors the cluster puts in force now, given the
/// digest each process loaded last (by index, process 0 first) and the digest in force:
/// process 0's, when every process loaded the same and they are not in force yet. `Err`: the
/// processes whose files differ from process 0's (nothing changes).
pub fn decide(loaded: &[u64], in_force: u64) -> Result<Option<u64>, Vec<usize>> {
    let Some(&wanted) = loaded.first() else {
        return Ok(None);
    };
    let differ: Vec<usize> = (0..loaded.len()).filter(|p| loaded[*p] != wanted).collect();
    if !differ.is_empty() {
        return Err(differ);
    }
    Ok((wanted != in_force).then_some(wanted))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cluster_applies_process_0_s_descriptors_only_once_every_process_has_them() {
        assert_eq!(decide(&[7, 7, 7], 7), Ok(None), "nothing new");
        assert_eq!(decide(&[8, 8, 8], 7), Ok(Some(8)));
        assert_eq!(decide(&[8, 7, 8], 7), Err(vec![1]), "process 1 differs");
        assert_eq!(
            decide(&[7, 8], 7),
            Err(vec![1]),
            "process 1's files changed alone"
        );
    }

    #[test]
    fn staged_descriptors_are_in_force_only_once_applied() {
        let registry = crate::shared(Registry::default());
        let reloads = Reloads::new(registry.clone(), 1, Default::default());
        reloads.stage(2, Registry::default());
        assert_eq!((reloads.loaded(), reloads.in_force()), (2, 1));
        assert!(!reloads.apply(3), "not what this process loaded");
        assert!(reloads.apply(2));
        assert_eq!(reloads.in_force(), 2);
        assert!(!reloads.apply(2), "already in force");
    }
}
