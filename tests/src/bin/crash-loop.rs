//! `cargo run --release -p tests --bin crash-loop -- --runs 100 [--seed S] [--clients N]`:
//! crash under load, repeated. Each run starts the real `license-server` binary, drives
//! commands from several clients, kills it with SIGKILL, restarts it and checks that nothing
//! acknowledged was lost or doubled (see `tests::reliability::crash`). Prints one line per
//! run and finally `N runs, 0 lost`; any finding prints its details and exits 1. Run `r`
//! uses seed `S + r`, so a failing run is repeated with `--runs 1 --seed <its seed>`.
//! `LICENSE_SERVER_BIN` names a server binary to use instead of building one.

use std::process::ExitCode;
use std::time::Instant;

use tests::reliability::crash::{CrashOptions, crash_run};
use tests::reliability::process::license_server_binary;

const USAGE: &str = "usage: crash-loop [--runs N] [--seed S] [--clients N]";

fn parse() -> Result<(u64, CrashOptions), String> {
    let mut runs = 100;
    let mut options = CrashOptions {
        seed: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        ..CrashOptions::default()
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let mut value = |name: &str| -> Result<u64, String> {
            args.next()
                .and_then(|v| v.parse().ok())
                .ok_or_else(|| format!("{name} needs a number; {USAGE}"))
        };
        match flag.as_str() {
            "--runs" => runs = value("--runs")?,
            "--seed" => options.seed = value("--seed")?,
            "--clients" => {
                options.clients = usize::try_from(value("--clients")?)
                    .map_err(|e| e.to_string())?
                    .max(1)
            }
            _ => return Err(USAGE.to_owned()),
        }
    }
    Ok((runs, options))
}

#[tokio::main]
async fn main() -> ExitCode {
    let (runs, options) = match parse() {
        Ok(parsed) => parsed,
        Err(message) => {
            eprintln!("{message}");
            return ExitCode::from(2);
        }
    };
    let binary = match license_server_binary() {
        Ok(binary) => binary,
        Err(error) => {
            eprintln!("crash-loop: {error}");
            return ExitCode::from(2);
        }
    };
    println!(
        "crash-loop: {runs} runs from seed {} with {} clients against {}",
        options.seed,
        options.clients,
        binary.display()
    );
    let started = Instant::now();
    let mut lost = 0usize;
    let mut failed_runs = 0u64;
    let (mut acknowledged, mut unanswered) = (0usize, 0usize);
    for run in 0..runs {
        let run_options = CrashOptions {
            seed: options.seed.wrapping_add(run),
            ..options.clone()
        };
        match crash_run(&binary, &run_options).await {
            Ok(report) => {
                println!("run {}: {report}", run + 1);
                lost += report.lost.len();
                acknowledged += report.acknowledged;
                unanswered += report.unanswered;
                if !report.is_clean() {
                    failed_runs += 1;
                }
            }
            Err(error) => {
                println!(
                    "run {} (seed {}): the harness could not judge: {error}",
                    run + 1,
                    run_options.seed
                );
                failed_runs += 1;
            }
        }
    }
    println!(
        "{runs} runs, {lost} lost ({acknowledged} acknowledged and {unanswered} unanswered commands checked; {failed_runs} runs with findings; {:.1} s)",
        started.elapsed().as_secs_f64()
    );
    if failed_runs == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
