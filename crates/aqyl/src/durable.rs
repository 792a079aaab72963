//! Durable ingest and checkpoints for `aqyl run` (`[state] durable = true`, the default).
//!
//! - The **ingest log**: the MQTT connection hands each message to [`log_writer`], a thread
//!   that queues everything waiting for the workers, appends it to the log as one group (one
//!   fsync) and only then tells the connection it may acknowledge those messages. The workers
//!   do not wait for the fsync: a message they took that never reached the log was not
//!   acknowledged either, so after a crash the broker delivers it again, and a checkpoint that
//!   already holds its effect drops it as a duplicate.
//! - **Checkpoints**: every `checkpoint_interval`, [`checkpointer`] asks the workers for a
//!   snapshot, waits until every output emitted before it is safe (written or spilled by the
//!   sinks, published), and commits it with the log position it covers; the log before it is
//!   deleted in the same transaction.
//! - **Recovery** ([`recover`]): the latest checkpoint is restored and the log after it is
//!   replayed into the workers before the broker connection opens.
//! - **Stop**: a last checkpoint with `stop`, committed once the sinks have drained; no open
//!   window is written partially.
//!
//! In a cluster (`[cluster]`), every process has its own ingest log and state file, and the
//! checkpoints are the cluster's ([`aqyl_dataflow::coordinate`]): process 0's
//! [`cluster_checkpointer`] asks for each, every process writes its part as *pending* once its
//! sinks confirmed the outputs before it, and commits it (truncating its log) only when
//! process 0 has seen every part. At start the processes agree on the newest checkpoint all
//! of them hold ([`cluster_holdings`] reads this process's) and each replays its own log
//! after it. A stop of any process stops the whole cluster with a last checkpoint of every
//! process ([`aqyl_dataflow::stop`]), so the next start has nothing to replay.

use aqyl_core::metrics::Metrics;
use aqyl_core::RawMessage;
use aqyl_dataflow::checkpoint::{Control, Snapshot};
use aqyl_dataflow::input::Router;
use aqyl_state::{Checkpoint, Store};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};

/// Most messages appended as one group.
const GROUP: usize = 4096;

/// Opens the state file and reads the latest checkpoint.
pub fn open(dir: &std::path::Path) -> anyhow::Result<(Arc<Store>, Option<Snapshot>)> {
    let store = Store::open(dir).map_err(|e| anyhow::anyhow!("{e}"))?;
    let checkpoint = store.checkpoint().map_err(|e| anyhow::anyhow!("{e}"))?;
    let snapshot = decode(&store, checkpoint)?;
    Ok((Arc::new(store), snapshot))
}

fn decode(store: &Store, checkpoint: Option<Checkpoint>) -> anyhow::Result<Option<Snapshot>> {
    let Some(cp) = checkpoint else {
        return Ok(None);
    };
    let mut snapshot = Snapshot::decode(&cp.blob).map_err(|e| {
        anyhow::anyhow!(
            "{}: the checkpoint cannot be read ({e}); it was written by an incompatible release: run that release until it stops, or move the file aside to start afresh",
            store.path().display()
        )
    })?;
    snapshot.id = cp.id;
    Ok(Some(snapshot))
}

/// In a cluster: the checkpoints this process holds (`committed`, read by [`open`], and its
/// pending part), for the processes to agree on one.
pub fn cluster_holdings(
    store: &Store,
    committed: Option<Snapshot>,
) -> anyhow::Result<aqyl_dataflow::coordinate::Holdings> {
    if committed.as_ref().is_some_and(|s| s.id == 0) {
        anyhow::bail!(
            "{}: this checkpoint was taken by a single process, not by a cluster: run without [cluster] until it stops, or move the file aside to start this process afresh (with every other process of the cluster)",
            store.path().display()
        );
    }
    let pending = store.pending().map_err(|e| anyhow::anyhow!("{e}"))?;
    let pending = decode(store, pending)?;
    Ok(aqyl_dataflow::coordinate::Holdings { committed, pending })
}

/// In a cluster, once the processes agreed on checkpoint `restored`: makes this process's
/// part of it committed if it was pending, and drops a pending part the cluster will not
/// complete.
pub fn settle_holdings(store: &Store, restored: Option<u64>) -> anyhow::Result<()> {
    let promoted = match restored {
        Some(id) => store.promote(id).map_err(|e| anyhow::anyhow!("{e}"))?,
        None => false,
    };
    if !promoted {
        store.drop_pending().map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    Ok(())
}

/// Replays the log after `snapshot` into the workers (every message on a fresh start) and
/// returns how many messages it replayed.
pub fn recover(
    store: &Store,
    router: &Router,
    snapshot: Option<&Snapshot>,
    metrics: &Metrics,
) -> anyhow::Result<u64> {
    let from = snapshot.map_or(1, Snapshot::log_from);
    let started = Instant::now();
    let mut last_report = Instant::now();
    let mut replayed = 0u64;
    store
        .replay(from, |seq, msg| {
            let covered = snapshot.is_some_and(|s| s.covers(router.worker_of(&msg.topic), seq));
            if covered {
                return true;
            }
            replayed += 1;
            metrics.log_replayed.fetch_add(1, Relaxed);
            if last_report.elapsed() > Duration::from_secs(5) {
                tracing::info!(replayed, "Recovering: replaying the ingest log.");
                last_report = Instant::now();
            }
            router.route_logged_blocking(seq, msg)
        })
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    if replayed > 0 {
        tracing::info!(
            replayed,
            seconds = started.elapsed().as_secs_f64(),
            "Recovered: the ingest log after the last checkpoint is back in the dataflow."
        );
    }
    Ok(replayed)
}

/// Queues what the connection hands over for the workers and appends it to the log, group by
/// group, then publishes how many messages are durable (may be acknowledged). Ends when the connection
/// drops its side (after logging what it had sent); an error ends it too (nothing more can
/// be acknowledged, so the service must stop).
pub fn log_writer(
    store: Arc<Store>,
    router: Router,
    mut rx: mpsc::Receiver<RawMessage>,
    durable: watch::Sender<u64>,
) -> anyhow::Result<()> {
    let mut next = store.next_seq().map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut done = 0u64;
    let mut group = Vec::with_capacity(GROUP);
    while let Some(first) = rx.blocking_recv() {
        group.push(first);
        while group.len() < GROUP {
            match rx.try_recv() {
                Ok(m) => group.push(m),
                Err(_) => break,
            }
        }
        let n = group.len() as u64;
        let encoded = aqyl_state::encode_group(&group)
            .map_err(|e| anyhow::anyhow!("cannot encode for the ingest log: {e}"))?;
        for (i, msg) in group.drain(..).enumerate() {
            if !router.route_logged_blocking(next + i as u64, msg) {
                anyhow::bail!("the dataflow stopped while the ingest log was being written");
            }
        }
        store
            .append_encoded(next, &encoded)
            .map_err(|e| anyhow::anyhow!("cannot write the ingest log: {e}"))?;
        next += n;
        done += n;
        let _ = durable.send(done);
    }
    Ok(())
}

/// Takes a checkpoint every `interval` until `stop` is set, committing each once its
/// outputs are safe. Returns when asked to stop (the final checkpoint is the caller's).
pub async fn checkpointer(
    store: Arc<Store>,
    control: Arc<Control>,
    mut taken: mpsc::UnboundedReceiver<Snapshot>,
    interval: Duration,
    metrics: Arc<Metrics>,
    mut stop: watch::Receiver<bool>,
) -> mpsc::UnboundedReceiver<Snapshot> {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tokio::select! {
            _ = stop.changed() => return taken,
            _ = tick.tick() => {}
        }
        control.request(false);
        let Some(snapshot) = taken.recv().await else {
            return taken;
        };
        // Everything emitted before the snapshot must be safe before the log behind it goes:
        // it waits for the sinks as long as they take (a checkpoint given up for a newer one
        // would meet slow sinks again, and the log would grow without end).
        tokio::select! {
            _ = stop.changed() => return taken,
            () = confirmation(&snapshot, interval, &metrics) => {}
        }
        if let Err(e) = commit(&store, snapshot, &metrics).await {
            metrics.set_problem("state", e.to_string());
            tracing::error!(error = %e, "Cannot commit a checkpoint.");
        } else {
            metrics.clear_problem("state");
        }
    }
}

/// How long a checkpoint waits for the sinks before it says so: three intervals, at least 15 s.
fn patience(interval: Duration) -> Duration {
    interval.max(Duration::from_secs(5)) * 3
}

/// Waits until the sinks have made every output emitted before `snapshot` safe.
async fn covered(snapshot: &Snapshot, metrics: &Metrics) {
    while !metrics.delivery.covers(&snapshot.sent) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until the sinks have made every output emitted before `snapshot` safe, however long
/// it takes; past [`patience`], counts the checkpoint as delayed and says why.
async fn confirmation(snapshot: &Snapshot, interval: Duration, metrics: &Metrics) {
    let waited = tokio::time::timeout(patience(interval), covered(snapshot, metrics)).await;
    if waited.is_err() {
        metrics.checkpoints_delayed.fetch_add(1, Relaxed);
        tracing::warn!("A checkpoint waits for the sinks to confirm its outputs (store slow or down); the ingest log is truncated once they do.");
        covered(snapshot, metrics).await;
    }
}

/// Waits until the sinks have made every output emitted before `snapshot` safe, for
/// [`patience`] at most; whether they did (in a cluster, a checkpoint one process cannot
/// confirm in time is abandoned, and the next one asked for).
async fn confirmed(snapshot: &Snapshot, interval: Duration, metrics: &Metrics) -> bool {
    let waited = tokio::time::timeout(patience(interval), covered(snapshot, metrics)).await;
    if waited.is_err() {
        metrics.checkpoints_delayed.fetch_add(1, Relaxed);
        tracing::warn!("A cluster checkpoint is abandoned: the sinks have not confirmed its outputs in time (store slow or down).");
    }
    waited.is_ok()
}

/// In a cluster: takes part in the cluster's checkpoints (see the module doc) until the last,
/// taken when the cluster stops, or until a process is gone. At process 0, asks for one every
/// `interval`, soon after its descriptor files changed (three reload intervals later, so the
/// others have loaded theirs: the reload is put in force at that checkpoint), and for the
/// last once every process has drained ([`aqyl_dataflow::stop`]). Returns whether the
/// workers took the last checkpoint (and ended), and if so whether it is complete.
pub async fn cluster_checkpointer(
    store: Arc<Store>,
    control: Arc<Control>,
    mut taken: mpsc::UnboundedReceiver<Snapshot>,
    (interval, reload_interval): (Duration, Duration),
    metrics: Arc<Metrics>,
) -> Option<bool> {
    let coordinator = control.coordinator().cloned()?;
    let stop = coordinator.stop().clone();
    let mut loaded = control.reloads().map(|r| r.watch_loaded());
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        if coordinator.leads() {
            let last = tokio::select! {
                drained = stop.all_drained() => match drained {
                    Ok(()) => true,
                    Err(e) => return gone(&e),
                },
                _ = tick.tick() => false,
                () = changed_then(&mut loaded, reload_interval * 3) => false,
            };
            let id = control.request(last);
            if let Err(e) = coordinator.request(id, last) {
                return gone(&e);
            }
        }
        let snapshot = tokio::select! {
            why = stop.broke() => return gone(&why),
            s = taken.recv() => s?,
        };
        let id = snapshot.id;
        let written = confirmed(&snapshot, interval, &metrics).await
            && write_pending(&store, snapshot, &metrics).await;
        let c = coordinator.clone();
        let outcome = tokio::task::spawn_blocking(move || {
            if c.leads() {
                c.complete(id, written)
            } else {
                c.part(id, written)
            }
        })
        .await;
        let complete = match outcome {
            Ok(Ok(complete)) => complete,
            Ok(Err(e)) => {
                // The workers took this snapshot: after the last, they have ended.
                gone(&e);
                return control.stopping(id).then_some(false);
            }
            Err(e) => {
                tracing::error!(error = %e, "The cluster checkpoint task panicked.");
                return control.stopping(id).then_some(false);
            }
        };
        if complete {
            promote(&store, id, &metrics);
        } else {
            tracing::debug!(id, "A cluster checkpoint was abandoned.");
        }
        if control.stopping(id) {
            return Some(complete);
        }
    }
}

/// Completes `settle` after what `loaded` follows changes (never without it).
async fn changed_then<T>(loaded: &mut Option<watch::Receiver<T>>, settle: Duration) {
    let changed = match loaded {
        Some(rx) => rx.changed().await.is_ok(),
        None => false,
    };
    if !changed {
        return std::future::pending().await;
    }
    tokio::time::sleep(settle).await
}

/// The cluster's checkpoints end: a process is gone.
fn gone(why: &str) -> Option<bool> {
    tracing::warn!(error = %why, "The cluster's checkpoints stop.");
    None
}

/// Writes `snapshot` as this process's pending part; whether it is written.
async fn write_pending(store: &Arc<Store>, snapshot: Snapshot, metrics: &Metrics) -> bool {
    let store = store.clone();
    let written = tokio::task::spawn_blocking(move || {
        let checkpoint = Checkpoint {
            blob: snapshot.encode().map_err(anyhow::Error::msg)?,
            log_from: snapshot.log_from(),
            id: snapshot.id,
        };
        drop(snapshot);
        store
            .write_pending(&checkpoint)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        anyhow::Ok(checkpoint.blob.len() as u64)
    })
    .await;
    match written {
        Ok(Ok(bytes)) => {
            metrics.checkpoint_bytes.store(bytes, Relaxed);
            true
        }
        Ok(Err(e)) => {
            metrics.set_problem("state", e.to_string());
            tracing::error!(error = %e, "Cannot write this process's part of a checkpoint.");
            false
        }
        Err(e) => {
            tracing::error!(error = %e, "Writing a checkpoint part panicked.");
            false
        }
    }
}

/// Commits this process's pending part of the complete checkpoint `id`.
fn promote(store: &Store, id: u64, metrics: &Metrics) {
    match store.promote(id) {
        Ok(_) => {
            metrics.checkpoints.fetch_add(1, Relaxed);
            metrics.clear_problem("state");
        }
        Err(e) => {
            metrics.set_problem("state", e.to_string());
            tracing::error!(error = %e, "Cannot commit a complete cluster checkpoint.");
        }
    }
}

/// Commits `snapshot`, in a blocking thread (encoding a large state takes a while, and the
/// commit fsyncs). The snapshot is dropped once encoded, so the state is never held three
/// times over (operators' parts, the encoded checkpoint, and the file's pages).
pub async fn commit(
    store: &Arc<Store>,
    snapshot: Snapshot,
    metrics: &Metrics,
) -> anyhow::Result<()> {
    let store = store.clone();
    let (bytes, operators) = tokio::task::spawn_blocking(move || {
        let operators = operator_bytes(&snapshot);
        let checkpoint = Checkpoint {
            blob: snapshot.encode().map_err(anyhow::Error::msg)?,
            log_from: snapshot.log_from(),
            id: 0,
        };
        drop(snapshot);
        store
            .commit(&checkpoint)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        anyhow::Ok((checkpoint.blob.len() as u64, operators))
    })
    .await??;
    metrics.checkpoints.fetch_add(1, Relaxed);
    metrics.checkpoint_bytes.store(bytes, Relaxed);
    tracing::debug!(bytes, ?operators, "Checkpoint committed.");
    Ok(())
}

/// Bytes of each operator's state in `snapshot`, over all workers (what grows, when the
/// checkpoint does).
fn operator_bytes(snapshot: &Snapshot) -> std::collections::BTreeMap<String, usize> {
    let mut sizes = std::collections::BTreeMap::new();
    for (name, state) in snapshot.workers.iter().flat_map(|w| &w.operators) {
        *sizes.entry(name.clone()).or_default() += state.len();
    }
    sizes
}

#[cfg(test)]
mod tests {
    use super::*;
    use aqyl_core::metrics::Output;

    fn snapshot(sent: [u64; 4]) -> Snapshot {
        Snapshot {
            id: 0,
            workers: Vec::new(),
            sent,
            taken_at: 0,
            rules: Vec::new(),
        }
    }

    /// A store slower than the patience: the checkpoint waits for it (and is counted as
    /// delayed) instead of being given up, so that the log is truncated once it catches up.
    #[tokio::test(start_paused = true)]
    async fn a_checkpoint_waits_for_slow_sinks_and_counts_the_delay() {
        let metrics = Arc::new(Metrics::default());
        let taken = snapshot([3, 0, 0, 0]);
        let slow = metrics.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(100)).await;
            slow.delivery.done(Output::Aggregates, 3);
        });
        let interval = Duration::from_secs(10);
        let started = tokio::time::Instant::now();
        confirmation(&taken, interval, &metrics).await;
        assert!(started.elapsed() >= Duration::from_secs(100));
        assert_eq!(metrics.checkpoints_delayed.load(Relaxed), 1);
        // In a cluster the same wait is abandoned at the patience's end.
        let later = snapshot([4, 0, 0, 0]);
        assert!(!confirmed(&later, interval, &metrics).await);
        assert_eq!(metrics.checkpoints_delayed.load(Relaxed), 2);
        assert!(confirmed(&taken, interval, &metrics).await);
    }
}
