//! The service: builds the pipeline from a configuration, runs it, drains it on shutdown.

use anyhow::Context;
use aqyl_core::config::{Loaded, MqttUrl};
use aqyl_core::decode::Registry;
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
    let registry = aqyl_dataflow::shared(Registry::new(loaded.sensor_types.clone()));
    let url = MqttUrl::parse(cfg.mqtt.url.get_ref()).map_err(anyhow::Error::msg)?;
    if url.tls {
        anyhow::bail!("mqtts:// is not supported yet: connect over mqtt:// (e.g. through a local TLS-terminating broker bridge)");
    }

    let sinks = sinks(&loaded)?;
    if sinks.influx.is_none() && sinks.file.is_none() {
        tracing::warn!("No sink is enabled: aggregates are computed but not stored. Enable [influx] or [file], or set AQYL_INFLUX_URL.");
    }

    let http = match &cfg.http.addr {
        Some(addr) => Some(crate::http::serve(addr, metrics.clone()).await?),
        None => None,
    };

    let (agg_tx, agg_rx) = mpsc::unbounded_channel();
    let (dl_tx, dl_rx) = mpsc::unbounded_channel();
    let (ev_tx, ev_rx) = mpsc::unbounded_channel();
    let (ev_sink_tx, ev_sink_rx) = mpsc::unbounded_channel();
    let (q_tx, q_rx) = mpsc::channel(aqyl_dataflow::runtime::QUALITY_BATCHES);
    let (q_sink_tx, q_sink_rx) = mpsc::channel(aqyl_dataflow::runtime::QUALITY_BATCHES);
    let spec = pipeline_spec(&loaded, registry.clone());
    let (router, running) = aqyl_dataflow::start(
        spec,
        cfg.ingest.queue_capacity,
        Outputs {
            aggregates: agg_tx,
            deadletters: dl_tx,
            events: ev_tx,
            quality: q_tx,
        },
        metrics.clone(),
    )
    .map_err(|e| anyhow::anyhow!("cannot start the dataflow: {e}"))?;
    // With MQTT aggregates on, a small tee hands every aggregate to both the sinks and the
    // publisher; otherwise the sinks read the dataflow's channel directly.
    let (sink_rx, live_rx) = if cfg.outputs.aggregates {
        let (sink_tx, sink_rx) = mpsc::unbounded_channel();
        let (live_tx, live_rx) = mpsc::unbounded_channel();
        let mut agg_rx = agg_rx;
        tokio::spawn(async move {
            while let Some(a) = agg_rx.recv().await {
                let _ = live_tx.send(a.clone());
                let _ = sink_tx.send(a);
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
    let filters = crate::reload::subscriptions(
        &registry.load(),
        &cfg.mqtt.subscription_prefix,
        cfg.ingest.catch_all.as_deref(),
    );
    let settings = MqttSettings {
        url,
        client_id: cfg.mqtt.client_id.clone().unwrap_or_else(default_client_id),
        credentials: cfg
            .mqtt
            .username
            .clone()
            .zip(cfg.mqtt.password.as_ref().map(|p| p.expose().to_string())),
        keep_alive: cfg.mqtt.keep_alive,
        clean_session: cfg.mqtt.clean_session,
        max_backoff: cfg.mqtt.max_reconnect_backoff,
        status_topic: format!("{prefix}/status"),
        filters: filters.clone(),
    };
    tracing::info!(
        broker = %cfg.mqtt.url.get_ref(),
        client_id = %settings.client_id,
        topics = ?filters,
        workers = *cfg.pipeline.workers.get_ref(),
        window = %aqyl_core::duration::label(*cfg.pipeline.window.get_ref()),
        influx = cfg.influx.enabled,
        file = cfg.file.enabled,
        "Aqyl is starting."
    );
    let edge = aqyl_mqtt::connect(settings, router, metrics.clone());
    let live_task = live_rx.map(|rx| {
        tokio::spawn(aqyl_mqtt::publish::aggregates(
            edge.client.clone(),
            prefix.clone(),
            rx,
            metrics.clone(),
        ))
    });
    let reload_task = (!loaded.config.reload_interval.is_zero()).then(|| {
        tokio::spawn(crate::reload::watch(
            loaded.sensors_dir.clone(),
            loaded.config.reload_interval,
            registry.clone(),
            edge.filters_handle(),
            cfg.mqtt.subscription_prefix.clone(),
            cfg.ingest.catch_all.clone(),
            metrics.clone(),
        ))
    });
    let ev_task = tokio::spawn(aqyl_mqtt::publish::events(
        edge.client.clone(),
        prefix.clone(),
        ev_rx,
        ev_sink_tx,
        metrics.clone(),
    ));
    let q_task = tokio::spawn(aqyl_mqtt::publish::quality(
        edge.client.clone(),
        prefix.clone(),
        q_rx,
        q_sink_tx,
        metrics.clone(),
    ));
    let dl_task = tokio::spawn(aqyl_mqtt::publish::deadletters(
        edge.client.clone(),
        prefix,
        dl_rx,
        metrics.clone(),
    ));

    // A sink that stops before shutdown (its spill cannot be written) would lose every
    // later result: stop taking messages and exit non-zero so a supervisor restarts Aqyl.
    let mut sink_task = sink_task;
    let sink_failed = tokio::select! {
        () = stop => None,
        ended = &mut sink_task => Some(ended),
    };
    if let Some(ended) = sink_failed {
        let why = match ended {
            Ok(Ok(())) => "the sink stopped".to_string(),
            Ok(Err(e)) => e.to_string(),
            Err(e) => format!("the sink task panicked: {e}"),
        };
        metrics.set_problem("sink", why.clone());
        tracing::error!(error = %why, "The sink cannot go on; Aqyl stops taking messages and exits so that it is restarted.");
        edge.stop_ingest();
        edge.close().await;
        anyhow::bail!("the sink cannot go on: {why}");
    }
    if let Some(t) = reload_task {
        t.abort();
    }
    tracing::info!("Shutting down: draining windows and flushing sinks.");
    edge.stop_ingest();
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
    // Give the connection a moment to hand queued publishes to the broker.
    tokio::time::sleep(Duration::from_millis(50)).await;
    edge.close().await;
    if let Some(h) = http {
        h.abort();
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

/// The sinks `[influx]` and `[file]` configure (either may be absent).
pub fn sinks(loaded: &Loaded) -> anyhow::Result<Sinks> {
    let cfg = &loaded.config;
    Ok(Sinks {
        influx: if cfg.influx.enabled {
            Some(InfluxSink::new(InfluxTarget {
                url: cfg.influx.url.clone(),
                org: cfg.influx.org.clone(),
                bucket: cfg.influx.bucket.clone(),
                token: cfg.influx.token.expose().to_string(),
                max_backoff: cfg.influx.max_backoff,
                write_timeout: cfg.influx.write_timeout,
                spill_dir: loaded.state_dir().join(&cfg.influx.spill_dir),
                rejected_dir: loaded.state_dir().join("rejected/influx"),
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

/// The dataflow `aqyl run` builds from a configuration (`aqyl replay` starts from the same).
pub fn pipeline_spec(loaded: &Loaded, registry: aqyl_dataflow::SharedRegistry) -> PipelineSpec {
    let cfg = &loaded.config;
    PipelineSpec {
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
