//! Shared helpers of the probe integration tests: loopback servers started in
//! threads, a tiny runner loop that drives a `ProbeSet` through its fd in real
//! time ([`Driver`]), and one that drives it in virtual time ([`VirtualDriver`]).
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::{ServerConfig, ServerConnection, StreamOwned};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmpulse::probes::config::{HttpScheme, ProbeConfig, ProbeHandler, ProbeKind};
use vmpulse::probes::{ProbeAttempt, ProbeEnv, ProbeEvent, ProbeSet};

/// 127.0.0.1
pub const V4: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
/// ::1
pub const V6: IpAddr = IpAddr::V6(Ipv6Addr::LOCALHOST);

/// What a connection handler gets.
pub type Handler = dyn Fn(TcpStream, usize) + Send + Sync + 'static;

/// A server on a loopback address, one thread per connection. Stops on drop.
pub struct Server {
    pub addr: SocketAddr,
    stop: Arc<AtomicBool>,
    /// Connections accepted so far.
    pub accepted: Arc<AtomicUsize>,
    /// Request heads received (for servers built with `http`).
    pub requests: Arc<Mutex<Vec<String>>>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Server {
    /// Listen on `ip` (port 0 = ephemeral) and hand each connection to `handler`.
    pub fn start(ip: IpAddr, port: u16, handler: Arc<Handler>) -> Server {
        let listener = TcpListener::bind(SocketAddr::new(ip, port)).expect("bind");
        Self::with_listener(listener, handler)
    }

    pub fn with_listener(listener: TcpListener, handler: Arc<Handler>) -> Server {
        let addr = listener.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let accepted = Arc::new(AtomicUsize::new(0));
        let (stop2, accepted2) = (stop.clone(), accepted.clone());
        let thread = thread::spawn(move || {
            for conn in listener.incoming() {
                if stop2.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let n = accepted2.fetch_add(1, Ordering::SeqCst);
                let h = handler.clone();
                thread::spawn(move || h(conn, n));
            }
        });
        Server {
            addr,
            stop,
            accepted,
            requests: Arc::new(Mutex::new(Vec::new())),
            thread: Some(thread),
        }
    }

    /// An HTTP server: `respond(request head, connection index)` gives the bytes
    /// to send back (then the connection closes). Request heads are recorded.
    pub fn http(
        ip: IpAddr,
        respond: impl Fn(&str, usize) -> Vec<u8> + Send + Sync + 'static,
    ) -> Server {
        let requests = Arc::new(Mutex::new(Vec::new()));
        let reqs = requests.clone();
        let handler: Arc<Handler> = Arc::new(move |mut conn: TcpStream, n| {
            let head = read_head(&mut conn);
            reqs.lock().unwrap().push(head.clone());
            let _ = conn.write_all(&respond(&head, n));
        });
        let mut s = Server::start(ip, 0, handler);
        s.requests = requests;
        s
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    pub fn requests(&self) -> Vec<String> {
        self.requests.lock().unwrap().clone()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_millis(200));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Read a request head (up to the blank line, bounded, with a read timeout).
pub fn read_head(conn: &mut TcpStream) -> String {
    conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut buf = Vec::new();
    let mut b = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() < 64 * 1024 {
        match conn.read(&mut b) {
            Ok(0) | Err(_) => break,
            Ok(n) => buf.extend_from_slice(&b[..n]),
        }
    }
    String::from_utf8_lossy(&buf).into_owned()
}

/// A TLS server configuration with a fresh self-signed certificate for
/// `localhost` (the probes do not verify certificates, as the kubelet).
pub fn self_signed_tls() -> Arc<ServerConfig> {
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(ck.key_pair.serialize_der()));
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Arc::new(
        ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![ck.cert.der().clone()], key)
            .unwrap(),
    )
}

/// Serve TLS on `conn` (5 s read timeout) and read the request head; `None` when
/// the client goes away or errs first.
pub fn accept_tls_request(
    config: &Arc<ServerConfig>,
    conn: TcpStream,
) -> Option<StreamOwned<ServerConnection, TcpStream>> {
    conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let tls = ServerConnection::new(config.clone()).unwrap();
    let mut stream = StreamOwned::new(tls, conn);
    let mut buf = Vec::new();
    let mut b = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut b) {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&b[..n]),
        }
    }
    Some(stream)
}

/// A full HTTP response with a body and Content-Length.
pub fn response(status: &str, extra_headers: &str, body: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n{extra_headers}\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// A port on `ip` where nothing listens (bound, then released).
pub fn free_port(ip: IpAddr) -> u16 {
    let l = TcpListener::bind(SocketAddr::new(ip, 0)).unwrap();
    l.local_addr().unwrap().port()
}

/// A valid configuration: no initial delay, thresholds 1 and 3.
pub fn config(
    kind: ProbeKind,
    handler: ProbeHandler,
    period_ms: u64,
    timeout_ms: u64,
) -> ProbeConfig {
    ProbeConfig::builder(kind, handler)
        .period(Duration::from_millis(period_ms))
        .timeout(Duration::from_millis(timeout_ms))
        .build()
        .expect("a valid probe configuration")
}

pub fn http_get(port: u16, path: &str, scheme: HttpScheme) -> ProbeHandler {
    ProbeHandler::HttpGet {
        path: path.into(),
        port,
        host: None,
        scheme,
        headers: vec![],
    }
}

pub fn env(addrs: &[IpAddr]) -> ProbeEnv {
    ProbeEnv {
        vm_addresses: addrs.to_vec(),
        agent: None,
    }
}

/// An epoll watching `set`'s fd for input (data 1), as a runner loop does.
pub fn epoll_on(set: &ProbeSet) -> Epoll {
    let epoll = Epoll::new().unwrap();
    epoll
        .ctl(
            ControlOperation::Add,
            set.fd(),
            EpollEvent::new(EventSet::IN, 1),
        )
        .unwrap();
    epoll
}

/// A runner loop around a `ProbeSet`: epoll-waits on its fd, calls `process`.
pub struct Driver {
    pub set: ProbeSet,
    epoll: Epoll,
    pub start: Instant,
    /// Every event with its time since `start`.
    pub events: Vec<(Duration, ProbeEvent)>,
    /// `process` calls made.
    pub calls: usize,
}

impl Driver {
    pub fn new(probes: Vec<ProbeConfig>, env: ProbeEnv) -> Driver {
        let set = ProbeSet::new(probes, env).expect("ProbeSet::new");
        let epoll = epoll_on(&set);
        Driver {
            set,
            epoll,
            start: Instant::now(),
            events: Vec::new(),
            calls: 0,
        }
    }

    /// Start the VM now (time 0 of the recorded events).
    pub fn start_vm(&mut self) {
        self.start = Instant::now();
        self.set.vm_started(self.start);
    }

    /// Run until `done(events)` holds or `limit` (since start) passes. Returns
    /// whether `done` held.
    pub fn run_until(
        &mut self,
        limit: Duration,
        mut done: impl FnMut(&[(Duration, ProbeEvent)]) -> bool,
    ) -> bool {
        let mut ev = [EpollEvent::default(); 4];
        loop {
            if done(&self.events) {
                return true;
            }
            let elapsed = self.start.elapsed();
            if elapsed >= limit {
                return false;
            }
            let wait = (limit - elapsed).as_millis().min(100) as i32 + 1;
            let n = self.epoll.wait(wait, &mut ev).unwrap_or(0);
            if n > 0 {
                self.calls += 1;
                let t = self.start.elapsed();
                for e in self.set.process(Instant::now()) {
                    self.events.push((t, e));
                }
            }
        }
    }

    /// Run for exactly `d` more (collecting events).
    pub fn run_for(&mut self, d: Duration) {
        let until = self.start.elapsed() + d;
        self.run_until(until, |_| false);
    }

    /// The attempts seen so far, with their completion times.
    pub fn attempts(&self) -> Vec<(Duration, ProbeAttempt)> {
        self.events
            .iter()
            .filter_map(|(t, e)| match e {
                ProbeEvent::Attempt(a) => Some((*t, a.clone())),
                _ => None,
            })
            .collect()
    }
}

/// Run a single readiness attempt of `handler` (timeout `timeout_ms`) against
/// `addrs`; returns the attempt and when it completed. Panics after 10 s.
pub fn probe_once(
    handler: ProbeHandler,
    timeout_ms: u64,
    addrs: &[IpAddr],
) -> (ProbeAttempt, Duration) {
    let mut d = Driver::new(
        vec![config(ProbeKind::Readiness, handler, 60_000, timeout_ms)],
        env(addrs),
    );
    d.start_vm();
    let got = d.run_until(Duration::from_secs(10), |ev| {
        ev.iter().any(|(_, e)| matches!(e, ProbeEvent::Attempt(_)))
    });
    assert!(got, "no attempt completed within 10 s");
    d.attempts().remove(0).swap()
}

trait Swap<A, B> {
    fn swap(self) -> (B, A);
}
impl<A, B> Swap<A, B> for (A, B) {
    fn swap(self) -> (B, A) {
        (self.1, self.0)
    }
}

/// A caller loop in virtual time: `now` is `origin + t`, chosen by the test. At
/// each instant it lets real I/O on loopback settle (connects, refusals and
/// answers of the test's servers) without moving `now`, so the schedule is
/// exact whatever the machine's speed.
pub struct VirtualDriver {
    pub set: ProbeSet,
    epoll: Epoll,
    /// Virtual time 0.
    pub origin: Instant,
    /// The current virtual time.
    pub now: Duration,
    /// Every event with the virtual time of the `process` call that returned it.
    pub events: Vec<(Duration, ProbeEvent)>,
    /// How long (real time) to wait for I/O at one instant before deciding it is
    /// quiet (a peer that never answers).
    pub quiet: Duration,
}

impl VirtualDriver {
    pub fn new(probes: Vec<ProbeConfig>, env: ProbeEnv) -> VirtualDriver {
        let set = ProbeSet::new(probes, env).expect("ProbeSet::new");
        let epoll = epoll_on(&set);
        VirtualDriver {
            set,
            epoll,
            origin: Instant::now(),
            now: Duration::ZERO,
            events: Vec::new(),
            quiet: Duration::from_millis(300),
        }
    }

    /// The instant of virtual time `t`.
    pub fn at(&self, t: Duration) -> Instant {
        self.origin + t
    }

    /// Start the VM at the current virtual time.
    pub fn start_vm(&mut self) {
        let now = self.at(self.now);
        self.set.vm_started(now);
        self.settle();
    }

    /// Stop the VM at the current virtual time.
    pub fn stop_vm(&mut self) {
        let now = self.at(self.now);
        self.set.vm_stopped(now);
        self.settle();
    }

    /// Process at the current virtual time until no check is in flight or the
    /// sockets stay quiet for `quiet` (real time).
    pub fn settle(&mut self) {
        let now = self.at(self.now);
        let mut ev = [EpollEvent::default(); 4];
        loop {
            for e in self.set.process(now) {
                self.events.push((self.now, e));
            }
            if self.set.in_flight() == 0 {
                return;
            }
            let quiet_ms = self.quiet.as_millis() as i32;
            if self.epoll.wait(quiet_ms, &mut ev).unwrap_or(0) == 0 {
                // Quiet: once more, for anything the last round left over.
                for e in self.set.process(now) {
                    self.events.push((self.now, e));
                }
                return;
            }
        }
    }

    /// Advance virtual time to `t`, stopping at every deadline the set announces
    /// on the way (and settling there).
    pub fn advance_to(&mut self, t: Duration) {
        assert!(t >= self.now, "time goes forward");
        while let Some(next) = self.set.next_deadline() {
            let next = next.saturating_duration_since(self.origin);
            if next > t {
                break;
            }
            self.now = self.now.max(next);
            self.settle();
            // Whatever was due at `now` was done: the next deadline is later.
            if let Some(again) = self.set.next_deadline() {
                assert!(
                    again > self.at(self.now),
                    "next_deadline() stays at {:?} after processing at {:?}",
                    again.saturating_duration_since(self.origin),
                    self.now
                );
            }
        }
        self.now = t;
        self.settle();
    }

    /// The attempts so far, with the virtual time they were reported at.
    pub fn attempts(&self) -> Vec<(Duration, ProbeAttempt)> {
        self.events
            .iter()
            .filter_map(|(t, e)| match e {
                ProbeEvent::Attempt(a) => Some((*t, a.clone())),
                _ => None,
            })
            .collect()
    }

    /// The virtual start time of an attempt.
    pub fn started(&self, a: &ProbeAttempt) -> Duration {
        a.started.saturating_duration_since(self.origin)
    }
}
