//! Decoding: topic and payload bytes in, a typed [`Observation`] or a precise [`Rejection`] out.
//! Pure and total: any bytes give one or the other, never a panic.

use crate::ingest::deadletter::{DeadLetter, Reason};
use crate::ingest::descriptor::{
    validate_sensor_id, Captures, FieldType, PayloadFormat, Pointer, SensorType, TimeFormat,
    TimeRule,
};
use crate::ingest::formats::{csv_object, json_projected, senml_objects};
use crate::ingest::observation::{Observation, RawMessage};
use chrono::{NaiveDateTime, TimeZone};
use serde_json::Value;
use std::sync::Arc;

/// Latest accepted event time (year 9999), to keep arithmetic far from overflow.
const MAX_EVENT_MS: i64 = 253_402_300_799_000;

/// The configured sensor types, looked up by topic.
#[derive(Debug, Clone, Default)]
pub struct Registry {
    types: Vec<SensorType>,
}

/// Why a message was not turned into an observation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// The sensor type the topic matched; `None` for an unknown topic.
    pub sensor_type: Option<String>,
    /// The sensor id from the topic, when it is a valid one (quality scoring counts the
    /// rejection against that sensor).
    pub sensor_id: Option<String>,
    /// Machine-readable reason.
    pub reason: Reason,
    /// Which field, what was expected, what came.
    pub detail: String,
}

impl Rejection {
    fn new(sensor_type: &str, reason: Reason, detail: String) -> Self {
        Self {
            sensor_type: Some(sensor_type.to_string()),
            sensor_id: None,
            reason,
            detail,
        }
    }

    /// The dead-letter record for the rejected message.
    pub fn dead_letter(&self, msg: &RawMessage) -> DeadLetter {
        DeadLetter::new(
            self.sensor_type.as_deref().unwrap_or("unknown"),
            self.reason,
            self.detail.clone(),
            &msg.topic,
            &msg.payload,
            msg.received_at,
        )
    }
}

impl Registry {
    /// A registry of the given types (already checked not to overlap).
    pub fn new(types: Vec<SensorType>) -> Self {
        Self { types }
    }

    /// The sensor types.
    pub fn types(&self) -> &[SensorType] {
        &self.types
    }

    /// The sensor type called `name`.
    pub fn get(&self, name: &str) -> Option<&SensorType> {
        // Readings carry their type's own name (an `Arc` of it), so the same address is the
        // usual match, and the comparison of text the fallback.
        let same = |t: &&SensorType| std::ptr::eq(&*t.name, name);
        let at = self.types.iter().find(same);
        at.or_else(|| self.types.iter().find(|t| &*t.name == name))
    }

    /// The MQTT filters to subscribe to, one per type.
    pub fn filters(&self) -> Vec<String> {
        self.types.iter().map(|t| t.topic.filter()).collect()
    }

    /// Decodes one message. `max_payload` bounds the payload size in bytes.
    /// Decodes one message into a fresh vector (one observation, or several for a SenML
    /// pack with several record times).
    pub fn decode(
        &self,
        msg: &RawMessage,
        max_payload: usize,
    ) -> Result<Vec<Observation>, Rejection> {
        let mut out = Vec::with_capacity(1);
        self.decode_into(msg, max_payload, &mut out)?;
        Ok(out)
    }

    /// Decodes one message, appending its observations to `out` (the hot path reuses the
    /// vector). On error nothing is appended: a payload is accepted or rejected whole.
    pub fn decode_into(
        &self,
        msg: &RawMessage,
        max_payload: usize,
        out: &mut Vec<Observation>,
    ) -> Result<(), Rejection> {
        let Some((ty, captures)) = self
            .types
            .iter()
            .find_map(|t| t.topic.matches(&msg.topic).map(|c| (t, c)))
        else {
            return Err(Rejection {
                sensor_type: None,
                sensor_id: None,
                reason: Reason::UnknownTopic,
                detail: format!(
                    "no sensor type has a topic pattern matching {:?}",
                    msg.topic
                ),
            });
        };
        let name = &*ty.name;
        validate_sensor_id(captures.sensor_id)
            .map_err(|e| Rejection::new(name, Reason::InvalidSensorId, e))?;
        if let Some(area) = captures.area {
            validate_sensor_id(area)
                .map_err(|e| Rejection::new(name, Reason::InvalidSensorId, format!("area: {e}")))?;
        }
        let with_id = |mut r: Rejection| {
            r.sensor_id = Some(captures.sensor_id.to_string());
            r
        };
        if msg.payload.len() > max_payload {
            return Err(with_id(Rejection::new(
                name,
                Reason::Oversized,
                format!(
                    "payload is {} bytes; the limit is {max_payload} (ingest.max_payload_bytes)",
                    msg.payload.len()
                ),
            )));
        }
        self.decode_matched(ty, &captures, msg, out)
            .map_err(with_id)
    }

    fn decode_matched(
        &self,
        ty: &SensorType,
        captures: &crate::ingest::descriptor::Captures<'_>,
        msg: &RawMessage,
        out: &mut Vec<Observation>,
    ) -> Result<(), Rejection> {
        let name = &*ty.name;
        match &ty.format {
            PayloadFormat::Json if ty.json_keys.is_some() => {
                let keys = ty.json_keys.as_deref().unwrap_or_default();
                match json_projected(&msg.payload, keys) {
                    Ok(value) => out.push(observe(ty, captures, msg, &value)?),
                    // Rare: classify the error (malformed, not an object) with a full parse.
                    Err(_) => {
                        out.push(observe(ty, captures, msg, &full_json(name, &msg.payload)?)?)
                    }
                }
            }
            PayloadFormat::Json => {
                let value = full_json(name, &msg.payload)?;
                out.push(observe(ty, captures, msg, &value)?);
            }
            PayloadFormat::Csv { columns, delimiter } => {
                let value = csv_object(&msg.payload, columns, *delimiter)
                    .map_err(|e| Rejection::new(name, Reason::MalformedCsv, e))?;
                out.push(observe(ty, captures, msg, &value)?);
            }
            PayloadFormat::Senml => {
                let groups = senml_objects(&msg.payload, msg.received_at)
                    .map_err(|e| Rejection::new(name, Reason::MalformedSenml, e))?;
                let start = out.len();
                for value in &groups {
                    match observe(ty, captures, msg, value) {
                        Ok(o) => out.push(o),
                        Err(e) => {
                            out.truncate(start);
                            return Err(e);
                        }
                    }
                }
            }
        }
        Ok(())
    }
}

/// A full JSON parse that must give an object (the error path of the projected parse).
fn full_json(name: &str, payload: &[u8]) -> Result<Value, Rejection> {
    let value: Value = serde_json::from_slice(payload).map_err(|e| {
        Rejection::new(
            name,
            Reason::MalformedJson,
            format!("payload is not valid JSON: {e}"),
        )
    })?;
    if !value.is_object() {
        return Err(Rejection::new(
            name,
            Reason::NotAnObject,
            format!("expected a JSON object, got {}", kind_of(&value)),
        ));
    }
    Ok(value)
}

/// The observation in one decoded object.
fn observe(
    ty: &SensorType,
    captures: &Captures<'_>,
    msg: &RawMessage,
    value: &Value,
) -> Result<Observation, Rejection> {
    let name = &*ty.name;
    let (event_time, time_from_receive) = match &ty.time {
        Some(rule) => (
            read_time(rule, value)
                .map_err(|e| Rejection::new(name, Reason::InvalidTimestamp, e))?,
            false,
        ),
        None => (msg.received_at, true),
    };
    if !(0..=MAX_EVENT_MS).contains(&event_time) {
        return Err(Rejection::new(
            name,
            Reason::InvalidTimestamp,
            format!("event time {event_time} ms is outside 1970..9999"),
        ));
    }
    // The sensor: the payload's sensor_id_field when the type names one and the payload has
    // it, else the topic's.
    let sensor_id: std::borrow::Cow<'_, str> = match &ty.sensor_id_field {
        Some(pointer) => match payload_sensor_id(pointer, value) {
            Ok(id) => id.into(),
            Err((Reason::MissingField, _)) => captures.sensor_id.into(),
            Err((reason, detail)) => return Err(Rejection::new(name, reason, detail)),
        },
        None => captures.sensor_id.into(),
    };
    // The area: from the topic's {area}, else from the payload's area_field.
    let area = match (captures.area, &ty.area_field) {
        (Some(a), _) => Some(Arc::from(a)),
        (None, Some(pointer)) => match pointer.lookup(value) {
            None | Some(Value::Null) => None,
            Some(Value::String(a)) => {
                validate_sensor_id(a).map_err(|e| {
                    Rejection::new(
                        name,
                        Reason::InvalidSensorId,
                        format!("area at {pointer}: {e}"),
                    )
                })?;
                Some(Arc::from(a.as_str()))
            }
            Some(other) => {
                return Err(Rejection::new(
                    name,
                    Reason::WrongType,
                    format!(
                        "area at {pointer}: expected a string, got {}",
                        kind_of(other)
                    ),
                ))
            }
        },
        (None, None) => None,
    };
    // Last, the sensor registry's area for this sensor.
    let known = ty.registry.as_ref().and_then(|r| r.entry(&sensor_id));
    let area = area.or_else(|| known?.1.area.clone());
    // Position: the payload's location fields (mobile sensors), else the registry's.
    let location = match &ty.location {
        Some((lat, lon)) => match (lat.lookup(value), lon.lookup(value)) {
            (Some(a), Some(b)) => match (read_number(Some(a), FieldType::Number), read_number(Some(b), FieldType::Number)) {
                (Ok(Some(a)), Ok(Some(b))) if a.abs() <= 90.0 && b.abs() <= 180.0 => Some((a, b)),
                _ => {
                    return Err(Rejection::new(
                        name,
                        Reason::WrongType,
                        format!("location at {lat}, {lon}: expected latitude and longitude in degrees, got {} and {}", kind_of(a), kind_of(b)),
                    ))
                }
            },
            _ => None,
        },
        None => None,
    }
    .or_else(|| known.map(|(_, s)| (s.lat, s.lon)));
    let mut fields = Vec::with_capacity(ty.fields.len());
    for f in &ty.fields {
        match read_number(f.pointer.lookup(value), f.kind) {
            Ok(Some(v)) => fields.push((f.name.clone(), f.conversion.map_or(v, |c| c.apply(v)))),
            Ok(None) if !f.required => {}
            Ok(None) => {
                return Err(Rejection::new(
                    name,
                    Reason::MissingField,
                    format!(
                        "required field {:?} (at {}) is missing, null, empty or NA",
                        f.name, f.pointer
                    ),
                ))
            }
            Err(got) => {
                return Err(Rejection::new(
                    name,
                    Reason::WrongType,
                    format!(
                        "field {:?} (at {}): expected {}, got {got}",
                        f.name,
                        f.pointer,
                        type_name(f.kind)
                    ),
                ))
            }
        }
    }
    Ok(Observation {
        sensor_type: ty.name.clone(),
        sensor_id: known.map_or_else(|| Arc::from(&*sensor_id), |(id, _)| id.clone()),
        area,
        event_time: event_time as u64,
        received_at: msg.received_at,
        time_from_receive,
        location,
        fields,
        arrival: Default::default(),
    })
}

/// Decodes one row of text cells, looked up by column name (a CSV row), as [`Registry::decode`]
/// decodes the JSON object of those strings published on the type's topic for `topic_id`, for
/// a row that decodes cleanly; without building the JSON text or a `serde_json::Value`.
///
/// `None` whenever decoding would reject the row, or cannot be done from top-level keys alone
/// (a CSV or SenML type, a nested pointer, an `{area}` in the topic, a topic id with a `/`):
/// the caller then decodes the row's JSON and gets the exact rejection.
///
/// A reading of the topic's own sensor shares `topic_id` (a replay reads a file's rows with
/// one id, so a row costs no allocation for it).
pub fn observe_cells<'c>(
    ty: &SensorType,
    topic_id: &Arc<str>,
    cell: impl Fn(&str) -> Option<&'c str>,
) -> Option<Observation> {
    if ty.format != PayloadFormat::Json
        || ty.json_keys.is_none()
        || topic_id.contains('/')
        || ty.topic.has_area()
    {
        return None;
    }
    validate_sensor_id(topic_id).ok()?;
    let at = |p: &Pointer| cell(p.top_level_key()?);
    let (event_time, time_from_receive) = match &ty.time {
        Some(rule) => (text_time(rule, at(&rule.pointer)?).ok()?, false),
        None => (0, true),
    };
    if !(0..=MAX_EVENT_MS).contains(&event_time) {
        return None;
    }
    let sensor_id = match ty.sensor_id_field.as_ref().and_then(&at) {
        Some(id) => {
            let id = id.trim();
            validate_sensor_id(id).ok()?;
            id
        }
        None => &**topic_id,
    };
    let area = match ty.area_field.as_ref().and_then(&at) {
        Some(a) => {
            validate_sensor_id(a).ok()?;
            Some(Arc::from(a))
        }
        None => None,
    };
    let known = ty.registry.as_ref().and_then(|r| r.entry(sensor_id));
    let area = area.or_else(|| known?.1.area.clone());
    let location = match &ty.location {
        Some((lat, lon)) => match (at(lat), at(lon)) {
            (Some(a), Some(b)) => match (
                text_number(a, FieldType::Number),
                text_number(b, FieldType::Number),
            ) {
                (Ok(Some(a)), Ok(Some(b))) if a.abs() <= 90.0 && b.abs() <= 180.0 => Some((a, b)),
                _ => return None,
            },
            _ => None,
        },
        None => None,
    }
    .or_else(|| known.map(|(_, s)| (s.lat, s.lon)));
    let mut fields = Vec::with_capacity(ty.fields.len());
    for f in &ty.fields {
        let value = match at(&f.pointer) {
            Some(text) => text_number(text, f.kind).ok()?,
            None => None,
        };
        match value {
            Some(v) => fields.push((f.name.clone(), f.conversion.map_or(v, |c| c.apply(v)))),
            None if !f.required => {}
            None => return None,
        }
    }
    let sensor_id = match known {
        Some((id, _)) => id.clone(),
        None if sensor_id == &**topic_id => topic_id.clone(),
        None => Arc::from(sensor_id),
    };
    Some(Observation {
        sensor_type: ty.name.clone(),
        sensor_id,
        area,
        event_time: event_time as u64,
        received_at: 0,
        time_from_receive,
        location,
        fields,
        arrival: Default::default(),
    })
}

/// The sensor id at `pointer` in a payload (`sensor_id_field`): a string, or a whole number
/// written in decimal (`"REPORT_ID": 158324` gives `158324`), validated like a topic's id.
/// On error, the reason to dead-letter with and a sentence.
pub fn payload_sensor_id(pointer: &Pointer, payload: &Value) -> Result<String, (Reason, String)> {
    let id = match pointer.lookup(payload) {
        None | Some(Value::Null) => {
            return Err((
                Reason::MissingField,
                format!("the sensor id (sensor_id_field {pointer}) is missing"),
            ))
        }
        Some(Value::String(s)) => s.trim().to_string(),
        Some(Value::Number(n)) if n.is_u64() || n.is_i64() => n.to_string(),
        Some(Value::Number(n)) => match n.as_f64() {
            // CSV cells and some JSON writers give whole numbers as 158324.0.
            Some(x) if x.fract() == 0.0 && x.abs() < 1e15 => format!("{}", x as i64),
            _ => {
                return Err((
                    Reason::WrongType,
                    format!("the sensor id at {pointer}: expected a string or a whole number, got the number {n}"),
                ))
            }
        },
        Some(other) => {
            return Err((
                Reason::WrongType,
                format!(
                    "the sensor id at {pointer}: expected a string or a whole number, got {}",
                    kind_of(other)
                ),
            ))
        }
    };
    validate_sensor_id(&id).map_err(|e| (Reason::InvalidSensorId, format!("at {pointer}: {e}")))?;
    Ok(id)
}

/// The event time (Unix ms) of a decoded payload object as `ty` reads it; `None` when the type
/// has no `[time]` (receive time is used). For replays, which order rows by it.
pub fn event_time_of(ty: &SensorType, payload: &Value) -> Option<Result<i64, String>> {
    ty.time.as_ref().map(|rule| read_time(rule, payload))
}

fn type_name(kind: FieldType) -> &'static str {
    match kind {
        FieldType::Number => "a number",
        FieldType::Integer => "an integer",
    }
}

fn kind_of(v: &Value) -> String {
    match v {
        Value::Null => "null".into(),
        Value::Bool(b) => format!("the boolean {b}"),
        Value::Number(n) => format!("the number {n}"),
        Value::String(s) => format!("the string {:?}", truncate(s, 40)),
        Value::Array(_) => "an array".into(),
        Value::Object(_) => "an object".into(),
    }
}

fn truncate(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_string(),
    }
}

/// `Ok(None)` for absent/null/""/"NA"; `Err(description)` for a value of the wrong type.
fn read_number(v: Option<&Value>, kind: FieldType) -> Result<Option<f64>, String> {
    let x = match v {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::String(s)) => return text_number(s, kind),
        Some(Value::Number(n)) => n.as_f64().ok_or_else(|| format!("the number {n}"))?,
        Some(other) => return Err(kind_of(other)),
    };
    checked_number(x, kind)
}

/// [`read_number`] of a string (numbers written as text, as CSV cells are).
fn text_number(s: &str, kind: FieldType) -> Result<Option<f64>, String> {
    let t = s.trim();
    if t.is_empty() || t.eq_ignore_ascii_case("na") {
        return Ok(None);
    }
    if let Some(n) = whole_digits(t) {
        return Ok(Some(n as f64));
    }
    let x = t
        .parse::<f64>()
        .map_err(|_| kind_of(&Value::String(s.to_string())))?;
    checked_number(x, kind)
}

/// The value of `t` when it is up to 15 decimal digits and nothing else (most cells: counts,
/// whole readings), read without the general float parser; exactly the float it would give.
fn whole_digits(t: &str) -> Option<u64> {
    if t.is_empty() || t.len() > 15 {
        return None;
    }
    t.bytes().try_fold(0u64, |n, c| {
        c.is_ascii_digit().then(|| n * 10 + u64::from(c - b'0'))
    })
}

/// A number read, checked to be finite (and whole for an integer field).
fn checked_number(x: f64, kind: FieldType) -> Result<Option<f64>, String> {
    if !x.is_finite() {
        return Err(format!("the non-finite value {x}"));
    }
    if kind == FieldType::Integer && x.fract() != 0.0 {
        return Err(format!("the fractional number {x}"));
    }
    Ok(Some(x))
}

/// `text` by chrono's general parser of the compiled pattern `items`.
fn chrono_local(
    items: &[chrono::format::Item<'static>],
    text: &str,
) -> chrono::format::ParseResult<NaiveDateTime> {
    let mut parsed = chrono::format::Parsed::new();
    chrono::format::parse(&mut parsed, text.trim(), items.iter())?;
    parsed.to_naive_datetime_with_offset(0)
}

/// `text` read as `%Y-%m-%dT%H:%M:%S` (or with a space for the `T`) when `pattern` is exactly
/// that and `text` has its plain 19-character form, without chrono's general parser (a third
/// of a replay's decoding); `None` for anything else, which the general parser then reads, so
/// the result is the same either way.
fn iso_local(pattern: &str, text: &str) -> Option<NaiveDateTime> {
    let separator = match pattern {
        "%Y-%m-%dT%H:%M:%S" => b'T',
        "%Y-%m-%d %H:%M:%S" => b' ',
        _ => return None,
    };
    let b = text.as_bytes();
    let layout = [
        (4, b'-'),
        (7, b'-'),
        (10, separator),
        (13, b':'),
        (16, b':'),
    ];
    if b.len() != 19 || layout.iter().any(|(i, c)| b[*i] != *c) {
        return None;
    }
    let number = |from: usize, to: usize| {
        b[from..to].iter().try_fold(0u32, |n, c| {
            c.is_ascii_digit().then(|| n * 10 + u32::from(c - b'0'))
        })
    };
    let date = chrono::NaiveDate::from_ymd_opt(
        i32::try_from(number(0, 4)?).ok()?,
        number(5, 7)?,
        number(8, 10)?,
    )?;
    let second = number(17, 19)?;
    if second >= 60 {
        // A leap second: chrono's rules.
        return None;
    }
    date.and_hms_opt(number(11, 13)?, number(14, 16)?, second)
}

fn read_time(rule: &TimeRule, payload: &Value) -> Result<i64, String> {
    let v = rule
        .pointer
        .lookup(payload)
        .ok_or_else(|| format!("time field {} is missing", rule.pointer))?;
    if let Value::String(s) = v {
        return text_time(rule, s);
    }
    let number = || -> Result<f64, String> {
        match v {
            Value::Number(n) => n.as_f64().ok_or_else(|| "unreadable number".to_string()),
            _ => Err(format!("expected a number, got {}", kind_of(v))),
        }
    };
    let ms = match &rule.format {
        TimeFormat::EpochSeconds => number()? * 1000.0,
        TimeFormat::EpochMillis => number()?,
        TimeFormat::Rfc3339 => {
            return Err(format!("expected an RFC 3339 string, got {}", kind_of(v)))
        }
        TimeFormat::Local { pattern, .. } => {
            return Err(format!(
                "expected a time string like {pattern:?}, got {}",
                kind_of(v)
            ))
        }
    };
    epoch_ms(ms)
}

/// An epoch time in ms, checked to lie in 1970..9999.
fn epoch_ms(ms: f64) -> Result<i64, String> {
    if !ms.is_finite() || ms < 0.0 || ms > MAX_EVENT_MS as f64 {
        return Err(format!("epoch value {ms} ms is outside 1970..9999"));
    }
    Ok(ms as i64)
}

/// [`read_time`] of a string value.
fn text_time(rule: &TimeRule, s: &str) -> Result<i64, String> {
    let number = || -> Result<f64, String> {
        s.trim().parse::<f64>().map_err(|_| {
            format!(
                "expected a number, got {}",
                kind_of(&Value::String(s.to_string()))
            )
        })
    };
    let ms = match &rule.format {
        TimeFormat::EpochSeconds => number()? * 1000.0,
        TimeFormat::EpochMillis => number()?,
        TimeFormat::Rfc3339 => {
            return chrono::DateTime::parse_from_rfc3339(s.trim())
                .map(|t| t.timestamp_millis())
                .map_err(|e| format!("{:?} is not RFC 3339 ({e})", truncate(s, 40)));
        }
        TimeFormat::Local {
            pattern,
            items,
            zone,
        } => {
            let naive = match iso_local(pattern, s.trim()) {
                Some(naive) => naive,
                None => chrono_local(items, s).map_err(|e| {
                    format!(
                        "{:?} does not match the time format {pattern:?} ({e})",
                        truncate(s, 40)
                    )
                })?,
            };
            if zone == &chrono_tz::UTC {
                // No offsets to look up: the same instant, without the zone's tables.
                return Ok(naive.and_utc().timestamp_millis());
            }
            return match zone.from_local_datetime(&naive) {
                chrono::LocalResult::Single(t) => Ok(t.timestamp_millis()),
                chrono::LocalResult::Ambiguous(early, _) => Ok(early.timestamp_millis()),
                chrono::LocalResult::None => zone
                    .from_local_datetime(&(naive - chrono::Duration::hours(1)))
                    .earliest()
                    .map(|t| t.timestamp_millis() + 3_600_000)
                    .ok_or_else(|| format!("{s:?} does not exist in {zone}")),
            };
        }
    };
    epoch_ms(ms)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn whole_digit_cells_read_as_the_float_parser_reads_them() {
        for t in ["0", "7", "007", "55", "123456789012345", "999999999999999"] {
            assert_eq!(
                whole_digits(t).map(|n| n as f64),
                t.parse::<f64>().ok(),
                "{t}"
            );
        }
        for t in ["", "-1", "+1", "1.5", "1e3", "1234567890123456", " 1", "١"] {
            assert_eq!(whole_digits(t), None, "{t}");
        }
    }

    #[test]
    fn a_utc_time_reads_as_through_the_zone() {
        let rule = |zone: &str| {
            let ty = SensorType::from_toml(
                Path::new("t.toml"),
                &format!("name = \"t\"\n[time]\nfield = \"/ts\"\nformat = \"%Y-%m-%dT%H:%M:%S\"\ntimezone = \"{zone}\"\n[[fields]]\nname = \"v\"\n"),
            )
            .unwrap();
            ty.time.unwrap()
        };
        let utc = rule("UTC");
        let zero = rule("Etc/GMT");
        for t in [
            "2014-08-01T07:50:00",
            "2016-12-31T23:59:59",
            "1970-01-01T00:00:00",
            "2014-08-01 07:50",
        ] {
            assert_eq!(text_time(&utc, t), text_time(&zero, t), "{t}");
        }
        assert_eq!(
            text_time(&utc, "2014-08-01T07:50:00"),
            Ok(1_406_879_400_000)
        );
    }

    /// Byte strings derived from `seeds` by up to `max_edits` random byte flips, deletions and
    /// insertions each: a small mutation fuzzer, deterministic per `seed`.
    pub(super) fn mutations(
        seeds: &[&[u8]],
        count: usize,
        max_edits: usize,
        seed: u64,
    ) -> Vec<Vec<u8>> {
        let mut rng = fastrand::Rng::with_seed(seed);
        (0..count)
            .map(|i| {
                let mut bytes = seeds[i % seeds.len()].to_vec();
                for _ in 0..rng.usize(0..max_edits) {
                    if bytes.is_empty() {
                        break;
                    }
                    let at = rng.usize(0..bytes.len());
                    match rng.u8(0..3) {
                        0 => bytes[at] = rng.u8(..),
                        1 => {
                            bytes.remove(at);
                        }
                        _ => bytes.insert(at, rng.u8(..)),
                    }
                }
                bytes
            })
            .collect()
    }

    fn registry() -> Registry {
        let t = SensorType::from_toml(
            Path::new("traffic.toml"),
            r#"
name = "traffic"
[time]
field = "/TIMESTAMP"
format = "%Y-%m-%dT%H:%M:%S"
timezone = "Europe/Copenhagen"
[[fields]]
name = "avgSpeed"
[[fields]]
name = "vehicleCount"
type = "integer"
[[fields]]
name = "extra"
required = false
"#,
        )
        .unwrap();
        Registry::new(vec![t])
    }

    fn msg(topic: &str, payload: &str) -> RawMessage {
        RawMessage {
            topic: topic.into(),
            payload: payload.as_bytes().to_vec(),
            received_at: 1_000,
        }
    }

    #[test]
    fn decodes_a_citypulse_row_in_copenhagen_time() {
        let obs = registry()
            .decode(
                &msg(
                    "city/traffic/158324",
                    r#"{"status":"OK","avgMeasuredTime":74,"avgSpeed":50,"extID":668,"TIMESTAMP":"2014-08-01T07:50:00","vehicleCount":"5","REPORT_ID":158324}"#,
                ),
                65536,
            )
            .unwrap()
            .remove(0);
        assert_eq!(&*obs.sensor_id, "158324");
        // 07:50 CEST (UTC+2) is 05:50 UTC.
        assert_eq!(obs.event_time, 1_406_872_200_000);
        assert_eq!(
            obs.fields,
            vec![("avgSpeed".into(), 50.0), ("vehicleCount".into(), 5.0)]
        );
        assert!(!obs.time_from_receive);
    }

    #[test]
    fn the_plain_local_time_reader_agrees_with_chrono() {
        for pattern in ["%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M:%S"] {
            let items = chrono::format::StrftimeItems::new(pattern)
                .parse_to_owned()
                .unwrap();
            let sep = &pattern[8..9];
            for text in [
                "2014-08-01T07:50:00",
                "2014-02-28T23:59:59",
                "2016-02-29T00:00:00",
                "2014-02-29T00:00:00",
                "2014-13-01T00:00:00",
                "2014-00-10T00:00:00",
                "2014-08-32T00:00:00",
                "2014-08-01T24:00:00",
                "2014-08-01T23:60:00",
                "2014-08-01T23:59:60",
                "0000-01-01T00:00:00",
                "9999-12-31T23:59:59",
                "2014-8-01T07:50:00",
                "2014-08-01T07:50:0x",
                "2014-08-01t07:50:00",
                "+2014-08-01T07:50:00",
                "2014-08-01T07:50:00Z",
            ] {
                let text = text.replace('T', sep);
                let fast = iso_local(pattern, &text);
                let general = chrono_local(&items, &text).ok();
                if fast.is_some() {
                    assert_eq!(fast, general, "{pattern} {text}");
                }
            }
        }
        assert!(iso_local("%Y-%m-%dT%H:%M:%S", "2014-08-01T07:50:00").is_some());
        assert!(iso_local("%d/%m/%Y %H:%M:%S", "2014-08-01T07:50:00").is_none());
    }

    #[test]
    fn dst_edges_are_resolved() {
        let r = registry();
        let at = |ts: &str| {
            r.decode(
                &msg(
                    "city/traffic/1",
                    &format!(r#"{{"TIMESTAMP":"{ts}","avgSpeed":1,"vehicleCount":1}}"#),
                ),
                1 << 16,
            )
            .unwrap()[0]
                .event_time
        };
        // 2014-10-26 02:30 happens twice in Copenhagen; the earlier (CEST, UTC+2) is taken.
        assert_eq!(at("2014-10-26T02:30:00"), 1_414_283_400_000);
        // 2014-03-30 02:30 does not exist; it is read as 01:30 UTC (03:30 CEST).
        assert_eq!(at("2014-03-30T02:30:00"), 1_396_143_000_000);
    }

    fn reason(topic: &str, payload: &str) -> (Reason, String) {
        let r = registry().decode(&msg(topic, payload), 200).unwrap_err();
        (r.reason, r.detail)
    }

    #[test]
    fn rejections_of_a_known_sensor_name_it() {
        let r = registry()
            .decode(&msg("city/traffic/158324", r#"{"avgSpeed":"#), 200)
            .unwrap_err();
        assert_eq!(
            (r.sensor_type.as_deref(), r.sensor_id.as_deref()),
            (Some("traffic"), Some("158324"))
        );
        let r = registry()
            .decode(&msg("city/traffic/bad\u{7}id", "{}"), 200)
            .unwrap_err();
        assert_eq!((r.reason, r.sensor_id), (Reason::InvalidSensorId, None));
    }

    #[test]
    fn every_rejection_reason_says_why() {
        let ok_time = r#""TIMESTAMP":"2014-08-01T07:50:00""#;
        assert_eq!(reason("city/parking/1", "{}").0, Reason::UnknownTopic);
        assert_eq!(
            reason("city/traffic/1", &"x".repeat(201)).0,
            Reason::Oversized
        );
        assert_eq!(
            reason("city/traffic/1", "{\"avgSpeed\":").0,
            Reason::MalformedJson
        );
        assert_eq!(reason("city/traffic/1", "[1,2]").0, Reason::NotAnObject);
        let (r, d) = reason(
            "city/traffic/1",
            &format!(r#"{{{ok_time},"vehicleCount":3}}"#),
        );
        assert_eq!(r, Reason::MissingField);
        assert!(d.contains("avgSpeed"), "{d}");
        let (r, d) = reason(
            "city/traffic/1",
            &format!(r#"{{{ok_time},"avgSpeed":"fast","vehicleCount":3}}"#),
        );
        assert_eq!(r, Reason::WrongType);
        assert!(
            d.contains("expected a number, got the string \"fast\""),
            "{d}"
        );
        let (r, _) = reason(
            "city/traffic/1",
            &format!(r#"{{{ok_time},"avgSpeed":1,"vehicleCount":2.5}}"#),
        );
        assert_eq!(r, Reason::WrongType);
        let (r, d) = reason(
            "city/traffic/1",
            r#"{"TIMESTAMP":"yesterday","avgSpeed":1,"vehicleCount":2}"#,
        );
        assert_eq!(r, Reason::InvalidTimestamp);
        assert!(d.contains("yesterday"), "{d}");
        assert_eq!(reason("city/traffic/a\nb", "{}").0, Reason::InvalidSensorId);
    }

    #[test]
    fn optional_fields_may_be_absent_but_not_wrong() {
        let r = registry();
        let base = r#""TIMESTAMP":"2014-08-01T07:50:00","avgSpeed":1,"vehicleCount":2"#;
        assert!(r
            .decode(
                &msg("city/traffic/1", &format!("{{{base},\"extra\":\"NA\"}}")),
                1 << 16
            )
            .is_ok());
        let e = r
            .decode(
                &msg("city/traffic/1", &format!("{{{base},\"extra\":true}}")),
                1 << 16,
            )
            .unwrap_err();
        assert_eq!(e.reason, Reason::WrongType);
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        let r = registry();
        let seeds: [&[u8]; 4] = [
            br#"{"TIMESTAMP":"2014-08-01T07:50:00","avgSpeed":1,"vehicleCount":2}"#,
            b"[{\"n\":1}]",
            b"\xff\xfe\x00",
            b"{\"TIMESTAMP\":1e308,\"avgSpeed\":1e999}",
        ];
        for bytes in mutations(&seeds, 20_000, 4, 7) {
            let m = RawMessage {
                topic: "city/traffic/x".into(),
                payload: bytes,
                received_at: 0,
            };
            let _ = r.decode(&m, 1 << 16);
        }
    }
}

#[cfg(test)]
mod format_tests {
    use super::*;
    use std::path::Path;

    fn registry(text: &str) -> Registry {
        Registry::new(vec![
            SensorType::from_toml(Path::new("t.toml"), text).unwrap()
        ])
    }

    fn raw(topic: &str, payload: &[u8]) -> RawMessage {
        RawMessage {
            topic: topic.into(),
            payload: payload.to_vec(),
            received_at: 1_406_851_200_000,
        }
    }

    const NOISE: &str = "name = \"noise\"\nformat = \"senml\"\n[[fields]]\nname = \"laeq\"\n[[fields]]\nname = \"lmax\"\nrequired = false\n";

    #[test]
    fn a_senml_pack_gives_one_observation_per_record_time() {
        let r = registry(NOISE);
        let pack = br#"[{"bn":"urn:dev:noise:7:","bt":1406851200,"n":"laeq","v":61.5},{"n":"lmax","v":70},{"n":"laeq","t":300,"v":58}]"#;
        let obs = r.decode(&raw("city/noise/7", pack), 4096).unwrap();
        assert_eq!(obs.len(), 2);
        assert_eq!(obs[0].event_time, 1_406_851_200_000);
        assert_eq!(
            obs[0].fields,
            vec![("laeq".into(), 61.5), ("lmax".into(), 70.0)]
        );
        assert_eq!(obs[1].event_time, 1_406_851_500_000);
        assert_eq!(obs[1].fields, vec![("laeq".into(), 58.0)]);
    }

    #[test]
    fn senml_rejections_are_whole_and_explained() {
        let r = registry(NOISE);
        let e = r
            .decode(&raw("city/noise/7", br#"{"n":"laeq","v":1}"#), 4096)
            .unwrap_err();
        assert_eq!(e.reason, Reason::MalformedSenml);
        // The second time group lacks the required laeq: nothing of the pack is accepted.
        let mut out = Vec::new();
        let pack = br#"[{"bt":1406851200,"n":"laeq","v":1},{"n":"lmax","t":60,"v":2}]"#;
        let e = r
            .decode_into(&raw("city/noise/7", pack), 4096, &mut out)
            .unwrap_err();
        assert_eq!(e.reason, Reason::MissingField);
        assert!(out.is_empty());
        let e = r
            .decode(&raw("city/noise/7", br#"[{"n":"laeq","vs":"loud"}]"#), 4096)
            .unwrap_err();
        assert_eq!(e.reason, Reason::WrongType);
    }

    const COUNTER: &str = "name = \"counter\"\nformat = \"csv\"\ncolumns = [\"ts\", \"lane\", \"count\"]\n[time]\nfield = \"/ts\"\nformat = \"rfc3339\"\n[[fields]]\nname = \"count\"\ntype = \"integer\"\n";

    #[test]
    fn location_comes_from_the_payload_or_is_refused_when_wrong() {
        let r = registry("name = \"air\"\nlocation = { lat = \"/la\", lon = \"/lo\" }\n[[fields]]\nname = \"o3\"\n");
        let obs = r
            .decode(
                &raw("city/air/1", br#"{"o3":1,"la":56.2,"lo":"10.1"}"#),
                4096,
            )
            .unwrap();
        assert_eq!(obs[0].location, Some((56.2, 10.1)));
        let obs = r.decode(&raw("city/air/1", br#"{"o3":1}"#), 4096).unwrap();
        assert_eq!(obs[0].location, None);
        let e = r
            .decode(&raw("city/air/1", br#"{"o3":1,"la":560,"lo":10}"#), 4096)
            .unwrap_err();
        assert_eq!(e.reason, Reason::WrongType);
    }

    #[test]
    fn csv_lines_are_decoded_by_column() {
        let r = registry(COUNTER);
        let obs = r
            .decode(
                &raw("city/counter/a", b"2014-08-01T00:05:00Z,left,17"),
                4096,
            )
            .unwrap();
        assert_eq!(obs[0].event_time, 1_406_851_500_000);
        assert_eq!(obs[0].fields, vec![("count".into(), 17.0)]);
        let e = r
            .decode(&raw("city/counter/a", b"2014-08-01T00:05:00Z,left"), 4096)
            .unwrap_err();
        assert_eq!(
            (e.reason, e.detail.as_str()),
            (
                Reason::MalformedCsv,
                "expected 3 columns (ts, lane, count), got 2"
            )
        );
        let e = r
            .decode(
                &raw("city/counter/a", b"2014-08-01T00:05:00Z,left,many"),
                4096,
            )
            .unwrap_err();
        assert_eq!(e.reason, Reason::WrongType);
    }

    #[test]
    fn format_mistakes_in_descriptors_are_reported() {
        let err = |text: &str| {
            SensorType::from_toml(Path::new("t.toml"), text)
                .unwrap_err()
                .to_string()
        };
        assert!(
            err("name = \"x\"\nformat = \"csv\"\n[[fields]]\nname = \"a\"\n")
                .contains("needs columns")
        );
        assert!(
            err("name = \"x\"\nformat = \"xml\"\n[[fields]]\nname = \"a\"\n")
                .contains("\"xml\" is not known")
        );
        let e = err("name = \"x\"\nformat = \"senml\"\n[time]\nfield = \"/t\"\nformat = \"epoch_s\"\n[[fields]]\nname = \"a\"\n");
        assert!(
            e.starts_with("t.toml:4: SenML records carry their own time"),
            "{e}"
        );
        let e =
            err("name = \"x\"\nformat = \"csv\"\ncolumns = [\"a\"]\n[[fields]]\nname = \"b\"\n");
        assert!(
            e.contains("field \"b\" reads /b, which is not one of the columns (a)"),
            "{e}"
        );
    }

    #[test]
    fn arbitrary_bytes_never_panic_in_any_format() {
        let registries = [registry(NOISE), registry(COUNTER)];
        let seeds: [&[u8]; 4] = [
            br#"[{"bn":"x:","bt":1,"n":"laeq","v":1,"t":-3},{"n":"lmax","vb":true}]"#,
            b"2014-08-01T00:05:00Z,left,17",
            b"\"a\",\"b\nc\",1e999",
            b"[{\"bv\":1e308,\"v\":1e308,\"t\":1e300}]",
        ];
        for bytes in super::tests::mutations(&seeds, 20_000, 5, 11) {
            for (r, topic) in registries.iter().zip(["city/noise/1", "city/counter/1"]) {
                let _ = r.decode(&raw(topic, &bytes), 1 << 16);
            }
        }
    }
}

#[cfg(test)]
mod sensor_id_field_tests {
    use super::*;
    use std::path::Path;

    const GATEWAY: &str = "name = \"traffic\"\ntopic = \"gw/{sensor_id}\"\nsensor_id_field = \"/REPORT_ID\"\n[time]\nfield = \"/TIMESTAMP\"\nformat = \"%Y-%m-%dT%H:%M:%S\"\ntimezone = \"Europe/Copenhagen\"\n[[fields]]\nname = \"avgSpeed\"\n[[fields]]\nname = \"vehicleCount\"\ntype = \"integer\"\n";

    fn decode(payload: &str) -> Result<Vec<Observation>, Rejection> {
        let t = SensorType::from_toml(Path::new("t.toml"), GATEWAY).unwrap();
        Registry::new(vec![t]).decode(
            &RawMessage {
                topic: "gw/north-gateway".into(),
                payload: payload.as_bytes().to_vec(),
                received_at: 0,
            },
            1 << 16,
        )
    }

    #[test]
    fn one_gateway_topic_carries_several_sensors() {
        let a = decode(r#"{"TIMESTAMP":"2014-08-01T07:50:00","avgSpeed":50,"vehicleCount":5,"REPORT_ID":158324}"#).unwrap();
        let b = decode(r#"{"TIMESTAMP":"2014-08-01T07:50:00","avgSpeed":50,"vehicleCount":5,"REPORT_ID":"158355"}"#).unwrap();
        assert_eq!(&*a[0].sensor_id, "158324");
        assert_eq!(&*b[0].sensor_id, "158355");
    }

    #[test]
    fn numeric_strings_are_numbers_as_a_csv_row_gives_them() {
        // Every value a string, as `aqyl replay` builds a CSV row.
        let o = decode(r#"{"TIMESTAMP":"2014-08-01T07:50:00","avgSpeed":"50.5","vehicleCount":"5","REPORT_ID":"158324.0"}"#).unwrap();
        assert_eq!(
            o[0].fields,
            vec![("avgSpeed".into(), 50.5), ("vehicleCount".into(), 5.0)]
        );
        assert_eq!(&*o[0].sensor_id, "158324.0");
    }

    #[test]
    fn a_wrong_payload_id_is_rejected_and_a_missing_one_is_the_topics() {
        let base = r#""TIMESTAMP":"2014-08-01T07:50:00","avgSpeed":50,"vehicleCount":5"#;
        // A payload that names no sensor is the topic's.
        assert_eq!(
            &*decode(&format!("{{{base}}}")).unwrap()[0].sensor_id,
            "north-gateway"
        );
        let e = payload_sensor_id(&Pointer::key("REPORT_ID"), &serde_json::json!({})).unwrap_err();
        assert_eq!(e.0, Reason::MissingField);
        assert!(e.1.contains("sensor_id_field /REPORT_ID"), "{}", e.1);
        let e = decode(&format!("{{{base},\"REPORT_ID\":[1]}}")).unwrap_err();
        assert_eq!(e.reason, Reason::WrongType);
        let e = decode(&format!("{{{base},\"REPORT_ID\":1.5}}")).unwrap_err();
        assert_eq!(e.reason, Reason::WrongType);
        let e = decode(&format!("{{{base},\"REPORT_ID\":\"a\\nb\"}}")).unwrap_err();
        assert_eq!(e.reason, Reason::InvalidSensorId);
        let id =
            payload_sensor_id(&Pointer::key("id"), &serde_json::json!({"id": 158324.0})).unwrap();
        assert_eq!(id, "158324");
    }

    #[test]
    fn the_event_time_of_a_row_is_read_as_decoding_reads_it() {
        let t = SensorType::from_toml(Path::new("t.toml"), GATEWAY).unwrap();
        let v = serde_json::json!({"TIMESTAMP": "2014-08-01T07:50:00"});
        assert_eq!(event_time_of(&t, &v), Some(Ok(1_406_872_200_000)));
        assert!(matches!(
            event_time_of(&t, &serde_json::json!({})),
            Some(Err(_))
        ));
    }
}
