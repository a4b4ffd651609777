//! What `vmpulse run` reports, and how: human-readable lines or one JSON object per line.
//!
//! Every event carries the time since the run started. With `--events json` each event is
//! one line holding a JSON object with `time_ms` (milliseconds since the run started),
//! `type`, and the fields of its type:
//!
//! | `type` | fields |
//! | --- | --- |
//! | `info` | `message` (notes before the start: ignored manifest fields, clamped memory, …) |
//! | `started` | `boot` (1, 2, … at every boot, warm resets included) |
//! | `console` | `line` (one line the guest printed on COM1) |
//! | `watchdog` | `action`, `device` (the watchdog's name from the manifest) |
//! | `liveness` | `action` (`stop`, `reset`, `shutdown`), `message`: the liveness probe failed |
//! | `stopped` | `reason` (`watchdog`, `liveness`, `guest`, `shutdown`, `runtime`, `error`), optional `trigger` (`watchdog`, `liveness`) and `forced` (shutdowns only) |
//! | `restart` | `count` (1, 2, …), `delay_ms` (the back-off before the new VM starts; emitted when the restart is decided) |
//! | `probe` | `probe`, `result` (`success`/`failure`/`error`), `message`, `address`, for exec `exit_code` and `output` |
//! | `ready` | `ready` (true/false), on every readiness transition |
//! | `error` | `message` |
//! | `finished` | `exit_code`, `message`: the last line of every run |
//!
//! Absent optional fields are left out, never `null`.

use std::io::{self, Write};
use std::time::Instant;

use serde::Serialize;

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
    },
    /// The liveness probe failed (threshold reached).
    Liveness {
        /// `stop`, `reset` or `shutdown`.
        action: String,
        /// The last failure's message.
        message: String,
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
            Event::Watchdog { action, device } => {
                format!("watchdog {device:?} fired: action {action}")
            }
            Event::Liveness { action, message } => {
                format!("liveness probe failed ({message}): action {action}")
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
            } => {
                let mut s = format!("{probe} probe {result}: {message}");
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
            Event::Finished { exit_code, message } => {
                format!("run finished: {message} (exit code {exit_code})")
            }
        }
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
    #[serde(flatten)]
    event: &'a Event,
}

/// Anything that takes the run's events (the terminal, or a recorder in tests).
pub trait EventSink {
    /// Report one event.
    fn emit(&mut self, event: Event);
}

/// Writes events to a stream in one of the [`Format`]s, timed from its creation.
pub struct Printer<W: Write> {
    out: W,
    format: Format,
    origin: Instant,
    failed: bool,
}

impl<W: Write> Printer<W> {
    /// A printer whose time 0 is now.
    pub fn new(out: W, format: Format) -> Self {
        Printer {
            out,
            format,
            origin: Instant::now(),
            failed: false,
        }
    }

    /// The event as the line this printer writes at `time_ms`.
    pub fn render(format: Format, time_ms: u64, event: &Event) -> String {
        match format {
            Format::Json => serde_json::to_string(&Line { time_ms, event })
                .unwrap_or_else(|e| format!("{{\"time_ms\":{time_ms},\"type\":\"error\",\"message\":\"cannot encode an event: {e}\"}}")),
            Format::Human => {
                format!("[{:>4}.{:03}s] {}", time_ms / 1000, time_ms % 1000, event.human())
            }
        }
    }

    /// Give back the stream.
    pub fn into_inner(self) -> W {
        self.out
    }
}

impl<W: Write> EventSink for Printer<W> {
    fn emit(&mut self, event: Event) {
        let time_ms = u64::try_from(self.origin.elapsed().as_millis()).unwrap_or(u64::MAX);
        let line = Self::render(self.format, time_ms, &event);
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

    fn json(event: &Event) -> serde_json::Value {
        serde_json::from_str(&Printer::<Vec<u8>>::render(Format::Json, 1234, event)).unwrap()
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
        });
        assert_eq!(
            v,
            serde_json::json!({"time_ms": 1234, "type": "watchdog", "action": "reset", "device": "mywatchdog"})
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
        });
        assert_eq!(
            v,
            serde_json::json!({"time_ms": 1234, "type": "probe", "probe": "liveness", "result": "failure",
                "message": "connection refused", "address": "127.0.0.1:8080"})
        );
        // An exec probe has no address: the field is there, null, so scripts can rely on it.
        let v = json(&Event::Probe {
            probe: "readiness".into(),
            result: "success".into(),
            message: "exited with code 0".into(),
            address: None,
            exit_code: Some(0),
            output: Some("ok".into()),
        });
        assert_eq!(
            v,
            serde_json::json!({"time_ms": 1234, "type": "probe", "probe": "readiness", "result": "success",
                "message": "exited with code 0", "address": null, "exit_code": 0, "output": "ok"})
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
