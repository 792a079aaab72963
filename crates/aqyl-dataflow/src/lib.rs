//! Aqyl's timely dataflow.
//!
//! Raw MQTT messages enter through per-worker channels ([`input::Router`]); each timely worker
//! decodes its share, checks it against the watermark and feeds its timely input, whose time
//! is the watermark in event-time milliseconds ([`runtime`]). Observations are exchanged by
//! sensor so each sensor's state lives on one worker, and [`aggregate::Aggregate`] closes
//! event-time windows as the frontier passes their end. Results leave through channels to the
//! sinks; rejected and late input leaves as dead letters.
//!
//! The computation is deterministic: the same observations give the same aggregates whatever
//! the number of workers and whatever their arrival order within the allowed lateness.
//!
//! Modules, as data flows:
//!
//! - Getting in: [`input`] (per-worker channels, routed by topic), [`runtime`] (the workers,
//!   [`start`], [`run_batch`]), [`ingest`] (a worker's decoding, duplicates, dead letters and
//!   watermark), [`feed`] (a worker's way into the dataflow), [`readings`] (its inputs of
//!   readings, one per kind of consumer).
//! - Operators, one per file: [`aggregate`] (`Aggregate`), [`sensor_sax`] (`AdaptiveSax`),
//!   [`events`] (`DetectEvents`, `WindowEvents`, `AreaEvents`: `events/detect.rs`, `window.rs`,
//!   `area.rs`), [`quality`] (`ScoreQuality`, the `keep` filter, `NeighbourCheck`,
//!   `FeedSilence`, `TrackQuality`, `EmitQuality`: `quality/score.rs`, `keep.rs`,
//!   `neighbours.rs`, `feed.rs`, `track.rs`, `emit.rs`).
//! - What operators share: [`ordered`] (event-time order, frontier-following capabilities),
//!   [`state`] (operator state and counted channels), [`checkpoint`] (consistent checkpoints),
//!   [`coordinate`] (checkpoints across a cluster), [`reload`] (descriptor reloads at one
//!   quiet moment of a cluster), [`stop`] (a cluster's stop with a last
//!   checkpoint).

pub mod aggregate;
pub mod checkpoint;
pub mod cluster;
pub mod coordinate;
pub mod events;
pub mod feed;
pub mod gossip;
pub mod ingest;
pub mod input;
pub mod ordered;
pub mod quality;
pub mod readings;
pub mod reload;
pub mod runtime;
pub mod sensor_sax;
pub mod state;
pub mod stop;

/// The sensor types, swappable while the dataflow runs (hot reload): workers and operators
/// load the current registry at each step.
pub type SharedRegistry = std::sync::Arc<arc_swap::ArcSwap<aqyl_core::ingest::decode::Registry>>;

/// Wraps a registry for [`PipelineSpec::registry`].
pub fn shared(registry: aqyl_core::ingest::decode::Registry) -> SharedRegistry {
    std::sync::Arc::new(arc_swap::ArcSwap::from_pointee(registry))
}

pub use runtime::{
    run_batch, start, start_cluster, start_cluster_durable, start_durable, start_sources, Batch,
    Durable, Outputs, PipelineSpec, Receivers, Running,
};

/// The wall clock, Unix ms.
pub(crate) fn wall_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// A stable 64-bit hash of key parts (the same on every run, process and machine, so
/// routing and exchange agree across a cluster).
pub use aqyl_core::fnv::stable_hash;
