//! Workload 6: `replay-tool rebuild` and `verify` over a large log.
//!
//! The log is generated straight through `ledger::EmbeddedLog` with large appends (one per
//! license), not over gRPC, so that ten million events take minutes rather than hours. The
//! events are real decisions of the domain's `License` aggregate, so the projections accept
//! them: licenses issued, invites sent by an admin, accepted and rejected by their users,
//! users added at once by staff, and removals.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use chrono::{DateTime, Duration as TimeSpan, Utc};
use domain::events::{Event, EventMeta};
use domain::{
    Actor, AdminChannel, Context as DecisionContext, Email, License, LicenseCommand, LicenseId,
    LicenseType, Secret,
};
use ledger::{EmbeddedLog, EmbeddedOptions, EventLog, ExpectedRevision, NewEvent};

use crate::report::{Report, Target};
use crate::{Binaries, Flags};

/// Events each generated license holds, roughly: a school's year of deployments.
const EVENTS_PER_LICENSE: u64 = 1_000;
/// Licenses generated at once (one thread each) and appends in flight.
const GENERATOR_THREADS: usize = 2;
const APPENDS_IN_FLIGHT: usize = 8;

fn email(text: String) -> Email {
    Email::parse(&text).expect("generated emails are valid")
}

/// Decides `command` on `license` as `actor` at `at`, applies the decision, and adds its
/// events to `out`.
fn decide(
    license: &mut License,
    command: &LicenseCommand,
    actor: Actor,
    at: DateTime<Utc>,
    out: &mut Vec<NewEvent>,
) {
    let context = DecisionContext::new(at, actor.clone());
    let decision = license
        .handle(command, &context)
        .expect("the generated commands are all valid");
    let meta = EventMeta { at, actor };
    let correlation_id = uuid::Uuid::new_v4();
    for event in &decision.events {
        license.apply(&meta, event);
        out.push(new_event(event, &meta, correlation_id));
    }
}

fn new_event(event: &Event, meta: &EventMeta, correlation_id: uuid::Uuid) -> NewEvent {
    NewEvent {
        event_id: uuid::Uuid::new_v4(),
        event_type: event.type_name().to_owned(),
        schema_version: event.schema_version(),
        recorded_at: meta.at,
        actor: meta.actor.to_string(),
        correlation_id,
        payload: event.encode(),
    }
}

/// One license's history of about `EVENTS_PER_LICENSE` events.
fn license_history(index: u64, start: DateTime<Utc>) -> (String, Vec<NewEvent>) {
    let id = format!("R{index:07}");
    let admin = email(format!("admin{index}@district{}.example.org", index % 50));
    let mut license = License::default();
    let mut events = Vec::with_capacity(EVENTS_PER_LICENSE as usize + 64);
    let mut at = start + TimeSpan::seconds(index as i64);
    decide(
        &mut license,
        &LicenseCommand::Issue {
            license: LicenseId::parse(&id).expect("valid id"),
            license_type: LicenseType::School,
            seats: 5_000,
            valid_from: start,
            valid_until: start + TimeSpan::days(3_650),
            admins: vec![admin.clone()],
            key: Secret::new(format!("{id}-key-{:032x}", index)).expect("valid key"),
            link: Secret::new(format!("{id}-link-{:032x}", index)).expect("valid link"),
        },
        Actor::Staff,
        at,
        &mut events,
    );
    let mut round = 0u64;
    while (events.len() as u64) < EVENTS_PER_LICENSE {
        at += TimeSpan::minutes(7);
        let invited: Vec<Email> = (0..20)
            .map(|n| {
                email(format!(
                    "teacher{round}x{n}@school{}.example.org",
                    index % 200
                ))
            })
            .collect();
        decide(
            &mut license,
            &LicenseCommand::AddUsers {
                emails: invited.clone(),
                channel: AdminChannel::EmailList,
            },
            Actor::User(admin.clone()),
            at,
            &mut events,
        );
        for (n, person) in invited.iter().enumerate() {
            let command = match n % 20 {
                0..12 => LicenseCommand::AcceptInvite,
                12..15 => LicenseCommand::RejectInvite,
                _ => continue,
            };
            at += TimeSpan::seconds(30);
            decide(
                &mut license,
                &command,
                Actor::User(person.clone()),
                at,
                &mut events,
            );
        }
        let students: Vec<Email> = (0..10)
            .map(|n| {
                email(format!(
                    "student{round}x{n}@school{}.example.org",
                    index % 200
                ))
            })
            .collect();
        decide(
            &mut license,
            &LicenseCommand::AddUsers {
                emails: students.clone(),
                channel: AdminChannel::Csv,
            },
            Actor::Staff,
            at,
            &mut events,
        );
        decide(
            &mut license,
            &LicenseCommand::RemoveUsers {
                emails: vec![invited[0].clone(), students[0].clone(), students[1].clone()],
            },
            Actor::User(admin.clone()),
            at,
            &mut events,
        );
        round += 1;
    }
    (format!("license-{id}"), events)
}

/// Appends about `total` events to a fresh embedded log in `data_dir/log`; returns how many.
async fn generate(data_dir: &Path, total: u64) -> Result<u64> {
    let log = Arc::new(EmbeddedLog::open(
        data_dir.join("log"),
        EmbeddedOptions::default(),
    )?);
    let licenses = total.div_ceil(EVENTS_PER_LICENSE).max(1);
    let start: DateTime<Utc> = "2024-08-01T00:00:00Z".parse().expect("a valid time");
    let (sender, mut receiver) =
        tokio::sync::mpsc::channel::<(String, Vec<NewEvent>)>(APPENDS_IN_FLIGHT * 2);
    let mut generators = Vec::new();
    for thread in 0..GENERATOR_THREADS as u64 {
        let sender = sender.clone();
        generators.push(tokio::task::spawn_blocking(move || {
            let mut index = thread;
            while index < licenses {
                if sender.blocking_send(license_history(index, start)).is_err() {
                    return;
                }
                index += GENERATOR_THREADS as u64;
            }
        }));
    }
    drop(sender);
    let started = Instant::now();
    let mut appended = 0u64;
    let mut next_report = 1_000_000u64;
    let mut in_flight = tokio::task::JoinSet::new();
    while let Some((stream, events)) = receiver.recv().await {
        while in_flight.len() >= APPENDS_IN_FLIGHT {
            appended += in_flight.join_next().await.expect("not empty")??;
        }
        let log = log.clone();
        in_flight.spawn(async move {
            let count = events.len() as u64;
            log.append(
                &stream,
                ExpectedRevision::NoStream,
                events,
                uuid::Uuid::new_v4(),
            )
            .await?;
            anyhow::Ok(count)
        });
        if appended >= next_report {
            eprintln!(
                "  generated {appended} events ({:.0} events/s)",
                appended as f64 / started.elapsed().as_secs_f64()
            );
            next_report += 1_000_000;
        }
    }
    while let Some(count) = in_flight.join_next().await {
        appended += count??;
    }
    for generator in generators {
        generator.await?;
    }
    log.close().await?;
    println!(
        "  generated {appended} events over {licenses} licenses in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    Ok(appended)
}

fn directory_bytes(dir: &Path) -> u64 {
    let mut total = 0;
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            match entry.metadata() {
                Ok(meta) if meta.is_dir() => total += directory_bytes(&entry.path()),
                Ok(meta) => total += meta.len(),
                Err(_) => {}
            }
        }
    }
    total
}

/// Runs `replay-tool --data DIR ARGS...` and returns its standard output and wall time.
fn replay_tool(binary: &Path, data_dir: &Path, args: &[&str]) -> Result<(String, f64)> {
    let started = Instant::now();
    let output = std::process::Command::new(binary)
        .arg("--data")
        .arg(data_dir)
        .args(args)
        .stderr(std::process::Stdio::inherit())
        .output()
        .with_context(|| format!("cannot run {}", binary.display()))?;
    let seconds = started.elapsed().as_secs_f64();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    if !output.status.success() {
        bail!(
            "replay-tool {} exited with {}: {stdout}",
            args.join(" "),
            output.status
        );
    }
    Ok((stdout, seconds))
}

pub async fn run(flags: &Flags, binaries: &Binaries, report: &mut Report) -> Result<()> {
    println!(
        "\n== 6: replay-tool rebuild and verify over a {}-event log",
        flags.replay_events
    );
    let dir = crate::process::temp_dir(&flags.work_dir, "loadgen-replay-", flags.keep)?;
    let events = generate(dir.path(), flags.replay_events).await?;
    println!(
        "  the log takes {:.2} GiB on disk",
        directory_bytes(&dir.path().join("log")) as f64 / 1024.0 / 1024.0 / 1024.0
    );

    let (text, seconds) = replay_tool(&binaries.replay_tool, dir.path(), &["verify", "--json"])?;
    let outcome: serde_json::Value = serde_json::from_str(&text).context("verify --json")?;
    let checked = outcome["events_checked"].as_u64().unwrap_or(0);
    println!("  verify: {checked} events checked in {seconds:.2} s (whole process)");
    if checked != events || !outcome["first_break"].is_null() {
        report.fail(format!(
            "workload 6: verify checked {checked} of {events} events, break: {}",
            outcome["first_break"]
        ));
    }
    report.figure(
        "6",
        "verify",
        checked as f64 / seconds,
        "events/s",
        Some(Target::AtLeast(2_000_000.0)),
    );

    let (text, seconds) = replay_tool(
        &binaries.replay_tool,
        dir.path(),
        &["rebuild", "--no-progress", "--json"],
    )?;
    let outcome: serde_json::Value = serde_json::from_str(&text).context("rebuild --json")?;
    let rebuilt = outcome["events"].as_u64().unwrap_or(0);
    println!(
        "  rebuild: {rebuilt} events in {seconds:.2} s (whole process); the tool's own figure: \
         {:.0} events/s over {:.2} s",
        outcome["events_per_second"].as_f64().unwrap_or(0.0),
        outcome["seconds"].as_f64().unwrap_or(0.0)
    );
    if rebuilt != events {
        report.fail(format!(
            "workload 6: rebuild applied {rebuilt} of {events} events"
        ));
    }
    report.figure(
        "6",
        "rebuild",
        rebuilt as f64 / seconds,
        "events/s",
        Some(Target::AtLeast(500_000.0)),
    );
    Ok(())
}
