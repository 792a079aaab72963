//! Publishing a message stream: event-time pacing and a pool of connections that keeps each
//! sensor on one connection, so its messages arrive in the order they were sent.

use std::time::Duration as StdDuration;

use chrono::{DateTime, Utc};
use tokio::time::Instant;

use crate::error::Result;
use crate::mqtt::{client_id, Broker, Connection};
use crate::simulation::Message;

/// Maps simulated time onto the wall clock.
#[derive(Debug, Clone, Copy)]
pub struct Pacer {
    origin: DateTime<Utc>,
    wall: Instant,
    /// Simulated seconds per real second; `None` publishes as fast as possible.
    speed: Option<f64>,
}

impl Pacer {
    /// Paces from `origin` (simulated) = now (wall), at `speed` (None: no pacing).
    pub fn new(origin: DateTime<Utc>, speed: Option<f64>) -> Self {
        Self {
            origin,
            wall: Instant::now(),
            speed: speed.filter(|s| *s > 0.0 && s.is_finite()),
        }
    }

    /// The wall-clock instant at which simulated time `due` is reached.
    pub fn deadline(&self, due: DateTime<Utc>) -> Option<Instant> {
        let speed = self.speed?;
        let sim_ms = (due - self.origin).num_milliseconds().max(0) as f64;
        Some(self.wall + StdDuration::from_secs_f64(sim_ms / 1000.0 / speed))
    }

    /// Sleeps until `due` (returns at once when unpaced or already late).
    pub async fn wait(&self, due: DateTime<Utc>) {
        if let Some(at) = self.deadline(due) {
            if at > Instant::now() {
                tokio::time::sleep_until(at).await;
            }
        }
    }
}

/// Wall-clock Unix milliseconds, the `sent_at` value.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Several publisher connections; sensor `k` always uses connection `k % n`.
#[derive(Debug)]
pub struct Pool {
    conns: Vec<Connection>,
    trace: bool,
}

impl Pool {
    /// Opens `n` publisher connections at `qos`; `trace` adds `seq`/`sent_at` to messages.
    pub async fn connect(
        broker: &Broker,
        n: usize,
        qos: rumqttc::QoS,
        trace: bool,
    ) -> Result<Pool> {
        let mut conns = Vec::new();
        for i in 0..n.max(1) {
            conns.push(Connection::publisher(broker, &client_id("pub", i), qos, 1000).await?);
        }
        Ok(Pool { conns, trace })
    }

    /// Encodes and publishes one message on its sensor's connection.
    pub async fn send(&self, m: &Message) -> Result<()> {
        let body = m.encode(self.trace.then(now_ms));
        self.conns[m.sensor % self.conns.len()]
            .publish(m.topic.clone(), body)
            .await
    }

    /// Messages queued so far.
    pub fn published(&self) -> u64 {
        self.conns.iter().map(Connection::published).sum()
    }

    /// Flushes and disconnects all connections; returns messages left unacknowledged.
    pub async fn close(self, timeout: StdDuration) -> u64 {
        let mut unacked = 0;
        for c in self.conns {
            unacked += c.close(timeout).await;
        }
        unacked
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_simulated_day_per_minute() -> crate::Result<()> {
        let t0 = crate::time::parse_time("2014-08-01T00:00:00")?;
        let p = Pacer::new(t0, Some(1440.0));
        let noon = p
            .deadline(t0 + chrono::Duration::hours(12))
            .map(|d| d - p.wall);
        assert_eq!(noon, Some(StdDuration::from_secs(30)));
        assert_eq!(Pacer::new(t0, None).deadline(t0), None);
        Ok(())
    }
}
