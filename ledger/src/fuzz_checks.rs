//! The properties the fuzz target `envelope` checks on the ledger's record format, kept here
//! so that the stable test suite replays the committed corpus through the same code and so
//! that the checks can reach the private encoder. Each function panics when a property
//! fails: a panic is what a fuzzer reports.
//!
//! Not part of the ledger's API; hidden from the documentation.

use chrono::{TimeZone, Utc};
use uuid::Uuid;

use crate::envelope::{
    DecodeError, FLAG_ANSWER, FLAG_LAST_OF_APPEND, FLAG_UNKEYED, RECORD_HEADER_BYTES,
    answer_record_bytes, decode_body, decode_record_answered, decode_record_body, encode_record,
    envelope_hash, record_bytes, seal,
};
use crate::types::{NewEvent, RecordedEvent};

/// The encoded body of `event` (what follows the record header): flags, position, the
/// command's answer if any, canonical bytes, hash.
pub fn encode_record_body(event: &RecordedEvent, flags: u8, answer: Option<&[u8]>) -> Vec<u8> {
    let mut record = Vec::new();
    encode_record(&mut record, event, flags, answer);
    record.split_off(RECORD_HEADER_BYTES)
}

/// Arbitrary bytes, read as a record body and as a framed record.
///
/// Properties: neither decoder panics or allocates more than the input holds (every length
/// prefix is checked against the bytes that are there before anything is copied); the
/// format is canonical, so a body that decodes encodes back to exactly the same bytes, and
/// a framed record that decodes (checksum included) encodes back to the bytes it took.
///
/// Returns the event the body holds, if it decodes, for the payload checks of the domain.
pub fn record(input: &[u8]) -> Option<RecordedEvent> {
    let decoded = match decode_body(input) {
        Ok((event, flags, answer)) => {
            assert!(event.payload.len() <= input.len());
            assert!(answer.as_ref().is_none_or(|a| a.len() <= input.len()));
            assert_eq!(
                encode_record_body(&event, flags, answer.as_deref()),
                input,
                "a decoded body does not encode back to its bytes"
            );
            Some(event)
        }
        Err(reason) => {
            let reason = match reason {
                DecodeError::Bad(reason) => reason,
                DecodeError::Truncated => "cut short".to_owned(),
            };
            assert!(!reason.is_empty());
            assert_eq!(decode_record_body(input).map(|_| ()), Err(reason));
            None
        }
    };
    if let Ok((event, flags, used, answer)) = decode_record_answered(input) {
        assert!(used > RECORD_HEADER_BYTES && used <= input.len());
        let mut again = Vec::new();
        encode_record(&mut again, &event, flags, answer.as_deref());
        assert_eq!(
            again,
            &input[..used],
            "a decoded record does not encode back to its bytes"
        );
    }
    decoded
}

/// Reads the fields of an envelope from fuzz bytes; missing bytes read as zeros, so every
/// input makes an envelope.
struct FieldSource<'a> {
    bytes: &'a [u8],
}

impl FieldSource<'_> {
    fn take(&mut self, wanted: usize) -> Vec<u8> {
        let length = wanted.min(self.bytes.len());
        let (taken, rest) = self.bytes.split_at(length);
        self.bytes = rest;
        let mut field = taken.to_vec();
        field.resize(wanted, 0);
        field
    }

    fn array<const N: usize>(&mut self) -> [u8; N] {
        self.take(N)
            .try_into()
            .expect("take returns the length asked for")
    }

    /// A string of up to 255 bytes, its length given by one byte.
    fn text(&mut self) -> String {
        let [length] = self.array::<1>();
        String::from_utf8_lossy(&self.take(usize::from(length))).into_owned()
    }
}

/// Fuzz bytes made into a valid envelope: sealed, framed, decoded.
///
/// Properties: every envelope the ledger can seal round-trips through the record format
/// with its flags; the record takes exactly the bytes `record_bytes` predicts; the decoded
/// envelope's hash is its own; and every shorter prefix of the record is refused as cut
/// short, which is what recovery relies on to find a torn tail.
pub fn envelope_round_trip(input: &[u8]) {
    let mut source = FieldSource { bytes: input };
    let [flags] = source.array::<1>();
    // Only the last record of an append keeps an answer or the unkeyed mark, never both;
    // other flag bits are not written.
    let answer = (flags & FLAG_ANSWER != 0 && flags & FLAG_LAST_OF_APPEND != 0)
        .then(|| source.text().into_bytes());
    let unkeyed = flags & FLAG_UNKEYED != 0 && flags & FLAG_LAST_OF_APPEND != 0 && answer.is_none();
    let flags = flags & FLAG_LAST_OF_APPEND | if unkeyed { FLAG_UNKEYED } else { 0 };
    let stream = source.text();
    let revision = u64::from_be_bytes(source.array());
    let position = u64::from_be_bytes(source.array());
    let command_id = Uuid::from_bytes(source.array());
    let predecessor_hash: [u8; 32] = source.array();
    let seconds = i64::from_be_bytes(source.array());
    let nanoseconds = u32::from_be_bytes(source.array());
    // Times chrono cannot represent never reach the ledger; the fuzz input picks another.
    let recorded_at = Utc
        .timestamp_opt(seconds, nanoseconds)
        .single()
        .unwrap_or_else(|| {
            Utc.timestamp_opt(seconds.rem_euclid(1 << 40), nanoseconds % 1_000_000_000)
                .single()
                .expect("a time within 2^40 seconds of 1970 is valid")
        });
    let event = NewEvent {
        event_id: Uuid::from_bytes(source.array()),
        event_type: source.text(),
        schema_version: u16::from_be_bytes(source.array()),
        recorded_at,
        actor: source.text(),
        correlation_id: Uuid::from_bytes(source.array()),
        payload: source.bytes.to_vec(),
    };
    let sealed = seal(
        &stream,
        revision,
        position,
        command_id,
        predecessor_hash,
        &event,
    );
    let mut record = Vec::new();
    encode_record(&mut record, &sealed, flags, answer.as_deref());
    assert_eq!(
        record.len(),
        record_bytes(&stream, &event) + answer_record_bytes(answer.as_deref())
    );
    let (decoded, decoded_flags, used, decoded_answer) =
        decode_record_answered(&record).expect("a sealed envelope decodes");
    assert_eq!(decoded, sealed);
    let want_flags = if answer.is_some() {
        flags | FLAG_ANSWER
    } else {
        flags
    };
    assert_eq!(decoded_flags, want_flags);
    assert_eq!(decoded_answer, answer);
    assert_eq!(used, record.len());
    assert_eq!(envelope_hash(&decoded), decoded.hash);
    assert_eq!(
        decode_record_body(&record[RECORD_HEADER_BYTES..]),
        Ok((sealed, want_flags))
    );
    for cut in 0..record.len() {
        assert_eq!(
            decode_record_answered(&record[..cut]).map(|_| ()),
            Err(DecodeError::Truncated),
            "a record cut to {cut} bytes was not refused as cut short"
        );
    }
}
