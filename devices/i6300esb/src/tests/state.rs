//! docs/DEVICE.md §3.6 and §5.1 (resets, pause/resume, snapshot/restore).

use super::*;

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
/// odd WDTCR bits, flag set, bytes in the configuration storage.
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
    r.cw32(0x40, 0xdead_beef);
    r.cw32(0x68, 0x0000_0002);
    r.cw8(0xff, 0x5a);
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
        assert_eq!(d2.config_read_u32(0x40), 0xdead_beef, "storage carried");
        assert_eq!(d2.config_read_u32(0x68), 2);
        assert_eq!(d2.config_read_u32(0xfc), 0x5a00_0000);
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
            |s: &mut I6300EsbState| s.version = 3,
            StateError::Version(3),
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

    // A version-1 state cannot hold configuration storage; its layout has no
    // room for it, so only the field-level check can see it.
    let mut v1 = good.clone();
    v1.version = crate::state::DEVICE_STATE_VERSION_1;
    assert_eq!(restore(&v1), Err(StateError::ConfigStorage));
    v1.config_storage = [0; crate::regs::CONFIG_STORAGE_SIZE];
    assert_eq!(restore(&v1), Ok(()));

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
