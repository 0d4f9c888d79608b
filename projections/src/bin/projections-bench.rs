//! Benchmark of the projections (issue 7). Three phases, each with its figure and the
//! ratio to its target:
//!
//! - import: UserAdded events on one license, applied in the server projector's batch size
//!   (workload 3: 1,000,000 rows visible within 10 s, so the projections' share is 5 s),
//!   with the process's peak RSS (VmHWM) against the server's 512 MiB;
//! - rebuild: a realistic mixed history (many licenses; adds, invites, accepts, rejections,
//!   waitlist and promotions, removals, domain admins) applied into a fresh store in the
//!   rebuild's batch size into a rebuild generation, which is then swapped in (workload 6: at
//!   least 500,000 events/s);
//! - spread: workload 1's load as the live projector sees it: invites of new users spread
//!   over 1,000 licenses, applied in small batches (events/s and CPU per event: the
//!   projector applies one batch at a time, so this bounds workload 1's throughput);
//! - queries: ListUsers with `%pattern%` and other plans, and GetLicense, on one license
//!   (workload 5: pattern p99 at most 50 ms, GetLicense p99 at most 1 ms).
//!
//! Run with `cargo run --release -p projections --bin projections-bench -- --help` for the
//! flags; every size is settable, so `--import-events 20000 --rebuild-events 20000
//! --query-members 20000` is a quick run. The figures go to docs/projections.md.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use chrono::{DateTime, TimeZone, Utc};
use domain::events::{
    DomainAdminGranted, Event, InviteAccepted, InviteRejected, InviteSent, LicenseIssued,
    RemovalReason, SeatsChanged, UserAdded, UserPromoted, UserRemoved, UserWaitlisted,
};
use domain::{Actor, DomainName, Email, LicenseId, LicenseType, Role, Secret, Source};
use projections::{
    APPLY_BATCH_EVENTS_MAX, ListUsersRequest, ProjectedEvent, Projections, SortColumn,
};

const IMPORT_EVENTS_DEFAULT: usize = 1_000_000;
/// One plain live batch (projections::LIVE_BATCH_EVENTS_MAX).
const IMPORT_BATCH_EVENTS_DEFAULT: usize = 256;
const REBUILD_EVENTS_DEFAULT: usize = 2_000_000;
const QUERY_MEMBERS_DEFAULT: usize = 500_000;
const QUERY_ROUNDS_DEFAULT: usize = 200;
const SPREAD_EVENTS_DEFAULT: usize = 200_000;
/// About what the live projector takes per batch during workload 1 (its lag, sampled from
/// the server's metrics, runs from tens to a few hundred events).
const SPREAD_BATCH_EVENTS_DEFAULT: usize = 100;
const SPREAD_LICENSES: usize = 1_000;
const GET_LICENSE_ROUNDS: usize = 10_000;
const PAGE_SIZE: usize = 100;

/// Targets of issue 7.
const IMPORT_SECONDS_TARGET_PER_MILLION: f64 = 5.0;
const SERVER_PEAK_RSS_TARGET_MIB: f64 = 512.0;
const REBUILD_EVENTS_PER_SECOND_TARGET: f64 = 500_000.0;
const PATTERN_P99_TARGET: Duration = Duration::from_millis(50);
const GET_LICENSE_P99_TARGET: Duration = Duration::from_millis(1);

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

struct Options {
    import_events: usize,
    import_batch: usize,
    rebuild_events: usize,
    rebuild_batch: usize,
    query_members: usize,
    query_rounds: usize,
    spread_events: usize,
    spread_batch: usize,
    phases: Vec<String>,
}

const USAGE: &str = "projections-bench [--import-events N] [--import-batch N] \
[--rebuild-events N] [--rebuild-batch N] [--query-members N] [--query-rounds N] \
[--spread-events N] [--spread-batch N] [--only import|rebuild|spread|queries]... (use --rebuild-events 10000000 for workload 6's size)";

fn options() -> Result<Options, String> {
    let mut options = Options {
        import_events: IMPORT_EVENTS_DEFAULT,
        import_batch: IMPORT_BATCH_EVENTS_DEFAULT,
        rebuild_events: REBUILD_EVENTS_DEFAULT,
        rebuild_batch: APPLY_BATCH_EVENTS_MAX,
        query_members: QUERY_MEMBERS_DEFAULT,
        query_rounds: QUERY_ROUNDS_DEFAULT,
        spread_events: SPREAD_EVENTS_DEFAULT,
        spread_batch: SPREAD_BATCH_EVENTS_DEFAULT,
        phases: Vec::new(),
    };
    let mut arguments = std::env::args().skip(1);
    while let Some(flag) = arguments.next() {
        if flag == "--help" || flag == "-h" {
            return Err(USAGE.to_owned());
        }
        let value = arguments
            .next()
            .ok_or_else(|| format!("{flag} needs a value\n{USAGE}"))?;
        let number = || {
            value
                .replace('_', "")
                .parse::<usize>()
                .map_err(|_| format!("{flag} needs a number, not '{value}'"))
        };
        match flag.as_str() {
            "--import-events" => options.import_events = number()?,
            "--import-batch" => {
                options.import_batch = number()?.clamp(1, projections::LIVE_APPLY_EVENTS_MAX)
            }
            "--rebuild-events" => options.rebuild_events = number()?,
            "--rebuild-batch" => options.rebuild_batch = number()?.clamp(1, APPLY_BATCH_EVENTS_MAX),
            "--query-members" => options.query_members = number()?,
            "--query-rounds" => options.query_rounds = number()?.max(1),
            "--spread-events" => options.spread_events = number()?,
            "--spread-batch" => options.spread_batch = number()?.clamp(1, APPLY_BATCH_EVENTS_MAX),
            "--only" => match value.as_str() {
                "import" | "rebuild" | "spread" | "queries" => options.phases.push(value.clone()),
                _ => {
                    return Err(format!(
                        "--only takes import, rebuild, spread or queries\n{USAGE}"
                    ));
                }
            },
            _ => return Err(format!("unknown flag {flag}\n{USAGE}")),
        }
    }
    if options.phases.is_empty() {
        options.phases = vec![
            "import".into(),
            "rebuild".into(),
            "spread".into(),
            "queries".into(),
        ];
    }
    Ok(options)
}

fn member_email(index: usize) -> Email {
    let first = FIRST_NAMES[index % FIRST_NAMES.len()];
    let last = LAST_NAMES[(index / FIRST_NAMES.len()) % LAST_NAMES.len()];
    Email::parse(&format!("{first}.{last}{index}@school{}.edu", index % 40))
        .expect("generated emails are valid")
}

fn start_time() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 9, 1, 8, 0, 0)
        .single()
        .expect("valid time")
}

fn issued(license: &LicenseId, seats: u32, at: DateTime<Utc>, admin: &Email) -> Event {
    Event::from(LicenseIssued {
        license: license.clone(),
        license_type: LicenseType::District,
        seats,
        valid_from: at,
        valid_until: at + chrono::Duration::days(365),
        admins: vec![admin.clone()],
        key: Secret::new(format!("bench-key-{}-000000000000000", license.as_str()))
            .expect("valid secret"),
        link: None,
        auto_enrollment: false,
    })
}

/// One license of `members` UserAdded events (four sources, three actors, 1,000 members a
/// minute), produced in chunks so that the history never sits in memory whole.
struct OneLicense {
    members: usize,
    next: usize,
    start: DateTime<Utc>,
    admin: Email,
}

impl OneLicense {
    fn new(members: usize) -> Self {
        Self {
            members,
            next: 0,
            start: start_time(),
            admin: Email::parse("admin@district.edu").expect("valid email"),
        }
    }

    fn total_events(&self) -> usize {
        self.members + 1
    }

    fn next_chunk(&mut self, size: usize) -> Vec<ProjectedEvent> {
        let license = LicenseId::parse("BIG").expect("valid id");
        let actors = [Actor::Staff, Actor::System, Actor::User(self.admin.clone())];
        let sources = [Source::Email, Source::Csv, Source::Ou, Source::Domain];
        let mut chunk = Vec::with_capacity(size);
        while chunk.len() < size && self.next <= self.members {
            let position = self.next as u64 + 1;
            let event = if self.next == 0 {
                ProjectedEvent {
                    position,
                    stream: "license-BIG".into(),
                    revision: 0,
                    recorded_at: self.start,
                    actor: Actor::Staff,
                    event: issued(&license, 10_000_000, self.start, &self.admin),
                }
            } else {
                let index = self.next - 1;
                ProjectedEvent {
                    position,
                    stream: "license-BIG".into(),
                    revision: position - 1,
                    recorded_at: self.start + chrono::Duration::minutes((index / 1_000) as i64),
                    actor: actors[index % actors.len()].clone(),
                    event: Event::UserAdded(UserAdded {
                        email: member_email(index),
                        source: sources[index % sources.len()],
                        role: Role::ALL[index % Role::ALL.len()],
                        ou_path: None,
                    }),
                }
            };
            chunk.push(event);
            self.next += 1;
        }
        chunk
    }
}

/// A small deterministic generator (xorshift64*), so that runs are comparable.
struct Random(u64);

impl Random {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, bound: usize) -> usize {
        (self.next() % bound as u64) as usize
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum MemberState {
    Accepted,
    Invited,
    Waitlisted,
    Rejected,
}

#[derive(Default)]
struct LicenseState {
    /// Members in no particular order, with where each stands in `members`.
    members: Vec<(u32, MemberState)>,
    index: HashMap<u32, usize>,
    revision: u64,
}

impl LicenseState {
    fn remove(&mut self, slot: usize) -> u32 {
        let (user, _) = self.members.swap_remove(slot);
        self.index.remove(&user);
        if let Some((moved, _)) = self.members.get(slot) {
            self.index.insert(*moved, slot);
        }
        user
    }
}

/// A valid mixed history over many licenses: a new license every 400 events on average,
/// a tenth of the activity on ten large district licenses, users who belong to several
/// licenses, and every membership transition the aggregate allows.
struct MixedHistory {
    random: Random,
    licenses: Vec<LicenseState>,
    users: usize,
    position: u64,
    start: DateTime<Utc>,
    total: usize,
    admin: Email,
}

impl MixedHistory {
    fn new(total: usize) -> Self {
        Self {
            random: Random(0x9e37_79b9_7f4a_7c15),
            licenses: Vec::new(),
            users: 0,
            position: 0,
            start: start_time(),
            total,
            admin: Email::parse("admin@district.edu").expect("valid email"),
        }
    }

    fn email(user: u32) -> Email {
        member_email(user as usize)
    }

    fn next_event(&mut self) -> ProjectedEvent {
        self.position += 1;
        let position = self.position;
        let at = self.start + chrono::Duration::seconds((position / 100) as i64);
        let actor = match position % 3 {
            0 => Actor::Staff,
            1 => Actor::System,
            _ => Actor::User(self.admin.clone()),
        };
        if self.licenses.is_empty() || self.random.below(400) == 0 {
            let number = self.licenses.len();
            self.licenses.push(LicenseState::default());
            let id = LicenseId::parse(&format!("L{number:06}")).expect("valid id");
            return ProjectedEvent {
                position,
                stream: format!("license-{}", id.as_str()),
                revision: 0,
                recorded_at: at,
                actor: Actor::Staff,
                event: issued(&id, 1_000_000, at, &self.admin),
            };
        }
        if self.random.below(5_000) == 0 {
            let domain =
                DomainName::parse(&format!("school{}.edu", position % 40)).expect("valid domain");
            return ProjectedEvent {
                position,
                stream: format!("domain-{}", domain.as_str()),
                revision: position,
                recorded_at: at,
                actor: Actor::Staff,
                event: Event::DomainAdminGranted(DomainAdminGranted {
                    domain,
                    email: Self::email(self.random.below(self.users.max(1)) as u32),
                }),
            };
        }
        let number = if self.random.chance(10) {
            self.random.below(self.licenses.len().min(10))
        } else {
            self.random.below(self.licenses.len())
        };
        let event = self.license_event(number);
        let license = &mut self.licenses[number];
        let revision = license.revision;
        license.revision += 1;
        ProjectedEvent {
            position,
            stream: format!("license-L{number:06}"),
            revision,
            recorded_at: at,
            actor,
            event,
        }
    }

    fn license_event(&mut self, number: usize) -> Event {
        let sources = [Source::Email, Source::Csv, Source::Ou, Source::Domain];
        let source = sources[self.random.below(sources.len())];
        let role = Role::ALL[self.random.below(Role::ALL.len())];
        let grow = self.licenses[number].members.len() < 4 || self.random.chance(55);
        if !grow {
            if self.random.below(2_000) == 0 {
                return Event::SeatsChanged(SeatsChanged {
                    seats: 2_000_000,
                    previous_seats: 1_000_000,
                });
            }
            let license = &mut self.licenses[number];
            let slot = self.random.below(license.members.len());
            let (user, state) = license.members[slot];
            let email = Self::email(user);
            let remove = self.random.chance(30);
            let license = &mut self.licenses[number];
            return match (state, remove) {
                (_, true) => {
                    license.remove(slot);
                    Event::UserRemoved(UserRemoved {
                        email,
                        reason: RemovalReason::ByAdmin,
                    })
                }
                (MemberState::Invited, false) if self.random.chance(80) => {
                    license.members[slot].1 = MemberState::Accepted;
                    Event::InviteAccepted(InviteAccepted { email })
                }
                (MemberState::Invited, false) => {
                    license.members[slot].1 = MemberState::Rejected;
                    Event::InviteRejected(InviteRejected { email })
                }
                (MemberState::Waitlisted, false) => {
                    license.members[slot].1 = MemberState::Accepted;
                    Event::UserPromoted(UserPromoted { email })
                }
                (MemberState::Accepted | MemberState::Rejected, false) => {
                    license.remove(slot);
                    Event::UserRemoved(UserRemoved {
                        email,
                        reason: RemovalReason::ByAdmin,
                    })
                }
            };
        }
        // A fifth of the new members already belong to another license.
        let user = loop {
            let candidate = if self.users > 0 && self.random.chance(20) {
                self.random.below(self.users) as u32
            } else {
                self.users += 1;
                (self.users - 1) as u32
            };
            if !self.licenses[number].index.contains_key(&candidate) {
                break candidate;
            }
        };
        let email = Self::email(user);
        let kind = self.random.below(100);
        let (state, event) = if kind < 60 {
            (
                MemberState::Accepted,
                Event::UserAdded(UserAdded {
                    email,
                    source,
                    role,
                    ou_path: None,
                }),
            )
        } else if kind < 88 {
            (
                MemberState::Invited,
                Event::InviteSent(InviteSent {
                    email,
                    source: Source::Email,
                    role,
                }),
            )
        } else {
            (
                MemberState::Waitlisted,
                Event::UserWaitlisted(UserWaitlisted {
                    email,
                    source,
                    role,
                    ou_path: None,
                }),
            )
        };
        let license = &mut self.licenses[number];
        license.index.insert(user, license.members.len());
        license.members.push((user, state));
        event
    }

    fn next_chunk(&mut self, size: usize) -> Vec<ProjectedEvent> {
        let left = self.total.saturating_sub(self.position as usize);
        (0..size.min(left)).map(|_| self.next_event()).collect()
    }
}

/// VmHWM and VmRSS of this process, in MiB.
fn memory_mib() -> (f64, f64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|rest| {
                rest.trim()
                    .trim_end_matches("kB")
                    .trim()
                    .parse::<f64>()
                    .ok()
            })
            .map_or(f64::NAN, |kib| kib / 1024.0)
    };
    (field("VmHWM:"), field("VmRSS:"))
}

/// CPU seconds this process has used (user and system, all threads), from
/// /proc/self/stat: on a shared machine they say more than wall time.
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    let ticks = |index: usize| {
        fields
            .get(index)
            .and_then(|field| field.parse::<f64>().ok())
            .unwrap_or(f64::NAN)
    };
    // utime and stime are fields 14 and 15 of the line, 11 and 12 after the command name;
    // the kernel counts them in clock ticks of 1/100 s.
    (ticks(11) + ticks(12)) / 100.0
}

/// Resets VmHWM to the current RSS (Linux's clear_refs), so each phase reports its own
/// peak; where that is refused the peak is the process's so far.
fn reset_peak_memory() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

fn scratch_directory(phase: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("projections-bench-{phase}-{}", std::process::id()))
}

struct Applied {
    events: usize,
    elapsed: Duration,
    /// CPU seconds of the whole process (sled's background threads too) while applying.
    cpu_seconds: f64,
}

/// Feeds chunks of `batch` events to the projections, generating each chunk just before
/// it is applied; generation time is not counted.
fn apply_all(
    apply: impl Fn(&[ProjectedEvent]) -> Result<u64, projections::ProjectionError>,
    batch: usize,
    mut next_chunk: impl FnMut(usize) -> Vec<ProjectedEvent>,
) -> Result<Applied, Box<dyn std::error::Error>> {
    let mut applied = Applied {
        events: 0,
        elapsed: Duration::ZERO,
        cpu_seconds: 0.0,
    };
    loop {
        let chunk = next_chunk(batch);
        if chunk.is_empty() {
            return Ok(applied);
        }
        let started = Instant::now();
        let cpu_before = cpu_seconds();
        apply(&chunk)?;
        applied.cpu_seconds += cpu_seconds() - cpu_before;
        applied.elapsed += started.elapsed();
        applied.events += chunk.len();
    }
}

fn import_phase(options: &Options) -> Result<(), Box<dyn std::error::Error>> {
    reset_peak_memory();
    let directory = scratch_directory("import");
    let projections = Projections::open(&directory)?;
    let mut history = OneLicense::new(options.import_events);
    let total = history.total_events();
    let result = apply_all(
        |events| projections.apply_batch(events),
        options.import_batch,
        |size| history.next_chunk(size),
    )?;
    let (applied, elapsed) = (result.events, result.elapsed);
    assert_eq!(applied, total);
    // Workload 3 ends with the import visible in ListUsers: the first page is part of it.
    let started = Instant::now();
    let mut request = ListUsersRequest::new(LicenseId::parse("BIG")?);
    request.page_size = PAGE_SIZE;
    let rows = projections.list_users(&request)?.users.len();
    let first_page = started.elapsed();
    let seconds = (elapsed + first_page).as_secs_f64();
    let target_seconds = IMPORT_SECONDS_TARGET_PER_MILLION * applied as f64 / 1_000_000.0;
    let (peak, now) = memory_mib();
    println!(
        "import: {applied} UserAdded on one license in batches of {}: {seconds:.2}s = {:.0} events/s \
         (target {target_seconds:.2}s: {:.2}x of the target time); {:.2} CPU-s; first ListUsers page ({rows} rows) {first_page:.2?}",
        options.import_batch,
        applied as f64 / seconds,
        seconds / target_seconds,
        result.cpu_seconds,
    );
    println!(
        "import: peak RSS of this process {peak:.0} MiB (now {now:.0} MiB); the whole server's target {SERVER_PEAK_RSS_TARGET_MIB:.0} MiB: {:.2}x",
        peak / SERVER_PEAK_RSS_TARGET_MIB
    );
    drop(projections);
    std::fs::remove_dir_all(&directory)?;
    Ok(())
}

/// Workload 1's events as the projector sees them: 1,000 licenses issued, then invites of
/// new users, one license after another (the load generator's clients walk the licenses
/// with a stride, so consecutive events rarely share one).
struct Spread {
    events: usize,
    next: usize,
    start: DateTime<Utc>,
    admin: Email,
}

impl Spread {
    fn next_chunk(&mut self, size: usize) -> Vec<ProjectedEvent> {
        let mut chunk = Vec::with_capacity(size);
        while chunk.len() < size && self.next < SPREAD_LICENSES + self.events {
            let position = self.next as u64 + 1;
            let license_index = self.next % SPREAD_LICENSES;
            let license = LicenseId::parse(&format!("W1L{license_index:06}")).expect("valid id");
            let (revision, event) = if self.next < SPREAD_LICENSES {
                (0, issued(&license, 10_000_000, self.start, &self.admin))
            } else {
                let invite = self.next - SPREAD_LICENSES;
                let event = Event::InviteSent(InviteSent {
                    email: Email::parse(&format!(
                        "c{}-u{invite}@school{}.example.org",
                        invite % 64,
                        invite % 97
                    ))
                    .expect("valid email"),
                    source: Source::Email,
                    role: Role::Student,
                });
                ((self.next / SPREAD_LICENSES) as u64, event)
            };
            chunk.push(ProjectedEvent {
                position,
                stream: format!("license-{}", license.as_str()),
                revision,
                recorded_at: self.start + chrono::Duration::milliseconds(self.next as i64),
                actor: Actor::User(self.admin.clone()),
                event,
            });
            self.next += 1;
        }
        chunk
    }
}

fn spread_phase(options: &Options) -> Result<(), Box<dyn std::error::Error>> {
    let directory = scratch_directory("spread");
    let projections = Projections::open(&directory)?;
    let mut spread = Spread {
        events: options.spread_events,
        next: 0,
        start: start_time(),
        admin: Email::parse("admin@district.example.org")?,
    };
    let issued = apply_all(
        |events| projections.apply_batch(events),
        APPLY_BATCH_EVENTS_MAX,
        |size| spread.next_chunk(size.min(SPREAD_LICENSES - spread.next.min(SPREAD_LICENSES))),
    )?;
    assert_eq!(issued.events, SPREAD_LICENSES);
    let result = apply_all(
        |events| projections.apply_batch(events),
        options.spread_batch,
        |size| spread.next_chunk(size),
    )?;
    assert_eq!(result.events, options.spread_events);
    println!(
        "spread: {} invites over {SPREAD_LICENSES} licenses in batches of {}: {:.0} events/s, \
         {:.1} us of CPU per event (the process, sled's threads included)",
        result.events,
        options.spread_batch,
        result.events as f64 / result.elapsed.as_secs_f64(),
        result.cpu_seconds * 1e6 / result.events as f64,
    );
    drop(projections);
    std::fs::remove_dir_all(&directory)?;
    Ok(())
}

fn rebuild_phase(options: &Options) -> Result<(), Box<dyn std::error::Error>> {
    reset_peak_memory();
    let directory = scratch_directory("rebuild");
    let projections = Projections::open(&directory)?;
    // The generation a schema change rebuilds, as `replay-tool rebuild` and the server's
    // projector feed it; swapping it in writes its last chunk, so that is timed too.
    let rebuild = projections.begin_rebuild()?;
    let mut history = MixedHistory::new(options.rebuild_events);
    let mut result = apply_all(
        |events| rebuild.apply_batch(events),
        options.rebuild_batch,
        |size| history.next_chunk(size),
    )?;
    let started = Instant::now();
    let cpu_before = cpu_seconds();
    projections.finish_rebuild(rebuild)?;
    result.cpu_seconds += cpu_seconds() - cpu_before;
    result.elapsed += started.elapsed();
    let (applied, elapsed) = (result.events, result.elapsed);
    let rate = applied as f64 / elapsed.as_secs_f64();
    let (peak, _) = memory_mib();
    let members: usize = history.licenses.iter().map(|l| l.members.len()).sum();
    println!(
        "rebuild: {applied} mixed events ({} licenses, {members} members at the end, {} users) in batches of {}: \
         {:.2?} = {rate:.0} events/s (target {REBUILD_EVENTS_PER_SECOND_TARGET:.0}: {:.3}x), {:.0} events per CPU-s; peak RSS {peak:.0} MiB (the generator's state included)",
        history.licenses.len(),
        history.users,
        options.rebuild_batch,
        elapsed,
        rate / REBUILD_EVENTS_PER_SECOND_TARGET,
        applied as f64 / result.cpu_seconds,
    );
    drop(projections);
    std::fs::remove_dir_all(&directory)?;
    Ok(())
}

fn percentile(sorted: &[Duration], share: f64) -> Duration {
    let index = ((sorted.len() as f64 * share).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[index]
}

/// Times `rounds` calls after a first one (which loads the in-memory email list and is
/// reported apart) and prints p50 and p99, with the ratio of p99 to `target` if given.
fn measure(name: &str, rounds: usize, target: Option<Duration>, mut run: impl FnMut() -> usize) {
    let mut rows = 0;
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
    let p99 = percentile(&times, 0.99);
    let ratio = target.map_or(String::new(), |target| {
        format!(
            " (target p99 {target:.0?}: {:.2}x)",
            p99.as_secs_f64() / target.as_secs_f64()
        )
    });
    println!(
        "{name:<48} rows={rows:<6} first={first:>9.2?} p50={:>9.2?} p99={p99:>9.2?}{ratio}",
        percentile(&times, 0.50),
    );
}

fn queries_phase(options: &Options) -> Result<(), Box<dyn std::error::Error>> {
    let directory = scratch_directory("queries");
    let projections = Projections::open(&directory)?;
    let mut history = OneLicense::new(options.query_members);
    let built = apply_all(
        |events| projections.apply_batch(events),
        APPLY_BATCH_EVENTS_MAX,
        |size| history.next_chunk(size),
    )?;
    let (applied, elapsed) = (built.events, built.elapsed);
    println!(
        "queries: a license of {} members built in {elapsed:.2?} ({:.0} events/s, batches of {APPLY_BATCH_EVENTS_MAX})",
        options.query_members,
        applied as f64 / elapsed.as_secs_f64()
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
    let rounds = options.query_rounds;
    let pattern_target = Some(PATTERN_P99_TARGET);
    measure(
        "ListUsers %garcia1234% (rare), by email",
        rounds,
        pattern_target,
        list(Some("%garcia1234%"), SortColumn::Email, false),
    );
    measure(
        "ListUsers %thomas% (2%), by email",
        rounds,
        pattern_target,
        list(Some("%thomas%"), SortColumn::Email, false),
    );
    measure(
        "ListUsers %thomas% (2%), by added_at desc",
        rounds,
        pattern_target,
        list(Some("%thomas%"), SortColumn::AddedAt, true),
    );
    measure(
        "ListUsers %school7.edu (2.5%), by role",
        rounds,
        pattern_target,
        list(Some("%school7.edu"), SortColumn::Role, false),
    );
    measure(
        "ListUsers thomas.% (prefix), by email",
        rounds,
        None,
        list(Some("thomas.%"), SortColumn::Email, false),
    );
    measure(
        "ListUsers no filter, by status desc",
        rounds,
        None,
        list(None, SortColumn::Status, true),
    );
    measure(
        "ListUsers no filter, by email",
        rounds,
        None,
        list(None, SortColumn::Email, false),
    );
    let now = Utc::now();
    measure(
        "GetLicense",
        GET_LICENSE_ROUNDS,
        Some(GET_LICENSE_P99_TARGET),
        || {
            projections
                .get_license(&license, now)
                .expect("query")
                .map_or(0, |view| view.users_count as usize)
        },
    );
    let (peak, _) = memory_mib();
    println!("queries: peak RSS of this process so far {peak:.0} MiB");
    drop(projections);
    std::fs::remove_dir_all(&directory)?;
    Ok(())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let options = match options() {
        Ok(options) => options,
        Err(message) => {
            eprintln!("{message}");
            std::process::exit(2);
        }
    };
    for phase in &options.phases {
        match phase.as_str() {
            "import" => import_phase(&options)?,
            "rebuild" => rebuild_phase(&options)?,
            "spread" => spread_phase(&options)?,
            _ => queries_phase(&options)?,
        }
    }
    Ok(())
}
