//! A non-blocking QEMU guest agent (`qemu-ga`) client for `exec` and
//! `guestAgentPing` probes, driven by the caller's epoll loop.
//!
//! One [`AgentClient`] owns one persistent connection to the agent of one VM:
//! a Unix socket where `qemu-ga -m unix-listen -p PATH` listens (reconnected
//! with back-off when it goes away), or an already connected stream such as
//! the host end of the VM's second serial port (never reconnected).
//!
//! The client never blocks and owns no thread and no timer: the caller
//! watches [`AgentClient::interests`], calls [`AgentClient::on_ready`] when one
//! of those fds is ready and [`AgentClient::on_timer`] at
//! [`AgentClient::next_deadline`], and collects results with
//! [`AgentClient::take_completions`].
//!
//! Protocol rules followed (see `docs/PROBES.md` §4):
//! - one request outstanding at a time (the agent is strictly serial);
//! - before the first command on a connection, and after any timeout or
//!   garbled reply, a `0xFF` byte plus `guest-sync-delimited` with a fresh
//!   random id; everything up to the `0xFF` that precedes the matching reply
//!   is discarded (stale replies, the agent's complaint about the `0xFF`
//!   byte, echo, console noise);
//! - replies are newline-terminated JSON objects, read into a buffer bounded
//!   by [`MAX_REPLY_LINE`]; any `error` reply fails the command, whatever its
//!   wording;
//! - exec is `guest-exec` (arguments JSON-encoded, `capture-output: true`)
//!   followed by `guest-exec-status` polls until `exited`; a death by signal
//!   is reported as such, never as exit code 0.
//!
//! ```no_run
//! use std::time::{Duration, Instant};
//! use vmpulse_probes::agent::{AgentClient, AgentOutcome};
//! use vmpulse_probes::AgentChannel;
//!
//! let mut agent = AgentClient::new(AgentChannel::UnixSocket("/run/vm1/qga.sock".into()));
//! let now = Instant::now();
//! agent.start_ping(1, now, now + Duration::from_secs(1));
//! // ... the event loop watches agent.interests(), calls agent.on_ready(now) and
//! // agent.on_timer(now) at agent.next_deadline(), then:
//! for (id, outcome) in agent.take_completions() {
//!     println!("probe {id}: {}", outcome == AgentOutcome::Pong);
//! }
//! ```

use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};
use std::io::{self, Read};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{json, Value};
use socket2::{Domain, SockAddr, Socket, Type};

use crate::AgentChannel;

/// The longest reply line accepted from the agent; a longer one is garbage
/// (the buffer is dropped and the link resynchronised).
pub const MAX_REPLY_LINE: usize = 64 * 1024;
/// The most bytes of stdout+stderr kept in [`AgentOutcome::Exited`].
pub const OUTPUT_EXCERPT: usize = 1024;
/// What a second exec for a probe whose previous exec still runs ends with.
pub const PREVIOUS_EXEC_RUNNING: &str = "previous exec still running";

/// The `guest-exec-status` poll schedule of one attempt, from the `guest-exec`
/// reply on. The first poll goes out at once, or, for a probe whose previous exec
/// was polled, at the latest time that exec was seen still running (most probes
/// run the same quick command every period; see `remember_run_time`). After a poll that finds the command
/// still running, the next one waits `POLL_FIRST` × [`POLL_GROWTH`]^k (k: polls
/// already made), and at least an eighth of the time the command has run so far
/// (so a long command is seen exiting at most about 12 % late), never more than
/// [`POLL_MAX`]: a quick command is answered within a fraction of a millisecond
/// of its end, a long one is polled at most ten times a second, never in a busy
/// loop.
const POLL_FIRST: Duration = Duration::from_micros(200);
/// Growth of the interval between two polls that found the command running.
const POLL_GROWTH: f64 = 1.5;
/// The longest interval between two polls.
const POLL_MAX: Duration = Duration::from_millis(100);
/// When the first poll of an exec already found it exited at `t`, the next exec
/// of the probe is first polled at `t` × this.
const POLL_HINT_SHARE: f64 = 0.8;
/// The latest first poll a hint can ask for.
const POLL_HINT_CAP: Duration = Duration::from_secs(1);
/// Probes whose last exec run time is remembered; the memory is cleared when full.
const MAX_EXEC_HINTS: usize = 4096;
/// How long a request whose attempt is gone (deadline, cancel) may still hold
/// the link while its reply is awaited, before the link is resynchronised.
const ORPHAN_GRACE: Duration = Duration::from_millis(250);
/// How often a timed-out, still running exec is checked in the background.
const STUCK_POLL_EVERY: Duration = Duration::from_secs(1);
/// The deadline of a background request (sync or status poll for a stuck exec).
const BACKGROUND_TIMEOUT: Duration = Duration::from_secs(1);
/// After this long a stuck exec is forgotten and a new exec may start.
const DEFAULT_STUCK_EXEC_BOUND: Duration = Duration::from_secs(300);
/// The most stuck execs remembered per agent; the oldest is forgotten first.
const MAX_STUCK_EXECS: usize = 256;
/// Reconnect back-off bounds.
const BACKOFF_MIN: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_secs(2);
/// Retry delay when the agent's listen backlog is full.
const BUSY_RETRY: Duration = Duration::from_millis(10);
/// The read chunk size (at most [`READ_BUDGET`] is read per call anyway).
const READ_CHUNK: usize = 2 * 1024;
/// Bytes read at most per [`AgentClient::on_ready`] call, so a flooding peer
/// cannot hold the caller's loop (the lines in them are handled in the same
/// call, each in time linear in its length); level-triggered readiness brings
/// the client back for the rest.
pub const READ_BUDGET: usize = 2 * 1024;
/// The sync handshake's lexer-reset byte and reply delimiter.
const SYNC_MARKER: u8 = 0xFF;

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
        /// A bounded excerpt (<= 1 KiB, lossy UTF-8) of stdout followed by stderr.
        output: String,
    },
    /// Failure before a result: agent absent, connection lost, garbled reply, agent error
    /// reply (e.g. command not found), deadline passed, or a previous exec for this probe
    /// still running.
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

/// Counters of what happened on the link (for logs, status and tests).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AgentStats {
    /// Connections established (Unix socket transport).
    pub connects: u64,
    /// Connection attempts that failed (socket missing, refused, backlog full).
    pub connect_failures: u64,
    /// Connections lost (EOF or I/O error).
    pub disconnects: u64,
    /// Sync handshakes completed.
    pub syncs: u64,
    /// Delimited replies discarded during a sync because their id was not ours.
    pub stale_replies: u64,
    /// Bytes skipped while looking for the sync delimiter.
    pub skipped_bytes: u64,
    /// Echoed requests (`{"execute": ...}`) ignored.
    pub echoes: u64,
    /// Garbled input: unparseable or unexpected lines, over-long lines.
    pub garbled: u64,
    /// Requests whose reply did not come by their deadline.
    pub request_timeouts: u64,
    /// Requests sent, syncs included.
    pub requests: u64,
}

/// One persistent connection to qemu-ga per VM; non-blocking; never blocks the caller.
#[derive(Debug)]
pub struct AgentClient {
    /// Where to (re)connect; `None` for a stream handed over by the caller.
    path: Option<PathBuf>,
    conn: Option<Conn>,
    /// Whether the caller's stream has closed for good.
    stream_dead: bool,
    /// The earliest time of the next connection attempt.
    retry_at: Option<Instant>,
    backoff: Duration,
    last_error: String,
    /// Whether a sync handshake has succeeded since the last desync.
    synced: bool,
    /// In sync scanning: a `0xFF` has been seen, its line is being read.
    after_marker: bool,
    inflight: Option<InFlight>,
    attempts: Vec<Attempt>,
    stuck: HashMap<u64, StuckExec>,
    stuck_bound: Duration,
    /// Per probe: how long after its `guest-exec` reply the last exec was seen exited.
    exec_hints: HashMap<u64, Duration>,
    done: Vec<(u64, AgentOutcome)>,
    rng: RandomState,
    rng_counter: u64,
    stats: AgentStats,
}

#[derive(Debug)]
struct Conn {
    sock: Socket,
    /// Input; bytes before `rpos` are consumed (compacted after each batch, so
    /// a line costs time linear in its length, not in the buffer's).
    rbuf: Vec<u8>,
    rpos: usize,
    wbuf: Vec<u8>,
}

#[derive(Debug)]
struct InFlight {
    req: Req,
    deadline: Instant,
    /// The attempt waiting for this reply; `None` for syncs, background polls
    /// and requests whose attempt is gone.
    owner: Option<u64>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Req {
    Sync { id: i64 },
    Ping,
    Exec { probe: u64 },
    Status { probe: u64, pid: i64 },
}

#[derive(Debug)]
struct Attempt {
    id: u64,
    deadline: Instant,
    state: AttemptState,
}

#[derive(Debug)]
enum AttemptState {
    PingQueued,
    PingSent,
    ExecQueued(Vec<u8>),
    ExecSent,
    ExecRunning {
        pid: i64,
        next_poll: Instant,
        polls: usize,
        /// When the `guest-exec` reply came.
        since: Instant,
        /// The latest poll (time after `since` it was sent) that found the command running.
        running: Option<Duration>,
    },
    ExecPolling {
        pid: i64,
        polls: usize,
        since: Instant,
        running: Option<Duration>,
        /// When this poll was sent.
        sent: Instant,
    },
}

/// An exec whose attempt ended (deadline) while the guest command still ran.
#[derive(Debug)]
struct StuckExec {
    pid: i64,
    since: Instant,
    next_check: Instant,
}

impl AgentClient {
    /// Creates the client. Nothing is connected until the first attempt.
    pub fn new(channel: AgentChannel) -> Self {
        let mut client = AgentClient {
            path: None,
            conn: None,
            stream_dead: false,
            retry_at: None,
            backoff: BACKOFF_MIN,
            last_error: String::new(),
            synced: false,
            after_marker: false,
            inflight: None,
            attempts: Vec::new(),
            stuck: HashMap::new(),
            stuck_bound: DEFAULT_STUCK_EXEC_BOUND,
            exec_hints: HashMap::new(),
            done: Vec::new(),
            rng: RandomState::new(),
            rng_counter: 0,
            stats: AgentStats::default(),
        };
        match channel {
            AgentChannel::UnixSocket(path) => client.path = Some(path),
            AgentChannel::Stream(stream) => {
                let sock = Socket::from(OwnedFd::from(stream));
                match sock.set_nonblocking(true) {
                    Ok(()) => client.conn = Some(Conn::new(sock)),
                    Err(e) => {
                        client.stream_dead = true;
                        client.last_error = format!("agent stream unusable: {e}");
                    }
                }
            }
        }
        client
    }

    /// Sets how long a timed-out exec that still runs in the guest blocks new
    /// execs of the same probe before it is forgotten (default 300 s).
    pub fn set_stuck_exec_bound(&mut self, bound: Duration) {
        self.stuck_bound = bound;
    }

    /// Counters of what happened on the link.
    pub fn stats(&self) -> AgentStats {
        self.stats
    }

    /// Bytes of input held (an incomplete reply line): at most
    /// [`MAX_REPLY_LINE`] plus one read.
    pub fn buffered(&self) -> usize {
        self.conn.as_ref().map_or(0, |c| c.rbuf.len() - c.rpos)
    }

    /// Attempts still waiting for their result.
    pub fn pending(&self) -> usize {
        self.attempts.len()
    }

    /// The fds the event loop must watch right now, level-triggered (the client
    /// reads at most [`READ_BUDGET`] bytes per call and relies on being woken again
    /// for the rest).
    /// The caller re-syncs its registrations after every call into the client. After a connection is
    /// lost, at least one call reports no fd before a new connection appears,
    /// so a reused fd number always shows up as a change.
    pub fn interests(&self) -> Vec<FdInterest> {
        match &self.conn {
            Some(c) => vec![FdInterest {
                fd: c.sock.as_raw_fd(),
                read: true,
                write: !c.wbuf.is_empty(),
            }],
            None => Vec::new(),
        }
    }

    /// Changes whenever the connection is replaced or dropped, so that a caller
    /// caching its epoll registration of [`AgentClient::interests`] can tell a
    /// new socket that reuses the old one's fd number from the old one.
    pub(crate) fn link_serial(&self) -> u64 {
        self.stats.connects + self.stats.disconnects
    }

    /// The earliest time the client needs [`AgentClient::on_timer`]: attempt
    /// deadlines, exec-status polls, reconnect back-off, background checks.
    pub fn next_deadline(&self) -> Option<Instant> {
        let mut next: Option<Instant> = None;
        let mut consider = |t: Instant| {
            next = Some(next.map_or(t, |n: Instant| n.min(t)));
        };
        for a in &self.attempts {
            consider(a.deadline);
        }
        if let Some(f) = &self.inflight {
            consider(f.deadline);
        }
        if self.conn.is_some() {
            if self.inflight.is_none() {
                if self.synced {
                    for a in &self.attempts {
                        if let AttemptState::ExecRunning { next_poll, .. } = a.state {
                            consider(next_poll);
                        }
                    }
                }
                for s in self.stuck.values() {
                    consider(s.next_check);
                }
            }
        } else if !self.attempts.is_empty() {
            if let Some(t) = self.retry_at {
                consider(t);
            }
        }
        next
    }

    /// Call when one of the fds is ready (or spuriously: the client copes).
    pub fn on_ready(&mut self, now: Instant) {
        self.flush(now);
        self.read_input(now);
        self.drive(now);
    }

    /// Call at/after [`AgentClient::next_deadline`] (early calls are harmless).
    pub fn on_timer(&mut self, now: Instant) {
        self.drive(now);
    }

    /// Starts a guest-exec of `argv` for probe `id`, which must finish by `deadline`.
    /// If the previous exec of the same `id` is still running in the guest, the attempt
    /// completes as `Failed("previous exec still running")` and nothing new is started.
    pub fn start_exec(&mut self, id: u64, argv: &[String], now: Instant, deadline: Instant) {
        if self.refuse_busy(id, now) {
            return;
        }
        if argv.is_empty() {
            self.done
                .push((id, AgentOutcome::Failed("empty exec command".into())));
            return;
        }
        let bytes = exec_request(argv);
        self.add_attempt(id, deadline, AttemptState::ExecQueued(bytes), now);
    }

    /// Starts a guest-ping for probe `id`, due by `deadline`.
    pub fn start_ping(&mut self, id: u64, now: Instant, deadline: Instant) {
        if self.attempts.iter().any(|a| a.id == id) {
            self.done.push((
                id,
                AgentOutcome::Failed("previous attempt still in progress".into()),
            ));
            return;
        }
        self.add_attempt(id, deadline, AttemptState::PingQueued, now);
    }

    /// Cancels whatever attempt `id` has in flight (VM stopped): no completion is
    /// reported for it. A guest command it started is still tracked, so a later exec
    /// of the same probe is refused while that command runs.
    pub fn cancel(&mut self, id: u64) {
        if let Some(pos) = self.attempts.iter().position(|a| a.id == id) {
            let a = self.attempts.remove(pos);
            if let AttemptState::ExecRunning { pid, .. } | AttemptState::ExecPolling { pid, .. } =
                a.state
            {
                let now = Instant::now();
                self.remember_stuck(id, pid, now);
            }
            if let Some(f) = &mut self.inflight {
                if f.owner == Some(id) {
                    f.owner = None;
                    f.deadline = Instant::now() + ORPHAN_GRACE;
                }
            }
        }
        self.done.retain(|(i, _)| *i != id);
    }

    /// Completed attempts since the last call, in completion order: (id, outcome).
    pub fn take_completions(&mut self) -> Vec<(u64, AgentOutcome)> {
        std::mem::take(&mut self.done)
    }

    // ----- attempts -----

    /// Refuses a new exec while an attempt of `id` runs, or while its previous
    /// exec still runs in the guest. Returns whether it refused.
    fn refuse_busy(&mut self, id: u64, now: Instant) -> bool {
        if self.attempts.iter().any(|a| a.id == id) {
            self.done.push((
                id,
                AgentOutcome::Failed("previous attempt still in progress".into()),
            ));
            return true;
        }
        if let Some(s) = self.stuck.get(&id) {
            if now.saturating_duration_since(s.since) >= self.stuck_bound {
                log::warn!(
                    "guest agent: forgetting exec pid {} of probe {id}, still running after {:?}",
                    s.pid,
                    self.stuck_bound
                );
                self.stuck.remove(&id);
            } else {
                self.done
                    .push((id, AgentOutcome::Failed(PREVIOUS_EXEC_RUNNING.into())));
                return true;
            }
        }
        let orphan_exec = matches!(
            self.inflight,
            Some(InFlight { req: Req::Exec { probe }, owner: None, .. }) if probe == id
        );
        if orphan_exec {
            self.done
                .push((id, AgentOutcome::Failed(PREVIOUS_EXEC_RUNNING.into())));
            return true;
        }
        false
    }

    fn add_attempt(&mut self, id: u64, deadline: Instant, state: AttemptState, now: Instant) {
        if let Some(f) = &mut self.inflight {
            if matches!(f.req, Req::Sync { .. }) && f.deadline < deadline {
                f.deadline = deadline;
            }
        }
        self.attempts.push(Attempt {
            id,
            deadline,
            state,
        });
        self.drive(now);
    }

    fn complete(&mut self, id: u64, outcome: AgentOutcome) {
        if let Some(pos) = self.attempts.iter().position(|a| a.id == id) {
            self.attempts.remove(pos);
            self.done.push((id, outcome));
        }
    }

    fn remember_stuck(&mut self, probe: u64, pid: i64, now: Instant) {
        if !self.stuck.contains_key(&probe) && self.stuck.len() >= MAX_STUCK_EXECS {
            if let Some(oldest) = self
                .stuck
                .iter()
                .min_by_key(|(_, s)| s.since)
                .map(|(k, _)| *k)
            {
                self.stuck.remove(&oldest);
            }
        }
        self.stuck.entry(probe).or_insert(StuckExec {
            pid,
            since: now,
            next_check: now + STUCK_POLL_EVERY,
        });
    }

    /// Fails every attempt whose deadline has passed.
    fn expire_attempts(&mut self, now: Instant) {
        let mut i = 0;
        while i < self.attempts.len() {
            if self.attempts[i].deadline > now {
                i += 1;
                continue;
            }
            let a = self.attempts.remove(i);
            let owns_inflight = self
                .inflight
                .as_ref()
                .is_some_and(|f| f.owner == Some(a.id));
            let message = match a.state {
                AttemptState::ExecRunning { pid, .. } | AttemptState::ExecPolling { pid, .. } => {
                    self.remember_stuck(a.id, pid, now);
                    format!("timed out: guest command still running (pid {pid})")
                }
                AttemptState::PingSent => "timed out: no reply to guest-ping".to_string(),
                AttemptState::ExecSent => "timed out: no reply to guest-exec".to_string(),
                _ if self.conn.is_none() => {
                    format!("timed out: agent not reachable ({})", self.last_error)
                }
                _ if !self.synced => "timed out: agent did not answer the sync".to_string(),
                _ => "timed out waiting for the agent".to_string(),
            };
            if owns_inflight {
                if let Some(f) = &mut self.inflight {
                    f.owner = None;
                    // Wait a little for the reply (it usually is on its way)
                    // before declaring the link out of sync.
                    f.deadline = now + ORPHAN_GRACE;
                }
            }
            log::debug!("guest agent: probe {} {message}", a.id);
            self.done.push((a.id, AgentOutcome::Failed(message)));
        }
        let bound = self.stuck_bound;
        self.stuck
            .retain(|_, s| now.saturating_duration_since(s.since) < bound);
    }

    /// Fails every attempt at once (connection lost or unreachable).
    fn fail_all(&mut self, message: &str, now: Instant) {
        for a in std::mem::take(&mut self.attempts) {
            if let AttemptState::ExecRunning { pid, .. } | AttemptState::ExecPolling { pid, .. } =
                a.state
            {
                self.remember_stuck(a.id, pid, now);
            }
            self.done
                .push((a.id, AgentOutcome::Failed(message.to_string())));
        }
    }

    // ----- the link -----

    /// Advances everything that does not need input: deadlines, connecting,
    /// sending the next request.
    fn drive(&mut self, now: Instant) {
        self.expire_attempts(now);
        if let Some(f) = &self.inflight {
            if f.deadline <= now {
                self.stats.request_timeouts += 1;
                if matches!(f.req, Req::Sync { .. }) {
                    self.last_error = "agent did not answer the sync".into();
                }
                log::debug!("guest agent: no reply to {:?} by its deadline", f.req);
                self.desync();
            }
        }
        if self.conn.is_none() {
            self.ensure_connected(now);
        }
        if self.conn.is_some() && self.inflight.is_none() {
            self.send_next(now);
        }
    }

    fn ensure_connected(&mut self, now: Instant) {
        if self.attempts.is_empty() {
            return;
        }
        let Some(path) = self.path.clone() else {
            let message = if self.stream_dead {
                format!("agent channel closed ({})", self.last_error)
            } else {
                "agent channel closed".to_string()
            };
            self.fail_all(&message, now);
            return;
        };
        if let Some(t) = self.retry_at {
            if t > now {
                // Attempts that cannot outlive the back-off fail now.
                let last = self.last_error.clone();
                let mut i = 0;
                while i < self.attempts.len() {
                    if self.attempts[i].deadline <= t {
                        let a = self.attempts.remove(i);
                        self.done.push((
                            a.id,
                            AgentOutcome::Failed(format!("agent not reachable: {last}")),
                        ));
                    } else {
                        i += 1;
                    }
                }
                return;
            }
        }
        match connect_unix(&path) {
            Ok(sock) => {
                self.stats.connects += 1;
                self.conn = Some(Conn::new(sock));
                self.retry_at = None;
                self.synced = false;
                self.after_marker = false;
                log::debug!("guest agent: connected to {}", path.display());
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                // The listen backlog is full: the agent (one client at a time) is
                // still busy with a previous client. Retry soon; attempts wait
                // until their deadline.
                self.stats.connect_failures += 1;
                self.last_error = format!("{}: agent busy (listen backlog full)", path.display());
                self.retry_at = Some(now + BUSY_RETRY);
            }
            Err(e) => {
                self.stats.connect_failures += 1;
                self.last_error = format!("{}: {e}", path.display());
                self.retry_at = Some(now + self.backoff);
                self.backoff = (self.backoff * 2).min(BACKOFF_MAX);
                let message = format!("agent not reachable: {}", self.last_error);
                self.fail_all(&message, now);
            }
        }
    }

    fn lose_connection(&mut self, why: String, now: Instant) {
        if self.conn.take().is_none() {
            return;
        }
        self.stats.disconnects += 1;
        log::warn!("guest agent: connection lost: {why}");
        self.synced = false;
        self.after_marker = false;
        self.inflight = None;
        self.last_error = why.clone();
        if self.path.is_some() {
            self.retry_at = Some(now + self.backoff);
            self.backoff = (self.backoff * 2).min(BACKOFF_MAX);
        } else {
            self.stream_dead = true;
        }
        self.fail_all(&format!("agent connection lost: {why}"), now);
    }

    /// Marks the link out of sync: nothing is sent until a sync succeeds, and
    /// input is skipped up to the sync delimiter.
    fn desync(&mut self) {
        self.synced = false;
        self.after_marker = false;
        self.inflight = None;
        if let Some(c) = &mut self.conn {
            c.rbuf.clear();
            c.rpos = 0;
        }
    }

    fn send_next(&mut self, now: Instant) {
        let bound = self.stuck_bound;
        let stuck_due = self
            .stuck
            .iter()
            .filter(|(_, s)| s.next_check <= now && now.saturating_duration_since(s.since) < bound)
            .map(|(k, s)| (*k, s.pid))
            .next();
        if !self.synced {
            if self.attempts.is_empty() && stuck_due.is_none() {
                return;
            }
            let id = self.next_sync_id();
            let deadline = self
                .attempts
                .iter()
                .map(|a| a.deadline)
                .max()
                .unwrap_or(now + BACKGROUND_TIMEOUT);
            let mut bytes = vec![SYNC_MARKER];
            bytes.extend_from_slice(
                json!({"execute": "guest-sync-delimited", "arguments": {"id": id}})
                    .to_string()
                    .as_bytes(),
            );
            bytes.push(b'\n');
            self.after_marker = false;
            if let Some(c) = &mut self.conn {
                c.rbuf.clear();
                c.rpos = 0;
            }
            self.send(Req::Sync { id }, bytes, deadline, None, now);
            return;
        }
        // Attempts first, in start order.
        let mut pick = None;
        for (i, a) in self.attempts.iter().enumerate() {
            let ready = match &a.state {
                AttemptState::PingQueued | AttemptState::ExecQueued(_) => true,
                AttemptState::ExecRunning { next_poll, .. } => *next_poll <= now,
                _ => false,
            };
            if ready {
                pick = Some(i);
                break;
            }
        }
        if let Some(i) = pick {
            let a = &mut self.attempts[i];
            let id = a.id;
            let deadline = a.deadline;
            let state = std::mem::replace(&mut a.state, AttemptState::PingSent);
            let (req, bytes) = match state {
                AttemptState::PingQueued => {
                    a.state = AttemptState::PingSent;
                    (Req::Ping, b"{\"execute\":\"guest-ping\"}\n".to_vec())
                }
                AttemptState::ExecQueued(bytes) => {
                    a.state = AttemptState::ExecSent;
                    (Req::Exec { probe: id }, bytes)
                }
                AttemptState::ExecRunning {
                    pid,
                    polls,
                    since,
                    running,
                    ..
                } => {
                    a.state = AttemptState::ExecPolling {
                        pid,
                        polls,
                        since,
                        running,
                        sent: now,
                    };
                    (Req::Status { probe: id, pid }, status_request(pid))
                }
                other => {
                    a.state = other;
                    return;
                }
            };
            self.send(req, bytes, deadline, Some(id), now);
            return;
        }
        if let Some((probe, pid)) = stuck_due {
            if let Some(s) = self.stuck.get_mut(&probe) {
                s.next_check = now + STUCK_POLL_EVERY;
            }
            self.send(
                Req::Status { probe, pid },
                status_request(pid),
                now + BACKGROUND_TIMEOUT,
                None,
                now,
            );
        }
    }

    fn send(
        &mut self,
        req: Req,
        bytes: Vec<u8>,
        deadline: Instant,
        owner: Option<u64>,
        now: Instant,
    ) {
        let Some(c) = &mut self.conn else {
            return;
        };
        self.stats.requests += 1;
        c.wbuf.extend_from_slice(&bytes);
        self.inflight = Some(InFlight {
            req,
            deadline,
            owner,
        });
        self.flush(now);
    }

    fn flush(&mut self, now: Instant) {
        let Some(c) = &mut self.conn else {
            return;
        };
        while !c.wbuf.is_empty() {
            match c.sock.send_with_flags(&c.wbuf, libc::MSG_NOSIGNAL) {
                Ok(0) => {
                    self.lose_connection("agent stopped accepting data".into(), now);
                    return;
                }
                Ok(n) => {
                    c.wbuf.drain(..n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    self.lose_connection(format!("write: {e}"), now);
                    return;
                }
            }
        }
    }

    fn read_input(&mut self, now: Instant) {
        let mut chunk = [0u8; READ_CHUNK];
        let mut budget = READ_BUDGET;
        while budget > 0 {
            let Some(c) = &mut self.conn else {
                return;
            };
            let want = budget.min(READ_CHUNK);
            match (&c.sock).read(&mut chunk[..want]) {
                Ok(0) => {
                    self.process_input(now);
                    self.lose_connection("closed by the agent".into(), now);
                    return;
                }
                Ok(n) => {
                    budget -= n;
                    c.rbuf.extend_from_slice(&chunk[..n]);
                    self.process_input(now);
                    if n < want {
                        // A short read of a stream socket took everything there
                        // was: another read would only say EAGAIN. More input
                        // makes the fd readable again (a new edge, too).
                        return;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    self.lose_connection(format!("read: {e}"), now);
                    return;
                }
            }
        }
    }

    /// Consumes whatever complete input is buffered.
    fn process_input(&mut self, now: Instant) {
        self.process_lines(now);
        if let Some(c) = &mut self.conn {
            c.rbuf.drain(..c.rpos);
            c.rpos = 0;
        }
    }

    /// Consumes complete lines from `rbuf[rpos..]`, advancing `rpos`.
    fn process_lines(&mut self, now: Instant) {
        loop {
            let Some(c) = &mut self.conn else {
                return;
            };
            if c.rpos >= c.rbuf.len() {
                return;
            }
            if !self.synced {
                let sync_id = match self.inflight {
                    Some(InFlight {
                        req: Req::Sync { id },
                        ..
                    }) => id,
                    _ => {
                        // Nothing to sync with yet: whatever comes is stale.
                        self.stats.skipped_bytes += (c.rbuf.len() - c.rpos) as u64;
                        c.rpos = c.rbuf.len();
                        self.after_marker = false;
                        return;
                    }
                };
                if !self.after_marker {
                    match c.rbuf[c.rpos..].iter().position(|&b| b == SYNC_MARKER) {
                        Some(p) => {
                            self.stats.skipped_bytes += p as u64;
                            c.rpos += p + 1;
                            self.after_marker = true;
                        }
                        None => {
                            self.stats.skipped_bytes += (c.rbuf.len() - c.rpos) as u64;
                            c.rpos = c.rbuf.len();
                            return;
                        }
                    }
                }
                let Some(nl) = c.rbuf[c.rpos..].iter().position(|&b| b == b'\n') else {
                    if c.rbuf.len() - c.rpos > MAX_REPLY_LINE {
                        self.stats.garbled += 1;
                        self.stats.skipped_bytes += (c.rbuf.len() - c.rpos) as u64;
                        c.rpos = c.rbuf.len();
                        self.after_marker = false;
                    }
                    return;
                };
                let line = c.rbuf[c.rpos..=c.rpos + nl].to_vec();
                c.rpos += nl + 1;
                // A later marker on the same line starts a newer delimited reply.
                let line = match line.iter().rposition(|&b| b == SYNC_MARKER) {
                    Some(p) => {
                        self.stats.skipped_bytes += p as u64 + 1;
                        &line[p + 1..]
                    }
                    None => &line[..],
                };
                self.after_marker = false;
                let value: Option<Value> = serde_json::from_slice(line).ok();
                match value
                    .as_ref()
                    .and_then(|v| v.get("return"))
                    .and_then(Value::as_i64)
                {
                    Some(n) if n == sync_id => {
                        self.synced = true;
                        self.inflight = None;
                        self.backoff = BACKOFF_MIN;
                        self.stats.syncs += 1;
                    }
                    _ => {
                        self.stats.stale_replies += 1;
                        log::debug!("guest agent: discarding a stale delimited reply");
                    }
                }
                continue;
            }
            let Some(nl) = c.rbuf[c.rpos..].iter().position(|&b| b == b'\n') else {
                if c.rbuf.len() - c.rpos > MAX_REPLY_LINE {
                    self.garbled(format!("reply longer than {MAX_REPLY_LINE} bytes"), now);
                }
                return;
            };
            let line = c.rbuf[c.rpos..=c.rpos + nl].to_vec();
            c.rpos += nl + 1;
            let text = line.trim_ascii();
            if text.is_empty() {
                continue;
            }
            let value = match serde_json::from_slice::<Value>(text) {
                Ok(v @ Value::Object(_)) => v,
                _ => {
                    self.garbled("unparseable reply from the agent".into(), now);
                    continue;
                }
            };
            if value.get("execute").is_some() {
                // Our own request echoed by a serial line.
                self.stats.echoes += 1;
                continue;
            }
            if value.get("return").is_none() && value.get("error").is_none() {
                self.garbled("reply with neither return nor error".into(), now);
                continue;
            }
            match self.inflight.take() {
                Some(f) => self.on_reply(f, value, now),
                None => self.garbled("unsolicited reply from the agent".into(), now),
            }
        }
    }

    /// Garbled input: fails the attempt waiting for a reply and resyncs.
    fn garbled(&mut self, why: String, _now: Instant) {
        self.stats.garbled += 1;
        log::warn!("guest agent: {why}; resynchronising");
        if let Some(owner) = self.inflight.as_ref().and_then(|f| f.owner) {
            self.complete(
                owner,
                AgentOutcome::Failed(format!("garbled agent reply: {why}")),
            );
        }
        self.desync();
    }

    fn on_reply(&mut self, f: InFlight, value: Value, now: Instant) {
        let error = value.get("error").map(describe_error);
        let ret = value.get("return");
        match f.req {
            Req::Sync { .. } => {
                // A sync reply never arrives in sync mode; treat it as garbage.
                self.inflight = None;
                self.desync();
            }
            Req::Ping => {
                if let Some(owner) = f.owner {
                    let outcome = match error {
                        Some(e) => AgentOutcome::Failed(format!("guest-ping: {e}")),
                        None => AgentOutcome::Pong,
                    };
                    self.complete(owner, outcome);
                }
            }
            Req::Exec { probe } => {
                let pid = ret.and_then(|r| r.get("pid")).and_then(Value::as_i64);
                match (error, pid) {
                    (Some(e), _) => {
                        if let Some(owner) = f.owner {
                            self.complete(owner, AgentOutcome::Failed(format!("guest-exec: {e}")));
                        }
                    }
                    (None, Some(pid)) if pid > 0 => match f.owner {
                        Some(owner) => {
                            let first = self
                                .exec_hints
                                .get(&probe)
                                .map_or(Duration::ZERO, |h| (*h).min(POLL_HINT_CAP));
                            if let Some(a) = self.attempts.iter_mut().find(|a| a.id == owner) {
                                a.state = AttemptState::ExecRunning {
                                    pid,
                                    next_poll: now + first,
                                    polls: 0,
                                    since: now,
                                    running: None,
                                };
                            }
                        }
                        None => self.remember_stuck(probe, pid, now),
                    },
                    (None, _) => {
                        if let Some(owner) = f.owner {
                            self.complete(
                                owner,
                                AgentOutcome::Failed(
                                    "guest-exec: reply without a valid pid".into(),
                                ),
                            );
                        }
                    }
                }
            }
            Req::Status { probe, pid } => {
                if let Some(e) = error {
                    // The agent no longer knows the pid (restarted, or reaped).
                    self.forget_stuck(probe, pid);
                    if let Some(owner) = f.owner {
                        self.complete(
                            owner,
                            AgentOutcome::Failed(format!("guest-exec-status: {e}")),
                        );
                    }
                    return;
                }
                let Some(ret) = ret else { return };
                match ret.get("exited").and_then(Value::as_bool) {
                    Some(true) => {
                        self.forget_stuck(probe, pid);
                        if let Some(owner) = f.owner {
                            self.remember_run_time(owner, probe);
                            self.complete(owner, exited_outcome(ret));
                        }
                    }
                    Some(false) => match f.owner {
                        Some(owner) => {
                            if let Some(a) = self.attempts.iter_mut().find(|a| a.id == owner) {
                                if let AttemptState::ExecPolling {
                                    polls, since, sent, ..
                                } = a.state
                                {
                                    let ran = now.saturating_duration_since(since);
                                    a.state = AttemptState::ExecRunning {
                                        pid,
                                        next_poll: now + poll_interval(polls, ran),
                                        polls: polls + 1,
                                        since,
                                        running: Some(sent.saturating_duration_since(since)),
                                    };
                                }
                            }
                        }
                        None => self.remember_stuck(probe, pid, now),
                    },
                    None => {
                        if let Some(owner) = f.owner {
                            self.complete(
                                owner,
                                AgentOutcome::Failed(
                                    "guest-exec-status: reply without 'exited'".into(),
                                ),
                            );
                        }
                    }
                }
            }
        }
    }

    /// The exec of `owner`'s attempt (probe `probe`) was seen exited by the poll
    /// in flight: the next exec of the probe is first polled at the latest time
    /// this one was seen running, or, when the first poll already found it exited,
    /// earlier than that poll (by [`POLL_HINT_SHARE`]), so the hint follows a
    /// command that got quicker as well as one that got slower.
    fn remember_run_time(&mut self, owner: u64, probe: u64) {
        let Some(a) = self.attempts.iter().find(|a| a.id == owner) else {
            return;
        };
        let AttemptState::ExecPolling {
            since,
            running,
            sent,
            ..
        } = a.state
        else {
            return;
        };
        let hint = running.unwrap_or_else(|| {
            sent.saturating_duration_since(since)
                .mul_f64(POLL_HINT_SHARE)
        });
        if self.exec_hints.len() >= MAX_EXEC_HINTS && !self.exec_hints.contains_key(&probe) {
            self.exec_hints.clear();
        }
        self.exec_hints.insert(probe, hint);
    }

    fn forget_stuck(&mut self, probe: u64, pid: i64) {
        if self.stuck.get(&probe).is_some_and(|s| s.pid == pid) {
            self.stuck.remove(&probe);
        }
    }

    fn next_sync_id(&mut self) -> i64 {
        let mut h = self.rng.build_hasher();
        h.write_u64(self.rng_counter);
        self.rng_counter = self.rng_counter.wrapping_add(1);
        // A positive 63-bit id: the agent types it as a signed 64-bit integer.
        (h.finish() >> 1) as i64
    }
}

impl Conn {
    fn new(sock: Socket) -> Self {
        Conn {
            sock,
            rbuf: Vec::new(),
            rpos: 0,
            wbuf: Vec::new(),
        }
    }
}

/// Connects without blocking: a Unix stream connect completes at once or fails
/// (`EAGAIN` when the listener's backlog is full).
fn connect_unix(path: &Path) -> io::Result<Socket> {
    let sock = Socket::new(Domain::UNIX, Type::STREAM, None)?;
    sock.set_nonblocking(true)?;
    sock.connect(&SockAddr::unix(path)?)?;
    Ok(sock)
}

/// `guest-exec` of `argv` (not empty) with its output captured, one line.
fn exec_request(argv: &[String]) -> Vec<u8> {
    // Serialized straight from borrowed data: no JSON tree is built per probe.
    #[derive(serde::Serialize)]
    struct Arguments<'a> {
        path: &'a str,
        arg: &'a [String],
        #[serde(rename = "capture-output")]
        capture_output: bool,
    }
    #[derive(serde::Serialize)]
    struct Request<'a> {
        execute: &'static str,
        arguments: Arguments<'a>,
    }
    let request = Request {
        execute: "guest-exec",
        arguments: Arguments {
            path: &argv[0],
            arg: &argv[1..],
            capture_output: true,
        },
    };
    let mut bytes = Vec::with_capacity(96);
    // Serializing strings into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut bytes, &request);
    bytes.push(b'\n');
    bytes
}

/// `guest-exec-status` of `pid`, one line.
fn status_request(pid: i64) -> Vec<u8> {
    format!("{{\"execute\":\"guest-exec-status\",\"arguments\":{{\"pid\":{pid}}}}}\n").into_bytes()
}

/// The wait before the next status poll, after `polls` polls (beyond the first)
/// found the command still running `ran` after its `guest-exec` reply.
fn poll_interval(polls: usize, ran: Duration) -> Duration {
    let grown = POLL_FIRST.mul_f64(POLL_GROWTH.powi(polls.min(32) as i32));
    grown.max(ran / 8).min(POLL_MAX)
}

/// `CLASS: desc` of an agent `error` object, whatever its shape.
fn describe_error(e: &Value) -> String {
    let class = e.get("class").and_then(Value::as_str).unwrap_or("Error");
    let desc = e
        .get("desc")
        .and_then(Value::as_str)
        .unwrap_or("(no description)");
    let mut s = format!("{class}: {desc}");
    truncate_utf8(&mut s, OUTPUT_EXCERPT);
    s
}

/// The outcome of an exited `guest-exec-status` reply.
fn exited_outcome(ret: &Value) -> AgentOutcome {
    let code = ret
        .get("exitcode")
        .and_then(Value::as_i64)
        .and_then(|c| i32::try_from(c).ok());
    let signal = ret
        .get("signal")
        .and_then(Value::as_i64)
        .and_then(|c| i32::try_from(c).ok());
    let mut raw = Vec::new();
    for key in ["out-data", "err-data"] {
        if let Some(data) = ret.get(key).and_then(Value::as_str) {
            match base64::engine::general_purpose::STANDARD.decode(data) {
                Ok(bytes) => raw.extend_from_slice(&bytes),
                Err(_) => raw.extend_from_slice(b"[undecodable output]"),
            }
        }
        if raw.len() >= OUTPUT_EXCERPT {
            break;
        }
    }
    raw.truncate(OUTPUT_EXCERPT);
    let mut output = String::from_utf8_lossy(&raw).into_owned();
    truncate_utf8(&mut output, OUTPUT_EXCERPT);
    AgentOutcome::Exited {
        code: if signal.is_some() { None } else { code },
        signal,
        output,
    }
}

fn truncate_utf8(s: &mut String, max: usize) {
    if s.len() > max {
        let mut cut = max;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_one_json_line_each() {
        let argv = ["/bin/sh".to_string(), "-c".into(), "echo \"hi\"\n".into()];
        let exec = exec_request(&argv);
        assert_eq!(exec.last(), Some(&b'\n'));
        assert_eq!(exec.iter().filter(|&&b| b == b'\n').count(), 1);
        let v: Value = serde_json::from_slice(&exec).unwrap();
        assert_eq!(
            v,
            json!({"execute": "guest-exec", "arguments": {
                "path": "/bin/sh", "arg": ["-c", "echo \"hi\"\n"], "capture-output": true}})
        );
        let status = status_request(-7);
        assert_eq!(status.last(), Some(&b'\n'));
        let v: Value = serde_json::from_slice(&status).unwrap();
        assert_eq!(
            v,
            json!({"execute": "guest-exec-status", "arguments": {"pid": -7}})
        );
    }

    #[test]
    fn exited_outcome_decodes_both_streams_and_signal() {
        let ret =
            json!({"exitcode": 3, "out-data": "b3V0Cg==", "err-data": "ZXJyCg==", "exited": true});
        assert_eq!(
            exited_outcome(&ret),
            AgentOutcome::Exited {
                code: Some(3),
                signal: None,
                output: "out\nerr\n".into()
            }
        );
        let ret = json!({"signal": 9, "exited": true});
        assert_eq!(
            exited_outcome(&ret),
            AgentOutcome::Exited {
                code: None,
                signal: Some(9),
                output: String::new()
            }
        );
    }

    #[test]
    fn exited_outcome_bounds_output() {
        let big = base64::engine::general_purpose::STANDARD.encode("é".repeat(2000));
        let ret = json!({"exitcode": 0, "out-data": big, "exited": true});
        let AgentOutcome::Exited { output, .. } = exited_outcome(&ret) else {
            panic!("not exited");
        };
        assert!(output.len() <= OUTPUT_EXCERPT);
        assert_eq!(output, "é".repeat(OUTPUT_EXCERPT / 2));
    }

    #[test]
    fn error_description_names_class_and_desc() {
        let e = json!({"class": "CommandNotFound", "desc": "The command guest-nope has not been found"});
        assert_eq!(
            describe_error(&e),
            "CommandNotFound: The command guest-nope has not been found"
        );
        assert_eq!(describe_error(&json!(7)), "Error: (no description)");
    }

    #[test]
    fn stream_pair_ping_with_stale_replies_and_fragments() {
        use std::io::Write;
        use std::os::unix::net::UnixStream;
        let (ours, mut theirs) = UnixStream::pair().unwrap();
        let mut c = AgentClient::new(AgentChannel::Stream(ours));
        let t0 = Instant::now();
        c.start_ping(7, t0, t0 + Duration::from_secs(5));
        // The client wrote 0xFF + sync; read it and extract the id.
        let mut buf = vec![0u8; 4096];
        let n = theirs.read(&mut buf).unwrap();
        assert_eq!(buf[0], SYNC_MARKER);
        let req: Value = serde_json::from_slice(buf[1..n].trim_ascii()).unwrap();
        assert_eq!(req["execute"], "guest-sync-delimited");
        let id = req["arguments"]["id"].as_i64().unwrap();
        // Noise, a stale delimited reply, then ours in two pieces.
        theirs
            .write_all(b"login: \r\n{\"error\": {\"class\": \"GenericError\", \"desc\": \"x\"}}\n\xff{\"return\": 12}\n\xff{\"ret")
            .unwrap();
        c.on_ready(t0);
        assert!(c.take_completions().is_empty());
        theirs
            .write_all(format!("urn\": {id}}}\n").as_bytes())
            .unwrap();
        c.on_ready(t0);
        assert_eq!(c.stats().syncs, 1);
        assert_eq!(c.stats().stale_replies, 1);
        let n = theirs.read(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"{\"execute\":\"guest-ping\"}\n");
        theirs.write_all(b"{\"return\": {}}\n").unwrap();
        c.on_ready(t0);
        assert_eq!(c.take_completions(), vec![(7, AgentOutcome::Pong)]);
    }

    // ----- a fake agent on a socketpair, driven in virtual time -----

    use std::io::Write;
    use std::os::unix::net::UnixStream;

    struct Fake {
        s: UnixStream,
    }

    impl Fake {
        fn pair() -> (AgentClient, Fake) {
            let (ours, theirs) = UnixStream::pair().unwrap();
            theirs
                .set_read_timeout(Some(Duration::from_secs(2)))
                .unwrap();
            (
                AgentClient::new(AgentChannel::Stream(ours)),
                Fake { s: theirs },
            )
        }
        /// The next request the client wrote (a leading 0xFF is checked and dropped).
        fn req(&mut self) -> Value {
            let mut line = Vec::new();
            let mut b = [0u8; 1];
            while self.s.read(&mut b).unwrap() == 1 && b[0] != b'\n' {
                line.push(b[0]);
            }
            if line.first() == Some(&SYNC_MARKER) {
                line.remove(0);
            }
            serde_json::from_slice(&line).unwrap()
        }
        fn nothing_sent(&mut self) -> bool {
            self.s.set_nonblocking(true).unwrap();
            let mut b = [0u8; 64];
            let r = matches!(self.s.read(&mut b), Err(e) if e.kind() == io::ErrorKind::WouldBlock);
            self.s.set_nonblocking(false).unwrap();
            r
        }
        fn send(&mut self, bytes: &[u8]) {
            self.s.write_all(bytes).unwrap();
        }
        /// Answers the pending sync request as qemu-ga does: the complaint
        /// about the 0xFF byte, then the delimited reply.
        fn sync_with_marker(&mut self) {
            let r = self.req();
            assert_eq!(r["execute"], "guest-sync-delimited");
            let id = r["arguments"]["id"].as_i64().unwrap();
            self.send(b"{\"error\": {\"class\": \"GenericError\", \"desc\": \"JSON parse error, stray '\\uFFFD'\"}}\n");
            self.send(&[SYNC_MARKER]);
            self.send(format!("{{\"return\": {id}}}\n").as_bytes());
        }
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn ping_fails_exactly_at_its_deadline_and_the_late_reply_is_discarded() {
        let (mut c, mut f) = Fake::pair();
        let t0 = Instant::now();
        c.start_ping(1, t0, t0 + ms(1000));
        // Sync reply framed with 0xFF.
        let r = f.req();
        let id = r["arguments"]["id"].as_i64().unwrap();
        f.send(&[SYNC_MARKER]);
        f.send(format!("{{\"return\": {id}}}\n").as_bytes());
        c.on_ready(t0 + ms(1));
        assert_eq!(f.req()["execute"], "guest-ping");
        assert_eq!(c.next_deadline(), Some(t0 + ms(1000)));
        c.on_timer(t0 + ms(999));
        assert!(c.take_completions().is_empty());
        c.on_timer(t0 + ms(1000));
        assert_eq!(
            c.take_completions(),
            vec![(
                1,
                AgentOutcome::Failed("timed out: no reply to guest-ping".into())
            )]
        );
        // The request is orphaned for a grace period, then the link resyncs.
        assert_eq!(c.next_deadline(), Some(t0 + ms(1000) + ORPHAN_GRACE));
        c.on_timer(t0 + ms(1000) + ORPHAN_GRACE);
        assert_eq!(c.stats().request_timeouts, 1);
        assert_eq!(c.next_deadline(), None, "idle: no timer");
        // The late reply arrives while out of sync: skipped, not taken as a reply.
        f.send(b"{\"return\": {}}\n");
        c.on_ready(t0 + ms(1300));
        assert!(c.take_completions().is_empty());
        // The next attempt starts with 0xFF + sync.
        let t1 = t0 + ms(2000);
        c.start_ping(1, t1, t1 + ms(1000));
        f.sync_with_marker();
        c.on_ready(t1);
        assert_eq!(f.req()["execute"], "guest-ping");
        f.send(b"{\"return\": {}}\n");
        c.on_ready(t1);
        assert_eq!(c.take_completions(), vec![(1, AgentOutcome::Pong)]);
        assert_eq!(c.stats().syncs, 2);
    }

    #[test]
    fn late_reply_within_the_grace_keeps_the_link_in_sync() {
        let (mut c, mut f) = Fake::pair();
        let t0 = Instant::now();
        c.start_ping(1, t0, t0 + ms(100));
        f.sync_with_marker();
        c.on_ready(t0);
        assert_eq!(f.req()["execute"], "guest-ping");
        c.on_timer(t0 + ms(100));
        assert_eq!(c.take_completions().len(), 1);
        f.send(b"{\"return\": {}}\n");
        c.on_ready(t0 + ms(150));
        assert!(
            c.take_completions().is_empty(),
            "an orphan's reply completes nothing"
        );
        c.start_ping(2, t0 + ms(200), t0 + ms(300));
        assert_eq!(f.req()["execute"], "guest-ping", "no resync needed");
        f.send(b"{\"return\": {}}\n");
        c.on_ready(t0 + ms(201));
        assert_eq!(c.take_completions(), vec![(2, AgentOutcome::Pong)]);
        assert_eq!(c.stats().syncs, 1);
    }

    #[test]
    fn exec_polls_status_on_schedule_until_exited() {
        let (mut c, mut f) = Fake::pair();
        let t0 = Instant::now();
        c.start_exec(
            5,
            &["sh".into(), "-c".into(), "x".into()],
            t0,
            t0 + ms(60_000),
        );
        f.sync_with_marker();
        c.on_ready(t0);
        let r = f.req();
        assert_eq!(
            r,
            json!({"execute": "guest-exec", "arguments": {"path": "sh", "arg": ["-c", "x"], "capture-output": true}})
        );
        f.send(b"{\"return\": {\"pid\": 4242}}\n");
        c.on_ready(t0);
        // No run time known for probe 5 yet: the first poll goes out at once.
        let status = json!({"execute": "guest-exec-status", "arguments": {"pid": 4242}});
        assert_eq!(f.req(), status);
        f.send(b"{\"return\": {\"exited\": false}}\n");
        c.on_ready(t0);
        let mut t = t0;
        let mut last_gap = Duration::ZERO;
        for polls in 0..40 {
            let due = c.next_deadline().expect("a poll is scheduled");
            let gap = due - t;
            assert_eq!(gap, poll_interval(polls, t - t0), "poll {polls}");
            assert!(gap >= last_gap && gap <= ms(100), "poll {polls}: {gap:?}");
            assert!(f.nothing_sent());
            c.on_timer(due - Duration::from_micros(1));
            assert!(f.nothing_sent(), "poll {polls} sent early");
            c.on_timer(due);
            assert_eq!(f.req(), status);
            f.send(b"{\"return\": {\"exited\": false}}\n");
            c.on_ready(due);
            t = due;
            last_gap = gap;
        }
        assert_eq!(last_gap, ms(100), "long commands are polled every 100 ms");
        assert_eq!(poll_interval(0, Duration::ZERO), Duration::from_micros(200));
        assert_eq!(poll_interval(1, Duration::ZERO), Duration::from_micros(300));
        assert_eq!(poll_interval(2, Duration::ZERO), Duration::from_micros(450));
        assert_eq!(
            poll_interval(3, ms(80)),
            ms(10),
            "an eighth of the run time"
        );
        assert_eq!(poll_interval(0, Duration::from_secs(10)), ms(100));
        c.on_timer(t + ms(100));
        f.req();
        f.send(b"{\"return\": {\"exitcode\": 0, \"out-data\": \"b2sK\", \"out-truncated\": false, \"exited\": true}}\n");
        c.on_ready(t + ms(100));
        assert_eq!(
            c.take_completions(),
            vec![(
                5,
                AgentOutcome::Exited {
                    code: Some(0),
                    signal: None,
                    output: "ok\n".into()
                }
            )]
        );
        assert_eq!(c.next_deadline(), None);
    }

    #[test]
    fn exec_first_poll_follows_the_previous_run_time() {
        let (mut c, mut f) = Fake::pair();
        let t0 = Instant::now();
        let us = Duration::from_micros;
        let status = json!({"execute": "guest-exec-status", "arguments": {"pid": 7}});
        c.start_exec(3, &["true".into()], t0, t0 + ms(1000));
        f.sync_with_marker();
        c.on_ready(t0);
        f.req();
        f.send(b"{\"return\": {\"pid\": 7}}\n");
        c.on_ready(t0);
        assert_eq!(f.req(), status, "first poll at once");
        f.send(b"{\"return\": {\"exited\": false}}\n");
        c.on_ready(t0);
        assert_eq!(c.next_deadline(), Some(t0 + us(200)));
        c.on_timer(t0 + us(200));
        assert_eq!(f.req(), status);
        f.send(b"{\"return\": {\"exited\": false}}\n");
        c.on_ready(t0 + us(210));
        // Still running when polled 200 us in; the next poll 300 us after that reply.
        assert_eq!(c.next_deadline(), Some(t0 + us(510)));
        c.on_timer(t0 + us(510));
        assert_eq!(f.req(), status);
        f.send(b"{\"return\": {\"exitcode\": 0, \"exited\": true}}\n");
        c.on_ready(t0 + us(520));
        assert_eq!(c.take_completions().len(), 1);
        assert_eq!(c.exec_hints.get(&3), Some(&us(200)));

        // The next exec of probe 3 is first polled when the last one was last seen running.
        let t1 = t0 + ms(1000);
        c.start_exec(3, &["true".into()], t1, t1 + ms(1000));
        c.on_timer(t1);
        f.req();
        f.send(b"{\"return\": {\"pid\": 7}}\n");
        c.on_ready(t1);
        assert!(f.nothing_sent(), "no poll before the hint");
        assert_eq!(c.next_deadline(), Some(t1 + us(200)));
        c.on_timer(t1 + us(199));
        assert!(f.nothing_sent());
        c.on_timer(t1 + us(200));
        assert_eq!(f.req(), status);
        // Already exited at the first poll: next time, poll earlier.
        f.send(b"{\"return\": {\"exitcode\": 1, \"exited\": true}}\n");
        c.on_ready(t1 + us(230));
        assert_eq!(c.take_completions().len(), 1);
        assert_eq!(c.exec_hints.get(&3), Some(&us(160)));
    }

    #[test]
    fn stuck_exec_is_polled_in_the_background_and_released() {
        let (mut c, mut f) = Fake::pair();
        let t0 = Instant::now();
        c.start_exec(5, &["sleep".into(), "9".into()], t0, t0 + ms(50));
        f.sync_with_marker();
        c.on_ready(t0);
        f.req();
        f.send(b"{\"return\": {\"pid\": 77}}\n");
        c.on_ready(t0);
        assert_eq!(
            f.req()["execute"],
            "guest-exec-status",
            "first poll at once"
        );
        f.send(b"{\"return\": {\"exited\": false}}\n");
        c.on_ready(t0);
        c.on_timer(t0 + ms(50));
        assert_eq!(
            c.take_completions(),
            vec![(
                5,
                AgentOutcome::Failed("timed out: guest command still running (pid 77)".into())
            )]
        );
        c.start_exec(5, &["true".into()], t0 + ms(60), t0 + ms(100));
        assert_eq!(
            c.take_completions(),
            vec![(5, AgentOutcome::Failed(PREVIOUS_EXEC_RUNNING.into()))]
        );
        // Background check a second later (no other work in between).
        let due = t0 + ms(50) + STUCK_POLL_EVERY;
        assert_eq!(c.next_deadline(), Some(due));
        c.on_timer(due);
        assert_eq!(
            f.req(),
            json!({"execute": "guest-exec-status", "arguments": {"pid": 77}})
        );
        f.send(b"{\"return\": {\"exitcode\": 0, \"exited\": true}}\n");
        c.on_ready(due);
        assert!(
            c.take_completions().is_empty(),
            "background checks report nothing"
        );
        c.start_exec(5, &["true".into()], due, due + ms(100));
        assert_eq!(f.req()["execute"], "guest-exec");
    }

    #[test]
    fn agent_error_for_a_stuck_pid_forgets_it() {
        let (mut c, mut f) = Fake::pair();
        let t0 = Instant::now();
        c.start_exec(5, &["sleep".into(), "9".into()], t0, t0 + ms(10));
        f.sync_with_marker();
        c.on_ready(t0);
        f.req();
        f.send(b"{\"return\": {\"pid\": 77}}\n");
        c.on_ready(t0);
        assert_eq!(
            f.req()["execute"],
            "guest-exec-status",
            "first poll at once"
        );
        f.send(b"{\"return\": {\"exited\": false}}\n");
        c.on_ready(t0);
        c.on_timer(t0 + ms(10));
        c.take_completions();
        let due = t0 + ms(10) + STUCK_POLL_EVERY;
        c.on_timer(due);
        f.req();
        f.send(
            b"{\"error\": {\"class\": \"GenericError\", \"desc\": \"Invalid parameter 'pid'\"}}\n",
        );
        c.on_ready(due);
        c.start_exec(5, &["true".into()], due, due + ms(100));
        assert!(c.take_completions().is_empty());
        assert_eq!(f.req()["execute"], "guest-exec");
    }

    #[test]
    fn unsolicited_and_coalesced_garbage_resyncs_without_losing_the_reply() {
        let (mut c, mut f) = Fake::pair();
        let t0 = Instant::now();
        c.start_ping(1, t0, t0 + ms(500));
        f.sync_with_marker();
        c.on_ready(t0);
        f.req();
        // The reply and an unexpected extra reply in one read.
        f.send(b"{\"return\": {}}\n{\"return\": {}}\n");
        c.on_ready(t0);
        assert_eq!(c.take_completions(), vec![(1, AgentOutcome::Pong)]);
        assert_eq!(c.stats().garbled, 1);
        c.start_ping(2, t0, t0 + ms(500));
        f.sync_with_marker();
        c.on_ready(t0);
        assert_eq!(f.req()["execute"], "guest-ping");
    }

    #[test]
    fn absent_agent_reconnects_with_back_off() {
        let dir = std::env::temp_dir().join(format!("vmpulse-agent-absent-{}", std::process::id()));
        let mut c = AgentClient::new(AgentChannel::UnixSocket(dir.join("none.sock")));
        let t0 = Instant::now();
        let mut failed = 0;
        // A ping every 10 ms for a second, each due in 30 ms.
        for i in 0..100 {
            let t = t0 + ms(10 * i);
            c.on_timer(t);
            c.start_ping(i, t, t + ms(30));
            c.on_timer(t);
            failed += c
                .take_completions()
                .iter()
                .filter(
                    |(_, o)| matches!(o, AgentOutcome::Failed(m) if m.contains("not reachable")),
                )
                .count();
        }
        c.on_timer(t0 + ms(1100));
        failed += c.take_completions().len();
        assert_eq!(failed, 100, "every attempt fails, none hangs");
        // Connects at 0, 50, 150, 350, 750 ms (back-off 50 ms doubling).
        assert_eq!(c.stats().connect_failures, 5, "{:?}", c.stats());
    }
}
