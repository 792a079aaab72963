//! A worker's ingest: decoding its share of messages, dropping duplicates, dead-lettering
//! what cannot be used, keeping the watermark, and feeding the dataflow.

use crate::feed::Feed;
use crate::input::{Logged, Source};
use crate::quality::Side;
use crate::readings::Readings;
use crate::runtime::{Outputs, PipelineSpec};
use crate::wall_ms;
use aqyl_core::ingest::decode::Registry;
use aqyl_core::ingest::dedup::Dedup;
use aqyl_core::metrics::{Metrics, Output};
use aqyl_core::windows::watermark::Watermark;
use aqyl_core::{DeadLetter, Observation, RawMessage, Reason};
use serde::{Deserialize, Serialize};
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

/// What a worker's ingest keeps (and checkpoints).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct IngestState {
    /// The worker's watermark.
    pub watermark: Watermark,
    /// Recent readings, to drop duplicates.
    pub dedup: Dedup,
    /// The largest ingest-log sequence number this worker has taken (0: none).
    pub covered: u64,
}

impl IngestState {
    /// A fresh worker's ingest.
    pub fn new(spec: &PipelineSpec) -> Self {
        Self {
            watermark: Watermark::new(
                spec.allowed_lateness.as_millis() as u64,
                spec.idle_timeout.map(|d| d.as_millis() as u64),
            ),
            dedup: Dedup::default(),
            covered: 0,
        }
    }
}

/// Where a worker's ingest sends what it takes.
pub struct Sides<'a> {
    /// Readings, for the operators that use them.
    pub input: &'a mut Readings,
    /// Input only quality scoring sees.
    pub side: &'a mut Feed<Side>,
    /// The dataflow's outputs (dead letters).
    pub outputs: &'a Outputs,
    /// Counters.
    pub metrics: &'a Metrics,
    /// The largest event time any worker has seen.
    pub shared_max: &'a AtomicU64,
    /// Readings let in since the batch began, added to `metrics.observations` once per
    /// batch (a counter every worker writes is a cache line they pass around).
    pub observations: u64,
    /// Readings let in since the batch began, for [`Outputs::readings`] (kept only when it
    /// is set).
    pub seen: Vec<Observation>,
}

/// Takes one message: decodes it and sends each reading on, or dead-letters it.
pub fn take(
    state: &mut IngestState,
    logged: Logged,
    registry: &Registry,
    spec: &PipelineSpec,
    to: &mut Sides<'_>,
    decoded: &mut Vec<Observation>,
) {
    let Logged { seq, msg } = logged;
    state.covered = state.covered.max(seq);
    let now = wall_ms();
    let tick = crate::runtime::mono_ms();
    decoded.clear();
    if let Err(rejection) = registry.decode_into(&msg, spec.max_payload_bytes, decoded) {
        to.metrics.reject(rejection.reason);
        dead_letter(to, rejection.dead_letter(&msg));
        // A known sensor's unusable message counts against its quality.
        if let (Some(_), Some(ty), Some(id)) = (
            spec.quality,
            rejection
                .sensor_type
                .as_deref()
                .and_then(|t| registry.get(t)),
            rejection.sensor_id,
        ) {
            to.side.send(Side::Rejected {
                at: state.watermark.current(tick),
                sensor_type: ty.name.clone(),
                sensor_id: id.into(),
                reason: rejection.reason,
                detail: rejection.detail,
                latency_ms: crate::quality::latency(msg.received_at, now),
            });
        }
        return;
    }
    for obs in decoded.drain(..) {
        let origin = Origin::Message(&msg);
        take_reading(state, obs, origin, registry, spec, to, (now, tick));
    }
}

/// Takes one reading a worker's [`Source`] decoded (row `row` of its last batch), at `clocks`
/// (wall and monotonic ms, read once per batch).
pub fn take_decoded(
    state: &mut IngestState,
    obs: Observation,
    (source, row): (&dyn Source, usize),
    registry: &Registry,
    spec: &PipelineSpec,
    to: &mut Sides<'_>,
    (now, tick): (i64, i64),
) {
    let origin = Origin::Row(source, row);
    take_reading(state, obs, origin, registry, spec, to, (now, tick));
}

/// Where a reading came from, for its dead letter.
#[derive(Clone, Copy)]
enum Origin<'a> {
    /// Decoded from this message.
    Message(&'a RawMessage),
    /// Decoded by a source from a row of its last batch (received at 0: from no broker).
    Row(&'a dyn Source, usize),
}

impl Origin<'_> {
    fn received_at(self) -> i64 {
        match self {
            Self::Message(m) => m.received_at,
            Self::Row(..) => 0,
        }
    }

    /// The dead letter of the reading's message.
    fn dead_letter(self, sensor_type: &str, reason: Reason, detail: String) -> DeadLetter {
        let letter = |m: &RawMessage| {
            DeadLetter::new(
                sensor_type,
                reason,
                detail,
                &m.topic,
                &m.payload,
                m.received_at,
            )
        };
        match self {
            Self::Message(m) => letter(m),
            Self::Row(source, row) => letter(&source.message(row)),
        }
    }
}

fn dead_letter(to: &Sides<'_>, d: DeadLetter) {
    to.metrics.delivery.sent(Output::DeadLetters, 1);
    if to.outputs.deadletters.blocking_send(d).is_err() {
        // Shutdown was forced; nothing can take it any more.
        to.metrics.delivery.done(Output::DeadLetters, 1);
    }
}

/// The earliest event time whose readings may still change a result.
fn horizon(state: &mut IngestState, spec: &PipelineSpec, tick: i64) -> u64 {
    let w = state.watermark.current(tick);
    let h = spec.update_horizon.map_or(0, |h| h.as_millis() as u64);
    w.saturating_sub(h)
}

fn take_reading(
    state: &mut IngestState,
    mut obs: Observation,
    msg: Origin<'_>,
    registry: &Registry,
    spec: &PipelineSpec,
    to: &mut Sides<'_>,
    (now, tick): (i64, i64),
) {
    if let Some(detail) = too_far_ahead(&obs, msg.received_at(), spec.max_future) {
        to.metrics.reject(Reason::Future);
        dead_letter(
            to,
            msg.dead_letter(&obs.sensor_type, Reason::Future, detail.clone()),
        );
        // A sensor whose clock runs ahead sends unusable readings.
        if spec.quality.is_some() {
            to.side.send(Side::Rejected {
                at: state.watermark.current(tick),
                sensor_type: obs.sensor_type,
                sensor_id: obs.sensor_id,
                reason: Reason::Future,
                detail,
                latency_ms: crate::quality::latency(msg.received_at(), now),
            });
        }
        return;
    }
    let keep_from = horizon(state, spec, tick);
    obs.arrival.digest = aqyl_core::ingest::dedup::content(&obs);
    if !state.dedup.first_time(&obs, keep_from) {
        to.metrics.duplicates.fetch_add(1, Relaxed);
        return;
    }
    obs.arrival = aqyl_core::Arrival {
        ingested_at: now,
        stream_time: state.watermark.max_event().unwrap_or(0).max(obs.event_time),
        out_of_range: match (spec.quality, registry.get(&obs.sensor_type)) {
            (Some(_), Some(ty)) => ty.out_of_range_count(&obs.fields).min(u16::MAX as usize) as u16,
            _ => 0,
        },
        digest: obs.arrival.digest,
    };
    if !state.watermark.is_late(obs.event_time) {
        let newest = state.watermark.max_event();
        state.watermark.observe(obs.event_time, tick);
        if newest.is_none_or(|m| obs.event_time > m) {
            // Only a new maximum can raise the shared one (every maximum this worker had
            // came from here, from the shared one, or was published when restored).
            to.shared_max.fetch_max(obs.event_time, Relaxed);
        }
        to.observations += 1;
        if to.outputs.readings.is_some() {
            to.seen.push(obs.clone());
        }
        if obs.arrival.out_of_range > 0 && spec.quality.is_some_and(|q| q.exclude_incorrect) {
            // Scored, but kept out of aggregates and rules.
            to.metrics.quality_excluded.fetch_add(1, Relaxed);
            to.side.send(Side::Incorrect(obs));
        } else {
            to.input.send(obs, registry);
        }
    } else if spec
        .update_horizon
        .is_some_and(|h| obs.event_time + h.as_millis() as u64 >= state.watermark.current(tick))
    {
        // Sent at the current input time; Aggregate files it into its closed window and
        // emits the correction.
        to.metrics.late_updates.fetch_add(1, Relaxed);
        to.observations += 1;
        to.input.send(obs, registry);
    } else {
        late(state, obs, msg, spec, to, (now, tick));
    }
}

fn late(
    state: &mut IngestState,
    obs: Observation,
    msg: Origin<'_>,
    spec: &PipelineSpec,
    to: &mut Sides<'_>,
    (now, tick): (i64, i64),
) {
    to.metrics.reject(Reason::Late);
    let watermark = state.watermark.current(tick);
    let detail = format!(
        "event time {} is before the watermark {} (allowed lateness {}); its window has closed",
        aqyl_core::output::rfc3339_ms(obs.event_time as i64),
        aqyl_core::output::rfc3339_ms(watermark as i64),
        aqyl_core::duration::label(spec.allowed_lateness),
    );
    dead_letter(to, msg.dead_letter(&obs.sensor_type, Reason::Late, detail));
    if spec.quality.is_some() {
        to.side.send(Side::Late {
            at: watermark,
            sensor_type: obs.sensor_type.clone(),
            sensor_id: obs.sensor_id.clone(),
            age_ms: obs.arrival.stream_time.saturating_sub(obs.event_time),
            latency_ms: crate::quality::latency(msg.received_at(), now),
        });
    }
}

/// Why a reading received at `received_at` (wall ms; 0: from no broker) is too far in the
/// future to be let in, if it is.
fn too_far_ahead(
    obs: &Observation,
    received_at: i64,
    max_future: Option<Duration>,
) -> Option<String> {
    let max = max_future?;
    if received_at <= 0 {
        return None;
    }
    let limit = (received_at as u64).saturating_add(max.as_millis() as u64);
    (obs.event_time > limit).then(|| {
        format!(
            "event time {} is more than {} ahead of its receipt at {} (ingest.max_future); check the sensor's clock",
            aqyl_core::output::rfc3339_ms(obs.event_time as i64),
            aqyl_core::duration::label(max),
            aqyl_core::output::rfc3339_ms(received_at),
        )
    })
}
