//! `WindowEvents`: the rules over closed windows (`window = "<label>"`), in event time
//! (`events/window`).

use super::Timing;
use crate::state::OperatorStates;
use aqyl_core::rules::engine::DetectorState;
use aqyl_core::rules::{Detector, Input, Rule};
use aqyl_core::{Aggregate as AggregateRecord, Event, Observation, Scope};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::StreamVec;

/// Incidents detected by rules over closed windows (`window = "<label>"`).
pub trait WindowEvents<'scope> {
    /// Turns each sensor's closed windows into one reading per (sensor, window end) with
    /// fields `<field>_<statistic>`, and evaluates the window rules over them in event time.
    /// Corrections of closed windows (late updates) are not re-judged: an incident, once
    /// reported, is not taken back. Its state is registered in `states` as `events/window`.
    fn window_events(
        self,
        rules: Arc<Vec<Rule>>,
        timing: Timing,
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
        timing: Timing,
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
                // When stale state was last released (event time).
                let mut last_sweep = 0;
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
                                sensor_id: sensor_id.into(),
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
                    if let Some(before) = now.and_then(|now| timing.sweep(&mut last_sweep, now)) {
                        let ttl = timing.state_ttl_ms.unwrap_or(0);
                        for detector in detectors.values_mut() {
                            out.extend(detector.forget(before, ttl));
                        }
                        detectors.retain(|_, d| d.subjects() > 0);
                    }
                    crate::ordered::emit_and_follow(&mut cap, now, out, output);
                }
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::testing::{lifecycle, rules, MIN};
    use crate::state::testing::{build, same_across_a_checkpoint, Step};
    use aqyl_core::windows::window::WindowStats;

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
        let op = build(move |s, states| {
            s.window_events(rules.clone(), crate::events::testing::BY_WATERMARK, states)
        });
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
}
