//! The acceptance tests: every scenario of `tests/scenarios/` played end to end against the
//! in-process server, and the runner's own behaviour (it must be able to fail).

mod abuse;
mod crash_under_load;
mod disk_trouble;
mod fuzz_corpus;
mod runner;
mod scenarios;
mod seat_races;
mod server_behaviour;
mod tampering;

use std::path::{Path, PathBuf};

/// A request carrying `token` as its bearer credential.
pub fn with_bearer<T>(token: &str, message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    request
}

/// `request`, read only once the projections have reached `position` (`x-min-position`):
/// a test reads its own write.
pub fn at_least<T>(mut request: tonic::Request<T>, position: u64) -> tonic::Request<T> {
    request.metadata_mut().insert(
        "x-min-position",
        position.to_string().parse().expect("digits"),
    );
    request
}

/// The repository's scenario folder.
pub fn scenario_folder() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios")
}

/// Writes `text` as a scenario file in a fresh temporary folder (kept alive by the guard).
pub fn scenario_file(text: &str) -> (tempfile::TempDir, PathBuf) {
    let folder = tempfile::tempdir().expect("a temporary folder");
    let path = folder.path().join("scenario.json");
    std::fs::write(&path, text).expect("the scenario file is written");
    (folder, path)
}
