//! The status board behind the page at `/`: every sensor of the registries with its position,
//! each sensor's latest quality report and closed windows, and the incidents under way. The
//! service hands it the dataflow's outputs on their way to the publishers and sinks
//! (`crate::service`'s tee); the page gets a snapshot, then the changes in batches
//! ([`BATCH_INTERVAL`]) over server-sent events, so 10,000 sensors cost one small message per
//! batch rather than one per report.

use aqyl_core::ingest::decode::Registry;
use aqyl_core::metrics::{quality_band, Metrics, QUALITY_BANDS};
use aqyl_core::quality::{QualityRecord, QualityReport};
use aqyl_core::{Aggregate, Event, EventState, Scope};
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::broadcast;

/// How often changes are sent to the pages.
pub const BATCH_INTERVAL: Duration = Duration::from_millis(500);
/// Sensors without a registry position the board keeps (a flood of ids nobody registered
/// must not grow it without bound; the dataflow forgets them after `pipeline.state_ttl`).
pub const MAX_UNPLACED: usize = 10_000;
/// Incidents the board lists; more are counted (`more_incidents`), not kept.
pub const MAX_INCIDENTS: usize = 10_000;

/// A sensor's key on the page: `<sensor_type>/<sensor_id>`.
fn key(sensor_type: &str, sensor_id: &str) -> String {
    format!("{sensor_type}/{sensor_id}")
}

/// What the board knows of one sensor.
#[derive(Default)]
struct Sensor {
    lat: Option<f64>,
    lon: Option<f64>,
    area: Option<String>,
    report: Option<QualityReport>,
    /// The latest closed window per field: (window label, aggregate).
    windows: BTreeMap<Arc<str>, Aggregate>,
}

#[derive(Default)]
struct Board {
    sensors: HashMap<String, Sensor>,
    /// Keys whose score changed since the last batch.
    changed: HashSet<String>,
    /// Incidents under way by (event type, subject): the latest message of each.
    incidents: BTreeMap<(String, String), Value>,
    incidents_changed: bool,
    /// Incidents under way beyond [`MAX_INCIDENTS`].
    more_incidents: u64,
    /// Sensors in `sensors` without a registry position.
    unplaced: usize,
}

impl Board {
    /// The sensor of `k`, added unless it would be one unplaced sensor too many.
    fn sensor(&mut self, k: &str) -> Option<&mut Sensor> {
        if !self.sensors.contains_key(k) {
            if self.unplaced >= MAX_UNPLACED {
                return None;
            }
            self.unplaced += 1;
            self.sensors.insert(k.to_string(), Sensor::default());
        }
        self.sensors.get_mut(k)
    }
}

/// The live state the status page shows.
pub struct StatusBoard {
    board: Mutex<Board>,
    updates: broadcast::Sender<Arc<str>>,
    metrics: Arc<Metrics>,
    tiles: Option<String>,
    /// Set when the service begins to stop, so outputs that end then are not a failure.
    stopping: AtomicBool,
}

impl StatusBoard {
    /// A board over the sensors of `registry`'s sensor registries (those with a position).
    pub fn new(registry: &Registry, tiles: Option<String>, metrics: Arc<Metrics>) -> Arc<Self> {
        let mut board = Board::default();
        for ty in registry.types() {
            let Some(reg) = &ty.registry else { continue };
            for (id, info) in reg.iter() {
                board.sensors.insert(
                    key(&ty.name, id),
                    Sensor {
                        lat: Some(info.lat),
                        lon: Some(info.lon),
                        area: info.area.as_deref().map(str::to_string),
                        ..Sensor::default()
                    },
                );
            }
        }
        Arc::new(Self {
            board: Mutex::new(board),
            updates: broadcast::channel(64).0,
            metrics,
            tiles,
            stopping: AtomicBool::new(false),
        })
    }

    /// Says that the service is stopping: its outputs end from now on.
    pub fn stopping(&self) {
        self.stopping.store(true, Relaxed);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Board> {
        self.board.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes in a batch of quality records.
    pub fn quality(&self, batch: &[QualityRecord]) {
        let mut b = self.lock();
        let mut bands = [0i64; QUALITY_BANDS.len()];
        for q in batch {
            let QualityRecord::Report(r) = q else {
                continue;
            };
            let k = key(&r.sensor_type, &r.sensor_id);
            let Some(s) = b.sensor(&k) else { continue };
            if let Some(old) = &s.report {
                bands[quality_band(old.score)] -= 1;
            }
            bands[quality_band(r.score)] += 1;
            if s.area.is_none() {
                s.area = r.area.clone();
            }
            s.report = Some(r.clone());
            b.changed.insert(k);
        }
        drop(b);
        for (slot, d) in self.metrics.quality_bands.iter().zip(bands) {
            if d >= 0 {
                slot.fetch_add(d as u64, Relaxed);
            } else {
                slot.fetch_sub(d.unsigned_abs(), Relaxed);
            }
        }
    }

    /// Takes in an incident message.
    pub fn event(&self, e: &Event) {
        let mut b = self.lock();
        let k = (e.event_type.clone(), e.subject.clone());
        let known = b.incidents.contains_key(&k);
        match e.state {
            EventState::End if known => {
                b.incidents.remove(&k);
            }
            EventState::End => b.more_incidents = b.more_incidents.saturating_sub(1),
            _ if !known && b.incidents.len() >= MAX_INCIDENTS => {
                if e.state == EventState::Start {
                    b.more_incidents += 1;
                }
            }
            _ => {
                let v = serde_json::from_str(&e.to_json()).unwrap_or(Value::Null);
                b.incidents.insert(k, v);
            }
        }
        b.incidents_changed = true;
        self.metrics
            .incidents_active
            .store(b.incidents.len() as u64 + b.more_incidents, Relaxed);
    }

    /// Takes in a closed window (a sensor's; area roll-ups are not shown per sensor).
    pub fn aggregate(&self, a: &Aggregate) {
        if a.scope != Scope::Sensor {
            return;
        }
        let mut b = self.lock();
        let Some(s) = b.sensor(&key(&a.sensor_type, &a.subject)) else {
            return;
        };
        let newer = s.windows.get(&a.field).is_none_or(|w| w.end <= a.end);
        if newer {
            s.windows.insert(a.field.clone(), a.clone());
        }
    }

    /// Everything the page draws: sensors (key, position, area, score), incidents, tiles. The
    /// board is locked only to copy the figures out (the outputs pass through it), not to
    /// sort and encode them.
    pub fn snapshot(&self) -> Value {
        type Row = (
            String,
            Option<f64>,
            Option<f64>,
            Option<String>,
            Option<f64>,
        );
        let (mut sensors, incidents, more): (Vec<Row>, Vec<Value>, u64) = {
            let b = self.lock();
            let sensors = b
                .sensors
                .iter()
                .map(|(k, s)| {
                    let score = s.report.as_ref().map(|r| round(r.score));
                    (k.clone(), s.lat, s.lon, s.area.clone(), score)
                })
                .collect();
            (
                sensors,
                b.incidents.values().cloned().collect(),
                b.more_incidents,
            )
        };
        sensors.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        json!({
            "sensors": sensors,
            "incidents": incidents,
            "more_incidents": more,
            "tiles": self.tiles,
        })
    }

    /// One sensor's latest report, closed windows and incidents, for the page's detail view.
    pub fn sensor(&self, k: &str) -> Option<Value> {
        let b = self.lock();
        let s = b.sensors.get(k)?;
        let (sensor_type, id) = k.split_once('/')?;
        let report = s
            .report
            .as_ref()
            .and_then(|r| serde_json::from_str::<Value>(&r.to_json()).ok());
        let windows: Vec<Value> = s
            .windows
            .values()
            .map(|a| {
                json!({
                    "field": &*a.field,
                    "window": &*a.window,
                    "end": aqyl_core::output::rfc3339_ms(a.end as i64),
                    "count": a.stats.count,
                    "mean": round(a.stats.mean),
                    "min": round(a.stats.min),
                    "max": round(a.stats.max),
                })
            })
            .collect();
        let incidents: Vec<&Value> = b
            .incidents
            .iter()
            .filter(|((_, subject), v)| {
                subject == id && v["sensor_type"] == sensor_type
                    || s.area.as_deref() == Some(subject.as_str())
            })
            .map(|(_, v)| v)
            .collect();
        Some(json!({
            "key": k,
            "sensor_type": sensor_type,
            "sensor_id": id,
            "lat": s.lat,
            "lon": s.lon,
            "area": s.area,
            "quality": report,
            "windows": windows,
            "incidents": incidents,
        }))
    }

    /// What changed since the last call, as the JSON of one server-sent event; `None` if
    /// nothing did.
    fn take_changes(&self) -> Option<String> {
        let mut b = self.lock();
        if b.changed.is_empty() && !b.incidents_changed {
            return None;
        }
        let changed = std::mem::take(&mut b.changed);
        let mut scores = serde_json::Map::new();
        for k in changed {
            if let Some(s) = b.sensors.get(&k) {
                let pos = s.lat.map(|lat| json!([lat, s.lon, s.area]));
                let score = s.report.as_ref().map(|r| round(r.score));
                scores.insert(k, json!([score, pos.unwrap_or(Value::Null)]));
            }
        }
        let mut out = json!({ "scores": scores });
        if std::mem::take(&mut b.incidents_changed) {
            out["incidents"] = json!(b.incidents.values().collect::<Vec<_>>());
            out["more_incidents"] = json!(b.more_incidents);
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
            if let Some(changes) = self.take_changes() {
                // No page open is no error.
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

    fn board() -> Arc<StatusBoard> {
        StatusBoard::new(
            &Registry::new(Vec::new()),
            None,
            Arc::new(Metrics::default()),
        )
    }

    #[test]
    fn incidents_come_and_go_and_changes_are_batched() {
        let b = board();
        assert!(b.take_changes().is_none(), "nothing happened");
        let mut e = Event {
            extra: Vec::new(),
            id: "i1".into(),
            event_type: "congestion".into(),
            subject: "158324".into(),
            sensor_type: "traffic".into(),
            area: None,
            state: EventState::Start,
            level: "warning".into(),
            started_at: 0,
            time: 0,
            rule: "jam".into(),
            message: "slow".into(),
            values: Vec::new(),
        };
        b.event(&e);
        assert_eq!(b.metrics.incidents_active.load(Relaxed), 1);
        let changes: Value = serde_json::from_str(&b.take_changes().unwrap()).unwrap();
        assert_eq!(changes["incidents"][0]["subject"], "158324", "{changes}");
        assert!(b.take_changes().is_none(), "sent once");
        e.state = EventState::End;
        b.event(&e);
        assert_eq!(b.metrics.incidents_active.load(Relaxed), 0);
        let changes: Value = serde_json::from_str(&b.take_changes().unwrap()).unwrap();
        assert_eq!(changes["incidents"], json!([]));
        assert_eq!(b.snapshot()["incidents"], json!([]));
    }

    #[test]
    fn a_flood_of_unregistered_sensors_and_incidents_is_bounded() {
        let b = board();
        let stats = aqyl_core::windows::window::WindowStats {
            count: 1,
            mean: 1.0,
            min: 1.0,
            max: 1.0,
            stddev: 0.0,
            p50: 1.0,
            p95: 1.0,
        };
        for i in 0..MAX_UNPLACED + 5 {
            b.aggregate(&Aggregate {
                sensor_type: "traffic".into(),
                scope: Scope::Sensor,
                subject: format!("x{i}"),
                field: "avgSpeed".into(),
                window: "5m".into(),
                start: 0,
                end: 300_000,
                stats,
                sax: None,
                sax_code: None,
            });
        }
        assert_eq!(b.lock().sensors.len(), MAX_UNPLACED);
        let event = |i: usize, state| Event {
            extra: Vec::new(),
            id: format!("i{i}"),
            event_type: "outage".into(),
            subject: format!("x{i}"),
            sensor_type: "traffic".into(),
            area: None,
            state,
            level: "warning".into(),
            started_at: 0,
            time: 0,
            rule: "sensor_outage".into(),
            message: String::new(),
            values: Vec::new(),
        };
        for i in 0..MAX_INCIDENTS + 3 {
            b.event(&event(i, EventState::Start));
        }
        assert_eq!(b.lock().incidents.len(), MAX_INCIDENTS);
        let active = |b: &StatusBoard| b.metrics.incidents_active.load(Relaxed);
        assert_eq!(active(&b), (MAX_INCIDENTS + 3) as u64, "all counted");
        b.event(&event(MAX_INCIDENTS + 1, EventState::End));
        b.event(&event(0, EventState::End));
        assert_eq!(active(&b), (MAX_INCIDENTS + 1) as u64);
        assert_eq!(b.snapshot()["more_incidents"], 2);
    }
}
