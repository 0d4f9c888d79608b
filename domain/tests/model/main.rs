//! Whole-domain tests: the golden file of encoded events, property tests over random command
//! sequences, and the public scenarios played against the pure domain.

mod golden;
mod properties;
mod scenarios;
