//! Given/when/then tests of SPEC §2-§10, one module per topic. Each test names the rule id
//! it proves (`// SEAT-3`), so `grep -r SEAT-3 domain/` finds it.

mod support;

mod lifecycle_and_seats;
mod sources_and_sync;
