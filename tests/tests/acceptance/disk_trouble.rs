//! A full or read-only disk under the real server (issue 8), on a tmpfs mounted for the test
//! (mounting needs root, as CI runs): a command the log cannot store is RESOURCE_EXHAUSTED
//! with a message an operator can act on, the server takes no command until it is restarted,
//! everything acknowledged before is there after a restart with space freed, and a data
//! directory on a read-only file system keeps the server from starting.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use proto::license_commands_client::LicenseCommandsClient;
use proto::license_queries_client::LicenseQueriesClient;
use server::{ManualClock, Scope, ServerConfig, Tokens};
use tonic::transport::Channel;
use tonic::{Code, Request};

const STAFF: &str = "staff-token-for-disk-trouble";
/// The longest a call or a shutdown may take before the test fails.
const CALL_TIMEOUT_SECONDS: u64 = 30;
/// How often a remount is tried, and the wait between two tries (2 s in all).
const REMOUNT_ATTEMPTS_MAX: u32 = 40;
const REMOUNT_RETRY_INTERVAL_MS: u64 = 50;
/// Commands sent after the disk filled up before the test gives up on seeing one refused.
const COMMANDS_AFTER_FULL_MAX: usize = 2_000;

/// A tmpfs mounted for one test, unmounted when dropped.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    /// Mounts a tmpfs of `size`. `None` when not running as root, where mounting is not
    /// possible: the test then says why and checks nothing (CI runs as root). As root, a
    /// failed mount fails the test.
    fn mount(size: &str) -> Option<Tmpfs> {
        let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        let root = status
            .lines()
            .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(2) == Some("0"));
        if !root {
            eprintln!("not root: this test needs root to mount a tmpfs");
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .output()
            .expect("mount runs");
        assert!(out.status.success(), "mount tmpfs: {out:?}");
        Some(Tmpfs { dir })
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Remounts with `options`. A remount read-only fails (EBUSY) while a file is still
    /// open for writing, and sled's background threads close theirs a moment after a
    /// store is dropped; so a failure is retried, a bounded number of times.
    fn remount(&self, options: &str) {
        let mut attempts = 0;
        loop {
            let out = Command::new("mount")
                .args(["-o", &format!("remount,{options}")])
                .arg(self.path())
                .output()
                .expect("mount runs");
            if out.status.success() {
                return;
            }
            attempts += 1;
            assert!(
                attempts < REMOUNT_ATTEMPTS_MAX,
                "remount {options}: {out:?}"
            );
            std::thread::sleep(Duration::from_millis(REMOUNT_RETRY_INTERVAL_MS));
        }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .output();
    }
}

/// Fills the file system at `dir` with one file until a write fails; returns the file.
fn fill_up(dir: &Path) -> PathBuf {
    use std::io::Write;
    let path = dir.join("filler");
    let mut file = std::fs::File::create(&path).unwrap();
    let block = vec![0x5a; 64 * 1024];
    while matches!(file.write(&block), Ok(n) if n > 0) {}
    while matches!(file.write(&block[..1]), Ok(n) if n > 0) {}
    path
}

struct Server {
    address: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<Result<(), server::ServerError>>,
}

fn config(dir: &Path) -> ServerConfig {
    let mut tokens = Tokens::new();
    tokens.insert(STAFF, Scope::Staff);
    let start = DateTime::parse_from_rfc3339("2026-09-01T00:00:00Z")
        .unwrap()
        .with_timezone(&Utc);
    ServerConfig::embedded(dir, tokens, Arc::new(ManualClock::new(start)))
}

impl Server {
    async fn start(dir: &Path) -> Server {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = format!("http://{}", listener.local_addr().unwrap());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(server::run(listener, config(dir), async {
            let _ = stopped.await;
        }));
        Server {
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

    /// Stops the server and returns how `run` ended: a server whose disk is full may fail
    /// to write its shutdown snapshot, which is not what these tests judge.
    async fn stop(mut self) -> Result<(), server::ServerError> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        tokio::time::timeout(Duration::from_secs(CALL_TIMEOUT_SECONDS), &mut self.task)
            .await
            .expect("the server stops within the timeout")
            .expect("the server task does not panic")
    }
}

fn staff<T>(message: T) -> Request<T> {
    crate::with_bearer(STAFF, message)
}

fn issue(license: &str) -> proto::IssueLicenseRequest {
    proto::IssueLicenseRequest {
        license: license.into(),
        r#type: "school".into(),
        seats: 5,
        valid_from: "2026-08-01T00:00:00Z".into(),
        valid_until: "2027-07-31T23:59:59Z".into(),
        admins: vec!["admin@north.edu".into()],
    }
}

/// A full disk while the server runs: the command that cannot be stored is refused with
/// RESOURCE_EXHAUSTED saying the disk is full and what to do, later commands are refused
/// the same way until a restart, and after a restart with space freed every license whose
/// issue was acknowledged is there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_commands_and_loses_nothing_acknowledged() {
    let Some(fs) = Tmpfs::mount("48m") else {
        return;
    };
    let data = fs.path().join("data");
    let server = Server::start(&data).await;
    let mut commands = LicenseCommandsClient::new(server.channel().await);
    let mut acknowledged = vec!["L0".to_owned()];
    commands.issue_license(staff(issue("L0"))).await.unwrap();

    let filler = fill_up(fs.path());
    // The log's last page may still hold a few small events; the first command that needs
    // a new page is refused.
    // Each issue carries a command id, so that the refused one can be retried with it.
    let with_id = |license: &str| {
        let mut request = staff(issue(license));
        request
            .metadata_mut()
            .insert("x-command-id", format!("issue-{license}").parse().unwrap());
        request
    };
    let mut refusal = None;
    for i in 1..=COMMANDS_AFTER_FULL_MAX {
        let license = format!("L{i}");
        match commands.issue_license(with_id(&license)).await {
            Ok(_) => acknowledged.push(license),
            Err(status) => {
                refusal = Some((status, license));
                break;
            }
        }
    }
    let (refusal, refused) = refusal.expect("a command is refused once the disk is full");
    assert_eq!(refusal.code(), Code::ResourceExhausted, "{refusal:?}");
    let message = refusal.message();
    for part in [
        "the disk is full",
        "not acknowledged",
        "free space",
        "restart the server",
    ] {
        assert!(message.contains(part), "{part:?} missing in {message}");
    }
    // The log takes no more appends until the restart, whatever the disk does meanwhile.
    std::fs::remove_file(&filler).unwrap();
    let again = commands
        .issue_license(staff(issue("after-the-failure")))
        .await
        .unwrap_err();
    assert_eq!(again.code(), Code::ResourceExhausted, "{again:?}");
    let _ = server.stop().await;

    let server = Server::start(&data).await;
    let mut queries = LicenseQueriesClient::new(server.channel().await);
    for (position, license) in acknowledged.iter().enumerate() {
        // Each issue is one event; wait until the projections have them all.
        let request = crate::at_least(
            staff(proto::LicenseRef {
                license: license.clone(),
            }),
            acknowledged.len() as u64,
        );
        let found = queries.get_license(request).await;
        assert!(
            found.is_ok(),
            "acknowledged license {license} (event {}) lost: {found:?}",
            position + 1
        );
    }
    let mut commands = LicenseCommandsClient::new(server.channel().await);
    commands
        .issue_license(staff(issue("after-the-restart")))
        .await
        .expect("with space freed and a restart, commands are taken again");
    // AUD-4: the full disk was not the command's outcome (the message says to retry with
    // the same x-command-id): the retry is decided again and applied, not refused from a
    // kept answer.
    commands
        .issue_license(with_id(&refused))
        .await
        .expect("the refused command, retried with its id after the restart, is applied");
    server.stop().await.unwrap();
}

/// A data directory on a read-only file system: the server refuses to start and says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_only_data_directory_keeps_the_server_from_starting() {
    let Some(fs) = Tmpfs::mount("48m") else {
        return;
    };
    let data = fs.path().join("data");
    let server = Server::start(&data).await;
    let mut commands = LicenseCommandsClient::new(server.channel().await);
    commands.issue_license(staff(issue("L1"))).await.unwrap();
    server.stop().await.unwrap();
    fs.remount("ro");

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let error = server::run(listener, config(&data), async {})
        .await
        .expect_err("a server must not start on a read-only data directory");
    let message = error.to_string();
    assert!(
        message.contains("read-only") && message.contains("refuses to start"),
        "{message}"
    );
}
