//! Plays every scenario of `tests/scenarios/` (the public ones of `../shared/scenarios/` and
//! our own) against the pure domain: an in-memory world of aggregates that routes each
//! command the way the server will, and answers each query from the aggregates' state. It
//! proves that the domain alone decides every scenario; the gRPC runner of the server issue
//! plays the same files end to end.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use domain::csv_import::{CsvImportParser, CsvRow, RowErrors};
use domain::email_list::parse_email_list;
use domain::events::{Event, EventMeta, OuEntry};
use domain::query::EmailPattern;
use domain::{
    Actor, AdminChannel, Context, DomainCommand, DomainError, DomainName, Email, EmailDomain,
    ErrorKind, License, LicenseCommand, LicenseId, LicenseType, Lms, OuPath, Outcome, Role,
    ScannedAccount, Secret, Source, Status, WrongSecretThrottle,
};
use serde_json::{Map, Value, json};

/// A refusal as the API will give it: the gRPC code's name and the message.
#[derive(Debug)]
struct Failure {
    code: &'static str,
    message: String,
}

impl From<DomainError> for Failure {
    fn from(error: DomainError) -> Self {
        let code = match error.kind() {
            ErrorKind::InvalidArgument => "INVALID_ARGUMENT",
            ErrorKind::NotFound => "NOT_FOUND",
            ErrorKind::PermissionDenied => "PERMISSION_DENIED",
            ErrorKind::FailedPrecondition => "FAILED_PRECONDITION",
            ErrorKind::AlreadyExists => "ALREADY_EXISTS",
            ErrorKind::ResourceExhausted => "RESOURCE_EXHAUSTED",
        };
        Self {
            code,
            message: error.message().to_owned(),
        }
    }
}

fn invalid(message: impl Into<String>) -> Failure {
    DomainError::InvalidArgument(message.into()).into()
}

fn denied(message: impl Into<String>) -> Failure {
    DomainError::PermissionDenied(message.into()).into()
}

type Answer = Result<Value, Failure>;

/// An answer as remembered for a retried command id: the value or the code and message.
type StoredAnswer = Result<Value, (&'static str, String)>;

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Stream {
    License(String),
    Domain(DomainName),
}

#[derive(Clone)]
struct Recorded {
    stream: Stream,
    meta: EventMeta,
    event: Event,
}

/// The whole ledger in memory.
#[derive(Clone)]
struct World {
    now: DateTime<Utc>,
    licenses: BTreeMap<String, License>,
    domains: BTreeMap<DomainName, EmailDomain>,
    history: Vec<Recorded>,
    throttle: WrongSecretThrottle,
    secrets_made: u64,
    /// AUD-4: command id -> (what the command was, its first answer).
    commands: HashMap<String, (String, StoredAnswer)>,
}

fn arg<'a>(with: &'a Map<String, Value>, name: &str) -> Result<&'a Value, Failure> {
    with.get(name)
        .ok_or_else(|| invalid(format!("missing argument '{name}'")))
}

fn text<'a>(with: &'a Map<String, Value>, name: &str) -> Result<&'a str, Failure> {
    arg(with, name)?
        .as_str()
        .ok_or_else(|| invalid(format!("'{name}' must be text")))
}

fn flag(with: &Map<String, Value>, name: &str) -> Result<bool, Failure> {
    match with.get(name) {
        None => Ok(false),
        Some(value) => value
            .as_bool()
            .ok_or_else(|| invalid(format!("'{name}' must be true or false"))),
    }
}

fn time_arg(with: &Map<String, Value>, name: &str) -> Result<DateTime<Utc>, Failure> {
    DateTime::parse_from_rfc3339(text(with, name)?)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|_| invalid(format!("'{name}' must be an RFC 3339 time")))
}

fn seats_arg(with: &Map<String, Value>) -> Result<u32, Failure> {
    let seats = arg(with, "seats")?
        .as_i64()
        .ok_or_else(|| invalid("'seats' must be a whole number"))?;
    u32::try_from(seats)
        .map_err(|_| invalid(format!("seats must be between 1 and 10000000, not {seats}")))
}

fn email_arg(with: &Map<String, Value>, name: &str) -> Result<Email, Failure> {
    Email::parse(text(with, name)?).map_err(|reason| invalid(format!("'{name}': {reason}")))
}

fn domain_arg(with: &Map<String, Value>, name: &str) -> Result<DomainName, Failure> {
    DomainName::parse(text(with, name)?).map_err(|reason| invalid(format!("'{name}': {reason}")))
}

fn strings(with: &Map<String, Value>, name: &str) -> Result<Vec<String>, Failure> {
    arg(with, name)?
        .as_array()
        .ok_or_else(|| invalid(format!("'{name}' must be a list")))?
        .iter()
        .map(|v| {
            v.as_str()
                .map(str::to_owned)
                .ok_or_else(|| invalid(format!("'{name}' must hold text")))
        })
        .collect()
}

fn emails_arg(with: &Map<String, Value>, name: &str) -> Result<Vec<Email>, Failure> {
    strings(with, name)?
        .iter()
        .map(|raw| Email::parse(raw).map_err(|reason| invalid(format!("'{name}': {reason}"))))
        .collect()
}

fn status_name(status: Status) -> &'static str {
    status.as_str()
}

impl World {
    fn new(now: DateTime<Utc>) -> Self {
        Self {
            now,
            licenses: BTreeMap::new(),
            domains: BTreeMap::new(),
            history: Vec::new(),
            throttle: WrongSecretThrottle::new(),
            secrets_made: 0,
            commands: HashMap::new(),
        }
    }

    fn fresh_secret(&mut self) -> Secret {
        // Stands in for the server's 128 random bits: distinct, well-formed, never reused.
        self.secrets_made += 1;
        Secret::new(format!("test-secret-{:0>16}", self.secrets_made)).unwrap()
    }

    fn license(&self, id: &str) -> License {
        self.licenses.get(id).cloned().unwrap_or_default()
    }

    fn domain(&self, name: &DomainName) -> EmailDomain {
        self.domains
            .get(name)
            .cloned()
            .unwrap_or_else(|| EmailDomain::new(name.clone()))
    }

    fn context(&self, actor: &Actor) -> Context {
        let ctx = Context::new(self.now, actor.clone());
        match actor.email() {
            Some(email) => ctx.with_domain_admin_of(
                self.domains
                    .values()
                    .filter(|d| d.is_admin(email))
                    .map(|d| d.name().clone()),
            ),
            None => ctx,
        }
    }

    fn record(&mut self, stream: Stream, actor: &Actor, events: &[Event]) {
        let meta = EventMeta {
            at: self.now,
            actor: actor.clone(),
        };
        for event in events {
            match &stream {
                Stream::License(id) => self
                    .licenses
                    .entry(id.clone())
                    .or_default()
                    .apply(&meta, event),
                Stream::Domain(name) => {
                    let name = name.clone();
                    self.domains
                        .entry(name.clone())
                        .or_insert_with(|| EmailDomain::new(name))
                        .apply(&meta, event)
                }
            }
            self.history.push(Recorded {
                stream: stream.clone(),
                meta: meta.clone(),
                event: event.clone(),
            });
        }
    }

    /// Decides a command on a license and records its events.
    fn run_license(
        &mut self,
        id: &str,
        actor: &Actor,
        command: LicenseCommand,
    ) -> Result<Outcome, Failure> {
        let decision = self.license(id).handle(&command, &self.context(actor))?;
        self.record(Stream::License(id.to_owned()), actor, &decision.events);
        Ok(decision.outcome)
    }

    fn require_integration(actor: &Actor) -> Result<(), Failure> {
        match actor {
            Actor::Staff | Actor::System => Ok(()),
            Actor::User(_) => Err(denied("only the system integration may do this")),
        }
    }

    fn command(&mut self, name: &str, actor: &Actor, with: &Map<String, Value>) -> Answer {
        use LicenseCommand as C;
        let license_id = || -> Result<String, Failure> {
            let raw = text(with, "license")?;
            Ok(LicenseId::parse(raw)?.as_str().to_owned())
        };
        let outcome = match name {
            "IssueLicense" => {
                let license = LicenseId::parse(text(with, "license")?)?;
                let command = C::Issue {
                    license_type: LicenseType::parse(text(with, "type")?)?,
                    seats: seats_arg(with)?,
                    valid_from: time_arg(with, "valid_from")?,
                    valid_until: time_arg(with, "valid_until")?,
                    admins: emails_arg(with, "admins")?,
                    key: self.fresh_secret(),
                    link: self.fresh_secret(),
                    license: license.clone(),
                };
                self.run_license(license.as_str(), actor, command)?
            }
            "RenewLicense" => {
                let command = C::Renew {
                    valid_until: time_arg(with, "valid_until")?,
                };
                self.run_license(&license_id()?, actor, command)?
            }
            "ChangeSeats" => {
                let command = C::ChangeSeats {
                    seats: seats_arg(with)?,
                };
                self.run_license(&license_id()?, actor, command)?
            }
            "GrantLicenseAdmin" | "RevokeLicenseAdmin" => {
                let email = email_arg(with, "email")?;
                let command = if name == "GrantLicenseAdmin" {
                    C::GrantAdmin { email }
                } else {
                    C::RevokeAdmin { email }
                };
                self.run_license(&license_id()?, actor, command)?
            }
            "GrantDomainAdmin" | "RevokeDomainAdmin" => {
                let domain = domain_arg(with, "domain")?;
                let email = email_arg(with, "email")?;
                let command = if name == "GrantDomainAdmin" {
                    DomainCommand::GrantAdmin { email }
                } else {
                    DomainCommand::RevokeAdmin { email }
                };
                let decision = self
                    .domain(&domain)
                    .handle(&command, &self.context(actor))?;
                self.record(Stream::Domain(domain), actor, &decision.events);
                Outcome::Done
            }
            "AddUsersByEmail" => {
                let entries = parse_email_list(text(with, "emails")?)?;
                let id = license_id()?;
                let mut invalid = Vec::new();
                let mut emails = Vec::new();
                for entry in entries {
                    match entry.email {
                        Ok(email) => emails.push(email),
                        Err(reason) => invalid.push(json!({"position": entry.position, "value": entry.value, "reason": reason})),
                    }
                }
                let outcome = self.run_license(
                    &id,
                    actor,
                    C::AddUsers {
                        emails,
                        channel: AdminChannel::EmailList,
                    },
                )?;
                let Outcome::UsersAdded(summary) = outcome else {
                    panic!("AddUsers answers UsersAdded")
                };
                return Ok(
                    json!({"added": summary.added, "invited": summary.invited, "unchanged": summary.unchanged, "invalid": invalid}),
                );
            }
            "ImportCsv" => {
                let mode = text(with, "mode")?;
                if mode != "add" && mode != "remove" {
                    return Err(invalid("mode must be 'add' or 'remove'"));
                }
                let mut parser = CsvImportParser::new();
                let mut rows = Vec::new();
                // Feed the file in small chunks, as the streaming API will.
                for chunk in text(with, "csv")?.as_bytes().chunks(7) {
                    parser.push(chunk, &mut rows).map_err(DomainError::from)?;
                }
                parser.finish(&mut rows).map_err(DomainError::from)?;
                let id = license_id()?;
                let mut errors = RowErrors::new();
                let mut emails = Vec::new();
                for row in rows {
                    match row {
                        CsvRow::Email { email, .. } => emails.push(email),
                        CsvRow::Invalid(error) => errors.record(error),
                    }
                }
                let mut answer = json!({"added": 0, "invited": 0, "unchanged": 0, "removed": 0, "not_found": 0, "will_return": 0,
                    "invalid_count": errors.count,
                    "invalid": errors.first.iter().map(|e| json!({"line": e.line, "reason": e.reason})).collect::<Vec<_>>()});
                let command = if mode == "add" {
                    C::AddUsers {
                        emails,
                        channel: AdminChannel::Csv,
                    }
                } else {
                    C::RemoveUsers { emails }
                };
                match self.run_license(&id, actor, command)? {
                    Outcome::UsersAdded(s) => {
                        answer["added"] = s.added.into();
                        answer["invited"] = s.invited.into();
                        answer["unchanged"] = s.unchanged.into();
                    }
                    Outcome::UsersRemoved(s) => {
                        answer["removed"] = s.removed.into();
                        answer["not_found"] = s.not_found.into();
                        answer["will_return"] = s.will_return.into();
                    }
                    other => panic!("CSV import answered {other:?}"),
                }
                return Ok(answer);
            }
            "RemoveUsers" => {
                let raw = strings(with, "emails")?;
                let id = license_id()?;
                // An entry that is not an email cannot be a member: it is not found.
                let mut not_emails = 0u64;
                let emails: Vec<Email> = raw
                    .iter()
                    .filter_map(|r| Email::parse(r).map_err(|_| not_emails += 1).ok())
                    .collect();
                let Outcome::UsersRemoved(s) =
                    self.run_license(&id, actor, C::RemoveUsers { emails })?
                else {
                    panic!("RemoveUsers answers UsersRemoved")
                };
                return Ok(
                    json!({"removed": s.removed, "not_found": s.not_found + not_emails, "will_return": s.will_return}),
                );
            }
            "AcceptInvite" => self.run_license(&license_id()?, actor, C::AcceptInvite)?,
            "RejectInvite" => self.run_license(&license_id()?, actor, C::RejectInvite)?,
            "RedeemLicenseKey" | "JoinViaLink" => {
                let field = if name == "RedeemLicenseKey" {
                    "key"
                } else {
                    "token"
                };
                let presented = Secret::presented(text(with, field)?);
                // KEY-2 comes first, so that a throttled guesser learns nothing more.
                self.throttle.check(actor, self.now)?;
                let found = self.licenses.iter().find(|(_, license)| {
                    license.state().is_some_and(|s| {
                        if field == "key" {
                            s.key().matches(&presented)
                        } else {
                            s.link().is_some_and(|l| l.matches(&presented))
                        }
                    })
                });
                let Some((id, _)) = found else {
                    self.throttle.record_wrong(actor, self.now);
                    return Err(DomainError::NotFound(
                        "no license matches this key or link; check it and try again".into(),
                    )
                    .into());
                };
                let id = id.clone();
                let command = if field == "key" {
                    C::RedeemKey { key: presented }
                } else {
                    C::JoinViaLink { token: presented }
                };
                let Outcome::Joined { status } = self.run_license(&id, actor, command)? else {
                    panic!("a join answers Joined")
                };
                return Ok(json!({"license": id, "status": status_name(status)}));
            }
            "RotateLicenseKey" => {
                let key = self.fresh_secret();
                self.run_license(&license_id()?, actor, C::RotateKey { key })?
            }
            "RotateJoinLink" => {
                let link = self.fresh_secret();
                self.run_license(&license_id()?, actor, C::RotateLink { link })?
            }
            "SetFeaturePermission" => {
                let command = C::SetFeature {
                    feature: domain::FeatureName::parse(text(with, "feature")?)?,
                    enabled: flag(with, "enabled")?,
                    role: match with.get("role").and_then(Value::as_str) {
                        None | Some("") => None,
                        Some(raw) => Some(Role::parse(raw)?),
                    },
                };
                self.run_license(&license_id()?, actor, command)?
            }
            "SetAutoEnrollment" => {
                let command = C::SetAutoEnrollment {
                    enabled: flag(with, "enabled")?,
                };
                self.run_license(&license_id()?, actor, command)?
            }
            "LinkOu" => {
                let ou_paths = strings(with, "ou_paths")?
                    .iter()
                    .map(|p| OuPath::parse(p))
                    .collect::<Result<Vec<_>, _>>()?;
                let command = C::LinkOu {
                    ou_paths,
                    google_admin: flag(with, "google_admin")?,
                };
                self.run_license(&license_id()?, actor, command)?
            }
            "UnlinkOu" => {
                let Outcome::OuUnlinked { removed } =
                    self.run_license(&license_id()?, actor, C::UnlinkOu)?
                else {
                    panic!("UnlinkOu answers OuUnlinked")
                };
                return Ok(json!({"removed": removed}));
            }
            "SyncOu" | "ConfirmOuSync" => {
                let command = if name == "SyncOu" {
                    let members = arg(with, "members")?
                        .as_array()
                        .ok_or_else(|| invalid("'members' must be a list"))?;
                    let mut entries = Vec::with_capacity(members.len());
                    for (index, member) in members.iter().enumerate() {
                        let member = member
                            .as_object()
                            .ok_or_else(|| invalid(format!("member {index} must be an object")))?;
                        entries.push(OuEntry {
                            email: email_arg(member, "email")?,
                            ou_path: OuPath::parse(text(member, "ou_path")?)?,
                            role: Role::parse(text(member, "role")?)?,
                            suspended: flag(member, "suspended")?,
                        });
                    }
                    C::SyncOu { entries }
                } else {
                    C::ConfirmOuSync
                };
                let Outcome::OuSync { counts, held } =
                    self.run_license(&license_id()?, actor, command)?
                else {
                    panic!("an OU sync answers OuSync")
                };
                return Ok(
                    json!({"added": counts.added, "removed": counts.removed, "readded": counts.readded,
                    "skipped_suspended": counts.skipped_suspended, "waitlisted": counts.waitlisted, "held": held}),
                );
            }
            "ClaimDomain" | "ReleaseDomain" => {
                let domain = domain_arg(with, "domain")?;
                let id = license_id()?;
                let license_command = if name == "ClaimDomain" {
                    C::ClaimDomain {
                        domain: domain.clone(),
                        dedicated: flag(with, "dedicated")?,
                    }
                } else {
                    C::ReleaseDomain {
                        domain: domain.clone(),
                    }
                };
                let license_decision = self
                    .license(&id)
                    .handle(&license_command, &self.context(actor))?;
                let license_id = LicenseId::parse(&id)?;
                let domain_command = if name == "ClaimDomain" {
                    DomainCommand::Claim {
                        license: license_id,
                    }
                } else {
                    DomainCommand::Release {
                        license: license_id,
                    }
                };
                let domain_decision = self
                    .domain(&domain)
                    .handle(&domain_command, &self.context(actor))?;
                // The domain's stream first: it is where uniqueness (DOM-2) is decided.
                self.record(Stream::Domain(domain), actor, &domain_decision.events);
                self.record(Stream::License(id), actor, &license_decision.events);
                Outcome::Done
            }
            "UserSignedUp" => {
                // ERR-1: a malformed request is INVALID_ARGUMENT before the caller's role.
                let email = email_arg(with, "email")?;
                let role = Role::parse(text(with, "role")?)?;
                Self::require_integration(actor)?;
                let claim = self.domain(&DomainName::of(&email)).claimed_by().cloned();
                let Some(id) = claim else {
                    return Ok(json!({"license": ""}));
                };
                let outcome = self.run_license(id.as_str(), actor, C::SignUp { email, role })?;
                let named = matches!(outcome, Outcome::Joined { .. });
                return Ok(json!({"license": if named { id.as_str() } else { "" }}));
            }
            "ScanDomain" => {
                Self::require_integration(actor)?;
                let domain = domain_arg(with, "domain")?;
                let raw = arg(with, "accounts")?
                    .as_array()
                    .ok_or_else(|| invalid("'accounts' must be a list"))?;
                let mut accounts = Vec::with_capacity(raw.len());
                for account in raw {
                    let account = account
                        .as_object()
                        .ok_or_else(|| invalid("each account must be an object"))?;
                    accounts.push(ScannedAccount {
                        email: email_arg(account, "email")?,
                        role: Role::parse(text(account, "role")?)?,
                    });
                }
                let Some(id) = self.domain(&domain).claimed_by().cloned() else {
                    return Ok(json!({"added": 0, "waitlisted": 0}));
                };
                let Outcome::Automatic(s) =
                    self.run_license(id.as_str(), actor, C::ScanDomain { domain, accounts })?
                else {
                    panic!("a scan answers Automatic")
                };
                return Ok(json!({"added": s.added, "waitlisted": s.waitlisted}));
            }
            "AssignmentOpened" => {
                let teacher = email_arg(with, "teacher")?;
                let student = email_arg(with, "student")?;
                let lms = Lms::parse(text(with, "lms")?)?;
                let kami_assignment = flag(with, "kami_assignment")?;
                Self::require_integration(actor)?;
                // LMS-2: the teacher's oldest membership of an eligible license.
                let chosen = self
                    .licenses
                    .iter()
                    .filter_map(|(id, l)| {
                        l.auto_enrollment_since(&teacher, self.now)
                            .map(|since| (since, id.clone()))
                    })
                    .min();
                let Some((_, id)) = chosen else {
                    return Ok(json!({"license": ""}));
                };
                let command = C::AssignmentOpened {
                    teacher,
                    student,
                    lms,
                    kami_assignment,
                };
                let outcome = self.run_license(&id, actor, command)?;
                let named = matches!(outcome, Outcome::Joined { .. });
                return Ok(json!({"license": if named { id.as_str() } else { "" }}));
            }
            "SyncClassroomRoster" => {
                let command = C::SyncRoster {
                    course: text(with, "course")?.to_owned(),
                    students: emails_arg(with, "students")?,
                };
                let Outcome::Automatic(s) = self.run_license(&license_id()?, actor, command)?
                else {
                    panic!("a roster sync answers Automatic")
                };
                return Ok(json!({"added": s.added, "waitlisted": s.waitlisted}));
            }
            other => panic!("the domain player does not know the command {other}"),
        };
        assert_eq!(
            outcome,
            Outcome::Done,
            "{name} answered more than the player shows"
        );
        Ok(json!({}))
    }

    /// Q-7: staff and system read everything; a license admin reads their licenses.
    fn may_read_license(&self, actor: &Actor, id: &str) -> bool {
        match actor {
            Actor::Staff | Actor::System => true,
            Actor::User(email) => self
                .licenses
                .get(id)
                .and_then(License::state)
                .is_some_and(|s| s.is_admin(email)),
        }
    }

    fn query(&self, name: &str, actor: &Actor, with: &Map<String, Value>) -> Answer {
        match name {
            "GetLicense" => {
                let id = LicenseId::parse(text(with, "license")?)?;
                let Some(state) = self.licenses.get(id.as_str()).and_then(License::state) else {
                    return Err(DomainError::NotFound("license not found".into()).into());
                };
                let is_member = actor.email().is_some_and(|e| state.member(e).is_some());
                let administers = self.may_read_license(actor, id.as_str());
                if !administers && !is_member {
                    return Err(denied(
                        "only the license's admins, its members and staff may read it",
                    ));
                }
                // Q-1: the key and link only for the license's admins and staff.
                let sees_secrets = administers && !matches!(actor, Actor::System);
                let counts = state.counts();
                let features_by_role: Map<String, Value> = state
                    .features_by_role()
                    .iter()
                    .map(|(role, f)| {
                        (
                            role.as_str().to_owned(),
                            json!(
                                f.iter()
                                    .map(|(k, v)| (k.as_str(), *v))
                                    .collect::<BTreeMap<_, _>>()
                            ),
                        )
                    })
                    .collect();
                Ok(json!({
                    "id": state.id().as_str(), "type": state.license_type().as_str(), "seats": state.seats(),
                    "users_count": state.users_count(), "accepted": counts.accepted, "invited": counts.invited,
                    "rejected": counts.rejected, "waitlisted": counts.waitlisted, "seats_free": state.seats_free(),
                    "over_by": state.over_by(), "expired": state.is_expired(self.now),
                    "valid_from": state.valid_from().to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true), "valid_until": state.valid_until().to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true),
                    "admins": state.admins().iter().map(Email::as_str).collect::<Vec<_>>(),
                    "domains": state.domains().iter().map(DomainName::as_str).collect::<Vec<_>>(),
                    "ou_paths": state.ou_paths().iter().map(OuPath::as_str).collect::<Vec<_>>(),
                    "ou_sync_held": state.held_sync().is_some(), "auto_enrollment": state.auto_enrollment(),
                    "features": state.features().iter().map(|(k, v)| (k.as_str(), *v)).collect::<BTreeMap<_, _>>(),
                    "features_by_role": features_by_role,
                    "key": if sees_secrets { state.key().expose() } else { "" },
                    "link": if sees_secrets { state.link().map_or("", Secret::expose) } else { "" },
                }))
            }
            "ListUsers" => {
                let id = LicenseId::parse(text(with, "license")?)?;
                let pattern = with
                    .get("pattern")
                    .and_then(Value::as_str)
                    .map(EmailPattern::parse)
                    .transpose()?;
                let role_is = with
                    .get("role_is")
                    .and_then(Value::as_str)
                    .map(Role::parse)
                    .transpose()?;
                let role_is_not = with
                    .get("role_is_not")
                    .and_then(Value::as_str)
                    .map(Role::parse)
                    .transpose()?;
                let status = with
                    .get("status")
                    .and_then(Value::as_str)
                    .map(Status::parse)
                    .transpose()?;
                let source = with
                    .get("source")
                    .and_then(Value::as_str)
                    .map(Source::parse)
                    .transpose()?;
                let sort = with
                    .get("sort")
                    .and_then(Value::as_str)
                    .unwrap_or("email")
                    .to_owned();
                if !["email", "status", "source", "role", "added_at", "added_by"]
                    .contains(&sort.as_str())
                {
                    return Err(invalid(format!("unknown sort column '{sort}'")));
                }
                let desc = flag(with, "desc")?;
                let page_size = with.get("page_size").and_then(Value::as_u64);
                if page_size.is_some_and(|size| size > 1_000) {
                    return Err(invalid("the page size must be 1 to 1,000"));
                }
                let Some(state) = self.licenses.get(id.as_str()).and_then(License::state) else {
                    return Err(DomainError::NotFound("license not found".into()).into());
                };
                if !self.may_read_license(actor, id.as_str()) {
                    return Err(denied(
                        "only the license's admins and staff may list its users",
                    ));
                }
                let mut rows: Vec<_> = state
                    .members()
                    .filter(|(e, m)| {
                        pattern.as_ref().is_none_or(|p| p.matches(e.as_str()))
                            && role_is.is_none_or(|r| m.role == r)
                            && role_is_not.is_none_or(|r| m.role != r)
                            && status.is_none_or(|s| m.status == s)
                            && source.is_none_or(|s| m.source == s)
                    })
                    .collect();
                let column = |(e, m): &(&Email, &domain::Member)| -> String {
                    match sort.as_str() {
                        "status" => m.status.as_str().to_owned(),
                        "source" => m.source.as_str().to_owned(),
                        "role" => m.role.as_str().to_owned(),
                        "added_at" => m
                            .added_at
                            .to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true),
                        "added_by" => m.added_by.to_string(),
                        _ => e.as_str().to_owned(),
                    }
                };
                rows.sort_by(|a, b| {
                    let by_column = column(a).cmp(&column(b));
                    let by_column = if desc { by_column.reverse() } else { by_column };
                    // Q-2: ties broken by email ascending (for the email column itself,
                    // the direction asked for).
                    if sort == "email" {
                        by_column
                    } else {
                        by_column.then_with(|| a.0.cmp(b.0))
                    }
                });
                let more = page_size.is_some_and(|size| rows.len() as u64 > size);
                if let Some(size) = page_size {
                    rows.truncate(size as usize);
                }
                let users: Vec<Value> = rows
                    .iter()
                    .map(|(e, m)| json!({"email": e.as_str(), "status": m.status.as_str(), "source": m.source.as_str(),
                        "role": m.role.as_str(), "added_at": m.added_at.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true), "added_by": m.added_by.to_string()}))
                    .collect();
                Ok(json!({"users": users, "more": more}))
            }
            "ListMyLicenses" | "ListMyInvites" | "ListMyDomains" => {
                let email = email_arg(with, "email")?;
                if matches!(actor, Actor::User(me) if *me != email) {
                    return Err(denied(
                        "you may only list your own licenses, invites and domains",
                    ));
                }
                match name {
                    "ListMyLicenses" => Ok(json!({"licenses": self.licenses.iter()
                        .filter_map(|(id, l)| l.state()?.member(&email).map(|m| json!({"license": id, "status": m.status.as_str()})))
                        .collect::<Vec<_>>()})),
                    "ListMyInvites" => Ok(json!({"invites": self.licenses.iter()
                        .filter(|(_, l)| l.state().and_then(|s| s.member(&email)).is_some_and(|m| m.status == Status::Invited))
                        .map(|(id, _)| json!({"license": id}))
                        .collect::<Vec<_>>()})),
                    _ => Ok(json!({"domains": self.domains.values()
                        .filter(|d| d.is_admin(&email))
                        .map(|d| d.name().as_str())
                        .collect::<Vec<_>>()})),
                }
            }
            "GetUsage" => {
                let id = LicenseId::parse(text(with, "license")?)?;
                let from = time_arg(with, "from")?;
                let to = time_arg(with, "to")?;
                let bucket_days = match text(with, "bucket")? {
                    "day" => 1,
                    "week" => 7,
                    _ => return Err(invalid("bucket must be day or week")),
                };
                // ERR-1: a bad range is INVALID_ARGUMENT before the license is looked up.
                if from >= to {
                    return Err(invalid("'from' must be earlier than 'to'"));
                }
                if self.usage(id.as_str(), from, to, bucket_days).len() > 1_000 {
                    return Err(invalid("at most 1,000 buckets are answered at once"));
                }
                if !self.licenses.contains_key(id.as_str()) {
                    return Err(DomainError::NotFound("license not found".into()).into());
                }
                if !self.may_read_license(actor, id.as_str()) {
                    return Err(denied(
                        "only the license's admins and staff may read its usage",
                    ));
                }
                Ok(json!({"buckets": self.usage(id.as_str(), from, to, bucket_days)}))
            }
            "History" => {
                let events: Vec<&Recorded> = if let Some(id) =
                    with.get("license").and_then(Value::as_str)
                {
                    LicenseId::parse(id)?;
                    if !self.licenses.contains_key(id) {
                        return Err(DomainError::NotFound("license not found".into()).into());
                    }
                    if !self.may_read_license(actor, id) {
                        return Err(denied(
                            "only the license's admins and staff may read its history",
                        ));
                    }
                    self.history
                        .iter()
                        .filter(|r| r.stream == Stream::License(id.to_owned()))
                        .collect()
                } else {
                    let user = email_arg(with, "user")?;
                    let own = actor.email() == Some(&user);
                    // Q-7: another user's History only for an admin of some license.
                    if let Actor::User(viewer) = actor
                        && !own
                        && !self
                            .licenses
                            .values()
                            .filter_map(License::state)
                            .any(|state| state.is_admin(viewer))
                    {
                        return Err(denied("you may read only your own history"));
                    }
                    self.history
                        .iter()
                        .filter(|r| r.event.member_email() == Some(&user))
                        .filter(|r| {
                            own || match &r.stream {
                                Stream::License(id) => self.may_read_license(actor, id),
                                Stream::Domain(_) => matches!(actor, Actor::Staff | Actor::System),
                            }
                        })
                        .collect()
                };
                Ok(json!({"events": events.iter().map(|r| json!({
                    "type": r.event.type_name(),
                    "actor": r.meta.actor.to_string(),
                    "email": r.event.member_email().map_or("", Email::as_str),
                    "at": r.meta.at.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true),
                })).collect::<Vec<_>>()}))
            }
            other => panic!("the domain player does not know the query {other}"),
        }
    }
}

impl World {
    /// Q-5: buckets aligned at 00:00 UTC (weeks on Monday) covering [from, to); each gives
    /// users_count at its end and, by source, who came to hold a seat or an invite (joins,
    /// invites, promotions) and who stopped holding one (removals, rejections).
    fn usage(
        &self,
        id: &str,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        bucket_days: i64,
    ) -> Vec<Value> {
        use chrono::{Datelike, Duration, TimeZone};
        let midnight = |at: DateTime<Utc>| {
            Utc.with_ymd_and_hms(at.year(), at.month(), at.day(), 0, 0, 0)
                .unwrap()
        };
        let mut first = midnight(from);
        if bucket_days == 7 {
            first -= Duration::days(i64::from(first.weekday().num_days_from_monday()));
        }
        let mut starts = Vec::new();
        let mut start = first;
        while start < to {
            starts.push(start);
            start += Duration::days(bucket_days);
        }
        let mut folded = License::default();
        // Per bucket: (added by source, removed by source).
        type BySource = BTreeMap<String, u64>;
        let mut buckets: Vec<(BySource, BySource)> =
            vec![(BTreeMap::new(), BTreeMap::new()); starts.len()];
        let mut count_before = 0;
        let mut last_seen: Vec<Option<u64>> = vec![None; starts.len()];
        for recorded in self
            .history
            .iter()
            .filter(|r| r.stream == Stream::License(id.to_owned()))
        {
            let before = folded.state().and_then(|s| {
                recorded
                    .event
                    .member_email()
                    .and_then(|e| s.member(e))
                    .map(|m| (m.status, m.source))
            });
            let held = before.is_some_and(|(status, _)| status.holds_seat());
            let change = match &recorded.event {
                Event::UserAdded(e) if !held => Some((true, e.source)),
                Event::InviteSent(e) if !held => Some((true, e.source)),
                Event::UserPromoted(_) => before.map(|(_, source)| (true, source)),
                Event::UserRemoved(_) if held => before.map(|(_, source)| (false, source)),
                Event::InviteRejected(_) => before.map(|(_, source)| (false, source)),
                _ => None,
            };
            folded.apply(&recorded.meta, &recorded.event);
            let users = folded.state().map_or(0, |s| s.users_count());
            let at = recorded.meta.at;
            if at < first {
                count_before = users;
                continue;
            }
            let index = ((at - first).num_days() / bucket_days) as usize;
            if index >= starts.len() {
                continue;
            }
            last_seen[index] = Some(users);
            if let Some((added, source)) = change {
                let map = if added {
                    &mut buckets[index].0
                } else {
                    &mut buckets[index].1
                };
                *map.entry(source.as_str().to_owned()).or_default() += 1;
            }
        }
        let mut carried = count_before;
        starts
            .iter()
            .zip(buckets)
            .zip(last_seen)
            .map(|((start, (added, removed)), seen)| {
                carried = seen.unwrap_or(carried);
                json!({"start": start.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true),
                    "users_count": carried, "added": added, "removed": removed})
            })
            .collect()
    }
}

/// FORMAT.md's matching rules.
fn matches(expected: &Value, actual: &Value, path: &str) -> Result<(), String> {
    match expected {
        Value::Object(map) if map.len() == 1 && map.contains_key("$len") => {
            let want = map["$len"].as_u64().ok_or("$len takes a number")?;
            match actual.as_array() {
                Some(items) if items.len() as u64 == want => Ok(()),
                _ => Err(format!("{path}: expected {want} items, got {actual}")),
            }
        }
        Value::Object(map) if map.len() == 1 && map.contains_key("$unordered") => {
            let want = map["$unordered"]
                .as_array()
                .ok_or("$unordered takes a list")?;
            let items = actual
                .as_array()
                .ok_or_else(|| format!("{path}: expected a list, got {actual}"))?;
            if items.len() != want.len() {
                return Err(format!(
                    "{path}: expected {} items, got {actual}",
                    want.len()
                ));
            }
            let mut used = vec![false; items.len()];
            for w in want {
                let found = items
                    .iter()
                    .enumerate()
                    .find(|(i, item)| !used[*i] && matches(w, item, path).is_ok());
                match found {
                    Some((i, _)) => used[i] = true,
                    None => return Err(format!("{path}: no element matches {w} in {actual}")),
                }
            }
            Ok(())
        }
        Value::Object(map) => {
            let object = actual
                .as_object()
                .ok_or_else(|| format!("{path}: expected an object, got {actual}"))?;
            for (key, want) in map {
                let got = object
                    .get(key)
                    .ok_or_else(|| format!("{path}.{key}: missing in {actual}"))?;
                matches(want, got, &format!("{path}.{key}"))?;
            }
            Ok(())
        }
        Value::Array(want) => {
            let items = actual
                .as_array()
                .ok_or_else(|| format!("{path}: expected a list, got {actual}"))?;
            if items.len() != want.len() {
                return Err(format!(
                    "{path}: expected {} items, got {actual}",
                    want.len()
                ));
            }
            want.iter()
                .zip(items)
                .enumerate()
                .try_for_each(|(i, (w, a))| matches(w, a, &format!("{path}[{i}]")))
        }
        Value::Number(n) => match (n.as_f64(), actual.as_f64()) {
            (Some(a), Some(b)) if a == b => Ok(()),
            _ => Err(format!("{path}: expected {expected}, got {actual}")),
        },
        _ if expected == actual => Ok(()),
        _ => Err(format!("{path}: expected {expected}, got {actual}")),
    }
}

fn substitute(value: &Value, world: &World, vars: &HashMap<String, String>) -> Value {
    match value {
        Value::String(s) => {
            let mut out = s.clone();
            while let Some(start) = out.find("${") {
                let Some(len) = out[start..].find('}') else {
                    break;
                };
                let name = &out[start + 2..start + len];
                let replacement = if let Some(id) = name.strip_prefix("key:") {
                    world
                        .licenses
                        .get(id)
                        .and_then(License::state)
                        .map(|s| s.key().expose().to_owned())
                } else if let Some(id) = name.strip_prefix("link:") {
                    world
                        .licenses
                        .get(id)
                        .and_then(License::state)
                        .and_then(|s| s.link().map(|l| l.expose().to_owned()))
                } else {
                    vars.get(name).cloned()
                };
                let replacement =
                    replacement.unwrap_or_else(|| panic!("unknown placeholder ${{{name}}}"));
                out.replace_range(start..start + len + 1, &replacement);
            }
            Value::String(out)
        }
        Value::Array(items) => {
            Value::Array(items.iter().map(|v| substitute(v, world, vars)).collect())
        }
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| (k.clone(), substitute(v, world, vars)))
                .collect(),
        ),
        other => other.clone(),
    }
}

const STEP_KEYS: &[&str] = &[
    "as",
    "do",
    "query",
    "with",
    "command_id",
    "at",
    "let",
    "expect",
    "note",
];

fn play(path: &Path) -> Result<(), String> {
    let file: Value =
        serde_json::from_str(&std::fs::read_to_string(path).map_err(|e| e.to_string())?)
            .map_err(|e| format!("not JSON: {e}"))?;
    let start = file
        .get("start")
        .and_then(Value::as_str)
        .unwrap_or("2026-09-01T00:00:00Z");
    let mut world = World::new(
        DateTime::parse_from_rfc3339(start)
            .map_err(|e| e.to_string())?
            .with_timezone(&Utc),
    );
    let mut vars: HashMap<String, String> = HashMap::new();
    let steps = file["steps"].as_array().ok_or("no steps")?;
    for (index, step) in steps.iter().enumerate() {
        let fail = |why: String| format!("step {index} {step}: {why}");
        let step_map = step
            .as_object()
            .ok_or_else(|| fail("not an object".into()))?;
        if let Some(unknown) = step_map.keys().find(|k| !STEP_KEYS.contains(&k.as_str())) {
            return Err(fail(format!("unknown step key '{unknown}'")));
        }
        if let Some(bindings) = step.get("let").and_then(Value::as_object) {
            for (name, value) in bindings {
                let value = substitute(value, &world, &vars);
                vars.insert(name.clone(), value.as_str().unwrap_or_default().to_owned());
            }
            continue;
        }
        if let Some(at) = step.get("at").and_then(Value::as_str) {
            let at = DateTime::parse_from_rfc3339(at)
                .map_err(|e| fail(e.to_string()))?
                .with_timezone(&Utc);
            world.now = world.now.max(at);
        }
        let actor = match step["as"].as_str().ok_or_else(|| fail("no 'as'".into()))? {
            "staff" => Some(Actor::Staff),
            "system" => Some(Actor::System),
            "anonymous" => None,
            email => Some(Actor::User(Email::parse(email).map_err(fail)?)),
        };
        let with = substitute(
            &step.get("with").cloned().unwrap_or(json!({})),
            &world,
            &vars,
        );
        let with = with.as_object().cloned().unwrap_or_default();
        let answer: StoredAnswer = match actor {
            None => Err(("UNAUTHENTICATED", "no credentials".into())),
            Some(actor) => {
                if let Some(name) = step.get("do").and_then(Value::as_str) {
                    let fingerprint = format!("{actor}|{name}|{}", Value::Object(with.clone()));
                    match step.get("command_id").and_then(Value::as_str) {
                        Some(id) if world.commands.contains_key(id) => {
                            let (first, answer) = &world.commands[id];
                            if *first == fingerprint {
                                answer.clone()
                            } else {
                                // ERR-1: INVALID_ARGUMENT, NOT_FOUND and PERMISSION_DENIED
                                // come before the reuse's FAILED_PRECONDITION; the command is
                                // decided on a scratch world and never applied.
                                let mut scratch = world.clone();
                                match scratch.command(name, &actor, &with) {
                                    Err(failure)
                                        if matches!(
                                            failure.code,
                                            "INVALID_ARGUMENT" | "NOT_FOUND" | "PERMISSION_DENIED"
                                        ) =>
                                    {
                                        Err((failure.code, failure.message))
                                    }
                                    _ => Err((
                                        "FAILED_PRECONDITION",
                                        "command id reused for a different command".into(),
                                    )),
                                }
                            }
                        }
                        id => {
                            let answer = world
                                .command(name, &actor, &with)
                                .map_err(|f| (f.code, f.message));
                            if let Some(id) = id {
                                world
                                    .commands
                                    .insert(id.to_owned(), (fingerprint, answer.clone()));
                            }
                            answer
                        }
                    }
                } else {
                    let name = step["query"]
                        .as_str()
                        .ok_or_else(|| fail("neither 'do' nor 'query'".into()))?;
                    world
                        .query(name, &actor, &with)
                        .map_err(|f| (f.code, f.message))
                }
            }
        };
        let expect = step.get("expect").cloned().unwrap_or(json!({}));
        let code = expect.get("code").and_then(Value::as_str).unwrap_or("OK");
        match (&answer, code) {
            (Ok(result), "OK") => {
                if let Some(want) = expect.get("result") {
                    matches(want, result, "result").map_err(fail)?;
                }
            }
            (Err((got, message)), want) if *got == want => {
                assert!(!message.is_empty(), "a refusal without a message");
            }
            (Ok(result), want) => return Err(fail(format!("expected {want}, got OK {result}"))),
            (Err((got, message)), want) => {
                return Err(fail(format!("expected {want}, got {got}: {message}")));
            }
        }
    }
    Ok(())
}

fn scenario_files() -> Vec<PathBuf> {
    let folder = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/scenarios");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&folder)
        .expect("tests/scenarios exists")
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    files
}

#[test]
fn the_domain_plays_every_scenario() {
    let files = scenario_files();
    assert!(
        files.len() >= 14,
        "the public scenarios are copied into tests/scenarios"
    );
    let failures: Vec<String> = files
        .iter()
        .filter_map(|path| {
            play(path)
                .err()
                .map(|why| format!("FAIL {}: {why}", path.display()))
        })
        .collect();
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn the_player_fails_a_wrong_expectation() {
    // The player must be able to fail: a scenario expecting a wrong count is caught.
    let scenario = json!({"name": "wrong", "steps": [
        {"as": "staff", "do": "IssueLicense", "with": {"license": "L1", "type": "school", "seats": 5,
            "valid_from": "2026-08-01T00:00:00Z", "valid_until": "2027-07-31T23:59:59Z", "admins": ["a@north.edu"]}},
        {"as": "staff", "query": "GetLicense", "with": {"license": "L1"}, "expect": {"result": {"seats": 6}}}
    ]});
    let path = std::env::temp_dir().join(format!("domain-player-{}.json", std::process::id()));
    std::fs::write(&path, scenario.to_string()).unwrap();
    let result = play(&path);
    std::fs::remove_file(&path).ok();
    assert!(result.unwrap_err().contains("expected 6"));
}

#[test]
fn matching_follows_the_format() {
    assert!(matches(&json!({"a": 1}), &json!({"a": 1, "b": 2}), "r").is_ok());
    assert!(matches(&json!({"c": 1}), &json!({"a": 1}), "r").is_err());
    assert!(matches(&json!([1, 2]), &json!([1, 2, 3]), "r").is_err());
    assert!(matches(&json!({"$len": 2}), &json!([7, 8]), "r").is_ok());
    assert!(matches(&json!({"$unordered": [2, 1]}), &json!([1, 2]), "r").is_ok());
    assert!(matches(&json!({"$unordered": [2, 2]}), &json!([1, 2]), "r").is_err());
}
