//! Quality scoring against the simulator's fault injection: the shipped descriptors and
//! `[quality]` defaults, the dataflow in process (event-time clock, as in a replay), and the
//! ground truth of each fault episode.

use aqyl_core::quality::{QualityRecord, QualityReport};
use aqyl_core::RawMessage;
use aqyl_dataflow::run_batch;
use aqyl_sim::scenario::Scenario;
use aqyl_sim::sensors::{CityConfig, SensorType};
use aqyl_sim::simulation::{SimConfig, Simulation};
use aqyl_sim::truth::{FaultRecord, TruthRecord};
use std::collections::{BTreeMap, BTreeSet};

/// What a run gave: each sensor's reports in time order, and the quality incidents.
struct Scored {
    reports: BTreeMap<(String, String), Vec<QualityReport>>,
    incidents: Vec<aqyl_core::Event>,
    threshold: f64,
    intervals: BTreeMap<String, u64>,
    /// `quality.alert_after`, expected intervals.
    alert_after: f64,
}

/// As [`score`] with 2 workers, also returning the scripted outages (sensor, start, end).
fn score_with_outages(config: SimConfig) -> (Scored, Vec<FaultRecord>, Vec<(String, u64, u64)>) {
    let outages = Simulation::generate(config.clone())
        .unwrap()
        .1
        .into_iter()
        .filter_map(|t| match t {
            TruthRecord::Incident(i) if i.kind == "outage" => Some(
                i.sensors
                    .iter()
                    .map(|s| {
                        (
                            s.clone(),
                            i.start.timestamp_millis() as u64,
                            i.end.timestamp_millis() as u64,
                        )
                    })
                    .collect::<Vec<_>>(),
            ),
            _ => None,
        })
        .flatten()
        .collect();
    let (scored, faults) = score(config, 2);
    (scored, faults, outages)
}

/// Runs a simulation through the dataflow with the shipped configuration.
fn score(config: SimConfig, workers: usize) -> (Scored, Vec<FaultRecord>) {
    let (loaded, spec) = super::shipped_replay(workers, false);
    let (messages, truth) = Simulation::generate(config).unwrap();
    let raw: Vec<RawMessage> = messages
        .iter()
        .map(|m| RawMessage {
            topic: m.topic.clone(),
            payload: m.encode(None),
            received_at: 0,
        })
        .collect();
    let batch = run_batch(spec, raw).unwrap();
    let mut reports: BTreeMap<(String, String), Vec<QualityReport>> = BTreeMap::new();
    for q in batch.quality {
        if let QualityRecord::Report(r) = q {
            reports
                .entry((r.sensor_type.to_string(), r.sensor_id.to_string()))
                .or_default()
                .push(r);
        }
    }
    for list in reports.values_mut() {
        list.sort_by_key(|r| r.time);
    }
    let faults = truth
        .into_iter()
        .filter_map(|t| match t {
            TruthRecord::Fault(f) => Some(f),
            TruthRecord::Incident(_) => None,
        })
        .collect();
    let intervals = loaded
        .sensor_types
        .iter()
        .map(|t| (t.name.to_string(), t.expected_interval.as_millis() as u64))
        .collect();
    (
        Scored {
            reports,
            incidents: batch
                .events
                .into_iter()
                .filter(|e| e.event_type == "quality")
                .collect(),
            threshold: loaded.config.quality.threshold,
            alert_after: loaded.config.quality.alert_after,
            intervals,
        },
        faults,
    )
}

impl Scored {
    /// The first report below the threshold within two expected intervals of the fault's
    /// start, if any.
    fn caught(&self, f: &FaultRecord) -> Option<&QualityReport> {
        let start = f.start.timestamp_millis() as u64;
        let interval = self.intervals[&f.sensor_type];
        self.reports
            .get(&(f.sensor_type.clone(), f.sensor.clone()))?
            .iter()
            .find(|r| r.time >= start && r.time <= start + 2 * interval && r.score < self.threshold)
    }

    /// The quality incident of a fault's sensor that started (its `started_at`, the first low
    /// report) within two expected intervals of the fault's start, if any.
    fn incident(&self, f: &FaultRecord) -> Option<&aqyl_core::Event> {
        let start = f.start.timestamp_millis() as u64;
        let interval = self.intervals[&f.sensor_type];
        self.incidents.iter().find(|e| {
            e.subject == f.sensor
                && *e.sensor_type == *f.sensor_type
                && e.state == aqyl_core::EventState::Start
                && e.started_at >= start
                && e.started_at <= start + 2 * interval
        })
    }

    /// Quality incidents that no fault or outage of their sensor explains: starting more than
    /// two expected intervals (plus the allowed lateness, since an unusable message is filed
    /// at the watermark, and plus its hold-back for a late one) away from every episode.
    fn false_alarms(
        &self,
        faults: &[FaultRecord],
        outages: &[(String, u64, u64)],
    ) -> Vec<&aqyl_core::Event> {
        const LATENESS: u64 = 600_000;
        self.incidents
            .iter()
            .filter(|e| e.state == aqyl_core::EventState::Start)
            .filter(|e| {
                let slack = 2 * self.intervals[&*e.sensor_type] + LATENESS;
                let near = |start: u64, end: u64| {
                    e.started_at + slack >= start && e.started_at <= end + slack
                };
                let fault = faults.iter().any(|f| {
                    let delay = f.delay_s.unwrap_or(0).max(0) as u64 * 1000;
                    f.sensor == e.subject
                        && f.sensor_type == *e.sensor_type
                        && near(
                            f.start.timestamp_millis() as u64,
                            f.end.timestamp_millis() as u64 + delay,
                        )
                });
                let outage = outages
                    .iter()
                    .any(|(id, start, end)| *id == e.subject && near(*start, *end));
                !(fault || outage)
            })
            .collect()
    }
}

/// A shipped scenario with its `[city]` settings (`days` overrides the duration).
fn scenario(name: &str, days: Option<i64>) -> SimConfig {
    let s = Scenario::load(&super::repo().join("simulators/scenarios").join(name)).unwrap();
    let c = &s.city;
    let city = CityConfig {
        sensors: c.sensors.unwrap_or(10),
        areas: c.areas.unwrap_or(5),
        types: SensorType::ALL.to_vec(),
    };
    let start =
        aqyl_sim::time::parse_time(c.start.as_deref().unwrap_or("2014-08-01T00:00:00")).unwrap();
    let duration = match days {
        Some(d) => chrono::Duration::days(d),
        None => aqyl_sim::time::parse_duration(c.duration.as_deref().unwrap_or("1d")).unwrap(),
    };
    SimConfig::new(city, start, duration, c.seed.unwrap_or(1)).with_scenario(&s)
}

#[test]
fn each_injected_fault_drops_its_sensor_below_the_threshold_and_healthy_ones_stay_above() {
    let (scored, faults) = score(scenario("quality.toml", None), 2);
    let kinds: BTreeSet<&str> = faults.iter().map(|f| f.kind.as_str()).collect();
    assert_eq!(
        kinds,
        BTreeSet::from(["dropout", "late", "out_of_range", "spike", "stuck"])
    );
    for f in &faults {
        let caught = scored.caught(f).unwrap_or_else(|| {
            panic!(
                "{} on {} {} at {} was not caught within two intervals: {:?}",
                f.kind,
                f.sensor_type,
                f.sensor,
                f.start,
                scored.reports[&(f.sensor_type.clone(), f.sensor.clone())]
                    .iter()
                    .filter(|r| r.time >= f.start.timestamp_millis() as u64)
                    .take(4)
                    .map(|r| (r.time, r.score, r.findings.problems()))
                    .collect::<Vec<_>>()
            )
        });
        println!(
            "{:>12} on {} {}: score {:.2} after {} s ({})",
            f.kind,
            f.sensor_type,
            f.sensor,
            caught.score,
            (caught.time - f.start.timestamp_millis() as u64) / 1000,
            caught.findings.problems().join("; ")
        );
        // ... and, when the fault lasts longer than `alert_after` intervals (a stuck segment,
        // a silent station), one quality incident says so, from its first low report; a
        // one-off fault (one spike, one late message, one reading out of range) is told by
        // its report alone.
        let interval = scored.intervals[&f.sensor_type];
        let lasting = (f.end - f.start).num_milliseconds() as f64
            > (scored.alert_after + 1.0) * interval as f64;
        let incidents: Vec<&aqyl_core::Event> = scored
            .incidents
            .iter()
            .filter(|e| e.subject == f.sensor && e.state == aqyl_core::EventState::Start)
            .collect();
        if lasting {
            let e = scored.incident(f).unwrap_or_else(|| {
                panic!(
                    "no quality incident for {} {}: {incidents:?}",
                    f.kind, f.sensor
                )
            });
            assert_eq!(
                incidents.len(),
                1,
                "one incident, no flapping: {incidents:?}"
            );
            println!(
                "{:>12} incident from {} s after the fault's start, sent at {} s: {}",
                f.kind,
                (e.started_at - f.start.timestamp_millis() as u64) / 1000,
                (e.time - f.start.timestamp_millis() as u64) / 1000,
                e.message
            );
        } else {
            assert!(incidents.is_empty(), "one-off {}: {incidents:?}", f.kind);
        }
    }
    // Every sensor without a fault stays at or above the threshold all day.
    let faulty: BTreeSet<(&str, &str)> = faults
        .iter()
        .map(|f| (f.sensor_type.as_str(), f.sensor.as_str()))
        .collect();
    let mut healthy = 0;
    for ((ty, id), reports) in &scored.reports {
        if faulty.contains(&(ty.as_str(), id.as_str())) {
            continue;
        }
        healthy += 1;
        if let Some(low) = reports.iter().find(|r| r.score < scored.threshold) {
            panic!(
                "healthy {ty} {id} fell to {:.2} at {}: {:?}",
                low.score,
                aqyl_core::output::rfc3339_ms(low.time as i64),
                low.findings.problems()
            );
        }
    }
    assert_eq!(healthy, 45, "50 sensors, 5 faulty");
    assert!(scored.false_alarms(&faults, &[]).is_empty());
}

/// Every sensor's reports are the same with 1 and 4 workers. A message that comes after its
/// window closed is the exception, and is left out: it has no place in event time, so it is
/// filed when it arrives, and where that falls among the sensor's readings depends on how
/// far each worker had got.
#[test]
fn quality_is_the_same_whatever_the_number_of_workers() {
    let key = |s: &Scored| -> Vec<(String, u64, String)> {
        s.reports
            .values()
            .flatten()
            .filter(|r| &*r.sensor_id != "noise-2")
            .map(|r| (r.sensor_id.to_string(), r.time, format!("{:.6}", r.score)))
            .collect()
    };
    let (one, _) = score(scenario("quality.toml", None), 1);
    let (four, _) = score(scenario("quality.toml", None), 4);
    let (one, four) = (key(&one), key(&four));
    assert!(!one.is_empty());
    let first_difference = one.iter().zip(&four).find(|(a, b)| a != b);
    assert_eq!(first_difference, None);
    assert_eq!(one.len(), four.len());
}

/// Detection rate and false alarms over three simulated days of random faults (the rates of
/// `simulators/scenarios/faults.toml`, 10 sensors of each type) with the default scenario's
/// congestions, full garage and outage on top. Prints the figures; asserts that the five
/// kinds of the acceptance are caught at least 90% of the time and that false alarms stay
/// rare.
#[test]
fn detection_rate_and_false_alarms_over_three_days_of_random_faults() {
    let faults = Scenario::load(&super::repo().join("simulators/scenarios/faults.toml")).unwrap();
    let incidents =
        Scenario::load(&super::repo().join("simulators/scenarios/default.toml")).unwrap();
    let city = CityConfig {
        sensors: 10,
        areas: 5,
        types: SensorType::ALL.to_vec(),
    };
    let start = aqyl_sim::time::parse_time("2014-08-01T00:00:00").unwrap();
    let mut config = SimConfig::new(city, start, chrono::Duration::days(3), 5);
    config.rates = faults.rates.clone();
    let config = config.with_scenario(&Scenario {
        rates: Vec::new(),
        faults: Vec::new(),
        ..incidents
    });
    let (scored, faults, outages) = score_with_outages(config);
    // (kind, sensor type) → (episodes, caught within two intervals).
    let mut by_kind: BTreeMap<(&str, &str), (usize, usize)> = BTreeMap::new();
    // Kind → (episodes lasting more than `alert_after` + 1 intervals, with an incident from
    // within two intervals of their start).
    let mut lasting: BTreeMap<&str, (usize, usize)> = BTreeMap::new();
    for f in &faults {
        let e = by_kind
            .entry((f.kind.as_str(), f.sensor_type.as_str()))
            .or_default();
        e.0 += 1;
        if scored.caught(f).is_some() {
            e.1 += 1;
        }
        let interval = scored.intervals[&f.sensor_type] as f64;
        if (f.end - f.start).num_milliseconds() as f64 > (scored.alert_after + 1.0) * interval {
            let l = lasting.entry(f.kind.as_str()).or_default();
            l.0 += 1;
            if scored.incident(f).is_some() {
                l.1 += 1;
            }
        }
    }
    for (kind, (n, with)) in &lasting {
        println!("{kind:>13}: {with}/{n} lasting episodes with a quality incident from within two intervals");
    }
    let total = |kind: &str, types: &[&str]| {
        by_kind
            .iter()
            .filter(|((k, t), _)| *k == kind && (types.is_empty() || types.contains(t)))
            .fold((0, 0), |acc, (_, v)| (acc.0 + v.0, acc.1 + v.1))
    };
    let kinds: BTreeSet<&str> = by_kind.keys().map(|k| k.0).collect();
    for kind in kinds {
        let (n, caught) = total(kind, &[]);
        let per_type: Vec<String> = by_kind
            .iter()
            .filter(|((k, _), _)| *k == kind)
            .map(|((_, t), (n, c))| format!("{t} {c}/{n}"))
            .collect();
        println!(
            "{kind:>13}: {caught}/{n} caught within two intervals ({:.0}%): {}",
            100.0 * caught as f64 / n as f64,
            per_type.join(", ")
        );
    }
    let false_alarms = scored.false_alarms(&faults, &outages);
    let sensor_days = scored.reports.len() as f64 * 3.0;
    println!(
        "false alarms: {} quality incidents away from any fault over {sensor_days} sensor-days ({:.3} per sensor-day)",
        false_alarms.len(),
        false_alarms.len() as f64 / sensor_days
    );
    for e in false_alarms.iter().take(10) {
        println!("  {} {}: {}", e.sensor_type, e.subject, e.message);
    }
    // Stuck within two intervals needs three equal readings, which is the default only for
    // traffic and pollution; noise, weather and parking wait longer on purpose (their
    // `flat_line`), and an hour-long episode may end first.
    for (kind, types) in [
        ("stuck", &["traffic", "pollution"][..]),
        ("spike", &[]),
        ("out_of_range", &[]),
        ("dropout", &[]),
        ("late", &[]),
    ] {
        let (n, caught) = total(kind, types);
        assert!(n > 0, "no {kind} episode drawn");
        assert!(caught * 10 >= n * 9, "{kind}: {caught} of {n}");
    }
    assert!(
        (false_alarms.len() as f64) < 0.1 * sensor_days,
        "{} false alarms",
        false_alarms.len()
    );
}

/// The real service over a real Mosquitto and VictoriaMetrics: a segment reads a negative
/// speed; its score falls, a `quality` incident starts and ends on MQTT, an operator who
/// connects later finds the latest report retained on `aqyl/quality/<sensor_id>`, the store
/// gets `quality` points, and the bad reading stays out of the aggregates.
#[test]
fn quality_reports_incidents_and_points_leave_the_service() {
    use aqyl_tests::{publish, wait_until, Mosquitto, Subscriber, VictoriaMetrics};
    let mqtt = Mosquitto::start();
    let vm = VictoriaMetrics::start();
    let dir = super::config_dir(1);
    let status = Subscriber::start(mqtt.port, "aqyl/status");
    let incidents = Subscriber::start(mqtt.port, "aqyl/events/quality/#");
    let aqyl = super::Aqyl::start(&dir.path().join("aqyl.toml"), &mqtt, &vm);
    aqyl.wait_online(&status);

    // A reading every 5 minutes for 80 minutes; minutes 40 to 50 read -5 km/h: low for more
    // than one expected interval, which is what starts an incident.
    let bad = |m: u64| (40..=50).contains(&m);
    let msgs: Vec<(String, Vec<u8>)> = (0..=80u64)
        .step_by(5)
        .map(|m| {
            let speed = if bad(m) { -5.0 } else { 48.0 + (m % 7) as f64 };
            let payload = format!(
                r#"{{"avgSpeed":{speed},"vehicleCount":{},"TIMESTAMP":"{}"}}"#,
                10 + m % 4,
                super::local(m)
            );
            ("city/traffic/158324".to_string(), payload.into_bytes())
        })
        .collect();
    publish(mqtt.port, &msgs);
    wait_until(super::WAIT, "the readings to be kept out", || {
        aqyl.metric("aqyl_quality_excluded_total ") == Some(3)
    });
    let lifecycle = incidents.wait_for(2, super::WAIT);
    let states: Vec<(String, String)> = lifecycle
        .iter()
        .map(|m| {
            let v: serde_json::Value = serde_json::from_slice(&m.payload).unwrap();
            assert_eq!(m.topic, "aqyl/events/quality/158324");
            (
                v["state"].as_str().unwrap().to_string(),
                v["message"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(states[0].0, "start");
    assert!(
        states[0].1.contains("avgSpeed = -5 is below its minimum 0"),
        "{}",
        states[0].1
    );
    assert_eq!(states[1].0, "end");

    // An operator connecting now gets the latest report, retained.
    let late = Subscriber::start(mqtt.port, "aqyl/quality/#");
    let report = late.wait_for(1, super::WAIT).remove(0);
    assert!(report.retain);
    assert_eq!(report.topic, "aqyl/quality/158324");
    let v: serde_json::Value = serde_json::from_slice(&report.payload).unwrap();
    println!("retained: {v}");
    println!(
        "incident: {}",
        String::from_utf8_lossy(&lifecycle[0].payload)
    );
    assert_eq!(
        (v["sensor_id"].as_str(), v["sensor_type"].as_str()),
        (Some("158324"), Some("traffic"))
    );
    for metric in ["frequency", "age", "latency", "completeness", "correctness"] {
        let m = &v[metric];
        assert!(
            m["absolute"].is_number() && m["unit"].is_string(),
            "{metric}: {v}"
        );
        let rated = m["rated"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&rated), "{metric}: {v}");
    }
    assert!(v["score"].as_f64().unwrap() >= 0.6, "recovered: {v}");
    // An operator's terminal: every sensor's latest report, worst first.
    let out = std::process::Command::new(super::AQYL)
        .args(["quality", "--config"])
        .arg(dir.path().join("aqyl.toml"))
        .env("AQYL_MQTT_URL", mqtt.url())
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    println!("{table}");
    let row = table.lines().nth(1).unwrap_or_default();
    assert!(
        row.contains("traffic") && row.contains("158324") && row.ends_with(" ok"),
        "{table}"
    );
    aqyl.stop();

    // The store: one `quality` point per reading, the dip from minute 40, and an aggregate
    // mean over the correct readings only.
    let scores = vm.export(r#"{__name__="quality_score",sensor_id="158324"}"#);
    assert_eq!(scores.len(), 1);
    assert_eq!(scores[0].label("sensor_type"), "traffic");
    let dip = scores[0]
        .samples
        .iter()
        .find(|(t, _)| *t == super::utc_ms(40))
        .unwrap();
    assert!(dip.1 < 0.6, "{:?}", scores[0].samples);
    assert_eq!(scores[0].samples.len(), msgs.len());
    let counts = vm
        .export(r#"{__name__="aggregate_count",field="avgSpeed",window="5m",sensor_id="158324"}"#);
    let total: f64 = counts
        .iter()
        .flat_map(|s| s.samples.iter())
        .map(|s| s.1)
        .sum();
    assert_eq!(
        total as usize,
        msgs.len() - 3,
        "the bad readings are in no window"
    );
}
