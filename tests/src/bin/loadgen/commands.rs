//! Workload 1: durable single-user `AddUsersByEmail` over gRPC from many concurrent clients
//! spread over many licenses. Each client has its own connection and sends one command at a
//! time (closed loop); every answer is durable (the ledger `fdatasync`s before it answers).

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use proto::{AddUsersByEmailRequest, IssueLicenseRequest, LicenseRef};

use crate::process::{STAFF_TOKEN, ServerProcess, USER_TOKEN, authorized, temp_dir};
use crate::report::{Report, Target};
use crate::stats::Latencies;
use crate::{Binaries, Flags};

/// The admin of every license the workload issues; not a domain admin, so every add is an
/// invite (INV-1), the common case of a teacher deploying seats to colleagues.
pub const ADMIN: &str = "admin@district.example.org";
/// Warm-up before measuring: connections, allocator, page cache.
const WARM_UP_MS: u64 = 1_000;
/// Licenses issued at once while setting up.
const ISSUE_CONCURRENCY: usize = 16;

/// The email of a client's `sequence`-th new user: unique per client and sequence, spread
/// over 97 school domains. Workload 2's peer and store append the same invites.
pub fn workload_email(client_index: usize, sequence: u64) -> String {
    format!(
        "c{client_index}-u{sequence}@school{}.example.org",
        sequence % 97
    )
}

pub fn license_id(prefix: &str, index: usize) -> String {
    format!("{prefix}{index:06}")
}

/// Issues `count` licenses `prefix000000..` with `seats` seats each, valid from 2026 to 2036.
pub async fn issue_licenses(
    server: &ServerProcess,
    prefix: &str,
    count: usize,
    seats: i64,
) -> Result<()> {
    let mut tasks = tokio::task::JoinSet::new();
    for worker in 0..ISSUE_CONCURRENCY.min(count.max(1)) {
        let mut client = server.commands().await?;
        let prefix = prefix.to_owned();
        tasks.spawn(async move {
            let mut index = worker;
            while index < count {
                client
                    .issue_license(authorized(
                        IssueLicenseRequest {
                            license: license_id(&prefix, index),
                            r#type: "school".into(),
                            seats,
                            valid_from: "2026-01-01T00:00:00Z".into(),
                            valid_until: "2036-12-31T23:59:59Z".into(),
                            admins: vec![ADMIN.into()],
                        },
                        STAFF_TOKEN,
                        None,
                    ))
                    .await
                    .with_context(|| format!("IssueLicense {}", license_id(&prefix, index)))?;
                index += ISSUE_CONCURRENCY;
            }
            anyhow::Ok(())
        });
    }
    while let Some(result) = tasks.join_next().await {
        result??;
    }
    Ok(())
}

struct ClientResult {
    latencies: Latencies,
    /// Commands answered inside the measured window.
    measured: u64,
    /// Commands answered in all, per license index (for the lost-row check).
    added_per_license: Vec<(usize, u64)>,
    errors: u64,
    first_error: Option<String>,
    last_position: u64,
}

pub async fn run(flags: &Flags, binaries: &Binaries, report: &mut Report) -> Result<()> {
    println!(
        "\n== 1: durable single-user AddUsersByEmail, {} clients over {} licenses, {} s",
        flags.clients, flags.licenses, flags.duration_s
    );
    let dir = temp_dir(&flags.work_dir, "loadgen-commands-", flags.keep)?;
    let server = ServerProcess::start(&binaries.server, dir.path()).await?;
    issue_licenses(&server, "W1L", flags.licenses, 1_000_000).await?;

    let start = Instant::now();
    let measure_from = start + Duration::from_millis(WARM_UP_MS);
    let measure_until = measure_from + Duration::from_secs(flags.duration_s);
    let cpu_before = server.cpu_seconds().unwrap_or(0.0);
    let mut tasks = tokio::task::JoinSet::new();
    for client_index in 0..flags.clients {
        let mut client = server.commands().await?;
        let licenses = flags.licenses;
        let clients = flags.clients;
        tasks.spawn(async move {
            let mut result = ClientResult {
                latencies: Latencies::default(),
                measured: 0,
                added_per_license: Vec::new(),
                errors: 0,
                first_error: None,
                last_position: 0,
            };
            let mut per_license = std::collections::HashMap::<usize, u64>::new();
            let mut sequence: u64 = 0;
            // Each client walks the licenses from its own offset with a stride that is
            // coprime with most license counts, so clients meet on licenses now and then
            // (contention on a stream's lock) but mostly spread out.
            let mut license = client_index % licenses;
            loop {
                let now = Instant::now();
                if now >= measure_until {
                    break;
                }
                let email = workload_email(client_index, sequence);
                sequence += 1;
                let sent = Instant::now();
                let answer = client
                    .add_users_by_email(authorized(
                        AddUsersByEmailRequest {
                            license: license_id("W1L", license),
                            emails: email,
                        },
                        USER_TOKEN,
                        Some(ADMIN),
                    ))
                    .await;
                let latency = sent.elapsed();
                match answer {
                    Ok(reply) => {
                        let reply = reply.into_inner();
                        if reply.invited + reply.added != 1 {
                            result.errors += 1;
                            result.first_error.get_or_insert(format!(
                                "an add of one new email answered {reply:?}"
                            ));
                        }
                        *per_license.entry(license).or_default() += 1;
                        result.last_position = result.last_position.max(reply.position);
                        if sent >= measure_from && sent < measure_until {
                            result.latencies.record(latency);
                            result.measured += 1;
                        }
                    }
                    Err(status) => {
                        result.errors += 1;
                        result
                            .first_error
                            .get_or_insert(format!("AddUsersByEmail: {status}"));
                    }
                }
                license = (license + clients * 7 + 1) % licenses;
            }
            result.added_per_license = per_license.into_iter().collect();
            result
        });
    }
    let mut latencies = Latencies::default();
    let mut measured = 0;
    let mut errors = 0;
    let mut first_error = None;
    let mut last_position = 0;
    let mut added = vec![0u64; flags.licenses];
    while let Some(result) = tasks.join_next().await {
        let result = result?;
        latencies.merge(result.latencies);
        measured += result.measured;
        errors += result.errors;
        first_error = first_error.or(result.first_error);
        last_position = last_position.max(result.last_position);
        for (license, count) in result.added_per_license {
            added[license] += count;
        }
    }
    let cpu = server.cpu_seconds().unwrap_or(0.0) - cpu_before;
    let seconds = flags.duration_s as f64;
    let throughput = measured as f64 / seconds;
    println!("  {}", latencies.line());
    println!(
        "  server CPU: {:.2} s over {:.1} s wall ({:.0}% of one core)",
        cpu,
        seconds + WARM_UP_MS as f64 / 1000.0,
        100.0 * cpu / (seconds + WARM_UP_MS as f64 / 1000.0)
    );
    report.figure("1", "commands/s", throughput, "cmd/s", None);
    report.figure("1", "p50", latencies.percentile_ms(50.0), "ms", None);
    report.figure(
        "1",
        "p99",
        latencies.percentile_ms(99.0),
        "ms",
        Some(Target::AtMost(10.0)),
    );
    report.ledger_throughput(throughput);
    if errors > 0 {
        report.fail(format!(
            "workload 1: {errors} commands failed; first: {}",
            first_error.unwrap_or_default()
        ));
    }
    check_counts(&server, &added, last_position, report).await?;
    server.stop().await?;
    Ok(())
}

/// No acknowledged add may be lost: each license's `users_count` (read after the
/// projections reached the last position answered) equals the adds it acknowledged.
async fn check_counts(
    server: &ServerProcess,
    added: &[u64],
    last_position: u64,
    report: &mut Report,
) -> Result<()> {
    let mut queries = server.queries().await?;
    let mut lost = 0;
    for (index, expected) in added.iter().enumerate() {
        let mut request = authorized(
            LicenseRef {
                license: license_id("W1L", index),
            },
            STAFF_TOKEN,
            None,
        );
        request.metadata_mut().insert(
            "x-min-position",
            last_position.to_string().parse().expect("digits"),
        );
        let view = queries.get_license(request).await?.into_inner();
        if view.users_count != *expected {
            lost += 1;
            if lost == 1 {
                eprintln!(
                    "  license {} shows {} users, {} adds were acknowledged",
                    view.id, view.users_count, expected
                );
            }
        }
    }
    if lost > 0 {
        report.fail(format!(
            "workload 1: {lost} licenses do not show every acknowledged add"
        ));
    } else {
        println!(
            "  every acknowledged add is visible ({} adds over {} licenses)",
            added.iter().sum::<u64>(),
            added.len()
        );
    }
    if added.iter().sum::<u64>() == 0 {
        bail!("workload 1 acknowledged no command at all");
    }
    Ok(())
}
