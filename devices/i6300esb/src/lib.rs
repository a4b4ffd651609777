//! A model of the Intel 6300ESB (i6300esb) PCI watchdog, faithful to the device
//! Linux's `i6300esb.ko` and QEMU 7.2 know, for any Rust VMM.
//!
//! The device is a plain struct: no threads, no file descriptors, no real clock.
//! Time comes from a [`Clock`] the host injects; the device says when it next needs
//! attention ([`I6300Esb::next_deadline`]) and [`I6300Esb::poll`] runs what is due,
//! handing each expiry to an [`ActionSink`]. The host decides what `reset`,
//! `poweroff`, `shutdown`, `pause`, `none`, `inject-nmi` or `debug` mean for it.
//!
//! ```
//! use i6300esb::{ActionSink, Expiry, I6300Esb, ManualClock, WatchdogAction};
//!
//! let clock = ManualClock::new(0);
//! let mut dev = I6300Esb::new(WatchdogAction::Reset, clock.clone());
//! // Firmware: BAR0 at 0xfebf1000, memory decode on.
//! dev.config_write(0x10, &0xfebf_1000u32.to_le_bytes());
//! dev.config_write(0x04, &0x0002u16.to_le_bytes());
//! assert_eq!(dev.bar0_address(), Some(0xfebf_1000));
//!
//! // The Linux driver: unlock, set both preloads to 1 s (1 << 9 units), enable.
//! let unlock = |d: &mut I6300Esb<ManualClock>| {
//!     d.bar0_write(0x0c, &0x80u16.to_le_bytes());
//!     d.bar0_write(0x0c, &0x86u16.to_le_bytes());
//! };
//! unlock(&mut dev);
//! dev.bar0_write(0x00, &(1u32 << 9).to_le_bytes());
//! unlock(&mut dev);
//! dev.bar0_write(0x04, &(1u32 << 9).to_le_bytes());
//! dev.config_write(0x68, &[0x02]);
//!
//! // Each stage lasts 512 units of 983,040 ns; the host's next deadline is the
//! // expiry at the end of stage 2.
//! assert_eq!(dev.next_deadline(), Some(2 * 503_316_480));
//! let mut fired: Vec<Expiry> = Vec::new();
//! clock.set(2 * 503_316_480);
//! dev.poll(&mut fired);
//! assert_eq!(fired, vec![Expiry { action: WatchdogAction::Reset, time_ns: 1_006_632_960 }]);
//!
//! // The VMM resets the machine; the flag survives for the next boot to read.
//! dev.warm_reset();
//! assert!(dev.watchdog().timeout_flag());
//! ```
//!
//! The default [`Profile::Qemu`] reproduces QEMU 7.2's quirks exactly; the opt-in
//! [`Profile::Hardware`] follows Intel's datasheet where it is known (see
//! [`profile`] for the table of differences).
//!
//! BAR0 takes naturally aligned accesses; [`I6300Esb::bar0_read_split`] and
//! [`I6300Esb::bar0_write_split`] deliver any access of up to 8 bytes in the
//! aligned pieces QEMU on KVM would (see [`access`]). Configuration space
//! 0x40-0xFF is plain storage in the QEMU profile, as in QEMU (see [`I6300Esb`]).
//!
//! A VMM that owns its PCI header code embeds [`Watchdog`] alone; see the
//! `embed_registers` example in this crate for a wrapper of that kind.
//!
//! The device also tells its host when the deadline moves: see [`deadline`]
//! and [`I6300Esb::set_deadline_listener`].
//!
//! Optional adapters, each behind a cargo feature: `vm-device` (BAR0 as a
//! vm-device `MutDeviceMmio`) and `event-manager` (a timerfd-driven
//! `MutEventSubscriber` that installs the device's deadline listener itself, so
//! the two compose with no glue); see [`adapters`] and the `rust_vmm` example.
#![deny(missing_docs)]
#![warn(clippy::undocumented_unsafe_blocks)]

pub mod access;
pub mod action;
pub mod adapters;
pub mod clock;
pub mod config_space;
pub mod deadline;
pub mod device;
pub mod events;
pub mod profile;
pub mod regs;
pub mod state;
pub mod timer;
pub mod watchdog;

pub use access::{split_access, SplitAccess};
pub use action::{
    ActionSink, Expiry, InterruptKind, Stage1Interrupt, UnknownAction, WatchdogAction,
};
pub use clock::{Clock, ManualClock, MonotonicClock};
pub use config_space::ConfigHeader;
pub use deadline::DeadlineListener;
pub use device::I6300Esb;
pub use events::{EventCounters, NoEvents, WatchdogEvents};
pub use profile::Profile;
pub use state::{I6300EsbState, StateError, WatchdogState};
pub use timer::{stage_duration_ns, Stage};
pub use watchdog::Watchdog;

#[cfg(test)]
mod tests;
