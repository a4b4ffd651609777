//! Optional glue to rust-vmm traits, each behind its own cargo feature.
//!
//! - `vm-device`: [`I6300Esb`](crate::I6300Esb) implements vm-device's
//!   `MutDeviceMmio` for BAR0.
//! - `event-manager`: [`timer::WatchdogTimer`] is an event-manager
//!   `MutEventSubscriber` that arms a timerfd at the device's deadline.

#[cfg(feature = "vm-device")]
pub mod mmio;
#[cfg(feature = "event-manager")]
pub mod timer;
