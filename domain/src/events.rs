//! Every event of AUD-2, with its payload. An event is stored as its type name, a schema
//! version and the MessagePack encoding of its payload (AUD-2); the envelope around it (ids,
//! stream, revision, position, time, actor, hashes) belongs to the ledger.
//!
//! Payloads are encoded with field names (`rmp_serde::to_vec_named`) so that a later schema
//! can add optional fields without breaking old events. A change that cannot be read by the
//! old decoder gets a new schema version and an upcaster in `decode`; the golden file in
//! `tests/golden/` fails CI when an old event stops decoding.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize, de::DeserializeOwned};

use crate::values::{
    Actor, DomainName, Email, FeatureName, LicenseId, LicenseType, OuPath, Role, Secret, Source,
};

/// The schema version every event type has today. Each type carries its own version in the
/// envelope, so one type can move to version 2 while the others stay at 1.
pub const EVENT_SCHEMA_VERSION: u16 = 1;

/// Who caused an event and when: the parts of the envelope that `apply` needs (a member's
/// `added_at` and `added_by`). The ledger stores them in the envelope, not in the payload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EventMeta {
    pub at: DateTime<Utc>,
    pub actor: Actor,
}

/// Why a member was removed. Auditors read it in the history; the projections use it to
/// tell an admin's removal from a directory sync's.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RemovalReason {
    ByAdmin,
    OuSync,
    OuUnlinked,
}

/// The counts of one OU sync (OU-7).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OuSyncCounts {
    pub added: u64,
    pub removed: u64,
    pub readded: u64,
    pub skipped_suspended: u64,
    pub waitlisted: u64,
}

/// One user of a linked OU as the directory reported it (OU-3).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OuEntry {
    pub email: Email,
    pub ou_path: OuPath,
    pub role: Role,
    pub suspended: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LicenseIssued {
    pub license: LicenseId,
    pub license_type: LicenseType,
    pub seats: u32,
    pub valid_from: DateTime<Utc>,
    pub valid_until: DateTime<Utc>,
    pub admins: Vec<Email>,
    pub key: Secret,
    pub link: Option<Secret>,
    pub auto_enrollment: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LicenseRenewed {
    pub valid_until: DateTime<Utc>,
    pub previous_valid_until: DateTime<Utc>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeatsChanged {
    pub seats: u32,
    pub previous_seats: u32,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LicenseAdminGranted {
    pub email: Email,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LicenseAdminRevoked {
    pub email: Email,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DomainAdminGranted {
    pub domain: DomainName,
    pub email: Email,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DomainAdminRevoked {
    pub domain: DomainName,
    pub email: Email,
}

/// The user joined at once: status `accepted`, from any earlier state (none, invited,
/// rejected, removed).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserAdded {
    pub email: Email,
    pub source: Source,
    pub role: Role,
    pub ou_path: Option<OuPath>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InviteSent {
    pub email: Email,
    pub source: Source,
    pub role: Role,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InviteAccepted {
    pub email: Email,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InviteRejected {
    pub email: Email,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserWaitlisted {
    pub email: Email,
    pub source: Source,
    pub role: Role,
    pub ou_path: Option<OuPath>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserPromoted {
    pub email: Email,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserRemoved {
    pub email: Email,
    pub reason: RemovalReason,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LicenseKeyRotated {
    pub key: Secret,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinLinkRotated {
    pub link: Secret,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FeaturePermissionSet {
    pub feature: FeatureName,
    pub enabled: bool,
    pub role: Option<Role>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AutoEnrollmentSet {
    pub enabled: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OuLinked {
    pub ou_paths: Vec<OuPath>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OuUnlinked {
    pub ou_paths: Vec<OuPath>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OuSynced {
    pub counts: OuSyncCounts,
}

/// A sync that tripped the safety hold (OU-8). It keeps the whole snapshot so that
/// `ConfirmOuSync` can apply exactly what the directory reported.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OuSyncHeld {
    pub entries: Vec<OuEntry>,
    pub would: OuSyncCounts,
    pub reason: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OuSyncConfirmed {
    pub entries_count: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DomainClaimed {
    pub domain: DomainName,
    pub license: LicenseId,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DomainReleased {
    pub domain: DomainName,
    pub license: LicenseId,
}

/// Why stored bytes could not be turned back into an event.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("unknown event type '{0}'")]
    UnknownType(String),
    #[error("event type '{event_type}' has no schema version {version}")]
    UnsupportedVersion { event_type: String, version: u16 },
    #[error("event type '{event_type}' payload does not decode: {reason}")]
    Payload { event_type: String, reason: String },
}

fn encode_payload<T: Serialize>(payload: &T) -> Vec<u8> {
    // Every payload is plain data (strings, numbers, enums, timestamps), for which
    // MessagePack encoding into a Vec cannot fail.
    rmp_serde::to_vec_named(payload).expect("event payloads always encode to MessagePack")
}

fn decode_payload<T: DeserializeOwned>(
    event_type: &str,
    version: u16,
    bytes: &[u8],
) -> Result<T, DecodeError> {
    if version != EVENT_SCHEMA_VERSION {
        return Err(DecodeError::UnsupportedVersion {
            event_type: event_type.to_owned(),
            version,
        });
    }
    rmp_serde::from_slice(bytes).map_err(|error| DecodeError::Payload {
        event_type: event_type.to_owned(),
        reason: error.to_string(),
    })
}

macro_rules! event_enum {
    ($($variant:ident: $held:ty),+ $(,)?) => {
        /// Every event the ledger records. The variant name is the stored type name. The
        /// two payloads much larger than the rest are boxed, so that an `Event` takes 64
        /// bytes, not 128: a million-row import's decision holds a million of them (issue 7).
        /// Boxing changes nothing stored: a box encodes as its contents.
        #[derive(Clone, Debug, PartialEq, Eq)]
        pub enum Event {
            $($variant($held)),+
        }

        impl Event {
            /// Every type name, for filters and for checks that each one has a golden sample.
            pub const TYPE_NAMES: &'static [&'static str] = &[$(stringify!($variant)),+];

            pub fn type_name(&self) -> &'static str {
                match self {
                    $(Self::$variant(_) => stringify!($variant)),+
                }
            }

            pub fn schema_version(&self) -> u16 {
                EVENT_SCHEMA_VERSION
            }

            /// The MessagePack payload stored in the envelope.
            pub fn encode(&self) -> Vec<u8> {
                match self {
                    $(Self::$variant(payload) => encode_payload(payload)),+
                }
            }

            pub fn decode(event_type: &str, version: u16, bytes: &[u8]) -> Result<Self, DecodeError> {
                match event_type {
                    $(stringify!($variant) => decode_payload::<$variant>(event_type, version, bytes)
                        .map(|payload| Self::$variant(payload.into())),)+
                    other => Err(DecodeError::UnknownType(other.chars().take(64).collect())),
                }
            }
        }

        $(
            impl From<$variant> for Event {
                fn from(payload: $variant) -> Self {
                    Self::$variant(payload.into())
                }
            }
        )+
    };
}

event_enum!(
    LicenseIssued: Box<LicenseIssued>,
    LicenseRenewed: LicenseRenewed,
    SeatsChanged: SeatsChanged,
    LicenseAdminGranted: LicenseAdminGranted,
    LicenseAdminRevoked: LicenseAdminRevoked,
    DomainAdminGranted: DomainAdminGranted,
    DomainAdminRevoked: DomainAdminRevoked,
    UserAdded: UserAdded,
    InviteSent: InviteSent,
    InviteAccepted: InviteAccepted,
    InviteRejected: InviteRejected,
    UserWaitlisted: UserWaitlisted,
    UserPromoted: UserPromoted,
    UserRemoved: UserRemoved,
    LicenseKeyRotated: LicenseKeyRotated,
    JoinLinkRotated: JoinLinkRotated,
    FeaturePermissionSet: FeaturePermissionSet,
    AutoEnrollmentSet: AutoEnrollmentSet,
    OuLinked: OuLinked,
    OuUnlinked: OuUnlinked,
    OuSynced: OuSynced,
    OuSyncHeld: Box<OuSyncHeld>,
    OuSyncConfirmed: OuSyncConfirmed,
    DomainClaimed: DomainClaimed,
    DomainReleased: DomainReleased,
);

// A decision of a million-row import holds a million events: a new payload larger than
// `UserAdded` must be boxed like `LicenseIssued`, or every event grows with it.
const _: () = assert!(std::mem::size_of::<Event>() <= 64);

impl Event {
    /// The member an event is about, for the history by user.
    pub fn member_email(&self) -> Option<&Email> {
        match self {
            Self::UserAdded(e) => Some(&e.email),
            Self::InviteSent(e) => Some(&e.email),
            Self::InviteAccepted(e) => Some(&e.email),
            Self::InviteRejected(e) => Some(&e.email),
            Self::UserWaitlisted(e) => Some(&e.email),
            Self::UserPromoted(e) => Some(&e.email),
            Self::UserRemoved(e) => Some(&e.email),
            Self::LicenseAdminGranted(e) => Some(&e.email),
            Self::LicenseAdminRevoked(e) => Some(&e.email),
            Self::DomainAdminGranted(e) => Some(&e.email),
            Self::DomainAdminRevoked(e) => Some(&e.email),
            _ => None,
        }
    }
}
