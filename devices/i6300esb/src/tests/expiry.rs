//! docs/DEVICE.md §2.6, §3.6 and §3.7 (expiry, the timeout flag, reset): conformance
//! cases 48-57.

use super::*;

/// Arm 10/10 at 1 kHz and let it fire; returns the expiry time.
pub(super) fn fire_once(r: &mut Rig) -> u64 {
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
pub(super) fn linux_probe(r: &mut Rig) -> u32 {
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
