//! Conformance: every reference trace replays against the device model through
//! the real `vmpulse replay --check` binary, and broken variants of them fail
//! the way `docs/TRACE-FORMAT.md` §3 says they must.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_vmpulse");

fn data_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/traces")
}

fn traces_in(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "trace"))
        .collect();
    v.sort();
    v
}

/// The `-watchdog-action X` of the scenario line.
fn scenario_action(text: &str) -> String {
    let scenario = text
        .lines()
        .nth(1)
        .and_then(|l| l.strip_prefix("# scenario: "))
        .expect("scenario line");
    let mut words = scenario.split_whitespace();
    while let Some(w) = words.next() {
        if w == "-watchdog-action" {
            return words.next().expect("action name").to_string();
        }
    }
    panic!("no -watchdog-action in {scenario:?}");
}

fn replay(args: &[&str], file: &Path) -> Output {
    let out = Command::new(BIN)
        .arg("replay")
        .args(args)
        .arg(file)
        .output()
        .expect("run vmpulse");
    eprintln!(
        "vmpulse replay {args:?} {}: {:?}\nstdout:\n{}stderr:\n{}",
        file.display(),
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn check_passes(file: &Path) {
    let text = std::fs::read_to_string(file).unwrap();
    let action = scenario_action(&text);
    let out = replay(&["--check", "--action", &action], file);
    assert_eq!(out.status.code(), Some(0), "{}", file.display());
    let s = stdout(&out);
    assert_eq!(s.lines().count(), 1, "one summary line: {s}");
    assert!(s.contains(": ok: "), "{s}");
    let actions = text.lines().filter(|l| is_action(l)).count();
    assert!(
        s.contains(&format!("{actions} actions match")),
        "{s} (trace has {actions} action lines)"
    );
}

/// A scratch copy of a reference trace with `edit` applied to its lines.
struct Variant {
    _dir: tempfile::TempDir,
    path: PathBuf,
}

fn variant(name: &str, edit: impl FnOnce(&mut Vec<String>)) -> Variant {
    let text = std::fs::read_to_string(data_dir().join(name)).unwrap();
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    edit(&mut lines);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(name);
    std::fs::write(&path, lines.join("\n") + "\n").unwrap();
    Variant { _dir: dir, path }
}

/// Index (0-based) of the first line containing `needle`.
fn find(lines: &[String], needle: &str) -> usize {
    lines
        .iter()
        .position(|l| l.contains(needle))
        .unwrap_or_else(|| panic!("no line with {needle:?}"))
}

/// Whether a line is an `action` data line (not a header mentioning actions).
fn is_action(line: &str) -> bool {
    !line.starts_with('#') && line.split(' ').nth(1) == Some("action")
}

fn time_of(line: &str) -> u64 {
    line.split(' ').next().unwrap().parse().unwrap()
}

/// Move the action line by `delta_ns`, keeping the file's times in order (the
/// `end` line moves with it if the action would pass it).
fn move_action(lines: &mut Vec<String>, delta_ns: i64) {
    let i = lines.iter().position(|l| is_action(l)).unwrap();
    let old = lines.remove(i);
    let t = (time_of(&old) as i64 + delta_ns) as u64;
    let rest = old.split_once(' ').unwrap().1.to_string();
    let last = lines.len() - 1;
    if time_of(&lines[last]) < t {
        let end = lines[last].split_once(' ').unwrap().1.to_string();
        lines[last] = format!("{t} {end}");
    }
    let at = (4..lines.len())
        .find(|&k| time_of(&lines[k]) > t || k == lines.len() - 1)
        .unwrap();
    lines.insert(at, format!("{t} {rest}"));
}

#[test]
fn reference_traces_pass_check() {
    let traces = traces_in(&data_dir());
    assert_eq!(traces.len(), 4, "{traces:?}");
    for t in &traces {
        check_passes(t);
    }
}

#[test]
fn shared_traces_pass_check_too() {
    let shared = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/traces");
    if !shared.is_dir() {
        eprintln!("SKIP: {} does not exist", shared.display());
        return;
    }
    let traces = traces_in(&shared);
    assert!(!traces.is_empty(), "no traces in {}", shared.display());
    for t in &traces {
        check_passes(t);
    }
}

#[test]
fn replay_without_check_reproduces_every_access_line() {
    for file in traces_in(&data_dir()) {
        let text = std::fs::read_to_string(&file).unwrap();
        let action = scenario_action(&text);
        let out = replay(&["--action", &action], &file);
        assert_eq!(out.status.code(), Some(0));
        let got = stdout(&out);
        let not_action = |l: &&str| !is_action(l);
        let want: Vec<&str> = text.lines().filter(not_action).collect();
        let have: Vec<&str> = got.lines().filter(not_action).collect();
        assert_eq!(have, want, "{}", file.display());
        // One action line per recorded action, at the model's own time.
        let want_actions: Vec<&str> = text.lines().filter(|l| is_action(l)).collect();
        let have_actions: Vec<&str> = got.lines().filter(|l| is_action(l)).collect();
        assert_eq!(have_actions.len(), want_actions.len());
        for (h, w) in have_actions.iter().zip(&want_actions) {
            assert_eq!(h.split_once(' ').unwrap().1, w.split_once(' ').unwrap().1);
            let (m, t) = (time_of(h), time_of(w));
            assert!(m <= t && t - m <= 5_000_000, "model {m} trace {t}");
        }
    }
}

#[test]
fn output_lines_are_in_time_order() {
    let file = data_dir().join("04-heartbeat-param-shutdown.trace");
    let out = replay(&["--action", "shutdown"], &file);
    let s = stdout(&out);
    let times: Vec<u64> = s.lines().skip(4).map(time_of).collect();
    assert!(times.windows(2).all(|w| w[0] <= w[1]), "{s}");
    // The action lands between the last kick and the end line.
    let lines: Vec<&str> = s.lines().collect();
    let i = lines.iter().position(|l| is_action(l)).unwrap();
    assert_eq!(lines[i], "15503997800 action shutdown");
    assert!(lines[i + 1].ends_with("end guest-shutdown"));
}

#[test]
fn changed_read_value_fails_naming_the_line() {
    let v = variant("01-basic-poweroff.trace", |l| {
        let i = find(l, "cfg r 0x00 4 0x25ab8086");
        l[i] = l[i].replace("0x25ab8086", "0x25ab8087");
    });
    let line_no = 1 + find(
        &std::fs::read_to_string(&v.path)
            .unwrap()
            .lines()
            .map(str::to_string)
            .collect::<Vec<_>>(),
        "0x25ab8087",
    );
    let out = replay(&["--check", "--action", "poweroff"], &v.path);
    assert_eq!(out.status.code(), Some(1));
    let s = stdout(&out);
    assert_eq!(s.lines().count(), 1, "{s}");
    assert!(
        s.contains(&format!(
            ":{line_no}: read value differs: cfg r 0x00 4: expected 0x25ab8087, got 0x25ab8086"
        )),
        "{s}"
    );
}

#[test]
fn several_mismatches_are_all_listed() {
    let v = variant("03-magic-close.trace", |l| {
        for needle in ["cfg r 0x0a 2 0x0880", "cfg r 0x0e 1 0x00"] {
            let i = find(l, needle);
            l[i] = l[i].replace(" 0x0880", " 0x0881").replace(" 0x00", " 0x01");
        }
    });
    let out = replay(&["--check", "--action", "poweroff"], &v.path);
    assert_eq!(out.status.code(), Some(1));
    let s = stdout(&out);
    assert_eq!(s.lines().count(), 2, "{s}");
    assert!(s.contains(":6: read value differs"), "{s}");
    assert!(s.contains(":7: read value differs"), "{s}");
}

#[test]
fn action_moved_10ms_later_or_earlier_fails() {
    for (name, action) in [
        ("01-basic-poweroff.trace", "poweroff"),
        ("04-heartbeat-param-shutdown.trace", "shutdown"),
    ] {
        for delta in [10_000_000i64, -10_000_000] {
            let v = variant(name, |l| move_action(l, delta));
            let out = replay(&["--check", "--action", action], &v.path);
            assert_eq!(out.status.code(), Some(1), "{name} {delta}");
            let s = stdout(&out);
            assert!(
                s.contains(&format!("action {action} outside the window")),
                "{name} {delta}: {s}"
            );
        }
    }
}

#[test]
fn action_moved_within_the_window_still_passes() {
    // The model fires 704.2 µs before the recorded line; a line 4 ms later still
    // has the model inside its window (4.7 ms early).
    let v = variant("04-heartbeat-param-shutdown.trace", |l| {
        move_action(l, 4_000_000)
    });
    let out = replay(&["--check", "--action", "shutdown"], &v.path);
    assert_eq!(out.status.code(), Some(0));
}

#[test]
fn wrong_action_fails_as_another_name() {
    let file = data_dir().join("01-basic-poweroff.trace");
    let out = replay(&["--check", "--action", "reset"], &file);
    assert_eq!(out.status.code(), Some(1));
    let s = stdout(&out);
    assert!(
        s.contains(":189: action of another name: expected poweroff, the model fired reset"),
        "{s}"
    );
    // The default action is reset too.
    let out = replay(&["--check"], &file);
    assert_eq!(out.status.code(), Some(1));
}

#[test]
fn missing_action_line_fails_as_an_extra_expiry() {
    for (name, action) in [
        ("01-basic-poweroff.trace", "poweroff"),
        ("04-heartbeat-param-shutdown.trace", "shutdown"),
    ] {
        let v = variant(name, |l| {
            let i = l.iter().position(|l| is_action(l)).unwrap();
            l.remove(i);
        });
        let out = replay(&["--check", "--action", action], &v.path);
        assert_eq!(out.status.code(), Some(1), "{name}");
        let s = stdout(&out);
        assert!(s.contains(&format!("extra action {action}")), "{s}");
    }
}

#[test]
fn an_action_line_the_model_never_reaches_is_missing() {
    // 03 stops the watchdog; an added action line cannot be matched.
    let v = variant("03-magic-close.trace", |l| {
        let end = l.len() - 1;
        let t = time_of(&l[end]);
        l.insert(end, format!("{t} action poweroff"));
    });
    let out = replay(&["--check", "--action", "poweroff"], &v.path);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stdout(&out).contains(":194: action poweroff at 21380073000 ns missing"),
        "{}",
        stdout(&out)
    );
}

#[test]
fn malformed_variants_exit_2_with_the_line_number() {
    type Edit = fn(&mut Vec<String>);
    let cases: &[(&str, Edit, &str)] = &[
        (
            "bad header",
            |l| l[0] = "# i6300esb trace v9".into(),
            ":1: bad header",
        ),
        (
            "unknown op",
            |l| l[10] = l[10].replace(" cfg ", " pio "),
            ":11: unknown op \"pio\"",
        ),
        (
            "bad hex",
            |l| l[4] = l[4].replace("0x8086", "0x80z6"),
            ":5: bad hex value",
        ),
        (
            "value width",
            |l| l[4] = l[4].replace("0x8086", "0x086"),
            ":5: value \"0x086\" must have exactly 4 hex digits",
        ),
        (
            "size",
            |l| l[4] = l[4].replace(" 2 ", " 3 "),
            ":5: size \"3\" is not 1, 2 or 4",
        ),
        (
            "time decreasing",
            |l| l[6] = l[6].replacen("17000", "1", 1),
            ":7: time 1 is before the previous line's 9000",
        ),
        (
            "time not an integer",
            |l| l[5] = l[5].replacen("9000", "9.5", 1),
            ":6: time \"9.5\" is not a decimal integer",
        ),
        (
            "missing end",
            |l| {
                l.pop();
            },
            ": missing end line",
        ),
        (
            "line after end",
            |l| {
                let last = l.last().unwrap().clone();
                l.push(last);
            },
            ": line after the end line",
        ),
    ];
    for (what, edit, expect) in cases {
        let v = variant("01-basic-poweroff.trace", *edit);
        let out = replay(&["--check", "--action", "poweroff"], &v.path);
        assert_eq!(out.status.code(), Some(2), "{what}");
        let e = stderr(&out);
        let first = e.lines().next().unwrap_or("");
        assert!(
            first.starts_with(&v.path.display().to_string()),
            "{what}: {e}"
        );
        assert!(first.contains(expect), "{what}: {e}");
        assert!(!e.contains("panicked"), "{what}: {e}");
        // Without --check the same file is refused the same way.
        let out = replay(&["--action", "poweroff"], &v.path);
        assert_eq!(out.status.code(), Some(2), "{what}");
        assert!(stdout(&out).is_empty());
    }
    // Missing end / line after end: the line numbers are past the last line.
    let v = variant("01-basic-poweroff.trace", |l| {
        l.pop();
    });
    let out = replay(&["--check", "--action", "poweroff"], &v.path);
    assert!(
        stderr(&out).contains(":190: missing end line"),
        "{}",
        stderr(&out)
    );
    let v = variant("01-basic-poweroff.trace", |l| {
        let last = l.last().unwrap().clone();
        l.push(last);
    });
    let out = replay(&["--check", "--action", "poweroff"], &v.path);
    assert!(
        stderr(&out).contains(":191: line after the end line"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn unknown_action_and_unreadable_file_exit_2() {
    let file = data_dir().join("01-basic-poweroff.trace");
    let out = replay(&["--check", "--action", "explode"], &file);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("unknown action \"explode\""),
        "{}",
        stderr(&out)
    );
    let out = replay(&["--check"], Path::new("/nonexistent/x.trace"));
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("/nonexistent/x.trace: cannot read"));
    // Binary junk: a clear error, not a panic.
    let dir = tempfile::tempdir().unwrap();
    let junk = dir.path().join("junk.trace");
    std::fs::write(&junk, [0xffu8, 0xfe, 0x00, b'\n', 0x80]).unwrap();
    let out = replay(&["--check"], &junk);
    assert_eq!(out.status.code(), Some(2));
    assert!(!stderr(&out).contains("panicked"));
}
