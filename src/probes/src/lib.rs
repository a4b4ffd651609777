//! Liveness and readiness probes with Kubernetes/KubeVirt semantics, for a VMM's
//! own epoll loop.
//!
//! The caller owns one epoll loop and the clock. A [`ProbeSet`] keeps its own
//! timerfd and sockets in an inner epoll instance whose fd ([`ProbeSet::fd`]) the
//! caller adds to its loop: when that fd is readable (or at
//! [`ProbeSet::next_deadline`]), the caller calls [`ProbeSet::process`] with the
//! current time. Every decision (when an attempt starts, when it times out) uses
//! the `now` the caller passes, so tests run the schedule in virtual time. There
//! is no thread and no process per probe.
//!
//! - [`config`]: a validated [`config::ProbeConfig`], built by a builder with typed
//!   errors or parsed from one Kubernetes probe object (JSON; YAML with `yaml`);
//! - [`tracker`]: the pure schedule and threshold state of one probe (virtual time);
//! - [`tcp`], [`http`]: non-blocking handlers for `tcpSocket` and `httpGet`;
//! - `agent` (feature `agent`): the QEMU guest agent client for `exec` and
//!   `guestAgentPing`;
//! - [`ProbeSet`] (`set.rs`): the event-loop shell tying them together.
//!
//! Cargo features: `https` (default; HTTPS probes through rustls), `agent`
//! (default; `exec` and `guestAgentPing` through the QEMU guest agent), `yaml`
//! (off by default; `ProbeConfig::from_yaml`). Without `https` or `agent`,
//! [`ProbeSet::new`] refuses the probes that need them.

#![deny(missing_docs)]

#[cfg(feature = "agent")]
pub mod agent;
#[cfg(not(feature = "agent"))]
#[path = "agent_off.rs"]
mod agent;
pub mod config;
pub mod http;
mod set;
pub mod tcp;
pub mod tracker;

pub use set::{ProbeSet, ProbeSetError, ProbeStats};

use std::net::IpAddr;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use config::ProbeKind;
use tracker::Outcome;

/// How to reach the QEMU guest agent of the VM.
#[derive(Debug)]
pub enum AgentChannel {
    /// A Unix socket where `qemu-ga -m unix-listen` listens.
    UnixSocket(PathBuf),
    /// An already connected stream, e.g. the host end of the VM's COM2.
    Stream(UnixStream),
}

/// What the probes need to know about the VM.
#[derive(Debug)]
pub struct ProbeEnv {
    /// The VM's addresses for `httpGet` and `tcpSocket` probes without `host`.
    /// With several, a probe succeeds only if every address answers; with none,
    /// [`ProbeSet::new`] refuses such probes.
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
    /// When the attempt started (the `now` of the [`ProbeSet`] call that started it).
    pub started: Instant,
    /// From the start to the completion (the `now` of the call that completed it).
    pub duration: Duration,
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

/// The longest message a check keeps, in characters. Messages echo what a peer sent
/// (an HTTP reason phrase, a redirect's `Location`, an agent's error text), so a hostile
/// peer could otherwise put megabytes into every event; longer messages are cut to this
/// many characters, the last one an ellipsis.
pub const MAX_MESSAGE_CHARS: usize = 200;

/// `message` cut to at most [`MAX_MESSAGE_CHARS`] characters.
fn clip_message(mut message: String) -> String {
    if let Some((cut, _)) = message.char_indices().nth(MAX_MESSAGE_CHARS - 1) {
        if message[cut..].chars().nth(1).is_some() {
            message.truncate(cut);
            message.push('…');
        }
    }
    message
}

impl CheckResult {
    /// A passed check. Like every constructor, it cuts `message` to
    /// [`MAX_MESSAGE_CHARS`] characters.
    pub fn success(message: String) -> Self {
        CheckResult {
            success: true,
            outcome: Outcome::Success,
            message: clip_message(message),
        }
    }

    /// A failed check.
    pub fn failure(message: String) -> Self {
        CheckResult {
            success: false,
            outcome: Outcome::Failure,
            message: clip_message(message),
        }
    }

    /// A check that ended in an error the thresholds ignore: for HTTP, an I/O
    /// error, a short body or a stall after the response headers arrived.
    pub fn error(message: String) -> Self {
        CheckResult {
            success: false,
            outcome: Outcome::Error,
            message: clip_message(message),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_messages_are_cut_to_200_characters() {
        let short = "HTTP probe failed with statuscode: 503".to_string();
        assert_eq!(CheckResult::failure(short.clone()).message, short);
        let exact = "é".repeat(MAX_MESSAGE_CHARS);
        assert_eq!(CheckResult::success(exact.clone()).message, exact);
        // A hostile reason phrase of 100,000 characters.
        let long = format!("HTTP 500 {}", "ü".repeat(100_000));
        let cut = CheckResult::error(long.clone()).message;
        assert_eq!(cut.chars().count(), MAX_MESSAGE_CHARS);
        assert!(cut.ends_with('…'));
        let kept: String = long.chars().take(MAX_MESSAGE_CHARS - 1).collect();
        assert!(cut.starts_with(&kept));
    }
}
