//! Configuration errors that point at a file and line, so a user can fix them without guessing.

use std::fmt;
use std::path::{Path, PathBuf};

/// One problem in a configuration or descriptor file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The file the problem is in.
    pub file: PathBuf,
    /// 1-based line number, when the problem can be tied to a place in the file.
    pub line: Option<usize>,
    /// What is wrong and what to do about it.
    pub message: String,
}

impl ConfigError {
    /// An error at a byte offset of `source` (the file's text).
    pub fn at(
        file: &Path,
        source: &str,
        offset: Option<usize>,
        message: impl Into<String>,
    ) -> Self {
        Self {
            file: file.to_path_buf(),
            line: offset.map(|o| line_of(source, o)),
            message: message.into(),
        }
    }

    /// An error about a whole file (it cannot be read, or is missing).
    pub fn file(file: &Path, message: impl Into<String>) -> Self {
        Self {
            file: file.to_path_buf(),
            line: None,
            message: message.into(),
        }
    }

    /// Converts a TOML parse/deserialize error, keeping its position.
    pub fn from_toml(file: &Path, source: &str, err: &toml::de::Error) -> Self {
        let message = err.message().trim().to_string();
        Self::at(file, source, err.span().map(|s| s.start), message)
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(f, "{}:{}: {}", self.file.display(), line, self.message),
            None => write!(f, "{}: {}", self.file.display(), self.message),
        }
    }
}

impl std::error::Error for ConfigError {}

/// Every problem found while loading a configuration; loading reports all of them at once.
#[derive(Debug, Clone, Default, PartialEq, Eq, thiserror::Error)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl From<ConfigError> for ConfigErrors {
    fn from(e: ConfigError) -> Self {
        Self(vec![e])
    }
}

/// 1-based line number of a byte offset.
pub fn line_of(source: &str, offset: usize) -> usize {
    let end = offset.min(source.len());
    source.as_bytes()[..end]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

/// The `*.toml` files of a configuration directory (rules, subscriptions), sorted by path,
/// each with its text or the error of reading it; a missing directory has none.
pub fn toml_files(dir: &Path) -> Vec<(PathBuf, Result<String, ConfigError>)> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut paths: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    paths.sort();
    paths
        .into_iter()
        .map(|path| {
            let text = std::fs::read_to_string(&path)
                .map_err(|e| ConfigError::file(&path, format!("cannot read: {e}")));
            (path, text)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_numbers_are_one_based() {
        let src = "a = 1\nb = 2\nc = 3\n";
        assert_eq!(line_of(src, 0), 1);
        assert_eq!(line_of(src, 6), 2);
        assert_eq!(line_of(src, 14), 3);
        assert_eq!(line_of(src, 999), 4);
    }

    #[test]
    fn display_names_file_and_line() {
        let e = ConfigError::at(Path::new("x.toml"), "a\nb", Some(2), "bad b");
        assert_eq!(e.to_string(), "x.toml:2: bad b");
    }
}
