//! The given/when/then harness: a license built from events (given), a command decided at a
//! moment by an actor (when), and the events and answer it gave (then).

#![allow(dead_code)]

use std::collections::BTreeSet;

use chrono::{DateTime, Utc};
use domain::events::{Event, EventMeta};
use domain::{
    Actor, AdminChannel, Context, Decision, DomainError, DomainName, Email, ErrorKind, License,
    LicenseCommand, LicenseId, LicenseState, LicenseType, Outcome, Secret, Status,
};

pub fn time(rfc3339: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(rfc3339)
        .expect("test times are valid RFC 3339")
        .with_timezone(&Utc)
}

pub fn email(raw: &str) -> Email {
    Email::parse(raw).expect("test emails are valid")
}

pub fn emails(raw: &[&str]) -> Vec<Email> {
    raw.iter().map(|e| email(e)).collect()
}

pub fn domain_name(raw: &str) -> DomainName {
    DomainName::parse(raw).expect("test domains are valid")
}

pub fn user(raw: &str) -> Actor {
    Actor::User(email(raw))
}

pub fn secret(seed: &str) -> Secret {
    Secret::new(format!("{seed:_<24}")).expect("test secrets are long enough")
}

/// The admin every `Given` license starts with.
pub const ADMIN: &str = "admin@north.edu";
/// Inside the default validity of a `Given` license.
pub const NOW: &str = "2026-09-01T00:00:00Z";
pub const VALID_FROM: &str = "2026-08-01T00:00:00Z";
pub const VALID_UNTIL: &str = "2027-07-31T23:59:59Z";

/// A license and the clock, with every event it has seen.
pub struct Given {
    pub license: License,
    pub now: DateTime<Utc>,
    pub history: Vec<(EventMeta, Event)>,
    /// The domains `ADMIN` is domain admin of, passed to every decision as INV-1's fact.
    pub admin_domains: BTreeSet<DomainName>,
}

impl Given {
    /// A license `L1` of a type and seat count, issued by staff, with `ADMIN` as its admin.
    pub fn license(license_type: LicenseType, seats: u32) -> Self {
        let mut given = Self {
            license: License::default(),
            now: time(NOW),
            history: Vec::new(),
            admin_domains: BTreeSet::new(),
        };
        given.ok(
            Actor::Staff,
            LicenseCommand::Issue {
                license: LicenseId::parse("L1").unwrap(),
                license_type,
                seats,
                valid_from: time(VALID_FROM),
                valid_until: time(VALID_UNTIL),
                admins: vec![email(ADMIN)],
                key: secret("key-one"),
                link: secret("link-one"),
            },
        );
        given
    }

    /// `ADMIN` is also domain admin of these domains (INV-1).
    pub fn admin_is_domain_admin_of(mut self, domains: &[&str]) -> Self {
        self.admin_domains = domains.iter().map(|d| domain_name(d)).collect();
        self
    }

    pub fn at(&mut self, rfc3339: &str) -> &mut Self {
        self.now = time(rfc3339);
        self
    }

    pub fn context(&self, actor: &Actor) -> Context {
        let ctx = Context::new(self.now, actor.clone());
        if actor.email() == Some(&email(ADMIN)) {
            ctx.with_domain_admin_of(self.admin_domains.iter().cloned())
        } else {
            ctx
        }
    }

    /// Decides without applying.
    pub fn when(&self, actor: Actor, command: LicenseCommand) -> Result<Decision, DomainError> {
        self.license.handle(&command, &self.context(&actor))
    }

    /// Decides and applies; panics on a refusal (use in the "given" part).
    pub fn ok(&mut self, actor: Actor, command: LicenseCommand) -> Decision {
        let decision = self
            .when(actor.clone(), command.clone())
            .unwrap_or_else(|error| panic!("{command:?} by {actor} was refused: {error:?}"));
        let meta = EventMeta {
            at: self.now,
            actor,
        };
        for event in &decision.events {
            self.license.apply(&meta, event);
            self.history.push((meta.clone(), event.clone()));
        }
        decision
    }

    /// Decides, expecting a refusal of a kind; also checks that the refusal is a message a
    /// person can read.
    pub fn refused(&self, actor: Actor, command: LicenseCommand, kind: ErrorKind) -> DomainError {
        match self.when(actor, command.clone()) {
            Ok(decision) => {
                panic!("{command:?} should be refused with {kind:?}, gave {decision:?}")
            }
            Err(error) => {
                assert_eq!(error.kind(), kind, "{command:?}: {error}");
                assert!(error.message().len() > 10, "message too terse: {error}");
                error
            }
        }
    }

    pub fn state(&self) -> &LicenseState {
        self.license.state().expect("license issued")
    }

    pub fn status(&self, raw_email: &str) -> Option<Status> {
        self.state().member(&email(raw_email)).map(|m| m.status)
    }

    /// Admin adds by email list (valid entries only).
    pub fn add(&mut self, actor: Actor, raw: &[&str]) -> Decision {
        self.ok(
            actor,
            LicenseCommand::AddUsers {
                emails: emails(raw),
                channel: AdminChannel::EmailList,
            },
        )
    }

    pub fn remove(&mut self, actor: Actor, raw: &[&str]) -> Decision {
        self.ok(
            actor,
            LicenseCommand::RemoveUsers {
                emails: emails(raw),
            },
        )
    }
}

/// The type names of a decision's events, in order.
pub fn types(decision: &Decision) -> Vec<&'static str> {
    decision.events.iter().map(Event::type_name).collect()
}

pub fn outcome(decision: &Decision) -> &Outcome {
    &decision.outcome
}
