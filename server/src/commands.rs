//! The `LicenseCommands` service: each RPC parses its request into a domain command (bad
//! input is INVALID_ARGUMENT here, before anything else, as ERR-1 orders), runs it through
//! the core, and answers with the outcome and the log position it reached.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use domain::csv_import::{CsvImportParser, CsvRow, RowErrors};
use domain::{
    Actor, AdminChannel, DomainName, Email, LicenseCommand, LicenseId, Outcome, Secret,
    Status as MemberStatus,
};
use prost::Message;
use proto::license_commands_server::LicenseCommands;
use proto::*;
use sha2::{Digest, Sha256};
use tokio_stream::StreamExt;
use tonic::{Request, Response, Status, Streaming};
use uuid::Uuid;

use crate::auth::{Tokens, random_token};
use crate::core::{CommandIds, Core, CoreError, SecretKind};
use crate::idempotency::{FirstOutcome, Outcomes, is_decided_refusal};
use crate::requests::{self, parse_license};
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
    /// The RPC's name, for metrics and the fingerprint; set by `fingerprinted`.
    rpc: &'static str,
    ids: CommandIds,
    /// Set by `once` when the answers cache holds the client's id for another request: the
    /// command is then decided for a refusal ERR-1 ranks first, and never appended.
    reused: AtomicBool,
}

/// ERR-1 for a command whose id another request used: a refusal ranked after the reuse's
/// FAILED_PRECONDITION (ALREADY_EXISTS, RESOURCE_EXHAUSTED: a throttled redeem, say) gives
/// way to it; the ones ranked before, and failures to decide, stand.
fn ranked_before_reuse(status: Status) -> Status {
    match status.code() {
        tonic::Code::FailedPrecondition
        | tonic::Code::AlreadyExists
        | tonic::Code::ResourceExhausted => crate::status::command_id_reused(),
        _ => status,
    }
}

impl Call {
    /// The answer of a call that finds nothing to decide (UserSignedUp for a domain no
    /// license claims, say): the empty reply, or the reuse's refusal when `once` found the
    /// id used for another request.
    fn nothing_to_decide<R: Default>(&self) -> Result<R, Status> {
        if self.reused.load(Ordering::Relaxed) {
            Err(crate::status::command_id_reused())
        } else {
            Ok(R::default())
        }
    }

    /// The ids the core gets: read when the command runs, after `once` looked the id up.
    fn ids(&self) -> CommandIds {
        CommandIds {
            reused: self.reused.load(Ordering::Relaxed),
            ..self.ids
        }
    }

    /// Names the RPC and, when the client sent a command id, fingerprints the request: the
    /// actor, the RPC and the request's bytes. A retry must match it to get the first answer
    /// back (AUD-4); the core keeps it with the command's append.
    fn fingerprinted(mut self, rpc: &'static str, request: &[u8]) -> Call {
        self.rpc = rpc;
        if self.client_command_id.is_some() {
            let mut hasher = Sha256::new();
            hasher.update(self.actor.to_string().as_bytes());
            hasher.update([0]);
            hasher.update(rpc.as_bytes());
            hasher.update([0]);
            hasher.update(request);
            self.ids.fingerprint = Some(hasher.finalize().into());
        }
        self
    }
}

/// Runs a decision on a task of its own and waits for its answer. tonic drops a handler's
/// future when the client hangs up or its deadline passes; dropped between an append and its
/// application in memory, or between the appends of a large import, a decision would be left
/// half done. On its own task it always runs to its end: a client that left does not hear
/// the answer, and its retry with the same x-command-id appends nothing twice (AUD-4).
async fn to_completion<T, F>(work: F) -> Result<T, Status>
where
    F: std::future::Future<Output = Result<T, Status>> + Send + 'static,
    T: Send + 'static,
{
    match tokio::spawn(work).await {
        Ok(answer) => answer,
        Err(failure) if failure.is_panic() => std::panic::resume_unwind(failure.into_panic()),
        Err(_) => Err(Status::unavailable(
            "the server is shutting down; retry the command with the same x-command-id",
        )),
    }
}

fn header<'a>(metadata: &'a tonic::metadata::MetadataMap, name: &str) -> Option<&'a str> {
    metadata.get(name).and_then(|value| value.to_str().ok())
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
            rpc: "unnamed",
            ids: CommandIds {
                command_id,
                correlation_id,
                fingerprint: None,
                reused: false,
            },
            reused: AtomicBool::new(false),
        })
    }

    /// Keeps a command's reply in the answers cache under its id. The command is done and
    /// its answer is in the log with its events; a cache that cannot take it must not turn
    /// that success into an error.
    fn keep_reply<R: Message>(&self, id: &str, fingerprint: [u8; 32], reply: &R) {
        if let Err(error) = self.outcomes.put(id, fingerprint, &reply.encode_to_vec()) {
            tracing::warn!(%error, command_id = %id, "the answers cache did not take an answer");
        }
    }

    /// AUD-4: a command retried with the same id gets its first answer back and appends
    /// nothing; the same id for a different command is FAILED_PRECONDITION.
    async fn once<R, F>(&self, call: &Call, run: F) -> Result<Response<R>, Status>
    where
        R: Message + Default,
        F: std::future::Future<Output = Result<R, Status>>,
    {
        let started = std::time::Instant::now();
        let rpc = call.rpc;
        let answer = self.once_inner(call, run).await;
        let outcome = match &answer {
            Ok(_) => "ok".to_owned(),
            Err(status) => format!("{:?}", status.code()),
        };
        self.metrics
            .record_command(rpc, &outcome, started.elapsed());
        answer
    }

    /// The answers cache is the fast path; what makes AUD-4 hold across a crash is the
    /// answer the core keeps with the command's append in the log (`CommandIds`), which
    /// this cache may not have synced. A command decided against (a refusal of ERR-1) appends
    /// nothing, so its refusal is kept in the cache alone: a retry gets it back, even after
    /// the situation changed (seats were bought meanwhile), because AUD-4 promises the first
    /// outcome. A retry after a crash that lost the cache is decided again, and still appends
    /// at most once. A failure to decide (unavailable, deadline) is not an outcome and is
    /// never kept.
    async fn once_inner<R, F>(&self, call: &Call, run: F) -> Result<Response<R>, Status>
    where
        R: Message + Default,
        F: std::future::Future<Output = Result<R, Status>>,
    {
        let (Some(id), Some(fingerprint)) = (&call.client_command_id, call.ids.fingerprint) else {
            return run.await.map(Response::new).map_err(|mut status| {
                crate::status::take_not_kept(&mut status);
                status
            });
        };
        if let Some(stored) = self
            .outcomes
            .get(id)
            .map_err(|e| Status::unavailable(e.to_string()))?
        {
            if stored.fingerprint != fingerprint {
                // ERR-1: decided for a refusal that comes before the reuse's; the core
                // never appends a reused command, and a call that finds nothing to decide
                // answers the reuse (`Call::nothing_to_decide`). Nothing is kept: the id's
                // first outcome is the other request's.
                call.reused.store(true, Ordering::Relaxed);
                return match run.await {
                    // The ledger holds this very request's answer under the id, and the
                    // cache another request's outcome: a decision that appended nothing on
                    // another stream after the cache lost this one (the ledger keeps ids per
                    // append), or a refusal a build before the `not kept` mark kept. The
                    // ledger's answer is the first outcome, and the cache takes it back.
                    Ok(reply) => {
                        self.keep_reply(id, fingerprint, &reply);
                        Ok(Response::new(reply))
                    }
                    Err(mut status) => {
                        crate::status::take_not_kept(&mut status);
                        Err(ranked_before_reuse(status))
                    }
                };
            }
            return match stored.outcome {
                FirstOutcome::Reply(bytes) => R::decode(bytes.as_slice())
                    .map(Response::new)
                    .map_err(|_| Status::internal("a stored answer cannot be read")),
                FirstOutcome::Refused { code, message } => Err(Status::new(code, message)),
            };
        }
        match run.await {
            Ok(reply) => {
                self.keep_reply(id, fingerprint, &reply);
                Ok(Response::new(reply))
            }
            Err(mut status) => {
                let not_kept = crate::status::take_not_kept(&mut status);
                if is_decided_refusal(status.code())
                    && !not_kept
                    && let Err(error) =
                        self.outcomes
                            .put_refusal(id, fingerprint, status.code(), status.message())
                {
                    tracing::warn!(%error, command_id = %id, "the answers cache did not take a refusal");
                }
                Err(status)
            }
        }
    }

    /// ERR-1 ranks RESOURCE_EXHAUSTED last, so an import over a size limit to a license that
    /// does not exist, that the caller may not change or that has expired gets that refusal
    /// instead: an empty batch of the same kind is decided (it appends nothing) to find it.
    async fn ranked_before_limit(
        &self,
        call: &Call,
        license: &LicenseId,
        remove: bool,
        limit: Status,
    ) -> Status {
        let command = if remove {
            LicenseCommand::RemoveUsers { emails: Vec::new() }
        } else {
            LicenseCommand::AddUsers {
                emails: Vec::new(),
                channel: AdminChannel::Csv,
            }
        };
        match self
            .core
            .refusal_of(license.as_str(), &call.actor, &command)
            .await
        {
            Err(refusal) => from_core(refusal),
            Ok(()) => limit,
        }
    }

    async fn license(
        &self,
        call: &Call,
        id: &str,
        command: LicenseCommand,
    ) -> Result<(Outcome, u64), Status> {
        let core = Arc::clone(&self.core);
        let (id, actor) = (id.to_owned(), call.actor.clone());
        let ids = call.ids();
        to_completion(async move {
            core.execute_license(&id, &actor, &command, ids)
                .await
                .map_err(from_core)
        })
        .await
    }

    /// ClaimDomain (`Some(dedicated)`) and ReleaseDomain (`None`), run to completion.
    async fn claim(
        &self,
        call: &Call,
        license: LicenseId,
        domain: DomainName,
        claim: Option<bool>,
    ) -> Result<CommandReply, Status> {
        let core = Arc::clone(&self.core);
        let (actor, ids) = (call.actor.clone(), call.ids());
        to_completion(async move {
            let position = core
                .execute_claim(&license, &domain, claim, &actor, ids)
                .await
                .map_err(from_core)?;
            Ok(CommandReply { position })
        })
        .await
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
            requests::issue_license(r, fresh_secret(), fresh_secret())
        })
        .await
    }

    async fn renew_license(
        &self,
        request: Request<RenewLicenseRequest>,
    ) -> Result<Response<CommandReply>, Status> {
        self.on_license(request, "RenewLicense", requests::renew_license)
            .await
    }

    async fn change_seats(
        &self,
        request: Request<ChangeSeatsRequest>,
    ) -> Result<Response<CommandReply>, Status> {
        self.on_license(request, "ChangeSeats", requests::change_seats)
            .await
    }

    async fn grant_license_admin(
        &self,
        request: Request<LicenseAdminRequest>,
    ) -> Result<Response<CommandReply>, Status> {
        self.on_license(request, "GrantLicenseAdmin", requests::grant_license_admin)
            .await
    }

    async fn revoke_license_admin(
        &self,
        request: Request<LicenseAdminRequest>,
    ) -> Result<Response<CommandReply>, Status> {
        self.on_license(
            request,
            "RevokeLicenseAdmin",
            requests::revoke_license_admin,
        )
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
        let call = call.fingerprinted("AddUsersByEmail", &bytes);
        let (license, emails, invalid_entries) = requests::add_users_by_email(request.get_ref())?;
        let run = async {
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
        self.once(&call, run).await
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
        let remove = requests::import_csv_removes(&start)?;
        // Parsed before the file, so that an invalid license id is INVALID_ARGUMENT even for a
        // file over a limit (ERR-1 ranks INVALID_ARGUMENT first).
        let license = parse_license(&start.license)?;
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
                let limit = Status::resource_exhausted(format!(
                    "the CSV file is larger than {} bytes; split it into several imports",
                    self.csv_import_bytes_max
                ));
                return Err(self
                    .ranked_before_limit(&call, &license, remove, limit)
                    .await);
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
                let limit = Status::resource_exhausted(format!(
                    "the CSV file has more than {} rows; split it into several imports",
                    domain::license::ADMIN_BATCH_ENTRIES_MAX
                ));
                return Err(self
                    .ranked_before_limit(&call, &license, remove, limit)
                    .await);
            }
        }
        parser
            .finish(&mut rows)
            .map_err(|e| from_domain(&e.into()))?;
        drain(&mut rows, &mut emails, &mut errors);
        let fingerprint_input: [u8; 32] = hasher.finalize().into();
        let call = call.fingerprinted("ImportCsv", &fingerprint_input);
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
        self.once(&call, run).await
    }

    async fn remove_users(
        &self,
        request: Request<RemoveUsersRequest>,
    ) -> Result<Response<RemoveUsersReply>, Status> {
        let call = self.call(&request)?;
        let bytes = request.get_ref().encode_to_vec();
        let call = call.fingerprinted("RemoveUsers", &bytes);
        // An entry that is not an email cannot be a member: it is not found.
        let (license, emails, not_emails) = requests::remove_users(request.get_ref())?;
        let run = async {
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
        self.once(&call, run).await
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
        self.on_license(
            request,
            "SetFeaturePermission",
            requests::set_feature_permission,
        )
        .await
    }

    async fn set_auto_enrollment(
        &self,
        request: Request<SetAutoEnrollmentRequest>,
    ) -> Result<Response<CommandReply>, Status> {
        self.on_license(request, "SetAutoEnrollment", requests::set_auto_enrollment)
            .await
    }

    async fn link_ou(
        &self,
        request: Request<LinkOuRequest>,
    ) -> Result<Response<CommandReply>, Status> {
        self.on_license(request, "LinkOu", requests::link_ou).await
    }

    async fn unlink_ou(
        &self,
        request: Request<LicenseRef>,
    ) -> Result<Response<UnlinkOuReply>, Status> {
        let call = self.call(&request)?;
        let bytes = request.get_ref().encode_to_vec();
        let call = call.fingerprinted("UnlinkOu", &bytes);
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
        self.once(&call, run).await
    }

    async fn sync_ou(
        &self,
        request: Request<SyncOuRequest>,
    ) -> Result<Response<OuSyncReply>, Status> {
        let call = self.call(&request)?;
        let bytes = request.get_ref().encode_to_vec();
        let call = call.fingerprinted("SyncOu", &bytes);
        let (license, entries) = requests::sync_ou(request.get_ref())?;
        let run = async {
            let (outcome, position) = self
                .license(&call, license.as_str(), LicenseCommand::SyncOu { entries })
                .await?;
            Ok(ou_sync_reply(outcome, position))
        };
        self.once(&call, run).await
    }

    async fn confirm_ou_sync(
        &self,
        request: Request<LicenseRef>,
    ) -> Result<Response<OuSyncReply>, Status> {
        let call = self.call(&request)?;
        let bytes = request.get_ref().encode_to_vec();
        let call = call.fingerprinted("ConfirmOuSync", &bytes);
        let license = parse_license(&request.into_inner().license)?;
        let run = async {
            let (outcome, position) = self
                .license(&call, license.as_str(), LicenseCommand::ConfirmOuSync)
                .await?;
            Ok(ou_sync_reply(outcome, position))
        };
        self.once(&call, run).await
    }

    async fn claim_domain(
        &self,
        request: Request<ClaimDomainRequest>,
    ) -> Result<Response<CommandReply>, Status> {
        let call = self.call(&request)?;
        let bytes = request.get_ref().encode_to_vec();
        let call = call.fingerprinted("ClaimDomain", &bytes);
        let r = request.into_inner();
        let (domain, license) = requests::domain_claim(&r.domain, &r.license)?;
        let run = self.claim(&call, license, domain, Some(r.dedicated));
        self.once(&call, run).await
    }

    async fn release_domain(
        &self,
        request: Request<ReleaseDomainRequest>,
    ) -> Result<Response<CommandReply>, Status> {
        let call = self.call(&request)?;
        let bytes = request.get_ref().encode_to_vec();
        let call = call.fingerprinted("ReleaseDomain", &bytes);
        let r = request.into_inner();
        let (domain, license) = requests::domain_claim(&r.domain, &r.license)?;
        let run = self.claim(&call, license, domain, None);
        self.once(&call, run).await
    }

    async fn user_signed_up(
        &self,
        request: Request<UserSignedUpRequest>,
    ) -> Result<Response<LicenseNameReply>, Status> {
        let call = self.call(&request)?;
        let bytes = request.get_ref().encode_to_vec();
        let call = call.fingerprinted("UserSignedUp", &bytes);
        let (email, role) = requests::user_signed_up(request.get_ref())?;
        require_integration(&call.actor)?;
        let run = async {
            let Some(license) = self.core.claim_of(&DomainName::of(&email)) else {
                return call.nothing_to_decide();
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
        self.once(&call, run).await
    }

    async fn scan_domain(
        &self,
        request: Request<ScanDomainRequest>,
    ) -> Result<Response<AutomaticReply>, Status> {
        let call = self.call(&request)?;
        let bytes = request.get_ref().encode_to_vec();
        let call = call.fingerprinted("ScanDomain", &bytes);
        let (domain, accounts) = requests::scan_domain(request.get_ref())?;
        require_integration(&call.actor)?;
        let run = async {
            let Some(license) = self.core.claim_of(&domain) else {
                return call.nothing_to_decide();
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
        self.once(&call, run).await
    }

    async fn assignment_opened(
        &self,
        request: Request<AssignmentOpenedRequest>,
    ) -> Result<Response<LicenseNameReply>, Status> {
        let call = self.call(&request)?;
        let bytes = request.get_ref().encode_to_vec();
        let call = call.fingerprinted("AssignmentOpened", &bytes);
        let r = request.into_inner();
        let (teacher, student, lms) = requests::assignment_opened(&r)?;
        require_integration(&call.actor)?;
        let run = async {
            if !r.kami_assignment {
                return call.nothing_to_decide();
            }
            let Some(license) = self.core.auto_enrollment_license(&teacher).await else {
                return call.nothing_to_decide();
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
        self.once(&call, run).await
    }

    async fn sync_classroom_roster(
        &self,
        request: Request<SyncClassroomRosterRequest>,
    ) -> Result<Response<AutomaticReply>, Status> {
        let call = self.call(&request)?;
        let bytes = request.get_ref().encode_to_vec();
        let call = call.fingerprinted("SyncClassroomRoster", &bytes);
        let r = request.into_inner();
        let (license, students) = requests::sync_classroom_roster(&r)?;
        let run = async {
            let command = LicenseCommand::SyncRoster {
                course: r.course.clone(),
                students,
            };
            let (outcome, position) = self.license(&call, license.as_str(), command).await?;
            Ok(automatic_reply(outcome, position))
        };
        self.once(&call, run).await
    }
}

impl CommandService {
    async fn simple(
        &self,
        request: Request<LicenseRef>,
        rpc: &'static str,
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
        rpc: &'static str,
        parse: impl FnOnce(M) -> Result<(LicenseId, LicenseCommand), Status>,
    ) -> Result<Response<CommandReply>, Status> {
        let call = self.call(&request)?;
        let bytes = request.get_ref().encode_to_vec();
        let call = call.fingerprinted(rpc, &bytes);
        let (license, command) = parse(request.into_inner())?;
        self.once(&call, self.plain(&call, license.as_str(), command))
            .await
    }

    async fn domain_admin(
        &self,
        request: Request<DomainAdminRequest>,
        grant: bool,
    ) -> Result<Response<CommandReply>, Status> {
        let call = self.call(&request)?;
        let bytes = request.get_ref().encode_to_vec();
        let rpc = if grant {
            "GrantDomainAdmin"
        } else {
            "RevokeDomainAdmin"
        };
        let call = call.fingerprinted(rpc, &bytes);
        let (domain, command) = requests::domain_admin(request.get_ref(), grant)?;
        let core = Arc::clone(&self.core);
        // The ids are read when `once` runs this, after it looked the id up.
        let run = async {
            let (actor, ids) = (call.actor.clone(), call.ids());
            to_completion(async move {
                let position = core
                    .execute_domain(&domain, &actor, &command, ids)
                    .await
                    .map_err(from_core)?;
                Ok(CommandReply { position })
            })
            .await
        };
        self.once(&call, run).await
    }

    /// KEY-1, LINK-1: the two ways in by a secret differ only in the request's field.
    async fn redeem<M: Message>(
        &self,
        request: Request<M>,
        rpc: &'static str,
        kind: SecretKind,
        secret_of: impl FnOnce(M) -> String,
    ) -> Result<Response<JoinReply>, Status> {
        let call = self.call(&request)?;
        let bytes = request.get_ref().encode_to_vec();
        let call = call.fingerprinted(rpc, &bytes);
        let secret = secret_of(request.into_inner());
        self.once(&call, self.join(&call, &secret, kind)).await
    }

    async fn join(&self, call: &Call, secret: &str, kind: SecretKind) -> Result<JoinReply, Status> {
        let core = Arc::clone(&self.core);
        let secret = secret.to_owned();
        let (actor, ids) = (call.actor.clone(), call.ids());
        let (license, outcome, position) = to_completion(async move {
            core.redeem(&secret, kind, &actor, ids)
                .await
                .map_err(|error| match error {
                    CoreError::Domain(error) => from_domain(&error),
                    other => from_core(other),
                })
        })
        .await?;
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

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};

    use super::*;

    /// A handler dropped while its decision runs (the client hung up, the deadline passed)
    /// must not stop the decision half way: `to_completion` finishes the work anyway.
    #[tokio::test]
    async fn a_dropped_handler_does_not_stop_its_decision_half_way() {
        let finished = Arc::new(AtomicBool::new(false));
        let (started_sender, started) = tokio::sync::oneshot::channel::<()>();
        let (release, released) = tokio::sync::oneshot::channel::<()>();
        let (done_sender, done) = tokio::sync::oneshot::channel::<()>();
        let work_finished = Arc::clone(&finished);
        let handler = tokio::spawn(to_completion(async move {
            started_sender
                .send(())
                .expect("the test waits for the start");
            // The first half of the work is done; the second waits for the test.
            released.await.expect("the test releases the work");
            work_finished.store(true, Ordering::SeqCst);
            done_sender.send(()).expect("the test waits for the end");
            Ok::<(), Status>(())
        }));
        started.await.expect("the work starts");
        handler.abort();
        assert!(
            handler
                .await
                .expect_err("the handler was aborted")
                .is_cancelled(),
            "the handler's future is gone, as tonic drops it"
        );
        release
            .send(())
            .expect("the work still waits to be released");
        done.await
            .expect("the work runs to its end without its handler");
        assert!(finished.load(Ordering::SeqCst));
    }
}
