//! InfluxDB v2 writes through the `influxdb2` crate, with a disk spill for outages.
//!
//! A batch is written at once, within `write_timeout` (a store that accepts the connection and
//! never answers must not stop the pipeline). What happens when that fails depends on why:
//! - the store is unavailable (connection refused, timeout, 5xx, 429, 401/403/404, which a
//!   fixed token or bucket cures): the batch is spilled to a file under the spill directory
//!   and the sink carries on with new data, spilling it too until the store answers again.
//!   A background task replays the spill oldest first with exponential backoff (100 ms
//!   doubling up to `max_backoff`), beside new writes, not instead of them; the spill left by
//!   an earlier run is replayed the same way after a restart.
//! - the store rejects the batch for good (400, 413, 422: data it will never take): retrying
//!   would block every later batch behind it, so the batch goes to the rejected directory
//!   with the store's answer beside it, `aqyl_influx_points_rejected_total` counts it, and
//!   later batches flow.
//!
//! Spill files live in a subdirectory per store (URL, org and bucket), so batches spilled for
//! one store are never replayed into another configured later. Each point is keyed by series
//! and timestamp, so a batch written twice (a replay after an ambiguous failure) stores the
//! same data.

use aqyl_core::metrics::Metrics;
use influxdb2::api::write::TimestampPrecision;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::Arc;
use std::time::Duration;

/// Spill writes retried before the sink gives up (then the service stops: see `run`).
const SPILL_ATTEMPTS: u32 = 5;

/// Where an InfluxDB v2 destination is and how long a write may take.
#[derive(Clone)]
struct Store {
    client: influxdb2::Client,
    url: String,
    org: String,
    bucket: String,
    timeout: Duration,
}

/// Why a write failed.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Failure {
    /// The store is unavailable for now: keep the batch and try again later.
    Retry(String),
    /// The store will never take this batch.
    Reject {
        /// HTTP status.
        status: u16,
        /// The store's answer.
        answer: String,
    },
}

impl Store {
    async fn send(&self, body: String) -> Result<(), Failure> {
        let write = self.client.write_line_protocol_with_precision(
            &self.org,
            &self.bucket,
            body,
            TimestampPrecision::Milliseconds,
        );
        match tokio::time::timeout(self.timeout, write).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(classify(e)),
            Err(_) => Err(Failure::Retry(format!(
                "no answer within {} (influx.write_timeout)",
                aqyl_core::duration::label(self.timeout)
            ))),
        }
    }

    /// A directory name for this store: the same store always gets the same one.
    fn key(&self) -> String {
        let hash = aqyl_core::fnv::stable_hash(&[&self.url, &self.org, &self.bucket]);
        format!("{hash:016x}")
    }
}

/// Which failures are for good: statuses that say the data itself is unacceptable.
fn classify(e: influxdb2::RequestError) -> Failure {
    match e {
        influxdb2::RequestError::Http { status, text } if permanent(status.as_u16()) => {
            Failure::Reject {
                status: status.as_u16(),
                answer: text,
            }
        }
        other => Failure::Retry(other.to_string()),
    }
}

/// Bad request, payload too large, unprocessable: the same batch will never be taken.
/// Authentication (401, 403), an unknown bucket (404) and rate limits (429) are retried: an
/// operator fixes those, and the spilled data is written then.
fn permanent(status: u16) -> bool {
    matches!(status, 400 | 413 | 422)
}

/// Batches waiting on disk for one store.
struct Spill {
    dir: PathBuf,
    seq: AtomicU64,
    /// Bytes in the spill now.
    bytes: AtomicU64,
    /// Most it may hold (`influx.max_spill`).
    max: u64,
}

impl Spill {
    /// Stores `batch` as a new file, written then renamed so a crash never leaves half a
    /// batch to replay.
    fn put(&self, batch: &str) -> std::io::Result<PathBuf> {
        std::fs::create_dir_all(&self.dir)?;
        let seq = self.seq.fetch_add(1, Relaxed);
        let path = self.dir.join(format!("{:015}-{seq:06}.lp", wall_ms()));
        let tmp = path.with_extension("tmp");
        {
            // On disk before it counts as safe: a checkpoint may rely on it.
            use std::io::Write;
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(batch.as_bytes())?;
            f.sync_data()?;
        }
        std::fs::rename(&tmp, &path)?;
        self.bytes.fetch_add(batch.len() as u64, Relaxed);
        Ok(path)
    }

    /// Whether `more` bytes fit under the bound.
    fn has_room(&self, more: usize) -> bool {
        self.bytes.load(Relaxed) + more as u64 <= self.max
    }

    /// A file left the spill (written, rejected or set aside).
    fn removed(&self, bytes: u64) {
        let _ = self
            .bytes
            .fetch_update(Relaxed, Relaxed, |b| Some(b.saturating_sub(bytes)));
    }

    /// Files waiting, oldest first.
    fn files(&self) -> Vec<PathBuf> {
        lp_files(&self.dir)
    }
}

fn lp_files(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "lp"))
        .collect();
    files.sort();
    files
}

fn wall_ms() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0)
}

/// Shared by the sink loop and its background replay.
struct Shared {
    store: Store,
    spill: Spill,
    rejected_dir: PathBuf,
    /// True only while nothing waits in the spill: a batch then goes straight to the store.
    /// After a failed write, batches go to the spill until a replay has emptied it, so an
    /// older spilled batch can never overwrite a newer one written directly (a window
    /// corrected by a late record, say).
    healthy: AtomicBool,
    /// Held while spilling and while a replay decides the spill is empty.
    gate: std::sync::Mutex<()>,
    max_backoff: Duration,
}

/// Where a destination is, as `InfluxSink::new` takes it.
#[derive(Debug, Clone)]
pub struct InfluxTarget {
    /// e.g. `http://127.0.0.1:8086`.
    pub url: String,
    /// Organisation.
    pub org: String,
    /// Bucket.
    pub bucket: String,
    /// API token.
    pub token: aqyl_core::config::Secret,
    /// CA certificates to trust for `https://` instead of the built-in roots.
    pub ca_file: Option<aqyl_core::config::FileSetting>,
    /// Longest wait between replays of the spill.
    pub max_backoff: Duration,
    /// Longest a write may take.
    pub write_timeout: Duration,
    /// Spill root; each store gets a subdirectory.
    pub spill_dir: PathBuf,
    /// Where rejected batches go, with the store's answer.
    pub rejected_dir: PathBuf,
    /// Most the spill may hold, bytes; past it the sink waits for the replay.
    pub max_spill: u64,
    /// Spill directories of earlier versions (one flat directory for every store); their
    /// batches are taken into this store's spill, as those versions would have replayed them.
    pub adopt_from: Vec<PathBuf>,
}

/// A configured InfluxDB v2 destination.
pub struct InfluxSink {
    shared: Arc<Shared>,
    replay: Option<tokio::task::JoinHandle<()>>,
}

/// The InfluxDB client for `url`: with `ca_file`, only the CA certificates in it are
/// trusted for `https://` (a private CA); without, the public roots built into the client
/// (Mozilla's, through webpki-roots). Nothing is sent; `aqyl check` builds it too, so a bad
/// URL or CA file is reported before a start.
pub fn client(
    url: &str,
    org: &str,
    token: &aqyl_core::config::Secret,
    ca_file: Option<&aqyl_core::config::FileSetting>,
) -> Result<influxdb2::Client, crate::SinkError> {
    let mut roots = Vec::new();
    if let Some(ca) = ca_file {
        let bad = |reason: String| crate::SinkError::InfluxCa {
            setting: ca.describe(),
            reason,
        };
        let pem = ca.read().map_err(bad)?;
        roots = reqwest::Certificate::from_pem_bundle(&pem)
            .map_err(|e| bad(format!("is not a PEM certificate file ({e})")))?;
        if roots.is_empty() {
            return Err(bad(
                "holds no certificate (no -----BEGIN CERTIFICATE----- block); give the PEM certificate of the CA that signed the store's".into(),
            ));
        }
        // Built once here to parse them, so that a certificate that cannot be used is blamed
        // on the CA file, not on the URL.
        http_client(&roots).build().map_err(|e| {
            bad(format!(
                "holds a certificate that cannot be used ({e}); give the PEM certificate of the CA that signed the store's"
            ))
        })?;
    }
    // influxdb2 panics on a URL it cannot parse: refuse it here.
    if let Err(e) = reqwest::Url::parse(url) {
        return Err(crate::SinkError::InfluxUrl {
            url: url.to_string(),
            reason: e.to_string(),
        });
    }
    let http = http_client(&roots);
    influxdb2::ClientBuilder::with_builder(http, url, org, token.expose())
        .build()
        .map_err(|e| crate::SinkError::InfluxUrl {
            url: url.to_string(),
            reason: e.to_string(),
        })
}

/// The HTTP client: rustls, trusting only `roots` when there are any.
fn http_client(roots: &[reqwest::Certificate]) -> reqwest::ClientBuilder {
    let mut http = reqwest::ClientBuilder::new().use_rustls_tls();
    if !roots.is_empty() {
        http = http.tls_built_in_root_certs(false);
        for cert in roots {
            http = http.add_root_certificate(cert.clone());
        }
    }
    http
}

impl InfluxSink {
    /// Builds a client for the target; nothing is sent yet.
    pub fn new(target: InfluxTarget) -> Result<Self, crate::SinkError> {
        let client = client(
            &target.url,
            &target.org,
            &target.token,
            target.ca_file.as_ref(),
        )?;
        let store = Store {
            client,
            url: target.url,
            org: target.org,
            bucket: target.bucket,
            timeout: target.write_timeout,
        };
        let mut spill = Spill {
            dir: target.spill_dir.join(store.key()),
            seq: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            max: target.max_spill,
        };
        let mut adopt = target.adopt_from.clone();
        adopt.push(target.spill_dir.clone());
        adopt_spill(&adopt, &spill.dir);
        let held: u64 = spill
            .files()
            .iter()
            .filter_map(|f| std::fs::metadata(f).ok())
            .map(|m| m.len())
            .sum();
        spill.bytes = AtomicU64::new(held);
        warn_about_other_stores(&target.spill_dir, &spill.dir);
        let empty = spill.files().is_empty();
        Ok(Self {
            shared: Arc::new(Shared {
                store,
                spill,
                rejected_dir: target.rejected_dir,
                healthy: AtomicBool::new(empty),
                gate: std::sync::Mutex::new(()),
                max_backoff: target.max_backoff,
            }),
            replay: None,
        })
    }

    /// This store's spill directory.
    pub fn spill_dir(&self) -> &Path {
        &self.shared.spill.dir
    }

    /// Spill files waiting, oldest first.
    pub fn spilled_files(&self) -> Vec<PathBuf> {
        self.shared.spill.files()
    }

    /// Starts replaying the spill in the background (the spill of an earlier run too).
    pub fn start_replay(&mut self, metrics: Arc<Metrics>) {
        let shared = self.shared.clone();
        self.replay = Some(tokio::spawn(async move {
            let mut backoff = aqyl_core::backoff::Backoff::new(shared.max_backoff);
            loop {
                match replay_once(&shared, &metrics).await {
                    Replayed::Nothing => tokio::time::sleep(Duration::from_millis(250)).await,
                    Replayed::All => backoff.reset(),
                    Replayed::Stopped => tokio::time::sleep(backoff.next_wait()).await,
                }
            }
        }));
    }

    /// Writes one batch; if the store is unavailable, spills it for the replay.
    pub async fn write(
        &mut self,
        batch: &str,
        points: usize,
        metrics: &Metrics,
    ) -> Result<(), crate::SinkError> {
        let s = &self.shared;
        if s.healthy.load(Relaxed) {
            match s.store.send(batch.to_string()).await {
                Ok(()) => {
                    metrics
                        .influx_points_written
                        .fetch_add(points as u64, Relaxed);
                    return Ok(());
                }
                Err(Failure::Reject { status, answer }) => {
                    reject(s, batch, points, status, &answer, metrics);
                    return Ok(());
                }
                Err(Failure::Retry(why)) => {
                    metrics.influx_write_failures.fetch_add(1, Relaxed);
                    s.healthy.store(false, Relaxed);
                    tracing::warn!(error = %why, points, bucket = %s.store.bucket, spill = %s.spill.dir.display(), "InfluxDB write failed; batches are kept on disk and written when it is back.");
                }
            }
        }
        spill(s, batch, points, metrics).await
    }

    /// Stops the background replay and tries the spill once more; returns how many files
    /// still wait (written at the next start).
    pub async fn finish(&mut self, metrics: &Metrics) -> usize {
        if let Some(task) = self.replay.take() {
            task.abort();
            let _ = task.await;
        }
        // Bounded, so a slow store cannot hold the shutdown past a supervisor's patience.
        let deadline = (self.shared.store.timeout * 3).max(Duration::from_secs(10));
        let _ = tokio::time::timeout(deadline, replay_once(&self.shared, metrics)).await;
        self.shared.spill.files().len()
    }
}

/// Spills a batch, retrying a failed file write a few times (a full disk may clear); after
/// that the sink cannot go on without losing data, and says so.
async fn spill(
    s: &Shared,
    batch: &str,
    points: usize,
    metrics: &Metrics,
) -> Result<(), crate::SinkError> {
    wait_for_room(s, batch.len(), metrics).await;
    let mut attempt = 0;
    loop {
        let put = {
            let _gate = s.gate.lock();
            s.healthy.store(false, Relaxed);
            s.spill.put(batch)
        };
        match put {
            Ok(_) => {
                metrics
                    .influx_points_spilled
                    .fetch_add(points as u64, Relaxed);
                metrics.clear_problem("sink");
                metrics.clear_problem("spill");
                return Ok(());
            }
            Err(source) => {
                attempt += 1;
                let problem = format!(
                    "cannot spill a batch to {}: {source}",
                    s.spill.dir.display()
                );
                metrics.set_problem("sink", problem.clone());
                if attempt >= SPILL_ATTEMPTS {
                    return Err(crate::SinkError::File {
                        path: s.spill.dir.display().to_string(),
                        source,
                    });
                }
                tracing::error!(
                    attempt,
                    "{problem}; retrying (check [state] dir / AQYL_STATE_DIR)"
                );
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
        }
    }
}

/// Waits while the spill is full (`influx.max_spill`): the sink, and through the bounded
/// channels the workers and the broker, hold back until the replay makes room.
async fn wait_for_room(s: &Shared, more: usize, metrics: &Metrics) {
    if s.spill.has_room(more) {
        return;
    }
    let problem = format!(
        "the spill for {} is full ({} of influx.max_spill {}); waiting for the store to take it back",
        s.store.url,
        aqyl_core::bytesize::label(s.spill.bytes.load(Relaxed)),
        aqyl_core::bytesize::label(s.spill.max)
    );
    tracing::warn!("{problem}; ingest is held back meanwhile.");
    metrics.set_problem("spill", problem);
    while !s.spill.has_room(more) && s.spill.bytes.load(Relaxed) > 0 {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    metrics.clear_problem("spill");
    tracing::info!("The spill has room again.");
}

/// Files a batch the store will never take, with its answer, and counts it.
fn reject(s: &Shared, batch: &str, points: usize, status: u16, answer: &str, metrics: &Metrics) {
    metrics
        .influx_points_rejected
        .fetch_add(points as u64, Relaxed);
    let name = format!(
        "{:015}-{:06}.lp",
        wall_ms(),
        s.spill.seq.fetch_add(1, Relaxed)
    );
    let why = format!("HTTP {status} from {}: {answer}", s.store.url);
    match keep_rejected(s, name.as_ref(), |lp| std::fs::write(lp, batch), &why) {
        Ok(lp) => {
            tracing::error!(status, answer, points, file = %lp.display(), "InfluxDB rejected a batch for good; it is kept with the answer, later batches go on.")
        }
        Err(e) => {
            tracing::error!(status, answer, points, error = %e, dir = %s.rejected_dir.display(), "InfluxDB rejected a batch for good and it cannot be kept on disk; its points are lost (counted in aqyl_influx_points_rejected_total).")
        }
    }
}

/// What one pass over the spill did.
enum Replayed {
    /// There was nothing to replay.
    Nothing,
    /// Everything was written (or rejected for good).
    All,
    /// The store is still unavailable; files wait.
    Stopped,
}

/// Replays the spill oldest first until the store fails.
async fn replay_once(s: &Shared, metrics: &Metrics) -> Replayed {
    let files = s.spill.files();
    if files.is_empty() {
        return Replayed::Nothing;
    }
    for (i, path) in files.iter().enumerate() {
        let body = match std::fs::read_to_string(path) {
            Ok(body) => body,
            Err(e) => {
                set_aside(s, path, &format!("the spilled batch cannot be read: {e}"));
                continue;
            }
        };
        let points = body.lines().count();
        match s.store.send(body.clone()).await {
            Ok(()) => {
                metrics
                    .influx_points_written
                    .fetch_add(points as u64, Relaxed);
            }
            Err(Failure::Reject { status, answer }) => {
                reject(s, &body, points, status, &answer, metrics);
            }
            Err(Failure::Retry(why)) => {
                metrics.influx_write_failures.fetch_add(1, Relaxed);
                s.healthy.store(false, Relaxed);
                tracing::warn!(error = %why, waiting = files.len() - i, "InfluxDB is still unavailable.");
                return Replayed::Stopped;
            }
        }
        match std::fs::remove_file(path) {
            Ok(()) => s.spill.removed(body.len() as u64),
            Err(e) => {
                tracing::warn!(error = %e, file = %path.display(), "Cannot remove a replayed spill file; it will be written again (harmless).")
            }
        }
    }
    let _gate = s.gate.lock();
    if s.spill.files().is_empty() {
        s.healthy.store(true, Relaxed);
        tracing::info!(
            files = files.len(),
            "Replayed the batches spilled during the outage; writing directly again."
        );
    }
    Replayed::All
}

/// Puts a batch into the rejected directory as `name` (`put` writes or moves it there) with
/// `why` beside it in `<name>.answer.txt`; returns where the batch went.
fn keep_rejected(
    s: &Shared,
    name: &std::ffi::OsStr,
    put: impl FnOnce(&Path) -> std::io::Result<()>,
    why: &str,
) -> std::io::Result<PathBuf> {
    std::fs::create_dir_all(&s.rejected_dir)?;
    let to = s.rejected_dir.join(name);
    put(&to)?;
    std::fs::write(to.with_extension("answer.txt"), format!("{why}\n"))?;
    Ok(to)
}

/// Moves a spill file that cannot be replayed to the rejected directory, with why.
fn set_aside(s: &Shared, path: &Path, why: &str) {
    let name = path
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    let size = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    match keep_rejected(s, &name, |to| std::fs::rename(path, to), why) {
        Ok(to) => {
            s.spill.removed(size);
            tracing::error!(file = %to.display(), "{why}; set aside, the replay goes on.")
        }
        Err(e) => {
            tracing::error!(file = %path.display(), error = %e, "{why}, and it cannot be set aside.")
        }
    }
}

/// Takes the spill files found directly in `dirs` (earlier versions' layout) into `ours`.
fn adopt_spill(dirs: &[PathBuf], ours: &Path) {
    for dir in dirs {
        let files = lp_files(dir);
        if files.is_empty() || dir == ours {
            continue;
        }
        let moved = std::fs::create_dir_all(ours).map(|_| {
            files
                .iter()
                .filter(|f| {
                    f.file_name()
                        .is_some_and(|n| std::fs::rename(f, ours.join(n)).is_ok())
                })
                .count()
        });
        match moved {
            Ok(n) => {
                tracing::info!(files = n, from = %dir.display(), to = %ours.display(), "Took over batches spilled by an earlier version; they are written to the store configured now.")
            }
            Err(e) => {
                tracing::error!(error = %e, from = %dir.display(), "Cannot take over batches spilled by an earlier version; they wait there.")
            }
        }
    }
}

/// Batches spilled for another store (another URL, org or bucket) are never replayed into
/// this one; say that they wait.
fn warn_about_other_stores(root: &Path, ours: &Path) {
    let Ok(entries) = std::fs::read_dir(root) else {
        return;
    };
    for dir in entries.filter_map(|e| e.ok().map(|e| e.path())) {
        if dir != ours && dir.is_dir() && !lp_files(&dir).is_empty() {
            tracing::warn!(dir = %dir.display(), "Batches spilled for another InfluxDB store (another url, org or bucket) wait here; they are not written to the store configured now.");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_full_spill_holds_the_sink_back_until_the_replay_makes_room() {
        let dir = tempfile::tempdir().unwrap();
        let mut sink = InfluxSink::new(InfluxTarget {
            // Nothing listens there: every write fails at once and is spilled.
            url: "http://127.0.0.1:9".into(),
            org: "o".into(),
            bucket: "b".into(),
            token: aqyl_core::config::Secret::new("t"),
            ca_file: None,
            max_backoff: Duration::from_millis(100),
            write_timeout: Duration::from_secs(1),
            spill_dir: dir.path().join("spill"),
            rejected_dir: dir.path().join("rejected"),
            max_spill: 100,
            adopt_from: vec![],
        })
        .unwrap();
        let metrics = Metrics::default();
        let batch = format!("m v={} 1\n", "9".repeat(70));
        sink.write(&batch, 1, &metrics).await.unwrap();
        assert_eq!(sink.spilled_files().len(), 1);
        // The second batch does not fit: the write waits, and /health says why.
        let waiting =
            tokio::time::timeout(Duration::from_millis(500), sink.write(&batch, 1, &metrics)).await;
        assert!(waiting.is_err(), "a full spill must hold the sink back");
        assert!(metrics.problems().iter().any(|p| p.starts_with("spill: ")));
        // The replay took the first batch back: the next write goes through.
        sink.shared.spill.removed(batch.len() as u64);
        tokio::time::timeout(Duration::from_secs(5), sink.write(&batch, 1, &metrics))
            .await
            .expect("room again")
            .unwrap();
        assert!(metrics.problems().is_empty());
    }

    #[test]
    fn only_data_the_store_can_never_take_is_rejected_for_good() {
        for status in [400, 413, 422] {
            assert!(permanent(status), "{status}");
        }
        for status in [401, 403, 404, 408, 429, 500, 502, 503] {
            assert!(!permanent(status), "{status}");
        }
    }

    #[test]
    fn a_spill_left_by_an_earlier_version_is_taken_over() {
        let dir = tempfile::tempdir().unwrap();
        let old = dir.path().join("old");
        let ours = dir.path().join("spill/abc");
        std::fs::create_dir_all(&old).unwrap();
        std::fs::write(old.join("000000000000001-000000.lp"), "m v=1 1\n").unwrap();
        std::fs::write(old.join("notes.txt"), "not a batch").unwrap();
        adopt_spill(&[old.clone(), ours.clone()], &ours);
        assert_eq!(lp_files(&ours).len(), 1);
        assert!(lp_files(&old).is_empty());
        assert!(old.join("notes.txt").exists(), "only batches are taken");
    }

    #[test]
    fn a_ca_file_that_cannot_be_used_is_named_with_the_reason() {
        let dir = tempfile::tempdir().unwrap();
        let token = aqyl_core::config::Secret::new("t");
        let setting = |name: &str| {
            aqyl_core::config::FileSetting::given("AQYL_INFLUX_CA_FILE", dir.path().join(name))
        };
        let err = |name: &str| {
            client("https://store:8086", "o", &token, Some(&setting(name)))
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default()
        };
        let missing = err("missing.pem");
        assert!(
            missing.starts_with("AQYL_INFLUX_CA_FILE (") && missing.contains("cannot read it"),
            "{missing}"
        );
        std::fs::write(dir.path().join("empty.pem"), "not a certificate\n").unwrap();
        let empty = err("empty.pem");
        assert!(empty.contains("holds no certificate"), "{empty}");
        assert!(client("https://store:8086", "o", &token, None).is_ok());
    }

    #[test]
    fn each_store_spills_into_its_own_directory() {
        let store = |url: &str, bucket: &str| Store {
            client: influxdb2::Client::new(url, "org", "t"),
            url: url.into(),
            org: "org".into(),
            bucket: bucket.into(),
            timeout: Duration::from_secs(1),
        };
        let a = store("http://a:8086", "city");
        assert_eq!(a.key(), store("http://a:8086", "city").key());
        assert_ne!(a.key(), store("http://b:8086", "city").key());
        assert_ne!(a.key(), store("http://a:8086", "other").key());
    }
}
