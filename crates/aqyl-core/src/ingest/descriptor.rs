//! Sensor type descriptors: how a kind of sensor publishes (topic, payload layout, event-time
//! field) and which numeric fields Aqyl aggregates. One TOML file per type under
//! `config/sensors/`; adding a sensor type takes a file, never code.

use crate::error::{ConfigError, ConfigErrors};
use crate::ingest::sensor_registry::SensorRegistry;
use crate::ingest::units::Conversion;
use crate::windows::sax::SaxParams;
use crate::windows::window::WindowSpec;
use chrono_tz::Tz;
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use toml::Spanned;

/// Longest accepted sensor id, in bytes.
pub const MAX_SENSOR_ID_BYTES: usize = 256;

/// A validated sensor type, ready to decode payloads.
#[derive(Debug, Clone)]
pub struct SensorType {
    /// Name used in topics, tags and dead-letter topics (`traffic`).
    pub name: Arc<str>,
    /// Where it publishes.
    pub topic: TopicPattern,
    /// How payloads are encoded.
    pub format: PayloadFormat,
    /// How event time is read; `None` means receive time (flagged on each observation).
    pub time: Option<TimeRule>,
    /// Numeric fields to extract.
    pub fields: Vec<Field>,
    /// How often each sensor of this type is expected to report.
    pub expected_interval: Duration,
    /// Identical readings in a row that count as stuck, for this type (overrides
    /// `quality.flat_line`; a garage's count may rightly stand still all night).
    pub flat_line: Option<usize>,
    /// The field that says whether there is anything to measure (a road's vehicle count):
    /// while it reads 0, repeated values are the quiet scene's, not a stuck sensor's, and the
    /// flat-line detector does not call them stuck.
    pub activity_field: Option<Arc<str>>,
    /// Windows to compute; empty means the pipeline's default window for every field.
    pub windows: Vec<WindowSpec>,
    /// Where a payload names its sensor's area, when the topic has no `{area}`.
    pub area_field: Option<Pointer>,
    /// SensorSAX (adaptive windows), when configured.
    pub sensor_sax: Option<SensorSaxSpec>,
    /// JSON Pointers to latitude and longitude in the payload, for sensors that move.
    pub location: Option<(Pointer, Pointer)>,
    /// The sensor registry file named by `registry`, relative to the descriptor's directory.
    pub registry_file: Option<PathBuf>,
    /// Its contents, once [`load_dir`] has read it.
    pub registry: Option<Arc<SensorRegistry>>,
    /// For JSON payloads whose every pointer is one level deep: the top-level keys decoding
    /// reads, so the rest of a payload can be skipped unparsed.
    pub json_keys: Option<Vec<String>>,
    /// The file this type came from, for messages.
    pub source: PathBuf,
    /// Where a payload names its sensor (`sensor_id_field`): a gateway publishing several
    /// sensors on one topic, or a replayed file holding several sensors. When set and present,
    /// the payload's id wins over the topic's `{sensor_id}`; a payload without it is the
    /// topic's sensor.
    pub sensor_id_field: Option<Pointer>,
    /// The file-name pattern of replayed files whose name carries the sensor id
    /// (`replay_files`, e.g. `AarhusTrafficData{sensor_id}.csv`).
    pub replay_files: Option<FilePattern>,
}

/// One numeric field of a payload.
#[derive(Debug, Clone, PartialEq)]
pub struct Field {
    /// Name in the store (`field` tag) and in rules.
    pub name: Arc<str>,
    /// JSON Pointer (RFC 6901) into the payload, e.g. `/avgSpeed`.
    pub pointer: Pointer,
    /// Value type.
    pub kind: FieldType,
    /// Unit of the decoded value (the target unit when converting).
    pub unit: Option<String>,
    /// Conversion from the payload's unit to `unit`, when `target_unit` is set.
    pub conversion: Option<Conversion>,
    /// A missing required field rejects the payload; a missing optional field is skipped.
    pub required: bool,
    /// Smallest valid value (in `unit`), a number or another field of the same reading.
    pub min: Option<Bound>,
    /// Largest valid value, e.g. `"@totalspaces"`.
    pub max: Option<Bound>,
}

/// A range bound: a constant, or the value of another field of the same observation.
#[derive(Debug, Clone, PartialEq)]
pub enum Bound {
    /// A constant.
    Value(f64),
    /// Another field (`"@totalspaces"`).
    Field(Arc<str>),
}

impl Bound {
    /// The bound's value for an observation's fields; `None` when the named field is absent.
    pub fn resolve(&self, fields: &[(Arc<str>, f64)]) -> Option<f64> {
        match self {
            Bound::Value(v) => Some(*v),
            Bound::Field(name) => fields.iter().find(|(n, _)| n == name).map(|f| f.1),
        }
    }
}

impl SensorType {
    /// Fills [`SensorType::json_keys`] when every pointer of a JSON type is one level deep.
    fn with_json_keys(mut self) -> Self {
        if self.format != PayloadFormat::Json {
            return self;
        }
        let mut pointers: Vec<&Pointer> = self.fields.iter().map(|f| &f.pointer).collect();
        pointers.extend(self.time.as_ref().map(|t| &t.pointer));
        pointers.extend(self.area_field.as_ref());
        pointers.extend(self.sensor_id_field.as_ref());
        if let Some((lat, lon)) = &self.location {
            pointers.extend([lat, lon]);
        }
        self.json_keys = pointers
            .iter()
            .map(|p| p.top_level_key().map(str::to_string))
            .collect();
        self
    }

    /// How many of `fields` lie outside their declared range (the hot path: no allocation).
    pub fn out_of_range_count(&self, fields: &[(Arc<str>, f64)]) -> usize {
        fields
            .iter()
            .filter(|(name, value)| {
                let Some(f) = self.fields.iter().find(|f| &f.name == name) else {
                    return false;
                };
                let below = f
                    .min
                    .as_ref()
                    .and_then(|b| b.resolve(fields))
                    .is_some_and(|min| *value < min);
                let above = f
                    .max
                    .as_ref()
                    .and_then(|b| b.resolve(fields))
                    .is_some_and(|max| *value > max);
                below || above
            })
            .count()
    }

    /// The fields of `fields` that lie outside their declared range, with a sentence each.
    /// (Decoding accepts them; quality scoring counts them as incorrect.)
    pub fn out_of_range(&self, fields: &[(Arc<str>, f64)]) -> Vec<String> {
        let mut out = Vec::new();
        for (name, value) in fields {
            let Some(f) = self.fields.iter().find(|f| &f.name == name) else {
                continue;
            };
            if let Some(min) = f.min.as_ref().and_then(|b| b.resolve(fields)) {
                if *value < min {
                    out.push(format!("{name} = {value} is below its minimum {min}"));
                }
            }
            if let Some(max) = f.max.as_ref().and_then(|b| b.resolve(fields)) {
                if *value > max {
                    out.push(format!("{name} = {value} is above its maximum {max}"));
                }
            }
        }
        out
    }
}

/// Payload encodings. Every format is read into JSON objects first, so fields are always
/// addressed by JSON Pointer: a CSV line becomes `{column: value}`, a SenML pack one object per
/// distinct record time, `{name: value, "@time": seconds}`.
#[derive(Debug, Clone, PartialEq)]
pub enum PayloadFormat {
    /// One JSON object per message.
    Json,
    /// SenML (RFC 8428) JSON packs; base name/time/unit/value are resolved.
    Senml,
    /// One CSV line per message, columns as declared.
    Csv {
        /// Column names in order.
        columns: Vec<String>,
        /// Field delimiter (`,` by default).
        delimiter: u8,
    },
}

/// Key under which a SenML record group's resolved time (Unix seconds) is stored.
pub const SENML_TIME_KEY: &str = "@time";

/// SensorSAX settings of a sensor type (`[sensor_sax]`).
#[derive(Debug, Clone, PartialEq)]
pub struct SensorSaxSpec {
    /// Alphabet and word length.
    pub params: SaxParams,
    /// A window is not closed for volatility before this much event time.
    pub min_window_ms: u64,
    /// A window always closes at this much event time.
    pub max_window_ms: u64,
    /// Population standard deviation (in the field's unit) above which a window closes early.
    pub sensitivity: f64,
    /// Fields it applies to; `None` means all.
    pub fields: Option<Vec<Arc<str>>>,
    /// A sensor silent (in event time) this long has its open window flushed and its state
    /// released, so memory stays bounded when sensors come and go.
    pub silence_horizon_ms: u64,
    /// The `window` tag of its output (`sensorsax`).
    pub label: Arc<str>,
}

impl SensorSaxSpec {
    /// Whether it applies to `field`.
    pub fn applies_to(&self, field: &str) -> bool {
        self.fields
            .as_ref()
            .is_none_or(|fs| fs.iter().any(|f| &**f == field))
    }
}

/// A JSON Pointer (RFC 6901) split and unescaped once at load time, so looking a value up
/// allocates nothing (`serde_json::Value::pointer` unescapes every token on every call).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pointer {
    text: String,
    tokens: Vec<String>,
}

impl Pointer {
    /// Parses `""` (the whole document) or `/a/b~1c`; `None` unless it starts with `/`.
    pub fn parse(text: &str) -> Option<Self> {
        if text.is_empty() {
            return Some(Self {
                text: String::new(),
                tokens: Vec::new(),
            });
        }
        let rest = text.strip_prefix('/')?;
        let tokens = rest
            .split('/')
            .map(|t| t.replace("~1", "/").replace("~0", "~"))
            .collect();
        Some(Self {
            text: text.to_string(),
            tokens,
        })
    }

    /// The top-level key, when the pointer is exactly one level deep.
    pub fn top_level_key(&self) -> Option<&str> {
        match self.tokens.as_slice() {
            [key] => Some(key),
            _ => None,
        }
    }

    /// A pointer to one key of the top-level object (`/<key>`).
    pub fn key(key: &str) -> Self {
        Self {
            text: format!("/{}", key.replace('~', "~0").replace('/', "~1")),
            tokens: vec![key.to_string()],
        }
    }

    /// The value it points at.
    pub fn lookup<'a>(&self, mut v: &'a serde_json::Value) -> Option<&'a serde_json::Value> {
        for token in &self.tokens {
            v = match v {
                serde_json::Value::Object(map) => map.get(token.as_str())?,
                serde_json::Value::Array(items) => items.get(token.parse::<usize>().ok()?)?,
                _ => return None,
            };
        }
        Some(v)
    }

    /// The pointer as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }
}

impl std::fmt::Display for Pointer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

/// Accepted value types of a field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FieldType {
    /// Any finite number. A JSON string holding a number (`"50"`) is accepted too, because
    /// CSV-to-JSON bridges often quote every column.
    Number,
    /// A whole number (same string rule as `number`).
    Integer,
}

/// How the event time is read from a payload.
#[derive(Debug, Clone, PartialEq)]
pub struct TimeRule {
    /// JSON Pointer to the time value.
    pub pointer: Pointer,
    /// Its encoding.
    pub format: TimeFormat,
}

/// Encodings of an event-time value.
#[derive(Debug, Clone, PartialEq)]
pub enum TimeFormat {
    /// RFC 3339 with an offset (`2014-08-01T07:50:00Z`).
    Rfc3339,
    /// Seconds since the Unix epoch (number, may be fractional).
    EpochSeconds,
    /// Milliseconds since the Unix epoch.
    EpochMillis,
    /// A chrono `strftime` pattern without zone, read in the given time zone. Ambiguous local
    /// times (autumn DST overlap) take the earlier instant; local times that do not exist
    /// (spring gap) are read as if the clock had not jumped yet, i.e. one hour later in UTC.
    Local {
        /// chrono format pattern, e.g. `%Y-%m-%dT%H:%M:%S`.
        pattern: String,
        /// The pattern compiled once, so decoding does not re-parse it for every payload.
        items: Vec<chrono::format::Item<'static>>,
        /// IANA zone, e.g. `Europe/Copenhagen`.
        zone: Tz,
    },
}

/// A topic pattern such as `city/traffic/{sensor_id}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicPattern {
    segments: Vec<Segment>,
    text: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(String),
    SensorId,
    Area,
}

/// What a topic match captured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Captures<'a> {
    /// The `{sensor_id}` segment.
    pub sensor_id: &'a str,
    /// The `{area}` segment, when the pattern has one.
    pub area: Option<&'a str>,
}

impl TopicPattern {
    /// Parses a pattern; it must contain `{sensor_id}` exactly once.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut segments = Vec::new();
        let (mut ids, mut areas) = (0, 0);
        if text.is_empty() {
            return Err(
                "the topic pattern is empty; write it like \"city/traffic/{sensor_id}\"".into(),
            );
        }
        for seg in text.split('/') {
            match seg {
                "{sensor_id}" => {
                    ids += 1;
                    segments.push(Segment::SensorId)
                }
                "{area}" => {
                    areas += 1;
                    segments.push(Segment::Area)
                }
                s if s.contains(['+', '#', '{', '}']) => {
                    return Err(format!(
                        "topic segment {s:?} is not allowed: use plain text, {{sensor_id}} or {{area}} as whole segments"
                    ))
                }
                s => segments.push(Segment::Literal(s.to_string())),
            }
        }
        if ids != 1 {
            return Err(format!(
                "the topic pattern {text:?} must contain {{sensor_id}} exactly once as a whole segment"
            ));
        }
        if areas > 1 {
            return Err(format!(
                "the topic pattern {text:?} contains {{area}} more than once"
            ));
        }
        Ok(Self {
            segments,
            text: text.to_string(),
        })
    }

    /// The MQTT subscription filter (`city/traffic/+`).
    pub fn filter(&self) -> String {
        self.segments
            .iter()
            .map(|s| match s {
                Segment::Literal(l) => l.as_str(),
                Segment::SensorId | Segment::Area => "+",
            })
            .collect::<Vec<_>>()
            .join("/")
    }

    /// Matches a concrete topic and returns its captures.
    pub fn matches<'a>(&self, topic: &'a str) -> Option<Captures<'a>> {
        let mut sensor_id = None;
        let mut area = None;
        let mut parts = topic.split('/');
        for seg in &self.segments {
            let part = parts.next()?;
            match seg {
                Segment::Literal(l) if l == part => {}
                Segment::Literal(_) => return None,
                Segment::SensorId => sensor_id = Some(part),
                Segment::Area => area = Some(part),
            }
        }
        if parts.next().is_some() {
            return None;
        }
        Some(Captures {
            sensor_id: sensor_id?,
            area,
        })
    }

    /// Whether some topic matches both patterns (then a message could not be attributed to
    /// one sensor type): same number of levels, and at every level equal literals or a capture.
    pub fn overlaps(&self, other: &TopicPattern) -> bool {
        self.segments.len() == other.segments.len()
            && self
                .segments
                .iter()
                .zip(&other.segments)
                .all(|(a, b)| match (a, b) {
                    (Segment::Literal(x), Segment::Literal(y)) => x == y,
                    _ => true,
                })
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Whether the pattern has an `{area}` capture (which a file row cannot fill).
    pub fn has_area(&self) -> bool {
        self.segments.contains(&Segment::Area)
    }

    /// The concrete topic of `sensor_id` (for replays); `None` when the pattern also has an
    /// `{area}` capture, which a file row cannot fill.
    pub fn topic_of(&self, sensor_id: &str) -> Option<String> {
        let parts: Option<Vec<&str>> = self
            .segments
            .iter()
            .map(|s| match s {
                Segment::Literal(l) => Some(l.as_str()),
                Segment::SensorId => Some(sensor_id),
                Segment::Area => None,
            })
            .collect();
        parts.map(|p| p.join("/"))
    }
}

/// Checks a sensor id taken from a topic or payload: it is untrusted input. Control characters
/// (newlines above all) are refused because no store escaping can carry them safely; every
/// other character is kept and escaped where it is written.
pub fn validate_sensor_id(id: &str) -> Result<(), String> {
    if id.is_empty() {
        return Err("the sensor id is empty".into());
    }
    if id.len() > MAX_SENSOR_ID_BYTES {
        return Err(format!(
            "the sensor id is {} bytes long; the limit is {MAX_SENSOR_ID_BYTES}",
            id.len()
        ));
    }
    if let Some(c) = id.chars().find(|c| c.is_control()) {
        return Err(format!(
            "the sensor id contains the control character {c:?}"
        ));
    }
    Ok(())
}

// ---- file format -------------------------------------------------------------------------

/// A descriptor file as written (`config/sensors/traffic.toml`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DescriptorFile {
    /// Sensor type name.
    name: Spanned<String>,
    /// Topic pattern with `{sensor_id}`; default `city/<name>/{sensor_id}`.
    topic: Option<Spanned<String>>,
    /// Payload format: `json` (default), `senml` or `csv`.
    #[serde(default = "default_format")]
    format: Spanned<String>,
    /// CSV column names, in order (format `csv`).
    columns: Option<Spanned<Vec<String>>>,
    /// CSV delimiter, one ASCII character (format `csv`; default `,`).
    delimiter: Option<Spanned<String>>,
    /// Expected update interval per sensor.
    #[serde(
        default = "default_interval",
        deserialize_with = "crate::duration::deserialize"
    )]
    expected_interval: Duration,
    /// Identical readings in a row that count as a stuck sensor (quality scoring).
    flat_line: Option<Spanned<usize>>,
    /// The field whose 0 means nothing to measure (quality scoring's flat-line detector).
    activity_field: Option<Spanned<String>>,
    /// Event-time field.
    time: Option<TimeFile>,
    /// Numeric fields.
    #[serde(default)]
    fields: Vec<FieldFile>,
    /// Windows (default: the pipeline's window).
    #[serde(default)]
    windows: Vec<WindowFile>,
    /// JSON Pointer to the area name in the payload.
    area_field: Option<Spanned<String>>,
    /// SensorSAX.
    sensor_sax: Option<Spanned<SensorSaxFile>>,
    /// Sensor registry CSV (`sensor_id,lat,lon,area`), relative to this file.
    registry: Option<String>,
    /// Location fields in the payload.
    location: Option<Spanned<LocationFile>>,
    /// JSON Pointer to the sensor id in the payload (wins over the topic's `{sensor_id}`).
    sensor_id_field: Option<Spanned<String>>,
    /// File-name pattern with `{sensor_id}`, for `aqyl replay`.
    replay_files: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LocationFile {
    /// JSON Pointer to the latitude.
    lat: String,
    /// JSON Pointer to the longitude.
    lon: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SensorSaxFile {
    /// Minimum window.
    #[serde(deserialize_with = "crate::duration::deserialize")]
    min_window: Duration,
    /// Maximum window.
    #[serde(deserialize_with = "crate::duration::deserialize")]
    max_window: Duration,
    /// Standard deviation that closes a window early.
    sensitivity: f64,
    /// Alphabet size.
    #[serde(default = "default_alphabet")]
    alphabet: usize,
    /// Word length.
    #[serde(default = "default_word_length")]
    word_length: usize,
    /// Fields (default: all).
    fields: Option<Vec<String>>,
    /// State release after this much silence (default: one day).
    #[serde(
        default = "default_silence",
        deserialize_with = "crate::duration::deserialize"
    )]
    silence_horizon: Duration,
}

fn default_silence() -> Duration {
    Duration::from_secs(86_400)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct WindowFile {
    /// Window size, e.g. `"5m"`.
    size: Spanned<String>,
    /// Slide for sliding windows, e.g. `"15m"`; absent for tumbling windows.
    slide: Option<Spanned<String>>,
    /// SAX word per window.
    sax: Option<Spanned<SaxFile>>,
    /// Fields it applies to (default: all).
    fields: Option<Spanned<Vec<String>>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SaxFile {
    /// Alphabet size (CityPulse: 5).
    #[serde(default = "default_alphabet")]
    alphabet: usize,
    /// Word length (CityPulse: 3).
    #[serde(default = "default_word_length")]
    word_length: usize,
}

fn default_alphabet() -> usize {
    5
}

fn default_word_length() -> usize {
    3
}

fn default_format() -> Spanned<String> {
    Spanned::new(0..0, "json".to_string())
}

fn default_interval() -> Duration {
    Duration::from_secs(300)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TimeFile {
    /// JSON Pointer to the time value.
    field: Spanned<String>,
    /// `rfc3339`, `epoch_s`, `epoch_ms` or a chrono pattern such as `%Y-%m-%dT%H:%M:%S`.
    format: Spanned<String>,
    /// IANA time zone for zone-less patterns.
    timezone: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FieldFile {
    /// Field name.
    name: Spanned<String>,
    /// JSON Pointer; default `/<name>`.
    path: Option<String>,
    /// `number` (default) or `integer`.
    #[serde(default = "default_type", rename = "type")]
    kind: FieldType,
    /// Unit of the payload's value (see `aqyl_core::ingest::units`).
    unit: Option<Spanned<String>>,
    /// Convert to this unit while decoding.
    target_unit: Option<Spanned<String>>,
    /// Required (default true).
    #[serde(default = "default_true")]
    required: bool,
    /// Smallest valid value: a number, or `"@field"`.
    min: Option<Spanned<BoundFile>>,
    /// Largest valid value: a number, or `"@field"`.
    max: Option<Spanned<BoundFile>>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum BoundFile {
    Number(f64),
    Field(String),
}

fn default_type() -> FieldType {
    FieldType::Number
}

fn default_true() -> bool {
    true
}

impl SensorType {
    /// Parses and validates one descriptor file's text. All problems are reported together.
    pub fn from_toml(path: &Path, text: &str) -> Result<Self, ConfigErrors> {
        let file: DescriptorFile =
            toml::from_str(text).map_err(|e| ConfigError::from_toml(path, text, &e))?;
        let mut errors = Vec::new();
        let err = |span: std::ops::Range<usize>, msg: String| {
            ConfigError::at(path, text, Some(span.start), msg)
        };

        let name = file.name.get_ref().clone();
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            errors.push(err(
                file.name.span(),
                format!(
                    "sensor type name {name:?} must be non-empty ASCII letters, digits, '_' or '-'"
                ),
            ));
        }
        let format = match file.format.get_ref().as_str() {
            "json" => Some(PayloadFormat::Json),
            "senml" => Some(PayloadFormat::Senml),
            "csv" => match &file.columns {
                Some(cols) if !cols.get_ref().is_empty() => {
                    let delimiter = match &file.delimiter {
                        None => Some(b','),
                        Some(d) if d.get_ref().len() == 1 && d.get_ref().is_ascii() => {
                            Some(d.get_ref().as_bytes()[0])
                        }
                        Some(d) => {
                            errors.push(err(
                                d.span(),
                                format!(
                                    "delimiter {:?} must be a single ASCII character",
                                    d.get_ref()
                                ),
                            ));
                            None
                        }
                    };
                    delimiter.map(|delimiter| PayloadFormat::Csv {
                        columns: cols.get_ref().clone(),
                        delimiter,
                    })
                }
                _ => {
                    errors.push(err(
                        file.format.span(),
                        "format \"csv\" needs columns = [\"name\", ...] in payload order".into(),
                    ));
                    None
                }
            },
            other => {
                errors.push(err(
                    file.format.span(),
                    format!(
                        "payload format {other:?} is not known; use \"json\", \"senml\" or \"csv\""
                    ),
                ));
                None
            }
        };
        if !matches!(format, Some(PayloadFormat::Csv { .. })) {
            if let Some(c) = &file.columns {
                errors.push(err(
                    c.span(),
                    "columns only apply to format = \"csv\"".into(),
                ));
            }
        }
        let topic_text = file
            .topic
            .as_ref()
            .map(|t| t.get_ref().clone())
            .unwrap_or_else(|| format!("city/{name}/{{sensor_id}}"));
        let topic = match TopicPattern::parse(&topic_text) {
            Ok(t) => Some(t),
            Err(msg) => {
                let span = file
                    .topic
                    .as_ref()
                    .map(|t| t.span())
                    .unwrap_or(file.name.span());
                errors.push(err(span, msg));
                None
            }
        };
        let time = match (&file.time, &format) {
            (Some(t), Some(PayloadFormat::Senml)) => {
                errors.push(err(
                    t.field.span(),
                    "SenML records carry their own time (bt + t); remove [time]".into(),
                ));
                None
            }
            (None, Some(PayloadFormat::Senml)) => Some(TimeRule {
                pointer: Pointer::key(SENML_TIME_KEY),
                format: TimeFormat::EpochSeconds,
            }),
            (None, _) => None,
            (Some(t), _) => match parse_time(t) {
                Ok(rule) => Some(rule),
                Err((span, msg)) => {
                    errors.push(err(span, msg));
                    None
                }
            },
        };
        if let (Some(PayloadFormat::Csv { columns, .. }), Some(rule)) = (&format, &time) {
            if !columns
                .iter()
                .any(|c| rule.pointer.as_str() == format!("/{c}"))
            {
                let span = file
                    .time
                    .as_ref()
                    .map_or(file.format.span(), |t| t.field.span());
                errors.push(err(
                    span,
                    format!(
                        "time field {} is not one of the columns ({})",
                        rule.pointer,
                        columns.join(", ")
                    ),
                ));
            }
        }
        let mut fields: Vec<Field> = Vec::new();
        for f in &file.fields {
            let span = f.name.span();
            let fname = f.name.get_ref();
            if fields.iter().any(|g| *g.name == **fname) {
                errors.push(err(
                    span.clone(),
                    format!("field {:?} is declared twice", fname),
                ));
            }
            if fname.is_empty() || fname.chars().any(|c| c.is_control()) {
                errors.push(err(
                    span.clone(),
                    format!(
                        "field name {:?} must be non-empty without control characters",
                        fname
                    ),
                ));
            }
            let pointer = f
                .path
                .clone()
                .unwrap_or_else(|| format!("/{}", fname.replace('~', "~0").replace('/', "~1")));
            let Some(pointer) = Pointer::parse(&pointer) else {
                errors.push(err(
                    span.clone(),
                    format!(
                        "path {pointer:?} of field {:?} must be a JSON Pointer starting with '/'",
                        fname
                    ),
                ));
                continue;
            };
            if let Some(PayloadFormat::Csv { columns, .. }) = &format {
                if !columns.iter().any(|c| pointer.as_str() == format!("/{c}")) {
                    errors.push(err(
                        span.clone(),
                        format!(
                            "field {fname:?} reads {pointer}, which is not one of the columns ({})",
                            columns.join(", ")
                        ),
                    ));
                }
            }
            let (unit, conversion) = match (&f.unit, &f.target_unit) {
                (None, None) => (None, None),
                (None, Some(t)) => {
                    errors.push(err(
                        t.span(),
                        format!("field {fname:?} has target_unit but no unit to convert from"),
                    ));
                    (None, None)
                }
                (Some(u), None) => {
                    if crate::ingest::units::find(u.get_ref()).is_none() {
                        errors.push(err(
                            u.span(),
                            format!(
                                "unknown unit {:?}; known units: {}",
                                u.get_ref(),
                                crate::ingest::units::known()
                            ),
                        ));
                    }
                    (Some(u.get_ref().clone()), None)
                }
                (Some(u), Some(_)) if crate::ingest::units::find(u.get_ref()).is_none() => {
                    errors.push(err(
                        u.span(),
                        format!(
                            "unknown unit {:?}; known units: {}",
                            u.get_ref(),
                            crate::ingest::units::known()
                        ),
                    ));
                    (None, None)
                }
                (Some(u), Some(t)) => match Conversion::new(u.get_ref(), t.get_ref()) {
                    Ok(c) => (Some(t.get_ref().clone()), Some(c)),
                    Err(e) => {
                        errors.push(err(t.span(), e));
                        (None, None)
                    }
                },
            };
            fields.push(Field {
                name: Arc::from(fname.as_str()),
                pointer,
                kind: f.kind,
                unit,
                conversion,
                required: f.required,
                min: None,
                max: None,
            });
        }
        for (f, spec) in fields.iter_mut().zip(&file.fields) {
            for (slot, bound) in [(&mut f.min, &spec.min), (&mut f.max, &spec.max)] {
                let Some(b) = bound else { continue };
                *slot = match b.get_ref() {
                    BoundFile::Number(v) => Some(Bound::Value(*v)),
                    BoundFile::Field(text) => match text.strip_prefix('@') {
                        Some(other) if file.fields.iter().any(|g| g.name.get_ref() == other) => {
                            Some(Bound::Field(Arc::from(other)))
                        }
                        Some(other) => {
                            errors.push(err(b.span(), format!("bound {text:?} names the field {other:?}, which is not declared")));
                            None
                        }
                        None => {
                            errors.push(err(
                                b.span(),
                                format!("bound {text:?} must be a number or \"@field\""),
                            ));
                            None
                        }
                    },
                };
            }
        }
        if fields.is_empty() {
            errors.push(err(
                file.name.span(),
                format!(
                    "sensor type {name:?} declares no [[fields]]; add at least one numeric field"
                ),
            ));
        }
        let mut windows: Vec<WindowSpec> = Vec::new();
        for w in &file.windows {
            match parse_window(w, &fields) {
                Ok(spec)
                    if windows
                        .iter()
                        .any(|o| o.label() == spec.label() && o.fields == spec.fields) =>
                {
                    errors.push(err(
                        w.size.span(),
                        format!("window {} is declared twice", spec.label()),
                    ));
                }
                Ok(spec) => windows.push(spec),
                Err((span, msg)) => errors.push(err(span, msg)),
            }
        }
        let area_field = match &file.area_field {
            None => None,
            Some(text) => match Pointer::parse(text.get_ref()).filter(|p| !p.as_str().is_empty()) {
                Some(p) => Some(p),
                None => {
                    errors.push(err(
                        text.span(),
                        format!(
                            "area_field {:?} must be a JSON Pointer starting with '/'",
                            text.get_ref()
                        ),
                    ));
                    None
                }
            },
        };
        let location = match &file.location {
            None => None,
            Some(l) => match (
                Pointer::parse(&l.get_ref().lat),
                Pointer::parse(&l.get_ref().lon),
            ) {
                (Some(a), Some(b)) => Some((a, b)),
                _ => {
                    errors.push(err(
                        l.span(),
                        "location lat and lon must be JSON Pointers starting with '/'".into(),
                    ));
                    None
                }
            },
        };
        let sensor_sax = match &file.sensor_sax {
            None => None,
            Some(s) => match parse_sensor_sax(s.get_ref(), &fields) {
                Ok(spec) => Some(spec),
                Err(msg) => {
                    errors.push(err(s.span(), msg));
                    None
                }
            },
        };
        let (sensor_id_field, replay_files) =
            parse_replay_keys(&file, format.as_ref(), &err, &mut errors);
        if let Some(n) = file.flat_line.as_ref().filter(|n| *n.get_ref() < 2) {
            errors.push(err(
                n.span(),
                format!("flat_line is {}; use at least 2 readings", n.get_ref()),
            ));
        }
        let activity_field = match &file.activity_field {
            None => None,
            Some(a) => match fields.iter().find(|f| *f.name == **a.get_ref()) {
                Some(f) => Some(f.name.clone()),
                None => {
                    errors.push(err(
                        a.span(),
                        format!(
                            "activity_field {:?} is not one of this type's [[fields]]; name a declared field, e.g. a vehicle count",
                            a.get_ref()
                        ),
                    ));
                    None
                }
            },
        };
        if file.expected_interval.is_zero() {
            errors.push(err(
                file.name.span(),
                "expected_interval must be greater than zero".into(),
            ));
        }
        match (errors.is_empty(), topic, format) {
            (true, Some(topic), Some(format)) => Ok(SensorType::with_json_keys(SensorType {
                name: Arc::from(name),
                topic,
                format,
                time,
                fields,
                expected_interval: file.expected_interval,
                flat_line: file.flat_line.as_ref().map(|n| *n.get_ref()),
                activity_field,
                windows,
                area_field,
                sensor_sax,
                location,
                registry_file: file.registry.as_ref().map(PathBuf::from),
                registry: None,
                json_keys: None,
                source: path.to_path_buf(),
                sensor_id_field,
                replay_files,
            })),
            _ => Err(ConfigErrors(errors)),
        }
    }
}

/// Reads and checks `sensor_id_field` and `replay_files`.
fn parse_replay_keys(
    file: &DescriptorFile,
    format: Option<&PayloadFormat>,
    err: &dyn Fn(std::ops::Range<usize>, String) -> ConfigError,
    errors: &mut Vec<ConfigError>,
) -> (Option<Pointer>, Option<FilePattern>) {
    let sensor_id_field = file.sensor_id_field.as_ref().and_then(|text| {
        let pointer = Pointer::parse(text.get_ref()).filter(|p| !p.as_str().is_empty());
        let problem = match (&pointer, format) {
            (None, _) => Some(format!(
                "sensor_id_field {:?} must be a JSON Pointer starting with '/', e.g. \"/REPORT_ID\"",
                text.get_ref()
            )),
            (Some(_), Some(PayloadFormat::Senml)) => Some(
                "sensor_id_field does not apply to SenML packs: name the sensor in the topic, or in the file name with replay_files".into(),
            ),
            (Some(p), Some(PayloadFormat::Csv { columns, .. }))
                if !columns.iter().any(|c| p.as_str() == format!("/{c}")) =>
            {
                Some(format!(
                    "sensor_id_field {p} is not one of the columns ({})",
                    columns.join(", ")
                ))
            }
            _ => None,
        };
        match problem {
            Some(msg) => {
                errors.push(err(text.span(), msg));
                None
            }
            None => pointer,
        }
    });
    let replay_files =
        file.replay_files
            .as_ref()
            .and_then(|text| match FilePattern::parse(text.get_ref()) {
                Ok(p) => Some(p),
                Err(msg) => {
                    errors.push(err(text.span(), msg));
                    None
                }
            });
    (sensor_id_field, replay_files)
}

/// A file-name pattern with one `{sensor_id}` capture (`AarhusTrafficData{sensor_id}.csv`):
/// how `aqyl replay` tells the sensor of a file that holds one sensor's rows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FilePattern {
    prefix: String,
    suffix: String,
}

impl FilePattern {
    /// Parses a pattern: a file name (no `/`) with `{sensor_id}` exactly once.
    pub fn parse(text: &str) -> Result<Self, String> {
        const ID: &str = "{sensor_id}";
        let example = "write it like \"AarhusTrafficData{sensor_id}.csv\"";
        if text.contains(['/', '\\']) {
            return Err(format!(
                "replay_files {text:?} is a file name pattern, not a path: {example}"
            ));
        }
        let Some((prefix, suffix)) = text.split_once(ID) else {
            return Err(format!(
                "replay_files {text:?} must contain {{sensor_id}}: {example}"
            ));
        };
        if suffix.contains(ID) || prefix.contains(['{', '}']) || suffix.contains(['{', '}']) {
            return Err(format!(
                "replay_files {text:?} must contain {{sensor_id}} exactly once and no other braces: {example}"
            ));
        }
        Ok(Self {
            prefix: prefix.to_string(),
            suffix: suffix.to_string(),
        })
    }

    /// The sensor id in `file_name`, when the name matches (the id must not be empty).
    pub fn sensor_id<'a>(&self, file_name: &'a str) -> Option<&'a str> {
        file_name
            .strip_prefix(self.prefix.as_str())?
            .strip_suffix(self.suffix.as_str())
            .filter(|id| !id.is_empty())
    }
}

impl std::fmt::Display for FilePattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}{{sensor_id}}{}", self.prefix, self.suffix)
    }
}

fn parse_sensor_sax(s: &SensorSaxFile, fields: &[Field]) -> Result<SensorSaxSpec, String> {
    let params =
        SaxParams::new(s.alphabet, s.word_length).map_err(|e| format!("sensor_sax: {e}"))?;
    let (min, max) = (
        s.min_window.as_millis() as u64,
        s.max_window.as_millis() as u64,
    );
    if max == 0 || min > max {
        return Err("sensor_sax: max_window must be positive and at least min_window".into());
    }
    if !s.sensitivity.is_finite() || s.sensitivity < 0.0 {
        return Err(format!(
            "sensor_sax: sensitivity {} must be a non-negative number",
            s.sensitivity
        ));
    }
    let fields = match &s.fields {
        None => None,
        Some(names) => Some(
            names
                .iter()
                .map(|n| {
                    fields
                        .iter()
                        .find(|f| &*f.name == n.as_str())
                        .map(|f| f.name.clone())
                        .ok_or_else(|| format!("sensor_sax field {n:?} is not a declared field"))
                })
                .collect::<Result<Vec<_>, _>>()?,
        ),
    };
    Ok(SensorSaxSpec {
        params,
        min_window_ms: min,
        max_window_ms: max,
        sensitivity: s.sensitivity,
        fields,
        silence_horizon_ms: (s.silence_horizon.as_millis() as u64).max(max),
        label: Arc::from("sensorsax"),
    })
}

fn parse_window(
    w: &WindowFile,
    fields: &[Field],
) -> Result<WindowSpec, (std::ops::Range<usize>, String)> {
    let size = crate::duration::parse(w.size.get_ref()).map_err(|e| (w.size.span(), e))?;
    let slide = match &w.slide {
        Some(s) => Some(crate::duration::parse(s.get_ref()).map_err(|e| (s.span(), e))?),
        None => None,
    };
    WindowSpec::check(size, slide)
        .map_err(|e| (w.slide.as_ref().map_or(w.size.span(), |s| s.span()), e))?;
    let mut spec = match slide {
        Some(slide) => WindowSpec::sliding(size, slide),
        None => WindowSpec::tumbling(size),
    };
    if let Some(sax) = &w.sax {
        let params = SaxParams::new(sax.get_ref().alphabet, sax.get_ref().word_length)
            .map_err(|e| (sax.span(), e.to_string()))?;
        spec.sax = Some(params);
    }
    if let Some(names) = &w.fields {
        let mut chosen = Vec::new();
        for name in names.get_ref() {
            match fields.iter().find(|f| &*f.name == name.as_str()) {
                Some(f) => chosen.push(f.name.clone()),
                None => {
                    let known: Vec<&str> = fields.iter().map(|f| &*f.name).collect();
                    return Err((
                        names.span(),
                        format!(
                            "window field {name:?} is not a declared field; known: {}",
                            known.join(", ")
                        ),
                    ));
                }
            }
        }
        spec.fields = Some(chosen);
    }
    Ok(spec)
}

fn parse_time(t: &TimeFile) -> Result<TimeRule, (std::ops::Range<usize>, String)> {
    let text = t.field.get_ref().clone();
    let Some(pointer) = Pointer::parse(&text).filter(|p| !p.as_str().is_empty()) else {
        return Err((
            t.field.span(),
            format!("time field {text:?} must be a JSON Pointer starting with '/'"),
        ));
    };
    let format = match t.format.get_ref().as_str() {
        "rfc3339" => TimeFormat::Rfc3339,
        "epoch_s" => TimeFormat::EpochSeconds,
        "epoch_ms" => TimeFormat::EpochMillis,
        pattern if pattern.contains('%') => {
            let Some(tz) = &t.timezone else {
                return Err((
                    t.format.span(),
                    format!("time format {pattern:?} has no zone: add timezone = \"Europe/Copenhagen\" (or \"UTC\")"),
                ));
            };
            let zone: Tz = tz.get_ref().parse().map_err(|_| {
                (tz.span(), format!("unknown time zone {:?}; use an IANA name such as \"Europe/Copenhagen\"", tz.get_ref()))
            })?;
            let items = chrono::format::StrftimeItems::new(pattern).parse_to_owned().map_err(|_| {
                (t.format.span(), format!("time format {pattern:?} is not a valid chrono pattern; see https://docs.rs/chrono/latest/chrono/format/strftime/"))
            })?;
            TimeFormat::Local { pattern: pattern.to_string(), items, zone }
        }
        other => {
            return Err((
                t.format.span(),
                format!("time format {other:?} is not known: use \"rfc3339\", \"epoch_s\", \"epoch_ms\" or a pattern like \"%Y-%m-%dT%H:%M:%S\""),
            ))
        }
    };
    Ok(TimeRule { pointer, format })
}

/// Loads every `*.toml` descriptor of a directory, sorted by file name, checking that names
/// and topic filters do not collide.
pub fn load_dir(dir: &Path) -> Result<Vec<SensorType>, ConfigErrors> {
    let entries = std::fs::read_dir(dir).map_err(|e| {
        ConfigError::file(
            dir,
            format!("cannot read the sensor descriptor directory: {e}"),
        )
    })?;
    let mut paths: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    paths.sort();
    let mut errors = Vec::new();
    let mut types: Vec<SensorType> = Vec::new();
    for path in paths {
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) => {
                errors.push(ConfigError::file(&path, format!("cannot read: {e}")));
                continue;
            }
        };
        match SensorType::from_toml(&path, &text) {
            Ok(mut t) => {
                if let Some(file) = &t.registry_file {
                    match SensorRegistry::load(&dir.join(file)) {
                        Ok(r) => t.registry = Some(Arc::new(r)),
                        Err(e) => {
                            errors.push(ConfigError::file(
                                &path,
                                format!("its registry {} is not usable:", file.display()),
                            ));
                            errors.extend(e.0);
                            continue;
                        }
                    }
                }
                if let Some(other) = types.iter().find(|o| o.name == t.name) {
                    errors.push(ConfigError::file(
                        &path,
                        format!(
                            "sensor type {:?} is already defined in {}",
                            t.name,
                            other.source.display()
                        ),
                    ));
                } else if let Some(other) = types.iter().find(|o| o.topic.overlaps(&t.topic)) {
                    errors.push(ConfigError::file(
                        &path,
                        format!(
                            "topic {:?} overlaps the topic of sensor type {:?} in {}",
                            t.topic.as_str(),
                            other.name,
                            other.source.display()
                        ),
                    ));
                } else {
                    types.push(t);
                }
            }
            Err(e) => errors.extend(e.0),
        }
    }
    if types.is_empty() && errors.is_empty() {
        errors.push(ConfigError::file(
            dir,
            "no sensor descriptors (*.toml) found; add one, e.g. traffic.toml",
        ));
    }
    if errors.is_empty() {
        Ok(types)
    } else {
        Err(ConfigErrors(errors))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TRAFFIC: &str = r#"
name = "traffic"
topic = "city/traffic/{sensor_id}"
expected_interval = "5m"

[time]
field = "/TIMESTAMP"
format = "%Y-%m-%dT%H:%M:%S"
timezone = "Europe/Copenhagen"

[[fields]]
name = "avgSpeed"
unit = "km/h"

[[fields]]
name = "vehicleCount"
type = "integer"
"#;

    #[test]
    fn parses_a_descriptor() {
        let t = SensorType::from_toml(Path::new("traffic.toml"), TRAFFIC).unwrap();
        assert_eq!(&*t.name, "traffic");
        assert_eq!(t.topic.filter(), "city/traffic/+");
        assert_eq!(t.fields[0].pointer.as_str(), "/avgSpeed");
        assert_eq!(t.fields[1].kind, FieldType::Integer);
        assert!(matches!(t.time.unwrap().format, TimeFormat::Local { .. }));
    }

    #[test]
    fn unknown_key_names_file_and_line() {
        let text = TRAFFIC.replace(
            "[[fields]]\nname = \"avgSpeed\"",
            "[[fields]]\nname = \"avgSpeed\"\nscale = 2",
        );
        let err = SensorType::from_toml(Path::new("traffic.toml"), &text).unwrap_err();
        let msg = err.to_string();
        assert!(msg.starts_with("traffic.toml:13: "), "{msg}");
        assert!(msg.contains("scale"), "{msg}");
    }

    #[test]
    fn bad_zone_and_duplicate_field_are_both_reported() {
        let text = TRAFFIC
            .replace("Europe/Copenhagen", "Europe/Atlantis")
            .replace("name = \"vehicleCount\"", "name = \"avgSpeed\"");
        let err = SensorType::from_toml(Path::new("t.toml"), &text).unwrap_err();
        assert_eq!(err.0.len(), 2, "{err}");
        assert!(
            err.0[0]
                .to_string()
                .starts_with("t.toml:9: unknown time zone"),
            "{err}"
        );
        assert!(err.0[1].message.contains("declared twice"), "{err}");
    }

    #[test]
    fn the_activity_field_must_be_a_declared_field() {
        let text = TRAFFIC.replace(
            "expected_interval = \"5m\"\n",
            "expected_interval = \"5m\"\nactivity_field = \"vehicleCount\"\n",
        );
        let t = SensorType::from_toml(Path::new("t.toml"), &text).unwrap();
        assert_eq!(t.activity_field.as_deref(), Some("vehicleCount"));
        assert_eq!(
            SensorType::from_toml(Path::new("t.toml"), TRAFFIC)
                .unwrap()
                .activity_field,
            None
        );
        let bad = text.replace(
            "activity_field = \"vehicleCount\"",
            "activity_field = \"vehicles\"",
        );
        let err = SensorType::from_toml(Path::new("t.toml"), &bad)
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("t.toml:5: activity_field \"vehicles\" is not one of"),
            "{err}"
        );
    }

    #[test]
    fn windows_are_parsed_and_checked() {
        let text = format!(
            "{TRAFFIC}\n[[windows]]\nsize = \"5m\"\n\n[[windows]]\nsize = \"4h\"\nsax = {{ alphabet = 5, word_length = 3 }}\nfields = [\"avgSpeed\"]\n\n[[windows]]\nsize = \"1h\"\nslide = \"15m\"\n"
        );
        let t = SensorType::from_toml(Path::new("t.toml"), &text).unwrap();
        let labels: Vec<&str> = t.windows.iter().map(|w| &**w.label()).collect();
        assert_eq!(labels, ["5m", "4h", "1h/15m"]);
        assert!(t.windows[1].sax.is_some());
        assert!(t.windows[1].applies_to("avgSpeed") && !t.windows[1].applies_to("vehicleCount"));

        let bad = format!("{TRAFFIC}\n[[windows]]\nsize = \"1h\"\nslide = \"2h\"\n");
        let err = SensorType::from_toml(Path::new("t.toml"), &bad)
            .unwrap_err()
            .to_string();
        assert!(err.contains("t.toml:21: slide 2h must be between"), "{err}");
        let bad = format!("{TRAFFIC}\n[[windows]]\nsize = \"1h\"\nfields = [\"speed\"]\n");
        let err = SensorType::from_toml(Path::new("t.toml"), &bad)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("window field \"speed\" is not a declared field"),
            "{err}"
        );
        let bad = format!("{TRAFFIC}\n[[windows]]\nsize = \"1h\"\nsax = {{ alphabet = 40 }}\n");
        let err = SensorType::from_toml(Path::new("t.toml"), &bad)
            .unwrap_err()
            .to_string();
        assert!(err.contains("alphabet size 40 is not supported"), "{err}");
    }

    #[test]
    fn topic_patterns_match_and_capture() {
        let p = TopicPattern::parse("city/{area}/parking/{sensor_id}").unwrap();
        assert_eq!(p.filter(), "city/+/parking/+");
        let c = p.matches("city/north/parking/BRUUNS").unwrap();
        assert_eq!((c.sensor_id, c.area), ("BRUUNS", Some("north")));
        assert!(p.matches("city/north/parking").is_none());
        assert!(p.matches("city/north/parking/a/b").is_none());
        assert!(p.matches("town/north/parking/a").is_none());
        assert!(TopicPattern::parse("city/traffic").is_err());
        let traffic = TopicPattern::parse("city/traffic/{sensor_id}").unwrap();
        assert!(TopicPattern::parse("city/{area}/{sensor_id}")
            .unwrap()
            .overlaps(&traffic));
        assert!(!TopicPattern::parse("city/parking/{sensor_id}")
            .unwrap()
            .overlaps(&traffic));
        assert!(!TopicPattern::parse("city/traffic/{area}/{sensor_id}")
            .unwrap()
            .overlaps(&traffic));
        assert!(TopicPattern::parse("city/+/{sensor_id}").is_err());
    }

    #[test]
    fn sensor_ids_with_control_characters_are_refused() {
        assert!(validate_sensor_id("158324").is_ok());
        assert!(validate_sensor_id("a b,c=d\"e\\f ü").is_ok());
        assert!(validate_sensor_id("a\nb").is_err());
        assert!(validate_sensor_id("").is_err());
        assert!(validate_sensor_id(&"x".repeat(300)).is_err());
    }
}

#[cfg(test)]
mod pointer_tests {
    use super::Pointer;
    use serde_json::json;

    #[test]
    fn pointers_follow_rfc_6901() {
        let doc = json!({"a": {"b/c": [10, {"m~n": 20}]}, "": 1});
        let at = |p: &str| Pointer::parse(p).unwrap().lookup(&doc).cloned();
        assert_eq!(at("/a/b~1c/0"), Some(json!(10)));
        assert_eq!(at("/a/b~1c/1/m~0n"), Some(json!(20)));
        assert_eq!(at("/"), Some(json!(1)));
        assert_eq!(at(""), Some(doc.clone()));
        assert_eq!(at("/a/missing"), None);
        assert_eq!(at("/a/b~1c/9"), None);
        assert!(Pointer::parse("a/b").is_none());
        // Agrees with serde_json's own implementation.
        for p in ["/a/b~1c/0", "/a/b~1c/1/m~0n", "/", "", "/x", "/a/b~1c/x"] {
            assert_eq!(
                Pointer::parse(p).unwrap().lookup(&doc),
                doc.pointer(p),
                "{p}"
            );
        }
    }
}

#[cfg(test)]
mod unit_and_bound_tests {
    use super::*;

    const GARAGE: &str = r#"
name = "garage"
[time]
field = "/t"
format = "epoch_s"
[[fields]]
name = "cars"
min = 0
max = "@spaces"
[[fields]]
name = "spaces"
[[fields]]
name = "speed"
unit = "mph"
target_unit = "km/h"
required = false
"#;

    #[test]
    fn bounds_may_name_another_field_and_units_convert() {
        let t = SensorType::from_toml(Path::new("g.toml"), GARAGE).unwrap();
        let fields: Vec<(Arc<str>, f64)> = vec![("cars".into(), 960.0), ("spaces".into(), 953.0)];
        assert_eq!(
            t.out_of_range(&fields),
            vec!["cars = 960 is above its maximum 953".to_string()]
        );
        let fields: Vec<(Arc<str>, f64)> = vec![("cars".into(), -1.0), ("spaces".into(), 953.0)];
        assert_eq!(
            t.out_of_range(&fields),
            vec!["cars = -1 is below its minimum 0".to_string()]
        );
        assert_eq!(t.fields[2].unit.as_deref(), Some("km/h"));
        let registry = crate::ingest::decode::Registry::new(vec![t]);
        let msg = crate::RawMessage {
            topic: "city/garage/g".into(),
            payload: br#"{"t":1,"cars":1,"spaces":2,"speed":60}"#.to_vec(),
            received_at: 0,
        };
        let obs = registry.decode(&msg, 1024).unwrap();
        assert!(
            (obs[0].fields[2].1 - 96.56064).abs() < 1e-9,
            "60 mph in km/h"
        );
    }

    #[test]
    fn bad_units_and_bounds_name_the_line() {
        let e = SensorType::from_toml(
            Path::new("g.toml"),
            &GARAGE.replace("\"@spaces\"", "\"@capacity\""),
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.starts_with(
                "g.toml:9: bound \"@capacity\" names the field \"capacity\", which is not declared"
            ),
            "{e}"
        );
        let e = SensorType::from_toml(
            Path::new("g.toml"),
            &GARAGE.replace("\"mph\"", "\"furlong/fortnight\""),
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.starts_with("g.toml:14: unknown unit \"furlong/fortnight\""),
            "{e}"
        );
        let e = SensorType::from_toml(
            Path::new("g.toml"),
            &GARAGE.replace("target_unit = \"km/h\"", "target_unit = \"°C\""),
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.starts_with("g.toml:15: cannot convert mph (speed) to °C (temperature)"),
            "{e}"
        );
    }
}

#[cfg(test)]
mod replay_key_tests {
    use super::*;

    const BASE: &str = "name = \"traffic\"\n[time]\nfield = \"/TIMESTAMP\"\nformat = \"%Y-%m-%dT%H:%M:%S\"\ntimezone = \"Europe/Copenhagen\"\n[[fields]]\nname = \"avgSpeed\"\n";

    fn with(keys: &str) -> Result<SensorType, String> {
        SensorType::from_toml(Path::new("t.toml"), &format!("{keys}{BASE}"))
            .map_err(|e| e.to_string())
    }

    #[test]
    fn sensor_id_field_and_replay_files_are_read() {
        let t = with(
            "sensor_id_field = \"/REPORT_ID\"\nreplay_files = \"AarhusTrafficData{sensor_id}.csv\"\n",
        )
        .unwrap();
        assert_eq!(
            t.sensor_id_field.as_ref().map(Pointer::as_str),
            Some("/REPORT_ID")
        );
        // The projected JSON parse must keep the id's key.
        assert!(t.json_keys.unwrap().iter().any(|k| k == "REPORT_ID"));
        let files = t.replay_files.unwrap();
        assert_eq!(
            files.sensor_id("AarhusTrafficData158324.csv"),
            Some("158324")
        );
        assert_eq!(files.sensor_id("AarhusTrafficData.csv"), None);
        assert_eq!(files.sensor_id("AarhusPollutionData1.csv"), None);
        assert_eq!(files.to_string(), "AarhusTrafficData{sensor_id}.csv");
        let t = with("").unwrap();
        assert!(t.sensor_id_field.is_none() && t.replay_files.is_none());
    }

    #[test]
    fn bad_replay_keys_name_file_and_line() {
        let e = with("sensor_id_field = \"REPORT_ID\"\n").unwrap_err();
        assert!(
            e.starts_with("t.toml:1: sensor_id_field \"REPORT_ID\" must be a JSON Pointer"),
            "{e}"
        );
        let e = with("\nreplay_files = \"AarhusTrafficData.csv\"\n").unwrap_err();
        assert!(
            e.starts_with(
                "t.toml:2: replay_files \"AarhusTrafficData.csv\" must contain {sensor_id}"
            ),
            "{e}"
        );
        let e = with("replay_files = \"traffic/{sensor_id}.csv\"\n").unwrap_err();
        assert!(e.contains("is a file name pattern, not a path"), "{e}");
        let e = with("replay_files = \"{sensor_id}-{sensor_id}.csv\"\n").unwrap_err();
        assert!(e.contains("exactly once"), "{e}");
        let e = SensorType::from_toml(
            Path::new("n.toml"),
            "name = \"noise\"\nformat = \"senml\"\nsensor_id_field = \"/bn\"\n[[fields]]\nname = \"laeq\"\n",
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.starts_with("n.toml:3: sensor_id_field does not apply to SenML"),
            "{e}"
        );
        let e = SensorType::from_toml(
            Path::new("c.toml"),
            "name = \"c\"\nformat = \"csv\"\ncolumns = [\"n\"]\nsensor_id_field = \"/id\"\n[[fields]]\nname = \"n\"\n",
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.starts_with("c.toml:4: sensor_id_field /id is not one of the columns (n)"),
            "{e}"
        );
    }

    #[test]
    fn a_topic_pattern_is_filled_for_a_replayed_row() {
        let p = TopicPattern::parse("city/traffic/{sensor_id}").unwrap();
        assert_eq!(p.topic_of("158324").as_deref(), Some("city/traffic/158324"));
        let with_area = TopicPattern::parse("city/{area}/parking/{sensor_id}").unwrap();
        assert_eq!(with_area.topic_of("BRUUNS"), None);
    }
}
