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

#[cfg(test)]
mod shipped_descriptors {
    use aqyl_core::decode::Registry;
    use aqyl_core::RawMessage;
    use aqyl_sim::sensors::{CityConfig, SensorType};
    use aqyl_sim::simulation::{SimConfig, Simulation};
    use std::path::Path;

    #[test]
    fn decode_a_simulated_day_of_every_sensor_type() {
        let config = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../config/aqyl.toml");
        let loaded = aqyl_core::config::load(&config, |_| None).unwrap();
        let registry = Registry::new(loaded.sensor_types);
        let start = aqyl_sim::time::parse_time("2014-08-01T00:00:00").unwrap();
        let types = vec![
            SensorType::Traffic,
            SensorType::Parking,
            SensorType::Pollution,
            SensorType::Weather,
            SensorType::Noise,
        ];
        let city = CityConfig {
            sensors: 3,
            areas: 2,
            types,
        };
        let (messages, _) =
            Simulation::generate(SimConfig::new(city, start, chrono::Duration::days(1), 9))
                .unwrap();
        let mut per_type = std::collections::BTreeMap::new();
        for m in &messages {
            let raw = RawMessage {
                topic: m.topic.clone(),
                payload: m.encode(None),
                received_at: 0,
            };
            let obs = registry.decode(&raw, 65536).unwrap_or_else(|e| {
                panic!(
                    "{} {}: {e:?}",
                    m.topic,
                    String::from_utf8_lossy(&raw.payload)
                )
            });
            assert_eq!(
                obs[0].event_time as i64,
                m.event_time.timestamp_millis(),
                "{}",
                m.topic
            );
            *per_type.entry(obs[0].sensor_type.to_string()).or_insert(0) += 1;
        }
        assert_eq!(per_type.len(), 5, "{per_type:?}");
    }
}
