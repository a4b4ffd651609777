//! The device-specific part of the i6300esb: configuration registers 0x60 and 0x68,
//! the BAR0 registers, the unlock sequence and the two-stage timer.
//!
//! [`Watchdog`] knows nothing of the standard PCI header, so a VMM that owns its
//! PCI header code can embed it directly; [`crate::I6300Esb`] adds the header and
//! an injected clock. Every method takes the current virtual time explicitly.

use std::collections::VecDeque;

use crate::action::{ActionSink, Expiry, WatchdogAction};
use crate::events::{NoEvents, WatchdogEvents};
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
    /// WDTCR interrupt type, stored with QEMU's 0x11 mask.
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
pub(crate) fn valid_access(offset: u64, len: usize, size: u64) -> bool {
    matches!(len, 1 | 2 | 4)
        && offset % len as u64 == 0
        && offset
            .checked_add(len as u64)
            .is_some_and(|end| end <= size)
}

/// Little-endian value of an access of 1 to 8 bytes.
pub(crate) fn le_value(data: &[u8]) -> u64 {
    data.iter()
        .rev()
        .fold(0u64, |acc, &b| (acc << 8) | u64::from(b))
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
            events,
        }
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
    pub fn next_deadline(&self) -> Option<u64> {
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
    pub fn poll<S: ActionSink + ?Sized>(&mut self, now_ns: u64, sink: &mut S) -> usize {
        self.advance(now_ns);
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
                    // QEMU raises no interrupt and sets no GISR bit here.
                    self.events.stage1_expired();
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
            // QEMU's device resets itself after every firing, keeping only the flag.
            self.regs = Registers::RESET;
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
                    self.regs.countdown = Countdown::start(start, d1, false);
                }
            }
        } else {
            // Output disabled, one-shot: the timer stops but ENABLE still reads 1.
            self.regs.countdown = Countdown::Stopped;
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
    pub fn decodes_config(offset: usize, len: usize) -> bool {
        matches!((offset, len), (CFG_WDT_CONFIG, 2) | (CFG_WDT_LOCK, 1))
    }

    /// A configuration-space read at the device-specific registers.
    ///
    /// Returns `true` if the access was a 16-bit read of 0x60 or an 8-bit read of
    /// 0x68 and `data` was filled; otherwise leaves `data` alone and returns `false`
    /// (the caller's PCI code answers it).
    pub fn config_read(&mut self, now_ns: u64, offset: usize, data: &mut [u8]) -> bool {
        self.advance(now_ns);
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
    pub fn config_write(&mut self, now_ns: u64, offset: usize, data: &[u8]) -> bool {
        self.advance(now_ns);
        match (offset, data.len()) {
            (CFG_WDT_CONFIG, 2) => {
                // Not covered by the lock bit in QEMU.
                let v = le_value(data) as u16;
                self.regs.reboot_enabled = v & WDT_OUTPUT_DISABLE == 0;
                self.regs.one_mhz = v & WDT_PRE_SEL != 0;
                self.regs.int_type = v & WDT_INT_TYPE_MASK_QEMU;
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
    /// which returns 0x1200 while the timeout flag is set.
    pub fn mmio_read(&mut self, now_ns: u64, offset: u64, data: &mut [u8]) {
        self.advance(now_ns);
        data.fill(0);
        if !valid_access(offset, data.len(), BAR0_SIZE) {
            self.events.ignored_mmio_access();
            return;
        }
        if offset == MMIO_RELOAD && data.len() == 2 && self.timed_out {
            put_le(data, u64::from(RELOAD_READ_FLAG_SET));
        }
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

    /// A power-on reset: as [`Watchdog::warm_reset`], and the timeout flag cleared.
    pub fn power_on_reset(&mut self) {
        self.regs = Registers::RESET;
        self.timed_out = false;
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
        }
    }

    /// Rebuild a watchdog from a saved state at `now_ns`.
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
            events,
        })
    }
}
