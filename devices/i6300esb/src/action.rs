//! What the host is asked to do when stage 2 expires, and the sink that receives it.

use std::fmt;
use std::str::FromStr;

/// The action a VMM carries out when the watchdog fires; QEMU's action names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum WatchdogAction {
    /// Warm-reset the whole VM (the default of QEMU, libvirt and KubeVirt).
    Reset,
    /// Ask the guest to power down, as an ACPI power-button press would.
    Shutdown,
    /// Stop the VM at once, without a graceful shutdown.
    Poweroff,
    /// Pause the VM.
    Pause,
    /// Report only; the VM keeps running.
    Debug,
    /// Nothing but the event.
    None,
    /// Deliver an NMI to every vCPU.
    InjectNmi,
}

impl WatchdogAction {
    /// Every action, in a stable order.
    pub const ALL: [WatchdogAction; 7] = [
        WatchdogAction::Reset,
        WatchdogAction::Shutdown,
        WatchdogAction::Poweroff,
        WatchdogAction::Pause,
        WatchdogAction::Debug,
        WatchdogAction::None,
        WatchdogAction::InjectNmi,
    ];

    /// The action's name as QEMU and the trace format spell it.
    pub fn name(self) -> &'static str {
        match self {
            WatchdogAction::Reset => "reset",
            WatchdogAction::Shutdown => "shutdown",
            WatchdogAction::Poweroff => "poweroff",
            WatchdogAction::Pause => "pause",
            WatchdogAction::Debug => "debug",
            WatchdogAction::None => "none",
            WatchdogAction::InjectNmi => "inject-nmi",
        }
    }

    pub(crate) fn code(self) -> u8 {
        match self {
            WatchdogAction::Reset => 0,
            WatchdogAction::Shutdown => 1,
            WatchdogAction::Poweroff => 2,
            WatchdogAction::Pause => 3,
            WatchdogAction::Debug => 4,
            WatchdogAction::None => 5,
            WatchdogAction::InjectNmi => 6,
        }
    }

    pub(crate) fn from_code(code: u8) -> Option<Self> {
        WatchdogAction::ALL.get(usize::from(code)).copied()
    }
}

impl fmt::Display for WatchdogAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The error of parsing an unknown action name.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown action \"{0}\" (expected one of reset, shutdown, poweroff, pause, debug, none, inject-nmi)"
)]
pub struct UnknownAction(pub String);

impl FromStr for WatchdogAction {
    type Err = UnknownAction;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        WatchdogAction::ALL
            .iter()
            .copied()
            .find(|a| a.name() == s)
            .ok_or_else(|| UnknownAction(s.to_string()))
    }
}

/// One stage-2 expiry with the output enabled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Expiry {
    /// The action the host should carry out.
    pub action: WatchdogAction,
    /// The virtual time, in the device clock's nanoseconds, at which stage 2 ran out.
    pub time_ns: u64,
}

/// Receives expiries from [`crate::I6300Esb::poll`]. The host decides what to do.
pub trait ActionSink {
    /// Stage 2 ran out with the output enabled; the device has already set its
    /// timeout flag and reset itself.
    fn watchdog_expired(&mut self, expiry: Expiry);
}

impl<F: FnMut(Expiry)> ActionSink for F {
    fn watchdog_expired(&mut self, expiry: Expiry) {
        self(expiry)
    }
}

impl ActionSink for Vec<Expiry> {
    fn watchdog_expired(&mut self, expiry: Expiry) {
        self.push(expiry)
    }
}
