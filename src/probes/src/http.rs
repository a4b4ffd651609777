//! The `httpGet` probe: one HTTP/1.1 GET (plus same-host redirects) as a
//! non-blocking state machine, following the kubelet's rules (docs/PROBES.md §3.1).
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
//! - errors before the response headers (refused, reset, timed out, malformed or
//!   over-long headers) are failures; errors after them (a body shorter than its
//!   `Content-Length` when the connection closes, a chunked body cut short, a
//!   stall past the deadline) are errors, which the kubelet throws away: they
//!   count toward neither threshold;
//! - the head may take up to [`MAX_HEAD`] bytes (1 MiB, as Go), interim (1xx)
//!   responses included; each wake-up reads at most [`READ_BUDGET`] bytes, so a
//!   peer that never stops sending cannot hold the caller's loop.

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
/// Bytes of status lines and headers accepted at most, interim (1xx) responses
/// included: 1 MiB, Go's `http.DefaultMaxHeaderBytes`.
pub const MAX_HEAD: usize = 1 << 20;
/// Bytes read from the socket at most per [`HttpCheck::on_ready`] call: a peer
/// that never stops sending cannot hold the caller's loop. Level-triggered
/// readiness brings the check back for the rest.
pub const READ_BUDGET: usize = 8 * 1024;
/// Requests per attempt at most: the original plus 9 redirects.
pub const MAX_REQUESTS: u32 = 10;
/// The default `User-Agent`.
pub const USER_AGENT: &str = "kube-probe/1.34";
/// Header slots tried first (more are allocated when a head has more lines).
const MAX_HEADERS: usize = 100;
/// Read chunk size.
const READ_CHUNK: usize = 4096;
/// `read_tls` calls at most per plaintext read (each takes at most one buffer of
/// records), so records without plaintext cannot hold the loop either.
#[cfg(feature = "https")]
const TLS_READS_PER_CALL: usize = 4;

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

/// An `httpGet` probe's first request, built once from its [`HttpSpec`] and shared
/// by every attempt ([`HttpCheck::start_prepared`]): an attempt then formats nothing
/// unless it follows a redirect.
#[derive(Debug)]
pub struct PreparedRequest {
    spec: Arc<HttpSpec>,
    url: Url,
    bytes: Arc<[u8]>,
}

impl PreparedRequest {
    /// Build the request for `spec`'s URL.
    pub fn new(spec: Arc<HttpSpec>) -> Self {
        let url = Url {
            scheme: spec.scheme,
            host: spec.host.clone(),
            port: spec.port,
            path: normalise_path(&spec.path),
        };
        let bytes = build_request(&spec, &url).into();
        PreparedRequest { spec, url, bytes }
    }

    /// What the request was built from.
    pub fn spec(&self) -> &Arc<HttpSpec> {
        &self.spec
    }

    /// The request's bytes (request line, headers, the empty line).
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }
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

    /// Read plaintext that TLS has already decrypted, without reading the
    /// socket: `WouldBlock` when there is none (always, for plain TCP).
    #[cfg_attr(not(feature = "https"), allow(unused_variables))]
    fn read_buffered(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Transport::Plain(_) => Err(io::ErrorKind::WouldBlock.into()),
            #[cfg(feature = "https")]
            Transport::Tls(conn, _) => match conn.reader().read(buf) {
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(0),
                r => r,
            },
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
            Transport::Tls(conn, sock) => {
                for reads in 0..=TLS_READS_PER_CALL {
                    match conn.reader().read(buf) {
                        Ok(n) => return Ok(n),
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                        // The peer closed without close_notify: end of stream for HTTP.
                        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(0),
                        Err(e) => return Err(e),
                    }
                    if reads == TLS_READS_PER_CALL {
                        break;
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
                }
                // Records without plaintext (handshake, tickets, alerts) that
                // never end: give the loop back; the socket stays readable.
                Err(io::ErrorKind::WouldBlock.into())
            }
        }
    }
}

/// A response as far as it has been read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Response {
    /// The status code of the final (non-1xx) response.
    pub status: u16,
    /// The reason phrase (empty when absent or not UTF-8).
    pub reason: String,
    /// The `Location` header, if any.
    pub location: Option<String>,
    /// The `Content-Length` header, if any and valid.
    pub content_length: Option<usize>,
    /// Whether the body is chunked (`Transfer-Encoding: chunked`).
    pub chunked: bool,
    /// The body bytes read so far (at most [`MAX_BODY`]; raw, chunk framing
    /// included; nothing past the end of the body).
    pub body: Vec<u8>,
    /// Where a chunked body's framing is.
    framing: Chunked,
}

/// Where the framing of a chunked body is (RFC 9112 section 7.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Chunked {
    /// In a chunk-size line: the size so far, its digit count, and whether an
    /// extension (or whitespace) started.
    Size { value: u64, digits: u32, ext: bool },
    /// In a chunk's data: bytes left.
    Data(u64),
    /// After a chunk's data: its CRLF.
    DataEnd,
    /// After the last chunk: trailer lines until an empty one; bytes in the line.
    Trailer(usize),
    /// The body ended.
    Done,
}

const CHUNK_START: Chunked = Chunked::Size {
    value: 0,
    digits: 0,
    ext: false,
};

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
            return self.framing == Chunked::Done;
        }
        match self.content_length {
            Some(n) => self.body.len() >= n,
            None => false,
        }
    }

    /// Take body bytes up to the end of the body (or [`MAX_BODY`]); bytes past
    /// it are dropped. A chunked body's framing is checked as it arrives: bad
    /// framing is an error after the headers.
    fn take_body(&mut self, bytes: &[u8]) -> Result<(), CheckResult> {
        if self.body_complete() {
            return Ok(());
        }
        let mut take = bytes.len().min(MAX_BODY - self.body.len());
        if self.chunked {
            take = self.frame(&bytes[..take])?;
        } else if let Some(n) = self.content_length {
            take = take.min(n - self.body.len());
        }
        self.body.extend_from_slice(&bytes[..take]);
        Ok(())
    }

    /// Advance the chunked framing over `bytes`; returns how many belong to the body.
    fn frame(&mut self, bytes: &[u8]) -> Result<usize, CheckResult> {
        let bad = |why: &str| CheckResult::error(format!("malformed chunked body: {why}"));
        let mut i = 0;
        while i < bytes.len() {
            if let Chunked::Data(left) = self.framing {
                let n = left.min((bytes.len() - i) as u64);
                i += n as usize;
                self.framing = if n == left {
                    Chunked::DataEnd
                } else {
                    Chunked::Data(left - n)
                };
                continue;
            }
            let b = bytes[i];
            self.framing = match self.framing {
                Chunked::Done => return Ok(i),
                Chunked::Data(_) => unreachable!("handled above"),
                Chunked::Size { value, digits, ext } => match b {
                    b'\n' if digits == 0 => return Err(bad("no chunk size")),
                    b'\n' if value == 0 => Chunked::Trailer(0),
                    b'\n' => Chunked::Data(value),
                    b'\r' => self.framing,
                    b';' | b' ' | b'\t' => Chunked::Size {
                        value,
                        digits,
                        ext: true,
                    },
                    _ if ext => self.framing,
                    _ => {
                        let Some(d) = (b as char).to_digit(16) else {
                            return Err(bad("bad chunk size"));
                        };
                        if digits >= 15 {
                            return Err(bad("chunk size too large"));
                        }
                        Chunked::Size {
                            value: value * 16 + u64::from(d),
                            digits: digits + 1,
                            ext,
                        }
                    }
                },
                Chunked::DataEnd => match b {
                    b'\r' => Chunked::DataEnd,
                    b'\n' => CHUNK_START,
                    _ => return Err(bad("no line end after a chunk")),
                },
                Chunked::Trailer(len) => match b {
                    b'\r' => Chunked::Trailer(len),
                    b'\n' if len == 0 => Chunked::Done,
                    b'\n' => Chunked::Trailer(0),
                    _ => Chunked::Trailer(len + 1),
                },
            };
            i += 1;
        }
        Ok(i)
    }

    /// Whether this is a redirect status with a `Location`.
    fn is_redirect(&self) -> bool {
        matches!(self.status, 301 | 302 | 303 | 307 | 308) && self.location.is_some()
    }
}

/// Reads one HTTP/1.1 response from bytes that arrive in chunks of any size,
/// without any socket: [`HttpCheck`] feeds it what the connection delivers, and
/// a fuzz target feeds it arbitrary bytes.
///
/// - status line and headers, interim (1xx) responses included, are bounded by
///   [`MAX_HEAD`] bytes in all; interim responses are skipped (an endless
///   stream of them fails once it passes the bound, as Go's client bounds the
///   1xx headers it accepts);
/// - the head is parsed only once its end (an empty line) has arrived, so the
///   work per byte stays constant however the bytes are split;
/// - at most [`MAX_BODY`] bytes of body are kept ([`ResponseReader::room`] never
///   asks for more); bytes past what is asked for are dropped.
///
/// Errors before the headers are failures; errors after them (a body shorter
/// than its `Content-Length`, a chunked body cut short) are [`CheckResult::error`]s.
///
/// ```
/// use vmpulse_probes::http::ResponseReader;
///
/// let mut r = ResponseReader::new();
/// assert!(!r.feed(b"HTTP/1.1 102 Processing\r\n\r\nHTTP/1.1 200 OK\r\nContent-Le").unwrap());
/// assert!(r.feed(b"ngth: 2\r\n\r\nok").unwrap());
/// assert_eq!(r.response().unwrap().status, 200);
///
/// let mut short = ResponseReader::new();
/// assert!(!short.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nok").unwrap());
/// let error = short.eof().unwrap_err();
/// assert_eq!(error.outcome, vmpulse_probes::tracker::Outcome::Error);
/// ```
#[derive(Clone, Debug, Default)]
pub struct ResponseReader {
    /// Head bytes not parsed yet.
    input: Vec<u8>,
    /// Bytes at the start of `input` known to hold no end of head.
    scanned: usize,
    /// Head bytes consumed so far (interim responses).
    head_bytes: usize,
    /// Interim responses skipped.
    interim: u64,
    response: Option<Response>,
}

/// Where the head ends in `input` (the index past the empty line), searching from `from`.
fn head_end(input: &[u8], from: usize) -> Option<usize> {
    let from = from.min(input.len());
    input[from..]
        .iter()
        .enumerate()
        .filter(|(_, b)| **b == b'\n')
        .find_map(|(i, _)| {
            let i = from + i;
            let rest = &input[i + 1..];
            if rest.starts_with(b"\n") {
                Some(i + 2)
            } else if rest.starts_with(b"\r\n") {
                Some(i + 3)
            } else {
                None
            }
        })
}

impl ResponseReader {
    /// A reader waiting for the first byte.
    pub fn new() -> Self {
        Self::default()
    }

    /// How many bytes the reader takes next at most: 0 once the response is complete.
    pub fn room(&self) -> usize {
        match &self.response {
            None => READ_CHUNK,
            Some(r) if r.body_complete() => 0,
            Some(r) => (MAX_BODY - r.body.len()).min(READ_CHUNK),
        }
    }

    /// Whether the final response's headers have arrived.
    pub fn headers_done(&self) -> bool {
        self.response.is_some()
    }

    /// Whether the response is complete (no more bytes are wanted).
    pub fn complete(&self) -> bool {
        self.room() == 0
    }

    /// The response, once its headers have arrived.
    pub fn response(&self) -> Option<&Response> {
        self.response.as_ref()
    }

    /// Interim (1xx) responses skipped so far.
    pub fn interim(&self) -> u64 {
        self.interim
    }

    /// Bytes held: unparsed head bytes plus the body kept.
    pub fn buffered(&self) -> usize {
        self.input.len() + self.response.as_ref().map_or(0, |r| r.body.len())
    }

    /// Take `bytes` (at most [`ResponseReader::room`] of them are kept once the
    /// headers are in); returns whether the response is complete.
    pub fn feed(&mut self, bytes: &[u8]) -> Result<bool, CheckResult> {
        if let Some(r) = &mut self.response {
            r.take_body(bytes)?;
            return Ok(self.complete());
        }
        self.input.extend_from_slice(bytes);
        self.parse()?;
        Ok(self.complete())
    }

    /// Parse whatever complete heads are buffered: skip interim responses, keep
    /// the final one.
    fn parse(&mut self) -> Result<(), CheckResult> {
        let mut pos = 0;
        let result = loop {
            // Up to two bytes before the scanned part may start the end of head.
            let from = self.scanned.saturating_sub(2).max(pos);
            let Some(end) = head_end(&self.input, from) else {
                self.scanned = self.input.len();
                break if self.head_bytes + self.input.len() - pos > MAX_HEAD {
                    Err(self.too_long())
                } else {
                    Ok(())
                };
            };
            if self.head_bytes + end - pos > MAX_HEAD {
                break Err(self.too_long());
            }
            match parse_one(&self.input[pos..end]) {
                Ok(Head::Interim(len)) => {
                    self.interim += 1;
                    self.head_bytes += len;
                    pos += len;
                }
                Ok(Head::Final(mut r)) => {
                    let taken = r.take_body(&self.input[end..]);
                    self.response = Some(r);
                    self.input = Vec::new();
                    self.scanned = 0;
                    return taken;
                }
                Err(e) => break Err(e),
            }
        };
        self.input.drain(..pos);
        self.scanned = self.scanned.saturating_sub(pos);
        result
    }

    fn too_long(&self) -> CheckResult {
        let interim = match self.interim {
            0 => String::new(),
            n => format!(" ({n} interim responses)"),
        };
        CheckResult::failure(format!(
            "response headers{interim} longer than {MAX_HEAD} bytes"
        ))
    }

    /// The peer closed the connection: `Ok` if the response is complete (a body
    /// without length ends here), else why not.
    pub fn eof(&mut self) -> Result<(), CheckResult> {
        let Some(r) = &self.response else {
            // Interim responses alone are no response.
            return Err(CheckResult::failure(if self.input.is_empty() {
                "connection closed without a response".into()
            } else {
                "connection closed before the end of the headers".into()
            }));
        };
        if r.body_complete() {
            return Ok(());
        }
        if r.chunked {
            return Err(CheckResult::error(
                "connection closed before the end of the chunked body".into(),
            ));
        }
        match r.content_length {
            Some(n) => Err(CheckResult::error(format!(
                "connection closed after {} of {n} body bytes",
                r.body.len()
            ))),
            None => {
                // Read until the end: that is the whole body.
                if let Some(r) = &mut self.response {
                    r.content_length = Some(r.body.len());
                }
                Ok(())
            }
        }
    }

    /// Take the response (complete or not).
    pub fn take_response(&mut self) -> Option<Response> {
        self.response.take()
    }
}

/// One parsed head.
enum Head {
    /// An interim response of this many bytes.
    Interim(usize),
    /// The final response (its body still empty).
    Final(Response),
}

/// Parse one complete head (status line, headers and the empty line).
fn parse_one(head: &[u8]) -> Result<Head, CheckResult> {
    let mut stack = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut heap;
    let mut resp = httparse::Response::new(&mut stack);
    let mut parsed = resp.parse(head);
    if parsed == Err(httparse::Error::TooManyHeaders) {
        // No limit on the count (Go has none): one slot per line is enough.
        let lines = head.iter().filter(|b| **b == b'\n').count();
        heap = vec![httparse::EMPTY_HEADER; lines + 1];
        resp = httparse::Response::new(&mut heap);
        parsed = resp.parse(head);
    }
    let len = match parsed {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => {
            return Err(CheckResult::failure(
                "malformed HTTP response: incomplete head".into(),
            ))
        }
        Err(e) => {
            return Err(CheckResult::failure(format!(
                "malformed HTTP response: {e}"
            )))
        }
    };
    let status = resp.code.unwrap_or(0);
    if (100..200).contains(&status) && status != 101 {
        return Ok(Head::Interim(len));
    }
    let mut location = None;
    let mut content_length = None;
    let mut chunked = false;
    for h in resp.headers.iter() {
        if h.name.eq_ignore_ascii_case("Location") {
            location = Some(String::from_utf8_lossy(h.value).trim().to_string());
        } else if h.name.eq_ignore_ascii_case("Content-Length") {
            content_length = std::str::from_utf8(h.value)
                .ok()
                .and_then(|v| v.trim().parse().ok());
        } else if h.name.eq_ignore_ascii_case("Transfer-Encoding") {
            chunked = String::from_utf8_lossy(h.value)
                .to_ascii_lowercase()
                .contains("chunked");
        }
    }
    Ok(Head::Final(Response {
        status,
        reason: resp.reason.unwrap_or("").to_string(),
        location,
        content_length,
        chunked,
        body: Vec::new(),
        framing: CHUNK_START,
    }))
}

#[derive(Debug)]
enum Phase {
    Connecting(Connect),
    Exchange {
        transport: Transport,
        request: Arc<[u8]>,
        written: usize,
        reader: ResponseReader,
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
        Phase::Exchange { reader, .. } if !reader.headers_done() => "waiting for the response",
        Phase::Exchange { .. } => "reading the body",
        Phase::Done => "done",
    }
}

/// One `httpGet` attempt against one address.
#[derive(Debug)]
pub struct HttpCheck {
    first: Arc<PreparedRequest>,
    ip: IpAddr,
    /// Where a redirect led (`None`: the first request's URL).
    redirect: Option<Url>,
    requests: u32,
    phase: Phase,
    result: Option<CheckResult>,
    /// Bytes the current [`HttpCheck::on_ready`] call may still read from the socket.
    budget: usize,
}

impl HttpCheck {
    /// Start an attempt against `ip` (the TCP target) for the URL in `spec`.
    pub fn start(spec: Arc<HttpSpec>, ip: IpAddr) -> Self {
        Self::start_prepared(Arc::new(PreparedRequest::new(spec)), ip)
    }

    /// [`HttpCheck::start`] with the request built beforehand, for a probe that
    /// makes many attempts.
    pub fn start_prepared(first: Arc<PreparedRequest>, ip: IpAddr) -> Self {
        let mut check = HttpCheck {
            first,
            ip,
            redirect: None,
            requests: 0,
            phase: Phase::Done,
            result: None,
            budget: READ_BUDGET,
        };
        check.request();
        // Poll at once only if the connection did not simply start (refused or
        // established at once); otherwise wait for the socket.
        if !matches!(&check.phase, Phase::Connecting(c) if c.in_progress()) {
            check.on_ready();
        }
        check
    }

    /// The URL of the current request.
    fn url(&self) -> &Url {
        current_url(&self.first, &self.redirect)
    }

    /// Start the next request (the first or a redirect) to [`HttpCheck::url`].
    fn request(&mut self) {
        self.requests += 1;
        let addr = SocketAddr::new(self.ip, self.url().port);
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
        matches!(&self.phase, Phase::Exchange { reader, .. } if reader.headers_done())
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
        // One budget for the whole call, redirects included.
        self.budget = READ_BUDGET;
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
            let transport = match self.url().scheme {
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
                request: match &self.redirect {
                    None => self.first.bytes.clone(),
                    Some(url) => build_request(&self.first.spec, url).into(),
                },
                written: 0,
                reader: ResponseReader::new(),
            };
        }
        if matches!(self.phase, Phase::Exchange { .. }) {
            if let Err(result) = self.exchange() {
                self.phase = Phase::Done;
                self.result = Some(result);
            }
        }
    }

    #[cfg(feature = "https")]
    fn tls_client(&self) -> Result<ClientConnection, String> {
        let config = tls_config()?;
        let host = &self.url().host;
        let name = match host.parse::<IpAddr>() {
            Ok(ip) => ServerName::IpAddress(ip.into()),
            Err(_) => {
                ServerName::try_from(host.clone()).unwrap_or(ServerName::IpAddress(self.ip.into()))
            }
        };
        ClientConnection::new(config, name).map_err(|e| format!("TLS: {e}"))
    }

    /// Write the request, read and parse the response, with at most
    /// [`READ_BUDGET`] bytes read from the socket per call. `Err` ends the attempt.
    fn exchange(&mut self) -> Result<(), CheckResult> {
        let HttpCheck {
            phase,
            first,
            redirect,
            budget,
            ..
        } = self;
        let url = current_url(first, redirect);
        let spec = &first.spec;
        let Phase::Exchange {
            transport,
            request,
            written,
            reader,
        } = phase
        else {
            return Ok(());
        };
        let unsent = *written < request.len();
        while *written < request.len() {
            match transport.write(&request[*written..]) {
                Ok(0) => {
                    return Err(CheckResult::failure(
                        "connection closed while sending the request".into(),
                    ))
                }
                Ok(n) => *written += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => {
                    return Err(CheckResult::failure(format!(
                        "sending the request: {}",
                        error_text(&e)
                    )))
                }
            }
        }
        if unsent && matches!(transport, Transport::Plain(_)) {
            // The request went out just now: no answer can be there yet, and
            // reading would only cost an EAGAIN. The socket is watched for reading
            // from here on, which brings the check back when the answer comes.
            return Ok(());
        }
        let mut chunk = [0u8; READ_CHUNK];
        loop {
            let room = reader.room();
            if room == 0 || reader.response().is_some_and(|r| follows(url, spec, r)) {
                break;
            }
            // Past the budget, only what TLS already decrypted is taken (a bounded
            // amount); the socket stays readable and brings the check back.
            let read = if *budget > 0 {
                transport.read(&mut chunk[..room])
            } else {
                transport.read_buffered(&mut chunk[..room])
            };
            let complete = match read {
                Ok(0) => {
                    reader.eof()?;
                    true
                }
                Ok(n) => {
                    *budget = budget.saturating_sub(n);
                    reader.feed(&chunk[..n])?
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    // After the headers, an I/O error is the kubelet's probe error.
                    return Err(if reader.headers_done() {
                        CheckResult::error(format!("reading the body: {}", error_text(&e)))
                    } else {
                        CheckResult::failure(format!("reading the response: {}", error_text(&e)))
                    });
                }
            };
            if complete {
                break;
            }
        }
        let Phase::Exchange { mut reader, .. } = std::mem::replace(&mut self.phase, Phase::Done)
        else {
            unreachable!("matched above")
        };
        let r = reader
            .take_response()
            .expect("the loop ends only with a response");
        self.finish(r)
    }

    /// Decide on a response (complete, or a redirect's headers): result or redirect.
    fn finish(&mut self, r: Response) -> Result<(), CheckResult> {
        let status = r.status;
        // "302 Found", or "302" when the reason phrase is empty or not UTF-8.
        let mut line = format!("{status} {}", r.reason);
        line.truncate(line.trim_end().len());
        if r.is_redirect() {
            let location = r.location.as_deref().unwrap_or_default();
            match resolve_location(self.url(), location) {
                Some(next) if same_host(&next.host, &self.first.spec.host) => {
                    if self.requests >= MAX_REQUESTS {
                        return Err(CheckResult::failure(format!(
                            "stopped after {MAX_REQUESTS} redirects (last Location: {location})"
                        )));
                    }
                    self.redirect = Some(next);
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
        match status {
            200..=299 => self.succeed(format!("HTTP {line}")),
            300..=399 => self.succeed(format!("warning: HTTP {line}: probe terminated redirects")),
            _ => {
                return Err(CheckResult::failure(format!(
                    "HTTP probe failed with statuscode: {status}"
                )))
            }
        }
        Ok(())
    }

    /// The result, once [`HttpCheck::on_ready`] has returned it (no copy of it).
    pub fn into_result(self) -> Option<CheckResult> {
        self.result
    }

    /// The deadline passed: the attempt fails (unless it already finished). A
    /// stall after the response headers is an error, which the thresholds ignore.
    pub fn on_timeout(&mut self, timeout: Duration) -> CheckResult {
        if self.result.is_none() {
            let phase = phase_name(&self.phase);
            let message = format!("timed out after {timeout:?} ({phase})");
            self.result = Some(if self.reading_body() {
                CheckResult::error(message)
            } else {
                CheckResult::failure(message)
            });
        }
        self.phase = Phase::Done;
        self.result.clone().expect("set above")
    }
}

/// Where a redirect led, else the first request's URL ([`HttpCheck::url`], for a
/// caller that holds the check's fields apart).
fn current_url<'a>(first: &'a PreparedRequest, redirect: &'a Option<Url>) -> &'a Url {
    redirect.as_ref().unwrap_or(&first.url)
}

/// Whether a response is a redirect that will be followed: then its body is
/// not needed (Go's client follows as soon as the headers arrive).
fn follows(url: &Url, spec: &HttpSpec, r: &Response) -> bool {
    r.is_redirect()
        && r.location
            .as_deref()
            .and_then(|l| resolve_location(url, l))
            .is_some_and(|next| same_host(&next.host, &spec.host))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tracker::Outcome;

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
    fn reader_skips_interim_and_keeps_body() {
        let mut r = ResponseReader::new();
        let done = r
            .feed(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhel")
            .unwrap();
        assert!(!done);
        let resp = r.response().unwrap();
        assert_eq!(resp.status, 200);
        assert_eq!(resp.reason, "OK");
        assert_eq!(resp.content_length, Some(5));
        assert_eq!(resp.body, b"hel");
        assert_eq!(r.interim(), 1);
        assert!(r.feed(b"lo").unwrap());
        assert_eq!(r.room(), 0);

        let mut partial = ResponseReader::new();
        assert!(!partial.feed(b"HTTP/1.1 200 OK\r\nContent-").unwrap());
        assert!(!partial.headers_done());
        let mut garbage = ResponseReader::new();
        let e = garbage.feed(b"SSH-2.0-OpenSSH_9.2\r\n\r\n").unwrap_err();
        assert!(e.message.starts_with("malformed HTTP response"), "{e:?}");
        assert_eq!(e.outcome, Outcome::Failure);
    }

    #[test]
    fn reader_result_does_not_depend_on_chunking() {
        let bytes: &[u8] = b"HTTP/1.1 102 Processing\r\n\r\nHTTP/1.1 103 Early Hints\nLink: x\n\n\
            HTTP/1.1 200 OK\r\nX-A: 1\r\nContent-Length: 4\r\n\r\nbody";
        for size in 1..bytes.len() {
            let mut r = ResponseReader::new();
            let mut done = false;
            for chunk in bytes.chunks(size) {
                done = r
                    .feed(chunk)
                    .unwrap_or_else(|e| panic!("size {size}: {e:?}"));
            }
            assert!(done, "chunk size {size}");
            assert_eq!(r.interim(), 2);
            assert_eq!(r.response().unwrap().body, b"body");
        }
    }

    #[test]
    fn head_bound_counts_interim_responses_and_allows_many_headers() {
        // 30 KiB of headers, 1000 of them: accepted (Go's bound is 1 MiB, no count).
        let mut big = b"HTTP/1.1 200 OK\r\n".to_vec();
        for i in 0..1000 {
            big.extend_from_slice(format!("X-H{i:04}: {}\r\n", "v".repeat(20)).as_bytes());
        }
        big.extend_from_slice(b"Content-Length: 0\r\n\r\n");
        assert!(big.len() > 30 * 1024);
        let mut r = ResponseReader::new();
        assert!(r.feed(&big).unwrap());

        // An endless stream of interim responses fails once past the bound.
        let interim = b"HTTP/1.1 102 Processing\r\n\r\n";
        let mut r = ResponseReader::new();
        let mut fed = 0;
        let e = loop {
            match r.feed(&interim.repeat(100)) {
                Ok(done) => assert!(!done),
                Err(e) => break e,
            }
            fed += 100 * interim.len();
            assert!(fed <= MAX_HEAD + 100 * interim.len(), "never failed");
            assert!(r.buffered() < interim.len());
        };
        assert_eq!(e.outcome, Outcome::Failure);
        assert!(e.message.contains("longer than 1048576 bytes"), "{e:?}");

        // Endless header lines: the buffer stays within the bound.
        let mut r = ResponseReader::new();
        r.feed(b"HTTP/1.1 200 OK\r\n").unwrap();
        let e = loop {
            if let Err(e) = r.feed(&b"X: y\r\n".repeat(1000)) {
                break e;
            }
            assert!(r.buffered() <= MAX_HEAD);
        };
        assert!(e.message.contains("longer than"), "{e:?}");
    }

    #[test]
    fn errors_after_the_headers_are_errors() {
        let mut r = ResponseReader::new();
        r.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort")
            .unwrap();
        let e = r.eof().unwrap_err();
        assert_eq!(e.outcome, Outcome::Error);
        assert_eq!(e.message, "connection closed after 5 of 10 body bytes");

        let mut r = ResponseReader::new();
        r.feed(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n")
            .unwrap();
        assert_eq!(r.eof().unwrap_err().outcome, Outcome::Error);

        // Without a length, the end of the connection ends the body.
        let mut r = ResponseReader::new();
        r.feed(b"HTTP/1.1 200 OK\r\n\r\nall of it").unwrap();
        assert!(r.eof().is_ok());

        // Before the headers: failures.
        let mut r = ResponseReader::new();
        assert_eq!(
            r.eof().unwrap_err().message,
            "connection closed without a response"
        );
        let mut r = ResponseReader::new();
        r.feed(b"HTTP/1.1 200 OK\r\n").unwrap();
        let e = r.eof().unwrap_err();
        assert_eq!(e.outcome, Outcome::Failure);
        assert_eq!(e.message, "connection closed before the end of the headers");
    }

    #[test]
    fn body_is_capped() {
        let mut r = ResponseReader::new();
        let mut bytes = b"HTTP/1.1 200 OK\r\n\r\n".to_vec();
        bytes.extend(std::iter::repeat_n(b'x', 3 * MAX_BODY));
        assert!(r.feed(&bytes).unwrap());
        assert_eq!(r.response().unwrap().body.len(), MAX_BODY);
        assert_eq!(r.room(), 0);
    }

    #[test]
    fn chunked_end_detected_however_split() {
        let head: &[u8] = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n";
        let bodies: [&[u8]; 3] = [
            b"3\r\nabc\r\n0\r\n\r\n",
            b"3;ext=1\r\nabc\r\nA\r\n0123456789\r\n0\r\nX-Trailer: 1\r\n\r\n",
            b"0\r\n\r\n",
        ];
        for body in bodies {
            let mut all = head.to_vec();
            all.extend_from_slice(body);
            // Whatever follows the end is not part of the body.
            all.extend_from_slice(b"HTTP/1.1 200 OK\r\n\r\ntrailing junk");
            for size in 1..all.len() {
                let mut r = ResponseReader::new();
                let mut done = false;
                for chunk in all.chunks(size) {
                    if !done {
                        done = r.feed(chunk).unwrap();
                    }
                }
                assert!(done, "size {size}");
                let resp = r.response().unwrap();
                assert!(resp.chunked);
                assert_eq!(resp.body, body, "size {size}");
            }
        }
        // Content-Length: extra bytes are not body either.
        let mut r = ResponseReader::new();
        assert!(r
            .feed(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokEXTRA")
            .unwrap());
        assert_eq!(r.response().unwrap().body, b"ok");
    }

    #[test]
    fn bad_chunk_framing_is_an_error() {
        for body in [
            &b"zz\r\n"[..],
            b"\r\n",
            b"3\r\nabcX",
            b"1234567890abcdef0\r\n",
        ] {
            let mut r = ResponseReader::new();
            let mut all = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
            all.extend_from_slice(body);
            let e = r.feed(&all).unwrap_err();
            assert_eq!(e.outcome, Outcome::Error, "{body:?}");
            assert!(e.message.starts_with("malformed chunked body"), "{e:?}");
        }
    }
}
