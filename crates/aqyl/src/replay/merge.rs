//! Turning file rows into the messages the decoder expects, and merging the files by event time.
//!
//! Each row becomes a [`RawMessage`] as a sensor would have published it: the topic is the
//! type's pattern with the row's sensor id filled in, the payload the row as JSON (or as a CSV
//! line, for CSV types; SenML packs as read). Files are read one row ahead each and merged by
//! the rows' event time, so sensors advance together as they did live; each file keeps its own
//! row order (a row whose time jumps back is sent right after its predecessor). A row that
//! cannot become a message (unreadable CSV row, no sensor id) becomes a dead letter naming
//! `file:line`.

use super::files::{FileFormat, SensorOf, Source};
use super::rows::{CsvFields, CsvRows, JsonLines, Row, RowData, Rows, SenmlRows};
use aqyl_core::ingest::decode::{event_time_of, observe_cells, payload_sensor_id};
use aqyl_core::ingest::descriptor::{
    validate_sensor_id, PayloadFormat, SensorType, SENML_TIME_KEY,
};
use aqyl_core::{DeadLetter, Observation, RawMessage, Reason};
use aqyl_dataflow::input::Taken;
use serde_json::Value;
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::io::BufReader;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::atomic::{AtomicI64, AtomicU64};
use std::sync::{Arc, Mutex};

/// What a row gives.
#[derive(Debug, Clone, PartialEq)]
pub enum Item {
    /// A message for the dataflow.
    Message(RawMessage),
    /// A row rejected before decoding.
    Rejected(DeadLetter),
}

/// Builds the item of one row of a file whose rows belong to `sensor`. Also returns the row's
/// event time (Unix ms) when it can be read, for merging.
pub fn row_item(ty: &SensorType, sensor: &SensorOf, file: &str, row: Row) -> (Option<i64>, Item) {
    let line = row.line;
    let reject = |reason: Reason, detail: String, payload: &[u8]| {
        Item::Rejected(DeadLetter::new(
            &ty.name,
            reason,
            format!("{file}:{line}: {detail}"),
            ty.topic.as_str(),
            payload,
            0,
        ))
    };
    let (value, payload) = match row.data {
        Err(detail) => return (None, reject(Reason::MalformedCsv, detail, b"")),
        Ok(RowData::Fields(fields)) => csv_payload(ty, &fields),
        Ok(RowData::Text(text)) => match &ty.format {
            PayloadFormat::Senml => (None, text),
            PayloadFormat::Json => (serde_json::from_slice::<Value>(&text).ok(), text),
            PayloadFormat::Csv { .. } => match serde_json::from_slice::<Value>(&text) {
                Ok(v @ Value::Object(_)) => {
                    let payload = payload_of(ty, &v);
                    (Some(v), payload)
                }
                _ => {
                    let detail = "not a JSON object; a CSV type replays JSON lines only as objects keyed by column".to_string();
                    return (None, reject(Reason::MalformedJson, detail, &text));
                }
            },
        },
    };
    let id = match (sensor, &ty.sensor_id_field, &value) {
        (SensorOf::File(id), _, _) => id.clone(),
        (SensorOf::Field { fallback }, Some(pointer), Some(v)) => {
            match (payload_sensor_id(pointer, v), fallback) {
                // The decoder reads the row's own id; the topic only routes it.
                (Ok(id), _) => id.replace('/', "_"),
                (Err((Reason::MissingField, _)), Some(id)) => id.clone(),
                (Err((reason, detail)), _) => return (None, reject(reason, detail, &payload)),
            }
        }
        (SensorOf::Field { .. }, _, _) => {
            let detail = "not a JSON object, so it names no sensor".to_string();
            return (None, reject(Reason::MalformedJson, detail, &payload));
        }
    };
    let time = match &value {
        Some(v) => event_time_of(ty, v).and_then(Result::ok),
        None => senml_time(ty, &payload),
    };
    let topic = ty
        .topic
        .topic_of(&id)
        .unwrap_or_else(|| ty.topic.as_str().to_string());
    let msg = RawMessage {
        topic,
        payload,
        received_at: 0,
    };
    (time, Item::Message(msg))
}

/// The payload of a CSV row and the object its sensor id and time are read from: for a JSON
/// type the row written as JSON, read through the few columns needed (the hot path of a CSV
/// replay builds no object of every column).
fn csv_payload(ty: &SensorType, fields: &CsvFields) -> (Option<Value>, Vec<u8>) {
    if !matches!(ty.format, PayloadFormat::Json) {
        let value = Value::Object(fields.object());
        let payload = payload_of(ty, &value);
        return (Some(value), payload);
    }
    let mut payload = Vec::with_capacity(256);
    fields.write_json(&mut payload);
    let pointers = [
        ty.time.as_ref().map(|t| &t.pointer),
        ty.sensor_id_field.as_ref(),
    ];
    let keys: Option<Vec<&str>> = pointers
        .into_iter()
        .flatten()
        .map(|p| p.top_level_key())
        .collect();
    let object = match keys {
        Some(keys) => fields.project(&keys),
        None => fields.object(),
    };
    (Some(Value::Object(object)), payload)
}

/// The payload of a row object: JSON, or for a CSV type the declared columns as one CSV line.
fn payload_of(ty: &SensorType, value: &Value) -> Vec<u8> {
    let PayloadFormat::Csv { columns, delimiter } = &ty.format else {
        return serde_json::to_vec(value).unwrap_or_default();
    };
    let cells = columns.iter().map(|c| match value.get(c) {
        Some(Value::String(s)) => s.clone(),
        None | Some(Value::Null) => String::new(),
        Some(other) => other.to_string(),
    });
    let mut out = csv::WriterBuilder::new()
        .delimiter(*delimiter)
        .terminator(csv::Terminator::Any(b'\n'))
        .from_writer(Vec::new());
    if out.write_record(cells).is_err() {
        return Vec::new();
    }
    let mut line = out.into_inner().unwrap_or_default();
    if line.last() == Some(&b'\n') {
        line.pop();
    }
    line
}

/// The first record time of a SenML pack, in Unix ms.
fn senml_time(ty: &SensorType, pack: &[u8]) -> Option<i64> {
    if ty.format != PayloadFormat::Senml {
        return None;
    }
    let groups = aqyl_core::ingest::formats::senml_objects(pack, 0).ok()?;
    let seconds = groups.first()?.get(SENML_TIME_KEY)?.as_f64()?;
    Some((seconds * 1000.0) as i64)
}

/// How a file's rows are read.
enum Reader {
    /// CSV, read into the stream's reused record; `columns` are the type's top-level keys and
    /// their columns, for decoding straight from the cells.
    Csv {
        rows: CsvRows<BufReader<std::fs::File>>,
        columns: Vec<(String, Option<usize>)>,
    },
    /// JSON lines and SenML, a row at a time.
    Other(Box<dyn Rows + Send>),
}

/// What the dataflow takes of a row's item.
fn taken((time, item): (Option<i64>, Item)) -> (Option<i64>, Taken) {
    let taken = match item {
        Item::Message(m) => Taken::Message(m),
        Item::Rejected(d) => Taken::Rejected(d),
    };
    (time, taken)
}

/// One open file.
struct Stream {
    source: Source,
    name: String,
    /// The sensor its file name gives, shared by the readings decoded for it.
    file_sensor: Option<Arc<str>>,
    reader: Reader,
    /// Its head row's item, waiting for its turn.
    head: Option<Taken>,
    /// The cells of the head row when it is a decoded reading (kept for its dead letter).
    record: csv::ByteRecord,
    /// The line of the head row.
    line: u64,
    /// The merge key of its last row (rows without a readable time keep it).
    key: i64,
}

/// A row of the last batch given out, kept for [`Source::message`].
struct Given {
    stream: usize,
    line: u64,
    record: csv::ByteRecord,
}

/// Progress of every worker's files, for the progress line and the summary.
#[derive(Debug, Default)]
pub struct Counters {
    /// Rows read.
    pub rows: AtomicU64,
    /// Files read to the end.
    pub files_done: AtomicU64,
    /// The newest event time read so far (Unix ms; `i64::MIN`: none).
    pub newest: AtomicI64,
    /// The first error reading a file (the replay stops with it).
    pub error: Mutex<Option<String>>,
}

/// Files, merged by event time: a worker's share of a replay, read by the worker itself (see
/// [`aqyl_dataflow::input::Source`]). CSV rows of a JSON type are decoded straight from their
/// cells ([`observe_cells`]); other rows become messages for the decoder.
pub struct Merge {
    ty: SensorType,
    streams: Vec<Stream>,
    heap: BinaryHeap<Reverse<(i64, usize)>>,
    /// The readings of the last batch, by row.
    given: Vec<Given>,
    /// Records to read rows into (those of the batch before), so reading allocates nothing.
    spare: Vec<csv::ByteRecord>,
    max_payload: usize,
    counters: Arc<Counters>,
    /// Counted since the last batch.
    rows: u64,
    files_done: u64,
    newest: i64,
}

impl Merge {
    /// Opens every file and reads its first row. `max_payload` bounds a payload (a whole-file
    /// SenML pack, a CSV row written as JSON).
    pub fn open(
        ty: SensorType,
        sources: Vec<Source>,
        max_payload: usize,
        counters: Arc<Counters>,
    ) -> anyhow::Result<Self> {
        let mut merge = Self {
            ty: own_names(ty),
            streams: Vec::with_capacity(sources.len()),
            heap: BinaryHeap::with_capacity(sources.len()),
            given: Vec::new(),
            spare: Vec::new(),
            max_payload,
            counters,
            rows: 0,
            files_done: 0,
            newest: i64::MIN,
        };
        for source in sources {
            let reader = open_rows(&source, &merge.ty, max_payload)?;
            let file_sensor = match &source.sensor {
                SensorOf::File(id) | SensorOf::Field { fallback: Some(id) } => Some(id.as_str()),
                SensorOf::Field { fallback: None } => None,
            };
            merge.streams.push(Stream {
                name: source.path.display().to_string(),
                file_sensor: file_sensor.map(Arc::from),
                source,
                reader,
                head: None,
                record: csv::ByteRecord::new(),
                line: 0,
                key: i64::MIN,
            });
            merge.advance(merge.streams.len() - 1)?;
        }
        merge.count();
        Ok(merge)
    }

    /// Reads the next row of stream `i` into its head, or marks it done.
    fn advance(&mut self, i: usize) -> anyhow::Result<()> {
        let s = &mut self.streams[i];
        let fail = |e: std::io::Error| anyhow::anyhow!("cannot read {}: {e}", s.name);
        let (time, item) = match &mut s.reader {
            Reader::Csv { rows, columns } => match rows.next_record(&mut s.record).map_err(fail)? {
                None => {
                    self.files_done += 1;
                    return Ok(());
                }
                Some(Err(row)) => taken(row_item(&self.ty, &s.source.sensor, &s.name, row)),
                Some(Ok(line)) => {
                    s.line = line;
                    match decode_cells(
                        &self.ty,
                        (&s.source.sensor, s.file_sensor.as_ref()),
                        columns,
                        &s.record,
                        self.max_payload,
                    ) {
                        Some(obs) => (Some(obs.event_time as i64), Taken::Reading { obs, row: 0 }),
                        None => {
                            let data = Ok(RowData::Fields(rows.fields_of(&s.record)));
                            let row = Row { line, data };
                            taken(row_item(&self.ty, &s.source.sensor, &s.name, row))
                        }
                    }
                }
            },
            Reader::Other(rows) => match rows.next_row().map_err(fail)? {
                None => {
                    self.files_done += 1;
                    return Ok(());
                }
                Some(row) => taken(row_item(&self.ty, &s.source.sensor, &s.name, row)),
            },
        };
        self.rows += 1;
        s.key = time.unwrap_or(s.key);
        self.newest = self.newest.max(time.unwrap_or(i64::MIN));
        s.head = Some(item);
        self.heap.push(Reverse((s.key, i)));
        Ok(())
    }

    /// Adds what was counted since the last call to the shared counters.
    fn count(&mut self) {
        let c = &self.counters;
        c.rows.fetch_add(std::mem::take(&mut self.rows), Relaxed);
        c.files_done
            .fetch_add(std::mem::take(&mut self.files_done), Relaxed);
        c.newest.fetch_max(self.newest, Relaxed);
    }

    /// How many files are merged.
    pub fn files(&self) -> usize {
        self.streams.len()
    }

    /// The next item in event-time order (ties: file order), `None` when every file is done.
    /// A reading's cells are kept as row `self.given.len()`.
    fn next_taken(&mut self) -> anyhow::Result<Option<Taken>> {
        let Some(Reverse((_, i))) = self.heap.pop() else {
            return Ok(None);
        };
        let mut item = self.streams[i].head.take();
        if let Some(Taken::Reading { row, .. }) = &mut item {
            *row = self.given.len();
            let s = &mut self.streams[i];
            let mut record = self.spare.pop().unwrap_or_default();
            std::mem::swap(&mut record, &mut s.record);
            self.given.push(Given {
                stream: i,
                line: s.line,
                record,
            });
        }
        self.advance(i)?;
        Ok(item)
    }
}

impl aqyl_dataflow::input::Source for Merge {
    fn read(&mut self, out: &mut Vec<Taken>, max: usize) -> bool {
        // The last batch is done with: its records take the next rows.
        self.spare.extend(self.given.drain(..).map(|g| g.record));
        let mut more = true;
        while out.len() < max {
            match self.next_taken() {
                Ok(Some(item)) => out.push(item),
                Ok(None) => {
                    more = false;
                    break;
                }
                Err(e) => {
                    if let Ok(mut error) = self.counters.error.lock() {
                        error.get_or_insert(format!("{e:#}"));
                    }
                    more = false;
                    break;
                }
            }
        }
        self.count();
        more
    }

    fn message(&self, row: usize) -> RawMessage {
        let unknown = || RawMessage {
            topic: self.ty.topic.as_str().to_string(),
            payload: Vec::new(),
            received_at: 0,
        };
        let Some(g) = self.given.get(row) else {
            return unknown();
        };
        let s = &self.streams[g.stream];
        let fields = match &s.reader {
            Reader::Csv { rows, .. } => rows.fields_of(&g.record),
            // Only CSV rows are decoded here; other rows travel as messages.
            Reader::Other(_) => return unknown(),
        };
        let row = Row {
            line: g.line,
            data: Ok(RowData::Fields(fields)),
        };
        match row_item(&self.ty, &s.source.sensor, &s.name, row).1 {
            Item::Message(m) => m,
            Item::Rejected(d) => RawMessage {
                topic: d.topic,
                payload: d.payload.into_bytes(),
                received_at: 0,
            },
        }
    }
}

/// The reading of a CSV row of a JSON type, decoded from its cells as the decoder would
/// decode the row written as JSON; `None` when that needs the JSON (a row the decoder would
/// reject, or one that could be too long), which the caller then builds.
fn decode_cells(
    ty: &SensorType,
    (sensor, file_sensor): (&SensorOf, Option<&Arc<str>>),
    columns: &[(String, Option<usize>)],
    record: &csv::ByteRecord,
    max_payload: usize,
) -> Option<Observation> {
    // The JSON of a row is at most its cells escaped (6 bytes a byte) and its keys.
    if record.as_slice().len() * 6 + 64 * (record.len() + 1) >= max_payload {
        return None;
    }
    let cell = |key: &str| -> Option<&str> {
        let (_, column) = columns.iter().find(|(k, _)| k == key)?;
        std::str::from_utf8(record.get((*column)?)?).ok()
    };
    let row_sensor: Arc<str>;
    let topic_id = match sensor {
        SensorOf::File(_) => file_sensor?,
        SensorOf::Field { .. } => {
            let key = ty.sensor_id_field.as_ref()?.top_level_key()?;
            match cell(key) {
                // The row's own id, when it can name a topic as it is.
                Some(id) => {
                    let id = id.trim();
                    validate_sensor_id(id).ok()?;
                    row_sensor = Arc::from(id);
                    &row_sensor
                }
                None => file_sensor?,
            }
        }
    };
    observe_cells(ty, topic_id, cell)
}

/// `ty` with names of its own (the type's and its fields'): the readings one worker decodes
/// then share no reference count with another worker's. (An `Arc` cloned and dropped for
/// every reading on two cores at once passes its cache line back and forth between them;
/// the profile showed those few instructions among the hottest of a replay.)
fn own_names(mut ty: SensorType) -> SensorType {
    ty.name = Arc::from(&*ty.name);
    for field in &mut ty.fields {
        field.name = Arc::from(&*field.name);
    }
    ty
}

fn open_rows(source: &Source, ty: &SensorType, max_payload: usize) -> anyhow::Result<Reader> {
    let path = &source.path;
    let fail = |e: std::io::Error| anyhow::anyhow!("cannot read {}: {e}", path.display());
    let file = BufReader::with_capacity(1 << 16, std::fs::File::open(path).map_err(fail)?);
    Ok(match source.format {
        FileFormat::Csv => {
            let delimiter = match &ty.format {
                PayloadFormat::Csv { delimiter, .. } => *delimiter,
                _ => b',',
            };
            let rows = CsvRows::new(file, delimiter).map_err(fail)?;
            let columns = rows.columns(ty.json_keys.as_deref().unwrap_or_default());
            Reader::Csv { rows, columns }
        }
        FileFormat::JsonLines => Reader::Other(Box::new(JsonLines::new(file))),
        FileFormat::Senml => {
            Reader::Other(Box::new(SenmlRows::new(file, max_payload).map_err(fail)?))
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use aqyl_dataflow::input::Source as _;
    use std::path::Path;

    fn ty(text: &str) -> SensorType {
        SensorType::from_toml(Path::new("t.toml"), text).unwrap()
    }

    const TRAFFIC: &str = "name = \"traffic\"\nsensor_id_field = \"/REPORT_ID\"\n[time]\nfield = \"/TIMESTAMP\"\nformat = \"%Y-%m-%dT%H:%M:%S\"\ntimezone = \"Europe/Copenhagen\"\n[[fields]]\nname = \"avgSpeed\"\n";

    /// The row of a CSV file holding `pairs` (column, value), as read at line 7.
    fn csv_row(pairs: &[(&str, &str)]) -> Row {
        let mut w = csv::Writer::from_writer(Vec::new());
        w.write_record(pairs.iter().map(|p| p.0)).unwrap();
        w.write_record(pairs.iter().map(|p| p.1)).unwrap();
        let text = w.into_inner().unwrap();
        let mut rows = CsvRows::new(text.as_slice(), b',').unwrap();
        Row {
            line: 7,
            ..rows.next_row().unwrap().unwrap()
        }
    }

    #[test]
    fn a_csv_row_becomes_the_message_a_sensor_would_publish() {
        let t = ty(TRAFFIC);
        let row = csv_row(&[
            ("TIMESTAMP", "2014-08-01T07:50:00"),
            ("avgSpeed", "50"),
            ("REPORT_ID", "158324"),
        ]);
        let (time, item) = row_item(&t, &SensorOf::Field { fallback: None }, "a.csv", row);
        assert_eq!(time, Some(1_406_872_200_000));
        let Item::Message(m) = item else {
            panic!("{item:?}")
        };
        assert_eq!(m.topic, "city/traffic/158324");
        let v: Value = serde_json::from_slice(&m.payload).unwrap();
        assert_eq!(v["avgSpeed"], "50");
        // And the decoder takes it (numbers written as strings are numbers).
        let obs = aqyl_core::ingest::decode::Registry::new(vec![t])
            .decode(&m, 1 << 16)
            .unwrap();
        assert_eq!(obs[0].fields, vec![("avgSpeed".into(), 50.0)]);
    }

    #[test]
    fn a_row_without_its_sensor_id_is_dead_lettered_with_file_and_line() {
        let t = ty(TRAFFIC);
        let row = csv_row(&[("TIMESTAMP", "2014-08-01T07:50:00"), ("avgSpeed", "50")]);
        let (_, item) = row_item(&t, &SensorOf::Field { fallback: None }, "dir/a.csv", row);
        let Item::Rejected(d) = item else {
            panic!("{item:?}")
        };
        assert_eq!(d.reason, Reason::MissingField);
        assert!(
            d.detail.starts_with("dir/a.csv:7: the sensor id"),
            "{}",
            d.detail
        );
        // With a file-name sensor to fall back on, the row is that sensor's.
        let row = csv_row(&[("TIMESTAMP", "2014-08-01T07:50:00"), ("avgSpeed", "50")]);
        let fallback = SensorOf::Field {
            fallback: Some("9".into()),
        };
        let (_, item) = row_item(&t, &fallback, "dir/a.csv", row);
        assert!(matches!(item, Item::Message(m) if m.topic == "city/traffic/9"));
        let bad = Row {
            line: 3,
            data: Ok(RowData::Text(b"{not json".to_vec())),
        };
        let (_, item) = row_item(&t, &SensorOf::Field { fallback: None }, "b.jsonl", bad);
        assert!(matches!(item, Item::Rejected(d) if d.reason == Reason::MalformedJson));
    }

    #[test]
    fn a_file_named_sensor_keeps_a_bad_json_line_for_the_decoder() {
        let t = ty(&TRAFFIC.replace("sensor_id_field = \"/REPORT_ID\"\n", ""));
        let row = Row {
            line: 1,
            data: Ok(RowData::Text(b"{\"avgSpeed\":".to_vec())),
        };
        let (time, item) = row_item(&t, &SensorOf::File("9".into()), "x.jsonl", row);
        assert_eq!(time, None);
        let Item::Message(m) = item else {
            panic!("{item:?}")
        };
        assert_eq!(m.topic, "city/traffic/9");
        assert_eq!(m.payload, b"{\"avgSpeed\":");
    }

    #[test]
    fn a_csv_type_gets_its_columns_as_one_line_and_senml_keeps_its_pack() {
        let counter = ty("name = \"counter\"\nformat = \"csv\"\ncolumns = [\"ts\", \"lane\", \"count\"]\n[time]\nfield = \"/ts\"\nformat = \"rfc3339\"\n[[fields]]\nname = \"count\"\n");
        let row = csv_row(&[
            ("count", "17"),
            ("ts", "2014-08-01T00:05:00Z"),
            ("lane", "left, outer"),
        ]);
        let (time, item) = row_item(&counter, &SensorOf::File("a".into()), "c.csv", row);
        assert_eq!(time, Some(1_406_851_500_000));
        let Item::Message(m) = item else {
            panic!("{item:?}")
        };
        assert_eq!(m.payload, b"2014-08-01T00:05:00Z,\"left, outer\",17");
        let noise = ty("name = \"noise\"\nformat = \"senml\"\n[[fields]]\nname = \"laeq\"\n");
        let pack = br#"[{"bt":1406851200,"n":"laeq","v":61.5}]"#.to_vec();
        let row = Row {
            line: 1,
            data: Ok(RowData::Text(pack.clone())),
        };
        let (time, item) = row_item(&noise, &SensorOf::File("7".into()), "n.json", row);
        assert_eq!(time, Some(1_406_851_200_000));
        assert!(matches!(item, Item::Message(m) if m.payload == pack && m.topic == "city/noise/7"));
    }

    #[test]
    fn files_are_merged_by_event_time_each_in_its_own_order() {
        let dir = tempfile::tempdir().unwrap();
        let t = ty(TRAFFIC);
        let write = |name: &str, rows: &[(&str, u32)]| {
            let mut text = String::from("TIMESTAMP,avgSpeed,REPORT_ID\n");
            for (ts, id) in rows {
                text.push_str(&format!("2014-08-01T{ts}:00,50,{id}\n"));
            }
            let path = dir.path().join(name);
            std::fs::write(&path, text).unwrap();
            Source {
                path,
                format: FileFormat::Csv,
                sensor: SensorOf::Field { fallback: None },
            }
        };
        // b.csv jumps back (08:10 after 08:20): it stays right after its predecessor.
        let a = write("a.csv", &[("08:00", 1), ("08:15", 1), ("08:30", 1)]);
        let b = write(
            "b.csv",
            &[("08:05", 2), ("08:20", 2), ("08:10", 2), ("08:25", 2)],
        );
        let counters = Arc::new(Counters::default());
        let mut merge = Merge::open(t, vec![a, b], 1 << 16, counters.clone()).unwrap();
        let mut order = Vec::new();
        let mut more = true;
        while more {
            let mut batch = Vec::new();
            // Small batches: a row's message stays available until the next batch.
            more = merge.read(&mut batch, 3);
            for item in batch {
                let Taken::Reading { obs, row } = item else {
                    panic!("{item:?}")
                };
                // 08:00 in Copenhagen in August is 06:00 UTC.
                let minutes = (obs.event_time - 1_406_872_800_000) / 60_000;
                order.push(format!(
                    "{}@{:02}:{:02}",
                    obs.sensor_id,
                    8 + minutes / 60,
                    minutes % 60
                ));
                let m = merge.message(row);
                let v: Value = serde_json::from_slice(&m.payload).unwrap();
                assert_eq!(v["REPORT_ID"].as_str(), Some(&*obs.sensor_id));
                assert_eq!(m.topic, format!("city/traffic/{}", obs.sensor_id));
            }
        }
        assert_eq!(
            order,
            ["1@08:00", "2@08:05", "1@08:15", "2@08:20", "2@08:10", "2@08:25", "1@08:30"]
        );
        let files_done = counters.files_done.load(Relaxed);
        assert_eq!((counters.rows.load(Relaxed), files_done), (7, 2));
    }
}
