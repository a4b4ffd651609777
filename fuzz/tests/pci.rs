//! The `pci` target's code without libFuzzer: its seed corpus (written from the
//! recipes in `vmpulse_fuzz::pci`), what each seed reaches, and deterministic
//! pseudo-random operation sequences through the same property checks.
//!
//! Regenerate the seeds after changing a recipe:
//! `VMPULSE_WRITE_SEEDS=1 cargo test --test pci`.

use std::fs;
use std::path::PathBuf;

use vmpulse_fuzz::pci::{decode_ops, encode_ops, pci_seeds, run_pci, PciOp};

fn seed_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("corpus/pci-seeds")
}

#[test]
fn seed_files_match_their_recipes_and_replay() {
    let dir = seed_dir();
    let write = std::env::var_os("VMPULSE_WRITE_SEEDS").is_some();
    if write {
        fs::create_dir_all(&dir).unwrap();
    }
    for (name, ops) in pci_seeds() {
        let bytes = encode_ops(&ops);
        assert_eq!(decode_ops(&bytes), ops, "{name}: encoding round trip");
        let path = dir.join(name);
        if write {
            fs::write(&path, &bytes).unwrap();
        }
        let on_disk = fs::read(&path)
            .unwrap_or_else(|e| panic!("{}: {e} (run with VMPULSE_WRITE_SEEDS=1)", path.display()));
        assert_eq!(on_disk, bytes, "{name} is stale (VMPULSE_WRITE_SEEDS=1)");
        run_pci(&on_disk);
    }
}

#[test]
fn seeds_reach_what_they_are_named_for() {
    let all = pci_seeds();
    let get = |name: &str| {
        let (_, ops) = all.iter().find(|(n, _)| *n == name).unwrap();
        run_pci(&encode_ops(ops))
    };
    let c = get("pci-01-enumerate");
    assert_eq!((c.bridge_reads, c.esb_reads, c.all_ones_reads), (1, 1, 30));
    let c = get("pci-02-every-width");
    assert!(c.esb_reads >= 3, "{c:?}");
    // Ten of the 32 (port, width) reads are unaligned in the data window or run
    // past 0xCFF.
    assert_eq!(c.split_reads, 10, "{c:?}");
    let c = get("pci-03-bar-program-and-move");
    assert_eq!(c.routes, 2, "{c:?}");
    assert_eq!(c.mmio_hits, 2, "{c:?}");
    let c = get("pci-04-latch-reserved-bits-and-reset-control");
    assert_eq!(c.all_ones_reads, 2, "{c:?}");
    let c = get("pci-05-reset-drops-the-route");
    assert_eq!(c.routes, 2, "{c:?}");
    assert_eq!(c.mmio_hits, 1, "{c:?}");
    let c = get("pci-06-unaligned-data-and-bar0");
    assert_eq!(c.split_reads, 4, "{c:?}");
    assert_eq!(c.routes, 1, "{c:?}");
    assert_eq!(c.mmio_hits, 3, "{c:?}");
}

#[test]
fn every_byte_string_decodes_and_round_trips() {
    let mut x = 0x1234_5678_9abc_def0u64;
    for _ in 0..10_000 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let b = x.to_le_bytes();
        let op = PciOp::decode(b);
        assert_eq!(PciOp::decode(op.encode()), op, "{b:02x?}");
    }
}

#[test]
fn pseudo_random_sequences_keep_every_property() {
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let mut total = vmpulse_fuzz::pci::PciCoverage::default();
    for _ in 0..500 {
        let len = 8 * (1 + next() % 64) as usize;
        let data: Vec<u8> = (0..len).map(|_| next() as u8).collect();
        let c = run_pci(&data);
        total.esb_reads += c.esb_reads;
        total.bridge_reads += c.bridge_reads;
        total.all_ones_reads += c.all_ones_reads;
        total.routes += c.routes;
        total.mmio_hits += c.mmio_hits;
        total.split_reads += c.split_reads;
    }
    // The generator reaches every kind of outcome.
    assert!(total.esb_reads > 0 && total.bridge_reads > 0, "{total:?}");
    assert!(total.all_ones_reads > 0 && total.routes > 0, "{total:?}");
    assert!(total.mmio_hits > 0 && total.split_reads > 0, "{total:?}");
}
