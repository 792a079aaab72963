//! The crate's error type: what failed, on which input, and what to do about it.

use std::path::PathBuf;

/// Everything the simulator's library can fail at.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A scenario file could not be read.
    #[error("cannot read scenario {path}: {source}")]
    ScenarioIo {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A scenario file is not valid TOML or does not match the schema.
    #[error("{path}:{line}: {message}")]
    ScenarioParse {
        /// The file.
        path: PathBuf,
        /// 1-based line of the error (0 when unknown).
        line: usize,
        /// What is wrong.
        message: String,
    },
    /// A scenario or command-line setting is inconsistent.
    #[error("invalid setting: {0}")]
    Invalid(String),
    /// A time string could not be parsed.
    #[error("cannot parse time {input:?}: expected RFC 3339 (2014-08-01T08:00:00Z) or local Europe/Copenhagen time (2014-08-01T08:00:00)")]
    Time {
        /// The text that failed.
        input: String,
    },
    /// A fault specification such as `stuck=0.01:30m` is wrong.
    #[error("invalid fault {spec:?}: {reason}")]
    FaultSpec {
        /// The text that failed.
        spec: String,
        /// Why.
        reason: String,
    },
    /// A CSV file for replay could not be read.
    #[error("cannot read {path}: {message}")]
    Csv {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// A ground-truth or events file could not be read or parsed.
    #[error("{path}:{line}: {message}")]
    Record {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        message: String,
    },
    /// The MQTT broker could not be reached or dropped the connection.
    #[error("MQTT: {0}")]
    Mqtt(String),
    /// Any other I/O error on a named file.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
}

/// Result with the crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
