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
//!
//! Sensors come and go. With `pipeline.state_ttl` ([`QualitySpec::state_ttl_ms`]), a sensor
//! silent for longer than the TTL, in event time, is forgotten: at most every eighth of the
//! TTL, as its input frontier moves on (the watermark; live, it also follows the wall clock
//! when the input is idle), each operator releases what it keeps of every sensor whose newest
//! input (a reading, or a rejected or late message) is older than the frontier minus the TTL,
//! and its checkpoints no longer hold it (`TrackQuality` counts from the frontier less the
//! neighbour check's hold, as the reports it takes come that much later). `ScoreQuality`
//! drops the sensor's ratings, detectors and watchdog check; `TrackQuality` its alarm and
//! roll-ups; `FeedSilence` its membership of the feed, once its newest news (a reading, or a
//! watchdog failure) is that old: as the feed check hears of a sensor only when it starts
//! reporting or comes back, `ScoreQuality` tells it at least every quarter of the TTL that a
//! sensor still reports. `NeighbourCheck` needs no sweep: it lets go of a sensor's evidence
//! two and a half expected intervals after its newest assessment, whatever the TTL.
//!
//! A forgotten sensor's ongoing `quality` incident ends, as nothing else would ever end it:
//! `TrackQuality` sends its `end` (the start's incident id, dated when the sensor had been
//! silent for the TTL, no values; message "<type> sensor <id> quality incident ended: no
//! reading for <ttl>; the sensor is forgotten"). Its open hourly and daily roll-ups are given
//! out (closed) as they are, with the reports it sent: nothing it reported is lost. (Should it
//! come back before such an hour or day is over, that window gets a second roll-up with the
//! same end, which replaces the first in the store; with the default TTL of a day no hourly
//! roll-up is still open by then.) A forgotten sensor that reports again starts afresh, like a
//! new one. The TTL should be well past the watchdog's span (`long_window` expected
//! intervals): a sensor forgotten while its watchdog still counts is reported silent no more.
//! What is given out does not depend on when the sweeps run, nor on how far the frontier
//! leaps at once (a replay's may leap hours): the watchdog counts a sensor's failures only
//! up to its newest input plus the TTL, and an input that comes later than that finds the
//! sensor forgotten, in `ScoreQuality` and `TrackQuality`, whether or not a sweep has come by
//! since (its incident ends then, and it starts afresh). Without a TTL nothing is released.
//!
//! One operator per file: `ScoreQuality` (`score.rs`), the `keep` filter that splits its
//! assessments into readings and silences (`keep.rs`), `NeighbourCheck` (`neighbours.rs`),
//! `FeedSilence` (`feed.rs`), `TrackQuality` (`track.rs`) and `EmitQuality` ([`emit`],
//! `emit.rs`). This file holds what they share: the settings ([`QualitySpec`]), the records
//! that flow between them, and how they are wired (`judge_quality`).

mod emit;
mod feed;
pub(crate) mod keep;
mod neighbours;
mod score;
#[cfg(test)]
mod tests;
mod track;

pub use emit::emit;
pub use score::ScoreQuality;

use feed::feed_silence;
use keep::keep;
use neighbours::neighbour_check;
use track::track;

use crate::state::OperatorStates;
use aqyl_core::quality::{
    AlarmSettings, Assessment, QualityRecord, QualitySettings, SensorSettings,
};
use aqyl_core::{Event, Observation, Reason};
use std::collections::BTreeMap;
use std::sync::Arc;
use timely::container::CapacityContainerBuilder;
use timely::dataflow::operators::generic::OutputBuilderSession;
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
    /// What is kept of a sensor silent this long (event time, ms) is released
    /// (`pipeline.state_ttl`, set by the runtime); `None`: kept for ever.
    pub state_ttl_ms: Option<u64>,
}

impl QualitySpec {
    /// The settings of `[quality]`, for a pipeline that runs `live` (an idle timeout is set)
    /// or replays (which decides the `auto` clock). No TTL: the runtime sets `state_ttl_ms`
    /// from `pipeline.state_ttl`.
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
            state_ttl_ms: None,
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
        sensor_id: Arc<str>,
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
        sensor_id: Arc<str>,
        /// How old it was on arrival, ms.
        age_ms: u64,
        /// Processing delay inside Aqyl, ms (`None` for a message from no broker).
        latency_ms: Option<u64>,
    },
}

impl Side {
    fn key(&self) -> (&Arc<str>, &Arc<str>) {
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
    pub sensor_id: Arc<str>,
    /// Its area, when known.
    pub area: Option<Arc<str>>,
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
        sensor_id: Arc<str>,
        /// The reading's event time.
        time: u64,
    },
}

/// What leaves quality scoring.
#[derive(Debug, Clone)]
pub enum QualityOut {
    /// A report or a roll-up.
    Record(QualityRecord),
    /// A `quality` incident message.
    Event(Event),
}

/// Aqyl's own delay for a message received at `received_at` and handed on at `at` (wall
/// ms); `None` for a message that came from no broker (a replay from a file).
pub fn latency(received_at: i64, at: i64) -> Option<u64> {
    (received_at > 0).then(|| (at - received_at).max(0) as u64)
}

/// Runs `f` on the value for (sensor type, key) of a two-level map, made with
/// `V::default()` on first sight; finding an existing one allocates nothing.
fn with_nested<V: Default, R>(
    map: &mut BTreeMap<Arc<str>, BTreeMap<Arc<str>, V>>,
    ty: &Arc<str>,
    key: &Arc<str>,
    f: impl FnOnce(&mut V) -> R,
) -> R {
    // `Arc` clones allocate nothing.
    let inner = map.entry(ty.clone()).or_default();
    if let Some(v) = inner.get_mut(&**key) {
        return f(v);
    }
    f(inner.entry(key.clone()).or_default())
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
    let by_type = feed_silence(silences, spec.wall_clock, spec.state_ttl_ms, states);
    track(
        by_area,
        by_type,
        spec.alarm(),
        spec.wall_clock,
        spec.state_ttl_ms,
        states,
    )
}

/// When an operator releases what it keeps of sensors silent past `pipeline.state_ttl`: at
/// most every eighth of the TTL of event time, so it costs nothing per activation. Not part
/// of the checkpointed state: a restored operator sweeps at its first activation.
#[derive(Debug, Default)]
struct Sweep {
    /// The frontier at the last sweep.
    last: u64,
}

impl Sweep {
    /// With a TTL, at the input frontier `now`: whether to sweep, and if so the cutoff
    /// (`now - ttl`): a sensor whose newest input is older is forgotten.
    fn due(&mut self, ttl: Option<u64>, now: Option<u64>) -> Option<u64> {
        let (ttl, now) = (ttl?, now?);
        if now < ttl || now < self.last.saturating_add(ttl / 8) {
            return None;
        }
        self.last = now;
        Some(now - ttl)
    }
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
