//! The `aqyl` service: wiring of the MQTT edge, the timely dataflow and the sinks.
//!
//! - [`service`] runs the pipeline for a loaded configuration until told to stop, then
//!   stops it: stop reading, checkpoint (or, without durability, close every window), flush
//!   the sinks, publish `offline`.
//! - [`durable`] is the ingest log, the checkpoints and recovery (`[state] durable`).
//! - [`demo`] is the zero-install run: embedded broker, synthetic city, file sink.
//! - [`connections`] builds the broker's connector (TLS, credentials), the HTTP token and the
//!   store's client from a configuration, for every command that needs them.
//! - [`check`] validates configuration and descriptors for `aqyl check`.
//! - [`http`] serves `/metrics` and `/health`.
//! - [`reports`] takes citizen reports over HTTP and publishes them on their MQTT topic.
//! - [`reload`] reloads changed sensor descriptors while running.
//! - [`replay`] runs the same dataflow over CSV, JSON-lines and SenML files (`aqyl replay`).
//! - [`tail`] prints incidents for `aqyl events tail`.
//! - [`city`] keeps the live city state (latest reading, quality and incidents of every
//!   sensor) and publishes it on the retained state topics.
//! - [`sta`] serves the sensor catalogue as the OGC SensorThings API and SOSA/SSN JSON-LD.

pub mod check;
pub mod city;
pub mod cluster;
pub mod connections;
pub mod demo;
pub mod durable;
pub mod http;
pub mod quality_view;
pub mod reload;
pub mod replay;
pub mod reports;
pub mod service;
pub mod sta;
pub mod status;
pub mod tail;
