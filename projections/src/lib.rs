//! Read models built from the event log alone (ARCHITECTURE.md: "the log is the only
//! truth"). A projector feeds `ProjectedEvent`s in log order to `Projections::apply_batch`;
//! queries (SPEC §11) read sled. Every batch is written atomically with the checkpoint
//! (AUD-6), the read models have a deterministic digest (AUD-5), and a projection whose
//! schema changes is rebuilt into a fresh generation and swapped in (docs/projections.md).

mod apply;
mod cache;
mod keys;
mod packs;
mod queries;
mod records;

use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use chrono::{DateTime, Utc};
use domain::Actor;
use domain::events::Event;
use sha2::{Digest as _, Sha256};
use tokio::sync::watch;

pub use queries::{
    Bucket, LicenseView, ListUsersRequest, MemberView, PAGE_TOKEN_LENGTH_MAX_CHARS, UsageBucket,
    UserLicense, UsersPage, check_usage_range,
};
pub use records::StatusCounts;

/// The version of the key layout and record encodings. Changing it makes `open` report
/// `needs_rebuild`, and the projector rebuilds a fresh generation from the log.
/// Version 3 dropped the sled sort index (prefix `03`): sorted and filtered pages are
/// chosen from the in-memory member lists (`cache`). Version 4 keeps a license's open usage
/// day and open history block in its license record, and a membership's latest positions
/// of the user's history in its member record, instead of under their own keys. Version 5
/// lets a rebuild write the member records and user -> license keys as packs (`packs`),
/// and the live projector tombstones over them; a binary of version 4 would not see them.
/// Version 6 stores the records' timestamps as seconds and nanoseconds, not as strings.
/// Version 7 stores each record's fields as an array, without their names (`records`).
pub const PROJECTION_SCHEMA_VERSION: u32 = 7;
/// The most events one `apply_batch` takes. It bounds the memory of one computed batch,
/// and above all sled's: sled keeps every node version a batch replaces until the batch
/// ends, so the peak RSS grows with the batch (measured: 10,000 UserAdded events peaked
/// at about 1.1 GiB, 2,000 at about 300 MiB, for the same speed).
pub const APPLY_BATCH_EVENTS_MAX: usize = 2_000;
/// The most events one live `Projections::apply_batch` takes; it splits them into atomic
/// batches by its `LiveBudget`. It bounds the events and the fold held in memory at once.
pub const LIVE_APPLY_EVENTS_MAX: usize = 8_192;
/// the most rows one ListUsers page holds.
pub const LIST_USERS_PAGE_SIZE_MAX: usize = 1_000;
/// How many licenses keep their member list in memory for Q-2's `%pattern%` searches,
/// sort orders and filters.
pub const MEMBER_CACHE_LICENSES_MAX: usize = 32;
/// The memory those member lists may take in all (a million members with emails of 30
/// characters take about 55 MiB). A license larger than this is loaded from sled for
/// every such query and not kept.
pub const MEMBER_CACHE_BYTES_MAX: usize = 256 << 20;
/// Member changes kept beside a cached member list before they are merged into it.
pub const MEMBER_CACHE_PENDING_CHANGES_MAX: usize = 100_000;
/// sled's page cache (its default is 1 GiB). The projections are rebuilt from the log
/// when lost, so the cache only trades query speed for memory. sled's nodes take about
/// three times this in memory; 32 MiB instead of 64 took about 70 MiB off the server's RSS
/// during a 1,000,000-row import, at the same speed (BENCHMARKS.md, session 7).
pub const SLED_CACHE_CAPACITY_BYTES: u64 = 32 << 20;
/// How often `open` retries a directory whose lock a just-dropped `Projections` still
/// holds, and how long it waits between tries (two seconds in all).
const OPEN_LOCK_ATTEMPTS_MAX: u32 = 200;
const OPEN_LOCK_RETRY_INTERVAL: Duration = Duration::from_millis(10);
/// the most buckets one usage query answers.
pub const USAGE_BUCKETS_MAX: usize = 1_000;
/// the most positions one block of a license's history holds (4 KiB of positions):
/// a license's history costs one sled key per this many events instead of one per event.
pub const HISTORY_BLOCK_POSITIONS_MAX: usize = 512;
/// the most positions of a user's history one member record holds before they move
/// under the user's history keys (one key per position).
pub const MEMBER_HISTORY_POSITIONS_MAX: usize = 16;
/// the most positions one history page holds.
pub const HISTORY_PAGE_SIZE_MAX: usize = 10_000;
/// the most licenses or domains listed for one user.
pub const USER_LISTING_ROWS_MAX: usize = 10_000;
/// The most threads one digest runs on (one read model each at a time).
const DIGEST_THREADS_MAX: usize = 4;

/// One event of the log as the projections need it. The server converts the ledger's
/// envelopes into these, so this crate does not depend on the ledger.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProjectedEvent {
    /// Global log position, strictly increasing.
    pub position: u64,
    /// `license-<id>` or `domain-<name>`.
    pub stream: String,
    /// Revision within the stream.
    pub revision: u64,
    pub recorded_at: DateTime<Utc>,
    pub actor: Actor,
    pub event: Event,
}

/// Why a projection operation failed. Bugs (an event applied twice) are assertions, not
/// errors.
#[derive(Debug, thiserror::Error)]
pub enum ProjectionError {
    #[error("the projection store failed: {0}")]
    Storage(#[from] sled::Error),
    #[error("a stored {what} does not decode ({reason}); rebuild the projections from the log")]
    Corrupt { what: &'static str, reason: String },
    #[error("the stream name '{0}' is neither license-<id> nor domain-<name>")]
    UnknownStream(String),
    #[error("a batch of {events} events is too large; at most {max} are applied at once")]
    BatchTooLarge { events: usize, max: usize },
    #[error("the page size must be 1 to {max}, not {requested}")]
    InvalidPageSize { requested: usize, max: usize },
    #[error(
        "the page token is malformed or belongs to another sort order; start from the first page"
    )]
    InvalidPageToken,
    #[error("the search pattern is not valid: {0}")]
    InvalidPattern(String),
    #[error("license not found: check the license id")]
    LicenseNotFound,
    #[error("the usage range is empty: 'from' must be earlier than 'to'")]
    EmptyRange,
    #[error("the usage range spans {buckets} buckets; at most {max} are answered at once")]
    TooManyBuckets { buckets: usize, max: usize },
    #[error(
        "the rebuild has applied up to position {rebuild}, behind the live projections at {live}; apply the rest first"
    )]
    RebuildBehind { rebuild: u64, live: u64 },
    #[error("an earlier failure left this rebuild incomplete; start a new rebuild from position 1")]
    RebuildFailed,
    #[error("cannot start the rebuild's writer thread: {0}")]
    WriterThread(std::io::Error),
}

/// `wait_for` gave up: the projections had not reached the position in time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("the projections reached position {checkpoint}, not {position}, within the timeout")]
pub struct WaitTimeout {
    pub position: u64,
    pub checkpoint: u64,
}

/// A column Q-2 sorts by.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SortColumn {
    Email,
    Status,
    Source,
    Role,
    AddedAt,
    AddedBy,
}

impl SortColumn {
    pub(crate) fn code(self) -> u8 {
        match self {
            Self::Email => 0,
            Self::Status => 1,
            Self::Source => 2,
            Self::Role => 3,
            Self::AddedAt => 4,
            Self::AddedBy => 5,
        }
    }

    pub(crate) fn from_code(code: u8) -> Option<Self> {
        [
            Self::Email,
            Self::Status,
            Self::Source,
            Self::Role,
            Self::AddedAt,
            Self::AddedBy,
        ]
        .into_iter()
        .find(|column| column.code() == code)
    }

    /// The API names of the columns.
    pub fn parse(raw: &str) -> Option<Self> {
        match raw {
            "email" => Some(Self::Email),
            "status" => Some(Self::Status),
            "source" => Some(Self::Source),
            "role" => Some(Self::Role),
            "added_at" => Some(Self::AddedAt),
            "added_by" => Some(Self::AddedBy),
            _ => None,
        }
    }
}

/// The sha256 of one read model's keys and values in key order (AUD-5).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReadModelDigest {
    pub read_model: &'static str,
    pub sha256: [u8; 32],
}

impl ReadModelDigest {
    pub fn to_hex(&self) -> String {
        self.sha256
            .iter()
            .map(|byte| format!("{byte:02x}"))
            .collect()
    }
}

/// How live events are split into atomic batches (each with its checkpoint, AUD-6), and
/// when a batch writes its new members as a pack (`packs`) rather than as plain keys.
///
/// sled pays about 8 us per key written, and a batch of plain keys costs more per key the
/// larger it is (`LIVE_BATCH_EVENTS_MAX`). So a batch of many licenses
/// stays small and plain. A dense batch, one that writes few plain keys per event because
/// its events add or change members of few licenses (an import, an OU sync), goes on
/// much further and writes its member records, user -> license keys and user history keys
/// as one pack: sorted blocks of up to 64 entries per sled key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LiveBudget {
    /// A batch ends after this many events unless it is dense.
    pub batch_events_max: usize,
    /// A batch is dense while it writes at most one plain key per this many events.
    pub dense_events_per_plain_key_min: usize,
    /// A dense batch ends after this many events (it is folded in memory first).
    pub dense_batch_events_max: usize,
    /// A batch writes a pack when at least this many of its entries may go to one.
    pub pack_entries_min: usize,
    /// Above this many packs the newest two are merged, whatever their sizes
    /// (`packs::live_merge_start`).
    pub packs_max: usize,
}

/// `LiveBudget::batch_events_max`: as many as one plain batch cost least per event at.
pub const LIVE_BATCH_EVENTS_MAX: usize = 256;
/// `LiveBudget::dense_events_per_plain_key_min`.
pub const LIVE_DENSE_EVENTS_PER_PLAIN_KEY_MIN: usize = 16;
/// `LiveBudget::pack_entries_min`: below it a pack would mostly add merges.
pub const LIVE_PACK_ENTRIES_MIN: usize = 1_024;
/// `LiveBudget::packs_max`: room for two full runs of `LIVE_MERGE_FANOUT` packs and a
/// partial one; a member lookup checks the filter of each.
pub const LIVE_PACKS_MAX: usize = 40;

impl Default for LiveBudget {
    fn default() -> Self {
        Self {
            batch_events_max: LIVE_BATCH_EVENTS_MAX,
            dense_events_per_plain_key_min: LIVE_DENSE_EVENTS_PER_PLAIN_KEY_MIN,
            dense_batch_events_max: LIVE_APPLY_EVENTS_MAX,
            pack_entries_min: LIVE_PACK_ENTRIES_MIN,
            packs_max: LIVE_PACKS_MAX,
        }
    }
}

impl LiveBudget {
    fn batch_is_full(&self, fold: &apply::BatchApplier) -> bool {
        let events = fold.events();
        events >= self.dense_batch_events_max
            || (events >= self.batch_events_max
                && fold.plain_writes() * self.dense_events_per_plain_key_min > events)
    }
}

/// What only the generation's writer touches: the pack lists it replaced and the packs
/// it retired, so that a pack's blocks go only once no reader can hold a list naming it.
#[derive(Default)]
struct PackWriter {
    /// Lists of pack ids that were published and then replaced; a reader may still hold
    /// one (`Arc::strong_count` above one).
    replaced: Vec<packs::PackIds>,
    /// Packs a merge replaced, whose blocks (and `0f` key) are still stored.
    retired: Vec<u32>,
}

/// One generation: a sled tree holding every read model and its checkpoint.
pub(crate) struct Generation {
    name: String,
    tree: sled::Tree,
    /// The projector is the only writer; the lock turns a second concurrent writer, which
    /// would be a bug, into waiting instead of a corrupted batch.
    writer: Mutex<PackWriter>,
    members: cache::MemberCache,
    /// The ids of the generation's packs, oldest first (`packs`). A rebuild adds and merges
    /// them before the generation answers anything; the live writer adds a pack for a dense
    /// batch and merges packs while queries read (`apply_batch`).
    packs: RwLock<packs::PackIds>,
}

const GENERATION_TREE_PREFIX: &str = "generation-";
const META_TREE: &str = "meta";
const META_CURRENT_KEY: &[u8] = b"current";

impl Generation {
    fn open(db: &sled::Db, name: String) -> Result<Self, ProjectionError> {
        let tree = db.open_tree(name.as_bytes())?;
        // Nothing reads the generation yet, so what a stopped writer left is removed now.
        packs::remove_unreachable(&tree)?;
        let packs = RwLock::new(Arc::new(packs::PackList::load(&tree)?));
        Ok(Self {
            name,
            tree,
            writer: Mutex::new(PackWriter::default()),
            members: cache::MemberCache::default(),
            packs,
        })
    }

    /// The generation's packs, oldest first.
    pub(crate) fn packs(&self) -> packs::PackIds {
        Arc::clone(&self.packs.read().unwrap_or_else(PoisonError::into_inner))
    }

    fn schema_version(&self) -> Result<Option<u32>, ProjectionError> {
        let Some(bytes) = self.tree.get(keys::schema_key())? else {
            return Ok(None);
        };
        let array: [u8; 4] = bytes
            .as_ref()
            .try_into()
            .map_err(|_| ProjectionError::Corrupt {
                what: "schema version",
                reason: "not four bytes".into(),
            })?;
        Ok(Some(u32::from_be_bytes(array)))
    }

    fn checkpoint(&self) -> Result<u64, ProjectionError> {
        let Some(bytes) = self.tree.get(keys::checkpoint_key())? else {
            return Ok(0);
        };
        let array: [u8; 8] = bytes
            .as_ref()
            .try_into()
            .map_err(|_| ProjectionError::Corrupt {
                what: "checkpoint",
                reason: "not eight bytes".into(),
            })?;
        Ok(u64::from_be_bytes(array))
    }

    /// AUD-6: the events in atomic batches (`LiveBudget`), each with its checkpoint, which
    /// `publish` is told once the batch can be read.
    fn apply_batch(
        &self,
        events: &[ProjectedEvent],
        budget: &LiveBudget,
        publish: &dyn Fn(u64),
    ) -> Result<u64, ProjectionError> {
        if events.len() > LIVE_APPLY_EVENTS_MAX {
            return Err(ProjectionError::BatchTooLarge {
                events: events.len(),
                max: LIVE_APPLY_EVENTS_MAX,
            });
        }
        let mut writer = self.writer.lock().unwrap_or_else(PoisonError::into_inner);
        let checkpoint = self.checkpoint()?;
        let Some(last) = events.last() else {
            return Ok(checkpoint);
        };
        assert_positions_increase(checkpoint, events);
        let mut rest = events;
        while !rest.is_empty() {
            let mut fold = apply::BatchApplier::new(&self.tree, self.packs(), true);
            let mut taken = 0;
            for event in rest {
                fold.apply(event)?;
                taken += 1;
                if budget.batch_is_full(&fold) {
                    break;
                }
            }
            let checkpoint = rest[taken - 1].position;
            self.write_live(&mut writer, fold, checkpoint, budget)?;
            publish(checkpoint);
            rest = &rest[taken..];
        }
        Ok(last.position)
    }

    /// Merges packs and removes the retired ones no reader holds. Called after the
    /// checkpoint is published, so a merge never delays what a batch makes visible.
    fn maintain(&self, budget: &LiveBudget) -> Result<(), ProjectionError> {
        let mut writer = self.writer.lock().unwrap_or_else(PoisonError::into_inner);
        self.merge_live_packs(&mut writer, budget.packs_max, packs::LIVE_MERGE_FANOUT)?;
        self.retire_packs(&mut writer)
    }

    /// Writes one live batch with its checkpoint in one atomic sled write: as plain keys,
    /// or, when enough of its entries may go to a pack, their pack's blocks first (nothing
    /// reads them before its directory key is written) and then the plain keys with the
    /// pack's directory key and the checkpoint.
    fn write_live(
        &self,
        writer: &mut PackWriter,
        fold: apply::BatchApplier,
        checkpoint: u64,
        budget: &LiveBudget,
    ) -> Result<(), ProjectionError> {
        let apply::LiveWrites {
            packed,
            mut plain,
            changes,
        } = fold.finish_live();
        let mut published = None;
        if packed.len() >= budget.pack_entries_min {
            let current = self.packs();
            let mut list = packs::PackList::clone(&current);
            let id = current.last().map_or(1, |newest| newest + 1);
            // Blocks a failed attempt left under this id would be read as part of the pack.
            packs::remove_blocks(&self.tree, id)?;
            let (count, filter) = packs::write_blocks(&self.tree, id, packed.into_iter().map(Ok))?;
            plain.push((packs::directory_key(id), Some(count.to_be_bytes().to_vec())));
            list.push(id, filter);
            published = Some(list);
        } else {
            plain.extend(packed.into_iter().map(|(key, value)| (key, Some(value))));
        }
        self.tree
            .apply_batch(apply::checkpoint_batch(plain, checkpoint))?;
        if let Some(ids) = published {
            // Before the member lists change and the checkpoint is published, so that a
            // reader waiting for this position reads the pack.
            self.publish_packs(writer, ids);
        }
        // The in-memory member lists follow only after the write, so a reader that loads
        // a list meanwhile sees the stored state and these idempotent changes fix it up.
        // They follow before the checkpoint is published, so a reader waiting for this
        // position (read-your-writes) finds them in the lists.
        self.members.apply(&changes);
        Ok(())
    }

    fn publish_packs(&self, writer: &mut PackWriter, list: packs::PackList) {
        let replaced = std::mem::replace(
            &mut *self.packs.write().unwrap_or_else(PoisonError::into_inner),
            Arc::new(list),
        );
        writer.replaced.push(replaced);
    }

    /// Merges the newest packs while `packs::live_merge_start` says so. The merged pack
    /// takes the newest id and the place of the packs it replaces, which are retired:
    /// their directory keys go and their `0f` keys come in the same atomic write as the
    /// merged pack's directory key, and their blocks stay until no reader holds them.
    /// Tombstones are dropped only when the oldest pack is merged: nothing below is left
    /// for them to hide, and the plain keys are above every pack.
    fn merge_live_packs(
        &self,
        writer: &mut PackWriter,
        packs_max: usize,
        fanout: usize,
    ) -> Result<(), ProjectionError> {
        loop {
            let directory = packs::load_directory(&self.tree)?;
            let sizes: Vec<u64> = directory.iter().map(|(_, count)| *count).collect();
            let Some(start) = packs::live_merge_start(&sizes, packs_max, fanout) else {
                return Ok(());
            };
            let ids: Vec<u32> = directory.iter().map(|(id, _)| *id).collect();
            let current = self.packs();
            assert_eq!(
                ids[..],
                current[..],
                "the pack directory and the published packs agree"
            );
            let into = ids.last().expect("two packs or more to merge") + 1;
            packs::remove_blocks(&self.tree, into)?;
            let (count, filter) = packs::merge_into(&self.tree, &ids[start..], into, start == 0)?;
            let mut batch = sled::Batch::default();
            batch.insert(packs::directory_key(into), count.to_be_bytes().to_vec());
            for id in &ids[start..] {
                batch.remove(packs::directory_key(*id));
                batch.insert(packs::retired_key(*id), Vec::new());
            }
            self.tree.apply_batch(batch)?;
            writer.retired.extend_from_slice(&ids[start..]);
            let mut merged = current.prefix(start);
            merged.push(into, filter);
            self.publish_packs(writer, merged);
        }
    }

    /// Removes the blocks of retired packs that no reader can reach: no list of pack ids
    /// that names them is held any more (readers hold the list they started with).
    fn retire_packs(&self, writer: &mut PackWriter) -> Result<(), ProjectionError> {
        writer.replaced.retain(|list| Arc::strong_count(list) > 1);
        let mut kept = Vec::new();
        for id in std::mem::take(&mut writer.retired) {
            if writer.replaced.iter().any(|list| list.contains(&id)) {
                kept.push(id);
                continue;
            }
            packs::remove_blocks(&self.tree, id)?;
            self.tree.remove(packs::retired_key(id))?;
        }
        writer.retired = kept;
        Ok(())
    }

    /// AUD-5: one SHA-256 per read model over its keys and values in key order. The read
    /// models are digested side by side, up to `DIGEST_THREADS_MAX` at once: a rebuild
    /// ends with a digest of everything, which took a tenth of its time on one thread.
    fn digest(&self) -> Result<Vec<ReadModelDigest>, ProjectionError> {
        let packs = self.packs();
        let next = std::sync::atomic::AtomicUsize::new(0);
        let threads = std::thread::available_parallelism()
            .map_or(1, usize::from)
            .clamp(1, DIGEST_THREADS_MAX);
        let digest_all = || -> Result<Vec<(usize, ReadModelDigest)>, ProjectionError> {
            let mut done = Vec::new();
            loop {
                let index = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Some((prefix, read_model)) = keys::READ_MODELS.get(index) else {
                    return Ok(done);
                };
                let sha256 = self.digest_read_model(&packs, *prefix)?;
                done.push((index, ReadModelDigest { read_model, sha256 }));
            }
        };
        let mut digests = std::thread::scope(|scope| {
            let helpers: Vec<_> = (1..threads).map(|_| scope.spawn(digest_all)).collect();
            let mut digests = digest_all()?;
            for helper in helpers {
                match helper.join() {
                    Ok(done) => digests.extend(done?),
                    Err(panic) => std::panic::resume_unwind(panic),
                }
            }
            Ok::<_, ProjectionError>(digests)
        })?;
        assert_eq!(
            digests.len(),
            keys::READ_MODELS.len(),
            "every read model is digested once"
        );
        digests.sort_unstable_by_key(|(index, _)| *index);
        Ok(digests.into_iter().map(|(_, digest)| digest).collect())
    }

    fn digest_read_model(
        &self,
        packs: &packs::PackIds,
        prefix: u8,
    ) -> Result<[u8; 32], ProjectionError> {
        let mut hasher = Sha256::new();
        // The read models packs hold are digested through every layer, so that where a
        // member is stored (a pack, a plain key) never changes the digest (AUD-5).
        let items: Box<dyn Iterator<Item = Result<packs::Entry, ProjectionError>>> =
            if packs::is_packed_key(&[prefix]) {
                Box::new(packs::scan_prefix(&self.tree, packs, &[prefix])?)
            } else {
                Box::new(self.tree.scan_prefix([prefix]).map(|item| {
                    item.map(|(key, value)| (key.to_vec(), value.to_vec()))
                        .map_err(ProjectionError::from)
                }))
            };
        for item in items {
            let (key, value) = item?;
            hasher.update((key.len() as u64).to_be_bytes());
            hasher.update(&key);
            hasher.update((value.len() as u64).to_be_bytes());
            hasher.update(&value);
        }
        Ok(hasher.finalize().into())
    }
}

/// Every read model, in one sled database. Cheap to share behind an `Arc`: queries take
/// `&self`, and the one projector calls `apply_batch`.
pub struct Projections {
    db: sled::Db,
    meta: sled::Tree,
    current: RwLock<Arc<Generation>>,
    schema_version: u32,
    checkpoint: watch::Sender<u64>,
    live_budget: LiveBudget,
}

/// Checks that `events` come after position `applied` in strictly increasing order and
/// returns the last one (`applied` for none). Applying a position twice or out of order
/// would double-count members; it can only come from a projector bug, so it stops the
/// process.
fn assert_positions_increase(applied: u64, events: &[ProjectedEvent]) -> u64 {
    let mut previous = applied;
    for event in events {
        assert!(
            event.position > previous,
            "position {} applied after {previous}: positions must strictly increase past the checkpoint",
            event.position
        );
        previous = event.position;
    }
    previous
}

/// How much of the log a rebuild folds in memory before writing it (docs/projections.md,
/// "How a rebuild writes"). A larger chunk coalesces more (a member added and removed within
/// one chunk costs no write at all) but holds more memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RebuildBudget {
    /// The most events folded into one chunk.
    pub chunk_events_max: usize,
    /// The most bytes (estimated) one chunk's fold may hold; the chunk is written as soon
    /// as a batch takes it past this.
    pub chunk_bytes_max: usize,
    /// The most keys of a chunk written in one atomic sled batch with the checkpoint (the
    /// chunk's last keys; the others go first, one insert each).
    pub checkpoint_batch_keys_max: usize,
}

/// A rebuild's default chunk: at most this many events...
pub const REBUILD_CHUNK_EVENTS_MAX: usize = 1_000_000;
/// ... and at most this many bytes of folded state (estimated).
pub const REBUILD_CHUNK_BYTES_MAX: usize = 256 << 20;
/// The most keys of a rebuild's chunk written in one atomic batch with its checkpoint.
pub const REBUILD_CHECKPOINT_BATCH_KEYS_MAX: usize = 1_024;

impl Default for RebuildBudget {
    fn default() -> Self {
        Self {
            chunk_events_max: REBUILD_CHUNK_EVENTS_MAX,
            chunk_bytes_max: REBUILD_CHUNK_BYTES_MAX,
            checkpoint_batch_keys_max: REBUILD_CHECKPOINT_BATCH_KEYS_MAX,
        }
    }
}

/// A generation being rebuilt from the log while the current one keeps answering.
///
/// Nobody reads the generation until it is swapped in, so a rebuild folds a whole chunk
/// of batches in memory (`RebuildBudget`) and writes each key once per chunk, with the
/// checkpoint, instead of once per batch. A full chunk is encoded and written by a writer
/// thread while the next chunk folds on the caller's thread; the next fold reads what the
/// chunk being written changed from the chunk itself (`apply::FoldedChunk`), so the two
/// overlap without either seeing a half-written store. At most one chunk is being written.
pub struct Rebuild {
    generation: Arc<Generation>,
    budget: RebuildBudget,
    /// The chunk being folded; a mutex because the server's projector feeds the rebuild
    /// from blocking tasks through an `Arc`.
    pending: Mutex<RebuildChunk>,
}

/// What a rebuild holds in memory between its writes.
struct RebuildChunk {
    /// The fold of the events applied since the last chunk was handed to a writer, if any.
    fold: Option<apply::BatchApplier>,
    /// The writer thread storing the previous chunk, while there is one.
    writer: Option<ChunkWriter>,
    /// Packs a merge replaced whose blocks are still stored: the fold that was running
    /// during the merge read them. The next writer removes them first.
    retired: Vec<u32>,
    /// The sizes of the last chunk's fold, which the next one reserves at once.
    sizes: apply::FoldSizes,
    /// The last position applied (folded or written).
    applied: u64,
    /// A batch failed to fold or a chunk to be written: the generation misses part of the
    /// log and is no good any more.
    failed: bool,
}

/// A thread writing one finished chunk (`Rebuild::write_chunk`).
struct ChunkWriter {
    /// Gives the packs its merge replaced, if it merged.
    thread: std::thread::JoinHandle<Result<Vec<u32>, ProjectionError>>,
    /// The chunk it writes, which the next fold reads until it is stored.
    folded: Arc<apply::FoldedChunk>,
}

impl Rebuild {
    /// Applies the next events of the log, from position 1 on, and returns the last
    /// position applied. Positions must strictly increase, as for
    /// `Projections::apply_batch`. The events are folded into the current chunk, which is
    /// written once it reaches the budget (and by `flush`, `digest` and `finish_rebuild`).
    pub fn apply_batch(&self, events: &[ProjectedEvent]) -> Result<u64, ProjectionError> {
        if events.len() > APPLY_BATCH_EVENTS_MAX {
            return Err(ProjectionError::BatchTooLarge {
                events: events.len(),
                max: APPLY_BATCH_EVENTS_MAX,
            });
        }
        let mut guard = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
        let chunk = &mut *guard;
        if chunk.failed {
            return Err(ProjectionError::RebuildFailed);
        }
        let previous = assert_positions_increase(chunk.applied, events);
        if events.is_empty() {
            return Ok(chunk.applied);
        }
        self.join_writer(chunk, false)?;
        let fold = chunk.fold.get_or_insert_with(|| {
            let mut fold =
                apply::BatchApplier::new(&self.generation.tree, self.generation.packs(), false);
            fold.reserve(chunk.sizes);
            match &chunk.writer {
                Some(writer) => fold.after(Arc::clone(&writer.folded)),
                None => fold,
            }
        });
        let folded = events.iter().try_for_each(|event| fold.apply(event));
        if let Err(error) = folded {
            // The chunk holds part of a batch: it cannot be written, and the rebuild
            // cannot go on without it.
            chunk.fold = None;
            chunk.failed = true;
            return Err(error);
        }
        chunk.applied = previous;
        let full = fold.events() >= self.budget.chunk_events_max
            || fold.held_bytes() >= self.budget.chunk_bytes_max;
        if full {
            self.write_chunk(chunk, true)?;
        }
        Ok(chunk.applied)
    }

    /// Joins the writer thread of the previous chunk if it is done (or waits for it, with
    /// `wait`), and then lets the fold read the store alone.
    fn join_writer(&self, chunk: &mut RebuildChunk, wait: bool) -> Result<(), ProjectionError> {
        let Some(writer) = chunk
            .writer
            .take_if(|writer| wait || writer.thread.is_finished())
        else {
            return Ok(());
        };
        let written = match writer.thread.join() {
            Ok(written) => written,
            Err(panic) => {
                // A panic is a broken invariant of the writer: it carries on here, and the
                // rebuild is no good any more (the fold relied on the unstored chunk).
                chunk.fold = None;
                chunk.failed = true;
                std::panic::resume_unwind(panic)
            }
        };
        match written {
            Ok(retired) => chunk.retired.extend(retired),
            Err(error) => {
                chunk.fold = None;
                chunk.failed = true;
                return Err(error);
            }
        }
        if let Some(fold) = &mut chunk.fold {
            fold.previous_stored(self.generation.packs());
        }
        Ok(())
    }

    /// Writes the chunk being folded, with its checkpoint, once the previous one is stored.
    /// `in_background` hands it to a writer thread. Packs a merge replaced are removed by
    /// the next write: until the fold that ran during the merge is finished, it may read
    /// them.
    fn write_chunk(
        &self,
        chunk: &mut RebuildChunk,
        in_background: bool,
    ) -> Result<(), ProjectionError> {
        self.join_writer(chunk, true)?;
        let Some(fold) = chunk.fold.take() else {
            return self.remove_retired_now(chunk);
        };
        chunk.sizes = fold.sizes();
        let (folded, writes) = fold.finish_chunk();
        let generation = Arc::clone(&self.generation);
        let budget = self.budget;
        let checkpoint = chunk.applied;
        let retired = std::mem::take(&mut chunk.retired);
        let writing = Arc::clone(&folded);
        let write = move || {
            remove_retired(&generation, &retired)?;
            let sorted = writing.sorted_writes(writes);
            write_sorted(&generation, &budget, sorted, checkpoint)
        };
        if in_background {
            let thread = std::thread::Builder::new()
                .name("rebuild-writer".to_owned())
                .spawn(write)
                .map_err(ProjectionError::WriterThread);
            match thread {
                Ok(thread) => chunk.writer = Some(ChunkWriter { thread, folded }),
                Err(error) => {
                    chunk.failed = true;
                    return Err(error);
                }
            }
            return Ok(());
        }
        match write() {
            Ok(retired) => {
                chunk.retired = retired;
                self.remove_retired_now(chunk)
            }
            Err(error) => {
                chunk.failed = true;
                Err(error)
            }
        }
    }

    /// Removes the retired packs' blocks in line: no fold is running.
    fn remove_retired_now(&self, chunk: &mut RebuildChunk) -> Result<(), ProjectionError> {
        let removed = remove_retired(&self.generation, &chunk.retired);
        if removed.is_err() {
            chunk.failed = true;
        } else {
            chunk.retired.clear();
        }
        removed
    }

    /// Writes what was folded so far; afterwards the stored checkpoint is the last position
    /// applied.
    pub fn flush(&self) -> Result<(), ProjectionError> {
        self.flushed().map(drop)
    }

    /// `flush`, and the rebuild's lock, held so that no batch starts a write (and a merge
    /// that removes blocks) while the caller reads the store.
    fn flushed(&self) -> Result<std::sync::MutexGuard<'_, RebuildChunk>, ProjectionError> {
        let mut chunk = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
        if chunk.failed {
            return Err(ProjectionError::RebuildFailed);
        }
        self.write_chunk(&mut chunk, false)?;
        Ok(chunk)
    }

    /// The last position applied, which the next batch must follow. It may still be in
    /// the chunk being folded: the stored checkpoint follows when the chunk is written.
    pub fn checkpoint(&self) -> Result<u64, ProjectionError> {
        let chunk = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
        if chunk.failed {
            return Err(ProjectionError::RebuildFailed);
        }
        Ok(chunk.applied)
    }

    /// The checkpoint written with the last chunk: what the stored generation holds.
    pub fn stored_checkpoint(&self) -> Result<u64, ProjectionError> {
        self.generation.checkpoint()
    }

    /// AUD-5: the digests of everything applied so far (the chunk is written first).
    pub fn digest(&self) -> Result<Vec<ReadModelDigest>, ProjectionError> {
        let _written = self.flushed()?;
        self.generation.digest()
    }

    pub fn generation_name(&self) -> &str {
        &self.generation.name
    }
}

impl Drop for Rebuild {
    /// A rebuild given up (after an error, or at shutdown) waits for its writer thread, so
    /// that nothing writes to the generation once its owner is gone.
    fn drop(&mut self) {
        let chunk = self
            .pending
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(writer) = chunk.writer.take() {
            // Whatever it failed with, the rebuild is abandoned.
            let _ = writer.thread.join();
        }
    }
}

/// AUD-6 for a rebuild: the chunk's keys go in first, in key order, as single sled
/// inserts; the last `checkpoint_batch_keys_max` of them go with the checkpoint in one
/// atomic batch. So the stored checkpoint never names a position whose state is not all
/// stored. The state a chunk's first keys leave before its checkpoint is never read:
/// nothing queries a generation before it is swapped in, and `open` drops an unfinished
/// one, so a crash in between costs only the rebuild. Single inserts rather than sled
/// batches for the bulk: measured 1.45x faster over 300,000 events, and with less memory
/// (sled keeps every node version a batch replaces until the batch ends; one batch for
/// a chunk of 250,000 keys peaked at 1.1 GiB).
///
/// The member records and user -> license keys of the chunk go into a new pack
/// (`packs`) instead: its blocks first, its directory key with the checkpoint. A removal
/// there is a tombstone, which hides the member in the older packs. When more than
/// `PACKS_MAX` packs exist, they are merged into one; the merged packs' ids are returned,
/// and their blocks stay until the caller knows no fold reads them (`remove_retired`).
fn write_sorted(
    generation: &Generation,
    budget: &RebuildBudget,
    writes: Vec<(Vec<u8>, Option<Vec<u8>>)>,
    checkpoint: u64,
) -> Result<Vec<u32>, ProjectionError> {
    let tree = &generation.tree;
    let current = generation.packs();
    let mut list = packs::PackList::clone(&current);
    let (packed, plain): (Vec<_>, Vec<_>) = writes
        .into_iter()
        .partition(|(key, _)| packs::is_packed_key(key));
    let mut directory = Vec::new();
    if !packed.is_empty() {
        let id = list.last().map_or(1, |last| last + 1);
        let entries = packed
            .into_iter()
            .map(|(key, value)| Ok((key, value.unwrap_or_else(|| packs::TOMBSTONE.to_vec()))));
        let (count, filter) = packs::write_blocks(tree, id, entries)?;
        directory.push((packs::directory_key(id), Some(count.to_be_bytes().to_vec())));
        list.push(id, filter);
    }
    let bulk = plain.len().saturating_sub(budget.checkpoint_batch_keys_max);
    let mut plain = plain.into_iter();
    for (key, value) in plain.by_ref().take(bulk) {
        match value {
            Some(value) => tree.insert(key, value)?,
            None => tree.remove(key)?,
        };
    }
    tree.apply_batch(apply::checkpoint_batch(plain.chain(directory), checkpoint))?;
    let mut retired = Vec::new();
    if list.len() > packs::PACKS_MAX {
        // Merging every pack: a rebuild writes no plain member keys, so nothing older
        // is left for a tombstone to hide, and they go.
        let ids = list.to_vec();
        let into = ids.last().expect("more than PACKS_MAX") + 1;
        let (count, filter) = packs::merge_into(tree, &ids, into, true)?;
        let mut batch = sled::Batch::default();
        batch.insert(packs::directory_key(into), count.to_be_bytes().to_vec());
        for id in &ids {
            batch.remove(packs::directory_key(*id));
        }
        tree.apply_batch(batch)?;
        retired = ids;
        list = packs::PackList::default();
        list.push(into, filter);
    }
    *generation
        .packs
        .write()
        .unwrap_or_else(PoisonError::into_inner) = Arc::new(list);
    Ok(retired)
}

/// Removes the blocks of packs a rebuild's merge replaced, once no fold reads them
/// (`RebuildChunk::retired`).
fn remove_retired(generation: &Generation, retired: &[u32]) -> Result<(), ProjectionError> {
    for id in retired {
        packs::remove_blocks(&generation.tree, *id)?;
    }
    Ok(())
}

impl Projections {
    /// Opens (or creates) the projections in a directory.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, ProjectionError> {
        Self::open_with_schema_version(path, PROJECTION_SCHEMA_VERSION)
    }

    /// Opens as a binary whose layout is `schema_version` would; tests use it to see a
    /// schema change trigger a rebuild.
    pub fn open_with_schema_version(
        path: impl AsRef<Path>,
        schema_version: u32,
    ) -> Result<Self, ProjectionError> {
        let mut attempts = 0;
        let db = loop {
            match sled::Config::new()
                .path(path.as_ref())
                .cache_capacity(SLED_CACHE_CAPACITY_BYTES)
                .open()
            {
                Ok(db) => break db,
                // sled finishes its last buffer writes on background threads after a
                // `Db` is dropped, and they hold the directory's lock until done; a reopen
                // in the same process (a restart of the projector, the tests) waits for
                // them instead of failing.
                Err(sled::Error::Io(error))
                    if error.to_string().contains("could not acquire lock")
                        && attempts < OPEN_LOCK_ATTEMPTS_MAX =>
                {
                    attempts += 1;
                    std::thread::sleep(OPEN_LOCK_RETRY_INTERVAL);
                }
                Err(error) => return Err(error.into()),
            }
        };
        Self::from_db(db, schema_version)
    }

    /// Projections in a temporary sled database that disappears when dropped: the replay
    /// tool applies the log up to a position or a time into one and queries it (AUD-5).
    pub fn open_temporary() -> Result<Self, ProjectionError> {
        let db = sled::Config::new()
            .temporary(true)
            .cache_capacity(SLED_CACHE_CAPACITY_BYTES)
            .open()?;
        Self::from_db(db, PROJECTION_SCHEMA_VERSION)
    }

    fn from_db(db: sled::Db, schema_version: u32) -> Result<Self, ProjectionError> {
        let meta = db.open_tree(META_TREE)?;
        let current = match meta.get(META_CURRENT_KEY)? {
            Some(name) => {
                let name =
                    String::from_utf8(name.to_vec()).map_err(|_| ProjectionError::Corrupt {
                        what: "generation pointer",
                        reason: "not UTF-8".into(),
                    })?;
                Generation::open(&db, name)?
            }
            None => {
                let generation = Self::create_generation(&db, schema_version)?;
                meta.insert(META_CURRENT_KEY, generation.name.as_bytes())?;
                generation
            }
        };
        // A rebuild that was under way when the process stopped left a tree nobody points
        // at; it starts over from position zero next time, so its tree goes.
        for name in db.tree_names() {
            let is_generation = name.starts_with(GENERATION_TREE_PREFIX.as_bytes());
            if is_generation && name.as_ref() != current.name.as_bytes() {
                db.drop_tree(name)?;
            }
        }
        let checkpoint = current.checkpoint()?;
        Ok(Self {
            db,
            meta,
            current: RwLock::new(Arc::new(current)),
            schema_version,
            checkpoint: watch::Sender::new(checkpoint),
            live_budget: LiveBudget::default(),
        })
    }

    fn create_generation(
        db: &sled::Db,
        schema_version: u32,
    ) -> Result<Generation, ProjectionError> {
        let name = format!(
            "{GENERATION_TREE_PREFIX}{schema_version:010}-{:020}",
            db.generate_id()?
        );
        let generation = Generation::open(db, name)?;
        generation
            .tree
            .insert(keys::schema_key(), schema_version.to_be_bytes().to_vec())?;
        Ok(generation)
    }

    pub(crate) fn generation(&self) -> Arc<Generation> {
        Arc::clone(&self.current.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// The last applied position; the projector resumes after it (AUD-6).
    pub fn checkpoint(&self) -> Result<u64, ProjectionError> {
        self.generation().checkpoint()
    }

    /// These projections with another live budget (tests use tiny ones to put packs,
    /// merges and batch boundaries everywhere).
    pub fn with_live_budget(mut self, budget: LiveBudget) -> Self {
        assert!(
            budget.batch_events_max > 0 && budget.dense_batch_events_max > 0,
            "a live batch holds at least one event"
        );
        assert!(budget.packs_max > 0, "a generation may hold a pack");
        self.live_budget = budget;
        self
    }

    /// Applies the next events of the log (up to `LIVE_APPLY_EVENTS_MAX`) and returns the
    /// new checkpoint. They are written in atomic batches, each with its checkpoint
    /// (AUD-6), split by the `LiveBudget`, and each checkpoint is published as soon as its
    /// batch is written. Positions must be strictly greater than the checkpoint and
    /// strictly increasing: anything else is a projector bug and panics. An error may come
    /// after some batches were applied (the checkpoint says which); the server's projector
    /// stops on any error and resumes from the stored checkpoint.
    pub fn apply_batch(&self, events: &[ProjectedEvent]) -> Result<u64, ProjectionError> {
        let generation = self.generation();
        let checkpoint = generation.apply_batch(events, &self.live_budget, &|checkpoint| {
            self.checkpoint.send_replace(checkpoint);
        })?;
        // The events are applied and visible whatever happens here; a failure stops the
        // projector as any other would, and it resumes after the checkpoint.
        generation.maintain(&self.live_budget)?;
        Ok(checkpoint)
    }

    /// Read-your-writes: returns once the projections have applied `position`, or
    /// `WaitTimeout` after `timeout`.
    pub async fn wait_for(&self, position: u64, timeout: Duration) -> Result<(), WaitTimeout> {
        let mut receiver = self.checkpoint.subscribe();
        let reached = tokio::time::timeout(timeout, receiver.wait_for(|at| *at >= position)).await;
        match reached {
            Ok(Ok(_)) => Ok(()),
            // The sender lives in `self`, so the channel cannot close while we wait.
            Ok(Err(_)) | Err(_) => Err(WaitTimeout {
                position,
                checkpoint: *self.checkpoint.borrow(),
            }),
        }
    }

    /// A receiver of the checkpoint, for callers that follow it themselves.
    pub fn subscribe_checkpoint(&self) -> watch::Receiver<u64> {
        self.checkpoint.subscribe()
    }

    /// AUD-5: one sha256 per read model over its keys and values in order.
    pub fn digest(&self) -> Result<Vec<ReadModelDigest>, ProjectionError> {
        self.generation().digest()
    }

    /// The name of the generation answering queries.
    pub fn generation_name(&self) -> String {
        self.generation().name.clone()
    }

    /// True when the stored generation was built by another schema version: the projector
    /// should rebuild (the old generation keeps answering meanwhile).
    pub fn needs_rebuild(&self) -> Result<bool, ProjectionError> {
        Ok(self.generation().schema_version()? != Some(self.schema_version))
    }

    /// Starts a fresh generation for this schema version. Feed it the log from position 1
    /// with `Rebuild::apply_batch`, then `finish_rebuild`.
    pub fn begin_rebuild(&self) -> Result<Rebuild, ProjectionError> {
        self.begin_rebuild_with_budget(RebuildBudget::default())
    }

    /// `begin_rebuild` with another chunk budget (tests use tiny chunks to put chunk
    /// boundaries everywhere).
    pub fn begin_rebuild_with_budget(
        &self,
        budget: RebuildBudget,
    ) -> Result<Rebuild, ProjectionError> {
        assert!(
            budget.chunk_events_max > 0,
            "a rebuild chunk holds at least one event"
        );
        let generation = Self::create_generation(&self.db, self.schema_version)?;
        Ok(Rebuild {
            generation: Arc::new(generation),
            budget,
            pending: Mutex::new(RebuildChunk {
                fold: None,
                writer: None,
                retired: Vec::new(),
                sizes: apply::FoldSizes::default(),
                applied: 0,
                failed: false,
            }),
        })
    }

    /// Swaps a rebuilt generation in: one write of the pointer in the meta tree, then the
    /// in-memory switch. The rebuild must have caught up with the live checkpoint.
    /// Queries already running on the old generation finish on it; its tree is dropped
    /// now when nobody holds it any more, else at the next `open`.
    pub fn finish_rebuild(&self, rebuild: Rebuild) -> Result<(), ProjectionError> {
        rebuild.flush()?;
        let live = self.checkpoint()?;
        let rebuilt = rebuild.stored_checkpoint()?;
        if rebuilt < live {
            return Err(ProjectionError::RebuildBehind {
                rebuild: rebuilt,
                live,
            });
        }
        self.meta
            .insert(META_CURRENT_KEY, rebuild.generation.name.as_bytes())?;
        // The pointer must be on disk before the old tree goes, or a crash in between
        // would leave the pointer naming a dropped tree.
        self.db.flush()?;
        let old = {
            let mut current = self.current.write().unwrap_or_else(PoisonError::into_inner);
            std::mem::replace(&mut *current, Arc::clone(&rebuild.generation))
        };
        drop(rebuild);
        if Arc::strong_count(&old) == 1 {
            self.db.drop_tree(old.name.as_bytes())?;
        }
        self.checkpoint.send_replace(rebuilt);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use domain::events::{LicenseIssued, UserAdded};
    use domain::{Actor, Email, LicenseId, LicenseType, Role, Secret, Source};

    fn event(position: u64, event: Event) -> ProjectedEvent {
        let at = DateTime::parse_from_rfc3339("2026-09-01T08:00:00Z")
            .unwrap()
            .with_timezone(&chrono::Utc);
        ProjectedEvent {
            position,
            stream: "license-L1".into(),
            revision: position,
            recorded_at: at,
            actor: Actor::Staff,
            event,
        }
    }

    fn issued() -> ProjectedEvent {
        let at = DateTime::parse_from_rfc3339("2026-01-01T00:00:00Z")
            .unwrap()
            .with_timezone(&chrono::Utc);
        event(
            1,
            Event::LicenseIssued(Box::new(LicenseIssued {
                license: LicenseId::parse("L1").unwrap(),
                license_type: LicenseType::School,
                seats: 100,
                valid_from: at,
                valid_until: at + chrono::Duration::days(365),
                admins: Vec::new(),
                key: Secret::new("k".repeat(32)).unwrap(),
                link: None,
                auto_enrollment: false,
            })),
        )
    }

    fn added(position: u64) -> ProjectedEvent {
        event(
            position,
            Event::UserAdded(UserAdded {
                email: Email::parse(&format!("user{position}@north.edu")).unwrap(),
                source: Source::Email,
                role: Role::Other,
                ou_path: None,
            }),
        )
    }

    fn removed(position: u64, user: u64) -> ProjectedEvent {
        event(
            position,
            Event::UserRemoved(domain::events::UserRemoved {
                email: Email::parse(&format!("user{user}@north.edu")).unwrap(),
                reason: domain::events::RemovalReason::ByAdmin,
            }),
        )
    }

    /// `event` on the stream of license `L<license>`.
    fn on_license(license: u64, mut projected: ProjectedEvent) -> ProjectedEvent {
        projected.stream = format!("license-L{license}");
        if let Event::LicenseIssued(issued) = &mut projected.event {
            issued.license = LicenseId::parse(&format!("L{license}")).unwrap();
            issued.key = Secret::new(format!("{license:0>32}")).unwrap();
        }
        projected
    }

    fn user_history_key(user: u64, position: u64) -> Vec<u8> {
        keys::positioned(
            keys::PREFIX_HISTORY_USER,
            format!("user{user}@north.edu").as_bytes(),
            position,
        )
    }

    #[test]
    fn the_positions_a_plain_member_sheds_stay_plain_when_a_live_pack_is_written() {
        // user2@ is a plain member; the batch that removes them writes a pack. The
        // positions their record held must be plain keys like the record's removal, or a
        // reader between the write and the pack's publication would see neither.
        let directory = tempfile::tempdir().unwrap();
        let projections = Projections::open(directory.path())
            .unwrap()
            .with_live_budget(LiveBudget {
                pack_entries_min: 3,
                dense_events_per_plain_key_min: 0,
                ..LiveBudget::default()
            });
        projections.apply_batch(&[issued(), added(2)]).unwrap();
        assert!(projections.generation().packs().is_empty());
        projections
            .apply_batch(&[added(3), added(4), removed(5, 2)])
            .unwrap();
        let generation = projections.generation();
        assert_eq!(generation.packs().to_vec(), vec![1]);
        for position in [2, 5] {
            assert!(
                generation
                    .tree
                    .contains_key(user_history_key(2, position))
                    .unwrap(),
                "position {position} of user2@ is a plain key"
            );
        }
        // user3@'s record is in the pack, and nothing of theirs is plain.
        assert!(
            !generation
                .tree
                .contains_key(keys::pair(keys::PREFIX_MEMBER, b"L1", b"user3@north.edu"))
                .unwrap()
        );
    }

    #[test]
    fn a_batch_of_many_licenses_is_not_dense() {
        // One new member in each of 300 licenses writes 300 license records: a plain batch,
        // cut at `batch_events_max`, not a dense one.
        let projections = Projections::open_temporary().unwrap();
        let issues: Vec<ProjectedEvent> = (0..300)
            .map(|license| on_license(license, event(license + 1, issued().event)))
            .collect();
        projections.apply_batch(&issues).unwrap();
        let generation = projections.generation();
        let budget = LiveBudget::default();
        let mut fold = apply::BatchApplier::new(&generation.tree, generation.packs(), true);
        for license in 0..budget.batch_events_max as u64 {
            fold.apply(&on_license(license, added(1_000 + license)))
                .unwrap();
        }
        assert!(budget.batch_is_full(&fold));
        // One license's new members are dense.
        let mut fold = apply::BatchApplier::new(&generation.tree, generation.packs(), true);
        for user in 0..budget.batch_events_max as u64 {
            fold.apply(&on_license(7, added(2_000 + user))).unwrap();
        }
        assert!(!budget.batch_is_full(&fold));
    }

    #[test]
    fn a_live_pack_does_not_take_up_blocks_a_failed_attempt_left_under_its_id() {
        // AUD-5: blocks under the next pack id that no directory names (a pack whose write
        // failed in this process) are removed before the pack is written.
        let projections = Projections::open_temporary()
            .unwrap()
            .with_live_budget(LiveBudget {
                pack_entries_min: 1,
                dense_events_per_plain_key_min: 0,
                ..LiveBudget::default()
            });
        let generation = projections.generation();
        let ghost = keys::pair(keys::PREFIX_MEMBER, b"L1", b"ghost@north.edu");
        packs::write_blocks(&generation.tree, 1, [Ok((ghost.clone(), b"x".to_vec()))]).unwrap();
        projections.apply_batch(&[issued(), added(2)]).unwrap();
        assert_eq!(generation.packs().to_vec(), vec![1]);
        // A range reads every block of the pack; the filter would hide the ghost from a
        // point lookup anyway.
        let members: Vec<Vec<u8>> = packs::scan_prefix(
            &generation.tree,
            &generation.packs(),
            &keys::scope(keys::PREFIX_MEMBER, b"L1"),
        )
        .unwrap()
        .map(|entry| entry.unwrap().0)
        .collect();
        assert_eq!(
            members,
            vec![keys::pair(keys::PREFIX_MEMBER, b"L1", b"user2@north.edu")]
        );
        assert!(
            projections
                .member(
                    &LicenseId::parse("L1").unwrap(),
                    &Email::parse("user2@north.edu").unwrap()
                )
                .unwrap()
                .is_some()
        );
    }

    fn blocks_of(tree: &sled::Tree, id: u32) -> usize {
        tree.scan_prefix(packs::pack_prefix(id)).count()
    }

    #[test]
    fn a_merged_pack_keeps_its_blocks_while_a_reader_holds_a_list_naming_it() {
        // AUD-5: a query that started on the packs before a merge reads them to its end;
        // the blocks go once nobody holds them, and their retired key with them.
        let directory = tempfile::tempdir().unwrap();
        let projections = Projections::open(directory.path())
            .unwrap()
            .with_live_budget(LiveBudget {
                batch_events_max: 1,
                dense_events_per_plain_key_min: 0,
                dense_batch_events_max: 1_000,
                pack_entries_min: 1,
                packs_max: 1,
            });
        projections
            .apply_batch(&[issued(), added(2), added(3)])
            .unwrap();
        let generation = projections.generation();
        let held = generation.packs();
        assert_eq!(held.to_vec(), vec![1]);
        let member_key = keys::pair(keys::PREFIX_MEMBER, b"L1", b"user2@north.edu");
        projections.apply_batch(&[added(4), added(5)]).unwrap();
        // Pack 2 was merged with pack 1 into pack 3 at once; only the held list names 1.
        assert_eq!(generation.packs().to_vec(), vec![3]);
        assert!(blocks_of(&generation.tree, 1) > 0);
        assert_eq!(blocks_of(&generation.tree, 2), 0);
        assert!(generation.tree.contains_key(packs::retired_key(1)).unwrap());
        assert!(
            packs::get(&generation.tree, &held, &member_key)
                .unwrap()
                .value
                .is_some()
        );
        drop(held);
        projections.apply_batch(&[added(6), added(7)]).unwrap();
        assert_eq!(generation.packs().to_vec(), vec![5]);
        for id in 1..5 {
            assert_eq!(blocks_of(&generation.tree, id), 0, "pack {id}");
            assert!(
                !generation
                    .tree
                    .contains_key(packs::retired_key(id))
                    .unwrap()
            );
        }
        let members = packs::scan_prefix(
            &generation.tree,
            &generation.packs(),
            &keys::scope(keys::PREFIX_MEMBER, b"L1"),
        )
        .unwrap()
        .count();
        assert_eq!(members, 6);
    }

    #[test]
    fn a_rebuilds_merge_keeps_the_merged_packs_blocks_until_no_fold_reads_them() {
        // AUD-5: the next chunk folds while the writer merges the packs, reading the packs
        // it started with; their blocks go only when the following write starts.
        let projections = Projections::open_temporary().unwrap();
        let rebuild = projections.begin_rebuild().unwrap();
        let generation = Arc::clone(&rebuild.generation);
        let member_key = |index: usize| {
            keys::pair(
                keys::PREFIX_MEMBER,
                b"L1",
                format!("user{index}@north.edu").as_bytes(),
            )
        };
        let write = |index: usize| {
            let writes = vec![(member_key(index), Some(b"member".to_vec()))];
            write_sorted(&generation, &rebuild.budget, writes, index as u64).unwrap()
        };
        for index in 1..=packs::PACKS_MAX {
            assert_eq!(write(index), Vec::<u32>::new(), "no merge below PACKS_MAX");
        }
        let held = generation.packs();
        let retired = write(packs::PACKS_MAX + 1);
        let merged: Vec<u32> = (1..=packs::PACKS_MAX as u32 + 1).collect();
        assert_eq!(retired, merged);
        assert_eq!(
            generation.packs().to_vec(),
            vec![packs::PACKS_MAX as u32 + 2]
        );
        for index in 1..=packs::PACKS_MAX {
            assert!(blocks_of(&generation.tree, index as u32) > 0);
            let found = packs::get(&generation.tree, &held, &member_key(index)).unwrap();
            assert_eq!(
                found.value.as_deref(),
                Some(&b"member"[..]),
                "member {index}"
            );
        }
        remove_retired(&generation, &retired).unwrap();
        for id in merged {
            assert_eq!(blocks_of(&generation.tree, id), 0, "pack {id}");
        }
        for index in 1..=packs::PACKS_MAX + 1 {
            let found = packs::get(&generation.tree, &generation.packs(), &member_key(index));
            assert!(
                found.unwrap().value.is_some(),
                "member {index} in the merged pack"
            );
        }
    }

    #[test]
    fn open_removes_retired_packs_and_blocks_no_directory_names() {
        // AUD-6: a process that stopped between a pack's blocks and its directory key, or
        // before a retired pack's blocks were removed, leaves nothing a reader can reach.
        let directory = tempfile::tempdir().unwrap();
        {
            let projections = Projections::open(directory.path())
                .unwrap()
                .with_live_budget(LiveBudget {
                    pack_entries_min: 1,
                    ..LiveBudget::default()
                });
            projections
                .apply_batch(&[issued(), added(2), added(3)])
                .unwrap();
            let tree = &projections.generation().tree;
            assert_eq!(projections.generation().packs().to_vec(), vec![1]);
            // A retired pack 0's blocks, and pack 2's blocks without a directory key.
            let stray = keys::pair(keys::PREFIX_MEMBER, b"L1", b"ghost@north.edu");
            for id in [0, 2] {
                packs::write_blocks(tree, id, [Ok((stray.clone(), b"x".to_vec()))]).unwrap();
            }
            tree.insert(packs::retired_key(0), Vec::new()).unwrap();
            projections.db.flush().unwrap();
        }
        let projections = Projections::open(directory.path()).unwrap();
        let generation = projections.generation();
        assert_eq!(blocks_of(&generation.tree, 0), 0);
        assert_eq!(blocks_of(&generation.tree, 2), 0);
        assert!(blocks_of(&generation.tree, 1) > 0);
        assert!(!generation.tree.contains_key(packs::retired_key(0)).unwrap());
        assert_eq!(generation.packs().to_vec(), vec![1]);
    }
}
