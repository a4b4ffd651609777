//! event-manager glue: a subscriber that fires the watchdog from a timerfd.
//!
//! [`WatchdogTimer`] owns a timerfd armed at the device's next deadline and an
//! eventfd the VMM signals (through [`WatchdogTimer::rearm_handle`]) after guest
//! accesses that may have moved the deadline. When either is readable it polls the
//! device, hands expiries to the sink and re-arms.

use std::io;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};
use vmm_sys_util::timerfd::TimerFd;

use crate::action::ActionSink;
use crate::clock::Clock;
use crate::device::I6300Esb;
use crate::events::WatchdogEvents;

/// A host clock for the device: nanoseconds of `CLOCK_MONOTONIC` since creation,
/// the clock a timerfd counts in. It lives here, outside the device core.
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
    fn now_ns(&self) -> u64 {
        u64::try_from(self.origin.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }
}

const TIMER_EVENT: u32 = 1;
const REARM_EVENT: u32 = 2;

/// An event-manager subscriber driving one device's deadlines with a timerfd.
pub struct WatchdogTimer<C: Clock, E: WatchdogEvents, S: ActionSink> {
    device: Arc<Mutex<I6300Esb<C, E>>>,
    sink: S,
    timer: TimerFd,
    rearm: EventFd,
}

impl<C: Clock, E: WatchdogEvents, S: ActionSink> WatchdogTimer<C, E, S> {
    /// A subscriber for `device` delivering expiries to `sink`.
    pub fn new(device: Arc<Mutex<I6300Esb<C, E>>>, sink: S) -> io::Result<Self> {
        Ok(WatchdogTimer {
            device,
            sink,
            timer: TimerFd::new()?,
            rearm: EventFd::new(EFD_NONBLOCK)?,
        })
    }

    /// An eventfd to write to after a guest access, so the timer follows the deadline.
    pub fn rearm_handle(&self) -> io::Result<EventFd> {
        self.rearm.try_clone()
    }

    /// The sink, for inspection.
    pub fn sink(&self) -> &S {
        &self.sink
    }

    /// Poll the device and arm the timerfd at its next deadline (or disarm it).
    pub fn service(&mut self) -> io::Result<()> {
        let next = {
            let mut dev = self.device.lock().unwrap_or_else(|e| e.into_inner());
            dev.poll(&mut self.sink);
            dev.next_deadline()
                .map(|deadline| deadline.saturating_sub(dev.clock().now_ns()))
        };
        match next {
            // A zero duration would disarm the timerfd; one nanosecond fires at once.
            Some(delay) => self.timer.reset(Duration::from_nanos(delay.max(1)), None),
            None => self.timer.clear(),
        }
        .map_err(io::Error::from)
    }
}

impl<C: Clock, E: WatchdogEvents, S: ActionSink> MutEventSubscriber for WatchdogTimer<C, E, S> {
    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        // The timerfd is not read: `service` always re-arms or disarms it, which
        // resets its expiry count and makes it unreadable again. Reading it would
        // block (vmm-sys-util opens it blocking) whenever a rearm request in the
        // same epoll batch had already re-armed it, possibly for ever if the
        // device then had no deadline.
        if events.data() == REARM_EVENT {
            // Non-blocking; an empty counter (EAGAIN) is fine.
            let _ = self.rearm.read();
        }
        if let Err(e) = self.service() {
            log::error!("i6300esb: cannot arm the watchdog timer: {e}");
        }
    }

    fn init(&mut self, ops: &mut EventOps) {
        for (fd, data) in [
            (&self.timer as &dyn std::os::fd::AsRawFd, TIMER_EVENT),
            (&self.rearm, REARM_EVENT),
        ] {
            if let Err(e) = ops.add(Events::with_data_raw(fd.as_raw_fd(), data, EventSet::IN)) {
                log::error!("i6300esb: cannot register with the event manager: {e:?}");
            }
        }
        if let Err(e) = self.service() {
            log::error!("i6300esb: cannot arm the watchdog timer: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Expiry, WatchdogAction};
    use event_manager::{EventManager, SubscriberOps};

    fn unlock(d: &mut I6300Esb<MonotonicClock>) {
        d.bar0_write(0x0c, &0x80u16.to_le_bytes());
        d.bar0_write(0x0c, &0x86u16.to_le_bytes());
    }

    type Dev = Arc<Mutex<I6300Esb<MonotonicClock>>>;
    type Sub = Arc<Mutex<WatchdogTimer<MonotonicClock, crate::NoEvents, Vec<Expiry>>>>;

    /// A device requesting `action`, its timer subscriber (collecting expiries), the
    /// subscriber's re-arm eventfd, and an event manager it is registered with.
    fn event_loop(action: WatchdogAction) -> (Dev, Sub, EventFd, EventManager<Sub>) {
        let dev = Arc::new(Mutex::new(I6300Esb::new(action, MonotonicClock::new())));
        let sub = Arc::new(Mutex::new(
            WatchdogTimer::new(dev.clone(), Vec::<Expiry>::new()).unwrap(),
        ));
        let rearm = sub.lock().unwrap().rearm_handle().unwrap();
        let mut manager: EventManager<Sub> = EventManager::new().unwrap();
        manager.add_subscriber(sub.clone());
        (dev, sub, rearm, manager)
    }

    #[test]
    fn timerfd_fires_the_watchdog_at_its_deadline() {
        let (dev, sub, rearm, mut manager) = event_loop(WatchdogAction::InjectNmi);

        // 1 MHz prescaler, 5000 units per stage: 4.8 ms each, 9.6 ms in all.
        const STAGE_NS: u64 = 5000 * 32 * 30;
        let (before, after, expiry_at) = {
            let mut d = dev.lock().unwrap();
            d.config_write(0x60, &0x0004u16.to_le_bytes());
            unlock(&mut d);
            d.bar0_write(0x00, &5000u32.to_le_bytes());
            unlock(&mut d);
            d.bar0_write(0x04, &5000u32.to_le_bytes());
            // The enable instant is read from the device's own clock inside the
            // write, so it is bracketed here and recovered from the deadline.
            let before = d.clock().now_ns();
            d.config_write(0x68, &[0x02]);
            let after = d.clock().now_ns();
            (before, after, d.next_deadline().unwrap())
        };
        // The deadline is the projected expiry, two stages after the enable.
        let enabled_at = expiry_at - 2 * STAGE_NS;
        assert!(before <= enabled_at && enabled_at <= after);
        rearm.write(1).unwrap();

        let give_up = Instant::now() + Duration::from_secs(10);
        while sub.lock().unwrap().sink().is_empty() && Instant::now() < give_up {
            manager.run_with_timeout(100).unwrap();
        }
        let fired = sub.lock().unwrap().sink().clone();
        assert_eq!(
            fired.len(),
            1,
            "the watchdog fired once through the timerfd"
        );
        assert_eq!(fired[0].action, WatchdogAction::InjectNmi);
        assert_eq!(fired[0].time_ns, expiry_at);
        assert_eq!(fired[0].time_ns - enabled_at, 2 * STAGE_NS);
        // The timerfd never fires early: the expiry was delivered after its time.
        assert!(dev.lock().unwrap().clock().now_ns() >= fired[0].time_ns);
        assert!(dev.lock().unwrap().watchdog().timeout_flag());
        assert!(dev.lock().unwrap().next_deadline().is_none());
    }

    #[test]
    fn rearm_and_timer_in_one_batch_never_block() {
        // A rearm request that disarms the timer, processed before a timer event
        // of the same epoll batch, must not leave the subscriber blocked reading
        // a disarmed timerfd. Run the loop on a thread so a hang fails the test.
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let (dev, sub, rearm, mut manager) = event_loop(WatchdogAction::None);
            {
                // 1 MHz prescaler, 1000 units: stage 1 ends after 0.96 ms.
                let mut d = dev.lock().unwrap();
                d.config_write(0x60, &0x0004u16.to_le_bytes());
                unlock(&mut d);
                d.bar0_write(0x00, &1000u32.to_le_bytes());
                d.config_write(0x68, &[0x02]);
            }
            rearm.write(1).unwrap();
            manager.run_with_timeout(100).unwrap();
            // Disable (no deadline any more) and ask for a rearm first; then let the
            // armed timerfd expire, so both are ready, the rearm ahead of the timer.
            dev.lock().unwrap().config_write(0x68, &[0x00]);
            rearm.write(1).unwrap();
            std::thread::sleep(Duration::from_millis(5));
            manager.run_with_timeout(100).unwrap();
            manager.run_with_timeout(10).unwrap();
            let fired = sub.lock().unwrap().sink().len();
            done_tx.send(fired).unwrap();
        });
        let fired = done_rx
            .recv_timeout(Duration::from_secs(10))
            .expect("the event loop blocked on a disarmed timerfd");
        assert_eq!(fired, 0, "a disabled watchdog never fires");
    }
}
