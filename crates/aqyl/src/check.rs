//! `aqyl check` (load the configuration and every descriptor, report all problems) and
//! `aqyl sensors test` (decode one payload with one sensor type and explain the result).

use aqyl_core::config;
use std::path::Path;

/// Checks the configuration at `path` (environment overrides applied). Returns the report
/// to print and whether everything is valid.
pub fn check(path: &Path) -> (String, bool) {
    let loaded = config::load(path, |k| std::env::var(k).ok()).and_then(|loaded| {
        let connections = crate::connections::prepare(&loaded)?;
        Ok((loaded, connections))
    });
    match loaded {
        Ok((loaded, connections)) => {
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
            let width = loaded.rules.iter().map(|r| r.name.len()).max().unwrap_or(0);
            for r in &loaded.rules {
                let on = match &r.window {
                    Some(w) => format!("{} {w} windows", r.sensor_type),
                    None => r.sensor_type.clone(),
                };
                out.push_str(&format!(
                    "  rule {:<width$} on {:<10} when {}\n",
                    r.name, on, r.enter_text
                ));
            }
            for c in &loaded.corroborate {
                out.push_str(&format!(
                    "  corroborate {}: {} confirmed by {} reports{} within {} m and {}\n",
                    c.name,
                    c.event_types.join(", "),
                    c.reports,
                    if c.categories.is_empty() {
                        String::new()
                    } else {
                        format!(" of {}", c.categories.join(", "))
                    },
                    c.max_distance_m,
                    aqyl_core::duration::label(std::time::Duration::from_millis(c.within_ms)),
                ));
            }
            out.push_str(&subscription_lines(&loaded));
            let live = !loaded.config.pipeline.idle_timeout.is_zero();
            out.push_str(&rule_timing_line(&loaded.config.pipeline, live));
            let q = &loaded.config.quality;
            if q.enabled {
                let clock = if q.wall_clock(live) {
                    "by the wall clock"
                } else {
                    "in event time"
                };
                out.push_str(&format!(
                    "  quality: threshold {}, watchdog {clock}, readings out of range {}; incidents after more than {} expected interval(s) below {}, ended after as long at or above {}\n",
                    q.threshold,
                    if q.exclude_incorrect {
                        "kept out of aggregates and rules"
                    } else {
                        "kept in"
                    },
                    q.alert_after,
                    q.threshold,
                    q.threshold + q.recover_margin
                ));
            } else {
                out.push_str("  quality: off\n");
            }
            out.push_str(&state_line(&loaded));
            out.push_str(&cluster_line(&loaded.config));
            out.push_str(&crate::connections::describe(&loaded.config, &connections));
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

/// Decodes the payload in `payload_file` as sensor type `type_name` (topic
/// `city/<type>/<sensor_id>` unless given) and explains the outcome. Returns the report and
/// whether the payload was accepted.
pub fn sensors_test(
    config: &Path,
    type_name: &str,
    payload_file: &Path,
    topic: Option<&str>,
) -> (String, bool) {
    let loaded = match config::load(config, |k| std::env::var(k).ok()) {
        Ok(l) => l,
        Err(e) => return (format!("{e}\n"), false),
    };
    let Some(ty) = loaded.sensor_types.iter().find(|t| &*t.name == type_name) else {
        let names: Vec<&str> = loaded.sensor_types.iter().map(|t| &*t.name).collect();
        return (
            format!(
                "no sensor type {type_name:?} in {}; known: {}\n",
                loaded.sensors_dir.display(),
                names.join(", ")
            ),
            false,
        );
    };
    let payload = match std::fs::read(payload_file) {
        Ok(p) => p,
        Err(e) => {
            return (
                format!("{}: cannot read the payload: {e}\n", payload_file.display()),
                false,
            )
        }
    };
    let topic = topic.map(str::to_string).unwrap_or_else(|| {
        ty.topic
            .as_str()
            .replace("{sensor_id}", "test-sensor")
            .replace("{area}", "test-area")
    });
    let registry = aqyl_core::ingest::decode::Registry::new(vec![ty.clone()]);
    let received_at = chrono::Utc::now().timestamp_millis();
    let msg = aqyl_core::RawMessage {
        topic: topic.clone(),
        payload,
        received_at,
    };
    match registry.decode(&msg, loaded.config.ingest.max_payload_bytes) {
        Ok(observations) => {
            let mut out = format!(
                "accepted: {} observation{} of {type_name} on {topic}\n",
                observations.len(),
                if observations.len() == 1 { "" } else { "s" }
            );
            for o in &observations {
                out.push_str(&format!(
                    "  sensor {} at {}{}{}\n",
                    o.sensor_id,
                    aqyl_core::output::rfc3339_ms(o.event_time as i64),
                    if o.time_from_receive {
                        " (receive time: the payload has no event time)"
                    } else {
                        ""
                    },
                    o.area
                        .as_ref()
                        .map(|a| format!(", area {a}"))
                        .unwrap_or_default()
                ));
                for (name, value) in &o.fields {
                    let unit = ty
                        .fields
                        .iter()
                        .find(|f| &f.name == name)
                        .and_then(|f| f.unit.clone())
                        .unwrap_or_default();
                    out.push_str(&format!("    {name:<20} {value} {unit}\n"));
                }
                for warning in ty.out_of_range(&o.fields) {
                    out.push_str(&format!(
                        "  warning: {warning} (kept; counted as incorrect by quality scoring)\n"
                    ));
                }
            }
            (out, true)
        }
        Err(r) => (
            format!(
                "rejected ({}): {}\n  it would go to aqyl/deadletter/{type_name}\n",
                r.reason, r.detail
            ),
            false,
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_configuration_checks_ok_and_lists_rules_and_quality() {
        let config = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../config/aqyl.toml");
        let (out, ok) = check(&config);
        assert!(ok, "{out}");
        assert!(out.contains("rule sudden_slowdown"), "{out}");
        assert!(out.contains("on pollution 1h windows"), "{out}");
        assert!(
            out.contains("corroborate congestion_reported: congestion confirmed by citizen_report reports of traffic within 500 m and 15m"),
            "{out}"
        );
        assert!(
            out.contains("subscription north-west: congestion, traffic_jam, area_congestion; in grid-11-03 -> aqyl/subscriptions/north-west/..."),
            "{out}"
        );
        assert!(!out.contains("warning: subscription"), "{out}");
        assert!(
            out.contains("quality: threshold 0.6, watchdog by the wall clock"),
            "{out}"
        );
        assert!(
            out.contains("state: durable in ") && out.contains("checkpoint every 10s"),
            "{out}"
        );
        assert!(
            out.contains(
                "rules: readings judged on arrival; silences noticed by the wall clock and the watermark"
            ),
            "{out}"
        );
        assert!(
            out.contains("incidents after more than 1 expected interval(s) below 0.6, ended after as long at or above 0.7"),
            "{out}"
        );
    }

    #[test]
    fn a_cluster_process_is_described() {
        let dir = one_sensor_type();
        let file = dir.path().join("aqyl.toml");
        std::fs::write(
            &file,
            "[state]\ndurable = false\n[cluster]\nhosts = [\"a:2101\", \"b:2101\"]\nprocess = 1\n",
        )
        .unwrap();
        let (report, ok) = check(&file);
        assert!(ok, "{report}");
        assert!(
            report.contains("  cluster: process 1 of 2 (2 worker(s) each), peers a:2101, b:2101, listening on 0.0.0.0:2101; MQTT through $share/aqyl/*, client id suffix -1\n"),
            "{report}"
        );
    }

    #[test]
    fn sensors_test_explains_acceptance_and_rejection() {
        let config = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../config/aqyl.toml");
        let dir = tempfile::tempdir().unwrap();
        let good = dir.path().join("good.json");
        std::fs::write(
            &good,
            r#"{"vehiclecount":960,"totalspaces":953,"updatetime":"2014-08-01 08:00:00.5"}"#,
        )
        .unwrap();
        let (report, ok) = sensors_test(&config, "parking", &good, None);
        assert!(ok, "{report}");
        assert!(
            report.contains("sensor test-sensor at 2014-08-01T06:00:00.500Z"),
            "{report}"
        );
        assert!(
            report.contains("warning: vehiclecount = 960 is above its maximum 953"),
            "{report}"
        );
        let bad = dir.path().join("bad.json");
        std::fs::write(
            &bad,
            r#"{"vehiclecount":"full","totalspaces":953,"updatetime":"2014-08-01 08:00:00"}"#,
        )
        .unwrap();
        let (report, ok) = sensors_test(&config, "parking", &bad, None);
        assert!(!ok);
        assert!(report.starts_with("rejected (wrong_type): field \"vehiclecount\" (at /vehiclecount): expected an integer, got the string \"full\""), "{report}");
        let (report, ok) = sensors_test(&config, "trafic", &bad, None);
        assert!(
            !ok && report.contains("known: citizen_report, noise, parking"),
            "{report}"
        );
    }

    #[test]
    fn shipped_configuration_is_valid() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../config/aqyl.toml");
        let (report, ok) = check(&path);
        assert!(ok, "{report}");
        assert!(report.contains("traffic"), "{report}");
    }

    /// A directory with one minimal sensor type, for a config file written beside it.
    fn one_sensor_type() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("sensors")).unwrap();
        std::fs::write(
            dir.path().join("sensors/t.toml"),
            "name = \"t\"\n[[fields]]\nname = \"v\"\n",
        )
        .unwrap();
        dir
    }

    #[test]
    fn subscriptions_are_listed_their_typos_warned_about_and_their_mistakes_refused() {
        let dir = one_sensor_type();
        let file = dir.path().join("aqyl.toml");
        std::fs::write(&file, "[mqtt]\nurl = \"mqtt://broker:1883\"\n").unwrap();
        std::fs::create_dir(dir.path().join("subscriptions")).unwrap();
        let subs = dir.path().join("subscriptions/ops.toml");
        std::fs::write(
            &subs,
            "[[subscription]]\nname = \"typo\"\nevent_types = [\"congestoin\"]\n",
        )
        .unwrap();
        let (report, ok) = check(&file);
        assert!(ok, "{report}");
        assert!(report.contains("subscription typo: congestoin"), "{report}");
        assert!(
            report.contains("warning: subscription typo: no rule raises event type \"congestoin\""),
            "{report}"
        );
        std::fs::write(
            &subs,
            "[[subscription]]\nname = \"ok\"\n\n[[subscription]]\nname = \"box\"\nbbox = [56.2, 10.1]\n",
        )
        .unwrap();
        let (report, ok) = check(&file);
        assert!(!ok, "{report}");
        assert!(
            report.contains(&format!("{}:4: subscription \"box\": bbox", subs.display())),
            "{report}"
        );
    }

    #[test]
    fn an_unparsable_influx_url_is_an_error_at_its_line_not_a_panic() {
        let dir = one_sensor_type();
        let file = dir.path().join("aqyl.toml");
        for (url, why) in [
            ("http//store:8086", "not an http:// or https:// URL"),
            ("http://store:80x6", "invalid port"),
            ("http://", "no host"),
            ("http://[::1:8086", "unclosed"),
        ] {
            std::fs::write(
                &file,
                format!("[mqtt]\nurl = \"mqtt://broker:1883\"\n\n[influx]\nenabled = true\nurl = \"{url}\"\n"),
            )
            .unwrap();
            let (report, ok) = check(&file);
            assert!(!ok, "{report}");
            let line = format!("{}:6: influx.url: ", file.display());
            assert!(
                report
                    .lines()
                    .any(|l| l.starts_with(&line) && l.contains(why)),
                "{url}: {report}"
            );
        }
        // Written with a dotted key at the top, the line is still found.
        std::fs::write(&file, "\ninflux.enabled = true\ninflux.url = \"ftp://x\"\n").unwrap();
        let (report, ok) = check(&file);
        assert!(!ok, "{report}");
        assert!(
            report.contains(&format!("{}:3: influx.url: ", file.display())),
            "{report}"
        );
    }

    #[test]
    fn tls_files_are_read_and_checked_as_run_would_with_the_line_of_their_setting() {
        let dir = one_sensor_type();
        std::fs::write(dir.path().join("ca.pem"), "not a certificate\n").unwrap();
        std::fs::write(dir.path().join("token"), "t0ken-b2e4\n").unwrap();
        let file = dir.path().join("aqyl.toml");
        std::fs::write(
            &file,
            "[mqtt]\nurl = \"mqtts://broker:8883\"\nusername = \"u\"\npassword = \"pw-0c7d\"\nca_file = \"ca.pem\"\n\n[influx]\nenabled = true\nurl = \"https://store:8086\"\nca_file = \"missing.pem\"\n[http]\naddr = \"127.0.0.1:9464\"\ntoken_file = \"token\"\n",
        )
        .unwrap();
        let (report, ok) = check(&file);
        assert!(!ok, "{report}");
        let at = |line: usize, what: &str| {
            report
                .lines()
                .any(|l| l.starts_with(&format!("{}:{line}: {what}", file.display())))
        };
        assert!(
            at(5, "mqtt.ca_file (") && report.contains("holds no certificate"),
            "{report}"
        );
        assert!(
            at(10, "influx.ca_file (") && report.contains("cannot read it"),
            "{report}"
        );
        assert!(report.ends_with("2 problems found.\n"), "{report}");
        // Fixed, it is accepted and described, with no secret shown.
        std::fs::write(
            &file,
            "[mqtt]\nurl = \"mqtts://broker:8883\"\nusername = \"u\"\npassword = \"pw-0c7d\"\n[http]\naddr = \"127.0.0.1:9464\"\ntoken_file = \"token\"\n",
        )
        .unwrap();
        let (report, ok) = check(&file);
        assert!(ok, "{report}");
        assert!(
            report.contains("broker: mqtts://broker:8883, TLS trusting the system's CA certificates, user \"u\" (password set)"),
            "{report}"
        );
        assert!(
            report.contains("http: 127.0.0.1:9464, /metrics needs the bearer token, /health open"),
            "{report}"
        );
        assert!(
            report.contains("city: 16 readings per sensor, at most 100000 sensors, state topics every 1s, /api/state and /v1.1 (SensorThings) on http"),
            "{report}"
        );
        assert!(
            !report.contains("pw-0c7d") && !report.contains("t0ken-b2e4"),
            "{report}"
        );
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
    use aqyl_core::ingest::decode::Registry;
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
            if &*obs[0].sensor_type == "pollution" {
                let (lat, lon) = obs[0]
                    .location
                    .expect("pollution rows carry their position");
                assert!(
                    (55.0..58.0).contains(&lat) && (9.0..11.5).contains(&lon),
                    "{lat} {lon}"
                );
            }
        }
        assert_eq!(per_type.len(), 5, "{per_type:?}");
    }
}

/// One line per contextual subscription (what it selects, where it is published) and a
/// warning for whatever in it can never match.
fn subscription_lines(loaded: &config::Loaded) -> String {
    let mut event_types: Vec<&str> = loaded.rules.iter().map(|r| r.event_type.as_str()).collect();
    event_types.push(aqyl_core::quality::QUALITY_EVENT);
    let registry = aqyl_core::ingest::decode::Registry::new(loaded.sensor_types.clone());
    let prefix = &loaded.config.outputs.topic_prefix;
    let mut out = String::new();
    for s in &loaded.subscriptions {
        out.push_str(&format!(
            "  subscription {}: {} -> {prefix}/subscriptions/{}/...\n",
            s.name,
            s.describe(),
            s.name
        ));
        for w in s.unknowns(&event_types, &registry) {
            out.push_str(&format!("  warning: subscription {}: {w}\n", s.name));
        }
    }
    out
}

/// How the rules follow time, as `aqyl check` says it.
/// What `[state]` means for this configuration.
fn state_line(loaded: &aqyl_core::config::Loaded) -> String {
    let s = &loaded.config.state;
    let dir = loaded.state_dir();
    if s.durable {
        let stop = if loaded.config.cluster.enabled() {
            "this process's part of the cluster's checkpoints; after a stop or a crash the cluster resumes from the last checkpoint every process completed"
        } else {
            "a stop keeps open windows for the next start"
        };
        format!(
            "  state: durable in {} (ingest log acknowledged after fsync, checkpoint every {}; {stop})\n",
            dir.join("state.redb").display(),
            aqyl_core::duration::label(s.checkpoint_interval)
        )
    } else {
        format!(
            "  state: not durable (acknowledged when queued; a stop writes open windows as they are, a crash loses them); spill in {}\n",
            dir.display()
        )
    }
}

fn cluster_line(cfg: &aqyl_core::config::Config) -> String {
    let c = &cfg.cluster;
    if !c.enabled() {
        return String::new();
    }
    format!(
        "  cluster: process {} of {} ({} worker(s) each), peers {}, listening on {}; MQTT through {}*, client id suffix -{}\n",
        c.process,
        c.processes(),
        cfg.pipeline.workers.get_ref(),
        c.hosts.join(", "),
        c.listen_addr(),
        crate::cluster::subscription_prefix(cfg),
        c.process
    )
}

fn rule_timing_line(p: &aqyl_core::config::PipelineConfig, live: bool) -> String {
    let judged = match p.rule_timing {
        aqyl_core::config::RuleTiming::Arrival => "on arrival".to_string(),
        aqyl_core::config::RuleTiming::Watermark => format!(
            "once the watermark passes them ({} late)",
            aqyl_core::duration::label(p.allowed_lateness)
        ),
    };
    let silence = if live {
        "by the wall clock and the watermark"
    } else {
        "by the watermark"
    };
    format!("  rules: readings judged {judged}; silences noticed {silence}\n")
}
