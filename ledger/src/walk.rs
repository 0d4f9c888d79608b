//! The hash-chain walk (AUD-3) shared by `EventLog::verify` of the embedded log, the check
//! every open of the embedded log runs, and the replay tool's read-only `verify`.
//!
//! It checks, for every record from the first segment on: the CRC, the record's structure,
//! the global position (0, 1, 2, ... without a gap), the stream's revision (0, 1, 2, ...),
//! the predecessor hash against the stream's previous event, and the own hash over the
//! canonical bytes. It is built for speed, because it runs at every start:
//!
//! - Large sequential reads (`WALK_READ_BYTES` at a time) into one reused buffer.
//! - No event is decoded and nothing is allocated per event. The canonical bytes the own
//!   hash covers are a slice of the record body as stored (`flags, position, canonical
//!   bytes, own hash`), so hashing needs no re-encoding; the fields the chain checks need
//!   (position, stream, revision, predecessor hash) are read in place.
//! - The CRC, the structure and the own hash of a record depend on that record alone (it
//!   stores its predecessor's hash), so they are computed in parallel over all cores, a
//!   chunk of records per thread. Only the chain check (positions, revisions, predecessor
//!   hashes against the stream heads) runs sequentially, in log order, so the first broken
//!   event is the same one a sequential walk names.

use std::collections::HashMap;
use std::fmt;
use std::io;

use chrono::{TimeZone, Utc};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::envelope::{
    FLAG_ANSWER, FLAG_LAST_OF_APPEND, FLAG_UNKEYED, FLAGS_KNOWN, GENESIS_HASH, HASH_DOMAIN_TAG,
    RECORD_HEADER_BYTES, body_len_limits,
};
use crate::types::{ANSWER_BYTES_MAX, EVENT_BYTES_MAX};

/// Bytes read from a segment at a time (about 12,000 records). Each read's records are
/// hashed by threads started for it, so a read must be large enough that starting them costs
/// little (1 MiB reads cost about a fifth more CPU in all, measured on 10,000,000 events),
/// and small enough that the bytes mostly stay in cache from the read to the chain check.
pub const WALK_READ_BYTES: usize = 4 * 1024 * 1024;

/// The first read of a walk; each further read doubles, up to `WALK_READ_BYTES`.
const WALK_READ_FIRST_BYTES: usize = 64 * 1024;

/// The most threads that hash records at once.
pub const WALK_THREADS_MAX: usize = 16;

/// Records below which a chunk is checked on the calling thread alone, because starting a
/// thread would cost more than it saves.
const PARALLEL_RECORDS_MIN: usize = 512;

/// Records a thread claims at a time; the threads claim blocks until none is left, so a
/// thread that was descheduled does not hold the others up.
const PARALLEL_BLOCK_RECORDS: usize = 64;

/// Reads bytes of a segment: `(segment, offset, buffer)` to the number of bytes read, 0 at
/// the end of the segment.
pub type ReadAt<'a> = dyn Fn(u64, u64, &mut [u8]) -> io::Result<usize> + Sync + 'a;

/// Why the walk stopped at an event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fault {
    /// The bytes are not a valid record: a wrong CRC, an implausible length, a field
    /// that runs past the record. The text says which.
    Unreadable(String),
    /// The segment ends inside a record.
    CutShort,
    /// The record holds another position than the next one of the log.
    Position { found: u64, expected: u64 },
    /// The record holds another revision than its stream's next one.
    Revision { found: u64, expected: u64 },
    /// The predecessor hash is not the hash of the stream's previous event.
    PredecessorHash,
    /// The own hash does not match the record's contents.
    OwnHash,
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Fault::Unreadable(reason) => write!(f, "the record cannot be read: {reason}"),
            Fault::CutShort => write!(f, "the record is cut short by the end of the segment"),
            Fault::Position { found, expected } => write!(
                f,
                "position {found} where {expected} was expected (an event is missing or out of order)"
            ),
            Fault::Revision { found, expected } => write!(
                f,
                "revision {found} where {expected} was expected (an event of the stream is missing or out of order)"
            ),
            Fault::PredecessorHash => write!(
                f,
                "predecessor hash differs from the previous event's hash (an event before it \
                 was changed, removed or reordered)"
            ),
            Fault::OwnHash => write!(
                f,
                "own hash does not match the envelope's contents (the event was edited)"
            ),
        }
    }
}

/// The first event at which the walk found the log broken.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WalkBreak {
    /// The ledger position the event should have: the number of events before it.
    pub position: u64,
    pub segment: u64,
    /// Where the record starts in its segment.
    pub offset: u64,
    /// The stream, revision and event id, when the record could be read that far.
    pub stream: Option<String>,
    pub revision: Option<u64>,
    pub event_id: Option<Uuid>,
    pub fault: Fault,
}

impl fmt::Display for WalkBreak {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "event number {} of the log (ledger position {}",
            self.position + 1,
            self.position
        )?;
        if let Some(stream) = &self.stream {
            write!(f, ", stream {stream:?}")?;
        }
        if let Some(revision) = self.revision {
            write!(f, ", revision {revision}")?;
        }
        if let Some(id) = self.event_id {
            write!(f, ", event {id}")?;
        }
        write!(f, ")")?;
        write!(
            f,
            " in segment {} at byte {}: {}",
            self.segment, self.offset, self.fault
        )
    }
}

/// A stream's last event as the walk found it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WalkHead {
    pub revision: u64,
    pub hash: [u8; 32],
}

/// A fast hasher for stream names (FNV-1a over 8-byte words). The walk looks a stream up
/// once per event, and SipHash's protection against chosen keys buys nothing here: the
/// keys come from our own log, and a slow lookup costs every start.
#[derive(Clone, Copy, Debug, Default)]
pub struct StreamHasher;

impl std::hash::BuildHasher for StreamHasher {
    type Hasher = StreamHash;
    fn build_hasher(&self) -> StreamHash {
        StreamHash(0xcbf2_9ce4_8422_2325)
    }
}

/// The state of [`StreamHasher`].
#[derive(Clone, Copy, Debug)]
pub struct StreamHash(u64);

impl std::hash::Hasher for StreamHash {
    fn write(&mut self, bytes: &[u8]) {
        let mut words = bytes.chunks_exact(8);
        for w in &mut words {
            self.0 = (self.0 ^ u64::from_le_bytes(w.try_into().expect("8")))
                .wrapping_mul(0x0000_0100_0000_01b3)
                .rotate_left(29);
        }
        for &b in words.remainder() {
            self.0 = (self.0 ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    fn finish(&self) -> u64 {
        // Mix the high bits down: hashbrown takes its control bits from the top.
        let x = self.0 ^ (self.0 >> 32);
        x.wrapping_mul(0x9e37_79b9_7f4a_7c15)
    }
}

/// What a walk found.
#[derive(Clone, Debug, Default)]
pub struct WalkOutcome {
    /// Events that passed every check.
    pub events_checked: u64,
    /// Every stream's last checked event, keyed by the stream's name.
    pub heads: HashMap<Box<[u8]>, WalkHead, StreamHasher>,
    pub first_break: Option<WalkBreak>,
    /// Where the walk stopped: the segment and the offset after the last checked record.
    pub end_segment: u64,
    pub end_offset: u64,
}

impl WalkOutcome {
    pub fn streams_checked(&self) -> u64 {
        self.heads.len() as u64
    }
}

/// Walks the records of `segments` (ids in log order) and stops at the first break, at
/// the end of the last segment, or after `events_max` events (a live log's committed
/// prefix; bytes after it are not looked at). Reads with `read_at`; `threads` is how many
/// threads may hash (1 for the calling thread only).
pub fn walk_segments(
    segments: &[u64],
    read_at: &ReadAt<'_>,
    events_max: u64,
    threads: usize,
) -> io::Result<WalkOutcome> {
    let threads = threads.clamp(1, WALK_THREADS_MAX);
    let mut outcome = WalkOutcome::default();
    // One buffer for the whole walk: buf[..end] holds unconsumed bytes of the segment from
    // `buf_offset` on. Reads start small (a small log is walked at every open in tests)
    // and double up to WALK_READ_BYTES.
    let mut buf: Vec<u8> = Vec::new();
    let mut read_bytes = WALK_READ_FIRST_BYTES;
    let mut spans: Vec<Span> = Vec::new();
    let mut checks: Vec<Checked> = Vec::new();
    for &segment in segments {
        outcome.end_segment = segment;
        outcome.end_offset = 0;
        let mut buf_offset = 0u64;
        let mut end = 0usize;
        let mut segment_done = false;
        loop {
            if outcome.events_checked >= events_max {
                return Ok(outcome);
            }
            if !segment_done {
                // Room for a whole read after the cut-off record kept at the front.
                if buf.len() < end + read_bytes {
                    buf.resize(end + read_bytes, 0);
                }
                let n = read_full(
                    read_at,
                    segment,
                    buf_offset + end as u64,
                    &mut buf[end..end + read_bytes],
                )?;
                segment_done = n < read_bytes;
                end += n;
                read_bytes = (read_bytes * 2).min(WALK_READ_BYTES);
            }
            let budget = events_max - outcome.events_checked;
            let split = split_records(&buf[..end], budget, &mut spans);
            check_in_parallel(&buf, &spans, &mut checks, threads);
            for (span, check) in spans.iter().zip(&checks) {
                let offset = buf_offset + span.start as u64;
                if let Some(b) = chain_step(&mut outcome, &buf, span, check, segment, offset) {
                    outcome.first_break = Some(b);
                    return Ok(outcome);
                }
                outcome.end_offset = offset + span.len as u64;
            }
            let consumed = spans.last().map_or(0, |s| s.start + s.len);
            match split {
                Split::NeedMore => {
                    buf.copy_within(consumed..end, 0);
                    end -= consumed;
                    buf_offset += consumed as u64;
                    if segment_done {
                        if end == 0 {
                            break;
                        }
                        // The segment has no more bytes: what is left is a cut-short record.
                        outcome.first_break = Some(WalkBreak {
                            position: outcome.events_checked,
                            segment,
                            offset: buf_offset,
                            stream: None,
                            revision: None,
                            event_id: None,
                            fault: Fault::CutShort,
                        });
                        return Ok(outcome);
                    }
                }
                Split::Budget => return Ok(outcome),
                Split::BadLength(at, reason) => {
                    outcome.first_break = Some(WalkBreak {
                        position: outcome.events_checked,
                        segment,
                        offset: buf_offset + at as u64,
                        stream: None,
                        revision: None,
                        event_id: None,
                        fault: Fault::Unreadable(reason),
                    });
                    return Ok(outcome);
                }
            }
        }
    }
    Ok(outcome)
}

/// The number of threads worth using on this machine.
pub fn available_threads() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .min(WALK_THREADS_MAX)
}

fn read_full(read_at: &ReadAt<'_>, segment: u64, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        match read_at(segment, offset + done as u64, &mut buf[done..]) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

/// A whole record in the buffer: header start and total length.
#[derive(Clone, Copy, Debug)]
struct Span {
    start: usize,
    len: usize,
}

/// Why splitting the buffer into records stopped.
enum Split {
    /// The buffer ends (possibly inside a record): read more.
    NeedMore,
    /// `events_max` records were found.
    Budget,
    /// The length field at this offset is implausible.
    BadLength(usize, String),
}

/// Finds the whole records at the start of `buf`, at most `budget` of them.
fn split_records(buf: &[u8], budget: u64, spans: &mut Vec<Span>) -> Split {
    spans.clear();
    let mut at = 0;
    loop {
        if spans.len() as u64 >= budget {
            return Split::Budget;
        }
        if buf.len() - at < RECORD_HEADER_BYTES {
            return Split::NeedMore;
        }
        let len = u32::from_le_bytes(buf[at..at + 4].try_into().expect("4")) as usize;
        let (min, max) = body_len_limits();
        if len < min || len > max {
            return Split::BadLength(at, format!("implausible record length {len}"));
        }
        let total = RECORD_HEADER_BYTES + len;
        debug_assert!(total <= EVENT_BYTES_MAX);
        if buf.len() - at < total {
            return Split::NeedMore;
        }
        spans.push(Span {
            start: at,
            len: total,
        });
        at += total;
    }
}

/// What the parallel pass found out about one record. Offsets are into the record's body.
#[derive(Clone, Copy, Debug, Default)]
struct Checked {
    /// Why the record is unreadable (CRC or structure), if it is.
    unreadable: Option<&'static str>,
    position: u64,
    stream: (usize, usize),
    revision: u64,
    /// Where the canonical bytes start: after the flags, the position and the answer.
    canonical_at: usize,
    predecessor_at: usize,
    own_hash_matches: bool,
}

fn check_in_parallel(buf: &[u8], spans: &[Span], checks: &mut Vec<Checked>, threads: usize) {
    checks.clear();
    checks.resize(spans.len(), Checked::default());
    let check_all = |spans: &[Span], out: &mut [Checked]| {
        for (span, out) in spans.iter().zip(out.iter_mut()) {
            *out = check_record(&buf[span.start..span.start + span.len]);
        }
    };
    if threads == 1 || spans.len() < PARALLEL_RECORDS_MIN {
        check_all(spans, checks);
        return;
    }
    let blocks: Vec<std::sync::Mutex<(&[Span], &mut [Checked])>> = spans
        .chunks(PARALLEL_BLOCK_RECORDS)
        .zip(checks.chunks_mut(PARALLEL_BLOCK_RECORDS))
        .map(std::sync::Mutex::new)
        .collect();
    let next = std::sync::atomic::AtomicUsize::new(0);
    let work = || {
        loop {
            let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let Some(block) = blocks.get(i) else {
                return;
            };
            let mut block = block.lock().expect("a block is claimed once");
            let (spans, out) = &mut *block;
            check_all(spans, out);
        }
    };
    std::thread::scope(|scope| {
        for _ in 1..threads {
            scope.spawn(work);
        }
        work();
    });
}

/// Checks what a record can tell about itself: CRC, structure and own hash.
fn check_record(record: &[u8]) -> Checked {
    let body = &record[RECORD_HEADER_BYTES..];
    let mut crc = crc32fast::Hasher::new();
    crc.update(&record[0..4]);
    crc.update(body);
    if crc.finalize() != u32::from_le_bytes(record[4..8].try_into().expect("4")) {
        return Checked {
            unreadable: Some("checksum mismatch"),
            ..Checked::default()
        };
    }
    match parse_body(body) {
        Ok(mut c) => {
            // The canonical bytes sit between the flags, position and answer and the own hash.
            let canonical = &body[c.canonical_at..body.len() - 32];
            let hash: [u8; 32] = Sha256::new()
                .chain_update(HASH_DOMAIN_TAG)
                .chain_update(canonical)
                .finalize()
                .into();
            c.own_hash_matches = hash == body[body.len() - 32..];
            c
        }
        Err(reason) => Checked {
            unreadable: Some(reason),
            ..Checked::default()
        },
    }
}

/// Reads the fields the chain needs in place and checks that the body is well formed, as
/// strictly as decoding it would.
fn parse_body(body: &[u8]) -> Result<Checked, &'static str> {
    let mut at = 0usize;
    let mut take = |n: usize| -> Result<usize, &'static str> {
        if body.len() - at < n {
            return Err("field runs past the record");
        }
        let start = at;
        at += n;
        Ok(start)
    };
    let u32_at = |i: usize| u32::from_be_bytes(body[i..i + 4].try_into().expect("4"));
    let u64_at = |i: usize| u64::from_be_bytes(body[i..i + 8].try_into().expect("8"));
    let flags = body[take(1)?];
    if flags & !FLAGS_KNOWN != 0 {
        return Err("unknown record flags");
    }
    if flags & FLAG_UNKEYED != 0 && (flags & FLAG_LAST_OF_APPEND == 0 || flags & FLAG_ANSWER != 0) {
        return Err("an unkeyed command's mark on a record that does not end its append");
    }
    let position = u64_at(take(8)?);
    if flags & FLAG_ANSWER != 0 {
        if flags & FLAG_LAST_OF_APPEND == 0 {
            return Err("a command's answer on a record that does not end its append");
        }
        let answer_len = u32_at(take(4)?) as usize;
        if answer_len > ANSWER_BYTES_MAX {
            return Err("a command's answer longer than the ledger allows");
        }
        take(answer_len)?;
    }
    let canonical_at = take(16)?;
    let stream_len = u32_at(take(4)?) as usize;
    let stream_at = take(stream_len)?;
    let revision = u64_at(take(8)?);
    let type_len = u32_at(take(4)?) as usize;
    let type_at = take(type_len)?;
    take(2)?;
    let seconds = u64_at(take(8)?) as i64;
    let nanos = u32_at(take(4)?);
    let actor_len = u32_at(take(4)?) as usize;
    let actor_at = take(actor_len)?;
    take(16 + 16)?;
    let payload_len = u32_at(take(4)?) as usize;
    take(payload_len)?;
    let predecessor_at = take(32)?;
    take(32)?;
    if at != body.len() {
        return Err("trailing bytes in record");
    }
    for (start, len) in [
        (stream_at, stream_len),
        (type_at, type_len),
        (actor_at, actor_len),
    ] {
        if std::str::from_utf8(&body[start..start + len]).is_err() {
            return Err("string is not UTF-8");
        }
    }
    if Utc.timestamp_opt(seconds, nanos).single().is_none() {
        return Err("recorded time out of range");
    }
    Ok(Checked {
        unreadable: None,
        position,
        stream: (stream_at, stream_len),
        revision,
        canonical_at,
        predecessor_at,
        own_hash_matches: false,
    })
}

/// Checks one record against the log so far, in log order, and advances the walk.
fn chain_step(
    outcome: &mut WalkOutcome,
    buf: &[u8],
    span: &Span,
    check: &Checked,
    segment: u64,
    offset: u64,
) -> Option<WalkBreak> {
    let position = outcome.events_checked;
    let body = &buf[span.start + RECORD_HEADER_BYTES..span.start + span.len];
    let broken = |stream: Option<&[u8]>, revision, event_id, fault| WalkBreak {
        position,
        segment,
        offset,
        stream: stream.map(|s| String::from_utf8_lossy(s).into_owned()),
        revision,
        event_id,
        fault,
    };
    if let Some(reason) = check.unreadable {
        return Some(broken(None, None, None, Fault::Unreadable(reason.into())));
    }
    let stream = &body[check.stream.0..check.stream.0 + check.stream.1];
    let event_id = Uuid::from_bytes(
        body[check.canonical_at..check.canonical_at + 16]
            .try_into()
            .expect("16"),
    );
    let here = |fault| broken(Some(stream), Some(check.revision), Some(event_id), fault);
    if check.position != position {
        return Some(here(Fault::Position {
            found: check.position,
            expected: position,
        }));
    }
    let head = outcome.heads.get(stream).copied();
    let (want_revision, want_hash) = match head {
        None => (0, GENESIS_HASH),
        Some(h) => (h.revision + 1, h.hash),
    };
    if check.revision != want_revision {
        return Some(here(Fault::Revision {
            found: check.revision,
            expected: want_revision,
        }));
    }
    if body[check.predecessor_at..check.predecessor_at + 32] != want_hash {
        return Some(here(Fault::PredecessorHash));
    }
    if !check.own_hash_matches {
        return Some(here(Fault::OwnHash));
    }
    let new_head = WalkHead {
        revision: check.revision,
        hash: body[body.len() - 32..].try_into().expect("32"),
    };
    match outcome.heads.get_mut(stream) {
        Some(h) => *h = new_head,
        None => {
            outcome.heads.insert(stream.into(), new_head);
        }
    }
    outcome.events_checked += 1;
    None
}
