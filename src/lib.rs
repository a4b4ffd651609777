//! vmpulse: the `vmpulse` command and the library behind it.
//!
//! The pieces live in crates of their own, each usable alone:
//!
//! - `i6300esb` (`devices/i6300esb`): the watchdog device model;
//! - [`probes`] (`vmpulse-probes`, `src/probes`): liveness/readiness probes driven
//!   from an epoll loop;
//! - [`manifest`] (`vmpulse-manifest`, `src/manifest`): the KubeVirt
//!   `VirtualMachine` front-end and its validation;
//! - [`vmm`] (`vmpulse-vmm`, `src/vmm`): the standalone KVM VMM behind `vmpulse run`.
//!
//! This crate adds the command line: [`cli`] (`vmpulse run`), [`validate`]
//! (`vmpulse validate`), [`replay`] (`vmpulse replay`, the trace checker) and [`ctl`]
//! (`vmpulse ctl`, the client of `vmpulse run --api-socket`).
#![deny(missing_docs)]
#![warn(clippy::undocumented_unsafe_blocks)]

pub mod cli;
pub mod ctl;
pub mod replay;
pub mod validate;

pub use vmpulse_manifest as manifest;
pub use vmpulse_probes as probes;
pub use vmpulse_vmm as vmm;
