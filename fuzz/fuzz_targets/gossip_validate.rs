//! Fuzz target: see [`cactus_fuzz::gossip_validate`].

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| cactus_fuzz::gossip_validate(data));
