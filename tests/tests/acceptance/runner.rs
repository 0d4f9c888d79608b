//! The runner itself: it reports a wrong expectation with its step, refuses files it does
//! not understand, and its binary prints and exits as FORMAT.md says.

use std::process::Command;

use serde_json::json;
use tests::scenario::{Failure, run_file};

fn issue_then_read(expected_seats: u64) -> String {
    json!({"name": "issue and read", "steps": [
        {"as": "staff", "do": "IssueLicense", "with": {"license": "L1", "type": "school", "seats": 5,
            "valid_from": "2026-08-01T00:00:00Z", "valid_until": "2027-07-31T23:59:59Z", "admins": ["a@north.edu"]}},
        {"as": "staff", "query": "GetLicense", "with": {"license": "L1"},
            "expect": {"result": {"id": "L1", "seats": expected_seats, "expired": false, "domains": []}}}
    ]})
    .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_matching_scenario_passes() {
    let (_folder, path) = crate::scenario_file(&issue_then_read(5));
    let outcome = run_file(&path).await;
    assert!(outcome.passed(), "{outcome}");
    assert_eq!(outcome.to_string(), "PASS issue and read");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_expectation_fails_with_its_step() {
    let (_folder, path) = crate::scenario_file(&issue_then_read(6));
    let outcome = run_file(&path).await;
    let Some(Failure::Step(step)) = &outcome.failure else {
        panic!("a step failure, not {outcome}");
    };
    assert_eq!(step.index, 1, "{outcome}");
    assert_eq!(step.request["query"], json!("GetLicense"));
    assert_eq!(step.expected["result"]["seats"], json!(6));
    assert!(step.actual.starts_with("OK "), "{outcome}");
    assert!(
        step.reason.contains("result.seats: expected 6, got 5"),
        "{outcome}"
    );
    assert!(
        outcome.to_string().starts_with("FAIL issue and read\n"),
        "{outcome}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_code_fails_with_the_refusal_shown() {
    let text = json!({"name": "anonymous reads", "steps": [
        {"as": "anonymous", "query": "GetLicense", "with": {"license": "L1"}}
    ]})
    .to_string();
    let (_folder, path) = crate::scenario_file(&text);
    let outcome = run_file(&path).await;
    let Some(Failure::Step(step)) = &outcome.failure else {
        panic!("a step failure, not {outcome}");
    };
    assert_eq!(step.index, 0);
    assert!(step.actual.starts_with("UNAUTHENTICATED: "), "{outcome}");
    assert_eq!(step.reason, "expected OK, got UNAUTHENTICATED");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn placeholders_are_read_through_the_api() {
    // A key read as staff opens the license; a wrong variable cannot be resolved.
    let text = json!({"name": "key", "steps": [
        {"as": "staff", "do": "IssueLicense", "with": {"license": "T1", "type": "teacher", "seats": 2,
            "valid_from": "2026-08-01T00:00:00Z", "valid_until": "2027-07-31T23:59:59Z", "admins": ["t@north.edu"]}},
        {"let": {"old": "${key:T1}"}},
        {"as": "s@gmail.com", "do": "RedeemLicenseKey", "with": {"key": "${old}"},
            "expect": {"result": {"license": "T1", "status": "accepted"}}},
        {"as": "s@gmail.com", "do": "RedeemLicenseKey", "with": {"key": "${never_bound}"}}
    ]})
    .to_string();
    let (_folder, path) = crate::scenario_file(&text);
    let outcome = run_file(&path).await;
    let Some(Failure::Step(step)) = &outcome.failure else {
        panic!("a step failure, not {outcome}");
    };
    assert_eq!(step.index, 3, "{outcome}");
    assert!(step.reason.contains("${never_bound}"), "{outcome}");
}

#[tokio::test]
async fn unknown_commands_and_fields_fail_before_any_call() {
    for (step, reason) in [
        (
            json!({"as": "staff", "do": "IssueLicence"}),
            "unknown command 'IssueLicence'",
        ),
        (
            json!({"as": "staff", "query": "GetLicense", "with": {"licence": "L1"}}),
            "unknown field 'licence'",
        ),
        (
            json!({"as": "staff", "query": "GetLicense", "expected": {}}),
            "unknown field 'expected'",
        ),
    ] {
        let text = json!({"name": "typo", "steps": [{"let": {"a": "b"}}, step]}).to_string();
        let (_folder, path) = crate::scenario_file(&text);
        let outcome = run_file(&path).await;
        let Some(Failure::Invalid(error)) = &outcome.failure else {
            panic!("an invalid file, not {outcome}");
        };
        assert_eq!(error.step, Some(1), "{outcome}");
        assert!(error.reason.contains(reason), "{outcome}");
    }
}

#[tokio::test]
async fn an_unreadable_file_fails() {
    let folder = tempfile::tempdir().unwrap();
    let outcome = run_file(&folder.path().join("missing.json")).await;
    assert!(
        matches!(outcome.failure, Some(Failure::Invalid(_))),
        "{outcome}"
    );
    let (_folder, path) = crate::scenario_file("{\"name\": ");
    let outcome = run_file(&path).await;
    assert!(outcome.to_string().contains("not valid JSON"), "{outcome}");
}

#[test]
fn the_binary_reports_failures_and_exits_non_zero() {
    let (folder, path) = crate::scenario_file(
        &json!({"name": "typo", "steps": [{"as": "staff", "do": "Nope"}]}).to_string(),
    );
    let output = Command::new(env!("CARGO_BIN_EXE_scenario"))
        .arg(&path)
        .arg(folder.path().join("missing.json"))
        .output()
        .expect("the scenario binary runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(1), "{stdout}");
    assert!(stdout.starts_with("FAIL typo\n"), "{stdout}");
    assert!(stdout.contains("unknown command 'Nope'"), "{stdout}");
    assert_eq!(
        stdout.lines().last(),
        Some("0 passed, 2 failed"),
        "{stdout}"
    );

    let nothing = Command::new(env!("CARGO_BIN_EXE_scenario"))
        .output()
        .expect("the scenario binary runs");
    assert_eq!(nothing.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&nothing.stdout).trim(),
        "0 passed, 0 failed"
    );
}

#[test]
fn the_binary_exits_zero_when_every_file_passes() {
    let (folder, _path) = crate::scenario_file(&issue_then_read(5));
    let output = Command::new(env!("CARGO_BIN_EXE_scenario"))
        .arg(folder.path())
        .output()
        .expect("the scenario binary runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(stdout, "PASS issue and read\n1 passed, 0 failed\n");
    assert_eq!(output.status.code(), Some(0), "{stdout}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_imports_stream_in_chunks_and_lists_follow_every_page() {
    // About 100 KB of CSV (two data chunks) and 3,500 rows (four ListUsers pages).
    const USERS: usize = 3_500;
    let mut csv = String::from("Name,Email\n");
    for index in 0..USERS {
        csv.push_str(&format!(
            "Student number {index:05},student.{index:05}@north.edu\n"
        ));
    }
    assert!(csv.len() > tests::scenario::session::CSV_CHUNK_BYTES);
    let text = json!({"name": "many rows", "steps": [
        {"as": "staff", "do": "IssueLicense", "with": {"license": "L1", "type": "school", "seats": 5000,
            "valid_from": "2026-08-01T00:00:00Z", "valid_until": "2027-07-31T23:59:59Z", "admins": ["admin@north.edu"]}},
        {"as": "staff", "do": "GrantDomainAdmin", "with": {"domain": "north.edu", "email": "admin@north.edu"}},
        {"as": "admin@north.edu", "do": "ImportCsv", "with": {"license": "L1", "mode": "add", "csv": csv},
            "expect": {"result": {"added": USERS, "invalid_count": 0, "invalid": []}}},
        {"as": "admin@north.edu", "query": "ListUsers", "with": {"license": "L1"},
            "expect": {"result": {"users": {"$len": USERS}, "more": false}}},
        {"as": "admin@north.edu", "query": "ListUsers", "with": {"license": "L1", "page_size": 1000},
            "expect": {"result": {"users": {"$len": 1000}, "more": true}}},
        {"as": "admin@north.edu", "query": "ListUsers", "with": {"license": "L1", "pattern": "%.03499@%"},
            "expect": {"result": {"users": [{"email": "student.03499@north.edu"}], "more": false}}}
    ]})
    .to_string();
    let (_folder, path) = crate::scenario_file(&text);
    let outcome = run_file(&path).await;
    assert!(outcome.passed(), "{outcome}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_and_history_answers_show_every_field() {
    // The clock moves a day per step, so each day's bucket holds one change.
    let text = json!({"name": "usage and history", "steps": [
        {"as": "staff", "do": "IssueLicense", "with": {"license": "L1", "type": "school", "seats": 5,
            "valid_from": "2026-08-01T00:00:00Z", "valid_until": "2027-07-31T23:59:59Z", "admins": ["admin@north.edu"]}},
        {"as": "staff", "do": "GrantDomainAdmin", "with": {"domain": "north.edu", "email": "admin@north.edu"}},
        {"as": "admin@north.edu", "do": "AddUsersByEmail", "with": {"license": "L1", "emails": "a@north.edu"}},
        {"at": "2026-09-02T10:00:00Z", "as": "admin@north.edu", "do": "ImportCsv",
            "with": {"license": "L1", "mode": "add", "csv": "Email\nb@north.edu\n"}},
        {"at": "2026-09-03T10:00:00Z", "as": "admin@north.edu", "do": "RemoveUsers",
            "with": {"license": "L1", "emails": ["a@north.edu"]}, "expect": {"result": {"removed": 1, "not_found": 0, "will_return": 0}}},
        {"as": "admin@north.edu", "query": "GetUsage",
            "with": {"license": "L1", "from": "2026-09-01T00:00:00Z", "to": "2026-09-04T00:00:00Z", "bucket": "day"},
            "expect": {"result": {"buckets": [
                {"start": "2026-09-01T00:00:00Z", "users_count": 1, "added": {"email": 1}, "removed": {}},
                {"start": "2026-09-02T00:00:00Z", "users_count": 2, "added": {"csv": 1}, "removed": {}},
                {"start": "2026-09-03T00:00:00Z", "users_count": 1, "added": {}, "removed": {"email": 1}}
            ]}}},
        {"as": "admin@north.edu", "query": "History", "with": {"license": "L1"},
            "expect": {"result": {"events": [
                {"type": "LicenseIssued", "actor": "staff", "email": "", "stream": "license-L1", "change": {"seats": 5}},
                {"type": "UserAdded", "actor": "admin@north.edu", "email": "a@north.edu", "change": {"source": "email"}},
                {"type": "UserAdded", "email": "b@north.edu", "at": "2026-09-02T10:00:00Z", "change": {"source": "csv"}},
                {"type": "UserRemoved", "email": "a@north.edu", "at": "2026-09-03T10:00:00Z"}
            ]}}}
    ]})
    .to_string();
    let (_folder, path) = crate::scenario_file(&text);
    let outcome = run_file(&path).await;
    assert!(outcome.passed(), "{outcome}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_let_step_with_at_moves_the_clock() {
    // FORMAT.md: the clock is moved before any step that names `at`. The add is refused
    // only if the `let` step moved the clock past the license's end (LIC-3).
    let (_folder, path) = crate::scenario_file(
        r#"{"name": "let moves the clock", "steps": [
            {"as": "staff", "do": "IssueLicense", "with": {"license": "L1", "type": "school", "seats": 5,
              "valid_from": "2026-08-01T00:00:00Z", "valid_until": "2027-07-31T23:59:59Z", "admins": ["a@north.edu"]}},
            {"let": {"key": "${key:L1}"}, "at": "2027-08-01T00:00:00Z"},
            {"as": "staff", "do": "AddUsersByEmail", "with": {"license": "L1", "emails": "b@north.edu"},
              "expect": {"code": "FAILED_PRECONDITION"}}
        ]}"#,
    );
    let outcome = run_file(&path).await;
    assert!(outcome.passed(), "{outcome}");
}
