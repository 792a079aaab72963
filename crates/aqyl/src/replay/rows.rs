//! Row readers for `aqyl replay`: CSV with a header line, JSON lines, and SenML packs (one per
//! line, or one per file). Each reads one row at a time from a buffered reader, so memory does
//! not grow with the file; a bad row is returned as an error for that row, never fatal.

use serde_json::{Map, Value};
use std::io::{BufRead, Read};
use std::sync::Arc;

/// What a row holds.
#[derive(Debug, Clone, PartialEq)]
pub enum RowData {
    /// A CSV row: values by column name, every value a string as written.
    Fields(CsvFields),
    /// A JSON line or SenML pack, as read (parsed later by whoever needs it).
    Text(Vec<u8>),
}

/// One row of a file.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    /// Line number (1-based) where the row starts.
    pub line: u64,
    /// The row, or why it could not be read (the reason is always a CSV one: JSON text is
    /// judged by the decoder).
    pub data: Result<RowData, String>,
}

/// The column names of a CSV file, shared by its rows.
#[derive(Debug, PartialEq)]
pub struct Header {
    names: Vec<String>,
    /// The row as a JSON object, in the order `serde_json` writes a map (sorted keys; a
    /// repeated name keeps its last column): each key written as JSON with its colon, and
    /// the column of its value.
    json_keys: Vec<(String, usize)>,
}

impl Header {
    fn new(names: Vec<String>) -> Self {
        let mut order: Vec<usize> = (0..names.len()).collect();
        order.sort_by(|a, b| names[*a].cmp(&names[*b]).then(b.cmp(a)));
        order.dedup_by(|later, first| names[*later] == names[*first]);
        let json_keys = order
            .into_iter()
            .map(|i| {
                let key = serde_json::to_string(&names[i]).unwrap_or_default();
                (format!("{key}:"), i)
            })
            .collect();
        Self { names, json_keys }
    }
}

/// The cells of a CSV row (checked to be UTF-8 and as many as the header's names), read as an
/// object keyed by column name without building one: a replay writes it straight to JSON.
#[derive(Debug, Clone, PartialEq)]
pub struct CsvFields {
    header: Arc<Header>,
    cells: csv::ByteRecord,
}

impl CsvFields {
    fn cell(&self, i: usize) -> &str {
        // Checked when read (CsvRows::next_record).
        std::str::from_utf8(&self.cells[i]).unwrap_or_default()
    }

    /// The value of column `name` (the last of that name).
    pub fn get(&self, name: &str) -> Option<&str> {
        let names = &self.header.names;
        (0..names.len())
            .rev()
            .find(|i| names[*i] == name)
            .map(|i| self.cell(i))
    }

    /// The row as a JSON object of strings.
    pub fn object(&self) -> Map<String, Value> {
        self.header
            .names
            .iter()
            .enumerate()
            .map(|(i, name)| (name.clone(), Value::String(self.cell(i).to_string())))
            .collect()
    }

    /// The object of only the columns `keys`, for reading a few of them as JSON.
    pub fn project(&self, keys: &[&str]) -> Map<String, Value> {
        keys.iter()
            .filter_map(|k| Some((k.to_string(), Value::String(self.get(k)?.to_string()))))
            .collect()
    }

    /// Appends the row as JSON, the bytes `serde_json` writes for [`CsvFields::object`].
    pub fn write_json(&self, out: &mut Vec<u8>) {
        out.push(b'{');
        for (n, (key, i)) in self.header.json_keys.iter().enumerate() {
            if n > 0 {
                out.push(b',');
            }
            out.extend_from_slice(key.as_bytes());
            let _ = serde_json::to_writer(&mut *out, self.cell(*i));
        }
        out.push(b'}');
    }
}

/// Reads a file's rows.
pub trait Rows {
    /// The next row; `Ok(None)` at the end; `Err` when the file itself cannot be read on.
    fn next_row(&mut self) -> std::io::Result<Option<Row>>;
}

/// CSV rows keyed by the header line.
pub struct CsvRows<R: Read> {
    reader: csv::Reader<R>,
    header: Arc<Header>,
    record: csv::ByteRecord,
}

impl<R: Read> CsvRows<R> {
    /// Reads the header line; an empty file or a header that is not UTF-8 is an error.
    pub fn new(input: R, delimiter: u8) -> std::io::Result<Self> {
        let mut reader = csv::ReaderBuilder::new()
            .has_headers(true)
            .flexible(true)
            .delimiter(delimiter)
            .from_reader(input);
        let header: Vec<String> = reader
            .headers()
            .map_err(csv_io)?
            .iter()
            // A byte-order mark (spreadsheet exports) is not part of the first name.
            .map(|h| h.trim_start_matches('\u{feff}').trim().to_string())
            .collect();
        if header.iter().all(String::is_empty) {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "no header line: a CSV file starts with its column names",
            ));
        }
        Ok(Self {
            reader,
            header: Arc::new(Header::new(header)),
            record: csv::ByteRecord::new(),
        })
    }

    /// The column names.
    pub fn header(&self) -> &[String] {
        &self.header.names
    }

    /// The column of each of `keys` (the last of that name), `None` for a key that is no
    /// column.
    pub fn columns(&self, keys: &[String]) -> Vec<(String, Option<usize>)> {
        let names = &self.header.names;
        keys.iter()
            .map(|k| (k.clone(), (0..names.len()).rev().find(|i| names[*i] == *k)))
            .collect()
    }

    /// Checks a record read by [`CsvRows::next_record`]: as many cells as names, each UTF-8.
    fn check(&self, record: &csv::ByteRecord) -> Result<(), String> {
        let names = &self.header.names;
        if record.len() != names.len() {
            return Err(format!(
                "expected {} columns ({}), got {}",
                names.len(),
                names.join(","),
                record.len()
            ));
        }
        if record.as_slice().is_ascii() {
            return Ok(());
        }
        for (name, cell) in names.iter().zip(record.iter()) {
            std::str::from_utf8(cell).map_err(|_| format!("column {name:?} is not UTF-8"))?;
        }
        Ok(())
    }

    /// The fields of a record [`CsvRows::next_record`] read and checked.
    pub fn fields_of(&self, record: &csv::ByteRecord) -> CsvFields {
        CsvFields {
            header: self.header.clone(),
            cells: record.clone(),
        }
    }

    /// Reads the next row into `record`, reusing its memory: `Ok(None)` at the end,
    /// `Ok(Some(Ok(line)))` a row with its line number whose cells are checked, and
    /// `Ok(Some(Err(row)))` a row that cannot be read (as [`Rows::next_row`] gives it).
    pub fn next_record(
        &mut self,
        record: &mut csv::ByteRecord,
    ) -> std::io::Result<Option<Result<u64, Row>>> {
        loop {
            match self.reader.read_byte_record(record) {
                Ok(false) => return Ok(None),
                Ok(true) => {
                    let line = record.position().map_or(0, |p| p.line());
                    // A blank line is no row (the csv crate skips most; a lone space is not).
                    if record.len() == 1 && record[0].trim_ascii().is_empty() {
                        continue;
                    }
                    return Ok(Some(match self.check(record) {
                        Ok(()) => Ok(line),
                        Err(e) => Err(Row { line, data: Err(e) }),
                    }));
                }
                Err(e) => {
                    let line = e.position().map_or(0, |p| p.line());
                    if let csv::ErrorKind::Io(_) = e.kind() {
                        return Err(csv_io(e));
                    }
                    return Ok(Some(Err(Row {
                        line,
                        data: Err(format!("not a CSV row: {e}")),
                    })));
                }
            }
        }
    }
}

/// A CSV error is an I/O error of the file when it is one; a malformed row is reported per row.
fn csv_io(e: csv::Error) -> std::io::Error {
    match e.into_kind() {
        csv::ErrorKind::Io(e) => e,
        other => std::io::Error::new(std::io::ErrorKind::InvalidData, format!("{other:?}")),
    }
}

impl<R: Read> Rows for CsvRows<R> {
    fn next_row(&mut self) -> std::io::Result<Option<Row>> {
        let mut record = std::mem::take(&mut self.record);
        let row = self.next_record(&mut record).map(|r| {
            r.map(|r| match r {
                Ok(line) => Row {
                    line,
                    data: Ok(RowData::Fields(self.fields_of(&record))),
                },
                Err(row) => row,
            })
        });
        self.record = record;
        row
    }
}

/// One JSON text per line (JSON lines, or SenML packs one per line); blank lines are skipped.
pub struct JsonLines<R: BufRead> {
    input: R,
    line: u64,
    buf: Vec<u8>,
}

impl<R: BufRead> JsonLines<R> {
    /// Reads lines from `input`.
    pub fn new(input: R) -> Self {
        Self {
            input,
            line: 0,
            buf: Vec::new(),
        }
    }
}

impl<R: BufRead> Rows for JsonLines<R> {
    fn next_row(&mut self) -> std::io::Result<Option<Row>> {
        loop {
            self.buf.clear();
            if self.input.read_until(b'\n', &mut self.buf)? == 0 {
                return Ok(None);
            }
            self.line += 1;
            let text = self.buf.trim_ascii();
            if text.is_empty() {
                continue;
            }
            return Ok(Some(Row {
                line: self.line,
                data: Ok(RowData::Text(text.to_vec())),
            }));
        }
    }
}

/// SenML: a pack per line, or (when the first line is not a whole JSON text) the whole file as
/// one pack, read up to `limit` bytes (a longer pack is cut, and the decoder rejects it as
/// oversized).
pub enum SenmlRows<R: BufRead> {
    /// One pack per line (the first line, already read, is put back in front).
    Lines(JsonLines<std::io::Chain<std::io::Cursor<Vec<u8>>, R>>),
    /// The file is one pack, not yet returned.
    Whole(Option<Vec<u8>>),
}

impl<R: BufRead> SenmlRows<R> {
    /// Looks at the first non-blank line to tell the layouts apart.
    pub fn new(mut input: R, limit: usize) -> std::io::Result<Self> {
        let mut first = Vec::new();
        let mut skipped = 0u64;
        loop {
            first.clear();
            if input.read_until(b'\n', &mut first)? == 0 {
                return Ok(Self::Whole(None));
            }
            if !first.trim_ascii().is_empty() {
                break;
            }
            skipped += 1;
        }
        if serde_json::from_slice::<serde::de::IgnoredAny>(first.trim_ascii()).is_ok() {
            let mut lines = JsonLines::new(std::io::Cursor::new(first).chain(input));
            lines.line = skipped;
            return Ok(Self::Lines(lines));
        }
        let mut whole = first;
        input
            .take((limit as u64 + 1).saturating_sub(whole.len() as u64))
            .read_to_end(&mut whole)?;
        Ok(Self::Whole(Some(whole)))
    }
}

impl<R: BufRead> Rows for SenmlRows<R> {
    fn next_row(&mut self) -> std::io::Result<Option<Row>> {
        match self {
            Self::Lines(lines) => lines.next_row(),
            Self::Whole(pack) => Ok(pack.take().map(|p| Row {
                line: 1,
                data: Ok(RowData::Text(p.trim_ascii().to_vec())),
            })),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(rows: &mut dyn Rows) -> Vec<Row> {
        std::iter::from_fn(|| rows.next_row().unwrap()).collect()
    }

    fn fields(pairs: &[(&str, &str)]) -> Map<String, Value> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), Value::String(v.to_string())))
            .collect()
    }

    fn object(data: &Result<RowData, String>) -> Result<Map<String, Value>, String> {
        match data {
            Ok(RowData::Fields(f)) => Ok(f.object()),
            Ok(other) => Err(format!("not CSV: {other:?}")),
            Err(e) => Err(e.clone()),
        }
    }

    #[test]
    fn csv_rows_write_the_json_serde_json_writes_for_their_object() {
        let text = "b,a,\u{e9}t\u{e9},a,q\n1,2,\"x\"\"y\",4,\"\\ \u{1}\"\n";
        let mut rows = CsvRows::new(text.as_bytes(), b',').unwrap();
        let Some(Row {
            data: Ok(RowData::Fields(f)),
            ..
        }) = rows.next_row().unwrap()
        else {
            panic!("no row")
        };
        let mut json = Vec::new();
        f.write_json(&mut json);
        assert_eq!(json, serde_json::to_vec(&f.object()).unwrap());
        assert_eq!(f.get("a"), Some("4"));
        assert_eq!(f.project(&["a", "zz"]), fields(&[("a", "4")]));
    }

    #[test]
    fn csv_rows_are_objects_of_strings_by_header() {
        let text = "TIMESTAMP,avgSpeed,REPORT_ID\n2014-08-01T07:50:00,50,158324\n2014-08-01T07:55:00,\"4,5\",158324\n";
        let mut rows = CsvRows::new(text.as_bytes(), b',').unwrap();
        assert_eq!(rows.header(), ["TIMESTAMP", "avgSpeed", "REPORT_ID"]);
        let got = all(&mut rows);
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].line, 2);
        assert_eq!(
            object(&got[0].data),
            Ok(fields(&[
                ("TIMESTAMP", "2014-08-01T07:50:00"),
                ("avgSpeed", "50"),
                ("REPORT_ID", "158324")
            ]))
        );
        assert_eq!(got[1].line, 3);
        assert_eq!(
            object(&got[1].data),
            Ok(fields(&[
                ("TIMESTAMP", "2014-08-01T07:55:00"),
                ("avgSpeed", "4,5"),
                ("REPORT_ID", "158324")
            ]))
        );
    }

    #[test]
    fn a_short_csv_row_is_a_row_error_and_the_next_row_still_reads() {
        let text = "a,b\n1,2\n3\n4,5\n";
        let got = all(&mut CsvRows::new(text.as_bytes(), b',').unwrap());
        assert_eq!(got.len(), 3);
        assert_eq!(got[1].line, 3);
        assert_eq!(
            got[1].data,
            Err("expected 2 columns (a,b), got 1".to_string())
        );
        assert_eq!(object(&got[2].data), Ok(fields(&[("a", "4"), ("b", "5")])));
        assert!(CsvRows::new("".as_bytes(), b',').is_err());
        let bom = CsvRows::new("\u{feff}ts,v\n1,2\n".as_bytes(), b',').unwrap();
        assert_eq!(bom.header(), ["ts", "v"]);
    }

    #[test]
    fn json_lines_skip_blank_lines_and_count_every_line() {
        let text = "{\"a\":1}\r\n\n  \n{\"a\":\nnot json\n";
        let got = all(&mut JsonLines::new(text.as_bytes()));
        let lines: Vec<(u64, RowData)> =
            got.into_iter().map(|r| (r.line, r.data.unwrap())).collect();
        assert_eq!(
            lines,
            vec![
                (1, RowData::Text(b"{\"a\":1}".to_vec())),
                (4, RowData::Text(b"{\"a\":".to_vec())),
                (5, RowData::Text(b"not json".to_vec())),
            ]
        );
    }

    #[test]
    fn senml_packs_are_read_per_line_or_per_file() {
        let per_line = "\n[{\"n\":\"laeq\",\"v\":1}]\n[{\"n\":\"laeq\",\"v\":2}]\n";
        let got = all(&mut SenmlRows::new(per_line.as_bytes(), 1 << 16).unwrap());
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].line, 2);
        assert_eq!(
            got[1].data,
            Ok(RowData::Text(b"[{\"n\":\"laeq\",\"v\":2}]".to_vec()))
        );
        let per_file =
            "[\n  {\"bt\":1406851200,\"n\":\"laeq\",\"v\":1},\n  {\"n\":\"lmax\",\"v\":2}\n]\n";
        let got = all(&mut SenmlRows::new(per_file.as_bytes(), 1 << 16).unwrap());
        assert_eq!(got.len(), 1);
        let Ok(RowData::Text(pack)) = &got[0].data else {
            panic!("{got:?}")
        };
        let v: Value = serde_json::from_slice(pack).unwrap();
        assert_eq!(v.as_array().map(Vec::len), Some(2));
        // A pack longer than the limit is cut one byte past it (and rejected as oversized).
        let got = all(&mut SenmlRows::new(per_file.as_bytes(), 10).unwrap());
        let Ok(RowData::Text(cut)) = &got[0].data else {
            panic!("{got:?}")
        };
        assert!(cut.len() <= 11, "{}", cut.len());
    }
}
