//! The public vocabulary of the ledger: the trait, the envelope, the errors and the limits.

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use tokio::sync::mpsc;
use uuid::Uuid;

/// The most events one append may carry. The server splits larger batches into several
/// commands; a CSV import of tens of thousands of rows still fits in one append.
pub const APPEND_EVENTS_MAX: usize = 100_000;

/// The most bytes one event may take once encoded (payload, strings and fixed fields).
pub const EVENT_BYTES_MAX: usize = 1024 * 1024;

/// The most bytes one append may take once encoded. The writer never puts more than this
/// between two `fdatasync` calls, which is what bounds the torn tail that recovery may cut.
pub const APPEND_BYTES_MAX: usize = 64 * 1024 * 1024;

/// The longest stream name, in bytes. Stream names are part of index keys.
pub const STREAM_NAME_BYTES_MAX: usize = 1024;

/// The longest event type or actor, in bytes.
pub const LABEL_BYTES_MAX: usize = 1024;

/// The most bytes of a command's answer kept with its append (see [`CommandAnswer`]).
pub const ANSWER_BYTES_MAX: usize = 4096;

/// The most events one `read_stream` or `read_all` call returns; a larger `max` is
/// clamped to it. Callers page until they get an empty batch.
pub const READ_EVENTS_MAX: usize = 10_000;

/// The revision a writer expects the stream to be at before its append.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ExpectedRevision {
    /// No check: append at whatever the stream's head is.
    Any,
    /// The stream must not exist yet.
    NoStream,
    /// The stream's last event must have exactly this revision.
    Exact(u64),
}

impl fmt::Display for ExpectedRevision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExpectedRevision::Any => write!(f, "any"),
            ExpectedRevision::NoStream => write!(f, "no stream"),
            ExpectedRevision::Exact(n) => write!(f, "revision {n}"),
        }
    }
}

/// Where a stream actually was when an append's expectation failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CurrentRevision {
    /// The stream has no events.
    NoStream,
    /// The revision of the stream's last event.
    Current(u64),
}

impl CurrentRevision {
    /// The current revision as an option, `None` for a stream that does not exist.
    pub fn revision(self) -> Option<u64> {
        match self {
            CurrentRevision::NoStream => None,
            CurrentRevision::Current(n) => Some(n),
        }
    }
}

impl fmt::Display for CurrentRevision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CurrentRevision::NoStream => write!(f, "no stream"),
            CurrentRevision::Current(n) => write!(f, "revision {n}"),
        }
    }
}

impl ExpectedRevision {
    /// Whether a stream at `current` satisfies this expectation.
    pub fn matches(self, current: CurrentRevision) -> bool {
        match (self, current) {
            (ExpectedRevision::Any, _) => true,
            (ExpectedRevision::NoStream, CurrentRevision::NoStream) => true,
            (ExpectedRevision::Exact(n), CurrentRevision::Current(m)) => n == m,
            _ => false,
        }
    }
}

/// An event as the caller hands it to `append`. The ledger adds stream, revision,
/// position, command id and hashes to make the stored envelope.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewEvent {
    pub event_id: Uuid,
    pub event_type: String,
    pub schema_version: u16,
    pub recorded_at: DateTime<Utc>,
    pub actor: String,
    pub correlation_id: Uuid,
    /// MessagePack bytes; opaque to the ledger.
    pub payload: Vec<u8>,
}

/// A stored event: the envelope of AUD-1 and AUD-3.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordedEvent {
    pub event_id: Uuid,
    pub stream: String,
    /// The event's number in its stream, from 0 without gaps.
    pub revision: u64,
    /// The event's place in the whole log. Strictly increasing in log order; the embedded
    /// backend numbers events 0, 1, 2, ... and KurrentDB uses its commit position.
    pub position: u64,
    pub event_type: String,
    pub schema_version: u16,
    pub recorded_at: DateTime<Utc>,
    pub actor: String,
    pub command_id: Uuid,
    pub correlation_id: Uuid,
    /// MessagePack bytes; opaque to the ledger.
    pub payload: Vec<u8>,
    /// The hash of the previous event of the same stream, or [`crate::GENESIS_HASH`].
    pub predecessor_hash: [u8; 32],
    /// SHA-256 over this envelope's canonical bytes (see `docs/ledger.md`).
    pub hash: [u8; 32],
}

/// What a successful append returns; a repeated command id returns the first one again.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct AppendResult {
    pub first_position: u64,
    pub last_position: u64,
    /// The revision of the append's last event: pass `Exact(next_expected_revision)` to
    /// append after it (KurrentDB's meaning of the name).
    pub next_expected_revision: u64,
}

/// What the ledger keeps of an appended command for its retries (AUD-4): the append's result
/// and the answer the caller handed in with it, opaque bytes to the ledger. It is written in
/// the same record, under the same `fdatasync`, as the append's last event, so a command
/// acknowledged before a crash finds its answer after the restart. The answer is covered by
/// the record's checksum but not by the events' hash chain: it is what the caller was told,
/// not history.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CommandAnswer {
    pub result: AppendResult,
    pub answer: Vec<u8>,
}

/// The first event at which `verify` found a chain broken.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChainBreak {
    pub position: u64,
    pub stream: String,
    pub revision: u64,
    pub event_id: Option<Uuid>,
    pub reason: String,
}

impl fmt::Display for ChainBreak {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "chain broken at position {} (stream {:?}, revision {}): {}",
            self.position, self.stream, self.revision, self.reason
        )
    }
}

/// The outcome of `verify`: how much was walked and the first break, if any.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifyReport {
    pub events_checked: u64,
    pub streams_checked: u64,
    pub first_break: Option<ChainBreak>,
}

/// Everything the ledger can answer instead of a result.
#[derive(Clone, Debug, thiserror::Error)]
pub enum LedgerError {
    #[error("wrong expected version on stream {stream:?}: expected {expected}, actual {actual}")]
    WrongExpectedVersion {
        stream: String,
        expected: ExpectedRevision,
        actual: CurrentRevision,
    },
    #[error("command id {command_id} was already used for a different append (stream {stream:?})")]
    CommandIdReused { command_id: Uuid, stream: String },
    #[error("invalid append: {0}")]
    InvalidAppend(String),
    #[error("the log is corrupt: {0}")]
    Corrupt(String),
    #[error("I/O error: {0}")]
    Io(Arc<std::io::Error>),
    #[error("index error: {0}")]
    Index(String),
    #[error("the log is closed or stopped after an earlier failure")]
    Closed,
    #[error("backend error: {0}")]
    Backend(String),
    /// The disk refused a write, an `fdatasync` or an index update, or the log's directory
    /// cannot be opened for writing. The log takes no appends after this until it is
    /// reopened: after a failed `fdatasync` the page cache cannot be trusted.
    #[error("{0}")]
    Disk(DiskFailure),
}

/// What is wrong with the disk under the log.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DiskProblem {
    /// No space left (ENOSPC), or the user's quota is used up (EDQUOT).
    Full,
    /// The file system is mounted read-only (EROFS), or was remounted so after errors.
    ReadOnly,
    /// Any other I/O error (EIO, ...).
    Failed,
}

/// A disk operation of the log that failed, in terms an operator can act on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiskFailure {
    pub problem: DiskProblem,
    /// What the log was doing: "fdatasync of segment 3", "opening the log in /data/log".
    pub during: String,
    /// The operating system's error text.
    pub cause: String,
    /// Whether the log was already open: then appends are refused until a restart. An
    /// open that fails instead refuses to start.
    pub at_open: bool,
}

impl DiskFailure {
    /// Classifies an I/O error by its kind.
    pub fn from_io(during: impl Into<String>, error: &std::io::Error, at_open: bool) -> Self {
        DiskFailure {
            problem: disk_problem(error),
            during: during.into(),
            cause: error.to_string(),
            at_open,
        }
    }
}

/// The problem an I/O error reports, by its kind (and errno, for kinds std does not name).
pub fn disk_problem(error: &std::io::Error) -> DiskProblem {
    use std::io::ErrorKind;
    match error.kind() {
        ErrorKind::StorageFull | ErrorKind::QuotaExceeded => DiskProblem::Full,
        ErrorKind::ReadOnlyFilesystem => DiskProblem::ReadOnly,
        _ => DiskProblem::Failed,
    }
}

impl fmt::Display for DiskFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let DiskFailure {
            during,
            cause,
            at_open,
            ..
        } = self;
        match (self.problem, at_open) {
            (DiskProblem::Full, false) => write!(
                f,
                "the disk is full: {during} failed ({cause}). The event log takes no more \
                 appends; free space on the disk that holds the data directory, then restart \
                 the server. Everything acknowledged before is kept"
            ),
            (DiskProblem::Full, true) => write!(
                f,
                "the disk is full: {during} failed ({cause}). The ledger refuses to start; free \
                 space on the disk that holds the data directory, then start it again"
            ),
            (DiskProblem::ReadOnly, false) => write!(
                f,
                "the file system is read-only: {during} failed ({cause}). The event log takes no \
                 more appends; make the file system writable (check the kernel log: Linux \
                 remounts a file system read-only after disk errors), then restart the server. \
                 Everything acknowledged before is kept"
            ),
            (DiskProblem::ReadOnly, true) => write!(
                f,
                "the file system is read-only: {during} failed ({cause}). The ledger must write \
                 at start (recovery, the index) and refuses to start; remount the data \
                 directory's file system read-write, or point the server at a writable copy"
            ),
            (DiskProblem::Failed, false) => write!(
                f,
                "the disk failed: {during} failed ({cause}). The event log takes no more \
                 appends, because after a failed write or fdatasync the page cache cannot be \
                 trusted; check the disk (the kernel log says more), then restart the server. \
                 Everything acknowledged before is kept"
            ),
            (DiskProblem::Failed, true) => write!(
                f,
                "the disk failed: {during} failed ({cause}). The ledger refuses to start; check \
                 the disk (the kernel log says more)"
            ),
        }
    }
}

impl From<std::io::Error> for LedgerError {
    fn from(e: std::io::Error) -> Self {
        LedgerError::Io(Arc::new(e))
    }
}

impl From<sled::Error> for LedgerError {
    fn from(e: sled::Error) -> Self {
        match e {
            // A full or read-only disk under the index is the disk's problem, not the
            // index's: it is reported as such whichever store (segment or index) meets it
            // first, so a full disk always answers as a full disk.
            sled::Error::Io(io) if disk_problem(&io) != DiskProblem::Failed => {
                LedgerError::disk("updating the log's index", &io)
            }
            e => LedgerError::Index(e.to_string()),
        }
    }
}

impl LedgerError {
    /// A failure of the disk while the log runs: it refuses appends until restarted.
    pub(crate) fn disk(during: impl Into<String>, error: &std::io::Error) -> LedgerError {
        LedgerError::Disk(DiskFailure::from_io(during, error, false))
    }

    /// The same error, as the reason an open refuses to start: a full or read-only file
    /// system becomes a typed disk failure; other I/O errors (a missing permission, ...)
    /// and everything else stay as they are.
    pub(crate) fn at_open(self, during: impl Into<String>) -> LedgerError {
        match self {
            LedgerError::Io(io) if disk_problem(&io) != DiskProblem::Failed => {
                LedgerError::Disk(DiskFailure::from_io(during, &io, true))
            }
            LedgerError::Disk(failure) => LedgerError::Disk(DiskFailure {
                at_open: true,
                during: format!("{}, {}", during.into(), failure.during),
                ..failure
            }),
            other => other,
        }
    }
}

pub type Result<T, E = LedgerError> = std::result::Result<T, E>;

/// A catch-up-then-live feed of the whole log. Events arrive in position order through
/// a bounded buffer; a slow consumer slows the feeder down, it never skips.
pub struct Subscription {
    pub(crate) rx: mpsc::Receiver<Result<RecordedEvent>>,
    pub(crate) task: tokio::task::JoinHandle<()>,
}

impl Subscription {
    /// The next event, or an error after which the subscription ends, or `None` when
    /// the log was closed.
    pub async fn next(&mut self) -> Option<Result<RecordedEvent>> {
        self.rx.recv().await
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The event log. Both backends implement it; the server holds an `Arc<dyn EventLog>`.
#[async_trait]
pub trait EventLog: Send + Sync {
    /// Appends `events` to `stream` atomically if the stream is at `expected`.
    /// Returns once the events are durable. A `command_id` that was appended before
    /// returns the first result and writes nothing.
    async fn append(
        &self,
        stream: &str,
        expected: ExpectedRevision,
        events: Vec<NewEvent>,
        command_id: Uuid,
    ) -> Result<AppendResult> {
        self.append_answered(stream, expected, events, command_id, None)
            .await
    }

    /// `append`, keeping `answer` (at most [`ANSWER_BYTES_MAX`] bytes) with the append for
    /// [`EventLog::command_answer`]. A repeated command id keeps the first answer.
    async fn append_answered(
        &self,
        stream: &str,
        expected: ExpectedRevision,
        events: Vec<NewEvent>,
        command_id: Uuid,
        answer: Option<Vec<u8>>,
    ) -> Result<AppendResult>;

    /// `append` for a command nobody can send again with the same id (a caller that made
    /// the id up itself): `command_id` is recorded with the events, where auditors
    /// correlate by it, but the log does not remember it, so an append with it again is a
    /// new append. The embedded log then writes one index key and one lookup less per
    /// append (issue 7); a backend that makes no difference keeps the id as `append` does.
    async fn append_unkeyed(
        &self,
        stream: &str,
        expected: ExpectedRevision,
        events: Vec<NewEvent>,
        command_id: Uuid,
    ) -> Result<AppendResult> {
        self.append(stream, expected, events, command_id).await
    }

    /// The result and the answer of the append made with `command_id` on `stream`, if it
    /// was made with an answer. Answers for the appends already acknowledged.
    async fn command_answer(&self, stream: &str, command_id: Uuid)
    -> Result<Option<CommandAnswer>>;

    /// The stream an append remembered for retries was made on with `command_id`
    /// (`append`, `append_answered`; not `append_unkeyed`), whichever stream it is.
    /// The server asks when a command under a client's id appends nothing, so that an id
    /// already used on another stream is refused as the append would have been (AUD-4).
    /// Answers for the appends already acknowledged; `None` when the backend has no record
    /// of the id.
    async fn command_stream(&self, command_id: Uuid) -> Result<Option<String>>;

    /// Up to `max` events of `stream` from revision `from_revision` on, in order.
    async fn read_stream(
        &self,
        stream: &str,
        from_revision: u64,
        max: usize,
    ) -> Result<Vec<RecordedEvent>>;

    /// Up to `max` events of the whole log whose position is at least `from_position`.
    async fn read_all(&self, from_position: u64, max: usize) -> Result<Vec<RecordedEvent>>;

    /// Every event whose position is at least `from_position`: first those already
    /// stored, then each new one as it is appended, with no gap and no duplicate.
    async fn subscribe_all(&self, from_position: u64) -> Result<Subscription>;

    /// Walks every stream's hash chain and names the first event that breaks one.
    async fn verify(&self) -> Result<VerifyReport>;
}

/// Checks an append against the limits before anything is written.
pub(crate) fn validate_append(
    stream: &str,
    events: &[NewEvent],
    answer: Option<&[u8]>,
) -> Result<()> {
    if let Some(answer) = answer
        && answer.len() > ANSWER_BYTES_MAX
    {
        return Err(LedgerError::InvalidAppend(format!(
            "the command's answer takes {} bytes, the maximum is {ANSWER_BYTES_MAX}",
            answer.len()
        )));
    }
    if stream.is_empty() || stream.len() > STREAM_NAME_BYTES_MAX {
        return Err(LedgerError::InvalidAppend(format!(
            "stream name must have 1 to {STREAM_NAME_BYTES_MAX} bytes, has {}",
            stream.len()
        )));
    }
    if events.is_empty() {
        return Err(LedgerError::InvalidAppend(
            "an append needs at least one event".into(),
        ));
    }
    if events.len() > APPEND_EVENTS_MAX {
        return Err(LedgerError::InvalidAppend(format!(
            "{} events in one append, the maximum is {APPEND_EVENTS_MAX}; split the batch",
            events.len()
        )));
    }
    let mut total = 0usize;
    for (i, e) in events.iter().enumerate() {
        if e.event_type.is_empty() || e.event_type.len() > LABEL_BYTES_MAX {
            return Err(LedgerError::InvalidAppend(format!(
                "event {i}: event type must have 1 to {LABEL_BYTES_MAX} bytes"
            )));
        }
        if e.actor.len() > LABEL_BYTES_MAX {
            return Err(LedgerError::InvalidAppend(format!(
                "event {i}: actor has more than {LABEL_BYTES_MAX} bytes"
            )));
        }
        let mut size = crate::envelope::record_bytes(stream, e);
        if i + 1 == events.len() {
            size += crate::envelope::answer_record_bytes(answer);
        }
        if size > EVENT_BYTES_MAX {
            return Err(LedgerError::InvalidAppend(format!(
                "event {i} takes {size} bytes, the maximum is {EVENT_BYTES_MAX}"
            )));
        }
        total += size;
    }
    if total > APPEND_BYTES_MAX {
        return Err(LedgerError::InvalidAppend(format!(
            "the append takes {total} bytes, the maximum is {APPEND_BYTES_MAX}; split the batch"
        )));
    }
    Ok(())
}
