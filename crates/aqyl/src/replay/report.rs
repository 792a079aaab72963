//! What `aqyl replay` tells its user: a progress line refreshed in place while it runs (only
//! on a terminal), and a summary at the end, for a human or (`--json`) as one JSON object.

use aqyl_core::Reason;
use serde_json::json;
use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// The counts of a finished replay.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Summary {
    /// Sensor type replayed.
    pub sensor_type: String,
    /// Files read.
    pub files: usize,
    /// Files in the directories given that were not read (other extensions).
    pub skipped_files: usize,
    /// Rows read (CSV rows, JSON lines, SenML packs).
    pub rows: u64,
    /// Observations that entered the windows.
    pub observations: u64,
    /// Closed windows written (aggregates).
    pub windows: u64,
    /// Incident lifecycle messages written.
    pub events: u64,
    /// Quality records written.
    pub quality: u64,
    /// Dead letters, per reason.
    pub dead_letters: [u64; Reason::ALL.len()],
    /// Wall-clock time taken.
    pub elapsed: Duration,
    /// Where line protocol went (the `--out` directory, or the configured sinks).
    pub output: String,
    /// The dead-letter file.
    pub dead_letter_file: PathBuf,
}

impl Summary {
    /// All dead letters.
    pub fn dead_letters_total(&self) -> u64 {
        self.dead_letters.iter().sum()
    }

    /// Rows per second of wall-clock time.
    pub fn rows_per_second(&self) -> f64 {
        self.rows as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    fn by_reason(&self) -> impl Iterator<Item = (Reason, u64)> + '_ {
        Reason::ALL
            .iter()
            .map(|r| (*r, self.dead_letters[r.index()]))
            .filter(|(_, n)| *n > 0)
    }

    /// The summary as one JSON object (`--json`).
    pub fn to_json(&self) -> serde_json::Value {
        let reasons: serde_json::Map<String, serde_json::Value> = self
            .by_reason()
            .map(|(r, n)| (r.as_str().to_string(), n.into()))
            .collect();
        json!({
            "sensor_type": self.sensor_type,
            "files": self.files,
            "skipped_files": self.skipped_files,
            "rows": self.rows,
            "observations": self.observations,
            "windows": self.windows,
            "events": self.events,
            "quality": self.quality,
            "dead_letters": self.dead_letters_total(),
            "dead_letters_by_reason": reasons,
            "rows_per_second": self.rows_per_second().round(),
            "elapsed_s": (self.elapsed.as_secs_f64() * 1000.0).round() / 1000.0,
            "output": self.output,
            "dead_letter_file": self.dead_letter_file.display().to_string(),
        })
    }

    /// The summary for a human, several lines.
    pub fn to_text(&self) -> String {
        let mut reasons: Vec<String> = self.by_reason().map(|(r, n)| format!("{r} {n}")).collect();
        if reasons.is_empty() {
            reasons.push("none".into());
        }
        format!(
            "Replayed {} rows of {} from {} files in {:.1} s ({:.0} rows/s).\n  observations {}, windows {}, events {}, quality records {}\n  dead letters {} ({}) -> {}\n  output: {}\n",
            self.rows,
            self.sensor_type,
            self.files,
            self.elapsed.as_secs_f64(),
            self.rows_per_second(),
            self.observations,
            self.windows,
            self.events,
            self.quality,
            self.dead_letters_total(),
            reasons.join(", "),
            self.dead_letter_file.display(),
            self.output,
        )
    }
}

/// The progress line on stderr, redrawn at most every 200 ms, only when stderr is a terminal.
pub struct Progress {
    enabled: bool,
    started: Instant,
    last: Instant,
    drawn: bool,
}

impl Progress {
    /// A progress line, shown when `enabled` (stderr is a terminal).
    pub fn new(enabled: bool) -> Self {
        let now = Instant::now();
        Self {
            enabled,
            started: now,
            last: now,
            drawn: false,
        }
    }

    /// Redraws the line when 200 ms have passed since the last time.
    pub fn tick(&mut self, rows: u64, files_done: usize, files: usize, newest: Option<i64>) {
        if !self.enabled || self.last.elapsed() < Duration::from_millis(200) {
            return;
        }
        self.last = Instant::now();
        let secs = self.started.elapsed().as_secs_f64().max(1e-9);
        let mut err = std::io::stderr().lock();
        // Files are merged by event time, so they tend to finish together: the event time
        // reached tells how far along the replay is.
        let at = newest
            .and_then(chrono::DateTime::from_timestamp_millis)
            .map(|t| format!(", at {}", t.format("%Y-%m-%d %H:%M UTC")))
            .unwrap_or_default();
        let _ = write!(
            err,
            "\r\x1b[2Kreplay: {rows} rows, {:.0} rows/s, files {files_done}/{files} done{at}",
            rows as f64 / secs
        );
        let _ = err.flush();
        self.drawn = true;
    }

    /// Clears the line (before the summary is printed).
    pub fn finish(&mut self) {
        if self.drawn {
            let _ = write!(std::io::stderr().lock(), "\r\x1b[2K");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_summary_counts_dead_letters_by_reason() {
        let mut s = Summary {
            sensor_type: "traffic".into(),
            files: 2,
            rows: 10,
            elapsed: Duration::from_secs(2),
            ..Default::default()
        };
        s.dead_letters[Reason::Late.index()] = 2;
        s.dead_letters[Reason::WrongType.index()] = 1;
        let j = s.to_json();
        assert_eq!(j["dead_letters"], 3);
        assert_eq!(j["dead_letters_by_reason"]["late"], 2);
        assert_eq!(j["dead_letters_by_reason"]["wrong_type"], 1);
        assert!(j["dead_letters_by_reason"].get("malformed_json").is_none());
        assert_eq!(j["rows_per_second"], 5.0);
        let text = s.to_text();
        assert!(
            text.contains("dead letters 3 (wrong_type 1, late 2)"),
            "{text}"
        );
    }
}
