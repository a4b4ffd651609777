//! The device-specific part of the i6300esb: configuration registers 0x60 and 0x68,
//! the BAR0 registers, the unlock sequence and the two-stage timer.
//!
//! [`Watchdog`] knows nothing of the standard PCI header, so a VMM that owns its
//! PCI header code can embed it directly; [`crate::I6300Esb`] adds the header and
//! an injected clock. Every method takes the current virtual time explicitly.

use std::collections::VecDeque;

use crate::action::{ActionSink, Expiry, InterruptKind, Stage1Interrupt, WatchdogAction};
use crate::events::{NoEvents, WatchdogEvents};
use crate::profile::Profile;
use crate::regs::*;
use crate::state::{StateError, WatchdogState, WATCHDOG_STATE_VERSION};
use crate::timer::{stage_duration_ns, Countdown, Stage, MAX_STAGE_NS};

/// Expiries kept for the host between two polls; more means the host is not polling.
pub const MAX_PENDING_EXPIRIES: usize = 16;

/// Where the unlock sequence stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Unlock {
    /// No window: protected writes are ignored.
    Locked,
    /// 0x80 seen; 0x86 opens the window.
    FirstSeen,
    /// The window is open for exactly one protected write.
    Open,
}

impl Unlock {
    fn code(self) -> u8 {
        match self {
            Unlock::Locked => 0,
            Unlock::FirstSeen => 1,
            Unlock::Open => 2,
        }
    }

    fn from_code(code: u8) -> Option<Self> {
        match code {
            0 => Some(Unlock::Locked),
            1 => Some(Unlock::FirstSeen),
            2 => Some(Unlock::Open),
            _ => None,
        }
    }
}

/// Everything a device reset puts back (the timeout flag is not here on purpose).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Registers {
    /// WDTCR bit 5 clear: stage-2 expiry sets the flag and fires.
    reboot_enabled: bool,
    /// WDTCR bit 2: 1 MHz prescaler.
    one_mhz: bool,
    /// WDTCR interrupt type, stored with the profile's mask (QEMU's 0x11 or 0x03).
    int_type: u16,
    /// WDTLR bit 2.
    free_run: bool,
    /// WDTLR bit 0.
    locked: bool,
    /// WDTLR bit 1.
    enabled: bool,
    preload1: u32,
    preload2: u32,
    unlock: Unlock,
    stage: Stage,
    countdown: Countdown,
    /// GISR bit 0: stage 1 ran out (Hardware profile only).
    gisr: bool,
    /// WDT_TOUT# is asserted after a stage-2 expiry (Hardware profile only).
    output_asserted: bool,
}

impl Registers {
    const RESET: Registers = Registers {
        reboot_enabled: true,
        one_mhz: false,
        int_type: 0,
        free_run: false,
        locked: false,
        enabled: false,
        preload1: PRELOAD_RESET,
        preload2: PRELOAD_RESET,
        unlock: Unlock::Locked,
        stage: Stage::One,
        countdown: Countdown::Stopped,
        gisr: false,
        output_asserted: false,
    };

    fn wdtcr(&self) -> u16 {
        let mut v = self.int_type;
        if !self.reboot_enabled {
            v |= WDT_OUTPUT_DISABLE;
        }
        if self.one_mhz {
            v |= WDT_PRE_SEL;
        }
        v
    }

    fn wdtlr(&self) -> u8 {
        let mut v = 0;
        if self.locked {
            v |= LOCK_WDT_LOCK;
        }
        if self.enabled {
            v |= LOCK_WDT_ENABLE;
        }
        if self.free_run {
            v |= LOCK_WDT_FREE_RUN;
        }
        v
    }

    fn stage_ns(&self, stage: Stage) -> u64 {
        let preload = match stage {
            Stage::One => self.preload1,
            Stage::Two => self.preload2,
        };
        stage_duration_ns(preload, self.one_mhz)
    }
}

/// Is `len` bytes at `offset` a naturally aligned access of 1, 2 or 4 bytes inside `size`?
#[inline]
pub(crate) fn valid_access(offset: u64, len: usize, size: u64) -> bool {
    crate::access::one_piece(offset, len)
        && offset
            .checked_add(len as u64)
            .is_some_and(|end| end <= size)
}

/// Little-endian value of an access of 1 to 8 bytes.
pub(crate) fn le_value(data: &[u8]) -> u64 {
    match *data {
        // The register widths, without a loop.
        [a] => u64::from(a),
        [a, b] => u64::from(u16::from_le_bytes([a, b])),
        [a, b, c, d] => u64::from(u32::from_le_bytes([a, b, c, d])),
        _ => data
            .iter()
            .rev()
            .fold(0u64, |acc, &b| (acc << 8) | u64::from(b)),
    }
}

/// Store `value` little-endian into `data` (as many bytes as `data` has, up to 8).
pub(crate) fn put_le(data: &mut [u8], value: u64) {
    for (i, b) in data.iter_mut().enumerate().take(8) {
        *b = (value >> (8 * i)) as u8;
    }
}

/// The i6300esb watchdog registers and timer, without the PCI header.
///
/// Accesses never fail and never panic; what QEMU's model ignores is ignored here
/// and reported through the [`WatchdogEvents`] hook. Expiries are queued and handed
/// to an [`ActionSink`] by [`Watchdog::poll`], never from inside a guest access.
#[derive(Debug)]
pub struct Watchdog<E: WatchdogEvents = NoEvents> {
    regs: Registers,
    /// The timeout ("previous reboot") flag; only a power-on reset clears it.
    timed_out: bool,
    /// The VM is paused: the countdown is frozen.
    paused: bool,
    action: WatchdogAction,
    pending: VecDeque<Expiry>,
    /// A stage-1 interrupt waiting for the host (Hardware profile only).
    pending_interrupt: Option<Stage1Interrupt>,
    profile: Profile,
    events: E,
}

impl Watchdog<NoEvents> {
    /// A watchdog in its power-on state that will request `action` when it fires.
    pub fn new(action: WatchdogAction) -> Self {
        Watchdog::with_events(action, NoEvents)
    }
}

impl<E: WatchdogEvents> Watchdog<E> {
    /// A watchdog in its power-on state reporting to `events`.
    pub fn with_events(action: WatchdogAction, events: E) -> Self {
        Watchdog {
            regs: Registers::RESET,
            timed_out: false,
            paused: false,
            action,
            pending: VecDeque::new(),
            pending_interrupt: None,
            profile: Profile::Qemu,
            events,
        }
    }

    /// The same watchdog following `profile` (builder style; see [`Profile`]).
    ///
    /// ```
    /// use i6300esb::{Profile, Watchdog, WatchdogAction};
    ///
    /// let mut wd = Watchdog::new(WatchdogAction::Reset).with_profile(Profile::Hardware);
    /// // WDTCR <- 0x0002 selects SMI; the Hardware profile keeps it.
    /// assert!(wd.config_write(0, 0x60, &0x0002u16.to_le_bytes()));
    /// let mut b = [0u8; 2];
    /// assert!(wd.config_read(0, 0x60, &mut b));
    /// assert_eq!(u16::from_le_bytes(b), 0x0002);
    /// ```
    pub fn with_profile(mut self, profile: Profile) -> Self {
        self.set_profile(profile);
        self
    }

    /// Switch to `profile`. Meant for setting a device up; on a running device
    /// the interrupt-type bits the new profile does not store are dropped and,
    /// when switching to [`Profile::Qemu`], so are GISR, the output pin and a
    /// pending stage-1 interrupt.
    pub fn set_profile(&mut self, profile: Profile) {
        self.profile = profile;
        self.regs.int_type &= profile.int_type_mask();
        if profile == Profile::Qemu {
            self.regs.gisr = false;
            self.regs.output_asserted = false;
            self.pending_interrupt = None;
        }
    }

    /// The profile this watchdog follows.
    pub fn profile(&self) -> Profile {
        self.profile
    }

    /// Whether the stage-2 output (WDT_TOUT#) is asserted: set when stage 2 fires
    /// in the Hardware profile and held until a reset. Always false in the QEMU
    /// profile, whose device resets itself after firing.
    pub fn output_asserted(&self) -> bool {
        self.regs.output_asserted
    }

    /// GISR bit 0 (stage 1 ran out). Always false in the QEMU profile.
    pub fn stage1_status(&self) -> bool {
        self.regs.gisr
    }

    /// The action requested when the watchdog fires.
    pub fn action(&self) -> WatchdogAction {
        self.action
    }

    /// Change the action (QEMU's `watchdog-set-action`).
    pub fn set_action(&mut self, action: WatchdogAction) {
        self.action = action;
    }

    /// The events hook.
    pub fn events(&self) -> &E {
        &self.events
    }

    /// Whether the timeout flag (reload register bit 9) is set.
    pub fn timeout_flag(&self) -> bool {
        self.timed_out
    }

    /// Whether the timer is enabled (WDTLR bit 1).
    pub fn is_enabled(&self) -> bool {
        self.regs.enabled
    }

    /// Whether the countdown is frozen because the VM is paused.
    pub fn is_paused(&self) -> bool {
        self.paused
    }

    /// The stage the countdown is in (or would restart in).
    pub fn stage(&self) -> Stage {
        self.regs.stage
    }

    /// When the host must call [`Watchdog::poll`] next: the time of the next
    /// expiry as programmed now, or a past time if expiries are already waiting.
    /// `None` when no expiry can happen without a guest access first.
    ///
    /// Stage changes nobody can see (the end of stage 1, a silent free-running
    /// cycle with the output disabled) are not deadlines: they are caught up
    /// exactly, from their own times, by the next access or poll. So the host
    /// wakes once per expiry, never per stage, and a guest cannot make it wake
    /// every 960 ns with a silent 1 MHz free-running loop. A guest access may move
    /// the answer (a kick, a preload or WDTCR write): ask again after each one.
    ///
    /// In the Hardware profile, the end of stage 1 is a deadline too while it
    /// would raise an IRQ or SMI (GISR bit 0 clear and WDTCR selecting one), and
    /// so is a stage-1 interrupt waiting for the host.
    pub fn next_deadline(&self) -> Option<u64> {
        match (self.next_expiry_deadline(), self.next_interrupt_deadline()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// When a stage-1 interrupt is due (Hardware profile), if one can happen
    /// without a guest access first.
    fn next_interrupt_deadline(&self) -> Option<u64> {
        if let Some(interrupt) = self.pending_interrupt {
            return Some(interrupt.time_ns);
        }
        if self.profile != Profile::Hardware
            || self.regs.gisr
            || InterruptKind::from_int_type(self.regs.int_type).is_none()
        {
            return None;
        }
        let end = self.regs.countdown.deadline()?;
        match self.regs.stage {
            Stage::One => Some(end),
            // A silent free-running loop starts stage 1 again when stage 2 ends.
            Stage::Two if !self.regs.reboot_enabled && self.regs.free_run => {
                Some(end.saturating_add(self.regs.stage_ns(Stage::One)))
            }
            Stage::Two => None,
        }
    }

    /// When the next stage-2 expiry is due (both profiles).
    fn next_expiry_deadline(&self) -> Option<u64> {
        if let Some(expiry) = self.pending.front() {
            return Some(expiry.time_ns);
        }
        let end = self.regs.countdown.deadline()?;
        if !self.regs.reboot_enabled {
            // Output disabled: stage 2 will end without an action.
            return None;
        }
        match self.regs.stage {
            // Stage 2 will take PV2 and the prescaler as they are now, unless a
            // guest access changes them first (and then the host asks again).
            Stage::One => Some(end.saturating_add(self.regs.stage_ns(Stage::Two))),
            Stage::Two => Some(end),
        }
    }

    /// Run every stage transition due at or before `now_ns` and hand each expiry to
    /// `sink`, in order. Returns how many expiries were delivered.
    ///
    /// In the Hardware profile a waiting stage-1 interrupt goes to
    /// [`ActionSink::stage1_interrupt`] first (it is not counted in the result).
    pub fn poll<S: ActionSink + ?Sized>(&mut self, now_ns: u64, sink: &mut S) -> usize {
        self.advance(now_ns);
        if let Some(interrupt) = self.pending_interrupt.take() {
            sink.stage1_interrupt(interrupt);
        }
        let mut delivered = 0;
        while let Some(expiry) = self.pending.pop_front() {
            sink.watchdog_expired(expiry);
            delivered += 1;
        }
        delivered
    }

    /// Bring the timer up to `now_ns`: end every stage whose deadline has passed.
    ///
    /// Deadlines are exact: stage 2 starts at the instant stage 1 ended, whenever
    /// the host happens to call, so the host's polling latency never moves an expiry.
    fn advance(&mut self, now_ns: u64) {
        while let Some(deadline) = self.regs.countdown.deadline() {
            // u64::MAX is a saturated deadline: that stage never ends. Without this
            // guard a free-running loop at the end of time would never terminate.
            if deadline > now_ns || deadline == u64::MAX {
                break;
            }
            match self.regs.stage {
                Stage::One => {
                    // QEMU raises no interrupt and sets no GISR bit here; the chip does.
                    self.events.stage1_expired();
                    self.raise_stage1(deadline);
                    self.regs.stage = Stage::Two;
                    let d2 = self.regs.stage_ns(Stage::Two);
                    self.regs.countdown = Countdown::start(deadline, d2, false);
                }
                Stage::Two => self.stage2_expired(deadline, now_ns),
            }
        }
    }

    fn stage2_expired(&mut self, deadline: u64, now_ns: u64) {
        if self.regs.reboot_enabled {
            self.timed_out = true;
            self.events.expired();
            if self.pending.len() == MAX_PENDING_EXPIRIES {
                self.pending.pop_front();
                self.events.pending_overflow();
            }
            self.pending.push_back(Expiry {
                action: self.action,
                time_ns: deadline,
            });
            match self.profile {
                // QEMU's device resets itself after every firing, keeping only the flag.
                Profile::Qemu => self.regs = Registers::RESET,
                // The chip drives WDT_TOUT# and stops; the board (the host's action)
                // decides what happens next. Only a kick starts it again.
                Profile::Hardware => {
                    self.regs.output_asserted = true;
                    self.regs.countdown = Countdown::Stopped;
                }
            }
        } else if self.regs.free_run {
            // Output disabled in free-running mode: both stages restart silently.
            let cycle = self.regs.stage_ns(Stage::One) + self.regs.stage_ns(Stage::Two);
            self.regs.stage = Stage::One;
            match (now_ns - deadline).checked_div(cycle) {
                // QEMU would re-run both empty stages at this instant forever; keep no
                // deadline and restart when a register change could end the loop.
                None => self.regs.countdown = Countdown::Spinning,
                Some(skipped) => {
                    // Whole silent cycles the host slept through are skipped at once.
                    let start = deadline.saturating_add(skipped.saturating_mul(cycle));
                    let d1 = self.regs.stage_ns(Stage::One);
                    if skipped > 0 {
                        // Their stage-1 ends: the first one sets GISR.
                        self.raise_stage1(deadline.saturating_add(d1));
                    }
                    self.regs.countdown = Countdown::start(start, d1, false);
                }
            }
        } else {
            // Output disabled, one-shot: the timer stops but ENABLE still reads 1.
            self.regs.countdown = Countdown::Stopped;
        }
    }

    /// Stage 1 ran out at `at_ns`: in the Hardware profile set GISR bit 0 and, on
    /// its 0-to-1 edge, queue an IRQ or SMI for the host if WDTCR selects one.
    fn raise_stage1(&mut self, at_ns: u64) {
        if self.profile != Profile::Hardware || self.regs.gisr {
            return;
        }
        self.regs.gisr = true;
        if let Some(kind) = InterruptKind::from_int_type(self.regs.int_type) {
            // One waiting interrupt at most: a second edge before the host polls
            // is the same interrupt line, already raised.
            self.pending_interrupt.get_or_insert(Stage1Interrupt {
                kind,
                time_ns: at_ns,
            });
        }
    }

    /// Leave a zero-length silent loop if a register change made it matter: a
    /// preload became non-zero, the output was enabled, or free-running mode was
    /// switched off. Restarting stage 1 now is what QEMU's next loop turn does.
    fn settle_spin(&mut self, now_ns: u64) {
        if self.regs.countdown == Countdown::Spinning {
            self.start_stage1(now_ns);
            self.advance(now_ns);
        }
    }

    fn start_stage1(&mut self, now_ns: u64) {
        self.regs.stage = Stage::One;
        let d1 = self.regs.stage_ns(Stage::One);
        self.regs.countdown = Countdown::start(now_ns, d1, self.paused);
    }

    /// Whether a configuration access of `len` bytes at `offset` reaches the
    /// device-specific registers (a 16-bit access at 0x60 or an 8-bit one at 0x68).
    /// Everything else belongs to the PCI header code and never needs the time.
    ///
    /// That is the QEMU profile's rule; [`Watchdog::claims_config`] answers for
    /// this watchdog's profile.
    pub fn decodes_config(offset: usize, len: usize) -> bool {
        matches!((offset, len), (CFG_WDT_CONFIG, 2) | (CFG_WDT_LOCK, 1))
    }

    /// Whether this watchdog answers a configuration access of `len` bytes at
    /// `offset`: [`Watchdog::decodes_config`] in the QEMU profile; in the
    /// Hardware profile any 1-, 2- or 4-byte access covering a byte of WDTCR
    /// (0x60-0x61) or WDTLR (0x68), as byte enables decode on the chip.
    pub fn claims_config(&self, offset: usize, len: usize) -> bool {
        match self.profile {
            Profile::Qemu => Self::decodes_config(offset, len),
            Profile::Hardware => {
                let covers = |reg: usize, width: usize| {
                    offset < reg + width && offset.checked_add(len).is_some_and(|end| reg < end)
                };
                matches!(len, 1 | 2 | 4) && (covers(CFG_WDT_CONFIG, 2) || covers(CFG_WDT_LOCK, 1))
            }
        }
    }

    /// A configuration-space read at the device-specific registers.
    ///
    /// Returns `true` if the access was a 16-bit read of 0x60 or an 8-bit read of
    /// 0x68 and `data` was filled; otherwise leaves `data` alone and returns `false`
    /// (the caller's PCI code answers it). In the Hardware profile every access
    /// [`Watchdog::claims_config`] accepts is filled: the register bytes it covers,
    /// and zeros for the unimplemented device-specific bytes around them.
    pub fn config_read(&mut self, now_ns: u64, offset: usize, data: &mut [u8]) -> bool {
        self.advance(now_ns);
        if self.profile == Profile::Hardware {
            if !self.claims_config(offset, data.len()) {
                return false;
            }
            let wdtcr = self.regs.wdtcr().to_le_bytes();
            for (i, b) in data.iter_mut().enumerate() {
                *b = match offset + i {
                    CFG_WDT_CONFIG => wdtcr[0],
                    a if a == CFG_WDT_CONFIG + 1 => wdtcr[1],
                    CFG_WDT_LOCK => self.regs.wdtlr(),
                    _ => 0,
                };
            }
            return true;
        }
        match (offset, data.len()) {
            (CFG_WDT_CONFIG, 2) => {
                put_le(data, u64::from(self.regs.wdtcr()));
                true
            }
            (CFG_WDT_LOCK, 1) => {
                data[0] = self.regs.wdtlr();
                true
            }
            _ => false,
        }
    }

    /// A configuration-space write at the device-specific registers.
    ///
    /// Returns `true` if it was a 16-bit write of 0x60 or an 8-bit write of 0x68
    /// (handled here, whether or not the lock let it through); otherwise `false`.
    /// In the Hardware profile, any access [`Watchdog::claims_config`] accepts
    /// writes the register bytes it covers (the rest is dropped) and returns `true`.
    pub fn config_write(&mut self, now_ns: u64, offset: usize, data: &[u8]) -> bool {
        self.advance(now_ns);
        if self.profile == Profile::Hardware {
            if !self.claims_config(offset, data.len()) {
                return false;
            }
            let mut wdtcr = self.regs.wdtcr().to_le_bytes();
            let mut wdtcr_written = false;
            let mut wdtlr = None;
            for (i, &b) in data.iter().enumerate() {
                match offset + i {
                    CFG_WDT_CONFIG => (wdtcr[0], wdtcr_written) = (b, true),
                    a if a == CFG_WDT_CONFIG + 1 => (wdtcr[1], wdtcr_written) = (b, true),
                    CFG_WDT_LOCK => wdtlr = Some(b),
                    _ => {}
                }
            }
            if wdtcr_written {
                self.write_config_register(u16::from_le_bytes(wdtcr));
            }
            if let Some(v) = wdtlr {
                self.write_lock_register(now_ns, v);
            }
            self.settle_spin(now_ns);
            return true;
        }
        match (offset, data.len()) {
            (CFG_WDT_CONFIG, 2) => {
                self.write_config_register(le_value(data) as u16);
                self.settle_spin(now_ns);
                true
            }
            (CFG_WDT_LOCK, 1) => {
                self.write_lock_register(now_ns, data[0]);
                self.settle_spin(now_ns);
                true
            }
            _ => false,
        }
    }

    /// WDTCR: not covered by the lock bit (QEMU; unknown on the chip).
    fn write_config_register(&mut self, v: u16) {
        self.regs.reboot_enabled = v & WDT_OUTPUT_DISABLE == 0;
        self.regs.one_mhz = v & WDT_PRE_SEL != 0;
        self.regs.int_type = v & self.profile.int_type_mask();
    }

    fn write_lock_register(&mut self, now_ns: u64, v: u8) {
        if self.regs.locked {
            self.events.locked_write();
            return;
        }
        self.regs.locked = v & LOCK_WDT_LOCK != 0;
        self.regs.free_run = v & LOCK_WDT_FREE_RUN != 0;
        let was_enabled = self.regs.enabled;
        self.regs.enabled = v & LOCK_WDT_ENABLE != 0;
        if self.regs.enabled && !was_enabled {
            self.start_stage1(now_ns);
        } else if !self.regs.enabled {
            self.regs.countdown = Countdown::Stopped;
        }
    }

    /// A read of BAR0 at `offset` (0x00–0x0F).
    ///
    /// As in QEMU, everything reads 0 except a 16-bit read of the reload register,
    /// which returns 0x1200 while the timeout flag is set. In the Hardware
    /// profile, any read covering byte 0x0D shows the flag as bit 9 of the reload
    /// register (0x0200 for a 16-bit read) and any read covering byte 0x08 shows
    /// GISR bit 0; preloads still read 0.
    pub fn mmio_read(&mut self, now_ns: u64, offset: u64, data: &mut [u8]) {
        self.advance(now_ns);
        if !valid_access(offset, data.len(), BAR0_SIZE) {
            data.fill(0);
            self.events.ignored_mmio_access();
            return;
        }
        // From here on every byte of `data` (1, 2 or 4 of them) is written below.
        if self.profile == Profile::Hardware {
            let flag_byte = (RELOAD_TIMEOUT >> 8) as u8;
            for (i, b) in data.iter_mut().enumerate() {
                *b = match offset + i as u64 {
                    MMIO_GISR if self.regs.gisr => GISR_WDT_INT_ACT,
                    a if a == MMIO_RELOAD + 1 && self.timed_out => flag_byte,
                    _ => 0,
                };
            }
            return;
        }
        let value = if offset == MMIO_RELOAD && data.len() == 2 && self.timed_out {
            RELOAD_READ_FLAG_SET
        } else {
            0
        };
        put_le(data, u64::from(value));
    }

    /// A write to BAR0 at `offset` (0x00–0x0F).
    pub fn mmio_write(&mut self, now_ns: u64, offset: u64, data: &[u8]) {
        self.advance(now_ns);
        if !valid_access(offset, data.len(), BAR0_SIZE) {
            self.events.ignored_mmio_access();
            return;
        }
        let value = le_value(data) as u32;
        let width = data.len();
        if self.profile == Profile::Hardware && offset == MMIO_GISR {
            // The chip's GISR is outside the write protection: write 1 to clear,
            // no unlock needed and an open window left open.
            if data[0] & GISR_WDT_INT_ACT != 0 {
                self.regs.gisr = false;
                if self.regs.countdown == Countdown::Spinning {
                    // A zero-length loop ends stage 1 again at once.
                    self.raise_stage1(now_ns);
                }
            }
            return;
        }
        // The unlock values are compared whole, at the reload register, at any width.
        if offset == MMIO_RELOAD && value == UNLOCK_FIRST {
            self.regs.unlock = Unlock::FirstSeen;
            return;
        }
        if offset == MMIO_RELOAD && value == UNLOCK_SECOND && self.regs.unlock == Unlock::FirstSeen
        {
            self.regs.unlock = Unlock::Open;
            return;
        }
        if width == 1 {
            // Byte writes only feed the unlock sequence; they never consume the window.
            return;
        }
        if self.regs.unlock != Unlock::Open {
            self.events.write_without_unlock();
            return;
        }
        // The one protected write of this window, whatever it does.
        self.regs.unlock = Unlock::Locked;
        match (width, offset) {
            (2, MMIO_RELOAD) => {
                let v = value as u16;
                if v & RELOAD_KICK != 0 && self.regs.enabled {
                    self.events.kick();
                    self.start_stage1(now_ns);
                }
                if v & (RELOAD_TIMEOUT | RELOAD_TIMEOUT_OLD) != 0 {
                    self.timed_out = false;
                }
            }
            (4, MMIO_PRELOAD1) => {
                self.regs.preload1 = value & PRELOAD_MASK;
                self.settle_spin(now_ns);
            }
            (4, MMIO_PRELOAD2) => {
                self.regs.preload2 = value & PRELOAD_MASK;
                self.settle_spin(now_ns);
            }
            // 16-bit writes elsewhere, 32-bit writes to GISR or the reload register:
            // the window is spent and nothing changes (QEMU).
            _ => {}
        }
    }

    /// The device reset QEMU performs on a machine reset: timer stopped, registers at
    /// their reset values, the timeout flag kept so the next boot can read it.
    pub fn warm_reset(&mut self) {
        self.regs = Registers::RESET;
    }

    /// A power-on reset: as [`Watchdog::warm_reset`], the timeout flag cleared, and
    /// expiries (and a stage-1 interrupt) not yet polled dropped: they belong to the
    /// machine that was switched off. (A warm reset keeps them for the next poll.)
    pub fn power_on_reset(&mut self) {
        self.regs = Registers::RESET;
        self.timed_out = false;
        self.pending.clear();
        self.pending_interrupt = None;
    }

    /// Freeze the countdown (the VM is paused). Expiries due by `now_ns` happen first.
    pub fn pause(&mut self, now_ns: u64) {
        self.advance(now_ns);
        self.paused = true;
        self.regs.countdown = self.regs.countdown.freeze(now_ns);
    }

    /// Let the countdown run again with the time it had left when paused.
    pub fn resume(&mut self, now_ns: u64) {
        self.paused = false;
        self.regs.countdown = self.regs.countdown.thaw(now_ns);
    }

    /// Time left in the current stage at `now_ns`, if the timer is counting.
    pub fn remaining_ns(&self, now_ns: u64) -> Option<u64> {
        self.regs.countdown.remaining(now_ns)
    }

    /// The saved state at `now_ns` (stage transitions due by then are run first).
    pub fn state(&mut self, now_ns: u64) -> WatchdogState {
        self.advance(now_ns);
        let r = &self.regs;
        WatchdogState {
            version: WATCHDOG_STATE_VERSION,
            action: self.action,
            reboot_enabled: r.reboot_enabled,
            one_mhz: r.one_mhz,
            int_type: r.int_type,
            free_run: r.free_run,
            locked: r.locked,
            enabled: r.enabled,
            preload1: r.preload1,
            preload2: r.preload2,
            unlock_state: r.unlock.code(),
            stage2: r.stage == Stage::Two,
            remaining_ns: r.countdown.remaining(now_ns),
            spinning: r.countdown == Countdown::Spinning,
            timed_out: self.timed_out,
            paused: self.paused,
            pending: self.pending.iter().map(|e| e.action).collect(),
            profile: self.profile,
            gisr: r.gisr,
            output_asserted: r.output_asserted,
            pending_interrupt: self.pending_interrupt.map(|i| i.kind),
        }
    }

    /// Load a saved state into this watchdog at `now_ns`, as [`Watchdog::restore`]
    /// does, keeping the events hook. On error nothing changes.
    pub fn load_state(&mut self, state: &WatchdogState, now_ns: u64) -> Result<(), StateError> {
        let restored = Watchdog::restore(state, now_ns, NoEvents)?;
        self.regs = restored.regs;
        self.timed_out = restored.timed_out;
        self.paused = restored.paused;
        self.action = restored.action;
        self.pending = restored.pending;
        self.pending_interrupt = restored.pending_interrupt;
        self.profile = restored.profile;
        Ok(())
    }

    /// Rebuild a watchdog from a saved state at `now_ns`, in the state's profile
    /// (a version-1 state restores as [`Profile::Qemu`]).
    ///
    /// The state is validated first. The countdown resumes with the time it had
    /// left when saved, so downtime between save and restore never makes it fire.
    pub fn restore(state: &WatchdogState, now_ns: u64, events: E) -> Result<Self, StateError> {
        state.validate()?;
        let unlock = Unlock::from_code(state.unlock_state).ok_or(StateError::UnlockState)?;
        let countdown = match state.remaining_ns {
            None if state.spinning => Countdown::Spinning,
            None => Countdown::Stopped,
            Some(remaining) if state.paused => Countdown::Frozen {
                remaining_ns: remaining,
            },
            Some(remaining) => Countdown::Running {
                deadline_ns: now_ns.saturating_add(remaining),
            },
        };
        debug_assert!(state.remaining_ns.unwrap_or(0) <= MAX_STAGE_NS);
        Ok(Watchdog {
            regs: Registers {
                reboot_enabled: state.reboot_enabled,
                one_mhz: state.one_mhz,
                int_type: state.int_type,
                free_run: state.free_run,
                locked: state.locked,
                enabled: state.enabled,
                preload1: state.preload1,
                preload2: state.preload2,
                unlock,
                stage: if state.stage2 { Stage::Two } else { Stage::One },
                countdown,
                gisr: state.gisr,
                output_asserted: state.output_asserted,
            },
            timed_out: state.timed_out,
            paused: state.paused,
            action: state.action,
            pending: state
                .pending
                .iter()
                .map(|&action| Expiry {
                    action,
                    time_ns: now_ns,
                })
                .collect(),
            pending_interrupt: state.pending_interrupt.map(|kind| Stage1Interrupt {
                kind,
                time_ns: now_ns,
            }),
            profile: state.profile,
            events,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::valid_access;

    #[test]
    fn valid_access_is_natural_alignment_inside_the_window() {
        // The mask test agrees with the definition (a remainder) for every width.
        for offset in (0..40u64).chain([u64::MAX - 3, u64::MAX - 1, u64::MAX]) {
            for len in 0..=9usize {
                let want = matches!(len, 1 | 2 | 4)
                    && offset % len as u64 == 0
                    && offset.checked_add(len as u64).is_some_and(|end| end <= 16);
                assert_eq!(
                    valid_access(offset, len, 16),
                    want,
                    "{len} bytes at {offset:#x}"
                );
            }
        }
    }
}
