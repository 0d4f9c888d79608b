//! The license domain of SPEC.md, as pure Rust: value types, commands, events and the two
//! aggregates that decide them (a license, and an email domain).
//!
//! This crate does no I/O, has no async, and knows nothing of protobuf or sled. The time and
//! every fact from another aggregate arrive as inputs; randomness (license keys, link
//! tokens) arrives inside the commands.

pub mod csv_import;
pub mod error;
pub mod values;

pub use error::{DomainError, ErrorKind};
pub use values::*;
