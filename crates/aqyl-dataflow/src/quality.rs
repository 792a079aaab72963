//! Quality of Information in the dataflow: `ScoreQuality` rates every sensor stream,
//! `NeighbourCheck` checks sudden shifts against the sensor's neighbours, `FeedSilence` checks
//! each silence against the other sensors of the type (a feed outage or a silent sensor), and
//! `TrackQuality` scores, raises `quality` incidents (with hysteresis: a score low, or good
//! again, for more than `alert_after` expected intervals) and rolls reports up by hour and
//! day.
//!
//! `ScoreQuality` is exchanged by sensor and takes each sensor's input in event-time order
//! (readings, readings kept out of the aggregates for failing correctness, rejected and late
//! messages), as the rules do, so its verdicts do not depend on arrival order or on the number
//! of workers. Its watchdog counts a missed reading when a sensor has been silent for 1.05 ×
//! its expected interval: in event time (as the frontier passes) for replays, where the wall
//! clock says nothing about the data, and by the wall clock when running live, where event
//! time only moves when data (or the idle timeout) moves it and a silent city must still be
//! noticed; live, a reading proves its sensor alive when it arrives, not when the watermark
//! lets it be judged. `NeighbourCheck` is exchanged by (sensor type, area) and holds each
//! assessment until the frontier has passed it by half an expected interval, so that the
//! neighbours' readings around the same time are in. `FeedSilence` is exchanged by sensor type
//! and sees only watchdog failures and each sensor's first reading after a silence; in a
//! replay it judges a failure once the frontier has passed it, live it judges at once, so a
//! silence reaches the output within a second of the watchdog's tick whatever the neighbour
//! check is waiting for. `TrackQuality` is exchanged by sensor, so one sensor's assessments
//! always meet the same alarm and roll-ups.
//!
//! In event time, the two checks send each assessment at the logical time it became final
//! (its time, plus the neighbour check's hold), never earlier, so `TrackQuality` takes one
//! sensor's assessments in their order whichever check they came through. Live, a silence
//! overtakes a reading still held for its neighbour verdict: the alarm hears of the silence
//! first, which is the point.
//!
//! Every operator keeps what it has between activations in a state registered in
//! [`OperatorStates`] (`quality/sensor`, `quality/area`, `quality/type`, `quality/alerts`), so a
//! checkpoint holds ratings, open incidents, roll-ups and whatever waits for the frontier. Each
//! holds one capability that follows its input frontier: restored, it starts from the initial
//! one and moves it up at its first activation (nothing restored is ready before then).

use crate::state::OperatorStates;
use aqyl_core::quality::{
    Alarm, AlarmSettings, Assessment, Feed, Input, Neighbourhood, QualityRecord, QualityReport,
    QualitySettings, Rollups, SensorQuality, SensorSettings,
};
use aqyl_core::{Event, Observation, Reason};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;
use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::{Exchange, Pipeline};
use timely::dataflow::operators::generic::{Operator, OutputBuilderSession};
use timely::dataflow::operators::Capability;
use timely::dataflow::StreamVec;

/// Quality settings of a pipeline (`[quality]`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct QualitySpec {
    /// A score below this for more than `alert_after` starts a `quality` incident.
    pub threshold: f64,
    /// The incident ends once the score has stayed at or above `threshold + recover_margin`
    /// for more than `alert_after`.
    pub recover_margin: f64,
    /// How long (in expected intervals) a score must stay low to start an incident, or good
    /// to end one; 0: at once.
    pub alert_after: f64,
    /// Processing delay inside Aqyl above which latency fails, ms.
    pub max_latency_ms: u64,
    /// Rating window of frequency and correctness.
    pub long_window: usize,
    /// Rating window of age, latency and completeness.
    pub short_window: usize,
    /// Identical readings in a row that count as stuck.
    pub flat_line: usize,
    /// Readings of history for the spike detector.
    pub spike_window: usize,
    /// Robust z-score beyond which a value is a spike.
    pub spike_threshold: f64,
    /// Readings failing correctness stay out of aggregates and rules.
    pub exclude_incorrect: bool,
    /// The watchdog and the age metric follow the wall clock (live) instead of event time.
    pub wall_clock: bool,
}

impl QualitySpec {
    /// The settings of `[quality]`, for a pipeline that runs `live` (an idle timeout is set)
    /// or replays (which decides the `auto` clock).
    pub fn from_config(q: &aqyl_core::config::QualityConfig, live: bool) -> Self {
        Self {
            threshold: q.threshold,
            recover_margin: q.recover_margin,
            alert_after: q.alert_after,
            max_latency_ms: q.max_latency.as_millis() as u64,
            long_window: q.long_window,
            short_window: q.short_window,
            flat_line: q.flat_line,
            spike_window: q.spike_window,
            spike_threshold: q.spike_threshold,
            exclude_incorrect: q.exclude_incorrect,
            wall_clock: q.wall_clock(live),
        }
    }

    /// When incidents start and end.
    pub fn alarm(&self) -> AlarmSettings {
        AlarmSettings {
            threshold: self.threshold,
            recover_margin: self.recover_margin,
            alert_after: self.alert_after,
        }
    }

    fn sensor(
        &self,
        expected_interval_ms: u64,
        flat_line: Option<usize>,
        activity: Option<Arc<str>>,
    ) -> SensorSettings {
        SensorSettings {
            metrics: QualitySettings {
                expected_interval_ms: expected_interval_ms.max(1),
                max_latency_ms: self.max_latency_ms,
                long_window: self.long_window,
                short_window: self.short_window,
            },
            flat_line: flat_line.unwrap_or(self.flat_line),
            activity,
            spike_window: self.spike_window,
            spike_threshold: self.spike_threshold,
        }
    }
}

/// Input only quality scoring sees, sent at the worker's input time.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub enum Side {
    /// A reading kept out of aggregates and rules because a value is outside its range.
    Incorrect(Observation),
    /// A message of a known sensor that could not be decoded.
    Rejected {
        /// Event time it is filed under: the worker's watermark when it arrived (an unusable
        /// message has no event time to trust).
        at: u64,
        /// Sensor type.
        sensor_type: Arc<str>,
        /// Sensor id (from the topic).
        sensor_id: String,
        /// Why.
        reason: Reason,
        /// What was wrong.
        detail: String,
        /// Processing delay inside Aqyl, ms (`None` for a message from no broker).
        latency_ms: Option<u64>,
    },
    /// A reading that came after its window closed.
    Late {
        /// Event time it is filed under: the worker's watermark when it arrived.
        at: u64,
        /// Sensor type.
        sensor_type: Arc<str>,
        /// Sensor id.
        sensor_id: String,
        /// How old it was on arrival, ms.
        age_ms: u64,
        /// Processing delay inside Aqyl, ms (`None` for a message from no broker).
        latency_ms: Option<u64>,
    },
}

impl Side {
    fn key(&self) -> (&str, &str) {
        match self {
            Side::Incorrect(o) => (&o.sensor_type, &o.sensor_id),
            Side::Rejected {
                sensor_type,
                sensor_id,
                ..
            }
            | Side::Late {
                sensor_type,
                sensor_id,
                ..
            } => (sensor_type, sensor_id),
        }
    }
}

/// One sensor's assessment, on its way to the neighbour check.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Scored {
    /// Sensor type.
    pub sensor_type: Arc<str>,
    /// Sensor id.
    pub sensor_id: String,
    /// Its area, when known.
    pub area: Option<String>,
    /// How near in time a neighbour's reading must be (half the expected interval), ms.
    pub window_ms: u64,
    /// The sensor type's expected interval, ms.
    pub interval_ms: u64,
    /// The watchdog's period (1.05 expected intervals), ms.
    pub grace_ms: u64,
    /// The verdict.
    pub assessment: Assessment,
}

/// What leaves `ScoreQuality`: assessments, and the news that a sensor reports (again) for
/// the feed check.
// Nearly every item is a `Scored`: boxing it would allocate once per reading to shrink the
// rare `Heard`.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub enum Assessed {
    /// An assessment.
    Scored(Scored),
    /// A sensor's first reading, or its first after the watchdog counted it silent.
    Heard {
        /// Sensor type.
        sensor_type: Arc<str>,
        /// Sensor id.
        sensor_id: String,
        /// The reading's event time.
        time: u64,
    },
}

impl Assessed {
    fn heard(s: &Sensor, time: u64) -> Self {
        Assessed::Heard {
            sensor_type: s.key.0.clone(),
            sensor_id: s.key.1.clone(),
            time,
        }
    }
}

/// What leaves quality scoring.
#[derive(Debug, Clone)]
pub enum QualityOut {
    /// A report or a roll-up.
    Record(QualityRecord),
    /// A `quality` incident message.
    Event(Event),
}

/// An input item of one sensor, in the order buffer.
#[derive(Serialize, Deserialize)]
enum Item {
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
struct Sensor {
    key: Key,
    quality: SensorQuality,
    area: Option<String>,
    /// From its type's descriptor (refreshed, with the settings of `quality`, on restore).
    window_ms: u64,
    interval_ms: u64,
    grace_ms: u64,
    /// Wall-clock arrival (Unix ms) and event time of the latest reading (wall-clock
    /// watchdog).
    last_wall: i64,
    last_event: u64,
    /// The event-time watchdog's scheduled check.
    scheduled: Option<u64>,
}

type Key = (Arc<str>, String);

/// The sensors one worker scores, found by (type, id) without allocating.
#[derive(Default, Serialize, Deserialize)]
struct Sensors {
    /// Rebuilt from `all` on restore.
    #[serde(skip)]
    index: HashMap<Arc<str>, HashMap<String, usize>>,
    all: Vec<Sensor>,
}

/// What `ScoreQuality` keeps between activations (and in checkpoints): `quality/sensor`.
#[derive(Default, Serialize, Deserialize)]
struct ScoreState {
    /// Input waiting for the frontier, by the event time it is judged at.
    pending: BTreeMap<u64, Vec<Item>>,
    sensors: Sensors,
    /// Event-time watchdog: (check time, sensor slot), one per sensor with a `scheduled`
    /// check (rebuilt from them on restore).
    #[serde(skip)]
    checks: BTreeSet<(u64, usize)>,
}

impl ScoreState {
    /// After a restore: rebuilds what is derived from the sensors (their index, the watchdog's
    /// schedule) and brings each sensor's settings up to date with the current `[quality]`
    /// settings and descriptors (a type no longer configured keeps its own).
    fn restored(&mut self, registry: &aqyl_core::decode::Registry, spec: &QualitySpec) {
        let Sensors { index, all } = &mut self.sensors;
        index.clear();
        self.checks.clear();
        for (slot, s) in all.iter_mut().enumerate() {
            index
                .entry(s.key.0.clone())
                .or_default()
                .insert(s.key.1.clone(), slot);
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
                if let Some(next) = s.scheduled {
                    self.checks.insert((next, slot));
                }
            }
        }
    }
}

impl Sensors {
    /// The sensor's slot, made by `make` on first sight.
    fn slot(&mut self, ty: &Arc<str>, id: &str, make: impl FnOnce() -> Sensor) -> usize {
        if let Some(&i) = self.index.get(&**ty).and_then(|m| m.get(id)) {
            return i;
        }
        let i = self.all.len();
        self.all.push(make());
        self.index
            .entry(ty.clone())
            .or_default()
            .insert(id.to_string(), i);
        i
    }
}

/// Quality scoring of sensor streams.
pub trait ScoreQuality<'scope> {
    /// Rates each sensor's readings (this stream: the readings that pass into aggregates
    /// and rules) together with `side` (readings kept out, rejected and late messages). Its
    /// operators' states are registered in `states` as `quality/sensor`, `quality/area`,
    /// `quality/type` and `quality/alerts`.
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
                                        &registry,
                                        &spec,
                                        &obs.sensor_type,
                                        &obs.sensor_id,
                                    ) {
                                        let s = &mut sensors.all[slot];
                                        if s.quality.missing() {
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
                        while let Some((t, mut items)) = crate::ordered::pop_ready(pending, now) {
                            if !spec.wall_clock {
                                fire_checks(t, checks, sensors, &mut out);
                            }
                            items.sort_by(|a, b| a.order().cmp(&b.order()));
                            for item in items {
                                judge(t, item, &registry, &spec, sensors, checks, &mut out);
                            }
                        }
                        if spec.wall_clock {
                            let wall = wall_ms();
                            for s in sensors.all.iter_mut() {
                                // The sensor's own event clock, advanced by the wall clock.
                                let elapsed = (wall - s.last_wall).max(0) as u64;
                                let event_now = s.last_event.saturating_add(elapsed);
                                while let Some(a) = s.quality.watchdog(event_now) {
                                    out.push(Assessed::Scored(scored(s, a)));
                                }
                            }
                            if now.is_some() && !sensors.all.is_empty() {
                                activator.activate_after(Duration::from_secs(1));
                            }
                        } else if let Some(n) = now {
                            fire_checks(n, checks, sensors, &mut out);
                        }
                        crate::ordered::emit_and_follow(&mut cap, now, out, output);
                    }
                },
            );
        judge_quality(scored, spec, states)
    }
}

/// Aqyl's own delay for a message received at `received_at` and handed on at `at` (wall
/// ms); `None` for a message that came from no broker (a replay from a file).
pub fn latency(received_at: i64, at: i64) -> Option<u64> {
    (received_at > 0).then(|| (at - received_at).max(0) as u64)
}

use crate::wall_ms;

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

/// Runs the event-time watchdog of every sensor due before `until`.
fn fire_checks(
    until: u64,
    checks: &mut BTreeSet<(u64, usize)>,
    sensors: &mut Sensors,
    out: &mut Vec<Assessed>,
) {
    while let Some(first) = checks.first() {
        if first.0 >= until {
            break;
        }
        let Some((at, slot)) = checks.pop_first() else {
            break;
        };
        let Some(s) = sensors.all.get_mut(slot) else {
            continue;
        };
        s.scheduled = None;
        if let Some(a) = s.quality.watchdog(at) {
            out.push(Assessed::Scored(scored(s, a)));
        }
        if let Some(next) = s.quality.next_check() {
            s.scheduled = Some(next);
            checks.insert((next, slot));
        }
    }
}

/// The sensor's slot, made on first sight (`None` for a type no longer configured).
fn sensor_slot(
    sensors: &mut Sensors,
    registry: &aqyl_core::decode::Registry,
    spec: &QualitySpec,
    sensor_type: &Arc<str>,
    sensor_id: &str,
) -> Option<usize> {
    let ty = registry.get(sensor_type)?;
    let interval = ty.expected_interval.as_millis() as u64;
    Some(sensors.slot(sensor_type, sensor_id, || {
        let quality =
            SensorQuality::new(spec.sensor(interval, ty.flat_line, ty.activity_field.clone()));
        Sensor {
            key: (sensor_type.clone(), sensor_id.to_string()),
            grace_ms: quality.grace_ms(),
            interval_ms: interval,
            quality,
            area: None,
            window_ms: interval / 2,
            last_wall: 0,
            last_event: 0,
            scheduled: None,
        }
    }))
}

/// Judges one input of one sensor at event time `t`.
fn judge(
    t: u64,
    item: Item,
    registry: &aqyl_core::decode::Registry,
    spec: &QualitySpec,
    sensors: &mut Sensors,
    checks: &mut BTreeSet<(u64, usize)>,
    out: &mut Vec<Assessed>,
) {
    let (sensor_type, sensor_id, area) = match &item {
        Item::Reading(o) => (o.sensor_type.clone(), o.sensor_id.as_str(), o.area.as_ref()),
        Item::Side(s) => {
            let (ty, id) = s.key();
            (Arc::from(ty), id, None)
        }
    };
    let Some(ty) = registry.get(&sensor_type) else {
        return; // a type removed by a reload
    };
    let Some(slot) = sensor_slot(sensors, registry, spec, &sensor_type, sensor_id) else {
        return;
    };
    let s = &mut sensors.all[slot];
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
            if o.event_time >= s.last_event {
                s.last_wall = o.arrival.ingested_at;
                s.last_event = o.event_time;
            }
            if s.quality.missing() {
                // Back (or new): the feed check counts it as reporting from now on.
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

/// Runs `f` on the value for (sensor type, key) of a two-level map, made with
/// `V::default()` on first sight; finding an existing one allocates nothing.
fn with_nested<V: Default, R>(
    map: &mut BTreeMap<Arc<str>, BTreeMap<String, V>>,
    ty: &Arc<str>,
    key: &str,
    f: impl FnOnce(&mut V) -> R,
) -> R {
    // An `Arc` clone allocates nothing; only a new key is copied.
    let inner = map.entry(ty.clone()).or_default();
    if let Some(v) = inner.get_mut(key) {
        return f(v);
    }
    f(inner.entry(key.to_string()).or_default())
}

/// The neighbour check (by area) of readings and the feed check (by type) of silences, then
/// the score, `quality` incidents and roll-ups (by sensor, so that all of one sensor's
/// assessments meet, whichever way they came).
fn judge_quality<'scope>(
    assessed: StreamVec<'scope, u64, Assessed>,
    spec: QualitySpec,
    states: &OperatorStates,
) -> StreamVec<'scope, u64, QualityOut> {
    let reading = |a: &Assessed| matches!(a, Assessed::Scored(s) if !s.assessment.findings.silent);
    let readings = keep(assessed.clone(), states, "Readings", reading);
    let silences = keep(assessed, states, "Silences", move |a| !reading(a));
    let by_area = neighbour_check(readings, spec.spike_threshold, states);
    let by_type = feed_silence(silences, spec.wall_clock, states);
    track(by_area, by_type, spec.alarm(), spec.wall_clock, states)
}

/// The records of `stream` for which `predicate` holds (timely's `filter`, through a counted
/// channel).
fn keep<'scope, D: Clone + 'static>(
    stream: StreamVec<'scope, u64, D>,
    states: &OperatorStates,
    name: &str,
    predicate: impl Fn(&D) -> bool + 'static,
) -> StreamVec<'scope, u64, D> {
    stream.unary(states.counted(Pipeline), name, move |_, _| {
        move |input, output| {
            input.for_each(|cap, data| {
                data.retain(&predicate);
                if !data.is_empty() {
                    output.session(&cap).give_container(data);
                }
            });
        }
    })
}

/// Gives each item at its logical time (at least the held capability's), then moves the
/// capability up to the input frontier `now`, or drops it once the input has ended.
fn emit_at<T: Clone + 'static>(
    cap: &mut Option<Capability<u64>>,
    now: Option<u64>,
    mut out: Vec<(u64, T)>,
    output: &mut OutputBuilderSession<'_, u64, CapacityContainerBuilder<Vec<T>>>,
) {
    if let Some(held) = cap.as_ref() {
        let base = *held.time();
        out.sort_by_key(|(t, _)| (*t).max(base));
        let mut items = out.into_iter().peekable();
        while let Some((t, first)) = items.next() {
            let at = t.max(base);
            let mut batch = vec![first];
            while let Some((_, item)) = items.next_if(|(t, _)| (*t).max(base) == at) {
                batch.push(item);
            }
            output
                .session(&held.delayed(&at))
                .give_iterator(batch.into_iter());
        }
    }
    crate::ordered::emit_and_follow(cap, now, Vec::new(), output);
}

/// One area's sensors of one type in the neighbour check: their neighbourhood, and the type's
/// neighbour window, expected interval and watchdog period (ms).
type Hood = (Neighbourhood, u64, u64, u64);

/// What `NeighbourCheck` keeps between activations (and in checkpoints): `quality/area`.
#[derive(Default, Serialize, Deserialize)]
struct AreaState {
    /// Type → area → the assessments held for their neighbours.
    hoods: BTreeMap<Arc<str>, BTreeMap<String, Hood>>,
}

/// Holds each assessment of a sensor with an area until its neighbours' readings around the
/// same time are in, and settles its neighbour verdict; the others pass straight through.
fn neighbour_check<'scope>(
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
                        let Some(area) = s.area.as_deref() else {
                            out.push((s.assessment.time, s));
                            continue;
                        };
                        with_nested(hoods, &s.sensor_type, area, |entry| {
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

/// How far (in watchdog periods) before the oldest failure still to judge the feed check
/// forgets the news: [`Feed::forget_before`] keeps what any later verdict needs, this is a
/// margin.
const FORGET_AFTER: u64 = 2;

/// What `FeedSilence` keeps between activations (and in checkpoints): `quality/type`.
#[derive(Default, Serialize, Deserialize)]
struct FeedState {
    /// Per sensor type: who reports and who is silent.
    feeds: BTreeMap<Arc<str>, Feed>,
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
fn feed_silence<'scope>(
    assessed: StreamVec<'scope, u64, Assessed>,
    wall_clock: bool,
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
                emit_at(&mut cap, now, out, output);
            }
        },
    )
}

/// One assessment of one sensor: its report, the alarm and the roll-ups.
fn track_one(
    s: Scored,
    trackers: &mut BTreeMap<Arc<str>, BTreeMap<String, (Alarm, Rollups)>>,
    alarm: &AlarmSettings,
    out: &mut Vec<QualityOut>,
) {
    let interval = s.interval_ms;
    let report = QualityReport::new(s.sensor_type, s.sensor_id, s.area, s.assessment);
    let (ty, id) = (&report.sensor_type, report.sensor_id.as_str());
    with_nested(trackers, ty, id, |(a, rollups)| {
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

/// What `TrackQuality` keeps between activations (and in checkpoints): `quality/alerts`.
#[derive(Default, Serialize, Deserialize)]
struct AlertState {
    /// Type → sensor → (threshold alarm, roll-ups).
    trackers: BTreeMap<Arc<str>, BTreeMap<String, (Alarm, Rollups)>>,
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
/// comes (the alarm must not wait for the watermark).
fn track<'scope>(
    by_area: StreamVec<'scope, u64, Scored>,
    by_type: StreamVec<'scope, u64, Scored>,
    alarm: AlarmSettings,
    wall_clock: bool,
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
                    track_one(s, trackers, &alarm, &mut out);
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
                        track_one(s, trackers, &alarm, &mut out);
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
                crate::ordered::emit_and_follow(&mut cap, now, out, output);
            }
        },
    )
}

/// Emits quality records (one batch per activation, waiting while the channel is full, so a
/// slow sink holds the workers back instead of filling memory) and incidents. Keeps nothing
/// between activations; its input is counted in `states`.
pub fn emit<'scope>(
    stream: StreamVec<'scope, u64, QualityOut>,
    records: tokio::sync::mpsc::Sender<Vec<QualityRecord>>,
    events: tokio::sync::mpsc::UnboundedSender<Event>,
    states: &OperatorStates,
    delivery: std::sync::Arc<aqyl_core::metrics::Metrics>,
) {
    use aqyl_core::metrics::Output;
    stream.sink(
        states.counted(Pipeline),
        "EmitQuality",
        move |(input, _)| {
            let mut batch = Vec::new();
            input.for_each(|_cap, data| {
                for q in data.drain(..) {
                    match q {
                        QualityOut::Record(r) => batch.push(r),
                        QualityOut::Event(e) => {
                            delivery.delivery.sent(Output::Events, 1);
                            if events.send(e).is_err() {
                                // Shutdown was forced; nothing can take it any more.
                                delivery.delivery.done(Output::Events, 1);
                            }
                        }
                    }
                }
            });
            if !batch.is_empty() {
                let n = batch.len() as u64;
                delivery.delivery.sent(Output::Quality, n);
                // Timely workers are plain threads, never a runtime's: blocking is allowed.
                if records.blocking_send(batch).is_err() {
                    delivery.delivery.done(Output::Quality, n);
                }
            }
        },
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use aqyl_core::decode::Registry;
    use aqyl_core::descriptor::SensorType;
    use aqyl_core::EventState;
    use std::sync::atomic::AtomicI64;
    use timely::dataflow::operators::Probe;
    use timely::dataflow::{InputHandleVec, ProbeHandle};

    const DESCRIPTOR: &str = r#"
name = "traffic"
area_field = "/area"
expected_interval = "5m"
[time]
field = "/ts"
format = "epoch_ms"
[[fields]]
name = "avgSpeed"
min = 0
max = 250
[[fields]]
name = "vehicleCount"
min = 0
"#;

    const T0: u64 = 1_406_851_200_000; // 2014-08-01T00:00:00Z
    const MIN: u64 = 60_000;
    /// The input time (the watermark) trails the newest event time by this much.
    const LATENESS: u64 = 9 * MIN;

    fn registry() -> crate::SharedRegistry {
        let ty = SensorType::from_toml(std::path::Path::new("traffic.toml"), DESCRIPTOR).unwrap();
        crate::shared(Registry::new(vec![ty]))
    }

    fn spec() -> QualitySpec {
        QualitySpec::from_config(&Default::default(), false)
    }

    /// One batch of input: sent at input time `at`, after which the input moves to `then`.
    #[derive(Clone)]
    struct Batch {
        at: u64,
        readings: Vec<Observation>,
        side: Vec<Side>,
        then: u64,
    }

    /// Five hours of four sensors reporting every 5 minutes: s0, s1 and s2 in one area, s3 in
    /// none. All three of the area crawl from minute 120 to 180 (shifts the neighbours share);
    /// s2 is stuck from minute 60 to 170 (a `quality` incident); s1 is silent from minute 100
    /// to 140 (another, from its watchdog); s0 sends out-of-range readings and s3 rejected and
    /// late messages.
    fn stream(registry: &crate::SharedRegistry) -> Vec<Batch> {
        let types = registry.load();
        let ty = types.get("traffic").unwrap();
        let mut rng = fastrand::Rng::with_seed(7);
        let mut batches = Vec::new();
        let mut at = 0;
        for m in (0..=300u64).step_by(5) {
            let time = T0 + m * MIN;
            let mut batch = Batch {
                at,
                readings: Vec::new(),
                side: Vec::new(),
                then: time - LATENESS,
            };
            for id in ["s0", "s1", "s2", "s3"] {
                if id == "s1" && (100..=140).contains(&m) {
                    continue;
                }
                let mut speed = 55.0 + rng.f64() * 10.0;
                let mut count = 10.0 + rng.u32(0..10) as f64;
                if id != "s3" && (120..180).contains(&m) {
                    speed = 15.0 + rng.f64() * 10.0;
                }
                if id == "s2" && (60..=170).contains(&m) {
                    (speed, count) = (42.0, 7.0);
                }
                if id == "s0" && (m == 50 || m == 135) {
                    speed = -5.0;
                }
                let fields: Vec<(Arc<str>, f64)> =
                    vec![("avgSpeed".into(), speed), ("vehicleCount".into(), count)];
                let obs = Observation {
                    sensor_type: "traffic".into(),
                    sensor_id: id.into(),
                    area: (id != "s3").then(|| "north".to_string()),
                    event_time: time,
                    received_at: 0,
                    time_from_receive: false,
                    location: None,
                    arrival: aqyl_core::Arrival {
                        ingested_at: 0,
                        stream_time: time,
                        out_of_range: ty.out_of_range_count(&fields) as u16,
                    },
                    fields,
                };
                if obs.arrival.out_of_range > 0 {
                    batch.side.push(Side::Incorrect(obs));
                } else {
                    batch.readings.push(obs);
                }
            }
            if m == 125 || m == 200 {
                batch.side.push(Side::Rejected {
                    at,
                    sensor_type: "traffic".into(),
                    sensor_id: "s3".into(),
                    reason: Reason::MissingField,
                    detail: "field vehicleCount is missing".into(),
                    latency_ms: None,
                });
            }
            if m == 140 || m == 210 {
                batch.side.push(Side::Late {
                    at,
                    sensor_type: "traffic".into(),
                    sensor_id: "s3".into(),
                    age_ms: 30 * MIN,
                    latency_ms: None,
                });
            }
            at = batch.then;
            batches.push(batch);
        }
        batches
    }

    /// A checkpoint: the input time reached, and the operator states by name.
    type Checkpoint = (u64, Vec<(String, Vec<u8>)>);

    /// What one run gave out, and the operator states taken at its end.
    struct Run {
        records: Vec<QualityRecord>,
        events: Vec<Event>,
        taken: Vec<(String, Vec<u8>)>,
    }

    /// Drives `score_quality` through `batches`, stepping until quiet after each; starts from
    /// a checkpoint `(time it had reached, states)` if given; ends the input if `close`, else
    /// takes the states (a checkpoint).
    fn drive(batches: Vec<Batch>, from: Option<Checkpoint>, close: bool) -> Run {
        let registry = registry();
        let (records_tx, mut records_rx) = tokio::sync::mpsc::channel(1 << 20);
        let (events_tx, mut events_rx) = tokio::sync::mpsc::unbounded_channel();
        let taken = timely::execute_directly(move |worker| {
            let in_flight = Arc::new(AtomicI64::new(0));
            let (states, start) = match from {
                Some((time, taken)) => (
                    OperatorStates::restored(in_flight, taken.into_iter().collect()),
                    time,
                ),
                None => (OperatorStates::new(in_flight), 0),
            };
            let mut readings = InputHandleVec::<u64, Observation>::new();
            let mut side = InputHandleVec::<u64, Side>::new();
            let probe = ProbeHandle::new();
            let dataflow = worker.next_dataflow_index();
            worker.dataflow::<u64, _, _>(|scope| {
                let scored = readings
                    .to_stream(scope)
                    .score_quality(side.to_stream(scope), registry, spec(), &states)
                    .probe_with(&probe);
                emit(scored, records_tx, events_tx, &states, Default::default());
            });
            assert_eq!(states.finish_restore(), Ok(()));
            readings.advance_to(start);
            side.advance_to(start);
            for batch in batches {
                assert_eq!(*readings.time(), batch.at);
                for r in batch.readings {
                    readings.send(r);
                }
                for s in batch.side {
                    side.send(s);
                }
                readings.advance_to(batch.then);
                side.advance_to(batch.then);
                while probe.less_than(readings.time()) || states.in_flight() != 0 {
                    worker.step();
                }
            }
            if close {
                readings.close();
                side.close();
                while !probe.done() {
                    worker.step();
                }
                Vec::new()
            } else {
                assert_eq!(states.in_flight(), 0, "quiet at the checkpoint");
                let taken = states.take().unwrap();
                // Stopped here, as by a crash: nothing more comes out of this run.
                worker.drop_dataflow(dataflow);
                taken
            }
        });
        let mut records = Vec::new();
        while let Ok(batch) = records_rx.try_recv() {
            records.extend(batch);
        }
        let mut events = Vec::new();
        while let Ok(e) = events_rx.try_recv() {
            events.push(e);
        }
        Run {
            records,
            events,
            taken,
        }
    }

    /// In a canonical order (emission order may depend on how activations fall).
    fn sorted<T: std::fmt::Debug>(mut list: Vec<T>) -> Vec<T> {
        list.sort_by_cached_key(|x| format!("{x:?}"));
        list
    }

    fn starts_and_ends(events: &[Event], sensor: &str) -> Vec<EventState> {
        events
            .iter()
            .filter(|e| e.subject == sensor)
            .map(|e| e.state)
            .collect()
    }

    #[test]
    fn a_checkpoint_in_the_middle_changes_no_quality_output() {
        let batches = stream(&registry());
        // The cut: after the batch of minute 140, the input time is minute 131.
        let cut = batches
            .iter()
            .position(|b| b.then == T0 + 131 * MIN)
            .unwrap()
            + 1;
        let whole = drive(batches.clone(), None, true);
        let first = drive(batches[..cut].to_vec(), None, false);
        let reached = batches[cut].at;

        // State is open at the cut: incidents started and not ended, readings waiting for the
        // watermark, assessments waiting for their neighbours, watchdog checks to come.
        let by_name: HashMap<String, Vec<u8>> = first.taken.iter().cloned().collect();
        assert_eq!(
            first
                .taken
                .iter()
                .map(|(n, _)| n.as_str())
                .collect::<Vec<_>>(),
            [
                "quality/sensor",
                "quality/area",
                "quality/type",
                "quality/alerts"
            ]
        );
        let score: ScoreState = crate::state::decode(&by_name["quality/sensor"]).unwrap();
        assert!(
            score.pending.keys().any(|t| *t >= reached),
            "readings wait for the watermark"
        );
        assert_eq!(score.sensors.all.len(), 4);
        assert!(score.sensors.all.iter().any(|s| s.scheduled.is_some()));
        let mut area: AreaState = crate::state::decode(&by_name["quality/area"]).unwrap();
        let (hood, window, ..) = area
            .hoods
            .get_mut("traffic")
            .unwrap()
            .get_mut("north")
            .unwrap();
        let held = hood.ready(None, *window, spec().spike_threshold);
        assert!(
            held.iter().any(|(_, a)| a.time + *window >= reached),
            "assessments wait for their neighbours"
        );
        let alerts: AlertState = crate::state::decode(&by_name["quality/alerts"]).unwrap();
        for id in ["s1", "s2"] {
            let (alarm, rollups) = &alerts.trackers["traffic"][id];
            assert!(alarm.is_active() && !rollups.is_empty(), "{id}");
            assert_eq!(starts_and_ends(&first.events, id), [EventState::Start]);
        }

        let second = drive(batches[cut..].to_vec(), Some((reached, first.taken)), true);
        for id in ["s1", "s2"] {
            assert_eq!(starts_and_ends(&second.events, id), [EventState::End]);
            assert_eq!(
                starts_and_ends(&whole.events, id),
                [EventState::Start, EventState::End]
            );
        }
        let mut records = first.records;
        records.extend(second.records);
        let mut events = first.events;
        events.extend(second.events);
        assert_eq!(records.len(), whole.records.len());
        assert_eq!(sorted(records), sorted(whole.records));
        assert_eq!(sorted(events), sorted(whole.events));
    }
}
