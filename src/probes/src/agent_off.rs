//! Stand-in for the guest agent client when the `agent` feature is off.
//!
//! [`crate::ProbeSet::new`] refuses `exec` and `guestAgentPing` probes without the
//! feature, so no client is ever made: the type has no values and its methods
//! exist only so the set compiles the same way with and without the feature.

use std::os::fd::RawFd;
use std::time::Instant;

/// Readiness interest of one fd (never produced).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FdInterest {
    pub fd: RawFd,
    pub read: bool,
    pub write: bool,
}

/// No guest agent client can exist without the `agent` feature.
#[derive(Debug)]
pub enum AgentClient {}

impl AgentClient {
    pub fn interests(&self) -> Vec<FdInterest> {
        match *self {}
    }

    pub fn next_deadline(&self) -> Option<Instant> {
        match *self {}
    }

    pub(crate) fn link_serial(&self) -> u64 {
        match *self {}
    }

    pub fn on_ready(&mut self, _now: Instant) {
        match *self {}
    }

    pub fn on_timer(&mut self, _now: Instant) {
        match *self {}
    }

    pub fn start_exec(&mut self, _id: u64, _argv: &[String], _now: Instant, _deadline: Instant) {
        match *self {}
    }

    pub fn start_ping(&mut self, _id: u64, _now: Instant, _deadline: Instant) {
        match *self {}
    }

    pub fn cancel(&mut self, _id: u64) {
        match *self {}
    }
}
