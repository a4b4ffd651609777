//! The KVM machine on the real /dev/kvm, driven by its built-in test guest.
//!
//! Every test is bounded: waits have deadlines, and a failed wait fails the test
//! with the console seen so far.

use std::io::{Read, Write};
use std::os::fd::RawFd;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use i6300esb::adapters::timer::MonotonicClock;
use i6300esb::{Clock, EventCounters, Expiry, I6300Esb, WatchdogAction};
use vmpulse::vmm::guest::{
    com2_echo_guest, halt_guest, kick_loop_guest, reset_request_guest, stray_access_guest,
    unaligned_access_guest, GuestImage, KICK_LOOP_SETUP_WRITES,
};
use vmpulse::vmm::machine::{GuestOptions, Machine, MachineConfig, MachineEvent, SharedEsb};

#[path = "common/kvm.rs"]
mod kvm;

fn esb(action: WatchdogAction) -> SharedEsb {
    Arc::new(Mutex::new(I6300Esb::with_events(
        action,
        MonotonicClock::new(),
        Arc::new(EventCounters::default()),
    )))
}

fn opts(timeout_secs: u32, kick_ms: u64, hang_ms: Option<u64>) -> GuestOptions {
    GuestOptions {
        timeout_secs,
        kick_every: Duration::from_millis(kick_ms),
        hang_after: hang_ms.map(Duration::from_millis),
        ignore_shutdown: false,
        stage_timeout: None,
        rearm_after_nmi: false,
    }
}

struct Vm {
    m: Machine,
    esb: SharedEsb,
    /// Deadline changes the device reported (its listener, as a host timer has it).
    deadline_changes: Arc<AtomicU64>,
    /// Every event seen, with its arrival time.
    log: Vec<(Instant, MachineEvent)>,
    /// Events before this index were matched by an earlier wait.
    cursor: usize,
}

impl Vm {
    fn new(guest: GuestOptions) -> Vm {
        Vm::build(guest, None, None)
    }

    fn with_image(image: GuestImage) -> Vm {
        Vm::build(opts(30, 1000, None), Some(image), None)
    }

    fn build(guest: GuestOptions, image: Option<GuestImage>, agent: Option<UnixStream>) -> Vm {
        let esb = esb(WatchdogAction::Reset);
        let deadline_changes = Arc::new(AtomicU64::new(0));
        let counter = deadline_changes.clone();
        esb.lock()
            .unwrap()
            .set_deadline_listener(move |_: Option<u64>| {
                counter.fetch_add(1, Ordering::Relaxed);
            });
        let cfg = MachineConfig {
            memory_bytes: 2 << 20,
            guest,
            agent_serial: agent,
        };
        let mut m = match image {
            Some(img) => Machine::with_image(cfg, esb.clone(), img).unwrap(),
            None => Machine::new(cfg, esb.clone()).unwrap(),
        };
        m.esb_access_log().start();
        m.start().unwrap();
        Vm {
            m,
            esb,
            deadline_changes,
            log: Vec::new(),
            cursor: 0,
        }
    }

    fn console(&self) -> Vec<String> {
        self.log
            .iter()
            .filter_map(|(_, e)| match e {
                MachineEvent::ConsoleLine(l) => Some(l.clone()),
                _ => None,
            })
            .collect()
    }

    /// Collect events for up to `d`, returning early once `done` holds on an event
    /// after the last one matched. Returns the index in `log` of the matching event.
    fn wait(&mut self, d: Duration, done: impl Fn(&MachineEvent) -> bool) -> Option<usize> {
        let give_up = Instant::now() + d;
        loop {
            let start = self.cursor;
            if let Some(i) = self.log[start..].iter().position(|(_, e)| done(e)) {
                self.cursor = start + i + 1;
                return Some(start + i);
            }
            let now = Instant::now();
            if now >= give_up {
                return None;
            }
            wait_readable(self.m.event_fd(), give_up - now);
            let t = Instant::now();
            for e in self.m.drain_events() {
                self.log.push((t, e));
            }
        }
    }

    /// The test is the event loop: poll the device at its deadlines until it fires
    /// (within `d`, or panic), collecting the machine's events meanwhile.
    fn wait_for_expiry(&mut self, d: Duration) -> Expiry {
        let give_up = Instant::now() + d;
        loop {
            let mut fired: Vec<Expiry> = Vec::new();
            let wait = {
                let mut esb = self.esb.lock().unwrap();
                esb.poll(&mut fired);
                esb.next_deadline()
                    .map(|t| Duration::from_nanos(t.saturating_sub(esb.clock().now_ns())))
            };
            if let Some(e) = fired.pop() {
                return e;
            }
            assert!(
                Instant::now() < give_up,
                "the watchdog never fired; console: {:#?}",
                self.console()
            );
            let wait = wait
                .unwrap_or(Duration::from_millis(50))
                .min(Duration::from_millis(50));
            self.wait(wait, |_| false);
        }
    }

    /// Like `wait`, but panics with the console so far when it times out.
    fn expect(&mut self, d: Duration, what: &str, done: impl Fn(&MachineEvent) -> bool) -> Instant {
        match self.wait(d, done) {
            Some(i) => self.log[i].0,
            None => panic!("no {what} within {d:?}; console: {:#?}", self.console()),
        }
    }

    fn expect_line(&mut self, d: Duration, prefix: &str) -> Instant {
        let p = prefix.to_string();
        self.expect(
            d,
            prefix,
            move |e| matches!(e, MachineEvent::ConsoleLine(l) if l.starts_with(&p)),
        )
    }

    /// Match only events from now on.
    fn mark(&mut self) -> usize {
        self.cursor = self.log.len();
        self.cursor
    }

    fn kicks(&self) -> Vec<String> {
        self.console()
            .into_iter()
            .filter(|l| l.starts_with("guest: kick "))
            .collect()
    }

    fn has(&self, e: &MachineEvent) -> bool {
        self.log.iter().any(|(_, x)| x == e)
    }
}

fn wait_readable(fd: RawFd, d: Duration) {
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    let ms = d.as_millis().clamp(1, 1000) as libc::c_int;
    // SAFETY: one valid pollfd, for the duration of the call.
    unsafe { libc::poll(&mut p, 1, ms) };
}

/// Run a test body on its own thread and fail if it takes longer than this.
const HARD_LIMIT: Duration = Duration::from_secs(60);

/// A KVM test: skips loudly when /dev/kvm is absent or unusable (fails under `CI=true`),
/// else runs `body` within [`HARD_LIMIT`].
fn kvm_test(body: fn()) {
    if kvm::kvm_or_skip("machine") {
        hard_limit(body);
    }
}

fn hard_limit(body: fn()) {
    let (tx, rx) = std::sync::mpsc::channel();
    let t = std::thread::spawn(move || {
        body();
        let _ = tx.send(());
    });
    match rx.recv_timeout(HARD_LIMIT) {
        Ok(()) => t.join().unwrap(),
        // The body panicked: re-raise its panic here.
        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
            if let Err(p) = t.join() {
                std::panic::resume_unwind(p);
            }
        }
        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
            panic!("the test did not finish within {HARD_LIMIT:?}")
        }
    }
}

const BOOT: Duration = Duration::from_secs(10);

#[test]
fn boot_probe_arm_and_kick() {
    kvm_test(boot_probe_arm_and_kick_body);
}

fn boot_probe_arm_and_kick_body() {
    let mut vm = Vm::new(opts(30, 200, None));
    vm.expect_line(BOOT, "guest: kick 3");
    let console = vm.console();
    assert_eq!(console[0], "guest: boot");
    assert_eq!(
        console[1],
        "guest: found i6300esb at 00:04.0 bar0=0xfebf0000"
    );
    assert_eq!(console[2], "guest: bootstatus=0");
    assert_eq!(console[3], "guest: watchdog armed, timeout=30 s");
    assert_eq!(
        &console[4..7],
        ["guest: kick 1", "guest: kick 2", "guest: kick 3"]
    );
    assert_eq!(vm.m.boot_count(), 1);
    assert_eq!(vm.m.esb_route(), Some((0xfebf_0000, 16)));
    // The guest ran Linux's probe: 30 s heartbeat, both stages, enabled.
    {
        let d = vm.esb.lock().unwrap();
        assert!(d.next_deadline().is_some(), "the watchdog is armed");
        assert!(!d.watchdog().timeout_flag());
        let kicks = EventCounters::get(&d.events().kick);
        assert!(kicks >= 3, "device counted {kicks} kicks");
        assert_eq!(EventCounters::get(&d.events().write_without_unlock), 0);
    }
    // The device told its host of the deadline the guest's accesses set (the
    // listener's first call, at installation, reported none).
    assert!(vm.deadline_changes.load(Ordering::Relaxed) > 1);
    vm.m.stop();
    vm.m.stop();
}

/// `Instant` at which the device clock read 0.
fn clock_origin(esb: &SharedEsb) -> Instant {
    let d = esb.lock().unwrap();
    let now = Instant::now();
    now - Duration::from_nanos(d.clock().now_ns())
}

/// A Linux heartbeat of 1 s on this device: preload 1 << 9 = 512 units of
/// 983,040 ns in each of the two stages, 1.00663 s from the last kick to the action.
const HEARTBEAT_1S_NS: u64 = 2 * 512 * 983_040;

#[test]
fn hang_fires_the_watchdog_and_reset_reports_it() {
    kvm_test(hang_fires_the_watchdog_and_reset_reports_it_body);
}

fn hang_fires_the_watchdog_and_reset_reports_it_body() {
    let mut vm = Vm::new(opts(1, 200, Some(1000)));
    let origin = clock_origin(&vm.esb);
    vm.expect_line(BOOT, "guest: watchdog armed, timeout=1 s");
    let hung = vm.expect_line(Duration::from_secs(5), "guest: hanging (no more kicks)");
    // Kicks at 200, 400, 600 and 800 ms of guest time; none at or after 1 s.
    assert_eq!(
        vm.kicks(),
        [
            "guest: kick 1",
            "guest: kick 2",
            "guest: kick 3",
            "guest: kick 4"
        ]
    );
    let last_kick = vm
        .log
        .iter()
        .rev()
        .find(|(_, e)| matches!(e, MachineEvent::ConsoleLine(l) if l == "guest: kick 4"))
        .map(|(t, _)| *t)
        .unwrap();
    assert!(hung > last_kick);

    let fired = vm.wait_for_expiry(Duration::from_secs(6));
    assert_eq!(fired.action, WatchdogAction::Reset);
    let kick_ns = (last_kick - origin).as_nanos() as u64;
    let after_kick = fired.time_ns - kick_ns;
    assert!(
        // The line arrives a little after the kick it reports; kicks are 200 ms
        // apart, so this window names kick 4 and no other.
        (HEARTBEAT_1S_NS - 150_000_000..=HEARTBEAT_1S_NS + 5_000_000).contains(&after_kick),
        "fired {after_kick} ns after the last kick line, expected about {HEARTBEAT_1S_NS} ns"
    );
    assert_eq!(vm.kicks().len(), 4, "no kick after the hang");
    assert!(vm.esb.lock().unwrap().watchdog().timeout_flag());

    // The action: a warm reset. The guest boots again and reads the flag.
    let asked = Instant::now();
    vm.m.reset().unwrap();
    let returned = Instant::now();
    // The vCPU thread says when it reloaded the machine: after the request, before the
    // call returned.
    let done =
        vm.m.last_done()
            .expect("a reset is confirmed with its instant");
    assert!(asked <= done && done <= returned);
    assert_eq!(vm.m.boot_count(), 2);
    let start = vm.mark();
    vm.expect_line(BOOT, "guest: watchdog armed, timeout=1 s");
    let second: Vec<String> = vm.log[start..]
        .iter()
        .filter_map(|(_, e)| match e {
            MachineEvent::ConsoleLine(l) => Some(l.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(
        second,
        [
            "guest: boot",
            "guest: found i6300esb at 00:04.0 bar0=0xfebf0000",
            "guest: bootstatus=0x20 (previous reset caused by the watchdog)",
            "guest: watchdog armed, timeout=1 s",
        ]
    );
    // Linux cleared the flag (0x0300) and the watchdog runs again.
    let d = vm.esb.lock().unwrap();
    assert!(!d.watchdog().timeout_flag());
    assert!(d.next_deadline().is_some());
}

#[test]
fn power_button_powers_the_guest_off_and_reset_boots_it_again() {
    kvm_test(power_button_powers_the_guest_off_and_reset_boots_it_again_body);
}

fn power_button_powers_the_guest_off_and_reset_boots_it_again_body() {
    let mut vm = Vm::new(opts(30, 100, None));
    vm.expect_line(BOOT, "guest: kick 1");
    vm.m.power_button();
    vm.expect_line(
        Duration::from_secs(5),
        "guest: power button pressed, powering off",
    );
    vm.expect(Duration::from_secs(5), "GuestPoweroff", |e| {
        *e == MachineEvent::GuestPoweroff
    });
    // Powered off: no more kicks.
    let kicks = vm.kicks().len();
    vm.wait(Duration::from_millis(400), |_| false);
    assert_eq!(vm.kicks().len(), kicks);

    vm.m.reset().unwrap();
    assert_eq!(vm.m.boot_count(), 2);
    let start = vm.mark();
    vm.expect_line(BOOT, "guest: kick 1");
    assert!(vm.log[start..]
        .iter()
        .any(|(_, e)| *e == MachineEvent::ConsoleLine("guest: bootstatus=0".into())));
}

#[test]
fn power_button_ignored_when_the_guest_says_so() {
    kvm_test(power_button_ignored_when_the_guest_says_so_body);
}

fn power_button_ignored_when_the_guest_says_so_body() {
    let mut o = opts(30, 100, None);
    o.ignore_shutdown = true;
    let mut vm = Vm::new(o);
    vm.expect_line(BOOT, "guest: kick 1");
    vm.m.power_button();
    vm.expect_line(
        Duration::from_secs(5),
        "guest: power button pressed, ignored",
    );
    let kicks = vm.kicks().len();
    vm.expect_line(
        Duration::from_secs(5),
        &format!("guest: kick {}", kicks + 2),
    );
    assert!(!vm.has(&MachineEvent::GuestPoweroff));
    // Pressed once, reported once.
    let presses = vm
        .console()
        .iter()
        .filter(|l| l.starts_with("guest: power button"))
        .count();
    assert_eq!(presses, 1);
}

#[test]
fn nmi_reaches_the_guest() {
    kvm_test(nmi_reaches_the_guest_body);
}

fn nmi_reaches_the_guest_body() {
    let mut vm = Vm::new(opts(30, 100, None));
    vm.expect_line(BOOT, "guest: kick 1");
    vm.m.inject_nmi().unwrap();
    vm.expect_line(Duration::from_secs(5), "guest: NMI received");
    let kicks = vm.kicks().len();
    vm.expect_line(
        Duration::from_secs(5),
        &format!("guest: kick {}", kicks + 1),
    );
    let nmis = vm
        .console()
        .iter()
        .filter(|l| *l == "guest: NMI received")
        .count();
    assert_eq!(nmis, 1);
}

#[test]
fn a_guest_that_rearms_after_each_nmi_fires_again_and_again() {
    kvm_test(a_guest_that_rearms_after_each_nmi_fires_again_and_again_body);
}

fn a_guest_that_rearms_after_each_nmi_fires_again_and_again_body() {
    let fast = |rearm_after_nmi| GuestOptions {
        kick_every: Duration::from_secs(3600),
        stage_timeout: Some(Duration::from_millis(2)),
        rearm_after_nmi,
        ..GuestOptions::default()
    };
    // The event loop's part for the inject-nmi action: at each expiry, an NMI.
    let mut vm = Vm::new(fast(true));
    for round in 1..=3 {
        vm.wait_for_expiry(Duration::from_secs(10));
        vm.m.inject_nmi().unwrap();
        vm.expect_line(Duration::from_secs(5), "guest: NMI received");
        // The guest armed the device again before it said so.
        let mut d = vm.esb.lock().unwrap();
        assert!(
            d.next_deadline().is_some(),
            "round {round}: not armed again"
        );
        let mut config = [0u8; 2];
        d.config_read(0x60, &mut config);
        assert_eq!(config[0] & 0x4, 0x4, "the 1 MHz prescaler again");
    }
    let armed = vm
        .console()
        .iter()
        .filter(|l| l.starts_with("guest: watchdog armed"))
        .count();
    assert_eq!(armed, 1, "one boot only: the NMIs did not reset the guest");

    // Without the option the device stays quiet after the first NMI, as QEMU's does.
    let mut vm = Vm::new(fast(false));
    vm.wait_for_expiry(Duration::from_secs(10));
    vm.m.inject_nmi().unwrap();
    vm.expect_line(Duration::from_secs(5), "guest: NMI received");
    assert_eq!(vm.esb.lock().unwrap().next_deadline(), None);
}

#[test]
fn pause_freezes_guest_and_watchdog_and_reset_works_while_paused() {
    kvm_test(pause_freezes_guest_and_watchdog_and_reset_works_while_paused_body);
}

fn pause_freezes_guest_and_watchdog_and_reset_works_while_paused_body() {
    let mut vm = Vm::new(opts(30, 100, None));
    vm.expect_line(BOOT, "guest: kick 2");
    vm.m.pause().unwrap();
    assert!(vm.m.is_paused());
    assert!(vm.esb.lock().unwrap().watchdog().is_paused());
    // Whatever was printed before the pause took effect, then silence.
    vm.wait(Duration::from_millis(50), |_| false);
    let before = vm.console().len();
    vm.wait(Duration::from_millis(600), |_| false);
    assert_eq!(vm.console().len(), before, "the guest ran while paused");

    // An NMI injected while paused is delivered after resume.
    vm.m.inject_nmi().unwrap();
    vm.wait(Duration::from_millis(100), |_| false);
    assert_eq!(vm.console().len(), before);
    vm.m.resume().unwrap();
    assert!(!vm.esb.lock().unwrap().watchdog().is_paused());
    let last = vm.kicks().len();
    vm.expect_line(Duration::from_secs(5), "guest: NMI received");
    let first = vm.expect_line(Duration::from_secs(5), &format!("guest: kick {}", last + 1));
    let second = vm.expect_line(Duration::from_secs(5), &format!("guest: kick {}", last + 2));
    // The guest's clock stood still while paused: no burst of catch-up kicks.
    assert!(
        second - first >= Duration::from_millis(60),
        "kicks {:?} apart after resume",
        second - first
    );

    // Reset while paused: nothing runs until resume, then the guest boots.
    vm.m.pause().unwrap();
    vm.m.reset().unwrap();
    assert_eq!(vm.m.boot_count(), 2);
    vm.wait(Duration::from_millis(300), |_| false);
    let start = vm.log.len();
    vm.wait(Duration::from_millis(300), |_| false);
    assert_eq!(vm.log.len(), start, "the guest ran while paused");
    vm.m.resume().unwrap();
    vm.expect_line(BOOT, "guest: boot");
    vm.expect_line(BOOT, "guest: kick 1");
}

#[test]
fn reset_control_port_reports_a_guest_reset() {
    kvm_test(reset_control_port_reports_a_guest_reset_body);
}

fn reset_control_port_reports_a_guest_reset_body() {
    let mut vm = Vm::with_image(reset_request_guest().unwrap());
    vm.expect_line(BOOT, "guest: boot (reset request)");
    vm.expect(BOOT, "GuestReset", |e| *e == MachineEvent::GuestReset);
    // The vCPU is parked until the owner resets the machine.
    vm.m.reset().unwrap();
    let start = vm.mark();
    vm.expect(BOOT, "second GuestReset", |e| {
        *e == MachineEvent::GuestReset
    });
    assert_eq!(
        vm.log[start].1,
        MachineEvent::ConsoleLine("guest: boot (reset request)".into())
    );
    assert_eq!(vm.m.boot_count(), 2);
}

#[test]
fn kick_loop_guest_counts_three_exits_per_kick() {
    kvm_test(kick_loop_guest_counts_three_exits_per_kick_body);
}

fn kick_loop_guest_counts_three_exits_per_kick_body() {
    let mut vm = Vm::with_image(kick_loop_guest(200).unwrap());
    vm.expect(BOOT, "GuestPoweroff", |e| *e == MachineEvent::GuestPoweroff);
    let marks = vm.m.marks();
    assert_eq!(marks.iter().map(|m| m.0).collect::<Vec<_>>(), [1, 2]);
    let exits = vm.m.exits();
    // Arming, then 200 kicks × 3 writes; nothing else on MMIO.
    assert_eq!(
        exits.mmio.load(std::sync::atomic::Ordering::Relaxed),
        KICK_LOOP_SETUP_WRITES + 600
    );
    let d = vm.esb.lock().unwrap();
    assert_eq!(EventCounters::get(&d.events().write_without_unlock), 0);
    assert_eq!(EventCounters::get(&d.events().kick), 200);
    assert!(d.watchdog().is_enabled());
    assert_eq!(vm.m.unclaimed_accesses(), (0, 0));
}

#[test]
fn stop_is_prompt_and_idempotent_and_drop_stops() {
    kvm_test(stop_is_prompt_and_idempotent_and_drop_stops_body);
}

fn stop_is_prompt_and_idempotent_and_drop_stops_body() {
    let mut vm = Vm::new(opts(30, 100, None));
    vm.expect_line(BOOT, "guest: kick 1");
    let t = Instant::now();
    vm.m.stop();
    assert!(t.elapsed() < Duration::from_secs(2));
    vm.m.stop();
    assert!(vm.m.reset().is_err());
    assert!(vm.m.pause().is_err());
    let vm2 = Vm::new(opts(30, 100, None));
    drop(vm2);
}

#[test]
fn too_little_memory_is_refused() {
    kvm_test(too_little_memory_is_refused_body);
}

fn too_little_memory_is_refused_body() {
    let cfg = MachineConfig {
        memory_bytes: 4096,
        guest: opts(30, 1000, None),
        agent_serial: None,
    };
    let err = Machine::new(cfg, esb(WatchdogAction::Reset)).err().unwrap();
    assert!(err.to_string().contains("1 MiB"), "{err}");
}

#[test]
fn com2_carries_agent_bytes_both_ways() {
    kvm_test(com2_carries_agent_bytes_both_ways_body);
}

fn com2_carries_agent_bytes_both_ways_body() {
    let (host, mut agent) = UnixStream::pair().unwrap();
    let mut vm = Vm::build(
        opts(30, 1000, None),
        Some(com2_echo_guest().unwrap()),
        Some(host),
    );
    vm.expect_line(BOOT, "guest: boot (COM2 echo)");
    // More than the 64-byte receive FIFO, so the bridge must hold some back.
    let msg: Vec<u8> = b"{\"execute\":\"guest-ping\"}\n".repeat(4);
    agent.write_all(&msg).unwrap();
    agent
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut back = vec![0u8; msg.len()];
    agent.read_exact(&mut back).unwrap();
    assert_eq!(back, msg);
    vm.m.stop();
    // The bridge closed its end of the socket.
    let mut rest = Vec::new();
    assert_eq!(agent.read_to_end(&mut rest).unwrap(), 0);
}

#[test]
fn stray_accesses_read_all_ones_and_are_counted() {
    kvm_test(stray_accesses_read_all_ones_and_are_counted_body);
}

fn stray_accesses_read_all_ones_and_are_counted_body() {
    let mut vm = Vm::with_image(stray_access_guest().unwrap());
    vm.expect(BOOT, "GuestPoweroff", |e| *e == MachineEvent::GuestPoweroff);
    assert_eq!(
        vm.console(),
        ["guest: port 0x99=0xff", "guest: mmio 0xfeb00000=0xffffffff"]
    );
    // Three port accesses and two MMIO accesses that nobody decodes.
    assert_eq!(vm.m.unclaimed_accesses(), (3, 2));
    assert_eq!(vm.m.boot_count(), 1);
}

#[test]
fn unaligned_accesses_reach_the_device_in_aligned_pieces() {
    kvm_test(unaligned_accesses_reach_the_device_in_aligned_pieces_body);
}

/// Unaligned accesses through real KVM exits: unaligned `in`/`out` at 0xCFD-0xCFF and
/// unaligned MMIO at BAR0 arrive as QEMU on KVM delivers them.
fn unaligned_accesses_reach_the_device_in_aligned_pieces_body() {
    let esb = esb(WatchdogAction::Reset);
    // The timeout flag of an earlier expiry, so BAR0+0x0C reads 0x1200.
    {
        let mut d = esb.lock().unwrap();
        let mut state = d.state();
        state.watchdog.timed_out = true;
        d.load_state(&state).unwrap();
    }
    let cfg = MachineConfig {
        memory_bytes: 2 << 20,
        guest: opts(30, 1000, None),
        agent_serial: None,
    };
    let mut m = Machine::with_image(cfg, esb.clone(), unaligned_access_guest().unwrap()).unwrap();
    let log = m.esb_access_log();
    log.start();
    m.start().unwrap();
    let mut vm = Vm {
        m,
        esb,
        deadline_changes: Arc::new(AtomicU64::new(0)),
        log: Vec::new(),
        cursor: 0,
    };
    vm.expect(BOOT, "GuestPoweroff", |e| *e == MachineEvent::GuestPoweroff);
    let console = vm.console();
    assert_eq!(
        console[2..],
        [
            // Bytes 0x01 and 0x02 of 8086:25ab.
            "guest: cfd=0xab80",
            // The word at 0x02, then two bytes of port 0xD00.
            "guest: cfe=0xffff25ab",
            // A word write at 0xCFF: 0xA5 to byte 0x43; 0x5A to 0xD00, dropped.
            "guest: cfg40=0xa5000000",
            // Words at BAR0+0x0A (0) and 0x0C (the flag).
            "guest: bar0+0a=0x12000000",
            // The word at BAR0+0x0E, then two bytes past BAR0.
            "guest: bar0+0e=0xffff0000",
        ],
        "{console:?}"
    );
    // The unaligned unlock opened the window: preload 1 took the write.
    assert_eq!(vm.esb.lock().unwrap().state().watchdog.preload1, 0x321);
    // 0xD00 twice (one read, one write) and BAR0+0x10 once.
    assert_eq!(vm.m.unclaimed_accesses(), (2, 1));
    // The access log has the pieces as the device saw them.
    let lines = log.take();
    for piece in [
        "cfg r 0x01 1 0x80",
        "cfg r 0x02 1 0xab",
        "cfg r 0x02 2 0x25ab",
        "cfg w 0x43 1 0xa5",
        "mmio w 0x0b 1 0x00",
        "mmio w 0x0c 1 0x80",
        "mmio w 0x0c 1 0x86",
        "mmio w 0x00 4 0x00000321",
        "mmio r 0x0a 2 0x0000",
        "mmio r 0x0c 2 0x1200",
        "mmio r 0x0e 2 0x0000",
    ] {
        assert!(lines.iter().any(|l| l == piece), "{piece} not in {lines:?}");
    }
}

/// The probe of the Linux driver as recorded in a reference trace (QEMU 7.2, Linux
/// 6.1, heartbeat 30): from the write to 0x60 to the enable at 0x68, without times.
fn linux_probe_from_trace() -> Vec<String> {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/traces/01-basic-poweroff.trace");
    let text = std::fs::read_to_string(path).unwrap();
    let accesses: Vec<String> = text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split_once(' ').map(|(_, rest)| rest.to_string()))
        .collect();
    let start = accesses
        .iter()
        .position(|l| l == "cfg w 0x60 2 0x0003")
        .unwrap();
    let end = accesses
        .iter()
        .position(|l| l == "cfg w 0x68 1 0x02")
        .unwrap();
    accesses[start..=end].to_vec()
}

#[test]
fn guest_probe_matches_the_linux_trace() {
    kvm_test(guest_probe_matches_the_linux_trace_body);
}

fn guest_probe_matches_the_linux_trace_body() {
    let mut vm = Vm::new(opts(30, 200, None));
    vm.expect_line(BOOT, "guest: kick 1");
    let log = vm.m.esb_access_log().take();
    let start = log.iter().position(|l| l == "cfg w 0x60 2 0x0003").unwrap();
    let end = log.iter().position(|l| l == "cfg w 0x68 1 0x02").unwrap();
    let reference = linux_probe_from_trace();
    assert_eq!(reference.len(), 22);
    assert_eq!(log[start..=end], reference[..]);
    // Before the probe, firmware's part: find the device, size and place BAR0,
    // turn memory decode on.
    assert_eq!(
        log[..start],
        [
            "cfg r 0x00 4 0x25ab8086",
            "cfg w 0x10 4 0xffffffff",
            "cfg r 0x10 4 0xfffffff0",
            "cfg w 0x10 4 0xfebf0000",
            "cfg r 0x04 2 0x0000",
            "cfg w 0x04 2 0x0002",
            "cfg r 0x10 4 0xfebf0000",
        ]
    );
    // After it, the daemon: one Linux ping per kick.
    assert_eq!(
        log[end + 1..end + 4],
        [
            "mmio w 0x0c 2 0x0080",
            "mmio w 0x0c 2 0x0086",
            "mmio w 0x0c 2 0x0100"
        ]
    );
}

#[test]
fn a_guest_halted_with_interrupts_off_can_be_woken_reset_and_stopped() {
    kvm_test(a_guest_halted_with_interrupts_off_can_be_woken_reset_and_stopped_body);
}

fn a_guest_halted_with_interrupts_off_can_be_woken_reset_and_stopped_body() {
    let mut vm = Vm::with_image(halt_guest().unwrap());
    vm.expect_line(BOOT, "guest: boot (halt)");
    // Only an NMI gets through `cli; hlt`. One that lands between the guest's
    // check of its flag and `hlt` waits for the next, so keep sending (bounded).
    let mut got = false;
    for _ in 0..20 {
        vm.m.inject_nmi().unwrap();
        if vm
            .wait(Duration::from_millis(500), |e| {
                *e == MachineEvent::ConsoleLine("guest: NMI received".into())
            })
            .is_some()
        {
            got = true;
            break;
        }
    }
    assert!(got, "no NMI reached the halted guest; {:?}", vm.console());
    vm.m.pause().unwrap();
    vm.m.resume().unwrap();
    vm.m.reset().unwrap();
    vm.expect_line(BOOT, "guest: boot (halt)");
    assert_eq!(vm.m.boot_count(), 2);
    let t = Instant::now();
    vm.m.stop();
    assert!(t.elapsed() < Duration::from_secs(2));
}
