//! Fuzz target: see [`cactus_fuzz::wire_decode`].

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| cactus_fuzz::wire_decode(data));
