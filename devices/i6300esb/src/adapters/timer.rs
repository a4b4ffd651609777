//! event-manager glue: a subscriber that fires the watchdog from a timerfd.
//!
//! [`WatchdogTimer`] owns a timerfd armed at the device's next deadline and an
//! eventfd. [`WatchdogTimer::new`] installs a [`DeadlineListener`] on the device,
//! so nobody has to tell the timer about guest accesses: register the device on a
//! vm-device bus, this subscriber on an event manager, and it fires on time. When
//! either fd is readable it polls the device, re-arms the timerfd and then, with
//! the device unlocked, hands the expiries to the sink, which may therefore call
//! any method of the device.
//!
//! The listener signals the eventfd only when the deadline moves *earlier* than
//! the one the timerfd is armed at (or appears while it is disarmed). A deadline
//! that moves later (every kick) or goes away (disable, pause) costs nothing on
//! the vCPU's path: the timerfd fires at the old deadline, the poll finds nothing
//! due and re-arms it at the new one. So a guest pinging every few seconds wakes
//! the event loop once per timeout, not once per ping, and a kick storm costs no
//! system call at all. The armed deadline is read and written under the device's
//! lock (the listener runs inside device methods; [`WatchdogTimer::service`]
//! records it before unlocking), so no change can slip between the two.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};
use vmm_sys_util::timerfd::TimerFd;

use crate::action::{ActionSink, Expiry, Stage1Interrupt};
use crate::clock::Clock;
use crate::deadline::DeadlineListener;
use crate::device::I6300Esb;
use crate::events::WatchdogEvents;

/// The host clock a timerfd counts in; it now lives in [`crate::clock`] and needs
/// no cargo feature. Re-exported here for existing users.
pub use crate::clock::MonotonicClock;

const TIMER_EVENT: u32 = 1;
const REARM_EVENT: u32 = 2;

/// The armed deadline's value while the timerfd is disarmed.
const DISARMED: u64 = u64::MAX;

/// The deadline listener [`WatchdogTimer::new`] installs: one eventfd write when
/// the deadline moves earlier than the armed one, from whichever thread moved it.
struct RearmSignal {
    rearm: EventFd,
    /// The deadline the timerfd is armed at ([`DISARMED`] if none); only read or
    /// written with the device locked.
    armed: Arc<AtomicU64>,
}

impl DeadlineListener for RearmSignal {
    fn deadline_changed(&mut self, deadline_ns: Option<u64>) {
        if deadline_ns.is_some_and(|d| d < self.armed.load(Ordering::Relaxed)) {
            // Ask once: the next service re-arms. Non-blocking; a full counter
            // (EAGAIN) already means "re-arm".
            self.armed.store(0, Ordering::Relaxed);
            let _ = self.rearm.write(1);
        }
    }
}

/// What one poll produced, kept until the device is unlocked.
enum Due {
    Interrupt(Stage1Interrupt),
    Expiry(Expiry),
}

/// Collects a poll's output in order (stage-1 interrupts come first).
struct Collect<'a>(&'a mut Vec<Due>);

impl ActionSink for Collect<'_> {
    fn watchdog_expired(&mut self, expiry: Expiry) {
        self.0.push(Due::Expiry(expiry));
    }

    fn stage1_interrupt(&mut self, interrupt: Stage1Interrupt) {
        self.0.push(Due::Interrupt(interrupt));
    }
}

/// An event-manager subscriber driving one device's deadlines with a timerfd.
pub struct WatchdogTimer<C: Clock, E: WatchdogEvents, S: ActionSink> {
    device: Arc<Mutex<I6300Esb<C, E>>>,
    sink: S,
    timer: TimerFd,
    rearm: EventFd,
    armed: Arc<AtomicU64>,
    due: Vec<Due>,
}

impl<C: Clock, E: WatchdogEvents, S: ActionSink> WatchdogTimer<C, E, S> {
    /// A subscriber for `device` delivering expiries to `sink`.
    ///
    /// It installs its deadline listener on the device (replacing any other; see
    /// [`I6300Esb::set_deadline_listener`]), so the timer follows every change of
    /// the deadline from then on. Locks the device once.
    pub fn new(device: Arc<Mutex<I6300Esb<C, E>>>, sink: S) -> io::Result<Self> {
        let rearm = EventFd::new(EFD_NONBLOCK)?;
        let armed = Arc::new(AtomicU64::new(DISARMED));
        let signal = RearmSignal {
            rearm: rearm.try_clone()?,
            armed: armed.clone(),
        };
        device
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .set_deadline_listener(signal);
        Ok(WatchdogTimer {
            device,
            sink,
            timer: TimerFd::new()?,
            rearm,
            armed,
            due: Vec::new(),
        })
    }

    /// The eventfd the device's listener signals when the deadline moves earlier
    /// than the armed timerfd. Writing to it makes the timer poll and read the
    /// deadline again at its next turn. Nobody needs to: the listener does it.
    /// (Replacing the device behind the mutex wholesale would lose the listener;
    /// restore into it with [`I6300Esb::load_state`] instead.)
    pub fn rearm_handle(&self) -> io::Result<EventFd> {
        self.rearm.try_clone()
    }

    /// The sink, for inspection.
    pub fn sink(&self) -> &S {
        &self.sink
    }

    /// The sink, mutably.
    pub fn sink_mut(&mut self) -> &mut S {
        &mut self.sink
    }

    /// Poll the device, arm the timerfd at its next deadline (or disarm it), and
    /// hand what fired to the sink once the device is unlocked.
    pub fn service(&mut self) -> io::Result<()> {
        let next = {
            let mut dev = self.device.lock().unwrap_or_else(|e| e.into_inner());
            dev.poll(&mut Collect(&mut self.due));
            let deadline = dev.next_deadline();
            // Recorded before unlocking: from here on the listener compares
            // against this deadline.
            self.armed
                .store(deadline.unwrap_or(DISARMED), Ordering::Relaxed);
            deadline.map(|deadline| deadline.saturating_sub(dev.clock().now_ns()))
        };
        // Arm before delivering: a sink that moves the deadline (a reset, a pause)
        // signals the eventfd, and the next turn arms the timer again.
        let armed = match next {
            // A zero duration would disarm the timerfd; one nanosecond fires at once.
            Some(delay) => self.timer.reset(Duration::from_nanos(delay.max(1)), None),
            None => self.timer.clear(),
        }
        .map_err(io::Error::from);
        if armed.is_err() {
            // Not armed after all: let any deadline ask for a retry. (Racy
            // without the lock, but only ever towards more signals.)
            self.armed.store(DISARMED, Ordering::Relaxed);
        }
        for due in self.due.drain(..) {
            match due {
                Due::Interrupt(interrupt) => self.sink.stage1_interrupt(interrupt),
                Due::Expiry(expiry) => self.sink.watchdog_expired(expiry),
            }
        }
        armed
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
    use crate::WatchdogAction;
    use event_manager::{EventManager, SubscriberOps};
    use std::sync::mpsc;
    use std::time::Instant;

    fn unlock(d: &mut I6300Esb<MonotonicClock>) {
        d.bar0_write(0x0c, &0x80u16.to_le_bytes());
        d.bar0_write(0x0c, &0x86u16.to_le_bytes());
    }

    /// 1 MHz prescaler, both preloads `units`, output on, timer enabled: each
    /// stage lasts `units` × 960 ns.
    fn arm(d: &mut I6300Esb<MonotonicClock>, units: u32) {
        d.config_write(0x60, &0x0004u16.to_le_bytes());
        unlock(d);
        d.bar0_write(0x00, &units.to_le_bytes());
        unlock(d);
        d.bar0_write(0x04, &units.to_le_bytes());
        d.config_write(0x68, &[0x02]);
    }

    type Dev = Arc<Mutex<I6300Esb<MonotonicClock>>>;
    type Sub<S> = Arc<Mutex<WatchdogTimer<MonotonicClock, crate::NoEvents, S>>>;

    /// A device requesting `action`, its timer subscriber delivering to `sink`,
    /// and an event manager it is registered with. Nothing else: no re-arm glue.
    fn event_loop<S: ActionSink + Send + 'static>(
        action: WatchdogAction,
        sink: impl FnOnce(Dev) -> S,
    ) -> (Dev, Sub<S>, EventManager<Sub<S>>) {
        let dev = Arc::new(Mutex::new(I6300Esb::new(action, MonotonicClock::new())));
        let sink = sink(dev.clone());
        let sub = Arc::new(Mutex::new(WatchdogTimer::new(dev.clone(), sink).unwrap()));
        let mut manager: EventManager<Sub<S>> = EventManager::new().unwrap();
        manager.add_subscriber(sub.clone());
        (dev, sub, manager)
    }

    #[test]
    fn timerfd_fires_the_watchdog_at_its_deadline() {
        let (dev, sub, mut manager) = event_loop(WatchdogAction::InjectNmi, |_| Vec::new());

        // 5000 units per stage: 4.8 ms each, 9.6 ms in all.
        const STAGE_NS: u64 = 5000 * 32 * 30;
        let (before, after, expiry_at) = {
            let mut d = dev.lock().unwrap();
            // The enable instant is read from the device's own clock inside the
            // write, so it is bracketed here and recovered from the deadline.
            let before = d.clock().now_ns();
            arm(&mut d, 5000);
            let after = d.clock().now_ns();
            (before, after, d.next_deadline().unwrap())
        };
        // The deadline is the projected expiry, two stages after the enable.
        let enabled_at = expiry_at - 2 * STAGE_NS;
        assert!(before <= enabled_at && enabled_at <= after);
        // No re-arm call: the device told the timer itself.

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
    fn rearm_and_expired_timer_in_one_batch_never_block() {
        // The timerfd is armed 50 ms out; the guest then shortens the timeout to
        // 1.9 ms and kicks, so the device signals the eventfd (an earlier
        // deadline); by the time the loop runs again both the new deadline and
        // the armed timerfd have passed. One epoll batch holds the re-arm first
        // (ready first) and the timer second. The re-arm's service fires the
        // watchdog and disarms the timerfd, so the timer event that follows must
        // not read it: a blocking read of a disarmed timerfd never returns. The
        // loop runs on a thread so that a hang fails the test instead of stalling it.
        let (done_tx, done_rx) = mpsc::channel();
        std::thread::spawn(move || {
            // 50 ms from enable to expiry: 26042 units × 960 ns per stage.
            const UNITS: u32 = 26_042;
            const EXPIRY: Duration = Duration::from_millis(50);
            let (dev, sub, mut manager) = event_loop(WatchdogAction::None, |_| Vec::new());
            for _attempt in 0..20 {
                let enabled = Instant::now();
                arm(&mut dev.lock().unwrap(), UNITS);
                // Arm the timerfd through the loop (the enable signalled it).
                assert_eq!(manager.run_with_timeout(1000).unwrap(), 1);
                // A 1000-unit timeout and a kick: the deadline moves earlier.
                {
                    let mut d = dev.lock().unwrap();
                    for reg in [0x00, 0x04] {
                        unlock(&mut d);
                        d.bar0_write(reg, &1000u32.to_le_bytes());
                    }
                    unlock(&mut d);
                    d.bar0_write(0x0c, &0x0100u16.to_le_bytes());
                }
                if enabled.elapsed() >= EXPIRY - Duration::from_millis(10) {
                    // Descheduled too long to be sure of the order; start over.
                    dev.lock().unwrap().power_on_reset();
                    while manager.run_with_timeout(100).unwrap() > 0 {}
                    sub.lock().unwrap().sink_mut().clear();
                    continue;
                }
                std::thread::sleep(2 * EXPIRY);
                // Both fds are ready, the eventfd first: one batch of two.
                let in_batch = manager.run_with_timeout(1000).unwrap();
                // Nothing is left afterwards (the timerfd was disarmed).
                let after = manager.run_with_timeout(10).unwrap();
                let fired = sub.lock().unwrap().sink().len();
                done_tx.send((in_batch, after, fired)).unwrap();
                return;
            }
            panic!("could not shorten the timeout within 40 ms of enabling it");
        });
        let (in_batch, after, fired) = done_rx
            .recv_timeout(Duration::from_secs(20))
            .expect("the event loop blocked on a disarmed timerfd");
        assert_eq!(in_batch, 2, "the re-arm and the timer in one epoll batch");
        assert_eq!(after, 0, "the disarmed timerfd stays quiet");
        assert_eq!(fired, 1, "the shortened timeout fired once");
    }

    #[test]
    fn later_deadlines_cost_no_signal() {
        // Kicks move the deadline later: the listener leaves the eventfd alone and
        // the timerfd, firing at the old deadline, catches up.
        let (dev, sub, mut manager) = event_loop(WatchdogAction::Debug, |_| Vec::new());
        let rearm = sub.lock().unwrap().rearm_handle().unwrap();
        arm(&mut dev.lock().unwrap(), 10_000); // 9.6 ms per stage
        assert_eq!(manager.run_with_timeout(1000).unwrap(), 1, "armed");
        for _ in 0..100 {
            let mut d = dev.lock().unwrap();
            unlock(&mut d);
            d.bar0_write(0x0c, &0x0100u16.to_le_bytes());
            // A driver's reads in between: nothing moves.
            let mut b = [0u8; 2];
            d.bar0_read(0x0c, &mut b);
            d.config_read(0x68, &mut b[..1]);
        }
        // EAGAIN: nothing was written to the eventfd by the kicks or the reads.
        assert!(rearm.read().is_err(), "a later deadline signals nothing");
        let kicked = dev.lock().unwrap().next_deadline().unwrap();
        let give_up = Instant::now() + Duration::from_secs(10);
        while sub.lock().unwrap().sink().is_empty() && Instant::now() < give_up {
            manager.run_with_timeout(100).unwrap();
        }
        let fired = sub.lock().unwrap().sink().clone();
        assert_eq!(fired.len(), 1);
        assert_eq!(fired[0].time_ns, kicked, "fired at the kicked deadline");
    }

    /// An action handler that does what a VMM does on `reset` and `pause`, on the
    /// very device that fired, from inside the event loop.
    struct Vmm {
        dev: Dev,
        fired: mpsc::Sender<(Expiry, bool, bool)>,
    }

    impl ActionSink for Vmm {
        fn watchdog_expired(&mut self, expiry: Expiry) {
            let mut d = self.dev.lock().unwrap();
            d.warm_reset();
            d.pause();
            let state = d.state();
            d.resume();
            let _ = self
                .fired
                .send((expiry, state.watchdog.paused, d.watchdog().timeout_flag()));
        }
    }

    #[test]
    fn action_handler_may_use_the_device() {
        let (tx, rx) = mpsc::channel();
        let (done_tx, done_rx) = mpsc::channel();
        std::thread::spawn(move || {
            let (dev, _sub, mut manager) =
                event_loop(WatchdogAction::Reset, move |dev| Vmm { dev, fired: tx });
            arm(&mut dev.lock().unwrap(), 1000);
            let give_up = Instant::now() + Duration::from_secs(10);
            while Instant::now() < give_up {
                manager.run_with_timeout(100).unwrap();
                if dev.lock().unwrap().watchdog().timeout_flag() {
                    break;
                }
            }
            // One more turn: the reset and pause moved nothing the timer has.
            manager.run_with_timeout(10).unwrap();
            let next = dev.lock().unwrap().next_deadline();
            done_tx.send(next).unwrap();
        });
        let (expiry, paused, flag) = rx
            .recv_timeout(Duration::from_secs(20))
            .expect("the action handler deadlocked on the device's lock");
        assert_eq!(expiry.action, WatchdogAction::Reset);
        assert!(paused, "the handler paused the device");
        assert!(flag, "the timeout flag survives the handler's warm reset");
        let next = done_rx.recv_timeout(Duration::from_secs(20)).unwrap();
        assert_eq!(next, None, "after the warm reset nothing is armed");
    }
}
