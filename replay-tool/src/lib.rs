//! The replay tool: one CLI for auditors (verify, as-of, history, export, chart) and
//! operators (rebuild, digest). `main.rs` only parses flags; everything lives here so the
//! tests call it directly. Usage: `docs/replay-tool.md`.

pub mod chart;
pub mod cli;
pub mod error;
pub mod rebuild;
pub mod replay;
pub mod source;
pub mod verify;

pub use error::{EXIT_FAILED, EXIT_OK, EXIT_USAGE, Failure};
