//! Operations: the status page in a real browser (Debian's `chromium`, headless) while a
//! simulated city runs, a real Prometheus (Debian's `prometheus`) scraping `/metrics`, the
//! Grafana dashboard's queries against what `/metrics` exposes, and `/health` and `/ready`
//! following the broker connection.

use super::{config_dir, repo, Aqyl, WAIT};
use aqyl_tests::browser::{chromium, cutting_proxy};
use aqyl_tests::{
    citypulse_row, find_exe, free_port, publish, shipped_config, wait_until, Mosquitto, Subscriber,
    VictoriaMetrics,
};
use std::collections::BTreeSet;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// A real Aarhus road segment, congested in the simulated city.
const SEGMENT: &str = "158324";

fn now_s() -> i64 {
    chrono::Utc::now().timestamp()
}

/// The segment ids of the shipped traffic registry.
fn registry_ids() -> Vec<String> {
    let text =
        std::fs::read_to_string(repo().join("config/sensors/registry/aarhus-traffic.csv")).unwrap();
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.starts_with("sensor_id") && !l.trim().is_empty())
        .map(|l| l.split(',').next().unwrap().to_string())
        .collect()
}

fn get(url: &str) -> (u16, String) {
    let client = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    match client.get(url).send() {
        Ok(r) => (r.status().as_u16(), r.text().unwrap_or_default()),
        Err(e) => (0, e.to_string()),
    }
}

/// The number in the element `<b id="{id}">N</b>` of a dumped page.
fn count(dom: &str, id: &str) -> Option<u64> {
    let at = dom.find(&format!("id=\"{id}\">"))? + id.len() + 6;
    dom[at..].split('<').next()?.trim().parse().ok()
}

#[test]
fn the_status_page_shows_the_city_live_in_headless_chromium() {
    let mqtt = Mosquitto::start();
    let vm = VictoriaMetrics::start();
    let dir = shipped_config();
    let status = Subscriber::start(mqtt.port, "aqyl/status");
    let aqyl = Aqyl::start(&dir.path().join("aqyl.toml"), &mqtt, &vm);
    aqyl.wait_online(&status);

    // The city: every registry segment reports six times, five minutes apart, the last
    // within the last minute; the last reading of SEGMENT is a crawl, which starts a
    // congestion.
    let ids = registry_ids();
    let t0 = now_s() - 25 * 60 - 60;
    let mut msgs = Vec::new();
    for k in 0..6 {
        for (i, id) in ids.iter().enumerate() {
            let crawl = k == 5 && id == SEGMENT;
            let (speed, vehicles) = if crawl {
                (18, 12)
            } else {
                (45 + (i % 30) as u32, 3)
            };
            msgs.push(citypulse_row(
                id,
                t0 + k * 300 + (i % 50) as i64,
                speed,
                vehicles,
            ));
        }
    }
    publish(mqtt.port, &msgs);
    wait_until(WAIT, "the congestion to be under way", || {
        aqyl.metric("aqyl_incidents_active ").unwrap_or(0) >= 1
    });
    wait_until(WAIT, "quality reports for the segments", || {
        let (_, body) = get(&format!("{}/api/status", aqyl.http));
        let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
        v["sensors"]
            .as_array()
            .is_some_and(|s| s.iter().filter(|s| s[4].is_number()).count() >= ids.len() / 2)
    });
    // The page is a view of the city state: a segment's score on the map is the score of its
    // entry in /api/state, which the detail view shows.
    let (_, body) = get(&format!("{}/api/status", aqyl.http));
    let page: serde_json::Value = serde_json::from_str(&body).unwrap();
    let row = page["sensors"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s[0] == format!("traffic/{SEGMENT}"))
        .cloned()
        .unwrap();
    let (_, body) = get(&format!(
        "{}/api/state?type=traffic&id={SEGMENT}",
        aqyl.http
    ));
    let state: serde_json::Value = serde_json::from_str(&body).unwrap();
    let entry = &state["sensors"][0];
    assert_eq!(state["total"], 1, "{state}");
    if let Some(score) = row[4].as_f64() {
        let q = entry["quality"]["score"].as_f64().unwrap();
        assert!((q - score).abs() < 1e-3, "page {row}, state {entry}");
    }
    assert!(
        entry["incidents"]
            .as_array()
            .is_some_and(|i| i.iter().any(|e| e["event_type"] == "congestion")),
        "{entry}"
    );

    // The city keeps running while the browser watches: every second another segment
    // crawls, and its congestion starts on arrival.
    let running = Arc::new(AtomicBool::new(true));
    let city = {
        let (running, ids, port) = (running.clone(), ids.clone(), mqtt.port);
        std::thread::spawn(move || {
            let mut n = 0usize;
            while running.load(Ordering::Relaxed) {
                let id = &ids[(n * 7 + 1) % ids.len()];
                if id != SEGMENT {
                    publish(port, &[citypulse_row(id, now_s(), 15, 14)]);
                }
                n += 1;
                std::thread::sleep(Duration::from_secs(1));
            }
        })
    };

    let page = format!(
        "http://{}/",
        cutting_proxy(
            aqyl.http.trim_start_matches("http://"),
            Duration::from_secs(5)
        )
    );
    let dom = chromium(&page, 1000, None);
    let sensors = count(&dom, "sensor-count");
    assert!(
        sensors.is_some_and(|n| n >= ids.len() as u64),
        "every registry segment is on the page ({sensors:?} of {}): {dom}",
        ids.len()
    );
    assert!(
        count(&dom, "reporting-count").is_some_and(|n| n > 0),
        "{dom}"
    );
    assert!(
        dom.contains(&format!("data-subject=\"{SEGMENT}\"")),
        "the congestion is listed: {dom}"
    );
    assert!(
        count(&dom, "incident-count").is_some_and(|n| n >= 1),
        "{dom}"
    );
    // The snapshot came over the live feed, and at least one batch of changes after it.
    assert!(
        dom.contains("id=\"live\" class=\"on\""),
        "the live feed is open: {dom}"
    );
    let updates = dom
        .split("data-updates=\"")
        .nth(1)
        .and_then(|s| s.split('"').next())
        .and_then(|s| s.parse::<u64>().ok());
    assert!(
        updates.is_some_and(|n| n >= 1),
        "a live update arrived ({updates:?}): {dom}"
    );

    // The screenshot the README shows.
    let shots = tempfile::tempdir().unwrap();
    let png = shots.path().join("status-page.png");
    chromium(&page, 1000, Some(&png));
    let bytes = std::fs::read(&png).expect("chromium wrote the screenshot");
    assert!(bytes.starts_with(b"\x89PNG\r\n\x1a\n"), "a PNG");
    assert!(
        bytes.len() > 20_000,
        "a page with a map, not a blank one: {} bytes",
        bytes.len()
    );
    if std::env::var_os("AQYL_UPDATE_SCREENSHOT").is_some() {
        std::fs::create_dir_all(repo().join("docs")).unwrap();
        std::fs::copy(&png, repo().join("docs/status-page.png")).unwrap();
    }
    running.store(false, Ordering::Relaxed);
    city.join().unwrap();
    aqyl.stop();
}

/// Every metric name the dashboard's Prometheus queries use.
fn dashboard_metrics() -> BTreeSet<String> {
    let text = std::fs::read_to_string(repo().join("deploy/grafana/dashboards/aqyl.json")).unwrap();
    let dashboard: serde_json::Value = serde_json::from_str(&text).unwrap();
    let mut names = BTreeSet::new();
    let mut exprs = 0;
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let Some(expr) = target["expr"].as_str() else {
                continue;
            };
            exprs += 1;
            let mut rest = expr;
            while let Some(at) = rest.find("aqyl_") {
                let name: String = rest[at..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                rest = &rest[at + name.len()..];
                names.insert(name);
            }
        }
    }
    assert!(
        exprs >= 10,
        "the dashboard has its Prometheus queries ({exprs})"
    );
    names
}

/// The metric names of a Prometheus text exposition.
fn exposed(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| l.split(['{', ' ']).next().unwrap().to_string())
        .collect()
}

#[test]
fn prometheus_scrapes_aqyl_and_the_dashboard_queries_only_what_it_exposes() {
    let mqtt = Mosquitto::start();
    let vm = VictoriaMetrics::start();
    let dir = config_dir(1);
    let aqyl = Aqyl::online(&dir.path().join("aqyl.toml"), &mqtt, &vm);
    let t0 = 1_406_851_200;
    let msgs: Vec<_> = (0..25)
        .map(|m| citypulse_row("158355", t0 + 60 * m, 40, 5))
        .collect();
    publish(mqtt.port, &msgs);
    wait_until(WAIT, "every reading accepted", || {
        aqyl.metric("aqyl_observations_total ") == Some(25)
    });

    // The dashboard asks only for what /metrics has.
    let (code, metrics) = get(&format!("{}/metrics", aqyl.http));
    assert_eq!(code, 200, "{metrics}");
    let have = exposed(&metrics);
    let missing: Vec<_> = dashboard_metrics()
        .into_iter()
        .filter(|m| !have.contains(m))
        .collect();
    assert!(
        missing.is_empty(),
        "the dashboard queries metrics Aqyl does not expose: {missing:?}"
    );

    // A real Prometheus scrapes it every second.
    let data = tempfile::tempdir().unwrap();
    let port = free_port();
    let target = aqyl.http.trim_start_matches("http://");
    std::fs::write(
        data.path().join("prometheus.yml"),
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: aqyl\n    static_configs:\n      - targets: ['{target}']\n"
        ),
    )
    .unwrap();
    let mut prometheus = Command::new(find_exe("prometheus"))
        .arg(format!(
            "--config.file={}",
            data.path().join("prometheus.yml").display()
        ))
        .arg(format!(
            "--storage.tsdb.path={}",
            data.path().join("tsdb").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start prometheus");
    let query = |q: &str| -> serde_json::Value {
        let client = reqwest::blocking::Client::new();
        client
            .get(format!("http://127.0.0.1:{port}/api/v1/query"))
            .query(&[("query", q)])
            .send()
            .ok()
            .and_then(|r| r.json().ok())
            .unwrap_or_default()
    };
    let value = |v: &serde_json::Value| -> Option<f64> {
        v["data"]["result"][0]["value"][1].as_str()?.parse().ok()
    };
    let mut answer = serde_json::Value::Null;
    wait_until(
        WAIT,
        "Prometheus to have scraped aqyl_observations_total",
        || {
            answer = query("aqyl_observations_total{job=\"aqyl\"}");
            value(&answer) == Some(25.0)
        },
    );
    assert_eq!(
        value(&query("up{job=\"aqyl\"}")),
        Some(1.0),
        "the target is up"
    );
    // A labelled counter and a gauge come through too.
    let late = query("aqyl_rejected_total{reason=\"late\"}");
    assert_eq!(value(&late), Some(0.0), "{late}");
    let subs = query("aqyl_subscriptions");
    assert!(value(&subs).is_some_and(|v| v >= 1.0), "{subs}");
    let _ = prometheus.kill();
    let _ = prometheus.wait();
    aqyl.stop();
}

#[test]
fn health_and_ready_follow_the_broker_connection() {
    let mqtt = Mosquitto::start();
    let port = mqtt.port;
    let dir = config_dir(1);
    let status = Subscriber::start(port, "aqyl/status");
    let aqyl = Aqyl::start_with(&dir.path().join("aqyl.toml"), &mqtt.url(), None);
    aqyl.wait_online(&status);
    wait_until(WAIT, "/ready", || {
        get(&format!("{}/ready", aqyl.http)) == (200, "ready\n".into())
    });
    assert_eq!(get(&format!("{}/health", aqyl.http)), (200, "ok\n".into()));

    // The broker goes away: it refuses Aqyl's reconnects.
    drop(status);
    drop(mqtt);
    let mut health = (0, String::new());
    // Both connections notice on their own schedule; wait for the ingest one.
    wait_until(WAIT, "/health to report the ingest connection", || {
        health = get(&format!("{}/health", aqyl.http));
        health.1.contains("broker: the ingest connection is down")
    });
    assert_eq!(health.0, 503, "{health:?}");
    let ready = get(&format!("{}/ready", aqyl.http));
    assert_eq!(ready.0, 503, "{ready:?}");
    assert!(ready.1.contains("subscriptions"), "{ready:?}");

    // It is back on the same port: Aqyl reconnects, subscribes, and is healthy again.
    let back = Mosquitto::start_on(port);
    wait_until(WAIT, "/health to be ok again", || {
        get(&format!("{}/health", aqyl.http)) == (200, "ok\n".into())
    });
    wait_until(WAIT, "/ready again", || {
        get(&format!("{}/ready", aqyl.http)) == (200, "ready\n".into())
    });
    aqyl.stop();
    drop(back);
}

/// The tile (column, row) of a position at zoom `z` (Web Mercator, as map tile servers cut).
fn tile_of(lat: f64, lon: f64, z: u32) -> (u32, u32) {
    let n = f64::from(1u32 << z);
    let x = (lon + 180.0) / 360.0 * n;
    let rad = lat.to_radians();
    let y = (1.0 - (rad.tan() + 1.0 / rad.cos()).ln() / std::f64::consts::PI) / 2.0 * n;
    (x as u32, y as u32)
}

#[test]
fn with_http_tiles_the_page_draws_the_map_tiles_under_the_city() {
    // A tile server that answers every request with a small grey PNG and keeps the paths.
    const PNG: &[u8] = &[
        0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a, 0x00, 0x00, 0x00, 0x0d, 0x49, 0x48, 0x44,
        0x52, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x01, 0x08, 0x00, 0x00, 0x00, 0x00, 0x3a,
        0x7e, 0x9b, 0x55, 0x00, 0x00, 0x00, 0x0a, 0x49, 0x44, 0x41, 0x54, 0x78, 0x9c, 0x63, 0x68,
        0x00, 0x00, 0x00, 0x82, 0x00, 0x81, 0x4c, 0x17, 0xd7, 0xdf, 0x00, 0x00, 0x00, 0x00, 0x49,
        0x45, 0x4e, 0x44, 0xae, 0x42, 0x60, 0x82,
    ];
    let server = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let tiles_at = server.local_addr().unwrap();
    let paths = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    {
        let paths = paths.clone();
        std::thread::spawn(move || {
            use std::io::{BufRead, Write};
            for conn in server.incoming() {
                let Ok(mut conn) = conn else { return };
                let mut line = String::new();
                let mut reader = std::io::BufReader::new(conn.try_clone().unwrap());
                if reader.read_line(&mut line).is_err() {
                    continue;
                }
                if let Some(path) = line.split_whitespace().nth(1) {
                    paths.lock().unwrap().push(path.to_string());
                }
                let head = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: image/png\r\nContent-Length: {}\r\nAccess-Control-Allow-Origin: *\r\nConnection: close\r\n\r\n",
                    PNG.len()
                );
                let _ = conn.write_all(head.as_bytes());
                let _ = conn.write_all(PNG);
            }
        });
    }
    let mqtt = Mosquitto::start();
    let vm = VictoriaMetrics::start();
    let dir = shipped_config();
    let config = dir.path().join("aqyl.toml");
    let text = std::fs::read_to_string(&config).unwrap().replacen(
        "[http]\n",
        &format!("[http]\ntiles = \"http://{tiles_at}/{{z}}/{{x}}/{{y}}.png\"\n"),
        1,
    );
    std::fs::write(&config, text).unwrap();
    let aqyl = Aqyl::online(&config, &mqtt, &vm);

    let page = format!(
        "http://{}/",
        cutting_proxy(
            aqyl.http.trim_start_matches("http://"),
            Duration::from_secs(3)
        )
    );
    let dom = chromium(&page, 1000, None);
    assert!(dom.contains("id=\"sensor-count\""), "{dom}");
    // The registry's Aarhus fills the map: the tiles asked for are of one zoom level, and
    // central Aarhus (Rådhuspladsen) lies on one of them.
    let asked: Vec<(u32, u32, u32)> = paths
        .lock()
        .unwrap()
        .iter()
        .filter_map(|p| {
            let mut it = p
                .trim_start_matches('/')
                .trim_end_matches(".png")
                .split('/');
            Some((
                it.next()?.parse().ok()?,
                it.next()?.parse().ok()?,
                it.next()?.parse().ok()?,
            ))
        })
        .collect();
    assert!(!asked.is_empty(), "no tile was asked for: {dom}");
    let z = asked[0].0;
    assert!(
        (8..=16).contains(&z) && asked.iter().all(|t| t.0 == z),
        "a city's zoom: {asked:?}"
    );
    let centre = tile_of(56.1535, 10.2039, z);
    assert!(
        asked.iter().any(|t| (t.1, t.2) == centre),
        "central Aarhus {centre:?} at zoom {z} is among {asked:?}"
    );
    aqyl.stop();
}
