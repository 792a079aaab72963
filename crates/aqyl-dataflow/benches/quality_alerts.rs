//! Quality incidents on real streams: replays the CityPulse Aarhus files (traffic, parking,
//! pollution, weather) through the dataflow in process, with the shipped descriptors and
//! `[quality]` settings and the event-time clock, and prints how many `quality` incidents an
//! operator would get: per sensor type, per sensor-day, and by cause. Not part of the test
//! suite (it needs the data); run it with your copy of the CityPulse Aarhus files:
//!
//! ```text
//! cargo bench -p aqyl-dataflow --bench quality_alerts -- DIR [--config PATH] [--workers N] [--show N] [--list]
//! ```
//!
//! `DIR` holds `traffic/`, `parking/`, `pollution/` and `weather/` as the CityPulse download
//! lays them out (`traffic/AarhusTrafficData<REPORT_ID>.csv`, ...). Rows are sent as they are
//! (duplicates and rows whose timestamp goes back included), merged by timestamp.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a benchmark driver

use aqyl_core::quality::QualityRecord;
use aqyl_core::{EventState, RawMessage};
use aqyl_dataflow::quality::QualitySpec;
use aqyl_dataflow::PipelineSpec;
use aqyl_sim::replay::{discover, Replay, ReplayOptions};
use aqyl_sim::sensors::SensorType as SimType;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

const DAY_MS: f64 = 86_400_000.0;

/// The cause of an incident, from the problems its start message names.
fn cause(message: &str) -> &'static str {
    let why = message.split_once("): ").map_or(message, |(_, w)| w);
    let causes: [(&str, &str); 9] = [
        ("silent", "silent"),
        ("values stuck", "stuck"),
        ("spike in", "spike"),
        ("sudden shift", "shift"),
        ("is below its minimum", "out of range"),
        ("is above its maximum", "out of range"),
        ("arrived after its window", "late"),
        ("expected a", "wrong type"),
        ("missing", "incomplete"),
    ];
    for (needle, name) in causes {
        if why.contains(needle) {
            return name;
        }
    }
    if why.contains("unusable") {
        "unusable message"
    } else {
        "ratings fell"
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let value = |flag: &str| {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1).cloned())
    };
    let config = value("--config").map_or_else(
        || {
            PathBuf::from(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../../config/aqyl.toml"
            ))
        },
        PathBuf::from,
    );
    // Two workers, as `aqyl run` by default; the figures are the same with any number.
    let workers: usize = value("--workers").map_or(2, |w| w.parse().expect("--workers N"));
    // `--show N`: N example incidents of each (type, cause).
    let show: usize = value("--show").map_or(1, |n| n.parse().expect("--show N"));
    // `--list`: every incident start, one line each (to compare runs).
    let list = args.iter().any(|a| a == "--list");
    let mut skip = false;
    let mut dir = None;
    for a in &args {
        if skip {
            skip = false;
        } else if a == "--config" || a == "--workers" || a == "--show" {
            skip = true;
        } else if !a.starts_with("--") {
            dir = Some(PathBuf::from(a));
        }
    }
    let Some(dir) = dir else {
        eprintln!("usage: cargo bench -p aqyl-dataflow --bench quality_alerts -- DIR [--config PATH] [--workers N] [--show N] [--list]\n  DIR: the CityPulse Aarhus files (traffic/, parking/, pollution/, weather/)");
        // Run by `cargo test --benches` (no `--bench`, no data): nothing to measure.
        std::process::exit(if args.iter().any(|a| a == "--bench") {
            2
        } else {
            0
        });
    };

    let loaded = aqyl_core::config::load(&config, |_| None).unwrap_or_else(|e| {
        eprintln!("{e}");
        std::process::exit(2)
    });
    let c = &loaded.config;
    let quality = QualitySpec::from_config(&c.quality, false);
    let spec = PipelineSpec {
        corroborate: Default::default(),
        registry: aqyl_dataflow::shared(aqyl_core::ingest::decode::Registry::new(
            loaded.sensor_types.clone(),
        )),
        workers,
        window: *c.pipeline.window.get_ref(),
        allowed_lateness: c.pipeline.allowed_lateness,
        idle_timeout: None,
        max_payload_bytes: c.ingest.max_payload_bytes,
        max_future: None,
        update_horizon: None,
        rules: Arc::new(Vec::new()),
        quality: Some(quality),
        rule_timing: Default::default(),
        state_ttl: None,
    };
    let types = [
        SimType::Traffic,
        SimType::Parking,
        SimType::Pollution,
        SimType::Weather,
    ];
    let files = discover(&dir, &types).unwrap_or_else(|e| {
        eprintln!("{e}");
        std::process::exit(2)
    });
    println!(
        "{} files under {}, config {}, {workers} workers, event-time clock",
        files.len(),
        dir.display(),
        config.display()
    );
    println!("{quality:?}");

    let (outputs, received) = aqyl_dataflow::Outputs::channels();
    // Aggregates and dead letters are not looked at.
    let (mut ev_rx, mut q_rx) = (received.events, received.quality);
    // Per (type, sensor): first and last report time, reports.
    let reports = std::thread::spawn(move || {
        let mut spans: BTreeMap<(String, String), (u64, u64, u64)> = BTreeMap::new();
        while let Some(batch) = q_rx.blocking_recv() {
            for r in batch {
                if let QualityRecord::Report(r) = r {
                    let e = spans
                        .entry((r.sensor_type.to_string(), r.sensor_id.to_string()))
                        .or_insert((r.time, r.time, 0));
                    e.0 = e.0.min(r.time);
                    e.1 = e.1.max(r.time);
                    e.2 += 1;
                }
            }
        }
        spans
    });
    let events = std::thread::spawn(move || {
        let mut out = Vec::new();
        while let Some(e) = ev_rx.blocking_recv() {
            if e.event_type == "quality" {
                out.push(e);
            }
        }
        out
    });
    let started = Instant::now();
    let (router, running) =
        aqyl_dataflow::start(spec, 4096, outputs, Arc::new(Default::default())).unwrap();
    let mut rows = 0u64;
    for m in Replay::open(files, ReplayOptions::default()).unwrap() {
        let m = m.unwrap();
        rows += 1;
        let msg = RawMessage {
            topic: m.topic.clone(),
            payload: m.encode(None),
            received_at: 0,
        };
        assert!(router.route_blocking(msg), "the dataflow stopped");
    }
    drop(router);
    running.join().unwrap();
    let spans = reports.join().unwrap();
    let incidents = events.join().unwrap();
    let elapsed = started.elapsed().as_secs_f64();

    // Per type: sensors, sensor-days, reports, incidents by cause.
    let mut by_type: BTreeMap<&str, (usize, f64, u64)> = BTreeMap::new();
    for ((ty, _), (first, last, n)) in &spans {
        let e = by_type.entry(ty.as_str()).or_default();
        e.0 += 1;
        e.1 += (last - first) as f64 / DAY_MS;
        e.2 += n;
    }
    let starts: Vec<_> = incidents
        .iter()
        .filter(|e| e.state == EventState::Start)
        .collect();
    let ends = incidents
        .iter()
        .filter(|e| e.state == EventState::End)
        .count();
    let mut causes: BTreeMap<(&str, &str), usize> = BTreeMap::new();
    for e in &starts {
        *causes
            .entry((&*e.sensor_type, cause(&e.message)))
            .or_default() += 1;
    }
    println!(
        "{rows} rows in {elapsed:.1} s ({:.0} rows/s)",
        rows as f64 / elapsed
    );
    println!(
        "{:<10} {:>7} {:>11} {:>9} {:>9} {:>16}",
        "type", "sensors", "sensor-days", "reports", "incidents", "per sensor-day"
    );
    let (mut sensors, mut days, mut total) = (0, 0.0, 0);
    for (ty, (n, d, r)) in &by_type {
        let i = starts.iter().filter(|e| &*e.sensor_type == *ty).count();
        println!(
            "{ty:<10} {n:>7} {d:>11.1} {r:>9} {i:>9} {:>16.3}",
            i as f64 / d.max(f64::MIN_POSITIVE)
        );
        sensors += n;
        days += d;
        total += i;
    }
    println!(
        "{:<10} {sensors:>7} {days:>11.1} {:>9} {total:>9} {:>16.3}",
        "all",
        spans.values().map(|s| s.2).sum::<u64>(),
        total as f64 / days.max(f64::MIN_POSITIVE)
    );
    println!("incidents by cause (started; {ends} ended):");
    for ((ty, cause), n) in &causes {
        println!("  {ty:<10} {cause:<16} {n:>7}");
    }
    if list {
        let mut lines: Vec<String> = starts
            .iter()
            .map(|e| {
                format!(
                    "incident {} {} {} {} {}",
                    e.sensor_type,
                    e.subject,
                    aqyl_core::output::rfc3339_ms(e.started_at as i64),
                    aqyl_core::output::rfc3339_ms(e.time as i64),
                    cause(&e.message)
                )
            })
            .collect();
        lines.sort();
        for l in lines {
            println!("{l}");
        }
    }
    for (ty, c) in causes.keys() {
        let examples = starts
            .iter()
            .filter(|e| &*e.sensor_type == *ty && cause(&e.message) == *c);
        for e in examples.take(show) {
            println!(
                "  e.g. {} to {}: {}",
                aqyl_core::output::rfc3339_ms(e.started_at as i64),
                aqyl_core::output::rfc3339_ms(e.time as i64),
                e.message
            );
        }
    }
}
