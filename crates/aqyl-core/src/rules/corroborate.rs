//! Corroboration: an ongoing incident confirmed by a report of another kind that lies near it
//! in space and event time (a congestion a citizen reports from 230 m away), declared in rule
//! files as `[[corroborate]]` and turned into an `update` of the incident whose values carry
//! `corroborated: true`, the report's id and its distance.
//!
//! ```toml
//! [[corroborate]]
//! name = "congestion_reported"
//! event_types = ["congestion"]      # the incidents it confirms
//! reports = "citizen_report"        # the sensor type of the reports
//! categories = ["traffic"]          # report categories (their area); default: all
//! max_distance_m = 500              # between the report and the incident's sensor
//! within = "15m"                    # event time between the report and the incident
//! ```
//!
//! A report matches an incident when the incident is under way at some moment within
//! `within` of the report's time (it started no later than `within` after it, and has not
//! ended before the report arrives) and the incident's sensor (its registry position) lies
//! within `max_distance_m` of it. Each report confirms each incident once. Pure: the
//! dataflow's `Corroborate` operator feeds reports and incident messages in.

use crate::error::{ConfigError, ConfigErrors};
use crate::{Event, EventState};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

/// Reports kept at most (the oldest go first).
pub const MAX_REPORTS: usize = 10_000;
/// Confirmations one incident gets at most (one per report).
pub const MAX_PER_INCIDENT: usize = 16;

/// One `[[corroborate]]` section.
#[derive(Debug, Clone, PartialEq)]
pub struct CorroborateRule {
    /// Its name, in the update's message.
    pub name: String,
    /// The incidents it confirms.
    pub event_types: Vec<String>,
    /// The sensor type of the reports.
    pub reports: String,
    /// Report categories (the report's area); empty: all.
    pub categories: Vec<String>,
    /// Greatest distance between report and incident, metres.
    pub max_distance_m: f64,
    /// Greatest event time between report and incident, ms.
    pub within_ms: u64,
}

/// A report as the corroborator keeps it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sighting {
    /// Report id (its sensor id).
    pub id: String,
    /// Its sensor type.
    pub sensor_type: String,
    /// Its category (area).
    pub category: Option<String>,
    /// Latitude, longitude.
    pub position: (f64, f64),
    /// Event time, Unix ms.
    pub time: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Ongoing {
    /// The incident's latest message.
    event: Event,
    position: (f64, f64),
    /// Reports that confirmed it.
    by: Vec<String>,
}

/// The reports of the last `within` and the incidents under way.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Corroborator {
    reports: Vec<Sighting>,
    incidents: BTreeMap<String, Ongoing>,
}

/// Great-circle distance in metres (haversine, mean Earth radius).
pub fn distance_m(a: (f64, f64), b: (f64, f64)) -> f64 {
    let (la1, lo1, la2, lo2) = (
        a.0.to_radians(),
        a.1.to_radians(),
        b.0.to_radians(),
        b.1.to_radians(),
    );
    let h = ((la2 - la1) / 2.0).sin().powi(2)
        + la1.cos() * la2.cos() * ((lo2 - lo1) / 2.0).sin().powi(2);
    2.0 * 6_371_008.8 * h.sqrt().min(1.0).asin()
}

impl CorroborateRule {
    /// The distance when `s` confirms the incident `o`.
    fn distance(&self, s: &Sighting, o: &Ongoing) -> Option<f64> {
        let e = &o.event;
        let kind = s.sensor_type == self.reports
            && self.event_types.contains(&e.event_type)
            && (self.categories.is_empty()
                || s.category
                    .as_ref()
                    .is_some_and(|c| self.categories.contains(c)));
        // Under way (not ended) now, so at the report's time if it started by then plus
        // `within`.
        let in_time = e.started_at <= s.time.saturating_add(self.within_ms);
        let d = distance_m(s.position, o.position);
        (kind && in_time && d <= self.max_distance_m && !o.by.contains(&s.id)).then_some(d)
    }

    /// The `update` of `o` that `s` confirms, `d` metres away.
    fn update(&self, o: &Ongoing, s: &Sighting, d: f64) -> Event {
        let mut e = o.event.clone();
        e.state = EventState::Update;
        e.time = s.time.max(e.started_at);
        let d = (d * 10.0).round() / 10.0;
        e.message = format!(
            "{} corroborated by report {} {d} m away ({})",
            o.event.message, s.id, self.name
        );
        e.values.retain(|(k, _)| &**k != "distance_m");
        e.values.push((Arc::from("distance_m"), d));
        e.extra = vec![
            (Arc::from("corroborated"), serde_json::Value::Bool(true)),
            (
                Arc::from("report_id"),
                serde_json::Value::String(s.id.clone()),
            ),
            (
                Arc::from("corroborated_by"),
                serde_json::Value::String(self.name.clone()),
            ),
        ];
        e
    }
}

impl Corroborator {
    /// Takes a report; the updates of the incidents it confirms.
    pub fn report(&mut self, rules: &[CorroborateRule], s: Sighting) -> Vec<Event> {
        if self
            .reports
            .iter()
            .any(|r| r.id == s.id && r.sensor_type == s.sensor_type)
        {
            return Vec::new(); // a redelivery
        }
        let mut out = Vec::new();
        for o in self.incidents.values_mut() {
            if let Some((rule, d)) = rules.iter().find_map(|r| r.distance(&s, o).map(|d| (r, d))) {
                if o.by.len() < MAX_PER_INCIDENT {
                    out.push(rule.update(o, &s, d));
                    o.by.push(s.id.clone());
                }
            }
        }
        if self.reports.len() >= MAX_REPORTS {
            self.reports.remove(0);
        }
        self.reports.push(s);
        out
    }

    /// Takes an incident message (`position`: its sensor's, when known); the updates of the
    /// kept reports that confirm a new incident.
    pub fn incident(
        &mut self,
        rules: &[CorroborateRule],
        e: &Event,
        position: Option<(f64, f64)>,
    ) -> Vec<Event> {
        if e.state == EventState::End {
            self.incidents.remove(&e.id);
            return Vec::new();
        }
        let Some(position) = position else {
            return Vec::new();
        };
        if !rules.iter().any(|r| r.event_types.contains(&e.event_type)) {
            return Vec::new();
        }
        let o = self
            .incidents
            .entry(e.id.clone())
            .or_insert_with(|| Ongoing {
                event: e.clone(),
                position,
                by: Vec::new(),
            });
        o.event = e.clone();
        o.event.extra.clear();
        let mut out = Vec::new();
        for s in &self.reports {
            if let Some((rule, d)) = rules.iter().find_map(|r| r.distance(s, o).map(|d| (r, d))) {
                if o.by.len() < MAX_PER_INCIDENT {
                    out.push(rule.update(o, s, d));
                    o.by.push(s.id.clone());
                }
            }
        }
        out
    }

    /// Forgets the reports no incident can match any more: older than `frontier` (event
    /// time every later incident starts after) by more than the longest `within`.
    pub fn expire(&mut self, rules: &[CorroborateRule], frontier: u64) {
        let within = rules.iter().map(|r| r.within_ms).max().unwrap_or(0);
        self.reports
            .retain(|s| s.time.saturating_add(within) >= frontier);
    }

    /// Reports and incidents kept.
    pub fn sizes(&self) -> (usize, usize) {
        (self.reports.len(), self.incidents.len())
    }
}

#[derive(Deserialize)]
struct RulesFile {
    #[serde(default)]
    corroborate: Vec<toml::Spanned<Section>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Section {
    name: String,
    event_types: Vec<String>,
    reports: String,
    #[serde(default)]
    categories: Vec<String>,
    max_distance_m: f64,
    within: String,
}

/// Parses the `[[corroborate]]` sections of one rule file (`types`: the sensor type names);
/// errors name `file:line`.
pub fn parse(
    path: &Path,
    text: &str,
    types: &[&str],
) -> Result<Vec<CorroborateRule>, ConfigErrors> {
    let file: RulesFile =
        toml::from_str(text).map_err(|e| ConfigError::from_toml(path, text, &e))?;
    let (mut out, mut errors) = (Vec::new(), Vec::new());
    for spanned in file.corroborate {
        let at = spanned.span().start;
        let s = spanned.into_inner();
        let mut problem = |m: String| errors.push(ConfigError::at(path, text, Some(at), m));
        if !types.contains(&s.reports.as_str()) {
            problem(format!(
                "corroborate {:?}: reports = {:?} is not a configured sensor type; known: {}",
                s.name,
                s.reports,
                types.join(", ")
            ));
            continue;
        }
        if s.event_types.is_empty() {
            problem(format!(
                "corroborate {:?}: event_types is empty; name the incidents it confirms",
                s.name
            ));
            continue;
        }
        if !(s.max_distance_m > 0.0 && s.max_distance_m <= 50_000.0) {
            problem(format!(
                "corroborate {:?}: max_distance_m is {}; use more than 0 and at most 50000 (metres)",
                s.name, s.max_distance_m
            ));
            continue;
        }
        let within = match crate::duration::parse(&s.within) {
            Ok(d) if !d.is_zero() && d.as_secs() <= 86_400 => d,
            _ => {
                problem(format!(
                    "corroborate {:?}: within = {:?}; use a duration above 0 and at most 1d, e.g. \"15m\"",
                    s.name, s.within
                ));
                continue;
            }
        };
        out.push(CorroborateRule {
            name: s.name,
            event_types: s.event_types,
            reports: s.reports,
            categories: s.categories,
            max_distance_m: s.max_distance_m,
            within_ms: within.as_millis() as u64,
        });
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(ConfigErrors(errors))
    }
}

/// The `[[corroborate]]` sections of every `*.toml` file of `dir`.
pub fn load_dir(dir: &Path, types: &[&str]) -> Result<Vec<CorroborateRule>, ConfigErrors> {
    let (mut out, mut errors) = (Vec::new(), Vec::new());
    for (path, text) in crate::error::toml_files(dir) {
        let parsed = text
            .map_err(|e| ConfigErrors(vec![e]))
            .and_then(|text| parse(&path, &text, types));
        match parsed {
            Ok(mut r) => out.append(&mut r),
            Err(e) => errors.extend(e.0),
        }
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(ConfigErrors(errors))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const MIN: u64 = 60_000;
    /// A segment in Aarhus, and points 300 m and 700 m north of it.
    const SEGMENT: (f64, f64) = (56.1500, 10.2000);
    const NEAR: (f64, f64) = (56.1527, 10.2000);
    const FAR: (f64, f64) = (56.1563, 10.2000);

    fn rules() -> Vec<CorroborateRule> {
        let text = "[[rule]]\nname = \"x\"\n\n[[corroborate]]\nname = \"reported\"\nevent_types = [\"congestion\"]\nreports = \"citizen_report\"\ncategories = [\"traffic\"]\nmax_distance_m = 500\nwithin = \"15m\"\n";
        parse(Path::new("r.toml"), text, &["traffic", "citizen_report"]).unwrap()
    }

    fn incident(state: EventState, started: u64, time: u64) -> Event {
        Event {
            extra: Vec::new(),
            id: "inc-1".into(),
            event_type: "congestion".into(),
            subject: "158324".into(),
            sensor_type: Arc::from("traffic"),
            area: None,
            state,
            level: "warning".into(),
            started_at: started,
            time,
            rule: "congestion".into(),
            message: "Congestion on segment 158324".into(),
            values: vec![(Arc::from("avgSpeed"), 20.0)],
        }
    }

    fn report(id: &str, category: &str, position: (f64, f64), time: u64) -> Sighting {
        Sighting {
            id: id.into(),
            sensor_type: "citizen_report".into(),
            category: Some(category.into()),
            position,
            time,
        }
    }

    #[test]
    fn distances_are_great_circle_metres() {
        let d = distance_m(SEGMENT, NEAR);
        assert!((d - 300.2).abs() < 1.0, "{d}");
        assert!((distance_m(SEGMENT, FAR) - 700.5).abs() < 1.0);
        assert_eq!(distance_m(SEGMENT, SEGMENT), 0.0);
    }

    #[test]
    fn a_report_near_an_ongoing_incident_confirms_it_once() {
        let r = rules();
        let mut c = Corroborator::default();
        assert!(c
            .incident(
                &r,
                &incident(EventState::Start, 100 * MIN, 100 * MIN),
                Some(SEGMENT)
            )
            .is_empty());
        let out = c.report(&r, report("r1", "traffic", NEAR, 110 * MIN));
        assert_eq!(out.len(), 1);
        let u = &out[0];
        assert_eq!(
            (u.state, u.id.as_str(), u.time),
            (EventState::Update, "inc-1", 110 * MIN)
        );
        let json: serde_json::Value = serde_json::from_str(&u.to_json()).unwrap();
        assert_eq!(json["values"]["corroborated"], true);
        assert_eq!(json["values"]["report_id"], "r1");
        assert_eq!(json["values"]["distance_m"], 300.2);
        assert_eq!(json["values"]["avgSpeed"], 20.0);
        assert!(
            u.message.contains("corroborated by report r1"),
            "{}",
            u.message
        );
        // The same report again (a redelivery) confirms nothing more.
        assert!(c
            .report(&r, report("r1", "traffic", NEAR, 110 * MIN))
            .is_empty());
    }

    #[test]
    fn too_far_the_wrong_category_or_an_ended_incident_confirm_nothing() {
        let r = rules();
        let mut c = Corroborator::default();
        c.incident(
            &r,
            &incident(EventState::Start, 100 * MIN, 100 * MIN),
            Some(SEGMENT),
        );
        assert!(c
            .report(&r, report("far", "traffic", FAR, 101 * MIN))
            .is_empty());
        assert!(c
            .report(&r, report("pothole", "roads", NEAR, 101 * MIN))
            .is_empty());
        c.incident(
            &r,
            &incident(EventState::End, 100 * MIN, 105 * MIN),
            Some(SEGMENT),
        );
        assert!(c
            .report(&r, report("late", "traffic", NEAR, 106 * MIN))
            .is_empty());
        assert_eq!(c.sizes().1, 0, "an ended incident is forgotten");
    }

    #[test]
    fn a_report_before_an_incident_confirms_it_within_the_time_limit_only() {
        let r = rules();
        let mut c = Corroborator::default();
        c.report(&r, report("early", "traffic", NEAR, 100 * MIN));
        c.report(&r, report("too-early", "traffic", NEAR, 80 * MIN));
        let out = c.incident(
            &r,
            &incident(EventState::Start, 110 * MIN, 110 * MIN),
            Some(SEGMENT),
        );
        let ids: Vec<_> = out.iter().map(|e| e.extra[1].1.clone()).collect();
        assert_eq!(ids, ["early"]);
        // A report far ahead of the incident's start does not confirm it.
        let mut c = Corroborator::default();
        c.incident(
            &r,
            &incident(EventState::Start, 200 * MIN, 200 * MIN),
            Some(SEGMENT),
        );
        assert_eq!(
            c.report(&r, report("before", "traffic", NEAR, 180 * MIN))
                .len(),
            0
        );
        assert_eq!(
            c.report(&r, report("within", "traffic", NEAR, 186 * MIN))
                .len(),
            1
        );
    }

    #[test]
    fn reports_are_forgotten_once_no_incident_can_match_them() {
        let r = rules();
        let mut c = Corroborator::default();
        c.report(&r, report("a", "traffic", NEAR, 100 * MIN));
        c.report(&r, report("b", "traffic", NEAR, 110 * MIN));
        c.expire(&r, 120 * MIN);
        assert_eq!(c.sizes().0, 1);
        c.expire(&r, 126 * MIN);
        assert_eq!(c.sizes().0, 0);
    }

    #[test]
    fn sections_are_checked_with_their_line() {
        let err = |body: &str| {
            parse(
                Path::new("r.toml"),
                &format!("\n[[corroborate]]\nname = \"c\"\n{body}"),
                &["traffic", "citizen_report"],
            )
            .unwrap_err()
            .to_string()
        };
        let base = "event_types = [\"congestion\"]\nmax_distance_m = 500\nwithin = \"15m\"\n";
        let e = err(&format!("reports = \"tweets\"\n{base}"));
        assert!(e.contains("r.toml:2") && e.contains("tweets"), "{e}");
        let e = err("reports = \"citizen_report\"\nevent_types = [\"congestion\"]\nmax_distance_m = -1\nwithin = \"15m\"\n");
        assert!(e.contains("max_distance_m"), "{e}");
        let e = err("reports = \"citizen_report\"\nevent_types = [\"congestion\"]\nmax_distance_m = 500\nwithin = \"soon\"\n");
        assert!(e.contains("within"), "{e}");
        let e = err(&format!(
            "reports = \"citizen_report\"\ndistance = 3\n{base}"
        ));
        assert!(e.contains("r.toml:") && e.contains("distance"), "{e}");
    }
}
