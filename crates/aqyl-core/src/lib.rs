//! Aqyl's types and pure cores.
//!
//! Everything here is free of I/O: decoding a payload into an [`Observation`], assigning
//! event-time windows and computing their statistics, tracking the watermark, encoding line
//! protocol with safe escaping, and loading/validating configuration text. The MQTT edge, the
//! timely dataflow and the sinks only move data between these functions, which is what makes
//! them testable against hand-worked references.
//!
//! By capability, in the order data flows:
//!
//! - [`ingest`]: sensor type descriptors, payload formats, units, sensor registries, decoding
//!   into an [`Observation`], duplicates and dead letters.
//! - [`windows`]: event-time windows and their statistics, SAX, the [`Aggregate`] of a closed
//!   window, the watermark.
//! - [`rules`]: event rules (expressions, state machines, rule files, the engine) and the
//!   incident lifecycle messages ([`Event`]).
//! - [`quality`]: Quality of Information: metrics and ratings, per-sensor assessment,
//!   neighbours, the feed check, the score, reports and `quality` incidents.
//! - [`reports`]: citizen reports sent over HTTP: their checks and the per-client rate
//!   limit.
//! - [`output`]: line protocol, and the MQTT topic level and timestamp encodings every output
//!   shares.
//!
//! Across them: [`config`] (the service configuration; each section's struct lives in the
//! capability it configures and is re-exported from `config`), [`metrics`] (counters of
//! everything), [`error`] (errors with `file:line`), [`duration`] (durations in configuration
//! files) and [`fnv`] (the stable hash).
//!
//! ```
//! use aqyl_core::windows::window::{WindowSpec, WindowStats};
//! use std::time::Duration;
//!
//! let w = WindowSpec::tumbling(Duration::from_secs(300));
//! assert_eq!(w.ends(1_000).collect::<Vec<_>>(), [300_000]); // the window [0, 5 min)
//! let stats = WindowStats::compute(&mut [3.0, 1.0, 2.0]).unwrap();
//! assert_eq!((stats.count, stats.mean, stats.min, stats.max), (3, 2.0, 1.0, 3.0));
//! ```

pub mod backoff;
pub mod bytesize;
pub mod config;
pub mod duration;
pub mod error;
pub mod fnv;
pub mod ingest;
pub mod metrics;
pub mod output;
pub mod quality;
pub mod reports;
pub mod rules;
pub mod subscriptions;
pub mod windows;

pub use error::{ConfigError, ConfigErrors};
pub use ingest::deadletter::{DeadLetter, Reason};
pub use ingest::observation::{Arrival, Observation, RawMessage};
pub use rules::event::{Event, EventState};
pub use windows::aggregate::{Aggregate, Scope};
