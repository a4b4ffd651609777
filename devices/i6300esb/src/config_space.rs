//! The standard type-0 PCI header of the i6300esb, with write masks and BAR sizing.
//!
//! Unlike generic helpers that round BARs up to 4 KiB, BAR0 here is the 16-byte,
//! 32-bit, non-prefetchable memory window the device really has, so a sizing probe
//! (write 0xFFFFFFFF) reads back 0xFFFFFFF0.

use crate::regs::*;

/// The 64-byte header: identity, command/status, BAR0, scratch registers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigHeader {
    bytes: [u8; CONFIG_HEADER_SIZE],
    wmask: [u8; CONFIG_HEADER_SIZE],
    w1cmask: [u8; CONFIG_HEADER_SIZE],
}

fn put16(buf: &mut [u8], offset: usize, v: u16) {
    buf[offset..offset + 2].copy_from_slice(&v.to_le_bytes());
}

fn put32(buf: &mut [u8], offset: usize, v: u32) {
    buf[offset..offset + 4].copy_from_slice(&v.to_le_bytes());
}

fn get16(buf: &[u8], offset: usize) -> u16 {
    u16::from_le_bytes([buf[offset], buf[offset + 1]])
}

fn get32(buf: &[u8], offset: usize) -> u32 {
    u32::from_le_bytes([
        buf[offset],
        buf[offset + 1],
        buf[offset + 2],
        buf[offset + 3],
    ])
}

impl ConfigHeader {
    /// The header in its reset state, with the given subsystem IDs.
    pub fn new(subsystem_vendor_id: u16, subsystem_id: u16) -> Self {
        let mut bytes = [0u8; CONFIG_HEADER_SIZE];
        put16(&mut bytes, PCI_VENDOR_ID, VENDOR_ID);
        put16(&mut bytes, PCI_DEVICE_ID, DEVICE_ID);
        // Revision 0, then the 24-bit class code.
        put32(&mut bytes, PCI_REVISION_ID, CLASS_CODE << 8);
        put16(&mut bytes, PCI_SUBSYSTEM_VENDOR_ID, subsystem_vendor_id);
        put16(&mut bytes, PCI_SUBSYSTEM_ID, subsystem_id);
        // Header type 0, no BIST, no capabilities, no interrupt pin: all zero.

        let mut wmask = [0u8; CONFIG_HEADER_SIZE];
        put16(&mut wmask, PCI_COMMAND, COMMAND_WRITABLE);
        wmask[PCI_CACHE_LINE_SIZE] = 0xff;
        put32(&mut wmask, PCI_BAR0, BAR0_ADDRESS_MASK);
        wmask[PCI_INTERRUPT_LINE] = 0xff;

        let mut w1cmask = [0u8; CONFIG_HEADER_SIZE];
        put16(&mut w1cmask, PCI_STATUS, STATUS_W1C);

        ConfigHeader {
            bytes,
            wmask,
            w1cmask,
        }
    }

    /// Read one byte of the header (`offset` < 64).
    pub fn read_byte(&self, offset: usize) -> u8 {
        self.bytes.get(offset).copied().unwrap_or(0)
    }

    /// Write one byte of the header through the write masks (`offset` < 64).
    pub fn write_byte(&mut self, offset: usize, value: u8) {
        if offset >= CONFIG_HEADER_SIZE {
            return;
        }
        let old = self.bytes[offset];
        let w = self.wmask[offset];
        let c = self.w1cmask[offset];
        self.bytes[offset] = ((old & !w) | (value & w)) & !(value & c);
    }

    /// The command register.
    pub fn command(&self) -> u16 {
        get16(&self.bytes, PCI_COMMAND)
    }

    /// BAR0 as programmed (type bits are all zero for this BAR).
    pub fn bar0(&self) -> u32 {
        get32(&self.bytes, PCI_BAR0)
    }

    /// The guest-physical address of BAR0 while the device decodes memory.
    ///
    /// `None` while memory decode is off, while BAR0 is 0, or while it holds the
    /// sizing pattern (the window would run past 4 GiB), as in QEMU.
    pub fn bar0_address(&self) -> Option<u64> {
        if self.command() & COMMAND_MEMORY == 0 {
            return None;
        }
        let base = u64::from(self.bar0() & BAR0_ADDRESS_MASK);
        let last = base + BAR0_SIZE - 1;
        if base == 0 || last >= u64::from(u32::MAX) {
            return None;
        }
        Some(base)
    }

    /// Put the header back to its reset state (identity kept).
    pub fn reset(&mut self) {
        put16(&mut self.bytes, PCI_COMMAND, 0);
        put16(&mut self.bytes, PCI_STATUS, 0);
        self.bytes[PCI_CACHE_LINE_SIZE] = 0;
        put32(&mut self.bytes, PCI_BAR0, 0);
        self.bytes[PCI_INTERRUPT_LINE] = 0;
    }

    /// The writable fields, for saved state: command, BAR0, cache line, interrupt line.
    pub(crate) fn writable_fields(&self) -> (u16, u32, u8, u8) {
        (
            self.command(),
            self.bar0(),
            self.bytes[PCI_CACHE_LINE_SIZE],
            self.bytes[PCI_INTERRUPT_LINE],
        )
    }

    pub(crate) fn set_writable_fields(&mut self, command: u16, bar0: u32, cls: u8, line: u8) {
        put16(&mut self.bytes, PCI_COMMAND, command & COMMAND_WRITABLE);
        put32(&mut self.bytes, PCI_BAR0, bar0 & BAR0_ADDRESS_MASK);
        self.bytes[PCI_CACHE_LINE_SIZE] = cls;
        self.bytes[PCI_INTERRUPT_LINE] = line;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h() -> ConfigHeader {
        ConfigHeader::new(QEMU_SUBSYSTEM_VENDOR_ID, QEMU_SUBSYSTEM_ID)
    }

    #[test]
    fn identity_is_read_only() {
        let mut c = h();
        for off in 0..4 {
            c.write_byte(off, 0x55);
        }
        assert_eq!(c.read_byte(0), 0x86);
        assert_eq!(c.read_byte(1), 0x80);
        assert_eq!(c.read_byte(2), 0xab);
        assert_eq!(c.read_byte(3), 0x25);
        c.write_byte(0x0e, 0x80);
        assert_eq!(c.read_byte(0x0e), 0);
        c.write_byte(0x3d, 1);
        assert_eq!(c.read_byte(0x3d), 0);
    }

    #[test]
    fn bar0_sizing_and_decode() {
        let mut c = h();
        for (i, b) in 0xffff_ffffu32.to_le_bytes().iter().enumerate() {
            c.write_byte(PCI_BAR0 + i, *b);
        }
        assert_eq!(c.bar0(), 0xffff_fff0);
        c.write_byte(PCI_COMMAND, 0x02);
        assert_eq!(c.bar0_address(), None, "sizing pattern is not a mapping");
        for (i, b) in 0xfebf_1000u32.to_le_bytes().iter().enumerate() {
            c.write_byte(PCI_BAR0 + i, *b);
        }
        assert_eq!(c.bar0_address(), Some(0xfebf_1000));
        c.write_byte(PCI_COMMAND, 0x01);
        assert_eq!(c.bar0_address(), None, "memory decode off");
        c.reset();
        assert_eq!(c.bar0(), 0);
        assert_eq!(c.command(), 0);
    }

    #[test]
    fn command_write_mask() {
        let mut c = h();
        c.write_byte(PCI_COMMAND, 0xff);
        c.write_byte(PCI_COMMAND + 1, 0xff);
        assert_eq!(c.command(), COMMAND_WRITABLE);
    }
}
