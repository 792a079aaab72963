//! Line-protocol files: `<dir>/aggregate.lp`, appended to, millisecond timestamps. Load them
//! into InfluxDB with `influx write --precision ms --file data/aggregate.lp`.

use crate::SinkError;
use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

/// An append-only line-protocol file.
pub struct FileSink {
    path: PathBuf,
    out: BufWriter<File>,
}

impl FileSink {
    /// Opens (creating the directory if needed) `<dir>/aggregate.lp` for appending.
    pub fn open(dir: &Path) -> Result<Self, SinkError> {
        let path = dir.join("aggregate.lp");
        let err = |source| SinkError::File {
            path: path.display().to_string(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(err)?;
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(err)?;
        Ok(Self {
            out: BufWriter::new(file),
            path,
        })
    }

    /// The file written to.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends complete lines and flushes them to the OS, so a reader never sees half a batch
    /// from an earlier flush.
    pub fn append(&mut self, lines: &str) -> Result<(), SinkError> {
        let path = self.path.display().to_string();
        self.out
            .write_all(lines.as_bytes())
            .and_then(|_| self.out.flush())
            .map_err(|source| SinkError::File { path, source })
    }

    /// Flushes and syncs to disk.
    pub fn flush(&mut self) -> Result<(), SinkError> {
        let path = self.path.display().to_string();
        self.out
            .flush()
            .and_then(|_| self.out.get_ref().sync_data())
            .map_err(|source| SinkError::File { path, source })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn appends_across_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let mut f = FileSink::open(&dir.path().join("data")).unwrap();
        f.append("a x=1 1\n").unwrap();
        f.flush().unwrap();
        let mut f = FileSink::open(&dir.path().join("data")).unwrap();
        f.append("a x=2 2\n").unwrap();
        let text = std::fs::read_to_string(f.path()).unwrap();
        assert_eq!(text, "a x=1 1\na x=2 2\n");
    }
}
