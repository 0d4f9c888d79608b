//! The canonical byte encoding of an envelope, its hash, and the on-disk record framing.
//!
//! Canonical bytes (all integers big-endian, strings and payload length-prefixed with a
//! u32): event id (16), stream, revision (u64), event type, schema version (u16), recorded
//! time as seconds (i64) and nanoseconds (u32), actor, command id (16), correlation id
//! (16), payload, predecessor hash (32). The hash is SHA-256 over a domain tag followed by
//! those bytes. The global position is not hashed because KurrentDB assigns it only when
//! it stores the event; the embedded log checks positions are contiguous instead.
//!
//! A record in a segment file is: body length (u32 LE), CRC-32 of length and body
//! (u32 LE), then the body: flags (u8), position (u64 BE), the command's answer when the
//! flags say so (u32 BE length and bytes, only on the last record of an append), canonical
//! bytes, own hash (32). The answer is outside the canonical bytes: it is what the command's
//! caller was told (AUD-4), covered by the CRC but not by the hash chain.

use chrono::{DateTime, TimeZone, Utc};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::types::{ANSWER_BYTES_MAX, EVENT_BYTES_MAX, NewEvent, RecordedEvent};

/// The predecessor hash of a stream's first event.
pub const GENESIS_HASH: [u8; 32] = [0; 32];

/// Prefixed to the canonical bytes so that no other SHA-256 input can collide with ours.
pub(crate) const HASH_DOMAIN_TAG: &[u8] = b"ledger.envelope.v1";

/// Bytes of the record header: body length and checksum.
pub(crate) const RECORD_HEADER_BYTES: usize = 8;

/// Set on the last record of an append; recovery cuts back to the last record with it.
pub(crate) const FLAG_LAST_OF_APPEND: u8 = 1;

/// Set on the last record of an append made with an answer, which follows the position.
pub(crate) const FLAG_ANSWER: u8 = 2;

/// Set on the last record of an append made with [`crate::EventLog::append_unkeyed`]: its
/// command id is recorded but not indexed, so recovery does not index it either. Never
/// together with an answer, which exists only to be found by the id.
pub(crate) const FLAG_UNKEYED: u8 = 4;

/// Every flag a record may carry; others make the record unreadable.
pub(crate) const FLAGS_KNOWN: u8 = FLAG_LAST_OF_APPEND | FLAG_ANSWER | FLAG_UNKEYED;

/// The bytes an answer adds to its record.
pub(crate) fn answer_record_bytes(answer: Option<&[u8]>) -> usize {
    answer.map_or(0, |a| 4 + a.len())
}

/// The fixed part of canonical bytes: ids, integers, length prefixes and the hash.
const CANONICAL_FIXED_BYTES: usize = 16 + 4 + 8 + 4 + 2 + 12 + 4 + 16 + 16 + 4 + 32;

/// The bytes a record of `event` in `stream` takes on disk, header included.
pub(crate) fn record_bytes(stream: &str, event: &NewEvent) -> usize {
    RECORD_HEADER_BYTES
        + 1
        + 8
        + CANONICAL_FIXED_BYTES
        + stream.len()
        + event.event_type.len()
        + event.actor.len()
        + event.payload.len()
        + 32
}

fn put_str(out: &mut Vec<u8>, s: &[u8]) {
    out.extend_from_slice(&(s.len() as u32).to_be_bytes());
    out.extend_from_slice(s);
}

/// Writes the canonical bytes of an envelope to `out`.
pub(crate) fn write_canonical(out: &mut Vec<u8>, e: &RecordedEvent) {
    out.extend_from_slice(e.event_id.as_bytes());
    put_str(out, e.stream.as_bytes());
    out.extend_from_slice(&e.revision.to_be_bytes());
    put_str(out, e.event_type.as_bytes());
    out.extend_from_slice(&e.schema_version.to_be_bytes());
    out.extend_from_slice(&e.recorded_at.timestamp().to_be_bytes());
    out.extend_from_slice(&e.recorded_at.timestamp_subsec_nanos().to_be_bytes());
    put_str(out, e.actor.as_bytes());
    out.extend_from_slice(e.command_id.as_bytes());
    out.extend_from_slice(e.correlation_id.as_bytes());
    put_str(out, &e.payload);
    out.extend_from_slice(&e.predecessor_hash);
}

/// SHA-256 over the domain tag and the canonical bytes of `e` (its `hash` field ignored).
pub fn envelope_hash(e: &RecordedEvent) -> [u8; 32] {
    let mut buf = Vec::with_capacity(128 + e.payload.len());
    write_canonical(&mut buf, e);
    let mut h = Sha256::new();
    h.update(HASH_DOMAIN_TAG);
    h.update(&buf);
    h.finalize().into()
}

/// Builds the envelope of `event` at the given place, hash included.
pub(crate) fn seal(
    stream: &str,
    revision: u64,
    position: u64,
    command_id: Uuid,
    predecessor_hash: [u8; 32],
    event: &NewEvent,
) -> RecordedEvent {
    let mut e = RecordedEvent {
        event_id: event.event_id,
        stream: stream.to_owned(),
        revision,
        position,
        event_type: event.event_type.clone(),
        schema_version: event.schema_version,
        recorded_at: event.recorded_at,
        actor: event.actor.clone(),
        command_id,
        correlation_id: event.correlation_id,
        payload: event.payload.clone(),
        predecessor_hash,
        hash: [0; 32],
    };
    e.hash = envelope_hash(&e);
    e
}

/// A digest of what an append asks for, to tell a retry of a command (same digest) from a
/// command id reused for something else. Event ids, times and correlation ids are left
/// out because a client may mint them afresh on each retry of the same command.
pub(crate) fn request_digest(stream: &str, events: &[NewEvent]) -> [u8; 32] {
    digest_parts(
        stream,
        events.len(),
        events.iter().map(|e| {
            (
                e.event_type.as_str(),
                e.schema_version,
                e.actor.as_str(),
                e.payload.as_slice(),
            )
        }),
    )
}

/// The request digest of a stored append, equal to the one its writer computed.
pub(crate) fn stored_digest<'a>(
    events: impl ExactSizeIterator<Item = &'a RecordedEvent>,
) -> [u8; 32] {
    let mut events = events.peekable();
    let stream = events.peek().map_or(String::new(), |e| e.stream.clone());
    let n = events.len();
    digest_parts(
        &stream,
        n,
        events.map(|e| {
            (
                e.event_type.as_str(),
                e.schema_version,
                e.actor.as_str(),
                e.payload.as_slice(),
            )
        }),
    )
}

fn digest_parts<'a>(
    stream: &str,
    count: usize,
    parts: impl Iterator<Item = (&'a str, u16, &'a str, &'a [u8])>,
) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(b"ledger.request.v1");
    h.update((stream.len() as u32).to_be_bytes());
    h.update(stream.as_bytes());
    h.update((count as u64).to_be_bytes());
    for (event_type, schema_version, actor, payload) in parts {
        h.update((event_type.len() as u32).to_be_bytes());
        h.update(event_type.as_bytes());
        h.update(schema_version.to_be_bytes());
        h.update((actor.len() as u32).to_be_bytes());
        h.update(actor.as_bytes());
        h.update((payload.len() as u64).to_be_bytes());
        h.update(payload);
    }
    h.finalize().into()
}

fn checksum(len_bytes: &[u8; 4], body: &[u8]) -> u32 {
    let mut c = crc32fast::Hasher::new();
    c.update(len_bytes);
    c.update(body);
    c.finalize()
}

/// Appends the framed record of `e` to `out`, with the command's answer if one is given
/// (only ever on the last record of an append).
pub(crate) fn encode_record(
    out: &mut Vec<u8>,
    e: &RecordedEvent,
    flags: u8,
    answer: Option<&[u8]>,
) {
    let start = out.len();
    out.extend_from_slice(&[0; RECORD_HEADER_BYTES]);
    match answer {
        Some(answer) => {
            assert!(
                flags & FLAG_LAST_OF_APPEND != 0 && flags & FLAG_UNKEYED == 0,
                "an answer is kept only on the last record of a keyed append"
            );
            out.push(flags | FLAG_ANSWER);
            out.extend_from_slice(&e.position.to_be_bytes());
            put_str(out, answer);
        }
        None => {
            out.push(flags & !FLAG_ANSWER);
            out.extend_from_slice(&e.position.to_be_bytes());
        }
    }
    write_canonical(out, e);
    out.extend_from_slice(&e.hash);
    let body_len = (out.len() - start - RECORD_HEADER_BYTES) as u32;
    let len_bytes = body_len.to_le_bytes();
    let crc = checksum(&len_bytes, &out[start + RECORD_HEADER_BYTES..]);
    out[start..start + 4].copy_from_slice(&len_bytes);
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

/// Why bytes could not be read as a record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum DecodeError {
    /// Fewer bytes than the record claims: the end of the data came first.
    Truncated,
    /// The bytes are there but do not form a valid record.
    Bad(String),
}

/// The shortest and the longest body a record may have.
pub(crate) fn body_len_limits() -> (usize, usize) {
    (
        1 + 8 + CANONICAL_FIXED_BYTES,
        EVENT_BYTES_MAX - RECORD_HEADER_BYTES,
    )
}

/// The body length a header announces, if it is plausible.
pub(crate) fn body_len(header: &[u8]) -> Result<usize, DecodeError> {
    let len = u32::from_le_bytes(header[0..4].try_into().expect("4 bytes")) as usize;
    if len < 1 + 8 + CANONICAL_FIXED_BYTES || len + RECORD_HEADER_BYTES > EVENT_BYTES_MAX {
        return Err(DecodeError::Bad(format!("implausible record length {len}")));
    }
    Ok(len)
}

struct Cursor<'a> {
    buf: &'a [u8],
    at: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.buf.len() - self.at < n {
            return Err(DecodeError::Bad("field runs past the record".into()));
        }
        let s = &self.buf[self.at..self.at + n];
        self.at += n;
        Ok(s)
    }
    fn u16(&mut self) -> Result<u16, DecodeError> {
        Ok(u16::from_be_bytes(self.take(2)?.try_into().expect("2")))
    }
    fn u32(&mut self) -> Result<u32, DecodeError> {
        Ok(u32::from_be_bytes(self.take(4)?.try_into().expect("4")))
    }
    fn u64(&mut self) -> Result<u64, DecodeError> {
        Ok(u64::from_be_bytes(self.take(8)?.try_into().expect("8")))
    }
    fn uuid(&mut self) -> Result<Uuid, DecodeError> {
        Ok(Uuid::from_bytes(self.take(16)?.try_into().expect("16")))
    }
    fn hash(&mut self) -> Result<[u8; 32], DecodeError> {
        Ok(self.take(32)?.try_into().expect("32"))
    }
    fn bytes(&mut self) -> Result<&'a [u8], DecodeError> {
        let n = self.u32()? as usize;
        self.take(n)
    }
    fn string(&mut self) -> Result<String, DecodeError> {
        String::from_utf8(self.bytes()?.to_vec())
            .map_err(|_| DecodeError::Bad("string is not UTF-8".into()))
    }
}

/// Decodes one framed record from the start of `buf`. Returns the event, its flags and
/// the bytes it took. Checks the checksum; the caller checks the envelope's hash.
pub(crate) fn decode_record(buf: &[u8]) -> Result<(RecordedEvent, u8, usize), DecodeError> {
    decode_record_answered(buf).map(|(e, flags, used, _)| (e, flags, used))
}

/// A framed record decoded: the event, its flags, the bytes it took and its answer.
pub(crate) type DecodedRecord = (RecordedEvent, u8, usize, Option<Vec<u8>>);

/// `decode_record`, also returning the command's answer the record keeps, if any.
pub(crate) fn decode_record_answered(buf: &[u8]) -> Result<DecodedRecord, DecodeError> {
    if buf.len() < RECORD_HEADER_BYTES {
        return Err(DecodeError::Truncated);
    }
    let len = body_len(buf)?;
    if buf.len() < RECORD_HEADER_BYTES + len {
        return Err(DecodeError::Truncated);
    }
    let body = &buf[RECORD_HEADER_BYTES..RECORD_HEADER_BYTES + len];
    let stored_crc = u32::from_le_bytes(buf[4..8].try_into().expect("4"));
    let len_bytes: [u8; 4] = buf[0..4].try_into().expect("4");
    if checksum(&len_bytes, body) != stored_crc {
        return Err(DecodeError::Bad("checksum mismatch".into()));
    }
    let (e, flags, answer) = decode_body(body)?;
    Ok((e, flags, RECORD_HEADER_BYTES + len, answer))
}

/// Decodes a record's body (the bytes after its 8-byte header) into the event and its
/// flags. Only the format is checked: the caller checks the checksum and the hashes. Public
/// so that the replay tool's read-only verify reads records exactly as the log writes them.
pub fn decode_record_body(body: &[u8]) -> Result<(RecordedEvent, u8), String> {
    decode_body(body)
        .map(|(e, flags, _)| (e, flags))
        .map_err(|error| match error {
            DecodeError::Truncated => "the record is cut short".to_owned(),
            DecodeError::Bad(reason) => reason,
        })
}

pub(crate) type DecodedBody = (RecordedEvent, u8, Option<Vec<u8>>);

pub(crate) fn decode_body(body: &[u8]) -> Result<DecodedBody, DecodeError> {
    let mut c = Cursor { buf: body, at: 0 };
    let flags = c.take(1)?[0];
    if flags & !FLAGS_KNOWN != 0 {
        return Err(DecodeError::Bad(format!(
            "unknown record flags {flags:#04x}"
        )));
    }
    if flags & FLAG_UNKEYED != 0 && (flags & FLAG_LAST_OF_APPEND == 0 || flags & FLAG_ANSWER != 0) {
        return Err(DecodeError::Bad(
            "an unkeyed command's mark on a record that does not end its append, or with an \
             answer"
                .into(),
        ));
    }
    let position = c.u64()?;
    let answer = if flags & FLAG_ANSWER != 0 {
        if flags & FLAG_LAST_OF_APPEND == 0 {
            return Err(DecodeError::Bad(
                "a command's answer on a record that does not end its append".into(),
            ));
        }
        let answer = c.bytes()?;
        if answer.len() > ANSWER_BYTES_MAX {
            return Err(DecodeError::Bad(format!(
                "a command's answer of {} bytes, more than {ANSWER_BYTES_MAX}",
                answer.len()
            )));
        }
        Some(answer.to_vec())
    } else {
        None
    };
    let event_id = c.uuid()?;
    let stream = c.string()?;
    let revision = c.u64()?;
    let event_type = c.string()?;
    let schema_version = c.u16()?;
    let secs = c.u64()? as i64;
    let nanos = c.u32()?;
    let recorded_at: DateTime<Utc> = Utc
        .timestamp_opt(secs, nanos)
        .single()
        .ok_or_else(|| DecodeError::Bad("recorded time out of range".into()))?;
    let actor = c.string()?;
    let command_id = c.uuid()?;
    let correlation_id = c.uuid()?;
    let payload = c.bytes()?.to_vec();
    let predecessor_hash = c.hash()?;
    let hash = c.hash()?;
    if c.at != body.len() {
        return Err(DecodeError::Bad("trailing bytes in record".into()));
    }
    let e = RecordedEvent {
        event_id,
        stream,
        revision,
        position,
        event_type,
        schema_version,
        recorded_at,
        actor,
        command_id,
        correlation_id,
        payload,
        predecessor_hash,
        hash,
    };
    Ok((e, flags, answer))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> NewEvent {
        NewEvent {
            event_id: Uuid::from_u128(7),
            event_type: "SeatAssigned".into(),
            schema_version: 2,
            recorded_at: Utc.timestamp_opt(1_700_000_000, 123_456_789).unwrap(),
            actor: "admin@north.edu".into(),
            correlation_id: Uuid::from_u128(9),
            payload: vec![0x81, 0xa1, b'x', 0x01],
        }
    }

    #[test]
    fn record_round_trips_and_size_is_predicted() {
        let e = seal("license-L1", 3, 42, Uuid::from_u128(5), [7; 32], &sample());
        let mut buf = Vec::new();
        encode_record(&mut buf, &e, FLAG_LAST_OF_APPEND, None);
        assert_eq!(buf.len(), record_bytes("license-L1", &sample()));
        let (back, flags, used) = decode_record(&buf).unwrap();
        assert_eq!(back, e);
        assert_eq!(flags, FLAG_LAST_OF_APPEND);
        assert_eq!(used, buf.len());
        assert_eq!(envelope_hash(&back), back.hash);
    }

    fn assert_every_flipped_byte_is_detected(record: &[u8]) {
        for i in 0..record.len() {
            let mut bad = record.to_vec();
            bad[i] ^= 0x40;
            assert!(
                decode_record(&bad).is_err(),
                "flip at byte {i} went unnoticed"
            );
        }
    }

    // AUD-4: an answer rides on the last record of an append, round trips, is covered by the
    // checksum and leaves the event's hash alone.
    #[test]
    fn a_record_with_an_answer_round_trips_and_every_flipped_byte_is_detected() {
        let e = seal("license-L1", 3, 42, Uuid::from_u128(5), [7; 32], &sample());
        let answer = b"an answer".as_slice();
        let mut buf = Vec::new();
        encode_record(&mut buf, &e, FLAG_LAST_OF_APPEND, Some(answer));
        assert_eq!(
            buf.len(),
            record_bytes("license-L1", &sample()) + answer_record_bytes(Some(answer))
        );
        let (back, flags, used, kept) = decode_record_answered(&buf).unwrap();
        assert_eq!(back, e);
        assert_eq!(flags, FLAG_LAST_OF_APPEND | FLAG_ANSWER);
        assert_eq!(used, buf.len());
        assert_eq!(kept.as_deref(), Some(answer));
        assert_eq!(envelope_hash(&back), e.hash);
        assert_every_flipped_byte_is_detected(&buf);
    }

    #[test]
    fn unknown_flags_and_an_answer_before_the_end_of_an_append_are_refused() {
        let e = seal("s", 0, 0, Uuid::from_u128(5), GENESIS_HASH, &sample());
        let mut plain = Vec::new();
        encode_record(&mut plain, &e, 0, None);
        let body = &plain[RECORD_HEADER_BYTES..];
        let mut unknown = body.to_vec();
        unknown[0] = 0x80;
        assert!(decode_record_body(&unknown).unwrap_err().contains("flags"));
        let mut answered = Vec::new();
        encode_record(&mut answered, &e, FLAG_LAST_OF_APPEND, Some(b"x"));
        let mut not_last = answered[RECORD_HEADER_BYTES..].to_vec();
        not_last[0] = FLAG_ANSWER;
        assert!(
            decode_record_body(&not_last)
                .unwrap_err()
                .contains("does not end its append")
        );
        // The unkeyed mark: only on the last record of an append, and never with an answer.
        let mut unkeyed = body.to_vec();
        unkeyed[0] = FLAG_LAST_OF_APPEND | FLAG_UNKEYED;
        let (_, flags) = decode_record_body(&unkeyed).unwrap();
        assert_eq!(flags, FLAG_LAST_OF_APPEND | FLAG_UNKEYED);
        unkeyed[0] = FLAG_UNKEYED;
        assert!(
            decode_record_body(&unkeyed)
                .unwrap_err()
                .contains("unkeyed")
        );
        let mut unkeyed_answered = answered[RECORD_HEADER_BYTES..].to_vec();
        unkeyed_answered[0] |= FLAG_UNKEYED;
        assert!(
            decode_record_body(&unkeyed_answered)
                .unwrap_err()
                .contains("unkeyed")
        );
    }

    #[test]
    fn every_flipped_byte_is_detected() {
        let e = seal("s", 0, 0, Uuid::from_u128(5), GENESIS_HASH, &sample());
        let mut buf = Vec::new();
        encode_record(&mut buf, &e, 0, None);
        assert_every_flipped_byte_is_detected(&buf);
        for cut in 0..buf.len() {
            assert!(
                decode_record(&buf[..cut]).is_err(),
                "cut at {cut} went unnoticed"
            );
        }
    }

    #[test]
    fn hash_covers_every_field() {
        let base = seal("s", 1, 0, Uuid::from_u128(5), GENESIS_HASH, &sample());
        let mut variants = Vec::new();
        let mut v = base.clone();
        v.event_id = Uuid::from_u128(8);
        variants.push(v);
        let mut v = base.clone();
        v.stream = "t".into();
        variants.push(v);
        let mut v = base.clone();
        v.revision = 2;
        variants.push(v);
        let mut v = base.clone();
        v.event_type = "Other".into();
        variants.push(v);
        let mut v = base.clone();
        v.schema_version = 3;
        variants.push(v);
        let mut v = base.clone();
        v.recorded_at = Utc.timestamp_opt(1_700_000_000, 1).unwrap();
        variants.push(v);
        let mut v = base.clone();
        v.actor = "x".into();
        variants.push(v);
        let mut v = base.clone();
        v.command_id = Uuid::from_u128(6);
        variants.push(v);
        let mut v = base.clone();
        v.correlation_id = Uuid::from_u128(6);
        variants.push(v);
        let mut v = base.clone();
        v.payload.push(0);
        variants.push(v);
        let mut v = base.clone();
        v.predecessor_hash = [1; 32];
        variants.push(v);
        for v in variants {
            assert_ne!(envelope_hash(&v), base.hash, "{v:?}");
        }
    }

    #[test]
    fn stored_digest_equals_the_request_digest() {
        let a = sample();
        let mut b = sample();
        b.payload = vec![1, 2, 3];
        let sealed = [
            seal("s", 0, 0, Uuid::from_u128(5), GENESIS_HASH, &a),
            seal("s", 1, 1, Uuid::from_u128(5), [1; 32], &b),
        ];
        let want = request_digest("s", &[a, b]);
        assert_eq!(stored_digest(sealed.iter()), want);
        assert_ne!(stored_digest(sealed[..1].iter()), want);
    }

    #[test]
    fn request_digest_ignores_retry_metadata_but_not_content() {
        let a = sample();
        let mut retry = a.clone();
        retry.event_id = Uuid::from_u128(99);
        retry.correlation_id = Uuid::from_u128(98);
        retry.recorded_at = Utc.timestamp_opt(1, 0).unwrap();
        assert_eq!(
            request_digest("s", std::slice::from_ref(&a)),
            request_digest("s", &[retry])
        );
        let mut other = a.clone();
        other.payload = vec![1];
        assert_ne!(
            request_digest("s", std::slice::from_ref(&a)),
            request_digest("s", &[other])
        );
        assert_ne!(
            request_digest("s", std::slice::from_ref(&a)),
            request_digest("t", &[a])
        );
    }
}
