//! Publishing Aqyl's outputs on MQTT: dead letters, incidents, quality reports and (when
//! configured) aggregates.

use aqyl_core::metrics::Metrics;
use aqyl_core::quality::QualityRecord;
use aqyl_core::{Aggregate, DeadLetter, Event, EventState};
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

/// Publishes incident lifecycle messages on `<prefix>/events/<event_type>/<subject>` (QoS 1),
/// keeps the ongoing incident retained on `<prefix>/active/<event_type>/<subject>` (cleared
/// with an empty retained message when it ends), and forwards each message to `sink`.
pub async fn events(
    client: AsyncClient,
    prefix: String,
    mut rx: mpsc::UnboundedReceiver<Event>,
    sink: mpsc::UnboundedSender<Event>,
    metrics: Arc<Metrics>,
) {
    while let Some(e) = rx.recv().await {
        tracing::info!(event_type = %e.event_type, subject = %e.subject, state = e.state.as_str(), "{}", e.message);
        let json = e.to_json();
        let active = match e.state {
            EventState::End => String::new(),
            _ => json.clone(),
        };
        let published = client
            .publish(e.topic(&prefix), QoS::AtLeastOnce, false, json)
            .await
            .is_ok()
            && client
                .publish(e.active_topic(&prefix), QoS::AtLeastOnce, true, active)
                .await
                .is_ok();
        if published {
            metrics.events_published.fetch_add(1, Relaxed);
        } else {
            tracing::warn!(event_type = %e.event_type, subject = %e.subject, "Could not publish an event.");
        }
        let _ = sink.send(e);
    }
}

/// Publishes quality reports retained on `<prefix>/quality/<sensor_id>` and forwards every
/// record (reports and roll-ups) to `sink`. QoS 0: the retained message is the latest state,
/// and the next report replaces a lost one. Reports that queue up while the broker is busy
/// are conflated: only each sensor's latest one is published, so a burst of readings neither
/// doubles the broker's load nor piles up in memory (the store still gets every report).
pub async fn quality(
    client: AsyncClient,
    prefix: String,
    mut rx: mpsc::UnboundedReceiver<QualityRecord>,
    sink: mpsc::UnboundedSender<QualityRecord>,
    metrics: Arc<Metrics>,
) {
    /// Most records taken from the channel per round of publishing.
    const ROUND: usize = 4096;
    // Each sensor's latest report of the round, in first-seen order.
    let mut latest: Vec<aqyl_core::quality::QualityReport> = Vec::new();
    let mut index: std::collections::HashMap<(Arc<str>, String), usize> =
        std::collections::HashMap::new();
    while let Some(first) = rx.recv().await {
        let mut next = Some(first);
        let mut taken = 0;
        while let Some(q) = next.take() {
            taken += 1;
            if let QualityRecord::Report(r) = &q {
                let key = (r.sensor_type.clone(), r.sensor_id.clone());
                match index.get(&key) {
                    Some(&i) => latest[i] = r.clone(),
                    None => {
                        index.insert(key, latest.len());
                        latest.push(r.clone());
                    }
                }
            }
            let _ = sink.send(q);
            if taken < ROUND {
                next = rx.try_recv().ok();
            }
        }
        for r in latest.drain(..) {
            match client
                .publish(r.topic(&prefix), QoS::AtMostOnce, true, r.to_json())
                .await
            {
                Ok(()) => {
                    metrics.quality_reports_published.fetch_add(1, Relaxed);
                }
                Err(e) => tracing::warn!(error = %e, "Could not publish a quality report."),
            }
        }
        index.clear();
    }
}
