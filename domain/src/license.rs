//! The license aggregate: one license's seats, members, invites, secrets, OU links, domain
//! claims, auto-enrollment, features, admins and validity. `handle` decides a command
//! against the current state without changing it; `apply` folds one recorded event in and
//! cannot fail.
//!
//! Deciding never clones the member table: batch commands work on a `Plan`, an overlay of
//! the members the batch touches, so a decision costs what the command touches, not what
//! the license holds.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::num::NonZeroU64;
use std::ops::Bound;

use chrono::{DateTime, Utc};

use crate::commands::{
    AddSummary, AdminChannel, AutomaticSummary, Context, Decision, LicenseCommand, Outcome,
    RemoveSummary,
};
use crate::error::DomainError;
use crate::events::{
    AutoEnrollmentSet, DomainClaimed, DomainReleased, Event, EventMeta, FeaturePermissionSet,
    InviteAccepted, InviteRejected, InviteSent, JoinLinkRotated, LicenseAdminGranted,
    LicenseAdminRevoked, LicenseIssued, LicenseKeyRotated, LicenseRenewed, OuEntry, OuLinked,
    OuSyncConfirmed, OuSyncCounts, OuSyncHeld, OuSynced, OuUnlinked, RemovalReason, SeatsChanged,
    UserAdded, UserPromoted, UserRemoved, UserWaitlisted,
};
use crate::member_table::MemberTable;
use crate::values::{
    Actor, COURSE_ID_LENGTH_MAX_BYTES, DomainName, Email, FeatureName, LicenseId, LicenseType,
    OuPath, Role, SEATS_MAX, SEATS_MIN, Secret, Source, Status,
};

/// The most license admins one license may have. The bound keeps one `LicenseIssued` event
/// small; districts with more administrators than this are not a case we have seen.
pub const LICENSE_ADMINS_MAX: usize = 1_000;
/// The most OU paths one `LinkOu` may name.
pub const OU_PATHS_PER_LINK_MAX: usize = 1_000;
/// The most entries one OU snapshot, domain scan or roster may carry. A district larger
/// than this must be split into several linked OUs.
pub const AUTOMATIC_BATCH_ENTRIES_MAX: usize = 2_000_000;
/// The most emails one admin batch (email list or CSV file) may carry.
pub const ADMIN_BATCH_ENTRIES_MAX: usize = 2_000_000;
/// OU-8: a sync that would remove more than this share of the ou-sourced members ...
pub const OU_SYNC_HOLD_REMOVED_PERCENT_MAX: u64 = 10;
/// ... and more than this many people is held for a license admin to confirm.
pub const OU_SYNC_HOLD_REMOVED_PEOPLE_MAX: u64 = 5;

/// A member of a license, keyed by email (SPEC §1): what the license's decisions need and
/// no more. A license of a million members keeps a million of these, so the read models'
/// columns (the member's OU path, when it last changed) live in the projections only; this
/// is 48 bytes, where it was 96 with those two.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Member {
    pub status: Status,
    pub source: Source,
    pub role: Role,
    /// When the membership began: LMS-2 picks a teacher's oldest.
    pub added_at: DateTime<Utc>,
    pub added_by: Actor,
    /// The member's place in the waitlist while waitlisted, plus one (so that "none" costs
    /// no extra word): the order of `UserWaitlisted` events in the stream, which is log
    /// order (SEAT-4).
    waitlist_ticket: Option<NonZeroU64>,
}

impl Member {
    fn waitlist_ticket(&self) -> Option<u64> {
        self.waitlist_ticket.map(|ticket| ticket.get() - 1)
    }
}

/// How many members stand in each status.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct StatusCounts {
    pub accepted: u64,
    pub invited: u64,
    pub rejected: u64,
    pub waitlisted: u64,
}

impl StatusCounts {
    /// SEAT-1: users_count = accepted + invited.
    pub fn users_count(&self) -> u64 {
        self.accepted + self.invited
    }

    fn slot(&mut self, status: Status) -> &mut u64 {
        match status {
            Status::Accepted => &mut self.accepted,
            Status::Invited => &mut self.invited,
            Status::Rejected => &mut self.rejected,
            Status::Waitlisted => &mut self.waitlisted,
        }
    }
}

/// An OU sync waiting for a license admin's confirmation (OU-8).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct HeldSync {
    pub entries: Vec<OuEntry>,
    pub would: OuSyncCounts,
    pub reason: String,
    pub held_at: DateTime<Utc>,
}

/// A license that has been issued.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LicenseState {
    id: LicenseId,
    license_type: LicenseType,
    seats: u32,
    valid_from: DateTime<Utc>,
    valid_until: DateTime<Utc>,
    admins: Vec<Email>,
    domains: BTreeSet<DomainName>,
    key: Secret,
    link: Option<Secret>,
    auto_enrollment: bool,
    features: BTreeMap<FeatureName, bool>,
    features_by_role: BTreeMap<Role, BTreeMap<FeatureName, bool>>,
    ou_paths: Vec<OuPath>,
    held_sync: Option<HeldSync>,
    /// Dense: the members side by side, a 32-bit position per hash bucket
    /// (`MemberTable`). Boxed members in a `HashMap` took about 76 MB at a million members,
    /// unboxed ones about 140 MB and, while the table rehashed, twice that (issue 7).
    members: MemberTable,
    counts: StatusCounts,
    /// Waitlisted members by ticket, oldest first.
    waitlist: BTreeMap<u64, Email>,
    next_waitlist_ticket: u64,
    /// Members whose source is `ou`, in email order, so OU sync and unlink touch only them
    /// and do so in a deterministic order.
    ou_members: BTreeSet<Email>,
    /// Users who were members once and are not now: OU-4 counts their return as `readded`.
    former_members: HashSet<Email>,
    issued_at: DateTime<Utc>,
}

/// The license aggregate. Before `LicenseIssued` it holds nothing and every command but
/// `Issue` is NOT_FOUND.
/// Serializable so that the server can snapshot it: a snapshot is derived data, always
/// checked against the log it was taken from, never a source of truth.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct License {
    state: Option<LicenseState>,
}

fn not_found() -> DomainError {
    DomainError::NotFound("license not found: check the license id".into())
}

fn require_staff(ctx: &Context, what: &str) -> Result<(), DomainError> {
    match ctx.actor {
        Actor::Staff => Ok(()),
        _ => Err(DomainError::PermissionDenied(format!(
            "only staff may {what}"
        ))),
    }
}

fn require_integration(ctx: &Context, what: &str) -> Result<(), DomainError> {
    match ctx.actor {
        Actor::System | Actor::Staff => Ok(()),
        Actor::User(_) => Err(DomainError::PermissionDenied(format!(
            "only the system integration may {what}"
        ))),
    }
}

fn require_user<'c>(ctx: &'c Context, what: &str) -> Result<&'c Email, DomainError> {
    ctx.actor.email().ok_or_else(|| {
        DomainError::PermissionDenied(format!("only a signed-in user may {what}, for themselves"))
    })
}

fn check_seats(seats: u32) -> Result<(), DomainError> {
    if (SEATS_MIN..=SEATS_MAX).contains(&seats) {
        Ok(())
    } else {
        Err(DomainError::InvalidArgument(format!(
            "seats must be between {SEATS_MIN} and {SEATS_MAX}, not {seats}"
        )))
    }
}

fn check_entries(count: usize, max: usize, what: &str) -> Result<(), DomainError> {
    if count <= max {
        Ok(())
    } else {
        Err(DomainError::InvalidArgument(format!(
            "{what} has {count} entries; at most {max} are accepted in one request"
        )))
    }
}

/// INVALID_ARGUMENT checks that need no state. ERR-1 puts them before every other refusal,
/// so they run before the license is even looked at.
fn validate(command: &LicenseCommand) -> Result<(), DomainError> {
    match command {
        LicenseCommand::Issue {
            seats,
            valid_from,
            valid_until,
            admins,
            ..
        } => {
            check_seats(*seats)?;
            if valid_from >= valid_until {
                return Err(DomainError::InvalidArgument(
                    "valid_from must be earlier than valid_until".into(),
                ));
            }
            if admins.is_empty() {
                return Err(DomainError::InvalidArgument(
                    "a license needs at least one admin email".into(),
                ));
            }
            check_entries(admins.len(), LICENSE_ADMINS_MAX, "the admin list")
        }
        LicenseCommand::ChangeSeats { seats } => check_seats(*seats),
        LicenseCommand::AddUsers { emails, .. } | LicenseCommand::RemoveUsers { emails } => {
            check_entries(emails.len(), ADMIN_BATCH_ENTRIES_MAX, "the batch")
        }
        LicenseCommand::ScanDomain { accounts, .. } => {
            check_entries(accounts.len(), AUTOMATIC_BATCH_ENTRIES_MAX, "the scan")
        }
        LicenseCommand::SyncRoster { course, students } => {
            if course.trim().is_empty() || course.len() > COURSE_ID_LENGTH_MAX_BYTES {
                return Err(DomainError::InvalidArgument(format!(
                    "the course id must be 1 to {COURSE_ID_LENGTH_MAX_BYTES} bytes"
                )));
            }
            check_entries(students.len(), AUTOMATIC_BATCH_ENTRIES_MAX, "the roster")
        }
        LicenseCommand::SyncOu { entries } => check_entries(
            entries.len(),
            AUTOMATIC_BATCH_ENTRIES_MAX,
            "the OU snapshot",
        ),
        LicenseCommand::LinkOu { ou_paths, .. } => {
            if ou_paths.is_empty() {
                return Err(DomainError::InvalidArgument(
                    "name at least one OU path to link".into(),
                ));
            }
            check_entries(ou_paths.len(), OU_PATHS_PER_LINK_MAX, "the OU path list")
        }
        _ => Ok(()),
    }
}

impl License {
    pub fn state(&self) -> Option<&LicenseState> {
        self.state.as_ref()
    }

    pub fn is_issued(&self) -> bool {
        self.state.is_some()
    }

    /// Decides a command. A refusal appends nothing; a decision's events, applied in order,
    /// give the new state.
    pub fn handle(&self, command: &LicenseCommand, ctx: &Context) -> Result<Decision, DomainError> {
        validate(command)?;
        if let LicenseCommand::Issue {
            license,
            license_type,
            seats,
            valid_from,
            valid_until,
            admins,
            key,
            link,
        } = command
        {
            require_staff(ctx, "issue licenses")?;
            if self.state.is_some() {
                return Err(DomainError::AlreadyExists(format!(
                    "a license with id {license} already exists; choose another id"
                )));
            }
            let mut unique_admins = Vec::with_capacity(admins.len());
            for admin in admins {
                if !unique_admins.contains(admin) {
                    unique_admins.push(admin.clone());
                }
            }
            return Ok(Decision::done(vec![
                LicenseIssued {
                    license: license.clone(),
                    license_type: *license_type,
                    seats: *seats,
                    valid_from: *valid_from,
                    valid_until: *valid_until,
                    admins: unique_admins,
                    key: key.clone(),
                    link: license_type.has_join_link().then(|| link.clone()),
                    auto_enrollment: license_type.auto_enrollment_by_default(),
                }
                .into(),
            ]));
        }
        let state = self.state.as_ref().ok_or_else(not_found)?;
        state.decide(command, ctx)
    }

    /// Makes room for `additional` more members at once, before a large decision's events
    /// are applied one by one: a member table grown step by step holds its old and its new
    /// buckets side by side at each step, the last one at the end of a million-row import,
    /// when memory is fullest (issue 7). Nothing a decision sees changes.
    pub fn reserve_members(&mut self, additional: usize) {
        if let Some(state) = &mut self.state {
            state.members.reserve(additional);
        }
    }

    /// Folds one recorded event into the state. Events come from the log, which only holds
    /// what `handle` decided, so an event that does not fit the state is a bug: it is
    /// asserted in debug builds and skipped in release builds rather than corrupting state.
    pub fn apply(&mut self, meta: &EventMeta, event: &Event) {
        match (&mut self.state, event) {
            (None, Event::LicenseIssued(issued)) => {
                self.state = Some(LicenseState::issued(meta, issued));
            }
            (Some(state), event) => state.apply(meta, event),
            (None, other) => {
                debug_assert!(false, "{} before LicenseIssued", other.type_name());
            }
        }
    }

    /// LMS-2: when this license would take a teacher's students by auto-enrollment, the time
    /// the teacher's membership began. The server picks the oldest such membership among
    /// the teacher's licenses.
    pub fn auto_enrollment_since(
        &self,
        teacher: &Email,
        now: DateTime<Utc>,
    ) -> Option<DateTime<Utc>> {
        let state = self.state.as_ref()?;
        if !state.auto_enrollment || state.is_expired(now) {
            return None;
        }
        state
            .members
            .get(teacher)
            .filter(|member| member.status == Status::Accepted)
            .map(|member| member.added_at)
    }
}

impl LicenseState {
    fn issued(meta: &EventMeta, issued: &LicenseIssued) -> Self {
        Self {
            id: issued.license.clone(),
            license_type: issued.license_type,
            seats: issued.seats,
            valid_from: issued.valid_from,
            valid_until: issued.valid_until,
            admins: issued.admins.clone(),
            domains: BTreeSet::new(),
            key: issued.key.clone(),
            link: issued.link.clone(),
            auto_enrollment: issued.auto_enrollment,
            features: BTreeMap::new(),
            features_by_role: BTreeMap::new(),
            ou_paths: Vec::new(),
            held_sync: None,
            members: MemberTable::default(),
            counts: StatusCounts::default(),
            waitlist: BTreeMap::new(),
            next_waitlist_ticket: 0,
            ou_members: BTreeSet::new(),
            former_members: HashSet::new(),
            issued_at: meta.at,
        }
    }

    pub fn id(&self) -> &LicenseId {
        &self.id
    }
    pub fn license_type(&self) -> LicenseType {
        self.license_type
    }
    pub fn seats(&self) -> u32 {
        self.seats
    }
    pub fn valid_from(&self) -> DateTime<Utc> {
        self.valid_from
    }
    pub fn valid_until(&self) -> DateTime<Utc> {
        self.valid_until
    }
    pub fn issued_at(&self) -> DateTime<Utc> {
        self.issued_at
    }
    pub fn admins(&self) -> &[Email] {
        &self.admins
    }
    pub fn domains(&self) -> &BTreeSet<DomainName> {
        &self.domains
    }
    pub fn key(&self) -> &Secret {
        &self.key
    }
    pub fn link(&self) -> Option<&Secret> {
        self.link.as_ref()
    }
    pub fn auto_enrollment(&self) -> bool {
        self.auto_enrollment
    }
    pub fn features(&self) -> &BTreeMap<FeatureName, bool> {
        &self.features
    }
    pub fn features_by_role(&self) -> &BTreeMap<Role, BTreeMap<FeatureName, bool>> {
        &self.features_by_role
    }
    pub fn ou_paths(&self) -> &[OuPath] {
        &self.ou_paths
    }
    pub fn held_sync(&self) -> Option<&HeldSync> {
        self.held_sync.as_ref()
    }
    pub fn member(&self, email: &Email) -> Option<&Member> {
        self.members.get(email)
    }
    /// Every member, in no particular order.
    pub fn members(&self) -> impl Iterator<Item = (&Email, &Member)> {
        self.members.iter()
    }
    pub fn counts(&self) -> StatusCounts {
        self.counts
    }
    /// The waitlisted members, first in line first (SEAT-4).
    pub fn waitlist(&self) -> impl Iterator<Item = &Email> {
        self.waitlist.values()
    }

    /// SEAT-1.
    pub fn users_count(&self) -> u64 {
        self.counts.users_count()
    }
    /// SEAT-1: max(0, seats - users_count).
    pub fn seats_free(&self) -> u64 {
        u64::from(self.seats).saturating_sub(self.users_count())
    }
    /// SEAT-1: max(0, users_count - seats), non-zero only after a seat decrease.
    pub fn over_by(&self) -> u64 {
        self.users_count().saturating_sub(u64::from(self.seats))
    }
    /// SPEC §1: expired when the clock is past `valid_until`.
    pub fn is_expired(&self, now: DateTime<Utc>) -> bool {
        now > self.valid_until
    }
    pub fn is_admin(&self, email: &Email) -> bool {
        self.admins.contains(email)
    }
    /// LIC-7: whether a feature is on for a role: a role setting wins over the license-wide
    /// one; a feature never set is on.
    pub fn feature_enabled(&self, feature: &FeatureName, role: Role) -> bool {
        self.features_by_role
            .get(&role)
            .and_then(|features| features.get(feature))
            .or_else(|| self.features.get(feature))
            .copied()
            .unwrap_or(true)
    }

    fn require_admin_or_staff(&self, ctx: &Context, what: &str) -> Result<(), DomainError> {
        match &ctx.actor {
            Actor::Staff => Ok(()),
            Actor::User(email) if self.is_admin(email) => Ok(()),
            _ => Err(DomainError::PermissionDenied(format!(
                "only a license admin of {} or staff may {what}",
                self.id
            ))),
        }
    }

    fn refuse_if_expired(&self, now: DateTime<Utc>) -> Result<(), DomainError> {
        if self.is_expired(now) {
            Err(DomainError::FailedPrecondition(format!(
                "license expired: {} ended at {}; renew it before adding anyone",
                self.id,
                self.valid_until.to_rfc3339()
            )))
        } else {
            Ok(())
        }
    }

    fn refuse_without_ou_link(&self) -> Result<(), DomainError> {
        if self.ou_paths.is_empty() {
            Err(DomainError::FailedPrecondition(format!(
                "license {} has no linked OU; link one with LinkOu first",
                self.id
            )))
        } else {
            Ok(())
        }
    }

    /// REM-1: whether a removed member will come back by itself: an ou member while an OU is
    /// still linked, a domain member while the license still claims their domain. After an
    /// unlink or a release nothing brings them back, and the answer should not say so.
    fn brings_back(&self, email: &Email, source: Source) -> bool {
        match source {
            Source::Ou => !self.ou_paths.is_empty(),
            Source::Domain => self.claims_domain(email.domain()),
            _ => false,
        }
    }

    fn claims_domain(&self, domain: &str) -> bool {
        self.domains
            .iter()
            .any(|claimed| claimed.as_str() == domain)
    }

    fn plan(&self, ctx: &Context) -> Plan<'_> {
        Plan::new(self, self.seats, !self.is_expired(ctx.now))
    }

    fn decide(&self, command: &LicenseCommand, ctx: &Context) -> Result<Decision, DomainError> {
        use LicenseCommand as C;
        match command {
            C::Issue { .. } => Err(DomainError::AlreadyExists(format!(
                "a license with id {} already exists; choose another id",
                self.id
            ))),
            C::Renew { valid_until } => {
                require_staff(ctx, "renew licenses")?;
                if *valid_until <= self.valid_until {
                    return Err(DomainError::FailedPrecondition(format!(
                        "the new valid_until must be later than the current one ({})",
                        self.valid_until.to_rfc3339()
                    )));
                }
                // LIC-3: a renewal can end an expiry, and waitlisted users wait for exactly
                // that, so the same decision promotes them.
                let mut plan = Plan::new(self, self.seats, ctx.now <= *valid_until);
                plan.events.push(
                    LicenseRenewed {
                        valid_until: *valid_until,
                        previous_valid_until: self.valid_until,
                    }
                    .into(),
                );
                plan.promote_waitlisted();
                Ok(Decision::done(plan.events))
            }
            C::ChangeSeats { seats } => {
                require_staff(ctx, "change seats")?;
                if *seats == self.seats {
                    return Ok(Decision::done(Vec::new()));
                }
                // LIC-2: lowering below users_count removes nobody; raising promotes (SEAT-4).
                let mut plan = Plan::new(self, *seats, !self.is_expired(ctx.now));
                plan.events.push(
                    SeatsChanged {
                        seats: *seats,
                        previous_seats: self.seats,
                    }
                    .into(),
                );
                plan.promote_waitlisted();
                Ok(Decision::done(plan.events))
            }
            C::GrantAdmin { email } => {
                self.require_admin_or_staff(ctx, "grant license admins")?;
                if self.is_admin(email) {
                    return Ok(Decision::done(Vec::new()));
                }
                if self.admins.len() >= LICENSE_ADMINS_MAX {
                    return Err(DomainError::ResourceExhausted(format!(
                        "license {} already has {LICENSE_ADMINS_MAX} admins",
                        self.id
                    )));
                }
                Ok(Decision::done(vec![
                    LicenseAdminGranted {
                        email: email.clone(),
                    }
                    .into(),
                ]))
            }
            C::RevokeAdmin { email } => {
                self.require_admin_or_staff(ctx, "revoke license admins")?;
                if !self.is_admin(email) {
                    return Err(DomainError::FailedPrecondition(format!(
                        "{email} is not an admin of license {}",
                        self.id
                    )));
                }
                if self.admins.len() == 1 {
                    return Err(DomainError::FailedPrecondition(format!(
                        "{email} is the last admin of license {}; grant another admin first",
                        self.id
                    )));
                }
                Ok(Decision::done(vec![
                    LicenseAdminRevoked {
                        email: email.clone(),
                    }
                    .into(),
                ]))
            }
            C::AddUsers { emails, channel } => self.decide_add_users(emails, *channel, ctx),
            C::RemoveUsers { emails } => {
                self.require_admin_or_staff(ctx, "remove users")?;
                let mut plan = self.plan(ctx);
                let mut summary = RemoveSummary::default();
                let mut seen = HashSet::with_capacity(emails.len());
                for email in emails {
                    if !seen.insert(email) {
                        continue;
                    }
                    match plan.standing(email) {
                        Some((_, source)) => {
                            plan.remove(email, RemovalReason::ByAdmin);
                            summary.removed += 1;
                            if self.brings_back(email, source) {
                                summary.will_return += 1;
                            }
                        }
                        None => summary.not_found += 1,
                    }
                }
                // REM-2: the freed seats go to the waitlist in the same decision.
                plan.promote_waitlisted();
                Ok(Decision {
                    events: plan.events,
                    outcome: Outcome::UsersRemoved(summary),
                })
            }
            C::AcceptInvite => {
                let email = require_user(ctx, "answer an invite")?;
                self.refuse_if_expired(ctx.now)?;
                self.require_pending_invite(email)?;
                Ok(Decision::done(vec![
                    InviteAccepted {
                        email: email.clone(),
                    }
                    .into(),
                ]))
            }
            C::RejectInvite => {
                let email = require_user(ctx, "answer an invite")?;
                self.require_pending_invite(email)?;
                let mut plan = self.plan(ctx);
                plan.events.push(
                    InviteRejected {
                        email: email.clone(),
                    }
                    .into(),
                );
                let before = plan.standing(email);
                let after = before.map(|(_, source)| (Status::Rejected, source));
                plan.set_standing(email, before, after);
                plan.promote_waitlisted();
                Ok(Decision::done(plan.events))
            }
            C::RedeemKey { key } => {
                if !self.key.matches(key) {
                    return Err(wrong_secret());
                }
                self.decide_secret_join(Source::Key, ctx)
            }
            C::JoinViaLink { token } => {
                if !self.link.as_ref().is_some_and(|link| link.matches(token)) {
                    return Err(wrong_secret());
                }
                self.decide_secret_join(Source::Link, ctx)
            }
            C::SignUp { email, role } => {
                require_integration(ctx, "report sign-ups")?;
                if !self.claims_domain(email.domain()) || self.is_expired(ctx.now) {
                    return Ok(Decision {
                        events: Vec::new(),
                        outcome: Outcome::Skipped,
                    });
                }
                let mut plan = self.plan(ctx);
                let status = plan
                    .join_automatic(email, Source::Domain, *role, None)
                    .status();
                Ok(Decision {
                    events: plan.events,
                    outcome: Outcome::Joined { status },
                })
            }
            C::ScanDomain { domain, accounts } => {
                require_integration(ctx, "report domain scans")?;
                let mut summary = AutomaticSummary::default();
                if !self.claims_domain(domain.as_str()) || self.is_expired(ctx.now) {
                    return Ok(Decision {
                        events: Vec::new(),
                        outcome: Outcome::Automatic(summary),
                    });
                }
                let mut plan = self.plan(ctx);
                let mut seen = HashSet::with_capacity(accounts.len());
                for account in accounts {
                    // A scan reports one domain; an account of another domain is not ours
                    // to add, whatever the scanner sent.
                    if account.email.domain() != domain.as_str() || !seen.insert(&account.email) {
                        continue;
                    }
                    plan.join_automatic(&account.email, Source::Domain, account.role, None)
                        .count_into(&mut summary);
                }
                Ok(Decision {
                    events: plan.events,
                    outcome: Outcome::Automatic(summary),
                })
            }
            C::AssignmentOpened {
                teacher,
                student,
                kami_assignment,
                ..
            } => {
                require_integration(ctx, "report LMS assignments")?;
                let eligible = self.auto_enrollment
                    && !self.is_expired(ctx.now)
                    && self
                        .members
                        .get(teacher)
                        .is_some_and(|member| member.status == Status::Accepted);
                if !kami_assignment || !eligible {
                    return Ok(Decision {
                        events: Vec::new(),
                        outcome: Outcome::Skipped,
                    });
                }
                let mut plan = self.plan(ctx);
                let status = plan
                    .join_automatic(student, Source::Lms, Role::Student, None)
                    .status();
                Ok(Decision {
                    events: plan.events,
                    outcome: Outcome::Joined { status },
                })
            }
            C::SyncRoster { students, .. } => {
                require_integration(ctx, "sync Classroom rosters")?;
                if self.license_type != LicenseType::Teacher {
                    return Err(DomainError::FailedPrecondition(format!(
                        "Classroom roster sync is for teacher licenses; {} is a {} license",
                        self.id, self.license_type
                    )));
                }
                self.refuse_if_expired(ctx.now)?;
                let mut plan = self.plan(ctx);
                let mut summary = AutomaticSummary::default();
                let mut seen = HashSet::with_capacity(students.len());
                for student in students {
                    if seen.insert(student) {
                        plan.join_automatic(student, Source::Roster, Role::Student, None)
                            .count_into(&mut summary);
                    }
                }
                Ok(Decision {
                    events: plan.events,
                    outcome: Outcome::Automatic(summary),
                })
            }
            C::RotateKey { key } => {
                self.require_admin_or_staff(ctx, "rotate the license key")?;
                Ok(Decision::done(vec![
                    LicenseKeyRotated { key: key.clone() }.into(),
                ]))
            }
            C::RotateLink { link } => {
                self.require_admin_or_staff(ctx, "rotate the join link")?;
                if !self.license_type.has_join_link() {
                    return Err(DomainError::FailedPrecondition(format!(
                        "only teacher licenses have a join link; {} is a {} license",
                        self.id, self.license_type
                    )));
                }
                Ok(Decision::done(vec![
                    JoinLinkRotated { link: link.clone() }.into(),
                ]))
            }
            C::SetFeature {
                feature,
                enabled,
                role,
            } => {
                self.require_admin_or_staff(ctx, "set feature permissions")?;
                Ok(Decision::done(vec![
                    FeaturePermissionSet {
                        feature: feature.clone(),
                        enabled: *enabled,
                        role: *role,
                    }
                    .into(),
                ]))
            }
            C::SetAutoEnrollment { enabled } => {
                require_staff(ctx, "change auto-enrollment")?;
                if !self.license_type.supports_auto_enrollment() {
                    return Err(DomainError::FailedPrecondition(format!(
                        "{} licenses have no LMS auto-enrollment",
                        self.license_type
                    )));
                }
                if *enabled == self.auto_enrollment {
                    return Ok(Decision::done(Vec::new()));
                }
                Ok(Decision::done(vec![
                    AutoEnrollmentSet { enabled: *enabled }.into(),
                ]))
            }
            C::LinkOu {
                ou_paths,
                google_admin,
            } => {
                // OU-1 names a license admin, not staff: the attestation is about the
                // customer's own Google Workspace, which only its admins can give.
                let is_license_admin = ctx.actor.email().is_some_and(|email| self.is_admin(email));
                if !is_license_admin {
                    return Err(DomainError::PermissionDenied(format!(
                        "only a license admin of {} may link Google OUs",
                        self.id
                    )));
                }
                if !google_admin {
                    return Err(DomainError::PermissionDenied(
                        "linking an OU needs the integration's attestation that you are a Google admin of the workspace".into(),
                    ));
                }
                if !self.license_type.supports_ou_sync() {
                    return Err(DomainError::FailedPrecondition(format!(
                        "OU sync is for district, school and building licenses; {} is a {} license",
                        self.id, self.license_type
                    )));
                }
                if !self.domains.is_empty() {
                    return Err(DomainError::FailedPrecondition(format!(
                        "license {} is deployed domain-wide; an OU link and a domain claim exclude each other",
                        self.id
                    )));
                }
                let mut new_paths: Vec<OuPath> = Vec::new();
                for path in ou_paths {
                    if !self.ou_paths.contains(path) && !new_paths.contains(path) {
                        new_paths.push(path.clone());
                    }
                }
                if new_paths.is_empty() {
                    return Ok(Decision::done(Vec::new()));
                }
                Ok(Decision::done(vec![
                    OuLinked {
                        ou_paths: new_paths,
                    }
                    .into(),
                ]))
            }
            C::UnlinkOu => {
                self.require_admin_or_staff(ctx, "unlink Google OUs")?;
                self.refuse_without_ou_link()?;
                let mut plan = self.plan(ctx);
                plan.events.push(
                    OuUnlinked {
                        ou_paths: self.ou_paths.clone(),
                    }
                    .into(),
                );
                // OU-6: every ou-sourced member goes, whatever their status.
                let mut removed = 0;
                for email in &self.ou_members {
                    plan.remove(email, RemovalReason::OuUnlinked);
                    removed += 1;
                }
                plan.promote_waitlisted();
                Ok(Decision {
                    events: plan.events,
                    outcome: Outcome::OuUnlinked { removed },
                })
            }
            C::SyncOu { entries } => {
                require_integration(ctx, "sync OUs")?;
                self.refuse_without_ou_link()?;
                self.refuse_if_expired(ctx.now)?;
                self.decide_ou_sync(entries, ctx)
            }
            C::ConfirmOuSync => {
                self.require_admin_or_staff(ctx, "confirm a held OU sync")?;
                self.refuse_without_ou_link()?;
                self.refuse_if_expired(ctx.now)?;
                let Some(held) = &self.held_sync else {
                    return Err(DomainError::FailedPrecondition(format!(
                        "license {} has no held OU sync to confirm",
                        self.id
                    )));
                };
                let mut plan = self.plan(ctx);
                plan.events.push(
                    OuSyncConfirmed {
                        entries_count: held.entries.len() as u64,
                    }
                    .into(),
                );
                let counts = plan.apply_ou_snapshot(&held.entries);
                plan.events.push(OuSynced { counts }.into());
                Ok(Decision {
                    events: plan.events,
                    outcome: Outcome::OuSync {
                        counts,
                        held: false,
                    },
                })
            }
            C::ClaimDomain { domain, dedicated } => {
                require_staff(ctx, "claim domains")?;
                let allowed = match self.license_type {
                    LicenseType::District => true,
                    LicenseType::School | LicenseType::Building => *dedicated,
                    LicenseType::Teacher | LicenseType::Pro | LicenseType::Work => false,
                };
                if !allowed {
                    return Err(DomainError::FailedPrecondition(format!(
                        "a {} license cannot claim a domain{}",
                        self.license_type,
                        if matches!(
                            self.license_type,
                            LicenseType::School | LicenseType::Building
                        ) {
                            " unless it owns the domain (dedicated: true)"
                        } else {
                            ""
                        }
                    )));
                }
                if !self.ou_paths.is_empty() {
                    return Err(DomainError::FailedPrecondition(format!(
                        "license {} is linked to Google OUs; an OU link and a domain claim exclude each other",
                        self.id
                    )));
                }
                if self.domains.contains(domain) {
                    return Err(DomainError::AlreadyExists(format!(
                        "the domain {domain} is already claimed"
                    )));
                }
                Ok(Decision::done(vec![
                    DomainClaimed {
                        domain: domain.clone(),
                        license: self.id.clone(),
                    }
                    .into(),
                ]))
            }
            C::ReleaseDomain { domain } => {
                require_staff(ctx, "release domains")?;
                if !self.domains.contains(domain) {
                    return Err(DomainError::FailedPrecondition(format!(
                        "license {} does not claim the domain {domain}",
                        self.id
                    )));
                }
                // DOM-5: members already added stay.
                Ok(Decision::done(vec![
                    DomainReleased {
                        domain: domain.clone(),
                        license: self.id.clone(),
                    }
                    .into(),
                ]))
            }
        }
    }

    fn require_pending_invite(&self, email: &Email) -> Result<(), DomainError> {
        match self.members.get(email) {
            Some(member) if member.status == Status::Invited => Ok(()),
            _ => Err(DomainError::FailedPrecondition(format!(
                "you have no pending invite on license {}",
                self.id
            ))),
        }
    }

    fn decide_add_users(
        &self,
        emails: &[Email],
        channel: AdminChannel,
        ctx: &Context,
    ) -> Result<Decision, DomainError> {
        self.require_admin_or_staff(ctx, "add users")?;
        self.refuse_if_expired(ctx.now)?;
        let source = match channel {
            AdminChannel::EmailList => Source::Email,
            AdminChannel::Csv => Source::Csv,
        };
        let mut summary = AddSummary::default();
        let mut newcomers: Vec<&Email> = Vec::new();
        let mut seen = HashSet::with_capacity(emails.len());
        for email in emails {
            // ADD-2: duplicates in one batch count once.
            if !seen.insert(email) {
                continue;
            }
            match self.members.get(email).map(|member| member.status) {
                // ADD-3: someone already holding a seat or waiting for one is unchanged.
                Some(Status::Accepted | Status::Invited | Status::Waitlisted) => {
                    summary.unchanged += 1;
                }
                // ADD-3, INV-4: a rejected or removed user starts over.
                Some(Status::Rejected) | None => newcomers.push(email),
            }
        }
        // SEAT-3: the whole batch fits or nothing of it is applied.
        let needed = newcomers.len() as u64;
        let free = self.seats_free();
        if needed > free {
            return Err(DomainError::ResourceExhausted(format!(
                "this batch needs {needed} seats but license {} has {free} free ({} seats, {} in use); nothing was added — remove users or ask for more seats",
                self.id,
                self.seats,
                self.users_count()
            )));
        }
        let mut plan = self.plan(ctx);
        // One event and one change per newcomer: sized once, a million-row import's lists
        // are not regrown (and briefly held twice) twenty times over.
        plan.events.reserve(newcomers.len());
        plan.changed.reserve(newcomers.len());
        for email in newcomers {
            // INV-1: staff add at once; a license admin adds at once only users of a
            // domain they are domain admin of, and invites everyone else.
            let at_once = match &ctx.actor {
                Actor::Staff => true,
                Actor::User(_) => ctx
                    .actor_domain_admin_of
                    .iter()
                    .any(|domain| domain.as_str() == email.domain()),
                Actor::System => false,
            };
            if at_once {
                plan.join(email, source, Role::Other, None);
                summary.added += 1;
            } else {
                plan.invite(email, source, Role::Other);
                summary.invited += 1;
            }
        }
        Ok(Decision {
            events: plan.events,
            outcome: Outcome::UsersAdded(summary),
        })
    }

    /// KEY-1 and LINK-1 after the secret matched.
    fn decide_secret_join(&self, source: Source, ctx: &Context) -> Result<Decision, DomainError> {
        let email = require_user(ctx, "redeem a license key or join link")?;
        self.refuse_if_expired(ctx.now)?;
        let mut plan = self.plan(ctx);
        let status = match plan.standing(email) {
            Some((Status::Accepted, _)) => Status::Accepted,
            Some((Status::Waitlisted, _)) => Status::Waitlisted,
            // An invitee already holds a seat, so joining by key needs no free one.
            Some((Status::Invited, _)) => {
                plan.join(email, source, Role::Other, None);
                Status::Accepted
            }
            Some((Status::Rejected, _)) | None => {
                plan.join_or_waitlist(email, source, Role::Other, None)
            }
        };
        Ok(Decision {
            events: plan.events,
            outcome: Outcome::Joined { status },
        })
    }

    fn decide_ou_sync(&self, entries: &[OuEntry], ctx: &Context) -> Result<Decision, DomainError> {
        let mut plan = self.plan(ctx);
        let counts = plan.apply_ou_snapshot(entries);
        let ou_members = self.ou_members.len() as u64;
        // OU-8: a directory outage or a half-read page looks like an empty or shrunken OU.
        // Such a sync is held, never applied, until a license admin confirms it.
        let hold_reason = if entries.is_empty() {
            Some("the directory reported no users at all".to_owned())
        } else if counts.removed * 100 > ou_members * OU_SYNC_HOLD_REMOVED_PERCENT_MAX
            && counts.removed > OU_SYNC_HOLD_REMOVED_PEOPLE_MAX
        {
            Some(format!(
                "the sync would remove {} of {ou_members} OU members, more than {OU_SYNC_HOLD_REMOVED_PERCENT_MAX}% and more than {OU_SYNC_HOLD_REMOVED_PEOPLE_MAX} people",
                counts.removed
            ))
        } else {
            None
        };
        if let Some(reason) = hold_reason {
            return Ok(Decision {
                events: vec![
                    OuSyncHeld {
                        entries: entries.to_vec(),
                        would: counts,
                        reason,
                    }
                    .into(),
                ],
                outcome: Outcome::OuSync {
                    counts: OuSyncCounts::default(),
                    held: true,
                },
            });
        }
        plan.events.push(OuSynced { counts }.into());
        Ok(Decision {
            events: plan.events,
            outcome: Outcome::OuSync {
                counts,
                held: false,
            },
        })
    }

    fn apply(&mut self, meta: &EventMeta, event: &Event) {
        match event {
            Event::LicenseIssued(_) => debug_assert!(false, "LicenseIssued twice for {}", self.id),
            Event::LicenseRenewed(e) => self.valid_until = e.valid_until,
            Event::SeatsChanged(e) => self.seats = e.seats,
            Event::LicenseAdminGranted(e) => {
                if !self.admins.contains(&e.email) {
                    self.admins.push(e.email.clone());
                }
            }
            Event::LicenseAdminRevoked(e) => self.admins.retain(|admin| admin != &e.email),
            Event::UserAdded(e) => {
                self.put_member(meta, &e.email, Status::Accepted, e.source, e.role)
            }
            Event::InviteSent(e) => {
                self.put_member(meta, &e.email, Status::Invited, e.source, e.role)
            }
            Event::UserWaitlisted(e) => {
                self.put_member(meta, &e.email, Status::Waitlisted, e.source, e.role)
            }
            Event::InviteAccepted(e) => self.change_status(&e.email, Status::Accepted),
            Event::InviteRejected(e) => self.change_status(&e.email, Status::Rejected),
            Event::UserPromoted(e) => self.change_status(&e.email, Status::Accepted),
            Event::UserRemoved(e) => self.remove_member(&e.email),
            Event::LicenseKeyRotated(e) => self.key = e.key.clone(),
            Event::JoinLinkRotated(e) => self.link = Some(e.link.clone()),
            Event::FeaturePermissionSet(e) => {
                let features = match e.role {
                    Some(role) => self.features_by_role.entry(role).or_default(),
                    None => &mut self.features,
                };
                features.insert(e.feature.clone(), e.enabled);
            }
            Event::AutoEnrollmentSet(e) => self.auto_enrollment = e.enabled,
            Event::OuLinked(e) => {
                for path in &e.ou_paths {
                    if !self.ou_paths.contains(path) {
                        self.ou_paths.push(path.clone());
                    }
                }
            }
            Event::OuUnlinked(_) => {
                self.ou_paths.clear();
                self.held_sync = None;
            }
            Event::OuSynced(_) | Event::OuSyncConfirmed(_) => self.held_sync = None,
            Event::OuSyncHeld(e) => {
                self.held_sync = Some(HeldSync {
                    entries: e.entries.clone(),
                    would: e.would,
                    reason: e.reason.clone(),
                    held_at: meta.at,
                });
            }
            Event::DomainClaimed(e) => {
                self.domains.insert(e.domain.clone());
            }
            Event::DomainReleased(e) => {
                self.domains.remove(&e.domain);
            }
            Event::DomainAdminGranted(_) | Event::DomainAdminRevoked(_) => {
                debug_assert!(false, "domain admin events belong to a domain's stream");
            }
        }
    }

    /// A member (re)starts with a status and a source: UserAdded, InviteSent, UserWaitlisted.
    fn put_member(
        &mut self,
        meta: &EventMeta,
        email: &Email,
        status: Status,
        source: Source,
        role: Role,
    ) {
        if let Some(previous) = self.members.get(email) {
            *self.counts.slot(previous.status) -= 1;
            if let Some(ticket) = previous.waitlist_ticket() {
                self.waitlist.remove(&ticket);
            }
        }
        let waitlist_ticket = (status == Status::Waitlisted).then(|| {
            let ticket = self.next_waitlist_ticket;
            self.next_waitlist_ticket += 1;
            self.waitlist.insert(ticket, email.clone());
            NonZeroU64::new(ticket + 1).expect("a ticket plus one is not zero")
        });
        *self.counts.slot(status) += 1;
        if source == Source::Ou {
            self.ou_members.insert(email.clone());
        } else {
            self.ou_members.remove(email);
        }
        self.former_members.remove(email);
        self.members.insert(
            email.clone(),
            Member {
                status,
                source,
                role,
                added_at: meta.at,
                added_by: meta.actor.clone(),
                waitlist_ticket,
            },
        );
    }

    /// An existing member changes status only: InviteAccepted, InviteRejected, UserPromoted.
    /// Source and role stay (SPEC §1: accepting or rejecting keeps the source; SEAT-4:
    /// promotion keeps it).
    fn change_status(&mut self, email: &Email, status: Status) {
        let Some(member) = self.members.get_mut(email) else {
            debug_assert!(false, "status change for a non-member");
            return;
        };
        *self.counts.slot(member.status) -= 1;
        *self.counts.slot(status) += 1;
        if let Some(ticket) = member.waitlist_ticket() {
            self.waitlist.remove(&ticket);
        }
        member.waitlist_ticket = None;
        member.status = status;
    }

    fn remove_member(&mut self, email: &Email) {
        let Some(member) = self.members.remove(email) else {
            debug_assert!(false, "removal of a non-member");
            return;
        };
        *self.counts.slot(member.status) -= 1;
        if let Some(ticket) = member.waitlist_ticket() {
            self.waitlist.remove(&ticket);
        }
        self.ou_members.remove(email);
        self.former_members.insert(email.clone());
    }
}

fn wrong_secret() -> DomainError {
    // KEY-1: the same answer for every wrong secret, naming no license.
    DomainError::NotFound("no license matches this key or link; check it and try again".into())
}

/// What an automatic join did to one user.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum AutomaticJoin {
    Added { returning: bool },
    Waitlisted,
    Unchanged(Status),
}

impl AutomaticJoin {
    fn status(self) -> Status {
        match self {
            Self::Added { .. } => Status::Accepted,
            Self::Waitlisted => Status::Waitlisted,
            Self::Unchanged(status) => status,
        }
    }

    fn count_into(self, summary: &mut AutomaticSummary) {
        match self {
            Self::Added { .. } => summary.added += 1,
            Self::Waitlisted => summary.waitlisted += 1,
            Self::Unchanged(_) => summary.unchanged += 1,
        }
    }
}

/// The members a decision has changed so far, over the untouched state. It tracks the seat
/// count as it will be, so every step of a batch sees the steps before it.
struct Plan<'a> {
    state: &'a LicenseState,
    seats: u32,
    promotions_allowed: bool,
    events: Vec<Event>,
    changed: HashMap<Email, Option<(Status, Source)>>,
    users_count: u64,
    /// The last ticket of the stored waitlist this plan has looked at: promotion walks the
    /// waitlist once, in order.
    waitlist_cursor: Option<u64>,
    planned_waitlist: VecDeque<Email>,
}

impl<'a> Plan<'a> {
    fn new(state: &'a LicenseState, seats: u32, promotions_allowed: bool) -> Self {
        Self {
            state,
            seats,
            promotions_allowed,
            events: Vec::new(),
            changed: HashMap::new(),
            users_count: state.users_count(),
            waitlist_cursor: None,
            planned_waitlist: VecDeque::new(),
        }
    }

    fn standing(&self, email: &Email) -> Option<(Status, Source)> {
        match self.changed.get(email) {
            Some(planned) => *planned,
            None => self
                .state
                .members
                .get(email)
                .map(|member| (member.status, member.source)),
        }
    }

    fn seats_free(&self) -> u64 {
        u64::from(self.seats).saturating_sub(self.users_count)
    }

    fn set_standing(
        &mut self,
        email: &Email,
        before: Option<(Status, Source)>,
        after: Option<(Status, Source)>,
    ) {
        let held_before = before.is_some_and(|(status, _)| status.holds_seat());
        let holds_after = after.is_some_and(|(status, _)| status.holds_seat());
        match (held_before, holds_after) {
            (false, true) => self.users_count += 1,
            (true, false) => self.users_count -= 1,
            _ => {}
        }
        self.changed.insert(email.clone(), after);
    }

    fn join(&mut self, email: &Email, source: Source, role: Role, ou_path: Option<OuPath>) {
        let before = self.standing(email);
        self.events.push(
            UserAdded {
                email: email.clone(),
                source,
                role,
                ou_path,
            }
            .into(),
        );
        self.set_standing(email, before, Some((Status::Accepted, source)));
    }

    fn invite(&mut self, email: &Email, source: Source, role: Role) {
        let before = self.standing(email);
        self.events.push(
            InviteSent {
                email: email.clone(),
                source,
                role,
            }
            .into(),
        );
        self.set_standing(email, before, Some((Status::Invited, source)));
    }

    fn remove(&mut self, email: &Email, reason: RemovalReason) {
        let before = self.standing(email);
        debug_assert!(before.is_some(), "removing a non-member");
        self.events.push(
            UserRemoved {
                email: email.clone(),
                reason,
            }
            .into(),
        );
        self.set_standing(email, before, None);
    }

    /// SEAT-4: an automatic source takes a free seat or joins the waitlist. Returns the
    /// status the user ends with.
    fn join_or_waitlist(
        &mut self,
        email: &Email,
        source: Source,
        role: Role,
        ou_path: Option<OuPath>,
    ) -> Status {
        // Nobody waits beside a free seat (promotion runs whenever seats free up and the
        // license is valid, and expired licenses take no one), so a free seat is the
        // newcomer's.
        if self.seats_free() > 0 {
            self.join(email, source, role, ou_path);
            Status::Accepted
        } else {
            let before = self.standing(email);
            self.events.push(
                UserWaitlisted {
                    email: email.clone(),
                    source,
                    role,
                    ou_path,
                }
                .into(),
            );
            self.set_standing(email, before, Some((Status::Waitlisted, source)));
            self.planned_waitlist.push_back(email.clone());
            Status::Waitlisted
        }
    }

    /// DOM-3, DOM-4, LMS-2, ROS-1, OU-3: only users who are not members join; members of
    /// any status are left as they are (SEAT-4: a waitlisted user added again is unchanged).
    fn join_automatic(
        &mut self,
        email: &Email,
        source: Source,
        role: Role,
        ou_path: Option<OuPath>,
    ) -> AutomaticJoin {
        if let Some((status, _)) = self.standing(email) {
            return AutomaticJoin::Unchanged(status);
        }
        let returning = self.state.former_members.contains(email);
        match self.join_or_waitlist(email, source, role, ou_path) {
            Status::Waitlisted => AutomaticJoin::Waitlisted,
            _ => AutomaticJoin::Added { returning },
        }
    }

    fn next_waitlisted(&mut self) -> Option<Email> {
        let start = match self.waitlist_cursor {
            Some(ticket) => Bound::Excluded(ticket),
            None => Bound::Unbounded,
        };
        for (ticket, email) in self.state.waitlist.range((start, Bound::Unbounded)) {
            self.waitlist_cursor = Some(*ticket);
            // A member this decision already changed has lost their stored place.
            if !self.changed.contains_key(email) {
                return Some(email.clone());
            }
        }
        while let Some(email) = self.planned_waitlist.pop_front() {
            if matches!(self.standing(&email), Some((Status::Waitlisted, _))) {
                return Some(email);
            }
        }
        None
    }

    /// SEAT-4: promote waitlisted users in waitlist order while seats are free, unless the
    /// license is expired (LIC-3).
    fn promote_waitlisted(&mut self) {
        if !self.promotions_allowed {
            return;
        }
        while self.seats_free() > 0 {
            let Some(email) = self.next_waitlisted() else {
                break;
            };
            let before = self.standing(&email);
            let source = before.map_or(Source::Email, |(_, source)| source);
            self.events.push(
                UserPromoted {
                    email: email.clone(),
                }
                .into(),
            );
            self.set_standing(&email, before, Some((Status::Accepted, source)));
        }
    }

    /// OU-3..OU-5: removals first (their seats go to those already waiting), then every
    /// active listed user who is not a member joins. Returns the counts of OU-7.
    fn apply_ou_snapshot(&mut self, entries: &[OuEntry]) -> OuSyncCounts {
        let mut counts = OuSyncCounts::default();
        let mut active: HashMap<&Email, &OuEntry> = HashMap::with_capacity(entries.len());
        for entry in entries {
            if !entry.suspended {
                active.entry(&entry.email).or_insert(entry);
            }
        }
        for email in &self.state.ou_members {
            if !active.contains_key(email) {
                self.remove(email, RemovalReason::OuSync);
                counts.removed += 1;
            }
        }
        self.promote_waitlisted();
        let mut seen: HashSet<&Email> = HashSet::with_capacity(entries.len());
        for entry in entries {
            if !seen.insert(&entry.email) {
                continue;
            }
            match active.get(&entry.email) {
                Some(active_entry) => {
                    let joined = self.join_automatic(
                        &entry.email,
                        Source::Ou,
                        active_entry.role,
                        Some(active_entry.ou_path.clone()),
                    );
                    match joined {
                        AutomaticJoin::Added { returning: true } => counts.readded += 1,
                        AutomaticJoin::Added { returning: false } => counts.added += 1,
                        AutomaticJoin::Waitlisted => counts.waitlisted += 1,
                        AutomaticJoin::Unchanged(_) => {}
                    }
                }
                None => {
                    // A suspended user is never added; one that was an OU member has just
                    // been counted as removed instead.
                    if !self.state.ou_members.contains(&entry.email) {
                        counts.skipped_suspended += 1;
                    }
                }
            }
        }
        counts
    }
}

#[cfg(test)]
mod tests {
    /// The aggregate keeps one `Member` per member (a million for a large license), so its
    /// size is watched: a field that grows it past 48 bytes should be a deliberate choice,
    /// measured against workload 3's memory target (BENCHMARKS.md).
    #[test]
    fn a_member_fits_in_48_bytes() {
        assert!(
            std::mem::size_of::<super::Member>() <= 48,
            "Member is {} bytes",
            std::mem::size_of::<super::Member>()
        );
    }
}

/// A member to put in tables under test, different for each `seed`.
#[cfg(test)]
pub(crate) mod tests_support {
    use std::num::NonZeroU64;

    use super::Member;
    use crate::values::{Actor, Role, Source, Status};

    pub(crate) fn member(seed: u64) -> Member {
        Member {
            status: [Status::Accepted, Status::Invited, Status::Waitlisted][seed as usize % 3],
            source: Source::Csv,
            role: Role::Other,
            added_at: chrono::DateTime::from_timestamp(i64::try_from(seed).unwrap_or(0), 0)
                .expect("a time in range"),
            added_by: Actor::Staff,
            waitlist_ticket: NonZeroU64::new(seed + 1),
        }
    }
}
