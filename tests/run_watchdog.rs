//! `vmpulse run` on the real /dev/kvm: each watchdog action carried out on the built-in
//! test guest (heartbeat 1 s, kicks every 0.5 s, then a hang), checked on the JSON events.

mod run_util;

use run_util::{kvm_or_skip, run_fast_guest, Run, Vm};

/// Every `watchdog` event says how late its action was carried out: a number of
/// milliseconds, at least 0, and far below a second even on a loaded CI machine.
fn assert_late_ms(r: &Run) {
    let events = r.of("watchdog");
    assert!(!events.is_empty(), "{}", r.dump());
    for e in events {
        let late = e["late_ms"]
            .as_f64()
            .unwrap_or_else(|| panic!("no late_ms in {e}: {}", r.dump()));
        assert!(
            (0.0..1000.0).contains(&late),
            "late_ms {late}: {}",
            r.dump()
        );
    }
}

#[test]
fn poweroff_stops_the_vm_and_once_ends_the_run() {
    if !kvm_or_skip("poweroff_stops_the_vm_and_once_ends_the_run") {
        return;
    }
    let r = run_fast_guest(&Vm::with("Once", "poweroff"), &["--run-for", "40s"]);
    r.assert_story(&[
        "started 1",
        "watchdog poweroff",
        "stopped watchdog",
        "finished 0",
    ]);
    assert_eq!(r.code, Some(0), "{}", r.dump());
    let wd = r.of("watchdog");
    assert_eq!(wd[0]["device"], "mywatchdog");
    let stopped = r.of("stopped");
    assert_eq!(stopped[0]["trigger"], "watchdog");
    assert_late_ms(&r);
    let console = r.console();
    assert!(
        console.iter().any(|l| l.starts_with("guest: kick")),
        "{}",
        r.dump()
    );
    assert!(
        console.contains(&"guest: hanging (no more kicks)".to_string()),
        "{}",
        r.dump()
    );
    // The guest hangs 1 s after boot; with Linux's heartbeat of 1 s both stages together
    // last about 1 s (preload 1 << 9 per stage at the 1 kHz prescaler): the watchdog
    // fires about a second after the last kick (at most 0.5 s before the hang).
    let hang_ms = r
        .of("console")
        .iter()
        .find(|e| e["line"] == "guest: hanging (no more kicks)")
        .and_then(|e| e["time_ms"].as_u64())
        .unwrap();
    let fired_ms = wd[0]["time_ms"].as_u64().unwrap();
    assert!(
        (hang_ms + 400..hang_ms + 3000).contains(&fired_ms),
        "fired {fired_ms} ms, hang {hang_ms} ms"
    );
}

#[test]
fn reset_reboots_and_the_second_boot_reports_the_watchdog() {
    if !kvm_or_skip("reset_reboots_and_the_second_boot_reports_the_watchdog") {
        return;
    }
    let r = run_fast_guest(&Vm::with("Always", "reset"), &["--run-for", "10s"]);
    r.assert_story_starts(&["started 1", "watchdog reset", "started 2"]);
    let console = r.console();
    let first = console
        .iter()
        .position(|l| l.starts_with("guest: bootstatus="))
        .unwrap();
    assert_eq!(console[first], "guest: bootstatus=0", "{}", r.dump());
    assert!(console[first + 1..]
        .iter()
        .any(|l| l.starts_with("guest: bootstatus=0x20")));
    assert!(r.of("stopped").iter().all(|e| e["reason"] == "runtime"));
    assert_eq!(r.code, Some(0), "{}", r.dump());
    assert_late_ms(&r);
}

#[test]
fn a_real_time_run_carries_out_the_action_or_says_why_it_could_not() {
    if !kvm_or_skip("a_real_time_run_carries_out_the_action_or_says_why_it_could_not") {
        return;
    }
    let r = run_fast_guest(
        &Vm::with("Once", "poweroff"),
        &["--run-for", "40s", "--realtime-priority", "1"],
    );
    r.assert_story(&[
        "started 1",
        "watchdog poweroff",
        "stopped watchdog",
        "finished 0",
    ]);
    assert_late_ms(&r);
    // Without CAP_SYS_NICE the run goes on at normal priority, with a note.
    let refused = r.of("info").iter().any(|e| {
        e["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("cannot run at real-time priority 1"))
    });
    if refused {
        eprintln!("note: SCHED_FIFO was refused here; the run went on at normal priority");
    }
    assert_eq!(r.code, Some(0), "{}", r.dump());
}

#[test]
fn shutdown_is_graceful_when_the_guest_honours_it() {
    if !kvm_or_skip("shutdown_is_graceful_when_the_guest_honours_it") {
        return;
    }
    let r = run_fast_guest(
        &Vm {
            grace: 30,
            ..Vm::with("RerunOnFailure", "shutdown")
        },
        &["--run-for", "40s"],
    );
    // A clean shutdown is no failure: RerunOnFailure does not restart.
    r.assert_story(&[
        "started 1",
        "watchdog shutdown",
        "stopped shutdown",
        "finished 0",
    ]);
    let stopped = r.of("stopped");
    assert_eq!(stopped[0]["forced"], false, "{}", r.dump());
    assert_late_ms(&r);
    assert_eq!(stopped[0]["trigger"], "watchdog");
    assert!(r
        .console()
        .contains(&"guest: power button pressed, powering off".to_string()));
    // Far sooner than the 30 s grace period.
    let fired = r.of("watchdog")[0]["time_ms"].as_u64().unwrap();
    assert!(stopped[0]["time_ms"].as_u64().unwrap() < fired + 10_000);
    assert_eq!(r.code, Some(0));
}

#[test]
fn shutdown_is_forced_after_the_grace_period() {
    if !kvm_or_skip("shutdown_is_forced_after_the_grace_period") {
        return;
    }
    let r = run_fast_guest(
        &Vm {
            grace: 2,
            ..Vm::with("Once", "shutdown")
        },
        &["--run-for", "40s", "--guest-ignore-shutdown"],
    );
    r.assert_story(&[
        "started 1",
        "watchdog shutdown",
        "stopped shutdown",
        "finished 0",
    ]);
    let stopped = r.of("stopped");
    assert_eq!(stopped[0]["forced"], true, "{}", r.dump());
    assert!(r
        .console()
        .contains(&"guest: power button pressed, ignored".to_string()));
    let fired = r.of("watchdog")[0]["time_ms"].as_u64().unwrap();
    let stop = stopped[0]["time_ms"].as_u64().unwrap();
    assert!(
        (fired + 1900..fired + 4000).contains(&stop),
        "forced {stop} ms, fired {fired} ms, grace 2 s"
    );
    assert_eq!(r.code, Some(0));
}

#[test]
fn inject_nmi_reaches_the_guest() {
    if !kvm_or_skip("inject_nmi_reaches_the_guest") {
        return;
    }
    let r = run_fast_guest(&Vm::with("Once", "inject-nmi"), &["--run-for", "7s"]);
    r.assert_story_starts(&["started 1", "watchdog inject-nmi"]);
    r.assert_story_ends(&["stopped runtime", "finished 0"]);
    assert!(
        r.console().contains(&"guest: NMI received".to_string()),
        "{}",
        r.dump()
    );
    // The VM kept running: a single boot.
    assert_eq!(r.of("started").len(), 1);
    assert_late_ms(&r);
    assert_eq!(r.code, Some(0));
}

#[test]
fn pause_freezes_the_vm_until_the_run_ends() {
    if !kvm_or_skip("pause_freezes_the_vm_until_the_run_ends") {
        return;
    }
    let r = run_fast_guest(&Vm::with("Always", "pause"), &["--run-for", "7s"]);
    r.assert_story(&[
        "started 1",
        "watchdog pause",
        "stopped runtime",
        "finished 0",
    ]);
    // Nothing from the guest once paused.
    let paused_at = r.of("watchdog")[0]["time_ms"].as_u64().unwrap();
    assert!(r
        .of("console")
        .iter()
        .all(|e| e["time_ms"].as_u64().unwrap() <= paused_at + 100));
    assert_eq!(r.code, Some(0));
}
