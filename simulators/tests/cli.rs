//! Command-line tests that need no broker: determinism of `run --print` and `score` on
//! recorded events.
#![allow(clippy::unwrap_used, missing_docs)]

use std::collections::HashMap;
use std::process::Command;

use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_aqyl-sim");

fn sim(args: &[&str]) -> std::process::Output {
    let out = Command::new(BIN)
        .args(args)
        .env("AQYL_LOG", "warn")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "aqyl-sim {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn print_run(seed: &str, truth: &std::path::Path) -> Vec<u8> {
    let faults = [
        "--fault",
        "stuck=0.02",
        "--fault",
        "late=0.02",
        "--fault",
        "clock_skew=0.01",
        "--fault",
        "spike=0.02",
    ];
    let mut args = vec![
        "run",
        "--print",
        "--max",
        "--sensors",
        "4",
        "--duration",
        "12h",
        "--seed",
        seed,
        "--truth",
        truth.to_str().unwrap(),
    ];
    args.extend(faults);
    sim(&args).stdout
}

#[test]
fn same_seed_same_output_and_truth_from_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let (t1, t2, t3) = (
        dir.path().join("1"),
        dir.path().join("2"),
        dir.path().join("3"),
    );
    let a = print_run("5", &t1);
    let b = print_run("5", &t2);
    let c = print_run("6", &t3);
    assert!(a.len() > 10_000);
    assert_eq!(a, b);
    assert_ne!(a, c);
    let (ta, tb) = (std::fs::read(&t1).unwrap(), std::fs::read(&t2).unwrap());
    assert!(!ta.is_empty());
    assert_eq!(ta, tb);
    assert_ne!(ta, std::fs::read(&t3).unwrap());
}

#[test]
fn score_reads_recorded_events() {
    let dir = tempfile::tempdir().unwrap();
    let truth = dir.path().join("truth.jsonl");
    std::fs::write(
        &truth,
        concat!(
            r#"{"kind":"incident","type":"congestion","subject":"area-1","sensor_type":"traffic","sensors":["1"],"start":"2014-08-01T06:00:00Z","end":"2014-08-01T07:00:00Z"}"#, "\n",
            r#"{"kind":"incident","type":"parking_full","subject":"BRUUNS","sensor_type":"parking","sensors":["BRUUNS"],"start":"2014-08-01T10:00:00Z","end":"2014-08-01T12:00:00Z"}"#, "\n",
        ),
    )
    .unwrap();
    let events = dir.path().join("events.jsonl");
    std::fs::write(
        &events,
        concat!(
            r#"aqyl/events/congestion/1 {"id":"e1","event_type":"congestion","subject":"1","state":"start","level":2,"started_at":"2014-08-01T06:10:00Z","time":"2014-08-01T06:10:00Z"}"#, "\n",
            r#"{"topic":"aqyl/events/garage_full/MAGASIN","payload":{"id":"e2","event_type":"garage_full","subject":"MAGASIN","state":"start","level":1,"started_at":"2014-08-01T10:00:00Z","time":"2014-08-01T10:00:00Z"}}"#, "\n",
        ),
    )
    .unwrap();
    let out = sim(&[
        "score",
        "--truth",
        truth.to_str().unwrap(),
        "--events",
        events.to_str().unwrap(),
        "--alias",
        "garage_full=parking_full",
        "--json",
    ]);
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    let by_type: HashMap<&str, &Value> = report["types"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| (t["incident_type"].as_str().unwrap(), t))
        .collect();
    assert_eq!(by_type["congestion"]["recall"], 1.0);
    assert_eq!(by_type["congestion"]["delay_p50_s"], 600.0);
    assert_eq!(by_type["parking_full"]["recall"], 0.0);
    assert_eq!(by_type["parking_full"]["false_alarms"], 1);
}
