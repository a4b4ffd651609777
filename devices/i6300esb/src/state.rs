//! Saved state for snapshot/restore: plain data, versioned, validated on restore.
//!
//! Time is stored as what is *left* of the running stage, never as an absolute
//! instant, so a restore on another host or after downtime resumes the countdown
//! where it stopped instead of firing at once.

use crate::action::{InterruptKind, WatchdogAction};
use crate::profile::Profile;
use crate::regs::{BAR0_ADDRESS_MASK, COMMAND_WRITABLE, CONFIG_STORAGE_SIZE, PRELOAD_MASK};
use crate::timer::MAX_STAGE_NS;
use crate::watchdog::MAX_PENDING_EXPIRIES;

/// Version of [`WatchdogState`] this crate writes. Version 2 added the profile
/// and the Hardware profile's GISR bit, output pin and stage-1 interrupt.
pub const WATCHDOG_STATE_VERSION: u16 = 2;
/// The oldest [`WatchdogState`] version still read: version 1 (before profiles),
/// which restores as a [`Profile::Qemu`] watchdog.
pub const WATCHDOG_STATE_VERSION_1: u16 = 1;
/// Version of [`I6300EsbState`]'s own fields and of the encoding's frame. The
/// watchdog part carries its own version, which selects its layout, so the
/// profile (a watchdog field) did not change this one. Version 2 added the
/// configuration storage at 0x40-0xFF ([`I6300EsbState::config_storage`]).
pub const DEVICE_STATE_VERSION: u16 = 2;
/// The oldest [`I6300EsbState`] version still read: version 1, before the
/// configuration storage, which restores with that storage zeroed.
pub const DEVICE_STATE_VERSION_1: u16 = 1;

const MAGIC: &[u8; 4] = b"ESB\x00";

/// Why a saved state was refused.
///
/// Non-exhaustive: new state fields bring new checks.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StateError {
    /// The version is not one this crate understands.
    #[error("unsupported state version {0}")]
    Version(u16),
    /// A preload value has bits above bit 19.
    #[error("preload value wider than 20 bits")]
    Preload,
    /// The interrupt type has bits the state's profile never stores.
    #[error("invalid interrupt type")]
    IntType,
    /// A Hardware-profile field (GISR, output pin, stage-1 interrupt) is set in a
    /// QEMU-profile state, or a version-1 state claims the Hardware profile.
    #[error("field not valid in this profile or version")]
    Profile,
    /// The unlock state is not 0, 1 or 2.
    #[error("invalid unlock state")]
    UnlockState,
    /// The remaining time is longer than any stage can last.
    #[error("remaining time longer than a stage")]
    Remaining,
    /// A countdown is recorded while the timer is disabled.
    #[error("countdown recorded while disabled")]
    CountdownWhileDisabled,
    /// A silent zero-length loop is recorded where the registers cannot produce one.
    #[error("inconsistent free-running loop")]
    Spinning,
    /// Too many undelivered expiries.
    #[error("too many pending expiries")]
    Pending,
    /// The PCI command register has read-only bits set.
    #[error("read-only command bits set")]
    Command,
    /// BAR0 has bits set below its 16-byte alignment.
    #[error("misaligned BAR0")]
    Bar0,
    /// Configuration storage bytes (0x40-0xFF) are set in a state that cannot
    /// hold them: a version-1 state, or a Hardware-profile state (that profile
    /// has no storage there).
    #[error("configuration storage not valid in this profile or version")]
    ConfigStorage,
    /// The byte encoding is truncated, too long, or has a bad magic or checksum.
    #[error("bad state encoding: {0}")]
    Encoding(&'static str),
}

/// The saved state of [`crate::Watchdog`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WatchdogState {
    /// [`WATCHDOG_STATE_VERSION`].
    pub version: u16,
    /// The configured expiry action.
    pub action: WatchdogAction,
    /// WDTCR bit 5 clear.
    pub reboot_enabled: bool,
    /// WDTCR bit 2.
    pub one_mhz: bool,
    /// WDTCR interrupt type bits (mask 0x11 in the QEMU profile, 0x03 in the
    /// Hardware profile).
    pub int_type: u16,
    /// WDTLR bit 2.
    pub free_run: bool,
    /// WDTLR bit 0.
    pub locked: bool,
    /// WDTLR bit 1.
    pub enabled: bool,
    /// Preload value 1 (20 bits).
    pub preload1: u32,
    /// Preload value 2 (20 bits).
    pub preload2: u32,
    /// 0: no window, 1: 0x80 seen, 2: window open.
    pub unlock_state: u8,
    /// The countdown is in stage 2.
    pub stage2: bool,
    /// Time left in the current stage, if the countdown is running or frozen.
    pub remaining_ns: Option<u64>,
    /// Free-running, output disabled, both preloads 0: the stages loop at one
    /// instant with no deadline until a register change ends the loop.
    pub spinning: bool,
    /// The timeout flag.
    pub timed_out: bool,
    /// The countdown is frozen because the VM is paused.
    pub paused: bool,
    /// Expiries the host has not collected yet. After a restore they are due at
    /// once and carry the restore time.
    pub pending: Vec<WatchdogAction>,
    /// QEMU's behaviour or the datasheet's (version 2; version 1 means QEMU).
    pub profile: Profile,
    /// GISR bit 0 (Hardware profile only; always false in the QEMU profile).
    pub gisr: bool,
    /// The stage-2 output (WDT_TOUT#) is asserted until the next reset
    /// (Hardware profile only).
    pub output_asserted: bool,
    /// A stage-1 interrupt the host has not collected yet (Hardware profile
    /// only). After a restore it is due at once and carries the restore time.
    pub pending_interrupt: Option<InterruptKind>,
}

impl WatchdogState {
    /// Check every field against what the device can produce.
    pub fn validate(&self) -> Result<(), StateError> {
        match self.version {
            WATCHDOG_STATE_VERSION => {}
            WATCHDOG_STATE_VERSION_1 if self.profile == Profile::Qemu => {}
            WATCHDOG_STATE_VERSION_1 => return Err(StateError::Profile),
            other => return Err(StateError::Version(other)),
        }
        if self.profile == Profile::Qemu
            && (self.gisr || self.output_asserted || self.pending_interrupt.is_some())
        {
            return Err(StateError::Profile);
        }
        if self.preload1 & !PRELOAD_MASK != 0 || self.preload2 & !PRELOAD_MASK != 0 {
            return Err(StateError::Preload);
        }
        if self.int_type & !self.profile.int_type_mask() != 0 {
            return Err(StateError::IntType);
        }
        if self.unlock_state > 2 {
            return Err(StateError::UnlockState);
        }
        if let Some(remaining) = self.remaining_ns {
            if remaining > MAX_STAGE_NS {
                return Err(StateError::Remaining);
            }
            if !self.enabled {
                return Err(StateError::CountdownWhileDisabled);
            }
        }
        if self.spinning
            && (self.remaining_ns.is_some()
                || !self.enabled
                || !self.free_run
                || self.reboot_enabled
                || self.preload1 != 0
                || self.preload2 != 0)
        {
            return Err(StateError::Spinning);
        }
        if self.pending.len() > MAX_PENDING_EXPIRIES {
            return Err(StateError::Pending);
        }
        Ok(())
    }
}

/// The saved state of a whole [`crate::I6300Esb`]: the writable PCI header fields,
/// the configuration storage at 0x40-0xFF and the watchdog.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct I6300EsbState {
    /// [`DEVICE_STATE_VERSION`], or [`DEVICE_STATE_VERSION_1`] for a state
    /// decoded from version-1 bytes.
    pub version: u16,
    /// PCI command register.
    pub command: u16,
    /// BAR0 as the guest programmed it.
    pub bar0: u32,
    /// Cache line size scratch register.
    pub cache_line_size: u8,
    /// Interrupt line scratch register.
    pub interrupt_line: u8,
    /// Configuration bytes 0x40-0xFF (index 0 is offset 0x40) as the QEMU
    /// profile stores them; all zero in the Hardware profile and in version 1.
    pub config_storage: [u8; CONFIG_STORAGE_SIZE],
    /// The watchdog proper.
    pub watchdog: WatchdogState,
}

impl I6300EsbState {
    /// Check every field against what the device can produce.
    pub fn validate(&self) -> Result<(), StateError> {
        if self.version != DEVICE_STATE_VERSION && self.version != DEVICE_STATE_VERSION_1 {
            return Err(StateError::Version(self.version));
        }
        let has_storage = self.config_storage.iter().any(|&b| b != 0);
        if has_storage
            && (self.version == DEVICE_STATE_VERSION_1 || self.watchdog.profile != Profile::Qemu)
        {
            return Err(StateError::ConfigStorage);
        }
        if self.command & !COMMAND_WRITABLE != 0 {
            return Err(StateError::Command);
        }
        if self.bar0 & !BAR0_ADDRESS_MASK != 0 {
            return Err(StateError::Bar0);
        }
        self.watchdog.validate()
    }

    /// Encode as bytes: a magic, the version, the fields little-endian, and a checksum.
    ///
    /// A version-2 device part has the 192 bytes of configuration storage after
    /// the interrupt line; a version-1 device part has none. A version-2
    /// watchdog part ends with three more bytes (profile, GISR and output flags,
    /// pending stage-1 interrupt). Each part of version 1 is written in its
    /// version-1 layout, byte for byte.
    pub fn to_bytes(&self) -> Vec<u8> {
        let w = &self.watchdog;
        let mut out = Vec::with_capacity(64 + CONFIG_STORAGE_SIZE);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&self.version.to_le_bytes());
        out.extend_from_slice(&self.command.to_le_bytes());
        out.extend_from_slice(&self.bar0.to_le_bytes());
        out.push(self.cache_line_size);
        out.push(self.interrupt_line);
        if self.version != DEVICE_STATE_VERSION_1 {
            out.extend_from_slice(&self.config_storage);
        }
        out.extend_from_slice(&w.version.to_le_bytes());
        out.push(w.action.code());
        let flags = u8::from(w.reboot_enabled)
            | u8::from(w.one_mhz) << 1
            | u8::from(w.free_run) << 2
            | u8::from(w.locked) << 3
            | u8::from(w.enabled) << 4
            | u8::from(w.stage2) << 5
            | u8::from(w.timed_out) << 6
            | u8::from(w.paused) << 7;
        out.push(flags);
        out.extend_from_slice(&w.int_type.to_le_bytes());
        out.extend_from_slice(&w.preload1.to_le_bytes());
        out.extend_from_slice(&w.preload2.to_le_bytes());
        out.push(w.unlock_state);
        out.push(u8::from(w.spinning));
        match w.remaining_ns {
            Some(r) => {
                out.push(1);
                out.extend_from_slice(&r.to_le_bytes());
            }
            None => {
                out.push(0);
                out.extend_from_slice(&0u64.to_le_bytes());
            }
        }
        out.push(w.pending.len().min(usize::from(u8::MAX)) as u8);
        out.extend(w.pending.iter().map(|a| a.code()));
        if w.version != WATCHDOG_STATE_VERSION_1 {
            out.push(w.profile.code());
            out.push(u8::from(w.gisr) | u8::from(w.output_asserted) << 1);
            out.push(w.pending_interrupt.map_or(0, |k| k.code()));
        }
        let sum = checksum(&out);
        out.extend_from_slice(&sum.to_le_bytes());
        out
    }

    /// Decode and validate bytes written by [`I6300EsbState::to_bytes`], of this
    /// crate's versions or of version 1. A version-1 device part decodes with
    /// zeroed configuration storage and keeps `version: 1`; a version-1
    /// watchdog part decodes as a QEMU-profile state that keeps `version: 1`.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, StateError> {
        if bytes.len() < 4 {
            return Err(StateError::Encoding("truncated"));
        }
        let (body, sum) = bytes.split_at(bytes.len() - 4);
        if checksum(body).to_le_bytes() != sum {
            return Err(StateError::Encoding("checksum mismatch"));
        }
        let mut r = Reader(body);
        if r.take(4)? != MAGIC {
            return Err(StateError::Encoding("bad magic"));
        }
        let version = r.u16()?;
        if version != DEVICE_STATE_VERSION && version != DEVICE_STATE_VERSION_1 {
            return Err(StateError::Version(version));
        }
        let command = r.u16()?;
        let bar0 = r.u32()?;
        let cache_line_size = r.u8()?;
        let interrupt_line = r.u8()?;
        let mut config_storage = [0u8; CONFIG_STORAGE_SIZE];
        if version != DEVICE_STATE_VERSION_1 {
            config_storage.copy_from_slice(r.take(CONFIG_STORAGE_SIZE)?);
        }
        let wversion = r.u16()?;
        if wversion != WATCHDOG_STATE_VERSION && wversion != WATCHDOG_STATE_VERSION_1 {
            return Err(StateError::Version(wversion));
        }
        let action =
            WatchdogAction::from_code(r.u8()?).ok_or(StateError::Encoding("unknown action"))?;
        let flags = r.u8()?;
        let int_type = r.u16()?;
        let preload1 = r.u32()?;
        let preload2 = r.u32()?;
        let unlock_state = r.u8()?;
        let spinning = match r.u8()? {
            0 => false,
            1 => true,
            _ => return Err(StateError::Encoding("bad loop tag")),
        };
        let has_remaining = r.u8()?;
        let remaining = r.u64()?;
        let remaining_ns = match has_remaining {
            0 => None,
            1 => Some(remaining),
            _ => return Err(StateError::Encoding("bad remaining-time tag")),
        };
        let count = r.u8()?;
        let mut pending = Vec::with_capacity(usize::from(count));
        for _ in 0..count {
            pending.push(
                WatchdogAction::from_code(r.u8()?).ok_or(StateError::Encoding("unknown action"))?,
            );
        }
        let (profile, gisr, output_asserted, pending_interrupt) =
            if wversion == WATCHDOG_STATE_VERSION_1 {
                (Profile::Qemu, false, false, None)
            } else {
                let profile =
                    Profile::from_code(r.u8()?).ok_or(StateError::Encoding("unknown profile"))?;
                let flags2 = r.u8()?;
                if flags2 & !3 != 0 {
                    return Err(StateError::Encoding("bad hardware flags"));
                }
                let pending_interrupt = match r.u8()? {
                    0 => None,
                    code => Some(
                        InterruptKind::from_code(code)
                            .ok_or(StateError::Encoding("unknown interrupt kind"))?,
                    ),
                };
                (profile, flags2 & 1 != 0, flags2 & 2 != 0, pending_interrupt)
            };
        if !r.0.is_empty() {
            return Err(StateError::Encoding("trailing bytes"));
        }
        let state = I6300EsbState {
            version,
            command,
            bar0,
            cache_line_size,
            interrupt_line,
            config_storage,
            watchdog: WatchdogState {
                version: wversion,
                action,
                reboot_enabled: flags & 1 != 0,
                one_mhz: flags & 2 != 0,
                free_run: flags & 4 != 0,
                locked: flags & 8 != 0,
                enabled: flags & 16 != 0,
                stage2: flags & 32 != 0,
                timed_out: flags & 64 != 0,
                paused: flags & 128 != 0,
                int_type,
                preload1,
                preload2,
                unlock_state,
                remaining_ns,
                spinning,
                pending,
                profile,
                gisr,
                output_asserted,
                pending_interrupt,
            },
        };
        state.validate()?;
        Ok(state)
    }
}

/// FNV-1a, enough to catch corruption (tampering is caught by validation).
fn checksum(bytes: &[u8]) -> u32 {
    bytes.iter().fold(0x811c_9dc5u32, |h, &b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    })
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], StateError> {
        if self.0.len() < n {
            return Err(StateError::Encoding("truncated"));
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Ok(head)
    }
    fn u8(&mut self) -> Result<u8, StateError> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, StateError> {
        let b = self.take(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }
    fn u32(&mut self) -> Result<u32, StateError> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64(&mut self) -> Result<u64, StateError> {
        let mut a = [0u8; 8];
        a.copy_from_slice(self.take(8)?);
        Ok(u64::from_le_bytes(a))
    }
}
