//! The live city state: for every sensor that has reported, its place, its latest readings
//! (a bounded ring), its latest quality report and closed windows, and the incidents under
//! way. The SensorThings catalogue, `/api/state`, the retained state topics and the status
//! page ([`crate::status`]) all read it.
//!
//! Sensors enter with their first reading (from the city tap). Where no tap feeds readings
//! (`[city] enabled = false`, or a process of a cluster other than 0), the state is built for
//! the status page alone and is told so ([`CityState::admit_from_outputs`]): a sensor then
//! enters with its first quality report or closed window.
//!
//! Bounded: at most `max_sensors` sensors (readings of more are counted and left out), at
//! most `depth` readings each, at most [`MAX_INCIDENTS`] incidents. A sensor silent for
//! `state_ttl` (event time, as the dataflow releases its state) is released, and its retained
//! topic cleared.
//!
//! Sensors are kept behind `Arc`s: a query copies the `Arc`s under the lock and builds its
//! answer after releasing it, so a slow client never holds up the readings; a reading that
//! arrives while a query still holds its sensor copies that sensor once (`Arc::make_mut`).
//!
//! Memory: a reading costs 16 bytes of times, a boxed slice of one `f64` per field and the
//! allocator's overhead: about 100 bytes for a five-field type. With the default depth of 16,
//! 10,000 sensors keep about 16 MB of readings, plus about 1 KB a sensor for its quality
//! report, id and position.

use super::select::Selection;
use aqyl_core::metrics::{quality_band, Metrics, QUALITY_BANDS};
use aqyl_core::quality::{QualityRecord, QualityReport};
use aqyl_core::{Aggregate, Event, EventState, Observation, Scope};
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

/// Incidents kept; more are counted, not kept.
pub const MAX_INCIDENTS: usize = 10_000;

/// A sensor's identity: its type and id (ordered by type, then id: the catalogue's order).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SensorKey {
    /// Sensor type.
    pub sensor_type: Arc<str>,
    /// Sensor id (shared with the readings' own).
    pub sensor_id: Arc<str>,
}

/// One reading as kept: times and one value per field of the sensor's schema.
#[derive(Debug, Clone, PartialEq)]
pub struct Reading {
    /// Event time, Unix ms.
    pub time: u64,
    /// When Aqyl received it, Unix ms.
    pub received_at: i64,
    /// Values in the order of [`SensorState::fields`]; NaN where the reading had none.
    pub values: Box<[f64]>,
}

/// What the city knows of one sensor.
#[derive(Debug, Clone)]
pub struct SensorState {
    /// Type and id.
    pub key: SensorKey,
    /// Area, from the topic, payload or registry.
    pub area: Option<String>,
    /// Latest position (latitude, longitude), from the payload or the registry.
    pub position: Option<(f64, f64)>,
    /// Field names of the readings (the type's fields when the latest reading came).
    pub fields: Arc<[Arc<str>]>,
    /// Readings, oldest first, newest last.
    pub readings: VecDeque<Reading>,
    /// The latest quality report.
    pub quality: Option<Arc<QualityReport>>,
    /// The latest closed window per field.
    pub windows: BTreeMap<Arc<str>, Window>,
    /// The newest event time heard of it (a reading's, a window's start): `state_ttl` counts
    /// from here.
    pub seen: u64,
    /// [`CityState::changes_since`]'s sequence number of its latest change.
    pub changed: u64,
}

impl SensorState {
    fn new(key: SensorKey, fields: Arc<[Arc<str>]>) -> Self {
        Self {
            key,
            area: None,
            position: None,
            fields,
            readings: VecDeque::new(),
            quality: None,
            windows: BTreeMap::new(),
            seen: 0,
            changed: 0,
        }
    }

    /// The newest reading.
    pub fn latest(&self) -> Option<&Reading> {
        self.readings.back()
    }

    /// The value of `field` in `reading`, if it had one.
    pub fn value(&self, reading: &Reading, field: &str) -> Option<f64> {
        let i = self.fields.iter().position(|f| &**f == field)?;
        reading.values.get(i).copied().filter(|v| !v.is_nan())
    }
}

/// A sensor's closed window of one field, as the state keeps it.
#[derive(Debug, Clone, PartialEq)]
pub struct Window {
    /// Its length label (`5m`).
    pub window: Arc<str>,
    /// Its end, Unix ms.
    pub end: u64,
    /// Its statistics.
    pub stats: aqyl_core::windows::window::WindowStats,
}

/// An incident under way.
#[derive(Debug, Clone)]
pub struct Incident {
    /// Sensor type of its subject.
    pub sensor_type: Arc<str>,
    /// Its subject: a sensor id, or an area for area rules.
    pub subject: String,
    /// The area of its subject, when known.
    pub area: Option<String>,
    /// Its latest message, as published.
    pub json: Arc<Value>,
}

impl Incident {
    /// Whether it is about `s`: the sensor itself, or the sensor's area.
    pub fn concerns(&self, s: &SensorState) -> bool {
        (*self.subject == *s.key.sensor_id && self.sensor_type == s.key.sensor_type)
            || s.area.as_deref() == Some(self.subject.as_str())
    }
}

#[derive(Default)]
struct Inner {
    sensors: BTreeMap<SensorKey, Arc<SensorState>>,
    incidents: BTreeMap<(String, String), Incident>,
    /// Sensors whose state changed since the last [`CityState::take_changes`].
    dirty: BTreeSet<SensorKey>,
    /// Sensors released since the last [`CityState::take_changes`].
    released: Vec<SensorKey>,
    /// The newest event time seen: the clock `state_ttl` is measured on.
    clock: u64,
    /// Counts changes, for [`CityState::changes_since`].
    seq: u64,
    /// `seq` at the latest change of the incidents.
    incidents_changed: u64,
    /// Incidents under way beyond [`MAX_INCIDENTS`] (started, not kept, not yet ended).
    more_incidents: u64,
}

impl Inner {
    /// Marks `key`'s sensor changed (for the topics and for the page).
    fn touch(&mut self, key: &SensorKey) {
        let seq = self.seq + 1;
        if let Some(slot) = self.sensors.get_mut(key) {
            Arc::make_mut(slot).changed = seq;
            self.changed(seq, key);
        }
    }

    /// Records a change `seq` (`self.seq + 1`, already written into the sensor's `changed`)
    /// of `key`'s sensor.
    fn changed(&mut self, seq: u64, key: &SensorKey) {
        self.seq = seq;
        if !self.dirty.contains(key) {
            self.dirty.insert(key.clone());
        }
    }
}

/// What changed since a [`CityState::changes_since`] sequence number.
pub struct PageChanges {
    /// The sensors that changed, as they are now.
    pub sensors: Vec<Arc<SensorState>>,
    /// The incidents under way, if they changed.
    pub incidents: Option<Vec<Incident>>,
    /// The sequence number to ask from next time.
    pub seq: u64,
}

/// The live city state (see the module doc).
pub struct CityState {
    inner: Mutex<Inner>,
    depth: usize,
    max_sensors: usize,
    ttl_ms: Option<u64>,
    /// Counts readings, refusals and the sensors kept (`aqyl_city_*`).
    metrics: Arc<Metrics>,
    /// Incidents beyond [`MAX_INCIDENTS`] (an area incident is counted once).
    incidents_refused: AtomicU64,
    /// Whether quality reports and windows admit sensors (no tap feeds readings).
    admit_outputs: AtomicBool,
}

/// A sensor's state as published on its topic and listed by `/api/state`.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    /// The sensor.
    pub key: SensorKey,
    /// Its state, or `None` when it was released (the retained topic is cleared).
    pub state: Option<Value>,
}

impl CityState {
    /// An empty state keeping `depth` readings per sensor, at most `max_sensors` sensors, and
    /// releasing sensors silent for `ttl` (event time; `None`: never).
    pub fn new(
        depth: usize,
        max_sensors: usize,
        ttl: Option<std::time::Duration>,
        metrics: Arc<Metrics>,
    ) -> Arc<Self> {
        Arc::new(Self {
            inner: Mutex::new(Inner::default()),
            depth: depth.max(1),
            max_sensors,
            ttl_ms: ttl.map(|t| t.as_millis() as u64),
            metrics,
            incidents_refused: AtomicU64::new(0),
            admit_outputs: AtomicBool::new(false),
        })
    }

    /// Says that no tap feeds readings: a sensor enters with its first quality report or
    /// closed window instead.
    pub fn admit_from_outputs(&self) {
        self.admit_outputs.store(true, Relaxed);
    }

    /// Incidents not kept (beyond [`MAX_INCIDENTS`]) since the start.
    pub fn incidents_refused(&self) -> u64 {
        self.incidents_refused.load(Relaxed)
    }

    /// The sequence number of the latest change.
    pub fn seq(&self) -> u64 {
        self.lock().seq
    }

    /// Incidents under way that are not kept (beyond [`MAX_INCIDENTS`]).
    pub fn more_incidents(&self) -> u64 {
        self.lock().more_incidents
    }

    /// The slot of `key`, added (with `fields`) unless the state is full.
    fn admit<'a>(
        &self,
        b: &'a mut Inner,
        key: &SensorKey,
        fields: impl FnOnce() -> Arc<[Arc<str>]>,
    ) -> Option<&'a mut Arc<SensorState>> {
        if !b.sensors.contains_key(key) {
            if b.sensors.len() >= self.max_sensors {
                self.metrics.city_sensors_refused.fetch_add(1, Relaxed);
                return None;
            }
            let fresh = SensorState::new(key.clone(), fields());
            b.sensors.insert(key.clone(), Arc::new(fresh));
            self.metrics
                .city_sensors
                .store(b.sensors.len() as u64, Relaxed);
        }
        b.sensors.get_mut(key)
    }

    /// The slot of `key` for an output of the dataflow: added only when no tap feeds readings.
    fn output_slot<'a>(
        &self,
        b: &'a mut Inner,
        key: &SensorKey,
    ) -> Option<&'a mut Arc<SensorState>> {
        if self.admit_outputs.load(Relaxed) {
            self.admit(b, key, || Arc::from(Vec::new()))
        } else {
            b.sensors.get_mut(key)
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Readings kept per sensor.
    pub fn depth(&self) -> usize {
        self.depth
    }

    /// Takes in a decoded reading; `schema` is its type's field names now.
    pub fn reading(&self, obs: &Observation, schema: &Arc<[Arc<str>]>) {
        let key = SensorKey {
            sensor_type: obs.sensor_type.clone(),
            sensor_id: obs.sensor_id.clone(),
        };
        let mut b = self.lock();
        b.clock = b.clock.max(obs.event_time);
        let seq = b.seq + 1;
        let Some(slot) = self.admit(&mut b, &key, || schema.clone()) else {
            return;
        };
        self.metrics.city_readings.fetch_add(1, Relaxed);
        let s = Arc::make_mut(slot);
        s.changed = seq;
        s.seen = s.seen.max(obs.event_time);
        if !same_schema(&s.fields, schema) {
            remap(s, schema);
        }
        if let Some(area) = obs.area.as_deref().filter(|a| s.area.as_deref() != Some(a)) {
            s.area = Some(area.to_string());
        }
        if obs.location.is_some() {
            s.position = obs.location;
        }
        let mut values = vec![f64::NAN; s.fields.len()].into_boxed_slice();
        for (name, v) in &obs.fields {
            if let Some(i) = s.fields.iter().position(|f| f == name) {
                values[i] = *v;
            }
        }
        let reading = Reading {
            time: obs.event_time,
            received_at: obs.received_at,
            values,
        };
        // Kept in event-time order; a redelivered reading (same time) replaces its copy.
        let at = s.readings.partition_point(|r| r.time <= reading.time);
        if at > 0 && s.readings[at - 1].time == reading.time {
            s.readings[at - 1] = reading;
        } else if at == 0 && s.readings.len() >= self.depth {
            return; // older than everything kept
        } else {
            s.readings.insert(at, reading);
            while s.readings.len() > self.depth {
                s.readings.pop_front();
            }
        }
        b.changed(seq, &key);
    }

    /// Takes in a batch of quality records (reports of sensors not heard from are left out,
    /// unless no tap feeds readings: the catalogue lists sensors that have sent a reading),
    /// and keeps `aqyl_quality_sensors{band}` up to date.
    pub fn quality(&self, batch: &[QualityRecord]) {
        let mut bands = [0i64; QUALITY_BANDS.len()];
        let mut b = self.lock();
        for q in batch {
            let QualityRecord::Report(r) = q else {
                continue;
            };
            let key = SensorKey {
                sensor_type: r.sensor_type.clone(),
                sensor_id: r.sensor_id.clone(),
            };
            let seq = b.seq + 1;
            let Some(slot) = self.output_slot(&mut b, &key) else {
                continue;
            };
            let s = Arc::make_mut(slot);
            s.changed = seq;
            if let Some(old) = &s.quality {
                bands[quality_band(old.score)] -= 1;
            }
            bands[quality_band(r.score)] += 1;
            if s.area.is_none() {
                s.area = r.area.as_deref().map(str::to_string);
            }
            s.quality = Some(Arc::new(r.clone()));
            b.changed(seq, &key);
        }
        drop(b);
        self.count_bands(bands);
    }

    fn count_incidents(&self, b: &Inner) {
        self.metrics
            .incidents_active
            .store(b.incidents.len() as u64 + b.more_incidents, Relaxed);
    }

    fn count_bands(&self, bands: [i64; QUALITY_BANDS.len()]) {
        for (slot, d) in self.metrics.quality_bands.iter().zip(bands) {
            if d >= 0 {
                slot.fetch_add(d as u64, Relaxed);
            } else {
                slot.fetch_sub(d.unsigned_abs(), Relaxed);
            }
        }
    }

    /// Takes in a closed window of a sensor (area roll-ups are not kept per sensor): the
    /// latest per field.
    pub fn aggregate(&self, a: &Aggregate) {
        self.aggregates(std::slice::from_ref(a));
    }

    /// [`CityState::aggregate`] for a run of closed windows, under one lock.
    pub fn aggregates(&self, run: &[Aggregate]) {
        let mut b = self.lock();
        for a in run.iter().filter(|a| a.scope == Scope::Sensor) {
            self.take_aggregate(&mut b, a);
        }
    }

    fn take_aggregate(&self, b: &mut Inner, a: &Aggregate) {
        let key = SensorKey {
            sensor_type: a.sensor_type.clone(),
            sensor_id: a.subject.as_str().into(),
        };
        let seq = b.seq + 1;
        let Some(slot) = self.output_slot(b, &key) else {
            return;
        };
        if slot.windows.get(&a.field).is_some_and(|w| w.end > a.end) {
            return;
        }
        // A window says the sensor reported at or after its start (its end may lie well
        // beyond the last reading).
        let s = Arc::make_mut(slot);
        s.changed = seq;
        s.seen = s.seen.max(a.start);
        let window = Window {
            window: a.window.clone(),
            end: a.end,
            stats: a.stats,
        };
        match s.windows.get_mut(&a.field) {
            Some(w) => *w = window,
            None => {
                s.windows.insert(a.field.clone(), window);
            }
        }
        b.clock = b.clock.max(a.start);
        b.changed(seq, &key);
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
                    self.incidents_refused.fetch_add(1, Relaxed);
                    b.more_incidents += 1;
                    self.count_incidents(&b);
                }
                return;
            }
            _ => {
                let json = e.to_value();
                b.incidents.insert(
                    k,
                    Incident {
                        sensor_type: e.sensor_type.clone(),
                        subject: e.subject.clone(),
                        area: e.area.clone(),
                        json: Arc::new(json),
                    },
                );
            }
        }
        self.count_incidents(&b);
        b.seq += 1;
        b.incidents_changed = b.seq;
        // Every sensor it concerns has a new state.
        let own = SensorKey {
            sensor_type: e.sensor_type.clone(),
            sensor_id: e.subject.as_str().into(),
        };
        if b.sensors.contains_key(&own) {
            b.touch(&own);
        } else {
            let in_area: Vec<SensorKey> = b
                .sensors
                .values()
                .filter(|s| s.area.as_deref() == Some(e.subject.as_str()))
                .map(|s| s.key.clone())
                .collect();
            for k in &in_area {
                b.touch(k);
            }
        }
    }

    /// Releases the sensors silent for longer than the TTL (in event time).
    pub fn sweep(&self) {
        let Some(ttl) = self.ttl_ms else { return };
        let mut b = self.lock();
        let horizon = b.clock.saturating_sub(ttl);
        let gone: Vec<SensorKey> = b
            .sensors
            .values()
            .filter(|s| s.seen < horizon)
            .map(|s| s.key.clone())
            .collect();
        let mut bands = [0i64; QUALITY_BANDS.len()];
        for k in gone {
            if let Some(q) = b.sensors.remove(&k).and_then(|s| s.quality.clone()) {
                bands[quality_band(q.score)] -= 1;
            }
            b.dirty.remove(&k);
            b.released.push(k);
        }
        self.metrics
            .city_sensors
            .store(b.sensors.len() as u64, Relaxed);
        drop(b);
        self.count_bands(bands);
    }

    /// The sensors changed after sequence number `seq`, and the incidents if they
    /// changed after it: what the status page's live feed sends. Released sensors are not
    /// listed (the page keeps showing a sensor until it is reloaded).
    pub fn changes_since(&self, seq: u64) -> PageChanges {
        let b = self.lock();
        PageChanges {
            sensors: b
                .sensors
                .values()
                .filter(|s| s.changed > seq)
                .cloned()
                .collect(),
            incidents: (b.incidents_changed > seq).then(|| b.incidents.values().cloned().collect()),
            seq: b.seq,
        }
    }

    /// What changed since the last call: each changed sensor's state once (however often it
    /// changed), and the released sensors.
    pub fn take_changes(&self) -> Vec<Change> {
        let mut b = self.lock();
        let dirty = std::mem::take(&mut b.dirty);
        let released = std::mem::take(&mut b.released);
        let mut out: Vec<Change> = released
            .into_iter()
            .map(|key| Change { key, state: None })
            .collect();
        for key in dirty {
            if let Some(s) = b.sensors.get(&key) {
                let incidents = incidents_of(&b.incidents, s);
                out.push(Change {
                    state: Some(state_json(s, &incidents)),
                    key,
                });
            }
        }
        out
    }

    /// Hands changes back whose publication failed: the next round sends them again (the
    /// state as it is then, or the clearing of a sensor released meanwhile).
    pub fn retry(&self, keys: impl IntoIterator<Item = SensorKey>) {
        let mut b = self.lock();
        for k in keys {
            if b.sensors.contains_key(&k) {
                b.dirty.insert(k);
            } else {
                b.released.push(k);
            }
        }
    }

    /// Every sensor, in key order (copies of the `Arc`s: the lock is not held afterwards).
    pub fn sensors(&self) -> Vec<Arc<SensorState>> {
        self.lock().sensors.values().cloned().collect()
    }

    /// One sensor.
    pub fn sensor(&self, sensor_type: &str, sensor_id: &str) -> Option<Arc<SensorState>> {
        let key = SensorKey {
            sensor_type: sensor_type.into(),
            sensor_id: sensor_id.into(),
        };
        self.lock().sensors.get(&key).cloned()
    }

    /// Incidents under way.
    pub fn incidents(&self) -> Vec<Incident> {
        self.lock().incidents.values().cloned().collect()
    }

    /// `/api/state`: the selected sensors' states, `offset` and `limit` applied, with the
    /// number selected.
    pub fn select(&self, sel: &Selection, offset: usize, limit: usize) -> Value {
        let sensors = self.sensors();
        let incidents = self.incidents();
        let mut total = 0usize;
        let mut listed = Vec::new();
        for s in &sensors {
            if !sel.matches(
                &s.key.sensor_type,
                &s.key.sensor_id,
                s.area.as_deref(),
                s.position,
            ) {
                continue;
            }
            if total >= offset && listed.len() < limit {
                let mine: Vec<Arc<Value>> = incidents
                    .iter()
                    .filter(|i| i.concerns(s))
                    .map(|i| i.json.clone())
                    .collect();
                listed.push(state_json(s, &mine));
            }
            total += 1;
        }
        json!({
            "total": total,
            "offset": offset,
            "sensors": listed,
            "incidents_under_way": incidents.len(),
            "incidents_not_kept": self.incidents_refused(),
        })
    }
}

fn incidents_of(all: &BTreeMap<(String, String), Incident>, s: &SensorState) -> Vec<Arc<Value>> {
    all.values()
        .filter(|i| i.concerns(s))
        .map(|i| i.json.clone())
        .collect()
}

fn same_schema(a: &[Arc<str>], b: &[Arc<str>]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| Arc::ptr_eq(x, y) || x == y)
}

/// Moves a sensor's readings to a new schema (after a descriptor reload): values of fields
/// that remain stay, new fields are empty.
fn remap(s: &mut SensorState, schema: &Arc<[Arc<str>]>) {
    let from: Vec<Option<usize>> = schema
        .iter()
        .map(|f| s.fields.iter().position(|g| g == f))
        .collect();
    for r in s.readings.iter_mut() {
        r.values = from
            .iter()
            .map(|i| i.and_then(|i| r.values.get(i).copied()).unwrap_or(f64::NAN))
            .collect();
    }
    s.fields = schema.clone();
}

/// A sensor's state: the payload of its retained topic and its entry in `/api/state`.
pub fn state_json(s: &SensorState, incidents: &[Arc<Value>]) -> Value {
    let reading = s.latest().map(|r| {
        let mut fields = serde_json::Map::new();
        for (name, v) in s.fields.iter().zip(r.values.iter()) {
            if !v.is_nan() {
                fields.insert(name.to_string(), json!(v));
            }
        }
        json!({
            "time": aqyl_core::output::rfc3339_ms(r.time as i64),
            "received_at": aqyl_core::output::rfc3339_ms(r.received_at),
            "fields": fields,
        })
    });
    let quality = s
        .quality
        .as_ref()
        .and_then(|q| serde_json::from_str::<Value>(&q.to_json()).ok());
    json!({
        "sensor_type": &*s.key.sensor_type,
        "sensor_id": s.key.sensor_id,
        "area": s.area,
        "lat": s.position.map(|p| p.0),
        "lon": s.position.map(|p| p.1),
        "reading": reading,
        "quality": quality,
        "windows": s
            .windows
            .iter()
            .map(|(field, w)| window_json(field, w))
            .collect::<Vec<_>>(),
        "incidents": incidents.iter().map(|v| &**v).collect::<Vec<_>>(),
    })
}

/// A closed window as `/api/state` lists it: its statistics rounded to 3 decimals.
fn window_json(field: &str, w: &Window) -> Value {
    let round = |v: f64| (v * 1000.0).round() / 1000.0;
    json!({
        "field": field,
        "window": &*w.window,
        "end": aqyl_core::output::rfc3339_ms(w.end as i64),
        "count": w.stats.count,
        "mean": round(w.stats.mean),
        "min": round(w.stats.min),
        "max": round(w.stats.max),
    })
}

#[cfg(test)]
pub(crate) mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    pub(crate) fn schema(names: &[&str]) -> Arc<[Arc<str>]> {
        names.iter().map(|n| Arc::from(*n)).collect()
    }

    pub(crate) fn obs(ty: &str, id: &str, t: u64, fields: &[(&str, f64)]) -> Observation {
        Observation {
            sensor_type: ty.into(),
            sensor_id: id.into(),
            area: Some("north".into()),
            event_time: t,
            received_at: t as i64 + 5,
            time_from_receive: false,
            location: Some((56.15, 10.2)),
            fields: fields.iter().map(|(n, v)| (Arc::from(*n), *v)).collect(),
            arrival: Default::default(),
        }
    }

    fn event(subject: &str, state: EventState) -> Event {
        Event {
            extra: Vec::new(),
            id: "i1".into(),
            event_type: "congestion".into(),
            subject: subject.into(),
            sensor_type: "traffic".into(),
            area: Some("north".into()),
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
    fn the_ring_keeps_the_newest_readings_in_event_time_order() {
        let st = CityState::new(3, 10, None, Arc::new(Metrics::default()));
        let sc = schema(&["avgSpeed", "vehicleCount"]);
        for t in [5, 1, 3, 4, 2, 4] {
            st.reading(
                &obs("traffic", "a", t * 1000, &[("avgSpeed", t as f64)]),
                &sc,
            );
        }
        let s = st.sensor("traffic", "a").unwrap();
        let times: Vec<u64> = s.readings.iter().map(|r| r.time / 1000).collect();
        assert_eq!(times, [3, 4, 5], "the three newest, a duplicate kept once");
        assert_eq!(s.value(s.latest().unwrap(), "avgSpeed"), Some(5.0));
        assert_eq!(s.value(s.latest().unwrap(), "vehicleCount"), None, "absent");
        st.reading(&obs("traffic", "a", 1000, &[("avgSpeed", 1.0)]), &sc);
        assert_eq!(st.sensor("traffic", "a").unwrap().readings.len(), 3);
    }

    #[test]
    fn sensors_beyond_the_limit_are_counted_not_kept() {
        let st = CityState::new(2, 2, None, Arc::new(Metrics::default()));
        let sc = schema(&["v"]);
        for id in ["a", "b", "c", "d"] {
            st.reading(&obs("t", id, 1, &[("v", 1.0)]), &sc);
        }
        assert_eq!(st.sensors().len(), 2);
        assert_eq!(st.metrics.city_sensors_refused.load(Relaxed), 2);
        assert_eq!(st.metrics.city_sensors.load(Relaxed), 2);
    }

    #[test]
    fn changes_are_coalesced_and_released_sensors_are_cleared() {
        let day = std::time::Duration::from_secs(86_400);
        let st = CityState::new(4, 10, Some(day), Arc::new(Metrics::default()));
        let sc = schema(&["avgSpeed"]);
        st.reading(&obs("traffic", "a", 1_000, &[("avgSpeed", 50.0)]), &sc);
        st.reading(&obs("traffic", "a", 2_000, &[("avgSpeed", 20.0)]), &sc);
        st.event(&event("a", EventState::Start));
        let changes = st.take_changes();
        assert_eq!(changes.len(), 1, "three changes, one message: {changes:?}");
        let state = changes[0].state.as_ref().unwrap();
        assert_eq!(state["reading"]["fields"]["avgSpeed"], 20.0);
        assert_eq!(state["incidents"][0]["subject"], "a");
        assert!(st.take_changes().is_empty());
        // An area incident concerns every sensor of the area.
        st.reading(&obs("traffic", "b", 3_000, &[("avgSpeed", 50.0)]), &sc);
        st.take_changes();
        st.event(&event("north", EventState::Start));
        assert_eq!(st.take_changes().len(), 2);
        // A day later in event time, only b is still heard from.
        st.reading(
            &obs("traffic", "b", 3_000 + day.as_millis() as u64, &[]),
            &sc,
        );
        st.sweep();
        let changes = st.take_changes();
        let cleared: Vec<_> = changes.iter().filter(|c| c.state.is_none()).collect();
        assert_eq!(cleared.len(), 1, "{changes:?}");
        assert_eq!(&*cleared[0].key.sensor_id, "a");
        assert!(st.sensor("traffic", "a").is_none());
    }

    #[test]
    fn a_reload_that_changes_the_fields_keeps_the_values_that_remain() {
        let st = CityState::new(4, 10, None, Arc::new(Metrics::default()));
        st.reading(
            &obs("traffic", "a", 1, &[("avgSpeed", 50.0), ("x", 1.0)]),
            &schema(&["avgSpeed", "x"]),
        );
        let new = schema(&["vehicleCount", "avgSpeed"]);
        st.reading(&obs("traffic", "a", 2, &[("vehicleCount", 7.0)]), &new);
        let s = st.sensor("traffic", "a").unwrap();
        assert_eq!(s.value(&s.readings[0], "avgSpeed"), Some(50.0));
        assert_eq!(s.value(&s.readings[0], "x"), None);
        assert_eq!(s.value(&s.readings[1], "vehicleCount"), Some(7.0));
    }

    #[test]
    fn select_filters_and_pages() {
        let st = CityState::new(2, 10, None, Arc::new(Metrics::default()));
        let sc = schema(&["v"]);
        for id in ["a", "b", "c"] {
            st.reading(&obs("traffic", id, 1, &[("v", 1.0)]), &sc);
        }
        st.reading(&obs("parking", "p", 1, &[("v", 1.0)]), &sc);
        let sel = Selection::from_query([("type", "traffic")]).unwrap();
        let v = st.select(&sel, 1, 1);
        assert_eq!(v["total"], 3);
        assert_eq!(v["sensors"].as_array().unwrap().len(), 1);
        assert_eq!(v["sensors"][0]["sensor_id"], "b");
    }

    fn window(id: &str, end: u64, mean: f64) -> Aggregate {
        Aggregate {
            sensor_type: "traffic".into(),
            scope: Scope::Sensor,
            subject: id.into(),
            field: "avgSpeed".into(),
            window: "5m".into(),
            start: end - 300_000,
            end,
            stats: aqyl_core::windows::window::WindowStats {
                count: 2,
                mean,
                min: mean,
                max: mean,
                stddev: 0.0,
                p50: mean,
                p95: mean,
            },
            sax: None,
            sax_code: None,
        }
    }

    #[test]
    fn windows_enter_the_state_and_outputs_admit_sensors_only_without_a_tap() {
        let st = CityState::new(2, 10, None, Arc::new(Metrics::default()));
        st.aggregate(&window("a", 600_000, 40.0));
        assert!(st.sensors().is_empty(), "the tap admits sensors");
        st.reading(
            &obs("traffic", "a", 1, &[("avgSpeed", 1.0)]),
            &schema(&["avgSpeed"]),
        );
        st.aggregate(&window("a", 600_000, 40.0));
        st.aggregate(&window("a", 300_000, 10.0));
        let sel = Selection::from_query([("id", "a")]).unwrap();
        let v = st.select(&sel, 0, 10);
        assert_eq!(
            v["sensors"][0]["windows"][0]["mean"], 40.0,
            "the latest kept: {v}"
        );
        let page = CityState::new(2, 10, None, Arc::new(Metrics::default()));
        page.admit_from_outputs();
        let before = page.seq();
        page.aggregate(&window("b", 600_000, 40.0));
        let changes = page.changes_since(before);
        assert_eq!(changes.sensors.len(), 1);
        assert!(changes.incidents.is_none());
        assert!(page.changes_since(changes.seq).sensors.is_empty());
    }

    #[test]
    fn incidents_beyond_the_cap_are_counted_as_under_way() {
        let metrics = Arc::new(Metrics::default());
        let st = CityState::new(2, 10, None, metrics.clone());
        let numbered = |i: usize, state| Event {
            subject: format!("x{i}"),
            ..event("x", state)
        };
        for i in 0..MAX_INCIDENTS + 3 {
            st.event(&numbered(i, EventState::Start));
        }
        assert_eq!(st.incidents().len(), MAX_INCIDENTS);
        let active = || metrics.incidents_active.load(Relaxed);
        assert_eq!(active(), (MAX_INCIDENTS + 3) as u64, "all counted");
        st.event(&numbered(MAX_INCIDENTS + 1, EventState::End));
        st.event(&numbered(0, EventState::End));
        assert_eq!(active(), (MAX_INCIDENTS + 1) as u64);
        assert_eq!(st.more_incidents(), 2);
    }
}
