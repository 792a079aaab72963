//! Human-readable durations in configuration files (`"5m"`, `"30s"`, `"1h 30m"`).

use serde::{Deserialize, Deserializer};
use std::time::Duration;

/// Deserializes a duration written like `"5m"` or `"250ms"` (humantime syntax).
pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let s = String::deserialize(d)?;
    parse(&s).map_err(serde::de::Error::custom)
}

/// Parses a duration written like `"5m"`; the error says what was expected.
pub fn parse(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s.trim()).map_err(|e| {
        format!("invalid duration {s:?} ({e}); write it like \"30s\", \"5m\" or \"4h\"")
    })
}

/// Formats a duration the way windows are labelled in the store: `5m`, `1h`, `90s`, `250ms`.
pub fn label(d: Duration) -> String {
    let ms = d.as_millis();
    const UNITS: [(u128, &str); 4] = [
        (86_400_000, "d"),
        (3_600_000, "h"),
        (60_000, "m"),
        (1_000, "s"),
    ];
    for (size, unit) in UNITS {
        if ms >= size && ms % size == 0 {
            return format!("{}{unit}", ms / size);
        }
    }
    format!("{ms}ms")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_labels() {
        assert_eq!(parse("5m"), Ok(Duration::from_secs(300)));
        assert!(parse("five minutes").is_err());
        assert_eq!(label(Duration::from_secs(300)), "5m");
        assert_eq!(label(Duration::from_secs(4 * 3600)), "4h");
        assert_eq!(label(Duration::from_secs(90)), "90s");
        assert_eq!(label(Duration::from_millis(1500)), "1500ms");
        assert_eq!(label(Duration::from_secs(86_400)), "1d");
    }
}
