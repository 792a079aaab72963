//! How messages enter the dataflow: one bounded channel per worker, chosen by a stable hash
//! of the topic so each sensor's messages stay in order on one worker. A full channel makes
//! the sender wait, which back-pressures the MQTT connection instead of dropping anything.

use aqyl_core::RawMessage;
use tokio::sync::mpsc;

/// The sending side: routes each message to its worker.
#[derive(Debug, Clone)]
pub struct Router {
    senders: Vec<mpsc::Sender<RawMessage>>,
}

/// Creates a router and one receiver per worker, each buffering `capacity` messages.
pub fn channels(workers: usize, capacity: usize) -> (Router, Vec<mpsc::Receiver<RawMessage>>) {
    let (senders, receivers) = (0..workers.max(1))
        .map(|_| mpsc::channel(capacity.max(1)))
        .unzip();
    (Router { senders }, receivers)
}

impl Router {
    fn pick(&self, topic: &str) -> &mpsc::Sender<RawMessage> {
        let i = (crate::stable_hash(&[topic]) % self.senders.len() as u64) as usize;
        &self.senders[i]
    }

    /// Sends a message to its worker, waiting while that worker's queue is full. Returns
    /// false once the dataflow has stopped.
    pub async fn route(&self, msg: RawMessage) -> bool {
        self.pick(&msg.topic).send(msg).await.is_ok()
    }

    /// Blocking variant for threads outside an async runtime (tests, replay).
    pub fn route_blocking(&self, msg: RawMessage) -> bool {
        self.pick(&msg.topic).blocking_send(msg).is_ok()
    }
}
