//! The emails of a license in memory, for Q-2's pattern searches. A pattern with no literal
//! prefix cannot use the email-ordered keys; scanning half a million sled keys, or half a
//! million separately allocated strings, takes hundreds of milliseconds. So each cached
//! license also keeps its emails joined into one sorted text, `\nemail\nemail\n`, where one
//! substring search of the pattern's longest literal piece runs over contiguous memory
//! and only the lines it hits are checked against the whole pattern.
//!
//! The lists are derived data: loaded from the member keys on first use, told of every
//! membership change by the projector after each write, and re-joined with those changes by
//! the next search (or once they pile up). Their memory is bounded by
//! `EMAIL_CACHE_BYTES_MAX` in all and `EMAIL_CACHE_LICENSES_MAX` licenses.

use std::collections::{BTreeMap, HashMap};
use std::ops::Bound;
use std::sync::{Arc, PoisonError, RwLock};

use crate::apply::MembershipChange;
use crate::keys::{PREFIX_MEMBER, scope};
use crate::{
    EMAIL_CACHE_BYTES_MAX, EMAIL_CACHE_LICENSES_MAX, EMAIL_CACHE_PENDING_CHANGES_MAX,
    ProjectionError,
};

/// One cached license: its emails as one sorted text, and the membership changes the
/// projector made since the text was joined. Only the text holds the emails (no set of
/// separately allocated strings beside it), so a cached email costs its length plus five
/// bytes.
struct LicenseEmails {
    /// Shared with searches under way, so a search holds no lock while it reads.
    joined: Arc<Joined>,
    /// email -> present after the change, applied to the text by the next search (or at
    /// once when they pile up past `EMAIL_CACHE_PENDING_CHANGES_MAX`).
    pending: BTreeMap<String, bool>,
}

impl LicenseEmails {
    fn bytes(&self) -> usize {
        self.joined.bytes()
            + self
                .pending
                .keys()
                .map(|email| email.len() + PENDING_ENTRY_OVERHEAD_BYTES)
                .sum::<usize>()
    }

    /// Merges the pending changes into a freshly joined text: one pass over both, in order.
    fn merge_pending(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        let pending = std::mem::take(&mut self.pending);
        let mut builder = JoinedBuilder::with_capacity(self.joined.text.len(), self.joined.len());
        let mut changes = pending.into_iter().peekable();
        for index in 0..self.joined.len() {
            let email = self.joined.email(index);
            while let Some((changed, present)) =
                changes.next_if(|(changed, _)| changed.as_str() < email)
            {
                if present {
                    builder.push(&changed);
                }
            }
            match changes.next_if(|(changed, _)| changed.as_str() == email) {
                Some((_, false)) => {}
                _ => builder.push(email),
            }
        }
        for (changed, present) in changes {
            if present {
                builder.push(&changed);
            }
        }
        self.joined = Arc::new(builder.finish());
    }
}

/// A pending change's bookkeeping besides the email itself (map node and flag), roughly.
const PENDING_ENTRY_OVERHEAD_BYTES: usize = 48;

struct Joined {
    /// Every email in order, each preceded and followed by a newline.
    text: String,
    /// Where each email starts in `text`; u32 halves the index of a large license, and
    /// `JoinedBuilder::push` asserts the text stays below 4 GiB.
    starts: Vec<u32>,
}

struct JoinedBuilder {
    text: String,
    starts: Vec<u32>,
}

impl JoinedBuilder {
    fn with_capacity(bytes: usize, emails: usize) -> Self {
        let mut text = String::with_capacity(bytes + 1);
        text.push('\n');
        Self {
            text,
            starts: Vec::with_capacity(emails),
        }
    }

    /// Appends the next email; emails come in strictly increasing order.
    fn push(&mut self, email: &str) {
        let start = u32::try_from(self.text.len()).expect("a cached email text stays below 4 GiB");
        debug_assert!(!email.contains('\n'), "emails hold no newline");
        self.starts.push(start);
        self.text.push_str(email);
        self.text.push('\n');
    }

    fn finish(mut self) -> Joined {
        self.text.shrink_to_fit();
        self.starts.shrink_to_fit();
        Joined {
            text: self.text,
            starts: self.starts,
        }
    }
}

impl Joined {
    fn len(&self) -> usize {
        self.starts.len()
    }

    fn bytes(&self) -> usize {
        self.text.capacity() + self.starts.capacity() * std::mem::size_of::<u32>()
    }

    fn start(&self, index: usize) -> usize {
        self.starts[index] as usize
    }

    fn email(&self, index: usize) -> &str {
        let start = self.start(index);
        let end = match self.starts.get(index + 1) {
            Some(next) => *next as usize - 1,
            None => self.text.len() - 1,
        };
        &self.text[start..end]
    }

    /// The index of the first email not below `bound` (for a lower bound) or the index
    /// after the last email not above it (for an upper bound).
    fn index(&self, bound: Bound<&str>, lower: bool) -> usize {
        let email_at = |index: usize| self.email(index);
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
        visit: impl FnMut(&str) -> Result<bool, ProjectionError>,
    ) -> Result<(), ProjectionError> {
        let joined = self.current(tree, license)?;
        search_joined(&joined, search, visit)
    }

    /// The license's emails with every change told so far, loaded on first use.
    fn current(&self, tree: &sled::Tree, license: &str) -> Result<Arc<Joined>, ProjectionError> {
        {
            let licenses = self.licenses.read().unwrap_or_else(PoisonError::into_inner);
            if let Some(entry) = licenses.get(license)
                && entry.pending.is_empty()
            {
                return Ok(Arc::clone(&entry.joined));
            }
        }
        // Loading holds the write lock, so the projector's changes for a batch written
        // during the load wait and are applied after it: they are idempotent (present or
        // not), and the list ends up equal to the stored members.
        let mut licenses = self
            .licenses
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(entry) = licenses.get_mut(license) {
            entry.merge_pending();
            return Ok(Arc::clone(&entry.joined));
        }
        let joined = Arc::new(load(tree, license)?);
        let entry = LicenseEmails {
            joined: Arc::clone(&joined),
            pending: BTreeMap::new(),
        };
        let needed = entry.bytes();
        // Other licenses go until this one fits (any may go: its next search loads it
        // again); a license larger than the whole budget is searched but not kept.
        while !licenses.is_empty()
            && (licenses.len() >= EMAIL_CACHE_LICENSES_MAX
                || total_bytes(&licenses) + needed > EMAIL_CACHE_BYTES_MAX)
        {
            let Some(evicted) = licenses.keys().next().cloned() else {
                break;
            };
            licenses.remove(&evicted);
        }
        if needed <= EMAIL_CACHE_BYTES_MAX {
            licenses.insert(license.to_owned(), entry);
        }
        Ok(joined)
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
                entry.pending.insert(change.email.clone(), change.present);
                if entry.pending.len() > EMAIL_CACHE_PENDING_CHANGES_MAX {
                    entry.merge_pending();
                }
            }
        }
    }
}

fn total_bytes(licenses: &HashMap<String, LicenseEmails>) -> usize {
    licenses.values().map(LicenseEmails::bytes).sum()
}

fn load(tree: &sled::Tree, license: &str) -> Result<Joined, ProjectionError> {
    let member_scope = scope(PREFIX_MEMBER, license.as_bytes());
    let mut builder = JoinedBuilder::with_capacity(0, 0);
    for item in tree.scan_prefix(&member_scope) {
        let (key, _) = item?;
        let email = std::str::from_utf8(&key[member_scope.len()..]).map_err(|_| {
            ProjectionError::Corrupt {
                what: "member key",
                reason: "email not UTF-8".into(),
            }
        })?;
        builder.push(email);
    }
    Ok(builder.finish())
}

/// One substring search of the needle over the region of the text within the bounds.
fn search_joined(
    joined: &Joined,
    search: &Search<'_>,
    mut visit: impl FnMut(&str) -> Result<bool, ProjectionError>,
) -> Result<(), ProjectionError> {
    if crate::queries::string_bounds_are_empty(&search.lower, &search.upper) {
        return Ok(());
    }
    let first = joined.index(search.lower, true);
    let end = joined.index(search.upper, false);
    if first >= end {
        return Ok(());
    }
    // The region from the newline before the first email to the newline after the last.
    let region_start = joined.start(first) - 1;
    let region_end = match joined.starts.get(end) {
        Some(next) => *next as usize - 1,
        None => joined.text.len() - 1,
    };
    let text = joined.text.as_str();
    if search.descending {
        let mut upto = region_end;
        while upto > region_start {
            let Some(found) = text[region_start..upto].rfind(search.needle) else {
                return Ok(());
            };
            // A match may start on the newline before the region's first email (a needle
            // beginning with a newline); its line lies outside the region.
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
