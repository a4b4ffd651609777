//! The i6300esb guest-access path: what one VM exit costs inside the device model.
//!
//! - `reload_sequence`: the Linux ping, unlock + kick (three 16-bit MMIO writes);
//!   criterion reports it per write (`Throughput::Elements(3)`).
//! - `config_dword_read`: a 32-bit config read of the identity dword.
//! - `poll_nothing_due`: `poll` with the deadline far away (the timer loop's
//!   common case).
//!
//! Each runs with the virtual `ManualClock` (model cost alone) and with the
//! `MonotonicClock` + `EventCounters` pair a VMM uses (model + clock reads).
//! Run: `cargo bench --bench device -- --warm-up-time 1 --measurement-time 3`.

use std::hint::black_box;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use i6300esb::adapters::timer::MonotonicClock;
use i6300esb::events::WatchdogEvents;
use i6300esb::{Clock, EventCounters, Expiry, I6300Esb, ManualClock, WatchdogAction};

/// A device as Linux leaves it: BAR0 mapped, running, with its longest heartbeat
/// (2046 s) so nothing comes due however long criterion measures.
fn armed<C: Clock, E: WatchdogEvents>(clock: C, events: E) -> I6300Esb<C, E> {
    let mut d = I6300Esb::with_events(WatchdogAction::Reset, clock, events);
    d.config_write(0x10, &0xfebf_0000u32.to_le_bytes());
    d.config_write(0x04, &0x0103u16.to_le_bytes());
    d.config_write(0x60, &0x0003u16.to_le_bytes());
    for reg in [0x00u64, 0x04] {
        d.bar0_write(0x0c, &0x80u16.to_le_bytes());
        d.bar0_write(0x0c, &0x86u16.to_le_bytes());
        d.bar0_write(reg, &(2046u32 << 9).to_le_bytes());
    }
    d.config_write(0x68, &[0x02]);
    assert!(d.next_deadline().is_some());
    d
}

fn bench_device<C: Clock, E: WatchdogEvents>(
    c: &mut Criterion,
    name: &str,
    mut dev: I6300Esb<C, E>,
) {
    let mut g = c.benchmark_group(format!("i6300esb/{name}"));

    g.throughput(Throughput::Elements(3));
    g.bench_function("reload_sequence", |b| {
        b.iter(|| {
            dev.bar0_write(black_box(0x0c), black_box(&0x0080u16.to_le_bytes()));
            dev.bar0_write(black_box(0x0c), black_box(&0x0086u16.to_le_bytes()));
            dev.bar0_write(black_box(0x0c), black_box(&0x0100u16.to_le_bytes()));
        })
    });

    g.throughput(Throughput::Elements(1));
    g.bench_function("config_dword_read", |b| {
        let mut buf = [0u8; 4];
        b.iter(|| {
            dev.config_read(black_box(0x00), black_box(&mut buf));
            black_box(buf);
        })
    });

    g.bench_function("poll_nothing_due", |b| {
        let mut sink: Vec<Expiry> = Vec::new();
        b.iter(|| black_box(dev.poll(&mut sink)))
    });
    g.finish();
    // Nothing may have fired: the stages are 1030 s long.
    assert!(!dev.watchdog().timeout_flag());
}

fn benches(c: &mut Criterion) {
    bench_device(
        c,
        "manual_clock",
        armed(ManualClock::new(1_000), i6300esb::NoEvents),
    );
    bench_device(
        c,
        "monotonic_clock",
        armed(MonotonicClock::new(), Arc::new(EventCounters::default())),
    );
}

criterion_group!(device, benches);
criterion_main!(device);
