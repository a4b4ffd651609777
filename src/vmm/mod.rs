//! The standalone KVM VMM behind `vmpulse run`.

pub mod cli;
pub mod events;
pub mod machine;
pub mod router;
pub mod runner;
pub mod strategy;
