//! Payload formats other than plain JSON objects, read into JSON objects so that every
//! format is decoded the same way afterwards (fields addressed by JSON Pointer).
//!
//! - CSV: one line per message, columns as the descriptor declares them; a cell that parses
//!   as a number becomes a JSON number, an empty cell `null`, anything else a string.
//! - SenML (RFC 8428): a JSON array of records. Base fields are resolved (`bn` + `n`,
//!   `bt` + `t`, `bv` + `v`, `bu`), and records are grouped by resolved time: each group
//!   becomes one object `{"<n>": value, "<bn><n>": value, "@time": seconds}`. Times below
//!   2^28 are relative to the receive time, as the RFC says; records without any time take
//!   the receive time.

use crate::ingest::descriptor::SENML_TIME_KEY;
use serde::de::{DeserializeSeed, IgnoredAny, MapAccess, Visitor};
use serde_json::{Map, Number, Value};
use std::borrow::Cow;
use std::fmt;

/// RFC 8428 §4.5.3: times below this are relative to "now".
const SENML_RELATIVE_LIMIT: f64 = 268_435_456.0;

/// Parses a JSON object keeping only the top-level `keys` a descriptor reads; every other
/// member is skipped without being built. Sensor payloads carry many columns a type ignores
/// (ids, status strings), and skipping them halves the cost of decoding a CityPulse row.
/// Errors (including "not an object") are left for the caller to classify with a full parse.
pub fn json_projected(payload: &[u8], keys: &[String]) -> Result<Value, serde_json::Error> {
    let mut de = serde_json::Deserializer::from_slice(payload);
    let value = Projection { keys }.deserialize(&mut de)?;
    de.end()?;
    Ok(value)
}

struct Projection<'k> {
    keys: &'k [String],
}

impl<'de> DeserializeSeed<'de> for Projection<'_> {
    type Value = Value;

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for Projection<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = Map::new();
        while let Some(key) = map.next_key::<Cow<'de, str>>()? {
            if self.keys.iter().any(|k| *k == key) {
                let value: Value = map.next_value()?;
                out.insert(key.into_owned(), value);
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(Value::Object(out))
    }
}

/// Reads one CSV line into `{column: value}`.
pub fn csv_object(payload: &[u8], columns: &[String], delimiter: u8) -> Result<Value, String> {
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .delimiter(delimiter)
        .flexible(true)
        .from_reader(payload);
    let mut records = reader.byte_records();
    let record = match records.next() {
        None => return Err("the payload holds no CSV line".into()),
        Some(Err(e)) => return Err(format!("not a CSV line: {e}")),
        Some(Ok(r)) => r,
    };
    if records.next().is_some() {
        return Err(
            "the payload holds more than one CSV line; send one reading per message".into(),
        );
    }
    if record.len() != columns.len() {
        return Err(format!(
            "expected {} columns ({}), got {}",
            columns.len(),
            columns.join(", "),
            record.len()
        ));
    }
    let mut object = Map::with_capacity(columns.len());
    for (name, cell) in columns.iter().zip(record.iter()) {
        let text =
            std::str::from_utf8(cell).map_err(|_| format!("column {name:?} is not UTF-8"))?;
        let trimmed = text.trim();
        let value = if trimmed.is_empty() {
            Value::Null
        } else if let Some(n) = trimmed.parse::<f64>().ok().and_then(Number::from_f64) {
            Value::Number(n)
        } else {
            Value::String(text.to_string())
        };
        object.insert(name.clone(), value);
    }
    Ok(Value::Object(object))
}

/// Reads a SenML pack into one object per distinct record time.
pub fn senml_objects(payload: &[u8], received_at_ms: i64) -> Result<Vec<Value>, String> {
    let pack: Value =
        serde_json::from_slice(payload).map_err(|e| format!("not valid JSON: {e}"))?;
    let Value::Array(records) = pack else {
        return Err("a SenML pack is a JSON array of records".into());
    };
    if records.is_empty() {
        return Err("the SenML pack is empty".into());
    }
    let now_s = received_at_ms as f64 / 1000.0;
    let (mut base_name, mut base_time, mut base_value) = (String::new(), 0.0f64, 0.0f64);
    // (resolved time, object), in first-seen order of times.
    let mut groups: Vec<(f64, Map<String, Value>)> = Vec::new();
    for (i, record) in records.iter().enumerate() {
        let Value::Object(r) = record else {
            return Err(format!("record {i} is not a JSON object"));
        };
        let number = |key: &str| -> Result<Option<f64>, String> {
            match r.get(key) {
                None => Ok(None),
                Some(Value::Number(n)) => n
                    .as_f64()
                    .filter(|x| x.is_finite())
                    .map(Some)
                    .ok_or_else(|| format!("record {i}: {key} is not a finite number")),
                Some(_) => Err(format!("record {i}: {key} must be a number")),
            }
        };
        if let Some(bn) = r.get("bn") {
            base_name = bn
                .as_str()
                .ok_or_else(|| format!("record {i}: bn must be a string"))?
                .to_string();
        }
        if let Some(bt) = number("bt")? {
            base_time = bt;
        }
        if let Some(bv) = number("bv")? {
            base_value = bv;
        }
        let name = match r.get("n") {
            None => String::new(),
            Some(Value::String(n)) => n.clone(),
            Some(_) => return Err(format!("record {i}: n must be a string")),
        };
        let value = if let Some(v) = number("v")? {
            Value::from(base_value + v)
        } else if let Some(vs) = r.get("vs") {
            vs.clone()
        } else if let Some(vb) = r.get("vb") {
            vb.clone()
        } else if r.contains_key("vd") || r.contains_key("s") {
            continue; // data and sum records carry no reading Aqyl aggregates
        } else if name.is_empty() {
            continue; // a record that only sets base fields
        } else {
            return Err(format!(
                "record {i} ({name:?}) has no value (v, vs, vb or vd)"
            ));
        };
        let mut t = base_time + number("t")?.unwrap_or(0.0);
        if t.abs() < SENML_RELATIVE_LIMIT {
            t += now_s;
        }
        let group = match groups.iter_mut().find(|g| g.0 == t) {
            Some(g) => &mut g.1,
            None => {
                let mut m = Map::new();
                m.insert(SENML_TIME_KEY.to_string(), Value::from(t));
                groups.push((t, m));
                &mut groups.last_mut().ok_or("unreachable")?.1
            }
        };
        let full = format!("{base_name}{name}");
        if !name.is_empty() && full != name {
            group.insert(name, value.clone());
        }
        group.insert(full, value);
    }
    if groups.is_empty() {
        return Err("the SenML pack holds no readings".into());
    }
    Ok(groups.into_iter().map(|(_, m)| Value::Object(m)).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cols(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn projection_keeps_only_the_wanted_keys_and_agrees_with_a_full_parse() {
        let payload = br#"{"status":"OK","avgSpeed":50,"nested":{"a":[1,2]},"TIMESTAMP":"2014-08-01T07:50:00","esc\u0061ped":1}"#;
        let keys = vec![
            "avgSpeed".to_string(),
            "TIMESTAMP".to_string(),
            "escaped".to_string(),
            "absent".to_string(),
        ];
        let v = json_projected(payload, &keys).unwrap();
        let full: Value = serde_json::from_slice(payload).unwrap();
        assert_eq!(v.as_object().unwrap().len(), 3);
        for k in ["avgSpeed", "TIMESTAMP", "escaped"] {
            assert_eq!(v[k], full[k], "{k}");
        }
        assert!(json_projected(b"[1,2]", &keys).is_err());
        assert!(json_projected(b"{\"a\":1} trailing", &keys).is_err());
        assert!(json_projected(b"{\"a\":", &keys).is_err());
    }

    #[test]
    fn csv_lines_become_objects() {
        let v = csv_object(
            b"2014-08-01T07:50:00,50,\"5\",,OK",
            &cols(&["ts", "speed", "count", "empty", "status"]),
            b',',
        )
        .unwrap();
        assert_eq!(v["ts"], "2014-08-01T07:50:00");
        assert_eq!(v["speed"], 50.0);
        assert_eq!(v["count"], 5.0);
        assert_eq!(v["empty"], Value::Null);
        assert_eq!(v["status"], "OK");
        let e = csv_object(b"1,2", &cols(&["a", "b", "c"]), b',').unwrap_err();
        assert_eq!(e, "expected 3 columns (a, b, c), got 2");
        assert!(csv_object(b"1;2", &cols(&["a", "b"]), b';').is_ok());
        assert!(csv_object(b"1,2\n3,4", &cols(&["a", "b"]), b',').is_err());
        assert!(csv_object(b"", &cols(&["a"]), b',').is_err());
    }

    #[test]
    fn senml_resolves_base_fields_and_groups_by_time() {
        // RFC 8428 §5.1.2-style pack: base name and time, two measurements at once, one later.
        let pack = br#"[{"bn":"urn:dev:noise:7:","bt":1406851200,"bu":"dB","n":"laeq","v":61.5},
                        {"n":"lmax","v":70},
                        {"n":"laeq","t":60,"v":58}]"#;
        let groups = senml_objects(pack, 0).unwrap();
        assert_eq!(groups.len(), 2);
        assert_eq!(groups[0]["@time"], 1406851200.0);
        assert_eq!(groups[0]["laeq"], 61.5);
        assert_eq!(groups[0]["urn:dev:noise:7:laeq"], 61.5);
        assert_eq!(groups[0]["lmax"], 70.0);
        assert_eq!(groups[1]["@time"], 1406851260.0);
        assert_eq!(groups[1]["laeq"], 58.0);
    }

    #[test]
    fn senml_relative_times_and_base_values() {
        let groups = senml_objects(br#"[{"bv":10,"n":"x","v":1,"t":-5}]"#, 1_000_000).unwrap();
        assert_eq!(groups[0]["@time"], 995.0);
        assert_eq!(groups[0]["x"], 11.0);
        let groups = senml_objects(br#"[{"n":"x","v":1}]"#, 2_000).unwrap();
        assert_eq!(groups[0]["@time"], 2.0);
    }

    #[test]
    fn bad_senml_is_explained() {
        assert!(senml_objects(b"{}", 0).unwrap_err().contains("array"));
        assert!(senml_objects(b"[]", 0).unwrap_err().contains("empty"));
        assert!(senml_objects(br#"[{"n":"x"}]"#, 0)
            .unwrap_err()
            .contains("no value"));
        assert!(senml_objects(br#"[{"n":5,"v":1}]"#, 0)
            .unwrap_err()
            .contains("n must be a string"));
        assert!(senml_objects(br#"[{"n":"x","v":"1"}]"#, 0)
            .unwrap_err()
            .contains("v must be a number"));
        assert!(senml_objects(br#"[1]"#, 0)
            .unwrap_err()
            .contains("not a JSON object"));
    }
}
