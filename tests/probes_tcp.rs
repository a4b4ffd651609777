//! `tcpSocket` probes against real listeners on 127.0.0.1 and ::1.

mod probes_util;

use std::io::Read;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use probes_util::*;
use vmpulse::probes::config::ProbeHandler;

fn tcp(port: u16) -> ProbeHandler {
    ProbeHandler::TcpSocket { port, host: None }
}

#[test]
fn open_port_succeeds_and_sends_nothing() {
    for ip in [V4, V6] {
        let (tx, rx) = mpsc::channel();
        let tx = Mutex::new(tx);
        let s = Server::start(
            ip,
            0,
            Arc::new(move |mut conn: TcpStream, _| {
                conn.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
                let mut buf = Vec::new();
                let r = conn.read_to_end(&mut buf).map(|_| buf.len());
                let _ = tx.lock().unwrap().send(r.map_err(|e| e.kind()));
            }),
        );
        let (a, t) = probe_once(tcp(s.port()), 1000, &[ip]);
        assert!(a.success, "{a:?}");
        assert_eq!(a.message, "connected");
        assert_eq!(a.address, Some(SocketAddr::new(ip, s.port()).to_string()));
        assert!(t < Duration::from_millis(300), "{t:?}");
        // The server saw the connection close with no data.
        let got = rx
            .recv_timeout(Duration::from_secs(3))
            .expect("server saw nothing");
        assert_eq!(got, Ok(0));
    }
}

#[test]
fn listening_but_never_accepting_succeeds() {
    let l = TcpListener::bind((V4, 0)).unwrap();
    let port = l.local_addr().unwrap().port();
    let (a, _) = probe_once(tcp(port), 1000, &[V4]);
    assert!(a.success, "{a:?}");
    drop(l);
}

#[test]
fn closed_port_fails_at_once() {
    for ip in [V4, V6] {
        let port = free_port(ip);
        let (a, t) = probe_once(tcp(port), 1000, &[ip]);
        assert!(!a.success);
        assert_eq!(a.message, "connect: Connection refused");
        assert_eq!(a.address, Some(SocketAddr::new(ip, port).to_string()));
        assert!(t < Duration::from_millis(300), "{t:?}");
    }
}

#[test]
fn explicit_host_literal_with_brackets() {
    let l = TcpListener::bind((V6, 0)).unwrap();
    let port = l.local_addr().unwrap().port();
    let handler = ProbeHandler::TcpSocket {
        port,
        host: Some("[::1]".into()),
    };
    let (a, _) = probe_once(handler, 1000, &[V4]);
    assert!(a.success, "{a:?}");
    assert_eq!(a.address, Some(format!("[::1]:{port}")));
}

#[test]
fn unresolvable_host_fails_with_a_clear_message() {
    let handler = ProbeHandler::TcpSocket {
        port: 80,
        host: Some("no-such-host.invalid".into()),
    };
    let (a, _) = probe_once(handler, 1000, &[V4]);
    assert!(!a.success);
    assert!(
        a.message
            .starts_with("cannot resolve host no-such-host.invalid"),
        "{}",
        a.message
    );
}

#[test]
fn multi_address_one_refusing_fails_and_is_named() {
    let l4 = TcpListener::bind((V4, 0)).unwrap();
    let port = l4.local_addr().unwrap().port();
    let Ok(l6) = TcpListener::bind((V6, port)) else {
        eprintln!("SKIP: [::1]:{port} is taken");
        return;
    };
    let (a, _) = probe_once(tcp(port), 1000, &[V4, V6]);
    assert!(a.success, "{a:?}");
    assert_eq!(a.address, Some(format!("127.0.0.1:{port},[::1]:{port}")));
    drop(l6);
    let (a, _) = probe_once(tcp(port), 1000, &[V4, V6]);
    assert!(!a.success);
    assert_eq!(a.address, Some(format!("[::1]:{port}")));
    assert_eq!(
        a.message,
        format!("127.0.0.1:{port}: connected; [::1]:{port}: connect: Connection refused")
    );
    drop(l4);
}

#[test]
fn unanswered_syn_fails_at_the_timeout() {
    // A listener whose accept queue is full drops further SYNs, like a black hole.
    use socket2::{Domain, Socket, Type};
    let sock = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    sock.bind(&SocketAddr::new(V4, 0).into()).unwrap();
    sock.listen(0).unwrap();
    let addr = sock.local_addr().unwrap().as_socket().unwrap();
    // Fill the queue (never accepted); keep the clients open.
    let mut clients = Vec::new();
    for _ in 0..4 {
        if let Ok(c) = TcpStream::connect_timeout(&addr, Duration::from_millis(100)) {
            clients.push(c);
        }
    }
    assert!(!clients.is_empty());
    let (a, t) = probe_once(tcp(addr.port()), 500, &[V4]);
    if a.success {
        eprintln!("SKIP: this kernel answered a SYN with a full accept queue");
        return;
    }
    assert_eq!(a.message, "connect: timed out after 500ms");
    assert!(
        t >= Duration::from_millis(500) && t < Duration::from_millis(800),
        "{t:?}"
    );
    drop(sock);
}
