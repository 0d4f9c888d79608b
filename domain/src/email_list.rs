//! The text of `AddUsersByEmail` (SPEC ADD-1, ADD-2): emails separated by commas and/or
//! newlines, split into numbered entries that are each validated on their own.
//!
//! The parser refuses only a text that is too large to handle as one request; everything
//! else, including a malformed or over-long email, becomes an entry with a reason, so that
//! one typo does not cost the person the rest of the batch.

use crate::error::DomainError;
use crate::values::Email;

/// The most non-blank entries one text may hold. A larger list belongs in a CSV import,
/// which streams and reports its errors in bounded form.
pub const EMAIL_LIST_ENTRIES_MAX: usize = 100_000;

/// The largest text accepted, in bytes. It bounds the work and the memory of one request
/// before any entry is looked at; 100,000 ordinary emails fit well inside it.
pub const EMAIL_LIST_TEXT_MAX_BYTES: usize = 16 * 1024 * 1024;

/// The most characters of an entry that an answer repeats. An entry can be anything a
/// person pasted, so the echo is shortened to keep answers small.
pub const ENTRY_ECHO_LENGTH_MAX_CHARS: usize = 100;

/// The mark that ends an echo which was shortened.
const SHORTENED_MARK: char = '…';

/// One non-blank entry of the list.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListEntry {
    /// The 1-based index of the entry among the non-blank entries, so that the person can
    /// find it in what they typed even when they left empty entries between commas.
    pub position: u32,
    /// The trimmed entry as typed, shortened to at most `ENTRY_ECHO_LENGTH_MAX_CHARS`
    /// characters (the last one being '…' when it was cut).
    pub value: String,
    /// The normalised email, or the reason for a person why the entry is not one (ADD-2).
    pub email: Result<Email, String>,
}

/// Splits and validates the text of `AddUsersByEmail` (ADD-1, ADD-2).
///
/// Entries are separated by commas, line feeds and carriage returns, so LF, CRLF and old
/// CR-only line ends all work; spaces around an entry are ignored and blank entries are
/// skipped. Duplicates are kept: the aggregate counts them once, and it needs every
/// position to report on. The only refusals are a text larger than
/// `EMAIL_LIST_TEXT_MAX_BYTES` and more than `EMAIL_LIST_ENTRIES_MAX` entries.
pub fn parse_email_list(text: &str) -> Result<Vec<ListEntry>, DomainError> {
    if text.len() > EMAIL_LIST_TEXT_MAX_BYTES {
        return Err(DomainError::InvalidArgument(format!(
            "the list of emails is larger than {} MiB; use the CSV import for a list this long",
            EMAIL_LIST_TEXT_MAX_BYTES / (1024 * 1024)
        )));
    }
    let mut entries = Vec::new();
    for raw in text.split([',', '\n', '\r']) {
        let trimmed = raw.trim();
        if trimmed.is_empty() {
            continue;
        }
        if entries.len() == EMAIL_LIST_ENTRIES_MAX {
            return Err(DomainError::InvalidArgument(format!(
                "the list has more than {EMAIL_LIST_ENTRIES_MAX} emails; use the CSV import for a list this long"
            )));
        }
        // The bound above keeps the count far below `u32::MAX`.
        let position = u32::try_from(entries.len() + 1)
            .expect("the entry count is bounded by EMAIL_LIST_ENTRIES_MAX, which fits in u32");
        entries.push(ListEntry {
            position,
            value: shortened(trimmed),
            email: Email::parse(trimmed),
        });
    }
    Ok(entries)
}

/// Returns `text` unchanged when it has at most `ENTRY_ECHO_LENGTH_MAX_CHARS` characters,
/// otherwise its first characters followed by '…', together exactly that many characters.
/// It counts characters, not bytes, so that a cut never splits a character.
fn shortened(text: &str) -> String {
    match text.char_indices().nth(ENTRY_ECHO_LENGTH_MAX_CHARS) {
        None => text.to_owned(),
        Some(_) => {
            let kept_end = text
                .char_indices()
                .nth(ENTRY_ECHO_LENGTH_MAX_CHARS - 1)
                .map_or(text.len(), |(index, _)| index);
            let mut echo = String::with_capacity(kept_end + SHORTENED_MARK.len_utf8());
            echo.push_str(&text[..kept_end]);
            echo.push(SHORTENED_MARK);
            echo
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn emails(entries: &[ListEntry]) -> Vec<(u32, Result<&str, &str>)> {
        entries
            .iter()
            .map(|entry| {
                (
                    entry.position,
                    entry
                        .email
                        .as_ref()
                        .map(Email::as_str)
                        .map_err(String::as_str),
                )
            })
            .collect()
    }

    #[test]
    fn commas_and_newlines_both_separate_entries() {
        // ADD-1
        let entries =
            parse_email_list("a@north.edu,b@north.edu\nc@north.edu,\nd@north.edu").unwrap();
        assert_eq!(
            emails(&entries),
            vec![
                (1, Ok("a@north.edu")),
                (2, Ok("b@north.edu")),
                (3, Ok("c@north.edu")),
                (4, Ok("d@north.edu")),
            ]
        );
    }

    #[test]
    fn crlf_and_lone_cr_line_ends_are_accepted() {
        // ADD-1
        let entries =
            parse_email_list("a@north.edu\r\nb@north.edu\r\n\r\nc@north.edu\rd@north.edu\r\n")
                .unwrap();
        assert_eq!(
            emails(&entries),
            vec![
                (1, Ok("a@north.edu")),
                (2, Ok("b@north.edu")),
                (3, Ok("c@north.edu")),
                (4, Ok("d@north.edu")),
            ]
        );
    }

    #[test]
    fn spaces_around_entries_are_ignored_and_values_are_trimmed() {
        // ADD-1
        let entries = parse_email_list("  A@North.edu \t,\t b@north.edu  ").unwrap();
        assert_eq!(entries[0].value, "A@North.edu");
        assert_eq!(entries[0].email.as_ref().unwrap().as_str(), "a@north.edu");
        assert_eq!(entries[1].value, "b@north.edu");
    }

    #[test]
    fn positions_count_only_non_blank_entries() {
        // ADD-1, ADD-2
        let entries = parse_email_list("a@x.org, ,b").unwrap();
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[0].position, 1);
        assert_eq!(entries[0].value, "a@x.org");
        assert_eq!(entries[1].position, 2);
        assert_eq!(entries[1].value, "b");
        assert!(entries[1].email.is_err());
    }

    #[test]
    fn empty_and_blank_texts_give_no_entries() {
        // ADD-1
        assert!(parse_email_list("").unwrap().is_empty());
        assert!(parse_email_list(" ,\n, \r\n ,,").unwrap().is_empty());
    }

    #[test]
    fn invalid_entries_carry_a_reason_and_do_not_refuse_the_batch() {
        // ADD-2
        let entries =
            parse_email_list("good@north.edu, not an email, @north.edu, x@north").unwrap();
        assert_eq!(entries.len(), 4);
        assert!(entries[0].email.is_ok());
        assert_eq!(
            entries[1].email,
            Err("an email cannot contain spaces".to_owned())
        );
        assert_eq!(
            entries[2].email,
            Err("the part before '@' is empty".to_owned())
        );
        assert!(entries[3].email.as_ref().unwrap_err().contains("no dot"));
    }

    #[test]
    fn an_over_long_email_is_an_entry_error_with_a_shortened_echo() {
        // ADD-2
        let long = format!("{}@north.edu", "a".repeat(300));
        let entries = parse_email_list(&format!("x@north.edu,{long}")).unwrap();
        assert_eq!(entries.len(), 2);
        assert!(entries[1].email.as_ref().unwrap_err().contains("254"));
        assert_eq!(
            entries[1].value.chars().count(),
            ENTRY_ECHO_LENGTH_MAX_CHARS
        );
        assert!(entries[1].value.ends_with('…'));
        assert!(long.starts_with(entries[1].value.trim_end_matches('…')));
    }

    #[test]
    fn shortening_counts_characters_and_never_splits_one() {
        // ADD-2
        let exactly = "é".repeat(ENTRY_ECHO_LENGTH_MAX_CHARS);
        assert_eq!(shortened(&exactly), exactly);
        let over = "é".repeat(ENTRY_ECHO_LENGTH_MAX_CHARS + 1);
        let echo = shortened(&over);
        assert_eq!(echo.chars().count(), ENTRY_ECHO_LENGTH_MAX_CHARS);
        assert_eq!(
            echo,
            format!("{}…", "é".repeat(ENTRY_ECHO_LENGTH_MAX_CHARS - 1))
        );
    }

    #[test]
    fn duplicates_are_kept_for_the_aggregate_to_count_once() {
        // ADD-2
        let entries = parse_email_list("a@north.edu, A@north.edu ,a@north.edu").unwrap();
        assert_eq!(entries.len(), 3);
        assert!(
            entries
                .iter()
                .all(|entry| entry.email.as_ref().unwrap().as_str() == "a@north.edu")
        );
    }

    #[test]
    fn the_entry_limit_is_inclusive_and_more_points_to_the_csv_import() {
        // ADD-1
        let at_limit = "a@north.edu,".repeat(EMAIL_LIST_ENTRIES_MAX);
        let entries = parse_email_list(&at_limit).unwrap();
        assert_eq!(entries.len(), EMAIL_LIST_ENTRIES_MAX);
        assert_eq!(entries[EMAIL_LIST_ENTRIES_MAX - 1].position, 100_000);

        let over = format!("{at_limit}b@north.edu");
        let error = parse_email_list(&over).unwrap_err();
        assert!(matches!(error, DomainError::InvalidArgument(_)));
        assert!(error.message().contains("CSV import"), "{error}");
    }

    #[test]
    fn blank_entries_do_not_count_toward_the_limit() {
        // ADD-1
        let text = format!("{}{}", ",".repeat(200_000), "a@north.edu");
        assert_eq!(parse_email_list(&text).unwrap().len(), 1);
    }

    #[test]
    fn a_text_over_the_byte_bound_is_refused() {
        // ADD-1
        let text = " ".repeat(EMAIL_LIST_TEXT_MAX_BYTES + 1);
        let error = parse_email_list(&text).unwrap_err();
        assert!(matches!(error, DomainError::InvalidArgument(_)));
        assert!(error.message().contains("16 MiB"), "{error}");
        assert!(parse_email_list(&text[1..]).unwrap().is_empty());
    }
}
