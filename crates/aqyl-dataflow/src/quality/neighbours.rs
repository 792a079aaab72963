//! `NeighbourCheck`: holds each assessment of a sensor with an area until its neighbours'
//! readings around the same time are in, and settles its neighbour verdict (`quality/area`).

use super::{emit_at, with_nested, Assessed, Scored};
use crate::state::OperatorStates;
use aqyl_core::quality::Neighbourhood;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Arc;
use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::StreamVec;

/// One area's sensors of one type in the neighbour check: their neighbourhood, and the type's
/// neighbour window, expected interval and watchdog period (ms).
pub(super) type Hood = (Neighbourhood, u64, u64, u64);

/// What `NeighbourCheck` keeps between activations (and in checkpoints): `quality/area`.
#[derive(Default, Serialize, Deserialize)]
pub(super) struct AreaState {
    /// Type → area → the assessments held for their neighbours.
    pub(super) hoods: BTreeMap<Arc<str>, BTreeMap<Arc<str>, Hood>>,
}

/// Holds each assessment of a sensor with an area until its neighbours' readings around the
/// same time are in, and settles its neighbour verdict; the others pass straight through.
pub(super) fn neighbour_check<'scope>(
    assessed: StreamVec<'scope, u64, Assessed>,
    spike_threshold: f64,
    states: &OperatorStates,
) -> StreamVec<'scope, u64, Scored> {
    let state = states.register::<AreaState>("quality/area");
    let by_area = Exchange::new(|a: &Assessed| match a {
        Assessed::Scored(s) => match &s.area {
            Some(area) => crate::stable_hash(&[&s.sensor_type, "area", area]),
            None => crate::stable_hash(&[&s.sensor_type, "sensor", &s.sensor_id]),
        },
        Assessed::Heard { sensor_type, .. } => crate::stable_hash(&[sensor_type]),
    });
    assessed.unary_frontier::<CapacityContainerBuilder<Vec<Scored>>, _, _, _>(
        states.counted(by_area),
        "NeighbourCheck",
        move |capability, _info| {
            let mut cap = Some(capability);
            move |(input, frontier), output| {
                let mut state = state.borrow_mut();
                let AreaState { hoods } = &mut *state;
                // Each with the logical time it is final at.
                let mut out: Vec<(u64, Scored)> = Vec::new();
                input.for_each(|_cap, data| {
                    for a in data.drain(..) {
                        let Assessed::Scored(s) = a else { continue };
                        let Some(area) = s.area.clone() else {
                            out.push((s.assessment.time, s));
                            continue;
                        };
                        with_nested(hoods, &s.sensor_type, &area, |entry: &mut Hood| {
                            entry.1 = s.window_ms;
                            entry.2 = s.interval_ms;
                            entry.3 = s.grace_ms;
                            entry.0.push(s.sensor_id, s.assessment);
                        });
                    }
                });
                if cap.is_none() {
                    return;
                }
                let now = frontier.frontier().first().copied();
                for (ty, by_area) in hoods.iter_mut() {
                    for (area, (hood, window, interval, grace)) in by_area.iter_mut() {
                        for (sensor, assessment) in hood.ready(now, *window, spike_threshold) {
                            out.push((
                                assessment.time.saturating_add(*window),
                                Scored {
                                    sensor_type: ty.clone(),
                                    sensor_id: sensor,
                                    area: Some(area.clone()),
                                    window_ms: *window,
                                    interval_ms: *interval,
                                    grace_ms: *grace,
                                    assessment,
                                },
                            ));
                        }
                    }
                    by_area.retain(|_, (h, ..)| !h.is_empty());
                }
                emit_at(&mut cap, now, out, output);
            }
        },
    )
}
