//! `TrackQuality`: per sensor, the report (score), the `quality` incidents and the hourly and
//! daily roll-ups (`quality/alerts`).

use super::{with_nested, QualityOut, Scored, Sweep};
use crate::state::OperatorStates;
use aqyl_core::quality::{Alarm, AlarmSettings, QualityRecord, QualityReport, Rollups};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Arc;
use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::StreamVec;

/// Type → sensor → (threshold alarm, roll-ups).
pub(super) type Trackers = BTreeMap<Arc<str>, BTreeMap<Arc<str>, (Alarm, Rollups)>>;

/// One assessment of one sensor: its report, the alarm and the roll-ups. With a TTL
/// (`ttl_ms`), an input of a sensor silent past it until then finds it forgotten, as if the
/// sweep had already come by: whether its incident ends and it starts afresh does not depend
/// on when the sweeps run (a replay's frontier may leap past its TTL and its return at once).
fn track_one(
    s: Scored,
    trackers: &mut Trackers,
    alarm: &AlarmSettings,
    ttl_ms: Option<u64>,
    out: &mut Vec<QualityOut>,
) {
    let interval = s.interval_ms;
    let report = QualityReport::new(s.sensor_type, s.sensor_id, s.area, s.assessment);
    let (ty, id) = (&report.sensor_type, &report.sensor_id);
    if let (Some(ttl), false) = (ttl_ms, report.findings.silent) {
        if let Some(sensors) = trackers.get_mut(ty) {
            let expired = sensors
                .get(&**id)
                .is_some_and(|(a, _)| a.last_input().saturating_add(ttl) < report.time);
            if let Some((a, mut rollups)) = expired.then(|| sensors.remove(&**id)).flatten() {
                release(ty, id, &a, &mut rollups, ttl, out);
            }
        }
    }
    with_nested(trackers, ty, id, |(a, rollups): &mut (Alarm, Rollups)| {
        if let Some(e) = a.check(&report, alarm, interval) {
            out.push(QualityOut::Event(e));
        }
        let mut closed = Vec::new();
        rollups.add(&report, &mut closed);
        out.extend(
            closed
                .into_iter()
                .map(|r| QualityOut::Record(QualityRecord::Rollup(r))),
        );
    });
    out.push(QualityOut::Record(QualityRecord::Report(report)));
}

/// Forgets the alarm and roll-ups of every sensor whose newest input is older than `before`
/// (silent past `state_ttl`, `ttl_ms`): its ongoing incident ends
/// ([`Alarm::forgotten`]) and its open roll-ups are given out as they are.
fn forget(trackers: &mut Trackers, before: u64, ttl_ms: u64, out: &mut Vec<QualityOut>) {
    for (ty, sensors) in trackers.iter_mut() {
        sensors.retain(|id, (alarm, rollups)| {
            if alarm.last_input() >= before {
                return true;
            }
            release(ty, id, alarm, rollups, ttl_ms, out);
            false
        });
    }
    trackers.retain(|_, sensors| !sensors.is_empty());
}

/// What is given out of a forgotten sensor: the end of its ongoing incident, its open
/// roll-ups.
fn release(
    ty: &Arc<str>,
    id: &str,
    alarm: &Alarm,
    rollups: &mut Rollups,
    ttl_ms: u64,
    out: &mut Vec<QualityOut>,
) {
    out.extend(alarm.forgotten(ty, id, ttl_ms).map(QualityOut::Event));
    let mut closed = Vec::new();
    rollups.close(u64::MAX, &mut closed);
    out.extend(
        closed
            .into_iter()
            .map(|r| QualityOut::Record(QualityRecord::Rollup(r))),
    );
}

/// What `TrackQuality` keeps between activations (and in checkpoints): `quality/alerts`.
#[derive(Default, Serialize, Deserialize)]
pub(super) struct AlertState {
    /// Type → sensor → (threshold alarm, roll-ups).
    pub(super) trackers: Trackers,
    /// The longest hold of the neighbour check: an hour is complete once the frontier has
    /// passed its end by that much.
    held_back: u64,
    /// The last hour whose roll-ups were closed.
    rolled_up_to: u64,
    /// Assessments by the logical time they were sent at (the time they became final): one
    /// sensor's may come from two workers (before and after its area was known) and through
    /// two checks, and are taken in that order once the frontier has passed them.
    pending: BTreeMap<u64, Vec<Scored>>,
}

/// Per sensor: the report (score), the alarm and the hourly and daily roll-ups, of the
/// assessments of both checks (`by_area`, `by_type`). Live, a silence is taken as soon as it
/// comes (the alarm must not wait for the watermark). With `state_ttl_ms`, a sensor whose
/// newest input is older than that behind the frontier (less the neighbour check's hold) is
/// forgotten ([`forget`]), and so is one whose next input comes later than that after its
/// newest ([`track_one`]).
pub(super) fn track<'scope>(
    by_area: StreamVec<'scope, u64, Scored>,
    by_type: StreamVec<'scope, u64, Scored>,
    alarm: AlarmSettings,
    wall_clock: bool,
    state_ttl_ms: Option<u64>,
    states: &OperatorStates,
) -> StreamVec<'scope, u64, QualityOut> {
    let state = states.register::<AlertState>("quality/alerts");
    let by_sensor = |s: &Scored| crate::stable_hash(&[&s.sensor_type, &s.sensor_id]);
    by_area.binary_frontier::<_, CapacityContainerBuilder<Vec<QualityOut>>, _, _, _, _>(
        by_type,
        states.counted(Exchange::new(by_sensor)),
        states.counted(Exchange::new(by_sensor)),
        "TrackQuality",
        move |capability, _info| {
            let mut cap = Some(capability);
            let mut sweep = Sweep::default();
            move |(input1, frontier1), (input2, frontier2), output| {
                let mut state = state.borrow_mut();
                let AlertState {
                    trackers,
                    held_back,
                    rolled_up_to,
                    pending,
                } = &mut *state;
                let mut now_live = Vec::new();
                let mut take = |at: u64, data: &mut Vec<Scored>| {
                    for s in data.drain(..) {
                        if wall_clock && s.assessment.findings.silent {
                            now_live.push(s);
                        } else {
                            pending.entry(at).or_default().push(s);
                        }
                    }
                };
                input1.for_each(|cap, data| take(cap.least().copied().unwrap_or(0), data));
                input2.for_each(|cap, data| take(cap.least().copied().unwrap_or(0), data));
                if cap.is_none() {
                    return;
                }
                let mut out = Vec::new();
                // (Their reports may close an hour's roll-up while readings of that hour still
                // wait for the watermark; those then count towards the next hour.)
                for s in now_live {
                    track_one(s, trackers, &alarm, state_ttl_ms, &mut out);
                }
                let now = [frontier1.frontier().first(), frontier2.frontier().first()]
                    .into_iter()
                    .flatten()
                    .min()
                    .copied();
                while let Some((_, mut ready)) = crate::ordered::pop_ready(pending, now) {
                    ready.sort_by(|a, b| {
                        (a.assessment.time, &a.sensor_type, &a.sensor_id).cmp(&(
                            b.assessment.time,
                            &b.sensor_type,
                            &b.sensor_id,
                        ))
                    });
                    for s in ready {
                        *held_back = (*held_back).max(s.window_ms);
                        track_one(s, trackers, &alarm, state_ttl_ms, &mut out);
                    }
                }
                // Roll-ups close once every report of their span has come through.
                let complete = now.map_or(u64::MAX, |n| n.saturating_sub(*held_back + 1));
                let hour = complete / 3_600_000;
                if hour > *rolled_up_to {
                    *rolled_up_to = hour;
                    for t in trackers.values_mut().flat_map(|m| m.values_mut()) {
                        let mut closed = Vec::new();
                        t.1.close(complete, &mut closed);
                        out.extend(
                            closed
                                .into_iter()
                                .map(|r| QualityOut::Record(QualityRecord::Rollup(r))),
                        );
                    }
                }
                // Every report up to `held_back` before the frontier is in: a sensor is
                // forgotten once nothing came from it for the TTL before then.
                let settled = now.map(|n| n.saturating_sub(*held_back));
                if let (Some(ttl), Some(before)) = (state_ttl_ms, sweep.due(state_ttl_ms, settled))
                {
                    forget(trackers, before, ttl, &mut out);
                }
                crate::ordered::emit_and_follow(&mut cap, now, out, output);
            }
        },
    )
}
