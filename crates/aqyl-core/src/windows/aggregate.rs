//! A closed window's result for one sensor and field, and its line in the store.

use crate::output::line_protocol::{encode_parts, FieldValue, LineError, Parts};
use crate::output::topic_level;
use crate::windows::window::WindowStats;
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// What an aggregate summarises.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    /// One sensor (tag `sensor_id`).
    Sensor,
    /// Every sensor of the type in one area (tag `area`).
    Area,
}

impl Scope {
    /// The store tag naming the subject.
    pub fn tag(self) -> &'static str {
        match self {
            Scope::Sensor => "sensor_id",
            Scope::Area => "area",
        }
    }
}

/// The statistics of one window of one field of one sensor (or area).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Aggregate {
    /// Sensor type (`traffic`).
    pub sensor_type: Arc<str>,
    /// What the window summarises: one sensor, or every sensor of the type in an area.
    pub scope: Scope,
    /// The sensor id, or the area name for area roll-ups.
    pub subject: String,
    /// Field name (`avgSpeed`).
    pub field: Arc<str>,
    /// Window label (`5m`).
    pub window: Arc<str>,
    /// Window start, Unix ms (inclusive).
    pub start: u64,
    /// Window end, Unix ms (exclusive); the point's timestamp.
    pub end: u64,
    /// The statistics.
    pub stats: WindowStats,
    /// The SAX word of the window's values in time order, when the window has SAX.
    pub sax: Option<String>,
    /// The word as a number (base-alphabet, 'a' = 0), for stores that drop strings.
    pub sax_code: Option<u64>,
}

impl Aggregate {
    /// The MQTT topic this aggregate is published on under `prefix`.
    pub fn topic(&self, prefix: &str) -> String {
        format!(
            "{prefix}/aggregates/{}/{}",
            self.sensor_type,
            topic_level(&self.subject)
        )
    }

    /// The JSON payload published for live consumers.
    pub fn to_json(&self) -> String {
        let s = &self.stats;
        serde_json::json!({
            "sensor_type": &*self.sensor_type,
            "scope": self.scope,
            "subject": self.subject,
            "field": &*self.field,
            "window": &*self.window,
            "start": crate::output::rfc3339_ms(self.start as i64),
            "end": crate::output::rfc3339_ms(self.end as i64),
            "count": s.count,
            "mean": s.mean,
            "min": s.min,
            "max": s.max,
            "stddev": s.stddev,
            "p50": s.p50,
            "p95": s.p95,
            "sax": self.sax,
            "sax_code": self.sax_code,
        })
        .to_string()
    }

    /// Appends the `aggregate` line (the store schema in the README) to `out`, millisecond precision.
    pub fn write_line(&self, out: &mut String) -> Result<(), LineError> {
        let s = &self.stats;
        // Sorted by key, as InfluxDB prefers ("area" < "field" < "sensor_id" < ...).
        let tags = match self.scope {
            Scope::Sensor => [
                ("field", &*self.field),
                ("sensor_id", &*self.subject),
                ("sensor_type", &*self.sensor_type),
                ("window", &*self.window),
            ],
            Scope::Area => [
                ("area", &*self.subject),
                ("field", &*self.field),
                ("sensor_type", &*self.sensor_type),
                ("window", &*self.window),
            ],
        };
        let mut fields = [
            ("count", FieldValue::Int(s.count as i64)),
            ("mean", FieldValue::Float(s.mean)),
            ("min", FieldValue::Float(s.min)),
            ("max", FieldValue::Float(s.max)),
            ("stddev", FieldValue::Float(s.stddev)),
            ("p50", FieldValue::Float(s.p50)),
            ("p95", FieldValue::Float(s.p95)),
            ("sax", FieldValue::Int(0)),
            ("sax_code", FieldValue::Int(0)),
        ];
        let used = match (&self.sax, self.sax_code) {
            (Some(word), Some(code)) => {
                fields[7].1 = FieldValue::Str(word);
                fields[8].1 = FieldValue::Int(code as i64);
                9
            }
            _ => 7,
        };
        let point = Parts {
            measurement: "aggregate",
            tags: &tags,
            fields: &fields[..used],
            time_ms: self.end as i64,
        };
        encode_parts(&point, out)
    }

    /// A key that orders aggregates deterministically (for tests and comparisons).
    pub fn sort_key(&self) -> (&str, Scope, &str, &str, &str, u64) {
        (
            &self.sensor_type,
            self.scope,
            &self.subject,
            &self.field,
            &self.window,
            self.start,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_payload_carries_every_statistic() {
        let a = Aggregate {
            sensor_type: "traffic".into(),
            scope: Scope::Area,
            subject: "a/b".into(),
            field: "avgSpeed".into(),
            window: "4h".into(),
            start: 0,
            end: 14_400_000,
            stats: WindowStats {
                count: 2,
                mean: 1.5,
                min: 1.0,
                max: 2.0,
                stddev: 0.5,
                p50: 1.5,
                p95: 1.95,
            },
            sax: Some("ace".into()),
            sax_code: Some(14),
        };
        assert_eq!(a.topic("aqyl"), "aqyl/aggregates/traffic/a%2Fb");
        let v: serde_json::Value = serde_json::from_str(&a.to_json()).unwrap();
        assert_eq!(v["scope"], "area");
        assert_eq!(v["end"], "1970-01-01T04:00:00.000Z");
        assert_eq!(v["sax"], "ace");
        assert_eq!(v["p95"], 1.95);
    }
}
