//! Cluster mode: the processes of one dataflow find one another over TCP, then timely
//! exchanges records between them on those connections.
//!
//! timely can open the connections itself, but it trusts the first eight bytes any client
//! sends as a process index and panics on anything else (a port scanner or a health check on
//! the cluster port would stop the process). Aqyl opens them with a handshake of its own and
//! hands timely the connected sockets:
//!
//! - process `i` connects to every process `j < i` and accepts one connection from every
//!   process `j > i` (timely's layout), retrying until all are there and saying every few
//!   seconds whom it still waits for;
//! - the connecting side sends `AQYLCLU1`, a fingerprint of the cluster (the `hosts` list
//!   and the workers per process, which every process must agree on) and its own index; the
//!   accepting side answers one byte: accepted, or why not. A stranger, a process of another
//!   cluster or a second process with the same index is refused and logged; nothing panics;
//! - every process `i > 0` also opens a *control connection* to process 0, introduced with
//!   `AQYLCTL1`: the checkpoints of a durable cluster are agreed on it
//!   ([`crate::coordinate`]).

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};
use timely::communication::allocator::zero_copy::initialize::initialize_networking_from_sockets;
use timely::communication::allocator::ProcessBuilder;
use timely::communication::{AllocatorBuilder, Hooks};

/// This process's place in a cluster.
#[derive(Debug, Clone)]
pub struct ClusterSpec {
    /// One `host:port` per process.
    pub hosts: Vec<String>,
    /// This process's index in `hosts`.
    pub process: usize,
    /// Where this process accepts its peers.
    pub listen: String,
    /// Set to give up waiting for the peers (the service is stopping).
    pub stop: Arc<AtomicBool>,
}

impl ClusterSpec {
    /// The global index of this process's first worker, with `workers` per process.
    pub fn first_worker(&self, workers: usize) -> usize {
        self.process * workers
    }
}

const MAGIC: &[u8; 8] = b"AQYLCLU1";
const CONTROL_MAGIC: &[u8; 8] = b"AQYLCTL1";
const ACCEPTED: u8 = 1;
const WRONG_CLUSTER: u8 = 2;
const BAD_INDEX: u8 = 3;
/// How long a peer may take to send its handshake.
const HELLO_TIMEOUT: Duration = Duration::from_secs(5);
/// How often the wait for peers is reported.
const REPORT_EVERY: Duration = Duration::from_secs(5);
/// How long to wait before trying a peer again.
const RETRY: Duration = Duration::from_millis(250);

/// A process connected to its cluster, before timely uses the connections.
pub struct Connected {
    /// The connections timely exchanges records on, by process (none to itself).
    pub data: Vec<Option<TcpStream>>,
    /// The control connections (see [`crate::coordinate`]): at process 0 one per other
    /// process, elsewhere `[0]` only.
    pub control: Vec<Option<TcpStream>>,
}

/// The timely allocators of this process's workers, and what must live as long as they do
/// (the network threads).
pub type Network = (Vec<AllocatorBuilder>, Box<dyn std::any::Any + Send>);

/// Which connection a peer opens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// One timely exchanges records on.
    Data,
    /// The control connection to process 0.
    Control,
}

/// Connects to every other process of the cluster (waiting for them as long as it takes).
/// The processes may talk on the control connections before [`network`] hands the others
/// to timely (an error then ends every process cleanly: timely's network threads would panic
/// when a peer goes).
pub fn connect(spec: &ClusterSpec, workers: usize) -> Result<Connected, String> {
    let fingerprint = fingerprint(&spec.hosts, workers);
    let listener = TcpListener::bind(&spec.listen).map_err(|e| {
        format!(
            "cannot listen for cluster peers on {}: {e}; check cluster.listen and that the port is free",
            spec.listen
        )
    })?;
    tracing::info!(process = spec.process, processes = spec.hosts.len(), listen = %spec.listen, "Connecting to the other processes of the cluster.");
    let mut sockets: Vec<Option<TcpStream>> = (0..spec.hosts.len()).map(|_| None).collect();
    let mut control: Vec<Option<TcpStream>> = (0..spec.hosts.len()).map(|_| None).collect();
    let began = Instant::now();
    let mut reported = Instant::now();
    listener
        .set_nonblocking(true)
        .map_err(|e| format!("cluster listener: {e}"))?;
    loop {
        for (j, host) in spec.hosts.iter().enumerate().take(spec.process) {
            if sockets[j].is_none() {
                sockets[j] = dial(host, (j, Kind::Data), spec.process, fingerprint);
            }
            if j == 0 && control[0].is_none() && sockets[0].is_some() {
                control[0] = dial(host, (0, Kind::Control), spec.process, fingerprint);
            }
        }
        while let Ok((stream, peer)) = listener.accept() {
            match greet(stream, spec, fingerprint, (&sockets, &control)) {
                Ok((Kind::Data, j, stream)) => {
                    tracing::info!(peer = j, from = %peer, "Cluster peer connected.");
                    sockets[j] = Some(stream);
                }
                Ok((Kind::Control, j, stream)) => control[j] = Some(stream),
                Err(why) => {
                    tracing::warn!(from = %peer, "Refused a connection on the cluster port: {why}")
                }
            }
        }
        let missing: Vec<usize> = (0..sockets.len())
            .filter(|j| *j != spec.process)
            .filter(|j| sockets[*j].is_none() || (lacks_control(spec.process, *j, &control)))
            .collect();
        if missing.is_empty() {
            break;
        }
        if spec.stop.load(Relaxed) {
            return Err(format!(
                "stopped while waiting for cluster processes {missing:?}"
            ));
        }
        if reported.elapsed() >= REPORT_EVERY {
            reported = Instant::now();
            tracing::warn!(waiting_for = ?missing, waited_s = began.elapsed().as_secs(), "Waiting for cluster processes to start (every process must be started with the same cluster.hosts).");
        }
        std::thread::sleep(RETRY);
    }
    tracing::info!(
        processes = spec.hosts.len(),
        "Every process of the cluster is connected."
    );
    Ok(Connected {
        data: sockets,
        control,
    })
}

/// Builds the allocators of this process's `workers` workers on the connections `data` of
/// [`Connected`].
pub fn network(
    data: Vec<Option<TcpStream>>,
    spec: &ClusterSpec,
    workers: usize,
) -> Result<Network, String> {
    let hooks = Hooks::default();
    let local =
        ProcessBuilder::new_typed_vector(workers, hooks.refill.clone(), hooks.spill.clone());
    let (builders, guard) =
        initialize_networking_from_sockets(local, data, spec.process, workers, hooks)
            .map_err(|e| format!("cannot start the cluster's network threads: {e}"))?;
    let allocators = builders.into_iter().map(AllocatorBuilder::Tcp).collect();
    Ok((allocators, Box::new(guard)))
}

/// Whether the control connection between `me` and `j` is still missing.
fn lacks_control(me: usize, j: usize, control: &[Option<TcpStream>]) -> bool {
    match (me, j) {
        (0, j) => control[j].is_none(),
        (_, 0) => control[0].is_none(),
        _ => false,
    }
}

/// Connects to process `j` at `host` and introduces this process; `None` to try again later.
fn dial(host: &str, (j, kind): (usize, Kind), me: usize, fingerprint: u64) -> Option<TcpStream> {
    let mut stream = TcpStream::connect(host).ok()?;
    let introduce = |s: &mut TcpStream| -> std::io::Result<u8> {
        s.set_nodelay(true)?;
        s.set_read_timeout(Some(HELLO_TIMEOUT))?;
        s.write_all(&hello(kind, fingerprint, me))?;
        let mut answer = [0u8; 1];
        s.read_exact(&mut answer)?;
        s.set_read_timeout(None)?;
        Ok(answer[0])
    };
    match introduce(&mut stream) {
        Ok(ACCEPTED) => {
            if kind == Kind::Data {
                tracing::info!(peer = j, at = host, "Connected to cluster peer.");
            }
            Some(stream)
        }
        Ok(WRONG_CLUSTER) => {
            tracing::warn!(peer = j, at = host, "The process at this address belongs to another cluster: its cluster.hosts or pipeline.workers differ from this one's. Start every process with the same settings.");
            None
        }
        Ok(_) => {
            tracing::warn!(peer = j, at = host, me, "The process at this address refused this process's index (another process with it is connected, or the index is out of range).");
            None
        }
        Err(_) => None,
    }
}

/// Reads a peer's introduction on an accepted connection and answers it; the peer's index
/// and the connection, or why it was refused.
fn greet(
    mut stream: TcpStream,
    spec: &ClusterSpec,
    fingerprint: u64,
    open: (&[Option<TcpStream>], &[Option<TcpStream>]),
) -> Result<(Kind, usize, TcpStream), String> {
    stream
        .set_nonblocking(false)
        .and_then(|()| stream.set_nodelay(true))
        .and_then(|()| stream.set_read_timeout(Some(HELLO_TIMEOUT)))
        .map_err(|e| e.to_string())?;
    let mut buf = [0u8; 24];
    stream
        .read_exact(&mut buf)
        .map_err(|e| format!("no handshake ({e})"))?;
    let verdict = judge(&buf, spec, fingerprint, open);
    let code = match &verdict {
        Ok(_) => ACCEPTED,
        Err(Refusal::WrongCluster) => WRONG_CLUSTER,
        Err(_) => BAD_INDEX,
    };
    let _ = stream.write_all(&[code]);
    let (kind, j) = verdict.map_err(|r| r.to_string())?;
    stream.set_read_timeout(None).map_err(|e| e.to_string())?;
    Ok((kind, j, stream))
}

/// Why a connection was refused.
#[derive(Debug, PartialEq, Eq)]
enum Refusal {
    NotAqyl,
    WrongCluster,
    Index(u64),
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::NotAqyl => f.write_str("not an Aqyl cluster handshake"),
            Refusal::WrongCluster => f.write_str("an Aqyl process of another cluster (different cluster.hosts or pipeline.workers)"),
            Refusal::Index(i) => write!(f, "process index {i} is not one this process waits for (out of range, lower than its own, or already connected)"),
        }
    }
}

/// The handshake a process sends.
fn hello(kind: Kind, fingerprint: u64, me: usize) -> [u8; 24] {
    let mut buf = [0u8; 24];
    buf[..8].copy_from_slice(match kind {
        Kind::Data => MAGIC,
        Kind::Control => CONTROL_MAGIC,
    });
    buf[8..16].copy_from_slice(&fingerprint.to_be_bytes());
    buf[16..].copy_from_slice(&(me as u64).to_be_bytes());
    buf
}

/// Whether a handshake is one this process accepts (`open`: the data and the control
/// connections so far), which connection it opens and the peer's index.
fn judge(
    buf: &[u8; 24],
    spec: &ClusterSpec,
    fingerprint: u64,
    (sockets, control): (&[Option<TcpStream>], &[Option<TcpStream>]),
) -> Result<(Kind, usize), Refusal> {
    let kind = match &buf[..8] {
        m if m == MAGIC => Kind::Data,
        m if m == CONTROL_MAGIC => Kind::Control,
        _ => return Err(Refusal::NotAqyl),
    };
    let word = |r: std::ops::Range<usize>| {
        let mut w = [0u8; 8];
        w.copy_from_slice(&buf[r]);
        u64::from_be_bytes(w)
    };
    if word(8..16) != fingerprint {
        return Err(Refusal::WrongCluster);
    }
    let j = word(16..24);
    let index = usize::try_from(j).map_err(|_| Refusal::Index(j))?;
    let expected = index > spec.process
        && index < sockets.len()
        && match kind {
            Kind::Data => sockets[index].is_none(),
            Kind::Control => spec.process == 0 && control[index].is_none(),
        };
    expected.then_some((kind, index)).ok_or(Refusal::Index(j))
}

/// What every process of one cluster agrees on: the hosts in order and the workers each runs.
fn fingerprint(hosts: &[String], workers: usize) -> u64 {
    let mut parts: Vec<&str> = hosts.iter().map(String::as_str).collect();
    let workers = workers.to_string();
    parts.push(&workers);
    crate::stable_hash(&parts)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(process: usize) -> ClusterSpec {
        ClusterSpec {
            hosts: vec!["a:1".into(), "b:1".into(), "c:1".into()],
            process,
            listen: "127.0.0.1:0".into(),
            stop: Arc::default(),
        }
    }

    #[test]
    fn only_a_peer_of_this_cluster_with_a_higher_free_index_is_accepted() {
        let f = fingerprint(&spec(0).hosts, 2);
        let none: Vec<Option<TcpStream>> = (0..3).map(|_| None).collect();
        let open = (none.as_slice(), none.as_slice());
        let data = |f, i| hello(Kind::Data, f, i);
        assert_eq!(judge(&data(f, 2), &spec(1), f, open), Ok((Kind::Data, 2)));
        assert_eq!(
            judge(&data(f, 0), &spec(1), f, open),
            Err(Refusal::Index(0))
        );
        assert_eq!(
            judge(&data(f, 1), &spec(1), f, open),
            Err(Refusal::Index(1))
        );
        assert_eq!(
            judge(&data(f, 3), &spec(1), f, open),
            Err(Refusal::Index(3))
        );
        let other = fingerprint(&spec(0).hosts, 3);
        assert_eq!(
            judge(&data(other, 2), &spec(1), f, open),
            Err(Refusal::WrongCluster)
        );
        let mut junk = data(f, 2);
        junk[0] = b'G';
        assert_eq!(judge(&junk, &spec(1), f, open), Err(Refusal::NotAqyl));
        // Control connections go to process 0 only.
        let control = hello(Kind::Control, f, 2);
        assert_eq!(judge(&control, &spec(0), f, open), Ok((Kind::Control, 2)));
        assert_eq!(judge(&control, &spec(1), f, open), Err(Refusal::Index(2)));
    }

    #[test]
    fn processes_connect_and_strangers_are_refused_without_harm() {
        // Three processes on loopback.
        let ports: Vec<u16> = (0..3)
            .map(|_| {
                TcpListener::bind("127.0.0.1:0")
                    .unwrap()
                    .local_addr()
                    .unwrap()
                    .port()
            })
            .collect();
        let hosts: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
        let start = |process: usize| {
            let spec = ClusterSpec {
                hosts: hosts.clone(),
                process,
                listen: hosts[process].clone(),
                stop: Arc::default(),
            };
            std::thread::spawn(move || {
                connect(&spec, 1).and_then(|connected| {
                    let controls = connected.control.iter().flatten().count();
                    assert_eq!(controls, if process == 0 { 2 } else { 1 });
                    let connected = network(connected.data, &spec, 1)?;
                    let workers = connected.0.len();
                    // The network threads end only with the whole cluster's connections.
                    std::mem::forget(connected);
                    Ok(workers)
                })
            })
        };
        // Process 0 waits alone; a stranger talks HTTP to its cluster port and is refused.
        let first = start(0);
        let answer = loop {
            if let Ok(mut s) = TcpStream::connect(&hosts[0]) {
                s.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
                    .unwrap();
                let mut answer = Vec::new();
                let _ = s.read_to_end(&mut answer);
                break answer;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        assert_eq!(answer, vec![BAD_INDEX]);
        let others = [start(1), start(2)];
        assert_eq!(first.join().unwrap(), Ok(1));
        for h in others {
            assert_eq!(h.join().unwrap(), Ok(1));
        }
    }
}
