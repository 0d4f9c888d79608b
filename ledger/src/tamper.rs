//! Editing a segment file the way a tamperer would, for the tests that prove AUD-3 (the
//! ledger's, the replay tool's and the server's acceptance tests). Each edit keeps the
//! record's CRC valid, so only the hash chain can tell. Not for production use.

use std::ops::Range;

/// The byte ranges of the records of a segment file (an 8-byte header of length and CRC,
/// then the body).
pub fn record_ranges(segment: &[u8]) -> Vec<Range<usize>> {
    let mut ranges = Vec::new();
    let mut at = 0;
    while at + 8 <= segment.len() {
        let length = u32::from_le_bytes(segment[at..at + 4].try_into().expect("4 bytes")) as usize;
        ranges.push(at..at + 8 + length);
        at += 8 + length;
    }
    assert_eq!(at, segment.len(), "the segment ends on a record boundary");
    ranges
}

/// Recomputes the CRC of the record at `record` after its bytes were changed.
pub fn refresh_crc(segment: &mut [u8], record: Range<usize>) {
    let mut crc = crc32fast::Hasher::new();
    crc.update(&segment[record.start..record.start + 4]);
    crc.update(&segment[record.start + 8..record.end]);
    segment[record.start + 4..record.start + 8].copy_from_slice(&crc.finalize().to_le_bytes());
}

/// Flips a bit of the last payload byte of record `k` (the body ends with the payload, the
/// predecessor hash and the own hash) and recomputes the record's CRC.
pub fn edit_payload(segment: &[u8], k: usize) -> Vec<u8> {
    let mut edited = segment.to_vec();
    let record = record_ranges(segment)[k].clone();
    edited[record.end - 64 - 1] ^= 0x01;
    refresh_crc(&mut edited, record);
    edited
}

/// The segment without record `k`.
pub fn delete_record(segment: &[u8], k: usize) -> Vec<u8> {
    let record = record_ranges(segment)[k].clone();
    let mut out = segment[..record.start].to_vec();
    out.extend_from_slice(&segment[record.end..]);
    out
}

/// The segment with records `k` and `k + 1` swapped.
pub fn swap_records(segment: &[u8], k: usize) -> Vec<u8> {
    let ranges = record_ranges(segment);
    let (first, second) = (ranges[k].clone(), ranges[k + 1].clone());
    let mut out = segment[..first.start].to_vec();
    out.extend_from_slice(&segment[second.clone()]);
    out.extend_from_slice(&segment[first]);
    out.extend_from_slice(&segment[second.end..]);
    out
}
