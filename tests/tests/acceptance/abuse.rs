//! Abuse (issue 8): every RPC called by every wrong scope and role (a table checked against
//! the served descriptor set, so a new RPC without an entry fails here), a 2 GiB streamed
//! CSV and an oversized message against the real server binary with its memory measured,
//! and 1,000 concurrent connections.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::{Buf, BufMut};
use prost::Message;
use proto::license_commands_client::LicenseCommandsClient;
use proto::license_queries_client::LicenseQueriesClient;
use server::{ManualClock, Scope, ServerConfig, Tokens};
use tests::reliability::process::{
    STAFF_TOKEN, ServerProcess, license_server_binary, write_tokens_file,
};
use tokio::sync::oneshot;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::transport::Channel;
use tonic::{Code, Request, Status};

const STAFF: &str = "staff-token-for-abuse-tests";
const SYSTEM: &str = "system-token-for-abuse-tests";
const USER: &str = "user-token-for-abuse-tests";
const CALL_TIMEOUT_SECONDS: u64 = 60;

/// Who calls. Admin is the license admin of both fixture licenses; Invitee has a pending
/// invite on the teacher license; Stranger is on no license.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Caller {
    Staff,
    System,
    Admin,
    Invitee,
    Stranger,
}

const CALLERS: [Caller; 5] = [
    Caller::Staff,
    Caller::System,
    Caller::Admin,
    Caller::Invitee,
    Caller::Stranger,
];
const ADMIN: &str = "admin@north.edu";
const INVITEE: &str = "invitee@other.org";
const STRANGER: &str = "stranger@else.org";

impl Caller {
    fn metadata(self) -> tonic::metadata::MetadataMap {
        let mut metadata = tonic::metadata::MetadataMap::new();
        let (token, actor) = match self {
            Caller::Staff => (STAFF, None),
            Caller::System => (SYSTEM, None),
            Caller::Admin => (USER, Some(ADMIN)),
            Caller::Invitee => (USER, Some(INVITEE)),
            Caller::Stranger => (USER, Some(STRANGER)),
        };
        metadata.insert("authorization", format!("Bearer {token}").parse().unwrap());
        if let Some(actor) = actor {
            metadata.insert("x-actor", actor.parse().unwrap());
        }
        metadata
    }
}

/// Sends and receives already-encoded protobuf messages, so one table can call every RPC.
#[derive(Clone, Copy, Default)]
struct RawCodec;
struct RawEncoder;
struct RawDecoder;

impl Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawEncoder;
    type Decoder = RawDecoder;
    fn encoder(&mut self) -> Self::Encoder {
        RawEncoder
    }
    fn decoder(&mut self) -> Self::Decoder {
        RawDecoder
    }
}

impl Encoder for RawEncoder {
    type Item = Vec<u8>;
    type Error = Status;
    fn encode(&mut self, item: Vec<u8>, buffer: &mut EncodeBuf<'_>) -> Result<(), Status> {
        buffer.put_slice(&item);
        Ok(())
    }
}

impl Decoder for RawDecoder {
    type Item = Vec<u8>;
    type Error = Status;
    fn decode(&mut self, buffer: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, Status> {
        Ok(Some(buffer.copy_to_bytes(buffer.remaining()).to_vec()))
    }
}

/// The fixture's secrets, for requests that need them.
struct Fixture {
    key: String,
    link: String,
}

/// One row of the table: the request (valid in shape and naming fixture licenses, so that
/// only the caller can make it fail) and who may call the RPC. Everyone else must get
/// PERMISSION_DENIED (ERR-2); whoever may call must get past authorisation.
struct Row {
    method: &'static str,
    request: fn(&Fixture) -> Vec<Vec<u8>>,
    allowed: &'static [Caller],
}

fn one<M: Message>(message: M) -> Vec<Vec<u8>> {
    vec![message.encode_to_vec()]
}

fn license(id: &str) -> proto::LicenseRef {
    proto::LicenseRef { license: id.into() }
}

use Caller::{Admin, Invitee, Staff, Stranger, System};

/// SPEC §3-§11 and ARCHITECTURE "Who may do what"; the fixture licenses are `T1`
/// (teacher) and `D1` (district).
fn table() -> Vec<Row> {
    const STAFF_ONLY: &[Caller] = &[Staff];
    const ADMINS: &[Caller] = &[Staff, Admin];
    const INTEGRATIONS: &[Caller] = &[Staff, System];
    const USERS: &[Caller] = &[Admin, Invitee, Stranger];
    const READERS: &[Caller] = &[Staff, System, Admin];
    vec![
        Row {
            method: "IssueLicense",
            allowed: STAFF_ONLY,
            request: |_| {
                one(proto::IssueLicenseRequest {
                    license: "N1".into(),
                    r#type: "school".into(),
                    seats: 5,
                    valid_from: "2026-08-01T00:00:00Z".into(),
                    valid_until: "2027-07-31T23:59:59Z".into(),
                    admins: vec![ADMIN.into()],
                })
            },
        },
        Row {
            method: "RenewLicense",
            allowed: STAFF_ONLY,
            request: |_| {
                one(proto::RenewLicenseRequest {
                    license: "T1".into(),
                    valid_until: "2028-07-31T23:59:59Z".into(),
                })
            },
        },
        Row {
            method: "ChangeSeats",
            allowed: STAFF_ONLY,
            request: |_| {
                one(proto::ChangeSeatsRequest {
                    license: "T1".into(),
                    seats: 60,
                })
            },
        },
        Row {
            method: "GrantLicenseAdmin",
            allowed: ADMINS,
            request: |_| {
                one(proto::LicenseAdminRequest {
                    license: "T1".into(),
                    email: "second@north.edu".into(),
                })
            },
        },
        Row {
            method: "RevokeLicenseAdmin",
            allowed: ADMINS,
            request: |_| {
                one(proto::LicenseAdminRequest {
                    license: "T1".into(),
                    email: "second@north.edu".into(),
                })
            },
        },
        Row {
            method: "GrantDomainAdmin",
            allowed: STAFF_ONLY,
            request: |_| {
                one(proto::DomainAdminRequest {
                    domain: "south.edu".into(),
                    email: ADMIN.into(),
                })
            },
        },
        Row {
            method: "RevokeDomainAdmin",
            allowed: STAFF_ONLY,
            request: |_| {
                one(proto::DomainAdminRequest {
                    domain: "south.edu".into(),
                    email: ADMIN.into(),
                })
            },
        },
        Row {
            method: "AddUsersByEmail",
            allowed: ADMINS,
            request: |_| {
                one(proto::AddUsersByEmailRequest {
                    license: "T1".into(),
                    emails: "new@north.edu".into(),
                })
            },
        },
        Row {
            method: "ImportCsv",
            allowed: ADMINS,
            request: |_| {
                vec![
                    proto::ImportCsvChunk {
                        part: Some(proto::import_csv_chunk::Part::Start(
                            proto::ImportCsvStart {
                                license: "T1".into(),
                                mode: "add".into(),
                            },
                        )),
                    }
                    .encode_to_vec(),
                    proto::ImportCsvChunk {
                        part: Some(proto::import_csv_chunk::Part::Data(
                            b"Email\ncsv@north.edu\n".to_vec(),
                        )),
                    }
                    .encode_to_vec(),
                ]
            },
        },
        Row {
            method: "RemoveUsers",
            allowed: ADMINS,
            request: |_| {
                one(proto::RemoveUsersRequest {
                    license: "T1".into(),
                    emails: vec!["csv@north.edu".into()],
                })
            },
        },
        // Invites, keys and links act for the user themself (INV-2, KEY-1); a user without
        // an invite gets FAILED_PRECONDITION, which is not a question of role.
        Row {
            method: "AcceptInvite",
            allowed: USERS,
            request: |_| one(license("T1")),
        },
        Row {
            method: "RejectInvite",
            allowed: USERS,
            request: |_| one(license("T1")),
        },
        Row {
            method: "RedeemLicenseKey",
            allowed: USERS,
            request: |f| one(proto::RedeemLicenseKeyRequest { key: f.key.clone() }),
        },
        Row {
            method: "JoinViaLink",
            allowed: USERS,
            request: |f| {
                one(proto::JoinViaLinkRequest {
                    token: f.link.clone(),
                })
            },
        },
        Row {
            method: "RotateLicenseKey",
            allowed: ADMINS,
            request: |_| one(license("T1")),
        },
        Row {
            method: "RotateJoinLink",
            allowed: ADMINS,
            request: |_| one(license("T1")),
        },
        Row {
            method: "SetFeaturePermission",
            allowed: ADMINS,
            request: |_| {
                one(proto::SetFeaturePermissionRequest {
                    license: "T1".into(),
                    feature: "dictation".into(),
                    enabled: true,
                    role: String::new(),
                })
            },
        },
        Row {
            method: "SetAutoEnrollment",
            allowed: STAFF_ONLY,
            request: |_| {
                one(proto::SetAutoEnrollmentRequest {
                    license: "T1".into(),
                    enabled: false,
                })
            },
        },
        // OU-1: a license admin with the Google-admin attestation; not staff.
        Row {
            method: "LinkOu",
            allowed: &[Admin],
            request: |_| {
                one(proto::LinkOuRequest {
                    license: "D1".into(),
                    ou_paths: vec!["/Students".into()],
                    google_admin: true,
                })
            },
        },
        Row {
            method: "UnlinkOu",
            allowed: ADMINS,
            request: |_| one(license("D1")),
        },
        Row {
            method: "SyncOu",
            allowed: INTEGRATIONS,
            request: |_| {
                one(proto::SyncOuRequest {
                    license: "D1".into(),
                    members: vec![proto::OuMember {
                        email: "ou@north.edu".into(),
                        ou_path: "/Students".into(),
                        role: "student".into(),
                        suspended: false,
                    }],
                })
            },
        },
        Row {
            method: "ConfirmOuSync",
            allowed: ADMINS,
            request: |_| one(license("D1")),
        },
        Row {
            method: "ClaimDomain",
            allowed: STAFF_ONLY,
            request: |_| {
                one(proto::ClaimDomainRequest {
                    license: "D1".into(),
                    domain: "district.edu".into(),
                    dedicated: false,
                })
            },
        },
        Row {
            method: "ReleaseDomain",
            allowed: STAFF_ONLY,
            request: |_| {
                one(proto::ReleaseDomainRequest {
                    license: "D1".into(),
                    domain: "district.edu".into(),
                })
            },
        },
        Row {
            method: "UserSignedUp",
            allowed: INTEGRATIONS,
            request: |_| {
                one(proto::UserSignedUpRequest {
                    email: "signup@district.edu".into(),
                    role: "student".into(),
                })
            },
        },
        Row {
            method: "ScanDomain",
            allowed: INTEGRATIONS,
            request: |_| {
                one(proto::ScanDomainRequest {
                    domain: "district.edu".into(),
                    accounts: vec![proto::ScannedAccount {
                        email: "scan@district.edu".into(),
                        role: "teacher".into(),
                    }],
                })
            },
        },
        Row {
            method: "AssignmentOpened",
            allowed: INTEGRATIONS,
            request: |_| {
                one(proto::AssignmentOpenedRequest {
                    teacher: ADMIN.into(),
                    student: "pupil@north.edu".into(),
                    lms: "canvas".into(),
                    kami_assignment: true,
                })
            },
        },
        Row {
            method: "SyncClassroomRoster",
            allowed: INTEGRATIONS,
            request: |_| {
                one(proto::SyncClassroomRosterRequest {
                    license: "T1".into(),
                    course: "c1".into(),
                    students: vec!["roster@north.edu".into()],
                })
            },
        },
        // a license's admins, staff, system and its members (the invitee is one).
        Row {
            method: "GetLicense",
            allowed: &[Staff, System, Admin, Invitee],
            request: |_| one(license("T1")),
        },
        Row {
            method: "ListUsers",
            allowed: READERS,
            request: |_| {
                one(proto::ListUsersRequest {
                    license: "T1".into(),
                    ..Default::default()
                })
            },
        },
        // a user reads only their own licenses, invites and domains.
        Row {
            method: "ListMyLicenses",
            allowed: &[Staff, System, Invitee],
            request: |_| {
                one(proto::EmailRef {
                    email: INVITEE.into(),
                })
            },
        },
        Row {
            method: "ListMyInvites",
            allowed: &[Staff, System, Invitee],
            request: |_| {
                one(proto::EmailRef {
                    email: INVITEE.into(),
                })
            },
        },
        Row {
            method: "ListMyDomains",
            allowed: &[Staff, System, Invitee],
            request: |_| {
                one(proto::EmailRef {
                    email: INVITEE.into(),
                })
            },
        },
        Row {
            method: "GetUsage",
            allowed: READERS,
            request: |_| {
                one(proto::GetUsageRequest {
                    license: "T1".into(),
                    from: "2026-09-01T00:00:00Z".into(),
                    to: "2026-09-08T00:00:00Z".into(),
                    bucket: "day".into(),
                })
            },
        },
        Row {
            method: "History",
            allowed: READERS,
            request: |_| {
                one(proto::HistoryRequest {
                    subject: Some(proto::history_request::Subject::License("T1".into())),
                })
            },
        },
        // The event feed is for staff and system only (ARCHITECTURE, decisions).
        Row {
            method: "Subscribe",
            allowed: INTEGRATIONS,
            request: |_| one(proto::SubscribeRequest::default()),
        },
    ]
}

async fn call(
    channel: Channel,
    path: &str,
    client_streaming: bool,
    server_streaming: bool,
    messages: Vec<Vec<u8>>,
    caller: Caller,
) -> Code {
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.expect("the channel is ready");
    let path = tonic::codegen::http::uri::PathAndQuery::try_from(path.to_owned()).unwrap();
    let metadata = caller.metadata();
    let result = if client_streaming {
        let request =
            Request::from_parts(metadata, Default::default(), tokio_stream::iter(messages));
        grpc.client_streaming(request, path, RawCodec)
            .await
            .map(|_| ())
    } else {
        let message = messages.into_iter().next().unwrap_or_default();
        let request = Request::from_parts(metadata, Default::default(), message);
        if server_streaming {
            grpc.server_streaming(request, path, RawCodec)
                .await
                .map(|_| ())
        } else {
            grpc.unary(request, path, RawCodec).await.map(|_| ())
        }
    };
    result.err().map_or(Code::Ok, |status| status.code())
}

/// A request with the staff token of the in-process servers of these tests.
fn staff<T>(message: T) -> Request<T> {
    crate::with_bearer(STAFF, message)
}

/// A request with the staff token of a server started as a process (`ServerProcess`).
fn process_staff<T>(message: T) -> Request<T> {
    crate::with_bearer(STAFF_TOKEN, message)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_rpc_refuses_every_wrong_scope_and_role() {
    // ERR-2, Q-7, OU-1, INV-2: the RPC list comes from the descriptor set, so a new RPC
    // without a row fails this test; each row names who may call, everyone else must be
    // PERMISSION_DENIED, and the refusals append nothing (ERR-1).
    let descriptors = prost_types::FileDescriptorSet::decode(proto::FILE_DESCRIPTOR_SET).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = format!("http://{}", listener.local_addr().unwrap());
    let mut tokens = Tokens::new();
    tokens.insert(STAFF, Scope::Staff);
    tokens.insert(SYSTEM, Scope::System);
    tokens.insert(USER, Scope::User);
    let start = chrono::DateTime::parse_from_rfc3339("2026-09-01T00:00:00Z")
        .unwrap()
        .with_timezone(&chrono::Utc);
    let config = ServerConfig::embedded(dir.path(), tokens, Arc::new(ManualClock::new(start)));
    let (stop, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(server::run(listener, config, async {
        let _ = stopped.await;
    }));
    let channel = Channel::from_shared(address)
        .unwrap()
        .timeout(Duration::from_secs(CALL_TIMEOUT_SECONDS))
        .connect()
        .await
        .unwrap();
    let mut commands = LicenseCommandsClient::new(channel.clone());
    for (id, kind) in [("T1", "teacher"), ("D1", "district")] {
        commands
            .issue_license(staff(proto::IssueLicenseRequest {
                license: id.into(),
                r#type: kind.into(),
                seats: 50,
                valid_from: "2026-08-01T00:00:00Z".into(),
                valid_until: "2027-07-31T23:59:59Z".into(),
                admins: vec![ADMIN.into()],
            }))
            .await
            .unwrap();
    }
    commands
        .add_users_by_email(staff(proto::AddUsersByEmailRequest {
            license: "T1".into(),
            emails: ADMIN.into(),
        }))
        .await
        .unwrap();
    let mut invite = Request::new(proto::AddUsersByEmailRequest {
        license: "T1".into(),
        emails: INVITEE.into(),
    });
    *invite.metadata_mut() = Admin.metadata();
    let head = commands
        .add_users_by_email(invite)
        .await
        .unwrap()
        .into_inner()
        .position;
    // The read waits for the projections to reach the last command (a loaded machine once
    // read the license before they had it: NOT_FOUND).
    let view = LicenseQueriesClient::new(channel.clone())
        .get_license(crate::at_least(staff(license("T1")), head))
        .await
        .unwrap()
        .into_inner();
    let fixture = Fixture {
        key: view.key,
        link: view.link,
    };

    let rows = table();
    let mut served = BTreeSet::new();
    let mut methods = Vec::new();
    for file in &descriptors.file {
        for service in &file.service {
            for method in &service.method {
                let path = format!("/{}.{}/{}", file.package(), service.name(), method.name());
                let row = rows
                    .iter()
                    .find(|row| row.method == method.name())
                    .unwrap_or_else(|| {
                        panic!("{path} has no row in the table of who may call it: add one")
                    });
                served.insert(row.method);
                methods.push((
                    path,
                    method.client_streaming(),
                    method.server_streaming(),
                    row,
                ));
            }
        }
    }
    let unknown: Vec<&str> = rows
        .iter()
        .map(|r| r.method)
        .filter(|m| !served.contains(m))
        .collect();
    assert!(
        unknown.is_empty(),
        "rows for RPCs the contract does not have: {unknown:?}"
    );

    // Every wrong caller first, so that the log can show they appended nothing.
    let mut wrong = Vec::new();
    for (path, client_streaming, server_streaming, row) in &methods {
        for caller in CALLERS.iter().filter(|c| !row.allowed.contains(c)) {
            let code = call(
                channel.clone(),
                path,
                *client_streaming,
                *server_streaming,
                (row.request)(&fixture),
                *caller,
            )
            .await;
            if code != Code::PermissionDenied {
                wrong.push(format!(
                    "{path} by {caller:?}: {code:?}, expected PermissionDenied"
                ));
            }
        }
    }
    let after = commands
        .add_users_by_email(staff(proto::AddUsersByEmailRequest {
            license: "T1".into(),
            emails: "marker@north.edu".into(),
        }))
        .await
        .unwrap()
        .into_inner()
        .position;
    assert_eq!(after, head + 1, "refused calls appended nothing (ERR-1)");
    // Then every allowed caller, who must get past authentication and authorisation (and
    // past the shape checks: the rows are valid requests).
    for (path, client_streaming, server_streaming, row) in &methods {
        for caller in row.allowed {
            let code = call(
                channel.clone(),
                path,
                *client_streaming,
                *server_streaming,
                (row.request)(&fixture),
                *caller,
            )
            .await;
            if matches!(
                code,
                Code::Unauthenticated
                    | Code::PermissionDenied
                    | Code::InvalidArgument
                    | Code::NotFound
            ) {
                wrong.push(format!(
                    "{path} by {caller:?}: {code:?}, expected it to be allowed"
                ));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "{} cells of the table disagree:\n{}",
        wrong.len(),
        wrong.join("\n")
    );
    assert!(
        methods.len() >= 36,
        "every RPC of the contract was checked, not {}",
        methods.len()
    );
    let _ = stop.send(());
    server.await.unwrap().unwrap();
}

/// Bytes of one streamed CSV chunk.
const CSV_CHUNK_BYTES: usize = 1024 * 1024;
/// What the abusive import offers to send in all: 2 GiB.
const CSV_STREAM_BYTES: u64 = 2 * 1024 * 1024 * 1024;
/// The server's peak resident memory may grow by at most this much while it refuses the
/// 2 GiB streams (its limits: 512 MiB of CSV, 2,000,000 rows).
const SERVER_PEAK_GROWTH_BYTES_MAX: u64 = 768 * 1024 * 1024;

/// Streams up to 2 GiB of CSV, generated lazily one chunk at a time (nothing holds more
/// than a chunk), with `row_padding` bytes of an ignored column per row; returns the answer
/// and how many bytes were generated before the server's answer ended the call.
async fn stream_csv(address: &str, row_padding: usize) -> (Code, u64) {
    let channel = Channel::from_shared(address.to_owned())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let generated = Arc::new(AtomicU64::new(0));
    let counter = generated.clone();
    let padding = "x".repeat(row_padding);
    let start = proto::ImportCsvChunk {
        part: Some(proto::import_csv_chunk::Part::Start(
            proto::ImportCsvStart {
                license: "BIG".into(),
                mode: "add".into(),
            },
        )),
    };
    let mut row = 0u64;
    let data = tokio_stream::iter(std::iter::from_fn(move || {
        if counter.load(Ordering::Relaxed) >= CSV_STREAM_BYTES {
            return None;
        }
        let mut chunk = Vec::with_capacity(CSV_CHUNK_BYTES + 256);
        if row == 0 {
            chunk.extend_from_slice(b"Email,Padding\n");
        }
        while chunk.len() < CSV_CHUNK_BYTES {
            row += 1;
            chunk.extend_from_slice(format!("user{row}@north.edu,{padding}\n").as_bytes());
        }
        counter.fetch_add(chunk.len() as u64, Ordering::Relaxed);
        Some(proto::ImportCsvChunk {
            part: Some(proto::import_csv_chunk::Part::Data(chunk)),
        })
    }));
    let chunks = tokio_stream::StreamExt::chain(tokio_stream::iter([start]), data);
    let request = process_staff(chunks);
    let code = match LicenseCommandsClient::new(channel)
        .import_csv(request)
        .await
    {
        Ok(_) => Code::Ok,
        Err(status) => status.code(),
    };
    (code, generated.load(Ordering::Relaxed))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_2_gib_csv_and_oversized_messages_are_refused_with_bounded_memory() {
    // ERR-3: RESOURCE_EXHAUSTED, early, while the real server's memory stays bounded.
    let binary = license_server_binary().expect("the license-server binary");
    let folder = tempfile::tempdir().unwrap();
    let tokens = write_tokens_file(folder.path()).unwrap();
    let server = ServerProcess::start(&binary, &folder.path().join("data"), &tokens, &[])
        .await
        .unwrap();
    let channel = Channel::from_shared(server.address.clone())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let request = process_staff(proto::IssueLicenseRequest {
        license: "BIG".into(),
        r#type: "district".into(),
        seats: 10_000_000,
        valid_from: "2020-01-01T00:00:00Z".into(),
        valid_until: "2099-12-31T23:59:59Z".into(),
        admins: vec![ADMIN.into()],
    });
    LicenseCommandsClient::new(channel.clone())
        .issue_license(request)
        .await
        .unwrap();
    let before = server
        .peak_resident_bytes()
        .expect("the server's /proc status");

    // Narrow rows: the row limit (2,000,000 emails) refuses it after ~50 MB.
    let (code, sent) = stream_csv(&server.address, 0).await;
    assert_eq!(code, Code::ResourceExhausted, "a 2 GiB CSV of emails");
    assert!(
        sent < CSV_STREAM_BYTES / 4,
        "refused early, after {sent} bytes"
    );
    // Wide rows: the byte limit (512 MiB) refuses it.
    let (code, sent) = stream_csv(&server.address, 1_000).await;
    assert_eq!(code, Code::ResourceExhausted, "a 2 GiB CSV of wide rows");
    assert!(
        sent < CSV_STREAM_BYTES,
        "refused before the end, after {sent} bytes"
    );
    // One message over the 16 MiB message limit.
    let chunks = vec![
        proto::ImportCsvChunk {
            part: Some(proto::import_csv_chunk::Part::Start(
                proto::ImportCsvStart {
                    license: "BIG".into(),
                    mode: "add".into(),
                },
            )),
        },
        proto::ImportCsvChunk {
            part: Some(proto::import_csv_chunk::Part::Data(vec![
                b'a';
                17 * 1024 * 1024
            ])),
        },
    ];
    let request = process_staff(tokio_stream::iter(chunks));
    let refused = LicenseCommandsClient::new(channel.clone())
        .import_csv(request)
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");

    let peak = server
        .peak_resident_bytes()
        .expect("the server's /proc status");
    println!(
        "server peak resident memory: {} MiB before, {} MiB after the 2 GiB streams",
        before >> 20,
        peak >> 20
    );
    assert!(
        peak.saturating_sub(before) <= SERVER_PEAK_GROWTH_BYTES_MAX,
        "the server's peak memory grew by {} MiB",
        (peak - before) >> 20
    );
    // Nothing was applied, and the server still serves.
    let request = process_staff(license("BIG"));
    let view = LicenseQueriesClient::new(channel)
        .get_license(request)
        .await
        .unwrap()
        .into_inner();
    assert_eq!(view.users_count, 0);
    server.stop().await.unwrap();
}

/// Concurrent connections the flood opens.
const FLOOD_CONNECTIONS: usize = 1_000;
/// Connections of an under-the-limit flood the network may reset (5%; 7, 12 and 25 of 1,000
/// were seen on loaded machines); each is retried and must be served.
const FLOOD_RESETS_TOLERATED_MAX: usize = FLOOD_CONNECTIONS / 20;

/// How a flood call ended.
#[derive(Debug, Default)]
struct Flood {
    served: usize,
    /// The call failed UNAVAILABLE (or RESOURCE_EXHAUSTED): the server refused it, or the
    /// client could not connect.
    unavailable: usize,
    /// Of those, the calls the server answered with its reason: it has its maximum of open
    /// connections.
    refused_with_reason: usize,
    /// The refused connection closed under the client before its call was answered: tonic
    /// reports that as Cancelled ("operation was canceled"), Unknown ("transport error") or
    /// Internal ("h2 protocol error"), at once, never after a wait. Kept whole, so that a
    /// failure shows what the clients saw.
    dropped: Vec<String>,
    /// Anything else (a timeout, a wrong answer): never acceptable.
    unclean: Vec<String>,
}

/// The kernel's count of connections its listen queues had no room for (Linux's
/// `ListenOverflows` in /proc/net/netstat), where the machine tells it.
fn listen_overflows() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/net/netstat").ok()?;
    let mut lines = text.lines();
    while let (Some(names), Some(values)) = (lines.next(), lines.next()) {
        if let Some(position) = names
            .split_whitespace()
            .position(|name| name == "ListenOverflows")
        {
            return values.split_whitespace().nth(position)?.parse().ok();
        }
    }
    None
}

/// Whether a call failed because its connection closed under it (a refused connection's
/// GOAWAY raced the call, or the connection was reset), as tonic reports that: Cancelled,
/// Unknown or Internal, and never a timeout.
fn closed_under_the_call(status: &Status) -> bool {
    matches!(
        status.code(),
        Code::Cancelled | Code::Unknown | Code::Internal
    ) && !status.message().contains("Timeout")
}

/// A status with the chain of errors under it ("transport error" alone says little).
fn describe_with_sources(status: &Status) -> String {
    let mut description = format!("{:?}: {}", status.code(), status.message());
    let mut source = std::error::Error::source(status);
    while let Some(error) = source {
        description.push_str(&format!(" <- {error}"));
        source = error.source();
    }
    description
}

/// Opens `FLOOD_CONNECTIONS` separate connections at once, each making one call.
async fn flood(address: &str) -> Flood {
    let mut calls = Vec::new();
    for _ in 0..FLOOD_CONNECTIONS {
        let address = address.to_owned();
        calls.push(tokio::spawn(async move {
            let endpoint = Channel::from_shared(address)
                .unwrap()
                .timeout(Duration::from_secs(CALL_TIMEOUT_SECONDS))
                .connect_timeout(Duration::from_secs(CALL_TIMEOUT_SECONDS));
            let channel = match endpoint.connect().await {
                Ok(channel) => channel,
                Err(error) => return (Err(Status::unavailable(error.to_string())), None),
            };
            let request = process_staff(license("FLOOD"));
            let answer = LicenseQueriesClient::new(channel.clone())
                .get_license(request)
                .await
                .map(|_| ());
            // The channel stays open until every call has been made.
            (answer, Some(channel))
        }));
    }
    let mut outcomes = Vec::new();
    for call in calls {
        outcomes.push(call.await.unwrap());
    }
    let mut flood = Flood::default();
    for (answer, _channel) in outcomes {
        match answer {
            Ok(()) => flood.served += 1,
            Err(status) => match status.code() {
                Code::Unavailable | Code::ResourceExhausted => {
                    flood.unavailable += 1;
                    if status.message() == server::connections::REFUSAL_MESSAGE {
                        flood.refused_with_reason += 1;
                    }
                }
                _ if closed_under_the_call(&status) => {
                    flood.dropped.push(describe_with_sources(&status))
                }
                _ => flood.unclean.push(format!("{status:?}")),
            },
        }
    }
    flood
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_connections_are_served_or_refused_cleanly() {
    // ERR-3 for connections: served, or refused at once (UNAVAILABLE, or the connection
    // closed under the call); never a hang, and the server never falls.
    let binary = license_server_binary().expect("the license-server binary");
    let folder = tempfile::tempdir().unwrap();
    let tokens = write_tokens_file(folder.path()).unwrap();
    let data = folder.path().join("data");
    let mut server = ServerProcess::start(&binary, &data, &tokens, &[])
        .await
        .unwrap();
    let channel = Channel::from_shared(server.address.clone())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let request = process_staff(proto::IssueLicenseRequest {
        license: "FLOOD".into(),
        r#type: "school".into(),
        seats: 5,
        valid_from: "2020-01-01T00:00:00Z".into(),
        valid_until: "2099-12-31T23:59:59Z".into(),
        admins: vec![ADMIN.into()],
    });
    let issued_at = LicenseCommandsClient::new(channel.clone())
        .issue_license(request)
        .await
        .unwrap()
        .into_inner()
        .position;
    // The flood reads the license: wait until the projections have it (a CI run's flood
    // read it first, and two calls were NOT_FOUND).
    LicenseQueriesClient::new(channel)
        .get_license(crate::at_least(process_staff(license("FLOOD")), issued_at))
        .await
        .expect("the issued license is readable");

    // Under the default limit (4,096) every connection is served and none is refused. On
    // loaded machines a few dozen of a thousand simultaneous new connections have been seen
    // to end in "transport error" (the client's connection failed under the call) while the
    // server was far below its limit (twice in CI); the cause was not found and it did not
    // reproduce in 40 runs here, loaded or not, so the failures now print their error chain
    // and the server's last lines. A client
    // retries that on a new connection, so the test does too, and each retried call must be
    // served; more than a few such failures, or any refusal, fails the test.
    let overflows_before = listen_overflows();
    let outcome = flood(&server.address).await;
    let overflows = listen_overflows().zip(overflows_before).map(|(a, b)| a - b);
    println!(
        "1,000 connections under the default limit: {} served, {} reset and retried, {overflows:?} listen overflows",
        outcome.served,
        outcome.dropped.len()
    );
    let context = format!(
        "{outcome:?}\nthe server's last lines:\n{}",
        server.recent_output()
    );
    assert!(outcome.unclean.is_empty(), "{context}");
    assert_eq!(outcome.unavailable, 0, "nothing is refused: {context}");
    assert!(
        outcome.dropped.len() <= FLOOD_RESETS_TOLERATED_MAX,
        "more connections reset than a loaded loopback explains: {context}"
    );
    for _ in &outcome.dropped {
        read_flood_license(&server.address)
            .await
            .unwrap_or_else(|status| panic!("a retried call is served: {status:?}\n{context}"));
    }
    assert!(!server.has_exited());
    server.stop().await.unwrap();

    // With a limit of 300, the rest are refused cleanly and the server keeps serving.
    let limit = 300;
    let mut server = ServerProcess::start(
        &binary,
        &data,
        &tokens,
        &["--connections-max".into(), limit.to_string()],
    )
    .await
    .unwrap();
    // A refused connection's first call is answered UNAVAILABLE with the reason before the
    // GOAWAY goes out, so the clients learn why and that they may retry. (When the GOAWAY
    // went out right after the handshake, a loaded CI run saw all 700 refused calls closed
    // without an answer.) A refused connection gets no answer only when more than 1,024
    // refusals are in flight, which a flood of 1,000 cannot reach, or when its call comes
    // later than 2 s; so at least half the refusals must carry the reason.
    let outcome = flood(&server.address).await;
    println!("1,000 connections against --connections-max {limit}: {outcome:?}");
    assert!(outcome.unclean.is_empty(), "{outcome:?}");
    assert!(outcome.served >= 1, "{outcome:?}");
    assert!(outcome.served <= limit, "{outcome:?}");
    let refused = FLOOD_CONNECTIONS - outcome.served;
    assert!(
        outcome.refused_with_reason * 2 >= refused,
        "refused calls are answered UNAVAILABLE with the reason: {outcome:?}"
    );
    assert!(!server.has_exited());
    serving_again_after_a_flood(&server.address).await;
    server.stop().await.unwrap();
}

/// Returns once a new connection's call is served after a flood. The flood's connections
/// are closed, but the server frees their places only as it notices each close; until then
/// it may still refuse a new one, answering UNAVAILABLE or closing it under the call (seen:
/// Internal, GOAWAY NO_ERROR), as a client told "retry later" would find. So this retries
/// those, as such a client does, a bounded number of times.
async fn serving_again_after_a_flood(address: &str) {
    let mut refusals = 0;
    loop {
        match read_flood_license(address).await {
            Ok(_) => return,
            Err(status)
                if (status.code() == Code::Unavailable || closed_under_the_call(&status))
                    && refusals < RETRIES_AFTER_FLOOD_MAX =>
            {
                refusals += 1;
                tokio::time::sleep(Duration::from_millis(RETRY_AFTER_FLOOD_PAUSE_MS)).await;
            }
            Err(status) => panic!("not serving after the flood ({refusals} refusals): {status:?}"),
        }
    }
}

/// Reads the flood's license over a new connection of its own.
async fn read_flood_license(address: &str) -> Result<(), Status> {
    let channel = Channel::from_shared(address.to_owned())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let request = process_staff(license("FLOOD"));
    LicenseQueriesClient::new(channel)
        .get_license(request)
        .await
        .map(|_| ())
}

/// How often a client retries a refused call after the flood has closed its connections.
const RETRIES_AFTER_FLOOD_MAX: u32 = 100;
/// The pause between those retries (the whole wait is at most 5 s).
const RETRY_AFTER_FLOOD_PAUSE_MS: u64 = 50;
