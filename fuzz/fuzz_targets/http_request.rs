//! Fuzz target: see [`cactus_fuzz::http_request`].

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| cactus_fuzz::http_request(data));
