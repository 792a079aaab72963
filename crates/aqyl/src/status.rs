//! The status page at `/`: a view of the live city state ([`crate::city::state`]). The map
//! draws every sensor of the registries at its position (grey until it reports) and every
//! sensor of the city state, coloured by its latest quality score; the incidents under way are
//! listed beside it; a click shows the sensor's entry of `/api/state`. The page gets a
//! snapshot, then the changes in batches ([`BATCH_INTERVAL`]) over server-sent events, so
//! 10,000 sensors cost one small message per batch rather than one per report.
//!
//! The page keeps nothing of its own but the registry's positions: what it shows of a sensor
//! is what `/api/state` and the retained `aqyl/state/...` topics say of it.

use crate::city::state::{CityState, SensorState};
use aqyl_core::ingest::decode::Registry;
use aqyl_core::metrics::Metrics;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::broadcast;

/// How often changes are sent to the pages.
pub const BATCH_INTERVAL: Duration = Duration::from_millis(500);

/// A sensor's key on the page: `<sensor_type>/<sensor_id>`.
fn key(sensor_type: &str, sensor_id: &str) -> String {
    format!("{sensor_type}/{sensor_id}")
}

/// A registry's sensor: its position and area.
type Placed = (f64, f64, Option<Arc<str>>);

/// The status page's view of the city state.
pub struct StatusBoard {
    city: Arc<CityState>,
    /// The registries' sensors by key.
    placed: BTreeMap<String, Placed>,
    updates: broadcast::Sender<Arc<str>>,
    metrics: Arc<Metrics>,
    tiles: Option<String>,
    /// The city state's sequence number the last batch of changes covered.
    sent: Mutex<u64>,
    /// Set when the service begins to stop, so outputs that end then are not a failure.
    stopping: AtomicBool,
}

impl StatusBoard {
    /// A page over `city`, placing the sensors of `registry`'s sensor registries.
    pub fn new(
        registry: &Registry,
        city: Arc<CityState>,
        tiles: Option<String>,
        metrics: Arc<Metrics>,
    ) -> Arc<Self> {
        let mut placed = BTreeMap::new();
        for ty in registry.types() {
            let Some(reg) = &ty.registry else { continue };
            for (id, info) in reg.iter() {
                placed.insert(key(&ty.name, id), (info.lat, info.lon, info.area.clone()));
            }
        }
        Arc::new(Self {
            city,
            placed,
            updates: broadcast::channel(64).0,
            metrics,
            tiles,
            sent: Mutex::new(0),
            stopping: AtomicBool::new(false),
        })
    }

    /// The city state it shows.
    pub fn city(&self) -> &Arc<CityState> {
        &self.city
    }

    /// Says that the service is stopping: its outputs end from now on.
    pub fn stopping(&self) {
        self.stopping.store(true, Relaxed);
    }

    /// A sensor of the city state as the map draws it: `[key, lat, lon, area, score]`, the
    /// registry's position and area where the sensor gives none.
    fn row(&self, s: &SensorState) -> (String, Value) {
        let k = key(&s.key.sensor_type, &s.key.sensor_id);
        let reg = self.placed.get(&k);
        let (lat, lon) = match (s.position, reg) {
            (Some((lat, lon)), _) | (None, Some(&(lat, lon, _))) => (Some(lat), Some(lon)),
            (None, None) => (None, None),
        };
        let area = s.area.as_deref().or(reg.and_then(|r| r.2.as_deref()));
        let score = s.quality.as_ref().map(|q| round(q.score));
        let row = json!([k, lat, lon, area, score]);
        (k, row)
    }

    /// Everything the page draws: sensors `[key, lat, lon, area, score]` (the registries'
    /// and the city state's, by key), incidents, tiles.
    pub fn snapshot(&self) -> Value {
        let mut rows: BTreeMap<String, Value> = self
            .placed
            .iter()
            .map(|(k, (lat, lon, area))| (k.clone(), json!([k, lat, lon, area, null])))
            .collect();
        rows.extend(self.city.sensors().iter().map(|s| self.row(s)));
        let incidents: Vec<Value> = self
            .city
            .incidents()
            .iter()
            .map(|i| (*i.json).clone())
            .collect();
        json!({
            "sensors": rows.into_values().collect::<Vec<_>>(),
            "incidents": incidents,
            "more_incidents": self.city.more_incidents(),
            "tiles": self.tiles,
        })
    }

    /// What changed since the last call, as the JSON of one server-sent event
    /// (`scores`: key → `[score, [lat, lon, area]]`; `incidents` when they changed); `None`
    /// if nothing did.
    fn take_changes(&self) -> Option<String> {
        let mut sent = self.sent.lock().unwrap_or_else(|p| p.into_inner());
        let changes = self.city.changes_since(*sent);
        *sent = changes.seq;
        if changes.sensors.is_empty() && changes.incidents.is_none() {
            return None;
        }
        let mut scores = serde_json::Map::new();
        for s in &changes.sensors {
            let (k, row) = self.row(s);
            let pos = if row[1].is_null() {
                Value::Null
            } else {
                json!([row[1], row[2], row[3]])
            };
            scores.insert(k, json!([row[4], pos]));
        }
        let mut out = json!({ "scores": scores });
        if let Some(incidents) = changes.incidents {
            out["incidents"] = incidents.iter().map(|i| (*i.json).clone()).collect();
            out["more_incidents"] = json!(self.city.more_incidents());
        }
        Some(out.to_string())
    }

    /// A receiver of the batched changes.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<str>> {
        self.updates.subscribe()
    }

    /// Sends the changes to the pages every [`BATCH_INTERVAL`] until aborted.
    pub async fn publish(self: Arc<Self>) {
        let mut tick = tokio::time::interval(BATCH_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if self.updates.receiver_count() == 0 {
                // No page open: the next one starts from a snapshot anyway.
                *self.sent.lock().unwrap_or_else(|p| p.into_inner()) = self.city.seq();
                continue;
            }
            if let Some(changes) = self.take_changes() {
                let _ = self.updates.send(changes.into());
            }
        }
    }

    /// Says that an output of the dataflow ended: unless the service is stopping, its workers
    /// have stopped, and `/health` says so.
    pub fn output_ended(&self) {
        if !self.stopping.load(Relaxed) {
            self.metrics.set_problem(
                "workers",
                "the dataflow's workers stopped: no reading is processed".into(),
            );
        }
    }
}

fn round(v: f64) -> f64 {
    (v * 1000.0).round() / 1000.0
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use aqyl_core::{Aggregate, Event, EventState, Scope};

    fn board(city: &Arc<CityState>) -> Arc<StatusBoard> {
        let mut ty = aqyl_core::ingest::descriptor::SensorType::from_toml(
            std::path::Path::new("traffic.toml"),
            "name = \"traffic\"\n[time]\nfield = \"/t\"\nformat = \"epoch_ms\"\n[[fields]]\nname = \"avgSpeed\"\n",
        )
        .unwrap();
        let reg = aqyl_core::ingest::sensor_registry::SensorRegistry::parse(
            std::path::Path::new("r.csv"),
            "sensor_id,lat,lon,area\ns1,56.1,10.2,north\n",
        )
        .unwrap();
        ty.registry = Some(Arc::new(reg));
        StatusBoard::new(
            &Registry::new(vec![ty]),
            city.clone(),
            None,
            Arc::new(Metrics::default()),
        )
    }

    fn city() -> Arc<CityState> {
        let c = CityState::new(4, 10, None, Arc::new(Metrics::default()));
        c.admit_from_outputs();
        c
    }

    fn event(subject: &str, state: EventState) -> Event {
        Event {
            extra: Vec::new(),
            id: "i1".into(),
            event_type: "congestion".into(),
            subject: subject.into(),
            sensor_type: "traffic".into(),
            area: None,
            state,
            level: "warning".into(),
            started_at: 0,
            time: 0,
            rule: "jam".into(),
            message: "slow".into(),
            values: Vec::new(),
        }
    }

    #[test]
    fn incidents_come_and_go_and_changes_are_batched() {
        let c = city();
        let b = board(&c);
        assert!(b.take_changes().is_none(), "nothing happened");
        c.event(&event("158324", EventState::Start));
        let changes: Value = serde_json::from_str(&b.take_changes().unwrap()).unwrap();
        assert_eq!(changes["incidents"][0]["subject"], "158324", "{changes}");
        assert!(b.take_changes().is_none(), "sent once");
        c.event(&event("158324", EventState::End));
        let changes: Value = serde_json::from_str(&b.take_changes().unwrap()).unwrap();
        assert_eq!(changes["incidents"], json!([]));
        assert_eq!(b.snapshot()["incidents"], json!([]));
    }

    #[test]
    fn the_page_shows_the_registry_and_the_city_state() {
        let c = city();
        let b = board(&c);
        let snap = b.snapshot();
        assert_eq!(
            snap["sensors"],
            json!([["traffic/s1", 56.1, 10.2, "north", null]]),
            "placed, grey until it reports"
        );
        let window = |subject: &str| Aggregate {
            sensor_type: "traffic".into(),
            scope: Scope::Sensor,
            subject: subject.into(),
            field: "avgSpeed".into(),
            window: "5m".into(),
            start: 0,
            end: 300_000,
            stats: aqyl_core::windows::window::WindowStats {
                count: 1,
                mean: 1.0,
                min: 1.0,
                max: 1.0,
                stddev: 0.0,
                p50: 1.0,
                p95: 1.0,
            },
            sax: None,
            sax_code: None,
        };
        c.aggregate(&window("s1"));
        c.aggregate(&window("x9"));
        let changes: Value = serde_json::from_str(&b.take_changes().unwrap()).unwrap();
        assert_eq!(
            changes["scores"],
            json!({"traffic/s1": [null, [56.1, 10.2, "north"]], "traffic/x9": [null, null]}),
            "{changes}"
        );
        let rows = b.snapshot()["sensors"].as_array().unwrap().len();
        assert_eq!(rows, 2, "s1 once, from the registry and the state");
    }
}
