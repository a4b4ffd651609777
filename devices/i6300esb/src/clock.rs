//! Time as the device sees it: a source of virtual nanoseconds supplied by the host.
//!
//! The device never reads a real clock. A VMM passes one in (for example
//! [`MonotonicClock`], the clock its timerfd counts in); tests pass a
//! [`ManualClock`] and step it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

/// A source of time in nanoseconds. It must never go backwards.
pub trait Clock {
    /// The current time in nanoseconds since an arbitrary, fixed origin.
    fn now_ns(&self) -> u64;
}

impl<C: Clock + ?Sized> Clock for Arc<C> {
    fn now_ns(&self) -> u64 {
        (**self).now_ns()
    }
}

impl<C: Clock + ?Sized> Clock for &C {
    fn now_ns(&self) -> u64 {
        (**self).now_ns()
    }
}

/// A clock that only moves when told to: virtual time for tests, replays and fuzzing.
///
/// Clones share the same time, so a test keeps one clone and hands another to the device.
#[derive(Clone, Debug, Default)]
pub struct ManualClock {
    now: Arc<AtomicU64>,
}

impl ManualClock {
    /// A clock reading `start_ns`.
    pub fn new(start_ns: u64) -> Self {
        ManualClock {
            now: Arc::new(AtomicU64::new(start_ns)),
        }
    }

    /// Set the time. Moving backwards is ignored, so the clock stays monotonic.
    pub fn set(&self, now_ns: u64) {
        self.now.fetch_max(now_ns, Ordering::SeqCst);
    }

    /// Move the time forward by `delta_ns`, saturating at `u64::MAX`.
    pub fn advance(&self, delta_ns: u64) {
        let now = self.now.load(Ordering::SeqCst);
        self.set(now.saturating_add(delta_ns));
    }
}

impl Clock for ManualClock {
    fn now_ns(&self) -> u64 {
        self.now.load(Ordering::SeqCst)
    }
}

/// A host clock: nanoseconds of `CLOCK_MONOTONIC` since creation, the clock a
/// timerfd counts in. The device never reads it on its own; a VMM passes it in.
/// Needs no cargo feature (also re-exported as `adapters::timer::MonotonicClock`).
#[derive(Clone, Copy, Debug)]
pub struct MonotonicClock {
    origin: Instant,
}

impl MonotonicClock {
    /// A clock reading 0 now.
    pub fn new() -> Self {
        MonotonicClock {
            origin: Instant::now(),
        }
    }
}

impl Default for MonotonicClock {
    fn default() -> Self {
        MonotonicClock::new()
    }
}

impl Clock for MonotonicClock {
    #[inline]
    fn now_ns(&self) -> u64 {
        // Seconds and nanoseconds apart: no 128-bit arithmetic on the access path.
        let d = self.origin.elapsed();
        d.as_secs()
            .saturating_mul(1_000_000_000)
            .saturating_add(u64::from(d.subsec_nanos()))
    }
}
