//! The Hardware profile: every case of docs/DEVICE.md §7 tagged **H** where it states
//! what the datasheet does, next to the QEMU-profile test of the same case in the
//! parent module. Names are `hw_case_NN_...`.

use super::*;
use crate::action::{ActionSink, InterruptKind, Stage1Interrupt};
use crate::state::{WATCHDOG_STATE_VERSION, WATCHDOG_STATE_VERSION_1};
use crate::Profile;

/// A [`Rig::new`] in the Hardware profile.
fn hw() -> Rig {
    hw_with_action(WatchdogAction::None)
}

fn hw_with_action(action: WatchdogAction) -> Rig {
    let mut r = Rig::with_action(action);
    r.dev.set_profile(Profile::Hardware);
    assert_eq!(r.dev.watchdog().profile(), Profile::Hardware);
    r
}

/// A Hardware-profile rig with preloads set and the watchdog enabled, and the
/// time it was enabled.
fn hw_armed(pv1: u32, pv2: u32) -> (Rig, u64) {
    let mut r = hw();
    r.setpv(pv1, pv2);
    r.enable();
    let t0 = r.now();
    (r, t0)
}

/// An [`ActionSink`] that keeps stage-1 interrupts as well as expiries.
#[derive(Default)]
struct Both {
    interrupts: Vec<Stage1Interrupt>,
    expiries: Vec<Expiry>,
}

impl ActionSink for Both {
    fn watchdog_expired(&mut self, expiry: Expiry) {
        self.expiries.push(expiry);
    }
    fn stage1_interrupt(&mut self, interrupt: Stage1Interrupt) {
        self.interrupts.push(interrupt);
    }
}

impl Rig {
    fn poll_both(&mut self, t: u64) -> Both {
        self.clock.set(t);
        let mut both = Both::default();
        self.dev.poll(&mut both);
        both
    }
}

// ---------------------------------------------------------------------------
// Profile selection
// ---------------------------------------------------------------------------

#[test]
fn default_profile_is_qemu() {
    let r = Rig::new();
    assert_eq!(r.dev.watchdog().profile(), Profile::Qemu);
    assert_eq!(Profile::default(), Profile::Qemu);
    let d =
        I6300Esb::new(WatchdogAction::Reset, ManualClock::new(0)).with_profile(Profile::Hardware);
    assert_eq!(d.watchdog().profile(), Profile::Hardware);
}

// ---------------------------------------------------------------------------
// WDTCR mask (cases 8-10)
// ---------------------------------------------------------------------------

#[test]
fn hw_case_08_to_10_wdtcr_keeps_bits_1_0_2_and_5() {
    let mut r = hw();
    for (written, read) in [(0x0003u16, 0x0003u16), (0xffff, 0x0027), (0x0002, 0x0002)] {
        r.cw16(0x60, written);
        assert_eq!(r.cr16(0x60), read, "wrote {written:#06x}");
    }
    // Bit 4 is reserved on the chip: QEMU's 0x11 mask would keep it.
    r.cw16(0x60, 0x0010);
    assert_eq!(r.cr16(0x60), 0x0000);
}

// ---------------------------------------------------------------------------
// Byte-enable decoding of 0x60 and 0x68 (cases 11, 13)
// ---------------------------------------------------------------------------

#[test]
fn hw_case_11_wdtcr_reached_by_any_width_covering_it() {
    let mut r = hw();
    r.cw16(0x60, 0x0025);
    assert_eq!(r.cr8(0x60), 0x25);
    assert_eq!(r.cr8(0x61), 0x00);
    assert_eq!(r.cr32(0x60), 0x0000_0025);
    // A byte write to 0x60 replaces the low byte.
    r.cw8(0x60, 0x00);
    assert_eq!(r.cr16(0x60), 0x0000);
    r.cw16(0x60, 0x0025);
    // A dword write covers the whole register.
    r.cw32(0x60, 0x0000_0004);
    assert_eq!(r.cr16(0x60), 0x0004);
    // A byte write to 0x61 touches only reserved bits.
    r.cw8(0x61, 0xff);
    assert_eq!(r.cr16(0x60), 0x0004);
    // Neither counts as an ignored access.
    assert_eq!(count(&r.ev.ignored_config_access), 0);
    // 0x62-0x63 are not part of it.
    assert_eq!(r.cr16(0x62), 0x0000);
}

#[test]
fn hw_case_13_wdtlr_reached_by_any_access_covering_0x68() {
    let mut r = hw();
    r.setpv(100, 100);
    r.cw16(0x68, 0x0002);
    assert_eq!(r.cr8(0x68), 0x02, "a word write enabled it");
    assert_eq!(r.cr16(0x68), 0x0002);
    assert_eq!(r.cr32(0x68), 0x0000_0002);
    assert!(r.dev.watchdog().is_enabled());
    let t0 = r.now();
    r.fires_exactly_at(t0 + FIRE_100_100);
    // A dword write reaches it too (the device stopped after firing; disable).
    let mut r = hw();
    r.cw32(0x68, 0x0000_0004);
    assert_eq!(r.cr8(0x68), 0x04);
    r.cw16(0x66, 0x0000);
    assert_eq!(r.cr8(0x68), 0x04, "0x66-0x67 do not cover 0x68");
    r.cw8(0x69, 0x00);
    assert_eq!(r.cr8(0x68), 0x04, "0x69 is not WDTLR");
    // A word access at 0x67 covers 0x68 with its high byte.
    assert_eq!(r.cr16(0x67), 0x0400);
    r.cw16(0x67, 0x01ff);
    assert_eq!(r.cr8(0x68), 0x01, "locked, disabled, not free-running");
    assert_eq!(count(&r.ev.ignored_config_access), 0);
}

#[test]
fn hw_config_0x40_to_0xff_is_reserved_not_storage() {
    let mut r = hw();
    r.cw32(0x40, 0xdead_beef);
    assert_eq!(r.cr32(0x40), 0);
    r.cw16(0x62, 0x5176);
    assert_eq!(r.cr8(0x62), 0);
    r.cw8(0x70, 0xa5);
    assert_eq!(r.cr8(0x70), 0);
    // Around the registers, only their bits read back.
    r.cw32(0x60, 0xffff_0004);
    assert_eq!(r.cr32(0x60), 0x0000_0004);
    assert_eq!(
        r.dev.state().config_storage,
        [0; crate::regs::CONFIG_STORAGE_SIZE]
    );
    // A QEMU-profile device switched to Hardware drops its storage.
    let mut q = Rig::new();
    q.cw8(0x70, 0xa5);
    assert_eq!(q.cr8(0x70), 0xa5);
    q.dev.set_profile(Profile::Hardware);
    assert_eq!(q.cr8(0x70), 0);
    q.dev.set_profile(Profile::Qemu);
    assert_eq!(q.cr8(0x70), 0, "not kept aside either");
    // A Hardware state carrying storage bytes is refused.
    let mut st = r.dev.state();
    st.config_storage[0x30] = 1;
    assert_eq!(st.validate(), Err(StateError::ConfigStorage));
}

#[test]
fn hw_unknown_case_15_lock_still_does_not_cover_wdtcr() {
    let mut r = hw();
    r.cw8(0x68, 0x01);
    r.cw16(0x60, 0x0024);
    assert_eq!(r.cr16(0x60), 0x0024);
}

// ---------------------------------------------------------------------------
// Unlock cases the chip's answer is unknown for: QEMU's behaviour kept
// ---------------------------------------------------------------------------

#[test]
fn hw_unknown_cases_19_25_26_33_keep_qemu_behaviour() {
    // 19: interleaved byte junk keeps the sequence.
    let mut r = hw();
    r.mw16(0x0c, 0x80);
    r.mw8(0x0c, 0x55);
    r.mw16(0x0c, 0x86);
    r.mw32(0x00, 20);
    assert_eq!(r.preloads().0, 20);
    // 25: a word write to PV1 spends the window, PV1 unchanged.
    r.u();
    r.mw16(0x00, 30);
    assert_eq!(r.unlock_state(), 0);
    assert_eq!(r.preloads().0, 20);
    // 26: a dword write of 0x100 to the reload register spends it without kicking.
    r.setpv(100, 100);
    r.enable();
    r.u();
    r.mw32(0x0c, 0x100);
    assert_eq!(r.unlock_state(), 0);
    assert_eq!(count(&r.ev.kick), 0);
    // 33: preloads read 0.
    r.u();
    r.mw32(0x00, 0x12345);
    assert_eq!(r.mr32(0x00), 0);
    assert_eq!(r.mr16(0x00), 0);
}

// ---------------------------------------------------------------------------
// GISR (cases 29, 56) and the stage-1 interrupt
// ---------------------------------------------------------------------------

#[test]
fn hw_case_56_stage_1_sets_gisr_and_raises_an_irq() {
    let (mut r, t0) = hw_armed(100, 100);
    assert_eq!(r.cr16(0x60) & 0x03, 0x00, "reset int type: IRQ");
    // The end of stage 1 is a deadline now: an interrupt is due there.
    assert_eq!(r.dev.next_deadline(), Some(t0 + MS_98));
    let b = r.poll_both(t0 + MS_98 - 1);
    assert!(b.interrupts.is_empty());
    assert_eq!(r.mr16(0x08), 0x0000);
    let b = r.poll_both(t0 + MS_98);
    assert_eq!(
        b.interrupts,
        vec![Stage1Interrupt {
            kind: InterruptKind::Irq,
            time_ns: t0 + MS_98
        }]
    );
    assert!(b.expiries.is_empty());
    assert_eq!(r.mr16(0x08), 0x0001);
    assert_eq!(r.mr32(0x08), 0x0000_0001);
    assert_eq!(r.mr8(0x08), 0x01);
    assert!(r.dev.watchdog().stage1_status());
    // GISR set: the only deadline left is the expiry.
    assert_eq!(r.dev.next_deadline(), Some(t0 + FIRE_100_100));
    // Write 1 to clear, without unlocking.
    r.mw16(0x08, 0x0001);
    assert_eq!(r.mr16(0x08), 0x0000);
    assert_eq!(count(&r.ev.write_without_unlock), 0);
    r.fires_exactly_at(t0 + FIRE_100_100);
}

#[test]
fn hw_case_56_smi_and_disabled_interrupt_types() {
    // 10: SMI.
    let mut r = hw();
    r.cw16(0x60, 0x0002);
    r.setpv(10, 10);
    r.enable();
    let t0 = r.now();
    let b = r.poll_both(t0 + 10 * UNIT_1K);
    assert_eq!(b.interrupts.len(), 1);
    assert_eq!(b.interrupts[0].kind, InterruptKind::Smi);
    // 11: disabled, and 01: reserved: GISR is set, nothing is raised, and the end
    // of stage 1 is no deadline.
    for int_type in [0x0003u16, 0x0001] {
        let mut r = hw();
        r.cw16(0x60, int_type);
        r.setpv(10, 10);
        r.enable();
        let t0 = r.now();
        assert_eq!(r.dev.next_deadline(), Some(t0 + 20 * UNIT_1K));
        let b = r.poll_both(t0 + 10 * UNIT_1K);
        assert!(b.interrupts.is_empty(), "int type {int_type}");
        assert_eq!(r.mr16(0x08), 0x0001);
    }
}

#[test]
fn hw_case_56_one_interrupt_per_gisr_edge() {
    // Free-running with the output disabled: stage 1 ends every cycle.
    let mut r = hw();
    r.cw16(0x60, 0x0020);
    r.setpv(10, 10);
    r.cw8(0x68, 0x06);
    let t0 = r.now();
    let cycle = 20 * UNIT_1K;
    let b = r.poll_both(t0 + 10 * cycle);
    assert_eq!(b.interrupts.len(), 1, "GISR stayed set: one edge");
    assert_eq!(b.interrupts[0].time_ns, t0 + 10 * UNIT_1K);
    assert_eq!(
        r.dev.next_deadline(),
        None,
        "nothing new until GISR is cleared"
    );
    // The guest clears it during stage 1 of cycle 10: the next end is a deadline.
    r.mw8(0x08, 0x01);
    assert_eq!(r.dev.next_deadline(), Some(t0 + 10 * cycle + 10 * UNIT_1K));
    let b = r.poll_both(t0 + 10 * cycle + 10 * UNIT_1K);
    assert_eq!(b.interrupts.len(), 1);
    // Cleared in stage 2: the deadline is the next cycle's stage-1 end.
    r.mw32(0x08, 0x0000_0001);
    assert_eq!(r.dev.next_deadline(), Some(t0 + 11 * cycle + 10 * UNIT_1K));
    // Writing 0 does not clear it.
    r.poll_both(t0 + 11 * cycle + 10 * UNIT_1K);
    r.mw16(0x08, 0x0000);
    assert_eq!(r.mr16(0x08), 0x0001);
    assert!(r.fired.is_empty());
}

#[test]
fn hw_case_29_gisr_write_needs_no_unlock_and_keeps_the_window() {
    let mut r = hw();
    r.u();
    r.mw32(0x08, 0xffff_ffff);
    assert_eq!(r.mr32(0x08), 0);
    assert_eq!(r.unlock_state(), 2, "GISR is not a protected register");
    r.mw32(0x00, 20);
    assert_eq!(r.preloads().0, 20);
}

#[test]
fn hw_gisr_is_cleared_by_reset_and_interrupts_come_from_poll_only() {
    let (mut r, t0) = hw_armed(1, 100);
    // A guest access after the end of stage 1 sets GISR but delivers nothing.
    r.clock.set(t0 + UNIT_1K);
    assert_eq!(r.mr16(0x08), 0x0001);
    assert_eq!(
        r.dev.next_deadline(),
        Some(t0 + UNIT_1K),
        "interrupt waiting"
    );
    let b = r.poll_both(t0 + UNIT_1K + 5);
    assert_eq!(b.interrupts.len(), 1);
    assert_eq!(b.interrupts[0].time_ns, t0 + UNIT_1K);
    r.dev.warm_reset();
    r.map_bar0();
    assert_eq!(r.mr16(0x08), 0x0000);
}

// ---------------------------------------------------------------------------
// Expiry (case 48) and the flag (case 49)
// ---------------------------------------------------------------------------

#[test]
fn hw_case_48_device_keeps_its_state_after_firing() {
    let mut r = hw_with_action(WatchdogAction::InjectNmi);
    r.cw16(0x60, 0x0003);
    r.setpv(100, 100);
    r.cw8(0x68, 0x03);
    let t0 = r.now();
    assert!(!r.dev.watchdog().output_asserted());
    r.fires_exactly_at(t0 + FIRE_100_100);
    assert_eq!(r.fired[0].action, WatchdogAction::InjectNmi);
    assert_eq!(r.cr8(0x68), 0x03, "still enabled and locked");
    assert_eq!(r.cr16(0x60), 0x0003);
    assert_eq!(r.mr16(0x0c), 0x0200);
    assert_eq!(r.preloads(), (100, 100));
    assert!(r.dev.watchdog().output_asserted());
    // The timer stopped: no deadline, nothing more without a kick.
    assert_eq!(r.dev.next_deadline(), None);
    r.silent_for(10_000 * MS);
    // A kick starts stage 1 again; it fires again; the output stays asserted.
    r.kick();
    let t1 = r.now();
    r.fires_exactly_at(t1 + FIRE_100_100);
    assert!(r.dev.watchdog().output_asserted());
    // The host's reset clears the registers and the output, keeps the flag.
    r.dev.warm_reset();
    r.map_bar0();
    assert!(!r.dev.watchdog().output_asserted());
    assert_eq!(r.cr8(0x68), 0x00);
    assert_eq!(r.mr16(0x0c), 0x0200);
}

#[test]
fn hw_case_49_flag_visible_through_any_width() {
    let (mut r, t0) = hw_armed(1, 1);
    r.fires_exactly_at(t0 + 2 * UNIT_1K);
    assert_eq!(r.mr16(0x0c), 0x0200, "bit 12 is not a real bit");
    assert_eq!(r.mr32(0x0c), 0x0000_0200);
    assert_eq!(r.mr8(0x0c), 0x00);
    assert_eq!(r.mr8(0x0d), 0x02);
    assert_eq!(r.mr8(0x0e), 0x00);
    // Linux's clear (unlocked 0x0300 word write) clears it.
    r.u();
    r.mw16(0x0c, 0x0300);
    assert_eq!(r.mr8(0x0d), 0x00);
    assert_eq!(r.mr32(0x0c), 0);
}

// ---------------------------------------------------------------------------
// Saved state
// ---------------------------------------------------------------------------

/// A Hardware-profile device with every new field in use: GISR set, output
/// asserted, a stage-1 interrupt waiting, SMI selected.
fn hw_busy_rig() -> Rig {
    let mut r = hw_with_action(WatchdogAction::Debug);
    r.setpv(1, 1);
    r.enable();
    r.after(2 * UNIT_1K);
    assert_eq!(r.fired.len(), 1);
    r.mw16(0x08, 0x0001);
    r.cw16(0x60, 0x0002);
    r.kick();
    r.clock.advance(UNIT_1K + 7);
    assert_eq!(r.mr16(0x08), 0x0001);
    r
}

#[test]
fn hw_state_round_trips_with_the_profile() {
    let mut r = hw_busy_rig();
    let s = r.dev.state();
    assert_eq!(s.watchdog.version, WATCHDOG_STATE_VERSION);
    assert_eq!(s.watchdog.profile, Profile::Hardware);
    assert!(s.watchdog.gisr);
    assert!(s.watchdog.output_asserted);
    assert_eq!(s.watchdog.pending_interrupt, Some(InterruptKind::Smi));
    assert_eq!(s.watchdog.int_type, 0x0002);
    assert_eq!(s.validate(), Ok(()));
    let bytes = s.to_bytes();
    let decoded = I6300EsbState::from_bytes(&bytes).unwrap();
    assert_eq!(decoded, s);
    assert_eq!(decoded.to_bytes(), bytes);
    let clock = ManualClock::new(r.now() + 1_000);
    let mut d = I6300Esb::restore(&decoded, clock.clone(), crate::NoEvents).unwrap();
    assert_eq!(d.watchdog().profile(), Profile::Hardware);
    assert_eq!(d.state(), s);
    // The waiting interrupt is due at once and carries the restore time.
    assert_eq!(d.next_deadline(), Some(r.now() + 1_000));
    let mut both = Both::default();
    d.poll(&mut both);
    assert_eq!(
        both.interrupts,
        vec![Stage1Interrupt {
            kind: InterruptKind::Smi,
            time_ns: r.now() + 1_000
        }]
    );
    // Every flipped bit of the longer encoding is still refused.
    for i in 0..bytes.len() {
        for bit in 0..8 {
            let mut b = bytes.clone();
            b[i] ^= 1 << bit;
            assert!(I6300EsbState::from_bytes(&b).is_err(), "byte {i} bit {bit}");
        }
    }
}

#[test]
fn hw_state_fields_are_validated_against_the_profile() {
    let mut r = hw_busy_rig();
    let good = r.dev.state();
    type Tamper = fn(&mut I6300EsbState);
    // (tampering, validation's error, the error decoding its encoding gives)
    let cases: Vec<(Tamper, StateError, StateError)> = vec![
        (
            |s| s.watchdog.int_type = 0x10,
            StateError::IntType,
            StateError::IntType,
        ),
        (
            |s| s.watchdog.profile = Profile::Qemu,
            StateError::Profile,
            StateError::Profile,
        ),
        // The version-1 layout has no room for the profile: the bytes decode as a
        // QEMU state, whose mask refuses SMI (0x02).
        (
            |s| s.watchdog.version = WATCHDOG_STATE_VERSION_1,
            StateError::Profile,
            StateError::IntType,
        ),
    ];
    for (tamper, err, decode_err) in cases {
        let mut s = good.clone();
        tamper(&mut s);
        assert_eq!(s.validate(), Err(err));
        assert_eq!(I6300EsbState::from_bytes(&s.to_bytes()), Err(decode_err));
    }
    // A QEMU-profile state carrying one Hardware field is refused too.
    let mut q = Rig::new().dev.state();
    assert_eq!(q.validate(), Ok(()));
    q.watchdog.output_asserted = true;
    assert_eq!(q.validate(), Err(StateError::Profile));
    // QEMU's 0x11 mask still holds in the QEMU profile, and 0x02 is SMI in Hardware.
    let mut q = Rig::new().dev.state();
    q.watchdog.int_type = 0x11;
    assert_eq!(q.validate(), Ok(()));
    let mut h = good.clone();
    h.watchdog.int_type = 0x03;
    assert_eq!(h.validate(), Ok(()));
}

/// Bytes `to_bytes` wrote before profiles existed (version 1), captured from the
/// previous release: a QEMU device, action poweroff, WDTCR 0x15, PV1 1000,
/// PV2 0x54321, locked and enabled, 331,058,055 ns left in stage 2.
const V1_BYTES: [u8; 44] = [
    69, 83, 66, 0, 1, 0, 2, 0, 0, 0, 191, 254, 0, 0, 1, 0, 2, 59, 17, 0, 232, 3, 0, 0, 33, 67, 5,
    0, 0, 0, 1, 135, 139, 187, 19, 0, 0, 0, 0, 0, 251, 3, 231, 83,
];

#[test]
fn version_1_bytes_still_decode_as_a_qemu_state() {
    let s = I6300EsbState::from_bytes(&V1_BYTES).unwrap();
    assert_eq!(s.watchdog.version, WATCHDOG_STATE_VERSION_1);
    assert_eq!(s.watchdog.profile, Profile::Qemu);
    assert_eq!(s.watchdog.action, WatchdogAction::Poweroff);
    assert_eq!(s.watchdog.int_type, 0x11);
    assert!(s.watchdog.one_mhz && s.watchdog.locked && s.watchdog.enabled);
    assert_eq!((s.watchdog.preload1, s.watchdog.preload2), (1000, 0x54321));
    assert!(s.watchdog.stage2);
    assert_eq!(s.watchdog.remaining_ns, Some(331_058_055));
    assert!(!s.watchdog.gisr && !s.watchdog.output_asserted);
    assert_eq!(s.watchdog.pending_interrupt, None);
    assert_eq!(s.bar0, 0xfebf_0000);
    assert_eq!(s.version, crate::state::DEVICE_STATE_VERSION_1);
    assert_eq!(s.config_storage, [0; crate::regs::CONFIG_STORAGE_SIZE]);
    // It re-encodes byte for byte in the version-1 layout.
    assert_eq!(s.to_bytes(), V1_BYTES.to_vec());
    // It restores as a QEMU-profile device that fires on time and resets itself.
    let clock = ManualClock::new(T_START);
    let mut d = I6300Esb::restore(&s, clock.clone(), crate::NoEvents).unwrap();
    assert_eq!(d.watchdog().profile(), Profile::Qemu);
    assert_eq!(d.next_deadline(), Some(T_START + 331_058_055));
    clock.set(T_START + 331_058_055);
    let mut fired: Vec<Expiry> = Vec::new();
    assert_eq!(d.poll(&mut fired), 1);
    assert_eq!(fired[0].action, WatchdogAction::Poweroff);
    assert!(!d.watchdog().is_enabled(), "QEMU profile: reset itself");
    // Its new state is written in the current versions.
    assert_eq!(d.state().watchdog.version, WATCHDOG_STATE_VERSION);
    assert_eq!(d.state().version, crate::state::DEVICE_STATE_VERSION);
    let mut b = [0u8; 4];
    d.config_read(0x40, &mut b);
    assert_eq!(b, [0; 4], "version 1 restores with zeroed storage");
    // A version-1 WatchdogState built in code validates as a QEMU state.
    let mut v1 = Rig::new().dev.state();
    v1.version = crate::state::DEVICE_STATE_VERSION_1;
    v1.watchdog.version = WATCHDOG_STATE_VERSION_1;
    assert_eq!(v1.validate(), Ok(()));
    let v1_bytes = v1.to_bytes();
    assert_eq!(v1_bytes.len(), 44, "version-1 layout");
    assert_eq!(I6300EsbState::from_bytes(&v1_bytes), Ok(v1));
}

// ---------------------------------------------------------------------------
// A seeded random soak of the Hardware profile (the fuzz target drives the
// QEMU profile only)
// ---------------------------------------------------------------------------

/// xorshift64*: a fixed, dependency-free sequence.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

#[test]
fn hw_random_soak_keeps_state_valid_and_deadlines_ahead() {
    for seed in 1..=8u64 {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ seed);
        let mut r = hw_with_action(WatchdogAction::ALL[seed as usize % 7]);
        let mut interrupts = 0usize;
        let mut expiries = 0usize;
        for step in 0..5_000 {
            let widths = [0usize, 1, 2, 3, 4, 8];
            let width = widths[rng.below(widths.len() as u64) as usize];
            let value = rng.next();
            match rng.below(12) {
                0 | 1 => {
                    let off = 0x5c + rng.below(0x12) as usize;
                    r.dev.config_write(off, &value.to_le_bytes()[..width]);
                }
                2 => {
                    let mut b = vec![0xa5u8; width];
                    r.dev.config_read(0x5c + rng.below(0x12) as usize, &mut b);
                }
                3 | 4 => {
                    let off = rng.below(0x12);
                    r.dev.bar0_write(off, &value.to_le_bytes()[..width]);
                }
                5 => {
                    let mut b = vec![0xa5u8; width];
                    let off = rng.below(0x12);
                    r.dev.bar0_read(off, &mut b);
                    // Preloads never read back; GISR and the flag only as their bits.
                    let allowed: u64 = match (off, width) {
                        (0x08, 1 | 2 | 4) => 0x01,
                        (0x0c, 2 | 4) => 0x0200,
                        (0x0d, 1) => 0x02,
                        _ => 0,
                    };
                    let mut v = [0u8; 8];
                    v[..width].copy_from_slice(&b);
                    assert_eq!(u64::from_le_bytes(v) & !allowed, 0, "read {off:#x}/{width}");
                }
                6 => r.u(),
                7 => r.clock.advance(rng.below(3 * MS_98)),
                8 => {
                    if let Some(d) = r.dev.next_deadline() {
                        r.clock.set(d);
                    }
                }
                9 => match rng.below(4) {
                    0 => r.dev.pause(),
                    1 => r.dev.resume(),
                    2 => r.dev.warm_reset(),
                    _ => r.dev.power_on_reset(),
                },
                10 => {
                    let s = r.dev.state();
                    let d = I6300EsbState::from_bytes(&s.to_bytes()).unwrap();
                    assert_eq!(d, s, "seed {seed} step {step}");
                    let ev = r.ev.clone();
                    r.dev = I6300Esb::restore(&d, r.clock.clone(), ev).unwrap();
                    assert_eq!(r.dev.state(), s);
                }
                _ => {
                    r.map_bar0();
                    r.setpv(rng.below(40) as u32, rng.below(40) as u32);
                }
            }
            let now = r.now();
            let mut both = Both::default();
            r.dev.poll(&mut both);
            assert!(both.interrupts.iter().all(|i| i.time_ns <= now));
            assert!(both.expiries.iter().all(|e| e.time_ns <= now));
            interrupts += both.interrupts.len();
            expiries += both.expiries.len();
            // After a poll, nothing due is left behind.
            if let Some(d) = r.dev.next_deadline() {
                assert!(d > now, "seed {seed} step {step}: deadline {d} <= {now}");
            }
            let s = r.dev.state();
            assert_eq!(s.validate(), Ok(()), "seed {seed} step {step}");
            assert_eq!(s.watchdog.profile, Profile::Hardware);
            assert_eq!(s.watchdog.gisr, r.dev.watchdog().stage1_status());
        }
        // The soak reached the Hardware-only paths.
        assert!(
            interrupts > 0 && expiries > 0,
            "seed {seed}: {interrupts} {expiries}"
        );
    }
}
