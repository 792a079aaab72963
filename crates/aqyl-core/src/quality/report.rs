//! What quality scoring gives out: a report per assessment (retained on
//! `aqyl/quality/<sensor_id>`, the `quality` measurement), hourly and daily roll-ups (the
//! `quality_rollup` measurement), and a `quality` incident while a sensor's score is below
//! the threshold.

use super::metrics::Metrics5;
use super::score::{Findings, Neighbours};
use super::sensor::Assessment;
use crate::output::line_protocol::{encode, FieldValue, LineError, Point};
use crate::{Event, EventState};
use std::sync::Arc;

/// The quality of one sensor as of one reading (or silence).
#[derive(Debug, Clone, PartialEq)]
pub struct QualityReport {
    /// Sensor type.
    pub sensor_type: Arc<str>,
    /// Sensor id.
    pub sensor_id: Arc<str>,
    /// Its area, when known.
    pub area: Option<Arc<str>>,
    /// Event time it is about, Unix ms.
    pub time: u64,
    /// The overall score, 0..=1.
    pub score: f64,
    /// The five metrics.
    pub metrics: Metrics5,
    /// What was wrong.
    pub findings: Findings,
}

impl QualityReport {
    /// A report from an assessment (its neighbour verdict settled).
    pub fn new(
        sensor_type: Arc<str>,
        sensor_id: Arc<str>,
        area: Option<Arc<str>>,
        a: Assessment,
    ) -> Self {
        Self {
            score: super::score::score(&a.metrics, &a.findings),
            sensor_type,
            sensor_id,
            area,
            time: a.time,
            metrics: a.metrics,
            findings: a.findings,
        }
    }

    /// The retained topic, `<prefix>/quality/<sensor_id>`.
    pub fn topic(&self, prefix: &str) -> String {
        format!(
            "{prefix}/quality/{}",
            crate::output::topic_level(&self.sensor_id)
        )
    }

    /// The JSON payload: the documented fields (`sensor_id`, `sensor_type`, `time`, `score`, and
    /// `{absolute, rated, unit}` under each metric's name), plus `area`, `problems` (why the
    /// score is low, for a human) and the detectors' findings.
    pub fn to_json(&self) -> String {
        let mut v = serde_json::json!({
            "sensor_id": self.sensor_id,
            "sensor_type": &*self.sensor_type,
            "area": self.area,
            "time": crate::output::rfc3339_ms(self.time as i64),
            "score": round(self.score),
            "problems": self.findings.problems(),
            "silent": self.findings.silent,
            "flat_line": self.findings.flat_line,
            "spikes": jumps(&self.findings.spikes),
            "shifts": jumps(&self.findings.shifts),
            "neighbours": self.findings.neighbours,
        });
        for (name, m) in self.metrics.named() {
            v[name] = serde_json::json!({
                "absolute": round(m.absolute),
                "rated": round(m.rated),
                "unit": m.unit.as_str(),
            });
        }
        v.to_string()
    }

    /// The `quality` line: tags `sensor_type`, `sensor_id`; fields the rated metrics under
    /// their names, `score`, and the absolute values as `<metric>_absolute`.
    pub fn write_line(&self, out: &mut String) -> Result<(), LineError> {
        let named = self.metrics.named();
        let mut fields: Vec<(&str, FieldValue<'_>)> = Vec::with_capacity(11);
        for (name, m) in named {
            fields.push((name, FieldValue::Float(m.rated)));
        }
        fields.push(("score", FieldValue::Float(self.score)));
        const ABSOLUTE: [&str; 5] = [
            "frequency_absolute",
            "age_absolute",
            "latency_absolute",
            "completeness_absolute",
            "correctness_absolute",
        ];
        for (name, (_, m)) in ABSOLUTE.iter().zip(named) {
            fields.push((name, FieldValue::Float(m.absolute)));
        }
        encode(
            &Point {
                measurement: "quality",
                tags: vec![
                    ("sensor_id", &self.sensor_id),
                    ("sensor_type", &self.sensor_type),
                ],
                fields,
                time_ms: self.time as i64,
            },
            out,
        )
    }
}

fn jumps(list: &[(String, f64)]) -> Vec<serde_json::Value> {
    list.iter()
        .map(|(f, z)| serde_json::json!({"field": f, "z": round(*z)}))
        .collect()
}

fn round(v: f64) -> f64 {
    (v * 1e6).round() / 1e6
}

/// What quality scoring gives to the sinks (quality incidents go with the other events).
#[derive(Debug, Clone, PartialEq)]
pub enum QualityRecord {
    /// A report: retained on MQTT, a `quality` point in the store.
    Report(QualityReport),
    /// An hourly or daily roll-up: a `quality_rollup` point in the store.
    Rollup(QualityRollup),
}

impl QualityRecord {
    /// The record's line-protocol line.
    pub fn write_line(&self, out: &mut String) -> Result<(), LineError> {
        match self {
            QualityRecord::Report(r) => r.write_line(out),
            QualityRecord::Rollup(r) => r.write_line(out),
        }
    }
}

/// Mean, min and max of each rated metric and the score over an hour or a day.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct QualityRollup {
    /// Sensor type.
    pub sensor_type: Arc<str>,
    /// Sensor id.
    pub sensor_id: Arc<str>,
    /// `1h` or `1d`.
    #[serde(with = "window_label")]
    pub window: window_label::Label,
    /// Window end, Unix ms (the point's time).
    pub end: u64,
    /// Reports summarised.
    pub count: u64,
    /// Per metric (five rated metrics, then `score`): (sum, min, max).
    stats: [(f64, f64, f64); 6],
}

/// Names of the rolled-up values.
const ROLLED: [&str; 6] = [
    "frequency",
    "age",
    "latency",
    "completeness",
    "correctness",
    "score",
];

impl QualityRollup {
    /// `(name, mean, min, max)` of each rolled-up value.
    pub fn stats(&self) -> impl Iterator<Item = (&'static str, f64, f64, f64)> + '_ {
        ROLLED
            .iter()
            .zip(self.stats.iter())
            .map(|(n, s)| (*n, s.0 / self.count.max(1) as f64, s.1, s.2))
    }

    /// The `quality_rollup` line: tags `sensor_type`, `sensor_id`, `window`; fields
    /// `<metric>_mean`, `<metric>_min`, `<metric>_max` and `count`, at the window end.
    pub fn write_line(&self, out: &mut String) -> Result<(), LineError> {
        let names: Vec<[String; 3]> = ROLLED
            .iter()
            .map(|n| [format!("{n}_mean"), format!("{n}_min"), format!("{n}_max")])
            .collect();
        let mut fields: Vec<(&str, FieldValue<'_>)> =
            vec![("count", FieldValue::Int(self.count as i64))];
        for ((_, mean, min, max), n) in self.stats().zip(names.iter()) {
            fields.push((&n[0], FieldValue::Float(mean)));
            fields.push((&n[1], FieldValue::Float(min)));
            fields.push((&n[2], FieldValue::Float(max)));
        }
        encode(
            &Point {
                measurement: "quality_rollup",
                tags: vec![
                    ("sensor_id", &self.sensor_id),
                    ("sensor_type", &self.sensor_type),
                    ("window", self.window),
                ],
                fields,
                time_ms: self.end as i64,
            },
            out,
        )
    }
}

/// Hourly and daily roll-ups of one sensor's reports, aligned to UTC, in event time.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct Rollups {
    open: Vec<QualityRollup>,
}

/// The roll-up windows: label and length in ms.
pub const ROLLUP_WINDOWS: [(&str, u64); 2] = [("1h", 3_600_000), ("1d", 86_400_000)];

/// A roll-up's window, written as its label and read back as one of [`ROLLUP_WINDOWS`].
mod window_label {
    use serde::de::Error;
    use serde::{Deserialize, Deserializer, Serializer};

    /// `&'static str` under another name: serde's derive takes a field written `&str` as
    /// borrowed from the input, which a `'static` one cannot be.
    pub type Label = &'static str;

    pub fn serialize<S: Serializer>(label: &&'static str, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(label)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<&'static str, D::Error> {
        let label = String::deserialize(d)?;
        super::ROLLUP_WINDOWS
            .iter()
            .map(|(l, _)| *l)
            .find(|l| *l == label)
            .ok_or_else(|| D::Error::custom(format!("unknown roll-up window {label:?}")))
    }
}

impl Rollups {
    /// Adds a report; returns the roll-ups it closed (a report past their end).
    pub fn add(&mut self, r: &QualityReport, out: &mut Vec<QualityRollup>) {
        self.close(r.time, out);
        let values = [
            r.metrics.frequency.rated,
            r.metrics.age.rated,
            r.metrics.latency.rated,
            r.metrics.completeness.rated,
            r.metrics.correctness.rated,
            r.score,
        ];
        for (label, len) in ROLLUP_WINDOWS {
            let end = (r.time / len + 1) * len;
            match self.open.iter_mut().find(|o| o.window == label) {
                Some(o) => {
                    o.count += 1;
                    for (s, v) in o.stats.iter_mut().zip(values) {
                        *s = (s.0 + v, s.1.min(v), s.2.max(v));
                    }
                }
                None => self.open.push(QualityRollup {
                    sensor_type: r.sensor_type.clone(),
                    sensor_id: r.sensor_id.clone(),
                    window: label,
                    end,
                    count: 1,
                    stats: values.map(|v| (v, v, v)),
                }),
            }
        }
    }

    /// Closes the roll-ups whose end is at or before `now`.
    pub fn close(&mut self, now: u64, out: &mut Vec<QualityRollup>) {
        let (done, open): (Vec<_>, Vec<_>) = std::mem::take(&mut self.open)
            .into_iter()
            .partition(|o| o.end <= now);
        self.open = open;
        out.extend(done);
    }

    /// Whether nothing is open.
    pub fn is_empty(&self) -> bool {
        self.open.is_empty()
    }
}

/// When a sensor's `quality` incident starts and ends (`[quality]` `threshold`,
/// `recover_margin`, `alert_after`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AlarmSettings {
    /// A score below this is low.
    pub threshold: f64,
    /// A score at or above `threshold + recover_margin` is good again; in between, an ongoing
    /// incident neither ends nor counts towards ending.
    pub recover_margin: f64,
    /// How long, in the sensor's expected intervals, the score must stay low to start an
    /// incident, or good to end one: the run of low (good) reports must span more than this,
    /// from its first report's time to the current one's. `0`: at the first report.
    pub alert_after: f64,
}

impl AlarmSettings {
    /// Starts at the first report below `threshold`, ends at the first at or above it (no
    /// hysteresis).
    pub fn immediate(threshold: f64) -> Self {
        Self {
            threshold,
            recover_margin: 0.0,
            alert_after: 0.0,
        }
    }

    /// Whether a run from `first` to `now` lasts long enough for a sensor reporting every
    /// `interval_ms`.
    fn lasted(&self, first: u64, now: u64, interval_ms: u64) -> bool {
        self.alert_after <= 0.0
            || now.saturating_sub(first) as f64 > self.alert_after * interval_ms as f64
    }
}

/// The `quality` incident of one sensor, with hysteresis: it starts when the score has stayed
/// below the threshold for more than `alert_after` expected intervals (every report from the
/// first low one to the current one low; `started_at` is the first, the message is sent at
/// the current one), and ends when it has stayed at or above `threshold + recover_margin` as
/// long. With the default of one interval, one bad reading among good ones (a malformed
/// message, a spike, a single missed reading) is told by its report's score, never by an
/// incident: a sensor reporting every interval needs three low readings in a row, a silent
/// one two watchdog failures (they come 1.05 intervals apart). A broken sensor gives one
/// incident, not one per reading. A silence the whole feed shares is left out altogether, and
/// so is a report older than one already judged (live, readings waiting for the watermark
/// reach the alarm after the silence that followed them).
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct Alarm {
    /// The ongoing incident's start.
    since: Option<u64>,
    /// The first report of the current run (low ones while there is no incident, good ones
    /// during one).
    run_start: Option<u64>,
    /// What the run's low reports found wrong (no incident yet).
    problems: Vec<String>,
    /// The newest report's time.
    latest: u64,
    /// The newest report of an input (a reading, a rejected or a late message; not a
    /// silence): the sensor is forgotten `pipeline.state_ttl` after it.
    last_input: u64,
    /// The ongoing incident's area, for its end when the sensor is forgotten.
    area: Option<String>,
}

/// Event type and rule name of quality incidents.
pub const QUALITY_EVENT: &str = "quality";

/// Most distinct problems named in an incident's start message.
const MAX_PROBLEMS: usize = 4;

impl Alarm {
    /// Judges a report of a sensor expected every `interval_ms`; the lifecycle message when
    /// an incident starts or ends.
    pub fn check(
        &mut self,
        r: &QualityReport,
        settings: &AlarmSettings,
        interval_ms: u64,
    ) -> Option<Event> {
        if !r.findings.silent {
            self.last_input = self.last_input.max(r.time);
        }
        if r.time < self.latest {
            // Older than a report already judged: live, a silence overtakes the readings
            // before it that still wait for the watermark. The silence is the newer news.
            return None;
        }
        self.latest = r.time;
        if r.findings.silent && r.findings.neighbours == Neighbours::Agree {
            // A silence the whole feed shares says nothing about the sensor: it neither
            // starts, continues, interrupts nor ends its incident.
            return None;
        }
        let (state, started_at, message) = match self.since {
            None => {
                if r.score >= settings.threshold {
                    self.run_start = None;
                    self.problems.clear();
                    return None;
                }
                let first = *self.run_start.get_or_insert(r.time);
                for p in r.findings.problems() {
                    if self.problems.len() < MAX_PROBLEMS && !self.problems.contains(&p) {
                        self.problems.push(p);
                    }
                }
                if !settings.lasted(first, r.time, interval_ms) {
                    return None;
                }
                let why = if self.problems.is_empty() {
                    "its ratings fell".to_string()
                } else {
                    self.problems.join("; ")
                };
                self.since = Some(first);
                self.area = r.area.as_deref().map(str::to_string);
                self.run_start = None;
                self.problems.clear();
                let low_since = if first == r.time {
                    String::new()
                } else {
                    format!(" since {}", crate::output::rfc3339_ms(first as i64))
                };
                (
                    EventState::Start,
                    first,
                    format!(
                        "Quality of {} sensor {} fell to {:.2} (threshold {}){low_since}: {why}",
                        r.sensor_type, r.sensor_id, r.score, settings.threshold
                    ),
                )
            }
            Some(since) => {
                if r.score < settings.threshold + settings.recover_margin {
                    self.run_start = None;
                    return None;
                }
                let first = *self.run_start.get_or_insert(r.time);
                if !settings.lasted(first, r.time, interval_ms) {
                    return None;
                }
                self.since = None;
                self.area = None;
                self.run_start = None;
                (
                    EventState::End,
                    since,
                    format!(
                        "Quality of {} sensor {} recovered to {:.2}",
                        r.sensor_type, r.sensor_id, r.score
                    ),
                )
            }
        };
        Some(Event {
            extra: Vec::new(),
            id: incident_id(&r.sensor_type, &r.sensor_id, started_at),
            event_type: QUALITY_EVENT.into(),
            subject: r.sensor_id.to_string(),
            sensor_type: r.sensor_type.clone(),
            area: r.area.as_deref().map(str::to_string),
            state,
            level: "warning".into(),
            started_at,
            time: r.time,
            rule: QUALITY_EVENT.into(),
            message,
            values: vec![("score".into(), r.score)],
        })
    }

    /// Whether an incident is ongoing.
    pub fn is_active(&self) -> bool {
        self.since.is_some()
    }

    /// The time of the sensor's newest input (reading, rejected or late message) it has
    /// judged; if none yet (live, the watchdog's failures may come before the readings that
    /// wait for the watermark), its newest report's.
    pub fn last_input(&self) -> u64 {
        if self.last_input > 0 {
            self.last_input
        } else {
            self.latest
        }
    }

    /// The `end` of the ongoing incident, if any, of a sensor forgotten because it has sent
    /// nothing for `ttl_ms` (`pipeline.state_ttl`): nothing else would ever end it. Same id
    /// as its start; dated when the sensor had been silent for `ttl_ms` (or at its newest
    /// report, if later); no values (no reading ends it).
    pub fn forgotten(&self, sensor_type: &Arc<str>, sensor_id: &str, ttl_ms: u64) -> Option<Event> {
        let since = self.since?;
        let ttl = crate::duration::label(std::time::Duration::from_millis(ttl_ms));
        Some(Event {
            extra: Vec::new(),
            id: incident_id(sensor_type, sensor_id, since),
            event_type: QUALITY_EVENT.into(),
            subject: sensor_id.to_string(),
            sensor_type: sensor_type.clone(),
            area: self.area.clone(),
            state: EventState::End,
            level: "warning".into(),
            started_at: since,
            time: self.last_input().saturating_add(ttl_ms).max(self.latest),
            rule: QUALITY_EVENT.into(),
            message: format!(
                "{sensor_type} sensor {sensor_id} quality incident ended: no reading for {ttl}; \
                 the sensor is forgotten"
            ),
            values: Vec::new(),
        })
    }
}

/// The id of a sensor's `quality` incident that started at `started_at`.
fn incident_id(sensor_type: &str, sensor_id: &str, started_at: u64) -> String {
    // The type is part of the id: two types may share sensor ids.
    crate::rules::incident_id(
        QUALITY_EVENT,
        &format!("{sensor_type}/{sensor_id}"),
        started_at,
    )
}

#[cfg(test)]
mod tests {
    use super::super::metrics::{QualitySettings, StreamQuality};
    use super::*;

    fn report(t: u64, flat: bool) -> QualityReport {
        let metrics = StreamQuality::new(QualitySettings {
            expected_interval_ms: 300_000,
            max_latency_ms: 1000,
            long_window: 20,
            short_window: 5,
        })
        .current();
        QualityReport::new(
            "parking".into(),
            "BRUUNS".into(),
            Some("area-1".into()),
            Assessment {
                time: t,
                metrics,
                findings: Findings {
                    flat_line: flat,
                    ..Findings::default()
                },
                z: Vec::new(),
            },
        )
    }

    #[test]
    fn payload_topic_and_line_follow_the_design() {
        let r = report(1_406_872_800_000, true);
        assert_eq!(r.topic("aqyl"), "aqyl/quality/BRUUNS");
        let v: serde_json::Value = serde_json::from_str(&r.to_json()).unwrap();
        assert_eq!(v["sensor_id"], "BRUUNS");
        assert_eq!(v["sensor_type"], "parking");
        assert_eq!(v["time"], "2014-08-01T06:00:00.000Z");
        assert_eq!(v["score"], 0.5);
        assert_eq!(v["correctness"]["rated"], 1.0);
        assert_eq!(v["frequency"]["unit"], "Hz");
        assert_eq!(v["problems"][0], "values stuck");
        let mut line = String::new();
        r.write_line(&mut line).unwrap();
        assert!(line.starts_with("quality,sensor_id=BRUUNS,sensor_type=parking frequency=1,age=1,latency=1,completeness=1,correctness=1,score=0.5,frequency_absolute=0,"), "{line}");
        assert!(line.ends_with(" 1406872800000\n"));
    }

    #[test]
    fn an_open_rollup_survives_serialization_with_its_window() {
        let mut r = Rollups::default();
        let mut out = Vec::new();
        r.add(&report(10, false), &mut out);
        let json = serde_json::to_string(&r).unwrap();
        let back: Rollups = serde_json::from_str(&json).unwrap();
        assert_eq!(back.open, r.open);
        let bad = json.replace("\"1d\"", "\"1w\"");
        assert!(serde_json::from_str::<Rollups>(&bad).is_err());
    }

    #[test]
    fn rollups_close_with_the_hour_and_the_day() {
        let mut r = Rollups::default();
        let mut out = Vec::new();
        let h = 3_600_000;
        r.add(&report(10, false), &mut out);
        r.add(&report(20, true), &mut out);
        assert!(out.is_empty());
        r.add(&report(h + 5, false), &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!((out[0].window, out[0].end, out[0].count), ("1h", h, 2));
        let score = out[0].stats().find(|s| s.0 == "score").unwrap();
        assert_eq!(score, ("score", 0.75, 0.5, 1.0));
        let mut line = String::new();
        out[0].write_line(&mut line).unwrap();
        assert!(line.starts_with("quality_rollup,sensor_id=BRUUNS,sensor_type=parking,window=1h count=2i,frequency_mean=1,"), "{line}");
        r.close(86_400_000, &mut out);
        assert_eq!(out.len(), 3);
        let day = out.iter().find(|o| o.window == "1d").unwrap();
        assert_eq!((day.end, day.count), (86_400_000, 3));
        assert!(r.is_empty());
    }

    fn scored(t: u64, score: f64) -> QualityReport {
        let mut r = report(t, score < 0.6);
        r.score = score;
        r
    }

    const HYSTERESIS: AlarmSettings = AlarmSettings {
        threshold: 0.6,
        recover_margin: 0.1,
        alert_after: 1.0,
    };

    /// The lifecycle an alarm gives for a run of scores one interval (10 ms) apart, as
    /// (state, started_at, time) in intervals.
    fn lifecycle(scores: &[f64], settings: &AlarmSettings) -> Vec<(EventState, u64, u64)> {
        let mut a = Alarm::default();
        scores
            .iter()
            .enumerate()
            .filter_map(|(i, s)| a.check(&scored(10 * i as u64, *s), settings, 10))
            .map(|e| (e.state, e.started_at / 10, e.time / 10))
            .collect()
    }

    #[test]
    fn without_hysteresis_the_alarm_starts_below_the_threshold_and_ends_on_recovery() {
        let mut a = Alarm::default();
        let s = AlarmSettings::immediate(0.6);
        assert_eq!(a.check(&report(0, false), &s, 300_000), None);
        let start = a.check(&report(300_000, true), &s, 300_000).unwrap();
        assert_eq!(start.state, EventState::Start);
        assert!(start.message.contains("values stuck"), "{}", start.message);
        assert_eq!(a.check(&report(600_000, true), &s, 300_000), None);
        let end = a.check(&report(900_000, false), &s, 300_000).unwrap();
        assert_eq!(
            (end.state, end.id.as_str()),
            (EventState::End, start.id.as_str())
        );
        assert_eq!(end.topic("aqyl"), "aqyl/events/quality/BRUUNS");
    }

    #[test]
    fn one_bad_report_among_good_ones_starts_no_incident() {
        // A malformed message (0.45), then good readings again (0.93, 1.0): today's demo
        // flapping, twice; and two bad readings in a row (one interval of low score).
        let scores = [1.0, 0.45, 0.93, 1.0, 1.0, 0.45, 0.93, 1.0, 0.3, 0.4, 1.0];
        assert_eq!(lifecycle(&scores, &HYSTERESIS), []);
        assert_eq!(
            lifecycle(&scores, &AlarmSettings::immediate(0.6)).len(),
            6,
            "without hysteresis: three incidents"
        );
    }

    #[test]
    fn a_broken_sensor_gives_one_incident_without_flapping() {
        // Broken from report 2: low, with an odd passable score and scores just above the
        // threshold (but below threshold + margin) among them; then fixed from report 11.
        let scores = [
            1.0, 1.0, 0.3, 0.45, 0.5, 0.93, 0.3, 0.65, 0.4, 0.95, 0.65, 0.95, 1.0, 1.0, 1.0,
        ];
        assert_eq!(
            lifecycle(&scores, &HYSTERESIS),
            [(EventState::Start, 2, 4), (EventState::End, 2, 13)]
        );
        // The same run without hysteresis flaps.
        assert!(lifecycle(&scores, &AlarmSettings::immediate(0.6)).len() >= 6);
    }

    #[test]
    fn a_reading_overtaken_by_a_silence_does_not_interrupt_it() {
        // Live: the watchdog's failures (1.05 intervals apart) come at once, the last good
        // reading before them only when the watermark lets it through, in between.
        let mut a = Alarm::default();
        let silent = |t: u64| {
            let mut r = scored(t, 0.45);
            r.findings.silent = true;
            r
        };
        assert_eq!(a.check(&silent(105), &HYSTERESIS, 100), None);
        assert_eq!(a.check(&scored(50, 1.0), &HYSTERESIS, 100), None);
        let start = a.check(&silent(210), &HYSTERESIS, 100).unwrap();
        assert_eq!((start.state, start.started_at), (EventState::Start, 105));
    }

    #[test]
    fn a_forgotten_sensor_ends_its_incident() {
        let mut a = Alarm::default();
        let s = AlarmSettings::immediate(0.6);
        assert_eq!(a.check(&report(1_000, false), &s, 300_000), None);
        assert_eq!(a.forgotten(&"parking".into(), "BRUUNS", 3_600_000), None);
        let start = a.check(&report(2_000, true), &s, 300_000).unwrap();
        // Two silences after the last reading: they are no input.
        for t in [400_000, 800_000] {
            let mut silent = scored(t, 0.4);
            silent.findings.silent = true;
            assert_eq!(a.check(&silent, &s, 300_000), None);
        }
        assert_eq!(a.last_input(), 2_000);
        let end = a.forgotten(&"parking".into(), "BRUUNS", 3_600_000).unwrap();
        assert_eq!(
            (end.state, end.id.as_str(), end.started_at, end.time),
            (EventState::End, start.id.as_str(), 2_000, 3_602_000)
        );
        assert_eq!(end.area.as_deref(), Some("area-1"));
        assert_eq!(
            end.message,
            "parking sensor BRUUNS quality incident ended: no reading for 1h; the sensor is forgotten"
        );
        // A TTL shorter than the silence reported: dated at the newest report.
        let end = a.forgotten(&"parking".into(), "BRUUNS", 1_000).unwrap();
        assert_eq!(end.time, 800_000);
        // Silences before any input (live, readings wait for the watermark): the newest
        // report counts.
        let mut early = Alarm::default();
        let mut silent = scored(5_000, 0.4);
        silent.findings.silent = true;
        early.check(&silent, &s, 300_000);
        assert_eq!(early.last_input(), 5_000);
    }

    #[test]
    fn the_start_message_names_what_the_low_reports_found() {
        // A silent sensor: watchdog failures 1.05 intervals apart; the second starts it.
        let mut a = Alarm::default();
        let mut silent = scored(1_406_851_515_000, 0.49);
        silent.findings = Findings {
            silent: true,
            ..Findings::default()
        };
        assert_eq!(a.check(&silent, &HYSTERESIS, 300_000), None);
        silent.time += 315_000;
        let start = a.check(&silent, &HYSTERESIS, 300_000).unwrap();
        assert_eq!(start.started_at, 1_406_851_515_000);
        assert!(
            start.message.ends_with(
                "fell to 0.49 (threshold 0.6) since 2014-08-01T00:05:15.000Z: silent for more than 1.05 expected intervals"
            ),
            "{}",
            start.message
        );
        assert!(a.is_active());
    }
}
