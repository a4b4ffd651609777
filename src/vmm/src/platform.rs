//! The platform types that the machine and its devices share: the watchdog as the VMM
//! shares it, the built-in guest's options, and the queue of [`MachineEvent`]s on their
//! way from the vCPU thread (and the COM2 reader thread) to the event loop.
//!
//! A leaf module: it imports none of the VMM's others, so `machine.rs` owns its devices
//! (`control.rs`, `guest.rs`, `pci.rs`, `serial.rs`) and they import only this, not the
//! machine.

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use i6300esb::adapters::timer::MonotonicClock;
use i6300esb::{EventCounters, I6300Esb};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// Linux's default heartbeat for the i6300esb, in seconds: the built-in guest's
/// [`GuestOptions::timeout_secs`] unless told otherwise.
pub const DEFAULT_TIMEOUT_SECS: u32 = 30;

/// The watchdog as the VMM shares it between the vCPU thread and the event loop.
pub type SharedEsb = Arc<Mutex<I6300Esb<MonotonicClock, Arc<EventCounters>>>>;

/// Behaviour of the built-in test guest (baked into the generated program).
#[derive(Clone, Debug)]
pub struct GuestOptions {
    /// Linux heartbeat T in seconds: preload = T << 9 for both stages (default 30).
    pub timeout_secs: u32,
    /// Interval between kicks.
    pub kick_every: Duration,
    /// Stop kicking this long after boot (`None`: never).
    pub hang_after: Option<Duration>,
    /// Ignore the power button (to test the forced poweroff).
    pub ignore_shutdown: bool,
    /// Time each stage this long on the device's 1 MHz prescaler instead of the heartbeat
    /// (`None`: Linux's `timeout_secs`). One unit is 960 ns, so 1 µs to about 1.007 s per
    /// stage; a guest that never kicks then expires within milliseconds of every boot
    /// (tests and benchmarks of the expiry path).
    pub stage_timeout: Option<Duration>,
    /// Arm the watchdog again after every NMI, as the driver's probe armed it (QEMU's
    /// device resets itself when it fires), so that with the `inject-nmi` action it
    /// fires again and again instead of once (tests and benchmarks of the NMI path).
    pub rearm_after_nmi: bool,
}

impl GuestOptions {
    /// The kick period when none is given: a third of the heartbeat.
    pub fn default_kick_every(timeout_secs: u32) -> Duration {
        Duration::from_secs(u64::from(timeout_secs)) / 3
    }
}

impl Default for GuestOptions {
    /// What `vmpulse run` uses without flags or annotations: Linux's 30 s heartbeat
    /// ([`DEFAULT_TIMEOUT_SECS`]), a kick every third of it, never hanging, honouring
    /// the power button.
    fn default() -> Self {
        GuestOptions {
            timeout_secs: DEFAULT_TIMEOUT_SECS,
            kick_every: Self::default_kick_every(DEFAULT_TIMEOUT_SECS),
            hang_after: None,
            ignore_shutdown: false,
            stage_timeout: None,
            rearm_after_nmi: false,
        }
    }
}

/// Something the machine reports to the event loop.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MachineEvent {
    /// One line the guest printed on COM1, without the newline.
    ConsoleLine(String),
    /// The guest powered itself off. The vCPU is parked: [`Machine::reset`] boots
    /// the guest again, [`Machine::stop`] releases the VM.
    ///
    /// [`Machine::reset`]: crate::machine::Machine::reset
    /// [`Machine::stop`]: crate::machine::Machine::stop
    GuestPoweroff,
    /// The guest asked for a reset (port 0xCF9, or a triple fault). The vCPU is
    /// parked until the owner calls [`Machine::reset`] (or [`Machine::stop`]).
    ///
    /// [`Machine::reset`]: crate::machine::Machine::reset
    /// [`Machine::stop`]: crate::machine::Machine::stop
    GuestReset,
    /// The vCPU thread hit an error; the vCPU is stopped (parked).
    Error(String),
}

/// Console lines held for an owner that does not drain; more are dropped (counted).
pub const MAX_QUEUED_LINES: usize = 16 * 1024;

/// Events on their way to the owner, with an eventfd that is readable while any wait.
pub struct EventQueue {
    events: Mutex<Vec<MachineEvent>>,
    fd: EventFd,
    dropped_lines: AtomicU64,
}

impl EventQueue {
    /// An empty queue.
    pub fn new() -> io::Result<Self> {
        Ok(EventQueue {
            events: Mutex::new(Vec::new()),
            fd: EventFd::new(EFD_NONBLOCK)?,
            dropped_lines: AtomicU64::new(0),
        })
    }

    /// Queue `event` and make the eventfd readable. Console lines beyond
    /// [`MAX_QUEUED_LINES`] undrained events are dropped and counted, so a guest
    /// that floods its console cannot grow the queue without bound; other events
    /// are always kept.
    pub fn push(&self, event: MachineEvent) {
        {
            let mut q = self.events.lock().unwrap_or_else(|e| e.into_inner());
            if q.len() >= MAX_QUEUED_LINES && matches!(event, MachineEvent::ConsoleLine(_)) {
                let n = self.dropped_lines.fetch_add(1, Ordering::Relaxed);
                if n % 10_000 == 0 {
                    log::warn!("machine: console lines not drained; {} dropped", n + 1);
                }
                return;
            }
            q.push(event);
        }
        if let Err(e) = self.fd.write(1) {
            log::error!("machine: cannot signal the event fd: {e}");
        }
    }

    /// Console lines dropped because the queue was full.
    pub fn dropped_lines(&self) -> u64 {
        self.dropped_lines.load(Ordering::Relaxed)
    }

    /// Take every queued event, in order.
    pub fn drain(&self) -> Vec<MachineEvent> {
        // Clear the eventfd first: a push racing with us signals it again.
        let _ = self.fd.read();
        std::mem::take(&mut *self.events.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// The eventfd.
    pub fn fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_queue_signals_keeps_order_and_bounds_console_lines() {
        let q = EventQueue::new().unwrap();
        let mut buf = [0u8; 8];
        // SAFETY: reading 8 bytes from a non-blocking eventfd into a local buffer.
        let readable = |q: &EventQueue, buf: &mut [u8; 8]| unsafe {
            libc::read(q.fd(), buf.as_mut_ptr().cast(), 8) == 8
        };
        assert!(!readable(&q, &mut buf));
        q.push(MachineEvent::ConsoleLine("a".into()));
        q.push(MachineEvent::GuestReset);
        assert_eq!(
            q.drain(),
            vec![
                MachineEvent::ConsoleLine("a".into()),
                MachineEvent::GuestReset
            ]
        );
        assert!(!readable(&q, &mut buf), "drain clears the eventfd");
        for i in 0..MAX_QUEUED_LINES + 10 {
            q.push(MachineEvent::ConsoleLine(i.to_string()));
        }
        q.push(MachineEvent::GuestPoweroff);
        let all = q.drain();
        assert_eq!(all.len(), MAX_QUEUED_LINES + 1);
        assert_eq!(all.last(), Some(&MachineEvent::GuestPoweroff));
        assert_eq!(q.dropped_lines(), 10);
    }
}
