//! Crash under load (issue 8, AUD-4, AUD-5, AUD-6, ERR-1): the real server binary serves
//! several concurrent clients that add users by email and CSV, accept invites and remove
//! users on a few licenses, each command with its own `x-command-id`. The harness records
//! every answer, kills the server with SIGKILL after a seeded number of acknowledgements,
//! restarts it on the same data directory, retries every command whose answer never came
//! (and a few acknowledged ones) with the same command id, and then checks on the stopped
//! server's data:
//!
//! - every acknowledged command's events are in the log exactly once, ending at the
//!   position its answer named (none at all when it answered position 0);
//! - a refused command appended nothing;
//! - a command retried after the restart was applied at most once;
//! - a retried acknowledged command appended nothing more (its events are still one
//!   append) and got its first answer back (AUD-4: the answer is kept in the log with the
//!   command's last append, under the same fdatasync);
//! - `replay-tool verify` finds every hash chain intact;
//! - the live projections, caught up with the log, have the digests of a rebuild from it.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use ledger::{EmbeddedLog, EmbeddedOptions, EventLog, RecordedEvent};
use prost::Message;
use proto::license_commands_client::LicenseCommandsClient;
use proto::license_queries_client::LicenseQueriesClient;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tonic::transport::Channel;
use tonic::{Code, Request};
use uuid::Uuid;

use super::HarnessError;
use super::process::{STAFF_TOKEN, ServerProcess, USER_TOKEN, write_tokens_file};

/// The license admin of every license of a run; a domain admin of `north.edu`, so the users
/// of that domain they add are accepted and everyone else is invited (INV-1).
const ADMIN: &str = "admin@north.edu";
/// The longest one call of the harness may take.
const CALL_TIMEOUT_SECONDS: u64 = 30;
/// Events read from the log per page.
const READ_PAGE_EVENTS: usize = 10_000;

/// How one crash run is shaped. Everything random follows `seed`.
#[derive(Clone, Debug)]
pub struct CrashOptions {
    pub seed: u64,
    /// Concurrent clients, each on its own connection.
    pub clients: usize,
    /// Licenses the clients share.
    pub licenses: usize,
    /// The kill comes after this many acknowledgements (drawn from the range)...
    pub kill_after_acknowledgements: std::ops::RangeInclusive<usize>,
    /// ...plus this many microseconds (drawn), so it lands anywhere inside a call.
    pub kill_jitter_microseconds_max: u64,
    /// Acknowledged commands retried after the restart (AUD-4).
    pub acknowledged_retries_max: usize,
}

impl Default for CrashOptions {
    fn default() -> Self {
        Self {
            seed: 0,
            clients: 4,
            licenses: 3,
            kill_after_acknowledgements: 10..=120,
            kill_jitter_microseconds_max: 20_000,
            acknowledged_retries_max: 8,
        }
    }
}

/// What one run saw and found. `lost` and `problems` are empty on a good server.
#[derive(Debug, Default)]
pub struct CrashReport {
    pub seed: u64,
    pub kill_after_acknowledgements: usize,
    pub sent: usize,
    pub acknowledged: usize,
    pub refused: usize,
    /// Commands whose answer never came (in flight at the kill, or sent to a dead server).
    pub unanswered: usize,
    pub events: u64,
    /// Acknowledged commands whose events are not in the log exactly once.
    pub lost: Vec<String>,
    /// Every other broken promise: refused commands that appended, retries applied twice,
    /// acknowledged commands that got another answer when retried after the restart,
    /// broken chains, digests that differ.
    pub problems: Vec<String>,
}

impl CrashReport {
    pub fn is_clean(&self) -> bool {
        self.lost.is_empty() && self.problems.is_empty()
    }
}

impl fmt::Display for CrashReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "seed {}: killed after {} acknowledgements; {} sent, {} acknowledged, {} refused, {} unanswered; {} events; {} lost, {} other problems",
            self.seed,
            self.kill_after_acknowledgements,
            self.sent,
            self.acknowledged,
            self.refused,
            self.unanswered,
            self.events,
            self.lost.len(),
            self.problems.len()
        )?;
        for lost in &self.lost {
            write!(f, "\n  LOST: {lost}")?;
        }
        for problem in &self.problems {
            write!(f, "\n  PROBLEM: {problem}")?;
        }
        Ok(())
    }
}

/// One command a client sends.
#[derive(Clone, Debug)]
enum Work {
    Add {
        license: String,
        emails: Vec<String>,
    },
    Csv {
        license: String,
        emails: Vec<String>,
    },
    Accept {
        license: String,
        email: String,
    },
    Remove {
        license: String,
        emails: Vec<String>,
    },
}

impl Work {
    /// Who sends it: the license admin, or for an invite the invitee themself (INV-2).
    fn actor(&self) -> &str {
        match self {
            Work::Accept { email, .. } => email,
            _ => ADMIN,
        }
    }

    /// The most events it can append: one per distinct user it names.
    fn events_max(&self) -> u64 {
        match self {
            Work::Add { emails, .. } | Work::Csv { emails, .. } | Work::Remove { emails, .. } => {
                emails.iter().collect::<HashSet<_>>().len() as u64
            }
            Work::Accept { .. } => 1,
        }
    }
}

/// How a call ended.
#[derive(Clone, Debug, PartialEq)]
enum Answer {
    /// OK: the position it reached, the events it says it appended, and the encoded reply.
    Acknowledged {
        position: u64,
        events: u64,
        reply: Vec<u8>,
    },
    /// A refusal by the server (a status it chose).
    Refused { code: Code, message: String },
    /// No answer: the connection broke or the server was gone.
    Unanswered { message: String },
}

#[derive(Clone, Debug)]
struct Sent {
    command_id: String,
    work: Work,
    answer: Answer,
}

fn with_metadata<T>(message: T, actor: &str, command_id: Option<&str>) -> Request<T> {
    let mut request = Request::new(message);
    let metadata = request.metadata_mut();
    metadata.insert(
        "authorization",
        format!("Bearer {USER_TOKEN}").parse().expect("ascii"),
    );
    metadata.insert("x-actor", actor.parse().expect("an email is ascii"));
    if let Some(id) = command_id {
        metadata.insert("x-command-id", id.parse().expect("ids are ascii"));
    }
    request
}

fn staff<T>(message: T) -> Request<T> {
    let mut request = Request::new(message);
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {STAFF_TOKEN}").parse().expect("ascii"),
    );
    request
}

/// Sorts a failed call: a status the server chose is a refusal; a broken connection, a
/// server that is gone or a cancelled call leaves the outcome unknown.
fn failed(status: tonic::Status) -> Answer {
    match status.code() {
        Code::Unavailable | Code::Unknown | Code::Cancelled | Code::DeadlineExceeded => {
            Answer::Unanswered {
                message: format!("{:?}: {}", status.code(), status.message()),
            }
        }
        code => Answer::Refused {
            code,
            message: status.message().to_owned(),
        },
    }
}

fn csv_text(emails: &[String]) -> String {
    let mut text = String::from("Email,Name\r\n");
    for (index, email) in emails.iter().enumerate() {
        text.push_str(&format!("{email},\"Person, number {index}\"\r\n"));
    }
    text
}

async fn send(
    commands: &mut LicenseCommandsClient<Channel>,
    command_id: &str,
    work: &Work,
) -> Answer {
    let actor = work.actor();
    let id = Some(command_id);
    let result = match work {
        Work::Add { license, emails } => commands
            .add_users_by_email(with_metadata(
                proto::AddUsersByEmailRequest {
                    license: license.clone(),
                    emails: emails.join(", "),
                },
                actor,
                id,
            ))
            .await
            .map(|reply| {
                let reply = reply.into_inner();
                (
                    reply.position,
                    reply.added + reply.invited,
                    reply.encode_to_vec(),
                )
            }),
        Work::Csv { license, emails } => {
            let chunks = vec![
                proto::ImportCsvChunk {
                    part: Some(proto::import_csv_chunk::Part::Start(
                        proto::ImportCsvStart {
                            license: license.clone(),
                            mode: "add".into(),
                        },
                    )),
                },
                proto::ImportCsvChunk {
                    part: Some(proto::import_csv_chunk::Part::Data(
                        csv_text(emails).into_bytes(),
                    )),
                },
            ];
            commands
                .import_csv(with_metadata(tokio_stream::iter(chunks), actor, id))
                .await
                .map(|reply| {
                    let reply = reply.into_inner();
                    (
                        reply.position,
                        reply.added + reply.invited,
                        reply.encode_to_vec(),
                    )
                })
        }
        Work::Accept { license, .. } => commands
            .accept_invite(with_metadata(
                proto::LicenseRef {
                    license: license.clone(),
                },
                actor,
                id,
            ))
            .await
            .map(|reply| {
                let reply = reply.into_inner();
                (
                    reply.position,
                    u64::from(reply.position > 0),
                    reply.encode_to_vec(),
                )
            }),
        Work::Remove { license, emails } => commands
            .remove_users(with_metadata(
                proto::RemoveUsersRequest {
                    license: license.clone(),
                    emails: emails.clone(),
                },
                actor,
                id,
            ))
            .await
            .map(|reply| {
                let reply = reply.into_inner();
                (reply.position, reply.removed, reply.encode_to_vec())
            }),
    };
    match result {
        Ok((position, events, reply)) => Answer::Acknowledged {
            position,
            events,
            reply,
        },
        Err(status) => failed(status),
    }
}

async fn connect(address: &str) -> Result<Channel, HarnessError> {
    Ok(Channel::from_shared(address.to_owned())
        .map_err(|e| HarnessError::Server(e.to_string()))?
        .timeout(Duration::from_secs(CALL_TIMEOUT_SECONDS))
        .connect()
        .await?)
}

/// One client: draws commands until a call goes unanswered (the server was killed).
/// Users are the client's own (`c<client>-<n>@...`), so invites and removals it sends
/// concern users it added itself, on licenses every client shares.
async fn client(
    index: usize,
    seed: u64,
    channel: Channel,
    licenses: Vec<String>,
    acknowledged: Arc<AtomicUsize>,
    acknowledgement: Arc<tokio::sync::Notify>,
) -> Vec<Sent> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut commands =
        LicenseCommandsClient::new(channel).max_decoding_message_size(64 * 1024 * 1024);
    let mut sent = Vec::new();
    let mut next_user = 0usize;
    let mut invited: Vec<(String, String)> = Vec::new();
    let mut members: Vec<(String, String)> = Vec::new();
    loop {
        let license = licenses[rng.random_range(0..licenses.len())].clone();
        let mut fresh = |count: usize, rng: &mut StdRng| -> Vec<String> {
            (0..count)
                .map(|_| {
                    next_user += 1;
                    // north.edu users are accepted at once, the others invited (INV-1).
                    let domain = if rng.random_bool(0.5) {
                        "north.edu"
                    } else {
                        "other.org"
                    };
                    format!("c{index}-u{next_user}@{domain}")
                })
                .collect()
        };
        let draw = rng.random_range(0..100);
        let work = if draw < 15 && !invited.is_empty() {
            let (license, email) = invited.swap_remove(rng.random_range(0..invited.len()));
            Work::Accept { license, email }
        } else if draw < 30 && !members.is_empty() {
            let (license, email) = members.swap_remove(rng.random_range(0..members.len()));
            Work::Remove {
                license,
                emails: vec![email],
            }
        } else if draw < 60 {
            let count = rng.random_range(2..=8);
            Work::Csv {
                license,
                emails: fresh(count, &mut rng),
            }
        } else {
            let count = rng.random_range(1..=5);
            Work::Add {
                license,
                emails: fresh(count, &mut rng),
            }
        };
        let command_id = format!("crash-c{index}-{}", sent.len());
        let answer = send(&mut commands, &command_id, &work).await;
        if let Answer::Acknowledged { .. } = answer {
            match &work {
                Work::Add { license, emails } | Work::Csv { license, emails } => {
                    for email in emails {
                        if email.ends_with("@other.org") {
                            invited.push((license.clone(), email.clone()));
                        }
                        members.push((license.clone(), email.clone()));
                    }
                }
                Work::Accept { .. } | Work::Remove { .. } => {}
            }
            acknowledged.fetch_add(1, Ordering::SeqCst);
            acknowledgement.notify_waiters();
        }
        let unanswered = matches!(answer, Answer::Unanswered { .. });
        sent.push(Sent {
            command_id,
            work,
            answer,
        });
        if unanswered {
            return sent;
        }
    }
}

/// The command id the server gives the ledger for a client's `x-command-id`.
fn ledger_command_id(client_command_id: &str) -> Uuid {
    Uuid::new_v5(&Uuid::NAMESPACE_OID, client_command_id.as_bytes())
}

/// The events of one command id, in log order.
type EventsByCommand = HashMap<Uuid, Vec<RecordedEvent>>;

/// Names a problem with how a command's events lie in the log, if there is one: they must
/// be one append (consecutive positions), name no user twice for the same event type, and
/// number at most `events_max`.
fn one_append(events: &[RecordedEvent], events_max: u64) -> Option<String> {
    if events
        .windows(2)
        .any(|w| w[1].position != w[0].position + 1)
    {
        let positions: Vec<u64> = events
            .iter()
            .map(|e| server::projector::api_position(e.position))
            .collect();
        return Some(format!(
            "its events are not one append: positions {positions:?}"
        ));
    }
    if events.len() as u64 > events_max {
        return Some(format!(
            "{} events, more than the {events_max} it can cause",
            events.len()
        ));
    }
    let mut seen = HashSet::new();
    for recorded in events {
        let decoded = match server::core::decode(recorded) {
            Ok(decoded) => decoded,
            Err(error) => return Some(format!("an event cannot be decoded: {error}")),
        };
        let key = (
            decoded.event.type_name(),
            decoded.event.member_email().map(|e| e.as_str().to_owned()),
        );
        if !seen.insert(key.clone()) {
            return Some(format!("{} for {:?} twice", key.0, key.1));
        }
    }
    None
}

/// Judges the log against what the clients heard.
fn judge(
    sent: &[Sent],
    retries: &BTreeMap<String, Answer>,
    by_command: &EventsByCommand,
    report: &mut CrashReport,
) {
    static NONE: Vec<RecordedEvent> = Vec::new();
    for command in sent {
        let events = by_command
            .get(&ledger_command_id(&command.command_id))
            .unwrap_or(&NONE);
        let what = format!("{} ({:?})", command.command_id, command.work);
        match &command.answer {
            Answer::Acknowledged {
                position,
                events: count,
                ..
            } => {
                let last = events
                    .last()
                    .map(|e| server::projector::api_position(e.position));
                let exact = events.len() as u64 == *count
                    && if *position == 0 {
                        events.is_empty()
                    } else {
                        last == Some(*position)
                    };
                if !exact {
                    report.lost.push(format!(
                        "{what} was acknowledged at position {position} with {count} events; the log holds {} events of it ending at {last:?}",
                        events.len()
                    ));
                } else if let Some(problem) = one_append(events, command.work.events_max()) {
                    report.lost.push(format!("{what}: {problem}"));
                }
                if let Some(retry) = retries.get(&command.command_id)
                    && retry != &command.answer
                {
                    report.problems.push(format!(
                        "AUD-4: {what} retried after the restart got {retry:?}, not its first answer {:?}",
                        command.answer
                    ));
                }
            }
            Answer::Refused { code, message } => {
                if !events.is_empty() {
                    report.problems.push(format!(
                        "ERR-1: {what} was refused ({code:?}: {message}) yet appended {} events",
                        events.len()
                    ));
                }
            }
            Answer::Unanswered { .. } => {
                if let Some(problem) = one_append(events, command.work.events_max()) {
                    report
                        .problems
                        .push(format!("{what} was applied more than once: {problem}"));
                }
                match retries.get(&command.command_id) {
                    Some(Answer::Acknowledged { position, .. }) if *position > 0 => {
                        let last = events
                            .last()
                            .map(|e| server::projector::api_position(e.position));
                        if last != Some(*position) {
                            report.problems.push(format!(
                                "{what} was retried and acknowledged at position {position}, but its events end at {last:?}"
                            ));
                        }
                    }
                    Some(Answer::Unanswered { message }) => report.problems.push(format!(
                        "{what} retried after the restart went unanswered again: {message}"
                    )),
                    _ => {}
                }
            }
        }
    }
}

/// Every event of the stopped server's log, grouped by command id; and their number.
async fn read_log(data: &Path) -> Result<(EventsByCommand, u64), HarnessError> {
    let log = EmbeddedLog::open(data.join("log"), EmbeddedOptions::default())?;
    let mut by_command: EventsByCommand = HashMap::new();
    let mut next = 0;
    loop {
        let page = log.read_all(next, READ_PAGE_EVENTS).await?;
        let Some(last) = page.last() else { break };
        next = last.position + 1;
        for event in page {
            by_command.entry(event.command_id).or_default().push(event);
        }
    }
    log.close().await?;
    Ok((by_command, next))
}

/// `replay-tool verify` and `replay-tool rebuild --compare-only` on the stopped server's
/// data directory, through the tool's library.
async fn verify_and_compare(
    data: &Path,
    events: u64,
    report: &mut CrashReport,
) -> Result<(), HarnessError> {
    let verified = replay_tool::verify::verify_data_dir(data)?;
    if !verified.is_intact() {
        report.problems.push(format!(
            "AUD-3: verify found a broken chain: {:?}",
            verified.first_break
        ));
    }
    let source =
        replay_tool::source::Source::open(&replay_tool::source::Origin::Data(data.to_owned()))
            .await?;
    let live = replay_tool::rebuild::open_live(data)?
        .ok_or_else(|| HarnessError::Replay("the data directory has no projections".into()))?;
    let outcome = replay_tool::rebuild::rebuild(
        &source,
        Some(&live),
        &replay_tool::rebuild::RebuildOptions {
            compare_only: true,
            progress: false,
        },
    )
    .await;
    source.close().await?;
    drop(live);
    let outcome = outcome?;
    if outcome.live_checkpoint != Some(events) {
        report.problems.push(format!(
            "AUD-6: the live projections stopped at {:?}, the log has {events} events",
            outcome.live_checkpoint
        ));
    }
    if !outcome.differing.is_empty() {
        report.problems.push(format!(
            "AUD-5: live projections differ from a rebuild in {:?}",
            outcome.differing
        ));
    }
    Ok(())
}

/// The data directory, the tokens file and the binary of a run.
struct Setting {
    binary: PathBuf,
    data: PathBuf,
    tokens: PathBuf,
}

impl Setting {
    async fn start(&self) -> Result<ServerProcess, HarnessError> {
        ServerProcess::start(&self.binary, &self.data, &self.tokens, &[]).await
    }
}

/// One crash run: load, SIGKILL, restart, retries, checks. `Err` means the harness could
/// not judge (the server would not start, say); findings are in the report.
pub async fn crash_run(binary: &Path, options: &CrashOptions) -> Result<CrashReport, HarnessError> {
    let folder = tempfile::tempdir()?;
    let setting = Setting {
        binary: binary.to_owned(),
        data: folder.path().join("data"),
        tokens: write_tokens_file(folder.path())?,
    };
    let mut rng = StdRng::seed_from_u64(options.seed);
    let mut report = CrashReport {
        seed: options.seed,
        kill_after_acknowledgements: rng.random_range(options.kill_after_acknowledgements.clone()),
        ..CrashReport::default()
    };

    let server = setting.start().await?;
    let licenses: Vec<String> = (0..options.licenses).map(|i| format!("R{i}")).collect();
    {
        let mut commands = LicenseCommandsClient::new(connect(&server.address).await?);
        for license in &licenses {
            commands
                .issue_license(staff(proto::IssueLicenseRequest {
                    license: license.clone(),
                    r#type: "district".into(),
                    seats: 1_000_000,
                    valid_from: "2020-01-01T00:00:00Z".into(),
                    valid_until: "2099-12-31T23:59:59Z".into(),
                    admins: vec![ADMIN.into()],
                }))
                .await?;
        }
        commands
            .grant_domain_admin(staff(proto::DomainAdminRequest {
                domain: "north.edu".into(),
                email: ADMIN.into(),
            }))
            .await?;
    }

    let acknowledged = Arc::new(AtomicUsize::new(0));
    let acknowledgement = Arc::new(tokio::sync::Notify::new());
    let mut clients = Vec::new();
    for index in 0..options.clients {
        clients.push(tokio::spawn(client(
            index,
            rng.random(),
            connect(&server.address).await?,
            licenses.clone(),
            acknowledged.clone(),
            acknowledgement.clone(),
        )));
    }
    // Wait for the drawn number of acknowledgements (the clients keep going meanwhile).
    let kill_after = report.kill_after_acknowledgements;
    let waiting_since = Instant::now();
    loop {
        let notified = acknowledgement.notified();
        if acknowledged.load(Ordering::SeqCst) >= kill_after {
            break;
        }
        if tokio::time::timeout(Duration::from_secs(CALL_TIMEOUT_SECONDS), notified)
            .await
            .is_err()
        {
            return Err(HarnessError::Server(format!(
                "no acknowledgement for {CALL_TIMEOUT_SECONDS} s ({} so far, after {:?}); the server's output:\n{}",
                acknowledged.load(Ordering::SeqCst),
                waiting_since.elapsed(),
                server.recent_output()
            )));
        }
    }
    let jitter = rng.random_range(0..=options.kill_jitter_microseconds_max);
    tokio::time::sleep(Duration::from_micros(jitter)).await;
    server.kill().await?;

    let mut sent = Vec::new();
    for handle in clients {
        let client_sent = tokio::time::timeout(Duration::from_secs(CALL_TIMEOUT_SECONDS), handle)
            .await
            .map_err(|_| HarnessError::Server("a client did not notice the kill".into()))?
            .map_err(|e| HarnessError::Server(format!("a client panicked: {e}")))?;
        sent.extend(client_sent);
    }
    for command in &sent {
        match command.answer {
            Answer::Acknowledged { .. } => report.acknowledged += 1,
            Answer::Refused { .. } => report.refused += 1,
            Answer::Unanswered { .. } => report.unanswered += 1,
        }
    }
    report.sent = sent.len();

    let server = setting.start().await?;
    let channel = connect(&server.address).await?;
    let mut commands =
        LicenseCommandsClient::new(channel.clone()).max_decoding_message_size(64 * 1024 * 1024);
    let mut retries = BTreeMap::new();
    let acknowledged_ones: Vec<&Sent> = sent
        .iter()
        .filter(|s| matches!(s.answer, Answer::Acknowledged { .. }))
        .collect();
    let mut to_retry: Vec<&Sent> = sent
        .iter()
        .filter(|s| matches!(s.answer, Answer::Unanswered { .. }))
        .collect();
    for _ in 0..options
        .acknowledged_retries_max
        .min(acknowledged_ones.len())
    {
        to_retry.push(acknowledged_ones[rng.random_range(0..acknowledged_ones.len())]);
    }
    for command in to_retry {
        let answer = send(&mut commands, &command.command_id, &command.work).await;
        retries.insert(command.command_id.clone(), answer);
    }
    // A last command gives the log's head; a query waiting for it proves the projector
    // caught up before the graceful stop.
    let head = commands
        .add_users_by_email(with_metadata(
            proto::AddUsersByEmailRequest {
                license: licenses[0].clone(),
                emails: "last-command@north.edu".into(),
            },
            ADMIN,
            Some("crash-last-command"),
        ))
        .await?
        .into_inner()
        .position;
    let mut caught_up = staff(proto::LicenseRef {
        license: licenses[0].clone(),
    });
    caught_up
        .metadata_mut()
        .insert("x-min-position", head.to_string().parse().expect("digits"));
    LicenseQueriesClient::new(channel)
        .get_license(caught_up)
        .await?;
    server.stop().await?;

    let (by_command, events) = read_log(&setting.data).await?;
    report.events = events;
    if events != head {
        report.problems.push(format!(
            "the last command answered position {head} but the log holds {events} events"
        ));
    }
    judge(&sent, &retries, &by_command, &mut report);
    verify_and_compare(&setting.data, events, &mut report).await?;
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn added(id: &str, position: u64, events: u64) -> Sent {
        Sent {
            command_id: id.into(),
            work: Work::Add {
                license: "R0".into(),
                emails: vec!["a@north.edu".into()],
            },
            answer: Answer::Acknowledged {
                position,
                events,
                reply: Vec::new(),
            },
        }
    }

    #[test]
    fn an_acknowledged_command_missing_from_the_log_is_lost() {
        let mut report = CrashReport::default();
        judge(
            &[added("gone", 7, 1), added("nothing-to-do", 0, 0)],
            &BTreeMap::new(),
            &HashMap::new(),
            &mut report,
        );
        assert_eq!(report.lost.len(), 1, "{report}");
        assert!(report.lost[0].starts_with("gone "), "{report}");
        assert!(report.problems.is_empty(), "{report}");
    }
}
