//! The city tap: a connection of its own that reads the sensor topics at QoS 0 for the city
//! services (live state, sensor catalogue), apart from ingest.
//!
//! Apart, because the city state is a view, not the record: it must never slow ingest down
//! nor hold back an acknowledgement. It reads without shared subscriptions (each instance of a
//! cluster sees every sensor, so each serves the whole catalogue), with a clean session (what
//! happened while it was away is old news), and hands each message over only if there is room:
//! a view that falls behind skips messages (counted) rather than queueing them in the broker.

use aqyl_connect::Connector;
use aqyl_core::metrics::Metrics;
use aqyl_core::RawMessage;
use rumqttc::{AsyncClient, Event, Packet, QoS};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};

/// Connects as `<client_id>-city` (in the background, retrying), subscribes to `filters` and
/// follows its changes (descriptor reloads), and hands each message to `tx` while it has room.
/// Ends when `tx` closes. Skipped messages are counted in `aqyl_city_readings_skipped_total`.
pub fn tap(
    connector: &Connector,
    client_id: &str,
    mut filters: watch::Receiver<Vec<String>>,
    tx: mpsc::Sender<RawMessage>,
    max_backoff: Duration,
    metrics: Arc<Metrics>,
) -> tokio::task::JoinHandle<()> {
    let mut options = connector.options(format!("{client_id}-city"));
    options
        .set_keep_alive(Duration::from_secs(30))
        .set_clean_session(true)
        .set_max_packet_size(1 << 24, 1 << 24);
    let (client, mut eventloop) = AsyncClient::new(options, 64);
    let connector = connector.clone();
    let task = tokio::spawn(async move {
        let mut backoff = aqyl_core::backoff::Backoff::new(max_backoff);
        let mut current = filters.borrow_and_update().clone();
        loop {
            tokio::select! {
                _ = tx.closed() => break,
                changed = filters.changed() => {
                    if changed.is_err() {
                        // The filters will not change any more; keep the current ones.
                        filters = watch::channel(current.clone()).1;
                        continue;
                    }
                    let new = filters.borrow_and_update().clone();
                    for f in new.iter().filter(|f| !current.contains(f)) {
                        let _ = client.try_subscribe(f.clone(), QoS::AtMostOnce);
                    }
                    for f in current.iter().filter(|f| !new.contains(f)) {
                        let _ = client.try_unsubscribe(f.clone());
                    }
                    current = new;
                }
                event = eventloop.poll() => match event {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        backoff.reset();
                        let subs = current
                            .iter()
                            .map(|f| rumqttc::SubscribeFilter::new(f.clone(), QoS::AtMostOnce));
                        if let Err(e) = client.try_subscribe_many(subs) {
                            tracing::warn!(error = %e, "The city tap could not queue its subscriptions.");
                        }
                    }
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        metrics.city_subscriptions.store(current.len() as u64, Relaxed);
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        let msg = RawMessage {
                            topic: p.topic.clone(),
                            payload: p.payload.to_vec(),
                            received_at: now_ms(),
                        };
                        match tx.try_send(msg) {
                            Ok(()) => {}
                            Err(mpsc::error::TrySendError::Full(_)) => {
                                metrics.city_readings_skipped.fetch_add(1, Relaxed);
                            }
                            Err(mpsc::error::TrySendError::Closed(_)) => break,
                        }
                    }
                    Ok(_) => {}
                    Err(e) => {
                        metrics.city_subscriptions.store(0, Relaxed);
                        tracing::warn!(error = %connector.explain(&e), retry_in_ms = backoff.current().as_millis() as u64, "The city tap's MQTT connection failed; reconnecting.");
                        tokio::time::sleep(backoff.next_wait()).await;
                    }
                }
            }
        }
        let _ = client.try_disconnect();
    });
    task
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
