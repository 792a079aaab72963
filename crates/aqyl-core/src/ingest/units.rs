//! Units a field may declare, and conversions between units of the same quantity.
//!
//! A small table rather than a units crate: sensors report a few dozen units, conversions
//! are linear or affine (temperatures), and a table keeps `aqyl check` able to say exactly
//! which units are known. Each unit has a quantity and maps to the quantity's base unit as
//! `base = value * scale + offset`.

/// One known unit.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Unit {
    /// Symbol as written in descriptors (`km/h`).
    pub symbol: &'static str,
    /// Quantity (`speed`); conversions only happen within one.
    pub quantity: &'static str,
    scale: f64,
    offset: f64,
}

const fn u(symbol: &'static str, quantity: &'static str, scale: f64, offset: f64) -> Unit {
    Unit {
        symbol,
        quantity,
        scale,
        offset,
    }
}

/// Every known unit (base unit of each quantity first).
pub const UNITS: &[Unit] = &[
    u("km/h", "speed", 1.0, 0.0),
    u("m/s", "speed", 3.6, 0.0),
    u("mph", "speed", 1.609_344, 0.0),
    u("kn", "speed", 1.852, 0.0),
    u("°C", "temperature", 1.0, 0.0),
    u("°F", "temperature", 5.0 / 9.0, -32.0 * 5.0 / 9.0),
    u("K", "temperature", 1.0, -273.15),
    u("s", "time", 1.0, 0.0),
    u("ms", "time", 0.001, 0.0),
    u("min", "time", 60.0, 0.0),
    u("h", "time", 3600.0, 0.0),
    u("m", "length", 1.0, 0.0),
    u("km", "length", 1000.0, 0.0),
    u("ft", "length", 0.3048, 0.0),
    u("mi", "length", 1609.344, 0.0),
    u("%", "ratio", 1.0, 0.0),
    u("1", "ratio", 100.0, 0.0),
    u("dB", "sound level", 1.0, 0.0),
    u("dBA", "sound level A", 1.0, 0.0),
    u("hPa", "pressure", 1.0, 0.0),
    u("Pa", "pressure", 0.01, 0.0),
    u("kPa", "pressure", 10.0, 0.0),
    u("W", "power", 1.0, 0.0),
    u("kW", "power", 1000.0, 0.0),
    u("Wh", "energy", 1.0, 0.0),
    u("kWh", "energy", 1000.0, 0.0),
    u("ug/m3", "mass concentration", 1.0, 0.0),
    u("mg/m3", "mass concentration", 1000.0, 0.0),
    u("ppm", "volume fraction", 1000.0, 0.0),
    u("ppb", "volume fraction", 1.0, 0.0),
    u("AQI", "air quality index", 1.0, 0.0),
    u("lx", "illuminance", 1.0, 0.0),
    u("count", "count", 1.0, 0.0),
    u("vehicles", "count", 1.0, 0.0),
    u("spaces", "count", 1.0, 0.0),
    u("people", "count", 1.0, 0.0),
];

/// Looks a unit up by its symbol.
pub fn find(symbol: &str) -> Option<&'static Unit> {
    UNITS.iter().find(|u| u.symbol == symbol)
}

/// The symbols of every known unit, for error messages.
pub fn known() -> String {
    UNITS
        .iter()
        .map(|u| u.symbol)
        .collect::<Vec<_>>()
        .join(", ")
}

/// A conversion from one unit to another of the same quantity.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Conversion {
    from: &'static Unit,
    to: &'static Unit,
}

impl Conversion {
    /// The conversion from `from` to `to`, or why there is none.
    pub fn new(from: &str, to: &str) -> Result<Self, String> {
        let f =
            find(from).ok_or_else(|| format!("unknown unit {from:?}; known units: {}", known()))?;
        let t = find(to).ok_or_else(|| format!("unknown unit {to:?}; known units: {}", known()))?;
        if f.quantity != t.quantity {
            return Err(format!(
                "cannot convert {from} ({}) to {to} ({})",
                f.quantity, t.quantity
            ));
        }
        Ok(Self { from: f, to: t })
    }

    /// Converts a value.
    pub fn apply(&self, v: f64) -> f64 {
        let base = v * self.from.scale + self.from.offset;
        (base - self.to.offset) / self.to.scale
    }

    /// The target unit.
    pub fn target(&self) -> &'static str {
        self.to.symbol
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conv(from: &str, to: &str, v: f64) -> f64 {
        Conversion::new(from, to).unwrap().apply(v)
    }

    #[test]
    fn conversions_match_reference_values() {
        assert!((conv("mph", "km/h", 60.0) - 96.560_64).abs() < 1e-9);
        assert!((conv("m/s", "km/h", 10.0) - 36.0).abs() < 1e-12);
        assert!((conv("°F", "°C", 212.0) - 100.0).abs() < 1e-9);
        assert!((conv("°F", "°C", -40.0) + 40.0).abs() < 1e-9);
        assert!((conv("°C", "K", 0.0) - 273.15).abs() < 1e-9);
        assert!((conv("K", "°F", 273.15) - 32.0).abs() < 1e-9);
        assert!((conv("ppm", "ppb", 1.5) - 1500.0).abs() < 1e-9);
        assert_eq!(conv("km/h", "km/h", 42.0), 42.0);
    }

    #[test]
    fn wrong_conversions_are_explained() {
        assert_eq!(
            Conversion::new("mph", "°C").unwrap_err(),
            "cannot convert mph (speed) to °C (temperature)"
        );
        assert!(Conversion::new("furlongs", "m")
            .unwrap_err()
            .starts_with("unknown unit \"furlongs\"; known units: km/h"));
    }
}
