//! In-process throughput of a cluster, without MQTT: the dataflow of 1, 2 and 3 processes of
//! one worker each (the processes are thread groups of this one, exchanging records over
//! loopback TCP exactly as separate processes do), and of one process with two workers, over
//! the same traffic workload, rounds alternating. What a record costs to cross a process
//! boundary (serialised, over TCP) instead of a thread boundary (a channel) is the difference
//! per record between 2 processes x 1 worker and 1 process x 2 workers: the same threads.
//!
//! ```text
//! cargo bench -p aqyl-dataflow --bench cluster -- --messages 300000 --rounds 3
//! ```

#![allow(clippy::unwrap_used, clippy::expect_used)] // a benchmark driver

use aqyl_core::ingest::decode::Registry;
use aqyl_core::ingest::descriptor::SensorType;
use aqyl_core::metrics::Metrics;
use aqyl_core::RawMessage;
use aqyl_dataflow::cluster::ClusterSpec;
use aqyl_dataflow::{Outputs, PipelineSpec};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

const DESCRIPTOR: &str = include_str!("../../../config/sensors/traffic.toml");

/// `n` CityPulse traffic rows of `sensors` segments, 5 minutes apart, in time order.
fn workload(n: usize, sensors: usize) -> Vec<RawMessage> {
    (0..n)
        .map(|i| {
            let sensor = 158_324 + i % sensors;
            let minutes = 5 * (i / sensors) as i64;
            let (d, h, m) = (1 + minutes / 1440, (minutes / 60) % 24, minutes % 60);
            let payload = format!(
                r#"{{"status":"OK","avgMeasuredTime":{t},"avgSpeed":{s},"extID":668,"medianMeasuredTime":{t},"TIMESTAMP":"2014-{mo:02}-{dd:02}T{h:02}:{m:02}:00","vehicleCount":{c},"_id":{i},"REPORT_ID":{sensor}}}"#,
                t = 30 + i % 90,
                s = 10 + (i * 7) % 80,
                c = (i * 3) % 40,
                mo = 1 + (d - 1) / 28,
                dd = 1 + (d - 1) % 28,
            );
            RawMessage {
                topic: format!("city/traffic/{sensor}"),
                payload: payload.into_bytes(),
                received_at: 0,
            }
        })
        .collect()
}

fn spec(registry: &aqyl_dataflow::SharedRegistry, workers: usize) -> PipelineSpec {
    PipelineSpec {
        registry: registry.clone(),
        workers,
        window: Duration::from_secs(300),
        allowed_lateness: Duration::from_secs(3600),
        idle_timeout: None,
        max_payload_bytes: 65536,
        max_future: None,
        update_horizon: None,
        rule_timing: Default::default(),
        state_ttl: None,
        quality: None,
        rules: Default::default(),
        corroborate: Default::default(),
    }
}

/// Outputs whose receivers are drained on threads of their own; the drains end when the
/// dataflow does and return the windows they saw.
fn outputs() -> (Outputs, std::thread::JoinHandle<usize>) {
    let (outputs, rx) = Outputs::channels();
    let drain = std::thread::spawn(move || {
        let aqyl_dataflow::Receivers {
            mut aggregates,
            mut deadletters,
            mut events,
            mut quality,
        } = rx;
        let others = std::thread::spawn(move || {
            while deadletters.blocking_recv().is_some() {}
            while events.blocking_recv().is_some() {}
            while quality.blocking_recv().is_some() {}
        });
        let mut n = 0;
        while aggregates.blocking_recv().is_some() {
            n += 1;
        }
        others.join().unwrap();
        n
    });
    (outputs, drain)
}

/// Runs `msgs` through a cluster of `processes` processes (one: no cluster) of `workers`
/// workers, the messages dealt out round-robin as a broker's shared subscription does.
/// Returns (seconds, windows).
fn round(
    registry: &aqyl_dataflow::SharedRegistry,
    msgs: &[RawMessage],
    (processes, workers): (usize, usize),
) -> (f64, usize) {
    // Held together, so the kernel hands out distinct ports.
    let held: Vec<std::net::TcpListener> = (0..processes)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    let ports: Vec<u16> = held
        .iter()
        .map(|l| l.local_addr().unwrap().port())
        .collect();
    drop(held);
    let hosts: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
    let starts: Vec<_> = (0..processes)
        .map(|process| {
            let (outputs, drain) = outputs();
            let spec = spec(registry, workers);
            let cluster = ClusterSpec {
                hosts: hosts.clone(),
                process,
                listen: hosts[process].clone(),
                stop: Arc::default(),
            };
            let started = std::thread::spawn(move || {
                let metrics = Arc::new(Metrics::default());
                if processes == 1 {
                    aqyl_dataflow::start(spec, 1024, outputs, metrics)
                } else {
                    aqyl_dataflow::start_cluster(spec, 1024, outputs, metrics, cluster)
                }
            });
            (started, drain)
        })
        .collect();
    let mut routers = Vec::new();
    let mut runnings = Vec::new();
    let mut drains = Vec::new();
    for (started, drain) in starts {
        let (router, running) = started.join().unwrap().unwrap();
        routers.push(router);
        runnings.push(running);
        drains.push(drain);
    }
    let began = Instant::now();
    let feeders: Vec<_> = routers
        .into_iter()
        .enumerate()
        .map(|(p, router)| {
            let mine: Vec<RawMessage> = msgs.iter().skip(p).step_by(processes).cloned().collect();
            std::thread::spawn(move || {
                for m in mine {
                    router.route_blocking(m);
                }
            })
        })
        .collect();
    for f in feeders {
        f.join().unwrap();
    }
    for r in runnings {
        r.join().unwrap();
    }
    let secs = began.elapsed().as_secs_f64();
    let windows = drains.into_iter().map(|d| d.join().unwrap()).sum();
    (secs, windows)
}

fn main() {
    let n = arg("--messages", 300_000);
    let rounds = arg("--rounds", 3);
    let sensors = arg("--sensors", 449);
    let types = vec![SensorType::from_toml(Path::new("traffic.toml"), DESCRIPTOR).unwrap()];
    let registry = aqyl_dataflow::shared(Registry::new(types));
    let msgs = workload(n, sensors);
    println!("workload: {n} CityPulse traffic messages of {sensors} segments, the shipped traffic windows, no rules or quality");
    let sizes = [(1usize, 1usize), (1, 2), (2, 1), (3, 1)];
    let mut secs: Vec<Vec<f64>> = vec![Vec::new(); sizes.len()];
    let mut windows = Vec::new();
    for r in 1..=rounds {
        let mut line = format!("round {r}:");
        for (k, &(p, w)) in sizes.iter().enumerate() {
            let (s, closed) = round(&registry, &msgs, (p, w));
            secs[k].push(s);
            windows.push(closed);
            line += &format!(" | {p}x{w} {:>8.0} obs/s", n as f64 / s);
        }
        println!("{line}");
    }
    assert!(
        windows.windows(2).all(|w| w[0] == w[1]),
        "every run closes the same windows: {windows:?}"
    );
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let medians: Vec<f64> = secs.iter_mut().map(median).collect();
    for (k, &(p, w)) in sizes.iter().enumerate() {
        println!(
            "median: {p} process(es) x {w} worker(s): {:.0} obs/s, {:.2}x 1x1",
            n as f64 / medians[k],
            medians[0] / medians[k]
        );
    }
    println!(
        "exchange across processes instead of threads (2x1 against 1x2): {:+.2} us per record",
        (medians[2] - medians[1]) * 1e6 / n as f64
    );
}

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1)?.parse().ok())
        .unwrap_or(default)
}
