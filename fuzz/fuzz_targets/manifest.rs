//! Fuzz target `manifest`; the checks live in `vmpulse_fuzz::texts::run_manifest`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    vmpulse_fuzz::texts::run_manifest(data);
});
