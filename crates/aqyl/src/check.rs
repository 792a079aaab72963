//! `aqyl check`: load the configuration and every descriptor, report all problems.

use aqyl_core::config;
use std::path::Path;

/// Checks the configuration at `path` (environment overrides applied). Returns the report
/// to print and whether everything is valid.
pub fn check(path: &Path) -> (String, bool) {
    match config::load(path, |k| std::env::var(k).ok()) {
        Ok(loaded) => {
            let mut out = format!(
                "{}: ok ({} sensor type{} from {})\n",
                path.display(),
                loaded.sensor_types.len(),
                if loaded.sensor_types.len() == 1 {
                    ""
                } else {
                    "s"
                },
                loaded.sensors_dir.display()
            );
            for t in &loaded.sensor_types {
                let fields: Vec<&str> = t.fields.iter().map(|f| &*f.name).collect();
                out.push_str(&format!(
                    "  {:<12} {:<28} fields: {}\n",
                    t.name,
                    t.topic.as_str(),
                    fields.join(", ")
                ));
            }
            (out, true)
        }
        Err(errors) => {
            let mut out = String::new();
            for e in &errors.0 {
                out.push_str(&format!("{e}\n"));
            }
            out.push_str(&format!(
                "{} problem{} found.\n",
                errors.0.len(),
                if errors.0.len() == 1 { "" } else { "s" }
            ));
            (out, false)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_configuration_is_valid() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../config/aqyl.toml");
        let (report, ok) = check(&path);
        assert!(ok, "{report}");
        assert!(report.contains("traffic"), "{report}");
    }

    #[test]
    fn broken_descriptor_is_reported_with_file_and_line() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("sensors")).unwrap();
        std::fs::write(dir.path().join("aqyl.toml"), "[pipeline]\nworkers = 1\n").unwrap();
        std::fs::write(
            dir.path().join("sensors/noise.toml"),
            "name = \"noise\"\n[[fields]]\nname = \"db\"\ntype = \"decibel\"\n",
        )
        .unwrap();
        let (report, ok) = check(&dir.path().join("aqyl.toml"));
        assert!(!ok);
        assert!(
            report.contains("noise.toml:4: unknown variant `decibel`"),
            "{report}"
        );
        assert!(report.ends_with("1 problem found.\n"), "{report}");
    }
}
