//! Which files `aqyl replay` reads, in which format, and how each names its sensors.
//!
//! Paths are files or directories; directories are walked recursively and their files taken
//! in sorted order (hidden files and files of other extensions are skipped). The format
//! follows the extension (`.csv`; `.jsonl`, `.ndjson`, `.json`, `.senml`), read as the sensor
//! type's payload format says (a SenML type reads its JSON files as packs).

use aqyl_core::ingest::descriptor::{PayloadFormat, SensorType};
use std::path::{Path, PathBuf};

/// How a file's rows are read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileFormat {
    /// CSV with a header line.
    Csv,
    /// One JSON object per line.
    JsonLines,
    /// SenML packs: one per line, or the whole file.
    Senml,
}

/// How the rows of a file are attributed to sensors.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SensorOf {
    /// Each row names its sensor at the type's `sensor_id_field`; a row without it belongs to
    /// the sensor the file name gives (`replay_files`), if any.
    Field {
        /// The file name's sensor.
        fallback: Option<String>,
    },
    /// The file holds one sensor, named in its file name (`replay_files`).
    File(String),
}

/// A file to replay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    /// Its path.
    pub path: PathBuf,
    /// How it is read.
    pub format: FileFormat,
    /// Whose rows it holds.
    pub sensor: SensorOf,
}

/// Extensions a directory walk takes.
const EXTENSIONS: [&str; 5] = ["csv", "jsonl", "ndjson", "json", "senml"];

/// The files under `paths`: each file as given, each directory walked recursively in sorted
/// order. A path that does not exist or cannot be listed is an error.
pub fn discover(paths: &[PathBuf]) -> anyhow::Result<(Vec<PathBuf>, usize)> {
    let mut files = Vec::new();
    let mut skipped = 0;
    for path in paths {
        let meta = std::fs::metadata(path)
            .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
        if meta.is_dir() {
            walk(path, &mut files, &mut skipped)?;
        } else {
            files.push(path.clone());
        }
    }
    Ok((files, skipped))
}

fn walk(dir: &Path, files: &mut Vec<PathBuf>, skipped: &mut usize) -> anyhow::Result<()> {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .and_then(|rd| rd.map(|e| e.map(|e| e.path())).collect())
        .map_err(|e| anyhow::anyhow!("cannot list the directory {}: {e}", dir.display()))?;
    entries.sort();
    for path in entries {
        let hidden = path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with('.'));
        if hidden {
            continue;
        }
        if path.is_dir() {
            walk(&path, files, skipped)?;
        } else if extension(&path).is_some_and(|e| EXTENSIONS.contains(&e.as_str())) {
            files.push(path);
        } else {
            *skipped += 1;
        }
    }
    Ok(())
}

fn extension(path: &Path) -> Option<String> {
    path.extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase)
}

/// How `ty` reads `path`, or a sentence saying why it cannot.
pub fn format_of(path: &Path, ty: &SensorType) -> Result<FileFormat, String> {
    let ext = extension(path).unwrap_or_default();
    match (ext.as_str(), &ty.format) {
        ("csv", PayloadFormat::Senml) => Err(format!(
            "sensor type {:?} decodes SenML packs; give it .json, .jsonl or .senml files",
            &*ty.name
        )),
        ("csv", _) => Ok(FileFormat::Csv),
        ("json" | "jsonl" | "ndjson" | "senml", PayloadFormat::Senml) => Ok(FileFormat::Senml),
        ("json" | "jsonl" | "ndjson", _) => Ok(FileFormat::JsonLines),
        _ => Err("cannot tell its format from the name: use .csv (with a header line), .jsonl (one JSON object per line) or, for SenML types, .json/.senml".to_string()),
    }
}

/// How the rows of `path` name their sensor under `ty`: its `sensor_id_field`, else the
/// `{sensor_id}` of its `replay_files` pattern in the file name.
pub fn sensor_of(path: &Path, ty: &SensorType) -> Result<SensorOf, String> {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
    if ty.sensor_id_field.is_some() {
        let fallback = ty.replay_files.as_ref().and_then(|p| p.sensor_id(name));
        return Ok(SensorOf::Field {
            fallback: fallback.map(str::to_string),
        });
    }
    let Some(pattern) = &ty.replay_files else {
        return Err(format!(
            "sensor type {:?} does not say how a file names its sensors: add sensor_id_field = \"/<column>\" (rows carry the id) or replay_files = \"<prefix>{{sensor_id}}<suffix>\" (the file name does) to {}",
            &*ty.name,
            ty.source.display()
        ));
    };
    pattern
        .sensor_id(name)
        .map(|id| SensorOf::File(id.to_string()))
        .ok_or_else(|| {
            format!(
                "the file name does not match replay_files = \"{pattern}\" of {}; rename the file or add sensor_id_field",
                ty.source.display()
            )
        })
}

/// The sources for `files`, or every problem found (one line each).
pub fn sources(files: &[PathBuf], ty: &SensorType) -> Result<Vec<Source>, Vec<String>> {
    if ty.sensor_id_field.is_none() && ty.replay_files.is_none() {
        // The same for every file: say it once.
        let any = files.first().map_or(Path::new(""), PathBuf::as_path);
        return Err(sensor_of(any, ty).err().into_iter().collect());
    }
    let mut out = Vec::with_capacity(files.len());
    let mut problems = Vec::new();
    for path in files {
        match (format_of(path, ty), sensor_of(path, ty)) {
            (Ok(format), Ok(sensor)) => out.push(Source {
                path: path.clone(),
                format,
                sensor,
            }),
            (Err(e), _) | (_, Err(e)) => problems.push(format!("{}: {e}", path.display())),
        }
    }
    if problems.is_empty() {
        Ok(out)
    } else {
        Err(problems)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn traffic(keys: &str) -> SensorType {
        SensorType::from_toml(
            Path::new("sensors/traffic.toml"),
            &format!("name = \"traffic\"\n{keys}\n[[fields]]\nname = \"avgSpeed\"\n"),
        )
        .unwrap()
    }

    #[test]
    fn the_sensor_comes_from_the_field_else_the_file_name() {
        let by_name = traffic("replay_files = \"AarhusTrafficData{sensor_id}.csv\"");
        let p = Path::new("x/AarhusTrafficData158324.csv");
        assert_eq!(sensor_of(p, &by_name), Ok(SensorOf::File("158324".into())));
        let e = sensor_of(Path::new("x/other.csv"), &by_name).unwrap_err();
        assert!(e.contains("does not match replay_files = \"AarhusTrafficData{sensor_id}.csv\" of sensors/traffic.toml"), "{e}");
        let both = traffic("sensor_id_field = \"/REPORT_ID\"\nreplay_files = \"A{sensor_id}.csv\"");
        assert_eq!(
            sensor_of(Path::new("x/other.csv"), &both),
            Ok(SensorOf::Field { fallback: None })
        );
        assert_eq!(
            sensor_of(Path::new("x/A7.csv"), &both),
            Ok(SensorOf::Field {
                fallback: Some("7".into())
            })
        );
        let e = sensor_of(p, &traffic("")).unwrap_err();
        assert!(
            e.contains("add sensor_id_field = \"/<column>\"")
                && e.contains("to sensors/traffic.toml"),
            "{e}"
        );
    }

    #[test]
    fn formats_follow_the_extension_and_the_type() {
        let t = traffic("");
        assert_eq!(format_of(Path::new("a.CSV"), &t), Ok(FileFormat::Csv));
        assert_eq!(
            format_of(Path::new("a.jsonl"), &t),
            Ok(FileFormat::JsonLines)
        );
        assert!(format_of(Path::new("a.txt"), &t).is_err());
        let noise = SensorType::from_toml(
            Path::new("noise.toml"),
            "name = \"noise\"\nformat = \"senml\"\n[[fields]]\nname = \"laeq\"\n",
        )
        .unwrap();
        assert_eq!(
            format_of(Path::new("a.json"), &noise),
            Ok(FileFormat::Senml)
        );
        assert!(format_of(Path::new("a.csv"), &noise).is_err());
    }

    #[test]
    fn directories_are_walked_recursively_in_sorted_order() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("b/c")).unwrap();
        for f in [
            "b/c/z.csv",
            "b/a.jsonl",
            "a.csv",
            ".hidden.csv",
            "notes.txt",
        ] {
            std::fs::write(root.join(f), "").unwrap();
        }
        let (files, skipped) = discover(&[root.to_path_buf()]).unwrap();
        let rel: Vec<_> = files
            .iter()
            .map(|f| f.strip_prefix(root).unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(rel, ["a.csv", "b/a.jsonl", "b/c/z.csv"]);
        assert_eq!(skipped, 1);
        assert!(discover(&[root.join("missing")]).is_err());
    }
}
