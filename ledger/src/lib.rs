//! The durable event log: the source of truth of the license ledger.
//!
//! One trait, [`EventLog`], and two backends: [`EmbeddedLog`] (append-only segment files
//! with a sled index, the default) and, behind the `kurrentdb` cargo feature,
//! `KurrentLog`. Both are held to one conformance suite (`tests/conformance.rs`).
//!
//! The design notes live in `docs/ledger.md`.

mod embedded;
mod envelope;
/// The checks of the fuzz target `envelope` in `fuzz/`, shared with the stable tests that
/// replay the committed corpus; not part of the ledger's API.
#[doc(hidden)]
pub mod fuzz_checks;
#[cfg(feature = "kurrentdb")]
mod kurrent;
pub mod storage;
#[doc(hidden)]
pub mod tamper;
mod types;
pub mod walk;

pub use embedded::{EmbeddedLog, EmbeddedOptions, IndexStore, open_sled};
pub use envelope::{GENESIS_HASH, decode_record_body, envelope_hash};
#[cfg(feature = "kurrentdb")]
pub use kurrent::KurrentLog;
pub use types::*;
