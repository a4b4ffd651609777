//! `httpGet` probes against real HTTP(S) servers on 127.0.0.1 and ::1.

mod probes_util;

use std::io::Write;
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use probes_util::*;
use vmpulse::probes::config::{HttpScheme, ProbeConfig, ProbeHandler, ProbeKind};
use vmpulse::probes::tracker::Outcome;
use vmpulse::probes::ProbeEvent;

fn ok_server(ip: IpAddr) -> Server {
    Server::http(ip, |_, _| response("200 OK", "", "fine"))
}

#[test]
fn http_200_on_ipv4_and_ipv6() {
    for ip in [V4, V6] {
        let s = ok_server(ip);
        let (a, t) = probe_once(http_get(s.port(), "/", HttpScheme::Http), 1000, &[ip]);
        assert!(a.success, "{a:?}");
        assert_eq!(a.message, "HTTP 200 OK");
        let expected = match ip {
            IpAddr::V4(_) => format!("127.0.0.1:{}", s.port()),
            IpAddr::V6(_) => format!("[::1]:{}", s.port()),
        };
        assert_eq!(a.address.as_deref(), Some(expected.as_str()));
        assert!(t < Duration::from_millis(500), "took {t:?}");
        assert_eq!(s.requests().len(), 1);
    }
}

#[test]
fn request_shape_matches_the_kubelet() {
    let s = ok_server(V4);
    let (a, _) = probe_once(
        http_get(s.port(), "/healthz?x=1", HttpScheme::Http),
        1000,
        &[V4],
    );
    assert!(a.success);
    let head = &s.requests()[0];
    let lines: Vec<&str> = head.split("\r\n").collect();
    assert_eq!(lines[0], "GET /healthz?x=1 HTTP/1.1");
    assert!(
        lines.contains(&format!("Host: 127.0.0.1:{}", s.port()).as_str()),
        "{head}"
    );
    assert!(lines.contains(&"User-Agent: kube-probe/1.34"), "{head}");
    assert!(lines.contains(&"Accept: */*"), "{head}");
    assert!(lines.contains(&"Connection: close"), "{head}");
    assert!(
        !head.to_ascii_lowercase().contains("accept-encoding"),
        "{head}"
    );

    // IPv6 Host header, user headers: empty values remove defaults, repeats are kept.
    let s6 = ok_server(V6);
    let handler = ProbeHandler::HttpGet {
        path: "/".into(),
        port: s6.port(),
        host: None,
        scheme: HttpScheme::Http,
        headers: vec![
            ("User-Agent".into(), "".into()),
            ("Accept".into(), "".into()),
            ("X-A".into(), "1".into()),
            ("X-A".into(), "2".into()),
        ],
    };
    let (a, _) = probe_once(handler, 1000, &[V6]);
    assert!(a.success);
    let head = &s6.requests()[0];
    assert!(
        head.contains(&format!("\r\nHost: [::1]:{}\r\n", s6.port())),
        "{head}"
    );
    assert!(!head.contains("User-Agent"), "{head}");
    assert!(!head.contains("Accept:"), "{head}");
    assert!(head.contains("\r\nX-A: 1\r\nX-A: 2\r\n"), "{head}");
}

#[test]
fn explicit_host_and_host_header_override() {
    let s = ok_server(V6);
    let handler = ProbeHandler::HttpGet {
        path: "/".into(),
        port: s.port(),
        host: Some("::1".into()),
        scheme: HttpScheme::Http,
        headers: vec![("Host".into(), "app.example".into())],
    };
    // The VM address list is ignored when host is given.
    let (a, _) = probe_once(handler, 1000, &[V4]);
    assert!(a.success, "{a:?}");
    assert_eq!(a.address, Some(format!("[::1]:{}", s.port())));
    assert!(s.requests()[0].contains("\r\nHost: app.example\r\n"));
}

#[test]
fn status_codes() {
    for (status, success) in [
        ("500 Internal Server Error", false),
        ("400 Bad Request", false),
        ("204 No Content", true),
        ("399 Odd", true),
        ("101 Switching Protocols", false),
    ] {
        let s = Server::http(V4, move |_, _| response(status, "", ""));
        let (a, _) = probe_once(http_get(s.port(), "/", HttpScheme::Http), 1000, &[V4]);
        assert_eq!(a.success, success, "{status}: {a:?}");
        if !success {
            let code = &status[..3];
            assert_eq!(
                a.message,
                format!("HTTP probe failed with statuscode: {code}")
            );
        }
    }
}

#[test]
fn interim_199_then_close_fails() {
    let s = Server::http(V4, |_, _| b"HTTP/1.1 199 Wait\r\n\r\n".to_vec());
    let (a, _) = probe_once(http_get(s.port(), "/", HttpScheme::Http), 1000, &[V4]);
    assert!(!a.success);
    assert_eq!(a.message, "connection closed without a response");
}

#[test]
fn redirect_on_the_same_host_is_followed() {
    let s = Server::http(V4, |head, _| {
        if head.starts_with("GET /ok ") {
            response("200 OK", "", "ok")
        } else if head.starts_with("GET /bad ") {
            response("500 Oops", "", "")
        } else if head.starts_with("GET /abs ") {
            let port = head
                .lines()
                .find_map(|l| l.strip_prefix("Host: 127.0.0.1:"))
                .unwrap()
                .trim()
                .to_string();
            response(
                "307 Temporary",
                &format!("Location: http://127.0.0.1:{port}/ok\r\n"),
                "",
            )
        } else if head.starts_with("GET /to-bad ") {
            response("301 Moved", "Location: /bad\r\n", "")
        } else {
            response("302 Found", "Location: /ok\r\n", "moved")
        }
    });
    let (a, _) = probe_once(http_get(s.port(), "/", HttpScheme::Http), 1000, &[V4]);
    assert!(a.success, "{a:?}");
    assert_eq!(a.message, "HTTP 200 OK");
    let reqs = s.requests();
    assert_eq!(reqs.len(), 2);
    assert!(reqs[1].starts_with("GET /ok HTTP/1.1"));

    let (a, _) = probe_once(http_get(s.port(), "/to-bad", HttpScheme::Http), 1000, &[V4]);
    assert!(!a.success);
    assert_eq!(a.message, "HTTP probe failed with statuscode: 500");

    let (a, _) = probe_once(http_get(s.port(), "/abs", HttpScheme::Http), 1000, &[V4]);
    assert!(a.success, "{a:?}");
    assert_eq!(s.requests().len(), 6);
}

#[test]
fn redirect_to_another_port_on_the_same_ip_is_followed() {
    let target = Server::http(V4, |_, _| response("503 Busy", "", ""));
    let port = target.port();
    let s = Server::http(V4, move |_, _| {
        response(
            "302 Found",
            &format!("Location: http://127.0.0.1:{port}/\r\n"),
            "",
        )
    });
    let (a, _) = probe_once(http_get(s.port(), "/", HttpScheme::Http), 1000, &[V4]);
    assert!(!a.success);
    assert_eq!(a.message, "HTTP probe failed with statuscode: 503");
    assert_eq!(target.requests().len(), 1);
}

#[test]
fn redirect_to_another_host_is_a_warning_success_and_not_contacted() {
    let s = Server::http(V4, |_, _| {
        response("302 Found", "Location: http://other.example/fail\r\n", "")
    });
    let (a, _) = probe_once(http_get(s.port(), "/", HttpScheme::Http), 1000, &[V4]);
    assert!(a.success, "{a:?}");
    assert!(
        a.message.starts_with("warning: HTTP 302 Found"),
        "{}",
        a.message
    );
    assert!(a.message.contains("another host"), "{}", a.message);
    assert!(
        a.message.contains("http://other.example/fail"),
        "{}",
        a.message
    );
    assert_eq!(s.requests().len(), 1);
}

#[test]
fn redirect_loop_fails_after_ten_requests() {
    let s = Server::http(V4, |_, _| response("302 Found", "Location: /loop\r\n", ""));
    let (a, _) = probe_once(http_get(s.port(), "/loop", HttpScheme::Http), 2000, &[V4]);
    assert!(!a.success);
    assert!(
        a.message.starts_with("stopped after 10 redirects"),
        "{}",
        a.message
    );
    assert_eq!(s.requests().len(), 10);
}

#[test]
fn slow_server_within_the_timeout_succeeds() {
    let s = Server::http(V4, |_, _| {
        thread::sleep(Duration::from_millis(300));
        response("200 OK", "", "slow")
    });
    let (a, t) = probe_once(http_get(s.port(), "/", HttpScheme::Http), 2000, &[V4]);
    assert!(a.success, "{a:?}");
    assert!(t >= Duration::from_millis(300), "{t:?}");
    assert!(t < Duration::from_millis(1500), "{t:?}");
}

/// A server that accepts, reads the request and then never answers.
fn stalled_server(ip: IpAddr, first_bytes: &'static [u8]) -> Server {
    Server::start(
        ip,
        0,
        Arc::new(move |mut conn: TcpStream, _| {
            let _ = read_head(&mut conn);
            let _ = conn.write_all(first_bytes);
            thread::sleep(Duration::from_secs(4));
        }),
    )
}

#[test]
fn stalled_server_fails_at_the_timeout() {
    let s = stalled_server(V4, b"");
    let (a, t) = probe_once(http_get(s.port(), "/", HttpScheme::Http), 700, &[V4]);
    assert!(!a.success);
    assert_eq!(
        a.message,
        "timed out after 700ms (waiting for the response)"
    );
    assert!(t >= Duration::from_millis(700), "{t:?}");
    assert!(t < Duration::from_millis(1000), "{t:?}");
}

#[test]
fn body_stall_after_headers_fails_at_the_timeout() {
    let s = stalled_server(V6, b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npartial");
    let (a, t) = probe_once(http_get(s.port(), "/", HttpScheme::Http), 500, &[V6]);
    assert!(!a.success);
    assert_eq!(a.message, "timed out after 500ms (reading the body)");
    assert!(
        t >= Duration::from_millis(500) && t < Duration::from_millis(700),
        "{t:?}"
    );
}

#[test]
fn garbage_response_fails() {
    let s = Server::http(V4, |_, _| {
        b"SSH-2.0-OpenSSH_9.2\r\n\x00\xff\xfe garbage\r\n\r\n".to_vec()
    });
    let (a, t) = probe_once(http_get(s.port(), "/", HttpScheme::Http), 1000, &[V4]);
    assert!(!a.success);
    assert!(
        a.message.starts_with("malformed HTTP response"),
        "{}",
        a.message
    );
    assert!(t < Duration::from_millis(500));
}

#[test]
fn huge_body_reads_only_10_kib_and_succeeds() {
    let written = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let w = written.clone();
    let s = Server::start(
        V4,
        0,
        Arc::new(move |mut conn: TcpStream, _| {
            let _ = read_head(&mut conn);
            let size = 64 << 20;
            let _ = conn
                .write_all(format!("HTTP/1.1 200 OK\r\nContent-Length: {size}\r\n\r\n").as_bytes());
            let chunk = vec![b'x'; 64 * 1024];
            let mut sent = 0;
            while sent < size {
                match conn.write(&chunk) {
                    Ok(n) => sent += n,
                    Err(_) => break,
                }
            }
            w.store(sent, std::sync::atomic::Ordering::SeqCst);
        }),
    );
    let (a, t) = probe_once(http_get(s.port(), "/", HttpScheme::Http), 2000, &[V4]);
    assert!(a.success, "{a:?}");
    assert!(t < Duration::from_millis(1000), "{t:?}");
    // The client closed early: the server could not push all 64 MiB.
    for _ in 0..100 {
        if written.load(std::sync::atomic::Ordering::SeqCst) > 0 {
            break;
        }
        thread::sleep(Duration::from_millis(20));
    }
    let sent = written.load(std::sync::atomic::Ordering::SeqCst);
    assert!(sent > 0 && sent < 64 << 20, "server wrote {sent}");
}

#[test]
fn refused_port_fails_at_once() {
    for ip in [V4, V6] {
        let port = free_port(ip);
        let (a, t) = probe_once(http_get(port, "/", HttpScheme::Http), 1000, &[ip]);
        assert!(!a.success);
        assert_eq!(a.message, "connect: Connection refused");
        assert!(t < Duration::from_millis(300), "{t:?}");
    }
}

#[test]
fn reset_after_request_fails_at_once() {
    let s = Server::start(
        V4,
        0,
        Arc::new(|mut conn: TcpStream, _| {
            let _ = read_head(&mut conn);
            // SO_LINGER 0: close sends RST.
            let sock = socket2::SockRef::from(&conn);
            sock.set_linger(Some(Duration::ZERO)).unwrap();
        }),
    );
    let (a, t) = probe_once(http_get(s.port(), "/", HttpScheme::Http), 1000, &[V4]);
    assert!(!a.success);
    assert!(
        a.message.contains("reset") || a.message.contains("closed"),
        "{}",
        a.message
    );
    assert!(t < Duration::from_millis(500), "{t:?}");
}

#[test]
fn multi_address_fails_when_one_refuses_and_names_it() {
    // Listen on 127.0.0.1:P only; [::1]:P refuses.
    let s = ok_server(V4);
    let port = s.port();
    if TcpListener::bind(SocketAddr::new(V6, port)).is_err() {
        eprintln!("SKIP: [::1]:{port} is taken");
        return;
    }
    let (a, _) = probe_once(http_get(port, "/", HttpScheme::Http), 1000, &[V4, V6]);
    assert!(!a.success);
    assert_eq!(a.address, Some(format!("[::1]:{port}")));
    assert_eq!(
        a.message,
        format!("127.0.0.1:{port}: HTTP 200 OK; [::1]:{port}: connect: Connection refused")
    );
    // With both listening, the attempt succeeds and names both.
    let l6 = TcpListener::bind(SocketAddr::new(V6, port)).unwrap();
    let s6 = Server::with_listener(
        l6,
        Arc::new(|mut conn: TcpStream, _| {
            let _ = read_head(&mut conn);
            let _ = conn.write_all(&response("200 OK", "", ""));
        }),
    );
    let (a, _) = probe_once(http_get(port, "/", HttpScheme::Http), 1000, &[V4, V6]);
    assert!(a.success, "{a:?}");
    assert_eq!(a.address, Some(format!("127.0.0.1:{port},[::1]:{port}")));
    drop(s6);
}

mod tls {
    use super::*;

    fn https_server(ip: IpAddr, status: &'static str) -> Server {
        let config = self_signed_tls();
        Server::start(
            ip,
            0,
            Arc::new(move |conn: TcpStream, _| {
                let Some(mut stream) = accept_tls_request(&config, conn) else {
                    return;
                };
                let _ = stream.write_all(&response(status, "", "secure"));
                stream.conn.send_close_notify();
                let _ = stream.flush();
            }),
        )
    }

    #[test]
    fn https_with_a_self_signed_certificate() {
        for ip in [V4, V6] {
            let s = https_server(ip, "200 OK");
            let (a, t) = probe_once(http_get(s.port(), "/", HttpScheme::Https), 2000, &[ip]);
            assert!(a.success, "{a:?}");
            assert_eq!(a.message, "HTTP 200 OK");
            assert!(t < Duration::from_millis(1500), "{t:?}");
        }
        let s = https_server(V4, "500 No");
        let (a, _) = probe_once(http_get(s.port(), "/", HttpScheme::Https), 2000, &[V4]);
        assert!(!a.success);
        assert_eq!(a.message, "HTTP probe failed with statuscode: 500");
    }

    #[test]
    fn https_against_a_plain_http_server_fails() {
        let s = ok_server(V4);
        let (a, _) = probe_once(http_get(s.port(), "/", HttpScheme::Https), 1000, &[V4]);
        assert!(!a.success);
        // The server waits for a request head that never comes (it got a ClientHello).
        assert_eq!(a.message, "timed out after 1s (waiting for the response)");
    }
}

#[test]
fn vhost_redirects_follow_the_url_host_not_the_host_header() {
    let s = Server::http(V4, |head, _| {
        if head.starts_with("GET /abs ") {
            response("302 Found", "Location: http://app.example/login\r\n", "")
        } else if head.starts_with("GET /rel ") {
            response("302 Found", "Location: /login\r\n", "")
        } else {
            response("200 OK", "", "")
        }
    });
    let handler = |path: &str| ProbeHandler::HttpGet {
        path: path.into(),
        port: s.port(),
        host: None,
        scheme: HttpScheme::Http,
        headers: vec![("Host".into(), "app.example".into())],
    };
    // Absolute to the vhost name: another host for the probe, not followed.
    let (a, _) = probe_once(handler("/abs"), 1000, &[V4]);
    assert!(a.success, "{a:?}");
    assert!(a.message.contains("another host"), "{}", a.message);
    assert_eq!(s.requests().len(), 1);
    // Relative: followed, and the Host header is kept.
    let (a, _) = probe_once(handler("/rel"), 1000, &[V4]);
    assert!(a.success, "{a:?}");
    assert_eq!(a.message, "HTTP 200 OK");
    let reqs = s.requests();
    assert_eq!(reqs.len(), 3);
    assert!(
        reqs[2].starts_with("GET /login HTTP/1.1\r\nHost: app.example\r\n"),
        "{}",
        reqs[2]
    );
}

#[test]
fn redirect_without_location_is_a_warning_success() {
    let s = Server::http(V4, |_, _| response("302 Found", "", ""));
    let (a, _) = probe_once(http_get(s.port(), "/", HttpScheme::Http), 1000, &[V4]);
    assert!(a.success, "{a:?}");
    assert_eq!(
        a.message,
        "warning: HTTP 302 Found: probe terminated redirects"
    );
    assert_eq!(s.requests().len(), 1);
}

#[test]
fn hostile_responses_fail_cleanly() {
    // Headers that never end: past Go's 1 MiB.
    let s = Server::start(
        V4,
        0,
        Arc::new(|mut conn: TcpStream, _| {
            let _ = read_head(&mut conn);
            let _ = conn.write_all(b"HTTP/1.1 200 OK\r\nX-Long: ");
            let _ = conn.write_all(&vec![b'a'; 1100 * 1024]);
            thread::sleep(Duration::from_secs(2));
        }),
    );
    let (a, t) = probe_once(http_get(s.port(), "/", HttpScheme::Http), 1500, &[V4]);
    assert!(!a.success);
    assert_eq!(a.message, "response headers longer than 1048576 bytes");
    assert!(t < Duration::from_millis(1000), "{t:?}");

    // An endless stream of interim responses: fails at the deadline.
    let s = Server::start(
        V4,
        0,
        Arc::new(|mut conn: TcpStream, _| {
            let _ = read_head(&mut conn);
            let until = std::time::Instant::now() + Duration::from_secs(2);
            while std::time::Instant::now() < until {
                if conn.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").is_err() {
                    break;
                }
                thread::sleep(Duration::from_millis(1));
            }
        }),
    );
    let (a, t) = probe_once(http_get(s.port(), "/", HttpScheme::Http), 400, &[V4]);
    assert!(!a.success);
    assert_eq!(
        a.message,
        "timed out after 400ms (waiting for the response)"
    );
    assert!(t >= Duration::from_millis(400), "{t:?}");

    // Non-UTF-8 bytes in header values and the reason phrase.
    let s = Server::http(V4, |_, _| {
        b"HTTP/1.1 200 \xff\xfe\r\nX-Bin: \x80\x81\r\nContent-Length: 0\r\n\r\n".to_vec()
    });
    let (a, _) = probe_once(http_get(s.port(), "/", HttpScheme::Http), 1000, &[V4]);
    // Obsolete text is accepted (as by Go); the non-UTF-8 reason is dropped.
    assert!(a.success, "{a:?}");
    assert_eq!(a.message, "HTTP 200");
}

/// A server whose every answer is `bytes`, after which it closes the connection.
fn closing_server(bytes: &'static [u8]) -> Server {
    Server::http(V4, move |_, _| bytes.to_vec())
}

#[test]
fn a_short_body_is_an_error_not_a_success() {
    // The kubelet's rule: an error after the response headers is a probe error.
    let s = closing_server(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhalf");
    let (a, t) = probe_once(http_get(s.port(), "/", HttpScheme::Http), 1000, &[V4]);
    assert!(!a.success, "{a:?}");
    assert_eq!(a.outcome, Outcome::Error);
    assert_eq!(a.message, "connection closed after 4 of 10 body bytes");
    assert!(t < Duration::from_millis(500), "{t:?}");
    // The same for a chunked body cut short, whatever the status.
    let s = closing_server(b"HTTP/1.1 503 No\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nhalf\r\n");
    let (a, _) = probe_once(http_get(s.port(), "/", HttpScheme::Http), 1000, &[V4]);
    assert_eq!(a.outcome, Outcome::Error, "{a:?}");
    // A complete body, and a body without a length that ends with the
    // connection, still succeed.
    let s = closing_server(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nfull");
    let (a, _) = probe_once(http_get(s.port(), "/", HttpScheme::Http), 1000, &[V4]);
    assert_eq!(a.outcome, Outcome::Success, "{a:?}");
    let s = closing_server(b"HTTP/1.1 200 OK\r\n\r\nuntil the end");
    let (a, _) = probe_once(http_get(s.port(), "/", HttpScheme::Http), 1000, &[V4]);
    assert_eq!(a.outcome, Outcome::Success, "{a:?}");
    // Closed before the headers end: a failure, as before.
    let s = closing_server(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n");
    let (a, _) = probe_once(http_get(s.port(), "/", HttpScheme::Http), 1000, &[V4]);
    assert_eq!(a.outcome, Outcome::Failure, "{a:?}");
    assert_eq!(a.message, "connection closed before the end of the headers");
}

#[test]
fn a_body_stall_is_an_error_and_a_head_stall_a_failure() {
    let stall_after = |bytes: &'static [u8]| {
        Server::start(
            V4,
            0,
            Arc::new(move |mut conn: TcpStream, _| {
                let _ = read_head(&mut conn);
                let _ = conn.write_all(bytes);
                thread::sleep(Duration::from_millis(1500));
            }),
        )
    };
    let s = stall_after(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhalf");
    let (a, t) = probe_once(http_get(s.port(), "/", HttpScheme::Http), 300, &[V4]);
    assert_eq!(a.outcome, Outcome::Error, "{a:?}");
    assert_eq!(a.message, "timed out after 300ms (reading the body)");
    assert!(t >= Duration::from_millis(300), "{t:?}");
    let s = stall_after(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n");
    let (a, _) = probe_once(http_get(s.port(), "/", HttpScheme::Http), 300, &[V4]);
    assert_eq!(a.outcome, Outcome::Failure, "{a:?}");
    assert_eq!(
        a.message,
        "timed out after 300ms (waiting for the response)"
    );
}

#[test]
fn large_response_headers_pass_up_to_one_mebibyte() {
    for kib in [20, 30, 500] {
        let mut head = b"HTTP/1.1 200 OK\r\n".to_vec();
        let mut i = 0;
        while head.len() < kib * 1024 {
            head.extend_from_slice(format!("X-Filler-{i}: {}\r\n", "f".repeat(90)).as_bytes());
            i += 1;
        }
        head.extend_from_slice(b"Content-Length: 2\r\n\r\nok");
        let head: &'static [u8] = head.leak();
        let s = closing_server(head);
        let (a, _) = probe_once(http_get(s.port(), "/", HttpScheme::Http), 2000, &[V4]);
        assert!(a.success, "{kib} KiB of headers: {a:?}");
        assert_eq!(a.message, "HTTP 200 OK");
    }
}

#[test]
fn a_redirect_is_followed_without_waiting_for_its_body() {
    // The redirect's body never completes: Go follows as soon as the headers arrive.
    let s = Server::start(
        V4,
        0,
        Arc::new(|mut conn: TcpStream, n| {
            let _ = read_head(&mut conn);
            if n == 0 {
                let _ = conn.write_all(
                    b"HTTP/1.1 302 Found\r\nLocation: /ok\r\nContent-Length: 100\r\n\r\nstart",
                );
                thread::sleep(Duration::from_millis(1500));
            } else {
                let _ = conn.write_all(&response("200 OK", "", "fine"));
            }
        }),
    );
    let (a, t) = probe_once(http_get(s.port(), "/", HttpScheme::Http), 1000, &[V4]);
    assert!(a.success, "{a:?}");
    assert!(t < Duration::from_millis(500), "{t:?}");
}

#[test]
fn errors_count_toward_neither_threshold() {
    // Connection n gets answers[n % 4]: success, failure, error, failure.
    const ANSWERS: [&[u8]; 4] = [
        b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.1 500 No\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhalf",
        b"HTTP/1.1 500 No\r\nContent-Length: 0\r\n\r\n",
    ];
    let s = Server::http(V4, |_, n| ANSWERS[n % 4].to_vec());
    let c = ProbeConfig::builder(
        ProbeKind::Readiness,
        http_get(s.port(), "/", HttpScheme::Http),
    )
    .period(Duration::from_secs(1))
    .failure_threshold(2)
    .build()
    .unwrap();
    // Virtual time: attempts at 0, 1, 2 and 3 s.
    let mut d = VirtualDriver::new(vec![c], env(&[V4]));
    d.start_vm();
    d.advance_to(Duration::from_millis(3500));
    let attempts = d
        .events
        .iter()
        .filter(|(_, e)| matches!(e, ProbeEvent::Attempt(_)))
        .count();
    assert_eq!(attempts, 4, "{:?}", d.events);
    let story: Vec<String> = d
        .events
        .iter()
        .map(|(_, e)| match e {
            ProbeEvent::Attempt(a) => format!("{:?}", a.outcome),
            ProbeEvent::Ready(r) => format!("ready {r}"),
            ProbeEvent::LivenessFailed { .. } => "liveness failed".into(),
        })
        .take(6)
        .collect();
    // The error neither resets the run of failures nor adds to it: the two
    // failures around it reach the threshold of 2.
    assert_eq!(
        story,
        [
            "Success",
            "ready true",
            "Failure",
            "Error",
            "Failure",
            "ready false"
        ]
    );
    let st = d.set.stats();
    assert_eq!((st.successes, st.failures, st.errors), (1, 2, 1));
}
