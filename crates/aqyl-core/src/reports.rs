//! Citizen reports sent to `POST /api/reports`: the checks a report passes before Aqyl
//! publishes it on `city/reports/<category>/<id>` (where it is decoded like any sensor's
//! reading, by the shipped `citizen_report` descriptor), the per-client rate limit, and the
//! `[reports]` configuration section. Pure: no clock, no network.
//!
//! A report is a JSON object:
//!
//! ```json
//! {"category": "traffic", "position": {"lat": 56.1572, "lon": 10.2107},
//!  "time": "2026-11-30T08:15:00Z", "text": "Queue back to the bridge",
//!  "photo_url": "https://example.org/p/1.jpg"}
//! ```

use crate::ingest::deadletter::Reason;
use serde::Deserialize;
use std::collections::HashMap;

/// `[reports]`: citizen reports over HTTP.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReportsConfig {
    /// Whether `POST /api/reports` is served (it needs `http.addr`).
    #[serde(default = "default_enabled")]
    pub enabled: bool,
    /// The largest body accepted, in bytes; larger ones get 413.
    #[serde(default = "default_max_bytes")]
    pub max_bytes: usize,
    /// Reports one client (one peer address) may send per minute; more get 429 with
    /// `Retry-After`. A client may send this many at once, then one every 60/N seconds.
    #[serde(default = "default_per_minute")]
    pub per_minute: u32,
}

fn default_enabled() -> bool {
    true
}

fn default_max_bytes() -> usize {
    8 * 1024
}

fn default_per_minute() -> u32 {
    10
}

impl Default for ReportsConfig {
    fn default() -> Self {
        ReportsConfig {
            enabled: default_enabled(),
            max_bytes: default_max_bytes(),
            per_minute: default_per_minute(),
        }
    }
}

impl ReportsConfig {
    /// What is wrong with the settings, if anything, as sentences naming the key.
    pub fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        if !(256..=1024 * 1024).contains(&self.max_bytes) {
            out.push(format!(
                "reports.max_bytes is {}; use 256 to 1048576 (a report is a few hundred bytes)",
                self.max_bytes
            ));
        }
        if !(1..=60_000).contains(&self.per_minute) {
            out.push(format!(
                "reports.per_minute is {}; use 1 to 60000",
                self.per_minute
            ));
        }
        out
    }
}

/// Longest `text`, in characters.
pub const MAX_TEXT_CHARS: usize = 2000;
/// Longest `photo_url`, in bytes.
pub const MAX_URL_BYTES: usize = 2048;

/// A report that passed every check, ready to publish.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Report {
    /// Its id, given by Aqyl: the last level of its topic.
    pub id: String,
    /// What it is about (`traffic`), a topic level.
    pub category: String,
    /// Where, in WGS 84 degrees.
    pub position: Position,
    /// When the citizen saw it, RFC 3339 as sent.
    pub time: String,
    /// What they say.
    pub text: String,
    /// A photo, http(s).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub photo_url: Option<String>,
}

/// A position in degrees.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Position {
    /// Latitude, -90 to 90.
    pub lat: f64,
    /// Longitude, -180 to 180.
    pub lon: f64,
}

impl Report {
    /// Its topic: `<prefix>/<category>/<id>` (`city/reports/traffic/r1f…`).
    pub fn topic(&self, prefix: &str) -> String {
        format!("{prefix}/{}/{}", self.category, self.id)
    }

    /// The payload published on its topic.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// Why a report was refused: the dead-letter reason, the HTTP status and a sentence naming
/// the field.
#[derive(Debug, Clone, PartialEq)]
pub struct Rejection {
    /// The dead-letter reason (and metric label).
    pub reason: Reason,
    /// 400, 413 or 429.
    pub status: u16,
    /// The field at fault, when one is.
    pub field: Option<&'static str>,
    /// What is wrong and what to send instead.
    pub message: String,
}

fn bad(reason: Reason, field: &'static str, message: String) -> Rejection {
    Rejection {
        reason,
        status: 400,
        field: Some(field),
        message: format!("{field}: {message}"),
    }
}

/// The body as sent: every key optional here so that a missing one is named.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Body {
    category: Option<serde_json::Value>,
    position: Option<serde_json::Value>,
    time: Option<serde_json::Value>,
    text: Option<serde_json::Value>,
    photo_url: Option<serde_json::Value>,
}

fn string(field: &'static str, v: Option<serde_json::Value>) -> Result<String, Rejection> {
    match v {
        None | Some(serde_json::Value::Null) => Err(bad(
            Reason::MissingField,
            field,
            "is missing; it is required".into(),
        )),
        Some(serde_json::Value::String(s)) => Ok(s),
        Some(other) => Err(bad(
            Reason::WrongType,
            field,
            format!("expected a string, got {other}"),
        )),
    }
}

/// A category is a topic level: 1 to 64 lower-case letters, digits, `-` or `_`.
fn category(v: Option<serde_json::Value>) -> Result<String, Rejection> {
    let c = string("category", v)?;
    let ok = !c.is_empty()
        && c.len() <= 64
        && c.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
    if ok {
        Ok(c)
    } else {
        Err(bad(
            Reason::InvalidValue,
            "category",
            format!("{c:?} is not a category; use 1 to 64 lower-case letters, digits, '-' or '_' (e.g. \"traffic\")"),
        ))
    }
}

fn position(v: Option<serde_json::Value>) -> Result<Position, Rejection> {
    let v = v.filter(|v| !v.is_null()).ok_or_else(|| {
        bad(
            Reason::MissingField,
            "position",
            "is missing; send {\"lat\": <degrees>, \"lon\": <degrees>}".into(),
        )
    })?;
    // serde would also take `[a, b]` for the struct: refuse it, `[lon, lat]` is the GeoJSON
    // order and too easily sent backwards.
    if !v.is_object() {
        return Err(bad(
            Reason::WrongType,
            "position",
            format!("expected an object, got {v}; send {{\"lat\": <degrees>, \"lon\": <degrees>}}"),
        ));
    }
    let p: Position = serde_json::from_value(v).map_err(|e| {
        bad(
            Reason::WrongType,
            "position",
            format!("{e}; send {{\"lat\": <degrees>, \"lon\": <degrees>}} (WGS 84 numbers)"),
        )
    })?;
    if !(-90.0..=90.0).contains(&p.lat) {
        return Err(bad(
            Reason::InvalidValue,
            "position.lat",
            format!("{} is not a latitude; use -90 to 90", p.lat),
        ));
    }
    if !(-180.0..=180.0).contains(&p.lon) {
        return Err(bad(
            Reason::InvalidValue,
            "position.lon",
            format!("{} is not a longitude; use -180 to 180", p.lon),
        ));
    }
    Ok(p)
}

fn time(v: Option<serde_json::Value>) -> Result<String, Rejection> {
    let t = string("time", v)?;
    match chrono::DateTime::parse_from_rfc3339(&t) {
        Ok(_) => Ok(t),
        Err(e) => Err(bad(
            Reason::InvalidTimestamp,
            "time",
            format!("{t:?} is not an RFC 3339 time ({e}); write e.g. \"2026-11-30T08:15:00Z\""),
        )),
    }
}

fn text(v: Option<serde_json::Value>) -> Result<String, Rejection> {
    let t = string("text", v)?;
    let chars = t.chars().count();
    if t.trim().is_empty() || chars > MAX_TEXT_CHARS {
        return Err(bad(
            Reason::InvalidValue,
            "text",
            format!("has {chars} characters; say what you see in 1 to {MAX_TEXT_CHARS}"),
        ));
    }
    Ok(t)
}

fn photo_url(v: Option<serde_json::Value>) -> Result<Option<String>, Rejection> {
    if v.as_ref().is_none_or(|v| v.is_null()) {
        return Ok(None);
    }
    let u = string("photo_url", v)?;
    let scheme_ok = ["http://", "https://"]
        .iter()
        .any(|s| u.get(..s.len()).is_some_and(|p| p.eq_ignore_ascii_case(s)));
    let host_ok = u
        .split("://")
        .nth(1)
        .is_some_and(|rest| !rest.is_empty() && !rest.starts_with('/') && !rest.starts_with('?'));
    if !scheme_ok || !host_ok || u.len() > MAX_URL_BYTES || u.chars().any(char::is_whitespace) {
        return Err(bad(
            Reason::InvalidValue,
            "photo_url",
            format!("must be an http:// or https:// URL with a host, without spaces, at most {MAX_URL_BYTES} bytes"),
        ));
    }
    Ok(Some(u))
}

/// The refusal of a body of `size` bytes, larger than `max_bytes`.
pub fn oversized(size: usize, max_bytes: usize) -> Rejection {
    Rejection {
        reason: Reason::Oversized,
        status: 413,
        field: None,
        message: format!(
            "the report has {size} bytes or more; at most {max_bytes} are accepted (reports.max_bytes)"
        ),
    }
}

/// Checks a report's body (at most `max_bytes`) and gives it `id`.
pub fn validate(body: &[u8], max_bytes: usize, id: String) -> Result<Report, Rejection> {
    if body.len() > max_bytes {
        return Err(oversized(body.len(), max_bytes));
    }
    let value: serde_json::Value = serde_json::from_slice(body).map_err(|e| Rejection {
        reason: Reason::MalformedJson,
        status: 400,
        field: None,
        message: format!("the body is not JSON: {e}"),
    })?;
    if !value.is_object() {
        return Err(Rejection {
            reason: Reason::NotAnObject,
            status: 400,
            field: None,
            message: "the body must be a JSON object with category, position, time, text and optionally photo_url".into(),
        });
    }
    let b: Body = serde_json::from_value(value).map_err(|e| Rejection {
        reason: Reason::InvalidValue,
        status: 400,
        field: None,
        message: format!("{e}"),
    })?;
    Ok(Report {
        id,
        category: category(b.category)?,
        position: position(b.position)?,
        time: time(b.time)?,
        text: text(b.text)?,
        photo_url: photo_url(b.photo_url)?,
    })
}

/// Refuses a report whose `time` is more than `max_future_ms` ahead of `now_ms` (both Unix
/// ms; `max_future_ms` 0: no check), as ingest would dead-letter it as `future` after the
/// client had been told it was accepted.
pub fn check_time(report: &Report, now_ms: i64, max_future_ms: i64) -> Result<(), Rejection> {
    let Ok(t) = chrono::DateTime::parse_from_rfc3339(&report.time) else {
        return Ok(()); // validated already
    };
    let ahead = t.timestamp_millis() - now_ms;
    if max_future_ms > 0 && ahead > max_future_ms {
        return Err(bad(
            Reason::Future,
            "time",
            format!(
                "{} is {} s ahead of this server's clock (at most {} s are accepted, ingest.max_future); check the sender's clock",
                report.time,
                ahead / 1000,
                max_future_ms / 1000
            ),
        ));
    }
    Ok(())
}

/// A new report id: `r` and 16 hex digits from `random` (a topic level, unguessable enough
/// that ids do not collide).
pub fn new_id(random: u64) -> String {
    format!("r{random:016x}")
}

/// Clients remembered by the rate limiter at most; beyond, idle ones are forgotten first.
pub const MAX_CLIENTS: usize = 10_000;

/// A token bucket per client: `per_minute` tokens, refilled evenly over a minute. Times are
/// milliseconds of any monotonic clock.
#[derive(Debug)]
pub struct RateLimiter {
    per_minute: u32,
    /// Client → (tokens, in thousandths, at `since`; `since`).
    buckets: HashMap<String, (u64, u64)>,
}

impl RateLimiter {
    /// A limiter of `per_minute` per client (at least 1).
    pub fn new(per_minute: u32) -> Self {
        RateLimiter {
            per_minute: per_minute.max(1),
            buckets: HashMap::new(),
        }
    }

    fn full(&self) -> u64 {
        u64::from(self.per_minute) * 1000
    }

    /// Tokens (thousandths) a bucket holds at `now`.
    fn level(&self, (tokens, since): (u64, u64), now: u64) -> u64 {
        // per_minute tokens per 60,000 ms = per_minute thousandths per 60 ms.
        let refill = now.saturating_sub(since) * u64::from(self.per_minute) / 60;
        (tokens + refill).min(self.full())
    }

    /// Takes one token of `client` at `now`: `Ok`, or `Err(seconds)` to wait before the next.
    pub fn check(&mut self, client: &str, now: u64) -> Result<(), u64> {
        if self.buckets.len() >= MAX_CLIENTS && !self.buckets.contains_key(client) {
            let full = self.full();
            let buckets = std::mem::take(&mut self.buckets);
            self.buckets = buckets
                .into_iter()
                .filter(|(_, b)| self.level(*b, now) < full)
                .collect();
            if self.buckets.len() >= MAX_CLIENTS {
                return Err(60 / u64::from(self.per_minute).max(1) + 1);
            }
        }
        let start = (self.full(), now);
        let level = self.level(*self.buckets.get(client).unwrap_or(&start), now);
        if level >= 1000 {
            self.buckets.insert(client.to_string(), (level - 1000, now));
            Ok(())
        } else {
            self.buckets.insert(client.to_string(), (level, now));
            // Milliseconds until the bucket holds a whole token again, rounded up to seconds.
            let missing_ms = (1000 - level) * 60 / u64::from(self.per_minute);
            Err(missing_ms.div_ceil(1000).max(1))
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const GOOD: &str = r#"{"category":"traffic","position":{"lat":56.15,"lon":10.21},"time":"2026-11-30T08:15:00Z","text":"Queue back to the bridge","photo_url":"https://example.org/p/1.jpg"}"#;

    fn with(key: &str, value: &str) -> String {
        let mut v: serde_json::Value = serde_json::from_str(GOOD).unwrap();
        match serde_json::from_str::<serde_json::Value>(value) {
            Ok(x) => v[key] = x,
            Err(_) => {
                v.as_object_mut().unwrap().remove(key);
            }
        }
        v.to_string()
    }

    fn rejected(body: &str) -> Rejection {
        validate(body.as_bytes(), 8192, "r1".into()).unwrap_err()
    }

    #[test]
    fn a_good_report_is_published_on_its_category_topic() {
        let r = validate(GOOD.as_bytes(), 8192, new_id(0xabc)).unwrap();
        assert_eq!(
            r.topic("city/reports"),
            "city/reports/traffic/r0000000000000abc"
        );
        assert_eq!(
            r.position,
            Position {
                lat: 56.15,
                lon: 10.21
            }
        );
        let json: serde_json::Value = serde_json::from_str(&r.to_json()).unwrap();
        assert_eq!(json["position"]["lat"], 56.15);
        assert_eq!(json["id"], "r0000000000000abc");
        let no_photo = validate(with("photo_url", "-").as_bytes(), 8192, "r".into()).unwrap();
        assert!(!no_photo.to_json().contains("photo_url"));
    }

    #[test]
    fn each_bad_field_is_named_with_its_reason() {
        let cases = [
            (with("category", "-"), Reason::MissingField, "category"),
            (
                with("category", "\"Road/works\""),
                Reason::InvalidValue,
                "category",
            ),
            (with("category", "7"), Reason::WrongType, "category"),
            (with("position", "-"), Reason::MissingField, "position"),
            (
                with("position", "[10.2, 56.1]"),
                Reason::WrongType,
                "position",
            ),
            (
                with("position", r#"{"lat":"56"}"#),
                Reason::WrongType,
                "position",
            ),
            (
                with("position", r#"{"lat":95,"lon":10}"#),
                Reason::InvalidValue,
                "position.lat",
            ),
            (
                with("position", r#"{"lat":56,"lon":-181}"#),
                Reason::InvalidValue,
                "position.lon",
            ),
            (
                with("time", "\"yesterday\""),
                Reason::InvalidTimestamp,
                "time",
            ),
            (with("text", "\"  \""), Reason::InvalidValue, "text"),
            (
                with("photo_url", "\"javascript:alert(1)\""),
                Reason::InvalidValue,
                "photo_url",
            ),
            (
                with("photo_url", "\"ftp://x/y.jpg\""),
                Reason::InvalidValue,
                "photo_url",
            ),
            (
                with("photo_url", "\"https:///nohost\""),
                Reason::InvalidValue,
                "photo_url",
            ),
        ];
        for (body, reason, field) in cases {
            let r = rejected(&body);
            assert_eq!(
                (r.reason, r.status, r.field),
                (reason, 400, Some(field)),
                "{body}"
            );
            assert!(r.message.starts_with(field), "{}", r.message);
        }
        let unknown = rejected(&with("colour", "\"red\""));
        assert!(unknown.message.contains("colour"), "{}", unknown.message);
        assert_eq!(rejected("{not json").reason, Reason::MalformedJson);
        assert_eq!(rejected("[1]").reason, Reason::NotAnObject);
    }

    #[test]
    fn a_report_from_a_clock_ahead_is_refused_naming_the_time() {
        let r = validate(GOOD.as_bytes(), 8192, "r".into()).unwrap();
        let at = chrono::DateTime::parse_from_rfc3339("2026-11-30T08:15:00Z")
            .unwrap()
            .timestamp_millis();
        assert!(check_time(&r, at - 299_000, 300_000).is_ok());
        let e = check_time(&r, at - 301_000, 300_000).unwrap_err();
        assert_eq!(
            (e.reason, e.status, e.field),
            (Reason::Future, 400, Some("time"))
        );
        assert!(e.message.contains("301 s ahead"), "{}", e.message);
        assert!(check_time(&r, 0, 0).is_ok(), "0: no check");
    }

    #[test]
    fn an_oversized_body_is_413_before_it_is_parsed() {
        let r = validate(&[b' '; 9000], 8192, "r".into()).unwrap_err();
        assert_eq!((r.reason, r.status), (Reason::Oversized, 413));
        assert!(r.message.contains("8192"), "{}", r.message);
    }

    #[test]
    fn the_rate_limit_allows_a_burst_then_one_per_share_of_a_minute() {
        let mut l = RateLimiter::new(6); // a token every 10 s
        for _ in 0..6 {
            assert_eq!(l.check("a", 1_000), Ok(()));
        }
        assert_eq!(l.check("a", 1_000), Err(10));
        assert_eq!(
            l.check("b", 1_000),
            Ok(()),
            "another client has its own bucket"
        );
        assert_eq!(l.check("a", 6_000), Err(5));
        assert_eq!(l.check("a", 11_000), Ok(()));
        assert_eq!(l.check("a", 11_000), Err(10));
        // A minute idle refills the bucket, no more.
        for _ in 0..6 {
            assert_eq!(l.check("a", 200_000), Ok(()));
        }
        assert!(l.check("a", 200_000).is_err());
    }

    #[test]
    fn idle_clients_are_forgotten_when_the_table_is_full() {
        let mut l = RateLimiter::new(60);
        for i in 0..MAX_CLIENTS {
            l.check(&i.to_string(), 0).unwrap();
        }
        // A minute later every bucket is full again: they make room.
        assert_eq!(l.check("new", 60_000), Ok(()));
        assert!(l.buckets.len() <= 2, "{}", l.buckets.len());
    }

    #[test]
    fn settings_out_of_range_are_named() {
        let c = ReportsConfig {
            per_minute: 0,
            max_bytes: 10,
            ..ReportsConfig::default()
        };
        let p = c.problems().join("\n");
        assert!(
            p.contains("reports.max_bytes") && p.contains("reports.per_minute"),
            "{p}"
        );
        assert!(ReportsConfig::default().problems().is_empty());
    }
}
