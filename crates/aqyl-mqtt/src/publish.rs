//! Publishing Aqyl's outputs on MQTT: dead letters and (when configured) aggregates.

use aqyl_core::metrics::Metrics;
use aqyl_core::{Aggregate, DeadLetter};
use rumqttc::{AsyncClient, QoS};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use tokio::sync::mpsc;

/// Publishes each dead letter on `<prefix>/deadletter/<sensor_type>` (QoS 1) until the
/// channel closes. Every record is also logged at debug level.
pub async fn deadletters(
    client: AsyncClient,
    prefix: String,
    mut rx: mpsc::UnboundedReceiver<DeadLetter>,
    metrics: Arc<Metrics>,
) {
    while let Some(d) = rx.recv().await {
        tracing::debug!(reason = %d.reason, topic = %d.topic, detail = %d.detail, "Rejected a message.");
        let topic = format!("{prefix}/deadletter/{}", d.sensor_type);
        match client
            .publish(topic, QoS::AtLeastOnce, false, d.to_json())
            .await
        {
            Ok(()) => {
                metrics.deadletters_published.fetch_add(1, Relaxed);
            }
            Err(e) => {
                tracing::warn!(error = %e, reason = %d.reason, "Could not publish a dead letter.")
            }
        }
    }
}

/// Publishes each closed window on `<prefix>/aggregates/<sensor_type>/<subject>` (QoS 1)
/// until the channel closes.
pub async fn aggregates(
    client: AsyncClient,
    prefix: String,
    mut rx: mpsc::UnboundedReceiver<Aggregate>,
    metrics: Arc<Metrics>,
) {
    while let Some(a) = rx.recv().await {
        match client
            .publish(a.topic(&prefix), QoS::AtLeastOnce, false, a.to_json())
            .await
        {
            Ok(()) => {
                metrics.aggregates_published.fetch_add(1, Relaxed);
            }
            Err(e) => tracing::warn!(error = %e, "Could not publish an aggregate."),
        }
    }
}
