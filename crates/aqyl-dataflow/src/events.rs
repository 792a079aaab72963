//! `DetectEvents`: the rules of `config/rules/` per sensor, in event time.
//!
//! Rules need each sensor's readings in event-time order, whatever order they arrive in
//! within the allowed lateness, so (as for SensorSAX) readings are buffered by event time and
//! fed to the per-(rule, sensor) state machines once the frontier has passed them. The result
//! does not depend on arrival order or on the number of workers, and a re-delivered reading
//! (same time, same values) changes nothing, so incidents are not duplicated.

use aqyl_core::rules::{incident_id, Detector, Input, Rule, RuleKind};
use aqyl_core::{Aggregate as AggregateRecord, Event, EventState, Observation, Scope};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::StreamVec;

/// Incidents detected by event rules.
pub trait DetectEvents<'scope> {
    /// Evaluates the reading rules (those without `window`) over each sensor's readings and
    /// emits lifecycle messages.
    fn detect_events(self, rules: Arc<Vec<Rule>>) -> StreamVec<'scope, u64, Event>;

    /// Evaluates the `per = "area"` rules over each area's readings (those of all its
    /// sensors, after an exchange by area), with the area as subject.
    fn detect_area_events(self, rules: Arc<Vec<Rule>>) -> StreamVec<'scope, u64, Event>;
}

impl<'scope> DetectEvents<'scope> for StreamVec<'scope, u64, Observation> {
    fn detect_events(self, rules: Arc<Vec<Rule>>) -> StreamVec<'scope, u64, Event> {
        detect(self, rules, Input::Readings)
    }

    fn detect_area_events(self, rules: Arc<Vec<Rule>>) -> StreamVec<'scope, u64, Event> {
        detect(self, rules, Input::Area)
    }
}

fn detect<'scope>(
    stream: StreamVec<'scope, u64, Observation>,
    rules: Arc<Vec<Rule>>,
    input_kind: Input<'static>,
) -> StreamVec<'scope, u64, Event> {
    let by_area = input_kind == Input::Area;
    let exchange = Exchange::new(move |o: &Observation| {
        let subject = if by_area {
            o.area.as_deref().unwrap_or("")
        } else {
            &o.sensor_id
        };
        crate::stable_hash(&[&o.sensor_type, subject])
    });
    {
        stream.unary_frontier::<CapacityContainerBuilder<Vec<Event>>, _, _, _>(
            exchange,
            "DetectEvents",
            move |capability, _info| {
                let mut cap = Some(capability);
                let mut pending = crate::ordered::EventTimeBuffer::default();
                let mut detector = Detector::new(rules);
                move |(input, frontier), output| {
                    input.for_each(|_cap, data| {
                        for mut obs in data.drain(..) {
                            if !detector.watches(&obs.sensor_type, input_kind) {
                                continue;
                            }
                            if by_area {
                                // The area is the subject.
                                let Some(area) = obs.area.clone() else {
                                    continue;
                                };
                                obs.sensor_id = area;
                            }
                            pending.push(obs);
                        }
                    });
                    if cap.is_none() {
                        return;
                    }
                    let now = frontier.frontier().iter().min().copied();
                    let mut out = Vec::new();
                    while let Some((t, same_time)) = pending.next_ready(now) {
                        // Silences that began before this instant come first, so the result
                        // does not depend on how input was batched.
                        detector.advance(t, &mut out);
                        for obs in &same_time {
                            detector.observe(obs, input_kind, &mut out);
                        }
                    }
                    if let Some(now) = now {
                        detector.advance(now, &mut out);
                    }
                    crate::ordered::emit_and_follow(&mut cap, now, out, output);
                }
            },
        )
    }
}

/// Incidents detected by rules over closed windows (`window = "<label>"`).
pub trait WindowEvents<'scope> {
    /// Turns each sensor's closed windows into one reading per (sensor, window end) with
    /// fields `<field>_<statistic>`, and evaluates the window rules over them in event time.
    /// Corrections of closed windows (late updates) are not re-judged: an incident, once
    /// reported, is not taken back.
    fn window_events(self, rules: Arc<Vec<Rule>>) -> StreamVec<'scope, u64, Event>;
}

impl<'scope> WindowEvents<'scope> for StreamVec<'scope, u64, AggregateRecord> {
    fn window_events(self, rules: Arc<Vec<Rule>>) -> StreamVec<'scope, u64, Event> {
        let exchange =
            Exchange::new(|a: &AggregateRecord| crate::stable_hash(&[&a.sensor_type, &a.subject]));
        self.unary_frontier::<CapacityContainerBuilder<Vec<Event>>, _, _, _>(
            exchange,
            "WindowEvents",
            move |capability, _info| {
                let mut cap = Some(capability);
                // Window end → (sensor type, sensor id, window label) → statistics.
                type Readings = HashMap<(Arc<str>, String, Arc<str>), Vec<(Arc<str>, f64)>>;
                let mut pending: BTreeMap<u64, Readings> = BTreeMap::new();
                // One detector per window label, so `_rate` and `_z` compare a window with
                // the previous window of the same label.
                let mut detectors: HashMap<Arc<str>, Detector> = HashMap::new();
                move |(input, frontier), output| {
                    input.for_each(|time, data| {
                        let Some(&at) = time.least() else { return };
                        for a in data.drain(..) {
                            // Closed windows arrive at their end time; corrections later.
                            if a.scope != Scope::Sensor
                                || a.end != at
                                || !aqyl_core::rules::engine::watches(
                                    &rules,
                                    &a.sensor_type,
                                    Input::Window(&a.window),
                                )
                            {
                                continue;
                            }
                            let fields = pending
                                .entry(a.end)
                                .or_default()
                                .entry((a.sensor_type.clone(), a.subject.clone(), a.window.clone()))
                                .or_default();
                            for (stat, v) in a.stats.named() {
                                fields.push((format!("{}_{stat}", a.field).into(), v));
                            }
                        }
                    });
                    if cap.is_none() {
                        return;
                    }
                    let now = frontier.frontier().iter().min().copied();
                    let mut out = Vec::new();
                    while let Some((end, readings)) = crate::ordered::pop_ready(&mut pending, now) {
                        let mut readings: Vec<_> = readings.into_iter().collect();
                        readings.sort_by(|a, b| a.0.cmp(&b.0));
                        for ((sensor_type, sensor_id, window), mut fields) in readings {
                            fields.sort_by(|a, b| a.0.cmp(&b.0));
                            let reading = Observation {
                                sensor_type,
                                sensor_id,
                                area: None,
                                event_time: end,
                                received_at: 0,
                                time_from_receive: false,
                                location: None,
                                fields,
                                arrival: Default::default(),
                            };
                            detectors
                                .entry(window.clone())
                                .or_insert_with(|| Detector::new(rules.clone()))
                                .observe(&reading, Input::Window(&window), &mut out);
                        }
                    }
                    crate::ordered::emit_and_follow(&mut cap, now, out, output);
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
                let mut pending: BTreeMap<u64, Vec<Event>> = BTreeMap::new();
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
                    if cap.is_none() {
                        return;
                    }
                    let now = frontier.frontier().iter().min().copied();
                    let mut out = Vec::new();
                    while let Some((_, mut same_time)) =
                        crate::ordered::pop_ready(&mut pending, now)
                    {
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
                    crate::ordered::emit_and_follow(&mut cap, now, out, output);
                }
            },
        )
    }
}
