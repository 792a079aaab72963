//! Replay of the CityPulse Aarhus CSV files as messages, one ordered stream per sensor.
//!
//! Files are read lazily (one row ahead per file), so memory does not grow with the data.
//! Streams are merged by timestamp; each stream keeps its file order, and its pacing time
//! never goes backwards (a row whose timestamp jumps back, as happens once in each real traffic
//! file, is sent right after its predecessor instead of being reordered). `dedup` drops such
//! rows and exact duplicate timestamps instead. Gaps in the data are simply waited through when
//! paced.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::fs::File;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use serde_json::Value;

use crate::error::{Error, Result};
use crate::payload::{csv_value, Fields, Payload};
use crate::sensors::SensorType;
use crate::simulation::Message;
use crate::time::parse_local;

/// Where a type's files live and how its rows are keyed.
#[derive(Debug, Clone, Copy)]
struct Layout {
    dir: &'static str,
    prefix: &'static str,
    time_column: &'static str,
    /// Column naming the sensor when one file holds several (the all-garages parking file).
    id_column: &'static str,
}

fn layout(kind: SensorType) -> Option<Layout> {
    Some(match kind {
        SensorType::Traffic => Layout {
            dir: "traffic",
            prefix: "AarhusTrafficData",
            time_column: "TIMESTAMP",
            id_column: "REPORT_ID",
        },
        SensorType::Parking => Layout {
            dir: "parking",
            prefix: "AarhusParkingData",
            time_column: "updatetime",
            id_column: "garagecode",
        },
        SensorType::Pollution => Layout {
            dir: "pollution",
            prefix: "AarhusPollutionData",
            time_column: "timestamp",
            id_column: "",
        },
        SensorType::Weather => Layout {
            dir: "weather",
            prefix: "AarhusWeatherData",
            time_column: "TIMESTAMP",
            id_column: "",
        },
        SensorType::Noise => return None,
    })
}

/// One CSV file to replay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceFile {
    /// Its path.
    pub path: PathBuf,
    /// Sensor type.
    pub kind: SensorType,
    /// Sensor id from the file name; `None` for a file holding several sensors.
    pub id: Option<String>,
}

/// Finds the files of `types` under `dir` (`dir/traffic/AarhusTrafficData<REPORT_ID>.csv`,
/// `dir/parking/AarhusParkingData<GARAGE>.csv`, `dir/pollution/AarhusPollutionData<ID>.csv`,
/// `dir/weather/AarhusWeatherData<ID>.csv`), sorted by path. The combined
/// `AarhusParkingData.csv` is used only when there are no per-garage files.
pub fn discover(dir: &Path, types: &[SensorType]) -> Result<Vec<SourceFile>> {
    let mut out = Vec::new();
    for &kind in types {
        let lay = layout(kind).ok_or_else(|| {
            Error::Invalid(format!("there is no CityPulse data for {kind} to replay"))
        })?;
        let sub = dir.join(lay.dir);
        let entries = std::fs::read_dir(&sub).map_err(|source| Error::Io {
            path: sub.clone(),
            source,
        })?;
        let mut files = Vec::new();
        for entry in entries {
            let path = entry
                .map_err(|source| Error::Io {
                    path: sub.clone(),
                    source,
                })?
                .path();
            let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
                continue;
            };
            let Some(id) = name
                .strip_prefix(lay.prefix)
                .and_then(|r| r.strip_suffix(".csv"))
            else {
                continue;
            };
            files.push(SourceFile {
                kind,
                id: (!id.is_empty()).then(|| id.to_owned()),
                path: path.clone(),
            });
        }
        if files.iter().any(|f| f.id.is_some()) {
            files.retain(|f| f.id.is_some());
        }
        if files.is_empty() {
            return Err(Error::Invalid(format!(
                "no {kind} files under {} (expected {}<ID>.csv)",
                sub.display(),
                lay.prefix
            )));
        }
        files.sort_by(|a, b| a.path.cmp(&b.path));
        out.extend(files);
    }
    Ok(out)
}

/// Replay settings.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ReplayOptions {
    /// Read at most this many rows per file.
    pub limit: Option<usize>,
    /// Drop rows whose timestamp is not after the stream's latest one.
    pub dedup: bool,
}

/// Counters of what the replay skipped.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReplayCounters {
    /// Rows sent.
    pub rows: u64,
    /// Rows with a timestamp that did not parse (sent, paced with their predecessor).
    pub bad_time: u64,
    /// Rows whose timestamp went backwards or repeated.
    pub out_of_order: u64,
    /// Rows dropped by `dedup`.
    pub dropped: u64,
    /// Rows the CSV reader rejected (wrong number of fields).
    pub bad_rows: u64,
}

#[derive(Debug)]
struct Stream {
    file: SourceFile,
    reader: csv::Reader<File>,
    headers: Vec<String>,
    time_col: Option<usize>,
    id_col: Option<usize>,
    read: usize,
    pace: Option<DateTime<Utc>>,
    latest: Option<DateTime<Utc>>,
    pending: Option<Pending>,
}

#[derive(Debug)]
struct Pending {
    fields: Fields,
    id: String,
    time: Option<DateTime<Utc>>,
    pace: DateTime<Utc>,
}

/// The merged replay: an iterator of [`Message`]s whose `due` is the pacing time.
#[derive(Debug)]
pub struct Replay {
    streams: Vec<Stream>,
    heap: BinaryHeap<Reverse<(DateTime<Utc>, usize)>>,
    seqs: HashMap<String, u64>,
    keys: HashMap<String, usize>,
    options: ReplayOptions,
    counters: ReplayCounters,
}

impl Replay {
    /// Opens `files` and reads the first row of each.
    pub fn open(files: Vec<SourceFile>, options: ReplayOptions) -> Result<Replay> {
        let mut replay = Replay {
            streams: Vec::new(),
            heap: BinaryHeap::new(),
            seqs: HashMap::new(),
            keys: HashMap::new(),
            options,
            counters: ReplayCounters::default(),
        };
        for file in files {
            let csv_err = |e: csv::Error| Error::Csv {
                path: file.path.clone(),
                message: e.to_string(),
            };
            let mut reader = csv::ReaderBuilder::new()
                .flexible(false)
                .from_path(&file.path)
                .map_err(csv_err)?;
            let headers: Vec<String> = reader
                .headers()
                .map_err(csv_err)?
                .iter()
                .map(|h| h.trim().to_owned())
                .collect();
            let lay = layout(file.kind)
                .ok_or_else(|| Error::Invalid(format!("cannot replay {}", file.kind)))?;
            let time_col = headers.iter().position(|h| h == lay.time_column);
            let id_col = headers.iter().position(|h| h == lay.id_column);
            if time_col.is_none() {
                return Err(Error::Csv {
                    path: file.path.clone(),
                    message: format!(
                        "no {} column in the header {:?}",
                        lay.time_column,
                        headers.join(",")
                    ),
                });
            }
            if file.id.is_none() && id_col.is_none() {
                return Err(Error::Csv {
                    path: file.path.clone(),
                    message: format!("no {} column to tell sensors apart", lay.id_column),
                });
            }
            let idx = replay.streams.len();
            replay.streams.push(Stream {
                file,
                reader,
                headers,
                time_col,
                id_col,
                read: 0,
                pace: None,
                latest: None,
                pending: None,
            });
            replay.advance(idx)?;
        }
        Ok(replay)
    }

    /// What was sent and skipped so far.
    pub fn counters(&self) -> &ReplayCounters {
        &self.counters
    }

    /// Number of streams (files).
    pub fn streams(&self) -> usize {
        self.streams.len()
    }

    /// Reads the next usable row of stream `idx` into its `pending` slot.
    fn advance(&mut self, idx: usize) -> Result<()> {
        let stream = &mut self.streams[idx];
        stream.pending = None;
        let mut record = csv::StringRecord::new();
        loop {
            if self.options.limit.is_some_and(|l| stream.read >= l) {
                return Ok(());
            }
            match stream.reader.read_record(&mut record) {
                Ok(false) => return Ok(()),
                Ok(true) => {}
                Err(e) if matches!(e.kind(), csv::ErrorKind::UnequalLengths { .. }) => {
                    stream.read += 1;
                    self.counters.bad_rows += 1;
                    continue;
                }
                Err(e) => {
                    return Err(Error::Csv {
                        path: stream.file.path.clone(),
                        message: e.to_string(),
                    })
                }
            }
            stream.read += 1;
            let time = stream
                .time_col
                .and_then(|c| record.get(c))
                .and_then(parse_local);
            if time.is_none() {
                self.counters.bad_time += 1;
            }
            if let (Some(t), Some(latest)) = (time, stream.latest) {
                if t <= latest {
                    self.counters.out_of_order += 1;
                    if self.options.dedup {
                        self.counters.dropped += 1;
                        continue;
                    }
                }
            }
            let Some(pace) = stream.pace.max(time).or(stream.pace).or(time) else {
                // Rows before the first parsable timestamp have nothing to be paced by.
                self.counters.dropped += 1;
                continue;
            };
            stream.pace = Some(pace);
            stream.latest = stream.latest.max(time);
            let mut fields = Fields::with_capacity(stream.headers.len() + 2);
            for (h, cell) in stream.headers.iter().zip(record.iter()) {
                fields.push(h, csv_value(cell));
            }
            let id = match (&stream.file.id, stream.id_col.and_then(|c| record.get(c))) {
                (Some(id), _) => id.clone(),
                (None, Some(id)) => id.trim().to_owned(),
                (None, None) => String::new(),
            };
            stream.pending = Some(Pending {
                fields,
                id,
                time,
                pace,
            });
            self.heap.push(Reverse((pace, idx)));
            return Ok(());
        }
    }

    fn next_row(&mut self) -> Result<Option<Message>> {
        let Some(Reverse((_, idx))) = self.heap.pop() else {
            return Ok(None);
        };
        let Some(p) = self.streams[idx].pending.take() else {
            return Ok(None);
        };
        let kind = self.streams[idx].file.kind;
        self.advance(idx)?;
        let topic = format!("city/{kind}/{}", p.id);
        let seq = self.seqs.entry(topic.clone()).or_insert(0);
        let this_seq = *seq;
        *seq += 1;
        let n = self.keys.len();
        let key = *self.keys.entry(topic.clone()).or_insert(n);
        self.counters.rows += 1;
        Ok(Some(Message {
            topic,
            sensor: key,
            sensor_type: kind,
            seq: this_seq,
            event_time: p.time.unwrap_or(p.pace),
            due: p.pace,
            payload: Payload::Object(p.fields),
            truncate: None,
        }))
    }
}

impl Iterator for Replay {
    type Item = Result<Message>;

    fn next(&mut self) -> Option<Result<Message>> {
        self.next_row().transpose()
    }
}

/// The id column's value in a row, for tests and summaries.
pub fn row_id(fields: &Fields, kind: SensorType) -> Option<String> {
    let col = layout(kind)?.id_column;
    match fields.get(col)? {
        Value::String(s) => Some(s.clone()),
        v => Some(v.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    const TRAFFIC_HEADER: &str = "status,avgMeasuredTime,avgSpeed,extID,medianMeasuredTime,TIMESTAMP,vehicleCount,_id,REPORT_ID";

    fn write(dir: &Path, rel: &str, lines: &[String]) -> Result<()> {
        let path = dir.join(rel);
        let io = |source| Error::Io {
            path: path.clone(),
            source,
        };
        std::fs::create_dir_all(path.parent().unwrap_or(dir)).map_err(io)?;
        let mut f = File::create(&path).map_err(io)?;
        for l in lines {
            // CRLF, as in the real files.
            write!(f, "{l}\r\n").map_err(io)?;
        }
        Ok(())
    }

    fn traffic(id: u32, times: &[&str]) -> Vec<String> {
        let mut v = vec![TRAFFIC_HEADER.to_owned()];
        for (i, t) in times.iter().enumerate() {
            v.push(format!(
                "OK,74,{},668,74,{t},{},{},{id}",
                50 + i,
                i,
                1000 + i
            ));
        }
        v
    }

    fn fixture() -> Result<tempfile::TempDir> {
        let dir = tempfile::tempdir().map_err(|source| Error::Io {
            path: "tmp".into(),
            source,
        })?;
        // Sensor 1: a duplicate and a backwards jump, like the real files.
        write(
            dir.path(),
            "traffic/AarhusTrafficData1.csv",
            &traffic(
                1,
                &[
                    "2014-08-01T07:50:00",
                    "2014-08-01T07:55:00",
                    "2014-08-01T07:55:00",
                    "2014-08-01T08:05:00",
                    "2014-08-01T07:45:00",
                    "2014-08-01T08:10:00",
                ],
            ),
        )?;
        // Sensor 2: a gap.
        write(
            dir.path(),
            "traffic/AarhusTrafficData2.csv",
            &traffic(2, &["2014-08-01T07:52:00", "2014-08-01T08:30:00"]),
        )?;
        write(
            dir.path(),
            "parking/AarhusParkingData.csv",
            &[
                "vehiclecount,updatetime,_id,totalspaces,garagecode,streamtime".to_owned(),
                "22,2014-05-22 09:09:04.145,4,953,BRUUNS,2014-11-03 16:18:44".to_owned(),
                "5,2014-05-22 09:09:04.145,5,65,NORREPORT,2014-11-03 16:18:44".to_owned(),
                "23,2014-05-22 09:39:01.803,12,953,BRUUNS,2014-11-03 16:18:44".to_owned(),
            ],
        )?;
        Ok(dir)
    }

    fn collect(
        dir: &Path,
        types: &[SensorType],
        options: ReplayOptions,
    ) -> Result<(Vec<Message>, ReplayCounters)> {
        let mut r = Replay::open(discover(dir, types)?, options)?;
        let msgs = r.by_ref().collect::<Result<Vec<_>>>()?;
        Ok((msgs, r.counters().clone()))
    }

    #[test]
    fn replay_preserves_per_sensor_order_and_timestamps() -> Result<()> {
        let dir = fixture()?;
        let (msgs, counters) =
            collect(dir.path(), &[SensorType::Traffic], ReplayOptions::default())?;
        assert_eq!(msgs.len(), 8);
        let stamps = |topic: &str| -> Vec<String> {
            msgs.iter()
                .filter(|m| m.topic == topic)
                .filter_map(|m| {
                    m.payload
                        .fields()
                        .and_then(|f| f.get("TIMESTAMP"))
                        .and_then(|v| v.as_str().map(str::to_owned))
                })
                .collect()
        };
        assert_eq!(
            stamps("city/traffic/1"),
            [
                "2014-08-01T07:50:00",
                "2014-08-01T07:55:00",
                "2014-08-01T07:55:00",
                "2014-08-01T08:05:00",
                "2014-08-01T07:45:00",
                "2014-08-01T08:10:00"
            ]
        );
        assert_eq!(
            stamps("city/traffic/2"),
            ["2014-08-01T07:52:00", "2014-08-01T08:30:00"]
        );
        // Merged by time across sensors, never backwards.
        assert!(msgs.windows(2).all(|w| w[0].due <= w[1].due));
        assert_eq!(msgs[1].topic, "city/traffic/2");
        assert_eq!(
            msgs.last().map(|m| m.topic.as_str()),
            Some("city/traffic/2")
        );
        // Sequence numbers per sensor, numbers as JSON numbers, header order kept.
        let seqs: Vec<u64> = msgs
            .iter()
            .filter(|m| m.topic == "city/traffic/1")
            .map(|m| m.seq)
            .collect();
        assert_eq!(seqs, [0, 1, 2, 3, 4, 5]);
        let text = String::from_utf8(msgs[0].encode(None)).unwrap_or_default();
        assert_eq!(
            text,
            r#"{"status":"OK","avgMeasuredTime":74,"avgSpeed":50,"extID":668,"medianMeasuredTime":74,"TIMESTAMP":"2014-08-01T07:50:00","vehicleCount":0,"_id":1000,"REPORT_ID":1}"#
        );
        assert_eq!(counters.out_of_order, 2);
        Ok(())
    }

    #[test]
    fn dedup_and_limit() -> Result<()> {
        let dir = fixture()?;
        let (msgs, counters) = collect(
            dir.path(),
            &[SensorType::Traffic],
            ReplayOptions {
                dedup: true,
                limit: None,
            },
        )?;
        assert_eq!(msgs.len(), 6);
        assert_eq!(counters.dropped, 2);
        let (msgs, _) = collect(
            dir.path(),
            &[SensorType::Traffic],
            ReplayOptions {
                dedup: false,
                limit: Some(1),
            },
        )?;
        assert_eq!(msgs.len(), 2);
        Ok(())
    }

    #[test]
    fn the_combined_parking_file_is_split_by_garage() -> Result<()> {
        let dir = fixture()?;
        let (msgs, _) = collect(dir.path(), &[SensorType::Parking], ReplayOptions::default())?;
        let topics: Vec<_> = msgs.iter().map(|m| (m.topic.as_str(), m.seq)).collect();
        assert_eq!(
            topics,
            [
                ("city/parking/BRUUNS", 0),
                ("city/parking/NORREPORT", 0),
                ("city/parking/BRUUNS", 1)
            ]
        );
        assert_eq!(
            row_id(
                msgs[1].payload.fields().unwrap_or(&Fields::new()),
                SensorType::Parking
            ),
            Some("NORREPORT".into())
        );
        Ok(())
    }

    #[test]
    fn a_missing_directory_is_a_clear_error() {
        let err = discover(Path::new("/nonexistent"), &[SensorType::Weather])
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("/nonexistent/weather"), "{err}");
    }
}
