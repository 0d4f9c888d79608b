//! The refusals a decision can give. Each variant is one gRPC code of SPEC ERR-1; only the
//! server turns them into `tonic::Status`.

/// A refused command. Its message is for a person: it says what was wrong and what to do,
/// and never repeats a secret.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DomainError {
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    PermissionDenied(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("{0}")]
    AlreadyExists(String),
    #[error("{0}")]
    ResourceExhausted(String),
}

/// The order ERR-1 gives when several refusals apply: the lowest rank wins.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum ErrorKind {
    InvalidArgument,
    NotFound,
    PermissionDenied,
    FailedPrecondition,
    AlreadyExists,
    ResourceExhausted,
}

impl DomainError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::InvalidArgument(_) => ErrorKind::InvalidArgument,
            Self::NotFound(_) => ErrorKind::NotFound,
            Self::PermissionDenied(_) => ErrorKind::PermissionDenied,
            Self::FailedPrecondition(_) => ErrorKind::FailedPrecondition,
            Self::AlreadyExists(_) => ErrorKind::AlreadyExists,
            Self::ResourceExhausted(_) => ErrorKind::ResourceExhausted,
        }
    }

    pub fn message(&self) -> &str {
        match self {
            Self::InvalidArgument(m)
            | Self::NotFound(m)
            | Self::PermissionDenied(m)
            | Self::FailedPrecondition(m)
            | Self::AlreadyExists(m)
            | Self::ResourceExhausted(m) => m,
        }
    }
}
