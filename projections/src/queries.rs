//! The queries of SPEC §11 over the read models. Who may read what is the server's
//! decision; these answer whoever asks.

use std::cmp::Ordering;
use std::collections::{BTreeMap, BinaryHeap};
use std::ops::Bound;

use chrono::{DateTime, Duration, TimeZone, Utc};
use domain::query::EmailPattern;
use domain::{
    DomainName, Email, FeatureName, LicenseId, LicenseType, OuPath, Role, Secret, Source, Status,
};

use crate::apply::{day_of, decode_history_block, secret_hash};
use crate::cache::{CachedColumns, Joined, Search, search_joined};
use crate::keys::*;
use crate::packs;
use crate::records::{LicenseRecord, MemberRecord, StatusCounts, UsageRecord, decode};
use crate::{
    Generation, HISTORY_PAGE_SIZE_MAX, LIST_USERS_PAGE_SIZE_MAX, ProjectionError, Projections,
    SortColumn, USAGE_BUCKETS_MAX, USER_LISTING_ROWS_MAX,
};

/// The longest page token `list_users` reads; longer ones cannot be ours.
pub const PAGE_TOKEN_LENGTH_MAX_CHARS: usize = 2_048;
const PAGE_TOKEN_VERSION: u8 = 1;

/// a license with its counts. `key` and `link` are here for admins and staff; the
/// server leaves them out for anyone else, and `Secret` never prints.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LicenseView {
    pub id: LicenseId,
    pub license_type: LicenseType,
    pub seats: u32,
    pub counts: StatusCounts,
    pub users_count: u64,
    pub seats_free: u64,
    pub over_by: u64,
    pub valid_from: DateTime<Utc>,
    pub valid_until: DateTime<Utc>,
    /// Computed from the `now` the query was given.
    pub expired: bool,
    pub issued_at: DateTime<Utc>,
    pub admins: Vec<Email>,
    pub domains: Vec<DomainName>,
    pub ou_paths: Vec<OuPath>,
    pub ou_sync_held: bool,
    pub auto_enrollment: bool,
    pub features: BTreeMap<FeatureName, bool>,
    pub features_by_role: BTreeMap<Role, BTreeMap<FeatureName, bool>>,
    pub key: Secret,
    pub link: Option<Secret>,
}

/// one member row.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemberView {
    pub email: Email,
    pub status: Status,
    pub source: Source,
    pub role: Role,
    pub added_at: DateTime<Utc>,
    /// The actor's display string: an email, "staff" or "system".
    pub added_by: String,
    pub updated_at: DateTime<Utc>,
    pub ou_path: Option<OuPath>,
}

/// Q-2's request. `page_token` is the `next_page_token` of the previous page, with the same
/// sort and direction.
#[derive(Clone, Debug)]
pub struct ListUsersRequest {
    pub license: LicenseId,
    /// Q-2's email pattern as typed (`%` wildcards, case-insensitive); a malformed one is
    /// `InvalidPattern`.
    pub pattern: Option<String>,
    pub role_is: Option<Role>,
    pub role_is_not: Option<Role>,
    pub status: Option<Status>,
    pub source: Option<Source>,
    pub sort: SortColumn,
    pub descending: bool,
    /// 1 to `LIST_USERS_PAGE_SIZE_MAX`.
    pub page_size: usize,
    pub page_token: Option<String>,
}

impl ListUsersRequest {
    /// Every member in email order, a full page at a time.
    pub fn new(license: LicenseId) -> Self {
        Self {
            license,
            pattern: None,
            role_is: None,
            role_is_not: None,
            status: None,
            source: None,
            sort: SortColumn::Email,
            descending: false,
            page_size: LIST_USERS_PAGE_SIZE_MAX,
            page_token: None,
        }
    }

    fn accepts(&self, member: &MemberRecord) -> bool {
        self.accepts_values(member.role, member.status, member.source)
    }

    /// `accepts` over the columns a member list keeps in memory.
    fn accepts_columns(&self, columns: &CachedColumns) -> bool {
        self.accepts_values(columns.role, columns.status, columns.source)
    }

    fn accepts_values(&self, role: Role, status: Status, source: Source) -> bool {
        self.role_is.is_none_or(|wanted| role == wanted)
            && self.role_is_not.is_none_or(|unwanted| role != unwanted)
            && self.status.is_none_or(|wanted| status == wanted)
            && self.source.is_none_or(|wanted| source == wanted)
    }

    fn filters_columns(&self) -> bool {
        self.role_is.is_some()
            || self.role_is_not.is_some()
            || self.status.is_some()
            || self.source.is_some()
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UsersPage {
    pub users: Vec<MemberView>,
    /// Present when more rows follow; pass it back for the next page.
    pub next_page_token: Option<String>,
}

/// a license the user is a member of, and their status on it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UserLicense {
    pub license: LicenseId,
    pub status: Status,
}

/// Q-5 bucket widths, aligned at 00:00 UTC; weeks start on Monday.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bucket {
    Day,
    Week,
}

impl Bucket {
    fn days(self) -> i64 {
        match self {
            Self::Day => 1,
            Self::Week => 7,
        }
    }
}

/// one bucket of usage.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UsageBucket {
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
    /// users_count at the end of the bucket.
    pub users_count: u64,
    /// Members who came to hold a seat or an invite, by source; sources with zero omitted.
    pub added: BTreeMap<Source, u64>,
    /// Seat holders who stopped holding one, by source; sources with zero omitted.
    pub removed: BTreeMap<Source, u64>,
}

/// A row found for a ListUsers page, with the sort value it was found under.
struct Row {
    email: String,
    value: Vec<u8>,
    member: MemberRecord,
}

/// The sort key of the last row of a page, which the next page starts after.
struct Cursor {
    value: Vec<u8>,
    email: String,
}

fn corrupt(what: &'static str) -> ProjectionError {
    ProjectionError::Corrupt {
        what,
        reason: "not what the projector writes".into(),
    }
}

/// Q-2 order: the column in the asked direction, ties by email ascending; the email column
/// itself goes in the asked direction.
fn compare(column: SortColumn, descending: bool, a: (&[u8], &str), b: (&[u8], &str)) -> Ordering {
    let directed = |ordering: Ordering| {
        if descending {
            ordering.reverse()
        } else {
            ordering
        }
    };
    if column == SortColumn::Email {
        directed(a.1.cmp(b.1))
    } else {
        directed(a.0.cmp(b.0)).then_with(|| a.1.cmp(b.1))
    }
}

fn encode_token(column: SortColumn, descending: bool, row: &Row) -> String {
    let mut bytes = vec![PAGE_TOKEN_VERSION, column.code(), u8::from(descending)];
    bytes.extend_from_slice(&(row.value.len() as u16).to_be_bytes());
    bytes.extend_from_slice(&row.value);
    bytes.extend_from_slice(row.email.as_bytes());
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

fn decode_token(
    token: &str,
    column: SortColumn,
    descending: bool,
) -> Result<Cursor, ProjectionError> {
    let invalid = || ProjectionError::InvalidPageToken;
    if token.len() > PAGE_TOKEN_LENGTH_MAX_CHARS
        || !token.len().is_multiple_of(2)
        || !token.is_ascii()
    {
        return Err(invalid());
    }
    let bytes = (0..token.len())
        .step_by(2)
        .map(|at| u8::from_str_radix(&token[at..at + 2], 16).map_err(|_| invalid()))
        .collect::<Result<Vec<u8>, _>>()?;
    let [version, code, direction, high, low, rest @ ..] = bytes.as_slice() else {
        return Err(invalid());
    };
    if *version != PAGE_TOKEN_VERSION
        || SortColumn::from_code(*code) != Some(column)
        || *direction != u8::from(descending)
    {
        return Err(invalid());
    }
    let value_length = usize::from(u16::from_be_bytes([*high, *low]));
    if rest.len() <= value_length {
        return Err(invalid());
    }
    let (value, email) = rest.split_at(value_length);
    let email = std::str::from_utf8(email).map_err(|_| invalid())?;
    Ok(Cursor {
        value: value.to_vec(),
        email: email.to_owned(),
    })
}

/// A pattern like `%` matches every email; it is no filter at all.
fn matches_everything(pattern: &EmailPattern) -> bool {
    !pattern.is_exact() && pattern.literal_prefix().is_empty() && pattern.matches("")
}

/// Collects rows up to `limit`: one more than a page, so the page knows whether more follow.
struct Collector<'a> {
    request: &'a ListUsersRequest,
    pattern: Option<&'a EmailPattern>,
    tree: &'a sled::Tree,
    /// The generation's packs, oldest first.
    packs: packs::PackIds,
    rows: Vec<Row>,
    limit: usize,
}

impl Collector<'_> {
    fn full(&self) -> bool {
        self.rows.len() >= self.limit
    }

    fn member(&self, email: &str) -> Result<Option<MemberRecord>, ProjectionError> {
        let key = pair(
            PREFIX_MEMBER,
            self.request.license.as_str().as_bytes(),
            email.as_bytes(),
        );
        packs::get(self.tree, &self.packs, &key)?
            .value
            .map(|bytes| decode("member record", &bytes))
            .transpose()
    }

    /// Offers a candidate found under `value`; returns true once the page is full.
    fn offer(
        &mut self,
        email: &str,
        value: &[u8],
        member: Option<MemberRecord>,
    ) -> Result<bool, ProjectionError> {
        if self.pattern.is_some_and(|pattern| !pattern.matches(email)) {
            return Ok(self.full());
        }
        let member = match member {
            Some(member) => Some(member),
            None => self.member(email)?,
        };
        // A member removed by a batch written while this page is read is simply skipped.
        if let Some(member) = member.filter(|member| self.request.accepts(member)) {
            self.rows.push(Row {
                email: email.to_owned(),
                value: value.to_vec(),
                member,
            });
        }
        Ok(self.full())
    }
}

fn bounds_are_empty(lower: &Bound<Vec<u8>>, upper: &Bound<Vec<u8>>) -> bool {
    match (lower, upper) {
        (Bound::Included(low), Bound::Included(high)) => low > high,
        (Bound::Included(low) | Bound::Excluded(low), Bound::Excluded(high))
        | (Bound::Excluded(low), Bound::Included(high)) => low >= high,
        _ => false,
    }
}

pub(crate) fn string_bounds_are_empty(lower: &Bound<&str>, upper: &Bound<&str>) -> bool {
    match (lower, upper) {
        (Bound::Included(low), Bound::Included(high)) => low > high,
        (Bound::Included(low) | Bound::Excluded(low), Bound::Excluded(high))
        | (Bound::Excluded(low), Bound::Included(high)) => low >= high,
        _ => false,
    }
}

impl Projections {
    /// Q-1 at `now` (for `expired`), or `None` for an unknown license.
    pub fn get_license(
        &self,
        license: &LicenseId,
        now: DateTime<Utc>,
    ) -> Result<Option<LicenseView>, ProjectionError> {
        let generation = self.generation();
        let Some(record) = license_record(&generation, license)? else {
            return Ok(None);
        };
        let users_count = record.counts.users_count();
        Ok(Some(LicenseView {
            id: license.clone(),
            license_type: record.license_type,
            seats: record.seats,
            counts: record.counts,
            users_count,
            seats_free: u64::from(record.seats).saturating_sub(users_count),
            over_by: users_count.saturating_sub(u64::from(record.seats)),
            valid_from: record.valid_from,
            valid_until: record.valid_until,
            expired: now > record.valid_until,
            issued_at: record.issued_at,
            admins: record.admins,
            domains: record.domains.into_iter().collect(),
            ou_paths: record.ou_paths,
            ou_sync_held: record.ou_sync_held,
            auto_enrollment: record.auto_enrollment,
            features: record.features,
            features_by_role: record.features_by_role,
            key: record.key,
            link: record.link,
        }))
    }

    /// One member of a license, or `None` (GetLicense's "is a member" check).
    pub fn member(
        &self,
        license: &LicenseId,
        email: &Email,
    ) -> Result<Option<MemberView>, ProjectionError> {
        let generation = self.generation();
        let key = pair(
            PREFIX_MEMBER,
            license.as_str().as_bytes(),
            email.as_str().as_bytes(),
        );
        let Some(bytes) = packs::get(&generation.tree, &generation.packs(), &key)?.value else {
            return Ok(None);
        };
        let member: MemberRecord = decode("member record", &bytes)?;
        Ok(Some(member_view(email.clone(), member)))
    }

    /// one page of a license's members.
    pub fn list_users(&self, request: &ListUsersRequest) -> Result<UsersPage, ProjectionError> {
        if !(1..=LIST_USERS_PAGE_SIZE_MAX).contains(&request.page_size) {
            return Err(ProjectionError::InvalidPageSize {
                requested: request.page_size,
                max: LIST_USERS_PAGE_SIZE_MAX,
            });
        }
        let cursor = request
            .page_token
            .as_deref()
            .map(|token| decode_token(token, request.sort, request.descending))
            .transpose()?;
        let generation = self.generation();
        if license_record(&generation, &request.license)?.is_none() {
            return Err(ProjectionError::LicenseNotFound);
        }
        let parsed = request
            .pattern
            .as_deref()
            .map(EmailPattern::parse)
            .transpose()
            .map_err(|error| ProjectionError::InvalidPattern(error.message().to_owned()))?;
        let pattern = parsed
            .as_ref()
            .filter(|pattern| !matches_everything(pattern));
        let needle = request
            .pattern
            .as_deref()
            .map(longest_piece)
            .unwrap_or_default();
        let mut collector = Collector {
            request,
            pattern,
            tree: &generation.tree,
            packs: generation.packs(),
            rows: Vec::new(),
            limit: request.page_size + 1,
        };
        // Email order without filters reads the member records in order straight from
        // sled; every other page is chosen from the license's in-memory member list.
        match (pattern, request.sort) {
            (None, SortColumn::Email) if !request.filters_columns() => {
                stream_members(&mut collector, cursor.as_ref())?
            }
            (_, SortColumn::Email) => cached_email_order(
                &generation,
                &mut collector,
                pattern,
                &needle,
                cursor.as_ref(),
            )?,
            (_, column) => cached_sorted(
                &generation,
                &mut collector,
                column,
                pattern,
                &needle,
                cursor.as_ref(),
            )?,
        }
        let mut rows = collector.rows;
        let next_page_token = if rows.len() > request.page_size {
            rows.truncate(request.page_size);
            rows.last()
                .map(|row| encode_token(request.sort, request.descending, row))
        } else {
            None
        };
        let users = rows
            .into_iter()
            .map(|row| {
                let email = Email::parse(&row.email).map_err(|_| corrupt("member email"))?;
                Ok(member_view(email, row.member))
            })
            .collect::<Result<Vec<_>, ProjectionError>>()?;
        Ok(UsersPage {
            users,
            next_page_token,
        })
    }

    /// every license the user is a member of, with the status on it, by license id.
    pub fn licenses_of_user(&self, email: &Email) -> Result<Vec<UserLicense>, ProjectionError> {
        let generation = self.generation();
        let user_scope = scope(PREFIX_USER_LICENSE, email.as_str().as_bytes());
        let mut licenses = Vec::new();
        for item in packs::scan_prefix(&generation.tree, &generation.packs(), &user_scope)?
            .take(USER_LISTING_ROWS_MAX)
        {
            let (key, value) = item?;
            let license = std::str::from_utf8(&key[user_scope.len()..])
                .ok()
                .and_then(|id| LicenseId::parse(id).ok())
                .ok_or_else(|| corrupt("user license key"))?;
            let status = std::str::from_utf8(&value)
                .ok()
                .and_then(|name| Status::parse(name).ok())
                .ok_or_else(|| corrupt("user license status"))?;
            licenses.push(UserLicense { license, status });
        }
        Ok(licenses)
    }

    /// Q-4, INV-3: the licenses on which the user has a pending invite.
    pub fn invites_of_user(&self, email: &Email) -> Result<Vec<LicenseId>, ProjectionError> {
        Ok(self
            .licenses_of_user(email)?
            .into_iter()
            .filter(|entry| entry.status == Status::Invited)
            .map(|entry| entry.license)
            .collect())
    }

    /// Q-4, LIC-5: the domains the user is domain admin of (also the command context of
    /// INV-1).
    pub fn domains_administered_by(
        &self,
        email: &Email,
    ) -> Result<Vec<DomainName>, ProjectionError> {
        self.listed_after(
            PREFIX_USER_DOMAIN,
            email.as_str(),
            |name| DomainName::parse(name).ok(),
            "user domain key",
        )
    }

    /// LIC-5: the domain admins of a domain, by email.
    pub fn domain_admins(&self, domain: &DomainName) -> Result<Vec<Email>, ProjectionError> {
        self.listed_after(
            PREFIX_DOMAIN_ADMIN,
            domain.as_str(),
            |email| Email::parse(email).ok(),
            "domain admin key",
        )
    }

    /// The values named by the keys under `prefix` and `owner` (`prefix owner \0 value`),
    /// in key order, at most `USER_LISTING_ROWS_MAX` of them. A key whose value does not
    /// parse is corruption: the projector only writes valid ones.
    fn listed_after<T>(
        &self,
        prefix: u8,
        owner: &str,
        parse: impl Fn(&str) -> Option<T>,
        what: &'static str,
    ) -> Result<Vec<T>, ProjectionError> {
        let generation = self.generation();
        let owner_scope = scope(prefix, owner.as_bytes());
        let mut values = Vec::new();
        for item in generation
            .tree
            .scan_prefix(&owner_scope)
            .take(USER_LISTING_ROWS_MAX)
        {
            let (key, _) = item?;
            let value = std::str::from_utf8(&key[owner_scope.len()..])
                .ok()
                .and_then(&parse)
                .ok_or_else(|| corrupt(what))?;
            values.push(value);
        }
        Ok(values)
    }

    /// KEY-1: the license whose current key this is.
    pub fn license_by_key(&self, key: &Secret) -> Result<Option<LicenseId>, ProjectionError> {
        self.license_at(single(PREFIX_KEY_HASH, &secret_hash(key)))
    }

    /// LINK-1: the license whose current join link this is.
    pub fn license_by_link(&self, token: &Secret) -> Result<Option<LicenseId>, ProjectionError> {
        self.license_at(single(PREFIX_LINK_HASH, &secret_hash(token)))
    }

    /// DOM-3: the license that claims a domain.
    pub fn license_by_claimed_domain(
        &self,
        domain: &DomainName,
    ) -> Result<Option<LicenseId>, ProjectionError> {
        self.license_at(single(PREFIX_CLAIM, domain.as_str().as_bytes()))
    }

    fn license_at(&self, key: Vec<u8>) -> Result<Option<LicenseId>, ProjectionError> {
        let Some(bytes) = self.generation().tree.get(key)? else {
            return Ok(None);
        };
        std::str::from_utf8(&bytes)
            .ok()
            .and_then(|id| LicenseId::parse(id).ok())
            .map(Some)
            .ok_or_else(|| corrupt("license id"))
    }

    /// positions of the events of a license's stream, oldest first, after `after`.
    pub fn license_history(
        &self,
        license: &LicenseId,
        after: Option<u64>,
        limit: usize,
    ) -> Result<Vec<u64>, ProjectionError> {
        check_history_limit(limit)?;
        let generation = self.generation();
        // The license record first, then the full blocks: a block that fills meanwhile is
        // then found among the full blocks too, and read from there (below).
        let open_block = license_record(&generation, license)?
            .map(|record| record.history_open)
            .unwrap_or_default();
        let history_scope = scope(PREFIX_HISTORY_LICENSE, license.as_str().as_bytes());
        let upper = prefix_end(&history_scope).expect("a scope ends in zero");
        // The first block to read is the last one starting at or before `after` (it may
        // hold later positions too); without `after`, the first block.
        let start = match after {
            Some(position) => generation
                .tree
                .range(
                    history_scope.clone()
                        ..=positioned(
                            PREFIX_HISTORY_LICENSE,
                            license.as_str().as_bytes(),
                            position,
                        ),
                )
                .next_back()
                .transpose()?
                .map_or_else(|| history_scope.clone(), |(key, _)| key.to_vec()),
            None => history_scope.clone(),
        };
        let mut positions = Vec::new();
        let mut open_block_stored = false;
        let take_fresh = |positions: &mut Vec<u64>, block: Vec<u64>| {
            let fresh = block
                .into_iter()
                .filter(|position| after.is_none_or(|after| *position > after));
            positions.extend(fresh.take(limit - positions.len()));
        };
        for item in generation.tree.range(start..upper) {
            let (key, value) = item?;
            let block = decode_history_block(&key[history_scope.len()..], &value)?;
            open_block_stored |= open_block.first() == block.first();
            take_fresh(&mut positions, block);
            if positions.len() == limit {
                return Ok(positions);
            }
        }
        if !open_block_stored {
            take_fresh(&mut positions, open_block);
        }
        Ok(positions)
    }

    /// positions of the events about a user (`Event::member_email`), oldest first.
    /// They are under the user's history keys, except the latest ones of each current
    /// membership, which its member record holds (`MemberRecord::history`).
    pub fn user_history(
        &self,
        email: &Email,
        after: Option<u64>,
        limit: usize,
    ) -> Result<Vec<u64>, ProjectionError> {
        check_history_limit(limit)?;
        let generation = self.generation();
        // The member records first, then the keys: positions that move from a record to
        // the keys meanwhile are then read twice and deduplicated, never missed.
        // Every membership, not only the first `USER_LISTING_ROWS_MAX` that Q-3 lists: an
        // auditor's history must be whole, and it costs one read per membership.
        let mut positions = Vec::new();
        let user_scope = scope(PREFIX_USER_LICENSE, email.as_str().as_bytes());
        let packs = generation.packs();
        for item in packs::scan_prefix(&generation.tree, &packs, &user_scope)? {
            let (user_license, _) = item?;
            let license = &user_license[user_scope.len()..];
            let key = pair(PREFIX_MEMBER, license, email.as_str().as_bytes());
            if let Some(bytes) = packs::get(&generation.tree, &packs, &key)?.value {
                let member: MemberRecord = decode("member record", &bytes)?;
                positions.extend(
                    member
                        .history
                        .into_iter()
                        .filter(|position| after.is_none_or(|after| *position > after)),
                );
            }
        }
        positions.extend(user_history_keys_after(&generation, email, after, limit)?);
        positions.sort_unstable();
        positions.dedup();
        positions.truncate(limit);
        Ok(positions)
    }

    /// usage of a license in buckets covering `[from, to)`, aligned at 00:00 UTC (weeks
    /// on Monday): the first bucket is the one holding `from`, the last the one holding
    /// the last instant before `to`.
    pub fn usage(
        &self,
        license: &LicenseId,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        bucket: Bucket,
    ) -> Result<Vec<UsageBucket>, ProjectionError> {
        let (start_day, buckets) = usage_buckets(from, to, bucket)?;
        let generation = self.generation();
        // The license record first, then the closed days: a day that closes meanwhile is
        // then found among the closed days too, and read from there (below).
        let Some(record) = license_record(&generation, license)? else {
            return Err(ProjectionError::LicenseNotFound);
        };
        let open_day = record.usage_last_day.zip(record.usage_open);
        let width = bucket.days();
        let id = license.as_str().as_bytes();
        let usage_scope = scope(PREFIX_USAGE, id);
        let first_key = pair(PREFIX_USAGE, id, &day_bytes(start_day));
        let range_end_day = start_day + width * buckets as i64;
        let end_key = pair(PREFIX_USAGE, id, &day_bytes(range_end_day));
        let closed_before = match generation
            .tree
            .range(usage_scope.clone()..first_key.clone())
            .next_back()
        {
            Some(item) => {
                let (key, value) = item?;
                Some(usage_day(&usage_scope, &key, &value)?)
            }
            None => None,
        };
        // The latest record before the first bucket: the open day if it is that early and
        // not closed meanwhile, else the latest closed one.
        let open_before = open_day
            .as_ref()
            .filter(|(day, _)| *day < start_day)
            .filter(|(day, _)| {
                closed_before
                    .as_ref()
                    .is_none_or(|(closed, _)| closed < day)
            });
        let mut running = match (open_before, &closed_before) {
            (Some((_, record)), _) | (None, Some((_, record))) => record.users_count,
            (None, None) => 0,
        };
        let mut result: Vec<UsageBucket> = (0..buckets as i64)
            .map(|index| {
                let start = day_start(start_day + index * width);
                UsageBucket {
                    start,
                    end: start + Duration::days(width),
                    users_count: 0,
                    added: BTreeMap::new(),
                    removed: BTreeMap::new(),
                }
            })
            .collect();
        let mut last_count: Vec<Option<u64>> = vec![None; buckets];
        let mut days = Vec::new();
        for item in generation.tree.range(first_key..end_key) {
            let (key, value) = item?;
            days.push(usage_day(&usage_scope, &key, &value)?);
        }
        if let Some((day, record)) = open_day
            && (start_day..range_end_day).contains(&day)
            && days.last().is_none_or(|(closed, _)| *closed < day)
        {
            days.push((day, record));
        }
        for (day, record) in days {
            let index =
                usize::try_from((day - start_day) / width).map_err(|_| corrupt("usage key"))?;
            let target = &mut result[index];
            for (source, count) in Source::ALL.iter().zip(&record.added) {
                if *count > 0 {
                    *target.added.entry(*source).or_default() += count;
                }
            }
            for (source, count) in Source::ALL.iter().zip(&record.removed) {
                if *count > 0 {
                    *target.removed.entry(*source).or_default() += count;
                }
            }
            last_count[index] = Some(record.users_count);
        }
        for (bucket, last) in result.iter_mut().zip(last_count) {
            if let Some(count) = last {
                running = count;
            }
            bucket.users_count = running;
        }
        Ok(result)
    }
}

/// checks a usage range before anything is read, so that a bad range is
/// INVALID_ARGUMENT whoever asks and whichever license (ERR-1 puts it before NOT_FOUND and
/// PERMISSION_DENIED): `EmptyRange` unless `from` is before `to`, `TooManyBuckets` past
/// `USAGE_BUCKETS_MAX`.
pub fn check_usage_range(
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    bucket: Bucket,
) -> Result<(), ProjectionError> {
    usage_buckets(from, to, bucket).map(|_| ())
}

/// The first day of the first bucket of a usage range and the number of buckets.
fn usage_buckets(
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    bucket: Bucket,
) -> Result<(i64, usize), ProjectionError> {
    if from >= to {
        return Err(ProjectionError::EmptyRange);
    }
    let width = bucket.days();
    let first_day = day_of(from);
    let start_day = match bucket {
        Bucket::Day => first_day,
        // 1970-01-01 was a Thursday, three days after a Monday.
        Bucket::Week => first_day - (first_day + 3).rem_euclid(7),
    };
    let end_day = day_of(to - Duration::nanoseconds(1)) + 1;
    let buckets = (end_day - start_day + width - 1) / width;
    let buckets = usize::try_from(buckets).unwrap_or(usize::MAX);
    if buckets > USAGE_BUCKETS_MAX {
        return Err(ProjectionError::TooManyBuckets {
            buckets,
            max: USAGE_BUCKETS_MAX,
        });
    }
    Ok((start_day, buckets))
}

/// The first `limit` positions after `after` under the user's per-position history keys.
fn user_history_keys_after(
    generation: &Generation,
    email: &Email,
    after: Option<u64>,
    limit: usize,
) -> Result<Vec<u64>, ProjectionError> {
    let user = email.as_str().as_bytes();
    let user_scope = scope(PREFIX_HISTORY_USER, user);
    let lower = match after {
        Some(position) => Bound::Excluded(positioned(PREFIX_HISTORY_USER, user, position)),
        None => Bound::Included(user_scope.clone()),
    };
    let upper = Bound::Excluded(prefix_end(&user_scope).expect("a scope ends in zero"));
    let mut positions = Vec::new();
    let keys = packs::Merged::new(&generation.tree, &generation.packs(), lower, upper, false)?;
    for item in keys.take(limit) {
        let (key, _) = item?;
        let bytes: [u8; 8] = key[user_scope.len()..]
            .try_into()
            .map_err(|_| corrupt("history key"))?;
        positions.push(u64::from_be_bytes(bytes));
    }
    Ok(positions)
}

/// A usage key's day and its record (`usage_scope` is the key's license part).
fn usage_day(
    usage_scope: &[u8],
    key: &[u8],
    value: &[u8],
) -> Result<(i64, UsageRecord), ProjectionError> {
    let day = day_from_bytes(&key[usage_scope.len()..]).ok_or_else(|| corrupt("usage key"))?;
    Ok((day, decode("usage record", value)?))
}

fn check_history_limit(limit: usize) -> Result<(), ProjectionError> {
    if (1..=HISTORY_PAGE_SIZE_MAX).contains(&limit) {
        Ok(())
    } else {
        Err(ProjectionError::InvalidPageSize {
            requested: limit,
            max: HISTORY_PAGE_SIZE_MAX,
        })
    }
}

fn day_start(day: i64) -> DateTime<Utc> {
    Utc.timestamp_opt(day * 86_400, 0)
        .single()
        .unwrap_or(DateTime::<Utc>::MAX_UTC)
}

fn license_record(
    generation: &Generation,
    license: &LicenseId,
) -> Result<Option<LicenseRecord>, ProjectionError> {
    generation
        .tree
        .get(single(PREFIX_LICENSE, license.as_str().as_bytes()))?
        .map(|bytes| decode("license record", &bytes))
        .transpose()
}

fn member_view(email: Email, member: MemberRecord) -> MemberView {
    MemberView {
        email,
        status: member.status,
        source: member.source,
        role: member.role,
        added_at: member.added_at,
        added_by: member.added_by.to_string(),
        updated_at: member.updated_at,
        ou_path: member.ou_path,
    }
}

/// Email order straight from the member keys, in either direction.
fn stream_members(
    collector: &mut Collector<'_>,
    cursor: Option<&Cursor>,
) -> Result<(), ProjectionError> {
    let member_scope = scope(PREFIX_MEMBER, collector.request.license.as_str().as_bytes());
    let scope_end = prefix_end(&member_scope).expect("a scope ends in zero");
    let after_cursor = |cursor: &Cursor| {
        let mut key = member_scope.clone();
        key.extend_from_slice(cursor.email.as_bytes());
        key
    };
    let descending = collector.request.descending;
    let (lower, upper) = match (cursor, descending) {
        (Some(cursor), false) => (
            Bound::Excluded(after_cursor(cursor)),
            Bound::Excluded(scope_end),
        ),
        (Some(cursor), true) => (
            Bound::Included(member_scope.clone()),
            Bound::Excluded(after_cursor(cursor)),
        ),
        (None, _) => (
            Bound::Included(member_scope.clone()),
            Bound::Excluded(scope_end),
        ),
    };
    if bounds_are_empty(&lower, &upper) {
        return Ok(());
    }
    let items = packs::Merged::new(collector.tree, &collector.packs, lower, upper, descending)?;
    for item in items {
        let (key, value) = item?;
        let email =
            std::str::from_utf8(&key[member_scope.len()..]).map_err(|_| corrupt("member key"))?;
        let member: MemberRecord = decode("member record", &value)?;
        if collector.offer(email, &[], Some(member))? {
            break;
        }
    }
    Ok(())
}

/// The longest literal piece of a pattern, lower-cased as `EmailPattern` does: every match
/// contains it, so a substring search for it finds every candidate.
fn longest_piece(raw: &str) -> String {
    raw.trim()
        .to_lowercase()
        .split('%')
        .max_by_key(|piece| piece.len())
        .unwrap_or_default()
        .to_owned()
}

/// The range of emails a pattern's literal prefix allows (everything without a pattern).
fn prefix_bounds(pattern: Option<&EmailPattern>) -> (&str, Option<String>) {
    let prefix = pattern.map_or("", EmailPattern::literal_prefix);
    (prefix, string_prefix_end(prefix))
}

/// Email order over the in-memory member list of a license, in either direction: for
/// pattern searches and for filtered pages. The cached columns sort out rows the filters
/// refuse before any is read from sled; a literal prefix narrows the scan to its range.
fn cached_email_order(
    generation: &Generation,
    collector: &mut Collector<'_>,
    pattern: Option<&EmailPattern>,
    needle: &str,
    cursor: Option<&Cursor>,
) -> Result<(), ProjectionError> {
    let joined = generation.members.current(
        &generation.tree,
        || generation.packs(),
        collector.request.license.as_str(),
    )?;
    // The member list may hold members of a pack published after the collector took its
    // packs (changes are told only after their pack is published): read their records
    // through the packs as they are now.
    collector.packs = generation.packs();
    let request = collector.request;
    let descending = request.descending;
    let (prefix, prefix_end) = prefix_bounds(pattern);
    let mut lower = Bound::Included(prefix);
    let mut upper = prefix_end
        .as_deref()
        .map_or(Bound::Unbounded, Bound::Excluded);
    if let Some(cursor) = cursor {
        if descending {
            if prefix_end
                .as_deref()
                .is_none_or(|end| cursor.email.as_str() < end)
            {
                upper = Bound::Excluded(cursor.email.as_str());
            }
        } else if cursor.email.as_str() >= prefix {
            lower = Bound::Excluded(cursor.email.as_str());
        }
    }
    let search = Search {
        needle,
        lower,
        upper,
        descending,
    };
    search_joined(&joined, &search, |index, email| {
        if !request.accepts_columns(joined.columns(index)) {
            return Ok(false);
        }
        collector.offer(email, &[], None)
    })
}

/// Rows a sorted page may lose between choosing them in memory and reading them from sled
/// (a member removed meanwhile) before another pass is needed.
const SORTED_PAGE_SPARE_ROWS: usize = 8;

/// A member of a cached list, ordered as a page in `column` orders it.
struct Ranked<'a> {
    joined: &'a Joined,
    column: SortColumn,
    descending: bool,
    index: usize,
}

impl Ranked<'_> {
    fn key(&self) -> (&[u8], &str) {
        (
            self.joined.sort_value(self.index, self.column),
            self.joined.email(self.index),
        )
    }
}

impl Ord for Ranked<'_> {
    fn cmp(&self, other: &Self) -> Ordering {
        compare(self.column, self.descending, self.key(), other.key())
    }
}

impl PartialOrd for Ranked<'_> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for Ranked<'_> {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Ranked<'_> {}

/// Any column order, in either direction, over the in-memory member list: one pass keeps
/// the page's rows after the cursor in a bounded heap (the filters and the pattern are
/// checked on the way), and only those rows are read from sled. A pass costs one look at
/// every member (or every needle match) of the license, in memory; a second pass is needed
/// only when rows vanished from sled meanwhile.
fn cached_sorted(
    generation: &Generation,
    collector: &mut Collector<'_>,
    column: SortColumn,
    pattern: Option<&EmailPattern>,
    needle: &str,
    cursor: Option<&Cursor>,
) -> Result<(), ProjectionError> {
    let joined = generation.members.current(
        &generation.tree,
        || generation.packs(),
        collector.request.license.as_str(),
    )?;
    // The member list may hold members of a pack published after the collector took its
    // packs (changes are told only after their pack is published): read their records
    // through the packs as they are now.
    collector.packs = generation.packs();
    let request = collector.request;
    let descending = request.descending;
    let (prefix, prefix_end) = prefix_bounds(pattern);
    let search = Search {
        needle,
        lower: Bound::Included(prefix),
        upper: prefix_end
            .as_deref()
            .map_or(Bound::Unbounded, Bound::Excluded),
        descending: false,
    };
    let mut after: Option<(Vec<u8>, String)> =
        cursor.map(|cursor| (cursor.value.clone(), cursor.email.clone()));
    loop {
        let wanted = collector.limit - collector.rows.len() + SORTED_PAGE_SPARE_ROWS;
        let mut best: BinaryHeap<Ranked<'_>> = BinaryHeap::with_capacity(wanted + 1);
        search_joined(&joined, &search, |index, email| {
            if !request.accepts_columns(joined.columns(index))
                || pattern.is_some_and(|pattern| !pattern.matches(email))
            {
                return Ok(false);
            }
            let ranked = Ranked {
                joined: &joined,
                column,
                descending,
                index,
            };
            if let Some((value, email)) = &after
                && compare(column, descending, ranked.key(), (value, email)) != Ordering::Greater
            {
                return Ok(false);
            }
            if best.len() < wanted {
                best.push(ranked);
            } else if let Some(mut worst) = best.peek_mut()
                && ranked < *worst
            {
                *worst = ranked;
            }
            Ok(false)
        })?;
        let exhausted = best.len() < wanted;
        let selected = best.into_sorted_vec();
        let Some(last) = selected.last() else {
            return Ok(());
        };
        let (last_value, last_email) = last.key();
        let next_after = (last_value.to_vec(), last_email.to_owned());
        for ranked in &selected {
            let (value, email) = ranked.key();
            if collector.offer(email, value, None)? {
                return Ok(());
            }
        }
        if exhausted {
            return Ok(());
        }
        after = Some(next_after);
    }
}
