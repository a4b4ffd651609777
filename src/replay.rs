//! Replay of i6300esb register traces (format v1) against the device model.

use std::path::PathBuf;
use std::process::ExitCode;

/// Arguments of `vmpulse replay`.
#[derive(clap::Args, Debug)]
pub struct ReplayArgs {
    /// Watchdog action the device is configured with.
    #[arg(long, default_value = "reset")]
    pub action: String,
    /// Compare with the input instead of printing the model's trace.
    #[arg(long)]
    pub check: bool,
    /// The trace file.
    pub file: PathBuf,
}

/// Entry point of `vmpulse replay`.
pub fn replay_command(_args: ReplayArgs) -> ExitCode {
    ExitCode::from(2)
}
