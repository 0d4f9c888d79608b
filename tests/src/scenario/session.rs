//! Plays the steps of one file against its ledger over real tonic clients: the metadata of
//! each actor, read-your-writes positions, placeholders, and the mapping of every call to
//! its RPC and of every reply to FORMAT.md's answer.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;

use proto::license_commands_client::LicenseCommandsClient;
use proto::license_queries_client::LicenseQueriesClient;
use serde_json::{Map, Value, json};
use server::ManualClock;
use tonic::metadata::{MetadataMap, MetadataValue};
use tonic::transport::Channel;

use super::answers::{self, Answer, CommandAnswer};
use super::calls::{Call, CallKind};
use super::file::{Actor, CallStep, code_name};
use super::placeholders::{self, Placeholder};

/// How much of the CSV text one streamed message carries.
pub const CSV_CHUNK_BYTES: usize = 64 * 1024;
/// The most ListUsers pages the runner follows for one step (each holds at most 1,000
/// rows); a server that keeps saying `more` is reported, not followed forever.
pub const PAGES_MAX: usize = 10_000;

/// What came back from a call: an answer (with the command's log position), or a refusal.
pub type Sent = Result<(Value, Option<u64>), tonic::Status>;

/// Why a step could not be judged against its expectation.
#[derive(Debug)]
pub enum Trouble {
    /// The runner could not make the call (a placeholder without a value, say).
    Runner(String),
    /// The server answered in a way the contract does not allow.
    Protocol(String),
}

pub struct Session {
    commands: LicenseCommandsClient<Channel>,
    queries: LicenseQueriesClient<Channel>,
    credentials: super::ledger::Credentials,
    clock: Arc<ManualClock>,
    /// The highest log position any command of this file reached; every query waits for
    /// the projections to get there.
    highest_position: u64,
    variables: HashMap<String, String>,
}

fn request<T>(message: T, metadata: &MetadataMap) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    *request.metadata_mut() = metadata.clone();
    request
}

async fn command<R: CommandAnswer>(
    reply: impl Future<Output = Result<tonic::Response<R>, tonic::Status>>,
) -> Sent {
    let reply = reply.await?.into_inner();
    Ok((reply.to_json(), Some(reply.position())))
}

async fn query<R: Answer>(
    reply: impl Future<Output = Result<tonic::Response<R>, tonic::Status>>,
) -> Sent {
    Ok((reply.await?.into_inner().to_json(), None))
}

fn header(value: &str, name: &str) -> Result<MetadataValue<tonic::metadata::Ascii>, Trouble> {
    MetadataValue::try_from(value)
        .map_err(|_| Trouble::Runner(format!("'{value}' cannot be sent as the {name} header")))
}

impl Session {
    pub fn new(ledger: &super::ledger::Ledger) -> Self {
        Self {
            commands: LicenseCommandsClient::new(ledger.channel.clone()),
            queries: LicenseQueriesClient::new(ledger.channel.clone()),
            credentials: ledger.credentials.clone(),
            clock: ledger.clock.clone(),
            highest_position: 0,
            variables: HashMap::new(),
        }
    }

    /// Moves the manual clock forward (never backwards: `ManualClock::set` ignores that).
    pub fn move_clock_to(&self, at: chrono::DateTime<chrono::Utc>) {
        self.clock.set(at);
    }

    /// Binds `let` variables, resolving the placeholders their values hold.
    pub async fn bind(&mut self, bindings: &[(String, String)]) -> Result<(), Trouble> {
        for (name, value) in bindings {
            let value = self.substitute(&Value::String(value.clone())).await?;
            let Value::String(value) = value else {
                unreachable!("a substituted text stays text")
            };
            self.variables.insert(name.clone(), value);
        }
        Ok(())
    }

    /// Moves the clock (never backwards: the manual clock ignores an earlier time).
    pub fn move_clock(&self, step: &CallStep) {
        if let Some(at) = step.at {
            self.move_clock_to(at);
        }
    }

    /// The step's arguments with their placeholders replaced.
    pub async fn arguments(&self, step: &CallStep) -> Result<Map<String, Value>, Trouble> {
        match self.substitute(&Value::Object(step.with.clone())).await? {
            Value::Object(with) => Ok(with),
            _ => unreachable!("a substituted object stays an object"),
        }
    }

    /// Makes the step's call with already substituted arguments.
    pub async fn call(
        &mut self,
        step: &CallStep,
        with: &Map<String, Value>,
    ) -> Result<Sent, Trouble> {
        let call = Call::build(step.kind, &step.name, with).map_err(Trouble::Runner)?;
        let metadata = self.metadata(&step.actor, step.kind, step.command_id.as_deref())?;
        let sent = self.send(call, &metadata).await?;
        if let Ok((_, Some(position))) = &sent {
            self.highest_position = self.highest_position.max(*position);
        }
        Ok(sent)
    }

    fn metadata(
        &self,
        actor: &Actor,
        kind: CallKind,
        command_id: Option<&str>,
    ) -> Result<MetadataMap, Trouble> {
        let mut metadata = MetadataMap::new();
        let token = match actor {
            Actor::Staff => Some(&self.credentials.staff),
            Actor::System => Some(&self.credentials.system),
            Actor::User(_) => Some(&self.credentials.user),
            Actor::Anonymous => None,
        };
        if let Some(token) = token {
            metadata.insert(
                "authorization",
                header(&format!("Bearer {token}"), "authorization")?,
            );
        }
        if let Actor::User(email) = actor {
            metadata.insert(server::auth::ACTOR_HEADER, header(email, "x-actor")?);
        }
        match kind {
            CallKind::Command => {
                if let Some(id) = command_id {
                    metadata.insert("x-command-id", header(id, "x-command-id")?);
                }
            }
            CallKind::Query => {
                if self.highest_position > 0 {
                    let position = self.highest_position.to_string();
                    metadata.insert("x-min-position", header(&position, "x-min-position")?);
                }
            }
        }
        Ok(metadata)
    }

    async fn substitute(&self, value: &Value) -> Result<Value, Trouble> {
        let wanted = placeholders::placeholders_in(value).map_err(Trouble::Runner)?;
        let mut resolved = HashMap::with_capacity(wanted.len());
        for placeholder in wanted {
            let text = match &placeholder {
                Placeholder::Variable(name) => {
                    self.variables.get(name).cloned().ok_or_else(|| {
                        Trouble::Runner(format!("{placeholder} is not bound by an earlier 'let'"))
                    })?
                }
                Placeholder::Key(license) | Placeholder::Link(license) => {
                    self.read_secret(&placeholder, license).await?
                }
            };
            resolved.insert(placeholder, text);
        }
        placeholders::substitute(value, &resolved).map_err(Trouble::Runner)
    }

    /// Reads a license's current key or join link as staff, after the latest write.
    async fn read_secret(
        &self,
        placeholder: &Placeholder,
        license: &str,
    ) -> Result<String, Trouble> {
        let metadata = self.metadata(&Actor::Staff, CallKind::Query, None)?;
        let message = proto::LicenseRef {
            license: license.to_owned(),
        };
        let view = self
            .queries
            .clone()
            .get_license(request(message, &metadata))
            .await
            .map_err(|status| {
                Trouble::Runner(format!(
                    "cannot read {placeholder}: GetLicense as staff answered {}: {}",
                    code_name(status.code()),
                    status.message()
                ))
            })?
            .into_inner();
        let (secret, what) = match placeholder {
            Placeholder::Key(_) => (view.key, "key"),
            _ => (view.link, "join link"),
        };
        if secret.is_empty() {
            return Err(Trouble::Runner(format!(
                "cannot read {placeholder}: GetLicense as staff shows no {what} for {license}"
            )));
        }
        Ok(secret)
    }

    async fn send(&self, call: Call, metadata: &MetadataMap) -> Result<Sent, Trouble> {
        let mut commands = self.commands.clone();
        let mut queries = self.queries.clone();
        let sent = match call {
            Call::IssueLicense(message) => {
                command(commands.issue_license(request(message, metadata))).await
            }
            Call::RenewLicense(message) => {
                command(commands.renew_license(request(message, metadata))).await
            }
            Call::ChangeSeats(message) => {
                command(commands.change_seats(request(message, metadata))).await
            }
            Call::GrantLicenseAdmin(message) => {
                command(commands.grant_license_admin(request(message, metadata))).await
            }
            Call::RevokeLicenseAdmin(message) => {
                command(commands.revoke_license_admin(request(message, metadata))).await
            }
            Call::GrantDomainAdmin(message) => {
                command(commands.grant_domain_admin(request(message, metadata))).await
            }
            Call::RevokeDomainAdmin(message) => {
                command(commands.revoke_domain_admin(request(message, metadata))).await
            }
            Call::AddUsersByEmail(message) => {
                command(commands.add_users_by_email(request(message, metadata))).await
            }
            Call::ImportCsv { start, csv } => {
                let chunks = csv_chunks(start, &csv);
                command(commands.import_csv(request(tokio_stream::iter(chunks), metadata))).await
            }
            Call::RemoveUsers(message) => {
                command(commands.remove_users(request(message, metadata))).await
            }
            Call::AcceptInvite(message) => {
                command(commands.accept_invite(request(message, metadata))).await
            }
            Call::RejectInvite(message) => {
                command(commands.reject_invite(request(message, metadata))).await
            }
            Call::RedeemLicenseKey(message) => {
                command(commands.redeem_license_key(request(message, metadata))).await
            }
            Call::JoinViaLink(message) => {
                command(commands.join_via_link(request(message, metadata))).await
            }
            Call::RotateLicenseKey(message) => {
                command(commands.rotate_license_key(request(message, metadata))).await
            }
            Call::RotateJoinLink(message) => {
                command(commands.rotate_join_link(request(message, metadata))).await
            }
            Call::SetFeaturePermission(message) => {
                command(commands.set_feature_permission(request(message, metadata))).await
            }
            Call::SetAutoEnrollment(message) => {
                command(commands.set_auto_enrollment(request(message, metadata))).await
            }
            Call::LinkOu(message) => command(commands.link_ou(request(message, metadata))).await,
            Call::UnlinkOu(message) => {
                command(commands.unlink_ou(request(message, metadata))).await
            }
            Call::ConfirmOuSync(message) => {
                match commands.confirm_ou_sync(request(message, metadata)).await {
                    Ok(reply) => {
                        let reply = reply.into_inner();
                        Ok((answers::confirm_ou_sync(&reply), Some(reply.position)))
                    }
                    Err(status) => Err(status),
                }
            }
            Call::SyncOu(message) => command(commands.sync_ou(request(message, metadata))).await,
            Call::ClaimDomain(message) => {
                command(commands.claim_domain(request(message, metadata))).await
            }
            Call::ReleaseDomain(message) => {
                command(commands.release_domain(request(message, metadata))).await
            }
            Call::UserSignedUp(message) => {
                command(commands.user_signed_up(request(message, metadata))).await
            }
            Call::ScanDomain(message) => {
                command(commands.scan_domain(request(message, metadata))).await
            }
            Call::AssignmentOpened(message) => {
                command(commands.assignment_opened(request(message, metadata))).await
            }
            Call::SyncClassroomRoster(message) => {
                command(commands.sync_classroom_roster(request(message, metadata))).await
            }
            Call::GetLicense(message) => {
                query(queries.get_license(request(message, metadata))).await
            }
            Call::ListUsers {
                request: message,
                follow_pages,
            } => return list_users(&mut queries, message, follow_pages, metadata).await,
            Call::ListMyLicenses(message) => {
                query(queries.list_my_licenses(request(message, metadata))).await
            }
            Call::ListMyInvites(message) => {
                query(queries.list_my_invites(request(message, metadata))).await
            }
            Call::ListMyDomains(message) => {
                query(queries.list_my_domains(request(message, metadata))).await
            }
            Call::GetUsage(message) => query(queries.get_usage(request(message, metadata))).await,
            Call::History(message) => query(queries.history(request(message, metadata))).await,
        };
        Ok(sent)
    }
}

/// The `start` message, then the text in data chunks.
pub fn csv_chunks(start: proto::ImportCsvStart, csv: &str) -> Vec<proto::ImportCsvChunk> {
    use proto::import_csv_chunk::Part;
    std::iter::once(Part::Start(start))
        .chain(
            csv.as_bytes()
                .chunks(CSV_CHUNK_BYTES)
                .map(|data| Part::Data(data.to_vec())),
        )
        .map(|part| proto::ImportCsvChunk { part: Some(part) })
        .collect()
}

/// One page, or every page when `follow_pages`: then the answer has every row and
/// `more: false`.
async fn list_users(
    queries: &mut LicenseQueriesClient<Channel>,
    mut message: proto::ListUsersRequest,
    follow_pages: bool,
    metadata: &MetadataMap,
) -> Result<Sent, Trouble> {
    let mut rows = Vec::new();
    for _ in 0..PAGES_MAX {
        let page = match queries.list_users(request(message.clone(), metadata)).await {
            Ok(page) => page.into_inner(),
            Err(status) => return Ok(Err(status)),
        };
        rows.extend(page.users);
        if !follow_pages {
            return Ok(Ok((answers::list_users(&rows, page.more), None)));
        }
        if !page.more {
            return Ok(Ok((answers::list_users(&rows, false), None)));
        }
        if page.next_page_token.is_empty() || page.next_page_token == message.page_token {
            return Err(Trouble::Protocol(format!(
                "ListUsers said more rows follow but gave {} after {} rows",
                if page.next_page_token.is_empty() {
                    "no next_page_token".to_owned()
                } else {
                    format!("the same page token '{}' again", page.next_page_token)
                },
                rows.len()
            )));
        }
        message.page_token = page.next_page_token;
    }
    Err(Trouble::Protocol(format!(
        "ListUsers still said more rows follow after {PAGES_MAX} pages ({} rows)",
        rows.len()
    )))
}

/// The request as the failure report shows it: the step with its substituted arguments.
pub fn describe_request(step: &CallStep, with: &Map<String, Value>) -> Value {
    let mut shown = Map::new();
    let actor = match &step.actor {
        Actor::Staff => "staff",
        Actor::System => "system",
        Actor::Anonymous => "anonymous",
        Actor::User(email) => email,
    };
    shown.insert("as".into(), json!(actor));
    let verb = match step.kind {
        CallKind::Command => "do",
        CallKind::Query => "query",
    };
    shown.insert(verb.into(), json!(step.name));
    shown.insert("with".into(), Value::Object(with.clone()));
    if let Some(id) = &step.command_id {
        shown.insert("command_id".into(), json!(id));
    }
    if let Some(at) = step.at {
        shown.insert("at".into(), json!(at.to_rfc3339()));
    }
    Value::Object(shown)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::import_csv_chunk::Part;

    #[test]
    fn csv_is_streamed_as_start_then_bounded_chunks() {
        let start = proto::ImportCsvStart {
            license: "L1".into(),
            mode: "add".into(),
        };
        let text = "x".repeat(CSV_CHUNK_BYTES * 2 + 5);
        let chunks = csv_chunks(start.clone(), &text);
        assert_eq!(chunks.len(), 4);
        assert_eq!(chunks[0].part, Some(Part::Start(start.clone())));
        let data: Vec<u8> = chunks[1..]
            .iter()
            .flat_map(|chunk| match &chunk.part {
                Some(Part::Data(data)) => {
                    assert!(data.len() <= CSV_CHUNK_BYTES);
                    data.clone()
                }
                other => panic!("a data chunk, not {other:?}"),
            })
            .collect();
        assert_eq!(data, text.as_bytes());
        // An empty file is still a start message, for the server to refuse or accept.
        assert_eq!(csv_chunks(start, "").len(), 1);
    }
}
