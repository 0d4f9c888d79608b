//! The server under load: the real `license-server` binary as a child process on a fresh data
//! directory, with a tokens file of our own and a free loopback port.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use proto::license_commands_client::LicenseCommandsClient;
use proto::license_queries_client::LicenseQueriesClient;
use tonic::transport::{Channel, Endpoint};

/// How long the server may take to start answering.
const START_WAIT_MS: u64 = 60_000;
/// How long the server may take to shut down after SIGTERM (it writes its snapshot).
const STOP_WAIT_MS: u64 = 120_000;

pub const STAFF_TOKEN: &str = "loadgen-staff-token-0123456789";
pub const USER_TOKEN: &str = "loadgen-user-token-0123456789ab";

pub struct ServerProcess {
    child: tokio::process::Child,
    pid: u32,
    pub address: String,
    pub data_dir: PathBuf,
}

/// A loopback port nobody listens on right now.
pub fn free_port() -> Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

impl ServerProcess {
    /// Starts the server on `data_dir` (made if missing) and waits until it answers.
    pub async fn start(binary: &Path, data_dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(data_dir)?;
        let tokens = data_dir.join("loadgen-tokens.txt");
        std::fs::write(&tokens, format!("staff {STAFF_TOKEN}\nuser {USER_TOKEN}\n"))?;
        let port = free_port()?;
        let address = format!("127.0.0.1:{port}");
        let log = std::fs::File::create(data_dir.join("server.log"))?;
        let child = tokio::process::Command::new(binary)
            .arg("--listen")
            .arg(&address)
            .arg("--data-dir")
            .arg(data_dir)
            .arg("--tokens-file")
            .arg(&tokens)
            .env("RUST_LOG", "warn")
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("cannot start {}", binary.display()))?;
        let pid = child.id().context("the server exited at once")?;
        let mut server = Self {
            child,
            pid,
            address,
            data_dir: data_dir.to_owned(),
        };
        let started = Instant::now();
        loop {
            if let Some(status) = server.child.try_wait()? {
                bail!(
                    "the server exited with {status} before answering; its log: {}",
                    server.data_dir.join("server.log").display()
                );
            }
            if let Ok(mut queries) = server.queries().await {
                // Any answer (even NOT_FOUND) means the gRPC service is up.
                let probe = queries
                    .get_license(authorized(
                        proto::LicenseRef {
                            license: "probe".into(),
                        },
                        STAFF_TOKEN,
                        None,
                    ))
                    .await;
                if probe.is_ok()
                    || probe
                        .as_ref()
                        .is_err_and(|s| s.code() != tonic::Code::Unavailable)
                {
                    return Ok(server);
                }
            }
            if started.elapsed() > Duration::from_millis(START_WAIT_MS) {
                bail!("the server did not answer within {START_WAIT_MS} ms");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn channel(&self) -> Result<Channel> {
        Ok(Endpoint::from_shared(format!("http://{}", self.address))?
            .tcp_nodelay(true)
            .connect()
            .await?)
    }

    pub async fn commands(&self) -> Result<LicenseCommandsClient<Channel>> {
        Ok(LicenseCommandsClient::new(self.channel().await?)
            .max_decoding_message_size(64 * 1024 * 1024)
            .max_encoding_message_size(64 * 1024 * 1024))
    }

    pub async fn queries(&self) -> Result<LicenseQueriesClient<Channel>> {
        Ok(LicenseQueriesClient::new(self.channel().await?)
            .max_decoding_message_size(64 * 1024 * 1024))
    }

    fn status_field_kib(&self, field: &str) -> Result<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid))?;
        status
            .lines()
            .find_map(|line| line.strip_prefix(field))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
            .with_context(|| format!("no {field} in /proc/{}/status", self.pid))
    }

    /// The server's peak resident memory so far (VmHWM), in MiB.
    pub fn peak_rss_mib(&self) -> Result<f64> {
        Ok(self.status_field_kib("VmHWM:")? as f64 / 1024.0)
    }

    /// The server's resident memory now (VmRSS), in MiB.
    pub fn rss_mib(&self) -> Result<f64> {
        Ok(self.status_field_kib("VmRSS:")? as f64 / 1024.0)
    }

    /// The server's CPU time so far (user + system), in seconds.
    pub fn cpu_seconds(&self) -> Result<f64> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid))?;
        // Fields after the command name (which may hold spaces) start after the last ')'.
        let rest = stat
            .rsplit_once(')')
            .map(|(_, rest)| rest)
            .context("unreadable /proc stat")?;
        let fields: Vec<&str> = rest.split_whitespace().collect();
        // utime and stime are fields 14 and 15 of the whole line, 12 and 13 after ')'.
        let ticks: u64 = fields[11].parse::<u64>()? + fields[12].parse::<u64>()?;
        Ok(ticks as f64 / 100.0)
    }

    /// SIGTERM, then wait for a graceful exit.
    pub async fn stop(mut self) -> Result<()> {
        let _ = std::process::Command::new("kill")
            .arg("-TERM")
            .arg(self.pid.to_string())
            .status();
        match tokio::time::timeout(Duration::from_millis(STOP_WAIT_MS), self.child.wait()).await {
            Ok(status) => {
                let status = status?;
                if !status.success() {
                    bail!(
                        "the server exited with {status}; its log: {}",
                        self.data_dir.join("server.log").display()
                    );
                }
                Ok(())
            }
            Err(_) => {
                self.child.kill().await?;
                bail!("the server did not stop within {STOP_WAIT_MS} ms of SIGTERM")
            }
        }
    }
}

/// A request with the bearer token and, for user tokens, the actor.
pub fn authorized<T>(message: T, token: &str, actor: Option<&str>) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    let metadata = request.metadata_mut();
    metadata.insert(
        "authorization",
        format!("Bearer {token}").parse().expect("ascii token"),
    );
    if let Some(actor) = actor {
        metadata.insert("x-actor", actor.parse().expect("ascii actor"));
    }
    request
}

/// A fresh temporary directory under `work_dir`; kept on disk when `keep` is set.
pub fn temp_dir(work_dir: &Path, prefix: &str, keep: bool) -> Result<TempDir> {
    let dir = tempfile::Builder::new()
        .prefix(prefix)
        .tempdir_in(work_dir)
        .with_context(|| format!("cannot make a directory in {}", work_dir.display()))?;
    Ok(TempDir {
        dir: Some(dir),
        keep,
    })
}

pub struct TempDir {
    dir: Option<tempfile::TempDir>,
    keep: bool,
}

impl TempDir {
    pub fn path(&self) -> &Path {
        self.dir.as_ref().expect("present until drop").path()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if let Some(dir) = self.dir.take()
            && self.keep
        {
            eprintln!("kept {}", dir.keep().display());
        }
    }
}
