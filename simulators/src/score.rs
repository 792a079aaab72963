//! Detection scoring: Aqyl's incident events against the simulator's ground truth.
//!
//! **Matching rule.** Events are grouped by `id`; an incident event's detection time is its
//! `started_at` (or, failing that, the `time` of its first message, preferring a `start`
//! message). An event *matches* an incident when
//! 1. its `event_type` equals the incident's type (after `--alias EVENT=TRUTH` renames),
//! 2. its `subject` is the incident's subject or one of the incident's `sensors` (a congestion
//!    may be reported per road segment rather than per area), and
//! 3. its detection time lies in `[start - tolerance, end + tolerance]` of the incident.
//!
//! Per incident type: **precision** = matching events / events of that type; **recall** =
//! incidents matched by at least one event / incidents; **delay** = for each detected
//! incident, the earliest matching detection time minus the incident's start (negative when
//! detected early, within the tolerance). Events of types absent from the truth and from
//! `types` are listed as unscored rather than counted as false alarms.

use std::collections::{BTreeMap, BTreeSet};
use std::io::BufRead;
use std::path::Path;

use chrono::{DateTime, Duration, Utc};
use serde::Serialize;
use serde_json::Value;

use crate::error::{Error, Result};
use crate::truth::{IncidentRecord, TruthRecord};

/// One detected incident, summarised from its lifecycle messages.
#[derive(Debug, Clone, PartialEq)]
pub struct Detection {
    /// Stable event id.
    pub id: String,
    /// Event type (after aliasing).
    pub event_type: String,
    /// Subject (area, sensor, garage).
    pub subject: String,
    /// When Aqyl says it started (event time).
    pub started_at: DateTime<Utc>,
}

fn parse_ts(v: Option<&Value>) -> Option<DateTime<Utc>> {
    v.and_then(Value::as_str)
        .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
        .map(|t| t.with_timezone(&Utc))
}

/// Extracts the event object from one recorded line: a bare event, a `{"topic", "payload"}`
/// wrapper (payload as object or JSON string), or `mosquitto_sub -v` output (`topic {json}`).
/// Returns `None` for lines that are not events (e.g. empty retained messages).
pub fn parse_event_line(line: &str) -> std::result::Result<Option<Value>, String> {
    let line = line.trim();
    if line.is_empty() {
        return Ok(None);
    }
    let json = if line.starts_with('{') {
        line
    } else {
        match line.split_once(' ') {
            Some((_, rest)) if rest.trim_start().starts_with('{') => rest.trim_start(),
            _ => return Ok(None),
        }
    };
    let v: Value = serde_json::from_str(json).map_err(|e| format!("not JSON: {e}"))?;
    Ok(match v.get("payload") {
        Some(Value::String(s)) if v.get("event_type").is_none() => {
            if s.trim().is_empty() {
                None
            } else {
                Some(serde_json::from_str(s).map_err(|e| format!("payload is not JSON: {e}"))?)
            }
        }
        Some(p @ Value::Object(_)) if v.get("event_type").is_none() => Some(p.clone()),
        _ => Some(v),
    })
}

/// Folds event messages into one [`Detection`] per event id. Messages without an `id`,
/// `event_type`, `subject` or a usable time are counted in the second value and skipped.
pub fn detections(events: &[Value], aliases: &BTreeMap<String, String>) -> (Vec<Detection>, u64) {
    let mut by_id: BTreeMap<String, (Detection, bool)> = BTreeMap::new();
    let mut skipped = 0;
    for e in events {
        let s = |k: &str| e.get(k).and_then(Value::as_str).map(str::to_owned);
        let (Some(id), Some(ty), Some(subject)) = (s("id"), s("event_type"), s("subject")) else {
            skipped += 1;
            continue;
        };
        let is_start = s("state").as_deref() == Some("start");
        let Some(t) = parse_ts(e.get("started_at")).or_else(|| parse_ts(e.get("time"))) else {
            skipped += 1;
            continue;
        };
        let event_type = aliases.get(&ty).cloned().unwrap_or(ty);
        let d = Detection {
            id: id.clone(),
            event_type,
            subject,
            started_at: t,
        };
        match by_id.get_mut(&id) {
            None => {
                by_id.insert(id, (d, is_start));
            }
            Some((old, old_start)) => {
                // A start message is authoritative; otherwise keep the earliest time seen.
                if (is_start && !*old_start)
                    || (is_start == *old_start && d.started_at < old.started_at)
                {
                    *old = d;
                    *old_start = is_start;
                }
            }
        }
    }
    (by_id.into_values().map(|(d, _)| d).collect(), skipped)
}

/// Scores for one incident type.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct TypeScore {
    /// Incident type.
    pub incident_type: String,
    /// Incidents in the truth.
    pub incidents: u64,
    /// Incidents matched by at least one event.
    pub detected: u64,
    /// Events of this type.
    pub events: u64,
    /// Events matching an incident.
    pub true_events: u64,
    /// Events matching none.
    pub false_alarms: u64,
    /// true_events / events (1 when there are no events).
    pub precision: f64,
    /// detected / incidents (1 when there are no incidents).
    pub recall: f64,
    /// Mean detection delay in seconds over detected incidents.
    pub delay_mean_s: Option<f64>,
    /// Median detection delay in seconds.
    pub delay_p50_s: Option<f64>,
    /// Largest detection delay in seconds.
    pub delay_max_s: Option<f64>,
    /// Subjects and starts of missed incidents.
    pub missed: Vec<String>,
    /// Ids of false alarms.
    pub false_alarm_ids: Vec<String>,
}

/// The whole report.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Report {
    /// Per incident type.
    pub types: Vec<TypeScore>,
    /// Distinct events read.
    pub events: u64,
    /// Event messages that could not be used.
    pub skipped_messages: u64,
    /// Event counts of types not scored.
    pub unscored: BTreeMap<String, u64>,
    /// Tolerance used, in seconds.
    pub tolerance_s: i64,
}

fn matches(d: &Detection, inc: &IncidentRecord, tol: Duration) -> bool {
    d.event_type == inc.kind
        && (d.subject == inc.subject || inc.sensors.contains(&d.subject))
        && inc.start - tol <= d.started_at
        && d.started_at <= inc.end + tol
}

/// Scores `detections` against the incidents of `truth` (faults are ignored). `types` adds
/// incident types to score even when the truth has none of them (so their events count as
/// false alarms).
pub fn score(
    truth: &[TruthRecord],
    detections: &[Detection],
    tolerance: Duration,
    types: &[String],
) -> Report {
    let incidents: Vec<&IncidentRecord> = truth
        .iter()
        .filter_map(|r| match r {
            TruthRecord::Incident(i) => Some(i),
            TruthRecord::Fault(_) => None,
        })
        .collect();
    let scored: BTreeSet<String> = incidents
        .iter()
        .map(|i| i.kind.clone())
        .chain(types.iter().cloned())
        .collect();
    let mut report = Report {
        events: detections.len() as u64,
        tolerance_s: tolerance.num_seconds(),
        ..Report::default()
    };
    for d in detections
        .iter()
        .filter(|d| !scored.contains(&d.event_type))
    {
        *report.unscored.entry(d.event_type.clone()).or_default() += 1;
    }
    for ty in scored {
        let incs: Vec<&&IncidentRecord> = incidents.iter().filter(|i| i.kind == ty).collect();
        let dets: Vec<&Detection> = detections.iter().filter(|d| d.event_type == ty).collect();
        let mut s = TypeScore {
            incident_type: ty.clone(),
            incidents: incs.len() as u64,
            events: dets.len() as u64,
            ..TypeScore::default()
        };
        for d in &dets {
            if incs.iter().any(|i| matches(d, i, tolerance)) {
                s.true_events += 1;
            } else {
                s.false_alarms += 1;
                s.false_alarm_ids.push(d.id.clone());
            }
        }
        let mut delays = Vec::new();
        for i in &incs {
            match dets
                .iter()
                .filter(|d| matches(d, i, tolerance))
                .map(|d| d.started_at)
                .min()
            {
                Some(first) => {
                    s.detected += 1;
                    delays.push((first - i.start).num_milliseconds() as f64 / 1000.0);
                }
                None => s.missed.push(format!(
                    "{} at {}",
                    i.subject,
                    crate::time::rfc3339(i.start)
                )),
            }
        }
        s.precision = if s.events == 0 {
            1.0
        } else {
            s.true_events as f64 / s.events as f64
        };
        s.recall = if s.incidents == 0 {
            1.0
        } else {
            s.detected as f64 / s.incidents as f64
        };
        if !delays.is_empty() {
            delays.sort_by(f64::total_cmp);
            s.delay_mean_s = Some(delays.iter().sum::<f64>() / delays.len() as f64);
            s.delay_p50_s = Some(delays[(delays.len() - 1) / 2]);
            s.delay_max_s = delays.last().copied();
        }
        report.types.push(s);
    }
    report
}

/// Reads recorded event messages, one per line (see [`parse_event_line`]).
pub fn read_events(path: &Path) -> Result<Vec<Value>> {
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
        match parse_event_line(&line) {
            Ok(Some(v)) => out.push(v),
            Ok(None) => {}
            Err(message) => {
                return Err(Error::Record {
                    path: path.to_owned(),
                    line: n + 1,
                    message,
                })
            }
        }
    }
    Ok(out)
}

impl Report {
    /// A plain-text table for the terminal.
    pub fn table(&self) -> String {
        let mut out = format!(
            "{:<14} {:>9} {:>8} {:>7} {:>7} {:>9} {:>7} {:>11} {:>11}\n",
            "type",
            "incidents",
            "detected",
            "events",
            "false",
            "precision",
            "recall",
            "delay_p50",
            "delay_max"
        );
        let secs = |v: Option<f64>| v.map_or("-".to_owned(), |s| format!("{s:.0}s"));
        for t in &self.types {
            out.push_str(&format!(
                "{:<14} {:>9} {:>8} {:>7} {:>7} {:>9.3} {:>7.3} {:>11} {:>11}\n",
                t.incident_type,
                t.incidents,
                t.detected,
                t.events,
                t.false_alarms,
                t.precision,
                t.recall,
                secs(t.delay_p50_s),
                secs(t.delay_max_s)
            ));
            for m in &t.missed {
                out.push_str(&format!("  missed {m}\n"));
            }
        }
        for (ty, n) in &self.unscored {
            out.push_str(&format!("unscored event type {ty}: {n} events\n"));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::time::parse_time;
    use serde_json::json;

    fn inc(kind: &str, subject: &str, sensors: &[&str], start: &str, end: &str) -> TruthRecord {
        TruthRecord::Incident(IncidentRecord {
            kind: kind.into(),
            subject: subject.into(),
            sensor_type: "traffic".into(),
            sensors: sensors.iter().map(|s| s.to_string()).collect(),
            start: parse_time(start).unwrap(),
            end: parse_time(end).unwrap(),
        })
    }

    fn ev(id: &str, ty: &str, subject: &str, state: &str, started_at: &str) -> Value {
        json!({"id": id, "event_type": ty, "subject": subject, "state": state, "started_at": started_at, "time": started_at, "level": 1})
    }

    #[test]
    fn three_incidents_two_detected_one_false_alarm() {
        let truth = vec![
            inc(
                "congestion",
                "area-1",
                &["1", "6"],
                "2014-08-01T08:00:00Z",
                "2014-08-01T09:00:00Z",
            ),
            inc(
                "congestion",
                "area-2",
                &["2", "7"],
                "2014-08-01T10:00:00Z",
                "2014-08-01T11:00:00Z",
            ),
            inc(
                "congestion",
                "area-3",
                &["3", "8"],
                "2014-08-01T12:00:00Z",
                "2014-08-01T13:00:00Z",
            ),
        ];
        let events = vec![
            ev("a", "congestion", "area-1", "start", "2014-08-01T08:10:00Z"),
            ev("a", "congestion", "area-1", "end", "2014-08-01T08:10:00Z"),
            // Per-sensor subject inside area-2.
            ev("b", "congestion", "7", "start", "2014-08-01T10:05:00Z"),
            // Nothing scripted in area-4.
            ev("c", "congestion", "area-4", "start", "2014-08-01T10:00:00Z"),
            ev("q", "low_quality", "9", "start", "2014-08-01T10:00:00Z"),
        ];
        let (dets, skipped) = detections(&events, &BTreeMap::new());
        assert_eq!((dets.len(), skipped), (4, 0));
        let r = score(&truth, &dets, Duration::minutes(10), &[]);
        let c = &r.types[0];
        assert_eq!(
            (
                c.incidents,
                c.detected,
                c.events,
                c.true_events,
                c.false_alarms
            ),
            (3, 2, 3, 2, 1)
        );
        assert!((c.precision - 2.0 / 3.0).abs() < 1e-12);
        assert!((c.recall - 2.0 / 3.0).abs() < 1e-12);
        assert_eq!(c.delay_p50_s, Some(300.0));
        assert_eq!(c.delay_max_s, Some(600.0));
        assert_eq!(c.missed.len(), 1);
        assert_eq!(r.unscored.get("low_quality"), Some(&1));
    }

    #[test]
    fn tolerance_and_aliases() {
        let truth = vec![inc(
            "parking_full",
            "BRUUNS",
            &["BRUUNS"],
            "2014-08-01T12:00:00Z",
            "2014-08-01T13:00:00Z",
        )];
        let late = ev(
            "x",
            "garage_full",
            "BRUUNS",
            "start",
            "2014-08-01T13:09:00Z",
        );
        let aliases = BTreeMap::from([("garage_full".to_owned(), "parking_full".to_owned())]);
        let (dets, _) = detections(&[late], &aliases);
        assert_eq!(
            score(&truth, &dets, Duration::minutes(10), &[]).types[0].recall,
            1.0
        );
        assert_eq!(
            score(&truth, &dets, Duration::minutes(5), &[]).types[0].recall,
            0.0
        );
        assert_eq!(
            score(&truth, &dets, Duration::minutes(5), &[]).types[0].precision,
            0.0
        );
    }

    #[test]
    fn recorded_line_shapes() {
        let bare = r#"{"id":"1","event_type":"congestion","subject":"a","state":"start","time":"2014-08-01T08:00:00Z"}"#;
        assert!(parse_event_line(bare).is_ok_and(|v| v.is_some()));
        let wrapped = format!(r#"{{"topic":"aqyl/events/congestion/a","payload":{bare}}}"#);
        assert_eq!(parse_event_line(&wrapped), parse_event_line(bare));
        let as_string =
            serde_json::to_string(&json!({"topic": "t", "payload": bare})).unwrap_or_default();
        assert_eq!(parse_event_line(&as_string), parse_event_line(bare));
        let sub = format!("aqyl/events/congestion/a {bare}");
        assert_eq!(parse_event_line(&sub), parse_event_line(bare));
        assert_eq!(parse_event_line("aqyl/active/congestion/a "), Ok(None));
        assert!(parse_event_line("{broken").is_err());
    }
}
