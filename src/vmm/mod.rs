//! The standalone KVM VMM behind `vmpulse run`.

pub mod bus;
pub mod cli;
pub mod control;
pub mod events;
pub mod guest;
pub mod machine;
pub mod pci;
pub mod router;
pub mod runner;
pub mod serial;
pub mod strategy;
