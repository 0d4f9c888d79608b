//! A fresh ledger for one scenario file: a temporary data directory, the server started
//! in-process on an ephemeral loopback port with a manual clock and three configured tokens,
//! and a channel to it. `stop` shuts the server down through its shutdown future and only
//! then removes the data directory.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use server::{ManualClock, Scope, ServerConfig, ServerError, Tokens};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::transport::{Channel, Endpoint};

/// How long the server may take to finish in-flight calls and close its log.
pub const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(30);
/// How long opening the connection may take; the listener is bound before the server
/// runs, so this only bounds a server that never accepts.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The bearer tokens the runner configures, one per scope.
#[derive(Clone)]
pub struct Credentials {
    pub staff: String,
    pub system: String,
    pub user: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Credentials(staff, system, user)")
    }
}

pub struct Ledger {
    pub clock: Arc<ManualClock>,
    pub channel: Channel,
    pub credentials: Credentials,
    shutdown: Option<oneshot::Sender<()>>,
    /// `None` once the server has been seen to stop.
    server: Option<JoinHandle<Result<(), ServerError>>>,
    /// Kept until the server has stopped: dropping it removes the directory.
    data_directory: tempfile::TempDir,
}

impl Ledger {
    pub async fn start(start: DateTime<Utc>) -> Result<Self, String> {
        let data_directory = tempfile::Builder::new()
            .prefix("scenario-ledger-")
            .tempdir()
            .map_err(|error| format!("cannot make a temporary data directory: {error}"))?;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|error| format!("cannot bind a loopback port: {error}"))?;
        let address = listener
            .local_addr()
            .map_err(|error| format!("cannot read the bound address: {error}"))?;
        let credentials = Credentials {
            staff: server::auth::random_token(),
            system: server::auth::random_token(),
            user: server::auth::random_token(),
        };
        let mut tokens = Tokens::new();
        tokens.insert(credentials.staff.clone(), Scope::Staff);
        tokens.insert(credentials.system.clone(), Scope::System);
        tokens.insert(credentials.user.clone(), Scope::User);
        let clock = Arc::new(ManualClock::new(start));
        let config = ServerConfig::embedded(data_directory.path(), tokens, clock.clone());
        let (shutdown, shutdown_requested) = oneshot::channel::<()>();
        let server = tokio::spawn(server::run(listener, config, async move {
            // A dropped sender also means "stop": the runner is gone.
            let _ = shutdown_requested.await;
        }));
        // Lazy: the first call connects. The listener is already bound, so a connection
        // made before the server task accepts waits in the backlog instead of failing.
        let channel = Endpoint::from_shared(format!("http://{address}"))
            .map_err(|error| format!("bad endpoint {address}: {error}"))?
            .connect_timeout(CONNECT_TIMEOUT)
            .connect_lazy();
        Ok(Self {
            clock,
            channel,
            credentials,
            shutdown: Some(shutdown),
            server: Some(server),
            data_directory,
        })
    }

    /// Whether the server task has ended (it should run until `stop`).
    pub fn has_stopped(&self) -> bool {
        self.server.as_ref().is_none_or(JoinHandle::is_finished)
    }

    /// Completes when the server task ends, with why; never completes if it already ended
    /// and was reported. Dropping this future leaves the server running.
    pub async fn stopped(&mut self) -> String {
        let Some(server) = self.server.as_mut() else {
            return std::future::pending().await;
        };
        let ended = server.await;
        self.server = None;
        describe_end(ended, "the server stopped during the scenario")
    }

    /// Waits at most `limit` for a server that is on its way down (a call just found the
    /// port closed) and says why it stopped; `None` when it is still running.
    pub async fn stopped_within(&mut self, limit: Duration) -> Option<String> {
        tokio::time::timeout(limit, self.stopped()).await.ok()
    }

    /// Asks the server to shut down, waits for it (bounded), then removes the data
    /// directory. The caller drops its clients first, so that no open call keeps the
    /// server waiting.
    pub async fn stop(mut self) -> Result<(), String> {
        // The runner's own connection goes first, so that the graceful shutdown has no
        // idle connection of ours to wait for.
        drop(self.channel);
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        let result = match self.server.take() {
            // It already stopped, and that was reported.
            None => Ok(()),
            Some(mut server) => match tokio::time::timeout(SHUTDOWN_TIMEOUT, &mut server).await {
                Ok(Ok(Ok(()))) => Ok(()),
                Ok(ended) => Err(describe_end(ended, "the server failed while shutting down")),
                Err(_) => {
                    server.abort();
                    Err(format!(
                        "the server did not shut down within {} s of its shutdown signal",
                        SHUTDOWN_TIMEOUT.as_secs()
                    ))
                }
            },
        };
        if let Err(error) = self.data_directory.close() {
            return result.and(Err(format!("cannot remove the data directory: {error}")));
        }
        result
    }
}

fn describe_end(
    ended: Result<Result<(), ServerError>, tokio::task::JoinError>,
    context: &str,
) -> String {
    match ended {
        Ok(Ok(())) => format!("{context}: run returned Ok before it was asked to stop"),
        Ok(Err(error)) => format!("{context}: {error}"),
        Err(join) if join.is_panic() => format!("{context}: it panicked"),
        Err(join) => format!("{context}: {join}"),
    }
}
