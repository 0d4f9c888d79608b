//! `verify` (AUD-3): walks every record of the segment files, read-only, and checks each
//! record's CRC, the global positions (0, 1, 2, ... without gap), every stream's revisions
//! (0, 1, 2, ...), each event's predecessor hash against its stream's previous event, and each
//! event's own hash over its canonical bytes. The walk reads the files itself, so a damaged
//! store is reported rather than "recovered", and nothing is written. The index's checkpoint
//! (how many events were committed) is compared with what the walk found, so a deletion at
//! the end is caught too.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use ledger::walk::Fault;
use serde::Serialize;

use crate::error::{Failure, Result};
use crate::source::{in_use_message, is_lock_error, log_dir};

/// The first broken event, as precisely as the walk can name it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Break {
    /// The API position (the n-th event of the log, from 1, as the server's clients see
    /// positions) where the log stopped being intact: the first event that is not as expected.
    pub position: u64,
    pub segment: Option<u64>,
    pub offset: Option<u64>,
    pub stream: Option<String>,
    pub revision: Option<u64>,
    pub event_id: Option<String>,
    pub reason: String,
}

impl std::fmt::Display for Break {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "first broken event at position {}", self.position)?;
        if let Some(stream) = &self.stream {
            write!(f, " (stream {stream}")?;
            if let Some(r) = self.revision {
                write!(f, ", revision {r}")?;
            }
            if let Some(id) = &self.event_id {
                write!(f, ", event {id}")?;
            }
            write!(f, ")")?;
        }
        if let (Some(s), Some(o)) = (self.segment, self.offset) {
            write!(f, " in segment {s} at byte {o}")?;
        }
        write!(f, ": {}", self.reason)
    }
}

/// What a verify pass found.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct VerifyOutcome {
    pub events_checked: u64,
    pub streams_checked: u64,
    /// The committed event count the index recorded, when there is an index.
    pub committed: Option<u64>,
    pub first_break: Option<Break>,
}

impl VerifyOutcome {
    pub fn is_intact(&self) -> bool {
        self.first_break.is_none()
    }
}

/// Verifies the embedded ledger under `data` without opening it for writing. Refuses
/// (exit 2) when a server holds the store.
pub fn verify_data_dir(data: &Path) -> Result<VerifyOutcome> {
    let dir = log_dir(data)?;
    let committed = read_committed(&dir, data)?;
    let mut outcome = walk_segments(&dir.join("segments"))?;
    outcome.committed = committed;
    if outcome.first_break.is_none()
        && let Some(c) = committed
        && c != outcome.events_checked
    {
        let reason = if c > outcome.events_checked {
            format!(
                "the index records {c} committed events but the segments hold only {}: events were deleted",
                outcome.events_checked
            )
        } else {
            format!(
                "the segments hold {} events but the index records only {c} as committed (an unacknowledged tail, or the index is behind)",
                outcome.events_checked
            )
        };
        outcome.first_break = Some(Break {
            position: outcome.events_checked.min(c) + 1,
            segment: None,
            offset: None,
            stream: None,
            revision: None,
            event_id: None,
            reason,
        });
    }
    Ok(outcome)
}

/// The index's checkpoint: the number of committed events. Opening the index also tells
/// whether a server holds the store (sled takes an exclusive lock).
fn read_committed(dir: &Path, data: &Path) -> Result<Option<u64>> {
    let index = dir.join("index");
    if !index.is_dir() {
        return Ok(None);
    }
    let db = crate::source::retry_while_locked(data, || open_index(&index, data))?;
    let value = db
        .get(b"K")
        .map_err(|e| Failure::usage(format!("reading the index checkpoint: {e}")))?;
    Ok(value.and_then(|v| {
        v.get(0..8)
            .map(|b| u64::from_be_bytes(b.try_into().expect("8")))
    }))
}

fn open_index(index: &Path, data: &Path) -> Result<sled::Db> {
    sled::Config::new().path(index).open().map_err(|e| {
        let m = e.to_string();
        if is_lock_error(&m) {
            Failure::usage(in_use_message(data))
        } else {
            Failure::usage(format!("cannot open the index at {}: {m}", index.display()))
        }
    })
}

/// The segment files in id order; ids must run without a gap.
fn segment_files(dir: &Path) -> Result<Vec<(u64, PathBuf)>> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir)
        .map_err(|e| Failure::usage(format!("cannot list {}: {e}", dir.display())))?
    {
        let path = entry?.path();
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        if let Some(id) = name
            .strip_suffix(".seg")
            .and_then(|s| s.parse::<u64>().ok())
        {
            files.push((id, path));
        }
    }
    files.sort();
    Ok(files)
}

/// Walks every record of every segment and returns the first break. The walk is the
/// ledger's own (`ledger::walk`): large sequential reads, no decoding, hashes computed on
/// every core, the chain checked in log order.
pub fn walk_segments(dir: &Path) -> Result<VerifyOutcome> {
    let files = segment_files(dir)?;
    let first_id = files.first().map(|(id, _)| *id).unwrap_or(0);
    // The segments up to the first gap are walked; a gap is itself a break.
    let mut gap = None;
    let mut open = Vec::new();
    for (expected_id, (id, path)) in (first_id..).zip(files.iter()) {
        if *id != expected_id {
            gap = Some((expected_id, *id));
            break;
        }
        let file = File::open(path)
            .map_err(|e| Failure::usage(format!("cannot read {}: {e}", path.display())))?;
        open.push((*id, file));
    }
    let ids: Vec<u64> = open.iter().map(|(id, _)| *id).collect();
    let read = |segment: u64, offset: u64, buf: &mut [u8]| {
        let index = (segment - first_id) as usize;
        open[index].1.read_at(buf, offset)
    };
    let walked =
        ledger::walk::walk_segments(&ids, &read, u64::MAX, ledger::walk::available_threads())?;
    let streams_checked = walked.streams_checked();
    let first_break = match walked.first_break {
        Some(b) => Some(Break {
            position: b.position + 1,
            segment: Some(b.segment),
            offset: Some(b.offset),
            stream: b.stream,
            revision: b.revision,
            event_id: b.event_id.map(|id| id.to_string()),
            reason: reason(&b.fault),
        }),
        None => gap.map(|(expected_id, id)| Break {
            position: walked.events_checked + 1,
            segment: Some(expected_id),
            offset: None,
            stream: None,
            revision: None,
            event_id: None,
            reason: format!("segment {expected_id} is missing (found {id} next)"),
        }),
    };
    Ok(VerifyOutcome {
        events_checked: walked.events_checked,
        streams_checked,
        committed: None,
        first_break,
    })
}

/// Why an event breaks the log, in an auditor's words, with API positions (from 1) (AUD-3).
fn reason(fault: &Fault) -> String {
    match fault {
        Fault::Unreadable(reason) if reason == "checksum mismatch" => {
            "the record's CRC does not match its bytes".into()
        }
        Fault::Unreadable(reason) => reason.clone(),
        Fault::CutShort => "record cut short by the end of the segment".into(),
        Fault::Position { found, expected } => format!(
            "it records position {} where position {} was expected (an event is missing or out of order)",
            found + 1,
            expected + 1
        ),
        Fault::Revision { found, expected } => format!(
            "it has revision {found} where its stream's next revision is {expected} (an event of the stream is missing or out of order)"
        ),
        Fault::PredecessorHash => "its predecessor hash is not the hash of its stream's previous event (an event before it was changed, removed or reordered)".into(),
        Fault::OwnHash => "its own hash does not match its contents (the event was edited)".into(),
    }
}

/// Verifies through the ledger API (KurrentDB): every stream's chain as the backend walks it.
pub async fn verify_log(log: &dyn ledger::EventLog) -> Result<VerifyOutcome> {
    let report = log
        .verify()
        .await
        .map_err(|e| Failure::usage(format!("verify could not run: {e}")))?;
    Ok(VerifyOutcome {
        events_checked: report.events_checked,
        streams_checked: report.streams_checked,
        committed: None,
        first_break: report.first_break.map(|b| Break {
            position: server::projector::api_position(b.position),
            segment: None,
            offset: None,
            stream: (!b.stream.is_empty()).then_some(b.stream),
            revision: Some(b.revision),
            event_id: b.event_id.map(|id| id.to_string()),
            reason: b.reason,
        }),
    })
}
