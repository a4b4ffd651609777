//! The `httpGet` probe: one HTTP/1.1 GET (plus same-host redirects) as a
//! non-blocking state machine, following the kubelet's rules (SPEC-probes 3.1).
//!
//! - status 200–399 is a success; a final 3xx is a success with a warning;
//! - redirects (301, 302, 303, 307, 308 with a `Location`) are followed only to the
//!   same hostname (port and scheme may change), at most 10 requests in all; a
//!   redirect to another host is not contacted and counts as a success with a
//!   warning;
//! - at most [`MAX_BODY`] bytes of body are read; `Connection: close`;
//! - headers: `Host` (overridable by a user header), `User-Agent`, `Accept: */*`
//!   (a user header with an empty value removes them), then the user's headers;
//! - `scheme: HTTPS` uses rustls without certificate verification;
//! - a stall anywhere, including in the body after the headers, fails at the
//!   deadline (the kubelet discards a body stall; vmpulse counts it as a failure).

use std::io::{self, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;
#[cfg(feature = "https")]
use std::sync::OnceLock;
use std::time::Duration;

#[cfg(feature = "https")]
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
#[cfg(feature = "https")]
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
#[cfg(feature = "https")]
use rustls::{ClientConfig, ClientConnection, DigitallySignedStruct, SignatureScheme};

use super::config::HttpScheme;
use super::tcp::{error_text, Connect};
use super::CheckResult;

/// Bytes of response body read at most (the kubelet's 10 KiB).
pub const MAX_BODY: usize = 10 * 1024;
/// Bytes of status line and headers accepted at most.
pub const MAX_HEAD: usize = 16 * 1024;
/// Requests per attempt at most: the original plus 9 redirects.
pub const MAX_REQUESTS: u32 = 10;
/// The default `User-Agent`.
pub const USER_AGENT: &str = "kube-probe/1.34";
/// Response headers parsed at most.
const MAX_HEADERS: usize = 100;
/// Read chunk size.
const READ_CHUNK: usize = 4096;

/// What an `httpGet` probe asks for (shared by all its attempts).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpSpec {
    /// HTTP or HTTPS.
    pub scheme: HttpScheme,
    /// Hostname of the URL as written (an IP literal without brackets, or a name).
    pub host: String,
    /// Port of the URL.
    pub port: u16,
    /// Path and query.
    pub path: String,
    /// `httpHeaders`, in order.
    pub headers: Vec<(String, String)>,
}

/// The URL being requested.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Url {
    scheme: HttpScheme,
    host: String,
    port: u16,
    path: String,
}

impl Url {
    fn authority(&self) -> String {
        host_port(&self.host, self.port)
    }
}

/// `host:port` with IPv6 literals bracketed.
fn host_port(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

fn default_port(scheme: HttpScheme) -> u16 {
    match scheme {
        HttpScheme::Http => 80,
        HttpScheme::Https => 443,
    }
}

/// Normalise a probe path: leading `/`, no fragment, no raw spaces or controls.
fn normalise_path(path: &str) -> String {
    let path = path.split('#').next().unwrap_or("");
    let mut out = String::with_capacity(path.len() + 1);
    if !path.starts_with('/') {
        out.push('/');
    }
    for c in path.chars() {
        match c {
            ' ' => out.push_str("%20"),
            c if c.is_control() => {}
            c => out.push(c),
        }
    }
    out
}

/// Resolve a `Location` against the current URL. `None` for a scheme other than
/// http/https or an unparseable authority.
fn resolve_location(base: &Url, location: &str) -> Option<Url> {
    let location = location.trim();
    let lower = location.to_ascii_lowercase();
    let (scheme, rest) = if lower.starts_with("http://") {
        (HttpScheme::Http, &location[7..])
    } else if lower.starts_with("https://") {
        (HttpScheme::Https, &location[8..])
    } else if let Some(rest) = location.strip_prefix("//") {
        (base.scheme, rest)
    } else if location.contains("://") {
        return None;
    } else {
        // Relative reference: same scheme and authority.
        let path = if location.starts_with('/') {
            location.to_string()
        } else if location.starts_with('?') {
            let p = base.path.split('?').next().unwrap_or("/");
            format!("{p}{location}")
        } else {
            let p = base.path.split('?').next().unwrap_or("/");
            let dir = &p[..p.rfind('/').map_or(0, |i| i + 1)];
            format!("{dir}{location}")
        };
        return Some(Url {
            scheme: base.scheme,
            host: base.host.clone(),
            port: base.port,
            path: normalise_path(&path),
        });
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, path) = rest.split_at(end);
    let authority = authority.rsplit('@').next().unwrap_or(authority);
    let (host, port) = if let Some(stripped) = authority.strip_prefix('[') {
        let close = stripped.find(']')?;
        let host = &stripped[..close];
        let after = &stripped[close + 1..];
        let port = match after.strip_prefix(':') {
            Some(p) if !p.is_empty() => p.parse().ok()?,
            _ => default_port(scheme),
        };
        (host.to_string(), port)
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) if !p.is_empty() => (h.to_string(), p.parse().ok()?),
            Some((h, _)) => (h.to_string(), default_port(scheme)),
            None => (authority.to_string(), default_port(scheme)),
        }
    };
    if host.is_empty() {
        return None;
    }
    Some(Url {
        scheme,
        host,
        port,
        path: normalise_path(if path.is_empty() { "/" } else { path }),
    })
}

/// Whether two URL hostnames are the same (case-insensitive; IP literals compared
/// as addresses).
fn same_host(a: &str, b: &str) -> bool {
    match (a.parse::<IpAddr>(), b.parse::<IpAddr>()) {
        (Ok(x), Ok(y)) => x == y,
        _ => a.eq_ignore_ascii_case(b),
    }
}

fn clean(s: &str) -> String {
    s.chars().filter(|c| *c != '\r' && *c != '\n').collect()
}

/// Build the request bytes for `url`.
fn build_request(spec: &HttpSpec, url: &Url) -> Vec<u8> {
    let user = |name: &str| -> Option<&str> {
        spec.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    };
    let mut req = format!("GET {} HTTP/1.1\r\n", url.path);
    let host = user("Host").map(clean).unwrap_or_else(|| url.authority());
    req.push_str(&format!("Host: {host}\r\n"));
    for (name, default) in [("User-Agent", USER_AGENT), ("Accept", "*/*")] {
        if user(name).is_none() {
            req.push_str(&format!("{name}: {default}\r\n"));
        }
    }
    req.push_str("Connection: close\r\n");
    for (name, value) in &spec.headers {
        if name.eq_ignore_ascii_case("Host") || name.eq_ignore_ascii_case("Connection") {
            continue;
        }
        let empty_removes =
            name.eq_ignore_ascii_case("User-Agent") || name.eq_ignore_ascii_case("Accept");
        if empty_removes && value.is_empty() {
            continue;
        }
        req.push_str(&format!("{}: {}\r\n", clean(name), clean(value)));
    }
    req.push_str("\r\n");
    req.into_bytes()
}

/// A certificate verifier that accepts everything (the kubelet does not verify).
#[cfg(feature = "https")]
#[derive(Debug)]
struct AcceptAnyCertificate(Arc<rustls::crypto::CryptoProvider>);

#[cfg(feature = "https")]
impl ServerCertVerifier for AcceptAnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }

    fn verify_tls13_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// The shared TLS client configuration (built once).
#[cfg(feature = "https")]
fn tls_config() -> Result<Arc<ClientConfig>, String> {
    static CONFIG: OnceLock<Result<Arc<ClientConfig>, String>> = OnceLock::new();
    CONFIG
        .get_or_init(|| {
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let config = ClientConfig::builder_with_provider(provider.clone())
                .with_safe_default_protocol_versions()
                .map_err(|e| format!("TLS setup: {e}"))?
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AcceptAnyCertificate(provider)))
                .with_no_client_auth();
            Ok(Arc::new(config))
        })
        .clone()
}

/// A connected transport: plain TCP or TLS over it.
#[derive(Debug)]
enum Transport {
    Plain(TcpStream),
    #[cfg(feature = "https")]
    Tls(Box<ClientConnection>, TcpStream),
}

#[cfg(feature = "https")]
fn tls_error(e: rustls::Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("TLS: {e}"))
}

impl Transport {
    fn fd(&self) -> RawFd {
        match self {
            Transport::Plain(s) => s.as_raw_fd(),
            #[cfg(feature = "https")]
            Transport::Tls(_, s) => s.as_raw_fd(),
        }
    }

    /// Send pending TLS records as far as the socket takes them.
    #[cfg(feature = "https")]
    fn flush_tls(conn: &mut ClientConnection, sock: &mut TcpStream) -> io::Result<()> {
        while conn.wants_write() {
            match conn.write_tls(sock) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Write some plaintext; TLS buffers it all and sends what it can.
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Transport::Plain(s) => s.write(buf),
            #[cfg(feature = "https")]
            Transport::Tls(conn, sock) => {
                let n = conn.writer().write(buf)?;
                Self::flush_tls(conn, sock)?;
                Ok(n)
            }
        }
    }

    /// Whether there are bytes waiting for the socket to become writable.
    fn wants_write(&self) -> bool {
        match self {
            Transport::Plain(_) => false,
            #[cfg(feature = "https")]
            Transport::Tls(conn, _) => conn.wants_write(),
        }
    }

    /// Read plaintext: `Ok(0)` at end of stream, `WouldBlock` when nothing is ready.
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Transport::Plain(s) => s.read(buf),
            #[cfg(feature = "https")]
            Transport::Tls(conn, sock) => loop {
                match conn.reader().read(buf) {
                    Ok(n) => return Ok(n),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    // The peer closed without close_notify: end of stream for HTTP.
                    Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(0),
                    Err(e) => return Err(e),
                }
                let n = conn.read_tls(sock)?;
                conn.process_new_packets().map_err(tls_error)?;
                Self::flush_tls(conn, sock)?;
                if n == 0 {
                    return match conn.reader().read(buf) {
                        Ok(n) => Ok(n),
                        Err(e)
                            if e.kind() == io::ErrorKind::WouldBlock
                                || e.kind() == io::ErrorKind::UnexpectedEof =>
                        {
                            Ok(0)
                        }
                        Err(e) => Err(e),
                    };
                }
            },
        }
    }
}

/// The response so far.
#[derive(Debug)]
struct Response {
    status: u16,
    reason: String,
    location: Option<String>,
    content_length: Option<usize>,
    chunked: bool,
    body: Vec<u8>,
}

impl Response {
    /// Whether the body read so far is all we will read.
    fn body_complete(&self) -> bool {
        if self.body.len() >= MAX_BODY {
            return true;
        }
        if self.status == 204 || self.status == 304 {
            return true;
        }
        if self.chunked {
            // The last chunk (no trailers) ends the body.
            return self.body == b"0\r\n\r\n" || self.body.ends_with(b"\r\n0\r\n\r\n");
        }
        match self.content_length {
            Some(n) => self.body.len() >= n,
            None => false,
        }
    }
}

#[derive(Debug)]
enum Phase {
    Connecting(Connect),
    Exchange {
        transport: Transport,
        request: Vec<u8>,
        written: usize,
        input: Vec<u8>,
        response: Option<Response>,
    },
    Done,
}

/// Where an attempt is, for the timeout message.
fn phase_name(phase: &Phase) -> &'static str {
    match phase {
        Phase::Connecting(_) => "connecting",
        Phase::Exchange {
            written, request, ..
        } if *written < request.len() => "sending the request",
        Phase::Exchange { response: None, .. } => "waiting for the response",
        Phase::Exchange { .. } => "reading the body",
        Phase::Done => "done",
    }
}

/// One `httpGet` attempt against one address.
#[derive(Debug)]
pub struct HttpCheck {
    spec: Arc<HttpSpec>,
    ip: IpAddr,
    url: Url,
    requests: u32,
    phase: Phase,
    result: Option<CheckResult>,
}

impl HttpCheck {
    /// Start an attempt against `ip` (the TCP target) for the URL in `spec`.
    pub fn start(spec: Arc<HttpSpec>, ip: IpAddr) -> Self {
        let url = Url {
            scheme: spec.scheme,
            host: spec.host.clone(),
            port: spec.port,
            path: normalise_path(&spec.path),
        };
        let mut check = HttpCheck {
            spec,
            ip,
            url,
            requests: 0,
            phase: Phase::Done,
            result: None,
        };
        check.request();
        // Poll at once only if the connection did not simply start (refused or
        // established at once); otherwise wait for the socket.
        if !matches!(&check.phase, Phase::Connecting(c) if c.in_progress()) {
            check.on_ready();
        }
        check
    }

    /// Start the next request (the first or a redirect) to `self.url`.
    fn request(&mut self) {
        self.requests += 1;
        let addr = SocketAddr::new(self.ip, self.url.port);
        match Connect::start(addr) {
            Ok(c) => self.phase = Phase::Connecting(c),
            Err(m) => self.fail(m),
        }
    }

    fn fail(&mut self, message: String) {
        self.phase = Phase::Done;
        self.result = Some(CheckResult::failure(message));
    }

    fn succeed(&mut self, message: String) {
        self.phase = Phase::Done;
        self.result = Some(CheckResult::success(message));
    }

    /// Whether the attempt is reading the body (headers received).
    pub fn reading_body(&self) -> bool {
        matches!(
            self.phase,
            Phase::Exchange {
                response: Some(_),
                ..
            }
        )
    }

    /// Connections opened so far (a redirect opens a new one).
    pub fn connections(&self) -> u32 {
        self.requests
    }

    /// The fd to watch and whether to watch it for (read, write).
    pub fn interest(&self) -> Option<(RawFd, bool, bool)> {
        match &self.phase {
            Phase::Connecting(c) => Some((c.fd(), false, true)),
            Phase::Exchange {
                transport,
                request,
                written,
                ..
            } => Some((
                transport.fd(),
                true,
                *written < request.len() || transport.wants_write(),
            )),
            Phase::Done => None,
        }
    }

    /// Make progress; returns the result once known. Safe to call spuriously.
    pub fn on_ready(&mut self) -> Option<&CheckResult> {
        // A redirect starts a new connection, which may progress at once: loop.
        for _ in 0..=MAX_REQUESTS {
            if self.result.is_some() {
                break;
            }
            let before = self.requests;
            self.step();
            if self.requests == before {
                break;
            }
        }
        self.result.as_ref()
    }

    fn step(&mut self) {
        if let Phase::Connecting(c) = &mut self.phase {
            match c.poll() {
                Ok(false) => return,
                Ok(true) => {}
                Err(m) => return self.fail(m),
            }
            let Phase::Connecting(c) = std::mem::replace(&mut self.phase, Phase::Done) else {
                unreachable!("checked above")
            };
            let stream = c.into_stream();
            let transport = match self.url.scheme {
                HttpScheme::Http => Transport::Plain(stream),
                #[cfg(feature = "https")]
                HttpScheme::Https => match self.tls_client() {
                    Ok(conn) => Transport::Tls(Box::new(conn), stream),
                    Err(m) => return self.fail(m),
                },
                // `ProbeSet::new` refuses HTTPS probes without the feature.
                #[cfg(not(feature = "https"))]
                HttpScheme::Https => return self.fail("HTTPS support not built in".into()),
            };
            self.phase = Phase::Exchange {
                transport,
                request: build_request(&self.spec, &self.url),
                written: 0,
                input: Vec::new(),
                response: None,
            };
        }
        if matches!(self.phase, Phase::Exchange { .. }) {
            if let Err(m) = self.exchange() {
                self.fail(m);
            }
        }
    }

    #[cfg(feature = "https")]
    fn tls_client(&self) -> Result<ClientConnection, String> {
        let config = tls_config()?;
        let name = match self.url.host.parse::<IpAddr>() {
            Ok(ip) => ServerName::IpAddress(ip.into()),
            Err(_) => ServerName::try_from(self.url.host.clone())
                .unwrap_or(ServerName::IpAddress(self.ip.into())),
        };
        ClientConnection::new(config, name).map_err(|e| format!("TLS: {e}"))
    }

    /// Write the request, read and parse the response. `Err` is a failure.
    fn exchange(&mut self) -> Result<(), String> {
        let Phase::Exchange {
            transport,
            request,
            written,
            input,
            response,
        } = &mut self.phase
        else {
            return Ok(());
        };
        while *written < request.len() {
            match transport.write(&request[*written..]) {
                Ok(0) => return Err("connection closed while sending the request".into()),
                Ok(n) => *written += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(format!("sending the request: {}", error_text(&e))),
            }
        }
        let mut chunk = [0u8; READ_CHUNK];
        loop {
            let want = match response {
                Some(r) => (MAX_BODY - r.body.len()).min(READ_CHUNK),
                None => READ_CHUNK,
            };
            let eof = match transport.read(&mut chunk[..want]) {
                Ok(0) => true,
                Ok(n) => {
                    match response {
                        Some(r) => r.body.extend_from_slice(&chunk[..n]),
                        None => input.extend_from_slice(&chunk[..n]),
                    }
                    false
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    let phase = if response.is_some() {
                        "reading the body"
                    } else {
                        "reading the response"
                    };
                    return Err(format!("{phase}: {}", error_text(&e)));
                }
            };
            if response.is_none() {
                match parse_head(input)? {
                    Some(r) => *response = Some(r),
                    None if eof && input.is_empty() => {
                        return Err("connection closed without a response".into())
                    }
                    None if eof => {
                        return Err("connection closed before the end of the headers".into())
                    }
                    None => continue,
                }
            }
            let r = response.as_ref().expect("parsed above");
            if eof || r.body_complete() {
                break;
            }
        }
        let Phase::Exchange {
            response: Some(r), ..
        } = std::mem::replace(&mut self.phase, Phase::Done)
        else {
            unreachable!("the loop ends only with a response")
        };
        self.finish(r)
    }

    /// Decide on a complete response: result or redirect.
    fn finish(&mut self, r: Response) -> Result<(), String> {
        let status = r.status;
        // "302 Found", or "302" when the reason phrase is empty or not UTF-8.
        let line = format!("{status} {}", r.reason).trim_end().to_string();
        let redirect = matches!(status, 301 | 302 | 303 | 307 | 308);
        if redirect {
            if let Some(location) = &r.location {
                match resolve_location(&self.url, location) {
                    Some(next) if same_host(&next.host, &self.spec.host) => {
                        if self.requests >= MAX_REQUESTS {
                            return Err(format!(
                                "stopped after {MAX_REQUESTS} redirects (last Location: {location})"
                            ));
                        }
                        self.url = next;
                        self.request();
                        return Ok(());
                    }
                    _ => {
                        self.succeed(format!(
                            "warning: HTTP {line}: redirect to another host not followed (Location: {location})"
                        ));
                        return Ok(());
                    }
                }
            }
        }
        match status {
            200..=299 => self.succeed(format!("HTTP {line}")),
            300..=399 => self.succeed(format!("warning: HTTP {line}: probe terminated redirects")),
            _ => return Err(format!("HTTP probe failed with statuscode: {status}")),
        }
        Ok(())
    }

    /// The deadline passed: the attempt fails (unless it already finished).
    pub fn on_timeout(&mut self, timeout: Duration) -> CheckResult {
        if self.result.is_none() {
            let phase = phase_name(&self.phase);
            self.fail(format!("timed out after {timeout:?} ({phase})"));
        }
        self.phase = Phase::Done;
        self.result.clone().expect("set above")
    }
}

/// Parse the status line and headers from `input`, skipping interim 1xx
/// responses. `Ok(None)` when more bytes are needed; the body bytes already read
/// move into the response.
fn parse_head(input: &mut Vec<u8>) -> Result<Option<Response>, String> {
    loop {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut resp = httparse::Response::new(&mut headers);
        let len = match resp.parse(input) {
            Ok(httparse::Status::Complete(len)) => len,
            Ok(httparse::Status::Partial) => {
                if input.len() > MAX_HEAD {
                    return Err(format!("response headers longer than {MAX_HEAD} bytes"));
                }
                return Ok(None);
            }
            Err(e) => return Err(format!("malformed HTTP response: {e}")),
        };
        let status = resp.code.unwrap_or(0);
        if (100..200).contains(&status) && status != 101 {
            // Interim response: wait for the final one.
            input.drain(..len);
            continue;
        }
        let mut location = None;
        let mut content_length = None;
        let mut chunked = false;
        for h in resp.headers.iter() {
            let value = String::from_utf8_lossy(h.value).trim().to_string();
            if h.name.eq_ignore_ascii_case("Location") {
                location = Some(value);
            } else if h.name.eq_ignore_ascii_case("Content-Length") {
                content_length = value.parse().ok();
            } else if h.name.eq_ignore_ascii_case("Transfer-Encoding") {
                chunked = value.to_ascii_lowercase().contains("chunked");
            }
        }
        let reason = resp.reason.unwrap_or("").to_string();
        let mut body = input.split_off(len);
        body.truncate(MAX_BODY);
        input.clear();
        return Ok(Some(Response {
            status,
            reason,
            location,
            content_length,
            chunked,
            body,
        }));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(host: &str, port: u16, path: &str) -> Url {
        Url {
            scheme: HttpScheme::Http,
            host: host.into(),
            port,
            path: path.into(),
        }
    }

    fn spec(host: &str, headers: &[(&str, &str)]) -> HttpSpec {
        HttpSpec {
            scheme: HttpScheme::Http,
            host: host.into(),
            port: 8080,
            path: "/healthz?x=1".into(),
            headers: headers
                .iter()
                .map(|(n, v)| (n.to_string(), v.to_string()))
                .collect(),
        }
    }

    #[test]
    fn request_shape_defaults() {
        let s = spec("127.0.0.1", &[]);
        let req =
            String::from_utf8(build_request(&s, &url("127.0.0.1", 8080, "/healthz?x=1"))).unwrap();
        assert_eq!(
            req,
            "GET /healthz?x=1 HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nUser-Agent: kube-probe/1.34\r\n\
             Accept: */*\r\nConnection: close\r\n\r\n"
        );
    }

    #[test]
    fn request_shape_ipv6_and_overrides() {
        let s = spec(
            "::1",
            &[
                ("User-Agent", ""),
                ("Accept", ""),
                ("X-A", "1"),
                ("X-A", "2"),
            ],
        );
        let req = String::from_utf8(build_request(&s, &url("::1", 8080, "/"))).unwrap();
        assert_eq!(
            req,
            "GET / HTTP/1.1\r\nHost: [::1]:8080\r\nConnection: close\r\nX-A: 1\r\nX-A: 2\r\n\r\n"
        );
        let s = spec("::1", &[("host", "app.example"), ("User-Agent", "me")]);
        let req = String::from_utf8(build_request(&s, &url("::1", 8080, "/"))).unwrap();
        assert_eq!(
            req,
            "GET / HTTP/1.1\r\nHost: app.example\r\nAccept: */*\r\nConnection: close\r\n\
             User-Agent: me\r\n\r\n"
        );
    }

    #[test]
    fn header_injection_is_stripped() {
        let s = spec("h", &[("X-A", "1\r\nEvil: yes")]);
        let req = String::from_utf8(build_request(&s, &url("h", 1, "/"))).unwrap();
        assert!(req.contains("X-A: 1Evil: yes\r\n"));
    }

    #[test]
    fn locations_resolve() {
        let base = url("127.0.0.1", 8080, "/a/b?q=1");
        assert_eq!(
            resolve_location(&base, "/ok"),
            Some(url("127.0.0.1", 8080, "/ok"))
        );
        assert_eq!(
            resolve_location(&base, "c"),
            Some(url("127.0.0.1", 8080, "/a/c"))
        );
        assert_eq!(
            resolve_location(&base, "?z"),
            Some(url("127.0.0.1", 8080, "/a/b?z"))
        );
        assert_eq!(
            resolve_location(&base, "http://other.example/x"),
            Some(url("other.example", 80, "/x"))
        );
        assert_eq!(
            resolve_location(&base, "HTTP://127.0.0.1:9000"),
            Some(url("127.0.0.1", 9000, "/"))
        );
        assert_eq!(
            resolve_location(&base, "http://[::1]:81/v6"),
            Some(url("::1", 81, "/v6"))
        );
        let https = resolve_location(&base, "https://u@127.0.0.1/s").unwrap();
        assert_eq!(https.scheme, HttpScheme::Https);
        assert_eq!(https.port, 443);
        assert_eq!(https.host, "127.0.0.1");
        assert_eq!(resolve_location(&base, "ftp://x/"), None);
        assert_eq!(resolve_location(&base, "http://:80/"), None);
        assert_eq!(resolve_location(&base, "http://[::1/"), None);
    }

    #[test]
    fn hosts_compare() {
        assert!(same_host("::1", "0:0::1"));
        assert!(same_host("LocalHost", "localhost"));
        assert!(!same_host("127.0.0.1", "127.0.0.2"));
        assert!(!same_host("app.example", "127.0.0.1"));
    }

    #[test]
    fn parse_head_skips_interim_and_keeps_body() {
        let mut input =
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhel"
                .to_vec();
        let r = parse_head(&mut input).unwrap().unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.reason, "OK");
        assert_eq!(r.content_length, Some(5));
        assert_eq!(r.body, b"hel");
        assert!(!r.body_complete());
        let mut partial = b"HTTP/1.1 200 OK\r\nContent-".to_vec();
        assert!(parse_head(&mut partial).unwrap().is_none());
        let mut garbage = b"SSH-2.0-OpenSSH_9.2\r\n\r\n".to_vec();
        assert!(parse_head(&mut garbage)
            .unwrap_err()
            .starts_with("malformed HTTP response"));
        let mut long = b"HTTP/1.1 200 OK\r\nX: ".to_vec();
        long.resize(MAX_HEAD + 1, b'a');
        assert!(parse_head(&mut long).unwrap_err().contains("longer than"));
    }

    #[test]
    fn chunked_end_detected() {
        let mut input =
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n".to_vec();
        let r = parse_head(&mut input).unwrap().unwrap();
        assert!(r.chunked);
        assert!(r.body_complete());
    }
}
