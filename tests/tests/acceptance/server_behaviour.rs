//! Server behaviour that the scenario format cannot express: restarts on the same data,
//! projections rebuilt from the log, the event feed, and the size limits of ERR-3.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use proto::event_feed_client::EventFeedClient;
use proto::license_commands_client::LicenseCommandsClient;
use proto::license_queries_client::LicenseQueriesClient;
use server::{Limits, ManualClock, Scope, ServerConfig, Tokens};
use tokio::sync::oneshot;
use tonic::transport::Channel;
use tonic::{Code, Request, Status};

const STAFF: &str = "staff-token-for-acceptance";
const SYSTEM: &str = "system-token-for-acceptance";
const USER: &str = "user-token-for-acceptance";
/// The longest any single call of these tests may take before the test fails.
const CALL_TIMEOUT_SECONDS: u64 = 30;

struct Server {
    address: String,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<Result<(), server::ServerError>>,
}

fn start_time() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2026-09-01T00:00:00Z")
        .unwrap()
        .with_timezone(&Utc)
}

impl Server {
    async fn start(dir: &Path, limits: Limits) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = format!("http://{}", listener.local_addr().unwrap());
        let mut tokens = Tokens::new();
        tokens.insert(STAFF, Scope::Staff);
        tokens.insert(SYSTEM, Scope::System);
        tokens.insert(USER, Scope::User);
        let mut config =
            ServerConfig::embedded(dir, tokens, Arc::new(ManualClock::new(start_time())));
        config.limits = limits;
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(server::run(listener, config, async {
            let _ = stopped.await;
        }));
        Self {
            address,
            stop: Some(stop),
            task,
        }
    }

    async fn channel(&self) -> Channel {
        Channel::from_shared(self.address.clone())
            .unwrap()
            .timeout(Duration::from_secs(CALL_TIMEOUT_SECONDS))
            .connect()
            .await
            .unwrap()
    }

    async fn commands(&self) -> LicenseCommandsClient<Channel> {
        LicenseCommandsClient::new(self.channel().await).max_decoding_message_size(usize::MAX)
    }

    async fn queries(&self) -> LicenseQueriesClient<Channel> {
        LicenseQueriesClient::new(self.channel().await)
    }

    async fn feed(&self) -> EventFeedClient<Channel> {
        EventFeedClient::new(self.channel().await)
    }

    /// Graceful shutdown; fails the test if the server did not stop cleanly.
    async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        tokio::time::timeout(Duration::from_secs(CALL_TIMEOUT_SECONDS), &mut self.task)
            .await
            .expect("the server stops within the timeout")
            .expect("the server task does not panic")
            .expect("the server stops without an error");
    }
}

/// A request with credentials: `actor` None is staff, Some(email) a user acting for them.
fn request<T>(message: T, actor: Option<&str>) -> Request<T> {
    let mut request = Request::new(message);
    let token = if actor.is_some() { USER } else { STAFF };
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    if let Some(email) = actor {
        request
            .metadata_mut()
            .insert("x-actor", email.parse().unwrap());
    }
    request
}

fn with_header<T>(mut request: Request<T>, name: &'static str, value: &str) -> Request<T> {
    request.metadata_mut().insert(name, value.parse().unwrap());
    request
}

fn issue(license: &str, license_type: &str, seats: i64) -> proto::IssueLicenseRequest {
    proto::IssueLicenseRequest {
        license: license.into(),
        r#type: license_type.into(),
        seats,
        valid_from: "2026-08-01T00:00:00Z".into(),
        valid_until: "2027-07-31T23:59:59Z".into(),
        admins: vec!["admin@north.edu".into()],
    }
}

fn add(license: &str, emails: &str) -> proto::AddUsersByEmailRequest {
    proto::AddUsersByEmailRequest {
        license: license.into(),
        emails: emails.into(),
    }
}

async fn users_count(server: &Server, license: &str, min_position: u64) -> u64 {
    let request = crate::at_least(
        request(
            proto::LicenseRef {
                license: license.into(),
            },
            None,
        ),
        min_position,
    );
    server
        .queries()
        .await
        .get_license(request)
        .await
        .unwrap()
        .into_inner()
        .users_count
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_commands_and_command_ids_survive_a_restart() {
    // AUD-4, AUD-6: a retried command id gets its first answer after a restart, and a
    // different command under the same id is refused.
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), Limits::default()).await;
    let mut commands = server.commands().await;
    commands
        .issue_license(request(issue("L1", "school", 5), None))
        .await
        .unwrap();
    let first = commands
        .add_users_by_email(with_header(
            request(add("L1", "a@north.edu"), None),
            "x-command-id",
            "add-a",
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first.added, 1);
    server.stop().await;

    let server = Server::start(dir.path(), Limits::default()).await;
    let mut commands = server.commands().await;
    let retried = commands
        .add_users_by_email(with_header(
            request(add("L1", "a@north.edu"), None),
            "x-command-id",
            "add-a",
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        retried, first,
        "the retry gets the first answer, position included"
    );
    let reused = commands
        .add_users_by_email(with_header(
            request(add("L1", "b@north.edu"), None),
            "x-command-id",
            "add-a",
        ))
        .await
        .unwrap_err();
    assert_eq!(reused.code(), Code::FailedPrecondition);
    assert_eq!(users_count(&server, "L1", first.position).await, 1);
    let history = server
        .queries()
        .await
        .history(request(
            proto::HistoryRequest {
                subject: Some(proto::history_request::Subject::License("L1".into())),
            },
            None,
        ))
        .await
        .unwrap()
        .into_inner();
    let types: Vec<&str> = history.events.iter().map(|e| e.r#type.as_str()).collect();
    assert_eq!(
        types,
        ["LicenseIssued", "UserAdded"],
        "nothing was appended twice"
    );
    server.stop().await;
}

/// The answers of commands sent with `x-command-id`, one per command path of the core:
/// a license command, an email-domain command and a two-stream claim.
struct KeptAnswers {
    issue: proto::CommandReply,
    add: proto::AddUsersReply,
    grant: proto::CommandReply,
    claim: proto::CommandReply,
}

async fn send_with_ids(commands: &mut LicenseCommandsClient<Channel>) -> KeptAnswers {
    let issue = commands
        .issue_license(with_header(
            request(issue("D1", "district", 5), None),
            "x-command-id",
            "issue-d1",
        ))
        .await
        .unwrap()
        .into_inner();
    let add = commands
        .add_users_by_email(with_header(
            request(add("D1", "a@north.edu, b@north.edu"), None),
            "x-command-id",
            "add-ab",
        ))
        .await
        .unwrap()
        .into_inner();
    let grant = commands
        .grant_domain_admin(with_header(
            request(
                proto::DomainAdminRequest {
                    domain: "north.edu".into(),
                    email: "it@north.edu".into(),
                },
                None,
            ),
            "x-command-id",
            "grant-it",
        ))
        .await
        .unwrap()
        .into_inner();
    let claim = commands
        .claim_domain(with_header(
            request(
                proto::ClaimDomainRequest {
                    license: "D1".into(),
                    domain: "north.edu".into(),
                    dedicated: false,
                },
                None,
            ),
            "x-command-id",
            "claim-north",
        ))
        .await
        .unwrap()
        .into_inner();
    KeptAnswers {
        issue,
        add,
        grant,
        claim,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn command_answers_survive_losing_the_answers_cache() {
    // AUD-4: the first answer of a command is kept in the log with its append, so a retry
    // gets it back even when everything beside the log is gone, as after a crash that the
    // server's caches did not survive. A different request under a used id stays refused.
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), Limits::default()).await;
    let first = send_with_ids(&mut server.commands().await).await;
    assert_eq!((first.add.added, first.add.invited), (2, 0));
    server.stop().await;
    // The server's own store (answers cache, snapshots) and the projections are derived:
    // without them the server rebuilds from the log.
    std::fs::remove_dir_all(dir.path().join("server")).unwrap();
    std::fs::remove_dir_all(dir.path().join("projections")).unwrap();

    let server = Server::start(dir.path(), Limits::default()).await;
    let mut commands = server.commands().await;
    // Other requests under a used id come first, while only the log knows the id: they
    // are refused (ERR-1: NOT_FOUND before the reuse's FAILED_PRECONDITION), and their
    // refusals are not kept under the id, whose first outcome is the first request's.
    let reused = add_c_under_a_used_id(&mut commands, "D1").await;
    assert_eq!(reused.code(), Code::FailedPrecondition, "{reused:?}");
    let unknown = add_c_under_a_used_id(&mut commands, "D9").await;
    assert_eq!(unknown.code(), Code::NotFound, "{unknown:?}");
    let retried = send_with_ids(&mut commands).await;
    assert_eq!(retried.issue, first.issue, "IssueLicense");
    assert_eq!(
        retried.add, first.add,
        "AddUsersByEmail, counts and position"
    );
    assert_eq!(retried.grant, first.grant, "GrantDomainAdmin");
    assert_eq!(retried.claim, first.claim, "ClaimDomain");
    let reused = add_c_under_a_used_id(&mut commands, "D1").await;
    assert_eq!(reused.code(), Code::FailedPrecondition, "{reused:?}");
    assert_eq!(users_count(&server, "D1", first.claim.position).await, 2);
    server.stop().await;
}

/// Adds c@ to `license` under `send_with_ids`'s id of another add; returns the refusal.
async fn add_c_under_a_used_id(
    commands: &mut LicenseCommandsClient<Channel>,
    license: &str,
) -> Status {
    commands
        .add_users_by_email(with_header(
            request(add(license, "c@north.edu"), None),
            "x-command-id",
            "add-ab",
        ))
        .await
        .expect_err("the id is another request's")
}

/// The four command paths of `send_with_ids` without `x-command-id`, on other names.
async fn send_without_ids(commands: &mut LicenseCommandsClient<Channel>) {
    commands
        .issue_license(request(issue("D2", "district", 5), None))
        .await
        .unwrap();
    commands
        .add_users_by_email(request(add("D2", "a@south.edu, b@south.edu"), None))
        .await
        .unwrap();
    commands
        .grant_domain_admin(request(
            proto::DomainAdminRequest {
                domain: "south.edu".into(),
                email: "it@south.edu".into(),
            },
            None,
        ))
        .await
        .unwrap();
    commands
        .claim_domain(request(
            proto::ClaimDomainRequest {
                license: "D2".into(),
                domain: "south.edu".into(),
                dedicated: false,
            },
            None,
        ))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_command_ids_clients_send_are_remembered_by_the_ledger() {
    // AUD-4 and issue 7: an id a client sent is indexed, so that its retry is recognised;
    // an id the server made up (no `x-command-id`) is recorded with the events but not
    // indexed, which spares the ledger a key and a lookup per command. Every append of
    // every command path is probed straight on the ledger afterwards: an append under a
    // remembered id with other events is refused as a reused id; under an unremembered one
    // it is a new append.
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), Limits::default()).await;
    let mut commands = server.commands().await;
    send_with_ids(&mut commands).await;
    send_without_ids(&mut commands).await;
    server.stop().await;

    use ledger::EventLog;
    let log = ledger::EmbeddedLog::open(dir.path().join("log"), ledger::EmbeddedOptions::default())
        .unwrap();
    let mut recorded = Vec::new();
    loop {
        let page = log.read_all(recorded.len() as u64, 1_000).await.unwrap();
        if page.is_empty() {
            break;
        }
        recorded.extend(page);
    }
    let mut appends: Vec<(String, uuid::Uuid)> = recorded
        .iter()
        .map(|e| (e.stream.clone(), e.command_id))
        .collect();
    appends.dedup();
    let probe = |stream: &str| ledger::NewEvent {
        event_id: uuid::Uuid::new_v4(),
        event_type: "Probe".into(),
        schema_version: 1,
        recorded_at: start_time(),
        actor: "probe@test".into(),
        correlation_id: uuid::Uuid::nil(),
        payload: stream.as_bytes().to_vec(),
    };
    let mut remembered = Vec::new();
    for (stream, command_id) in &appends {
        match log
            .append(
                stream,
                ledger::ExpectedRevision::Any,
                vec![probe(stream)],
                *command_id,
            )
            .await
        {
            Err(ledger::LedgerError::CommandIdReused { .. }) => remembered.push(stream.as_str()),
            Ok(_) => {}
            Err(other) => panic!("probing {stream}: {other:?}"),
        }
    }
    // With ids: IssueLicense, AddUsersByEmail, GrantDomainAdmin, and ClaimDomain's two
    // appends (the domain's, then the license's). Without ids: nothing.
    assert_eq!(
        remembered,
        [
            "license-D1",
            "license-D1",
            "domain-north.edu",
            "domain-north.edu",
            "license-D1"
        ],
        "appends: {appends:?}"
    );
    assert_eq!(appends.len(), 10, "five appends with ids, five without");
    log.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleted_projections_are_rebuilt_from_the_log() {
    // AUD-5: the log is the only truth; the read models can be deleted and come back.
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), Limits::default()).await;
    let mut commands = server.commands().await;
    commands
        .issue_license(request(issue("L1", "district", 5), None))
        .await
        .unwrap();
    let added = commands
        .add_users_by_email(request(add("L1", "a@north.edu, b@north.edu"), None))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(users_count(&server, "L1", added.position).await, 2);
    server.stop().await;

    std::fs::remove_dir_all(dir.path().join("projections")).unwrap();
    let server = Server::start(dir.path(), Limits::default()).await;
    assert_eq!(users_count(&server, "L1", added.position).await, 2);
    let users = server
        .queries()
        .await
        .list_users(crate::at_least(
            request(
                proto::ListUsersRequest {
                    license: "L1".into(),
                    ..Default::default()
                },
                None,
            ),
            added.position,
        ))
        .await
        .unwrap()
        .into_inner();
    let emails: Vec<&str> = users.users.iter().map(|u| u.email.as_str()).collect();
    assert_eq!(emails, ["a@north.edu", "b@north.edu"]);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_event_feed_filters_by_license_and_type_and_hides_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), Limits::default()).await;
    let mut commands = server.commands().await;
    commands
        .issue_license(request(issue("T1", "teacher", 5), None))
        .await
        .unwrap();
    commands
        .issue_license(request(issue("S1", "school", 5), None))
        .await
        .unwrap();
    commands
        .add_users_by_email(request(add("S1", "s@north.edu"), None))
        .await
        .unwrap();
    let last = commands
        .add_users_by_email(request(add("T1", "t@north.edu"), None))
        .await
        .unwrap()
        .into_inner()
        .position;

    let mut filtered = server
        .feed()
        .await
        .subscribe(request(
            proto::SubscribeRequest {
                from_position: 0,
                license: "T1".into(),
                event_types: vec!["UserAdded".into()],
            },
            None,
        ))
        .await
        .unwrap()
        .into_inner();
    let only = tokio::time::timeout(
        Duration::from_secs(CALL_TIMEOUT_SECONDS),
        filtered.message(),
    )
    .await
    .unwrap()
    .unwrap()
    .unwrap();
    assert_eq!(
        (only.stream.as_str(), only.r#type.as_str()),
        ("license-T1", "UserAdded")
    );

    let secrets = server
        .queries()
        .await
        .get_license(crate::at_least(
            request(
                proto::LicenseRef {
                    license: "T1".into(),
                },
                None,
            ),
            last,
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(!secrets.key.is_empty() && !secrets.link.is_empty());
    let mut everything = server
        .feed()
        .await
        .subscribe(request(proto::SubscribeRequest::default(), None))
        .await
        .unwrap()
        .into_inner();
    let issued = tokio::time::timeout(
        Duration::from_secs(CALL_TIMEOUT_SECONDS),
        everything.message(),
    )
    .await
    .unwrap()
    .unwrap()
    .unwrap();
    assert_eq!(issued.r#type, "LicenseIssued");
    assert_eq!(issued.position, 1, "API positions count from 1");
    let payload = String::from_utf8_lossy(&issued.payload);
    assert!(
        !payload.contains(&secrets.key),
        "the feed must not carry the license key"
    );
    assert!(
        !payload.contains(&secrets.link),
        "the feed must not carry the join link"
    );

    let refused = server
        .feed()
        .await
        .subscribe(request(
            proto::SubscribeRequest::default(),
            Some("admin@north.edu"),
        ))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied);
    server.stop().await;
}

/// An ImportCsv stream of `rows` generated rows for `license`, in data messages of
/// `piece_bytes`.
fn csv_import_chunks(license: &str, rows: usize, piece_bytes: usize) -> Vec<proto::ImportCsvChunk> {
    let mut chunks = vec![proto::ImportCsvChunk {
        part: Some(proto::import_csv_chunk::Part::Start(
            proto::ImportCsvStart {
                license: license.into(),
                mode: "add".into(),
            },
        )),
    }];
    let text: String = std::iter::once("Email\n".to_owned())
        .chain((0..rows).map(|i| format!("row{i}@north.edu\n")))
        .collect();
    for piece in text.as_bytes().chunks(piece_bytes) {
        chunks.push(proto::ImportCsvChunk {
            part: Some(proto::import_csv_chunk::Part::Data(piece.to_vec())),
        });
    }
    chunks
}

/// ERR-3: oversized messages and CSV streams are refused with RESOURCE_EXHAUSTED, and nothing
/// is applied. ERR-1 ranks RESOURCE_EXHAUSTED last: a CSV over the size limit sent to a
/// license id that is invalid, to a license that does not exist, or by a user who is not the
/// license's admin gets INVALID_ARGUMENT, NOT_FOUND or PERMISSION_DENIED, as the same import
/// under the limit would; only staff and the license's own admin hear that it is too large.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_messages_and_csv_streams_are_resource_exhausted() {
    let dir = tempfile::tempdir().unwrap();
    let limits = Limits {
        message_bytes_max: 64 * 1024,
        csv_import_bytes_max: 100 * 1024,
        ..Limits::default()
    };
    let server = Server::start(dir.path(), limits).await;
    let mut commands = server.commands().await;
    let issued = commands
        .issue_license(request(issue("L1", "school", 100_000), None))
        .await
        .unwrap()
        .into_inner();
    let huge: String = (0..10_000).map(|i| format!("user{i}@north.edu,")).collect();
    let refused = commands
        .add_users_by_email(request(add("L1", &huge), None))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");

    for (license, actor, code) in [
        ("L1", None, Code::ResourceExhausted),
        ("L1", Some("admin@north.edu"), Code::ResourceExhausted),
        ("not a license id!", None, Code::InvalidArgument),
        ("L9", None, Code::NotFound),
        ("L1", Some("stranger@north.edu"), Code::PermissionDenied),
    ] {
        let chunks = csv_import_chunks(license, 10_000, 16 * 1024);
        let refused = commands
            .import_csv(request(tokio_stream::iter(chunks), actor))
            .await
            .unwrap_err();
        assert_eq!(refused.code(), code, "{license} by {actor:?}: {refused:?}");
    }
    assert_eq!(users_count(&server, "L1", issued.position).await, 0);
    server.stop().await;
}

/// Calls one RPC by path with an empty message and the given header, and returns the code
/// of the answer. Every RPC authenticates before it reads its request, so an empty message
/// is enough to see how it treats the credentials.
async fn call_with_empty_message(
    channel: Channel,
    path: &str,
    client_streaming: bool,
    server_streaming: bool,
    authorization: Option<&str>,
) -> Code {
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.expect("the channel is ready");
    let path = tonic::codegen::http::uri::PathAndQuery::try_from(path.to_owned()).unwrap();
    let codec = tonic_prost::ProstCodec::<(), ()>::default();
    let mut metadata = tonic::metadata::MetadataMap::new();
    if let Some(value) = authorization {
        metadata.insert("authorization", value.parse().unwrap());
    }
    let result = if client_streaming {
        let request = Request::from_parts(
            metadata,
            Default::default(),
            tokio_stream::iter(Vec::<()>::new()),
        );
        grpc.client_streaming(request, path, codec)
            .await
            .map(|_| ())
    } else {
        let request = Request::from_parts(metadata, Default::default(), ());
        if server_streaming {
            grpc.server_streaming(request, path, codec)
                .await
                .map(|_| ())
        } else {
            grpc.unary(request, path, codec).await.map(|_| ())
        }
    };
    result.err().map_or(Code::Ok, |status| status.code())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_rpc_refuses_a_call_without_credentials() {
    // ERR-2: the list of RPCs comes from the served descriptor set, so an RPC added later
    // is checked without anyone remembering to add it here.
    use prost::Message;
    let descriptors = prost_types::FileDescriptorSet::decode(proto::FILE_DESCRIPTOR_SET).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), Limits::default()).await;
    let channel = server.channel().await;
    let user_without_actor = format!("Bearer {USER}");
    let mut checked = 0;
    for file in &descriptors.file {
        for service in &file.service {
            for method in &service.method {
                let path = format!("/{}.{}/{}", file.package(), service.name(), method.name());
                for authorization in [
                    None,
                    Some("Bearer not-a-token"),
                    Some(user_without_actor.as_str()),
                ] {
                    let code = call_with_empty_message(
                        channel.clone(),
                        &path,
                        method.client_streaming(),
                        method.server_streaming(),
                        authorization,
                    )
                    .await;
                    assert_eq!(code, Code::Unauthenticated, "{path} with {authorization:?}");
                }
                checked += 1;
            }
        }
    }
    assert!(
        checked >= 36,
        "every RPC of the contract was called, not {checked}"
    );
    server.stop().await;
}
