//! The events hook: how the device reports what it ignored or did, without logging.
//!
//! Guest-reachable paths never log (a guest could flood the host log); they call
//! these hooks, which a VMM implements with counters (see [`EventCounters`]).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Callbacks for noteworthy device events. Every method has an empty default.
pub trait WatchdogEvents {
    /// A PCI configuration access that QEMU's model ignores: a width other than
    /// 1, 2 or 4, an access past the end of configuration space, or a width that
    /// the device-specific registers at 0x60/0x68 do not decode (the QEMU
    /// profile still stores that one as plain configuration bytes; the
    /// register did not see it).
    fn ignored_config_access(&self) {}
    /// A BAR0 access that QEMU's memory core rejects: a width other than 1, 2 or
    /// 4, an unaligned access, or one reaching past the 16-byte window. (Whether
    /// BAR0 is decoded at all is the bus's business: see `I6300Esb::bar0_region`.)
    fn ignored_mmio_access(&self) {}
    /// A protected BAR0 write arrived without an open unlock window.
    fn write_without_unlock(&self) {}
    /// A write to the lock register while it is locked.
    fn locked_write(&self) {}
    /// A reload (kick) restarted stage 1.
    fn kick(&self) {}
    /// Stage 1 ran out and stage 2 started.
    fn stage1_expired(&self) {}
    /// Stage 2 ran out with the output enabled (the action was requested).
    fn expired(&self) {}
    /// Expiries piled up without the host polling; the oldest were dropped.
    fn pending_overflow(&self) {}
}

/// The hook that does nothing.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoEvents;

impl WatchdogEvents for NoEvents {}

impl<T: WatchdogEvents + ?Sized> WatchdogEvents for Arc<T> {
    fn ignored_config_access(&self) {
        (**self).ignored_config_access()
    }
    fn ignored_mmio_access(&self) {
        (**self).ignored_mmio_access()
    }
    fn write_without_unlock(&self) {
        (**self).write_without_unlock()
    }
    fn locked_write(&self) {
        (**self).locked_write()
    }
    fn kick(&self) {
        (**self).kick()
    }
    fn stage1_expired(&self) {
        (**self).stage1_expired()
    }
    fn expired(&self) {
        (**self).expired()
    }
    fn pending_overflow(&self) {
        (**self).pending_overflow()
    }
}

/// Counters for every event, for metrics and tests. Share it with `Arc`.
#[derive(Debug, Default)]
pub struct EventCounters {
    /// See [`WatchdogEvents::ignored_config_access`].
    pub ignored_config_access: AtomicU64,
    /// See [`WatchdogEvents::ignored_mmio_access`].
    pub ignored_mmio_access: AtomicU64,
    /// See [`WatchdogEvents::write_without_unlock`].
    pub write_without_unlock: AtomicU64,
    /// See [`WatchdogEvents::locked_write`].
    pub locked_write: AtomicU64,
    /// See [`WatchdogEvents::kick`].
    pub kick: AtomicU64,
    /// See [`WatchdogEvents::stage1_expired`].
    pub stage1_expired: AtomicU64,
    /// See [`WatchdogEvents::expired`].
    pub expired: AtomicU64,
    /// See [`WatchdogEvents::pending_overflow`].
    pub pending_overflow: AtomicU64,
}

impl EventCounters {
    /// Read one counter.
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

impl WatchdogEvents for EventCounters {
    fn ignored_config_access(&self) {
        bump(&self.ignored_config_access)
    }
    fn ignored_mmio_access(&self) {
        bump(&self.ignored_mmio_access)
    }
    fn write_without_unlock(&self) {
        bump(&self.write_without_unlock)
    }
    fn locked_write(&self) {
        bump(&self.locked_write)
    }
    fn kick(&self) {
        bump(&self.kick)
    }
    fn stage1_expired(&self) {
        bump(&self.stage1_expired)
    }
    fn expired(&self) {
        bump(&self.expired)
    }
    fn pending_overflow(&self) {
        bump(&self.pending_overflow)
    }
}
