//! `DetectEvents`: the rules of `config/rules/` per sensor.
//!
//! With `pipeline.rule_timing = "arrival"` (the default) a reading newer than everything its
//! sensor has sent is judged the moment it arrives, so an incident's message leaves within
//! milliseconds instead of `allowed_lateness` later. A sensor's readings reach one worker in
//! the order its topic delivered them (ingest routes by topic, the exchange keeps per-sender
//! order), so the result depends neither on the number of workers nor on batching. A reading
//! older than its sensor's newest is not judged (taking the state machines back in time would
//! mean taking back messages operators have already seen); it still counts in windows and
//! quality, and in `aqyl_rules_out_of_order_total`. An exact re-delivery changes nothing.
//!
//! With `rule_timing = "watermark"`, readings are buffered by event time and judged once the
//! watermark has passed them: any arrival order within the lateness gives the same incidents.
//!
//! Absence rules notice a silence when the watermark passes it (replays, deterministic) and,
//! live, also by the wall clock (about once a second), like the quality watchdog.

use aqyl_core::metrics::Metrics;
use aqyl_core::rules::engine::Order;
use aqyl_core::rules::{incident_id, Detector, Input, Rule, RuleKind};
use aqyl_core::{Aggregate as AggregateRecord, Event, EventState, Observation, Scope};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;
use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::StreamVec;

/// How the rule operators follow time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    /// Reading rules judge each reading on arrival (`rule_timing = "arrival"`), not once the
    /// watermark has passed it.
    pub on_arrival: bool,
    /// Running live: absence rules also follow the wall clock, and (with `on_arrival`) area
    /// rules count sensor incidents as they arrive.
    pub live: bool,
}

impl Timing {
    /// The timing of a pipeline.
    pub fn of(spec: &crate::PipelineSpec) -> Self {
        Self {
            on_arrival: spec.rule_timing == aqyl_core::config::RuleTiming::Arrival,
            live: spec.live(),
        }
    }
}

/// Incidents detected by event rules.
pub trait DetectEvents<'scope> {
    /// Evaluates the reading rules (those without `window`) over each sensor's readings and
    /// emits lifecycle messages.
    fn detect_events(
        self,
        rules: Arc<Vec<Rule>>,
        timing: Timing,
        metrics: Arc<Metrics>,
    ) -> StreamVec<'scope, u64, Event>;

    /// Evaluates the `per = "area"` rules over each area's readings (those of all its
    /// sensors, after an exchange by area), with the area as subject. An area's readings come
    /// from many sensors and topics, so they are always judged in event-time order.
    fn detect_area_events(
        self,
        rules: Arc<Vec<Rule>>,
        timing: Timing,
    ) -> StreamVec<'scope, u64, Event>;
}

impl<'scope> DetectEvents<'scope> for StreamVec<'scope, u64, Observation> {
    fn detect_events(
        self,
        rules: Arc<Vec<Rule>>,
        timing: Timing,
        metrics: Arc<Metrics>,
    ) -> StreamVec<'scope, u64, Event> {
        detect(self, rules, Input::Readings, timing, Some(metrics))
    }

    fn detect_area_events(
        self,
        rules: Arc<Vec<Rule>>,
        timing: Timing,
    ) -> StreamVec<'scope, u64, Event> {
        let timing = Timing {
            on_arrival: false,
            ..timing
        };
        detect(self, rules, Input::Area, timing, None)
    }
}

fn detect<'scope>(
    stream: StreamVec<'scope, u64, Observation>,
    rules: Arc<Vec<Rule>>,
    input_kind: Input<'static>,
    timing: Timing,
    metrics: Option<Arc<Metrics>>,
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
    let scope = stream.scope();
    stream.unary_frontier::<CapacityContainerBuilder<Vec<Event>>, _, _, _>(
        exchange,
        "DetectEvents",
        move |capability, info| {
            let activator = scope.activator_for(info.address.clone());
            let mut cap = Some(capability);
            let mut pending = crate::ordered::EventTimeBuffer::default();
            let mut detector = Detector::new(rules);
            move |(input, frontier), output| {
                let mut out = Vec::new();
                input.for_each(|cap, data| {
                    let sent_at = cap.least().copied().unwrap_or(0);
                    for mut obs in data.drain(..) {
                        // A late record let in to correct its closed window
                        // (`pipeline.late = "update"`) is for the windows only: its incidents
                        // would be older than the frontier that downstream operators trust.
                        if obs.event_time < sent_at
                            || !detector.watches(&obs.sensor_type, input_kind)
                        {
                            continue;
                        }
                        if by_area {
                            // The area is the subject.
                            let Some(area) = obs.area.clone() else {
                                continue;
                            };
                            obs.sensor_id = area;
                        }
                        if !timing.on_arrival {
                            if timing.live {
                                detector.arrived(&obs, input_kind);
                            }
                            pending.push(obs);
                            continue;
                        }
                        let order = detector.observe_if_newer(&obs, input_kind, &mut out);
                        if order != Order::Newer && timing.live {
                            // Not judged, but the sensor is alive.
                            detector.arrived(&obs, input_kind);
                        }
                        if order == Order::Older {
                            if let Some(m) = &metrics {
                                m.rules_out_of_order.fetch_add(1, Relaxed);
                            }
                            tracing::debug!(
                                sensor_type = %obs.sensor_type,
                                sensor_id = %obs.sensor_id,
                                event_time = obs.event_time,
                                "reading older than its sensor's newest; rules skip it"
                            );
                        }
                    }
                });
                if cap.is_none() {
                    return;
                }
                let now = frontier.frontier().iter().min().copied();
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
                    if timing.live && detector.watches_silences() {
                        detector.advance_wall(crate::wall_ms(), &mut out);
                        activator.activate_after(Duration::from_secs(1));
                    }
                }
                crate::ordered::emit_and_follow(&mut cap, now, out, output);
            }
        },
    )
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
    /// Counts, per area, the sensors with an ongoing incident of each area rule's `of` rule,
    /// and emits the area's own lifecycle messages. Live with `rule_timing = "arrival"`,
    /// sensor incidents count as they arrive; otherwise in event-time order once the
    /// frontier has passed them (deterministic whatever the workers).
    fn area_events(self, rules: Arc<Vec<Rule>>, timing: Timing) -> StreamVec<'scope, u64, Event>;
}

impl<'scope> AreaEvents<'scope> for StreamVec<'scope, u64, Event> {
    fn area_events(self, rules: Arc<Vec<Rule>>, timing: Timing) -> StreamVec<'scope, u64, Event> {
        // Sensor incidents are emitted no later (in timely time) than their event time, so
        // once the frontier passes an instant, every sensor incident up to it has arrived.
        let exchange = Exchange::new(|e: &Event| {
            crate::stable_hash(&[&e.sensor_type, e.area.as_deref().unwrap_or("")])
        });
        let on_arrival = timing.on_arrival && timing.live;
        self.unary_frontier::<CapacityContainerBuilder<Vec<Event>>, _, _, _>(
            exchange,
            "AreaEvents",
            move |capability, _info| {
                let mut cap = Some(capability);
                let mut pending: BTreeMap<u64, Vec<Event>> = BTreeMap::new();
                let mut areas = AreaCounts::new(rules);
                move |(input, frontier), output| {
                    let mut out = Vec::new();
                    input.for_each(|_cap, data| {
                        for e in data.drain(..).filter(|e| e.area.is_some()) {
                            if on_arrival {
                                areas.count(&e, &mut out);
                            } else {
                                pending.entry(e.time).or_default().push(e);
                            }
                        }
                    });
                    if cap.is_none() {
                        return;
                    }
                    let now = frontier.frontier().iter().min().copied();
                    while let Some((_, mut same_time)) =
                        crate::ordered::pop_ready(&mut pending, now)
                    {
                        // A fixed order across sensors; each sensor's own messages keep the
                        // order they were emitted in (an outage found on arrival starts and
                        // ends at the same instant: start first).
                        same_time.sort_by(|a, b| a.subject.cmp(&b.subject));
                        for e in &same_time {
                            areas.count(e, &mut out);
                        }
                    }
                    crate::ordered::emit_and_follow(&mut cap, now, out, output);
                }
            },
        )
    }
}

/// Per area rule and area: the sensors in an incident of its `of` rule, and since when the
/// area's own incident is on.
struct AreaCounts {
    rules: Arc<Vec<Rule>>,
    areas: HashMap<(usize, String), (BTreeSet<String>, Option<u64>)>,
}

impl AreaCounts {
    fn new(rules: Arc<Vec<Rule>>) -> Self {
        Self {
            rules,
            areas: HashMap::new(),
        }
    }

    /// Counts one sensor incident message against every area rule over its rule.
    fn count(&mut self, e: &Event, out: &mut Vec<Event>) {
        let Some(area) = e.area.clone() else { return };
        for (index, rule) in self.rules.iter().enumerate() {
            let RuleKind::Area { of, at_least } = rule.kind else {
                continue;
            };
            if self.rules.get(of).is_none_or(|o| o.name != e.rule) {
                continue;
            }
            let (members, since) = self.areas.entry((index, area.clone())).or_default();
            match e.state {
                EventState::End => members.remove(&e.subject),
                _ => members.insert(e.subject.clone()),
            };
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
            let Some((state, started_at)) = transition else {
                continue;
            };
            let sensors: Vec<&str> = members.iter().map(String::as_str).collect();
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
                    EventState::End => {
                        format!("{} ended in {area}: {count} sensor(s) left", rule.name)
                    }
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
