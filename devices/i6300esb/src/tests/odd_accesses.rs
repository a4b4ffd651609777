//! docs/DEVICE.md §1.2, §2.2 and §9 (odd accesses): each register at each width,
//! never a panic, always counted.

use super::*;

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
