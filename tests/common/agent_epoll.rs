//! The guest-agent client's file descriptors on an epoll, registered the way the VMM's event
//! loop does it (for tests and benchmarks that drive an `AgentClient` themselves).
//!
//! Included with `#[path = "common/agent_epoll.rs"] mod agent_epoll;` (benches:
//! `"../tests/common/agent_epoll.rs"`).
#![allow(dead_code)]

use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmpulse::probes::agent::{AgentClient, FdInterest};

/// An epoll holding exactly the fds an `AgentClient` currently wants watched.
pub struct AgentFds {
    /// The epoll to wait on.
    pub ep: Epoll,
    registered: Vec<FdInterest>,
}

impl AgentFds {
    /// An empty epoll.
    pub fn new() -> AgentFds {
        AgentFds {
            ep: Epoll::new().expect("epoll"),
            registered: Vec::new(),
        }
    }

    /// Re-registers the client's fds when its interests changed.
    pub fn sync(&mut self, c: &AgentClient) {
        let want = c.interests();
        if want == self.registered {
            return;
        }
        for old in &self.registered {
            let _ = self
                .ep
                .ctl(ControlOperation::Delete, old.fd, EpollEvent::default());
        }
        for w in &want {
            let mut ev = EventSet::empty();
            if w.read {
                ev |= EventSet::IN;
            }
            if w.write {
                ev |= EventSet::OUT;
            }
            self.ep
                .ctl(
                    ControlOperation::Add,
                    w.fd,
                    EpollEvent::new(ev, w.fd as u64),
                )
                .expect("epoll add");
        }
        self.registered = want;
    }
}
