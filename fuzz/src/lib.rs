//! Shared code of vmpulse's fuzz targets (the `common` module of the rust-vmm
//! layout): the operation enum decoded with `arbitrary`, the driver that applies
//! it to the i6300esb model and asserts the invariants, and the seed recipes.
//!
//! The fuzz target only calls [`run`] on [`decode`]d bytes; `cargo test` in this
//! directory replays every file in `corpus/seeds/` through the same code.
#![deny(missing_docs)]

pub mod driver;
pub mod ops;
pub mod pci;
pub mod peers;
pub mod seeds;
pub mod texts;
pub mod tracker;

pub use driver::{run, Harness, Shadow};
pub use ops::{decode, encode, FuzzInput, Op};
