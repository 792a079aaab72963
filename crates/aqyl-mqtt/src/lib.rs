//! Aqyl's MQTT edge: one connection that subscribes to the sensor topics and publishes
//! Aqyl's outputs (dead letters, status).
//!
//! Outputs are published on a second connection ([`output`]), so publishing never waits for
//! ingest and ingest never waits for publishing. One task owns the ingest event loop
//! ([`connection`]): it polls, hands each publish over
//! (to the ingest log, or straight to the dataflow) and acknowledges it only once it is safe
//! (manual acks): on disk in the ingest log, or (without durability) queued for a worker; on a connection error it logs, counts, waits with exponential backoff
//! and polls again, which is how rumqttc reconnects. Subscriptions are renewed on every
//! connect. The broker keeps a persistent session (clean session off) and a retained last
//! will sets `aqyl/status` to `offline` if Aqyl dies. The city services read the sensor topics
//! on a third connection of their own ([`tap`]), so they never slow ingest down.

pub mod connection;
pub mod output;
pub mod publish;
pub mod tap;

pub use connection::{connect, Intake, LogIntake, MqttEdge, MqttSettings};
pub use output::{connect_output, OutputEdge};

use tokio::sync::watch;

/// Why a connection was never established, when retrying cannot cure it (the broker's
/// certificate is not trusted, the broker refuses the credentials or this client's
/// certificate): set once, before the first successful connect. After one, such failures
/// are logged and retried (a broker being reconfigured must not stop a running service).
#[derive(Clone)]
pub struct Refused(watch::Receiver<Option<String>>);

impl Refused {
    fn channel() -> (watch::Sender<Option<String>>, Self) {
        let (tx, rx) = watch::channel(None);
        (tx, Self(rx))
    }

    /// Waits until the connection is refused for good, and says why with what to fix.
    pub async fn wait(&mut self) -> String {
        let why = match self.0.wait_for(Option::is_some).await {
            Ok(why) => why.clone(),
            Err(_) => None,
        };
        match why {
            Some(why) => why,
            None => std::future::pending().await,
        }
    }
}
