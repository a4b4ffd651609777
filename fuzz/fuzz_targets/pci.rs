//! The VMM's PCI configuration mechanism (0xCF8/0xCFC, every width), the host
//! bridge, the i6300esb's configuration space and BAR0 routing; the properties are
//! asserted in `vmpulse_fuzz::pci`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    vmpulse_fuzz::pci::run_pci(data);
});
