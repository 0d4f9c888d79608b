//! The email-domain aggregate (stream `domain-<name>`): who is domain admin of it (LIC-5)
//! and which license claims it (DOM-2). A claim is recorded here, where uniqueness is
//! decided, and on the license's own stream, where OU-2's exclusion is decided; the server
//! appends the domain's event first, so a claim never exists on a license without the
//! domain knowing (see ARCHITECTURE.md).

use std::collections::BTreeSet;

use crate::commands::{Context, Decision, DomainCommand};
use crate::error::DomainError;
use crate::events::{
    DomainAdminGranted, DomainAdminRevoked, DomainClaimed, DomainReleased, Event, EventMeta,
};
use crate::values::{Actor, DomainName, Email, LicenseId};

/// The most domain admins one domain may have; the bound keeps the aggregate small.
pub const DOMAIN_ADMINS_MAX: usize = 10_000;

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct EmailDomain {
    name: DomainName,
    admins: BTreeSet<Email>,
    claimed_by: Option<LicenseId>,
}

impl EmailDomain {
    /// A domain nobody has acted on yet: every domain exists, with no admins and no claim.
    pub fn new(name: DomainName) -> Self {
        Self {
            name,
            admins: BTreeSet::new(),
            claimed_by: None,
        }
    }

    pub fn name(&self) -> &DomainName {
        &self.name
    }

    pub fn admins(&self) -> &BTreeSet<Email> {
        &self.admins
    }

    pub fn claimed_by(&self) -> Option<&LicenseId> {
        self.claimed_by.as_ref()
    }

    pub fn is_admin(&self, email: &Email) -> bool {
        self.admins.contains(email)
    }

    pub fn handle(&self, command: &DomainCommand, ctx: &Context) -> Result<Decision, DomainError> {
        if ctx.actor != Actor::Staff {
            let what = match command {
                DomainCommand::GrantAdmin { .. } | DomainCommand::RevokeAdmin { .. } => {
                    "grant or revoke domain admins"
                }
                DomainCommand::Claim { .. } | DomainCommand::Release { .. } => {
                    "claim or release domains"
                }
            };
            return Err(DomainError::PermissionDenied(format!(
                "only staff may {what}"
            )));
        }
        let domain = self.name.clone();
        let events: Vec<Event> = match command {
            DomainCommand::GrantAdmin { email } => {
                if self.admins.contains(email) {
                    Vec::new()
                } else if self.admins.len() >= DOMAIN_ADMINS_MAX {
                    return Err(DomainError::ResourceExhausted(format!(
                        "the domain {domain} already has {DOMAIN_ADMINS_MAX} domain admins"
                    )));
                } else {
                    vec![
                        DomainAdminGranted {
                            domain,
                            email: email.clone(),
                        }
                        .into(),
                    ]
                }
            }
            DomainCommand::RevokeAdmin { email } => {
                if !self.admins.contains(email) {
                    return Err(DomainError::FailedPrecondition(format!(
                        "{email} is not a domain admin of {domain}"
                    )));
                }
                vec![
                    DomainAdminRevoked {
                        domain,
                        email: email.clone(),
                    }
                    .into(),
                ]
            }
            DomainCommand::Claim { license } => {
                if self.claimed_by.is_some() {
                    // DOM-2: say nothing about which license holds it.
                    return Err(DomainError::AlreadyExists(format!(
                        "the domain {domain} is already claimed by a license; release that claim first"
                    )));
                }
                vec![
                    DomainClaimed {
                        domain,
                        license: license.clone(),
                    }
                    .into(),
                ]
            }
            DomainCommand::Release { license } => {
                if self.claimed_by.as_ref() != Some(license) {
                    return Err(DomainError::FailedPrecondition(format!(
                        "license {license} does not claim the domain {domain}"
                    )));
                }
                vec![
                    DomainReleased {
                        domain,
                        license: license.clone(),
                    }
                    .into(),
                ]
            }
        };
        Ok(Decision::done(events))
    }

    pub fn apply(&mut self, _meta: &EventMeta, event: &Event) {
        match event {
            Event::DomainAdminGranted(e) => {
                debug_assert_eq!(e.domain, self.name);
                self.admins.insert(e.email.clone());
            }
            Event::DomainAdminRevoked(e) => {
                self.admins.remove(&e.email);
            }
            Event::DomainClaimed(e) => {
                debug_assert!(self.claimed_by.is_none(), "second claim of {}", self.name);
                self.claimed_by = Some(e.license.clone());
            }
            Event::DomainReleased(_) => self.claimed_by = None,
            other => debug_assert!(
                false,
                "{} does not belong to a domain's stream",
                other.type_name()
            ),
        }
    }
}
