//! PCI bus 0 behind configuration mechanism #1, and the i6300esb on it.
//!
//! The guest writes a configuration address to the dword port at 0xCF8 (enable bit
//! 31, bus 23:16, device 15:11, function 10:8, register 7:2) and then reads or
//! writes 1, 2 or 4 bytes at 0xCFC–0xCFF. Functions nobody plugged in read as all
//! ones.
//!
//! Unaligned guest accesses are delivered as QEMU (under KVM) delivers them, in
//! naturally aligned pieces ([`i6300esb::split_access`]; docs/DESIGN.md, "Unaligned
//! accesses"): a data access such as a word at 0xCFD becomes one configuration
//! access per piece (bytes at register + 1 and + 2), the part of an access past
//! 0xCFF is cut off by the bus and goes to whatever decodes 0xD00 (nothing: all
//! ones, dropped, counted as unclaimed), and BAR0 accesses reach the device in
//! pieces through `bar0_read_split`/`bar0_write_split` ([`EsbBar0`]). After every configuration write the function's memory window is looked up
//! again and the vm-device MMIO bus follows it (deregister, register), so a guest
//! that moves BAR0 (or turns memory decode off) moves (or removes) the route to the
//! device.
//!
//! The i6300esb needs nothing else from this module: the device tells the
//! watchdog's timer itself when a guest access moves its deadline (its deadline
//! listener, installed by the `WatchdogTimer` adapter), so no access here signals
//! anything.
//!
//! The byte port 0xCF9 in the middle of the address register is the chipset's reset
//! control register on PC chipsets; [`PciConfigIo`] hands byte accesses there to a
//! separate device given at construction.

use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use i6300esb::access::MAX_SPLIT_ACCESS;
use i6300esb::split_access;
use vm_device::bus::{MmioAddress, MmioAddressOffset, MmioRange, PioAddress, PioAddressOffset};
use vm_device::device_manager::MmioManager;
use vm_device::{DeviceMmio, DevicePio, MutDevicePio};

use super::bus::SharedMmio;
use super::platform::SharedEsb;

/// A device on the memory bus, as vm-device's `IoManager` holds it.
pub type MmioDevice = Arc<dyn DeviceMmio + Send + Sync>;
/// A device on the port bus, as vm-device's `IoManager` holds it.
pub type PioDevice = Arc<dyn DevicePio + Send + Sync>;

/// First port of configuration mechanism #1 (the address register).
pub const PCI_CONFIG_PORT: u16 = 0xcf8;
/// Ports the mechanism decodes: the address at 0xCF8–0xCFB, data at 0xCFC–0xCFF.
pub const PCI_CONFIG_PORTS: u16 = 8;
/// Offset of the data window inside those ports.
const DATA_OFFSET: u64 = 4;
/// Offset of the reset control byte (0xCF9) inside those ports.
const RESET_CONTROL_OFFSET: u64 = 1;
/// Bit 31 of the address: the access goes to configuration space.
const ADDRESS_ENABLE: u32 = 1 << 31;
/// Bits of the address register a guest can set (bits 30:24 and 1:0 are reserved).
const ADDRESS_MASK: u32 = 0x80ff_fffc;
/// Size of a function's configuration space.
pub const CONFIG_SPACE_SIZE: usize = 256;

/// Device/function number as the address register encodes it: device << 3 | function.
pub fn devfn(device: u8, function: u8) -> u8 {
    (device << 3) | (function & 7)
}

/// One PCI function: its configuration space and the memory window it decodes.
pub trait PciFunction: Send {
    /// Read `data.len()` bytes (1, 2 or 4) of configuration space at `offset`.
    fn config_read(&mut self, offset: usize, data: &mut [u8]);
    /// Write `data` to configuration space at `offset`.
    fn config_write(&mut self, offset: usize, data: &[u8]);
    /// The memory window `(base, size)` the function decodes now, if any.
    fn mmio_window(&self) -> Option<(u64, u64)> {
        None
    }
    /// The device serving that window.
    fn mmio_device(&self) -> Option<MmioDevice> {
        None
    }
}

struct Slot {
    function: Box<dyn PciFunction>,
    route: Option<(u64, u64)>,
}

/// Bus 0: functions by device/function number, plus the MMIO routes they decode.
pub struct PciRoot {
    slots: BTreeMap<u8, Slot>,
    mmio: SharedMmio,
}

impl PciRoot {
    /// An empty bus 0 whose memory windows go on `mmio`.
    pub fn new(mmio: SharedMmio) -> Self {
        PciRoot {
            slots: BTreeMap::new(),
            mmio,
        }
    }

    /// Plug `function` in at `devfn` (see [`devfn`]); replaces what was there.
    pub fn add(&mut self, devfn: u8, function: Box<dyn PciFunction>) {
        if let Some(old) = self.slots.remove(&devfn) {
            if let Some((base, _)) = old.route {
                self.unroute(base);
            }
        }
        self.slots.insert(
            devfn,
            Slot {
                function,
                route: None,
            },
        );
        self.refresh(devfn);
    }

    /// Configuration read; absent functions read as all ones.
    pub fn config_read(&mut self, devfn: u8, offset: usize, data: &mut [u8]) {
        match self.slots.get_mut(&devfn) {
            Some(slot) if offset + data.len() <= CONFIG_SPACE_SIZE => {
                slot.function.config_read(offset, data)
            }
            _ => data.fill(0xff),
        }
    }

    /// Configuration write; the function's MMIO route is re-evaluated afterwards.
    pub fn config_write(&mut self, devfn: u8, offset: usize, data: &[u8]) {
        match self.slots.get_mut(&devfn) {
            Some(slot) if offset + data.len() <= CONFIG_SPACE_SIZE => {
                slot.function.config_write(offset, data);
                self.refresh(devfn);
            }
            _ => {}
        }
    }

    /// Re-evaluate every function's MMIO route (after a device reset).
    pub fn refresh_all(&mut self) {
        let all: Vec<u8> = self.slots.keys().copied().collect();
        for d in all {
            self.refresh(d);
        }
    }

    /// The MMIO window currently routed to the function at `devfn`.
    pub fn route(&self, devfn: u8) -> Option<(u64, u64)> {
        self.slots.get(&devfn).and_then(|s| s.route)
    }

    fn refresh(&mut self, devfn: u8) {
        let Some(slot) = self.slots.get_mut(&devfn) else {
            return;
        };
        let wanted = slot.function.mmio_window();
        if wanted == slot.route {
            return;
        }
        let mut mmio = self.mmio.write().unwrap_or_else(|e| e.into_inner());
        if let Some((base, _)) = slot.route.take() {
            mmio.deregister_mmio(MmioAddress(base));
        }
        if let (Some((base, len)), Some(dev)) = (wanted, slot.function.mmio_device()) {
            let routed = MmioRange::new(MmioAddress(base), len)
                .and_then(|range| mmio.register_mmio(range, dev));
            match routed {
                Ok(()) => slot.route = Some((base, len)),
                Err(e) => log::warn!("pci {devfn:#04x}: memory window not routed: {e}"),
            }
        }
    }

    fn unroute(&self, base: u64) {
        self.mmio
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .deregister_mmio(MmioAddress(base));
    }
}

/// The I/O ports of configuration mechanism #1 (0xCF8–0xCFF), in front of a [`PciRoot`].
pub struct PciConfigIo {
    address: u32,
    root: PciRoot,
    reset_control: PioDevice,
    odd_accesses: u64,
}

impl PciConfigIo {
    /// Mechanism #1 for `root`; byte accesses to 0xCF9 go to `reset_control` (at
    /// offset 0 of a range based at 0xCF9).
    pub fn new(root: PciRoot, reset_control: PioDevice) -> Self {
        PciConfigIo {
            address: 0,
            root,
            reset_control,
            odd_accesses: 0,
        }
    }

    /// The bus behind the ports.
    pub fn root(&mut self) -> &mut PciRoot {
        &mut self.root
    }

    /// Power-on state of the address latch; MMIO routes re-evaluated.
    pub fn reset(&mut self) {
        self.address = 0;
        self.root.refresh_all();
    }

    /// Accesses to the address register's ports (0xCF8-0xCFB) that were neither a
    /// dword at 0xCF8 nor a byte at 0xCF9 (they read as all ones and write
    /// nothing), and empty accesses. Data accesses of any alignment are PCI
    /// accesses, not odd ones.
    pub fn odd_accesses(&self) -> u64 {
        self.odd_accesses
    }

    /// The function and register the latched address selects for a data piece at
    /// `at` (0..4) of the data window; `None` when nothing is addressed.
    fn target(&self, at: u64) -> Option<(u8, usize)> {
        if self.address & ADDRESS_ENABLE == 0 {
            return None;
        }
        let bus = (self.address >> 16) & 0xff;
        if bus != 0 {
            return None;
        }
        let devfn = ((self.address >> 8) & 0xff) as u8;
        Some((devfn, (self.address & 0xfc) as usize + at as usize))
    }
}

/// Where an access at `offset` of `len` bytes falls in the ports: the part in the
/// address register's ports (0..4) and the part in the data window (4..8), as
/// index ranges into the access's bytes. Bytes past the last port belong to
/// neither (the bus cuts them off before they get here).
fn port_parts(offset: u64, len: usize) -> (Range<usize>, Range<usize>) {
    let end = offset.saturating_add(len as u64);
    let index = |port: u64| (port.clamp(offset, end) - offset) as usize;
    let ports = u64::from(PCI_CONFIG_PORTS);
    (
        index(offset)..index(DATA_OFFSET),
        index(DATA_OFFSET)..index(ports),
    )
}

impl PciConfigIo {
    /// A read at `offset` (0..8) of the ports.
    ///
    /// A data access of any alignment is delivered as QEMU's PC host bridges
    /// deliver it: in the naturally aligned pieces [`split_access`] gives, each one
    /// configuration read at the selected register plus the piece's place in the
    /// window. A part of the access below the window goes to the address register
    /// (see [`Self::odd_accesses`]); bytes past 0xCFF read as all ones.
    pub fn read(&mut self, offset: u64, data: &mut [u8]) {
        if data.is_empty() {
            self.odd_accesses += 1;
            return;
        }
        data.fill(0xff);
        let (address, window) = port_parts(offset, data.len());
        if !address.is_empty() {
            self.read_address(offset, &mut data[address]);
        }
        if window.is_empty() {
            return;
        }
        let start = offset + window.start as u64 - DATA_OFFSET;
        let data = &mut data[window];
        for (at, len) in split_access(start, data.len()) {
            let piece = &mut data[(at - start) as usize..][..len];
            if let Some((devfn, reg)) = self.target(at) {
                self.root.config_read(devfn, reg, piece);
            }
        }
    }

    /// A write at `offset` (0..8) of the ports, delivered as [`Self::read`] says.
    pub fn write(&mut self, offset: u64, data: &[u8]) {
        if data.is_empty() {
            self.odd_accesses += 1;
            return;
        }
        let (address, window) = port_parts(offset, data.len());
        if !address.is_empty() {
            self.write_address(offset, &data[address]);
        }
        if window.is_empty() {
            return;
        }
        let start = offset + window.start as u64 - DATA_OFFSET;
        let data = &data[window];
        for (at, len) in split_access(start, data.len()) {
            let piece = &data[(at - start) as usize..][..len];
            if let Some((devfn, reg)) = self.target(at) {
                self.root.config_write(devfn, reg, piece);
            }
        }
    }

    /// A read of the address register's ports (`offset` below 4).
    fn read_address(&mut self, offset: u64, data: &mut [u8]) {
        match (offset, data.len()) {
            (0, 4) => data.copy_from_slice(&self.address.to_le_bytes()),
            (RESET_CONTROL_OFFSET, 1) => {
                let port = PioAddress(PCI_CONFIG_PORT + RESET_CONTROL_OFFSET as u16);
                self.reset_control.pio_read(port, 0, data)
            }
            _ => self.odd_accesses += 1,
        }
    }

    /// A write to the address register's ports (`offset` below 4).
    fn write_address(&mut self, offset: u64, data: &[u8]) {
        match (offset, data.len()) {
            (0, 4) => {
                let v = u32::from_le_bytes([data[0], data[1], data[2], data[3]]);
                self.address = v & ADDRESS_MASK;
            }
            (RESET_CONTROL_OFFSET, 1) => {
                let port = PioAddress(PCI_CONFIG_PORT + RESET_CONTROL_OFFSET as u16);
                self.reset_control.pio_write(port, 0, data)
            }
            _ => self.odd_accesses += 1,
        }
    }
}

impl MutDevicePio for PciConfigIo {
    fn pio_read(&mut self, _base: PioAddress, offset: PioAddressOffset, data: &mut [u8]) {
        self.read(u64::from(offset), data)
    }

    fn pio_write(&mut self, _base: PioAddress, offset: PioAddressOffset, data: &[u8]) {
        self.write(u64::from(offset), data)
    }
}

/// The host bridge at 00:00.0: an identity and nothing else (an i440FX's IDs).
pub struct HostBridge {
    config: [u8; CONFIG_SPACE_SIZE],
}

/// Vendor ID of the host bridge (Intel).
pub const HOST_BRIDGE_VENDOR: u16 = 0x8086;
/// Device ID of the host bridge (440FX).
pub const HOST_BRIDGE_DEVICE: u16 = 0x1237;

impl Default for HostBridge {
    fn default() -> Self {
        let mut config = [0u8; CONFIG_SPACE_SIZE];
        config[0..2].copy_from_slice(&HOST_BRIDGE_VENDOR.to_le_bytes());
        config[2..4].copy_from_slice(&HOST_BRIDGE_DEVICE.to_le_bytes());
        // Revision 2; class 06 (bridge), subclass 00 (host), prog-if 00.
        config[0x08] = 0x02;
        config[0x0b] = 0x06;
        HostBridge { config }
    }
}

impl PciFunction for HostBridge {
    fn config_read(&mut self, offset: usize, data: &mut [u8]) {
        data.copy_from_slice(&self.config[offset..offset + data.len()]);
    }

    fn config_write(&mut self, _offset: usize, _data: &[u8]) {
        // Nothing in the bridge's header is writable here.
    }
}

/// A record of the guest's accesses to the watchdog, in the reference trace
/// format without times (`cfg w 0x60 2 0x0003`, `mmio r 0x0c 2 0x0000`; see
/// docs/TRACE-FORMAT.md), for checking a guest against a recorded Linux run.
/// Off until [`AccessLog::start`]; while off it costs one atomic load per access.
#[derive(Clone, Default)]
pub struct AccessLog {
    on: Arc<AtomicBool>,
    lines: Arc<Mutex<Vec<String>>>,
}

impl AccessLog {
    /// Start recording (from an empty log).
    pub fn start(&self) {
        self.lines.lock().unwrap_or_else(|e| e.into_inner()).clear();
        self.on.store(true, Ordering::SeqCst);
    }

    /// Stop recording and take what was recorded.
    pub fn take(&self) -> Vec<String> {
        self.on.store(false, Ordering::SeqCst);
        std::mem::take(&mut *self.lines.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Whether the log is recording (one relaxed load: the access path asks this
    /// before doing any work for the log).
    #[inline]
    fn is_on(&self) -> bool {
        self.on.load(Ordering::Relaxed)
    }

    /// Record one access (`space` is `cfg` or `mmio`; `data` as the guest saw it).
    fn record(&self, space: &str, write: bool, offset: u64, data: &[u8]) {
        if !self.is_on() {
            return;
        }
        let value = data
            .iter()
            .rev()
            .map(|b| format!("{b:02x}"))
            .collect::<String>();
        let op = if write { 'w' } else { 'r' };
        let line = format!("{space} {op} {offset:#04x} {} 0x{value}", data.len());
        self.lines
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(line);
    }
}

/// BAR0 of the i6300esb on the MMIO bus, plus the access log.
///
/// An access of any alignment (a KVM MMIO exit carries up to 8 bytes) goes to the
/// device the way QEMU on KVM delivers it: in the naturally aligned pieces of
/// [`split_access`], through the device crate's `bar0_read_split` /
/// `bar0_write_split`. The access log records each piece as the device saw it, one
/// line per piece, as QEMU's device-level trace points (which the reference
/// traces come from) record them.
pub struct EsbBar0 {
    esb: SharedEsb,
    log: AccessLog,
}

impl EsbBar0 {
    /// Record the pieces of an access the device took (`data` as the guest saw it).
    /// The log is off except while a trace or test records: then this is one load.
    #[inline]
    fn record(&self, write: bool, offset: u64, data: &[u8]) {
        if self.log.is_on() {
            self.record_pieces(write, offset, data);
        }
    }

    #[cold]
    fn record_pieces(&self, write: bool, offset: u64, data: &[u8]) {
        if data.len() > MAX_SPLIT_ACCESS {
            // The device took none of it (and counted it).
            return;
        }
        for (at, len) in split_access(offset, data.len()) {
            let piece = &data[(at - offset) as usize..][..len];
            self.log.record("mmio", write, at, piece);
        }
    }
}

impl DeviceMmio for EsbBar0 {
    fn mmio_read(&self, _base: MmioAddress, offset: MmioAddressOffset, data: &mut [u8]) {
        self.esb
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .bar0_read_split(offset, data);
        self.record(false, offset, data);
    }

    fn mmio_write(&self, _base: MmioAddress, offset: MmioAddressOffset, data: &[u8]) {
        self.esb
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .bar0_write_split(offset, data);
        self.record(true, offset, data);
    }
}

/// The i6300esb as a PCI function: configuration space and BAR0 both go to the
/// shared device.
pub struct EsbFunction {
    esb: SharedEsb,
    bar0: Arc<EsbBar0>,
    log: AccessLog,
}

impl EsbFunction {
    /// The function for `esb`.
    pub fn new(esb: SharedEsb) -> Self {
        let log = AccessLog::default();
        let bar0 = Arc::new(EsbBar0 {
            esb: esb.clone(),
            log: log.clone(),
        });
        EsbFunction { esb, bar0, log }
    }

    /// The record of guest accesses to this function (off until started).
    pub fn access_log(&self) -> AccessLog {
        self.log.clone()
    }
}

impl PciFunction for EsbFunction {
    fn config_read(&mut self, offset: usize, data: &mut [u8]) {
        self.esb
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .config_read(offset, data);
        self.log.record("cfg", false, offset as u64, data);
    }

    fn config_write(&mut self, offset: usize, data: &[u8]) {
        self.esb
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .config_write(offset, data);
        self.log.record("cfg", true, offset as u64, data);
    }

    fn mmio_window(&self) -> Option<(u64, u64)> {
        self.esb
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .bar0_region()
    }

    fn mmio_device(&self) -> Option<MmioDevice> {
        Some(self.bar0.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bus::Buses;
    use i6300esb::{EventCounters, I6300Esb, MonotonicClock, WatchdogAction};
    use std::sync::RwLock;
    use vm_device::device_manager::IoManager;

    struct Latch(u8);
    impl MutDevicePio for Latch {
        fn pio_read(&mut self, _: PioAddress, _: PioAddressOffset, data: &mut [u8]) {
            data[0] = self.0;
        }
        fn pio_write(&mut self, _: PioAddress, _: PioAddressOffset, data: &[u8]) {
            self.0 = data[0];
        }
    }

    const ESB_DEVFN: u8 = 4 << 3;

    fn setup() -> (PciConfigIo, Buses, SharedEsb) {
        let (io, buses, esb, _) = setup_with_log();
        (io, buses, esb)
    }

    fn setup_with_log() -> (PciConfigIo, Buses, SharedEsb, AccessLog) {
        let mmio: SharedMmio = Arc::new(RwLock::new(IoManager::new()));
        let esb: SharedEsb = Arc::new(Mutex::new(I6300Esb::with_events(
            WatchdogAction::Reset,
            MonotonicClock::new(),
            Arc::new(EventCounters::default()),
        )));
        let mut root = PciRoot::new(mmio.clone());
        root.add(devfn(0, 0), Box::new(HostBridge::default()));
        let function = EsbFunction::new(esb.clone());
        let log = function.access_log();
        root.add(devfn(4, 0), Box::new(function));
        let io = PciConfigIo::new(root, Arc::new(Mutex::new(Latch(0))));
        (io, Buses::new(IoManager::new(), mmio), esb, log)
    }

    fn routed(buses: &Buses, addr: u64) -> bool {
        buses
            .mmio()
            .read()
            .unwrap()
            .mmio_device(MmioAddress(addr))
            .is_some()
    }

    fn cfg_addr(io: &mut PciConfigIo, dev: u8, reg: u32) {
        let a = ADDRESS_ENABLE | (u32::from(dev) << 11) | reg;
        io.write(0, &a.to_le_bytes());
    }

    fn cfg_read32(io: &mut PciConfigIo, dev: u8, reg: u32) -> u32 {
        cfg_addr(io, dev, reg);
        let mut b = [0u8; 4];
        io.read(4, &mut b);
        u32::from_le_bytes(b)
    }

    #[test]
    fn enumeration_finds_bridge_and_watchdog_only() {
        let (mut io, _, _) = setup();
        assert_eq!(cfg_read32(&mut io, 0, 0), 0x1237_8086);
        assert_eq!(cfg_read32(&mut io, 4, 0), 0x25ab_8086);
        for dev in [1u8, 2, 3, 5, 31] {
            assert_eq!(cfg_read32(&mut io, dev, 0), 0xffff_ffff, "device {dev}");
        }
        // Class code of the watchdog: 08 80 00 (other system peripheral).
        assert_eq!(cfg_read32(&mut io, 4, 8) >> 8, 0x088000);
        // Byte and word reads at every offset of the data window.
        cfg_addr(&mut io, 4, 0);
        let mut b = [0u8; 1];
        io.read(7, &mut b);
        assert_eq!(b, [0x25]);
        let mut w = [0u8; 2];
        io.read(6, &mut w);
        assert_eq!(u16::from_le_bytes(w), 0x25ab);
        // A word at 0xCFF: the byte at offset 3, then a byte past the window.
        io.read(7, &mut w);
        assert_eq!(w, [0x25, 0xff]);
        // The address register reads back what was latched.
        let mut a = [0u8; 4];
        io.read(0, &mut a);
        assert_eq!(u32::from_le_bytes(a), 0x8000_2000);
        // Bus 1 has nothing; disabled addresses read all ones.
        io.write(0, &(ADDRESS_ENABLE | (1 << 16)).to_le_bytes());
        let mut d = [0u8; 4];
        io.read(4, &mut d);
        assert_eq!(d, [0xff; 4]);
        io.write(0, &0u32.to_le_bytes());
        io.read(4, &mut d);
        assert_eq!(d, [0xff; 4]);
    }

    #[test]
    fn odd_accesses_to_the_ports_are_counted_not_obeyed() {
        let (mut io, _, esb) = setup();
        cfg_addr(&mut io, 4, 0x10);
        // Byte and word writes to the address register do not change it.
        io.write(0, &[0x00]);
        io.write(2, &[0x00, 0x00]);
        io.write(0, &[0x00, 0x00]);
        let mut a = [0u8; 4];
        io.read(0, &mut a);
        assert_eq!(u32::from_le_bytes(a), 0x8000_2010);
        // A word read of the address register reads all ones.
        let mut w = [0u8; 2];
        io.read(0, &mut w);
        assert_eq!(w, [0xff, 0xff]);
        assert_eq!(io.odd_accesses(), 4);
        // A dword at 0xCFA: its low half goes to the address register (odd, all
        // ones), its high half is a word of data at offset 0 of the register.
        let mut d = [0u8; 4];
        io.read(2, &mut d);
        assert_eq!(d, [0xff, 0xff, 0x00, 0x00]);
        assert_eq!(io.odd_accesses(), 5);
        // A 3-byte data access (the bus's cut of a dword at 0xCFD) is a PCI
        // access: a word at offset 0 and a byte at offset 2.
        io.write(4, &[0x10, 0x20, 0x30]);
        io.read(4, &mut d);
        assert_eq!(u32::from_le_bytes(d), 0x0030_2010);
        assert_eq!(esb.lock().unwrap().state().bar0, 0x0030_2010);
        assert_eq!(io.odd_accesses(), 5);
        // Reserved address bits are dropped.
        io.write(0, &0xff00_2013u32.to_le_bytes());
        io.read(0, &mut a);
        assert_eq!(u32::from_le_bytes(a), 0x8000_2010);
    }

    #[test]
    fn access_log_uses_the_trace_format() {
        let esb: SharedEsb = Arc::new(Mutex::new(I6300Esb::with_events(
            WatchdogAction::Reset,
            MonotonicClock::new(),
            Arc::new(EventCounters::default()),
        )));
        let mut f = EsbFunction::new(esb);
        let log = f.access_log();
        f.config_write(0x60, &0x0003u16.to_le_bytes());
        log.start();
        f.config_write(0x60, &0x0003u16.to_le_bytes());
        let mut b = [0u8; 1];
        f.config_read(0x68, &mut b);
        let mut d = [0u8; 4];
        f.config_read(0x00, &mut d);
        f.config_write(0x10, &0xfebf_0000u32.to_le_bytes());
        f.config_write(0x04, &0x0002u16.to_le_bytes());
        let bar = f.mmio_device().unwrap();
        let base = MmioAddress(0xfebf_0000);
        bar.mmio_write(base, 0x0c, &0x0080u16.to_le_bytes());
        let mut w = [0u8; 2];
        bar.mmio_read(base, 0x0c, &mut w);
        assert_eq!(
            log.take(),
            [
                "cfg w 0x60 2 0x0003",
                "cfg r 0x68 1 0x00",
                "cfg r 0x00 4 0x25ab8086",
                "cfg w 0x10 4 0xfebf0000",
                "cfg w 0x04 2 0x0002",
                "mmio w 0x0c 2 0x0080",
                "mmio r 0x0c 2 0x0000",
            ]
        );
        f.config_read(0x68, &mut b);
        assert!(log.take().is_empty(), "off after take");
    }

    #[test]
    fn reset_control_byte_is_separate_from_the_address_register() {
        let (mut io, _, _) = setup();
        cfg_addr(&mut io, 4, 0x10);
        io.write(1, &[0x06]);
        let mut b = [0u8; 1];
        io.read(1, &mut b);
        assert_eq!(b, [0x06]);
        let mut a = [0u8; 4];
        io.read(0, &mut a);
        assert_eq!(u32::from_le_bytes(a), 0x8000_2010);
    }

    #[test]
    fn moving_bar0_moves_the_mmio_route() {
        let (mut io, mmio, esb) = setup();
        // BAR0 programmed but memory decode off: no route.
        cfg_addr(&mut io, 4, 0x10);
        io.write(4, &0xfebf_0000u32.to_le_bytes());
        assert_eq!(io.root().route(ESB_DEVFN), None);
        assert!(!routed(&mmio, 0xfebf_000c));

        // Memory decode on (word write to the command register).
        cfg_addr(&mut io, 4, 0x04);
        io.write(4, &0x0002u16.to_le_bytes());
        assert_eq!(io.root().route(ESB_DEVFN), Some((0xfebf_0000, 16)));

        // Unlock and write preload 1 through the bus: it lands in the device.
        let preload1 = |esb: &SharedEsb| esb.lock().unwrap().state().watchdog.preload1;
        mmio.mmio_write(0xfebf_000c, &0x80u16.to_le_bytes());
        mmio.mmio_write(0xfebf_000c, &0x86u16.to_le_bytes());
        mmio.mmio_write(0xfebf_0000, &0x400u32.to_le_bytes());
        assert_eq!(preload1(&esb), 0x400);

        // Move BAR0: the old address is unclaimed, the new one reaches the device.
        cfg_addr(&mut io, 4, 0x10);
        io.write(4, &0xfe00_1000u32.to_le_bytes());
        assert_eq!(io.root().route(ESB_DEVFN), Some((0xfe00_1000, 16)));
        let before = mmio.unclaimed().1;
        mmio.mmio_write(0xfebf_000c, &0x80u16.to_le_bytes());
        mmio.mmio_write(0xfebf_000c, &0x86u16.to_le_bytes());
        mmio.mmio_write(0xfebf_0000, &0x123u32.to_le_bytes());
        let mut v = [0u8; 4];
        mmio.mmio_read(0xfebf_0000, &mut v);
        assert_eq!(v, [0xff; 4]);
        assert_eq!(mmio.unclaimed().1, before + 4);
        assert_eq!(preload1(&esb), 0x400);
        mmio.mmio_write(0xfe00_100c, &0x80u16.to_le_bytes());
        mmio.mmio_write(0xfe00_100c, &0x86u16.to_le_bytes());
        mmio.mmio_write(0xfe00_1000, &0x123u32.to_le_bytes());
        assert_eq!(preload1(&esb), 0x123);

        // Memory decode off again: route gone.
        cfg_addr(&mut io, 4, 0x04);
        io.write(4, &0x0000u16.to_le_bytes());
        assert_eq!(io.root().route(ESB_DEVFN), None);
        assert!(!routed(&mmio, 0xfe00_1000));

        // A warm reset of the device clears BAR0; refreshing drops any route.
        cfg_addr(&mut io, 4, 0x04);
        io.write(4, &0x0002u16.to_le_bytes());
        assert!(io.root().route(ESB_DEVFN).is_some());
        esb.lock().unwrap().warm_reset();
        io.reset();
        assert_eq!(io.root().route(ESB_DEVFN), None);
    }

    /// A function that records the configuration accesses it gets and reads each
    /// byte as its offset.
    #[derive(Clone, Default)]
    struct Recorder(Arc<Mutex<Vec<Access>>>);
    /// `('r' or 'w', offset, bytes)`.
    type Access = (char, usize, Vec<u8>);
    impl PciFunction for Recorder {
        fn config_read(&mut self, offset: usize, data: &mut [u8]) {
            for (i, b) in data.iter_mut().enumerate() {
                *b = (offset + i) as u8;
            }
            self.0.lock().unwrap().push(('r', offset, data.to_vec()));
        }
        fn config_write(&mut self, offset: usize, data: &[u8]) {
            self.0.lock().unwrap().push(('w', offset, data.to_vec()));
        }
    }

    /// The ports as the machine wires them: mechanism #1 at 0xCF8-0xCFF on a
    /// vm-device port bus, a [`Recorder`] at 00:01.0.
    fn ports_on_the_bus() -> (Buses, Arc<Mutex<PciConfigIo>>, Recorder) {
        let mmio: SharedMmio = Arc::new(RwLock::new(IoManager::new()));
        let rec = Recorder::default();
        let mut root = PciRoot::new(mmio.clone());
        root.add(devfn(1, 0), Box::new(rec.clone()));
        let io = Arc::new(Mutex::new(PciConfigIo::new(
            root,
            Arc::new(Mutex::new(Latch(0))),
        )));
        let mut pio = IoManager::new();
        let range = vm_device::bus::PioRange::new(PioAddress(PCI_CONFIG_PORT), PCI_CONFIG_PORTS);
        vm_device::device_manager::PioManager::register_pio(&mut pio, range.unwrap(), io.clone())
            .unwrap();
        (Buses::new(pio, mmio), io, rec)
    }

    #[test]
    fn unaligned_data_accesses_split_as_qemu_host_bridges_do() {
        let (buses, io, rec) = ports_on_the_bus();
        let select = |reg: u32| {
            let a = ADDRESS_ENABLE | (1 << 11) | reg;
            buses.pio_write(0xcf8, &a.to_le_bytes());
        };
        let took = || std::mem::take(&mut *rec.0.lock().unwrap());
        let r = |off: usize, v: &[u8]| ('r', off, v.to_vec());
        let w = |off: usize, v: &[u8]| ('w', off, v.to_vec());
        select(0x40);

        // (port, width, expected value, configuration accesses, unclaimed parts)
        type Case = (u16, usize, &'static [u8], Vec<Access>, u64);
        let reads: Vec<Case> = vec![
            (
                0xcfc,
                4,
                &[0x40, 0x41, 0x42, 0x43],
                vec![r(0x40, &[0x40, 0x41, 0x42, 0x43])],
                0,
            ),
            (0xcfe, 2, &[0x42, 0x43], vec![r(0x42, &[0x42, 0x43])], 0),
            // 2 bytes at 0xCFD: bytes at offsets 1 and 2.
            (
                0xcfd,
                2,
                &[0x41, 0x42],
                vec![r(0x41, &[0x41]), r(0x42, &[0x42])],
                0,
            ),
            // 4 bytes at 0xCFE: a word at offset 2; 0xD00-0xD01 read all ones.
            (
                0xcfe,
                4,
                &[0x42, 0x43, 0xff, 0xff],
                vec![r(0x42, &[0x42, 0x43])],
                1,
            ),
            // 2 bytes at 0xCFF: a byte at offset 3, and 0xD00.
            (0xcff, 2, &[0x43, 0xff], vec![r(0x43, &[0x43])], 1),
            // 4 bytes at 0xCFD: byte at 1, word at 2, and 0xD00.
            (
                0xcfd,
                4,
                &[0x41, 0x42, 0x43, 0xff],
                vec![r(0x41, &[0x41]), r(0x42, &[0x42, 0x43])],
                1,
            ),
        ];
        for (port, width, want, accesses, unclaimed) in reads {
            let before = buses.unclaimed().0;
            let mut d = vec![0u8; width];
            buses.pio_read(port, &mut d);
            assert_eq!(d, want, "{width}-byte read at {port:#x}");
            assert_eq!(took(), accesses, "{width}-byte read at {port:#x}");
            assert_eq!(buses.unclaimed().0, before + unclaimed, "{port:#x}");
        }

        // Writes split the same way (0x8000 at 0xCFD: 0x00 at 1, 0x80 at 2).
        buses.pio_write(0xcfd, &0x8000u16.to_le_bytes());
        assert_eq!(took(), [w(0x41, &[0x00]), w(0x42, &[0x80])]);
        buses.pio_write(0xcfe, &0x1122_3344u32.to_le_bytes());
        assert_eq!(took(), [w(0x42, &[0x44, 0x33])]);
        buses.pio_write(0xcff, &0x5566u16.to_le_bytes());
        assert_eq!(took(), [w(0x43, &[0x66])]);
        assert_eq!(buses.unclaimed().0, 5);
        assert_eq!(
            io.lock().unwrap().odd_accesses(),
            0,
            "data accesses are PCI accesses"
        );

        // With the enable bit clear, the pieces read all ones and go nowhere.
        buses.pio_write(0xcf8, &0x0000_0840u32.to_le_bytes());
        let mut d = [0u8; 2];
        buses.pio_read(0xcfd, &mut d);
        assert_eq!(d, [0xff, 0xff]);
        buses.pio_write(0xcfd, &[1, 2]);
        assert!(took().is_empty());
        assert_eq!(io.lock().unwrap().odd_accesses(), 0);
    }

    #[test]
    fn unaligned_bar0_accesses_through_the_bus_reach_the_device_in_pieces() {
        let (mut io, buses, esb, log) = setup_with_log();
        cfg_addr(&mut io, 4, 0x10);
        io.write(4, &0xfebf_0000u32.to_le_bytes());
        cfg_addr(&mut io, 4, 0x04);
        io.write(4, &0x0002u16.to_le_bytes());
        assert_eq!(io.root().route(ESB_DEVFN), Some((0xfebf_0000, 16)));
        let unlock_state = |esb: &SharedEsb| esb.lock().unwrap().state().watchdog.unlock_state;

        // QEMU on KVM splits unaligned accesses: a 2-byte write of 0x8000 at BAR0+0x0B is a byte of 0x00 at
        // 0x0B and one of 0x80 at 0x0C, the first step of the unlock sequence.
        log.start();
        buses.mmio_write(0xfebf_000b, &0x8000u16.to_le_bytes());
        assert_eq!(unlock_state(&esb), 1);
        assert_eq!(log.take(), ["mmio w 0x0b 1 0x00", "mmio w 0x0c 1 0x80"]);
        buses.mmio_write(0xfebf_000b, &0x8600u16.to_le_bytes());
        assert_eq!(unlock_state(&esb), 2);
        buses.mmio_write(0xfebf_0000, &0x321u32.to_le_bytes());
        assert_eq!(esb.lock().unwrap().state().watchdog.preload1, 0x321);

        // A 4-byte read at BAR0+0x0A: words at 0x0A and 0x0C (the timeout flag,
        // 0x1200), assembled little-endian.
        let mut state = esb.lock().unwrap().state();
        state.watchdog.timed_out = true;
        esb.lock().unwrap().load_state(&state).unwrap();
        log.start();
        let mut d = [0xa5u8; 4];
        buses.mmio_read(0xfebf_000a, &mut d);
        assert_eq!(u32::from_le_bytes(d), 0x1200_0000);
        assert_eq!(log.take(), ["mmio r 0x0a 2 0x0000", "mmio r 0x0c 2 0x1200"]);

        // An 8-byte read at 0x08 (a KVM exit carries up to 8): dwords at 0x08 and
        // 0x0C. Across the end of BAR0: the word at 0x0E, then all ones.
        let mut q = [0xa5u8; 8];
        buses.mmio_read(0xfebf_0008, &mut q);
        assert_eq!(q, [0; 8]);
        let before = buses.unclaimed().1;
        buses.mmio_read(0xfebf_000e, &mut d);
        assert_eq!(d, [0, 0, 0xff, 0xff]);
        assert_eq!(buses.unclaimed().1, before + 1);
        // An aligned access is one piece, itself.
        let mut w = [0u8; 2];
        buses.mmio_read(0xfebf_000c, &mut w);
        assert_eq!(u16::from_le_bytes(w), 0x1200);
    }
}
