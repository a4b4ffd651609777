//! Non-blocking TCP connect, and the `tcpSocket` probe built on it.
//!
//! A [`Connect`] is started with a non-blocking `connect(2)` (EINPROGRESS) and
//! polled whenever its fd is writable (or spuriously) by calling `connect(2)`
//! again, which tells a completed, a pending and a failed connection apart in one
//! system call. The `tcpSocket` probe
//! ([`TcpCheck`]) succeeds as soon as the three-way handshake completes and closes
//! the socket at once, sending nothing.

use std::io;
use std::net::{SocketAddr, TcpStream};
use std::os::fd::{AsRawFd, RawFd};

use socket2::{Domain, Protocol, SockAddr, Socket, Type};

use super::CheckResult;

/// `host:port` as in URLs and messages: IPv6 literals in brackets.
pub fn address_label(addr: &SocketAddr) -> String {
    // `SocketAddr`'s Display already brackets IPv6 (and keeps a scope id).
    addr.to_string()
}

/// A short text for an I/O error, without the "(os error N)" suffix.
pub(crate) fn error_text(e: &io::Error) -> String {
    let s = e.to_string();
    match s.find(" (os error") {
        Some(i) => s[..i].to_string(),
        None => s,
    }
}

/// A TCP connection being established without blocking.
#[derive(Debug)]
pub struct Connect {
    socket: Socket,
    /// Where it connects (asked again by [`Connect::poll`]).
    addr: SockAddr,
    /// `connect(2)` returned EINPROGRESS and no readiness has been seen yet.
    in_progress: bool,
}

impl Connect {
    /// Start connecting to `addr`. An immediate failure (no route, no socket) is
    /// returned as the error text.
    pub fn start(addr: SocketAddr) -> Result<Self, String> {
        // Non-blocking from creation (socket2 adds SOCK_CLOEXEC): no fcntl calls.
        let ty = Type::from(libc::SOCK_STREAM | libc::SOCK_NONBLOCK);
        let socket = Socket::new(Domain::for_address(addr), ty, Some(Protocol::TCP))
            .map_err(|e| format!("socket: {}", error_text(&e)))?;
        let addr = SockAddr::from(addr);
        let in_progress = match socket.connect(&addr) {
            Ok(()) => false,
            Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => true,
            Err(e) => return Err(format!("connect: {}", error_text(&e))),
        };
        Ok(Connect {
            socket,
            addr,
            in_progress,
        })
    }

    /// The socket's fd (watch it for writability).
    pub fn fd(&self) -> RawFd {
        self.socket.as_raw_fd()
    }

    /// Whether `connect(2)` is known to be still in progress: it returned
    /// EINPROGRESS and [`Connect::poll`] has not been called since.
    pub fn in_progress(&self) -> bool {
        self.in_progress
    }

    /// Whether the connection is established (`Ok(true)`), still in progress
    /// (`Ok(false)`) or failed (the error text). Safe to call spuriously.
    ///
    /// One system call: `connect(2)` again on the same socket answers all three
    /// (0 or `EISCONN`: established; `EALREADY`/`EINPROGRESS`: in progress; any
    /// other error: the connection's own error, e.g. `ECONNREFUSED`), where
    /// `SO_ERROR` then `getpeername(2)` took two.
    pub fn poll(&mut self) -> Result<bool, String> {
        self.in_progress = false;
        match self.socket.connect(&self.addr) {
            Ok(()) => Ok(true),
            Err(e) => match e.raw_os_error() {
                Some(libc::EISCONN) => Ok(true),
                Some(libc::EALREADY | libc::EINPROGRESS | libc::EINTR) => Ok(false),
                _ => Err(format!("connect: {}", error_text(&e))),
            },
        }
    }

    /// The established connection, still non-blocking.
    pub fn into_stream(self) -> TcpStream {
        self.socket.into()
    }
}

/// One `tcpSocket` attempt against one address.
#[derive(Debug)]
pub struct TcpCheck {
    connect: Option<Connect>,
    result: Option<CheckResult>,
}

impl TcpCheck {
    /// Start the attempt (it may complete at once, e.g. with no route).
    pub fn start(addr: SocketAddr) -> Self {
        match Connect::start(addr) {
            Ok(c) => {
                let in_progress = c.in_progress();
                let mut check = TcpCheck {
                    connect: Some(c),
                    result: None,
                };
                if !in_progress {
                    check.on_ready();
                }
                check
            }
            Err(message) => TcpCheck {
                connect: None,
                result: Some(CheckResult::failure(message)),
            },
        }
    }

    /// The fd to watch for writability while the attempt runs.
    pub fn fd(&self) -> Option<RawFd> {
        self.connect.as_ref().map(Connect::fd)
    }

    /// Make progress; returns the result once known (and keeps returning it).
    pub fn on_ready(&mut self) -> Option<&CheckResult> {
        if self.result.is_none() {
            if let Some(c) = &mut self.connect {
                match c.poll() {
                    Ok(false) => {}
                    Ok(true) => self.result = Some(CheckResult::success("connected".into())),
                    Err(m) => self.result = Some(CheckResult::failure(m)),
                }
            }
            if self.result.is_some() {
                // Close at once: nothing is sent or read.
                self.connect = None;
            }
        }
        self.result.as_ref()
    }

    /// The result, once [`TcpCheck::on_ready`] has returned it (no copy of it).
    pub fn into_result(self) -> Option<CheckResult> {
        self.result
    }

    /// The deadline passed: the attempt fails (unless it already finished).
    pub fn on_timeout(&mut self, timeout: std::time::Duration) -> CheckResult {
        self.connect = None;
        self.result
            .get_or_insert_with(|| {
                CheckResult::failure(format!("connect: timed out after {timeout:?}"))
            })
            .clone()
    }
}
