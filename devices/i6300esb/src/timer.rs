//! The two-stage countdown, in virtual nanoseconds.
//!
//! A stage lasts `preload << shift` PCI clocks of 30 ns each (QEMU's arithmetic),
//! where the shift is 15 with the 1 kHz prescaler and 5 with the 1 MHz one. The
//! duration is fixed when the stage is entered, so a later preload or prescaler
//! change only affects the next stage.

use crate::regs::{NS_PER_PCI_CLOCK, PRELOAD_MASK, PRESCALER_SHIFT_1KHZ, PRESCALER_SHIFT_1MHZ};

/// Which half of the watchdog is counting.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    /// Counting down the first preload; expiry would raise the (unmodelled) interrupt.
    One,
    /// Counting down the second preload; expiry fires the watchdog.
    Two,
}

/// The longest stage: 0xFFFFF units at the 1 kHz prescaler (about 17.2 minutes).
pub const MAX_STAGE_NS: u64 = ((PRELOAD_MASK as u64) << PRESCALER_SHIFT_1KHZ) * NS_PER_PCI_CLOCK;

/// How long a stage with `preload` units lasts, in nanoseconds.
///
/// Only the low 20 bits of `preload` count. The result never overflows: the
/// largest value is [`MAX_STAGE_NS`].
pub fn stage_duration_ns(preload: u32, one_mhz: bool) -> u64 {
    let shift = if one_mhz {
        PRESCALER_SHIFT_1MHZ
    } else {
        PRESCALER_SHIFT_1KHZ
    };
    (u64::from(preload & PRELOAD_MASK) << shift) * NS_PER_PCI_CLOCK
}

/// The state of the countdown.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Countdown {
    /// Not counting.
    Stopped,
    /// Counting; the current stage ends at `deadline_ns`.
    Running { deadline_ns: u64 },
    /// Counting is frozen (the VM is paused) with this much of the stage left.
    Frozen { remaining_ns: u64 },
    /// Free-running mode with the output disabled and both preloads 0: QEMU's timer
    /// re-enters the stages at the same instant forever without any visible effect.
    /// There is no deadline; the next register change that could matter restarts
    /// stage 1 (see `Watchdog::settle_spin`).
    Spinning,
}

impl Countdown {
    /// Start a stage of `duration_ns` at `now_ns`, frozen if `paused`.
    pub(crate) fn start(now_ns: u64, duration_ns: u64, paused: bool) -> Self {
        if paused {
            Countdown::Frozen {
                remaining_ns: duration_ns,
            }
        } else {
            Countdown::Running {
                deadline_ns: now_ns.saturating_add(duration_ns),
            }
        }
    }

    /// The time the current stage ends, if counting. `u64::MAX` means "never": a
    /// stage whose end does not fit in 64 bits of nanoseconds (584 years) never ends.
    pub(crate) fn deadline(self) -> Option<u64> {
        match self {
            Countdown::Running { deadline_ns } => Some(deadline_ns),
            _ => None,
        }
    }

    /// Time left in the current stage at `now_ns`, if a stage is in progress.
    pub(crate) fn remaining(self, now_ns: u64) -> Option<u64> {
        match self {
            Countdown::Stopped | Countdown::Spinning => None,
            Countdown::Running { deadline_ns } => Some(deadline_ns.saturating_sub(now_ns)),
            Countdown::Frozen { remaining_ns } => Some(remaining_ns),
        }
    }

    /// Stop the clock, keeping the time left.
    pub(crate) fn freeze(self, now_ns: u64) -> Self {
        match self {
            Countdown::Running { deadline_ns } => Countdown::Frozen {
                remaining_ns: deadline_ns.saturating_sub(now_ns),
            },
            other => other,
        }
    }

    /// Start the clock again from `now_ns` with the time that was left.
    pub(crate) fn thaw(self, now_ns: u64) -> Self {
        match self {
            Countdown::Frozen { remaining_ns } => Countdown::Running {
                deadline_ns: now_ns.saturating_add(remaining_ns),
            },
            other => other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_match_qemu_arithmetic() {
        assert_eq!(stage_duration_ns(1, false), 983_040);
        assert_eq!(stage_duration_ns(1, true), 960);
        assert_eq!(stage_duration_ns(100, false), 98_304_000);
        assert_eq!(stage_duration_ns(0x3c00, false), 15_099_494_400);
        assert_eq!(stage_duration_ns(0xfffff, false), 1_030_791_168_000);
        assert_eq!(stage_duration_ns(0xfffff, true), 1_006_632_000);
        assert_eq!(stage_duration_ns(0xffff_ffff, false), MAX_STAGE_NS);
        assert_eq!(stage_duration_ns(0, false), 0);
    }

    #[test]
    fn freeze_and_thaw_keep_remaining_time() {
        let c = Countdown::start(1_000, 500, false);
        assert_eq!(c.deadline(), Some(1_500));
        let f = c.freeze(1_200);
        assert_eq!(f, Countdown::Frozen { remaining_ns: 300 });
        assert_eq!(f.deadline(), None);
        assert_eq!(f.remaining(99_999), Some(300));
        let t = f.thaw(10_000);
        assert_eq!(t.deadline(), Some(10_300));
        assert_eq!(
            Countdown::start(5, 7, true),
            Countdown::Frozen { remaining_ns: 7 }
        );
        assert_eq!(
            Countdown::start(u64::MAX - 1, 7, false).deadline(),
            Some(u64::MAX)
        );
    }
}
