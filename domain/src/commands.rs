//! Commands, already parsed into value types, and what deciding them answers besides the
//! events. Turning raw requests into these types is where INVALID_ARGUMENT comes from
//! (ERR-1 puts it before every other refusal); the aggregates decide the rest.

use std::collections::BTreeSet;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::events::{Event, OuEntry, OuSyncCounts};
use crate::values::{
    Actor, DomainName, Email, FeatureName, LicenseId, LicenseType, Lms, OuPath, Role, Secret,
    Status,
};

/// Everything a decision may know besides the aggregate's own state. The server fills it in;
/// tests write it by hand.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Context {
    pub now: DateTime<Utc>,
    pub actor: Actor,
    /// The domains the acting user is a domain admin of (INV-1). Empty for staff and system.
    pub actor_domain_admin_of: BTreeSet<DomainName>,
}

impl Context {
    pub fn new(now: DateTime<Utc>, actor: Actor) -> Self {
        Self {
            now,
            actor,
            actor_domain_admin_of: BTreeSet::new(),
        }
    }

    pub fn with_domain_admin_of(mut self, domains: impl IntoIterator<Item = DomainName>) -> Self {
        self.actor_domain_admin_of.extend(domains);
        self
    }
}

/// How an admin batch arrived: both are `Source::Email` or `Source::Csv` on the members.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AdminChannel {
    EmailList,
    Csv,
}

/// An account a domain scan found (DOM-4).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScannedAccount {
    pub email: Email,
    pub role: Role,
}

/// A command to a license's aggregate (its stream is `license-<id>`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LicenseCommand {
    /// LIC-1. `key` and `link` are fresh random secrets made by the caller; `link` is
    /// dropped for types without a join link.
    Issue {
        license: LicenseId,
        license_type: LicenseType,
        seats: u32,
        valid_from: DateTime<Utc>,
        valid_until: DateTime<Utc>,
        admins: Vec<Email>,
        key: Secret,
        link: Secret,
    },
    Renew {
        valid_until: DateTime<Utc>,
    },
    ChangeSeats {
        seats: u32,
    },
    GrantAdmin {
        email: Email,
    },
    RevokeAdmin {
        email: Email,
    },
    /// ADD-1, CSV-1 mode `add`: the valid entries of the batch, in order, duplicates allowed.
    AddUsers {
        emails: Vec<Email>,
        channel: AdminChannel,
    },
    /// REM-1, CSV-1 mode `remove`.
    RemoveUsers {
        emails: Vec<Email>,
    },
    AcceptInvite,
    RejectInvite,
    RedeemKey {
        key: Secret,
    },
    JoinViaLink {
        token: Secret,
    },
    /// DOM-3: the server sends it to the license that claims the user's domain.
    SignUp {
        email: Email,
        role: Role,
    },
    /// DOM-4.
    ScanDomain {
        domain: DomainName,
        accounts: Vec<ScannedAccount>,
    },
    /// LMS-2: the server sends it to the teacher's chosen license (see
    /// `License::auto_enrollment_since`).
    AssignmentOpened {
        teacher: Email,
        student: Email,
        lms: Lms,
        kami_assignment: bool,
    },
    /// ROS-1.
    SyncRoster {
        course: String,
        students: Vec<Email>,
    },
    RotateKey {
        key: Secret,
    },
    RotateLink {
        link: Secret,
    },
    SetFeature {
        feature: FeatureName,
        enabled: bool,
        role: Option<Role>,
    },
    SetAutoEnrollment {
        enabled: bool,
    },
    LinkOu {
        ou_paths: Vec<OuPath>,
        google_admin: bool,
    },
    UnlinkOu,
    SyncOu {
        entries: Vec<OuEntry>,
    },
    ConfirmOuSync,
    ClaimDomain {
        domain: DomainName,
        dedicated: bool,
    },
    ReleaseDomain {
        domain: DomainName,
    },
}

/// A command to an email domain's aggregate (its stream is `domain-<name>`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DomainCommand {
    GrantAdmin { email: Email },
    RevokeAdmin { email: Email },
    Claim { license: LicenseId },
    Release { license: LicenseId },
}

/// ADD-1 and CSV `add` answer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AddSummary {
    pub added: u64,
    pub invited: u64,
    pub unchanged: u64,
}

/// REM-1 and CSV `remove` answer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemoveSummary {
    pub removed: u64,
    pub not_found: u64,
    pub will_return: u64,
}

/// Domain scans and roster syncs answer these counts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AutomaticSummary {
    pub added: u64,
    pub waitlisted: u64,
    pub unchanged: u64,
}

/// What a decision answers besides its events. Serializable because the server keeps it
/// with the command's append, for a retry of the command to get it back (AUD-4).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    /// The command did what it said; nothing more to report.
    Done,
    UsersAdded(AddSummary),
    UsersRemoved(RemoveSummary),
    /// A single user came through an automatic source (key, link, sign-up, LMS) and now
    /// stands with this status on the license (also when nothing changed).
    Joined {
        status: Status,
    },
    /// A sign-up or assignment that concerns no license (no claim, regular assignment,
    /// auto-enrollment off, expired): the answer names no license.
    Skipped,
    Automatic(AutomaticSummary),
    OuSync {
        counts: OuSyncCounts,
        held: bool,
    },
    OuUnlinked {
        removed: u64,
    },
}

/// The result of `handle`: the events to append, in order, and the answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    pub events: Vec<Event>,
    pub outcome: Outcome,
}

impl Decision {
    pub fn done(events: Vec<Event>) -> Self {
        Self {
            events,
            outcome: Outcome::Done,
        }
    }
}
