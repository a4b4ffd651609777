//! The cost of a watchdog kick through a real KVM MMIO exit, against the device's
//! own cost per access, measured in one run.
//!
//! - KVM: a guest (`kick_loop_guest`) arms the watchdog, writes a start mark to the
//!   paravirtual mark port, does N Linux pings (unlock 0x80, unlock 0x86, reload
//!   0x0100: three 16-bit MMIO writes to BAR0), writes an end mark and powers off.
//!   Wall time between the marks over the MMIO exits counted is the round trip per
//!   exit: guest write → KVM exit → vCPU thread → MMIO bus → device (under its
//!   mutex) → re-arm eventfd → back into the guest.
//! - Device: the same three writes, `bar0_write` called directly on an armed
//!   device with the same clock and counters.
//! - Host path: the same writes through the VMM's own part of an exit without KVM:
//!   MMIO bus lookup, the BAR0 adapter, the device mutex, `bar0_write` and the
//!   re-arm eventfd write.
//!
//! Run with `cargo bench --bench kvm_exit`. Prints exits per kick, µs per exit,
//! device ns per access and the ratio. Skips (with a message) without /dev/kvm.

use std::hint::black_box;
use std::os::fd::RawFd;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use i6300esb::adapters::timer::MonotonicClock;
use i6300esb::{EventCounters, I6300Esb, WatchdogAction};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};
use vmpulse::vmm::bus::Bus;
use vmpulse::vmm::guest::{kick_loop_guest, KICK_LOOP_SETUP_WRITES, MAX_TIMEOUT_SECS};
use vmpulse::vmm::machine::{GuestOptions, Machine, MachineConfig, MachineEvent, SharedEsb};
use vmpulse::vmm::pci::{EsbFunction, PciFunction};

/// Kicks per KVM run (3 exits each).
const KICKS: u32 = 20_000;
const KVM_RUNS: usize = 3;
/// Kick sequences per device run.
const DEVICE_KICKS: u32 = 1_000_000;
const DEVICE_RUNS: usize = 5;

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
fn kvm_run() -> (f64, f64) {
    let esb: SharedEsb = Arc::new(Mutex::new(I6300Esb::with_events(
        WatchdogAction::Reset,
        MonotonicClock::new(),
        Arc::new(EventCounters::default()),
    )));
    let rearm = EventFd::new(EFD_NONBLOCK).expect("eventfd");
    let cfg = MachineConfig {
        memory_bytes: 2 << 20,
        guest: GuestOptions {
            timeout_secs: 30,
            kick_every: Duration::from_secs(1),
            hang_after: None,
            ignore_shutdown: false,
        },
        esb_rearm: Some(rearm.try_clone().expect("eventfd")),
        agent_serial: None,
    };
    let image = kick_loop_guest(KICKS).expect("assemble the kick loop guest");
    let mut m = Machine::with_image(cfg, esb, image).expect("create the VM");
    m.start().expect("start the VM");
    let give_up = Instant::now() + Duration::from_secs(120);
    loop {
        assert!(
            Instant::now() < give_up,
            "the kick loop guest did not finish"
        );
        wait_readable(m.event_fd(), 100);
        // The re-arm eventfd would be the event loop's; drain it so it never saturates.
        let _ = rearm.read();
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
        exits as f64 / f64::from(KICKS),
    )
}

/// One device run: ns per access.
fn device_run() -> f64 {
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
    for _ in 0..DEVICE_KICKS {
        dev.bar0_write(black_box(0x0c), black_box(&u1));
        dev.bar0_write(black_box(0x0c), black_box(&u2));
        dev.bar0_write(black_box(0x0c), black_box(&kick));
    }
    let ns = start.elapsed().as_nanos() as f64 / (3.0 * f64::from(DEVICE_KICKS));
    assert_eq!(
        EventCounters::get(&dev.events().kick),
        u64::from(DEVICE_KICKS),
        "every sequence was a kick"
    );
    ns
}

/// One host-path run: ns per access through bus, adapter, mutex, device, eventfd.
fn host_path_run() -> f64 {
    let esb: SharedEsb = Arc::new(Mutex::new(I6300Esb::with_events(
        WatchdogAction::Reset,
        MonotonicClock::new(),
        Arc::new(EventCounters::default()),
    )));
    let rearm = Arc::new(EventFd::new(EFD_NONBLOCK).expect("eventfd"));
    let mut function = EsbFunction::new(esb.clone(), Some(rearm.clone()));
    let bar0 = 0xfebf_0000u64;
    function.config_write(0x10, &(bar0 as u32).to_le_bytes());
    function.config_write(0x04, &0x0002u16.to_le_bytes());
    function.config_write(0x60, &0x0003u16.to_le_bytes());
    let bus = Bus::new("bench");
    let (base, len) = function.mmio_window().expect("BAR0 decoded");
    bus.insert(base, len, function.mmio_device().expect("BAR0 device"))
        .expect("route BAR0");
    let preload = (MAX_TIMEOUT_SECS << 9).to_le_bytes();
    for reg in [0x00u64, 0x04] {
        bus.write(bar0 + 0x0c, &0x80u16.to_le_bytes());
        bus.write(bar0 + 0x0c, &0x86u16.to_le_bytes());
        bus.write(bar0 + reg, &preload);
    }
    function.config_write(0x68, &[0x02]);
    let (u1, u2, kick) = (
        0x80u16.to_le_bytes(),
        0x86u16.to_le_bytes(),
        0x0100u16.to_le_bytes(),
    );
    let start = Instant::now();
    for i in 0..DEVICE_KICKS {
        bus.write(black_box(bar0 + 0x0c), black_box(&u1));
        bus.write(black_box(bar0 + 0x0c), black_box(&u2));
        bus.write(black_box(bar0 + 0x0c), black_box(&kick));
        // The event loop reads the eventfd; keep its counter from saturating.
        if i % 65_536 == 0 {
            let _ = rearm.read();
        }
    }
    let ns = start.elapsed().as_nanos() as f64 / (3.0 * f64::from(DEVICE_KICKS));
    let d = esb.lock().unwrap();
    assert_eq!(
        EventCounters::get(&d.events().kick),
        u64::from(DEVICE_KICKS)
    );
    ns
}

fn main() {
    if !Path::new("/dev/kvm").exists() {
        eprintln!("SKIP: /dev/kvm is absent; kvm_exit measures nothing here");
        return;
    }
    let mut exit_us = Vec::new();
    let mut per_kick = Vec::new();
    for _ in 0..KVM_RUNS {
        let (us, epk) = kvm_run();
        exit_us.push(us);
        per_kick.push(epk);
    }
    let device_ns: Vec<f64> = (0..DEVICE_RUNS).map(|_| device_run()).collect();
    let host_ns: Vec<f64> = (0..DEVICE_RUNS).map(|_| host_path_run()).collect();

    let exit_us = median(exit_us);
    let per_kick = median(per_kick);
    let device_ns = median(device_ns);
    let host_ns = median(host_ns);
    let ratio = exit_us * 1000.0 / device_ns;
    println!("kvm_exit: {KICKS} Linux kicks per KVM run, {KVM_RUNS} runs; {DEVICE_KICKS} kicks per device run, {DEVICE_RUNS} runs (medians)");
    println!("kvm_exit: exits per kick        {per_kick:.2}");
    println!("kvm_exit: MMIO exit round trip  {exit_us:.2} µs per exit (device included)");
    println!("kvm_exit: device bar0_write     {device_ns:.1} ns per access");
    println!("kvm_exit: VMM host path         {host_ns:.1} ns per access (bus + mutex + device + re-arm eventfd)");
    println!(
        "kvm_exit: exit / device         {ratio:.0}x (the device is {:.2} % of an exit)",
        100.0 / ratio
    );
    println!(
        "kvm_exit: host path / exit      {:.1} % of an exit",
        host_ns / (exit_us * 1000.0) * 100.0
    );
    println!(
        "kvm_exit: one kick              {:.1} µs through KVM, {:.3} µs in the device",
        exit_us * per_kick,
        device_ns * per_kick / 1000.0
    );
}
