//! Command handling: load the aggregate, decide, append with the expected revision, apply.
//!
//! Every aggregate is kept in memory, rebuilt from the log at start, so a decision costs what
//! the command touches and never re-reads a long history. Each stream has its own lock: two
//! commands on one license are decided one after the other (the seat check and the append
//! are one atomic decision, SEAT-5), commands on different licenses run side by side and meet
//! in the ledger's group commit. The expected revision still guards every append, so a
//! second writer on the same log (KurrentDB) is caught and the decision is retried on fresh
//! state.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use chrono::{DateTime, Utc};
use domain::events::{Event, EventMeta};
use domain::{
    Actor, Context, DomainCommand, DomainError, DomainName, Email, EmailDomain, ErrorKind, License,
    LicenseCommand, LicenseId, Outcome, Secret, WrongSecretThrottle,
};
use ledger::{AppendResult, EventLog, ExpectedRevision, LedgerError, NewEvent, RecordedEvent};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::clock::Clock;

/// How often a decision is retried after losing a race for its stream.
pub const CONFLICT_RETRIES_MAX: usize = 8;
/// Events read per page when rebuilding aggregates from the log.
pub const REPLAY_PAGE_EVENTS: usize = 10_000;

pub fn license_stream(id: &str) -> String {
    format!("license-{id}")
}

pub fn domain_stream(domain: &DomainName) -> String {
    format!("domain-{domain}")
}

/// The actor as the ledger stores it: `staff`, `system` or the user's email.
pub fn actor_label(actor: &Actor) -> String {
    actor.to_string()
}

pub fn parse_actor_label(label: &str) -> Result<Actor, String> {
    match label {
        "staff" => Ok(Actor::Staff),
        "system" => Ok(Actor::System),
        email => Email::parse(email).map(Actor::User),
    }
}

/// Parses the actor labels of a run of events, reusing the previous event's actor when
/// the label is the same. An import's million events, or a round of an admin's adds, all
/// have one actor: each would otherwise parse the email again and hold its own copy of
/// it, where they now share one (a rebuild's decoder parsed an email per event, and its
/// writer read each copy from cold memory).
#[derive(Default)]
pub struct ActorLabels {
    last: Option<Actor>,
}

impl ActorLabels {
    pub fn parse(&mut self, label: &str) -> Result<Actor, String> {
        // Only a label exactly as the last actor is stored reuses it; one that parses to
        // it only after normalising is parsed again, which gives the same actor.
        if let Some(last) = &self.last
            && last.label() == label
        {
            return Ok(last.clone());
        }
        let actor = parse_actor_label(label)?;
        self.last = Some(actor.clone());
        Ok(actor)
    }
}

/// SHA-256 of a secret: the indexes hold this, never the secret.
pub fn secret_hash(secret: &Secret) -> [u8; 32] {
    Sha256::digest(secret.expose().as_bytes()).into()
}

/// The ids a command carries into the core.
#[derive(Clone, Copy, Debug)]
pub struct CommandIds {
    /// The ledger's command id: derived from the client's `x-command-id`, or fresh.
    pub command_id: Uuid,
    pub correlation_id: Uuid,
    /// Set when the client sent a command id: a digest of who sent which request. The core
    /// keeps it with the command's outcome in the command's last append (AUD-4), so that a
    /// retry, even after a crash, gets the first outcome back, and the same id sent with
    /// another request is refused.
    pub fingerprint: Option<[u8; 32]>,
    /// The id is known to be taken by another request (the server's answers cache said
    /// so). The command is then decided but never appended: only for a refusal ERR-1 puts
    /// before the reuse's FAILED_PRECONDITION (`Reuse`).
    pub reused: bool,
}

impl CommandIds {
    /// Fresh ids for a command no client will retry (tests, internal commands).
    pub fn fresh() -> CommandIds {
        let command_id = Uuid::new_v4();
        CommandIds {
            command_id,
            correlation_id: command_id,
            fingerprint: None,
            reused: false,
        }
    }
}

/// ERR-1 for a command id already used for another command (AUD-4): the reuse is
/// FAILED_PRECONDITION, but a refusal ERR-1 ranks before it (INVALID_ARGUMENT, NOT_FOUND,
/// PERMISSION_DENIED) comes first, so a reused command is still decided, and never
/// appended.
struct Reuse(Option<CoreError>);

impl Reuse {
    /// What the decision's refusals are ranked against.
    fn of(stream: &str, ids: CommandIds) -> Self {
        Self(ids.reused.then(|| reuse_error(stream, ids.command_id)))
    }

    /// The decision's outcome, or the reuse's refusal when it is not outranked.
    fn decided<T>(&mut self, decision: Result<T, DomainError>) -> Result<T, CoreError> {
        match (decision, self.0.take()) {
            (Err(error), Some(reuse)) => Err(if ranks_before_reuse(&error) {
                CoreError::Reused(Box::new(error.into()))
            } else {
                reuse
            }),
            (Err(error), None) => Err(error.into()),
            (Ok(_), Some(reuse)) => Err(reuse),
            (Ok(decision), None) => Ok(decision),
        }
    }
}

fn reuse_error(stream: &str, command_id: Uuid) -> CoreError {
    LedgerError::CommandIdReused {
        command_id,
        stream: stream.to_owned(),
    }
    .into()
}

/// Whether ERR-1 puts a refusal before a reused id's FAILED_PRECONDITION.
fn ranks_before_reuse(error: &DomainError) -> bool {
    matches!(
        error.kind(),
        ErrorKind::InvalidArgument | ErrorKind::NotFound | ErrorKind::PermissionDenied
    )
}

/// What a license append is tagged with besides its events: the ids and, for a command
/// sent with a client's id, its encoded answer.
struct AppendTags {
    command_id: Uuid,
    correlation_id: Uuid,
    answer: Option<Vec<u8>>,
    /// Whether a client sent the command's id, so that the ledger must remember it for the
    /// client's retries (AUD-4). An id the server made up is only recorded with the events
    /// (`EventLog::append_unkeyed`): nobody can send it again, and remembering it cost the
    /// ledger an index key and a lookup per command (issue 7).
    keyed: bool,
}

/// The format of a kept answer: version, fingerprint, MessagePack of the outcome.
const ANSWER_FORMAT_VERSION: u8 = 1;

fn encode_answer(fingerprint: &[u8; 32], outcome: &Outcome) -> Vec<u8> {
    let mut answer = vec![ANSWER_FORMAT_VERSION];
    answer.extend_from_slice(fingerprint);
    let encoded = rmp_serde::to_vec(outcome).expect("an outcome of plain values encodes");
    answer.extend_from_slice(&encoded);
    answer
}

fn decode_answer(answer: &[u8]) -> Result<([u8; 32], Outcome), CoreError> {
    let unreadable = |why: &str| CoreError::Decode(format!("a kept command answer {why}"));
    let (&version, rest) = answer.split_first().ok_or_else(|| unreadable("is empty"))?;
    if version != ANSWER_FORMAT_VERSION || rest.len() < 32 {
        return Err(unreadable("has an unknown format"));
    }
    let (fingerprint, outcome) = rest.split_at(32);
    let outcome = rmp_serde::from_slice(outcome).map_err(|_| unreadable("cannot be decoded"))?;
    Ok((fingerprint.try_into().expect("32 bytes"), outcome))
}

/// Why a command could not be carried out.
#[derive(Debug, thiserror::Error)]
pub enum CoreError {
    #[error(transparent)]
    Domain(#[from] DomainError),
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    #[error("the stream kept changing under the command; try again")]
    Contended,
    #[error("an event in the log cannot be read: {0}")]
    Decode(String),
    /// A refusal decided for a command whose id was already used for another command
    /// (ERR-1 ranks it before the reuse): it is not the id's first outcome, so the answers
    /// cache must not keep it under the id.
    #[error(transparent)]
    Reused(Box<CoreError>),
}

/// A stored event decoded for the domain.
pub struct Decoded {
    pub meta: EventMeta,
    pub event: Event,
}

pub fn decode(recorded: &RecordedEvent) -> Result<Decoded, CoreError> {
    decode_with(recorded, &mut ActorLabels::default())
}

/// `decode` for one of a run of events, whose actors `labels` parses.
pub fn decode_with(
    recorded: &RecordedEvent,
    labels: &mut ActorLabels,
) -> Result<Decoded, CoreError> {
    let event = Event::decode(
        &recorded.event_type,
        recorded.schema_version,
        &recorded.payload,
    )
    .map_err(|error| CoreError::Decode(format!("position {}: {error}", recorded.position)))?;
    let actor = labels.parse(&recorded.actor).map_err(|reason| {
        CoreError::Decode(format!("position {}: actor {reason}", recorded.position))
    })?;
    Ok(Decoded {
        meta: EventMeta {
            at: recorded.recorded_at,
            actor,
        },
        event,
    })
}

struct Entry<A> {
    aggregate: A,
    /// The revision of the stream's last event, `None` while the stream is empty.
    revision: Option<u64>,
}

impl<A> Entry<A> {
    fn expected(&self) -> ExpectedRevision {
        self.revision
            .map_or(ExpectedRevision::NoStream, ExpectedRevision::Exact)
    }
}

type Shared<A> = Arc<tokio::sync::Mutex<Entry<A>>>;

/// Lookups across aggregates, kept beside them and changed only by applied events.
#[derive(Default)]
struct Indexes {
    license_by_key: HashMap<[u8; 32], String>,
    license_by_link: HashMap<[u8; 32], String>,
    licenses_of_member: MemberLicenses,

    domains_of_admin: HashMap<Email, BTreeSet<DomainName>>,
    /// The licenses each user administers, for Q-7's reading of another user's History.
    licenses_of_admin: HashMap<Email, BTreeSet<String>>,
    claims: HashMap<DomainName, LicenseId>,
}

/// The licenses each member belongs to (in any status), for LMS-2's choice of a teacher's
/// license. Every member of every license has an entry, so a license of a million members
/// puts a million entries here, and each is kept small: the key is a 64-bit hash of the
/// email, not the email (which the license aggregate already holds once), and a member of
/// one license (by far the common case) costs one 16-byte slot. A 1,000,000-row import
/// kept about 130 MB here with the emails as keys, and keeps about 34 MB this way.
///
/// A hash can be shared by two emails, so what a hash gives is a set of candidate licenses:
/// the caller checks each against its aggregate, which knows its members exactly (LMS-2's
/// lookup does). Each candidate carries a count of the emails of that hash that are members
/// of it, so that one of two colliding members leaving a license does not make the other
/// one's membership disappear. `insert` and `remove` are therefore called when a membership
/// begins and ends, never twice for the same one.
#[derive(Default)]
struct MemberLicenses<Hasher = std::hash::RandomState> {
    hasher: Hasher,
    numbers: HashMap<String, u32>,
    ids: Vec<String>,
    /// Hashes that are members of exactly one license.
    of_one: HashMap<u64, Membership>,
    /// Hashes that are members of several licenses (a teacher in two schools).
    of_several: HashMap<u64, Vec<Membership>>,
}

/// A license (by number) and how many emails of one hash are members of it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Membership {
    number: u32,
    emails: u32,
}

impl<Hasher: std::hash::BuildHasher> MemberLicenses<Hasher> {
    fn number(&mut self, id: &str) -> u32 {
        if let Some(number) = self.numbers.get(id) {
            return *number;
        }
        let number = u32::try_from(self.ids.len()).expect("fewer than 2^32 licenses");
        self.ids.push(id.to_owned());
        self.numbers.insert(id.to_owned(), number);
        number
    }

    fn hash(&self, email: &Email) -> u64 {
        self.hasher.hash_one(email.as_str())
    }

    /// Makes room for `additional` members of one license each, at once
    /// (`Core::reserve_for_newcomers`).
    fn reserve(&mut self, additional: usize) {
        self.of_one.reserve(additional);
    }

    /// `email` became a member of license `id` (it was not one a moment before).
    fn insert(&mut self, email: &Email, id: &str) {
        let number = self.number(id);
        let hash = self.hash(email);
        if let Some(several) = self.of_several.get_mut(&hash) {
            match several.iter_mut().find(|m| m.number == number) {
                Some(membership) => membership.emails += 1,
                None => several.push(Membership { number, emails: 1 }),
            }
            return;
        }
        match self.of_one.get_mut(&hash) {
            None => {
                self.of_one.insert(hash, Membership { number, emails: 1 });
            }
            Some(membership) if membership.number == number => membership.emails += 1,
            Some(_) => {
                let first = self.of_one.remove(&hash).expect("found just above");
                self.of_several
                    .insert(hash, vec![first, Membership { number, emails: 1 }]);
            }
        }
    }

    /// `email` stopped being a member of license `id`.
    fn remove(&mut self, email: &Email, id: &str) {
        let Some(&number) = self.numbers.get(id) else {
            debug_assert!(false, "a removal from a license nobody joined");
            return;
        };
        let hash = self.hash(email);
        if let Some(several) = self.of_several.get_mut(&hash) {
            let found = several.iter().position(|m| m.number == number);
            debug_assert!(found.is_some(), "a removal of a membership never counted");
            if let Some(index) = found {
                several[index].emails -= 1;
                if several[index].emails == 0 {
                    several.swap_remove(index);
                }
            }
            if several.len() == 1 {
                let last = several[0];
                self.of_several.remove(&hash);
                self.of_one.insert(hash, last);
            }
            return;
        }
        match self.of_one.get_mut(&hash) {
            Some(membership) if membership.number == number => {
                membership.emails -= 1;
                if membership.emails == 0 {
                    self.of_one.remove(&hash);
                }
            }
            _ => debug_assert!(false, "a removal of a membership never counted"),
        }
    }

    /// The ids of the licenses `email` may be a member of: every one it is a member of, and
    /// rarely one more that an email of the same hash is a member of (the caller checks).
    fn licenses(&self, email: &Email) -> Vec<String> {
        let hash = self.hash(email);
        let id = |membership: &Membership| self.ids[membership.number as usize].clone();
        if let Some(one) = self.of_one.get(&hash) {
            return vec![id(one)];
        }
        self.of_several
            .get(&hash)
            .map(|several| several.iter().map(id).collect())
            .unwrap_or_default()
    }
}

/// Which license a secret opened.
pub enum SecretKind {
    Key,
    Link,
}

/// The version of the snapshot format; a snapshot of another version is ignored and the
/// aggregates are rebuilt from the whole log.
/// Version 2: the aggregate's member dropped its OU path and last change, and packs its
/// waitlist ticket.
pub const SNAPSHOT_VERSION: u32 = 2;

/// Every aggregate as it stood after the log's first `next_position` events. A snapshot is
/// derived data: it only shortens start-up, and is checked against the log before use.
#[derive(serde::Serialize, serde::Deserialize)]
struct Snapshot {
    version: u32,
    next_position: u64,
    /// The hash of the last event the snapshot covers, so that a snapshot is only ever used
    /// with the very log it was taken from.
    last_hash: [u8; 32],
    licenses: Vec<(String, Option<u64>, License)>,
    domains: Vec<(DomainName, Option<u64>, EmailDomain)>,
}

pub struct Core {
    log: Arc<dyn EventLog>,
    /// The ledger position after the last event applied to memory.
    next_position: AtomicU64,
    /// How many events the start-up took from a snapshot instead of the log.
    events_from_snapshot: AtomicU64,
    clock: Arc<dyn Clock>,
    licenses: Mutex<HashMap<String, Shared<License>>>,
    domains: Mutex<HashMap<DomainName, Shared<EmailDomain>>>,
    indexes: RwLock<Indexes>,
    throttle: Mutex<WrongSecretThrottle>,
    /// The most events of one append of a large decision: `ledger::APPEND_EVENTS_MAX`,
    /// smaller in tests of chunked appends.
    append_chunk_events_max: usize,
}

/// A decision of at least this many events has its newcomers' room made at once
/// (`Core::reserve_for_newcomers`); smaller ones grow the tables as they go.
const RESERVE_DECISION_EVENTS_MIN: usize = 4_096;

/// Splits a decision's events into the chunks appended one by one, each its own vector, so
/// that each chunk's memory goes once it is applied. Taken from one vector of a million
/// events, every chunk kept the whole vector alive until the last one was applied, when
/// memory is fullest (issue 7). The split copies one chunk at a time from the back, so the
/// events are held twice only while the decision's own working sets are already gone.
fn split_into_chunks(mut events: Vec<Event>, chunk_events_max: usize) -> Vec<Vec<Event>> {
    assert!(chunk_events_max > 0, "a chunk holds at least one event");
    let mut chunks = Vec::with_capacity(events.len().div_ceil(chunk_events_max));
    if events.len() > chunk_events_max {
        while events.len() > chunk_events_max {
            let last_chunk_start = (events.len() - 1) / chunk_events_max * chunk_events_max;
            chunks.push(events.split_off(last_chunk_start));
        }
        events.shrink_to_fit();
    }
    if !events.is_empty() {
        chunks.push(events);
    }
    // Split from the back, so the first chunk came last.
    chunks.reverse();
    chunks
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Core {
    /// Appends large decisions in chunks of at most `events` events (tests).
    #[cfg(test)]
    fn with_append_chunk_events_max(mut self, events: usize) -> Self {
        assert!((1..=ledger::APPEND_EVENTS_MAX).contains(&events));
        self.append_chunk_events_max = events;
        self
    }

    /// Rebuilds every aggregate from the log.
    pub async fn open(log: Arc<dyn EventLog>, clock: Arc<dyn Clock>) -> Result<Self, CoreError> {
        Self::open_from(log, clock, None).await
    }

    /// Rebuilds every aggregate from a snapshot, if one is given and fits the log, and from
    /// the log's events after it; from the whole log otherwise.
    pub async fn open_from(
        log: Arc<dyn EventLog>,
        clock: Arc<dyn Clock>,
        snapshot: Option<&[u8]>,
    ) -> Result<Self, CoreError> {
        let core = Self {
            log,
            next_position: AtomicU64::new(0),
            events_from_snapshot: AtomicU64::new(0),
            clock,
            licenses: Mutex::new(HashMap::new()),
            domains: Mutex::new(HashMap::new()),
            indexes: RwLock::new(Indexes::default()),
            throttle: Mutex::new(WrongSecretThrottle::new()),
            append_chunk_events_max: ledger::APPEND_EVENTS_MAX,
        };
        let mut from = match snapshot {
            Some(bytes) => core.restore(bytes).await?,
            None => 0,
        };
        loop {
            let page = core.log.read_all(from, REPLAY_PAGE_EVENTS).await?;
            let Some(last) = page.last() else { break };
            from = last.position + 1;
            for recorded in &page {
                core.replay(recorded).await?;
            }
        }
        Ok(core)
    }

    /// Loads a snapshot if it is of this version and the log holds every event it covers;
    /// returns the ledger position to replay from (0 when the snapshot was not used).
    async fn restore(&self, bytes: &[u8]) -> Result<u64, CoreError> {
        let snapshot = match rmp_serde::from_slice::<Snapshot>(bytes) {
            Ok(snapshot) => snapshot,
            Err(error) => {
                tracing::warn!(%error, "the snapshot cannot be read; rebuilding from the whole log");
                return Ok(0);
            }
        };
        if snapshot.version != SNAPSHOT_VERSION || snapshot.next_position == 0 {
            return Ok(0);
        }
        let last = self.log.read_all(snapshot.next_position - 1, 1).await?;
        let fits = last.first().is_some_and(|event| {
            event.position == snapshot.next_position - 1 && event.hash == snapshot.last_hash
        });
        if !fits {
            tracing::warn!("the snapshot does not fit the log; rebuilding from the whole log");
            return Ok(0);
        }
        for (id, revision, license) in snapshot.licenses {
            {
                let mut indexes = self.indexes.write().unwrap_or_else(|p| p.into_inner());
                if let Some(state) = license.state() {
                    indexes
                        .license_by_key
                        .insert(secret_hash(state.key()), id.clone());
                    if let Some(link) = state.link() {
                        indexes
                            .license_by_link
                            .insert(secret_hash(link), id.clone());
                    }
                    for (email, _) in state.members() {
                        indexes.licenses_of_member.insert(email, &id);
                    }
                    for admin in state.admins() {
                        indexes
                            .licenses_of_admin
                            .entry(admin.clone())
                            .or_default()
                            .insert(id.clone());
                    }
                }
            }
            let shared = self.license_entry(&id);
            let mut entry = shared.lock().await;
            entry.aggregate = license;
            entry.revision = revision;
        }
        for (name, revision, domain) in snapshot.domains {
            {
                let mut indexes = self.indexes.write().unwrap_or_else(|p| p.into_inner());
                for admin in domain.admins() {
                    indexes
                        .domains_of_admin
                        .entry(admin.clone())
                        .or_default()
                        .insert(name.clone());
                }
                if let Some(license) = domain.claimed_by() {
                    indexes.claims.insert(name.clone(), license.clone());
                }
            }
            let shared = self.domain_entry(&name);
            let mut entry = shared.lock().await;
            entry.aggregate = domain;
            entry.revision = revision;
        }
        self.next_position
            .store(snapshot.next_position, Ordering::Release);
        self.events_from_snapshot
            .store(snapshot.next_position, Ordering::Release);
        tracing::info!(events = snapshot.next_position, "started from a snapshot");
        Ok(snapshot.next_position)
    }

    /// A snapshot of every aggregate. Take it when no command runs (at shutdown): it must be
    /// one consistent cut of the log.
    pub async fn snapshot(&self) -> Result<Vec<u8>, CoreError> {
        let licenses: Vec<(String, Shared<License>)> = lock(&self.licenses)
            .iter()
            .map(|(id, shared)| (id.clone(), shared.clone()))
            .collect();
        let domains: Vec<(DomainName, Shared<EmailDomain>)> = lock(&self.domains)
            .iter()
            .map(|(name, shared)| (name.clone(), shared.clone()))
            .collect();
        let next_position = self.next_position.load(Ordering::Acquire);
        let last_hash = match next_position.checked_sub(1) {
            Some(last) => self
                .log
                .read_all(last, 1)
                .await?
                .first()
                .map_or([0; 32], |event| event.hash),
            None => [0; 32],
        };
        let mut snapshot = Snapshot {
            version: SNAPSHOT_VERSION,
            next_position,
            last_hash,
            licenses: Vec::with_capacity(licenses.len()),
            domains: Vec::with_capacity(domains.len()),
        };
        for (id, shared) in licenses {
            let entry = shared.lock().await;
            if entry.revision.is_some() {
                snapshot
                    .licenses
                    .push((id, entry.revision, entry.aggregate.clone()));
            }
        }
        for (name, shared) in domains {
            let entry = shared.lock().await;
            if entry.revision.is_some() {
                snapshot
                    .domains
                    .push((name, entry.revision, entry.aggregate.clone()));
            }
        }
        Ok(rmp_serde::to_vec(&snapshot).expect("aggregates always encode to MessagePack"))
    }

    /// How many of the log's events start-up took from a snapshot (0: none was used).
    pub fn events_from_snapshot(&self) -> u64 {
        self.events_from_snapshot.load(Ordering::Acquire)
    }

    /// Notes that events up to `last_position` (a ledger position) are applied.
    fn applied_up_to(&self, last_position: u64) {
        self.next_position
            .fetch_max(last_position + 1, Ordering::AcqRel);
    }

    pub fn log(&self) -> &Arc<dyn EventLog> {
        &self.log
    }

    pub fn now(&self) -> DateTime<Utc> {
        self.clock.now()
    }

    async fn replay(&self, recorded: &RecordedEvent) -> Result<(), CoreError> {
        let decoded = decode(recorded)?;
        self.applied_up_to(recorded.position);
        if let Some(id) = recorded.stream.strip_prefix("license-") {
            let shared = self.license_entry(id);
            let mut entry = shared.lock().await;
            assert_eq!(
                entry.revision.map_or(0, |r| r + 1),
                recorded.revision,
                "stream {} revisions are not contiguous",
                recorded.stream
            );
            self.apply_license(id, &mut entry, &decoded.meta, &decoded.event);
            entry.revision = Some(recorded.revision);
        } else if let Some(name) = recorded.stream.strip_prefix("domain-") {
            let name = DomainName::parse(name).map_err(CoreError::Decode)?;
            let shared = self.domain_entry(&name);
            let mut entry = shared.lock().await;
            self.apply_domain(&mut entry, &decoded.meta, &decoded.event);
            entry.revision = Some(recorded.revision);
        } else {
            return Err(CoreError::Decode(format!(
                "position {}: unknown stream {}",
                recorded.position, recorded.stream
            )));
        }
        Ok(())
    }

    fn license_entry(&self, id: &str) -> Shared<License> {
        lock(&self.licenses)
            .entry(id.to_owned())
            .or_insert_with(|| {
                Arc::new(tokio::sync::Mutex::new(Entry {
                    aggregate: License::default(),
                    revision: None,
                }))
            })
            .clone()
    }

    fn existing_license(&self, id: &str) -> Option<Shared<License>> {
        lock(&self.licenses).get(id).cloned()
    }

    fn domain_entry(&self, name: &DomainName) -> Shared<EmailDomain> {
        lock(&self.domains)
            .entry(name.clone())
            .or_insert_with(|| {
                Arc::new(tokio::sync::Mutex::new(Entry {
                    aggregate: EmailDomain::new(name.clone()),
                    revision: None,
                }))
            })
            .clone()
    }

    fn apply_license(&self, id: &str, entry: &mut Entry<License>, meta: &EventMeta, event: &Event) {
        let mut indexes = self.indexes.write().unwrap_or_else(|p| p.into_inner());
        Self::apply_license_to(&mut indexes, id, entry, meta, event);
    }

    /// Applies one event to a license and to the indexes, which the caller holds locked (a
    /// large decision locks them once for all its events, not once per event).
    fn apply_license_to(
        indexes: &mut Indexes,
        id: &str,
        entry: &mut Entry<License>,
        meta: &EventMeta,
        event: &Event,
    ) {
        let changes_secrets = matches!(
            event,
            Event::LicenseIssued(_) | Event::LicenseKeyRotated(_) | Event::JoinLinkRotated(_)
        );
        // Hashing the secrets costs two SHA-256 runs: only the events that change them pay.
        let (old_key, old_link) = match (changes_secrets, entry.aggregate.state()) {
            (true, Some(state)) => (
                Some(secret_hash(state.key())),
                state.link().map(secret_hash),
            ),
            _ => (None, None),
        };
        // The member index counts memberships, so it is told when one begins or ends, which
        // only the aggregate knows (an invite to someone already invited begins none, an
        // accepted invite neither begins nor ends one).
        let member_email = event.member_email();
        let is_member = |aggregate: &License, email: &Email| {
            aggregate
                .state()
                .is_some_and(|state| state.member(email).is_some())
        };
        let was_member = member_email.map(|email| is_member(&entry.aggregate, email));
        entry.aggregate.apply(meta, event);
        if let (Some(email), Some(was_member)) = (member_email, was_member) {
            match (was_member, is_member(&entry.aggregate, email)) {
                (false, true) => indexes.licenses_of_member.insert(email, id),
                (true, false) => indexes.licenses_of_member.remove(email, id),
                _ => {}
            }
        }
        match event {
            Event::LicenseIssued(_)
            | Event::LicenseAdminGranted(_)
            | Event::LicenseAdminRevoked(_) => {
                Self::index_admins(indexes, id, &entry.aggregate, event);
            }
            _ => {}
        }
        match event {
            Event::LicenseIssued(_) | Event::LicenseKeyRotated(_) | Event::JoinLinkRotated(_) => {
                if let Some(old) = old_key {
                    indexes.license_by_key.remove(&old);
                }
                if let Some(old) = old_link {
                    indexes.license_by_link.remove(&old);
                }
                if let Some(state) = entry.aggregate.state() {
                    indexes
                        .license_by_key
                        .insert(secret_hash(state.key()), id.to_owned());
                    if let Some(link) = state.link() {
                        indexes
                            .license_by_link
                            .insert(secret_hash(link), id.to_owned());
                    }
                }
            }
            _ => {}
        }
    }

    /// Follows a license's admins into `licenses_of_admin` after an event that may change
    /// them, from what the aggregate holds once the event is applied.
    fn index_admins(indexes: &mut Indexes, id: &str, aggregate: &License, event: &Event) {
        let Some(state) = aggregate.state() else {
            return;
        };
        let mut follow = |email: &Email| {
            if state.is_admin(email) {
                indexes
                    .licenses_of_admin
                    .entry(email.clone())
                    .or_default()
                    .insert(id.to_owned());
            } else if let Some(licenses) = indexes.licenses_of_admin.get_mut(email) {
                licenses.remove(id);
                if licenses.is_empty() {
                    indexes.licenses_of_admin.remove(email);
                }
            }
        };
        match event {
            Event::LicenseIssued(_) => state.admins().iter().for_each(&mut follow),
            Event::LicenseAdminGranted(e) => follow(&e.email),
            Event::LicenseAdminRevoked(e) => follow(&e.email),
            _ => {}
        }
    }

    fn apply_domain(&self, entry: &mut Entry<EmailDomain>, meta: &EventMeta, event: &Event) {
        entry.aggregate.apply(meta, event);
        let mut indexes = self.indexes.write().unwrap_or_else(|p| p.into_inner());
        match event {
            Event::DomainAdminGranted(e) => {
                indexes
                    .domains_of_admin
                    .entry(e.email.clone())
                    .or_default()
                    .insert(e.domain.clone());
            }
            Event::DomainAdminRevoked(e) => {
                if let Some(domains) = indexes.domains_of_admin.get_mut(&e.email) {
                    domains.remove(&e.domain);
                }
            }
            Event::DomainClaimed(e) => {
                indexes.claims.insert(e.domain.clone(), e.license.clone());
            }
            Event::DomainReleased(e) => {
                indexes.claims.remove(&e.domain);
            }
            _ => {}
        }
    }

    /// The decision's context: the time, the actor, and the domains the actor administers.
    fn context(&self, actor: &Actor) -> Context {
        let context = Context::new(self.clock.now(), actor.clone());
        match actor.email() {
            Some(email) => {
                let indexes = self.indexes.read().unwrap_or_else(|p| p.into_inner());
                let domains = indexes
                    .domains_of_admin
                    .get(email)
                    .cloned()
                    .unwrap_or_default();
                context.with_domain_admin_of(domains)
            }
            None => context,
        }
    }

    fn new_events(events: &[Event], meta: &EventMeta, correlation_id: Uuid) -> Vec<NewEvent> {
        events
            .iter()
            .map(|event| NewEvent {
                event_id: Uuid::new_v4(),
                event_type: event.type_name().to_owned(),
                schema_version: event.schema_version(),
                recorded_at: meta.at,
                actor: actor_label(&meta.actor),
                correlation_id,
                payload: event.encode(),
            })
            .collect()
    }

    /// Catches an entry up with events appended by someone else (another node of a
    /// KurrentDB cluster) after losing a race.
    async fn catch_up_license(
        &self,
        id: &str,
        entry: &mut Entry<License>,
    ) -> Result<(), CoreError> {
        loop {
            let from = entry.revision.map_or(0, |r| r + 1);
            let page = self
                .log
                .read_stream(&license_stream(id), from, REPLAY_PAGE_EVENTS)
                .await?;
            if page.is_empty() {
                return Ok(());
            }
            for recorded in &page {
                let decoded = decode(recorded)?;
                self.apply_license(id, entry, &decoded.meta, &decoded.event);
                entry.revision = Some(recorded.revision);
                self.applied_up_to(recorded.position);
            }
        }
    }

    async fn catch_up_domain(
        &self,
        name: &DomainName,
        entry: &mut Entry<EmailDomain>,
    ) -> Result<(), CoreError> {
        loop {
            let from = entry.revision.map_or(0, |r| r + 1);
            let page = self
                .log
                .read_stream(&domain_stream(name), from, REPLAY_PAGE_EVENTS)
                .await?;
            if page.is_empty() {
                return Ok(());
            }
            for recorded in &page {
                let decoded = decode(recorded)?;
                self.apply_domain(entry, &decoded.meta, &decoded.event);
                entry.revision = Some(recorded.revision);
                self.applied_up_to(recorded.position);
            }
        }
    }

    /// Appends a decision's events to a license stream in chunks the ledger accepts, then
    /// applies them. Returns the last API position (see `projector`), or 0 when there was
    /// nothing to append.
    async fn append_license(
        &self,
        id: &str,
        entry: &mut Entry<License>,
        events: Vec<Event>,
        meta: &EventMeta,
        tags: AppendTags,
    ) -> Result<u64, CoreError> {
        let AppendTags {
            command_id,
            correlation_id,
            mut answer,
            keyed,
        } = tags;
        let mut last_position = 0;
        self.reserve_for_newcomers(entry, &events);
        let chunks = split_into_chunks(events, self.append_chunk_events_max);
        let chunks_count = chunks.len();
        for (index, chunk) in chunks.into_iter().enumerate() {
            // Each chunk is moved out of the list and dropped once applied, so a very large
            // decision does not hold its events and their encodings all at once.
            // Each chunk of a very large decision is its own append. The last one carries
            // the command's id and its answer, so that the id finds the whole command's
            // result (AUD-4). The others' ids derive from it, from the chunk's index and
            // from the stream revision it starts at, so that the ledger recognises a chunk
            // appended twice. A retry after a crash between chunks is decided again over
            // the chunks already appended, and its chunks start at later revisions: ids
            // derived from the index alone matched the first attempt's chunks, which hold
            // other events, so the ledger refused the retry as a reused id and the import
            // could only be finished under a new one.
            let last_chunk = index + 1 == chunks_count;
            let (chunk_id, chunk_answer) = if last_chunk {
                (command_id, answer.take())
            } else {
                let start_revision = entry.revision.map_or(0, |r| r + 1);
                let mut name = [0u8; 16];
                name[..8].copy_from_slice(&(index as u64).to_be_bytes());
                name[8..].copy_from_slice(&start_revision.to_be_bytes());
                (Uuid::new_v5(&command_id, &name), None)
            };
            let new_events = Self::new_events(&chunk, meta, correlation_id);
            let result = self
                .append_tagged(
                    &license_stream(id),
                    entry.expected(),
                    new_events,
                    chunk_id,
                    keyed,
                    chunk_answer,
                )
                .await?;
            let expected_last = entry.revision.map_or(0, |r| r + 1) + chunk.len() as u64 - 1;
            if result.next_expected_revision != expected_last {
                // The ledger answered an earlier append of this id: nothing new was written.
                // Re-read the stream so memory matches the log.
                self.catch_up_license(id, entry).await?;
                if !last_chunk {
                    // This very chunk was appended at this revision before, unknown to
                    // memory: the chunks after it were decided over a stale state. Nothing
                    // more is appended; the client's retry with the same id is decided
                    // again over the caught-up stream and appends the rest.
                    return Err(CoreError::Contended);
                }
                return Ok(crate::projector::api_position(result.last_position));
            }
            {
                let mut indexes = self.indexes.write().unwrap_or_else(|p| p.into_inner());
                for event in &chunk {
                    Self::apply_license_to(&mut indexes, id, entry, meta, event);
                }
            }
            entry.revision = Some(result.next_expected_revision);
            self.applied_up_to(result.last_position);
            last_position = crate::projector::api_position(result.last_position);
        }
        Ok(last_position)
    }

    /// Makes room at once for the members a large decision brings to a license, in the
    /// aggregate and in the member index. Grown step by step, each table holds its old and
    /// its new buckets side by side at every step, and the last step of a 1,000,000-row
    /// import comes when memory is fullest: its last chunk applied, the import's emails and
    /// the projector's work still held (issue 7).
    fn reserve_for_newcomers(&self, entry: &mut Entry<License>, events: &[Event]) {
        if events.len() < RESERVE_DECISION_EVENTS_MIN {
            return;
        }
        let Some(state) = entry.aggregate.state() else {
            return;
        };
        let newcomers = events
            .iter()
            .filter(|event| {
                matches!(
                    event,
                    Event::UserAdded(_) | Event::InviteSent(_) | Event::UserWaitlisted(_)
                ) && event
                    .member_email()
                    .is_some_and(|email| state.member(email).is_none())
            })
            .count();
        entry.aggregate.reserve_members(newcomers);
        // The shared indexes are locked only to grow, not while the newcomers are counted.
        self.indexes
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .licenses_of_member
            .reserve(newcomers);
    }

    /// Appends with the command's id remembered for the client's retries when the client
    /// sent it (`keyed`, AUD-4), with `answer` kept beside it; an id the server made up is
    /// only recorded with the events (`EventLog::append_unkeyed`), because nobody can send
    /// it again and remembering it costs the ledger an index key and a lookup (issue 7).
    async fn append_tagged(
        &self,
        stream: &str,
        expected: ExpectedRevision,
        events: Vec<NewEvent>,
        command_id: Uuid,
        keyed: bool,
        answer: Option<Vec<u8>>,
    ) -> Result<AppendResult, LedgerError> {
        if keyed {
            self.log
                .append_answered(stream, expected, events, command_id, answer)
                .await
        } else {
            debug_assert!(answer.is_none(), "an answer is kept only for a client's id");
            self.log
                .append_unkeyed(stream, expected, events, command_id)
                .await
        }
    }

    /// AUD-4: the outcome kept with an earlier append of this command (`Ok`), or what the
    /// decision is ranked against (`Err`): a kept outcome of another request under the same
    /// id, or the caller's word that the id is taken, is a reuse (`Reuse`).
    async fn answered(
        &self,
        stream: &str,
        command_id: Uuid,
        ids: CommandIds,
    ) -> Result<Result<(Outcome, u64), Reuse>, CoreError> {
        let Some(fingerprint) = ids.fingerprint else {
            return Ok(Err(Reuse::of(stream, ids)));
        };
        let Some(kept) = self.log.command_answer(stream, command_id).await? else {
            return Ok(Err(Reuse::of(stream, ids)));
        };
        let (kept_fingerprint, outcome) = decode_answer(&kept.answer)?;
        if kept_fingerprint != fingerprint {
            return Ok(Err(Reuse(Some(reuse_error(stream, command_id)))));
        }
        Ok(Ok((
            outcome,
            crate::projector::api_position(kept.result.last_position),
        )))
    }

    /// AUD-4 for a command under a client's id that appends nothing: it never meets the
    /// ledger's own check of the id, so an id the ledger holds for another stream (the
    /// server's answers cache, which would have said so, lost it in a crash) is refused
    /// here as the append would have been. Only this path pays the lookup.
    async fn refuse_if_used_elsewhere(
        &self,
        stream: &str,
        ids: CommandIds,
    ) -> Result<(), CoreError> {
        if ids.fingerprint.is_none() {
            return Ok(());
        }
        match self.log.command_stream(ids.command_id).await? {
            Some(used_on) if used_on != stream => Err(reuse_error(stream, ids.command_id)),
            _ => Ok(()),
        }
    }

    /// Decides `command` on one license and appends nothing, for a refusal that ERR-1 ranks
    /// before one the server found itself (an import over a size limit is RESOURCE_EXHAUSTED,
    /// ranked last): `Err` is the decision's own refusal.
    pub async fn refusal_of(
        &self,
        id: &str,
        actor: &Actor,
        command: &LicenseCommand,
    ) -> Result<(), CoreError> {
        let context = self.context(actor);
        match self.existing_license(id) {
            Some(shared) => {
                let entry = shared.lock().await;
                entry.aggregate.handle(command, &context)?;
            }
            None => {
                License::default().handle(command, &context)?;
            }
        }
        Ok(())
    }

    /// Decides a command on one license and appends its events.
    pub async fn execute_license(
        &self,
        id: &str,
        actor: &Actor,
        command: &LicenseCommand,
        ids: CommandIds,
    ) -> Result<(Outcome, u64), CoreError> {
        let shared = match command {
            LicenseCommand::Issue { .. } => self.license_entry(id),
            _ => match self.existing_license(id) {
                Some(shared) => shared,
                // An unknown license: let the aggregate give its NOT_FOUND (after its own
                // INVALID_ARGUMENT checks, as ERR-1 orders them).
                None => {
                    let context = self.context(actor);
                    License::default().handle(command, &context)?;
                    unreachable!(
                        "a license that was never issued answers every command with an error"
                    );
                }
            },
        };
        let mut entry = shared.lock().await;
        // Under the stream's lock, so that a retry racing its own first attempt waits for it
        // and then finds its answer.
        let mut reuse = match self
            .answered(&license_stream(id), ids.command_id, ids)
            .await?
        {
            Ok(answered) => return Ok(answered),
            Err(reuse) => reuse,
        };
        for _ in 0..CONFLICT_RETRIES_MAX {
            let context = self.context(actor);
            let decision = reuse.decided(entry.aggregate.handle(command, &context))?;
            if decision.events.is_empty() {
                self.refuse_if_used_elsewhere(&license_stream(id), ids)
                    .await?;
                return Ok((decision.outcome, 0));
            }
            let meta = EventMeta {
                at: context.now,
                actor: actor.clone(),
            };
            let answer = ids
                .fingerprint
                .map(|fingerprint| encode_answer(&fingerprint, &decision.outcome));
            match self
                .append_license(
                    id,
                    &mut entry,
                    decision.events,
                    &meta,
                    AppendTags {
                        command_id: ids.command_id,
                        correlation_id: ids.correlation_id,
                        answer,
                        keyed: ids.fingerprint.is_some(),
                    },
                )
                .await
            {
                Ok(position) => return Ok((decision.outcome, position)),
                Err(CoreError::Ledger(LedgerError::WrongExpectedVersion { .. })) => {
                    self.catch_up_license(id, &mut entry).await?;
                }
                Err(other) => return Err(other),
            }
        }
        Err(CoreError::Contended)
    }

    /// Decides a command on one email domain and appends its events.
    pub async fn execute_domain(
        &self,
        name: &DomainName,
        actor: &Actor,
        command: &DomainCommand,
        ids: CommandIds,
    ) -> Result<u64, CoreError> {
        let shared = self.domain_entry(name);
        let mut entry = shared.lock().await;
        let mut reuse = match self
            .answered(&domain_stream(name), ids.command_id, ids)
            .await?
        {
            Ok((_, position)) => return Ok(position),
            Err(reuse) => reuse,
        };
        let answer = ids
            .fingerprint
            .map(|fingerprint| encode_answer(&fingerprint, &Outcome::Done));
        for _ in 0..CONFLICT_RETRIES_MAX {
            let context = self.context(actor);
            let decision = reuse.decided(entry.aggregate.handle(command, &context))?;
            if decision.events.is_empty() {
                self.refuse_if_used_elsewhere(&domain_stream(name), ids)
                    .await?;
                return Ok(0);
            }
            let meta = EventMeta {
                at: context.now,
                actor: actor.clone(),
            };
            let new_events = Self::new_events(&decision.events, &meta, ids.correlation_id);
            match self
                .append_tagged(
                    &domain_stream(name),
                    entry.expected(),
                    new_events,
                    ids.command_id,
                    ids.fingerprint.is_some(),
                    answer.clone(),
                )
                .await
            {
                Ok(result) => {
                    for event in &decision.events {
                        self.apply_domain(&mut entry, &meta, event);
                    }
                    entry.revision = Some(result.next_expected_revision);
                    self.applied_up_to(result.last_position);
                    return Ok(crate::projector::api_position(result.last_position));
                }
                Err(LedgerError::WrongExpectedVersion { .. }) => {
                    self.catch_up_domain(name, &mut entry).await?;
                }
                Err(other) => return Err(other.into()),
            }
        }
        Err(CoreError::Contended)
    }

    /// ClaimDomain and ReleaseDomain touch two streams: the domain's (DOM-2 uniqueness) and
    /// the license's (OU-2, the type rules). Both are decided first, under both locks (the
    /// domain's before the license's, everywhere, so two claims cannot deadlock); then the
    /// domain's event is appended, then the license's. Should the second append fail, the
    /// domain's event is undone by its opposite, so neither stream claims alone.
    pub async fn execute_claim(
        &self,
        license: &LicenseId,
        domain: &DomainName,
        claim: Option<bool>,
        actor: &Actor,
        ids: CommandIds,
    ) -> Result<u64, CoreError> {
        let CommandIds {
            command_id,
            correlation_id,
            fingerprint,
            reused: _,
        } = ids;
        // The license's append ends the command, so it keeps the answer (AUD-4).
        let license_command_id = Uuid::new_v5(&command_id, b"license");
        let license_command = match claim {
            Some(dedicated) => LicenseCommand::ClaimDomain {
                domain: domain.clone(),
                dedicated,
            },
            None => LicenseCommand::ReleaseDomain {
                domain: domain.clone(),
            },
        };
        let Some(license_shared) = self.existing_license(license.as_str()) else {
            License::default().handle(&license_command, &self.context(actor))?;
            unreachable!("a license that was never issued answers every command with an error");
        };
        let domain_shared = self.domain_entry(domain);
        let mut domain_entry = domain_shared.lock().await;
        let mut license_entry = license_shared.lock().await;
        let mut reuse = match self
            .answered(&license_stream(license.as_str()), license_command_id, ids)
            .await?
        {
            Ok((_, position)) => return Ok(position),
            Err(reuse) => reuse,
        };
        let context = self.context(actor);
        let license_decision = license_entry.aggregate.handle(&license_command, &context);
        let domain_command = match claim {
            Some(_) => DomainCommand::Claim {
                license: license.clone(),
            },
            None => DomainCommand::Release {
                license: license.clone(),
            },
        };
        let domain_decision = domain_entry.aggregate.handle(&domain_command, &context);
        // Both decisions are ranked together against a reuse: the license's refusal first,
        // as before, then the domain's.
        let (license_decision, domain_decision) = reuse.decided(
            license_decision.and_then(|license| domain_decision.map(|domain| (license, domain))),
        )?;
        let meta = EventMeta {
            at: context.now,
            actor: actor.clone(),
        };
        // Keyed when the client sent an id: a retry after a crash between the two appends
        // finds this one done and goes on to the license's.
        let result = self
            .append_tagged(
                &domain_stream(domain),
                domain_entry.expected(),
                Self::new_events(&domain_decision.events, &meta, correlation_id),
                command_id,
                fingerprint.is_some(),
                None,
            )
            .await?;
        for event in &domain_decision.events {
            self.apply_domain(&mut domain_entry, &meta, event);
        }
        domain_entry.revision = Some(result.next_expected_revision);
        self.applied_up_to(result.last_position);
        let answer = fingerprint.map(|fingerprint| encode_answer(&fingerprint, &Outcome::Done));
        match self
            .append_license(
                license.as_str(),
                &mut license_entry,
                license_decision.events,
                &meta,
                AppendTags {
                    command_id: license_command_id,
                    correlation_id,
                    keyed: answer.is_some(),
                    answer,
                },
            )
            .await
        {
            Ok(position) => Ok(position),
            Err(error) => {
                let undo = match claim {
                    Some(_) => DomainCommand::Release {
                        license: license.clone(),
                    },
                    None => DomainCommand::Claim {
                        license: license.clone(),
                    },
                };
                let undo_context = Context::new(context.now, Actor::Staff);
                if let Ok(decision) = domain_entry.aggregate.handle(&undo, &undo_context) {
                    let undo_meta = EventMeta {
                        at: context.now,
                        actor: Actor::Staff,
                    };
                    if let Ok(result) = self
                        .log
                        .append_unkeyed(
                            &domain_stream(domain),
                            domain_entry.expected(),
                            Self::new_events(&decision.events, &undo_meta, correlation_id),
                            Uuid::new_v4(),
                        )
                        .await
                    {
                        for event in &decision.events {
                            self.apply_domain(&mut domain_entry, &undo_meta, event);
                        }
                        domain_entry.revision = Some(result.next_expected_revision);
                        self.applied_up_to(result.last_position);
                    }
                }
                Err(error)
            }
        }
    }

    /// KEY-1, LINK-1, KEY-2: finds the license a secret opens and joins the actor to it.
    pub async fn redeem(
        &self,
        secret: &str,
        kind: SecretKind,
        actor: &Actor,
        ids: CommandIds,
    ) -> Result<(String, Outcome, u64), CoreError> {
        let now = self.clock.now();
        lock(&self.throttle).check(actor, now)?;
        let presented = Secret::presented(secret);
        let hash = secret_hash(&presented);
        let found = {
            let indexes = self.indexes.read().unwrap_or_else(|p| p.into_inner());
            match kind {
                SecretKind::Key => indexes.license_by_key.get(&hash).cloned(),
                SecretKind::Link => indexes.license_by_link.get(&hash).cloned(),
            }
        };
        let wrong = || {
            DomainError::NotFound(
                "no license matches this key or link; check it and try again".into(),
            )
        };
        let Some(id) = found else {
            lock(&self.throttle).record_wrong(actor, now);
            return Err(wrong().into());
        };
        let command = match kind {
            SecretKind::Key => LicenseCommand::RedeemKey { key: presented },
            SecretKind::Link => LicenseCommand::JoinViaLink { token: presented },
        };
        match self.execute_license(&id, actor, &command, ids).await {
            Ok((outcome, position)) => Ok((id, outcome, position)),
            Err(CoreError::Domain(DomainError::NotFound(_))) => {
                // Rotated between the lookup and the decision: still a wrong secret.
                lock(&self.throttle).record_wrong(actor, now);
                Err(wrong().into())
            }
            Err(other) => Err(other),
        }
    }

    /// The license that claims a domain, if any.
    pub fn claim_of(&self, domain: &DomainName) -> Option<LicenseId> {
        let indexes = self.indexes.read().unwrap_or_else(|p| p.into_inner());
        indexes.claims.get(domain).cloned()
    }

    /// LMS-2: the teacher's oldest membership of a license that takes auto-enrollments.
    pub async fn auto_enrollment_license(&self, teacher: &Email) -> Option<String> {
        let candidates: Vec<String> = {
            let indexes = self.indexes.read().unwrap_or_else(|p| p.into_inner());
            indexes.licenses_of_member.licenses(teacher)
        };
        let now = self.clock.now();
        let mut best: Option<(DateTime<Utc>, String)> = None;
        for id in candidates {
            let Some(shared) = self.existing_license(&id) else {
                continue;
            };
            let entry = shared.lock().await;
            if let Some(since) = entry.aggregate.auto_enrollment_since(teacher, now)
                && best
                    .as_ref()
                    .is_none_or(|(best_since, best_id)| (since, &id) < (*best_since, best_id))
            {
                best = Some((since, id));
            }
        }
        best.map(|(_, id)| id)
    }

    /// Whether a user administers at least one license (Q-7: only then may they read
    /// another user's History, restricted to the licenses they administer).
    pub fn administers_any_license(&self, email: &Email) -> bool {
        let indexes = self.indexes.read().unwrap_or_else(|p| p.into_inner());
        indexes
            .licenses_of_admin
            .get(email)
            .is_some_and(|licenses| !licenses.is_empty())
    }

    /// Whether a user is an admin of a license (Q-7 reads), from the live aggregate.
    pub async fn is_license_admin(&self, id: &str, email: &Email) -> bool {
        match self.existing_license(id) {
            Some(shared) => shared
                .lock()
                .await
                .aggregate
                .state()
                .is_some_and(|state| state.is_admin(email)),
            None => false,
        }
    }

    /// Whether a license was issued.
    pub async fn license_exists(&self, id: &str) -> bool {
        match self.existing_license(id) {
            Some(shared) => shared.lock().await.aggregate.is_issued(),
            None => false,
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::sync::Arc;

    use super::CommandIds;
    use chrono::{DateTime, Utc};
    use domain::{Actor, AdminChannel, Email, LicenseCommand, LicenseId, LicenseType, Secret};
    use ledger::{EmbeddedLog, EmbeddedOptions, EventLog};

    use super::Core;
    use crate::clock::ManualClock;

    #[test]
    fn a_run_of_one_actors_events_shares_one_parsed_actor() {
        // AUD-2: every event's actor decodes to what was stored, whether parsed afresh or
        // reused from the event before.
        let mut labels = super::ActorLabels::default();
        let first = labels.parse("ann@north.edu").unwrap();
        let second = labels.parse("ann@north.edu").unwrap();
        assert_eq!(first, second);
        let text = |actor: &Actor| actor.email().unwrap().as_str().as_ptr();
        assert!(std::ptr::eq(text(&first), text(&second)), "parsed once");
        // A label that only normalises to the last actor, another user, staff and a
        // refused label are each parsed as themselves.
        assert_eq!(labels.parse(" Ann@North.edu").unwrap(), first);
        assert_eq!(
            labels.parse("bo@north.edu").unwrap(),
            Actor::User(Email::parse("bo@north.edu").unwrap())
        );
        assert_eq!(labels.parse("staff").unwrap(), Actor::Staff);
        assert_eq!(labels.parse("staff").unwrap(), Actor::Staff);
        assert_eq!(labels.parse("system").unwrap(), Actor::System);
        assert!(labels.parse("not an email").is_err());
        assert_eq!(labels.parse("system").unwrap(), Actor::System);
    }

    /// A large decision's chunks are its events in order, every chunk but the last full,
    /// each its own vector (so that each one's memory goes once it is applied).
    #[test]
    fn a_decision_splits_into_full_chunks_in_order() {
        let events = |count: usize| -> Vec<domain::events::Event> {
            (0..count)
                .map(|index| {
                    domain::events::SeatsChanged {
                        seats: u32::try_from(index).expect("a small count"),
                        previous_seats: 0,
                    }
                    .into()
                })
                .collect()
        };
        for (count, chunk_events_max, sizes) in [
            (0, 3, vec![]),
            (2, 3, vec![2]),
            (3, 3, vec![3]),
            (7, 3, vec![3, 3, 1]),
            (9, 3, vec![3, 3, 3]),
        ] {
            let chunks = super::split_into_chunks(events(count), chunk_events_max);
            let chunk_sizes: Vec<usize> = chunks.iter().map(Vec::len).collect();
            assert_eq!(
                chunk_sizes, sizes,
                "{count} events in chunks of {chunk_events_max}"
            );
            let joined: Vec<domain::events::Event> = chunks.into_iter().flatten().collect();
            assert_eq!(joined, events(count), "the events keep their order");
        }
    }

    fn at(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text)
            .unwrap()
            .with_timezone(&Utc)
    }

    /// An embedded log in `folder`, and the same as the trait object the core takes.
    pub(crate) fn embedded_log(folder: &std::path::Path) -> (Arc<EmbeddedLog>, Arc<dyn EventLog>) {
        let embedded =
            Arc::new(EmbeddedLog::open(folder.join("log"), EmbeddedOptions::default()).unwrap());
        let log: Arc<dyn EventLog> = embedded.clone();
        (embedded, log)
    }

    fn clock() -> Arc<ManualClock> {
        Arc::new(ManualClock::new(at("2026-09-01T00:00:00Z")))
    }

    /// Issues `license` with `seats` seats, one admin and its own key.
    async fn issue(core: &Core, license: &str, license_type: LicenseType, seats: u32) {
        let issue = LicenseCommand::Issue {
            license: LicenseId::parse(license).unwrap(),
            license_type,
            seats,
            valid_from: at("2026-08-01T00:00:00Z"),
            valid_until: at("2027-07-31T23:59:59Z"),
            admins: vec![Email::parse("admin@north.edu").unwrap()],
            key: Secret::new(format!("{license}-key-{}", "k".repeat(24))).unwrap(),
            link: Secret::new("l".repeat(24)).unwrap(),
        };
        core.execute_license(license, &Actor::Staff, &issue, CommandIds::fresh())
            .await
            .unwrap();
    }

    async fn issue_and_add(core: &Core, license: &str, emails: &[&str]) {
        issue(core, license, LicenseType::School, 50).await;
        add(core, license, emails).await;
    }

    async fn add(core: &Core, license: &str, emails: &[&str]) {
        let command = LicenseCommand::AddUsers {
            emails: emails.iter().map(|e| Email::parse(e).unwrap()).collect(),
            channel: AdminChannel::EmailList,
        };
        core.execute_license(license, &Actor::Staff, &command, CommandIds::fresh())
            .await
            .unwrap();
    }

    async fn users(core: &Core, license: &str) -> Option<u64> {
        let shared = core.existing_license(license)?;
        let entry = shared.lock().await;
        entry.aggregate.state().map(|state| state.users_count())
    }

    /// LMS-2 picks among a teacher's licenses: the compact index must keep every membership
    /// and forget exactly the removed one.
    #[test]
    fn the_member_index_keeps_each_membership_until_its_removal() {
        let mut index = super::MemberLicenses::<std::hash::RandomState>::default();
        let teacher = Email::parse("t@north.edu").unwrap();
        let other = Email::parse("o@north.edu").unwrap();
        index.insert(&teacher, "L1");
        index.insert(&teacher, "L2");
        index.insert(&teacher, "L3");
        index.insert(&other, "L2");
        let mut licenses = index.licenses(&teacher);
        licenses.sort();
        assert_eq!(licenses, ["L1", "L2", "L3"]);
        index.remove(&teacher, "L2");
        let mut licenses = index.licenses(&teacher);
        licenses.sort();
        assert_eq!(licenses, ["L1", "L3"]);
        assert_eq!(index.licenses(&other), ["L2"], "another member keeps L2");
        index.remove(&teacher, "L1");
        assert_eq!(index.licenses(&teacher), ["L3"]);
        assert!(
            index.of_several.is_empty(),
            "one license left: a single slot"
        );
        index.remove(&teacher, "L3");
        assert!(index.licenses(&teacher).is_empty());
        index.remove(&other, "L2");
        assert!(
            index.of_one.is_empty() && index.of_several.is_empty(),
            "emptied entries are dropped"
        );
    }

    /// A hasher that gives every email the same hash, so that every member collides.
    #[derive(Default)]
    struct CollidingHasher;

    impl std::hash::Hasher for CollidingHasher {
        fn finish(&self) -> u64 {
            7
        }
        fn write(&mut self, _bytes: &[u8]) {}
    }

    /// Two emails of one hash: one leaving a license must not take the other's membership
    /// with it, whether they share one license or several.
    #[test]
    fn colliding_members_keep_each_other_s_memberships() {
        let mut index =
            super::MemberLicenses::<std::hash::BuildHasherDefault<CollidingHasher>>::default();
        let ann = Email::parse("ann@north.edu").unwrap();
        let bob = Email::parse("bob@north.edu").unwrap();
        index.insert(&ann, "L1");
        index.insert(&bob, "L1");
        index.remove(&ann, "L1");
        assert_eq!(index.licenses(&bob), ["L1"], "bob is still a member of L1");
        index.insert(&ann, "L2");
        index.insert(&bob, "L2");
        index.remove(&bob, "L1");
        // Both are in L2; ann's hash also names nothing else now.
        assert_eq!(index.licenses(&ann), ["L2"]);
        index.remove(&ann, "L2");
        assert_eq!(index.licenses(&bob), ["L2"], "bob is still a member of L2");
        index.remove(&bob, "L2");
        assert!(index.licenses(&bob).is_empty());
        assert!(index.of_one.is_empty() && index.of_several.is_empty());
    }

    /// who administers a license follows issue, grant and revoke, and is the same
    /// whether the core was built live, replayed from the log or restored from a snapshot.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_license_admins_index_follows_grants_and_revocations() {
        let dir = tempfile::tempdir().unwrap();
        let (embedded, log) = embedded_log(dir.path());
        let core = Core::open(log.clone(), clock()).await.unwrap();
        let issuer = Email::parse("admin@north.edu").unwrap();
        let granted = Email::parse("second@north.edu").unwrap();
        assert!(!core.administers_any_license(&issuer));
        issue_and_add(&core, "L1", &["a@north.edu"]).await;
        let admin = |command: LicenseCommand| {
            let core = &core;
            async move {
                core.execute_license("L1", &Actor::Staff, &command, CommandIds::fresh())
                    .await
                    .unwrap();
            }
        };
        admin(LicenseCommand::GrantAdmin {
            email: granted.clone(),
        })
        .await;
        assert!(core.administers_any_license(&issuer));
        assert!(core.administers_any_license(&granted));
        let snapshot = core.snapshot().await.unwrap();
        admin(LicenseCommand::RevokeAdmin {
            email: issuer.clone(),
        })
        .await;
        assert!(!core.administers_any_license(&issuer));
        assert!(core.administers_any_license(&granted));
        assert!(!core.administers_any_license(&Email::parse("a@north.edu").unwrap()));
        drop(core);

        let replayed = Core::open(log.clone(), clock()).await.unwrap();
        let restored = Core::open_from(log.clone(), clock(), Some(&snapshot))
            .await
            .unwrap();
        assert!(restored.events_from_snapshot() > 0, "the snapshot was used");
        for core in [&replayed, &restored] {
            assert!(!core.administers_any_license(&issuer));
            assert!(core.administers_any_license(&granted));
        }
        drop((replayed, restored));
        embedded.close().await.unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_snapshot_shortens_start_up_and_only_fits_its_own_log() {
        let dir = tempfile::tempdir().unwrap();
        let (embedded, log) = embedded_log(dir.path());
        let first = Core::open(log.clone(), clock()).await.unwrap();
        issue_and_add(&first, "L1", &["a@north.edu", "b@north.edu"]).await;
        let snapshot = first.snapshot().await.unwrap();
        // Events appended after the snapshot come from the log's tail at start-up.
        add(&first, "L1", &["c@north.edu"]).await;
        drop(first);

        let restored = Core::open_from(log.clone(), clock(), Some(&snapshot))
            .await
            .unwrap();
        assert_eq!(
            restored.events_from_snapshot(),
            3,
            "issue and two adds came from the snapshot"
        );
        assert_eq!(users(&restored, "L1").await, Some(3));
        let replayed = Core::open(log.clone(), clock()).await.unwrap();
        assert_eq!(replayed.events_from_snapshot(), 0);
        assert_eq!(users(&replayed, "L1").await, Some(3));
        // The key index was restored too: the snapshot's license still opens by its key.
        let key_hash =
            super::secret_hash(&Secret::presented(&format!("L1-key-{}", "k".repeat(24))));
        assert!(
            restored
                .indexes
                .read()
                .unwrap()
                .license_by_key
                .contains_key(&key_hash)
        );

        // A snapshot of another log, even a longer one, is refused.
        let other_dir = tempfile::tempdir().unwrap();
        let (other, other_log) = embedded_log(other_dir.path());
        let other_core = Core::open(other_log.clone(), clock()).await.unwrap();
        issue_and_add(
            &other_core,
            "GHOST",
            &["x@north.edu", "y@north.edu", "z@north.edu"],
        )
        .await;
        let foreign = other_core.snapshot().await.unwrap();
        drop(other_core);
        let guarded = Core::open_from(log.clone(), clock(), Some(&foreign))
            .await
            .unwrap();
        assert_eq!(guarded.events_from_snapshot(), 0);
        assert_eq!(
            users(&guarded, "GHOST").await,
            None,
            "nothing of the other log leaked in"
        );
        assert_eq!(users(&guarded, "L1").await, Some(3));
        drop((restored, replayed, guarded));
        embedded.close().await.unwrap();
        other.close().await.unwrap();
    }

    /// ERR-1 and AUD-4 where the ledger alone knows the id (the answers cache lost it in a
    /// crash): a reused id is decided first, so NOT_FOUND and PERMISSION_DENIED come before
    /// its FAILED_PRECONDITION, and a reused command never appends; and the caller's word
    /// that an id is taken (`reused`) refuses a command that would succeed.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_reused_command_id_is_refused_in_err_1_order_and_appends_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let (embedded, log) = embedded_log(dir.path());
        let core = Core::open(log.clone(), clock()).await.unwrap();
        issue_and_add(&core, "L1", &["a@north.edu"]).await;
        let admin = Actor::User(Email::parse("admin@north.edu").unwrap());
        let stranger = Actor::User(Email::parse("stranger@north.edu").unwrap());
        let add = |email: &str| LicenseCommand::AddUsers {
            emails: vec![Email::parse(email).unwrap()],
            channel: AdminChannel::EmailList,
        };
        let first = CommandIds {
            fingerprint: Some([1; 32]),
            ..CommandIds::fresh()
        };
        let other_request = CommandIds {
            fingerprint: Some([2; 32]),
            ..first
        };
        core.execute_license("L1", &admin, &add("b@north.edu"), first)
            .await
            .unwrap();
        let code = |result: Result<(domain::Outcome, u64), super::CoreError>| {
            crate::status::from_core(result.expect_err("refused")).code()
        };
        let before = users(&core, "L1").await;
        let denied = core
            .execute_license("L1", &stranger, &add("c@north.edu"), other_request)
            .await;
        assert_eq!(code(denied), tonic::Code::PermissionDenied);
        let reused = core
            .execute_license("L1", &admin, &add("c@north.edu"), other_request)
            .await;
        assert_eq!(code(reused), tonic::Code::FailedPrecondition);
        let unknown = core
            .execute_license("L9", &admin, &add("c@north.edu"), other_request)
            .await;
        assert_eq!(code(unknown), tonic::Code::NotFound);
        let told = CommandIds {
            reused: true,
            ..CommandIds::fresh()
        };
        let refused = core
            .execute_license("L1", &admin, &add("d@north.edu"), told)
            .await;
        assert_eq!(code(refused), tonic::Code::FailedPrecondition);
        assert_eq!(
            users(&core, "L1").await,
            before,
            "no reused command appended"
        );
        let retried = core
            .execute_license("L1", &admin, &add("b@north.edu"), first)
            .await
            .unwrap();
        assert_eq!(
            users(&core, "L1").await,
            before,
            "the retry appended nothing"
        );
        assert!(
            retried.1 > 0,
            "the retry answers the first append's position"
        );
        // AUD-4: on another license, the same id with a command that appends nothing (its
        // user is already a member) is refused too, though no append meets the ledger's
        // check of the id; with a fresh id the same command succeeds.
        issue_and_add(&core, "L2", &["a@north.edu"]).await;
        let unchanged = core
            .execute_license("L2", &admin, &add("a@north.edu"), other_request)
            .await;
        assert_eq!(code(unchanged), tonic::Code::FailedPrecondition);
        let fresh = CommandIds {
            fingerprint: Some([3; 32]),
            ..CommandIds::fresh()
        };
        core.execute_license("L2", &admin, &add("a@north.edu"), fresh)
            .await
            .expect("an unused id with nothing to append succeeds");
        drop(core);
        embedded.close().await.unwrap();
    }

    /// A log that takes `appends_left` more appends and then fails every other one, as a
    /// server stopped between two appends leaves its log.
    struct StoppingLog {
        inner: Arc<dyn EventLog>,
        appends_left: std::sync::atomic::AtomicUsize,
    }

    impl StoppingLog {
        fn take_append(&self) -> ledger::Result<()> {
            use std::sync::atomic::Ordering;
            self.appends_left
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |left| {
                    left.checked_sub(1)
                })
                .map(|_| ())
                .map_err(|_| ledger::LedgerError::Closed)
        }
    }

    #[async_trait::async_trait]
    impl EventLog for StoppingLog {
        async fn append_answered(
            &self,
            stream: &str,
            expected: ledger::ExpectedRevision,
            events: Vec<ledger::NewEvent>,
            command_id: uuid::Uuid,
            answer: Option<Vec<u8>>,
        ) -> ledger::Result<ledger::AppendResult> {
            self.take_append()?;
            self.inner
                .append_answered(stream, expected, events, command_id, answer)
                .await
        }

        async fn append_unkeyed(
            &self,
            stream: &str,
            expected: ledger::ExpectedRevision,
            events: Vec<ledger::NewEvent>,
            command_id: uuid::Uuid,
        ) -> ledger::Result<ledger::AppendResult> {
            self.take_append()?;
            self.inner
                .append_unkeyed(stream, expected, events, command_id)
                .await
        }

        async fn command_answer(
            &self,
            stream: &str,
            command_id: uuid::Uuid,
        ) -> ledger::Result<Option<ledger::CommandAnswer>> {
            self.inner.command_answer(stream, command_id).await
        }

        async fn command_stream(&self, command_id: uuid::Uuid) -> ledger::Result<Option<String>> {
            self.inner.command_stream(command_id).await
        }

        async fn read_stream(
            &self,
            stream: &str,
            from_revision: u64,
            max: usize,
        ) -> ledger::Result<Vec<ledger::RecordedEvent>> {
            self.inner.read_stream(stream, from_revision, max).await
        }

        async fn read_all(
            &self,
            from_position: u64,
            max: usize,
        ) -> ledger::Result<Vec<ledger::RecordedEvent>> {
            self.inner.read_all(from_position, max).await
        }

        async fn subscribe_all(&self, from_position: u64) -> ledger::Result<ledger::Subscription> {
            self.inner.subscribe_all(from_position).await
        }

        async fn verify(&self) -> ledger::Result<ledger::VerifyReport> {
            self.inner.verify().await
        }
    }

    /// A decision large enough to have its newcomers' room made at once, appended in several
    /// chunks, leaves the aggregate and the member index as small appends would: every
    /// newcomer a member exactly once, each found by the index, and a core reopened from the
    /// log agrees.
    #[tokio::test]
    async fn a_large_chunked_import_leaves_every_member_in_the_aggregate_and_the_index() {
        let dir = tempfile::tempdir().unwrap();
        let (embedded, log) = embedded_log(dir.path());
        let core = Core::open(log.clone(), clock())
            .await
            .unwrap()
            .with_append_chunk_events_max(1_000);
        issue(&core, "L1", LicenseType::District, 20_000).await;
        // Two members before the import: they are not newcomers.
        add(&core, "L1", &["u0@north.edu", "u1@north.edu"]).await;
        let count = super::RESERVE_DECISION_EVENTS_MIN + 1_500;
        let emails: Vec<Email> = (0..count)
            .map(|index| Email::parse(&format!("u{index}@north.edu")).unwrap())
            .collect();
        let import = LicenseCommand::AddUsers {
            emails: emails.clone(),
            channel: AdminChannel::Csv,
        };
        let (outcome, _) = core
            .execute_license("L1", &Actor::Staff, &import, CommandIds::fresh())
            .await
            .unwrap();
        let domain::Outcome::UsersAdded(summary) = outcome else {
            panic!("an import answers with its counts, not {outcome:?}");
        };
        assert_eq!((summary.added, summary.unchanged), (count as u64 - 2, 2));
        assert_eq!(users(&core, "L1").await, Some(count as u64));
        {
            let indexes = core.indexes.read().unwrap();
            for email in &emails {
                assert_eq!(
                    indexes.licenses_of_member.licenses(email),
                    ["L1"],
                    "{email}"
                );
            }
        }
        let reopened = Core::open(log.clone(), clock()).await.unwrap();
        assert_eq!(users(&reopened, "L1").await, Some(count as u64));
        drop((core, reopened));
        embedded.close().await.unwrap();
    }

    /// A large decision is appended in chunks; a server stopped between two leaves the
    /// first applied. The client's retry with the same command id is decided again over
    /// them and must append the rest: its chunks start at later revisions, so their ids
    /// differ from the first attempt's (with ids from the chunk's index alone, the ledger
    /// refused the retry's first chunk as a reused id: FAILED_PRECONDITION, and the import
    /// could only be finished under a new id). A further retry gets the answer back.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_retry_after_a_stop_between_chunks_appends_the_rest_once() {
        let dir = tempfile::tempdir().unwrap();
        let (embedded, log) = embedded_log(dir.path());
        // The issue, then the first chunk of the import: two appends, then the stop.
        let stopping: Arc<dyn EventLog> = Arc::new(StoppingLog {
            inner: log.clone(),
            appends_left: std::sync::atomic::AtomicUsize::new(2),
        });
        let first = Core::open(stopping, clock())
            .await
            .unwrap()
            .with_append_chunk_events_max(2);
        issue_and_add(&first, "L1", &[]).await;
        let emails: Vec<String> = (0..5).map(|index| format!("u{index}@north.edu")).collect();
        let import = LicenseCommand::AddUsers {
            emails: emails.iter().map(|e| Email::parse(e).unwrap()).collect(),
            channel: AdminChannel::EmailList,
        };
        let ids = CommandIds {
            fingerprint: Some([7; 32]),
            ..CommandIds::fresh()
        };
        assert!(
            first
                .execute_license("L1", &Actor::Staff, &import, ids)
                .await
                .is_err(),
            "the log stopped after the first chunk"
        );
        drop(first);

        let restarted = Core::open(log.clone(), clock())
            .await
            .unwrap()
            .with_append_chunk_events_max(2);
        assert_eq!(
            users(&restarted, "L1").await,
            Some(2),
            "the first chunk stayed"
        );
        restarted
            .execute_license("L1", &Actor::Staff, &import, ids)
            .await
            .unwrap();
        assert_eq!(
            users(&restarted, "L1").await,
            Some(5),
            "the retry appended the rest"
        );
        let appended = log.read_stream("license-L1", 0, 100).await.unwrap().len();
        restarted
            .execute_license("L1", &Actor::Staff, &import, ids)
            .await
            .unwrap();
        assert_eq!(
            log.read_stream("license-L1", 0, 100).await.unwrap().len(),
            appended,
            "a further retry appends nothing"
        );
        let reopened = Core::open(log.clone(), clock()).await.unwrap();
        assert_eq!(
            users(&reopened, "L1").await,
            Some(5),
            "the log holds every row once"
        );
        drop((restarted, reopened));
        embedded.close().await.unwrap();
    }
}
