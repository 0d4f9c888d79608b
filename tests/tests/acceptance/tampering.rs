//! AUD-3 at start-up, end to end (issue 8): the real server, started on a copy of a data
//! directory whose stored events were edited (CRC fixed, so only the hash chain can tell),
//! deleted or reordered, refuses to start, and its error names the first broken event.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use ledger::tamper::{delete_record, edit_payload, record_ranges as records, swap_records};
use proto::license_commands_client::LicenseCommandsClient;
use server::{ManualClock, Scope, ServerConfig, Tokens};
use tonic::Request;

const STAFF: &str = "staff-token-for-tampering";

fn config(dir: &Path) -> ServerConfig {
    let mut tokens = Tokens::new();
    tokens.insert(STAFF, Scope::Staff);
    let start = DateTime::parse_from_rfc3339("2026-09-01T00:00:00Z")
        .unwrap()
        .with_timezone(&Utc);
    ServerConfig::embedded(dir, tokens, Arc::new(ManualClock::new(start)))
}

fn staff<T>(message: T) -> Request<T> {
    crate::with_bearer(STAFF, message)
}

/// Serves a few commands on `dir` and stops: license L1 with three users, then L2.
async fn build(dir: &Path) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(server::run(listener, config(dir), async {
        let _ = stopped.await;
    }));
    let mut commands = LicenseCommandsClient::connect(address).await.unwrap();
    for (license, emails) in [("L1", "a@north.edu,b@north.edu,c@north.edu"), ("L2", "")] {
        commands
            .issue_license(staff(proto::IssueLicenseRequest {
                license: license.into(),
                r#type: "school".into(),
                seats: 5,
                valid_from: "2026-08-01T00:00:00Z".into(),
                valid_until: "2027-07-31T23:59:59Z".into(),
                admins: vec!["admin@north.edu".into()],
            }))
            .await
            .unwrap();
        if !emails.is_empty() {
            commands
                .add_users_by_email(staff(proto::AddUsersByEmailRequest {
                    license: license.into(),
                    emails: emails.into(),
                }))
                .await
                .unwrap();
        }
    }
    stop.send(()).unwrap();
    task.await.unwrap().unwrap();
}

/// Starts the real server on `dir` with a shutdown that is already due: a log that opens
/// gives `Ok` at once, a refused one the start-up error.
async fn start_and_stop(dir: &Path) -> Result<(), server::ServerError> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    server::run(listener, config(dir), async {}).await
}

fn segment(data: &Path) -> PathBuf {
    data.join("log")
        .join("segments")
        .join(format!("{:012}.seg", 0))
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

/// AUD-3: an edited, a deleted and two swapped events each keep the server from starting;
/// the error says it refuses to start and names the first broken event's position, its
/// stream and why. The untampered copy starts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tampered_log_keeps_the_server_from_starting() {
    let tmp = tempfile::tempdir().unwrap();
    let original_dir = tmp.path().join("original");
    build(&original_dir).await;
    let original = std::fs::read(segment(&original_dir)).unwrap();
    // L1 issued, its three users added, then L2 issued: event 2 (ledger position 1) is one
    // of L1's.
    assert!(records(&original).len() >= 3, "the server wrote the events");

    let cases: [(&str, Vec<u8>, &[&str]); 3] = [
        (
            "edited",
            edit_payload(&original, 1),
            &["ledger position 1,", "\"license-L1\"", "own hash", "edited"],
        ),
        (
            "deleted",
            delete_record(&original, 1),
            &["ledger position 1,", "missing or out of order"],
        ),
        (
            "swapped",
            swap_records(&original, 1),
            &["ledger position 1,", "missing or out of order"],
        ),
    ];
    for (what, bytes, expected) in cases {
        let copy = tmp.path().join(what);
        copy_dir(&original_dir, &copy);
        std::fs::write(segment(&copy), bytes).unwrap();
        let error = start_and_stop(&copy)
            .await
            .expect_err("a tampered data directory must not serve");
        let message = error.to_string();
        assert!(message.contains("refuses to start"), "{what}: {message}");
        for part in expected {
            assert!(
                message.contains(part),
                "{what}: {part:?} missing in {message}"
            );
        }
    }

    let copy = tmp.path().join("untampered");
    copy_dir(&original_dir, &copy);
    start_and_stop(&copy)
        .await
        .expect("the untampered copy starts");
}
