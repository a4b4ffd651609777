//! docs/DEVICE.md §2 (the BAR0 registers, the unlock sequence and write protection):
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

/// Case 28 under KVM: QEMU's `address_space_rw` splits an unaligned access into
/// aligned pieces that do reach the device (`bar0_*_split`).
#[test]
fn case_28_kvm_splits_unaligned_accesses_into_aligned_pieces() {
    // MW16(0x0D) while unlocked: byte writes at 0x0D and 0x0E, which never
    // spend the window, so the following preload write is accepted.
    let mut r = Rig::new();
    r.u();
    let ignored = count(&r.ev.ignored_mmio_access);
    r.dev.bar0_write_split(0x0d, &0x0100u16.to_le_bytes());
    assert_eq!(r.unlock_state(), 2, "window still open");
    r.mw32(0x00, 20);
    assert_eq!(r.preloads().0, 20);
    assert_eq!(count(&r.ev.ignored_mmio_access), ignored, "nothing dropped");

    // QEMU's split, for example: a 2-byte write of 0x8000 at 0x0B is a byte write of
    // 0x00 at 0x0B and of 0x80 at 0x0C, the first unlock step; with 0x86 next,
    // the window opens and a kick gets through.
    let (mut r, t0) = Rig::armed(100, 100);
    r.at(t0 + 50 * MS);
    r.dev.bar0_write_split(0x0b, &0x8000u16.to_le_bytes());
    assert_eq!(r.unlock_state(), 1);
    r.dev.bar0_write_split(0x0b, &0x8600u16.to_le_bytes());
    assert_eq!(r.unlock_state(), 2);
    r.mw16(0x0c, 0x0100);
    r.fires_exactly_at(t0 + 50 * MS + FIRE_100_100);

    // A 4-byte read at 0x0A is a word read at 0x0A and one at 0x0C (the flag's
    // 0x1200), assembled little-endian.
    let mut b = [0xa5u8; 4];
    r.dev.bar0_read_split(0x0a, &mut b);
    assert_eq!(u32::from_le_bytes(b), 0x1200_0000);
    // 8 bytes at 0x08: dwords at 0x08 and 0x0C, both 0 (the flag is word-only).
    let mut b = [0xa5u8; 8];
    r.dev.bar0_read_split(0x08, &mut b);
    assert_eq!(b, [0; 8]);
    // 3 bytes at 0x0B: a byte at 0x0B (0), then a word at 0x0C (0x1200).
    let mut b = [0xa5u8; 3];
    r.dev.bar0_read_split(0x0b, &mut b);
    assert_eq!(b, [0x00, 0x00, 0x12]);

    // An aligned access is delivered whole, as by bar0_read/bar0_write.
    let mut b = [0xa5u8; 2];
    r.dev.bar0_read_split(0x0c, &mut b);
    assert_eq!(u16::from_le_bytes(b), 0x1200);

    // Pieces past the 16-byte window read 0 and are counted; so is an access
    // longer than a KVM exit can carry, which delivers nothing at all.
    let ignored = count(&r.ev.ignored_mmio_access);
    let mut b = [0xa5u8; 4];
    r.dev.bar0_read_split(0x0e, &mut b);
    assert_eq!(b, [0; 4]);
    assert_eq!(
        count(&r.ev.ignored_mmio_access),
        ignored + 1,
        "the piece at 0x10"
    );
    r.u();
    r.dev
        .bar0_write_split(0x00, &[0x14, 0, 0, 0, 0, 0, 0, 0, 0]);
    assert_eq!(count(&r.ev.ignored_mmio_access), ignored + 2);
    assert_eq!(r.unlock_state(), 2, "a 9-byte write delivered nothing");
    let mut b = [0xa5u8; 9];
    r.dev.bar0_read_split(0x00, &mut b);
    assert_eq!(b, [0; 9]);
    assert_eq!(count(&r.ev.ignored_mmio_access), ignored + 3);

    // An 8-byte write at 0x00 while unlocked: PV1 takes the first dword and
    // spends the window, so PV2 (the second dword) is not written.
    r.dev.bar0_write_split(0x00, &[20, 0, 0, 0, 30, 0, 0, 0]);
    assert_eq!(r.preloads(), (20, 0xfffff));
}

/// The `Watchdog`-level split, for VMMs that embed the registers alone.
#[test]
fn watchdog_mmio_split_matches_the_device() {
    let mut wd = crate::Watchdog::new(WatchdogAction::None);
    wd.mmio_write_split(0, 0x0b, &0x8000u16.to_le_bytes());
    wd.mmio_write_split(0, 0x0c, &0x0086u16.to_le_bytes());
    wd.mmio_write_split(0, 0x00, &7u32.to_le_bytes());
    assert_eq!(wd.state(0).preload1, 7);
    let mut b = [0xa5u8; 4];
    wd.mmio_read_split(0, 0x0a, &mut b);
    assert_eq!(b, [0; 4], "no flag yet");
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
