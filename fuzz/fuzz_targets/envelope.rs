//! Properties: `server::fuzz_checks::envelope`.
#![no_main]

libfuzzer_sys::fuzz_target!(|input: &[u8]| server::fuzz_checks::envelope(input));
