//! Properties: `server::fuzz_checks::request`.
#![no_main]

libfuzzer_sys::fuzz_target!(|input: &[u8]| server::fuzz_checks::request(input));
