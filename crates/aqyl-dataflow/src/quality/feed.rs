//! `FeedSilence`: judges each watchdog failure against the other sensors of its type, a
//! silent sensor or an outage of the feed (`quality/type`).

use super::{emit_at, Assessed, Scored, Sweep};
use crate::state::OperatorStates;
use aqyl_core::quality::Feed;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Arc;
use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::StreamVec;

/// How far (in watchdog periods) before the oldest failure still to judge the feed check
/// forgets the news: [`Feed::forget_before`] keeps what any later verdict needs, this is a
/// margin.
const FORGET_AFTER: u64 = 2;

/// What `FeedSilence` keeps between activations (and in checkpoints): `quality/type`.
#[derive(Default, Serialize, Deserialize)]
pub(super) struct FeedState {
    /// Per sensor type: who reports and who is silent.
    pub(super) feeds: BTreeMap<Arc<str>, Feed>,
    /// Failures waiting for the frontier (event time), by their time.
    pending: BTreeMap<u64, Vec<Scored>>,
    /// The longest watchdog period seen.
    grace: u64,
    /// The last history cutoff.
    forgotten: u64,
}

/// Judges each watchdog failure against the other sensors of its type: a silence most of them
/// share is the feed's (see [`aqyl_core::quality::feed`]). In event time a failure is judged
/// once the frontier has passed it (every sensor's news up to then is in); live, at once.
/// With `state_ttl_ms`, a sensor whose newest news is older than that behind the frontier is
/// forgotten ([`Feed::forget_sensors`]; `ScoreQuality` sends news of a reporting sensor at
/// least every quarter of the TTL).
pub(super) fn feed_silence<'scope>(
    assessed: StreamVec<'scope, u64, Assessed>,
    wall_clock: bool,
    state_ttl_ms: Option<u64>,
    states: &OperatorStates,
) -> StreamVec<'scope, u64, Scored> {
    let state = states.register::<FeedState>("quality/type");
    let by_type = Exchange::new(|a: &Assessed| match a {
        Assessed::Scored(s) => crate::stable_hash(&[&s.sensor_type]),
        Assessed::Heard { sensor_type, .. } => crate::stable_hash(&[sensor_type]),
    });
    assessed.unary_frontier::<CapacityContainerBuilder<Vec<Scored>>, _, _, _>(
        states.counted(by_type),
        "FeedSilence",
        move |capability, _info| {
            let mut cap = Some(capability);
            let mut sweep = Sweep::default();
            let judge = |feeds: &BTreeMap<Arc<str>, Feed>, mut s: Scored| {
                if let Some(feed) = feeds.get(&s.sensor_type) {
                    s.assessment.findings.neighbours =
                        feed.verdict(&s.sensor_id, s.assessment.time, s.grace_ms);
                }
                s
            };
            move |(input, frontier), output| {
                let mut state = state.borrow_mut();
                let FeedState {
                    feeds,
                    pending,
                    grace,
                    forgotten,
                } = &mut *state;
                let mut live = Vec::new();
                input.for_each(|_cap, data| {
                    for a in data.drain(..) {
                        match a {
                            Assessed::Heard {
                                sensor_type,
                                sensor_id,
                                time,
                            } => feeds
                                .entry(sensor_type)
                                .or_default()
                                .heard(&sensor_id, time),
                            Assessed::Scored(s) => {
                                *grace = (*grace).max(s.grace_ms);
                                feeds
                                    .entry(s.sensor_type.clone())
                                    .or_default()
                                    .silent(&s.sensor_id, s.assessment.time);
                                if wall_clock {
                                    live.push(s);
                                } else {
                                    pending.entry(s.assessment.time).or_default().push(s);
                                }
                            }
                        }
                    }
                });
                if cap.is_none() {
                    return;
                }
                let mut out: Vec<(u64, Scored)> = Vec::new();
                // Live: judged with what is known now, sent at once (the frontier may be
                // minutes behind the wall clock).
                for s in live {
                    out.push((0, judge(feeds, s)));
                }
                let now = frontier.frontier().first().copied();
                while let Some((t, ready)) = crate::ordered::pop_ready(pending, now) {
                    for s in ready {
                        out.push((t, judge(feeds, s)));
                    }
                }
                // News may run hours ahead of the frontier (a replay's frontier can leap), so
                // the history is forgotten by time, never by count.
                let oldest = pending.keys().next().copied().or(now).unwrap_or(u64::MAX);
                let cutoff = oldest.saturating_sub(FORGET_AFTER * *grace);
                if cutoff > forgotten.saturating_add(*grace) {
                    *forgotten = cutoff;
                    for feed in feeds.values_mut() {
                        feed.forget_before(cutoff);
                    }
                }
                if let Some(before) = sweep.due(state_ttl_ms, now) {
                    for feed in feeds.values_mut() {
                        feed.forget_sensors(before);
                    }
                    feeds.retain(|_, feed| feed.sensors() > 0);
                }
                emit_at(&mut cap, now, out, output);
            }
        },
    )
}
