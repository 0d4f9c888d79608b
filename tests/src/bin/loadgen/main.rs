//! `loadgen`: the load generator of issue 7. It drives the real `license-server` binary as a
//! child process (so the server's peak memory can be read from `/proc` and its CPU is not
//! shared with the client), the real `replay-tool` binary, and a PostgreSQL events table as
//! the peer a team would otherwise build. Every workload prints its figures and, where a
//! target exists, the ratio to it; `all` runs them in one go and ends with a Markdown table.
//!
//! Build the binaries it drives in the same profile first:
//!
//! ```text
//! cargo build --release -p server -p replay-tool -p tests --bins
//! cargo run --release -p tests --bin loadgen -- all
//! ```
//!
//! A missed target is reported, not failed: only an error or a lost row makes the exit code
//! non-zero, which is what the CI smoke run checks.

mod commands;
mod import;
mod peer;
mod process;
mod replay;
mod report;
mod stats;
mod store;

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::{Parser, ValueEnum};

use crate::report::Report;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Workload {
    /// 1: durable single-user AddUsersByEmail from many clients over many licenses.
    Commands,
    /// 2: the same append load against a PostgreSQL events table, then against the ledger's
    /// store alone (in this process), with the store/peer ratios.
    Peer,
    /// 1 and 2 in the same run, with the service/peer and store/peer ratios.
    Compare,
    /// 3: one large CSV import until every row is visible in ListUsers, with peak RSS.
    Import,
    /// 3 then 4 (commands on the imported license) then 5 (queries) on one server.
    Large,
    /// 6: generate a large log, then time `replay-tool rebuild` and `verify` on it.
    Replay,
    /// Every workload at full size (PostgreSQL is started by the script when needed).
    All,
    /// Every workload at a tiny size, in seconds; fails on any error or lost row. PostgreSQL
    /// only with --postgres.
    Smoke,
}

#[derive(Debug, Parser)]
#[command(
    name = "loadgen",
    about = "The license ledger's load generator (issue 7).",
    after_help = "Build what it drives first, in the same profile:\n  \
                  cargo build --release -p server -p replay-tool -p tests --bins\n  \
                  cargo run --release -p tests --bin loadgen -- all\n\
                  The server and replay-tool binaries are looked up next to this executable \
                  unless --server-bin / --replay-tool-bin say otherwise."
)]
pub struct Flags {
    #[arg(value_enum)]
    workload: Workload,
    /// The `license-server` binary (default: next to this executable).
    #[arg(long)]
    server_bin: Option<PathBuf>,
    /// The `replay-tool` binary (default: next to this executable).
    #[arg(long)]
    replay_tool_bin: Option<PathBuf>,
    /// Where temporary data directories go.
    #[arg(long, default_value = "/tmp")]
    work_dir: PathBuf,
    /// A PostgreSQL connection string for the peer (workload 2). Without it the peer workload
    /// runs `scripts/postgres-peer.sh`, which starts a throwaway cluster on loopback.
    #[arg(long)]
    postgres: Option<String>,
    /// Concurrent clients of workloads 1 and 2.
    #[arg(long, default_value_t = 64)]
    clients: usize,
    /// Licenses (workload 1) and streams (workload 2) the clients spread over.
    #[arg(long, default_value_t = 1_000)]
    licenses: usize,
    /// How long workloads 1 and 2 measure, after a warm-up of one second.
    #[arg(long, default_value_t = 10)]
    duration_s: u64,
    /// Rows of the CSV import (workload 3); the license of workload 4 has this many members.
    #[arg(long, default_value_t = 1_000_000)]
    import_rows: usize,
    /// Commands sent to the large license (workload 4).
    #[arg(long, default_value_t = 2_000)]
    large_commands: usize,
    /// Members of the license queried by workload 5.
    #[arg(long, default_value_t = 500_000)]
    query_members: usize,
    /// Queries of each kind sent by workload 5.
    #[arg(long, default_value_t = 1_000)]
    queries: usize,
    /// Events of the log generated for workload 6.
    #[arg(long, default_value_t = 10_000_000)]
    replay_events: u64,
    /// Keep the generated data directories (for profiling); they are deleted otherwise.
    #[arg(long)]
    keep: bool,
}

/// Sizes of a smoke run: every workload in seconds, still big enough to cross the ledger's
/// chunking of large appends (more than one append per import would need 100,000 rows, which
/// is too slow in a debug build, so that path is left to the unit tests).
fn smoke_sizes(flags: &mut Flags) {
    flags.clients = 8;
    flags.licenses = 20;
    flags.duration_s = 2;
    flags.import_rows = 5_000;
    flags.large_commands = 50;
    flags.query_members = 2_000;
    flags.queries = 50;
    flags.replay_events = 20_000;
}

fn sibling_binary(name: &str) -> Result<PathBuf> {
    let me = std::env::current_exe().context("cannot find this executable's path")?;
    let dir = me
        .parent()
        .context("this executable has no parent directory")?;
    let path = dir.join(name);
    if !path.exists() {
        bail!(
            "{} not found; build it in the same profile first: \
             cargo build [--release] -p server -p replay-tool -p tests --bins \
             (or pass --server-bin / --replay-tool-bin)",
            path.display()
        );
    }
    Ok(path)
}

pub struct Binaries {
    pub server: PathBuf,
    pub replay_tool: PathBuf,
}

#[tokio::main]
async fn main() {
    let mut flags = Flags::parse();
    if flags.workload == Workload::Smoke {
        smoke_sizes(&mut flags);
    }
    match run(&flags).await {
        Ok(report) => {
            println!("\n{}", report.markdown());
            if report.failed() {
                eprintln!("loadgen: a workload lost data or failed; see above");
                std::process::exit(1);
            }
        }
        Err(error) => {
            eprintln!("loadgen: {error:#}");
            std::process::exit(1);
        }
    }
}

async fn run(flags: &Flags) -> Result<Report> {
    let binaries = Binaries {
        server: match &flags.server_bin {
            Some(path) => path.clone(),
            None => sibling_binary("license-server")?,
        },
        replay_tool: match &flags.replay_tool_bin {
            Some(path) => path.clone(),
            None => sibling_binary("replay-tool")?,
        },
    };
    let mut report = Report::new(cfg!(debug_assertions));
    let (ledger, peer, large, replay) = match flags.workload {
        Workload::Commands => (true, false, false, false),
        Workload::Peer => (false, true, false, false),
        Workload::Compare => (true, true, false, false),
        Workload::Import | Workload::Large => (false, false, true, false),
        Workload::Replay => (false, false, false, true),
        Workload::All => (true, true, true, true),
        Workload::Smoke => (true, flags.postgres.is_some(), true, true),
    };
    // A workload that fails is reported and the next one still runs, so that one long run
    // gives every figure it can.
    if ledger && let Err(error) = commands::run(flags, &binaries, &mut report).await {
        report.fail(format!("workload 1: {error:#}"));
    }
    if peer && let Err(error) = peer::run(flags, &mut report).await {
        report.fail(format!("workload 2: {error:#}"));
    }
    if (peer || flags.workload == Workload::Smoke)
        && let Err(error) = store::run(flags, &mut report).await
    {
        report.fail(format!("workload 2 (the store alone): {error:#}"));
    }
    if peer {
        report.compare();
    }
    if large {
        let only_import = flags.workload == Workload::Import;
        if let Err(error) = import::run(flags, &binaries, only_import, &mut report).await {
            report.fail(format!("workloads 3 to 5: {error:#}"));
        }
    }
    if replay && let Err(error) = replay::run(flags, &binaries, &mut report).await {
        report.fail(format!("workload 6: {error:#}"));
    }
    Ok(report)
}
