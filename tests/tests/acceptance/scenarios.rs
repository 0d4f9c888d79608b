//! Plays every scenario file in one test, so that `cargo test --workspace` reports each
//! failing file with its failing step.

use tests::scenario::run_paths;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_scenario_passes_against_the_server() {
    let mut failures = Vec::new();
    let summary = run_paths(&[crate::scenario_folder()], |outcome| {
        if !outcome.passed() {
            failures.push(outcome.to_string());
        }
    })
    .await;
    assert!(
        summary.passed + summary.failed >= 14,
        "the public scenarios are in tests/scenarios ({summary})"
    );
    assert!(failures.is_empty(), "{}\n{summary}", failures.join("\n"));
}
