//! The single writer (group commit) and the indexer behind it.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc as std_mpsc;
use std::thread::JoinHandle;

use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

use super::index::{
    Checkpoint, CommandRecord, EventEntry, Head, IndexBatch, IndexWrites, Location,
};
use super::recovery::Recovered;
use super::{INDEX_QUEUE_GROUPS, Shared};
use crate::envelope::{
    FLAG_LAST_OF_APPEND, FLAG_UNKEYED, answer_record_bytes, encode_record, record_bytes, seal,
};
use crate::types::*;

/// Once the writer's table of commands not yet indexed grows past this, it drops the
/// entries the index already holds.
pub(crate) const RECENT_COMMANDS_PRUNE_AT: usize = 4096;

/// One append waiting for the writer.
pub(crate) struct AppendRequest {
    pub stream: Arc<str>,
    pub expected: ExpectedRevision,
    pub events: Vec<NewEvent>,
    pub command_id: Uuid,
    pub key: CommandKey,
    pub reply: oneshot::Sender<Result<AppendResult>>,
}

/// Whether the log remembers an append's command id, and what it keeps with it.
pub(crate) enum CommandKey {
    /// The id is indexed: an append with it again answers the first result.
    Keyed {
        /// Of the stream and the events, to tell a retry from another append under the id.
        digest: [u8; 32],
        /// Kept in the append's last record (AUD-4), if the caller gave one.
        answer: Option<Vec<u8>>,
    },
    /// The id is only recorded with the events (`EventLog::append_unkeyed`).
    Unkeyed,
}

type Reply = (oneshot::Sender<Result<AppendResult>>, Result<AppendResult>);

/// A synced group's index entries on their way to the indexer, with the number of events
/// the log holds after it.
struct SyncedGroup {
    writes: IndexWrites,
    next_position: u64,
}

impl SyncedGroup {
    /// The two groups as one, `later` after `self`: the indexer applies the groups that
    /// queued up while it was busy in one sled batch, so that a slow index update is not
    /// followed by as many small ones.
    fn then(self, later: SyncedGroup) -> SyncedGroup {
        assert!(
            later.next_position > self.next_position,
            "synced groups arrive in the log's order"
        );
        SyncedGroup {
            writes: self.writes.then(later.writes),
            next_position: later.next_position,
        }
    }
}

struct Writer {
    shared: Arc<Shared>,
    segment: u64,
    segment_len: u64,
    next_position: u64,
    heads: HashMap<Arc<str>, Head>,
    /// Commands written but perhaps not yet in the index, so that a retry that arrives
    /// before the index catches up is still recognised.
    recent_commands: HashMap<Uuid, CommandRecord>,
    /// Set after a failed write or sync: nothing can be trusted to be on disk any more
    /// (a failed fsync may have dropped dirty pages), so every later append fails.
    poisoned: Option<LedgerError>,
}

pub(crate) fn spawn(
    shared: Arc<Shared>,
    recovered: Recovered,
    rx: mpsc::Receiver<AppendRequest>,
) -> Result<Vec<JoinHandle<()>>> {
    let (index_tx, index_rx) = std_mpsc::sync_channel(INDEX_QUEUE_GROUPS);
    let writer = Writer {
        shared: shared.clone(),
        segment: recovered.segment,
        segment_len: recovered.segment_len,
        next_position: recovered.next_position,
        heads: recovered
            .heads
            .into_iter()
            .map(|(s, h)| (Arc::from(s.as_str()), h))
            .collect(),
        recent_commands: HashMap::new(),
        poisoned: None,
    };
    let w = std::thread::Builder::new()
        .name("ledger-writer".into())
        .spawn(move || writer.run(rx, index_tx))?;
    let i = std::thread::Builder::new()
        .name("ledger-indexer".into())
        .spawn(move || run_indexer(shared, index_rx))?;
    Ok(vec![w, i])
}

impl Writer {
    fn run(
        mut self,
        mut rx: mpsc::Receiver<AppendRequest>,
        index_tx: std_mpsc::SyncSender<SyncedGroup>,
    ) {
        let group_max = self.shared.options.group_appends_max;
        while let Some(first) = rx.blocking_recv() {
            // Take whatever else is already queued, up to the group bounds: these appends
            // share one write and one fdatasync.
            let mut group_bytes = request_bytes(&first);
            let mut group = vec![first];
            while group.len() < group_max && group_bytes < APPEND_BYTES_MAX {
                match rx.try_recv() {
                    Ok(r) => {
                        let b = request_bytes(&r);
                        if group_bytes + b > APPEND_BYTES_MAX {
                            // Over the group's byte bound: it starts the next group.
                            if !self.commit_and_answer(group, &index_tx) {
                                return;
                            }
                            group = Vec::new();
                            group_bytes = 0;
                        }
                        group_bytes += b;
                        group.push(r);
                    }
                    Err(_) => break,
                }
            }
            if !self.commit_and_answer(group, &index_tx) {
                return;
            }
        }
    }

    /// Commits one group, hands its index entries to the indexer, and then answers its
    /// appends: once the group is synced each append is durable, which is all an answer
    /// promises (readers wait for the index themselves, see `EmbeddedLog::index_caught_up`).
    /// Answering here rather than after the index update took workload 1's mean append
    /// from 4.3 to 2.6 ms (issue 7). Returns false once the indexer is gone.
    fn commit_and_answer(
        &mut self,
        group: Vec<AppendRequest>,
        index_tx: &std_mpsc::SyncSender<SyncedGroup>,
    ) -> bool {
        let (synced, replies) = self.commit_group(group);
        let indexer_alive = match synced {
            Some(synced) => index_tx.send(synced).is_ok(),
            None => true,
        };
        for (tx, answer) in replies {
            // The appender may have given up waiting; the append stands regardless.
            let _ = tx.send(answer);
        }
        indexer_alive
    }

    fn lookup_command(&self, id: Uuid) -> Result<Option<CommandRecord>> {
        if let Some(r) = self.recent_commands.get(&id) {
            return Ok(Some(r.clone()));
        }
        self.shared.index.command(id)
    }

    /// Writes and syncs one group; returns what the indexer must apply (nothing when the
    /// group wrote no event) and the group's answers. Once the group is synced, `synced`
    /// counts its events.
    fn commit_group(&mut self, group: Vec<AppendRequest>) -> (Option<SyncedGroup>, Vec<Reply>) {
        if let Some(e) = self.poisoned.clone().or_else(|| self.shared.failure()) {
            self.poisoned = Some(e.clone());
            let replies = group
                .into_iter()
                .map(|r| (r.reply, Err(e.clone())))
                .collect();
            return (None, replies);
        }
        let mut replies: Vec<Reply> = Vec::with_capacity(group.len());
        let mut batch = IndexBatch::default();
        let mut buf: Vec<u8> = Vec::new();
        let mut failure: Option<LedgerError> = None;
        for req in group {
            if failure.is_some() {
                replies.push((req.reply, Err(LedgerError::Closed)));
                continue;
            }
            match self.plan_append(&req, &mut buf, &mut batch) {
                Ok(answer) => replies.push((req.reply, answer)),
                Err(e) => {
                    failure = Some(e.clone());
                    replies.push((req.reply, Err(e)));
                }
            }
        }
        if failure.is_none()
            && !buf.is_empty()
            && let Err(e) = self.write_and_sync(&buf)
        {
            failure = Some(e);
        }
        if let Some(e) = failure {
            // Nothing of this group may be acknowledged: its bytes may or may not be on
            // disk, and recovery on the next open decides which complete appends survive.
            self.shared.fail(e.clone());
            self.poisoned = Some(e.clone());
            let replies = replies
                .into_iter()
                .map(|(tx, _)| (tx, Err(e.clone())))
                .collect();
            return (None, replies);
        }
        if self.recent_commands.len() > RECENT_COMMANDS_PRUNE_AT {
            let committed = self.shared.committed.load(Ordering::Acquire);
            self.recent_commands
                .retain(|_, r| r.result.last_position >= committed);
        }
        let cp = Checkpoint {
            next_position: self.next_position,
            location: Location {
                segment: self.segment,
                offset: self.segment_len,
            },
        };
        if batch.events == 0 {
            // Every append of the group was answered from an earlier one: nothing to index.
            return (None, replies);
        }
        let before = self.shared.synced.load(Ordering::Acquire);
        assert!(self.next_position > before, "synced position went back");
        self.shared
            .synced
            .store(self.next_position, Ordering::Release);
        let synced = SyncedGroup {
            writes: batch.finish(cp),
            next_position: self.next_position,
        };
        (Some(synced), replies)
    }

    /// Checks one append and encodes it into `buf`. The outer error is an operating
    /// failure (I/O, index) that poisons the writer; the inner one is this append's answer.
    fn plan_append(
        &mut self,
        req: &AppendRequest,
        buf: &mut Vec<u8>,
        batch: &mut IndexBatch,
    ) -> Result<Result<AppendResult>> {
        let keyed = match &req.key {
            CommandKey::Keyed { digest, answer } => Some((digest, answer)),
            CommandKey::Unkeyed => None,
        };
        if let Some((digest, _)) = keyed
            && let Some(rec) = self.lookup_command(req.command_id)?
        {
            return Ok(if rec.digest == *digest && *rec.stream == *req.stream {
                Ok(rec.result)
            } else {
                Err(LedgerError::CommandIdReused {
                    command_id: req.command_id,
                    stream: rec.stream,
                })
            });
        }
        let head = self.heads.get(&req.stream).copied();
        let current = match head {
            None => CurrentRevision::NoStream,
            Some(h) => CurrentRevision::Current(h.revision),
        };
        if !req.expected.matches(current) {
            return Ok(Err(LedgerError::WrongExpectedVersion {
                stream: req.stream.to_string(),
                expected: req.expected,
                actual: current,
            }));
        }
        let bytes = request_bytes(req) as u64;
        let used = self.segment_len + buf.len() as u64;
        if used > 0 && used + bytes > self.shared.options.segment_size_bytes {
            // An append never straddles two segments: finish this one first.
            if !buf.is_empty() {
                self.write_and_sync(buf)?;
                buf.clear();
            }
            self.segment += 1;
            self.shared
                .storage
                .create_segment(self.segment)
                .map_err(|e| LedgerError::disk(format!("creating segment {}", self.segment), &e))?;
            self.segment_len = 0;
            self.shared
                .last_segment
                .store(self.segment, Ordering::Release);
        }
        // The append's exact size is known: one allocation for a large import's chunk
        // (about 30 MB for 100,000 events) instead of doubling into a 32 MiB buffer, whose
        // copies also held the old buffer beside the new one.
        buf.reserve(bytes as usize);
        let encoded_from = buf.len();
        let first_position = self.next_position;
        let mut revision = head.map_or(0, |h| h.revision + 1);
        let mut prev_hash = head.map_or(crate::envelope::GENESIS_HASH, |h| h.hash);
        let n = req.events.len();
        for (i, ev) in req.events.iter().enumerate() {
            let location = Location {
                segment: self.segment,
                offset: self.segment_len + buf.len() as u64,
            };
            let e = seal(
                &req.stream,
                revision,
                self.next_position,
                req.command_id,
                prev_hash,
                ev,
            );
            if i + 1 == n {
                match keyed {
                    Some((_, answer)) => {
                        encode_record(buf, &e, FLAG_LAST_OF_APPEND, answer.as_deref())
                    }
                    None => encode_record(buf, &e, FLAG_LAST_OF_APPEND | FLAG_UNKEYED, None),
                }
            } else {
                encode_record(buf, &e, 0, None);
            }
            batch.add_event(
                &EventEntry {
                    position: self.next_position,
                    location,
                    stream: req.stream.clone(),
                    revision,
                    index_in_append: i as u64,
                },
                e.hash,
            );
            prev_hash = e.hash;
            revision += 1;
            self.next_position += 1;
        }
        // The segment-size check above relied on this size.
        assert_eq!(
            buf.len() - encoded_from,
            bytes as usize,
            "an append encodes to the size it was planned at"
        );
        let result = AppendResult {
            first_position,
            last_position: self.next_position - 1,
            next_expected_revision: revision - 1,
        };
        self.heads.insert(
            req.stream.clone(),
            Head {
                revision: revision - 1,
                hash: prev_hash,
            },
        );
        if let Some((digest, answer)) = keyed {
            let rec = CommandRecord {
                stream: req.stream.to_string(),
                digest: *digest,
                result,
                answer: answer.clone(),
            };
            batch.add_command(req.command_id, &rec);
            self.recent_commands.insert(req.command_id, rec);
        }
        Ok(Ok(result))
    }

    fn write_and_sync(&mut self, buf: &[u8]) -> Result<()> {
        let storage = &self.shared.storage;
        // Either failure poisons the writer (see `commit_group`): a short write leaves a
        // torn tail that the next open cuts, and after a failed fdatasync the kernel may
        // have dropped the dirty pages while reporting later syncs as successful
        // ("fsyncgate"), so no later append could be acknowledged truthfully.
        storage.append(self.segment, buf).map_err(|e| {
            LedgerError::disk(
                format!("writing {} bytes to segment {}", buf.len(), self.segment),
                &e,
            )
        })?;
        storage
            .sync_segment(self.segment)
            .map_err(|e| LedgerError::disk(format!("fdatasync of segment {}", self.segment), &e))?;
        self.segment_len += buf.len() as u64;
        Ok(())
    }
}

fn request_bytes(r: &AppendRequest) -> usize {
    r.events
        .iter()
        .map(|e| record_bytes(&r.stream, e))
        .sum::<usize>()
        + match &r.key {
            CommandKey::Keyed { answer, .. } => answer_record_bytes(answer.as_deref()),
            CommandKey::Unkeyed => 0,
        }
}

fn run_indexer(shared: Arc<Shared>, rx: std_mpsc::Receiver<SyncedGroup>) {
    while let Ok(mut group) = rx.recv() {
        // At most a queue's worth more, so that one sled batch stays bounded even while
        // the writer keeps adding groups.
        for _ in 0..INDEX_QUEUE_GROUPS {
            match rx.try_recv() {
                Ok(later) => group = group.then(later),
                Err(_) => break,
            }
        }
        // After a failed index update nothing more is applied: the next open indexes the
        // rest from the log. A failed write or sync of the log does not stop the indexer,
        // because every group it is given was synced and answered before that failure.
        if !shared.index_failed.load(Ordering::Acquire) {
            apply_group(&shared, group);
        }
    }
}

/// Applies a synced group's index entries and publishes the committed position.
fn apply_group(shared: &Shared, group: SyncedGroup) {
    let applied = shared.index.apply(group.writes).map_err(|e| match e {
        LedgerError::Io(io) => LedgerError::disk("updating the index", &io),
        other => other,
    });
    match applied {
        Ok(()) => {
            let before = shared.committed.load(Ordering::Acquire);
            assert!(group.next_position > before, "committed position went back");
            shared
                .committed
                .store(group.next_position, Ordering::Release);
            shared.committed_tx.send_replace(group.next_position);
        }
        Err(e) => {
            // The group is durable in the log (its appends were answered) but not
            // readable; refuse to go on so that the next open indexes it from the log.
            // Readers waiting for the index are woken to see the failure.
            shared.fail(e);
            shared.index_failed.store(true, Ordering::Release);
            shared.committed_tx.send_modify(|_| {});
        }
    }
}
