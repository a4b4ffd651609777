//! Random guest accesses, time steps, pause/resume, resets and snapshots against
//! the i6300esb model; the invariants are asserted in `vmpulse_fuzz::run`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    vmpulse_fuzz::run(&vmpulse_fuzz::decode(data));
});
