//! The rule engine of one dataflow worker: every rule's state per subject, fed readings in
//! event-time order, giving lifecycle messages.
//!
//! Pure and synchronous: the dataflow orders readings by event time and calls
//! [`Detector::advance`] (absence rules) and [`Detector::observe`] for each instant. The same
//! readings in the same order always give the same events, so replays are deterministic.

use super::file::{Input, Rule, RuleKind};
use super::state::{
    incident_id, rate, Baseline, Sequence, Threshold, Transition, RATE_SUFFIX, Z_SUFFIX,
};
use crate::{Event, EventState, Observation};
use std::collections::HashMap;
use std::sync::Arc;

/// Absence state of one (rule, sensor).
#[derive(Debug)]
struct Silence {
    sensor_type: Arc<str>,
    last: u64,
    since: Option<u64>,
    area: Option<String>,
}

/// A subject: (sensor type, sensor id).
type Subject = (Arc<str>, String);
/// A reading's fields.
type Fields = Vec<(Arc<str>, f64)>;

/// Whether any of `rules` reads this input of this sensor type.
pub fn watches(rules: &[Rule], sensor_type: &str, input: Input<'_>) -> bool {
    rules
        .iter()
        .any(|r| r.sensor_type == sensor_type && r.input() == input)
}

/// Every rule's state, per subject.
#[derive(Debug)]
pub struct Detector {
    rules: Arc<Vec<Rule>>,
    /// Threshold rules: (rule index, subject) → state machine.
    thresholds: HashMap<(usize, String), Threshold>,
    /// Sequence rules: (rule index, subject) → state machine.
    sequences: HashMap<(usize, String), Sequence>,
    /// Absence rules: (rule index, sensor id) → silence.
    silences: HashMap<(usize, String), Silence>,
    /// Level rules: (rule index, subject) → (current non-quiet level, started at).
    levels: HashMap<(usize, String), (Option<String>, u64)>,
    /// Each subject's previous reading, (type, id) → (event time, fields), for `_rate`.
    last_reading: HashMap<Subject, (u64, Fields)>,
    /// Per subject and field: the learned baseline behind `<field>_z`.
    baselines: HashMap<(Subject, Arc<str>), Baseline>,
}

impl Detector {
    /// A detector with no state yet.
    pub fn new(rules: Arc<Vec<Rule>>) -> Self {
        Self {
            rules,
            thresholds: HashMap::new(),
            sequences: HashMap::new(),
            silences: HashMap::new(),
            levels: HashMap::new(),
            last_reading: HashMap::new(),
            baselines: HashMap::new(),
        }
    }

    /// Whether any rule reads this input of this sensor type.
    pub fn watches(&self, sensor_type: &str, input: Input<'_>) -> bool {
        watches(&self.rules, sensor_type, input)
    }

    /// Starts an absence incident for every watched sensor silent for its rule's `for`
    /// before event time `now`; the incident starts when the silence reached `for`. Call it
    /// before each instant's readings and when the frontier moves.
    pub fn advance(&mut self, now: u64, out: &mut Vec<Event>) {
        let rules = &self.rules;
        let mut started: Vec<_> = self
            .silences
            .iter_mut()
            .filter(|(key, s)| {
                s.since.is_none() && s.last.saturating_add(rules[key.0].for_ms) < now
            })
            .map(|(key, s)| {
                let started_at = s.last + rules[key.0].for_ms;
                s.since = Some(started_at);
                (
                    key.clone(),
                    s.sensor_type.clone(),
                    started_at,
                    s.area.clone(),
                )
            })
            .collect();
        started.sort_by(|a, b| (a.2, &a.0).cmp(&(b.2, &b.0)));
        for ((index, sensor), sensor_type, started_at, area) in started {
            let rule = &rules[index];
            out.push(Event {
                id: incident_id(&rule.name, &sensor, started_at),
                event_type: rule.event_type.clone(),
                subject: sensor.clone(),
                sensor_type,
                area,
                state: EventState::Start,
                level: rule.level.clone(),
                started_at,
                time: started_at,
                rule: rule.name.clone(),
                message: rule.render(&sensor, &[]),
                values: Vec::new(),
            });
        }
    }

    /// Judges one reading of `input`: of a sensor, a closed window of one (fields named
    /// `<field>_<statistic>`), or of an area (`sensor_id` holding the area). Readings of one
    /// subject must come in event-time order.
    pub fn observe(&mut self, obs: &Observation, input: Input<'_>, out: &mut Vec<Event>) {
        let key = (obs.sensor_type.clone(), obs.sensor_id.clone());
        let rules = self.rules.clone();
        {
            let previous = self.last_reading.get(&key).map(|(t, f)| (*t, f.as_slice()));
            let baselines = &self.baselines;
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
                let slot = (index, obs.sensor_id.clone());
                let change = match rule.kind {
                    RuleKind::Area { .. } => None,
                    RuleKind::Absence => {
                        let s = self.silences.entry(slot).or_insert_with(|| Silence {
                            sensor_type: obs.sensor_type.clone(),
                            last: obs.event_time,
                            since: None,
                            area: obs.area.clone(),
                        });
                        s.last = s.last.max(obs.event_time);
                        s.since.take().map(|started_at| {
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
                        let state = self.levels.entry(slot).or_insert((None, 0));
                        let transition = match (&state.0, quiet) {
                            (None, false) => {
                                *state = (Some(level.clone()), obs.event_time);
                                Some(EventState::Start)
                            }
                            (Some(_), true) => {
                                state.0 = None;
                                Some(EventState::End)
                            }
                            (Some(current), false) if *current != level => {
                                state.0 = Some(level.clone());
                                Some(EventState::Update)
                            }
                            _ => None,
                        };
                        transition.map(|s| {
                            let message = rule.render_level(&obs.sensor_id, &level, &obs.fields);
                            (s, level, state.1, message)
                        })
                    }
                    RuleKind::Threshold | RuleKind::Sequence { .. } => {
                        let (enter, exit) = (rule.enter.holds(&get), rule.exit.holds(&get));
                        let transition = match (rule.kind, &rule.sequence) {
                            (RuleKind::Sequence { within_ms }, Some(seq)) => {
                                let first = seq.first.holds(&get);
                                let unless = seq.unless.as_ref().is_some_and(|u| u.holds(&get));
                                self.sequences
                                    .entry(slot)
                                    .or_insert_with(|| Sequence::new(within_ms))
                                    .step(obs.event_time, first, enter, unless, exit)
                            }
                            _ => self
                                .thresholds
                                .entry(slot)
                                .or_insert_with(|| Threshold::new(rule.for_ms))
                                .step(obs.event_time, enter, exit),
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
                        id: incident_id(&rule.name, &obs.sensor_id, started_at),
                        event_type: rule.event_type.clone(),
                        subject: obs.sensor_id.clone(),
                        sensor_type: obs.sensor_type.clone(),
                        area: obs.area.clone(),
                        state,
                        level,
                        started_at,
                        time: obs.event_time,
                        rule: rule.name.clone(),
                        message,
                        values: obs.fields.clone(),
                    });
                }
            }
        }
        // The baselines learn the reading after the rules have judged it.
        for (field, v) in &obs.fields {
            self.baselines
                .entry((key.clone(), field.clone()))
                .and_modify(|b| b.learn(*v))
                .or_insert_with(|| Baseline::new(*v));
        }
        self.last_reading
            .insert(key, (obs.event_time, obs.fields.clone()));
    }
}
