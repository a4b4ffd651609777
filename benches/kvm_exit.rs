//! The cost of a watchdog kick through a real KVM MMIO exit, against the device's
//! own cost per access, measured in one run.
//!
//! - KVM: a guest (`kick_loop_guest`) arms the watchdog, writes a start mark to the
//!   paravirtual mark port, does N Linux pings (unlock 0x80, unlock 0x86, reload
//!   0x0100: three 16-bit MMIO writes to BAR0), writes an end mark and powers off.
//!   Wall time between the marks over the MMIO exits counted is the round trip per
//!   exit: guest write → KVM exit → vCPU thread → vm-device MMIO bus → device
//!   (under its mutex, deadline listener included) → back into the guest.
//! - Device: the same three writes, `bar0_write` called directly on an armed
//!   device with the same clock and counters.
//! - Host path: the same writes through the VMM's own part of an exit without KVM:
//!   the VMM's vm-device MMIO bus (lock, lookup), the BAR0 adapter, the device
//!   mutex, `bar0_write`, and the deadline listener of the `WatchdogTimer` that
//!   follows the device (a comparison; an eventfd write only when the deadline
//!   moves earlier than the armed timer, which a kick never does). Then the same
//!   for 16-bit reads of the reload register (what a driver polls), and the
//!   eventfd writes both loops made are counted: none is expected.
//!
//! Run with `cargo bench --bench kvm_exit`. Prints exits per kick, µs per exit,
//! device and host-path ns per access and the ratios to the exit round trip.
//! Skips (with a message) without /dev/kvm. Without `--bench` (that is, under
//! `cargo test --benches`) it runs a smoke size: one run of each, 50× fewer
//! iterations; its numbers are not measurements.

use std::hint::black_box;
use std::os::fd::RawFd;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use std::sync::RwLock;

use i6300esb::adapters::timer::{MonotonicClock, WatchdogTimer};
use i6300esb::{EventCounters, Expiry, I6300Esb, WatchdogAction};
use vm_device::device_manager::IoManager;
use vmpulse::vmm::bus::Buses;
use vmpulse::vmm::guest::{kick_loop_guest, KICK_LOOP_SETUP_WRITES, MAX_TIMEOUT_SECS};
use vmpulse::vmm::machine::{GuestOptions, Machine, MachineConfig, MachineEvent, SharedEsb};
use vmpulse::vmm::pci::{devfn, EsbFunction, PciRoot};

/// Run sizes: kicks per KVM run (3 exits each) and runs; kick sequences per
/// device or host-path run and runs.
struct Sizes {
    kicks: u32,
    kvm_runs: usize,
    device_kicks: u32,
    device_runs: usize,
}

const FULL: Sizes = Sizes {
    kicks: 20_000,
    kvm_runs: 3,
    device_kicks: 1_000_000,
    device_runs: 5,
};

const SMOKE: Sizes = Sizes {
    kicks: 400,
    kvm_runs: 1,
    device_kicks: 20_000,
    device_runs: 1,
};

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn wait_readable(fd: RawFd, ms: i32) {
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd for the duration of the call.
    unsafe { libc::poll(&mut p, 1, ms) };
}

/// One KVM run: (µs per exit, exits per kick).
fn kvm_run(sz: &Sizes) -> (f64, f64) {
    let esb: SharedEsb = Arc::new(Mutex::new(I6300Esb::with_events(
        WatchdogAction::Reset,
        MonotonicClock::new(),
        Arc::new(EventCounters::default()),
    )));
    // The timer adapter follows the device as in `vmpulse run` (its listener is on
    // the exit path); nobody runs its loop here, and no loop is needed for this.
    let _timer = WatchdogTimer::new(esb.clone(), |_: Expiry| {}).expect("timer");
    let cfg = MachineConfig {
        memory_bytes: 2 << 20,
        guest: GuestOptions {
            timeout_secs: 30,
            kick_every: Duration::from_secs(1),
            hang_after: None,
            ignore_shutdown: false,
            stage_timeout: None,
            rearm_after_nmi: false,
        },
        agent_serial: None,
    };
    let image = kick_loop_guest(sz.kicks).expect("assemble the kick loop guest");
    let mut m = Machine::with_image(cfg, esb, image).expect("create the VM");
    m.start().expect("start the VM");
    let give_up = Instant::now() + Duration::from_secs(120);
    loop {
        assert!(
            Instant::now() < give_up,
            "the kick loop guest did not finish"
        );
        wait_readable(m.event_fd(), 100);
        let events = m.drain_events();
        if let Some(MachineEvent::Error(e)) =
            events.iter().find(|e| matches!(e, MachineEvent::Error(_)))
        {
            panic!("vCPU error: {e}");
        }
        if events.contains(&MachineEvent::GuestPoweroff) {
            break;
        }
    }
    let marks = m.marks();
    assert_eq!(marks.len(), 2, "start and end marks");
    let elapsed = marks[1].1 - marks[0].1;
    let exits = m.exits().mmio.load(std::sync::atomic::Ordering::Relaxed) - KICK_LOOP_SETUP_WRITES;
    m.stop();
    (
        elapsed.as_secs_f64() * 1e6 / exits as f64,
        exits as f64 / f64::from(sz.kicks),
    )
}

/// One device run: ns per access.
fn device_run(sz: &Sizes) -> f64 {
    let mut dev = I6300Esb::with_events(
        WatchdogAction::Reset,
        MonotonicClock::new(),
        Arc::new(EventCounters::default()),
    );
    let preload = (MAX_TIMEOUT_SECS << 9).to_le_bytes();
    dev.config_write(0x60, &0x0003u16.to_le_bytes());
    for reg in [0x00u64, 0x04] {
        dev.bar0_write(0x0c, &0x80u16.to_le_bytes());
        dev.bar0_write(0x0c, &0x86u16.to_le_bytes());
        dev.bar0_write(reg, &preload);
    }
    dev.config_write(0x68, &[0x02]);
    let (u1, u2, kick) = (
        0x80u16.to_le_bytes(),
        0x86u16.to_le_bytes(),
        0x0100u16.to_le_bytes(),
    );
    let start = Instant::now();
    for _ in 0..sz.device_kicks {
        dev.bar0_write(black_box(0x0c), black_box(&u1));
        dev.bar0_write(black_box(0x0c), black_box(&u2));
        dev.bar0_write(black_box(0x0c), black_box(&kick));
    }
    let ns = start.elapsed().as_nanos() as f64 / (3.0 * f64::from(sz.device_kicks));
    assert_eq!(
        EventCounters::get(&dev.events().kick),
        u64::from(sz.device_kicks),
        "every sequence was a kick"
    );
    ns
}

/// One host-path run: (ns per write access, ns per read access, eventfd writes)
/// through the vm-device bus, adapter, mutex, device and deadline listener.
fn host_path_run(sz: &Sizes) -> (f64, f64, u64) {
    let esb: SharedEsb = Arc::new(Mutex::new(I6300Esb::with_events(
        WatchdogAction::Reset,
        MonotonicClock::new(),
        Arc::new(EventCounters::default()),
    )));
    let mut timer = WatchdogTimer::new(esb.clone(), |_: Expiry| {}).expect("timer");
    let rearm = timer.rearm_handle().expect("eventfd");
    let mmio = Arc::new(RwLock::new(IoManager::new()));
    let mut root = PciRoot::new(mmio.clone());
    let esb_devfn = devfn(4, 0);
    root.add(esb_devfn, Box::new(EsbFunction::new(esb.clone())));
    let bar0 = 0xfebf_0000u64;
    root.config_write(esb_devfn, 0x10, &(bar0 as u32).to_le_bytes());
    root.config_write(esb_devfn, 0x04, &0x0002u16.to_le_bytes());
    root.config_write(esb_devfn, 0x60, &0x0003u16.to_le_bytes());
    assert_eq!(root.route(esb_devfn), Some((bar0, 16)), "BAR0 routed");
    let buses = Buses::new(IoManager::new(), mmio);
    let preload = (MAX_TIMEOUT_SECS << 9).to_le_bytes();
    for reg in [0x00u64, 0x04] {
        buses.mmio_write(bar0 + 0x0c, &0x80u16.to_le_bytes());
        buses.mmio_write(bar0 + 0x0c, &0x86u16.to_le_bytes());
        buses.mmio_write(bar0 + reg, &preload);
    }
    root.config_write(esb_devfn, 0x68, &[0x02]);
    // The event loop's turn: the timer armed at the deadline, the eventfd drained.
    timer.service().expect("arm the timerfd");
    let _ = rearm.read();

    let (u1, u2, kick) = (
        0x80u16.to_le_bytes(),
        0x86u16.to_le_bytes(),
        0x0100u16.to_le_bytes(),
    );
    let start = Instant::now();
    for _ in 0..sz.device_kicks {
        buses.mmio_write(black_box(bar0 + 0x0c), black_box(&u1));
        buses.mmio_write(black_box(bar0 + 0x0c), black_box(&u2));
        buses.mmio_write(black_box(bar0 + 0x0c), black_box(&kick));
    }
    let write_ns = start.elapsed().as_nanos() as f64 / (3.0 * f64::from(sz.device_kicks));
    let mut b = [0u8; 2];
    let start = Instant::now();
    for _ in 0..3 * sz.device_kicks {
        buses.mmio_read(black_box(bar0 + 0x0c), black_box(&mut b));
    }
    let read_ns = start.elapsed().as_nanos() as f64 / (3.0 * f64::from(sz.device_kicks));
    // EAGAIN (nothing written) reads as 0 signals.
    let signals = rearm.read().unwrap_or(0);
    assert_eq!(
        signals, 0,
        "kicks and reads never signal the timer's eventfd"
    );
    let d = esb.lock().unwrap();
    assert_eq!(
        EventCounters::get(&d.events().kick),
        u64::from(sz.device_kicks)
    );
    assert_eq!(buses.unclaimed(), (0, 0));
    (write_ns, read_ns, signals)
}

fn main() {
    if !Path::new("/dev/kvm").exists() {
        eprintln!("SKIP: /dev/kvm is absent; kvm_exit measures nothing here");
        return;
    }
    let sz = if std::env::args().any(|a| a == "--bench") {
        &FULL
    } else {
        &SMOKE
    };
    let mut exit_us = Vec::new();
    let mut per_kick = Vec::new();
    for _ in 0..sz.kvm_runs {
        let (us, epk) = kvm_run(sz);
        exit_us.push(us);
        per_kick.push(epk);
    }
    let device_ns: Vec<f64> = (0..sz.device_runs).map(|_| device_run(sz)).collect();
    let host: Vec<(f64, f64, u64)> = (0..sz.device_runs).map(|_| host_path_run(sz)).collect();
    let signals: u64 = host.iter().map(|h| h.2).sum();
    let host_ns = median(host.iter().map(|h| h.0).collect());
    let host_read_ns = median(host.iter().map(|h| h.1).collect());

    let exit_us = median(exit_us);
    let per_kick = median(per_kick);
    let device_ns = median(device_ns);
    let ratio = exit_us * 1000.0 / device_ns;
    println!(
        "kvm_exit: {} Linux kicks per KVM run, {} runs; {} kicks per device run, {} runs (medians)",
        sz.kicks, sz.kvm_runs, sz.device_kicks, sz.device_runs
    );
    println!("kvm_exit: exits per kick        {per_kick:.2}");
    println!("kvm_exit: MMIO exit round trip  {exit_us:.2} µs per exit (device included)");
    println!("kvm_exit: device bar0_write     {device_ns:.1} ns per access");
    println!("kvm_exit: VMM host path, kicks  {host_ns:.1} ns per access (vm-device bus + mutex + device + deadline listener)");
    println!("kvm_exit: VMM host path, reads  {host_read_ns:.1} ns per access (16-bit reads of the reload register)");
    println!(
        "kvm_exit: eventfd writes        {signals} in {} host-path accesses",
        u64::from(6 * sz.device_kicks) * sz.device_runs as u64
    );
    println!(
        "kvm_exit: exit / device         {ratio:.0}x (the device is {:.2} % of an exit)",
        100.0 / ratio
    );
    println!(
        "kvm_exit: host path / exit      {:.2} % of an exit for kicks, {:.2} % for reads",
        host_ns / (exit_us * 1000.0) * 100.0,
        host_read_ns / (exit_us * 1000.0) * 100.0
    );
    println!(
        "kvm_exit: one kick              {:.1} µs through KVM, {:.3} µs in the device",
        exit_us * per_kick,
        device_ns * per_kick / 1000.0
    );
}
