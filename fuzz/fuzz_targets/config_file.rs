//! Fuzz target: see [`cactus_fuzz::config_file`].

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| cactus_fuzz::config_file(data));
