//! Run an `httpGet` and a `tcpSocket` probe from your own epoll loop.
//!
//! The example starts a small HTTP server and a TCP listener on 127.0.0.1 (the
//! "VM"), builds a readiness probe (HTTP) and a liveness probe (TCP), adds the
//! `ProbeSet`'s fd to its own epoll instance and runs until both probes have
//! succeeded twice and the VM is ready. It waits on the fd with a timeout taken
//! from `ProbeSet::next_deadline`, and passes its clock's `now` to every call.
//!
//! ```text
//! cargo run -p vmpulse-probes --example epoll_loop
//! ```

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, TcpListener};
use std::process::ExitCode;
use std::thread;
use std::time::{Duration, Instant};

use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmpulse_probes::config::{ProbeConfig, ProbeHandler, ProbeKind};
use vmpulse_probes::{ProbeEnv, ProbeEvent, ProbeSet};

/// Token of the probes' fd in our epoll.
const PROBES: u64 = 1;

/// A minimal HTTP server: every request gets `200 OK`.
fn http_server() -> std::io::Result<u16> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
    let port = listener.local_addr()?.port();
    thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            let _ = conn.set_read_timeout(Some(Duration::from_secs(2)));
            let mut head = Vec::new();
            let mut buf = [0u8; 1024];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                match conn.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => head.extend_from_slice(&buf[..n]),
                }
            }
            let _ = conn
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok");
        }
    });
    Ok(port)
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    let http_port = http_server()?;
    // The TCP probe only needs the handshake: the kernel completes it for us.
    let tcp = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
    let tcp_port = tcp.local_addr()?.port();

    let readiness = ProbeConfig::builder(
        ProbeKind::Readiness,
        ProbeHandler::http_get(http_port, "/healthz"),
    )
    .period(Duration::from_secs(1))
    .success_threshold(2)
    .build()?;
    let liveness = ProbeConfig::builder(ProbeKind::Liveness, ProbeHandler::tcp_socket(tcp_port))
        .period(Duration::from_secs(1))
        .timeout(Duration::from_millis(500))
        .build()?;
    let env = ProbeEnv {
        vm_addresses: vec![IpAddr::V4(Ipv4Addr::LOCALHOST)],
        agent: None,
    };
    let mut probes = ProbeSet::new([readiness, liveness], env)?;

    // Our own loop: one epoll, the probes' fd in it (next to our other fds).
    let epoll = Epoll::new()?;
    epoll.ctl(
        ControlOperation::Add,
        probes.fd(),
        EpollEvent::new(EventSet::IN, PROBES),
    )?;
    let start = Instant::now();
    probes.vm_started(start);
    let give_up = start + Duration::from_secs(10);
    let (mut http_ok, mut tcp_ok) = (0, 0);
    let mut events = [EpollEvent::default(); 8];
    while !(probes.ready() && http_ok >= 2 && tcp_ok >= 2) {
        let now = Instant::now();
        if now >= give_up {
            return Err("the probes did not succeed within 10 s".into());
        }
        // Sleep until I/O or the probes' next deadline, whichever comes first.
        let until = probes.next_deadline().unwrap_or(give_up).min(give_up);
        // Rounded up to whole milliseconds, so we never wake just before it.
        let timeout_ms = until
            .saturating_duration_since(now)
            .as_micros()
            .div_ceil(1000);
        epoll.wait(i32::try_from(timeout_ms)?, &mut events)?;
        // Readable fd or deadline reached: either way, let the probes work.
        let now = Instant::now();
        for event in probes.process(now) {
            match event {
                ProbeEvent::Attempt(a) => {
                    println!(
                        "{:>6.3}s {} {} at {}: {} ({} µs)",
                        a.started.duration_since(start).as_secs_f64(),
                        a.probe.name(),
                        if a.success { "success" } else { "failure" },
                        a.address.as_deref().unwrap_or("-"),
                        a.message,
                        a.duration.as_micros()
                    );
                    match (a.probe, a.success) {
                        (ProbeKind::Readiness, true) => http_ok += 1,
                        (ProbeKind::Liveness, true) => tcp_ok += 1,
                        _ => {}
                    }
                }
                ProbeEvent::Ready(r) => println!("ready: {r}"),
                ProbeEvent::LivenessFailed { message } => {
                    return Err(format!("liveness failed: {message}").into())
                }
            }
        }
    }
    probes.vm_stopped(Instant::now());
    drop(tcp);
    println!("both probes succeeded twice; the VM is ready");
    Ok(())
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("epoll_loop: {e}");
            ExitCode::FAILURE
        }
    }
}
