//! Embedding only the watchdog registers in a VMM that owns its PCI header code.
//!
//! Cloud Hypervisor, crosvm and similar VMMs build every PCI header with their own
//! helper and only need the device-specific part. This wrapper gives them that:
//! configuration accesses go to [`Watchdog`] first (it decodes 0x60 and 0x68 with
//! QEMU's exact width rules) and fall back to the VMM's header; BAR0 accesses go to
//! the watchdog; the VMM's timer loop polls it at its deadline.
//!
//! Run with `cargo run -p i6300esb --example embed_registers`.

use i6300esb::regs::{CLASS_CODE, DEVICE_ID, VENDOR_ID};
use i6300esb::{Clock, Expiry, ManualClock, Watchdog, WatchdogAction};

/// Stand-in for the VMM's own PCI header helper (identity only, for brevity).
struct VmmHeader([u8; 256]);

impl VmmHeader {
    fn new(vendor: u16, device: u16, class: u32) -> Self {
        let mut b = [0u8; 256];
        b[0..2].copy_from_slice(&vendor.to_le_bytes());
        b[2..4].copy_from_slice(&device.to_le_bytes());
        b[8..12].copy_from_slice(&(class << 8).to_le_bytes());
        VmmHeader(b)
    }
}

// ---- The wrapper: this is all a VMM has to write. ----

/// The i6300esb as a function of the VMM's PCI bus.
struct EsbFunction<C: Clock> {
    header: VmmHeader,
    watchdog: Watchdog,
    clock: C,
}

impl<C: Clock> EsbFunction<C> {
    fn new(action: WatchdogAction, clock: C) -> Self {
        EsbFunction {
            header: VmmHeader::new(VENDOR_ID, DEVICE_ID, CLASS_CODE),
            watchdog: Watchdog::new(action),
            clock,
        }
    }

    fn config_read(&mut self, offset: usize, data: &mut [u8]) {
        if !self.watchdog.config_read(self.clock.now_ns(), offset, data) {
            for (i, b) in data.iter_mut().enumerate() {
                *b = self.header.0.get(offset + i).copied().unwrap_or(0);
            }
        }
    }

    fn config_write(&mut self, offset: usize, data: &[u8]) {
        // The VMM's header code would handle BAR0 and the command register here.
        self.watchdog
            .config_write(self.clock.now_ns(), offset, data);
    }

    fn bar0_read(&mut self, offset: u64, data: &mut [u8]) {
        self.watchdog.mmio_read(self.clock.now_ns(), offset, data);
    }

    fn bar0_write(&mut self, offset: u64, data: &[u8]) {
        self.watchdog.mmio_write(self.clock.now_ns(), offset, data);
    }

    /// Called by the VMM's timer loop; returns the next time to call it.
    fn on_timer(&mut self, sink: &mut Vec<Expiry>) -> Option<u64> {
        self.watchdog.poll(self.clock.now_ns(), sink);
        self.watchdog.next_deadline()
    }
}

// ---- A guest driving it the way Linux's i6300esb.ko does. ----

fn main() {
    let clock = ManualClock::new(1_000);
    let mut f = EsbFunction::new(WatchdogAction::Reset, clock.clone());

    let mut id = [0u8; 4];
    f.config_read(0x00, &mut id);
    assert_eq!(u32::from_le_bytes(id), 0x25ab_8086, "header from the VMM");

    // Probe: WDTCR <- 0x0003 reads back 0x0001 (QEMU's 0x11 mask), from the watchdog.
    f.config_write(0x60, &0x0003u16.to_le_bytes());
    let mut wdtcr = [0u8; 2];
    f.config_read(0x60, &mut wdtcr);
    assert_eq!(u16::from_le_bytes(wdtcr), 0x0001);

    // set_timeout(1): unlock + PV1, unlock + PV2 (512 units each), then enable.
    for reg in [0x00u64, 0x04] {
        f.bar0_write(0x0c, &0x80u16.to_le_bytes());
        f.bar0_write(0x0c, &0x86u16.to_le_bytes());
        f.bar0_write(reg, &512u32.to_le_bytes());
    }
    f.config_write(0x68, &[0x02]);
    let stage = 512 * 983_040;
    let mut fired = Vec::new();
    assert_eq!(f.on_timer(&mut fired), Some(1_000 + 2 * stage));

    // One nanosecond short of two stages: nothing. At the deadline: the action.
    clock.set(1_000 + 2 * stage - 1);
    let next = f.on_timer(&mut fired);
    assert!(fired.is_empty());
    assert_eq!(next, Some(1_000 + 2 * stage));
    clock.set(next.unwrap());
    assert_eq!(f.on_timer(&mut fired), None, "the device reset itself");
    assert_eq!(
        fired,
        vec![Expiry {
            action: WatchdogAction::Reset,
            time_ns: 1_000 + 2 * stage,
        }]
    );

    // The VMM resets the machine; the rebooted guest reads the timeout flag.
    f.watchdog.warm_reset();
    let mut rr = [0u8; 2];
    f.bar0_read(0x0c, &mut rr);
    assert_eq!(u16::from_le_bytes(rr), 0x1200);
    println!(
        "embed_registers: fired {} at {} ns; flag reads {:#06x} after reset",
        fired[0].action,
        fired[0].time_ns,
        u16::from_le_bytes(rr)
    );
}
