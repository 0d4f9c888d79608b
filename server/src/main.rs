//! `license-server`: parses flags and environment, then calls `server::run`.

use std::path::PathBuf;
use std::sync::Arc;

use clap::Parser;

/// mimalloc instead of glibc's allocator, tuned by `server::allocator::tune` (why: there).
#[global_allocator]
static GLOBAL_ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser, Debug)]
#[command(version, about = "The license ledger's gRPC server")]
struct Flags {
    /// Address to listen on.
    #[arg(long, env = "LEDGER_LISTEN", default_value = "127.0.0.1:50051")]
    listen: String,
    /// Directory of the embedded log, the projections and the server's caches.
    #[arg(long, env = "LEDGER_DATA_DIR", default_value = "./data")]
    data_dir: PathBuf,
    /// `embedded` (the default) or a `kurrentdb://...` connection string.
    #[arg(long, env = "LEDGER_BACKEND", default_value = "embedded")]
    backend: String,
    /// A tokens file of `scope token` lines. Without it, the data directory's development
    /// tokens are used (made on first start in `<data-dir>/dev-tokens.txt`).
    #[arg(long, env = "LEDGER_TOKENS_FILE")]
    tokens_file: Option<PathBuf>,
    /// Flush policy of the embedded log: the most appends that share one `fdatasync` (group
    /// commit). Every acknowledged append is synced before its answer, whatever this is;
    /// 1 syncs each append alone (slowest, lowest latency under no load).
    #[arg(long, env = "LEDGER_GROUP_COMMIT_APPENDS_MAX", default_value_t = 1024)]
    group_commit_appends_max: usize,
    /// Address of the Prometheus metrics endpoint (`GET /metrics`); off when not given.
    #[arg(long, env = "LEDGER_METRICS_LISTEN")]
    metrics_listen: Option<String>,
    /// The most concurrent client connections; further ones are closed at once (clients
    /// see UNAVAILABLE). Keep it below the process's open-files limit (`ulimit -n`).
    #[arg(long, env = "LEDGER_CONNECTIONS_MAX", default_value_t = server::connections::CONNECTIONS_MAX_DEFAULT)]
    connections_max: usize,
    /// Log as JSON lines.
    #[arg(long, env = "LEDGER_JSON_LOGS")]
    json_logs: bool,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    server::allocator::tune();
    let flags = Flags::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    if flags.json_logs {
        tracing_subscriber::fmt()
            .json()
            .with_env_filter(filter)
            .init();
    } else {
        tracing_subscriber::fmt().with_env_filter(filter).init();
    }
    std::fs::create_dir_all(&flags.data_dir)?;
    let tokens = match &flags.tokens_file {
        Some(path) => server::Tokens::load(path)?,
        None => {
            let tokens = server::Tokens::development(&flags.data_dir)?;
            tracing::warn!(
                file = %flags.data_dir.join(server::auth::DEVELOPMENT_TOKENS_FILE).display(),
                "using development tokens"
            );
            tokens
        }
    };
    let backend = match flags.backend.as_str() {
        "embedded" => server::Backend::Embedded,
        url if url.starts_with("kurrentdb://") || url.starts_with("esdb://") => {
            server::Backend::KurrentDb(url.to_owned())
        }
        other => {
            return Err(
                format!("unknown backend '{other}': use embedded or kurrentdb://...").into(),
            );
        }
    };
    let mut config =
        server::ServerConfig::embedded(&flags.data_dir, tokens, Arc::new(server::SystemClock));
    config.backend = backend;
    if flags.group_commit_appends_max == 0 {
        return Err("--group-commit-appends-max must be at least 1".into());
    }
    config.embedded_options.group_appends_max = flags.group_commit_appends_max;
    if flags.connections_max == 0 {
        return Err("--connections-max must be at least 1".into());
    }
    config.limits.connections_max = flags.connections_max;
    if let Some(address) = &flags.metrics_listen {
        let listener = std::net::TcpListener::bind(address)?;
        config.metrics_listener = Some(Arc::new(std::sync::Mutex::new(Some(listener))));
    }
    let listener = server::connections::bind_listener(&flags.listen, flags.connections_max).await?;
    server::run(listener, config, shutdown_signal()).await?;
    Ok(())
}

/// Completes on Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut terminate =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                .expect("a SIGTERM handler can be installed");
        tokio::select! {
            _ = interrupt => {}
            _ = terminate.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = interrupt.await;
    }
    tracing::info!("shutting down");
}
