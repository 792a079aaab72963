//! Running the dataflow: timely workers, each owning one input channel, decoding its share
//! of messages, keeping the watermark and stepping the dataflow without ever blocking.

use crate::aggregate::Aggregate;
use crate::checkpoint::{Control, Snapshot, WorkerState};
use crate::cluster::ClusterSpec;
use crate::coordinate::{Coordinator, Holdings};
use crate::events::{AreaEvents, DetectEvents, WindowEvents};
use crate::feed::Feed;
use crate::gossip::Gossip;
use crate::ingest::{IngestState, Sides};
use crate::input::{Logged, Source, Taken};
use crate::quality::{QualitySpec, ScoreQuality, Side};
use crate::readings::Readings;
use crate::sensor_sax::AdaptiveSax;
use crate::state::OperatorStates;
use crate::{input, wall_ms};
use aqyl_core::metrics::{Metrics, Output};
use aqyl_core::quality::QualityRecord;
use aqyl_core::windows::window::WindowSpec;
use aqyl_core::{Aggregate as AggregateRecord, DeadLetter, Observation, RawMessage, Scope};
use std::sync::atomic::Ordering::{Relaxed, SeqCst};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use timely::communication::AllocatorBuilder;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::StreamVec;
use timely::WorkerConfig;
use tokio::sync::mpsc::{self, error::TryRecvError};

/// Batches of quality records that may wait for the sinks before the workers wait.
pub const QUALITY_BATCHES: usize = 64;
/// Closed windows that may wait for the sinks before the workers wait.
pub const AGGREGATE_CAPACITY: usize = 65_536;
/// Incident messages that may wait for the publisher before the workers wait.
pub const EVENT_CAPACITY: usize = 16_384;
/// Dead letters that may wait for the publisher before the workers wait.
pub const DEADLETTER_CAPACITY: usize = 16_384;

/// Most messages a worker takes from its channel before stepping the dataflow.
const BATCH: usize = 1024;
/// Most items a worker reads from its own source before stepping the dataflow.
const SOURCE_BATCH: usize = 4096;
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
    /// Confirmations of incidents by reports near them (`[[corroborate]]` in rule files).
    pub corroborate: Arc<Vec<aqyl_core::rules::corroborate::CorroborateRule>>,
    /// With `Some(horizon)`, a late record within `horizon` of the watermark corrects its
    /// closed window (which is re-emitted) instead of being dropped (`pipeline.late`).
    pub update_horizon: Option<Duration>,
    /// Quality scoring (`[quality]`), when enabled.
    pub quality: Option<QualitySpec>,
    /// When reading rules judge a reading (`pipeline.rule_timing`).
    pub rule_timing: aqyl_core::config::RuleTiming,
    /// Per-sensor state of a sensor silent this long (event time) is released
    /// (`pipeline.state_ttl`); `None`: kept for ever.
    pub state_ttl: Option<Duration>,
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
    /// Closed windows. Every output channel is bounded: when the sinks fall behind, the
    /// workers wait, and the broker holds the backlog.
    pub aggregates: mpsc::Sender<AggregateRecord>,
    /// Rejected and late input.
    pub deadletters: mpsc::Sender<DeadLetter>,
    /// Incident lifecycle messages (quality incidents included).
    pub events: mpsc::Sender<aqyl_core::Event>,
    /// Quality reports and roll-ups, in batches (one per operator activation). Bounded: when
    /// the sinks fall behind, the workers wait, and the broker holds the backlog.
    pub quality: mpsc::Sender<Vec<QualityRecord>>,
    /// Every reading the ingest lets in (after the checks for future, duplicate and late
    /// readings), one batch per worker step, for the live city state; `None`: nobody
    /// watches. Never waited on: a batch that finds the channel full is counted in
    /// `aqyl_city_readings_skipped_total` and dropped (the sensors' next readings catch up).
    pub readings: Option<mpsc::Sender<Vec<Observation>>>,
}

/// The receiving ends of [`Outputs`].
#[derive(Debug)]
pub struct Receivers {
    /// Closed windows; at most [`AGGREGATE_CAPACITY`] wait.
    pub aggregates: mpsc::Receiver<AggregateRecord>,
    /// Rejected and late input; at most [`DEADLETTER_CAPACITY`] wait.
    pub deadletters: mpsc::Receiver<DeadLetter>,
    /// Incident lifecycle messages; at most [`EVENT_CAPACITY`] wait.
    pub events: mpsc::Receiver<aqyl_core::Event>,
    /// Quality reports and roll-ups, in batches; at most [`QUALITY_BATCHES`] wait.
    pub quality: mpsc::Receiver<Vec<QualityRecord>>,
}

impl Outputs {
    /// A bounded channel for every output and their receiving ends, for a caller that reads
    /// each output itself (while the workers run: a full channel makes them wait).
    pub fn channels() -> (Outputs, Receivers) {
        let (aggregates, agg_rx) = mpsc::channel(AGGREGATE_CAPACITY);
        let (deadletters, dl_rx) = mpsc::channel(DEADLETTER_CAPACITY);
        let (events, ev_rx) = mpsc::channel(EVENT_CAPACITY);
        let (quality, q_rx) = mpsc::channel(QUALITY_BATCHES);
        let outputs = Outputs {
            aggregates,
            deadletters,
            events,
            quality,
            readings: None,
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

/// A running dataflow; [`Running::join`] waits until every worker has stopped: once all
/// senders of the input router are dropped (after draining every open window), or, when
/// durable, after a checkpoint with `stop`.
pub struct Running {
    guards: timely::communication::initialize::WorkerGuards<()>,
    ended: Arc<AtomicBool>,
    restored: Option<u64>,
}

impl Running {
    /// Set once any worker has ended (before its input did, a failure: a panic, or in a
    /// cluster a process that died or lost its connection).
    pub fn worker_ended(&self) -> Arc<AtomicBool> {
        self.ended.clone()
    }

    /// In a durable cluster: the id of the checkpoint the processes agreed on and restored
    /// (`None`: all started afresh).
    pub fn restored(&self) -> Option<u64> {
        self.restored
    }

    /// Waits for the workers to finish and reports panics and failures.
    pub fn join(self) -> Result<(), String> {
        for r in self.guards.join() {
            r?;
        }
        Ok(())
    }
}

/// Checkpoints for a durable dataflow: how the service asks for them and the snapshot to
/// start from.
pub struct Durable {
    /// Where checkpoints are asked for and their snapshots arrive.
    pub control: Arc<Control>,
    /// The snapshot to restore, if any (one process).
    pub restore: Option<Snapshot>,
    /// In a cluster, instead: the checkpoints this process holds, among which the one every
    /// process holds is restored (see [`crate::coordinate`]).
    pub held: Holdings,
}

/// Starts the workers on their own threads. Messages are fed through the returned router;
/// dropping every router ends the input, and the workers drain every open window and stop.
pub fn start(
    spec: PipelineSpec,
    capacity: usize,
    outputs: Outputs,
    metrics: Arc<Metrics>,
) -> Result<(input::Router, Running), String> {
    start_with(spec, capacity, outputs, metrics, None, None)
}

/// [`start`] for one process of a cluster: its workers are `cluster.process`'s share of the
/// cluster's, and records are exchanged with the other processes, whose routers end the
/// input only once every one has been dropped. Returns once every process is connected.
pub fn start_cluster(
    spec: PipelineSpec,
    capacity: usize,
    outputs: Outputs,
    metrics: Arc<Metrics>,
    cluster: ClusterSpec,
) -> Result<(input::Router, Running), String> {
    start_with(spec, capacity, outputs, metrics, None, Some(cluster))
}

/// [`start`] for a durable dataflow: restored from `durable.restore`, checkpointed when
/// asked through `durable.control`. Dropping the routers does not end it (a crash must not
/// look like the end of input); a checkpoint with `stop` does, without flushing open windows.
pub fn start_durable(
    spec: PipelineSpec,
    capacity: usize,
    outputs: Outputs,
    metrics: Arc<Metrics>,
    durable: Durable,
) -> Result<(input::Router, Running), String> {
    start_with(spec, capacity, outputs, metrics, Some(durable), None)
}

/// [`start_cluster`] for a durable cluster: the processes agree on the checkpoint to restore
/// (among `durable.held`; [`Running::restored`] says which), and checkpoints are taken by the
/// whole cluster (see [`crate::coordinate`]). Dropping the routers does not end it.
pub fn start_cluster_durable(
    spec: PipelineSpec,
    capacity: usize,
    outputs: Outputs,
    metrics: Arc<Metrics>,
    (cluster, durable): (ClusterSpec, Durable),
) -> Result<(input::Router, Running), String> {
    start_with(
        spec,
        capacity,
        outputs,
        metrics,
        Some(durable),
        Some(cluster),
    )
}

/// Starts the workers on their own threads, each reading its own [`Source`] (one per worker:
/// their number is the number of workers). Each worker ends its input when its source ends,
/// drains every open window and stops.
pub fn start_sources(
    mut spec: PipelineSpec,
    sources: Vec<Box<dyn Source>>,
    outputs: Outputs,
    metrics: Arc<Metrics>,
) -> Result<Running, String> {
    spec.workers = sources.len().max(1);
    let intakes = sources.into_iter().map(Intake::Source).collect();
    start_intakes(spec, intakes, None, outputs, metrics, (None, None))
}

/// Where a worker's input comes from.
enum Intake {
    /// Messages routed to this worker.
    Channel(mpsc::Receiver<Logged>),
    /// Its own source.
    Source(Box<dyn Source>),
}

/// What every worker shares.
struct Shared {
    spec: PipelineSpec,
    outputs: Outputs,
    metrics: Arc<Metrics>,
    /// The largest event time any worker has seen (in a cluster: any worker of any process).
    shared_max: Arc<AtomicU64>,
    /// This process's place in a cluster, if it runs in one.
    cluster: Option<ClusterSpec>,
    /// Records in flight between operators (see [`crate::state`]).
    in_flight: Arc<AtomicI64>,
    /// The largest log sequence number routed to any worker.
    routed: Arc<AtomicU64>,
    control: Option<Arc<Control>>,
    /// The global index of this process's first worker (0 outside a cluster).
    first: usize,
}

/// A worker's own start: its input and the part of the snapshot it restores.
type Start = (Intake, Option<WorkerState>);

fn start_with(
    spec: PipelineSpec,
    capacity: usize,
    outputs: Outputs,
    metrics: Arc<Metrics>,
    durable: Option<Durable>,
    cluster: Option<ClusterSpec>,
) -> Result<(input::Router, Running), String> {
    let workers = spec.workers.max(1);
    let (router, receivers) = input::channels(workers, capacity);
    let intakes = receivers.into_iter().map(Intake::Channel).collect();
    let routed = router.routed();
    let running = start_intakes(
        spec,
        intakes,
        Some(routed),
        outputs,
        metrics,
        (durable, cluster),
    )?;
    Ok((router, running))
}

fn start_intakes(
    spec: PipelineSpec,
    intakes: Vec<Intake>,
    routed: Option<Arc<AtomicU64>>,
    outputs: Outputs,
    metrics: Arc<Metrics>,
    (durable, cluster): (Option<Durable>, Option<ClusterSpec>),
) -> Result<Running, String> {
    let workers = spec.workers.max(1);
    let (control, restore, held) = match durable {
        Some(d) => (Some(d.control), d.restore, d.held),
        None => (None, None, Holdings::default()),
    };
    let (allocators, others, restore) =
        communicate(cluster.as_ref(), workers, control.as_ref(), restore, held)?;
    let restored = restore.as_ref().map(|s| s.id);
    let parts: Vec<Option<WorkerState>> = match restore {
        Some(s) if s.workers.len() != workers => {
            return Err(format!(
                "the checkpoint was taken with {} workers, but pipeline.workers is {workers}: set pipeline.workers = {} (a sensor's state lives on the worker its topic hashes to)",
                s.workers.len(),
                s.workers.len()
            ))
        }
        Some(s) => s.workers.into_iter().map(Some).collect(),
        None => vec![None; workers],
    };
    let starts: Vec<Option<Start>> = intakes.into_iter().zip(parts).map(Some).collect();
    let starts = Arc::new(Mutex::new(starts));
    // Worker indices are global in a cluster: this process's start at `first`.
    let first = cluster.as_ref().map_or(0, |c| c.first_worker(workers));
    let shared = Arc::new(Shared {
        spec,
        outputs,
        metrics,
        shared_max: Arc::new(AtomicU64::new(0)),
        in_flight: Arc::new(AtomicI64::new(0)),
        routed: routed.unwrap_or_default(),
        control,
        cluster: cluster.clone(),
        first,
    });
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<(), String>>();
    let ready_tx = Mutex::new(ready_tx);
    let ended = Arc::new(AtomicBool::new(false));
    let ended_in_worker = ended.clone();
    let run = move |worker: &mut timely::worker::Worker| {
        let _ended = SetOnDrop(ended_in_worker.clone());
        let index = worker.index() - first;
        let own = starts
            .lock()
            .ok()
            .and_then(|mut s| s.get_mut(index).and_then(Option::take));
        let ready = ready_tx.lock().map(|t| t.clone());
        let (Some((intake, restore)), Ok(ready)) = (own, ready) else {
            tracing::error!(index, "worker found no input channel; it will not ingest");
            return;
        };
        // A worker that dies must not leave the others waiting for it at a checkpoint.
        let _guard = PoisonOnPanic(shared.control.clone());
        run_worker(worker, &shared, intake, restore, ready);
    };
    let guards = timely::execute::execute_from(allocators, others, WorkerConfig::default(), run)?;
    for _ in 0..workers {
        match ready_rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(e),
            Err(_) => return Err("a dataflow worker ended while starting".into()),
        }
    }
    Ok(Running {
        guards,
        ended,
        restored,
    })
}

/// The workers' allocators, what must live as long as they do, and the snapshot to restore.
type Communication = (
    Vec<AllocatorBuilder>,
    Box<dyn std::any::Any + Send>,
    Option<Snapshot>,
);

/// What the workers communicate through, and the snapshot to restore: in a cluster, once
/// every process is connected and (when durable) the processes agreed on the checkpoint.
fn communicate(
    cluster: Option<&ClusterSpec>,
    workers: usize,
    control: Option<&Arc<Control>>,
    restore: Option<Snapshot>,
    held: Holdings,
) -> Result<Communication, String> {
    let Some(c) = cluster else {
        let (allocators, others) = timely::CommunicationConfig::Process(workers).try_build()?;
        return Ok((allocators, others, restore));
    };
    let peers = crate::cluster::connect(c, workers)?;
    // Agreed before timely takes the connections, so a refusal ends every process cleanly.
    let restore = match control {
        Some(control) => {
            let (coordinator, agreed) =
                Coordinator::start(peers.control, c.process, held.ids(), control.clone())?;
            control.join_cluster(coordinator, agreed.newest);
            held.take(agreed.restore)
        }
        None => None,
    };
    let (allocators, guard) = crate::cluster::network(peers.data, c, workers)?;
    Ok((allocators, guard, restore))
}

/// Sets its flag when dropped: when its worker ends, by returning or by a panic.
struct SetOnDrop(Arc<AtomicBool>);

impl Drop for SetOnDrop {
    fn drop(&mut self) {
        self.0.store(true, SeqCst);
    }
}

/// Poisons the checkpoint rendezvous when its worker thread unwinds.
struct PoisonOnPanic(Option<Arc<Control>>);

impl Drop for PoisonOnPanic {
    fn drop(&mut self) {
        if std::thread::panicking() {
            if let Some(c) = &self.0 {
                c.rendezvous.poison();
            }
        }
    }
}

/// Builds a worker's dataflow: every operator, registered in `states`, and its two inputs.
fn build(
    worker: &mut timely::worker::Worker,
    shared: &Shared,
    states: &OperatorStates,
) -> (Readings, Feed<Side>) {
    let spec = &shared.spec;
    let metrics = &shared.metrics;
    let outputs = &shared.outputs;
    let default_window = WindowSpec::tumbling(spec.window);
    let horizon = spec.update_horizon.map(|h| h.as_millis() as u64);
    worker.dataflow::<u64, _, _>(|scope| {
        let (input, readings) = Readings::new(&scope, &spec.rules);
        let observations = readings.all;
        // Input only quality scoring sees: readings kept out for failing correctness, rejected
        // and late messages of known sensors.
        let (side_input, side) = Feed::<Side>::new(&scope);
        if let Some(q) = spec.quality {
            let q = QualitySpec {
                state_ttl_ms: spec
                    .state_ttl
                    .map(|ttl| ttl.as_millis() as u64)
                    .filter(|ttl| *ttl > 0),
                ..q
            };
            let scored = observations
                .clone()
                .score_quality(side, spec.registry.clone(), q, states);
            crate::quality::emit(
                scored,
                outputs.quality.clone(),
                outputs.events.clone(),
                states,
                metrics.clone(),
            );
        }
        let per_sensor = observations.clone().aggregate(
            Scope::Sensor,
            spec.registry.clone(),
            default_window.clone(),
            horizon,
            metrics.clone(),
            states,
        );
        let per_area = readings.areas.clone().aggregate(
            Scope::Area,
            spec.registry.clone(),
            default_window,
            horizon,
            metrics.clone(),
            states,
        );
        let events = {
            let timing = crate::events::Timing::of(spec);
            let mut sensor_events =
                readings
                    .rules
                    .detect_events(spec.rules.clone(), timing, metrics.clone(), states);
            if spec.rules.iter().any(|r| r.per_area) {
                let area_silences =
                    readings
                        .areas
                        .detect_area_events(spec.rules.clone(), timing, states);
                sensor_events = states.concat(sensor_events, area_silences);
            }
            if spec.rules.iter().any(|r| r.window.is_some()) {
                let window_events =
                    per_sensor
                        .clone()
                        .window_events(spec.rules.clone(), timing, states);
                sensor_events = states.concat(sensor_events, window_events);
            }
            let area_events = sensor_events
                .clone()
                .area_events(spec.rules.clone(), timing, states);
            let events = states.concat(sensor_events, area_events);
            if spec.corroborate.is_empty() {
                events
            } else {
                use crate::events::Corroborate;
                let confirmed = events.clone().corroborate(
                    observations.clone(),
                    spec.corroborate.clone(),
                    spec.registry.clone(),
                    states,
                );
                states.concat(events, confirmed)
            }
        };
        emit(
            events,
            states,
            "EmitEvents",
            outputs.events.clone(),
            Output::Events,
            metrics,
        );
        let adaptive = readings
            .sax
            .adaptive_sax(spec.registry.clone(), metrics.clone(), states);
        let aggregates = states.concat(states.concat(per_sensor, per_area), adaptive);
        emit(
            aggregates,
            states,
            "Emit",
            outputs.aggregates.clone(),
            Output::Aggregates,
            metrics,
        );
        (input, side_input)
    })
}

/// Hands every record of `stream` to `channel`, counting it as sent for `output`.
fn emit<T: Clone + 'static>(
    stream: StreamVec<'_, u64, T>,
    states: &OperatorStates,
    name: &str,
    channel: mpsc::Sender<T>,
    output: Output,
    metrics: &Arc<Metrics>,
) {
    let metrics = metrics.clone();
    stream.sink(states.counted(Pipeline), name, move |(input, _)| {
        input.for_each(|_cap, data| {
            metrics.delivery.sent(output, data.len() as u64);
            for record in data.drain(..) {
                // Timely workers are plain threads, never a runtime's: blocking is allowed.
                if channel.blocking_send(record).is_err() {
                    // Shutdown was forced; nothing can take it any more.
                    metrics.delivery.done(output, 1);
                }
            }
        });
    });
}

fn run_worker(
    worker: &mut timely::worker::Worker,
    shared: &Shared,
    mut intake: Intake,
    restore: Option<WorkerState>,
    ready: std::sync::mpsc::Sender<Result<(), String>>,
) {
    let spec = &shared.spec;
    let states = match &restore {
        Some(r) => OperatorStates::restored(
            shared.in_flight.clone(),
            r.operators.iter().cloned().collect(),
        ),
        None => OperatorStates::new(shared.in_flight.clone()),
    };
    let (mut input, mut side) = build(worker, shared, &states);
    if let Err(e) = states.finish_restore() {
        let _ = ready.send(Err(format!("cannot restore the checkpoint: {e}")));
        return;
    }
    let mut ingest = match restore {
        Some(r) => {
            input.advance_to(r.input_time);
            side.advance_to(r.input_time);
            let mut ingest = r.ingest;
            ingest.watermark.rebase(mono_ms());
            let newest = ingest.watermark.max_event().unwrap_or(0);
            shared.shared_max.fetch_max(newest, Relaxed);
            ingest
        }
        None => IngestState::new(spec),
    };
    let mut gossip = shared
        .cluster
        .as_ref()
        .map(|_| Gossip::new(worker, shared.shared_max.clone()));
    let _ = ready.send(Ok(()));
    // The watermark's idle advance measures wall-clock *durations*: a monotonic clock, so a
    // stepped system clock (NTP, a VM resumed) neither stalls nor jumps event time.
    let mut last_message = mono_ms();
    let mut decoded = Vec::with_capacity(4);
    let mut batch = Vec::with_capacity(SOURCE_BATCH);
    let mut checkpointed = shared.control.as_ref().map_or(0, |c| c.requested());
    loop {
        if let Some(control) = &shared.control {
            // The last checkpoint (ingest has stopped) waits until this worker has taken
            // every message routed to it, so that the next start has nothing to replay.
            let pending = control
                .pending(checkpointed)
                .filter(|id| !(control.stopping(*id) && queued(&intake)));
            if let Some(id) = pending {
                checkpointed = id;
                let Intake::Channel(rx) = &intake else {
                    tracing::error!("A worker reading its own source cannot be checkpointed.");
                    control.rendezvous.poison();
                    return;
                };
                let mut io = WorkerIo {
                    ingest: &mut ingest,
                    input: &mut input,
                    side: &mut side,
                    rx,
                };
                if let Err(e) = checkpoint(worker, (shared, control, id), &states, &mut io) {
                    tracing::error!(error = %e, "A checkpoint failed; this worker stops.");
                    control.rendezvous.poison();
                    return;
                }
                if control.stopping(id) {
                    // Open windows stay open: they are in the checkpoint.
                    for id in worker.installed_dataflows() {
                        worker.drop_dataflow(id);
                    }
                    return;
                }
            }
        }
        // The current sensor types: a descriptor reload takes effect from the next batch.
        let registry = spec.registry.load();
        let mut taken = 0;
        let mut closed = false;
        {
            let mut to = Sides {
                input: &mut input,
                side: &mut side,
                outputs: &shared.outputs,
                metrics: &shared.metrics,
                shared_max: &shared.shared_max,
                observations: 0,
                seen: Vec::new(),
            };
            match &mut intake {
                Intake::Channel(rx) => {
                    while taken < BATCH {
                        match rx.try_recv() {
                            Ok(logged) => {
                                taken += 1;
                                crate::ingest::take(
                                    &mut ingest,
                                    logged,
                                    &registry,
                                    spec,
                                    &mut to,
                                    &mut decoded,
                                );
                            }
                            Err(TryRecvError::Empty) => break,
                            Err(TryRecvError::Disconnected) => {
                                closed = true;
                                break;
                            }
                        }
                    }
                }
                Intake::Source(source) => {
                    closed = !source.read(&mut batch, SOURCE_BATCH);
                    taken = batch.len();
                    let clocks = (wall_ms(), mono_ms());
                    for item in batch.drain(..) {
                        match item {
                            Taken::Reading { obs, row } => crate::ingest::take_decoded(
                                &mut ingest,
                                obs,
                                (&**source, row),
                                &registry,
                                spec,
                                &mut to,
                                clocks,
                            ),
                            Taken::Message(msg) => crate::ingest::take(
                                &mut ingest,
                                Logged { seq: 0, msg },
                                &registry,
                                spec,
                                &mut to,
                                &mut decoded,
                            ),
                            Taken::Rejected(d) => {
                                // Counted by the source's owner, as a row, not a message.
                                let _ = shared.outputs.deadletters.blocking_send(d);
                            }
                        }
                    }
                }
            }
            shared
                .metrics
                .observations
                .fetch_add(to.observations, Relaxed);
            hand_seen(
                &shared.outputs,
                &shared.metrics,
                std::mem::take(&mut to.seen),
            );
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
        let max = shared.shared_max.load(Relaxed);
        if let Some(g) = &mut gossip {
            g.tell(max, tick);
        }
        if max > 0 && idle {
            ingest.watermark.observe_max(max, tick);
        }
        // Every batch leaves at once, whether or not the watermark moved.
        let w = ingest.watermark.current(tick);
        input.advance_to(w);
        side.advance_to(w);
        if closed && shared.control.is_none() {
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
    if let Some(g) = &mut gossip {
        g.close();
    }
    while worker.step_or_park(Some(PARK)) {}
}

/// Whether messages wait in a worker's channel.
fn queued(intake: &Intake) -> bool {
    matches!(intake, Intake::Channel(rx) if !rx.is_empty())
}

/// A worker's ingest and inputs, as a checkpoint sees them.
struct WorkerIo<'a> {
    ingest: &'a mut IngestState,
    input: &'a mut Readings,
    side: &'a mut Feed<Side>,
    rx: &'a mpsc::Receiver<Logged>,
}

/// Takes this worker's part of a checkpoint (see [`crate::checkpoint`]).
fn checkpoint(
    worker: &mut timely::worker::Worker,
    (shared, control, id): (&Shared, &Control, u64),
    states: &OperatorStates,
    io: &mut WorkerIo<'_>,
) -> Result<(), String> {
    let began = std::time::Instant::now();
    let rendezvous = &control.rendezvous;
    let dead = || "another worker died".to_string();
    let tick = mono_ms();
    let w = io.ingest.watermark.current(tick);
    io.input.advance_to(w);
    io.side.advance_to(w);
    // Read before looking at the queue: an empty queue means every message routed here up
    // to `routed` has been taken.
    let routed = shared.routed.load(SeqCst);
    if io.rx.is_empty() {
        io.ingest.covered = io.ingest.covered.max(routed);
    }
    let keep_from = w.saturating_sub(
        shared
            .spec
            .update_horizon
            .map_or(0, |h| h.as_millis() as u64),
    );
    io.ingest.dedup.forget_before(keep_from);
    loop {
        worker.step();
        if rendezvous.wait().ok_or_else(dead)? {
            // The others wait at the next meeting meanwhile: nothing moves in this process.
            let quiet = match control.coordinator() {
                Some(cluster) => {
                    let reloads = control.reloads().map(|r| &**r);
                    cluster.quiet(id, states.in_flight(), reloads)?
                }
                None => states.in_flight() == 0,
            };
            if quiet {
                *control.sent.lock().map_err(|_| "poisoned".to_string())? =
                    shared.metrics.delivery.sent_now();
            }
            control.quiet.store(quiet, SeqCst);
        }
        rendezvous.wait().ok_or_else(dead)?;
        if control.quiet.load(SeqCst) {
            break;
        }
    }
    let part = states.take().map(|operators| WorkerState {
        ingest: io.ingest.clone(),
        input_time: io.input.time(),
        operators,
    });
    let failed = part.as_ref().err().cloned();
    if let Ok(mut parts) = control.parts.lock() {
        parts[worker.index() - shared.first] = part.ok();
    }
    if rendezvous.wait().ok_or_else(dead)? {
        let parts: Vec<Option<WorkerState>> = match control.parts.lock() {
            Ok(mut p) => p.iter_mut().map(Option::take).collect(),
            Err(_) => Vec::new(),
        };
        let sent = control.sent.lock().map(|s| *s).unwrap_or_default();
        shared
            .metrics
            .checkpoint_pause_us
            .store(began.elapsed().as_micros() as u64, Relaxed);
        if let Some(workers) = parts.into_iter().collect::<Option<Vec<_>>>() {
            let _ = control.taken.send(Snapshot {
                id,
                workers,
                sent,
                taken_at: wall_ms(),
                rules: control.rules.clone(),
            });
        }
    }
    match failed {
        Some(e) => Err(format!("cannot encode this worker's state: {e}")),
        None => Ok(()),
    }
}

/// Milliseconds on a monotonic clock (since the first call), for measuring durations.
pub(crate) fn mono_ms() -> i64 {
    static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    START
        .get_or_init(std::time::Instant::now)
        .elapsed()
        .as_millis() as i64
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
        aggregates,
        deadletters,
        events,
        quality,
    } = received;
    // Every output channel is bounded: each is drained while the workers run.
    let aggregates = collect(aggregates, |a| vec![a]);
    let deadletters = collect(deadletters, |d| vec![d]);
    let events = collect(events, |e| vec![e]);
    let quality = collect(quality, |batch| batch);
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
    let drained = |name: &str| format!("the {name} drain panicked");
    Ok(Batch {
        aggregates: aggregates.join().map_err(|_| drained("aggregate"))?,
        deadletters: deadletters.join().map_err(|_| drained("dead-letter"))?,
        events: events.join().map_err(|_| drained("event"))?,
        quality: quality.join().map_err(|_| drained("quality"))?,
    })
}

/// Reads `rx` on a thread of its own until it closes; returns everything it carried.
fn collect<T: Send + 'static, R: Send + 'static>(
    mut rx: mpsc::Receiver<T>,
    items: impl Fn(T) -> Vec<R> + Send + 'static,
) -> std::thread::JoinHandle<Vec<R>> {
    std::thread::spawn(move || {
        let mut all = Vec::new();
        while let Some(x) = rx.blocking_recv() {
            all.extend(items(x));
        }
        all
    })
}

/// Hands a step's readings to [`Outputs::readings`], if anyone watches; a full channel drops
/// them, counted.
fn hand_seen(outputs: &Outputs, metrics: &Metrics, seen: Vec<Observation>) {
    let Some(tx) = outputs.readings.as_ref().filter(|_| !seen.is_empty()) else {
        return;
    };
    let n = seen.len() as u64;
    if tx.try_send(seen).is_err() {
        metrics.city_readings_skipped.fetch_add(n, Relaxed);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn reading(id: &str) -> Observation {
        Observation {
            sensor_type: "traffic".into(),
            sensor_id: id.into(),
            area: None,
            event_time: 1,
            received_at: 1,
            time_from_receive: false,
            location: None,
            fields: vec![("avgSpeed".into(), 50.0)],
            arrival: Default::default(),
        }
    }

    #[test]
    fn the_city_gets_each_step_s_readings_and_a_full_queue_drops_them_counted() {
        let (mut outputs, _receivers) = Outputs::channels();
        let metrics = Metrics::default();
        hand_seen(&outputs, &metrics, vec![reading("a")]);
        let (tx, mut rx) = mpsc::channel(1);
        outputs.readings = Some(tx);
        hand_seen(&outputs, &metrics, Vec::new());
        hand_seen(&outputs, &metrics, vec![reading("a"), reading("b")]);
        hand_seen(&outputs, &metrics, vec![reading("c")]);
        let first = rx.try_recv().unwrap();
        assert_eq!(
            first.len(),
            2,
            "one batch per step, an empty step sends nothing"
        );
        assert!(
            rx.try_recv().is_err(),
            "the third batch found the queue full"
        );
        assert_eq!(metrics.city_readings_skipped.load(Relaxed), 1);
    }
}
