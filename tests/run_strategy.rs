//! runStrategy, `--max-restarts` and `--run-for` through the real `vmpulse run` on /dev/kvm,
//! and the manifest checks that need no KVM.

mod run_util;

use run_util::{kvm_or_skip, manifest, run, run_fast_guest, Vm, LIMIT};

#[test]
fn always_restarts_until_max_restarts() {
    if !kvm_or_skip("always_restarts_until_max_restarts") {
        return;
    }
    let r = run_fast_guest(
        &Vm::with("Always", "poweroff"),
        &["--max-restarts", "1", "--run-for", "50s"],
    );
    r.assert_story(&[
        "started 1",
        "watchdog poweroff",
        "stopped watchdog",
        "restart 1",
        "started 2",
        "watchdog poweroff",
        "stopped watchdog",
        "finished 0",
    ]);
    assert_eq!(r.of("restart")[0]["delay_ms"], 200);
    // A restart is a new VM: the watchdog's timeout flag starts cleared.
    let statuses: Vec<String> = r
        .console()
        .into_iter()
        .filter(|l| l.starts_with("guest: bootstatus="))
        .collect();
    assert_eq!(statuses, ["guest: bootstatus=0", "guest: bootstatus=0"]);
    assert!(r.of("finished")[0]["message"]
        .as_str()
        .unwrap()
        .contains("--max-restarts 1"));
    assert_eq!(r.code, Some(0));
}

#[test]
fn rerun_on_failure_restarts_after_a_watchdog_poweroff() {
    if !kvm_or_skip("rerun_on_failure_restarts_after_a_watchdog_poweroff") {
        return;
    }
    let r = run_fast_guest(
        &Vm::with("RerunOnFailure", "poweroff"),
        &["--max-restarts", "1", "--run-for", "50s"],
    );
    r.assert_story_starts(&[
        "started 1",
        "watchdog poweroff",
        "stopped watchdog",
        "restart 1",
        "started 2",
    ]);
    assert_eq!(r.code, Some(0));
}

#[test]
fn once_and_manual_never_restart() {
    if !kvm_or_skip("once_and_manual_never_restart") {
        return;
    }
    for strategy in ["Once", "Manual"] {
        let r = run_fast_guest(
            &Vm::with(strategy, "poweroff"),
            &["--max-restarts", "3", "--run-for", "40s"],
        );
        assert_eq!(
            r.story(),
            [
                "started 1",
                "watchdog poweroff",
                "stopped watchdog",
                "finished 0"
            ],
            "{strategy}: {}",
            r.dump()
        );
        assert!(r.of("finished")[0]["message"]
            .as_str()
            .unwrap()
            .contains(strategy));
    }
}

#[test]
fn run_for_bounds_a_healthy_vm() {
    if !kvm_or_skip("run_for_bounds_a_healthy_vm") {
        return;
    }
    let m = manifest(
        &Vm {
            strategy: "Always",
            action: Some("poweroff"),
            ..Vm::default()
        }
        .yaml(),
    );
    // The guest never hangs: only --run-for ends the run.
    let args = [
        "--guest-timeout",
        "1",
        "--guest-kick-every",
        "0.3",
        "--run-for",
        "4s",
    ];
    let r = run(&m.path, &args, LIMIT);
    r.assert_story(&["started 1", "stopped runtime", "finished 0"]);
    let stopped = r.of("stopped")[0]["time_ms"].as_u64().unwrap();
    assert!((4000..6000).contains(&stopped), "stopped at {stopped} ms");
    let kicks = r
        .console()
        .iter()
        .filter(|l| l.starts_with("guest: kick"))
        .count();
    assert!(kicks >= 3, "{}", r.dump());
    assert_eq!(r.code, Some(0));
}

#[test]
fn halted_does_not_start() {
    // Needs no KVM: nothing is started.
    let m = manifest(
        &Vm {
            strategy: "Halted",
            ..Vm::default()
        }
        .yaml(),
    );
    let r = run(&m.path, &[], LIMIT);
    assert_eq!(r.story(), ["finished 0"], "{}", r.dump());
    assert!(r.of("started").is_empty());
    assert!(r.of("finished")[0]["message"]
        .as_str()
        .unwrap()
        .contains("Halted"));
    assert_eq!(r.code, Some(0));
}

#[test]
fn a_manifest_that_does_not_validate_exits_2() {
    let m = manifest(
        &Vm {
            action: Some("explode"),
            ..Vm::default()
        }
        .yaml(),
    );
    let r = run(&m.path, &[], LIMIT);
    assert_eq!(r.code, Some(2), "{}", r.dump());
    assert!(r.events.is_empty(), "{}", r.dump());
    assert!(
        r.stderr
            .contains("spec.template.spec.domain.devices.watchdog.i6300esb.action"),
        "{}",
        r.stderr
    );
}

#[test]
fn bad_flag_values_exit_2() {
    let m = manifest(&Vm::default().yaml());
    let r = run(&m.path, &["--run-for", "soon"], LIMIT);
    assert_eq!(r.code, Some(2), "{}", r.dump());
    assert!(r.stderr.contains("--run-for"), "{}", r.stderr);
    let r = run(&m.path, &["--probe-host", "not-an-ip"], LIMIT);
    assert_eq!(r.code, Some(2), "{}", r.dump());
}
