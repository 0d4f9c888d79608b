//! The members of a license in memory, for Q-2's pattern searches and its sort orders and
//! filters other than email order. A pattern with no literal prefix cannot use the
//! email-ordered keys; scanning half a million sled keys, or half a million separately
//! allocated strings, takes hundreds of milliseconds. So each cached license keeps its
//! emails joined into one sorted text, `\nemail\nemail\n`, where one substring search of
//! the pattern's longest literal piece runs over contiguous memory and only the lines it
//! hits are checked against the whole pattern. Beside each email it keeps the columns a
//! page can be sorted or filtered by (status, source, role, added_at, added_by: 20 bytes),
//! so a sorted or filtered page is chosen in memory and only its rows are read from sled.
//! Since projection schema 3 this replaces the sled sort index, which cost five keys per
//! member on every write (issue 7).
//!
//! The lists are derived data: loaded from the member records on first use, told of every
//! member change that moves one of these columns by the projector after each write, and
//! re-joined with those changes by the next query (or once they pile up). Their memory is
//! bounded by `MEMBER_CACHE_BYTES_MAX` in all and `MEMBER_CACHE_LICENSES_MAX` licenses.

use std::collections::{BTreeMap, HashMap};
use std::ops::Bound;
use std::sync::{Arc, PoisonError, RwLock};

use domain::{Role, Source, Status};

use crate::apply::{MemberColumns, MembershipChange};
use crate::keys::{PREFIX_MEMBER, scope};
use crate::records::{MemberRecord, decode};
use crate::{
    MEMBER_CACHE_BYTES_MAX, MEMBER_CACHE_LICENSES_MAX, MEMBER_CACHE_PENDING_CHANGES_MAX,
    ProjectionError, SortColumn,
};

/// One cached license: its members as one sorted text with their columns, and the member
/// changes the projector made since the text was joined. Only the text holds the emails
/// (no set of separately allocated strings beside it), so a cached member costs its email's
/// length plus 25 bytes.
struct LicenseMembers {
    /// Shared with queries under way, so a query holds no lock while it reads. `None`
    /// while the first load reads sled: the changes told meanwhile wait in `pending`.
    joined: Option<Arc<Joined>>,
    /// email -> the member's columns after the change (`None`: no longer a member), applied
    /// to the text by the next query (or at once when they pile up past
    /// `MEMBER_CACHE_PENDING_CHANGES_MAX`).
    pending: BTreeMap<String, Option<MemberColumns>>,
}

impl LicenseMembers {
    fn bytes(&self) -> usize {
        self.joined.as_ref().map_or(0, |joined| joined.bytes())
            + self
                .pending
                .iter()
                .map(|(email, columns)| {
                    email.len()
                        + columns.as_ref().map_or(0, |columns| columns.added_by.len())
                        + PENDING_ENTRY_OVERHEAD_BYTES
                })
                .sum::<usize>()
    }

    /// Merges the pending changes into a freshly joined text: one pass over both, in order.
    fn merge_pending(&mut self) {
        let Some(old) = &self.joined else {
            return;
        };
        if self.pending.is_empty() {
            return;
        }
        let pending = std::mem::take(&mut self.pending);
        let mut builder = JoinedBuilder::with_capacity(old.text.len(), old.len());
        let mut changes = pending.into_iter().peekable();
        for index in 0..old.len() {
            let email = old.email(index);
            while let Some((changed, columns)) =
                changes.next_if(|(changed, _)| changed.as_str() < email)
            {
                if let Some(columns) = columns {
                    builder.push(&changed, &columns);
                }
            }
            match changes.next_if(|(changed, _)| changed.as_str() == email) {
                Some((_, Some(columns))) => builder.push(email, &columns),
                Some((_, None)) => {}
                None => builder.push_cached(email, old.columns(index), old.actor(index)),
            }
        }
        for (changed, columns) in changes {
            if let Some(columns) = columns {
                builder.push(&changed, &columns);
            }
        }
        self.joined = Some(Arc::new(builder.finish()));
    }
}

/// A pending change's bookkeeping besides its strings (map node, columns), roughly.
const PENDING_ENTRY_OVERHEAD_BYTES: usize = 96;

/// The columns of one cached member. `added_at` is kept as its sort bytes and `added_by`
/// as an index into the license's list of distinct actors (a license has few).
#[derive(Clone, Copy, Debug)]
pub(crate) struct CachedColumns {
    pub status: Status,
    pub source: Source,
    pub role: Role,
    added_at: [u8; 12],
    added_by: u32,
}

pub(crate) struct Joined {
    /// Every email in order, each preceded and followed by a newline.
    text: String,
    /// Where each email starts in `text`; u32 halves the index of a large license, and
    /// `JoinedBuilder::push` asserts the text stays below 4 GiB.
    starts: Vec<u32>,
    /// Each email's columns, by the same index.
    columns: Vec<CachedColumns>,
    /// The distinct `added_by` display strings.
    actors: Vec<String>,
}

struct JoinedBuilder {
    text: String,
    starts: Vec<u32>,
    columns: Vec<CachedColumns>,
    actors: Vec<String>,
    actor_indexes: HashMap<String, u32>,
}

impl JoinedBuilder {
    fn with_capacity(bytes: usize, emails: usize) -> Self {
        let mut text = String::with_capacity(bytes + 1);
        text.push('\n');
        Self {
            text,
            starts: Vec::with_capacity(emails),
            columns: Vec::with_capacity(emails),
            actors: Vec::new(),
            actor_indexes: HashMap::new(),
        }
    }

    fn actor_index(&mut self, actor: &str) -> u32 {
        if let Some(index) = self.actor_indexes.get(actor) {
            return *index;
        }
        let index = u32::try_from(self.actors.len()).expect("fewer than 4 billion actors");
        self.actors.push(actor.to_owned());
        self.actor_indexes.insert(actor.to_owned(), index);
        index
    }

    /// Appends the next member; emails come in strictly increasing order.
    fn push(&mut self, email: &str, columns: &MemberColumns) {
        let added_by = self.actor_index(&columns.added_by);
        self.push_email(
            email,
            CachedColumns {
                status: columns.status,
                source: columns.source,
                role: columns.role,
                added_at: columns.added_at,
                added_by,
            },
        );
    }

    /// Appends a member copied from another joined text, whose actor is `actor`.
    fn push_cached(&mut self, email: &str, columns: &CachedColumns, actor: &str) {
        let added_by = self.actor_index(actor);
        self.push_email(
            email,
            CachedColumns {
                added_by,
                ..*columns
            },
        );
    }

    fn push_email(&mut self, email: &str, columns: CachedColumns) {
        let start = u32::try_from(self.text.len()).expect("a cached email text stays below 4 GiB");
        debug_assert!(!email.contains('\n'), "emails hold no newline");
        debug_assert!(
            self.starts.is_empty() || self.last_email() < email,
            "cached emails are strictly increasing"
        );
        self.starts.push(start);
        self.columns.push(columns);
        self.text.push_str(email);
        self.text.push('\n');
    }

    fn last_email(&self) -> &str {
        let start = *self.starts.last().expect("not empty") as usize;
        &self.text[start..self.text.len() - 1]
    }

    fn finish(mut self) -> Joined {
        self.text.shrink_to_fit();
        self.starts.shrink_to_fit();
        self.columns.shrink_to_fit();
        Joined {
            text: self.text,
            starts: self.starts,
            columns: self.columns,
            actors: self.actors,
        }
    }
}

impl Joined {
    fn len(&self) -> usize {
        self.starts.len()
    }

    fn bytes(&self) -> usize {
        self.text.capacity()
            + self.starts.capacity() * std::mem::size_of::<u32>()
            + self.columns.capacity() * std::mem::size_of::<CachedColumns>()
            + self.actors.iter().map(String::capacity).sum::<usize>()
    }

    fn start(&self, index: usize) -> usize {
        self.starts[index] as usize
    }

    pub(crate) fn email(&self, index: usize) -> &str {
        let start = self.start(index);
        let end = match self.starts.get(index + 1) {
            Some(next) => *next as usize - 1,
            None => self.text.len() - 1,
        };
        &self.text[start..end]
    }

    pub(crate) fn columns(&self, index: usize) -> &CachedColumns {
        &self.columns[index]
    }

    fn actor(&self, index: usize) -> &str {
        &self.actors[self.columns[index].added_by as usize]
    }

    /// The bytes member `index` sorts by in `column`: the same bytes as
    /// `apply::sort_value` of its record, so page tokens mean the same either way.
    pub(crate) fn sort_value(&self, index: usize, column: SortColumn) -> &[u8] {
        let columns = &self.columns[index];
        match column {
            SortColumn::Email => &[],
            SortColumn::Status => columns.status.as_str().as_bytes(),
            SortColumn::Source => columns.source.as_str().as_bytes(),
            SortColumn::Role => columns.role.as_str().as_bytes(),
            SortColumn::AddedAt => &columns.added_at,
            SortColumn::AddedBy => self.actor(index).as_bytes(),
        }
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

    /// The line of `text` holding byte `at`, and the index of its email.
    fn line_at(&self, at: usize) -> (usize, usize, usize) {
        let start = self.text[..at].rfind('\n').map_or(0, |newline| newline + 1);
        let end = at + self.text[at..].find('\n').unwrap_or(self.text.len() - at);
        let index = partition(self.starts.len(), |index| self.start(index) < start);
        (start, end, index)
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
pub(crate) struct MemberCache {
    licenses: RwLock<HashMap<String, LicenseMembers>>,
}

impl MemberCache {
    /// The license's members with every change told so far, loaded on first use.
    pub(crate) fn current(
        &self,
        tree: &sled::Tree,
        packs: impl FnOnce() -> crate::packs::PackIds,
        license: &str,
    ) -> Result<Arc<Joined>, ProjectionError> {
        {
            let licenses = self.licenses.read().unwrap_or_else(PoisonError::into_inner);
            if let Some(entry) = licenses.get(license)
                && entry.pending.is_empty()
                && let Some(joined) = &entry.joined
            {
                return Ok(Arc::clone(joined));
            }
        }
        if let Some(joined) = self.merged(license) {
            return Ok(joined);
        }
        // The load reads sled without holding the lock (a million members take seconds,
        // and the projector must not wait for them); changes told meanwhile are kept as
        // pending and applied to what was read (`finish_load`).
        self.begin_load(license);
        // The packs are read after the load is registered: a live pack published before
        // this point is in the list, and the changes of one published after it are kept as
        // pending.
        let loaded = match load(tree, &packs(), license) {
            Ok(loaded) => loaded,
            Err(error) => {
                self.abandon_load(license);
                return Err(error);
            }
        };
        Ok(self.finish_load(license, loaded))
    }

    /// The cached list with its pending changes merged, if the license is loaded.
    fn merged(&self, license: &str) -> Option<Arc<Joined>> {
        let mut licenses = self
            .licenses
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        let entry = licenses.get_mut(license)?;
        entry.joined.as_ref()?;
        entry.merge_pending();
        entry.joined.clone()
    }

    /// Marks the license as being loaded, so that the projector's changes from now on are
    /// kept for it. A load already under way (another query's) keeps its mark: its
    /// pending changes started earlier, which suits this load too.
    fn begin_load(&self, license: &str) {
        let mut licenses = self
            .licenses
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        licenses
            .entry(license.to_owned())
            .or_insert_with(|| LicenseMembers {
                joined: None,
                pending: BTreeMap::new(),
            });
    }

    fn abandon_load(&self, license: &str) {
        let mut licenses = self
            .licenses
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        if licenses
            .get(license)
            .is_some_and(|entry| entry.joined.is_none())
        {
            licenses.remove(license);
        }
    }

    /// Installs what a load read, with every change told since its `begin_load` applied:
    /// the scan saw each of those changes or not, and applying the latest state of each
    /// changed member again is harmless, so the list equals the stored members. Another
    /// load may have finished first; then its list is used. If the mark is gone (the
    /// license was evicted, or too many changes piled up while it loaded), what was read
    /// answers this query and is not kept: the next query loads again.
    fn finish_load(&self, license: &str, loaded: Joined) -> Arc<Joined> {
        let mut licenses = self
            .licenses
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        let Some(entry) = licenses.get_mut(license) else {
            // Evicted while loading: this query answers from what it read (as fresh as a
            // query that started a moment earlier); the next one loads again.
            return Arc::new(loaded);
        };
        if entry.joined.is_none() {
            entry.joined = Some(Arc::new(loaded));
        }
        entry.merge_pending();
        let joined = entry.joined.clone().expect("installed above");
        // A license larger than the whole budget is answered but not kept, and costs the
        // others nothing.
        if entry.bytes() > MEMBER_CACHE_BYTES_MAX {
            licenses.remove(license);
            return joined;
        }
        // Other licenses go until this one fits (any may go: its next query loads it
        // again, and a load under way for it keeps its answer).
        while licenses.len() > 1
            && (licenses.len() > MEMBER_CACHE_LICENSES_MAX
                || total_bytes(&licenses) > MEMBER_CACHE_BYTES_MAX)
        {
            let Some(evicted) = licenses
                .keys()
                .find(|name| name.as_str() != license)
                .cloned()
            else {
                break;
            };
            licenses.remove(&evicted);
        }
        joined
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
                entry
                    .pending
                    .insert(change.email.clone(), change.after.clone());
                if entry.pending.len() > MEMBER_CACHE_PENDING_CHANGES_MAX {
                    if entry.joined.is_some() {
                        entry.merge_pending();
                    } else {
                        // Too many changes for a load still under way: it will not be
                        // kept, and these need not be either.
                        licenses.remove(&change.license);
                    }
                }
            }
        }
    }
}

fn total_bytes(licenses: &HashMap<String, LicenseMembers>) -> usize {
    licenses.values().map(LicenseMembers::bytes).sum()
}

fn load(
    tree: &sled::Tree,
    packs: &crate::packs::PackIds,
    license: &str,
) -> Result<Joined, ProjectionError> {
    let member_scope = scope(PREFIX_MEMBER, license.as_bytes());
    let mut builder = JoinedBuilder::with_capacity(0, 0);
    for item in crate::packs::scan_prefix(tree, packs, &member_scope)? {
        let (key, value) = item?;
        let email = std::str::from_utf8(&key[member_scope.len()..]).map_err(|_| {
            ProjectionError::Corrupt {
                what: "member key",
                reason: "email not UTF-8".into(),
            }
        })?;
        let member: MemberRecord = decode("member record", &value)?;
        builder.push(email, &MemberColumns::of(&member));
    }
    Ok(builder.finish())
}

/// Offers each email within the bounds that contains the needle, with its index, in email
/// order (or reversed), to `visit` until it returns true: one substring search of the
/// needle over the region of the text within the bounds. `visit` still checks the whole
/// pattern: the needle is only a necessary condition.
pub(crate) fn search_joined(
    joined: &Joined,
    search: &Search<'_>,
    mut visit: impl FnMut(usize, &str) -> Result<bool, ProjectionError>,
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
            let (line_start, line_end, index) = joined.line_at(region_start + found);
            if line_start <= region_start {
                return Ok(());
            }
            if visit(index, &text[line_start..line_end])? {
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
            let (line_start, line_end, index) = joined.line_at(from + found);
            if line_start >= from && visit(index, &text[line_start..line_end])? {
                return Ok(());
            }
            from = line_end + 1;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn columns(status: Status) -> MemberColumns {
        MemberColumns {
            status,
            source: Source::Email,
            role: Role::Student,
            added_at: [0; 12],
            added_by: "staff".to_owned(),
        }
    }

    fn joined(members: &[(&str, Status)]) -> Joined {
        let mut builder = JoinedBuilder::with_capacity(0, 0);
        for (email, status) in members {
            builder.push(email, &columns(*status));
        }
        builder.finish()
    }

    fn listed(joined: &Joined) -> Vec<(String, Status)> {
        (0..joined.len())
            .map(|index| (joined.email(index).to_owned(), joined.columns(index).status))
            .collect()
    }

    fn change(email: &str, after: Option<Status>) -> MembershipChange {
        MembershipChange {
            license: "L".to_owned(),
            email: email.to_owned(),
            after: after.map(columns),
        }
    }

    #[test]
    fn changes_told_while_a_license_loads_are_applied_to_what_the_load_read() {
        // the load reads sled without holding the lock; a batch the projector writes
        // meanwhile, whether the scan saw it or not, must be in the list it installs.
        let cache = MemberCache::default();
        cache.begin_load("L");
        // Seen by the scan: b accepted. Not seen: c added, a removed.
        cache.apply(&[change("b@x.org", Some(Status::Accepted))]);
        cache.apply(&[
            change("c@x.org", Some(Status::Invited)),
            change("a@x.org", None),
        ]);
        let read = joined(&[("a@x.org", Status::Invited), ("b@x.org", Status::Accepted)]);
        let installed = cache.finish_load("L", read);
        let expected = vec![
            ("b@x.org".to_owned(), Status::Accepted),
            ("c@x.org".to_owned(), Status::Invited),
        ];
        assert_eq!(listed(&installed), expected);
        let kept = cache.merged("L").expect("the list is kept");
        assert_eq!(listed(&kept), expected);
    }

    #[test]
    fn a_load_whose_changes_overflow_answers_from_its_read_and_is_not_kept() {
        // Q-2, bounded memory: changes piling up past the limit while a license loads drop
        // its mark; the load answers its own query and the next query loads again.
        let cache = MemberCache::default();
        cache.begin_load("L");
        let many: Vec<MembershipChange> = (0..=MEMBER_CACHE_PENDING_CHANGES_MAX)
            .map(|index| change(&format!("u{index:06}@x.org"), Some(Status::Accepted)))
            .collect();
        cache.apply(&many);
        let installed = cache.finish_load("L", joined(&[("a@x.org", Status::Invited)]));
        assert_eq!(listed(&installed).len(), 1);
        assert!(cache.merged("L").is_none());
    }
}
