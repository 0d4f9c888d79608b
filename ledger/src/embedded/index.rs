//! The derived index of the embedded log: stream revisions, positions, stream heads and
//! command ids, with the checkpoint that says how far into the log it reaches.
//!
//! Everything here can be rebuilt from the segment files. Keys are one tag byte followed by
//! big-endian integers so that sled's byte order is the numeric order.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use uuid::Uuid;

use crate::types::{AppendResult, LedgerError, Result};

/// Where a record starts in the segment files.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Location {
    pub segment: u64,
    pub offset: u64,
}

impl Location {
    fn encode(self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.segment.to_be_bytes());
        out.extend_from_slice(&self.offset.to_be_bytes());
    }

    fn decode(b: &[u8]) -> Location {
        Location {
            segment: u64::from_be_bytes(b[0..8].try_into().expect("8")),
            offset: u64::from_be_bytes(b[8..16].try_into().expect("8")),
        }
    }
}

/// The last event of a stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Head {
    pub revision: u64,
    pub hash: [u8; 32],
}

/// What the index remembers of an applied command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct CommandRecord {
    pub stream: String,
    pub digest: [u8; 32],
    pub result: AppendResult,
    /// The answer kept with the append, in the same index value as the rest (one key per
    /// command, not two: issue 7 counts sled keys).
    pub answer: Option<Vec<u8>>,
}

impl CommandRecord {
    /// first position, last position, next expected revision (8 bytes each), digest (32),
    /// stream length (2) and name, then 0, or 1 and the answer to the end of the value.
    fn encode(&self) -> Vec<u8> {
        let stream_len =
            u16::try_from(self.stream.len()).expect("stream names are at most 1,024 bytes");
        let answer_len = self.answer.as_ref().map_or(0, Vec::len);
        let mut v = Vec::with_capacity(59 + self.stream.len() + answer_len);
        v.extend_from_slice(&self.result.first_position.to_be_bytes());
        v.extend_from_slice(&self.result.last_position.to_be_bytes());
        v.extend_from_slice(&self.result.next_expected_revision.to_be_bytes());
        v.extend_from_slice(&self.digest);
        v.extend_from_slice(&stream_len.to_be_bytes());
        v.extend_from_slice(self.stream.as_bytes());
        match &self.answer {
            None => v.push(0),
            Some(answer) => {
                v.push(1);
                v.extend_from_slice(answer);
            }
        }
        v
    }

    /// A format 1 command value (no stream length; the answer under its own key).
    fn decode_format_1(v: &[u8], answer: Option<Vec<u8>>) -> Result<CommandRecord> {
        if v.len() < 56 {
            return Err(LedgerError::Index(
                "a format 1 command's index value is malformed".into(),
            ));
        }
        Self::from_parts(v, &v[56..], answer)
    }

    /// The record from a value's first 56 bytes (result and digest), its stream's name and
    /// its answer.
    fn from_parts(v: &[u8], stream: &[u8], answer: Option<Vec<u8>>) -> Result<CommandRecord> {
        let u = |i: usize| u64::from_be_bytes(v[i..i + 8].try_into().expect("8"));
        Ok(CommandRecord {
            result: AppendResult {
                first_position: u(0),
                last_position: u(8),
                next_expected_revision: u(16),
            },
            digest: v[24..56].try_into().expect("32"),
            stream: String::from_utf8(stream.to_vec())
                .map_err(|_| LedgerError::Index("stream name is not UTF-8".into()))?,
            answer,
        })
    }

    /// The inverse of [`CommandRecord::encode`]; a value it did not write is an index error.
    fn decode(v: &[u8]) -> Result<CommandRecord> {
        let malformed = || LedgerError::Index("a command's index value is malformed".into());
        if v.len() < 59 {
            return Err(malformed());
        }
        let stream_len = usize::from(u16::from_be_bytes(v[56..58].try_into().expect("2")));
        let stream_end = 58 + stream_len;
        let (Some(stream), Some(&flag)) = (v.get(58..stream_end), v.get(stream_end)) else {
            return Err(malformed());
        };
        let answer = match flag {
            0 if v.len() == stream_end + 1 => None,
            1 => Some(v[stream_end + 1..].to_vec()),
            _ => return Err(malformed()),
        };
        Self::from_parts(v, stream, answer)
    }
}

/// How far the index reaches: the next position and where its record starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Checkpoint {
    pub next_position: u64,
    pub location: Location,
}

/// The key-value store the index lives in: sled on disk, or a map in memory for the
/// simulator tests (where thousands of opens must stay fast). Clones share the store.
#[derive(Clone)]
pub enum IndexStore {
    Sled(sled::Db),
    Memory(Arc<Mutex<BTreeMap<Vec<u8>, Vec<u8>>>>),
}

const TAG_POSITION: u8 = b'P';
const TAG_STREAM: u8 = b'S';
const TAG_HEAD: u8 = b'H';
/// A command in format 2: the answer inside the value (see [`CommandRecord::encode`]).
const TAG_COMMAND: u8 = b'c';
/// A command in format 1: the value without the stream's length, the answer under
/// `TAG_ANSWER_FORMAT_1`. A different tag from format 2's, so that a conversion cut short
/// by a crash leaves no value whose layout is in doubt.
const TAG_COMMAND_FORMAT_1: u8 = b'C';
const TAG_ANSWER_FORMAT_1: u8 = b'A';
const KEY_CHECKPOINT: &[u8] = b"K";
const KEY_FORMAT: &[u8] = b"F";

/// The layout of the index's keys and values. Format 1 (no `F` key) kept each answer under
/// its own `A` key and a position key at the first event of every append; format 2 keeps
/// the answer in the command's value, under another tag, and a position key only at every
/// [`POSITION_INDEX_STRIDE_EVENTS`]-th position. [`IndexStore::ensure_format`] converts
/// format 1's commands at open; its extra position keys stay, and read the same way.
pub(crate) const INDEX_FORMAT_VERSION: u32 = 2;

/// Format 1 commands converted per sled batch at open.
const FORMAT_CONVERSION_BATCH_COMMANDS_MAX: usize = 1_024;

pub(crate) fn key_position(position: u64) -> Vec<u8> {
    let mut k = vec![TAG_POSITION];
    k.extend_from_slice(&position.to_be_bytes());
    k
}

pub(crate) fn stream_prefix(stream: &str) -> Vec<u8> {
    let mut k = vec![TAG_STREAM];
    k.extend_from_slice(&(stream.len() as u16).to_be_bytes());
    k.extend_from_slice(stream.as_bytes());
    k
}

pub(crate) fn key_stream(stream: &str, revision: u64) -> Vec<u8> {
    let mut k = stream_prefix(stream);
    k.extend_from_slice(&revision.to_be_bytes());
    k
}

fn key_head(stream: &str) -> Vec<u8> {
    let mut k = vec![TAG_HEAD];
    k.extend_from_slice(stream.as_bytes());
    k
}

fn key_command(id: Uuid) -> Vec<u8> {
    let mut k = vec![TAG_COMMAND];
    k.extend_from_slice(id.as_bytes());
    k
}

/// One entry per event written, handed from the writer to the index.
#[derive(Clone, Debug)]
pub(crate) struct EventEntry {
    pub position: u64,
    pub location: Location,
    pub stream: Arc<str>,
    pub revision: u64,
    /// The event's place in its append, from 0.
    pub index_in_append: u64,
}

/// The index keeps a revision key for the first event of every append and for every
/// this-many-th event inside one; a stream read starts at the nearest key before what it
/// wants and reads the records in between from the segment (they are contiguous: an
/// append's records are written together). So an append of one event costs one revision
/// key, and a 100,000-event import chunk about 100 instead of 100,000 (issue 7), while a
/// read skips at most this many records minus one.
pub(crate) const INDEX_STRIDE_EVENTS: u64 = 1_024;

/// The index keeps a position key at every this-many-th position of the log, whatever the
/// appends. Positions run without a gap through the segments, one record after the other,
/// so a read from any position starts at the nearest key before it and steps over fewer
/// than this many records (about 60 us at most from the page cache), while an append of
/// one event no longer writes a position key of its own (issue 7: one sled key less per
/// command, out of five).
pub(crate) const POSITION_INDEX_STRIDE_EVENTS: u64 = 128;

/// The key-value pairs of a run of complete appends, ready to apply (see [`IndexStore::apply`]).
#[derive(Default)]
pub(crate) struct IndexBatch {
    pub kvs: Vec<(Vec<u8>, Vec<u8>)>,
    heads: BTreeMap<Arc<str>, Head>,
    pub events: u64,
}

impl IndexBatch {
    pub fn add_event(&mut self, e: &EventEntry, hash: [u8; 32]) {
        if e.position.is_multiple_of(POSITION_INDEX_STRIDE_EVENTS) {
            let mut location = Vec::with_capacity(16);
            e.location.encode(&mut location);
            self.kvs.push((key_position(e.position), location));
        }
        if e.index_in_append.is_multiple_of(INDEX_STRIDE_EVENTS) {
            let mut v = Vec::with_capacity(24);
            v.extend_from_slice(&e.position.to_be_bytes());
            e.location.encode(&mut v);
            self.kvs.push((key_stream(&e.stream, e.revision), v));
        }
        self.heads.insert(
            e.stream.clone(),
            Head {
                revision: e.revision,
                hash,
            },
        );
        self.events += 1;
    }

    pub fn add_command(&mut self, id: Uuid, rec: &CommandRecord) {
        self.kvs.push((key_command(id), rec.encode()));
    }

    /// Finishes the batch with the checkpoint it brings the index to.
    pub fn finish(mut self, cp: Checkpoint) -> IndexWrites {
        let tail_start = self.kvs.len();
        for (stream, head) in std::mem::take(&mut self.heads) {
            let mut v = head.revision.to_be_bytes().to_vec();
            v.extend_from_slice(&head.hash);
            self.kvs.push((key_head(&stream), v));
        }
        let mut v = cp.next_position.to_be_bytes().to_vec();
        cp.location.encode(&mut v);
        self.kvs.push((KEY_CHECKPOINT.to_vec(), v));
        IndexWrites {
            kvs: self.kvs,
            tail_start,
        }
    }
}

/// The most index keys written in one sled batch before the last one of a group. sled keeps
/// every node version a batch replaces until the batch ends, so one batch for a
/// 100,000-event append (200,000 keys before the index was sparse) held gigabytes (issue 7's
/// import); a recovery's catch-up batch of 16,384 small appends still has about 50,000.
pub(crate) const INDEX_APPLY_BATCH_KEYS_MAX: usize = 4_096;

/// The index keys of a run of complete appends. The entries from `tail_start` on are the
/// streams' heads and the checkpoint; they are always applied together, in one atomic
/// batch, after every entry before them.
pub(crate) struct IndexWrites {
    pub kvs: Vec<(Vec<u8>, Vec<u8>)>,
    pub tail_start: usize,
}

impl IndexWrites {
    /// The writes of two runs, `later` after `self`: both runs' position, revision and
    /// command keys, then both tails. A stream in both tails keeps `later`'s head and the
    /// checkpoint is `later`'s, because a sled batch (like the in-memory index) keeps the
    /// last value given for a key.
    pub fn then(self, later: IndexWrites) -> IndexWrites {
        let mut kvs = self.kvs;
        let tail = kvs.split_off(self.tail_start);
        let mut later_kvs = later.kvs;
        let later_tail = later_kvs.split_off(later.tail_start);
        kvs.extend(later_kvs);
        let tail_start = kvs.len();
        kvs.extend(tail);
        kvs.extend(later_tail);
        IndexWrites { kvs, tail_start }
    }
}

/// How often an open retries while sled's lock on a directory is still held.
pub const SLED_OPEN_LOCK_ATTEMPTS_MAX: u32 = 40;
/// The wait between two such retries; 40 of them bound the wait at 2 s.
pub const SLED_OPEN_LOCK_RETRY_INTERVAL_MS: u64 = 50;

/// sled's page cache per database opened by [`open_sled`] (sled's default is 1 GiB). The
/// index and the server's store are rebuilt from the log when lost and read mostly near
/// the end of the log, so a small cache costs little; the default let a 1,000,000-row
/// import grow the server past 8 GiB before its answer (issue 7).
pub const SLED_CACHE_CAPACITY_BYTES: u64 = 64 << 20;

/// Opens (or creates) a sled database in `dir`. sled releases a directory's lock from its
/// background threads a moment after the last handle of a database is dropped, so a reopen
/// in the same process (a restart, a test) waits for it, bounded, instead of failing. A lock
/// held by another process is still an error after the wait.
pub fn open_sled(dir: &Path) -> std::result::Result<sled::Db, sled::Error> {
    let mut attempts = 0;
    loop {
        match sled::Config::new()
            .path(dir)
            .cache_capacity(SLED_CACHE_CAPACITY_BYTES)
            .open()
        {
            Err(sled::Error::Io(error))
                if error.to_string().contains("could not acquire lock")
                    && attempts < SLED_OPEN_LOCK_ATTEMPTS_MAX =>
            {
                attempts += 1;
                std::thread::sleep(std::time::Duration::from_millis(
                    SLED_OPEN_LOCK_RETRY_INTERVAL_MS,
                ));
            }
            other => return other,
        }
    }
}

impl IndexStore {
    /// Opens (or creates) a sled index in `dir`.
    pub fn open_sled(dir: impl AsRef<Path>) -> Result<IndexStore> {
        Ok(IndexStore::Sled(open_sled(dir.as_ref())?))
    }

    /// An empty index in memory.
    pub fn memory() -> IndexStore {
        IndexStore::Memory(Arc::default())
    }

    /// An independent copy of an in-memory index as it is now, to stand for an index that
    /// lost its later batches in a crash. A sled index is shared, not copied.
    pub fn snapshot(&self) -> IndexStore {
        match self {
            IndexStore::Sled(db) => IndexStore::Sled(db.clone()),
            IndexStore::Memory(m) => {
                IndexStore::Memory(Arc::new(Mutex::new(m.lock().expect("lock").clone())))
            }
        }
    }

    /// Forgets everything, as deleting the index directory would.
    pub fn clear(&self) -> Result<()> {
        match self {
            IndexStore::Sled(db) => db.clear()?,
            IndexStore::Memory(m) => m.lock().expect("lock").clear(),
        }
        Ok(())
    }

    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        Ok(match self {
            IndexStore::Sled(db) => db.get(key)?.map(|v| v.to_vec()),
            IndexStore::Memory(m) => m.lock().expect("lock").get(key).cloned(),
        })
    }

    /// Up to `limit` pairs whose key starts with `prefix`, from `start` on.
    fn scan(&self, start: &[u8], prefix: &[u8], limit: usize) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let mut out = Vec::new();
        match self {
            IndexStore::Sled(db) => {
                for kv in db.range(start..) {
                    let (k, v) = kv?;
                    if !k.starts_with(prefix) || out.len() >= limit {
                        break;
                    }
                    out.push((k.to_vec(), v.to_vec()));
                }
            }
            IndexStore::Memory(m) => {
                let m = m.lock().expect("lock");
                for (k, v) in m.range(start.to_vec()..) {
                    if !k.starts_with(prefix) || out.len() >= limit {
                        break;
                    }
                    out.push((k.clone(), v.clone()));
                }
            }
        }
        Ok(out)
    }

    /// Applies a group's keys. Up to [`INDEX_APPLY_BATCH_KEYS_MAX`] keys go in one atomic
    /// batch with the heads and the checkpoint. A larger group's position, revision and
    /// command keys go first, in atomic batches of that size, and the heads and checkpoint
    /// last. That is safe without one batch for all: the keys describe records already
    /// synced to the log, so a key written before a crash is true afterwards (recovery only
    /// cuts records that were never synced, which were never indexed), and nothing reads a
    /// position, a revision or a command past the checkpoint and the heads: readers stop at
    /// the committed position, published only after the last batch, and recovery resumes
    /// from the checkpoint, writing the same keys again.
    pub(crate) fn apply(&self, writes: IndexWrites) -> Result<()> {
        let IndexWrites {
            mut kvs,
            tail_start,
        } = writes;
        assert!(
            tail_start < kvs.len(),
            "index writes end with the checkpoint"
        );
        match self {
            IndexStore::Sled(db) => {
                let tail = if kvs.len() <= INDEX_APPLY_BATCH_KEYS_MAX {
                    kvs
                } else {
                    let tail = kvs.split_off(tail_start);
                    let mut body = kvs.into_iter().peekable();
                    while body.peek().is_some() {
                        let mut b = sled::Batch::default();
                        for (k, v) in body.by_ref().take(INDEX_APPLY_BATCH_KEYS_MAX) {
                            b.insert(k, v);
                        }
                        db.apply_batch(b)?;
                    }
                    tail
                };
                let mut b = sled::Batch::default();
                for (k, v) in tail {
                    b.insert(k, v);
                }
                db.apply_batch(b)?;
            }
            IndexStore::Memory(m) => {
                let mut m = m.lock().expect("lock");
                for (k, v) in kvs {
                    m.insert(k, v);
                }
            }
        }
        Ok(())
    }

    /// Writes sled's buffers out; the log, not this, is what makes appends durable.
    pub(crate) fn flush(&self) -> Result<()> {
        if let IndexStore::Sled(db) = self {
            db.flush()?;
        }
        Ok(())
    }

    pub(crate) fn checkpoint(&self) -> Result<Option<Checkpoint>> {
        Ok(self.get(KEY_CHECKPOINT)?.map(|v| Checkpoint {
            next_position: u64::from_be_bytes(v[0..8].try_into().expect("8")),
            location: Location::decode(&v[8..24]),
        }))
    }

    /// The last key at or before `key` that starts with `prefix`.
    fn last_at_or_before(&self, key: &[u8], prefix: &[u8]) -> Result<Option<(Vec<u8>, Vec<u8>)>> {
        let found = match self {
            IndexStore::Sled(db) => match db.range(prefix..=key).next_back() {
                Some(kv) => {
                    let (k, v) = kv?;
                    Some((k.to_vec(), v.to_vec()))
                }
                None => None,
            },
            IndexStore::Memory(m) => m
                .lock()
                .expect("lock")
                .range(prefix.to_vec()..=key.to_vec())
                .next_back()
                .map(|(k, v)| (k.clone(), v.clone())),
        };
        Ok(found.filter(|(k, _)| k.starts_with(prefix)))
    }

    /// The indexed position nearest at or before `position`, and where its record starts.
    pub(crate) fn location_at_or_before(&self, position: u64) -> Result<Option<(u64, Location)>> {
        Ok(self
            .last_at_or_before(&key_position(position), &[TAG_POSITION])?
            .map(|(k, v)| {
                let found = u64::from_be_bytes(k[1..9].try_into().expect("8"));
                (found, Location::decode(&v))
            }))
    }

    /// Up to `limit` indexed (revision, position, location) of `stream`: the nearest at or
    /// before `from_revision`, then the ones after it.
    pub(crate) fn stream_entries(
        &self,
        stream: &str,
        from_revision: u64,
        limit: usize,
    ) -> Result<Vec<(u64, u64, Location)>> {
        let prefix = stream_prefix(stream);
        let start = match self.last_at_or_before(&key_stream(stream, from_revision), &prefix)? {
            Some((key, _)) => key,
            None => key_stream(stream, from_revision),
        };
        let rows = self.scan(&start, &prefix, limit)?;
        Ok(rows
            .into_iter()
            .map(|(k, v)| {
                let rev = u64::from_be_bytes(k[prefix.len()..].try_into().expect("8"));
                let pos = u64::from_be_bytes(v[0..8].try_into().expect("8"));
                (rev, pos, Location::decode(&v[8..24]))
            })
            .collect())
    }

    pub(crate) fn head(&self, stream: &str) -> Result<Option<Head>> {
        Ok(self.get(&key_head(stream))?.map(|v| Head {
            revision: u64::from_be_bytes(v[0..8].try_into().expect("8")),
            hash: v[8..40].try_into().expect("32"),
        }))
    }

    /// Every stream head, for the writer's in-memory table.
    pub(crate) fn all_heads(&self) -> Result<Vec<(String, Head)>> {
        let rows = self.scan(&[TAG_HEAD], &[TAG_HEAD], usize::MAX)?;
        rows.into_iter()
            .map(|(k, v)| {
                let stream = String::from_utf8(k[1..].to_vec())
                    .map_err(|_| LedgerError::Index("stream name is not UTF-8".into()))?;
                Ok((
                    stream,
                    Head {
                        revision: u64::from_be_bytes(v[0..8].try_into().expect("8")),
                        hash: v[8..40].try_into().expect("32"),
                    },
                ))
            })
            .collect()
    }

    /// The applied command `id`, with the answer kept with its append if it was made with
    /// one.
    pub(crate) fn command(&self, id: Uuid) -> Result<Option<CommandRecord>> {
        self.get(&key_command(id))?
            .map(|v| CommandRecord::decode(&v))
            .transpose()
    }

    /// Makes sure the index is in [`INDEX_FORMAT_VERSION`]'s layout before recovery reads
    /// it. An index without the `F` key is format 1 (or empty): its commands are converted
    /// in batches (each batch writes the new keys and removes the old ones atomically, so a
    /// crash leaves every command in exactly one layout and the next open goes on), and
    /// then the key is written. The checkpoint and the stream heads are kept as they are,
    /// so recovery's checks against them (events deleted or damaged behind the checkpoint,
    /// a re-hashed last event) hold across the upgrade. Returns the commands converted.
    pub(crate) fn ensure_format(&self) -> Result<u64> {
        let current = INDEX_FORMAT_VERSION.to_be_bytes();
        match self.get(KEY_FORMAT)? {
            Some(stored) if stored == current => return Ok(0),
            Some(stored) => {
                return Err(LedgerError::Index(format!(
                    "the index is in format {stored:?}, which this version does not know; \
                     delete the index directory to rebuild it from the log"
                )));
            }
            None => {}
        }
        let mut converted = 0;
        loop {
            let old = self.scan(
                &[TAG_COMMAND_FORMAT_1],
                &[TAG_COMMAND_FORMAT_1],
                FORMAT_CONVERSION_BATCH_COMMANDS_MAX,
            )?;
            if old.is_empty() {
                break;
            }
            let mut inserts = Vec::with_capacity(old.len());
            let mut removals = Vec::with_capacity(2 * old.len());
            for (key, value) in old {
                let id = Uuid::from_slice(&key[1..]).map_err(|_| {
                    LedgerError::Index("a format 1 command's index key is malformed".into())
                })?;
                let mut answer_key = vec![TAG_ANSWER_FORMAT_1];
                answer_key.extend_from_slice(id.as_bytes());
                let record = CommandRecord::decode_format_1(&value, self.get(&answer_key)?)?;
                inserts.push((key_command(id), record.encode()));
                removals.push(key);
                removals.push(answer_key);
                converted += 1;
            }
            self.write_atomically(inserts, removals)?;
        }
        self.write_atomically(vec![(KEY_FORMAT.to_vec(), current.to_vec())], Vec::new())?;
        Ok(converted)
    }

    /// Inserts and removes keys in one atomic batch.
    fn write_atomically(
        &self,
        inserts: Vec<(Vec<u8>, Vec<u8>)>,
        removals: Vec<Vec<u8>>,
    ) -> Result<()> {
        match self {
            IndexStore::Sled(db) => {
                let mut batch = sled::Batch::default();
                for key in removals {
                    batch.remove(key);
                }
                for (key, value) in inserts {
                    batch.insert(key, value);
                }
                db.apply_batch(batch)?;
            }
            IndexStore::Memory(m) => {
                let mut m = m.lock().expect("lock");
                for key in removals {
                    m.remove(&key);
                }
                for (key, value) in inserts {
                    m.insert(key, value);
                }
            }
        }
        Ok(())
    }
}
