//! `AreaEvents`: area incidents, counted from the sensor incidents of each area rule's `of`
//! rule (`events/area`).

use super::Timing;
use crate::state::OperatorStates;
use aqyl_core::rules::{incident_id, Rule, RuleKind};
use aqyl_core::{Event, EventState};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::StreamVec;

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
                extra: Vec::new(),
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
    use crate::events::testing::{lifecycle, rules, BY_WATERMARK, MIN};
    use crate::state::testing::{build, same_across_a_checkpoint, Step};

    fn incident(sensor: &str, area: &str, state: EventState, minute: u64) -> Event {
        Event {
            extra: Vec::new(),
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
