//! Workload 2, second half: the ledger's store alone (the `ledger` crate's embedded log, in
//! this process) under the peer's very load: the same clients, streams and walk over them,
//! one durable append of the same MessagePack `InviteSent` at a time per client. Where the
//! peer is an events table, this is the event log a team would get instead; workload 1 adds
//! what neither has: gRPC, the license aggregate's decision and the read models.
//!
//! It runs twice. With unkeyed command ids the log, like the peer's table, records the id
//! without remembering it; with keyed ids it also indexes every id so that a retry answers
//! the first result, which the peer does not offer. Each append goes to the stream's head
//! (`ExpectedRevision::Any`), which the writer checks and assigns under its lock, where the
//! peer reads the head and lets `unique(stream_id, version)` refuse a lost race.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use ledger::{EmbeddedLog, EmbeddedOptions, EventLog, ExpectedRevision, NewEvent};
use uuid::Uuid;

use crate::Flags;
use crate::process::temp_dir;
use crate::report::Report;
use crate::stats::Latencies;

const WARM_UP_MS: u64 = 1_000;

struct ClientResult {
    latencies: Latencies,
    measured: u64,
    appended: u64,
}

/// Runs the store under the peer's load with keyed and with unkeyed command ids.
pub async fn run(flags: &Flags, report: &mut Report) -> Result<()> {
    for keyed in [false, true] {
        run_once(flags, keyed, report).await?;
    }
    Ok(())
}

async fn run_once(flags: &Flags, keyed: bool, report: &mut Report) -> Result<()> {
    let ids = if keyed { "keyed" } else { "unkeyed" };
    println!(
        "\n== 2: the ledger's store alone, {ids} command ids, {} clients over {} streams, {} s",
        flags.clients, flags.licenses, flags.duration_s
    );
    let dir = temp_dir(&flags.work_dir, "loadgen-store-", flags.keep)?;
    let log = Arc::new(EmbeddedLog::open(dir.path(), EmbeddedOptions::default())?);
    let start = Instant::now();
    let measure_from = start + Duration::from_millis(WARM_UP_MS);
    let measure_until = measure_from + Duration::from_secs(flags.duration_s);
    let mut tasks = tokio::task::JoinSet::new();
    for client_index in 0..flags.clients {
        let log = log.clone();
        let streams = flags.licenses;
        let clients = flags.clients;
        tasks.spawn(async move {
            let mut result = ClientResult {
                latencies: Latencies::default(),
                measured: 0,
                appended: 0,
            };
            let mut sequence: u64 = 0;
            let mut stream = client_index % streams;
            while Instant::now() < measure_until {
                let event = crate::peer::invite(client_index, sequence);
                sequence += 1;
                let command_id = Uuid::new_v4();
                let new_event = NewEvent {
                    event_id: Uuid::new_v4(),
                    event_type: event.type_name().to_owned(),
                    schema_version: event.schema_version(),
                    recorded_at: chrono::Utc::now(),
                    actor: crate::commands::ADMIN.to_owned(),
                    correlation_id: command_id,
                    payload: event.encode(),
                };
                let stream_id = format!("license-W1L{stream:06}");
                let sent = Instant::now();
                if keyed {
                    log.append(
                        &stream_id,
                        ExpectedRevision::Any,
                        vec![new_event],
                        command_id,
                    )
                    .await?;
                } else {
                    log.append_unkeyed(
                        &stream_id,
                        ExpectedRevision::Any,
                        vec![new_event],
                        command_id,
                    )
                    .await?;
                }
                let latency = sent.elapsed();
                result.appended += 1;
                if sent >= measure_from && sent < measure_until {
                    result.latencies.record(latency);
                    result.measured += 1;
                }
                stream = (stream + clients * 7 + 1) % streams;
            }
            anyhow::Ok(result)
        });
    }
    let mut latencies = Latencies::default();
    let (mut measured, mut appended) = (0, 0);
    while let Some(result) = tasks.join_next().await {
        let result = result??;
        latencies.merge(result.latencies);
        measured += result.measured;
        appended += result.appended;
    }
    let throughput = measured as f64 / flags.duration_s as f64;
    println!("  {}", latencies.line());
    report.figure(
        "2",
        format!("ledger store alone, {ids} ids, appends/s"),
        throughput,
        "appends/s",
        None,
    );
    report.figure(
        "2",
        format!("ledger store alone, {ids} ids, p99"),
        latencies.percentile_ms(99.0),
        "ms",
        None,
    );
    report.store_throughput(keyed, throughput);
    // Every acknowledged append is in the log, in one contiguous run of positions.
    let mut read = 0u64;
    loop {
        let page = log.read_all(read, ledger::READ_EVENTS_MAX).await?;
        if page.is_empty() {
            break;
        }
        for event in &page {
            if event.position != read {
                bail!(
                    "store: position {} where {read} was expected",
                    event.position
                );
            }
            read += 1;
        }
    }
    if read != appended {
        report.fail(format!(
            "workload 2 (store): {appended} appends acknowledged but the log holds {read} events"
        ));
    }
    log.close().await?;
    Ok(())
}
