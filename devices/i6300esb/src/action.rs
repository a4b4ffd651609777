//! What the host is asked to do when stage 2 expires, and the sink that receives it.

use std::fmt;
use std::str::FromStr;

use crate::regs::{WDT_INT_TYPE_IRQ, WDT_INT_TYPE_MASK, WDT_INT_TYPE_SMI};

/// The action a VMM carries out when the watchdog fires; QEMU's action names.
///
/// Non-exhaustive: QEMU has added actions before (`inject-nmi` in 2.4), so a
/// later release may add one; match with a fallback arm.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
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
    /// Every action, in a stable order. (The array grows if an action is added.)
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

/// What a stage-1 expiry raises in the Hardware profile (WDTCR bits 1:0).
///
/// Non-exhaustive: type 01 is reserved by the datasheet and could be given a
/// meaning (for example an NMI, as some boards wire it) in a later release.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum InterruptKind {
    /// Interrupt type 00: an IRQ on IOxAPIC 1, input 10.
    Irq,
    /// Interrupt type 10: a system management interrupt.
    Smi,
}

impl InterruptKind {
    /// The kind WDTCR interrupt-type bits select; `None` for 01 (reserved) and
    /// 11 (disabled).
    pub fn from_int_type(int_type: u16) -> Option<Self> {
        match int_type & WDT_INT_TYPE_MASK {
            WDT_INT_TYPE_IRQ => Some(InterruptKind::Irq),
            WDT_INT_TYPE_SMI => Some(InterruptKind::Smi),
            _ => None,
        }
    }

    pub(crate) fn code(self) -> u8 {
        match self {
            InterruptKind::Irq => 1,
            InterruptKind::Smi => 2,
        }
    }

    pub(crate) fn from_code(code: u8) -> Option<Self> {
        match code {
            1 => Some(InterruptKind::Irq),
            2 => Some(InterruptKind::Smi),
            _ => None,
        }
    }
}

/// A stage-1 interrupt the chip raises (Hardware profile only; QEMU raises none).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stage1Interrupt {
    /// IRQ or SMI, as WDTCR selected when stage 1 ran out.
    pub kind: InterruptKind,
    /// The virtual time at which stage 1 ran out.
    pub time_ns: u64,
}

/// Receives expiries from [`crate::I6300Esb::poll`]. The host decides what to do.
pub trait ActionSink {
    /// Stage 2 ran out with the output enabled; the device has already set its
    /// timeout flag and, in the QEMU profile, reset itself (in the Hardware
    /// profile it has stopped with its output asserted instead).
    fn watchdog_expired(&mut self, expiry: Expiry);

    /// Hardware profile only: stage 1 ran out and set GISR bit 0 with WDTCR
    /// selecting an IRQ (00) or an SMI (10). The interrupt is raised on GISR's
    /// 0-to-1 edge, so there is at most one per guest clear of GISR. Delivered
    /// from `poll`, before the expiries of the same poll. The default ignores it.
    fn stage1_interrupt(&mut self, interrupt: Stage1Interrupt) {
        let _ = interrupt;
    }
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
