//! The output connection: a second MQTT connection that only publishes Aqyl's outputs
//! (incidents, quality reports, dead letters, aggregates).
//!
//! Publishing never depends on ingest: when the workers are full and the ingest connection
//! waits for room, this connection keeps sending, so the outputs drain, the workers go on and
//! the ingest connection gets its room back. (On one shared connection the two would wait for
//! each other.)

use aqyl_connect::Connector;
use aqyl_core::metrics::Metrics;
use rumqttc::{AsyncClient, Event, Outgoing, Packet};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// Handle on the output connection.
pub struct OutputEdge {
    /// Client for publishing outputs.
    pub client: AsyncClient,
    finish: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
    refused: crate::Refused,
}

impl OutputEdge {
    /// Completes if the broker refuses this connection for good before it ever connected.
    pub fn refused(&self) -> crate::Refused {
        self.refused.clone()
    }

    /// Disconnects after the queued publishes and waits (at most 10 s) until the broker has
    /// closed the connection, i.e. has read every one of them.
    pub async fn close(mut self) {
        if let Some(f) = self.finish.take() {
            let _ = f.send(());
        }
        let _ = tokio::time::timeout(Duration::from_secs(10), &mut self.task).await;
    }
}

/// Connects (in the background, retrying) as `<client_id>-out`.
pub fn connect_output(
    connector: &Connector,
    client_id: &str,
    keep_alive: Duration,
    max_backoff: Duration,
    metrics: Arc<Metrics>,
) -> OutputEdge {
    let mut options = connector.options(format!("{client_id}-out"));
    options
        .set_keep_alive(keep_alive.max(Duration::from_secs(1)))
        .set_clean_session(true)
        .set_request_channel_capacity(4096)
        .set_inflight(1024);
    let (client, mut eventloop) = AsyncClient::new(options, 4096);
    let (finish_tx, mut finish) = oneshot::channel::<()>();
    let (refused_tx, refused) = crate::Refused::channel();
    let disconnect = client.clone();
    let connector = connector.clone();
    let task = tokio::spawn(async move {
        let mut backoff = aqyl_core::backoff::Backoff::new(max_backoff);
        let mut finishing = false;
        let mut connected_once = false;
        loop {
            tokio::select! {
                _ = &mut finish, if !finishing => {
                    finishing = true;
                    // Queued after every publish, so they go out first.
                    let _ = disconnect.try_disconnect();
                }
                event = eventloop.poll() => match event {
                    // Not done yet: the broker has taken every publish before the
                    // DISCONNECT only when it closes the connection (which it does after
                    // reading it). Only then may `offline` go out on the ingest connection,
                    // or a subscriber could see it before the last outputs.
                    Ok(Event::Outgoing(Outgoing::Disconnect)) if finishing => {}
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        connected_once = true;
                        metrics.clear_problem("broker output");
                        backoff.reset();
                    }
                    Ok(_) => backoff.reset(),
                    Err(e) => {
                        if finishing {
                            break;
                        }
                        metrics.mqtt_connection_errors.fetch_add(1, Relaxed);
                        let why = connector.explain(&e);
                        metrics.set_problem("broker output", format!("the output connection is down: {why}"));
                        if aqyl_connect::is_permanent(&e) {
                            if !connected_once {
                                let _ = refused_tx.send(Some(why.clone()));
                            }
                            tracing::error!(error = %why, retry_in_ms = backoff.current().as_millis() as u64, "The MQTT broker refuses the output connection; retrying.");
                        } else {
                            tracing::warn!(error = %why, retry_in_ms = backoff.current().as_millis() as u64, "MQTT output connection failed; reconnecting.");
                        }
                        tokio::time::sleep(backoff.next_wait()).await;
                    }
                }
            }
        }
    });
    OutputEdge {
        client,
        finish: Some(finish_tx),
        task,
        refused,
    }
}
