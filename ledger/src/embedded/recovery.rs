//! Opening the log after a clean stop or a crash: cut a torn tail, refuse damage anywhere
//! else, and bring the index up to the end of the log.

use std::collections::HashMap;

use super::chain_fault;
use super::index::{Checkpoint, CommandRecord, EventEntry, Head, IndexBatch, IndexStore, Location};
use super::reader::{ScanError, SegmentReader};
use crate::envelope::{FLAG_LAST_OF_APPEND, FLAG_UNKEYED, stored_digest};
use crate::storage::Storage;
use crate::types::*;
use crate::walk;

/// Complete appends the catch-up applies to the index per batch.
const CATCH_UP_BATCH_EVENTS: u64 = 16 * 1024;

/// Where the writer resumes.
pub(crate) struct Recovered {
    pub segment: u64,
    pub segment_len: u64,
    pub next_position: u64,
    pub heads: Vec<(String, Head)>,
}

pub(crate) fn recover(storage: &dyn Storage, index: &IndexStore) -> Result<Recovered> {
    index.ensure_format()?;
    let mut segments = storage.list_segments()?;
    if segments.is_empty() {
        storage.create_segment(0)?;
        segments.push(0);
    }
    for w in segments.windows(2) {
        if w[1] != w[0] + 1 {
            return Err(LedgerError::Corrupt(format!(
                "segment files {} to {} are missing; refusing to start",
                w[0] + 1,
                w[1] - 1
            )));
        }
    }
    let first = segments[0];
    let last = *segments.last().expect("at least one segment");
    let last_len = storage.segment_len(last)?;
    let cp = index.checkpoint()?.unwrap_or(Checkpoint {
        next_position: 0,
        location: Location {
            segment: first,
            offset: 0,
        },
    });
    let beyond = cp.location.segment > last
        || cp.location.segment < first
        || cp.location.offset > storage.segment_len(cp.location.segment)?;
    if beyond {
        // Name the first broken event if the chain shows one: a deletion in the middle of
        // the log also makes it shorter than the index says.
        first_break(storage, &segments)?;
        return Err(LedgerError::Corrupt(format!(
            "the index records {} committed events, reaching segment {} offset {}, beyond the \
             end of the log: events at the end were deleted, the disk lost synced data, or the \
             index belongs to another log; the ledger refuses to start (restore the data \
             directory from a backup; if only the index is wrong, deleting the index directory \
             rebuilds it from the log)",
            cp.next_position, cp.location.segment, cp.location.offset
        )));
    }

    let mut reader = SegmentReader::new(storage, cp.location, last);
    // Heads of the streams touched since the checkpoint, over the index's heads.
    let mut heads: HashMap<String, Head> = HashMap::new();
    // The records of the append being read, until its last record shows it complete.
    let mut pending: Vec<(RecordedEvent, Location)> = Vec::new();
    let mut complete_end = cp.location;
    let mut next_position = cp.next_position;
    let mut batch = IndexBatch::default();
    loop {
        let (e, flags, location, answer) = match reader.next_record() {
            Ok(Some(r)) => r,
            Ok(None) => break,
            Err(ScanError::Io(e)) => return Err(e.into()),
            Err(ScanError::Bad { location, reason }) => {
                // Only the last group commit can be torn, and the writer never has more
                // than APPEND_BYTES_MAX unsynced bytes; damage further back is not a
                // crash's doing.
                let tail = location.segment == last
                    && last_len.saturating_sub(location.offset) <= APPEND_BYTES_MAX as u64;
                if tail {
                    break;
                }
                return Err(LedgerError::Corrupt(format!(
                    "bad record in segment {} at offset {}: {reason}; it is not the torn tail \
                     of the last write, so the log is damaged and the ledger refuses to start",
                    location.segment, location.offset
                )));
            }
        };
        let position = next_position + pending.len() as u64;
        let head = match pending.last() {
            Some((p, _)) => {
                if p.stream != e.stream {
                    return Err(LedgerError::Corrupt(format!(
                        "append at position {position} mixes streams {:?} and {:?}",
                        p.stream, e.stream
                    )));
                }
                Some((p.revision, p.hash))
            }
            None => match heads.get(&e.stream) {
                Some(h) => Some((h.revision, h.hash)),
                None => index.head(&e.stream)?.map(|h| (h.revision, h.hash)),
            },
        };
        if let Some(reason) = chain_fault(&e, position, head) {
            return Err(LedgerError::Corrupt(format!(
                "event number {} of the log (ledger position {position}, stream {:?}, revision \
                 {}) in segment {} at byte {}: {reason}; stored events were edited, deleted or \
                 reordered, so the ledger refuses to start",
                position + 1,
                e.stream,
                e.revision,
                location.segment,
                location.offset
            )));
        }
        pending.push((e, location));
        if flags & FLAG_LAST_OF_APPEND == 0 {
            continue;
        }
        // The answer kept with the append, so that a retry after this restart gets it.
        // The append is complete: it survives, and goes into the index.
        let first_e = &pending[0].0;
        let last_e = &pending[pending.len() - 1].0;
        let stream: std::sync::Arc<str> = std::sync::Arc::from(first_e.stream.as_str());
        // An unkeyed append's id is not indexed, so its digest is not computed either.
        if flags & FLAG_UNKEYED == 0 {
            let rec = CommandRecord {
                stream: first_e.stream.clone(),
                digest: stored_digest(pending.iter().map(|(e, _)| e)),
                result: AppendResult {
                    first_position: first_e.position,
                    last_position: last_e.position,
                    next_expected_revision: last_e.revision,
                },
                answer,
            };
            batch.add_command(first_e.command_id, &rec);
        }
        for (index_in_append, (e, loc)) in pending.iter().enumerate() {
            batch.add_event(
                &EventEntry {
                    position: e.position,
                    location: *loc,
                    stream: stream.clone(),
                    revision: e.revision,
                    index_in_append: index_in_append as u64,
                },
                e.hash,
            );
        }
        heads.insert(
            last_e.stream.clone(),
            Head {
                revision: last_e.revision,
                hash: last_e.hash,
            },
        );
        next_position += pending.len() as u64;
        pending.clear();
        complete_end = reader.location();
        if batch.events >= CATCH_UP_BATCH_EVENTS {
            let cp = Checkpoint {
                next_position,
                location: complete_end,
            };
            index.apply(std::mem::take(&mut batch).finish(cp))?;
        }
    }
    if let Some((_, loc)) = pending.first()
        && loc.segment != last
    {
        return Err(LedgerError::Corrupt(format!(
            "segment {} ends inside an append; refusing to start",
            loc.segment
        )));
    }
    // Cut everything after the last complete append: the torn or half-written last group,
    // none of which was acknowledged.
    for seg in (complete_end.segment..=last).rev() {
        let keep = if seg == complete_end.segment {
            complete_end.offset
        } else {
            0
        };
        if storage.segment_len(seg)? > keep {
            storage.truncate_segment(seg, keep)?;
        }
    }
    if batch.events > 0 {
        let cp = Checkpoint {
            next_position,
            location: complete_end,
        };
        index.apply(batch.finish(cp))?;
    }
    let heads = index.all_heads()?;
    check_whole_chain(storage, &segments, next_position, &heads)?;
    Ok(Recovered {
        segment: last,
        segment_len: storage.segment_len(last)?,
        next_position,
        heads,
    })
}

/// Walks the whole log and fails, naming the event, at its first break.
fn first_break(storage: &dyn Storage, segments: &[u64]) -> Result<walk::WalkOutcome> {
    let read = |segment: u64, offset: u64, buf: &mut [u8]| storage.read_at(segment, offset, buf);
    let walked = walk::walk_segments(segments, &read, u64::MAX, walk::available_threads())?;
    if let Some(b) = &walked.first_break {
        return Err(LedgerError::Corrupt(format!(
            "the hash chain check at start found {b}; stored events were edited, deleted or \
             reordered, or the disk damaged them, so the ledger refuses to start. Restore the \
             data directory from a backup; `replay-tool verify` names the same event"
        )));
    }
    Ok(walked)
}

/// AUD-3 at every start: walks the whole log, not only the part after the index's
/// checkpoint, so that an event edited (with its CRC fixed), deleted or reordered anywhere
/// stops the start. The walk checks every record's CRC, position, revision, predecessor hash
/// and own hash (see `crate::walk`). Its stream heads must then be the index's: that catches
/// the one edit the chain alone cannot, a stream's last event edited and re-hashed.
fn check_whole_chain(
    storage: &dyn Storage,
    segments: &[u64],
    next_position: u64,
    index_heads: &[(String, Head)],
) -> Result<()> {
    let walked = first_break(storage, segments)?;
    if walked.events_checked != next_position {
        return Err(LedgerError::Corrupt(format!(
            "the hash chain check at start walked {} events but recovery found {next_position}; \
             the ledger refuses to start",
            walked.events_checked
        )));
    }
    let mut differing: Option<String> = None;
    for (stream, head) in index_heads {
        let walked_head = walked.heads.get(stream.as_bytes());
        if walked_head.map(|h| (h.revision, h.hash)) != Some((head.revision, head.hash)) {
            differing = Some(match walked_head {
                Some(h) if h.revision == head.revision => format!(
                    "the last event of stream {stream:?} (revision {}) is not the one the index \
                     recorded: it was edited and re-hashed, or replaced",
                    h.revision
                ),
                Some(h) => format!(
                    "stream {stream:?} ends at revision {} in the log, the index recorded \
                     revision {}",
                    h.revision, head.revision
                ),
                None => format!("stream {stream:?} is in the index but not in the log"),
            });
            break;
        }
    }
    if differing.is_none() && walked.heads.len() != index_heads.len() {
        differing = Some(format!(
            "the log has {} streams, the index {}",
            walked.heads.len(),
            index_heads.len()
        ));
    }
    if let Some(what) = differing {
        return Err(LedgerError::Corrupt(format!(
            "the hash chain check at start found that {what}; the ledger refuses to start. \
             Restore the data directory from a backup (if only the index is wrong, deleting \
             the index directory rebuilds it from the log)"
        )));
    }
    Ok(())
}
