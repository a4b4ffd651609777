//! Liveness and readiness probes with Kubernetes/KubeVirt semantics.
//!
//! The runner owns one epoll loop. A [`ProbeSet`] keeps its own timerfd and
//! sockets in an inner epoll instance whose fd ([`ProbeSet::fd`]) the runner adds
//! to its loop: when that fd is readable, the runner calls [`ProbeSet::process`].
//! There is no thread and no process per probe.
//!
//! - [`tracker`]: the pure schedule and threshold state of one probe (virtual time);
//! - [`tcp`], [`http`]: non-blocking handlers for `tcpSocket` and `httpGet`;
//! - [`agent`]: the QEMU guest agent client for `exec` and `guestAgentPing`;
//! - [`ProbeSet`] (`set.rs`): the event-loop shell tying them together.

pub mod agent;
pub mod config;
pub mod http;
mod set;
pub mod tcp;
pub mod tracker;

pub use set::{ProbeSet, ProbeStats};

use std::net::IpAddr;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;

use config::ProbeKind;
use tracker::Outcome;

/// How to reach the QEMU guest agent of the VM.
#[derive(Debug)]
pub enum AgentChannel {
    /// A Unix socket where `qemu-ga -m unix-listen` listens (`--guest-agent PATH`).
    UnixSocket(PathBuf),
    /// An already connected stream, e.g. the host end of the VM's COM2.
    Stream(UnixStream),
}

/// What the probes need to know about the VM.
#[derive(Debug)]
pub struct ProbeEnv {
    /// The VM's addresses for probes without `host` (`--probe-host`; default 127.0.0.1).
    /// With several, a probe succeeds only if every address answers.
    pub vm_addresses: Vec<IpAddr>,
    /// The guest agent, for `exec` and `guestAgentPing` probes.
    pub agent: Option<AgentChannel>,
}

/// The result of one completed attempt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProbeAttempt {
    /// Which probe.
    pub probe: ProbeKind,
    /// Whether the attempt succeeded (`outcome == Outcome::Success`).
    pub success: bool,
    /// What the attempt counts as: a success, a failure, or an error that the
    /// thresholds ignore (the kubelet's rule for an HTTP error after the response
    /// headers). The runner prints it as `result` in its `probe` event.
    pub outcome: Outcome,
    /// What happened, in a few words.
    pub message: String,
    /// The address probed (`host:port`), where the handler has one.
    pub address: Option<String>,
    /// For exec: the exit code (`None` when the command did not exit normally).
    pub exit_code: Option<i32>,
    /// For exec: a bounded excerpt of the output.
    pub output: Option<String>,
}

/// What the runner hears from the probes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProbeEvent {
    /// One completed attempt.
    Attempt(ProbeAttempt),
    /// The Ready condition changed.
    Ready(bool),
    /// The liveness probe reached its failure threshold.
    LivenessFailed {
        /// The last failure's message.
        message: String,
    },
}

/// The result of one check against one address (a handler's verdict).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckResult {
    /// Whether the check passed (`outcome == Outcome::Success`).
    pub success: bool,
    /// What the check counts as (an error counts toward neither threshold).
    pub outcome: Outcome,
    /// What happened, in a few words.
    pub message: String,
}

impl CheckResult {
    /// A passed check.
    pub fn success(message: String) -> Self {
        CheckResult {
            success: true,
            outcome: Outcome::Success,
            message,
        }
    }

    /// A failed check.
    pub fn failure(message: String) -> Self {
        CheckResult {
            success: false,
            outcome: Outcome::Failure,
            message,
        }
    }

    /// A check that ended in an error the thresholds ignore: for HTTP, an I/O
    /// error, a short body or a stall after the response headers arrived.
    pub fn error(message: String) -> Self {
        CheckResult {
            success: false,
            outcome: Outcome::Error,
            message,
        }
    }
}
