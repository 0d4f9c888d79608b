//! Sequential and random reads of records from the segment files.

use crate::embedded::index::Location;
use crate::envelope::{
    DecodeError, RECORD_HEADER_BYTES, body_len, decode_record, decode_record_answered,
};
use crate::storage::Storage;
use crate::types::{LedgerError, RecordedEvent};

/// A record as a scan finds it: the event, its flags, where it starts and its answer.
pub(crate) type ScannedRecord = (RecordedEvent, u8, Location, Option<Vec<u8>>);

/// The first read of a sequential reader: small, because a live subscription often wants
/// a single new event.
const READ_CHUNK_FIRST_BYTES: usize = 64 * 1024;

/// The most a sequential reader reads at a time; each read doubles up to this.
const READ_CHUNK_MAX_BYTES: usize = 1024 * 1024;

/// Why a scan stopped before the end of the data.
#[derive(Debug)]
pub(crate) enum ScanError {
    /// The bytes at `location` are not a valid record (or run past the segment's end).
    Bad {
        location: Location,
        reason: String,
    },
    Io(std::io::Error),
}

impl From<ScanError> for LedgerError {
    fn from(e: ScanError) -> Self {
        match e {
            ScanError::Bad { location, reason } => LedgerError::Corrupt(format!(
                "bad record in segment {} at offset {}: {reason}",
                location.segment, location.offset
            )),
            ScanError::Io(e) => e.into(),
        }
    }
}

/// Reads records one after the other, through segment boundaries up to `last_segment`.
pub(crate) struct SegmentReader<'a> {
    storage: &'a dyn Storage,
    segment: u64,
    /// File offset of `buf[0]`.
    buf_offset: u64,
    buf: Vec<u8>,
    /// Bytes of `buf` already consumed.
    used: usize,
    last_segment: u64,
    /// How much the next read asks for.
    chunk: usize,
}

impl<'a> SegmentReader<'a> {
    pub fn new(storage: &'a dyn Storage, start: Location, last_segment: u64) -> Self {
        SegmentReader {
            storage,
            segment: start.segment,
            buf_offset: start.offset,
            buf: Vec::new(),
            used: 0,
            last_segment,
            chunk: READ_CHUNK_FIRST_BYTES,
        }
    }

    /// Where the next record starts.
    pub fn location(&self) -> Location {
        Location {
            segment: self.segment,
            offset: self.buf_offset + self.used as u64,
        }
    }

    /// Reads more of the current segment so that at least `need` unconsumed bytes are
    /// buffered if the segment has them. Returns false when the segment has no more bytes.
    fn fill(&mut self, need: usize) -> Result<bool, ScanError> {
        self.buf.drain(..self.used);
        self.buf_offset += self.used as u64;
        self.used = 0;
        let have = self.buf.len();
        let want = need.max(self.chunk);
        self.chunk = (self.chunk * 2).min(READ_CHUNK_MAX_BYTES);
        self.buf.resize(have + want, 0);
        let n = self
            .storage
            .read_at(
                self.segment,
                self.buf_offset + have as u64,
                &mut self.buf[have..],
            )
            .map_err(ScanError::Io)?;
        self.buf.truncate(have + n);
        Ok(n > 0)
    }

    /// The next record with its flags, location and the command's answer it keeps (if
    /// any), or `None` at the clean end of the data.
    pub fn next_record(&mut self) -> Result<Option<ScannedRecord>, ScanError> {
        loop {
            let avail = &self.buf[self.used..];
            let need = if avail.len() >= RECORD_HEADER_BYTES {
                match body_len(avail) {
                    Ok(len) => RECORD_HEADER_BYTES + len,
                    Err(e) => {
                        let reason = match e {
                            DecodeError::Bad(r) => r,
                            DecodeError::Truncated => reason_truncated(),
                        };
                        return Err(ScanError::Bad {
                            location: self.location(),
                            reason,
                        });
                    }
                }
            } else {
                RECORD_HEADER_BYTES
            };
            if avail.len() >= need {
                let location = self.location();
                return match decode_record_answered(avail) {
                    Ok((e, flags, used, answer)) => {
                        self.used += used;
                        Ok(Some((e, flags, location, answer)))
                    }
                    Err(DecodeError::Bad(reason)) => Err(ScanError::Bad { location, reason }),
                    Err(DecodeError::Truncated) => unreachable!("enough bytes were buffered"),
                };
            }
            if self.fill(need)? {
                continue;
            }
            if self.buf.len() > self.used {
                return Err(ScanError::Bad {
                    location: self.location(),
                    reason: reason_truncated(),
                });
            }
            if self.segment >= self.last_segment {
                return Ok(None);
            }
            self.segment += 1;
            self.buf_offset = 0;
            self.buf.clear();
            self.used = 0;
        }
    }
}

fn reason_truncated() -> String {
    "record cut short by the end of the segment".into()
}

/// Reads the single record at `location`.
pub(crate) fn read_record_at(
    storage: &dyn Storage,
    location: Location,
) -> Result<(RecordedEvent, u8), LedgerError> {
    let bad = |reason: String| LedgerError::from(ScanError::Bad { location, reason });
    let mut header = [0u8; RECORD_HEADER_BYTES];
    let n = storage.read_at(location.segment, location.offset, &mut header)?;
    if n < RECORD_HEADER_BYTES {
        return Err(bad(reason_truncated()));
    }
    let len = body_len(&header).map_err(|e| bad(format!("{e:?}")))?;
    let mut buf = vec![0u8; RECORD_HEADER_BYTES + len];
    let n = storage.read_at(location.segment, location.offset, &mut buf)?;
    if n < buf.len() {
        return Err(bad(reason_truncated()));
    }
    let (e, flags, _) = decode_record(&buf).map_err(|e| bad(format!("{e:?}")))?;
    Ok((e, flags))
}
