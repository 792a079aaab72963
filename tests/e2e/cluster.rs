//! Cluster mode: three `aqyl run` processes of one worker each, on loopback, against a real
//! Mosquitto and VictoriaMetrics, give exactly the store contents and incidents of one
//! process with one worker on the same input, and each process reads part of the input.

use super::{config_dir, with_traffic_rules, Aqyl, WAIT};
use aqyl_tests::{
    citypulse_row, free_ports_below_ephemeral, publish, wait_until, Mosquitto, Subscriber,
    VictoriaMetrics,
};
use std::process::Command;

/// Segments of the shipped registry (so areas and area rules take part).
fn segments(n: usize) -> Vec<String> {
    let csv =
        std::fs::read_to_string(super::repo().join("config/sensors/registry/aarhus-traffic.csv"))
            .unwrap();
    csv.lines()
        .filter(|l| !l.starts_with('#') && !l.starts_with("sensor_id"))
        .filter_map(|l| l.split(',').next())
        .take(n)
        .map(String::from)
        .collect()
}

/// Two hours of 5-minute readings from 40 segments, in time order: congestions that start
/// and end, and a few segments that fall silent halfway (outages).
fn input() -> Vec<(String, Vec<u8>)> {
    let t0 = 1_406_869_200; // 2014-08-01 05:00 UTC
    let ids = segments(40);
    let mut out = Vec::new();
    for step in 0..24i64 {
        for (k, id) in ids.iter().enumerate() {
            if k % 7 == 0 && step >= 12 {
                continue;
            }
            let congested = (step / 4 + k as i64) % 3 == 0;
            let (speed, vehicles) = if congested { (20, 15) } else { (60, 3) };
            out.push(citypulse_row(id, t0 + step * 300, speed, vehicles));
        }
    }
    out
}

/// A config directory for one process: the e2e defaults, the shipped traffic rules, rules
/// judged at the watermark (in a cluster the broker may hand a sensor's consecutive readings
/// to different processes, so only event time gives the one-process result exactly).
fn config(cluster: Option<(&[String], usize)>) -> tempfile::TempDir {
    let dir = config_dir(1);
    with_traffic_rules(dir.path());
    let file = dir.path().join("aqyl.toml");
    let mut text = std::fs::read_to_string(&file).unwrap();
    text = text.replace("[pipeline]\n", "[pipeline]\nrule_timing = \"watermark\"\n");
    if let Some((hosts, process)) = cluster {
        text = text.replace(
            &format!("client_id = \"aqyl-e2e-{}\"", std::process::id()),
            "client_id = \"aqyl-cluster\"",
        );
        let hosts: Vec<String> = hosts.iter().map(|h| format!("{h:?}")).collect();
        text.push_str(&format!(
            "[cluster]\nhosts = [{}]\nprocess = {process}\n",
            hosts.join(", ")
        ));
    }
    std::fs::write(&file, text).unwrap();
    dir
}

/// Peer addresses for `n` processes on loopback, and each process's config directory.
fn cluster_configs(n: usize) -> (Vec<String>, Vec<tempfile::TempDir>) {
    let hosts: Vec<String> = free_ports_below_ephemeral(n)
        .into_iter()
        .map(|p| format!("127.0.0.1:{p}"))
        .collect();
    let dirs = (0..n).map(|i| config(Some((&hosts, i)))).collect();
    (hosts, dirs)
}

/// Starts a process per config directory and waits until each says `online` on its status
/// topic (process 0 on `aqyl/status`, process `i` on `aqyl/cluster/<i>/status`).
fn start_online(dirs: &[tempfile::TempDir], mqtt: &Mosquitto, vm: &VictoriaMetrics) -> Vec<Aqyl> {
    let statuses: Vec<Subscriber> = (0..dirs.len())
        .map(|i| match i {
            0 => Subscriber::start(mqtt.port, "aqyl/status"),
            i => Subscriber::start(mqtt.port, &format!("aqyl/cluster/{i}/status")),
        })
        .collect();
    let processes: Vec<Aqyl> = dirs
        .iter()
        .map(|d| Aqyl::start(&d.path().join("aqyl.toml"), mqtt, vm))
        .collect();
    for (p, status) in processes.iter().zip(&statuses) {
        p.wait_online(status);
    }
    processes
}

/// SIGTERM to every process at once (a cluster drains together), then a clean exit of each.
fn stop_all(processes: Vec<Aqyl>) {
    for p in &processes {
        let ok = Command::new("kill")
            .args(["-TERM", &p.pid().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok);
    }
    for p in processes {
        let mut exit = None;
        wait_until(WAIT, "a cluster process to exit after SIGTERM", || {
            exit = p.child.lock().unwrap().try_wait().unwrap();
            exit.is_some()
        });
        assert!(exit.unwrap().success(), "aqyl exited with {exit:?}");
    }
}

/// What a run left: the store's aggregate and event series, and the incident messages
/// (sorted JSON).
type Outcome = (Vec<aqyl_tests::Series>, Vec<String>);

fn outcome(vm: &VictoriaMetrics, events: &Subscriber) -> Outcome {
    let mut store = vm.export(r#"{__name__=~"aggregate_.*|event_.*"}"#);
    // Samples of one timestamp (two incidents ending at once) come in no set order.
    for s in &mut store {
        s.samples
            .sort_by(|a, b| a.0.cmp(&b.0).then(a.1.total_cmp(&b.1)));
    }
    let mut messages: Vec<String> = events
        .messages()
        .iter()
        .map(|m| String::from_utf8_lossy(&m.payload).into_owned())
        .collect();
    messages.sort();
    (store, messages)
}

/// One process with one worker.
fn single(input: &[(String, Vec<u8>)]) -> Outcome {
    let mqtt = Mosquitto::start();
    let vm = VictoriaMetrics::start();
    let events = Subscriber::start(mqtt.port, "aqyl/events/#");
    let dir = config(None);
    let aqyl = Aqyl::online(&dir.path().join("aqyl.toml"), &mqtt, &vm);
    publish(mqtt.port, input);
    wait_until(WAIT, "every reading taken", || {
        aqyl.metric("aqyl_received_total") == Some(input.len() as u64)
    });
    aqyl.stop();
    outcome(&vm, &events)
}

/// Three processes with one worker each; also returns what each process received.
fn cluster(input: &[(String, Vec<u8>)]) -> (Outcome, Vec<u64>) {
    let mqtt = Mosquitto::start();
    let vm = VictoriaMetrics::start();
    let events = Subscriber::start(mqtt.port, "aqyl/events/#");
    let (_, dirs) = cluster_configs(3);
    let processes = start_online(&dirs, &mqtt, &vm);
    publish(mqtt.port, input);
    let received = |p: &Aqyl, i: usize| {
        p.metric(&format!("aqyl_received_total{{process=\"{i}\"}}"))
            .unwrap_or(0)
    };
    wait_until(WAIT, "every reading taken by the cluster", || {
        let total: u64 = processes
            .iter()
            .enumerate()
            .map(|(i, p)| received(p, i))
            .sum();
        total == input.len() as u64
    });
    let each: Vec<u64> = processes
        .iter()
        .enumerate()
        .map(|(i, p)| received(p, i))
        .collect();
    stop_all(processes);
    (outcome(&vm, &events), each)
}

#[test]
fn three_processes_give_exactly_what_one_gives_and_share_the_input() {
    let input = input();
    let (one, one_events) = single(&input);
    let ((three, three_events), received) = cluster(&input);
    assert!(
        one.iter().any(|s| s.label("__name__") == "aggregate_mean")
            && one_events.iter().any(|e| e.contains("\"area_congestion\""))
            && one_events.iter().any(|e| e.contains("\"outage\"")),
        "the input exercises windows, area incidents and outages: {} series, {:?}",
        one.len(),
        one_events.first()
    );
    println!(
        "{} series, {} incident messages; readings per process: {received:?}",
        one.len(),
        one_events.len()
    );
    assert!(
        received.iter().all(|r| *r > 0),
        "every process read part of the input: {received:?}"
    );
    assert_eq!(one.len(), three.len(), "the same series in the store");
    for (a, b) in one.iter().zip(&three) {
        assert_eq!(a, b, "the same samples in every series");
    }
    assert_eq!(one_events, three_events, "the same incident messages");
}

#[test]
fn a_stranger_on_the_cluster_port_is_refused_without_harm() {
    // Process 0 of a two-process cluster waits for its peer; a stranger's HTTP request on the
    // cluster port is refused without harm, and the cluster forms once the peer comes.
    let mqtt = Mosquitto::start();
    let vm = VictoriaMetrics::start();
    let (hosts, dirs) = cluster_configs(2);
    let status = Subscriber::start(mqtt.port, "aqyl/status");
    let first = Aqyl::start(&dirs[0].path().join("aqyl.toml"), &mqtt, &vm);
    wait_until(WAIT, "process 0 to listen for its peers", || {
        std::net::TcpStream::connect(&hosts[0]).is_ok()
    });
    let answer = reqwest::blocking::get(format!("http://{}/health", hosts[0]));
    assert!(
        answer.is_err(),
        "the cluster port speaks no HTTP: {answer:?}"
    );
    let second = Aqyl::start(&dirs[1].path().join("aqyl.toml"), &mqtt, &vm);
    first.wait_online(&status);
    publish(mqtt.port, &input()[..40]);
    wait_until(WAIT, "both processes alive and reading", || {
        first.metric("aqyl_received_total{process=\"0\"}").is_some()
            && second
                .metric("aqyl_received_total{process=\"1\"}")
                .is_some()
    });
    stop_all(vec![first, second]);
}

#[test]
fn when_a_process_dies_the_others_stop_and_say_why() {
    // kill -9 of one process: the others cannot go on with part of the cluster's state
    // gone; they exit non-zero so that a supervisor restarts the whole cluster.
    let mqtt = Mosquitto::start();
    let vm = VictoriaMetrics::start();
    let (_, dirs) = cluster_configs(2);
    let status = Subscriber::start(mqtt.port, "aqyl/status");
    let processes: Vec<Aqyl> = dirs
        .iter()
        .map(|d| Aqyl::start(&d.path().join("aqyl.toml"), &mqtt, &vm))
        .collect();
    processes[0].wait_online(&status);
    publish(mqtt.port, &input()[..80]);
    let mut processes = processes.into_iter();
    let (first, second) = (processes.next().unwrap(), processes.next().unwrap());
    second.crash();
    let mut exit = None;
    wait_until(WAIT, "process 0 to exit after process 1 died", || {
        exit = first.child.lock().unwrap().try_wait().unwrap();
        exit.is_some()
    });
    assert!(!exit.unwrap().success(), "process 0 exited with {exit:?}");
    wait_until(WAIT, "aqyl/status offline", || {
        status
            .messages()
            .last()
            .is_some_and(|m| m.payload == b"offline")
    });
}

#[test]
fn a_process_without_messages_follows_the_clusters_newest_event_time() {
    // Live (idle timeout 1 s): two readings 20 minutes apart, which the broker hands to the
    // two processes in turn. The process that got the older one only sees newer event time
    // through the cluster; without that, the window of the older reading would stay open.
    let mqtt = Mosquitto::start();
    let vm = VictoriaMetrics::start();
    let (_, dirs) = cluster_configs(2);
    for d in &dirs {
        let file = d.path().join("aqyl.toml");
        let text = std::fs::read_to_string(&file)
            .unwrap()
            .replace("idle_timeout = \"0s\"", "idle_timeout = \"1s\"")
            .replace("allowed_lateness = \"10m\"", "allowed_lateness = \"1m\"");
        std::fs::write(&file, text).unwrap();
    }
    let processes = start_online(&dirs, &mqtt, &vm);
    let ids = segments(2);
    let t0 = 1_406_869_200; // 2014-08-01 05:00 UTC
    publish(mqtt.port, &[citypulse_row(&ids[0], t0, 50, 5)]);
    publish(mqtt.port, &[citypulse_row(&ids[1], t0 + 1200, 50, 5)]);
    let received = |i: usize| {
        processes[i]
            .metric(&format!("aqyl_received_total{{process=\"{i}\"}}"))
            .unwrap_or(0)
    };
    wait_until(WAIT, "both readings taken", || {
        received(0) + received(1) == 2
    });
    assert_eq!(
        (received(0), received(1)),
        (1, 1),
        "the broker handed one reading to each process"
    );
    wait_until(WAIT, "the older reading's window in the store", || {
        vm.export(r#"{__name__="aggregate_count"}"#)
            .iter()
            .any(|s| s.label("sensor_id") == ids[0] && s.samples.iter().any(|x| x.0 > 0))
    });
    stop_all(processes);
}

/// Process `i`'s counter `name` (0 before it is there).
fn metric(p: &Aqyl, name: &str, i: usize) -> u64 {
    p.metric(&format!("{name}{{process=\"{i}\"}}")).unwrap_or(0)
}

/// [`config`] with durable state: a checkpoint every second, and an hour of allowed
/// lateness (after a restart the broker hands back what it had not seen acknowledged, a
/// little behind what the other process goes on with).
fn durable(dir: &tempfile::TempDir) {
    let file = dir.path().join("aqyl.toml");
    let text = std::fs::read_to_string(&file)
        .unwrap()
        .replace(
            "durable = false",
            "durable = true\ncheckpoint_interval = \"1s\"",
        )
        .replace("allowed_lateness = \"10m\"", "allowed_lateness = \"1h\"");
    std::fs::write(&file, text).unwrap();
}

/// A reading of every segment a day after [`input`]: every window of the input closes, in
/// one process as in a cluster (each process gets some of them).
fn tail() -> Vec<(String, Vec<u8>)> {
    let t = 1_406_869_200 + 24 * 3600;
    segments(40)
        .iter()
        .map(|id| citypulse_row(id, t, 60, 3))
        .collect()
}

/// What a durable run has written so far: every store point (series by all labels, samples
/// without repeats: a restart writes again what it wrote after its checkpoint) and every
/// incident message (each once). Quality incidents are left out: a reading's timeliness score
/// is its delay from its receipt, which the replay after a crash lengthens (as in one process).
type Written = (
    std::collections::BTreeMap<String, Vec<(i64, u64)>>,
    std::collections::BTreeSet<String>,
);

fn written(vm: &VictoriaMetrics, events: &Subscriber) -> Written {
    let (store, _) = outcome(vm, events);
    let messages = events
        .messages()
        .iter()
        .filter(|m| !m.topic.starts_with("aqyl/events/quality/"))
        .map(|m| String::from_utf8_lossy(&m.payload).into_owned())
        .collect();
    let points = store
        .into_iter()
        .filter(|s| s.label("event_type") != "quality")
        .map(|s| {
            let key = serde_json::Value::Object(s.labels.clone()).to_string();
            let mut samples: Vec<(i64, u64)> =
                s.samples.iter().map(|(t, v)| (*t, v.to_bits())).collect();
            samples.dedup();
            (key, samples)
        })
        .collect();
    (points, messages)
}

/// Waits until what the run has written stops changing (everything published is taken and
/// written), and returns it.
fn settled(vm: &VictoriaMetrics, events: &Subscriber) -> Written {
    let mut last = None;
    let mut same = 0;
    wait_until(WAIT * 4, "the store and incidents to settle", || {
        std::thread::sleep(std::time::Duration::from_millis(700));
        let now = written(vm, events);
        same = if last.as_ref() == Some(&now) {
            same + 1
        } else {
            0
        };
        last = Some(now);
        same >= 3
    });
    last.unwrap()
}

/// One durable process with one worker, undisturbed.
fn single_durable(input: &[(String, Vec<u8>)]) -> Written {
    let mqtt = Mosquitto::start();
    let vm = VictoriaMetrics::start();
    let events = Subscriber::start(mqtt.port, "aqyl/events/#");
    let dir = config(None);
    durable(&dir);
    let aqyl = Aqyl::online(&dir.path().join("aqyl.toml"), &mqtt, &vm);
    publish(mqtt.port, input);
    wait_until(WAIT, "every reading taken", || {
        aqyl.metric("aqyl_received_total") == Some(input.len() as u64)
    });
    settled(&vm, &events)
}

/// A durable cluster of two processes: the first part of the input, a complete checkpoint,
/// then `kill -9` of process 1 while the second part arrives; process 0 stops too, both are
/// restarted and take the rest, then both are stopped (SIGTERM).
fn cluster_killed(
    first: &[(String, Vec<u8>)],
    during: &[(String, Vec<u8>)],
    rest: &[(String, Vec<u8>)],
) -> Written {
    let mqtt = Mosquitto::start();
    let vm = VictoriaMetrics::start();
    let events = Subscriber::start(mqtt.port, "aqyl/events/#");
    let (_, dirs) = cluster_configs(2);
    dirs.iter().for_each(durable);
    let processes = start_online(&dirs, &mqtt, &vm);
    publish(mqtt.port, first);
    wait_until(
        WAIT,
        "the first part taken and checkpointed by both",
        || {
            received(&processes) == first.len() as u64
                && (0..2).all(|i| metric(&processes[i], "aqyl_checkpoints_total", i) >= 2)
        },
    );
    let mut processes = processes.into_iter();
    let (zero, one) = (processes.next().unwrap(), processes.next().unwrap());
    publish(mqtt.port, during);
    one.crash();
    let mut exit = None;
    wait_until(WAIT, "process 0 to exit after process 1 died", || {
        exit = zero.child.lock().unwrap().try_wait().unwrap();
        exit.is_some()
    });
    assert!(!exit.unwrap().success(), "process 0 exited with {exit:?}");
    let (again, replayed) = restarted(&dirs, &mqtt, &vm);
    println!("messages replayed from the ingest logs: {replayed:?}");
    publish(mqtt.port, rest);
    let written = settled(&vm, &events);
    // A clean stop of all, with its last checkpoint.
    stop_all(again);
    written
}

#[test]
fn a_durable_cluster_killed_mid_stream_writes_what_one_undisturbed_process_writes() {
    let mut all = input();
    all.extend(tail());
    let (first, later) = all.split_at(400);
    let (during, rest) = later.split_at(200);
    let one = single_durable(&all);
    assert!(
        one.0.keys().any(|k| k.contains("aggregate_mean"))
            && one.1.iter().any(|e| e.contains("\"outage\"")),
        "the input exercises windows and incidents: {} series",
        one.0.len()
    );
    let two = cluster_killed(first, during, rest);
    let only = |a: &Written, b: &Written| -> Vec<String> {
        a.0.keys()
            .filter(|k| !b.0.contains_key(*k))
            .take(5)
            .cloned()
            .collect()
    };
    let (missing, extra) = (only(&one, &two), only(&two, &one));
    assert!(
        missing.is_empty() && extra.is_empty(),
        "the same series in the store; missing in the cluster's (the first 5): {missing:?}; only in the cluster's: {extra:?}"
    );
    for (key, samples) in &one.0 {
        assert_eq!(Some(samples), two.0.get(key), "the same samples of {key}");
    }
    assert_eq!(one.1, two.1, "the same incident messages");
}

#[test]
fn a_process_whose_state_is_lost_is_refused_while_the_others_hold_a_checkpoint() {
    // Process 1's state directory is gone after a complete checkpoint: starting it afresh
    // beside process 0's state would lose the part of the state it owned. Both refuse, and
    // say what to do.
    let mqtt = Mosquitto::start();
    let vm = VictoriaMetrics::start();
    let (_, dirs) = cluster_configs(2);
    dirs.iter().for_each(durable);
    let processes = start_online(&dirs, &mqtt, &vm);
    publish(mqtt.port, &input()[..80]);
    wait_until(WAIT, "a complete checkpoint on both processes", || {
        (0..2).all(|i| metric(&processes[i], "aqyl_checkpoints_total", i) >= 1)
    });
    stop_all(processes);
    std::fs::remove_dir_all(dirs[1].path().join("state")).unwrap();
    let again: Vec<_> = dirs
        .iter()
        .map(|d| Aqyl::spawn_captured(&d.path().join("aqyl.toml"), &mqtt, &vm))
        .collect();
    for (i, child) in again.into_iter().enumerate() {
        let out = child.wait_with_output().unwrap();
        let log = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "process {i} started: {log}");
        assert!(
            log.contains("hold no checkpoint in common")
                && log.contains("process 1: none")
                && log.contains("restore its state directory"),
            "process {i} says why and what to do: {log}"
        );
    }
}

/// [`durable`], with no periodic checkpoint within the test: only a stop takes one.
fn durable_checkpoints_only_at_stop(dir: &tempfile::TempDir) {
    durable(dir);
    let file = dir.path().join("aqyl.toml");
    let text = std::fs::read_to_string(&file).unwrap().replace(
        "checkpoint_interval = \"1s\"",
        "checkpoint_interval = \"1h\"",
    );
    std::fs::write(&file, text).unwrap();
}

/// SIGTERM to process 1 alone (a supervisor stopping the processes one at a time): the
/// whole cluster stops, and every process exits cleanly.
fn stop_one(processes: Vec<Aqyl>) {
    let ok = Command::new("kill")
        .args(["-TERM", &processes[1].pid().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok);
    for (i, p) in processes.into_iter().enumerate() {
        let mut exit = None;
        wait_until(WAIT, "every cluster process to exit", || {
            exit = p.child.lock().unwrap().try_wait().unwrap();
            exit.is_some()
        });
        assert!(exit.unwrap().success(), "process {i} exited with {exit:?}");
    }
}

/// Messages the processes of a cluster received, together.
fn received(processes: &[Aqyl]) -> u64 {
    (0..processes.len())
        .map(|i| metric(&processes[i], "aqyl_received_total", i))
        .sum()
}

/// Restarts the cluster after a stop and returns what each process replayed from its ingest
/// log.
fn restarted(
    dirs: &[tempfile::TempDir],
    mqtt: &Mosquitto,
    vm: &VictoriaMetrics,
) -> (Vec<Aqyl>, Vec<u64>) {
    let again = start_online(dirs, mqtt, vm);
    let replayed = (0..again.len())
        .map(|i| metric(&again[i], "aqyl_log_replayed_total", i))
        .collect();
    (again, replayed)
}

#[test]
fn a_durable_cluster_stopped_takes_a_last_checkpoint_and_replays_nothing() {
    // Checkpoints only at a stop: without the last checkpoint, every message before a stop
    // would be replayed from the logs at the next start.
    let mut all = input();
    all.extend(tail());
    let (first, later) = all.split_at(300);
    let (second, rest) = later.split_at(300);
    let one = single_durable(&all);
    let mqtt = Mosquitto::start();
    let vm = VictoriaMetrics::start();
    let events = Subscriber::start(mqtt.port, "aqyl/events/#");
    let (_, dirs) = cluster_configs(2);
    dirs.iter().for_each(durable_checkpoints_only_at_stop);
    let taken = |processes: &[Aqyl], n: usize| {
        wait_until(WAIT, "the part taken by the cluster", || {
            received(processes) == n as u64
        })
    };
    let processes = start_online(&dirs, &mqtt, &vm);
    publish(mqtt.port, first);
    taken(&processes, first.len());
    stop_all(processes);
    let (processes, replayed) = restarted(&dirs, &mqtt, &vm);
    assert_eq!(replayed, [0, 0], "nothing replayed after a stop of both");
    publish(mqtt.port, second);
    taken(&processes, second.len());
    stop_one(processes);
    let (processes, replayed) = restarted(&dirs, &mqtt, &vm);
    assert_eq!(replayed, [0, 0], "nothing replayed after a stop of one");
    publish(mqtt.port, rest);
    taken(&processes, rest.len());
    let two = settled(&vm, &events);
    stop_all(processes);
    assert_same(&one, &two);
}

/// Adds a 10-minute window to the traffic descriptor of a config directory (picked up by the
/// descriptor reload).
fn add_window(dir: &tempfile::TempDir) {
    let file = dir.path().join("sensors/traffic.toml");
    let mut text = std::fs::read_to_string(&file).unwrap();
    text.push_str("\n[[windows]]\nsize = \"10m\"\n");
    std::fs::write(&file, text).unwrap();
}

/// One durable process: the first two parts with the shipped descriptor, the rest with a
/// 10-minute window more. Also returns how many windows it closed.
fn single_reloaded(parts: [&[(String, Vec<u8>)]; 3]) -> (Written, u64) {
    let mqtt = Mosquitto::start();
    let vm = VictoriaMetrics::start();
    let events = Subscriber::start(mqtt.port, "aqyl/events/#");
    let dir = config(None);
    durable(&dir);
    let aqyl = Aqyl::online(&dir.path().join("aqyl.toml"), &mqtt, &vm);
    publish(mqtt.port, parts[0]);
    publish(mqtt.port, parts[1]);
    let n = parts[0].len() + parts[1].len();
    wait_until(WAIT, "the first two parts taken", || {
        aqyl.metric("aqyl_received_total") == Some(n as u64)
    });
    settled(&vm, &events);
    add_window(&dir);
    wait_until(WAIT, "the descriptor reloaded", || {
        aqyl.metric("aqyl_descriptor_reloads_total") == Some(1)
    });
    publish(mqtt.port, parts[2]);
    let n = n + parts[2].len();
    wait_until(WAIT, "every part taken", || {
        aqyl.metric("aqyl_received_total") == Some(n as u64)
    });
    let written = settled(&vm, &events);
    (
        written,
        aqyl.metric("aqyl_windows_closed_total").unwrap_or(0),
    )
}

#[test]
fn a_descriptor_reload_is_put_in_force_by_every_process_at_one_checkpoint() {
    let mut all = input();
    all.extend(tail());
    let (first, later) = all.split_at(300);
    let (second, rest) = later.split_at(300);
    let (one, windows) = single_reloaded([first, second, rest]);
    assert!(
        one.0.keys().any(|k| k.contains(r#""window":"10m""#)),
        "the reload added 10-minute windows"
    );
    let mqtt = Mosquitto::start();
    let vm = VictoriaMetrics::start();
    let events = Subscriber::start(mqtt.port, "aqyl/events/#");
    let (_, dirs) = cluster_configs(2);
    dirs.iter().for_each(durable);
    let processes = start_online(&dirs, &mqtt, &vm);
    let sum = |name: &str| -> Vec<u64> { (0..2).map(|i| metric(&processes[i], name, i)).collect() };
    publish(mqtt.port, first);
    // Process 1's files change alone: both say so, and the cluster keeps the descriptors in
    // force (the second part is taken as one process takes it, without 10-minute windows).
    add_window(&dirs[1]);
    wait_until(WAIT, "both processes to report the difference", || {
        sum("aqyl_descriptor_reload_failures_total")
            .iter()
            .all(|n| *n >= 1)
    });
    publish(mqtt.port, second);
    let n = (first.len() + second.len()) as u64;
    wait_until(WAIT, "the first two parts taken", || {
        sum("aqyl_received_total").iter().sum::<u64>() == n
    });
    settled(&vm, &events);
    assert_eq!(
        sum("aqyl_descriptor_reloads_total"),
        [0, 0],
        "no process reloaded alone"
    );
    // Now process 0's files are the same: both put them in force at one checkpoint.
    add_window(&dirs[0]);
    wait_until(WAIT, "both processes to put the reload in force", || {
        sum("aqyl_descriptor_reloads_total") == [1, 1]
    });
    publish(mqtt.port, rest);
    wait_until(WAIT, "every part taken", || {
        sum("aqyl_received_total").iter().sum::<u64>() == all.len() as u64
    });
    wait_until(WAIT, "the windows one process closed, closed", || {
        sum("aqyl_windows_closed_total").iter().sum::<u64>() >= windows
    });
    let before = settled(&vm, &events);
    println!(
        "windows closed: one process {windows}, the cluster {:?}",
        sum("aqyl_windows_closed_total")
    );
    stop_all(processes);
    let two = settled(&vm, &events);
    println!(
        "series before the stop {}, after {}",
        before.0.len(),
        two.0.len()
    );
    assert_same(&one, &two);
}

/// Asserts that two runs wrote the same store points and incident messages.
fn assert_same(one: &Written, two: &Written) {
    let only = |a: &Written, b: &Written| -> Vec<String> {
        a.0.keys()
            .filter(|k| !b.0.contains_key(*k))
            .take(5)
            .cloned()
            .collect()
    };
    let (missing, extra) = (only(one, two), only(two, one));
    assert!(
        missing.is_empty() && extra.is_empty(),
        "the same series in the store; missing in the cluster's (the first 5 of {} against {}): {missing:?}; only in the cluster's: {extra:?}",
        one.0.len(),
        two.0.len()
    );
    for (key, samples) in &one.0 {
        assert_eq!(Some(samples), two.0.get(key), "the same samples of {key}");
    }
    assert_eq!(one.1, two.1, "the same incident messages");
}
