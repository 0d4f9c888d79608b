//! Workload 2: the peer a team would otherwise build, an events table in PostgreSQL as
//! postgres-backed event-sourcing libraries keep it, under the same load as workload 1: the
//! same number of clients (one connection each), the same number of streams, one command at
//! a time per client. Each command is one transaction that reads the stream's head version,
//! inserts the event with the next version, and commits; `unique(stream_id, version)` turns
//! a race into a unique violation, which is retried. `synchronous_commit` is on (the
//! default), so the commit waits for the WAL flush, as our ledger waits for its fdatasync.
//!
//! The peer does less than the ledger: no aggregate, no decision, no hash chain, no command
//! id deduplication, no read models. The payload is the very MessagePack event the ledger
//! stores for the same command, with the same envelope fields as columns.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use domain::events::{Event, InviteSent};
use domain::{Email, Role, Source};
use tokio_postgres::NoTls;
use tokio_postgres::error::SqlState;

use crate::Flags;
use crate::process::{free_port, temp_dir};
use crate::report::Report;
use crate::stats::Latencies;

const WARM_UP_MS: u64 = 1_000;
/// How often one command retries after losing a race for its stream's next version.
const CONFLICT_RETRIES_MAX: usize = 64;

const SCHEMA: &str = "
DROP TABLE IF EXISTS events;
CREATE TABLE events (
    position bigserial PRIMARY KEY,
    stream_id text NOT NULL,
    version bigint NOT NULL,
    event_id uuid NOT NULL,
    event_type text NOT NULL,
    schema_version smallint NOT NULL,
    recorded_at timestamptz NOT NULL,
    actor text NOT NULL,
    command_id uuid NOT NULL,
    correlation_id uuid NOT NULL,
    payload bytea NOT NULL,
    UNIQUE (stream_id, version)
);
";

const HEAD: &str = "SELECT coalesce(max(version), -1) FROM events WHERE stream_id = $1";
const INSERT: &str = "INSERT INTO events (stream_id, version, event_id, event_type, \
    schema_version, recorded_at, actor, command_id, correlation_id, payload) \
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)";

/// The event workload 1 appends for a client's `sequence`-th command: an invite of a new
/// user (the admin is not a domain admin, INV-1).
pub fn invite(client_index: usize, sequence: u64) -> Event {
    InviteSent {
        email: Email::parse(&crate::commands::workload_email(client_index, sequence))
            .expect("a valid email"),
        source: Source::Email,
        role: Role::Student,
    }
    .into()
}

/// The script that starts a throwaway PostgreSQL cluster on loopback.
fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("scripts")
        .join("postgres-peer.sh")
}

/// A PostgreSQL cluster started by the script, stopped when dropped.
struct Cluster {
    dir: crate::process::TempDir,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = std::process::Command::new(script())
            .arg("stop")
            .arg(self.dir.path())
            .status();
    }
}

fn start_cluster(flags: &Flags) -> Result<(Cluster, String)> {
    let dir = temp_dir(&flags.work_dir, "loadgen-postgres-", flags.keep)?;
    let port = free_port()?;
    let output = std::process::Command::new(script())
        .arg("start")
        .arg(dir.path())
        .arg(port.to_string())
        .stderr(std::process::Stdio::inherit())
        .output()
        .with_context(|| format!("cannot run {}", script().display()))?;
    let cluster = Cluster { dir };
    if !output.status.success() {
        bail!("{} start failed ({})", script().display(), output.status);
    }
    let url = String::from_utf8(output.stdout)?
        .lines()
        .last()
        .context("the script printed no connection string")?
        .trim()
        .to_owned();
    Ok((cluster, url))
}

async fn connect(url: &str) -> Result<tokio_postgres::Client> {
    let (client, connection) = tokio_postgres::connect(url, NoTls)
        .await
        .with_context(|| format!("cannot connect to PostgreSQL at {url}"))?;
    tokio::spawn(async move {
        if let Err(error) = connection.await {
            eprintln!("  postgres connection: {error}");
        }
    });
    Ok(client)
}

struct ClientResult {
    latencies: Latencies,
    measured: u64,
    appended: u64,
    conflicts: u64,
    errors: u64,
    first_error: Option<String>,
}

pub async fn run(flags: &Flags, report: &mut Report) -> Result<()> {
    println!(
        "\n== 2: the peer: PostgreSQL events table, {} clients over {} streams, {} s",
        flags.clients, flags.licenses, flags.duration_s
    );
    let (_cluster, url) = match &flags.postgres {
        Some(url) => (None, url.clone()),
        None => {
            let (cluster, url) = start_cluster(flags)?;
            (Some(cluster), url)
        }
    };
    println!("  PostgreSQL: {url}");
    let setup = connect(&url).await?;
    setup.batch_execute(SCHEMA).await?;
    for setting in [
        "server_version",
        "synchronous_commit",
        "fsync",
        "wal_sync_method",
    ] {
        let row = setup.query_one(&format!("SHOW {setting}"), &[]).await?;
        println!("  {setting} = {}", row.get::<_, String>(0));
    }

    let start = Instant::now();
    let measure_from = start + Duration::from_millis(WARM_UP_MS);
    let measure_until = measure_from + Duration::from_secs(flags.duration_s);
    let mut tasks = tokio::task::JoinSet::new();
    for client_index in 0..flags.clients {
        let mut client = connect(&url).await?;
        let streams = flags.licenses;
        let clients = flags.clients;
        tasks.spawn(async move {
            let head = client.prepare(HEAD).await?;
            let insert = client.prepare(INSERT).await?;
            let mut result = ClientResult {
                latencies: Latencies::default(),
                measured: 0,
                appended: 0,
                conflicts: 0,
                errors: 0,
                first_error: None,
            };
            let mut sequence: u64 = 0;
            let mut stream = client_index % streams;
            let actor = crate::commands::ADMIN.to_owned();
            loop {
                if Instant::now() >= measure_until {
                    break;
                }
                let event = invite(client_index, sequence);
                sequence += 1;
                let payload = event.encode();
                let stream_id = format!("license-W1L{stream:06}");
                let command_id = uuid::Uuid::new_v4();
                let sent = Instant::now();
                let mut outcome: Result<(), String> = Err("no attempt".into());
                for _ in 0..CONFLICT_RETRIES_MAX {
                    let attempt = async {
                        let transaction = client.transaction().await?;
                        let version: i64 =
                            transaction.query_one(&head, &[&stream_id]).await?.get(0);
                        transaction
                            .execute(
                                &insert,
                                &[
                                    &stream_id,
                                    &(version + 1),
                                    &uuid::Uuid::new_v4(),
                                    &event.type_name(),
                                    &(event.schema_version() as i16),
                                    &chrono::Utc::now(),
                                    &actor,
                                    &command_id,
                                    &command_id,
                                    &payload,
                                ],
                            )
                            .await?;
                        transaction.commit().await
                    }
                    .await;
                    match attempt {
                        Ok(()) => {
                            outcome = Ok(());
                            break;
                        }
                        Err(error) if error.code() == Some(&SqlState::UNIQUE_VIOLATION) => {
                            result.conflicts += 1;
                            outcome = Err("too many conflicts".into());
                        }
                        Err(error) => {
                            outcome = Err(error.to_string());
                            break;
                        }
                    }
                }
                let latency = sent.elapsed();
                match outcome {
                    Ok(()) => {
                        result.appended += 1;
                        if sent >= measure_from && sent < measure_until {
                            result.latencies.record(latency);
                            result.measured += 1;
                        }
                    }
                    Err(error) => {
                        result.errors += 1;
                        result.first_error.get_or_insert(error);
                    }
                }
                stream = (stream + clients * 7 + 1) % streams;
            }
            anyhow::Ok(result)
        });
    }
    let mut latencies = Latencies::default();
    let (mut measured, mut appended, mut conflicts, mut errors) = (0, 0, 0, 0);
    let mut first_error = None;
    while let Some(result) = tasks.join_next().await {
        let result = result??;
        latencies.merge(result.latencies);
        measured += result.measured;
        appended += result.appended;
        conflicts += result.conflicts;
        errors += result.errors;
        first_error = first_error.or(result.first_error);
    }
    let throughput = measured as f64 / flags.duration_s as f64;
    println!("  {}", latencies.line());
    println!("  {conflicts} version conflicts retried");
    report.figure("2", "peer commands/s", throughput, "cmd/s", None);
    report.figure("2", "peer p50", latencies.percentile_ms(50.0), "ms", None);
    report.figure("2", "peer p99", latencies.percentile_ms(99.0), "ms", None);
    report.peer_throughput(throughput);
    let stored: i64 = setup
        .query_one("SELECT count(*) FROM events", &[])
        .await?
        .get(0);
    if stored != appended as i64 {
        report.fail(format!(
            "workload 2: {appended} appends committed but the table holds {stored} rows"
        ));
    }
    if errors > 0 {
        report.fail(format!(
            "workload 2: {errors} appends failed; first: {}",
            first_error.unwrap_or_default()
        ));
    }
    Ok(())
}
