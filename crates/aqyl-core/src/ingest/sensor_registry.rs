//! The sensor registry of a sensor type: fixed facts about each sensor that its payloads do
//! not carry, read from a CSV file (`sensor_id,lat,lon,area`; `#` starts a comment line;
//! cells may be quoted, `"Aarhus, north"`).
//! Decoding takes a sensor's area from it when neither the topic nor the payload names one.

use crate::error::{ConfigError, ConfigErrors};
use crate::ingest::descriptor::validate_sensor_id;
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

/// What the registry knows of one sensor.
#[derive(Debug, Clone, PartialEq)]
pub struct SensorInfo {
    /// Latitude (WGS 84).
    pub lat: f64,
    /// Longitude (WGS 84).
    pub lon: f64,
    /// Area name, when given.
    pub area: Option<Arc<str>>,
}

/// Sensors by id.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SensorRegistry {
    /// Keyed by the shared id that decoding gives every reading of the sensor.
    sensors: HashMap<Arc<str>, SensorInfo>,
}

impl SensorRegistry {
    /// Parses the CSV text of `path`, reporting every bad line.
    pub fn parse(path: &Path, text: &str) -> Result<Self, ConfigErrors> {
        let mut errors = Vec::new();
        let mut sensors = HashMap::new();
        let mut header_seen = false;
        // The csv crate: quoted cells ("Aarhus, north") and `#` comment lines; the line of
        // each record for the messages.
        let mut reader = csv::ReaderBuilder::new()
            .has_headers(false)
            .flexible(true)
            .comment(Some(b'#'))
            .trim(csv::Trim::All)
            .from_reader(text.as_bytes());
        let mut record = csv::StringRecord::new();
        loop {
            let line = reader.position().line() as usize;
            let at = |msg: String| ConfigError {
                file: path.to_path_buf(),
                line: Some(line),
                message: msg,
            };
            match reader.read_record(&mut record) {
                Ok(false) => break,
                Ok(true) => {}
                Err(e) => {
                    let line = e.position().map_or(line, |p| p.line() as usize);
                    errors.push(ConfigError {
                        file: path.to_path_buf(),
                        line: Some(line),
                        message: format!("not a CSV line: {e}"),
                    });
                    continue;
                }
            }
            // The reader's position is now past the record: its own line is the record's.
            let line = record.position().map_or(line, |p| p.line() as usize);
            let at = |msg: String| {
                let mut e = at(msg);
                e.line = Some(line);
                e
            };
            let cells: Vec<&str> = record.iter().collect();
            if cells.iter().all(|c| c.is_empty()) {
                continue;
            }
            if !header_seen {
                header_seen = true;
                if cells.first() == Some(&"sensor_id") {
                    if cells[..] != ["sensor_id", "lat", "lon", "area"]
                        && cells[..] != ["sensor_id", "lat", "lon"]
                    {
                        errors.push(at(format!(
                            "the header must be sensor_id,lat,lon[,area]; got {:?}",
                            cells.join(",")
                        )));
                    }
                    continue;
                }
            }
            if !(3..=4).contains(&cells.len()) {
                errors.push(at(format!(
                    "expected sensor_id,lat,lon[,area]; got {} cells",
                    cells.len()
                )));
                continue;
            }
            let id = cells[0];
            if let Err(e) = validate_sensor_id(id) {
                errors.push(at(e));
                continue;
            }
            let coord = |s: &str, what: &str, limit: f64| -> Result<f64, String> {
                match s.parse::<f64>() {
                    Ok(v) if v.is_finite() && v.abs() <= limit => Ok(v),
                    _ => Err(format!(
                        "{what} {s:?} of sensor {id:?} is not a number within ±{limit}"
                    )),
                }
            };
            let (lat, lon) = match (
                coord(cells[1], "latitude", 90.0),
                coord(cells[2], "longitude", 180.0),
            ) {
                (Ok(lat), Ok(lon)) => (lat, lon),
                (Err(e), _) | (_, Err(e)) => {
                    errors.push(at(e));
                    continue;
                }
            };
            let area = cells
                .get(3)
                .filter(|a| !a.is_empty())
                .map(|a| Arc::from(*a));
            if sensors
                .insert(Arc::from(id), SensorInfo { lat, lon, area })
                .is_some()
            {
                errors.push(at(format!("sensor {id:?} is listed twice")));
            }
        }
        if errors.is_empty() {
            Ok(Self { sensors })
        } else {
            Err(ConfigErrors(errors))
        }
    }

    /// Reads and parses a registry file.
    pub fn load(path: &Path) -> Result<Self, ConfigErrors> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigError::file(path, format!("cannot read the sensor registry: {e}"))
        })?;
        Self::parse(path, &text)
    }

    /// Every sensor and its facts, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &SensorInfo)> {
        self.sensors.iter().map(|(id, info)| (&**id, info))
    }

    /// A sensor's facts.
    pub fn get(&self, sensor_id: &str) -> Option<&SensorInfo> {
        self.sensors.get(sensor_id)
    }

    /// A sensor's shared id and facts: readings of a registered sensor share one id.
    pub fn entry(&self, sensor_id: &str) -> Option<(&Arc<str>, &SensorInfo)> {
        self.sensors.get_key_value(sensor_id)
    }

    /// Number of sensors.
    pub fn len(&self) -> usize {
        self.sensors.len()
    }

    /// Whether it lists no sensor.
    pub fn is_empty(&self) -> bool {
        self.sensors.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_reports_bad_lines_with_their_number() {
        let r = SensorRegistry::parse(
            Path::new("r.csv"),
            "# c\nsensor_id,lat,lon,area\n158324,56.2,10.1,grid-11-03\nx,1,2\n",
        )
        .unwrap();
        assert_eq!(r.len(), 2);
        assert_eq!(r.get("158324").unwrap().area.as_deref(), Some("grid-11-03"));
        assert_eq!(r.get("x").unwrap().area, None);
        let e = SensorRegistry::parse(
            Path::new("r.csv"),
            "sensor_id,lat,lon,area\na,91,0,z\na,1,1,z\nb,1\n",
        )
        .unwrap_err();
        let lines: Vec<String> = e.0.iter().map(|e| e.to_string()).collect();
        assert_eq!(lines.len(), 2, "{lines:?}");
        assert!(
            lines[0].starts_with("r.csv:2: latitude \"91\""),
            "{lines:?}"
        );
        assert!(
            lines[1].starts_with("r.csv:4: expected sensor_id,lat,lon[,area]"),
            "{lines:?}"
        );
        let e = SensorRegistry::parse(Path::new("r.csv"), "a,1,1\na,2,2\n")
            .unwrap_err()
            .to_string();
        assert_eq!(e, "r.csv:2: sensor \"a\" is listed twice");
    }

    #[test]
    fn quoted_cells_keep_their_commas() {
        let r = SensorRegistry::parse(
            Path::new("r.csv"),
            "# a comment\nsensor_id,lat,lon,area\n\"s,1\",56.1,10.2,\"Aarhus, north\"\ns2,56.2,10.3\n",
        )
        .unwrap();
        assert_eq!(r.get("s,1").unwrap().area.as_deref(), Some("Aarhus, north"));
        assert_eq!(r.len(), 2);
        let e = SensorRegistry::parse(Path::new("r.csv"), "# c\n\ns,1,1\nt,\"1\",x\n").unwrap_err();
        assert_eq!(e.0[0].line, Some(4), "{e:?}");
    }

    #[test]
    fn the_shipped_aarhus_registry_is_valid() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../config/sensors/registry/aarhus-traffic.csv");
        let r = SensorRegistry::load(&path).unwrap();
        assert_eq!(r.len(), 449);
        let s = r.get("158324").unwrap();
        assert!((56.0..56.4).contains(&s.lat) && (10.0..10.4).contains(&s.lon));
        assert!(s.area.as_deref().is_some_and(|a| a.starts_with("grid-")));
    }
}
