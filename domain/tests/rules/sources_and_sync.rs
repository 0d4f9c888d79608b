//! SPEC §7 (Google Workspace OU sync), §8 (domain-wide deployment), §9 (LMS auto-enrollment
//! and roster sync) and SEAT-4 as the automatic sources meet it, as given/when/then tests of
//! the license and email-domain aggregates.

use crate::support::*;

use domain::events::{Event, EventMeta, OuEntry, OuSyncCounts, RemovalReason};
use domain::{
    Actor, AutomaticSummary, Context, Decision, DomainCommand, EmailDomain, ErrorKind,
    LicenseCommand, LicenseId, LicenseType, Lms, OuPath, Outcome, Role, ScannedAccount, Source,
    Status,
};

/// The first second after `VALID_UNTIL`: the default license is expired from here on.
const AFTER_EXPIRY: &str = "2027-08-01T00:00:00Z";
/// The OU every linked license in this file syncs.
const STUDENTS_OU: &str = "/Students";

// ---------------------------------------------------------------------------------------
// Small helpers of this file.
// ---------------------------------------------------------------------------------------

fn admin() -> Actor {
    user(ADMIN)
}

fn ou(path: &str) -> OuPath {
    OuPath::parse(path).expect("test OU paths are valid")
}

fn entry(raw_email: &str, path: &str, role: Role, suspended: bool) -> OuEntry {
    OuEntry {
        email: email(raw_email),
        ou_path: ou(path),
        role,
        suspended,
    }
}

/// An active student of the linked OU.
fn active(raw_email: &str) -> OuEntry {
    entry(raw_email, STUDENTS_OU, Role::Student, false)
}

/// A suspended account of the linked OU.
fn suspended(raw_email: &str) -> OuEntry {
    entry(raw_email, STUDENTS_OU, Role::Student, true)
}

fn actives(raw: &[String]) -> Vec<OuEntry> {
    raw.iter().map(|e| active(e)).collect()
}

/// `count` distinct emails `<prefix><n>@north.edu`.
fn people(prefix: &str, count: usize) -> Vec<String> {
    (0..count)
        .map(|n| format!("{prefix}{n}@north.edu"))
        .collect()
}

fn link_ou(paths: &[&str], google_admin: bool) -> LicenseCommand {
    LicenseCommand::LinkOu {
        ou_paths: paths.iter().map(|p| ou(p)).collect(),
        google_admin,
    }
}

fn sync_ou(entries: Vec<OuEntry>) -> LicenseCommand {
    LicenseCommand::SyncOu { entries }
}

fn claim(raw_domain: &str, dedicated: bool) -> LicenseCommand {
    LicenseCommand::ClaimDomain {
        domain: domain_name(raw_domain),
        dedicated,
    }
}

fn release(raw_domain: &str) -> LicenseCommand {
    LicenseCommand::ReleaseDomain {
        domain: domain_name(raw_domain),
    }
}

fn sign_up(raw_email: &str, role: Role) -> LicenseCommand {
    LicenseCommand::SignUp {
        email: email(raw_email),
        role,
    }
}

fn scan(raw_domain: &str, accounts: &[(&str, Role)]) -> LicenseCommand {
    LicenseCommand::ScanDomain {
        domain: domain_name(raw_domain),
        accounts: accounts
            .iter()
            .map(|(raw, role)| ScannedAccount {
                email: email(raw),
                role: *role,
            })
            .collect(),
    }
}

fn assignment(teacher: &str, student: &str, kami_assignment: bool) -> LicenseCommand {
    LicenseCommand::AssignmentOpened {
        teacher: email(teacher),
        student: email(student),
        lms: Lms::GoogleClassroom,
        kami_assignment,
    }
}

fn roster(students: &[&str]) -> LicenseCommand {
    LicenseCommand::SyncRoster {
        course: "course-7a".into(),
        students: emails(students),
    }
}

fn set_auto_enrollment(enabled: bool) -> LicenseCommand {
    LicenseCommand::SetAutoEnrollment { enabled }
}

/// A district license of 1,000 seats linked to `STUDENTS_OU` by its attested admin.
fn linked_district() -> Given {
    linked_district_with_seats(1_000)
}

fn linked_district_with_seats(seats: u32) -> Given {
    let mut given = Given::license(LicenseType::District, seats);
    given.ok(admin(), link_ou(&[STUDENTS_OU], true));
    given
}

/// A linked district whose OU already brought these people in as `ou` members.
fn district_with_ou_members(members: &[String]) -> Given {
    let mut given = linked_district();
    given.ok(Actor::System, sync_ou(actives(members)));
    given
}

/// A district license of the given seats that claims `north.edu`.
fn claiming_district(seats: u32) -> Given {
    let mut given = Given::license(LicenseType::District, seats);
    given.ok(Actor::Staff, claim("north.edu", false));
    given
}

/// A teacher license with `teacher@north.edu` accepted on it (staff add at once, INV-1).
fn teacher_license(seats: u32) -> Given {
    let mut given = Given::license(LicenseType::Teacher, seats);
    given.add(Actor::Staff, &["teacher@north.edu"]);
    given
}

/// Each event of a decision as (type name, the member it is about, or "").
fn about(decision: &Decision) -> Vec<(&'static str, String)> {
    decision
        .events
        .iter()
        .map(|event| {
            let who = event
                .member_email()
                .map(|e| e.as_str().to_owned())
                .unwrap_or_default();
            (event.type_name(), who)
        })
        .collect()
}

fn ev(type_name: &'static str, who: &str) -> (&'static str, String) {
    (type_name, who.to_owned())
}

/// The counts and the held flag of an OU sync's answer.
fn ou_answer(decision: &Decision) -> (OuSyncCounts, bool) {
    match outcome(decision) {
        Outcome::OuSync { counts, held } => (*counts, *held),
        other => panic!("expected an OU sync answer, got {other:?}"),
    }
}

/// The counts of the single `OuSynced` event of a decision.
fn ou_synced_counts(decision: &Decision) -> OuSyncCounts {
    let synced: Vec<OuSyncCounts> = decision
        .events
        .iter()
        .filter_map(|event| match event {
            Event::OuSynced(e) => Some(e.counts),
            _ => None,
        })
        .collect();
    assert_eq!(synced.len(), 1, "one OuSynced event: {:?}", types(decision));
    synced[0]
}

fn counts(added: u64, removed: u64, readded: u64, skipped_suspended: u64) -> OuSyncCounts {
    OuSyncCounts {
        added,
        removed,
        readded,
        skipped_suspended,
        waitlisted: 0,
    }
}

fn automatic(added: u64, waitlisted: u64, unchanged: u64) -> Outcome {
    Outcome::Automatic(AutomaticSummary {
        added,
        waitlisted,
        unchanged,
    })
}

/// A member's (status, source, role), for one-line assertions.
fn standing(given: &Given, raw_email: &str) -> Option<(Status, Source, Role)> {
    given
        .state()
        .member(&email(raw_email))
        .map(|m| (m.status, m.source, m.role))
}

/// The OU path a decision recorded for a member it added (the aggregate does not keep it:
/// the projections show it).
fn ou_path_of(decision: &Decision, raw_email: &str) -> Option<String> {
    decision.events.iter().find_map(|event| match event {
        Event::UserAdded(e) if e.email.as_str() == raw_email => {
            e.ou_path.as_ref().map(|p| p.as_str().to_owned())
        }
        _ => None,
    })
}

fn removal_reasons(decision: &Decision) -> Vec<RemovalReason> {
    decision
        .events
        .iter()
        .filter_map(|event| match event {
            Event::UserRemoved(e) => Some(e.reason),
            _ => None,
        })
        .collect()
}

fn waitlist(given: &Given) -> Vec<String> {
    given
        .state()
        .waitlist()
        .map(|e| e.as_str().to_owned())
        .collect()
}

// ---------------------------------------------------------------------------------------
// OU-1: which licenses and which actors may link an OU.
// ---------------------------------------------------------------------------------------

#[test]
fn an_attested_license_admin_links_ous_on_district_school_and_building_licenses() {
    // OU-1
    for license_type in [
        LicenseType::District,
        LicenseType::School,
        LicenseType::Building,
    ] {
        let mut given = Given::license(license_type, 10);
        let decision = given.ok(admin(), link_ou(&["/Students", "/Staff"], true));
        match decision.events.as_slice() {
            [Event::OuLinked(linked)] => assert_eq!(
                linked.ou_paths,
                vec![ou("/Students"), ou("/Staff")],
                "{license_type}"
            ),
            other => panic!("{license_type}: expected one OuLinked, got {other:?}"),
        }
        assert_eq!(
            given.state().ou_paths(),
            &[ou("/Students"), ou("/Staff")],
            "{license_type}"
        );
    }
}

#[test]
fn linking_on_teacher_pro_and_work_licenses_is_failed_precondition() {
    // OU-1
    for license_type in [LicenseType::Teacher, LicenseType::Pro, LicenseType::Work] {
        let given = Given::license(license_type, 10);
        given.refused(
            admin(),
            link_ou(&["/Students"], true),
            ErrorKind::FailedPrecondition,
        );
    }
}

#[test]
fn linking_without_the_google_admin_attestation_is_permission_denied() {
    // OU-1: a license admin alone is not enough; the integration must vouch that the caller
    // administers the Google workspace.
    let given = Given::license(LicenseType::District, 10);
    given.refused(
        admin(),
        link_ou(&["/Students"], false),
        ErrorKind::PermissionDenied,
    );
    assert!(given.state().ou_paths().is_empty());
}

#[test]
fn a_google_admin_who_is_not_a_license_admin_cannot_link() {
    // OU-1
    let given = Given::license(LicenseType::District, 10);
    given.refused(
        user("it@north.edu"),
        link_ou(&["/Students"], true),
        ErrorKind::PermissionDenied,
    );
    given.refused(
        Actor::System,
        link_ou(&["/Students"], true),
        ErrorKind::PermissionDenied,
    );
}

#[test]
fn staff_are_not_license_admins_and_cannot_link_an_ou() {
    // OU-1: "needs an actor who is a license admin" with a Google-admin attestation of the
    // customer's workspace. Where SPEC lets staff act too it says "a license admin or staff"
    // (LIC-4, LIC-6, LIC-7, REM-1); here it does not.
    let given = Given::license(LicenseType::District, 10);
    given.refused(
        Actor::Staff,
        link_ou(&["/Students"], true),
        ErrorKind::PermissionDenied,
    );
}

#[test]
fn an_unattested_admin_linking_a_teacher_license_is_permission_denied_before_failed_precondition() {
    // OU-1, ERR-1: PERMISSION_DENIED ranks before FAILED_PRECONDITION.
    let given = Given::license(LicenseType::Teacher, 10);
    given.refused(
        admin(),
        link_ou(&["/Students"], false),
        ErrorKind::PermissionDenied,
    );
    // ... and a stranger with an attestation is refused for who they are, not for the type.
    given.refused(
        user("it@north.edu"),
        link_ou(&["/Students"], true),
        ErrorKind::PermissionDenied,
    );
}

#[test]
fn linking_more_paths_adds_only_the_new_ones() {
    // OU-1: a license may link several OUs; linking one again changes nothing.
    let mut given = linked_district();
    let again = given.ok(admin(), link_ou(&[STUDENTS_OU], true));
    assert!(again.events.is_empty(), "{:?}", types(&again));
    let more = given.ok(admin(), link_ou(&[STUDENTS_OU, "/Teachers"], true));
    match more.events.as_slice() {
        [Event::OuLinked(linked)] => assert_eq!(linked.ou_paths, vec![ou("/Teachers")]),
        other => panic!("expected one OuLinked, got {other:?}"),
    }
    assert_eq!(
        given.state().ou_paths(),
        &[ou(STUDENTS_OU), ou("/Teachers")]
    );
}

// ---------------------------------------------------------------------------------------
// OU-2: an OU link and a domain claim exclude each other; OU commands need a link.
// ---------------------------------------------------------------------------------------

#[test]
fn linking_an_ou_while_a_domain_is_claimed_is_failed_precondition() {
    // OU-2
    let given = claiming_district(10);
    given.refused(
        admin(),
        link_ou(&["/Students"], true),
        ErrorKind::FailedPrecondition,
    );
}

#[test]
fn claiming_a_domain_while_an_ou_is_linked_is_failed_precondition() {
    // OU-2
    let given = linked_district();
    given.refused(
        Actor::Staff,
        claim("north.edu", false),
        ErrorKind::FailedPrecondition,
    );
}

#[test]
fn after_unlinking_the_license_may_claim_a_domain_and_after_releasing_it_may_link() {
    // OU-2: the exclusion lasts only as long as the link or the claim.
    let mut given = linked_district();
    given.ok(admin(), LicenseCommand::UnlinkOu);
    let claimed = given.ok(Actor::Staff, claim("north.edu", false));
    assert_eq!(types(&claimed), ["DomainClaimed"]);
    given.ok(Actor::Staff, release("north.edu"));
    let linked = given.ok(admin(), link_ou(&["/Students"], true));
    assert_eq!(types(&linked), ["OuLinked"]);
}

#[test]
fn sync_unlink_and_confirm_without_a_link_are_failed_precondition() {
    // OU-2
    let given = Given::license(LicenseType::District, 10);
    given.refused(
        Actor::System,
        sync_ou(vec![active("a@north.edu")]),
        ErrorKind::FailedPrecondition,
    );
    given.refused(
        admin(),
        LicenseCommand::UnlinkOu,
        ErrorKind::FailedPrecondition,
    );
    given.refused(
        admin(),
        LicenseCommand::ConfirmOuSync,
        ErrorKind::FailedPrecondition,
    );
}

// ---------------------------------------------------------------------------------------
// OU-3: what a sync adds and removes.
// ---------------------------------------------------------------------------------------

#[test]
fn a_sync_adds_active_listed_users_as_accepted_ou_members_with_their_path_and_role() {
    // OU-3: the snapshot carries the linked OU and its child OUs; each member keeps the
    // path the directory reported and the role it gave.
    let mut given = linked_district();
    let decision = given.ok(
        Actor::System,
        sync_ou(vec![
            entry("ann@north.edu", "/Students", Role::Student, false),
            entry("bob@north.edu", "/Students/Grade 5", Role::Student, false),
            entry(
                "cy@north.edu",
                "/Students/Grade 5/Tutors",
                Role::Teacher,
                false,
            ),
        ]),
    );
    assert_eq!(
        about(&decision),
        [
            ev("UserAdded", "ann@north.edu"),
            ev("UserAdded", "bob@north.edu"),
            ev("UserAdded", "cy@north.edu"),
            ev("OuSynced", ""),
        ]
    );
    assert_eq!(
        standing(&given, "bob@north.edu"),
        Some((Status::Accepted, Source::Ou, Role::Student))
    );
    assert_eq!(
        standing(&given, "cy@north.edu"),
        Some((Status::Accepted, Source::Ou, Role::Teacher))
    );
    assert_eq!(
        ou_path_of(&decision, "bob@north.edu").as_deref(),
        Some("/Students/Grade 5")
    );
    assert_eq!(
        ou_path_of(&decision, "cy@north.edu").as_deref(),
        Some("/Students/Grade 5/Tutors")
    );
    let bob = given.state().member(&email("bob@north.edu")).unwrap();
    assert_eq!(bob.added_by, Actor::System);
}

#[test]
fn a_sync_never_adds_suspended_users() {
    // OU-3
    let mut given = linked_district();
    let decision = given.ok(
        Actor::System,
        sync_ou(vec![active("ann@north.edu"), suspended("sus@north.edu")]),
    );
    assert_eq!(
        about(&decision),
        [ev("UserAdded", "ann@north.edu"), ev("OuSynced", "")]
    );
    assert_eq!(given.status("sus@north.edu"), None);
    assert_eq!(ou_answer(&decision), (counts(1, 0, 0, 1), false));
}

#[test]
fn a_sync_removes_ou_members_who_left_the_ou_or_were_suspended() {
    // OU-3
    let mut given = district_with_ou_members(&people("kid", 20));
    let decision = given.ok(
        Actor::System,
        sync_ou({
            let mut entries = actives(&people("kid", 18));
            // kid18 is suspended; kid19 is no longer listed at all.
            entries.push(suspended("kid18@north.edu"));
            entries
        }),
    );
    assert_eq!(
        about(&decision),
        [
            ev("UserRemoved", "kid18@north.edu"),
            ev("UserRemoved", "kid19@north.edu"),
            ev("OuSynced", ""),
        ]
    );
    assert_eq!(
        removal_reasons(&decision),
        [RemovalReason::OuSync, RemovalReason::OuSync]
    );
    assert_eq!(given.status("kid18@north.edu"), None);
    assert_eq!(given.status("kid19@north.edu"), None);
    assert_eq!(given.status("kid17@north.edu"), Some(Status::Accepted));
    assert_eq!(ou_answer(&decision), (counts(0, 2, 0, 0), false));
}

#[test]
fn a_sync_of_the_same_snapshot_changes_no_member() {
    // OU-3: members still listed stay as they are; only the sync itself is recorded.
    let members = people("kid", 3);
    let mut given = district_with_ou_members(&members);
    let decision = given.ok(Actor::System, sync_ou(actives(&members)));
    assert_eq!(types(&decision), ["OuSynced"]);
    assert_eq!(ou_answer(&decision), (OuSyncCounts::default(), false));
}

#[test]
fn only_the_system_or_staff_report_an_ou_snapshot() {
    // OU-3: SyncOu comes from the directory integration, not from a user.
    let given = linked_district();
    given.refused(
        admin(),
        sync_ou(vec![active("a@north.edu")]),
        ErrorKind::PermissionDenied,
    );
}

#[test]
fn a_sync_on_an_expired_license_is_failed_precondition() {
    // OU-3, LIC-3
    let mut given = linked_district();
    given.at(AFTER_EXPIRY);
    given.refused(
        Actor::System,
        sync_ou(vec![active("a@north.edu")]),
        ErrorKind::FailedPrecondition,
    );
}

// ---------------------------------------------------------------------------------------
// OU-4: admin-removed users come back.
// ---------------------------------------------------------------------------------------

#[test]
fn a_user_an_admin_removed_comes_back_at_the_next_sync_counted_as_readded() {
    // OU-4
    let members = people("kid", 3);
    let mut given = district_with_ou_members(&members);
    given.remove(admin(), &["kid1@north.edu"]);
    assert_eq!(given.status("kid1@north.edu"), None);

    let mut entries = actives(&members);
    entries.push(active("new@north.edu"));
    let decision = given.ok(Actor::System, sync_ou(entries));
    assert_eq!(
        about(&decision),
        [
            ev("UserAdded", "kid1@north.edu"),
            ev("UserAdded", "new@north.edu"),
            ev("OuSynced", ""),
        ]
    );
    // The returning user counts as readded; the one never on the license as added.
    assert_eq!(ou_answer(&decision), (counts(1, 0, 1, 0), false));
    assert_eq!(ou_synced_counts(&decision), counts(1, 0, 1, 0));
    assert_eq!(
        standing(&given, "kid1@north.edu"),
        Some((Status::Accepted, Source::Ou, Role::Student))
    );
}

#[test]
fn an_admin_removed_user_who_is_now_suspended_does_not_come_back() {
    // OU-4, OU-3: only users still active in the OU return.
    let members = people("kid", 3);
    let mut given = district_with_ou_members(&members);
    given.remove(admin(), &["kid1@north.edu"]);
    let decision = given.ok(
        Actor::System,
        sync_ou(vec![
            active("kid0@north.edu"),
            suspended("kid1@north.edu"),
            active("kid2@north.edu"),
        ]),
    );
    assert_eq!(types(&decision), ["OuSynced"]);
    assert_eq!(given.status("kid1@north.edu"), None);
    assert_eq!(ou_answer(&decision), (counts(0, 0, 0, 1), false));
}

// ---------------------------------------------------------------------------------------
// OU-5: members from other sources are left alone.
// ---------------------------------------------------------------------------------------

#[test]
fn an_email_member_listed_in_the_ou_keeps_their_source_and_stays_after_leaving_it() {
    // OU-5
    let mut given = linked_district();
    given.add(Actor::Staff, &["mail@north.edu"]);
    let listed = given.ok(
        Actor::System,
        sync_ou(vec![active("mail@north.edu"), active("kid@north.edu")]),
    );
    assert_eq!(
        about(&listed),
        [ev("UserAdded", "kid@north.edu"), ev("OuSynced", "")]
    );
    assert_eq!(
        standing(&given, "mail@north.edu"),
        Some((Status::Accepted, Source::Email, Role::Other))
    );
    assert_eq!(ou_path_of(&listed, "mail@north.edu"), None);

    // They leave the OU (and are suspended there): still accepted, by email.
    let left = given.ok(
        Actor::System,
        sync_ou(vec![active("kid@north.edu"), suspended("mail@north.edu")]),
    );
    assert_eq!(types(&left), ["OuSynced"]);
    assert_eq!(
        standing(&given, "mail@north.edu"),
        Some((Status::Accepted, Source::Email, Role::Other))
    );
    let gone = given.ok(Actor::System, sync_ou(vec![active("kid@north.edu")]));
    assert_eq!(types(&gone), ["OuSynced"]);
    assert_eq!(given.status("mail@north.edu"), Some(Status::Accepted));
}

#[test]
fn invited_and_rejected_members_from_other_sources_are_neither_accepted_nor_removed_by_a_sync() {
    // OU-5: a sync neither answers an invite for the user nor overrides a refusal.
    let mut given = linked_district();
    given.add(admin(), &["inv@north.edu", "rej@north.edu"]);
    given.ok(user("rej@north.edu"), LicenseCommand::RejectInvite);
    assert_eq!(given.status("inv@north.edu"), Some(Status::Invited));
    assert_eq!(given.status("rej@north.edu"), Some(Status::Rejected));

    let listed = given.ok(
        Actor::System,
        sync_ou(vec![active("inv@north.edu"), active("rej@north.edu")]),
    );
    assert_eq!(types(&listed), ["OuSynced"]);
    assert_eq!(
        standing(&given, "inv@north.edu"),
        Some((Status::Invited, Source::Email, Role::Other))
    );
    assert_eq!(
        standing(&given, "rej@north.edu"),
        Some((Status::Rejected, Source::Email, Role::Other))
    );

    let not_listed = given.ok(Actor::System, sync_ou(vec![active("other@north.edu")]));
    assert_eq!(
        about(&not_listed),
        [ev("UserAdded", "other@north.edu"), ev("OuSynced", "")]
    );
    assert_eq!(given.status("inv@north.edu"), Some(Status::Invited));
    assert_eq!(given.status("rej@north.edu"), Some(Status::Rejected));
}

#[test]
fn a_key_member_listed_in_the_ou_is_not_turned_into_an_ou_member() {
    // OU-5: a member who came by the license key stays a key member, so unlinking later
    // does not take them away.
    let mut given = linked_district();
    given.ok(
        user("keyed@north.edu"),
        LicenseCommand::RedeemKey {
            key: secret("key-one"),
        },
    );
    given.ok(Actor::System, sync_ou(vec![active("keyed@north.edu")]));
    assert_eq!(
        standing(&given, "keyed@north.edu").map(|(_, source, _)| source),
        Some(Source::Key)
    );
    let unlinked = given.ok(admin(), LicenseCommand::UnlinkOu);
    assert_eq!(outcome(&unlinked), &Outcome::OuUnlinked { removed: 0 });
    assert_eq!(given.status("keyed@north.edu"), Some(Status::Accepted));
}

// ---------------------------------------------------------------------------------------
// OU-6: unlinking removes the ou members.
// ---------------------------------------------------------------------------------------

#[test]
fn unlinking_removes_every_ou_member_whatever_their_status_and_keeps_everyone_else() {
    // OU-6
    let mut given = linked_district_with_seats(3);
    given.add(Actor::Staff, &["mail@north.edu"]);
    // Two ou members take the last two seats; the third waits.
    given.ok(
        Actor::System,
        sync_ou(vec![
            active("kid0@north.edu"),
            active("kid1@north.edu"),
            active("kid2@north.edu"),
        ]),
    );
    assert_eq!(given.status("kid2@north.edu"), Some(Status::Waitlisted));

    let decision = given.ok(admin(), LicenseCommand::UnlinkOu);
    assert_eq!(
        about(&decision),
        [
            ev("OuUnlinked", ""),
            ev("UserRemoved", "kid0@north.edu"),
            ev("UserRemoved", "kid1@north.edu"),
            ev("UserRemoved", "kid2@north.edu"),
        ]
    );
    assert_eq!(removal_reasons(&decision), [RemovalReason::OuUnlinked; 3]);
    assert_eq!(outcome(&decision), &Outcome::OuUnlinked { removed: 3 });
    match &decision.events[0] {
        Event::OuUnlinked(unlinked) => assert_eq!(unlinked.ou_paths, vec![ou(STUDENTS_OU)]),
        other => panic!("expected OuUnlinked first, got {other:?}"),
    }
    assert!(given.state().ou_paths().is_empty());
    assert_eq!(given.state().counts().waitlisted, 0);
    assert_eq!(
        standing(&given, "mail@north.edu"),
        Some((Status::Accepted, Source::Email, Role::Other))
    );
    assert_eq!(given.state().users_count(), 1);
}

#[test]
fn only_a_license_admin_or_staff_unlinks() {
    // OU-6
    let given = linked_district();
    given.refused(
        user("kid@north.edu"),
        LicenseCommand::UnlinkOu,
        ErrorKind::PermissionDenied,
    );
    given.refused(
        Actor::System,
        LicenseCommand::UnlinkOu,
        ErrorKind::PermissionDenied,
    );
}

// ---------------------------------------------------------------------------------------
// OU-7: one OuSynced event with the counts.
// ---------------------------------------------------------------------------------------

#[test]
fn an_applied_sync_records_one_ou_synced_event_after_the_per_user_events() {
    // OU-7: added, removed, readded, skipped_suspended and waitlisted, each counted once.
    let mut given = linked_district_with_seats(5);
    // Three ou members (old0..old2); old1 is then removed by an admin.
    given.ok(Actor::System, sync_ou(actives(&people("old", 3))));
    given.remove(admin(), &["old1@north.edu"]);
    // Seats: old0, old2 hold 2 of 5.
    let decision = given.ok(
        Actor::System,
        sync_ou(vec![
            // old0 left the OU: removed (frees a seat: 1 of 5 used).
            active("old1@north.edu"), // readded (2 of 5)
            active("old2@north.edu"), // unchanged
            active("new0@north.edu"), // added (3)
            active("new1@north.edu"), // added (4)
            active("new2@north.edu"), // added (5)
            active("new3@north.edu"), // waitlisted: no seat left
            suspended("sus@north.edu"),
        ]),
    );
    let expected = OuSyncCounts {
        added: 3,
        removed: 1,
        readded: 1,
        skipped_suspended: 1,
        waitlisted: 1,
    };
    assert_eq!(ou_answer(&decision), (expected, false));
    assert_eq!(ou_synced_counts(&decision), expected);
    assert_eq!(
        about(&decision),
        [
            ev("UserRemoved", "old0@north.edu"),
            ev("UserAdded", "old1@north.edu"),
            ev("UserAdded", "new0@north.edu"),
            ev("UserAdded", "new1@north.edu"),
            ev("UserAdded", "new2@north.edu"),
            ev("UserWaitlisted", "new3@north.edu"),
            ev("OuSynced", ""),
        ]
    );
    assert_eq!(
        standing(&given, "new3@north.edu"),
        Some((Status::Waitlisted, Source::Ou, Role::Student))
    );
}

// ---------------------------------------------------------------------------------------
// OU-8: the safety hold.
// ---------------------------------------------------------------------------------------

/// Asserts that a decision is a hold: one `OuSyncHeld` event with what the sync would have
/// done, and an answer of `held: true` with every count 0.
fn assert_held(decision: &Decision, would: OuSyncCounts) {
    assert_eq!(types(decision), ["OuSyncHeld"]);
    match &decision.events[0] {
        Event::OuSyncHeld(held) => {
            assert_eq!(held.would, would);
            assert!(!held.reason.trim().is_empty(), "a hold says why");
        }
        other => panic!("expected OuSyncHeld, got {other:?}"),
    }
    assert_eq!(ou_answer(decision), (OuSyncCounts::default(), true));
}

#[test]
fn a_sync_with_zero_entries_is_held_and_removes_nobody() {
    // OU-8: an empty snapshot looks exactly like a directory outage.
    let mut given = district_with_ou_members(&people("kid", 3));
    let decision = given.ok(Actor::System, sync_ou(Vec::new()));
    assert_held(&decision, counts(0, 3, 0, 0));
    assert_eq!(given.state().counts().accepted, 3);
    let held = given.state().held_sync().expect("the hold is recorded");
    assert!(held.entries.is_empty());
    assert_eq!(held.would.removed, 3);
}

#[test]
fn a_sync_with_zero_entries_is_held_even_when_nobody_would_be_removed() {
    // OU-8: "a sync with zero entries" is held on its own, whatever it would do.
    let mut given = linked_district();
    let decision = given.ok(Actor::System, sync_ou(Vec::new()));
    assert_held(&decision, OuSyncCounts::default());
    assert!(given.state().held_sync().is_some());
}

#[test]
fn a_sync_removing_more_than_ten_percent_and_more_than_five_people_is_held() {
    // OU-8: 7 of 60 ou members is 11.7% and 7 people.
    let members = people("kid", 60);
    let mut given = district_with_ou_members(&members);
    let mut entries = actives(&members[..53]);
    // A hold applies nothing at all, not even the additions in the same snapshot.
    entries.push(active("new@north.edu"));
    let decision = given.ok(Actor::System, sync_ou(entries.clone()));
    assert_held(&decision, counts(1, 7, 0, 0));
    assert_eq!(given.state().counts().accepted, 60);
    assert_eq!(given.status("kid59@north.edu"), Some(Status::Accepted));
    assert_eq!(given.status("new@north.edu"), None);
    let held = given.state().held_sync().expect("the hold is recorded");
    assert_eq!(held.entries, entries);
    assert_eq!(held.held_at, time(NOW));
}

#[test]
fn a_sync_removing_exactly_ten_percent_applies() {
    // OU-8: 6 of 60 is 10%, not more than 10%, though it is more than 5 people.
    let members = people("kid", 60);
    let mut given = district_with_ou_members(&members);
    let decision = given.ok(Actor::System, sync_ou(actives(&members[..54])));
    assert_eq!(ou_answer(&decision), (counts(0, 6, 0, 0), false));
    assert_eq!(given.state().counts().accepted, 54);
    assert!(given.state().held_sync().is_none());
}

#[test]
fn a_sync_removing_more_than_ten_percent_but_only_five_people_applies() {
    // OU-8: 5 of 10 is 50%, but not more than 5 people.
    let members = people("kid", 10);
    let mut given = district_with_ou_members(&members);
    let decision = given.ok(Actor::System, sync_ou(actives(&members[..5])));
    assert_eq!(ou_answer(&decision), (counts(0, 5, 0, 0), false));
    assert_eq!(given.state().counts().accepted, 5);
}

#[test]
fn the_ten_percent_is_of_the_ou_members_not_of_every_member() {
    // OU-8: "more than 10% of the license's ou-sourced members". 6 of 10 ou members is
    // 60%, though it is under 10% of the 110 members the license holds.
    let members = people("kid", 10);
    let mut given = district_with_ou_members(&members);
    let staff_added = people("mail", 100);
    let staff_added: Vec<&str> = staff_added.iter().map(String::as_str).collect();
    given.add(Actor::Staff, &staff_added);
    let decision = given.ok(Actor::System, sync_ou(actives(&members[..4])));
    assert_held(&decision, counts(0, 6, 0, 0));
}

#[test]
fn suspended_ou_members_count_toward_the_hold() {
    // OU-8, OU-3: a mass suspension would remove people just as a vanished OU would.
    let members = people("kid", 10);
    let mut given = district_with_ou_members(&members);
    let mut entries = actives(&members[..4]);
    entries.extend(members[4..].iter().map(|e| suspended(e)));
    let decision = given.ok(Actor::System, sync_ou(entries));
    assert_held(&decision, counts(0, 6, 0, 0));
}

#[test]
fn a_new_hold_replaces_the_older_one() {
    // OU-8
    let members = people("kid", 10);
    let mut given = district_with_ou_members(&members);
    given.ok(Actor::System, sync_ou(actives(&members[..3])));
    let mut second = actives(&members[..4]);
    second.push(active("new@north.edu"));
    given.at("2026-09-01T00:30:00Z");
    let decision = given.ok(Actor::System, sync_ou(second.clone()));
    assert_held(&decision, counts(1, 6, 0, 0));
    let held = given.state().held_sync().expect("the hold is recorded");
    assert_eq!(held.entries, second);
    assert_eq!(held.would, counts(1, 6, 0, 0));
    assert_eq!(held.held_at, time("2026-09-01T00:30:00Z"));
}

#[test]
fn a_sync_below_the_threshold_applies_and_clears_the_hold() {
    // OU-8: each sync is judged on its own; the directory came back whole.
    let members = people("kid", 10);
    let mut given = district_with_ou_members(&members);
    given.ok(Actor::System, sync_ou(Vec::new()));
    assert!(given.state().held_sync().is_some());
    let decision = given.ok(Actor::System, sync_ou(actives(&members[..9])));
    assert_eq!(
        about(&decision),
        [ev("UserRemoved", "kid9@north.edu"), ev("OuSynced", "")]
    );
    assert!(given.state().held_sync().is_none());
    // With the hold gone there is nothing left to confirm.
    given.refused(
        admin(),
        LicenseCommand::ConfirmOuSync,
        ErrorKind::FailedPrecondition,
    );
}

#[test]
fn a_license_admin_confirming_applies_the_latest_hold() {
    // OU-8: ConfirmOuSync applies exactly the held snapshot, with the usual events.
    let members = people("kid", 10);
    let mut given = district_with_ou_members(&members);
    given.ok(Actor::System, sync_ou(actives(&members[..2])));
    let mut latest = actives(&members[..3]);
    latest.push(active("new@north.edu"));
    given.ok(Actor::System, sync_ou(latest));

    let decision = given.ok(admin(), LicenseCommand::ConfirmOuSync);
    let mut expected = vec![ev("OuSyncConfirmed", "")];
    expected.extend(
        members[3..]
            .iter()
            .map(|member| ev("UserRemoved", member.as_str())),
    );
    expected.push(ev("UserAdded", "new@north.edu"));
    expected.push(ev("OuSynced", ""));
    assert_eq!(about(&decision), expected);
    match &decision.events[0] {
        Event::OuSyncConfirmed(confirmed) => assert_eq!(confirmed.entries_count, 4),
        other => panic!("expected OuSyncConfirmed first, got {other:?}"),
    }
    assert_eq!(ou_answer(&decision), (counts(1, 7, 0, 0), false));
    assert_eq!(ou_synced_counts(&decision), counts(1, 7, 0, 0));
    // kid2 was in the latest snapshot though not in the first one.
    assert_eq!(given.status("kid2@north.edu"), Some(Status::Accepted));
    assert_eq!(given.status("kid3@north.edu"), None);
    assert_eq!(given.status("new@north.edu"), Some(Status::Accepted));
    assert!(given.state().held_sync().is_none());
}

#[test]
fn confirming_an_empty_hold_removes_every_ou_member() {
    // OU-8: when the OU really was emptied, the admin's confirmation applies it.
    let members = people("kid", 3);
    let mut given = district_with_ou_members(&members);
    given.add(Actor::Staff, &["mail@north.edu"]);
    given.ok(Actor::System, sync_ou(Vec::new()));
    let decision = given.ok(admin(), LicenseCommand::ConfirmOuSync);
    assert_eq!(ou_answer(&decision), (counts(0, 3, 0, 0), false));
    assert_eq!(given.state().users_count(), 1);
    assert_eq!(given.status("mail@north.edu"), Some(Status::Accepted));
}

#[test]
fn confirming_with_no_hold_is_failed_precondition() {
    // OU-8
    let given = district_with_ou_members(&people("kid", 3));
    given.refused(
        admin(),
        LicenseCommand::ConfirmOuSync,
        ErrorKind::FailedPrecondition,
    );
}

#[test]
fn a_hold_cannot_be_confirmed_once_the_license_expired() {
    // OU-8, LIC-3: ConfirmOuSync adds people, so it waits for a renewal like SyncOu does.
    let mut given = district_with_ou_members(&people("kid", 3));
    given.ok(Actor::System, sync_ou(Vec::new()));
    given.at(AFTER_EXPIRY);
    given.refused(
        admin(),
        LicenseCommand::ConfirmOuSync,
        ErrorKind::FailedPrecondition,
    );
    assert!(given.state().held_sync().is_some());
}

#[test]
fn a_stranger_confirming_on_a_license_without_a_link_is_permission_denied_first() {
    // OU-8, OU-2, ERR-1: PERMISSION_DENIED ranks before FAILED_PRECONDITION.
    let given = Given::license(LicenseType::District, 10);
    given.refused(
        user("kid@north.edu"),
        LicenseCommand::ConfirmOuSync,
        ErrorKind::PermissionDenied,
    );
    given.refused(
        user("kid@north.edu"),
        LicenseCommand::UnlinkOu,
        ErrorKind::PermissionDenied,
    );
}

#[test]
fn only_a_license_admin_confirms_a_hold() {
    // OU-8: the people who know whether the directory really shrank confirm, not a user
    // or the integration that produced the suspicious snapshot.
    let mut given = district_with_ou_members(&people("kid", 10));
    given.ok(Actor::System, sync_ou(Vec::new()));
    given.refused(
        user("kid0@north.edu"),
        LicenseCommand::ConfirmOuSync,
        ErrorKind::PermissionDenied,
    );
    given.refused(
        Actor::System,
        LicenseCommand::ConfirmOuSync,
        ErrorKind::PermissionDenied,
    );
    assert!(given.state().held_sync().is_some());
}

// ---------------------------------------------------------------------------------------
// DOM-1: who may claim a domain, for which license types.
// ---------------------------------------------------------------------------------------

#[test]
fn staff_claim_a_domain_for_a_district_license_without_saying_dedicated() {
    // DOM-1
    let mut given = Given::license(LicenseType::District, 10);
    let decision = given.ok(Actor::Staff, claim(" North.EDU ", false));
    match decision.events.as_slice() {
        [Event::DomainClaimed(claimed)] => {
            assert_eq!(claimed.domain, domain_name("north.edu"));
            assert_eq!(claimed.license.as_str(), "L1");
        }
        other => panic!("expected one DomainClaimed, got {other:?}"),
    }
    assert!(given.state().domains().contains(&domain_name("north.edu")));
}

#[test]
fn school_and_building_licenses_claim_only_a_dedicated_domain() {
    // DOM-1
    for license_type in [LicenseType::School, LicenseType::Building] {
        let mut given = Given::license(license_type, 10);
        given.refused(
            Actor::Staff,
            claim("north.edu", false),
            ErrorKind::FailedPrecondition,
        );
        let decision = given.ok(Actor::Staff, claim("north.edu", true));
        assert_eq!(types(&decision), ["DomainClaimed"], "{license_type}");
    }
}

#[test]
fn teacher_pro_and_work_licenses_never_claim_a_domain() {
    // DOM-1
    for license_type in [LicenseType::Teacher, LicenseType::Pro, LicenseType::Work] {
        let given = Given::license(license_type, 10);
        for dedicated in [false, true] {
            given.refused(
                Actor::Staff,
                claim("north.edu", dedicated),
                ErrorKind::FailedPrecondition,
            );
        }
    }
}

#[test]
fn only_staff_claim_a_domain_and_that_is_checked_before_the_license_type() {
    // DOM-1, ERR-1: a license admin is PERMISSION_DENIED, even on a teacher license where
    // the claim would also be FAILED_PRECONDITION.
    for license_type in [LicenseType::District, LicenseType::Teacher] {
        let given = Given::license(license_type, 10);
        given.refused(
            admin(),
            claim("north.edu", true),
            ErrorKind::PermissionDenied,
        );
        given.refused(
            Actor::System,
            claim("north.edu", true),
            ErrorKind::PermissionDenied,
        );
    }
}

// ---------------------------------------------------------------------------------------
// DOM-2: one license per domain, decided by the email-domain aggregate.
// ---------------------------------------------------------------------------------------

fn domain_claim(license: &str) -> DomainCommand {
    DomainCommand::Claim {
        license: LicenseId::parse(license).unwrap(),
    }
}

fn decide_domain(domain: &EmailDomain, actor: Actor, command: DomainCommand) -> Decision {
    domain
        .handle(&command, &Context::new(time(NOW), actor))
        .unwrap_or_else(|error| panic!("{command:?} was refused: {error:?}"))
}

fn apply_domain(domain: &mut EmailDomain, decision: &Decision) {
    let meta = EventMeta {
        at: time(NOW),
        actor: Actor::Staff,
    };
    for event in &decision.events {
        domain.apply(&meta, event);
    }
}

fn claimed_domain(holder: &str) -> EmailDomain {
    let mut domain = EmailDomain::new(domain_name("north.edu"));
    let decision = decide_domain(&domain, Actor::Staff, domain_claim(holder));
    assert_eq!(types(&decision), ["DomainClaimed"]);
    apply_domain(&mut domain, &decision);
    domain
}

#[test]
fn a_second_claim_of_a_domain_is_already_exists_and_does_not_name_the_holder() {
    // DOM-2
    let domain = claimed_domain("HOLDER-77");
    assert_eq!(
        domain.claimed_by().map(LicenseId::as_str),
        Some("HOLDER-77")
    );
    let error = domain
        .handle(&domain_claim("L2"), &Context::new(time(NOW), Actor::Staff))
        .expect_err("a domain is claimed by at most one license");
    assert_eq!(error.kind(), ErrorKind::AlreadyExists);
    assert!(error.message().len() > 10, "{error}");
    assert!(
        !error.message().contains("HOLDER-77"),
        "the refusal names the holding license: {error}"
    );
}

#[test]
fn the_holding_license_claiming_its_domain_again_is_also_already_exists() {
    // DOM-2: "any second claim", on the domain's stream and on the license's own.
    let domain = claimed_domain("L1");
    let error = domain
        .handle(&domain_claim("L1"), &Context::new(time(NOW), Actor::Staff))
        .expect_err("a second claim by the same license");
    assert_eq!(error.kind(), ErrorKind::AlreadyExists);

    let given = claiming_district(10);
    given.refused(
        Actor::Staff,
        claim("north.edu", false),
        ErrorKind::AlreadyExists,
    );
}

#[test]
fn after_a_release_another_license_may_claim_the_domain() {
    // DOM-2, DOM-5
    let mut domain = claimed_domain("HOLDER-77");
    let released = decide_domain(
        &domain,
        Actor::Staff,
        DomainCommand::Release {
            license: LicenseId::parse("HOLDER-77").unwrap(),
        },
    );
    assert_eq!(types(&released), ["DomainReleased"]);
    apply_domain(&mut domain, &released);
    assert_eq!(domain.claimed_by(), None);
    let claimed = decide_domain(&domain, Actor::Staff, domain_claim("L2"));
    assert_eq!(types(&claimed), ["DomainClaimed"]);
}

#[test]
fn only_staff_claim_on_the_domain_stream_and_a_stranger_cannot_release_a_claim() {
    // DOM-2, DOM-1
    let domain = claimed_domain("HOLDER-77");
    let fresh = EmailDomain::new(domain_name("south.edu"));
    let error = fresh
        .handle(&domain_claim("L2"), &Context::new(time(NOW), user(ADMIN)))
        .expect_err("only staff claim");
    assert_eq!(error.kind(), ErrorKind::PermissionDenied);
    let error = domain
        .handle(
            &DomainCommand::Release {
                license: LicenseId::parse("L2").unwrap(),
            },
            &Context::new(time(NOW), Actor::Staff),
        )
        .expect_err("L2 does not hold the claim");
    assert_eq!(error.kind(), ErrorKind::FailedPrecondition);
    assert_eq!(
        domain.claimed_by().map(LicenseId::as_str),
        Some("HOLDER-77")
    );
}

// ---------------------------------------------------------------------------------------
// DOM-3: sign-ups on a claimed domain.
// ---------------------------------------------------------------------------------------

#[test]
fn a_sign_up_on_a_claimed_domain_joins_as_accepted_with_source_domain_and_the_role() {
    // DOM-3
    let mut given = claiming_district(10);
    let decision = given.ok(Actor::System, sign_up("Teach@North.edu", Role::Teacher));
    match decision.events.as_slice() {
        [Event::UserAdded(added)] => {
            assert_eq!(added.email, email("teach@north.edu"));
            assert_eq!(added.source, Source::Domain);
            assert_eq!(added.role, Role::Teacher);
            assert_eq!(added.ou_path, None);
        }
        other => panic!("expected one UserAdded, got {other:?}"),
    }
    assert_eq!(
        outcome(&decision),
        &Outcome::Joined {
            status: Status::Accepted
        }
    );
    assert_eq!(
        standing(&given, "teach@north.edu"),
        Some((Status::Accepted, Source::Domain, Role::Teacher))
    );
}

#[test]
fn a_sign_up_on_a_full_license_is_waitlisted() {
    // DOM-3, SEAT-4
    let mut given = claiming_district(1);
    given.ok(Actor::System, sign_up("first@north.edu", Role::Student));
    let decision = given.ok(Actor::System, sign_up("second@north.edu", Role::Student));
    assert_eq!(about(&decision), [ev("UserWaitlisted", "second@north.edu")]);
    assert_eq!(
        outcome(&decision),
        &Outcome::Joined {
            status: Status::Waitlisted
        }
    );
    assert_eq!(
        standing(&given, "second@north.edu"),
        Some((Status::Waitlisted, Source::Domain, Role::Student))
    );
}

#[test]
fn a_sign_up_without_a_claim_is_skipped() {
    // DOM-3: the answer names no license and nothing is recorded.
    let given = Given::license(LicenseType::District, 10);
    let decision = given
        .when(Actor::System, sign_up("kid@north.edu", Role::Student))
        .unwrap();
    assert_eq!(outcome(&decision), &Outcome::Skipped);
    assert!(decision.events.is_empty());
}

#[test]
fn a_sign_up_on_an_expired_claim_is_skipped() {
    // DOM-3, LIC-3: only an unexpired claim covers the domain.
    let mut given = claiming_district(10);
    given.at(AFTER_EXPIRY);
    let decision = given
        .when(Actor::System, sign_up("kid@north.edu", Role::Student))
        .unwrap();
    assert_eq!(outcome(&decision), &Outcome::Skipped);
    assert!(decision.events.is_empty());
}

#[test]
fn subdomains_are_not_the_claimed_domain() {
    // DOM-3: a claim of north.edu does not cover sub.north.edu, nor the other way round.
    let given = claiming_district(10);
    let decision = given
        .when(Actor::System, sign_up("a@sub.north.edu", Role::Student))
        .unwrap();
    assert_eq!(outcome(&decision), &Outcome::Skipped);
    assert!(decision.events.is_empty());

    let mut sub = Given::license(LicenseType::District, 10);
    sub.ok(Actor::Staff, claim("sub.north.edu", false));
    let decision = sub
        .when(Actor::System, sign_up("a@north.edu", Role::Student))
        .unwrap();
    assert_eq!(outcome(&decision), &Outcome::Skipped);
    // A look-alike domain that merely ends the same way is not covered either.
    let decision = given
        .when(Actor::System, sign_up("a@evilnorth.edu", Role::Student))
        .unwrap();
    assert_eq!(outcome(&decision), &Outcome::Skipped);
}

#[test]
fn a_member_signing_up_is_unchanged() {
    // DOM-3, SEAT-4: a sign-up adds non-members only; a member keeps status and source.
    let mut given = claiming_district(10);
    given.add(admin(), &["inv@north.edu"]);
    let decision = given
        .when(Actor::System, sign_up("inv@north.edu", Role::Teacher))
        .unwrap();
    assert!(decision.events.is_empty(), "{:?}", types(&decision));
    assert_eq!(
        outcome(&decision),
        &Outcome::Joined {
            status: Status::Invited
        }
    );
}

#[test]
fn only_the_system_reports_sign_ups() {
    // DOM-3: a user cannot add themselves by claiming to have signed up.
    let given = claiming_district(10);
    given.refused(
        user("kid@north.edu"),
        sign_up("kid@north.edu", Role::Teacher),
        ErrorKind::PermissionDenied,
    );
}

// ---------------------------------------------------------------------------------------
// DOM-4: domain scans.
// ---------------------------------------------------------------------------------------

#[test]
fn a_scan_adds_non_members_including_admin_removed_ones_and_leaves_members_unchanged() {
    // DOM-4
    let mut given = claiming_district(10);
    given.add(Actor::Staff, &["mail@north.edu"]);
    given.ok(Actor::System, sign_up("back@north.edu", Role::Student));
    given.remove(admin(), &["back@north.edu"]);
    assert_eq!(given.status("back@north.edu"), None);

    let decision = given.ok(
        Actor::System,
        scan(
            "north.edu",
            &[
                ("mail@north.edu", Role::Teacher),
                ("back@north.edu", Role::Student),
                ("new@north.edu", Role::Teacher),
            ],
        ),
    );
    assert_eq!(
        about(&decision),
        [
            ev("UserAdded", "back@north.edu"),
            ev("UserAdded", "new@north.edu"),
        ]
    );
    assert_eq!(outcome(&decision), &automatic(2, 0, 1));
    assert_eq!(
        standing(&given, "back@north.edu"),
        Some((Status::Accepted, Source::Domain, Role::Student))
    );
    assert_eq!(
        standing(&given, "new@north.edu"),
        Some((Status::Accepted, Source::Domain, Role::Teacher))
    );
    assert_eq!(
        standing(&given, "mail@north.edu"),
        Some((Status::Accepted, Source::Email, Role::Other))
    );
}

#[test]
fn a_scan_waitlists_accounts_once_the_seats_are_gone() {
    // DOM-4, SEAT-4
    let mut given = claiming_district(2);
    let decision = given.ok(
        Actor::System,
        scan(
            "north.edu",
            &[
                ("a@north.edu", Role::Student),
                ("b@north.edu", Role::Student),
                ("c@north.edu", Role::Student),
                ("d@north.edu", Role::Student),
            ],
        ),
    );
    assert_eq!(
        types(&decision),
        ["UserAdded", "UserAdded", "UserWaitlisted", "UserWaitlisted"]
    );
    assert_eq!(outcome(&decision), &automatic(2, 2, 0));
    assert_eq!(waitlist(&given), ["c@north.edu", "d@north.edu"]);
}

#[test]
fn a_scan_of_an_unclaimed_domain_or_of_foreign_accounts_adds_nobody() {
    // DOM-4: a scan adds accounts of the claimed domain only.
    let given = claiming_district(10);
    let decision = given
        .when(
            Actor::System,
            scan("south.edu", &[("a@south.edu", Role::Student)]),
        )
        .unwrap();
    assert!(decision.events.is_empty());
    assert_eq!(outcome(&decision), &automatic(0, 0, 0));

    let decision = given
        .when(
            Actor::System,
            scan(
                "north.edu",
                &[
                    ("a@south.edu", Role::Student),
                    ("b@sub.north.edu", Role::Student),
                ],
            ),
        )
        .unwrap();
    assert!(decision.events.is_empty(), "{:?}", types(&decision));
}

// ---------------------------------------------------------------------------------------
// DOM-5: releasing a claim.
// ---------------------------------------------------------------------------------------

#[test]
fn releasing_a_claim_keeps_the_members_it_brought_and_stops_new_sign_ups() {
    // DOM-5
    let mut given = claiming_district(10);
    given.ok(Actor::System, sign_up("a@north.edu", Role::Student));
    given.ok(
        Actor::System,
        scan("north.edu", &[("b@north.edu", Role::Teacher)]),
    );
    let decision = given.ok(Actor::Staff, release("north.edu"));
    match decision.events.as_slice() {
        [Event::DomainReleased(released)] => {
            assert_eq!(released.domain, domain_name("north.edu"));
            assert_eq!(released.license.as_str(), "L1");
        }
        other => panic!("expected only DomainReleased, got {other:?}"),
    }
    assert!(given.state().domains().is_empty());
    assert_eq!(
        standing(&given, "a@north.edu"),
        Some((Status::Accepted, Source::Domain, Role::Student))
    );
    assert_eq!(
        standing(&given, "b@north.edu"),
        Some((Status::Accepted, Source::Domain, Role::Teacher))
    );
    let later = given
        .when(Actor::System, sign_up("c@north.edu", Role::Student))
        .unwrap();
    assert_eq!(outcome(&later), &Outcome::Skipped);
}

#[test]
fn only_staff_release_and_only_a_claimed_domain() {
    // DOM-5
    let given = claiming_district(10);
    given.refused(admin(), release("north.edu"), ErrorKind::PermissionDenied);
    given.refused(
        Actor::Staff,
        release("south.edu"),
        ErrorKind::FailedPrecondition,
    );
}

// ---------------------------------------------------------------------------------------
// LMS-1: who has auto-enrollment.
// ---------------------------------------------------------------------------------------

#[test]
fn auto_enrollment_is_on_for_teacher_licenses_and_off_for_the_others() {
    // LMS-1
    for (license_type, on) in [
        (LicenseType::Teacher, true),
        (LicenseType::School, false),
        (LicenseType::Building, false),
        (LicenseType::District, false),
        (LicenseType::Pro, false),
        (LicenseType::Work, false),
    ] {
        let given = Given::license(license_type, 10);
        assert_eq!(given.state().auto_enrollment(), on, "{license_type}");
        match &given.history[0].1 {
            Event::LicenseIssued(issued) => {
                assert_eq!(issued.auto_enrollment, on, "{license_type}")
            }
            other => panic!("expected LicenseIssued, got {other:?}"),
        }
    }
}

#[test]
fn staff_turn_auto_enrollment_on_and_off_on_education_licenses() {
    // LMS-1
    for license_type in [
        LicenseType::District,
        LicenseType::School,
        LicenseType::Building,
        LicenseType::Teacher,
    ] {
        let mut given = Given::license(license_type, 10);
        let initial = given.state().auto_enrollment();
        let decision = given.ok(Actor::Staff, set_auto_enrollment(!initial));
        match decision.events.as_slice() {
            [Event::AutoEnrollmentSet(set)] => assert_eq!(set.enabled, !initial),
            other => panic!("{license_type}: expected one AutoEnrollmentSet, got {other:?}"),
        }
        assert_eq!(given.state().auto_enrollment(), !initial, "{license_type}");
    }
}

#[test]
fn only_staff_change_auto_enrollment() {
    // LMS-1
    let given = Given::license(LicenseType::District, 10);
    for actor in [admin(), Actor::System, user("kid@north.edu")] {
        given.refused(
            actor,
            set_auto_enrollment(true),
            ErrorKind::PermissionDenied,
        );
    }
    assert!(!given.state().auto_enrollment());
}

#[test]
fn pro_and_work_licenses_have_no_auto_enrollment() {
    // LMS-1
    for license_type in [LicenseType::Pro, LicenseType::Work] {
        let given = Given::license(license_type, 10);
        for enabled in [true, false] {
            given.refused(
                Actor::Staff,
                set_auto_enrollment(enabled),
                ErrorKind::FailedPrecondition,
            );
        }
    }
}

// ---------------------------------------------------------------------------------------
// LMS-2: assignments opened in an LMS.
// ---------------------------------------------------------------------------------------

#[test]
fn a_kami_assignment_of_an_accepted_teacher_enrolls_the_student() {
    // LMS-2
    let mut given = teacher_license(10);
    let decision = given.ok(
        Actor::System,
        assignment("teacher@north.edu", "Kid@North.edu", true),
    );
    match decision.events.as_slice() {
        [Event::UserAdded(added)] => {
            assert_eq!(added.email, email("kid@north.edu"));
            assert_eq!(added.source, Source::Lms);
            assert_eq!(added.role, Role::Student);
        }
        other => panic!("expected one UserAdded, got {other:?}"),
    }
    assert_eq!(
        outcome(&decision),
        &Outcome::Joined {
            status: Status::Accepted
        }
    );
    assert_eq!(
        standing(&given, "kid@north.edu"),
        Some((Status::Accepted, Source::Lms, Role::Student))
    );
}

#[test]
fn a_kami_assignment_on_a_full_license_waitlists_the_student() {
    // LMS-2, SEAT-4
    let mut given = teacher_license(1);
    let decision = given.ok(
        Actor::System,
        assignment("teacher@north.edu", "kid@north.edu", true),
    );
    assert_eq!(about(&decision), [ev("UserWaitlisted", "kid@north.edu")]);
    assert_eq!(
        outcome(&decision),
        &Outcome::Joined {
            status: Status::Waitlisted
        }
    );
    assert_eq!(
        standing(&given, "kid@north.edu"),
        Some((Status::Waitlisted, Source::Lms, Role::Student))
    );
}

#[test]
fn a_regular_assignment_enrolls_nobody() {
    // LMS-2
    let given = teacher_license(10);
    let decision = given
        .when(
            Actor::System,
            assignment("teacher@north.edu", "kid@north.edu", false),
        )
        .unwrap();
    assert_eq!(outcome(&decision), &Outcome::Skipped);
    assert!(decision.events.is_empty());
}

#[test]
fn an_invited_waitlisted_or_absent_teacher_enrolls_nobody() {
    // LMS-2: only an accepted teacher's assignments enroll.
    let mut given = Given::license(LicenseType::Teacher, 1);
    given.add(admin(), &["invited@north.edu"]);
    given.ok(
        user("waiting@north.edu"),
        LicenseCommand::RedeemKey {
            key: secret("key-one"),
        },
    );
    assert_eq!(given.status("invited@north.edu"), Some(Status::Invited));
    assert_eq!(given.status("waiting@north.edu"), Some(Status::Waitlisted));
    for teacher in ["invited@north.edu", "waiting@north.edu", "nobody@north.edu"] {
        let decision = given
            .when(Actor::System, assignment(teacher, "kid@north.edu", true))
            .unwrap();
        assert_eq!(outcome(&decision), &Outcome::Skipped, "{teacher}");
        assert!(decision.events.is_empty(), "{teacher}");
    }
}

#[test]
fn without_auto_enrollment_or_once_expired_an_assignment_enrolls_nobody() {
    // LMS-2, LMS-1, LIC-3
    let mut off = teacher_license(10);
    off.ok(Actor::Staff, set_auto_enrollment(false));
    let decision = off
        .when(
            Actor::System,
            assignment("teacher@north.edu", "kid@north.edu", true),
        )
        .unwrap();
    assert_eq!(outcome(&decision), &Outcome::Skipped);

    // A district license has it off by default.
    let mut district = Given::license(LicenseType::District, 10);
    district.add(Actor::Staff, &["teacher@north.edu"]);
    let decision = district
        .when(
            Actor::System,
            assignment("teacher@north.edu", "kid@north.edu", true),
        )
        .unwrap();
    assert_eq!(outcome(&decision), &Outcome::Skipped);

    let mut expired = teacher_license(10);
    expired.at(AFTER_EXPIRY);
    let decision = expired
        .when(
            Actor::System,
            assignment("teacher@north.edu", "kid@north.edu", true),
        )
        .unwrap();
    assert_eq!(outcome(&decision), &Outcome::Skipped);
    assert!(decision.events.is_empty());
}

#[test]
fn a_student_already_on_the_license_is_unchanged_by_an_assignment() {
    // LMS-2: the student keeps the source they came by.
    let mut given = teacher_license(10);
    given.ok(Actor::System, roster(&["kid@north.edu"]));
    let decision = given
        .when(
            Actor::System,
            assignment("teacher@north.edu", "kid@north.edu", true),
        )
        .unwrap();
    assert!(decision.events.is_empty());
    assert_eq!(
        outcome(&decision),
        &Outcome::Joined {
            status: Status::Accepted
        }
    );
    assert_eq!(
        standing(&given, "kid@north.edu"),
        Some((Status::Accepted, Source::Roster, Role::Student))
    );
}

#[test]
fn an_unknown_lms_is_invalid_argument() {
    // LMS-2: lms is one of google_classroom, schoology, canvas.
    for known in ["google_classroom", "schoology", "canvas"] {
        assert!(Lms::parse(known).is_ok(), "{known}");
    }
    let error = Lms::parse("moodle").expect_err("moodle is not an LMS we know");
    assert_eq!(error.kind(), ErrorKind::InvalidArgument);
    assert!(error.message().contains("moodle"), "{error}");
}

#[test]
fn auto_enrollment_since_gives_the_start_of_the_teachers_membership_so_the_oldest_wins() {
    // LMS-2: the server asks each of the teacher's licenses and picks the oldest membership.
    let mut older = Given::license(LicenseType::Teacher, 10);
    older.at("2026-08-10T09:00:00Z");
    older.add(Actor::Staff, &["teacher@north.edu"]);
    let mut newer = Given::license(LicenseType::Teacher, 10);
    newer.at("2026-08-20T09:00:00Z");
    newer.add(Actor::Staff, &["teacher@north.edu"]);

    let teacher = email("teacher@north.edu");
    let now = time(NOW);
    let since_older = older.license.auto_enrollment_since(&teacher, now);
    let since_newer = newer.license.auto_enrollment_since(&teacher, now);
    assert_eq!(since_older, Some(time("2026-08-10T09:00:00Z")));
    assert_eq!(since_newer, Some(time("2026-08-20T09:00:00Z")));
    assert!(since_older < since_newer);
}

#[test]
fn auto_enrollment_since_is_none_where_an_assignment_would_be_skipped() {
    // LMS-2: not accepted, not a member, auto-enrollment off, or expired.
    let mut given = teacher_license(10);
    given.add(admin(), &["invited@north.edu"]);
    let now = time(NOW);
    let since = |given: &Given, raw: &str, at: &str| {
        given.license.auto_enrollment_since(&email(raw), time(at))
    };
    assert!(since(&given, "teacher@north.edu", NOW).is_some());
    assert_eq!(since(&given, "invited@north.edu", NOW), None);
    assert_eq!(since(&given, "nobody@north.edu", NOW), None);
    assert_eq!(since(&given, "teacher@north.edu", AFTER_EXPIRY), None);
    given.ok(Actor::Staff, set_auto_enrollment(false));
    assert_eq!(
        given
            .license
            .auto_enrollment_since(&email("teacher@north.edu"), now),
        None
    );
}

// ---------------------------------------------------------------------------------------
// ROS-1: Classroom roster sync.
// ---------------------------------------------------------------------------------------

#[test]
fn a_roster_sync_adds_listed_non_members_as_roster_students() {
    // ROS-1
    let mut given = teacher_license(10);
    given.add(Actor::Staff, &["mail@north.edu"]);
    let decision = given.ok(
        Actor::System,
        roster(&[
            "kid0@north.edu",
            "mail@north.edu",
            "teacher@north.edu",
            "kid1@north.edu",
            "kid0@north.edu",
        ]),
    );
    assert_eq!(
        about(&decision),
        [
            ev("UserAdded", "kid0@north.edu"),
            ev("UserAdded", "kid1@north.edu"),
        ]
    );
    assert_eq!(outcome(&decision), &automatic(2, 0, 2));
    assert_eq!(
        standing(&given, "kid0@north.edu"),
        Some((Status::Accepted, Source::Roster, Role::Student))
    );
    // Members keep their source and role.
    assert_eq!(
        standing(&given, "mail@north.edu"),
        Some((Status::Accepted, Source::Email, Role::Other))
    );
}

#[test]
fn a_roster_sync_never_removes_anyone() {
    // ROS-1
    let mut given = teacher_license(10);
    given.ok(Actor::System, roster(&["kid0@north.edu", "kid1@north.edu"]));
    let decision = given.ok(Actor::System, roster(&["kid1@north.edu"]));
    assert!(decision.events.is_empty(), "{:?}", types(&decision));
    assert_eq!(outcome(&decision), &automatic(0, 0, 1));
    let empty = given.ok(Actor::System, roster(&[]));
    assert!(empty.events.is_empty());
    assert_eq!(given.status("kid0@north.edu"), Some(Status::Accepted));
    assert_eq!(given.status("kid1@north.edu"), Some(Status::Accepted));
}

#[test]
fn a_roster_sync_waitlists_students_once_the_seats_are_gone() {
    // ROS-1, SEAT-4
    let mut given = teacher_license(2);
    let decision = given.ok(
        Actor::System,
        roster(&["kid0@north.edu", "kid1@north.edu", "kid2@north.edu"]),
    );
    assert_eq!(
        about(&decision),
        [
            ev("UserAdded", "kid0@north.edu"),
            ev("UserWaitlisted", "kid1@north.edu"),
            ev("UserWaitlisted", "kid2@north.edu"),
        ]
    );
    assert_eq!(outcome(&decision), &automatic(1, 2, 0));
    assert_eq!(
        standing(&given, "kid1@north.edu"),
        Some((Status::Waitlisted, Source::Roster, Role::Student))
    );
}

#[test]
fn a_roster_sync_is_for_teacher_licenses_only() {
    // ROS-1
    for license_type in [
        LicenseType::School,
        LicenseType::Building,
        LicenseType::District,
        LicenseType::Pro,
        LicenseType::Work,
    ] {
        let given = Given::license(license_type, 10);
        given.refused(
            Actor::System,
            roster(&["kid@north.edu"]),
            ErrorKind::FailedPrecondition,
        );
    }
}

#[test]
fn a_roster_sync_without_a_course_id_is_invalid_argument_before_anything_else() {
    // ROS-1, ERR-1: INVALID_ARGUMENT ranks first, even on a license of the wrong type.
    for license_type in [LicenseType::Teacher, LicenseType::District] {
        let given = Given::license(license_type, 10);
        given.refused(
            Actor::System,
            LicenseCommand::SyncRoster {
                course: "  ".into(),
                students: emails(&["kid@north.edu"]),
            },
            ErrorKind::InvalidArgument,
        );
    }
}

#[test]
fn only_the_system_syncs_a_roster_and_never_on_an_expired_license() {
    // ROS-1, LIC-3
    let mut given = teacher_license(10);
    given.refused(
        admin(),
        roster(&["kid@north.edu"]),
        ErrorKind::PermissionDenied,
    );
    given.at(AFTER_EXPIRY);
    given.refused(
        Actor::System,
        roster(&["kid@north.edu"]),
        ErrorKind::FailedPrecondition,
    );
}

// ---------------------------------------------------------------------------------------
// SEAT-4 as the automatic sources meet it.
// ---------------------------------------------------------------------------------------

#[test]
fn automatic_joiners_are_promoted_in_the_order_they_were_waitlisted_keeping_their_source() {
    // SEAT-4
    let mut given = teacher_license(2);
    given.ok(Actor::System, roster(&["kid0@north.edu", "kid1@north.edu"]));
    given.ok(
        Actor::System,
        assignment("teacher@north.edu", "kid2@north.edu", true),
    );
    assert_eq!(waitlist(&given), ["kid1@north.edu", "kid2@north.edu"]);

    let decision = given.remove(admin(), &["kid0@north.edu"]);
    assert_eq!(
        about(&decision),
        [
            ev("UserRemoved", "kid0@north.edu"),
            ev("UserPromoted", "kid1@north.edu"),
        ]
    );
    assert_eq!(
        standing(&given, "kid1@north.edu"),
        Some((Status::Accepted, Source::Roster, Role::Student))
    );
    assert_eq!(waitlist(&given), ["kid2@north.edu"]);

    let decision = given.ok(Actor::Staff, LicenseCommand::ChangeSeats { seats: 3 });
    assert_eq!(
        about(&decision),
        [ev("SeatsChanged", ""), ev("UserPromoted", "kid2@north.edu")]
    );
    assert_eq!(
        standing(&given, "kid2@north.edu"),
        Some((Status::Accepted, Source::Lms, Role::Student))
    );
}

#[test]
fn a_waitlisted_user_reached_again_by_another_source_changes_nothing() {
    // SEAT-4: they keep their source and their place in line.
    let mut given = teacher_license(1);
    given.ok(Actor::System, roster(&["kid0@north.edu", "kid1@north.edu"]));
    let again = given.ok(
        Actor::System,
        assignment("teacher@north.edu", "kid0@north.edu", true),
    );
    assert!(again.events.is_empty(), "{:?}", types(&again));
    assert_eq!(
        outcome(&again),
        &Outcome::Joined {
            status: Status::Waitlisted
        }
    );
    let roster_again = given.ok(Actor::System, roster(&["kid1@north.edu", "kid0@north.edu"]));
    assert!(roster_again.events.is_empty());
    assert_eq!(outcome(&roster_again), &automatic(0, 0, 2));
    assert_eq!(waitlist(&given), ["kid0@north.edu", "kid1@north.edu"]);
    assert_eq!(
        standing(&given, "kid0@north.edu"),
        Some((Status::Waitlisted, Source::Roster, Role::Student))
    );
}

#[test]
fn a_syncs_removals_promote_earlier_waitlisted_users_before_new_ou_joiners() {
    // SEAT-4, OU-3: the seat an OU removal frees goes to whoever waited first, in the same
    // decision; the newcomer of the same sync queues behind everyone already waiting.
    let mut given = linked_district_with_seats(2);
    given.ok(
        Actor::System,
        sync_ou(vec![
            active("a@north.edu"),
            active("b@north.edu"),
            active("c@north.edu"),
        ]),
    );
    assert_eq!(given.status("c@north.edu"), Some(Status::Waitlisted));
    given.ok(
        user("k@north.edu"),
        LicenseCommand::RedeemKey {
            key: secret("key-one"),
        },
    );
    assert_eq!(waitlist(&given), ["c@north.edu", "k@north.edu"]);

    let decision = given.ok(
        Actor::System,
        sync_ou(vec![
            active("b@north.edu"),
            active("c@north.edu"),
            active("n@north.edu"),
        ]),
    );
    assert_eq!(
        about(&decision),
        [
            ev("UserRemoved", "a@north.edu"),
            ev("UserPromoted", "c@north.edu"),
            ev("UserWaitlisted", "n@north.edu"),
            ev("OuSynced", ""),
        ]
    );
    let expected = OuSyncCounts {
        removed: 1,
        waitlisted: 1,
        ..OuSyncCounts::default()
    };
    assert_eq!(ou_answer(&decision), (expected, false));
    assert_eq!(
        standing(&given, "c@north.edu"),
        Some((Status::Accepted, Source::Ou, Role::Student))
    );
    assert_eq!(waitlist(&given), ["k@north.edu", "n@north.edu"]);
}

#[test]
fn unlinking_frees_seats_for_the_waitlist_in_the_same_decision() {
    // SEAT-4, OU-6
    let mut given = linked_district_with_seats(1);
    given.ok(Actor::System, sync_ou(vec![active("kid@north.edu")]));
    given.ok(
        user("k@north.edu"),
        LicenseCommand::RedeemKey {
            key: secret("key-one"),
        },
    );
    assert_eq!(given.status("k@north.edu"), Some(Status::Waitlisted));
    let decision = given.ok(admin(), LicenseCommand::UnlinkOu);
    assert_eq!(
        about(&decision),
        [
            ev("OuUnlinked", ""),
            ev("UserRemoved", "kid@north.edu"),
            ev("UserPromoted", "k@north.edu"),
        ]
    );
    assert_eq!(
        standing(&given, "k@north.edu"),
        Some((Status::Accepted, Source::Key, Role::Other))
    );
}

#[test]
fn removed_domain_members_are_not_promised_to_return_after_the_claim_is_released() {
    // REM-1, DOM-5: will_return counts only members a later scan or sync would bring back.
    let mut given = Given::license(LicenseType::District, 10);
    given.ok(
        Actor::Staff,
        LicenseCommand::ClaimDomain {
            domain: domain_name("north.edu"),
            dedicated: false,
        },
    );
    for student in ["a@north.edu", "b@north.edu"] {
        given.ok(
            Actor::System,
            LicenseCommand::SignUp {
                email: email(student),
                role: Role::Student,
            },
        );
    }
    let while_claimed = given.remove(user(ADMIN), &["a@north.edu"]);
    assert_eq!(
        while_claimed.outcome,
        Outcome::UsersRemoved(domain::RemoveSummary {
            removed: 1,
            not_found: 0,
            will_return: 1
        })
    );
    given.ok(
        Actor::Staff,
        LicenseCommand::ReleaseDomain {
            domain: domain_name("north.edu"),
        },
    );
    let after_release = given.remove(user(ADMIN), &["b@north.edu"]);
    assert_eq!(
        after_release.outcome,
        Outcome::UsersRemoved(domain::RemoveSummary {
            removed: 1,
            not_found: 0,
            will_return: 0
        })
    );
}
