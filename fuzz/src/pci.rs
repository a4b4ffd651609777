//! The `pci` target: the VMM's PCI configuration mechanism #1 (the 0xCF8 address
//! latch and the 0xCFC–0xCFF data window) in front of bus 0 with the host bridge at
//! 00:00.0 and the i6300esb at 00:04.0, and the MMIO route that follows BAR0.
//!
//! Input is a sequence of 8-byte operations (see [`PciOp::decode`]): port reads and
//! writes of every width (1 to 4 bytes) at every port of the mechanism, latch
//! writes aimed at present and absent functions, BAR0 programming and sizing, MMIO
//! accesses around the route, and warm resets. After every operation [`PciRig`]
//! checks the properties against its own model of the mechanism:
//!
//! - a dword read of 0xCF8 returns the last dword written there, reserved bits
//!   (30:24, 1:0) cleared; no other access changes it;
//! - a byte at 0xCF9 goes to the reset control register and only there;
//! - port accesses go through the VMM's vm-device port bus, which cuts an access at
//!   0xD00 (the end of the mechanism's ports): the part past it reads all ones and
//!   counts as one unclaimed access;
//! - the part of an access below 0xCFC that is neither a dword at 0xCF8 nor a byte
//!   at 0xCF9 reads all ones and is counted as odd;
//! - the part in the data window 0xCFC-0xCFF, of any alignment, is delivered in the
//!   naturally aligned pieces QEMU's host bridges use (each piece: what is left,
//!   at most 4 bytes, at most its address's alignment, rounded down to a power of
//!   two; the model computes them on its own); each piece reads the selected
//!   register at `(address & 0xFC) + (piece - 0xCFC)`: the host bridge's constant
//!   header, the i6300esb's configuration space, or all ones with the enable bit
//!   clear, a bus other than 0 or an absent function;
//! - writing all ones to BAR0 reads back `0xFFFF_FFF0` (16 bytes, 32-bit memory);
//! - the MMIO route equals the device's `bar0_region()`, and no address a route
//!   ever had stays claimed once the route moved away or memory decode went off;
//! - an MMIO read returns, for its part inside the route, what the device's BAR0
//!   returns for that part (through the device crate's `bar0_read_split`, so
//!   unaligned reads too), and all ones for a part outside it, counted as one
//!   unclaimed access.
//!
//! The VMM types it drives are confined to [`PciRig::new`] and a few calls, so a
//! change in how the VMM wires its buses touches this file only there.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex, RwLock};

use i6300esb::adapters::timer::MonotonicClock;
use i6300esb::{EventCounters, I6300Esb, WatchdogAction};
use vm_device::bus::{MmioAddress, PioAddress, PioAddressOffset, PioRange};
use vm_device::device_manager::{IoManager, MmioManager, PioManager};
use vm_device::MutDevicePio;
use vmpulse::vmm::bus::{Buses, SharedMmio};
use vmpulse::vmm::machine::SharedEsb;
use vmpulse::vmm::pci::{
    devfn, EsbFunction, HostBridge, PciConfigIo, PciFunction, PciRoot, PCI_CONFIG_PORT,
    PCI_CONFIG_PORTS,
};

/// Port offsets inside the mechanism's 8 ports (0xCF8 + offset).
const ADDRESS_PORT: u8 = 0;
/// Ports the mechanism decodes; the bus cuts accesses off at the last one.
const PORTS: u8 = 8;
const RESET_CONTROL_PORT: u8 = 1;
const DATA_PORT: u8 = 4;
/// Enable bit of the address latch.
const ENABLE: u32 = 1 << 31;
/// The bits of the latch a guest can set.
const LATCH_MASK: u32 = 0x80ff_fffc;
/// Where the watchdog sits.
const ESB_DEVICE: u8 = 4;
/// BAR0 and the command register in configuration space.
const BAR0: u32 = 0x10;
const COMMAND: u32 = 0x04;
const COMMAND_MEMORY: u32 = 0x0002;
/// BAR0's size mask as read back after writing all ones: 16 bytes, 32-bit memory.
const BAR0_SIZE_MASK: u32 = 0xffff_fff0;
/// An address well away from any BAR a guest is likely to pick, for MMIO accesses
/// while nothing is routed.
const SPARE_MMIO: u64 = 0xfed0_0000;

/// One operation (8 bytes of input each).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PciOp {
    /// A raw dword write to 0xCF8.
    Latch(u32),
    /// A dword write to 0xCF8 selecting `device`.`function` register `register` on
    /// bus 0, enable bit set.
    Select {
        /// Device number (0–31).
        device: u8,
        /// Function number (0–7).
        function: u8,
        /// Register (low two bits are dropped by the latch).
        register: u8,
    },
    /// Read `width` bytes (1–4) at port 0xCF8 + `port` (0–7).
    Read {
        /// Port offset.
        port: u8,
        /// Access width.
        width: u8,
    },
    /// Write `width` bytes of `value` at port 0xCF8 + `port`.
    Write {
        /// Port offset.
        port: u8,
        /// Access width.
        width: u8,
        /// Value (little-endian, truncated to the width).
        value: u32,
    },
    /// Program BAR0 with `base` through the mechanism, then set or clear memory decode.
    ProgramBar {
        /// The value written to BAR0.
        base: u32,
        /// Memory decode on afterwards.
        decode: bool,
    },
    /// Size BAR0 as firmware does: write all ones, read back, restore.
    SizeBar,
    /// Read `width` bytes of MMIO at `offset` from the routed BAR0 (or a spare
    /// address when nothing is routed).
    Mmio {
        /// Offset from the route's base (may fall outside the 16 bytes).
        offset: u8,
        /// Access width.
        width: u8,
        /// Write `value` instead of reading.
        write: Option<u32>,
    },
    /// A warm reset of the watchdog and of the mechanism.
    Reset,
}

impl PciOp {
    /// Decode 8 bytes: `[kind, a, b, c, v0, v1, v2, v3]`.
    pub fn decode(b: [u8; 8]) -> PciOp {
        let value = u32::from_le_bytes([b[4], b[5], b[6], b[7]]);
        let width = 1 + b[2] % 4;
        match b[0] % 9 {
            0 => PciOp::Latch(value),
            1 => PciOp::Select {
                // Mostly the two present devices, sometimes any other.
                device: match b[1] % 4 {
                    0 => 0,
                    1 | 2 => ESB_DEVICE,
                    _ => (b[1] >> 2) % 32,
                },
                function: if b[1] & 0x80 != 0 { b[2] % 8 } else { 0 },
                register: b[3],
            },
            2 => PciOp::Read {
                port: b[1] % 8,
                width,
            },
            3 => PciOp::Write {
                port: b[1] % 8,
                width,
                value,
            },
            4 => PciOp::ProgramBar {
                base: value,
                decode: b[1] & 1 == 1,
            },
            5 => PciOp::SizeBar,
            6 => PciOp::Mmio {
                offset: b[1],
                width,
                write: None,
            },
            7 => PciOp::Mmio {
                offset: b[1],
                width,
                write: Some(value),
            },
            _ => PciOp::Reset,
        }
    }

    /// The 8 bytes [`PciOp::decode`] turns back into this operation.
    pub fn encode(self) -> [u8; 8] {
        let (kind, a, b, c, v) = match self {
            PciOp::Latch(v) => (0, 0, 0, 0, v),
            PciOp::Select {
                device,
                function,
                register,
            } => {
                let (a, b) = match (device, function) {
                    (0, 0) => (0, 0),
                    (ESB_DEVICE, 0) => (1, 0),
                    (d, f) => (0x80 | ((d % 32) << 2) | 3, f % 8),
                };
                (1, a, b, register, 0)
            }
            PciOp::Read { port, width } => (2, port, width.wrapping_sub(1), 0, 0),
            PciOp::Write { port, width, value } => (3, port, width.wrapping_sub(1), 0, value),
            PciOp::ProgramBar { base, decode } => (4, u8::from(decode), 0, 0, base),
            PciOp::SizeBar => (5, 0, 0, 0, 0),
            PciOp::Mmio {
                offset,
                width,
                write: None,
            } => (6, offset, width.wrapping_sub(1), 0, 0),
            PciOp::Mmio {
                offset,
                width,
                write: Some(v),
            } => (7, offset, width.wrapping_sub(1), 0, v),
            PciOp::Reset => (8, 0, 0, 0, 0),
        };
        let v = v.to_le_bytes();
        [kind, a, b, c, v[0], v[1], v[2], v[3]]
    }
}

/// Every operation in `data` (a trailing partial operation is dropped).
pub fn decode_ops(data: &[u8]) -> Vec<PciOp> {
    data.chunks_exact(8)
        .map(|c| PciOp::decode(c.try_into().expect("8 bytes")))
        .collect()
}

/// The bytes of `ops`.
pub fn encode_ops(ops: &[PciOp]) -> Vec<u8> {
    ops.iter().flat_map(|op| op.encode()).collect()
}

/// What a run covered, so tests can tell that a seed reaches what it is meant to.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PciCoverage {
    /// Data reads answered by the watchdog's configuration space.
    pub esb_reads: u64,
    /// Data reads answered by the host bridge.
    pub bridge_reads: u64,
    /// Data reads that read all ones (nothing addressed).
    pub all_ones_reads: u64,
    /// Distinct BAR0 routes seen.
    pub routes: u64,
    /// MMIO reads that reached the watchdog.
    pub mmio_hits: u64,
    /// Data reads delivered in more than one piece, or cut off at 0xD00.
    pub split_reads: u64,
}

/// Stands for the chipset's reset control register at 0xCF9: a byte that reads back.
struct ResetControl(Arc<Mutex<u8>>);

impl MutDevicePio for ResetControl {
    fn pio_read(&mut self, _base: PioAddress, _offset: PioAddressOffset, data: &mut [u8]) {
        data.fill(*self.0.lock().unwrap_or_else(|e| e.into_inner()));
    }

    fn pio_write(&mut self, _base: PioAddress, _offset: PioAddressOffset, data: &[u8]) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = data[0];
    }
}

/// The naturally aligned pieces QEMU delivers an access of `len` bytes at `offset`
/// in: each is what is left, at most 4 bytes, at most the alignment of its offset,
/// rounded down to a power of two. Written here apart from the VMM's code, so the
/// model does not check the VMM against itself.
fn pieces(offset: usize, len: usize) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let (mut at, mut left) = (offset, len);
    while left > 0 {
        let align = if at == 0 {
            4
        } else {
            1 << at.trailing_zeros().min(2)
        };
        let mut n = left.min(4).min(align);
        while !n.is_power_of_two() {
            n -= 1;
        }
        out.push((at, n));
        at += n;
        left -= n;
    }
    out
}

/// The mechanism, bus 0, the MMIO bus, and the model the properties are checked
/// against.
pub struct PciRig {
    io: Arc<Mutex<PciConfigIo>>,
    buses: Buses,
    esb: SharedEsb,
    reset_control: Arc<Mutex<u8>>,
    /// The host bridge's header, read from a bridge of its own.
    bridge: [u8; 256],
    /// Model: the address latch.
    latch: u32,
    /// Model: the reset control byte.
    reset_byte: u8,
    /// Model: accesses that are not PCI accesses.
    odd: u64,
    /// Model: port accesses (or parts) the bus gave to nobody.
    unclaimed_pio: u64,
    /// Every base BAR0 was ever routed at.
    bases: BTreeSet<u64>,
    /// What the run covered.
    pub coverage: PciCoverage,
}

impl Default for PciRig {
    fn default() -> Self {
        Self::new()
    }
}

impl PciRig {
    /// Bus 0 with the host bridge at 00:00.0 and the watchdog at 00:04.0.
    pub fn new() -> PciRig {
        let mmio: SharedMmio = Arc::new(RwLock::new(IoManager::new()));
        let esb: SharedEsb = Arc::new(Mutex::new(I6300Esb::with_events(
            WatchdogAction::None,
            MonotonicClock::new(),
            Arc::new(EventCounters::default()),
        )));
        let mut root = PciRoot::new(mmio.clone());
        root.add(devfn(0, 0), Box::new(HostBridge::default()));
        root.add(
            devfn(ESB_DEVICE, 0),
            Box::new(EsbFunction::new(esb.clone())),
        );
        let reset_control = Arc::new(Mutex::new(0));
        let io = Arc::new(Mutex::new(PciConfigIo::new(
            root,
            Arc::new(Mutex::new(ResetControl(reset_control.clone()))),
        )));
        // The ports as the machine wires them.
        let mut pio = IoManager::new();
        let range = PioRange::new(PioAddress(PCI_CONFIG_PORT), PCI_CONFIG_PORTS);
        pio.register_pio(range.expect("the ports"), io.clone())
            .expect("empty bus");
        let mut bridge = [0u8; 256];
        let mut reference = HostBridge::default();
        for (i, chunk) in bridge.chunks_mut(4).enumerate() {
            reference.config_read(i * 4, chunk);
        }
        PciRig {
            io,
            buses: Buses::new(pio, mmio),
            esb,
            reset_control,
            bridge,
            latch: 0,
            reset_byte: 0,
            odd: 0,
            unclaimed_pio: 0,
            bases: BTreeSet::new(),
            coverage: PciCoverage::default(),
        }
    }

    fn pci(&self) -> std::sync::MutexGuard<'_, PciConfigIo> {
        self.io.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn esb_route(&mut self) -> Option<(u64, u64)> {
        self.pci().root().route(devfn(ESB_DEVICE, 0))
    }

    fn claimed(&self, addr: u64) -> bool {
        self.buses
            .mmio()
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .mmio_device(MmioAddress(addr))
            .is_some()
    }

    fn port(port: u8) -> u16 {
        PCI_CONFIG_PORT + u16::from(port)
    }

    fn bar0_region(&self) -> Option<(u64, u64)> {
        self.esb
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .bar0_region()
    }

    /// A port read through the bus, checked against the model.
    fn read(&mut self, port: u8, width: u8) -> u32 {
        let mut data = vec![0u8; usize::from(width)];
        let expected = self.expected_read(port, width);
        self.buses.pio_read(Self::port(port), &mut data);
        let mut v = [0u8; 4];
        v[..data.len()].copy_from_slice(&data);
        let got = u32::from_le_bytes(v);
        assert_eq!(
            got,
            expected,
            "read of {width} byte(s) at {:#x} with latch {:#010x}",
            Self::port(port),
            self.latch
        );
        got
    }

    /// Where an access at `port` of `width` bytes falls: the bytes the mechanism
    /// gets (the bus cuts the access at 0xD00), then the part in the address
    /// register's ports and the part in the data window, as `(start, len)` in ports.
    fn parts(port: u8, width: u8) -> (u8, (u8, u8), (u8, u8)) {
        let end = (port + width).min(PORTS);
        let address_end = end.min(DATA_PORT);
        let data_start = port.max(DATA_PORT);
        (
            end - port,
            (port, address_end.saturating_sub(port)),
            (data_start, end.saturating_sub(data_start)),
        )
    }

    /// What a read must return (the watchdog's registers as the device answers
    /// them directly), with the model's counters updated.
    fn expected_read(&mut self, port: u8, width: u8) -> u32 {
        let (taken, (a_port, a_len), (d_port, d_len)) = Self::parts(port, width);
        let mut v = [0xffu8; 4];
        if taken < width {
            self.unclaimed_pio += 1;
        }
        match (a_port, a_len) {
            (_, 0) => {}
            (ADDRESS_PORT, 4) => v = self.latch.to_le_bytes(),
            (RESET_CONTROL_PORT, 1) => v[0] = self.reset_byte,
            _ => self.odd += 1,
        }
        let window = pieces(usize::from(d_port - DATA_PORT), usize::from(d_len));
        if window.len() > 1 || (d_len > 0 && taken < width) {
            self.coverage.split_reads += 1;
        }
        for (at, len) in window {
            // The piece's place in the access (`at` counts from 0xCFC).
            let i = usize::from(DATA_PORT) + at - usize::from(port);
            let piece = &mut v[i..i + len];
            match self.selected(at) {
                None => self.coverage.all_ones_reads += 1,
                Some((0, reg)) => {
                    self.coverage.bridge_reads += 1;
                    piece.copy_from_slice(&self.bridge[reg..reg + len]);
                }
                Some((_, reg)) => {
                    // The watchdog's own answer for that register.
                    self.coverage.esb_reads += 1;
                    self.esb
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .config_read(reg, piece);
                }
            }
        }
        let ones = (u64::from(u32::MAX) >> (32 - 8 * u32::from(width))) as u32;
        u32::from_le_bytes(v) & ones
    }

    /// The present function (`0`: bridge, `4`: watchdog) and register a data piece
    /// at `at` (0..4) of the window selects, per the latch; `None` when nothing is.
    fn selected(&self, at: usize) -> Option<(u8, usize)> {
        let l = self.latch;
        let bus = (l >> 16) & 0xff;
        let dev_fn = ((l >> 8) & 0xff) as u8;
        if l & ENABLE == 0 || bus != 0 {
            return None;
        }
        let reg = (l & 0xfc) as usize + at;
        match dev_fn {
            0 => Some((0, reg)),
            d if d == devfn(ESB_DEVICE, 0) => Some((ESB_DEVICE, reg)),
            _ => None,
        }
    }

    /// A port write through the bus, reflected in the model.
    fn write(&mut self, port: u8, width: u8, value: u32) {
        let data = &value.to_le_bytes()[..usize::from(width)];
        let (taken, (a_port, a_len), _) = Self::parts(port, width);
        if taken < width {
            self.unclaimed_pio += 1;
        }
        match (a_port, a_len) {
            (_, 0) => {}
            (ADDRESS_PORT, 4) => self.latch = value & LATCH_MASK,
            (RESET_CONTROL_PORT, 1) => self.reset_byte = data[0],
            _ => self.odd += 1,
        }
        self.buses.pio_write(Self::port(port), data);
    }

    fn select(&mut self, device: u8, function: u8, register: u32) {
        let a = ENABLE
            | (u32::from(device % 32) << 11)
            | (u32::from(function % 8) << 8)
            | (register & 0xff);
        self.write(ADDRESS_PORT, 4, a);
    }

    /// Apply one operation and check every property.
    pub fn apply(&mut self, op: PciOp) {
        match op {
            PciOp::Latch(v) => self.write(ADDRESS_PORT, 4, v),
            PciOp::Select {
                device,
                function,
                register,
            } => self.select(device, function, u32::from(register)),
            PciOp::Read { port, width } => {
                self.read(port, width);
            }
            PciOp::Write { port, width, value } => self.write(port, width, value),
            PciOp::ProgramBar { base, decode } => {
                self.select(ESB_DEVICE, 0, BAR0);
                self.write(DATA_PORT, 4, base);
                self.select(ESB_DEVICE, 0, COMMAND);
                let command = self.read(DATA_PORT, 2) & !COMMAND_MEMORY;
                let command = command | if decode { COMMAND_MEMORY } else { 0 };
                self.write(DATA_PORT, 2, command);
            }
            PciOp::SizeBar => {
                self.select(ESB_DEVICE, 0, BAR0);
                let old = self.read(DATA_PORT, 4);
                self.write(DATA_PORT, 4, u32::MAX);
                let mask = self.read(DATA_PORT, 4);
                assert_eq!(mask, BAR0_SIZE_MASK, "BAR0 sizing");
                self.write(DATA_PORT, 4, old);
                assert_eq!(self.read(DATA_PORT, 4), old, "BAR0 restored");
            }
            PciOp::Mmio {
                offset,
                width,
                write,
            } => self.mmio(offset, width, write),
            PciOp::Reset => {
                self.esb
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .warm_reset();
                self.pci().reset();
                self.latch = 0;
                assert_eq!(self.bar0_region(), None, "BAR0 survives a warm reset");
            }
        }
        self.check();
    }

    fn mmio(&mut self, offset: u8, width: u8, write: Option<u32>) {
        let route = self.esb_route();
        let base = route.map_or(SPARE_MMIO, |(b, _)| b);
        // Offsets past 0x7f fall just below the base (a BAR below 0x80 keeps its
        // base: the address space does not wrap around).
        let addr = base
            .checked_add_signed(i64::from(offset as i8))
            .unwrap_or(base);
        let w = usize::from(width);
        // The part of the access inside the route, as (offset in BAR0, index in
        // the access, length); the rest is one unclaimed part (an access of at
        // most 4 bytes cannot stick out of a 16-byte window on both sides).
        let inside = route.and_then(|(b, len)| {
            let lo = addr.max(b);
            let hi = (addr + w as u64).min(b + len);
            (lo < hi).then(|| (lo - b, (lo - addr) as usize, (hi - lo) as usize))
        });
        let outside = inside.map_or(1, |(_, _, n)| u64::from(n < w));
        let unclaimed = self.buses.unclaimed().1;
        if let Some(v) = write {
            self.buses.mmio_write(addr, &v.to_le_bytes()[..w]);
            assert_eq!(self.buses.unclaimed().1, unclaimed + outside, "{addr:#x}");
            return;
        }
        let mut got = [0u8; 4];
        let mut want = [0u8; 4];
        want[..w].fill(0xff);
        if let Some((off, at, n)) = inside {
            self.esb
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .bar0_read_split(off, &mut want[at..at + n]);
            self.coverage.mmio_hits += 1;
        } else if self.claimed(addr) {
            panic!("{addr:#x} is claimed outside BAR0's route {route:x?}");
        }
        self.buses.mmio_read(addr, &mut got[..w]);
        assert_eq!(self.buses.unclaimed().1, unclaimed + outside, "{addr:#x}");
        assert_eq!(got, want, "MMIO read of {w} byte(s) at {addr:#x}");
    }

    /// The properties that hold between operations.
    fn check(&mut self) {
        // The latch reads back as modelled (and the read changes nothing).
        let mut a = [0u8; 4];
        self.buses.pio_read(Self::port(ADDRESS_PORT), &mut a);
        assert_eq!(u32::from_le_bytes(a), self.latch, "address latch");
        assert_eq!(
            *self.reset_control.lock().unwrap_or_else(|e| e.into_inner()),
            self.reset_byte,
            "reset control register"
        );
        assert_eq!(self.pci().odd_accesses(), self.odd, "odd accesses counted");
        assert_eq!(
            self.buses.unclaimed().0,
            self.unclaimed_pio,
            "port accesses past 0xCFF counted as unclaimed"
        );
        // The route follows the device's BAR0 and memory decode.
        let route = self.esb_route();
        assert_eq!(route, self.bar0_region(), "route and bar0_region()");
        if let Some((base, len)) = route {
            if self.bases.insert(base) {
                self.coverage.routes += 1;
            }
            assert!(self.claimed(base));
            assert!(self.claimed(base + len - 1));
        }
        // Nothing stays claimed where BAR0 used to be.
        for &old in &self.bases {
            let now = route.is_some_and(|(b, len)| (b..b + len).contains(&old));
            assert_eq!(
                self.claimed(old),
                now,
                "stale route at {old:#x} (route now {route:x?})"
            );
        }
    }
}

/// The fuzz target: apply every operation in `data` to a fresh [`PciRig`].
pub fn run_pci(data: &[u8]) -> PciCoverage {
    let mut rig = PciRig::new();
    for op in decode_ops(data) {
        rig.apply(op);
    }
    rig.coverage
}

/// Seed inputs: what a guest does, and the corner cases.
pub fn pci_seeds() -> Vec<(&'static str, Vec<PciOp>)> {
    use PciOp::*;
    let enumerate: Vec<PciOp> = (0..32)
        .flat_map(|d| {
            [
                Select {
                    device: d,
                    function: 0,
                    register: 0,
                },
                Read { port: 4, width: 4 },
            ]
        })
        .collect();
    let every_width: Vec<PciOp> = (0..8)
        .flat_map(|port| (1..=4).map(move |width| Read { port, width }))
        .collect();
    let mut widths_on_esb = vec![Select {
        device: ESB_DEVICE,
        function: 0,
        register: 0x60,
    }];
    widths_on_esb.extend(every_width.iter().copied());
    widths_on_esb.extend((0..8).flat_map(|port| {
        (1..=4).map(move |width| Write {
            port,
            width,
            value: 0x0102_0304,
        })
    }));
    vec![
        ("pci-01-enumerate", enumerate),
        ("pci-02-every-width", widths_on_esb),
        (
            "pci-03-bar-program-and-move",
            vec![
                SizeBar,
                ProgramBar {
                    base: 0xfebf_0000,
                    decode: true,
                },
                Mmio {
                    offset: 0x0c,
                    width: 2,
                    write: None,
                },
                ProgramBar {
                    base: 0xfe00_1000,
                    decode: true,
                },
                Mmio {
                    offset: 0,
                    width: 4,
                    write: None,
                },
                Mmio {
                    offset: 0xf0,
                    width: 4,
                    write: None,
                },
                ProgramBar {
                    base: 0xfe00_1000,
                    decode: false,
                },
                Mmio {
                    offset: 0,
                    width: 4,
                    write: None,
                },
            ],
        ),
        (
            "pci-04-latch-reserved-bits-and-reset-control",
            vec![
                Latch(0xffff_ffff),
                Read { port: 0, width: 4 },
                Read { port: 4, width: 4 },
                Write {
                    port: 1,
                    width: 1,
                    value: 0x06,
                },
                Read { port: 1, width: 1 },
                Write {
                    port: 0,
                    width: 2,
                    value: 0,
                },
                Latch(0x7fff_ffff),
                Read { port: 6, width: 4 },
            ],
        ),
        (
            "pci-05-reset-drops-the-route",
            vec![
                ProgramBar {
                    base: 0xfebf_1000,
                    decode: true,
                },
                Reset,
                Mmio {
                    offset: 0,
                    width: 4,
                    write: None,
                },
                ProgramBar {
                    base: 0,
                    decode: true,
                },
                // The sizing pattern and 0 are no address; the highest one is.
                ProgramBar {
                    base: 0xffff_fff0,
                    decode: true,
                },
                ProgramBar {
                    base: 0xffff_ffe0,
                    decode: true,
                },
                Mmio {
                    offset: 0x0f,
                    width: 1,
                    write: None,
                },
            ],
        ),
        (
            "pci-06-unaligned-data-and-bar0",
            vec![
                Select {
                    device: ESB_DEVICE,
                    function: 0,
                    register: 0,
                },
                // A word at 0xCFD (bytes at 1 and 2), a dword at 0xCFE (a word
                // at 2, then 0xD00), a word at 0xCFF (a byte at 3, then 0xD00).
                Read { port: 5, width: 2 },
                Read { port: 6, width: 4 },
                Read { port: 7, width: 2 },
                Read { port: 5, width: 4 },
                // A dword at 0xCFA: half address register, half data.
                Read { port: 2, width: 4 },
                Select {
                    device: ESB_DEVICE,
                    function: 0,
                    register: 0x10,
                },
                // BAR0 written in unaligned pieces: bytes 1-2, then byte 3.
                Write {
                    port: 5,
                    width: 2,
                    value: 0xbf10,
                },
                Write {
                    port: 7,
                    width: 2,
                    value: 0xfe,
                },
                Read { port: 4, width: 4 },
                ProgramBar {
                    base: 0xfebf_1000,
                    decode: true,
                },
                // The examples: 0x8000 at BAR0+0x0B, a dword at 0x0A;
                // then across the end of BAR0.
                Mmio {
                    offset: 0x0b,
                    width: 2,
                    write: Some(0x8000),
                },
                Mmio {
                    offset: 0x0a,
                    width: 4,
                    write: None,
                },
                Mmio {
                    offset: 0x0e,
                    width: 4,
                    write: None,
                },
                Mmio {
                    offset: 0xfe,
                    width: 4,
                    write: None,
                },
            ],
        ),
    ]
}
