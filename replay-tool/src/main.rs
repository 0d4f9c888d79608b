//! `replay-tool`: see `docs/replay-tool.md`. Thin: parse, run, exit with the code.

use std::process::ExitCode;

#[tokio::main]
async fn main() -> ExitCode {
    let mut stdout = std::io::stdout().lock();
    let code = replay_tool::cli::run_args(std::env::args_os(), &mut stdout).await;
    ExitCode::from(code)
}
