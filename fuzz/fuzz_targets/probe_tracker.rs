//! Fuzz target `probe_tracker`; the checks live in `vmpulse_fuzz::tracker::run_tracker`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    vmpulse_fuzz::tracker::run_tracker(data);
});
