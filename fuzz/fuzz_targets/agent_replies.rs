//! Fuzz target `agent_replies`; the checks live in `vmpulse_fuzz::peers::run_agent_replies`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = vmpulse_fuzz::peers::run_agent_replies(data);
});
