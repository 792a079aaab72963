//! The service: builds the pipeline from a configuration, runs it, drains it on shutdown.

use anyhow::Context;
use aqyl_core::config::Loaded;
use aqyl_core::ingest::decode::Registry;
use aqyl_core::metrics::Metrics;
use aqyl_dataflow::{Outputs, PipelineSpec};
use aqyl_mqtt::MqttSettings;
use aqyl_sink::influx::{InfluxSink, InfluxTarget};
use aqyl_sink::{file::FileSink, Sinks};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

/// A running service.
pub struct Service {
    /// Live counters.
    pub metrics: Arc<Metrics>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Service {
    /// Asks the service to drain and stop, and waits until it has.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        self.task.await.context("the service task panicked")?
    }

    /// Waits until the service stops by itself (it does not, except on error).
    pub async fn wait(self) -> anyhow::Result<()> {
        self.task.await.context("the service task panicked")?
    }
}

/// The default client id: `aqyl-<hostname>`.
pub fn default_client_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| {
            h.trim()
                .chars()
                .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
                .collect::<String>()
        })
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "local".into());
    format!("aqyl-{host}")
}

/// Starts the service for `loaded`; it runs until [`Service::stop`] or until `shutdown`
/// completes, whichever comes first.
pub fn start(
    loaded: Loaded,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<Service> {
    let metrics = Arc::new(Metrics::default());
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let m = metrics.clone();
    let task = tokio::spawn(async move {
        let stop = async move {
            tokio::select! {
                _ = shutdown => {}
                _ = stop_rx => {}
            }
        };
        run(loaded, m, stop).await
    });
    Ok(Service {
        metrics,
        stop: Some(stop_tx),
        task,
    })
}

async fn run(
    loaded: Loaded,
    metrics: Arc<Metrics>,
    stop: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let cfg = &loaded.config;
    tokio::pin!(stop);
    let cluster = crate::cluster::spec(cfg);
    if let Some(c) = &cluster {
        let _ = metrics.process.set(c.process.to_string());
    }
    let registry = aqyl_dataflow::shared(Registry::new(loaded.sensor_types.clone()));
    let connections = crate::connections::prepare(&loaded).map_err(|e| {
        anyhow::anyhow!(
            "{e}\nFix the configuration (aqyl check --config {}) and start again.",
            loaded.path.display()
        )
    })?;

    let sinks = sinks(&loaded)?;
    if sinks.influx.is_none() && sinks.file.is_none() {
        tracing::warn!("No sink is enabled: aggregates are computed but not stored. Enable [influx] or [file], or set AQYL_INFLUX_URL.");
    }

    // The city state: every sensor's latest readings, quality, windows and incidents, which
    // the city services (in a cluster, on process 0 only) and the status page read. Without
    // the city services it is kept for the page alone, from the dataflow's outputs.
    let city_services = cfg.city.enabled && crate::cluster::process(cfg) == 0;
    if cfg.city.enabled && !city_services {
        tracing::info!("The city services (/v1.1, aqyl/state/..., the city tap) run on process 0 of the cluster.");
    }
    let city = (city_services || cfg.http.addr.is_some()).then(|| {
        let state = crate::city::state::CityState::new(
            cfg.city.observations,
            cfg.city.max_sensors,
            (!cfg.pipeline.state_ttl.is_zero()).then_some(cfg.pipeline.state_ttl),
            metrics.clone(),
        );
        if !city_services {
            state.admit_from_outputs();
        }
        state
    });
    let board = cfg.http.addr.as_ref().zip(city.as_ref()).map(|(_, city)| {
        crate::status::StatusBoard::new(
            &registry.load(),
            city.clone(),
            cfg.http.tiles.clone(),
            metrics.clone(),
        )
    });
    let catalogue = city
        .clone()
        .filter(|_| city_services)
        .map(|state| crate::sta::Catalogue {
            state,
            registry: registry.clone(),
        });
    // Contextual subscriptions: the files', and those created over HTTP (kept in the state
    // directory), selected by the incident publisher and followed by live feeds.
    let subscriptions = crate::city::subscriptions::Subscriptions::open(
        loaded.subscriptions.clone(),
        &loaded.state_dir(),
    )?;
    let feeds = aqyl_mqtt::publish::Feeds::default();
    let reports = cfg.reports.enabled.then(|| {
        crate::reports::Reports::new(
            cfg.reports.clone(),
            &cfg.outputs.topic_prefix,
            cfg.ingest.max_future,
            metrics.clone(),
        )
    });
    let api = crate::http::Api {
        subscriptions: Some(subscriptions.clone()),
        feeds: feeds.clone(),
        prefix: cfg.outputs.topic_prefix.clone(),
        reports: reports.clone(),
    };
    let http = match (&cfg.http.addr, &board) {
        (Some(addr), Some(board)) => Some(
            crate::http::serve(
                addr,
                metrics.clone(),
                board.clone(),
                connections.http_token.clone(),
                catalogue,
                api,
            )
            .await?,
        ),
        _ => None,
    };
    let board_task = board.clone().map(|b| tokio::spawn(b.publish()));

    use aqyl_dataflow::runtime::{AGGREGATE_CAPACITY, DEADLETTER_CAPACITY, EVENT_CAPACITY};
    let (agg_tx, agg_rx) = mpsc::channel(AGGREGATE_CAPACITY);
    let (dl_tx, dl_rx) = mpsc::channel(DEADLETTER_CAPACITY);
    let (ev_tx, ev_rx) = mpsc::channel(EVENT_CAPACITY);
    let (ev_sink_tx, ev_sink_rx) = mpsc::channel(EVENT_CAPACITY);
    let (q_tx, q_rx) = mpsc::channel(aqyl_dataflow::runtime::QUALITY_BATCHES);
    let (q_sink_tx, q_sink_rx) = mpsc::channel(aqyl_dataflow::runtime::QUALITY_BATCHES);
    // The city state sees the outputs on their way, through one tee per output.
    let views = Views {
        board: board.clone(),
        city: city.clone(),
    };
    let agg_rx = views.tee(agg_rx, |c, run| c.aggregates(run));
    let ev_rx = views.tee(ev_rx, |c, run| run.iter().for_each(|e| c.event(e)));
    let q_rx = views.tee(q_rx, |c, run: &[Vec<_>]| {
        run.iter().for_each(|q| c.quality(q))
    });
    let spec = pipeline_spec(&loaded, registry.clone());
    // One process: the city state takes the readings the ingest lets in (a cluster's
    // process 0 sees only part of them there, and reads them all on a tap connection).
    let (readings_tx, readings_rx) = match city_services && cluster.is_none() {
        true => {
            let (tx, rx) = mpsc::channel(crate::city::READING_BATCHES);
            (Some(tx), Some(rx))
        }
        false => (None, None),
    };
    let outputs = Outputs {
        aggregates: agg_tx,
        deadletters: dl_tx,
        events: ev_tx,
        quality: q_tx,
        readings: readings_tx,
    };
    let (intake, running, mut durable) = if cfg.state.durable {
        let started =
            start_durable(&loaded, spec, outputs, &metrics, (cluster, stop.as_mut())).await?;
        let Some((intake, running, durable)) = started else {
            tracing::info!("Stopped before the cluster formed.");
            return Ok(());
        };
        (intake, running, Some(durable))
    } else if let Some(c) = cluster {
        let flag = c.stop.clone();
        let capacity = cfg.ingest.queue_capacity;
        let m = metrics.clone();
        let starting = tokio::task::spawn_blocking(move || {
            aqyl_dataflow::start_cluster(spec, capacity, outputs, m, c)
        });
        let (router, running) = tokio::select! {
            started = starting => started
                .context("starting the dataflow panicked")?
                .map_err(|e| anyhow::anyhow!("cannot start the dataflow: {e}"))?,
            () = &mut stop => {
                flag.store(true, std::sync::atomic::Ordering::Relaxed);
                tracing::info!("Stopped before the cluster formed.");
                return Ok(());
            }
        };
        (aqyl_mqtt::Intake::Direct(router), running, None)
    } else {
        let (router, running) =
            aqyl_dataflow::start(spec, cfg.ingest.queue_capacity, outputs, metrics.clone())
                .map_err(|e| anyhow::anyhow!("cannot start the dataflow: {e}"))?;
        (aqyl_mqtt::Intake::Direct(router), running, None)
    };
    // Recovery is done: /ready waits only for the broker's subscription acknowledgement now.
    metrics
        .started
        .store(true, std::sync::atomic::Ordering::Relaxed);
    // With MQTT aggregates on, a small tee hands every aggregate to both the sinks and the
    // publisher; otherwise the sinks read the dataflow's channel directly.
    let (sink_rx, live_rx) = if cfg.outputs.aggregates {
        let (sink_tx, sink_rx) = mpsc::channel(AGGREGATE_CAPACITY);
        let (live_tx, live_rx) = mpsc::channel(AGGREGATE_CAPACITY);
        let mut agg_rx = agg_rx;
        tokio::spawn(async move {
            while let Some(a) = agg_rx.recv().await {
                let _ = live_tx.send(a.clone()).await;
                let _ = sink_tx.send(a).await;
            }
        });
        (sink_rx, Some(live_rx))
    } else {
        (agg_rx, None)
    };
    let sink_task = tokio::spawn(aqyl_sink::run(
        sinks,
        sink_rx,
        ev_sink_rx,
        q_sink_rx,
        metrics.clone(),
    ));

    let prefix = cfg.outputs.topic_prefix.clone();
    let subscription_prefix = crate::cluster::subscription_prefix(cfg);
    let filters = crate::reload::subscriptions(
        &registry.load(),
        &subscription_prefix,
        cfg.ingest.catch_all.as_deref(),
    );
    let settings = MqttSettings {
        connector: connections.broker.clone(),
        client_id: crate::cluster::client_id(cfg, default_client_id),
        keep_alive: cfg.mqtt.keep_alive,
        clean_session: cfg.mqtt.clean_session,
        max_backoff: cfg.mqtt.max_reconnect_backoff,
        status_topic: crate::cluster::status_topic(cfg),
        filters: filters.clone(),
    };
    tracing::info!(
        broker = %connections.broker.address(),
        tls = connections.broker.settings().url.tls,
        client_id = %settings.client_id,
        topics = ?filters,
        workers = *cfg.pipeline.workers.get_ref(),
        process = crate::cluster::process(cfg),
        processes = cfg.cluster.processes(),
        window = %aqyl_core::duration::label(*cfg.pipeline.window.get_ref()),
        influx = cfg.influx.enabled,
        file = cfg.file.enabled,
        "Aqyl is starting."
    );
    let out = aqyl_mqtt::connect_output(
        &connections.broker,
        &settings.client_id,
        settings.keep_alive,
        settings.max_backoff,
        metrics.clone(),
    );
    if let Some(r) = &reports {
        r.connect(out.client.clone());
    }
    let edge = aqyl_mqtt::connect(settings, intake, metrics.clone());
    let city_tasks = CityTasks(match city.as_ref().filter(|_| city_services) {
        Some(c) => {
            let mut tasks = vec![state_topics(&loaded, c, &out, &metrics)];
            match readings_rx {
                Some(rx) => tasks.push(tokio::spawn(crate::city::feed_readings(
                    rx,
                    registry.clone(),
                    c.clone(),
                ))),
                None => tasks.extend(city_tap(
                    &loaded,
                    c,
                    &registry,
                    &edge,
                    &connections,
                    &metrics,
                )),
            }
            tasks
        }
        None => Vec::new(),
    });
    let live_task = live_rx.map(|rx| {
        tokio::spawn(aqyl_mqtt::publish::aggregates(
            out.client.clone(),
            prefix.clone(),
            rx,
            metrics.clone(),
        ))
    });
    let reload_task = reloads(
        &loaded,
        durable.as_ref(),
        (registry.clone(), edge.filters_handle(), subscription_prefix),
        &metrics,
    );
    let selector = aqyl_core::subscriptions::Selector::of(subscriptions.shared());
    let ev_task = tokio::spawn(aqyl_mqtt::publish::events(
        out.client.clone(),
        prefix.clone(),
        ev_rx,
        ev_sink_tx,
        (selector, registry.clone(), feeds),
        metrics.clone(),
    ));
    let q_task = tokio::spawn(aqyl_mqtt::publish::quality(
        out.client.clone(),
        prefix.clone(),
        q_rx,
        q_sink_tx,
        metrics.clone(),
    ));
    let dl_task = tokio::spawn(aqyl_mqtt::publish::deadletters(
        out.client.clone(),
        prefix,
        dl_rx,
        metrics.clone(),
    ));

    // In a durable cluster, a stop of another process stops this one too (with the cluster's
    // last checkpoint).
    let cluster_stop = durable
        .as_ref()
        .and_then(|d| d.control.coordinator())
        .map(|c| c.stop().clone());
    // A sink that stops before shutdown (its spill cannot be written) would lose every
    // later result: stop taking messages and exit non-zero so a supervisor restarts Aqyl.
    let mut sink_task = sink_task;
    let log_ended = async {
        match durable.as_mut() {
            Some(d) => (&mut d.log_task).await,
            None => std::future::pending().await,
        }
    };
    // A broker that refuses Aqyl for good (a certificate it does not trust, or credentials or
    // a client certificate it refuses) before the first connect is a configuration error:
    // say so and exit instead of retrying for ever.
    let ended = running.worker_ended();
    let cluster_stopping = async {
        match &cluster_stop {
            Some(s) => s.stopping().await,
            None => std::future::pending().await,
        }
    };
    let mut refused_in = edge.refused();
    let mut refused_out = out.refused();
    // A stop first: in a cluster stopped together, a peer that exits first ends this
    // process's workers too, and that is no failure once this process is stopping.
    let failed = tokio::select! {
        biased;
        () = &mut stop => None,
        () = cluster_stopping => {
            tracing::info!("Another process of the cluster stops: this one stops too, with the cluster's last checkpoint.");
            None
        }
        why = refused_in.wait() => Some(("broker", why)),
        why = refused_out.wait() => Some(("broker", why)),
        ended = &mut sink_task => Some(("sink", match ended {
            Ok(Ok(())) => "the sink stopped".to_string(),
            Ok(Err(e)) => e.to_string(),
            Err(e) => format!("the sink task panicked: {e}"),
        })),
        () = worker_ended(ended.clone()) => Some(("dataflow", worker_stopped(cfg.cluster.enabled()))),
        ended = log_ended => Some(("state", match ended {
            Ok(Ok(())) => "the ingest log writer stopped".to_string(),
            Ok(Err(e)) => format!("{e:#}"),
            Err(e) => format!("the ingest log writer panicked: {e}"),
        })),
    };
    if let Some(b) = &board {
        b.stopping();
    }
    // A worker that ends closes the outputs, so the sink may notice first: name the cause.
    let failed = match failed {
        Some(_) if ended.load(std::sync::atomic::Ordering::SeqCst) => {
            Some(("dataflow", worker_stopped(cfg.cluster.enabled())))
        }
        f => f,
    };
    if let Some((what, why)) = failed {
        drop(city_tasks);
        metrics.set_problem(what, why.clone());
        if what == "broker" {
            tracing::error!(error = %why, "The MQTT broker refuses Aqyl, which never connected: fix the configuration (or the broker's). Aqyl exits.");
        } else {
            tracing::error!(error = %why, "Aqyl cannot go on; it stops taking messages and exits so that it is restarted.");
        }
        edge.stop_ingest();
        out.close().await;
        edge.close().await;
        // Durable workers end only at a stopping checkpoint, and none is taken after a
        // failure: the next start replays the ingest log from the last one, as after a crash.
        // Joining them here would wait for ever (or, after a worker's panic, panic again);
        // they end with the process.
        std::mem::forget(running);
        if what == "broker" {
            anyhow::bail!("{why}");
        }
        anyhow::bail!("the {what} cannot go on: {why}");
    }
    if let Some(t) = reload_task {
        t.abort();
    }
    edge.stop_ingest();
    let in_cluster = durable.as_ref().is_some_and(DurableRun::is_cluster);
    if let Some(d) = durable.take_if(|d| d.is_cluster()) {
        tracing::info!("Shutting down: the cluster takes its last checkpoint (open windows are kept for the next start).");
        match d.stop_cluster().await {
            Some(true) => tracing::info!("The cluster's last checkpoint is complete; the next start goes on from here."),
            Some(false) => tracing::warn!("The cluster's last checkpoint is not complete (some outputs were not confirmed); the next start resumes from the one before and replays the ingest logs after it."),
            None => {
                // The workers end only at the last checkpoint, which was not taken: they end
                // with the process, and the next start resumes from the last complete one.
                std::mem::forget(running);
                drop(city_tasks);
                out.close().await;
                edge.close().await;
                tracing::warn!("Aqyl stopped without a last checkpoint (a process of the cluster is gone): the cluster resumes from its last complete checkpoint, and each process replays its ingest log after it.");
                return Ok(());
            }
        }
    }
    let last = match durable {
        Some(d) => {
            tracing::info!("Shutting down: checkpointing (open windows are kept for the next start) and flushing sinks.");
            Some(d.stop().await?)
        }
        None if in_cluster => None,
        None => {
            tracing::info!("Shutting down: draining windows and flushing sinks.");
            None
        }
    };
    tokio::task::spawn_blocking(move || running.join())
        .await
        .context("a dataflow worker panicked")?
        .map_err(|e| anyhow::anyhow!("the dataflow failed: {e}"))?;
    sink_task.await.context("the sink task panicked")??;
    dl_task.await.context("the dead-letter task panicked")?;
    ev_task.await.context("the event task panicked")?;
    q_task.await.context("the quality task panicked")?;
    if let Some(t) = live_task {
        t.await.context("the aggregate publisher panicked")?;
    }
    if let Some((store, snapshot)) = last {
        // Every output emitted before the last snapshot has been written or spilled.
        if metrics.delivery.covers(&snapshot.sent) {
            crate::durable::commit(&store, snapshot, &metrics).await?;
            tracing::info!("Checkpoint committed; the next start goes on from here.");
        } else {
            tracing::warn!("The last checkpoint was not committed (some outputs were not confirmed); the next start replays from the one before.");
        }
    }
    // Every output is queued: send it, then say `offline` and disconnect.
    drop(city_tasks);
    out.close().await;
    edge.close().await;
    if let Some(h) = http {
        h.abort();
    }
    if let Some(t) = board_task {
        t.abort();
    }
    let s = metrics.snapshot();
    tracing::info!(
        received = s.received,
        observations = s.observations,
        windows = s.windows_closed,
        rejected = s.rejected_total(),
        late = s.rejected(aqyl_core::Reason::Late),
        "Aqyl stopped cleanly."
    );
    Ok(())
}

/// Starts following descriptor changes, unless `reload_interval` is 0 or in a cluster without
/// durable state (see [`crate::reload`]).
fn reloads(
    loaded: &Loaded,
    durable: Option<&DurableRun>,
    (registry, filters, prefix): (
        aqyl_dataflow::SharedRegistry,
        Arc<tokio::sync::watch::Sender<Vec<String>>>,
        String,
    ),
    metrics: &Arc<Metrics>,
) -> Option<tokio::task::JoinHandle<()>> {
    let cfg = &loaded.config;
    let in_cluster = durable.and_then(|d| d.control.reloads().cloned());
    if cfg.reload_interval.is_zero() {
        return None;
    }
    if cfg.cluster.enabled() && in_cluster.is_none() {
        tracing::warn!("Descriptor changes are not reloaded in a cluster without durable state (its processes could not put them in force at one moment): restart every process to change descriptors, or set [state] durable = true.");
        return None;
    }
    let catch_all = cfg.ingest.catch_all.clone();
    let apply = match &in_cluster {
        Some(r) => crate::reload::Apply::InCluster(r.clone()),
        None => crate::reload::Apply::Now(registry.clone()),
    };
    let watch = crate::reload::watch(
        loaded.sensors_dir.clone(),
        cfg.reload_interval,
        apply,
        filters.clone(),
        prefix.clone(),
        catch_all.clone(),
        metrics.clone(),
    );
    let follow = in_cluster
        .map(|r| crate::reload::follow(r, registry, filters, (prefix, catch_all), metrics.clone()));
    Some(tokio::spawn(async move {
        match follow {
            Some(follow) => {
                tokio::join!(watch, follow);
            }
            None => watch.await,
        }
    }))
}

/// Why the service stops when a dataflow worker has ended.
fn worker_stopped(cluster: bool) -> String {
    if cluster {
        "a dataflow worker stopped: another process of the cluster died or its connection broke (see the error above); every process stops, and all must be restarted together".into()
    } else {
        "a dataflow worker stopped (see the error above)".into()
    }
}

/// Completes when a dataflow worker has ended (checked every 200 ms).
async fn worker_ended(ended: Arc<std::sync::atomic::AtomicBool>) {
    while !ended.load(std::sync::atomic::Ordering::SeqCst) {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The city services' tasks, aborted when dropped.
struct CityTasks(Vec<tokio::task::JoinHandle<()>>);

impl Drop for CityTasks {
    fn drop(&mut self) {
        for t in &self.0 {
            t.abort();
        }
    }
}

/// Starts the city tap of a cluster's process 0: its connection (following descriptor
/// reloads) and the decoding into the city state.
fn city_tap(
    loaded: &Loaded,
    city: &Arc<crate::city::state::CityState>,
    registry: &aqyl_dataflow::SharedRegistry,
    edge: &aqyl_mqtt::MqttEdge,
    connections: &crate::connections::Connections,
    metrics: &Arc<Metrics>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let cfg = &loaded.config;
    let (tap_tx, tap_rx) = mpsc::channel(crate::city::TAP_QUEUE);
    // The tap reads the types' own filters (no shared-subscription prefix, no catch-all),
    // recomputed whenever a reload changes the ingest subscriptions.
    let (filters_tx, filters_rx) = tokio::sync::watch::channel(registry.load().filters());
    let mut ingest_filters = edge.filters_handle().subscribe();
    let reg = registry.clone();
    let follow = tokio::spawn(async move {
        while ingest_filters.changed().await.is_ok() {
            let _ = filters_tx.send(reg.load().filters());
        }
    });
    let client_id = crate::cluster::client_id(cfg, default_client_id);
    let tap = aqyl_mqtt::tap::tap(
        &connections.broker,
        &client_id,
        filters_rx,
        tap_tx,
        cfg.mqtt.max_reconnect_backoff,
        metrics.clone(),
    );
    let feed = tokio::spawn(crate::city::feed(
        tap_rx,
        registry.clone(),
        city.clone(),
        cfg.ingest.max_payload_bytes,
        (!cfg.ingest.max_future.is_zero()).then_some(cfg.ingest.max_future),
    ));
    vec![follow, tap, feed]
}

/// Starts the publisher of the retained state topics (or, with `city.state_interval = "0s"`,
/// only the release of silent sensors).
fn state_topics(
    loaded: &Loaded,
    city: &Arc<crate::city::state::CityState>,
    out: &aqyl_mqtt::OutputEdge,
    metrics: &Arc<Metrics>,
) -> tokio::task::JoinHandle<()> {
    let cfg = &loaded.config;
    if cfg.city.state_interval.is_zero() {
        tokio::spawn(crate::city::topics::sweep(city.clone()))
    } else {
        tokio::spawn(crate::city::topics::publish(
            out.client.clone(),
            cfg.outputs.topic_prefix.clone(),
            city.clone(),
            cfg.city.state_interval,
            metrics.clone(),
        ))
    }
}

/// A durable run's moving parts.
struct DurableRun {
    store: Arc<aqyl_state::Store>,
    control: Arc<aqyl_dataflow::checkpoint::Control>,
    /// The ingest log writer (a blocking thread).
    log_task: tokio::task::JoinHandle<anyhow::Result<()>>,
    /// Periodic checkpoints.
    checkpoints: Checkpoints,
    stop_checkpoints: tokio::sync::watch::Sender<bool>,
}

/// The task taking a durable run's checkpoints.
enum Checkpoints {
    /// One process's; hands the snapshot channel back when stopped.
    One(tokio::task::JoinHandle<mpsc::UnboundedReceiver<aqyl_dataflow::checkpoint::Snapshot>>),
    /// A cluster's; ends with the cluster's last checkpoint (whether it is complete), or
    /// without one (`None`) when a process is gone.
    Cluster(tokio::task::JoinHandle<Option<bool>>),
}

impl DurableRun {
    /// Whether it is a process of a cluster.
    fn is_cluster(&self) -> bool {
        matches!(self.checkpoints, Checkpoints::Cluster(_))
    }

    /// After ingest has stopped, in a cluster: stops the cluster (see
    /// [`aqyl_dataflow::stop`]), lets the log writer finish (everything acknowledged is
    /// logged), says so, and waits for the cluster's last checkpoint. `Some(complete)` once
    /// the workers took it and ended; `None` when a process is gone first.
    async fn stop_cluster(self) -> Option<bool> {
        let Checkpoints::Cluster(checkpoints) = self.checkpoints else {
            return None;
        };
        let coordinator = self.control.coordinator().cloned();
        let tell = |r: Result<(), String>| {
            if let Err(e) = r {
                tracing::warn!(error = %e, "Cannot tell the cluster that this process stops.");
            }
        };
        if let Some(c) = &coordinator {
            tell(c.stop_cluster());
        }
        if let Ok(Err(e)) = self.log_task.await {
            tracing::warn!(error = %format!("{e:#}"), "The ingest log writer failed while stopping.");
        }
        if let Some(c) = &coordinator {
            tell(c.drained());
        }
        checkpoints.await.ok().flatten()
    }

    /// After ingest has stopped: lets the log writer finish, stops the periodic checkpoints
    /// and takes the last one, with `stop` (the workers end without flushing open windows).
    async fn stop(
        self,
    ) -> anyhow::Result<(Arc<aqyl_state::Store>, aqyl_dataflow::checkpoint::Snapshot)> {
        match self.log_task.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::warn!(error = %format!("{e:#}"), "The ingest log writer failed while stopping.")
            }
            Err(e) => tracing::warn!(error = %e, "The ingest log writer panicked."),
        }
        let _ = self.stop_checkpoints.send(true);
        let Checkpoints::One(checkpoints) = self.checkpoints else {
            anyhow::bail!("a cluster's process stops with the cluster");
        };
        let mut taken = checkpoints.await.context("the checkpoint task panicked")?;
        self.control.request(true);
        let snapshot = tokio::time::timeout(Duration::from_secs(120), taken.recv())
            .await
            .ok()
            .flatten()
            .context("the workers did not take the last checkpoint")?;
        Ok((self.store, snapshot))
    }
}

/// Opens the state file, starts the dataflow from its checkpoint (in a cluster: the one the
/// processes agree on), replays the ingest log after it, and starts the log writer and the
/// periodic checkpoints. `None` when `stop` came before the cluster formed.
async fn start_durable(
    loaded: &Loaded,
    spec: PipelineSpec,
    outputs: Outputs,
    metrics: &Arc<Metrics>,
    (cluster, stop): (
        Option<aqyl_dataflow::cluster::ClusterSpec>,
        std::pin::Pin<&mut impl Future<Output = ()>>,
    ),
) -> anyhow::Result<Option<(aqyl_mqtt::Intake, aqyl_dataflow::Running, DurableRun)>> {
    let cfg = &loaded.config;
    let dir = loaded.state_dir();
    let (store, snapshot) = crate::durable::open(&dir)?;
    let rules: Vec<String> = loaded.rules.iter().map(|r| r.name.clone()).collect();
    let (control, taken) =
        aqyl_dataflow::checkpoint::Control::new(spec.workers.max(1), rules.clone());
    let control = Arc::new(control);
    let in_cluster = cluster.is_some();
    let capacity = cfg.ingest.queue_capacity;
    let cannot =
        |e: String| anyhow::anyhow!("cannot start the dataflow from {}: {e}", dir.display());
    let (router, running, snapshot) = match cluster {
        None => {
            let durable = aqyl_dataflow::Durable {
                control: control.clone(),
                restore: snapshot.clone(),
                held: Default::default(),
            };
            let (router, running) =
                aqyl_dataflow::start_durable(spec, capacity, outputs, metrics.clone(), durable)
                    .map_err(cannot)?;
            (router, running, snapshot)
        }
        Some(c) => {
            let held = crate::durable::cluster_holdings(&store, snapshot)?;
            let digest = crate::reload::digest(&loaded.sensor_types);
            let reloads =
                aqyl_dataflow::reload::Reloads::new(spec.registry.clone(), digest, metrics.clone());
            control.follow_reloads(Arc::new(reloads));
            let durable = aqyl_dataflow::Durable {
                control: control.clone(),
                restore: None,
                held: held.clone(),
            };
            let flag = c.stop.clone();
            let m = metrics.clone();
            let starting = tokio::task::spawn_blocking(move || {
                aqyl_dataflow::start_cluster_durable(spec, capacity, outputs, m, (c, durable))
            });
            let (router, running) = tokio::select! {
                started = starting => started.context("starting the dataflow panicked")?.map_err(cannot)?,
                () = stop => {
                    flag.store(true, std::sync::atomic::Ordering::Relaxed);
                    return Ok(None);
                }
            };
            let restored = running.restored();
            crate::durable::settle_holdings(&store, restored)?;
            (router, running, held.take(restored))
        }
    };
    if let Some(s) = &snapshot {
        tracing::info!(
            state = %store.path().display(),
            taken_at = %aqyl_core::output::rfc3339_ms(s.taken_at),
            checkpoint = s.id,
            "Restoring the dataflow from its last checkpoint."
        );
        for gone in s.rules.iter().filter(|r| !rules.contains(r)) {
            tracing::info!(rule = %gone, "A rule of the checkpoint no longer exists: its ongoing incidents end now and its state is dropped.");
        }
    }
    {
        let (store, router, metrics) = (store.clone(), router.clone(), metrics.clone());
        tokio::task::spawn_blocking(move || {
            crate::durable::recover(&store, &router, snapshot.as_ref(), &metrics)
        })
        .await
        .context("the recovery panicked")??;
    }
    let (log_tx, log_rx) = mpsc::channel(cfg.ingest.queue_capacity.max(1));
    let (durable_tx, durable_rx) = tokio::sync::watch::channel(0u64);
    let log_task = {
        let store = store.clone();
        tokio::task::spawn_blocking(move || {
            crate::durable::log_writer(store, router, log_rx, durable_tx)
        })
    };
    let (stop_checkpoints, stop_rx) = tokio::sync::watch::channel(false);
    let interval = cfg.state.checkpoint_interval;
    let (s, c, m) = (store.clone(), control.clone(), metrics.clone());
    let checkpoints = if in_cluster {
        let intervals = (interval, cfg.reload_interval);
        Checkpoints::Cluster(tokio::spawn(crate::durable::cluster_checkpointer(
            s, c, taken, intervals, m,
        )))
    } else {
        Checkpoints::One(tokio::spawn(crate::durable::checkpointer(
            s, c, taken, interval, m, stop_rx,
        )))
    };
    let intake = aqyl_mqtt::Intake::Logged(aqyl_mqtt::LogIntake {
        tx: log_tx,
        durable: durable_rx,
    });
    let run = DurableRun {
        store,
        control,
        log_task,
        checkpoints,
        stop_checkpoints,
    };
    Ok(Some((intake, running, run)))
}

/// The sinks `[influx]` and `[file]` configure (either may be absent).
pub fn sinks(loaded: &Loaded) -> anyhow::Result<Sinks> {
    let cfg = &loaded.config;
    Ok(Sinks {
        influx: if cfg.influx.enabled {
            Some(InfluxSink::new(InfluxTarget {
                url: cfg.influx.url.clone(),
                org: cfg.influx.org.clone(),
                bucket: cfg.influx.bucket.clone(),
                token: cfg.influx.token.clone(),
                ca_file: cfg.influx.ca_file.clone(),
                max_backoff: cfg.influx.max_backoff,
                write_timeout: cfg.influx.write_timeout,
                spill_dir: loaded.state_dir().join(&cfg.influx.spill_dir),
                rejected_dir: loaded.state_dir().join("rejected/influx"),
                max_spill: cfg.influx.max_spill,
                // Before [state] dir, the spill lived beside the config file.
                adopt_from: vec![loaded
                    .path
                    .parent()
                    .unwrap_or(std::path::Path::new("."))
                    .join("spill/influx")],
            })?)
        } else {
            None
        },
        file: if cfg.file.enabled {
            Some(FileSink::open(&cfg.file.dir)?)
        } else {
            None
        },
        batch_size: cfg.influx.batch_size,
        flush_interval: cfg.influx.flush_interval,
    })
}

/// What watches the dataflow's outputs: the city state (which the status page shows).
struct Views {
    board: Option<Arc<crate::status::StatusBoard>>,
    city: Option<Arc<crate::city::state::CityState>>,
}

/// Most items the city state's tee takes at once.
const TEE_RUN: usize = 256;

impl Views {
    /// Passes every item of `rx` on (in order, waiting while the next stage is behind) after
    /// showing it to the city state with `see`; `rx` itself when there is no city state. If
    /// `rx` ends before the service stops, the dataflow's workers have stopped: the board
    /// tells `/health`.
    ///
    /// Items move in runs of up to [`TEE_RUN`] (whatever has queued up), so the city state is
    /// locked once a run and neither channel is touched once an item.
    fn tee<T: Send + 'static>(
        &self,
        mut rx: mpsc::Receiver<T>,
        see: fn(&crate::city::state::CityState, &[T]),
    ) -> mpsc::Receiver<T> {
        let Some(city) = self.city.clone() else {
            return rx;
        };
        let board = self.board.clone();
        let (tx, out) = mpsc::channel(rx.max_capacity());
        let run = TEE_RUN.min(rx.max_capacity());
        tokio::spawn(async move {
            let mut items = Vec::with_capacity(run);
            while rx.recv_many(&mut items, run).await > 0 {
                see(&city, &items);
                let Ok(permits) = tx.reserve_many(items.len()).await else {
                    return;
                };
                for (permit, item) in permits.zip(items.drain(..)) {
                    permit.send(item);
                }
            }
            if let Some(b) = &board {
                b.output_ended();
            }
        });
        out
    }
}

/// The dataflow `aqyl run` builds from a configuration (`aqyl replay` starts from the same).
pub fn pipeline_spec(loaded: &Loaded, registry: aqyl_dataflow::SharedRegistry) -> PipelineSpec {
    let cfg = &loaded.config;
    PipelineSpec {
        corroborate: Arc::new(loaded.corroborate.clone()),
        registry,
        workers: *cfg.pipeline.workers.get_ref(),
        window: *cfg.pipeline.window.get_ref(),
        allowed_lateness: cfg.pipeline.allowed_lateness,
        idle_timeout: (!cfg.pipeline.idle_timeout.is_zero()).then_some(cfg.pipeline.idle_timeout),
        max_payload_bytes: cfg.ingest.max_payload_bytes,
        max_future: (!cfg.ingest.max_future.is_zero()).then_some(cfg.ingest.max_future),
        rules: Arc::new(loaded.rules.clone()),
        update_horizon: (cfg.pipeline.late == aqyl_core::config::LatePolicy::Update)
            .then_some(cfg.pipeline.update_horizon),
        quality: quality_spec(cfg),
        rule_timing: cfg.pipeline.rule_timing,
        state_ttl: (!cfg.pipeline.state_ttl.is_zero()).then_some(cfg.pipeline.state_ttl),
    }
}

/// The dataflow's quality settings from `[quality]` (`None` when disabled). The `auto` clock
/// is the wall clock when the pipeline runs live (an idle timeout is set) and event time for
/// replays.
pub fn quality_spec(
    cfg: &aqyl_core::config::Config,
) -> Option<aqyl_dataflow::quality::QualitySpec> {
    cfg.quality.enabled.then(|| {
        aqyl_dataflow::quality::QualitySpec::from_config(
            &cfg.quality,
            !cfg.pipeline.idle_timeout.is_zero(),
        )
    })
}
