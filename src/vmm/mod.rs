//! The standalone KVM VMM behind `vmpulse run`.

pub mod cli;
pub mod machine;
