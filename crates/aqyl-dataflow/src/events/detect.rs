//! `DetectEvents`: the reading rules per sensor (`events/sensor`) and the `per = "area"`
//! rules per area (`events/area_silence`), on arrival or once the watermark has passed (see
//! [`Timing`]).

use super::Timing;
use crate::ordered::EventTimeBuffer;
use crate::state::OperatorStates;
use aqyl_core::metrics::Metrics;
use aqyl_core::rules::engine::{DetectorState, Order};
use aqyl_core::rules::{Detector, Input, Rule};
use aqyl_core::{Event, Observation};
use serde::{Deserialize, Serialize};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;
use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::StreamVec;

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
            // When stale state was last released (event time).
            let mut last_sweep = 0;
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
                    if let Some(before) = timing.sweep(&mut last_sweep, now) {
                        let ttl = timing.state_ttl_ms.unwrap_or(0);
                        detector.forget(before, ttl, &mut out);
                    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::testing::{lifecycle, obs, rules, BY_WATERMARK, MIN};
    use crate::state::testing::{build, run, same_across_a_checkpoint, Step};

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
}
