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
//!
//! Each operator's state (what its rules have learned, ongoing incidents included, and what
//! waits for the frontier) is registered for checkpoints: `events/sensor`,
//! `events/area_silence`, `events/window` and `events/area`. The rules are not part of it: a
//! restored state is matched to the rules of the configuration by rule name, and the state of
//! a rule that is gone is dropped.

use crate::ordered::EventTimeBuffer;
use crate::state::OperatorStates;
use aqyl_core::metrics::Metrics;
use aqyl_core::rules::engine::{DetectorState, Order};
use aqyl_core::rules::{incident_id, Detector, Input, Rule, RuleKind};
use aqyl_core::{Aggregate as AggregateRecord, Event, EventState, Observation, Scope};
use serde::{Deserialize, Serialize};
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
    /// emits lifecycle messages. Its state is registered in `states` as `events/sensor`.
    fn detect_events(
        self,
        rules: Arc<Vec<Rule>>,
        timing: Timing,
        metrics: Arc<Metrics>,
        states: &OperatorStates,
    ) -> StreamVec<'scope, u64, Event>;

    /// Evaluates the `per = "area"` rules over each area's readings (those of all its
    /// sensors, after an exchange by area), with the area as subject. An area's readings come
    /// from many sensors and topics, so they are always judged in event-time order. Its state
    /// is registered in `states` as `events/area_silence`.
    fn detect_area_events(
        self,
        rules: Arc<Vec<Rule>>,
        timing: Timing,
        states: &OperatorStates,
    ) -> StreamVec<'scope, u64, Event>;
}

impl<'scope> DetectEvents<'scope> for StreamVec<'scope, u64, Observation> {
    fn detect_events(
        self,
        rules: Arc<Vec<Rule>>,
        timing: Timing,
        metrics: Arc<Metrics>,
        states: &OperatorStates,
    ) -> StreamVec<'scope, u64, Event> {
        let input = Input::Readings;
        detect(
            self,
            rules,
            input,
            timing,
            Some(metrics),
            states,
            "events/sensor",
        )
    }

    fn detect_area_events(
        self,
        rules: Arc<Vec<Rule>>,
        timing: Timing,
        states: &OperatorStates,
    ) -> StreamVec<'scope, u64, Event> {
        let timing = Timing {
            on_arrival: false,
            ..timing
        };
        detect(
            self,
            rules,
            Input::Area,
            timing,
            None,
            states,
            "events/area_silence",
        )
    }
}

/// What a `DetectEvents` operator keeps between activations (and in checkpoints).
#[derive(Default, Serialize, Deserialize)]
struct DetectState {
    /// Readings waiting for the frontier (`rule_timing = "watermark"`, area rules).
    pending: EventTimeBuffer,
    /// What the rules have learned, per subject.
    detector: DetectorState,
}

fn detect<'scope>(
    stream: StreamVec<'scope, u64, Observation>,
    rules: Arc<Vec<Rule>>,
    input_kind: Input<'static>,
    timing: Timing,
    metrics: Option<Arc<Metrics>>,
    states: &OperatorStates,
    name: &str,
) -> StreamVec<'scope, u64, Event> {
    let state = states.register::<DetectState>(name);
    // A restored state is lined up with the rules of the configuration now; the incidents
    // of rules that are gone end with the first activation.
    let mut farewell = Some(
        state
            .borrow_mut()
            .detector
            .bind(&rules, crate::wall_ms().max(0) as u64),
    );
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
        states.counted(exchange),
        "DetectEvents",
        move |capability, info| {
            let activator = scope.activator_for(info.address.clone());
            // Follows the input frontier; after a restore it starts from 0 again and catches
            // up at the first activation.
            let mut cap = Some(capability);
            move |(input, frontier), output| {
                let mut state = state.borrow_mut();
                let DetectState { pending, detector } = &mut *state;
                let mut detector = Detector::new(&rules, detector);
                let mut out = farewell.take().unwrap_or_default();
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
    /// reported, is not taken back. Its state is registered in `states` as `events/window`.
    fn window_events(
        self,
        rules: Arc<Vec<Rule>>,
        states: &OperatorStates,
    ) -> StreamVec<'scope, u64, Event>;
}

/// (sensor type, sensor id, window label) → statistics of one window end.
type Readings = HashMap<(Arc<str>, String, Arc<str>), Vec<(Arc<str>, f64)>>;

/// What a `WindowEvents` operator keeps between activations (and in checkpoints).
#[derive(Default, Serialize, Deserialize)]
struct WindowState {
    /// Closed windows waiting for the frontier, by window end.
    pending: BTreeMap<u64, Readings>,
    /// What the rules have learned, per window label (so `_rate` and `_z` compare a window
    /// with the previous window of the same label).
    detectors: HashMap<Arc<str>, DetectorState>,
}

impl<'scope> WindowEvents<'scope> for StreamVec<'scope, u64, AggregateRecord> {
    fn window_events(
        self,
        rules: Arc<Vec<Rule>>,
        states: &OperatorStates,
    ) -> StreamVec<'scope, u64, Event> {
        let state = states.register::<WindowState>("events/window");
        let mut ended = Vec::new();
        {
            // A restored state is lined up with the rules of the configuration now; the
            // incidents of rules that are gone end with the first activation.
            let mut state = state.borrow_mut();
            let now = crate::wall_ms().max(0) as u64;
            let mut labels: Vec<Arc<str>> = state.detectors.keys().cloned().collect();
            labels.sort();
            for label in labels {
                if let Some(detector) = state.detectors.get_mut(&label) {
                    ended.extend(detector.bind(&rules, now));
                }
            }
            state
                .detectors
                .retain(|label, _| rules.iter().any(|r| r.window.as_deref() == Some(&**label)));
        }
        let mut farewell = Some(ended);
        let exchange =
            Exchange::new(|a: &AggregateRecord| crate::stable_hash(&[&a.sensor_type, &a.subject]));
        self.unary_frontier::<CapacityContainerBuilder<Vec<Event>>, _, _, _>(
            states.counted(exchange),
            "WindowEvents",
            move |capability, _info| {
                // Follows the input frontier; after a restore it starts from 0 again.
                let mut cap = Some(capability);
                move |(input, frontier), output| {
                    let mut state = state.borrow_mut();
                    let WindowState { pending, detectors } = &mut *state;
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
                    let mut out = farewell.take().unwrap_or_default();
                    while let Some((end, readings)) = crate::ordered::pop_ready(pending, now) {
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
                            let detector = detectors.entry(window.clone()).or_default();
                            Detector::new(&rules, detector).observe(
                                &reading,
                                Input::Window(&window),
                                &mut out,
                            );
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
    /// frontier has passed them (deterministic whatever the workers). Its state is
    /// registered in `states` as `events/area`.
    fn area_events(
        self,
        rules: Arc<Vec<Rule>>,
        timing: Timing,
        states: &OperatorStates,
    ) -> StreamVec<'scope, u64, Event>;
}

/// What an `AreaEvents` operator keeps between activations (and in checkpoints).
#[derive(Default, Serialize, Deserialize)]
struct AreaState {
    /// Sensor incident messages waiting for the frontier, by event time.
    pending: BTreeMap<u64, Vec<Event>>,
    /// The counts of each area rule and area.
    areas: Areas,
}

/// Per area rule (by name) and area: the sensors in an incident of its `of` rule, and since
/// when the area's own incident is on.
type Areas = HashMap<(String, String), (BTreeSet<String>, Option<u64>)>;

impl<'scope> AreaEvents<'scope> for StreamVec<'scope, u64, Event> {
    fn area_events(
        self,
        rules: Arc<Vec<Rule>>,
        timing: Timing,
        states: &OperatorStates,
    ) -> StreamVec<'scope, u64, Event> {
        let state = states.register::<AreaState>("events/area");
        // A restored state keeps the areas of the area rules that still exist. (The ongoing
        // incidents of an area rule that is gone are dropped without an `end`: see the README,
        // "Delivery".)
        state.borrow_mut().areas.retain(|(rule, _), _| {
            rules
                .iter()
                .any(|r| r.name == *rule && matches!(r.kind, RuleKind::Area { .. }))
        });
        // Sensor incidents are emitted no later (in timely time) than their event time, so
        // once the frontier passes an instant, every sensor incident up to it has arrived.
        let exchange = Exchange::new(|e: &Event| {
            crate::stable_hash(&[&e.sensor_type, e.area.as_deref().unwrap_or("")])
        });
        let on_arrival = timing.on_arrival && timing.live;
        self.unary_frontier::<CapacityContainerBuilder<Vec<Event>>, _, _, _>(
            states.counted(exchange),
            "AreaEvents",
            move |capability, _info| {
                // Follows the input frontier; after a restore it starts from 0 again.
                let mut cap = Some(capability);
                move |(input, frontier), output| {
                    let mut state = state.borrow_mut();
                    let AreaState { pending, areas } = &mut *state;
                    let mut areas = AreaCounts {
                        rules: &rules,
                        areas,
                    };
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
                    while let Some((_, mut same_time)) = crate::ordered::pop_ready(pending, now) {
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

/// The area rules at work on their counts ([`AreaState::areas`]).
struct AreaCounts<'a> {
    rules: &'a [Rule],
    areas: &'a mut Areas,
}

impl AreaCounts<'_> {
    /// Counts one sensor incident message against every area rule over its rule.
    fn count(&mut self, e: &Event, out: &mut Vec<Event>) {
        let Some(area) = e.area.clone() else { return };
        for rule in self.rules {
            let RuleKind::Area { of, at_least } = rule.kind else {
                continue;
            };
            if self.rules.get(of).is_none_or(|o| o.name != e.rule) {
                continue;
            }
            let (members, since) = self
                .areas
                .entry((rule.name.clone(), area.clone()))
                .or_default();
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::testing::{build, run, same_across_a_checkpoint, Step};
    use aqyl_core::descriptor::SensorType;
    use aqyl_core::rules::parse_rules;
    use aqyl_core::window::WindowStats;
    use std::path::Path;

    const MIN: u64 = 60_000;

    /// Not live, judged once the watermark has passed (readings wait in the buffer).
    const BY_WATERMARK: Timing = Timing {
        on_arrival: false,
        live: false,
    };

    fn rules(text: &str) -> Arc<Vec<Rule>> {
        let ty = SensorType::from_toml(
            Path::new("traffic.toml"),
            "name = \"traffic\"\n[[fields]]\nname = \"avgSpeed\"\n",
        )
        .unwrap();
        Arc::new(parse_rules(Path::new("r.toml"), text, &[ty]).unwrap())
    }

    fn obs(sensor: &str, area: &str, minute: u64, speed: f64) -> Observation {
        Observation {
            sensor_type: "traffic".into(),
            sensor_id: sensor.into(),
            area: Some(area.into()),
            event_time: minute * MIN,
            received_at: 0,
            time_from_receive: false,
            location: None,
            fields: vec![("avgSpeed".into(), speed)],
            arrival: Default::default(),
        }
    }

    /// (rule, subject, state, started at, time), minutes.
    fn lifecycle(out: &[Event]) -> Vec<(&str, &str, &str, u64, u64)> {
        out.iter()
            .map(|e| {
                let (started, time) = (e.started_at / MIN, e.time / MIN);
                (
                    e.rule.as_str(),
                    e.subject.as_str(),
                    e.state.as_str(),
                    started,
                    time,
                )
            })
            .collect()
    }

    const SLOW_AND_OUTAGE: &str = "[[rule]]\nname = \"slow\"\nsensor_type = \"traffic\"\n\
        enter = \"avgSpeed < 20\"\nexit = \"avgSpeed > 30\"\nfor = \"3m\"\n\
        [[rule]]\nname = \"falling\"\nsensor_type = \"traffic\"\nenter = \"avgSpeed_rate <= -10\"\n\
        [[rule]]\nname = \"outage\"\nsensor_type = \"traffic\"\nkind = \"absence\"\nfor = \"10m\"\n";

    #[test]
    fn sensor_incidents_go_on_across_a_checkpoint() {
        let rules = rules(SLOW_AND_OUTAGE);
        let op = build(move |s, states| {
            s.detect_events(
                rules.clone(),
                BY_WATERMARK,
                Arc::new(Metrics::default()),
                states,
            )
        });
        // At the cut (minute 8): s1 is slow since minute 2 (for 3 minutes: on since 6), its
        // minute 9 reading (which ends it) waits for the watermark; s2 has been silent since
        // minute 1.
        let first = vec![
            obs("s1", "north", 0, 50.0),
            obs("s1", "north", 1, 40.0),
            obs("s1", "north", 2, 10.0),
            obs("s1", "north", 4, 12.0),
            obs("s1", "north", 6, 11.0),
            obs("s1", "north", 9, 45.0),
            obs("s2", "north", 1, 50.0),
        ];
        let second = vec![
            obs("s1", "north", 10, 15.0),
            obs("s1", "north", 12, 18.0),
            obs("s1", "north", 13, 15.0),
            obs("s1", "north", 14, 40.0),
            obs("s2", "north", 20, 50.0),
        ];
        let out = same_across_a_checkpoint(
            op,
            vec![Step::Send(first), Step::Advance(8 * MIN)],
            vec![Step::Send(second), Step::Advance(30 * MIN)],
        );
        let got = lifecycle(&out);
        // Started before the cut, ended by the reading buffered at the cut.
        assert!(got.contains(&("slow", "s1", "start", 2, 6)), "{got:?}");
        assert!(got.contains(&("slow", "s1", "end", 2, 9)), "{got:?}");
        // A rate against the buffered reading: 45 → 15 in a minute.
        assert!(got.contains(&("falling", "s1", "start", 10, 10)), "{got:?}");
        assert!(got.contains(&("falling", "s1", "end", 10, 12)), "{got:?}");
        assert!(got.contains(&("slow", "s1", "start", 10, 13)), "{got:?}");
        // A silence that began before the cut.
        assert!(got.contains(&("outage", "s2", "start", 11, 11)), "{got:?}");
        assert!(got.contains(&("outage", "s2", "end", 11, 20)), "{got:?}");
    }

    #[test]
    fn a_restored_state_ends_the_incidents_of_rules_that_are_gone() {
        let detect = |rules: Arc<Vec<Rule>>| {
            build(move |s, states| {
                s.detect_events(
                    rules.clone(),
                    BY_WATERMARK,
                    Arc::new(Metrics::default()),
                    states,
                )
            })
        };
        let first = vec![
            obs("s1", "north", 0, 10.0),
            obs("s1", "north", 5, 10.0),
            obs("s2", "north", 1, 50.0),
        ];
        let (out, taken) = run(
            detect(rules(SLOW_AND_OUTAGE)),
            None,
            0,
            vec![Step::Send(first), Step::Advance(8 * MIN)],
            false,
        );
        assert!(lifecycle(&out).contains(&("slow", "s1", "start", 0, 5)));
        // Restarted with `slow` gone and a rule added before `outage`: restoring succeeds
        // (`run` checks it), `slow`'s ongoing incident ends at once (same id, dated by the
        // wall clock: the rule was removed now) and says nothing more, `outage` goes on.
        let now = "[[rule]]\nname = \"fast\"\nsensor_type = \"traffic\"\nenter = \"avgSpeed > 100\"\n\
            [[rule]]\nname = \"outage\"\nsensor_type = \"traffic\"\nkind = \"absence\"\nfor = \"10m\"\n";
        let second = vec![obs("s1", "north", 9, 50.0), obs("s2", "north", 20, 50.0)];
        let (out, _) = run(
            detect(rules(now)),
            Some(taken.into_iter().collect()),
            8 * MIN,
            vec![Step::Send(second), Step::Advance(30 * MIN)],
            true,
        );
        let got = lifecycle(&out);
        assert!(got.contains(&("outage", "s2", "start", 11, 11)), "{got:?}");
        assert!(got.contains(&("outage", "s2", "end", 11, 20)), "{got:?}");
        let slow: Vec<_> = got.iter().filter(|e| e.0 == "slow").collect();
        assert_eq!(slow.len(), 1, "{got:?}");
        assert_eq!(
            (slow[0].1, slow[0].2, slow[0].3),
            ("s1", "end", 0),
            "{got:?}"
        );
    }

    #[test]
    fn area_silences_go_on_across_a_checkpoint() {
        let rules = rules(
            "[[rule]]\nname = \"dark\"\nsensor_type = \"traffic\"\nkind = \"absence\"\n\
             per = \"area\"\nfor = \"10m\"\n",
        );
        let op = build(move |s, states| s.detect_area_events(rules.clone(), BY_WATERMARK, states));
        // At the cut (minute 8) the area has been heard from; minute 9 waits in the buffer.
        let first = vec![
            obs("a1", "north", 0, 50.0),
            obs("a2", "north", 3, 50.0),
            obs("a1", "north", 9, 50.0),
            obs("b1", "south", 2, 50.0),
        ];
        let second = vec![obs("a2", "north", 30, 50.0), obs("b1", "south", 31, 50.0)];
        let out = same_across_a_checkpoint(
            op,
            vec![Step::Send(first), Step::Advance(8 * MIN)],
            vec![Step::Send(second), Step::Advance(40 * MIN)],
        );
        let got = lifecycle(&out);
        assert!(got.contains(&("dark", "north", "start", 19, 19)), "{got:?}");
        assert!(got.contains(&("dark", "north", "end", 19, 30)), "{got:?}");
        assert!(got.contains(&("dark", "south", "start", 12, 12)), "{got:?}");
        assert!(got.contains(&("dark", "south", "end", 12, 31)), "{got:?}");
    }

    fn window(end_minute: u64, mean: f64) -> AggregateRecord {
        let mut values = [mean - 1.0, mean, mean + 1.0];
        AggregateRecord {
            sensor_type: "traffic".into(),
            scope: Scope::Sensor,
            subject: "s1".into(),
            field: "avgSpeed".into(),
            window: "5m".into(),
            start: (end_minute - 5) * MIN,
            end: end_minute * MIN,
            stats: WindowStats::compute(&mut values).unwrap(),
            sax: None,
            sax_code: None,
        }
    }

    /// Closed windows enter at their end.
    fn windows(means: &[(u64, f64)]) -> Vec<Step<AggregateRecord>> {
        means
            .iter()
            .flat_map(|&(end, mean)| {
                [
                    Step::Advance(end * MIN),
                    Step::Send(vec![window(end, mean)]),
                ]
            })
            .collect()
    }

    #[test]
    fn window_incidents_go_on_across_a_checkpoint() {
        let rules = rules(
            "[[rule]]\nname = \"slow\"\nsensor_type = \"traffic\"\nwindow = \"5m\"\n\
             enter = \"avgSpeed_mean < 20\"\nexit = \"avgSpeed_mean > 30\"\n\
             [[rule]]\nname = \"falling\"\nsensor_type = \"traffic\"\nwindow = \"5m\"\n\
             enter = \"avgSpeed_mean_rate <= -2\"\n",
        );
        let op = build(move |s, states| s.window_events(rules.clone(), states));
        // At the cut (minute 15): slow since the window ending at 10; the window ending at 15
        // waits for the frontier.
        let first = windows(&[(5, 50.0), (10, 10.0), (15, 12.0)]);
        let mut second = windows(&[(20, 40.0), (25, 20.0), (30, 15.0)]);
        second.push(Step::Advance(35 * MIN));
        let out = same_across_a_checkpoint(op, first, second);
        let got = lifecycle(&out);
        assert!(got.contains(&("slow", "s1", "start", 10, 10)), "{got:?}");
        assert!(got.contains(&("slow", "s1", "end", 10, 20)), "{got:?}");
        // Against the window before: 40 → 20 in 5 minutes.
        assert!(got.contains(&("falling", "s1", "start", 25, 25)), "{got:?}");
    }

    fn incident(sensor: &str, area: &str, state: EventState, minute: u64) -> Event {
        Event {
            id: incident_id("slow", sensor, 0),
            event_type: "slow".into(),
            subject: sensor.into(),
            sensor_type: "traffic".into(),
            area: Some(area.into()),
            state,
            level: "warning".into(),
            started_at: 0,
            time: minute * MIN,
            rule: "slow".into(),
            message: String::new(),
            values: Vec::new(),
        }
    }

    #[test]
    fn area_counts_go_on_across_a_checkpoint() {
        let rules = rules(
            "[[rule]]\nname = \"slow\"\nsensor_type = \"traffic\"\nenter = \"avgSpeed < 20\"\n\
             [[rule]]\nname = \"jam\"\nsensor_type = \"traffic\"\nkind = \"area\"\nof = \"slow\"\n\
             at_least = 2\n",
        );
        let op = build(move |s, states| s.area_events(rules.clone(), BY_WATERMARK, states));
        use EventState::{End, Start};
        // At the cut (minute 3): the jam in north is on (s1, s2), s3's start waits for the
        // frontier; south has one sensor in.
        let first = vec![
            incident("s1", "north", Start, 1),
            incident("s2", "north", Start, 2),
            incident("s3", "north", Start, 4),
            incident("t1", "south", Start, 2),
        ];
        let second = vec![
            incident("s1", "north", End, 5),
            incident("s2", "north", End, 6),
            incident("t2", "south", Start, 7),
        ];
        let out = same_across_a_checkpoint(
            op,
            vec![Step::Send(first), Step::Advance(3 * MIN)],
            vec![Step::Send(second), Step::Advance(10 * MIN)],
        );
        let got = lifecycle(&out);
        assert_eq!(
            got,
            vec![
                ("jam", "north", "start", 2, 2),
                ("jam", "north", "end", 2, 6),
                ("jam", "south", "start", 7, 7),
            ]
        );
    }
}
