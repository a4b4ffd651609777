//! Conformance tests: every case of section 7 of the i6300esb spec, in virtual time.
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
    /// starting point section 7 assumes), action `none`.
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

fn count(c: &std::sync::atomic::AtomicU64) -> u64 {
    EventCounters::get(c)
}

// ---------------------------------------------------------------------------
// Identity and config space (cases 1-16)
// ---------------------------------------------------------------------------

#[test]
fn case_01_vendor_and_device_id() {
    let mut r = Rig::new();
    assert_eq!(r.cr32(0x00), 0x25ab_8086);
    assert_eq!(r.cr16(0x00), 0x8086);
    assert_eq!(r.cr16(0x02), 0x25ab);
}

#[test]
fn case_02_class_code_and_revision() {
    let mut r = Rig::new();
    assert_eq!(r.cr32(0x08), 0x0880_0000);
    assert_eq!(r.cr16(0x0a), 0x0880);
    assert_eq!(r.cr8(0x08), 0x00);
}

#[test]
fn case_03_header_type_status_capabilities() {
    let mut r = Rig::new();
    assert_eq!(r.cr8(0x0e), 0x00);
    assert_eq!(r.cr16(0x06) & 0x0010, 0);
    assert_eq!(r.cr8(0x34), 0x00);
}

#[test]
fn case_04_no_interrupt_pin() {
    let mut r = Rig::new();
    assert_eq!(r.cr8(0x3d), 0x00);
    r.cw8(0x3d, 0x01);
    assert_eq!(r.cr8(0x3d), 0x00, "interrupt pin is read-only");
    r.cw8(0x3c, 0x0b);
    assert_eq!(r.cr8(0x3c), 0x0b, "interrupt line is a scratch register");
}

#[test]
fn case_05_subsystem_ids() {
    let mut r = Rig::new();
    assert_eq!(r.cr32(0x2c), 0x1100_1af4);
    let clock = ManualClock::new(0);
    let mut d = I6300Esb::new(WatchdogAction::Reset, clock).with_subsystem_ids(0x8086, 0x25ab);
    let mut b = [0u8; 4];
    d.config_read(0x2c, &mut b);
    assert_eq!(u32::from_le_bytes(b), 0x25ab_8086);
}

#[test]
fn case_06_bar0_sizing() {
    let mut r = Rig::bare(WatchdogAction::Reset);
    r.cw16(0x04, 0);
    r.cw32(0x10, 0xffff_ffff);
    assert_eq!(r.cr32(0x10), 0xffff_fff0);
    assert_eq!(r.dev.bar0_region(), None);
    r.cw32(0x10, 0xfebf_0000);
    assert_eq!(r.cr32(0x10), 0xfebf_0000);
    assert_eq!(r.dev.bar0_region(), None, "memory decode still off");
    r.cw16(0x04, 0x0002);
    assert_eq!(r.dev.bar0_region(), Some((0xfebf_0000, 16)));
    // BAR1-5 and the expansion ROM are not implemented.
    for off in [0x14, 0x18, 0x1c, 0x20, 0x24, 0x30] {
        r.cw32(off, 0xffff_ffff);
        assert_eq!(r.cr32(off), 0, "offset {off:#x}");
    }
}

fn all_bar0_reads_are_zero(r: &mut Rig) {
    for off in 0..16u64 {
        assert_eq!(r.mr8(off), 0, "MR8({off:#x})");
        if off % 2 == 0 {
            assert_eq!(r.mr16(off), 0, "MR16({off:#x})");
        }
        if off % 4 == 0 {
            assert_eq!(r.mr32(off), 0, "MR32({off:#x})");
        }
    }
}

#[test]
fn case_07_reset_values() {
    let mut r = Rig::new();
    assert_eq!(r.cr16(0x60), 0x0000);
    assert_eq!(r.cr8(0x68), 0x00);
    all_bar0_reads_are_zero(&mut r);
    // The same after the registers were changed and the machine reset.
    r.cw16(0x60, 0x0027);
    r.setpv(5, 5);
    r.cw8(0x68, 0x07);
    r.dev.warm_reset();
    assert_eq!(r.cr16(0x60), 0x0000);
    assert_eq!(r.cr8(0x68), 0x00);
    all_bar0_reads_are_zero(&mut r);
    assert_eq!(r.preloads(), (0xfffff, 0xfffff));
}

#[test]
fn case_08_to_10_wdtcr_write_read_back_qemu_mask() {
    // (case, written, read back): QEMU keeps int type with the 0x11 mask.
    let table: [(u32, u16, u16); 5] = [
        (8, 0x0003, 0x0001),
        (9, 0xffff, 0x0035),
        (10, 0x0002, 0x0000),
        (0, 0x0024, 0x0024),
        (0, 0x0010, 0x0010),
    ];
    for (case, written, expected) in table {
        let mut r = Rig::new();
        r.cw16(0x60, written);
        assert_eq!(r.cr16(0x60), expected, "case {case}: wrote {written:#06x}");
    }
}

#[test]
fn case_11_wdtcr_only_16_bit_at_0x60() {
    let mut r = Rig::new();
    r.cw16(0x60, 0x0025);
    let ignored = count(&r.ev.ignored_config_access);
    r.cw8(0x60, 0x00);
    r.cw32(0x60, 0);
    r.cw8(0x61, 0x00);
    assert_eq!(r.cr16(0x60), 0x0025);
    assert_eq!(r.cr8(0x60), 0);
    assert_eq!(r.cr32(0x60), 0);
    assert_eq!(r.cr8(0x61), 0);
    assert_eq!(r.cr16(0x61), 0);
    // Seven accesses of the wrong shape, each counted once.
    assert_eq!(count(&r.ev.ignored_config_access), ignored + 7);
}

#[test]
fn case_12_wdtlr_reserved_bits_read_zero() {
    let mut r = Rig::new();
    r.cw8(0x68, 0xf8);
    assert_eq!(r.cr8(0x68), 0x00);
    r.cw8(0x68, 0x04);
    assert_eq!(r.cr8(0x68), 0x04);
}

#[test]
fn case_13_wdtlr_only_8_bit_at_0x68() {
    let mut r = Rig::new();
    r.cw16(0x68, 0x0002);
    r.cw32(0x68, 0x02);
    assert_eq!(r.cr8(0x68), 0x00);
    assert_eq!(r.dev.next_deadline(), None, "not enabled");
    r.enable();
    assert_eq!(r.cr8(0x68), 0x02);
    assert_eq!(r.cr16(0x68), 0);
    assert_eq!(r.cr32(0x68), 0);
}

#[test]
fn case_14_lock_while_disabled_freezes_it_off() {
    let mut r = Rig::new();
    r.setpv(10, 10);
    r.cw8(0x68, 0x01);
    let locked = count(&r.ev.locked_write);
    r.cw8(0x68, 0x02);
    assert_eq!(r.cr8(0x68), 0x01);
    assert_eq!(count(&r.ev.locked_write), locked + 1);
    assert_eq!(r.dev.next_deadline(), None);
    // Wait far longer than 2 x PV, even 2 x the largest stage.
    r.silent_for(3 * 1_030_791_168_000);
    assert!(!r.dev.watchdog().timeout_flag());
}

#[test]
fn case_15_lock_does_not_cover_wdtcr() {
    let mut r = Rig::new();
    r.cw8(0x68, 0x01);
    r.cw16(0x60, 0x0024);
    assert_eq!(r.cr16(0x60), 0x0024);
}

#[test]
fn case_16_undocumented_0x64_reads_zero() {
    let mut r = Rig::new();
    r.enable();
    assert_eq!(r.cr32(0x64), 0);
}

// ---------------------------------------------------------------------------
// Unlock and write protection (cases 17-33)
// ---------------------------------------------------------------------------

#[test]
fn case_17_kick_without_unlock_is_ignored() {
    let mut r = Rig::new();
    r.setpv(100, 100);
    r.kick();
    r.enable();
    let t0 = r.now();
    r.at(t0 + 50 * MS);
    let without = count(&r.ev.write_without_unlock);
    let kicks = count(&r.ev.kick);
    r.mw16(0x0c, 0x0100);
    assert_eq!(count(&r.ev.write_without_unlock), without + 1);
    assert_eq!(count(&r.ev.kick), kicks);
    r.fires_exactly_at(t0 + FIRE_100_100);
}

#[test]
fn case_18_one_write_per_window() {
    let mut r = Rig::new();
    r.setpv(100, 100);
    r.u();
    r.mw32(0x00, 50);
    r.mw32(0x04, 10);
    assert_eq!(r.preloads(), (50, 100));
    r.enable();
    let t0 = r.now();
    r.fires_exactly_at(t0 + 147_456_000);
}

#[test]
fn case_19_interleaved_byte_junk_keeps_the_sequence() {
    let mut r = Rig::new();
    r.setpv(100, 100);
    r.mw16(0x0c, 0x80);
    r.mw8(0x0c, 0x55);
    r.mw16(0x0c, 0x86);
    r.mw32(0x00, 20);
    assert_eq!(r.preloads(), (20, 100));
    r.enable();
    let t0 = r.now();
    r.fires_exactly_at(t0 + 117_964_800);
}

#[test]
fn case_20_mixed_width_unlock() {
    let mut r = Rig::new();
    r.mw8(0x0c, 0x80);
    r.mw32(0x0c, 0x86);
    assert_eq!(r.unlock_state(), 2);
    r.mw32(0x00, 20);
    assert_eq!(r.preloads().0, 20);
}

#[test]
fn case_21_unlock_sequences() {
    // (writes, unlocked afterwards)
    let table: [(&[u16], bool); 5] = [
        (&[0x80, 0x80, 0x86], true),
        (&[0x86, 0x80, 0x86], true),
        (&[0x86], false),
        (&[0x80], false),
        (&[0x86, 0x86], false),
    ];
    for (writes, unlocked) in table {
        let mut r = Rig::new();
        for &w in writes {
            r.mw16(0x0c, w);
        }
        assert_eq!(r.unlock_state() == 2, unlocked, "{writes:x?}");
        r.mw32(0x00, 20);
        assert_eq!(r.preloads().0 == 20, unlocked, "{writes:x?}");
    }
}

#[test]
fn case_22_word_0x86_while_unlocked_spends_the_window() {
    let mut r = Rig::new();
    r.u();
    r.mw16(0x0c, 0x86);
    assert_eq!(r.unlock_state(), 0);
    r.mw32(0x00, 20);
    assert_eq!(r.preloads().0, 0xfffff);

    let mut r = Rig::new();
    r.u();
    r.mw8(0x0c, 0x86);
    assert_eq!(r.unlock_state(), 2, "a byte 0x86 keeps the window");
    r.mw32(0x00, 20);
    assert_eq!(r.preloads().0, 20);
}

#[test]
fn case_23_byte_0x80_while_unlocked_restarts_the_sequence() {
    let mut r = Rig::new();
    r.u();
    r.mw8(0x0c, 0x80);
    assert_eq!(r.unlock_state(), 1);
    r.mw32(0x00, 20);
    assert_eq!(r.preloads().0, 0xfffff);
}

#[test]
fn case_24_other_bytes_do_not_spend_the_window() {
    for junk in [0x00u8, 0x01, 0x55, 0xff] {
        let mut r = Rig::new();
        r.u();
        r.mw8(0x0c, junk);
        r.mw8(0x00, junk);
        r.mw8(0x0d, junk);
        assert_eq!(r.unlock_state(), 2);
        r.mw32(0x00, 20);
        assert_eq!(r.preloads().0, 20, "junk {junk:#x}");
    }
}

#[test]
fn case_25_word_write_to_preload_spends_the_window() {
    let mut r = Rig::new();
    r.u();
    r.mw16(0x00, 20);
    assert_eq!(r.unlock_state(), 0);
    assert_eq!(r.preloads().0, 0xfffff);
}

#[test]
fn case_26_dword_reload_write_spends_the_window_without_kicking() {
    let (mut r, t0) = Rig::armed(100, 100);
    r.at(t0 + 50 * MS);
    let kicks = count(&r.ev.kick);
    r.u();
    r.mw32(0x0c, 0x100);
    assert_eq!(r.unlock_state(), 0);
    assert_eq!(count(&r.ev.kick), kicks);
    r.fires_exactly_at(t0 + FIRE_100_100);
}

#[test]
fn case_27_unlock_values_compare_whole() {
    let mut r = Rig::new();
    r.mw32(0x0c, 0x0001_0080);
    assert_eq!(r.unlock_state(), 0);
    r.mw32(0x0c, 0x86);
    assert_eq!(r.unlock_state(), 0);
    r.mw32(0x00, 20);
    assert_eq!(r.preloads().0, 0xfffff);
    // 0x86 in the high half is no second step either.
    r.mw16(0x0c, 0x80);
    r.mw32(0x0c, 0x0086_0000);
    assert_eq!(r.unlock_state(), 1);
}

#[test]
fn case_28_unaligned_access_is_not_delivered() {
    let mut r = Rig::new();
    r.u();
    let ignored = count(&r.ev.ignored_mmio_access);
    r.mw16(0x0d, 0x0100);
    r.mw32(0x02, 20);
    assert_eq!(count(&r.ev.ignored_mmio_access), ignored + 2);
    assert_eq!(r.unlock_state(), 2, "window still open");
    r.mw32(0x00, 20);
    assert_eq!(r.preloads().0, 20);
}

#[test]
fn case_29_gisr_write_spends_the_window() {
    let mut r = Rig::new();
    r.u();
    r.mw32(0x08, 0xffff_ffff);
    assert_eq!(r.unlock_state(), 0);
    assert_eq!(r.mr32(0x08), 0);
    assert_eq!(r.mr16(0x08), 0);
}

#[test]
fn case_30_reads_do_not_touch_the_unlock_state() {
    let mut r = Rig::new();
    r.u();
    assert_eq!(r.mr16(0x0c), 0);
    assert_eq!(r.mr32(0x00), 0);
    assert_eq!(r.mr8(0x0c), 0);
    r.mw32(0x00, 20);
    assert_eq!(r.preloads().0, 20);
}

#[test]
fn case_31_reset_clears_a_pending_unlock() {
    let mut r = Rig::new();
    r.u();
    r.dev.warm_reset();
    r.mw32(0x00, 10);
    assert_eq!(r.preloads().0, 0xfffff);

    let mut r = Rig::new();
    r.u();
    r.dev.power_on_reset();
    r.mw32(0x00, 10);
    assert_eq!(r.preloads().0, 0xfffff);
}

#[test]
fn case_32_preload_is_masked_to_20_bits() {
    let mut r = Rig::new();
    r.setpv(100, 100);
    r.u();
    r.mw32(0x00, 0xfff0_0014);
    assert_eq!(r.preloads().0, 0x14);
    r.enable();
    let t0 = r.now();
    r.fires_exactly_at(t0 + 117_964_800);
}

#[test]
fn case_33_preloads_read_as_zero() {
    let mut r = Rig::new();
    r.u();
    r.mw32(0x00, 0x12345);
    assert_eq!(r.preloads().0, 0x12345);
    assert_eq!(r.mr32(0x00), 0);
    assert_eq!(r.mr16(0x00), 0);
    assert_eq!(r.mr8(0x00), 0);
}

// ---------------------------------------------------------------------------
// Timing (cases 34-47)
// ---------------------------------------------------------------------------

#[test]
fn case_34_linux_style_arm_fires_exactly() {
    let mut r = Rig::new();
    r.cw16(0x60, 0x0003);
    r.setpv(100, 100);
    r.kick();
    r.enable();
    let t0 = r.now();
    // The host is asked to come back at the expiry, not at the silent stage change.
    assert_eq!(r.dev.next_deadline(), Some(t0 + 196_608_000));
    r.at(t0 + 98_303_999);
    assert_eq!(r.dev.watchdog().stage(), Stage::One);
    r.at(t0 + 98_304_000);
    assert_eq!(r.dev.watchdog().stage(), Stage::Two);
    assert_eq!(count(&r.ev.stage1_expired), 1);
    assert_eq!(r.dev.next_deadline(), Some(t0 + 196_608_000));
    r.at(t0 + 196_607_999);
    assert!(r.fired.is_empty(), "not one nanosecond early");
    r.at(t0 + 196_608_000);
    assert_eq!(
        r.fired,
        vec![Expiry {
            action: WatchdogAction::None,
            time_ns: t0 + 196_608_000
        }]
    );
}

#[test]
fn case_34_late_poll_still_reports_the_exact_time() {
    // A host that polls late learns the exact expiry time, and stage 2 starts
    // at the instant stage 1 ended, not when the host noticed.
    let (mut r, t0) = Rig::armed(100, 100);
    r.at(t0 + 10 * FIRE_100_100);
    assert_eq!(r.fired.len(), 1);
    assert_eq!(r.fired[0].time_ns, t0 + FIRE_100_100);
}

#[test]
fn case_35_kick_in_stage_2_restarts_stage_1() {
    let (mut r, t0) = Rig::armed(50, 150);
    r.at(t0 + 100 * MS);
    assert_eq!(r.dev.watchdog().stage(), Stage::Two);
    r.kick();
    assert_eq!(r.dev.watchdog().stage(), Stage::One);
    r.fires_exactly_at(t0 + 296_608_000);
}

#[test]
fn case_36_pv1_rewrite_does_not_shorten_the_running_stage() {
    let (mut r, t0) = Rig::armed(100, 100);
    r.at(t0 + 20 * MS);
    r.u();
    r.mw32(0x00, 10);
    r.fires_exactly_at(t0 + FIRE_100_100);

    // ...but a kick afterwards uses the new PV1.
    let (mut r, t0) = Rig::armed(100, 100);
    r.at(t0 + 20 * MS);
    r.u();
    r.mw32(0x00, 10);
    r.at(t0 + 50 * MS);
    r.kick();
    r.fires_exactly_at(t0 + 50 * MS + 110 * UNIT_1K);
}

#[test]
fn case_37_pv2_rewrite_in_stage_1_applies_at_stage_2() {
    let (mut r, t0) = Rig::armed(100, 100);
    r.at(t0 + 20 * MS);
    r.u();
    r.mw32(0x04, 10);
    r.fires_exactly_at(t0 + 108_134_400);
}

#[test]
fn case_38_kick_while_disabled_is_a_no_op() {
    let mut r = Rig::new();
    r.setpv(100, 100);
    let kicks = count(&r.ev.kick);
    r.kick();
    assert_eq!(count(&r.ev.kick), kicks);
    assert_eq!(r.dev.next_deadline(), None);
    r.silent_for(300 * MS);
    r.enable();
    let t1 = r.now();
    r.fires_exactly_at(t1 + FIRE_100_100);
}

#[test]
fn case_39_one_mhz_prescaler() {
    let mut r = Rig::new();
    r.cw16(0x60, 0x0004);
    r.setpv(10_000, 10_000);
    r.enable();
    let t0 = r.now();
    r.fires_exactly_at(t0 + 19_200_000);
}

#[test]
fn case_40_prescaler_change_applies_at_the_next_stage() {
    let (mut r, t0) = Rig::armed(100, 100);
    r.cw16(0x60, 0x0007);
    assert_eq!(r.dev.next_deadline(), Some(t0 + 98_400_000));
    r.fires_exactly_at(t0 + 98_400_000);
    assert_eq!(98_400_000, 100 * UNIT_1K + 100 * UNIT_1M);
}

#[test]
fn case_41_zero_preloads_fire_at_once() {
    let (mut r, t0) = Rig::armed(0, 0);
    assert_eq!(r.dev.next_deadline(), Some(t0));
    r.at(t0);
    assert_eq!(r.fired.len(), 1);
    assert_eq!(r.fired[0].time_ns, t0);
}

#[test]
fn case_42_max_preload_does_not_overflow() {
    for (wdtcr, total) in [(0x0000u16, 2_061_582_336_000u64), (0x0004, 2_013_264_000)] {
        let mut r = Rig::new();
        r.cw16(0x60, wdtcr);
        r.setpv(0xfffff, 0xfffff);
        r.enable();
        let t0 = r.now();
        r.fires_exactly_at(t0 + total);
    }
    // The reset preloads are the same maximum.
    let mut r = Rig::new();
    r.enable();
    let t0 = r.now();
    r.fires_exactly_at(t0 + 2_061_582_336_000);
}

#[test]
fn case_43_re_enable_while_running_does_not_restart() {
    let (mut r, t0) = Rig::armed(100, 100);
    r.at(t0 + 50 * MS);
    r.enable();
    r.fires_exactly_at(t0 + FIRE_100_100);
}

#[test]
fn case_44_disable_then_enable_restarts() {
    let (mut r, t0) = Rig::armed(100, 100);
    r.at(t0 + 50 * MS);
    r.cw8(0x68, 0x00);
    r.enable();
    r.fires_exactly_at(t0 + 50 * MS + FIRE_100_100);
}

#[test]
fn case_45_disable_stops() {
    let mut r = Rig::new();
    r.setpv(100, 100);
    r.enable();
    r.after(50 * MS);
    r.cw8(0x68, 0x00);
    assert_eq!(r.dev.next_deadline(), None);
    r.silent_for(10_000 * MS);
    assert!(!r.dev.watchdog().timeout_flag());
    assert_eq!(r.mr16(0x0c), 0);
}

#[test]
fn case_46_lock_and_enable_cannot_be_stopped() {
    let mut r = Rig::new();
    r.setpv(100, 100);
    r.cw8(0x68, 0x03);
    let t0 = r.now();
    r.cw8(0x68, 0x00);
    assert_eq!(r.cr8(0x68), 0x03);
    r.fires_exactly_at(t0 + FIRE_100_100);
}

#[test]
fn case_47_kicks_and_preload_writes_work_while_locked() {
    let mut r = Rig::new();
    r.setpv(100, 100);
    r.cw8(0x68, 0x03);
    let t0 = r.now();
    r.at(t0 + 100 * MS);
    r.kick();
    r.fires_exactly_at(t0 + 296_608_000);

    let mut r = Rig::new();
    r.setpv(100, 100);
    r.cw8(0x68, 0x03);
    let t0 = r.now();
    r.at(t0 + 100 * MS);
    r.setpv(30, 10);
    assert_eq!(r.preloads(), (30, 10));
    r.kick();
    r.fires_exactly_at(t0 + 100 * MS + 40 * UNIT_1K);
}

// ---------------------------------------------------------------------------
// Expiry, flag, reset (cases 48-57)
// ---------------------------------------------------------------------------

/// Arm 10/10 at 1 kHz and let it fire; returns the expiry time.
fn fire_once(r: &mut Rig) -> u64 {
    r.cw16(0x60, 0x0003);
    r.setpv(10, 10);
    r.enable();
    let t = r.now() + 20 * UNIT_1K;
    r.fires_exactly_at(t);
    t
}

#[test]
fn case_48_device_resets_itself_after_firing() {
    for action in [WatchdogAction::None, WatchdogAction::InjectNmi] {
        let mut r = Rig::with_action(action);
        fire_once(&mut r);
        assert_eq!(r.cr8(0x68), 0x00);
        assert_eq!(r.cr16(0x60), 0x0000);
        assert_eq!(r.mr16(0x0c), 0x1200);
        assert_eq!(r.preloads(), (0xfffff, 0xfffff));
        assert_eq!(r.dev.next_deadline(), None);
        r.enable();
        r.silent_for(1_000 * MS);
        assert_eq!(r.fired.len(), 1);
    }
}

#[test]
fn case_49_flag_visible_only_through_a_word_read() {
    let mut r = Rig::new();
    fire_once(&mut r);
    assert_eq!(r.mr16(0x0c), 0x1200);
    assert_eq!(r.mr32(0x0c), 0);
    assert_eq!(r.mr8(0x0c), 0);
    assert_eq!(r.mr8(0x0d), 0);
    assert_eq!(r.mr16(0x0e), 0);
    assert_eq!(r.mr16(0x08), 0);
}

#[test]
fn case_50_flag_survives_machine_reset() {
    let mut r = Rig::with_action(WatchdogAction::Reset);
    fire_once(&mut r);
    assert_eq!(r.fired[0].action, WatchdogAction::Reset);
    // The watchdog-caused reset the VMM performs...
    r.dev.warm_reset();
    assert_eq!(r.dev.bar0_region(), None, "firmware must map BAR0 again");
    r.map_bar0();
    assert_eq!(r.mr16(0x0c), 0x1200);
    r.cw16(0x60, 0x0023);
    r.cw8(0x68, 0x04);
    // ...and a guest-caused one (0xCF9 <- 0x06).
    r.dev.warm_reset();
    assert_eq!(r.mr16(0x0c), 0x1200);
    assert!(r.dev.watchdog().timeout_flag());
    assert_eq!(r.cr8(0x68), 0x00);
    assert_eq!(r.cr16(0x60), 0x0000);
}

#[test]
fn case_51_flag_clear_needs_unlock() {
    for clear in [0x1000u16, 0x0200, 0x0300, 0x1100] {
        let mut r = Rig::new();
        fire_once(&mut r);
        r.mw16(0x0c, clear);
        assert_eq!(r.mr16(0x0c), 0x1200, "{clear:#06x} without unlock");
        r.u();
        r.mw16(0x0c, clear);
        assert_eq!(r.mr16(0x0c), 0x0000, "{clear:#06x} after unlock");
        assert!(!r.dev.watchdog().timeout_flag());
    }
    // A kick alone does not clear it.
    let mut r = Rig::new();
    fire_once(&mut r);
    r.kick();
    assert_eq!(r.mr16(0x0c), 0x1200);
}

/// Steps 2-6 of the Linux probe; returns the boot status it would report.
fn linux_probe(r: &mut Rig) -> u32 {
    const WDIOF_CARDRESET: u32 = 0x20;
    r.cw16(0x60, 0x0003);
    let _nowayout = r.cr8(0x68) & 0x01;
    r.cw8(0x68, 0x00);
    r.u();
    let status = if r.mr16(0x0c) & 0x0200 != 0 {
        WDIOF_CARDRESET
    } else {
        0
    };
    r.u();
    r.mw16(0x0c, 0x0300);
    status
}

#[test]
fn case_52_linux_probe_reports_and_clears_card_reset() {
    let mut r = Rig::with_action(WatchdogAction::Reset);
    fire_once(&mut r);
    r.dev.warm_reset();
    r.map_bar0();
    assert_eq!(linux_probe(&mut r), 0x20);
    assert!(!r.dev.watchdog().timeout_flag());
    r.dev.warm_reset();
    assert_eq!(linux_probe(&mut r), 0);
}

#[test]
fn case_53_output_disabled_one_shot() {
    let mut r = Rig::new();
    r.cw16(0x60, 0x0023);
    r.setpv(10, 10);
    r.enable();
    r.silent_for(10_000 * MS);
    assert!(!r.dev.watchdog().timeout_flag());
    assert_eq!(r.cr8(0x68), 0x02);
    assert_eq!(r.dev.next_deadline(), None, "the timer stopped");
    assert_eq!(count(&r.ev.stage1_expired), 1);
    r.cw16(0x60, 0x0003);
    r.kick();
    let t1 = r.now();
    r.fires_exactly_at(t1 + 19_660_800);
}

#[test]
fn case_54_output_disabled_free_run_never_fires() {
    let mut r = Rig::new();
    r.cw16(0x60, 0x0023);
    r.setpv(10, 10);
    r.cw8(0x68, 0x06);
    let t0 = r.now();
    r.silent_for(10_000 * MS);
    assert!(!r.dev.watchdog().timeout_flag());
    assert_eq!(r.cr8(0x68), 0x06);
    // It keeps looping in phase: 10 s is 508 whole cycles of 20 units plus
    // 12,313,600 ns, so the host finds it in stage 2 of cycle 509.
    let cycle = 20 * UNIT_1K;
    assert_eq!(10_000 * MS - 508 * cycle, 12_313_600);
    assert_eq!(r.dev.watchdog().stage(), Stage::Two);
    assert_eq!(
        r.dev.next_deadline(),
        None,
        "a silent loop never wakes the host"
    );
    // Enabling the output makes the next stage-2 end fire (QEMU's loop checks it).
    r.cw16(0x60, 0x0003);
    assert_eq!(r.dev.next_deadline(), Some(t0 + 509 * cycle));
    r.fires_exactly_at(t0 + 509 * cycle);
}

#[test]
fn case_54_zero_length_free_run_loop_is_silent_but_alive() {
    let mut r = Rig::new();
    r.cw16(0x60, 0x0023);
    r.setpv(0, 0);
    r.cw8(0x68, 0x06);
    r.silent_for(1_000 * MS);
    assert_eq!(r.cr8(0x68), 0x06);
    assert_eq!(r.dev.next_deadline(), None, "no deadline to spin on");
    // A preload that gives the loop length restarts it...
    r.u();
    r.mw32(0x04, 10);
    let t = r.now();
    assert_eq!(r.dev.watchdog().remaining_ns(t), Some(10 * UNIT_1K));
    assert_eq!(r.dev.watchdog().stage(), Stage::Two);
    // ...and output enabled, it fires at the end of that stage 2.
    r.cw16(0x60, 0x0003);
    assert_eq!(r.dev.next_deadline(), Some(t + 10 * UNIT_1K));
    r.fires_exactly_at(t + 10 * UNIT_1K);

    // With zero preloads, enabling the output fires at once.
    let mut r = Rig::new();
    r.cw16(0x60, 0x0023);
    r.setpv(0, 0);
    r.cw8(0x68, 0x06);
    r.after(5 * MS);
    r.cw16(0x60, 0x0003);
    let t = r.now();
    r.at(t);
    assert_eq!(r.fired.len(), 1);
    assert_eq!(r.fired[0].time_ns, t);
}

#[test]
fn case_55_free_run_with_output_fires_once() {
    let mut r = Rig::new();
    r.cw16(0x60, 0x0003);
    r.setpv(10, 10);
    r.cw8(0x68, 0x06);
    let t0 = r.now();
    r.fires_exactly_at(t0 + 19_660_800);
    assert_eq!(r.cr8(0x68), 0x00);
    r.silent_for(100_000 * MS);
    assert_eq!(r.fired.len(), 1);
}

#[test]
fn case_56_stage_1_expiry_raises_nothing() {
    let mut r = Rig::new();
    r.cw16(0x60, 0x0000);
    r.setpv(10, 10);
    r.enable();
    r.after(10 * UNIT_1K);
    assert_eq!(r.dev.watchdog().stage(), Stage::Two);
    assert_eq!(count(&r.ev.stage1_expired), 1);
    assert_eq!(r.mr16(0x08), 0);
    assert_eq!(r.mr32(0x08), 0);
    let without = count(&r.ev.write_without_unlock);
    r.mw16(0x08, 0x0001);
    assert_eq!(count(&r.ev.write_without_unlock), without + 1);
    assert_eq!(r.mr16(0x08), 0);
    assert!(r.fired.is_empty());
}

#[test]
fn case_57_system_reset_while_running_and_locked() {
    let mut r = Rig::new();
    fire_once(&mut r);
    r.setpv(100, 100);
    r.cw8(0x68, 0x03);
    r.after(150 * MS);
    assert_eq!(r.dev.watchdog().stage(), Stage::Two);
    r.mw16(0x0c, 0x80);
    r.dev.warm_reset();
    assert_eq!(r.cr8(0x68), 0x00);
    assert_eq!(r.unlock_state(), 0);
    assert_eq!(r.preloads(), (0xfffff, 0xfffff));
    assert_eq!(r.dev.watchdog().stage(), Stage::One);
    assert!(r.dev.watchdog().timeout_flag(), "flag unchanged");
    assert_eq!(r.dev.next_deadline(), None);
    r.silent_for(3 * 1_030_791_168_000);
}

// ---------------------------------------------------------------------------
// Actions and host side (cases 58-60)
// ---------------------------------------------------------------------------

#[test]
fn case_58_expiry_carries_the_configured_action() {
    let names = [
        "reset",
        "shutdown",
        "poweroff",
        "pause",
        "debug",
        "none",
        "inject-nmi",
    ];
    for (action, name) in WatchdogAction::ALL.into_iter().zip(names) {
        assert_eq!(action.name(), name);
        assert_eq!(action.to_string(), name);
        assert_eq!(name.parse::<WatchdogAction>(), Ok(action));
        let mut r = Rig::with_action(action);
        let t = fire_once(&mut r);
        assert_eq!(r.fired, vec![Expiry { action, time_ns: t }], "{name}");
        assert_eq!(count(&r.ev.expired), 1);
        // The device reset itself: disabled, unlocked, reset preloads, flag set.
        assert_eq!(r.cr8(0x68), 0x00);
        assert_eq!(r.preloads(), (0xfffff, 0xfffff));
        assert_eq!(r.dev.next_deadline(), None);
        assert_eq!(r.mr16(0x0c), 0x1200);
    }
    assert!("reboot".parse::<WatchdogAction>().is_err());
    // The action can be changed at run time (QEMU's watchdog-set-action).
    let mut r = Rig::with_action(WatchdogAction::Reset);
    r.dev.watchdog_mut().set_action(WatchdogAction::Pause);
    fire_once(&mut r);
    assert_eq!(r.fired[0].action, WatchdogAction::Pause);
}

/// The Linux driver's `set_timeout`: range check first (no register access on
/// EINVAL), then both preloads to t << 9 and a ping.
fn linux_set_timeout(r: &mut Rig, t: u32) -> Result<(), &'static str> {
    if !(1..=2046).contains(&t) {
        return Err("EINVAL");
    }
    r.setpv(t << 9, t << 9);
    r.kick();
    Ok(())
}

/// The Linux driver's `start`.
fn linux_start(r: &mut Rig) {
    r.kick();
    r.cw8(0x68, 0x02);
}

/// The Linux driver's `stop`; returns whether the enable bit is still set.
fn linux_stop(r: &mut Rig) -> bool {
    r.kick();
    r.cw8(0x68, 0x00);
    r.cr8(0x68) & 0x02 != 0
}

#[test]
fn case_59_linux_set_timeout_30_gives_30_199_s() {
    let mut r = Rig::new();
    assert_eq!(linux_probe(&mut r), 0);
    let before = r.dev.state();
    let accesses = count(&r.ev.write_without_unlock);
    assert_eq!(linux_set_timeout(&mut r, 0), Err("EINVAL"));
    assert_eq!(linux_set_timeout(&mut r, 2047), Err("EINVAL"));
    assert_eq!(r.dev.state(), before, "no register access on EINVAL");
    assert_eq!(count(&r.ev.write_without_unlock), accesses);

    linux_set_timeout(&mut r, 30).unwrap();
    assert_eq!(r.preloads(), (0x3c00, 0x3c00));
    linux_start(&mut r);
    let t0 = r.now();
    assert_eq!(2 * 0x3c00 * UNIT_1K, 30_198_988_800);
    r.fires_exactly_at(t0 + 30_198_988_800);
}

/// busybox `watchdog /dev/watchdog` up to its first ping; returns the device.
fn busybox_start(r: &mut Rig) {
    linux_probe(r);
    linux_set_timeout(r, 30).unwrap();
    // open, write 'V' (a ping), close with magic: stop.
    linux_start(r);
    r.kick();
    assert!(!linux_stop(r));
    // open again (start), ENABLECARD (no-op, active), SETTIMEOUT(60) + ping.
    linux_start(r);
    linux_set_timeout(r, 60).unwrap();
    r.kick();
    assert_eq!(r.preloads(), (0x7800, 0x7800));
}

#[test]
fn case_60_busybox_fires_60_398_s_after_the_last_ping() {
    let mut r = Rig::new();
    busybox_start(&mut r);
    // A ping every 30 s for ten minutes: never fires.
    for _ in 0..20 {
        r.silent_for(30_000 * MS);
        r.kick();
    }
    // SIGKILL: the kernel's last ping when it closes the file.
    r.silent_for(12_345 * MS);
    r.kick();
    let last_ping = r.now();
    assert_eq!(2 * 0x7800 * UNIT_1K, 60_397_977_600);
    r.fires_exactly_at(last_ping + 60_397_977_600);
}

#[test]
fn case_60_busybox_sigterm_stops_the_watchdog() {
    let mut r = Rig::new();
    busybox_start(&mut r);
    r.silent_for(30_000 * MS);
    r.kick();
    // SIGTERM: write 'V' (ping) and close with magic: stop.
    r.silent_for(1_000 * MS);
    r.kick();
    assert!(!linux_stop(&mut r));
    assert_eq!(r.dev.next_deadline(), None);
    r.silent_for(10 * 60_397_977_600);
    assert!(!r.dev.watchdog().timeout_flag());
}

// ---------------------------------------------------------------------------
// Odd accesses: each register at each width, never a panic, always counted
// ---------------------------------------------------------------------------

/// Which counter an access must bump.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Counter {
    None,
    Config,
    Mmio,
    WithoutUnlock,
}

fn counters(r: &Rig) -> [u64; 3] {
    [
        count(&r.ev.ignored_config_access),
        count(&r.ev.ignored_mmio_access),
        count(&r.ev.write_without_unlock),
    ]
}

fn expect_bump(before: [u64; 3], after: [u64; 3], which: Counter, what: &str) {
    let mut want = before;
    match which {
        Counter::None => {}
        Counter::Config => want[0] += 1,
        Counter::Mmio => want[1] += 1,
        Counter::WithoutUnlock => want[2] += 1,
    }
    assert_eq!(after, want, "{what}");
}

#[test]
fn config_registers_at_every_width_bump_the_right_counter() {
    // (offset, width, counter for a read, counter for a write)
    let table: &[(usize, usize, Counter, Counter)] = &[
        (0x00, 1, Counter::None, Counter::None),
        (0x00, 2, Counter::None, Counter::None),
        (0x00, 4, Counter::None, Counter::None),
        (0x04, 2, Counter::None, Counter::None),
        (0x10, 4, Counter::None, Counter::None),
        (0x3f, 1, Counter::None, Counter::None),
        (0x40, 4, Counter::None, Counter::None),
        (0x60, 1, Counter::Config, Counter::Config),
        (0x60, 2, Counter::None, Counter::None),
        (0x60, 4, Counter::Config, Counter::Config),
        (0x61, 1, Counter::Config, Counter::Config),
        (0x5f, 2, Counter::Config, Counter::Config),
        (0x64, 4, Counter::None, Counter::None),
        (0x68, 1, Counter::None, Counter::None),
        (0x68, 2, Counter::Config, Counter::Config),
        (0x68, 4, Counter::Config, Counter::Config),
        (0x66, 4, Counter::Config, Counter::Config),
        (0xfc, 4, Counter::None, Counter::None),
        (0xff, 1, Counter::None, Counter::None),
        // Bad widths and offsets past 256.
        (0x00, 0, Counter::Config, Counter::Config),
        (0x00, 3, Counter::Config, Counter::Config),
        (0x00, 5, Counter::Config, Counter::Config),
        (0x00, 8, Counter::Config, Counter::Config),
        (0x60, 8, Counter::Config, Counter::Config),
        (0xfe, 4, Counter::Config, Counter::Config),
        (0x100, 1, Counter::Config, Counter::Config),
        (0x1000, 4, Counter::Config, Counter::Config),
        (usize::MAX, 4, Counter::Config, Counter::Config),
        (usize::MAX - 1, 2, Counter::Config, Counter::Config),
    ];
    for &(off, width, rc, wc) in table {
        let mut r = Rig::new();
        let before = counters(&r);
        let mut buf = vec![0xa5u8; width];
        r.dev.config_read(off, &mut buf);
        if rc == Counter::Config || ((0x60..0x70).contains(&off) && !matches!(width, 1 | 2)) {
            assert!(buf.iter().all(|&b| b == 0), "ignored reads are zeros");
        }
        expect_bump(before, counters(&r), rc, &format!("CR{width}({off:#x})"));
        let before = counters(&r);
        // Write something harmless: 0 keeps the header usable for the check below.
        r.dev.config_write(off, &vec![0u8; width]);
        expect_bump(before, counters(&r), wc, &format!("CW{width}({off:#x})"));
        // The device still works after any of them.
        assert_eq!(r.cr32(0x00), 0x25ab_8086);
    }
}

#[test]
fn bar0_registers_at_every_width_bump_the_right_counter() {
    use Counter::*;
    // (offset, width, counter for a read, counter for a write of 0 while locked)
    let mut table: Vec<(u64, usize, Counter, Counter)> = Vec::new();
    for off in 0..16u64 {
        for width in [1usize, 2, 4] {
            let aligned = off % width as u64 == 0;
            let (rc, wc) = match (aligned, width) {
                (false, _) => (Mmio, Mmio),
                (true, 1) => (None, None),
                (true, _) => (None, WithoutUnlock),
            };
            table.push((off, width, rc, wc));
        }
    }
    for (off, width) in [
        (0u64, 0usize),
        (0, 3),
        (0, 5),
        (0, 8),
        (8, 8),
        (0x0c, 3),
        (0x10, 1),
        (0x10, 4),
        (0x0e, 4),
        (0x100, 2),
        (u64::MAX, 1),
        (u64::MAX - 3, 4),
    ] {
        table.push((off, width, Mmio, Mmio));
    }
    for (off, width, rc, wc) in table {
        let mut r = Rig::new();
        let before = counters(&r);
        let mut buf = vec![0xa5u8; width];
        r.dev.bar0_read(off, &mut buf);
        assert!(buf.iter().all(|&b| b == 0), "MR{width}({off:#x}) reads 0");
        expect_bump(before, counters(&r), rc, &format!("MR{width}({off:#x})"));
        let before = counters(&r);
        r.dev.bar0_write(off, &vec![0u8; width]);
        expect_bump(before, counters(&r), wc, &format!("MW{width}({off:#x})"));
    }
}

#[test]
fn odd_accesses_never_change_the_registers() {
    let mut r = Rig::new();
    r.setpv(100, 100);
    r.enable();
    let before = r.dev.state();
    for width in [0usize, 3, 5, 8, 16] {
        for off in [0usize, 0x0c, 0x60, 0x68, 0xff, 0x100, usize::MAX] {
            r.dev.config_write(off, &vec![0xffu8; width]);
            r.dev.bar0_write(off as u64, &vec![0xffu8; width]);
        }
    }
    assert_eq!(r.dev.state(), before);
}

// ---------------------------------------------------------------------------
// Resets, pause/resume, snapshot/restore
// ---------------------------------------------------------------------------

#[test]
fn warm_reset_keeps_the_flag_power_on_reset_clears_it() {
    let mut r = Rig::new();
    fire_once(&mut r);
    r.cw8(0x3c, 0x0b);
    r.dev.warm_reset();
    assert!(r.dev.watchdog().timeout_flag());
    assert_eq!(r.cr8(0x3c), 0, "header scratch registers reset too");
    assert_eq!(r.cr32(0x10), 0);
    assert_eq!(r.cr16(0x04), 0);
    assert_eq!(r.mr16(0x0c), 0x1200);
    r.dev.power_on_reset();
    assert!(!r.dev.watchdog().timeout_flag());
    assert_eq!(r.mr16(0x0c), 0);
    assert_eq!(r.cr32(0x00), 0x25ab_8086, "identity survives both");
}

#[test]
fn pause_freezes_the_countdown() {
    let (mut r, t0) = Rig::armed(100, 100);
    r.at(t0 + 150 * MS);
    r.dev.pause();
    assert!(r.dev.watchdog().is_paused());
    assert_eq!(r.dev.next_deadline(), None);
    // An hour paused: nothing happens and nothing is lost.
    r.silent_for(3_600_000 * MS);
    let remaining = FIRE_100_100 - 150 * MS;
    assert_eq!(r.dev.watchdog().remaining_ns(r.now()), Some(remaining));
    r.dev.resume();
    let t1 = r.now();
    r.fires_exactly_at(t1 + remaining);
}

#[test]
fn pause_in_stage_1_and_kick_while_paused() {
    let (mut r, t0) = Rig::armed(100, 100);
    r.at(t0 + 10 * MS);
    r.dev.pause();
    r.after(1_000 * MS);
    // A host-side access while paused (a debugger, say) restarts stage 1 frozen.
    r.kick();
    assert_eq!(r.dev.watchdog().remaining_ns(r.now()), Some(MS_98));
    r.after(1_000 * MS);
    r.dev.resume();
    let t1 = r.now();
    r.fires_exactly_at(t1 + FIRE_100_100);
}

#[test]
fn pause_at_the_deadline_fires_first() {
    let (mut r, t0) = Rig::armed(100, 100);
    r.clock.set(t0 + FIRE_100_100);
    r.dev.pause();
    r.dev.poll(&mut r.fired);
    assert_eq!(r.fired.len(), 1, "due before the pause");
    assert_eq!(r.fired[0].time_ns, t0 + FIRE_100_100);
}

/// Bring a device into a busy state: running in stage 2, unlock window open,
/// odd WDTCR bits, flag set.
fn busy_rig() -> Rig {
    let mut r = Rig::with_action(WatchdogAction::Shutdown);
    fire_once(&mut r);
    r.cw16(0x60, 0x0015);
    r.setpv(1000, 0x54321);
    r.cw8(0x68, 0x03);
    // 1 MHz (bit 2 of 0x15): stage 1 is 0.96 ms; stop 12,345 ns into stage 2.
    r.after(1000 * UNIT_1M + 12_345);
    r.u();
    r.cw8(0x3c, 0x0a);
    r
}

#[test]
fn state_restore_state_is_identity() {
    for paused in [false, true] {
        let mut r = busy_rig();
        if paused {
            r.dev.pause();
        }
        let s1 = r.dev.state();
        assert_eq!(s1.watchdog.unlock_state, 2);
        assert!(s1.watchdog.stage2);
        assert_eq!(s1.watchdog.paused, paused);
        let mut d2 =
            I6300Esb::restore(&s1, r.clock.clone(), Arc::new(EventCounters::default())).unwrap();
        assert_eq!(d2.state(), s1);
        // The byte encoding round-trips too.
        let bytes = s1.to_bytes();
        let decoded = I6300EsbState::from_bytes(&bytes).unwrap();
        assert_eq!(decoded, s1);
        assert_eq!(decoded.to_bytes(), bytes);
    }
}

#[test]
fn restored_device_behaves_like_the_original() {
    let mut a = busy_rig();
    let s = a.dev.state();
    let remaining = s.watchdog.remaining_ns.unwrap();
    let clock = ManualClock::new(a.now());
    let mut b = I6300Esb::restore(&s, clock.clone(), Arc::new(EventCounters::default())).unwrap();
    // The open unlock window carried over: a preload write is accepted in both.
    a.mw32(0x00, 7);
    b.bar0_write(0x00, &7u32.to_le_bytes());
    assert_eq!(a.dev.state(), b.state());
    let t = a.now() + remaining;
    a.fires_exactly_at(t);
    let mut fired = Vec::new();
    clock.set(t);
    b.poll(&mut fired);
    assert_eq!(fired, a.fired[1..].to_vec());
    assert_eq!(fired[0].action, WatchdogAction::Shutdown);
}

#[test]
fn restore_after_long_downtime_never_fires_at_once() {
    let mut r = Rig::new();
    r.setpv(100, 100);
    r.enable();
    r.after(190 * MS);
    let s = r.dev.state();
    let left = FIRE_100_100 - 190 * MS;
    assert_eq!(s.watchdog.remaining_ns, Some(left));
    // Restored a year later on a clock that moved on.
    let later = r.now() + 365 * 24 * 3_600_000 * MS;
    let clock = ManualClock::new(later);
    let mut d = I6300Esb::restore(&s, clock.clone(), Arc::new(EventCounters::default())).unwrap();
    let mut fired: Vec<Expiry> = Vec::new();
    d.poll(&mut fired);
    assert!(fired.is_empty());
    assert_eq!(d.next_deadline(), Some(later + left));
    clock.set(later + left - 1);
    d.poll(&mut fired);
    assert!(fired.is_empty());
    clock.set(later + left);
    d.poll(&mut fired);
    assert_eq!(fired.len(), 1);
    assert_eq!(fired[0].time_ns, later + left);
}

#[test]
fn pending_expiries_survive_a_snapshot() {
    let mut r = Rig::with_action(WatchdogAction::Pause);
    r.setpv(1, 1);
    r.enable();
    r.clock.advance(10 * UNIT_1K);
    // Not polled: the expiry waits in the device and is part of its state.
    let s = r.dev.state();
    assert_eq!(s.watchdog.pending, vec![WatchdogAction::Pause]);
    let mut d = I6300Esb::restore(&s, r.clock.clone(), Arc::new(EventCounters::default())).unwrap();
    let mut fired: Vec<Expiry> = Vec::new();
    assert_eq!(d.poll(&mut fired), 1);
    assert_eq!(fired[0].action, WatchdogAction::Pause);
}

#[test]
fn tampered_state_is_rejected() {
    let mut r = busy_rig();
    let good = r.dev.state();
    let bytes = good.to_bytes();
    let restore =
        |s: &I6300EsbState| I6300Esb::restore(s, ManualClock::new(0), crate::NoEvents).map(|_| ());

    // Field-level tampering, caught by validation.
    type Tamper = fn(&mut I6300EsbState);
    let cases: Vec<(Tamper, StateError)> = vec![
        (
            |s: &mut I6300EsbState| s.version = 2,
            StateError::Version(2),
        ),
        (
            |s: &mut I6300EsbState| s.watchdog.version = 9,
            StateError::Version(9),
        ),
        (
            |s: &mut I6300EsbState| s.watchdog.preload1 = 0x10_0000,
            StateError::Preload,
        ),
        (
            |s: &mut I6300EsbState| s.watchdog.preload2 = u32::MAX,
            StateError::Preload,
        ),
        (
            |s: &mut I6300EsbState| s.watchdog.int_type = 0x02,
            StateError::IntType,
        ),
        (
            |s: &mut I6300EsbState| s.watchdog.unlock_state = 3,
            StateError::UnlockState,
        ),
        (
            |s: &mut I6300EsbState| s.watchdog.remaining_ns = Some(u64::MAX),
            StateError::Remaining,
        ),
        (
            |s: &mut I6300EsbState| s.watchdog.enabled = false,
            StateError::CountdownWhileDisabled,
        ),
        (
            |s: &mut I6300EsbState| s.watchdog.spinning = true,
            StateError::Spinning,
        ),
        (
            |s: &mut I6300EsbState| s.watchdog.pending = vec![WatchdogAction::Reset; 17],
            StateError::Pending,
        ),
        (
            |s: &mut I6300EsbState| s.command = 0xffff,
            StateError::Command,
        ),
        (
            |s: &mut I6300EsbState| s.bar0 = 0xfebf_0004,
            StateError::Bar0,
        ),
    ];
    for (tamper, err) in cases {
        let mut s = good.clone();
        tamper(&mut s);
        assert_eq!(restore(&s), Err(err.clone()));
        // The same tampering survives encoding only to be refused on decode.
        assert_eq!(I6300EsbState::from_bytes(&s.to_bytes()), Err(err));
    }

    // Byte-level tampering: every single flipped bit is refused, never a panic.
    for i in 0..bytes.len() {
        for bit in 0..8 {
            let mut b = bytes.clone();
            b[i] ^= 1 << bit;
            assert!(I6300EsbState::from_bytes(&b).is_err(), "byte {i} bit {bit}");
        }
    }
    // Truncation and extension.
    for len in 0..bytes.len() {
        assert!(
            I6300EsbState::from_bytes(&bytes[..len]).is_err(),
            "len {len}"
        );
    }
    let mut longer = bytes.clone();
    longer.push(0);
    assert!(I6300EsbState::from_bytes(&longer).is_err());
    // A well-formed encoding with a bad field (checksum recomputed) is refused by
    // validation, with the field's error.
    let mut s = good.clone();
    s.watchdog.preload1 = 0xfff_ffff;
    assert_eq!(
        I6300EsbState::from_bytes(&s.to_bytes()),
        Err(StateError::Preload)
    );
    assert_eq!(I6300EsbState::from_bytes(&bytes), Ok(good));
}

#[test]
fn clock_at_the_end_of_time_never_hangs() {
    // Free-running with output disabled, a clock that saturates at u64::MAX.
    let clock = ManualClock::new(u64::MAX - 5 * UNIT_1K);
    let mut d = I6300Esb::new(WatchdogAction::Reset, clock.clone());
    d.config_write(0x60, &0x0023u16.to_le_bytes());
    for (off, v) in [(0x00u64, 3u32), (0x04, 3)] {
        d.bar0_write(0x0c, &0x80u16.to_le_bytes());
        d.bar0_write(0x0c, &0x86u16.to_le_bytes());
        d.bar0_write(off, &v.to_le_bytes());
    }
    d.config_write(0x68, &[0x06]);
    clock.advance(u64::MAX);
    let mut fired: Vec<Expiry> = Vec::new();
    assert_eq!(d.poll(&mut fired), 0);
    assert_eq!(
        d.next_deadline(),
        None,
        "output disabled: nothing to wake for"
    );
    assert_eq!(d.watchdog().remaining_ns(u64::MAX), Some(0));
    assert_eq!(d.state().validate(), Ok(()));
    // With the output on, the saturated stage never ends rather than looping.
    d.config_write(0x60, &0x0003u16.to_le_bytes());
    assert_eq!(d.next_deadline(), Some(u64::MAX));
    assert_eq!(d.poll(&mut fired), 0);
}

// ---------------------------------------------------------------------------
// Host protection (the README's threat model)
// ---------------------------------------------------------------------------

#[test]
fn silent_fast_free_run_loop_never_wakes_the_host() {
    // Output disabled, free-running, 1 unit per stage at 1 MHz: a 1.92 us loop.
    let mut r = Rig::new();
    r.cw16(0x60, 0x0024);
    r.setpv(1, 1);
    r.cw8(0x68, 0x06);
    assert_eq!(r.dev.next_deadline(), None);
    // A whole hour later one poll catches up in constant time.
    r.silent_for(3_600_000 * MS);
    assert!(count(&r.ev.stage1_expired) <= 2);
    assert_eq!(r.dev.next_deadline(), None);
    // The loop kept its phase: enabling the output fires at the next 1.92 us edge.
    let t = r.now();
    r.cw16(0x60, 0x0004);
    let next = r.dev.next_deadline().unwrap();
    assert!(next > t && next <= t + 2 * UNIT_1M);
    assert_eq!((next - (t - 3_600_000 * MS)) % (2 * UNIT_1M), 0);
    r.fires_exactly_at(next);
}

#[test]
fn kick_storm_keeps_one_deadline_and_never_fires() {
    let mut r = Rig::new();
    r.setpv(1, 1);
    r.enable();
    for _ in 0..100_000 {
        r.kick();
        r.clock.advance(UNIT_1K);
        r.dev.poll(&mut r.fired);
    }
    assert!(r.fired.is_empty());
    assert_eq!(count(&r.ev.kick), 100_000);
    assert_eq!(r.dev.next_deadline(), Some(r.now() - UNIT_1K + 2 * UNIT_1K));
}

mod hardware;
