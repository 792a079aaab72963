//! Incident lifecycle messages: what operators receive on `aqyl/events/...`, what stays
//! retained on `aqyl/active/...`, and the `event` line in the store.

use crate::output::line_protocol::{encode, FieldValue, LineError, Point};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// An event's JSON payload: the fields in name order (as the payload has always had them),
/// for both [`Event::to_json`] and [`Event::to_value`].
#[derive(Serialize)]
struct Wire<'a> {
    area: &'a Option<String>,
    event_type: &'a str,
    id: &'a str,
    level: &'a str,
    message: &'a str,
    rule: &'a str,
    sensor_type: &'a str,
    started_at: String,
    state: &'static str,
    subject: &'a str,
    time: String,
    values: std::collections::BTreeMap<&'a str, WireValue<'a>>,
}

/// A value of an event's `values`: a reading's number or a non-numeric extra.
#[derive(Serialize)]
#[serde(untagged)]
enum WireValue<'a> {
    Number(f64),
    Json(&'a serde_json::Value),
}

impl<'a> Wire<'a> {
    fn of(e: &'a Event) -> Self {
        let numbers = e.values.iter().map(|(k, v)| (&**k, WireValue::Number(*v)));
        let extra = e.extra.iter().map(|(k, v)| (&**k, WireValue::Json(v)));
        Wire {
            area: &e.area,
            event_type: &e.event_type,
            id: &e.id,
            level: &e.level,
            message: &e.message,
            rule: &e.rule,
            sensor_type: &e.sensor_type,
            started_at: crate::output::rfc3339_ms(e.started_at as i64),
            state: e.state.as_str(),
            subject: &e.subject,
            time: crate::output::rfc3339_ms(e.time as i64),
            values: numbers.chain(extra).collect(),
        }
    }
}

/// Lifecycle state of an incident message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventState {
    /// The incident began.
    Start,
    /// Its level changed.
    Update,
    /// It is over.
    End,
}

impl EventState {
    /// As written in payloads and tags.
    pub fn as_str(self) -> &'static str {
        match self {
            EventState::Start => "start",
            EventState::Update => "update",
            EventState::End => "end",
        }
    }
}

/// One lifecycle message of one incident.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Stable per incident (rule, subject, start), so re-deliveries give the same id.
    pub id: String,
    /// Event type (`congestion`).
    pub event_type: String,
    /// What it is about: a sensor id (or an area).
    pub subject: String,
    /// Sensor type of the subject.
    pub sensor_type: Arc<str>,
    /// The sensor's area, when known (area rules count incidents per area).
    pub area: Option<String>,
    /// `start`, `update` or `end`.
    pub state: EventState,
    /// Severity (`warning`, `critical`).
    pub level: String,
    /// Event time the incident started, Unix ms.
    pub started_at: u64,
    /// Event time of this message, Unix ms.
    pub time: u64,
    /// The rule that produced it.
    pub rule: String,
    /// For a human.
    pub message: String,
    /// The reading's values that triggered this message.
    pub values: Vec<(Arc<str>, f64)>,
    /// Values that are not numbers (a corroborating report's id, `corroborated: true`),
    /// written into `values` of the JSON message after the numbers. Neither kept in
    /// checkpoints (an incident's state never holds them) nor written to the store.
    #[serde(skip)]
    pub extra: Vec<(Arc<str>, serde_json::Value)>,
}

impl Event {
    /// The QoS 1 lifecycle topic, `<prefix>/events/<event_type>/<subject>`.
    pub fn topic(&self, prefix: &str) -> String {
        format!(
            "{prefix}/events/{}/{}",
            self.event_type,
            crate::output::topic_level(&self.subject)
        )
    }

    /// The retained topic of the ongoing incident, `<prefix>/active/<event_type>/<subject>`.
    pub fn active_topic(&self, prefix: &str) -> String {
        format!(
            "{prefix}/active/{}/{}",
            self.event_type,
            crate::output::topic_level(&self.subject)
        )
    }

    /// The JSON payload (the event fields of the README's "Topics and payloads"; times as RFC 3339),
    /// written straight from the event: keys in name order, a value's name given twice kept
    /// once (the last), non-finite numbers as `null`.
    pub fn to_json(&self) -> String {
        // Cannot fail: every map key is a string.
        serde_json::to_string(&Wire::of(self)).unwrap_or_default()
    }

    /// The payload of [`Event::to_json`] as a JSON value (for a caller that keeps it, not
    /// text to parse back).
    pub fn to_value(&self) -> serde_json::Value {
        serde_json::to_value(Wire::of(self)).unwrap_or_default()
    }

    /// The `event` line (tags `event_type`, `state`, `subject`; fields `level`, `value`,
    /// `duration_s`), millisecond precision, at the message's event time.
    pub fn write_line(&self, out: &mut String) -> Result<(), LineError> {
        let value = self.values.first().map_or(0.0, |v| v.1);
        let duration_s = self.time.saturating_sub(self.started_at) as f64 / 1000.0;
        encode(
            &Point {
                measurement: "event",
                tags: vec![
                    ("event_type", &self.event_type),
                    ("state", self.state.as_str()),
                    ("subject", &self.subject),
                ],
                fields: vec![
                    ("level", FieldValue::Str(&self.level)),
                    ("value", FieldValue::Float(value)),
                    ("duration_s", FieldValue::Float(duration_s)),
                ],
                time_ms: self.time as i64,
            },
            out,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_topics_and_line() {
        let e = Event {
            extra: Vec::new(),
            id: "abc".into(),
            event_type: "congestion".into(),
            subject: "158324".into(),
            sensor_type: "traffic".into(),
            area: None,
            state: EventState::End,
            level: "warning".into(),
            started_at: 1_406_872_200_000,
            time: 1_406_872_800_000,
            rule: "congestion".into(),
            message: "Congestion over".into(),
            values: vec![("avgSpeed".into(), 50.0)],
        };
        assert_eq!(e.topic("aqyl"), "aqyl/events/congestion/158324");
        assert_eq!(e.active_topic("aqyl"), "aqyl/active/congestion/158324");
        let v: serde_json::Value = serde_json::from_str(&e.to_json()).unwrap();
        assert_eq!(
            (v["state"].as_str(), v["started_at"].as_str()),
            (Some("end"), Some("2014-08-01T05:50:00.000Z"))
        );
        assert_eq!(v["values"]["avgSpeed"], 50.0);
        let mut line = String::new();
        e.write_line(&mut line).unwrap();
        assert_eq!(line, "event,event_type=congestion,state=end,subject=158324 level=\"warning\",value=50,duration_s=600 1406872800000\n");
    }

    #[test]
    fn the_payload_is_written_as_its_json_value_prints() {
        let mut e = Event {
            extra: vec![
                ("report".into(), serde_json::json!("r-1")),
                ("avgSpeed".into(), serde_json::json!(true)),
            ],
            id: "a\"b\\c".into(),
            event_type: "congestion".into(),
            subject: "s/1 ü".into(),
            sensor_type: "traffic".into(),
            area: Some("centre".into()),
            state: EventState::Update,
            level: "critical".into(),
            started_at: 1_406_872_200_123,
            time: 1_406_872_800_000,
            rule: "congestion".into(),
            message: "line\nbreak".into(),
            values: vec![
                ("vehicleCount".into(), 3.0),
                ("avgSpeed".into(), 12.5),
                ("odd".into(), f64::NAN),
                ("big".into(), 1e300),
            ],
        };
        let expected = concat!(
            r#"{"area":"centre","event_type":"congestion","id":"a\"b\\c","level":"critical","#,
            r#""message":"line\nbreak","rule":"congestion","sensor_type":"traffic","#,
            r#""started_at":"2014-08-01T05:50:00.123Z","state":"update","subject":"s/1 ü","#,
            r#""time":"2014-08-01T06:00:00.000Z","values":{"avgSpeed":true,"big":1e+300,"#,
            r#""odd":null,"report":"r-1","vehicleCount":3.0}}"#
        );
        assert_eq!(e.to_json(), expected);
        assert_eq!(e.to_value().to_string(), expected);
        (e.area, e.extra, e.values) = (None, Vec::new(), Vec::new());
        assert_eq!(e.to_json(), e.to_value().to_string());
        assert!(e.to_json().starts_with(r#"{"area":null,"#));
    }
}
