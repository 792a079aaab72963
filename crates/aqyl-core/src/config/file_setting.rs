//! Settings that name a file (a CA certificate, a client key, a password file): the path,
//! resolved, and what set it, so that a problem with the file is reported at the line of the
//! configuration (or the environment variable, or the flag) that named it.

use crate::error::ConfigError;
use serde::{Deserialize, Deserializer};
use std::fmt;
use std::path::{Path, PathBuf};
use toml::Spanned;

/// A file named by a setting.
#[derive(Clone, PartialEq, Eq)]
pub struct FileSetting {
    /// The path: relative to the configuration file's directory when set there, as given
    /// when set by the environment or a flag (relative to the working directory).
    pub path: PathBuf,
    /// What set it: `mqtt.ca_file`, `AQYL_MQTT_CA_FILE`, `--ca-file`.
    pub name: String,
    /// The line of the configuration file that set it, when it was set there.
    pub line: Option<usize>,
    /// Byte offset in the configuration file (until [`FileSetting::locate`] turns it into a
    /// line).
    offset: Option<usize>,
}

impl FileSetting {
    /// A path set by an environment variable or a flag `name`, taken as given.
    pub fn given(name: impl Into<String>, path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            name: name.into(),
            line: None,
            offset: None,
        }
    }

    /// Gives a path read from the configuration file its key, its line, and its place
    /// relative to the file's directory `base`.
    pub(crate) fn locate(&mut self, key: &str, text: &str, base: &Path) {
        self.name = key.to_string();
        self.line = self.offset.map(|o| crate::error::line_of(text, o));
        self.path = base.join(&self.path);
    }

    /// `mqtt.ca_file (/etc/aqyl/ca.pem)`: the setting and its file, for messages.
    pub fn describe(&self) -> String {
        format!("{} ({})", self.name, self.path.display())
    }

    /// An error about this file, at the line that named it in `config` (the configuration
    /// file), or naming the variable or flag.
    pub fn error(&self, config: &Path, message: impl fmt::Display) -> ConfigError {
        ConfigError {
            file: config.to_path_buf(),
            line: self.line,
            message: format!("{}: {message}", self.describe()),
        }
    }

    /// Reads the file, saying which setting named it when it cannot be read.
    pub fn read(&self) -> Result<Vec<u8>, String> {
        std::fs::read(&self.path).map_err(|e| {
            format!(
                "cannot read it: {e}; fix the path (relative paths in the configuration file are relative to its directory) or the file's permissions"
            )
        })
    }
}

impl fmt::Debug for FileSetting {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.path)
    }
}

impl<'de> Deserialize<'de> for FileSetting {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = Spanned::<PathBuf>::deserialize(d)?;
        let span = s.span();
        Ok(Self {
            offset: (span.end > 0).then_some(span.start),
            path: s.into_inner(),
            name: String::new(),
            line: None,
        })
    }
}

/// A secret read from a file (`mqtt.password_file`, `http.token_file`): the whole file, less
/// the line ending an editor or `echo` leaves at its end. An empty secret is an error.
pub fn read_secret(setting: &FileSetting) -> Result<super::Secret, String> {
    let bytes = setting.read()?;
    let text = String::from_utf8(bytes).map_err(|_| "it is not UTF-8 text".to_string())?;
    let value = text.trim_end_matches(['\n', '\r']);
    if value.is_empty() {
        return Err("it is empty; write the secret into it".into());
    }
    Ok(super::Secret::new(value))
}
