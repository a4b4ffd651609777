//! runStrategy, restart back-off and the exit code, as pure functions.
//!
//! # runStrategy (KubeVirt's meaning)
//!
//! | strategy | first start | restart after a stop |
//! | --- | --- | --- |
//! | `Always` | yes | after every stop: watchdog poweroff, liveness, guest poweroff, shutdown, error |
//! | `RerunOnFailure` | yes | only after a failure (see [`is_failure`]); not after the guest powered off or shut down cleanly |
//! | `Once` | yes | never |
//! | `Manual` | yes (as if the user ran `virtctl start`) | never automatically |
//! | `Halted` | no: the run ends at once with exit code 0 | — |
//!
//! A stop is a *failure* when KubeVirt would mark the VMI `Failed`: the watchdog powered it
//! off, the liveness probe failed (whatever the liveness action), the vCPU failed, or a
//! shutdown request had to be forced after the grace period. A guest that powers itself off,
//! or honours a shutdown request within the grace period, ends the VMI `Succeeded`.
//! `--run-for` running out ends the whole run; it never restarts.
//!
//! # Back-off
//!
//! Restarts wait `initial` (default 1 s, `--restart-backoff`), doubling for each
//! consecutive restart up to 16 × `initial`; a run that stayed up at least 60 s resets the
//! back-off to `initial` (kubelet's crash-loop back-off, scaled down for test guests).
//!
//! # Exit code
//!
//! See [`exit_code`]: 0 when the run ended as the manifest and flags ask and no `error`
//! event was reported; 1 when any `error` event was reported; 2 for a bad manifest or flag.
//! The README's "Exit codes" section is the reference, `--exit-code-from-phase`'s 3 included.

use std::time::Duration;

use super::events::{Cause, StopReason};
use vmpulse_manifest::RunStrategy;

/// How one run of the VM ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stop {
    /// Why.
    pub reason: StopReason,
    /// What asked the action router for it, if anything.
    pub trigger: Option<Cause>,
    /// For shutdowns: whether it had to be forced.
    pub forced: Option<bool>,
}

impl Stop {
    /// A stop without a trigger or shutdown detail.
    pub fn plain(reason: StopReason) -> Self {
        Stop {
            reason,
            trigger: None,
            forced: None,
        }
    }
}

/// Whether KubeVirt would count this stop as a failure of the VMI.
pub fn is_failure(stop: &Stop) -> bool {
    match stop.reason {
        StopReason::Watchdog | StopReason::Liveness | StopReason::Error => true,
        StopReason::Guest | StopReason::Runtime | StopReason::Signal | StopReason::Api => false,
        StopReason::Shutdown => stop.forced == Some(true) || stop.trigger == Some(Cause::Liveness),
    }
}

/// Whether the strategy starts the VM at all.
pub fn starts(strategy: RunStrategy) -> bool {
    strategy != RunStrategy::Halted
}

/// Whether the strategy restarts the VM after this stop (ignoring `--max-restarts`).
pub fn wants_restart(strategy: RunStrategy, stop: &Stop) -> bool {
    // An API stop or shutdown is the user's `virtctl stop`: never restarted.
    if matches!(
        stop.reason,
        StopReason::Runtime | StopReason::Signal | StopReason::Api
    ) || stop.trigger == Some(Cause::Api)
    {
        return false;
    }
    match strategy {
        RunStrategy::Always => true,
        RunStrategy::RerunOnFailure => is_failure(stop),
        RunStrategy::Once | RunStrategy::Manual | RunStrategy::Halted => false,
    }
}

/// Exponential restart back-off.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    /// The first delay.
    pub initial: Duration,
    /// The longest delay.
    pub cap: Duration,
    /// A run that lasted this long resets the back-off.
    pub reset_after: Duration,
    consecutive: u32,
}

impl Backoff {
    /// Delays from `initial`, doubling, capped at 16 × `initial`, reset after 60 s of uptime.
    pub fn new(initial: Duration) -> Self {
        Backoff {
            initial,
            cap: initial.saturating_mul(16),
            reset_after: Duration::from_secs(60),
            consecutive: 0,
        }
    }

    /// The delay before the next restart, given how long the run that just ended lasted.
    pub fn next_delay(&mut self, run_lasted: Duration) -> Duration {
        if run_lasted >= self.reset_after {
            self.consecutive = 0;
        }
        let factor = 1u32 << self.consecutive.min(16);
        self.consecutive = self.consecutive.saturating_add(1);
        self.initial.saturating_mul(factor).min(self.cap)
    }
}

/// Why a whole `vmpulse run` ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ending {
    /// `--run-for` ran out.
    RunFor,
    /// runStrategy Halted: the VM was never started.
    Halted,
    /// The VM stopped and runStrategy does not restart it.
    NoRestart(RunStrategy, StopReason),
    /// The VM stopped and runStrategy would restart it, but `--max-restarts` was reached.
    MaxRestarts(u32),
    /// The run cannot go on (the VM could not be created or started, or the loop failed).
    Fatal(String),
    /// vmpulse received this signal (SIGINT or SIGTERM) and stopped the VM.
    Interrupted(i32),
}

impl Ending {
    /// One sentence for the `finished` event.
    pub fn message(&self) -> String {
        match self {
            Ending::RunFor => "the --run-for limit was reached".into(),
            Ending::NoRestart(_, StopReason::Api) => "the VM was stopped through the API".into(),
            Ending::Halted => "runStrategy Halted: the VM is not started".into(),
            Ending::NoRestart(s, r) => format!(
                "the VM stopped ({}) and runStrategy {s:?} does not restart it",
                r.name()
            ),
            Ending::MaxRestarts(n) => format!("--max-restarts {n} reached"),
            Ending::Fatal(m) => format!("cannot go on: {m}"),
            Ending::Interrupted(sig) => format!("interrupted by signal {sig}"),
        }
    }
}

/// The decision after a stop.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AfterStop {
    /// Restart after `delay`; this is restart number `count`.
    Restart {
        /// Restart number (1, 2, …).
        count: u32,
        /// Back-off before it.
        delay: Duration,
    },
    /// The run is over.
    End(Ending),
}

/// runStrategy with its bounds: decides, stop after stop, whether to restart.
#[derive(Clone, Debug)]
pub struct RestartPolicy {
    strategy: RunStrategy,
    max_restarts: Option<u32>,
    backoff: Backoff,
    restarts: u32,
}

impl RestartPolicy {
    /// A policy for `strategy`, at most `max_restarts` restarts, waiting per `backoff`.
    pub fn new(strategy: RunStrategy, max_restarts: Option<u32>, backoff: Backoff) -> Self {
        RestartPolicy {
            strategy,
            max_restarts,
            backoff,
            restarts: 0,
        }
    }

    /// Restarts so far.
    pub fn restarts(&self) -> u32 {
        self.restarts
    }

    /// What to do after `stop`, when the run that ended lasted `run_lasted`.
    pub fn after_stop(&mut self, stop: &Stop, run_lasted: Duration) -> AfterStop {
        if stop.reason == StopReason::Runtime {
            return AfterStop::End(Ending::RunFor);
        }
        if !wants_restart(self.strategy, stop) {
            return AfterStop::End(Ending::NoRestart(self.strategy, stop.reason));
        }
        if let Some(max) = self.max_restarts {
            if self.restarts >= max {
                return AfterStop::End(Ending::MaxRestarts(max));
            }
        }
        self.restarts += 1;
        AfterStop::Restart {
            count: self.restarts,
            delay: self.backoff.next_delay(run_lasted),
        }
    }
}

/// The process exit code of a run that ended with `ending` after reporting `errors` errors.
///
/// - 0: the run ended as the manifest and flags ask — `--run-for` ran out, runStrategy
///   Halted, the VM stopped and runStrategy does not restart it (Once, Manual,
///   RerunOnFailure after a clean stop), or `--max-restarts` was reached — and no `error`
///   event was reported.
/// - 1: an `error` event was reported (the VM could not be created or started, the vCPU
///   failed, an action could not be carried out, the event loop failed).
/// - 2 is used before any run, for a manifest that does not validate or a bad flag.
/// - 128 + N: the run was interrupted by signal N (130 for SIGINT, 143 for SIGTERM), as a
///   shell reports a process killed by it; the VM was stopped cleanly first.
pub fn exit_code(ending: &Ending, errors: u32) -> u8 {
    match ending {
        Ending::Fatal(_) => 1,
        Ending::Interrupted(sig) => u8::try_from(128 + sig.clamp(&0, &127)).unwrap_or(u8::MAX),
        _ if errors > 0 => 1,
        Ending::RunFor | Ending::Halted | Ending::NoRestart(..) | Ending::MaxRestarts(_) => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stop(reason: StopReason, trigger: Option<Cause>, forced: Option<bool>) -> Stop {
        Stop {
            reason,
            trigger,
            forced,
        }
    }

    #[test]
    fn failures_are_what_kubevirt_marks_failed() {
        assert!(is_failure(&Stop::plain(StopReason::Watchdog)));
        assert!(is_failure(&Stop::plain(StopReason::Liveness)));
        assert!(is_failure(&Stop::plain(StopReason::Error)));
        assert!(!is_failure(&Stop::plain(StopReason::Guest)));
        assert!(!is_failure(&Stop::plain(StopReason::Runtime)));
        let graceful = stop(StopReason::Shutdown, Some(Cause::Watchdog), Some(false));
        let forced = stop(StopReason::Shutdown, Some(Cause::Watchdog), Some(true));
        let liveness = stop(StopReason::Shutdown, Some(Cause::Liveness), Some(false));
        assert!(!is_failure(&graceful));
        assert!(is_failure(&forced));
        assert!(is_failure(&liveness));
    }

    #[test]
    fn strategy_table() {
        use RunStrategy::*;
        let stops = [
            (
                Stop::plain(StopReason::Watchdog),
                [true, true, false, false],
            ),
            (
                Stop::plain(StopReason::Liveness),
                [true, true, false, false],
            ),
            (Stop::plain(StopReason::Guest), [true, false, false, false]),
            (
                stop(StopReason::Shutdown, Some(Cause::Watchdog), Some(false)),
                [true, false, false, false],
            ),
            (
                stop(StopReason::Shutdown, Some(Cause::Watchdog), Some(true)),
                [true, true, false, false],
            ),
            (Stop::plain(StopReason::Error), [true, true, false, false]),
            (
                Stop::plain(StopReason::Runtime),
                [false, false, false, false],
            ),
        ];
        for (s, expected) in stops {
            for (strategy, want) in [Always, RerunOnFailure, Once, Manual]
                .into_iter()
                .zip(expected)
            {
                assert_eq!(
                    wants_restart(strategy, &s),
                    want,
                    "{strategy:?} after {s:?}"
                );
            }
            assert!(!wants_restart(Halted, &s));
        }
        assert!(!starts(Halted));
        for s in [Always, RerunOnFailure, Once, Manual] {
            assert!(starts(s), "{s:?}");
        }
    }

    #[test]
    fn backoff_doubles_caps_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(100));
        let short = Duration::from_secs(1);
        let delays: Vec<u64> = (0..7)
            .map(|_| b.next_delay(short).as_millis() as u64)
            .collect();
        assert_eq!(delays, [100, 200, 400, 800, 1600, 1600, 1600]);
        assert_eq!(b.next_delay(Duration::from_secs(60)).as_millis(), 100);
        assert_eq!(b.next_delay(short).as_millis(), 200);
    }

    #[test]
    fn policy_counts_restarts_up_to_the_bound() {
        let mut p = RestartPolicy::new(
            RunStrategy::Always,
            Some(2),
            Backoff::new(Duration::from_secs(1)),
        );
        let s = Stop::plain(StopReason::Watchdog);
        let short = Duration::from_secs(5);
        assert_eq!(
            p.after_stop(&s, short),
            AfterStop::Restart {
                count: 1,
                delay: Duration::from_secs(1)
            }
        );
        assert_eq!(
            p.after_stop(&s, short),
            AfterStop::Restart {
                count: 2,
                delay: Duration::from_secs(2)
            }
        );
        assert_eq!(
            p.after_stop(&s, short),
            AfterStop::End(Ending::MaxRestarts(2))
        );
        assert_eq!(p.restarts(), 2);
        assert_eq!(
            p.after_stop(&Stop::plain(StopReason::Runtime), short),
            AfterStop::End(Ending::RunFor)
        );
    }

    #[test]
    fn policy_ends_when_the_strategy_does_not_restart() {
        let mut p = RestartPolicy::new(
            RunStrategy::RerunOnFailure,
            None,
            Backoff::new(Duration::from_secs(1)),
        );
        assert_eq!(
            p.after_stop(&Stop::plain(StopReason::Guest), Duration::ZERO),
            AfterStop::End(Ending::NoRestart(
                RunStrategy::RerunOnFailure,
                StopReason::Guest
            ))
        );
        let mut once = RestartPolicy::new(
            RunStrategy::Once,
            Some(5),
            Backoff::new(Duration::from_secs(1)),
        );
        assert_eq!(
            once.after_stop(&Stop::plain(StopReason::Watchdog), Duration::ZERO),
            AfterStop::End(Ending::NoRestart(RunStrategy::Once, StopReason::Watchdog))
        );
    }

    #[test]
    fn exit_codes() {
        assert_eq!(exit_code(&Ending::RunFor, 0), 0);
        assert_eq!(exit_code(&Ending::Halted, 0), 0);
        assert_eq!(exit_code(&Ending::MaxRestarts(1), 0), 0);
        assert_eq!(
            exit_code(
                &Ending::NoRestart(RunStrategy::Once, StopReason::Watchdog),
                0
            ),
            0
        );
        assert_eq!(exit_code(&Ending::RunFor, 1), 1);
        assert_eq!(exit_code(&Ending::Fatal("kvm".into()), 0), 1);
        assert_eq!(exit_code(&Ending::Interrupted(2), 0), 130);
        assert_eq!(exit_code(&Ending::Interrupted(15), 1), 143);
        for strategy in RunStrategy::ALL {
            assert!(!wants_restart(strategy, &Stop::plain(StopReason::Signal)));
        }
    }

    #[test]
    fn api_stops_and_shutdowns_are_never_restarted_nor_failures() {
        let api_stop = Stop::plain(StopReason::Api);
        let api_shutdown = stop(StopReason::Shutdown, Some(Cause::Api), Some(false));
        for strategy in RunStrategy::ALL {
            assert!(!wants_restart(strategy, &api_stop));
            assert!(!wants_restart(strategy, &api_shutdown));
        }
        assert!(!is_failure(&api_stop));
        assert!(!is_failure(&api_shutdown));
        assert!(is_failure(&stop(
            StopReason::Shutdown,
            Some(Cause::Api),
            Some(true)
        )));
        assert_eq!(
            Ending::NoRestart(RunStrategy::Always, StopReason::Api).message(),
            "the VM was stopped through the API"
        );
    }
}
