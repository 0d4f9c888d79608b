//! A small ledger the tests build themselves, through the real domain and ledger APIs,
//! and the tampering of a copy of it.

#![allow(dead_code)]

use std::path::{Path, PathBuf};

use chrono::{DateTime, Duration, Utc};
use domain::events::EventMeta;
use domain::{
    Actor, AdminChannel, Context, Email, License, LicenseCommand, LicenseId, LicenseType, Secret,
};
use ledger::{EmbeddedLog, EmbeddedOptions, EventLog, ExpectedRevision, NewEvent};
use uuid::Uuid;

/// A key whose text must never show up in any output.
pub const SECRET_KEY_TEXT: &str = "rotated-key-must-never-print-0001";

pub fn time(raw: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(raw)
        .unwrap()
        .with_timezone(&Utc)
}

pub fn email(raw: &str) -> Email {
    Email::parse(raw).unwrap()
}

fn secret(text: &str) -> Secret {
    Secret::new(text.to_owned()).unwrap()
}

pub fn admin() -> Actor {
    Actor::User(email("admin@north.edu"))
}

/// Decides commands with the domain and appends their events to an embedded ledger.
pub struct Writer {
    pub log: EmbeddedLog,
    licenses: std::collections::BTreeMap<String, (License, Option<u64>)>,
    pub events: u64,
}

impl Writer {
    pub fn open(data: &Path) -> Self {
        let log = EmbeddedLog::open(data.join("log"), EmbeddedOptions::default()).unwrap();
        Self {
            log,
            licenses: Default::default(),
            events: 0,
        }
    }

    pub async fn run(&mut self, license: &str, at: &str, actor: Actor, command: LicenseCommand) {
        let now = time(at);
        let (aggregate, revision) = self.licenses.entry(license.to_owned()).or_default();
        let ctx = Context::new(now, actor.clone());
        let decision = aggregate
            .handle(&command, &ctx)
            .unwrap_or_else(|e| panic!("{license} at {at}: {e:?}"));
        if decision.events.is_empty() {
            return;
        }
        let meta = EventMeta {
            at: now,
            actor: actor.clone(),
        };
        let mut batch = Vec::new();
        for event in &decision.events {
            aggregate.apply(&meta, event);
            batch.push(NewEvent {
                event_id: Uuid::new_v4(),
                event_type: event.type_name().to_owned(),
                schema_version: event.schema_version(),
                recorded_at: now,
                actor: actor.to_string(),
                correlation_id: Uuid::new_v4(),
                payload: event.encode(),
            });
        }
        let expected = revision.map_or(ExpectedRevision::NoStream, ExpectedRevision::Exact);
        let result = self
            .log
            .append(
                &format!("license-{license}"),
                expected,
                batch,
                Uuid::new_v4(),
            )
            .await
            .unwrap();
        *revision = Some(result.next_expected_revision);
        self.events = result.last_position + 1;
    }

    pub async fn close(self) {
        self.log.close().await.unwrap();
    }
}

pub fn issue(license: &str, license_type: LicenseType, seats: u32, key: &str) -> LicenseCommand {
    LicenseCommand::Issue {
        license: LicenseId::parse(license).unwrap(),
        license_type,
        seats,
        valid_from: time("2026-01-01T00:00:00Z"),
        valid_until: time("2027-07-31T23:59:59Z"),
        admins: vec![email("admin@north.edu")],
        key: secret(key),
        link: secret(&format!("{key}-link")),
    }
}

pub fn add(emails: &[&str]) -> LicenseCommand {
    LicenseCommand::AddUsers {
        emails: emails.iter().map(|e| email(e)).collect(),
        channel: AdminChannel::EmailList,
    }
}

pub fn roster(students: &[&str]) -> LicenseCommand {
    LicenseCommand::SyncRoster {
        course: "math-101".into(),
        students: students.iter().map(|e| email(e)).collect(),
    }
}

/// The test ledger: two licenses, interleaved, with invites, roster joins, a waitlist,
/// a seat increase that promotes, a removal, an acceptance and a key rotation.
///
/// License `north` (teacher, 3 seats):
/// - 2026-02-01 issued
/// - 2026-02-10 admin adds ann, bob (invited)
/// - 2026-02-20 roster: cid, dan, eve, fay (cid accepted; dan, eve, fay waitlisted)
/// - 2026-03-05 seats 3 -> 5 (dan, eve promoted)
/// - 2026-03-10 ann removed (fay promoted)
/// - 2026-03-12 bob accepts his invite
/// - 2026-03-15 key rotated
pub async fn build(data: &Path) -> u64 {
    let mut w = Writer::open(data);
    w.run(
        "north",
        "2026-02-01T09:00:00Z",
        Actor::Staff,
        issue("north", LicenseType::Teacher, 3, "north-key-000000000001"),
    )
    .await;
    w.run(
        "south",
        "2026-02-02T09:00:00Z",
        Actor::Staff,
        issue("south", LicenseType::Teacher, 2, "south-key-000000000001"),
    )
    .await;
    w.run(
        "north",
        "2026-02-10T09:00:00Z",
        admin(),
        add(&["ann@x.edu", "bob@x.edu"]),
    )
    .await;
    w.run(
        "south",
        "2026-02-11T09:00:00Z",
        admin(),
        add(&["zed@y.edu"]),
    )
    .await;
    w.run(
        "north",
        "2026-02-20T09:00:00Z",
        Actor::System,
        roster(&["cid@x.edu", "dan@x.edu", "eve@x.edu", "fay@x.edu"]),
    )
    .await;
    w.run(
        "north",
        "2026-03-05T09:00:00Z",
        Actor::Staff,
        LicenseCommand::ChangeSeats { seats: 5 },
    )
    .await;
    w.run(
        "south",
        "2026-03-06T09:00:00Z",
        Actor::System,
        roster(&["cid@x.edu", "yul@y.edu"]),
    )
    .await;
    w.run(
        "north",
        "2026-03-10T09:00:00Z",
        admin(),
        LicenseCommand::RemoveUsers {
            emails: vec![email("ann@x.edu")],
        },
    )
    .await;
    w.run(
        "north",
        "2026-03-12T09:00:00Z",
        Actor::User(email("bob@x.edu")),
        LicenseCommand::AcceptInvite,
    )
    .await;
    w.run(
        "north",
        "2026-03-15T09:00:00Z",
        admin(),
        LicenseCommand::RotateKey {
            key: secret(SECRET_KEY_TEXT),
        },
    )
    .await;
    let n = w.events;
    w.close().await;
    n
}

/// Copies a directory tree.
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

pub fn segment_path(data: &Path) -> PathBuf {
    data.join("log")
        .join("segments")
        .join(format!("{:012}.seg", 0))
}

pub use ledger::tamper::{delete_record, record_ranges as records, swap_records};

/// Flips one bit of record `k`'s payload and recomputes its CRC, so that only the hash
/// chain can tell (AUD-3).
pub fn edit_payload(bytes: &mut [u8], k: usize) {
    let r = records(bytes)[k].clone();
    let body = r.start + 8;
    let mut at = body + 1 + 8 + 16; // flags, position, event id
    let skip_str = |at: &mut usize, bytes: &[u8]| {
        let n = u32::from_be_bytes(bytes[*at..*at + 4].try_into().unwrap()) as usize;
        *at += 4 + n;
    };
    skip_str(&mut at, bytes); // stream
    at += 8; // revision
    skip_str(&mut at, bytes); // event type
    at += 2 + 12; // schema version, time
    skip_str(&mut at, bytes); // actor
    at += 16 + 16; // command id, correlation id
    let payload_len = u32::from_be_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
    assert!(payload_len > 0);
    bytes[at + 4 + payload_len / 2] ^= 0x01;
    ledger::tamper::refresh_crc(bytes, r);
}

/// Runs the CLI in-process; returns the exit code and what it printed on stdout.
pub async fn cli(args: &[&str]) -> (u8, String) {
    let mut out = Vec::new();
    let mut full = vec!["replay-tool"];
    full.extend_from_slice(args);
    let code = replay_tool::cli::run_args(full, &mut out).await;
    (code, String::from_utf8(out).unwrap())
}

/// Shorthand for a date-ish time.
pub fn days(n: i64) -> Duration {
    Duration::days(n)
}
