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
use std::sync::{Arc, Mutex, RwLock};

use chrono::{DateTime, Utc};
use domain::events::{Event, EventMeta};
use domain::{
    Actor, Context, DomainCommand, DomainError, DomainName, Email, EmailDomain, License,
    LicenseCommand, LicenseId, Outcome, Secret, WrongSecretThrottle,
};
use ledger::{EventLog, ExpectedRevision, LedgerError, NewEvent, RecordedEvent};
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

/// SHA-256 of a secret: the indexes hold this, never the secret.
pub fn secret_hash(secret: &Secret) -> [u8; 32] {
    Sha256::digest(secret.expose().as_bytes()).into()
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
}

/// A stored event decoded for the domain.
pub struct Decoded {
    pub meta: EventMeta,
    pub event: Event,
}

pub fn decode(recorded: &RecordedEvent) -> Result<Decoded, CoreError> {
    let event = Event::decode(
        &recorded.event_type,
        recorded.schema_version,
        &recorded.payload,
    )
    .map_err(|error| CoreError::Decode(format!("position {}: {error}", recorded.position)))?;
    let actor = parse_actor_label(&recorded.actor).map_err(|reason| {
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
    licenses_of_member: HashMap<Email, BTreeSet<String>>,

    domains_of_admin: HashMap<Email, BTreeSet<DomainName>>,
    claims: HashMap<DomainName, LicenseId>,
}

/// Which license a secret opened.
pub enum SecretKind {
    Key,
    Link,
}

pub struct Core {
    log: Arc<dyn EventLog>,
    clock: Arc<dyn Clock>,
    licenses: Mutex<HashMap<String, Shared<License>>>,
    domains: Mutex<HashMap<DomainName, Shared<EmailDomain>>>,
    indexes: RwLock<Indexes>,
    throttle: Mutex<WrongSecretThrottle>,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Core {
    /// Rebuilds every aggregate from the log.
    pub async fn open(log: Arc<dyn EventLog>, clock: Arc<dyn Clock>) -> Result<Self, CoreError> {
        let core = Self {
            log,
            clock,
            licenses: Mutex::new(HashMap::new()),
            domains: Mutex::new(HashMap::new()),
            indexes: RwLock::new(Indexes::default()),
            throttle: Mutex::new(WrongSecretThrottle::new()),
        };
        let mut from = 0;
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

    pub fn log(&self) -> &Arc<dyn EventLog> {
        &self.log
    }

    pub fn now(&self) -> DateTime<Utc> {
        self.clock.now()
    }

    async fn replay(&self, recorded: &RecordedEvent) -> Result<(), CoreError> {
        let decoded = decode(recorded)?;
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
        let old_key = entry.aggregate.state().map(|s| secret_hash(s.key()));
        let old_link = entry
            .aggregate
            .state()
            .and_then(|s| s.link().map(secret_hash));
        entry.aggregate.apply(meta, event);
        let mut indexes = self.indexes.write().unwrap_or_else(|p| p.into_inner());
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
            Event::UserAdded(e) => {
                indexes
                    .licenses_of_member
                    .entry(e.email.clone())
                    .or_default()
                    .insert(id.to_owned());
            }
            Event::InviteSent(e) => {
                indexes
                    .licenses_of_member
                    .entry(e.email.clone())
                    .or_default()
                    .insert(id.to_owned());
            }
            Event::UserWaitlisted(e) => {
                indexes
                    .licenses_of_member
                    .entry(e.email.clone())
                    .or_default()
                    .insert(id.to_owned());
            }
            Event::UserRemoved(e) => {
                if let Some(licenses) = indexes.licenses_of_member.get_mut(&e.email) {
                    licenses.remove(id);
                    if licenses.is_empty() {
                        indexes.licenses_of_member.remove(&e.email);
                    }
                }
            }
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
        events: &[Event],
        meta: &EventMeta,
        command_id: Uuid,
        correlation_id: Uuid,
    ) -> Result<u64, CoreError> {
        let mut last_position = 0;
        for (index, chunk) in events.chunks(ledger::APPEND_EVENTS_MAX).enumerate() {
            // Each chunk of a very large decision is its own append; its id derives from
            // the command's so that a retried chunk is recognised by the ledger.
            let chunk_id = if index == 0 {
                command_id
            } else {
                Uuid::new_v5(&command_id, &index.to_be_bytes())
            };
            let new_events = Self::new_events(chunk, meta, correlation_id);
            let result = self
                .log
                .append(&license_stream(id), entry.expected(), new_events, chunk_id)
                .await?;
            let expected_last = entry.revision.map_or(0, |r| r + 1) + chunk.len() as u64 - 1;
            if result.next_expected_revision != expected_last {
                // The ledger answered an earlier append of this command id: nothing new was
                // written. Re-read the stream so memory matches the log.
                self.catch_up_license(id, entry).await?;
                return Ok(crate::projector::api_position(result.last_position));
            }
            for event in chunk {
                self.apply_license(id, entry, meta, event);
            }
            entry.revision = Some(result.next_expected_revision);
            last_position = crate::projector::api_position(result.last_position);
        }
        Ok(last_position)
    }

    /// Decides a command on one license and appends its events.
    pub async fn execute_license(
        &self,
        id: &str,
        actor: &Actor,
        command: &LicenseCommand,
        command_id: Uuid,
        correlation_id: Uuid,
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
        for _ in 0..CONFLICT_RETRIES_MAX {
            let context = self.context(actor);
            let decision = entry.aggregate.handle(command, &context)?;
            if decision.events.is_empty() {
                return Ok((decision.outcome, 0));
            }
            let meta = EventMeta {
                at: context.now,
                actor: actor.clone(),
            };
            match self
                .append_license(
                    id,
                    &mut entry,
                    &decision.events,
                    &meta,
                    command_id,
                    correlation_id,
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
        command_id: Uuid,
        correlation_id: Uuid,
    ) -> Result<u64, CoreError> {
        let shared = self.domain_entry(name);
        let mut entry = shared.lock().await;
        for _ in 0..CONFLICT_RETRIES_MAX {
            let context = self.context(actor);
            let decision = entry.aggregate.handle(command, &context)?;
            if decision.events.is_empty() {
                return Ok(0);
            }
            let meta = EventMeta {
                at: context.now,
                actor: actor.clone(),
            };
            let new_events = Self::new_events(&decision.events, &meta, correlation_id);
            match self
                .log
                .append(
                    &domain_stream(name),
                    entry.expected(),
                    new_events,
                    command_id,
                )
                .await
            {
                Ok(result) => {
                    for event in &decision.events {
                        self.apply_domain(&mut entry, &meta, event);
                    }
                    entry.revision = Some(result.next_expected_revision);
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
        command_id: Uuid,
        correlation_id: Uuid,
    ) -> Result<u64, CoreError> {
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
        let context = self.context(actor);
        let license_decision = license_entry.aggregate.handle(&license_command, &context)?;
        let domain_command = match claim {
            Some(_) => DomainCommand::Claim {
                license: license.clone(),
            },
            None => DomainCommand::Release {
                license: license.clone(),
            },
        };
        let domain_decision = domain_entry.aggregate.handle(&domain_command, &context)?;
        let meta = EventMeta {
            at: context.now,
            actor: actor.clone(),
        };
        let result = self
            .log
            .append(
                &domain_stream(domain),
                domain_entry.expected(),
                Self::new_events(&domain_decision.events, &meta, correlation_id),
                command_id,
            )
            .await?;
        for event in &domain_decision.events {
            self.apply_domain(&mut domain_entry, &meta, event);
        }
        domain_entry.revision = Some(result.next_expected_revision);
        let license_command_id = Uuid::new_v5(&command_id, b"license");
        match self
            .append_license(
                license.as_str(),
                &mut license_entry,
                &license_decision.events,
                &meta,
                license_command_id,
                correlation_id,
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
                        .append(
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
        command_id: Uuid,
        correlation_id: Uuid,
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
        match self
            .execute_license(&id, actor, &command, command_id, correlation_id)
            .await
        {
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
            indexes
                .licenses_of_member
                .get(teacher)
                .map(|licenses| licenses.iter().cloned().collect())
                .unwrap_or_default()
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
