//! The properties the fuzz targets `csv_import`, `email` and (in part) `envelope` check, kept
//! here so that the stable test suite replays the committed corpus through exactly the same
//! code (`tests/tests/acceptance/fuzz_corpus.rs`) and so that the checks can reach the
//! parser's private row bound. Each function takes the raw fuzz input, never returns an
//! error and panics when a property fails: a panic is what a fuzzer reports.
//!
//! Not part of the domain's API; hidden from the documentation.

use crate::csv_import::{
    CSV_ROW_LENGTH_MAX_BYTES, CsvError, CsvImportParser, CsvRow, EMPTY_EMAIL_REASON,
    INVALID_UTF8_REASON, ROW_TOO_LONG_REASON, RowError, UTF8_BYTE_ORDER_MARK, is_email_header,
};
use crate::events::Event;
use crate::values::{DomainName, EMAIL_LENGTH_MAX_BYTES, Email};

/// The longest reason a refused email or domain may give. A reason may repeat a domain (at
/// most `EMAIL_LENGTH_MAX_BYTES`), never the whole input, so that pasted junk or a secret
/// does not come back in an answer.
pub const REASON_LENGTH_MAX_BYTES: usize = 2 * EMAIL_LENGTH_MAX_BYTES;

/// The row bounds the CSV check picks from with the input's first byte: small ones reach
/// the long-row paths with the short inputs a fuzzer makes, the real one keeps its paths
/// covered too.
const ROW_LENGTH_MAX_CHOICES: [usize; 6] = [1, 4, 9, 20, 100, CSV_ROW_LENGTH_MAX_BYTES];

/// The largest chunk the split plan makes, in bytes. Small chunks put boundaries inside
/// fields, CRLFs, multi-byte characters and the byte-order mark.
const CHUNK_LENGTH_MAX_BYTES: usize = 16;

/// Fuzz target `csv_import`: input is one byte choosing the row bound, one byte seeding the
/// split plan, then the file.
///
/// Properties (CSV-1 .. CSV-4): the parser never panics; the file split into chunks of
/// 0 to 16 bytes gives the same outcome as the file in one chunk; that outcome equals the
/// one of a plain reference parser written from the rules (which reads the whole file at
/// once and knows nothing of chunks); rows come in strictly increasing line order; every
/// accepted email parses again to itself; the row buffer never grows past one row; and
/// the parser refuses data after its end.
pub fn csv_import(input: &[u8]) {
    let [bound_choice, split_seed, file @ ..] = input else {
        return;
    };
    let row_length_max =
        ROW_LENGTH_MAX_CHOICES[usize::from(*bound_choice) % ROW_LENGTH_MAX_CHOICES.len()];

    let mut parser = CsvImportParser::with_row_length_max(row_length_max);
    let whole = parse_chunks(&mut parser, [file]);
    assert_eq!(
        parser.field.len(),
        row_length_max + 1,
        "the row buffer must stay one row long"
    );
    // A finished parser keeps its outcome: more data is refused, finishing again repeats it.
    let mut more = Vec::new();
    match &whole {
        Ok(_) => {
            assert_eq!(parser.push(b"x", &mut more), Err(CsvError::DataAfterEnd));
            assert_eq!(parser.finish(&mut more), Ok(()));
        }
        Err(error) => {
            assert_eq!(parser.push(b"x", &mut more).as_ref(), Err(error));
            assert_eq!(parser.finish(&mut more).as_ref(), Err(error));
        }
    }
    assert!(more.is_empty(), "a finished parser gave more rows");

    let chunks = split_plan(file, *split_seed);
    let mut split_parser = CsvImportParser::with_row_length_max(row_length_max);
    let split = parse_chunks(&mut split_parser, chunks);
    assert_eq!(
        split, whole,
        "a split file gave another outcome than the whole file"
    );

    let reference = reference_parse(file, row_length_max);
    assert_eq!(
        whole, reference,
        "the parser and the reference parser disagree"
    );

    if let Ok(rows) = &whole {
        let mut previous_line = 1;
        for row in rows {
            let line = match row {
                CsvRow::Email { line, email } => {
                    assert_eq!(Email::parse(email.as_str()).as_ref(), Ok(email));
                    *line
                }
                CsvRow::Invalid(error) => {
                    assert!(!error.reason.is_empty());
                    assert!(error.reason.len() <= REASON_LENGTH_MAX_BYTES);
                    error.line
                }
            };
            assert!(line > previous_line, "rows out of line order");
            previous_line = line;
        }
    }
}

/// Feeds `chunks` to `parser` and finishes it, collecting every row.
fn parse_chunks<'a>(
    parser: &mut CsvImportParser,
    chunks: impl IntoIterator<Item = &'a [u8]>,
) -> Result<Vec<CsvRow>, CsvError> {
    let mut rows = Vec::new();
    for chunk in chunks {
        parser.push(chunk, &mut rows)?;
    }
    parser.finish(&mut rows)?;
    Ok(rows)
}

/// Cuts `file` into chunks of 0 to `CHUNK_LENGTH_MAX_BYTES` bytes, their lengths drawn from a
/// small xorshift generator seeded by `seed`, so that one fuzz byte explores many splits.
fn split_plan(file: &[u8], seed: u8) -> Vec<&[u8]> {
    let mut state = u32::from(seed).wrapping_mul(0x9e37_79b9) | 1;
    let mut chunks = Vec::new();
    let mut rest = file;
    while !rest.is_empty() {
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        let length = (state as usize % (CHUNK_LENGTH_MAX_BYTES + 1)).min(rest.len());
        let (chunk, tail) = rest.split_at(length);
        chunks.push(chunk);
        rest = tail;
    }
    chunks
}

/// A field of a record as the reference parser reads it: its content, and the bytes of the
/// record up to its end (its delimiter included; a line end or the end of the file not).
struct ReferenceField {
    content: Vec<u8>,
    record_length_at_end: usize,
}

/// The CSV rules of `csv_core`'s default reader (RFC 4180 with LF, CR and CRLF line ends),
/// written out plainly for one record starting at `file[start]`, which is not a line end.
/// Returns the fields and the index just past the record's line end.
fn reference_record(file: &[u8], start: usize) -> (Vec<ReferenceField>, usize) {
    #[derive(Clone, Copy, PartialEq)]
    enum State {
        StartField,
        Unquoted,
        Quoted,
        QuoteInQuoted,
    }
    let mut fields = Vec::new();
    let mut content = Vec::new();
    let mut state = State::StartField;
    let mut at = start;
    loop {
        let Some(&byte) = file.get(at) else {
            fields.push(ReferenceField {
                content,
                record_length_at_end: at - start,
            });
            return (fields, at);
        };
        let line_end = byte == b'\n' || byte == b'\r';
        match state {
            State::Quoted => {
                if byte == b'"' {
                    state = State::QuoteInQuoted;
                } else {
                    content.push(byte);
                }
            }
            State::StartField if byte == b'"' => state = State::Quoted,
            State::QuoteInQuoted if byte == b'"' => {
                content.push(byte);
                state = State::Quoted;
            }
            State::StartField | State::Unquoted | State::QuoteInQuoted => {
                if byte == b',' {
                    fields.push(ReferenceField {
                        content: std::mem::take(&mut content),
                        record_length_at_end: at + 1 - start,
                    });
                    state = State::StartField;
                } else if line_end {
                    fields.push(ReferenceField {
                        content,
                        record_length_at_end: at - start,
                    });
                    return (fields, at + 1);
                } else {
                    content.push(byte);
                    state = State::Unquoted;
                }
            }
        }
        at += 1;
    }
}

/// The lines before `offset`: LF, CR and CRLF each end one.
fn line_of(file: &[u8], offset: usize) -> u64 {
    let mut line = 1;
    let mut after_carriage_return = false;
    for &byte in &file[..offset] {
        if byte == b'\r' || (byte == b'\n' && !after_carriage_return) {
            line += 1;
        }
        after_carriage_return = byte == b'\r';
    }
    line
}

/// What CSV-1 .. CSV-4 say the rows of `file` are, computed from the whole file at once.
fn reference_parse(file: &[u8], row_length_max: usize) -> Result<Vec<CsvRow>, CsvError> {
    let file = file.strip_prefix(UTF8_BYTE_ORDER_MARK).unwrap_or(file);
    let mut rows = Vec::new();
    let mut email_column: Option<usize> = None;
    let mut at = 0;
    while at < file.len() {
        if file[at] == b'\n' || file[at] == b'\r' {
            at += 1;
            continue;
        }
        let start = at;
        let (fields, next) = reference_record(file, start);
        at = next;
        let line = line_of(file, start);
        let record_length = fields.last().map_or(0, |field| field.record_length_at_end);
        let Some(column) = email_column else {
            // The header: the first field over the bound or not UTF-8 refuses the file.
            for (index, field) in fields.iter().enumerate() {
                if field.record_length_at_end > row_length_max {
                    return Err(CsvError::HeaderTooLarge);
                }
                let name =
                    std::str::from_utf8(&field.content).map_err(|_| CsvError::InvalidUtf8Header)?;
                if email_column.is_none() && is_email_header(name) {
                    email_column = Some(index);
                }
            }
            if email_column.is_none() {
                return Err(CsvError::MissingEmailHeader);
            }
            continue;
        };
        if record_length > row_length_max {
            rows.push(CsvRow::Invalid(RowError {
                line,
                reason: ROW_TOO_LONG_REASON.to_owned(),
            }));
            continue;
        }
        let blank = fields.iter().all(|field| {
            std::str::from_utf8(&field.content).is_ok_and(|text| text.trim().is_empty())
        });
        if blank {
            continue;
        }
        let email = match fields.get(column) {
            None => Err(EMPTY_EMAIL_REASON.to_owned()),
            Some(field) => match std::str::from_utf8(&field.content) {
                Ok(text) => Email::parse(text),
                Err(_) => Err(INVALID_UTF8_REASON.to_owned()),
            },
        };
        rows.push(match email {
            Ok(email) => CsvRow::Email { line, email },
            Err(reason) => CsvRow::Invalid(RowError { line, reason }),
        });
    }
    if email_column.is_none() {
        return Err(CsvError::MissingEmailHeader);
    }
    Ok(rows)
}

/// Fuzz target `email`: the input as text (invalid UTF-8 replaced, as a client's text is
/// always UTF-8).
///
/// Properties (SPEC §1, ADD-2): `Email::parse` and `DomainName::parse` never panic; a
/// refusal gives a short reason; an accepted value is trimmed, lower-cased, at most 254
/// bytes, without spaces or control characters, `local@domain` with exactly one '@' and a
/// domain of at least two non-empty labels; parsing the normalised text gives it back
/// (normalisation is idempotent), also with white space around it; an email's domain is a
/// valid `DomainName`; and both survive the MessagePack encoding events use.
pub fn email(input: &[u8]) {
    let text = String::from_utf8_lossy(input);
    match Email::parse(&text) {
        Ok(email) => {
            let normalised = email.as_str();
            let (local, domain) = normalised
                .split_once('@')
                .expect("a valid email has an '@'");
            assert!(!local.is_empty());
            assert_domain_invariants(domain);
            assert!(normalised.len() <= EMAIL_LENGTH_MAX_BYTES);
            assert!(
                !normalised
                    .chars()
                    .any(|c| c.is_whitespace() || c.is_control())
            );
            assert_eq!(normalised.to_lowercase(), normalised, "not lower-cased");
            assert_eq!(email.domain(), domain);
            assert_eq!(Email::parse(normalised).as_ref(), Ok(&email));
            assert_eq!(
                Email::parse(&format!(" \t{normalised}\r\n")).as_ref(),
                Ok(&email)
            );
            let domain_name = DomainName::parse(domain).expect("an email's domain is a domain");
            assert_eq!(domain_name, DomainName::of(&email));
            let encoded = rmp_serde::to_vec_named(&email).expect("an email encodes");
            let decoded: Email = rmp_serde::from_slice(&encoded).expect("an email decodes");
            assert_eq!(decoded, email);
        }
        Err(reason) => assert_reason(&reason),
    }
    match DomainName::parse(&text) {
        Ok(domain) => {
            assert_domain_invariants(domain.as_str());
            assert!(domain.as_str().len() <= EMAIL_LENGTH_MAX_BYTES);
            assert_eq!(DomainName::parse(domain.as_str()).as_ref(), Ok(&domain));
            // A valid domain with a valid local part is a valid email of that domain.
            if let Ok(email) = Email::parse(&format!("a@{}", domain.as_str())) {
                assert_eq!(DomainName::of(&email), domain);
            }
            let encoded = rmp_serde::to_vec_named(&domain).expect("a domain encodes");
            let decoded: DomainName = rmp_serde::from_slice(&encoded).expect("a domain decodes");
            assert_eq!(decoded, domain);
        }
        Err(reason) => assert_reason(&reason),
    }
}

fn assert_domain_invariants(domain: &str) {
    assert!(!domain.contains('@'));
    assert!(domain.contains('.'), "a domain has a dot");
    assert!(domain.split('.').all(|label| !label.is_empty()));
    assert_eq!(domain.trim(), domain);
    assert_eq!(domain.to_lowercase(), domain, "not lower-cased");
    assert!(!domain.chars().any(|c| c.is_whitespace() || c.is_control()));
}

fn assert_reason(reason: &str) {
    assert!(!reason.is_empty(), "an empty reason");
    assert!(
        reason.len() <= REASON_LENGTH_MAX_BYTES,
        "a reason of {} bytes",
        reason.len()
    );
}

/// Part of fuzz target `envelope`: the payload decoder of the domain's events.
///
/// Properties (AUD-2): `Event::decode` never panics on any type name, version and bytes;
/// an event it accepts encodes again and decodes to the same event, under its own type
/// name and version.
pub fn event_payload(event_type: &str, schema_version: u16, payload: &[u8]) {
    match Event::decode(event_type, schema_version, payload) {
        Ok(event) => {
            assert_eq!(event.type_name(), event_type);
            assert_eq!(event.schema_version(), schema_version);
            let encoded = event.encode();
            assert_eq!(
                Event::decode(event.type_name(), event.schema_version(), &encoded).as_ref(),
                Ok(&event),
                "an accepted event does not round-trip"
            );
        }
        Err(error) => assert!(!error.to_string().is_empty()),
    }
}

/// Fuzz input for `event_payload`: one byte choosing the type name (past the known names it
/// is one that no event has), two bytes of version, then the payload.
pub fn event_payload_input(input: &[u8]) {
    let [type_choice, version_high, version_low, payload @ ..] = input else {
        return;
    };
    let event_type = Event::TYPE_NAMES
        .get(usize::from(*type_choice))
        .copied()
        .unwrap_or("NoSuchEvent");
    event_payload(
        event_type,
        u16::from_be_bytes([*version_high, *version_low]),
        payload,
    );
}
