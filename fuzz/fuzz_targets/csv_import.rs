//! Properties: `domain::fuzz_checks::csv_import`; no allocation over 16 MiB.
#![no_main]

#[global_allocator]
static ALLOCATOR: license_ledger_fuzz::BoundedAllocator = license_ledger_fuzz::BoundedAllocator;

libfuzzer_sys::fuzz_target!(|input: &[u8]| domain::fuzz_checks::csv_import(input));
