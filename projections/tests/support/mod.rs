//! Shared pieces of the projection tests: valid histories made by driving the real
//! `domain::License` aggregate, and the reference answers of the scenario player.

#![allow(dead_code)]

use std::collections::BTreeMap;

use chrono::{DateTime, Duration, Utc};
use domain::events::{Event, EventMeta};
use domain::query::EmailPattern;
use domain::{
    Actor, AdminChannel, Context, DomainName, Email, License, LicenseCommand, LicenseId,
    LicenseType, Member, Role, Secret, Source, Status,
};
use projections::{ProjectedEvent, SortColumn};

pub fn time(rfc3339: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(rfc3339)
        .unwrap()
        .with_timezone(&Utc)
}

pub fn email(raw: &str) -> Email {
    Email::parse(raw).unwrap()
}

pub fn license_id(raw: &str) -> LicenseId {
    LicenseId::parse(raw).unwrap()
}

pub fn secret(n: u32) -> Secret {
    Secret::new(format!("secret-{n:0>20}")).unwrap()
}

pub fn staff_admin() -> Email {
    email("admin@north.edu")
}

/// A ledger in memory: aggregates, and every recorded event as the projector sees it.
pub struct World {
    pub now: DateTime<Utc>,
    pub licenses: BTreeMap<String, License>,
    pub events: Vec<ProjectedEvent>,
    pub next_position: u64,
    revisions: BTreeMap<String, u64>,
}

impl Default for World {
    fn default() -> Self {
        Self::new()
    }
}

impl World {
    pub fn new() -> Self {
        Self {
            now: time("2026-09-01T08:00:00Z"),
            licenses: BTreeMap::new(),
            events: Vec::new(),
            next_position: 1,
            revisions: BTreeMap::new(),
        }
    }

    pub fn record(&mut self, stream: &str, actor: &Actor, events: Vec<Event>) {
        for event in events {
            let revision = self.revisions.entry(stream.to_owned()).or_default();
            *revision += 1;
            self.events.push(ProjectedEvent {
                position: self.next_position,
                stream: stream.to_owned(),
                revision: *revision,
                recorded_at: self.now,
                actor: actor.clone(),
                event,
            });
            self.next_position += 1;
        }
    }

    /// Decides a command on a license; refusals are ignored (they record nothing).
    pub fn run(&mut self, license: &str, actor: Actor, command: LicenseCommand) -> bool {
        let aggregate = self.licenses.entry(license.to_owned()).or_default();
        let context = Context::new(self.now, actor.clone())
            .with_domain_admin_of([DomainName::parse("north.edu").unwrap()]);
        let Ok(decision) = aggregate.handle(&command, &context) else {
            return false;
        };
        let meta = EventMeta {
            at: self.now,
            actor: actor.clone(),
        };
        for event in &decision.events {
            aggregate.apply(&meta, event);
        }
        self.record(&format!("license-{license}"), &actor, decision.events);
        true
    }

    pub fn issue(&mut self, license: &str, license_type: LicenseType, seats: u32, key: u32) {
        let issued = self.run(
            license,
            Actor::Staff,
            LicenseCommand::Issue {
                license: license_id(license),
                license_type,
                seats,
                valid_from: self.now - Duration::days(30),
                valid_until: time("2027-07-31T23:59:59Z"),
                admins: vec![staff_admin()],
                key: secret(key),
                link: secret(key + 1),
            },
        );
        assert!(issued, "issue {license}");
    }

    pub fn add(&mut self, license: &str, actor: Actor, emails: &[&str]) {
        let added = self.run(
            license,
            actor,
            LicenseCommand::AddUsers {
                emails: emails.iter().map(|raw| email(raw)).collect(),
                channel: AdminChannel::EmailList,
            },
        );
        assert!(added, "add to {license}");
    }

    pub fn remove(&mut self, license: &str, emails: &[&str]) {
        let removed = self.run(
            license,
            Actor::Staff,
            LicenseCommand::RemoveUsers {
                emails: emails.iter().map(|raw| email(raw)).collect(),
            },
        );
        assert!(removed, "remove from {license}");
    }

    pub fn state(&self, license: &str) -> &domain::LicenseState {
        self.licenses[license].state().expect("issued")
    }

    pub fn events_since(&self, position: u64) -> Vec<ProjectedEvent> {
        self.events
            .iter()
            .filter(|event| event.position > position)
            .cloned()
            .collect()
    }
}

/// The reference filter and order of Q-2, as the domain's scenario player answers it.
pub struct Reference<'a> {
    pub pattern: Option<&'a EmailPattern>,
    pub role_is: Option<Role>,
    pub role_is_not: Option<Role>,
    pub status: Option<Status>,
    pub source: Option<Source>,
    pub sort: SortColumn,
    pub descending: bool,
}

impl Reference<'_> {
    pub fn emails(&self, state: &domain::LicenseState) -> Vec<String> {
        let mut rows: Vec<(&Email, &Member)> = state
            .members()
            .filter(|(e, m)| {
                self.pattern.is_none_or(|p| p.matches(e.as_str()))
                    && self.role_is.is_none_or(|r| m.role == r)
                    && self.role_is_not.is_none_or(|r| m.role != r)
                    && self.status.is_none_or(|s| m.status == s)
                    && self.source.is_none_or(|s| m.source == s)
            })
            .collect();
        let column = |(e, m): &(&Email, &Member)| -> String {
            match self.sort {
                SortColumn::Status => m.status.as_str().to_owned(),
                SortColumn::Source => m.source.as_str().to_owned(),
                SortColumn::Role => m.role.as_str().to_owned(),
                SortColumn::AddedAt => m.added_at.to_rfc3339(),
                SortColumn::AddedBy => m.added_by.to_string(),
                SortColumn::Email => e.as_str().to_owned(),
            }
        };
        rows.sort_by(|a, b| {
            let by_column = column(a).cmp(&column(b));
            let by_column = if self.descending {
                by_column.reverse()
            } else {
                by_column
            };
            if self.sort == SortColumn::Email {
                by_column
            } else {
                by_column.then_with(|| a.0.cmp(b.0))
            }
        });
        rows.iter().map(|(e, _)| e.as_str().to_owned()).collect()
    }
}
