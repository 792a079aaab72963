//! End-to-end throughput through a real Mosquitto at QoS 1: how fast the `aqyl` service
//! accepts the demo workload, next to how fast a bare rumqttc subscriber that only counts
//! drains the same broker, measured in the same run (rounds alternate A B A B), plus the
//! service's peak resident memory.
//!
//! ```text
//! cargo bench -p aqyl --bench throughput -- --messages 200000 --rounds 3
//! cargo bench -p aqyl --bench throughput -- --messages 200000 --rounds 3 --quality 2
//! ```
//! `--processes 1,2,3` compares clusters of those sizes on loopback instead (each process
//! with `--workers` workers, durability off), each round in turn after the bare subscriber.
//! `--city 0` turns the city services (and their tap connection) off. `--quality 0` turns
//! quality scoring off; `--quality 2` also runs the service without it in
//! each round, to pair the two. `--rules 0` runs without the traffic rules. With
//! `AQYL_BASELINE=/path/to/aqyl` (an earlier build) that binary runs too in each round, right
//! after the bare subscriber, and the ratio of the two builds is printed.
//! Needs `mosquitto` (the test command installs it). Prints one line per round and a summary.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a benchmark driver: failing loudly is right

use aqyl_tests::{free_port, Mosquitto};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

const SENSORS: usize = 50;
const CONNECTIONS: usize = 4;

/// The demo workload: 50 simulated road segments (`aqyl-sim`, no faults), one CityPulse-format
/// row each per simulated 5 minutes, in event-time order.
fn workload(n: usize) -> Vec<(String, Vec<u8>)> {
    use aqyl_sim::sensors::{CityConfig, SensorType};
    use aqyl_sim::simulation::{SimConfig, Simulation};
    let start = aqyl_sim::time::parse_time("2014-08-01T00:00:00").unwrap();
    let city = CityConfig {
        sensors: SENSORS,
        areas: 5,
        types: vec![SensorType::Traffic],
    };
    let config = SimConfig::new(city, start, chrono::Duration::days(3650), 7);
    Simulation::new(config)
        .unwrap()
        .take(n)
        .map(|m| (m.topic.clone(), m.encode(None)))
        .collect()
}

/// The publisher connection of a topic (so a sensor always uses the same one).
fn connection_of(topic: &str) -> usize {
    topic
        .bytes()
        .fold(0usize, |h, b| h.wrapping_mul(31).wrapping_add(b as usize))
        % CONNECTIONS
}

/// Publishes everything at QoS 1 over several connections (a sensor always on the same one,
/// so per-sensor order holds) and returns when the broker has acknowledged all of it. The
/// connections meet at a barrier every simulated hour, as live sensors share one clock;
/// otherwise one connection can run days of event time ahead of another.
async fn publish(port: u16, msgs: Arc<Vec<(String, Vec<u8>)>>) {
    let mut tasks = Vec::new();
    let barrier = Arc::new(tokio::sync::Barrier::new(CONNECTIONS));
    for c in 0..CONNECTIONS {
        let msgs = msgs.clone();
        let barrier = barrier.clone();
        tasks.push(tokio::spawn(async move {
            let mut opts =
                MqttOptions::new(format!("bench-pub-{c}-{}", free_port()), "127.0.0.1", port);
            opts.set_inflight(200).set_max_packet_size(1 << 20, 1 << 20);
            let (client, mut eventloop) = AsyncClient::new(opts, 1000);
            let total = msgs.iter().filter(|(t, _)| connection_of(t) == c).count();
            let sender = tokio::spawn(async move {
                for chunk in msgs.chunks(12 * SENSORS) {
                    for (topic, payload) in chunk {
                        if connection_of(topic) == c {
                            client
                                .publish(topic.clone(), QoS::AtLeastOnce, false, payload.clone())
                                .await
                                .unwrap();
                        }
                    }
                    barrier.wait().await;
                }
                client
            });
            let mut acked = 0;
            while acked < total {
                if let Event::Incoming(Packet::PubAck(_)) =
                    eventloop.poll().await.expect("publisher connection")
                {
                    acked += 1;
                }
            }
            let client = sender.await.unwrap();
            let _ = client.disconnect().await;
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
}

/// Baseline: a bare rumqttc subscriber that only counts. Returns (seconds, publish seconds).
async fn bare_round(port: u16, msgs: Arc<Vec<(String, Vec<u8>)>>) -> (f64, f64) {
    let n = msgs.len() as u64;
    let mut opts = MqttOptions::new(format!("bench-sub-{}", free_port()), "127.0.0.1", port);
    opts.set_max_packet_size(1 << 20, 1 << 20);
    let (client, mut eventloop) = AsyncClient::new(opts, 100);
    client
        .subscribe("city/traffic/+", QoS::AtLeastOnce)
        .await
        .unwrap();
    loop {
        if let Event::Incoming(Packet::SubAck(_)) = eventloop.poll().await.unwrap() {
            break;
        }
    }
    let count = Arc::new(AtomicU64::new(0));
    let c = count.clone();
    let counter = tokio::spawn(async move {
        while c.load(Relaxed) < n {
            if let Event::Incoming(Packet::Publish(_)) = eventloop.poll().await.unwrap() {
                c.fetch_add(1, Relaxed);
            }
        }
    });
    let start = Instant::now();
    publish(port, msgs).await;
    let published = start.elapsed().as_secs_f64();
    counter.await.unwrap();
    let secs = start.elapsed().as_secs_f64();
    let _ = client.disconnect().await;
    (secs, published)
}

fn metric(http: &str, name: &str) -> Option<u64> {
    let body = reqwest::blocking::get(format!("{http}/metrics"))
        .ok()?
        .text()
        .ok()?;
    body.lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
}

/// How a round runs the service.
#[derive(Clone, Copy)]
struct Setup {
    workers: usize,
    quality: bool,
    rules: bool,
    durable: bool,
    /// The city services (the live city state and its tap), as shipped.
    city: bool,
    /// Processes of one cluster (1: no cluster).
    processes: usize,
}

/// The service: `aqyl run` (release binary), no sink, as separate processes (one, or the
/// processes of a cluster on loopback). Returns (seconds until every observation was
/// accepted, publish seconds, peak RSS KiB and CPU seconds, both summed over the processes).
/// CPU time per observation is the figure that holds on a busy machine, where throughput
/// follows whatever else runs.
async fn aqyl_round(
    bin: &std::path::Path,
    port: u16,
    msgs: Arc<Vec<(String, Vec<u8>)>>,
    setup: Setup,
) -> (f64, f64, u64, f64) {
    let Setup {
        workers,
        quality,
        rules,
        durable,
        city,
        processes,
    } = setup;
    let n = msgs.len() as u64;
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("sensors")).unwrap();
    std::fs::write(
        dir.path().join("sensors/traffic.toml"),
        aqyl::demo::TRAFFIC_DESCRIPTOR,
    )
    .unwrap();
    std::fs::create_dir(dir.path().join("sensors/registry")).unwrap();
    std::fs::copy(
        concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../config/sensors/registry/aarhus-traffic.csv"
        ),
        dir.path().join("sensors/registry/aarhus-traffic.csv"),
    )
    .unwrap();
    std::fs::create_dir(dir.path().join("rules")).unwrap();
    std::fs::copy(
        concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../config/rules/traffic.toml"
        ),
        dir.path().join("rules/traffic.toml"),
    )
    .unwrap();
    if !rules {
        std::fs::remove_file(dir.path().join("rules/traffic.toml")).unwrap();
    }
    let hosts: Vec<String> = aqyl_tests::free_ports_below_ephemeral(processes)
        .iter()
        .map(|p| format!("\"127.0.0.1:{p}\""))
        .collect();
    let client = free_port();
    let configs: Vec<std::path::PathBuf> = (0..processes)
        .map(|i| {
            let cluster = if processes > 1 {
                format!("[cluster]\nhosts = [{}]\nprocess = {i}\n", hosts.join(", "))
            } else {
                String::new()
            };
            let file = dir.path().join(format!("aqyl-{i}.toml"));
            std::fs::write(
                &file,
                format!("[mqtt]\nclient_id = \"bench-aqyl-{client}\"\nclean_session = true\n[pipeline]\nworkers = {workers}\nidle_timeout = \"0s\"\n# The publishers run on 4 connections at full speed, so event time is skewed between\n# sensors by far more than live traffic ever is; the lateness must cover that skew.\nallowed_lateness = \"1d\"\n[quality]\nenabled = {quality}\n[state]\ndurable = {durable}\ndir = \"state-{i}\"\n[city]\nenabled = {city}\n{cluster}"),
            )
            .unwrap();
            file
        })
        .collect();
    let https: Vec<String> = (0..processes)
        .map(|_| format!("127.0.0.1:{}", free_port()))
        .collect();
    let status = Arc::new(AtomicU64::new(0));
    // Wait for every process's "online" (published after its subscription) before publishing.
    let mut opts = MqttOptions::new(format!("bench-status-{}", free_port()), "127.0.0.1", port);
    opts.set_clean_session(true);
    let (sclient, mut sloop) = AsyncClient::new(opts, 10);
    for topic in ["aqyl/status", "aqyl/cluster/+/status"] {
        sclient.subscribe(topic, QoS::AtLeastOnce).await.unwrap();
    }
    let s2 = status.clone();
    let watcher = tokio::spawn(async move {
        while let Ok(ev) = sloop.poll().await {
            if let Event::Incoming(Packet::Publish(p)) = ev {
                if &p.payload[..] == b"online" {
                    s2.fetch_add(1, Relaxed);
                }
            }
        }
    });
    let mut children: Vec<std::process::Child> = configs
        .iter()
        .zip(&https)
        .map(|(config, http)| {
            Command::new(bin)
                .args(["run", "--config"])
                .arg(config)
                .env("AQYL_MQTT_URL", format!("mqtt://127.0.0.1:{port}"))
                .env("AQYL_HTTP_ADDR", http)
                .env("AQYL_LOG", "error")
                .stdout(Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    while status.load(Relaxed) < processes as u64 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let start = Instant::now();
    let publish_task = tokio::spawn(async move {
        publish(port, msgs).await;
        start.elapsed().as_secs_f64()
    });
    let total = move |name: &str| -> u64 {
        https
            .iter()
            .enumerate()
            .map(|(i, h)| {
                let label = if processes > 1 {
                    format!("process=\"{i}\"")
                } else {
                    String::new()
                };
                let name = match name.split_once('{') {
                    Some((n, rest)) => format!("{n}{{{label},{rest}"),
                    None if processes > 1 => format!("{name}{{{label}}}"),
                    None => name.to_string(),
                };
                metric(&format!("http://{h}"), &format!("{name} ")).unwrap_or(0)
            })
            .sum()
    };
    // Scraped every 20 ms: within 1% of a round's few seconds, and rare enough that
    // rendering `/metrics` costs the service little (every 5 ms it was about 2% of its CPU).
    let late = tokio::task::spawn_blocking(move || {
        while total("aqyl_observations_total") + total("aqyl_rejected_total{reason=\"late\"}") < n {
            std::thread::sleep(Duration::from_millis(20));
        }
        total("aqyl_rejected_total{reason=\"late\"}")
    })
    .await
    .unwrap();
    let secs = start.elapsed().as_secs_f64();
    assert_eq!(
        late, 0,
        "records were late: raise allowed_lateness for this publish skew"
    );
    let published = publish_task.await.unwrap();
    let rss = children
        .iter()
        .map(|child| {
            std::fs::read_to_string(format!("/proc/{}/status", child.id()))
                .ok()
                .and_then(|s| {
                    s.lines()
                        .find(|l| l.starts_with("VmHWM:"))
                        .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
                })
                .unwrap_or(0)
        })
        .sum();
    let cpu = children.iter().map(|child| cpu_seconds(child.id())).sum();
    // A cluster drains together: every process is told to stop before any is waited for.
    for child in &children {
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
    }
    for child in &mut children {
        let _ = child.wait();
    }
    watcher.abort();
    (secs, published, rss, cpu)
}

/// User and system CPU seconds process `pid` has used so far.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces) in parentheses: utime is the
    // 14th field of the line, stime the 15th, in clock ticks (100 a second on Linux).
    let rest = stat.rsplit_once(')').map_or("", |r| r.1);
    let ticks: Vec<f64> = rest
        .split_whitespace()
        .skip(11)
        .take(2)
        .filter_map(|t| t.parse().ok())
        .collect();
    ticks.iter().sum::<f64>() / 100.0
}

/// `--processes 1,2,3`: compare clusters of these sizes (and the bare subscriber).
fn processes_list() -> Option<Vec<usize>> {
    let args: Vec<String> = std::env::args().collect();
    let i = args.iter().position(|a| a == "--processes")?;
    let list = args
        .get(i + 1)?
        .split(',')
        .filter_map(|p| p.parse().ok())
        .collect();
    Some(list)
}

/// Each round: the bare subscriber, then a cluster of each size in `list` (durability off,
/// as a cluster needs), in turn; medians and ratios against one process at the end.
fn scale_out(
    rt: &tokio::runtime::Runtime,
    bin: &std::path::Path,
    broker: &Mosquitto,
    msgs: &Arc<Vec<(String, Vec<u8>)>>,
    setup: Setup,
    list: &[usize],
    rounds: usize,
) {
    let n = msgs.len() as f64;
    let mut bare = Vec::new();
    let mut rates: Vec<Vec<f64>> = vec![Vec::new(); list.len()];
    let mut peaks: Vec<u64> = vec![0; list.len()];
    for round in 1..=rounds {
        let (b, _) = rt.block_on(bare_round(broker.port, msgs.clone()));
        bare.push(n / b);
        let mut line = format!("round {round}: bare {:>8.0} msg/s", n / b);
        for (k, &processes) in list.iter().enumerate() {
            let cluster = Setup {
                processes,
                durable: false,
                ..setup
            };
            let (a, _, rss, _) = rt.block_on(aqyl_round(bin, broker.port, msgs.clone(), cluster));
            rates[k].push(n / a);
            peaks[k] = peaks[k].max(rss);
            line += &format!(" | {processes} process(es) {:>8.0} obs/s", n / a);
        }
        println!("{line}");
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let mb = median(&mut bare);
    let one = median(&mut rates[0].clone());
    for (k, &processes) in list.iter().enumerate() {
        let m = median(&mut rates[k]);
        println!(
            "median: {processes} process(es) x {} worker(s): {m:.0} obs/s, /bare {:.2}, /{} process(es) {:.2}, peak RSS {} MiB in all",
            setup.workers,
            m / mb,
            list[0],
            m / one,
            peaks[k] / 1024
        );
    }
}

fn main() {
    let n = aqyl_tests::arg("--messages", 200_000);
    let rounds = aqyl_tests::arg("--rounds", 3);
    let workers = aqyl_tests::arg("--workers", 2);
    // 1: quality scoring on, as shipped; 0: off; 2: both, alternating, to pair them.
    let quality = aqyl_tests::arg("--quality", 1);
    // 1: the shipped traffic rules, as the demo runs them; 0: none.
    let rules = aqyl_tests::arg("--rules", 1) != 0;
    // 1: durable ingest and checkpoints, as shipped; 0: off; 2: both, alternating, to pair them.
    let durable = aqyl_tests::arg("--durable", 1);
    // 1: the city services on, as shipped; 0: off.
    let city = aqyl_tests::arg("--city", 1) != 0;
    let broker = Mosquitto::start();
    let msgs = Arc::new(workload(n));
    let bytes: usize = msgs.iter().map(|m| m.1.len()).sum();
    println!(
        "workload: {n} messages ({} bytes avg), {SENSORS} sensors, QoS 1, {CONNECTIONS} publisher connections, mosquitto with max_queued_messages 0; aqyl workers = {workers}",
        bytes / n.max(1)
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (mut bare, mut svc, mut peak) = (Vec::new(), Vec::new(), 0);
    let mut unscored = Vec::new();
    let mut volatile = Vec::new();
    let mut base_svc = Vec::new();
    let (mut svc_cpu, mut base_cpu) = (Vec::new(), Vec::new());
    let this = std::path::Path::new(env!("CARGO_BIN_EXE_aqyl"));
    let baseline = std::env::var_os("AQYL_BASELINE").map(std::path::PathBuf::from);
    let setup = Setup {
        workers,
        quality: quality != 0,
        rules,
        durable: durable != 0,
        city,
        processes: 1,
    };
    if let Some(list) = processes_list() {
        return scale_out(&rt, this, &broker, &msgs, setup, &list, rounds);
    }
    for round in 1..=rounds {
        if quality == 2 {
            let (a, _, _, _) = rt.block_on(aqyl_round(
                this,
                broker.port,
                msgs.clone(),
                Setup {
                    quality: false,
                    ..setup
                },
            ));
            println!(
                "round {round}: aqyl without quality scoring {:>8.0} obs/s",
                n as f64 / a
            );
            unscored.push(n as f64 / a);
        }
        if durable == 2 {
            let (a, _, _, _) = rt.block_on(aqyl_round(
                this,
                broker.port,
                msgs.clone(),
                Setup {
                    durable: false,
                    ..setup
                },
            ));
            println!(
                "round {round}: aqyl without durability {:>8.0} obs/s",
                n as f64 / a
            );
            volatile.push(n as f64 / a);
        }
        let (b, bp) = rt.block_on(bare_round(broker.port, msgs.clone()));
        if let Some(base) = &baseline {
            let (a, _, _, cpu) = rt.block_on(aqyl_round(base, broker.port, msgs.clone(), setup));
            println!(
                "round {round}: baseline aqyl {:>8.0} obs/s, {:.1} CPU µs/obs",
                n as f64 / a,
                cpu * 1e6 / n as f64
            );
            base_svc.push(n as f64 / a);
            base_cpu.push(cpu * 1e6 / n as f64);
        }
        let (a, ap, rss, cpu) = rt.block_on(aqyl_round(this, broker.port, msgs.clone(), setup));
        peak = peak.max(rss);
        println!(
            "round {round}: bare subscriber {:>8.0} msg/s (publish {:>8.0} msg/s) | aqyl {:>8.0} obs/s (publish {:>8.0} msg/s) | ratio aqyl/bare {:.2} | aqyl peak RSS {} MiB | {:.1} CPU µs/obs",
            n as f64 / b,
            n as f64 / bp,
            n as f64 / a,
            n as f64 / ap,
            b / a,
            rss / 1024,
            cpu * 1e6 / n as f64
        );
        svc_cpu.push(cpu * 1e6 / n as f64);
        bare.push(n as f64 / b);
        svc.push(n as f64 / a);
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (mb, ms) = (median(&mut bare), median(&mut svc));
    if !unscored.is_empty() {
        let mu = median(&mut unscored);
        println!(
            "median: aqyl without quality {mu:.0} obs/s, with quality {ms:.0} obs/s, with/without = {:.2}",
            ms / mu
        );
    }
    if !volatile.is_empty() {
        let mv = median(&mut volatile);
        println!(
            "median: aqyl without durability {mv:.0} obs/s, durable {ms:.0} obs/s, durable/without = {:.2}",
            ms / mv
        );
    }
    println!(
        "median: bare {mb:.0} msg/s, aqyl {ms:.0} obs/s, aqyl/bare = {:.2}, aqyl peak RSS {} MiB, {:.1} CPU µs/obs",
        ms / mb,
        peak / 1024,
        median(&mut svc_cpu)
    );
    if !base_svc.is_empty() {
        let mbase = median(&mut base_svc);
        let (cs, cb) = (median(&mut svc_cpu), median(&mut base_cpu));
        println!(
            "median: baseline aqyl {mbase:.0} obs/s (baseline/bare = {:.2}), aqyl/baseline = {:.2}; CPU per observation: baseline {cb:.1} µs, aqyl {cs:.1} µs, aqyl/baseline = {:.2}",
            mbase / mb,
            ms / mbase,
            cs / cb
        );
    }
}
