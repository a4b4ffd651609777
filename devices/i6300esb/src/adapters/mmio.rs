//! vm-device glue: BAR0 as a `MutDeviceMmio`.
//!
//! Register the device on a vm-device MMIO bus at the range
//! [`I6300Esb::bar0_region`] reports; the bus passes the offset inside BAR0.

use vm_device::bus::{MmioAddress, MmioAddressOffset};
use vm_device::MutDeviceMmio;

use crate::clock::Clock;
use crate::device::I6300Esb;
use crate::events::WatchdogEvents;

impl<C: Clock, E: WatchdogEvents> MutDeviceMmio for I6300Esb<C, E> {
    fn mmio_read(&mut self, _base: MmioAddress, offset: MmioAddressOffset, data: &mut [u8]) {
        self.bar0_read(offset, data);
    }

    fn mmio_write(&mut self, _base: MmioAddress, offset: MmioAddressOffset, data: &[u8]) {
        self.bar0_write(offset, data);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use vm_device::bus::{Bus, MmioAddress, MmioRange};
    use vm_device::MutDeviceMmio;

    use crate::{Expiry, I6300Esb, ManualClock, WatchdogAction};

    #[test]
    fn bar0_through_a_vm_device_bus() {
        let clock = ManualClock::new(0);
        let dev = Arc::new(Mutex::new(I6300Esb::new(
            WatchdogAction::Poweroff,
            clock.clone(),
        )));
        let mut bus: Bus<MmioAddress, Arc<Mutex<I6300Esb<ManualClock>>>> = Bus::new();
        let range = MmioRange::new(MmioAddress(0xfebf_1000), 16).unwrap();
        bus.register(range, dev.clone()).unwrap();

        let write = |addr: u64, data: &[u8]| {
            let (range, d) = bus.device(MmioAddress(addr)).unwrap();
            let offset = addr - range.base().0;
            d.lock().unwrap().mmio_write(range.base(), offset, data);
        };
        // Unlock, preload 1 = 1 unit at 1 kHz, unlock, preload 2 = 1 unit, enable.
        for (off, val) in [(0x0c, 0x80u32), (0x0c, 0x86)] {
            write(0xfebf_1000 + off, &(val as u16).to_le_bytes());
        }
        write(0xfebf_1000, &1u32.to_le_bytes());
        for (off, val) in [(0x0c, 0x80u32), (0x0c, 0x86)] {
            write(0xfebf_1000 + off, &(val as u16).to_le_bytes());
        }
        write(0xfebf_1004, &1u32.to_le_bytes());
        dev.lock().unwrap().config_write(0x68, &[0x02]);

        clock.set(2 * 983_040);
        let mut fired: Vec<Expiry> = Vec::new();
        dev.lock().unwrap().poll(&mut fired);
        assert_eq!(fired.len(), 1);
        assert_eq!(fired[0].action, WatchdogAction::Poweroff);

        // A 16-bit read through the bus sees the timeout flag.
        let (range, d) = bus.device(MmioAddress(0xfebf_100c)).unwrap();
        let mut buf = [0u8; 2];
        d.lock().unwrap().mmio_read(range.base(), 0x0c, &mut buf);
        assert_eq!(u16::from_le_bytes(buf), 0x1200);
    }
}
