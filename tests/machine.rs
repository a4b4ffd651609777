//! The KVM machine on the real /dev/kvm, driven by its built-in test guest.
//!
//! Every test is bounded: waits have deadlines, and a failed wait fails the test
//! with the console seen so far.

use std::os::fd::RawFd;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use i6300esb::adapters::timer::MonotonicClock;
use i6300esb::{EventCounters, I6300Esb, WatchdogAction};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};
use vmpulse::vmm::machine::{GuestOptions, Machine, MachineConfig, MachineEvent, SharedEsb};

fn kvm_present() -> bool {
    if Path::new("/dev/kvm").exists() {
        true
    } else {
        eprintln!("SKIP: /dev/kvm is absent; the KVM machine tests did not run");
        false
    }
}

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
    }
}

struct Vm {
    m: Machine,
    esb: SharedEsb,
    rearm: EventFd,
    /// Every event seen, with its arrival time.
    log: Vec<(Instant, MachineEvent)>,
}

impl Vm {
    fn new(guest: GuestOptions) -> Vm {
        let esb = esb(WatchdogAction::Reset);
        let rearm = EventFd::new(EFD_NONBLOCK).unwrap();
        let cfg = MachineConfig {
            memory_bytes: 2 << 20,
            guest,
            esb_rearm: Some(rearm.try_clone().unwrap()),
            agent_serial: None,
        };
        let mut m = Machine::new(cfg, esb.clone()).unwrap();
        m.start().unwrap();
        Vm {
            m,
            esb,
            rearm,
            log: Vec::new(),
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

    /// Collect events for up to `d`, returning early once `done` holds on one of
    /// the new events. Returns the index in `log` of the matching event.
    fn wait(&mut self, d: Duration, done: impl Fn(&MachineEvent) -> bool) -> Option<usize> {
        let give_up = Instant::now() + d;
        let start = self.log.len();
        loop {
            if let Some(i) = self.log[start..].iter().position(|(_, e)| done(e)) {
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

const BOOT: Duration = Duration::from_secs(10);

#[test]
fn boot_probe_arm_and_kick() {
    if !kvm_present() {
        return;
    }
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
    // The event loop heard of the guest's accesses.
    assert!(vm.rearm.read().unwrap() > 0);
    vm.m.stop();
    vm.m.stop();
}
