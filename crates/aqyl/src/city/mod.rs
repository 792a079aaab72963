//! City services on top of the pipeline: the live city state ([`state`]), fed with every
//! sensor's readings (as the dataflow's ingest lets them in, [`feed_readings`]; in a cluster,
//! from the city tap, [`aqyl_mqtt::tap`], [`feed`]), its quality reports and the incidents
//! (tee'd off the dataflow's outputs), published retained per sensor ([`topics`])
//! and served as `/api/state`; the SensorThings catalogue ([`crate::sta`]) reads the same
//! state.
//!
//! - [`state`]: the store (bounded: sensors, readings per sensor, incidents; released after
//!   `state_ttl`).
//! - [`select`]: selections by type, area and bounding box.
//! - [`subscriptions`]: the contextual subscriptions, from files and over HTTP (kept in the
//!   state directory).
//! - [`topics`]: the retained `<prefix>/state/<sensor_type>/<sensor_id>` messages, coalesced.

pub mod select;
pub mod state;
pub mod subscriptions;
pub mod topics;

use aqyl_core::ingest::decode::Registry;
use aqyl_core::RawMessage;
use aqyl_dataflow::SharedRegistry;
use state::CityState;
use std::collections::HashMap;
use std::sync::Arc;
use tokio::sync::mpsc;

/// Messages the tap may queue for decoding before it skips.
pub const TAP_QUEUE: usize = 8192;
/// Batches of readings (one per worker step, up to a thousand readings each) the ingest may
/// queue for the city state before it skips.
pub const READING_BATCHES: usize = 64;

/// Decodes each tapped message with the current registry and takes its readings into
/// `state`, until `rx` closes. Messages no descriptor accepts are the pipeline's business
/// (it dead-letters them); here they are passed over, and so are readings stamped further
/// ahead of their receipt than `max_future` (`ingest.max_future`, as the pipeline refuses
/// them): one sensor with a clock in 2099 would otherwise move the state's clock and release
/// every other sensor.
pub async fn feed(
    mut rx: mpsc::Receiver<RawMessage>,
    registry: SharedRegistry,
    state: Arc<CityState>,
    max_payload: usize,
    max_future: Option<std::time::Duration>,
) {
    let mut schemas = Schemas::default();
    let mut decoded = Vec::new();
    while let Some(msg) = rx.recv().await {
        let reg = registry.load_full();
        decoded.clear();
        if reg.decode_into(&msg, max_payload, &mut decoded).is_err() {
            continue;
        }
        for obs in &decoded {
            let ahead = max_future.is_some_and(|m| {
                obs.event_time
                    > (msg.received_at.max(0) as u64).saturating_add(m.as_millis() as u64)
            });
            if ahead {
                continue;
            }
            if let Some(schema) = schemas.of(&reg, &obs.sensor_type) {
                state.reading(obs, &schema);
            }
        }
    }
}

/// Takes the readings the dataflow's ingest lets in (one batch per worker step) into
/// `state`, until `rx` closes: the city state of a single process, which sees every reading
/// there (a cluster's process 0 reads them on a tap connection of its own instead, [`feed`]).
pub async fn feed_readings(
    mut rx: mpsc::Receiver<Vec<aqyl_core::Observation>>,
    registry: SharedRegistry,
    state: Arc<CityState>,
) {
    let mut schemas = Schemas::default();
    while let Some(batch) = rx.recv().await {
        let reg = registry.load_full();
        for obs in &batch {
            if let Some(schema) = schemas.of(&reg, &obs.sensor_type) {
                state.reading(obs, &schema);
            }
        }
    }
}

/// Each type's field names, built once per registry (a reload brings a new one).
#[derive(Default)]
struct Schemas {
    registry: Option<Arc<Registry>>,
    by_type: HashMap<Arc<str>, Arc<[Arc<str>]>>,
}

impl Schemas {
    fn of(&mut self, reg: &Arc<Registry>, ty: &str) -> Option<Arc<[Arc<str>]>> {
        if !self.registry.as_ref().is_some_and(|r| Arc::ptr_eq(r, reg)) {
            self.registry = Some(reg.clone());
            self.by_type = reg
                .types()
                .iter()
                .map(|t| {
                    (
                        t.name.clone(),
                        t.fields.iter().map(|f| f.name.clone()).collect(),
                    )
                })
                .collect();
        }
        self.by_type.get(ty).cloned()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use aqyl_core::ingest::descriptor::SensorType;
    use std::time::Duration;

    #[tokio::test]
    async fn a_sensor_clock_in_2099_neither_enters_nor_releases_the_city() {
        let ty = SensorType::from_toml(
            std::path::Path::new("traffic.toml"),
            "name = \"traffic\"\n[time]\nfield = \"/TIMESTAMP\"\nformat = \"%Y-%m-%dT%H:%M:%S\"\ntimezone = \"Europe/Copenhagen\"\n[[fields]]\nname = \"avgSpeed\"\n",
        )
        .unwrap();
        let registry = aqyl_dataflow::shared(Registry::new(vec![ty]));
        let state = CityState::new(4, 10, Some(Duration::from_secs(3600)), Default::default());
        let (tx, rx) = mpsc::channel(8);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as i64;
        for (id, at) in [
            ("ok", "2014-08-01T07:00:00"),
            ("clock", "2099-01-01T00:00:00"),
        ] {
            tx.send(RawMessage {
                topic: format!("city/traffic/{id}"),
                payload: format!(r#"{{"avgSpeed":50,"TIMESTAMP":"{at}"}}"#).into_bytes(),
                received_at: now,
            })
            .await
            .unwrap();
        }
        drop(tx);
        feed(
            rx,
            registry,
            state.clone(),
            65536,
            Some(Duration::from_secs(300)),
        )
        .await;
        state.sweep();
        let ids: Vec<String> = state
            .sensors()
            .iter()
            .map(|s| s.key.sensor_id.to_string())
            .collect();
        assert_eq!(ids, ["ok"]);
    }
}
