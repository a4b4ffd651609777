//! vmpulse: an emulated i6300esb watchdog and KubeVirt-style liveness/readiness
//! probes for rust-vmm based VMMs, plus a small standalone KVM VMM that runs test
//! guests with them.
//!
//! - [`replay`]: replays and checks i6300esb register traces against the device model.
//! - [`manifest`]: the KubeVirt `VirtualMachine` front-end and its validation.
//! - [`probes`]: liveness/readiness probes driven from an epoll loop.
//! - [`vmm`]: the standalone KVM VMM behind `vmpulse run`.
#![deny(missing_docs)]
#![warn(clippy::undocumented_unsafe_blocks)]

pub mod manifest;
pub mod probes;
pub mod replay;
pub mod vmm;
