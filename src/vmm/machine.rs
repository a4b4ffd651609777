//! The KVM machine: VM, vCPU, buses, PCI, serial ports and the built-in test guest.
//!
//! SKELETON: the API below is the contract between the machine and the runner.
//! The machine engineer replaces the bodies (and this paragraph) with the real thing.

use std::os::fd::RawFd;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use i6300esb::adapters::timer::MonotonicClock;
use i6300esb::{EventCounters, I6300Esb};
use vmm_sys_util::eventfd::EventFd;

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
}

/// How to build a [`Machine`].
pub struct MachineConfig {
    /// Guest memory size, already clamped by the runner.
    pub memory_bytes: u64,
    /// The built-in test guest's behaviour.
    pub guest: GuestOptions,
    /// Written (value 1) by the vCPU thread after every guest access to the watchdog,
    /// so the event loop re-arms its timerfd.
    pub esb_rearm: Option<EventFd>,
    /// Host end of COM2 (0x2F8), the agent channel for `qemu-ga -m isa-serial` guests.
    pub agent_serial: Option<std::os::unix::net::UnixStream>,
}

/// Something the machine reports to the event loop.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MachineEvent {
    /// One line the guest printed on COM1, without the newline.
    ConsoleLine(String),
    /// The guest powered itself off.
    GuestPoweroff,
    /// The guest asked for a reset (port 0xCF9).
    GuestReset,
    /// The vCPU thread hit an error; the vCPU is stopped.
    Error(String),
}

/// Errors of the machine.
#[derive(Debug, thiserror::Error)]
pub enum MachineError {
    /// Not written yet.
    #[error("not implemented")]
    Unimplemented,
}

/// A small KVM virtual machine with the i6300esb.
pub struct Machine {
    _esb: SharedEsb,
}

impl Machine {
    /// Create the VM; does not run it yet.
    pub fn new(_cfg: MachineConfig, esb: SharedEsb) -> Result<Machine, MachineError> {
        let _ = esb;
        Err(MachineError::Unimplemented)
    }
    /// Start the vCPU thread: the guest boots.
    pub fn start(&mut self) -> Result<(), MachineError> {
        Err(MachineError::Unimplemented)
    }
    /// An eventfd that becomes readable whenever `drain_events` has something.
    pub fn event_fd(&self) -> RawFd {
        -1
    }
    /// Take every queued event, in order.
    pub fn drain_events(&mut self) -> Vec<MachineEvent> {
        Vec::new()
    }
    /// Freeze the vCPU and the watchdog countdown.
    pub fn pause(&mut self) -> Result<(), MachineError> {
        Err(MachineError::Unimplemented)
    }
    /// Undo pause.
    pub fn resume(&mut self) -> Result<(), MachineError> {
        Err(MachineError::Unimplemented)
    }
    /// Warm reset of the whole VM; the guest boots again.
    pub fn reset(&mut self) -> Result<(), MachineError> {
        Err(MachineError::Unimplemented)
    }
    /// A graceful shutdown request (ACPI power button).
    pub fn power_button(&mut self) {}
    /// Inject an NMI into the vCPU.
    pub fn inject_nmi(&mut self) -> Result<(), MachineError> {
        Err(MachineError::Unimplemented)
    }
    /// Stop the vCPU thread and release the VM. Idempotent.
    pub fn stop(&mut self) {}
    /// How many times the guest has been started.
    pub fn boot_count(&self) -> u32 {
        0
    }
}
