//! `DetectEvents`: the rules of `config/rules/` per sensor, in event time.
//!
//! Rules need each sensor's readings in event-time order, whatever order they arrive in
//! within the allowed lateness, so (as for SensorSAX) readings are buffered by event time and
//! fed to the per-(rule, sensor) state machines once the frontier has passed them. The result
//! does not depend on arrival order or on the number of workers, and a re-delivered reading
//! (same time, same values) changes nothing, so incidents are not duplicated.

use aqyl_core::rules::{
    incident_id, rate, Baseline, Rule, RuleKind, Threshold, Transition, RATE_SUFFIX, Z_SUFFIX,
};
use aqyl_core::{Event, EventState, Observation};
use std::collections::HashMap;
use std::sync::Arc;
use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::StreamVec;

/// Absence state: (rule index, sensor id) → (sensor type, last reading, ongoing since, area).
type Silences = HashMap<(usize, String), (Arc<str>, u64, Option<u64>, Option<String>)>;

/// Starts an absence incident for every watched sensor silent for its rule's `for` before
/// event time `now`; the incident starts when the silence reached `for`.
fn start_silences(now: u64, silences: &mut Silences, rules: &[Rule], out: &mut Vec<Event>) {
    let mut started: Vec<_> = silences
        .iter_mut()
        .filter(|(key, state)| {
            state.2.is_none() && state.1.saturating_add(rules[key.0].for_ms) < now
        })
        .map(|(key, state)| {
            let started_at = state.1 + rules[key.0].for_ms;
            state.2 = Some(started_at);
            (key.clone(), state.0.clone(), started_at, state.3.clone())
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

/// Each sensor's previous reading, (type, id) → (event time, fields), for `_rate` fields.
type LastReadings = HashMap<(Arc<str>, String), (u64, Vec<(Arc<str>, f64)>)>;

/// Per sensor (type, id) and field: the learned baseline behind `<field>_z`.
type Baselines = HashMap<((Arc<str>, String), Arc<str>), Baseline>;

/// A lifecycle message of `rule` about the sensor that sent `obs`, at its event time.
fn sensor_event(
    rule: &Rule,
    obs: &Observation,
    state: EventState,
    level: &str,
    started_at: u64,
    message: String,
) -> Event {
    Event {
        id: incident_id(&rule.name, &obs.sensor_id, started_at),
        event_type: rule.event_type.clone(),
        subject: obs.sensor_id.clone(),
        sensor_type: obs.sensor_type.clone(),
        area: obs.area.clone(),
        state,
        level: level.to_string(),
        started_at,
        time: obs.event_time,
        rule: rule.name.clone(),
        message,
        values: obs.fields.clone(),
    }
}

/// Incidents detected by event rules.
pub trait DetectEvents<'scope> {
    /// Evaluates `rules` over each sensor's readings and emits lifecycle messages.
    fn detect_events(self, rules: Arc<Vec<Rule>>) -> StreamVec<'scope, u64, Event>;
}

impl<'scope> DetectEvents<'scope> for StreamVec<'scope, u64, Observation> {
    fn detect_events(self, rules: Arc<Vec<Rule>>) -> StreamVec<'scope, u64, Event> {
        let exchange =
            Exchange::new(|o: &Observation| crate::stable_hash(&[&o.sensor_type, &o.sensor_id]));
        self.unary_frontier::<CapacityContainerBuilder<Vec<Event>>, _, _, _>(
            exchange,
            "DetectEvents",
            move |capability, _info| {
                let mut cap = Some(capability);
                let mut pending = crate::ordered::EventTimeBuffer::default();
                // (rule index, sensor id) → state machine.
                let mut machines: HashMap<(usize, String), Threshold> = HashMap::new();
                // Absence rules: (rule index, sensor id) → (sensor type, last reading, ongoing since).
                let mut silences: Silences = HashMap::new();
                // Each sensor's previous reading, for `_rate` fields.
                let mut last_reading: LastReadings = HashMap::new();
                // Per sensor and field: the learned baseline behind `<field>_z`.
                let mut baselines: Baselines = HashMap::new();
                // Level rules: (rule index, sensor id) → (current non-quiet level, started at).
                let mut levels: HashMap<(usize, String), (Option<String>, u64)> = HashMap::new();
                move |(input, frontier), output| {
                    input.for_each(|_cap, data| {
                        for obs in data.drain(..) {
                            if rules.iter().any(|r| *r.sensor_type == *obs.sensor_type) {
                                pending.push(obs);
                            }
                        }
                    });
                    let Some(held) = cap.as_mut() else { return };
                    let now = frontier.frontier().iter().min().copied();
                    let mut out = Vec::new();
                    while let Some((t, same_time)) = pending.next_ready(now) {
                        // Silences that began before this instant come first, so the result
                        // does not depend on how input was batched.
                        start_silences(t, &mut silences, &rules, &mut out);
                        for obs in same_time {
                            // Fields, and `<field>_rate`: change per minute since this sensor's last reading.
                            let key = (obs.sensor_type.clone(), obs.sensor_id.clone());
                            let previous = last_reading
                                .get(&key)
                                .map(|(t, f): &(u64, Vec<_>)| (*t, f.as_slice()));
                            let value =
                                |f: &str| obs.fields.iter().find(|(n, _)| &**n == f).map(|v| v.1);
                            let get = |f: &str| {
                                if let Some(base) = f.strip_suffix(RATE_SUFFIX) {
                                    previous
                                        .and_then(|p| rate(p, (obs.event_time, &obs.fields), base))
                                } else if let Some(base) = f.strip_suffix(Z_SUFFIX) {
                                    let b = baselines.get(&(key.clone(), Arc::from(base)))?;
                                    b.z(value(base)?)
                                } else {
                                    value(f)
                                }
                            };
                            for (index, rule) in rules.iter().enumerate() {
                                if *rule.sensor_type != *obs.sensor_type {
                                    continue;
                                }
                                if matches!(rule.kind, RuleKind::Area { .. }) {
                                    continue;
                                }
                                if rule.kind == RuleKind::Level {
                                    let Some(level) = rule
                                        .levels
                                        .iter()
                                        .find(|(_, when)| when.holds(&get))
                                        .map(|l| l.0.clone())
                                    else {
                                        continue;
                                    };
                                    let quiet = rule.quiet.as_deref() == Some(level.as_str());
                                    let state = levels
                                        .entry((index, obs.sensor_id.clone()))
                                        .or_insert((None, 0));
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
                                    if let Some(event_state) = transition {
                                        let started_at = state.1;
                                        let message =
                                            rule.render_level(&obs.sensor_id, &level, &obs.fields);
                                        out.push(sensor_event(
                                            rule,
                                            &obs,
                                            event_state,
                                            &level,
                                            started_at,
                                            message,
                                        ));
                                    }
                                    continue;
                                }
                                if rule.kind == RuleKind::Absence {
                                    let entry = silences
                                        .entry((index, obs.sensor_id.clone()))
                                        .or_insert_with(|| {
                                            (
                                                obs.sensor_type.clone(),
                                                obs.event_time,
                                                None,
                                                obs.area.clone(),
                                            )
                                        });
                                    entry.1 = entry.1.max(obs.event_time);
                                    if let Some(started_at) = entry.2.take() {
                                        let message = format!(
                                            "{} ended: {} reports again",
                                            rule.name, obs.sensor_id
                                        );
                                        out.push(sensor_event(
                                            rule,
                                            &obs,
                                            EventState::End,
                                            &rule.level,
                                            started_at,
                                            message,
                                        ));
                                    }
                                    continue;
                                }
                                let (enter, exit) = (rule.enter.holds(&get), rule.exit.holds(&get));
                                let machine = machines
                                    .entry((index, obs.sensor_id.clone()))
                                    .or_insert_with(|| Threshold::new(rule.for_ms));
                                let (state, started_at) =
                                    match machine.step(obs.event_time, enter, exit) {
                                        Some(Transition::Start { started_at }) => {
                                            (EventState::Start, started_at)
                                        }
                                        Some(Transition::End { started_at }) => {
                                            (EventState::End, started_at)
                                        }
                                        None => continue,
                                    };
                                let message = match state {
                                    EventState::End => format!(
                                        "{} ended: {}",
                                        rule.name,
                                        rule.render(&obs.sensor_id, &obs.fields)
                                    ),
                                    _ => rule.render(&obs.sensor_id, &obs.fields),
                                };
                                out.push(sensor_event(
                                    rule,
                                    &obs,
                                    state,
                                    &rule.level,
                                    started_at,
                                    message,
                                ));
                            }
                            // The baselines learn the reading after the rules have judged it.
                            for (field, v) in &obs.fields {
                                baselines
                                    .entry((key.clone(), field.clone()))
                                    .and_modify(|b| b.learn(*v))
                                    .or_insert_with(|| Baseline::new(*v));
                            }
                            last_reading.insert(key, (obs.event_time, obs.fields.clone()));
                        }
                    }
                    // Silences up to the frontier.
                    if let Some(now) = now {
                        start_silences(now, &mut silences, &rules, &mut out);
                    }
                    if !out.is_empty() {
                        output.session(&*held).give_iterator(out.into_iter());
                    }
                    match now {
                        Some(n) => held.downgrade(&n),
                        None => cap = None,
                    }
                }
            },
        )
    }
}

/// Area incidents: at least k of an area's sensors in an incident of a sensor rule.
pub trait AreaEvents<'scope> {
    /// Counts, per area and in event time, the sensors with an ongoing incident of each area
    /// rule's `of` rule, and emits the area's own lifecycle messages.
    fn area_events(self, rules: Arc<Vec<Rule>>) -> StreamVec<'scope, u64, Event>;
}

impl<'scope> AreaEvents<'scope> for StreamVec<'scope, u64, Event> {
    fn area_events(self, rules: Arc<Vec<Rule>>) -> StreamVec<'scope, u64, Event> {
        // Sensor incidents are emitted no later (in timely time) than their event time, so
        // once the frontier passes an instant, every sensor incident up to it has arrived.
        let exchange = Exchange::new(|e: &Event| {
            crate::stable_hash(&[&e.sensor_type, e.area.as_deref().unwrap_or("")])
        });
        self.unary_frontier::<CapacityContainerBuilder<Vec<Event>>, _, _, _>(
            exchange,
            "AreaEvents",
            move |capability, _info| {
                let mut cap = Some(capability);
                let mut pending: std::collections::BTreeMap<u64, Vec<Event>> =
                    std::collections::BTreeMap::new();
                // (area rule index, area) → (sensors in the state, ongoing since).
                let mut areas: HashMap<
                    (usize, String),
                    (std::collections::BTreeSet<String>, Option<u64>),
                > = HashMap::new();
                move |(input, frontier), output| {
                    input.for_each(|_cap, data| {
                        for e in data.drain(..) {
                            if e.area.is_some() {
                                pending.entry(e.time).or_default().push(e);
                            }
                        }
                    });
                    let Some(held) = cap.as_mut() else { return };
                    let now = frontier.frontier().iter().min().copied();
                    let mut out = Vec::new();
                    while let Some(entry) = pending.first_entry() {
                        if now.is_some_and(|n| *entry.key() >= n) {
                            break;
                        }
                        let mut same_time = entry.remove();
                        same_time.sort_by(|a, b| {
                            (&a.subject, a.state.as_str()).cmp(&(&b.subject, b.state.as_str()))
                        });
                        for e in same_time {
                            let Some(area) = e.area.clone() else { continue };
                            for (index, rule) in rules.iter().enumerate() {
                                let RuleKind::Area { of, at_least } = rule.kind else {
                                    continue;
                                };
                                if rules.get(of).is_none_or(|o| o.name != e.rule) {
                                    continue;
                                }
                                let (members, since) =
                                    areas.entry((index, area.clone())).or_default();
                                match e.state {
                                    EventState::End => {
                                        members.remove(&e.subject);
                                    }
                                    _ => {
                                        members.insert(e.subject.clone());
                                    }
                                }
                                let count = members.len();
                                let transition = match *since {
                                    None if count >= at_least => {
                                        *since = Some(e.time);
                                        Some((EventState::Start, e.time))
                                    }
                                    Some(started_at) if count < at_least => {
                                        *since = None;
                                        Some((EventState::End, started_at))
                                    }
                                    _ => None,
                                };
                                if let Some((state, started_at)) = transition {
                                    let sensors: Vec<&str> =
                                        members.iter().map(String::as_str).collect();
                                    out.push(Event {
                                        id: incident_id(&rule.name, &area, started_at),
                                        event_type: rule.event_type.clone(),
                                        subject: area.clone(),
                                        sensor_type: e.sensor_type.clone(),
                                        area: Some(area.clone()),
                                        state,
                                        level: rule.level.clone(),
                                        started_at,
                                        time: e.time,
                                        rule: rule.name.clone(),
                                        message: match state {
                                            EventState::End => format!(
                                                "{} ended in {area}: {count} sensor(s) left",
                                                rule.name
                                            ),
                                            _ => format!(
                                                "{} in {area}: {count} sensors ({})",
                                                rule.render(&area, &[]),
                                                sensors.join(", ")
                                            ),
                                        },
                                        values: vec![("sensors".into(), count as f64)],
                                    });
                                }
                            }
                        }
                    }
                    if !out.is_empty() {
                        output.session(&*held).give_iterator(out.into_iter());
                    }
                    match now {
                        Some(n) => held.downgrade(&n),
                        None => cap = None,
                    }
                }
            },
        )
    }
}
