//! Fuzz target `replay_trace`; the checks live in `vmpulse_fuzz::texts::run_trace`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    vmpulse_fuzz::texts::run_trace(data);
});
