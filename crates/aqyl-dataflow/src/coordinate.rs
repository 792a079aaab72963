//! Checkpoints across a cluster: one checkpoint id for every process, a quiet moment of the
//! whole cluster, a checkpoint complete only once every process holds its part, and one
//! checkpoint every process restores.
//!
//! The processes talk over a *control connection* of their own: besides the connections
//! timely exchanges records on, every process `p > 0` opens one to process 0 in the cluster
//! handshake ([`crate::cluster`]). Over it, in fixed-size frames:
//!
//! 1. **Recovery** (before any worker starts): each process sends process 0 the ids of the
//!    checkpoints it holds (committed and pending, see `aqyl-state`); process 0 sends every
//!    process the whole list, and each decides with [`agree`] which one to restore: the
//!    newest every process holds. A part is pending until process 0 has seen every part, and
//!    a process keeps its committed checkpoint (and the log it needs) until the next is
//!    complete, so such an id always exists once any process has committed one. With none
//!    committed anywhere, all start afresh (every log is whole); a process with no
//!    checkpoint among others that have one refuses to start, saying which (its state
//!    directory is lost, and starting afresh would lose the others').
//! 2. **Trigger**: process 0's checkpointer asks for checkpoint `k` ([`Coordinator::request`]);
//!    each process's reader sets it in its [`Control`], so every worker of the cluster pauses
//!    its input for the same `k`.
//! 3. **Quiet**: the workers step in rounds as in one process (see [`crate::checkpoint`]);
//!    after each step every process's workers meet at their rendezvous, and its leader, while
//!    they wait there, sends process 0 the records in flight it counts (pushed into counted
//!    channels minus pulled out of them, in this process: records crossing processes count
//!    +1 at the sender and -1 at the receiver). Process 0 sums one report of each process
//!    ([`Tally`]) and answers every process: quiet when the sum is 0. No worker of the cluster
//!    steps between its report and the answer, so every count is frozen when process 0 sums
//!    them: a synchronous barrier, exact without the four-counter termination detection an
//!    asynchronous one would need. (timely's own progress tracking cannot tell it: operators
//!    hold capabilities for their open windows, so no frontier passes the pause.) Quiet, each
//!    process encodes its workers' states before any of them steps again; records another
//!    process sends after its own encoding wait, unpulled, for the next step.
//! 4. **Parts**: each process's checkpointer waits for its sinks to confirm every output
//!    emitted before the snapshot, writes its part as pending and tells process 0
//!    ([`Coordinator::part`]). With every part written, process 0 answers "complete" and each
//!    process promotes its part to committed and truncates its log; otherwise "abandoned", and
//!    the pending parts are replaced by the next checkpoint's.
//! 5. **Stop**: a stop of any process stops the cluster with a last checkpoint of all
//!    ([`crate::stop`]): `Stop` (p → 0), `Stopping` (0 → every p), `Drained` (p → 0), then a
//!    request with `stop`.

use crate::checkpoint::{Control, Snapshot};
use crate::reload::Reloads;
use crate::stop::ClusterStop;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering::SeqCst;
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Mutex};

/// The checkpoints one process holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Held {
    /// Its committed checkpoint's id.
    pub committed: Option<u64>,
    /// Its pending part's id.
    pub pending: Option<u64>,
}

impl Held {
    fn holds(&self, id: u64) -> bool {
        self.committed == Some(id) || self.pending == Some(id)
    }
}

/// The checkpoints a process of a cluster holds, with their snapshots: the one the cluster
/// agrees on is restored.
#[derive(Debug, Clone, Default)]
pub struct Holdings {
    /// Its committed checkpoint.
    pub committed: Option<Snapshot>,
    /// Its pending part of a checkpoint that may be complete.
    pub pending: Option<Snapshot>,
}

impl Holdings {
    /// Their ids.
    pub fn ids(&self) -> Held {
        Held {
            committed: self.committed.as_ref().map(|s| s.id),
            pending: self.pending.as_ref().map(|s| s.id),
        }
    }

    /// The snapshot of checkpoint `id` (`None`: start afresh).
    pub fn take(self, id: Option<u64>) -> Option<Snapshot> {
        let id = id?;
        [self.pending, self.committed]
            .into_iter()
            .flatten()
            .find(|s| s.id == id)
    }
}

/// What the processes agreed on at start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Agreed {
    /// The checkpoint every process restores (`None`: all start afresh).
    pub restore: Option<u64>,
    /// The largest id any process holds: new checkpoints are numbered after it, so an id
    /// is never reused for another checkpoint.
    pub newest: u64,
}

/// The checkpoint the cluster restores, given what each process holds (by process index).
pub fn agree(held: &[Held]) -> Result<Agreed, String> {
    let newest = held
        .iter()
        .flat_map(|h| [h.committed, h.pending])
        .flatten()
        .max()
        .unwrap_or(0);
    let common = held
        .iter()
        .flat_map(|h| [h.committed, h.pending])
        .flatten()
        .filter(|id| held.iter().all(|h| h.holds(*id)))
        .max();
    if common.is_some() || held.iter().all(|h| h.committed.is_none()) {
        return Ok(Agreed {
            restore: common,
            newest,
        });
    }
    let listed: Vec<String> = held
        .iter()
        .enumerate()
        .map(|(p, h)| match (h.committed, h.pending) {
            (None, None) => format!("process {p}: none"),
            (c, q) => format!("process {p}: committed {c:?}, pending {q:?}"),
        })
        .collect();
    Err(format!(
        "the processes of the cluster hold no checkpoint in common ({}); a process whose [state] dir was lost or replaced cannot rejoin the others' state: restore its state directory, or move every process's state.redb aside to start the whole cluster afresh",
        listed.join("; ")
    ))
}

/// One round of the quiet check at process 0: each process's records in flight, and the
/// digest of the descriptors it loaded last ([`crate::reload`]).
#[derive(Debug)]
pub struct Tally {
    id: u64,
    reports: Vec<Option<(i64, u64)>>,
}

impl Tally {
    /// A round of checkpoint `id` among `processes` processes.
    pub fn new(id: u64, processes: usize) -> Self {
        Self {
            id,
            reports: vec![None; processes],
        }
    }

    /// Adds `process`'s report for checkpoint `id` (`loaded`: its descriptors' digest); once
    /// every process has reported, whether the cluster is quiet. A report of another
    /// checkpoint, of an unknown process or a second one in the round is a protocol error.
    pub fn add(
        &mut self,
        process: usize,
        id: u64,
        (in_flight, loaded): (i64, u64),
    ) -> Result<Option<bool>, String> {
        if id != self.id {
            return Err(format!(
                "process {process} reported on checkpoint {id} during checkpoint {}",
                self.id
            ));
        }
        match self.reports.get_mut(process) {
            Some(slot @ None) => *slot = Some((in_flight, loaded)),
            _ => return Err(format!("an unexpected report from process {process}")),
        }
        let all: Option<Vec<(i64, u64)>> = self.reports.iter().copied().collect();
        Ok(all.map(|counts| counts.iter().map(|c| c.0).sum::<i64>() == 0))
    }

    /// The descriptors' digest each process reported, by process.
    pub fn loaded(&self) -> Vec<u64> {
        self.reports.iter().flatten().map(|r| r.1).collect()
    }
}

/// One message on a control connection: a tag and three words.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Frame {
    /// 0 → p: take checkpoint `id` (with `stop`: the last, after which the workers end).
    Request { id: u64, stop: bool },
    /// p → 0: records in flight in p, for checkpoint `id`, and the digest of the descriptors
    /// p loaded last.
    Report {
        id: u64,
        in_flight: i64,
        loaded: u64,
    },
    /// 0 → p: the round's answer; quiet, the descriptors to put in force now, if any, and
    /// those process 0 loaded.
    Verdict {
        quiet: bool,
        apply: Option<u64>,
        wanted: u64,
    },
    /// p → 0: p's part of `id` is written (`ok`) or not.
    Part { id: u64, ok: bool },
    /// 0 → p: checkpoint `id` is complete (or abandoned).
    Outcome { id: u64, complete: bool },
    /// p → 0 at start, then 0 → every p for every process: what `process` holds.
    Held { process: u64, held: Held },
    /// p → 0: p was asked to stop; stop the cluster (see [`crate::stop`]).
    Stop,
    /// 0 → p: the cluster stops.
    Stopping,
    /// p → 0: p takes no more messages and its log writer is done.
    Drained,
    /// p → 0 at start (after `Held`), then 0 → every p: the digest of `process`'s
    /// descriptors.
    Descriptors { process: u64, digest: u64 },
}

const FRAME: usize = 25;
const NONE: u64 = u64::MAX;

impl Frame {
    fn encode(self) -> [u8; FRAME] {
        let opt = |o: Option<u64>| o.unwrap_or(NONE);
        let (tag, a, b, c) = match self {
            Frame::Request { id, stop } => (1, id, stop as u64, 0),
            Frame::Report {
                id,
                in_flight,
                loaded,
            } => (2, id, in_flight as u64, loaded),
            Frame::Verdict {
                quiet,
                apply,
                wanted,
            } => (3, quiet as u64, opt(apply), wanted),
            Frame::Part { id, ok } => (4, id, ok as u64, 0),
            Frame::Outcome { id, complete } => (5, id, complete as u64, 0),
            Frame::Held { process, held } => (6, process, opt(held.committed), opt(held.pending)),
            Frame::Stop => (7, 0, 0, 0),
            Frame::Stopping => (8, 0, 0, 0),
            Frame::Drained => (9, 0, 0, 0),
            Frame::Descriptors { process, digest } => (10, process, digest, 0),
        };
        let mut buf = [0u8; FRAME];
        buf[0] = tag;
        for (i, w) in [a, b, c].into_iter().enumerate() {
            buf[1 + 8 * i..9 + 8 * i].copy_from_slice(&w.to_be_bytes());
        }
        buf
    }

    fn decode(buf: &[u8; FRAME]) -> Option<Frame> {
        let w = |i: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&buf[1 + 8 * i..9 + 8 * i]);
            u64::from_be_bytes(b)
        };
        let opt = |v: u64| (v != NONE).then_some(v);
        let (a, b, c) = (w(0), w(1), w(2));
        Some(match buf[0] {
            1 => Frame::Request {
                id: a,
                stop: b != 0,
            },
            2 => Frame::Report {
                id: a,
                in_flight: b as i64,
                loaded: c,
            },
            3 => Frame::Verdict {
                quiet: a != 0,
                apply: opt(b),
                wanted: c,
            },
            4 => Frame::Part { id: a, ok: b != 0 },
            5 => Frame::Outcome {
                id: a,
                complete: b != 0,
            },
            6 => Frame::Held {
                process: a,
                held: Held {
                    committed: opt(b),
                    pending: opt(c),
                },
            },
            7 => Frame::Stop,
            8 => Frame::Stopping,
            9 => Frame::Drained,
            10 => Frame::Descriptors {
                process: a,
                digest: b,
            },
            _ => return None,
        })
    }
}

fn send(stream: &Mutex<TcpStream>, frame: Frame) -> Result<(), String> {
    let mut s = stream
        .lock()
        .map_err(|_| "a control connection is poisoned".to_string())?;
    s.write_all(&frame.encode())
        .map_err(|e| format!("a cluster process is gone (control connection: {e})"))
}

fn receive(stream: &mut TcpStream) -> Result<Frame, String> {
    let mut buf = [0u8; FRAME];
    stream
        .read_exact(&mut buf)
        .map_err(|e| format!("a cluster process is gone (control connection: {e})"))?;
    Frame::decode(&buf).ok_or_else(|| "a garbled frame on a control connection".to_string())
}

/// What a process's readers hand on, each kind to its waiter.
type Inbox<T> = Mutex<Receiver<Result<T, String>>>;
/// Where a reader hands one kind on.
type Outbox<T> = Sender<Result<T, String>>;
/// A quiet round's report at process 0: (process, checkpoint id, (records in flight,
/// descriptors loaded)).
type Report = (usize, u64, (i64, u64));
/// A quiet round's verdict elsewhere: (quiet, descriptors to apply, process 0's).
type Verdict = (bool, Option<u64>, u64);

/// A process's end of the cluster's checkpoint protocol (see the module doc).
pub struct Coordinator {
    process: usize,
    processes: usize,
    /// Writers: at process 0 one per peer (index = process), elsewhere only `[0]`.
    peers: Vec<Option<Mutex<TcpStream>>>,
    /// At process 0: the quiet rounds' reports.
    reports: Inbox<Report>,
    /// Elsewhere: the quiet rounds' verdicts.
    verdicts: Inbox<Verdict>,
    /// At process 0: (process, checkpoint id, written).
    parts: Inbox<(usize, u64, bool)>,
    /// Elsewhere: (checkpoint id, complete).
    outcomes: Inbox<(u64, bool)>,
    /// The cluster's stop, as this process knows it.
    stop: Arc<ClusterStop>,
    /// Set once this process has asked for the stop (elsewhere) or announced it (at 0).
    stop_told: AtomicBool,
}

impl Coordinator {
    /// Agrees with the other processes on the checkpoint to restore (this process holds
    /// `held`), then starts reading the control connections (`control`: at process 0 one per
    /// peer, elsewhere the one to process 0) on threads of their own. Requests from process 0
    /// go to `control`.
    pub fn start(
        control: Vec<Option<TcpStream>>,
        process: usize,
        held: Held,
        on_request: Arc<Control>,
    ) -> Result<(Coordinator, Agreed), String> {
        let processes = control.len();
        let mut control = control;
        let digest = on_request.reloads().map_or(NONE, |r| r.in_force());
        let all = if process == 0 {
            gather(&mut control, (held, digest))?
        } else {
            learn(&mut control, process, (held, digest))?
        };
        let agreed = agree(&all)?;
        let (reports_tx, reports) = channel();
        let (verdicts_tx, verdicts) = channel();
        let (parts_tx, parts) = channel();
        let (outcomes_tx, outcomes) = channel();
        let stop = Arc::new(ClusterStop::new(processes));
        let mut peers = Vec::with_capacity(processes);
        for (p, socket) in control.into_iter().enumerate() {
            let Some(socket) = socket else {
                peers.push(None);
                continue;
            };
            let reader = socket
                .try_clone()
                .map_err(|e| format!("control connection: {e}"))?;
            let read = Readers {
                reports: reports_tx.clone(),
                verdicts: verdicts_tx.clone(),
                parts: parts_tx.clone(),
                outcomes: outcomes_tx.clone(),
                control: on_request.clone(),
                stop: stop.clone(),
            };
            std::thread::Builder::new()
                .name(format!("aqyl-control-{p}"))
                .spawn(move || read.run(reader, p))
                .map_err(|e| format!("cannot start a control reader: {e}"))?;
            peers.push(Some(Mutex::new(socket)));
        }
        let coordinator = Coordinator {
            process,
            processes,
            peers,
            reports: Mutex::new(reports),
            verdicts: Mutex::new(verdicts),
            parts: Mutex::new(parts),
            outcomes: Mutex::new(outcomes),
            stop,
            stop_told: AtomicBool::new(false),
        };
        Ok((coordinator, agreed))
    }

    /// Whether this is process 0, which asks for checkpoints and decides when they complete.
    pub fn leads(&self) -> bool {
        self.process == 0
    }

    /// At process 0: asks every other process for checkpoint `id` (with `stop`: the last).
    pub fn request(&self, id: u64, stop: bool) -> Result<(), String> {
        self.to_peers(Frame::Request { id, stop })
    }

    /// The cluster's stop, as this process knows it.
    pub fn stop(&self) -> &Arc<ClusterStop> {
        &self.stop
    }

    /// This process stops (asked to, or told the cluster does): at process 0, tells every
    /// other process; elsewhere, asks process 0 to stop the cluster. Once.
    pub fn stop_cluster(&self) -> Result<(), String> {
        self.stop.begin();
        if self.stop_told.swap(true, SeqCst) {
            return Ok(());
        }
        if self.process == 0 {
            self.to_peers(Frame::Stopping)
        } else {
            self.to_zero(Frame::Stop)
        }
    }

    /// This process takes no more messages and its ingest log writer is done.
    pub fn drained(&self) -> Result<(), String> {
        if self.process == 0 {
            self.stop.drain(0);
            Ok(())
        } else {
            self.to_zero(Frame::Drained)
        }
    }

    /// One round of the quiet check of checkpoint `id`: this process counts `in_flight`
    /// records in flight; whether the whole cluster is quiet. Quiet, descriptors every process
    /// loaded are put in force ([`crate::reload`], through `reloads`). Called by the leader of
    /// this process's workers while the others wait at the rendezvous.
    pub fn quiet(
        &self,
        id: u64,
        in_flight: i64,
        reloads: Option<&Reloads>,
    ) -> Result<bool, String> {
        let loaded = reloads.map_or(NONE, Reloads::loaded);
        let (quiet, apply) = if self.process != 0 {
            self.to_zero(Frame::Report {
                id,
                in_flight,
                loaded,
            })?;
            let (quiet, apply, wanted) = next(&self.verdicts)?;
            if let Some(r) = reloads.filter(|_| quiet) {
                r.heard(wanted);
            }
            (quiet, apply)
        } else {
            self.decide(id, (in_flight, loaded), reloads)?
        };
        if let (Some(r), Some(digest)) = (reloads, apply) {
            r.apply(digest);
        }
        Ok(quiet)
    }

    /// At process 0: gathers a round's reports, decides and tells every process.
    fn decide(
        &self,
        id: u64,
        own: (i64, u64),
        reloads: Option<&Reloads>,
    ) -> Result<(bool, Option<u64>), String> {
        let mut tally = Tally::new(id, self.processes);
        let mut verdict = tally.add(0, id, own)?;
        while verdict.is_none() {
            let (p, rid, report) = next(&self.reports)?;
            verdict = tally.add(p, rid, report)?;
        }
        let quiet = verdict.unwrap_or(false);
        let apply = match (reloads, quiet) {
            (Some(r), true) => match crate::reload::decide(&tally.loaded(), r.in_force()) {
                Ok(apply) => apply,
                Err(differ) => {
                    r.differ(&differ);
                    None
                }
            },
            _ => None,
        };
        self.to_peers(Frame::Verdict {
            quiet,
            apply,
            wanted: own.1,
        })?;
        Ok((quiet, apply))
    }

    /// Elsewhere than at process 0: tells process 0 whether this process's part of `id` is
    /// written, and waits for the outcome: whether `id` is complete.
    pub fn part(&self, id: u64, ok: bool) -> Result<bool, String> {
        self.to_zero(Frame::Part { id, ok })?;
        loop {
            let (oid, complete) = next(&self.outcomes)?;
            if oid == id {
                return Ok(complete);
            }
        }
    }

    /// At process 0, with its own part of `id` written (`ok`) or not: waits for every other
    /// process's part, tells them all the outcome and returns it.
    pub fn complete(&self, id: u64, ok: bool) -> Result<bool, String> {
        let mut seen = vec![false; self.processes];
        seen[0] = true;
        let mut complete = ok;
        while seen.iter().any(|s| !s) {
            let (p, pid, written) = next(&self.parts)?;
            if pid == id && p < seen.len() {
                seen[p] = true;
                complete &= written;
            }
        }
        self.to_peers(Frame::Outcome { id, complete })?;
        Ok(complete)
    }

    fn to_zero(&self, frame: Frame) -> Result<(), String> {
        match self.peers.first() {
            Some(Some(s)) => send(s, frame),
            _ => Err("no control connection to process 0".into()),
        }
    }

    fn to_peers(&self, frame: Frame) -> Result<(), String> {
        self.peers.iter().flatten().try_for_each(|s| send(s, frame))
    }
}

fn next<T>(inbox: &Inbox<T>) -> Result<T, String> {
    let rx = inbox
        .lock()
        .map_err(|_| "a control inbox is poisoned".to_string())?;
    rx.recv()
        .map_err(|_| "the control connections are closed".to_string())?
}

/// At process 0: every process's holdings (its own, and one frame from each peer), sent to
/// every peer; and the digests of their descriptors, which must all be process 0's (`own.1`).
fn gather(control: &mut [Option<TcpStream>], own: (Held, u64)) -> Result<Vec<Held>, String> {
    let mut all = vec![own.0; control.len()];
    let mut differ = Vec::new();
    for (p, socket) in control.iter_mut().enumerate().skip(1) {
        let s = socket
            .as_mut()
            .ok_or_else(|| format!("no control connection to process {p}"))?;
        match (receive(s)?, receive(s)?) {
            (Frame::Held { held, .. }, Frame::Descriptors { digest, .. }) => {
                all[p] = held;
                if !same_descriptors(digest, own.1) {
                    differ.push(p);
                }
            }
            other => {
                return Err(format!(
                    "process {p} sent {other:?} instead of its checkpoints"
                ))
            }
        }
    }
    let descriptors = Frame::Descriptors {
        process: 0,
        digest: own.1,
    };
    for socket in control.iter_mut().skip(1).flatten() {
        let held = all.iter().enumerate().map(|(p, held)| Frame::Held {
            process: p as u64,
            held: *held,
        });
        for frame in held.chain([descriptors]) {
            socket
                .write_all(&frame.encode())
                .map_err(|e| format!("a cluster process is gone (control connection: {e})"))?;
        }
    }
    if !differ.is_empty() {
        return Err(format!("the sensor descriptors of processes {differ:?} differ from process 0's: every process of a cluster must have the same files in its sensors_dir (copy process 0's) and they all start again"));
    }
    Ok(all)
}

/// Whether two processes' descriptor digests agree (an unknown one agrees with any).
fn same_descriptors(a: u64, b: u64) -> bool {
    a == b || a == NONE || b == NONE
}

/// Elsewhere: sends process 0 this process's holdings and descriptors' digest (`own`), and
/// reads back every process's holdings and process 0's digest, which must be this one's.
fn learn(
    control: &mut [Option<TcpStream>],
    process: usize,
    own: (Held, u64),
) -> Result<Vec<Held>, String> {
    let mut all = vec![Held::default(); control.len()];
    let s = control
        .first_mut()
        .and_then(Option::as_mut)
        .ok_or("no control connection to process 0")?;
    let frames = [
        Frame::Held {
            process: process as u64,
            held: own.0,
        },
        Frame::Descriptors {
            process: process as u64,
            digest: own.1,
        },
    ];
    for frame in frames {
        s.write_all(&frame.encode())
            .map_err(|e| format!("process 0 is gone (control connection: {e})"))?;
    }
    for _ in 0..all.len() {
        match receive(s)? {
            Frame::Held { process, held } if (process as usize) < all.len() => {
                all[process as usize] = held
            }
            other => {
                return Err(format!(
                    "process 0 sent {other:?} instead of the checkpoints"
                ))
            }
        }
    }
    match receive(s)? {
        Frame::Descriptors { digest, .. } if same_descriptors(digest, own.1) => Ok(all),
        Frame::Descriptors { .. } => Err("this process's sensor descriptors differ from process 0's: every process of a cluster must have the same files in its sensors_dir (copy process 0's) and they all start again".into()),
        other => Err(format!("process 0 sent {other:?} instead of its descriptors")),
    }
}

/// Where one control connection's frames go.
struct Readers {
    reports: Outbox<Report>,
    verdicts: Outbox<Verdict>,
    parts: Sender<Result<(usize, u64, bool), String>>,
    outcomes: Sender<Result<(u64, bool), String>>,
    control: Arc<Control>,
    stop: Arc<ClusterStop>,
}

impl Readers {
    /// Reads frames from process `p` until the connection fails, then tells every waiter.
    fn run(self, mut stream: TcpStream, p: usize) {
        let why = loop {
            let frame = match receive(&mut stream) {
                Ok(f) => f,
                Err(e) => break e,
            };
            let _ = match frame {
                Frame::Request { id, stop } => {
                    self.control.request_id(id, stop);
                    Ok(())
                }
                Frame::Stop | Frame::Stopping => {
                    self.stop.begin();
                    Ok(())
                }
                Frame::Drained => {
                    self.stop.drain(p);
                    Ok(())
                }
                Frame::Report {
                    id,
                    in_flight,
                    loaded,
                } => self
                    .reports
                    .send(Ok((p, id, (in_flight, loaded))))
                    .map_err(drop),
                Frame::Verdict {
                    quiet,
                    apply,
                    wanted,
                } => self.verdicts.send(Ok((quiet, apply, wanted))).map_err(drop),
                Frame::Part { id, ok } => self.parts.send(Ok((p, id, ok))).map_err(drop),
                Frame::Outcome { id, complete } => {
                    self.outcomes.send(Ok((id, complete))).map_err(drop)
                }
                Frame::Held { .. } | Frame::Descriptors { .. } => Ok(()),
            };
        };
        tracing::debug!(peer = p, "Control connection closed: {why}");
        self.stop.broken(why.clone());
        let _ = self.reports.send(Err(why.clone()));
        let _ = self.verdicts.send(Err(why.clone()));
        let _ = self.parts.send(Err(why.clone()));
        let _ = self.outcomes.send(Err(why));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn held(committed: Option<u64>, pending: Option<u64>) -> Held {
        Held { committed, pending }
    }

    #[test]
    fn the_cluster_restores_the_newest_checkpoint_every_process_holds() {
        // Process 1 died before it heard that 5 was complete: it still holds 5 as pending.
        let all = [
            held(Some(5), None),
            held(Some(4), Some(5)),
            held(Some(5), None),
        ];
        assert_eq!(agree(&all).unwrap().restore, Some(5));
        // 6 was written by two processes only: not complete, so 5.
        let all = [
            held(Some(5), Some(6)),
            held(Some(5), None),
            held(Some(5), Some(6)),
        ];
        assert_eq!(
            agree(&all).unwrap(),
            Agreed {
                restore: Some(5),
                newest: 6
            }
        );
        // Nothing committed anywhere: every log is whole, all start afresh.
        let all = [held(None, Some(1)), held(None, None)];
        assert_eq!(
            agree(&all).unwrap(),
            Agreed {
                restore: None,
                newest: 1
            }
        );
        assert_eq!(agree(&[held(None, None); 3]).unwrap().restore, None);
    }

    #[test]
    fn a_process_that_lost_its_state_among_others_that_have_one_is_refused() {
        let all = [held(Some(5), None), held(None, None)];
        let e = agree(&all).unwrap_err();
        assert!(e.contains("process 1: none") && e.contains("state"), "{e}");
        // A one-process state (no id) cannot join a cluster's.
        let e = agree(&[held(Some(0), None), held(Some(3), None)]).unwrap_err();
        assert!(e.contains("no checkpoint in common"), "{e}");
    }

    #[test]
    fn a_round_is_quiet_only_when_every_process_reported_and_the_counts_cancel() {
        let mut t = Tally::new(7, 3);
        assert_eq!(t.add(0, 7, (2, 10)), Ok(None));
        assert_eq!(t.add(2, 7, (-1, 12)), Ok(None));
        assert!(t.add(2, 7, (0, 12)).is_err(), "two reports of one process");
        assert!(
            t.add(1, 6, (0, 11)).is_err(),
            "a report of another checkpoint"
        );
        assert_eq!(t.add(1, 7, (-1, 11)), Ok(Some(true)));
        assert_eq!(
            t.loaded(),
            [10, 11, 12],
            "each process's descriptors, by process"
        );
        let mut t = Tally::new(7, 2);
        assert_eq!(t.add(1, 7, (1, 0)), Ok(None));
        assert_eq!(
            t.add(0, 7, (0, 0)),
            Ok(Some(false)),
            "a record still travels"
        );
        assert!(
            Tally::new(1, 2).add(5, 1, (0, 0)).is_err(),
            "an unknown process"
        );
    }

    #[test]
    fn two_processes_agree_find_quiet_and_complete_over_their_control_connection() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let to_zero = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (at_zero, _) = listener.accept().unwrap();
        let control = || Arc::new(Control::new(1, vec![]).0);
        let (zero_control, one_control) = (control(), control());
        // Both run descriptors of digest 1 and have loaded changed ones (2) meanwhile.
        let reloads = || {
            let r = Arc::new(Reloads::new(
                crate::shared(Default::default()),
                1,
                Default::default(),
            ));
            r.stage(2, Default::default());
            r
        };
        let (zero_reloads, one_reloads) = (reloads(), reloads());
        zero_control.follow_reloads(zero_reloads.clone());
        one_control.follow_reloads(one_reloads.clone());
        let one = {
            let (c, r) = (one_control.clone(), one_reloads.clone());
            std::thread::spawn(move || {
                let held = held(Some(3), Some(4));
                let (coordinator, agreed) =
                    Coordinator::start(vec![Some(to_zero), None], 1, held, c).unwrap();
                // Records sent by process 0 and not yet pulled here: not quiet; then quiet.
                let first = coordinator.quiet(4, -2, Some(&r)).unwrap();
                let before = r.in_force();
                let second = coordinator.quiet(4, -1, Some(&r)).unwrap();
                let rounds = ([first, second], [before, r.in_force()]);
                (agreed, rounds, coordinator.part(4, true).unwrap())
            })
        };
        let held0 = held(Some(4), None);
        let (zero, agreed) =
            Coordinator::start(vec![None, Some(at_zero)], 0, held0, zero_control).unwrap();
        assert!(zero.leads());
        zero.request(5, false).unwrap();
        let first = zero.quiet(4, 1, Some(&zero_reloads)).unwrap();
        let before = zero_reloads.in_force();
        let second = zero.quiet(4, 1, Some(&zero_reloads)).unwrap();
        let rounds = ([first, second], [before, zero_reloads.in_force()]);
        assert!(zero.complete(4, true).unwrap());
        let (agreed_one, rounds_one, complete_one) = one.join().unwrap();
        let expected = Agreed {
            restore: Some(4),
            newest: 4,
        };
        assert_eq!((agreed, agreed_one), (expected, expected));
        let expected = ([false, true], [1, 2]);
        assert_eq!(
            (rounds, rounds_one),
            (expected, expected),
            "quiet at the second round, and the reload in force from then on, on both"
        );
        assert!(complete_one);
        assert_eq!(
            one_control.requested(),
            5,
            "process 0's request reached process 1"
        );
    }

    #[test]
    fn processes_with_other_descriptors_refuse_to_form_a_cluster() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let to_zero = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (at_zero, _) = listener.accept().unwrap();
        let control = |digest| {
            let c = Arc::new(Control::new(1, vec![]).0);
            let registry = crate::shared(Default::default());
            c.follow_reloads(Arc::new(Reloads::new(registry, digest, Default::default())));
            c
        };
        let c = control(8);
        let one = std::thread::spawn(move || {
            Coordinator::start(vec![Some(to_zero), None], 1, Held::default(), c).err()
        });
        let zero = Coordinator::start(vec![None, Some(at_zero)], 0, Held::default(), control(7));
        let (zero, one) = (zero.err().unwrap(), one.join().unwrap().unwrap());
        assert!(zero.contains("processes [1] differ"), "{zero}");
        assert!(
            one.contains("this process's sensor descriptors differ"),
            "{one}"
        );
    }

    #[test]
    fn frames_survive_the_wire() {
        let frames = [
            Frame::Request { id: 3, stop: true },
            Frame::Stop,
            Frame::Stopping,
            Frame::Drained,
            Frame::Report {
                id: 3,
                in_flight: -12,
                loaded: 77,
            },
            Frame::Verdict {
                quiet: true,
                apply: Some(77),
                wanted: 77,
            },
            Frame::Descriptors {
                process: 1,
                digest: 5,
            },
            Frame::Part { id: 9, ok: false },
            Frame::Outcome {
                id: 9,
                complete: true,
            },
            Frame::Held {
                process: 2,
                held: held(Some(4), None),
            },
        ];
        for f in frames {
            assert_eq!(Frame::decode(&f.encode()), Some(f));
        }
        assert_eq!(Frame::decode(&[0; FRAME]), None);
    }
}
