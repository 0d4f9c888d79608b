//! `replay-tool`: see `docs/replay-tool.md`. Thin: parse, run, exit with the code.

use std::process::ExitCode;

/// mimalloc instead of glibc's allocator, tuned by `server::allocator::tune` (why: there).
#[global_allocator]
static GLOBAL_ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> ExitCode {
    server::allocator::tune();
    let mut stdout = std::io::stdout().lock();
    let code = replay_tool::cli::run_args(std::env::args_os(), &mut stdout).await;
    ExitCode::from(code)
}
