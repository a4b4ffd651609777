//! The port I/O and MMIO buses: vm-device [`IoManager`]s, and what vm-device leaves
//! to the VMM.
//!
//! The vCPU loop hands every I/O or MMIO exit to [`Buses`], which dispatches it
//! through vm-device: the manager finds the device whose range holds the whole
//! access and passes it the offset inside that range. Nothing in the vCPU loop
//! knows a port number or an address. Devices are vm-device devices
//! (`MutDevicePio`/`MutDeviceMmio` behind a `Mutex`, or `DevicePio`/`DeviceMmio`).
//!
//! What vm-device does not do, this module does. An access that does not lie
//! wholly inside one range (vm-device refuses it) is cut where it crosses the edge
//! of a range, as QEMU's memory core cuts an access at the edges of the regions it
//! spans: each part inside a device's range goes to that device, at its offset,
//! with the part's length. Accesses or parts nobody claims read as all ones, are
//! dropped on write, and are counted; the log hears of them rarely. (So a 4-byte
//! read at port 0xCFE gives the PCI ports a 2-byte read at 0xCFE, and reads all
//! ones from the unclaimed 0xD00-0xD01.) How a device splits an access it cannot
//! take whole is the device's business (see [`super::pci`]).
//!
//! Two managers, not one: ports are registered once, when the machine is built, and
//! never change, but a PCI BAR moves while the guest runs, from inside a port
//! access (the configuration write to 0xCFC). vm-device's `IoManager` needs `&mut`
//! to register, so the memory side lives in its own `RwLock` ([`SharedMmio`]) that
//! the PCI code write-locks while the port side is being dispatched; one manager in
//! one lock would deadlock there. See docs/DESIGN.md.
//!
//! ```
//! use std::sync::{Arc, Mutex, RwLock};
//! use vm_device::bus::{PioAddress, PioAddressOffset, PioRange};
//! use vm_device::device_manager::{IoManager, PioManager};
//! use vm_device::MutDevicePio;
//! use vmpulse_vmm::bus::Buses;
//!
//! struct Scratch(u8);
//! impl MutDevicePio for Scratch {
//!     fn pio_read(&mut self, _: PioAddress, _: PioAddressOffset, data: &mut [u8]) {
//!         data.fill(self.0)
//!     }
//!     fn pio_write(&mut self, _: PioAddress, _: PioAddressOffset, data: &[u8]) {
//!         self.0 = data[0]
//!     }
//! }
//!
//! let mut pio = IoManager::new();
//! let range = PioRange::new(PioAddress(0x80), 1).unwrap();
//! pio.register_pio(range, Arc::new(Mutex::new(Scratch(0)))).unwrap();
//! let buses = Buses::new(pio, Arc::new(RwLock::new(IoManager::new())));
//! buses.pio_write(0x80, &[0x42]);
//! let mut b = [0u8; 1];
//! buses.pio_read(0x80, &mut b);
//! assert_eq!(b, [0x42]);
//! buses.pio_read(0x81, &mut b);
//! assert_eq!(b, [0xff]);
//! assert_eq!(buses.unclaimed(), (1, 0));
//! ```

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use vm_device::bus::{MmioAddress, PioAddress};
use vm_device::device_manager::{IoManager, MmioManager, PioManager};

/// The memory bus, shared with the PCI code that moves BARs on it.
pub type SharedMmio = Arc<RwLock<IoManager>>;

/// Log the first few unclaimed accesses, then one in this many.
const LOG_EVERY: u64 = 1000;
const LOG_FIRST: u64 = 8;

/// The machine's two buses, with counts of unclaimed accesses.
pub struct Buses {
    pio: IoManager,
    mmio: SharedMmio,
    unclaimed_pio: AtomicU64,
    unclaimed_mmio: AtomicU64,
}

impl Buses {
    /// Dispatch port accesses to `pio` (fixed from now on) and memory accesses to
    /// `mmio` (which others may change).
    pub fn new(pio: IoManager, mmio: SharedMmio) -> Self {
        Buses {
            pio,
            mmio,
            unclaimed_pio: AtomicU64::new(0),
            unclaimed_mmio: AtomicU64::new(0),
        }
    }

    /// The memory bus.
    pub fn mmio(&self) -> &SharedMmio {
        &self.mmio
    }

    /// A port read; unclaimed ports read as all ones.
    pub fn pio_read(&self, port: u16, data: &mut [u8]) {
        if self.pio.pio_read(PioAddress(port), data).is_ok() {
            return;
        }
        let range_end = |addr: u64| pio_range_end(&self.pio, addr);
        for_each_part(
            u64::from(port),
            data.len(),
            range_end,
            |addr, at, claimed| {
                let part = &mut data[at];
                let done = claimed
                    && u16::try_from(addr)
                        .is_ok_and(|p| self.pio.pio_read(PioAddress(p), part).is_ok());
                if !done {
                    part.fill(0xff);
                    note_unclaimed(&self.unclaimed_pio, "pio", addr, part.len(), "read");
                }
            },
        );
    }

    /// A port write; writes to unclaimed ports are dropped.
    pub fn pio_write(&self, port: u16, data: &[u8]) {
        if self.pio.pio_write(PioAddress(port), data).is_ok() {
            return;
        }
        let range_end = |addr: u64| pio_range_end(&self.pio, addr);
        for_each_part(
            u64::from(port),
            data.len(),
            range_end,
            |addr, at, claimed| {
                let part = &data[at];
                let done = claimed
                    && u16::try_from(addr)
                        .is_ok_and(|p| self.pio.pio_write(PioAddress(p), part).is_ok());
                if !done {
                    note_unclaimed(&self.unclaimed_pio, "pio", addr, part.len(), "write");
                }
            },
        );
    }

    /// A memory read; unclaimed addresses read as all ones.
    pub fn mmio_read(&self, addr: u64, data: &mut [u8]) {
        let mmio = self.mmio.read().unwrap_or_else(|e| e.into_inner());
        if mmio.mmio_read(MmioAddress(addr), data).is_ok() {
            return;
        }
        let range_end = |a: u64| mmio_range_end(&mmio, a);
        for_each_part(addr, data.len(), range_end, |a, at, claimed| {
            let part = &mut data[at];
            if !(claimed && mmio.mmio_read(MmioAddress(a), part).is_ok()) {
                part.fill(0xff);
                note_unclaimed(&self.unclaimed_mmio, "mmio", a, part.len(), "read");
            }
        });
    }

    /// A memory write; writes to unclaimed addresses are dropped.
    pub fn mmio_write(&self, addr: u64, data: &[u8]) {
        let mmio = self.mmio.read().unwrap_or_else(|e| e.into_inner());
        if mmio.mmio_write(MmioAddress(addr), data).is_ok() {
            return;
        }
        let range_end = |a: u64| mmio_range_end(&mmio, a);
        for_each_part(addr, data.len(), range_end, |a, at, claimed| {
            let part = &data[at];
            if !(claimed && mmio.mmio_write(MmioAddress(a), part).is_ok()) {
                note_unclaimed(&self.unclaimed_mmio, "mmio", a, part.len(), "write");
            }
        });
    }

    /// How many port and memory accesses, or parts of accesses, no device claimed
    /// (an access that crosses the end of a device's range counts once for each
    /// unclaimed part).
    pub fn unclaimed(&self) -> (u64, u64) {
        (
            self.unclaimed_pio.load(Ordering::Relaxed),
            self.unclaimed_mmio.load(Ordering::Relaxed),
        )
    }
}

/// The inclusive last port of the port range holding `addr`, if any.
fn pio_range_end(pio: &IoManager, addr: u64) -> Option<u64> {
    let port = u16::try_from(addr).ok()?;
    let (range, _) = pio.pio_device(PioAddress(port))?;
    Some(u64::from(range.last().0))
}

/// The inclusive last address of the memory range holding `addr`, if any.
fn mmio_range_end(mmio: &IoManager, addr: u64) -> Option<u64> {
    let (range, _) = mmio.mmio_device(MmioAddress(addr))?;
    Some(range.last().0)
}

/// Cut an access of `len` bytes at `addr` where it crosses the edge of a device's
/// range, as QEMU's memory core cuts an access at the edges of the regions it
/// spans: `part(addr, bytes, claimed)` sees, in address order, each part that lies
/// inside one device's range (`claimed`) or in no range at all, with the part's
/// bytes as an index range into the access. `last(addr)` is the last address of
/// the range holding `addr`, if one does. Bytes past the end of the address space
/// are one unclaimed part.
fn for_each_part(
    addr: u64,
    len: usize,
    last: impl Fn(u64) -> Option<u64>,
    mut part: impl FnMut(u64, std::ops::Range<usize>, bool),
) {
    let mut at = 0;
    while at < len {
        let left = len - at;
        let Some(a) = addr.checked_add(at as u64) else {
            part(u64::MAX, at..len, false);
            return;
        };
        let (n, claimed) = match last(a) {
            Some(last) => {
                let room = (last - a).saturating_add(1);
                (usize::try_from(room).map_or(left, |r| r.min(left)), true)
            }
            None => {
                let mut n = 1;
                while n < left && a.checked_add(n as u64).is_some_and(|b| last(b).is_none()) {
                    n += 1;
                }
                (n, false)
            }
        };
        part(a, at..at + n, claimed);
        at += n;
    }
}

fn note_unclaimed(counter: &AtomicU64, bus: &str, addr: u64, len: usize, what: &str) {
    let n = counter.fetch_add(1, Ordering::Relaxed) + 1;
    if n <= LOG_FIRST || n % LOG_EVERY == 0 {
        log::warn!("{bus}: unclaimed {len}-byte {what} at {addr:#x} ({n} so far)");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;
    use vm_device::bus::{MmioAddressOffset, MmioRange, PioAddressOffset, PioRange};
    use vm_device::{MutDeviceMmio, MutDevicePio};

    #[derive(Default)]
    struct Recorder(Vec<(u64, Vec<u8>)>);
    impl MutDevicePio for Recorder {
        fn pio_read(&mut self, _: PioAddress, offset: PioAddressOffset, data: &mut [u8]) {
            data.fill(offset as u8);
        }
        fn pio_write(&mut self, _: PioAddress, offset: PioAddressOffset, data: &[u8]) {
            self.0.push((u64::from(offset), data.to_vec()));
        }
    }
    impl MutDeviceMmio for Recorder {
        fn mmio_read(&mut self, _: MmioAddress, offset: MmioAddressOffset, data: &mut [u8]) {
            data.fill(offset as u8);
        }
        fn mmio_write(&mut self, _: MmioAddress, offset: MmioAddressOffset, data: &[u8]) {
            self.0.push((offset, data.to_vec()));
        }
    }

    #[test]
    fn dispatch_by_range_with_offsets_and_unclaimed_counts() {
        let a = Arc::new(Mutex::new(Recorder::default()));
        let mut pio = IoManager::new();
        pio.register_pio(PioRange::new(PioAddress(0x3f8), 8).unwrap(), a.clone())
            .unwrap();
        let mmio: SharedMmio = Arc::new(RwLock::new(IoManager::new()));
        let buses = Buses::new(pio, mmio.clone());
        buses.pio_write(0x3fb, &[0x80]);
        let mut b = [0u8; 1];
        buses.pio_read(0x3fd, &mut b);
        assert_eq!(b, [5]);
        assert_eq!(a.lock().unwrap().0, vec![(3, vec![0x80])]);
        buses.pio_read(0x400, &mut b);
        assert_eq!(b, [0xff]);
        buses.pio_read(0x3f7, &mut b);
        assert_eq!(b, [0xff]);
        // Straddling the end of the range: the device gets the part inside it.
        let mut w = [0u8; 2];
        buses.pio_read(0x3ff, &mut w);
        assert_eq!(w, [7, 0xff]);
        assert_eq!(buses.unclaimed(), (3, 0));
        buses.pio_write(0x3f6, &[1, 2, 3, 4]);
        assert_eq!(a.lock().unwrap().0, vec![(3, vec![0x80]), (0, vec![3, 4])]);
        assert_eq!(buses.unclaimed(), (4, 0));
        // Nothing claimed anywhere: one unclaimed access, all ones.
        let mut d = [0u8; 4];
        buses.pio_read(0xfffe, &mut d);
        assert_eq!(d, [0xff; 4]);
        assert_eq!(buses.unclaimed(), (5, 0));
        a.lock().unwrap().0.clear();

        // The memory side can change while the buses are in use.
        let m = Arc::new(Mutex::new(Recorder::default()));
        let range = MmioRange::new(MmioAddress(0xfebf_0000), 16).unwrap();
        mmio.write()
            .unwrap()
            .register_mmio(range, m.clone())
            .unwrap();
        buses.mmio_write(0xfebf_0004, &[1, 2]);
        let mut d = [0u8; 4];
        buses.mmio_read(0xfebf_000c, &mut d);
        assert_eq!(d, [0x0c; 4]);
        assert_eq!(m.lock().unwrap().0, vec![(4, vec![1, 2])]);
        // An 8-byte access across both ends of the range: three parts.
        let mut q = [0u8; 8];
        buses.mmio_read(0xfebf_000e, &mut q);
        assert_eq!(q, [0x0e, 0x0e, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]);
        buses.mmio_write(0xfebe_fffc, &[9; 8]);
        assert_eq!(m.lock().unwrap().0[1], (0, vec![9; 4]));
        assert_eq!(buses.unclaimed(), (5, 2));
        mmio.write()
            .unwrap()
            .deregister_mmio(MmioAddress(0xfebf_0000));
        buses.mmio_read(0xfebf_000c, &mut d);
        assert_eq!(d, [0xff; 4]);
        buses.mmio_write(0xfebf_0000, &[0]);
        assert_eq!(buses.unclaimed(), (5, 4));
    }
}
