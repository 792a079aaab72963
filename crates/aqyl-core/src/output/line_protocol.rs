//! InfluxDB line protocol encoding with escaping that cannot be broken out of.
//!
//! Tag values carry untrusted sensor ids, so every special character is escaped: `,` ` ` `=`
//! and `\` in keys and tag values (`\\` reads back as one backslash in InfluxDB 2 and
//! VictoriaMetrics), `"` and `\` in string fields. Newlines and other control characters
//! cannot be escaped in line protocol at all; a point containing one is refused with an error
//! instead of being written, so no input can inject a second line.

use std::fmt::Write;

/// A field value.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum FieldValue<'a> {
    /// A float (must be finite).
    Float(f64),
    /// An integer, written with the `i` suffix.
    Int(i64),
    /// A string, written quoted.
    Str(&'a str),
}

/// One point.
#[derive(Debug, Clone, PartialEq)]
pub struct Point<'a> {
    /// Measurement name.
    pub measurement: &'a str,
    /// Tags in the order to write them (sort by key for best write performance).
    pub tags: Vec<(&'a str, &'a str)>,
    /// Fields; at least one.
    pub fields: Vec<(&'a str, FieldValue<'a>)>,
    /// Timestamp in milliseconds (write with `precision=ms`).
    pub time_ms: i64,
}

/// Why a point cannot be encoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LineError {
    /// A name or value contains a character line protocol cannot carry.
    #[error("{what} {value:?} contains a control character, which line protocol cannot carry")]
    ControlCharacter {
        /// Which part of the point.
        what: &'static str,
        /// The offending text (for the log).
        value: String,
    },
    /// A measurement, key or tag value is empty.
    #[error("{what} is empty; line protocol needs a non-empty value")]
    Empty {
        /// Which part of the point.
        what: &'static str,
    },
    /// No fields to write.
    #[error("a point needs at least one field")]
    NoFields,
    /// A float is NaN or infinite.
    #[error("field {field:?} is not finite")]
    NonFinite {
        /// The field.
        field: String,
    },
}

/// Whether `s` holds a control character (a byte scan for ASCII text, the common case).
fn has_control(s: &str) -> bool {
    if s.is_ascii() {
        s.bytes().any(|b| b < 0x20 || b == 0x7f)
    } else {
        s.chars().any(char::is_control)
    }
}

fn check(what: &'static str, s: &str) -> Result<(), LineError> {
    if s.is_empty() {
        return Err(LineError::Empty { what });
    }
    if has_control(s) {
        return Err(LineError::ControlCharacter {
            what,
            value: s.to_string(),
        });
    }
    Ok(())
}

fn escape(out: &mut String, s: &str, specials: &[char]) {
    // Specials are ASCII, so text without any of their bytes is written as it is.
    let special = |b: u8| b == b'\\' || specials.iter().any(|c| *c as u32 == u32::from(b));
    if !s.bytes().any(special) {
        out.push_str(s);
        return;
    }
    for c in s.chars() {
        if c == '\\' || specials.contains(&c) {
            out.push('\\');
        }
        out.push(c);
    }
}

/// Appends a finite float as `{x}` (`Display`) writes it: the shortest digits that read back
/// as `x`, never an exponent, no `.0` for whole numbers. Whole numbers below 10^15 through
/// `itoa`, as the integer they are; others through `ryu` (the same shortest
/// digits, several times faster than `core::fmt`), falling back to `Display` where `ryu`
/// would write an exponent, and for 16 digits or more, where two shortest candidates can tie
/// and the two break the tie differently.
fn write_float(out: &mut String, x: f64) {
    // Whole numbers (counts, and the minimum, maximum and median of whole readings: most
    // of a window's statistics) are their integer's digits (-0 is left to ryu, keeping its sign).
    if x.fract() == 0.0 && x.abs() < 1e15 && (x != 0.0 || x.is_sign_positive()) {
        out.push_str(itoa::Buffer::new().format(x as i64));
        return;
    }
    let mut buf = ryu::Buffer::new();
    let text = buf.format_finite(x);
    let digits = text
        .bytes()
        .skip_while(|b| matches!(b, b'-' | b'0' | b'.'))
        .filter(u8::is_ascii_digit)
        .count();
    if digits >= 16 || text.contains('e') {
        let _ = write!(out, "{x}");
    } else {
        out.push_str(text.strip_suffix(".0").unwrap_or(text));
    }
}

/// Appends `point` as one line (with trailing `\n`) to `out`; on error `out` is unchanged.
pub fn encode(point: &Point<'_>, out: &mut String) -> Result<(), LineError> {
    let parts = Parts {
        measurement: point.measurement,
        tags: &point.tags,
        fields: &point.fields,
        time_ms: point.time_ms,
    };
    encode_parts(&parts, out)
}

/// A point held in borrowed slices (arrays on the stack: a writer of many points of one
/// shape allocates nothing per point).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Parts<'p, 'a> {
    /// Measurement name.
    pub measurement: &'a str,
    /// Tags in the order to write them.
    pub tags: &'p [(&'a str, &'a str)],
    /// Fields; at least one.
    pub fields: &'p [(&'a str, FieldValue<'a>)],
    /// Timestamp in milliseconds.
    pub time_ms: i64,
}

/// [`encode`] for a point in slices.
pub fn encode_parts(point: &Parts<'_, '_>, out: &mut String) -> Result<(), LineError> {
    check("measurement", point.measurement)?;
    for (k, v) in point.tags {
        check("tag key", k)?;
        check("tag value", v)?;
    }
    if point.fields.is_empty() {
        return Err(LineError::NoFields);
    }
    for (k, v) in point.fields {
        check("field key", k)?;
        match v {
            FieldValue::Float(x) if !x.is_finite() => {
                return Err(LineError::NonFinite {
                    field: k.to_string(),
                })
            }
            FieldValue::Str(s) if has_control(s) => {
                return Err(LineError::ControlCharacter {
                    what: "string field",
                    value: s.to_string(),
                })
            }
            _ => {}
        }
    }
    escape(out, point.measurement, &[',', ' ']);
    for (k, v) in point.tags {
        out.push(',');
        escape(out, k, &[',', '=', ' ']);
        out.push('=');
        escape(out, v, &[',', '=', ' ']);
    }
    let mut digits = itoa::Buffer::new();
    for (i, (k, v)) in point.fields.iter().enumerate() {
        out.push(if i == 0 { ' ' } else { ',' });
        escape(out, k, &[',', '=', ' ']);
        out.push('=');
        match v {
            FieldValue::Float(x) => write_float(out, *x),
            FieldValue::Int(n) => {
                out.push_str(digits.format(*n));
                out.push('i');
            }
            FieldValue::Str(s) => {
                out.push('"');
                escape(out, s, &['"']);
                out.push('"');
            }
        }
    }
    out.push(' ');
    out.push_str(digits.format(point.time_ms));
    out.push('\n');
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floats_are_written_as_display_writes_them() {
        let mut rng = 0x2545_f491_4f6c_dd1du64;
        let mut next = || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        let mut samples = vec![
            0.0, -0.0, 1.0, -1.0, 0.1, 1e15, 1e16, 1e17, 1e-5, 1e-7, 123.456,
        ];
        // Whole numbers, on both sides of the bound of the integer path.
        samples.extend([47.0, -35.0, 1e15 - 1.0, -(1e15 - 1.0), 1e15 - 0.5]);
        samples.extend((0..20_000).map(|_| (next() % 2_000_000) as f64 - 1_000_000.0));
        samples.extend(
            (0..20_000)
                .map(|_| f64::from_bits(next()))
                .filter(|x| x.is_finite()),
        );
        samples.extend((0..20_000).map(|_| (next() % 1_000_000) as f64 / 1000.0));
        for scale in [1e-6, 1e-3, 1.0, 1e3, 1e6, 1e9, 1e12, 1e15, 1e18] {
            let mut unit = || (next() >> 11) as f64 / (1u64 << 53) as f64;
            samples.extend((0..20_000).map(|_| (unit() - 0.5) * scale));
        }
        for x in samples {
            let mut out = String::new();
            write_float(&mut out, x);
            assert_eq!(out, format!("{x}"));
        }
    }

    /// A reader of line protocol following InfluxDB's rules (a backslash escapes the next
    /// character), written independently of the encoder to check round-trips.
    type Pairs = Vec<(String, String)>;

    fn parse(line: &str) -> (String, Pairs, Pairs, String) {
        let line = line.strip_suffix('\n').expect("one line with a newline");
        assert!(!line.contains('\n'), "a second line was injected: {line:?}");
        let mut parts: Vec<Vec<String>> = vec![vec![String::new()]];
        let (mut chars, mut in_quotes) = (line.chars(), false);
        while let Some(c) = chars.next() {
            let cur = parts.last_mut().unwrap();
            match c {
                '\\' => cur.last_mut().unwrap().push(chars.next().unwrap()),
                '"' => {
                    in_quotes = !in_quotes;
                    cur.last_mut().unwrap().push('"')
                }
                ' ' if !in_quotes => parts.push(vec![String::new()]),
                ',' if !in_quotes => cur.push(String::new()),
                c => cur.last_mut().unwrap().push(c),
            }
        }
        assert_eq!(parts.len(), 3, "measurement+tags, fields, time: {line:?}");
        let kv = |s: &String| {
            let (k, v) = s.split_once('=').unwrap();
            (k.to_string(), v.to_string())
        };
        let head = &parts[0];
        (
            head[0].clone(),
            head[1..].iter().map(kv).collect(),
            parts[1].iter().map(kv).collect(),
            parts[2][0].clone(),
        )
    }

    fn point(id: &str) -> Point<'_> {
        Point {
            measurement: "aggregate",
            tags: vec![("sensor_id", id), ("sensor_type", "traffic")],
            fields: vec![
                ("count", FieldValue::Int(3)),
                ("mean", FieldValue::Float(1.5)),
                ("sax", FieldValue::Str("ab\"c\\")),
            ],
            time_ms: 1_406_872_500_000,
        }
    }

    #[test]
    fn plain_point() {
        let mut out = String::new();
        encode(&point("158324"), &mut out).unwrap();
        assert_eq!(
            out,
            "aggregate,sensor_id=158324,sensor_type=traffic count=3i,mean=1.5,sax=\"ab\\\"c\\\\\" 1406872500000\n"
        );
    }

    #[test]
    fn hostile_ids_round_trip() {
        let hostile = [
            "a b",
            "a,b",
            "a=b",
            "\"quoted\"",
            "back\\slash",
            "trailing\\",
            "\\,\\ \\=",
            "Århus-ÆØÅ-東京-🚦",
            "x sensor_type=evil count=1i 0",
            "=,= ,",
        ];
        for id in hostile {
            let mut out = String::new();
            encode(&point(id), &mut out).unwrap();
            let (m, tags, fields, time) = parse(&out);
            assert_eq!(m, "aggregate");
            assert_eq!(
                tags,
                vec![
                    ("sensor_id".into(), id.into()),
                    ("sensor_type".into(), "traffic".into())
                ],
                "{out}"
            );
            assert_eq!(fields.len(), 3, "{out}");
            assert_eq!(time, "1406872500000");
        }
    }

    #[test]
    fn control_characters_are_refused_not_injected() {
        for id in ["a\nb", "a\rb", "x\n", "tab\there", "nul\0"] {
            let mut out = String::new();
            let err = encode(&point(id), &mut out).unwrap_err();
            assert!(
                matches!(
                    err,
                    LineError::ControlCharacter {
                        what: "tag value",
                        ..
                    }
                ),
                "{err}"
            );
            assert!(out.is_empty());
        }
        let mut out = String::new();
        assert_eq!(
            encode(&point(""), &mut out),
            Err(LineError::Empty { what: "tag value" })
        );
        let mut p = point("1");
        p.fields = vec![("mean", FieldValue::Float(f64::NAN))];
        assert!(matches!(
            encode(&p, &mut out),
            Err(LineError::NonFinite { .. })
        ));
    }
}
