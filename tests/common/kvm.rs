//! Whether the KVM tests can run here, shared by every test that needs /dev/kvm.
//!
//! Included with `#[path = "common/kvm.rs"] mod kvm;` (or through `run_util`).
//!
//! `/dev/kvm` counts as usable only when it opens read-write and answers
//! `KVM_GET_API_VERSION` with 12, so a file bind-mounted over it (say /dev/null) is caught.
//! Outside CI a missing or unusable /dev/kvm skips the test with a loud line on stderr. With
//! `CI=true` it fails the test instead, naming /dev/kvm: CI must never pass by skipping.
#![allow(dead_code)]

use std::fs::OpenOptions;
use std::os::fd::AsRawFd;

/// `KVM_GET_API_VERSION`, `_IO(KVMIO, 0x00)`.
const KVM_GET_API_VERSION: libc::c_ulong = 0xAE00;
/// The only KVM API version Linux has ever reported.
const KVM_API_VERSION: libc::c_int = 12;

/// Why /dev/kvm cannot be used, or `None` when it can.
pub fn kvm_problem() -> Option<String> {
    let file = match OpenOptions::new().read(true).write(true).open("/dev/kvm") {
        Ok(f) => f,
        Err(e) => return Some(format!("/dev/kvm cannot be opened read-write: {e}")),
    };
    // SAFETY: KVM_GET_API_VERSION takes no argument and only reads the fd; on any other
    // kind of file the ioctl fails with ENOTTY and touches no memory.
    let version = unsafe { libc::ioctl(file.as_raw_fd(), KVM_GET_API_VERSION, 0) };
    if version != KVM_API_VERSION {
        let err = std::io::Error::last_os_error();
        return Some(format!(
            "/dev/kvm is not a usable KVM device (KVM_GET_API_VERSION returned {version}: {err})"
        ));
    }
    None
}

/// Whether the CI environment variable asks for a strict run (`CI=true` or `CI=1`).
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// True when `test` can use KVM. Otherwise, outside CI, prints a loud SKIP line and
/// returns false; under `CI=true` it panics with the reason (which names /dev/kvm).
pub fn kvm_or_skip(test: &str) -> bool {
    match kvm_problem() {
        None => true,
        Some(why) if in_ci() => panic!("{test}: CI=true but {why}"),
        Some(why) => {
            eprintln!("SKIP: {test}: {why}; the KVM test did not run");
            false
        }
    }
}
