//! Message payloads: JSON objects with their keys in CityPulse column order, or SenML arrays.
//!
//! `serde_json::Map` sorts its keys unless the workspace turns on `preserve_order`, which would
//! change every other crate's maps; a small ordered list keeps the simulator's output looking
//! like the CSV rows it imitates without touching anyone else's build.

use serde::ser::{SerializeMap, SerializeSeq};
use serde::{Serialize, Serializer};
use serde_json::Value;

/// An ordered JSON object: keys keep the order they were inserted in.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Fields(Vec<(String, Value)>);

impl Fields {
    /// An empty object.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty object with room for `n` keys.
    pub fn with_capacity(n: usize) -> Self {
        Self(Vec::with_capacity(n))
    }

    /// Sets `key` to `value`, keeping its position if it exists, appending it otherwise.
    pub fn set(&mut self, key: &str, value: impl Into<Value>) {
        let value = value.into();
        match self.0.iter_mut().find(|(k, _)| k == key) {
            Some((_, v)) => *v = value,
            None => self.0.push((key.to_owned(), value)),
        }
    }

    /// Appends `key` without looking for an existing one (for building rows from CSV headers).
    pub fn push(&mut self, key: &str, value: Value) {
        self.0.push((key.to_owned(), value));
    }

    /// The value of `key`, if present.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.0.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    /// The value of `key` as a number, if present and numeric.
    pub fn get_f64(&self, key: &str) -> Option<f64> {
        self.get(key).and_then(Value::as_f64)
    }

    /// Removes `key`, returning its value.
    pub fn remove(&mut self, key: &str) -> Option<Value> {
        let pos = self.0.iter().position(|(k, _)| k == key)?;
        Some(self.0.remove(pos).1)
    }

    /// The keys in order.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(|(k, _)| k.as_str())
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are no keys.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl Serialize for Fields {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.0.len()))?;
        for (k, v) in &self.0 {
            map.serialize_entry(k, v)?;
        }
        map.end()
    }
}

/// The body of one message before encoding.
#[derive(Debug, Clone, PartialEq)]
pub enum Payload {
    /// A JSON object (one CityPulse row).
    Object(Fields),
    /// A SenML pack (RFC 8428): a JSON array of records.
    Senml(Vec<Fields>),
}

impl Serialize for Payload {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Payload::Object(f) => f.serialize(serializer),
            Payload::Senml(records) => {
                let mut seq = serializer.serialize_seq(Some(records.len()))?;
                for r in records {
                    seq.serialize_element(r)?;
                }
                seq.end()
            }
        }
    }
}

impl Payload {
    /// The object, or the first SenML record: where measurements live.
    pub fn fields(&self) -> Option<&Fields> {
        match self {
            Payload::Object(f) => Some(f),
            Payload::Senml(r) => r.first(),
        }
    }

    /// Mutable access to [`Payload::fields`].
    pub fn fields_mut(&mut self) -> Option<&mut Fields> {
        match self {
            Payload::Object(f) => Some(f),
            Payload::Senml(r) => r.first_mut(),
        }
    }
}

/// Tracing fields appended to a message at publish time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Trace {
    /// Per-sensor sequence number, from 0.
    pub seq: u64,
    /// Wall-clock publish time in Unix milliseconds.
    pub sent_at: u64,
}

/// Encodes `payload` as JSON, with `seq`/`sent_at` appended when `trace` is given, and cut to
/// `truncate_at` bytes when set (a malformed-payload fault).
pub fn encode(payload: &Payload, trace: Option<Trace>, truncate_at: Option<f64>) -> Vec<u8> {
    let mut bytes = match trace {
        None => serde_json::to_vec(payload),
        Some(tr) => {
            let mut p = payload.clone();
            if let Some(f) = p.fields_mut() {
                f.set("seq", tr.seq);
                f.set("sent_at", tr.sent_at);
            }
            serde_json::to_vec(&p)
        }
    }
    // Serialising strings, numbers and ordered maps cannot fail.
    .unwrap_or_default();
    if let Some(frac) = truncate_at {
        // Cutting before the closing bracket always leaves an unterminated object or array.
        let cut = ((bytes.len() as f64 * frac) as usize).clamp(1, bytes.len().saturating_sub(1));
        bytes.truncate(cut);
    }
    bytes
}

/// Converts a CSV cell into JSON: numbers when the text is a plain decimal number, strings
/// otherwise (empty cells stay empty strings, as they are in the files).
pub fn csv_value(cell: &str) -> Value {
    let plain = !cell.is_empty()
        && cell
            .bytes()
            .all(|b| b.is_ascii_digit() || matches!(b, b'-' | b'+' | b'.' | b'e' | b'E'))
        && cell.bytes().any(|b| b.is_ascii_digit());
    if plain {
        if let Ok(i) = cell.parse::<i64>() {
            return Value::from(i);
        }
        if let Ok(f) = cell.parse::<f64>() {
            if let Some(n) = serde_json::Number::from_f64(f) {
                return Value::Number(n);
            }
        }
    }
    Value::String(cell.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_keep_insertion_order() {
        let mut f = Fields::new();
        f.set("status", "OK");
        f.set("avgSpeed", 50);
        f.set("TIMESTAMP", "2014-08-01T07:50:00");
        f.set("avgSpeed", 51);
        let text = String::from_utf8(encode(&Payload::Object(f), None, None)).unwrap_or_default();
        assert_eq!(
            text,
            r#"{"status":"OK","avgSpeed":51,"TIMESTAMP":"2014-08-01T07:50:00"}"#
        );
    }

    #[test]
    fn trace_fields_are_appended_and_truncation_is_invalid_json() {
        let mut f = Fields::new();
        f.set("a", 1);
        let p = Payload::Object(f);
        let traced = encode(
            &p,
            Some(Trace {
                seq: 7,
                sent_at: 1000,
            }),
            None,
        );
        assert_eq!(traced, br#"{"a":1,"seq":7,"sent_at":1000}"#);
        for frac in [0.0, 0.3, 0.5, 0.99, 1.0] {
            let cut = encode(&p, None, Some(frac));
            assert!(serde_json::from_slice::<Value>(&cut).is_err(), "{frac}");
        }
    }

    #[test]
    fn csv_cells_become_numbers_only_when_numeric() {
        assert_eq!(csv_value("74"), Value::from(74));
        assert_eq!(csv_value("18.0"), serde_json::json!(18.0));
        assert_eq!(
            csv_value("10.104986076057457"),
            serde_json::json!(10.104986076057457)
        );
        assert_eq!(
            csv_value("2014-08-01T07:50:00"),
            Value::from("2014-08-01T07:50:00")
        );
        assert_eq!(csv_value("OK"), Value::from("OK"));
        assert_eq!(csv_value(""), Value::from(""));
        assert_eq!(csv_value("NaN"), Value::from("NaN"));
        assert_eq!(csv_value("-"), Value::from("-"));
    }
}
