//! Optional glue to rust-vmm traits, each behind its own cargo feature.
//!
//! - `vm-device`: [`I6300Esb`](crate::I6300Esb) implements vm-device's
//!   `MutDeviceMmio` for BAR0.
//! - `event-manager`: `timer::WatchdogTimer` is an event-manager
//!   `MutEventSubscriber` that arms a timerfd at the device's deadline.
//!
//! They compose with no glue: `WatchdogTimer::new` installs the device's
//! [`DeadlineListener`](crate::DeadlineListener), so a guest access through a
//! vm-device bus, or a configuration write from the VMM's PCI code, that moves the
//! deadline earlier wakes the timer by itself. Register the shared device on an
//! `IoManager` and the timer on an `EventManager`, and it fires on time (see the
//! `rust_vmm` example and the test below).

#[cfg(feature = "vm-device")]
pub mod mmio;
#[cfg(feature = "event-manager")]
pub mod timer;

/// The two adapters together, with no glue: a vm-device `IoManager` carries
/// BAR0, an event-manager loop runs the timer, on a real timerfd.
#[cfg(all(test, feature = "vm-device", feature = "event-manager"))]
mod tests {
    use std::sync::{Arc, Mutex};
    use std::time::{Duration, Instant};

    use event_manager::{EventManager, SubscriberOps};
    use vm_device::bus::{MmioAddress, MmioRange};
    use vm_device::device_manager::{IoManager, MmioManager};

    use super::timer::WatchdogTimer;
    use crate::{Clock, Expiry, I6300Esb, MonotonicClock, NoEvents, WatchdogAction};

    const BAR0: u64 = 0xfebf_1000;

    #[test]
    fn io_manager_and_event_manager_compose_without_glue() {
        let dev = Arc::new(Mutex::new(I6300Esb::new(
            WatchdogAction::Poweroff,
            MonotonicClock::new(),
        )));
        let mut io = IoManager::new();
        io.register_mmio(MmioRange::new(MmioAddress(BAR0), 16).unwrap(), dev.clone())
            .unwrap();
        type Sub = Arc<Mutex<WatchdogTimer<MonotonicClock, NoEvents, Vec<Expiry>>>>;
        let timer: Sub = Arc::new(Mutex::new(
            WatchdogTimer::new(dev.clone(), Vec::new()).unwrap(),
        ));
        let mut manager: EventManager<Sub> = EventManager::new().unwrap();
        manager.add_subscriber(timer.clone());

        // Firmware and driver probe: 1 MHz prescaler, output on, BAR0 placed.
        {
            let mut d = dev.lock().unwrap();
            d.config_write(0x10, &(BAR0 as u32).to_le_bytes());
            d.config_write(0x04, &0x0002u16.to_le_bytes());
            d.config_write(0x60, &0x0004u16.to_le_bytes());
        }
        // Both preloads through the bus: 10000 units, 9.6 ms per stage.
        let w = |off: u64, data: &[u8]| io.mmio_write(MmioAddress(BAR0 + off), data).unwrap();
        for reg in [0x00u64, 0x04] {
            w(0x0c, &0x80u16.to_le_bytes());
            w(0x0c, &0x86u16.to_le_bytes());
            w(reg, &10_000u32.to_le_bytes());
        }
        // Enable through configuration space: the deadline moves with no hook
        // but the device's own listener.
        let enabled = Instant::now();
        dev.lock().unwrap().config_write(0x68, &[0x02]);
        let expiry_at = dev.lock().unwrap().next_deadline().unwrap();

        // Kick through the bus halfway: the deadline moves later, again unaided.
        while enabled.elapsed() < Duration::from_millis(10) {
            manager.run_with_timeout(1).unwrap();
        }
        w(0x0c, &0x80u16.to_le_bytes());
        w(0x0c, &0x86u16.to_le_bytes());
        w(0x0c, &0x0100u16.to_le_bytes());
        let kicked_expiry = dev.lock().unwrap().next_deadline().unwrap();
        assert!(kicked_expiry > expiry_at);

        let give_up = Instant::now() + Duration::from_secs(10);
        while timer.lock().unwrap().sink().is_empty() && Instant::now() < give_up {
            manager.run_with_timeout(100).unwrap();
        }
        let fired = timer.lock().unwrap().sink().clone();
        assert_eq!(fired.len(), 1, "the watchdog fired through the timerfd");
        assert_eq!(fired[0].action, WatchdogAction::Poweroff);
        assert_eq!(fired[0].time_ns, kicked_expiry, "the kick counted");
        // On time: delivered after the deadline, and not long after it.
        let now = dev.lock().unwrap().clock().now_ns();
        assert!(now >= kicked_expiry);
        assert!(
            now - kicked_expiry < 2_000_000_000,
            "fired within 2 s of its deadline"
        );
        // The timeout flag, read back through the bus.
        let mut b = [0u8; 2];
        io.mmio_read(MmioAddress(BAR0 + 0x0c), &mut b).unwrap();
        assert_eq!(u16::from_le_bytes(b) & 0x0200, 0x0200);
    }
}
