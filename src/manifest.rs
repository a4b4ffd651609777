//! The KubeVirt `VirtualMachine` manifest front-end.
//!
//! SKELETON: the types and functions below are the contract with the runner;
//! the manifest engineer fills in parsing and validation.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use i6300esb::WatchdogAction;

use crate::probes::config::ProbeConfig;

/// KubeVirt's `spec.runStrategy`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RunStrategy {
    /// Restart the VM whenever it stops, however it stopped.
    Always,
    /// Restart the VM only when it stopped on a failure (not a guest-initiated poweroff).
    RerunOnFailure,
    /// Run the VM once; never restart it.
    Once,
    /// Do not start the VM.
    Halted,
    /// Start it once (as the user asked); never restart it automatically.
    Manual,
}

/// What a liveness failure does (annotation `vmpulse.io/liveness-action`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LivenessAction {
    /// Stop the VM (KubeVirt's behaviour, the default); runStrategy then applies.
    Stop,
    /// Warm-reset the VM in place.
    Reset,
    /// Ask the guest to shut down, forced after the grace period.
    Shutdown,
}

/// `spec.template.spec.domain.devices.watchdog`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WatchdogSpec {
    /// `name`.
    pub name: String,
    /// `i6300esb.action` (default `reset`).
    pub action: WatchdogAction,
}

/// A validated VirtualMachine: what the runner needs, defaults applied.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VmSpec {
    /// `metadata.name`.
    pub name: String,
    /// `spec.runStrategy` (or `spec.running`: true = Always, false = Halted).
    pub run_strategy: RunStrategy,
    /// The watchdog device, if any.
    pub watchdog: Option<WatchdogSpec>,
    /// Guest memory asked for in `domain.resources.requests.memory` (or
    /// `domain.memory.guest`), in bytes; `None` when not given.
    pub memory_bytes: Option<u64>,
    /// `terminationGracePeriodSeconds` (default 30 s).
    pub termination_grace_period: Duration,
    /// `livenessProbe`.
    pub liveness: Option<ProbeConfig>,
    /// `readinessProbe`.
    pub readiness: Option<ProbeConfig>,
    /// What a liveness failure does.
    pub liveness_action: LivenessAction,
    /// Field paths present in the manifest that vmpulse accepts but does not use.
    pub ignored: Vec<String>,
}

/// One problem in a manifest, with the path of the field it concerns.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ManifestProblem {
    /// Dotted field path, e.g. `spec.template.spec.domain.devices.watchdog.i6300esb.action`.
    pub path: String,
    /// What is wrong, e.g. `unknown action "explode"`.
    pub message: String,
}

impl std::fmt::Display for ManifestProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

/// Parse and validate manifest text. Every problem found is returned, never a panic.
pub fn parse_str(_text: &str) -> Result<VmSpec, Vec<ManifestProblem>> {
    Err(vec![ManifestProblem {
        path: String::new(),
        message: "not implemented".into(),
    }])
}

/// Read, parse and validate a manifest file.
pub fn load(path: &Path) -> Result<VmSpec, Vec<ManifestProblem>> {
    match std::fs::read_to_string(path) {
        Ok(text) => parse_str(&text),
        Err(e) => Err(vec![ManifestProblem {
            path: path.display().to_string(),
            message: format!("cannot read: {e}"),
        }]),
    }
}

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
