//! `cargo run --release -p tests --bin scenario -- PATH...`: plays each scenario file (or
//! folder of them) against a fresh in-process ledger, prints `PASS name` or `FAIL name`
//! with the first failing step, then `N passed, M failed`. Exits 0 only when nothing
//! failed and something passed.

use std::path::PathBuf;
use std::process::ExitCode;

#[tokio::main]
async fn main() -> ExitCode {
    let paths: Vec<PathBuf> = std::env::args_os().skip(1).map(PathBuf::from).collect();
    if paths.is_empty() {
        eprintln!("usage: scenario PATH...  (each a .json scenario file or a folder of them)");
    }
    let summary = tests::scenario::run_paths(&paths, |outcome| println!("{outcome}")).await;
    println!("{summary}");
    if summary.succeeded() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
