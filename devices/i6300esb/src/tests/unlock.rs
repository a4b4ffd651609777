//! Spec section 2 (the BAR0 registers, the unlock sequence and write protection):
//! conformance cases 17-33.

use super::*;

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
