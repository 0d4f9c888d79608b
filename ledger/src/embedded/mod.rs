//! The embedded backend: append-only segment files as the source of truth, a single
//! writer thread doing group commit, and a sled index kept behind the log.
//!
//! Threads: the writer owns the stream heads, checks expectations, encodes whole groups of
//! appends, writes them and calls `fdatasync` once per group. It hands each synced group
//! to the indexer, which applies the group's index entries in one atomic batch together
//! with the checkpoint, publishes the new committed position and only then answers the
//! appenders. Readers see exactly the committed prefix of the log.

mod index;
mod reader;
mod recovery;
mod writer;

#[cfg(test)]
mod tests;

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use async_trait::async_trait;
use tokio::sync::{mpsc, oneshot, watch};
use uuid::Uuid;

pub use index::{IndexStore, open_sled};
use reader::{SegmentReader, read_record_at};
use writer::{AppendRequest, CommandKey};

use crate::envelope::{GENESIS_HASH, envelope_hash, request_digest};
use crate::storage::{FsStorage, Storage};
use crate::types::*;
use crate::walk;

/// Tunables of the embedded log. The defaults suit production.
#[derive(Clone, Debug)]
pub struct EmbeddedOptions {
    /// A new segment file is started when an append would take the current one past this.
    pub segment_size_bytes: u64,
    /// Appends waiting for the writer; further appenders wait for room.
    pub append_queue_appends: usize,
    /// The most appends the writer puts in one group commit.
    pub group_appends_max: usize,
    /// Events buffered between a subscription's feeder and its consumer.
    pub subscription_buffer_events: usize,
}

impl Default for EmbeddedOptions {
    fn default() -> Self {
        EmbeddedOptions {
            segment_size_bytes: 256 * 1024 * 1024,
            append_queue_appends: 4096,
            group_appends_max: 1024,
            subscription_buffer_events: 1024,
        }
    }
}

/// Groups the writer may have handed to the indexer and not yet seen applied.
const INDEX_QUEUE_GROUPS: usize = 8;

/// How long a read waits for the index to hold the appends answered before it began.
const INDEX_CATCH_UP_TIMEOUT_MS: u64 = 30_000;

/// Events a subscription's feeder reads from the log at a time.
const SUBSCRIPTION_READ_EVENTS: usize = 1024;

/// State shared by the writer, the indexer and the readers.
pub(crate) struct Shared {
    storage: Arc<dyn Storage>,
    index: IndexStore,
    /// The number of synced events: every position below it is durable, and its append may
    /// have been answered. The indexer may not have reached it yet.
    synced: AtomicU64,
    /// The number of committed events: every position below it is durable and indexed.
    /// Readers read only below it, after waiting for it to reach `synced` as it was when
    /// they started (`EmbeddedLog::index_caught_up`).
    committed: AtomicU64,
    committed_tx: watch::Sender<u64>,
    /// The highest segment id in use; readers move on to the next segment up to it.
    last_segment: AtomicU64,
    /// Set by `close`; subscriptions end when they see it.
    closed: AtomicBool,
    /// Set once a write or index update failed: the log then refuses further appends.
    failed: Mutex<Option<LedgerError>>,
    /// Set once an index update failed: readers waiting for the index stop waiting.
    index_failed: AtomicBool,
    options: EmbeddedOptions,
}

impl Shared {
    fn fail(&self, e: LedgerError) {
        let mut f = self.failed.lock().expect("lock");
        if f.is_none() {
            *f = Some(e);
        }
    }

    fn failure(&self) -> Option<LedgerError> {
        self.failed.lock().expect("lock").clone()
    }
}

struct Inner {
    shared: Arc<Shared>,
    tx: Mutex<Option<mpsc::Sender<AppendRequest>>>,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

/// The embedded event log. Cheap to clone; all clones share one writer.
#[derive(Clone)]
pub struct EmbeddedLog {
    inner: Arc<Inner>,
}

impl EmbeddedLog {
    /// Opens (or creates) the log in `dir`: segments in `dir/segments`, the sled index in
    /// `dir/index`. Recovers from a crash and brings the index up to the log before
    /// returning. Blocking; call it at start-up.
    pub fn open(dir: impl AsRef<Path>, options: EmbeddedOptions) -> Result<EmbeddedLog> {
        let dir = dir.as_ref();
        let during = || format!("opening the event log in {}", dir.display());
        let storage = Arc::new(
            FsStorage::open(dir.join("segments"))
                .map_err(|e| LedgerError::from(e).at_open(during()))?,
        );
        let index = IndexStore::open_sled(dir.join("index")).map_err(|e| e.at_open(during()))?;
        EmbeddedLog::open_with(storage, index, options).map_err(|e| e.at_open(during()))
    }

    /// Opens the log on any storage and index, for example the simulated disk.
    pub fn open_with(
        storage: Arc<dyn Storage>,
        index: IndexStore,
        options: EmbeddedOptions,
    ) -> Result<EmbeddedLog> {
        assert!(options.append_queue_appends > 0 && options.group_appends_max > 0);
        assert!(options.subscription_buffer_events > 0);
        let recovered = recovery::recover(storage.as_ref(), &index)?;
        let (committed_tx, _) = watch::channel(recovered.next_position);
        let shared = Arc::new(Shared {
            storage,
            index,
            synced: AtomicU64::new(recovered.next_position),
            committed: AtomicU64::new(recovered.next_position),
            committed_tx,
            last_segment: AtomicU64::new(recovered.segment),
            closed: AtomicBool::new(false),
            failed: Mutex::new(None),
            index_failed: AtomicBool::new(false),
            options: options.clone(),
        });
        let (tx, rx) = mpsc::channel(options.append_queue_appends);
        let threads = writer::spawn(shared.clone(), recovered, rx)?;
        Ok(EmbeddedLog {
            inner: Arc::new(Inner {
                shared,
                tx: Mutex::new(Some(tx)),
                threads: Mutex::new(threads),
            }),
        })
    }

    /// Validates an append and hands it to the writer; answers once it is durable. A keyed
    /// append's id is remembered with the request's digest (computed only after the limits
    /// were checked) and `answer`; an unkeyed one has no answer.
    async fn submit(
        &self,
        stream: &str,
        expected: ExpectedRevision,
        events: Vec<NewEvent>,
        command_id: Uuid,
        keyed: bool,
        answer: Option<Vec<u8>>,
    ) -> Result<AppendResult> {
        assert!(keyed || answer.is_none(), "an answer needs a keyed append");
        validate_append(stream, &events, answer.as_deref())?;
        let key = if keyed {
            CommandKey::Keyed {
                digest: request_digest(stream, &events),
                answer,
            }
        } else {
            CommandKey::Unkeyed
        };
        if let Some(e) = self.inner.shared.failure() {
            return Err(e);
        }
        let tx = self
            .inner
            .tx
            .lock()
            .expect("lock")
            .clone()
            .ok_or(LedgerError::Closed)?;
        let (reply, replied) = oneshot::channel();
        let req = AppendRequest {
            stream: Arc::from(stream),
            expected,
            events,
            command_id,
            key,
            reply,
        };
        tx.send(req).await.map_err(|_| LedgerError::Closed)?;
        replied.await.map_err(|_| LedgerError::Closed)?
    }

    /// Stops taking appends, lets the queued ones finish, stops the threads and flushes the
    /// index. Appends after this fail with `Closed`. Needed before reopening the same
    /// directory in one process, because sled holds a lock on it.
    pub async fn close(&self) -> Result<()> {
        drop(self.inner.tx.lock().expect("lock").take());
        let threads = std::mem::take(&mut *self.inner.threads.lock().expect("lock"));
        tokio::task::spawn_blocking(move || {
            for t in threads {
                // A panicked thread already failed its appends; closing still completes.
                let _ = t.join();
            }
        })
        .await
        .map_err(|e| LedgerError::Backend(e.to_string()))?;
        let shared = &self.inner.shared;
        shared.closed.store(true, Ordering::Release);
        // Wake the subscriptions waiting for new events so that they see the log closed.
        shared.committed_tx.send_modify(|_| {});
        shared.index.flush()
    }

    /// The number of durable events, which is also the position the next one will get.
    /// Every append answered so far is counted; the index may still be applying the last
    /// few (reads wait for it).
    pub fn durable_position(&self) -> u64 {
        self.inner.shared.synced.load(Ordering::Acquire)
    }

    /// The number of events the index holds, which readers read up to: at most
    /// `durable_position`, and equal to it once the indexer has caught up.
    pub fn indexed_position(&self) -> u64 {
        self.inner.shared.committed.load(Ordering::Acquire)
    }

    /// Waits until the index holds every append answered before the call, so that a read
    /// sees what its caller was told is written: appends are answered once synced, before
    /// the indexer has applied them (usually within a millisecond). Bounded by
    /// `INDEX_CATCH_UP_TIMEOUT_MS`; a failed index update ends the wait with that error (a
    /// failed write of the log does not: what was answered before it is still indexed).
    async fn index_caught_up(&self) -> Result<()> {
        let shared = &self.inner.shared;
        let target = shared.synced.load(Ordering::Acquire);
        if shared.committed.load(Ordering::Acquire) >= target {
            return Ok(());
        }
        let mut committed_rx = shared.committed_tx.subscribe();
        let wait = async {
            loop {
                if *committed_rx.borrow_and_update() >= target {
                    return Ok(());
                }
                if shared.index_failed.load(Ordering::Acquire) {
                    return Err(shared.failure().unwrap_or(LedgerError::Closed));
                }
                if shared.closed.load(Ordering::Acquire) || committed_rx.changed().await.is_err() {
                    return Err(LedgerError::Closed);
                }
            }
        };
        tokio::time::timeout(
            std::time::Duration::from_millis(INDEX_CATCH_UP_TIMEOUT_MS),
            wait,
        )
        .await
        .map_err(|_| {
            LedgerError::Index(format!(
                "the index did not reach position {target} within \
                 {INDEX_CATCH_UP_TIMEOUT_MS} ms; the disk under the log's index may be stalled"
            ))
        })?
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Shared) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let shared = self.inner.shared.clone();
        tokio::task::spawn_blocking(move || f(&shared))
            .await
            .map_err(|e| LedgerError::Backend(e.to_string()))?
    }
}

/// A reader at the record of the committed `position`. The index has a key at every
/// `POSITION_INDEX_STRIDE_EVENTS`-th position, so the reader starts at the nearest key
/// before and steps over the records in between (fewer than the stride; the reader follows
/// them into the next segment), checking each position.
pub(crate) fn reader_at<'a>(
    storage: &'a dyn Storage,
    index: &IndexStore,
    last_segment: u64,
    position: u64,
) -> Result<SegmentReader<'a>> {
    let (indexed, start) = index.location_at_or_before(position)?.ok_or_else(|| {
        LedgerError::Corrupt(format!(
            "committed position {position} is missing from the index"
        ))
    })?;
    let mut reader = SegmentReader::new(storage, start, last_segment);
    for expected in indexed..position {
        next_committed(&mut reader, expected)?;
    }
    Ok(reader)
}

/// The next record of a reader of the committed log, which must hold `expected`.
fn next_committed(reader: &mut SegmentReader<'_>, expected: u64) -> Result<RecordedEvent> {
    let Some((e, _, _, _)) = reader.next_record()? else {
        return Err(LedgerError::Corrupt(format!(
            "the log ends before committed position {expected}"
        )));
    };
    if e.position != expected {
        return Err(LedgerError::Corrupt(format!(
            "found position {} where {expected} was expected",
            e.position
        )));
    }
    Ok(e)
}

/// Reads up to `max` committed events from `from` on, checking positions as it goes.
fn read_all_blocking(shared: &Shared, from: u64, max: usize) -> Result<Vec<RecordedEvent>> {
    read_all_resuming(shared, from, max, None).map(|(events, _)| events)
}

/// `read_all_blocking` that can start at `resume_at`, where a previous read of this log
/// ended (the record of `from`), instead of at the index's nearest position key before
/// `from`, which is up to `POSITION_INDEX_STRIDE_EVENTS - 1` records back. A subscription
/// at the live tail reads a few events per group commit, so stepping over those records on
/// every read would cost more than the read. Returns the events and where the next record
/// starts (`resume_at` again when nothing was read). Every record is still checked for its
/// position, so a wrong location is `Corrupt`, never a wrong event.
fn read_all_resuming(
    shared: &Shared,
    from: u64,
    max: usize,
    resume_at: Option<index::Location>,
) -> Result<(Vec<RecordedEvent>, Option<index::Location>)> {
    let committed = shared.committed.load(Ordering::Acquire);
    if from >= committed || max == 0 {
        return Ok((Vec::new(), resume_at));
    }
    let count = (committed - from).min(max.min(READ_EVENTS_MAX) as u64) as usize;
    let last_segment = shared.last_segment.load(Ordering::Acquire);
    let storage = shared.storage.as_ref();
    let mut reader = match resume_at {
        Some(location) => SegmentReader::new(storage, location, last_segment),
        None => reader_at(storage, &shared.index, last_segment, from)?,
    };
    let mut out = Vec::with_capacity(count);
    while out.len() < count {
        out.push(next_committed(&mut reader, from + out.len() as u64)?);
    }
    Ok((out, Some(reader.location())))
}

/// Reads up to `max` committed events of `stream` from `from_revision` on. The index holds
/// the stream's revisions only at the first event of each append and at every
/// `INDEX_STRIDE_EVENTS`-th inside one; the revisions after an indexed one follow it in the
/// segment, one record after the other, up to the next indexed revision (the same append)
/// or, after the last one, for as long as the records continue the stream.
fn read_stream_blocking(
    shared: &Shared,
    stream: &str,
    from_revision: u64,
    max: usize,
) -> Result<Vec<RecordedEvent>> {
    let committed = shared.committed.load(Ordering::Acquire);
    let max = max.min(READ_EVENTS_MAX);
    let last_segment = shared.last_segment.load(Ordering::Acquire);
    // Enough indexed entries to cover `max` events even when every one starts a run.
    let entries = shared
        .index
        .stream_entries(stream, from_revision, max + 1)?;
    let mut out: Vec<RecordedEvent> = Vec::with_capacity(max.min(1024));
    for (i, &(revision, position, location)) in entries.iter().enumerate() {
        // The revisions this entry's run holds: up to the next entry, or open-ended.
        let run_end = entries.get(i + 1).map(|next| next.0);
        if let Some(end) = run_end
            && end <= from_revision
        {
            continue;
        }
        if run_end == Some(revision + 1) {
            // A run of one event (an append of one): one random read, not a buffered scan.
            if out.len() == max || position >= committed {
                return Ok(out);
            }
            let (e, _) = read_record_at(shared.storage.as_ref(), location)?;
            check_indexed(&e, stream, revision, position)?;
            push_in_order(&mut out, e);
            continue;
        }
        let mut reader = SegmentReader::new(shared.storage.as_ref(), location, last_segment);
        let mut expected_revision = revision;
        let mut expected_position = position;
        loop {
            if out.len() == max || expected_position >= committed {
                return Ok(out);
            }
            if run_end.is_some_and(|end| expected_revision >= end) {
                break;
            }
            let Some((e, _, _, _)) = reader.next_record()? else {
                return Err(LedgerError::Corrupt(format!(
                    "the log ends before committed position {expected_position}"
                )));
            };
            let continues = e.stream == stream
                && e.revision == expected_revision
                && e.position == expected_position;
            if !continues && run_end.is_none() && expected_revision > revision {
                // The last run ends where its append ends; the next record is another's.
                return Ok(out);
            }
            check_indexed(&e, stream, expected_revision, expected_position)?;
            if e.revision >= from_revision {
                push_in_order(&mut out, e);
            }
            expected_revision += 1;
            expected_position += 1;
        }
    }
    Ok(out)
}

/// Checks that the record the index (or the run after an indexed record) leads to is the
/// event expected there.
fn check_indexed(e: &RecordedEvent, stream: &str, revision: u64, position: u64) -> Result<()> {
    if e.stream != stream || e.revision != revision || e.position != position {
        return Err(LedgerError::Corrupt(format!(
            "index says {stream:?}@{revision} is position {position}, the log holds \
             {:?}@{} at position {}",
            e.stream, e.revision, e.position
        )));
    }
    Ok(())
}

/// Adds the next event of a stream read, which must continue the chain of the one before.
fn push_in_order(out: &mut Vec<RecordedEvent>, e: RecordedEvent) {
    if let Some(prev) = out.last() {
        assert_eq!(e.predecessor_hash, prev.hash, "chain broken inside a read");
    }
    out.push(e);
}

fn verify_blocking(shared: &Shared) -> Result<VerifyReport> {
    let committed = shared.committed.load(Ordering::Acquire);
    let last_segment = shared.last_segment.load(Ordering::Acquire);
    let segments: Vec<u64> = shared
        .storage
        .list_segments()?
        .into_iter()
        .filter(|&id| id <= last_segment)
        .collect();
    let storage = shared.storage.as_ref();
    let read = |segment: u64, offset: u64, buf: &mut [u8]| storage.read_at(segment, offset, buf);
    let walked = walk::walk_segments(&segments, &read, committed, walk::available_threads())?;
    let streams_checked = walked.streams_checked();
    let first_break = match walked.first_break {
        Some(b) => Some(chain_break(b)),
        None if walked.events_checked < committed => Some(ChainBreak {
            position: walked.events_checked,
            stream: String::new(),
            revision: 0,
            event_id: None,
            reason: "the log ends before the committed position".into(),
        }),
        None => None,
    };
    Ok(VerifyReport {
        events_checked: walked.events_checked,
        streams_checked,
        first_break,
    })
}

fn chain_break(b: walk::WalkBreak) -> ChainBreak {
    ChainBreak {
        position: b.position,
        stream: b.stream.unwrap_or_default(),
        revision: b.revision.unwrap_or(0),
        event_id: b.event_id,
        reason: format!("{} (segment {} at byte {})", b.fault, b.segment, b.offset),
    }
}

/// Why `e` does not follow `head` in its stream at `position`, if it does not.
pub(crate) fn chain_fault(
    e: &RecordedEvent,
    position: u64,
    head: Option<(u64, [u8; 32])>,
) -> Option<String> {
    if e.position != position {
        return Some(format!(
            "position {} where {position} was expected",
            e.position
        ));
    }
    let (want_revision, want_hash) = match head {
        None => (0, GENESIS_HASH),
        Some((r, h)) => (r + 1, h),
    };
    if e.revision != want_revision {
        return Some(format!(
            "revision {} where {want_revision} was expected",
            e.revision
        ));
    }
    if e.predecessor_hash != want_hash {
        return Some("predecessor hash differs from the previous event's hash".into());
    }
    if envelope_hash(e) != e.hash {
        return Some("own hash does not match the envelope's contents".into());
    }
    None
}

#[async_trait]
impl EventLog for EmbeddedLog {
    async fn append_answered(
        &self,
        stream: &str,
        expected: ExpectedRevision,
        events: Vec<NewEvent>,
        command_id: Uuid,
        answer: Option<Vec<u8>>,
    ) -> Result<AppendResult> {
        self.submit(stream, expected, events, command_id, true, answer)
            .await
    }

    async fn append_unkeyed(
        &self,
        stream: &str,
        expected: ExpectedRevision,
        events: Vec<NewEvent>,
        command_id: Uuid,
    ) -> Result<AppendResult> {
        self.submit(stream, expected, events, command_id, false, None)
            .await
    }

    async fn command_answer(
        &self,
        stream: &str,
        command_id: Uuid,
    ) -> Result<Option<CommandAnswer>> {
        // One point read, nearly always from sled's cache, so it runs in place rather than
        // on the blocking pool: this sits on the path of every command sent with an id.
        // After the wait the index holds every append answered before this call.
        self.index_caught_up().await?;
        let index = &self.inner.shared.index;
        let Some(record) = index.command(command_id)? else {
            return Ok(None);
        };
        if record.stream != stream {
            return Ok(None);
        }
        Ok(record.answer.map(|answer| CommandAnswer {
            result: record.result,
            answer,
        }))
    }

    async fn command_stream(&self, command_id: Uuid) -> Result<Option<String>> {
        // One point read, as in `command_answer`.
        self.index_caught_up().await?;
        Ok(self
            .inner
            .shared
            .index
            .command(command_id)?
            .map(|record| record.stream))
    }

    async fn read_stream(
        &self,
        stream: &str,
        from_revision: u64,
        max: usize,
    ) -> Result<Vec<RecordedEvent>> {
        self.index_caught_up().await?;
        let stream = stream.to_owned();
        self.blocking(move |s| read_stream_blocking(s, &stream, from_revision, max))
            .await
    }

    async fn read_all(&self, from_position: u64, max: usize) -> Result<Vec<RecordedEvent>> {
        self.index_caught_up().await?;
        self.blocking(move |s| read_all_blocking(s, from_position, max))
            .await
    }

    async fn subscribe_all(&self, from_position: u64) -> Result<Subscription> {
        let shared = self.inner.shared.clone();
        let (tx, rx) = mpsc::channel(shared.options.subscription_buffer_events);
        let mut committed_rx = shared.committed_tx.subscribe();
        let task = tokio::spawn(async move {
            // One loop serves catch-up and live alike: it always reads the committed log
            // from the next position it owes, so there is no seam to cross.
            let mut next = from_position;
            // Where the record of `next` starts, once a read has ended there.
            let mut resume_at = None;
            loop {
                let committed = *committed_rx.borrow_and_update();
                if next < committed {
                    let s = shared.clone();
                    let batch = tokio::task::spawn_blocking(move || {
                        read_all_resuming(&s, next, SUBSCRIPTION_READ_EVENTS, resume_at)
                    })
                    .await
                    .map_err(|e| LedgerError::Backend(e.to_string()))
                    .and_then(|r| r);
                    match batch {
                        Ok((events, location)) => {
                            resume_at = location;
                            for e in events {
                                assert_eq!(e.position, next, "subscription skipped or repeated");
                                next += 1;
                                if tx.send(Ok(e)).await.is_err() {
                                    return;
                                }
                            }
                        }
                        Err(e) => {
                            let _ = tx.send(Err(e)).await;
                            return;
                        }
                    }
                } else if shared.closed.load(Ordering::Acquire)
                    || committed_rx.changed().await.is_err()
                {
                    return;
                }
            }
        });
        Ok(Subscription { rx, task })
    }

    async fn verify(&self) -> Result<VerifyReport> {
        self.index_caught_up().await?;
        self.blocking(verify_blocking).await
    }
}
