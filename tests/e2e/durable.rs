//! Durable state: a run with `kill -9` at random moments and a SIGTERM restart writes exactly
//! the store points and incidents of an undisturbed run of the same stream.

use super::{Aqyl, WAIT};
use aqyl_tests::{publish, shipped_config, wait_until, Mosquitto, Subscriber, VictoriaMetrics};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

/// 24 real segments of the shipped registry (three areas).
const SEGMENTS: [&str; 24] = [
    "158324", "158355", "158386", "158415", "158446", "158475", "158505", "158536", "158565",
    "158595", "158624", "158655", "158684", "158715", "158744", "158776", "158805", "158836",
    "158865", "158895", "158924", "158954", "158983", "159014",
];

/// Two days of 5-minute readings of every segment, in time order, with an hour of
/// congestion every seven hours per segment (at a different hour for each).
fn stream() -> Vec<(String, Vec<u8>)> {
    let start = 1_406_844_000i64; // 2014-08-01T00:00:00+02:00
    let mut out = Vec::new();
    for step in 0..(2 * 24 * 12) {
        let t = start + step * 300;
        let hour = step / 12;
        for (i, seg) in SEGMENTS.iter().enumerate() {
            let jam = (hour + i as i64) % 7 == 0;
            let (speed, vehicles) = if jam {
                (18 + (step + i as i64) % 9, 12 + (step % 5))
            } else {
                (55 + (step * 7 + i as i64) % 20, (step + i as i64) % 8)
            };
            out.push(aqyl_tests::citypulse_row(
                seg,
                t,
                speed as u32,
                vehicles as u32,
            ));
        }
    }
    out
}

/// The shipped configuration, replaying 2014 in event time (no wall-clock advance), with a
/// checkpoint every second and a client id of its own.
fn config(dir: &Path) {
    let path = dir.join("aqyl.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    let text = text
        .replace(
            "[mqtt]\n",
            &format!(
                "[mqtt]\nclient_id = \"aqyl-durable-{}\"\n",
                aqyl_tests::free_port()
            ),
        )
        .replace("idle_timeout = \"30s\"", "idle_timeout = \"0s\"")
        .replace(
            "checkpoint_interval = \"10s\"",
            "checkpoint_interval = \"1s\"",
        );
    std::fs::write(path, text).unwrap();
}

/// Waits until the service has taken everything the broker holds for it and written it:
/// its counters and the store stop changing.
fn settle(aqyl: &Aqyl, vm: &VictoriaMetrics) {
    let mut last = (u64::MAX, usize::MAX);
    let mut same = 0;
    wait_until(
        WAIT * 4,
        "the service to take and write the whole stream",
        || {
            std::thread::sleep(Duration::from_millis(700));
            let now = (
                aqyl.metric("aqyl_received_total ").unwrap_or(0),
                vm.export(r#"{__name__=~"aggregate_.*"}"#).len(),
            );
            same = if now == last { same + 1 } else { 0 };
            last = now;
            same >= 3
        },
    );
}

type Points = BTreeMap<String, Vec<(i64, u64)>>;

/// Every aggregate point, keyed by series (all labels).
fn points(vm: &VictoriaMetrics) -> Points {
    vm.export(r#"{__name__=~"aggregate_.*"}"#)
        .into_iter()
        .map(|s| {
            let key = serde_json::Value::Object(s.labels.clone()).to_string();
            let mut samples: Vec<(i64, u64)> =
                s.samples.iter().map(|(t, v)| (*t, v.to_bits())).collect();
            samples.sort();
            samples.dedup();
            (key, samples)
        })
        .collect()
}

/// Every congestion message seen, as (id, state, subject).
fn incidents(sub: &Subscriber) -> BTreeSet<(String, String, String)> {
    sub.messages()
        .iter()
        .map(|m| {
            let e: serde_json::Value = serde_json::from_slice(&m.payload).unwrap();
            (
                e["id"].as_str().unwrap().to_string(),
                e["state"].as_str().unwrap().to_string(),
                e["subject"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// What happens to the service between two chunks of the stream.
#[derive(Debug, Clone, Copy)]
enum Fault {
    None,
    /// `kill -9` after this many ms, then a restart.
    Kill(u64),
    /// `kill -9`, and the next chunk is published while the service is down.
    KillAndPublishWhileDown,
    /// SIGTERM, then a restart.
    Restart,
    /// The broker (persistence on) is restarted while the service works through a backlog.
    BrokerRestart,
    /// The service dies in the middle of committing a checkpoint, then starts again.
    CrashInCheckpoint,
}

fn run(faults: &[Fault]) -> (Points, BTreeSet<(String, String, String)>) {
    let mut mqtt = Mosquitto::start_persistent();
    let vm = VictoriaMetrics::start();
    let dir = shipped_config();
    config(dir.path());
    let file = dir.path().join("aqyl.toml");
    let status = Subscriber::start(mqtt.port, "aqyl/status");
    let events = Subscriber::start(mqtt.port, "aqyl/events/congestion/#");
    let all = stream();
    let chunks: Vec<&[(String, Vec<u8>)]> =
        all.chunks(all.len().div_ceil(faults.len() + 1)).collect();
    let first = Aqyl::start(&file, &mqtt, &vm);
    first.wait_online(&status);
    let mut aqyl = Some(first);
    for (i, chunk) in chunks.iter().enumerate() {
        publish(mqtt.port, chunk);
        let Some(running) = aqyl.take() else {
            // The chunk went to the broker while the service was down.
            aqyl = Some(Aqyl::start(&file, &mqtt, &vm));
            continue;
        };
        aqyl = match faults.get(i).copied().unwrap_or(Fault::None) {
            Fault::None => Some(running),
            Fault::Kill(after_ms) => {
                std::thread::sleep(Duration::from_millis(after_ms));
                running.crash();
                Some(Aqyl::start(&file, &mqtt, &vm))
            }
            Fault::KillAndPublishWhileDown => {
                running.crash();
                None
            }
            Fault::Restart => {
                running.stop();
                Some(Aqyl::start(&file, &mqtt, &vm))
            }
            Fault::BrokerRestart => {
                mqtt.restart();
                Some(running)
            }
            Fault::CrashInCheckpoint => {
                running.stop();
                let failing = Aqyl::start_env(
                    &file,
                    &mqtt.url(),
                    Some(&vm.url()),
                    &[("AQYL_FAILPOINT", "checkpoint-commit")],
                );
                // It aborts at its first checkpoint, written but not committed.
                failing.wait_exit();
                Some(Aqyl::start(&file, &mqtt, &vm))
            }
        };
    }
    let aqyl = aqyl.unwrap_or_else(|| Aqyl::start(&file, &mqtt, &vm));
    settle(&aqyl, &vm);
    aqyl.stop();
    (points(&vm), incidents(&events))
}

#[test]
fn kill_9_and_restarts_change_no_point_and_no_incident() {
    let seed = fastrand::u64(..);
    println!("fault seed {seed}");
    let mut rng = fastrand::Rng::with_seed(seed);
    let (calm_points, calm_incidents) = run(&[]);
    let faults = [
        Fault::Kill(rng.u64(0..400)),
        Fault::KillAndPublishWhileDown,
        Fault::Restart,
        Fault::CrashInCheckpoint,
        Fault::Kill(rng.u64(0..400)),
    ];
    let (points, incidents) = run(&faults);
    assert!(calm_points.len() > 500, "{} series", calm_points.len());
    assert!(
        calm_incidents.iter().any(|i| i.1 == "start")
            && calm_incidents.iter().any(|i| i.1 == "end"),
        "congestions start and end: {calm_incidents:?}"
    );
    let missing: Vec<_> = calm_points
        .iter()
        .filter(|(k, v)| points.get(*k) != Some(v))
        .map(|(k, _)| k)
        .take(5)
        .collect();
    assert!(
        missing.is_empty() && points.len() == calm_points.len(),
        "with faults {seed}: {} series vs {}; differing, e.g. {missing:?}",
        points.len(),
        calm_points.len()
    );
    assert_eq!(
        incidents, calm_incidents,
        "incident ids and states (fault seed {seed})"
    );
}

#[test]
fn a_broker_restart_loses_no_reading_and_counts_none_twice() {
    let (calm_points, _) = run(&[]);
    let (points, _) = run(&[Fault::None, Fault::BrokerRestart, Fault::BrokerRestart]);
    assert!(calm_points.len() > 500, "{} series", calm_points.len());
    let differing: Vec<_> = calm_points
        .iter()
        .filter(|(k, v)| points.get(*k) != Some(v))
        .map(|(k, _)| k)
        .take(5)
        .collect();
    let detail = differing.first().map(|k| {
        let (a, b) = (
            &calm_points[*k],
            points.get(*k).cloned().unwrap_or_default(),
        );
        let first = a.iter().zip(&b).position(|(x, y)| x != y);
        (a.len(), b.len(), first.map(|i| (a[i], b[i])))
    });
    assert!(
        differing.is_empty() && points.len() == calm_points.len(),
        "{} series vs {}; {} differ, e.g. {differing:?}; first: (calm samples, samples, first difference (time, value bits)) {detail:?}",
        points.len(),
        calm_points.len(),
        calm_points.iter().filter(|(k, v)| points.get(*k) != Some(v)).count()
    );
}

#[test]
fn a_restart_without_a_rule_ends_its_ongoing_incidents() {
    let mqtt = Mosquitto::start_persistent();
    let vm = VictoriaMetrics::start();
    let dir = shipped_config();
    config(dir.path());
    let crawl = dir.path().join("rules/crawl.toml");
    std::fs::write(
        &crawl,
        "[[rule]]\nname = \"crawl\"\nsensor_type = \"traffic\"\nenter = \"avgSpeed < 25\"\nexit = \"avgSpeed >= 25\"\n",
    )
    .unwrap();
    let file = dir.path().join("aqyl.toml");
    let status = Subscriber::start(mqtt.port, "aqyl/status");
    let events = Subscriber::start(mqtt.port, "aqyl/events/crawl/#");
    let aqyl = Aqyl::start(&file, &mqtt, &vm);
    aqyl.wait_online(&status);
    // The first segment crawls (speed 18–26 while jammed): a crawl starts and is on at the stop.
    let all = stream();
    let jammed: Vec<_> = all
        .iter()
        .filter(|(topic, _)| topic.ends_with(SEGMENTS[0]))
        .take(12)
        .cloned()
        .collect();
    publish(mqtt.port, &jammed);
    // 18, 19 … 24 km/h: a crawl; 25 ends it; 26, 18 … starts another, on at the stop.
    let open: Vec<serde_json::Value> = events
        .wait_for(3, WAIT)
        .iter()
        .map(|m| serde_json::from_slice(&m.payload).unwrap())
        .collect();
    let states: Vec<&str> = open.iter().map(|e| e["state"].as_str().unwrap()).collect();
    assert_eq!(states, ["start", "end", "start"], "{open:?}");
    let last = open[2].clone();
    aqyl.stop();

    std::fs::remove_file(&crawl).unwrap();
    let aqyl = Aqyl::start(&file, &mqtt, &vm);
    let ended = events.wait_for(open.len() + 1, WAIT);
    let end: serde_json::Value = serde_json::from_slice(&ended[open.len()].payload).unwrap();
    assert_eq!(end["state"], "end", "{end}");
    assert_eq!(
        end["id"], last["id"],
        "the incident that was on ends, under its id"
    );
    let active = Subscriber::start(mqtt.port, &format!("aqyl/active/crawl/{}", SEGMENTS[0]));
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        active.messages().iter().all(|m| m.payload.is_empty()),
        "no retained incident is left: {:?}",
        active.messages()
    );
    aqyl.stop();
}
