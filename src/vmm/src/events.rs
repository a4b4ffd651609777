//! What `vmpulse run` reports, and how: human-readable lines or one JSON object per line.
//!
//! Every event carries the time since the run started. With `--events json` each event is
//! one line holding a JSON object with `time_ms` (milliseconds since the run started),
//! `timestamp` (the wall-clock time, RFC 3339 in UTC with milliseconds), `vm` (the
//! manifest's name), `type`, and the fields of its type:
//!
//! | `type` | fields |
//! | --- | --- |
//! | `info` | `message` (notes before the start: ignored manifest fields, clamped memory, …) |
//! | `started` | `boot` (1, 2, … at every boot, warm resets included) |
//! | `console` | `line` (one line the guest printed on COM1) |
//! | `watchdog` | `action`, `device` (the watchdog's name from the manifest), `late_ms` (a float, microsecond precision: how long after the device's stage-2 deadline the action was carried out; see below) |
//! | `liveness` | `action` (`stop`, `reset`, `shutdown`), `message`: the liveness probe failed |
//! | `stopped` | `reason` (`watchdog`, `liveness`, `guest`, `shutdown`, `runtime`, `error`, `signal`, `api`), optional `trigger` (`watchdog`, `liveness`, `api`) and `forced` (shutdowns only) |
//! | `restart` | `count` (1, 2, …), `delay_ms` (the back-off before the new VM starts; emitted when the restart is decided) |
//! | `probe` | `probe`, `result` (`success`/`failure`/`error`), `message`, `address`, `duration_ms` (a float, microsecond precision), for exec `exit_code` and `output` |
//! | `ready` | `ready` (true/false), on every readiness transition |
//! | `error` | `message` |
//! | `summary` | the run in figures, just before `finished` (see [`Summary`]) |
//! | `finished` | `exit_code`, `message`: the last line of every run |
//!
//! Absent optional fields are left out, never `null` — with one exception: a `probe`
//! event always has `address`, `null` for exec and guest-agent probes (which have none),
//! so that scripts can rely on the field.
//!
//! # `late_ms`: how late the watchdog's action was
//!
//! The i6300esb fixes each stage-2 deadline when the stage begins, in the nanoseconds of the
//! VMM's monotonic clock. `late_ms` runs from that deadline to the moment the action took
//! effect: `poweroff` when the vCPU thread has ended, `reset` when the vCPU thread has
//! reloaded the machine, `inject-nmi` when the vCPU thread has issued `KVM_NMI`, `pause` when
//! the vCPU is parked (each as the vCPU thread stamps it, not when the run loop hears of it),
//! `shutdown` when the power button is pressed; for `none` and `debug`, when the run loop
//! has handled the expiry. It therefore covers the timerfd's wake-up, whatever else the loop
//! was doing, the vCPU's kick out of `KVM_RUN` and the vCPU's work.
//! The `watchdog` event is written after the action (its `time_ms` is still the instant the
//! loop took the expiry), so it never comes after the events the action caused: the order
//! stays `watchdog`, then `ready`/`stopped`/`started`. The same figure feeds the metric
//! `vmpulse_watchdog_action_lateness_seconds`. Every `watchdog` event from `vmpulse run` has
//! the field; a [`crate::controller::Controller`] used on its own leaves it out, since it
//! has no clock.

use std::collections::BTreeMap;
use std::io::{self, Write};
use std::time::Instant;

use serde::{Serialize, Serializer};

/// Why a run of the VM ended (`stopped`'s `reason`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StopReason {
    /// The watchdog's `poweroff` action stopped it.
    Watchdog,
    /// A liveness failure stopped it.
    Liveness,
    /// The guest powered itself off.
    Guest,
    /// A graceful shutdown request ended it (`forced` says whether the grace period ran out).
    Shutdown,
    /// `--run-for` ran out.
    Runtime,
    /// The VM failed (vCPU error).
    Error,
    /// vmpulse itself was asked to stop (SIGINT or SIGTERM).
    Signal,
    /// `PUT /vm/stop` on the API socket.
    Api,
}

impl StopReason {
    /// The name used in JSON events.
    pub fn name(self) -> &'static str {
        match self {
            StopReason::Watchdog => "watchdog",
            StopReason::Liveness => "liveness",
            StopReason::Guest => "guest",
            StopReason::Shutdown => "shutdown",
            StopReason::Runtime => "runtime",
            StopReason::Error => "error",
            StopReason::Signal => "signal",
            StopReason::Api => "api",
        }
    }
}

/// What asked the action router for an action.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Cause {
    /// The i6300esb's stage 2 ran out.
    Watchdog,
    /// The liveness probe reached its failure threshold.
    Liveness,
    /// A request on the API socket (`PUT /vm/...`).
    Api,
}

/// One thing that happened during a run.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event {
    /// A note before or during the run.
    Info {
        /// The note.
        message: String,
    },
    /// The guest (re)booted.
    Started {
        /// 1 for the first boot, then one more at every boot, warm resets included.
        boot: u32,
    },
    /// One console line of the guest.
    Console {
        /// The line, without its newline.
        line: String,
    },
    /// The watchdog fired.
    Watchdog {
        /// The action being carried out (QEMU's name).
        action: String,
        /// The watchdog's name in the manifest.
        device: String,
        /// How long after the device's deadline the action was carried out, in
        /// microseconds (JSON: `late_ms`, a float); filled in by the runner, `None` (left
        /// out) from a controller alone.
        #[serde(
            rename = "late_ms",
            skip_serializing_if = "Option::is_none",
            serialize_with = "opt_micros_as_millis"
        )]
        late_us: Option<u64>,
    },
    /// The liveness probe failed (threshold reached).
    Liveness {
        /// `stop`, `reset` or `shutdown`.
        action: String,
        /// The last failure's message.
        message: String,
        /// The failure threshold that was reached, for the human line; not in JSON.
        #[serde(skip)]
        failures: Option<u32>,
    },
    /// The VM stopped.
    Stopped {
        /// Why.
        reason: StopReason,
        /// What asked for the stop, when it was the action router.
        #[serde(skip_serializing_if = "Option::is_none")]
        trigger: Option<Cause>,
        /// For shutdowns: whether the grace period ran out and the VM was powered off.
        #[serde(skip_serializing_if = "Option::is_none")]
        forced: Option<bool>,
    },
    /// runStrategy restarts the VM.
    Restart {
        /// How many restarts so far, this one included.
        count: u32,
        /// The back-off waited before this restart, in milliseconds.
        delay_ms: u64,
    },
    /// One completed probe attempt.
    Probe {
        /// `liveness` or `readiness`.
        probe: String,
        /// `success`, `failure`, or `error` (an HTTP error after the response
        /// headers: counted toward neither threshold, as in the kubelet).
        result: String,
        /// What happened.
        message: String,
        /// The address probed (`null` for exec and guest-agent probes, which have none).
        address: Option<String>,
        /// Exec probes: the exit code.
        #[serde(skip_serializing_if = "Option::is_none")]
        exit_code: Option<i32>,
        /// Exec probes: an excerpt of the output.
        #[serde(skip_serializing_if = "Option::is_none")]
        output: Option<String>,
        /// How long the attempt took, in microseconds (JSON: `duration_ms`, a float).
        #[serde(rename = "duration_ms", serialize_with = "micros_as_millis")]
        duration_us: u64,
        /// Consecutive results of this kind and the threshold they count towards, for the
        /// human line (`(2/3)`); filled in by the run's status keeper, not in JSON.
        #[serde(skip)]
        streak: Option<(u32, u32)>,
    },
    /// The Ready condition changed.
    Ready {
        /// The new value.
        ready: bool,
    },
    /// Something went wrong.
    Error {
        /// What.
        message: String,
    },
    /// The run in figures, just before `finished`.
    Summary(Summary),
    /// The run is over.
    Finished {
        /// The process exit code that follows.
        exit_code: u8,
        /// Why the run ended.
        message: String,
    },
}

impl Event {
    /// The event as one human-readable line (without the time prefix).
    pub fn human(&self) -> String {
        match self {
            Event::Info { message } => format!("note: {message}"),
            Event::Started { boot } => format!("VM started (boot {boot})"),
            Event::Console { line } => format!("guest | {line}"),
            Event::Watchdog {
                action,
                device,
                late_us,
            } => match late_us {
                Some(us) => format!(
                    "watchdog {device:?} fired: action {action}, carried out {}.{:03} ms after the deadline",
                    us / 1000,
                    us % 1000
                ),
                None => format!("watchdog {device:?} fired: action {action}"),
            },
            Event::Liveness {
                action,
                message,
                failures,
            } => {
                let consequence = match action.as_str() {
                    "stop" => "the VM will be stopped",
                    "reset" => "the VM will be reset",
                    "shutdown" => "the VM will be shut down",
                    _ => "the VM's liveness action follows",
                };
                match failures {
                    Some(n) => {
                        format!("Liveness probe failed {n} times: {consequence} ({message})")
                    }
                    None => format!("Liveness probe failed: {consequence} ({message})"),
                }
            }
            Event::Stopped {
                reason,
                trigger,
                forced,
            } => {
                let mut s = format!("VM stopped: {}", reason.name());
                match (reason, trigger) {
                    (StopReason::Watchdog, Some(Cause::Watchdog))
                    | (StopReason::Liveness, Some(Cause::Liveness))
                    | (_, None) => {}
                    (_, Some(Cause::Watchdog)) => s.push_str(" (asked by the watchdog)"),
                    (_, Some(Cause::Liveness)) => s.push_str(" (asked by the liveness probe)"),
                    (_, Some(Cause::Api)) => s.push_str(" (asked through the API)"),
                }
                match forced {
                    Some(true) => s.push_str(", forced after the grace period"),
                    Some(false) => s.push_str(", the guest powered off"),
                    None => {}
                }
                s
            }
            Event::Restart { count, delay_ms } => {
                format!("runStrategy restarts the VM in {delay_ms} ms (restart {count})")
            }
            Event::Probe {
                probe,
                result,
                message,
                address,
                exit_code,
                output,
                duration_us: _,
                streak,
            } => {
                let mut s = capitalized(probe);
                s.push_str(" probe ");
                s.push_str(match result.as_str() {
                    "success" => "succeeded",
                    "failure" => "failed",
                    other => other,
                });
                if let Some((n, threshold)) = streak {
                    s.push_str(&format!(" ({n}/{threshold})"));
                }
                s.push_str(": ");
                s.push_str(message);
                if let Some(a) = address {
                    s.push_str(&format!(" [{a}]"));
                }
                if let Some(c) = exit_code {
                    s.push_str(&format!(" exit code {c}"));
                }
                if let Some(o) = output {
                    s.push_str(&format!(" output {o:?}"));
                }
                s
            }
            Event::Ready { ready } => {
                if *ready {
                    "VM is ready".to_string()
                } else {
                    "VM is not ready".to_string()
                }
            }
            Event::Error { message } => format!("error: {message}"),
            Event::Summary(summary) => summary.human(),
            Event::Finished { exit_code, message } => {
                format!("run finished: {message} (exit code {exit_code})")
            }
        }
    }
}

/// The final phase of a run, as KubeVirt would set the VMI's.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum FinalPhase {
    /// The VM ended as asked: the guest powered off, a clean shutdown, `--run-for`, a signal
    /// or an API stop (or it was never started).
    Succeeded,
    /// The last stop was a failure (see [`crate::strategy::is_failure`]) that was not
    /// restarted, or the run could not go on.
    Failed,
}

impl FinalPhase {
    /// `Succeeded` or `Failed`.
    pub fn name(self) -> &'static str {
        match self {
            FinalPhase::Succeeded => "Succeeded",
            FinalPhase::Failed => "Failed",
        }
    }
}

/// One probe in the [`Summary`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ProbeSummary {
    /// `liveness` or `readiness`.
    #[serde(rename = "type")]
    pub probe_type: String,
    /// The handler: `httpGet`, `tcpSocket`, `exec` or `guestAgentPing`.
    pub kind: String,
    /// Completed attempts.
    pub attempts: u64,
    /// Failed attempts.
    pub failures: u64,
    /// The last failure's message (`null` when it never failed).
    pub last_failure: Option<String>,
}

/// The run in figures: the `summary` event, reported just before `finished`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Summary {
    /// Boots, warm resets included.
    pub boots: u32,
    /// runStrategy restarts.
    pub restarts: u32,
    /// Watchdog expiries by action name.
    pub watchdog_expiries: BTreeMap<String, u64>,
    /// Every probe of the manifest.
    pub probes: Vec<ProbeSummary>,
    /// Time spent Ready, in milliseconds.
    pub ready_ms: u64,
    /// `Succeeded` or `Failed`.
    pub phase: FinalPhase,
}

impl Summary {
    /// The summary as one human-readable line.
    pub fn human(&self) -> String {
        let mut s = format!(
            "summary: VM {}, {} boot(s), {} restart(s), ready for {}.{:03} s",
            self.phase.name(),
            self.boots,
            self.restarts,
            self.ready_ms / 1000,
            self.ready_ms % 1000
        );
        if self.watchdog_expiries.is_empty() {
            s.push_str(", no watchdog expiry");
        } else {
            let list: Vec<String> = self
                .watchdog_expiries
                .iter()
                .map(|(a, n)| format!("{a} {n}"))
                .collect();
            s.push_str(&format!(", watchdog expiries: {}", list.join(", ")));
        }
        for p in &self.probes {
            s.push_str(&format!(
                "; {} probe ({}): {} attempt(s), {} failure(s)",
                p.probe_type, p.kind, p.attempts, p.failures
            ));
            if let Some(m) = &p.last_failure {
                s.push_str(&format!(", last failure: {m}"));
            }
        }
        s
    }
}

fn micros_as_millis<S: Serializer>(us: &u64, s: S) -> Result<S::Ok, S::Error> {
    // Exact to the microsecond: the float is the integer count of microseconds over 1000.
    s.serialize_f64(*us as f64 / 1000.0)
}

fn opt_micros_as_millis<S: Serializer>(us: &Option<u64>, s: S) -> Result<S::Ok, S::Error> {
    match us {
        Some(us) => micros_as_millis(us, s),
        None => s.serialize_none(),
    }
}

fn capitalized(word: &str) -> String {
    let mut chars = word.chars();
    match chars.next() {
        Some(first) => first.to_uppercase().chain(chars).collect(),
        None => String::new(),
    }
}

/// How events are printed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// Human-readable progress lines.
    Human,
    /// One JSON object per line.
    Json,
}

impl Format {
    /// Every format, with the name it is selected by.
    pub const ALL: [(&'static str, Format); 2] = [("human", Format::Human), ("json", Format::Json)];
}

impl std::str::FromStr for Format {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Format::ALL
            .iter()
            .find(|(name, _)| *name == s)
            .map(|&(_, f)| f)
            .ok_or_else(|| format!("unknown format {s:?} (expected human or json)"))
    }
}

#[derive(Serialize)]
struct Line<'a> {
    time_ms: u64,
    timestamp: &'a str,
    vm: &'a str,
    #[serde(flatten)]
    event: &'a Event,
}

/// The wall-clock time as RFC 3339 in UTC with milliseconds (`2026-01-02T03:04:05.678Z`).
pub fn rfc3339_now() -> String {
    format!("{:.3}", jiff::Timestamp::now())
}

/// Anything that takes the run's events (the terminal, or a recorder in tests).
pub trait EventSink {
    /// Report one event, which happens now.
    fn emit(&mut self, event: Event);

    /// Report one event, which happened `at` (the run controller's time of the input that
    /// caused it). By default the same as [`EventSink::emit`].
    fn emit_at(&mut self, at: Instant, event: Event) {
        let _ = at;
        self.emit(event);
    }
}

/// Writes events to a stream in one of the [`Format`]s, timed from its creation.
pub struct Printer<W: Write> {
    out: W,
    format: Format,
    origin: Instant,
    vm: String,
    failed: bool,
}

impl<W: Write> Printer<W> {
    /// A printer whose time 0 is now.
    pub fn new(out: W, format: Format) -> Self {
        Printer {
            out,
            format,
            origin: Instant::now(),
            vm: String::new(),
            failed: false,
        }
    }

    /// The VM's name for the `vm` field of JSON lines.
    pub fn with_vm(mut self, vm: &str) -> Self {
        self.vm = vm.to_string();
        self
    }

    /// Count `time_ms` from `origin` (so that two printers of one run agree).
    pub fn with_origin(mut self, origin: Instant) -> Self {
        self.origin = origin;
        self
    }

    /// The event as the line this printer writes at `time_ms` (wall-clock `timestamp`) for
    /// the VM `vm`.
    pub fn render(
        format: Format,
        time_ms: u64,
        timestamp: &str,
        vm: &str,
        event: &Event,
    ) -> String {
        match format {
            Format::Json => serde_json::to_string(&Line { time_ms, timestamp, vm, event })
                .unwrap_or_else(|e| format!("{{\"time_ms\":{time_ms},\"type\":\"error\",\"message\":\"cannot encode an event: {e}\"}}")),
            Format::Human => {
                format!("[{:>4}.{:03}s] {}", time_ms / 1000, time_ms % 1000, event.human())
            }
        }
    }

    /// The instant `time_ms` counts from.
    pub fn origin(&self) -> Instant {
        self.origin
    }

    /// Give back the stream.
    pub fn into_inner(self) -> W {
        self.out
    }
}

impl<W: Write> EventSink for Printer<W> {
    fn emit(&mut self, event: Event) {
        self.emit_at(Instant::now(), event);
    }

    /// `time_ms` counts from the printer's origin to `at`.
    fn emit_at(&mut self, at: Instant, event: Event) {
        let since = at.saturating_duration_since(self.origin);
        let time_ms = u64::try_from(since.as_millis()).unwrap_or(u64::MAX);
        let line = Self::render(self.format, time_ms, &rfc3339_now(), &self.vm, &event);
        let written = writeln!(self.out, "{line}").and_then(|()| self.out.flush());
        if let Err(e) = written {
            // A closed stdout (e.g. `| head`) must not kill the VM loop; say it once.
            if !self.failed {
                self.failed = true;
                log::warn!("cannot write events: {e}");
            }
        }
    }
}

/// Sends every event to two sinks (the terminal and `--events-file`).
pub struct Tee<A: EventSink, B: EventSink>(pub A, pub B);

impl<A: EventSink, B: EventSink> EventSink for Tee<A, B> {
    fn emit(&mut self, event: Event) {
        self.0.emit(event.clone());
        self.1.emit(event);
    }
    fn emit_at(&mut self, at: Instant, event: Event) {
        self.0.emit_at(at, event.clone());
        self.1.emit_at(at, event);
    }
}

impl<T: EventSink + ?Sized> EventSink for Box<T> {
    fn emit(&mut self, event: Event) {
        (**self).emit(event);
    }
    fn emit_at(&mut self, at: Instant, event: Event) {
        (**self).emit_at(at, event);
    }
}

impl EventSink for Vec<Event> {
    fn emit(&mut self, event: Event) {
        self.push(event);
    }
}

/// A printer on standard output.
pub fn stdout_printer(format: Format) -> Printer<io::Stdout> {
    Printer::new(io::stdout(), format)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_printer_times_an_event_at_its_instant_not_at_the_write() {
        let origin = Instant::now();
        let printer = Printer::new(Vec::new(), Format::Json).with_origin(origin);
        let mut tee = Tee(printer, Vec::new());
        tee.emit_at(
            origin + std::time::Duration::from_millis(1234),
            Event::Started { boot: 1 },
        );
        // An instant before the origin counts as 0.
        tee.emit_at(
            origin
                .checked_sub(std::time::Duration::from_secs(1))
                .unwrap_or(origin),
            Event::Started { boot: 2 },
        );
        let Tee(printer, events) = tee;
        assert_eq!(events.len(), 2);
        let text = String::from_utf8(printer.into_inner()).unwrap();
        let times: Vec<u64> = text
            .lines()
            .map(|l| {
                serde_json::from_str::<serde_json::Value>(l).unwrap()["time_ms"]
                    .as_u64()
                    .unwrap()
            })
            .collect();
        assert_eq!(times, [1234, 0]);
    }

    const STAMP: &str = "2026-01-02T03:04:05.678Z";

    /// The JSON line of `event`, without the `timestamp` and `vm` every line has (checked).
    fn json(event: &Event) -> serde_json::Value {
        let mut v: serde_json::Value = serde_json::from_str(&Printer::<Vec<u8>>::render(
            Format::Json,
            1234,
            STAMP,
            "testvm",
            event,
        ))
        .unwrap();
        let o = v.as_object_mut().unwrap();
        assert_eq!(o.remove("timestamp").unwrap(), STAMP);
        assert_eq!(o.remove("vm").unwrap(), "testvm");
        v
    }

    #[test]
    fn timestamps_are_rfc3339_utc_with_milliseconds() {
        let t = rfc3339_now();
        // 2026-01-02T03:04:05.678Z
        assert_eq!(t.len(), 24, "{t}");
        assert!(t.ends_with('Z') && t.as_bytes()[10] == b'T' && t.as_bytes()[19] == b'.');
        let parsed: jiff::Timestamp = t.parse().unwrap();
        let now = jiff::Timestamp::now();
        assert!((now.as_millisecond() - parsed.as_millisecond()).abs() < 10_000);
    }

    #[test]
    fn probe_durations_are_float_milliseconds_to_the_microsecond() {
        let v = json(&Event::Probe {
            probe: "readiness".into(),
            result: "failure".into(),
            message: "HTTP probe failed with statuscode: 503".into(),
            address: Some("127.0.0.1:80".into()),
            exit_code: None,
            output: None,
            duration_us: 12_345,
            streak: Some((2, 3)),
        });
        assert_eq!(v["duration_ms"], serde_json::json!(12.345));
        assert!(v.get("streak").is_none());
    }

    #[test]
    fn human_probe_lines_read_like_the_kubelet() {
        let e = Event::Probe {
            probe: "readiness".into(),
            result: "failure".into(),
            message: "HTTP probe failed with statuscode: 503".into(),
            address: None,
            exit_code: None,
            output: None,
            duration_us: 1,
            streak: Some((2, 3)),
        };
        assert_eq!(
            e.human(),
            "Readiness probe failed (2/3): HTTP probe failed with statuscode: 503"
        );
        let e = Event::Liveness {
            action: "stop".into(),
            message: "connect: Connection refused".into(),
            failures: Some(3),
        };
        assert_eq!(
            e.human(),
            "Liveness probe failed 3 times: the VM will be stopped (connect: Connection refused)"
        );
    }

    #[test]
    fn the_summary_serializes_flat_beside_its_type() {
        let v = json(&Event::Summary(Summary {
            boots: 2,
            restarts: 1,
            watchdog_expiries: [("poweroff".to_string(), 1)].into_iter().collect(),
            probes: vec![ProbeSummary {
                probe_type: "liveness".into(),
                kind: "tcpSocket".into(),
                attempts: 4,
                failures: 3,
                last_failure: Some("refused".into()),
            }],
            ready_ms: 1500,
            phase: FinalPhase::Failed,
        }));
        assert_eq!(
            v,
            serde_json::json!({"time_ms": 1234, "type": "summary", "boots": 2, "restarts": 1,
                "watchdog_expiries": {"poweroff": 1},
                "probes": [{"type": "liveness", "kind": "tcpSocket", "attempts": 4, "failures": 3,
                    "last_failure": "refused"}],
                "ready_ms": 1500, "phase": "Failed"})
        );
    }

    #[test]
    fn json_lines_carry_time_type_and_fields() {
        let v = json(&Event::Started { boot: 2 });
        assert_eq!(
            v,
            serde_json::json!({"time_ms": 1234, "type": "started", "boot": 2})
        );
        let v = json(&Event::Watchdog {
            action: "reset".into(),
            device: "mywatchdog".into(),
            late_us: None,
        });
        assert_eq!(
            v,
            serde_json::json!({"time_ms": 1234, "type": "watchdog", "action": "reset", "device": "mywatchdog"})
        );
        let late = Event::Watchdog {
            action: "reset".into(),
            device: "mywatchdog".into(),
            late_us: Some(1_234),
        };
        assert_eq!(
            json(&late),
            serde_json::json!({"time_ms": 1234, "type": "watchdog", "action": "reset", "device": "mywatchdog", "late_ms": 1.234})
        );
        assert_eq!(
            late.human(),
            "watchdog \"mywatchdog\" fired: action reset, carried out 1.234 ms after the deadline"
        );
        let v = json(&Event::Stopped {
            reason: StopReason::Shutdown,
            trigger: Some(Cause::Watchdog),
            forced: Some(true),
        });
        assert_eq!(
            v,
            serde_json::json!({"time_ms": 1234, "type": "stopped", "reason": "shutdown", "trigger": "watchdog", "forced": true})
        );
        let v = json(&Event::Stopped {
            reason: StopReason::Runtime,
            trigger: None,
            forced: None,
        });
        assert_eq!(
            v,
            serde_json::json!({"time_ms": 1234, "type": "stopped", "reason": "runtime"})
        );
    }

    #[test]
    fn probe_events_keep_address_and_leave_out_absent_exec_fields() {
        let v = json(&Event::Probe {
            probe: "liveness".into(),
            result: "failure".into(),
            message: "connection refused".into(),
            address: Some("127.0.0.1:8080".into()),
            exit_code: None,
            output: None,
            duration_us: 1500,
            streak: None,
        });
        assert_eq!(
            v,
            serde_json::json!({"time_ms": 1234, "type": "probe", "probe": "liveness", "result": "failure",
                "message": "connection refused", "address": "127.0.0.1:8080", "duration_ms": 1.5})
        );
        // An exec probe has no address: the field is there, null, so scripts can rely on it.
        let v = json(&Event::Probe {
            probe: "readiness".into(),
            result: "success".into(),
            message: "exited with code 0".into(),
            address: None,
            exit_code: Some(0),
            output: Some("ok".into()),
            duration_us: 2000,
            streak: None,
        });
        assert_eq!(
            v,
            serde_json::json!({"time_ms": 1234, "type": "probe", "probe": "readiness", "result": "success",
                "message": "exited with code 0", "address": null, "exit_code": 0, "output": "ok",
                "duration_ms": 2.0})
        );
        let v = json(&Event::Ready { ready: true });
        assert_eq!(
            v,
            serde_json::json!({"time_ms": 1234, "type": "ready", "ready": true})
        );
    }

    #[test]
    fn human_lines_have_a_time_prefix() {
        let line = Printer::<Vec<u8>>::render(
            Format::Human,
            65_432,
            STAMP,
            "testvm",
            &Event::Console {
                line: "guest: kick".into(),
            },
        );
        assert_eq!(line, "[  65.432s] guest | guest: kick");
    }

    #[test]
    fn printer_writes_one_line_per_event() {
        let mut p = Printer::new(Vec::new(), Format::Json);
        p.emit(Event::Started { boot: 1 });
        p.emit(Event::Error {
            message: "x".into(),
        });
        let text = String::from_utf8(p.into_inner()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2);
        let second: serde_json::Value = serde_json::from_str(lines[1]).unwrap();
        assert_eq!(second["type"], "error");
        assert_eq!(second["message"], "x");
    }
}
