//! Consistent checkpoints of the whole dataflow, taken while it is quiet.
//!
//! When a checkpoint is requested, every worker finishes the batch it is on, stops taking
//! messages and hands what it has taken to the dataflow. Then all workers step in lockstep
//! (meeting at a [`Rendezvous`] after each step) until, with every worker between steps, no
//! record is in flight between operators ([`crate::state`] counts them). At that moment the
//! operators' states hold exactly the effect of the messages each worker has taken: each
//! worker encodes its operators and its ingest (watermark, duplicate filter, the last log
//! sequence number it took), one worker assembles the [`Snapshot`] and hands it to the
//! service, and all go on. The pause lasts a few steps: milliseconds.
//!
//! With `stop`, each worker first takes every message waiting in its channel (ingest has
//! stopped, so the next start has nothing to replay), and the workers end after the snapshot
//! without closing their inputs, so no open window is flushed: they are in the snapshot and
//! close, complete, after the next start.
//!
//! In a cluster the same steps run in every process, and the leader of each meeting asks
//! the whole cluster whether it is quiet (see [`crate::coordinate`]).

use crate::coordinate::Coordinator;
use crate::ingest::IngestState;
use crate::reload::Reloads;
use serde::{Deserialize, Serialize};
use std::sync::atomic::Ordering::SeqCst;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;

/// The state of the whole dataflow at one quiet moment.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Snapshot {
    /// Its id in a cluster (0 in one process). Kept beside the snapshot in the state file,
    /// not in it.
    #[serde(skip)]
    pub id: u64,
    /// Each worker's part, by worker index (in a cluster: this process's workers, from its
    /// first).
    pub workers: Vec<WorkerState>,
    /// Outputs emitted before the snapshot (per [`aqyl_core::metrics::Output`]): the
    /// checkpoint may be committed once the sinks have made that many safe.
    pub sent: [u64; 4],
    /// Wall-clock time it was taken, Unix ms.
    pub taken_at: i64,
    /// The names of the rules in force (a restart without one of them ends its incidents).
    pub rules: Vec<String>,
}

/// One worker's part of a [`Snapshot`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WorkerState {
    /// Its ingest.
    pub ingest: IngestState,
    /// Its input time (the watermark it had handed to the dataflow).
    pub input_time: u64,
    /// Its operators' encoded states, by operator name.
    pub operators: Vec<(String, Vec<u8>)>,
}

impl Snapshot {
    /// The first ingest-log sequence number the snapshot may not cover: the log is needed
    /// from there on.
    pub fn log_from(&self) -> u64 {
        self.workers
            .iter()
            .map(|w| w.ingest.covered)
            .min()
            .unwrap_or(0)
            + 1
    }

    /// Whether a logged message `seq` for `worker` is already in the snapshot.
    pub fn covers(&self, worker: usize, seq: u64) -> bool {
        self.workers
            .get(worker)
            .is_some_and(|w| seq <= w.ingest.covered)
    }

    /// Encodes it for the state file.
    pub fn encode(&self) -> Result<Vec<u8>, String> {
        crate::state::encode(self)
    }

    /// Decodes one written by [`Snapshot::encode`].
    pub fn decode(bytes: &[u8]) -> Result<Self, String> {
        crate::state::decode(bytes)
    }
}

/// A meeting point for all workers, which fails instead of hanging when a worker has died.
pub struct Rendezvous {
    parties: usize,
    state: Mutex<(usize, u64, bool)>, // (arrived, generation, poisoned)
    changed: Condvar,
}

impl Rendezvous {
    /// A meeting point for `parties` workers.
    pub fn new(parties: usize) -> Self {
        Self {
            parties,
            state: Mutex::new((0, 0, false)),
            changed: Condvar::new(),
        }
    }

    /// Waits until every worker has arrived; `Some(true)` for exactly one of them (the
    /// leader), `None` when a worker has died.
    pub fn wait(&self) -> Option<bool> {
        let mut s = self.state.lock().ok()?;
        if s.2 {
            return None;
        }
        let generation = s.1;
        s.0 += 1;
        if s.0 == self.parties {
            s.0 = 0;
            s.1 += 1;
            self.changed.notify_all();
            return Some(true);
        }
        while s.1 == generation && !s.2 {
            s = self
                .changed
                .wait_timeout(s, Duration::from_millis(100))
                .ok()?
                .0;
        }
        (s.1 != generation).then_some(false)
    }

    /// Marks a worker dead: every wait, now and later, fails.
    pub fn poison(&self) {
        if let Ok(mut s) = self.state.lock() {
            s.2 = true;
        }
        self.changed.notify_all();
    }
}

/// How the service asks the workers for checkpoints.
pub struct Control {
    /// The latest checkpoint asked for (0: none yet).
    requested: AtomicU64,
    /// The checkpoint after which the workers end (0: none). Tied to an id, so a worker that
    /// has just finished an earlier checkpoint does not end before the others take the last.
    stop: AtomicU64,
    /// Where all workers meet while taking one.
    pub(crate) rendezvous: Rendezvous,
    /// Set by the leader: no record was in flight at the last meeting.
    pub(crate) quiet: AtomicBool,
    /// Outputs emitted when the dataflow was found quiet.
    pub(crate) sent: Mutex<[u64; 4]>,
    /// The workers' parts of the snapshot being taken.
    pub(crate) parts: Mutex<Vec<Option<WorkerState>>>,
    /// Where finished snapshots go.
    pub(crate) taken: mpsc::UnboundedSender<Snapshot>,
    /// The rule names in force, recorded in each snapshot.
    pub(crate) rules: Vec<String>,
    /// In a cluster: how this process takes part in the cluster's checkpoints.
    coordinator: std::sync::OnceLock<Arc<Coordinator>>,
    /// In a cluster: its descriptor reloads, put in force at a quiet moment of a checkpoint.
    reloads: std::sync::OnceLock<Arc<Reloads>>,
}

impl Control {
    /// Controls for `workers` workers, and where their snapshots arrive.
    pub fn new(workers: usize, rules: Vec<String>) -> (Self, mpsc::UnboundedReceiver<Snapshot>) {
        let (taken, rx) = mpsc::unbounded_channel();
        let control = Self {
            requested: AtomicU64::new(0),
            stop: AtomicU64::new(0),
            rendezvous: Rendezvous::new(workers.max(1)),
            quiet: AtomicBool::new(false),
            sent: Mutex::new([0; 4]),
            parts: Mutex::new(vec![None; workers.max(1)]),
            taken,
            rules,
            coordinator: std::sync::OnceLock::new(),
            reloads: std::sync::OnceLock::new(),
        };
        (control, rx)
    }

    /// Asks for a checkpoint; with `stop`, the workers end after it. Returns its id.
    pub fn request(&self, stop: bool) -> u64 {
        // One requester at a time (the service's checkpointer, then its stop).
        let id = self.requested.load(SeqCst) + 1;
        if stop {
            self.stop.store(id, SeqCst);
        }
        self.requested.store(id, SeqCst);
        id
    }

    /// Asks for checkpoint `id` (in a cluster, as process 0 asked every process); with
    /// `stop`, the workers end after it.
    pub fn request_id(&self, id: u64, stop: bool) {
        if stop {
            self.stop.fetch_max(id, SeqCst);
        }
        self.requested.fetch_max(id, SeqCst);
    }

    /// The latest checkpoint asked for (the workers take only later ones).
    pub(crate) fn requested(&self) -> u64 {
        self.requested.load(SeqCst)
    }

    /// In a cluster: how this process takes part in the cluster's checkpoints.
    pub fn coordinator(&self) -> Option<&Arc<Coordinator>> {
        self.coordinator.get()
    }

    /// In a cluster: its descriptor reloads ([`crate::reload`]), if it follows its files.
    pub fn reloads(&self) -> Option<&Arc<Reloads>> {
        self.reloads.get()
    }

    /// Puts this process's descriptor reloads in the cluster's hands (before it starts).
    pub fn follow_reloads(&self, reloads: Arc<Reloads>) {
        let _ = self.reloads.set(reloads);
    }

    /// Joins the cluster's checkpoints: new ones are numbered after `newest`.
    pub(crate) fn join_cluster(&self, coordinator: Coordinator, newest: u64) {
        self.requested.fetch_max(newest, SeqCst);
        let _ = self.coordinator.set(Arc::new(coordinator));
    }

    /// The checkpoint asked for, if newer than `done`.
    pub(crate) fn pending(&self, done: u64) -> Option<u64> {
        let r = self.requested.load(SeqCst);
        (r > done).then_some(r)
    }

    /// Whether the workers end after checkpoint `taken`.
    pub fn stopping(&self, taken: u64) -> bool {
        let stop = self.stop.load(SeqCst);
        stop != 0 && taken >= stop
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_leader_per_meeting_and_a_dead_worker_fails_the_others() {
        let r = Arc::new(Rendezvous::new(3));
        let handles: Vec<_> = (0..3)
            .map(|_| {
                let r = r.clone();
                std::thread::spawn(move || (0..5).map(|_| r.wait().unwrap()).filter(|l| *l).count())
            })
            .collect();
        let leaders: usize = handles.into_iter().map(|h| h.join().unwrap()).sum();
        assert_eq!(leaders, 5);
        let r2 = r.clone();
        let waiting = std::thread::spawn(move || r2.wait());
        std::thread::sleep(Duration::from_millis(50));
        r.poison();
        assert_eq!(waiting.join().unwrap(), None);
    }
}
