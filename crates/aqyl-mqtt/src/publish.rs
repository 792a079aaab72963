//! Publishing Aqyl's outputs on MQTT: dead letters, incidents, quality reports and (when
//! configured) aggregates.

use aqyl_core::metrics::Metrics;
use aqyl_core::quality::QualityRecord;
use aqyl_core::subscriptions::Selector;
use aqyl_core::{Aggregate, DeadLetter, Event, EventState};
use rumqttc::{AsyncClient, QoS};
use std::collections::HashMap;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use tokio::sync::{broadcast, mpsc};

/// Messages a follower of a subscription's live feed may fall behind by before it is told it
/// lagged (and how many it missed).
pub const FEED_CAPACITY: usize = 256;

/// The live feeds of the contextual subscriptions (the server-sent-event streams of
/// `GET /api/subscriptions/<name>/events`): one bounded broadcast per subscription someone
/// follows. Sending never waits: a follower that falls behind misses messages and is told,
/// and the publisher goes on.
#[derive(Debug, Clone, Default)]
pub struct Feeds(Arc<Mutex<HashMap<String, broadcast::Sender<Arc<str>>>>>);

impl Feeds {
    /// Follows the messages that subscription `name` selects from now on.
    pub fn follow(&self, name: &str) -> broadcast::Receiver<Arc<str>> {
        let mut feeds = self.0.lock().unwrap_or_else(|p| p.into_inner());
        feeds
            .entry(name.to_string())
            .or_insert_with(|| broadcast::channel(FEED_CAPACITY).0)
            .subscribe()
    }

    /// Hands `json` to the followers of `name`, if any (a feed nobody follows any longer is
    /// dropped).
    fn send(&self, name: &str, json: &Arc<str>) {
        let mut feeds = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(tx) = feeds.get(name) {
            if tx.send(json.clone()).is_err() {
                feeds.remove(name);
            }
        }
    }
}

/// Publishes each dead letter on `<prefix>/deadletter/<sensor_type>` (QoS 1) until the
/// channel closes. Every record is also logged at debug level.
pub async fn deadletters(
    client: AsyncClient,
    prefix: String,
    mut rx: mpsc::Receiver<DeadLetter>,
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
        metrics
            .delivery
            .done(aqyl_core::metrics::Output::DeadLetters, 1);
    }
}

/// Publishes each closed window on `<prefix>/aggregates/<sensor_type>/<subject>` (QoS 1)
/// until the channel closes.
pub async fn aggregates(
    client: AsyncClient,
    prefix: String,
    mut rx: mpsc::Receiver<Aggregate>,
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
/// with an empty retained message when it ends), publishes it again on
/// `<prefix>/subscriptions/<name>/<event_type>/<subject>` (QoS 1) for every contextual
/// subscription that selects it (and to the subscription's live feed, see [`Feeds`]), and
/// forwards each message to `sink`.
pub async fn events(
    client: AsyncClient,
    prefix: String,
    mut rx: mpsc::Receiver<Event>,
    sink: mpsc::Sender<Event>,
    (mut selector, registry, feeds): (Selector, aqyl_dataflow::SharedRegistry, Feeds),
    metrics: Arc<Metrics>,
) {
    while let Some(e) = rx.recv().await {
        tracing::info!(event_type = %e.event_type, subject = %e.subject, state = e.state.as_str(), "{}", e.message);
        let json = e.to_json();
        let active = match e.state {
            EventState::End => String::new(),
            _ => json.clone(),
        };
        let mut shared: Option<Arc<str>> = None;
        for sub in selector.select(&e, &registry.load_full()) {
            let live = shared.get_or_insert_with(|| Arc::from(json.as_str()));
            feeds.send(&sub.name, live);
            let topic = sub.topic(&prefix, &e);
            if let Err(err) = client
                .publish(topic, QoS::AtLeastOnce, false, json.clone())
                .await
            {
                tracing::warn!(subscription = %sub.name, subject = %e.subject, error = %err, "Could not publish an incident to a subscription.");
            }
        }
        let published = client
            .publish(e.topic(&prefix), QoS::AtLeastOnce, false, json)
            .await
            .is_ok()
            && client
                .publish(e.active_topic(&prefix), QoS::AtLeastOnce, true, active)
                .await
                .is_ok();
        if e.event_type == aqyl_core::quality::QUALITY_EVENT && e.state == EventState::Start {
            metrics.quality_incidents.fetch_add(1, Relaxed);
        }
        if published {
            metrics.events_published.fetch_add(1, Relaxed);
        } else {
            tracing::warn!(event_type = %e.event_type, subject = %e.subject, "Could not publish an event.");
        }
        let _ = sink.send(e).await;
    }
}

/// Publishes quality reports retained on `<prefix>/quality/<sensor_id>` and forwards every
/// batch of records (reports and roll-ups) to `sink`, waiting while the sink is behind. QoS
/// 0: the retained message is the latest state, and the next report replaces a lost one.
/// Within a batch only each sensor's latest report is published, so a burst of readings
/// neither doubles the broker's load nor piles up (the store still gets every report); a
/// report that finds the connection's queue full is skipped and counted.
pub async fn quality(
    client: AsyncClient,
    prefix: String,
    mut rx: mpsc::Receiver<Vec<QualityRecord>>,
    sink: mpsc::Sender<Vec<QualityRecord>>,
    metrics: Arc<Metrics>,
) {
    while let Some(batch) = rx.recv().await {
        // Each sensor's last report in the batch.
        let mut last: std::collections::HashMap<(&str, &str), usize> =
            std::collections::HashMap::new();
        for (i, q) in batch.iter().enumerate() {
            if let QualityRecord::Report(r) = q {
                last.insert((&r.sensor_type, &r.sensor_id), i);
            }
        }
        let mut picked: Vec<usize> = last.into_values().collect();
        picked.sort_unstable();
        for i in picked {
            let Some(QualityRecord::Report(r)) = batch.get(i) else {
                continue;
            };
            // Never wait on the connection here: while the workers wait for this task, the
            // connection may be waiting for the workers (ingest back-pressure), so a full
            // request queue skips the report; the sensor's next one replaces it.
            match client.try_publish(r.topic(&prefix), QoS::AtMostOnce, true, r.to_json()) {
                Ok(()) => {
                    metrics.quality_reports_published.fetch_add(1, Relaxed);
                }
                Err(_) => {
                    metrics.quality_reports_skipped.fetch_add(1, Relaxed);
                }
            }
        }
        let _ = sink.send(batch).await;
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::panic)]
    use super::*;

    #[test]
    fn a_follower_that_falls_behind_is_told_how_many_it_missed_and_the_sender_never_waits() {
        let feeds = Feeds::default();
        let mut rx = feeds.follow("mine");
        // Nobody follows "other": nothing is kept for it.
        feeds.send("other", &Arc::from("x"));
        let extra = 10;
        for i in 0..FEED_CAPACITY + extra {
            feeds.send("mine", &Arc::from(i.to_string().as_str()));
        }
        match rx.try_recv() {
            Err(broadcast::error::TryRecvError::Lagged(missed)) => {
                assert_eq!(missed, extra as u64)
            }
            other => panic!("expected a lag, got {other:?}"),
        }
        assert_eq!(
            rx.try_recv().ok().as_deref(),
            Some(extra.to_string().as_str())
        );
        drop(rx);
        // The last follower gone, the next message drops the feed.
        feeds.send("mine", &Arc::from("y"));
        assert!(feeds.0.lock().unwrap().is_empty());
    }
}
