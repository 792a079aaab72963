//! The status page with a big city: `aqyl run` with a registry of N synthetic road segments
//! (the shipped traffic descriptor, rules and quality), every segment reporting, and the page
//! loaded in headless Chromium (Debian's `chromium`). Reports
//! per city size, the medians over the rounds of:
//! - the server: `/api/status` (the snapshot the page starts from) time and size;
//! - the page in real time (driven over the DevTools protocol), timed by itself
//!   (`performance.now()` around its own work, shown on the live indicator's tooltip): from
//!   opening to the first map, loading the snapshot, drawing the map (slowest frame),
//!   applying a live update (the slowest, and how many scores it carried), the updates seen;
//! - the whole path: from the city reporting at once (a reading from every segment, then the
//!   watermark moved past it) until the page has applied new scores for 90 % of them.
//!
//! ```text
//! cargo bench -p aqyl --bench status_page -- --sensors 449,10000 --rounds 3
//! ```
//! The smaller city is the baseline of the same run. Needs `mosquitto` and `chromium` (the
//! test command installs both).

#![allow(clippy::unwrap_used, clippy::expect_used)] // a benchmark driver: failing loudly is right

use aqyl_tests::browser::Devtools;
use aqyl_tests::{citypulse_row, free_port, publish, wait_until, Mosquitto, Subscriber};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(120);
/// Readings per segment before the page opens (five minutes apart).
const HISTORY: i64 = 6;

fn now_s() -> i64 {
    chrono::Utc::now().timestamp()
}

/// `n` segment ids with positions on a grid over Aarhus and one of 100 areas each.
fn registry(n: usize) -> (Vec<String>, String) {
    let side = (n as f64).sqrt().ceil() as usize;
    let mut csv = String::from("sensor_id,lat,lon,area\n");
    let ids: Vec<String> = (0..n).map(|i| format!("{}", 100_000 + i)).collect();
    for (i, id) in ids.iter().enumerate() {
        let (row, col) = (i / side, i % side);
        let lat = 56.10 + 0.15 * row as f64 / side as f64;
        let lon = 10.05 + 0.25 * col as f64 / side as f64;
        let area = format!("grid-{:02}-{:02}", row * 10 / side, col * 10 / side);
        csv.push_str(&format!("{id},{lat:.6},{lon:.6},{area}\n"));
    }
    (ids, csv)
}

/// The service with the shipped traffic descriptor, rules and quality over the synthetic
/// registry, its HTTP endpoint on a free port, no store.
fn start_aqyl(dir: &std::path::Path, mqtt: &Mosquitto, csv: &str) -> (Service, String) {
    let repo = concat!(env!("CARGO_MANIFEST_DIR"), "/../../config");
    std::fs::create_dir_all(dir.join("sensors/registry")).unwrap();
    std::fs::create_dir_all(dir.join("rules")).unwrap();
    std::fs::copy(
        format!("{repo}/sensors/traffic.toml"),
        dir.join("sensors/traffic.toml"),
    )
    .unwrap();
    std::fs::copy(
        format!("{repo}/rules/traffic.toml"),
        dir.join("rules/traffic.toml"),
    )
    .unwrap();
    std::fs::write(dir.join("sensors/registry/aarhus-traffic.csv"), csv).unwrap();
    let client_id = format!("bench-page-{}", free_port());
    let config = format!(
        "[mqtt]\nclient_id = \"{client_id}\"\nclean_session = true\n[pipeline]\nallowed_lateness = \"5s\"\nidle_timeout = \"0s\"\n[quality]\nenabled = true\n"
    );
    std::fs::write(dir.join("aqyl.toml"), config).unwrap();
    let http = format!("127.0.0.1:{}", free_port());
    let child = Command::new(env!("CARGO_BIN_EXE_aqyl"))
        .args(["run", "--config"])
        .arg(dir.join("aqyl.toml"))
        .env("AQYL_MQTT_URL", mqtt.url())
        .env("AQYL_HTTP_ADDR", &http)
        .env("AQYL_LOG", "error")
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    (Service(child), http)
}

/// The service's process, stopped (SIGTERM) when dropped, also when a round fails.
struct Service(Child);

impl Drop for Service {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status();
        let _ = self.0.wait();
    }
}

fn get(url: &str) -> (Duration, String) {
    let client = reqwest::blocking::Client::new();
    let start = Instant::now();
    let body = client.get(url).send().unwrap().text().unwrap();
    (start.elapsed(), body)
}

/// Sensors with a quality score in `/api/status`.
fn reporting(http: &str) -> usize {
    let (_, body) = get(&format!("http://{http}/api/status"));
    let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
    v["sensors"]
        .as_array()
        .map_or(0, |s| s.iter().filter(|s| s[4].is_number()).count())
}

#[derive(Default)]
struct Figures {
    api_ms: Vec<f64>,
    api_kb: f64,
    shown_ms: Vec<f64>,
    snapshot_ms: Vec<f64>,
    draw_ms: Vec<f64>,
    changes_ms: Vec<f64>,
    updates: Vec<f64>,
    largest: Vec<f64>,
    burst_s: Vec<f64>,
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

/// One round of one city size: history published, then the page loaded and a reading from
/// every segment; the figures are added to `f`.
fn city(n: usize, f: &mut Figures) {
    let mqtt = Mosquitto::start();
    let dir = tempfile::tempdir().unwrap();
    let (ids, csv) = registry(n);
    let status = Subscriber::start(mqtt.port, "aqyl/status");
    let (_service, http) = start_aqyl(dir.path(), &mqtt, &csv);
    wait_until(WAIT, "aqyl online", || {
        status
            .messages()
            .iter()
            .any(|m| m.payload == b"online".to_vec())
    });
    // Event time runs on its own clock an hour back (no idle advance): history, then one
    // reading from every 100th segment far enough ahead to pass the neighbour check's hold
    // (half an expected interval) over all of it.
    let t0 = now_s() - 3600;
    let city_at = |t: i64, speed: u32| -> Vec<(String, Vec<u8>)> {
        ids.iter()
            .enumerate()
            .map(|(i, id)| citypulse_row(id, t + (i * 50 / n) as i64, speed + (i % 30) as u32, 3))
            .collect()
    };
    let push_past = |t: i64| -> Vec<(String, Vec<u8>)> {
        let after = t + 50 + 160;
        ids.iter()
            .step_by(100)
            .map(|id| citypulse_row(id, after, 40, 3))
            .collect()
    };
    let history: Vec<_> = (0..HISTORY)
        .flat_map(|k| city_at(t0 + k * 300, 40))
        .collect();
    publish(mqtt.port, &history);
    publish(mqtt.port, &push_past(t0 + (HISTORY - 1) * 300));
    wait_until(WAIT, "quality reports for most segments", || {
        reporting(&http) >= n * 9 / 10
    });

    {
        let (took, body) = get(&format!("http://{http}/api/status"));
        f.api_ms.push(took.as_secs_f64() * 1e3);
        f.api_kb = body.len() as f64 / 1024.0;
        let mut page = Devtools::open(&format!("http://{http}/"));
        wait_until(WAIT, "the page to be live", || {
            page.eval("document.getElementById('live').className") == "on"
        });
        // The whole city reports again, then the watermark is pushed past it: the page gets a
        // new score for every sensor.
        let t = t0 + (HISTORY + 1) * 300;
        let burst = Instant::now();
        publish(mqtt.port, &city_at(t, 30));
        publish(mqtt.port, &push_past(t));
        wait_until(WAIT, "updates with most sensors' new scores", || {
            let seen = page.eval("+document.getElementById('live').dataset.scoresApplied");
            seen.as_f64().is_some_and(|v| v >= (n * 9 / 10) as f64)
        });
        f.burst_s.push(burst.elapsed().as_secs_f64());
        let drawn = page.eval("+document.getElementById('sensor-count').textContent");
        assert_eq!(
            drawn.as_u64(),
            Some(n as u64),
            "every segment is on the page"
        );
        let t =
            page.eval("JSON.stringify(Object.assign({}, document.getElementById('live').dataset))");
        let t: serde_json::Value = serde_json::from_str(t.as_str().unwrap_or("{}")).unwrap();
        let num = |k: &str| {
            t[k].as_str()
                .and_then(|v| v.parse().ok())
                .unwrap_or(f64::NAN)
        };
        f.shown_ms.push(num("shownMs"));
        f.snapshot_ms.push(num("snapshotMs"));
        f.draw_ms.push(num("drawMaxMs"));
        f.changes_ms.push(num("changesMaxMs"));
        f.updates.push(num("updates"));
        f.largest.push(num("largestUpdate"));
    }
}

fn main() {
    let sizes: Vec<usize> = std::env::args()
        .skip_while(|a| a != "--sensors")
        .nth(1)
        .unwrap_or_else(|| "449,10000".into())
        .split(',')
        .map(|s| s.trim().parse().expect("--sensors N[,N...]"))
        .collect();
    let rounds = aqyl_tests::arg("--rounds", 3);
    println!(
        "sensors | /api/status ms | KiB | page: shown after ms | snapshot ms | draw ms (max) | update ms (max) | scores in it | updates | burst to page s"
    );
    // Rounds alternate the sizes (A B A B), each a fresh service, as the burst that makes
    // the page's biggest update only comes once per service.
    let mut figures: Vec<Figures> = sizes.iter().map(|_| Figures::default()).collect();
    for _ in 0..rounds {
        for (n, f) in sizes.iter().zip(&mut figures) {
            city(*n, f);
        }
    }
    for (n, f) in sizes.iter().zip(&figures) {
        println!(
            "{n} | {:.1} | {:.0} | {:.0} | {:.1} | {:.1} | {:.1} | {:.0} | {:.0} | {:.1}",
            median(&f.api_ms),
            f.api_kb,
            median(&f.shown_ms),
            median(&f.snapshot_ms),
            median(&f.draw_ms),
            median(&f.changes_ms),
            median(&f.largest),
            median(&f.updates),
            median(&f.burst_s),
        );
    }
}
