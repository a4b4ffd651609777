//! The `vmpulse` command line: parse arguments, call into the library.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// An i6300esb watchdog and liveness/readiness probes for Rust VMMs.
#[derive(Parser)]
#[command(name = "vmpulse", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
// Built once per process: the size of `run`'s flags does not matter.
#[allow(clippy::large_enum_variant)]
enum Command {
    /// Boot a KubeVirt VirtualMachine manifest on KVM with the watchdog and probes.
    Run(vmpulse::cli::RunArgs),
    /// Check a KubeVirt VirtualMachine manifest and report every problem.
    Validate(vmpulse::validate::ValidateArgs),
    /// Replay an i6300esb register trace against the device model.
    Replay(vmpulse::replay::ReplayArgs),
    /// Ask a running `vmpulse run --api-socket PATH` for its status, or to pause, resume,
    /// reset, stop or shut down the VM.
    Ctl(vmpulse::ctl::CtlArgs),
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    match Cli::parse().command {
        Command::Run(args) => vmpulse::cli::run(args),
        Command::Validate(args) => vmpulse::validate::validate_command(args),
        Command::Replay(args) => vmpulse::replay::replay_command(args),
        Command::Ctl(args) => vmpulse::ctl::ctl_command(args),
    }
}
