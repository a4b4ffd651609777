//! [`ProbeSet`]: every probe of one VM in one inner epoll instance.
//!
//! The set owns one timerfd, the sockets of the attempts in flight and the guest
//! agent's fds, all registered in an inner epoll whose fd the caller watches.
//! Time comes from the caller: every method that decides anything takes `now`.
//! Wake-ups (attempt starts and deadlines) sit in a min-heap keyed by instant;
//! [`ProbeSet::next_deadline`] is the earliest of them (and of the agent's
//! deadline), and the timerfd is armed for it relative to the caller's last `now`,
//! so a caller that only watches [`ProbeSet::fd`] is woken in time too.
//! Each probe's schedule and thresholds live in a pure [`Tracker`] that works in
//! time since the VM started.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::fmt;
use std::io;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::timerfd::TimerFd;

#[cfg(feature = "agent")]
use super::agent::AgentOutcome;
use super::agent::{AgentClient, FdInterest};
use super::config::{HttpScheme, ProbeConfig, ProbeHandler, ProbeKind};
use super::http::{HttpCheck, HttpSpec, PreparedRequest};
use super::tcp::TcpCheck;
use super::tracker::{Outcome, Tracker, Transition};
use super::{CheckResult, ProbeAttempt, ProbeEnv, ProbeEvent};

/// Token of the timerfd in the inner epoll.
const TIMER_TOKEN: u64 = 0;
/// Tokens of the agent's fds carry this bit (and the fd).
const AGENT_TOKEN: u64 = 1 << 63;
/// A socket's token names its probe (low 32 bits), its sub (the next 16) and the
/// attempt (a 15-bit serial, never 0, so no socket token is [`TIMER_TOKEN`]): an
/// event of a socket closed earlier in the same `epoll_wait` batch names an
/// attempt or sub that is no longer there, and is dropped.
const TOKEN_SUB_SHIFT: u32 = 32;
const TOKEN_SERIAL_SHIFT: u32 = 48;
const TOKEN_SERIAL_MASK: u64 = 0x7fff;

/// Most addresses one network probe checks (a sub index fits its 16 bits).
const MAX_TARGETS: usize = 1 << 16;

/// The token of sub `s` of probe `i`'s attempt number `serial`.
fn socket_token(i: usize, s: usize, serial: u64) -> u64 {
    debug_assert!(i <= u32::MAX as usize && s <= u16::MAX as usize);
    (serial & TOKEN_SERIAL_MASK) << TOKEN_SERIAL_SHIFT | (s as u64) << TOKEN_SUB_SHIFT | i as u64
}

/// (probe index, sub index) of a socket token.
fn token_place(token: u64) -> (usize, usize) {
    (
        (token & 0xffff_ffff) as usize,
        ((token >> TOKEN_SUB_SHIFT) & 0xffff) as usize,
    )
}
/// Epoll events handled per round; rounds per `process` call.
const EVENTS_PER_ROUND: usize = 256;
const ROUNDS: usize = 16;
/// How long past its deadline an agent attempt may stay unanswered before the
/// set gives up on it (the client should report by the deadline itself).
const AGENT_GRACE: Duration = Duration::from_millis(500);
/// Smallest timer arming, to never spin on a deadline already past.
const MIN_ARM: Duration = Duration::from_micros(50);
/// Largest timer slack ([`ProbeSet::set_timer_slack`]).
const MAX_SLACK: Duration = Duration::from_millis(10);
/// Bytes of exec output kept in an attempt event.
#[cfg(feature = "agent")]
const MAX_OUTPUT: usize = 1024;

/// The handler of a probe, ready to start attempts.
#[derive(Debug)]
enum Handler {
    Http,
    Tcp,
    Exec(Vec<String>),
    Ping,
}

/// One address a network probe checks.
#[derive(Debug)]
struct Target {
    addr: SocketAddr,
    /// `host:port` as named in results.
    label: Arc<str>,
    /// The request of an `httpGet` probe at this target.
    http: Option<Arc<PreparedRequest>>,
}

/// A check in flight against one target.
#[derive(Debug)]
enum Check {
    Tcp(TcpCheck),
    Http(Box<HttpCheck>),
}

impl Check {
    /// (fd, read, write, connection number): a new connection may reuse the
    /// number of a closed fd, which the epoll has forgotten.
    fn interest(&self) -> Option<Interest> {
        match self {
            Check::Tcp(c) => c.fd().map(|fd| (fd, false, true, 0)),
            Check::Http(c) => c.interest().map(|(fd, r, w)| (fd, r, w, c.connections())),
        }
    }

    /// Make progress; whether the result is known ([`Check::into_result`]).
    fn on_ready(&mut self) -> bool {
        match self {
            Check::Tcp(c) => c.on_ready().is_some(),
            Check::Http(c) => c.on_ready().is_some(),
        }
    }

    /// The result of a check whose [`Check::on_ready`] said it was done.
    fn into_result(self) -> CheckResult {
        let result = match self {
            Check::Tcp(c) => c.into_result(),
            Check::Http(c) => c.into_result(),
        };
        result.unwrap_or_else(|| CheckResult::error("check ended without a result".into()))
    }

    fn on_timeout(&mut self, timeout: Duration) -> CheckResult {
        match self {
            Check::Tcp(c) => c.on_timeout(timeout),
            Check::Http(c) => c.on_timeout(timeout),
        }
    }
}

/// What a check wants watched: (fd, read, write, connection number).
type Interest = (RawFd, bool, bool, u32);

/// One target's part of an attempt.
#[derive(Debug)]
struct Sub {
    /// The target's `host:port` (none for agent attempts and unusable targets).
    label: Option<Arc<str>>,
    check: Option<Check>,
    token: u64,
    /// What is registered in the epoll for this sub: (fd, read, write).
    registered: Option<Interest>,
    result: Option<CheckResult>,
}

/// An attempt in flight.
#[derive(Debug)]
struct Attempt {
    /// When it started, for the attempt's duration.
    started: Instant,
    deadline: Instant,
    subs: Vec<Sub>,
    /// Exec/ping through the agent (completes from the agent's completions).
    agent: bool,
    /// Exec only: exit code and output excerpt.
    exec: Option<(Option<i32>, String)>,
}

/// Counters of a [`ProbeSet`] since it was made.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProbeStats {
    /// Attempts started.
    pub started: u64,
    /// Attempts completed.
    pub attempts: u64,
    /// Attempts that succeeded.
    pub successes: u64,
    /// Attempts that failed.
    pub failures: u64,
    /// Attempts that ended in an error (an HTTP error after the response
    /// headers): counted toward neither threshold, as in the kubelet.
    pub errors: u64,
    /// Checks (one per address) that hit their deadline.
    pub timeouts: u64,
    /// HTTP checks whose body stalled after the headers until the deadline:
    /// errors, which the thresholds ignore (as the kubelet discards them).
    pub body_stalls: u64,
}

/// One probe of the VM.
#[derive(Debug)]
struct Probe {
    kind: ProbeKind,
    tracker: Tracker,
    handler: Handler,
    targets: Result<Vec<Target>, String>,
    attempt: Option<Attempt>,
}

/// Every probe of one VM, driven from the caller's epoll loop and clock.
///
/// Readiness: with a readiness probe, [`ProbeSet::ready`] follows it; without one,
/// the VM is ready while it runs (as in KubeVirt). [`ProbeEvent::Ready`] is
/// published on every change, including those caused by [`ProbeSet::vm_started`]
/// and [`ProbeSet::vm_stopped`] (delivered by the next [`ProbeSet::process`]; the
/// fd becomes readable at once and [`ProbeSet::next_deadline`] is the `now` of
/// that call).
///
/// Time: the caller passes `now` to every call; the set never reads the clock
/// for a decision. Attempts start when `now` reaches their scheduled instant,
/// fail when `now` reaches their deadline, and carry the `now`s of their start
/// and completion ([`ProbeAttempt::started`], [`ProbeAttempt::duration`]). I/O
/// readiness is real: [`ProbeSet::process`] drains the inner epoll without
/// blocking, whatever `now` says.
///
/// ```
/// use std::net::TcpListener;
/// use std::time::{Duration, Instant};
/// use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
/// use vmpulse_probes::config::{ProbeConfig, ProbeHandler, ProbeKind};
/// use vmpulse_probes::{ProbeEnv, ProbeEvent, ProbeSet};
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let listener = TcpListener::bind("127.0.0.1:0")?;
/// let port = listener.local_addr()?.port();
/// let config = ProbeConfig::new(ProbeKind::Readiness, ProbeHandler::tcp_socket(port))?;
/// let env = ProbeEnv { vm_addresses: vec!["127.0.0.1".parse()?], agent: None };
/// let mut probes = ProbeSet::new(vec![config], env)?;
///
/// // The caller's loop: watch probes.fd(), call process(now) when it is readable.
/// let epoll = Epoll::new()?;
/// epoll.ctl(ControlOperation::Add, probes.fd(), EpollEvent::new(EventSet::IN, 0))?;
/// probes.vm_started(Instant::now());
/// let until = Instant::now() + Duration::from_secs(5);
/// let mut ready = false;
/// while !ready && Instant::now() < until {
///     let mut ev = [EpollEvent::default(); 1];
///     if epoll.wait(100, &mut ev)? > 0 {
///         ready = probes.process(Instant::now()).contains(&ProbeEvent::Ready(true));
///     }
/// }
/// assert!(ready && probes.ready());
/// # Ok(())
/// # }
/// ```
pub struct ProbeSet {
    probes: Vec<Probe>,
    epoll: Epoll,
    timer: TimerFd,
    agent: Option<AgentClient>,
    /// What of the agent is registered in the epoll: its fds' interests and the
    /// link they belong to ([`AgentClient::link_serial`]).
    agent_fds: (Vec<FdInterest>, u64),
    /// Checks (sockets) in flight: subs with a check.
    sockets: usize,
    /// Serial of the last attempt with sockets (see [`socket_token`]).
    serial: u64,
    /// Pending wake-ups: (when, probe index). Stale entries are harmless.
    wakeups: BinaryHeap<Reverse<(Instant, usize)>>,
    /// When the VM (this run) started.
    epoch: Option<Instant>,
    has_readiness: bool,
    /// The Ready condition as last published.
    ready: bool,
    pending: Vec<ProbeEvent>,
    /// Start lateness samples (scheduled → actual), when recording.
    lateness: Option<Vec<Duration>>,
    /// What the timerfd is armed for (`None`: disarmed).
    armed: Option<Instant>,
    /// The timerfd fired since it was last set (it stays readable until reset).
    fired: bool,
    /// Buffer for `epoll_wait`.
    ready_events: Vec<EpollEvent>,
    stats: ProbeStats,
    /// The `now` of the last call that armed the timer.
    last_now: Instant,
    /// How late the timerfd may fire past the earliest wake-up ([`ProbeSet::set_timer_slack`]).
    slack: Duration,
}

impl fmt::Debug for ProbeSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProbeSet")
            .field("probes", &self.probes)
            .field("epoch", &self.epoch)
            .field("ready", &self.ready)
            .field("in_flight", &self.sockets)
            .finish_non_exhaustive()
    }
}

/// The parts of an `httpGet` probe that make its URL: scheme, path, headers.
type HttpParts<'a> = (&'a HttpScheme, &'a str, &'a [(String, String)]);

/// Why a [`ProbeSet`] could not be made.
#[derive(Debug)]
#[non_exhaustive]
pub enum ProbeSetError {
    /// The epoll instance or the timerfd could not be created.
    Io(io::Error),
    /// An `httpGet` or `tcpSocket` probe without `host`, and no VM address.
    NoAddress(ProbeKind),
    /// A probe needs a cargo feature this build lacks (`https` or `agent`).
    FeatureDisabled {
        /// Which probe.
        probe: ProbeKind,
        /// The missing feature.
        feature: &'static str,
    },
}

impl fmt::Display for ProbeSetError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProbeSetError::Io(e) => write!(f, "epoll or timerfd: {e}"),
            ProbeSetError::NoAddress(k) => {
                write!(f, "{} probe: no host and no VM address to probe", k.name())
            }
            ProbeSetError::FeatureDisabled { probe, feature } => write!(
                f,
                "{} probe: needs the `{feature}` feature of vmpulse-probes",
                probe.name()
            ),
        }
    }
}

impl std::error::Error for ProbeSetError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ProbeSetError::Io(e) => Some(e),
            _ => None,
        }
    }
}

impl From<io::Error> for ProbeSetError {
    fn from(e: io::Error) -> Self {
        ProbeSetError::Io(e)
    }
}

/// Refuse what this build or `env` cannot run.
fn check_runnable(config: &ProbeConfig, env: &ProbeEnv) -> Result<(), ProbeSetError> {
    let kind = config.kind();
    let disabled = |feature| {
        Err(ProbeSetError::FeatureDisabled {
            probe: kind,
            feature,
        })
    };
    match config.handler() {
        ProbeHandler::HttpGet { scheme, host, .. } => {
            if *scheme == HttpScheme::Https && !cfg!(feature = "https") {
                return disabled("https");
            }
            if host.is_none() && env.vm_addresses.is_empty() {
                return Err(ProbeSetError::NoAddress(kind));
            }
        }
        ProbeHandler::TcpSocket { host, .. } => {
            if host.is_none() && env.vm_addresses.is_empty() {
                return Err(ProbeSetError::NoAddress(kind));
            }
        }
        ProbeHandler::Exec { .. } | ProbeHandler::GuestAgentPing => {
            if !cfg!(feature = "agent") {
                return disabled("agent");
            }
        }
    }
    Ok(())
}

/// Resolve the targets of a network probe.
fn targets(
    host: &Option<String>,
    port: u16,
    env: &ProbeEnv,
    http: Option<HttpParts<'_>>,
) -> Result<Vec<Target>, String> {
    let hosts: Vec<(String, IpAddr)> = match host {
        Some(h) => {
            let bare = h.trim_start_matches('[').trim_end_matches(']');
            let ip = match bare.parse::<IpAddr>() {
                Ok(ip) => ip,
                // Names are resolved once, here (the system resolver may block).
                Err(_) => (bare, port)
                    .to_socket_addrs()
                    .map_err(|e| format!("cannot resolve host {bare}: {e}"))?
                    .next()
                    .ok_or_else(|| format!("host {bare} has no address"))?
                    .ip(),
            };
            vec![(bare.to_string(), ip)]
        }
        None => env
            .vm_addresses
            .iter()
            .map(|ip| (ip.to_string(), *ip))
            .collect(),
    };
    if hosts.is_empty() {
        return Err("no address to probe".into());
    }
    if hosts.len() > MAX_TARGETS {
        return Err(format!(
            "{} VM addresses to probe, more than {MAX_TARGETS}",
            hosts.len()
        ));
    }
    Ok(hosts
        .into_iter()
        .map(|(name, ip)| {
            let label = if name.contains(':') {
                format!("[{name}]:{port}")
            } else {
                format!("{name}:{port}")
            };
            Target {
                addr: SocketAddr::new(ip, port),
                label: label.into(),
                http: http.map(|(scheme, path, headers)| {
                    Arc::new(PreparedRequest::new(Arc::new(HttpSpec {
                        scheme: *scheme,
                        host: name.clone(),
                        port,
                        path: path.to_string(),
                        headers: headers.to_vec(),
                    })))
                }),
            }
        })
        .collect())
}

/// The guest agent client, when a channel is given and the feature built in.
#[cfg(feature = "agent")]
fn new_agent(channel: Option<super::AgentChannel>) -> Option<AgentClient> {
    channel.map(AgentClient::new)
}

/// Without the `agent` feature [`ProbeSet::new`] refused agent probes: no client.
#[cfg(not(feature = "agent"))]
fn new_agent(_channel: Option<super::AgentChannel>) -> Option<AgentClient> {
    None
}

/// A bounded excerpt of exec output.
#[cfg(feature = "agent")]
fn excerpt(s: &str) -> String {
    if s.len() <= MAX_OUTPUT {
        return s.to_string();
    }
    let mut end = MAX_OUTPUT;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_string()
}

impl ProbeSet {
    /// Build the probes; nothing runs until [`ProbeSet::vm_started`].
    ///
    /// Each configuration is valid by construction ([`ProbeConfig`]); what is
    /// checked here is what depends on `env` and on this build: a network probe
    /// without `host` needs at least one VM address, HTTPS needs the `https`
    /// feature, `exec` and `guestAgentPing` need the `agent` feature. Without a
    /// guest agent in `env`, agent probes run and fail each attempt with a clear
    /// message.
    pub fn new(
        probes: impl IntoIterator<Item = ProbeConfig>,
        env: ProbeEnv,
    ) -> Result<Self, ProbeSetError> {
        let probes: Vec<ProbeConfig> = probes.into_iter().collect();
        for config in &probes {
            check_runnable(config, &env)?;
        }
        let epoll = Epoll::new()?;
        let timer = TimerFd::new().map_err(io::Error::from)?;
        epoll.ctl(
            ControlOperation::Add,
            timer.as_raw_fd(),
            EpollEvent::new(EventSet::IN, TIMER_TOKEN),
        )?;
        let has_readiness = probes.iter().any(|c| c.kind() == ProbeKind::Readiness);
        // Only probes that go through the agent need a connection to it.
        let needs_agent = probes.iter().any(|c| c.handler().needs_agent());
        let probes = probes
            .into_iter()
            .map(|config| {
                let (handler, targets) = match config.handler() {
                    ProbeHandler::HttpGet {
                        path,
                        port,
                        host,
                        scheme,
                        headers,
                    } => (
                        Handler::Http,
                        targets(host, *port, &env, Some((scheme, path, headers))),
                    ),
                    ProbeHandler::TcpSocket { port, host } => {
                        (Handler::Tcp, targets(host, *port, &env, None))
                    }
                    ProbeHandler::Exec { command } => (Handler::Exec(command.clone()), Ok(vec![])),
                    ProbeHandler::GuestAgentPing => (Handler::Ping, Ok(vec![])),
                };
                Probe {
                    kind: config.kind(),
                    tracker: Tracker::new(&config),
                    handler,
                    targets,
                    attempt: None,
                }
            })
            .collect();
        Ok(ProbeSet {
            probes,
            epoll,
            timer,
            agent: new_agent(env.agent.filter(|_| needs_agent)),
            agent_fds: (Vec::new(), 0),
            sockets: 0,
            serial: 0,
            wakeups: BinaryHeap::new(),
            epoch: None,
            has_readiness,
            ready: false,
            pending: Vec::new(),
            lateness: None,
            armed: None,
            fired: false,
            ready_events: vec![EpollEvent::default(); EVENTS_PER_ROUND],
            stats: ProbeStats::default(),
            // Only read with events pending, which a `vm_*` call queues after setting it.
            last_now: Instant::now(),
            slack: Duration::ZERO,
        })
    }

    /// The fd to add to the runner's epoll (readable when `process` has work).
    pub fn fd(&self) -> RawFd {
        self.epoll.as_raw_fd()
    }

    /// The VM (a new run of it) started at `now`: time 0 of every probe's
    /// schedule. A VM still marked running is stopped first.
    pub fn vm_started(&mut self, now: Instant) {
        if self.epoch.is_some() {
            self.vm_stopped(now);
        }
        self.epoch = Some(now);
        for (i, p) in self.probes.iter_mut().enumerate() {
            p.tracker.start();
            if let Some(t) = p.tracker.next_start() {
                self.wakeups.push(Reverse((now + t, i)));
            }
        }
        if !self.has_readiness {
            self.publish_ready(true);
        }
        self.arm_timer(now);
    }

    /// The VM stopped at `now`: cancel attempts, readiness becomes false.
    pub fn vm_stopped(&mut self, now: Instant) {
        self.epoch = None;
        for i in 0..self.probes.len() {
            self.cancel_attempt(i);
            if self.probes[i].tracker.stop() == Some(Transition::NotReady) {
                self.publish_ready(false);
            }
        }
        self.publish_ready(false);
        self.wakeups.clear();
        self.sync_agent_fds();
        self.arm_timer(now);
    }

    /// The VM is shutting down gracefully (since `now`): liveness stops probing
    /// (and stays alive) so nothing kills the VM during shutdown; readiness keeps
    /// probing.
    pub fn vm_stopping(&mut self, now: Instant) {
        for i in 0..self.probes.len() {
            if self.probes[i].kind == ProbeKind::Liveness {
                self.cancel_attempt(i);
                self.probes[i].tracker.hold();
            }
        }
        self.sync_agent_fds();
        self.arm_timer(now);
    }

    /// The current Ready condition.
    pub fn ready(&self) -> bool {
        self.ready
    }

    /// Let the set's timerfd fire up to `slack` after the earliest wake-up (default
    /// zero: at it), so that starts and deadlines falling due within `slack` of each
    /// other are handled in one wake-up, as the kernel's timer slack merges timers.
    /// With many probes this saves wake-ups; each attempt then starts, and each
    /// deadline is seen, up to `slack` late (a probe's schedule does not drift: the
    /// next start is still one period after the scheduled one). At most 10 ms.
    ///
    /// Only the timerfd is affected: [`ProbeSet::next_deadline`] stays exact, and a
    /// caller that calls [`ProbeSet::process`] at it (a loop in virtual time, or one
    /// with its own timer) sees no slack.
    pub fn set_timer_slack(&mut self, slack: Duration) {
        self.slack = slack.min(MAX_SLACK);
        // Re-arm at the next call that arms the timer.
        self.fired = true;
    }

    /// Record how late each attempt starts against its schedule (for benchmarks).
    pub fn record_lateness(&mut self, on: bool) {
        self.lateness = on.then(Vec::new);
    }

    /// The start lateness samples recorded since the last call.
    pub fn take_lateness(&mut self) -> Vec<Duration> {
        self.lateness
            .as_mut()
            .map(std::mem::take)
            .unwrap_or_default()
    }

    /// Counters since the set was made.
    pub fn stats(&self) -> ProbeStats {
        self.stats
    }

    /// Number of checks (sockets) in flight.
    pub fn in_flight(&self) -> usize {
        self.sockets
    }

    fn publish_ready(&mut self, ready: bool) {
        if self.ready != ready {
            self.ready = ready;
            self.pending.push(ProbeEvent::Ready(ready));
        }
    }

    /// When [`ProbeSet::process`] next has something to do without any I/O: the
    /// earliest attempt start or deadline, an agent deadline, or, with events
    /// waiting to be delivered, the instant of the call that queued them (so
    /// "now"). `None`: nothing until some I/O or a `vm_*` call.
    pub fn next_deadline(&self) -> Option<Instant> {
        if !self.pending.is_empty() {
            return Some(self.last_now);
        }
        let mut next = self.wakeups.peek().map(|Reverse((t, _))| *t);
        if let Some(d) = self.agent.as_ref().and_then(AgentClient::next_deadline) {
            next = Some(next.map_or(d, |n| n.min(d)));
        }
        next
    }

    /// Handle whatever is ready at `now`, without blocking: I/O that is ready,
    /// attempts due to start, deadlines reached. Returns what happened, in order.
    /// `now` should not go backwards; an earlier `now` than a previous call's
    /// only delays what is due.
    pub fn process(&mut self, now: Instant) -> Vec<ProbeEvent> {
        let mut events = std::mem::take(&mut self.pending);
        let agent_ready = self.drain_epoll(now, &mut events);
        if let Some(agent) = &mut self.agent {
            if agent_ready {
                agent.on_ready(now);
            }
            if agent.next_deadline().is_some_and(|d| d <= now) {
                agent.on_timer(now);
            }
        }
        self.agent_completions(now, &mut events);
        // A connection that completes during connect(2) itself (loopback, a
        // local bridge) is seen at once: a started check makes progress
        // right away, before its socket is watched.
        while let Some(Reverse((when, i))) = self.wakeups.peek().copied() {
            if when > now {
                break;
            }
            self.wakeups.pop();
            self.wake(i, now, &mut events);
        }
        self.agent_completions(now, &mut events);
        self.sync_agent_fds();
        self.pending.append(&mut events);
        let events = std::mem::take(&mut self.pending);
        self.arm_timer(now);
        events
    }

    /// Handle the ready fds of the inner epoll; returns whether an agent fd was ready.
    fn drain_epoll(&mut self, now: Instant, events: &mut Vec<ProbeEvent>) -> bool {
        let mut agent_ready = false;
        let mut ready_events = std::mem::take(&mut self.ready_events);
        for _ in 0..ROUNDS {
            let n = match self.epoll.wait(0, &mut ready_events) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    log::warn!("probes: epoll_wait: {e}");
                    0
                }
            };
            for ev in &ready_events[..n] {
                match ev.data() {
                    // Fired: it must be re-armed (which also clears it).
                    TIMER_TOKEN => self.fired = true,
                    t if t & AGENT_TOKEN != 0 => agent_ready = true,
                    t => self.socket_ready(t, now, events),
                }
            }
            if n < ready_events.len() {
                break;
            }
        }
        self.ready_events = ready_events;
        agent_ready
    }

    /// Elapsed time since the VM started.
    fn elapsed(&self, now: Instant) -> Duration {
        self.epoch
            .map(|e| now.saturating_duration_since(e))
            .unwrap_or_default()
    }

    /// A socket of an attempt is ready.
    fn socket_ready(&mut self, token: u64, now: Instant, events: &mut Vec<ProbeEvent>) {
        let (i, s) = token_place(token);
        let Some(attempt) = self.probes.get_mut(i).and_then(|p| p.attempt.as_mut()) else {
            return;
        };
        // Only a network attempt's sub carries a socket token (never 0).
        let Some(sub) = attempt.subs.get_mut(s).filter(|sub| sub.token == token) else {
            return;
        };
        if now >= attempt.deadline {
            // The deadline passed before this event was seen (a busy loop, or timer
            // slack): the attempt timed out, whatever the socket says now.
            self.wake(i, now, events);
            return;
        }
        let Some(check) = sub.check.as_mut() else {
            return;
        };
        if check.on_ready() {
            sub.result = sub.check.take().map(Check::into_result);
            self.sockets -= 1;
        } else {
            let want = check.interest();
            Self::sync_fd(&self.epoll, &mut sub.registered, want, token);
        }
        self.maybe_complete(i, now, events);
    }

    /// A wake-up for probe `i`: its deadline, or its next start.
    fn wake(&mut self, i: usize, now: Instant, events: &mut Vec<ProbeEvent>) {
        let timeout = self.probes[i].tracker.timeout();
        if let Some(attempt) = &mut self.probes[i].attempt {
            if attempt.agent {
                if now >= attempt.deadline + AGENT_GRACE {
                    if let Some(agent) = &mut self.agent {
                        agent.cancel(i as u64);
                    }
                    attempt.subs[0].result = Some(CheckResult::failure(
                        "guest agent gave no result by the deadline".into(),
                    ));
                }
            } else if now >= attempt.deadline {
                for sub in &mut attempt.subs {
                    if let Some(mut check) = sub.check.take() {
                        self.stats.timeouts += 1;
                        if matches!(&check, Check::Http(h) if h.reading_body()) {
                            self.stats.body_stalls += 1;
                        }
                        sub.result = Some(check.on_timeout(timeout));
                        self.sockets -= 1;
                    }
                }
            }
            self.maybe_complete(i, now, events);
        }
        let elapsed = self.elapsed(now);
        if self.epoch.is_some() && self.probes[i].tracker.due(elapsed) {
            self.start_attempt(i, now, events);
        }
    }

    fn start_attempt(&mut self, i: usize, now: Instant, events: &mut Vec<ProbeEvent>) {
        let elapsed = self.elapsed(now);
        let Some(epoch) = self.epoch else { return };
        let scheduled = self.probes[i].tracker.next_start();
        let Some(deadline) = self.probes[i].tracker.begin(elapsed) else {
            return;
        };
        self.stats.started += 1;
        if let (Some(lateness), Some(scheduled)) = (&mut self.lateness, scheduled) {
            lateness.push(elapsed.saturating_sub(scheduled));
        }
        let deadline = epoch + deadline;
        let probe = &mut self.probes[i];
        let mut attempt = Attempt {
            started: now,
            deadline,
            // One part per target (one for the agent), and no room for more.
            subs: Vec::with_capacity(probe.targets.as_ref().map_or(1, |t| t.len().max(1))),
            agent: false,
            exec: None,
        };
        match &probe.handler {
            Handler::Exec(_) | Handler::Ping => {
                attempt.agent = true;
                let mut sub = Sub {
                    label: None,
                    check: None,
                    token: 0,
                    registered: None,
                    result: None,
                };
                match &mut self.agent {
                    Some(agent) => match &probe.handler {
                        Handler::Exec(argv) => agent.start_exec(i as u64, argv, now, deadline),
                        _ => agent.start_ping(i as u64, now, deadline),
                    },
                    None => {
                        sub.result = Some(CheckResult::failure(
                            "no guest agent channel configured".into(),
                        ))
                    }
                }
                attempt.subs.push(sub);
                self.wakeups.push(Reverse((deadline + AGENT_GRACE, i)));
            }
            Handler::Http | Handler::Tcp => {
                match &probe.targets {
                    Err(m) => attempt.subs.push(Sub {
                        label: None,
                        check: None,
                        token: 0,
                        registered: None,
                        result: Some(CheckResult::failure(m.clone())),
                    }),
                    Ok(targets) => {
                        self.serial = self.serial % TOKEN_SERIAL_MASK + 1;
                        for (s, t) in targets.iter().enumerate() {
                            let mut check = match &t.http {
                                Some(first) => Check::Http(Box::new(HttpCheck::start_prepared(
                                    first.clone(),
                                    t.addr.ip(),
                                ))),
                                None => Check::Tcp(TcpCheck::start(t.addr)),
                            };
                            let token = socket_token(i, s, self.serial);
                            let mut sub = Sub {
                                label: Some(t.label.clone()),
                                check: None,
                                token,
                                registered: None,
                                result: None,
                            };
                            if check.on_ready() {
                                sub.result = Some(check.into_result());
                            } else {
                                Self::sync_fd(
                                    &self.epoll,
                                    &mut sub.registered,
                                    check.interest(),
                                    token,
                                );
                                sub.check = Some(check);
                                self.sockets += 1;
                            }
                            attempt.subs.push(sub);
                        }
                    }
                }
                // The deadline's wake-up is pushed below, only for an attempt
                // still in flight: most against nearby peers end right here.
            }
        }
        let agent = attempt.agent;
        self.probes[i].attempt = Some(attempt);
        self.maybe_complete(i, now, events);
        if !agent && self.probes[i].attempt.is_some() {
            self.wakeups.push(Reverse((deadline, i)));
        }
    }

    /// Feed the agent's completions into their attempts (none without the feature).
    #[cfg(not(feature = "agent"))]
    fn agent_completions(&mut self, _now: Instant, _events: &mut Vec<ProbeEvent>) {}

    /// Feed the agent's completions into their attempts.
    #[cfg(feature = "agent")]
    fn agent_completions(&mut self, now: Instant, events: &mut Vec<ProbeEvent>) {
        let Some(agent) = &mut self.agent else { return };
        for (id, outcome) in agent.take_completions() {
            let Ok(i) = usize::try_from(id) else { continue };
            let Some(attempt) = self.probes.get_mut(i).and_then(|p| p.attempt.as_mut()) else {
                continue;
            };
            if !attempt.agent || attempt.subs[0].result.is_some() {
                continue;
            }
            let result = match outcome {
                AgentOutcome::Pong => CheckResult::success("guest agent answered".into()),
                AgentOutcome::Exited {
                    code,
                    signal,
                    output,
                } => {
                    attempt.exec = Some((code, excerpt(&output)));
                    match (code, signal) {
                        (Some(0), _) => CheckResult::success("exit code 0".into()),
                        (Some(c), _) => CheckResult::failure(format!("exit code {c}")),
                        (None, Some(sig)) => {
                            CheckResult::failure(format!("killed by signal {sig}"))
                        }
                        (None, None) => CheckResult::failure("exited without an exit code".into()),
                    }
                }
                AgentOutcome::Failed(m) => CheckResult::failure(m),
            };
            attempt.subs[0].result = Some(result);
            self.maybe_complete(i, now, events);
        }
    }

    /// If every part of probe `i`'s attempt has a result, complete it.
    fn maybe_complete(&mut self, i: usize, now: Instant, events: &mut Vec<ProbeEvent>) {
        let done = self.probes[i]
            .attempt
            .as_ref()
            .is_some_and(|a| a.subs.iter().all(|s| s.result.is_some()));
        if !done {
            return;
        }
        let mut attempt = self.probes[i].attempt.take().expect("checked above");
        let elapsed = self.elapsed(now);
        let probe = &mut self.probes[i];
        // Any failure fails the attempt; otherwise any error makes it an error
        // (counted toward neither threshold); otherwise it succeeded.
        let outcomes = || attempt.subs.iter().filter_map(|s| s.result.as_ref());
        let outcome = if outcomes().any(|r| r.outcome == Outcome::Failure) {
            Outcome::Failure
        } else if outcomes().any(|r| r.outcome == Outcome::Error) {
            Outcome::Error
        } else {
            Outcome::Success
        };
        let success = outcome == Outcome::Success;
        let (message, address) = if let [sub] = attempt.subs.as_mut_slice() {
            // One target, or the agent: its result's message as it is.
            (
                sub.result.take().map(|r| r.message).unwrap_or_default(),
                sub.label.as_deref().map(str::to_string),
            )
        } else {
            let results: Vec<(&str, &CheckResult)> = attempt
                .subs
                .iter()
                .filter_map(|s| {
                    s.result
                        .as_ref()
                        .map(|r| (s.label.as_deref().unwrap_or(""), r))
                })
                .collect();
            let message = results
                .iter()
                .map(|(l, r)| format!("{l}: {}", r.message))
                .collect::<Vec<_>>()
                .join("; ");
            let named: Vec<&str> = results
                .iter()
                .filter(|(_, r)| success || !r.success)
                .map(|(l, _)| *l)
                .collect();
            (message, Some(named.join(",")))
        };
        let Attempt { started, exec, .. } = attempt;
        let (exit_code, output) = match exec {
            Some((code, out)) => (code, Some(out)),
            None => (None, None),
        };
        self.stats.attempts += 1;
        match outcome {
            Outcome::Success => self.stats.successes += 1,
            Outcome::Failure => self.stats.failures += 1,
            Outcome::Error => self.stats.errors += 1,
        }
        // The attempt's event comes first, then what it changed.
        let transition = probe.tracker.complete(elapsed, outcome);
        let liveness_failed =
            (transition == Some(Transition::LivenessFailed)).then(|| ProbeEvent::LivenessFailed {
                message: message.clone(),
            });
        events.push(ProbeEvent::Attempt(ProbeAttempt {
            probe: probe.kind,
            success,
            outcome,
            message,
            address,
            exit_code,
            output,
            started,
            duration: now.saturating_duration_since(started),
        }));
        match transition {
            Some(Transition::Ready) => self.publish_ready_into(true, events),
            Some(Transition::NotReady) => self.publish_ready_into(false, events),
            Some(Transition::LivenessFailed) => events.extend(liveness_failed),
            None => {}
        }
        if let (Some(epoch), Some(next)) = (self.epoch, self.probes[i].tracker.next_start()) {
            self.wakeups.push(Reverse((epoch + next, i)));
        }
    }

    fn publish_ready_into(&mut self, ready: bool, events: &mut Vec<ProbeEvent>) {
        if self.ready != ready {
            self.ready = ready;
            events.push(ProbeEvent::Ready(ready));
        }
    }

    /// Drop probe `i`'s attempt (its sockets close) and cancel it at the agent.
    fn cancel_attempt(&mut self, i: usize) {
        if let Some(attempt) = self.probes[i].attempt.take() {
            self.sockets -= attempt.subs.iter().filter(|s| s.check.is_some()).count();
            if attempt.agent {
                if let Some(agent) = &mut self.agent {
                    agent.cancel(i as u64);
                }
            }
        }
    }

    /// Bring one fd's registration in line with what its check wants.
    fn sync_fd(
        epoll: &Epoll,
        registered: &mut Option<Interest>,
        want: Option<Interest>,
        token: u64,
    ) {
        if *registered == want {
            return;
        }
        let Some((fd, read, write, conn)) = want else {
            // The socket closes with its check, which removes it from the epoll.
            *registered = None;
            return;
        };
        let mut set = EventSet::empty();
        if read {
            set |= EventSet::IN | EventSet::READ_HANG_UP;
        }
        if write {
            set |= EventSet::OUT;
        }
        let ev = EpollEvent::new(set, token);
        let same_fd = registered.is_some_and(|(f, _, _, c)| f == fd && c == conn);
        let first = if same_fd {
            ControlOperation::Modify
        } else {
            ControlOperation::Add
        };
        let result = match epoll.ctl(first, fd, ev) {
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                epoll.ctl(ControlOperation::Add, fd, ev)
            }
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {
                epoll.ctl(ControlOperation::Modify, fd, ev)
            }
            r => r,
        };
        match result {
            Ok(()) => *registered = want,
            Err(e) => log::warn!("probes: epoll_ctl on fd {fd}: {e}"),
        }
    }

    /// Bring the agent's fds' registration in line with what it wants (that may
    /// change after any call into it). Nothing is done when nothing changed: the
    /// same interests on the same link.
    fn sync_agent_fds(&mut self) {
        let Some(agent) = &self.agent else { return };
        let wanted = agent.interests();
        let serial = agent.link_serial();
        if self.agent_fds.0 == wanted && self.agent_fds.1 == serial {
            return;
        }
        let mut registered = Vec::with_capacity(wanted.len());
        for w in &wanted {
            let mut set = EventSet::empty();
            if w.read {
                set |= EventSet::IN | EventSet::READ_HANG_UP;
            }
            if w.write {
                set |= EventSet::OUT;
            }
            let ev = EpollEvent::new(set, AGENT_TOKEN | (w.fd as u32 as u64));
            // Modify first: the fd may have been closed and reopened under the
            // same number, which drops it from the epoll (ENOENT → add).
            let r = match self.epoll.ctl(ControlOperation::Modify, w.fd, ev) {
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                    self.epoll.ctl(ControlOperation::Add, w.fd, ev)
                }
                r => r,
            };
            match r {
                Ok(()) => registered.push(*w),
                Err(e) => log::warn!("probes: epoll_ctl on agent fd {}: {e}", w.fd),
            }
        }
        for old in &self.agent_fds.0 {
            if !registered.iter().any(|w| w.fd == old.fd) {
                // It may already be closed: then it is already gone.
                let _ = self
                    .epoll
                    .ctl(ControlOperation::Delete, old.fd, EpollEvent::default());
            }
        }
        // A registration that failed is retried at the next call: the cached
        // interests then differ from the wanted ones.
        self.agent_fds = (registered, serial);
    }

    /// Whether the wake-up `(when, i)` still stands for something: the start of
    /// probe `i`'s next attempt or the deadline of its attempt in flight.
    fn wakeup_live(&self, when: Instant, i: usize) -> bool {
        let Some(p) = self.probes.get(i) else {
            return false;
        };
        if let Some(a) = &p.attempt {
            let due = if a.agent {
                a.deadline + AGENT_GRACE
            } else {
                a.deadline
            };
            if due == when {
                return true;
            }
        }
        match (self.epoch, p.tracker.next_start()) {
            (Some(epoch), Some(next)) => epoch + next == when,
            _ => false,
        }
    }

    /// Drop stale wake-ups from the top of the heap (attempts that completed
    /// before their deadline, cancelled schedules), so that
    /// [`ProbeSet::next_deadline`] is exact.
    fn prune_wakeups(&mut self) {
        while let Some(Reverse((when, i))) = self.wakeups.peek().copied() {
            if self.wakeup_live(when, i) {
                break;
            }
            self.wakeups.pop();
        }
    }

    /// Arm the timerfd for the earliest wake-up (or at once for pending events),
    /// relative to the caller's `now`.
    fn arm_timer(&mut self, now: Instant) {
        self.prune_wakeups();
        self.last_now = now;
        let next = self.next_deadline();
        if !self.fired && next == self.armed && next.map_or(true, |t| t > now) {
            // Already set that way (a syscall saved per call).
            return;
        }
        self.armed = next;
        self.fired = false;
        let result = match next {
            Some(t) if t <= now && !self.pending.is_empty() => {
                self.timer.reset(Duration::from_nanos(1), None)
            }
            Some(t) => self.timer.reset(
                (t + self.slack).saturating_duration_since(now).max(MIN_ARM),
                None,
            ),
            None => self.timer.clear(),
        };
        if let Err(e) = result {
            log::warn!("probes: timerfd: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env() -> ProbeEnv {
        ProbeEnv {
            vm_addresses: vec![IpAddr::from([127, 0, 0, 1])],
            agent: None,
        }
    }

    #[test]
    fn socket_tokens_name_probe_sub_and_attempt_and_never_the_timer() {
        for (i, s, serial) in [(0, 0, 1), (7, 3, 2), (u32::MAX as usize, 0xffff, 0x7fff)] {
            let token = socket_token(i, s, serial);
            assert_eq!(token_place(token), (i, s));
            assert_ne!(token, TIMER_TOKEN);
            assert_eq!(token & AGENT_TOKEN, 0, "not an agent token");
        }
        // The same place in another attempt is another token.
        assert_ne!(socket_token(5, 1, 1), socket_token(5, 1, 2));
    }

    #[test]
    fn next_deadline_follows_the_callers_clock() {
        let config = ProbeConfig::builder(ProbeKind::Liveness, ProbeHandler::tcp_socket(9))
            .initial_delay(Duration::from_secs(5))
            .build()
            .unwrap();
        let mut set = ProbeSet::new(vec![config], env()).unwrap();
        assert_eq!(set.next_deadline(), None);
        // An instant far from the real clock: only the caller's time counts.
        let t0 = Instant::now() + Duration::from_secs(3600);
        set.vm_started(t0);
        // Ready(true) (no readiness probe) waits to be delivered: due at once.
        assert_eq!(set.next_deadline(), Some(t0));
        assert_eq!(set.process(t0), vec![ProbeEvent::Ready(true)]);
        assert_eq!(set.next_deadline(), Some(t0 + Duration::from_secs(5)));
        // Early calls change nothing.
        assert!(set.process(t0 + Duration::from_secs(4)).is_empty());
        assert_eq!(set.stats().started, 0);
        let stop = t0 + Duration::from_secs(4);
        set.vm_stopped(stop);
        assert_eq!(set.next_deadline(), Some(stop));
        assert_eq!(set.process(stop), vec![ProbeEvent::Ready(false)]);
        assert_eq!(set.next_deadline(), None);
    }

    #[cfg(not(feature = "agent"))]
    #[test]
    fn agent_probes_need_the_agent_feature() {
        for handler in [ProbeHandler::exec(["true"]), ProbeHandler::GuestAgentPing] {
            let config = ProbeConfig::new(ProbeKind::Readiness, handler).unwrap();
            let err = ProbeSet::new(vec![config], env()).unwrap_err();
            assert!(matches!(
                err,
                ProbeSetError::FeatureDisabled {
                    probe: ProbeKind::Readiness,
                    feature: "agent"
                }
            ));
        }
    }

    #[cfg(not(feature = "https"))]
    #[test]
    fn https_probes_need_the_https_feature() {
        let handler = ProbeHandler::HttpGet {
            path: "/".into(),
            port: 443,
            host: None,
            scheme: HttpScheme::Https,
            headers: vec![],
        };
        let config = ProbeConfig::new(ProbeKind::Liveness, handler).unwrap();
        let err = ProbeSet::new(vec![config], env()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "liveness probe: needs the `https` feature of vmpulse-probes"
        );
    }
}
