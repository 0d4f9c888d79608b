//! Property tests over random command sequences against one license (issue 2): seats are
//! never over-allocated except after a seat decrease (and then nobody new joins), each member
//! appears once and the counts agree with the members, a refused command changes nothing,
//! waitlisted users wait only while no seat is free, and folding the recorded events from
//! scratch gives the same state.

use std::collections::BTreeSet;

use chrono::{DateTime, Duration, Utc};
use domain::events::{Event, EventMeta, OuEntry};
use domain::{
    Actor, AdminChannel, Context, DomainName, Email, License, LicenseCommand, LicenseId,
    LicenseType, Lms, OuPath, Role, ScannedAccount, Secret, Status,
};
use proptest::prelude::*;

/// The CI run's case count (issue 2 asks for at least 10,000).
const PROPERTY_CASES: u32 = 10_000;
const COMMANDS_PER_CASE_MAX: usize = 40;

const POOL: &[&str] = &[
    "a@north.edu",
    "b@north.edu",
    "c@north.edu",
    "d@north.edu",
    "e@gmail.com",
    "f@gmail.com",
    "g@north.edu",
    "h@gmail.com",
];
const ADMIN: &str = "admin@north.edu";

fn email(index: usize) -> Email {
    Email::parse(POOL[index % POOL.len()]).unwrap()
}

fn start() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2026-09-01T00:00:00Z")
        .unwrap()
        .with_timezone(&Utc)
}

fn valid_until() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2027-07-31T23:59:59Z")
        .unwrap()
        .with_timezone(&Utc)
}

fn secret(n: u32) -> Secret {
    Secret::new(format!("secret-{n:0>20}")).unwrap()
}

#[derive(Clone, Debug)]
enum Who {
    Staff,
    System,
    Admin,
    Member(usize),
}

impl Who {
    fn actor(&self) -> Actor {
        match self {
            Who::Staff => Actor::Staff,
            Who::System => Actor::System,
            Who::Admin => Actor::User(Email::parse(ADMIN).unwrap()),
            Who::Member(i) => Actor::User(email(*i)),
        }
    }
}

#[derive(Clone, Debug)]
enum Step {
    Command(Who, LicenseCommand),
    /// Moves the clock forward by this many days (possibly past valid_until).
    Wait(i64),
}

fn who() -> impl Strategy<Value = Who> {
    prop_oneof![
        1 => Just(Who::Staff),
        1 => Just(Who::System),
        3 => Just(Who::Admin),
        3 => (0..POOL.len()).prop_map(Who::Member),
    ]
}

fn subset() -> impl Strategy<Value = Vec<Email>> {
    prop::collection::vec((0..POOL.len()).prop_map(email), 0..6)
}

fn ou_entries() -> impl Strategy<Value = Vec<OuEntry>> {
    prop::collection::vec(
        (0..POOL.len(), any::<bool>(), prop::bool::weighted(0.2)).prop_map(
            |(index, student, suspended)| OuEntry {
                email: email(index),
                ou_path: OuPath::parse("/Students").unwrap(),
                role: if student {
                    Role::Student
                } else {
                    Role::Teacher
                },
                suspended,
            },
        ),
        0..8,
    )
}

fn command() -> impl Strategy<Value = LicenseCommand> {
    let north = || DomainName::parse("north.edu").unwrap();
    prop_oneof![
        3 => (subset(), any::<bool>()).prop_map(|(emails, csv)| LicenseCommand::AddUsers {
            emails,
            channel: if csv { AdminChannel::Csv } else { AdminChannel::EmailList },
        }),
        2 => subset().prop_map(|emails| LicenseCommand::RemoveUsers { emails }),
        2 => Just(LicenseCommand::AcceptInvite),
        2 => Just(LicenseCommand::RejectInvite),
        2 => any::<bool>().prop_map(|right| LicenseCommand::RedeemKey {
            key: if right { secret(1) } else { Secret::presented("wrong") },
        }),
        1 => any::<bool>().prop_map(|right| LicenseCommand::JoinViaLink {
            token: if right { secret(2) } else { Secret::presented("wrong") },
        }),
        2 => (1u32..7).prop_map(|seats| LicenseCommand::ChangeSeats { seats }),
        1 => (0..POOL.len()).prop_map(|i| LicenseCommand::SignUp { email: email(i), role: Role::Student }),
        1 => subset().prop_map(move |emails| LicenseCommand::ScanDomain {
            domain: north(),
            accounts: emails.into_iter().map(|email| ScannedAccount { email, role: Role::Other }).collect(),
        }),
        1 => (0..POOL.len(), 0..POOL.len(), any::<bool>()).prop_map(|(t, s, kami)| {
            LicenseCommand::AssignmentOpened {
                teacher: email(t),
                student: email(s),
                lms: Lms::Canvas,
                kami_assignment: kami,
            }
        }),
        1 => subset().prop_map(|students| LicenseCommand::SyncRoster { course: "c1".into(), students }),
        1 => any::<bool>().prop_map(|google_admin| LicenseCommand::LinkOu {
            ou_paths: vec![OuPath::parse("/Students").unwrap()],
            google_admin,
        }),
        1 => Just(LicenseCommand::UnlinkOu),
        3 => ou_entries().prop_map(|entries| LicenseCommand::SyncOu { entries }),
        1 => Just(LicenseCommand::ConfirmOuSync),
        1 => any::<bool>().prop_map(move |dedicated| LicenseCommand::ClaimDomain { domain: north(), dedicated }),
        1 => Just(LicenseCommand::ReleaseDomain { domain: DomainName::parse("north.edu").unwrap() }),
        1 => Just(LicenseCommand::Renew {
            valid_until: DateTime::parse_from_rfc3339("2029-07-31T23:59:59Z").unwrap().with_timezone(&Utc),
        }),
        1 => Just(LicenseCommand::RotateKey { key: secret(1) }),
    ]
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        12 => (who(), command()).prop_map(|(who, command)| Step::Command(who, command)),
        1 => (1i64..400).prop_map(Step::Wait),
    ]
}

fn license_type() -> impl Strategy<Value = LicenseType> {
    prop::sample::select(LicenseType::ALL.to_vec())
}

/// Checks every invariant of a state; `previous_users_count` is the count before the last
/// decision and `seat_decrease` says whether that decision lowered the seats.
fn check_invariants(license: &License, now: DateTime<Utc>) -> Result<(), TestCaseError> {
    let state = license.state().expect("issued");
    let mut by_status = [0u64; 4];
    let mut emails = BTreeSet::new();
    for (email, member) in state.members() {
        prop_assert!(emails.insert(email.clone()), "member {email} appears twice");
        by_status[member.status as usize] += 1;
    }
    let counts = state.counts();
    prop_assert_eq!(
        [
            counts.accepted,
            counts.invited,
            counts.rejected,
            counts.waitlisted
        ],
        by_status,
        "counts disagree with the members"
    );
    let waitlist: Vec<&Email> = state.waitlist().collect();
    prop_assert_eq!(waitlist.len() as u64, counts.waitlisted);
    for email in waitlist {
        prop_assert_eq!(
            state.member(email).map(|m| m.status),
            Some(Status::Waitlisted)
        );
    }
    // SEAT-4: while the license is valid, nobody waits for a seat that is free.
    if !state.is_expired(now) && counts.waitlisted > 0 {
        prop_assert_eq!(
            state.seats_free(),
            0,
            "a waitlisted user waits beside a free seat"
        );
    }
    Ok(())
}

fn run_case(license_type: LicenseType, seats: u32, steps: Vec<Step>) -> Result<(), TestCaseError> {
    let mut now = start();
    let mut license = License::default();
    let mut recorded: Vec<(EventMeta, Event)> = Vec::new();
    let issue = LicenseCommand::Issue {
        license: LicenseId::parse("L1").unwrap(),
        license_type,
        seats,
        valid_from: start() - Duration::days(30),
        valid_until: valid_until(),
        admins: vec![Email::parse(ADMIN).unwrap()],
        key: secret(1),
        link: secret(2),
    };
    let mut steps_to_run = vec![Step::Command(Who::Staff, issue)];
    steps_to_run.extend(steps);
    for step in steps_to_run {
        let (who, command) = match step {
            Step::Wait(days) => {
                now += Duration::days(days);
                continue;
            }
            Step::Command(who, command) => (who, command),
        };
        let actor = who.actor();
        let mut ctx = Context::new(now, actor.clone());
        if matches!(who, Who::Admin) {
            ctx = ctx.with_domain_admin_of([DomainName::parse("north.edu").unwrap()]);
        }
        let before = license.clone();
        let users_before = before.state().map_or(0, |s| s.users_count());
        let seats_before = before.state().map_or(0, |s| s.seats());
        match license.handle(&command, &ctx) {
            // A refused command yields no events and leaves the state as it was (ERR-1).
            Err(_) => prop_assert_eq!(&license, &before),
            Ok(decision) => {
                let meta = EventMeta { at: now, actor };
                for event in &decision.events {
                    license.apply(&meta, event);
                    recorded.push((meta.clone(), event.clone()));
                }
                let state = license.state().expect("issued");
                let users_after = state.users_count();
                let seats_after = u64::from(state.seats());
                // SEAT-1, SEAT-3, SEAT-4, LIC-2: a decision never takes users_count above the
                // seats; after a seat decrease it may stay above, but never grows.
                if users_after > seats_after {
                    prop_assert!(
                        users_after <= users_before
                            && seats_after < u64::from(seats_before).max(users_before),
                        "over-allocated: {users_before} -> {users_after} users with {seats_after} seats after {command:?}"
                    );
                }
            }
        }
        check_invariants(&license, now)?;
    }
    // AUD-5 in miniature: folding the recorded events from scratch gives the same state.
    let mut folded = License::default();
    for (meta, event) in &recorded {
        folded.apply(meta, event);
    }
    prop_assert_eq!(folded, license);
    // AUD-2: every recorded event survives its MessagePack round trip.
    for (_, event) in &recorded {
        let decoded = Event::decode(event.type_name(), event.schema_version(), &event.encode());
        prop_assert_eq!(decoded.as_ref(), Ok(event));
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: PROPERTY_CASES, ..ProptestConfig::default() })]

    #[test]
    fn random_command_sequences_keep_every_invariant(
        license_type in license_type(),
        seats in 1u32..6,
        steps in prop::collection::vec(step(), 0..COMMANDS_PER_CASE_MAX),
    ) {
        // SEAT-1 SEAT-2 SEAT-4 SEAT-5 LIC-2 ERR-1
        run_case(license_type, seats, steps)?;
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 500, ..ProptestConfig::default() })]

    #[test]
    fn a_license_survives_its_snapshot_round_trip(
        license_type in license_type(),
        seats in 1u32..6,
        steps in prop::collection::vec(step(), 0..COMMANDS_PER_CASE_MAX),
    ) {
        // The server snapshots aggregates (MessagePack) to shorten start-up; a snapshot must
        // give back exactly the state it was taken of.
        let license = fold_case(license_type, seats, steps);
        let bytes = rmp_serde::to_vec(&license).unwrap();
        let restored: License = rmp_serde::from_slice(&bytes).unwrap();
        prop_assert_eq!(restored, license);
    }
}

/// Plays a case like `run_case` without its checks and returns the license it ends with.
fn fold_case(license_type: LicenseType, seats: u32, steps: Vec<Step>) -> License {
    let mut now = start();
    let mut license = License::default();
    let issue = LicenseCommand::Issue {
        license: LicenseId::parse("L1").unwrap(),
        license_type,
        seats,
        valid_from: start() - Duration::days(30),
        valid_until: valid_until(),
        admins: vec![Email::parse(ADMIN).unwrap()],
        key: secret(1),
        link: secret(2),
    };
    for step in std::iter::once(Step::Command(Who::Staff, issue)).chain(steps) {
        match step {
            Step::Wait(days) => now += Duration::days(days),
            Step::Command(who, command) => {
                let actor = who.actor();
                let ctx = Context::new(now, actor.clone())
                    .with_domain_admin_of([DomainName::parse("north.edu").unwrap()]);
                if let Ok(decision) = license.handle(&command, &ctx) {
                    let meta = EventMeta { at: now, actor };
                    for event in &decision.events {
                        license.apply(&meta, event);
                    }
                }
            }
        }
    }
    license
}
