//! Address-range buses for port I/O and MMIO exits.
//!
//! The vCPU loop hands every I/O or MMIO exit to a [`Bus`], which finds the device
//! whose range holds the address and passes it the offset inside that range. Nothing
//! in the vCPU loop knows a port number or an address. Accesses nobody claims read as
//! all ones, are dropped on write, and are counted; the log hears of them rarely.
//!
//! ```
//! use std::sync::{Arc, Mutex};
//! use vmpulse_vmm::bus::{Bus, BusDevice};
//!
//! struct Scratch(u8);
//! impl BusDevice for Scratch {
//!     fn read(&mut self, _offset: u64, data: &mut [u8]) { data.fill(self.0) }
//!     fn write(&mut self, _offset: u64, data: &[u8]) { self.0 = data[0] }
//! }
//!
//! let bus = Bus::new("pio");
//! bus.insert(0x80, 1, Arc::new(Mutex::new(Scratch(0)))).unwrap();
//! bus.write(0x80, &[0x42]);
//! let mut b = [0u8; 1];
//! bus.read(0x80, &mut b);
//! assert_eq!(b, [0x42]);
//! bus.read(0x81, &mut b);
//! assert_eq!(b, [0xff]);
//! assert_eq!(bus.unclaimed(), 1);
//! ```

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

/// A device on a bus: accesses arrive as an offset inside its range.
pub trait BusDevice: Send {
    /// The guest reads `data.len()` bytes at `offset`.
    fn read(&mut self, offset: u64, data: &mut [u8]);
    /// The guest writes `data` at `offset`.
    fn write(&mut self, offset: u64, data: &[u8]);
}

/// A device as buses share it.
pub type SharedDevice = Arc<Mutex<dyn BusDevice>>;

/// Errors of bus registration.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BusError {
    /// The range is empty or wraps around the address space.
    #[error("invalid range {base:#x}+{len:#x}")]
    InvalidRange {
        /// Start of the range.
        base: u64,
        /// Length of the range.
        len: u64,
    },
    /// The range overlaps one already registered.
    #[error("range {base:#x}+{len:#x} overlaps a registered device")]
    Overlap {
        /// Start of the range.
        base: u64,
        /// Length of the range.
        len: u64,
    },
}

/// Log the first few unclaimed accesses, then one in this many.
const LOG_EVERY: u64 = 1000;
const LOG_FIRST: u64 = 8;

/// Devices by address range.
pub struct Bus {
    name: &'static str,
    devices: RwLock<BTreeMap<u64, (u64, SharedDevice)>>,
    unclaimed: AtomicU64,
}

impl Bus {
    /// An empty bus; `name` appears in log lines.
    pub fn new(name: &'static str) -> Self {
        Bus {
            name,
            devices: RwLock::new(BTreeMap::new()),
            unclaimed: AtomicU64::new(0),
        }
    }

    /// Register `device` at `base..base + len`.
    pub fn insert(&self, base: u64, len: u64, device: SharedDevice) -> Result<(), BusError> {
        let end = base
            .checked_add(len)
            .filter(|_| len > 0)
            .ok_or(BusError::InvalidRange { base, len })?;
        let mut map = self.devices.write().unwrap_or_else(|e| e.into_inner());
        let before = map.range(..end).next_back();
        if let Some((&b, &(l, _))) = before {
            if b + l > base {
                return Err(BusError::Overlap { base, len });
            }
        }
        map.insert(base, (len, device));
        Ok(())
    }

    /// Remove the device registered at exactly `base`; true if there was one.
    pub fn remove(&self, base: u64) -> bool {
        let mut map = self.devices.write().unwrap_or_else(|e| e.into_inner());
        map.remove(&base).is_some()
    }

    /// The device holding `addr` and the offset of `addr` in its range.
    pub fn resolve(&self, addr: u64) -> Option<(u64, SharedDevice)> {
        let map = self.devices.read().unwrap_or_else(|e| e.into_inner());
        let (&base, (len, dev)) = map.range(..=addr).next_back()?;
        let offset = addr - base;
        (offset < *len).then(|| (offset, dev.clone()))
    }

    /// Dispatch a read; unclaimed addresses read as all ones.
    pub fn read(&self, addr: u64, data: &mut [u8]) {
        match self.resolve(addr) {
            Some((offset, dev)) => dev
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .read(offset, data),
            None => {
                data.fill(0xff);
                self.note_unclaimed(addr, data.len(), "read");
            }
        }
    }

    /// Dispatch a write; writes to unclaimed addresses are dropped.
    pub fn write(&self, addr: u64, data: &[u8]) {
        match self.resolve(addr) {
            Some((offset, dev)) => dev
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .write(offset, data),
            None => self.note_unclaimed(addr, data.len(), "write"),
        }
    }

    /// How many accesses no device claimed.
    pub fn unclaimed(&self) -> u64 {
        self.unclaimed.load(Ordering::Relaxed)
    }

    fn note_unclaimed(&self, addr: u64, len: usize, what: &str) {
        let n = self.unclaimed.fetch_add(1, Ordering::Relaxed) + 1;
        if n <= LOG_FIRST || n % LOG_EVERY == 0 {
            log::warn!(
                "{}: unclaimed {len}-byte {what} at {addr:#x} ({n} so far)",
                self.name
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Recorder(Vec<(u64, Vec<u8>)>);
    impl BusDevice for Recorder {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            data.fill(offset as u8);
        }
        fn write(&mut self, offset: u64, data: &[u8]) {
            self.0.push((offset, data.to_vec()));
        }
    }

    #[test]
    fn dispatch_by_range_with_offsets() {
        let bus = Bus::new("test");
        let a = Arc::new(Mutex::new(Recorder(Vec::new())));
        bus.insert(0x3f8, 8, a.clone()).unwrap();
        bus.write(0x3fb, &[0x80]);
        let mut b = [0u8; 1];
        bus.read(0x3fd, &mut b);
        assert_eq!(b, [5]);
        assert_eq!(a.lock().unwrap().0, vec![(3, vec![0x80])]);
        bus.read(0x400, &mut b);
        assert_eq!(b, [0xff]);
        bus.read(0x3f7, &mut b);
        assert_eq!(b, [0xff]);
        assert_eq!(bus.unclaimed(), 2);
    }

    #[test]
    fn overlaps_and_bad_ranges_are_refused() {
        let bus = Bus::new("test");
        let d = || Arc::new(Mutex::new(Recorder(Vec::new())));
        bus.insert(0x100, 0x10, d()).unwrap();
        assert_eq!(
            bus.insert(0x108, 0x10, d()),
            Err(BusError::Overlap {
                base: 0x108,
                len: 0x10
            })
        );
        assert_eq!(
            bus.insert(0xf8, 0x9, d()),
            Err(BusError::Overlap {
                base: 0xf8,
                len: 0x9
            })
        );
        bus.insert(0xf8, 0x8, d()).unwrap();
        bus.insert(0x110, 0x8, d()).unwrap();
        assert!(bus.insert(0x200, 0, d()).is_err());
        assert!(bus.insert(u64::MAX, 2, d()).is_err());
        assert!(bus.remove(0x100));
        assert!(!bus.remove(0x100));
        bus.insert(0x100, 0x10, d()).unwrap();
    }
}
