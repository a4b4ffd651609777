//! The README's threat model: what a guest must not be able to do to the host.

use super::*;

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
