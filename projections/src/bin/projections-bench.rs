//! Benchmark of the projections: rebuild speed for a license of 500,000 members, and query
//! latency on it. Run with
//! `CARGO_TARGET_DIR=/work/main/target-projections cargo run --release -p projections --bin projections-bench`
//! (an optional argument sets the member count). The figures go to docs/projections.md.

use std::time::{Duration, Instant};

use chrono::{DateTime, TimeZone, Utc};
use domain::events::{Event, LicenseIssued, UserAdded};
use domain::{Actor, Email, LicenseId, LicenseType, Role, Secret, Source};
use projections::{
    APPLY_BATCH_EVENTS_MAX, ListUsersRequest, ProjectedEvent, Projections, SortColumn,
};

const MEMBERS_DEFAULT: usize = 500_000;
const QUERY_ROUNDS: usize = 200;
const GET_LICENSE_ROUNDS: usize = 10_000;
const PAGE_SIZE: usize = 100;

const FIRST_NAMES: &[&str] = &[
    "ava", "ben", "chloe", "david", "emma", "felix", "grace", "henry", "isla", "jack", "kate",
    "liam", "mia", "noah", "olivia", "peter", "quinn", "ruby", "sam", "thomas", "uma", "victor",
    "willow", "xavier", "yara", "zoe", "adam", "bella", "carl", "daisy", "eric", "fiona", "george",
    "hannah", "ivan", "julia", "kevin", "laura", "mark", "nina", "oscar", "paula", "rosa", "steve",
    "tina", "ursula", "vera", "walter", "yusuf", "zack",
];
const LAST_NAMES: &[&str] = &[
    "smith", "jones", "garcia", "miller", "davis", "lopez", "wilson", "anderson", "taylor",
    "moore", "martin", "lee", "perez", "white", "harris", "clark", "lewis", "young", "king",
    "wright", "hill", "scott", "green", "adams", "baker", "nelson", "carter", "mitchell",
    "roberts", "turner", "phillips", "campbell", "parker", "evans", "edwards", "collins",
    "stewart", "morris", "rogers", "reed", "cook", "morgan", "bell", "murphy", "bailey", "rivera",
    "cooper", "cox", "howard", "ward",
];

fn member_email(index: usize) -> Email {
    let first = FIRST_NAMES[index % FIRST_NAMES.len()];
    let last = LAST_NAMES[(index / FIRST_NAMES.len()) % LAST_NAMES.len()];
    Email::parse(&format!("{first}.{last}{index}@school{}.edu", index % 40))
        .expect("generated emails are valid")
}

fn history(members: usize, start: DateTime<Utc>) -> Vec<ProjectedEvent> {
    let license = LicenseId::parse("BIG").expect("valid id");
    let admin = Email::parse("admin@district.edu").expect("valid email");
    let mut events = Vec::with_capacity(members + 1);
    events.push(ProjectedEvent {
        position: 1,
        stream: "license-BIG".into(),
        revision: 1,
        recorded_at: start,
        actor: Actor::Staff,
        event: Event::LicenseIssued(LicenseIssued {
            license,
            license_type: LicenseType::District,
            seats: 10_000_000,
            valid_from: start,
            valid_until: start + chrono::Duration::days(365),
            admins: vec![admin.clone()],
            key: Secret::new("bench-key-0000000000000000".into()).expect("valid secret"),
            link: None,
            auto_enrollment: false,
        }),
    });
    let actors = [Actor::Staff, Actor::System, Actor::User(admin)];
    let sources = [Source::Email, Source::Csv, Source::Ou, Source::Domain];
    for index in 0..members {
        let position = index as u64 + 2;
        events.push(ProjectedEvent {
            position,
            stream: "license-BIG".into(),
            revision: position,
            // A batch of 1,000 members per minute, as CSV imports and syncs arrive.
            recorded_at: start + chrono::Duration::minutes((index / 1_000) as i64),
            actor: actors[index % actors.len()].clone(),
            event: Event::UserAdded(UserAdded {
                email: member_email(index),
                source: sources[index % sources.len()],
                role: Role::ALL[index % Role::ALL.len()],
                ou_path: None,
            }),
        });
    }
    events
}

fn percentile(sorted: &[Duration], share: f64) -> Duration {
    let index = ((sorted.len() as f64 * share).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[index]
}

fn measure(name: &str, rounds: usize, mut run: impl FnMut() -> usize) {
    let mut rows = 0;
    // The first call loads the in-memory email list; it is reported, not counted.
    let started = Instant::now();
    run();
    let first = started.elapsed();
    let mut times = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        let started = Instant::now();
        rows = run();
        times.push(started.elapsed());
    }
    times.sort_unstable();
    println!(
        "{name:<48} rows={rows:<5} first={:>8.2?} p50={:>8.2?} p99={:>8.2?}",
        first,
        percentile(&times, 0.50),
        percentile(&times, 0.99)
    );
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let members = std::env::args()
        .nth(1)
        .map(|raw| raw.parse::<usize>())
        .transpose()?
        .unwrap_or(MEMBERS_DEFAULT);
    let start = Utc
        .with_ymd_and_hms(2026, 9, 1, 8, 0, 0)
        .single()
        .expect("valid time");
    let events = history(members, start);
    let directory = std::env::temp_dir().join(format!("projections-bench-{}", std::process::id()));
    let projections = Projections::open(&directory)?;

    let started = Instant::now();
    for batch in events.chunks(APPLY_BATCH_EVENTS_MAX) {
        projections.apply_batch(batch)?;
    }
    let elapsed = started.elapsed();
    println!(
        "rebuild: {} events in {:.2?} = {:.0} events/s (batches of {APPLY_BATCH_EVENTS_MAX})",
        events.len(),
        elapsed,
        events.len() as f64 / elapsed.as_secs_f64()
    );

    let license = LicenseId::parse("BIG")?;
    let store = &projections;
    let list = |pattern: Option<&str>, sort: SortColumn, descending: bool| {
        let mut request = ListUsersRequest::new(license.clone());
        request.pattern = pattern.map(str::to_owned);
        request.sort = sort;
        request.descending = descending;
        request.page_size = PAGE_SIZE;
        move || store.list_users(&request).expect("query").users.len()
    };
    measure(
        "ListUsers %garcia1234% (rare), by email",
        QUERY_ROUNDS,
        list(Some("%garcia1234%"), SortColumn::Email, false),
    );
    measure(
        "ListUsers %thomas% (2%), by email",
        QUERY_ROUNDS,
        list(Some("%thomas%"), SortColumn::Email, false),
    );
    measure(
        "ListUsers %thomas% (2%), by added_at desc",
        QUERY_ROUNDS,
        list(Some("%thomas%"), SortColumn::AddedAt, true),
    );
    measure(
        "ListUsers %school7.edu (2.5%), by role",
        QUERY_ROUNDS,
        list(Some("%school7.edu"), SortColumn::Role, false),
    );
    measure(
        "ListUsers thomas.% (prefix), by email",
        QUERY_ROUNDS,
        list(Some("thomas.%"), SortColumn::Email, false),
    );
    measure(
        "ListUsers no filter, by status desc",
        QUERY_ROUNDS,
        list(None, SortColumn::Status, true),
    );
    measure(
        "ListUsers no filter, by email",
        QUERY_ROUNDS,
        list(None, SortColumn::Email, false),
    );
    let now = Utc::now();
    measure("GetLicense", GET_LICENSE_ROUNDS, || {
        projections
            .get_license(&license, now)
            .expect("query")
            .map_or(0, |view| view.users_count as usize)
    });
    drop(projections);
    std::fs::remove_dir_all(&directory)?;
    Ok(())
}
