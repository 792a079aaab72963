//! `ScoreQuality`: rates every sensor stream in event-time order, with its watchdog of
//! silences (`quality/sensor`), then hands its assessments on to the checks
//! ([`judge_quality`](super::judge_quality)).

use super::{judge_quality, latency, Assessed, QualityOut, QualitySpec, Scored, Side, Sweep};
use crate::state::OperatorStates;
use aqyl_core::quality::{Assessment, Input, SensorQuality};
use aqyl_core::Observation;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;
use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::StreamVec;

impl Assessed {
    fn heard(s: &Sensor, time: u64) -> Self {
        Assessed::Heard {
            sensor_type: s.key.0.clone(),
            sensor_id: s.key.1.clone(),
            time,
        }
    }
}

/// An input item of one sensor, in the order buffer.
#[derive(Serialize, Deserialize)]
pub(super) enum Item {
    Reading(Observation),
    Side(Side),
}

impl Item {
    fn order(&self) -> (&str, &str, u8) {
        match self {
            Item::Reading(o) => (&o.sensor_type, &o.sensor_id, 0),
            Item::Side(s) => {
                let (t, id) = s.key();
                let rank = match s {
                    Side::Incorrect(_) => 0,
                    Side::Rejected { .. } => 1,
                    Side::Late { .. } => 2,
                };
                (t, id, rank)
            }
        }
    }
}

/// A sensor's state in `ScoreQuality`.
#[derive(Serialize, Deserialize)]
pub(super) struct Sensor {
    pub(super) key: Key,
    quality: SensorQuality,
    area: Option<Arc<str>>,
    /// From its type's descriptor (refreshed, with the settings of `quality`, on restore).
    window_ms: u64,
    interval_ms: u64,
    grace_ms: u64,
    /// Wall-clock arrival (Unix ms) and event time of the latest reading (wall-clock
    /// watchdog).
    last_wall: i64,
    last_event: u64,
    /// Event time of its newest input (a reading, a rejected or a late message): it is
    /// forgotten once the frontier is `state_ttl` past it.
    last_seen: u64,
    /// The event-time watchdog's scheduled check.
    pub(super) scheduled: Option<u64>,
}

type Key = (Arc<str>, Arc<str>);

impl Sensor {
    /// With a TTL (`ttl`), when the sensor is forgotten if nothing more comes (its newest
    /// input plus the TTL): its watchdog counts failures before then only. A frontier that
    /// leaps far ahead (a replay) would otherwise let the watchdog count a whole frequency
    /// window of failures of a sensor the same activation forgets, which every operator
    /// downstream would judge and hold: a sensor past the TTL is reported silent no more,
    /// however the frontier moves.
    fn watched_until(&self, ttl: Option<u64>) -> u64 {
        ttl.map_or(u64::MAX, |ttl| self.last_seen.saturating_add(ttl))
    }
}

/// The sensors one worker scores, found by (type, id) without allocating.
#[derive(Default, Serialize, Deserialize)]
pub(super) struct Sensors {
    /// Rebuilt from `all` on restore.
    #[serde(skip)]
    index: HashMap<Arc<str>, HashMap<Arc<str>, usize>>,
    pub(super) all: Vec<Sensor>,
}

/// What `ScoreQuality` keeps between activations (and in checkpoints): `quality/sensor`.
#[derive(Default, Serialize, Deserialize)]
pub(super) struct ScoreState {
    /// Input waiting for the frontier, by the event time it is judged at.
    pub(super) pending: BTreeMap<u64, Vec<Item>>,
    pub(super) sensors: Sensors,
    /// Event-time watchdog: (check time, sensor slot), one per sensor with a `scheduled`
    /// check (rebuilt from them on restore, and when sensors are forgotten).
    #[serde(skip)]
    checks: BTreeSet<(u64, usize)>,
}

impl ScoreState {
    /// After a restore: rebuilds what is derived from the sensors (their index, the watchdog's
    /// schedule) and brings each sensor's settings up to date with the current `[quality]`
    /// settings and descriptors (a type no longer configured keeps its own).
    fn restored(&mut self, registry: &aqyl_core::ingest::decode::Registry, spec: &QualitySpec) {
        for s in self.sensors.all.iter_mut() {
            if let Some(ty) = registry.get(&s.key.0) {
                let interval = ty.expected_interval.as_millis() as u64;
                let settings = spec.sensor(interval, ty.flat_line, ty.activity_field.clone());
                if s.quality.reconfigure(settings) {
                    s.interval_ms = interval;
                    s.window_ms = interval / 2;
                    s.grace_ms = s.quality.grace_ms();
                }
            }
            // The schedule is always the sensor's next check (see `fire_checks` and `judge`).
            s.scheduled = None;
            if !spec.wall_clock {
                s.scheduled = s.quality.next_check();
            }
        }
        self.sensors.reindex(&mut self.checks);
    }
}

impl Sensors {
    /// Rebuilds what is derived from `all`: the index, and the watchdog's schedule from each
    /// sensor's `scheduled` check.
    fn reindex(&mut self, checks: &mut BTreeSet<(u64, usize)>) {
        // New maps, sized for what is left.
        self.index = HashMap::new();
        checks.clear();
        for (slot, s) in self.all.iter().enumerate() {
            self.index
                .entry(s.key.0.clone())
                .or_default()
                .insert(s.key.1.clone(), slot);
            if let Some(next) = s.scheduled {
                checks.insert((next, slot));
            }
        }
    }

    /// Forgets every sensor whose newest input is older than `before` (silent past
    /// `state_ttl`): its ratings, detectors and watchdog check. Returns how many.
    fn forget(&mut self, before: u64, checks: &mut BTreeSet<(u64, usize)>) -> usize {
        let n = self.all.len();
        self.all.retain(|s| s.last_seen >= before);
        let released = n - self.all.len();
        if released > 0 {
            self.all.shrink_to_fit();
            self.reindex(checks);
        }
        released
    }

    /// The sensor's slot, made by `make` on first sight.
    fn slot(&mut self, ty: &Arc<str>, id: &Arc<str>, make: impl FnOnce() -> Sensor) -> usize {
        if let Some(&i) = self.index.get(&**ty).and_then(|m| m.get(&**id)) {
            return i;
        }
        let i = self.all.len();
        self.all.push(make());
        self.index
            .entry(ty.clone())
            .or_default()
            .insert(id.clone(), i);
        i
    }
}

/// Quality scoring of sensor streams.
pub trait ScoreQuality<'scope> {
    /// Rates each sensor's readings (this stream: the readings that pass into aggregates
    /// and rules) together with `side` (readings kept out, rejected and late messages). Its
    /// operators' states are registered in `states` as `quality/sensor`, `quality/area`,
    /// `quality/type` and `quality/alerts`. With `spec.state_ttl_ms`, what they keep of a
    /// sensor silent that long is released (see the [module](super) docs).
    fn score_quality(
        self,
        side: StreamVec<'scope, u64, Side>,
        registry: crate::SharedRegistry,
        spec: QualitySpec,
        states: &OperatorStates,
    ) -> StreamVec<'scope, u64, QualityOut>;
}

impl<'scope> ScoreQuality<'scope> for StreamVec<'scope, u64, Observation> {
    fn score_quality(
        self,
        side: StreamVec<'scope, u64, Side>,
        registry: crate::SharedRegistry,
        spec: QualitySpec,
        states: &OperatorStates,
    ) -> StreamVec<'scope, u64, QualityOut> {
        let scope = self.scope();
        let state = states.register::<ScoreState>("quality/sensor");
        let by_sensor =
            Exchange::new(|o: &Observation| crate::stable_hash(&[&o.sensor_type, &o.sensor_id]));
        let side_by_sensor = Exchange::new(|s: &Side| {
            let (t, id) = s.key();
            crate::stable_hash(&[t, id])
        });
        let scored = self
            .binary_frontier::<_, CapacityContainerBuilder<Vec<Assessed>>, _, _, _, _>(
                side,
                states.counted(by_sensor),
                states.counted(side_by_sensor),
                "ScoreQuality",
                move |capability, info| {
                    let activator = scope.activator_for(info.address.clone());
                    state.borrow_mut().restored(&registry.load(), &spec);
                    let mut cap = Some(capability);
                    let mut sweep = Sweep::default();
                    let mut last_scan = i64::MIN;
                    move |(readings, f1), (side, f2), output| {
                        let mut state = state.borrow_mut();
                        let ScoreState {
                            pending,
                            sensors,
                            checks,
                        } = &mut *state;
                        let registry = registry.load();
                        let mut out = Vec::new();
                        readings.for_each(|cap, data| {
                            let at = cap.least().copied().unwrap_or(0);
                            for obs in data.drain(..) {
                                if obs.event_time < at {
                                    // A late record let in to correct its window
                                    // (`pipeline.late = "update"`): late, for quality.
                                    let late = Side::Late {
                                        at,
                                        age_ms: obs
                                            .arrival
                                            .stream_time
                                            .saturating_sub(obs.event_time),
                                        latency_ms: latency(
                                            obs.received_at,
                                            obs.arrival.ingested_at,
                                        ),
                                        sensor_type: obs.sensor_type,
                                        sensor_id: obs.sensor_id,
                                    };
                                    pending.entry(at).or_default().push(Item::Side(late));
                                    continue;
                                }
                                if spec.wall_clock {
                                    // Live, a reading proves its sensor alive when it arrives,
                                    // not when the watermark lets it be judged.
                                    if let Some(slot) = sensor_slot(
                                        sensors,
                                        checks,
                                        &registry,
                                        &spec,
                                        (&obs.sensor_type, &obs.sensor_id),
                                        obs.event_time,
                                    ) {
                                        let s = &mut sensors.all[slot];
                                        s.last_seen = s.last_seen.max(obs.event_time);
                                        if s.quality.missing()
                                            || keep_alive(
                                                spec.state_ttl_ms,
                                                s.last_event,
                                                obs.event_time,
                                            )
                                        {
                                            out.push(Assessed::heard(s, obs.event_time));
                                        }
                                        if obs.event_time >= s.last_event {
                                            s.last_event = obs.event_time;
                                            s.last_wall = obs.arrival.ingested_at;
                                        }
                                        s.quality.arrived(obs.event_time);
                                    }
                                }
                                pending
                                    .entry(obs.event_time)
                                    .or_default()
                                    .push(Item::Reading(obs));
                            }
                        });
                        side.for_each(|cap, data| {
                            let at = cap.least().copied().unwrap_or(0);
                            for s in data.drain(..) {
                                let filed = match &s {
                                    Side::Incorrect(obs) => obs.event_time,
                                    Side::Rejected { at, .. } | Side::Late { at, .. } => *at,
                                };
                                let item = match s {
                                    Side::Incorrect(obs) => Item::Reading(obs),
                                    other => Item::Side(other),
                                };
                                pending.entry(filed.max(at)).or_default().push(item);
                            }
                        });
                        if cap.is_none() {
                            return;
                        }
                        let now = [f1.frontier().first(), f2.frontier().first()]
                            .into_iter()
                            .flatten()
                            .min()
                            .copied();
                        let mut reached = now;
                        if spec.wall_clock {
                            while let Some((t, items)) = crate::ordered::pop_ready(pending, now) {
                                judge_all(t, items, &registry, &spec, sensors, checks, &mut out);
                            }
                            let wall = wall_ms();
                            // Every sensor's watchdog: work for every sensor, so not at each
                            // of the many activations input brings, but every `SCAN_MS` (the
                            // activator below comes back within a second anyway).
                            let sensors_to_scan = if wall >= last_scan.saturating_add(SCAN_MS) {
                                last_scan = wall;
                                &mut sensors.all[..]
                            } else {
                                &mut []
                            };
                            for s in sensors_to_scan.iter_mut() {
                                // The sensor's own event clock, advanced by the wall clock.
                                let elapsed = (wall - s.last_wall).max(0) as u64;
                                let event_now = s
                                    .last_event
                                    .saturating_add(elapsed)
                                    .min(s.watched_until(spec.state_ttl_ms).saturating_sub(1));
                                while let Some(a) = s.quality.watchdog(event_now) {
                                    out.push(Assessed::Scored(scored(s, a)));
                                }
                            }
                            if now.is_some() && !sensors.all.is_empty() {
                                activator.activate_after(Duration::from_secs(1));
                            }
                        } else {
                            let mut work = EventTime {
                                pending,
                                checks,
                                sensors,
                                out: &mut out,
                            };
                            reached = work.advance(now, &registry, &spec);
                            if reached != now {
                                // More to do: after the steps downstream have taken this much.
                                activator.activate();
                            }
                        }
                        if let Some(before) = sweep.due(spec.state_ttl_ms, reached) {
                            sensors.forget(before, checks);
                        }
                        crate::ordered::emit_and_follow(&mut cap, reached, out, output);
                    }
                },
            );
        judge_quality(scored, spec, states)
    }
}

use crate::wall_ms;

/// Live, how often at most the watchdog looks at every sensor (wall ms).
const SCAN_MS: i64 = 250;

fn scored(s: &Sensor, assessment: Assessment) -> Scored {
    Scored {
        sensor_type: s.key.0.clone(),
        sensor_id: s.key.1.clone(),
        area: s.area.clone(),
        window_ms: s.window_ms,
        interval_ms: s.interval_ms,
        grace_ms: s.grace_ms,
        assessment,
    }
}

/// At most about this many assessments leave `ScoreQuality` in one activation in event time.
/// A frontier that leaps hours past many silent sensors (a replay: 200,000 sensors falling
/// silent together make millions of watchdog failures) is worked through in steps, each
/// handed downstream (and judged, and written) before the next is made, instead of all of
/// them waiting in memory at once.
const STEP: usize = 16_384;

/// One event-time activation's work: the input waiting for the frontier and the watchdog's
/// checks, taken in event-time order.
struct EventTime<'a> {
    pending: &'a mut BTreeMap<u64, Vec<Item>>,
    checks: &'a mut BTreeSet<(u64, usize)>,
    sensors: &'a mut Sensors,
    out: &'a mut Vec<Assessed>,
}

impl EventTime<'_> {
    /// Judges the input and fires the checks before the frontier `now` (`None`: the input
    /// has ended; the checks then stay unfired), each check before the input at its time,
    /// until [`STEP`] assessments are out. Returns how far it got: `now` when it is done,
    /// else the time of the first thing left, below which the operator may let go of its
    /// capability.
    fn advance(
        &mut self,
        now: Option<u64>,
        registry: &aqyl_core::ingest::decode::Registry,
        spec: &QualitySpec,
    ) -> Option<u64> {
        let ttl = spec.state_ttl_ms;
        loop {
            let next = self.pending.first_key_value().map(|(t, _)| *t);
            let Some(t) = next.filter(|t| now.is_none_or(|n| *t < n)) else {
                break;
            };
            if let Some(left) = self.fire_checks(t, ttl) {
                return Some(left);
            }
            if self.out.len() >= STEP {
                return Some(t);
            }
            let items = self.pending.remove(&t).unwrap_or_default();
            judge_all(
                t,
                items,
                registry,
                spec,
                self.sensors,
                self.checks,
                self.out,
            );
        }
        match now {
            Some(n) => self.fire_checks(n, ttl).or(now),
            None => None,
        }
    }

    /// Runs the watchdog of every sensor due before `until`, until [`STEP`] assessments are
    /// out (then returns the time of the first check left); with a TTL (`ttl`), only up to
    /// when each sensor is forgotten ([`Sensor::watched_until`]).
    fn fire_checks(&mut self, until: u64, ttl: Option<u64>) -> Option<u64> {
        let (checks, sensors) = (&mut *self.checks, &mut *self.sensors);
        while let Some(&(at, slot)) = checks.first() {
            if at >= until {
                break;
            }
            if self.out.len() >= STEP {
                return Some(at);
            }
            checks.pop_first();
            fire_check(at, slot, ttl, checks, sensors, self.out);
        }
        None
    }
}

/// Judges one instant's input of sensors, in a fixed order.
fn judge_all(
    t: u64,
    mut items: Vec<Item>,
    registry: &aqyl_core::ingest::decode::Registry,
    spec: &QualitySpec,
    sensors: &mut Sensors,
    checks: &mut BTreeSet<(u64, usize)>,
    out: &mut Vec<Assessed>,
) {
    items.sort_by(|a, b| a.order().cmp(&b.order()));
    for item in items {
        judge(t, item, registry, spec, sensors, checks, out);
    }
}

/// Runs the watchdog check of the sensor in `slot` due at `at` (taken off `checks`) and
/// schedules its next one.
fn fire_check(
    at: u64,
    slot: usize,
    ttl: Option<u64>,
    checks: &mut BTreeSet<(u64, usize)>,
    sensors: &mut Sensors,
    out: &mut Vec<Assessed>,
) {
    let Some(s) = sensors.all.get_mut(slot) else {
        return;
    };
    s.scheduled = None;
    let watched = s.watched_until(ttl);
    if at >= watched {
        // Forgotten by then: no failure, and no further check (an input reschedules it).
        return;
    }
    if let Some(a) = s.quality.watchdog(at) {
        out.push(Assessed::Scored(scored(s, a)));
    }
    if let Some(next) = s.quality.next_check().filter(|next| *next < watched) {
        s.scheduled = Some(next);
        checks.insert((next, slot));
    }
}

/// The slot of the sensor an input at event time `time` is of, made on first sight (`None`
/// for a type no longer configured). A sensor silent past the TTL until then is made afresh,
/// as if the sweep had already forgotten it: whether it starts afresh does not depend on
/// when the sweeps run (a replay's frontier may leap past its TTL and its return at once).
fn sensor_slot(
    sensors: &mut Sensors,
    checks: &mut BTreeSet<(u64, usize)>,
    registry: &aqyl_core::ingest::decode::Registry,
    spec: &QualitySpec,
    (sensor_type, sensor_id): (&Arc<str>, &Arc<str>),
    time: u64,
) -> Option<usize> {
    let ty = registry.get(sensor_type)?;
    let interval = ty.expected_interval.as_millis() as u64;
    let make = || {
        let quality =
            SensorQuality::new(spec.sensor(interval, ty.flat_line, ty.activity_field.clone()));
        Sensor {
            key: (sensor_type.clone(), sensor_id.clone()),
            grace_ms: quality.grace_ms(),
            interval_ms: interval,
            quality,
            area: None,
            window_ms: interval / 2,
            last_wall: 0,
            last_event: 0,
            last_seen: 0,
            scheduled: None,
        }
    };
    let slot = sensors.slot(sensor_type, sensor_id, make);
    let s = &mut sensors.all[slot];
    if s.last_seen > 0 && s.watched_until(spec.state_ttl_ms) < time {
        if let Some(old) = s.scheduled.take() {
            checks.remove(&(old, slot));
        }
        *s = make();
    }
    Some(slot)
}

/// Whether a reading at `t`, after one at `before`, tells the feed check that its sensor still
/// reports: with a TTL, once per quarter of it. The feed check hears of a sensor only when it
/// starts or comes back, and forgets one it has heard nothing of for the TTL.
fn keep_alive(ttl: Option<u64>, before: u64, t: u64) -> bool {
    ttl.is_some_and(|ttl| {
        let step = (ttl / 4).max(1);
        t / step > before / step
    })
}

/// Judges one input of one sensor at event time `t`.
fn judge(
    t: u64,
    item: Item,
    registry: &aqyl_core::ingest::decode::Registry,
    spec: &QualitySpec,
    sensors: &mut Sensors,
    checks: &mut BTreeSet<(u64, usize)>,
    out: &mut Vec<Assessed>,
) {
    let (sensor_type, sensor_id, area) = match &item {
        Item::Reading(o) => (o.sensor_type.clone(), &o.sensor_id, o.area.as_ref()),
        Item::Side(s) => {
            let (ty, id) = s.key();
            (ty.clone(), id, None)
        }
    };
    let Some(ty) = registry.get(&sensor_type) else {
        return; // a type removed by a reload
    };
    let Some(slot) = sensor_slot(
        sensors,
        checks,
        registry,
        spec,
        (&sensor_type, sensor_id),
        t,
    ) else {
        return;
    };
    let s = &mut sensors.all[slot];
    s.last_seen = s.last_seen.max(t);
    if let Some(area) = area {
        if s.area.as_ref() != Some(area) {
            s.area = Some(area.clone());
        }
    }
    let declared = ty.fields.len();
    let assessment = match &item {
        Item::Reading(o) => {
            if s.quality.is_repeat(t, &o.fields) {
                return; // a re-delivery says nothing new
            }
            let incorrect = if o.arrival.out_of_range > 0 {
                ty.out_of_range(&o.fields)
            } else {
                Vec::new()
            };
            let arrived = if spec.wall_clock {
                o.received_at.max(0) as u64
            } else {
                o.arrival.stream_time
            };
            let before = s.last_event;
            if o.event_time >= s.last_event {
                s.last_wall = o.arrival.ingested_at;
                s.last_event = o.event_time;
            }
            if s.quality.missing() || keep_alive(spec.state_ttl_ms, before, t) {
                // Back (or new): the feed check counts it as reporting from now on. Or a
                // keep-alive, so that the feed check does not forget it.
                out.push(Assessed::heard(s, t));
            }
            s.quality.judge(
                t,
                Input::Reading {
                    age_ms: arrived.saturating_sub(o.event_time),
                    // A message that came from no broker (a replay from a file) has
                    // no receive time.
                    latency_ms: latency(o.received_at, o.arrival.ingested_at),
                    fields: &o.fields,
                    required: ty.fields.iter().filter(|f| f.required).count(),
                    incorrect: &incorrect,
                },
            )
        }
        Item::Side(Side::Rejected {
            reason,
            detail,
            latency_ms,
            ..
        }) => s.quality.judge(
            t,
            Input::Rejected {
                reason: *reason,
                detail,
                declared,
                latency_ms: *latency_ms,
            },
        ),
        Item::Side(Side::Late {
            age_ms, latency_ms, ..
        }) => s.quality.judge(
            t,
            Input::Late {
                age_ms: *age_ms,
                latency_ms: *latency_ms,
            },
        ),
        Item::Side(Side::Incorrect(_)) => return, // filed as Item::Reading
    };
    out.push(Assessed::Scored(scored(s, assessment)));
    // Reschedule the event-time watchdog.
    if !spec.wall_clock {
        let next = s.quality.next_check();
        if next != s.scheduled {
            if let Some(old) = s.scheduled.take() {
                checks.remove(&(old, slot));
            }
            if let Some(next) = next {
                s.scheduled = Some(next);
                checks.insert((next, slot));
            }
        }
    }
}
