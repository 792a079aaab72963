//! A closed window's result for one sensor and field, and its line in the store.

use crate::line_protocol::{encode, FieldValue, LineError, Point};
use crate::window::WindowStats;
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
    /// Appends the `aggregate` line (DESIGN schema) to `out`, millisecond precision.
    pub fn write_line(&self, out: &mut String) -> Result<(), LineError> {
        let s = &self.stats;
        encode(
            &Point {
                measurement: "aggregate",
                // Sorted by key, as InfluxDB prefers ("area" < "field" < "sensor_id" < ...).
                tags: match self.scope {
                    Scope::Sensor => vec![
                        ("field", &self.field),
                        ("sensor_id", &self.subject),
                        ("sensor_type", &self.sensor_type),
                        ("window", &self.window),
                    ],
                    Scope::Area => vec![
                        ("area", &self.subject),
                        ("field", &self.field),
                        ("sensor_type", &self.sensor_type),
                        ("window", &self.window),
                    ],
                },
                fields: {
                    let mut fields = vec![
                        ("count", FieldValue::Int(s.count as i64)),
                        ("mean", FieldValue::Float(s.mean)),
                        ("min", FieldValue::Float(s.min)),
                        ("max", FieldValue::Float(s.max)),
                        ("stddev", FieldValue::Float(s.stddev)),
                        ("p50", FieldValue::Float(s.p50)),
                        ("p95", FieldValue::Float(s.p95)),
                    ];
                    if let (Some(word), Some(code)) = (&self.sax, self.sax_code) {
                        fields.push(("sax", FieldValue::Str(word)));
                        fields.push(("sax_code", FieldValue::Int(code as i64)));
                    }
                    fields
                },
                time_ms: self.end as i64,
            },
            out,
        )
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
