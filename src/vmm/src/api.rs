//! The operations endpoints of `vmpulse run`: a small HTTP/1.1 server on the run's own
//! event loop, for `--api-socket PATH` (a Unix socket: status and control) and
//! `--metrics-addr HOST:PORT` (TCP: Prometheus metrics and the health checks).
//!
//! | endpoint | method, path | answer |
//! | --- | --- | --- |
//! | both | `GET /readyz` | 200 when the VM is Ready, else 503 |
//! | both | `GET /livez` | 200 while the loop runs and the VM has not failed, else 503 |
//! | both | `GET /metrics` | the Prometheus series ([`super::metrics`]) |
//! | API socket | `GET /status` | the run's status object ([`super::status::StatusDoc`]) |
//! | API socket | `PUT /vm/pause`, `/vm/resume`, `/vm/reset`, `/vm/stop`, `/vm/shutdown` | 204 once carried out (`shutdown`: once the VM is off, within the grace period); 409 when there is no VM to act on |
//!
//! # No thread per connection, and bounded
//!
//! The server is one [`MutEventSubscriber`] of the runner's event manager: the listeners,
//! every connection (edge-triggered, non-blocking) and one timerfd for deadlines. It only
//! parses (with `httparse`) and queues complete requests; the runner answers them after
//! its own dispatch ([`HttpServer::take_requests`], [`answer`], [`HttpServer::respond`]).
//! A client cannot stall the loop: [`Limits`] bound the connections (more are answered 503
//! and closed at once), the request's size (413) and the time from accept to the last
//! byte of the answer (a client that sends slowly, or reads slowly, is cut off at the
//! deadline); each wake-up accepts a bounded number of connections. One request per
//! connection (`Connection: close`), which keeps the state machine small.

use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use serde::Serialize;
use vmm_sys_util::timerfd::TimerFd;

use super::metrics::CONTENT_TYPE as METRICS_CONTENT_TYPE;
use super::router::ApiAction;
use super::status::StatusDoc;

/// The operations options of a run.
#[derive(Clone, Debug, Default)]
pub struct OpsConfig {
    /// `--api-socket PATH`.
    pub api_socket: Option<PathBuf>,
    /// `--metrics-addr HOST:PORT`.
    pub metrics_addr: Option<SocketAddr>,
    /// `--exit-code-from-phase`: exit 3 when the final phase is `Failed`.
    pub exit_code_from_phase: bool,
    /// The server's bounds.
    pub limits: Limits,
}

/// What one client may take of the server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Open connections, both listeners together.
    pub max_connections: usize,
    /// Bytes of one request, head and body.
    pub max_request_bytes: usize,
    /// From accept to the last byte of the answer.
    pub request_timeout: Duration,
    /// Connections accepted per wake-up of a listener.
    pub accepts_per_wake: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 32,
            max_request_bytes: 8192,
            request_timeout: Duration::from_secs(2),
            accepts_per_wake: 16,
        }
    }
}

/// Which listener a request came in on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Endpoint {
    /// `--api-socket`.
    Api,
    /// `--metrics-addr`.
    Metrics,
}

/// A complete request, for the runner to answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    /// The connection to answer on.
    pub conn: u32,
    /// Where it came in.
    pub endpoint: Endpoint,
    /// `GET`, `PUT`, ...
    pub method: String,
    /// The path, without any query string.
    pub path: String,
}

/// An answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Response {
    /// The status code.
    pub status: u16,
    /// `Content-Type` (empty: none).
    pub content_type: &'static str,
    /// The body.
    pub body: Vec<u8>,
}

impl Response {
    /// A JSON body.
    pub fn json<T: Serialize>(status: u16, value: &T) -> Self {
        match serde_json::to_vec(value) {
            Ok(body) => Response {
                status,
                content_type: "application/json",
                body,
            },
            Err(e) => Response::error(500, &format!("cannot encode the answer: {e}")),
        }
    }

    /// A JSON `{"error": message}`.
    pub fn error(status: u16, message: &str) -> Self {
        let body = serde_json::json!({ "error": message })
            .to_string()
            .into_bytes();
        Response {
            status,
            content_type: "application/json",
            body,
        }
    }

    /// A short plain-text body.
    pub fn text(status: u16, text: &str) -> Self {
        Response {
            status,
            content_type: "text/plain; charset=utf-8",
            body: text.as_bytes().to_vec(),
        }
    }

    /// 204 No Content.
    pub fn no_content() -> Self {
        Response {
            status: 204,
            content_type: "",
            body: Vec::new(),
        }
    }

    fn bytes(&self) -> Vec<u8> {
        let mut head = format!("HTTP/1.1 {} {}\r\n", self.status, reason(self.status));
        if !self.content_type.is_empty() {
            head.push_str(&format!("Content-Type: {}\r\n", self.content_type));
        }
        if self.status != 204 {
            head.push_str(&format!("Content-Length: {}\r\n", self.body.len()));
        }
        head.push_str("Connection: close\r\n\r\n");
        let mut out = head.into_bytes();
        out.extend_from_slice(&self.body);
        out
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        204 => "No Content",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        413 => "Content Too Large",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Unknown",
    }
}

/// Why a control request was not carried out.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    /// The VM is not in a state for it (e.g. stopped, waiting for a restart).
    #[error("{0}")]
    Conflict(String),
    /// It was tried and failed.
    #[error("{0}")]
    Failed(String),
}

/// What the endpoints need from the run (the runner implements it).
pub trait Control {
    /// The status object.
    fn status(&mut self) -> StatusDoc;
    /// The metrics text.
    fn metrics(&mut self) -> String;
    /// Carry out a `PUT /vm/...`.
    fn command(&mut self, action: ApiAction) -> Result<(), CommandError>;
}

/// The answer to `request`.
pub fn answer(request: &Request, control: &mut dyn Control) -> Response {
    let get = request.method == "GET";
    match (request.endpoint, request.path.as_str()) {
        (_, "/readyz") if get => {
            if control.status().ready {
                Response::text(200, "ready\n")
            } else {
                Response::text(503, "not ready\n")
            }
        }
        (_, "/livez") if get => {
            let s = control.status();
            if s.phase == "Failed" {
                Response::text(503, "the VM failed\n")
            } else {
                Response::text(200, "live\n")
            }
        }
        (_, "/metrics") if get => Response {
            status: 200,
            content_type: METRICS_CONTENT_TYPE,
            body: control.metrics().into_bytes(),
        },
        (Endpoint::Api, "/status") if get => Response::json(200, &control.status()),
        (Endpoint::Api, path) if path.starts_with("/vm/") => {
            let Some(action) = ApiAction::from_name(&path["/vm/".len()..]) else {
                return Response::error(404, "no such action");
            };
            if request.method != "PUT" {
                return Response::error(405, "use PUT");
            }
            match control.command(action) {
                Ok(()) => Response::no_content(),
                Err(CommandError::Conflict(m)) => Response::error(409, &m),
                Err(CommandError::Failed(m)) => Response::error(500, &m),
            }
        }
        (_, "/readyz" | "/livez" | "/metrics") | (Endpoint::Api, "/status") => {
            Response::error(405, "use GET")
        }
        _ => Response::error(404, "not found"),
    }
}

/// Counters of the server, for tests and logs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ServerStats {
    /// Connections accepted and served.
    pub accepted: u64,
    /// Connections refused (503) because [`Limits::max_connections`] were open.
    pub refused_busy: u64,
    /// Requests over [`Limits::max_request_bytes`] (413).
    pub too_large: u64,
    /// Malformed requests (400, 431).
    pub bad_requests: u64,
    /// Connections cut off at their deadline.
    pub timed_out: u64,
    /// Requests handed to the runner.
    pub requests: u64,
}

enum Stream {
    Unix(UnixStream),
    Tcp(TcpStream),
}

impl Stream {
    fn io(&mut self) -> &mut dyn ReadWrite {
        match self {
            Stream::Unix(s) => s,
            Stream::Tcp(s) => s,
        }
    }
    fn fd(&self) -> RawFd {
        match self {
            Stream::Unix(s) => s.as_raw_fd(),
            Stream::Tcp(s) => s.as_raw_fd(),
        }
    }
    fn shutdown(&self) {
        let _ = match self {
            Stream::Unix(s) => s.shutdown(Shutdown::Both),
            Stream::Tcp(s) => s.shutdown(Shutdown::Both),
        };
    }
}

trait ReadWrite: Read + Write {}
impl<T: Read + Write> ReadWrite for T {}

struct Conn {
    stream: Stream,
    endpoint: Endpoint,
    input: Vec<u8>,
    /// The answer and how much of it was written.
    output: Option<(Vec<u8>, usize)>,
    /// The request went to the runner; waiting for its answer.
    queued: bool,
    deadline: Instant,
}

const TOKEN_UNIX: u32 = 1;
const TOKEN_TCP: u32 = 2;
const TOKEN_TIMER: u32 = 3;
const FIRST_CONN: u32 = 16;
/// The largest request body accepted (the endpoints take none).
const MAX_BODY: usize = 1024;
const CONN_EVENTS: EventSet = EventSet::IN
    .union(EventSet::OUT)
    .union(EventSet::READ_HANG_UP)
    .union(EventSet::EDGE_TRIGGERED);

/// The HTTP server; add it to the run's event manager.
pub struct HttpServer {
    unix: Option<(UnixListener, PathBuf)>,
    tcp: Option<TcpListener>,
    timer: TimerFd,
    timer_armed: bool,
    conns: BTreeMap<u32, Conn>,
    next_token: u32,
    requests: Vec<Request>,
    limits: Limits,
    stats: ServerStats,
}

/// Bind a Unix socket at `path`, replacing a stale socket file nobody listens on.
fn bind_unix(path: &Path) -> io::Result<UnixListener> {
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("{} exists and is not a socket", path.display()),
            ));
        }
        if UnixStream::connect(path).is_ok() {
            return Err(io::Error::new(
                io::ErrorKind::AddrInUse,
                format!("{} is in use by another process", path.display()),
            ));
        }
        std::fs::remove_file(path)?;
    }
    UnixListener::bind(path)
}

impl HttpServer {
    /// Listen on `api_socket` and/or `metrics_addr`.
    pub fn bind(
        api_socket: Option<&Path>,
        metrics_addr: Option<SocketAddr>,
        limits: Limits,
    ) -> io::Result<Self> {
        let unix = match api_socket {
            Some(path) => {
                let l = bind_unix(path)
                    .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
                l.set_nonblocking(true)?;
                Some((l, path.to_path_buf()))
            }
            None => None,
        };
        let tcp = match metrics_addr {
            Some(addr) => {
                let l = TcpListener::bind(addr)
                    .map_err(|e| io::Error::new(e.kind(), format!("{addr}: {e}")))?;
                l.set_nonblocking(true)?;
                Some(l)
            }
            None => None,
        };
        Ok(HttpServer {
            unix,
            tcp,
            timer: TimerFd::new()?,
            timer_armed: false,
            conns: BTreeMap::new(),
            next_token: FIRST_CONN,
            requests: Vec::new(),
            limits,
            stats: ServerStats::default(),
        })
    }

    /// The TCP listener's address (for `--metrics-addr 127.0.0.1:0`).
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.tcp.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// The counters.
    pub fn stats(&self) -> ServerStats {
        self.stats
    }

    /// Open connections.
    pub fn connections(&self) -> usize {
        self.conns.len()
    }

    /// The complete requests received since the last call.
    pub fn take_requests(&mut self) -> Vec<Request> {
        std::mem::take(&mut self.requests)
    }

    /// Keep connection `conn` open for `wait` from now, for an answer that comes later.
    pub fn hold(&mut self, conn: u32, wait: Duration) {
        if let Some(c) = self.conns.get_mut(&conn) {
            c.deadline = Instant::now() + wait;
        }
    }

    /// Answer the request of connection `conn` (ignored if the connection is gone).
    pub fn respond(&mut self, ops: &mut EventOps, conn: u32, response: &Response) {
        if let Some(c) = self.conns.get_mut(&conn) {
            c.output = Some((response.bytes(), 0));
            self.flush(ops, conn);
        }
    }

    fn new_token(&mut self) -> u32 {
        loop {
            let t = self.next_token;
            self.next_token = self.next_token.checked_add(1).unwrap_or(FIRST_CONN);
            if !self.conns.contains_key(&t) {
                return t;
            }
        }
    }

    fn accept(&mut self, ops: &mut EventOps, endpoint: Endpoint) {
        for _ in 0..self.limits.accepts_per_wake {
            let accepted = match endpoint {
                Endpoint::Api => match &self.unix {
                    Some((l, _)) => l.accept().map(|(s, _)| Stream::Unix(s)),
                    None => return,
                },
                Endpoint::Metrics => match &self.tcp {
                    Some(l) => l.accept().map(|(s, _)| Stream::Tcp(s)),
                    None => return,
                },
            };
            let mut stream = match accepted {
                Ok(s) => s,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    log::warn!("cannot accept a connection: {e}");
                    return;
                }
            };
            let nonblocking = match &stream {
                Stream::Unix(s) => s.set_nonblocking(true),
                Stream::Tcp(s) => s.set_nonblocking(true),
            };
            if nonblocking.is_err() {
                continue;
            }
            if self.conns.len() >= self.limits.max_connections {
                self.stats.refused_busy += 1;
                // Best effort, never waits: the client learns why before the close.
                let busy = Response::error(503, "too many connections").bytes();
                let _ = stream.io().write(&busy);
                stream.shutdown();
                continue;
            }
            let token = self.new_token();
            if let Err(e) = ops.add(Events::with_data_raw(stream.fd(), token, CONN_EVENTS)) {
                log::warn!("cannot watch a connection: {e}");
                continue;
            }
            self.stats.accepted += 1;
            self.conns.insert(
                token,
                Conn {
                    stream,
                    endpoint,
                    input: Vec::new(),
                    output: None,
                    queued: false,
                    deadline: Instant::now() + self.limits.request_timeout,
                },
            );
        }
    }

    fn close(&mut self, ops: &mut EventOps, token: u32) {
        if let Some(c) = self.conns.remove(&token) {
            let _ = ops.remove(Events::with_data_raw(c.stream.fd(), token, CONN_EVENTS));
            c.stream.shutdown();
        }
    }

    /// Answer directly from the server (errors it finds itself).
    fn reject(&mut self, ops: &mut EventOps, token: u32, response: Response) {
        if let Some(c) = self.conns.get_mut(&token) {
            c.output = Some((response.bytes(), 0));
        }
        self.flush(ops, token);
    }

    fn read(&mut self, ops: &mut EventOps, token: u32) {
        let max = self.limits.max_request_bytes;
        let Some(c) = self.conns.get_mut(&token) else {
            return;
        };
        if c.queued || c.output.is_some() {
            return;
        }
        let mut buf = [0u8; 2048];
        let mut eof = false;
        // Edge-triggered: read until the socket is empty, or the request is too large.
        loop {
            let room = (max + 1).saturating_sub(c.input.len()).min(buf.len());
            if room == 0 {
                break;
            }
            match c.stream.io().read(&mut buf[..room]) {
                Ok(0) => {
                    eof = true;
                    break;
                }
                Ok(n) => c.input.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => {
                    eof = true;
                    break;
                }
            }
        }
        if c.input.len() > max {
            self.stats.too_large += 1;
            self.reject(ops, token, Response::error(413, "request too large"));
            return;
        }
        match parse(&c.input) {
            Parsed::Complete { method, path } => {
                c.queued = true;
                self.stats.requests += 1;
                self.requests.push(Request {
                    conn: token,
                    endpoint: c.endpoint,
                    method,
                    path,
                });
            }
            Parsed::Partial if eof => self.close(ops, token),
            Parsed::Partial => {}
            Parsed::Bad(status, message) => {
                if status == 413 {
                    self.stats.too_large += 1;
                } else {
                    self.stats.bad_requests += 1;
                }
                self.reject(ops, token, Response::error(status, message));
            }
        }
    }

    fn flush(&mut self, ops: &mut EventOps, token: u32) {
        let Some(c) = self.conns.get_mut(&token) else {
            return;
        };
        let Some((out, written)) = c.output.as_mut() else {
            return;
        };
        while *written < out.len() {
            match c.stream.io().write(&out[*written..]) {
                Ok(0) => break,
                Ok(n) => *written += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => break,
            }
        }
        // All written (or the peer is gone): one request per connection.
        self.close(ops, token);
    }

    /// Cut off the connections past their deadline; arm the timer for the next one.
    fn expire(&mut self, ops: &mut EventOps) {
        let now = Instant::now();
        let late: Vec<u32> = self
            .conns
            .iter()
            .filter(|(_, c)| c.deadline <= now)
            .map(|(t, _)| *t)
            .collect();
        for token in late {
            self.stats.timed_out += 1;
            if let Some(c) = self.conns.get_mut(&token) {
                if c.output.is_none() {
                    let _ = c
                        .stream
                        .io()
                        .write(&Response::error(408, "request timeout").bytes());
                }
            }
            self.close(ops, token);
        }
        let next = self.conns.values().map(|c| c.deadline).min();
        let armed = match next {
            // Setting the timer also drops an expiration already counted, so the fd is
            // quiet until the new deadline.
            Some(at) => self
                .timer
                .reset(
                    at.saturating_duration_since(now)
                        .max(Duration::from_millis(1)),
                    None,
                )
                .map(|()| true),
            None if self.timer_armed => self.timer.clear().map(|()| false),
            None => Ok(false),
        };
        match armed {
            Ok(a) => self.timer_armed = a,
            Err(e) => log::warn!("cannot arm the API deadline timer: {e}"),
        }
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        if let Some((_, path)) = &self.unix {
            let _ = std::fs::remove_file(path);
        }
    }
}

enum Parsed {
    Complete { method: String, path: String },
    Partial,
    Bad(u16, &'static str),
}

fn parse(input: &[u8]) -> Parsed {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut req = httparse::Request::new(&mut headers);
    let head = match req.parse(input) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Parsed::Partial,
        Err(httparse::Error::TooManyHeaders) => return Parsed::Bad(431, "too many headers"),
        Err(_) => return Parsed::Bad(400, "malformed request"),
    };
    let mut body = 0usize;
    for h in req.headers.iter() {
        if h.name.eq_ignore_ascii_case("transfer-encoding") {
            return Parsed::Bad(400, "Transfer-Encoding is not supported");
        }
        if h.name.eq_ignore_ascii_case("content-length") {
            match std::str::from_utf8(h.value)
                .ok()
                .and_then(|v| v.trim().parse::<usize>().ok())
            {
                Some(n) if n <= MAX_BODY => body = n,
                Some(_) => return Parsed::Bad(413, "request body too large"),
                None => return Parsed::Bad(400, "bad Content-Length"),
            }
        }
    }
    if input.len() < head + body {
        return Parsed::Partial;
    }
    let path = req.path.unwrap_or("/");
    let path = path.split('?').next().unwrap_or(path);
    Parsed::Complete {
        method: req.method.unwrap_or("").to_string(),
        path: path.to_string(),
    }
}

impl MutEventSubscriber for HttpServer {
    fn process(&mut self, events: Events, ops: &mut EventOps) {
        match events.data() {
            TOKEN_UNIX => self.accept(ops, Endpoint::Api),
            TOKEN_TCP => self.accept(ops, Endpoint::Metrics),
            TOKEN_TIMER => {}
            token => {
                let set = events.event_set();
                if set.intersects(EventSet::IN | EventSet::READ_HANG_UP | EventSet::HANG_UP) {
                    self.read(ops, token);
                }
                if set.contains(EventSet::OUT) {
                    self.flush(ops, token);
                }
                if set.contains(EventSet::ERROR) {
                    self.close(ops, token);
                }
            }
        }
        self.expire(ops);
    }

    fn init(&mut self, ops: &mut EventOps) {
        let mut fds = vec![(self.timer.as_raw_fd(), TOKEN_TIMER)];
        if let Some((l, _)) = &self.unix {
            fds.push((l.as_raw_fd(), TOKEN_UNIX));
        }
        if let Some(l) = &self.tcp {
            fds.push((l.as_raw_fd(), TOKEN_TCP));
        }
        for (fd, token) in fds {
            if let Err(e) = ops.add(Events::with_data_raw(fd, token, EventSet::IN)) {
                log::error!("cannot watch the API listener: {e}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;
    use std::rc::Rc;

    use event_manager::{EventManager, SubscriberOps};

    use crate::events::Event;
    use crate::status::{RunStatus, WatchdogLive};

    struct Fake {
        status: RunStatus,
        commands: Vec<ApiAction>,
    }

    impl Control for Fake {
        fn status(&mut self) -> StatusDoc {
            self.status.status(WatchdogLive::default())
        }
        fn metrics(&mut self) -> String {
            self.status.metrics_text(WatchdogLive::default())
        }
        fn command(&mut self, action: ApiAction) -> Result<(), CommandError> {
            self.commands.push(action);
            match action {
                ApiAction::Stop => Err(CommandError::Conflict("the VM is not running".into())),
                _ => Ok(()),
            }
        }
    }

    type Manager = EventManager<Rc<RefCell<dyn MutEventSubscriber>>>;

    struct Rig {
        _dir: tempfile::TempDir,
        path: PathBuf,
        server: Rc<RefCell<HttpServer>>,
        id: event_manager::SubscriberId,
        manager: Manager,
        fake: Fake,
    }

    impl Rig {
        fn new(limits: Limits) -> Rig {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("api.sock");
            let server = Rc::new(RefCell::new(
                HttpServer::bind(Some(&path), Some("127.0.0.1:0".parse().unwrap()), limits)
                    .unwrap(),
            ));
            let mut manager: Manager = EventManager::new().unwrap();
            let id = manager.add_subscriber(server.clone());
            Rig {
                _dir: dir,
                path,
                server,
                id,
                manager,
                fake: Fake {
                    status: RunStatus::new("testvm", "reset", &[]),
                    commands: Vec::new(),
                },
            }
        }

        /// One round of the loop, as the runner does it: wait (at most `ms`), answer.
        fn round(&mut self, ms: i32) {
            self.manager.run_with_timeout(ms).unwrap();
            let requests = self.server.borrow_mut().take_requests();
            for r in requests {
                let response = answer(&r, &mut self.fake);
                let mut ops = self.manager.event_ops(self.id).unwrap();
                self.server
                    .borrow_mut()
                    .respond(&mut ops, r.conn, &response);
            }
        }

        /// Run rounds until `done` or `limit`.
        fn until(&mut self, limit: Duration, done: impl Fn(&Rig) -> bool) {
            let end = Instant::now() + limit;
            while !done(self) && Instant::now() < end {
                self.round(20);
            }
        }

        fn connect(&self) -> UnixStream {
            let s = UnixStream::connect(&self.path).unwrap();
            s.set_nonblocking(true).unwrap();
            s
        }

        /// Send `request` on a new connection and read the whole answer, driving the loop.
        fn exchange(&mut self, request: &[u8]) -> String {
            let mut s = self.connect();
            s.write_all(request).unwrap();
            self.read_all(&mut s)
        }

        fn read_all(&mut self, s: &mut UnixStream) -> String {
            let mut out = Vec::new();
            let end = Instant::now() + Duration::from_secs(5);
            let mut buf = [0u8; 4096];
            loop {
                match s.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => out.extend_from_slice(&buf[..n]),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        assert!(Instant::now() < end, "no answer");
                        self.round(10);
                    }
                    Err(_) => break,
                }
            }
            String::from_utf8_lossy(&out).into_owned()
        }
    }

    fn status_code(answer: &str) -> u16 {
        answer
            .split(' ')
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0)
    }

    fn body(answer: &str) -> &str {
        answer.split("\r\n\r\n").nth(1).unwrap_or("")
    }

    #[test]
    fn routes_answer_as_documented() {
        let mut rig = Rig::new(Limits::default());
        let a = rig.exchange(b"GET /status HTTP/1.1\r\nHost: x\r\n\r\n");
        assert_eq!(status_code(&a), 200, "{a}");
        let v: serde_json::Value = serde_json::from_str(body(&a)).unwrap();
        assert_eq!(v["vm"], "testvm");
        assert_eq!(v["phase"], "Scheduled");
        let a = rig.exchange(b"GET /readyz HTTP/1.1\r\n\r\n");
        assert_eq!(status_code(&a), 503, "not ready before a boot: {a}");
        let a = rig.exchange(b"GET /livez HTTP/1.1\r\n\r\n");
        assert_eq!(status_code(&a), 200, "{a}");
        let mut started = Event::Started { boot: 1 };
        rig.fake.status.observe(&mut started, Instant::now());
        let a = rig.exchange(b"GET /readyz?verbose HTTP/1.1\r\n\r\n");
        assert_eq!(status_code(&a), 200, "{a}");
        let a = rig.exchange(b"PUT /vm/pause HTTP/1.1\r\nContent-Length: 0\r\n\r\n");
        assert_eq!(status_code(&a), 204, "{a}");
        let a = rig.exchange(b"PUT /vm/stop HTTP/1.1\r\n\r\n");
        assert_eq!(status_code(&a), 409, "{a}");
        assert!(body(&a).contains("not running"), "{a}");
        assert_eq!(rig.fake.commands, [ApiAction::Pause, ApiAction::Stop]);
        let a = rig.exchange(b"GET /vm/pause HTTP/1.1\r\n\r\n");
        assert_eq!(status_code(&a), 405, "{a}");
        let a = rig.exchange(b"PUT /vm/explode HTTP/1.1\r\n\r\n");
        assert_eq!(status_code(&a), 404, "{a}");
        let a = rig.exchange(b"GET /nothing HTTP/1.1\r\n\r\n");
        assert_eq!(status_code(&a), 404, "{a}");
        let a = rig.exchange(b"GET /metrics HTTP/1.1\r\n\r\n");
        assert_eq!(status_code(&a), 200, "{a}");
        assert!(
            body(&a).contains("vmpulse_vm_boots_total{vm=\"testvm\"} 1"),
            "{a}"
        );
        let a = rig.exchange(b"\x00\x01garbage\r\n\r\n");
        assert_eq!(status_code(&a), 400, "{a}");
        assert_eq!(
            rig.server.borrow().connections(),
            0,
            "every connection closed"
        );

        // The TCP listener serves the metrics but not the control paths.
        let addr = rig.server.borrow().metrics_addr().unwrap();
        for (request, code) in [
            (&b"GET /status HTTP/1.1\r\n\r\n"[..], 404),
            (b"PUT /vm/stop HTTP/1.1\r\n\r\n", 404),
            (b"GET /metrics HTTP/1.1\r\n\r\n", 200),
            (b"GET /livez HTTP/1.1\r\n\r\n", 200),
        ] {
            let mut t = TcpStream::connect(addr).unwrap();
            t.write_all(request).unwrap();
            t.set_nonblocking(true).unwrap();
            let mut out = Vec::new();
            let end = Instant::now() + Duration::from_secs(5);
            let mut b = [0u8; 4096];
            loop {
                match t.read(&mut b) {
                    Ok(0) => break,
                    Ok(n) => out.extend_from_slice(&b[..n]),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock && Instant::now() < end => {
                        rig.round(10)
                    }
                    Err(e) => panic!("{e}"),
                }
            }
            let a = String::from_utf8_lossy(&out);
            assert_eq!(status_code(&a), code, "{a}");
        }
        assert_eq!(rig.fake.commands.len(), 2);
    }

    #[test]
    fn silent_slow_and_huge_clients_are_cut_off_and_others_still_served() {
        let limits = Limits {
            max_connections: 8,
            max_request_bytes: 1024,
            request_timeout: Duration::from_millis(300),
            accepts_per_wake: 4,
        };
        let mut rig = Rig::new(limits);
        // Three silent clients and one that sends a byte now and then.
        let silent: Vec<UnixStream> = (0..3).map(|_| rig.connect()).collect();
        let mut slow = rig.connect();
        slow.write_all(b"GE").unwrap();
        rig.until(Duration::from_millis(100), |r| {
            r.server.borrow().connections() == 4
        });
        assert_eq!(rig.server.borrow().connections(), 4);
        // Meanwhile, a normal client is served at once.
        let started = Instant::now();
        let a = rig.exchange(b"GET /livez HTTP/1.1\r\n\r\n");
        assert_eq!(status_code(&a), 200, "{a}");
        assert!(started.elapsed() < Duration::from_millis(250));
        // A huge request is refused without reading it all.
        let mut huge = rig.connect();
        let mut request = b"GET /status HTTP/1.1\r\nX-Padding: ".to_vec();
        request.extend(std::iter::repeat(b'a').take(64 * 1024));
        let _ = huge.write(&request);
        let a = rig.read_all(&mut huge);
        assert_eq!(status_code(&a), 413, "{a}");
        // The slow client trickles on; at the deadline, all of them are cut off.
        let deadline = Instant::now() + Duration::from_secs(3);
        while rig.server.borrow().connections() > 0 && Instant::now() < deadline {
            let _ = slow.write(b"T");
            std::thread::sleep(Duration::from_millis(20));
            rig.round(20);
        }
        assert_eq!(rig.server.borrow().connections(), 0);
        let stats = rig.server.borrow().stats();
        assert_eq!(stats.timed_out, 4, "{stats:?}");
        assert_eq!(stats.too_large, 1, "{stats:?}");
        for mut s in silent {
            let mut answer = String::new();
            s.set_nonblocking(false).unwrap();
            let _ = s.read_to_string(&mut answer);
            assert_eq!(status_code(&answer), 408, "{answer}");
        }
    }

    #[test]
    fn connections_beyond_the_limit_get_503_at_once() {
        let limits = Limits {
            max_connections: 3,
            ..Limits::default()
        };
        let mut rig = Rig::new(limits);
        let held: Vec<UnixStream> = (0..3).map(|_| rig.connect()).collect();
        rig.until(Duration::from_secs(1), |r| {
            r.server.borrow().connections() == 3
        });
        let mut extra = rig.connect();
        let a = rig.read_all(&mut extra);
        assert_eq!(status_code(&a), 503, "{a}");
        assert_eq!(rig.server.borrow().stats().refused_busy, 1);
        drop(held);
        // Closed by their clients: the slots free up.
        rig.until(Duration::from_secs(1), |r| {
            r.server.borrow().connections() == 0
        });
        let a = rig.exchange(b"GET /livez HTTP/1.1\r\n\r\n");
        assert_eq!(status_code(&a), 200, "{a}");
    }

    #[test]
    fn parse_waits_for_the_body_and_bounds_it() {
        assert!(matches!(parse(b"GET / HTTP/1.1\r\n"), Parsed::Partial));
        assert!(matches!(
            parse(b"PUT /vm/stop HTTP/1.1\r\nContent-Length: 2\r\n\r\n{"),
            Parsed::Partial
        ));
        assert!(matches!(
            parse(b"PUT /vm/stop HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}"),
            Parsed::Complete { .. }
        ));
        assert!(matches!(
            parse(b"PUT /vm/stop HTTP/1.1\r\nContent-Length: 99999\r\n\r\n"),
            Parsed::Bad(413, _)
        ));
        assert!(matches!(
            parse(b"PUT /vm/stop HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"),
            Parsed::Bad(400, _)
        ));
        let mut many = b"GET / HTTP/1.1\r\n".to_vec();
        for i in 0..40 {
            many.extend(format!("H{i}: v\r\n").bytes());
        }
        many.extend(b"\r\n");
        assert!(matches!(parse(&many), Parsed::Bad(431, _)));
    }
}
