//! In a cluster, the newest event time any process has seen, shared with every worker.
//!
//! Live, a worker that has had no message for the idle timeout advances its watermark to
//! the newest event time the others have seen (see [`crate::runtime`]); in one process they
//! share it through an atomic. Across processes, each worker tells every worker of the
//! cluster its process's newest event time through a small dataflow of its own (a broadcast),
//! whenever it has grown, at most every [`GOSSIP_EVERY_MS`]. A process whose workers the
//! broker gives no message (a shared subscription can) then still lets every window close.

use crate::feed::Feed;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::operators::vec::Broadcast;

/// Least time between two reports of one worker, ms.
pub const GOSSIP_EVERY_MS: i64 = 50;

/// A worker's end of the gossip.
pub struct Gossip {
    feed: Feed<u64>,
    told: u64,
    at: i64,
}

impl Gossip {
    /// Builds the gossip dataflow on `worker`; what the cluster reports raises `newest`.
    pub fn new(worker: &mut timely::worker::Worker, newest: Arc<AtomicU64>) -> Self {
        let feed = worker.dataflow::<u64, _, _>(|scope| {
            let (feed, stream) = Feed::<u64>::new(&scope);
            stream
                .broadcast()
                .sink(Pipeline, "ClusterNewest", move |(input, _)| {
                    input.for_each(|_cap, data| {
                        if let Some(max) = data.iter().max() {
                            newest.fetch_max(*max, Relaxed);
                        }
                    });
                });
            feed
        });
        Self {
            feed,
            told: 0,
            at: i64::MIN / 2,
        }
    }

    /// Tells the cluster `newest` (the process's newest event time) if it has grown since
    /// the last report and that was at least [`GOSSIP_EVERY_MS`] before `now_ms`.
    pub fn tell(&mut self, newest: u64, now_ms: i64) {
        if newest > self.told && now_ms - self.at >= GOSSIP_EVERY_MS {
            self.told = newest;
            self.at = now_ms;
            self.feed.send(newest);
            self.feed.flush();
        }
    }

    /// Ends this worker's gossip (so the worker can finish).
    pub fn close(&mut self) {
        self.feed.close();
    }
}
