//! docs/DEVICE.md §4 and §5.5 (actions, and how Linux and busybox drive the device):
//! conformance cases 58-60.

use super::*;

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
