//! What flows through Aqyl: raw MQTT messages in, typed observations after decoding.

use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// A message as it came off the broker, before decoding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawMessage {
    /// The MQTT topic it was published on.
    pub topic: String,
    /// The payload bytes, untrusted.
    pub payload: Vec<u8>,
    /// Wall-clock receive time, Unix milliseconds.
    pub received_at: i64,
}

/// One decoded reading of one sensor: its event time and numeric fields. Names shared by
/// every observation of a type (type, fields) are reference-counted, not copied.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Observation {
    /// Sensor type name (`traffic`).
    pub sensor_type: Arc<str>,
    /// Sensor id (validated: no control characters). Shared: the dataflow hands a reading to
    /// several operators, and each keeps the id of the sensors it has state for.
    pub sensor_id: Arc<str>,
    /// Area captured from the topic or the payload, or the registry's.
    pub area: Option<Arc<str>>,
    /// Event time, Unix milliseconds.
    pub event_time: u64,
    /// Wall-clock receive time, Unix milliseconds.
    pub received_at: i64,
    /// True when the payload had no event time and receive time was used instead.
    pub time_from_receive: bool,
    /// Position (latitude, longitude), from the payload's location fields or the registry.
    pub location: Option<(f64, f64)>,
    /// Field values in descriptor order; optional fields that were absent are left out.
    pub fields: Vec<(Arc<str>, f64)>,
    /// How it arrived, for quality scoring (filled in when it enters the dataflow).
    #[serde(default)]
    pub arrival: Arrival,
}

/// How a reading arrived, for quality scoring.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Arrival {
    /// Wall-clock time it entered the dataflow, Unix ms.
    pub ingested_at: i64,
    /// The newest event time its worker had seen when it arrived, Unix ms: the stream's own
    /// clock, against which age is measured in replays.
    pub stream_time: u64,
    /// How many of its fields lie outside their declared range.
    pub out_of_range: u16,
    /// The digest of its fields, computed once by the ingest's duplicate filter and read by
    /// the rules (0: not computed; see `dedup::digest`).
    #[serde(default)]
    pub digest: u64,
}
