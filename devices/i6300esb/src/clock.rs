//! Time as the device sees it: a source of virtual nanoseconds supplied by the host.
//!
//! The device never reads a real clock. A VMM passes one in (for example
//! [`MonotonicClock`], the clock its timerfd counts in); tests pass a
//! [`ManualClock`] and step it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
#[cfg(not(target_os = "linux"))]
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
///
/// On Linux each reading is one `clock_gettime(CLOCK_MONOTONIC)` of the C library
/// (through rustix's safe wrapper) and one subtraction: it is on every timed guest
/// access, and `std::time::Instant` (the same clock) adds several calls around it.
/// Elsewhere it reads `Instant`.
#[derive(Clone, Copy, Debug)]
pub struct MonotonicClock {
    /// The clock's own reading at creation.
    origin_ns: u64,
}

impl MonotonicClock {
    /// A clock reading 0 now.
    pub fn new() -> Self {
        MonotonicClock {
            origin_ns: monotonic_ns(),
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
        // The clock never goes back below its reading at creation.
        monotonic_ns().saturating_sub(self.origin_ns)
    }
}

/// `CLOCK_MONOTONIC` in nanoseconds since its own origin.
#[cfg(target_os = "linux")]
#[inline]
fn monotonic_ns() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    // Neither field of a CLOCK_MONOTONIC reading is negative. Seconds and
    // nanoseconds apart: no 128-bit arithmetic on the access path.
    (t.tv_sec as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(t.tv_nsec as u64)
}

/// The monotonic clock in nanoseconds since the first reading in this process.
#[cfg(not(target_os = "linux"))]
fn monotonic_ns() -> u64 {
    static ORIGIN: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    let d = ORIGIN.get_or_init(Instant::now).elapsed();
    d.as_secs()
        .saturating_mul(1_000_000_000)
        .saturating_add(u64::from(d.subsec_nanos()))
}

#[cfg(test)]
mod tests {
    use super::{Clock, MonotonicClock};
    use std::time::{Duration, Instant};

    #[test]
    fn monotonic_clock_counts_the_same_nanoseconds_as_instant() {
        // Instant is CLOCK_MONOTONIC on Linux: the clock's reading must lie between
        // the time since just after its creation and the time since just before it.
        let before = Instant::now();
        let clock = MonotonicClock::new();
        let created = Instant::now();
        let mut last = 0;
        for _ in 0..3 {
            std::thread::sleep(Duration::from_millis(5));
            let low = created.elapsed().as_nanos() as u64;
            let now = clock.now_ns();
            let high = before.elapsed().as_nanos() as u64;
            assert!(low <= now && now <= high, "{low} <= {now} <= {high}");
            assert!(now >= last, "never backwards");
            last = now;
        }
        assert!(last >= 15_000_000, "three 5 ms sleeps: {last} ns");
    }
}
