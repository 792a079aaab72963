//! Sizes in configuration files: `"512MiB"`, `"1GiB"`, `"100MB"` or a plain number of bytes.

use serde::{Deserialize, Deserializer};

/// Parses a size; the error says what was expected.
pub fn parse(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let digits = t
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(t.len());
    let (number, unit) = t.split_at(digits);
    let factor: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        "tb" => 1_000_000_000_000,
        "kib" => 1 << 10,
        "mib" => 1 << 20,
        "gib" => 1 << 30,
        "tib" => 1 << 40,
        _ => return Err(invalid(s)),
    };
    let n: f64 = number.parse().map_err(|_| invalid(s))?;
    if !n.is_finite() || n < 0.0 {
        return Err(invalid(s));
    }
    Ok((n * factor as f64) as u64)
}

fn invalid(s: &str) -> String {
    format!("invalid size {s:?}; write it like \"512MiB\", \"2GiB\" or a number of bytes")
}

/// Deserializes a size written as a string (`"1GiB"`) or a number of bytes.
pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Size {
        Bytes(u64),
        Text(String),
    }
    match Size::deserialize(d)? {
        Size::Bytes(n) => Ok(n),
        Size::Text(s) => parse(&s).map_err(serde::de::Error::custom),
    }
}

/// A size for people: `1.5 GiB`, `300 MiB`, `12 KiB`, `800 B`.
pub fn label(bytes: u64) -> String {
    const UNITS: [(u64, &str); 4] = [
        (1 << 40, "TiB"),
        (1 << 30, "GiB"),
        (1 << 20, "MiB"),
        (1 << 10, "KiB"),
    ];
    for (size, unit) in UNITS {
        if bytes >= size {
            let v = bytes as f64 / size as f64;
            return if v.fract() == 0.0 {
                format!("{v:.0} {unit}")
            } else {
                format!("{v:.1} {unit}")
            };
        }
    }
    format!("{bytes} B")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_binary_and_decimal_units() {
        assert_eq!(parse("1GiB"), Ok(1 << 30));
        assert_eq!(parse("512 MiB"), Ok(512 << 20));
        assert_eq!(parse("100MB"), Ok(100_000_000));
        assert_eq!(parse("1.5KiB"), Ok(1536));
        assert_eq!(parse("42"), Ok(42));
        assert!(parse("ten gigs").unwrap_err().contains("512MiB"));
        assert!(parse("-1GiB").is_err());
        assert_eq!(label(3 << 29), "1.5 GiB");
        assert_eq!(label(800), "800 B");
    }
}
