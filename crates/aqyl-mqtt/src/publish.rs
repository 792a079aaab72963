//! Publishing Aqyl's outputs on MQTT: dead letters now, events and quality later.

use aqyl_core::metrics::Metrics;
use aqyl_core::DeadLetter;
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
