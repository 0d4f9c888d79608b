//! The one place where errors become gRPC statuses (ERR-1, ERR-2). Messages are for a
//! person; none repeats a secret.

use domain::{DomainError, ErrorKind};
use ledger::LedgerError;
use tonic::Status;

use crate::core::CoreError;

pub fn from_domain(error: &DomainError) -> Status {
    let message = error.message().to_owned();
    match error.kind() {
        ErrorKind::InvalidArgument => Status::invalid_argument(message),
        ErrorKind::NotFound => Status::not_found(message),
        ErrorKind::PermissionDenied => Status::permission_denied(message),
        ErrorKind::FailedPrecondition => Status::failed_precondition(message),
        ErrorKind::AlreadyExists => Status::already_exists(message),
        ErrorKind::ResourceExhausted => Status::resource_exhausted(message),
    }
}

pub fn from_core(error: CoreError) -> Status {
    match error {
        CoreError::Domain(error) => from_domain(&error),
        CoreError::Ledger(LedgerError::CommandIdReused { .. }) => Status::failed_precondition(
            "this command id was already used for a different command; use a new id",
        ),
        CoreError::Ledger(LedgerError::InvalidAppend(reason)) => {
            Status::resource_exhausted(format!("the command is too large for one append: {reason}"))
        }
        CoreError::Ledger(error) => {
            tracing::error!(%error, "ledger failure");
            Status::unavailable("the event log is unavailable; nothing was applied, try again")
        }
        CoreError::Contended => {
            Status::aborted("the license kept changing while the command was decided; try again")
        }
        CoreError::Decode(reason) => {
            tracing::error!(%reason, "undecodable event");
            Status::internal("an event in the log cannot be read; an operator must look")
        }
    }
}

pub fn invalid(message: impl Into<String>) -> Status {
    Status::invalid_argument(message.into())
}
