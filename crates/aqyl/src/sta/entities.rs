//! The SensorThings entities, made on request from the city state and the sensor types:
//!
//! | entity | one per | `@iot.id` |
//! | --- | --- | --- |
//! | Thing | sensor that has reported | `<type>/<sensor_id>` |
//! | Location | Thing with a position (registry or payload) | as its Thing |
//! | Sensor | sensor type (its descriptor) | `<type>` |
//! | ObservedProperty | field of a sensor type | `<type>/<field>` |
//! | Datastream | Thing and field of its type | `<type>/<sensor_id>/<field>` |
//! | Observation | kept reading with a value for the field | `<type>/<sensor_id>/<field>/<event ms>` |
//!
//! Ids are strings (the standard allows any); a Thing id holds the sensor id as is, so the
//! type and field names (which cannot hold `/`) are what an id is split on. In links an id is
//! quoted (`'` doubled) and percent-encoded, so any sensor id makes a valid URL.
//! `HistoricalLocations` exist and are empty (Aqyl keeps positions, not their history).
//! Observations of a Datastream are listed newest first, so `$top=1` is the latest reading.

use crate::city::state::SensorState;
use aqyl_core::ingest::decode::Registry;
use aqyl_core::ingest::descriptor::{Bound, SensorType};
use serde_json::{json, Map, Value};
use std::sync::Arc;

/// The entity sets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Set {
    /// Things.
    Things,
    /// Locations.
    Locations,
    /// HistoricalLocations (always empty).
    HistoricalLocations,
    /// Sensors.
    Sensors,
    /// ObservedProperties.
    ObservedProperties,
    /// Datastreams.
    Datastreams,
    /// Observations.
    Observations,
}

impl Set {
    /// Every set, in the order the service document lists them.
    pub const ALL: [Set; 7] = [
        Set::Things,
        Set::Locations,
        Set::HistoricalLocations,
        Set::Sensors,
        Set::ObservedProperties,
        Set::Datastreams,
        Set::Observations,
    ];

    /// Its name in URLs.
    pub fn name(self) -> &'static str {
        match self {
            Set::Things => "Things",
            Set::Locations => "Locations",
            Set::HistoricalLocations => "HistoricalLocations",
            Set::Sensors => "Sensors",
            Set::ObservedProperties => "ObservedProperties",
            Set::Datastreams => "Datastreams",
            Set::Observations => "Observations",
        }
    }

    /// The set of that name.
    pub fn by_name(name: &str) -> Option<Set> {
        Set::ALL.into_iter().find(|s| s.name() == name)
    }
}

/// One entity.
#[derive(Debug, Clone)]
pub enum Ent {
    /// A sensor as a Thing.
    Thing(Arc<SensorState>),
    /// A sensor's position.
    Location(Arc<SensorState>),
    /// A sensor type.
    Sensor(Arc<str>),
    /// A field of a sensor type.
    Property(Arc<str>, Arc<str>),
    /// A sensor's field.
    Datastream(Arc<SensorState>, Arc<str>),
    /// A kept reading of a sensor's field (index into its ring).
    Observation(Arc<SensorState>, Arc<str>, usize),
}

/// What a navigation property leads to.
pub enum Nav {
    /// A to-many navigation (a collection).
    Many(Vec<Ent>),
    /// A to-one navigation.
    One(Option<Ent>),
}

/// Most entities one request may visit (examined, navigated to, rendered): nested `$expand`
/// items and `$filter` paths through navigation multiply, and a URL must not make a request
/// visit the whole city many times over.
pub const MAX_WORK: usize = 1_000_000;

/// What a request sees: the sensor types and the sensors as they were when it came.
pub struct Ctx {
    /// The current sensor types.
    pub registry: Arc<Registry>,
    /// Every sensor, in key order.
    pub sensors: Vec<Arc<SensorState>>,
    /// `http://host/v1.1`, for links.
    pub base: String,
    /// Entities visited so far (see [`MAX_WORK`]).
    pub work: std::cell::Cell<usize>,
}

impl Ctx {
    /// Counts `n` more entities visited; false once the request has visited too many.
    pub fn spend(&self, n: usize) -> bool {
        let w = self.work.get().saturating_add(n);
        self.work.set(w);
        w <= MAX_WORK
    }

    /// Whether the request has visited more than [`MAX_WORK`] entities.
    pub fn exhausted(&self) -> bool {
        self.work.get() > MAX_WORK
    }

    fn ty(&self, name: &str) -> Option<&SensorType> {
        self.registry.get(name)
    }

    /// A sensor's current fields (none once its type is gone).
    fn fields(&self, s: &SensorState) -> Vec<Arc<str>> {
        self.ty(&s.key.sensor_type)
            .map(|t| t.fields.iter().map(|f| f.name.clone()).collect())
            .unwrap_or_default()
    }

    fn sensor(&self, ty: &str, id: &str) -> Option<Arc<SensorState>> {
        let i = self
            .sensors
            .binary_search_by(|s| (&*s.key.sensor_type, &*s.key.sensor_id).cmp(&(ty, id)))
            .ok()?;
        Some(self.sensors[i].clone())
    }

    /// Every entity of a set (lazily: Observations are many).
    pub fn all(&self, set: Set) -> Box<dyn Iterator<Item = Ent> + '_> {
        let listed = move |s: &&Arc<SensorState>| self.ty(&s.key.sensor_type).is_some();
        match set {
            Set::Things => Box::new(self.sensors.iter().filter(listed).cloned().map(Ent::Thing)),
            Set::Locations => Box::new(
                self.sensors
                    .iter()
                    .filter(listed)
                    .filter(|s| s.position.is_some())
                    .cloned()
                    .map(Ent::Location),
            ),
            Set::HistoricalLocations => Box::new(std::iter::empty()),
            Set::Sensors => Box::new(
                self.registry
                    .types()
                    .iter()
                    .map(|t| Ent::Sensor(t.name.clone())),
            ),
            Set::ObservedProperties => Box::new(self.registry.types().iter().flat_map(|t| {
                t.fields
                    .iter()
                    .map(|f| Ent::Property(t.name.clone(), f.name.clone()))
            })),
            Set::Datastreams => Box::new(self.sensors.iter().filter(listed).flat_map(|s| {
                self.fields(s)
                    .into_iter()
                    .map(|f| Ent::Datastream(s.clone(), f))
            })),
            Set::Observations => Box::new(self.sensors.iter().filter(listed).flat_map(|s| {
                self.fields(s)
                    .into_iter()
                    .flat_map(move |f| observations(s, &f))
            })),
        }
    }

    /// The entity of `set` with `id`.
    pub fn by_id(&self, set: Set, id: &str) -> Option<Ent> {
        // Split off the type (first part) and, where there is one, the field and the time
        // (last parts): type and field names hold no '/', sensor ids may.
        let (ty, rest) = id.split_once('/').unwrap_or((id, ""));
        let last = |s: &str| {
            s.rsplit_once('/')
                .map(|(a, b)| (a.to_string(), b.to_string()))
        };
        let known = self.ty(ty)?;
        match set {
            Set::Sensors => (rest.is_empty()).then(|| Ent::Sensor(known.name.clone())),
            Set::ObservedProperties => known
                .fields
                .iter()
                .find(|f| &*f.name == rest)
                .map(|f| Ent::Property(known.name.clone(), f.name.clone())),
            Set::Things => self.sensor(ty, rest).map(Ent::Thing),
            Set::Locations => self
                .sensor(ty, rest)
                .filter(|s| s.position.is_some())
                .map(Ent::Location),
            Set::Datastreams => {
                let (sid, field) = last(rest)?;
                let s = self.sensor(ty, &sid)?;
                let f = self.fields(&s).into_iter().find(|f| **f == *field)?;
                Some(Ent::Datastream(s, f))
            }
            Set::Observations => {
                let (head, time) = last(rest)?;
                let (sid, field) = last(&head)?;
                let time: u64 = time.parse().ok()?;
                let s = self.sensor(ty, &sid)?;
                let f = self.fields(&s).into_iter().find(|f| **f == *field)?;
                let i = s.readings.iter().position(|r| r.time == time)?;
                s.value(&s.readings[i], &f)?;
                Some(Ent::Observation(s, f, i))
            }
            Set::HistoricalLocations => None,
        }
    }

    /// Follows the navigation property `nav` of `e`; `None` when `e` has no such property.
    pub fn navigate(&self, e: &Ent, nav: &str) -> Option<Nav> {
        let found = self.navigate_uncounted(e, nav)?;
        self.spend(match &found {
            Nav::Many(list) => list.len().max(1),
            Nav::One(_) => 1,
        });
        Some(found)
    }

    fn navigate_uncounted(&self, e: &Ent, nav: &str) -> Option<Nav> {
        if self.exhausted() {
            return Some(match e {
                Ent::Datastream(..) | Ent::Observation(..)
                    if matches!(nav, "Thing" | "Sensor" | "ObservedProperty" | "Datastream") =>
                {
                    Nav::One(None)
                }
                _ => Nav::Many(Vec::new()),
            })
            .filter(|_| navs(e).contains(&nav));
        }
        use Nav::*;
        Some(match (e, nav) {
            (Ent::Thing(s), "Datastreams") => Many(
                self.fields(s)
                    .into_iter()
                    .map(|f| Ent::Datastream(s.clone(), f))
                    .collect(),
            ),
            (Ent::Thing(s), "Locations") => Many(
                s.position
                    .map(|_| Ent::Location(s.clone()))
                    .into_iter()
                    .collect(),
            ),
            (Ent::Thing(_) | Ent::Location(_), "HistoricalLocations") => Many(Vec::new()),
            (Ent::Location(s), "Things") => Many(vec![Ent::Thing(s.clone())]),
            (Ent::Sensor(t), "Datastreams") => Many(
                self.sensors
                    .iter()
                    .filter(|s| s.key.sensor_type == *t)
                    .flat_map(|s| {
                        self.fields(s)
                            .into_iter()
                            .map(|f| Ent::Datastream(s.clone(), f))
                    })
                    .collect(),
            ),
            (Ent::Property(t, f), "Datastreams") => Many(
                self.sensors
                    .iter()
                    .filter(|s| s.key.sensor_type == *t)
                    .map(|s| Ent::Datastream(s.clone(), f.clone()))
                    .collect(),
            ),
            (Ent::Datastream(s, _), "Thing") => One(Some(Ent::Thing(s.clone()))),
            (Ent::Datastream(s, _), "Sensor") => One(Some(Ent::Sensor(s.key.sensor_type.clone()))),
            (Ent::Datastream(s, f), "ObservedProperty") => {
                One(Some(Ent::Property(s.key.sensor_type.clone(), f.clone())))
            }
            (Ent::Datastream(s, f), "Observations") => Many(observations(s, f).collect()),
            (Ent::Observation(s, f, _), "Datastream") => {
                One(Some(Ent::Datastream(s.clone(), f.clone())))
            }
            _ => return None,
        })
    }

    /// The entity's self link.
    pub fn self_link(&self, e: &Ent) -> String {
        format!("{}/{}({})", self.base, set_of(e).name(), quote_id(&id(e)))
    }

    /// The entity as JSON: its properties, `@iot.id`, `@iot.selfLink` and navigation links.
    pub fn json(&self, e: &Ent) -> Map<String, Value> {
        let mut m = Map::new();
        let link = self.self_link(e);
        m.insert("@iot.id".into(), json!(id(e)));
        m.insert("@iot.selfLink".into(), json!(link));
        let props = match e {
            Ent::Thing(s) => json!({
                "name": s.key.sensor_id,
                "description": format!("{} sensor {}", s.key.sensor_type, s.key.sensor_id),
                "properties": {"type": &*s.key.sensor_type, "area": s.area},
            }),
            Ent::Location(s) => json!({
                "name": format!("Position of {} sensor {}", s.key.sensor_type, s.key.sensor_id),
                "description": "From the sensor registry, or the latest reading's position fields",
                "encodingType": "application/geo+json",
                "location": point(s),
                "properties": {"area": s.area},
            }),
            Ent::Sensor(t) => {
                let ty = self.ty(t);
                json!({
                    "name": &**t,
                    "description": format!("Aqyl sensor type {t}"),
                    "encodingType": "application/json",
                    "metadata": ty.map(descriptor),
                    "properties": {"descriptor": ty.map(|t| t.source.display().to_string())},
                })
            }
            Ent::Property(t, f) => {
                let unit = self.unit(t, f);
                json!({
                    "name": &**f,
                    "definition": format!("{}/ObservedProperties({})", self.base, quote_id(&format!("{t}/{f}"))),
                    "description": match &unit {
                        Some(u) => format!("{f} of {t} sensors, in {u}"),
                        None => format!("{f} of {t} sensors"),
                    },
                    "properties": {"sensor_type": &**t, "unit": unit},
                })
            }
            Ent::Datastream(s, f) => {
                let unit = self.unit(&s.key.sensor_type, f);
                let times: Vec<u64> = s
                    .readings
                    .iter()
                    .filter(|r| s.value(r, f).is_some())
                    .map(|r| r.time)
                    .collect();
                let span = match (times.first(), times.last()) {
                    (Some(a), Some(b)) => Some(format!(
                        "{}/{}",
                        aqyl_core::output::rfc3339_ms(*a as i64),
                        aqyl_core::output::rfc3339_ms(*b as i64)
                    )),
                    _ => None,
                };
                json!({
                    "name": format!("{}/{f}", s.key.sensor_id),
                    "description": format!("{f} of {} sensor {}", s.key.sensor_type, s.key.sensor_id),
                    "observationType": "http://www.opengis.net/def/observationType/OGC-OM/2.0/OM_Measurement",
                    "unitOfMeasurement": {
                        "name": unit.clone().unwrap_or_default(),
                        "symbol": unit.clone().unwrap_or_default(),
                        "definition": unit.map(|u| format!("urn:aqyl:unit:{u}")).unwrap_or_default(),
                    },
                    "observedArea": s.position.map(|_| point(s)),
                    "phenomenonTime": span,
                    "properties": {"sensor_type": &*s.key.sensor_type, "sensor_id": s.key.sensor_id, "field": &**f, "area": s.area},
                })
            }
            Ent::Observation(s, f, i) => {
                let r = &s.readings[*i];
                json!({
                    "phenomenonTime": aqyl_core::output::rfc3339_ms(r.time as i64),
                    "resultTime": aqyl_core::output::rfc3339_ms(r.received_at),
                    "result": s.value(r, f),
                })
            }
        };
        if let Value::Object(p) = props {
            m.extend(p);
        }
        for nav in navs(e) {
            m.insert(
                format!("{nav}@iot.navigationLink"),
                json!(format!("{link}/{nav}")),
            );
        }
        m
    }

    fn unit(&self, ty: &str, field: &str) -> Option<String> {
        self.ty(ty)?
            .fields
            .iter()
            .find(|f| &*f.name == field)?
            .unit
            .clone()
    }
}

/// A sensor's readings of `field`, newest first.
fn observations(s: &Arc<SensorState>, field: &Arc<str>) -> impl Iterator<Item = Ent> {
    let (s, field) = (s.clone(), field.clone());
    (0..s.readings.len()).rev().filter_map(move |i| {
        s.value(&s.readings[i], &field)
            .map(|_| Ent::Observation(s.clone(), field.clone(), i))
    })
}

fn point(s: &SensorState) -> Value {
    match s.position {
        Some((lat, lon)) => json!({"type": "Point", "coordinates": [lon, lat]}),
        None => Value::Null,
    }
}

/// What a Sensor's `metadata` says of its type: the descriptor's fields, units and ranges.
fn descriptor(t: &SensorType) -> Value {
    let bound = |b: &Option<Bound>| match b {
        Some(Bound::Value(v)) => json!(v),
        Some(Bound::Field(f)) => json!(format!("@{f}")),
        None => Value::Null,
    };
    json!({
        "topic": t.topic.as_str(),
        "expected_interval": aqyl_core::duration::label(t.expected_interval),
        "fields": t.fields.iter().map(|f| json!({
            "name": &*f.name,
            "unit": f.unit,
            "required": f.required,
            "min": bound(&f.min),
            "max": bound(&f.max),
        })).collect::<Vec<_>>(),
    })
}

/// The set an entity belongs to.
pub fn set_of(e: &Ent) -> Set {
    match e {
        Ent::Thing(_) => Set::Things,
        Ent::Location(_) => Set::Locations,
        Ent::Sensor(_) => Set::Sensors,
        Ent::Property(..) => Set::ObservedProperties,
        Ent::Datastream(..) => Set::Datastreams,
        Ent::Observation(..) => Set::Observations,
    }
}

/// The navigation properties of an entity.
pub fn navs(e: &Ent) -> &'static [&'static str] {
    match e {
        Ent::Thing(_) => &["Locations", "HistoricalLocations", "Datastreams"],
        Ent::Location(_) => &["Things", "HistoricalLocations"],
        Ent::Sensor(_) | Ent::Property(..) => &["Datastreams"],
        Ent::Datastream(..) => &["Thing", "Sensor", "ObservedProperty", "Observations"],
        Ent::Observation(..) => &["Datastream"],
    }
}

/// An entity's `@iot.id`.
pub fn id(e: &Ent) -> String {
    match e {
        Ent::Thing(s) | Ent::Location(s) => format!("{}/{}", s.key.sensor_type, s.key.sensor_id),
        Ent::Sensor(t) => t.to_string(),
        Ent::Property(t, f) => format!("{t}/{f}"),
        Ent::Datastream(s, f) => format!("{}/{}/{f}", s.key.sensor_type, s.key.sensor_id),
        Ent::Observation(s, f, i) => format!(
            "{}/{}/{f}/{}",
            s.key.sensor_type, s.key.sensor_id, s.readings[*i].time
        ),
    }
}

/// An id as it stands in a URL: quoted, `'` doubled, and percent-encoded (all but the
/// unreserved characters), so `Things('a/b c''d')` becomes `Things('a%2Fb%20c%27%27d')`.
pub fn quote_id(id: &str) -> String {
    let mut out = String::from("'");
    for b in id.replace('\'', "''").bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out.push('\'');
    out
}
