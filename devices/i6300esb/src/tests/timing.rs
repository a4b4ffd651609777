//! docs/DEVICE.md §3 (the two-stage timer, prescaler, enable, disable and lock):
//! conformance cases 34-47.

use super::*;

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
