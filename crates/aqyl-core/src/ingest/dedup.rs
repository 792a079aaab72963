//! Duplicate readings: the same sensor, event time and values as a reading already taken.
//!
//! MQTT QoS 1 delivers at least once: after a reconnect the broker sends again what Aqyl had
//! not acknowledged, and after a crash a message may be both in the ingest log and redelivered.
//! A reading is a duplicate when its sensor, event time and every field value equal those of
//! a reading taken while its windows are still open; it is dropped and counted, so aggregates,
//! rules and quality see it once. (A sensor that sends the same reading twice on purpose is
//! treated the same way: there is nothing new in it.) Readings are remembered only while they
//! could still change a result: from the watermark on (minus the update horizon when late
//! updates are on); an older duplicate is late anyway and dead-lettered as such.

use crate::fnv::{fnv_byte, fnv_bytes, FNV_START};
use crate::Observation;
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};

/// A sensor's remembered (event time, content digest) stamps, sorted, without repeats.
/// Readings come mostly in time order, so a new stamp nearly always goes at the back and the
/// oldest leave from the front: a ring buffer searched by bisection, not a tree. (Serialized
/// as a sequence, as the `BTreeSet` and the `Vec` before it: checkpoints read either way.)
#[derive(Debug, Default, Clone, Serialize)]
#[serde(transparent)]
struct Stamps(VecDeque<(u64, u64)>);

impl<'de> Deserialize<'de> for Stamps {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let mut stamps = Vec::<(u64, u64)>::deserialize(d)?;
        stamps.sort_unstable();
        stamps.dedup();
        Ok(Self(stamps.into()))
    }
}

impl Stamps {
    fn contains(&self, stamp: &(u64, u64)) -> bool {
        // In-order readings (nearly all) come after the newest stamp: no search.
        self.0.back().is_some_and(|last| last >= stamp) && self.0.binary_search(stamp).is_ok()
    }

    fn insert(&mut self, stamp: (u64, u64)) {
        match self.0.back() {
            Some(last) if *last >= stamp => {
                if let Err(at) = self.0.binary_search(&stamp) {
                    self.0.insert(at, stamp);
                }
            }
            _ => self.0.push_back(stamp),
        }
    }

    /// Drops the stamps before `keep_from` (the oldest first).
    fn forget_before(&mut self, keep_from: u64) {
        while self.0.front().is_some_and(|(t, _)| *t < keep_from) {
            self.0.pop_front();
        }
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// The readings of recent event times, per sensor.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct Dedup {
    /// Sensor key → (event time, content hash) of readings at or after the horizon, ordered
    /// by time: a long lateness keeps thousands per sensor (8 days of 5-minute readings), so
    /// a lookup and forgetting the oldest must not scan them all.
    seen: HashMap<u64, Stamps, BuildHasherDefault<KeyHasher>>,
}

/// Hashes a sensor key, itself already an FNV hash, by one multiplication instead of SipHash.
#[derive(Debug, Default, Clone, Copy)]
pub struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        self.0 = fnv_bytes(self.0 ^ FNV_START, bytes);
    }

    fn write_u64(&mut self, key: u64) {
        // Spread FNV's weaker low bits over the whole word (hashbrown reads both ends).
        self.0 = (key ^ (key >> 29)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    }
}

fn sensor_key(obs: &Observation) -> u64 {
    crate::fnv::stable_hash(&[&obs.sensor_type, &obs.sensor_id])
}

/// A digest of a reading's fields (names and values).
pub fn content(obs: &Observation) -> u64 {
    // FNV-1a over each name, a 0 and the value's bytes (little-endian), in field order.
    obs.fields.iter().fold(FNV_START, |h, (name, value)| {
        let h = fnv_byte(fnv_bytes(h, name.as_bytes()), 0);
        fnv_bytes(h, &value.to_bits().to_le_bytes())
    })
}

/// The digest of `obs`'s fields: the one the ingest recorded, else [`content`].
pub fn digest(obs: &Observation) -> u64 {
    match obs.arrival.digest {
        0 => content(obs),
        d => d,
    }
}

impl Dedup {
    /// Whether `obs` is new; a new reading at or after `keep_from` is remembered (and the
    /// sensor's readings before `keep_from` are forgotten).
    pub fn first_time(&mut self, obs: &Observation, keep_from: u64) -> bool {
        let key = sensor_key(obs);
        let stamp = (obs.event_time, digest(obs));
        let Some(seen) = self.seen.get_mut(&key) else {
            if obs.event_time >= keep_from {
                self.seen.insert(key, Stamps(VecDeque::from([stamp])));
            }
            return true;
        };
        if seen.contains(&stamp) {
            return false;
        }
        seen.forget_before(keep_from);
        if obs.event_time >= keep_from {
            seen.insert(stamp);
        }
        if seen.is_empty() {
            self.seen.remove(&key);
        }
        true
    }

    /// Forgets every reading before `keep_from` (and sensors with none left).
    pub fn forget_before(&mut self, keep_from: u64) {
        self.seen.retain(|_, seen| {
            seen.forget_before(keep_from);
            !seen.is_empty()
        });
    }

    /// Sensors with remembered readings.
    pub fn sensors(&self) -> usize {
        self.seen.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readings_out_of_time_order_are_still_told_apart() {
        let mut d = Dedup::default();
        for t in [5_000, 1_000, 3_000, 9_000, 3_000] {
            d.first_time(&obs("a", t, 5.0), 0);
        }
        for t in [1_000, 3_000, 5_000, 9_000] {
            assert!(!d.first_time(&obs("a", t, 5.0), 0), "{t}");
        }
        assert!(d.first_time(&obs("a", 4_000, 5.0), 0));
        // A checkpoint's stamps read back sorted, whatever order they were written in.
        let text = r#"{"seen":{"7":[[9,1],[2,1],[9,1]]}}"#;
        let read: Dedup = serde_json::from_str(text).unwrap();
        assert_eq!(read.seen[&7].0, VecDeque::from([(2, 1), (9, 1)]));
    }

    #[test]
    fn content_is_fnv1a_of_each_name_a_zero_and_the_value() {
        let mut o = obs("a", 1_000, 5.5);
        o.fields.push(("vehicleCount".into(), 7.0));
        let bytes: Vec<u8> = o
            .fields
            .iter()
            .flat_map(|(n, v)| n.bytes().chain([0]).chain(v.to_bits().to_le_bytes()))
            .collect();
        assert_eq!(content(&o), crate::fnv::fnv1a(bytes));
    }

    fn obs(id: &str, t: u64, v: f64) -> Observation {
        Observation {
            sensor_type: "traffic".into(),
            sensor_id: id.into(),
            area: None,
            event_time: t,
            received_at: 0,
            time_from_receive: false,
            location: None,
            fields: vec![("avgSpeed".into(), v)],
            arrival: Default::default(),
        }
    }

    #[test]
    fn the_same_reading_twice_is_a_duplicate() {
        let mut d = Dedup::default();
        assert!(d.first_time(&obs("a", 1_000, 5.0), 0));
        assert!(!d.first_time(&obs("a", 1_000, 5.0), 0));
        // Another value, time or sensor is new.
        assert!(d.first_time(&obs("a", 1_000, 6.0), 0));
        assert!(d.first_time(&obs("a", 2_000, 5.0), 0));
        assert!(d.first_time(&obs("b", 1_000, 5.0), 0));
    }

    #[test]
    fn readings_before_the_horizon_are_forgotten() {
        let mut d = Dedup::default();
        assert!(d.first_time(&obs("a", 1_000, 5.0), 0));
        assert!(d.first_time(&obs("a", 5_000, 5.0), 2_000));
        // 1 000 was forgotten when the horizon passed it.
        assert!(d.first_time(&obs("a", 1_000, 5.0), 2_000));
        d.forget_before(10_000);
        assert_eq!(d.sensors(), 0);
        assert!(d.first_time(&obs("a", 5_000, 5.0), 10_000));
    }
}
