//! The seed corpus: written from the recipes in `vmpulse_fuzz::seeds`, and
//! replayed through the fuzz target's own code on every `cargo test`, without
//! libFuzzer.
//!
//! Regenerate after changing a recipe: `VMPULSE_WRITE_SEEDS=1 cargo test --test seeds`.

use std::fs;
use std::path::PathBuf;

use vmpulse_fuzz::{decode, encode, run, seeds};

fn seed_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("corpus/seeds")
}

#[test]
fn seed_files_match_their_recipes() {
    let dir = seed_dir();
    let write = std::env::var_os("VMPULSE_WRITE_SEEDS").is_some();
    if write {
        fs::create_dir_all(&dir).unwrap();
    }
    for (name, input) in seeds::all() {
        let bytes = encode(&input);
        assert_eq!(decode(&bytes), input, "{name}: encoding round trip");
        let path = dir.join(&name);
        if write {
            fs::write(&path, &bytes).unwrap();
        } else {
            let on_disk = fs::read(&path).unwrap_or_else(|e| {
                panic!("{}: {e} (run with VMPULSE_WRITE_SEEDS=1)", path.display())
            });
            assert_eq!(
                on_disk, bytes,
                "{name} is stale (run with VMPULSE_WRITE_SEEDS=1)"
            );
        }
    }
}

#[test]
fn every_seed_file_replays_cleanly() {
    let mut files: Vec<_> = fs::read_dir(seed_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    assert!(files.len() >= 30, "only {} seed files", files.len());
    let mut fired = 0;
    for path in &files {
        let bytes = fs::read(path).unwrap();
        let h = run(&decode(&bytes));
        fired += h.fired.len();
    }
    // The corpus exercises the firing path, not just the quiet one.
    assert!(fired >= 25, "seeds fired only {fired} times");
}

#[test]
fn seeds_reach_the_behaviour_they_describe() {
    let all = seeds::all();
    let get = |suffix: &str| {
        let (_, input) = all
            .iter()
            .find(|(n, _)| n.ends_with(suffix))
            .unwrap_or_else(|| panic!("no seed {suffix}"));
        run(input)
    };
    // Linux: PV = 512 units per stage at 1 kHz, fires once after 2 x 503.3 ms.
    let h = get("linux-arm-and-fire");
    assert_eq!(h.fired.len(), 1);
    assert!(
        !h.dev.watchdog().timeout_flag(),
        "the second probe cleared it"
    );
    // Locked while disabled: never fires.
    assert!(get("lock-while-disabled").fired.is_empty());
    // Output disabled, free-running: silent until the output is enabled.
    assert_eq!(get("output-disabled-free-run").fired.len(), 1);
    assert_eq!(get("zero-length-free-run-loop").fired.len(), 1);
    assert_eq!(get("free-run-fires-once").fired.len(), 1);
    // Pings then a proper stop: never fires.
    assert!(get("linux-pings-then-stop").fired.is_empty());
    // busybox killed: fires 2 x 4 s (x 1.00663) after the last ping.
    assert_eq!(get("busybox-killed").fired.len(), 1);
    for action in i6300esb::WatchdogAction::ALL {
        let h = get(&format!("action-{}", action.name()));
        assert_eq!(h.fired.len(), 1);
        assert_eq!(h.fired[0].action, action);
        assert_eq!(
            h.fired[0].time_ns - vmpulse_fuzz::driver::START_NS,
            7 * 983_040
        );
    }
}
