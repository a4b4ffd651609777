//! Liveness and readiness probes with Kubernetes/KubeVirt semantics.
//!
//! SKELETON: [`ProbeSet`] below is the contract with the runner; the probes
//! engineer fills it in (tracker, HTTP/TCP handlers, guest-agent client).
//!
//! The runner owns one epoll loop. A [`ProbeSet`] keeps its own timerfds and
//! sockets in an inner epoll instance whose fd ([`ProbeSet::fd`]) the runner adds
//! to its loop: when that fd is readable, the runner calls [`ProbeSet::process`].

pub mod agent;
pub mod config;
pub mod tracker;

use std::io;
use std::net::IpAddr;
use std::os::fd::RawFd;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;

use config::{ProbeConfig, ProbeKind};

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
    /// Whether the attempt succeeded.
    pub success: bool,
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

/// Every probe of one VM, driven from the runner's epoll loop.
#[derive(Debug)]
pub struct ProbeSet {
    _probes: Vec<(ProbeKind, ProbeConfig)>,
}

impl ProbeSet {
    /// Build the probes; nothing runs until [`ProbeSet::vm_started`].
    pub fn new(probes: Vec<(ProbeKind, ProbeConfig)>, _env: ProbeEnv) -> io::Result<Self> {
        Ok(ProbeSet { _probes: probes })
    }
    /// The fd to add to the runner's epoll (readable when `process` has work).
    pub fn fd(&self) -> RawFd {
        -1
    }
    /// The VM (a new run of it) started now: time 0 of every probe's schedule.
    pub fn vm_started(&mut self) {}
    /// The VM stopped: cancel attempts, readiness becomes false.
    pub fn vm_stopped(&mut self) {}
    /// Handle whatever is ready, without blocking; return what happened, in order.
    pub fn process(&mut self) -> Vec<ProbeEvent> {
        Vec::new()
    }
    /// The current Ready condition.
    pub fn ready(&self) -> bool {
        false
    }
}
