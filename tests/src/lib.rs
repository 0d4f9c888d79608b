//! Black-box acceptance of the license ledger. `scenario` plays the JSON scenario files of
//! `tests/scenarios/` (the contract is `FORMAT.md` of the shared scenarios) against a real
//! server started in-process, over real gRPC clients. The load generator arrives with issue 7.

pub mod reliability;
pub mod scenario;
