//! `vmpulse validate` checks everything `vmpulse run` checks before it starts: a manifest
//! that validates does not fail `run` on a manifest problem, and one that `run` refuses
//! (exit 2) does not validate, with the same message.

mod run_util;

use std::path::Path;
use std::process::{Command, Output};

use run_util::{kvm_or_skip, manifest, run, Vm, LIMIT};

fn vmpulse(cmd: &str, file: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_vmpulse"))
        .arg(cmd)
        .arg(file)
        .output()
        .expect("run vmpulse")
}

/// The test VM with these annotations and `resources.requests.memory`.
fn yaml(annotations: &[(&str, &str)], memory: &str) -> String {
    Vm {
        annotations,
        ..Vm::default()
    }
    .yaml()
    .replace("memory: 8Mi", &format!("memory: {memory}"))
}

#[test]
fn annotations_run_refuses_do_not_validate() {
    let cases: &[(&str, &str, &str)] = &[
        ("vmpulse.io/guest-timeout", "0", "0 is not in 1..=2047"),
        ("vmpulse.io/guest-timeout", "soon", "is not a whole number"),
        ("vmpulse.io/guest-kick-every", "0", "at least 0.001"),
        (
            "vmpulse.io/guest-kick-every",
            "x",
            "not a number of seconds",
        ),
        (
            "vmpulse.io/guest-hang-after",
            "-1",
            "not a number of seconds",
        ),
        ("vmpulse.io/guest-ignore-shutdown", "yes", "is not \"true\""),
        ("vmpulse.io/max-restarts", "-1", "not a whole number"),
        ("vmpulse.io/run-for", "0s", "longer than 0"),
        ("vmpulse.io/restart-backoff", "later", "not a duration"),
    ];
    for (key, value, needle) in cases {
        let m = manifest(&yaml(&[(key, value)], "8Mi"));
        let v = vmpulse("validate", &m.path);
        let r = vmpulse("run", &m.path);
        let (v_err, r_err) = (
            String::from_utf8_lossy(&v.stderr),
            String::from_utf8_lossy(&r.stderr),
        );
        assert_eq!(v.status.code(), Some(2), "{key}={value}: {v_err}");
        assert_eq!(r.status.code(), Some(2), "{key}={value}: {r_err}");
        let line = format!("annotation {key}: ");
        let v_line = v_err.lines().find(|l| l.starts_with(&line));
        let r_line = r_err
            .lines()
            .find_map(|l| l.split_once(": ").map(|(_, m)| m));
        assert!(v_line.is_some_and(|l| l.contains(needle)), "{key}: {v_err}");
        assert_eq!(v_line, r_line, "validate and run disagree");
        assert!(v.stdout.is_empty());
    }
}

#[test]
fn validate_reports_what_run_will_adjust() {
    let m = manifest(&yaml(
        &[
            ("vmpulse.io/colour", "blue"),
            ("vmpulse.io/guest-timeout", "3"),
        ],
        "16M",
    ));
    let v = vmpulse("validate", &m.path);
    let out = String::from_utf8_lossy(&v.stdout);
    assert_eq!(v.status.code(), Some(0), "{out}");
    assert!(
        out.contains("warning: unknown annotation vmpulse.io/colour is ignored"),
        "{out}"
    );
    assert!(
        out.contains(
            "note: the manifest asks for 16000000 bytes of memory; the test guest gets \
             16003072 bytes (rounded up to a whole number of 4 KiB pages)"
        ),
        "{out}"
    );
}

/// Memory sizes that are not whole pages validated, then failed `run` with "kvm register
/// guest memory: Invalid argument"; now `run` rounds them up and says so.
#[test]
fn manifests_that_validate_run_without_a_manifest_problem() {
    if !kvm_or_skip("manifests_that_validate_run_without_a_manifest_problem") {
        return;
    }
    let cases: &[(&str, Option<u64>)] = &[
        ("16M", Some(16_003_072)),
        ("12345Ki", Some(12_644_352)),
        ("1e7", Some(10_002_432)),
        ("'3000001'", Some(3_002_368)),
        ("8Mi", None),
    ];
    let annotations = [
        ("vmpulse.io/run-for", "1500ms"),
        ("vmpulse.io/guest-timeout", "2"),
        ("vmpulse.io/guest-kick-every", "0.25"),
    ];
    for (memory, rounded) in cases {
        let m = manifest(&yaml(&annotations, memory));
        let v = vmpulse("validate", &m.path);
        assert_eq!(
            v.status.code(),
            Some(0),
            "{memory}: {}",
            String::from_utf8_lossy(&v.stderr)
        );
        let r = run(&m.path, &[], LIMIT);
        assert_eq!(r.code, Some(0), "{memory}: {}", r.dump());
        assert!(r.of("error").is_empty(), "{memory}: {}", r.dump());
        r.assert_story_starts(&["started 1"]);
        assert!(
            r.console().iter().any(|l| l.starts_with("guest: kick")),
            "{memory}: the guest did not run: {}",
            r.dump()
        );
        let infos: Vec<&str> = r
            .of("info")
            .iter()
            .filter_map(|e| e["message"].as_str())
            .collect();
        let note = infos.iter().find(|m| m.contains("rounded up"));
        match rounded {
            Some(bytes) => {
                let note = note.unwrap_or_else(|| panic!("{memory}: no note in {infos:#?}"));
                assert!(
                    note.contains(&format!("the test guest gets {bytes} bytes")),
                    "{note}"
                );
            }
            None => assert!(note.is_none(), "{infos:#?}"),
        }
    }
}
