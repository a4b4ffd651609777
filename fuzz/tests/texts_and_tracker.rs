//! The tracker, trace and manifest targets' code on deterministic inputs, so
//! `cargo test` exercises them (and their oracles) without libFuzzer.

use std::fs;
use std::path::{Path, PathBuf};

use vmpulse_fuzz::texts::{run_manifest, run_trace};
use vmpulse_fuzz::tracker::run_tracker;

/// A small deterministic generator (xorshift), enough to vary inputs.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u8 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 24) as u8
    }
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn files(dir: &Path, ext: &str) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == ext))
        .collect();
    out.sort();
    assert!(!out.is_empty(), "no .{ext} files in {}", dir.display());
    out
}

#[test]
fn tracker_agrees_with_the_model_on_random_schedules() {
    let mut rng = Rng(0x5eed_1234_abcd_0001);
    for len in 0..3000usize {
        let data: Vec<u8> = (0..(len % 200)).map(|_| rng.next()).collect();
        run_tracker(&data);
    }
}

#[test]
fn tracker_schedule_with_threshold_transitions() {
    // Readiness, D = 37 ms, P = 74 ms, T = 37 ms, ST = 2, FT = 2, then attempts
    // whose outcome is chosen by op % 3 (op % 8 >= 3): 3 → success, 4 → failure.
    let mut data = vec![1, 1, 2, 1, 2, 2];
    for op in [3u8, 3, 3, 4, 4, 4, 3, 3] {
        data.extend([op, 0]);
    }
    run_tracker(&data);
}

#[test]
fn trace_target_accepts_the_reference_traces_and_their_mutations() {
    for path in files(&repo().join("tests/data/traces"), "trace") {
        let bytes = fs::read(&path).unwrap();
        run_trace(&bytes);
        let mut rng = Rng(bytes.len() as u64 | 1);
        for _ in 0..50 {
            let mut m = bytes.clone();
            let i = usize::from(rng.next()) * m.len() / 256;
            m[i] = rng.next();
            run_trace(&m);
            m.truncate(i);
            run_trace(&m);
        }
    }
}

#[test]
fn manifest_target_accepts_the_examples_and_their_mutations() {
    let mut paths = files(&repo().join("examples"), "yaml");
    paths.extend(files(&repo().join("examples/seed"), "yaml"));
    for path in paths {
        let bytes = fs::read(&path).unwrap();
        run_manifest(&bytes);
        let mut rng = Rng(bytes.len() as u64 | 1);
        for _ in 0..30 {
            let mut m = bytes.clone();
            let i = usize::from(rng.next()) * m.len() / 256;
            m[i] = rng.next();
            run_manifest(&m);
            m.truncate(i);
            run_manifest(&m);
        }
    }
}
