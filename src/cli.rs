//! `vmpulse run MANIFEST.yaml`: boot a KubeVirt `VirtualMachine` on KVM with the built-in
//! test guest, the i6300esb watchdog and the manifest's probes, and carry out what they ask.
//!
//! # Settings
//!
//! The test guest's behaviour and the run's bounds come from flags; a manifest may give
//! defaults for them in annotations, and a flag always wins over its annotation:
//!
//! | flag | annotation | default |
//! | --- | --- | --- |
//! | `--guest-timeout SECONDS` | `vmpulse.io/guest-timeout` | 30 (Linux's heartbeat) |
//! | `--guest-kick-every SECONDS` (fractions allowed, at least 0.001; honoured to the millisecond) | `vmpulse.io/guest-kick-every` | a third of the timeout |
//! | `--guest-hang-after SECONDS` | `vmpulse.io/guest-hang-after` | never |
//! | `--guest-ignore-shutdown` | `vmpulse.io/guest-ignore-shutdown: "true"` | off |
//! | `--max-restarts N` | `vmpulse.io/max-restarts` | unbounded |
//! | `--run-for DURATION` (`500ms`, `10s`, `2m`, `1h`; a bare number is seconds) | `vmpulse.io/run-for` | unbounded |
//! | `--restart-backoff DURATION` | `vmpulse.io/restart-backoff` | 1s |
//!
//! Guest memory is the manifest's, clamped to 2–64 MiB (16 MiB when the manifest gives
//! none) and rounded up to a whole number of 4 KiB pages (`16M`, `12345Ki` and `1e7` are
//! not); a note says when it was clamped or rounded. Manifest fields the built-in guest
//! does not use are listed at the start.
//!
//! `vmpulse validate` makes the same checks of the annotations and of the memory
//! ([`prepare`] without flags), so a manifest that validates does not fail `run` on a
//! manifest problem. Values echoed in errors and notes are cut to 200 characters.
//!
//! # Probes and the guest agent
//!
//! Probes without a `host` go to the VM's address, 127.0.0.1 unless `--probe-host` lists
//! others (`127.0.0.1,::1`: every address must answer). Exec and `guestAgentPing` probes talk
//! to the QEMU guest agent through `--guest-agent PATH` (the Unix socket of
//! `qemu-ga -m unix-listen`) or, with `--agent-serial`, through the VM's second serial port
//! (COM2, I/O port 0x2F8), for guests running `qemu-ga -m isa-serial`.
//!
//! # Operations
//!
//! `--api-socket PATH` serves status and control (`vmpulse ctl`), `--metrics-addr HOST:PORT`
//! Prometheus metrics and `/readyz`, `/livez` ([`vmpulse_vmm::api`]); `--events-file PATH`
//! appends the JSON events to a file while the chosen format goes to stdout.
//!
//! # Output and exit code
//!
//! See [`vmpulse_vmm::events`] for the events and [`vmpulse_vmm::strategy`] for runStrategy.
//! The exit codes have one home: the README's "Exit codes" section (0 as asked, 1 error,
//! 2 bad manifest or flag, 3 final phase `Failed` with `--exit-code-from-phase`, 128 + N
//! signal N).

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::builder::TypedValueParser as _;

use vmpulse_manifest::limits::{clip, clip_quoted};
use vmpulse_manifest::{self as manifest, ManifestProblem, VmSpec};
use vmpulse_vmm::api::OpsConfig;
use vmpulse_vmm::events::{stdout_printer, Event, EventSink, Format, Printer, Tee};
use vmpulse_vmm::machine::GuestOptions;
use vmpulse_vmm::runner::{self, AgentSpec, KvmFactory, RunConfig};

/// Smallest guest memory given to the test guest.
pub const MIN_MEMORY: u64 = 2 << 20;
/// Largest guest memory given to the test guest.
pub const MAX_MEMORY: u64 = 64 << 20;
/// Guest memory when the manifest asks for none.
pub const DEFAULT_MEMORY: u64 = 16 << 20;
/// Guest memory is a whole number of these (KVM maps whole pages).
pub const PAGE_SIZE: u64 = 4096;
/// Linux's default heartbeat for the i6300esb.
pub const DEFAULT_GUEST_TIMEOUT: u32 = vmpulse_vmm::machine::DEFAULT_TIMEOUT_SECS;
/// The largest heartbeat: the preload (`T << 9`) must fit the device's 20 bits.
pub const MAX_GUEST_TIMEOUT: u32 = 2047;

const EXIT_HELP: &str =
    "Exit code: 0 when the run ended as the manifest and flags ask (the --run-for limit, \
runStrategy Halted, the VM stopped and runStrategy does not restart it, or --max-restarts \
reached) and no error was reported; 1 when an error was reported (the VM could not be created \
or failed, an action could not be carried out); 2 when the manifest does not validate or a \
flag or annotation is invalid; 3 with --exit-code-from-phase when the final phase is Failed; \
130 or 143 when SIGINT or SIGTERM ended the run (the VM is stopped cleanly first, `stopped` \
reason `signal`). The README's \"Exit codes\" section has the details.\n\nManifest annotations vmpulse.io/guest-timeout, \
vmpulse.io/guest-kick-every, vmpulse.io/guest-hang-after, vmpulse.io/guest-ignore-shutdown, \
vmpulse.io/max-restarts, vmpulse.io/run-for and vmpulse.io/restart-backoff give defaults for \
the flags of the same name; flags win.";

/// Arguments of `vmpulse run`.
#[derive(clap::Args, Debug)]
#[command(after_help = EXIT_HELP)]
pub struct RunArgs {
    /// The VirtualMachine manifest (YAML).
    pub manifest: PathBuf,
    /// Output: human-readable progress, or one JSON object per line.
    #[arg(long, default_value = "human", value_name = "FORMAT",
          value_parser = clap::builder::PossibleValuesParser::new(["human", "json"])
              .map(|s| s.parse::<Format>().expect("a listed format")))]
    pub events: Format,
    /// The test guest's watchdog heartbeat in seconds (Linux's `heartbeat`: the driver loads
    /// T << 9 into both stages, about T/2 s each, so the watchdog fires about T s after the
    /// last kick). Default 30.
    #[arg(long, value_name = "SECONDS")]
    pub guest_timeout: Option<u32>,
    /// How often the test guest kicks the watchdog, in seconds (fractions allowed, at least
    /// 0.001, rounded up to whole milliseconds). Default: a third of the timeout.
    #[arg(long, value_name = "SECONDS")]
    pub guest_kick_every: Option<String>,
    /// The test guest stops kicking this many seconds after each boot. Default: never.
    #[arg(long, value_name = "SECONDS")]
    pub guest_hang_after: Option<String>,
    /// The test guest ignores the power button (to see the forced poweroff after
    /// terminationGracePeriodSeconds).
    #[arg(long)]
    pub guest_ignore_shutdown: bool,
    /// Stop restarting after this many runStrategy restarts (warm resets do not count).
    #[arg(long, value_name = "N")]
    pub max_restarts: Option<u32>,
    /// End the whole run after this long (e.g. 500ms, 10s, 2m); the VM stops with reason
    /// `runtime`.
    #[arg(long, value_name = "DURATION")]
    pub run_for: Option<String>,
    /// The first restart back-off (doubling per consecutive restart, up to 16 times it).
    /// Default 1s.
    #[arg(long, value_name = "DURATION")]
    pub restart_backoff: Option<String>,
    /// The QEMU guest agent's Unix socket (`qemu-ga -m unix-listen -p PATH`), for exec and
    /// guestAgentPing probes.
    #[arg(long, value_name = "PATH", conflicts_with = "agent_serial")]
    pub guest_agent: Option<PathBuf>,
    /// Use the VM's COM2 (port 0x2F8) as the guest-agent channel, for guests running
    /// `qemu-ga -m isa-serial`.
    #[arg(long)]
    pub agent_serial: bool,
    /// The VM's address(es) for probes without a host, comma-separated (IPv6 literals
    /// allowed, e.g. `127.0.0.1,::1`); with several, every address must answer.
    #[arg(long, value_name = "ADDR[,ADDR...]", default_value = "127.0.0.1")]
    pub probe_host: String,
    /// Serve status and control (HTTP/1.1, JSON) on this Unix socket; see `vmpulse ctl`.
    #[arg(long, value_name = "PATH")]
    pub api_socket: Option<PathBuf>,
    /// Serve Prometheus metrics (`GET /metrics`) and `/readyz`, `/livez` on this TCP address.
    #[arg(long, value_name = "HOST:PORT")]
    pub metrics_addr: Option<String>,
    /// Also append every event as a JSON line to this file (stdout keeps `--events`).
    #[arg(long, value_name = "PATH")]
    pub events_file: Option<PathBuf>,
    /// Exit 3 when the run's final phase is `Failed` (a watchdog or liveness stop that was
    /// not restarted, or --max-restarts reached after failures).
    #[arg(long)]
    pub exit_code_from_phase: bool,
    /// Run the event loop and the vCPU thread under SCHED_FIFO at this priority (1-99), so
    /// that watchdog actions are carried out on time even while other work keeps every core
    /// busy. Needs CAP_SYS_NICE (or RLIMIT_RTPRIO); a guest that spins then holds its core
    /// at real-time priority. Default: the normal policy.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u8).range(1..=99))]
    pub realtime_priority: Option<u8>,
}

/// Resolve `--metrics-addr HOST:PORT` to one socket address.
pub fn parse_metrics_addr(text: &str) -> Result<std::net::SocketAddr, String> {
    use std::net::ToSocketAddrs;
    text.to_socket_addrs()
        .map_err(|e| format!("{text:?} is not HOST:PORT: {e}"))?
        .next()
        .ok_or_else(|| format!("{text:?} resolves to no address"))
}

/// The operations options of `args`.
fn ops_config(args: &RunArgs) -> Result<OpsConfig, SettingError> {
    let metrics_addr = match &args.metrics_addr {
        Some(a) => Some(parse_metrics_addr(a).map_err(|m| bad("--metrics-addr", m))?),
        None => None,
    };
    Ok(OpsConfig {
        api_socket: args.api_socket.clone(),
        metrics_addr,
        exit_code_from_phase: args.exit_code_from_phase,
        ..OpsConfig::default()
    })
}

/// A bad flag or annotation value (values quoted in the message are cut to 200 characters).
#[derive(Debug, thiserror::Error)]
#[error("{what}: {}", clip_quoted(message))]
pub struct SettingError {
    /// The flag or annotation.
    pub what: String,
    /// What is wrong.
    pub message: String,
}

fn bad(what: &str, message: impl Into<String>) -> SettingError {
    SettingError {
        what: what.to_string(),
        message: message.into(),
    }
}

/// Parse a number of seconds (`0.5`, `3`) into a duration.
pub fn parse_seconds(text: &str) -> Result<Duration, String> {
    let value: f64 = text
        .trim()
        .parse()
        .map_err(|_| format!("{text:?} is not a number of seconds"))?;
    if !(0.0..=1e9).contains(&value) {
        return Err(format!(
            "{text:?} is not a number of seconds between 0 and 1e9"
        ));
    }
    Ok(Duration::from_secs_f64(value))
}

/// Parse a duration: a number with a unit `ms`, `s`, `m` or `h` (`500ms`, `1.5s`, `2m`),
/// or a bare number of seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let (number, scale) = if let Some(n) = t.strip_suffix("ms") {
        (n, 0.001)
    } else if let Some(n) = t.strip_suffix('s') {
        (n, 1.0)
    } else if let Some(n) = t.strip_suffix('m') {
        (n, 60.0)
    } else if let Some(n) = t.strip_suffix('h') {
        (n, 3600.0)
    } else {
        (t, 1.0)
    };
    let value: f64 = number
        .trim()
        .parse()
        .map_err(|_| format!("{text:?} is not a duration (e.g. 500ms, 10s, 2m)"))?;
    let secs = value * scale;
    if !(0.0..=1e9).contains(&secs) {
        return Err(format!("{text:?} is out of range"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// Parse `--probe-host`: comma-separated IPv4/IPv6 addresses (brackets allowed around IPv6).
pub fn parse_probe_hosts(text: &str) -> Result<Vec<IpAddr>, String> {
    let mut out = Vec::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let bare = part
            .strip_prefix('[')
            .and_then(|p| p.strip_suffix(']'))
            .unwrap_or(part);
        let addr: IpAddr = bare
            .parse()
            .map_err(|_| format!("{part:?} is not an IP address"))?;
        if !out.contains(&addr) {
            out.push(addr);
        }
    }
    if out.is_empty() {
        return Err("no address given".into());
    }
    Ok(out)
}

/// The run's settings once flags, annotations and defaults are merged.
#[derive(Clone, Debug)]
pub struct Settings {
    /// The test guest.
    pub guest: GuestOptions,
    /// `--max-restarts`.
    pub max_restarts: Option<u32>,
    /// `--run-for`.
    pub run_for: Option<Duration>,
    /// `--restart-backoff`.
    pub backoff: Duration,
    /// `--probe-host`.
    pub probe_hosts: Vec<IpAddr>,
    /// Warnings for the user.
    pub notes: Vec<String>,
}

/// Merge flags over annotations over defaults.
pub fn settings(
    args: &RunArgs,
    notes: &BTreeMap<String, String>,
) -> Result<Settings, SettingError> {
    let ann = |key: &str| notes.get(&format!("vmpulse.io/{key}")).cloned();
    // A flag wins over its annotation; errors name whichever was used.
    let pick = |flag: Option<String>, key: &str| -> Option<(String, String)> {
        match flag {
            Some(v) => Some((format!("--{key}"), v)),
            None => ann(key).map(|v| (format!("annotation vmpulse.io/{key}"), v)),
        }
    };

    let timeout_secs = match pick(args.guest_timeout.map(|t| t.to_string()), "guest-timeout") {
        Some((what, v)) => {
            let t: u32 = v
                .trim()
                .parse()
                .map_err(|_| bad(&what, format!("{v:?} is not a whole number of seconds")))?;
            if !(1..=MAX_GUEST_TIMEOUT).contains(&t) {
                return Err(bad(&what, format!("{t} is not in 1..={MAX_GUEST_TIMEOUT}")));
            }
            t
        }
        None => DEFAULT_GUEST_TIMEOUT,
    };
    let mut warnings = Vec::new();
    // The guest's timer ticks every 10 ms, or every 1 ms for finer periods: the
    // period is honoured to the millisecond.
    let kick_every = match pick(args.guest_kick_every.clone(), "guest-kick-every") {
        Some((what, v)) => {
            let d = parse_seconds(&v).map_err(|m| bad(&what, m))?;
            if d < Duration::from_millis(1) {
                return Err(bad(&what, "must be at least 0.001 seconds"));
            }
            let whole_ms = Duration::from_millis(d.as_micros().div_ceil(1000) as u64);
            if whole_ms != d {
                warnings.push(format!(
                    "{what}: the guest kicks every {:.3} s (rounded up to whole milliseconds)",
                    whole_ms.as_secs_f64()
                ));
            }
            whole_ms
        }
        None => GuestOptions::default_kick_every(timeout_secs),
    };
    let hang_after = match pick(args.guest_hang_after.clone(), "guest-hang-after") {
        Some((what, v)) => Some(parse_seconds(&v).map_err(|m| bad(&what, m))?),
        None => None,
    };
    let ignore_shutdown = args.guest_ignore_shutdown
        || match ann("guest-ignore-shutdown") {
            Some(v) => match v.trim() {
                "true" => true,
                "false" => false,
                _ => {
                    return Err(bad(
                        "annotation vmpulse.io/guest-ignore-shutdown",
                        format!("{v:?} is not \"true\" or \"false\""),
                    ))
                }
            },
            None => false,
        };
    let max_restarts = match pick(args.max_restarts.map(|n| n.to_string()), "max-restarts") {
        Some((what, v)) => Some(
            v.trim()
                .parse::<u32>()
                .map_err(|_| bad(&what, format!("{v:?} is not a whole number")))?,
        ),
        None => None,
    };
    let run_for = match pick(args.run_for.clone(), "run-for") {
        Some((what, v)) => {
            let d = parse_duration(&v).map_err(|m| bad(&what, m))?;
            if d.is_zero() {
                return Err(bad(&what, "must be longer than 0"));
            }
            Some(d)
        }
        None => None,
    };
    let backoff = match pick(args.restart_backoff.clone(), "restart-backoff") {
        Some((what, v)) => parse_duration(&v).map_err(|m| bad(&what, m))?,
        None => Duration::from_secs(1),
    };
    let probe_hosts = parse_probe_hosts(&args.probe_host).map_err(|m| bad("--probe-host", m))?;

    // Both stages together last about the heartbeat (T << 9 ticks of ~0.98 ms each).
    if kick_every >= Duration::from_secs(u64::from(timeout_secs)) {
        warnings.push(format!(
            "the guest kicks every {:.3} s, not within the watchdog's {} s: it will fire without a hang",
            kick_every.as_secs_f64(),
            timeout_secs
        ));
    }
    for key in notes.keys().filter(|k| k.starts_with("vmpulse.io/")) {
        const KNOWN: [&str; 8] = [
            "vmpulse.io/guest-timeout",
            "vmpulse.io/guest-kick-every",
            "vmpulse.io/guest-hang-after",
            "vmpulse.io/guest-ignore-shutdown",
            "vmpulse.io/max-restarts",
            "vmpulse.io/run-for",
            "vmpulse.io/restart-backoff",
            "vmpulse.io/liveness-action",
        ];
        if !KNOWN.contains(&key.as_str()) {
            warnings.push(format!("unknown annotation {} is ignored", clip(key)));
        }
    }
    Ok(Settings {
        guest: GuestOptions {
            timeout_secs,
            kick_every,
            hang_after,
            ignore_shutdown,
            stage_timeout: None,
            rearm_after_nmi: false,
        },
        max_restarts,
        run_for,
        backoff,
        probe_hosts,
        notes: warnings,
    })
}

/// The guest memory the test guest gets for a manifest's request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GuestMemory {
    /// Bytes: a whole number of [`PAGE_SIZE`] pages in `MIN_MEMORY..=MAX_MEMORY`.
    pub bytes: u64,
    /// The request was outside `MIN_MEMORY..=MAX_MEMORY`.
    pub clamped: bool,
    /// The request (once clamped) was not a whole number of pages and was rounded up.
    pub rounded: bool,
}

/// The guest memory for a manifest's request: clamped, then rounded up to the page.
pub fn guest_memory(requested: Option<u64>) -> GuestMemory {
    match requested {
        None => GuestMemory {
            bytes: DEFAULT_MEMORY,
            clamped: false,
            rounded: false,
        },
        Some(m) => {
            let clamped = m.clamp(MIN_MEMORY, MAX_MEMORY);
            // MAX_MEMORY is a whole number of pages, so this stays within it.
            let bytes = clamped.div_ceil(PAGE_SIZE) * PAGE_SIZE;
            GuestMemory {
                bytes,
                clamped: clamped != m,
                rounded: bytes != clamped,
            }
        }
    }
}

/// The note that says how the request became the guest's memory, if it changed.
pub fn memory_note(requested: Option<u64>, memory: GuestMemory) -> Option<String> {
    let Some(asked) = requested else {
        return Some(format!(
            "the manifest asks for no memory; the test guest gets {}",
            size(memory.bytes)
        ));
    };
    let why = match (memory.clamped, memory.rounded) {
        (false, false) => return None,
        (true, false) => format!("clamped to {}..{}", size(MIN_MEMORY), size(MAX_MEMORY)),
        (false, true) => "rounded up to a whole number of 4 KiB pages".to_string(),
        (true, true) => format!(
            "clamped to {}..{} and rounded up to a whole number of 4 KiB pages",
            size(MIN_MEMORY),
            size(MAX_MEMORY)
        ),
    };
    Some(format!(
        "the manifest asks for {} of memory; the test guest gets {} ({why})",
        size(asked),
        size(memory.bytes)
    ))
}

impl RunArgs {
    /// The arguments of `vmpulse run MANIFEST` without any flag.
    pub fn without_flags(manifest: PathBuf) -> RunArgs {
        RunArgs {
            manifest,
            events: Format::Human,
            guest_timeout: None,
            guest_kick_every: None,
            guest_hang_after: None,
            guest_ignore_shutdown: false,
            max_restarts: None,
            run_for: None,
            restart_backoff: None,
            guest_agent: None,
            agent_serial: false,
            probe_host: "127.0.0.1".into(),
            api_socket: None,
            metrics_addr: None,
            events_file: None,
            exit_code_from_phase: false,
            realtime_priority: None,
        }
    }
}

/// Everything `vmpulse run` decides from a valid manifest and its flags before it starts:
/// the settings (flags over annotations) and the guest memory. `vmpulse validate` calls
/// it with [`RunArgs::without_flags`], so the two refuse the same manifests.
pub fn prepare(args: &RunArgs, spec: &VmSpec) -> Result<(Settings, GuestMemory), SettingError> {
    let settings = settings(args, &spec.annotations)?;
    Ok((settings, guest_memory(spec.memory_bytes)))
}

fn print_problems(path: &Path, problems: &[ManifestProblem]) {
    eprintln!("{}: the manifest does not validate:", path.display());
    for p in problems {
        eprintln!("  {p}");
    }
}

/// A size as people write it: `64 MiB`, `1 GiB`, or bytes when not a whole MiB.
fn size(bytes: u64) -> String {
    if bytes >= 1 << 30 && bytes % (1 << 30) == 0 {
        format!("{} GiB", bytes >> 30)
    } else if bytes % (1 << 20) == 0 {
        format!("{} MiB", bytes >> 20)
    } else {
        format!("{bytes} bytes")
    }
}

/// The notes shown before the run: ignored fields, memory, settings.
fn start_notes(spec: &VmSpec, memory: GuestMemory, s: &Settings) -> Vec<String> {
    let mut notes: Vec<String> = spec
        .warnings
        .iter()
        .map(|w| format!("manifest: {w}"))
        .collect();
    if !spec.ignored.is_empty() {
        notes.push(format!(
            "ignored by the built-in test guest: {}",
            spec.ignored.join(", ")
        ));
    }
    notes.extend(memory_note(spec.memory_bytes, memory));
    if spec.watchdog.is_none() {
        notes.push(
            "the manifest has no watchdog: the test guest's i6300esb still exists, with action none"
                .into(),
        );
    }
    let hang = match s.guest.hang_after {
        Some(h) => format!("hangs {:.3} s after each boot", h.as_secs_f64()),
        None => "never hangs".into(),
    };
    notes.push(format!(
        "VM {:?}: runStrategy {:?}, test guest: heartbeat {} s, kicks every {:.3} s, {}{}",
        clip(&spec.name),
        spec.run_strategy,
        s.guest.timeout_secs,
        s.guest.kick_every.as_secs_f64(),
        hang,
        if s.guest.ignore_shutdown {
            ", ignores the power button"
        } else {
            ""
        }
    ));
    notes.extend(s.notes.iter().cloned());
    notes
}

/// Entry point of `vmpulse run`.
pub fn run(args: RunArgs) -> ExitCode {
    let spec = match manifest::load(&args.manifest) {
        Ok(spec) => spec,
        Err(problems) => {
            print_problems(&args.manifest, &problems);
            return ExitCode::from(2);
        }
    };
    let (settings, memory) = match prepare(&args, &spec) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("{}: {e}", args.manifest.display());
            return ExitCode::from(2);
        }
    };
    let ops = match ops_config(&args) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("{}: {e}", args.manifest.display());
            return ExitCode::from(2);
        }
    };
    let stdout = stdout_printer(args.events).with_vm(&spec.name);
    let mut printer: Box<dyn EventSink> = match &args.events_file {
        Some(path) => {
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path);
            match file {
                Ok(f) => {
                    let json = Printer::new(f, Format::Json)
                        .with_vm(&spec.name)
                        .with_origin(stdout.origin());
                    Box::new(Tee(stdout, json))
                }
                Err(e) => {
                    eprintln!("--events-file {}: {e}", path.display());
                    return ExitCode::from(2);
                }
            }
        }
        None => Box::new(stdout),
    };
    for message in start_notes(&spec, memory, &settings) {
        printer.emit(Event::Info { message });
    }
    let probes: Vec<_> = spec
        .liveness
        .iter()
        .chain(&spec.readiness)
        .cloned()
        .collect();
    let agent = match (&args.guest_agent, args.agent_serial) {
        (Some(path), _) => AgentSpec::Socket(path.clone()),
        (None, true) => AgentSpec::Com2,
        (None, false) => AgentSpec::None,
    };
    let needs_agent = probes.iter().any(|p| p.handler().needs_agent());
    if needs_agent && agent == AgentSpec::None {
        printer.emit(Event::Info {
            message: "exec and guestAgentPing probes need the guest agent (--guest-agent PATH or \
                      --agent-serial); without it they fail"
                .into(),
        });
    }
    let cfg = RunConfig {
        vm_name: spec.name.clone(),
        strategy: spec.run_strategy,
        // The name is echoed in every `watchdog` event: cut like any echoed value.
        watchdog: spec
            .watchdog
            .as_ref()
            .map(|w| (clip(&w.name).into_owned(), w.action)),
        liveness_action: spec.liveness_action,
        grace_period: spec.termination_grace_period,
        probes,
        probe_addresses: settings.probe_hosts.clone(),
        agent,
        max_restarts: settings.max_restarts,
        run_for: settings.run_for,
        backoff: settings.backoff,
        handle_signals: true,
        ops,
        realtime_priority: args.realtime_priority,
    };
    let mut factory = KvmFactory {
        memory_bytes: memory.bytes,
        guest: settings.guest.clone(),
    };
    let outcome = runner::run(cfg, &mut factory, &mut printer);
    ExitCode::from(outcome.exit_code)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Wrap {
        #[command(flatten)]
        args: RunArgs,
    }

    fn args(extra: &[&str]) -> RunArgs {
        let mut argv = vec!["vmpulse", "vm.yaml"];
        argv.extend_from_slice(extra);
        Wrap::try_parse_from(argv).unwrap().args
    }

    #[test]
    fn durations_and_seconds() {
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("10s").unwrap(), Duration::from_secs(10));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("1h").unwrap(), Duration::from_secs(3600));
        assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
        assert_eq!(parse_duration("7").unwrap(), Duration::from_secs(7));
        assert!(parse_duration("ten").is_err());
        assert!(parse_duration("-1s").is_err());
        assert!(parse_duration("5x").is_err());
        assert_eq!(parse_seconds("0.5").unwrap(), Duration::from_millis(500));
        assert!(parse_seconds("inf").is_err());
        assert!(parse_seconds("NaN").is_err());
    }

    #[test]
    fn probe_hosts() {
        assert_eq!(
            parse_probe_hosts("127.0.0.1,::1").unwrap(),
            vec![
                "127.0.0.1".parse::<IpAddr>().unwrap(),
                "::1".parse().unwrap()
            ]
        );
        assert_eq!(
            parse_probe_hosts("[::1]").unwrap(),
            vec!["::1".parse::<IpAddr>().unwrap()]
        );
        assert!(parse_probe_hosts("localhost").is_err());
        assert!(parse_probe_hosts(",").is_err());
    }

    #[test]
    fn defaults_without_flags_or_annotations() {
        let s = settings(&args(&[]), &BTreeMap::new()).unwrap();
        assert_eq!(s.guest.timeout_secs, 30);
        assert_eq!(s.guest.kick_every, Duration::from_secs(10));
        assert_eq!(s.guest.hang_after, None);
        assert!(!s.guest.ignore_shutdown);
        assert_eq!(s.max_restarts, None);
        assert_eq!(s.run_for, None);
        assert_eq!(s.backoff, Duration::from_secs(1));
        assert_eq!(s.probe_hosts, vec!["127.0.0.1".parse::<IpAddr>().unwrap()]);
    }

    #[test]
    fn annotations_give_defaults_and_flags_win() {
        let notes: BTreeMap<String, String> = [
            ("vmpulse.io/guest-timeout", "2"),
            ("vmpulse.io/guest-kick-every", "0.5"),
            ("vmpulse.io/guest-hang-after", "3"),
            ("vmpulse.io/guest-ignore-shutdown", "true"),
            ("vmpulse.io/max-restarts", "1"),
            ("vmpulse.io/run-for", "20s"),
            ("vmpulse.io/restart-backoff", "200ms"),
            ("other.io/thing", "x"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let s = settings(&args(&[]), &notes).unwrap();
        assert_eq!(s.guest.timeout_secs, 2);
        assert_eq!(s.guest.kick_every, Duration::from_millis(500));
        assert_eq!(s.guest.hang_after, Some(Duration::from_secs(3)));
        assert!(s.guest.ignore_shutdown);
        assert_eq!(s.max_restarts, Some(1));
        assert_eq!(s.run_for, Some(Duration::from_secs(20)));
        assert_eq!(s.backoff, Duration::from_millis(200));

        let s = settings(
            &args(&[
                "--guest-timeout",
                "5",
                "--run-for",
                "1m",
                "--max-restarts",
                "0",
            ]),
            &notes,
        )
        .unwrap();
        assert_eq!(s.guest.timeout_secs, 5);
        assert_eq!(s.run_for, Some(Duration::from_secs(60)));
        assert_eq!(s.max_restarts, Some(0));
        assert_eq!(s.guest.kick_every, Duration::from_millis(500));
    }

    #[test]
    fn bad_values_name_their_source() {
        let e = settings(&args(&["--guest-timeout", "0"]), &BTreeMap::new()).unwrap_err();
        assert_eq!(e.to_string(), "--guest-timeout: 0 is not in 1..=2047");
        let mut notes = BTreeMap::new();
        notes.insert("vmpulse.io/run-for".to_string(), "soon".to_string());
        let e = settings(&args(&[]), &notes).unwrap_err();
        assert_eq!(
            e.to_string(),
            "annotation vmpulse.io/run-for: \"soon\" is not a duration (e.g. 500ms, 10s, 2m)"
        );
        let e = settings(&args(&["--guest-kick-every", "0"]), &BTreeMap::new()).unwrap_err();
        assert_eq!(e.what, "--guest-kick-every");
        let e = settings(&args(&["--guest-kick-every", "0.0009"]), &BTreeMap::new()).unwrap_err();
        assert_eq!(
            e.to_string(),
            "--guest-kick-every: must be at least 0.001 seconds"
        );
    }

    #[test]
    fn kick_periods_below_the_10_ms_tick_are_kept_to_the_millisecond() {
        for (text, ms, rounded) in [
            ("0.001", 1, false),
            ("0.002", 2, false),
            ("0.005", 5, false),
            ("0.015", 15, false),
            ("0.0015", 2, true),
            ("0.0101", 11, true),
        ] {
            let s = settings(&args(&["--guest-kick-every", text]), &BTreeMap::new()).unwrap();
            assert_eq!(s.guest.kick_every, Duration::from_millis(ms), "{text}");
            assert_eq!(
                s.notes
                    .iter()
                    .any(|n| n.contains("rounded up to whole milliseconds")),
                rounded,
                "{text}: {:?}",
                s.notes
            );
        }
    }

    #[test]
    fn kicking_too_rarely_is_warned_about() {
        let s = settings(
            &args(&["--guest-timeout", "1", "--guest-kick-every", "3"]),
            &BTreeMap::new(),
        )
        .unwrap();
        assert_eq!(s.notes.len(), 1);
        assert!(s.notes[0].contains("fire without a hang"), "{}", s.notes[0]);
    }

    #[test]
    fn agent_flags_conflict() {
        let argv = [
            "vmpulse",
            "vm.yaml",
            "--guest-agent",
            "/tmp/x",
            "--agent-serial",
        ];
        assert!(Wrap::try_parse_from(argv).is_err());
    }

    #[test]
    fn operations_flags() {
        let a = args(&[
            "--api-socket",
            "/run/vm.sock",
            "--metrics-addr",
            "127.0.0.1:9100",
            "--exit-code-from-phase",
        ]);
        let o = ops_config(&a).unwrap();
        assert_eq!(o.api_socket, Some(PathBuf::from("/run/vm.sock")));
        assert_eq!(o.metrics_addr, Some("127.0.0.1:9100".parse().unwrap()));
        assert!(o.exit_code_from_phase);
        let o = ops_config(&args(&[])).unwrap();
        assert!(o.api_socket.is_none() && o.metrics_addr.is_none() && !o.exit_code_from_phase);
        let e = ops_config(&args(&["--metrics-addr", "9100"])).unwrap_err();
        assert_eq!(e.what, "--metrics-addr");
        assert_eq!(
            parse_metrics_addr("[::1]:0").unwrap(),
            "[::1]:0".parse().unwrap()
        );
    }

    #[test]
    fn sizes_read_well() {
        assert_eq!(size(1 << 30), "1 GiB");
        assert_eq!(size(64 << 20), "64 MiB");
        assert_eq!(size(3 << 29), "1536 MiB");
        assert_eq!(size(1000), "1000 bytes");
    }

    #[test]
    fn memory_is_clamped_and_rounded_to_the_page() {
        let m = |bytes, clamped, rounded| GuestMemory {
            bytes,
            clamped,
            rounded,
        };
        let cases = [
            (None, m(16 << 20, false, false)),
            (Some(1 << 30), m(64 << 20, true, false)),
            (Some(1 << 20), m(2 << 20, true, false)),
            (Some(8 << 20), m(8 << 20, false, false)),
            // 16M, 12345Ki and 1e7: not whole pages.
            (Some(16_000_000), m(16_003_072, false, true)),
            (Some(12345 << 10), m(12_644_352, false, true)),
            (Some(10_000_000), m(10_002_432, false, true)),
            (Some((64 << 20) + 1), m(64 << 20, true, false)),
            (Some(u64::MAX), m(64 << 20, true, false)),
        ];
        for (asked, want) in cases {
            let got = guest_memory(asked);
            assert_eq!(got, want, "{asked:?}");
            assert_eq!(got.bytes % PAGE_SIZE, 0);
        }
        let note = memory_note(Some(16_000_000), guest_memory(Some(16_000_000))).unwrap();
        assert_eq!(
            note,
            "the manifest asks for 16000000 bytes of memory; the test guest gets 16003072 \
             bytes (rounded up to a whole number of 4 KiB pages)"
        );
        assert_eq!(
            memory_note(Some(8 << 20), guest_memory(Some(8 << 20))),
            None
        );
        assert!(memory_note(Some(1 << 30), guest_memory(Some(1 << 30)))
            .unwrap()
            .contains("clamped to 2 MiB..64 MiB)"));
    }

    #[test]
    fn echoed_values_are_cut_to_200_characters() {
        let long = "9".repeat(10_000);
        let mut notes = BTreeMap::new();
        notes.insert("vmpulse.io/run-for".to_string(), long.clone());
        let e = settings(&args(&[]), &notes).unwrap_err().to_string();
        assert!(e.len() < 300, "{} characters", e.len());
        assert!(e.contains(&format!("\"{}…\"", &long[..199])), "{e}");
        notes.clear();
        notes.insert(format!("vmpulse.io/{long}"), "x".to_string());
        let s = settings(&args(&[]), &notes).unwrap();
        assert!(s.notes[0].len() < 300, "{}", s.notes[0]);
    }
}
