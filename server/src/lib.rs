//! The license ledger's gRPC service: commands, queries and the event feed, over the domain,
//! the ledger and the projections. Like mini-redis, the binary is thin: it parses flags and
//! calls `run(listener, config, shutdown)`, which tests call too, on port 0.

pub mod allocator;
pub mod auth;
pub mod clock;
pub mod commands;
pub mod connections;
pub mod core;
pub mod feed;
/// The checks of the fuzz targets `request` and `envelope` in `fuzz/`, shared with the stable
/// tests that replay the committed corpus; not part of the server's API.
#[doc(hidden)]
pub mod fuzz_checks;
pub mod history;
pub mod idempotency;
pub mod metrics;
pub mod projector;
pub mod queries;
pub mod requests;
pub mod status;

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;

pub use auth::{Scope, Tokens};
pub use clock::{Clock, ManualClock, SystemClock};

/// A time as the API writes it: RFC 3339 in UTC with `Z`, fractions of a second only when
/// there are any (`2027-07-31T23:59:59Z`).
pub fn time_text(at: chrono::DateTime<chrono::Utc>) -> String {
    at.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)
}

/// Where the aggregates' snapshot is kept in the server's store.
const SNAPSHOT_KEY: &[u8] = b"core";

/// Limits on what one request may ask of the server.
#[derive(Clone, Debug)]
pub struct Limits {
    /// The largest decoded gRPC message.
    pub message_bytes_max: usize,
    /// The most bytes one CSV import may stream.
    pub csv_import_bytes_max: u64,
    /// How long a query waits for the projections to reach `x-min-position`.
    pub read_your_writes_wait_ms: u64,
    /// The most concurrent HTTP/2 streams per connection.
    pub concurrent_streams_max: u32,
    /// The longest a call may run before it is cancelled.
    pub request_timeout_ms: u64,
    /// The most concurrent client connections; more are closed at once (see `connections`).
    pub connections_max: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            message_bytes_max: 16 * 1024 * 1024,
            csv_import_bytes_max: 512 * 1024 * 1024,
            read_your_writes_wait_ms: 5_000,
            concurrent_streams_max: 256,
            request_timeout_ms: 60_000,
            connections_max: connections::CONNECTIONS_MAX_DEFAULT,
        }
    }
}

/// Where the event log lives.
#[derive(Clone, Debug)]
pub enum Backend {
    /// The embedded segment-file log under `<data_dir>/log`.
    Embedded,
    /// A KurrentDB cluster (`kurrentdb://...`), when built with the `kurrentdb` feature.
    KurrentDb(String),
}

/// Everything `run` needs.
#[derive(Clone)]
pub struct ServerConfig {
    /// Holds the embedded log (`log/`), the projections (`projections/`) and the server's
    /// own caches (`server/`).
    pub data_dir: PathBuf,
    pub backend: Backend,
    pub tokens: Tokens,
    pub clock: Arc<dyn Clock>,
    pub limits: Limits,
    /// The embedded log's flush policy and queues. Every acknowledged append is always
    /// `fdatasync`ed first; `group_appends_max` bounds how many appends share one sync.
    pub embedded_options: ledger::EmbeddedOptions,
    /// Where to serve Prometheus metrics (`GET /metrics`); none when `None`.
    pub metrics_listener: Option<Arc<std::sync::Mutex<Option<std::net::TcpListener>>>>,
}

impl ServerConfig {
    /// The embedded store in `data_dir`, with default limits.
    pub fn embedded(data_dir: impl Into<PathBuf>, tokens: Tokens, clock: Arc<dyn Clock>) -> Self {
        Self {
            data_dir: data_dir.into(),
            backend: Backend::Embedded,
            tokens,
            clock,
            limits: Limits::default(),
            embedded_options: ledger::EmbeddedOptions::default(),
            metrics_listener: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("the event log failed: {0}")]
    Ledger(#[from] ledger::LedgerError),
    #[error("the server's store failed: {0}")]
    Store(String),
    #[error("an event in the log cannot be read: {0}")]
    Decode(String),
    #[error("transport error: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    #[error("configuration error: {0}")]
    Config(String),
}

/// Serves the API on `listener` until `shutdown` completes, then stops accepting, lets
/// in-flight calls finish, and closes the log.
pub async fn run(
    listener: tokio::net::TcpListener,
    config: ServerConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    use std::time::Duration;

    use proto::event_feed_server::EventFeedServer;
    use proto::license_commands_server::LicenseCommandsServer;
    use proto::license_queries_server::LicenseQueriesServer;

    std::fs::create_dir_all(&config.data_dir)?;
    // The embedded log is kept by its own type too, so that shutdown can close it: its
    // directory can then be opened again in the same process (a restart in a test).
    let mut embedded: Option<Arc<ledger::EmbeddedLog>> = None;
    let log: Arc<dyn ledger::EventLog> = match &config.backend {
        Backend::Embedded => {
            let log = Arc::new(ledger::EmbeddedLog::open(
                config.data_dir.join("log"),
                config.embedded_options.clone(),
            )?);
            embedded = Some(log.clone());
            log
        }
        Backend::KurrentDb(url) => open_kurrentdb(url).await?,
    };
    let store = ledger::open_sled(&config.data_dir.join("server"))
        .map_err(|e| ServerError::Store(e.to_string()))?;
    let snapshots = store
        .open_tree("snapshots")
        .map_err(|e| ServerError::Store(e.to_string()))?;
    // Snapshots serve the embedded log only: with one writer, the aggregates at shutdown are
    // one consistent cut of the log. A KurrentDB cluster has other writers.
    let snapshot = match embedded {
        Some(_) => snapshots
            .get(SNAPSHOT_KEY)
            .map_err(|e| ServerError::Store(e.to_string()))?,
        None => None,
    };
    let core = Arc::new(
        core::Core::open_from(log.clone(), config.clock.clone(), snapshot.as_deref())
            .await
            .map_err(|error| ServerError::Decode(error.to_string()))?,
    );
    let outcomes = idempotency::Outcomes::new(
        store
            .open_tree("command_outcomes")
            .map_err(|e| ServerError::Store(e.to_string()))?,
        store
            .open_tree("command_refusals")
            .map_err(|e| ServerError::Store(e.to_string()))?,
    );
    let limits = &config.limits;
    let metrics = metrics::Metrics::default();
    let commands = LicenseCommandsServer::new(commands::CommandService {
        core: core.clone(),
        tokens: config.tokens.clone(),
        outcomes,
        csv_import_bytes_max: limits.csv_import_bytes_max,
        metrics: metrics.clone(),
    })
    .max_decoding_message_size(limits.message_bytes_max)
    .max_encoding_message_size(limits.message_bytes_max);
    let projections = Arc::new(
        projections::Projections::open(config.data_dir.join("projections"))
            .map_err(|e| ServerError::Store(e.to_string()))?,
    );
    // Turns true when shutdown begins: the feed's subscriptions and the projector stop.
    let (closing_sender, closing) = tokio::sync::watch::channel(false);
    let closing_sender = Arc::new(closing_sender);
    let projector = tokio::spawn(projector::run(
        log.clone(),
        projections.clone(),
        closing.clone(),
    ));
    let metrics_server = match config
        .metrics_listener
        .as_ref()
        .and_then(|slot| slot.lock().unwrap_or_else(|p| p.into_inner()).take())
    {
        Some(std_listener) => {
            std_listener.set_nonblocking(true)?;
            let listener = tokio::net::TcpListener::from_std(std_listener)?;
            let head_log = embedded.clone();
            let head_projections = projections.clone();
            let positions: Arc<dyn Fn() -> (u64, u64) + Send + Sync> = Arc::new(move || {
                // The embedded log's count of durable events is the API position of its
                // last event.
                let head = head_log.as_ref().map_or(0, |log| log.durable_position());
                (head, head_projections.checkpoint().unwrap_or(0))
            });
            Some(tokio::spawn(metrics::serve(
                listener,
                metrics.clone(),
                positions,
            )))
        }
        None => None,
    };
    let queries = LicenseQueriesServer::new(queries::QueryService {
        core: core.clone(),
        projections: projections.clone(),
        tokens: config.tokens.clone(),
        read_your_writes_wait_ms: limits.read_your_writes_wait_ms,
    })
    .max_decoding_message_size(limits.message_bytes_max)
    .max_encoding_message_size(limits.message_bytes_max);
    let shutdown_begins = closing_sender.clone();
    let shutdown = async move {
        shutdown.await;
        let _ = shutdown_begins.send(true);
    };
    let feed = EventFeedServer::new(feed::FeedService {
        core: core.clone(),
        tokens: config.tokens.clone(),
        closing: closing.clone(),
    })
    .max_decoding_message_size(limits.message_bytes_max);
    let (health_reporter, health) = tonic_health::server::health_reporter();
    health_reporter
        .set_serving::<LicenseCommandsServer<commands::CommandService>>()
        .await;
    health_reporter
        .set_serving::<LicenseQueriesServer<queries::QueryService>>()
        .await;
    // Both reflection versions: grpcurl and most tools ask for v1 first and fall back to
    // v1alpha, which some clients still only speak.
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(|e| ServerError::Config(e.to_string()))?;
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
        .build_v1alpha()
        .map_err(|e| ServerError::Config(e.to_string()))?;
    tracing::info!(address = ?listener.local_addr().ok(), "serving");
    let (accepted, accept_task) = connections::accept_limited(listener, limits.connections_max);
    let served = tonic::transport::Server::builder()
        .trace_fn(|request| tracing::info_span!("rpc", path = %request.uri().path()))
        .layer(tower::util::MapResponseLayer::new(
            status::size_limit_as_resource_exhausted,
        ))
        .max_concurrent_streams(limits.concurrent_streams_max)
        .timeout(Duration::from_millis(limits.request_timeout_ms))
        .add_service(health)
        .add_service(reflection)
        .add_service(reflection_v1alpha)
        .add_service(commands)
        .add_service(queries)
        .add_service(feed)
        .serve_with_incoming_shutdown(
            tokio_stream::wrappers::ReceiverStream::new(accepted),
            shutdown,
        )
        .await;
    accept_task.abort();
    let _ = accept_task.await;
    // Every call has finished. Stop the projector and the metrics endpoint and wait for
    // them, so that nothing holds the stores when `run` returns (the same directory may be
    // opened again at once); then flush the caches. The log itself is already durable.
    let _ = closing_sender.send(true);
    let _ = projector.await;
    if let Some(task) = metrics_server {
        task.abort();
        let _ = task.await;
    }
    if embedded.is_some() {
        snapshots
            .insert(
                SNAPSHOT_KEY,
                core.snapshot()
                    .await
                    .map_err(|error| ServerError::Store(error.to_string()))?,
            )
            .map_err(|e| ServerError::Store(e.to_string()))?;
    }
    store
        .flush_async()
        .await
        .map_err(|e| ServerError::Store(e.to_string()))?;
    drop(core);
    if let Some(log) = embedded {
        log.close().await?;
    }
    served?;
    tracing::info!("stopped");
    Ok(())
}

#[cfg(feature = "kurrentdb")]
async fn open_kurrentdb(url: &str) -> Result<Arc<dyn ledger::EventLog>, ServerError> {
    Ok(Arc::new(ledger::KurrentLog::connect(url).await?))
}

#[cfg(not(feature = "kurrentdb"))]
async fn open_kurrentdb(_url: &str) -> Result<Arc<dyn ledger::EventLog>, ServerError> {
    Err(ServerError::Config(
        "this server was built without the kurrentdb feature; rebuild with --features kurrentdb"
            .into(),
    ))
}
