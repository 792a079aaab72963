//! `aqyl replay`, the real binary: CSV, JSON lines and SenML files and directories through the
//! dataflow, bad rows dead-lettered with their reason, the `--json` summary's counts, and the
//! same aggregates and events as the in-process dataflow (`run_batch`) on the same rows.

use super::{repo, AQYL};
use serde_json::Value;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// A configuration directory with the given descriptors (`name`, text) and no sinks.
fn config(descriptors: &[(&str, &str)], quality: bool) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("sensors")).unwrap();
    for (name, text) in descriptors {
        std::fs::write(dir.path().join("sensors").join(name), text).unwrap();
    }
    std::fs::write(
        dir.path().join("aqyl.toml"),
        format!(
            "[pipeline]\nworkers = 2\nwindow = \"5m\"\nallowed_lateness = \"10m\"\n[influx]\nenabled = false\n[quality]\nenabled = {quality}\n"
        ),
    )
    .unwrap();
    dir
}

/// A small traffic type: two fields, 5-minute windows, the sensor named by the file.
const TRAFFIC: &str = r#"
name = "traffic"
replay_files = "AarhusTrafficData{sensor_id}.csv"
[time]
field = "/TIMESTAMP"
format = "%Y-%m-%dT%H:%M:%S"
timezone = "Europe/Copenhagen"
[[fields]]
name = "avgSpeed"
[[fields]]
name = "vehicleCount"
type = "integer"
[[windows]]
size = "5m"
"#;

const HEADER: &str =
    "status,avgMeasuredTime,avgSpeed,extID,medianMeasuredTime,TIMESTAMP,vehicleCount,_id,REPORT_ID";

/// A CityPulse traffic row at `minute` after 02:00 local time (00:00 UTC) on 2014-08-01.
fn row(minute: u32, speed: u32, count: u32, id: u32) -> String {
    let (h, m) = (2 + minute / 60, minute % 60);
    format!("OK,60,{speed},1,60,2014-08-01T{h:02}:{m:02}:00,{count},{minute},{id}")
}

fn replay(config: &Path, args: &[&str]) -> Output {
    Command::new(AQYL)
        .arg("replay")
        .arg("--config")
        .arg(config.join("aqyl.toml"))
        .args(args)
        .output()
        .unwrap()
}

/// Runs a replay that must succeed with `--json`, and returns its summary.
fn summary(config: &Path, args: &[&str]) -> Value {
    let out = replay(config, &[&["--json"], args].concat());
    assert!(
        out.status.success(),
        "aqyl replay failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "not one JSON object ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

fn lines(path: &Path, prefix: &str) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .filter(|l| l.starts_with(prefix))
        .map(str::to_string)
        .collect()
}

fn dead_letters(out: &Path) -> Vec<Value> {
    std::fs::read_to_string(out.join("deadletter.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn a_directory_of_csv_files_is_replayed_and_bad_rows_are_dead_lettered_with_reasons() {
    let cfg = config(&[("traffic.toml", TRAFFIC)], false);
    let data = tempfile::tempdir().unwrap();
    std::fs::create_dir(data.path().join("north")).unwrap();
    // Sensor 1: 24 good rows (two hours), a short row, a row with text for a number, and a
    // row from 40 minutes before the newest (beyond the 10-minute lateness).
    let mut a = format!("{HEADER}\n");
    for i in 0..24 {
        writeln!(a, "{}", row(5 * i, 40 + i, 5, 1)).unwrap();
        if i == 10 {
            writeln!(a, "OK,60,50").unwrap();
            writeln!(
                a,
                "{}",
                row(5 * i, 40, 5, 1).replace(",40,1,60,", ",fast,1,60,")
            )
            .unwrap();
        }
    }
    writeln!(a, "{}", row(75, 50, 5, 1)).unwrap();
    std::fs::write(data.path().join("AarhusTrafficData1.csv"), a).unwrap();
    // Sensor 2, in a subdirectory: 12 good rows.
    let mut b = format!("{HEADER}\n");
    for i in 0..12 {
        writeln!(b, "{}", row(5 * i, 60, 10, 2)).unwrap();
    }
    std::fs::write(data.path().join("north/AarhusTrafficData2.csv"), b).unwrap();
    std::fs::write(data.path().join("north/README.txt"), "not data").unwrap();

    let out = tempfile::tempdir().unwrap();
    let data_dir = data.path().to_str().unwrap();
    let s = summary(
        cfg.path(),
        &["--out", out.path().to_str().unwrap(), data_dir],
    );
    assert_eq!(s["files"], 2, "{s}");
    assert_eq!(s["skipped_files"], 1, "{s}");
    assert_eq!(s["rows"], 24 + 3 + 12, "{s}");
    assert_eq!(s["observations"], 24 + 12, "{s}");
    // One 5-minute window per good row and field.
    assert_eq!(s["windows"], (24 + 12) * 2, "{s}");
    assert_eq!(s["dead_letters"], 3, "{s}");
    assert_eq!(
        s["dead_letters_by_reason"],
        serde_json::json!({"malformed_csv": 1, "wrong_type": 1, "late": 1}),
        "{s}"
    );
    let aggregates = lines(&out.path().join("aggregate.lp"), "aggregate,");
    assert_eq!(aggregates.len(), (24 + 12) * 2);
    assert!(aggregates.iter().any(|l| l.contains("sensor_id=2")
        && l.contains("field=vehicleCount")
        && l.contains("mean=10")));
    let dead = dead_letters(out.path());
    let reasons: Vec<&str> = dead.iter().map(|d| d["reason"].as_str().unwrap()).collect();
    assert_eq!(reasons.len(), 3);
    for r in ["malformed_csv", "wrong_type", "late"] {
        assert!(reasons.contains(&r), "{reasons:?}");
    }
    let csv = dead
        .iter()
        .find(|d| d["reason"] == "malformed_csv")
        .unwrap();
    let detail = csv["detail"].as_str().unwrap();
    assert!(
        detail.contains("AarhusTrafficData1.csv:13: expected 9 columns"),
        "{detail}"
    );
    let wrong = dead.iter().find(|d| d["reason"] == "wrong_type").unwrap();
    assert_eq!(wrong["topic"], "city/traffic/1");
    assert!(wrong["payload"].as_str().unwrap().contains("\"fast\""));

    // The same replay again gives the same output (the files are replaced, not appended to).
    let first = std::fs::read_to_string(out.path().join("aggregate.lp")).unwrap();
    let again = summary(
        cfg.path(),
        &["--out", out.path().to_str().unwrap(), data_dir],
    );
    assert_eq!(again["windows"], s["windows"]);
    let mut x: Vec<&str> = first.lines().collect();
    let second = std::fs::read_to_string(out.path().join("aggregate.lp")).unwrap();
    let mut y: Vec<&str> = second.lines().collect();
    x.sort_unstable();
    y.sort_unstable();
    assert_eq!(x, y);
    assert_eq!(dead_letters(out.path()).len(), 3);

    // Output written inside the input directory is not read back on the next replay.
    let inside = data.path().join("out");
    let inside_dir = inside.to_str().unwrap();
    let first = summary(cfg.path(), &["--out", inside_dir, data_dir]);
    let second = summary(cfg.path(), &["--out", inside_dir, data_dir]);
    assert_eq!(first["files"], 2, "{first}");
    assert_eq!(
        (second["files"].as_u64(), second["rows"].as_u64()),
        (Some(2), first["rows"].as_u64()),
        "{second}"
    );
    // README.txt, aggregate.lp (not a row format) and deadletter.jsonl (the replay's own).
    assert_eq!(second["skipped_files"], 3, "{second}");
}

#[test]
fn json_lines_name_their_sensor_in_each_row() {
    let descriptor = TRAFFIC.replace(
        "replay_files = \"AarhusTrafficData{sensor_id}.csv\"",
        "sensor_id_field = \"/REPORT_ID\"",
    );
    let cfg = config(&[("traffic.toml", &descriptor)], false);
    let data = tempfile::tempdir().unwrap();
    let mut text = String::new();
    for i in 0..6u32 {
        for id in [158324u32, 158355] {
            let ts = format!("2014-08-01T02:{:02}:00", 5 * i);
            writeln!(
                text,
                r#"{{"TIMESTAMP":"{ts}","avgSpeed":{},"vehicleCount":{},"REPORT_ID":{id}}}"#,
                30 + i,
                id % 7
            )
            .unwrap();
        }
    }
    writeln!(
        text,
        r#"{{"TIMESTAMP":"2014-08-01T02:30:00","avgSpeed":1,"vehicleCount":1}}"#
    )
    .unwrap();
    writeln!(text, "{{not json").unwrap();
    let file = data.path().join("dump.jsonl");
    std::fs::write(&file, text).unwrap();
    let out = tempfile::tempdir().unwrap();
    let s = summary(
        cfg.path(),
        &[
            "--type",
            "traffic",
            "--out",
            out.path().to_str().unwrap(),
            file.to_str().unwrap(),
        ],
    );
    assert_eq!(
        (s["rows"].as_u64(), s["observations"].as_u64()),
        (Some(14), Some(12)),
        "{s}"
    );
    assert_eq!(
        s["dead_letters_by_reason"],
        serde_json::json!({"missing_field": 1, "malformed_json": 1}),
        "{s}"
    );
    let aggregates = lines(&out.path().join("aggregate.lp"), "aggregate,");
    for id in ["158324", "158355"] {
        let n = aggregates
            .iter()
            .filter(|l| l.contains(&format!("sensor_id={id},")))
            .count();
        assert_eq!(n, 12, "{id}: {aggregates:?}");
    }
    let missing = dead_letters(out.path())
        .into_iter()
        .find(|d| d["reason"] == "missing_field")
        .unwrap();
    assert!(
        missing["detail"]
            .as_str()
            .unwrap()
            .contains("dump.jsonl:13: the sensor id"),
        "{missing}"
    );
}

#[test]
fn senml_packs_are_replayed_per_line_and_per_file() {
    let noise = "name = \"noise\"\nformat = \"senml\"\nreplay_files = \"noise-{sensor_id}.json\"\n[[fields]]\nname = \"laeq\"\n[[windows]]\nsize = \"15m\"\n";
    let cfg = config(&[("noise.toml", noise)], false);
    let data = tempfile::tempdir().unwrap();
    // Sensor 7: one pack per line, each with two record times five minutes apart.
    let mut per_line = String::new();
    for i in 0..3u32 {
        let bt = 1_406_851_200 + 600 * i;
        writeln!(
            per_line,
            r#"[{{"bn":"urn:dev:noise:7:","bt":{bt},"n":"laeq","v":{}}},{{"n":"laeq","t":300,"v":{}}}]"#,
            50 + i,
            60 + i
        )
        .unwrap();
    }
    std::fs::write(data.path().join("noise-7.json"), per_line).unwrap();
    // Sensor 8: the whole file is one pack, written over several lines.
    let per_file = "[\n  {\"bt\":1406851200,\"n\":\"laeq\",\"v\":40},\n  {\"n\":\"laeq\",\"t\":60,\"v\":44}\n]\n";
    std::fs::write(data.path().join("noise-8.json"), per_file).unwrap();
    let out = tempfile::tempdir().unwrap();
    let s = summary(
        cfg.path(),
        &[
            "--out",
            out.path().to_str().unwrap(),
            data.path().to_str().unwrap(),
        ],
    );
    assert_eq!(
        (s["files"].as_u64(), s["rows"].as_u64()),
        (Some(2), Some(4)),
        "{s}"
    );
    assert_eq!(s["observations"], 8, "{s}");
    assert_eq!(s["dead_letters"], 0, "{s}");
    let aggregates = lines(&out.path().join("aggregate.lp"), "aggregate,");
    // Sensor 8: both readings in the first 15 minutes, mean 42.
    assert!(
        aggregates
            .iter()
            .any(|l| l.contains("sensor_id=8,") && l.contains("count=2i") && l.contains("mean=42")),
        "{aggregates:?}"
    );
    // Sensor 7: 30 minutes of readings every 5 minutes: two 15-minute windows.
    assert_eq!(
        aggregates
            .iter()
            .filter(|l| l.contains("sensor_id=7,"))
            .count(),
        2,
        "{aggregates:?}"
    );
}

/// The shipped configuration (descriptors, rules, quality), in a directory of its own.
fn shipped() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    copy_dir(&repo().join("config"), dir.path());
    dir
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let path = entry.unwrap().path();
        let target = to.join(path.file_name().unwrap());
        if path.is_dir() {
            copy_dir(&path, &target);
        } else {
            std::fs::copy(&path, &target).unwrap();
        }
    }
}

#[test]
fn replay_writes_what_the_in_process_dataflow_computes_on_the_same_rows() {
    let cfg = shipped();
    let data = tempfile::tempdir().unwrap();
    // Ten hours of three segments, with congestion (slow and busy) in the middle.
    let ids = [158324u32, 158355, 158386];
    let mut rng = 7u64;
    let mut next = || {
        rng = rng
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (rng >> 33) as u32
    };
    let mut files: Vec<(u32, String)> = ids.iter().map(|id| (*id, format!("{HEADER}\n"))).collect();
    for i in 0..120u32 {
        for (id, text) in files.iter_mut() {
            let busy = (40..60).contains(&i);
            let speed = if busy {
                20 + next() % 10
            } else {
                40 + next() % 40
            };
            let count = if busy { 15 + next() % 10 } else { next() % 10 };
            writeln!(text, "{}", row(5 * i, speed, count, *id)).unwrap();
        }
    }
    let mut paths: Vec<PathBuf> = Vec::new();
    for (id, text) in &files {
        let path = data.path().join(format!("AarhusTrafficData{id}.csv"));
        std::fs::write(&path, text).unwrap();
        paths.push(path);
    }
    let out = tempfile::tempdir().unwrap();
    let s = summary(
        cfg.path(),
        &[
            "--type",
            "traffic",
            "--workers",
            "2",
            "--out",
            out.path().to_str().unwrap(),
            data.path().to_str().unwrap(),
        ],
    );
    assert_eq!(s["rows"], 360, "{s}");
    assert_eq!(s["dead_letters"], 0, "{s}");

    // The same rows, as the messages a sensor publishes, through run_batch with the spec
    // `aqyl replay` builds from the same configuration.
    let loaded = aqyl_core::config::load(&cfg.path().join("aqyl.toml"), |_| None).unwrap();
    let spec = aqyl::replay::replay_spec(&loaded, Some(2));
    let mut messages = Vec::new();
    for i in 0..120usize {
        for (id, text) in &files {
            let line = text.lines().nth(i + 1).unwrap();
            let object: serde_json::Map<String, Value> = HEADER
                .split(',')
                .zip(line.split(','))
                .map(|(k, v)| (k.to_string(), Value::String(v.to_string())))
                .collect();
            messages.push(aqyl_core::RawMessage {
                topic: format!("city/traffic/{id}"),
                payload: serde_json::to_vec(&object).unwrap(),
                received_at: 0,
            });
        }
    }
    let batch = aqyl_dataflow::run_batch(spec, messages).unwrap();
    let mut expected = Vec::new();
    for a in &batch.aggregates {
        let mut l = String::new();
        a.write_line(&mut l).unwrap();
        expected.extend(l.lines().map(str::to_string));
    }
    for e in &batch.events {
        let mut l = String::new();
        e.write_line(&mut l).unwrap();
        expected.extend(l.lines().map(str::to_string));
    }
    let lp = out.path().join("aggregate.lp");
    let mut got = lines(&lp, "aggregate,");
    got.extend(lines(&lp, "event,"));
    got.sort();
    expected.sort();
    assert!(
        expected
            .iter()
            .any(|l| l.starts_with("event,event_type=congestion")),
        "the data should raise congestion: {:?}",
        &expected[..expected.len().min(5)]
    );
    assert!(expected.iter().any(|l| l.contains("window=4h")));
    assert_eq!(got.len(), expected.len());
    assert_eq!(got, expected);
    assert_eq!(s["windows"], batch.aggregates.len());
    assert_eq!(s["events"], batch.events.len());

    // One worker writes the same.
    let one = tempfile::tempdir().unwrap();
    summary(
        cfg.path(),
        &[
            "--type",
            "traffic",
            "--workers",
            "1",
            "--out",
            one.path().to_str().unwrap(),
            data.path().to_str().unwrap(),
        ],
    );
    let lp = one.path().join("aggregate.lp");
    let mut single = lines(&lp, "aggregate,");
    single.extend(lines(&lp, "event,"));
    single.sort();
    assert_eq!(single, got);
}

#[test]
fn mistakes_are_explained_and_exit_non_zero() {
    let cfg = shipped();
    let data = tempfile::tempdir().unwrap();
    let csv = data.path().join("AarhusTrafficData1.csv");
    std::fs::write(&csv, format!("{HEADER}\n{}\n", row(0, 50, 5, 1))).unwrap();
    let out = tempfile::tempdir().unwrap();
    let out_dir = out.path().to_str().unwrap();
    let stderr = |o: Output| {
        assert!(!o.status.success());
        String::from_utf8_lossy(&o.stderr).into_owned()
    };
    // Several types and no --type: the types are listed.
    let e = stderr(replay(
        cfg.path(),
        &["--out", out_dir, csv.to_str().unwrap()],
    ));
    assert!(
        e.contains("--type") && e.contains("traffic") && e.contains("parking"),
        "{e}"
    );
    let e = stderr(replay(
        cfg.path(),
        &["--type", "tram", "--out", out_dir, csv.to_str().unwrap()],
    ));
    assert!(e.contains("no sensor type \"tram\""), "{e}");
    // A path that is not there.
    let missing = data.path().join("missing.csv");
    let e = stderr(replay(
        cfg.path(),
        &[
            "--type",
            "traffic",
            "--out",
            out_dir,
            missing.to_str().unwrap(),
        ],
    ));
    assert!(
        e.contains("cannot read") && e.contains("missing.csv"),
        "{e}"
    );
    // A file whose name does not carry the sensor, for a type that reads it from the name.
    let other = data.path().join("segment.csv");
    std::fs::copy(&csv, &other).unwrap();
    let e = stderr(replay(
        cfg.path(),
        &[
            "--type",
            "traffic",
            "--out",
            out_dir,
            other.to_str().unwrap(),
        ],
    ));
    assert!(
        e.contains("segment.csv") && e.contains("replay_files"),
        "{e}"
    );
    // A bad configuration.
    let e = stderr(
        Command::new(AQYL)
            .args([
                "replay",
                "--config",
                "/nonexistent/aqyl.toml",
                csv.to_str().unwrap(),
            ])
            .output()
            .unwrap(),
    );
    assert!(e.contains("cannot read the configuration file"), "{e}");
    // Bad replay keys are file:line errors, in aqyl check and in aqyl replay alike.
    let bad = config(
        &[(
            "t.toml",
            "name = \"t\"\nsensor_id_field = \"id\"\nreplay_files = \"x.csv\"\n[[fields]]\nname = \"a\"\n",
        )],
        false,
    );
    let check = Command::new(AQYL)
        .args(["check", "--config"])
        .arg(bad.path().join("aqyl.toml"))
        .output()
        .unwrap();
    let e = stderr(check);
    assert!(
        e.contains("t.toml:2: sensor_id_field \"id\" must be a JSON Pointer"),
        "{e}"
    );
    assert!(
        e.contains("t.toml:3: replay_files \"x.csv\" must contain {sensor_id}"),
        "{e}"
    );
    let e = stderr(replay(
        bad.path(),
        &["--out", out_dir, csv.to_str().unwrap()],
    ));
    assert!(e.contains("t.toml:2: sensor_id_field"), "{e}");
    // The help teaches.
    let help = Command::new(AQYL)
        .args(["replay", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(
        help.contains("Examples:") && help.contains("sensor_id_field"),
        "{help}"
    );
}

#[test]
fn without_out_the_configured_sinks_get_what_aqyl_run_would_write() {
    let vm = aqyl_tests::VictoriaMetrics::start();
    let cfg = config(&[("traffic.toml", TRAFFIC)], false);
    let files = cfg.path().join("lp");
    std::fs::write(
        cfg.path().join("aqyl.toml"),
        format!(
            "[pipeline]\nworkers = 2\nallowed_lateness = \"10m\"\n[influx]\nenabled = true\nurl = \"{}\"\nflush_interval = \"100ms\"\n[file]\nenabled = true\ndir = \"{}\"\n[quality]\nenabled = false\n[state]\ndir = \"state\"\n",
            vm.url(),
            files.display()
        ),
    )
    .unwrap();
    let data = tempfile::tempdir().unwrap();
    let mut text = format!("{HEADER}\n");
    for i in 0..12 {
        writeln!(text, "{}", row(5 * i, 50, i, 1)).unwrap();
    }
    writeln!(text, "OK,60").unwrap();
    let csv = data.path().join("AarhusTrafficData1.csv");
    std::fs::write(&csv, text).unwrap();
    let s = summary(cfg.path(), &[csv.to_str().unwrap()]);
    assert_eq!(
        (s["windows"].as_u64(), s["dead_letters"].as_u64()),
        (Some(24), Some(1)),
        "{s}"
    );
    let output = s["output"].as_str().unwrap();
    assert!(
        output.contains("aggregate.lp") && output.contains("InfluxDB"),
        "{s}"
    );
    // The file sink and its dead letters.
    assert_eq!(lines(&files.join("aggregate.lp"), "aggregate,").len(), 24);
    assert_eq!(dead_letters(&files).len(), 1);
    // The store: one count sample per window and field, the vehicle counts 0..11.
    let series = vm.export(r#"{__name__="aggregate_mean",sensor_id="1",field="vehicleCount"}"#);
    assert_eq!(series.len(), 1, "{series:?}");
    let means: Vec<f64> = series[0].samples.iter().map(|s| s.1).collect();
    assert_eq!(means, (0..12).map(f64::from).collect::<Vec<_>>());
}
