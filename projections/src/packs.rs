//! Packs: the member records (`02`), user -> license entries (`04`) and user history
//! positions (`09`) of a rebuild, written as sorted blocks of many entries per sled value
//! instead of one sled key per entry.
//!
//! sled 0.34 pays about 8 us of CPU per key written, whatever the value's size (every insert
//! rewrites its leaf), so a rebuild that writes two keys per member is bound at about 60,000
//! members/s. A pack holds up to `PACK_BLOCK_ENTRIES_MAX` entries per key and is written in
//! key order: a probe wrote 1,000,000 members in 0.7 s as packed blocks of 64, against 10 s
//! as single keys (BENCHMARKS.md, session 10).
//!
//! The layering, newest first:
//! 1. the plain keys (`02`, `04`, `09`), written by the live projector; `TOMBSTONE` there
//!    means the entry was removed and a pack below still holds it;
//! 2. the packs, newest (highest id) first; `TOMBSTONE` in a pack hides older packs' entry.
//!
//! Only a rebuild writes packs: each chunk of a rebuild becomes one pack, and when more than
//! `PACKS_MAX` exist the rebuild merges them into one. A generation is not read before it is
//! swapped in, and the live projector never writes a pack, so the packs of a generation that
//! answers queries never change. That is what makes the layering sound without versions: a
//! plain key is always newer than every pack, and a later pack newer than an earlier one.
//!
//! Keys: a block is `0d`, the pack id (4 bytes, big-endian), then the full plain key of its
//! first entry; its value is the entries (`encode_block`). The directory key of a pack is
//! `0e` and its id, with the number of entries as its value.

use std::ops::Bound;

use crate::ProjectionError;
use crate::keys::{PREFIX_HISTORY_USER, PREFIX_MEMBER, PREFIX_USER_LICENSE, prefix_end};

/// Blocks of packs: `0d`, pack id, first entry's plain key.
pub(crate) const PREFIX_PACK_BLOCK: u8 = 0x0d;
/// The packs of a generation: `0e`, pack id -> number of entries.
pub(crate) const PREFIX_PACK_DIRECTORY: u8 = 0x0e;
/// Packs a live merge replaced whose blocks are not removed yet: `0f`, pack id -> nothing.
/// A query may still read them (`Generation::retire_packs`); `open` removes what is left.
pub(crate) const PREFIX_PACK_RETIRED: u8 = 0x0f;
/// The most entries of one block. 64 entries of about 100 bytes make a 6 KiB value: sled
/// writes that about as fast per key as a small one, and a point lookup decodes one block.
pub(crate) const PACK_BLOCK_ENTRIES_MAX: usize = 64;
/// The most bytes of one block's entries (a long actor or OU path makes fewer per block).
pub(crate) const PACK_BLOCK_BYTES_MAX: usize = 16 * 1024;
/// The most packs a rebuild leaves before it merges them all. A point lookup reads a block
/// only of the packs whose member filter may hold the key, so packs cost lookups little,
/// while a merge rewrites every entry so far: at 4, merges were a third of the CPU of a
/// 10,000,000-event rebuild of ten chunks (BENCHMARKS.md, session 14).
pub(crate) const PACKS_MAX: usize = 16;
/// A removed entry that a lower layer still holds. 0xc1 is the one byte MessagePack never
/// uses, so no member record starts with it, no status name is it, and the user history
/// keys' values are empty.
pub(crate) const TOMBSTONE: &[u8] = &[0xc1];

fn is_tombstone(value: &[u8]) -> bool {
    value == TOMBSTONE
}

/// A plain key and its value.
pub(crate) type Entry = (Vec<u8>, Vec<u8>);

/// A generation's packs, oldest first. Readers hold the list they started with until
/// they are done: a pack a merge replaced keeps its blocks while any list naming it is
/// held (`Generation::retire_packs`).
pub(crate) type PackIds = std::sync::Arc<PackList>;

/// Pack ids, oldest first (it reads as a slice of them), each with the filter of its
/// member record keys.
#[derive(Clone, Default)]
pub(crate) struct PackList {
    ids: Vec<u32>,
    filters: Vec<std::sync::Arc<MemberFilter>>,
}

impl std::ops::Deref for PackList {
    type Target = [u32];

    fn deref(&self) -> &[u32] {
        &self.ids
    }
}

impl PackList {
    /// The packs of a stored generation, with their filters read from their blocks. Only
    /// the blocks that start with a member key are read: a pack's entries are in key order
    /// and member keys (`02`) sort first, so no later block holds one. This is most of what
    /// opening a generation costs: about 0.6 s for a license of 1,000,000 members.
    pub(crate) fn load(tree: &sled::Tree) -> Result<Self, ProjectionError> {
        let mut list = Self::default();
        for id in load_ids(tree)? {
            let mut keys = MemberKeys::default();
            for item in tree.scan_prefix(block_key(id, &[PREFIX_MEMBER])) {
                let (key, block) = item?;
                let mut reader = BlockEntries::new(&key[5..], &block)?;
                while let Some((entry, _)) = reader.next_entry()? {
                    keys.add(entry);
                }
            }
            list.push(id, keys.into_filter());
        }
        Ok(list)
    }

    /// The first `count` packs.
    pub(crate) fn prefix(&self, count: usize) -> Self {
        Self {
            ids: self.ids[..count].to_vec(),
            filters: self.filters[..count].to_vec(),
        }
    }

    /// These packs and one more, newer than all of them.
    pub(crate) fn push(&mut self, id: u32, filter: MemberFilter) {
        assert!(
            self.ids.last().is_none_or(|newest| *newest < id),
            "a new pack is newer than every pack"
        );
        self.ids.push(id);
        self.filters.push(std::sync::Arc::new(filter));
    }

    fn newest_first(&self) -> impl Iterator<Item = (u32, &MemberFilter)> {
        self.ids
            .iter()
            .copied()
            .zip(self.filters.iter().map(|filter| &**filter))
            .rev()
    }
}

/// Bloom filters of a pack's member record keys (tombstones included): a point lookup of
/// a member skips the packs that cannot hold it. Without them, adding a new member read one
/// block of every pack (a sled range read and a scan of up to 64 entries each), which was
/// most of a live import's cost. About 0.1% false positives at `FILTER_BITS_PER_KEY`.
///
/// Two filters: one of the licenses the pack has members of, one of the member keys. A
/// pack of a rebuild holds the members of the licenses whose events fell in its chunk of
/// the log, so most packs hold no member of a given license. The license filter is small
/// enough to stay in the processor's cache, while a probe of the member filter (megabytes)
/// costs a cache miss: probing only the member filters of packs that have members of the
/// license made a rebuild's lookups of new members several times cheaper (BENCHMARKS.md,
/// session 15). A live import's packs all hold its one license and pay one cheap probe more.
pub(crate) struct MemberFilter {
    licenses: Bloom,
    members: Bloom,
}

/// A blocked Bloom filter over 64-bit hashes.
struct Bloom {
    bits: Vec<u64>,
}

/// Bits of a filter per key: 16 bits and 11 probes give about 0.1% false positives (2 MB
/// for 1,000,000 members). At 10 bits and 7 probes (about 1%), a new member of an import
/// still read a block of about one pack in four (then up to 24 packs), 4% of the import's
/// projection time.
const FILTER_BITS_PER_KEY: usize = 16;
const FILTER_PROBES: u64 = 11;
/// A key's probes all fall in one block of this many 64-bit words (one cache line): a new
/// member is looked up in every pack's filter, and probes spread over a filter of
/// megabytes cost a cache miss each (session 14: 5% of a rebuild of ten packs).
const FILTER_BLOCK_WORDS: usize = 8;
const FILTER_BLOCK_BITS: u64 = FILTER_BLOCK_WORDS as u64 * 64;

/// The hashes a lookup of one member key probes the filters with, computed once for all
/// packs.
#[derive(Clone, Copy)]
struct KeyHashes {
    license: u64,
    member: u64,
}

fn filter_hash(bytes: &[u8]) -> u64 {
    use std::hash::{BuildHasher, BuildHasherDefault};
    // SipHash with fixed keys: the same on every run, and well mixed.
    BuildHasherDefault::<std::hash::DefaultHasher>::default().hash_one(bytes)
}

/// The start of a member key up to and including the separator after its license id
/// (`02 license 0`); the whole key if it has no separator.
fn license_scope(key: &[u8]) -> &[u8] {
    crate::keys::member_license_scope(key).unwrap_or(key)
}

fn key_hashes(key: &[u8]) -> KeyHashes {
    KeyHashes {
        license: filter_hash(license_scope(key)),
        member: filter_hash(key),
    }
}

impl Bloom {
    fn of(hashes: &[u64]) -> Self {
        let words = (hashes.len() * FILTER_BITS_PER_KEY)
            .div_ceil(FILTER_BLOCK_BITS as usize)
            .max(1)
            * FILTER_BLOCK_WORDS;
        let mut filter = Bloom {
            bits: vec![0; words],
        };
        for hash in hashes {
            for (word, mask) in filter.probes(*hash) {
                filter.bits[word] |= mask;
            }
        }
        filter
    }

    /// The words and bits of a key's probes: the hash's high bits choose the block
    /// (multiply-shift, no division), its low bits the probes inside it.
    fn probes(&self, hash: u64) -> impl Iterator<Item = (usize, u64)> + use<> {
        let blocks = (self.bits.len() / FILTER_BLOCK_WORDS) as u128;
        let first_word = ((u128::from(hash) * blocks) >> 64) as usize * FILTER_BLOCK_WORDS;
        // Double hashing (Kirsch and Mitzenmacher) inside the block: probe i at a + i * b.
        let start = hash % FILTER_BLOCK_BITS;
        let step = ((hash >> 9) % FILTER_BLOCK_BITS) | 1;
        (0..FILTER_PROBES).map(move |probe| {
            let bit = (start + probe * step) % FILTER_BLOCK_BITS;
            (first_word + (bit / 64) as usize, 1u64 << (bit % 64))
        })
    }

    fn may_contain_hash(&self, hash: u64) -> bool {
        self.probes(hash)
            .all(|(word, mask)| self.bits[word] & mask != 0)
    }
}

impl MemberFilter {
    /// Whether the pack may hold `key`; `false` means it does not.
    #[cfg(test)]
    fn may_contain(&self, key: &[u8]) -> bool {
        self.may_contain_hashes(key_hashes(key))
    }

    fn may_contain_hashes(&self, hashes: KeyHashes) -> bool {
        self.licenses.may_contain_hash(hashes.license)
            && self.members.may_contain_hash(hashes.member)
    }
}

/// The hashes of the member record keys of a pack being written or read.
#[derive(Default)]
pub(crate) struct MemberKeys {
    licenses: Vec<u64>,
    /// The license scope (`license_scope`) of the last member key added.
    last_scope: Vec<u8>,
    members: Vec<u64>,
}

impl MemberKeys {
    pub(crate) fn add(&mut self, key: &[u8]) {
        if key.first() == Some(&PREFIX_MEMBER) {
            // A pack's keys come in order, so a license's members come one after the
            // other: its scope is hashed once, not once per member.
            let scope = license_scope(key);
            if self.last_scope != scope {
                self.last_scope = scope.to_vec();
                self.licenses.push(filter_hash(scope));
            }
            self.members.push(filter_hash(key));
        }
    }

    pub(crate) fn into_filter(mut self) -> MemberFilter {
        self.licenses.sort_unstable();
        self.licenses.dedup();
        MemberFilter {
            licenses: Bloom::of(&self.licenses),
            members: Bloom::of(&self.members),
        }
    }
}

/// Whether a plain key belongs to a read model that packs hold.
pub(crate) fn is_packed_key(key: &[u8]) -> bool {
    matches!(
        key.first(),
        Some(&PREFIX_MEMBER) | Some(&PREFIX_USER_LICENSE) | Some(&PREFIX_HISTORY_USER)
    )
}

pub(crate) fn pack_prefix(id: u32) -> Vec<u8> {
    let mut prefix = vec![PREFIX_PACK_BLOCK];
    prefix.extend_from_slice(&id.to_be_bytes());
    prefix
}

fn block_key(id: u32, first: &[u8]) -> Vec<u8> {
    let mut key = pack_prefix(id);
    key.extend_from_slice(first);
    key
}

pub(crate) fn directory_key(id: u32) -> Vec<u8> {
    let mut key = vec![PREFIX_PACK_DIRECTORY];
    key.extend_from_slice(&id.to_be_bytes());
    key
}

pub(crate) fn retired_key(id: u32) -> Vec<u8> {
    let mut key = vec![PREFIX_PACK_RETIRED];
    key.extend_from_slice(&id.to_be_bytes());
    key
}

fn id_of(key: &[u8]) -> Result<u32, ProjectionError> {
    let id: [u8; 4] = key[1..]
        .try_into()
        .map_err(|_| corrupt("a pack directory key is not 4 bytes"))?;
    Ok(u32::from_be_bytes(id))
}

/// The ids of a generation's packs, oldest first, from its directory.
pub(crate) fn load_ids(tree: &sled::Tree) -> Result<Vec<u32>, ProjectionError> {
    Ok(load_directory(tree)?
        .into_iter()
        .map(|(id, _)| id)
        .collect())
}

/// The packs of a generation, oldest first, with their number of entries.
pub(crate) fn load_directory(tree: &sled::Tree) -> Result<Vec<(u32, u64)>, ProjectionError> {
    let mut packs = Vec::new();
    for item in tree.scan_prefix([PREFIX_PACK_DIRECTORY]) {
        let (key, value) = item?;
        let count: [u8; 8] = value
            .as_ref()
            .try_into()
            .map_err(|_| corrupt("a pack's number of entries is not 8 bytes"))?;
        packs.push((id_of(&key)?, u64::from_be_bytes(count)));
    }
    Ok(packs)
}

/// Removes what no reader can reach any more, before a generation answers: the blocks of
/// retired packs, and blocks above the newest pack in the directory, which a pack or a
/// merge left when the process stopped before its directory key was written. Every new
/// pack takes the id after the newest, so such blocks are always above it.
pub(crate) fn remove_unreachable(tree: &sled::Tree) -> Result<(), ProjectionError> {
    let mut retired = Vec::new();
    for item in tree.scan_prefix([PREFIX_PACK_RETIRED]) {
        let (key, _) = item?;
        retired.push(id_of(&key)?);
    }
    for id in retired {
        remove_blocks(tree, id)?;
        tree.remove(retired_key(id))?;
    }
    let above = load_ids(tree)?.last().map_or(0, |newest| newest + 1);
    let mut lower = vec![PREFIX_PACK_BLOCK];
    lower.extend_from_slice(&above.to_be_bytes());
    for item in tree.range(lower..vec![PREFIX_PACK_BLOCK + 1]) {
        let (key, _) = item?;
        tree.remove(key)?;
    }
    Ok(())
}

/// Which of the newest live packs to merge into one, as the index of the oldest of them,
/// or `None`. Sizes are entries, oldest first. Size-tiered, as in LSM trees: the newest run
/// of packs of about one size (each at most twice the largest newer one) is merged once it
/// holds `fanout` packs. An entry is then rewritten about log-fanout of the packs written
/// (a binary counter, merging pairs, rewrote it log2 times: a third of a live import's
/// cost), and fewer than `fanout` packs of each size are kept. Above `packs_max` packs the
/// newest run is merged whatever its length (the newest two if it is one pack), since
/// ranges read one cursor per pack.
pub(crate) fn live_merge_start(sizes: &[u64], packs_max: usize, fanout: usize) -> Option<usize> {
    let count = sizes.len();
    if count < 2 {
        return None;
    }
    let mut start = count - 1;
    let mut largest = sizes[start];
    while start > 0 && sizes[start - 1] <= largest.saturating_mul(2) {
        start -= 1;
        largest = largest.max(sizes[start]);
    }
    if count - start >= fanout.max(2) {
        Some(start)
    } else if count > packs_max {
        Some(start.min(count - 2))
    } else {
        None
    }
}

/// How many live packs of about one size are merged into one (`live_merge_start`): 16
/// rewrites each entry of a 1,000,000-row import about twice, 8 about three times.
pub(crate) const LIVE_MERGE_FANOUT: usize = 16;

fn corrupt(reason: &str) -> ProjectionError {
    ProjectionError::Corrupt {
        what: "pack",
        reason: reason.to_owned(),
    }
}

/// A block's entries: a u16 count, then per entry a u16 key length, the key, a u32 value
/// length and the value. Keys strictly increase.
fn encode_block(entries: &[(Vec<u8>, Vec<u8>)]) -> Vec<u8> {
    let bytes: usize = entries.iter().map(|(k, v)| 6 + k.len() + v.len()).sum();
    let mut block = Vec::with_capacity(2 + bytes);
    block.extend_from_slice(&(entries.len() as u16).to_be_bytes());
    for (key, value) in entries {
        block.extend_from_slice(&(key.len() as u16).to_be_bytes());
        block.extend_from_slice(key);
        block.extend_from_slice(&(value.len() as u32).to_be_bytes());
        block.extend_from_slice(value);
    }
    block
}

/// A key and its value inside a block.
type EntryRef<'a> = (&'a [u8], &'a [u8]);

/// The entries of a block, read in place, checking what `encode_block` guarantees as it
/// goes: every entry lies inside the block, the keys strictly increase, and the first is
/// the one the block's key names. A point lookup stops at its key; `decode_block` reads all.
struct BlockEntries<'a> {
    block: &'a [u8],
    first: &'a [u8],
    at: usize,
    left: usize,
    previous: Option<&'a [u8]>,
}

impl<'a> BlockEntries<'a> {
    fn new(first: &'a [u8], block: &'a [u8]) -> Result<Self, ProjectionError> {
        let count = block
            .get(..2)
            .ok_or_else(|| corrupt("a block ends inside its count"))?;
        Ok(Self {
            block,
            first,
            at: 2,
            left: u16::from_be_bytes(count.try_into().expect("two bytes")) as usize,
            previous: None,
        })
    }

    fn take(&mut self, length: usize) -> Result<&'a [u8], ProjectionError> {
        let bytes = self
            .block
            .get(self.at..self.at + length)
            .ok_or_else(|| corrupt("a block ends inside an entry"))?;
        self.at += length;
        Ok(bytes)
    }

    fn next_entry(&mut self) -> Result<Option<EntryRef<'a>>, ProjectionError> {
        if self.left == 0 {
            if self.at != self.block.len() {
                return Err(corrupt("a block has bytes after its last entry"));
            }
            return Ok(None);
        }
        self.left -= 1;
        let key_length = u16::from_be_bytes(self.take(2)?.try_into().expect("two bytes"));
        let key = self.take(key_length as usize)?;
        let value_length = u32::from_be_bytes(self.take(4)?.try_into().expect("four bytes"));
        let value = self.take(value_length as usize)?;
        match self.previous {
            None if key != self.first => {
                return Err(corrupt("a block's key does not name its first entry"));
            }
            Some(previous) if previous >= key => {
                return Err(corrupt("the keys of a block do not increase"));
            }
            _ => {}
        }
        self.previous = Some(key);
        Ok(Some((key, value)))
    }
}

/// Reads a whole block (`BlockEntries` checks it); an empty block is corrupt too.
fn decode_block(first: &[u8], block: &[u8]) -> Result<Vec<Entry>, ProjectionError> {
    let mut reader = BlockEntries::new(first, block)?;
    let mut entries = Vec::with_capacity(reader.left);
    while let Some((key, value)) = reader.next_entry()? {
        entries.push((key.to_vec(), value.to_vec()));
    }
    if entries.is_empty() {
        return Err(corrupt("a block holds no entry"));
    }
    Ok(entries)
}

/// Writes one pack: `entries` in strictly increasing key order (plain keys of packed read
/// models, `TOMBSTONE` for a removal), in blocks, each a single sled insert.
/// The pack is not read until its directory key is written, which the caller does (with
/// the checkpoint it belongs to). Returns the number of entries and the filter of their
/// member record keys.
pub(crate) fn write_blocks(
    tree: &sled::Tree,
    id: u32,
    entries: impl IntoIterator<Item = Result<(Vec<u8>, Vec<u8>), ProjectionError>>,
) -> Result<(u64, MemberFilter), ProjectionError> {
    let mut member_keys = MemberKeys::default();
    let mut block: Vec<(Vec<u8>, Vec<u8>)> = Vec::with_capacity(PACK_BLOCK_ENTRIES_MAX);
    let mut block_bytes = 0usize;
    let mut written = 0u64;
    // The last key of the blocks written so far: the order check compares each key with
    // the one before it, in the block or, for a block's first, here (one copy per block,
    // not one per entry).
    let mut last_written: Option<Vec<u8>> = None;
    let flush = |block: &mut Vec<(Vec<u8>, Vec<u8>)>| -> Result<(), ProjectionError> {
        if let Some((first, _)) = block.first() {
            tree.insert(block_key(id, first), encode_block(block))?;
        }
        block.clear();
        Ok(())
    };
    for entry in entries {
        let (key, value) = entry?;
        assert!(
            is_packed_key(&key),
            "a pack holds only the packed read models"
        );
        let previous = block
            .last()
            .map(|(previous, _)| previous)
            .or(last_written.as_ref());
        assert!(
            previous.is_none_or(|previous| *previous < key),
            "pack entries must strictly increase"
        );
        member_keys.add(&key);
        if block.len() >= PACK_BLOCK_ENTRIES_MAX
            || (!block.is_empty() && block_bytes + key.len() + value.len() > PACK_BLOCK_BYTES_MAX)
        {
            last_written = block.last().map(|(key, _)| key.clone());
            flush(&mut block)?;
            block_bytes = 0;
        }
        block_bytes += 6 + key.len() + value.len();
        block.push((key, value));
        written += 1;
    }
    flush(&mut block)?;
    Ok((written, member_keys.into_filter()))
}

/// Removes every block of a pack (its directory key is the caller's).
pub(crate) fn remove_blocks(tree: &sled::Tree, id: u32) -> Result<(), ProjectionError> {
    for item in tree.scan_prefix(pack_prefix(id)) {
        let (key, _) = item?;
        tree.remove(key)?;
    }
    Ok(())
}

/// What the layers hold for a plain key.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Lookup {
    /// The entry's value, `None` when absent or removed.
    pub value: Option<Vec<u8>>,
    /// Whether some pack holds a live value for the key, so that removing it needs a
    /// tombstone in the plain keys rather than a removal.
    pub held_by_pack: bool,
    /// Whether the plain layer has the key (a value or a tombstone). A later write of the
    /// key must then stay a plain key: a new pack below it would be hidden by it.
    pub plain: bool,
}

/// The entry of one pack for a key: `Some(value)` (empty: a tombstone) or `None`.
fn pack_get(tree: &sled::Tree, id: u32, key: &[u8]) -> Result<Option<Vec<u8>>, ProjectionError> {
    let prefix = pack_prefix(id);
    let Some(item) = tree.range(prefix.clone()..=block_key(id, key)).next_back() else {
        return Ok(None);
    };
    let (block_key, block) = item?;
    Ok(find_in_block(&block_key[prefix.len()..], &block, key)?.map(<[u8]>::to_vec))
}

/// The value of `key` in a block, read in place: a point lookup runs once per pack for every
/// member a rebuild or the live projector touches, so it allocates nothing.
fn find_in_block<'a>(
    first: &'a [u8],
    block: &'a [u8],
    key: &[u8],
) -> Result<Option<&'a [u8]>, ProjectionError> {
    let mut reader = BlockEntries::new(first, block)?;
    while let Some((entry, value)) = reader.next_entry()? {
        match entry.cmp(key) {
            std::cmp::Ordering::Less => {}
            std::cmp::Ordering::Equal => return Ok(Some(value)),
            std::cmp::Ordering::Greater => return Ok(None),
        }
    }
    Ok(None)
}

/// A plain key of a packed read model through every layer.
pub(crate) fn get(
    tree: &sled::Tree,
    packs: &PackList,
    key: &[u8],
) -> Result<Lookup, ProjectionError> {
    get_in_layers(tree, packs, key, true)
}

/// `get` for a key the caller knows the plain layer does not have (it found no plain key
/// in the key's range), which spares the plain layer's lookup.
pub(crate) fn get_from_packs(
    tree: &sled::Tree,
    packs: &PackList,
    key: &[u8],
) -> Result<Lookup, ProjectionError> {
    debug_assert!(tree.get(key)?.is_none(), "the plain layer has the key");
    get_in_layers(tree, packs, key, false)
}

fn get_in_layers(
    tree: &sled::Tree,
    packs: &PackList,
    key: &[u8],
    read_plain: bool,
) -> Result<Lookup, ProjectionError> {
    assert_eq!(
        key.first(),
        Some(&PREFIX_MEMBER),
        "point lookups through the packs are of member records, which their filters hold"
    );
    let plain = if read_plain { tree.get(key)? } else { None };
    let mut lookup = Lookup {
        value: plain
            .as_ref()
            .filter(|value| !is_tombstone(value))
            .map(|value| value.to_vec()),
        held_by_pack: false,
        plain: plain.is_some(),
    };
    let hashes = key_hashes(key);
    for (id, filter) in packs.newest_first() {
        if !filter.may_contain_hashes(hashes) {
            continue;
        }
        if let Some(value) = pack_get(tree, id, key)? {
            lookup.held_by_pack = !is_tombstone(&value);
            if plain.is_none() {
                lookup.value = (!is_tombstone(&value)).then_some(value);
            }
            break;
        }
    }
    Ok(lookup)
}

/// One pack's entries in a range, read block by block, in either direction.
struct PackCursor {
    blocks: Box<dyn Iterator<Item = sled::Result<(sled::IVec, sled::IVec)>> + Send>,
    prefix_length: usize,
    /// The entries of the block being read, in the order they are yielded (reversed
    /// blocks are reversed here).
    pending: std::vec::IntoIter<Entry>,
    lower: Bound<Vec<u8>>,
    upper: Bound<Vec<u8>>,
    descending: bool,
}

impl PackCursor {
    fn new(
        tree: &sled::Tree,
        id: u32,
        lower: &Bound<Vec<u8>>,
        upper: &Bound<Vec<u8>>,
        descending: bool,
    ) -> Result<Self, ProjectionError> {
        let prefix = pack_prefix(id);
        let end = prefix_end(&prefix).expect("a pack prefix is not all 0xff");
        let blocks: Box<dyn Iterator<Item = sled::Result<(sled::IVec, sled::IVec)>> + Send> =
            if descending {
                // From the block that may hold the upper bound, backwards.
                let start = match upper {
                    Bound::Included(key) | Bound::Excluded(key) => block_key(id, key),
                    Bound::Unbounded => end.clone(),
                };
                Box::new(tree.range(prefix.clone()..=start).rev())
            } else {
                // From the block that may hold the lower bound, forwards.
                let start = match lower {
                    Bound::Included(key) | Bound::Excluded(key) => tree
                        .range(prefix.clone()..=block_key(id, key))
                        .next_back()
                        .transpose()?
                        .map_or_else(|| prefix.clone(), |(key, _)| key.to_vec()),
                    Bound::Unbounded => prefix.clone(),
                };
                Box::new(tree.range(start..end))
            };
        Ok(Self {
            blocks,
            prefix_length: prefix.len(),
            pending: Vec::new().into_iter(),
            lower: lower.clone(),
            upper: upper.clone(),
            descending,
        })
    }

    fn above_lower(&self, key: &[u8]) -> bool {
        match &self.lower {
            Bound::Included(lower) => key >= lower.as_slice(),
            Bound::Excluded(lower) => key > lower.as_slice(),
            Bound::Unbounded => true,
        }
    }

    fn below_upper(&self, key: &[u8]) -> bool {
        match &self.upper {
            Bound::Included(upper) => key <= upper.as_slice(),
            Bound::Excluded(upper) => key < upper.as_slice(),
            Bound::Unbounded => true,
        }
    }

    fn next_entry(&mut self) -> Result<Option<Entry>, ProjectionError> {
        loop {
            while let Some((key, value)) = self.pending.next() {
                let inside = self.above_lower(&key) && self.below_upper(&key);
                if inside {
                    return Ok(Some((key, value)));
                }
                // Past the far bound: nothing further in this direction.
                if (self.descending && !self.above_lower(&key))
                    || (!self.descending && !self.below_upper(&key))
                {
                    self.pending = Vec::new().into_iter();
                    self.blocks = Box::new(std::iter::empty());
                    return Ok(None);
                }
            }
            let Some(item) = self.blocks.next() else {
                return Ok(None);
            };
            let (key, block) = item?;
            let mut entries = decode_block(&key[self.prefix_length..], &block)?;
            if self.descending {
                entries.reverse();
            }
            self.pending = entries.into_iter();
        }
    }
}

enum Source {
    Plain(Box<dyn Iterator<Item = sled::Result<(sled::IVec, sled::IVec)>> + Send>),
    Pack(PackCursor),
}

impl Source {
    fn next_entry(&mut self) -> Result<Option<Entry>, ProjectionError> {
        match self {
            Source::Plain(items) => Ok(items
                .next()
                .transpose()?
                .map(|(key, value)| (key.to_vec(), value.to_vec()))),
            Source::Pack(cursor) => cursor.next_entry(),
        }
    }
}

/// The entries of a packed read model in a key range, through every layer: each key once,
/// with its newest value, removed ones left out. Both bounds must lie in one read model.
pub(crate) struct Merged {
    /// Held while the merge reads, so that no pack it reads is retired meanwhile.
    _packs: PackIds,
    /// The plain keys first, then the packs newest first: on equal keys the first wins.
    sources: Vec<Source>,
    heads: Vec<Option<Entry>>,
    /// The source of the last entry and the source with the best other head then
    /// (`None`: no other source had one), while no other head has moved since.
    winner: Option<(usize, Option<usize>)>,
    started: bool,
    descending: bool,
}

impl Merged {
    pub(crate) fn new(
        tree: &sled::Tree,
        packs: &PackIds,
        lower: Bound<Vec<u8>>,
        upper: Bound<Vec<u8>>,
        descending: bool,
    ) -> Result<Self, ProjectionError> {
        let plain = tree.range((lower.clone(), upper.clone()));
        let mut sources = vec![Source::Plain(if descending {
            Box::new(plain.rev())
        } else {
            Box::new(plain)
        })];
        for id in packs.iter().rev() {
            sources.push(Source::Pack(PackCursor::new(
                tree, *id, &lower, &upper, descending,
            )?));
        }
        let heads = sources.iter().map(|_| None).collect();
        Ok(Self {
            _packs: PackIds::clone(packs),
            sources,
            heads,
            winner: None,
            started: false,
            descending,
        })
    }

    /// Whether head `key` comes before head `other` in the merge's direction.
    fn before(&self, key: &[u8], other: &[u8]) -> bool {
        if self.descending {
            key > other
        } else {
            key < other
        }
    }

    fn next_entry(&mut self) -> Result<Option<Entry>, ProjectionError> {
        if !self.started {
            self.started = true;
            for (head, source) in self.heads.iter_mut().zip(&mut self.sources) {
                *head = source.next_entry()?;
            }
        }
        loop {
            // The source that won last time wins again, without a scan of every head, while
            // its next key comes strictly before the best head of the other sources: those
            // did not move since. A digest reads millions of entries through a dozen packs
            // whose ranges barely overlap, and the scan compared every head for each entry.
            let repeat = self.winner.filter(|(chosen, runner_up)| {
                let Some((key, _)) = &self.heads[*chosen] else {
                    return false;
                };
                runner_up.is_none_or(|other| {
                    let other = &self.heads[other]
                        .as_ref()
                        .expect("a runner-up has a head")
                        .0;
                    self.before(key, other)
                })
            });
            let chosen = match repeat {
                Some((chosen, _)) => chosen,
                None => {
                    let mut best: Option<usize> = None;
                    let mut runner_up: Option<usize> = None;
                    for index in 0..self.heads.len() {
                        let Some((key, _)) = &self.heads[index] else {
                            continue;
                        };
                        let head = |at: usize| &self.heads[at].as_ref().expect("a head").0;
                        // On equal keys the first (newest) layer stays best.
                        if best.is_none_or(|best| self.before(key, head(best))) {
                            runner_up = best;
                            best = Some(index);
                        } else if runner_up.is_none_or(|other| self.before(key, head(other))) {
                            runner_up = Some(index);
                        }
                    }
                    let Some(best) = best else {
                        return Ok(None);
                    };
                    self.winner = Some((best, runner_up));
                    best
                }
            };
            let (key, value) = self.heads[chosen].take().expect("chosen has a head");
            self.heads[chosen] = self.sources[chosen].next_entry()?;
            if repeat.is_none() {
                // Older layers' entries of the same key are hidden by this one. A repeat
                // won strictly, so no other head holds its key.
                for index in chosen + 1..self.sources.len() {
                    if self.heads[index]
                        .as_ref()
                        .is_some_and(|(other, _)| *other == key)
                    {
                        self.heads[index] = self.sources[index].next_entry()?;
                        // The runner-up may have moved: the next entry scans again.
                        self.winner = None;
                    }
                }
            }
            if !is_tombstone(&value) {
                return Ok(Some((key, value)));
            }
        }
    }
}

impl Iterator for Merged {
    type Item = Result<Entry, ProjectionError>;

    fn next(&mut self) -> Option<Self::Item> {
        self.next_entry().transpose()
    }
}

/// The entries under a key prefix of a packed read model, ascending.
pub(crate) fn scan_prefix(
    tree: &sled::Tree,
    packs: &PackIds,
    prefix: &[u8],
) -> Result<Merged, ProjectionError> {
    let upper = prefix_end(prefix).map_or(Bound::Unbounded, Bound::Excluded);
    Merged::new(tree, packs, Bound::Included(prefix.to_vec()), upper, false)
}

/// Merges packs into one new pack `into` (a rebuild's; nothing reads them meanwhile):
/// every key once with its newest value. Tombstones are kept unless `drop_tombstones`
/// (allowed when the merged packs are all the generation has, so nothing older remains
/// for a tombstone to hide). Returns the number of entries written and their filter.
pub(crate) fn merge_into(
    tree: &sled::Tree,
    packs: &[u32],
    into: u32,
    drop_tombstones: bool,
) -> Result<(u64, MemberFilter), ProjectionError> {
    let mut sources: Vec<PackCursor> = packs
        .iter()
        .rev()
        .map(|id| PackCursor::new(tree, *id, &Bound::Unbounded, &Bound::Unbounded, false))
        .collect::<Result<_, _>>()?;
    let mut heads: Vec<Option<Entry>> = sources
        .iter_mut()
        .map(PackCursor::next_entry)
        .collect::<Result<_, _>>()?;
    let entries = std::iter::from_fn(|| {
        loop {
            let chosen = heads
                .iter()
                .enumerate()
                .filter_map(|(index, head)| head.as_ref().map(|(key, _)| (index, key)))
                .min_by(|left, right| left.1.cmp(right.1).then(left.0.cmp(&right.0)))
                .map(|(index, _)| index)?;
            let (key, value) = heads[chosen].take().expect("chosen has a head");
            let advance =
                |index: usize, heads: &mut Vec<Option<Entry>>, sources: &mut Vec<PackCursor>| {
                    sources[index].next_entry().map(|next| heads[index] = next)
                };
            if let Err(error) = advance(chosen, &mut heads, &mut sources) {
                return Some(Err(error));
            }
            for index in chosen + 1..sources.len() {
                if heads[index]
                    .as_ref()
                    .is_some_and(|(other, _)| *other == key)
                    && let Err(error) = advance(index, &mut heads, &mut sources)
                {
                    return Some(Err(error));
                }
            }
            if drop_tombstones && is_tombstone(&value) {
                continue;
            }
            return Some(Ok((key, value)));
        }
    });
    write_blocks(tree, into, entries)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn tree() -> sled::Tree {
        sled::Config::new()
            .temporary(true)
            .open()
            .unwrap()
            .open_tree("t")
            .unwrap()
    }

    fn member(email: &str) -> Vec<u8> {
        let mut key = vec![PREFIX_MEMBER];
        key.extend_from_slice(b"L1\0");
        key.extend_from_slice(email.as_bytes());
        key
    }

    /// The tests write "" for a tombstone.
    fn stored(value: &str) -> Vec<u8> {
        if value.is_empty() {
            TOMBSTONE.to_vec()
        } else {
            value.as_bytes().to_vec()
        }
    }

    fn pack(tree: &sled::Tree, id: u32, entries: &[(&str, &str)]) {
        let entries: Vec<_> = entries
            .iter()
            .map(|(email, value)| Ok((member(email), stored(value))))
            .collect();
        let (count, _) = write_blocks(tree, id, entries).unwrap();
        tree.insert(directory_key(id), &count.to_be_bytes())
            .unwrap();
    }

    fn emails(entries: impl Iterator<Item = Result<Entry, ProjectionError>>) -> Vec<String> {
        entries
            .map(|entry| {
                let (key, value) = entry.unwrap();
                format!(
                    "{}={}",
                    String::from_utf8_lossy(&key[4..]),
                    String::from_utf8_lossy(&value)
                )
            })
            .collect()
    }

    /// A model of the layering: packs oldest first, then the plain keys.
    fn model(layers: &[Vec<(String, String)>]) -> BTreeMap<String, String> {
        let mut view = BTreeMap::new();
        for layer in layers {
            for (email, value) in layer {
                view.insert(email.clone(), value.clone());
            }
        }
        view.retain(|_, value| !value.is_empty());
        view
    }

    #[test]
    fn live_merges_take_the_newest_run_of_one_size_once_it_is_long_enough() {
        // Runs of about one size (each at most twice the largest newer one) are merged at
        // the fanout; too many packs merge the newest run, or the newest two.
        assert_eq!(live_merge_start(&[], 4, 3), None);
        assert_eq!(live_merge_start(&[10], 4, 3), None);
        assert_eq!(live_merge_start(&[100, 10, 10], 4, 3), None);
        assert_eq!(live_merge_start(&[100, 10, 10, 10], 4, 3), Some(1));
        assert_eq!(live_merge_start(&[100, 30, 20, 10], 4, 3), Some(1));
        assert_eq!(live_merge_start(&[100, 50, 20, 10], 4, 3), None);
        assert_eq!(live_merge_start(&[100, 50, 20, 10, 5], 4, 3), Some(2));
        assert_eq!(live_merge_start(&[100, 50, 20, 10, 1], 4, 3), Some(3));
        assert_eq!(live_merge_start(&[10, 10, 10], 4, usize::MAX), None);
        assert_eq!(
            live_merge_start(&[10, 10, 10, 10, 10], 4, usize::MAX),
            Some(0)
        );
    }

    #[test]
    fn a_member_filter_holds_every_key_it_was_given_and_few_others() {
        // AUD-5: a filter that said no to a key its pack holds would hide a member; one that
        // said yes to most keys would read every pack again.
        let mut keys = MemberKeys::default();
        for index in 0..10_000 {
            keys.add(&member(&format!("held{index}")));
            // Other read models are not looked up through the filter and stay out of it.
            keys.add(&[PREFIX_USER_LICENSE, index as u8]);
        }
        let filter = keys.into_filter();
        assert!((0..10_000).all(|index| filter.may_contain(&member(&format!("held{index}")))));
        let false_positives = (0..10_000)
            .filter(|index| filter.may_contain(&member(&format!("other{index}"))))
            .count();
        assert!(
            false_positives < 30,
            "{false_positives} of 10,000 absent keys passed the filter"
        );
        assert!(
            !MemberKeys::default()
                .into_filter()
                .may_contain(&member("anyone"))
        );
    }

    #[test]
    fn a_member_filter_rules_out_the_licenses_its_pack_has_no_member_of() {
        // AUD-5: the license filter may only say no for a license none of whose members the
        // pack holds; for those it says no almost always, which spares the member filter.
        let key = |license: usize, email: &str| {
            crate::keys::pair(
                PREFIX_MEMBER,
                format!("L{license}").as_bytes(),
                email.as_bytes(),
            )
        };
        assert_eq!(license_scope(&key(7, "a@b.c")), b"\x02L7\0");
        assert_eq!(license_scope(b"\x02L7"), b"\x02L7");
        let mut keys = MemberKeys::default();
        for license in 0..1_000 {
            for index in 0..10 {
                keys.add(&key(license, &format!("user{index}@north.edu")));
            }
        }
        let filter = keys.into_filter();
        assert!((0..1_000).all(|license| filter.may_contain(&key(license, "user3@north.edu"))));
        let passed = (1_000..11_000)
            .filter(|license| {
                filter
                    .licenses
                    .may_contain_hash(key_hashes(&key(*license, "x")).license)
            })
            .count();
        assert!(
            passed < 30,
            "{passed} of 10,000 absent licenses passed the filter"
        );
        // The license filter holds each license once: a thousand licenses, not ten thousand keys.
        assert_eq!(
            filter.licenses.bits.len(),
            Bloom::of(&[0; 1_000]).bits.len()
        );
    }

    #[test]
    #[should_panic(expected = "pack entries must strictly increase")]
    fn a_pack_refuses_a_key_out_of_order_across_its_blocks() {
        // AUD-5: a pack's blocks are searched by their first keys; a key out of order,
        // even the first of a block after the one before it, would hide entries.
        let tree = tree();
        let entries = (0..PACK_BLOCK_ENTRIES_MAX)
            .map(|index| member(&format!("user{index:04}")))
            .chain([member("user0000")])
            .map(|key| Ok((key, b"v".to_vec())));
        let _ = write_blocks(&tree, 1, entries);
    }

    #[test]
    fn newer_layers_hide_older_ones_and_tombstones_hide_entries() {
        // AUD-5: a rebuilt generation's packs and the live keys over them read as one
        // read model.
        let tree = tree();
        pack(
            &tree,
            1,
            &[("a", "a1"), ("b", "b1"), ("c", "c1"), ("d", "d1")],
        );
        pack(&tree, 2, &[("b", "b2"), ("c", ""), ("e", "e2")]);
        tree.insert(member("a"), TOMBSTONE).unwrap();
        tree.insert(member("d"), &b"d0"[..]).unwrap();
        tree.insert(member("f"), &b"f0"[..]).unwrap();
        let ids = PackIds::new(PackList::load(&tree).unwrap());
        assert_eq!(ids.to_vec(), vec![1, 2]);
        let all = |descending| {
            emails(
                Merged::new(
                    &tree,
                    &ids,
                    Bound::Included(member("")),
                    Bound::Excluded(prefix_end(&member("")).unwrap()),
                    descending,
                )
                .unwrap(),
            )
        };
        assert_eq!(all(false), ["b=b2", "d=d0", "e=e2", "f=f0"]);
        assert_eq!(all(true), ["f=f0", "e=e2", "d=d0", "b=b2"]);
        assert_eq!(
            get(&tree, &ids, &member("a")).unwrap(),
            Lookup {
                value: None,
                held_by_pack: true,
                plain: true
            }
        );
        assert_eq!(
            get(&tree, &ids, &member("c")).unwrap(),
            Lookup {
                value: None,
                held_by_pack: false,
                plain: false
            }
        );
        assert_eq!(
            get(&tree, &ids, &member("d")).unwrap(),
            Lookup {
                value: Some(b"d0".to_vec()),
                held_by_pack: true,
                plain: true
            }
        );
        assert_eq!(
            get(&tree, &ids, &member("f")).unwrap(),
            Lookup {
                value: Some(b"f0".to_vec()),
                held_by_pack: false,
                plain: true
            }
        );
        // The merge of both packs alone: the newer pack's values and tombstones win, and
        // the tombstones go when nothing older is left.
        merge_into(&tree, &ids, 3, true).unwrap();
        let mut cursor =
            PackCursor::new(&tree, 3, &Bound::Unbounded, &Bound::Unbounded, false).unwrap();
        let merged = emails(std::iter::from_fn(|| cursor.next_entry().transpose()));
        assert_eq!(merged, ["a=a1", "b=b2", "d=d1", "e=e2"]);
        merge_into(&tree, &ids, 4, false).unwrap();
        assert_eq!(
            pack_get(&tree, 4, &member("c")).unwrap(),
            Some(TOMBSTONE.to_vec()),
            "a merge that leaves older packs keeps its tombstones"
        );
    }

    #[test]
    fn a_damaged_block_is_reported_as_corrupt_not_read() {
        // AUD-5: a block that does not hold what its writer guarantees is an error to
        // rebuild from the log, never a wrong answer.
        let entries = vec![(member("a"), b"1".to_vec()), (member("b"), b"2".to_vec())];
        let block = encode_block(&entries);
        assert_eq!(decode_block(&member("a"), &block).unwrap(), entries);
        assert_eq!(
            find_in_block(&member("a"), &block, &member("b")).unwrap(),
            Some(&b"2"[..])
        );
        let corrupt_reason = |result: Result<Vec<Entry>, ProjectionError>| match result {
            Err(ProjectionError::Corrupt { reason, .. }) => reason,
            other => panic!("not corrupt: {other:?}"),
        };
        assert!(corrupt_reason(decode_block(&member("b"), &block)).contains("first entry"));
        assert!(
            corrupt_reason(decode_block(&member("a"), &block[..block.len() - 1]))
                .contains("ends inside")
        );
        let mut longer = block.clone();
        longer.push(0);
        assert!(corrupt_reason(decode_block(&member("a"), &longer)).contains("after its last"));
        let unordered = encode_block(&[entries[1].clone(), entries[0].clone()]);
        assert!(corrupt_reason(decode_block(&member("b"), &unordered)).contains("increase"));
        assert!(find_in_block(&member("b"), &unordered, &member("c")).is_err());
    }

    #[test]
    fn many_blocks_read_as_the_model_in_any_range_and_direction() {
        // AUD-5: packs of several blocks each, random layers, every range.
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut random = move |below: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % below
        };
        for round in 0..6 {
            let tree = tree();
            let mut layers: Vec<Vec<(String, String)>> = Vec::new();
            for id in 1..=3u32 {
                let mut entries: BTreeMap<String, String> = BTreeMap::new();
                for _ in 0..random(400) {
                    let email = format!("user{:04}", random(500));
                    let value = if random(5) == 0 {
                        String::new()
                    } else {
                        format!("p{id}r{round}")
                    };
                    entries.insert(email, value);
                }
                let pairs: Vec<(&str, &str)> = entries
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.as_str()))
                    .collect();
                pack(&tree, id, &pairs);
                layers.push(entries.into_iter().collect());
            }
            let mut plain = Vec::new();
            for _ in 0..random(100) {
                let email = format!("user{:04}", random(500));
                let value = if random(3) == 0 {
                    String::new()
                } else {
                    "live".into()
                };
                tree.insert(member(&email), stored(&value)).unwrap();
                plain.push((email, value));
            }
            layers.push(plain);
            let view = model(&layers);
            let ids = PackIds::new(PackList::load(&tree).unwrap());
            for _ in 0..40 {
                let (mut from, mut to) = (random(520), random(520));
                if from > to {
                    std::mem::swap(&mut from, &mut to);
                }
                let (from, to) = (format!("user{from:04}"), format!("user{to:04}"));
                let expected: Vec<String> = view
                    .range(from.clone()..to.clone())
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect();
                let descending = random(2) == 0;
                let merged = emails(
                    Merged::new(
                        &tree,
                        &ids,
                        Bound::Included(member(&from)),
                        Bound::Excluded(member(&to)),
                        descending,
                    )
                    .unwrap(),
                );
                let mut expected = expected;
                if descending {
                    expected.reverse();
                }
                assert_eq!(
                    merged, expected,
                    "range {from}..{to}, descending {descending}"
                );
            }
            for email in (0..500).map(|n| format!("user{n:04}")) {
                let value = get(&tree, &ids, &member(&email)).unwrap().value;
                assert_eq!(
                    value.map(|v| String::from_utf8(v).unwrap()),
                    view.get(&email).cloned(),
                    "{email}"
                );
            }
        }
    }
}
