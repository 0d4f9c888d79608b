//! Folding a batch of events into one generation. The whole batch is computed in memory
//! over the stored state (the projector is the only writer, so nothing changes underneath)
//! and then written with one `Tree::apply_batch` that also carries the checkpoint (AUD-6).
//! The fold mirrors `domain::License::apply`, so the read models agree with the aggregate.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::sync::Arc;

use rustc_hash::{FxHashMap, FxHashSet};

use chrono::{DateTime, Utc};
use domain::events::Event;
use domain::{Actor, DomainName, Email, LicenseId, Role, Secret, Source, Status};
use sha2::{Digest as _, Sha256};

use crate::keys::{self, *};
use crate::packs;
use crate::records::{LicenseRecord, MemberRecord, StatusCounts, UsageRecord, decode, encode};
use crate::{
    HISTORY_BLOCK_POSITIONS_MAX, MEMBER_HISTORY_POSITIONS_MAX, ProjectedEvent, ProjectionError,
};

/// The stream an event belongs to, parsed from its name.
pub(crate) enum StreamName {
    License(LicenseId),
    Domain(DomainName),
}

impl StreamName {
    pub(crate) fn parse(stream: &str) -> Result<Self, ProjectionError> {
        let unknown = || ProjectionError::UnknownStream(stream.chars().take(80).collect());
        if let Some(id) = stream.strip_prefix("license-") {
            LicenseId::parse(id)
                .map(Self::License)
                .map_err(|_| unknown())
        } else if let Some(name) = stream.strip_prefix("domain-") {
            DomainName::parse(name)
                .map(Self::Domain)
                .map_err(|_| unknown())
        } else {
            Err(unknown())
        }
    }
}

/// sha256 of a secret: the lookups keep the hash, never the secret (KEY-1, LINK-1).
pub(crate) fn secret_hash(secret: &Secret) -> [u8; 32] {
    Sha256::digest(secret.expose().as_bytes()).into()
}

/// Seconds (sign bit flipped) and nanoseconds, big-endian: byte order is time order.
pub(crate) fn time_bytes(at: DateTime<Utc>) -> [u8; 12] {
    let mut bytes = [0u8; 12];
    bytes[..8].copy_from_slice(&((at.timestamp() as u64) ^ (1 << 63)).to_be_bytes());
    bytes[8..].copy_from_slice(&at.timestamp_subsec_nanos().to_be_bytes());
    bytes
}

pub(crate) fn day_of(at: DateTime<Utc>) -> i64 {
    at.timestamp().div_euclid(86_400)
}

/// A member came, went, or changed a column the in-memory member lists keep (`cache`):
/// those lists follow.
pub(crate) struct MembershipChange {
    pub license: String,
    pub email: String,
    /// The member's columns after the change; `None` when they are no longer a member.
    pub after: Option<MemberColumns>,
}

/// What the in-memory member lists keep of a member: the columns Q-2 sorts and filters by.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct MemberColumns {
    pub status: Status,
    pub source: Source,
    pub role: Role,
    /// `time_bytes` of `added_at`.
    pub added_at: [u8; 12],
    /// The actor's display string.
    pub added_by: String,
}

impl MemberColumns {
    pub(crate) fn of(member: &MemberRecord) -> Self {
        Self {
            status: member.status,
            source: member.source,
            role: member.role,
            added_at: time_bytes(member.added_at),
            added_by: member.added_by.to_string(),
        }
    }
}

/// Whether a change moves what the in-memory member lists keep: presence or a column.
fn cached_columns_differ(before: Option<&MemberRecord>, after: Option<&MemberRecord>) -> bool {
    match (before, after) {
        (None, None) => false,
        (Some(before), Some(after)) => {
            before.status != after.status
                || before.source != after.source
                || before.role != after.role
                || before.added_at != after.added_at
                || before.added_by != after.added_by
        }
        _ => true,
    }
}

/// Folds events over the stored state of one generation: every key the events change is
/// kept in memory with its latest value, so a key changed many times is written once. The
/// live projector folds one batch; a rebuild folds a whole chunk of many batches
/// (`RebuildBudget`), which coalesces far more.
pub(crate) struct BatchApplier {
    tree: sled::Tree,
    /// The generation's packs (`packs`), oldest first: where a rebuild left its members.
    packs: packs::PackIds,
    /// The latest value of every key the fold changed (`None`: removed); sorted when the
    /// fold finishes.
    writes: Writes,
    /// Decoded license records touched by the batch; `None` for one that does not exist.
    licenses: HashMap<String, Option<LicenseRecord>>,
    /// Members touched by the fold, by their member key.
    members: FxHashMap<Vec<u8>, MemberEntry>,
    /// Member changes for the in-memory member lists; not kept when nobody queries the
    /// generation yet (a rebuild), where they would only cost memory.
    changes: Option<Vec<MembershipChange>>,
    /// Keys of the packed read models that a live pack must not take: the member record
    /// and user -> license keys of members the plain layer has (`packs::Lookup::plain`),
    /// whose older plain key would hide the pack's newer entry, and the user history keys
    /// such a member's record sheds, which must become visible with the record.
    kept_plain: FxHashSet<Vec<u8>>,
    /// An upper estimate of the keys this fold writes as plain keys when it writes a live
    /// pack: the keys of the read models packs do not hold, and two per member the plain
    /// layer has.
    plain_writes: usize,
    /// What the fold learnt of the plain layer's member records, by license (the member
    /// keys' scope, `scope(PREFIX_MEMBER, license)`).
    plain_members: FxHashMap<Vec<u8>, PlainMembers>,
    /// How many events were folded.
    events: usize,
    /// An estimate of the memory the fold holds, for a rebuild's chunk budget.
    held_bytes: usize,
    /// A rebuild's previous chunk while a writer thread stores it (`Rebuild`): the fold
    /// reads what that chunk changed from here, because the store does not have all of it
    /// yet. `None` once the chunk is stored, and always in the live projector.
    previous: Option<Arc<FoldedChunk>>,
}

/// How many entries a fold's maps hold (`BatchApplier::sizes`).
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct FoldSizes {
    members: usize,
    writes: usize,
}

/// What a rebuild's finished chunk changed, decoded, kept for the next chunk's fold while
/// a writer thread encodes and stores it (`BatchApplier::finish_chunk`).
pub(crate) struct FoldedChunk {
    licenses: HashMap<String, Option<LicenseRecord>>,
    members: FxHashMap<Vec<u8>, MemberEntry>,
    /// The chunk's writes of the plain keys a fold reads back besides license records
    /// (`READ_BACK_PREFIXES`).
    read_back: FxHashMap<Vec<u8>, Option<Vec<u8>>>,
}

/// The prefixes of the plain keys other than license records that a fold reads
/// (`BatchApplier::raw`): a release reads the domain's claim.
const READ_BACK_PREFIXES: [u8; 1] = [PREFIX_CLAIM];

impl FoldedChunk {
    /// Every key the chunk changed with its new value (`None`: removed), in key order:
    /// `writes` (the fold's own) with the license and member records encoded.
    pub(crate) fn sorted_writes(&self, writes: Writes) -> Vec<(Vec<u8>, Option<Vec<u8>>)> {
        // License and member record keys are never among a fold's own writes (they are
        // written only here and by `into_parts`), so the three lists simply go together;
        // the order check below would catch a key twice.
        let mut sorted: Vec<(Vec<u8>, Option<Vec<u8>>)> =
            Vec::with_capacity(writes.len() + self.licenses.len() + self.members.len());
        sorted.extend(writes);
        for (id, record) in &self.licenses {
            if let Some(record) = record {
                sorted.push((single(PREFIX_LICENSE, id.as_bytes()), Some(encode(record))));
            }
        }
        for (key, member) in &self.members {
            let Some(writes) = member_writes(key, member) else {
                continue;
            };
            for (key, write) in writes {
                match write {
                    MemberWrite::Forget => {}
                    MemberWrite::Put(value) => sorted.push((key, Some(value))),
                    MemberWrite::Delete => sorted.push((key, None)),
                }
            }
        }
        sorted.sort_unstable_by(|left, right| left.0.cmp(&right.0));
        assert!(
            sorted.windows(2).all(|pair| pair[0].0 < pair[1].0),
            "a chunk writes each key once"
        );
        sorted
    }
}

/// What a finished fold writes for one member's record key.
enum MemberWrite {
    Put(Vec<u8>),
    Delete,
    /// The store never held the key: whatever the fold wrote to it goes unwritten.
    Forget,
}

/// The writes a finished fold makes for a member, under `key` (its member record key)
/// and its user -> license key (`None`: it did not change). Both follow from the entry
/// alone, so the fold writes neither per event: a member changed by several events of one
/// fold costs one write of each, and the fold's map of other writes stays smaller.
fn member_writes(key: &[u8], member: &MemberEntry) -> Option<[(Vec<u8>, MemberWrite); 2]> {
    if !member.changed {
        return None;
    }
    let user_license = user_license_key(key);
    Some(match &member.record {
        Some(record) => [
            (key.to_vec(), MemberWrite::Put(encode(record))),
            (
                user_license,
                MemberWrite::Put(record.status.as_str().as_bytes().to_vec()),
            ),
        ],
        None => {
            let removal = || member_removal(member.stored, member.held_by_pack);
            [(key.to_vec(), removal()), (user_license, removal())]
        }
    })
}

/// The user -> license key (`04 email 0 license`) of a member record key
/// (`02 license 0 email`).
fn user_license_key(member_key: &[u8]) -> Vec<u8> {
    assert_eq!(
        member_key.first(),
        Some(&PREFIX_MEMBER),
        "a member record key"
    );
    let (license, email) =
        member_key_parts(member_key).expect("a member key separates license and email");
    pair(PREFIX_USER_LICENSE, email, license)
}

/// How a member's key (its record or its user -> license key) is removed: over a pack
/// that holds the member, a tombstone hides the pack's entry; a key the store holds is
/// removed; one it never held is forgotten.
fn member_removal(stored: bool, held_by_pack: bool) -> MemberWrite {
    if held_by_pack {
        MemberWrite::Put(packs::TOMBSTONE.to_vec())
    } else if stored {
        MemberWrite::Delete
    } else {
        MemberWrite::Forget
    }
}

/// What the fold knows of the plain layer's member records of a license.
///
/// Every new member's lookup would read the plain layer, a sled point read that finds
/// nothing for most members of an import or a rebuild: they are in packs or new. After
/// `PLAIN_MEMBERS_PROBE_LOOKUPS_MIN` lookups of one license the fold reads the license's
/// plain member keys once, up to `PLAIN_MEMBERS_KNOWN_MAX` of them; the later lookups read
/// the plain layer only for those keys. The answer holds for the whole fold because the
/// fold writes member keys only when it finishes and the projector is the only writer.
enum PlainMembers {
    /// Not asked yet: this many lookups read the plain layer.
    Unprobed(u32),
    /// The plain layer's member record keys (values and tombstones) of the license: all of
    /// them, often none.
    Known(FxHashSet<Vec<u8>>),
    /// It has more than `PLAIN_MEMBERS_KNOWN_MAX`: every lookup reads it.
    Many,
}

/// How many member lookups of one license a fold makes before it asks whether the plain
/// layer has any of the license's members: a fold of one or a few events per license (a
/// live batch of single commands) never pays for the range read.
const PLAIN_MEMBERS_PROBE_LOOKUPS_MIN: u32 = 16;

/// The most plain member keys of one license a fold reads into memory. A license with a
/// few single adds on top of a large import had every later import row read the plain
/// layer (a sled point read each, session 14: 6% of the live projector's time).
const PLAIN_MEMBERS_KNOWN_MAX: usize = 4_096;

/// Keys and their new values (`None`: removed).
pub(crate) type Writes = FxHashMap<Vec<u8>, Option<Vec<u8>>>;

/// A live fold's writes, split by the layer they go to (`BatchApplier::finish_live`).
pub(crate) struct LiveWrites {
    /// What a live pack may take, in strictly increasing key order.
    pub packed: Vec<packs::Entry>,
    /// What must be written as plain keys (`None`: removed).
    pub plain: Vec<(Vec<u8>, Option<Vec<u8>>)>,
    pub changes: Vec<MembershipChange>,
}

/// One sled batch of `writes` (a `None` value removes its key) ending with the checkpoint
/// they bring the projections to: the atomic write of AUD-6.
pub(crate) fn checkpoint_batch(
    writes: impl IntoIterator<Item = (Vec<u8>, Option<Vec<u8>>)>,
    checkpoint: u64,
) -> sled::Batch {
    let mut batch = sled::Batch::default();
    for (key, value) in writes {
        match value {
            Some(value) => batch.insert(key, value),
            None => batch.remove(key),
        }
    }
    batch.insert(keys::checkpoint_key(), checkpoint.to_be_bytes().to_vec());
    batch
}

/// A member as the fold knows it; `changed` says whether it must be written. Until it
/// changes, `record` is the member as stored when the fold first read it.
struct MemberEntry {
    record: Option<MemberRecord>,
    /// Whether the store held the member when the fold first read it. The keys derived
    /// from a member (its record and user -> license keys) are stored exactly when it is,
    /// so a removal of a member the store did not hold is dropped from the writes instead
    /// of removed from sled. A rebuild adds and removes many members within one chunk,
    /// which then cost no sled write at all. Only whether, not what: the stored record
    /// itself would make every entry of a rebuild's chunk half again as large.
    stored: bool,
    /// Whether a pack holds the member (`packs::Lookup`): removing them then writes
    /// tombstones over the member and user -> license keys instead of removing them.
    held_by_pack: bool,
    /// Whether the plain layer has the member's record key (`packs::Lookup::plain`), and
    /// so its user -> license key: both are always written to the same layer.
    plain: bool,
    changed: bool,
}

impl MemberEntry {
    /// The entry a fold reading the store finds once a rebuild's chunk holding this one
    /// is written: a changed member is then in the chunk's pack, as its record or as a
    /// tombstone (`member_writes`, `packs::get`).
    fn once_written(&self) -> MemberEntry {
        assert!(!self.plain, "a rebuild writes no plain member keys");
        let (stored, held_by_pack) = if self.changed {
            (self.record.is_some(), self.record.is_some())
        } else {
            (self.stored, self.held_by_pack)
        };
        MemberEntry {
            record: self.record.clone(),
            stored,
            held_by_pack,
            plain: false,
            changed: false,
        }
    }
}

/// Estimated bytes of one entry of the fold's maps beyond its key and value bytes
/// (allocation headers, map nodes, `Vec` headers). Only a chunk budget reads it.
const FOLD_ENTRY_OVERHEAD_BYTES: usize = 96;
/// Estimated bytes of one decoded member record (the actor's email and the OU path are
/// usually short, and its history holds a position or two; a full one adds about 100).
const FOLD_MEMBER_RECORD_BYTES: usize = 192;
/// Estimated bytes of one decoded license record: its fields and its open history block
/// (up to `HISTORY_BLOCK_POSITIONS_MAX` positions of eight bytes).
const FOLD_LICENSE_RECORD_BYTES: usize = 1_024 + HISTORY_BLOCK_POSITIONS_MAX * 8;

/// a license's history is packed in blocks of up to `HISTORY_BLOCK_POSITIONS_MAX`
/// positions, each under the key of its first one; the last block lives in the license
/// record (`LicenseRecord::history_open`) until the position after it comes. Blocks fill
/// in log order whatever the batch boundaries, so live and rebuilt projections hold the
/// same blocks (AUD-5). A stored block is its positions, eight big-endian bytes each.
fn encode_history_block(positions: &[u64]) -> Vec<u8> {
    positions
        .iter()
        .flat_map(|position| position.to_be_bytes())
        .collect()
}

/// Reads a stored history block, asserting what every writer guarantees.
pub(crate) fn decode_history_block(
    key_first: &[u8],
    value: &[u8],
) -> Result<Vec<u64>, ProjectionError> {
    let corrupt = |reason: &str| ProjectionError::Corrupt {
        what: "history block",
        reason: reason.to_owned(),
    };
    if value.is_empty()
        || !value.len().is_multiple_of(8)
        || value.len() / 8 > HISTORY_BLOCK_POSITIONS_MAX
    {
        return Err(corrupt(&format!(
            "not 1 to {HISTORY_BLOCK_POSITIONS_MAX} eight-byte positions"
        )));
    }
    let positions: Vec<u64> = value
        .chunks_exact(8)
        .map(|bytes| u64::from_be_bytes(bytes.try_into().expect("chunks of eight")))
        .collect();
    if key_first != positions[0].to_be_bytes() {
        return Err(corrupt("the key does not name the first position"));
    }
    if positions.windows(2).any(|pair| pair[0] >= pair[1]) {
        return Err(corrupt("positions not strictly increasing"));
    }
    Ok(positions)
}

impl BatchApplier {
    /// A fold over `tree`; `track_changes` keeps the membership changes for the email
    /// lists of a generation that answers queries.
    pub(crate) fn new(tree: &sled::Tree, packs: packs::PackIds, track_changes: bool) -> Self {
        Self {
            tree: tree.clone(),
            packs,
            writes: FxHashMap::default(),
            licenses: HashMap::new(),
            members: FxHashMap::default(),
            changes: track_changes.then(Vec::new),
            kept_plain: FxHashSet::default(),
            plain_writes: 0,
            plain_members: FxHashMap::default(),
            events: 0,
            held_bytes: 0,
            previous: None,
        }
    }

    /// A rebuild's fold of the chunk after `previous`, which a writer thread is storing.
    pub(crate) fn after(mut self, previous: Arc<FoldedChunk>) -> Self {
        self.previous = Some(previous);
        self
    }

    /// How many members and other keys the fold holds, to size the next chunk's fold.
    pub(crate) fn sizes(&self) -> FoldSizes {
        FoldSizes {
            members: self.members.len(),
            writes: self.writes.len(),
        }
    }

    /// Makes room for a fold of about `sizes` at once: growing the maps one doubling at
    /// a time moves every entry again each time (a profile of a rebuild put a tenth of
    /// the fold's time there).
    pub(crate) fn reserve(&mut self, sizes: FoldSizes) {
        self.members.reserve(sizes.members);
        self.writes.reserve(sizes.writes);
    }

    /// The previous chunk is stored now, and `packs` include its pack: the fold reads
    /// the store alone again.
    pub(crate) fn previous_stored(&mut self, packs: packs::PackIds) {
        self.previous = None;
        self.packs = packs;
    }

    /// How many events were folded.
    pub(crate) fn events(&self) -> usize {
        self.events
    }

    /// An estimate of the bytes the fold holds in memory.
    pub(crate) fn held_bytes(&self) -> usize {
        self.held_bytes
    }

    /// An upper estimate of the plain keys the fold writes beside a live pack.
    pub(crate) fn plain_writes(&self) -> usize {
        self.plain_writes
    }

    fn raw(&self, key: &[u8]) -> Result<Option<Vec<u8>>, ProjectionError> {
        if let Some(pending) = self.writes.get(key) {
            return Ok(pending.clone());
        }
        if let Some(previous) = &self.previous {
            // License records come from `previous.licenses` (`take_license`), which
            // missed this one if it is one.
            assert!(
                key[0] == PREFIX_LICENSE || READ_BACK_PREFIXES.contains(&key[0]),
                "a fold reads back only the plain keys a finished chunk keeps"
            );
            if let Some(written) = previous.read_back.get(key) {
                return Ok(written.clone());
            }
        }
        Ok(self.tree.get(key)?.map(|value| value.to_vec()))
    }

    fn put(&mut self, key: Vec<u8>, value: Vec<u8>) {
        self.write(key, Some(value));
    }

    fn delete(&mut self, key: Vec<u8>) {
        self.write(key, None);
    }

    /// Removes a key that the store does not hold: whatever the fold wrote to it before
    /// is forgotten, and nothing goes to sled.
    fn forget(&mut self, key: &[u8]) {
        if let Some((key, value)) = self.writes.remove_entry(key) {
            self.held_bytes -=
                key.len() + value.map_or(0, |value| value.len()) + FOLD_ENTRY_OVERHEAD_BYTES;
        }
    }

    /// Makes a member's key write (`member_writes`, `member_removal`) one of the fold's.
    fn write_member_key(&mut self, key: Vec<u8>, write: MemberWrite) {
        match write {
            MemberWrite::Put(value) => self.put(key, value),
            MemberWrite::Delete => self.delete(key),
            MemberWrite::Forget => self.forget(&key),
        }
    }

    fn write(&mut self, key: Vec<u8>, value: Option<Vec<u8>>) {
        let key_bytes = key.len();
        let value_bytes = value.as_ref().map_or(0, Vec::len);
        self.held_bytes += value_bytes;
        let packed = packs::is_packed_key(&key);
        match self.writes.insert(key, value) {
            Some(old) => self.held_bytes -= old.map_or(0, |old| old.len()),
            None => {
                self.held_bytes += key_bytes + FOLD_ENTRY_OVERHEAD_BYTES;
                self.plain_writes += usize::from(!packed);
            }
        }
    }

    fn take_license(&mut self, id: &str) -> Result<Option<LicenseRecord>, ProjectionError> {
        match self.licenses.remove(id) {
            Some(record) => Ok(record),
            None => {
                self.held_bytes += id.len() + FOLD_LICENSE_RECORD_BYTES;
                // A license the fold touches is written when it finishes.
                self.plain_writes += 1;
                if let Some(previous) = &self.previous
                    && let Some(record) = previous.licenses.get(id)
                {
                    return Ok(record.clone());
                }
                self.raw(&single(PREFIX_LICENSE, id.as_bytes()))?
                    .map(|bytes| decode("license record", &bytes))
                    .transpose()
            }
        }
    }

    fn member(
        &mut self,
        license: &str,
        email: &str,
    ) -> Result<Option<MemberRecord>, ProjectionError> {
        let key = pair(PREFIX_MEMBER, license.as_bytes(), email.as_bytes());
        Ok(self.member_entry(&key)?.record.clone())
    }

    /// Whether the plain layer may have the member record `key` (`PlainMembers`).
    fn plain_may_have_member(&mut self, key: &[u8]) -> Result<bool, ProjectionError> {
        let scope =
            member_license_scope(key).expect("a member key has a separator after its license");
        let lookups = match self.plain_members.get_mut(scope) {
            Some(PlainMembers::Known(keys)) => return Ok(keys.contains(key)),
            Some(PlainMembers::Many) => return Ok(true),
            Some(PlainMembers::Unprobed(lookups)) => {
                *lookups += 1;
                *lookups
            }
            None => {
                self.held_bytes += scope.len() + FOLD_ENTRY_OVERHEAD_BYTES;
                self.plain_members
                    .insert(scope.to_vec(), PlainMembers::Unprobed(1));
                1
            }
        };
        if lookups < PLAIN_MEMBERS_PROBE_LOOKUPS_MIN {
            return Ok(true);
        }
        let mut keys = FxHashSet::default();
        for item in self
            .tree
            .scan_prefix(scope)
            .keys()
            .take(PLAIN_MEMBERS_KNOWN_MAX + 1)
        {
            keys.insert(item?.to_vec());
        }
        let known = if keys.len() > PLAIN_MEMBERS_KNOWN_MAX {
            PlainMembers::Many
        } else {
            self.held_bytes += keys
                .iter()
                .map(|key| key.len() + FOLD_ENTRY_OVERHEAD_BYTES)
                .sum::<usize>();
            PlainMembers::Known(keys)
        };
        let may_have = match &known {
            PlainMembers::Known(keys) => keys.contains(key),
            _ => true,
        };
        *self
            .plain_members
            .get_mut(scope)
            .expect("the license's lookups were counted above") = known;
        Ok(may_have)
    }

    /// The fold's entry of a member, read from the store the first time.
    fn member_entry(&mut self, key: &[u8]) -> Result<&mut MemberEntry, ProjectionError> {
        if !self.members.contains_key(key) {
            if let Some(written) = self
                .previous
                .as_ref()
                .and_then(|previous| previous.members.get(key))
            {
                let entry = written.once_written();
                self.held_bytes += key.len() + FOLD_ENTRY_OVERHEAD_BYTES + FOLD_MEMBER_RECORD_BYTES;
                return Ok(self.members.entry(key.to_vec()).or_insert(entry));
            }
            let read_plain = self.plain_may_have_member(key)?;
            return self.read_member_entry(key.to_vec(), read_plain);
        }
        Ok(self
            .members
            .get_mut(key)
            .expect("the fold holds the member"))
    }

    /// Reads a member the fold does not hold yet from the store.
    fn read_member_entry(
        &mut self,
        key: Vec<u8>,
        read_plain: bool,
    ) -> Result<&mut MemberEntry, ProjectionError> {
        match self.members.entry(key) {
            Entry::Occupied(entry) => Ok(entry.into_mut()),
            Entry::Vacant(entry) => {
                // The fold writes member keys only when it finishes, so the store's value
                // is the one before the fold.
                let lookup = if read_plain {
                    packs::get(&self.tree, &self.packs, entry.key())?
                } else {
                    packs::get_from_packs(&self.tree, &self.packs, entry.key())?
                };
                let stored: Option<MemberRecord> = lookup
                    .value
                    .map(|bytes| decode("member record", &bytes))
                    .transpose()?;
                self.held_bytes +=
                    entry.key().len() + FOLD_ENTRY_OVERHEAD_BYTES + FOLD_MEMBER_RECORD_BYTES;
                self.plain_writes += if lookup.plain { 2 } else { 0 };
                Ok(entry.insert(MemberEntry {
                    stored: stored.is_some(),
                    record: stored,
                    held_by_pack: lookup.held_by_pack,
                    plain: lookup.plain,
                    changed: false,
                }))
            }
        }
    }

    /// appends a position to the license's open history block; a full block first
    /// moves to its own key.
    fn record_license_history(&mut self, license: &str, record: &mut LicenseRecord, position: u64) {
        assert!(
            record
                .history_open
                .last()
                .is_none_or(|last| *last < position),
            "history position {position} after {:?}",
            record.history_open.last()
        );
        if record.history_open.len() >= HISTORY_BLOCK_POSITIONS_MAX {
            let full = std::mem::take(&mut record.history_open);
            self.put(
                positioned(PREFIX_HISTORY_LICENSE, license.as_bytes(), full[0]),
                encode_history_block(&full),
            );
        }
        record.history_open.push(position);
    }

    /// Every record the fold changed, the keys that stay plain (`kept_plain`) and the
    /// membership changes.
    fn into_parts(mut self) -> (Writes, FxHashSet<Vec<u8>>, Option<Vec<MembershipChange>>) {
        for (id, record) in std::mem::take(&mut self.licenses) {
            let key = single(PREFIX_LICENSE, id.as_bytes());
            if let Some(record) = record {
                self.put(key, encode(&record));
            }
        }
        for (key, member) in std::mem::take(&mut self.members) {
            let Some(writes) = member_writes(&key, &member) else {
                continue;
            };
            for (key, write) in writes {
                if member.plain {
                    self.kept_plain.insert(key.clone());
                }
                self.write_member_key(key, write);
            }
        }
        (self.writes, self.kept_plain, self.changes)
    }

    /// A rebuild's finished chunk, to be stored by a writer thread while the next chunk's
    /// fold reads it (`FoldedChunk::sorted_writes` gives its writes).
    pub(crate) fn finish_chunk(self) -> (Arc<FoldedChunk>, Writes) {
        assert!(
            self.changes.is_none(),
            "a rebuild keeps no membership changes"
        );
        let read_back = self
            .writes
            .iter()
            .filter(|(key, _)| READ_BACK_PREFIXES.contains(&key[0]))
            .map(|(key, value)| (key.clone(), value.clone()))
            .collect();
        let folded = FoldedChunk {
            licenses: self.licenses,
            members: self.members,
            read_back,
        };
        (Arc::new(folded), self.writes)
    }

    /// A live fold's writes split by layer: the entries a live pack may take, in key order
    /// (a removal is a tombstone), and the keys that stay plain, with the membership
    /// changes. Every key of a read model packs hold goes to the pack unless the plain
    /// layer has it: a user history key is written once, under its own position, and a
    /// member's two keys are in the layer its record key is in.
    pub(crate) fn finish_live(self) -> LiveWrites {
        let (writes, kept_plain, changes) = self.into_parts();
        let (packed, plain): (Vec<_>, Vec<_>) = writes
            .into_iter()
            .partition(|(key, _)| packs::is_packed_key(key) && !kept_plain.contains(key));
        let mut packed: Vec<packs::Entry> = packed
            .into_iter()
            .map(|(key, value)| (key, value.unwrap_or_else(|| packs::TOMBSTONE.to_vec())))
            .collect();
        packed.sort_unstable_by(|left, right| left.0.cmp(&right.0));
        LiveWrites {
            packed,
            plain,
            changes: changes.unwrap_or_default(),
        }
    }

    pub(crate) fn apply(&mut self, projected: &ProjectedEvent) -> Result<(), ProjectionError> {
        self.events += 1;
        match StreamName::parse(&projected.stream)? {
            StreamName::License(id) => self.apply_license(&id, projected),
            StreamName::Domain(name) => self.apply_domain(&name, projected),
        }
    }

    fn record_user_history(&mut self, projected: &ProjectedEvent) {
        if let Some(email) = projected.event.member_email() {
            self.write_user_positions(email, &[projected.position]);
        }
    }

    /// one key per position under the user's history.
    fn write_user_positions(&mut self, email: &Email, positions: &[u64]) {
        self.write_shed_positions(email, positions, false);
    }

    /// `write_user_positions` for positions a member record sheds: they go to the layer
    /// the record is in (`plain`), so that a reader sees them either in the record or
    /// under their keys, never in neither (a plain record is visible before a new pack
    /// is published).
    fn write_shed_positions(&mut self, email: &Email, positions: &[u64], plain: bool) {
        for position in positions {
            let key = positioned(PREFIX_HISTORY_USER, email.as_str().as_bytes(), *position);
            if plain {
                self.kept_plain.insert(key.clone());
                self.plain_writes += 1;
            }
            self.put(key, Vec::new());
        }
    }

    fn apply_domain(
        &mut self,
        name: &DomainName,
        projected: &ProjectedEvent,
    ) -> Result<(), ProjectionError> {
        self.record_user_history(projected);
        let domain = name.as_str().as_bytes();
        match &projected.event {
            Event::DomainAdminGranted(e) => {
                let email = e.email.as_str().as_bytes();
                self.put(pair(PREFIX_DOMAIN_ADMIN, domain, email), Vec::new());
                self.put(pair(PREFIX_USER_DOMAIN, email, domain), Vec::new());
            }
            Event::DomainAdminRevoked(e) => {
                let email = e.email.as_str().as_bytes();
                self.delete(pair(PREFIX_DOMAIN_ADMIN, domain, email));
                self.delete(pair(PREFIX_USER_DOMAIN, email, domain));
            }
            Event::DomainClaimed(e) => self.put(
                single(PREFIX_CLAIM, domain),
                e.license.as_str().as_bytes().to_vec(),
            ),
            Event::DomainReleased(e) => self.release_claim(domain, &e.license)?,
            other => debug_assert!(false, "{} on a domain stream", other.type_name()),
        }
        Ok(())
    }

    /// A release removes the claim only if it still points at the releasing license, so the
    /// two copies of a claim (domain stream and license stream) agree in any order.
    fn release_claim(&mut self, domain: &[u8], license: &LicenseId) -> Result<(), ProjectionError> {
        let key = single(PREFIX_CLAIM, domain);
        if self.raw(&key)?.as_deref() == Some(license.as_str().as_bytes()) {
            self.delete(key);
        }
        Ok(())
    }

    fn apply_license(
        &mut self,
        id: &LicenseId,
        projected: &ProjectedEvent,
    ) -> Result<(), ProjectionError> {
        let id_bytes = id.as_str().as_bytes();
        // A membership event's position goes to the user's history through the member
        // record (`set_member`); any other event about a user goes there directly.
        let membership = is_membership_event(&projected.event);
        if !membership {
            self.record_user_history(projected);
        }
        let at = projected.recorded_at;
        if let Event::LicenseIssued(issued) = &projected.event {
            let existing = self.take_license(id.as_str())?;
            debug_assert!(existing.is_none(), "LicenseIssued twice for {id}");
            // A second LicenseIssued (a bug upstream) replaces the license, but the history
            // and usage it had stay where the queries find them.
            let (usage_last_day, usage_open, history_open) = existing
                .map_or((None, None, Vec::new()), |old| {
                    (old.usage_last_day, old.usage_open, old.history_open)
                });
            self.put(
                single(PREFIX_KEY_HASH, &secret_hash(&issued.key)),
                id_bytes.to_vec(),
            );
            if let Some(link) = &issued.link {
                self.put(
                    single(PREFIX_LINK_HASH, &secret_hash(link)),
                    id_bytes.to_vec(),
                );
            }
            let mut record = LicenseRecord {
                license_type: issued.license_type,
                seats: issued.seats,
                valid_from: issued.valid_from,
                valid_until: issued.valid_until,
                admins: issued.admins.clone(),
                domains: Default::default(),
                key: issued.key.clone(),
                link: issued.link.clone(),
                auto_enrollment: issued.auto_enrollment,
                features: Default::default(),
                features_by_role: Default::default(),
                ou_paths: Vec::new(),
                ou_sync_held: false,
                counts: StatusCounts::default(),
                issued_at: at,
                usage_last_day,
                usage_open,
                history_open,
            };
            self.record_license_history(id.as_str(), &mut record, projected.position);
            self.licenses.insert(id.as_str().to_owned(), Some(record));
            return Ok(());
        }
        let Some(mut license) = self.take_license(id.as_str())? else {
            // The log holds only what the aggregate decided, so an event before
            // LicenseIssued is a bug upstream; like `License::apply` it is skipped in release
            // builds rather than inventing a license.
            debug_assert!(
                false,
                "{} before LicenseIssued",
                projected.event.type_name()
            );
            self.licenses.insert(id.as_str().to_owned(), None);
            if membership {
                self.record_user_history(projected);
            }
            // With no record to hold it, the position is a block of its own: every event
            // of the stream stays in the license's history.
            self.put(
                positioned(PREFIX_HISTORY_LICENSE, id_bytes, projected.position),
                encode_history_block(&[projected.position]),
            );
            return Ok(());
        };
        self.record_license_history(id.as_str(), &mut license, projected.position);
        let context = MemberContext {
            license: id.as_str(),
            position: projected.position,
            at,
            actor: &projected.actor,
        };
        match &projected.event {
            Event::LicenseIssued(_) => unreachable!("handled above"),
            Event::LicenseRenewed(e) => license.valid_until = e.valid_until,
            Event::SeatsChanged(e) => license.seats = e.seats,
            Event::LicenseAdminGranted(e) => {
                if !license.admins.contains(&e.email) {
                    license.admins.push(e.email.clone());
                }
            }
            Event::LicenseAdminRevoked(e) => license.admins.retain(|admin| admin != &e.email),
            Event::UserAdded(e) => self.put_member(
                &mut license,
                &context,
                &e.email,
                (Status::Accepted, e.source, e.role),
                e.ou_path.clone(),
            )?,
            Event::InviteSent(e) => self.put_member(
                &mut license,
                &context,
                &e.email,
                (Status::Invited, e.source, e.role),
                None,
            )?,
            Event::UserWaitlisted(e) => self.put_member(
                &mut license,
                &context,
                &e.email,
                (Status::Waitlisted, e.source, e.role),
                e.ou_path.clone(),
            )?,
            Event::InviteAccepted(e) => {
                self.change_status(&mut license, &context, &e.email, Status::Accepted)?
            }
            Event::UserPromoted(e) => {
                self.change_status(&mut license, &context, &e.email, Status::Accepted)?
            }
            Event::InviteRejected(e) => {
                self.change_status(&mut license, &context, &e.email, Status::Rejected)?
            }
            Event::UserRemoved(e) => self.remove_member(&mut license, &context, &e.email)?,
            Event::LicenseKeyRotated(e) => {
                // LIC-6: the old key stops working at once, so its hash goes in the same
                // write that adds the new one.
                self.delete(single(PREFIX_KEY_HASH, &secret_hash(&license.key)));
                self.put(
                    single(PREFIX_KEY_HASH, &secret_hash(&e.key)),
                    id_bytes.to_vec(),
                );
                license.key = e.key.clone();
            }
            Event::JoinLinkRotated(e) => {
                if let Some(old) = &license.link {
                    self.delete(single(PREFIX_LINK_HASH, &secret_hash(old)));
                }
                self.put(
                    single(PREFIX_LINK_HASH, &secret_hash(&e.link)),
                    id_bytes.to_vec(),
                );
                license.link = Some(e.link.clone());
            }
            Event::FeaturePermissionSet(e) => {
                let features = match e.role {
                    Some(role) => license.features_by_role.entry(role).or_default(),
                    None => &mut license.features,
                };
                features.insert(e.feature.clone(), e.enabled);
            }
            Event::AutoEnrollmentSet(e) => license.auto_enrollment = e.enabled,
            Event::OuLinked(e) => {
                for path in &e.ou_paths {
                    if !license.ou_paths.contains(path) {
                        license.ou_paths.push(path.clone());
                    }
                }
            }
            Event::OuUnlinked(_) => {
                license.ou_paths.clear();
                license.ou_sync_held = false;
            }
            Event::OuSynced(_) | Event::OuSyncConfirmed(_) => license.ou_sync_held = false,
            Event::OuSyncHeld(_) => license.ou_sync_held = true,
            Event::DomainClaimed(e) => {
                license.domains.insert(e.domain.clone());
                self.put(
                    single(PREFIX_CLAIM, e.domain.as_str().as_bytes()),
                    id_bytes.to_vec(),
                );
            }
            Event::DomainReleased(e) => {
                license.domains.remove(&e.domain);
                self.release_claim(e.domain.as_str().as_bytes(), id)?;
            }
            Event::DomainAdminGranted(_) | Event::DomainAdminRevoked(_) => {
                debug_assert!(false, "domain admin events belong to a domain's stream");
            }
        }
        self.licenses.insert(id.as_str().to_owned(), Some(license));
        Ok(())
    }

    /// UserAdded, InviteSent, UserWaitlisted: the member (re)starts with a status, a source
    /// and a role, added now by the event's actor.
    fn put_member(
        &mut self,
        license: &mut LicenseRecord,
        context: &MemberContext<'_>,
        email: &Email,
        (status, source, role): (Status, Source, Role),
        ou_path: Option<domain::OuPath>,
    ) -> Result<(), ProjectionError> {
        let member = MemberRecord {
            status,
            source,
            role,
            added_at: context.at,
            added_by: context.actor.clone(),
            updated_at: context.at,
            ou_path,
            history: Vec::new(),
        };
        self.set_member(license, context, email, Some(member))
    }

    /// InviteAccepted, InviteRejected, UserPromoted keep source and role (SPEC §1, SEAT-4).
    fn change_status(
        &mut self,
        license: &mut LicenseRecord,
        context: &MemberContext<'_>,
        email: &Email,
        status: Status,
    ) -> Result<(), ProjectionError> {
        let Some(mut member) = self.member(context.license, email.as_str())? else {
            debug_assert!(false, "status change for a non-member");
            self.write_user_positions(email, &[context.position]);
            return Ok(());
        };
        member.status = status;
        member.updated_at = context.at;
        self.set_member(license, context, email, Some(member))
    }

    fn remove_member(
        &mut self,
        license: &mut LicenseRecord,
        context: &MemberContext<'_>,
        email: &Email,
    ) -> Result<(), ProjectionError> {
        let existing = self.member(context.license, email.as_str())?;
        debug_assert!(existing.is_some(), "removal of a non-member");
        if existing.is_none() {
            self.write_user_positions(email, &[context.position]);
            return Ok(());
        }
        self.set_member(license, context, email, None)
    }

    /// The one place a member changes: counts, the user's licenses, usage, the user's
    /// history and the in-memory member lists all follow from the before and after records.
    fn set_member(
        &mut self,
        license: &mut LicenseRecord,
        context: &MemberContext<'_>,
        email: &Email,
        mut after: Option<MemberRecord>,
    ) -> Result<(), ProjectionError> {
        let id = context.license;
        let member_key = pair(PREFIX_MEMBER, id.as_bytes(), email.as_str().as_bytes());
        // The record leaves the entry while it changes, so that the writes below can
        // borrow the fold; the entry stays in the map (a removal and an insertion would
        // move it twice).
        let entry = self.member_entry(&member_key)?;
        let mut before = entry.record.take();
        let (first_change, plain) = (!entry.changed, entry.plain);
        if first_change {
            // The user -> license key the member's first change makes the fold write at
            // its end (`member_writes`).
            self.held_bytes += member_key.len() + FOLD_ENTRY_OVERHEAD_BYTES;
        }
        // the membership's positions carry over to the new record with this event's;
        // they move under the user's history keys when the membership ends or when the
        // record holds enough of them. Both depend on the log alone, not on batches (AUD-5).
        // The positions move out of the old record, which nothing below reads them from.
        let mut history = before
            .as_mut()
            .map(|member| std::mem::take(&mut member.history))
            .unwrap_or_default();
        if history.len() >= MEMBER_HISTORY_POSITIONS_MAX {
            self.write_shed_positions(email, &history, plain);
            history.clear();
        }
        debug_assert!(history.last().is_none_or(|last| *last < context.position));
        history.push(context.position);
        match &mut after {
            Some(member) => member.history = history,
            None => self.write_shed_positions(email, &history, plain),
        }
        if let Some(old) = &before {
            *license.counts.slot(old.status) -= 1;
        }
        if let Some(new) = &after {
            *license.counts.slot(new.status) += 1;
        }
        let held_before = before
            .as_ref()
            .is_some_and(|member| member.status.holds_seat());
        let holds_after = after
            .as_ref()
            .is_some_and(|member| member.status.holds_seat());
        if held_before != holds_after {
            self.count_usage(
                license,
                context,
                before.as_ref(),
                after.as_ref(),
                holds_after,
            );
        }
        if let Some(changes) = &mut self.changes
            && cached_columns_differ(before.as_ref(), after.as_ref())
        {
            changes.push(MembershipChange {
                license: id.to_owned(),
                email: email.as_str().to_owned(),
                after: after.as_ref().map(MemberColumns::of),
            });
        }
        let entry = self
            .members
            .get_mut(&member_key)
            .expect("the member's entry stays in the map");
        entry.record = after;
        entry.changed = true;
        Ok(())
    }

    /// someone came to hold a seat or an invite (counted by their new source) or
    /// stopped holding one (counted by the source they had).
    fn count_usage(
        &mut self,
        license: &mut LicenseRecord,
        context: &MemberContext<'_>,
        before: Option<&MemberRecord>,
        after: Option<&MemberRecord>,
        added: bool,
    ) {
        // A clock that steps back between appends must not rewrite an earlier day, whose
        // end-of-day count later days already build on.
        let day = day_of(context.at).max(license.usage_last_day.unwrap_or(i64::MIN));
        if license.usage_last_day != Some(day) {
            // A later day starts: the open day is complete and moves to its own key.
            if let (Some(last_day), Some(usage)) =
                (license.usage_last_day, license.usage_open.take())
            {
                self.put(
                    pair(
                        PREFIX_USAGE,
                        context.license.as_bytes(),
                        &day_bytes(last_day),
                    ),
                    encode(&usage),
                );
            }
            license.usage_last_day = Some(day);
        }
        let usage = license.usage_open.get_or_insert_with(UsageRecord::default);
        if added {
            let member = after.expect("a member who came to hold a seat exists after");
            UsageRecord::count(&mut usage.added, member.source);
        } else {
            let member = before.expect("a member who held a seat existed before");
            UsageRecord::count(&mut usage.removed, member.source);
        }
        usage.users_count = license.counts.users_count();
    }
}

/// UserAdded, InviteSent, UserWaitlisted, InviteAccepted, UserPromoted, InviteRejected,
/// UserRemoved: the events that start, change or end a membership (`set_member`).
fn is_membership_event(event: &Event) -> bool {
    matches!(
        event,
        Event::UserAdded(_)
            | Event::InviteSent(_)
            | Event::UserWaitlisted(_)
            | Event::InviteAccepted(_)
            | Event::UserPromoted(_)
            | Event::InviteRejected(_)
            | Event::UserRemoved(_)
    )
}

struct MemberContext<'a> {
    license: &'a str,
    /// The event's log position.
    position: u64,
    at: DateTime<Utc>,
    actor: &'a Actor,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_members_user_license_key_swaps_license_and_email() {
        // the user -> license key a fold derives from a member record key is the one
        // the queries of a user's licenses scan.
        let member_key = pair(PREFIX_MEMBER, b"L-7", b"ann@north.edu");
        assert_eq!(
            user_license_key(&member_key),
            pair(PREFIX_USER_LICENSE, b"ann@north.edu", b"L-7")
        );
    }
}
