//! A probe as the runtime sees it: validated, defaults applied, durations resolved.
//!
//! A [`ProbeConfig`] can only be built valid: through [`ProbeConfig::builder`]
//! (or [`ProbeConfig::new`] with every default), whose [`ProbeConfigBuilder::build`]
//! checks Kubernetes' rules and returns a typed [`ConfigError`], or from one
//! Kubernetes/KubeVirt probe object (the value of `livenessProbe`) with
//! [`ProbeConfig::from_json`] and, with the `yaml` feature, `ProbeConfig::from_yaml`.
//!
//! The rules ([`ConfigError`] has one variant each):
//! - the period is at least one second (`periodSeconds` ≥ 1) and the timeout is not zero;
//! - both thresholds are at least 1, and a liveness probe's success threshold is exactly 1;
//! - an `exec` command is not empty and its program name is not empty;
//! - `httpGet`/`tcpSocket`: the port is not 0, a `host` is a plain host name or IP
//!   address, an HTTP path has no spaces or control characters, header names are
//!   HTTP tokens and header values have no control characters (tab allowed).
//!
//! The last of Kubernetes' rules, at least one address to probe, depends on where the
//! probe runs: [`crate::ProbeSet::new`] checks it against [`crate::ProbeEnv`].
//!
//! The initial delay, the period and the timeout are [`Duration`]s. The
//! Kubernetes fields are whole seconds; the timeout and the initial delay may be
//! finer here (tests and benchmarks use milliseconds), the period may not be
//! shorter than one second, as in Kubernetes.
//!
//! ```
//! use std::time::Duration;
//! use vmpulse_probes::config::{ConfigError, ProbeConfig, ProbeHandler, ProbeKind};
//!
//! let config = ProbeConfig::builder(ProbeKind::Readiness, ProbeHandler::tcp_socket(8080))
//!     .period(Duration::from_secs(5))
//!     .success_threshold(2)
//!     .build()
//!     .unwrap();
//! assert_eq!(config.failure_threshold(), 3);
//!
//! let err = ProbeConfig::builder(ProbeKind::Liveness, ProbeHandler::tcp_socket(8080))
//!     .success_threshold(5)
//!     .build()
//!     .unwrap_err();
//! assert_eq!(err, ConfigError::LivenessSuccessThreshold(5));
//! assert_eq!(err.field(), "successThreshold");
//!
//! let json = r#"{"httpGet": {"path": "/healthz", "port": 8080}, "periodSeconds": 3}"#;
//! let config = ProbeConfig::from_json(ProbeKind::Liveness, json).unwrap();
//! assert_eq!(config.period(), Duration::from_secs(3));
//! ```

use std::fmt;
use std::time::Duration;

use serde::Deserialize;

/// The shortest period a probe may have (`periodSeconds` ≥ 1).
pub const MIN_PERIOD: Duration = Duration::from_secs(1);
/// Kubernetes' default `periodSeconds`.
pub const DEFAULT_PERIOD: Duration = Duration::from_secs(10);
/// Kubernetes' default `timeoutSeconds`.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1);
/// Kubernetes' default `successThreshold`.
pub const DEFAULT_SUCCESS_THRESHOLD: u32 = 1;
/// Kubernetes' default `failureThreshold`.
pub const DEFAULT_FAILURE_THRESHOLD: u32 = 3;

/// Which probe of the VM.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ProbeKind {
    /// `livenessProbe`: a failure stops (or resets) the VM.
    Liveness,
    /// `readinessProbe`: sets the Ready condition.
    Readiness,
}

impl ProbeKind {
    /// `liveness` or `readiness`, as in JSON events.
    pub fn name(self) -> &'static str {
        match self {
            ProbeKind::Liveness => "liveness",
            ProbeKind::Readiness => "readiness",
        }
    }
}

/// `httpGet.scheme`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HttpScheme {
    /// Plain HTTP.
    Http,
    /// HTTPS, without certificate verification (as the kubelet does). Needs the
    /// `https` feature at run time.
    Https,
}

/// The one handler of a probe.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProbeHandler {
    /// `httpGet`.
    HttpGet {
        /// Request path, with any query string; empty means `/`.
        path: String,
        /// TCP port.
        port: u16,
        /// Target host; `None` (or empty) means the VM's address(es).
        host: Option<String>,
        /// HTTP or HTTPS.
        scheme: HttpScheme,
        /// `httpHeaders`, in order, repeated names allowed.
        headers: Vec<(String, String)>,
    },
    /// `tcpSocket`.
    TcpSocket {
        /// TCP port.
        port: u16,
        /// Target host; `None` (or empty) means the VM's address(es).
        host: Option<String>,
    },
    /// `exec`, run in the guest through the QEMU guest agent (the `agent` feature).
    Exec {
        /// argv; `command[0]` is looked up on the agent's PATH.
        command: Vec<String>,
    },
    /// `guestAgentPing` (the `agent` feature).
    GuestAgentPing,
}

impl ProbeHandler {
    /// `httpGet` of `path` on `port` of the VM's address(es), plain HTTP, no headers.
    pub fn http_get(port: u16, path: &str) -> Self {
        ProbeHandler::HttpGet {
            path: path.to_string(),
            port,
            host: None,
            scheme: HttpScheme::Http,
            headers: Vec::new(),
        }
    }

    /// `tcpSocket` on `port` of the VM's address(es).
    pub fn tcp_socket(port: u16) -> Self {
        ProbeHandler::TcpSocket { port, host: None }
    }

    /// `exec` of `argv` in the guest.
    pub fn exec<S: Into<String>>(argv: impl IntoIterator<Item = S>) -> Self {
        ProbeHandler::Exec {
            command: argv.into_iter().map(Into::into).collect(),
        }
    }

    /// Whether the handler goes through the guest agent (`exec`, `guestAgentPing`).
    pub fn needs_agent(&self) -> bool {
        matches!(
            self,
            ProbeHandler::Exec { .. } | ProbeHandler::GuestAgentPing
        )
    }

    /// The handler's field name in a Kubernetes probe object.
    pub fn field(&self) -> &'static str {
        match self {
            ProbeHandler::HttpGet { .. } => "httpGet",
            ProbeHandler::TcpSocket { .. } => "tcpSocket",
            ProbeHandler::Exec { .. } => "exec",
            ProbeHandler::GuestAgentPing => "guestAgentPing",
        }
    }
}

/// A broken rule of a probe configuration. [`ConfigError::field`] names the
/// Kubernetes field at fault, relative to the probe object.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConfigError {
    /// The period is shorter than [`MIN_PERIOD`] (`periodSeconds` ≥ 1).
    PeriodTooShort(Duration),
    /// The timeout is zero.
    ZeroTimeout,
    /// `successThreshold` is 0.
    ZeroSuccessThreshold,
    /// `failureThreshold` is 0.
    ZeroFailureThreshold,
    /// A liveness probe's `successThreshold` is not 1.
    LivenessSuccessThreshold(u32),
    /// No handler was given.
    NoHandler,
    /// The `exec` command, or its program name, is empty.
    EmptyCommand,
    /// An `httpGet` or `tcpSocket` port is 0.
    ZeroPort {
        /// `httpGet` or `tcpSocket`.
        handler: &'static str,
    },
    /// A `host` that is not a host name or IP address.
    InvalidHost {
        /// `httpGet` or `tcpSocket`.
        handler: &'static str,
        /// The host as given.
        host: String,
    },
    /// An `httpGet` path with spaces or control characters.
    InvalidPath(String),
    /// A header name (at this index of `httpHeaders`) that is not an HTTP token.
    InvalidHeaderName {
        /// Index in `httpHeaders`.
        index: usize,
        /// The name.
        name: String,
    },
    /// A header value (at this index of `httpHeaders`) with control characters.
    InvalidHeaderValue {
        /// Index in `httpHeaders`.
        index: usize,
    },
}

impl ConfigError {
    /// The field at fault, relative to the probe object (`periodSeconds`,
    /// `exec.command`, `httpGet.httpHeaders[2].name`; empty for the object itself).
    pub fn field(&self) -> String {
        match self {
            ConfigError::PeriodTooShort(_) => "periodSeconds".into(),
            ConfigError::ZeroTimeout => "timeoutSeconds".into(),
            ConfigError::ZeroSuccessThreshold | ConfigError::LivenessSuccessThreshold(_) => {
                "successThreshold".into()
            }
            ConfigError::ZeroFailureThreshold => "failureThreshold".into(),
            ConfigError::NoHandler => String::new(),
            ConfigError::EmptyCommand => "exec.command".into(),
            ConfigError::ZeroPort { handler } => format!("{handler}.port"),
            ConfigError::InvalidHost { handler, .. } => format!("{handler}.host"),
            ConfigError::InvalidPath(_) => "httpGet.path".into(),
            ConfigError::InvalidHeaderName { index, .. } => {
                format!("httpGet.httpHeaders[{index}].name")
            }
            ConfigError::InvalidHeaderValue { index } => {
                format!("httpGet.httpHeaders[{index}].value")
            }
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::PeriodTooShort(p) => {
                write!(f, "must be at least 1 second, found {p:?}")
            }
            ConfigError::ZeroTimeout => f.write_str("must be greater than zero"),
            ConfigError::ZeroSuccessThreshold | ConfigError::ZeroFailureThreshold => {
                f.write_str("must be at least 1")
            }
            ConfigError::LivenessSuccessThreshold(n) => {
                write!(f, "must be 1 for a liveness probe, found {n}")
            }
            ConfigError::NoHandler => f.write_str(
                "must specify a handler type: exactly one of httpGet, tcpSocket, exec or guestAgentPing",
            ),
            ConfigError::EmptyCommand => {
                f.write_str("must not be empty: give the program and its arguments")
            }
            ConfigError::ZeroPort { .. } => {
                f.write_str("must be between 1 and 65535, inclusive, found 0")
            }
            ConfigError::InvalidHost { host: h, .. } => write!(f, "{h:?} is not a host name or IP address"),
            ConfigError::InvalidPath(p) => {
                write!(f, "{p:?} contains spaces or control characters")
            }
            ConfigError::InvalidHeaderName { name, .. } => write!(
                f,
                "{name:?} is not a valid HTTP header name (an RFC 7230 token)"
            ),
            ConfigError::InvalidHeaderValue { .. } => {
                f.write_str("header values may not contain control characters")
            }
        }
    }
}

impl std::error::Error for ConfigError {}

/// A validated probe with Kubernetes defaults applied. Build one with
/// [`ProbeConfig::builder`], [`ProbeConfig::new`] or [`ProbeConfig::from_json`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProbeConfig {
    kind: ProbeKind,
    initial_delay: Duration,
    period: Duration,
    timeout: Duration,
    success_threshold: u32,
    failure_threshold: u32,
    handler: ProbeHandler,
}

impl ProbeConfig {
    /// A builder with Kubernetes' defaults: no initial delay, period 10 s,
    /// timeout 1 s, success threshold 1, failure threshold 3.
    pub fn builder(kind: ProbeKind, handler: ProbeHandler) -> ProbeConfigBuilder {
        ProbeConfigBuilder {
            kind,
            handler: Some(handler),
            initial_delay: Duration::ZERO,
            period: DEFAULT_PERIOD,
            timeout: DEFAULT_TIMEOUT,
            success_threshold: DEFAULT_SUCCESS_THRESHOLD,
            failure_threshold: DEFAULT_FAILURE_THRESHOLD,
        }
    }

    /// `handler` with every default (see [`ProbeConfig::builder`]).
    pub fn new(kind: ProbeKind, handler: ProbeHandler) -> Result<Self, ConfigError> {
        Self::builder(kind, handler).build()
    }

    /// A builder holding this configuration, to derive another one.
    pub fn to_builder(&self) -> ProbeConfigBuilder {
        ProbeConfigBuilder {
            kind: self.kind,
            handler: Some(self.handler.clone()),
            initial_delay: self.initial_delay,
            period: self.period,
            timeout: self.timeout,
            success_threshold: self.success_threshold,
            failure_threshold: self.failure_threshold,
        }
    }

    /// Parse one Kubernetes/KubeVirt probe object in JSON (the value of
    /// `livenessProbe` or `readinessProbe`). See [`ProbeSpec`].
    pub fn from_json(kind: ProbeKind, text: &str) -> Result<Self, SpecError> {
        let spec: ProbeSpec =
            serde_json::from_str(text).map_err(|e| SpecError::Syntax(e.to_string()))?;
        spec.to_config(kind)
    }

    /// Parse one Kubernetes/KubeVirt probe object in YAML (the value of
    /// `livenessProbe` or `readinessProbe`). See [`ProbeSpec`].
    #[cfg(feature = "yaml")]
    pub fn from_yaml(kind: ProbeKind, text: &str) -> Result<Self, SpecError> {
        let spec: ProbeSpec =
            serde_yaml_ng::from_str(text).map_err(|e| SpecError::Syntax(e.to_string()))?;
        spec.to_config(kind)
    }

    /// Liveness or readiness.
    pub fn kind(&self) -> ProbeKind {
        self.kind
    }

    /// `initialDelaySeconds` (default 0).
    pub fn initial_delay(&self) -> Duration {
        self.initial_delay
    }

    /// `periodSeconds` (default 10 s, at least 1 s).
    pub fn period(&self) -> Duration {
        self.period
    }

    /// `timeoutSeconds` (default 1 s, never zero).
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// `successThreshold` (default 1; 1 for liveness).
    pub fn success_threshold(&self) -> u32 {
        self.success_threshold
    }

    /// `failureThreshold` (default 3, at least 1).
    pub fn failure_threshold(&self) -> u32 {
        self.failure_threshold
    }

    /// What each attempt does.
    pub fn handler(&self) -> &ProbeHandler {
        &self.handler
    }
}

/// Builds a [`ProbeConfig`]; [`ProbeConfigBuilder::build`] checks the rules.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProbeConfigBuilder {
    kind: ProbeKind,
    handler: Option<ProbeHandler>,
    initial_delay: Duration,
    period: Duration,
    timeout: Duration,
    success_threshold: u32,
    failure_threshold: u32,
}

impl ProbeConfigBuilder {
    /// A builder without a handler yet (for front-ends that read the handler
    /// last); [`ProbeConfigBuilder::build`] fails with [`ConfigError::NoHandler`]
    /// until one is set.
    pub fn without_handler(kind: ProbeKind) -> Self {
        ProbeConfigBuilder {
            handler: None,
            ..ProbeConfig::builder(kind, ProbeHandler::GuestAgentPing)
        }
    }

    /// The handler.
    pub fn handler(mut self, handler: ProbeHandler) -> Self {
        self.handler = Some(handler);
        self
    }

    /// `initialDelaySeconds`.
    pub fn initial_delay(mut self, d: Duration) -> Self {
        self.initial_delay = d;
        self
    }

    /// `periodSeconds` (at least [`MIN_PERIOD`]).
    pub fn period(mut self, d: Duration) -> Self {
        self.period = d;
        self
    }

    /// `timeoutSeconds` (not zero).
    pub fn timeout(mut self, d: Duration) -> Self {
        self.timeout = d;
        self
    }

    /// `successThreshold` (at least 1; exactly 1 for liveness).
    pub fn success_threshold(mut self, n: u32) -> Self {
        self.success_threshold = n;
        self
    }

    /// `failureThreshold` (at least 1).
    pub fn failure_threshold(mut self, n: u32) -> Self {
        self.failure_threshold = n;
        self
    }

    /// Every rule the configuration breaks, in field order (empty when valid).
    pub fn problems(&self) -> Vec<ConfigError> {
        let mut out = Vec::new();
        if self.period < MIN_PERIOD {
            out.push(ConfigError::PeriodTooShort(self.period));
        }
        if self.timeout.is_zero() {
            out.push(ConfigError::ZeroTimeout);
        }
        if self.success_threshold == 0 {
            out.push(ConfigError::ZeroSuccessThreshold);
        } else if self.kind == ProbeKind::Liveness && self.success_threshold != 1 {
            out.push(ConfigError::LivenessSuccessThreshold(
                self.success_threshold,
            ));
        }
        if self.failure_threshold == 0 {
            out.push(ConfigError::ZeroFailureThreshold);
        }
        match &self.handler {
            None => out.push(ConfigError::NoHandler),
            Some(h) => handler_problems(h, &mut out),
        }
        out
    }

    /// The configuration, or the first rule it breaks.
    pub fn build(self) -> Result<ProbeConfig, ConfigError> {
        if let Some(e) = self.problems().into_iter().next() {
            return Err(e);
        }
        let mut handler = self.handler.ok_or(ConfigError::NoHandler)?;
        // Kubernetes' own normalisations: an empty host is the VM, an empty path is `/`.
        let host = match &mut handler {
            ProbeHandler::HttpGet { path, host, .. } => {
                if path.is_empty() {
                    *path = "/".into();
                }
                Some(host)
            }
            ProbeHandler::TcpSocket { host, .. } => Some(host),
            _ => None,
        };
        if let Some(host) = host.filter(|h| h.as_deref() == Some("")) {
            *host = None;
        }
        Ok(ProbeConfig {
            kind: self.kind,
            initial_delay: self.initial_delay,
            period: self.period,
            timeout: self.timeout,
            success_threshold: self.success_threshold,
            failure_threshold: self.failure_threshold,
            handler,
        })
    }
}

/// An RFC 7230 token, as header names must be.
pub fn is_http_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|c| c.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&c))
}

fn address_problems(
    handler: &'static str,
    port: u16,
    host: &Option<String>,
    out: &mut Vec<ConfigError>,
) {
    if port == 0 {
        out.push(ConfigError::ZeroPort { handler });
    }
    if let Some(h) = host {
        if h.chars()
            .any(|c| c.is_whitespace() || c.is_control() || c == '/')
        {
            out.push(ConfigError::InvalidHost {
                handler,
                host: h.clone(),
            });
        }
    }
}

fn handler_problems(handler: &ProbeHandler, out: &mut Vec<ConfigError>) {
    match handler {
        ProbeHandler::HttpGet {
            path,
            port,
            host,
            headers,
            ..
        } => {
            address_problems("httpGet", *port, host, out);
            if path.chars().any(|c| c.is_control() || c == ' ') {
                out.push(ConfigError::InvalidPath(path.clone()));
            }
            for (index, (name, value)) in headers.iter().enumerate() {
                if !is_http_token(name) {
                    out.push(ConfigError::InvalidHeaderName {
                        index,
                        name: name.clone(),
                    });
                }
                if value.chars().any(|c| c.is_control() && c != '\t') {
                    out.push(ConfigError::InvalidHeaderValue { index });
                }
            }
        }
        ProbeHandler::TcpSocket { port, host } => {
            address_problems("tcpSocket", *port, host, out);
        }
        ProbeHandler::Exec { command } => {
            if command.first().map_or(true, String::is_empty) {
                out.push(ConfigError::EmptyCommand);
            }
        }
        ProbeHandler::GuestAgentPing => {}
    }
}

/// Why a probe object could not be read.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum SpecError {
    /// Not a probe object: bad syntax, a wrong type, an unknown field.
    Syntax(String),
    /// A field with a value Kubernetes refuses before any rule applies.
    Field {
        /// The field, relative to the probe object (`httpGet.port`).
        field: String,
        /// What is wrong with it.
        message: String,
    },
    /// A broken rule of the configuration.
    Config(ConfigError),
}

impl fmt::Display for SpecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SpecError::Syntax(m) => f.write_str(m),
            SpecError::Field { field, message } => write!(f, "{field}: {message}"),
            SpecError::Config(e) if e.field().is_empty() => write!(f, "{e}"),
            SpecError::Config(e) => write!(f, "{}: {e}", e.field()),
        }
    }
}

impl std::error::Error for SpecError {}

impl From<ConfigError> for SpecError {
    fn from(e: ConfigError) -> Self {
        SpecError::Config(e)
    }
}

/// A Kubernetes `IntOrString` port.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum PortSpec {
    /// A port number.
    Number(i64),
    /// A named port (needs the VM's interface list, which a lone probe has not).
    Name(String),
}

/// `httpGet` of a probe object.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpGetSpec {
    /// `path`.
    pub path: Option<String>,
    /// `port`.
    pub port: Option<PortSpec>,
    /// `host`.
    pub host: Option<String>,
    /// `scheme`: `HTTP` or `HTTPS`.
    pub scheme: Option<String>,
    /// `httpHeaders`.
    pub http_headers: Option<Vec<HeaderSpec>>,
}

/// One of `httpGet.httpHeaders`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderSpec {
    /// `name`.
    pub name: String,
    /// `value`.
    #[serde(default)]
    pub value: String,
}

/// `tcpSocket` of a probe object.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TcpSocketSpec {
    /// `port`.
    pub port: Option<PortSpec>,
    /// `host`.
    pub host: Option<String>,
}

/// `exec` of a probe object.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExecSpec {
    /// `command`.
    pub command: Option<Vec<String>>,
}

/// `guestAgentPing` of a probe object (it has no fields).
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GuestAgentPingSpec {}

/// One Kubernetes/KubeVirt probe object, as written (`kubevirt.io/v1` `Probe`).
///
/// Unknown fields are refused (a typo must not pass silently). The numbers
/// follow Kubernetes: a missing field or an explicit 0 takes the default,
/// negative numbers are refused. Named ports are refused: a lone probe object
/// does not carry the VM's interface list (the manifest front-end resolves them).
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ProbeSpec {
    /// `initialDelaySeconds`.
    pub initial_delay_seconds: Option<i64>,
    /// `periodSeconds`.
    pub period_seconds: Option<i64>,
    /// `timeoutSeconds`.
    pub timeout_seconds: Option<i64>,
    /// `successThreshold`.
    pub success_threshold: Option<i64>,
    /// `failureThreshold`.
    pub failure_threshold: Option<i64>,
    /// `httpGet`.
    pub http_get: Option<HttpGetSpec>,
    /// `tcpSocket`.
    pub tcp_socket: Option<TcpSocketSpec>,
    /// `exec`.
    pub exec: Option<ExecSpec>,
    /// `guestAgentPing`.
    pub guest_agent_ping: Option<GuestAgentPingSpec>,
}

fn field_error(field: &str, message: impl Into<String>) -> SpecError {
    SpecError::Field {
        field: field.into(),
        message: message.into(),
    }
}

/// A count field: `None` when missing or 0 (the default applies).
fn count(field: &str, v: Option<i64>) -> Result<Option<u32>, SpecError> {
    match v {
        None | Some(0) => Ok(None),
        Some(n) if n < 0 => Err(field_error(
            field,
            format!("must be greater than or equal to 0, found {n}"),
        )),
        Some(n) => u32::try_from(n)
            .ok()
            .filter(|n| i32::try_from(*n).is_ok())
            .map(Some)
            .ok_or_else(|| field_error(field, format!("must be at most {}, found {n}", i32::MAX))),
    }
}

fn port(field: &str, p: &Option<PortSpec>) -> Result<u16, SpecError> {
    match p {
        None => Err(field_error(field, "required field missing")),
        Some(PortSpec::Number(n)) => u16::try_from(*n).ok().filter(|p| *p >= 1).ok_or_else(|| {
            field_error(
                field,
                format!("must be between 1 and 65535, inclusive, found {n}"),
            )
        }),
        Some(PortSpec::Name(name)) => Err(field_error(
            field,
            format!(
                "named port {name:?} cannot be resolved without the VM's interfaces: give a number"
            ),
        )),
    }
}

impl ProbeSpec {
    /// The configuration this object describes, as a probe of `kind`.
    pub fn to_config(&self, kind: ProbeKind) -> Result<ProbeConfig, SpecError> {
        let secs = |s: u32| Duration::from_secs(u64::from(s));
        let mut b = ProbeConfigBuilder::without_handler(kind);
        if let Some(n) = count("initialDelaySeconds", self.initial_delay_seconds)? {
            b = b.initial_delay(secs(n));
        }
        if let Some(n) = count("periodSeconds", self.period_seconds)? {
            b = b.period(secs(n));
        }
        if let Some(n) = count("timeoutSeconds", self.timeout_seconds)? {
            b = b.timeout(secs(n));
        }
        if let Some(n) = count("successThreshold", self.success_threshold)? {
            b = b.success_threshold(n);
        }
        if let Some(n) = count("failureThreshold", self.failure_threshold)? {
            b = b.failure_threshold(n);
        }
        let given: Vec<&str> = [
            ("httpGet", self.http_get.is_some()),
            ("tcpSocket", self.tcp_socket.is_some()),
            ("exec", self.exec.is_some()),
            ("guestAgentPing", self.guest_agent_ping.is_some()),
        ]
        .iter()
        .filter(|(_, set)| *set)
        .map(|(n, _)| *n)
        .collect();
        if given.len() > 1 {
            return Err(field_error(
                "",
                format!(
                    "may not specify more than 1 handler type (found {})",
                    given.join(", ")
                ),
            ));
        }
        if let Some(h) = &self.http_get {
            let scheme = match h.scheme.as_deref() {
                None | Some("HTTP") => HttpScheme::Http,
                Some("HTTPS") => HttpScheme::Https,
                Some(s) => {
                    return Err(field_error(
                        "httpGet.scheme",
                        format!("unsupported scheme {s:?} (expected HTTP or HTTPS)"),
                    ))
                }
            };
            b = b.handler(ProbeHandler::HttpGet {
                path: h.path.clone().unwrap_or_default(),
                port: port("httpGet.port", &h.port)?,
                host: h.host.clone(),
                scheme,
                headers: h
                    .http_headers
                    .iter()
                    .flatten()
                    .map(|hd| (hd.name.clone(), hd.value.clone()))
                    .collect(),
            });
        }
        if let Some(t) = &self.tcp_socket {
            b = b.handler(ProbeHandler::TcpSocket {
                port: port("tcpSocket.port", &t.port)?,
                host: t.host.clone(),
            });
        }
        if let Some(e) = &self.exec {
            b = b.handler(ProbeHandler::Exec {
                command: e.command.clone().unwrap_or_default(),
            });
        }
        if self.guest_agent_ping.is_some() {
            b = b.handler(ProbeHandler::GuestAgentPing);
        }
        Ok(b.build()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const L: ProbeKind = ProbeKind::Liveness;
    const R: ProbeKind = ProbeKind::Readiness;

    fn tcp() -> ProbeConfigBuilder {
        ProbeConfig::builder(R, ProbeHandler::tcp_socket(80))
    }

    #[test]
    fn defaults_are_kubernetes_defaults() {
        let c = ProbeConfig::new(L, ProbeHandler::tcp_socket(80)).unwrap();
        assert_eq!(c.kind(), L);
        assert_eq!(c.initial_delay(), Duration::ZERO);
        assert_eq!(c.period(), Duration::from_secs(10));
        assert_eq!(c.timeout(), Duration::from_secs(1));
        assert_eq!((c.success_threshold(), c.failure_threshold()), (1, 3));
        assert_eq!(c.to_builder().build().unwrap(), c);
    }

    #[test]
    fn every_rule_has_its_typed_error() {
        let s = Duration::from_secs;
        let cases: Vec<(ProbeConfigBuilder, ConfigError, &str)> = vec![
            (
                tcp().period(Duration::ZERO),
                ConfigError::PeriodTooShort(Duration::ZERO),
                "periodSeconds",
            ),
            (
                tcp().period(Duration::from_millis(999)),
                ConfigError::PeriodTooShort(Duration::from_millis(999)),
                "periodSeconds",
            ),
            (
                tcp().timeout(Duration::ZERO),
                ConfigError::ZeroTimeout,
                "timeoutSeconds",
            ),
            (
                tcp().success_threshold(0),
                ConfigError::ZeroSuccessThreshold,
                "successThreshold",
            ),
            (
                tcp().failure_threshold(0),
                ConfigError::ZeroFailureThreshold,
                "failureThreshold",
            ),
            (
                ProbeConfig::builder(L, ProbeHandler::tcp_socket(80)).success_threshold(5),
                ConfigError::LivenessSuccessThreshold(5),
                "successThreshold",
            ),
            (
                ProbeConfig::builder(L, ProbeHandler::tcp_socket(80)).success_threshold(0),
                ConfigError::ZeroSuccessThreshold,
                "successThreshold",
            ),
            (
                ProbeConfigBuilder::without_handler(R),
                ConfigError::NoHandler,
                "",
            ),
            (
                tcp().handler(ProbeHandler::exec(Vec::<String>::new())),
                ConfigError::EmptyCommand,
                "exec.command",
            ),
            (
                tcp().handler(ProbeHandler::exec([""])),
                ConfigError::EmptyCommand,
                "exec.command",
            ),
            (
                tcp().handler(ProbeHandler::tcp_socket(0)),
                ConfigError::ZeroPort {
                    handler: "tcpSocket",
                },
                "tcpSocket.port",
            ),
            (
                tcp().handler(ProbeHandler::http_get(0, "/")),
                ConfigError::ZeroPort { handler: "httpGet" },
                "httpGet.port",
            ),
            (
                tcp().handler(ProbeHandler::TcpSocket {
                    port: 1,
                    host: Some("a b".into()),
                }),
                ConfigError::InvalidHost {
                    handler: "tcpSocket",
                    host: "a b".into(),
                },
                "tcpSocket.host",
            ),
            (
                tcp().handler(ProbeHandler::http_get(1, "/a b")),
                ConfigError::InvalidPath("/a b".into()),
                "httpGet.path",
            ),
            (
                tcp().handler(ProbeHandler::HttpGet {
                    path: "/".into(),
                    port: 1,
                    host: None,
                    scheme: HttpScheme::Http,
                    headers: vec![
                        ("ok".into(), "a\tb".into()),
                        ("Bad Name".into(), "x".into()),
                    ],
                }),
                ConfigError::InvalidHeaderName {
                    index: 1,
                    name: "Bad Name".into(),
                },
                "httpGet.httpHeaders[1].name",
            ),
            (
                tcp().handler(ProbeHandler::HttpGet {
                    path: "/".into(),
                    port: 1,
                    host: None,
                    scheme: HttpScheme::Http,
                    headers: vec![("X".into(), "a\r\nEvil: 1".into())],
                }),
                ConfigError::InvalidHeaderValue { index: 0 },
                "httpGet.httpHeaders[0].value",
            ),
        ];
        for (b, want, field) in cases {
            assert_eq!(b.problems(), vec![want.clone()], "{b:?}");
            let got = b.build().unwrap_err();
            assert_eq!(got, want);
            assert_eq!(got.field(), field);
            assert!(!got.to_string().contains("--"), "{got}");
        }
        // The smallest valid values pass.
        assert!(tcp()
            .period(s(1))
            .timeout(Duration::from_nanos(1))
            .failure_threshold(1)
            .build()
            .is_ok());
        // Readiness may need several successes.
        assert_eq!(
            tcp()
                .success_threshold(5)
                .build()
                .unwrap()
                .success_threshold(),
            5
        );
    }

    #[test]
    fn problems_lists_every_broken_rule() {
        let b = ProbeConfig::builder(L, ProbeHandler::exec(Vec::<String>::new()))
            .period(Duration::ZERO)
            .success_threshold(2)
            .failure_threshold(0);
        assert_eq!(
            b.problems(),
            vec![
                ConfigError::PeriodTooShort(Duration::ZERO),
                ConfigError::LivenessSuccessThreshold(2),
                ConfigError::ZeroFailureThreshold,
                ConfigError::EmptyCommand,
            ]
        );
    }

    #[test]
    fn empty_host_and_path_are_normalised() {
        let c = tcp()
            .handler(ProbeHandler::HttpGet {
                path: String::new(),
                port: 8080,
                host: Some(String::new()),
                scheme: HttpScheme::Https,
                headers: vec![],
            })
            .build()
            .unwrap();
        assert_eq!(
            c.handler(),
            &ProbeHandler::HttpGet {
                path: "/".into(),
                port: 8080,
                host: None,
                scheme: HttpScheme::Https,
                headers: vec![],
            }
        );
    }

    #[test]
    fn json_probe_objects() {
        let c = ProbeConfig::from_json(
            R,
            r#"{"httpGet": {"path": "/healthz", "port": 1500, "host": "::1", "scheme": "HTTPS",
                "httpHeaders": [{"name": "X-A", "value": "1"}]},
                "initialDelaySeconds": 120, "periodSeconds": 20, "timeoutSeconds": 10,
                "successThreshold": 3, "failureThreshold": 0}"#,
        )
        .unwrap();
        let want = ProbeConfig::builder(
            R,
            ProbeHandler::HttpGet {
                path: "/healthz".into(),
                port: 1500,
                host: Some("::1".into()),
                scheme: HttpScheme::Https,
                headers: vec![("X-A".into(), "1".into())],
            },
        )
        .initial_delay(Duration::from_secs(120))
        .period(Duration::from_secs(20))
        .timeout(Duration::from_secs(10))
        .success_threshold(3)
        .build()
        .unwrap();
        assert_eq!(c, want);
        let c = ProbeConfig::from_json(L, r#"{"exec": {"command": ["cat", "/tmp/ok"]}}"#).unwrap();
        assert_eq!(c.handler(), &ProbeHandler::exec(["cat", "/tmp/ok"]));
        let c = ProbeConfig::from_json(L, r#"{"guestAgentPing": {}}"#).unwrap();
        assert_eq!(c.handler(), &ProbeHandler::GuestAgentPing);
    }

    #[test]
    fn json_errors_name_their_field() {
        let err = |kind, text| ProbeConfig::from_json(kind, text).unwrap_err().to_string();
        assert_eq!(
            err(L, r#"{"tcpSocket": {"port": 80}, "successThreshold": 2}"#),
            "successThreshold: must be 1 for a liveness probe, found 2"
        );
        assert_eq!(
            err(R, r#"{"tcpSocket": {"port": 80}, "periodSeconds": -1}"#),
            "periodSeconds: must be greater than or equal to 0, found -1"
        );
        assert_eq!(
            err(R, r#"{"tcpSocket": {"port": 70000}}"#),
            "tcpSocket.port: must be between 1 and 65535, inclusive, found 70000"
        );
        assert!(
            err(R, r#"{"tcpSocket": {"port": "http"}}"#).starts_with("tcpSocket.port: named port")
        );
        assert_eq!(
            err(R, r#"{"exec": {"command": []}}"#),
            "exec.command: must not be empty: give the program and its arguments"
        );
        assert_eq!(
            err(R, "{}"),
            "must specify a handler type: exactly one of httpGet, tcpSocket, exec or guestAgentPing"
        );
        assert!(err(
            R,
            r#"{"tcpSocket": {"port": 1}, "exec": {"command": ["x"]}}"#
        )
        .contains("may not specify more than 1 handler type (found tcpSocket, exec)"));
        assert!(err(R, r#"{"tcpSocket": {"port": 1}, "periodSecond": 3}"#)
            .contains("unknown field `periodSecond`"));
        assert!(
            err(R, r#"{"httpGet": {"port": 1, "scheme": "FTP"}}"#).contains("unsupported scheme")
        );
        assert!(err(R, "[1, 2").contains("EOF"));
    }

    #[cfg(feature = "yaml")]
    #[test]
    fn yaml_probe_objects() {
        let yaml = "tcpSocket:\n  port: 22\ninitialDelaySeconds: 5\nperiodSeconds: 3\n";
        let c = ProbeConfig::from_yaml(L, yaml).unwrap();
        assert_eq!(c.handler(), &ProbeHandler::tcp_socket(22));
        assert_eq!(
            (c.initial_delay(), c.period()),
            (Duration::from_secs(5), Duration::from_secs(3))
        );
        let e =
            ProbeConfig::from_yaml(L, "tcpSocket: {port: 22}\nsuccessThreshold: 3\n").unwrap_err();
        assert_eq!(
            e,
            SpecError::Config(ConfigError::LivenessSuccessThreshold(3))
        );
    }
}
