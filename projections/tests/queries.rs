//! Unit tests of each query and of the projection mechanics, on small hand-made histories
//! recorded by the real aggregate.

mod support;

use std::time::Duration as StdDuration;

use chrono::Duration;
use domain::events::{DomainAdminGranted, DomainAdminRevoked, DomainClaimed, Event};
use domain::query::EmailPattern;
use domain::{Actor, DomainName, LicenseCommand, LicenseType, Role, Source, Status};
use projections::{
    Bucket, LIST_USERS_PAGE_SIZE_MAX, ListUsersRequest, ProjectedEvent, ProjectionError,
    Projections, RebuildBudget, SortColumn,
};
use support::*;

/// Attempts to reopen a store whose lock sled is still releasing, 10 ms apart: 10 s.
const OPEN_ATTEMPTS_MAX: u32 = 1_000;
const OPEN_RETRY_INTERVAL_MS: u64 = 10;

fn projections_of(world: &World) -> (tempfile::TempDir, Projections) {
    let directory = tempfile::tempdir().unwrap();
    let projections = Projections::open(directory.path()).unwrap();
    projections.apply_batch(&world.events).unwrap();
    (directory, projections)
}

fn all_pages(projections: &Projections, request: &ListUsersRequest) -> Vec<String> {
    let mut request = request.clone();
    let mut emails = Vec::new();
    loop {
        let page = projections.list_users(&request).unwrap();
        assert!(page.users.len() <= request.page_size);
        emails.extend(page.users.iter().map(|user| user.email.as_str().to_owned()));
        match page.next_page_token {
            Some(token) => request.page_token = Some(token),
            None => return emails,
        }
    }
}

/// Eight members: two batches by two actors at two times, then roles from a domain scan.
fn sample_world() -> World {
    let mut world = World::new();
    world.issue("L1", LicenseType::District, 100, 1);
    // By staff: accepted at once (INV-1).
    world.add(
        "L1",
        Actor::Staff,
        &["d@north.edu", "b@gmail.com", "h@gmail.com"],
    );
    world.now += Duration::hours(1);
    // By the admin, domain admin of north.edu: north.edu accepted, others invited.
    world.add(
        "L1",
        Actor::User(staff_admin()),
        &["a@north.edu", "c@gmail.com", "e@north.edu"],
    );
    world.now += Duration::hours(1);
    let scanned = LicenseCommand::ScanDomain {
        domain: DomainName::parse("north.edu").unwrap(),
        accounts: vec![
            domain::ScannedAccount {
                email: email("f@north.edu"),
                role: Role::Student,
            },
            domain::ScannedAccount {
                email: email("g@north.edu"),
                role: Role::Teacher,
            },
        ],
    };
    // Without a claim the scan is refused; claim first (district licenses always may).
    assert!(world.run(
        "L1",
        Actor::Staff,
        LicenseCommand::ClaimDomain {
            domain: DomainName::parse("north.edu").unwrap(),
            dedicated: false,
        }
    ));
    assert!(world.run("L1", Actor::System, scanned));
    world
}

#[test]
fn every_sort_column_both_ways_matches_the_reference_with_email_ties() {
    // sortable by any column, ascending or descending, ties broken by email ascending.
    let world = sample_world();
    let (_directory, projections) = projections_of(&world);
    let state = world.state("L1");
    for sort in [
        SortColumn::Email,
        SortColumn::Status,
        SortColumn::Source,
        SortColumn::Role,
        SortColumn::AddedAt,
        SortColumn::AddedBy,
    ] {
        for descending in [false, true] {
            let mut request = ListUsersRequest::new(license_id("L1"));
            request.sort = sort;
            request.descending = descending;
            request.page_size = 3;
            let expected = Reference {
                pattern: None,
                role_is: None,
                role_is_not: None,
                status: None,
                source: None,
                sort,
                descending,
            }
            .emails(state);
            assert_eq!(
                all_pages(&projections, &request),
                expected,
                "{sort:?} descending={descending}"
            );
        }
    }
    // Ties: status descending puts the invited before the accepted, each group by email.
    let mut request = ListUsersRequest::new(license_id("L1"));
    request.sort = SortColumn::Status;
    request.descending = true;
    let emails = all_pages(&projections, &request);
    assert_eq!(
        emails,
        [
            "c@gmail.com",
            "a@north.edu",
            "b@gmail.com",
            "d@north.edu",
            "e@north.edu",
            "f@north.edu",
            "g@north.edu",
            "h@gmail.com",
        ]
    );
}

/// role is, role is not, status, source.
type Filters = (Option<Role>, Option<Role>, Option<Status>, Option<Source>);

/// Every sort column both ways, unfiltered and with each kind of filter, against the
/// reference over the aggregate's state.
fn check_sorted_and_filtered_pages(projections: &Projections, world: &World) {
    let state = world.state("L1");
    let filters: [Filters; 5] = [
        (None, None, None, None),
        (None, None, Some(Status::Invited), None),
        (None, None, Some(Status::Accepted), None),
        (Some(Role::Teacher), None, None, None),
        (None, Some(Role::Student), None, Some(Source::Domain)),
    ];
    for (role_is, role_is_not, status, source) in filters {
        for sort in [
            SortColumn::Email,
            SortColumn::Status,
            SortColumn::Role,
            SortColumn::AddedAt,
        ] {
            for descending in [false, true] {
                let mut request = ListUsersRequest::new(license_id("L1"));
                request.role_is = role_is;
                request.role_is_not = role_is_not;
                request.status = status;
                request.source = source;
                request.sort = sort;
                request.descending = descending;
                request.page_size = 2;
                let expected = Reference {
                    pattern: None,
                    role_is,
                    role_is_not,
                    status,
                    source,
                    sort,
                    descending,
                }
                .emails(state);
                assert_eq!(
                    all_pages(projections, &request),
                    expected,
                    "{sort:?} descending={descending} role_is={role_is:?} \
                     role_is_not={role_is_not:?} status={status:?} source={source:?}"
                );
            }
        }
    }
}

#[test]
fn sorted_and_filtered_pages_follow_status_and_role_changes_after_the_list_is_cached() {
    // Q-2, INV-2: pages other than plain email order are chosen from an in-memory member
    // list, loaded by the first such query. A status change (an invite accepted), a role
    // and source change (removed and added again) and a newcomer applied afterwards must show in the next pages.
    let mut world = sample_world();
    let (_directory, projections) = projections_of(&world);
    check_sorted_and_filtered_pages(&projections, &world);
    let checkpoint = projections.checkpoint().unwrap();
    world.now += Duration::minutes(5);
    assert!(world.run(
        "L1",
        Actor::User(email("c@gmail.com")),
        LicenseCommand::AcceptInvite
    ));
    // g@north.edu came by the domain scan as a teacher; removed and added again by staff
    // in the same batch, it changes source and role without leaving the list.
    world.remove("L1", &["g@north.edu"]);
    world.add("L1", Actor::Staff, &["g@north.edu"]);
    world.add("L1", Actor::User(staff_admin()), &["i@gmail.com"]);
    assert_eq!(
        world
            .state("L1")
            .member(&email("c@gmail.com"))
            .unwrap()
            .status,
        Status::Accepted
    );
    let g = world.state("L1").member(&email("g@north.edu")).unwrap();
    assert_eq!((g.role, g.source), (Role::Other, Source::Email));
    projections
        .apply_batch(&world.events_since(checkpoint))
        .unwrap();
    check_sorted_and_filtered_pages(&projections, &world);
}

#[test]
fn pattern_search_is_case_insensitive_with_percent_wildcards() {
    // `%` matches any run of characters, no `%` is an exact match, case-insensitive.
    let world = sample_world();
    let (_directory, projections) = projections_of(&world);
    let search = |raw: &str, sort: SortColumn| {
        let mut request = ListUsersRequest::new(license_id("L1"));
        request.pattern = Some(raw.to_owned());
        request.sort = sort;
        request.page_size = 2;
        all_pages(&projections, &request)
    };
    assert_eq!(
        search("%GMAIL%", SortColumn::Email),
        ["b@gmail.com", "c@gmail.com", "h@gmail.com"]
    );
    assert_eq!(
        search("%gmail%", SortColumn::Status),
        ["b@gmail.com", "h@gmail.com", "c@gmail.com"]
    );
    assert_eq!(search("A@North.edu", SortColumn::Email), ["a@north.edu"]);
    assert_eq!(search("a@north", SortColumn::Email), Vec::<String>::new());
    assert_eq!(search("g%", SortColumn::Role), ["g@north.edu"]);
    assert_eq!(search("%", SortColumn::Email).len(), 8);
    let mut descending = ListUsersRequest::new(license_id("L1"));
    descending.pattern = Some("%@north.edu".to_owned());
    descending.descending = true;
    descending.page_size = 2;
    assert_eq!(
        all_pages(&projections, &descending),
        [
            "g@north.edu",
            "f@north.edu",
            "e@north.edu",
            "d@north.edu",
            "a@north.edu"
        ]
    );
}

#[test]
fn role_is_and_role_is_not_and_status_and_source_filters() {
    // filters by role is / role is not, by status and by source.
    let world = sample_world();
    let (_directory, projections) = projections_of(&world);
    let list = |edit: &dyn Fn(&mut ListUsersRequest)| {
        let mut request = ListUsersRequest::new(license_id("L1"));
        edit(&mut request);
        all_pages(&projections, &request)
    };
    assert_eq!(list(&|r| r.role_is = Some(Role::Student)), ["f@north.edu"]);
    assert_eq!(
        list(&|r| r.role_is_not = Some(Role::Other)),
        ["f@north.edu", "g@north.edu"]
    );
    assert_eq!(list(&|r| r.status = Some(Status::Invited)), ["c@gmail.com"]);
    assert_eq!(
        list(&|r| r.source = Some(Source::Domain)),
        ["f@north.edu", "g@north.edu"]
    );
    assert_eq!(
        list(&|r| {
            r.source = Some(Source::Email);
            r.role_is_not = Some(Role::Student);
            r.pattern = Some("%north%".to_owned());
        }),
        ["a@north.edu", "d@north.edu", "e@north.edu"]
    );
    let view = projections
        .member(&license_id("L1"), &email("a@north.edu"))
        .unwrap()
        .unwrap();
    assert_eq!(view.added_by, "admin@north.edu");
    assert_eq!(view.source, Source::Email);
}

#[test]
fn paging_with_tokens_survives_members_added_and_removed_between_pages() {
    // keyset page tokens stay correct while members come and go between pages.
    let mut world = sample_world();
    let directory = tempfile::tempdir().unwrap();
    let projections = Projections::open(directory.path()).unwrap();
    projections.apply_batch(&world.events).unwrap();
    for (sort, descending) in [
        (SortColumn::Email, false),
        (SortColumn::Email, true),
        (SortColumn::Status, true),
        (SortColumn::AddedAt, false),
    ] {
        let mut request = ListUsersRequest::new(license_id("L1"));
        request.sort = sort;
        request.descending = descending;
        request.page_size = 3;
        let first = projections.list_users(&request).unwrap();
        let seen: Vec<String> = first
            .users
            .iter()
            .map(|u| u.email.as_str().to_owned())
            .collect();
        // Remove one already shown and one not yet shown; add a newcomer.
        let first_shown = seen[0].clone();
        let cursor_row = seen[2].clone();
        let not_shown = world
            .state("L1")
            .members()
            .map(|(e, _)| e.as_str().to_owned())
            .find(|e| !seen.contains(e))
            .unwrap();
        let checkpoint = projections.checkpoint().unwrap();
        world.now += Duration::minutes(1);
        world.remove("L1", &[&first_shown, &not_shown]);
        world.add("L1", Actor::Staff, &["zz-new@gmail.com"]);
        projections
            .apply_batch(&world.events_since(checkpoint))
            .unwrap();
        request.page_token = first.next_page_token.clone();
        let rest = all_pages(&projections, &request);
        // Exactly the rows after the cursor in the current order: none repeated, none
        // skipped, the removed one gone and the newcomer present when it sorts later.
        let expected: Vec<String> = Reference {
            pattern: None,
            role_is: None,
            role_is_not: None,
            status: None,
            source: None,
            sort,
            descending,
        }
        .emails(world.state("L1"))
        .into_iter()
        .skip_while(|e| *e != cursor_row)
        .skip(1)
        .collect();
        assert_eq!(rest, expected, "{sort:?} descending={descending}");
        assert!(!rest.contains(&not_shown));
        let checkpoint = projections.checkpoint().unwrap();
        world.now += Duration::minutes(1);
        world.add("L1", Actor::Staff, &[&first_shown, &not_shown]);
        world.remove("L1", &["zz-new@gmail.com"]);
        projections
            .apply_batch(&world.events_since(checkpoint))
            .unwrap();
    }
}

#[test]
fn malformed_page_tokens_and_page_sizes_are_refused() {
    // a malformed token is an error (INVALID_ARGUMENT); page size max 1,000.
    let world = sample_world();
    let (_directory, projections) = projections_of(&world);
    let mut request = ListUsersRequest::new(license_id("L1"));
    request.page_size = 2;
    let token = projections
        .list_users(&request)
        .unwrap()
        .next_page_token
        .unwrap();
    for bad in ["zz", "0", "01", "01000000", "0101000005616263"] {
        request.page_token = Some(bad.to_owned());
        assert!(
            matches!(
                projections.list_users(&request),
                Err(ProjectionError::InvalidPageToken)
            ),
            "{bad}"
        );
    }
    // A token of one sort order does not continue another.
    request.page_token = Some(token);
    request.sort = SortColumn::Role;
    assert!(matches!(
        projections.list_users(&request),
        Err(ProjectionError::InvalidPageToken)
    ));
    request.page_token = None;
    request.page_size = LIST_USERS_PAGE_SIZE_MAX + 1;
    assert!(matches!(
        projections.list_users(&request),
        Err(ProjectionError::InvalidPageSize { .. })
    ));
    request.page_size = 0;
    assert!(matches!(
        projections.list_users(&request),
        Err(ProjectionError::InvalidPageSize { .. })
    ));
    let unknown = ListUsersRequest::new(license_id("nope"));
    assert!(matches!(
        projections.list_users(&unknown),
        Err(ProjectionError::LicenseNotFound)
    ));
}

#[test]
fn get_license_counts_and_fields_agree_with_the_aggregate() {
    // Q-1, SEAT-1: counts by status, users_count, seats_free, over_by, expired at `now`.
    let mut world = sample_world();
    assert!(world.run("L1", Actor::Staff, LicenseCommand::ChangeSeats { seats: 5 }));
    let (_directory, projections) = projections_of(&world);
    let state = world.state("L1");
    let view = projections
        .get_license(&license_id("L1"), world.now)
        .unwrap()
        .unwrap();
    assert_eq!(view.counts.accepted, state.counts().accepted);
    assert_eq!(view.counts.invited, state.counts().invited);
    assert_eq!(view.users_count, 8);
    assert_eq!((view.seats, view.seats_free, view.over_by), (5, 0, 3));
    assert!(!view.expired);
    assert!(
        projections
            .get_license(&license_id("L1"), time("2027-08-01T00:00:00Z"))
            .unwrap()
            .unwrap()
            .expired
    );
    assert_eq!(view.domains, [DomainName::parse("north.edu").unwrap()]);
    assert_eq!(view.admins, [staff_admin()]);
    assert!(view.key.matches(state.key()));
    assert!(
        projections
            .get_license(&license_id("L2"), world.now)
            .unwrap()
            .is_none()
    );
}

#[test]
fn user_licenses_invites_and_domains() {
    // INV-3, LIC-5: a user's licenses with status, pending invites, domains.
    let mut world = sample_world();
    world.issue("L2", LicenseType::School, 10, 10);
    world.add("L2", Actor::User(staff_admin()), &["c@gmail.com"]);
    let granted = DomainAdminGranted {
        domain: DomainName::parse("north.edu").unwrap(),
        email: email("c@gmail.com"),
    };
    let granted_south = DomainAdminGranted {
        domain: DomainName::parse("south.edu").unwrap(),
        email: email("c@gmail.com"),
    };
    world.record(
        "domain-north.edu",
        &Actor::Staff,
        vec![Event::from(granted)],
    );
    world.record(
        "domain-south.edu",
        &Actor::Staff,
        vec![Event::from(granted_south)],
    );
    let revoked = DomainAdminRevoked {
        domain: DomainName::parse("south.edu").unwrap(),
        email: email("c@gmail.com"),
    };
    world.record(
        "domain-south.edu",
        &Actor::Staff,
        vec![Event::from(revoked)],
    );
    let (_directory, projections) = projections_of(&world);
    let c = email("c@gmail.com");
    let licenses = projections.licenses_of_user(&c).unwrap();
    assert_eq!(licenses.len(), 2);
    assert!(licenses.iter().all(|entry| entry.status == Status::Invited));
    assert_eq!(
        projections.invites_of_user(&c).unwrap(),
        [license_id("L1"), license_id("L2")]
    );
    assert_eq!(
        projections.invites_of_user(&email("a@north.edu")).unwrap(),
        []
    );
    assert_eq!(
        projections.domains_administered_by(&c).unwrap(),
        [DomainName::parse("north.edu").unwrap()]
    );
    assert_eq!(
        projections
            .domain_admins(&DomainName::parse("north.edu").unwrap())
            .unwrap(),
        std::slice::from_ref(&c)
    );
    assert_eq!(
        projections
            .domain_admins(&DomainName::parse("south.edu").unwrap())
            .unwrap(),
        []
    );
    // Accepting moves the invite out of the pending list.
    let checkpoint = projections.checkpoint().unwrap();
    assert!(world.run("L1", Actor::User(c.clone()), LicenseCommand::AcceptInvite));
    projections
        .apply_batch(&world.events_since(checkpoint))
        .unwrap();
    assert_eq!(projections.invites_of_user(&c).unwrap(), [license_id("L2")]);
}

#[test]
fn key_and_link_lookups_follow_rotation() {
    // LIC-6, KEY-1, LINK-1: the old secret stops working at once; only hashes are stored.
    let mut world = World::new();
    world.issue("T1", LicenseType::Teacher, 5, 100);
    world.issue("S1", LicenseType::School, 5, 200);
    let (directory, projections) = projections_of(&world);
    assert_eq!(
        projections.license_by_key(&secret(100)).unwrap(),
        Some(license_id("T1"))
    );
    assert_eq!(
        projections.license_by_link(&secret(101)).unwrap(),
        Some(license_id("T1"))
    );
    assert_eq!(
        projections.license_by_key(&secret(200)).unwrap(),
        Some(license_id("S1"))
    );
    // LINK-1: other types have no link.
    assert_eq!(projections.license_by_link(&secret(201)).unwrap(), None);
    let checkpoint = projections.checkpoint().unwrap();
    assert!(world.run(
        "T1",
        Actor::Staff,
        LicenseCommand::RotateKey { key: secret(300) }
    ));
    assert!(world.run(
        "T1",
        Actor::Staff,
        LicenseCommand::RotateLink { link: secret(301) }
    ));
    projections
        .apply_batch(&world.events_since(checkpoint))
        .unwrap();
    assert_eq!(projections.license_by_key(&secret(100)).unwrap(), None);
    assert_eq!(projections.license_by_link(&secret(101)).unwrap(), None);
    assert_eq!(
        projections.license_by_key(&secret(300)).unwrap(),
        Some(license_id("T1"))
    );
    assert_eq!(
        projections.license_by_link(&secret(301)).unwrap(),
        Some(license_id("T1"))
    );
    // The secrets themselves are nowhere in the lookup trees' keys.
    drop(projections);
    // sled releases a directory's lock from its background threads a moment after the last
    // handle is dropped (later still on a loaded machine), so the reopen retries, bounded,
    // as `Projections::open` does.
    let raw = (0..OPEN_ATTEMPTS_MAX)
        .find_map(|_| match sled::open(directory.path()) {
            Ok(db) => Some(db),
            Err(sled::Error::Io(error)) if error.to_string().contains("could not acquire lock") => {
                std::thread::sleep(StdDuration::from_millis(OPEN_RETRY_INTERVAL_MS));
                None
            }
            Err(error) => panic!("reopening the store: {error}"),
        })
        .expect("sled released its lock within the bound");
    for name in raw.tree_names() {
        for item in raw.open_tree(name).unwrap().iter() {
            let (key, _) = item.unwrap();
            assert!(!String::from_utf8_lossy(&key).contains(secret(300).expose()));
        }
    }
}

#[test]
fn domain_claims_map_to_their_license_until_released() {
    // DOM-3, DOM-5: claimed domain -> license, from either stream, until released.
    let mut world = sample_world();
    let (_directory, projections) = projections_of(&world);
    let north = DomainName::parse("north.edu").unwrap();
    assert_eq!(
        projections.license_by_claimed_domain(&north).unwrap(),
        Some(license_id("L1"))
    );
    let checkpoint = projections.checkpoint().unwrap();
    assert!(world.run(
        "L1",
        Actor::Staff,
        LicenseCommand::ReleaseDomain {
            domain: north.clone()
        }
    ));
    let claimed = DomainClaimed {
        domain: DomainName::parse("west.edu").unwrap(),
        license: license_id("L9"),
    };
    world.record("domain-west.edu", &Actor::Staff, vec![Event::from(claimed)]);
    projections
        .apply_batch(&world.events_since(checkpoint))
        .unwrap();
    assert_eq!(projections.license_by_claimed_domain(&north).unwrap(), None);
    assert_eq!(
        projections
            .license_by_claimed_domain(&DomainName::parse("west.edu").unwrap())
            .unwrap(),
        Some(license_id("L9"))
    );
}

#[test]
fn history_indexes_hold_positions_by_license_and_by_user() {
    // the events that touched a license or a user, oldest first, as log positions.
    let mut world = sample_world();
    world.issue("L2", LicenseType::School, 10, 10);
    world.add("L2", Actor::Staff, &["a@north.edu"]);
    let (_directory, projections) = projections_of(&world);
    let of_l2: Vec<u64> = world
        .events
        .iter()
        .filter(|event| event.stream == "license-L2")
        .map(|event| event.position)
        .collect();
    assert_eq!(
        projections
            .license_history(&license_id("L2"), None, 100)
            .unwrap(),
        of_l2
    );
    let of_a: Vec<u64> = world
        .events
        .iter()
        .filter(|event| event.event.member_email() == Some(&email("a@north.edu")))
        .map(|event| event.position)
        .collect();
    assert_eq!(of_a.len(), 2);
    assert_eq!(
        projections
            .user_history(&email("a@north.edu"), None, 100)
            .unwrap(),
        of_a
    );
    // Paged after a position.
    assert_eq!(
        projections
            .user_history(&email("a@north.edu"), Some(of_a[0]), 1)
            .unwrap(),
        [of_a[1]]
    );
    assert!(
        projections
            .license_history(&license_id("L2"), None, 0)
            .is_err()
    );
}

/// A store whose generation was rebuilt from `events` (fed in batches of 5) in chunks of at
/// most `chunk_events_max` events, and swapped in.
fn rebuilt_in_chunks(
    events: &[ProjectedEvent],
    chunk_events_max: usize,
) -> (tempfile::TempDir, Projections) {
    let directory = tempfile::tempdir().unwrap();
    let projections = Projections::open(directory.path()).unwrap();
    let rebuild = projections
        .begin_rebuild_with_budget(RebuildBudget {
            chunk_events_max,
            chunk_bytes_max: usize::MAX,
            checkpoint_batch_keys_max: 3,
        })
        .unwrap();
    for batch in events.chunks(5) {
        rebuild.apply_batch(batch).unwrap();
    }
    projections.finish_rebuild(rebuild).unwrap();
    (directory, projections)
}

/// Q-6's expected page: the first `limit` of `positions` after `after`.
fn page_after(positions: &[u64], after: u64, limit: usize) -> Vec<u64> {
    positions
        .iter()
        .copied()
        .filter(|position| *position > after)
        .take(limit)
        .collect()
}

/// The same events projected three ways, whose digests must be equal (AUD-5): live in
/// batches of `APPLY_BATCH_EVENTS_MAX`, live in batches of `small_batch`, and rebuilt in
/// chunks of 7 events. Returns the directories (to keep them) and the stores.
fn built_three_ways(
    events: &[ProjectedEvent],
    small_batch: usize,
) -> (Vec<tempfile::TempDir>, [Projections; 3]) {
    let live_in = |batch_events: usize| {
        let directory = tempfile::tempdir().unwrap();
        let projections = Projections::open(directory.path()).unwrap();
        for batch in events.chunks(batch_events) {
            projections.apply_batch(batch).unwrap();
        }
        (directory, projections)
    };
    let (whole, at_once) = live_in(projections::APPLY_BATCH_EVENTS_MAX);
    let (pieces, in_pieces) = live_in(small_batch);
    let (chunks, rebuilt) = rebuilt_in_chunks(events, 7);
    assert_eq!(at_once.digest().unwrap(), in_pieces.digest().unwrap());
    assert_eq!(at_once.digest().unwrap(), rebuilt.digest().unwrap());
    (vec![whole, pieces, chunks], [at_once, in_pieces, rebuilt])
}

#[test]
fn user_history_is_whole_across_memberships_that_hold_and_move_positions() {
    // Q-6, AUD-5: a membership's latest positions live in its member record and move under
    // the user's history keys when the membership ends or holds
    // MEMBER_HISTORY_POSITIONS_MAX of them; the user's history is the same whatever the
    // batches, and pages after any position.
    let mut world = World::new();
    world.issue("L1", LicenseType::District, 100, 1);
    world.issue("L2", LicenseType::School, 100, 3);
    let user = "u@x.org";
    let admin = || Actor::User(staff_admin());
    // Invite and reject cycles on L1 (INV-2, INV-4) until the record has moved its
    // positions more than once, with another user's events in between.
    let cycles = projections::MEMBER_HISTORY_POSITIONS_MAX + 3;
    for cycle in 0..cycles {
        world.add("L1", admin(), &[user]);
        world.add("L1", admin(), &[&format!("other{cycle}@x.org")]);
        assert!(world.run("L1", Actor::User(email(user)), LicenseCommand::RejectInvite));
    }
    world.add("L1", admin(), &[user]);
    assert!(world.run("L1", Actor::User(email(user)), LicenseCommand::AcceptInvite));
    // A membership on another license, a domain admin grant, the end of the first
    // membership and the start of a new one.
    world.add("L2", Actor::Staff, &[user]);
    let granted = DomainAdminGranted {
        domain: DomainName::parse("north.edu").unwrap(),
        email: email(user),
    };
    world.record(
        "domain-north.edu",
        &Actor::Staff,
        vec![Event::from(granted)],
    );
    world.remove("L1", &[user]);
    world.add("L1", admin(), &[user]);
    let expected: Vec<u64> = world
        .events
        .iter()
        .filter(|event| event.event.member_email() == Some(&email(user)))
        .map(|event| event.position)
        .collect();
    assert!(expected.len() > 2 * projections::MEMBER_HISTORY_POSITIONS_MAX);
    // A rebuild's chunks fold many batches: a member added and removed within one chunk
    // is never stored, but its positions are.
    let (_directories, stores) = built_three_ways(&world.events, 3);
    for store in &stores {
        assert_eq!(
            store.user_history(&email(user), None, 10_000).unwrap(),
            expected
        );
        for after in std::iter::once(0).chain(expected.iter().copied()) {
            assert_eq!(
                store.user_history(&email(user), Some(after), 5).unwrap(),
                page_after(&expected, after, 5),
                "after {after}"
            );
        }
    }
}

#[test]
fn license_history_spans_blocks_and_pages_across_them_whatever_the_batches() {
    // Q-6, AUD-5: a license's positions are packed in blocks of HISTORY_BLOCK_POSITIONS_MAX;
    // pages after any position cross block boundaries, and batch sizes change nothing.
    let mut world = World::new();
    world.issue("L1", LicenseType::District, 5_000, 1);
    world.issue("L2", LicenseType::School, 5_000, 2);
    let emails: Vec<String> = (0..2_100).map(|n| format!("u{n}@north.edu")).collect();
    for (index, chunk) in emails.chunks(100).enumerate() {
        let borrowed: Vec<&str> = chunk.iter().map(String::as_str).collect();
        // Interleave the two licenses so that neither's positions are consecutive.
        let license = if index % 3 == 2 { "L2" } else { "L1" };
        world.add(license, Actor::Staff, &borrowed);
    }
    let (_directories, stores) = built_three_ways(&world.events, 7);
    let of_l1: Vec<u64> = world
        .events
        .iter()
        .filter(|event| event.stream == "license-L1")
        .map(|event| event.position)
        .collect();
    assert!(of_l1.len() > 2 * projections::HISTORY_BLOCK_POSITIONS_MAX);
    // Up to the license's 512th event exactly: a full block still held in the record.
    let full = projections::HISTORY_BLOCK_POSITIONS_MAX;
    let through_full = world
        .events
        .iter()
        .position(|event| event.position == of_l1[full - 1])
        .unwrap();
    let (_full_directory, full_block) = rebuilt_in_chunks(&world.events[..=through_full], 7);
    assert_eq!(
        full_block
            .license_history(&license_id("L1"), None, 10_000)
            .unwrap(),
        of_l1[..full]
    );
    assert_eq!(
        full_block
            .license_history(&license_id("L1"), Some(of_l1[full - 2]), 10)
            .unwrap(),
        [of_l1[full - 1]]
    );
    for store in &stores {
        assert_eq!(
            store
                .license_history(&license_id("L1"), None, 10_000)
                .unwrap(),
            of_l1
        );
        // Pages of 97 after every 50th position, including positions of the other license
        // and the last one.
        let mut afters: Vec<u64> = of_l1.iter().copied().step_by(50).collect();
        afters.extend([of_l1[511], of_l1[512], *of_l1.last().unwrap(), of_l1[0] - 1]);
        for after in afters {
            let expected = page_after(&of_l1, after, 97);
            assert_eq!(
                store
                    .license_history(&license_id("L1"), Some(after), 97)
                    .unwrap(),
                expected,
                "after {after}"
            );
        }
    }
}

#[test]
fn usage_by_day_and_by_monday_week() {
    // users_count at the end of each bucket, added and removed by source; weeks
    // start Monday 00:00 UTC.
    let mut world = World::new();
    // Wednesday 2026-09-02.
    world.now = time("2026-09-02T10:00:00Z");
    world.issue("L1", LicenseType::District, 3, 1);
    world.add("L1", Actor::Staff, &["a@x.org", "b@x.org"]);
    // Thursday: one invite (counts as added), one removal.
    world.now = time("2026-09-03T23:59:59Z");
    world.add("L1", Actor::User(staff_admin()), &["c@x.org"]);
    world.remove("L1", &["a@x.org"]);
    // Monday 2026-09-07: the invite is rejected (a removal), key redeems fill seats.
    world.now = time("2026-09-07T00:00:00Z");
    assert!(world.run(
        "L1",
        Actor::User(email("c@x.org")),
        LicenseCommand::RejectInvite
    ));
    for user in ["d@x.org", "e@x.org", "f@x.org"] {
        assert!(world.run(
            "L1",
            Actor::User(email(user)),
            LicenseCommand::RedeemKey { key: secret(1) }
        ));
    }
    // Tuesday: a seat frees up and the waitlisted user is promoted (added, source key).
    world.now = time("2026-09-08T12:00:00Z");
    world.remove("L1", &["b@x.org"]);
    let (_directory, projections) = projections_of(&world);
    let days = projections
        .usage(
            &license_id("L1"),
            time("2026-09-01T00:00:00Z"),
            time("2026-09-09T00:00:00Z"),
            Bucket::Day,
        )
        .unwrap();
    let counts: Vec<u64> = days.iter().map(|day| day.users_count).collect();
    assert_eq!(counts, [0, 2, 2, 2, 2, 2, 3, 3]);
    assert_eq!(days[1].added.get(&Source::Email), Some(&2));
    assert_eq!(days[2].added.get(&Source::Email), Some(&1));
    assert_eq!(days[2].removed.get(&Source::Email), Some(&1));
    assert_eq!(days[6].removed.get(&Source::Email), Some(&1));
    assert_eq!(days[6].added.get(&Source::Key), Some(&2));
    assert_eq!(days[7].added.get(&Source::Key), Some(&1));
    assert_eq!(days[7].removed.get(&Source::Email), Some(&1));
    assert_eq!(world.state("L1").users_count(), 3);
    let weeks = projections
        .usage(
            &license_id("L1"),
            time("2026-09-02T10:00:00Z"),
            time("2026-09-08T00:00:01Z"),
            Bucket::Week,
        )
        .unwrap();
    assert_eq!(weeks.len(), 2);
    assert_eq!(weeks[0].start, time("2026-08-31T00:00:00Z"));
    assert_eq!(weeks[1].start, time("2026-09-07T00:00:00Z"));
    assert_eq!(weeks[0].users_count, 2);
    assert_eq!(weeks[0].added.get(&Source::Email), Some(&3));
    assert_eq!(weeks[1].users_count, 3);
    assert_eq!(weeks[1].added.get(&Source::Key), Some(&3));
    // a range after the last change carries the count of the latest day before it,
    // which is the license's open day (kept in its record, not yet under its own key).
    world.now = time("2026-09-09T12:00:00Z");
    world.remove("L1", &["d@x.org"]);
    let (_later_directory, later_projections) = projections_of(&world);
    let by_day = |from: &str, to: &str| {
        later_projections
            .usage(&license_id("L1"), time(from), time(to), Bucket::Day)
            .unwrap()
    };
    let counts = |days: &[projections::UsageBucket]| -> Vec<u64> {
        days.iter().map(|day| day.users_count).collect()
    };
    let later = by_day("2026-09-10T00:00:00Z", "2026-09-12T00:00:00Z");
    assert_eq!(counts(&later), [2, 2]);
    assert!(
        later
            .iter()
            .all(|day| day.added.is_empty() && day.removed.is_empty())
    );
    // A range that ends before the open day reads the closed days only, as before.
    let before_open = by_day("2026-09-01T00:00:00Z", "2026-09-09T00:00:00Z");
    assert_eq!(counts(&before_open), [0, 2, 2, 2, 2, 2, 3, 3]);
    assert!(matches!(
        projections.usage(&license_id("L1"), world.now, world.now, Bucket::Day),
        Err(ProjectionError::EmptyRange)
    ));
    assert!(matches!(
        projections.usage(
            &license_id("L1"),
            time("2020-01-01T00:00:00Z"),
            time("2026-01-01T00:00:00Z"),
            Bucket::Day
        ),
        Err(ProjectionError::TooManyBuckets { .. })
    ));
}

#[test]
fn checkpoint_survives_reopening_and_applies_nothing_twice() {
    // AUD-6: the checkpoint is written with the batch; a reopened projection resumes from it.
    let world = sample_world();
    let directory = tempfile::tempdir().unwrap();
    let half = world.events.len() / 2;
    {
        let projections = Projections::open(directory.path()).unwrap();
        projections.apply_batch(&world.events[..half]).unwrap();
        assert_eq!(
            projections.checkpoint().unwrap(),
            world.events[half - 1].position
        );
    }
    let projections = Projections::open(directory.path()).unwrap();
    let checkpoint = projections.checkpoint().unwrap();
    projections
        .apply_batch(&world.events_since(checkpoint))
        .unwrap();
    let view = projections
        .get_license(&license_id("L1"), world.now)
        .unwrap()
        .unwrap();
    assert_eq!(view.users_count, world.state("L1").users_count());
}

#[test]
#[should_panic(expected = "positions must strictly increase")]
fn applying_a_position_twice_is_a_bug_that_stops_the_projector() {
    // AUD-6: never applying an event twice.
    let world = sample_world();
    let (_directory, projections) = projections_of(&world);
    let _ = projections.apply_batch(&world.events[world.events.len() - 1..]);
}

#[test]
fn oversized_batches_and_unknown_streams_are_refused_whole() {
    // AUD-6: a refused batch writes nothing, not even the checkpoint.
    let mut world = sample_world();
    let (_directory, projections) = projections_of(&world);
    let before = projections.checkpoint().unwrap();
    world.issue("L3", LicenseType::School, 5, 50);
    let mut events = world.events_since(before);
    events.last_mut().unwrap().stream = "nonsense".into();
    assert!(matches!(
        projections.apply_batch(&events),
        Err(ProjectionError::UnknownStream(_))
    ));
    assert_eq!(projections.checkpoint().unwrap(), before);
    assert!(
        projections
            .get_license(&license_id("L3"), world.now)
            .unwrap()
            .is_none()
    );
    let many = vec![events[0].clone(); projections::LIVE_APPLY_EVENTS_MAX + 1];
    assert!(matches!(
        projections.apply_batch(&many),
        Err(ProjectionError::BatchTooLarge { .. })
    ));
}

#[test]
fn wait_for_returns_once_the_checkpoint_reaches_the_position_or_times_out() {
    // AUD-6 read-your-writes: a query after a command waits for its position.
    let world = sample_world();
    let directory = tempfile::tempdir().unwrap();
    let projections = std::sync::Arc::new(Projections::open(directory.path()).unwrap());
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let last = world.events.last().unwrap().position;
    runtime.block_on(async {
        let timed_out = projections
            .wait_for(last, StdDuration::from_millis(20))
            .await;
        assert_eq!(timed_out.unwrap_err().checkpoint, 0);
        let waiting = {
            let projections = std::sync::Arc::clone(&projections);
            tokio::spawn(
                async move { projections.wait_for(last, StdDuration::from_secs(30)).await },
            )
        };
        tokio::task::yield_now().await;
        projections.apply_batch(&world.events).unwrap();
        waiting.await.unwrap().unwrap();
        projections.wait_for(1, StdDuration::ZERO).await.unwrap();
    });
}

#[test]
fn a_schema_change_rebuilds_a_fresh_generation_and_swaps_it_in() {
    // AUD-5: the rebuilt generation equals the live one; the old one answers until the swap.
    let mut world = sample_world();
    let directory = tempfile::tempdir().unwrap();
    {
        let old = Projections::open_with_schema_version(directory.path(), 1).unwrap();
        old.apply_batch(&world.events).unwrap();
        assert!(!old.needs_rebuild().unwrap());
    }
    let projections = Projections::open_with_schema_version(directory.path(), 2).unwrap();
    assert!(projections.needs_rebuild().unwrap());
    let old_name = projections.generation_name();
    let live_digest = projections.digest().unwrap();
    let rebuild = projections.begin_rebuild().unwrap();
    rebuild.apply_batch(&world.events[..3]).unwrap();
    // Behind the live checkpoint: not swapped, and the old generation still answers.
    let rebuild = match projections.finish_rebuild(rebuild) {
        Err(ProjectionError::RebuildBehind { .. }) => projections.begin_rebuild().unwrap(),
        other => panic!("expected RebuildBehind, got {other:?}"),
    };
    assert_eq!(projections.generation_name(), old_name);
    // The live projection moves on while the rebuild catches up.
    let checkpoint = projections.checkpoint().unwrap();
    world.add("L1", Actor::Staff, &["late@north.edu"]);
    projections
        .apply_batch(&world.events_since(checkpoint))
        .unwrap();
    for chunk in world.events.chunks(4) {
        rebuild.apply_batch(chunk).unwrap();
    }
    assert_ne!(rebuild.digest().unwrap(), live_digest);
    assert_eq!(rebuild.digest().unwrap(), projections.digest().unwrap());
    let new_name = rebuild.generation_name().to_owned();
    projections.finish_rebuild(rebuild).unwrap();
    assert_eq!(projections.generation_name(), new_name);
    assert!(!projections.needs_rebuild().unwrap());
    assert_eq!(
        projections
            .get_license(&license_id("L1"), world.now)
            .unwrap()
            .unwrap()
            .users_count,
        world.state("L1").users_count()
    );
    drop(projections);
    // The pointer survives a restart, and only the current generation's tree is left.
    let reopened = Projections::open_with_schema_version(directory.path(), 2).unwrap();
    assert_eq!(reopened.generation_name(), new_name);
    assert!(!reopened.needs_rebuild().unwrap());
}

/// Chunks of two events whose last three keys go with the checkpoint: a rebuild of the
/// sample world writes several chunks, most of them partly before their checkpoint.
const SMALL_CHUNKS: RebuildBudget = RebuildBudget {
    chunk_events_max: 2,
    chunk_bytes_max: usize::MAX,
    checkpoint_batch_keys_max: 3,
};

#[test]
fn a_rebuild_stopped_between_chunks_is_never_swapped_in_and_starts_over() {
    // AUD-6: a crash while rebuilding leaves written chunks of an unfinished generation;
    // the next open drops it, the old generation answers, and a new rebuild starts from 1.
    let world = sample_world();
    let directory = tempfile::tempdir().unwrap();
    {
        let old = Projections::open_with_schema_version(directory.path(), 1).unwrap();
        old.apply_batch(&world.events).unwrap();
    }
    let (old_name, old_digest) = {
        let projections = Projections::open_with_schema_version(directory.path(), 2).unwrap();
        let rebuild = projections.begin_rebuild_with_budget(SMALL_CHUNKS).unwrap();
        let last = world.events.len() - 1;
        for event in &world.events[..last] {
            rebuild.apply_batch(std::slice::from_ref(event)).unwrap();
        }
        // Chunks are written as they fill; the stored checkpoint names the last whole one.
        let stored = rebuild.stored_checkpoint().unwrap();
        assert!(stored > 0, "no chunk was written");
        assert!(stored <= world.events[last - 1].position);
        assert_eq!(
            rebuild.checkpoint().unwrap(),
            world.events[last - 1].position
        );
        (projections.generation_name(), projections.digest().unwrap())
        // Dropped here without `finish_rebuild`, as a crash would.
    };
    let projections = Projections::open_with_schema_version(directory.path(), 2).unwrap();
    assert_eq!(projections.generation_name(), old_name);
    assert!(projections.needs_rebuild().unwrap());
    assert_eq!(projections.digest().unwrap(), old_digest);
    let rebuild = projections.begin_rebuild_with_budget(SMALL_CHUNKS).unwrap();
    assert_eq!(rebuild.checkpoint().unwrap(), 0);
    assert_eq!(rebuild.stored_checkpoint().unwrap(), 0);
    for chunk in world.events.chunks(3) {
        rebuild.apply_batch(chunk).unwrap();
    }
    let rebuilt_name = rebuild.generation_name().to_owned();
    projections.finish_rebuild(rebuild).unwrap();
    assert_eq!(projections.generation_name(), rebuilt_name);
    assert_eq!(projections.digest().unwrap(), old_digest);
    assert_eq!(
        projections.checkpoint().unwrap(),
        world.events.last().unwrap().position
    );
}

#[test]
fn a_rebuild_that_met_a_bad_event_refuses_to_go_on_or_be_swapped_in() {
    // AUD-6: a batch that cannot be folded leaves its chunk half done, so the rebuild stops
    // for good rather than skip part of the log; the old generation keeps answering.
    let world = sample_world();
    let (_directory, projections) = projections_of(&world);
    let name = projections.generation_name();
    let rebuild = projections.begin_rebuild_with_budget(SMALL_CHUNKS).unwrap();
    let mut events = world.events.clone();
    events[4].stream = "nonsense".into();
    rebuild.apply_batch(&events[..3]).unwrap();
    assert!(matches!(
        rebuild.apply_batch(&events[3..6]),
        Err(ProjectionError::UnknownStream(_))
    ));
    assert!(matches!(
        rebuild.apply_batch(&events[6..]),
        Err(ProjectionError::RebuildFailed)
    ));
    assert!(matches!(
        rebuild.checkpoint(),
        Err(ProjectionError::RebuildFailed)
    ));
    assert!(matches!(
        projections.finish_rebuild(rebuild),
        Err(ProjectionError::RebuildFailed)
    ));
    assert_eq!(projections.generation_name(), name);
}

#[test]
fn pattern_pages_over_many_members_agree_with_the_reference_both_ways() {
    // `%pattern%` searches page through the in-memory email text in either direction,
    // including while members change between pages.
    let mut world = World::new();
    world.issue("L1", LicenseType::District, 1_000, 1);
    let emails: Vec<String> = (0..300)
        .map(|n| format!("user{n}@school{}.edu", n % 7))
        .collect();
    let borrowed: Vec<&str> = emails.iter().map(String::as_str).collect();
    world.add("L1", Actor::Staff, &borrowed);
    let (_directory, projections) = projections_of(&world);
    for raw in ["%1%", "%SCHOOL3%", "user2%", "%7@%", "%.edu", "%u%1%3%"] {
        let pattern = EmailPattern::parse(raw).unwrap();
        for sort in [SortColumn::Email, SortColumn::AddedBy] {
            for descending in [false, true] {
                let mut request = ListUsersRequest::new(license_id("L1"));
                request.pattern = Some(raw.to_owned());
                request.sort = sort;
                request.descending = descending;
                request.page_size = 7;
                let expected = Reference {
                    pattern: Some(&pattern),
                    role_is: None,
                    role_is_not: None,
                    status: None,
                    source: None,
                    sort,
                    descending,
                }
                .emails(world.state("L1"));
                assert_eq!(
                    all_pages(&projections, &request),
                    expected,
                    "{raw} {sort:?} {descending}"
                );
            }
        }
    }
    // The loaded email lists follow later batches: removals, newcomers, returns.
    let checkpoint = projections.checkpoint().unwrap();
    world.now += Duration::minutes(5);
    world.remove(
        "L1",
        &[
            "user1@school1.edu",
            "user10@school3.edu",
            "user100@school2.edu",
        ],
    );
    world.add(
        "L1",
        Actor::Staff,
        &["user1000@school3.edu", "a1@school3.edu"],
    );
    projections
        .apply_batch(&world.events_since(checkpoint))
        .unwrap();
    for raw in ["%1%", "%school3%"] {
        let pattern = EmailPattern::parse(raw).unwrap();
        for descending in [false, true] {
            let mut request = ListUsersRequest::new(license_id("L1"));
            request.pattern = Some(raw.to_owned());
            request.descending = descending;
            request.page_size = 11;
            let expected = Reference {
                pattern: Some(&pattern),
                role_is: None,
                role_is_not: None,
                status: None,
                source: None,
                sort: SortColumn::Email,
                descending,
            }
            .emails(world.state("L1"));
            assert_eq!(
                all_pages(&projections, &request),
                expected,
                "{raw} {descending}"
            );
        }
    }
    let mut request = ListUsersRequest::new(license_id("L1"));
    request.pattern = Some("%".repeat(300));
    assert!(matches!(
        projections.list_users(&request),
        Err(ProjectionError::InvalidPattern(_))
    ));
}

/// Live projections that write a pack for any batch of at least three entries a pack may
/// take, with batches of one event unless dense (every batch is, at one plain key per
/// event), and a merge above two packs.
fn packing(directory: &std::path::Path) -> Projections {
    Projections::open(directory)
        .unwrap()
        .with_live_budget(projections::LiveBudget {
            batch_events_max: 1,
            dense_events_per_plain_key_min: 1,
            dense_batch_events_max: 1_000,
            pack_entries_min: 3,
            packs_max: 2,
        })
}

/// Packing projections in `directory` (`packing`) where a batch too small for a pack left
/// a@ of L1 plain, then one more batch: `change`'s events and a@'s removal. Asserts they
/// read as projections that were only ever plain (AUD-5) and that a@ is gone; returns them
/// with the history.
fn packing_over_a_removed_plain_member(
    directory: &std::path::Path,
    change: impl FnOnce(&mut World),
) -> (Projections, World) {
    let mut world = World::new();
    world.issue("L1", LicenseType::School, 100, 70);
    world.add("L1", Actor::Staff, &["a@north.edu"]);
    let projections = packing(directory);
    projections.apply_batch(&world.events).unwrap();
    let before = world.events.len();
    change(&mut world);
    world.remove("L1", &["a@north.edu"]);
    projections.apply_batch(&world.events[before..]).unwrap();
    let reference = Projections::open_temporary().unwrap();
    reference.apply_batch(&world.events).unwrap();
    assert_eq!(projections.digest().unwrap(), reference.digest().unwrap());
    assert_eq!(
        projections
            .member(&license_id("L1"), &email("a@north.edu"))
            .unwrap(),
        None
    );
    (projections, world)
}

#[test]
fn a_member_the_plain_layer_holds_stays_plain_when_a_live_pack_is_written() {
    // AUD-5 Q-2 Q-3: a batch too small for a pack leaves a@ as plain keys; a later batch
    // that packs b@ and c@ also removes a@. The removal must go where a@'s keys are, or
    // the older plain keys would hide it.
    let directory = tempfile::tempdir().unwrap();
    let (projections, _) = packing_over_a_removed_plain_member(directory.path(), |world| {
        world.add("L1", Actor::Staff, &["b@north.edu", "c@north.edu"]);
    });
    assert!(
        projections
            .licenses_of_user(&email("a@north.edu"))
            .unwrap()
            .is_empty()
    );
    assert!(
        projections
            .member(&license_id("L1"), &email("c@north.edu"))
            .unwrap()
            .is_some()
    );
}

#[test]
fn a_fold_of_many_new_members_still_reads_the_plain_member_it_touches() {
    // AUD-5 Q-2: after enough lookups of one license a fold asks once whether the plain
    // layer has any of its members, and skips the plain layer when it has none. Here it has
    // a@ (a batch too small for a pack left it plain), so the removal after twenty-four new
    // members must still find a@'s plain record.
    let directory = tempfile::tempdir().unwrap();
    let (projections, world) = packing_over_a_removed_plain_member(directory.path(), |world| {
        let new_members: Vec<String> = (0..24).map(|index| format!("n{index}@north.edu")).collect();
        let new_members: Vec<&str> = new_members.iter().map(String::as_str).collect();
        world.add("L1", Actor::Staff, &new_members);
    });
    assert_eq!(
        projections
            .get_license(&license_id("L1"), world.now)
            .unwrap()
            .map(|license| license.users_count),
        Some(24)
    );
}
