//! The KubeVirt `VirtualMachine` manifest front-end.

use std::path::PathBuf;
use std::process::ExitCode;

/// Arguments of `vmpulse validate`.
#[derive(clap::Args, Debug)]
pub struct ValidateArgs {
    /// The VirtualMachine manifest (YAML).
    pub file: PathBuf,
}

/// Entry point of `vmpulse validate`.
pub fn validate_command(_args: ValidateArgs) -> ExitCode {
    ExitCode::from(2)
}
