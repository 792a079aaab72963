//! Ground truth: what the simulator did on purpose, as JSON lines.
//!
//! One line per scripted incident (`"kind":"incident"`) and per fault episode
//! (`"kind":"fault"`). Times are event time, UTC RFC 3339. For an incident, `start`/`end` are
//! the scripted interval (half-open: readings at `start <= t < end` are affected); for a fault
//! they are the event times of the first and last message it affected, and `messages` counts
//! those messages.

use std::io::{BufRead, Write};
use std::path::Path;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// RFC 3339 (de)serialisation for UTC times, since chrono's serde feature is off.
pub mod rfc3339 {
    use chrono::{DateTime, Utc};
    use serde::{Deserialize, Deserializer, Serializer};

    /// Writes `t` as UTC RFC 3339.
    pub fn serialize<S: Serializer>(t: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&crate::time::rfc3339(*t))
    }

    /// Reads an RFC 3339 time with any offset.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<DateTime<Utc>, D::Error> {
        let s = String::deserialize(d)?;
        DateTime::parse_from_rfc3339(&s)
            .map(|t| t.with_timezone(&Utc))
            .map_err(|e| serde::de::Error::custom(format!("{s:?} is not RFC 3339: {e}")))
    }
}

/// A scripted incident.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IncidentRecord {
    /// `congestion`, `parking_full` or `outage`.
    #[serde(rename = "type")]
    pub kind: String,
    /// What an operator would see it on: the area for congestion, the garage code for
    /// parking, the sensor id for an outage.
    pub subject: String,
    /// The type of the sensors involved.
    #[serde(default)]
    pub sensor_type: String,
    /// Ids of the sensors involved.
    #[serde(default)]
    pub sensors: Vec<String>,
    /// Scripted start (event time).
    #[serde(with = "rfc3339")]
    pub start: DateTime<Utc>,
    /// Scripted end (event time, exclusive).
    #[serde(with = "rfc3339")]
    pub end: DateTime<Utc>,
}

/// One fault episode on one sensor.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FaultRecord {
    /// The fault kind (`stuck`, `dropout`, ...).
    #[serde(rename = "type")]
    pub kind: String,
    /// Sensor id.
    pub sensor: String,
    /// Sensor type.
    pub sensor_type: String,
    /// Event time of the first affected message.
    #[serde(with = "rfc3339")]
    pub start: DateTime<Utc>,
    /// Event time of the last affected message.
    #[serde(with = "rfc3339")]
    pub end: DateTime<Utc>,
    /// Number of messages affected.
    pub messages: u64,
    /// `rate` when drawn at random, `schedule` when scripted.
    pub origin: String,
    /// The field tampered with (spike, out_of_range, missing_field).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// Timestamp shift in seconds (clock_skew).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub skew_s: Option<i64>,
    /// Hold-back in seconds (late).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay_s: Option<i64>,
}

/// One line of ground truth.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum TruthRecord {
    /// A scripted incident.
    Incident(IncidentRecord),
    /// A fault episode.
    Fault(FaultRecord),
}

impl TruthRecord {
    /// The record as one JSON line (without the newline).
    pub fn to_line(&self) -> String {
        // Plain strings, numbers and lists: serialisation cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// Writes records as JSON lines.
pub fn write_lines<W: Write>(mut w: W, records: &[TruthRecord]) -> std::io::Result<()> {
    for r in records {
        writeln!(w, "{}", r.to_line())?;
    }
    w.flush()
}

/// Reads a ground-truth file; blank lines are skipped, anything else must parse.
pub fn read_file(path: &Path) -> Result<Vec<TruthRecord>> {
    let file = std::fs::File::open(path).map_err(|source| Error::Io {
        path: path.to_owned(),
        source,
    })?;
    let mut out = Vec::new();
    for (n, line) in std::io::BufReader::new(file).lines().enumerate() {
        let line = line.map_err(|source| Error::Io {
            path: path.to_owned(),
            source,
        })?;
        if line.trim().is_empty() {
            continue;
        }
        let rec = serde_json::from_str(&line).map_err(|e| Error::Record {
            path: path.to_owned(),
            line: n + 1,
            message: e.to_string(),
        })?;
        out.push(rec);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::time::parse_time;

    #[test]
    fn lines_round_trip_and_carry_the_documented_keys() -> Result<()> {
        let rec = TruthRecord::Incident(IncidentRecord {
            kind: "congestion".into(),
            subject: "area-2".into(),
            sensor_type: "traffic".into(),
            sensors: vec!["158325".into()],
            start: parse_time("2014-08-01T10:00:00Z")?,
            end: parse_time("2014-08-01T11:00:00Z")?,
        });
        let line = rec.to_line();
        assert_eq!(
            line,
            r#"{"kind":"incident","type":"congestion","subject":"area-2","sensor_type":"traffic","sensors":["158325"],"start":"2014-08-01T10:00:00Z","end":"2014-08-01T11:00:00Z"}"#
        );
        let back: TruthRecord =
            serde_json::from_str(&line).map_err(|e| Error::Invalid(e.to_string()))?;
        assert_eq!(back, rec);
        Ok(())
    }
}
