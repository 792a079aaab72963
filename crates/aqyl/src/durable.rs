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
    let snapshot = match store.checkpoint().map_err(|e| anyhow::anyhow!("{e}"))? {
        Some(cp) => Some(Snapshot::decode(&cp.blob).map_err(|e| {
            anyhow::anyhow!(
                "{}: the checkpoint cannot be read ({e}); it was written by an incompatible release: run that release until it stops, or move the file aside to start afresh",
                store.path().display()
            )
        })?),
        None => None,
    };
    Ok((Arc::new(store), snapshot))
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
        // Everything emitted before the snapshot must be safe before the log behind it goes.
        let deadline = Instant::now() + interval.max(Duration::from_secs(5)) * 3;
        while !metrics.delivery.covers(&snapshot.sent) && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if !metrics.delivery.covers(&snapshot.sent) {
            metrics.checkpoints_skipped.fetch_add(1, Relaxed);
            tracing::warn!("A checkpoint was not committed: the sinks have not confirmed its outputs yet (store slow or down). The ingest log keeps growing until one is.");
            continue;
        }
        if let Err(e) = commit(&store, snapshot, &metrics).await {
            metrics.set_problem("state", e.to_string());
            tracing::error!(error = %e, "Cannot commit a checkpoint.");
        } else {
            metrics.clear_problem("state");
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
