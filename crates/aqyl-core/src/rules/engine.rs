//! The rule engine of one dataflow worker: every rule's state per subject, fed each subject's
//! readings in event-time order, giving lifecycle messages.
//!
//! Pure and synchronous: the dataflow calls [`Detector::observe`] for each reading (on
//! arrival, or once the watermark has passed it: `pipeline.rule_timing`), and
//! [`Detector::advance`] (event time) or [`Detector::advance_wall`] (wall clock, live) to
//! notice silences. The same readings in the same per-subject order always give the same
//! events, so replays are deterministic.
//!
//! What the engine learns is kept apart from the rules, in a [`DetectorState`]: it can be
//! checkpointed, and restored against the rules of the configuration then (matched by rule
//! name). A [`Detector`] is the rules at work on a state.

use super::file::{Input, Rule, RuleKind};
use super::state::{
    incident_id, rate, Baseline, Sequence, Threshold, Transition, RATE_SUFFIX, Z_SUFFIX,
};
use crate::ingest::dedup::digest;
use crate::{Event, EventState, Observation};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::Arc;

/// Absence state of one (rule, sensor).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Silence {
    sensor_type: Arc<str>,
    /// Event time of the newest judged reading (the watermark's view).
    last: u64,
    /// Event time of the newest reading that arrived, judged or still held for the watermark
    /// (the wall clock's view).
    arrived: u64,
    /// Wall-clock time (Unix ms) that reading arrived.
    last_arrival: i64,
    since: Option<u64>,
    area: Option<Arc<str>>,
}

/// Where `obs` stands against its subject's newest judged reading `last` (time, fields).
fn order_against(last: Option<&Last>, obs: &Observation) -> Order {
    match last {
        None => Order::Newer,
        Some(last) if obs.event_time > last.time => Order::Newer,
        Some(last) if obs.event_time == last.time && last.digest == digest(obs) => Order::Repeat,
        Some(_) => Order::Older,
    }
}

impl Silence {
    /// Watching a subject from its first reading.
    fn first(obs: &Observation) -> Self {
        Self {
            sensor_type: obs.sensor_type.clone(),
            last: obs.event_time,
            arrived: obs.event_time,
            last_arrival: obs.arrival.ingested_at,
            since: None,
            area: obs.area.clone(),
        }
    }

    /// A reading arrived (judged now or later): the subject is alive by the wall clock.
    fn arrive(&mut self, obs: &Observation) {
        if obs.event_time >= self.arrived {
            self.arrived = obs.event_time;
        }
        self.last_arrival = self.last_arrival.max(obs.arrival.ingested_at);
    }
}

/// Where a reading stands against its subject's newest judged reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Order {
    /// Newer than every judged reading of its subject (or the first): judge it.
    Newer,
    /// The newest judged reading again, same time and values: a re-delivery, nothing new.
    Repeat,
    /// Older than the newest judged reading (or the same instant with other values): judging
    /// it now would take the state machines back in time.
    Older,
}

/// A subject: (sensor type, sensor id).
type Subject = (Arc<str>, Arc<str>);
/// A reading's fields.
type Fields = Vec<(Arc<str>, f64)>;

/// A subject's newest judged reading.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Last {
    /// Its event time.
    time: u64,
    /// A digest of its fields (to tell a repeat from a different reading of that time).
    digest: u64,
    /// Its fields, when a rule reads a `_rate` (otherwise empty).
    fields: Fields,
}

/// Whether any of `rules` reads this input of this sensor type.
pub fn watches(rules: &[Rule], sensor_type: &str, input: Input<'_>) -> bool {
    rules
        .iter()
        .any(|r| r.sensor_type == sensor_type && r.input() == input)
}

/// One rule's state per subject, under the rule's name and sensor type (so that a state
/// restored from a checkpoint finds its rule among the rules of the configuration then).
/// Only the map of the rule's kind is used.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct RuleState {
    rule: String,
    sensor_type: String,
    /// The rule's event type and level (to end its incidents should it be removed).
    event_type: String,
    level: String,
    /// Threshold rules: subject → state machine.
    thresholds: HashMap<Arc<str>, Threshold>,
    /// Sequence rules: subject → state machine.
    sequences: HashMap<Arc<str>, Sequence>,
    /// Absence rules: sensor id (or area) → silence.
    silences: HashMap<Arc<str>, Silence>,
    /// Level rules: subject → (current non-quiet level, started at).
    levels: HashMap<Arc<str>, (Option<String>, u64)>,
}

impl RuleState {
    fn of(rule: &Rule) -> Self {
        Self {
            rule: rule.name.clone(),
            sensor_type: rule.sensor_type.clone(),
            event_type: rule.event_type.clone(),
            level: rule.level.clone(),
            ..Self::default()
        }
    }

    /// Drops everything kept for `subject`.
    fn remove(&mut self, subject: &str) {
        self.thresholds.remove(subject);
        self.sequences.remove(subject);
        self.silences.remove(subject);
        self.levels.remove(subject);
    }

    /// When the incident on for `subject` started, if one is.
    fn started(&self, subject: &str) -> Option<u64> {
        self.thresholds
            .get(subject)
            .and_then(Threshold::active_since)
            .or_else(|| self.sequences.get(subject).and_then(Sequence::active_since))
            .or_else(|| self.silences.get(subject).and_then(|s| s.since))
            .or_else(|| {
                self.levels
                    .get(subject)
                    .and_then(|(level, at)| level.as_ref().map(|_| *at))
            })
    }

    /// The `end` of the incident on for `subject`, dated `time`, if one is.
    fn end(&self, subject: &str, time: u64, why: &str) -> Option<Event> {
        let started_at = self.started(subject)?;
        Some(Event {
            extra: Vec::new(),
            id: incident_id(&self.rule, subject, started_at),
            event_type: self.event_type.clone(),
            subject: subject.to_string(),
            sensor_type: self.sensor_type.as_str().into(),
            area: self
                .silences
                .get(subject)
                .and_then(|x| x.area.as_deref().map(str::to_string)),
            state: EventState::End,
            level: self.level.clone(),
            started_at,
            time: time.max(started_at),
            rule: self.rule.clone(),
            message: format!("{} ended: {why}", self.rule),
            values: Vec::new(),
        })
    }

    /// `end` messages, dated `now` (event time), for every incident still on: the rule is
    /// gone, so nothing else would ever end them.
    fn farewell(&self, now: u64) -> Vec<Event> {
        let mut subjects: Vec<&Arc<str>> = self
            .thresholds
            .keys()
            .chain(self.sequences.keys())
            .chain(self.silences.keys())
            .chain(self.levels.keys())
            .collect();
        subjects.sort();
        subjects.dedup();
        subjects
            .into_iter()
            .filter_map(|s| self.end(s, now, "the rule was removed from the configuration"))
            .collect()
    }

    /// Whether it is the state of `rule`.
    fn is_of(&self, rule: &Rule) -> bool {
        self.rule == rule.name && self.sensor_type == rule.sensor_type
    }
}

/// What a [`Detector`] learns from the readings: every rule's state per subject (ongoing
/// incidents included), each subject's previous reading and its baselines. It holds no rule:
/// [`DetectorState::bind`] lines it up with the rules it is used with.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct DetectorState {
    /// Per rule, in the order of the rules it is bound to.
    rules: Vec<RuleState>,
    /// Each subject's previous reading, (type, id) → (event time, fields); the fields only
    /// when a rule of its type reads a `_rate`.
    last_reading: HashMap<Subject, Last>,
    /// Per subject and field: the learned baseline behind `<field>_z`, for the fields rules
    /// read so.
    baselines: HashMap<(Subject, Arc<str>), Baseline>,
    /// What the bound rules read beyond a reading's own fields (derived from them again
    /// after a restore).
    #[serde(skip)]
    reads: Reads,
}

/// What rules read beyond a reading's own fields, so that nothing else is kept per subject:
/// the fields whose baselines (`<field>_z`) and the sensor types whose previous readings
/// (`<field>_rate`) they need.
#[derive(Debug, Clone, Default)]
struct Reads {
    /// Derived from the rules bound (a fresh or restored state has not derived them yet).
    known: bool,
    /// (sensor type, field) read as `<field>_z`.
    z: Vec<(String, String)>,
    /// Sensor types some rule reads a `<field>_rate` of.
    rate: Vec<String>,
}

impl Reads {
    fn of(rules: &[Rule]) -> Self {
        let mut reads = Reads {
            known: true,
            ..Reads::default()
        };
        for rule in rules {
            for field in rule.conditions().flat_map(|e| e.fields()) {
                if field.ends_with(RATE_SUFFIX) && !reads.rate.contains(&rule.sensor_type) {
                    reads.rate.push(rule.sensor_type.clone());
                } else if let Some(base) = field.strip_suffix(Z_SUFFIX) {
                    let key = (rule.sensor_type.clone(), base.to_string());
                    if !reads.z.contains(&key) {
                        reads.z.push(key);
                    }
                }
            }
        }
        reads
    }

    fn z(&self, sensor_type: &str, field: &str) -> bool {
        self.z.iter().any(|(t, f)| t == sensor_type && f == field)
    }

    fn rate(&self, sensor_type: &str) -> bool {
        self.rate.iter().any(|t| t == sensor_type)
    }
}

impl DetectorState {
    /// Lines the state up with `rules` (after a restore, the rules of the configuration now):
    /// a rule keeps the state of the rule of the same name and sensor type, as much of it as
    /// fits its kind; a new rule starts empty; the state of a rule that is gone is dropped,
    /// and its ongoing incidents are returned as `end` messages dated `now` (event time).
    pub fn bind(&mut self, rules: &[Rule], now: u64) -> Vec<Event> {
        self.reads = Reads::of(rules);
        let mut old: HashMap<String, RuleState> = std::mem::take(&mut self.rules)
            .into_iter()
            .map(|r| (r.rule.clone(), r))
            .collect();
        self.rules = rules
            .iter()
            .map(|rule| {
                let mut state = match old.remove(&rule.name) {
                    Some(state) if state.is_of(rule) => state,
                    _ => RuleState::of(rule),
                };
                // (A sequence rule without steps works as a threshold.)
                if !matches!(rule.kind, RuleKind::Threshold | RuleKind::Sequence { .. }) {
                    state.thresholds.clear();
                }
                if !matches!(rule.kind, RuleKind::Sequence { .. }) {
                    state.sequences.clear();
                }
                if !matches!(rule.kind, RuleKind::Absence) {
                    state.silences.clear();
                }
                if !matches!(rule.kind, RuleKind::Level) {
                    state.levels.clear();
                }
                state
            })
            .collect();
        // What is left belongs to rules that are gone (or now of another sensor type).
        let mut gone: Vec<RuleState> = old.into_values().collect();
        gone.sort_by(|a, b| a.rule.cmp(&b.rule));
        gone.iter().flat_map(|r| r.farewell(now)).collect()
    }

    /// Releases what is kept for every subject whose newest reading is older than `before`
    /// (silent past `pipeline.state_ttl`, `ttl_ms`) and returns the `end` of each incident
    /// still on for them ("the sensor is forgotten"), dated its newest reading plus the TTL.
    /// A forgotten subject that reports again starts afresh.
    pub fn forget(&mut self, before: u64, ttl_ms: u64) -> Vec<Event> {
        let mut stale: Vec<(Subject, u64)> = self
            .last_reading
            .iter()
            .filter(|(_, last)| last.time < before)
            .map(|(key, last)| (key.clone(), last.time))
            .collect();
        stale.sort();
        let why = format!(
            "no reading for {}; the sensor is forgotten",
            crate::duration::label(std::time::Duration::from_millis(ttl_ms))
        );
        let mut ended = Vec::new();
        let released = !stale.is_empty();
        for ((sensor_type, subject), last) in stale {
            for r in self
                .rules
                .iter_mut()
                .filter(|r| r.sensor_type == *sensor_type)
            {
                ended.extend(r.end(&subject, last.saturating_add(ttl_ms), &why));
                r.remove(&subject);
            }
            self.last_reading.remove(&(sensor_type, subject));
        }
        if released {
            let live = &self.last_reading;
            self.baselines.retain(|(key, _), _| live.contains_key(key));
        }
        ended
    }

    /// Subjects it keeps something for.
    pub fn subjects(&self) -> usize {
        self.last_reading.len()
    }

    /// Whether it is lined up with `rules`.
    fn is_bound(&self, rules: &[Rule]) -> bool {
        self.rules.len() == rules.len() && self.rules.iter().zip(rules).all(|(s, r)| s.is_of(r))
    }
}

/// The rules at work on a [`DetectorState`]: every rule's state, per subject.
#[derive(Debug)]
pub struct Detector<'a> {
    rules: &'a [Rule],
    state: &'a mut DetectorState,
}

impl<'a> Detector<'a> {
    /// Releases what is kept for subjects silent since before `before`, ending their
    /// incidents ([`DetectorState::forget`]).
    pub fn forget(&mut self, before: u64, ttl_ms: u64, out: &mut Vec<Event>) {
        out.extend(self.state.forget(before, ttl_ms));
    }

    /// `rules` working on `state` (bound to them first if it is not: [`DetectorState::bind`]).
    pub fn new(rules: &'a [Rule], state: &'a mut DetectorState) -> Self {
        if !state.reads.known {
            state.reads = Reads::of(rules);
        }
        if !state.is_bound(rules) {
            // (Operators bind a restored state themselves and send what it ends.)
            let _ended = state.bind(rules, 0);
        }
        Self { rules, state }
    }

    /// Whether any rule reads this input of this sensor type.
    pub fn watches(&self, sensor_type: &str, input: Input<'_>) -> bool {
        watches(self.rules, sensor_type, input)
    }

    /// Starts an absence incident for every watched sensor silent for its rule's `for`
    /// before event time `now`; the incident starts when the silence reached `for`. Call it
    /// before each instant's readings and when the frontier moves.
    pub fn advance(&mut self, now: u64, out: &mut Vec<Event>) {
        self.start_silences(
            |s, for_ms| {
                let start = s.last.saturating_add(for_ms);
                (start < now).then_some(start)
            },
            out,
        );
    }

    /// Live: starts an absence incident for every watched sensor whose newest reading
    /// arrived more than its rule's `for` before the wall-clock instant `now_wall` (Unix ms),
    /// whatever the watermark waits for. The incident starts, in event time, at that reading's
    /// time plus `for` (the same id as the event-time evaluation gives). Call it about once a
    /// second while running live.
    pub fn advance_wall(&mut self, now_wall: i64, out: &mut Vec<Event>) {
        self.start_silences(
            |s, for_ms| {
                (s.last_arrival.saturating_add(for_ms as i64) < now_wall)
                    .then_some(s.arrived.max(s.last).saturating_add(for_ms))
            },
            out,
        );
    }

    /// Live, for readings judged later (held for the watermark): a reading proves its subject
    /// alive when it arrives, so the wall-clock check does not call a subject silent whose
    /// readings are only waiting to be judged.
    pub fn arrived(&mut self, obs: &Observation, input: Input<'_>) {
        for (index, rule) in self.rules.iter().enumerate() {
            if rule.kind != RuleKind::Absence
                || *rule.sensor_type != *obs.sensor_type
                || rule.input() != input
            {
                continue;
            }
            let s = self.state.rules[index]
                .silences
                .entry(obs.sensor_id.clone())
                .or_insert_with(|| Silence::first(obs));
            s.arrive(obs);
        }
    }

    /// Whether any absence rule has a sensor to watch (live, the operator then needs a tick).
    pub fn watches_silences(&self) -> bool {
        self.state.rules.iter().any(|r| !r.silences.is_empty())
    }

    /// Where `obs` stands against its subject's newest judged reading.
    pub fn order(&self, obs: &Observation) -> Order {
        let key = (obs.sensor_type.clone(), obs.sensor_id.clone());
        order_against(self.state.last_reading.get(&key), obs)
    }

    /// On arrival: judges `obs` if it is newer than its subject's newest judged reading, and
    /// says where it stood (the subject is looked up once).
    pub fn observe_if_newer(
        &mut self,
        obs: &Observation,
        input: Input<'_>,
        out: &mut Vec<Event>,
    ) -> Order {
        let key = (obs.sensor_type.clone(), obs.sensor_id.clone());
        let order = order_against(self.state.last_reading.get(&key), obs);
        if order == Order::Newer {
            self.observe_keyed(key, obs, input, out);
        }
        order
    }

    /// Starts the silences for which `silent(silence, for)` gives a start time.
    fn start_silences(
        &mut self,
        silent: impl Fn(&Silence, u64) -> Option<u64>,
        out: &mut Vec<Event>,
    ) {
        let rules = self.rules;
        let mut started: Vec<(u64, usize, &Arc<str>, &Silence)> = Vec::new();
        for (index, (rule, state)) in rules.iter().zip(self.state.rules.iter_mut()).enumerate() {
            for (sensor, s) in state.silences.iter_mut() {
                if s.since.is_some() {
                    continue;
                }
                let Some(start) = silent(s, rule.for_ms) else {
                    continue;
                };
                s.since = Some(start);
                started.push((start, index, sensor, &*s));
            }
        }
        started.sort_by(|a, b| (a.0, a.1, a.2).cmp(&(b.0, b.1, b.2)));
        for (start, index, sensor, s) in started {
            out.push(silence_start(&rules[index], sensor, s, start));
        }
    }

    /// Judges one reading of `input`: of a sensor, a closed window of one (fields named
    /// `<field>_<statistic>`), or of an area (`sensor_id` holding the area). Readings of one
    /// subject must come in event-time order.
    pub fn observe(&mut self, obs: &Observation, input: Input<'_>, out: &mut Vec<Event>) {
        let key = (obs.sensor_type.clone(), obs.sensor_id.clone());
        self.observe_keyed(key, obs, input, out);
    }

    fn observe_keyed(
        &mut self,
        key: Subject,
        obs: &Observation,
        input: Input<'_>,
        out: &mut Vec<Event>,
    ) {
        let rules = self.rules;
        let state = &mut *self.state;
        {
            let previous = state
                .last_reading
                .get(&key)
                .map(|last| (last.time, last.fields.as_slice()));
            let baselines = &state.baselines;
            let value = |f: &str| obs.fields.iter().find(|(n, _)| &**n == f).map(|v| v.1);
            let get = |f: &str| {
                if let Some(base) = f.strip_suffix(RATE_SUFFIX) {
                    previous.and_then(|p| rate(p, (obs.event_time, &obs.fields), base))
                } else if let Some(base) = f.strip_suffix(Z_SUFFIX) {
                    let b = baselines.get(&(key.clone(), Arc::from(base)))?;
                    b.z(value(base)?)
                } else {
                    value(f)
                }
            };
            for (index, rule) in rules.iter().enumerate() {
                if *rule.sensor_type != *obs.sensor_type || rule.input() != input {
                    continue;
                }
                let slots = &mut state.rules[index];
                let slot = &obs.sensor_id;
                // The event time of a message this reading causes.
                let mut at = obs.event_time;
                let change = match rule.kind {
                    RuleKind::Area { .. } => None,
                    RuleKind::Absence => {
                        let s = slot_of(&mut slots.silences, slot, || Silence::first(obs));
                        // A gap longer than `for` that no tick saw (the reading after it
                        // arrived before the watermark passed the gap): the silence still
                        // happened, so it starts here and this reading ends it.
                        if s.since.is_none() && s.last.saturating_add(rule.for_ms) < obs.event_time
                        {
                            let started_at = s.last + rule.for_ms;
                            s.since = Some(started_at);
                            out.push(silence_start(rule, &obs.sensor_id, s, started_at));
                        }
                        s.last = s.last.max(obs.event_time);
                        s.arrive(obs);
                        s.since.take().map(|started_at| {
                            // Started by the wall clock, ended by a reading from before that
                            // start (a backlog arriving): it ends where it started.
                            at = at.max(started_at);
                            let message =
                                format!("{} ended: {} reports again", rule.name, obs.sensor_id);
                            (EventState::End, rule.level.clone(), started_at, message)
                        })
                    }
                    RuleKind::Level => {
                        let Some(level) = rule
                            .levels
                            .iter()
                            .find(|(_, when)| when.holds(&get))
                            .map(|l| l.0.clone())
                        else {
                            continue;
                        };
                        let quiet = rule.quiet.as_deref() == Some(level.as_str());
                        let current = slot_of(&mut slots.levels, slot, || (None, 0));
                        let transition = match (&current.0, quiet) {
                            (None, false) => {
                                *current = (Some(level.clone()), obs.event_time);
                                Some(EventState::Start)
                            }
                            (Some(_), true) => {
                                current.0 = None;
                                Some(EventState::End)
                            }
                            (Some(on), false) if *on != level => {
                                current.0 = Some(level.clone());
                                Some(EventState::Update)
                            }
                            _ => None,
                        };
                        transition.map(|s| {
                            let message = rule.render_level(&obs.sensor_id, &level, &obs.fields);
                            (s, level, current.1, message)
                        })
                    }
                    RuleKind::Threshold | RuleKind::Sequence { .. } => {
                        let (enter, exit) = (rule.enter.holds(&get), rule.exit.holds(&get));
                        let transition = match (rule.kind, &rule.sequence) {
                            (RuleKind::Sequence { within_ms }, Some(seq)) => {
                                let first = seq.first.holds(&get);
                                let unless = seq.unless.as_ref().is_some_and(|u| u.holds(&get));
                                slot_of(&mut slots.sequences, slot, Default::default).step(
                                    within_ms,
                                    obs.event_time,
                                    first,
                                    enter,
                                    unless,
                                    exit,
                                )
                            }
                            _ => slot_of(&mut slots.thresholds, slot, Default::default).step(
                                rule.for_ms,
                                obs.event_time,
                                enter,
                                exit,
                            ),
                        };
                        transition.map(|t| match t {
                            Transition::Start { started_at } => (
                                EventState::Start,
                                rule.level.clone(),
                                started_at,
                                rule.render(&obs.sensor_id, &obs.fields),
                            ),
                            Transition::End { started_at } => (
                                EventState::End,
                                rule.level.clone(),
                                started_at,
                                format!(
                                    "{} ended: {}",
                                    rule.name,
                                    rule.render(&obs.sensor_id, &obs.fields)
                                ),
                            ),
                        })
                    }
                };
                if let Some((state, level, started_at, message)) = change {
                    out.push(Event {
                        extra: Vec::new(),
                        id: incident_id(&rule.name, &obs.sensor_id, started_at),
                        event_type: rule.event_type.clone(),
                        subject: obs.sensor_id.to_string(),
                        sensor_type: obs.sensor_type.clone(),
                        area: obs.area.as_deref().map(str::to_string),
                        state,
                        level,
                        started_at,
                        time: at,
                        rule: rule.name.clone(),
                        message,
                        values: obs.fields.clone(),
                    });
                }
            }
        }
        // The baselines learn the reading after the rules have judged it.
        for (field, v) in &obs.fields {
            if state.reads.z(&obs.sensor_type, field) {
                state
                    .baselines
                    .entry((key.clone(), field.clone()))
                    .and_modify(|b| b.learn(*v))
                    .or_insert_with(|| Baseline::new(*v));
            }
        }
        let fields = if state.reads.rate(&obs.sensor_type) {
            obs.fields.clone()
        } else {
            Fields::new()
        };
        let last = Last {
            time: obs.event_time,
            digest: digest(obs),
            fields,
        };
        state.last_reading.insert(key, last);
    }
}

/// The state of `subject` in `slots`, made by `new` the first time.
fn slot_of<'m, V>(
    slots: &'m mut HashMap<Arc<str>, V>,
    subject: &Arc<str>,
    new: impl FnOnce() -> V,
) -> &'m mut V {
    slots.entry(subject.clone()).or_insert_with(new)
}

/// The start of an absence incident of `sensor`, silent since `started_at`.
fn silence_start(rule: &Rule, sensor: &str, s: &Silence, started_at: u64) -> Event {
    Event {
        extra: Vec::new(),
        id: incident_id(&rule.name, sensor, started_at),
        event_type: rule.event_type.clone(),
        subject: sensor.to_string(),
        sensor_type: s.sensor_type.clone(),
        area: s.area.as_deref().map(str::to_string),
        state: EventState::Start,
        level: rule.level.clone(),
        started_at,
        time: started_at,
        rule: rule.name.clone(),
        message: rule.render(sensor, &[]),
        values: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::ingest::descriptor::SensorType;
    use std::path::Path;

    const MINUTE: u64 = 60_000;

    fn parse(rules: &str) -> Vec<Rule> {
        let ty = SensorType::from_toml(
            Path::new("traffic.toml"),
            "name = \"traffic\"\n[time]\nfield = \"/ts\"\nformat = \"epoch_ms\"\n[[fields]]\nname = \"avgSpeed\"\n",
        )
        .unwrap();
        super::super::parse_rules(Path::new("r.toml"), rules, &[ty]).unwrap()
    }

    fn reading(minute: u64, speed: f64, arrived_at: i64) -> Observation {
        Observation {
            sensor_type: "traffic".into(),
            sensor_id: "s1".into(),
            area: None,
            event_time: minute * MINUTE,
            received_at: arrived_at,
            time_from_receive: false,
            location: None,
            fields: vec![("avgSpeed".into(), speed)],
            arrival: crate::Arrival {
                ingested_at: arrived_at,
                ..Default::default()
            },
        }
    }

    const OUTAGE: &str =
        "[[rule]]\nname = \"outage\"\nsensor_type = \"traffic\"\nkind = \"absence\"\nfor = \"15m\"\n";

    fn states(out: &[Event]) -> Vec<(&str, u64, u64)> {
        out.iter()
            .map(|e| (e.state.as_str(), e.started_at / MINUTE, e.time / MINUTE))
            .collect()
    }

    #[test]
    fn order_tells_newer_repeated_and_older_readings_apart() {
        let (rules, mut state) = (parse(OUTAGE), DetectorState::default());
        let mut d = Detector::new(&rules, &mut state);
        let mut out = Vec::new();
        assert_eq!(d.order(&reading(5, 50.0, 0)), Order::Newer);
        d.observe(&reading(5, 50.0, 0), Input::Readings, &mut out);
        assert_eq!(d.order(&reading(6, 50.0, 0)), Order::Newer);
        assert_eq!(d.order(&reading(5, 50.0, 0)), Order::Repeat);
        assert_eq!(d.order(&reading(5, 51.0, 0)), Order::Older);
        assert_eq!(d.order(&reading(4, 50.0, 0)), Order::Older);
    }

    #[test]
    fn a_gap_no_tick_saw_is_still_a_silence() {
        // Judged on arrival, the reading after a 30-minute gap comes before the watermark has
        // passed the gap: the outage still starts 15 minutes after the last reading and this
        // reading ends it, as the event-time evaluation would have had it.
        let (rules, mut state) = (parse(OUTAGE), DetectorState::default());
        let mut d = Detector::new(&rules, &mut state);
        let mut out = Vec::new();
        d.observe(&reading(0, 50.0, 0), Input::Readings, &mut out);
        d.observe(&reading(30, 50.0, 0), Input::Readings, &mut out);
        assert_eq!(states(&out), vec![("start", 15, 15), ("end", 15, 30)]);
        // A gap shorter than `for` is none.
        out.clear();
        d.observe(&reading(40, 50.0, 0), Input::Readings, &mut out);
        d.advance(41 * MINUTE, &mut out);
        assert!(out.is_empty());
    }

    #[test]
    fn live_the_wall_clock_notices_a_silence_the_watermark_has_not_reached() {
        let wall0: i64 = 1_700_000_000_000;
        let (rules, mut state) = (parse(OUTAGE), DetectorState::default());
        let mut d = Detector::new(&rules, &mut state);
        let mut out = Vec::new();
        d.observe(&reading(0, 50.0, wall0), Input::Readings, &mut out);
        d.advance_wall(wall0 + 15 * MINUTE as i64, &mut out);
        assert!(
            out.is_empty(),
            "exactly `for` of silence is not yet more than `for`"
        );
        d.advance_wall(wall0 + 15 * MINUTE as i64 + 1, &mut out);
        // Started, in event time, `for` after the last reading: the id the watermark gives.
        assert_eq!(states(&out), vec![("start", 15, 15)]);
        assert_eq!(out[0].id, incident_id("outage", "s1", 15 * MINUTE));
        out.clear();
        // The watermark reaching the same instant later starts nothing twice.
        d.advance(20 * MINUTE, &mut out);
        assert!(out.is_empty());
        d.observe(
            &reading(21, 50.0, wall0 + 21 * MINUTE as i64),
            Input::Readings,
            &mut out,
        );
        assert_eq!(states(&out), vec![("end", 15, 21)]);
    }

    #[test]
    fn a_backlog_arriving_after_a_wall_clock_outage_ends_it_where_it_started() {
        let wall0: i64 = 1_700_000_000_000;
        let (rules, mut state) = (parse(OUTAGE), DetectorState::default());
        let mut d = Detector::new(&rules, &mut state);
        let mut out = Vec::new();
        d.observe(&reading(0, 50.0, wall0), Input::Readings, &mut out);
        d.advance_wall(wall0 + 16 * MINUTE as i64, &mut out);
        // A stalled gateway's backlog: minute 6 was read long ago, it arrives only now.
        d.observe(
            &reading(6, 50.0, wall0 + 17 * MINUTE as i64),
            Input::Readings,
            &mut out,
        );
        assert_eq!(states(&out), vec![("start", 15, 15), ("end", 15, 15)]);
    }

    #[test]
    fn held_for_the_watermark_a_gap_that_arrives_in_a_burst_is_still_an_outage() {
        let (rules, mut state) = (parse(OUTAGE), DetectorState::default());
        let mut d = Detector::new(&rules, &mut state);
        let mut out = Vec::new();
        // Minutes 0 and 30 arrive together (a gateway reconnects) and wait for the watermark.
        d.arrived(&reading(0, 50.0, 0), Input::Readings);
        d.arrived(&reading(30, 50.0, 0), Input::Readings);
        d.observe(&reading(0, 50.0, 0), Input::Readings, &mut out);
        d.advance(30 * MINUTE, &mut out);
        d.observe(&reading(30, 50.0, 0), Input::Readings, &mut out);
        assert_eq!(states(&out), vec![("start", 15, 15), ("end", 15, 30)]);
    }

    #[test]
    fn live_a_reading_held_for_the_watermark_still_proves_its_sensor_alive() {
        let wall0: i64 = 1_700_000_000_000;
        let at = |m: u64| wall0 + (m * MINUTE) as i64;
        let (rules, mut state) = (parse(OUTAGE), DetectorState::default());
        let mut d = Detector::new(&rules, &mut state);
        let mut out = Vec::new();
        d.observe(&reading(0, 50.0, at(0)), Input::Readings, &mut out);
        // Minute 10's reading arrived but waits for the watermark.
        d.arrived(&reading(10, 50.0, at(10)), Input::Readings);
        d.advance_wall(at(20), &mut out);
        assert!(out.is_empty(), "silent for 10 minutes only");
        d.advance_wall(at(26), &mut out);
        assert_eq!(states(&out), vec![("start", 25, 25)]);
    }

    const SLOW: &str = "[[rule]]\nname = \"slow\"\nsensor_type = \"traffic\"\nenter = \"avgSpeed < 20\"\nexit = \"avgSpeed > 30\"\n";

    #[test]
    fn a_restored_state_finds_its_rules_by_name() {
        let both = parse(&format!("{OUTAGE}{SLOW}"));
        let mut state = DetectorState::default();
        let mut out = Vec::new();
        {
            let mut d = Detector::new(&both, &mut state);
            d.observe(&reading(0, 10.0, 0), Input::Readings, &mut out);
            d.advance(20 * MINUTE, &mut out);
        }
        assert_eq!(states(&out), vec![("start", 0, 0), ("start", 15, 15)]);
        out.clear();
        // Restored (checkpoints encode it with bincode: the dataflow's tests) with the rules
        // in another order and one added.
        let mut restored = state.clone();
        let other =
            "[[rule]]\nname = \"fast\"\nsensor_type = \"traffic\"\nenter = \"avgSpeed > 100\"\n";
        let reordered = parse(&format!("{other}{SLOW}{OUTAGE}"));
        assert!(
            restored.bind(&reordered, 0).is_empty(),
            "every rule is still there"
        );
        let mut d = Detector::new(&reordered, &mut restored);
        d.observe(&reading(21, 50.0, 0), Input::Readings, &mut out);
        // Both ongoing incidents end (same ids as they started with), nothing starts again.
        let ended: Vec<_> = out
            .iter()
            .map(|e| (e.rule.as_str(), e.state.as_str(), e.started_at / MINUTE))
            .collect();
        assert_eq!(ended, vec![("slow", "end", 0), ("outage", "end", 15)]);
    }

    #[test]
    fn subjects_silent_past_the_ttl_are_forgotten_and_their_incidents_end() {
        let rules = parse(&format!("{SLOW}{OUTAGE}"));
        let mut state = DetectorState::default();
        let mut out = Vec::new();
        {
            let mut d = Detector::new(&rules, &mut state);
            for i in 0..1000u64 {
                let mut r = reading(0, 50.0, 0);
                r.sensor_id = format!("s{i}").into();
                d.observe(&r, Input::Readings, &mut out);
            }
            // One sensor crawls: its incident is on when it goes silent.
            let mut slow = reading(1, 10.0, 0);
            slow.sensor_id = "jam".into();
            d.observe(&slow, Input::Readings, &mut out);
            // One is still reporting.
            let mut fresh = reading(100, 50.0, 0);
            fresh.sensor_id = "fresh".into();
            d.observe(&fresh, Input::Readings, &mut out);
        }
        assert_eq!(state.subjects(), 1002);
        out.clear();
        let ended = state.forget(50 * MINUTE, 30 * MINUTE);
        assert_eq!(state.subjects(), 1, "only the fresh sensor is left");
        // The crawl ends once, under its id, dated its last reading plus the TTL.
        let ended: Vec<_> = ended
            .iter()
            .map(|e| {
                (
                    e.rule.as_str(),
                    e.subject.as_str(),
                    e.state.as_str(),
                    e.time / MINUTE,
                )
            })
            .collect();
        assert_eq!(ended, vec![("slow", "jam", "end", 31)]);
        assert!(
            state.forget(50 * MINUTE, 30 * MINUTE).is_empty(),
            "ended once"
        );
        // A forgotten sensor that comes back starts afresh (judged as a new one).
        let mut again = reading(130, 10.0, 0);
        again.sensor_id = "s7".into();
        Detector::new(&rules, &mut state).observe(&again, Input::Readings, &mut out);
        assert_eq!(out.len(), 1, "{out:?}");
        assert_eq!(out[0].state, EventState::Start);
    }

    #[test]
    fn a_rule_that_is_gone_ends_its_incidents_and_drops_its_state() {
        let rules = parse(&format!("{OUTAGE}{SLOW}"));
        let mut state = DetectorState::default();
        let mut out = Vec::new();
        Detector::new(&rules, &mut state).observe(&reading(0, 10.0, 0), Input::Readings, &mut out);
        assert_eq!(out.len(), 1, "slow started");
        let only_outage = parse(OUTAGE);
        let ended = state.bind(&only_outage, 5 * MINUTE);
        // Its ongoing incident ends, with the id it started with, dated when it was removed.
        let ended: Vec<_> = ended
            .iter()
            .map(|e| (e.rule.as_str(), e.state.as_str(), e.started_at, e.time))
            .collect();
        assert_eq!(ended, vec![("slow", "end", 0, 5 * MINUTE)]);
        assert_eq!(state.bind(&only_outage, 6 * MINUTE), vec![], "ended once");
        // A rule of the same name again starts afresh: its old incident is not ended.
        assert!(state.bind(&rules, 7 * MINUTE).is_empty());
        out.clear();
        Detector::new(&rules, &mut state).observe(&reading(1, 50.0, 0), Input::Readings, &mut out);
        assert!(out.is_empty(), "{out:?}");
    }
}
