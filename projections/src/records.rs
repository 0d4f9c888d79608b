//! The values stored under the keys of `keys.rs`: MessagePack with each record's fields as
//! an array, in declaration order (projection schema 7). A later schema can still add an
//! optional field at the end (`#[serde(default)]`: an older, shorter array decodes with
//! the default). Any other change bumps `PROJECTION_SCHEMA_VERSION`, which rebuilds every
//! read model from the log; the read models are derived, so their format is ours to change.
//!
//! Field names in every record (schema 6 and before) were about half of a member record's
//! bytes, and writing and matching them a sixth of a rebuild's writer thread (BENCHMARKS.md,
//! session 15).

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};
use domain::{
    Actor, DomainName, Email, FeatureName, LicenseType, OuPath, Role, Secret, Source, Status,
};
use serde::{Deserialize, Serialize, de::DeserializeOwned};

use crate::ProjectionError;

/// A record's timestamps as (seconds, nanoseconds) since the Unix epoch. chrono's own
/// encoding is an RFC 3339 string, formatted and parsed through `fmt` for every record,
/// which was a third of encoding a member record (projection schema 6).
mod timestamp {
    use chrono::{DateTime, Utc};
    use serde::{Deserialize, Deserializer, Serialize, Serializer, de::Error as _};

    pub fn serialize<S: Serializer>(at: &DateTime<Utc>, serializer: S) -> Result<S::Ok, S::Error> {
        (at.timestamp(), at.timestamp_subsec_nanos()).serialize(serializer)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<DateTime<Utc>, D::Error> {
        let (seconds, nanoseconds): (i64, u32) = Deserialize::deserialize(deserializer)?;
        DateTime::from_timestamp(seconds, nanoseconds)
            .ok_or_else(|| D::Error::custom("a timestamp out of chrono's range"))
    }
}

/// How many members stand in each status (SEAT-1).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
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

    pub(crate) fn slot(&mut self, status: Status) -> &mut u64 {
        match status {
            Status::Accepted => &mut self.accepted,
            Status::Invited => &mut self.invited,
            Status::Rejected => &mut self.rejected,
            Status::Waitlisted => &mut self.waitlisted,
        }
    }
}

/// One license as Q-1 shows it, kept up to date by every event of its stream.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct LicenseRecord {
    pub license_type: LicenseType,
    pub seats: u32,
    #[serde(with = "timestamp")]
    pub valid_from: DateTime<Utc>,
    #[serde(with = "timestamp")]
    pub valid_until: DateTime<Utc>,
    pub admins: Vec<Email>,
    pub domains: BTreeSet<DomainName>,
    pub key: Secret,
    pub link: Option<Secret>,
    pub auto_enrollment: bool,
    pub features: BTreeMap<FeatureName, bool>,
    pub features_by_role: BTreeMap<Role, BTreeMap<FeatureName, bool>>,
    pub ou_paths: Vec<OuPath>,
    pub ou_sync_held: bool,
    pub counts: StatusCounts,
    #[serde(with = "timestamp")]
    pub issued_at: DateTime<Utc>,
    /// The latest day usage was counted for, so that a clock that steps back between two
    /// appends never rewrites an earlier day (see docs/projections.md).
    pub usage_last_day: Option<i64>,
    /// the usage of `usage_last_day`. It lives here, in the record every batch of the
    /// license writes anyway, until a later day starts; then it moves to its own usage key.
    /// That saves a sled write and a read per batch (schema 4, BENCHMARKS.md session 8).
    #[serde(default)]
    pub usage_open: Option<UsageRecord>,
    /// the license's last history block, 1 to `HISTORY_BLOCK_POSITIONS_MAX` positions.
    /// A full block moves to its own key when the next position comes, for the same reason
    /// as `usage_open`.
    #[serde(default)]
    pub history_open: Vec<u64>,
}

/// One member of one license (SPEC §1).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct MemberRecord {
    pub status: Status,
    pub source: Source,
    pub role: Role,
    #[serde(with = "timestamp")]
    pub added_at: DateTime<Utc>,
    pub added_by: Actor,
    #[serde(with = "timestamp")]
    pub updated_at: DateTime<Utc>,
    pub ou_path: Option<OuPath>,
    /// positions of this membership's latest events, oldest first, that are not yet
    /// under the user's history keys. They move there when the membership ends or when
    /// `MEMBER_HISTORY_POSITIONS_MAX` of them gather, so that an event of a member costs
    /// no sled write of its own for the user's history (schema 4).
    #[serde(default)]
    pub history: Vec<u64>,
}

/// One day of one license's usage. Only days on which someone came to hold or
/// stopped holding a seat have a record; a day without one has the users_count of the
/// latest record before it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct UsageRecord {
    /// users_count after the day's last event.
    pub users_count: u64,
    /// By `Source::ALL` index.
    pub added: Vec<u64>,
    pub removed: Vec<u64>,
}

impl UsageRecord {
    pub fn count(counts: &mut Vec<u64>, source: Source) {
        if counts.len() < Source::ALL.len() {
            counts.resize(Source::ALL.len(), 0);
        }
        counts[source_index(source)] += 1;
    }
}

pub(crate) fn source_index(source: Source) -> usize {
    Source::ALL
        .iter()
        .position(|candidate| *candidate == source)
        .expect("Source::ALL lists every source")
}

/// The bytes a thread's scratch buffer for `encode` keeps between records; a rare larger
/// record (a license with many admins or OU paths) does not keep its size.
const ENCODE_SCRATCH_BYTES_KEPT: usize = 4096;

thread_local! {
    static ENCODE_SCRATCH: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

pub(crate) fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    // A record encodes into a reused buffer and is then copied out at its exact size:
    // encoding straight into a new Vec grew it four or five times per member record, and a
    // Vec of a guessed size would waste memory in every record a rebuild's chunk holds.
    ENCODE_SCRATCH.with_borrow_mut(|scratch| {
        scratch.clear();
        // Records are plain data (strings, numbers, enums, timestamps), for which
        // MessagePack encoding into a Vec cannot fail.
        rmp_serde::encode::write(scratch, value).expect("records always encode to MessagePack");
        let encoded = scratch.to_vec();
        if scratch.capacity() > ENCODE_SCRATCH_BYTES_KEPT {
            *scratch = Vec::new();
        }
        encoded
    })
}

pub(crate) fn decode<T: DeserializeOwned>(
    what: &'static str,
    bytes: &[u8],
) -> Result<T, ProjectionError> {
    rmp_serde::from_slice(bytes).map_err(|error| ProjectionError::Corrupt {
        what,
        reason: error.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use domain::Actor;

    #[test]
    fn timestamps_keep_every_nanosecond_across_chronos_whole_range() {
        // AUD-5: a record decodes to exactly what was encoded, or a rebuild's digests
        // would drift from the live ones.
        for at in [
            DateTime::<Utc>::MIN_UTC,
            DateTime::<Utc>::MAX_UTC,
            DateTime::from_timestamp(1_790_000_000, 123_456_789).unwrap(),
            DateTime::from_timestamp(-1, 999_999_999).unwrap(),
        ] {
            let record = MemberRecord {
                status: Status::Invited,
                source: Source::Email,
                role: Role::Teacher,
                added_at: at,
                added_by: Actor::Staff,
                updated_at: at,
                ou_path: None,
                history: vec![7],
            };
            let decoded: MemberRecord = decode("member record", &encode(&record)).unwrap();
            assert_eq!(decoded, record);
        }
        // A stored timestamp out of range is a decoding error, not a panic.
        let out_of_range = rmp_serde::to_vec(&(i64::MAX, 0u32)).unwrap();
        let error = timestamp::deserialize(&mut rmp_serde::Deserializer::new(&out_of_range[..]))
            .unwrap_err();
        assert!(
            error.to_string().contains("out of chrono's range"),
            "{error}"
        );
    }

    #[test]
    fn records_are_arrays_that_a_later_optional_field_can_extend() {
        // AUD-6: a record is its fields in order without their names, and a field added at
        // the end with a default still reads the shorter arrays written before it.
        let at = DateTime::from_timestamp(1_790_000_000, 0).unwrap();
        let record = MemberRecord {
            status: Status::Accepted,
            source: Source::Csv,
            role: Role::Student,
            added_at: at,
            added_by: Actor::Staff,
            updated_at: at,
            ou_path: None,
            history: Vec::new(),
        };
        let encoded = encode(&record);
        assert_eq!(
            encoded[0],
            0x90 | 8,
            "a fixarray of the record's eight fields"
        );
        assert!(!encoded.windows(6).any(|window| window == b"status"));
        let without_history = rmp_serde::to_vec(&(
            Status::Accepted,
            Source::Csv,
            Role::Student,
            (at.timestamp(), 0u32),
            Actor::Staff,
            (at.timestamp(), 0u32),
            Option::<OuPath>::None,
        ))
        .unwrap();
        let decoded: MemberRecord = decode("member record", &without_history).unwrap();
        assert_eq!(decoded, record);
    }
}
