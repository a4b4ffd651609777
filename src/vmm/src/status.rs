//! What the run looks like from outside: the status behind `GET /status`, the metrics, the
//! readiness and liveness answers, and the end-of-run [`Summary`].
//!
//! [`RunStatus`] sees every event of the run on its way to the sink (the runner's event
//! path calls [`RunStatus::observe`]), so the figures it reports are the ones the events
//! told, and it needs no hook of its own in the loop beyond the pause flag.
//!
//! # Phase
//!
//! KubeVirt's VMI phase words: `Scheduled` before the first boot and while a runStrategy
//! restart waits for its back-off, `Running` from a boot (a paused VM is still `Running`,
//! with `paused` true), and after a stop `Failed` when the stop is a failure
//! ([`is_failure`]: a watchdog or liveness stop, a vCPU error, a forced shutdown) or
//! `Succeeded` otherwise. The final phase of a run is the phase after its last stop, or
//! `Failed` when the run could not go on.
//!
//! # Ready
//!
//! The VM is Ready when it runs, is not paused, and its readiness probe (if it has one)
//! says so, as KubeVirt's `Ready` condition.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use serde::Serialize;

use i6300esb::{Clock, EventCounters, Stage};

use super::events::{rfc3339_now, Event, FinalPhase, ProbeSummary, Summary};
use super::metrics::Metrics;
use super::platform::SharedEsb;
use super::strategy::{is_failure, Ending, Stop};
use vmpulse_probes::config::{ProbeConfig, ProbeHandler, ProbeKind};

/// How many results each probe keeps for `GET /status`.
pub const KEPT_RESULTS: usize = 10;

/// KubeVirt's VMI phase, as far as a run has one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum VmPhase {
    /// Waiting for its (re)start.
    Scheduled,
    /// Booted (possibly paused).
    Running,
    /// Stopped as asked.
    Succeeded,
    /// Stopped by a failure.
    Failed,
}

impl VmPhase {
    /// The phase word.
    pub fn name(self) -> &'static str {
        match self {
            VmPhase::Scheduled => "Scheduled",
            VmPhase::Running => "Running",
            VmPhase::Succeeded => "Succeeded",
            VmPhase::Failed => "Failed",
        }
    }
}

/// The handler's name as in the manifest (`httpGet`, `tcpSocket`, `exec`, `guestAgentPing`).
pub fn handler_kind(handler: &ProbeHandler) -> &'static str {
    match handler {
        ProbeHandler::HttpGet { .. } => "httpGet",
        ProbeHandler::TcpSocket { .. } => "tcpSocket",
        ProbeHandler::Exec { .. } => "exec",
        ProbeHandler::GuestAgentPing => "guestAgentPing",
    }
}

/// One completed probe attempt, as `GET /status` lists it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ProbeResult {
    /// When it completed (RFC 3339, UTC, milliseconds).
    pub time: String,
    /// How long it took.
    pub duration_ms: f64,
    /// `success` or `failure`.
    pub result: String,
    /// What happened.
    pub message: String,
    /// Exec: the exit code.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// Exec: an excerpt of the output.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output: Option<String>,
}

/// One probe in `GET /status`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ProbeStatus {
    /// The handler (`httpGet`, `tcpSocket`, `exec`, `guestAgentPing`).
    pub kind: &'static str,
    /// `liveness` or `readiness`.
    #[serde(rename = "type")]
    pub probe_type: &'static str,
    /// Successes in a row (since the last failure or boot).
    pub consecutive_successes: u32,
    /// Failures in a row (since the last success or boot).
    pub consecutive_failures: u32,
    /// `successThreshold`.
    pub success_threshold: u32,
    /// `failureThreshold`.
    pub failure_threshold: u32,
    /// Completed attempts in the whole run.
    pub attempts: u64,
    /// Of which succeeded.
    pub successes: u64,
    /// Of which failed.
    pub failures: u64,
    /// The last results, oldest first (at most [`KEPT_RESULTS`]).
    pub last_results: VecDeque<ProbeResult>,
    /// The last failure's message.
    #[serde(skip)]
    pub last_failure: Option<String>,
}

/// The watchdog in `GET /status`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct WatchdogStatus {
    /// Whether the guest enabled it (it counts down).
    pub armed: bool,
    /// The configured action (`none` when the manifest has no watchdog).
    pub action: String,
    /// `1` or `2` while armed, else `null`.
    pub stage: Option<u8>,
    /// Milliseconds until the current stage runs out (`null` when not counting).
    pub ms_until_expiry: Option<u64>,
    /// The "timed out" flag (kept across warm resets).
    pub timeout_flag: bool,
    /// Expiries in the whole run, by action.
    pub expiries: BTreeMap<String, u64>,
    /// Guest kicks in the whole run.
    pub guest_kicks: u64,
}

/// The device's live state, read at the time of a request.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WatchdogLive {
    /// Enabled.
    pub armed: bool,
    /// The stage when armed.
    pub stage: Option<u8>,
    /// Time left in the stage.
    pub ms_until_expiry: Option<u64>,
    /// The timeout flag.
    pub timeout_flag: bool,
    /// Kicks so far.
    pub kicks: u64,
}

impl WatchdogLive {
    /// Read the device.
    pub fn read(esb: &SharedEsb) -> Self {
        let d = esb.lock().unwrap_or_else(|e| e.into_inner());
        let w = d.watchdog();
        let armed = w.is_enabled();
        let now = d.clock().now_ns();
        WatchdogLive {
            armed,
            stage: armed.then(|| match w.stage() {
                Stage::One => 1,
                Stage::Two => 2,
            }),
            ms_until_expiry: d
                .next_deadline()
                .map(|at| at.saturating_sub(now) / 1_000_000),
            timeout_flag: w.timeout_flag(),
            kicks: EventCounters::get(&d.events().kick),
        }
    }
}

/// The object `GET /status` returns.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct StatusDoc {
    /// The manifest's name.
    pub vm: String,
    /// `Scheduled`, `Running`, `Succeeded` or `Failed`.
    pub phase: &'static str,
    /// The Ready condition.
    pub ready: bool,
    /// Paused (through the API or the watchdog's `pause`).
    pub paused: bool,
    /// Boots, warm resets included.
    pub boots: u32,
    /// runStrategy restarts.
    pub restarts: u32,
    /// Milliseconds since the run started.
    pub uptime_ms: u64,
    /// The watchdog.
    pub watchdog: WatchdogStatus,
    /// Every probe of the manifest.
    pub probes: Vec<ProbeStatus>,
}

/// Everything known about the run, from its events.
pub struct RunStatus {
    vm: String,
    action: String,
    origin: Instant,
    phase: VmPhase,
    paused: bool,
    has_readiness: bool,
    probes_ready: bool,
    boots: u32,
    restarts: u32,
    expiries: BTreeMap<String, u64>,
    probes: Vec<ProbeStatus>,
    last_stop_failed: bool,
    ready_since: Option<Instant>,
    ready_total: Duration,
    metrics: Metrics,
    /// `--exit-code-from-phase`.
    pub exit_code_from_phase: bool,
}

impl RunStatus {
    /// The status of a run of `vm` with these probes and watchdog action, before it starts.
    pub fn new(vm: &str, action: &str, probes: &[ProbeConfig]) -> Self {
        let metrics = Metrics::new(vm);
        metrics.declare_expiry(action);
        for cfg in probes {
            metrics.declare_probe(handler_kind(cfg.handler()), cfg.kind().name());
        }
        RunStatus {
            vm: vm.to_string(),
            action: action.to_string(),
            origin: Instant::now(),
            phase: VmPhase::Scheduled,
            paused: false,
            has_readiness: probes.iter().any(|c| c.kind() == ProbeKind::Readiness),
            probes_ready: false,
            boots: 0,
            restarts: 0,
            expiries: BTreeMap::new(),
            probes: probes
                .iter()
                .map(|cfg| ProbeStatus {
                    kind: handler_kind(cfg.handler()),
                    probe_type: cfg.kind().name(),
                    consecutive_successes: 0,
                    consecutive_failures: 0,
                    success_threshold: cfg.success_threshold(),
                    failure_threshold: cfg.failure_threshold(),
                    attempts: 0,
                    successes: 0,
                    failures: 0,
                    last_results: VecDeque::new(),
                    last_failure: None,
                })
                .collect(),
            last_stop_failed: false,
            ready_since: None,
            ready_total: Duration::ZERO,
            metrics,
            exit_code_from_phase: false,
        }
    }

    /// The current phase.
    pub fn phase(&self) -> VmPhase {
        self.phase
    }

    /// The Ready condition.
    pub fn ready(&self) -> bool {
        self.phase == VmPhase::Running && !self.paused && (!self.has_readiness || self.probes_ready)
    }

    /// Whether `GET /livez` answers 200: the loop answers, so it runs; the VM must not
    /// have failed.
    pub fn alive(&self) -> bool {
        self.phase != VmPhase::Failed
    }

    /// Whether the VM is paused.
    pub fn paused(&self) -> bool {
        self.paused
    }

    /// The watchdog's `action` was carried out `late` after the device's deadline (the
    /// runner measures it; the `watchdog` event itself was observed before).
    pub fn action_lateness(&mut self, action: &str, late: Duration) {
        self.metrics.action_lateness(action, late.as_secs_f64());
    }

    /// The VM was paused or resumed at `now`.
    pub fn set_paused(&mut self, paused: bool, now: Instant) {
        self.paused = paused;
        self.account(now);
    }

    fn probe_mut(&mut self, probe_type: &str) -> Option<&mut ProbeStatus> {
        self.probes.iter_mut().find(|p| p.probe_type == probe_type)
    }

    /// Take in one event of the run at `now`; fill in what its human line needs
    /// (the failure count of a probe attempt, the threshold of a liveness failure).
    pub fn observe(&mut self, event: &mut Event, now: Instant) {
        match event {
            Event::Started { .. } => {
                self.phase = VmPhase::Running;
                self.paused = false;
                self.boots += 1;
                self.metrics.boot();
                for p in &mut self.probes {
                    p.consecutive_successes = 0;
                    p.consecutive_failures = 0;
                }
            }
            Event::Stopped {
                reason,
                trigger,
                forced,
            } => {
                let failed = is_failure(&Stop {
                    reason: *reason,
                    trigger: *trigger,
                    forced: *forced,
                });
                self.last_stop_failed = failed;
                self.phase = if failed {
                    VmPhase::Failed
                } else {
                    VmPhase::Succeeded
                };
                self.paused = false;
                self.probes_ready = false;
            }
            Event::Restart { .. } => {
                self.phase = VmPhase::Scheduled;
                self.restarts += 1;
                self.metrics.restart();
            }
            Event::Watchdog { action, .. } => {
                *self.expiries.entry(action.clone()).or_default() += 1;
                self.metrics.expiry(action);
            }
            Event::Ready { ready } => self.probes_ready = *ready,
            Event::Liveness { failures, .. } => {
                *failures = self.probe_mut("liveness").map(|p| p.failure_threshold);
            }
            Event::Probe {
                probe,
                result,
                message,
                exit_code,
                output,
                duration_us,
                streak,
                ..
            } => {
                let duration_ms = *duration_us as f64 / 1000.0;
                let Some(p) = self.probes.iter_mut().find(|p| p.probe_type == probe) else {
                    return;
                };
                p.attempts += 1;
                if result == "success" {
                    p.successes += 1;
                    p.consecutive_successes += 1;
                    p.consecutive_failures = 0;
                } else {
                    p.failures += 1;
                    p.consecutive_failures += 1;
                    p.consecutive_successes = 0;
                    p.last_failure = Some(message.clone());
                    *streak = Some((p.consecutive_failures, p.failure_threshold));
                }
                if p.last_results.len() == KEPT_RESULTS {
                    p.last_results.pop_front();
                }
                p.last_results.push_back(ProbeResult {
                    time: rfc3339_now(),
                    duration_ms,
                    result: result.clone(),
                    message: message.clone(),
                    exit_code: *exit_code,
                    output: output.clone(),
                });
                let (kind, probe_type) = (p.kind, p.probe_type);
                self.metrics
                    .probe_result(kind, probe_type, result, duration_ms / 1000.0);
            }
            _ => {}
        }
        self.account(now);
    }

    /// Keep the time spent Ready.
    fn account(&mut self, now: Instant) {
        match (self.ready(), self.ready_since) {
            (true, None) => self.ready_since = Some(now),
            (false, Some(since)) => {
                self.ready_total += now.saturating_duration_since(since);
                self.ready_since = None;
            }
            _ => {}
        }
    }

    /// The time spent Ready up to `now`.
    pub fn ready_time(&self, now: Instant) -> Duration {
        self.ready_total
            + self
                .ready_since
                .map_or(Duration::ZERO, |s| now.saturating_duration_since(s))
    }

    /// The object `GET /status` returns, with the device's live state `wd`.
    pub fn status(&self, wd: WatchdogLive) -> StatusDoc {
        StatusDoc {
            vm: self.vm.clone(),
            phase: self.phase.name(),
            ready: self.ready(),
            paused: self.paused,
            boots: self.boots,
            restarts: self.restarts,
            uptime_ms: u64::try_from(self.origin.elapsed().as_millis()).unwrap_or(u64::MAX),
            watchdog: WatchdogStatus {
                armed: wd.armed,
                action: self.action.clone(),
                stage: wd.stage,
                ms_until_expiry: wd.ms_until_expiry,
                timeout_flag: wd.timeout_flag,
                expiries: self.expiries.clone(),
                guest_kicks: wd.kicks,
            },
            probes: self.probes.clone(),
        }
    }

    /// The metrics text, with the device's live state `wd`.
    pub fn metrics_text(&mut self, wd: WatchdogLive) -> String {
        let (ready, phase) = (self.ready(), self.phase.name());
        self.metrics.encode(ready, phase, wd.kicks)
    }

    /// The final phase of a run that ended with `ending`.
    pub fn final_phase(&self, ending: &Ending) -> FinalPhase {
        if matches!(ending, Ending::Fatal(_)) || self.last_stop_failed {
            FinalPhase::Failed
        } else {
            FinalPhase::Succeeded
        }
    }

    /// The `summary` event's content for a run that ended with `ending` at `now`.
    pub fn summary(&self, ending: &Ending, now: Instant) -> Summary {
        Summary {
            boots: self.boots,
            restarts: self.restarts,
            watchdog_expiries: self.expiries.clone(),
            probes: self
                .probes
                .iter()
                .map(|p| ProbeSummary {
                    probe_type: p.probe_type.to_string(),
                    kind: p.kind.to_string(),
                    attempts: p.attempts,
                    failures: p.failures,
                    last_failure: p.last_failure.clone(),
                })
                .collect(),
            ready_ms: u64::try_from(self.ready_time(now).as_millis()).unwrap_or(u64::MAX),
            phase: self.final_phase(ending),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::{Cause, StopReason};
    use vmpulse_manifest::RunStrategy;

    fn probe(kind: ProbeKind, failure_threshold: u32) -> ProbeConfig {
        let handler = ProbeHandler::TcpSocket {
            port: 1,
            host: None,
        };
        ProbeConfig::builder(kind, handler)
            .failure_threshold(failure_threshold)
            .build()
            .expect("a valid probe")
    }

    fn attempt(probe: &str, ok: bool, us: u64) -> Event {
        Event::Probe {
            probe: probe.into(),
            result: if ok { "success" } else { "failure" }.into(),
            message: format!("attempt {us}"),
            address: None,
            exit_code: None,
            output: None,
            duration_us: us,
            streak: None,
        }
    }

    fn feed(s: &mut RunStatus, mut e: Event, at: Instant) -> Event {
        s.observe(&mut e, at);
        e
    }

    #[test]
    fn phases_follow_the_lifecycle_and_stops_decide_success_or_failure() {
        let t0 = Instant::now();
        let mut s = RunStatus::new("vm1", "poweroff", &[]);
        assert_eq!(s.phase(), VmPhase::Scheduled);
        assert!(!s.ready() && s.alive());
        feed(&mut s, Event::Started { boot: 1 }, t0);
        assert_eq!(s.phase(), VmPhase::Running);
        // No readiness probe: ready while running.
        assert!(s.ready());
        s.set_paused(true, t0 + Duration::from_millis(100));
        assert!(!s.ready() && s.paused());
        assert_eq!(s.phase(), VmPhase::Running);
        s.set_paused(false, t0 + Duration::from_millis(300));
        let stopped = Event::Stopped {
            reason: StopReason::Watchdog,
            trigger: Some(Cause::Watchdog),
            forced: None,
        };
        feed(&mut s, stopped, t0 + Duration::from_millis(500));
        assert_eq!(s.phase(), VmPhase::Failed);
        assert!(!s.alive() && !s.ready());
        // Ready 0–100 ms and 300–500 ms.
        assert_eq!(
            s.ready_time(t0 + Duration::from_secs(9)),
            Duration::from_millis(300)
        );
        feed(
            &mut s,
            Event::Restart {
                count: 1,
                delay_ms: 10,
            },
            t0 + Duration::from_millis(500),
        );
        assert_eq!(s.phase(), VmPhase::Scheduled);
        assert!(s.alive());
        let summary = s.summary(&Ending::MaxRestarts(1), t0 + Duration::from_secs(1));
        assert_eq!(summary.phase, FinalPhase::Failed);
        assert_eq!((summary.boots, summary.restarts), (1, 1));
        // A guest poweroff afterwards succeeds.
        feed(
            &mut s,
            Event::Started { boot: 2 },
            t0 + Duration::from_secs(1),
        );
        feed(
            &mut s,
            Event::Stopped {
                reason: StopReason::Guest,
                trigger: None,
                forced: None,
            },
            t0 + Duration::from_secs(2),
        );
        assert_eq!(s.phase(), VmPhase::Succeeded);
        let ending = Ending::NoRestart(RunStrategy::Always, StopReason::Guest);
        assert_eq!(s.final_phase(&ending), FinalPhase::Succeeded);
        assert_eq!(
            s.final_phase(&Ending::Fatal("x".into())),
            FinalPhase::Failed
        );
        assert_eq!(
            s.summary(&ending, t0 + Duration::from_secs(3)).ready_ms,
            1300
        );
    }

    #[test]
    fn readiness_comes_from_the_probe_and_counts_are_kept() {
        let t0 = Instant::now();
        let mut s = RunStatus::new(
            "vm1",
            "reset",
            &[
                probe(ProbeKind::Readiness, 3),
                probe(ProbeKind::Liveness, 2),
            ],
        );
        feed(&mut s, Event::Started { boot: 1 }, t0);
        assert!(!s.ready(), "not ready before the readiness probe says so");
        feed(&mut s, attempt("readiness", true, 1500), t0);
        feed(&mut s, Event::Ready { ready: true }, t0);
        assert!(s.ready());
        let e = feed(&mut s, attempt("readiness", false, 2), t0);
        assert!(matches!(
            e,
            Event::Probe {
                streak: Some((1, 3)),
                ..
            }
        ));
        let e = feed(&mut s, attempt("readiness", false, 3), t0);
        assert!(matches!(
            e,
            Event::Probe {
                streak: Some((2, 3)),
                ..
            }
        ));
        let e = feed(
            &mut s,
            Event::Liveness {
                action: "stop".into(),
                message: "m".into(),
                failures: None,
            },
            t0,
        );
        assert!(matches!(
            e,
            Event::Liveness {
                failures: Some(2),
                ..
            }
        ));
        for i in 0..12 {
            feed(&mut s, attempt("liveness", i % 2 == 0, 10 + i), t0);
        }
        let doc = s.status(WatchdogLive::default());
        assert_eq!(doc.vm, "vm1");
        assert_eq!(doc.phase, "Running");
        let r = &doc.probes[0];
        assert_eq!((r.kind, r.probe_type), ("tcpSocket", "readiness"));
        assert_eq!(
            (r.attempts, r.successes, r.failures, r.consecutive_failures),
            (3, 1, 2, 2)
        );
        assert_eq!(r.last_results[0].duration_ms, 1.5);
        let l = &doc.probes[1];
        assert_eq!(l.attempts, 12);
        assert_eq!(l.last_results.len(), KEPT_RESULTS);
        assert_eq!(l.last_results[0].message, "attempt 12", "oldest kept first");
        let json = serde_json::to_value(&doc).unwrap();
        assert_eq!(json["probes"][0]["type"], "readiness");
        assert_eq!(json["probes"][0]["last_results"][0]["result"], "success");
        assert!(json["probes"][0]["last_results"][0]["time"]
            .as_str()
            .unwrap()
            .ends_with('Z'));
        assert_eq!(json["watchdog"]["action"], "reset");
        let summary = s.summary(&Ending::RunFor, t0);
        assert_eq!(summary.probes[0].last_failure.as_deref(), Some("attempt 3"));
        assert_eq!(summary.probes[1].failures, 6);
    }
}
