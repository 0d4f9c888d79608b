//! The one place where errors become gRPC statuses (ERR-1, ERR-2). Messages are for a
//! person; none repeats a secret.

use domain::{DomainError, ErrorKind};
use ledger::{DiskProblem, LedgerError};
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

/// Metadata `from_core` puts on a refusal that is not the command's own first outcome: a
/// command id's reuse, a refusal decided under a reused id, a disk that refused the write.
/// The answers cache does not keep such a refusal under the id (a retry with the same id
/// must get the first request's outcome, or be decided again once the disk has room);
/// `take_not_kept` reads and removes the mark before the client sees it.
const NOT_KEPT_METADATA: &str = "x-ledger-not-kept";

fn not_kept(mut status: Status) -> Status {
    status.metadata_mut().insert(
        NOT_KEPT_METADATA,
        tonic::metadata::MetadataValue::from_static("1"),
    );
    status
}

/// Whether `status` was marked as not the command's first outcome; removes the mark.
pub fn take_not_kept(status: &mut Status) -> bool {
    status.metadata_mut().remove(NOT_KEPT_METADATA).is_some()
}

/// A command id already used for another command (AUD-4).
pub fn command_id_reused() -> Status {
    Status::failed_precondition(
        "this command id was already used for a different command; use a new id",
    )
}

pub fn from_core(error: CoreError) -> Status {
    match error {
        CoreError::Domain(error) => from_domain(&error),
        CoreError::Reused(error) => not_kept(from_core(*error)),
        CoreError::Ledger(LedgerError::CommandIdReused { .. }) => not_kept(command_id_reused()),
        CoreError::Ledger(LedgerError::InvalidAppend(reason)) => {
            Status::resource_exhausted(format!("the command is too large for one append: {reason}"))
        }
        CoreError::Ledger(LedgerError::Disk(failure)) => {
            tracing::error!(%failure, "the event log's disk refused a write");
            not_kept(from_disk(failure.problem))
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

/// A disk the event log cannot write to. The caller learns that the command was not
/// acknowledged and that retrying will not help until an operator acts (the log takes no appends until the server
/// is restarted); the operator finds the details (which file, which OS error) in the log.
/// A full disk is RESOURCE_EXHAUSTED, the code gRPC names for "the entire file system is
/// out of space"; a read-only or failing disk is UNAVAILABLE.
pub fn from_disk(problem: DiskProblem) -> Status {
    match problem {
        DiskProblem::Full => Status::resource_exhausted(
            "the disk is full: the event log could not store the command, which was not \
             acknowledged. An operator must free space on the server's data disk and restart \
             the server; commands are refused until then. Everything acknowledged before is \
             kept; after the restart, retry with the same x-command-id and it is applied once",
        ),
        DiskProblem::ReadOnly => Status::unavailable(
            "the server's data disk is read-only: the event log could not store the command, \
             which was not acknowledged. An operator must make the disk writable and restart \
             the server; commands are refused until then. Everything acknowledged before is \
             kept; after the restart, retry with the same x-command-id and it is applied once",
        ),
        DiskProblem::Failed => Status::unavailable(
            "the server's data disk failed a write: the event log could not store the command, \
             which was not acknowledged. An operator must check the disk and restart the \
             server; commands are refused until then. Everything acknowledged before is kept; \
             after the restart, retry with the same x-command-id and it is applied once",
        ),
    }
}

pub fn invalid(message: impl Into<String>) -> Status {
    Status::invalid_argument(message.into())
}

/// ERR-3: tonic refuses a message over the size limit with OUT_OF_RANGE; SPEC names
/// RESOURCE_EXHAUSTED for it. No handler of ours answers OUT_OF_RANGE, so every such answer
/// is the size limit's and is renamed on its way out.
pub fn size_limit_as_resource_exhausted<B>(mut response: http::Response<B>) -> http::Response<B> {
    let out_of_range = (tonic::Code::OutOfRange as i32).to_string();
    if response
        .headers()
        .get("grpc-status")
        .is_some_and(|value| value.as_bytes() == out_of_range.as_bytes())
    {
        let exhausted = (tonic::Code::ResourceExhausted as i32).to_string();
        if let Ok(value) = http::HeaderValue::from_str(&exhausted) {
            response.headers_mut().insert("grpc-status", value);
        }
    }
    response
}

/// The same renaming for a status met while reading a client stream (ImportCsv).
pub fn stream_status(status: Status) -> Status {
    if status.code() == tonic::Code::OutOfRange {
        Status::resource_exhausted(format!(
            "a message of the stream is too large: {}; send the file in smaller chunks",
            status.message()
        ))
    } else {
        status
    }
}
