//! Ingest: what comes in and how it becomes an [`Observation`](observation::Observation).
//!
//! - [`observation`]: raw MQTT messages in, typed observations out.
//! - [`descriptor`]: sensor type descriptors (`config/sensors/*.toml`): topic patterns, payload
//!   layout, event-time field, fields.
//! - [`formats`]: payload formats other than JSON objects (CSV, SenML, ...), read into JSON.
//! - [`units`]: units a field may declare, and conversions between them.
//! - [`sensor_registry`]: fixed facts about each sensor (location, area) from a CSV file.
//! - [`decode`]: topic and payload bytes in, an observation or a precise rejection out.
//! - [`dedup`]: duplicate readings (at-least-once delivery, replays after a crash).
//! - [`deadletter`]: rejected input, why, and the dead-letter record published for it.
//! - [`config`]: the `[ingest]` section.

pub mod config;
pub mod deadletter;
pub mod decode;
pub mod dedup;
pub mod descriptor;
pub mod formats;
pub mod observation;
pub mod sensor_registry;
pub mod units;
