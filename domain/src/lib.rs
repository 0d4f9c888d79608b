//! The license domain of SPEC.md, as pure Rust: value types, commands, events and the two
//! aggregates that decide them (a license, and an email domain).
//!
//! This crate does no I/O, has no async, and knows nothing of protobuf or sled. The time and
//! every fact from another aggregate arrive as inputs; randomness (license keys, link
//! tokens) arrives inside the commands.

pub mod commands;
pub mod csv_import;
pub mod email_domain;
pub mod email_list;
pub mod error;
pub mod events;
/// The checks of the fuzz targets in `fuzz/`, shared with the stable tests that replay the
/// committed corpus; not part of the domain's API.
#[doc(hidden)]
pub mod fuzz_checks;
pub mod license;
mod member_table;
pub mod query;
mod shared_str;
pub mod throttle;
pub mod values;

pub use commands::*;
pub use email_domain::EmailDomain;
pub use error::{DomainError, ErrorKind};
pub use events::{Event, EventMeta};
pub use license::{License, LicenseState, Member, StatusCounts};
pub use throttle::WrongSecretThrottle;
pub use values::*;
