//! A probe as the runtime sees it: validated, defaults applied, durations resolved.
//!
//! The manifest front-end ([`crate::manifest`]) turns KubeVirt's `Probe` objects
//! into these; the probe runtime consumes them.

use std::time::Duration;

/// Which probe of the VM.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ProbeKind {
    /// `livenessProbe`: a failure stops (or resets) the VM.
    Liveness,
    /// `readinessProbe`: sets the Ready condition.
    Readiness,
}

impl ProbeKind {
    /// `liveness` or `readiness`, as in JSON events.
    pub fn name(self) -> &'static str {
        match self {
            ProbeKind::Liveness => "liveness",
            ProbeKind::Readiness => "readiness",
        }
    }
}

/// `httpGet.scheme`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HttpScheme {
    /// Plain HTTP.
    Http,
    /// HTTPS, without certificate verification (as the kubelet does).
    Https,
}

/// The one handler of a probe.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProbeHandler {
    /// `httpGet`.
    HttpGet {
        /// Request path, with any query string; defaults to `/`.
        path: String,
        /// TCP port.
        port: u16,
        /// Target host; `None` means the VM's address(es).
        host: Option<String>,
        /// HTTP or HTTPS.
        scheme: HttpScheme,
        /// `httpHeaders`, in order, repeated names allowed.
        headers: Vec<(String, String)>,
    },
    /// `tcpSocket`.
    TcpSocket {
        /// TCP port.
        port: u16,
        /// Target host; `None` means the VM's address(es).
        host: Option<String>,
    },
    /// `exec`, run in the guest through the QEMU guest agent.
    Exec {
        /// argv; `command[0]` is looked up on the agent's PATH.
        command: Vec<String>,
    },
    /// `guestAgentPing`.
    GuestAgentPing,
}

/// A validated probe with Kubernetes defaults applied.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProbeConfig {
    /// `initialDelaySeconds` (default 0).
    pub initial_delay: Duration,
    /// `periodSeconds` (default 10).
    pub period: Duration,
    /// `timeoutSeconds` (default 1).
    pub timeout: Duration,
    /// `successThreshold` (default 1; must be 1 for liveness).
    pub success_threshold: u32,
    /// `failureThreshold` (default 3).
    pub failure_threshold: u32,
    /// What to do on each attempt.
    pub handler: ProbeHandler,
}
