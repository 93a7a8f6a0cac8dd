//! Fuzz target: see [`cactus_fuzz::stream_frames`].

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| cactus_fuzz::stream_frames(data));
