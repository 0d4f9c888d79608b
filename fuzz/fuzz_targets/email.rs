//! Properties: `domain::fuzz_checks::email`.
#![no_main]

libfuzzer_sys::fuzz_target!(|input: &[u8]| domain::fuzz_checks::email(input));
