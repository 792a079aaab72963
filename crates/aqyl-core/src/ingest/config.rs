//! `[ingest]`: limits on what is accepted: the largest payload decoding takes
//! ([`super::decode`]), how far ahead of its receive time a reading may be, the worker queues
//! and the catch-all subscription. Re-exported from [`crate::config`].

use serde::Deserialize;
use std::time::Duration;

/// `[ingest]`: limits on what is accepted.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IngestConfig {
    /// Largest payload accepted, in bytes; larger ones are dead-lettered as `oversized`.
    #[serde(default = "default_max_payload")]
    pub max_payload_bytes: usize,
    /// Messages buffered per worker between the MQTT task and the dataflow. When full, the
    /// MQTT task waits (back-pressure to the broker) instead of dropping.
    #[serde(default = "default_queue")]
    pub queue_capacity: usize,
    /// An extra subscription such as `"city/#"`: messages on topics no descriptor matches are
    /// dead-lettered as `unknown_topic` on `aqyl/deadletter/unknown`, so sensors that publish
    /// before they are configured show up instead of going unnoticed. Off by default.
    pub catch_all: Option<String>,
    /// How far a reading's event time may be ahead of the time it was received. Further
    /// ahead, it is dead-lettered as `future`: one sensor with a clock in 2099 must not move
    /// the watermark and make every other sensor's readings late. `"0s"` turns the check off.
    /// Readings that were never received from a broker (replays of files) are not checked.
    #[serde(
        default = "default_max_future",
        deserialize_with = "crate::duration::deserialize"
    )]
    pub max_future: Duration,
}

fn default_max_future() -> Duration {
    Duration::from_secs(300)
}

fn default_max_payload() -> usize {
    64 * 1024
}
fn default_queue() -> usize {
    16 * 1024
}

impl Default for IngestConfig {
    fn default() -> Self {
        Self {
            max_payload_bytes: default_max_payload(),
            queue_capacity: default_queue(),
            catch_all: None,
            max_future: default_max_future(),
        }
    }
}
