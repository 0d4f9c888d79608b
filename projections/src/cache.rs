//! The emails of a license in memory, for Q-2's pattern searches. A pattern with no literal
//! prefix cannot use the email-ordered keys; scanning half a million sled keys, or half a
//! million separately allocated strings, takes hundreds of milliseconds. So each cached
//! license also keeps its emails joined into one sorted text, `\nemail\nemail\n`, where one
//! substring search of the pattern's longest literal piece runs over contiguous memory
//! and only the lines it hits are checked against the whole pattern.
//!
//! The lists are derived data: loaded from the member keys on first use, kept current by the
//! projector after each write (the set), and re-joined lazily by the next search after a
//! change (the text).

use std::collections::{BTreeSet, HashMap};
use std::ops::Bound;
use std::sync::{PoisonError, RwLock};

use crate::apply::MembershipChange;
use crate::keys::{PREFIX_MEMBER, scope};
use crate::{EMAIL_CACHE_LICENSES_MAX, ProjectionError};

#[derive(Default)]
struct LicenseEmails {
    emails: BTreeSet<String>,
    joined: Option<Joined>,
}

struct Joined {
    /// Every email in order, each preceded and followed by a newline.
    text: String,
    /// Where each email starts in `text`.
    starts: Vec<usize>,
}

impl Joined {
    fn new(emails: &BTreeSet<String>) -> Self {
        let length: usize = emails.iter().map(|email| email.len() + 1).sum();
        let mut text = String::with_capacity(length + 1);
        let mut starts = Vec::with_capacity(emails.len());
        text.push('\n');
        for email in emails {
            starts.push(text.len());
            text.push_str(email);
            text.push('\n');
        }
        Self { text, starts }
    }

    /// The index of the first email not below `bound` (for a lower bound) or the index
    /// after the last email not above it (for an upper bound).
    fn index(&self, bound: Bound<&str>, lower: bool) -> usize {
        let email_at = |index: usize| {
            let start = self.starts[index];
            let end = start
                + self.text[start..]
                    .find('\n')
                    .expect("every email ends in a newline");
            &self.text[start..end]
        };
        match (bound, lower) {
            (Bound::Unbounded, true) => 0,
            (Bound::Unbounded, false) => self.starts.len(),
            (Bound::Included(value), true) | (Bound::Excluded(value), false) => {
                partition(self.starts.len(), |index| email_at(index) < value)
            }
            (Bound::Excluded(value), true) | (Bound::Included(value), false) => {
                partition(self.starts.len(), |index| email_at(index) <= value)
            }
        }
    }

    /// The line of `text` holding byte `at`.
    fn line_at(&self, at: usize) -> (usize, usize) {
        let start = self.text[..at].rfind('\n').map_or(0, |newline| newline + 1);
        let end = at + self.text[at..].find('\n').unwrap_or(self.text.len() - at);
        (start, end)
    }
}

fn partition(length: usize, below: impl Fn(usize) -> bool) -> usize {
    let (mut low, mut high) = (0, length);
    while low < high {
        let middle = low + (high - low) / 2;
        if below(middle) {
            low = middle + 1;
        } else {
            high = middle;
        }
    }
    low
}

/// What a search asks of a license's emails.
pub(crate) struct Search<'a> {
    /// A text every match contains (the pattern's longest literal piece, lower-cased);
    /// empty when the pattern has none.
    pub needle: &'a str,
    pub lower: Bound<&'a str>,
    pub upper: Bound<&'a str>,
    pub descending: bool,
}

#[derive(Default)]
pub(crate) struct EmailCache {
    licenses: RwLock<HashMap<String, LicenseEmails>>,
}

impl EmailCache {
    /// Offers each email of the license within the bounds that contains the needle, in
    /// email order (or reversed), to `visit` until it returns true. `visit` still checks the
    /// whole pattern: the needle is only a necessary condition.
    pub(crate) fn search(
        &self,
        tree: &sled::Tree,
        license: &str,
        search: &Search<'_>,
        mut visit: impl FnMut(&str) -> Result<bool, ProjectionError>,
    ) -> Result<(), ProjectionError> {
        self.ensure_joined(tree, license)?;
        let licenses = self.licenses.read().unwrap_or_else(PoisonError::into_inner);
        let Some(entry) = licenses.get(license) else {
            // Evicted meanwhile by another license's load: read the stored members once.
            drop(licenses);
            let emails = load(tree, license)?;
            return scan_set(&emails, search, visit);
        };
        let Some(joined) = &entry.joined else {
            // Changed meanwhile by the projector: the set is current, the text is not.
            return scan_set(&entry.emails, search, visit);
        };
        let first = joined.index(search.lower, true);
        let end = joined.index(search.upper, false);
        if first >= end {
            return Ok(());
        }
        // The region from the newline before the first email to the newline after the last.
        let region_start = joined.starts[first] - 1;
        let region_end = match joined.starts.get(end) {
            Some(next) => next - 1,
            None => joined.text.len() - 1,
        };
        let text = joined.text.as_str();
        if search.descending {
            let mut upto = region_end;
            while upto > region_start {
                let Some(found) = text[region_start..upto].rfind(search.needle) else {
                    return Ok(());
                };
                // A match may start on the newline before the region's first email (a
                // needle beginning with a newline); its line lies outside the region.
                let (line_start, line_end) = joined.line_at(region_start + found);
                if line_start <= region_start {
                    return Ok(());
                }
                if visit(&text[line_start..line_end])? {
                    return Ok(());
                }
                upto = line_start - 1;
            }
        } else {
            let mut from = region_start + 1;
            while from < region_end {
                let Some(found) = text[from..region_end].find(search.needle) else {
                    return Ok(());
                };
                let (line_start, line_end) = joined.line_at(from + found);
                if line_start >= from && visit(&text[line_start..line_end])? {
                    return Ok(());
                }
                from = line_end + 1;
            }
        }
        Ok(())
    }

    fn ensure_joined(&self, tree: &sled::Tree, license: &str) -> Result<(), ProjectionError> {
        {
            let licenses = self.licenses.read().unwrap_or_else(PoisonError::into_inner);
            if licenses
                .get(license)
                .is_some_and(|entry| entry.joined.is_some())
            {
                return Ok(());
            }
        }
        // Loading holds the write lock, so the projector's changes for a batch written
        // during the load wait and are applied after it: the set operations are
        // idempotent, and the list ends up equal to the stored members.
        let mut licenses = self
            .licenses
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        if !licenses.contains_key(license) {
            if licenses.len() >= EMAIL_CACHE_LICENSES_MAX {
                // Any license may go: its next search loads it again.
                if let Some(evicted) = licenses.keys().next().cloned() {
                    licenses.remove(&evicted);
                }
            }
            let emails = load(tree, license)?;
            licenses.insert(
                license.to_owned(),
                LicenseEmails {
                    emails,
                    joined: None,
                },
            );
        }
        let entry = licenses.get_mut(license).expect("inserted above");
        if entry.joined.is_none() {
            entry.joined = Some(Joined::new(&entry.emails));
        }
        Ok(())
    }

    pub(crate) fn apply(&self, changes: &[MembershipChange]) {
        if changes.is_empty() {
            return;
        }
        let mut licenses = self
            .licenses
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        for change in changes {
            if let Some(entry) = licenses.get_mut(&change.license) {
                if change.present {
                    entry.emails.insert(change.email.clone());
                } else {
                    entry.emails.remove(&change.email);
                }
                entry.joined = None;
            }
        }
    }
}

fn load(tree: &sled::Tree, license: &str) -> Result<BTreeSet<String>, ProjectionError> {
    let member_scope = scope(PREFIX_MEMBER, license.as_bytes());
    let mut emails = BTreeSet::new();
    for item in tree.scan_prefix(&member_scope) {
        let (key, _) = item?;
        let email = std::str::from_utf8(&key[member_scope.len()..]).map_err(|_| {
            ProjectionError::Corrupt {
                what: "member key",
                reason: "email not UTF-8".into(),
            }
        })?;
        emails.insert(email.to_owned());
    }
    Ok(emails)
}

fn scan_set(
    emails: &BTreeSet<String>,
    search: &Search<'_>,
    mut visit: impl FnMut(&str) -> Result<bool, ProjectionError>,
) -> Result<(), ProjectionError> {
    if crate::queries::string_bounds_are_empty(&search.lower, &search.upper) {
        return Ok(());
    }
    let range = emails.range::<str, _>((search.lower, search.upper));
    let candidates: Box<dyn Iterator<Item = &String>> = if search.descending {
        Box::new(range.rev())
    } else {
        Box::new(range)
    };
    for email in candidates {
        if email.contains(search.needle) && visit(email)? {
            break;
        }
    }
    Ok(())
}
