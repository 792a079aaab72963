//! The retained state topics, `<prefix>/state/<sensor_type>/<sensor_id>`: each sensor's
//! latest reading, quality report and incidents in one message, so a client that connects
//! later gets the whole city in one subscription.
//!
//! Coalesced: a sensor's state is published at most once per `interval`, carrying everything
//! that changed meanwhile. A reading, the quality report it causes and any incident it starts
//! arrive within milliseconds of one another; publishing each would send three messages where
//! the retained topic keeps only the last, and a city of sensors reporting every second would
//! cost the broker three times its input. QoS 0 and never waiting on the connection (like the
//! quality reports): a publication that finds the connection's queue full is retried at the
//! next round, since the retained message is only ever the latest state. A released sensor
//! (silent for `pipeline.state_ttl`) gets an empty retained message, which clears the topic.

use super::state::{CityState, SensorKey};
use rumqttc::{AsyncClient, QoS};
use std::sync::Arc;
use std::time::Duration;

/// The state topic of a sensor (both levels escaped: ids are untrusted).
pub fn topic(prefix: &str, key: &SensorKey) -> String {
    format!(
        "{prefix}/state/{}/{}",
        aqyl_core::output::topic_level(&key.sensor_type),
        aqyl_core::output::topic_level(&key.sensor_id)
    )
}

/// Publishes the changed states every `interval` until aborted (also releasing sensors silent
/// for the TTL).
pub async fn publish(
    client: AsyncClient,
    prefix: String,
    state: Arc<CityState>,
    interval: Duration,
    metrics: Arc<aqyl_core::metrics::Metrics>,
) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        state.sweep();
        let mut failed = Vec::new();
        for change in state.take_changes() {
            let payload = change.state.map(|s| s.to_string()).unwrap_or_default();
            let t = topic(&prefix, &change.key);
            match client.try_publish(t, QoS::AtMostOnce, true, payload) {
                Ok(()) => {
                    metrics
                        .city_states_published
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                Err(_) => failed.push(change.key),
            }
        }
        if !failed.is_empty() {
            tracing::debug!(
                count = failed.len(),
                "The output connection's queue is full; state messages wait for the next round."
            );
            state.retry(failed);
        }
    }
}

/// Without state topics (`city.state_interval = "0s"`): releases sensors silent for the TTL
/// every second and drops the changes nobody publishes, until aborted.
pub async fn sweep(state: Arc<CityState>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        state.sweep();
        state.take_changes();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostile_ids_stay_one_topic_level() {
        let key = SensorKey {
            sensor_type: "traffic".into(),
            sensor_id: "a/b/#/+".into(),
        };
        assert_eq!(topic("aqyl", &key), "aqyl/state/traffic/a%2Fb%2F%23%2F%2B");
    }
}
