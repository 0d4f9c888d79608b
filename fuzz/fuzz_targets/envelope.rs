//! Properties: `server::fuzz_checks::envelope`; no allocation over 16 MiB.
#![no_main]

#[global_allocator]
static ALLOCATOR: license_ledger_fuzz::BoundedAllocator = license_ledger_fuzz::BoundedAllocator;

libfuzzer_sys::fuzz_target!(|input: &[u8]| server::fuzz_checks::envelope(input));
