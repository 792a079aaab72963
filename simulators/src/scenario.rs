//! Scenario files (TOML): city settings, fault rates, scripted incidents and scheduled faults.
//!
//! ```toml
//! [city]                      # every key optional; command-line flags win
//! sensors = 10                # per type
//! areas = 5
//! types = ["traffic", "parking", "pollution", "weather", "noise"]
//! start = "2014-08-01T00:00:00"   # Europe/Copenhagen local time, or RFC 3339
//! duration = "1d"
//! seed = 42
//!
//! [fault_rates]               # probability per sensor per reading of starting an episode
//! stuck = { rate = 0.001, duration = "1h" }
//! late = { rate = 0.002, delay = "20m" }
//!
//! [[incident]]
//! type = "congestion"         # congestion | parking_full | outage
//! area = "area-2"
//! start = "2014-08-01T08:30:00"
//! end = "2014-08-01T09:30:00"
//!
//! [[fault]]
//! type = "stuck"
//! sensor_type = "traffic"
//! sensor = "158326"           # or area = "area-3": every sensor of the type in the area
//! start = "2014-08-01T12:00:00"
//! end = "2014-08-01T13:00:00"
//! ```

use std::collections::BTreeMap;
use std::path::Path;

use chrono::{DateTime, Duration, Utc};
use serde::Deserialize;

use crate::error::{Error, Result};
use crate::faults::{FaultKind, FaultRate};
use crate::sensors::SensorType;
use crate::time::{parse_duration, parse_signed_duration, parse_time};

/// `[city]`: defaults for the command-line settings.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CitySection {
    /// Sensors per type.
    pub sensors: Option<usize>,
    /// Number of areas.
    pub areas: Option<usize>,
    /// Sensor types to simulate.
    pub types: Option<Vec<String>>,
    /// Simulated start time.
    pub start: Option<String>,
    /// Simulated duration (`1d`).
    pub duration: Option<String>,
    /// Random seed.
    pub seed: Option<u64>,
}

/// One entry of `[fault_rates]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateSpec {
    /// Probability per sensor per reading of starting an episode.
    pub rate: f64,
    /// Episode length (default per kind, see [`FaultKind::default_duration`]).
    pub duration: Option<String>,
    /// Hold-back for `late` (default 15m).
    pub delay: Option<String>,
    /// Shift for `clock_skew`, may start with `-` (default ±1h at random).
    pub skew: Option<String>,
}

/// Kinds of scripted incident.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IncidentKind {
    /// Traffic in an area: avgSpeed 15-30 km/h and vehicleCount 15-40.
    Congestion,
    /// A garage at 92-100 % occupancy.
    ParkingFull,
    /// A sensor sends nothing at all.
    Outage,
}

impl IncidentKind {
    /// The name used in scenarios and in the truth.
    pub fn as_str(self) -> &'static str {
        match self {
            IncidentKind::Congestion => "congestion",
            IncidentKind::ParkingFull => "parking_full",
            IncidentKind::Outage => "outage",
        }
    }
}

/// A scripted incident as written in the file.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IncidentSpec {
    /// What happens.
    #[serde(rename = "type")]
    pub kind: IncidentKind,
    /// Area, for congestion.
    pub area: Option<String>,
    /// Garage code, for parking_full.
    pub garage: Option<String>,
    /// Sensor type, for outage (default traffic).
    pub sensor_type: Option<String>,
    /// Sensor id, for outage.
    pub sensor: Option<String>,
    /// Start (event time).
    pub start: String,
    /// End (event time, exclusive).
    pub end: String,
}

/// A scheduled fault as written in the file.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultSpec {
    /// Which fault.
    #[serde(rename = "type")]
    pub kind: String,
    /// Type of the sensor(s).
    pub sensor_type: String,
    /// One sensor id.
    pub sensor: Option<String>,
    /// Or every sensor of the type in this area.
    pub area: Option<String>,
    /// Start (event time).
    pub start: String,
    /// End (event time, exclusive).
    pub end: String,
    /// Hold-back for `late`.
    pub delay: Option<String>,
    /// Shift for `clock_skew` (may start with `-`).
    pub skew: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawScenario {
    #[serde(default)]
    city: CitySection,
    #[serde(default)]
    fault_rates: BTreeMap<String, RateSpec>,
    #[serde(default)]
    incident: Vec<toml::Spanned<IncidentSpec>>,
    #[serde(default)]
    fault: Vec<toml::Spanned<FaultSpec>>,
}

/// A resolved incident: kind, times and what it applies to (by name; the engine checks the
/// names against the city).
#[derive(Debug, Clone, PartialEq)]
pub struct Incident {
    /// What happens.
    pub kind: IncidentKind,
    /// Area, garage code or sensor id.
    pub subject: String,
    /// Type of the affected sensors.
    pub sensor_type: SensorType,
    /// Start (event time).
    pub start: DateTime<Utc>,
    /// End (event time, exclusive).
    pub end: DateTime<Utc>,
    /// Where it was defined, for error messages (`file:line`).
    pub origin: String,
}

/// A resolved scheduled fault, naming its sensors.
#[derive(Debug, Clone, PartialEq)]
pub struct FaultPlan {
    /// Which fault.
    pub kind: FaultKind,
    /// Type of the sensor(s).
    pub sensor_type: SensorType,
    /// Sensor id, or `None` for every sensor in `area`.
    pub sensor: Option<String>,
    /// Area when `sensor` is `None`.
    pub area: Option<String>,
    /// Start (event time).
    pub start: DateTime<Utc>,
    /// End (event time, exclusive).
    pub end: DateTime<Utc>,
    /// Hold-back for `late`.
    pub delay: Duration,
    /// Shift for `clock_skew`.
    pub skew: Duration,
    /// Where it was defined (`file:line`).
    pub origin: String,
}

/// A parsed and checked scenario.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Scenario {
    /// `[city]` settings.
    pub city: CitySection,
    /// `[fault_rates]`.
    pub rates: Vec<FaultRate>,
    /// `[[incident]]` entries.
    pub incidents: Vec<Incident>,
    /// `[[fault]]` entries.
    pub faults: Vec<FaultPlan>,
}

fn line_of(text: &str, offset: usize) -> usize {
    text.get(..offset.min(text.len()))
        .map_or(0, |s| s.matches('\n').count() + 1)
}

impl Scenario {
    /// Reads and checks a scenario file.
    pub fn load(path: &Path) -> Result<Scenario> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::ScenarioIo {
            path: path.to_owned(),
            source,
        })?;
        Scenario::parse(&text, path)
    }

    /// Parses scenario `text`; `path` names it in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Scenario> {
        let raw: RawScenario = toml::from_str(text).map_err(|e| Error::ScenarioParse {
            path: path.to_owned(),
            line: e.span().map_or(0, |s| line_of(text, s.start)),
            message: e.message().to_owned(),
        })?;
        let at = |offset: usize, message: String| Error::ScenarioParse {
            path: path.to_owned(),
            line: line_of(text, offset),
            message,
        };
        let origin = |offset: usize| format!("{}:{}", path.display(), line_of(text, offset));
        let interval =
            |offset: usize, start: &str, end: &str| -> Result<(DateTime<Utc>, DateTime<Utc>)> {
                let s = parse_time(start).map_err(|e| at(offset, e.to_string()))?;
                let e = parse_time(end).map_err(|e| at(offset, e.to_string()))?;
                if e <= s {
                    return Err(at(
                        offset,
                        format!("end {end:?} must be after start {start:?}"),
                    ));
                }
                Ok((s, e))
            };

        let mut rates = Vec::new();
        for (name, spec) in &raw.fault_rates {
            let bad = |m: String| Error::ScenarioParse {
                path: path.to_owned(),
                line: 0,
                message: format!("[fault_rates] {name}: {m}"),
            };
            let kind: FaultKind = name.parse().map_err(|e: Error| bad(e.to_string()))?;
            if !(0.0..=1.0).contains(&spec.rate) {
                return Err(bad(
                    "rate must be between 0 and 1 (a probability per sensor per reading)".into(),
                ));
            }
            let mut r = FaultRate::new(kind, spec.rate);
            if let Some(d) = &spec.duration {
                r.duration = parse_duration(d).map_err(|e| bad(e.to_string()))?;
            }
            if let Some(d) = &spec.delay {
                r.delay = parse_duration(d).map_err(|e| bad(e.to_string()))?;
            }
            if let Some(d) = &spec.skew {
                r.skew = Some(parse_signed_duration(d).map_err(|e| bad(e.to_string()))?);
            }
            rates.push(r);
        }

        let mut incidents = Vec::new();
        for spanned in &raw.incident {
            let off = spanned.span().start;
            let spec = spanned.get_ref();
            let (start, end) = interval(off, &spec.start, &spec.end)?;
            let need = |v: &Option<String>, key: &str| {
                v.clone().ok_or_else(|| {
                    at(
                        off,
                        format!("a {} incident needs `{key}`", spec.kind.as_str()),
                    )
                })
            };
            let (subject, sensor_type) = match spec.kind {
                IncidentKind::Congestion => (need(&spec.area, "area")?, SensorType::Traffic),
                IncidentKind::ParkingFull => (need(&spec.garage, "garage")?, SensorType::Parking),
                IncidentKind::Outage => {
                    let t = spec.sensor_type.as_deref().unwrap_or("traffic");
                    (
                        need(&spec.sensor, "sensor")?,
                        t.parse().map_err(|e: Error| at(off, e.to_string()))?,
                    )
                }
            };
            incidents.push(Incident {
                kind: spec.kind,
                subject,
                sensor_type,
                start,
                end,
                origin: origin(off),
            });
        }

        let mut faults = Vec::new();
        for spanned in &raw.fault {
            let off = spanned.span().start;
            let spec = spanned.get_ref();
            let (start, end) = interval(off, &spec.start, &spec.end)?;
            let kind: FaultKind = spec
                .kind
                .parse()
                .map_err(|e: Error| at(off, e.to_string()))?;
            let sensor_type: SensorType = spec
                .sensor_type
                .parse()
                .map_err(|e: Error| at(off, e.to_string()))?;
            if spec.sensor.is_some() == spec.area.is_some() {
                return Err(at(
                    off,
                    "a fault needs exactly one of `sensor` (an id) or `area`".into(),
                ));
            }
            let delay = match &spec.delay {
                Some(d) => parse_duration(d).map_err(|e| at(off, e.to_string()))?,
                None => crate::faults::DEFAULT_DELAY,
            };
            let skew = match &spec.skew {
                Some(d) => parse_signed_duration(d).map_err(|e| at(off, e.to_string()))?,
                None => crate::faults::DEFAULT_SKEW,
            };
            faults.push(FaultPlan {
                kind,
                sensor_type,
                sensor: spec.sensor.clone(),
                area: spec.area.clone(),
                start,
                end,
                delay,
                skew,
                origin: origin(off),
            });
        }
        Ok(Scenario {
            city: raw.city,
            rates,
            incidents,
            faults,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_scenario_parses() -> Result<()> {
        let text = r#"
[city]
sensors = 4
start = "2014-08-01T00:00:00"

[fault_rates]
stuck = { rate = 0.01, duration = "30m" }
clock_skew = { rate = 0.001, skew = "-2h" }

[[incident]]
type = "congestion"
area = "area-2"
start = "2014-08-01T08:00:00"
end = "2014-08-01T09:00:00"

[[incident]]
type = "outage"
sensor = "158325"
start = "2014-08-01T10:00:00"
end = "2014-08-01T11:00:00"

[[fault]]
type = "duplicate"
sensor_type = "parking"
sensor = "BRUUNS"
start = "2014-08-01T10:00:00"
end = "2014-08-01T12:00:00"
"#;
        let s = Scenario::parse(text, Path::new("s.toml"))?;
        assert_eq!(s.city.sensors, Some(4));
        assert_eq!(s.rates.len(), 2);
        assert_eq!(s.rates[0].skew, Some(-Duration::hours(2)));
        assert_eq!(s.incidents[0].subject, "area-2");
        assert_eq!(s.incidents[1].sensor_type, SensorType::Traffic);
        assert_eq!(
            s.incidents[1].end - s.incidents[1].start,
            Duration::hours(1)
        );
        assert_eq!(s.faults[0].kind, FaultKind::Duplicate);
        assert!(s.faults[0].origin.starts_with("s.toml:"));
        Ok(())
    }

    #[test]
    fn errors_name_the_file_and_line() {
        let text = "[city]\nsensors = 4\n\n[[incident]]\ntype = \"congestion\"\nstart = \"2014-08-01T08:00:00\"\nend = \"2014-08-01T09:00:00\"\n";
        let err = Scenario::parse(text, Path::new("x.toml"))
            .map(|_| ())
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("x.toml:4:") && err.contains("needs `area`"),
            "{err}"
        );
        let err = Scenario::parse("[city]\nsensorz = 1\n", Path::new("x.toml"))
            .map(|_| ())
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("x.toml:2:") && err.contains("sensorz"),
            "{err}"
        );
        let text = "[[incident]]\ntype = \"outage\"\nsensor = \"1\"\nstart = \"2014-08-01T09:00:00\"\nend = \"2014-08-01T08:00:00\"\n";
        let err = Scenario::parse(text, Path::new("x.toml"))
            .map(|_| ())
            .unwrap_err()
            .to_string();
        assert!(err.contains("must be after"), "{err}");
    }
}
