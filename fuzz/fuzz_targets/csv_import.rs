//! Properties: `domain::fuzz_checks::csv_import`.
#![no_main]

libfuzzer_sys::fuzz_target!(|input: &[u8]| domain::fuzz_checks::csv_import(input));
