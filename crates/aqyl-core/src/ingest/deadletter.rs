//! Rejected input: why it was rejected, and the dead-letter record published for it.

use crate::output::rfc3339_ms;
use serde::Serialize;
use std::fmt;

/// Most payload bytes copied into a dead-letter record; the rest is cut and flagged.
pub const DEADLETTER_PAYLOAD_BYTES: usize = 1024;

/// Why an input was not accepted. Each reason has its own counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// The payload is not valid JSON (or not UTF-8).
    MalformedJson,
    /// The payload is not valid SenML (RFC 8428).
    MalformedSenml,
    /// The payload is not one CSV line with the declared columns.
    MalformedCsv,
    /// The payload is JSON but not an object.
    NotAnObject,
    /// A required field is absent, null, empty or "NA".
    MissingField,
    /// A field holds a value of the wrong type (e.g. text where a number is expected).
    WrongType,
    /// The event time is absent, unparsable or out of range.
    InvalidTimestamp,
    /// The sensor id is empty, too long or contains control characters.
    InvalidSensorId,
    /// The payload exceeds the configured size limit.
    Oversized,
    /// No sensor type matches the topic.
    UnknownTopic,
    /// The event time is older than the watermark: its window has already closed.
    Late,
    /// The event time is further ahead of the receive time than `ingest.max_future`: a sensor
    /// clock gone wrong would otherwise drag the watermark forward and make every other
    /// sensor's readings late.
    Future,
    /// A value of the right type that is not allowed: a position off the globe, a URL that is
    /// not http(s), a name that is not a topic segment (citizen reports).
    InvalidValue,
    /// The client sent more than its share (citizen reports, `reports.per_minute`).
    RateLimited,
}

impl Reason {
    /// Every reason, in counter order.
    pub const ALL: [Reason; 14] = [
        Reason::MalformedJson,
        Reason::MalformedSenml,
        Reason::MalformedCsv,
        Reason::NotAnObject,
        Reason::MissingField,
        Reason::WrongType,
        Reason::InvalidTimestamp,
        Reason::InvalidSensorId,
        Reason::Oversized,
        Reason::UnknownTopic,
        Reason::Late,
        Reason::Future,
        Reason::InvalidValue,
        Reason::RateLimited,
    ];

    /// The reason as written in records, logs and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::MalformedJson => "malformed_json",
            Reason::MalformedSenml => "malformed_senml",
            Reason::MalformedCsv => "malformed_csv",
            Reason::NotAnObject => "not_an_object",
            Reason::MissingField => "missing_field",
            Reason::WrongType => "wrong_type",
            Reason::InvalidTimestamp => "invalid_timestamp",
            Reason::InvalidSensorId => "invalid_sensor_id",
            Reason::Oversized => "oversized",
            Reason::UnknownTopic => "unknown_topic",
            Reason::Late => "late",
            Reason::Future => "future",
            Reason::InvalidValue => "invalid_value",
            Reason::RateLimited => "rate_limited",
        }
    }

    /// Position in [`Reason::ALL`], for counters.
    pub fn index(self) -> usize {
        Reason::ALL.iter().position(|r| *r == self).unwrap_or(0)
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A rejected input, as published on `aqyl/deadletter/<sensor_type>`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DeadLetter {
    /// Sensor type the topic belongs to; `unknown` when no type matched.
    pub sensor_type: String,
    /// Why it was rejected.
    pub reason: Reason,
    /// Details for a human: which field, what was expected, what came.
    pub detail: String,
    /// The topic it arrived on.
    pub topic: String,
    /// The payload as text (lossy UTF-8), cut to [`DEADLETTER_PAYLOAD_BYTES`].
    pub payload: String,
    /// Size of the original payload in bytes.
    pub payload_bytes: usize,
    /// True when `payload` was cut.
    pub truncated: bool,
    /// Receive time, RFC 3339 (UTC, milliseconds).
    pub received_at: String,
}

impl DeadLetter {
    /// Builds a record, bounding the copied payload.
    pub fn new(
        sensor_type: &str,
        reason: Reason,
        detail: String,
        topic: &str,
        payload: &[u8],
        received_at: i64,
    ) -> Self {
        let cut = payload.len().min(DEADLETTER_PAYLOAD_BYTES);
        Self {
            sensor_type: sensor_type.to_string(),
            reason,
            detail,
            topic: topic.to_string(),
            payload: String::from_utf8_lossy(&payload[..cut]).into_owned(),
            payload_bytes: payload.len(),
            truncated: cut < payload.len(),
            received_at: rfc3339_ms(received_at),
        }
    }

    /// The JSON payload of the dead-letter message.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|_| String::from("{}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_is_bounded_and_flagged() {
        let big = vec![b'x'; 5000];
        let d = DeadLetter::new(
            "traffic",
            Reason::Oversized,
            "too big".into(),
            "city/traffic/1",
            &big,
            0,
        );
        assert_eq!(d.payload.len(), DEADLETTER_PAYLOAD_BYTES);
        assert!(d.truncated);
        assert_eq!(d.payload_bytes, 5000);
        let v: serde_json::Value = serde_json::from_str(&d.to_json()).unwrap();
        assert_eq!(v["reason"], "oversized");
        assert_eq!(v["received_at"], "1970-01-01T00:00:00.000Z");
    }

    #[test]
    fn reasons_have_distinct_indices() {
        for (i, r) in Reason::ALL.iter().enumerate() {
            assert_eq!(r.index(), i);
        }
    }
}
