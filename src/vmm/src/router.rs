//! The one action router: what the VMM does when the watchdog fires or the liveness probe fails.
//!
//! Both sources go through [`route`], which maps a [`Trigger`] to a [`Decision`]; the event
//! loop ([`super::runner`]) carries the decision out on the machine. Keeping the mapping
//! here, pure, lets it be tested without KVM and guarantees the watchdog and the probes can
//! never disagree on what, say, `shutdown` means.
//!
//! | trigger | decision |
//! | --- | --- |
//! | watchdog `poweroff` | stop at once; `stopped` reason `watchdog` |
//! | watchdog `reset` | warm reset of the whole VM; the guest boots again (`started`, boot N+1) |
//! | watchdog `shutdown` | power button, forced poweroff after `terminationGracePeriodSeconds`; `stopped` reason `shutdown` |
//! | watchdog `pause` | pause the VM (vCPU and watchdog frozen); it stays paused |
//! | watchdog `inject-nmi` | an NMI into the vCPU |
//! | watchdog `none` | the event only |
//! | watchdog `debug` | the event and a log line |
//! | liveness, default (`stop`) | stop at once; `stopped` reason `liveness` |
//! | liveness, `vmpulse.io/liveness-action: reset` | warm reset |
//! | liveness, `vmpulse.io/liveness-action: shutdown` | as watchdog `shutdown`, trigger `liveness` |
//! | API `PUT /vm/pause`, `/vm/reset`, `/vm/shutdown` | as the watchdog action of the same name, trigger `api` |
//! | API `PUT /vm/stop` | stop at once; `stopped` reason `api` (never restarted, as `virtctl stop`) |
//! | API `PUT /vm/resume` | resume a paused VM |

use i6300esb::WatchdogAction;

use super::events::{Cause, StopReason};
use vmpulse_manifest::LivenessAction;

/// Who asks for an action, and which.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Trigger {
    /// The watchdog expired with this action configured.
    Watchdog(WatchdogAction),
    /// The liveness probe failed; the manifest's liveness action.
    Liveness(LivenessAction),
    /// A request on the API socket.
    Api(ApiAction),
}

/// What a `PUT /vm/...` request asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ApiAction {
    /// `PUT /vm/pause`.
    Pause,
    /// `PUT /vm/resume`.
    Resume,
    /// `PUT /vm/reset`.
    Reset,
    /// `PUT /vm/stop`.
    Stop,
    /// `PUT /vm/shutdown`.
    Shutdown,
}

impl ApiAction {
    /// Every action with the last part of its path.
    pub const ALL: [(&'static str, ApiAction); 5] = [
        ("pause", ApiAction::Pause),
        ("resume", ApiAction::Resume),
        ("reset", ApiAction::Reset),
        ("stop", ApiAction::Stop),
        ("shutdown", ApiAction::Shutdown),
    ];

    /// The action named by the last part of its path.
    pub fn from_name(name: &str) -> Option<ApiAction> {
        Self::ALL.iter().find(|(n, _)| *n == name).map(|&(_, a)| a)
    }
}

impl Trigger {
    /// Which source this is.
    pub fn cause(self) -> Cause {
        match self {
            Trigger::Watchdog(_) => Cause::Watchdog,
            Trigger::Liveness(_) => Cause::Liveness,
            Trigger::Api(_) => Cause::Api,
        }
    }
}

/// What the event loop does to the machine.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Stop the VM at once with this reason.
    PowerOff(StopReason),
    /// Warm-reset the whole VM.
    Reset,
    /// Press the power button; force a poweroff after the grace period.
    Shutdown,
    /// Pause the VM.
    Pause,
    /// Resume a paused VM.
    Resume,
    /// Inject an NMI.
    InjectNmi,
    /// Report only (`none`); `log` also writes a log line (`debug`).
    Report {
        /// Whether to log it.
        log: bool,
    },
}

/// The decision for a trigger.
pub fn route(trigger: Trigger) -> Decision {
    match trigger {
        Trigger::Watchdog(action) => match action {
            WatchdogAction::Poweroff => Decision::PowerOff(StopReason::Watchdog),
            WatchdogAction::Reset => Decision::Reset,
            WatchdogAction::Shutdown => Decision::Shutdown,
            WatchdogAction::Pause => Decision::Pause,
            WatchdogAction::InjectNmi => Decision::InjectNmi,
            WatchdogAction::None => Decision::Report { log: false },
            WatchdogAction::Debug => Decision::Report { log: true },
            // An action a later device crate adds: report it, loudly, rather
            // than guess at what it does to the VM.
            _ => Decision::Report { log: true },
        },
        Trigger::Liveness(action) => match action {
            LivenessAction::Stop => Decision::PowerOff(StopReason::Liveness),
            LivenessAction::Reset => Decision::Reset,
            LivenessAction::Shutdown => Decision::Shutdown,
        },
        Trigger::Api(action) => match action {
            ApiAction::Pause => Decision::Pause,
            ApiAction::Resume => Decision::Resume,
            ApiAction::Reset => Decision::Reset,
            ApiAction::Stop => Decision::PowerOff(StopReason::Api),
            ApiAction::Shutdown => Decision::Shutdown,
        },
    }
}

/// The name of a liveness action, as in the annotation and in `liveness` events.
pub fn liveness_action_name(action: LivenessAction) -> &'static str {
    match action {
        LivenessAction::Stop => "stop",
        LivenessAction::Reset => "reset",
        LivenessAction::Shutdown => "shutdown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_watchdog_action_has_its_decision() {
        let table = [
            (
                WatchdogAction::Poweroff,
                Decision::PowerOff(StopReason::Watchdog),
            ),
            (WatchdogAction::Reset, Decision::Reset),
            (WatchdogAction::Shutdown, Decision::Shutdown),
            (WatchdogAction::Pause, Decision::Pause),
            (WatchdogAction::InjectNmi, Decision::InjectNmi),
            (WatchdogAction::None, Decision::Report { log: false }),
            (WatchdogAction::Debug, Decision::Report { log: true }),
        ];
        assert_eq!(table.len(), WatchdogAction::ALL.len());
        for (action, decision) in table {
            assert_eq!(route(Trigger::Watchdog(action)), decision, "{action}");
        }
    }

    #[test]
    fn liveness_failures_share_the_router() {
        assert_eq!(
            route(Trigger::Liveness(LivenessAction::Stop)),
            Decision::PowerOff(StopReason::Liveness)
        );
        // The same decisions as the watchdog's actions of the same name.
        assert_eq!(
            route(Trigger::Liveness(LivenessAction::Reset)),
            route(Trigger::Watchdog(WatchdogAction::Reset))
        );
        assert_eq!(
            route(Trigger::Liveness(LivenessAction::Shutdown)),
            route(Trigger::Watchdog(WatchdogAction::Shutdown))
        );
        assert_eq!(
            Trigger::Liveness(LivenessAction::Stop).cause(),
            Cause::Liveness
        );
        assert_eq!(
            Trigger::Watchdog(WatchdogAction::Reset).cause(),
            Cause::Watchdog
        );
    }

    #[test]
    fn api_requests_share_the_watchdog_paths() {
        for (name, action) in [
            ("pause", WatchdogAction::Pause),
            ("reset", WatchdogAction::Reset),
            ("shutdown", WatchdogAction::Shutdown),
        ] {
            let api = ApiAction::from_name(name).unwrap();
            assert_eq!(route(Trigger::Api(api)), route(Trigger::Watchdog(action)));
        }
        assert_eq!(
            route(Trigger::Api(ApiAction::Stop)),
            Decision::PowerOff(StopReason::Api)
        );
        assert_eq!(route(Trigger::Api(ApiAction::Resume)), Decision::Resume);
        assert_eq!(Trigger::Api(ApiAction::Stop).cause(), Cause::Api);
        assert_eq!(ApiAction::from_name("explode"), None);
    }

    #[test]
    fn liveness_action_names() {
        assert_eq!(liveness_action_name(LivenessAction::Stop), "stop");
        assert_eq!(liveness_action_name(LivenessAction::Reset), "reset");
        assert_eq!(liveness_action_name(LivenessAction::Shutdown), "shutdown");
    }
}
