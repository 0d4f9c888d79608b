//! The replay tool arrives with issue 6. Until then it says so instead of pretending.

fn main() {
    eprintln!("replay-tool: not built yet (issue 6); see README.md");
    std::process::exit(2);
}
