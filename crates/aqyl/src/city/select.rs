//! Which sensors a client asks about: by sensor type, by area and by bounding box, for
//! `/api/state`. (Contextual subscriptions select incidents in `aqyl_core::subscriptions`,
//! with the same box order.)

use std::fmt;

/// A box of WGS 84 coordinates, `min_lon,min_lat,max_lon,max_lat` (GeoJSON's `bbox` order).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BBox {
    /// Western edge, degrees.
    pub min_lon: f64,
    /// Southern edge, degrees.
    pub min_lat: f64,
    /// Eastern edge, degrees.
    pub max_lon: f64,
    /// Northern edge, degrees.
    pub max_lat: f64,
}

impl BBox {
    /// Parses `min_lon,min_lat,max_lon,max_lat`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let parts: Vec<&str> = text.split(',').map(str::trim).collect();
        let numbers: Option<Vec<f64>> = parts
            .iter()
            .map(|p| p.parse::<f64>().ok().filter(|v| v.is_finite()))
            .collect();
        match numbers.as_deref() {
            Some(&[min_lon, min_lat, max_lon, max_lat])
                if min_lon <= max_lon
                    && min_lat <= max_lat
                    && (-180.0..=180.0).contains(&min_lon)
                    && (-180.0..=180.0).contains(&max_lon)
                    && (-90.0..=90.0).contains(&min_lat)
                    && (-90.0..=90.0).contains(&max_lat) =>
            {
                Ok(Self {
                    min_lon,
                    min_lat,
                    max_lon,
                    max_lat,
                })
            }
            _ => Err(format!(
                "bbox {text:?} is not min_lon,min_lat,max_lon,max_lat in degrees with min <= max (e.g. bbox=10.1,56.1,10.3,56.2)"
            )),
        }
    }

    /// Whether the point lies in the box (edges included).
    pub fn contains(&self, lat: f64, lon: f64) -> bool {
        (self.min_lat..=self.max_lat).contains(&lat) && (self.min_lon..=self.max_lon).contains(&lon)
    }
}

/// A selection of sensors; an empty list selects everything on that count.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Selection {
    /// Sensor types (any of them).
    pub types: Vec<String>,
    /// Areas (any of them).
    pub areas: Vec<String>,
    /// Sensor ids (any of them).
    pub ids: Vec<String>,
    /// A box the sensor's position must lie in (a sensor without a position is not in it).
    pub bbox: Option<BBox>,
}

/// Most values one selection may list (a URL must not make every check a long loop).
pub const MAX_VALUES: usize = 256;

impl Selection {
    /// From query parameters: `type`, `area` and `id` (repeated, or comma-separated; an id
    /// with a comma in it is asked for alone, as `id=` once with `type=`) and `bbox`.
    /// Other parameters are left to the caller.
    pub fn from_query<'a>(
        params: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Result<Self, String> {
        let mut s = Selection::default();
        for (k, v) in params {
            match k {
                "type" => s.types.extend(v.split(',').map(str::to_string)),
                "area" => s.areas.extend(v.split(',').map(str::to_string)),
                "id" => s.ids.push(v.to_string()),
                "bbox" => s.bbox = Some(BBox::parse(v)?),
                _ => {}
            }
            if s.types.len() + s.areas.len() + s.ids.len() > MAX_VALUES {
                return Err(format!(
                    "at most {MAX_VALUES} types, areas and ids may be asked for at once"
                ));
            }
        }
        Ok(s)
    }

    /// Whether sensor `sensor_id` of `sensor_type`, in `area`, at `position` (lat, lon) is
    /// selected.
    pub fn matches(
        &self,
        sensor_type: &str,
        sensor_id: &str,
        area: Option<&str>,
        position: Option<(f64, f64)>,
    ) -> bool {
        (self.types.is_empty() || self.types.iter().any(|t| t == sensor_type))
            && (self.ids.is_empty() || self.ids.iter().any(|i| i == sensor_id))
            && (self.areas.is_empty() || area.is_some_and(|a| self.areas.iter().any(|x| x == a)))
            && self
                .bbox
                .is_none_or(|b| position.is_some_and(|(lat, lon)| b.contains(lat, lon)))
    }
}

impl fmt::Display for Selection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "types {:?}, areas {:?}", self.types, self.areas)?;
        if !self.ids.is_empty() {
            write!(f, ", ids {:?}", self.ids)?;
        }
        if let Some(b) = self.bbox {
            write!(
                f,
                ", bbox {},{},{},{}",
                b.min_lon, b.min_lat, b.max_lon, b.max_lat
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_selection_needs_every_given_criterion() {
        let s = Selection::from_query([
            ("type", "traffic,parking"),
            ("area", "north"),
            ("bbox", "10.0,56.0,10.5,56.5"),
            ("limit", "3"),
        ])
        .unwrap();
        assert!(s.matches("traffic", "a", Some("north"), Some((56.2, 10.2))));
        assert!(
            s.matches("parking", "a", Some("north"), Some((56.0, 10.5))),
            "edges count"
        );
        assert!(!s.matches("weather", "a", Some("north"), Some((56.2, 10.2))));
        assert!(!s.matches("traffic", "a", Some("south"), Some((56.2, 10.2))));
        assert!(!s.matches("traffic", "a", None, Some((56.2, 10.2))));
        assert!(!s.matches("traffic", "a", Some("north"), Some((57.0, 10.2))));
        assert!(!s.matches("traffic", "a", Some("north"), None));
        assert!(Selection::default().matches("x", "a", None, None));
        let one = Selection::from_query([("type", "traffic"), ("id", "a,b")]).unwrap();
        assert!(
            one.matches("traffic", "a,b", None, None),
            "an id may hold a comma"
        );
        assert!(!one.matches("traffic", "a", None, None));
    }

    #[test]
    fn bad_boxes_and_floods_of_values_are_refused_with_a_reason() {
        for bad in ["1,2,3", "a,b,c,d", "10,56,9,57", "0,0,200,1", "NaN,0,1,1"] {
            let e = BBox::parse(bad).unwrap_err();
            assert!(e.contains("min_lon,min_lat,max_lon,max_lat"), "{bad}: {e}");
        }
        let many = vec!["x"; MAX_VALUES + 1].join(",");
        assert!(Selection::from_query([("type", many.as_str())]).is_err());
    }
}
