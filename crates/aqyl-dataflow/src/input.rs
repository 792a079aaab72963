//! How messages enter the dataflow: one bounded channel per worker, chosen by a stable hash
//! of the topic so each sensor's messages stay in order on one worker. A full channel makes
//! the sender wait, which back-pressures the MQTT connection instead of dropping anything.
//!
//! A finite input (a replay of files) can instead give each worker a [`Source`] of its own
//! that the worker reads itself, a batch at a time, between steps of the dataflow: no channel
//! hand-off per message, no thread beside the workers, and readings already decoded.

use aqyl_core::{DeadLetter, Observation, RawMessage};
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::SeqCst;
use std::sync::Arc;
use tokio::sync::mpsc;

/// A message with its position in the ingest log (0: not logged).
#[derive(Debug)]
pub struct Logged {
    /// Sequence number in the ingest log; 0 when the input is not logged.
    pub seq: u64,
    /// The message.
    pub msg: RawMessage,
}

/// The sending side: routes each message to its worker.
#[derive(Debug, Clone)]
pub struct Router {
    senders: Vec<mpsc::Sender<Logged>>,
    /// The largest log sequence number queued for any worker so far.
    routed: Arc<AtomicU64>,
}

/// Creates a router and one receiver per worker, each buffering `capacity` messages.
pub fn channels(workers: usize, capacity: usize) -> (Router, Vec<mpsc::Receiver<Logged>>) {
    let (senders, receivers) = (0..workers.max(1))
        .map(|_| mpsc::channel(capacity.max(1)))
        .unzip();
    let router = Router {
        senders,
        routed: Arc::default(),
    };
    (router, receivers)
}

impl Router {
    /// The worker that takes messages of `topic`.
    pub fn worker_of(&self, topic: &str) -> usize {
        (crate::stable_hash(&[topic]) % self.senders.len() as u64) as usize
    }

    /// The largest log sequence number queued for any worker so far (a worker whose queue
    /// is empty has taken every logged message for it up to this one).
    pub fn routed(&self) -> Arc<AtomicU64> {
        self.routed.clone()
    }

    /// Sends a message to its worker, waiting while that worker's queue is full. Returns
    /// false once the dataflow has stopped.
    pub async fn route(&self, msg: RawMessage) -> bool {
        self.route_logged(0, msg).await
    }

    /// [`Router::route`] for a message logged under `seq`.
    pub async fn route_logged(&self, seq: u64, msg: RawMessage) -> bool {
        let worker = self.worker_of(&msg.topic);
        let sent = self.senders[worker].send(Logged { seq, msg }).await.is_ok();
        self.routed.fetch_max(seq, SeqCst);
        sent
    }

    /// Sends a message to its worker if its queue has room: `Ok(true)` sent, `Ok(false)` the
    /// dataflow has stopped, `Err(msg)` the queue is full (the message is handed back).
    pub fn try_route(&self, msg: RawMessage) -> Result<bool, RawMessage> {
        let worker = self.worker_of(&msg.topic);
        match self.senders[worker].try_send(Logged { seq: 0, msg }) {
            Ok(()) => Ok(true),
            Err(mpsc::error::TrySendError::Closed(_)) => Ok(false),
            Err(mpsc::error::TrySendError::Full(l)) => Err(l.msg),
        }
    }

    /// Waits until the worker of `topic` has room for a message; false once the dataflow has
    /// stopped. (Room stays free only for a single sender: the MQTT connection.)
    pub async fn ready(&self, topic: &str) -> bool {
        self.senders[self.worker_of(topic)].reserve().await.is_ok()
    }

    /// Blocking variant for threads outside an async runtime (tests, replay).
    pub fn route_blocking(&self, msg: RawMessage) -> bool {
        self.route_logged_blocking(0, msg)
    }

    /// [`Router::route_blocking`] for a message logged under `seq`.
    pub fn route_logged_blocking(&self, seq: u64, msg: RawMessage) -> bool {
        let worker = self.worker_of(&msg.topic);
        let sent = self.senders[worker]
            .blocking_send(Logged { seq, msg })
            .is_ok();
        self.routed.fetch_max(seq, SeqCst);
        sent
    }
}

/// What a [`Source`] gives a worker.
#[derive(Debug)]
pub enum Taken {
    /// A decoded reading; `row` names it for [`Source::message`].
    Reading {
        /// The reading, as decoding its message would give it.
        obs: Observation,
        /// Its row in the source's last batch.
        row: usize,
    },
    /// A message to decode, as if it came from the broker.
    Message(RawMessage),
    /// Input rejected before decoding.
    Rejected(DeadLetter),
}

/// A worker's own finite input (see the module doc).
pub trait Source: Send {
    /// Appends up to `max` items to `out`; false once the input has ended (or failed: the
    /// source keeps the error for its owner to report).
    fn read(&mut self, out: &mut Vec<Taken>, max: usize) -> bool;

    /// The message a reading of the last batch would have been published as (for its dead
    /// letter when it turns out late): called rarely, so it may be slow.
    fn message(&self, row: usize) -> RawMessage;
}
