//! `--guest-kick-every` below the test guest's 10 ms timer tick is honoured: the guest
//! runs its timer at 1 kHz then, so it kicks at the asked period, to the millisecond.

mod run_util;

use run_util::{kvm_or_skip, manifest, run, Vm, LIMIT};

/// (guest time in ms of the console line `guest: kick N`) for every kick seen.
fn kick_times(r: &run_util::Run) -> Vec<(u64, u64)> {
    r.of("console")
        .iter()
        .filter_map(|e| {
            let n = e["line"]
                .as_str()?
                .strip_prefix("guest: kick ")?
                .parse()
                .ok()?;
            Some((n, e["time_ms"].as_u64()?))
        })
        .collect()
}

#[test]
fn kick_periods_below_10_ms_are_honoured() {
    if !kvm_or_skip("kick_periods_below_10_ms_are_honoured") {
        return;
    }
    let m = manifest(&Vm::with("Once", "poweroff").yaml());
    let r = run(
        &m.path,
        &[
            "--guest-timeout",
            "1",
            "--guest-kick-every",
            "0.002",
            "--run-for",
            "3s",
        ],
        LIMIT,
    );
    assert_eq!(r.code, Some(0), "{}", r.dump());
    assert!(r.of("watchdog").is_empty(), "{}", r.dump());
    assert!(
        r.of("info").iter().any(|e| e["message"]
            .as_str()
            .is_some_and(|m| m.contains("kicks every 0.002 s"))),
        "{}",
        r.dump()
    );
    let kicks = kick_times(&r);
    // Kicks are numbered 1, 2, 3, … in order.
    for (i, (n, _)) in kicks.iter().enumerate() {
        assert_eq!(*n, i as u64 + 1, "{}", r.dump());
    }
    // 200 kicks at 2 ms take 0.4 s. At the old 10 ms tick the guest could not kick
    // more often than every 10 ms: 2 s at the least, whatever the host's load.
    let first = kicks.first().map(|k| k.1);
    let later = kicks.get(200).map(|k| k.1);
    let (Some(first), Some(later)) = (first, later) else {
        panic!("fewer than 201 kicks in 3 s: {}", r.dump());
    };
    let took = later - first;
    assert!(took < 1500, "200 kicks took {took} ms");
}
