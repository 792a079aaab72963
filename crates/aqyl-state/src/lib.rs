//! Aqyl's durable state: the ingest log and the latest checkpoint of the dataflow, in one
//! [redb](https://docs.rs/redb) file (`state.redb` in `[state] dir`).
//!
//! - **Ingest log.** Messages are appended in groups (one write transaction each, committed
//!   with fsync) before they are acknowledged to the broker; each message gets a sequence
//!   number, and a group is stored under the number of its first message.
//! - **Checkpoint.** An opaque blob (the dataflow's encoded state) with the sequence number
//!   from which the log is still needed; committing it deletes the log groups before that
//!   number, in the same transaction, so the file never holds a checkpoint without the log it
//!   needs.
//! - **Pending checkpoint** (cluster mode). A process of a cluster first writes its part of
//!   checkpoint `id` as *pending*, beside the committed one and without touching the log;
//!   once every process holds its part, [`Store::promote`] makes it the committed checkpoint
//!   and truncates the log, in one transaction. Until then the previous committed checkpoint
//!   and the log it needs stay, so the cluster can always go back to a checkpoint every
//!   process holds.
//!
//! Why redb: one pure-Rust file with ACID transactions and crash safety (copy-on-write B-trees,
//! a commit is durable when it returns), no compaction threads, no C library; it gives group
//! commit (many messages per fsync) and the atomic "new checkpoint + truncated log" for free.
//! A write-ahead log of our own would need its own framing, checksums, torn-write recovery
//! and file rotation, and an LSM store (RocksDB, fjall) brings background compaction we do
//! not need for an append-then-truncate workload.

use aqyl_core::RawMessage;
use redb::{Database, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// The layout this release reads and writes (of the file and of the checkpoints in it). A
/// state file of another format is refused. 2: the rule state keeps a digest of each
/// subject's newest reading, and its fields only where a rule reads a `_rate`.
pub const FORMAT: u64 = 2;

/// The file name inside the state directory.
pub const FILE: &str = "state.redb";

const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("ingest_log");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
/// The checkpoint, in chunks of [`CHUNK`] bytes by index: redb keeps a value as one page, and
/// a page of hundreds of megabytes costs it several times that in memory to write.
const CHECKPOINT: TableDefinition<u64, &[u8]> = TableDefinition::new("checkpoint");
const CHUNK: usize = 1 << 20;
/// A cluster process's part of a checkpoint not yet complete, chunked like [`CHECKPOINT`].
const PENDING: TableDefinition<u64, &[u8]> = TableDefinition::new("pending_checkpoint");

/// A failure of the state file, with what to do about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateError(pub String);

impl std::fmt::Display for StateError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for StateError {}

fn err(path: &Path, what: &str, e: impl std::fmt::Display) -> StateError {
    StateError(format!("{}: {what}: {e}", path.display()))
}

/// One logged message (the log's on-disk record).
#[derive(Serialize, Deserialize)]
struct Entry {
    topic: String,
    payload: Vec<u8>,
    received_at: i64,
}

/// [`Entry`] borrowed from a message, to encode without copying it (same encoding).
#[derive(Serialize)]
struct EntryRef<'a> {
    topic: &'a str,
    #[serde(with = "serde_bytes_as_seq")]
    payload: &'a [u8],
    received_at: i64,
}

/// Encodes a byte slice in one piece; in bincode that is exactly how a `Vec<u8>` is encoded
/// (a length, then the bytes), so [`Entry`] reads it back.
mod serde_bytes_as_seq {
    pub fn serialize<S: serde::Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(bytes)
    }
}

/// A checkpoint: the latest committed one, or a cluster process's pending part.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    /// The dataflow's encoded state.
    pub blob: Vec<u8>,
    /// Log entries from this sequence number on may not be covered by the checkpoint.
    pub log_from: u64,
    /// Its number in a cluster, the same on every process (0 for one process, whose
    /// checkpoints need none).
    pub id: u64,
}

/// redb's page cache: 64 MiB instead of its default of 1 GiB. A checkpoint is written once
/// and read back only at a start, and the log is appended and read once, so a large cache
/// buys nothing; with the default, the pages of the last checkpoints stayed cached (about
/// 4 KiB a sensor of resident memory, heaptrack of `aqyl run` with 50,000 sensors).
const CACHE_BYTES: usize = 64 << 20;

/// The state file of one instance.
pub struct Store {
    db: Database,
    path: PathBuf,
}

impl Store {
    /// Opens (or creates) `dir/state.redb`, creating `dir` if needed. Refuses a file written
    /// in another format, or one another running instance holds.
    pub fn open(dir: &Path) -> Result<Store, StateError> {
        std::fs::create_dir_all(dir).map_err(|e| {
            err(
                dir,
                "cannot create the state directory ([state] dir, AQYL_STATE_DIR)",
                e,
            )
        })?;
        let path = dir.join(FILE);
        let db = Database::builder().set_cache_size(CACHE_BYTES).create(&path).map_err(|e| match e {
            redb::DatabaseError::DatabaseAlreadyOpen => StateError(format!(
                "{}: another Aqyl instance is using this state directory; give each instance its own [state] dir",
                path.display()
            )),
            other => err(
                &path,
                "cannot open the state file (written by an incompatible release, or damaged); move it aside to start afresh",
                other,
            ),
        })?;
        let store = Store { db, path };
        store.check_format()?;
        Ok(store)
    }

    /// Where the file is.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn check_format(&self) -> Result<(), StateError> {
        let tx = self.write()?;
        {
            let mut meta = tx
                .open_table(META)
                .map_err(|e| err(&self.path, "cannot open", e))?;
            let found = meta
                .get("format")
                .map_err(|e| err(&self.path, "cannot read", e))?
                .map(|v| v.value().to_vec());
            match found {
                None => {
                    meta.insert("format", FORMAT.to_le_bytes().as_slice())
                        .map_err(|e| err(&self.path, "cannot write", e))?;
                }
                Some(bytes) => {
                    let format = bytes.try_into().map(u64::from_le_bytes).unwrap_or(0);
                    if format != FORMAT {
                        return Err(StateError(format!(
                            "{}: state written in format {format}, but this release reads format {FORMAT}; run the release that wrote it until it stops cleanly, or move the file aside to start afresh",
                            self.path.display()
                        )));
                    }
                }
            }
            tx.open_table(LOG)
                .map_err(|e| err(&self.path, "cannot open", e))?;
            tx.open_table(CHECKPOINT)
                .map_err(|e| err(&self.path, "cannot open", e))?;
            tx.open_table(PENDING)
                .map_err(|e| err(&self.path, "cannot open", e))?;
        }
        tx.commit().map_err(|e| err(&self.path, "cannot write", e))
    }

    fn write(&self) -> Result<redb::WriteTransaction, StateError> {
        self.db
            .begin_write()
            .map_err(|e| err(&self.path, "cannot write", e))
    }

    fn read(&self) -> Result<redb::ReadTransaction, StateError> {
        self.db
            .begin_read()
            .map_err(|e| err(&self.path, "cannot read", e))
    }

    /// The sequence number the next logged message gets (1 for an empty log).
    pub fn next_seq(&self) -> Result<u64, StateError> {
        let tx = self.read()?;
        let log = tx
            .open_table(LOG)
            .map_err(|e| err(&self.path, "cannot read the log", e))?;
        let last = log
            .last()
            .map_err(|e| err(&self.path, "cannot read the log", e))?;
        let next = match last {
            Some((k, v)) => k.value() + decode_group(v.value()).map_or(0, |g| g.len() as u64),
            None => 1,
        };
        // A checkpoint may have truncated everything: never reuse its numbers.
        let from = self.checkpoint()?.map_or(1, |c| c.log_from);
        Ok(next.max(from).max(1))
    }

    /// Appends `messages` as one group whose first message gets `first_seq`, and returns once
    /// the group is on disk (fsync).
    pub fn append(&self, first_seq: u64, messages: &[RawMessage]) -> Result<(), StateError> {
        let bytes = encode_group(messages).map_err(|e| err(&self.path, "cannot encode", e))?;
        self.append_encoded(first_seq, &bytes)
    }

    /// [`Store::append`] for a group encoded with [`encode_group`] (so the caller can hand
    /// the messages on before the append).
    pub fn append_encoded(&self, first_seq: u64, bytes: &[u8]) -> Result<(), StateError> {
        let tx = self.write()?;
        {
            let mut log = tx
                .open_table(LOG)
                .map_err(|e| err(&self.path, "cannot open the log", e))?;
            log.insert(first_seq, bytes)
                .map_err(|e| err(&self.path, "cannot append to the log", e))?;
        }
        tx.commit()
            .map_err(|e| err(&self.path, "cannot commit to the log", e))
    }

    /// Calls `each(seq, message)` for every logged message from `from` on, in order; stops
    /// early when `each` returns false. Returns how many messages it passed.
    pub fn replay(
        &self,
        from: u64,
        mut each: impl FnMut(u64, RawMessage) -> bool,
    ) -> Result<u64, StateError> {
        let tx = self.read()?;
        let log = tx
            .open_table(LOG)
            .map_err(|e| err(&self.path, "cannot read the log", e))?;
        let start = self.group_start(&log, from)?.unwrap_or(from);
        let mut passed = 0;
        for group in log
            .range(start..)
            .map_err(|e| err(&self.path, "cannot read the log", e))?
        {
            let (k, v) = group.map_err(|e| err(&self.path, "cannot read the log", e))?;
            let entries = decode_group(v.value()).map_err(|e| {
                err(
                    &self.path,
                    &format!("log group {} is damaged", k.value()),
                    e,
                )
            })?;
            for (i, e) in entries.into_iter().enumerate() {
                let seq = k.value() + i as u64;
                if seq < from {
                    continue;
                }
                passed += 1;
                let msg = RawMessage {
                    topic: e.topic,
                    payload: e.payload,
                    received_at: e.received_at,
                };
                if !each(seq, msg) {
                    return Ok(passed);
                }
            }
        }
        Ok(passed)
    }

    /// The latest committed checkpoint, if any.
    pub fn checkpoint(&self) -> Result<Option<Checkpoint>, StateError> {
        self.read_slot(CHECKPOINT, "")
    }

    /// This process's pending part of a cluster checkpoint, if any.
    pub fn pending(&self) -> Result<Option<Checkpoint>, StateError> {
        self.read_slot(PENDING, "pending_")
    }

    /// Reads the checkpoint in `table`, with its meta keys named `<prefix>log_from` and
    /// `<prefix>id`.
    fn read_slot(
        &self,
        table: TableDefinition<u64, &[u8]>,
        prefix: &str,
    ) -> Result<Option<Checkpoint>, StateError> {
        let tx = self.read()?;
        let meta = tx
            .open_table(META)
            .map_err(|e| err(&self.path, "cannot read", e))?;
        let word = |key: &str| -> Result<Option<u64>, StateError> {
            Ok(meta
                .get(format!("{prefix}{key}").as_str())
                .map_err(|e| err(&self.path, "cannot read the checkpoint", e))?
                .map(|v| v.value().try_into().map(u64::from_le_bytes).unwrap_or(1)))
        };
        let (Some(log_from), id) = (word("log_from")?, word("id")?) else {
            return Ok(None);
        };
        let chunks = tx
            .open_table(table)
            .map_err(|e| err(&self.path, "cannot read", e))?;
        let mut blob = Vec::new();
        for chunk in chunks
            .iter()
            .map_err(|e| err(&self.path, "cannot read the checkpoint", e))?
        {
            let (_, chunk) = chunk.map_err(|e| err(&self.path, "cannot read the checkpoint", e))?;
            blob.extend_from_slice(chunk.value());
        }
        Ok(Some(Checkpoint {
            blob,
            log_from,
            id: id.unwrap_or(0),
        }))
    }

    /// Commits `checkpoint` and deletes the log groups it makes unnecessary, atomically.
    pub fn commit(&self, checkpoint: &Checkpoint) -> Result<(), StateError> {
        let tx = self.write()?;
        self.write_slot(&tx, CHECKPOINT, "", checkpoint)?;
        self.truncate(&tx, checkpoint.log_from)?;
        self.finish_commit(tx)
    }

    /// Writes this process's part of cluster checkpoint `checkpoint.id` as pending, beside
    /// the committed checkpoint (which stays, with the log it needs, until [`Store::promote`]).
    pub fn write_pending(&self, checkpoint: &Checkpoint) -> Result<(), StateError> {
        let tx = self.write()?;
        self.write_slot(&tx, PENDING, "pending_", checkpoint)?;
        tx.commit()
            .map_err(|e| err(&self.path, "cannot write the pending checkpoint", e))
    }

    /// Makes the pending part of checkpoint `id` the committed checkpoint and truncates the
    /// log before it, atomically (every process of the cluster holds its part). False when
    /// the pending part is not `id`'s (nothing changes).
    pub fn promote(&self, id: u64) -> Result<bool, StateError> {
        let Some(pending) = self.pending()?.filter(|p| p.id == id) else {
            return Ok(false);
        };
        let tx = self.write()?;
        self.write_slot(&tx, CHECKPOINT, "", &pending)?;
        self.clear_pending(&tx)?;
        self.truncate(&tx, pending.log_from)?;
        self.finish_commit(tx)?;
        Ok(true)
    }

    /// Drops the pending part (a checkpoint the cluster will not complete).
    pub fn drop_pending(&self) -> Result<(), StateError> {
        let tx = self.write()?;
        self.clear_pending(&tx)?;
        tx.commit()
            .map_err(|e| err(&self.path, "cannot drop the pending checkpoint", e))
    }

    fn clear_pending(&self, tx: &redb::WriteTransaction) -> Result<(), StateError> {
        let mut meta = tx
            .open_table(META)
            .map_err(|e| err(&self.path, "cannot open", e))?;
        for key in ["pending_log_from", "pending_id"] {
            meta.remove(key)
                .map_err(|e| err(&self.path, "cannot drop the pending checkpoint", e))?;
        }
        tx.open_table(PENDING)
            .map_err(|e| err(&self.path, "cannot open", e))?
            .retain(|_, _| false)
            .map_err(|e| err(&self.path, "cannot drop the pending checkpoint", e))
    }

    /// Writes `checkpoint` into `table` and its meta keys (see [`Store::read_slot`]).
    fn write_slot(
        &self,
        tx: &redb::WriteTransaction,
        table: TableDefinition<u64, &[u8]>,
        prefix: &str,
        checkpoint: &Checkpoint,
    ) -> Result<(), StateError> {
        let mut meta = tx
            .open_table(META)
            .map_err(|e| err(&self.path, "cannot open", e))?;
        let mut chunks = tx
            .open_table(table)
            .map_err(|e| err(&self.path, "cannot open", e))?;
        chunks
            .retain(|_, _| false)
            .map_err(|e| err(&self.path, "cannot write the checkpoint", e))?;
        for (i, chunk) in checkpoint.blob.chunks(CHUNK).enumerate() {
            chunks
                .insert(i as u64, chunk)
                .map_err(|e| err(&self.path, "cannot write the checkpoint", e))?;
        }
        let from_key = format!("{prefix}log_from");
        let id_key = format!("{prefix}id");
        meta.insert(
            from_key.as_str(),
            checkpoint.log_from.to_le_bytes().as_slice(),
        )
        .map_err(|e| err(&self.path, "cannot write the checkpoint", e))?;
        meta.insert(id_key.as_str(), checkpoint.id.to_le_bytes().as_slice())
            .map_err(|e| err(&self.path, "cannot write the checkpoint", e))?;
        Ok(())
    }

    /// The first sequence number of the log group holding `seq` (a group starts at or before
    /// every number it holds); `None` when no group starts at or before `seq`.
    fn group_start(
        &self,
        log: &impl ReadableTable<u64, &'static [u8]>,
        seq: u64,
    ) -> Result<Option<u64>, StateError> {
        Ok(log
            .range(..=seq)
            .map_err(|e| err(&self.path, "cannot read the log", e))?
            .next_back()
            .transpose()
            .map_err(|e| err(&self.path, "cannot read the log", e))?
            .map(|(k, _)| k.value()))
    }

    /// Deletes the log groups before the one holding `log_from` (it may start before it).
    fn truncate(&self, tx: &redb::WriteTransaction, log_from: u64) -> Result<(), StateError> {
        let mut log = tx
            .open_table(LOG)
            .map_err(|e| err(&self.path, "cannot open the log", e))?;
        if let Some(keep) = self.group_start(&log, log_from)? {
            log.retain_in(..keep, |_, _| false)
                .map_err(|e| err(&self.path, "cannot truncate the log", e))?;
        }
        Ok(())
    }

    fn finish_commit(&self, tx: redb::WriteTransaction) -> Result<(), StateError> {
        // For the fault tests: die with the checkpoint written but not committed.
        if std::env::var_os("AQYL_FAILPOINT").is_some_and(|v| v == "checkpoint-commit") {
            std::process::abort();
        }
        tx.commit()
            .map_err(|e| err(&self.path, "cannot commit the checkpoint", e))
    }

    /// Messages in the log (for metrics and recovery progress).
    pub fn logged(&self) -> Result<u64, StateError> {
        let tx = self.read()?;
        let log = tx
            .open_table(LOG)
            .map_err(|e| err(&self.path, "cannot read the log", e))?;
        let mut n = 0;
        for group in log
            .iter()
            .map_err(|e| err(&self.path, "cannot read the log", e))?
        {
            let (_, v) = group.map_err(|e| err(&self.path, "cannot read the log", e))?;
            n += decode_group(v.value()).map_or(0, |g| g.len() as u64);
        }
        Ok(n)
    }
}

/// Encodes messages as one log group, for [`Store::append_encoded`].
pub fn encode_group(messages: &[RawMessage]) -> Result<Vec<u8>, String> {
    let entries: Vec<EntryRef<'_>> = messages
        .iter()
        .map(|m| EntryRef {
            topic: &m.topic,
            payload: &m.payload,
            received_at: m.received_at,
        })
        .collect();
    bincode::serialize(&entries).map_err(|e| e.to_string())
}

fn decode_group(bytes: &[u8]) -> Result<Vec<Entry>, String> {
    bincode::deserialize(bytes).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(i: u64) -> RawMessage {
        RawMessage {
            topic: format!("t/{i}"),
            payload: format!("{{\"v\":{i}}}").into_bytes(),
            received_at: i as i64,
        }
    }

    fn all(store: &Store, from: u64) -> Vec<(u64, String)> {
        let mut got = Vec::new();
        store
            .replay(from, |seq, m| {
                got.push((seq, m.topic));
                true
            })
            .unwrap();
        got
    }

    #[test]
    fn the_log_survives_reopening_and_replays_in_order() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path()).unwrap();
            assert_eq!(store.next_seq().unwrap(), 1);
            store.append(1, &[msg(1), msg(2)]).unwrap();
            store.append(3, &[msg(3)]).unwrap();
        }
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.next_seq().unwrap(), 4);
        let got = all(&store, 2);
        assert_eq!(got, vec![(2, "t/2".into()), (3, "t/3".into())]);
    }

    #[test]
    fn a_checkpoint_truncates_the_log_it_covers() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        store.append(1, &[msg(1), msg(2)]).unwrap();
        store.append(3, &[msg(3), msg(4)]).unwrap();
        store.append(5, &[msg(5)]).unwrap();
        let cp = Checkpoint {
            blob: b"state".to_vec(),
            log_from: 4,
            id: 0,
        };
        store.commit(&cp).unwrap();
        assert_eq!(store.checkpoint().unwrap(), Some(cp));
        // The first group went; the one holding 4 stays whole.
        assert_eq!(store.logged().unwrap(), 3);
        assert_eq!(all(&store, 4), vec![(4, "t/4".into()), (5, "t/5".into())]);
        // Everything truncated: numbering goes on from the checkpoint.
        store
            .commit(&Checkpoint {
                blob: vec![],
                log_from: 6,
                id: 0,
            })
            .unwrap();
        assert_eq!(store.logged().unwrap(), 1);
        assert_eq!(store.next_seq().unwrap(), 6);
    }

    #[test]
    fn a_pending_part_keeps_the_committed_checkpoint_and_its_log_until_promoted() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        store.append(1, &[msg(1), msg(2)]).unwrap();
        store.append(3, &[msg(3)]).unwrap();
        let first = Checkpoint {
            blob: b"one".to_vec(),
            log_from: 1,
            id: 4,
        };
        store.commit(&first).unwrap();
        let second = Checkpoint {
            blob: vec![7; CHUNK + 3],
            log_from: 3,
            id: 5,
        };
        store.write_pending(&second).unwrap();
        assert_eq!(store.checkpoint().unwrap(), Some(first.clone()));
        assert_eq!(store.pending().unwrap(), Some(second.clone()));
        assert_eq!(store.logged().unwrap(), 3, "no log goes before promotion");
        assert!(
            !store.promote(6).unwrap(),
            "only the pending id is promoted"
        );
        drop(store);
        let store = Store::open(dir.path()).unwrap();
        assert!(store.promote(5).unwrap());
        assert_eq!(store.checkpoint().unwrap(), Some(second));
        assert_eq!(store.pending().unwrap(), None);
        assert_eq!(store.logged().unwrap(), 1);
        store.write_pending(&first).unwrap();
        store.drop_pending().unwrap();
        assert_eq!(store.pending().unwrap(), None);
    }

    #[test]
    fn a_second_instance_is_refused_with_a_clear_message() {
        let dir = tempfile::tempdir().unwrap();
        let _first = Store::open(dir.path()).unwrap();
        let Err(e) = Store::open(dir.path()) else {
            panic!("a second open succeeded")
        };
        assert!(e.0.contains("another Aqyl instance"), "{e}");
    }

    #[test]
    fn state_of_another_format_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path()).unwrap();
            let tx = store.write().unwrap();
            {
                let mut meta = tx.open_table(META).unwrap();
                meta.insert("format", 99u64.to_le_bytes().as_slice())
                    .unwrap();
            }
            tx.commit().unwrap();
        }
        let Err(e) = Store::open(dir.path()) else {
            panic!("a foreign format was accepted")
        };
        assert!(e.0.contains("format 99"), "{e}");
    }

    #[test]
    fn a_file_that_is_not_a_state_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(FILE), b"not a database at all").unwrap();
        let Err(e) = Store::open(dir.path()) else {
            panic!("garbage was accepted")
        };
        assert!(e.0.contains("move it aside"), "{e}");
    }
}
