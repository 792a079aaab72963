//! Running the dataflow: timely workers, each owning one input channel, decoding its share
//! of messages, keeping the watermark and stepping the dataflow without ever blocking.

use crate::aggregate::Aggregate;
use crate::events::{AreaEvents, DetectEvents, WindowEvents};
use crate::feed::Feed;
use crate::quality::{QualitySpec, ScoreQuality, Side};
use crate::sensor_sax::AdaptiveSax;
use crate::{input, wall_ms};
use aqyl_core::metrics::Metrics;
use aqyl_core::quality::QualityRecord;
use aqyl_core::watermark::Watermark;
use aqyl_core::window::WindowSpec;
use aqyl_core::{Aggregate as AggregateRecord, DeadLetter, RawMessage, Reason, Scope};
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::operators::{Concat, Probe};
use timely::dataflow::ProbeHandle;
use timely::WorkerConfig;
use tokio::sync::mpsc::{self, error::TryRecvError};

/// Batches of quality records that may wait for the sinks before the workers wait.
pub const QUALITY_BATCHES: usize = 64;

/// Most messages a worker takes from its channel before stepping the dataflow.
const BATCH: usize = 1024;
/// How long an idle worker parks before looking at its channel and the clock again.
const PARK: Duration = Duration::from_millis(5);

/// What the dataflow computes and how it treats time.
#[derive(Debug, Clone)]
pub struct PipelineSpec {
    /// Sensor types, for decoding.
    pub registry: crate::SharedRegistry,
    /// Number of timely workers.
    pub workers: usize,
    /// Default tumbling window, for sensor types that declare no `[[windows]]`.
    pub window: Duration,
    /// Allowed lateness.
    pub allowed_lateness: Duration,
    /// Wall-clock idle timeout after which the watermark advances; `None` for replays.
    pub idle_timeout: Option<Duration>,
    /// Largest payload accepted.
    pub max_payload_bytes: usize,
    /// Readings received from a broker with an event time further ahead of their receive time
    /// than this are dead-lettered as `future` (`ingest.max_future`); `None`: no check.
    pub max_future: Option<Duration>,
    /// Event rules evaluated per sensor.
    pub rules: Arc<Vec<aqyl_core::rules::Rule>>,
    /// With `Some(horizon)`, a late record within `horizon` of the watermark corrects its
    /// closed window (which is re-emitted) instead of being dropped (`pipeline.late`).
    pub update_horizon: Option<Duration>,
    /// Quality scoring (`[quality]`), when enabled.
    pub quality: Option<QualitySpec>,
    /// When reading rules judge a reading (`pipeline.rule_timing`).
    pub rule_timing: aqyl_core::config::RuleTiming,
}

impl PipelineSpec {
    /// Whether the pipeline runs live (an idle timeout is set): absence rules and area
    /// rules then follow the wall clock and arrival order instead of the watermark.
    pub fn live(&self) -> bool {
        self.idle_timeout.is_some()
    }
}

/// Where results leave the dataflow.
#[derive(Debug, Clone)]
pub struct Outputs {
    /// Closed windows.
    pub aggregates: mpsc::UnboundedSender<AggregateRecord>,
    /// Rejected and late input.
    pub deadletters: mpsc::UnboundedSender<DeadLetter>,
    /// Incident lifecycle messages (quality incidents included).
    pub events: mpsc::UnboundedSender<aqyl_core::Event>,
    /// Quality reports and roll-ups, in batches (one per operator activation). Bounded: when
    /// the sinks fall behind, the workers wait, and the broker holds the backlog.
    pub quality: mpsc::Sender<Vec<QualityRecord>>,
}

/// The receiving ends of [`Outputs`].
#[derive(Debug)]
pub struct Receivers {
    /// Closed windows.
    pub aggregates: mpsc::UnboundedReceiver<AggregateRecord>,
    /// Rejected and late input.
    pub deadletters: mpsc::UnboundedReceiver<DeadLetter>,
    /// Incident lifecycle messages.
    pub events: mpsc::UnboundedReceiver<aqyl_core::Event>,
    /// Quality reports and roll-ups, in batches; at most [`QUALITY_BATCHES`] wait.
    pub quality: mpsc::Receiver<Vec<QualityRecord>>,
}

impl Outputs {
    /// A channel for every output (the quality one bounded at [`QUALITY_BATCHES`]) and their
    /// receiving ends, for a caller that reads each output itself.
    pub fn channels() -> (Outputs, Receivers) {
        let (aggregates, agg_rx) = mpsc::unbounded_channel();
        let (deadletters, dl_rx) = mpsc::unbounded_channel();
        let (events, ev_rx) = mpsc::unbounded_channel();
        let (quality, q_rx) = mpsc::channel(QUALITY_BATCHES);
        let outputs = Outputs {
            aggregates,
            deadletters,
            events,
            quality,
        };
        let receivers = Receivers {
            aggregates: agg_rx,
            deadletters: dl_rx,
            events: ev_rx,
            quality: q_rx,
        };
        (outputs, receivers)
    }
}

/// A running dataflow; [`Running::join`] waits until every worker has drained and stopped,
/// which happens once all senders of the input router are dropped.
pub struct Running {
    guards: timely::communication::initialize::WorkerGuards<()>,
}

impl Running {
    /// Waits for the workers to finish (after the router is dropped) and reports panics.
    pub fn join(self) -> Result<(), String> {
        for r in self.guards.join() {
            r?;
        }
        Ok(())
    }
}

/// Starts the workers on their own threads. Messages are fed through the returned router.
pub fn start(
    spec: PipelineSpec,
    capacity: usize,
    outputs: Outputs,
    metrics: Arc<Metrics>,
) -> Result<(input::Router, Running), String> {
    let workers = spec.workers.max(1);
    let (router, receivers) = input::channels(workers, capacity);
    let receivers = Arc::new(Mutex::new(
        receivers.into_iter().map(Some).collect::<Vec<_>>(),
    ));
    let shared_max = Arc::new(AtomicU64::new(0));
    let in_flight = Arc::new(std::sync::atomic::AtomicI64::new(0));
    let config = timely::Config {
        communication: timely::CommunicationConfig::Process(workers),
        worker: WorkerConfig::default(),
    };
    let guards = timely::execute(config, move |worker| {
        let index = worker.index();
        let rx = receivers
            .lock()
            .ok()
            .and_then(|mut r| r.get_mut(index).and_then(Option::take));
        let Some(rx) = rx else {
            tracing::error!(index, "worker found no input channel; it will not ingest");
            return;
        };
        let states = crate::state::OperatorStates::new(in_flight.clone());
        run_worker(worker, &spec, rx, &outputs, &metrics, &shared_max, states);
    })?;
    Ok((router, Running { guards }))
}

fn run_worker(
    worker: &mut timely::worker::Worker,
    spec: &PipelineSpec,
    mut rx: mpsc::Receiver<RawMessage>,
    outputs: &Outputs,
    metrics: &Arc<Metrics>,
    shared_max: &AtomicU64,
    states: crate::state::OperatorStates,
) {
    let default_window = WindowSpec::tumbling(spec.window);
    let horizon = spec.update_horizon.map(|h| h.as_millis() as u64);
    let probe = ProbeHandle::new();
    let aggregates = outputs.aggregates.clone();
    let (mut input, mut side) = worker.dataflow::<u64, _, _>(|scope| {
        let (input, observations) = Feed::<aqyl_core::Observation>::new(&scope);
        // Input only quality scoring sees: readings kept out for failing correctness, rejected
        // and late messages of known sensors.
        let (side_input, side) = Feed::<Side>::new(&scope);
        if let Some(q) = spec.quality {
            let scored = observations
                .clone()
                .score_quality(side, spec.registry.clone(), q);
            crate::quality::emit(scored, outputs.quality.clone(), outputs.events.clone());
        }
        let observations_for_sax = observations.clone();
        let events = outputs.events.clone();
        let per_sensor = observations.clone().aggregate(
            Scope::Sensor,
            spec.registry.clone(),
            default_window.clone(),
            horizon,
            metrics.clone(),
            &states,
        );
        let per_area = observations.clone().aggregate(
            Scope::Area,
            spec.registry.clone(),
            default_window,
            horizon,
            metrics.clone(),
            &states,
        );
        {
            let timing = crate::events::Timing::of(spec);
            let mut sensor_events = observations.clone().detect_events(
                spec.rules.clone(),
                timing,
                metrics.clone(),
                &states,
            );
            if spec.rules.iter().any(|r| r.per_area) {
                let area_silences =
                    observations.detect_area_events(spec.rules.clone(), timing, &states);
                sensor_events = sensor_events.concat(area_silences);
            }
            if spec.rules.iter().any(|r| r.window.is_some()) {
                let window_events = per_sensor
                    .clone()
                    .window_events(spec.rules.clone(), &states);
                sensor_events = sensor_events.concat(window_events);
            }
            let area_events =
                sensor_events
                    .clone()
                    .area_events(spec.rules.clone(), timing, &states);
            sensor_events.concat(area_events)
        }
        .sink(Pipeline, "EmitEvents", move |(input, _)| {
            input.for_each(|_cap, data| {
                for e in data.drain(..) {
                    let _ = events.send(e);
                }
            });
        });
        let adaptive =
            observations_for_sax.adaptive_sax(spec.registry.clone(), metrics.clone(), &states);
        per_sensor
            .concat(per_area)
            .concat(adaptive)
            .probe_with(&probe)
            .sink(Pipeline, "Emit", move |(input, _frontier)| {
                input.for_each(|_cap, data| {
                    for a in data.drain(..) {
                        // A closed receiver means shutdown was forced; nothing left to do.
                        let _ = aggregates.send(a);
                    }
                });
            });
        (input, side_input)
    });

    let lateness = spec.allowed_lateness.as_millis() as u64;
    let mut watermark = Watermark::new(lateness, spec.idle_timeout.map(|d| d.as_millis() as u64));
    // The watermark's idle advance measures wall-clock *durations*: a monotonic clock, so a
    // stepped system clock (NTP, a VM resumed) neither stalls nor jumps event time.
    let mut last_message = mono_ms();
    let mut decoded = Vec::with_capacity(4);
    loop {
        // The current sensor types: a descriptor reload takes effect from the next batch.
        let registry = spec.registry.load();
        let mut taken = 0;
        let mut closed = false;
        while taken < BATCH {
            match rx.try_recv() {
                Ok(msg) => {
                    taken += 1;
                    let now = wall_ms();
                    let tick = mono_ms();
                    decoded.clear();
                    if let Err(rejection) =
                        registry.decode_into(&msg, spec.max_payload_bytes, &mut decoded)
                    {
                        metrics.reject(rejection.reason);
                        let _ = outputs.deadletters.send(rejection.dead_letter(&msg));
                        // A known sensor's unusable message counts against its quality.
                        if let (Some(_), Some(ty), Some(id)) = (
                            spec.quality,
                            rejection
                                .sensor_type
                                .as_deref()
                                .and_then(|t| registry.get(t)),
                            rejection.sensor_id,
                        ) {
                            side.send(Side::Rejected {
                                at: watermark.current(tick),
                                sensor_type: ty.name.clone(),
                                sensor_id: id,
                                reason: rejection.reason,
                                detail: rejection.detail,
                                latency_ms: crate::quality::latency(msg.received_at, now),
                            });
                        }
                        continue;
                    }
                    for mut obs in decoded.drain(..) {
                        if let Some(detail) = too_far_ahead(&obs, msg.received_at, spec.max_future)
                        {
                            metrics.reject(Reason::Future);
                            let _ = outputs.deadletters.send(DeadLetter::new(
                                &obs.sensor_type,
                                Reason::Future,
                                detail.clone(),
                                &msg.topic,
                                &msg.payload,
                                msg.received_at,
                            ));
                            // A sensor whose clock runs ahead sends unusable readings.
                            if spec.quality.is_some() {
                                side.send(Side::Rejected {
                                    at: watermark.current(tick),
                                    sensor_type: obs.sensor_type,
                                    sensor_id: obs.sensor_id,
                                    reason: Reason::Future,
                                    detail,
                                    latency_ms: crate::quality::latency(msg.received_at, now),
                                });
                            }
                            continue;
                        }
                        obs.arrival = aqyl_core::Arrival {
                            ingested_at: now,
                            stream_time: watermark.max_event().unwrap_or(0).max(obs.event_time),
                            out_of_range: match (spec.quality, registry.get(&obs.sensor_type)) {
                                (Some(_), Some(ty)) => {
                                    ty.out_of_range_count(&obs.fields).min(u16::MAX as usize) as u16
                                }
                                _ => 0,
                            },
                        };
                        if !watermark.is_late(obs.event_time) {
                            watermark.observe(obs.event_time, tick);
                            shared_max.fetch_max(obs.event_time, Relaxed);
                            metrics.observations.fetch_add(1, Relaxed);
                            if obs.arrival.out_of_range > 0
                                && spec.quality.is_some_and(|q| q.exclude_incorrect)
                            {
                                // Scored, but kept out of aggregates and rules.
                                metrics.quality_excluded.fetch_add(1, Relaxed);
                                side.send(Side::Incorrect(obs));
                            } else {
                                input.send(obs);
                            }
                        } else if spec.update_horizon.is_some_and(|h| {
                            obs.event_time + h.as_millis() as u64 >= watermark.current(tick)
                        }) {
                            // Sent at the current input time; Aggregate files it into its
                            // closed window and emits the correction.
                            metrics.late_updates.fetch_add(1, Relaxed);
                            metrics.observations.fetch_add(1, Relaxed);
                            input.send(obs);
                        } else {
                            metrics.reject(Reason::Late);
                            let detail = format!(
                                "event time {} is before the watermark {} (allowed lateness {}); its window has closed",
                                aqyl_core::deadletter::rfc3339_ms(obs.event_time as i64),
                                aqyl_core::deadletter::rfc3339_ms(watermark.current(tick) as i64),
                                aqyl_core::duration::label(spec.allowed_lateness),
                            );
                            let dl = DeadLetter::new(
                                &obs.sensor_type,
                                Reason::Late,
                                detail,
                                &msg.topic,
                                &msg.payload,
                                msg.received_at,
                            );
                            let _ = outputs.deadletters.send(dl);
                            if spec.quality.is_some() {
                                side.send(Side::Late {
                                    at: watermark.current(tick),
                                    sensor_type: obs.sensor_type.clone(),
                                    sensor_id: obs.sensor_id.clone(),
                                    age_ms: obs.arrival.stream_time.saturating_sub(obs.event_time),
                                    latency_ms: crate::quality::latency(msg.received_at, now),
                                });
                            }
                        }
                    }
                }
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => {
                    closed = true;
                    break;
                }
            }
        }
        let tick = mono_ms();
        if taken > 0 {
            last_message = tick;
        }
        // Each worker judges time by what it has seen itself, so a worker that runs ahead in
        // a fast replay cannot make another worker's records late; the frontier is the
        // slowest worker's. Live, a worker idle past the idle timeout follows the newest event
        // time of the others instead of holding every window open. (In a replay a worker
        // without data holds its windows until the input ends: correct, if memory-hungrier.)
        let idle = spec
            .idle_timeout
            .is_some_and(|t| tick - last_message > t.as_millis() as i64);
        let max = shared_max.load(Relaxed);
        if max > 0 && idle {
            watermark.observe_max(max, tick);
        }
        // Every batch leaves at once, whether or not the watermark moved.
        let w = watermark.current(tick);
        input.advance_to(w);
        side.advance_to(w);
        if closed {
            break;
        }
        if taken == 0 {
            worker.step_or_park(Some(PARK));
        } else {
            worker.step();
        }
    }
    // Closing the input lets the frontier run out: every open window closes and is emitted.
    input.close();
    side.close();
    while !probe.done() {
        worker.step_or_park(Some(PARK));
    }
}

/// Milliseconds on a monotonic clock (since the first call), for measuring durations.
fn mono_ms() -> i64 {
    static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    START
        .get_or_init(std::time::Instant::now)
        .elapsed()
        .as_millis() as i64
}

/// Why a reading received at `received_at` (wall ms; 0: from no broker) is too far in the
/// future to be let in, if it is.
fn too_far_ahead(
    obs: &aqyl_core::Observation,
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
            aqyl_core::deadletter::rfc3339_ms(obs.event_time as i64),
            aqyl_core::duration::label(max),
            aqyl_core::deadletter::rfc3339_ms(received_at),
        )
    })
}

/// What a batch run produced, in the order the workers emitted it.
#[derive(Debug, Clone, Default)]
pub struct Batch {
    /// Closed windows.
    pub aggregates: Vec<AggregateRecord>,
    /// Rejected and late input.
    pub deadletters: Vec<DeadLetter>,
    /// Incident lifecycle messages.
    pub events: Vec<aqyl_core::Event>,
    /// Quality reports and roll-ups.
    pub quality: Vec<QualityRecord>,
}

impl Batch {
    /// Sorts both lists into a canonical order (for comparisons), and returns them.
    pub fn sorted(mut self) -> (Vec<AggregateRecord>, Vec<DeadLetter>) {
        self.aggregates
            .sort_by(|a, b| a.sort_key().cmp(&b.sort_key()));
        self.deadletters
            .sort_by(|a, b| (&a.topic, &a.payload).cmp(&(&b.topic, &b.payload)));
        (self.aggregates, self.deadletters)
    }
}

/// Runs a finite list of messages through a fresh dataflow with `spec.workers` workers and
/// returns what it produced. The same code path as the service, used by tests, benchmarks
/// and replays.
pub fn run_batch(spec: PipelineSpec, messages: Vec<RawMessage>) -> Result<Batch, String> {
    let (outputs, received) = Outputs::channels();
    let Receivers {
        aggregates: mut agg_rx,
        deadletters: mut dl_rx,
        events: mut ev_rx,
        quality: mut q_rx,
    } = received;
    // The bounded quality channel is drained while the workers run.
    let quality_drain = std::thread::spawn(move || {
        let mut all = Vec::new();
        while let Some(batch) = q_rx.blocking_recv() {
            all.extend(batch);
        }
        all
    });
    let metrics = Arc::new(Metrics::default());
    let (router, running) = start(spec, 1024, outputs, metrics)?;
    let feeder = std::thread::spawn(move || {
        for m in messages {
            if !router.route_blocking(m) {
                break;
            }
        }
    });
    feeder
        .join()
        .map_err(|_| "the feeder thread panicked".to_string())?;
    running.join()?;
    let mut aggregates = Vec::new();
    while let Ok(a) = agg_rx.try_recv() {
        aggregates.push(a);
    }
    let mut deadletters = Vec::new();
    while let Ok(d) = dl_rx.try_recv() {
        deadletters.push(d);
    }
    let mut events = Vec::new();
    while let Ok(e) = ev_rx.try_recv() {
        events.push(e);
    }
    let quality = quality_drain
        .join()
        .map_err(|_| "the quality drain panicked".to_string())?;
    Ok(Batch {
        aggregates,
        deadletters,
        events,
        quality,
    })
}
