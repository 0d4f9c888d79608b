//! What a subcommand answers instead of success, with the exit code it maps to.

use std::fmt;

/// Exit code when everything checked out.
pub const EXIT_OK: u8 = 0;
/// Exit code when verification failed or digests differ.
pub const EXIT_FAILED: u8 = 1;
/// Exit code for usage, connection and I/O errors.
pub const EXIT_USAGE: u8 = 2;

/// An error a person can act on, and the exit code it gives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub code: u8,
    pub message: String,
}

impl Failure {
    /// A usage, connection or I/O error (exit 2).
    pub fn usage(message: impl Into<String>) -> Self {
        Self {
            code: EXIT_USAGE,
            message: message.into(),
        }
    }

    /// A failed check: a broken chain, differing digests (exit 1).
    pub fn failed(message: impl Into<String>) -> Self {
        Self {
            code: EXIT_FAILED,
            message: message.into(),
        }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Failure {}

impl From<std::io::Error> for Failure {
    fn from(e: std::io::Error) -> Self {
        Failure::usage(format!("I/O error: {e}"))
    }
}

pub type Result<T, E = Failure> = std::result::Result<T, E>;
