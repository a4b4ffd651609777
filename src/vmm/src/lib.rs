//! The standalone KVM VMM behind `vmpulse run`: the machine, its devices, the built-in test guest and the run loop.

pub mod api;
pub mod bus;
pub mod control;
pub mod controller;
pub mod events;
pub mod guest;
pub mod machine;
pub mod metrics;
pub mod pci;
pub mod platform;
pub mod router;
pub mod runner;
pub mod sched;
pub mod serial;
pub mod status;
pub mod strategy;
