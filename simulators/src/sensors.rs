//! The simulated city: sensors of five types placed in areas, and the readings they produce.
//!
//! Everything here is deterministic for a seed: a sensor's parameters and its stream of
//! readings come from its own random generator, seeded from the run's seed and the sensor's
//! position, so adding faults or other sensor types never changes another sensor's values.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Duration, Utc};
use serde_json::Value;

use crate::error::Error;
use crate::patterns::{self, ParkingProfile};
use crate::payload::{Fields, Payload};
use crate::time::{self, ISO_LOCAL, SPACE_LOCAL, SPACE_LOCAL_MS};

/// The kinds of sensor the simulator knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SensorType {
    /// Road segment: CityPulse traffic rows every 5 minutes.
    Traffic,
    /// Garage: CityPulse parking rows every ~30 minutes.
    Parking,
    /// Air quality: CityPulse pollution rows every 5 minutes.
    Pollution,
    /// Weather station: CityPulse weather rows every 10-30 minutes.
    Weather,
    /// Noise meter: SenML (RFC 8428) records every 5 minutes.
    Noise,
}

impl SensorType {
    /// All types, in the order sensors are laid out.
    pub const ALL: [SensorType; 5] = [
        SensorType::Traffic,
        SensorType::Parking,
        SensorType::Pollution,
        SensorType::Weather,
        SensorType::Noise,
    ];

    /// The name used in topics and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            SensorType::Traffic => "traffic",
            SensorType::Parking => "parking",
            SensorType::Pollution => "pollution",
            SensorType::Weather => "weather",
            SensorType::Noise => "noise",
        }
    }

    /// The measurement fields (what faults tamper with), in payload order.
    pub fn measurement_fields(self) -> &'static [&'static str] {
        match self {
            SensorType::Traffic => &[
                "avgMeasuredTime",
                "avgSpeed",
                "medianMeasuredTime",
                "vehicleCount",
            ],
            SensorType::Parking => &["vehiclecount"],
            SensorType::Pollution => &[
                "ozone",
                "particullate_matter",
                "carbon_monoxide",
                "sulfure_dioxide",
                "nitrogen_dioxide",
            ],
            SensorType::Weather => &["hum", "tempm", "wspdm"],
            SensorType::Noise => &["v"],
        }
    }

    /// The payload field that carries the event time.
    pub fn time_field(self) -> &'static str {
        match self {
            SensorType::Traffic | SensorType::Weather => "TIMESTAMP",
            SensorType::Parking => "updatetime",
            SensorType::Pollution => "timestamp",
            SensorType::Noise => "bt",
        }
    }

    /// The event time `t` as this type's payload writes it.
    pub fn time_value(self, t: DateTime<Utc>) -> Value {
        match self {
            SensorType::Traffic | SensorType::Weather => Value::from(time::local(t, ISO_LOCAL)),
            SensorType::Parking => Value::from(time::local(t, SPACE_LOCAL_MS)),
            SensorType::Pollution => Value::from(time::local(t, SPACE_LOCAL)),
            SensorType::Noise => Value::from(t.timestamp()),
        }
    }
}

impl fmt::Display for SensorType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for SensorType {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        SensorType::ALL
            .into_iter()
            .find(|t| t.as_str() == s.trim())
            .ok_or_else(|| {
                Error::Invalid(format!(
                    "unknown sensor type {s:?}; expected one of traffic, parking, pollution, weather, noise"
                ))
            })
    }
}

/// Parses a comma-separated list of sensor types (`traffic,parking`).
pub fn parse_types(s: &str) -> Result<Vec<SensorType>, Error> {
    let mut out: Vec<SensorType> = s
        .split(',')
        .filter(|p| !p.trim().is_empty())
        .map(SensorType::from_str)
        .collect::<Result<_, _>>()?;
    out.sort();
    out.dedup();
    Ok(out)
}

/// How many sensors of which types, spread over how many areas.
#[derive(Debug, Clone, PartialEq)]
pub struct CityConfig {
    /// Sensors per type.
    pub sensors: usize,
    /// Number of areas, named `area-1` .. `area-N`.
    pub areas: usize,
    /// Which sensor types to simulate.
    pub types: Vec<SensorType>,
}

impl Default for CityConfig {
    fn default() -> Self {
        Self {
            sensors: 10,
            areas: 5,
            types: SensorType::ALL.to_vec(),
        }
    }
}

/// Per-type parameters fixed when the city is laid out.
#[derive(Debug, Clone, PartialEq)]
pub enum Params {
    /// A road segment.
    Traffic {
        /// `extID` column.
        ext_id: i64,
        /// Segment length, for travel times.
        distance_m: f64,
        /// Speed with no traffic (km/h).
        free_speed: f64,
        /// Usual rush-hour vehicle count per 5 minutes.
        peak_count: f64,
    },
    /// A garage.
    Parking {
        /// Capacity (`totalspaces`).
        total: i64,
        /// How it fills during the day.
        profile: ParkingProfile,
    },
    /// An air-quality sensor (five pollutants).
    Pollution {
        /// Night-time index of each pollutant.
        base: [f64; 5],
    },
    /// A weather station.
    Weather {
        /// Daily mean temperature.
        mean_temp: f64,
    },
    /// A noise meter.
    Noise {
        /// Offset from the area's typical level (dB).
        offset: f64,
    },
}

/// One simulated sensor.
#[derive(Debug, Clone, PartialEq)]
pub struct Sensor {
    /// Position in [`City::sensors`].
    pub index: usize,
    /// Position among the sensors of the same type.
    pub type_index: usize,
    /// Number of sensors of the same type (keeps `_id` row ids unique).
    pub type_count: usize,
    /// Its type.
    pub kind: SensorType,
    /// Its id: the last topic level and the id inside the payload.
    pub id: String,
    /// Its area (`area-3`).
    pub area: String,
    /// Latitude.
    pub lat: f64,
    /// Longitude.
    pub lon: f64,
    /// Type-specific parameters.
    pub params: Params,
}

impl Sensor {
    /// The MQTT topic the sensor publishes to: `city/<type>/<id>`.
    pub fn topic(&self) -> String {
        format!("city/{}/{}", self.kind, self.id)
    }
}

/// The real Aarhus garages and their capacities, used for the first garages.
const GARAGES: [(&str, i64, ParkingProfile); 8] = [
    ("BRUUNS", 953, ParkingProfile::Shopping),
    ("NORREPORT", 65, ParkingProfile::Commuter),
    ("SCANDCENTER", 1240, ParkingProfile::Shopping),
    ("SKOLEBAKKEN", 512, ParkingProfile::Commuter),
    ("SALLING", 700, ParkingProfile::Shopping),
    ("BUSGADEHUSET", 130, ParkingProfile::Commuter),
    ("MAGASIN", 400, ParkingProfile::Shopping),
    ("KALKVAERKSVEJ", 210, ParkingProfile::Commuter),
];

/// First traffic `REPORT_ID`; traffic sensor `i` is `158324 + i`, and pollution sensor `i`
/// shares its id and place, as in the CityPulse data.
pub const FIRST_REPORT_ID: u64 = 158_324;

/// Mixes a seed with a salt into an independent generator seed (SplitMix64).
pub fn mix(seed: u64, salt: u64) -> u64 {
    let mut z = seed ^ salt.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A standard normal sample (Box-Muller).
pub fn normal(rng: &mut fastrand::Rng) -> f64 {
    let u1 = rng.f64().max(f64::MIN_POSITIVE);
    let u2 = rng.f64();
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

/// Uniform sample in `lo..=hi`.
pub fn uniform(rng: &mut fastrand::Rng, lo: f64, hi: f64) -> f64 {
    lo + (hi - lo) * rng.f64()
}

fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

/// The simulated city.
#[derive(Debug, Clone, PartialEq)]
pub struct City {
    /// All sensors, grouped by type in [`SensorType::ALL`] order.
    pub sensors: Vec<Sensor>,
    /// Area names.
    pub areas: Vec<String>,
}

impl City {
    /// Lays out the city for `cfg`, deterministically for `seed`.
    pub fn generate(cfg: &CityConfig, seed: u64) -> City {
        let areas: Vec<String> = (1..=cfg.areas.max(1))
            .map(|i| format!("area-{i}"))
            .collect();
        // Area centres on a ring around Aarhus centre.
        let centre = |a: usize| {
            let angle = std::f64::consts::TAU * a as f64 / areas.len() as f64;
            (56.157 + 0.03 * angle.sin(), 10.205 + 0.05 * angle.cos())
        };
        let mut sensors = Vec::new();
        for kind in SensorType::ALL {
            if !cfg.types.contains(&kind) {
                continue;
            }
            for i in 0..cfg.sensors {
                let area_idx = i % areas.len();
                // Pollution sits on the traffic segment with the same index.
                let place_salt = if kind == SensorType::Pollution {
                    SensorType::Traffic
                } else {
                    kind
                };
                let mut place = fastrand::Rng::with_seed(mix(
                    seed,
                    1_000_000 + place_salt as u64 * 100_000 + i as u64,
                ));
                let (clat, clon) = centre(area_idx);
                let lat = clat + uniform(&mut place, -0.008, 0.008);
                let lon = clon + uniform(&mut place, -0.012, 0.012);
                let mut rng = fastrand::Rng::with_seed(mix(
                    seed,
                    2_000_000 + kind as u64 * 100_000 + i as u64,
                ));
                let (id, params) = match kind {
                    SensorType::Traffic => (
                        (FIRST_REPORT_ID + i as u64).to_string(),
                        Params::Traffic {
                            ext_id: rng.i64(600..1200),
                            distance_m: uniform(&mut rng, 400.0, 2500.0).round(),
                            free_speed: uniform(&mut rng, 60.0, 95.0),
                            peak_count: uniform(&mut rng, 14.0, 30.0),
                        },
                    ),
                    SensorType::Parking => match GARAGES.get(i) {
                        Some((code, total, profile)) => (
                            (*code).to_owned(),
                            Params::Parking {
                                total: *total,
                                profile: *profile,
                            },
                        ),
                        None => {
                            let profile = if rng.bool() {
                                ParkingProfile::Shopping
                            } else {
                                ParkingProfile::Commuter
                            };
                            (
                                format!("GARAGE{}", i + 1),
                                Params::Parking {
                                    total: rng.i64(100..900),
                                    profile,
                                },
                            )
                        }
                    },
                    SensorType::Pollution => (
                        (FIRST_REPORT_ID + i as u64).to_string(),
                        Params::Pollution {
                            base: std::array::from_fn(|_| uniform(&mut rng, 20.0, 60.0)),
                        },
                    ),
                    SensorType::Weather => (
                        i.to_string(),
                        Params::Weather {
                            mean_temp: uniform(&mut rng, 14.0, 16.0),
                        },
                    ),
                    SensorType::Noise => (
                        format!("noise-{}", i + 1),
                        Params::Noise {
                            offset: uniform(&mut rng, -3.0, 3.0),
                        },
                    ),
                };
                sensors.push(Sensor {
                    index: sensors.len(),
                    type_index: i,
                    type_count: cfg.sensors,
                    kind,
                    id,
                    area: areas[area_idx].clone(),
                    lat,
                    lon,
                    params,
                });
            }
        }
        City { sensors, areas }
    }

    /// The sensor of type `kind` with id `id`.
    pub fn find(&self, kind: SensorType, id: &str) -> Option<&Sensor> {
        self.sensors.iter().find(|s| s.kind == kind && s.id == id)
    }

    /// The sensors of type `kind` in `area`.
    pub fn in_area<'a>(
        &'a self,
        kind: SensorType,
        area: &'a str,
    ) -> impl Iterator<Item = &'a Sensor> + 'a {
        self.sensors
            .iter()
            .filter(move |s| s.kind == kind && s.area == area)
    }

    /// Number of sensors of type `kind`.
    pub fn count(&self, kind: SensorType) -> usize {
        self.sensors.iter().filter(|s| s.kind == kind).count()
    }
}

/// What scripted incidents impose on a reading.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Conditions {
    /// The sensor's area is congested (traffic, and pollution and noise with it).
    pub congested: bool,
    /// The garage is filling up.
    pub full: bool,
}

/// The evolving state of one sensor's generator.
#[derive(Debug, Clone)]
pub struct SensorState {
    /// Random generator for values and timing.
    pub rng: fastrand::Rng,
    /// Readings generated so far (the next reading's `seq`).
    pub seq: u64,
    /// AR(1) weather deviation.
    drift: f64,
}

impl SensorState {
    /// Initial state for `sensor` in a run seeded with `seed`.
    pub fn new(sensor: &Sensor, seed: u64) -> Self {
        Self {
            rng: fastrand::Rng::with_seed(mix(seed, 3_000_000 + sensor.index as u64)),
            seq: 0,
            drift: 0.0,
        }
    }
}

/// When `sensor` first reports after `start`.
pub fn first_tick(sensor: &Sensor, state: &mut SensorState, start: DateTime<Utc>) -> DateTime<Utc> {
    match sensor.kind {
        SensorType::Parking => start + Duration::milliseconds(state.rng.i64(0..30 * 60 * 1000)),
        _ => start,
    }
}

/// The gap to `sensor`'s next reading: 5 minutes for traffic, pollution and noise, about 30
/// minutes (with seconds of jitter) for parking, 10, 20 or 30 minutes for weather.
pub fn next_interval(sensor: &Sensor, state: &mut SensorState) -> Duration {
    match sensor.kind {
        SensorType::Traffic | SensorType::Pollution | SensorType::Noise => Duration::minutes(5),
        SensorType::Parking => {
            Duration::milliseconds(30 * 60 * 1000 + state.rng.i64(-60_000..120_000))
        }
        SensorType::Weather => Duration::minutes(10 * state.rng.i64(1..=3)),
    }
}

/// The nominal reporting interval of a sensor type (the weather maximum for weather).
pub fn nominal_interval(kind: SensorType) -> Duration {
    match kind {
        SensorType::Traffic | SensorType::Pollution | SensorType::Noise => Duration::minutes(5),
        SensorType::Parking | SensorType::Weather => Duration::minutes(30),
    }
}

/// Generates `sensor`'s reading at event time `t` under `cond`. Row ids (`_id`) are unique
/// per type: `seq * type_count + type_index` above a base.
pub fn reading(
    sensor: &Sensor,
    state: &mut SensorState,
    t: DateTime<Utc>,
    cond: Conditions,
) -> Payload {
    let hour = time::local_hour(t);
    let weekend = time::is_weekend(t);
    let intensity = patterns::traffic_intensity(hour, weekend);
    let rng = &mut state.rng;
    match &sensor.params {
        Params::Traffic {
            ext_id,
            distance_m,
            free_speed,
            peak_count,
        } => {
            let (speed, count) = if cond.congested {
                let (s0, s1) = patterns::CONGESTED_SPEED;
                let (c0, c1) = patterns::CONGESTED_COUNT;
                (rng.i64(s0..=s1), rng.i64(c0..=c1))
            } else {
                let mean = peak_count * intensity;
                let count = (mean + normal(rng) * (mean + 0.5).sqrt()).round().max(0.0) as i64;
                let speed = patterns::traffic_speed(
                    *free_speed,
                    count as f64 / peak_count,
                    3.0 * normal(rng),
                );
                (speed, count)
            };
            let travel = (distance_m / (speed.max(1) as f64 / 3.6)).round() as i64;
            let median = (travel + rng.i64(-2..=2)).max(1);
            let row_id =
                20_746_220 + state.seq * sensor.type_count as u64 + sensor.type_index as u64;
            let mut f = Fields::with_capacity(11);
            f.set("status", "OK");
            f.set("avgMeasuredTime", travel);
            f.set("avgSpeed", speed);
            f.set("extID", *ext_id);
            f.set("medianMeasuredTime", median);
            f.set("TIMESTAMP", time::local(t, ISO_LOCAL));
            f.set("vehicleCount", count);
            f.set("_id", row_id);
            f.set(
                "REPORT_ID",
                sensor
                    .id
                    .parse::<u64>()
                    .map(Value::from)
                    .unwrap_or_else(|_| Value::from(sensor.id.clone())),
            );
            Payload::Object(f)
        }
        Params::Parking { total, profile } => {
            let occupancy = if cond.full {
                uniform(rng, patterns::MIN_FULL_OCCUPANCY, 1.0)
            } else {
                (patterns::parking_occupancy(*profile, hour, weekend) + 0.02 * normal(rng))
                    .clamp(0.0, patterns::MAX_NORMAL_OCCUPANCY)
            };
            let total_f = *total as f64;
            let count = if cond.full {
                ((occupancy * total_f).round() as i64).clamp(
                    (patterns::MIN_FULL_OCCUPANCY * total_f).ceil() as i64,
                    *total,
                )
            } else {
                ((occupancy * total_f).round() as i64)
                    .min((patterns::MAX_NORMAL_OCCUPANCY * total_f).floor() as i64)
            };
            let mut f = Fields::with_capacity(8);
            f.set("vehiclecount", count);
            f.set("updatetime", time::local(t, SPACE_LOCAL_MS));
            f.set(
                "_id",
                1 + state.seq * sensor.type_count as u64 + sensor.type_index as u64,
            );
            f.set("totalspaces", *total);
            f.set("garagecode", sensor.id.clone());
            f.set("streamtime", time::local(t, SPACE_LOCAL));
            Payload::Object(f)
        }
        Params::Pollution { base } => {
            let mut f = Fields::with_capacity(10);
            for (name, b) in SensorType::Pollution.measurement_fields().iter().zip(base) {
                let v =
                    patterns::pollution_index(*b, intensity, cond.congested) + 4.0 * normal(rng);
                f.set(name, v.round().max(0.0) as i64);
            }
            f.set("longitude", sensor.lon);
            f.set("latitude", sensor.lat);
            f.set("timestamp", time::local(t, SPACE_LOCAL));
            Payload::Object(f)
        }
        Params::Weather { mean_temp } => {
            state.drift = 0.9 * state.drift + 0.4 * normal(rng);
            let temp = patterns::temperature(*mean_temp, hour) + state.drift;
            let hum = (patterns::humidity(temp, *mean_temp) + 3.0 * normal(rng))
                .round()
                .clamp(30.0, 100.0) as i64;
            let wind =
                (11.0 + 3.0 * (std::f64::consts::TAU * hour / 24.0).sin() + 2.5 * normal(rng))
                    .max(0.0);
            let mut f = Fields::with_capacity(6);
            f.set("hum", hum);
            f.set("tempm", round1(temp));
            f.set("wspdm", round1(wind));
            f.set("TIMESTAMP", time::local(t, ISO_LOCAL));
            Payload::Object(f)
        }
        Params::Noise { offset } => {
            let level = patterns::noise_level(intensity)
                + offset
                + if cond.congested { 5.0 } else { 0.0 }
                + 1.5 * normal(rng);
            let mut r = Fields::with_capacity(7);
            r.set("bn", format!("urn:dev:noise:{}:", sensor.id));
            r.set("bt", t.timestamp());
            r.set("n", "laeq");
            r.set("u", "dB");
            r.set("v", round1(level));
            Payload::Senml(vec![r])
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::time::parse_time;

    fn city() -> City {
        City::generate(
            &CityConfig {
                sensors: 12,
                areas: 5,
                types: SensorType::ALL.to_vec(),
            },
            7,
        )
    }

    #[test]
    fn layout_is_deterministic_and_ids_are_unique_per_type() {
        let a = city();
        assert_eq!(a, city());
        assert_ne!(
            a,
            City::generate(
                &CityConfig {
                    sensors: 12,
                    areas: 5,
                    types: SensorType::ALL.to_vec()
                },
                8
            )
        );
        assert_eq!(a.sensors.len(), 60);
        for kind in SensorType::ALL {
            let mut ids: Vec<_> = a
                .sensors
                .iter()
                .filter(|s| s.kind == kind)
                .map(|s| s.id.clone())
                .collect();
            ids.sort();
            ids.dedup();
            assert_eq!(ids.len(), 12, "{kind}");
        }
        assert_eq!(a.in_area(SensorType::Traffic, "area-2").count(), 3);
        assert_eq!(
            a.find(SensorType::Parking, "BRUUNS").map(|s| s.topic()),
            Some("city/parking/BRUUNS".into())
        );
    }

    #[test]
    fn traffic_row_has_the_citypulse_columns_in_order() -> crate::Result<()> {
        let c = city();
        let s = &c.sensors[0];
        let mut st = SensorState::new(s, 1);
        let p = reading(
            s,
            &mut st,
            parse_time("2014-08-01T07:50:00")?,
            Conditions::default(),
        );
        let f = p.fields().cloned().unwrap_or_default();
        let keys: Vec<_> = f.keys().collect();
        assert_eq!(
            keys,
            [
                "status",
                "avgMeasuredTime",
                "avgSpeed",
                "extID",
                "medianMeasuredTime",
                "TIMESTAMP",
                "vehicleCount",
                "_id",
                "REPORT_ID"
            ]
        );
        assert_eq!(
            f.get("TIMESTAMP"),
            Some(&Value::from("2014-08-01T07:50:00"))
        );
        assert_eq!(f.get("REPORT_ID"), Some(&Value::from(158_324)));
        Ok(())
    }

    #[test]
    fn noise_is_senml() -> crate::Result<()> {
        let c = city();
        let s = c
            .sensors
            .iter()
            .find(|s| s.kind == SensorType::Noise)
            .cloned();
        let Some(s) = s else {
            panic!("no noise sensor")
        };
        let mut st = SensorState::new(&s, 1);
        let t = parse_time("2014-08-01T00:00:00")?;
        let text = String::from_utf8(crate::payload::encode(
            &reading(&s, &mut st, t, Conditions::default()),
            None,
            None,
        ))
        .unwrap_or_default();
        assert!(
            text.starts_with(
                r#"[{"bn":"urn:dev:noise:noise-1:","bt":1406844000,"n":"laeq","u":"dB","v":"#
            ),
            "{text}"
        );
        Ok(())
    }
}
