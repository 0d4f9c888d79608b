//! The `LicenseQueries` service (§11), answered from the projections. A query may carry
//! `x-min-position` (a command's answer) and then waits, bounded, until the projections
//! have applied it: read-your-writes, or UNAVAILABLE after the wait.
//!
//! Q-7 decides who reads what: staff and system read everything; a license admin reads
//! their licenses, and a user's history restricted to them; a user reads only their own
//! licenses, invites, domains and history.

use std::sync::Arc;
use std::time::Duration;

use domain::{Actor, Email, LicenseId, Role, Source, Status as MemberStatus};
use projections::{Bucket, ProjectionError, Projections, SortColumn};
use proto::license_queries_server::LicenseQueries;
use proto::*;
use tonic::{Request, Response, Status};

use crate::auth::Tokens;
use crate::core::{Core, decode};
use crate::history::change_summary;
use crate::projector::{api_position, ledger_position};
use crate::status::{from_core, from_domain, invalid};

/// The most rows one ListUsers page may hold.
pub const LIST_USERS_PAGE_SIZE_MAX: u32 = 1_000;
/// The most events one History answer holds; an auditor pages by time with the replay tool.
pub const HISTORY_EVENTS_MAX: usize = 10_000;

pub struct QueryService {
    pub core: Arc<Core>,
    pub projections: Arc<Projections>,
    pub tokens: Tokens,
    pub read_your_writes_wait_ms: u64,
}

fn from_projection(error: ProjectionError) -> Status {
    match error {
        ProjectionError::LicenseNotFound => Status::not_found(error.to_string()),
        ProjectionError::InvalidPattern(_)
        | ProjectionError::InvalidPageToken
        | ProjectionError::InvalidPageSize { .. }
        | ProjectionError::EmptyRange
        | ProjectionError::TooManyBuckets { .. } => Status::invalid_argument(error.to_string()),
        other => {
            tracing::error!(error = %other, "projection failure");
            Status::internal("the read models failed; an operator must look")
        }
    }
}

fn parse_email(raw: &str, name: &str) -> Result<Email, Status> {
    Email::parse(raw).map_err(|reason| invalid(format!("{name}: {reason}")))
}

fn optional<T>(
    raw: &str,
    parse: impl Fn(&str) -> Result<T, domain::DomainError>,
) -> Result<Option<T>, Status> {
    if raw.trim().is_empty() {
        Ok(None)
    } else {
        parse(raw).map(Some).map_err(|e| from_domain(&e))
    }
}

fn parse_time(raw: &str, name: &str) -> Result<chrono::DateTime<chrono::Utc>, Status> {
    chrono::DateTime::parse_from_rfc3339(raw.trim())
        .map(|t| t.with_timezone(&chrono::Utc))
        .map_err(|_| invalid(format!("{name} must be an RFC 3339 time")))
}

impl QueryService {
    /// Authenticates, then waits for `x-min-position` if the call sent one.
    async fn begin<T>(&self, request: &Request<T>) -> Result<Actor, Status> {
        let actor = self.tokens.authenticate(request.metadata())?;
        if let Some(raw) = request.metadata().get("x-min-position") {
            let position: u64 = raw
                .to_str()
                .ok()
                .and_then(|text| text.trim().parse().ok())
                .ok_or_else(|| invalid("x-min-position must be a whole number"))?;
            self.projections
                .wait_for(
                    position,
                    Duration::from_millis(self.read_your_writes_wait_ms),
                )
                .await
                .map_err(|_| {
                    Status::unavailable(format!(
                        "the read models have not reached position {position} yet; retry shortly"
                    ))
                })?;
        }
        Ok(actor)
    }

    fn license_view(&self, raw: &str) -> Result<projections::LicenseView, Status> {
        let id = LicenseId::parse(raw).map_err(|e| from_domain(&e))?;
        self.projections
            .get_license(&id, self.core.now())
            .map_err(from_projection)?
            .ok_or_else(|| {
                Status::not_found(format!("license {id} not found: check the license id"))
            })
    }

    fn administers(actor: &Actor, view: &projections::LicenseView) -> bool {
        match actor {
            Actor::Staff | Actor::System => true,
            Actor::User(email) => view.admins.contains(email),
        }
    }

    fn require_self(actor: &Actor, email: &Email) -> Result<(), Status> {
        match actor {
            Actor::User(me) if me != email => Err(Status::permission_denied(
                "you may only read your own licenses, invites, domains and history",
            )),
            _ => Ok(()),
        }
    }

    async fn events_at(
        &self,
        positions: &[u64],
        user_filter: Option<&(Actor, Email)>,
    ) -> Result<Vec<HistoryEvent>, Status> {
        let mut events = Vec::with_capacity(positions.len());
        for position in positions {
            let page = self
                .core
                .log()
                .read_all(ledger_position(*position), 1)
                .await
                .map_err(|e| from_core(e.into()))?;
            let Some(recorded) = page.first() else {
                continue;
            };
            if let Some((Actor::User(viewer), subject)) = user_filter
                && viewer != subject
            {
                // a license admin reads a user's history restricted to their licenses.
                let allowed = match recorded.stream.strip_prefix("license-") {
                    Some(id) => match self.projections.get_license(
                        &LicenseId::parse(id).map_err(|e| from_domain(&e))?,
                        self.core.now(),
                    ) {
                        Ok(Some(view)) => view.admins.contains(viewer),
                        _ => false,
                    },
                    None => false,
                };
                if !allowed {
                    continue;
                }
            }
            let decoded = decode(recorded).map_err(from_core)?;
            events.push(HistoryEvent {
                position: api_position(recorded.position),
                stream: recorded.stream.clone(),
                revision: recorded.revision,
                r#type: recorded.event_type.clone(),
                at: crate::time_text(recorded.recorded_at),
                actor: recorded.actor.clone(),
                email: decoded
                    .event
                    .member_email()
                    .map(|e| e.as_str().to_owned())
                    .unwrap_or_default(),
                change: change_summary(&decoded.event),
            });
        }
        Ok(events)
    }
}

#[tonic::async_trait]
impl LicenseQueries for QueryService {
    async fn get_license(
        &self,
        request: Request<LicenseRef>,
    ) -> Result<Response<LicenseView>, Status> {
        let actor = self.begin(&request).await?;
        let view = self.license_view(&request.get_ref().license)?;
        let administers = Self::administers(&actor, &view);
        let is_member = match actor.email() {
            Some(email) => self
                .projections
                .member(&view.id, email)
                .map_err(from_projection)?
                .is_some(),
            None => false,
        };
        if !administers && !is_member {
            return Err(Status::permission_denied(format!(
                "only the admins of license {}, its members and staff may read it",
                view.id
            )));
        }
        // the key and link only for the license's admins and staff. The system reads
        // everything else, but no integration needs a license's secrets.
        let sees_secrets = administers && !matches!(actor, Actor::System);
        Ok(Response::new(LicenseView {
            id: view.id.as_str().to_owned(),
            r#type: view.license_type.as_str().to_owned(),
            seats: u64::from(view.seats),
            users_count: view.users_count,
            accepted: view.counts.accepted,
            invited: view.counts.invited,
            rejected: view.counts.rejected,
            waitlisted: view.counts.waitlisted,
            seats_free: view.seats_free,
            over_by: view.over_by,
            expired: view.expired,
            valid_from: crate::time_text(view.valid_from),
            valid_until: crate::time_text(view.valid_until),
            admins: view.admins.iter().map(|a| a.as_str().to_owned()).collect(),
            domains: view.domains.iter().map(|d| d.as_str().to_owned()).collect(),
            ou_paths: view
                .ou_paths
                .iter()
                .map(|p| p.as_str().to_owned())
                .collect(),
            ou_sync_held: view.ou_sync_held,
            auto_enrollment: view.auto_enrollment,
            features: view
                .features
                .iter()
                .map(|(f, on)| (f.as_str().to_owned(), *on))
                .collect(),
            features_by_role: view
                .features_by_role
                .iter()
                .map(|(role, features)| {
                    (
                        role.as_str().to_owned(),
                        FeatureSet {
                            features: features
                                .iter()
                                .map(|(f, on)| (f.as_str().to_owned(), *on))
                                .collect(),
                        },
                    )
                })
                .collect(),
            key: if sees_secrets {
                view.key.expose().to_owned()
            } else {
                String::new()
            },
            link: if sees_secrets {
                view.link
                    .as_ref()
                    .map(|l| l.expose().to_owned())
                    .unwrap_or_default()
            } else {
                String::new()
            },
        }))
    }

    async fn list_users(
        &self,
        request: Request<ListUsersRequest>,
    ) -> Result<Response<ListUsersReply>, Status> {
        let actor = self.begin(&request).await?;
        let r = request.into_inner();
        let id = LicenseId::parse(&r.license).map_err(|e| from_domain(&e))?;
        let mut query = projections::ListUsersRequest::new(id.clone());
        if !r.pattern.trim().is_empty() {
            domain::query::EmailPattern::parse(&r.pattern).map_err(|e| from_domain(&e))?;
            query.pattern = Some(r.pattern.clone());
        }
        query.role_is = optional(&r.role_is, Role::parse)?;
        query.role_is_not = optional(&r.role_is_not, Role::parse)?;
        query.status = optional(&r.status, MemberStatus::parse)?;
        query.source = optional(&r.source, Source::parse)?;
        if !r.sort.trim().is_empty() {
            query.sort = SortColumn::parse(r.sort.trim()).ok_or_else(|| {
                invalid("sort must be one of email, status, source, role, added_at, added_by")
            })?;
        }
        query.descending = r.desc;
        if r.page_size > LIST_USERS_PAGE_SIZE_MAX {
            return Err(invalid(format!(
                "page_size is at most {LIST_USERS_PAGE_SIZE_MAX}"
            )));
        }
        query.page_size = if r.page_size == 0 {
            LIST_USERS_PAGE_SIZE_MAX
        } else {
            r.page_size
        } as usize;
        query.page_token = (!r.page_token.is_empty()).then(|| r.page_token.clone());
        let view = self.license_view(id.as_str())?;
        if !Self::administers(&actor, &view) {
            return Err(Status::permission_denied(format!(
                "only the admins of license {id} and staff may list its users"
            )));
        }
        let page = self
            .projections
            .list_users(&query)
            .map_err(from_projection)?;
        Ok(Response::new(ListUsersReply {
            users: page
                .users
                .iter()
                .map(|member| UserRow {
                    email: member.email.as_str().to_owned(),
                    status: member.status.as_str().to_owned(),
                    source: member.source.as_str().to_owned(),
                    role: member.role.as_str().to_owned(),
                    added_at: crate::time_text(member.added_at),
                    added_by: member.added_by.clone(),
                })
                .collect(),
            more: page.next_page_token.is_some(),
            next_page_token: page.next_page_token.unwrap_or_default(),
        }))
    }

    async fn list_my_licenses(
        &self,
        request: Request<EmailRef>,
    ) -> Result<Response<MyLicensesReply>, Status> {
        let actor = self.begin(&request).await?;
        let email = parse_email(&request.get_ref().email, "email")?;
        Self::require_self(&actor, &email)?;
        let licenses = self
            .projections
            .licenses_of_user(&email)
            .map_err(from_projection)?
            .into_iter()
            .map(|l| MyLicense {
                license: l.license.as_str().to_owned(),
                status: l.status.as_str().to_owned(),
            })
            .collect();
        Ok(Response::new(MyLicensesReply { licenses }))
    }

    async fn list_my_invites(
        &self,
        request: Request<EmailRef>,
    ) -> Result<Response<MyInvitesReply>, Status> {
        let actor = self.begin(&request).await?;
        let email = parse_email(&request.get_ref().email, "email")?;
        Self::require_self(&actor, &email)?;
        let invites = self
            .projections
            .invites_of_user(&email)
            .map_err(from_projection)?
            .into_iter()
            .map(|license| MyInvite {
                license: license.as_str().to_owned(),
            })
            .collect();
        Ok(Response::new(MyInvitesReply { invites }))
    }

    async fn list_my_domains(
        &self,
        request: Request<EmailRef>,
    ) -> Result<Response<MyDomainsReply>, Status> {
        let actor = self.begin(&request).await?;
        let email = parse_email(&request.get_ref().email, "email")?;
        Self::require_self(&actor, &email)?;
        let domains = self
            .projections
            .domains_administered_by(&email)
            .map_err(from_projection)?
            .into_iter()
            .map(|d| d.as_str().to_owned())
            .collect();
        Ok(Response::new(MyDomainsReply { domains }))
    }

    async fn get_usage(
        &self,
        request: Request<GetUsageRequest>,
    ) -> Result<Response<UsageReply>, Status> {
        let actor = self.begin(&request).await?;
        let r = request.into_inner();
        let from = parse_time(&r.from, "from")?;
        let to = parse_time(&r.to, "to")?;
        let bucket = match r.bucket.as_str() {
            "day" => Bucket::Day,
            "week" => Bucket::Week,
            _ => return Err(invalid("bucket must be 'day' or 'week'")),
        };
        // ERR-1: a bad range is INVALID_ARGUMENT before the license is looked up.
        projections::check_usage_range(from, to, bucket).map_err(from_projection)?;
        let view = self.license_view(&r.license)?;
        if !Self::administers(&actor, &view) {
            return Err(Status::permission_denied(format!(
                "only the admins of license {} and staff may read its usage",
                view.id
            )));
        }
        let buckets = self
            .projections
            .usage(&view.id, from, to, bucket)
            .map_err(from_projection)?
            .into_iter()
            .map(|b| UsageBucket {
                start: crate::time_text(b.start),
                users_count: b.users_count,
                added: b
                    .added
                    .iter()
                    .map(|(s, n)| (s.as_str().to_owned(), *n))
                    .collect(),
                removed: b
                    .removed
                    .iter()
                    .map(|(s, n)| (s.as_str().to_owned(), *n))
                    .collect(),
            })
            .collect();
        Ok(Response::new(UsageReply { buckets }))
    }

    async fn history(
        &self,
        request: Request<HistoryRequest>,
    ) -> Result<Response<HistoryReply>, Status> {
        let actor = self.begin(&request).await?;
        let events = match request.into_inner().subject {
            Some(history_request::Subject::License(raw)) => {
                let view = self.license_view(&raw)?;
                if !Self::administers(&actor, &view) {
                    return Err(Status::permission_denied(format!(
                        "only the admins of license {} and staff may read its history",
                        view.id
                    )));
                }
                let positions = self
                    .projections
                    .license_history(&view.id, None, HISTORY_EVENTS_MAX)
                    .map_err(from_projection)?;
                self.events_at(&positions, None).await?
            }
            Some(history_request::Subject::User(raw)) => {
                let email = parse_email(&raw, "user")?;
                // a user reads their own History; another user's only as the admin of
                // a license, and then restricted to the licenses they administer
                // (`events_at`), which may leave nothing to show.
                if let Actor::User(viewer) = &actor
                    && viewer != &email
                    && !self.core.administers_any_license(viewer)
                {
                    return Err(Status::permission_denied(
                        "you may read only your own history, or a user's history on the \
                         licenses you administer",
                    ));
                }
                let positions = self
                    .projections
                    .user_history(&email, None, HISTORY_EVENTS_MAX)
                    .map_err(from_projection)?;
                self.events_at(&positions, Some(&(actor, email))).await?
            }
            None => return Err(invalid("name a license or a user")),
        };
        Ok(Response::new(HistoryReply { events }))
    }
}
