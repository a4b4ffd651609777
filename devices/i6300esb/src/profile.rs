//! Which behaviour the model follows where QEMU 7.2 and the datasheet disagree.
//!
//! The default, [`Profile::Qemu`], is the device Linux, libvirt and KubeVirt meet
//! in QEMU, quirks included, and is what the project's traces pin. A VMM author who
//! wants the chip as Intel's datasheet describes it opts into
//! [`Profile::Hardware`]. The profile is fixed for the life of a device and is
//! part of its saved state.
//!
//! | case (docs/DEVICE.md §7) | register | [`Profile::Qemu`] (default) | [`Profile::Hardware`] |
//! |---|---|---|---|
//! | 8, 9, 10 | WDTCR 0x60 | interrupt type stored with mask 0x11: 0x0003 reads 0x0001, 0xFFFF reads 0x0035, 0x0002 reads 0x0000 | bits 1:0, 2 and 5 stored: 0x0003 reads 0x0003, 0xFFFF reads 0x0027, 0x0002 (SMI) reads 0x0002 |
//! | 11 | WDTCR 0x60 | only a 16-bit access at exactly 0x60; other widths go to plain storage | any 8/16/32-bit access covering byte 0x60 or 0x61 reaches the bytes it covers |
//! | 13 | WDTLR 0x68 | only an 8-bit access at exactly 0x68; other widths go to plain storage | any access covering byte 0x68 |
//! | 11, 13, 16 | config 0x40-0xFF | plain writable storage (QEMU's generic PCI code): what the two registers do not take is stored and read back, kept by a warm reset, saved in the state | reserved: bytes other than WDTCR/WDTLR read 0, writes dropped |
//! | 49 | reload register 0x0C | timeout flag only through a 16-bit read, as 0x1200 | bit 9 through any read covering byte 0x0D: 16-bit 0x0200, 32-bit 0x0000_0200, byte 0x0D 0x02 (bit 12 is not a real bit) |
//! | 56, 29 | GISR 0x08 | reads 0, writes need the unlock and spend the window | bit 0 set when stage 1 ends, read at any width, write 1 to clear without unlocking (and without spending an open window); an IRQ (type 00) or SMI (type 10) is reported to the host from `poll` as [`crate::Stage1Interrupt`] |
//! | 48 | after stage 2 fires | the device resets itself (disabled, unlocked, preloads 0xFFFFF) | the flag is set, the output is asserted ([`crate::Watchdog::output_asserted`]) and the timer stops; registers keep their values until the host's action resets the machine |
//!
//! Where the real chip's behaviour is not known (docs/DEVICE.md cases 15, 19, 25, 26, 33,
//! and 41), both profiles keep QEMU's: the lock does not cover 0x60, the unlock
//! sequence tolerates interleaved byte writes, a 16-bit preload write or a 32-bit
//! reload write spends the window without effect, preloads read back 0, and a
//! preload of 0 expires at once. Free-running mode (case 55) is not the
//! datasheet's toggling output in either profile: with the output enabled the
//! Hardware profile fires once and stops, like a one-shot. Preloads are masked
//! to 20 bits in both; the flag clear still accepts bit 12 (case 51).
//!
//! ```
//! use i6300esb::{I6300Esb, ManualClock, Profile, WatchdogAction};
//!
//! let mut dev = I6300Esb::new(WatchdogAction::Reset, ManualClock::new(0))
//!     .with_profile(Profile::Hardware);
//! assert_eq!(dev.watchdog().profile(), Profile::Hardware);
//! // Linux's probe write keeps both interrupt-type bits, as on the chip.
//! dev.config_write(0x60, &0x0003u16.to_le_bytes());
//! let mut b = [0u8; 2];
//! dev.config_read(0x60, &mut b);
//! assert_eq!(u16::from_le_bytes(b), 0x0003);
//! // A dword read covering 0x60 sees the register too.
//! assert_eq!(dev.config_read_u32(0x60), 0x0000_0003);
//! ```

use crate::regs::{WDT_INT_TYPE_MASK, WDT_INT_TYPE_MASK_QEMU};

/// QEMU 7.2's behaviour (the default) or the datasheet's; see the module docs
/// for every difference.
///
/// Non-exhaustive: another reference (a later QEMU with fixes, another VMM's
/// model) may become a profile of its own.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Profile {
    /// Guest-visible behaviour identical to QEMU 7.2's `i6300esb`.
    #[default]
    Qemu,
    /// The Intel 6300ESB datasheet's behaviour where it is known.
    Hardware,
}

impl Profile {
    /// The WDTCR interrupt-type bits this profile stores.
    pub fn int_type_mask(self) -> u16 {
        match self {
            Profile::Qemu => WDT_INT_TYPE_MASK_QEMU,
            Profile::Hardware => WDT_INT_TYPE_MASK,
        }
    }

    pub(crate) fn code(self) -> u8 {
        match self {
            Profile::Qemu => 0,
            Profile::Hardware => 1,
        }
    }

    pub(crate) fn from_code(code: u8) -> Option<Self> {
        match code {
            0 => Some(Profile::Qemu),
            1 => Some(Profile::Hardware),
            _ => None,
        }
    }
}
