//! Property tests over random valid histories, made by driving the real `domain::License`
//! aggregate with random commands: live projection in random batch sizes equals a rebuild
//! from zero (AUD-5), a projector stopped and resumed from its checkpoint has exact counts
//! (AUD-6), and query answers agree with the aggregate's state.

mod support;

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Duration, Utc};
use domain::events::{DomainAdminGranted, Event, EventMeta};
use domain::query::EmailPattern;
use domain::{
    Actor, AdminChannel, DomainName, Email, License, LicenseCommand, LicenseType, OuPath, Role,
    ScannedAccount, Secret, Source, Status,
};
use projections::{
    Bucket, ListUsersRequest, LiveBudget, ProjectedEvent, Projections, RebuildBudget, SortColumn,
};
use proptest::prelude::*;
use support::*;

/// Modest case counts keep the suite fast; the domain's own properties run 10,000 cases.
const PROPERTY_CASES: u32 = 48;
const STEPS_PER_CASE_MAX: usize = 60;

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
const LICENSES: &[&str] = &["L1", "L2"];

fn pool_email(index: usize) -> Email {
    email(POOL[index % POOL.len()])
}

#[derive(Clone, Debug)]
enum Step {
    Command(usize, Actor, LicenseCommand),
    GrantDomainAdmin(usize),
    /// Moves the clock forward by this many hours.
    Wait(i64),
}

fn actor() -> impl Strategy<Value = Actor> {
    prop_oneof![
        1 => Just(Actor::Staff),
        1 => Just(Actor::System),
        3 => Just(Actor::User(staff_admin())),
        3 => (0..POOL.len()).prop_map(|index| Actor::User(pool_email(index))),
    ]
}

fn subset() -> impl Strategy<Value = Vec<Email>> {
    prop::collection::vec((0..POOL.len()).prop_map(pool_email), 0..6)
}

fn command() -> impl Strategy<Value = LicenseCommand> {
    let north = || DomainName::parse("north.edu").unwrap();
    prop_oneof![
        4 => (subset(), any::<bool>()).prop_map(|(emails, csv)| LicenseCommand::AddUsers {
            emails,
            channel: if csv { AdminChannel::Csv } else { AdminChannel::EmailList },
        }),
        2 => subset().prop_map(|emails| LicenseCommand::RemoveUsers { emails }),
        2 => Just(LicenseCommand::AcceptInvite),
        2 => Just(LicenseCommand::RejectInvite),
        2 => any::<bool>().prop_map(|right| LicenseCommand::RedeemKey {
            key: if right { secret(1) } else { Secret::presented("wrong") },
        }),
        2 => (1u32..7).prop_map(|seats| LicenseCommand::ChangeSeats { seats }),
        1 => (0..POOL.len()).prop_map(|i| LicenseCommand::SignUp { email: pool_email(i), role: Role::Student }),
        1 => subset().prop_map(move |emails| LicenseCommand::ScanDomain {
            domain: north(),
            accounts: emails.into_iter().map(|email| ScannedAccount { email, role: Role::Teacher }).collect(),
        }),
        1 => subset().prop_map(|students| LicenseCommand::SyncRoster { course: "c1".into(), students }),
        1 => Just(LicenseCommand::LinkOu { ou_paths: vec![OuPath::parse("/Students").unwrap()], google_admin: true }),
        1 => Just(LicenseCommand::UnlinkOu),
        2 => prop::collection::vec((0..POOL.len(), any::<bool>()), 0..6).prop_map(|entries| LicenseCommand::SyncOu {
            entries: entries.into_iter().map(|(i, suspended)| domain::events::OuEntry {
                email: pool_email(i),
                ou_path: OuPath::parse("/Students").unwrap(),
                role: Role::Student,
                suspended,
            }).collect(),
        }),
        1 => Just(LicenseCommand::ConfirmOuSync),
        1 => Just(LicenseCommand::ClaimDomain { domain: north(), dedicated: true }),
        1 => Just(LicenseCommand::ReleaseDomain { domain: north() }),
        1 => (2u32..9).prop_map(|n| LicenseCommand::RotateKey { key: secret(n) }),
    ]
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        14 => (0..LICENSES.len(), actor(), command()).prop_map(|(l, a, c)| Step::Command(l, a, c)),
        1 => (0..POOL.len()).prop_map(Step::GrantDomainAdmin),
        2 => (1i64..60).prop_map(Step::Wait),
    ]
}

const SECOND_LICENSE_KEY_OFFSET: u32 = 1_000;

fn key_number(key: &Secret) -> u32 {
    key.expose()
        .trim_start_matches("secret-")
        .parse()
        .unwrap_or(0)
}

fn history(types: (LicenseType, LicenseType), seats: u32, steps: Vec<Step>) -> World {
    let mut world = World::new();
    world.issue(LICENSES[0], types.0, seats, 1);
    // Keys are random and unique in the ledger; here each license has its own series.
    world.issue(
        LICENSES[1],
        types.1,
        seats + 1,
        1 + SECOND_LICENSE_KEY_OFFSET,
    );
    for step in steps {
        match step {
            Step::Command(license, actor, command) => {
                let offset = if license == 0 {
                    0
                } else {
                    SECOND_LICENSE_KEY_OFFSET
                };
                let command = match command {
                    LicenseCommand::RotateKey { key } if key == secret(key_number(&key)) => {
                        LicenseCommand::RotateKey {
                            key: secret(key_number(&key) + offset),
                        }
                    }
                    LicenseCommand::RedeemKey { key } if key == secret(1) => {
                        LicenseCommand::RedeemKey {
                            key: secret(1 + offset),
                        }
                    }
                    other => other,
                };
                world.run(LICENSES[license], actor, command);
            }
            Step::GrantDomainAdmin(index) => {
                let granted = DomainAdminGranted {
                    domain: DomainName::parse("north.edu").unwrap(),
                    email: pool_email(index),
                };
                world.record("domain-north.edu", &Actor::Staff, vec![granted.into()]);
            }
            Step::Wait(hours) => world.now += Duration::hours(hours),
        }
        // Gaps in the positions, as a log with other streams has.
        world.next_position += world.events.len() as u64 % 3;
    }
    world
}

/// Applies events in batches whose sizes cycle through `sizes`.
fn apply_in_batches(projections: &Projections, events: &[ProjectedEvent], sizes: &[usize]) {
    apply_in_batches_to(
        |batch| projections.apply_batch(batch).map(|_| ()),
        events,
        sizes,
    );
}

fn apply_in_batches_to(
    mut apply: impl FnMut(&[ProjectedEvent]) -> Result<(), projections::ProjectionError>,
    events: &[ProjectedEvent],
    sizes: &[usize],
) {
    let mut rest = events;
    for size in sizes.iter().cycle() {
        if rest.is_empty() {
            return;
        }
        let (batch, remaining) = rest.split_at((*size).min(rest.len()));
        apply(batch).unwrap();
        rest = remaining;
    }
}

/// A rebuild's chunk budgets that put chunk boundaries in awkward places: after every
/// event, every seventh event, never (a chunk larger than the log), after every batch (a
/// budget of one byte); the checkpoint alone or with the chunk's last one, three or many
/// keys in its atomic batch.
fn rebuild_budget() -> impl Strategy<Value = RebuildBudget> {
    (
        prop_oneof![Just(1usize), Just(7), Just(1_000_000), 1usize..20],
        prop_oneof![Just(1usize), Just(usize::MAX)],
        prop_oneof![Just(0usize), Just(1), Just(3), Just(1_024)],
    )
        .prop_map(
            |(chunk_events_max, chunk_bytes_max, checkpoint_batch_keys_max)| RebuildBudget {
                chunk_events_max,
                chunk_bytes_max,
                checkpoint_batch_keys_max,
            },
        )
}

/// Live budgets that put batch boundaries, packs and merges everywhere: batches of one
/// event or a few, dense ones (every batch, when a plain key per event is allowed) up to a
/// few dozen events, packs of any size or none, and few packs before merges.
fn live_budget() -> impl Strategy<Value = LiveBudget> {
    (
        1usize..6,
        prop_oneof![Just(0usize), Just(1), Just(16)],
        1usize..40,
        prop_oneof![1 => Just(1usize), 4 => 2usize..8, 1 => Just(usize::MAX)],
        1usize..5,
    )
        .prop_map(
            |(
                batch_events_max,
                dense_events_per_plain_key_min,
                dense_batch_events_max,
                pack_entries_min,
                packs_max,
            )| LiveBudget {
                batch_events_max,
                dense_events_per_plain_key_min,
                dense_batch_events_max,
                pack_entries_min,
                packs_max,
            },
        )
}

/// The aggregates as they stood after the events up to an index.
fn aggregates_after(events: &[ProjectedEvent]) -> BTreeMap<String, License> {
    let mut licenses: BTreeMap<String, License> = BTreeMap::new();
    for event in events {
        if let Some(id) = event.stream.strip_prefix("license-") {
            let meta = EventMeta {
                at: event.recorded_at,
                actor: event.actor.clone(),
            };
            licenses
                .entry(id.to_owned())
                .or_default()
                .apply(&meta, &event.event);
        }
    }
    licenses
}

/// When each member (license id, email) last changed: the events that begin a membership or
/// change its status. The aggregate does not keep it (only the read model shows it).
fn last_changes(events: &[ProjectedEvent]) -> HashMap<(String, Email), DateTime<Utc>> {
    let mut changed = HashMap::new();
    for event in events {
        let Some(id) = event.stream.strip_prefix("license-") else {
            continue;
        };
        let email = match &event.event {
            Event::UserAdded(e) => &e.email,
            Event::InviteSent(e) => &e.email,
            Event::UserWaitlisted(e) => &e.email,
            Event::InviteAccepted(e) => &e.email,
            Event::InviteRejected(e) => &e.email,
            Event::UserPromoted(e) => &e.email,
            Event::UserRemoved(e) => {
                changed.remove(&(id.to_owned(), e.email.clone()));
                continue;
            }
            _ => continue,
        };
        changed.insert((id.to_owned(), email.clone()), event.recorded_at);
    }
    changed
}

fn check_counts(
    projections: &Projections,
    licenses: &BTreeMap<String, License>,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<(), TestCaseError> {
    for (id, license) in licenses {
        let state = license.state().expect("issued");
        let view = projections
            .get_license(&license_id(id), now)
            .unwrap()
            .unwrap();
        let counts = state.counts();
        prop_assert_eq!(
            (
                view.counts.accepted,
                view.counts.invited,
                view.counts.rejected,
                view.counts.waitlisted
            ),
            (
                counts.accepted,
                counts.invited,
                counts.rejected,
                counts.waitlisted
            )
        );
        prop_assert_eq!(view.users_count, state.users_count());
        prop_assert_eq!(view.seats_free, state.seats_free());
        prop_assert_eq!(view.over_by, state.over_by());
        prop_assert_eq!(view.seats, state.seats());
        prop_assert_eq!(view.ou_sync_held, state.held_sync().is_some());
        prop_assert_eq!(&view.ou_paths, &state.ou_paths().to_vec());
        prop_assert_eq!(view.domains.len(), state.domains().len());
        prop_assert!(view.key.matches(state.key()));
        prop_assert_eq!(
            projections.license_by_key(state.key()).unwrap(),
            Some(license_id(id))
        );
    }
    Ok(())
}

#[derive(Clone, Debug)]
struct Query {
    pattern: Option<&'static str>,
    role_is: Option<Role>,
    role_is_not: Option<Role>,
    status: Option<Status>,
    source: Option<Source>,
    sort: SortColumn,
    descending: bool,
    page_size: usize,
}

fn query() -> impl Strategy<Value = Query> {
    let role = || prop::option::weighted(0.2, prop::sample::select(Role::ALL.to_vec()));
    (
        prop::option::weighted(
            0.4,
            prop::sample::select(vec![
                "%north%",
                "a%",
                "%@GMAIL.com",
                "b@north.edu",
                "%",
                "%e%",
            ]),
        ),
        role(),
        role(),
        prop::option::weighted(0.2, prop::sample::select(Status::ALL.to_vec())),
        prop::option::weighted(0.2, prop::sample::select(Source::ALL.to_vec())),
        prop::sample::select(vec![
            SortColumn::Email,
            SortColumn::Status,
            SortColumn::Source,
            SortColumn::Role,
            SortColumn::AddedAt,
            SortColumn::AddedBy,
        ]),
        any::<bool>(),
        1usize..5,
    )
        .prop_map(
            |(pattern, role_is, role_is_not, status, source, sort, descending, page_size)| Query {
                pattern,
                role_is,
                role_is_not,
                status,
                source,
                sort,
                descending,
                page_size,
            },
        )
}

fn check_list_users(
    projections: &Projections,
    licenses: &BTreeMap<String, License>,
    changed: &HashMap<(String, Email), DateTime<Utc>>,
    query: &Query,
) -> Result<(), TestCaseError> {
    let pattern = query.pattern.map(|raw| EmailPattern::parse(raw).unwrap());
    for (id, license) in licenses {
        let state = license.state().expect("issued");
        let expected = Reference {
            pattern: pattern.as_ref(),
            role_is: query.role_is,
            role_is_not: query.role_is_not,
            status: query.status,
            source: query.source,
            sort: query.sort,
            descending: query.descending,
        }
        .emails(state);
        let mut request = ListUsersRequest::new(license_id(id));
        request.pattern = query.pattern.map(str::to_owned);
        request.role_is = query.role_is;
        request.role_is_not = query.role_is_not;
        request.status = query.status;
        request.source = query.source;
        request.sort = query.sort;
        request.descending = query.descending;
        request.page_size = query.page_size;
        let mut listed = Vec::new();
        loop {
            let page = projections.list_users(&request).unwrap();
            for user in &page.users {
                let member = state.member(&user.email).expect("listed users are members");
                prop_assert_eq!(
                    (
                        user.status,
                        user.source,
                        user.role,
                        user.added_at,
                        &user.added_by
                    ),
                    (
                        member.status,
                        member.source,
                        member.role,
                        member.added_at,
                        &member.added_by.to_string()
                    )
                );
                prop_assert_eq!(
                    Some(&user.updated_at),
                    changed.get(&(id.clone(), user.email.clone()))
                );
                listed.push(user.email.as_str().to_owned());
            }
            match page.next_page_token {
                Some(token) => request.page_token = Some(token),
                None => break,
            }
        }
        prop_assert_eq!(listed, expected);
        // each member's license list names this license with its status.
        for (email, member) in state.members() {
            let mine = projections.licenses_of_user(email).unwrap();
            prop_assert!(
                mine.iter()
                    .any(|entry| entry.license.as_str() == id && entry.status == member.status)
            );
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: PROPERTY_CASES, ..ProptestConfig::default() })]

    #[test]
    fn live_batches_and_a_rebuild_from_zero_agree_with_each_other_and_the_aggregate(
        types in (prop::sample::select(LicenseType::ALL.to_vec()), prop::sample::select(LicenseType::ALL.to_vec())),
        seats in 1u32..6,
        steps in prop::collection::vec(step(), 0..STEPS_PER_CASE_MAX),
        sizes in prop::collection::vec(1usize..7, 1..5),
        queries in prop::collection::vec(query(), 1..4),
    ) {
        // AUD-5 Q-1 Q-2 Q-3 Q-5 SEAT-1
        let world = history(types, seats, steps);
        let live_directory = tempfile::tempdir().unwrap();
        let live = Projections::open(live_directory.path()).unwrap();
        apply_in_batches(&live, &world.events, &sizes);
        let rebuilt = Projections::open_temporary().unwrap();
        rebuilt.apply_batch(&world.events).unwrap();
        prop_assert_eq!(live.digest().unwrap(), rebuilt.digest().unwrap());
        prop_assert_eq!(live.checkpoint().unwrap(), world.events.last().unwrap().position);
        check_counts(&live, &world.licenses, world.now)?;
        let changed = last_changes(&world.events);
        for query in &queries {
            check_list_users(&live, &world.licenses, &changed, query)?;
        }
        // the last day's users_count is the license's users_count now.
        for (id, license) in &world.licenses {
            let weeks = live
                .usage(&license_id(id), time("2026-09-01T00:00:00Z"), world.now + Duration::seconds(1), Bucket::Week)
                .unwrap();
            prop_assert_eq!(weeks.last().unwrap().users_count, license.state().unwrap().users_count());
            let added: u64 = weeks.iter().flat_map(|week| week.added.values()).sum();
            let removed: u64 = weeks.iter().flat_map(|week| week.removed.values()).sum();
            prop_assert_eq!(added - removed, license.state().unwrap().users_count());
        }
        // domain admins granted on the domain stream are listed.
        for event in &world.events {
            if let domain::events::Event::DomainAdminGranted(granted) = &event.event {
                prop_assert!(live.domains_administered_by(&granted.email).unwrap().contains(&granted.domain));
            }
        }
    }

    #[test]
    fn a_rebuild_folded_in_chunks_equals_event_by_event_application(
        types in (prop::sample::select(LicenseType::ALL.to_vec()), prop::sample::select(LicenseType::ALL.to_vec())),
        seats in 1u32..6,
        steps in prop::collection::vec(step(), 0..STEPS_PER_CASE_MAX),
        sizes in prop::collection::vec(1usize..9, 1..4),
        budget in rebuild_budget(),
        midway in 0.0f64..1.0,
    ) {
        // AUD-5 AUD-6: however the rebuild's chunks fall (members added and removed within
        // one chunk, across chunks, a chunk per event or one for the whole log), the
        // rebuilt read models equal the live ones applied one event at a time, at the end
        // and at a digest taken midway (which writes the chunk early).
        let world = history(types, seats, steps);
        let live = Projections::open_temporary().unwrap();
        let midway = (midway * world.events.len() as f64) as usize;
        let mut live_midway = None;
        for (index, event) in world.events.iter().enumerate() {
            live.apply_batch(std::slice::from_ref(event)).unwrap();
            if index + 1 == midway {
                live_midway = Some(live.digest().unwrap());
            }
        }
        let directory = tempfile::tempdir().unwrap();
        let target = Projections::open(directory.path()).unwrap();
        let rebuild = target.begin_rebuild_with_budget(budget).unwrap();
        apply_in_batches_to(|batch| rebuild.apply_batch(batch).map(|_| ()), &world.events[..midway], &sizes);
        if let Some(expected) = live_midway {
            prop_assert_eq!(rebuild.digest().unwrap(), expected);
            prop_assert_eq!(rebuild.stored_checkpoint().unwrap(), world.events[midway - 1].position);
        }
        apply_in_batches_to(|batch| rebuild.apply_batch(batch).map(|_| ()), &world.events[midway..], &sizes);
        let last = world.events.last().unwrap().position;
        prop_assert_eq!(rebuild.checkpoint().unwrap(), last);
        // A stored checkpoint is only ever one a whole chunk was written with.
        let stored = rebuild.stored_checkpoint().unwrap();
        prop_assert!(stored == 0 || world.events.iter().any(|event| event.position == stored));
        prop_assert!(stored <= last);
        prop_assert_eq!(rebuild.digest().unwrap(), live.digest().unwrap());
        prop_assert_eq!(rebuild.stored_checkpoint().unwrap(), last);
        target.finish_rebuild(rebuild).unwrap();
        prop_assert_eq!(target.digest().unwrap(), live.digest().unwrap());
        prop_assert_eq!(target.checkpoint().unwrap(), last);
        check_counts(&target, &world.licenses, world.now)?;
    }

    #[test]
    fn live_batches_and_live_packs_over_a_rebuilt_generation_of_packs_read_as_plain_live_projections(
        types in (prop::sample::select(LicenseType::ALL.to_vec()), prop::sample::select(LicenseType::ALL.to_vec())),
        seats in 1u32..6,
        steps in prop::collection::vec(step(), 0..STEPS_PER_CASE_MAX),
        sizes in prop::collection::vec(1usize..9, 1..4),
        live_sizes in prop::collection::vec(1usize..40, 1..4),
        budget in rebuild_budget(),
        live_budget in live_budget(),
        cut in 0.0f64..1.0,
        queries in prop::collection::vec(query(), 1..4),
    ) {
        // AUD-5 Q-2 Q-3 Q-6: a rebuild leaves its members in packs; the live projector then
        // writes over them (changes, removals as tombstones, members added again) and, by
        // its live budget, writes packs of its own and merges them. Every answer and the
        // digest equal those of projections that were only ever live in batches of plain
        // keys, and stay so after a reopen.
        let world = history(types, seats, steps);
        let live = Projections::open_temporary()
            .unwrap()
            .with_live_budget(LiveBudget { pack_entries_min: usize::MAX, ..LiveBudget::default() });
        apply_in_batches(&live, &world.events, &sizes);
        let cut = (cut * world.events.len() as f64) as usize;
        let directory = tempfile::tempdir().unwrap();
        {
            let target = Projections::open(directory.path()).unwrap().with_live_budget(live_budget);
            let rebuild = target.begin_rebuild_with_budget(budget).unwrap();
            apply_in_batches_to(|batch| rebuild.apply_batch(batch).map(|_| ()), &world.events[..cut], &sizes);
            target.finish_rebuild(rebuild).unwrap();
            apply_in_batches(&target, &world.events[cut..], &live_sizes);
            prop_assert_eq!(target.digest().unwrap(), live.digest().unwrap());
        }
        let target = Projections::open(directory.path()).unwrap();
        prop_assert_eq!(target.digest().unwrap(), live.digest().unwrap());
        check_counts(&target, &world.licenses, world.now)?;
        let changed = last_changes(&world.events);
        for query in &queries {
            check_list_users(&target, &world.licenses, &changed, query)?;
        }
        for email in POOL.iter().map(|raw| Email::parse(raw).unwrap()) {
            prop_assert_eq!(
                target.licenses_of_user(&email).unwrap(),
                live.licenses_of_user(&email).unwrap()
            );
            prop_assert_eq!(
                target.user_history(&email, None, 10_000).unwrap(),
                live.user_history(&email, None, 10_000).unwrap()
            );
            for id in LICENSES {
                prop_assert_eq!(
                    target.member(&license_id(id), &email).unwrap(),
                    live.member(&license_id(id), &email).unwrap()
                );
            }
        }
    }

    #[test]
    fn a_projector_stopped_at_random_points_resumes_from_its_checkpoint_exactly(
        types in (prop::sample::select(LicenseType::ALL.to_vec()), prop::sample::select(LicenseType::ALL.to_vec())),
        seats in 1u32..6,
        steps in prop::collection::vec(step(), 0..STEPS_PER_CASE_MAX),
        stops in prop::collection::vec(0.0f64..1.0, 1..4),
        sizes in prop::collection::vec(1usize..30, 1..4),
        live_budget in live_budget(),
    ) {
        // AUD-6 AUD-5 SEAT-1, with live packs and merges under any live budget.
        let world = history(types, seats, steps);
        let directory = tempfile::tempdir().unwrap();
        let mut stops: Vec<usize> = stops.iter().map(|share| (share * world.events.len() as f64) as usize).collect();
        stops.push(world.events.len());
        stops.sort_unstable();
        for stop in stops {
            // Each round is a process that starts, resumes from the checkpoint, and stops.
            let projections = Projections::open(directory.path()).unwrap().with_live_budget(live_budget);
            let checkpoint = projections.checkpoint().unwrap();
            let pending: Vec<ProjectedEvent> = world.events[..stop]
                .iter()
                .filter(|event| event.position > checkpoint)
                .cloned()
                .collect();
            apply_in_batches(&projections, &pending, &sizes);
            let applied = &world.events[..stop];
            prop_assert_eq!(projections.checkpoint().unwrap(), applied.last().map_or(0, |e| e.position));
            let at = applied.last().map_or(world.now, |event| event.recorded_at);
            check_counts(&projections, &aggregates_after(applied), at)?;
            // AUD-5 as-of: replaying up to this position into empty projections gives the
            // same read models.
            let as_of = Projections::open_temporary().unwrap();
            as_of.apply_batch(applied).unwrap();
            prop_assert_eq!(as_of.digest().unwrap(), projections.digest().unwrap());
        }
    }
}
