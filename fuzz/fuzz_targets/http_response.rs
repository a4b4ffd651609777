//! Fuzz target `http_response`; the checks live in `vmpulse_fuzz::peers::run_http_response`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    vmpulse_fuzz::peers::run_http_response(data);
});
