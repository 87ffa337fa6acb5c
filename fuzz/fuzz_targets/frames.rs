//! Feeds arbitrary bytes to the frame decoders of both sides of the process
//! protocol. They must return an error, never panic or allocate without
//! bound. Run with `cargo +nightly fuzz run frames` from the repository root.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    twinpool::__fuzz_decode_frames(data);
});
