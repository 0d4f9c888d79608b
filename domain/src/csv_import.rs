//! The file of `ImportCsv` (SPEC CSV-1 .. CSV-4), parsed as a stream.
//!
//! A file can hold a million rows, so it is never held whole: `CsvImportParser` is a push
//! parser that takes the file in chunks of any size and hands back every complete row. The
//! CSV syntax itself is `csv_core`'s, which keeps its state between chunks; this module adds
//! what the rules need on top of it: the `Email` header, physical line numbers, bounds on
//! memory, and a reason for every row that is not a valid email.
//!
//! Only three things refuse the whole file, because without them no row can be read: a
//! missing `Email` header, a header row that is too long, and a header row that is not
//! UTF-8. Everything else is a row error.

use std::fmt;

use csv_core::{ReadFieldResult, Reader};

use crate::error::DomainError;
use crate::values::Email;

/// The longest row, in bytes of the file without its line end. A longer row is reported as
/// an error and skipped without being buffered, so that one endless line cannot exhaust
/// memory.
pub const CSV_ROW_LENGTH_MAX_BYTES: usize = 64 * 1024;

/// The most row errors an answer lists (CSV-4). Every error is counted.
pub const ROW_ERRORS_REPORTED_MAX: usize = 1_000;

/// The byte-order mark that spreadsheet programs put in front of UTF-8 exports.
pub(crate) const UTF8_BYTE_ORDER_MARK: &[u8] = b"\xef\xbb\xbf";

/// The name the header cell of the email column must have, compared without regard to
/// ASCII case and surrounding white space (CSV-1).
const EMAIL_HEADER_NAME: &str = "email";

/// The reason for a row whose Email cell is empty or missing (CSV-3).
pub(crate) const EMPTY_EMAIL_REASON: &str = "empty email";
/// The reason for a row whose Email cell is not UTF-8 text.
pub(crate) const INVALID_UTF8_REASON: &str = "not valid UTF-8";
/// The reason for a row longer than `CSV_ROW_LENGTH_MAX_BYTES`.
pub(crate) const ROW_TOO_LONG_REASON: &str = "row is longer than 64 KiB";

/// Why the whole file was refused. Each message tells a person what to fix.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CsvError {
    #[error("missing Email header: the first row of the file must have a column named Email")]
    MissingEmailHeader,
    #[error(
        "the first row of the file is longer than 64 KiB; it must hold only the column names, one of them Email"
    )]
    HeaderTooLarge,
    #[error(
        "the first row of the file is not valid UTF-8 text; save the file as CSV with UTF-8 encoding and try again"
    )]
    InvalidUtf8Header,
    #[error("the file had already ended; no more data can follow it")]
    DataAfterEnd,
}

impl From<CsvError> for DomainError {
    fn from(error: CsvError) -> Self {
        DomainError::InvalidArgument(error.to_string())
    }
}

/// A row that is not skipped: either a valid email or an error, both at the physical line
/// where the row starts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CsvRow {
    Email { line: u64, email: Email },
    Invalid(RowError),
}

/// A row that could not be applied (CSV-3): its physical line (the header is line 1, blank
/// lines count, a row spanning lines is at the line it starts on) and a reason for a person.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RowError {
    pub line: u64,
    pub reason: String,
}

/// The row errors of one import as the answer reports them (CSV-4): all of them counted,
/// the first `ROW_ERRORS_REPORTED_MAX` kept, so that a file of a million bad rows still
/// gives a small answer.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RowErrors {
    pub count: u64,
    pub first: Vec<RowError>,
}

impl RowErrors {
    pub fn new() -> Self {
        Self::default()
    }

    /// Counts `error`, and keeps it when fewer than `ROW_ERRORS_REPORTED_MAX` are kept.
    pub fn record(&mut self, error: RowError) {
        self.count += 1;
        if self.first.len() < ROW_ERRORS_REPORTED_MAX {
            self.first.push(error);
        }
    }
}

/// Where the parser stands in the file.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Phase {
    /// Fewer than three bytes have arrived and they could still be the start of a
    /// byte-order mark; they are held until that is decided.
    Start { held: Vec<u8> },
    /// Reading the header row; `email_column` is the first column named Email so far.
    Header { email_column: Option<usize> },
    /// Reading data rows.
    Rows { email_column: usize },
    /// `finish` has run; the file is complete.
    Finished,
    /// The file was refused; every later call gives the same error again.
    Failed(CsvError),
}

/// What is known about the record being read. A record is a row as CSV sees it: it may
/// span several physical lines through quoted line breaks.
#[derive(Debug, Default)]
struct Record {
    /// Whether a record has begun; between records the parser skips blank lines itself so
    /// that it knows the line on which the next record starts.
    started: bool,
    /// The physical line of the record's first byte.
    start_line: u64,
    /// Bytes of the file consumed by the record so far, delimiters and quotes included.
    length: usize,
    /// The index of the field being read.
    field_index: usize,
    /// Whether the record went over the length bound; its remaining bytes are skipped.
    too_long: bool,
    /// Whether any cell so far holds more than white space.
    has_content: bool,
    /// The outcome of the Email cell, once that cell has been read.
    email: Option<Result<Email, String>>,
}

/// A push parser for the CSV file of `ImportCsv` (CSV-1 .. CSV-4).
///
/// Feed it the file in chunks of any size with `push` and end with `finish`. Rows come out
/// in file order, and the same file gives the same rows however it is split, including
/// inside a field, a CRLF, a multi-byte character or the byte-order mark. Its memory is
/// bounded by one row, whatever the file.
pub struct CsvImportParser {
    reader: Reader,
    phase: Phase,
    /// The longest row accepted; `CSV_ROW_LENGTH_MAX_BYTES` except in tests and fuzzing,
    /// which use a small bound to reach the long-row paths with small files.
    row_length_max: usize,
    /// The physical line of the next byte, counting LF, CRLF and a lone CR each as one line
    /// end, as text editors do.
    line: u64,
    /// Whether the last byte seen was a CR, so that a CRLF split between two chunks still
    /// counts as one line end.
    after_carriage_return: bool,
    record: Record,
    /// The field being read. It is one byte longer than the row bound, so that a full
    /// buffer proves the row is too long.
    pub(crate) field: Box<[u8]>,
    /// How much of `field` holds the field being read.
    field_length: usize,
}

impl fmt::Debug for CsvImportParser {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The field buffer is left out: it is large and may hold personal data.
        f.debug_struct("CsvImportParser")
            .field("phase", &self.phase)
            .field("line", &self.line)
            .finish_non_exhaustive()
    }
}

impl Default for CsvImportParser {
    fn default() -> Self {
        Self::new()
    }
}

impl CsvImportParser {
    pub fn new() -> Self {
        Self::with_row_length_max(CSV_ROW_LENGTH_MAX_BYTES)
    }

    pub(crate) fn with_row_length_max(row_length_max: usize) -> Self {
        let mut reader = Reader::new();
        // `csv_core` strips a byte-order mark only when the first input it sees holds all
        // three bytes of it, which depends on where the file was split. This parser strips
        // the mark itself, so `csv_core` must never strip one: a first read of empty input
        // marks the reader as started and leaves it in its start state, because the start
        // state is also the state in which the input may end.
        let _ = reader.read_field(&[], &mut [0]);
        Self {
            reader,
            phase: Phase::Start { held: Vec::new() },
            row_length_max,
            line: 1,
            after_carriage_return: false,
            record: Record::default(),
            field: vec![0; row_length_max + 1].into_boxed_slice(),
            field_length: 0,
        }
    }

    /// Parses as much of `chunk` as forms complete rows; keeps any partial row for the next
    /// chunk.
    pub fn push(&mut self, chunk: &[u8], rows: &mut Vec<CsvRow>) -> Result<(), CsvError> {
        // Data after the end is the caller's mistake, not a fault of the file, so it leaves
        // the finished parse as it was.
        if self.phase == Phase::Finished {
            return Err(CsvError::DataAfterEnd);
        }
        let outcome = self.push_unchecked(chunk, rows);
        self.remember_failure(outcome)
    }

    /// End of input: flushes the last row (a file need not end with a newline).
    ///
    /// Calling it again does nothing.
    pub fn finish(&mut self, rows: &mut Vec<CsvRow>) -> Result<(), CsvError> {
        let outcome = self.finish_unchecked(rows);
        self.remember_failure(outcome)
    }

    fn remember_failure(&mut self, outcome: Result<(), CsvError>) -> Result<(), CsvError> {
        if let Err(error) = &outcome {
            self.phase = Phase::Failed(error.clone());
        }
        outcome
    }

    fn push_unchecked(&mut self, chunk: &[u8], rows: &mut Vec<CsvRow>) -> Result<(), CsvError> {
        match &mut self.phase {
            Phase::Failed(error) => Err(error.clone()),
            Phase::Finished => Err(CsvError::DataAfterEnd),
            Phase::Start { held } => {
                let wanted = UTF8_BYTE_ORDER_MARK.len() - held.len();
                let (head, rest) = chunk.split_at(wanted.min(chunk.len()));
                held.extend_from_slice(head);
                if held.len() < UTF8_BYTE_ORDER_MARK.len() && UTF8_BYTE_ORDER_MARK.starts_with(held)
                {
                    // Still undecided, and `rest` is empty because `head` took all of it.
                    return Ok(());
                }
                let held = std::mem::take(held);
                self.phase = Phase::Header { email_column: None };
                if held != UTF8_BYTE_ORDER_MARK {
                    self.parse(&held, rows)?;
                }
                self.parse(rest, rows)
            }
            Phase::Header { .. } | Phase::Rows { .. } => self.parse(chunk, rows),
        }
    }

    fn finish_unchecked(&mut self, rows: &mut Vec<CsvRow>) -> Result<(), CsvError> {
        match &mut self.phase {
            Phase::Failed(error) => return Err(error.clone()),
            Phase::Finished => return Ok(()),
            Phase::Start { held } => {
                // Fewer than three bytes arrived, so they are not a byte-order mark.
                let held = std::mem::take(held);
                self.phase = Phase::Header { email_column: None };
                self.parse(&held, rows)?;
            }
            Phase::Header { .. } | Phase::Rows { .. } => {}
        }
        // Empty input tells `csv_core` that the file has ended: it completes a last record
        // that has no line end, then reports the end.
        loop {
            let (result, consumed, written) = self
                .reader
                .read_field(&[], &mut self.field[self.field_length..]);
            if result == ReadFieldResult::End {
                break;
            }
            self.handle_read(result, &[], consumed, written, rows)?;
        }
        match self.phase {
            // The header row never ended: the file is empty or holds only blank lines.
            Phase::Header { .. } => Err(CsvError::MissingEmailHeader),
            _ => {
                self.phase = Phase::Finished;
                Ok(())
            }
        }
    }

    /// Feeds `input` to `csv_core`, one field at a time, and acts on each result.
    fn parse(&mut self, mut input: &[u8], rows: &mut Vec<CsvRow>) -> Result<(), CsvError> {
        while !input.is_empty() {
            if !self.record.started {
                // Blank lines between records are skipped here rather than by `csv_core`,
                // so that the line on which the next record starts is known (CSV-3).
                let blank = input
                    .iter()
                    .take_while(|&&byte| byte == b'\n' || byte == b'\r')
                    .count();
                self.count_lines(&input[..blank]);
                input = &input[blank..];
                if input.is_empty() {
                    break;
                }
                self.record = Record {
                    started: true,
                    start_line: self.line,
                    ..Record::default()
                };
                self.field_length = 0;
            }
            // A record that is too long is read into the start of the buffer over and over,
            // which skips it without keeping any of it.
            let output_start = if self.record.too_long {
                0
            } else {
                self.field_length
            };
            let (result, consumed, written) = self
                .reader
                .read_field(input, &mut self.field[output_start..]);
            let (read, rest) = input.split_at(consumed);
            input = rest;
            self.handle_read(result, read, consumed, written, rows)?;
        }
        Ok(())
    }

    /// Acts on one result of `csv_core`'s `read_field`, which consumed `read` (empty at the
    /// end of the file) and wrote `written` bytes of field content.
    fn handle_read(
        &mut self,
        result: ReadFieldResult,
        read: &[u8],
        consumed: usize,
        written: usize,
        rows: &mut Vec<CsvRow>,
    ) -> Result<(), CsvError> {
        self.count_lines(read);
        self.record.length += consumed;
        if !self.record.too_long {
            self.field_length += written;
        }
        let record_end = match result {
            ReadFieldResult::InputEmpty | ReadFieldResult::OutputFull => false,
            ReadFieldResult::Field { record_end } => record_end,
            // `End` comes only from empty input, and `finish` stops on it before asking.
            ReadFieldResult::End => return Ok(()),
        };
        // The line end that closes a record is the last byte consumed, unless the record
        // was closed by the end of the file. It is not part of the row's length.
        let line_end_bytes = usize::from(record_end && consumed > 0);
        let over_bound = result == ReadFieldResult::OutputFull
            || self.record.length - line_end_bytes > self.row_length_max;
        // The length is checked before the field is looked at, so that where the file was
        // split never changes which of the two is reported first.
        if over_bound && !self.record.too_long {
            self.record.too_long = true;
            self.field_length = 0;
            match self.phase {
                Phase::Header { .. } => return Err(CsvError::HeaderTooLarge),
                _ => rows.push(CsvRow::Invalid(RowError {
                    line: self.record.start_line,
                    reason: ROW_TOO_LONG_REASON.to_owned(),
                })),
            }
        }
        if matches!(result, ReadFieldResult::Field { .. }) && !self.record.too_long {
            self.end_field()?;
        }
        if record_end {
            self.end_record(rows)?;
        }
        Ok(())
    }

    /// Takes note of the field that was just read completely.
    fn end_field(&mut self) -> Result<(), CsvError> {
        let cell = &self.field[..self.field_length];
        match &mut self.phase {
            Phase::Header { email_column } => {
                let name = std::str::from_utf8(cell).map_err(|_| CsvError::InvalidUtf8Header)?;
                if email_column.is_none() && is_email_header(name) {
                    *email_column = Some(self.record.field_index);
                }
            }
            Phase::Rows { email_column } => {
                let text = std::str::from_utf8(cell);
                // Bytes that are not UTF-8 are not white space, so such a row is not blank.
                if !text.is_ok_and(|text| text.trim().is_empty()) {
                    self.record.has_content = true;
                }
                if self.record.field_index == *email_column {
                    self.record.email = Some(match text {
                        // `Email::parse` gives "empty email" for a cell of white space.
                        Ok(text) => Email::parse(text),
                        Err(_) => Err(INVALID_UTF8_REASON.to_owned()),
                    });
                }
            }
            Phase::Start { .. } | Phase::Finished | Phase::Failed(_) => {}
        }
        self.record.field_index += 1;
        self.field_length = 0;
        Ok(())
    }

    /// Turns the record that just ended into a row, an error, or nothing.
    fn end_record(&mut self, rows: &mut Vec<CsvRow>) -> Result<(), CsvError> {
        let record = std::mem::take(&mut self.record);
        self.field_length = 0;
        match self.phase {
            Phase::Header { email_column } => {
                let email_column = email_column.ok_or(CsvError::MissingEmailHeader)?;
                self.phase = Phase::Rows { email_column };
            }
            Phase::Rows { .. } => {
                // A too-long row was reported when it went over the bound, and a row of
                // blank cells is skipped silently (CSV-3).
                if record.too_long || !record.has_content {
                    return Ok(());
                }
                let line = record.start_line;
                rows.push(match record.email {
                    Some(Ok(email)) => CsvRow::Email { line, email },
                    Some(Err(reason)) => CsvRow::Invalid(RowError { line, reason }),
                    // The row has fewer cells than the Email column needs.
                    None => CsvRow::Invalid(RowError {
                        line,
                        reason: EMPTY_EMAIL_REASON.to_owned(),
                    }),
                });
            }
            Phase::Start { .. } | Phase::Finished | Phase::Failed(_) => {}
        }
        Ok(())
    }

    /// Advances the line count over `bytes`: LF, CR and CRLF each end one line, also when a
    /// CRLF arrives in two chunks.
    fn count_lines(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            match byte {
                b'\r' => self.line += 1,
                b'\n' if !self.after_carriage_return => self.line += 1,
                _ => {}
            }
            self.after_carriage_return = byte == b'\r';
        }
    }
}

/// Whether a header cell names the email column (CSV-1). A byte-order mark inside the cell
/// is ignored too: it is invisible, and some tools write it twice.
pub(crate) fn is_email_header(name: &str) -> bool {
    name.trim_matches(|character: char| character.is_whitespace() || character == '\u{feff}')
        .eq_ignore_ascii_case(EMAIL_HEADER_NAME)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// The outcome of a whole file, rows as `(line, Ok(email) | Err(reason))`.
    type Outcome = Result<Vec<(u64, Result<String, String>)>, CsvError>;

    fn simplify(rows: &[CsvRow]) -> Vec<(u64, Result<String, String>)> {
        rows.iter()
            .map(|row| match row {
                CsvRow::Email { line, email } => (*line, Ok(email.as_str().to_owned())),
                CsvRow::Invalid(error) => (error.line, Err(error.reason.clone())),
            })
            .collect()
    }

    /// Parses `chunks` in order with `parser` and finishes.
    fn parse_chunks_with<'a>(
        mut parser: CsvImportParser,
        chunks: impl IntoIterator<Item = &'a [u8]>,
    ) -> Result<Vec<CsvRow>, CsvError> {
        let mut rows = Vec::new();
        for chunk in chunks {
            parser.push(chunk, &mut rows)?;
        }
        parser.finish(&mut rows)?;
        Ok(rows)
    }

    fn parse_whole(file: &[u8]) -> Outcome {
        parse_chunks_with(CsvImportParser::new(), [file]).map(|rows| simplify(&rows))
    }

    fn parse_byte_by_byte(file: &[u8]) -> Outcome {
        parse_chunks_with(CsvImportParser::new(), file.chunks(1)).map(|rows| simplify(&rows))
    }

    fn valid(line: u64, email: &str) -> (u64, Result<String, String>) {
        (line, Ok(email.to_owned()))
    }

    fn invalid(line: u64, reason: &str) -> (u64, Result<String, String>) {
        (line, Err(reason.to_owned()))
    }

    const SPREADSHEET_EXPORT: &str = "\u{feff}Name,EMAIL \r\n\"Doe, Jane\",jane@north.edu\r\nBob,BOB@north.edu \r\n\r\nEve,not an email\r\n\"Ann\",\"ann@north.edu\"\r\nBob again,bob@north.edu\r\n";

    #[test]
    fn spreadsheet_export_gives_rows_at_their_physical_lines() {
        // CSV-1, CSV-2, CSV-3: byte-order mark, CRLF, a quoted comma, a trailing space, a
        // blank line that counts as line 4, and an invalid email with `Email::parse`'s reason.
        let expected = vec![
            valid(2, "jane@north.edu"),
            valid(3, "bob@north.edu"),
            invalid(5, "an email cannot contain spaces"),
            valid(6, "ann@north.edu"),
            valid(7, "bob@north.edu"),
        ];
        assert_eq!(
            parse_whole(SPREADSHEET_EXPORT.as_bytes()),
            Ok(expected.clone())
        );
        assert_eq!(
            parse_byte_by_byte(SPREADSHEET_EXPORT.as_bytes()),
            Ok(expected)
        );
    }

    #[test]
    fn header_without_email_column_refuses_the_file() {
        // CSV-1
        assert_eq!(
            parse_whole(b"Mail\nx@north.edu\n"),
            Err(CsvError::MissingEmailHeader)
        );
        assert_eq!(
            parse_whole(b"E-mail,Email address\nx@north.edu\n"),
            Err(CsvError::MissingEmailHeader)
        );
        assert_eq!(
            CsvError::MissingEmailHeader.to_string(),
            "missing Email header: the first row of the file must have a column named Email"
        );
    }

    #[test]
    fn missing_header_gives_no_rows_even_after_earlier_chunks() {
        // CSV-1: nothing is applied, and the refusal sticks.
        let mut parser = CsvImportParser::new();
        let mut rows = Vec::new();
        assert_eq!(parser.push(b"Ma", &mut rows), Ok(()));
        assert_eq!(
            parser.push(b"il\nx@north.edu\n", &mut rows),
            Err(CsvError::MissingEmailHeader)
        );
        assert!(rows.is_empty());
        assert_eq!(
            parser.push(b"y@north.edu\n", &mut rows),
            Err(CsvError::MissingEmailHeader)
        );
        assert_eq!(parser.finish(&mut rows), Err(CsvError::MissingEmailHeader));
        assert!(rows.is_empty());
    }

    #[test]
    fn empty_files_are_missing_the_email_header() {
        // CSV-1
        for file in [
            &b""[..],
            b"\xef\xbb\xbf",
            b"\n\r\n\n",
            b"\xef\xbb\xbf\r\n",
            b"E",
        ] {
            assert_eq!(
                parse_whole(file),
                Err(CsvError::MissingEmailHeader),
                "{file:?}"
            );
            assert_eq!(
                parse_byte_by_byte(file),
                Err(CsvError::MissingEmailHeader),
                "{file:?}"
            );
        }
    }

    #[test]
    fn email_header_is_case_insensitive_trimmed_and_found_in_any_column() {
        // CSV-1: other columns are ignored, and the first Email column is the one used.
        let file = b"Name, eMail\t,\"Email\",Notes\nAnn,ann@north.edu,x,y\n";
        assert_eq!(parse_whole(file), Ok(vec![valid(2, "ann@north.edu")]));
        assert_eq!(
            parse_whole(b"\"Email\"\nann@north.edu"),
            Ok(vec![valid(2, "ann@north.edu")])
        );
    }

    #[test]
    fn a_header_only_file_gives_no_rows() {
        // CSV-1
        assert_eq!(parse_whole(b"Email"), Ok(vec![]));
        assert_eq!(parse_whole(b"Email\r\n\r\n"), Ok(vec![]));
    }

    #[test]
    fn byte_order_mark_is_stripped_wherever_the_file_is_split() {
        // CSV-2
        let file = b"\xef\xbb\xbfEmail\nann@north.edu\n";
        for split in 0..=file.len() {
            let (head, tail) = file.split_at(split);
            let rows = parse_chunks_with(CsvImportParser::new(), [head, tail]);
            assert_eq!(
                rows.map(|rows| simplify(&rows)),
                Ok(vec![valid(2, "ann@north.edu")])
            );
        }
        // A mark written twice leaves an invisible character in the first header cell, which
        // the header match ignores; `csv_core` must not strip it only in some splits.
        let twice = b"\xef\xbb\xbf\xef\xbb\xbfEmail\nann@north.edu\n";
        assert_eq!(parse_whole(twice), Ok(vec![valid(2, "ann@north.edu")]));
        assert_eq!(
            parse_byte_by_byte(twice),
            Ok(vec![valid(2, "ann@north.edu")])
        );
    }

    #[test]
    fn lf_crlf_and_lone_cr_line_ends_all_work() {
        // CSV-2, CSV-3
        let expected = Ok(vec![valid(2, "a@north.edu"), valid(3, "b@north.edu")]);
        assert_eq!(parse_whole(b"Email\na@north.edu\nb@north.edu\n"), expected);
        assert_eq!(
            parse_whole(b"Email\r\na@north.edu\r\nb@north.edu\r\n"),
            expected
        );
        assert_eq!(parse_whole(b"Email\ra@north.edu\rb@north.edu\r"), expected);
        assert_eq!(
            parse_whole(b"Email\r\na@north.edu\nb@north.edu\r"),
            expected
        );
    }

    #[test]
    fn quoted_fields_hold_commas_line_breaks_and_doubled_quotes() {
        // CSV-2, CSV-3: a record spanning lines is reported at the line it starts on, and
        // the lines inside it still count for the rows after it.
        let file = b"Note,Email\n\"a, \"\"b\"\"\r\nc\nd\",x@north.edu\n\"one, two\",\"Y@North.edu\"\nlast,bad\n";
        assert_eq!(
            parse_whole(file),
            Ok(vec![
                valid(2, "x@north.edu"),
                valid(5, "y@north.edu"),
                invalid(6, "an email needs an '@' between the name and the domain"),
            ])
        );
    }

    #[test]
    fn blank_lines_count_toward_line_numbers() {
        // CSV-2, CSV-3
        let file = b"\nEmail\n\n\na@north.edu\r\n\r\n\r\nb@north.edu\n\n";
        assert_eq!(
            parse_whole(file),
            Ok(vec![valid(5, "a@north.edu"), valid(8, "b@north.edu")])
        );
    }

    #[test]
    fn trailing_and_leading_spaces_are_ignored() {
        // CSV-2
        let file = b"Email  ,Name \n  a@north.edu\t , Ann  \n";
        assert_eq!(parse_whole(file), Ok(vec![valid(2, "a@north.edu")]));
    }

    #[test]
    fn the_last_row_needs_no_line_end() {
        // CSV-2
        assert_eq!(
            parse_whole(b"Email\na@north.edu"),
            Ok(vec![valid(2, "a@north.edu")])
        );
        assert_eq!(
            parse_whole(b"Name,Email\nAnn,"),
            Ok(vec![invalid(2, "empty email")])
        );
        assert_eq!(
            parse_whole(b"Email\n\"a@north.edu"),
            Ok(vec![valid(2, "a@north.edu")])
        );
    }

    #[test]
    fn an_empty_email_cell_is_an_error_unless_the_row_is_blank() {
        // CSV-3
        let file = b"Name,Email,Notes\nAnn,,x\n , ,\t\n,,\nBob,  \nCid\n   \nDee,d@north.edu\n";
        assert_eq!(
            parse_whole(file),
            Ok(vec![
                invalid(2, "empty email"),
                invalid(5, "empty email"),
                // Fewer cells than the Email column needs.
                invalid(6, "empty email"),
                valid(8, "d@north.edu"),
            ])
        );
    }

    #[test]
    fn invalid_emails_carry_the_reason_of_email_parse() {
        // CSV-3, ADD-2
        let file = b"Email\n@north.edu\na@north\na@b@north.edu\n";
        assert_eq!(
            parse_whole(file),
            Ok(vec![
                invalid(2, "the part before '@' is empty"),
                invalid(3, "the domain 'north' has no dot"),
                invalid(4, "an email has exactly one '@'"),
            ])
        );
    }

    #[test]
    fn invalid_utf8_is_a_row_error_only_in_the_email_cell() {
        // CSV-3
        let file = b"Name,Email\nAnn,a\xff@north.edu\n\xff\xfe,b@north.edu\n";
        assert_eq!(
            parse_whole(file),
            Ok(vec![invalid(2, "not valid UTF-8"), valid(3, "b@north.edu")])
        );
    }

    #[test]
    fn a_header_that_is_not_utf8_refuses_the_file() {
        // CSV-1: a byte-order mark cut short is not UTF-8 either.
        assert_eq!(parse_whole(b"\xef\xbb"), Err(CsvError::InvalidUtf8Header));
        assert_eq!(
            parse_byte_by_byte(b"\xef\xbbEmail\n"),
            Err(CsvError::InvalidUtf8Header)
        );
        assert_eq!(
            parse_whole(b"Na\xffme,Email\na@north.edu\n"),
            Err(CsvError::InvalidUtf8Header)
        );
    }

    /// A row of exactly `length` bytes without its line end, with its email in the second
    /// column.
    fn row_of_length(length: usize, email: &str) -> String {
        format!("{},{email}", "x".repeat(length - email.len() - 1))
    }

    #[test]
    fn a_row_longer_than_64_kib_is_an_error_and_the_next_row_still_parses() {
        // CSV-4
        let at_bound = row_of_length(CSV_ROW_LENGTH_MAX_BYTES, "a@north.edu");
        let over = row_of_length(CSV_ROW_LENGTH_MAX_BYTES + 1, "b@north.edu");
        let file = format!("Name,Email\r\n{at_bound}\r\n{over}\r\nCid,c@north.edu\r\n{over}");
        let expected = Ok(vec![
            valid(2, "a@north.edu"),
            invalid(3, "row is longer than 64 KiB"),
            valid(4, "c@north.edu"),
            invalid(5, "row is longer than 64 KiB"),
        ]);
        assert_eq!(parse_whole(file.as_bytes()), expected);
        let chunks = file.as_bytes().chunks(1000);
        let rows = parse_chunks_with(CsvImportParser::new(), chunks);
        assert_eq!(rows.map(|rows| simplify(&rows)), expected);
    }

    #[test]
    fn a_long_row_is_skipped_to_its_end_across_quoted_line_breaks() {
        // CSV-3, CSV-4: the lines inside the skipped row still count.
        let quoted = format!("\"{}\n\n{}\"", "x".repeat(40_000), "y".repeat(40_000));
        let file = format!("Name,Email\n{quoted},a@north.edu\nBob,b@north.edu\n");
        assert_eq!(
            parse_whole(file.as_bytes()),
            Ok(vec![
                invalid(2, "row is longer than 64 KiB"),
                valid(5, "b@north.edu")
            ])
        );
    }

    #[test]
    fn a_long_row_is_not_buffered() {
        // CSV-4: a row of many megabytes goes through a buffer of one row.
        let mut parser = CsvImportParser::new();
        let mut rows = Vec::new();
        parser.push(b"Email\n", &mut rows).unwrap();
        let piece = vec![b'x'; 1024 * 1024];
        for _ in 0..8 {
            parser.push(&piece, &mut rows).unwrap();
        }
        parser.push(b"\na@north.edu\n", &mut rows).unwrap();
        parser.finish(&mut rows).unwrap();
        assert_eq!(parser.field.len(), CSV_ROW_LENGTH_MAX_BYTES + 1);
        assert_eq!(
            simplify(&rows),
            vec![
                invalid(2, "row is longer than 64 KiB"),
                valid(3, "a@north.edu")
            ]
        );
    }

    #[test]
    fn a_header_longer_than_64_kib_refuses_the_file() {
        // CSV-4
        let header = format!("Email,{}", "x".repeat(CSV_ROW_LENGTH_MAX_BYTES));
        assert_eq!(
            parse_whole(format!("{header}\na@north.edu\n").as_bytes()),
            Err(CsvError::HeaderTooLarge)
        );
        assert_eq!(
            parse_whole(header.as_bytes()),
            Err(CsvError::HeaderTooLarge)
        );
        let at_bound = row_of_length(CSV_ROW_LENGTH_MAX_BYTES, "Email");
        assert_eq!(parse_whole(format!("{at_bound}\n").as_bytes()), Ok(vec![]));
    }

    #[test]
    fn data_after_finish_is_refused() {
        // CSV-4: the stream has one end.
        let mut parser = CsvImportParser::new();
        let mut rows = Vec::new();
        parser.push(b"Email\na@north.edu", &mut rows).unwrap();
        parser.finish(&mut rows).unwrap();
        parser.finish(&mut rows).unwrap();
        assert_eq!(
            parser.push(b"\nb@north.edu\n", &mut rows),
            Err(CsvError::DataAfterEnd)
        );
        assert_eq!(parser.finish(&mut rows), Ok(()));
        assert_eq!(simplify(&rows), vec![valid(2, "a@north.edu")]);
    }

    #[test]
    fn empty_chunks_change_nothing() {
        // CSV-4
        let file = SPREADSHEET_EXPORT.as_bytes();
        let mut chunks = Vec::new();
        for byte in file.chunks(1) {
            chunks.push(&b""[..]);
            chunks.push(byte);
        }
        let rows = parse_chunks_with(CsvImportParser::new(), chunks);
        assert_eq!(rows.map(|rows| simplify(&rows)), parse_whole(file));
    }

    #[test]
    fn file_errors_are_invalid_argument_for_a_person() {
        // CSV-1
        let error = DomainError::from(CsvError::MissingEmailHeader);
        assert_eq!(
            error,
            DomainError::InvalidArgument(
                "missing Email header: the first row of the file must have a column named Email"
                    .to_owned()
            )
        );
        for error in [
            CsvError::HeaderTooLarge,
            CsvError::InvalidUtf8Header,
            CsvError::DataAfterEnd,
        ] {
            assert!(matches!(
                DomainError::from(error),
                DomainError::InvalidArgument(_)
            ));
        }
    }

    #[test]
    fn row_errors_count_all_and_keep_the_first_thousand() {
        // CSV-4
        let mut errors = RowErrors::new();
        for line in 2..=2_501 {
            errors.record(RowError {
                line,
                reason: EMPTY_EMAIL_REASON.to_owned(),
            });
        }
        assert_eq!(errors.count, 2_500);
        assert_eq!(errors.first.len(), ROW_ERRORS_REPORTED_MAX);
        assert_eq!(errors.first[0].line, 2);
        assert_eq!(errors.first[ROW_ERRORS_REPORTED_MAX - 1].line, 1_001);
    }

    #[test]
    fn a_million_rows_parse_streaming_in_64_kib_chunks() {
        // CSV-4: the file is generated as it is fed, and rows are counted, not kept.
        const ROWS: u64 = 1_000_000;
        const CHUNK: usize = 64 * 1024;
        let mut parser = CsvImportParser::new();
        let mut rows = Vec::new();
        let mut errors = RowErrors::new();
        let mut valid_rows = 0_u64;
        let mut last_line = 0_u64;
        let mut pending = b"\xef\xbb\xbfName,Email,Grade\r\n".to_vec();
        let mut drain = |rows: &mut Vec<CsvRow>| {
            for row in rows.drain(..) {
                match row {
                    CsvRow::Email { line, .. } => {
                        valid_rows += 1;
                        last_line = line;
                    }
                    CsvRow::Invalid(error) => errors.record(error),
                }
            }
        };
        for index in 0..ROWS {
            if index % 1_000 == 999 {
                pending.extend_from_slice(b"\"Doe, Eve\",not an email,5\r\n");
            } else {
                pending.extend_from_slice(
                    format!("\"Student {index}\",s{index}@north.edu,5\r\n").as_bytes(),
                );
            }
            while pending.len() >= CHUNK {
                parser.push(&pending[..CHUNK], &mut rows).unwrap();
                pending.drain(..CHUNK);
                drain(&mut rows);
            }
        }
        parser.push(&pending, &mut rows).unwrap();
        parser.finish(&mut rows).unwrap();
        drain(&mut rows);
        assert_eq!(valid_rows, ROWS - 1_000);
        assert_eq!(last_line, ROWS); // The last valid row is the one before the last row.
        assert_eq!(errors.count, 1_000);
        assert_eq!(errors.first[0].line, 1_001);
        assert_eq!(errors.first[999].line, ROWS + 1);
    }

    /// Pieces of which the proptest builds files: every byte that matters to CSV, white
    /// space, multi-byte characters, the byte-order mark, invalid UTF-8, and emails.
    const PIECES: &[&[u8]] = &[
        b"Email",
        b"email ",
        b"Name",
        b",",
        b",",
        b"\"",
        b"\"",
        b"\r\n",
        b"\n",
        b"\n",
        b"\r",
        b" ",
        b"a@north.edu",
        b"Bob@North.EDU",
        b"x",
        "é".as_bytes(),
        "€".as_bytes(),
        "😀".as_bytes(),
        b"\xef\xbb\xbf",
        b"\xff",
        b"\xe2\x82",
        b"not an email",
    ];

    fn generated_file() -> impl Strategy<Value = Vec<u8>> {
        let start = prop::sample::select(vec![
            &b""[..],
            b"\xef\xbb\xbf",
            b"\xef\xbb\xbf\xef\xbb\xbf",
            b"\xef\xbb\xbfName,Email\r\n",
            b"Email\n",
            b"\"Notes\",\"Email\"\r\n",
        ]);
        let pieces = prop::collection::vec(prop::sample::select(PIECES.to_vec()), 0..120);
        (start, pieces).prop_map(|(start, pieces)| {
            let mut file = start.to_vec();
            for piece in pieces {
                file.extend_from_slice(piece);
            }
            file
        })
    }

    fn split_at_points<'a>(file: &'a [u8], points: &[prop::sample::Index]) -> Vec<&'a [u8]> {
        let mut cuts: Vec<usize> = points
            .iter()
            .map(|point| point.index(file.len() + 1))
            .collect();
        cuts.sort_unstable();
        let mut chunks = Vec::new();
        let mut from = 0;
        // Repeated cuts give empty chunks, which must change nothing either.
        for cut in cuts {
            chunks.push(&file[from..cut]);
            from = cut;
        }
        chunks.push(&file[from..]);
        chunks
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2_000))]

        #[test]
        fn any_split_of_a_file_gives_the_same_rows_as_the_whole_file(
            file in generated_file(),
            points in prop::collection::vec(any::<prop::sample::Index>(), 0..24),
            row_length_max in prop::sample::select(vec![4_usize, 9, 20, CSV_ROW_LENGTH_MAX_BYTES]),
        ) {
            // CSV-2, CSV-3, CSV-4: splits inside a field, a CRLF, a multi-byte character or
            // the byte-order mark change nothing; a small row bound reaches the long-row
            // paths with small files.
            let whole = parse_chunks_with(CsvImportParser::with_row_length_max(row_length_max), [&file[..]]);
            let chunks = split_at_points(&file, &points);
            let split = parse_chunks_with(CsvImportParser::with_row_length_max(row_length_max), chunks);
            prop_assert_eq!(&split, &whole);
            let bytes = parse_chunks_with(CsvImportParser::with_row_length_max(row_length_max), file.chunks(1));
            prop_assert_eq!(&bytes, &whole);
        }
    }
}
