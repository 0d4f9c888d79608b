//! The real `license-server` binary as a child process: found (or built) once, started on
//! port 0 over a data directory, killed with SIGKILL or stopped with SIGTERM, and measured
//! (its peak resident memory from `/proc/<pid>/status`).

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use super::HarnessError;

/// The environment variable that names a ready `license-server` binary; without it the
/// harness builds one with the cargo that runs it.
pub const SERVER_BINARY_VARIABLE: &str = "LICENSE_SERVER_BIN";
/// The staff token every harness server accepts.
pub const STAFF_TOKEN: &str = "staff-token-for-the-reliability-harness";
/// The system token every harness server accepts.
pub const SYSTEM_TOKEN: &str = "system-token-for-the-reliability-harness";
/// The user token every harness server accepts (with `x-actor`).
pub const USER_TOKEN: &str = "user-token-for-the-reliability-harness";
/// How long a server may take to say where it listens, or to stop after SIGTERM.
pub const SERVER_START_STOP_TIMEOUT_SECONDS: u64 = 60;
/// How many lines of the server's output are kept for failure reports.
const OUTPUT_LINES_KEPT_MAX: usize = 200;

/// The `license-server` binary to run: `$LICENSE_SERVER_BIN` when set, else the one
/// `cargo build -p server --bin license-server` produces (with `--release` when this
/// harness is itself an optimised build, else with the `test` profile that `cargo test`
/// has already compiled most dependencies for). Cargo prints where the binary is, so the
/// target directory (`CARGO_TARGET_DIR` included) never has to be guessed. Built once per
/// process.
pub fn license_server_binary() -> Result<PathBuf, HarnessError> {
    static BINARY: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    BINARY
        .get_or_init(|| {
            if let Some(path) = std::env::var_os(SERVER_BINARY_VARIABLE) {
                let path = PathBuf::from(path);
                return if path.is_file() {
                    Ok(path)
                } else {
                    Err(format!(
                        "{SERVER_BINARY_VARIABLE}={} is not a file",
                        path.display()
                    ))
                };
            }
            build_license_server()
        })
        .clone()
        .map_err(HarnessError::Binary)
}

fn build_license_server() -> Result<PathBuf, String> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| env!("CARGO").into());
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests crate lives inside the workspace");
    let mut command = std::process::Command::new(cargo);
    command.current_dir(workspace).args([
        "build",
        "--quiet",
        "-p",
        "server",
        "--bin",
        "license-server",
        "--message-format=json",
    ]);
    if cfg!(debug_assertions) {
        command.args(["--profile", "test"]);
    } else {
        command.arg("--release");
    }
    let output = command
        .stderr(Stdio::piped())
        .output()
        .map_err(|e| format!("cannot run cargo to build license-server: {e}"))?;
    if !output.status.success() {
        return Err(format!(
            "cargo build -p server --bin license-server failed: {}",
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|message| message["reason"] == "compiler-artifact")
        .filter(|message| message["target"]["name"] == "license-server")
        .find_map(|message| message["executable"].as_str().map(PathBuf::from))
        .ok_or_else(|| "cargo built license-server but did not say where it is".to_owned())
}

/// Writes the tokens file every harness server uses and returns its path.
pub fn write_tokens_file(dir: &Path) -> Result<PathBuf, HarnessError> {
    let path = dir.join("tokens.txt");
    std::fs::write(
        &path,
        format!("staff {STAFF_TOKEN}\nsystem {SYSTEM_TOKEN}\nuser {USER_TOKEN}\n"),
    )?;
    Ok(path)
}

/// A running `license-server` child process.
pub struct ServerProcess {
    child: Child,
    pid: u32,
    /// `http://127.0.0.1:PORT`, read from the server's own "serving" log line.
    pub address: String,
    output: Arc<Mutex<VecDeque<String>>>,
}

impl ServerProcess {
    /// Starts the binary on `127.0.0.1:0` over `data_dir` with the harness tokens, plus
    /// `extra_flags`, and waits until it says which port it listens on.
    pub async fn start(
        binary: &Path,
        data_dir: &Path,
        tokens_file: &Path,
        extra_flags: &[String],
    ) -> Result<Self, HarnessError> {
        let mut child = Command::new(binary)
            .arg("--listen")
            .arg("127.0.0.1:0")
            .arg("--data-dir")
            .arg(data_dir)
            .arg("--tokens-file")
            .arg(tokens_file)
            .arg("--json-logs")
            .args(extra_flags)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| HarnessError::Binary(format!("cannot start {}: {e}", binary.display())))?;
        let pid = child.id().expect("a child that was just spawned has a pid");
        let output = Arc::new(Mutex::new(VecDeque::new()));
        let (address_sender, address_receiver) = tokio::sync::oneshot::channel::<String>();
        let address_sender = Arc::new(Mutex::new(Some(address_sender)));
        let stdout = child.stdout.take().expect("stdout is piped");
        let stderr = child.stderr.take().expect("stderr is piped");
        for stream in [
            Box::new(stdout) as Box<dyn tokio::io::AsyncRead + Send + Unpin>,
            Box::new(stderr),
        ] {
            let output = output.clone();
            let address_sender = address_sender.clone();
            tokio::spawn(async move {
                let mut lines = BufReader::new(stream).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    if let Some(address) = serving_address(&line)
                        && let Some(sender) = address_sender
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .take()
                    {
                        let _ = sender.send(address);
                    }
                    let mut kept = output.lock().unwrap_or_else(|p| p.into_inner());
                    if kept.len() == OUTPUT_LINES_KEPT_MAX {
                        kept.pop_front();
                    }
                    kept.push_back(line);
                }
            });
        }
        let mut server = Self {
            child,
            pid,
            address: String::new(),
            output,
        };
        match tokio::time::timeout(
            Duration::from_secs(SERVER_START_STOP_TIMEOUT_SECONDS),
            address_receiver,
        )
        .await
        {
            Ok(Ok(address)) => {
                server.address = format!("http://{address}");
                Ok(server)
            }
            _ => {
                let _ = server.child.start_kill();
                let status = server.child.wait().await.ok();
                Err(HarnessError::Server(format!(
                    "the server did not say where it listens (exit {status:?}); its output:\n{}",
                    server.recent_output()
                )))
            }
        }
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// SIGKILL: the process ends at once, without any of its shutdown work.
    pub async fn kill(mut self) -> Result<(), HarnessError> {
        self.child.kill().await?;
        Ok(())
    }

    /// SIGTERM, then waits for a clean exit (status 0) within the timeout.
    pub async fn stop(mut self) -> Result<(), HarnessError> {
        let pid = libc::pid_t::try_from(self.pid).expect("a pid fits pid_t");
        // SAFETY: `kill` has no memory effects; the pid is our own child, not yet reaped
        // (we still hold its `Child`), so it cannot name another process.
        let sent = unsafe { libc::kill(pid, libc::SIGTERM) };
        if sent != 0 {
            return Err(std::io::Error::last_os_error().into());
        }
        let status = tokio::time::timeout(
            Duration::from_secs(SERVER_START_STOP_TIMEOUT_SECONDS),
            self.child.wait(),
        )
        .await
        .map_err(|_| {
            HarnessError::Server(format!(
                "the server did not stop within {SERVER_START_STOP_TIMEOUT_SECONDS} s of SIGTERM; its output:\n{}",
                self.recent_output()
            ))
        })??;
        if status.success() {
            Ok(())
        } else {
            Err(HarnessError::Server(format!(
                "the server exited with {status} after SIGTERM; its output:\n{}",
                self.recent_output()
            )))
        }
    }

    /// Whether the process has exited (crashed) on its own.
    pub fn has_exited(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(Some(_)))
    }

    /// The process's peak resident set size (`VmHWM`), in bytes.
    pub fn peak_resident_bytes(&self) -> Option<u64> {
        status_field_kib(self.pid, "VmHWM:").map(|kib| kib * 1024)
    }

    /// The process's current resident set size (`VmRSS`), in bytes.
    pub fn resident_bytes(&self) -> Option<u64> {
        status_field_kib(self.pid, "VmRSS:").map(|kib| kib * 1024)
    }

    /// The process's open file descriptors.
    pub fn open_files(&self) -> Option<usize> {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid))
            .ok()
            .map(|entries| entries.count())
    }

    /// The last lines the server printed, for failure reports.
    pub fn recent_output(&self) -> String {
        let kept = self.output.lock().unwrap_or_else(|p| p.into_inner());
        kept.iter().cloned().collect::<Vec<_>>().join("\n")
    }
}

/// A field of `/proc/<pid>/status` given in kB.
fn status_field_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix(field))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|kib| kib.parse().ok())
}

/// The address in the server's JSON "serving" log line (`"address":"Some(127.0.0.1:PORT)"`).
fn serving_address(line: &str) -> Option<String> {
    let value: serde_json::Value = serde_json::from_str(line).ok()?;
    if value["fields"]["message"] != "serving" {
        return None;
    }
    let address = value["fields"]["address"].as_str()?;
    let address = address
        .strip_prefix("Some(")
        .and_then(|rest| rest.strip_suffix(')'))
        .unwrap_or(address);
    Some(address.to_owned())
}

#[cfg(test)]
mod tests {
    use super::serving_address;

    #[test]
    fn the_serving_line_gives_the_address() {
        let line = r#"{"timestamp":"2026-01-01T00:00:00Z","level":"INFO","fields":{"message":"serving","address":"Some(127.0.0.1:40123)"},"target":"server"}"#;
        assert_eq!(serving_address(line).as_deref(), Some("127.0.0.1:40123"));
        let other = r#"{"fields":{"message":"stopped"}}"#;
        assert_eq!(serving_address(other), None);
        assert_eq!(serving_address("not json"), None);
    }
}
