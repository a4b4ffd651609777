//! Runs a [`FuzzInput`] against the device and asserts the invariants:
//!
//! 1. nothing panics;
//! 2. no expiry while the watchdog is disabled;
//! 3. no expiry before the programmed time: stage 1 as fixed when the watchdog
//!    was enabled or kicked, plus the shortest stage 2 programmed since, plus the
//!    time the VM spent paused since;
//! 4. `state()` -> bytes -> `restore` -> `state()` is the identity;
//! 5. expiries carry the configured action and are never in the future.
//!
//! The checker ([`Shadow`]) sees arming from outside: an 8-bit write of 0x68 that
//! sets ENABLE while the lock register was unlocked and disabled, or a kick the
//! device counted. It uses the model's accessors only to read the registers the
//! guest programmed (preloads, prescaler, lock, enable, pause).

use std::sync::Arc;

use i6300esb::{
    stage_duration_ns, Clock, EventCounters, Expiry, I6300Esb, I6300EsbState, ManualClock,
    WatchdogState,
};

use crate::ops::{wide_offset, FuzzInput, Op};

/// Where the clock starts: far from 0 so "time 0" coincidences do not hide bugs.
pub const START_NS: u64 = 1_000_000_000;

type Device = I6300Esb<ManualClock, Arc<EventCounters>>;

/// The programmed time of the current arming, as seen from outside the model.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Armed {
    /// When the watchdog was enabled or last kicked.
    pub at_ns: u64,
    /// Stage 1 length fixed at that moment.
    pub stage1_ns: u64,
    /// The shortest stage 2 length programmed since then.
    pub min_stage2_ns: u64,
    /// Total paused time (see [`Shadow::paused_total`]) at that moment.
    pub paused_at_arm_ns: u64,
}

/// The invariant checker's view of the device.
#[derive(Clone, Debug, Default)]
pub struct Shadow {
    /// `None` while disabled: any expiry is then a bug.
    pub armed: Option<Armed>,
    /// Paused time accumulated over finished pauses.
    pub paused_ns: u64,
    /// Start of the pause in progress, if any.
    pub pause_start: Option<u64>,
}

impl Shadow {
    /// Paused time up to `now`, including a pause in progress.
    pub fn paused_total(&self, now: u64) -> u64 {
        self.paused_ns + self.pause_start.map_or(0, |p| now - p)
    }

    /// The watchdog was (re)armed at `now` with these stage lengths.
    pub fn arm(&mut self, now: u64, stage1_ns: u64, stage2_ns: u64) {
        self.armed = Some(Armed {
            at_ns: now,
            stage1_ns,
            min_stage2_ns: stage2_ns,
            paused_at_arm_ns: self.paused_total(now),
        });
    }

    /// The earliest time an expiry of the current arming may carry.
    pub fn earliest(&self, now: u64) -> Option<u64> {
        self.armed.map(|a| {
            a.at_ns + a.stage1_ns + a.min_stage2_ns + (self.paused_total(now) - a.paused_at_arm_ns)
        })
    }

    /// Check one expiry delivered at `now`.
    pub fn check(&self, e: &Expiry, now: u64) {
        let earliest = self
            .earliest(now)
            .unwrap_or_else(|| panic!("expiry while the watchdog is disabled: {e:?}"));
        assert!(
            e.time_ns >= earliest,
            "expiry at {} before the programmed time {earliest} ({:?})",
            e.time_ns,
            self.armed
        );
        assert!(e.time_ns <= now, "expiry in the future: {e:?} at {now}");
    }
}

fn stage_ns(s: &WatchdogState, stage2: bool) -> u64 {
    let pv = if stage2 { s.preload2 } else { s.preload1 };
    stage_duration_ns(pv, s.one_mhz)
}

/// The device, its clock and counters, and the checker.
pub struct Harness {
    /// The clock the device reads.
    pub clock: ManualClock,
    /// The device under test.
    pub dev: Device,
    /// Its events.
    pub events: Arc<EventCounters>,
    /// The invariant checker.
    pub shadow: Shadow,
    /// Every expiry seen, in order.
    pub fired: Vec<Expiry>,
    action: i6300esb::WatchdogAction,
}

impl Harness {
    /// A fresh device requesting `action`.
    pub fn new(action: i6300esb::WatchdogAction) -> Self {
        let clock = ManualClock::new(START_NS);
        let events = Arc::new(EventCounters::default());
        let dev = I6300Esb::with_events(action, clock.clone(), events.clone());
        Harness {
            clock,
            dev,
            events,
            shadow: Shadow::default(),
            fired: Vec::new(),
            action,
        }
    }

    fn now(&self) -> u64 {
        self.clock.now_ns()
    }

    /// Poll, check every expiry against the shadow, then follow the device's
    /// enable bit and programmed stage 2.
    fn settle(&mut self) {
        let now = self.now();
        let mut got: Vec<Expiry> = Vec::new();
        self.dev.poll(&mut got);
        for e in &got {
            assert_eq!(e.action, self.action, "expiry with another action");
            self.shadow.check(e, now);
        }
        self.fired.extend(got);
        let s = self.dev.state().watchdog;
        if !s.enabled {
            self.shadow.armed = None;
        } else if let Some(a) = self.shadow.armed.as_mut() {
            a.min_stage2_ns = a.min_stage2_ns.min(stage_ns(&s, true));
        }
    }

    /// Run one operation and check the invariants around it.
    pub fn step(&mut self, op: Op) {
        // Whatever was due before this operation belongs to the current arming.
        self.settle();
        let before = self.dev.state().watchdog;
        let kicks = EventCounters::get(&self.events.kick);
        let paused_before = self.dev.watchdog().is_paused();
        self.apply(op);
        let now = self.now();
        let after = self.dev.state().watchdog;

        // Pause bookkeeping.
        match (paused_before, self.dev.watchdog().is_paused()) {
            (false, true) => self.shadow.pause_start = Some(now),
            (true, false) => {
                let start = self.shadow.pause_start.take().expect("pause recorded");
                self.shadow.paused_ns += now - start;
            }
            _ => {}
        }

        // Arming, judged from the access itself and the kick counter.
        let enabled_by_write = matches!(
            op,
            Op::ConfigWrite { offset: 0x68, width: 1, value }
                if value & 0x02 != 0 && !before.locked && !before.enabled
        );
        let kicked = EventCounters::get(&self.events.kick) > kicks;
        let d2 = stage_ns(&before, true).min(stage_ns(&after, true));
        if enabled_by_write || kicked {
            self.shadow.arm(now, stage_ns(&before, false), d2);
        } else if before.spinning && !matches!(op, Op::Advance { .. }) {
            // A zero-length silent loop restarts on register changes: all the
            // checker can promise then is "not before now".
            self.shadow.arm(now, 0, 0);
        }
        // Expiries the operation itself caused (zero-length stages).
        self.settle();
    }

    fn apply(&mut self, op: Op) {
        match op {
            Op::ConfigRead { offset, width } => {
                let mut buf = vec![0xa5u8; usize::from(width)];
                self.dev.config_read(wide_offset(offset) as usize, &mut buf);
            }
            Op::ConfigWrite {
                offset,
                width,
                value,
            } => {
                let bytes = value.to_le_bytes();
                self.dev
                    .config_write(wide_offset(offset) as usize, &bytes[..usize::from(width)]);
            }
            Op::Bar0Read { offset, width } => {
                let mut buf = vec![0xa5u8; usize::from(width)];
                self.dev.bar0_read(wide_offset(offset), &mut buf);
                let ok = matches!(width, 1 | 2 | 4);
                // Reads are all zero except the flag in a word read of 0x0C.
                if ok && wide_offset(offset) == 0x0c && width == 2 {
                    let flag = self.dev.watchdog().timeout_flag();
                    let want: [u8; 2] = if flag { [0x00, 0x12] } else { [0, 0] };
                    assert_eq!(buf, want, "reload register read");
                } else {
                    assert!(buf.iter().all(|&b| b == 0), "BAR0 read {op:?} -> {buf:x?}");
                }
            }
            Op::Bar0Write {
                offset,
                width,
                value,
            } => {
                let bytes = value.to_le_bytes();
                self.dev
                    .bar0_write(wide_offset(offset), &bytes[..usize::from(width)]);
            }
            Op::Advance { scale, count } => {
                let unit: u64 = match scale {
                    0 => 1,
                    1 => 1_000,
                    2 => 1_000_000,
                    _ => 1_000_000_000,
                };
                self.clock.advance(unit * u64::from(count));
            }
            Op::AdvanceToDeadline { minus_one } => {
                if let Some(d) = self.dev.next_deadline() {
                    self.clock
                        .set(if minus_one { d.saturating_sub(1) } else { d });
                }
            }
            Op::Pause => self.dev.pause(),
            Op::Resume => self.dev.resume(),
            Op::Snapshot => {
                let s1 = self.dev.state();
                let bytes = s1.to_bytes();
                let s2 = I6300EsbState::from_bytes(&bytes).expect("own encoding decodes");
                assert_eq!(s2, s1, "byte encoding round trip");
                let mut restored = I6300Esb::restore(&s2, self.clock.clone(), self.events.clone())
                    .expect("own state restores");
                assert_eq!(restored.state(), s1, "state -> restore -> state");
                self.dev = restored;
            }
            Op::WarmReset => self.dev.warm_reset(),
            Op::PowerOnReset => self.dev.power_on_reset(),
            Op::Unlock => {
                self.dev.bar0_write(0x0c, &0x80u16.to_le_bytes());
                self.dev.bar0_write(0x0c, &0x86u16.to_le_bytes());
            }
            Op::TamperSnapshot { index, xor } => {
                let mut bytes = self.dev.state().to_bytes();
                let i = usize::from(index) % bytes.len();
                bytes[i] ^= xor;
                // Must not panic; whatever decodes must be valid and restorable.
                if let Ok(s) = I6300EsbState::from_bytes(&bytes) {
                    assert_eq!(s.validate(), Ok(()));
                    let mut d = I6300Esb::restore(&s, self.clock.clone(), EventCounters::default())
                        .expect("a decoded state restores");
                    let _ = d.state();
                }
            }
        }
    }
}

/// Run a whole input, panicking on the first broken invariant.
pub fn run(input: &FuzzInput) -> Harness {
    let mut h = Harness::new(input.action);
    for &op in &input.ops {
        h.step(op);
    }
    h.settle();
    h
}

#[cfg(test)]
mod tests {
    use super::*;
    use i6300esb::WatchdogAction;

    fn expiry(t: u64) -> Expiry {
        Expiry {
            action: WatchdogAction::Reset,
            time_ns: t,
        }
    }

    #[test]
    #[should_panic(expected = "while the watchdog is disabled")]
    fn checker_rejects_expiry_while_disabled() {
        Shadow::default().check(&expiry(5), 10);
    }

    #[test]
    #[should_panic(expected = "before the programmed time")]
    fn checker_rejects_early_expiry() {
        let mut s = Shadow::default();
        s.arm(100, 50, 50);
        s.check(&expiry(199), 1_000);
    }

    #[test]
    #[should_panic(expected = "before the programmed time")]
    fn checker_counts_paused_time() {
        let mut s = Shadow::default();
        s.arm(100, 50, 50);
        s.pause_start = Some(120);
        s.paused_ns = 0;
        // Paused from 120 to 150: the earliest expiry moves from 200 to 230.
        s.paused_ns += 30;
        s.pause_start = None;
        assert_eq!(s.earliest(400), Some(230));
        s.check(&expiry(229), 400);
    }

    #[test]
    fn checker_accepts_on_time_expiry() {
        let mut s = Shadow::default();
        s.arm(100, 50, 50);
        s.check(&expiry(200), 200);
    }
}
