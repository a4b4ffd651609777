//! Seed inputs, written as readable recipes of guest register sequences.
//!
//! `tests/seeds.rs` checks that `corpus/seeds/` holds exactly these, encoded with
//! [`crate::encode`], and rewrites them when `VMPULSE_WRITE_SEEDS=1` is set.

use i6300esb::WatchdogAction;

use crate::ops::{FuzzInput, Op};

/// A small builder for recipes.
#[derive(Default)]
struct Recipe(Vec<Op>);

impl Recipe {
    fn op(mut self, op: Op) -> Self {
        self.0.push(op);
        self
    }
    fn cw(self, offset: u16, width: u8, value: u64) -> Self {
        self.op(Op::ConfigWrite {
            offset,
            width,
            value,
        })
    }
    fn cr(self, offset: u16, width: u8) -> Self {
        self.op(Op::ConfigRead { offset, width })
    }
    fn mw(self, offset: u16, width: u8, value: u64) -> Self {
        self.op(Op::Bar0Write {
            offset,
            width,
            value,
        })
    }
    fn mr(self, offset: u16, width: u8) -> Self {
        self.op(Op::Bar0Read { offset, width })
    }
    /// Firmware: BAR0 at 0xFEBF0000, memory decode on.
    fn firmware(self) -> Self {
        self.cw(0x10, 4, 0xffff_ffff)
            .cr(0x10, 4)
            .cw(0x10, 4, 0xfebf_0000)
            .cw(0x04, 2, 0x0103)
    }
    fn unlock(self) -> Self {
        self.op(Op::Unlock)
    }
    fn setpv(self, a: u32, b: u32) -> Self {
        self.unlock()
            .mw(0x00, 4, u64::from(a))
            .unlock()
            .mw(0x04, 4, u64::from(b))
    }
    fn kick(self) -> Self {
        self.unlock().mw(0x0c, 2, 0x0100)
    }
    fn enable(self, v: u8) -> Self {
        self.cw(0x68, 1, u64::from(v))
    }
    fn ms(self, count: u16) -> Self {
        self.op(Op::Advance { scale: 2, count })
    }
    fn secs(self, count: u16) -> Self {
        self.op(Op::Advance { scale: 3, count })
    }
    fn until_deadline(self, minus_one: bool) -> Self {
        self.op(Op::AdvanceToDeadline { minus_one })
    }
    /// The Linux probe: WDTCR, lock read, disable, flag read, flag clear + reload.
    fn linux_probe(self) -> Self {
        self.firmware()
            .cw(0x60, 2, 0x0003)
            .cr(0x68, 1)
            .enable(0x00)
            .unlock()
            .mr(0x0c, 2)
            .unlock()
            .mw(0x0c, 2, 0x0300)
    }
    fn linux_set_timeout(self, t: u32) -> Self {
        self.setpv(t << 9, t << 9).kick()
    }
    fn done(self, action: WatchdogAction) -> FuzzInput {
        FuzzInput {
            action,
            ops: self.0,
        }
    }
}

fn r() -> Recipe {
    Recipe::default()
}

/// Every seed: file name and input.
pub fn all() -> Vec<(String, FuzzInput)> {
    use WatchdogAction::*;
    let mut seeds: Vec<(&str, FuzzInput)> = vec![
        (
            "linux-arm-and-fire",
            r().linux_probe()
                .linux_set_timeout(1)
                .kick()
                .enable(0x02)
                .until_deadline(true)
                .until_deadline(false)
                .until_deadline(true)
                .until_deadline(false)
                .mr(0x0c, 2)
                .op(Op::WarmReset)
                .linux_probe()
                .done(Reset),
        ),
        (
            "linux-pings-then-stop",
            r().linux_probe()
                .linux_set_timeout(2)
                .kick()
                .enable(0x02)
                .ms(900)
                .kick()
                .ms(900)
                .kick()
                .ms(900)
                .kick()
                .enable(0x00)
                .cr(0x68, 1)
                .secs(100)
                .done(Poweroff),
        ),
        (
            "busybox-killed",
            r().linux_probe()
                .linux_set_timeout(3)
                .kick()
                .enable(0x02)
                .kick()
                .kick()
                .enable(0x00)
                .kick()
                .enable(0x02)
                .linux_set_timeout(4)
                .kick()
                .secs(2)
                .kick()
                .secs(2)
                .kick()
                .secs(9)
                .done(Poweroff),
        ),
        (
            "nowayout-lock",
            r().firmware()
                .setpv(100, 100)
                .enable(0x03)
                .enable(0x00)
                .cr(0x68, 1)
                .cw(0x60, 2, 0x0024)
                .ms(100)
                .kick()
                .until_deadline(false)
                .until_deadline(false)
                .done(Shutdown),
        ),
        (
            "lock-while-disabled",
            r().firmware()
                .setpv(1, 1)
                .enable(0x01)
                .enable(0x02)
                .secs(60)
                .done(Reset),
        ),
        (
            "one-mhz-prescaler",
            r().firmware()
                .cw(0x60, 2, 0x0004)
                .setpv(10_000, 10_000)
                .enable(0x02)
                .until_deadline(false)
                .cw(0x60, 2, 0x0000)
                .until_deadline(true)
                .until_deadline(false)
                .done(Pause),
        ),
        (
            "prescaler-change-mid-stage",
            r().firmware()
                .setpv(100, 100)
                .enable(0x02)
                .cw(0x60, 2, 0x0007)
                .until_deadline(false)
                .until_deadline(false)
                .done(Debug),
        ),
        (
            "kick-in-stage-two",
            r().firmware()
                .setpv(50, 150)
                .enable(0x02)
                .ms(100)
                .kick()
                .until_deadline(false)
                .until_deadline(true)
                .until_deadline(false)
                .done(None),
        ),
        (
            "pv2-rewrite-in-stage-one",
            r().firmware()
                .setpv(100, 100)
                .enable(0x02)
                .ms(20)
                .unlock()
                .mw(0x04, 4, 10)
                .unlock()
                .mw(0x00, 4, 10)
                .until_deadline(false)
                .until_deadline(false)
                .done(InjectNmi),
        ),
        (
            "zero-preloads",
            r().firmware()
                .setpv(0, 0)
                .enable(0x02)
                .cr(0x68, 1)
                .enable(0x02)
                .done(Reset),
        ),
        (
            "max-preloads",
            r().firmware()
                .setpv(0xfffff, 0xfffff)
                .enable(0x02)
                .secs(1030)
                .secs(1031)
                .until_deadline(true)
                .until_deadline(false)
                .done(Reset),
        ),
        (
            "output-disabled-one-shot",
            r().firmware()
                .cw(0x60, 2, 0x0023)
                .setpv(10, 10)
                .enable(0x02)
                .secs(1)
                .cw(0x60, 2, 0x0003)
                .kick()
                .until_deadline(false)
                .until_deadline(false)
                .done(None),
        ),
        (
            "output-disabled-free-run",
            r().firmware()
                .cw(0x60, 2, 0x0023)
                .setpv(10, 10)
                .enable(0x06)
                .secs(10)
                .cw(0x60, 2, 0x0003)
                .until_deadline(false)
                .until_deadline(false)
                .done(Shutdown),
        ),
        (
            "zero-length-free-run-loop",
            r().firmware()
                .cw(0x60, 2, 0x0023)
                .setpv(0, 0)
                .enable(0x06)
                .ms(5)
                .unlock()
                .mw(0x04, 4, 10)
                .cw(0x60, 2, 0x0003)
                .until_deadline(false)
                .until_deadline(false)
                .done(Debug),
        ),
        (
            "free-run-fires-once",
            r().firmware()
                .cw(0x60, 2, 0x0003)
                .setpv(10, 10)
                .enable(0x06)
                .until_deadline(false)
                .until_deadline(false)
                .cr(0x68, 1)
                .secs(100)
                .done(None),
        ),
        (
            "unlock-junk",
            r().firmware()
                .mw(0x0c, 2, 0x80)
                .mw(0x0c, 1, 0x55)
                .mw(0x0c, 2, 0x86)
                .mw(0x00, 4, 20)
                .mw(0x0c, 1, 0x80)
                .mw(0x0c, 4, 0x86)
                .mw(0x0c, 4, 0x0001_0080)
                .mw(0x0c, 2, 0x86)
                .unlock()
                .mw(0x0c, 1, 0x86)
                .mw(0x0c, 2, 0x86)
                .unlock()
                .mw(0x0d, 2, 0x0100)
                .mw(0x08, 4, 0xffff_ffff)
                .unlock()
                .mw(0x00, 2, 20)
                .unlock()
                .mw(0x00, 4, 0xfff0_0014)
                .enable(0x02)
                .until_deadline(false)
                .until_deadline(false)
                .done(Reset),
        ),
        (
            "flag-clear-variants",
            r().firmware()
                .setpv(1, 1)
                .enable(0x02)
                .until_deadline(false)
                .until_deadline(false)
                .mr(0x0c, 2)
                .mr(0x0c, 4)
                .mr(0x0c, 1)
                .mr(0x0d, 1)
                .mw(0x0c, 2, 0x1000)
                .mr(0x0c, 2)
                .unlock()
                .mw(0x0c, 2, 0x1000)
                .mr(0x0c, 2)
                .done(InjectNmi),
        ),
        (
            "resets-keep-or-clear-flag",
            r().firmware()
                .setpv(2, 2)
                .enable(0x03)
                .until_deadline(false)
                .until_deadline(false)
                .op(Op::WarmReset)
                .mr(0x0c, 2)
                .firmware()
                .enable(0x02)
                .op(Op::PowerOnReset)
                .mr(0x0c, 2)
                .done(Reset),
        ),
        (
            "pause-resume",
            r().firmware()
                .setpv(100, 100)
                .enable(0x02)
                .ms(50)
                .op(Op::Pause)
                .secs(3600)
                .kick()
                .op(Op::Pause)
                .ms(10)
                .op(Op::Resume)
                .ms(150)
                .op(Op::Pause)
                .op(Op::Resume)
                .op(Op::Resume)
                .until_deadline(false)
                .done(Pause),
        ),
        (
            "snapshot-mid-countdown",
            r().firmware()
                .cw(0x60, 2, 0x0015)
                .setpv(1000, 0x54321)
                .enable(0x03)
                .ms(1)
                .unlock()
                .op(Op::Snapshot)
                .mw(0x00, 4, 7)
                .op(Op::Pause)
                .op(Op::Snapshot)
                .secs(100)
                .op(Op::Resume)
                .op(Op::Snapshot)
                .until_deadline(false)
                .done(Shutdown),
        ),
        (
            "snapshot-tamper",
            r().firmware()
                .setpv(5, 5)
                .enable(0x02)
                .op(Op::TamperSnapshot { index: 0, xor: 1 })
                .op(Op::TamperSnapshot {
                    index: 20,
                    xor: 0x80,
                })
                .op(Op::TamperSnapshot {
                    index: 255,
                    xor: 0xff,
                })
                .op(Op::Snapshot)
                .until_deadline(false)
                .until_deadline(false)
                .done(Reset),
        ),
        (
            "odd-config-accesses",
            r().cr(0x60, 1)
                .cr(0x60, 4)
                .cr(0x61, 2)
                .cw(0x60, 1, 0)
                .cw(0x60, 4, 0)
                .cw(0x68, 2, 2)
                .cw(0x68, 4, 2)
                .cr(0x68, 2)
                .cr(0x68, 8)
                .cw(0x00, 3, 0xffffff)
                .cw(0x00, 5, u64::MAX)
                .cw(0x00, 0, 0)
                .cr(0xfe, 4)
                .cr(0x100, 1)
                .cw(0xffff, 4, u64::MAX)
                .cr(0xff00, 1)
                .cr(0x64, 4)
                .cr(0x3d, 1)
                .cr(0x2c, 4)
                .done(Reset),
        ),
        (
            "odd-bar0-accesses",
            r().firmware()
                .unlock()
                .mw(0x0d, 2, 0x0100)
                .mw(0x02, 4, 20)
                .mw(0x00, 8, u64::MAX)
                .mw(0x00, 3, 0x86)
                .mw(0x10, 4, 0x80)
                .mw(0xffff, 1, 0x80)
                .mr(0x0e, 4)
                .mr(0x100, 2)
                .mr(0x00, 0)
                .mr(0x00, 5)
                .mw(0x00, 4, 20)
                .enable(0x02)
                .until_deadline(false)
                .until_deadline(false)
                .done(Debug),
        ),
        (
            "re-enable-and-restart",
            r().firmware()
                .setpv(100, 100)
                .enable(0x02)
                .ms(50)
                .enable(0x02)
                .ms(50)
                .enable(0x00)
                .enable(0x02)
                .until_deadline(true)
                .until_deadline(false)
                .until_deadline(false)
                .done(Poweroff),
        ),
        ("empty", r().done(Reset)),
    ];
    // One short arm-and-fire per action, so each starts the corpus.
    let names = [
        "action-reset",
        "action-shutdown",
        "action-poweroff",
        "action-pause",
        "action-debug",
        "action-none",
        "action-inject-nmi",
    ];
    for (action, name) in WatchdogAction::ALL.into_iter().zip(names) {
        seeds.push((
            name,
            r().firmware()
                .setpv(3, 4)
                .enable(0x02)
                .until_deadline(false)
                .until_deadline(false)
                .done(action),
        ));
    }
    seeds
        .into_iter()
        .enumerate()
        .map(|(i, (name, input))| (format!("{:02}-{name}", i + 1), input))
        .collect()
}
