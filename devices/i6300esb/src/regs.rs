//! Register offsets, bit masks and fixed identity values of the i6300esb.
//!
//! Everything here is a plain constant; the logic that uses them lives in
//! [`crate::watchdog`] and [`crate::config_space`].

/// PCI vendor ID: Intel.
pub const VENDOR_ID: u16 = 0x8086;
/// PCI device ID of the 6300ESB watchdog function (`PCI_DEVICE_ID_INTEL_ESB_9`).
pub const DEVICE_ID: u16 = 0x25ab;
/// Class code: base 0x08 (generic system peripheral), sub-class 0x80 (other), prog-if 0.
pub const CLASS_CODE: u32 = 0x08_80_00;
/// Subsystem vendor ID QEMU presents (its global default, not a chip value).
pub const QEMU_SUBSYSTEM_VENDOR_ID: u16 = 0x1af4;
/// Subsystem ID QEMU presents.
pub const QEMU_SUBSYSTEM_ID: u16 = 0x1100;

/// Size of the memory BAR0 window in bytes.
pub const BAR0_SIZE: u64 = 16;
/// Size of PCI configuration space handled by the device.
pub const CONFIG_SPACE_SIZE: usize = 256;
/// Size of the standard type-0 header.
pub const CONFIG_HEADER_SIZE: usize = 64;
/// Size of the device-specific part of configuration space, 0x40-0xFF. In the
/// QEMU profile every byte of it is plain writable storage, except for the two
/// register accesses the watchdog decodes (see [`crate::I6300Esb::config_read`]).
pub const CONFIG_STORAGE_SIZE: usize = CONFIG_SPACE_SIZE - CONFIG_HEADER_SIZE;

// Standard header offsets.
/// Vendor ID (16 bits).
pub const PCI_VENDOR_ID: usize = 0x00;
/// Device ID (16 bits).
pub const PCI_DEVICE_ID: usize = 0x02;
/// Command register (16 bits).
pub const PCI_COMMAND: usize = 0x04;
/// Status register (16 bits).
pub const PCI_STATUS: usize = 0x06;
/// Revision ID (8 bits), followed by the 24-bit class code.
pub const PCI_REVISION_ID: usize = 0x08;
/// Cache line size (8 bits), a scratch register for the OS.
pub const PCI_CACHE_LINE_SIZE: usize = 0x0c;
/// Base address register 0 (32 bits).
pub const PCI_BAR0: usize = 0x10;
/// Subsystem vendor ID (16 bits).
pub const PCI_SUBSYSTEM_VENDOR_ID: usize = 0x2c;
/// Subsystem ID (16 bits).
pub const PCI_SUBSYSTEM_ID: usize = 0x2e;
/// Interrupt line (8 bits), a scratch register for the OS.
pub const PCI_INTERRUPT_LINE: usize = 0x3c;

/// Command bits the guest may change: I/O, memory, bus master, SERR#, INTx disable
/// (the set QEMU makes writable for a conventional PCI device).
pub const COMMAND_WRITABLE: u16 = 0x0001 | 0x0002 | 0x0004 | 0x0100 | 0x0400;
/// Command bit 1: the device answers memory cycles (BAR0 decode).
pub const COMMAND_MEMORY: u16 = 0x0002;
/// Status bits that are write-one-to-clear (error bits; they never get set here).
pub const STATUS_W1C: u16 = 0xf900;
/// BAR0 address bits the guest may write: a 16-byte, 32-bit, non-prefetchable window.
pub const BAR0_ADDRESS_MASK: u32 = !(BAR0_SIZE as u32 - 1);

// Device-specific configuration registers.
/// WDT configuration register WDTCR, reached only by a 16-bit access at exactly this offset.
pub const CFG_WDT_CONFIG: usize = 0x60;
/// WDT lock register WDTLR, reached only by an 8-bit access at exactly this offset.
pub const CFG_WDT_LOCK: usize = 0x68;

/// WDTCR bits 1:0 select what stage-1 expiry raises. QEMU stores the value with the
/// mask 0x11 (a copy of an old Linux typo), so bit 1 is lost and bit 4 is kept.
pub const WDT_INT_TYPE_MASK_QEMU: u16 = 0x11;
/// WDTCR bits 1:0 as the datasheet defines them (the Hardware profile's mask).
pub const WDT_INT_TYPE_MASK: u16 = 0x03;
/// Interrupt type 00: stage-1 expiry raises an IRQ (IOxAPIC 1, input 10).
pub const WDT_INT_TYPE_IRQ: u16 = 0x00;
/// Interrupt type 10: stage-1 expiry raises an SMI.
pub const WDT_INT_TYPE_SMI: u16 = 0x02;
/// WDTCR bit 2: prescaler select; 1 = PCI clock / 2^5 ("1 MHz"), 0 = / 2^15 ("1 kHz").
pub const WDT_PRE_SEL: u16 = 0x04;
/// WDTCR bit 5: 1 suppresses the stage-2 output (no flag, no action).
pub const WDT_OUTPUT_DISABLE: u16 = 0x20;

/// WDTLR bit 0: register frozen until the next reset (nowayout).
pub const LOCK_WDT_LOCK: u8 = 0x01;
/// WDTLR bit 1: the timer runs.
pub const LOCK_WDT_ENABLE: u8 = 0x02;
/// WDTLR bit 2: free-running mode instead of watchdog mode.
pub const LOCK_WDT_FREE_RUN: u8 = 0x04;

// BAR0 registers.
/// Preload value 1 (stage 1 count), 32-bit writes only, inside an unlock window.
pub const MMIO_PRELOAD1: u64 = 0x00;
/// Preload value 2 (stage 2 count), 32-bit writes only, inside an unlock window.
pub const MMIO_PRELOAD2: u64 = 0x04;
/// General interrupt status register; QEMU reads it as 0 and ignores writes.
pub const MMIO_GISR: u64 = 0x08;
/// GISR bit 0 (WDT_INT_ACT): stage 1 ran out; sticky, write 1 to clear (Hardware profile).
pub const GISR_WDT_INT_ACT: u8 = 0x01;
/// Reload register: kick, timeout flag, and the target of the unlock writes.
pub const MMIO_RELOAD: u64 = 0x0c;

/// Reload register bit 8: reload stage 1 (the kick).
pub const RELOAD_KICK: u16 = 0x0100;
/// Reload register bit 9: the timeout ("previous reboot") flag; write 1 to clear.
pub const RELOAD_TIMEOUT: u16 = 0x0200;
/// Reload register bit 12: old Linux wrote it to clear the flag; QEMU reads and clears it too.
pub const RELOAD_TIMEOUT_OLD: u16 = 0x1000;
/// What a 16-bit read of the reload register returns while the flag is set.
pub const RELOAD_READ_FLAG_SET: u16 = RELOAD_TIMEOUT | RELOAD_TIMEOUT_OLD;

/// First value of the unlock sequence.
pub const UNLOCK_FIRST: u32 = 0x80;
/// Second value of the unlock sequence.
pub const UNLOCK_SECOND: u32 = 0x86;

/// Preload registers hold 20 bits.
pub const PRELOAD_MASK: u32 = 0xf_ffff;
/// Preload value after reset.
pub const PRELOAD_RESET: u32 = PRELOAD_MASK;

/// QEMU's PCI clock period in nanoseconds (33.33 MHz).
pub const NS_PER_PCI_CLOCK: u64 = 30;
/// Preload shift with the 1 kHz prescaler (one unit = 2^15 PCI clocks = 983,040 ns).
pub const PRESCALER_SHIFT_1KHZ: u32 = 15;
/// Preload shift with the 1 MHz prescaler (one unit = 2^5 PCI clocks = 960 ns).
pub const PRESCALER_SHIFT_1MHZ: u32 = 5;
