//! A non-blocking QEMU guest agent (`qemu-ga`) client for exec and
//! `guestAgentPing` probes, driven by the caller's epoll loop.

use std::os::fd::RawFd;
use std::time::Instant;

use crate::probes::AgentChannel;

/// What an exec/ping attempt ended with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AgentOutcome {
    /// guest-ping answered.
    Pong,
    /// guest-exec finished.
    Exited {
        /// Exit code (`None` if killed by a signal).
        code: Option<i32>,
        /// Signal number, if the command was killed by one.
        signal: Option<i32>,
        /// A bounded excerpt (<= 1 KiB, lossy UTF-8) of stdout+stderr.
        output: String,
    },
    /// Failure before a result: agent absent, connection lost, garbled reply, agent error
    /// reply, deadline passed, or a previous exec for this probe still running.
    Failed(String),
}

/// Readiness interest of one fd.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FdInterest {
    /// The fd to watch.
    pub fd: RawFd,
    /// Watch for readability.
    pub read: bool,
    /// Watch for writability.
    pub write: bool,
}

/// One persistent connection to qemu-ga per VM; non-blocking; never blocks the caller.
#[derive(Debug)]
pub struct AgentClient {
    _channel: AgentChannel,
    done: Vec<(u64, AgentOutcome)>,
}

impl AgentClient {
    /// Creates the client; nothing is connected until needed.
    pub fn new(channel: AgentChannel) -> Self {
        AgentClient {
            _channel: channel,
            done: Vec::new(),
        }
    }

    /// The fds the event loop must watch right now.
    pub fn interests(&self) -> Vec<FdInterest> {
        Vec::new()
    }

    /// The earliest time the client needs [`AgentClient::on_timer`].
    pub fn next_deadline(&self) -> Option<Instant> {
        None
    }

    /// Call when one of the fds is ready (or spuriously).
    pub fn on_ready(&mut self, _now: Instant) {}

    /// Call at/after [`AgentClient::next_deadline`].
    pub fn on_timer(&mut self, _now: Instant) {}

    /// Starts a guest-exec of `argv` for probe `id`, due by `deadline`.
    pub fn start_exec(&mut self, id: u64, _argv: &[String], _now: Instant, _deadline: Instant) {
        self.done
            .push((id, AgentOutcome::Failed("not implemented yet".into())));
    }

    /// Starts a guest-ping for probe `id`, due by `deadline`.
    pub fn start_ping(&mut self, id: u64, _now: Instant, _deadline: Instant) {
        self.done
            .push((id, AgentOutcome::Failed("not implemented yet".into())));
    }

    /// Cancels whatever attempt `id` has in flight: no completion is reported for it.
    pub fn cancel(&mut self, id: u64) {
        self.done.retain(|(i, _)| *i != id);
    }

    /// Completed attempts since the last call, in completion order.
    pub fn take_completions(&mut self) -> Vec<(u64, AgentOutcome)> {
        std::mem::take(&mut self.done)
    }
}
