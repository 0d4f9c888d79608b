//! Reliability harnesses of issue 8 that the acceptance tests and the `crash-loop` binary
//! share: the real `license-server` binary as a child process (`process`), and crash under
//! load (`crash`): several clients drive commands, the server is killed with SIGKILL, and
//! after a restart nothing acknowledged may be lost or doubled.

pub mod crash;
pub mod process;

/// What stops a harness from judging the server (as opposed to a finding about it, which a
/// harness reports in its outcome).
#[derive(Debug, thiserror::Error)]
pub enum HarnessError {
    #[error("the license-server binary: {0}")]
    Binary(String),
    #[error("the server: {0}")]
    Server(String),
    #[error("a harness call failed: {0}")]
    Call(String),
    #[error("cannot connect: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    #[error("reading the log: {0}")]
    Ledger(#[from] ledger::LedgerError),
    #[error("replay-tool: {0}")]
    Replay(String),
}

impl From<tonic::Status> for HarnessError {
    fn from(status: tonic::Status) -> Self {
        Self::Call(format!("{:?}: {}", status.code(), status.message()))
    }
}

impl From<replay_tool::Failure> for HarnessError {
    fn from(failure: replay_tool::Failure) -> Self {
        Self::Replay(failure.message)
    }
}
