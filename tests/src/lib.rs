//! The scenario runner and load generator arrive with issues 5 and 7. The public
//! scenarios are already copied into `tests/scenarios/`; until the server exists the
//! domain crate plays their commands (see `domain/tests/scenarios.rs`).
