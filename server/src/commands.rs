//! The `LicenseCommands` service: each RPC parses its request into a domain command (bad
//! input is INVALID_ARGUMENT here, before anything else, as ERR-1 orders), runs it through
//! the core, and answers with the outcome and the log position it reached.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use domain::csv_import::{CsvImportParser, CsvRow, RowErrors};
use domain::email_list::parse_email_list;
use domain::events::OuEntry;
use domain::{
    Actor, AdminChannel, DomainCommand, DomainName, Email, FeatureName, LicenseCommand, LicenseId,
    LicenseType, Lms, OuPath, Outcome, Role, ScannedAccount, Secret, Status as MemberStatus,
};
use prost::Message;
use proto::license_commands_server::LicenseCommands;
use proto::*;
use sha2::{Digest, Sha256};
use tokio_stream::StreamExt;
use tonic::{Request, Response, Status, Streaming};
use uuid::Uuid;

use crate::auth::{Tokens, random_token};
use crate::core::{Core, CoreError, SecretKind};
use crate::idempotency::Outcomes;
use crate::status::{from_core, from_domain, invalid};

/// The longest command id a client may send.
pub const COMMAND_ID_LENGTH_MAX_BYTES: usize = 128;

pub struct CommandService {
    pub core: Arc<Core>,
    pub tokens: Tokens,
    pub outcomes: Outcomes,
    pub csv_import_bytes_max: u64,
    pub metrics: crate::metrics::Metrics,
}

/// What every command call carries besides its request.
struct Call {
    actor: Actor,
    /// The client's command id, if it sent one (AUD-4).
    client_command_id: Option<String>,
    command_id: Uuid,
    correlation_id: Uuid,
}

fn header<'a>(metadata: &'a tonic::metadata::MetadataMap, name: &str) -> Option<&'a str> {
    metadata.get(name).and_then(|value| value.to_str().ok())
}

fn parse_time(raw: &str, name: &str) -> Result<DateTime<Utc>, Status> {
    DateTime::parse_from_rfc3339(raw.trim())
        .map(|t| t.with_timezone(&Utc))
        .map_err(|_| {
            invalid(format!(
                "{name} must be an RFC 3339 time such as 2026-08-01T00:00:00Z"
            ))
        })
}

fn parse_email(raw: &str, name: &str) -> Result<Email, Status> {
    Email::parse(raw).map_err(|reason| invalid(format!("{name}: {reason}")))
}

fn parse_domain(raw: &str) -> Result<DomainName, Status> {
    DomainName::parse(raw).map_err(|reason| invalid(format!("domain: {reason}")))
}

fn parse_license(raw: &str) -> Result<LicenseId, Status> {
    LicenseId::parse(raw).map_err(|e| from_domain(&e))
}

fn parse_seats(seats: i64) -> Result<u32, Status> {
    u32::try_from(seats).map_err(|_| {
        invalid(format!(
            "seats must be between {} and {}, not {seats}",
            domain::SEATS_MIN,
            domain::SEATS_MAX
        ))
    })
}

fn fresh_secret() -> Secret {
    // 128 random bits as 32 hexadecimal digits (LIC-1).
    Secret::new(random_token()).expect("a random token has the shape of a secret")
}

fn require_integration(actor: &Actor) -> Result<(), Status> {
    match actor {
        Actor::Staff | Actor::System => Ok(()),
        Actor::User(_) => Err(Status::permission_denied(
            "only the system integration may report this",
        )),
    }
}

impl CommandService {
    fn call<T>(&self, request: &Request<T>) -> Result<Call, Status> {
        let metadata = request.metadata();
        let actor = self.tokens.authenticate(metadata)?;
        let client_command_id = header(metadata, "x-command-id").map(str::to_owned);
        if let Some(id) = &client_command_id
            && (id.is_empty() || id.len() > COMMAND_ID_LENGTH_MAX_BYTES)
        {
            return Err(invalid(format!(
                "x-command-id must have 1 to {COMMAND_ID_LENGTH_MAX_BYTES} bytes"
            )));
        }
        let command_id = match &client_command_id {
            Some(id) => Uuid::new_v5(&Uuid::NAMESPACE_OID, id.as_bytes()),
            None => Uuid::new_v4(),
        };
        let correlation_id = match header(metadata, "x-correlation-id") {
            Some(raw) => Uuid::parse_str(raw)
                .unwrap_or_else(|_| Uuid::new_v5(&Uuid::NAMESPACE_OID, raw.as_bytes())),
            None => command_id,
        };
        Ok(Call {
            actor,
            client_command_id,
            command_id,
            correlation_id,
        })
    }

    /// AUD-4: a command retried with the same id gets its first answer back and appends
    /// nothing; the same id for a different command is FAILED_PRECONDITION.
    async fn once<R, F>(
        &self,
        call: &Call,
        rpc: &str,
        request: &[u8],
        run: F,
    ) -> Result<Response<R>, Status>
    where
        R: Message + Default,
        F: std::future::Future<Output = Result<R, Status>>,
    {
        let started = std::time::Instant::now();
        let answer = self.once_inner(call, rpc, request, run).await;
        let outcome = match &answer {
            Ok(_) => "ok".to_owned(),
            Err(status) => format!("{:?}", status.code()),
        };
        self.metrics
            .record_command(rpc, &outcome, started.elapsed());
        answer
    }

    async fn once_inner<R, F>(
        &self,
        call: &Call,
        rpc: &str,
        request: &[u8],
        run: F,
    ) -> Result<Response<R>, Status>
    where
        R: Message + Default,
        F: std::future::Future<Output = Result<R, Status>>,
    {
        let Some(id) = &call.client_command_id else {
            return run.await.map(Response::new);
        };
        let mut hasher = Sha256::new();
        hasher.update(call.actor.to_string().as_bytes());
        hasher.update([0]);
        hasher.update(rpc.as_bytes());
        hasher.update([0]);
        hasher.update(request);
        let fingerprint: [u8; 32] = hasher.finalize().into();
        if let Some(stored) = self
            .outcomes
            .get(id)
            .map_err(|e| Status::unavailable(e.to_string()))?
        {
            if stored.fingerprint != fingerprint {
                return Err(Status::failed_precondition(
                    "this command id was already used for a different command; use a new id",
                ));
            }
            let reply = R::decode(stored.reply.as_slice())
                .map_err(|_| Status::internal("a stored answer cannot be read"))?;
            return Ok(Response::new(reply));
        }
        let reply = run.await?;
        self.outcomes
            .put(id, fingerprint, &reply.encode_to_vec())
            .map_err(|e| Status::unavailable(e.to_string()))?;
        Ok(Response::new(reply))
    }

    async fn license(
        &self,
        call: &Call,
        id: &str,
        command: LicenseCommand,
    ) -> Result<(Outcome, u64), Status> {
        self.core
            .execute_license(
                id,
                &call.actor,
                &command,
                call.command_id,
                call.correlation_id,
            )
            .await
            .map_err(from_core)
    }

    async fn plain(
        &self,
        call: &Call,
        id: &str,
        command: LicenseCommand,
    ) -> Result<CommandReply, Status> {
        let (_, position) = self.license(call, id, command).await?;
        Ok(CommandReply { position })
    }
}

fn ou_sync_reply(outcome: Outcome, position: u64) -> OuSyncReply {
    match outcome {
        Outcome::OuSync { counts, held } => OuSyncReply {
            position,
            added: counts.added,
            removed: counts.removed,
            readded: counts.readded,
            skipped_suspended: counts.skipped_suspended,
            waitlisted: counts.waitlisted,
            held,
        },
        _ => OuSyncReply {
            position,
            ..OuSyncReply::default()
        },
    }
}

fn automatic_reply(outcome: Outcome, position: u64) -> AutomaticReply {
    match outcome {
        Outcome::Automatic(summary) => AutomaticReply {
            position,
            added: summary.added,
            waitlisted: summary.waitlisted,
        },
        _ => AutomaticReply {
            position,
            ..AutomaticReply::default()
        },
    }
}

fn status_name(status: MemberStatus) -> String {
    status.as_str().to_owned()
}

#[tonic::async_trait]
impl LicenseCommands for CommandService {
    async fn issue_license(
        &self,
        request: Request<IssueLicenseRequest>,
    ) -> Result<Response<CommandReply>, Status> {
        self.on_license(request, "IssueLicense", |r| {
            let license = parse_license(&r.license)?;
            let command = LicenseCommand::Issue {
                license: license.clone(),
                license_type: LicenseType::parse(&r.r#type).map_err(|e| from_domain(&e))?,
                seats: parse_seats(r.seats)?,
                valid_from: parse_time(&r.valid_from, "valid_from")?,
                valid_until: parse_time(&r.valid_until, "valid_until")?,
                admins: r
                    .admins
                    .iter()
                    .map(|a| parse_email(a, "admins"))
                    .collect::<Result<Vec<_>, _>>()?,
                key: fresh_secret(),
                link: fresh_secret(),
            };
            Ok((license, command))
        })
        .await
    }

    async fn renew_license(
        &self,
        request: Request<RenewLicenseRequest>,
    ) -> Result<Response<CommandReply>, Status> {
        self.on_license(request, "RenewLicense", |r| {
            let command = LicenseCommand::Renew {
                valid_until: parse_time(&r.valid_until, "valid_until")?,
            };
            Ok((parse_license(&r.license)?, command))
        })
        .await
    }

    async fn change_seats(
        &self,
        request: Request<ChangeSeatsRequest>,
    ) -> Result<Response<CommandReply>, Status> {
        self.on_license(request, "ChangeSeats", |r| {
            let command = LicenseCommand::ChangeSeats {
                seats: parse_seats(r.seats)?,
            };
            Ok((parse_license(&r.license)?, command))
        })
        .await
    }

    async fn grant_license_admin(
        &self,
        request: Request<LicenseAdminRequest>,
    ) -> Result<Response<CommandReply>, Status> {
        self.on_license(request, "GrantLicenseAdmin", |r| {
            let command = LicenseCommand::GrantAdmin {
                email: parse_email(&r.email, "email")?,
            };
            Ok((parse_license(&r.license)?, command))
        })
        .await
    }

    async fn revoke_license_admin(
        &self,
        request: Request<LicenseAdminRequest>,
    ) -> Result<Response<CommandReply>, Status> {
        self.on_license(request, "RevokeLicenseAdmin", |r| {
            let command = LicenseCommand::RevokeAdmin {
                email: parse_email(&r.email, "email")?,
            };
            Ok((parse_license(&r.license)?, command))
        })
        .await
    }

    async fn grant_domain_admin(
        &self,
        request: Request<DomainAdminRequest>,
    ) -> Result<Response<CommandReply>, Status> {
        self.domain_admin(request, true).await
    }

    async fn revoke_domain_admin(
        &self,
        request: Request<DomainAdminRequest>,
    ) -> Result<Response<CommandReply>, Status> {
        self.domain_admin(request, false).await
    }

    async fn add_users_by_email(
        &self,
        request: Request<AddUsersByEmailRequest>,
    ) -> Result<Response<AddUsersReply>, Status> {
        let call = self.call(&request)?;
        let bytes = request.get_ref().encode_to_vec();
        let r = request.into_inner();
        let entries = parse_email_list(&r.emails).map_err(|e| from_domain(&e))?;
        let license = parse_license(&r.license)?;
        let run = async {
            let mut emails = Vec::with_capacity(entries.len());
            let mut invalid_entries = Vec::new();
            for entry in entries {
                match entry.email {
                    Ok(email) => emails.push(email),
                    Err(reason) => invalid_entries.push(InvalidEntry {
                        position: entry.position,
                        value: entry.value,
                        reason,
                    }),
                }
            }
            let command = LicenseCommand::AddUsers {
                emails,
                channel: AdminChannel::EmailList,
            };
            let (outcome, position) = self.license(&call, license.as_str(), command).await?;
            let Outcome::UsersAdded(summary) = outcome else {
                return Err(Status::internal("an add answered something else"));
            };
            Ok(AddUsersReply {
                position,
                added: summary.added,
                invited: summary.invited,
                unchanged: summary.unchanged,
                invalid: invalid_entries,
            })
        };
        self.once(&call, "AddUsersByEmail", &bytes, run).await
    }

    async fn import_csv(
        &self,
        request: Request<Streaming<ImportCsvChunk>>,
    ) -> Result<Response<ImportCsvReply>, Status> {
        let call = self.call(&request)?;
        let mut stream = request.into_inner();
        let start = match stream.next().await {
            Some(Ok(ImportCsvChunk {
                part: Some(import_csv_chunk::Part::Start(start)),
            })) => start,
            Some(Err(status)) => return Err(crate::status::stream_status(status)),
            _ => {
                return Err(invalid(
                    "the first message of ImportCsv must be 'start' with the license and mode",
                ));
            }
        };
        let remove = match start.mode.as_str() {
            "add" => false,
            "remove" => true,
            _ => return Err(invalid("mode must be 'add' or 'remove'")),
        };
        // The whole file feeds the fingerprint, so a retried import is recognised and a
        // different file under the same id is refused.
        let mut hasher = Sha256::new();
        hasher.update(start.encode_to_vec());
        let mut parser = CsvImportParser::new();
        let mut rows = Vec::new();
        let mut emails = Vec::new();
        let mut errors = RowErrors::new();
        let mut bytes_seen: u64 = 0;
        let drain = |rows: &mut Vec<CsvRow>, emails: &mut Vec<Email>, errors: &mut RowErrors| {
            for row in rows.drain(..) {
                match row {
                    CsvRow::Email { email, .. } => emails.push(email),
                    CsvRow::Invalid(error) => errors.record(error),
                }
            }
        };
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(crate::status::stream_status)?;
            let Some(import_csv_chunk::Part::Data(data)) = chunk.part else {
                return Err(invalid("after 'start', ImportCsv takes only 'data' chunks"));
            };
            bytes_seen += data.len() as u64;
            if bytes_seen > self.csv_import_bytes_max {
                return Err(Status::resource_exhausted(format!(
                    "the CSV file is larger than {} bytes; split it into several imports",
                    self.csv_import_bytes_max
                )));
            }
            hasher.update(&data);
            parser
                .push(&data, &mut rows)
                .map_err(|e| from_domain(&e.into()))?;
            drain(&mut rows, &mut emails, &mut errors);
            // The rows are held until the file ends (the seat check needs them all), so
            // their number is bounded as they arrive: a file over the batch limit is
            // refused at once instead of after its last byte (ERR-3).
            if emails.len() > domain::license::ADMIN_BATCH_ENTRIES_MAX {
                return Err(Status::resource_exhausted(format!(
                    "the CSV file has more than {} rows; split it into several imports",
                    domain::license::ADMIN_BATCH_ENTRIES_MAX
                )));
            }
        }
        parser
            .finish(&mut rows)
            .map_err(|e| from_domain(&e.into()))?;
        drain(&mut rows, &mut emails, &mut errors);
        let license = parse_license(&start.license)?;
        let fingerprint_input: [u8; 32] = hasher.finalize().into();
        let run = async {
            let command = if remove {
                LicenseCommand::RemoveUsers { emails }
            } else {
                LicenseCommand::AddUsers {
                    emails,
                    channel: AdminChannel::Csv,
                }
            };
            let (outcome, position) = self.license(&call, license.as_str(), command).await?;
            let mut reply = ImportCsvReply {
                position,
                invalid_count: errors.count,
                invalid: errors
                    .first
                    .iter()
                    .map(|e| RowError {
                        line: e.line,
                        reason: e.reason.clone(),
                    })
                    .collect(),
                ..ImportCsvReply::default()
            };
            match outcome {
                Outcome::UsersAdded(s) => {
                    reply.added = s.added;
                    reply.invited = s.invited;
                    reply.unchanged = s.unchanged;
                }
                Outcome::UsersRemoved(s) => {
                    reply.removed = s.removed;
                    reply.not_found = s.not_found;
                    reply.will_return = s.will_return;
                }
                _ => return Err(Status::internal("an import answered something else")),
            }
            Ok(reply)
        };
        self.once(&call, "ImportCsv", &fingerprint_input, run).await
    }

    async fn remove_users(
        &self,
        request: Request<RemoveUsersRequest>,
    ) -> Result<Response<RemoveUsersReply>, Status> {
        let call = self.call(&request)?;
        let bytes = request.get_ref().encode_to_vec();
        let r = request.into_inner();
        let license = parse_license(&r.license)?;
        let run = async {
            // An entry that is not an email cannot be a member: it is not found.
            let mut not_emails = 0u64;
            let emails: Vec<Email> = r
                .emails
                .iter()
                .filter_map(|raw| Email::parse(raw).map_err(|_| not_emails += 1).ok())
                .collect();
            let (outcome, position) = self
                .license(
                    &call,
                    license.as_str(),
                    LicenseCommand::RemoveUsers { emails },
                )
                .await?;
            let Outcome::UsersRemoved(s) = outcome else {
                return Err(Status::internal("a removal answered something else"));
            };
            Ok(RemoveUsersReply {
                position,
                removed: s.removed,
                not_found: s.not_found + not_emails,
                will_return: s.will_return,
            })
        };
        self.once(&call, "RemoveUsers", &bytes, run).await
    }

    async fn accept_invite(
        &self,
        request: Request<LicenseRef>,
    ) -> Result<Response<CommandReply>, Status> {
        self.simple(request, "AcceptInvite", LicenseCommand::AcceptInvite)
            .await
    }

    async fn reject_invite(
        &self,
        request: Request<LicenseRef>,
    ) -> Result<Response<CommandReply>, Status> {
        self.simple(request, "RejectInvite", LicenseCommand::RejectInvite)
            .await
    }

    async fn redeem_license_key(
        &self,
        request: Request<RedeemLicenseKeyRequest>,
    ) -> Result<Response<JoinReply>, Status> {
        self.redeem(request, "RedeemLicenseKey", SecretKind::Key, |r| r.key)
            .await
    }

    async fn join_via_link(
        &self,
        request: Request<JoinViaLinkRequest>,
    ) -> Result<Response<JoinReply>, Status> {
        self.redeem(request, "JoinViaLink", SecretKind::Link, |r| r.token)
            .await
    }

    async fn rotate_license_key(
        &self,
        request: Request<LicenseRef>,
    ) -> Result<Response<CommandReply>, Status> {
        let key = fresh_secret();
        self.simple(
            request,
            "RotateLicenseKey",
            LicenseCommand::RotateKey { key },
        )
        .await
    }

    async fn rotate_join_link(
        &self,
        request: Request<LicenseRef>,
    ) -> Result<Response<CommandReply>, Status> {
        let link = fresh_secret();
        self.simple(
            request,
            "RotateJoinLink",
            LicenseCommand::RotateLink { link },
        )
        .await
    }

    async fn set_feature_permission(
        &self,
        request: Request<SetFeaturePermissionRequest>,
    ) -> Result<Response<CommandReply>, Status> {
        self.on_license(request, "SetFeaturePermission", |r| {
            let feature = FeatureName::parse(&r.feature).map_err(|e| from_domain(&e))?;
            let role = if r.role.trim().is_empty() {
                None
            } else {
                Some(Role::parse(&r.role).map_err(|e| from_domain(&e))?)
            };
            let command = LicenseCommand::SetFeature {
                feature,
                enabled: r.enabled,
                role,
            };
            Ok((parse_license(&r.license)?, command))
        })
        .await
    }

    async fn set_auto_enrollment(
        &self,
        request: Request<SetAutoEnrollmentRequest>,
    ) -> Result<Response<CommandReply>, Status> {
        self.on_license(request, "SetAutoEnrollment", |r| {
            let command = LicenseCommand::SetAutoEnrollment { enabled: r.enabled };
            Ok((parse_license(&r.license)?, command))
        })
        .await
    }

    async fn link_ou(
        &self,
        request: Request<LinkOuRequest>,
    ) -> Result<Response<CommandReply>, Status> {
        self.on_license(request, "LinkOu", |r| {
            let ou_paths = r
                .ou_paths
                .iter()
                .map(|p| OuPath::parse(p).map_err(|e| from_domain(&e)))
                .collect::<Result<Vec<_>, _>>()?;
            let command = LicenseCommand::LinkOu {
                ou_paths,
                google_admin: r.google_admin,
            };
            Ok((parse_license(&r.license)?, command))
        })
        .await
    }

    async fn unlink_ou(
        &self,
        request: Request<LicenseRef>,
    ) -> Result<Response<UnlinkOuReply>, Status> {
        let call = self.call(&request)?;
        let bytes = request.get_ref().encode_to_vec();
        let license = parse_license(&request.into_inner().license)?;
        let run = async {
            let (outcome, position) = self
                .license(&call, license.as_str(), LicenseCommand::UnlinkOu)
                .await?;
            let removed = match outcome {
                Outcome::OuUnlinked { removed } => removed,
                _ => 0,
            };
            Ok(UnlinkOuReply { position, removed })
        };
        self.once(&call, "UnlinkOu", &bytes, run).await
    }

    async fn sync_ou(
        &self,
        request: Request<SyncOuRequest>,
    ) -> Result<Response<OuSyncReply>, Status> {
        let call = self.call(&request)?;
        let bytes = request.get_ref().encode_to_vec();
        let r = request.into_inner();
        let mut entries = Vec::with_capacity(r.members.len());
        for (index, member) in r.members.iter().enumerate() {
            entries.push(OuEntry {
                email: parse_email(&member.email, &format!("members[{index}].email"))?,
                ou_path: OuPath::parse(&member.ou_path)
                    .map_err(|e| invalid(format!("members[{index}].ou_path: {}", e.message())))?,
                role: Role::parse(&member.role)
                    .map_err(|e| invalid(format!("members[{index}].role: {}", e.message())))?,
                suspended: member.suspended,
            });
        }
        let license = parse_license(&r.license)?;
        let run = async {
            let (outcome, position) = self
                .license(&call, license.as_str(), LicenseCommand::SyncOu { entries })
                .await?;
            Ok(ou_sync_reply(outcome, position))
        };
        self.once(&call, "SyncOu", &bytes, run).await
    }

    async fn confirm_ou_sync(
        &self,
        request: Request<LicenseRef>,
    ) -> Result<Response<OuSyncReply>, Status> {
        let call = self.call(&request)?;
        let bytes = request.get_ref().encode_to_vec();
        let license = parse_license(&request.into_inner().license)?;
        let run = async {
            let (outcome, position) = self
                .license(&call, license.as_str(), LicenseCommand::ConfirmOuSync)
                .await?;
            Ok(ou_sync_reply(outcome, position))
        };
        self.once(&call, "ConfirmOuSync", &bytes, run).await
    }

    async fn claim_domain(
        &self,
        request: Request<ClaimDomainRequest>,
    ) -> Result<Response<CommandReply>, Status> {
        let call = self.call(&request)?;
        let bytes = request.get_ref().encode_to_vec();
        let r = request.into_inner();
        let domain = parse_domain(&r.domain)?;
        let license = parse_license(&r.license)?;
        let run = async {
            let position = self
                .core
                .execute_claim(
                    &license,
                    &domain,
                    Some(r.dedicated),
                    &call.actor,
                    call.command_id,
                    call.correlation_id,
                )
                .await
                .map_err(from_core)?;
            Ok(CommandReply { position })
        };
        self.once(&call, "ClaimDomain", &bytes, run).await
    }

    async fn release_domain(
        &self,
        request: Request<ReleaseDomainRequest>,
    ) -> Result<Response<CommandReply>, Status> {
        let call = self.call(&request)?;
        let bytes = request.get_ref().encode_to_vec();
        let r = request.into_inner();
        let domain = parse_domain(&r.domain)?;
        let license = parse_license(&r.license)?;
        let run = async {
            let position = self
                .core
                .execute_claim(
                    &license,
                    &domain,
                    None,
                    &call.actor,
                    call.command_id,
                    call.correlation_id,
                )
                .await
                .map_err(from_core)?;
            Ok(CommandReply { position })
        };
        self.once(&call, "ReleaseDomain", &bytes, run).await
    }

    async fn user_signed_up(
        &self,
        request: Request<UserSignedUpRequest>,
    ) -> Result<Response<LicenseNameReply>, Status> {
        let call = self.call(&request)?;
        let bytes = request.get_ref().encode_to_vec();
        let r = request.into_inner();
        let email = parse_email(&r.email, "email")?;
        let role = Role::parse(&r.role).map_err(|e| from_domain(&e))?;
        require_integration(&call.actor)?;
        let run = async {
            let Some(license) = self.core.claim_of(&DomainName::of(&email)) else {
                return Ok(LicenseNameReply::default());
            };
            let (outcome, position) = self
                .license(
                    &call,
                    license.as_str(),
                    LicenseCommand::SignUp { email, role },
                )
                .await?;
            Ok(LicenseNameReply {
                position,
                license: match outcome {
                    Outcome::Joined { .. } => license.as_str().to_owned(),
                    _ => String::new(),
                },
            })
        };
        self.once(&call, "UserSignedUp", &bytes, run).await
    }

    async fn scan_domain(
        &self,
        request: Request<ScanDomainRequest>,
    ) -> Result<Response<AutomaticReply>, Status> {
        let call = self.call(&request)?;
        let bytes = request.get_ref().encode_to_vec();
        let r = request.into_inner();
        let domain = parse_domain(&r.domain)?;
        let mut accounts = Vec::with_capacity(r.accounts.len());
        for (index, account) in r.accounts.iter().enumerate() {
            accounts.push(ScannedAccount {
                email: parse_email(&account.email, &format!("accounts[{index}].email"))?,
                role: Role::parse(&account.role)
                    .map_err(|e| invalid(format!("accounts[{index}].role: {}", e.message())))?,
            });
        }
        require_integration(&call.actor)?;
        let run = async {
            let Some(license) = self.core.claim_of(&domain) else {
                return Ok(AutomaticReply::default());
            };
            let (outcome, position) = self
                .license(
                    &call,
                    license.as_str(),
                    LicenseCommand::ScanDomain { domain, accounts },
                )
                .await?;
            Ok(automatic_reply(outcome, position))
        };
        self.once(&call, "ScanDomain", &bytes, run).await
    }

    async fn assignment_opened(
        &self,
        request: Request<AssignmentOpenedRequest>,
    ) -> Result<Response<LicenseNameReply>, Status> {
        let call = self.call(&request)?;
        let bytes = request.get_ref().encode_to_vec();
        let r = request.into_inner();
        let teacher = parse_email(&r.teacher, "teacher")?;
        let student = parse_email(&r.student, "student")?;
        let lms = Lms::parse(&r.lms).map_err(|e| from_domain(&e))?;
        require_integration(&call.actor)?;
        let run = async {
            if !r.kami_assignment {
                return Ok(LicenseNameReply::default());
            }
            let Some(license) = self.core.auto_enrollment_license(&teacher).await else {
                return Ok(LicenseNameReply::default());
            };
            let command = LicenseCommand::AssignmentOpened {
                teacher,
                student,
                lms,
                kami_assignment: r.kami_assignment,
            };
            let (outcome, position) = self.license(&call, &license, command).await?;
            Ok(LicenseNameReply {
                position,
                license: match outcome {
                    Outcome::Joined { .. } => license,
                    _ => String::new(),
                },
            })
        };
        self.once(&call, "AssignmentOpened", &bytes, run).await
    }

    async fn sync_classroom_roster(
        &self,
        request: Request<SyncClassroomRosterRequest>,
    ) -> Result<Response<AutomaticReply>, Status> {
        let call = self.call(&request)?;
        let bytes = request.get_ref().encode_to_vec();
        let r = request.into_inner();
        let students = r
            .students
            .iter()
            .map(|s| parse_email(s, "students"))
            .collect::<Result<Vec<_>, _>>()?;
        let license = parse_license(&r.license)?;
        let run = async {
            let command = LicenseCommand::SyncRoster {
                course: r.course.clone(),
                students,
            };
            let (outcome, position) = self.license(&call, license.as_str(), command).await?;
            Ok(automatic_reply(outcome, position))
        };
        self.once(&call, "SyncClassroomRoster", &bytes, run).await
    }
}

impl CommandService {
    async fn simple(
        &self,
        request: Request<LicenseRef>,
        rpc: &str,
        command: LicenseCommand,
    ) -> Result<Response<CommandReply>, Status> {
        self.on_license(request, rpc, |r| Ok((parse_license(&r.license)?, command)))
            .await
    }

    /// The shape of every command that answers only its position: authenticate, parse the
    /// request into a license and a command (INVALID_ARGUMENT first, as ERR-1 orders), and
    /// run it once per command id.
    async fn on_license<M: Message>(
        &self,
        request: Request<M>,
        rpc: &str,
        parse: impl FnOnce(M) -> Result<(LicenseId, LicenseCommand), Status>,
    ) -> Result<Response<CommandReply>, Status> {
        let call = self.call(&request)?;
        let bytes = request.get_ref().encode_to_vec();
        let (license, command) = parse(request.into_inner())?;
        self.once(
            &call,
            rpc,
            &bytes,
            self.plain(&call, license.as_str(), command),
        )
        .await
    }

    async fn domain_admin(
        &self,
        request: Request<DomainAdminRequest>,
        grant: bool,
    ) -> Result<Response<CommandReply>, Status> {
        let call = self.call(&request)?;
        let bytes = request.get_ref().encode_to_vec();
        let r = request.into_inner();
        let domain = parse_domain(&r.domain)?;
        let email = parse_email(&r.email, "email")?;
        let command = if grant {
            DomainCommand::GrantAdmin { email }
        } else {
            DomainCommand::RevokeAdmin { email }
        };
        let rpc = if grant {
            "GrantDomainAdmin"
        } else {
            "RevokeDomainAdmin"
        };
        let run = async {
            let position = self
                .core
                .execute_domain(
                    &domain,
                    &call.actor,
                    &command,
                    call.command_id,
                    call.correlation_id,
                )
                .await
                .map_err(from_core)?;
            Ok(CommandReply { position })
        };
        self.once(&call, rpc, &bytes, run).await
    }

    /// KEY-1, LINK-1: the two ways in by a secret differ only in the request's field.
    async fn redeem<M: Message>(
        &self,
        request: Request<M>,
        rpc: &str,
        kind: SecretKind,
        secret_of: impl FnOnce(M) -> String,
    ) -> Result<Response<JoinReply>, Status> {
        let call = self.call(&request)?;
        let bytes = request.get_ref().encode_to_vec();
        let secret = secret_of(request.into_inner());
        self.once(&call, rpc, &bytes, self.join(&call, &secret, kind))
            .await
    }

    async fn join(&self, call: &Call, secret: &str, kind: SecretKind) -> Result<JoinReply, Status> {
        let (license, outcome, position) = self
            .core
            .redeem(
                secret,
                kind,
                &call.actor,
                call.command_id,
                call.correlation_id,
            )
            .await
            .map_err(|error| match error {
                CoreError::Domain(error) => from_domain(&error),
                other => from_core(other),
            })?;
        let Outcome::Joined { status } = outcome else {
            return Err(Status::internal("a join answered something else"));
        };
        Ok(JoinReply {
            position,
            license,
            status: status_name(status),
        })
    }
}
