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
//! will sets `aqyl/status` to `offline` if Aqyl dies.

pub mod connection;
pub mod output;
pub mod publish;

pub use connection::{connect, Intake, LogIntake, MqttEdge, MqttSettings};
pub use output::{connect_output, OutputEdge};
