//! How the device tells its host that its next deadline moved.
//!
//! A host arms one timer at [`I6300Esb::next_deadline`](crate::I6300Esb::next_deadline).
//! Guest accesses (configuration or BAR0), resets, a state load, pause and resume
//! can move that deadline. Instead of asking again after each of them, the host
//! installs a [`DeadlineListener`] with
//! [`I6300Esb::set_deadline_listener`](crate::I6300Esb::set_deadline_listener): the
//! device compares its deadline with the last one it reported after each such call
//! and calls the listener only when it differs. A read that changes nothing costs
//! one comparison, never a call.
//!
//! [`I6300Esb::poll`](crate::I6300Esb::poll) is the exception: its caller is the
//! host's timer, which asks `next_deadline()` after polling anyway, so the change a
//! poll makes is recorded as reported without a call.
//!
//! The listener runs inside the device method that moved the deadline, so under
//! whatever lock the host holds around the device: it must not lock the device
//! itself. Signalling an eventfd or setting a flag is what it is for.

use std::fmt;

/// Hears every change of the device's next deadline (see the [module](self) docs).
///
/// `Send + Sync` so that the device stays both, whatever lock the host keeps it in.
pub trait DeadlineListener: Send + Sync {
    /// The device's next deadline is now `deadline_ns` (in its clock's nanoseconds;
    /// `None`: no deadline until the guest acts). Called only when the value
    /// differs from the one last reported.
    fn deadline_changed(&mut self, deadline_ns: Option<u64>);
}

impl<F: FnMut(Option<u64>) + Send + Sync> DeadlineListener for F {
    fn deadline_changed(&mut self, deadline_ns: Option<u64>) {
        self(deadline_ns)
    }
}

/// The listener slot of a device, with the last deadline it heard of.
#[derive(Default)]
pub(crate) struct Notifier {
    listener: Option<Box<dyn DeadlineListener>>,
    reported: Option<u64>,
}

impl Notifier {
    /// Install `listener` and tell it `current` at once.
    pub(crate) fn set(&mut self, mut listener: Box<dyn DeadlineListener>, current: Option<u64>) {
        listener.deadline_changed(current);
        self.reported = current;
        self.listener = Some(listener);
    }

    pub(crate) fn take(&mut self) -> Option<Box<dyn DeadlineListener>> {
        self.listener.take()
    }

    /// Call the listener if `current` differs from what it last heard.
    #[inline]
    pub(crate) fn update(&mut self, current: Option<u64>) {
        if current != self.reported {
            if let Some(listener) = self.listener.as_mut() {
                self.reported = current;
                listener.deadline_changed(current);
            }
        }
    }

    /// Record `current` as known to the host without calling the listener.
    #[inline]
    pub(crate) fn record(&mut self, current: Option<u64>) {
        self.reported = current;
    }
}

impl fmt::Debug for Notifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Notifier")
            .field("listener", &self.listener.as_ref().map(|_| "..."))
            .field("reported", &self.reported)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc::{channel, Receiver};

    use crate::{I6300Esb, ManualClock, WatchdogAction};

    /// A device whose listener reports into a channel, and the clock.
    fn device() -> (I6300Esb<ManualClock>, ManualClock, Receiver<Option<u64>>) {
        let clock = ManualClock::new(1_000);
        let mut dev = I6300Esb::new(WatchdogAction::Reset, clock.clone());
        let (tx, rx) = channel();
        dev.set_deadline_listener(move |d: Option<u64>| tx.send(d).unwrap());
        assert_eq!(
            rx.try_recv(),
            Ok(None),
            "the listener hears the deadline at once"
        );
        (dev, clock, rx)
    }

    fn heard(rx: &Receiver<Option<u64>>) -> Vec<Option<u64>> {
        rx.try_iter().collect()
    }

    fn unlock(d: &mut I6300Esb<ManualClock>) {
        d.bar0_write(0x0c, &0x80u16.to_le_bytes());
        d.bar0_write(0x0c, &0x86u16.to_le_bytes());
    }

    #[test]
    fn only_changes_are_reported() {
        let (mut dev, clock, rx) = device();
        // Header traffic and the unlock sequence move nothing.
        dev.config_write(0x04, &0x0002u16.to_le_bytes());
        dev.config_read_u32(0x00);
        unlock(&mut dev);
        dev.bar0_write(0x00, &100u32.to_le_bytes());
        assert_eq!(heard(&rx), vec![], "no deadline while disabled");
        // Enabling through configuration space creates one.
        dev.config_write(0x68, &[0x02]);
        let first = dev.next_deadline();
        assert!(first.is_some());
        assert_eq!(heard(&rx), vec![first]);
        // Reads of every register, in both spaces, report nothing.
        let mut b = [0u8; 4];
        for off in [0x00, 0x04, 0x0c] {
            dev.bar0_read(off, &mut b[..2]);
        }
        let mut c = [0u8; 1];
        dev.config_read(0x68, &mut c);
        let mut c2 = [0u8; 2];
        dev.config_read(0x60, &mut c2);
        assert_eq!(heard(&rx), vec![]);
        // A kick later on moves the deadline: one report.
        clock.advance(1_000_000);
        unlock(&mut dev);
        dev.bar0_write(0x0c, &0x0100u16.to_le_bytes());
        let kicked = dev.next_deadline();
        assert_ne!(kicked, first);
        assert_eq!(heard(&rx), vec![kicked]);
        // A second kick at the same instant lands on the same deadline: silence.
        unlock(&mut dev);
        dev.bar0_write(0x0c, &0x0100u16.to_le_bytes());
        assert_eq!(heard(&rx), vec![]);
    }

    #[test]
    fn reset_pause_resume_and_load_state_are_reported() {
        let (mut dev, clock, rx) = device();
        dev.config_write(0x68, &[0x02]);
        let armed = dev.next_deadline();
        assert_eq!(heard(&rx), vec![armed]);
        let saved = dev.state();
        assert_eq!(heard(&rx), vec![], "saving moves nothing");

        dev.pause();
        assert_eq!(heard(&rx), vec![None], "a frozen countdown has no deadline");
        clock.advance(5_000);
        dev.resume();
        let resumed = dev.next_deadline();
        assert_eq!(resumed, armed.map(|d| d + 5_000));
        assert_eq!(heard(&rx), vec![resumed]);

        dev.warm_reset();
        assert_eq!(heard(&rx), vec![None]);
        dev.load_state(&saved).unwrap();
        let loaded = dev.next_deadline();
        assert!(loaded.is_some());
        assert_eq!(heard(&rx), vec![loaded]);
        dev.power_on_reset();
        assert_eq!(heard(&rx), vec![None]);

        // A bad state changes nothing and reports nothing.
        let mut bad = saved.clone();
        bad.version = 0xffff;
        assert!(dev.load_state(&bad).is_err());
        assert_eq!(dev.next_deadline(), None);
        assert_eq!(heard(&rx), vec![]);
    }

    #[test]
    fn poll_is_not_reported_and_records_what_the_host_read() {
        let (mut dev, clock, rx) = device();
        // Output on, short preloads: 1 unit per stage at 1 kHz.
        unlock(&mut dev);
        dev.bar0_write(0x00, &1u32.to_le_bytes());
        unlock(&mut dev);
        dev.bar0_write(0x04, &1u32.to_le_bytes());
        dev.config_write(0x68, &[0x02]);
        let deadline = dev.next_deadline().unwrap();
        assert_eq!(heard(&rx), vec![Some(deadline)]);
        clock.set(deadline);
        let mut fired = Vec::new();
        assert_eq!(dev.poll(&mut fired), 1);
        assert_eq!(dev.next_deadline(), None);
        assert_eq!(heard(&rx), vec![], "the poller reads the deadline itself");
        // The next change is measured from what the poll left.
        dev.config_write(0x68, &[0x02]);
        assert_eq!(heard(&rx), vec![dev.next_deadline()]);
        assert!(dev.take_deadline_listener().is_some());
        dev.warm_reset();
        assert_eq!(heard(&rx), vec![], "no listener, no report");
    }

    #[test]
    fn power_on_reset_drops_unpolled_expiries_warm_reset_keeps_them() {
        for power_on in [false, true] {
            let (mut dev, clock, rx) = device();
            unlock(&mut dev);
            dev.bar0_write(0x00, &1u32.to_le_bytes());
            unlock(&mut dev);
            dev.bar0_write(0x04, &1u32.to_le_bytes());
            dev.config_write(0x68, &[0x02]);
            let deadline = dev.next_deadline().unwrap();
            // The stage ends pass; a guest read catches them up before any poll.
            clock.set(deadline + 10);
            let mut b = [0u8; 2];
            dev.bar0_read(0x0c, &mut b);
            assert_eq!(dev.next_deadline(), Some(deadline), "an expiry waits");
            let mut fired = Vec::new();
            if power_on {
                dev.power_on_reset();
                assert_eq!(dev.next_deadline(), None);
                assert_eq!(dev.poll(&mut fired), 0, "the old machine's expiry is gone");
                assert_eq!(heard(&rx).last(), Some(&None));
            } else {
                dev.warm_reset();
                assert_eq!(dev.poll(&mut fired), 1, "a warm reset keeps it");
                assert_eq!(fired[0].time_ns, deadline);
            }
        }
    }
}
