//! The connection task: poll, route, acknowledge, reconnect with backoff, drain on shutdown.

use aqyl_connect::Connector;
use aqyl_core::metrics::Metrics;
use aqyl_core::RawMessage;
use aqyl_dataflow::input::Router;
use rumqttc::{AsyncClient, Event, EventLoop, LastWill, Outgoing, Packet, QoS};
use std::collections::VecDeque;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

/// Largest MQTT packet accepted from the broker. Larger packets make rumqttc drop the
/// connection, and the broker would redeliver the same message forever, so this is far above
/// any sensible payload; Aqyl's own `ingest.max_payload_bytes` limit dead-letters below it.
const MAX_PACKET_BYTES: usize = 256 * 1024 * 1024;

/// How to reach the broker and what to subscribe to.
#[derive(Debug, Clone)]
pub struct MqttSettings {
    /// Broker address, transport (TLS) and credentials.
    pub connector: Connector,
    /// Client id (unique per instance, stable across restarts).
    pub client_id: String,
    /// Keep-alive.
    pub keep_alive: Duration,
    /// Clean session (off: the broker queues QoS 1 messages while Aqyl is away).
    pub clean_session: bool,
    /// Longest reconnect backoff.
    pub max_backoff: Duration,
    /// Retained `online`/`offline` topic.
    pub status_topic: String,
    /// Subscription filters (QoS 1).
    pub filters: Vec<String>,
}

/// Where received messages go.
pub enum Intake {
    /// Straight to the dataflow's workers; acknowledged once queued for a worker.
    Direct(Router),
    /// Through the ingest log ([`LogIntake`]); acknowledged once on disk.
    Logged(LogIntake),
}

/// The ingest log's side of the connection: messages are handed over in order, and
/// `durable` counts how many of them (from the first ever handed over) are on disk.
pub struct LogIntake {
    /// Messages to log.
    pub tx: tokio::sync::mpsc::Sender<RawMessage>,
    /// How many handed-over messages are durable.
    pub durable: watch::Receiver<u64>,
}

impl Intake {
    /// Hands a message over if there is room: `Ok(true)` taken, `Ok(false)` the other side
    /// has stopped, `Err(msg)` no room now (the message is handed back).
    fn try_take(&self, msg: RawMessage) -> Result<bool, RawMessage> {
        match self {
            Intake::Direct(router) => router.try_route(msg),
            Intake::Logged(log) => match log.tx.try_send(msg) {
                Ok(()) => Ok(true),
                Err(tokio::sync::mpsc::error::TrySendError::Closed(_)) => Ok(false),
                Err(tokio::sync::mpsc::error::TrySendError::Full(m)) => Err(m),
            },
        }
    }

    /// Waits until a message of `topic` would be taken; false once the other side stopped.
    async fn ready(&self, topic: &str) -> bool {
        match self {
            Intake::Direct(router) => router.ready(topic).await,
            Intake::Logged(log) => log.tx.reserve().await.is_ok(),
        }
    }
}

/// Handle on the running connection task.
pub struct MqttEdge {
    /// Client for publishing outputs on the same connection.
    pub client: AsyncClient,
    stop_ingest: watch::Sender<bool>,
    filters: Arc<watch::Sender<Vec<String>>>,
    finish: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
    refused: crate::Refused,
}

impl MqttEdge {
    /// Completes if the broker refuses this connection for good before it ever connected.
    pub fn refused(&self) -> crate::Refused {
        self.refused.clone()
    }

    /// Stops taking messages from the broker and drops the router, so the dataflow drains.
    /// Messages that arrive after this are not acknowledged; with a persistent session the
    /// broker delivers them again on the next start.
    pub fn stop_ingest(&self) {
        let _ = self.stop_ingest.send(true);
    }

    /// Replaces the subscriptions (after a descriptor reload): new filters are subscribed,
    /// dropped ones unsubscribed, and reconnects use the new set.
    pub fn set_filters(&self, filters: Vec<String>) {
        let _ = self.filters.send(filters);
    }

    /// A handle for changing the subscriptions from another task.
    pub fn filters_handle(&self) -> Arc<watch::Sender<Vec<String>>> {
        self.filters.clone()
    }

    /// Publishes `offline`, disconnects cleanly and waits for the task to end. Call after
    /// every output has been published.
    pub async fn close(mut self) {
        self.stop_ingest();
        if let Some(f) = self.finish.take() {
            let _ = f.send(());
        }
        let _ = tokio::time::timeout(Duration::from_secs(10), &mut self.task).await;
    }
}

/// Connects (in the background, retrying) and starts the connection task.
pub fn connect(settings: MqttSettings, intake: Intake, metrics: Arc<Metrics>) -> MqttEdge {
    let mut options = settings.connector.options(&settings.client_id);
    options
        .set_keep_alive(settings.keep_alive.max(Duration::from_secs(1)))
        .set_clean_session(settings.clean_session)
        .set_manual_acks(true)
        .set_max_packet_size(MAX_PACKET_BYTES, MAX_PACKET_BYTES)
        .set_request_channel_capacity(4096)
        .set_inflight(1024)
        .set_last_will(LastWill::new(
            &settings.status_topic,
            "offline",
            QoS::AtLeastOnce,
            true,
        ));
    let (client, eventloop) = AsyncClient::new(options, 4096);
    let (stop_tx, stop_rx) = watch::channel(false);
    let (finish_tx, finish_rx) = oneshot::channel();
    let (filters_tx, filters_rx) = watch::channel(settings.filters.clone());
    let (refused_tx, refused) = crate::Refused::channel();
    let controls = Controls {
        filters: filters_rx,
        stop: stop_rx,
        finish: finish_rx,
        refused: refused_tx,
    };
    let task = tokio::spawn(run(
        settings,
        client.clone(),
        eventloop,
        intake,
        metrics,
        controls,
    ));
    MqttEdge {
        client,
        stop_ingest: stop_tx,
        filters: Arc::new(filters_tx),
        finish: Some(finish_tx),
        task,
        refused,
    }
}

/// How the service steers the connection task.
struct Controls {
    /// New subscription filters (descriptor reloads).
    filters: watch::Receiver<Vec<String>>,
    /// Stop taking messages (drain).
    stop: watch::Receiver<bool>,
    /// Say `offline` and disconnect.
    finish: oneshot::Receiver<()>,
    /// Set when the broker refuses the connection for good before it ever connected.
    refused: watch::Sender<Option<String>>,
}

async fn run(
    settings: MqttSettings,
    client: AsyncClient,
    mut eventloop: EventLoop,
    intake: Intake,
    metrics: Arc<Metrics>,
    controls: Controls,
) {
    let Controls {
        filters: mut filters_rx,
        mut stop,
        mut finish,
        refused,
    } = controls;
    let mut connected_once = false;
    // With a log, a message is acknowledged once the log says it is durable (`durable`
    // counts handed-over messages); without, once it is queued for a worker.
    let mut durable = match &intake {
        Intake::Logged(log) => Some(log.durable.clone()),
        Intake::Direct(_) => None,
    };
    let mut hand = HandOver {
        router: Some(intake),
        waiting: VecDeque::new(),
        handed_over: 0,
        safe: 0,
        logged: durable.is_some(),
        pending_acks: VecDeque::new(),
    };
    let mut backoff = aqyl_core::backoff::Backoff::new(settings.max_backoff);
    let mut finishing = false;
    let mut filters = settings.filters.clone();
    // While the dataflow has no room, the event loop is still polled this often, so the
    // keep-alive goes out and the broker does not drop the connection.
    let mut keep_alive = tokio::time::interval(settings.keep_alive.max(Duration::from_secs(1)) / 2);
    let mut poll_anyway = false;
    loop {
        let next_topic = hand.waiting.front().map(|(m, _)| m.topic.clone());
        tokio::select! {
            biased;
            _ = filters_rx.changed() => {
                let new = filters_rx.borrow_and_update().clone();
                for f in new.iter().filter(|f| !filters.contains(f)) {
                    tracing::info!(filter = %f, "Subscribing to a new sensor topic.");
                    let _ = client.try_subscribe(f.clone(), QoS::AtLeastOnce);
                }
                for f in filters.iter().filter(|f| !new.contains(f)) {
                    tracing::info!(filter = %f, "Unsubscribing from a removed sensor topic.");
                    let _ = client.try_unsubscribe(f.clone());
                }
                filters = new;
            }
            _ = stop.changed(), if hand.router.is_some() => {
                tracing::info!("Stopped taking messages from the broker.");
                hand.router = None;
                hand.waiting.clear();
            }
            changed = async { durable.as_mut()?.changed().await.ok() }, if durable.is_some() => {
                match changed {
                    Some(()) => hand.safe = durable.as_mut().map_or(hand.safe, |d| *d.borrow_and_update()),
                    None => durable = None,
                }
            }
            ready = async {
                match (&hand.router, &next_topic) {
                    (Some(r), Some(topic)) => r.ready(topic).await,
                    _ => std::future::pending().await,
                }
            }, if next_topic.is_some() => {
                if ready {
                    hand.drain();
                } else {
                    hand.router = None;
                    hand.waiting.clear();
                }
            }
            _ = keep_alive.tick(), if next_topic.is_some() => poll_anyway = true,
            _ = &mut finish, if !finishing => {
                finishing = true;
                let _ = client.try_publish(&settings.status_topic, QoS::AtLeastOnce, true, "offline");
                let _ = client.try_disconnect();
            }
            event = eventloop.poll(), if next_topic.is_none() || poll_anyway => { poll_anyway = false; match event {
                Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                    backoff.reset();
                    connected_once = true;
                    metrics.clear_problem("broker");
                    tracing::info!(broker = %settings.connector.address(), session_present = ack.session_present, "Connected to the MQTT broker.");
                    let subs = filters.iter().map(|f| rumqttc::SubscribeFilter::new(f.clone(), QoS::AtLeastOnce));
                    if let Err(e) = client.try_subscribe_many(subs) {
                        tracing::error!(error = %e, "Could not queue the subscriptions.");
                    }
                    let _ = client.try_publish(&settings.status_topic, QoS::AtLeastOnce, true, "online");
                }
                Ok(Event::Incoming(Packet::SubAck(ack))) => {
                    metrics.subscriptions.store(filters.len() as u64, Relaxed);
                    for (filter, code) in filters.iter().zip(&ack.return_codes) {
                        if matches!(code, rumqttc::SubscribeReasonCode::Failure) {
                            tracing::error!(%filter, "The broker refused the subscription; check its ACLs.");
                        }
                    }
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    if hand.router.is_none() {
                        continue;
                    }
                    metrics.received.fetch_add(1, Relaxed);
                    let msg = RawMessage { topic: p.topic.clone(), payload: p.payload.to_vec(), received_at: now_ms() };
                    hand.waiting.push_back((msg, p));
                    hand.drain();
                }
                Ok(Event::Outgoing(Outgoing::Disconnect)) if finishing => break,
                Ok(_) => {}
                Err(e) => {
                    if finishing {
                        break;
                    }
                    metrics.mqtt_connection_errors.fetch_add(1, Relaxed);
                    let why = settings.connector.explain(&e);
                    // Shown by /health until the next connection; /ready waits for the
                    // subscriptions again.
                    metrics.subscriptions.store(0, Relaxed);
                    metrics.set_problem("broker", format!("the ingest connection is down: {why}"));
                    if aqyl_connect::is_permanent(&e) {
                        if !connected_once {
                            let _ = refused.send(Some(why.clone()));
                        }
                        tracing::error!(error = %why, retry_in_ms = backoff.current().as_millis() as u64, "The MQTT broker refuses the connection; retrying.");
                    } else {
                        tracing::warn!(error = %why, retry_in_ms = backoff.current().as_millis() as u64, "MQTT connection failed; reconnecting.");
                    }
                    // Unacknowledged messages will be redelivered by the broker; their acks
                    // belong to the old connection.
                    hand.pending_acks.clear();
                    tokio::select! {
                        _ = tokio::time::sleep(backoff.next_wait()) => {}
                        _ = &mut finish, if !finishing => break,
                    }
                }
            }}
        }
        while let Some((ticket, p)) = hand.pending_acks.front() {
            if *ticket > hand.safe || client.try_ack(p).is_err() {
                break;
            }
            hand.pending_acks.pop_front();
        }
    }
}

/// Received messages on their way into the dataflow, and their acknowledgements.
struct HandOver {
    /// Where messages go; `None` once ingest has stopped.
    router: Option<Intake>,
    /// Received, not yet taken (no room): handed over in order as room comes.
    waiting: VecDeque<(RawMessage, rumqttc::Publish)>,
    /// Messages handed over so far (tickets).
    handed_over: u64,
    /// Messages that may be acknowledged (all handed-over ones without a log; the log's
    /// durable count with one).
    safe: u64,
    /// Whether an ingest log decides what is safe.
    logged: bool,
    /// Handed-over messages not yet acknowledged, by ticket.
    pending_acks: VecDeque<(u64, rumqttc::Publish)>,
}

impl HandOver {
    /// Hands over waiting messages, in order, while there is room.
    fn drain(&mut self) {
        while let Some((msg, p)) = self.waiting.pop_front() {
            let Some(r) = &self.router else {
                self.waiting.clear();
                return;
            };
            match r.try_take(msg) {
                Ok(true) => {
                    self.handed_over += 1;
                    if !self.logged {
                        self.safe = self.handed_over;
                    }
                    self.pending_acks.push_back((self.handed_over, p));
                }
                Ok(false) => {
                    self.router = None;
                    self.waiting.clear();
                }
                Err(msg) => {
                    self.waiting.push_front((msg, p));
                    return;
                }
            }
        }
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
