//! Command-line arguments of `vmpulse run`.

use std::path::PathBuf;
use std::process::ExitCode;

/// Arguments of `vmpulse run`.
#[derive(clap::Args, Debug)]
pub struct RunArgs {
    /// The VirtualMachine manifest (YAML).
    pub manifest: PathBuf,
}

/// Entry point of `vmpulse run`.
pub fn run(_args: RunArgs) -> ExitCode {
    ExitCode::from(2)
}
