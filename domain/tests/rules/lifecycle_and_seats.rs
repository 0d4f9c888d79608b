//! SPEC §2 (seats), §3 (license lifecycle), §4 (adding by email), §5 (invites), §6 (key and
//! link), §10 (removing) and §13 (errors), as given/when/then tests of the license and
//! email-domain aggregates.

use crate::support::*;

use std::collections::BTreeSet;

use domain::events::{Event, EventMeta, OuEntry, RemovalReason};
use domain::{
    Actor, AddSummary, AdminChannel, Context, Decision, DomainCommand, EmailDomain, ErrorKind,
    FeatureName, License, LicenseCommand, LicenseId, LicenseType, Lms, OuPath, Outcome,
    RemoveSummary, Role, Secret, Source, Status,
};

/// The first second after `VALID_UNTIL`: the default license is expired from here on.
const AFTER_EXPIRY: &str = "2027-08-01T00:00:00Z";

fn admin() -> Actor {
    user(ADMIN)
}

fn redeem_key() -> LicenseCommand {
    LicenseCommand::RedeemKey {
        key: secret("key-one"),
    }
}

fn join_via_link() -> LicenseCommand {
    LicenseCommand::JoinViaLink {
        token: secret("link-one"),
    }
}

fn add_by_email(raw: &[&str]) -> LicenseCommand {
    LicenseCommand::AddUsers {
        emails: emails(raw),
        channel: AdminChannel::EmailList,
    }
}

fn add_by_csv(raw: &[&str]) -> LicenseCommand {
    LicenseCommand::AddUsers {
        emails: emails(raw),
        channel: AdminChannel::Csv,
    }
}

fn remove(raw: &[&str]) -> LicenseCommand {
    LicenseCommand::RemoveUsers {
        emails: emails(raw),
    }
}

fn issue(license_type: LicenseType, seats: u32, from: &str, until: &str) -> LicenseCommand {
    LicenseCommand::Issue {
        license: LicenseId::parse("L2").unwrap(),
        license_type,
        seats,
        valid_from: time(from),
        valid_until: time(until),
        admins: vec![email(ADMIN)],
        key: secret("key-two"),
        link: secret("link-two"),
    }
}

/// No license has been issued yet.
fn nothing_issued() -> Given {
    Given {
        license: License::default(),
        now: time(NOW),
        history: Vec::new(),
        admin_domains: BTreeSet::new(),
    }
}

fn added(summary: (u64, u64, u64)) -> Outcome {
    Outcome::UsersAdded(AddSummary {
        added: summary.0,
        invited: summary.1,
        unchanged: summary.2,
    })
}

fn removed(removed: u64, not_found: u64, will_return: u64) -> Outcome {
    Outcome::UsersRemoved(RemoveSummary {
        removed,
        not_found,
        will_return,
    })
}

fn joined(status: Status) -> Outcome {
    Outcome::Joined { status }
}

/// The emails a decision promotes, in order.
fn promoted(decision: &Decision) -> Vec<String> {
    decision
        .events
        .iter()
        .filter_map(|event| match event {
            Event::UserPromoted(e) => Some(e.email.to_string()),
            _ => None,
        })
        .collect()
}

fn source_of(given: &Given, raw: &str) -> Source {
    given.state().member(&email(raw)).expect("a member").source
}

fn role_of(given: &Given, raw: &str) -> Role {
    given.state().member(&email(raw)).expect("a member").role
}

fn waitlist(given: &Given) -> Vec<String> {
    given.state().waitlist().map(ToString::to_string).collect()
}

/// A license of one seat held by `holder@north.edu`, with `first@north.edu` and then
/// `second@north.edu` waiting for it (both came by the license key).
fn one_seat_with_two_waiting(license_type: LicenseType) -> Given {
    let mut given = Given::license(license_type, 1);
    given.add(Actor::Staff, &["holder@north.edu"]);
    given.ok(user("first@north.edu"), redeem_key());
    given.ok(user("second@north.edu"), redeem_key());
    assert_eq!(waitlist(&given), ["first@north.edu", "second@north.edu"]);
    given
}

fn ou_entry(raw: &str) -> OuEntry {
    OuEntry {
        email: email(raw),
        ou_path: OuPath::parse("/Students").unwrap(),
        role: Role::Student,
        suspended: false,
    }
}

/// A district license linked to the `/Students` OU by its admin.
fn district_linked_to_an_ou(seats: u32) -> Given {
    let mut given = Given::license(LicenseType::District, seats);
    given.ok(
        admin(),
        LicenseCommand::LinkOu {
            ou_paths: vec![OuPath::parse("/Students").unwrap()],
            google_admin: true,
        },
    );
    given
}

/// A district license that claims `north.edu` for domain-wide deployment.
fn district_claiming_north_edu(seats: u32) -> Given {
    let mut given = Given::license(LicenseType::District, seats);
    given.ok(
        Actor::Staff,
        LicenseCommand::ClaimDomain {
            domain: domain_name("north.edu"),
            dedicated: false,
        },
    );
    given
}

fn sign_up(raw: &str) -> LicenseCommand {
    LicenseCommand::SignUp {
        email: email(raw),
        role: Role::Student,
    }
}

fn roster(raw: &[&str]) -> LicenseCommand {
    LicenseCommand::SyncRoster {
        course: "math-101".into(),
        students: emails(raw),
    }
}

fn assignment_opened(teacher: &str, student: &str) -> LicenseCommand {
    LicenseCommand::AssignmentOpened {
        teacher: email(teacher),
        student: email(student),
        lms: Lms::Canvas,
        kami_assignment: true,
    }
}

// ---------------------------------------------------------------------------------------
// §2 Seats
// ---------------------------------------------------------------------------------------

// SEAT-1 SEAT-2: accepted and invited hold a seat; rejected and waitlisted do not.
#[test]
fn users_count_is_accepted_plus_invited_and_rejected_or_waitlisted_hold_no_seat() {
    let mut given = Given::license(LicenseType::School, 3);
    given.add(Actor::Staff, &["a@north.edu"]);
    given.add(admin(), &["b@south.edu", "c@south.edu"]);
    assert_eq!(given.state().users_count(), 3);
    assert_eq!(given.state().seats_free(), 0);

    given.ok(user("c@south.edu"), LicenseCommand::RejectInvite);
    // The rejection gave the seat back, so a key joins at once ...
    given.ok(user("d@north.edu"), redeem_key());
    // ... and the next one waits.
    given.ok(user("e@north.edu"), redeem_key());

    let counts = given.state().counts();
    assert_eq!(
        (
            counts.accepted,
            counts.invited,
            counts.rejected,
            counts.waitlisted
        ),
        (2, 1, 1, 1)
    );
    assert_eq!(given.state().users_count(), 3);
    assert_eq!(given.state().seats_free(), 0);
    assert_eq!(given.state().over_by(), 0);
}

// SEAT-1: seats_free counts down as members are added, and never below zero.
#[test]
fn seats_free_is_seats_minus_users_count() {
    let mut given = Given::license(LicenseType::School, 5);
    assert_eq!(given.state().seats_free(), 5);
    given.add(Actor::Staff, &["a@north.edu", "b@north.edu"]);
    given.add(admin(), &["c@south.edu"]);
    assert_eq!(given.state().users_count(), 3);
    assert_eq!(given.state().seats_free(), 2);
    assert_eq!(given.state().over_by(), 0);
}

// SEAT-1 LIC-2: over_by appears only after a seat decrease, and seats_free is then zero.
#[test]
fn over_by_counts_members_beyond_lowered_seats() {
    let mut given = Given::license(LicenseType::School, 4);
    given.add(Actor::Staff, &["a@north.edu", "b@north.edu", "c@north.edu"]);
    given.ok(Actor::Staff, LicenseCommand::ChangeSeats { seats: 1 });
    assert_eq!(given.state().users_count(), 3);
    assert_eq!(given.state().over_by(), 2);
    assert_eq!(given.state().seats_free(), 0);
}

// SEAT-2: removed members hold no seat; removing a waitlisted member frees none, so nobody
// is promoted.
#[test]
fn removing_a_waitlisted_member_frees_no_seat_and_promotes_nobody() {
    let mut given = one_seat_with_two_waiting(LicenseType::School);
    let decision = given.remove(admin(), &["first@north.edu"]);
    assert_eq!(types(&decision), ["UserRemoved"]);
    assert_eq!(given.status("first@north.edu"), None);
    assert_eq!(given.status("second@north.edu"), Some(Status::Waitlisted));
    assert_eq!(given.state().counts().waitlisted, 1);
    assert_eq!(given.state().users_count(), 1);
}

// SEAT-3: a batch that does not fit is refused whole, saying what it needs and what is free.
#[test]
fn admin_batch_beyond_free_seats_is_refused_whole_with_seats_needed_and_free() {
    let mut given = Given::license(LicenseType::School, 3);
    given.add(Actor::Staff, &["a@north.edu"]);
    let error = given.refused(
        admin(),
        add_by_email(&["b@north.edu", "c@north.edu", "d@north.edu"]),
        ErrorKind::ResourceExhausted,
    );
    assert!(error.message().contains("needs 3"), "{error}");
    assert!(error.message().contains("2 free"), "{error}");
    // Nothing of it was applied: the refusal carries no events, the two that fit included.
    assert_eq!(given.status("b@north.edu"), None);
    assert_eq!(given.state().users_count(), 1);
}

// SEAT-3: the rule holds for staff batches and CSV imports too, not only email lists.
#[test]
fn staff_batches_and_csv_imports_beyond_free_seats_are_refused() {
    let mut given = Given::license(LicenseType::School, 1);
    given.add(Actor::Staff, &["a@north.edu"]);
    given.refused(
        Actor::Staff,
        add_by_email(&["b@north.edu"]),
        ErrorKind::ResourceExhausted,
    );
    given.refused(
        admin(),
        add_by_csv(&["b@north.edu"]),
        ErrorKind::ResourceExhausted,
    );
}

// SEAT-3: a batch that exactly fills the free seats is not "above seats".
#[test]
fn admin_batch_that_exactly_fills_the_free_seats_is_applied() {
    let mut given = Given::license(LicenseType::School, 3);
    given.add(Actor::Staff, &["a@north.edu"]);
    let decision = given.add(Actor::Staff, &["b@north.edu", "c@north.edu"]);
    assert_eq!(outcome(&decision), &added((2, 0, 0)));
    assert_eq!(given.state().seats_free(), 0);
}

// SEAT-3 ADD-3: members already on the license need no new seat, so re-adding them on a
// full license is not refused.
#[test]
fn batch_of_existing_members_on_a_full_license_needs_no_seat() {
    let mut given = Given::license(LicenseType::School, 2);
    given.add(Actor::Staff, &["a@north.edu"]);
    given.add(admin(), &["b@south.edu"]);
    let decision = given.add(admin(), &["a@north.edu", "b@south.edu"]);
    assert!(decision.events.is_empty());
    assert_eq!(outcome(&decision), &added((0, 0, 2)));
}

// SEAT-2 SEAT-3: a rejected member holds no seat, so adding them again needs one.
#[test]
fn re_adding_a_rejected_member_to_a_full_license_is_refused() {
    let mut given = Given::license(LicenseType::School, 1);
    given.add(admin(), &["rejecter@south.edu"]);
    given.ok(user("rejecter@south.edu"), LicenseCommand::RejectInvite);
    given.add(Actor::Staff, &["holder@north.edu"]);
    given.refused(
        admin(),
        add_by_email(&["rejecter@south.edu"]),
        ErrorKind::ResourceExhausted,
    );
    assert_eq!(given.status("rejecter@south.edu"), Some(Status::Rejected));
}

// SEAT-4: an automatic source on a full license waitlists the user, with its source.
#[test]
fn automatic_source_without_a_free_seat_waitlists_the_user() {
    let mut given = Given::license(LicenseType::Teacher, 1);
    given.add(Actor::Staff, &["holder@north.edu"]);
    let decision = given.ok(user("late@north.edu"), join_via_link());
    assert_eq!(outcome(&decision), &joined(Status::Waitlisted));
    match decision.events.as_slice() {
        [Event::UserWaitlisted(e)] => {
            assert_eq!(e.email, email("late@north.edu"));
            assert_eq!(e.source, Source::Link);
        }
        other => panic!("expected one UserWaitlisted, got {other:?}"),
    }
    assert_eq!(given.status("late@north.edu"), Some(Status::Waitlisted));
    assert_eq!(given.state().users_count(), 1);
    assert_eq!(given.state().counts().waitlisted, 1);
}

// SEAT-4 REM-2: a removal promotes the first waitlisted user in the same decision, and
// promotion keeps the source they came by.
#[test]
fn removal_promotes_waitlisted_users_in_waitlist_order_keeping_their_source() {
    let mut given = Given::license(LicenseType::Teacher, 1);
    given.add(Actor::Staff, &["holder@north.edu"]);
    given.ok(user("first@north.edu"), join_via_link());
    given.ok(user("second@north.edu"), redeem_key());

    let decision = given.remove(admin(), &["holder@north.edu"]);
    assert_eq!(types(&decision), ["UserRemoved", "UserPromoted"]);
    assert_eq!(promoted(&decision), ["first@north.edu"]);
    assert_eq!(given.status("first@north.edu"), Some(Status::Accepted));
    assert_eq!(source_of(&given, "first@north.edu"), Source::Link);
    assert_eq!(given.status("second@north.edu"), Some(Status::Waitlisted));

    let decision = given.remove(admin(), &["first@north.edu"]);
    assert_eq!(promoted(&decision), ["second@north.edu"]);
    assert_eq!(source_of(&given, "second@north.edu"), Source::Key);
    assert_eq!(given.state().counts().waitlisted, 0);
    assert_eq!(given.state().users_count(), 1);
}

// SEAT-4: the waitlist is in log order, not alphabetical order.
#[test]
fn waitlist_order_is_the_order_users_were_waitlisted_not_their_email_order() {
    let mut given = Given::license(LicenseType::School, 1);
    given.add(Actor::Staff, &["holder@north.edu"]);
    given.ok(user("zed@north.edu"), redeem_key());
    given.ok(user("amy@north.edu"), redeem_key());
    let decision = given.ok(Actor::Staff, LicenseCommand::ChangeSeats { seats: 2 });
    assert_eq!(promoted(&decision), ["zed@north.edu"]);
    assert_eq!(given.status("amy@north.edu"), Some(Status::Waitlisted));
}

// SEAT-4 INV-2: a rejection frees the invite's seat and promotes in the same decision.
#[test]
fn rejection_promotes_the_first_waitlisted_user_in_the_same_decision() {
    let mut given = Given::license(LicenseType::School, 1);
    given.add(admin(), &["invitee@south.edu"]);
    given.ok(user("waiting@north.edu"), redeem_key());
    let decision = given.ok(user("invitee@south.edu"), LicenseCommand::RejectInvite);
    assert_eq!(types(&decision), ["InviteRejected", "UserPromoted"]);
    assert_eq!(promoted(&decision), ["waiting@north.edu"]);
    assert_eq!(given.status("waiting@north.edu"), Some(Status::Accepted));
    assert_eq!(given.state().users_count(), 1);
}

// SEAT-4 LIC-2: a seat increase promotes as many as it frees, in order, in its own decision.
#[test]
fn seat_increase_promotes_as_many_waitlisted_users_as_it_frees() {
    let mut given = one_seat_with_two_waiting(LicenseType::School);
    given.ok(user("third@north.edu"), redeem_key());
    let decision = given.ok(Actor::Staff, LicenseCommand::ChangeSeats { seats: 3 });
    assert_eq!(
        types(&decision),
        ["SeatsChanged", "UserPromoted", "UserPromoted"]
    );
    assert_eq!(promoted(&decision), ["first@north.edu", "second@north.edu"]);
    assert_eq!(waitlist(&given), ["third@north.edu"]);
    assert_eq!(given.state().seats_free(), 0);
}

// SEAT-4 REM-2: removing a waitlisted user together with a seat holder promotes the next
// one in line, never the user just removed.
#[test]
fn removing_a_seat_holder_and_the_first_waiting_promotes_the_second() {
    let mut given = one_seat_with_two_waiting(LicenseType::School);
    let decision = given.remove(admin(), &["first@north.edu", "holder@north.edu"]);
    assert_eq!(promoted(&decision), ["second@north.edu"]);
    assert_eq!(given.status("first@north.edu"), None);
    assert_eq!(given.status("second@north.edu"), Some(Status::Accepted));
    assert_eq!(given.state().users_count(), 1);
}

// SEAT-4: adding a waitlisted user again, by any source, changes nothing, and they keep
// their place in line.
#[test]
fn waitlisted_user_added_again_by_any_source_is_unchanged_and_keeps_their_place() {
    let mut given = Given::license(LicenseType::Teacher, 1);
    given.add(Actor::Staff, &["holder@north.edu"]);
    given.ok(user("first@north.edu"), redeem_key());
    given.ok(user("second@north.edu"), redeem_key());

    let by_admin = given.add(admin(), &["first@north.edu"]);
    assert!(by_admin.events.is_empty());
    assert_eq!(outcome(&by_admin), &added((0, 0, 1)));
    let by_staff = given.add(Actor::Staff, &["first@north.edu"]);
    assert!(by_staff.events.is_empty());
    let by_key = given.ok(user("first@north.edu"), redeem_key());
    assert!(by_key.events.is_empty());
    assert_eq!(outcome(&by_key), &joined(Status::Waitlisted));
    let by_link = given.ok(user("first@north.edu"), join_via_link());
    assert!(by_link.events.is_empty());
    let by_roster = given.ok(Actor::System, roster(&["first@north.edu"]));
    assert!(by_roster.events.is_empty());

    assert_eq!(source_of(&given, "first@north.edu"), Source::Key);
    assert_eq!(waitlist(&given), ["first@north.edu", "second@north.edu"]);
}

// SEAT-5: a decision is only right for the state it was made on. Two redeems decided on
// the same state each take the one free seat; appending both would over-allocate, which is
// why the ledger appends with the revision the decision was made on (optimistic
// concurrency) and the loser decides again on the new state.
#[test]
fn two_decisions_on_the_same_state_would_over_allocate_so_the_second_must_be_redecided() {
    let mut given = Given::license(LicenseType::School, 1);
    let first = given.when(user("a@north.edu"), redeem_key()).unwrap();
    let second = given.when(user("b@north.edu"), redeem_key()).unwrap();
    assert_eq!(types(&first), ["UserAdded"]);
    assert_eq!(types(&second), ["UserAdded"]);

    let mut both_appended = given.license.clone();
    let meta = EventMeta {
        at: given.now,
        actor: Actor::System,
    };
    for event in first.events.iter().chain(&second.events) {
        both_appended.apply(&meta, event);
    }
    assert_eq!(both_appended.state().unwrap().over_by(), 1);

    given.ok(user("a@north.edu"), redeem_key());
    let redecided = given.when(user("b@north.edu"), redeem_key()).unwrap();
    assert_eq!(types(&redecided), ["UserWaitlisted"]);
}

// ---------------------------------------------------------------------------------------
// §3 License lifecycle
// ---------------------------------------------------------------------------------------

// LIC-1: only staff issue.
#[test]
fn only_staff_issue_licenses() {
    let given = nothing_issued();
    for actor in [admin(), Actor::System, user("teacher@north.edu")] {
        given.refused(
            actor,
            issue(LicenseType::School, 10, VALID_FROM, VALID_UNTIL),
            ErrorKind::PermissionDenied,
        );
    }
    let decision = given
        .when(
            Actor::Staff,
            issue(LicenseType::School, 10, VALID_FROM, VALID_UNTIL),
        )
        .unwrap();
    assert_eq!(types(&decision), ["LicenseIssued"]);
}

// LIC-1: fields outside §1's bounds are INVALID_ARGUMENT; the bounds themselves are fine.
#[test]
fn issue_with_fields_out_of_bounds_is_invalid_argument() {
    let given = nothing_issued();
    for seats in [0, 10_000_001] {
        given.refused(
            Actor::Staff,
            issue(LicenseType::School, seats, VALID_FROM, VALID_UNTIL),
            ErrorKind::InvalidArgument,
        );
    }
    for seats in [1, 10_000_000] {
        assert!(
            given
                .when(
                    Actor::Staff,
                    issue(LicenseType::School, seats, VALID_FROM, VALID_UNTIL)
                )
                .is_ok(),
            "{seats} seats are within bounds"
        );
    }
    // valid_from must be strictly earlier than valid_until.
    given.refused(
        Actor::Staff,
        issue(LicenseType::School, 10, VALID_FROM, VALID_FROM),
        ErrorKind::InvalidArgument,
    );
    given.refused(
        Actor::Staff,
        issue(LicenseType::School, 10, VALID_UNTIL, VALID_FROM),
        ErrorKind::InvalidArgument,
    );
    // At least one admin.
    let mut no_admins = issue(LicenseType::School, 10, VALID_FROM, VALID_UNTIL);
    if let LicenseCommand::Issue { admins, .. } = &mut no_admins {
        admins.clear();
    }
    given.refused(Actor::Staff, no_admins, ErrorKind::InvalidArgument);
    // The id: 1-64 of [A-Za-z0-9_-].
    assert!(LicenseId::parse(&"x".repeat(64)).is_ok());
    for bad in ["", "has space", "ümlaut", &"x".repeat(65)] {
        let error = LicenseId::parse(bad).unwrap_err();
        assert_eq!(error.kind(), ErrorKind::InvalidArgument, "{bad:?}");
    }
}

// LIC-1: a second license with the same id.
#[test]
fn issuing_an_existing_license_id_again_is_already_exists() {
    let given = Given::license(LicenseType::School, 10);
    given.refused(
        Actor::Staff,
        issue(LicenseType::District, 5, VALID_FROM, VALID_UNTIL),
        ErrorKind::AlreadyExists,
    );
}

// LIC-1 KEY-1 LINK-1: the key is made at issue for every type, the link for teacher only.
#[test]
fn issue_records_the_key_for_every_type_and_a_link_only_for_teacher_licenses() {
    for license_type in LicenseType::ALL.iter().copied() {
        let decision = nothing_issued()
            .when(
                Actor::Staff,
                issue(license_type, 10, VALID_FROM, VALID_UNTIL),
            )
            .unwrap();
        match decision.events.as_slice() {
            [Event::LicenseIssued(e)] => {
                assert!(e.key.matches(&secret("key-two")), "{license_type}");
                assert_eq!(
                    e.link.is_some(),
                    license_type == LicenseType::Teacher,
                    "{license_type}"
                );
                if let Some(link) = &e.link {
                    assert!(link.matches(&secret("link-two")));
                }
                assert_eq!(e.seats, 10);
                assert_eq!(e.admins, [email(ADMIN)]);
            }
            other => panic!("expected one LicenseIssued, got {other:?}"),
        }
        let given = Given::license(license_type, 10);
        assert!(given.state().key().matches(&secret("key-one")));
        assert_eq!(
            given.state().link().is_some(),
            license_type == LicenseType::Teacher
        );
    }
}

// LIC-2: staff renew to a later date.
#[test]
fn staff_renew_to_a_later_valid_until() {
    let mut given = Given::license(LicenseType::School, 10);
    let decision = given.ok(
        Actor::Staff,
        LicenseCommand::Renew {
            valid_until: time("2028-07-31T23:59:59Z"),
        },
    );
    match decision.events.as_slice() {
        [Event::LicenseRenewed(e)] => {
            assert_eq!(e.valid_until, time("2028-07-31T23:59:59Z"));
            assert_eq!(e.previous_valid_until, time(VALID_UNTIL));
        }
        other => panic!("expected one LicenseRenewed, got {other:?}"),
    }
    assert_eq!(given.state().valid_until(), time("2028-07-31T23:59:59Z"));
}

// LIC-2: a renewal that is not later is FAILED_PRECONDITION; only staff renew.
#[test]
fn renewal_to_the_same_or_an_earlier_date_is_refused_and_only_staff_renew() {
    let given = Given::license(LicenseType::School, 10);
    for until in [VALID_UNTIL, "2027-01-01T00:00:00Z"] {
        given.refused(
            Actor::Staff,
            LicenseCommand::Renew {
                valid_until: time(until),
            },
            ErrorKind::FailedPrecondition,
        );
    }
    given.refused(
        admin(),
        LicenseCommand::Renew {
            valid_until: time("2028-07-31T23:59:59Z"),
        },
        ErrorKind::PermissionDenied,
    );
}

// LIC-2 LIC-3: renewing an expired license makes it take members again.
#[test]
fn renewing_an_expired_license_lets_users_join_again() {
    let mut given = Given::license(LicenseType::School, 10);
    given.at(AFTER_EXPIRY);
    given.refused(
        user("a@north.edu"),
        redeem_key(),
        ErrorKind::FailedPrecondition,
    );
    given.ok(
        Actor::Staff,
        LicenseCommand::Renew {
            valid_until: time("2028-07-31T23:59:59Z"),
        },
    );
    assert!(!given.state().is_expired(given.now));
    given.ok(user("a@north.edu"), redeem_key());
    assert_eq!(given.status("a@north.edu"), Some(Status::Accepted));
}

// LIC-2: staff change seats; nobody else may.
#[test]
fn staff_change_seats_and_license_admins_may_not() {
    let mut given = Given::license(LicenseType::School, 10);
    given.refused(
        admin(),
        LicenseCommand::ChangeSeats { seats: 20 },
        ErrorKind::PermissionDenied,
    );
    let decision = given.ok(Actor::Staff, LicenseCommand::ChangeSeats { seats: 20 });
    match decision.events.as_slice() {
        [Event::SeatsChanged(e)] => assert_eq!((e.seats, e.previous_seats), (20, 10)),
        other => panic!("expected one SeatsChanged, got {other:?}"),
    }
    assert_eq!(given.state().seats(), 20);
    assert_eq!(given.state().seats_free(), 20);
}

// LIC-2: lowering below users_count removes nobody, and nobody new joins until users_count
// is back under seats.
#[test]
fn lowering_seats_below_users_count_removes_nobody_and_blocks_new_joins_until_back_under() {
    let mut given = Given::license(LicenseType::School, 3);
    given.add(Actor::Staff, &["a@north.edu", "b@north.edu", "c@north.edu"]);
    let decision = given.ok(Actor::Staff, LicenseCommand::ChangeSeats { seats: 1 });
    assert_eq!(types(&decision), ["SeatsChanged"]);
    for member in ["a@north.edu", "b@north.edu", "c@north.edu"] {
        assert_eq!(given.status(member), Some(Status::Accepted));
    }

    // Over seats: an admin batch is refused, a key join waits.
    given.refused(
        Actor::Staff,
        add_by_email(&["new@north.edu"]),
        ErrorKind::ResourceExhausted,
    );
    given.ok(user("waiting@north.edu"), redeem_key());
    assert_eq!(given.status("waiting@north.edu"), Some(Status::Waitlisted));

    // Back to exactly seats: still nothing free, nobody promoted.
    let decision = given.remove(admin(), &["a@north.edu", "b@north.edu"]);
    assert!(promoted(&decision).is_empty());
    assert_eq!(given.state().over_by(), 0);

    // Under seats: the waiting user is promoted at once.
    let decision = given.remove(admin(), &["c@north.edu"]);
    assert_eq!(promoted(&decision), ["waiting@north.edu"]);
}

// LIC-3: the license shows expired once the clock is past valid_until, not at it.
#[test]
fn license_is_expired_only_after_valid_until() {
    let mut given = Given::license(LicenseType::School, 10);
    assert!(!given.state().is_expired(time(VALID_UNTIL)));
    given.at(VALID_UNTIL);
    given.ok(user("last-second@north.edu"), redeem_key());
    assert!(given.state().is_expired(time(AFTER_EXPIRY)));
}

// LIC-3: every admin batch, by email or CSV, by admin or staff, is refused once expired.
#[test]
fn expired_license_refuses_admin_batches() {
    let mut given = Given::license(LicenseType::School, 10);
    given.at(AFTER_EXPIRY);
    for (actor, command) in [
        (admin(), add_by_email(&["a@north.edu"])),
        (Actor::Staff, add_by_email(&["a@north.edu"])),
        (admin(), add_by_csv(&["a@north.edu"])),
    ] {
        let error = given.refused(actor, command, ErrorKind::FailedPrecondition);
        assert!(error.message().contains("license expired"), "{error}");
    }
}

// LIC-3: the key and the link do not work on an expired license.
#[test]
fn expired_license_refuses_key_and_link_joins() {
    let mut given = Given::license(LicenseType::Teacher, 10);
    given.at(AFTER_EXPIRY);
    for command in [redeem_key(), join_via_link()] {
        let error = given.refused(user("a@north.edu"), command, ErrorKind::FailedPrecondition);
        assert!(error.message().contains("license expired"), "{error}");
    }
}

// LIC-3 INV-2: accepting an invite would add a member, so it is refused once expired.
#[test]
fn expired_license_refuses_accepting_an_invite() {
    let mut given = Given::license(LicenseType::School, 10);
    given.add(admin(), &["invitee@south.edu"]);
    given.at(AFTER_EXPIRY);
    let error = given.refused(
        user("invitee@south.edu"),
        LicenseCommand::AcceptInvite,
        ErrorKind::FailedPrecondition,
    );
    assert!(error.message().contains("license expired"), "{error}");
    assert_eq!(given.status("invitee@south.edu"), Some(Status::Invited));
}

// LIC-3: OU sync and the confirmation of a held sync are refused once expired.
#[test]
fn expired_license_refuses_ou_sync_and_confirm_ou_sync() {
    let mut given = district_linked_to_an_ou(10);
    // An empty snapshot is held (OU-8), so there is something to confirm.
    let held = given.ok(Actor::System, LicenseCommand::SyncOu { entries: vec![] });
    assert_eq!(types(&held), ["OuSyncHeld"]);
    given.at(AFTER_EXPIRY);
    let error = given.refused(
        Actor::System,
        LicenseCommand::SyncOu {
            entries: vec![ou_entry("kid@north.edu")],
        },
        ErrorKind::FailedPrecondition,
    );
    assert!(error.message().contains("license expired"), "{error}");
    let error = given.refused(
        admin(),
        LicenseCommand::ConfirmOuSync,
        ErrorKind::FailedPrecondition,
    );
    assert!(error.message().contains("license expired"), "{error}");
}

// LIC-3: a Classroom roster sync is refused once expired.
#[test]
fn expired_license_refuses_roster_sync() {
    let mut given = Given::license(LicenseType::Teacher, 10);
    given.ok(Actor::System, roster(&["before@north.edu"]));
    given.at(AFTER_EXPIRY);
    let error = given.refused(
        Actor::System,
        roster(&["after@north.edu"]),
        ErrorKind::FailedPrecondition,
    );
    assert!(error.message().contains("license expired"), "{error}");
}

// LIC-3: sign-ups skip an expired license instead of failing.
#[test]
fn expired_license_is_skipped_by_sign_ups() {
    let mut given = district_claiming_north_edu(10);
    let before = given
        .when(Actor::System, sign_up("early@north.edu"))
        .unwrap();
    assert_eq!(outcome(&before), &joined(Status::Accepted));
    given.at(AFTER_EXPIRY);
    let after = given.ok(Actor::System, sign_up("late@north.edu"));
    assert!(after.events.is_empty());
    assert_eq!(outcome(&after), &Outcome::Skipped);
    assert_eq!(given.status("late@north.edu"), None);
}

// LIC-3: assignment openings skip an expired license instead of failing.
#[test]
fn expired_license_is_skipped_by_assignment_openings() {
    let mut given = Given::license(LicenseType::Teacher, 10);
    given.add(Actor::Staff, &["teacher@north.edu"]);
    let before = given
        .when(
            Actor::System,
            assignment_opened("teacher@north.edu", "kid@north.edu"),
        )
        .unwrap();
    assert_eq!(outcome(&before), &joined(Status::Accepted));
    given.at(AFTER_EXPIRY);
    let after = given.ok(
        Actor::System,
        assignment_opened("teacher@north.edu", "kid@north.edu"),
    );
    assert!(after.events.is_empty());
    assert_eq!(outcome(&after), &Outcome::Skipped);
}

// LIC-3 REM-1: removals still work on an expired license, but promote nobody.
#[test]
fn expired_license_still_removes_but_promotes_nobody() {
    let mut given = one_seat_with_two_waiting(LicenseType::School);
    given.at(AFTER_EXPIRY);
    let decision = given.remove(admin(), &["holder@north.edu"]);
    assert_eq!(types(&decision), ["UserRemoved"]);
    assert_eq!(outcome(&decision), &removed(1, 0, 0));
    assert_eq!(given.status("first@north.edu"), Some(Status::Waitlisted));
    assert_eq!(given.state().users_count(), 0);
}

// LIC-3 SEAT-4: neither a seat increase nor a rejection promotes while expired; the
// renewal that ends the expiry promotes the waiting users in order.
#[test]
fn waitlisted_users_wait_through_expiry_and_are_promoted_by_the_renewal() {
    let mut given = Given::license(LicenseType::School, 2);
    given.add(Actor::Staff, &["holder@north.edu"]);
    given.add(admin(), &["invitee@south.edu"]);
    given.ok(user("first@north.edu"), redeem_key());
    given.ok(user("second@north.edu"), redeem_key());
    given.at(AFTER_EXPIRY);

    let decision = given.ok(Actor::Staff, LicenseCommand::ChangeSeats { seats: 3 });
    assert_eq!(types(&decision), ["SeatsChanged"]);
    let decision = given.ok(user("invitee@south.edu"), LicenseCommand::RejectInvite);
    assert_eq!(types(&decision), ["InviteRejected"]);
    assert_eq!(waitlist(&given), ["first@north.edu", "second@north.edu"]);

    let decision = given.ok(
        Actor::Staff,
        LicenseCommand::Renew {
            valid_until: time("2028-07-31T23:59:59Z"),
        },
    );
    assert_eq!(
        types(&decision),
        ["LicenseRenewed", "UserPromoted", "UserPromoted"]
    );
    assert_eq!(promoted(&decision), ["first@north.edu", "second@north.edu"]);
}

// LIC-3: adding before valid_from is allowed (deploy ahead of term).
#[test]
fn users_can_be_added_before_valid_from() {
    let mut given = Given::license(LicenseType::School, 10);
    given.at("2026-07-01T00:00:00Z");
    assert!(given.state().valid_from() > given.now);
    given.add(Actor::Staff, &["early@north.edu"]);
    given.add(admin(), &["invitee@south.edu"]);
    given.ok(user("keyholder@north.edu"), redeem_key());
    given.ok(user("invitee@south.edu"), LicenseCommand::AcceptInvite);
    assert_eq!(given.state().counts().accepted, 3);
}

// LIC-4: a license admin grants another, who can then act as one.
#[test]
fn license_admin_grants_an_admin_who_can_then_add_users() {
    let mut given = Given::license(LicenseType::School, 10);
    given.refused(
        user("deputy@north.edu"),
        add_by_email(&["a@north.edu"]),
        ErrorKind::PermissionDenied,
    );
    let decision = given.ok(
        admin(),
        LicenseCommand::GrantAdmin {
            email: email("deputy@north.edu"),
        },
    );
    match decision.events.as_slice() {
        [Event::LicenseAdminGranted(e)] => assert_eq!(e.email, email("deputy@north.edu")),
        other => panic!("expected one LicenseAdminGranted, got {other:?}"),
    }
    assert!(given.state().is_admin(&email("deputy@north.edu")));
    given.ok(user("deputy@north.edu"), add_by_email(&["a@north.edu"]));
    assert_eq!(given.status("a@north.edu"), Some(Status::Invited));
}

// LIC-4: staff grant too; users who are not admins of the license may not.
#[test]
fn staff_grant_admins_and_non_admins_may_not() {
    let mut given = Given::license(LicenseType::School, 10);
    for actor in [user("teacher@north.edu"), Actor::System] {
        given.refused(
            actor,
            LicenseCommand::GrantAdmin {
                email: email("teacher@north.edu"),
            },
            ErrorKind::PermissionDenied,
        );
    }
    given.ok(
        Actor::Staff,
        LicenseCommand::GrantAdmin {
            email: email("teacher@north.edu"),
        },
    );
    assert!(given.state().is_admin(&email("teacher@north.edu")));
}

// LIC-4: a revoked admin loses the role; the last admin cannot be revoked.
#[test]
fn revoked_admin_loses_the_role_and_the_last_admin_cannot_be_revoked() {
    let mut given = Given::license(LicenseType::School, 10);
    given.ok(
        Actor::Staff,
        LicenseCommand::GrantAdmin {
            email: email("deputy@north.edu"),
        },
    );
    let decision = given.ok(
        admin(),
        LicenseCommand::RevokeAdmin {
            email: email("deputy@north.edu"),
        },
    );
    assert_eq!(types(&decision), ["LicenseAdminRevoked"]);
    given.refused(
        user("deputy@north.edu"),
        add_by_email(&["a@north.edu"]),
        ErrorKind::PermissionDenied,
    );
    let error = given.refused(
        Actor::Staff,
        LicenseCommand::RevokeAdmin {
            email: email(ADMIN),
        },
        ErrorKind::FailedPrecondition,
    );
    assert!(error.message().contains("last admin"), "{error}");
    assert!(given.state().is_admin(&email(ADMIN)));
    given.refused(
        user("deputy@north.edu"),
        LicenseCommand::RevokeAdmin {
            email: email(ADMIN),
        },
        ErrorKind::PermissionDenied,
    );
}

// LIC-5: staff grant and revoke domain admins in the domain's own aggregate; a user may be
// domain admin of several domains.
#[test]
fn staff_grant_and_revoke_domain_admins_of_several_domains() {
    let principal = email("principal@north.edu");
    let staff = Context::new(time(NOW), Actor::Staff);
    let meta = EventMeta {
        at: time(NOW),
        actor: Actor::Staff,
    };
    let mut north = EmailDomain::new(domain_name("north.edu"));
    let mut south = EmailDomain::new(domain_name("south.edu"));
    for domain in [&mut north, &mut south] {
        let decision = domain
            .handle(
                &DomainCommand::GrantAdmin {
                    email: principal.clone(),
                },
                &staff,
            )
            .unwrap();
        match decision.events.as_slice() {
            [Event::DomainAdminGranted(e)] => {
                assert_eq!(&e.domain, domain.name());
                assert_eq!(e.email, principal);
            }
            other => panic!("expected one DomainAdminGranted, got {other:?}"),
        }
        for event in &decision.events {
            domain.apply(&meta, event);
        }
    }
    assert!(north.is_admin(&principal) && south.is_admin(&principal));

    // Granting again changes nothing.
    let again = north
        .handle(
            &DomainCommand::GrantAdmin {
                email: principal.clone(),
            },
            &staff,
        )
        .unwrap();
    assert!(again.events.is_empty());

    let decision = north
        .handle(
            &DomainCommand::RevokeAdmin {
                email: principal.clone(),
            },
            &staff,
        )
        .unwrap();
    assert_eq!(types(&decision), ["DomainAdminRevoked"]);
    for event in &decision.events {
        north.apply(&meta, event);
    }
    assert!(!north.is_admin(&principal));
    assert!(south.is_admin(&principal));

    let error = north
        .handle(&DomainCommand::RevokeAdmin { email: principal }, &staff)
        .unwrap_err();
    assert_eq!(error.kind(), ErrorKind::FailedPrecondition);
}

// LIC-5 ERR-1: being a license admin does not make anyone a domain admin, nor may they grant
// it; revoking someone who is no domain admin is PERMISSION_DENIED before FAILED_PRECONDITION.
#[test]
fn only_staff_grant_domain_admins_not_license_admins_or_the_system() {
    let north = EmailDomain::new(domain_name("north.edu"));
    for actor in [admin(), Actor::System, user("principal@north.edu")] {
        for command in [
            DomainCommand::GrantAdmin {
                email: email(ADMIN),
            },
            DomainCommand::RevokeAdmin {
                email: email(ADMIN),
            },
        ] {
            let error = north
                .handle(&command, &Context::new(time(NOW), actor.clone()))
                .unwrap_err();
            assert_eq!(error.kind(), ErrorKind::PermissionDenied, "{actor}");
        }
    }
}

// LIC-6: a rotated key works at once and the old one stops at once.
#[test]
fn rotating_the_key_stops_the_old_key_at_once() {
    let mut given = Given::license(LicenseType::School, 10);
    given.refused(
        user("teacher@north.edu"),
        LicenseCommand::RotateKey {
            key: secret("key-stolen"),
        },
        ErrorKind::PermissionDenied,
    );
    let decision = given.ok(
        admin(),
        LicenseCommand::RotateKey {
            key: secret("key-new"),
        },
    );
    assert_eq!(types(&decision), ["LicenseKeyRotated"]);
    given.refused(user("a@north.edu"), redeem_key(), ErrorKind::NotFound);
    given.ok(
        user("a@north.edu"),
        LicenseCommand::RedeemKey {
            key: secret("key-new"),
        },
    );
    assert_eq!(given.status("a@north.edu"), Some(Status::Accepted));
    // Staff may rotate too.
    given.ok(
        Actor::Staff,
        LicenseCommand::RotateKey {
            key: secret("key-third"),
        },
    );
    given.refused(
        user("b@north.edu"),
        LicenseCommand::RedeemKey {
            key: secret("key-new"),
        },
        ErrorKind::NotFound,
    );
}

// LIC-6 LINK-1: a rotated join link works at once and the old one stops at once; other
// types have no link to rotate.
#[test]
fn rotating_the_join_link_stops_the_old_link_at_once() {
    let mut given = Given::license(LicenseType::Teacher, 10);
    given.refused(
        user("kid@north.edu"),
        LicenseCommand::RotateLink {
            link: secret("link-stolen"),
        },
        ErrorKind::PermissionDenied,
    );
    let decision = given.ok(
        admin(),
        LicenseCommand::RotateLink {
            link: secret("link-new"),
        },
    );
    assert_eq!(types(&decision), ["JoinLinkRotated"]);
    given.refused(user("a@north.edu"), join_via_link(), ErrorKind::NotFound);
    let decision = given.ok(
        user("a@north.edu"),
        LicenseCommand::JoinViaLink {
            token: secret("link-new"),
        },
    );
    assert_eq!(outcome(&decision), &joined(Status::Accepted));

    Given::license(LicenseType::School, 10).refused(
        Actor::Staff,
        LicenseCommand::RotateLink {
            link: secret("link-new"),
        },
        ErrorKind::FailedPrecondition,
    );
}

// LIC-7: feature names are [a-z0-9_]{1,64}, else INVALID_ARGUMENT.
#[test]
fn feature_names_outside_the_pattern_are_invalid_argument() {
    assert!(FeatureName::parse("text_to_speech_2").is_ok());
    assert!(FeatureName::parse(&"f".repeat(64)).is_ok());
    for bad in ["", "Text", "text-to-speech", "with space", &"f".repeat(65)] {
        let error = FeatureName::parse(bad).unwrap_err();
        assert_eq!(error.kind(), ErrorKind::InvalidArgument, "{bad:?}");
    }
}

// LIC-7: a license-wide setting applies at once to every role; a role setting wins over it,
// whichever was set last.
#[test]
fn role_feature_setting_wins_over_the_license_wide_one() {
    let mut given = Given::license(LicenseType::School, 10);
    let speech = FeatureName::parse("text_to_speech").unwrap();
    given.ok(
        admin(),
        LicenseCommand::SetFeature {
            feature: speech.clone(),
            enabled: true,
            role: Some(Role::Student),
        },
    );
    let decision = given.ok(
        Actor::Staff,
        LicenseCommand::SetFeature {
            feature: speech.clone(),
            enabled: false,
            role: None,
        },
    );
    match decision.events.as_slice() {
        [Event::FeaturePermissionSet(e)] => {
            assert_eq!((&e.feature, e.enabled, e.role), (&speech, false, None));
        }
        other => panic!("expected one FeaturePermissionSet, got {other:?}"),
    }
    let state = given.state();
    assert!(state.feature_enabled(&speech, Role::Student));
    assert!(!state.feature_enabled(&speech, Role::Teacher));
    assert!(!state.feature_enabled(&speech, Role::Other));
    assert_eq!(state.features().get(&speech), Some(&false));
    assert_eq!(
        state
            .features_by_role()
            .get(&Role::Student)
            .and_then(|f| f.get(&speech)),
        Some(&true)
    );

    // And the other way round: on for the license, off for teachers.
    given.ok(
        admin(),
        LicenseCommand::SetFeature {
            feature: speech.clone(),
            enabled: true,
            role: None,
        },
    );
    given.ok(
        admin(),
        LicenseCommand::SetFeature {
            feature: speech.clone(),
            enabled: false,
            role: Some(Role::Teacher),
        },
    );
    assert!(given.state().feature_enabled(&speech, Role::Other));
    assert!(!given.state().feature_enabled(&speech, Role::Teacher));
}

// LIC-7: only a license admin or staff set features.
#[test]
fn users_who_are_not_license_admins_cannot_set_features() {
    let given = Given::license(LicenseType::School, 10);
    given.refused(
        user("teacher@north.edu"),
        LicenseCommand::SetFeature {
            feature: FeatureName::parse("text_to_speech").unwrap(),
            enabled: false,
            role: None,
        },
        ErrorKind::PermissionDenied,
    );
}

// ---------------------------------------------------------------------------------------
// §4 Adding users by email
// ---------------------------------------------------------------------------------------

// ADD-1: every license type takes an email batch; the source is the channel used.
#[test]
fn every_license_type_takes_email_batches_with_source_email_or_csv() {
    for license_type in LicenseType::ALL.iter().copied() {
        let mut given = Given::license(license_type, 10);
        let decision = given.add(Actor::Staff, &["a@north.edu", "b@north.edu"]);
        assert_eq!(outcome(&decision), &added((2, 0, 0)), "{license_type}");
        assert_eq!(source_of(&given, "a@north.edu"), Source::Email);
        given.ok(Actor::Staff, add_by_csv(&["c@north.edu"]));
        assert_eq!(source_of(&given, "c@north.edu"), Source::Csv);
    }
}

// ADD-1: only license admins and staff add users.
#[test]
fn users_who_are_not_license_admins_and_the_system_cannot_add_users() {
    let given = Given::license(LicenseType::School, 10).admin_is_domain_admin_of(&["north.edu"]);
    for actor in [user("teacher@north.edu"), Actor::System] {
        given.refused(
            actor,
            add_by_email(&["a@north.edu"]),
            ErrorKind::PermissionDenied,
        );
    }
}

// ADD-2: duplicates in one batch count once, for the answer, the events and the seats.
#[test]
fn duplicates_in_one_batch_count_once() {
    let mut given = Given::license(LicenseType::School, 1);
    let decision = given.add(
        Actor::Staff,
        &["a@north.edu", " A@North.edu", "a@north.edu"],
    );
    assert_eq!(types(&decision), ["UserAdded"]);
    assert_eq!(outcome(&decision), &added((1, 0, 0)));
    assert_eq!(given.state().users_count(), 1);
}

// ADD-3: accepted, invited and waitlisted are unchanged; the answer says so.
#[test]
fn adding_accepted_invited_or_waitlisted_members_is_unchanged() {
    let mut given = Given::license(LicenseType::School, 2);
    given.add(Actor::Staff, &["accepted@north.edu"]);
    given.add(admin(), &["invited@south.edu"]);
    given.ok(user("waiting@north.edu"), redeem_key());
    let decision = given.add(
        Actor::Staff,
        &[
            "accepted@north.edu",
            "invited@south.edu",
            "waiting@north.edu",
        ],
    );
    assert!(decision.events.is_empty());
    assert_eq!(outcome(&decision), &added((0, 0, 3)));
    assert_eq!(given.status("invited@south.edu"), Some(Status::Invited));
    assert_eq!(given.status("waiting@north.edu"), Some(Status::Waitlisted));
}

// ADD-3 INV-4: a rejected or removed member added again starts over, as INV-1 decides.
#[test]
fn adding_a_rejected_or_removed_member_starts_over() {
    let mut given = Given::license(LicenseType::School, 5);
    given.add(admin(), &["rejecter@south.edu"]);
    given.ok(user("rejecter@south.edu"), LicenseCommand::RejectInvite);
    given.add(Actor::Staff, &["leaver@north.edu"]);
    given.remove(admin(), &["leaver@north.edu"]);

    // The admin invites again; staff add at once; the CSV channel becomes the source.
    let by_admin = given.ok(admin(), add_by_csv(&["rejecter@south.edu"]));
    assert_eq!(types(&by_admin), ["InviteSent"]);
    assert_eq!(given.status("rejecter@south.edu"), Some(Status::Invited));
    assert_eq!(source_of(&given, "rejecter@south.edu"), Source::Csv);
    let by_staff = given.add(Actor::Staff, &["leaver@north.edu"]);
    assert_eq!(outcome(&by_staff), &added((1, 0, 0)));
    assert_eq!(given.status("leaver@north.edu"), Some(Status::Accepted));
    assert_eq!(given.state().counts().rejected, 0);
    assert_eq!(given.state().users_count(), 2);
}

// ADD-3 INV-1: a pending invite stays pending when added again, even by an admin who could
// now add the user at once.
#[test]
fn invited_user_added_again_by_a_domain_admin_stays_invited() {
    let mut given = Given::license(LicenseType::School, 5);
    given.add(admin(), &["teacher@north.edu"]);
    // Later, the admin is made domain admin of north.edu.
    let mut given = given.admin_is_domain_admin_of(&["north.edu"]);
    let decision = given.add(admin(), &["teacher@north.edu"]);
    assert!(decision.events.is_empty());
    assert_eq!(outcome(&decision), &added((0, 0, 1)));
    assert_eq!(given.status("teacher@north.edu"), Some(Status::Invited));
}

// ---------------------------------------------------------------------------------------
// §5 Invites
// ---------------------------------------------------------------------------------------

// INV-1: staff adds are always at once.
#[test]
fn staff_adds_are_accepted_at_once() {
    let mut given = Given::license(LicenseType::School, 10);
    let decision = given.add(Actor::Staff, &["a@north.edu", "b@south.edu"]);
    assert_eq!(types(&decision), ["UserAdded", "UserAdded"]);
    assert_eq!(given.status("b@south.edu"), Some(Status::Accepted));
    assert_eq!(role_of(&given, "b@south.edu"), Role::Other);
    assert_eq!(
        given
            .state()
            .member(&email("b@south.edu"))
            .unwrap()
            .added_by,
        Actor::Staff
    );
}

// INV-1: a license admin who is domain admin of the user's domain adds at once, and
// invites everyone else (other domains, and subdomains, which are not the domain).
#[test]
fn license_admin_who_is_domain_admin_adds_their_domain_at_once_and_invites_others() {
    let mut given =
        Given::license(LicenseType::School, 10).admin_is_domain_admin_of(&["north.edu"]);
    let decision = given.add(
        admin(),
        &["own@north.edu", "other@south.edu", "sub@east.north.edu"],
    );
    assert_eq!(types(&decision), ["UserAdded", "InviteSent", "InviteSent"]);
    assert_eq!(outcome(&decision), &added((1, 2, 0)));
    assert_eq!(given.status("own@north.edu"), Some(Status::Accepted));
    assert_eq!(given.status("other@south.edu"), Some(Status::Invited));
    assert_eq!(given.status("sub@east.north.edu"), Some(Status::Invited));
    match &decision.events[1] {
        Event::InviteSent(e) => {
            assert_eq!(e.email, email("other@south.edu"));
            assert_eq!((e.source, e.role), (Source::Email, Role::Other));
        }
        other => panic!("expected InviteSent, got {other:?}"),
    }
}

// INV-1: being a license admin alone is not being a domain admin: even users of the
// admin's own domain are invited.
#[test]
fn license_admin_who_is_not_a_domain_admin_invites_even_their_own_domain() {
    let mut given = Given::license(LicenseType::School, 10);
    let decision = given.add(admin(), &["colleague@north.edu"]);
    assert_eq!(types(&decision), ["InviteSent"]);
    assert_eq!(outcome(&decision), &added((0, 1, 0)));
    assert_eq!(given.status("colleague@north.edu"), Some(Status::Invited));
    // An invite holds a seat (SEAT-1).
    assert_eq!(given.state().users_count(), 1);
}

// INV-2: the invitee accepts; the source stays the one they were invited by.
#[test]
fn invitee_accepts_and_keeps_the_source() {
    let mut given = Given::license(LicenseType::School, 10);
    given.ok(admin(), add_by_csv(&["invitee@south.edu"]));
    let decision = given.ok(user("invitee@south.edu"), LicenseCommand::AcceptInvite);
    match decision.events.as_slice() {
        [Event::InviteAccepted(e)] => assert_eq!(e.email, email("invitee@south.edu")),
        other => panic!("expected one InviteAccepted, got {other:?}"),
    }
    assert_eq!(given.status("invitee@south.edu"), Some(Status::Accepted));
    assert_eq!(source_of(&given, "invitee@south.edu"), Source::Csv);
    assert_eq!(given.state().users_count(), 1);
}

// INV-2 SEAT-2: the invitee rejects; the source stays and the seat is freed.
#[test]
fn invitee_rejects_keeps_the_source_and_frees_the_seat() {
    let mut given = Given::license(LicenseType::School, 10);
    given.add(admin(), &["invitee@south.edu"]);
    let decision = given.ok(user("invitee@south.edu"), LicenseCommand::RejectInvite);
    assert_eq!(types(&decision), ["InviteRejected"]);
    assert_eq!(given.status("invitee@south.edu"), Some(Status::Rejected));
    assert_eq!(source_of(&given, "invitee@south.edu"), Source::Email);
    assert_eq!(given.state().users_count(), 0);
    assert_eq!(given.state().seats_free(), 10);
}

// INV-2: only the invitee answers; anyone else has no pending invite of their own.
#[test]
fn nobody_but_the_invitee_can_answer_the_invite() {
    let mut given = Given::license(LicenseType::School, 10);
    given.add(admin(), &["invitee@south.edu"]);
    for answer in [LicenseCommand::AcceptInvite, LicenseCommand::RejectInvite] {
        given.refused(
            user("someone-else@south.edu"),
            answer.clone(),
            ErrorKind::FailedPrecondition,
        );
        given.refused(admin(), answer.clone(), ErrorKind::FailedPrecondition);
        for actor in [Actor::Staff, Actor::System] {
            given.refused(actor, answer.clone(), ErrorKind::PermissionDenied);
        }
    }
    assert_eq!(given.status("invitee@south.edu"), Some(Status::Invited));
}

// INV-2: answered, never invited or removed: no pending invite, FAILED_PRECONDITION.
#[test]
fn answering_without_a_pending_invite_is_failed_precondition() {
    let mut given = Given::license(LicenseType::School, 10);
    given.add(
        admin(),
        &["accepter@south.edu", "rejecter@south.edu", "gone@south.edu"],
    );
    given.ok(user("accepter@south.edu"), LicenseCommand::AcceptInvite);
    given.ok(user("rejecter@south.edu"), LicenseCommand::RejectInvite);
    given.remove(admin(), &["gone@south.edu"]);
    given.add(Actor::Staff, &["direct@north.edu"]);
    for who in [
        "accepter@south.edu",
        "rejecter@south.edu",
        "gone@south.edu",
        "never@south.edu",
        "direct@north.edu",
    ] {
        for answer in [LicenseCommand::AcceptInvite, LicenseCommand::RejectInvite] {
            given.refused(user(who), answer, ErrorKind::FailedPrecondition);
        }
    }
}

// INV-3: the state that backs `ListMyInvites`: a pending invite stays pending through
// other decisions until its user answers, so a closed pop-up can be reopened.
#[test]
fn pending_invite_stays_listed_until_answered() {
    let mut given = Given::license(LicenseType::School, 10);
    given.add(admin(), &["invitee@south.edu"]);
    given.add(Actor::Staff, &["other@north.edu"]);
    given.ok(user("keyholder@north.edu"), redeem_key());
    let pending = |given: &Given| -> Vec<String> {
        given
            .state()
            .members()
            .filter(|(_, member)| member.status == Status::Invited)
            .map(|(email, _)| email.to_string())
            .collect()
    };
    assert_eq!(pending(&given), ["invitee@south.edu"]);
    given.ok(user("invitee@south.edu"), LicenseCommand::AcceptInvite);
    assert!(pending(&given).is_empty());
}

// INV-4: a rejected user stays rejected when an automatic source meets them; only an
// admin's new add or the key makes them pending or accepted again.
#[test]
fn rejected_user_is_left_alone_by_automatic_sources_but_not_by_admins_or_the_key() {
    let mut given = Given::license(LicenseType::Teacher, 10);
    given.add(admin(), &["kid@south.edu", "other@south.edu"]);
    given.ok(user("kid@south.edu"), LicenseCommand::RejectInvite);
    given.ok(user("other@south.edu"), LicenseCommand::RejectInvite);

    let by_roster = given.ok(Actor::System, roster(&["kid@south.edu"]));
    assert!(by_roster.events.is_empty());
    assert_eq!(given.status("kid@south.edu"), Some(Status::Rejected));

    given.add(admin(), &["kid@south.edu"]);
    assert_eq!(given.status("kid@south.edu"), Some(Status::Invited));

    let by_key = given.ok(user("other@south.edu"), redeem_key());
    assert_eq!(types(&by_key), ["UserAdded"]);
    assert_eq!(given.status("other@south.edu"), Some(Status::Accepted));
    assert_eq!(source_of(&given, "other@south.edu"), Source::Key);
}

// ---------------------------------------------------------------------------------------
// §6 License key and link
// ---------------------------------------------------------------------------------------

// KEY-1: a new user joins at once with source key.
#[test]
fn key_adds_a_new_user_at_once_with_source_key() {
    let mut given = Given::license(LicenseType::School, 10);
    let decision = given.ok(user("new@north.edu"), redeem_key());
    assert_eq!(outcome(&decision), &joined(Status::Accepted));
    match decision.events.as_slice() {
        [Event::UserAdded(e)] => {
            assert_eq!(e.email, email("new@north.edu"));
            assert_eq!((e.source, e.role), (Source::Key, Role::Other));
            assert_eq!(e.ou_path, None);
        }
        other => panic!("expected one UserAdded, got {other:?}"),
    }
    assert_eq!(given.state().counts().accepted, 1);
}

// KEY-1: an invitee joins at once by key, using the seat the invite already holds, even on
// a full license.
#[test]
fn key_accepts_an_invitee_on_a_full_license() {
    let mut given = Given::license(LicenseType::School, 1);
    given.add(admin(), &["invitee@south.edu"]);
    let decision = given.ok(user("invitee@south.edu"), redeem_key());
    assert_eq!(outcome(&decision), &joined(Status::Accepted));
    assert_eq!(given.status("invitee@south.edu"), Some(Status::Accepted));
    assert_eq!(given.state().users_count(), 1);
    assert_eq!(given.state().counts().invited, 0);
}

// KEY-1 INV-4: a rejected user joins at once by key; an accepted one is unchanged.
#[test]
fn key_accepts_a_rejected_user_and_leaves_an_accepted_one_unchanged() {
    let mut given = Given::license(LicenseType::School, 10);
    given.add(admin(), &["rejecter@south.edu"]);
    given.ok(user("rejecter@south.edu"), LicenseCommand::RejectInvite);
    given.ok(user("rejecter@south.edu"), redeem_key());
    assert_eq!(given.status("rejecter@south.edu"), Some(Status::Accepted));

    let again = given.ok(user("rejecter@south.edu"), redeem_key());
    assert!(again.events.is_empty());
    assert_eq!(outcome(&again), &joined(Status::Accepted));
    assert_eq!(given.state().users_count(), 1);
}

// KEY-1 SEAT-4: a rejected user redeeming the key of a full license waits.
#[test]
fn key_waitlists_a_rejected_user_when_no_seat_is_free() {
    let mut given = Given::license(LicenseType::School, 1);
    given.add(admin(), &["rejecter@south.edu"]);
    given.ok(user("rejecter@south.edu"), LicenseCommand::RejectInvite);
    given.add(Actor::Staff, &["holder@north.edu"]);
    let decision = given.ok(user("rejecter@south.edu"), redeem_key());
    assert_eq!(types(&decision), ["UserWaitlisted"]);
    assert_eq!(given.status("rejecter@south.edu"), Some(Status::Waitlisted));
    assert_eq!(source_of(&given, "rejecter@south.edu"), Source::Key);
    assert_eq!(given.state().counts().rejected, 0);
}

// KEY-1: a wrong key is NOT_FOUND and names no license.
#[test]
fn wrong_key_is_not_found_and_names_no_license() {
    let given = Given::license(LicenseType::School, 10);
    for wrong in [
        Secret::presented("key-one"),
        Secret::presented(""),
        secret("link-one"),
    ] {
        let error = given.refused(
            user("guesser@north.edu"),
            LicenseCommand::RedeemKey { key: wrong },
            ErrorKind::NotFound,
        );
        assert!(!error.message().contains("L1"), "{error}");
    }
}

// KEY-1 LIC-3: the right key of an expired license is FAILED_PRECONDITION.
#[test]
fn right_key_of_an_expired_license_is_failed_precondition() {
    let mut given = Given::license(LicenseType::Work, 10);
    given.at(AFTER_EXPIRY);
    given.refused(
        user("late@north.edu"),
        redeem_key(),
        ErrorKind::FailedPrecondition,
    );
    // A wrong key stays NOT_FOUND: expiry does not reveal the license either.
    given.refused(
        user("late@north.edu"),
        LicenseCommand::RedeemKey {
            key: secret("key-wrong"),
        },
        ErrorKind::NotFound,
    );
}

// KEY-1: every type of license has a key that works.
#[test]
fn every_license_type_has_a_working_key() {
    for license_type in LicenseType::ALL.iter().copied() {
        let mut given = Given::license(license_type, 10);
        let decision = given.ok(user("a@north.edu"), redeem_key());
        assert_eq!(
            outcome(&decision),
            &joined(Status::Accepted),
            "{license_type}"
        );
    }
}

// KEY-1: the key is for users joining themselves; staff and the system are not users.
#[test]
fn staff_and_system_cannot_redeem_a_key_for_themselves() {
    let given = Given::license(LicenseType::School, 10);
    for actor in [Actor::Staff, Actor::System] {
        given.refused(actor, redeem_key(), ErrorKind::PermissionDenied);
    }
}

// LINK-1: the teacher link joins like the key, with source link.
#[test]
fn teacher_join_link_adds_a_user_at_once_with_source_link() {
    let mut given = Given::license(LicenseType::Teacher, 10);
    let decision = given.ok(user("kid@north.edu"), join_via_link());
    assert_eq!(outcome(&decision), &joined(Status::Accepted));
    assert_eq!(source_of(&given, "kid@north.edu"), Source::Link);
    // The key is not a link token, nor the token a key.
    given.refused(
        user("other@north.edu"),
        LicenseCommand::JoinViaLink {
            token: secret("key-one"),
        },
        ErrorKind::NotFound,
    );
}

// LINK-1: other types have no token, so no link reaches them, not even the one issue was
// given.
#[test]
fn non_teacher_licenses_have_no_join_link() {
    for license_type in LicenseType::ALL
        .iter()
        .copied()
        .filter(|t| *t != LicenseType::Teacher)
    {
        let given = Given::license(license_type, 10);
        assert!(given.state().link().is_none(), "{license_type}");
        given.refused(user("kid@north.edu"), join_via_link(), ErrorKind::NotFound);
    }
}

// ---------------------------------------------------------------------------------------
// §10 Removing users
// ---------------------------------------------------------------------------------------

// REM-1: removing a domain member is allowed and counted as will_return.
#[test]
fn removing_domain_members_counts_them_as_will_return() {
    let mut given = district_claiming_north_edu(10);
    given.ok(Actor::System, sign_up("signed-up@north.edu"));
    given.add(Actor::Staff, &["by-email@north.edu"]);
    let decision = given.remove(
        admin(),
        &[
            "signed-up@north.edu",
            "by-email@north.edu",
            "nobody@north.edu",
        ],
    );
    assert_eq!(outcome(&decision), &removed(2, 1, 1));
    assert_eq!(types(&decision), ["UserRemoved", "UserRemoved"]);
    assert_eq!(given.status("signed-up@north.edu"), None);
}

// REM-1: removing an OU member is allowed and counted as will_return, whatever the status.
#[test]
fn removing_ou_members_counts_them_as_will_return() {
    let mut given = district_linked_to_an_ou(1);
    given.ok(
        Actor::System,
        LicenseCommand::SyncOu {
            entries: vec![ou_entry("kid1@north.edu"), ou_entry("kid2@north.edu")],
        },
    );
    assert_eq!(given.status("kid2@north.edu"), Some(Status::Waitlisted));
    let decision = given.remove(
        Actor::Staff,
        &["kid1@north.edu", "kid2@north.edu", "nobody@north.edu"],
    );
    assert_eq!(outcome(&decision), &removed(2, 1, 2));
    match decision.events.as_slice() {
        [Event::UserRemoved(a), Event::UserRemoved(b)] => {
            assert_eq!(a.reason, RemovalReason::ByAdmin);
            assert_eq!(b.reason, RemovalReason::ByAdmin);
        }
        other => panic!("expected two UserRemoved, got {other:?}"),
    }
    assert_eq!(given.state().users_count(), 0);
}

// REM-1: every status can be removed, each once even if listed twice; only admins and
// staff remove.
#[test]
fn admin_removes_members_of_every_status_and_others_may_not() {
    let mut given = Given::license(LicenseType::School, 3);
    given.add(Actor::Staff, &["accepted@north.edu"]);
    given.add(admin(), &["invited@south.edu", "rejected@south.edu"]);
    given.ok(user("rejected@south.edu"), LicenseCommand::RejectInvite);
    given.add(Actor::Staff, &["filler@north.edu"]);
    given.ok(user("waiting@north.edu"), redeem_key());
    given.ok(user("waiting2@north.edu"), redeem_key());
    given.refused(
        user("accepted@north.edu"),
        remove(&["invited@south.edu"]),
        ErrorKind::PermissionDenied,
    );
    let decision = given.remove(
        admin(),
        &[
            "accepted@north.edu",
            "invited@south.edu",
            "rejected@south.edu",
            "waiting@north.edu",
            "accepted@north.edu",
        ],
    );
    assert_eq!(outcome(&decision), &removed(4, 0, 0));
    // Two seats freed, one user left waiting: promoted in the same decision (REM-2).
    assert_eq!(promoted(&decision), ["waiting2@north.edu"]);
    let counts = given.state().counts();
    assert_eq!(
        (
            counts.accepted,
            counts.invited,
            counts.rejected,
            counts.waitlisted
        ),
        (2, 0, 0, 0)
    );
    assert_eq!(given.state().seats_free(), 1);
}

// ---------------------------------------------------------------------------------------
// §13 Errors
// ---------------------------------------------------------------------------------------

// ERR-1: INVALID_ARGUMENT comes before PERMISSION_DENIED, NOT_FOUND and ALREADY_EXISTS.
#[test]
fn invalid_seats_are_invalid_argument_whoever_asks_and_whatever_the_license() {
    let issued = Given::license(LicenseType::School, 10);
    // A second issue of L1 by a non-staff actor with bad seats: three refusals apply.
    let mut bad_issue = issue(LicenseType::School, 0, VALID_FROM, VALID_UNTIL);
    if let LicenseCommand::Issue { license, .. } = &mut bad_issue {
        *license = LicenseId::parse("L1").unwrap();
    }
    issued.refused(admin(), bad_issue, ErrorKind::InvalidArgument);
    issued.refused(
        admin(),
        LicenseCommand::ChangeSeats { seats: 0 },
        ErrorKind::InvalidArgument,
    );
    nothing_issued().refused(
        user("stranger@north.edu"),
        LicenseCommand::ChangeSeats { seats: 10_000_001 },
        ErrorKind::InvalidArgument,
    );
}

// ERR-1: NOT_FOUND comes before PERMISSION_DENIED.
#[test]
fn unknown_license_is_not_found_before_permission_is_checked() {
    let nothing = nothing_issued();
    nothing.refused(
        user("stranger@north.edu"),
        LicenseCommand::ChangeSeats { seats: 5 },
        ErrorKind::NotFound,
    );
    // A wrong key by staff, who may not redeem at all, is still NOT_FOUND.
    Given::license(LicenseType::School, 10).refused(
        Actor::Staff,
        LicenseCommand::RedeemKey {
            key: secret("key-wrong"),
        },
        ErrorKind::NotFound,
    );
}

// ERR-1: PERMISSION_DENIED comes before FAILED_PRECONDITION and ALREADY_EXISTS.
#[test]
fn permission_is_checked_before_preconditions_and_existence() {
    let mut given = Given::license(LicenseType::School, 10);
    // Not later, and not staff.
    given.refused(
        admin(),
        LicenseCommand::Renew {
            valid_until: time(VALID_FROM),
        },
        ErrorKind::PermissionDenied,
    );
    // Issue of an existing id by a non-staff actor.
    let mut existing = issue(LicenseType::School, 10, VALID_FROM, VALID_UNTIL);
    if let LicenseCommand::Issue { license, .. } = &mut existing {
        *license = LicenseId::parse("L1").unwrap();
    }
    given.refused(admin(), existing, ErrorKind::PermissionDenied);
    // Expired, and the actor is no admin / not a user.
    given.at(AFTER_EXPIRY);
    given.refused(
        user("stranger@north.edu"),
        add_by_email(&["a@north.edu"]),
        ErrorKind::PermissionDenied,
    );
    given.refused(
        Actor::Staff,
        LicenseCommand::AcceptInvite,
        ErrorKind::PermissionDenied,
    );
    given.refused(Actor::Staff, redeem_key(), ErrorKind::PermissionDenied);
}

// ERR-1: FAILED_PRECONDITION comes before RESOURCE_EXHAUSTED.
#[test]
fn expiry_is_reported_before_a_lack_of_seats() {
    let mut given = Given::license(LicenseType::School, 1);
    given.add(Actor::Staff, &["holder@north.edu"]);
    given.at(AFTER_EXPIRY);
    given.refused(
        Actor::Staff,
        add_by_email(&["a@north.edu", "b@north.edu"]),
        ErrorKind::FailedPrecondition,
    );
}

// ERR-1: a refused command appends nothing. `when` gives an error instead of a decision,
// so there are no events to append, and the state is the one before.
#[test]
fn refused_command_leaves_the_state_as_it_was() {
    let mut given = Given::license(LicenseType::School, 2);
    given.add(Actor::Staff, &["a@north.edu"]);
    let before = given.state().clone();
    let refusal = given.when(admin(), add_by_email(&["b@north.edu", "c@north.edu"]));
    assert!(refusal.is_err());
    assert_eq!(given.state(), &before);
    assert_eq!(given.history.len(), 2);
}

// ERR-2: an authenticated actor without the role is PERMISSION_DENIED; an unknown license
// is NOT_FOUND, for every kind of command.
#[test]
fn unknown_license_is_not_found_and_missing_role_is_permission_denied() {
    let nothing = nothing_issued();
    for command in [
        add_by_email(&["a@north.edu"]),
        remove(&["a@north.edu"]),
        redeem_key(),
        LicenseCommand::AcceptInvite,
        LicenseCommand::Renew {
            valid_until: time("2028-01-01T00:00:00Z"),
        },
    ] {
        nothing.refused(Actor::Staff, command, ErrorKind::NotFound);
    }
    let given = Given::license(LicenseType::School, 10);
    for command in [
        add_by_email(&["a@north.edu"]),
        remove(&["a@north.edu"]),
        LicenseCommand::RotateKey {
            key: secret("key-new"),
        },
        LicenseCommand::GrantAdmin {
            email: email("a@north.edu"),
        },
    ] {
        given.refused(
            user("stranger@north.edu"),
            command,
            ErrorKind::PermissionDenied,
        );
    }
}

// SEAT-1: the answer of a decision and the state its events give agree.
#[test]
fn applied_events_give_the_counts_the_answer_described() {
    let mut given = Given::license(LicenseType::School, 5).admin_is_domain_admin_of(&["north.edu"]);
    let decision = given.add(
        admin(),
        &["a@north.edu", "b@north.edu", "c@south.edu", "d@south.edu"],
    );
    let Outcome::UsersAdded(summary) = outcome(&decision) else {
        panic!("expected UsersAdded, got {decision:?}");
    };
    let counts = given.state().counts();
    assert_eq!(
        (counts.accepted, counts.invited),
        (summary.added, summary.invited)
    );
    assert_eq!((summary.added, summary.invited), (2, 2));
    assert_eq!(given.state().seats_free(), 1);

    let decision = given.remove(admin(), &["a@north.edu", "c@south.edu"]);
    let Outcome::UsersRemoved(summary) = outcome(&decision) else {
        panic!("expected UsersRemoved, got {decision:?}");
    };
    assert_eq!(summary.removed, 2);
    assert_eq!(given.state().users_count(), 4 - summary.removed);
    assert_eq!(given.state().seats_free(), 3);
    assert_eq!(
        given.state().members().count(),
        2,
        "removed members are no longer members"
    );
}
