//! Workloads 3, 4 and 5 on one server:
//! 3. one large CSV `ImportCsv`, from the first byte sent until every row is visible in
//!    `ListUsers`, with the server's peak RSS;
//! 4. single-user commands on the license that import made (one client, one at a time);
//! 5. `ListUsers` with `%pattern%` and `GetLicense` on a second large license.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use proto::license_queries_client::LicenseQueriesClient;
use proto::{
    AddUsersByEmailRequest, ImportCsvChunk, ImportCsvStart, LicenseRef, ListUsersRequest,
    RemoveUsersRequest, import_csv_chunk,
};
use tonic::transport::Channel;

use crate::commands::{issue_licenses, license_id};
use crate::process::{STAFF_TOKEN, ServerProcess, authorized, temp_dir};
use crate::report::{Report, Target};
use crate::stats::Latencies;
use crate::{Binaries, Flags};

/// The size of one streamed CSV message.
const CSV_CHUNK_BYTES: usize = 64 * 1024;
/// Rows per `ListUsers` page when counting every row.
const COUNT_PAGE_SIZE: u32 = 1_000;
/// Rows per `ListUsers` page in workload 5: one screen of the dashboard.
const QUERY_PAGE_SIZE: u32 = 50;
/// How long to keep asking for a position the projections have not reached.
const VISIBLE_WAIT_MS: u64 = 600_000;

const FIRST_NAMES: &[&str] = &[
    "emma", "liam", "olivia", "noah", "ava", "elijah", "sophia", "james", "isabella", "lucas",
    "mia", "mason", "amelia", "ethan", "harper", "logan", "evelyn", "thomas", "abigail", "jacob",
];
const LAST_NAMES: &[&str] = &[
    "smith",
    "johnson",
    "williams",
    "brown",
    "jones",
    "garcia",
    "miller",
    "davis",
    "rodriguez",
    "martinez",
    "hernandez",
    "lopez",
    "gonzalez",
    "wilson",
    "anderson",
    "taylor",
    "moore",
    "jackson",
    "martin",
    "lee",
];

/// The `index`th member of a generated roster: unique, and shaped like a school's emails.
pub fn roster_email(index: usize) -> String {
    format!(
        "{}.{}{}@school{}.example.org",
        FIRST_NAMES[index % FIRST_NAMES.len()],
        LAST_NAMES[(index / FIRST_NAMES.len()) % LAST_NAMES.len()],
        index,
        index % 200
    )
}

/// A CSV export as a spreadsheet writes it: a header with more than the Email column.
fn csv_file(rows: usize) -> Vec<u8> {
    let mut csv = Vec::with_capacity(rows * 64 + 64);
    csv.extend_from_slice(b"First name,Last name,Email,Role\r\n");
    for index in 0..rows {
        csv.extend_from_slice(
            format!(
                "{},{},{},student\r\n",
                FIRST_NAMES[index % FIRST_NAMES.len()],
                LAST_NAMES[(index / FIRST_NAMES.len()) % LAST_NAMES.len()],
                roster_email(index)
            )
            .as_bytes(),
        );
    }
    csv
}

struct Imported {
    /// From the first byte sent until the import's answer.
    answered: Duration,
    /// The server's peak RSS when the import was answered (MiB), before the projections
    /// caught up: what the command path and the ledger took.
    peak_when_answered_mib: f64,
    /// From the first byte sent until `ListUsers` shows the import's position.
    visible: Duration,
}

/// Streams a CSV of `rows` generated members into `license` and waits until `ListUsers`
/// answers at the import's position. Checks the answer's counts.
async fn import(
    server: &ServerProcess,
    license: &str,
    rows: usize,
    report: &mut Report,
) -> Result<Imported> {
    let csv = csv_file(rows);
    let mut messages = Vec::with_capacity(csv.len() / CSV_CHUNK_BYTES + 2);
    messages.push(ImportCsvChunk {
        part: Some(import_csv_chunk::Part::Start(ImportCsvStart {
            license: license.to_owned(),
            mode: "add".into(),
        })),
    });
    for chunk in csv.chunks(CSV_CHUNK_BYTES) {
        messages.push(ImportCsvChunk {
            part: Some(import_csv_chunk::Part::Data(chunk.to_vec())),
        });
    }
    println!(
        "  importing {rows} rows ({:.1} MiB of CSV) into {license}",
        csv.len() as f64 / 1024.0 / 1024.0
    );
    drop(csv);
    let mut commands = server.commands().await?;
    let mut queries = server.queries().await?;
    let started = Instant::now();
    let reply = commands
        .import_csv(authorized(tokio_stream::iter(messages), STAFF_TOKEN, None))
        .await
        .context("ImportCsv")?
        .into_inner();
    let answered = started.elapsed();
    let peak_when_answered_mib = server.peak_rss_mib()?;
    wait_visible(&mut queries, license, reply.position).await?;
    let visible = started.elapsed();
    if reply.added + reply.invited != rows as u64 || reply.invalid_count != 0 {
        report.fail(format!(
            "import into {license}: {rows} rows sent, answer added {} invited {} unchanged {} invalid {}",
            reply.added, reply.invited, reply.unchanged, reply.invalid_count
        ));
    }
    Ok(Imported {
        answered,
        peak_when_answered_mib,
        visible,
    })
}

/// Asks `ListUsers` for one row at `position` until the projections have reached it.
async fn wait_visible(
    queries: &mut LicenseQueriesClient<Channel>,
    license: &str,
    position: u64,
) -> Result<()> {
    let started = Instant::now();
    loop {
        let mut request = authorized(
            ListUsersRequest {
                license: license.to_owned(),
                page_size: 1,
                ..ListUsersRequest::default()
            },
            STAFF_TOKEN,
            None,
        );
        request
            .metadata_mut()
            .insert("x-min-position", position.to_string().parse()?);
        match queries.list_users(request).await {
            Ok(_) => return Ok(()),
            // The projections have not reached the position within the server's wait.
            Err(status) if status.code() == tonic::Code::Unavailable => {
                if started.elapsed() > Duration::from_millis(VISIBLE_WAIT_MS) {
                    bail!(
                        "position {position} was not visible within {VISIBLE_WAIT_MS} ms: {status}"
                    );
                }
            }
            Err(status) => bail!("ListUsers: {status}"),
        }
    }
}

/// Pages through every member of `license` and returns how many `ListUsers` shows.
async fn count_members(server: &ServerProcess, license: &str) -> Result<u64> {
    let mut queries = server.queries().await?;
    let mut token = String::new();
    let mut count = 0;
    loop {
        let page = queries
            .list_users(authorized(
                ListUsersRequest {
                    license: license.to_owned(),
                    page_size: COUNT_PAGE_SIZE,
                    page_token: token.clone(),
                    ..ListUsersRequest::default()
                },
                STAFF_TOKEN,
                None,
            ))
            .await?
            .into_inner();
        count += page.users.len() as u64;
        if !page.more {
            return Ok(count);
        }
        token = page.next_page_token;
    }
}

async fn check_all_listed(
    server: &ServerProcess,
    license: &str,
    rows: usize,
    report: &mut Report,
) -> Result<()> {
    let started = Instant::now();
    let listed = count_members(server, license).await?;
    println!(
        "  ListUsers pages through {listed} members of {license} in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    if listed != rows as u64 {
        report.fail(format!(
            "import into {license}: {rows} rows sent, ListUsers shows {listed}"
        ));
    }
    Ok(())
}

pub async fn run(
    flags: &Flags,
    binaries: &Binaries,
    only_import: bool,
    report: &mut Report,
) -> Result<()> {
    println!(
        "\n== 3: one {}-row CSV ImportCsv until every row is visible in ListUsers",
        flags.import_rows
    );
    let dir = temp_dir(&flags.work_dir, "loadgen-import-", flags.keep)?;
    let server = ServerProcess::start(&binaries.server, dir.path()).await?;
    issue_licenses(&server, "W3L", 1, 10_000_000).await?;
    let big = license_id("W3L", 0);
    println!("  server RSS before: {:.0} MiB", server.rss_mib()?);
    let cpu_before = server.cpu_seconds()?;
    let imported = import(&server, &big, flags.import_rows, report).await?;
    let peak = server.peak_rss_mib()?;
    println!(
        "  answered after {:.2} s, visible in ListUsers after {:.2} s; server CPU {:.1} s",
        imported.answered.as_secs_f64(),
        imported.visible.as_secs_f64(),
        server.cpu_seconds()? - cpu_before
    );
    report.figure(
        "3",
        "import answered",
        imported.answered.as_secs_f64(),
        "s",
        None,
    );
    report.figure(
        "3",
        "server peak RSS when answered",
        imported.peak_when_answered_mib,
        "MiB",
        None,
    );
    report.figure(
        "3",
        "import visible in ListUsers",
        imported.visible.as_secs_f64(),
        "s",
        Some(Target::AtMost(10.0)),
    );
    report.figure(
        "3",
        "server peak RSS",
        peak,
        "MiB",
        Some(Target::AtMost(512.0)),
    );
    check_all_listed(&server, &big, flags.import_rows, report).await?;
    if !only_import {
        large_license_commands(&server, &big, flags, report).await?;
        queries(&server, flags, report).await?;
    }
    server.stop().await?;
    Ok(())
}

/// Workload 4: one client adds a new user to the large license, then removes them, again and
/// again; each command is durable before its answer.
async fn large_license_commands(
    server: &ServerProcess,
    license: &str,
    flags: &Flags,
    report: &mut Report,
) -> Result<()> {
    println!(
        "\n== 4: {} single-user commands (add, remove) on a license of {} members, one client",
        flags.large_commands, flags.import_rows
    );
    let mut commands = server.commands().await?;
    let mut adds = Latencies::default();
    let mut removes = Latencies::default();
    let mut all = Latencies::default();
    for index in 0..flags.large_commands {
        let email = format!("newcomer{index}@school1.example.org");
        let started = Instant::now();
        let added = commands
            .add_users_by_email(authorized(
                AddUsersByEmailRequest {
                    license: license.to_owned(),
                    emails: email.clone(),
                },
                STAFF_TOKEN,
                None,
            ))
            .await
            .context("AddUsersByEmail on the large license")?
            .into_inner();
        let latency = started.elapsed();
        adds.record(latency);
        all.record(latency);
        if added.added != 1 {
            report.fail(format!("workload 4: adding {email} answered {added:?}"));
        }
        let started = Instant::now();
        let removed = commands
            .remove_users(authorized(
                RemoveUsersRequest {
                    license: license.to_owned(),
                    emails: vec![email.clone()],
                },
                STAFF_TOKEN,
                None,
            ))
            .await
            .context("RemoveUsers on the large license")?
            .into_inner();
        let latency = started.elapsed();
        removes.record(latency);
        all.record(latency);
        if removed.removed != 1 {
            report.fail(format!("workload 4: removing {email} answered {removed:?}"));
        }
    }
    println!("  add:    {}", adds.line());
    println!("  remove: {}", removes.line());
    report.figure("4", "p50", all.percentile_ms(50.0), "ms", None);
    report.figure(
        "4",
        "p99",
        all.percentile_ms(99.0),
        "ms",
        Some(Target::AtMost(5.0)),
    );
    Ok(())
}

/// Workload 5: `ListUsers` with `%pattern%` and `GetLicense` on a license of
/// `query_members`, one client, one at a time.
async fn queries(server: &ServerProcess, flags: &Flags, report: &mut Report) -> Result<()> {
    println!(
        "\n== 5: ListUsers with %pattern% and GetLicense on a license of {} members",
        flags.query_members
    );
    issue_licenses(server, "W5L", 1, 10_000_000).await?;
    let license = license_id("W5L", 0);
    let imported = import(server, &license, flags.query_members, report).await?;
    println!(
        "  (set-up: that import was visible after {:.2} s)",
        imported.visible.as_secs_f64()
    );
    let mut queries = server.queries().await?;
    // A mix of what a dashboard search box gets: a first name (1 in 20 members match), a
    // last name with digits (a handful match), a school (1 in 200 match), and a name nobody
    // has (no match: the whole license is searched).
    let patterns = |index: usize| -> String {
        match index % 4 {
            0 => format!("%{}%", FIRST_NAMES[index / 4 % FIRST_NAMES.len()]),
            1 => format!(
                "%{}{}%",
                LAST_NAMES[index / 4 % LAST_NAMES.len()],
                index % 1000
            ),
            2 => format!("%school{}.%", index % 200),
            _ => format!("%nobody{index}%"),
        }
    };
    let mut by_pattern = Latencies::default();
    let mut matched = 0;
    for index in 0..flags.queries {
        let started = Instant::now();
        let page = queries
            .list_users(authorized(
                ListUsersRequest {
                    license: license.clone(),
                    pattern: patterns(index),
                    page_size: QUERY_PAGE_SIZE,
                    ..ListUsersRequest::default()
                },
                STAFF_TOKEN,
                None,
            ))
            .await
            .context("ListUsers with a pattern")?
            .into_inner();
        by_pattern.record(started.elapsed());
        matched += page.users.len();
    }
    println!(
        "  ListUsers %pattern%: {} ({matched} rows returned in all)",
        by_pattern.line()
    );
    if matched == 0 {
        report.fail("workload 5: no pattern matched any member");
    }
    let mut get_license = Latencies::default();
    for _ in 0..flags.queries {
        let started = Instant::now();
        let view = queries
            .get_license(authorized(
                LicenseRef {
                    license: license.clone(),
                },
                STAFF_TOKEN,
                None,
            ))
            .await
            .context("GetLicense")?
            .into_inner();
        get_license.record(started.elapsed());
        if view.users_count != flags.query_members as u64 {
            report.fail(format!(
                "workload 5: GetLicense shows {} users, {} were imported",
                view.users_count, flags.query_members
            ));
            break;
        }
    }
    println!("  GetLicense: {}", get_license.line());
    report.figure(
        "5",
        "ListUsers %pattern% p99",
        by_pattern.percentile_ms(99.0),
        "ms",
        Some(Target::AtMost(50.0)),
    );
    report.figure(
        "5",
        "GetLicense p99",
        get_license.percentile_ms(99.0),
        "ms",
        Some(Target::AtMost(1.0)),
    );
    Ok(())
}
