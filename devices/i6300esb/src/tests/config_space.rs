//! docs/DEVICE.md §1 (PCI identity, the standard header and the device-specific
//! configuration registers 0x60/0x64/0x68): conformance cases 1-16.

use super::*;

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

    // Those accesses reach QEMU's plain storage under the register: a dword
    // written at 0x60 reads back at every width but 16 bits, where the device
    // answers with the register, which the dword did not change.
    r.cw32(0x60, 0x1234_5678);
    assert_eq!(r.cr32(0x60), 0x1234_5678);
    assert_eq!(r.cr8(0x60), 0x78);
    assert_eq!(r.cr8(0x61), 0x56);
    assert_eq!(r.cr16(0x62), 0x1234);
    assert_eq!(r.cr16(0x60), 0x0025, "the register, not the stored 0x5678");
    // And the register write leaves the stored bytes alone.
    r.cw16(0x60, 0x0004);
    assert_eq!(r.cr16(0x60), 0x0004);
    assert_eq!(r.cr32(0x60), 0x1234_5678);
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
    assert_eq!(r.cr16(0x68), 0x0002, "stored as plain config bytes");
    r.cw32(0x68, 0x02);
    assert_eq!(r.cr32(0x68), 0x0000_0002, "stored as plain config bytes");
    assert_eq!(r.cr16(0x68), 0x0002);
    assert_eq!(r.cr8(0x68), 0x00, "the register did not see them");
    assert_eq!(r.dev.next_deadline(), None, "not enabled");
    assert!(!r.dev.watchdog().is_enabled());
    r.enable();
    assert_eq!(r.cr8(0x68), 0x02);
    // The register write does not touch the stored bytes, nor they the register.
    r.cw32(0x68, 0);
    assert_eq!(r.cr32(0x68), 0);
    assert_eq!(r.cr8(0x68), 0x02);
    assert!(r.dev.watchdog().is_enabled());
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
    // Plain storage, like the rest of 0x40-0xFF: 0 until written.
    r.cw32(0x64, 0x000a_bcde);
    assert_eq!(r.cr32(0x64), 0x000a_bcde);
}

/// The examples of QEMU's storage at 0x40-0xFF in docs/DEVICE.md §1.2, each checked.
#[test]
fn config_0x40_to_0xff_is_plain_storage_in_qemu() {
    let mut r = Rig::new();
    r.cw16(0x62, 0x5176);
    assert_eq!(r.cr8(0x62), 0x76);
    assert_eq!(r.cr8(0x63), 0x51);
    r.cw32(0x40, 0xdead_beef);
    assert_eq!(r.cr32(0x40), 0xdead_beef);
    assert_eq!(r.cr16(0x42), 0xdead);
    r.cw32(0x68, 0x0000_0002);
    assert_eq!(r.cr32(0x68), 0x0000_0002);
    assert_eq!(r.cr8(0x68), 0x00);
    assert_eq!(r.dev.next_deadline(), None);
    assert!(!r.dev.watchdog().is_enabled());

    // Every byte from 0x40 to 0xFF holds what was written, dword by dword.
    let pattern = |off: usize| (off as u32).wrapping_mul(0x0101_0101) ^ 0xa55a_3cc3;
    for off in (0x40..0x100).step_by(4) {
        r.cw32(off, pattern(off));
    }
    for off in (0x40..0x100).step_by(4) {
        assert_eq!(r.cr32(off), pattern(off), "offset {off:#x}");
    }
    // The registers saw none of it.
    assert_eq!(r.cr16(0x60), 0x0000);
    assert_eq!(r.cr8(0x68), 0x00);
    // The header is not storage: a byte written at 0x3f (max latency) stays 0.
    r.cw8(0x3f, 0x77);
    assert_eq!(r.cr8(0x3f), 0);
    // An access straddling the header and the storage splits between them.
    r.cw32(0x3c, 0x4433_220b);
    assert_eq!(r.cr8(0x3c), 0x0b, "interrupt line is writable");
    assert_eq!(r.cr32(0x3c), 0x0000_000b);
    assert_eq!(r.cr32(0x40), pattern(0x40), "0x40 was not in that access");
}

#[test]
fn config_storage_survives_a_machine_reset_not_a_power_on() {
    let mut r = Rig::new();
    r.cw8(0x70, 0xa5);
    r.cw32(0xfc, 0x0102_0304);
    r.dev.warm_reset();
    assert_eq!(r.cr8(0x70), 0xa5);
    assert_eq!(r.cr32(0xfc), 0x0102_0304);
    assert_eq!(r.dev.bar0_address(), None, "the header did reset");
    r.dev.power_on_reset();
    assert_eq!(r.cr8(0x70), 0);
    assert_eq!(r.cr32(0xfc), 0);
}
