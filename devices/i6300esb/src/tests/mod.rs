//! Conformance tests: every case of docs/DEVICE.md §7, in virtual time,
//! one file per section of docs/DEVICE.md (each file says which); the Hardware profile's
//! cases are in `hardware`.
//!
//! Each test is named `case_NN_...` after the case it pins. Times are exact
//! nanoseconds on a [`ManualClock`]; nothing sleeps. A 1 kHz unit is 983,040 ns
//! and a 1 MHz unit 960 ns (QEMU's 30 ns PCI clock).

use std::sync::Arc;

use crate::events::EventCounters;
use crate::state::I6300EsbState;
use crate::{Expiry, I6300Esb, ManualClock, Stage, StateError, WatchdogAction};

/// One preload unit with the 1 kHz prescaler.
const UNIT_1K: u64 = 983_040;
/// One preload unit with the 1 MHz prescaler.
const UNIT_1M: u64 = 960;
/// 100 units at 1 kHz, the stage length most cases use.
const MS_98: u64 = 100 * UNIT_1K;
/// Both stages of 100 units: 196,608,000 ns.
const FIRE_100_100: u64 = 2 * MS_98;
/// One millisecond.
const MS: u64 = 1_000_000;
/// Where the test BAR0 lives.
const BAR0: u32 = 0xfebf_0000;
/// A start time far from zero, so no case passes by accident at t = 0.
const T_START: u64 = 7_000_000_000;

type Dev = I6300Esb<ManualClock, Arc<EventCounters>>;

/// Little-endian accessors of one access window of the device (configuration space or
/// BAR0): writes of 1, 2 and 4 bytes, and reads of 1, 2 and 4 bytes into a buffer that
/// starts as 0xa5 bytes, so a read the device ignores shows.
macro_rules! window_accessors {
    ($off:ty, $write:ident, $read:ident,
     $w8:ident, $w16:ident, $w32:ident, $r8:ident, $r16:ident, $r32:ident) => {
        fn $w8(&mut self, off: $off, v: u8) {
            self.dev.$write(off, &[v]);
        }
        fn $w16(&mut self, off: $off, v: u16) {
            self.dev.$write(off, &v.to_le_bytes());
        }
        fn $w32(&mut self, off: $off, v: u32) {
            self.dev.$write(off, &v.to_le_bytes());
        }
        fn $r8(&mut self, off: $off) -> u8 {
            let mut b = [0xa5u8; 1];
            self.dev.$read(off, &mut b);
            b[0]
        }
        fn $r16(&mut self, off: $off) -> u16 {
            let mut b = [0xa5u8; 2];
            self.dev.$read(off, &mut b);
            u16::from_le_bytes(b)
        }
        fn $r32(&mut self, off: $off) -> u32 {
            let mut b = [0xa5u8; 4];
            self.dev.$read(off, &mut b);
            u32::from_le_bytes(b)
        }
    };
}

/// A device on a manual clock with its counters and the expiries collected so far.
struct Rig {
    clock: ManualClock,
    dev: Dev,
    ev: Arc<EventCounters>,
    fired: Vec<Expiry>,
}

impl Rig {
    /// A freshly reset device with BAR0 programmed and memory decoding on (the
    /// starting point docs/DEVICE.md §7 assumes), action `none`.
    fn new() -> Self {
        Rig::with_action(WatchdogAction::None)
    }

    fn with_action(action: WatchdogAction) -> Self {
        let mut rig = Rig::bare(action);
        rig.map_bar0();
        assert_eq!(rig.dev.bar0_region(), Some((u64::from(BAR0), 16)));
        rig
    }

    /// A [`Rig::new`] with preloads `pv1`/`pv2` set and the watchdog enabled; returns it
    /// and the time it was enabled.
    fn armed(pv1: u32, pv2: u32) -> (Self, u64) {
        let mut rig = Rig::new();
        rig.setpv(pv1, pv2);
        rig.enable();
        let t0 = rig.now();
        (rig, t0)
    }

    /// A device straight out of power-on: BAR0 unprogrammed, decode off.
    fn bare(action: WatchdogAction) -> Self {
        let clock = ManualClock::new(T_START);
        let ev = Arc::new(EventCounters::default());
        let dev = I6300Esb::with_events(action, clock.clone(), ev.clone());
        Rig {
            clock,
            dev,
            ev,
            fired: Vec::new(),
        }
    }

    /// What firmware does: BAR0 at [`BAR0`], memory decoding on.
    fn map_bar0(&mut self) {
        self.cw32(0x10, BAR0);
        self.cw16(0x04, 0x0002);
    }

    fn now(&self) -> u64 {
        use crate::Clock;
        self.clock.now_ns()
    }

    // Configuration space: CW8/CW16/CW32 and CR8/CR16/CR32.
    window_accessors!(
        usize,
        config_write,
        config_read,
        cw8,
        cw16,
        cw32,
        cr8,
        cr16,
        cr32
    );
    // BAR0: MW8/MW16/MW32 and MR8/MR16/MR32.
    window_accessors!(u64, bar0_write, bar0_read, mw8, mw16, mw32, mr8, mr16, mr32);

    /// `U`: the Linux unlock sequence (two 16-bit writes to the reload register).
    fn u(&mut self) {
        self.mw16(0x0c, 0x0080);
        self.mw16(0x0c, 0x0086);
    }
    /// `SETPV(a, b)`.
    fn setpv(&mut self, a: u32, b: u32) {
        self.u();
        self.mw32(0x00, a);
        self.u();
        self.mw32(0x04, b);
    }
    /// `U; MW16(0x0C)=0x100`: the Linux ping.
    fn kick(&mut self) {
        self.u();
        self.mw16(0x0c, 0x0100);
    }
    fn enable(&mut self) {
        self.cw8(0x68, 0x02);
    }

    /// Move the clock to `t` and collect what fires.
    fn at(&mut self, t: u64) {
        self.clock.set(t);
        self.dev.poll(&mut self.fired);
    }
    fn after(&mut self, delta: u64) {
        let t = self.now() + delta;
        self.at(t);
    }

    /// Nothing has fired yet at `t - 1`, and exactly one expiry fires at `t`.
    fn fires_exactly_at(&mut self, t: u64) {
        let before = self.fired.len();
        self.at(t - 1);
        assert_eq!(self.fired.len(), before, "fired before {t}");
        self.at(t);
        assert_eq!(self.fired.len(), before + 1, "did not fire at {t}");
        assert_eq!(self.fired[before].time_ns, t);
        assert!(self.dev.watchdog().timeout_flag());
    }

    /// Advance by `delta` and check that nothing fired.
    fn silent_for(&mut self, delta: u64) {
        let before = self.fired.len();
        self.after(delta);
        assert_eq!(self.fired.len(), before, "unexpected expiry");
    }

    fn unlock_state(&mut self) -> u8 {
        self.dev.state().watchdog.unlock_state
    }
    fn preloads(&mut self) -> (u32, u32) {
        let s = self.dev.state().watchdog;
        (s.preload1, s.preload2)
    }
}

// Helpers that tests of other sections use too.
use expiry::{fire_once, linux_probe};

fn count(c: &std::sync::atomic::AtomicU64) -> u64 {
    EventCounters::get(c)
}

mod actions;
mod config_space;
mod expiry;
mod hardware;
mod host_protection;
mod odd_accesses;
mod state;
mod timing;
mod unlock;
