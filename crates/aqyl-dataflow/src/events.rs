//! `DetectEvents`: the rules of `config/rules/` per sensor, in event time.
//!
//! Rules need each sensor's readings in event-time order, whatever order they arrive in
//! within the allowed lateness, so (as for SensorSAX) readings are buffered by event time and
//! fed to the per-(rule, sensor) state machines once the frontier has passed them. The result
//! does not depend on arrival order or on the number of workers, and a re-delivered reading
//! (same time, same values) changes nothing, so incidents are not duplicated.

use aqyl_core::rules::{incident_id, Rule, Threshold, Transition};
use aqyl_core::{Event, EventState, Observation};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::StreamVec;

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
                let mut pending: BTreeMap<u64, Vec<Observation>> = BTreeMap::new();
                // (rule index, sensor id) → state machine.
                let mut machines: HashMap<(usize, String), Threshold> = HashMap::new();
                move |(input, frontier), output| {
                    input.for_each(|_cap, data| {
                        for obs in data.drain(..) {
                            if rules.iter().any(|r| *r.sensor_type == *obs.sensor_type) {
                                pending.entry(obs.event_time).or_default().push(obs);
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
                            (&a.sensor_id, &a.fields)
                                .partial_cmp(&(&b.sensor_id, &b.fields))
                                .unwrap_or(std::cmp::Ordering::Equal)
                        });
                        for obs in same_time {
                            let get =
                                |f: &str| obs.fields.iter().find(|(n, _)| &**n == f).map(|v| v.1);
                            for (index, rule) in rules.iter().enumerate() {
                                if *rule.sensor_type != *obs.sensor_type {
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
                                out.push(Event {
                                    id: incident_id(&rule.name, &obs.sensor_id, started_at),
                                    event_type: rule.event_type.clone(),
                                    subject: obs.sensor_id.clone(),
                                    sensor_type: obs.sensor_type.clone(),
                                    state,
                                    level: rule.level.clone(),
                                    started_at,
                                    time: obs.event_time,
                                    rule: rule.name.clone(),
                                    message: match state {
                                        EventState::End => format!(
                                            "{} ended: {}",
                                            rule.name,
                                            rule.render(&obs.sensor_id, &obs.fields)
                                        ),
                                        _ => rule.render(&obs.sensor_id, &obs.fields),
                                    },
                                    values: obs.fields.clone(),
                                });
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
