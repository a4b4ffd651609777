//! The KubeVirt `VirtualMachine` manifest front-end.
//!
//! [`parse_str`] reads a KubeVirt `VirtualMachine` (YAML, `kubevirt.io/v1` or
//! `kubevirt.io/v1alpha3`) into a [`VmSpec`]: what the runner needs, with
//! KubeVirt's and Kubernetes' defaults applied. It never panics and reports
//! *every* problem it finds, each with the dotted path of its field
//! (`spec.template.spec.domain.devices.watchdog.i6300esb.action: unknown action
//! "explode"`); a YAML syntax error is one problem with its line and column.
//!
//! What is read:
//!
//! | field | meaning |
//! |---|---|
//! | `metadata.name` | required, an RFC 1123 subdomain |
//! | `metadata.annotations` | free-form; `vmpulse.io/liveness-action`: `stop` (default), `reset` or `shutdown` |
//! | `spec.runStrategy` / `spec.running` | `Always`, `RerunOnFailure`, `Once`, `Halted`, `Manual`; legacy `running: true` = Always, `false` = Halted; both set is an error, as in KubeVirt; neither set is KubeVirt's default, Halted (with a warning) |
//! | `…domain.devices.watchdog` | `{name, i6300esb: {action}}`; actions `poweroff`, `reset` (default), `shutdown` as in KubeVirt, and as a vmpulse extension (with a warning) `pause`, `none`, `inject-nmi`, `debug`; `diag288` (s390x) is refused |
//! | `…domain.resources.requests.memory`, `…domain.memory.guest` | Kubernetes quantities (`1Gi`, `512Mi`, `64M`, `1e9`, plain bytes); `memory.guest` wins when both are given, as in KubeVirt |
//! | `spec.template.spec.terminationGracePeriodSeconds` | default 30, never negative |
//! | `spec.template.spec.livenessProbe` / `readinessProbe` | see below |
//!
//! Probes become [`ProbeConfig`]s with Kubernetes' defaults (period 10 s,
//! timeout 1 s, thresholds 1 and 3; an explicit 0 means unset) and Kubernetes'
//! strict validation rather than KubeVirt's silent defaulting: negative numbers
//! are errors, a liveness `successThreshold` must be 1, exactly one of `httpGet`,
//! `tcpSocket`, `exec`, `guestAgentPing` must be given, ports are 1–65535 or an
//! IANA service name declared in `…domain.devices.interfaces[].ports[]`,
//! `scheme` is `HTTP` or `HTTPS`, header names are HTTP tokens, and an `exec`
//! command is not empty. KubeVirt's extra 10 s of initial delay is not added.
//!
//! Fields that belong to KubeVirt's schema but mean nothing to the built-in
//! test guest (disks, volumes and their `containerDisk` / `cloudInitNoCloud`
//! sources, networks, interfaces, rng, cpu, …) are accepted and listed in
//! [`VmSpec::ignored`]. Fields that are not part of KubeVirt's schema where
//! vmpulse models it (a typo such as `livenesProbe`) are *warnings*, not
//! errors: KubeVirt's API server would drop them too (it prunes unknown fields),
//! so refusing them would refuse manifests KubeVirt accepts, yet silently
//! accepting them would hide typos. Each warning names the path and, when a
//! known field is close, suggests it. Inside objects vmpulse does not model
//! (interfaces, volumes, annotations, resource lists) nothing is reported.
//!
//! ```
//! let spec = vmpulse_manifest::parse_str(
//!     "apiVersion: kubevirt.io/v1
//! kind: VirtualMachine
//! metadata: {name: demo}
//! spec:
//!   runStrategy: Always
//!   template:
//!     spec:
//!       domain:
//!         devices:
//!           watchdog: {name: w, i6300esb: {action: poweroff}}
//! ",
//! )
//! .unwrap();
//! assert_eq!(spec.watchdog.unwrap().action, i6300esb::WatchdogAction::Poweroff);
//!
//! let problems = vmpulse_manifest::parse_str("kind: Pod\n").unwrap_err();
//! assert!(problems.iter().any(|p| p.to_string() == "apiVersion: required field missing"));
//! ```

mod doc;
pub mod limits;
mod quantity;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use i6300esb::WatchdogAction;
use serde_yaml_ng::{Mapping, Value};

use doc::{Field, Lenient};
pub use quantity::{parse_bytes as parse_quantity_bytes, QuantityError};
use vmpulse_probes::config::{
    ConfigError, HttpScheme, ProbeConfig, ProbeConfigBuilder, ProbeHandler, ProbeKind,
};

/// KubeVirt's `spec.runStrategy`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RunStrategy {
    /// Restart the VM whenever it stops, however it stopped.
    Always,
    /// Restart the VM only when it stopped on a failure (not a guest-initiated poweroff).
    RerunOnFailure,
    /// Run the VM once; never restart it.
    Once,
    /// Do not start the VM.
    Halted,
    /// Start it once (as the user asked); never restart it automatically.
    Manual,
}

impl RunStrategy {
    /// Every strategy, in KubeVirt's documentation order.
    pub const ALL: [RunStrategy; 5] = [
        RunStrategy::Always,
        RunStrategy::RerunOnFailure,
        RunStrategy::Once,
        RunStrategy::Halted,
        RunStrategy::Manual,
    ];

    /// The name as written in `spec.runStrategy`.
    pub fn name(self) -> &'static str {
        match self {
            RunStrategy::Always => "Always",
            RunStrategy::RerunOnFailure => "RerunOnFailure",
            RunStrategy::Once => "Once",
            RunStrategy::Halted => "Halted",
            RunStrategy::Manual => "Manual",
        }
    }
}

/// What a liveness failure does (annotation `vmpulse.io/liveness-action`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LivenessAction {
    /// Stop the VM (KubeVirt's behaviour, the default); runStrategy then applies.
    Stop,
    /// Warm-reset the VM in place.
    Reset,
    /// Ask the guest to shut down, forced after the grace period.
    Shutdown,
}

/// The annotation that chooses the [`LivenessAction`].
pub const LIVENESS_ACTION_ANNOTATION: &str = "vmpulse.io/liveness-action";

/// `spec.template.spec.domain.devices.watchdog`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WatchdogSpec {
    /// `name`.
    pub name: String,
    /// `i6300esb.action` (default `reset`).
    pub action: WatchdogAction,
}

/// A validated VirtualMachine: what the runner needs, defaults applied.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VmSpec {
    /// `metadata.name`.
    pub name: String,
    /// `spec.runStrategy` (or `spec.running`: true = Always, false = Halted).
    pub run_strategy: RunStrategy,
    /// The watchdog device, if any.
    pub watchdog: Option<WatchdogSpec>,
    /// Guest memory asked for in `domain.resources.requests.memory` (or
    /// `domain.memory.guest`), in bytes; `None` when not given.
    pub memory_bytes: Option<u64>,
    /// `terminationGracePeriodSeconds` (default 30 s).
    pub termination_grace_period: Duration,
    /// `livenessProbe`.
    pub liveness: Option<ProbeConfig>,
    /// `readinessProbe`.
    pub readiness: Option<ProbeConfig>,
    /// What a liveness failure does.
    pub liveness_action: LivenessAction,
    /// Field paths present in the manifest that vmpulse accepts but does not use.
    pub ignored: Vec<String>,
    /// Things worth knowing that do not stop the VM: unknown fields (with their
    /// paths), vmpulse extensions, defaults KubeVirt would apply.
    pub warnings: Vec<ManifestProblem>,
    /// `metadata.annotations`, every scalar value as a string.
    pub annotations: BTreeMap<String, String>,
}

/// One problem in a manifest, with the path of the field it concerns.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ManifestProblem {
    /// Dotted field path, e.g. `spec.template.spec.domain.devices.watchdog.i6300esb.action`.
    pub path: String,
    /// What is wrong, e.g. `unknown action "explode"`.
    pub message: String,
}

impl std::fmt::Display for ManifestProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

/// Everything a validation found: the spec when there is no problem, and the
/// warnings and ignored fields either way.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Validation {
    /// The spec, when `problems` is empty.
    pub spec: Option<VmSpec>,
    /// Errors: the manifest cannot be run.
    pub problems: Vec<ManifestProblem>,
    /// Warnings (also in [`VmSpec::warnings`]).
    pub warnings: Vec<ManifestProblem>,
    /// Ignored fields (also in [`VmSpec::ignored`]).
    pub ignored: Vec<String>,
}

/// Path of the pseudo-field for document-level problems (YAML syntax, not a mapping).
pub const DOCUMENT_PATH: &str = "(document)";

/// Parse and validate manifest text. Every problem found is returned, never a panic.
pub fn parse_str(text: &str) -> Result<VmSpec, Vec<ManifestProblem>> {
    let v = validate_str(text);
    match v.spec {
        Some(spec) => Ok(spec),
        None => Err(v.problems),
    }
}

/// Read, parse and validate a manifest file.
pub fn load(path: &Path) -> Result<VmSpec, Vec<ManifestProblem>> {
    parse_str(&read(path).map_err(|p| vec![p])?)
}

/// Read a manifest file as text: at most [`limits::MAX_MANIFEST_BYTES`] + 1
/// bytes are read, so a huge file is refused without being loaded. The
/// problem's path is the file's.
pub fn read(path: &Path) -> Result<String, ManifestProblem> {
    use std::io::Read as _;
    let problem = |message: String| ManifestProblem {
        path: path.display().to_string(),
        message,
    };
    let file = std::fs::File::open(path).map_err(|e| problem(format!("cannot read: {e}")))?;
    let mut bytes = Vec::new();
    file.take(limits::MAX_MANIFEST_BYTES as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| problem(format!("cannot read: {e}")))?;
    if bytes.len() > limits::MAX_MANIFEST_BYTES {
        return Err(problem(too_large_message()));
    }
    String::from_utf8(bytes).map_err(|_| problem("cannot read: not UTF-8 text".into()))
}

fn too_large_message() -> String {
    format!(
        "the manifest is larger than {} bytes (1 MiB), the most vmpulse reads",
        limits::MAX_MANIFEST_BYTES
    )
}

/// Parse and validate manifest text, keeping warnings and ignored fields even
/// when there are problems.
///
/// Text longer than [`limits::MAX_MANIFEST_BYTES`], nested deeper than
/// [`limits::MAX_NESTING_DEPTH`] or with more than [`limits::MAX_ENTRIES`]
/// entries is refused before it is parsed, in time linear in its length.
pub fn validate_str(text: &str) -> Validation {
    let mut cx = Cx::default();
    if text.len() > limits::MAX_MANIFEST_BYTES {
        cx.error(DOCUMENT_PATH, too_large_message());
        return cx.into_validation(None);
    }
    let shape = limits::measure(text, limits::MAX_NESTING_DEPTH, limits::MAX_ENTRIES);
    if shape.depth > limits::MAX_NESTING_DEPTH {
        cx.error(
            DOCUMENT_PATH,
            format!(
                "collections are nested more than {} deep",
                limits::MAX_NESTING_DEPTH
            ),
        );
        return cx.into_validation(None);
    }
    if shape.entries > limits::MAX_ENTRIES {
        cx.error(
            DOCUMENT_PATH,
            format!(
                "more than {} entries (keys and list items); a VirtualMachine has a few hundred",
                limits::MAX_ENTRIES
            ),
        );
        return cx.into_validation(None);
    }
    let doc: Option<doc::VirtualMachine> = match serde_yaml_ng::from_str::<Value>(text) {
        Err(e) => {
            // A value YAML can hold but a `Value` cannot (an integer beyond 64
            // bits) fails the whole document; find the field it is in.
            let de = serde_yaml_ng::Deserializer::from_str(text);
            match serde_path_to_error::deserialize::<_, doc::VirtualMachine>(de) {
                Err(pe) if is_wide_integer(&e) && pe.path().to_string() != "." => {
                    let path = pe.path().to_string();
                    let inner = pe.into_inner().to_string();
                    let message = inner
                        .split_once(": ")
                        .filter(|(head, _)| path.ends_with(head))
                        .map_or(inner.as_str(), |(_, tail)| tail)
                        .to_string();
                    cx.error(&path, message);
                }
                _ => cx.error(DOCUMENT_PATH, yaml_error(&e)),
            }
            None
        }
        Ok(Value::Mapping(m)) => match doc::VirtualMachine::deserialize_value(Value::Mapping(m)) {
            Ok(d) => Some(d),
            Err(e) => {
                cx.error(DOCUMENT_PATH, e);
                None
            }
        },
        Ok(Value::Null) => {
            cx.error(DOCUMENT_PATH, "empty document: expected a VirtualMachine");
            None
        }
        Ok(other) => {
            cx.error(
                DOCUMENT_PATH,
                format!(
                    "expected a mapping (a VirtualMachine object), found {}",
                    kind_of(&other)
                ),
            );
            None
        }
    };
    let spec = doc.and_then(|d| cx.virtual_machine(&d));
    cx.into_validation(spec)
}

/// An integer of more than 64 bits: valid YAML, but no `Value` holds it.
fn is_wide_integer(e: &serde_yaml_ng::Error) -> bool {
    let m = e.to_string();
    m.contains("as u128") || m.contains("as i128")
}

fn yaml_error(e: &serde_yaml_ng::Error) -> String {
    let text = e.to_string();
    match e.location() {
        Some(loc) if !text.contains(" at line ") => format!(
            "YAML syntax error at line {} column {}: {text}",
            loc.line(),
            loc.column()
        ),
        _ => format!("YAML syntax error: {text}"),
    }
}

fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Sequence(_) => "a sequence",
        Value::Mapping(_) => "a mapping",
        Value::Tagged(_) => "a tagged value",
    }
}

impl doc::VirtualMachine {
    fn deserialize_value(v: Value) -> Result<Self, String> {
        serde_path_to_error::deserialize(v).map_err(|e| e.into_inner().to_string())
    }
}

fn key_text(k: &Value) -> String {
    match k {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        Value::Null => "null".into(),
        other => serde_yaml_ng::to_string(other)
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|_| "?".into()),
    }
}

/// `path.key`, the key cut to [`limits::MAX_ECHO_CHARS`].
fn join(path: &str, key: &str) -> String {
    let key = limits::clip(key);
    if path.is_empty() {
        key.into_owned()
    } else {
        format!("{path}.{key}")
    }
}

/// Levenshtein distance, for "did you mean" hints on short field names.
fn distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.to_lowercase().chars().collect();
    let b: Vec<char> = b.to_lowercase().chars().collect();
    if a.len() > 64 || b.len() > 64 {
        return usize::MAX;
    }
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.iter().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != cb);
            cur[j + 1] = sub.min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

/// Validation context: collects problems, warnings and ignored paths.
#[derive(Default)]
struct Cx {
    problems: Vec<ManifestProblem>,
    warnings: Vec<ManifestProblem>,
    ignored: Vec<String>,
}

const MISSING: &str = "required field missing";

impl Cx {
    /// Values echoed in messages are cut to [`limits::MAX_ECHO_CHARS`].
    fn error(&mut self, path: &str, message: impl Into<String>) {
        self.problems.push(ManifestProblem {
            path: path.to_string(),
            message: limits::clip_quoted(&message.into()),
        });
    }

    fn warn(&mut self, path: &str, message: impl Into<String>) {
        self.warnings.push(ManifestProblem {
            path: path.to_string(),
            message: limits::clip_quoted(&message.into()),
        });
    }

    fn into_validation(self, spec: Option<VmSpec>) -> Validation {
        let spec = if self.problems.is_empty() { spec } else { None };
        Validation {
            spec: spec.map(|mut s| {
                s.ignored = self.ignored.clone();
                s.warnings = self.warnings.clone();
                s
            }),
            problems: self.problems,
            warnings: self.warnings,
            ignored: self.ignored,
        }
    }

    /// The typed value of a field, or `None` (with a problem if it was malformed).
    fn get<'a, T>(&mut self, path: &str, field: &'a Field<T>) -> Option<&'a T> {
        match field {
            None => None,
            Some(Lenient::Ok(t)) => Some(t),
            Some(Lenient::Bad { path: sub, message }) => {
                self.error(&format!("{path}{}", limits::clip(sub)), message.clone());
                None
            }
        }
    }

    /// As [`Cx::get`], and a problem when the field is absent.
    fn required<'a, T>(&mut self, path: &str, field: &'a Field<T>) -> Option<&'a T> {
        if field.is_none() {
            self.error(path, MISSING);
        }
        self.get(path, field)
    }

    /// Sort the keys a struct did not model into ignored (KubeVirt fields
    /// vmpulse does not use) and warnings (not KubeVirt fields).
    fn rest(&mut self, path: &str, other: &Mapping, used: &[&str], unused: &[&str]) {
        for (k, _) in other {
            let key = key_text(k);
            let p = join(path, &key);
            if unused.contains(&key.as_str()) {
                self.ignored.push(p);
                continue;
            }
            let hint = used
                .iter()
                .chain(unused)
                .map(|c| (distance(&key, c), c))
                .filter(|(d, _)| *d <= 2)
                .min_by_key(|(d, _)| *d)
                .map(|(_, c)| format!(" (did you mean {c:?}?)"))
                .unwrap_or_default();
            self.warn(
                &p,
                format!(
                    "unknown field, not part of KubeVirt's VirtualMachine schema; ignored{hint}"
                ),
            );
        }
    }

    fn virtual_machine(&mut self, d: &doc::VirtualMachine) -> Option<VmSpec> {
        self.rest(
            "",
            &d.other,
            &["apiVersion", "kind", "metadata", "spec"],
            doc::VirtualMachine::KNOWN_UNUSED,
        );
        if let Some(v) = self.required("apiVersion", &d.api_version) {
            if v != "kubevirt.io/v1" && v != "kubevirt.io/v1alpha3" {
                self.error(
                    "apiVersion",
                    format!("unsupported apiVersion {v:?} (expected kubevirt.io/v1 or kubevirt.io/v1alpha3)"),
                );
            }
        }
        if let Some(k) = self.required("kind", &d.kind) {
            if k != "VirtualMachine" {
                self.error("kind", format!("expected VirtualMachine, found {k:?}"));
            }
        }
        let meta = self.required("metadata", &d.metadata);
        let (name, annotations, liveness_action) = match meta {
            Some(m) => self.metadata(m),
            None => (None, BTreeMap::new(), LivenessAction::Stop),
        };
        let spec = self.required("spec", &d.spec);
        let vm = spec.map(|s| self.vm_spec(s));
        let (run_strategy, vmi) = vm?;
        let vmi = vmi?;
        Some(VmSpec {
            name: name?,
            run_strategy,
            watchdog: vmi.watchdog,
            memory_bytes: vmi.memory_bytes,
            termination_grace_period: vmi.grace,
            liveness: vmi.liveness,
            readiness: vmi.readiness,
            liveness_action,
            ignored: Vec::new(),
            warnings: Vec::new(),
            annotations,
        })
    }

    fn metadata(
        &mut self,
        m: &doc::Metadata,
    ) -> (Option<String>, BTreeMap<String, String>, LivenessAction) {
        self.rest(
            "metadata",
            &m.other,
            &["name", "annotations"],
            doc::Metadata::KNOWN_UNUSED,
        );
        let mut name = None;
        if let Some(n) = self.required("metadata.name", &m.name) {
            if is_dns_subdomain(n) {
                name = Some(n.clone());
            } else {
                self.error(
                    "metadata.name",
                    format!("{n:?} is not a valid name: lowercase letters, digits, '-' and '.', starting and ending with a letter or digit, at most 253 characters"),
                );
            }
        }
        let mut annotations = BTreeMap::new();
        let mut action = LivenessAction::Stop;
        if let Some(map) = self.get("metadata.annotations", &m.annotations) {
            for (k, v) in map {
                let key = key_text(k);
                let path = join("metadata.annotations", &key);
                let value = match v {
                    Value::String(s) => s.clone(),
                    Value::Number(n) => n.to_string(),
                    Value::Bool(b) => b.to_string(),
                    other => {
                        self.error(
                            &path,
                            format!("annotation values are strings, found {}", kind_of(other)),
                        );
                        continue;
                    }
                };
                if key == LIVENESS_ACTION_ANNOTATION {
                    match value.as_str() {
                        "stop" => action = LivenessAction::Stop,
                        "reset" => action = LivenessAction::Reset,
                        "shutdown" => action = LivenessAction::Shutdown,
                        other => self.error(
                            &path,
                            format!("unknown liveness action {other:?} (expected stop, reset or shutdown)"),
                        ),
                    }
                }
                annotations.insert(key, value);
            }
        }
        (name, annotations, action)
    }

    fn vm_spec(&mut self, s: &doc::VirtualMachineSpec) -> (RunStrategy, Option<VmiParts>) {
        self.rest(
            "spec",
            &s.other,
            &["running", "runStrategy", "template"],
            doc::VirtualMachineSpec::KNOWN_UNUSED,
        );
        let running = self.get("spec.running", &s.running).copied();
        let named = self.get("spec.runStrategy", &s.run_strategy).cloned();
        let mut strategy = RunStrategy::Halted;
        match (running, named, s.running.is_some() && s.run_strategy.is_some()) {
            (_, _, true) => self.error(
                "spec.running",
                "spec.running and spec.runStrategy are mutually exclusive; use spec.runStrategy",
            ),
            (Some(r), None, _) => {
                strategy = if r {
                    RunStrategy::Always
                } else {
                    RunStrategy::Halted
                }
            }
            (None, Some(n), _) => match RunStrategy::ALL.iter().find(|s| s.name() == n) {
                Some(s) => strategy = *s,
                None => self.error(
                    "spec.runStrategy",
                    format!("unknown runStrategy {n:?} (expected Always, RerunOnFailure, Once, Halted or Manual)"),
                ),
            },
            (None, None, _) => {
                if s.running.is_none() && s.run_strategy.is_none() {
                    self.warn(
                        "spec.runStrategy",
                        "neither spec.runStrategy nor spec.running is set: the VM is Halted (KubeVirt's default) and will not start",
                    );
                }
            }
            (Some(_), Some(_), false) => {}
        }
        let template = self.required("spec.template", &s.template);
        let vmi = template.and_then(|t| {
            self.rest(
                "spec.template",
                &t.other,
                &["spec"],
                doc::Template::KNOWN_UNUSED,
            );
            let spec = self.required("spec.template.spec", &t.spec);
            spec.and_then(|v| self.vmi_spec(v))
        });
        (strategy, vmi)
    }

    fn vmi_spec(&mut self, v: &doc::VmiSpec) -> Option<VmiParts> {
        const P: &str = "spec.template.spec";
        self.rest(
            P,
            &v.other,
            &[
                "domain",
                "livenessProbe",
                "readinessProbe",
                "terminationGracePeriodSeconds",
                "volumes",
            ],
            doc::VmiSpec::KNOWN_UNUSED,
        );
        let mut grace = Duration::from_secs(30);
        let gp = join(P, "terminationGracePeriodSeconds");
        if let Some(&g) = self.get(&gp, &v.termination_grace_period_seconds) {
            match u64::try_from(g) {
                Ok(g) => grace = Duration::from_secs(g),
                Err(_) => self.error(
                    &gp,
                    format!("must be greater than or equal to 0, found {g}"),
                ),
            }
        }
        let domain = self.required(&join(P, "domain"), &v.domain);
        let dom = domain.map(|d| self.domain(d));
        if let Some(volumes) = self.get(&join(P, "volumes"), &v.volumes) {
            for (i, vol) in volumes.iter().enumerate() {
                let mut sources = 0;
                for (k, _) in vol {
                    let key = key_text(k);
                    if key != "name" {
                        sources += 1;
                        self.ignored.push(join(&format!("{P}.volumes[{i}]"), &key));
                    }
                }
                if sources == 0 {
                    self.ignored.push(format!("{P}.volumes[{i}]"));
                }
            }
        }
        let ports = dom.as_ref().map(|d| d.ports.clone()).unwrap_or_default();
        let liveness = self
            .get(&join(P, "livenessProbe"), &v.liveness_probe)
            .and_then(|p| self.probe(&join(P, "livenessProbe"), p, ProbeKind::Liveness, &ports));
        let readiness = self
            .get(&join(P, "readinessProbe"), &v.readiness_probe)
            .and_then(|p| self.probe(&join(P, "readinessProbe"), p, ProbeKind::Readiness, &ports));
        let dom = dom?;
        Some(VmiParts {
            watchdog: dom.watchdog,
            memory_bytes: dom.memory_bytes,
            grace,
            liveness,
            readiness,
        })
    }

    fn domain(&mut self, d: &doc::Domain) -> DomainParts {
        const P: &str = "spec.template.spec.domain";
        self.rest(
            P,
            &d.other,
            &["resources", "memory", "devices"],
            doc::Domain::KNOWN_UNUSED,
        );
        let mut requested = None;
        if let Some(r) = self.get(&join(P, "resources"), &d.resources) {
            let rp = join(P, "resources");
            self.rest(&rp, &r.other, &["requests"], doc::Resources::KNOWN_UNUSED);
            let qp = join(&rp, "requests");
            if let Some(req) = self.get(&qp, &r.requests) {
                for (k, v) in req {
                    let key = key_text(k);
                    let path = join(&qp, &key);
                    if key == "memory" {
                        requested = self.quantity(&path, v);
                    } else {
                        self.ignored.push(path);
                    }
                }
            }
        }
        let mut guest = None;
        if let Some(m) = self.get(&join(P, "memory"), &d.memory) {
            let mp = join(P, "memory");
            self.rest(&mp, &m.other, &["guest"], doc::Memory::KNOWN_UNUSED);
            if let Some(g) = &m.guest {
                guest = self.quantity(&join(&mp, "guest"), g);
            }
        }
        let mut out = DomainParts {
            watchdog: None,
            memory_bytes: guest.or(requested),
            ports: Vec::new(),
        };
        let dp = join(P, "devices");
        let Some(devices) = self.required(&dp, &d.devices) else {
            return out;
        };
        self.rest(
            &dp,
            &devices.other,
            &["watchdog", "interfaces"],
            doc::Devices::KNOWN_UNUSED,
        );
        let ip = join(&dp, "interfaces");
        if let Some(ifaces) = self.get(&ip, &devices.interfaces) {
            self.ignored.push(ip.clone());
            for (i, iface) in ifaces.iter().enumerate() {
                let pp = format!("{ip}[{i}].ports");
                let Some(ports) = self.get(&pp, &iface.ports) else {
                    continue;
                };
                for (j, port) in ports.iter().enumerate() {
                    let p = format!("{pp}[{j}]");
                    let name = self.get(&join(&p, "name"), &port.name).cloned();
                    let number = match self.required(&join(&p, "port"), &port.port) {
                        Some(&n) => match u16::try_from(n) {
                            Ok(n) if n >= 1 => Some(n),
                            _ => {
                                self.error(
                                    &join(&p, "port"),
                                    format!("must be between 1 and 65535, inclusive, found {n}"),
                                );
                                None
                            }
                        },
                        None => None,
                    };
                    if let (Some(name), Some(number)) = (name, number) {
                        if !is_iana_svc_name(&name) {
                            self.error(&join(&p, "name"), iana_message(&name));
                        }
                        out.ports.push((name, number));
                    }
                }
            }
        }
        let wp = join(&dp, "watchdog");
        if let Some(w) = self.get(&wp, &devices.watchdog) {
            out.watchdog = self.watchdog(&wp, w);
        }
        out
    }

    fn watchdog(&mut self, wp: &str, w: &doc::Watchdog) -> Option<WatchdogSpec> {
        self.rest(
            wp,
            &w.other,
            &["name", "i6300esb", "diag288"],
            doc::Watchdog::KNOWN_UNUSED,
        );
        let name = match self.required(&join(wp, "name"), &w.name) {
            Some(n) if n.is_empty() => {
                self.error(&join(wp, "name"), "must not be empty");
                None
            }
            other => other.cloned(),
        };
        if w.diag288.is_some() {
            self.error(
                &join(wp, "diag288"),
                "diag288 is the s390x watchdog; vmpulse emulates the x86 i6300esb only",
            );
        }
        let ep = join(wp, "i6300esb");
        let action = match &w.i6300esb {
            None => {
                self.error(
                    &ep,
                    "required: vmpulse emulates the i6300esb watchdog only (diag288 is for s390x)",
                );
                None
            }
            Some(_) => self.get(&ep, &w.i6300esb).and_then(|e| {
                self.rest(&ep, &e.other, &["action"], doc::I6300Esb::KNOWN_UNUSED);
                let ap = join(&ep, "action");
                match self.get(&ap, &e.action).map(String::as_str) {
                    None | Some("") if !matches!(e.action, Some(Lenient::Bad { .. })) => {
                        Some(WatchdogAction::Reset)
                    }
                    None | Some("") => None,
                    Some(a @ ("poweroff" | "reset" | "shutdown")) => a.parse().ok(),
                    Some(a @ ("pause" | "none" | "inject-nmi" | "debug")) => {
                        self.warn(
                            &ap,
                            format!("{a:?} is a vmpulse extension; KubeVirt accepts only poweroff, reset and shutdown"),
                        );
                        a.parse().ok()
                    }
                    Some(a) => {
                        self.error(&ap, format!("unknown action {a:?}"));
                        None
                    }
                }
            }),
        };
        Some(WatchdogSpec {
            name: name?,
            action: action?,
        })
    }

    fn quantity(&mut self, path: &str, v: &Value) -> Option<u64> {
        let result = match v {
            Value::String(s) => quantity::parse_bytes(s),
            Value::Number(n) => match (n.as_u64(), n.as_i64(), n.as_f64()) {
                (Some(u), _, _) => Ok(u),
                (None, Some(i), _) => Err(QuantityError::Negative(i.to_string())),
                (None, None, Some(f)) if f.is_finite() => quantity::parse_bytes(&format!("{f}")),
                _ => Err(QuantityError::Syntax(n.to_string())),
            },
            other => {
                self.error(
                    path,
                    format!(
                        "expected a quantity such as 1Gi or 512Mi, found {}",
                        kind_of(other)
                    ),
                );
                return None;
            }
        };
        match result {
            Ok(b) => Some(b),
            Err(e) => {
                self.error(path, e.to_string());
                None
            }
        }
    }

    /// A non-negative int32 seconds/threshold field; 0 and absent give `None`
    /// unless `zero_is_value`.
    fn count(&mut self, path: &str, field: &Field<i64>, zero_is_value: bool) -> Option<u32> {
        let &n = self.get(path, field)?;
        if n < 0 {
            self.error(
                path,
                format!("must be greater than or equal to 0, found {n}"),
            );
            return None;
        }
        if n > i64::from(i32::MAX) {
            self.error(
                path,
                format!("must be at most {} (a 32-bit integer), found {n}", i32::MAX),
            );
            return None;
        }
        match n {
            0 if !zero_is_value => None,
            n => u32::try_from(n).ok(),
        }
    }

    fn probe(
        &mut self,
        pp: &str,
        p: &doc::Probe,
        kind: ProbeKind,
        ports: &[(String, u16)],
    ) -> Option<ProbeConfig> {
        self.rest(
            pp,
            &p.other,
            &[
                "initialDelaySeconds",
                "periodSeconds",
                "timeoutSeconds",
                "successThreshold",
                "failureThreshold",
                "httpGet",
                "tcpSocket",
                "exec",
                "guestAgentPing",
            ],
            doc::Probe::KNOWN_UNUSED,
        );
        let before = self.problems.len();
        let delay = self
            .count(
                &join(pp, "initialDelaySeconds"),
                &p.initial_delay_seconds,
                true,
            )
            .unwrap_or(0);
        let period = self
            .count(&join(pp, "periodSeconds"), &p.period_seconds, false)
            .unwrap_or(10);
        let timeout = self
            .count(&join(pp, "timeoutSeconds"), &p.timeout_seconds, false)
            .unwrap_or(1);
        let stp = join(pp, "successThreshold");
        let success = self.count(&stp, &p.success_threshold, false).unwrap_or(1);
        let failure = self
            .count(&join(pp, "failureThreshold"), &p.failure_threshold, false)
            .unwrap_or(3);

        let given: Vec<&str> = [
            ("httpGet", p.http_get.is_some()),
            ("tcpSocket", p.tcp_socket.is_some()),
            ("exec", p.exec.is_some()),
            ("guestAgentPing", p.guest_agent_ping.is_some()),
        ]
        .iter()
        .filter(|(_, set)| *set)
        .map(|(n, _)| *n)
        .collect();
        // Every handler given is checked, so all their problems are reported.
        let handlers: Vec<Option<ProbeHandler>> = given
            .iter()
            .map(|which| self.handler(pp, which, p, ports))
            .collect();
        let handler = match handlers.len() {
            // The builder's rule (ConfigError::NoHandler) reports it below.
            0 => None,
            1 => handlers.into_iter().next().flatten(),
            _ => {
                self.error(
                    pp,
                    format!(
                        "may not specify more than 1 handler type (found {})",
                        given.join(", ")
                    ),
                );
                None
            }
        };
        // One set of rules: the probes crate's builder checks what it can, and
        // each broken rule is reported at its field (one problem per field).
        let mut builder = ProbeConfigBuilder::without_handler(kind)
            .initial_delay(Duration::from_secs(u64::from(delay)))
            .period(Duration::from_secs(u64::from(period)))
            .timeout(Duration::from_secs(u64::from(timeout)))
            .success_threshold(success)
            .failure_threshold(failure);
        if let Some(h) = handler {
            builder = builder.handler(h);
        }
        for e in builder.problems() {
            if e == ConfigError::NoHandler && !given.is_empty() {
                // A handler was given, with problems already reported.
                continue;
            }
            let path = match e.field() {
                f if f.is_empty() => pp.to_string(),
                f => join(pp, &f),
            };
            if !self.problems.iter().any(|p| p.path == path) {
                self.error(&path, e.to_string());
            }
        }
        if self.problems.len() != before {
            return None;
        }
        builder.build().ok()
    }

    fn handler(
        &mut self,
        pp: &str,
        which: &str,
        p: &doc::Probe,
        ports: &[(String, u16)],
    ) -> Option<ProbeHandler> {
        let hp = join(pp, which);
        match which {
            "httpGet" => {
                let h = self.get(&hp, &p.http_get)?;
                self.rest(
                    &hp,
                    &h.other,
                    &["path", "port", "host", "scheme", "httpHeaders"],
                    doc::HttpGet::KNOWN_UNUSED,
                );
                let port = self.port(&join(&hp, "port"), h.port.as_ref(), ports);
                let host = self.host(&join(&hp, "host"), &h.host);
                // Spaces and control characters: the builder's rule.
                let path = self
                    .get(&join(&hp, "path"), &h.path)
                    .cloned()
                    .unwrap_or_default();
                let scheme = match self
                    .get(&join(&hp, "scheme"), &h.scheme)
                    .map(String::as_str)
                {
                    None | Some("HTTP") => Some(HttpScheme::Http),
                    Some("HTTPS") => Some(HttpScheme::Https),
                    Some(s) => {
                        self.error(
                            &join(&hp, "scheme"),
                            format!("unsupported scheme {s:?} (expected HTTP or HTTPS)"),
                        );
                        None
                    }
                };
                let mut headers = Vec::new();
                let hhp = join(&hp, "httpHeaders");
                if let Some(list) = self.get(&hhp, &h.http_headers) {
                    for (i, hd) in list.iter().enumerate() {
                        let ip = format!("{hhp}[{i}]");
                        self.rest(&ip, &hd.other, &["name", "value"], &[]);
                        // A missing name is reported here; the empty name
                        // keeps the indices of the builder's header rules.
                        let name = self.required(&join(&ip, "name"), &hd.name).cloned();
                        let value = self
                            .get(&join(&ip, "value"), &hd.value)
                            .cloned()
                            .unwrap_or_default();
                        headers.push((name.unwrap_or_default(), value));
                    }
                }
                Some(ProbeHandler::HttpGet {
                    path,
                    port: port?,
                    host: host?,
                    scheme: scheme?,
                    headers,
                })
            }
            "tcpSocket" => {
                let t = self.get(&hp, &p.tcp_socket)?;
                self.rest(&hp, &t.other, &["port", "host"], &[]);
                let port = self.port(&join(&hp, "port"), t.port.as_ref(), ports);
                let host = self.host(&join(&hp, "host"), &t.host);
                Some(ProbeHandler::TcpSocket {
                    port: port?,
                    host: host?,
                })
            }
            "exec" => {
                let e = self.get(&hp, &p.exec)?;
                self.rest(&hp, &e.other, &["command"], &[]);
                let cp = join(&hp, "command");
                // An empty command: the builder's rule.
                let command = self.required(&cp, &e.command)?;
                Some(ProbeHandler::Exec {
                    command: command.clone(),
                })
            }
            _ => {
                let m = self.get(&hp, &p.guest_agent_ping)?;
                self.rest(&hp, m, &[], &[]);
                Some(ProbeHandler::GuestAgentPing)
            }
        }
    }

    /// `host`: `Some(None)` when unset or empty (the VM's address).
    fn host(&mut self, path: &str, field: &Field<String>) -> Option<Option<String>> {
        if matches!(field, Some(Lenient::Bad { .. })) {
            self.get(path, field);
            return None;
        }
        match self.get(path, field) {
            None => Some(None),
            Some(h) if h.is_empty() => Some(None),
            // Which characters a host may hold: the builder's rule.
            Some(h) => Some(Some(h.clone())),
        }
    }

    /// An IntOrString port: a number 1–65535 or a declared IANA service name.
    fn port(&mut self, path: &str, v: Option<&Value>, ports: &[(String, u16)]) -> Option<u16> {
        match v {
            None | Some(Value::Null) => {
                self.error(path, MISSING);
                None
            }
            Some(Value::Number(n)) => match n.as_i64().and_then(|n| u16::try_from(n).ok()) {
                Some(p) if p >= 1 => Some(p),
                _ => {
                    self.error(
                        path,
                        format!("must be between 1 and 65535, inclusive, found {n}"),
                    );
                    None
                }
            },
            Some(Value::String(s)) => {
                if !is_iana_svc_name(s) {
                    self.error(path, iana_message(s));
                    return None;
                }
                match ports.iter().find(|(n, _)| n == s) {
                    Some((_, p)) => Some(*p),
                    None => {
                        self.error(
                            path,
                            format!("named port {s:?} is not declared in spec.template.spec.domain.devices.interfaces[].ports"),
                        );
                        None
                    }
                }
            }
            Some(other) => {
                self.error(
                    path,
                    format!("expected a port number or name, found {}", kind_of(other)),
                );
                None
            }
        }
    }
}

struct DomainParts {
    watchdog: Option<WatchdogSpec>,
    memory_bytes: Option<u64>,
    ports: Vec<(String, u16)>,
}

struct VmiParts {
    watchdog: Option<WatchdogSpec>,
    memory_bytes: Option<u64>,
    grace: Duration,
    liveness: Option<ProbeConfig>,
    readiness: Option<ProbeConfig>,
}

/// RFC 1123 subdomain, as Kubernetes requires of object names.
fn is_dns_subdomain(s: &str) -> bool {
    let alnum = |c: u8| c.is_ascii_lowercase() || c.is_ascii_digit();
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 253
        && alnum(b[0])
        && alnum(b[b.len() - 1])
        && b.iter().all(|&c| alnum(c) || c == b'-' || c == b'.')
}

/// Kubernetes' IANA_SVC_NAME: 1–15 of a-z, 0-9, '-', at least one letter, no
/// leading, trailing or doubled '-'.
fn is_iana_svc_name(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 15
        && b.iter()
            .all(|&c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-')
        && b.iter().any(|c| c.is_ascii_lowercase())
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
        && !s.contains("--")
}

fn iana_message(s: &str) -> String {
    format!("{s:?} is not a valid port name (IANA_SVC_NAME: at most 15 of a-z, 0-9 and '-', with a letter, no leading, trailing or double '-')")
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmpulse_probes::config::is_http_token;

    #[test]
    fn names_and_tokens() {
        assert!(is_dns_subdomain("example-watchdog"));
        assert!(is_dns_subdomain("a.b-c.1"));
        assert!(!is_dns_subdomain("Example"));
        assert!(!is_dns_subdomain("-a"));
        assert!(!is_dns_subdomain(""));
        assert!(is_iana_svc_name("http"));
        assert!(is_iana_svc_name("web-1"));
        assert!(!is_iana_svc_name("8080"));
        assert!(!is_iana_svc_name("a--b"));
        assert!(!is_iana_svc_name("-http"));
        assert!(!is_iana_svc_name("sixteen-chars-xx"));
        assert!(!is_iana_svc_name("HTTP"));
        assert!(is_http_token("X-Custom-Header"));
        assert!(!is_http_token("Bad Header"));
        assert!(!is_http_token("a:b"));
        assert!(!is_http_token(""));
        assert_eq!(distance("livenesProbe", "livenessProbe"), 1);
        assert_eq!(distance("abc", "abc"), 0);
    }
}
