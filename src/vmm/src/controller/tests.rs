//! The controller in virtual time: a small simulated shell (a scripted fake VM, a fake
//! watchdog and a fake probe set) carries out its commands; nothing sleeps and no KVM is used.
//! The first group ports the runner's fake-VM tests; the rest covers the run's lifecycle cases.

use super::*;
use crate::runner::RunConfig;
use i6300esb::WatchdogAction;

const MS: Duration = Duration::from_millis(1);

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// What the fake VM (and its fake watchdog and probes) does.
#[derive(Clone, Default)]
struct Script {
    /// The watchdog action of the device (the manifest's).
    action: Option<WatchdogAction>,
    /// The guest arms the watchdog at every boot and never kicks it: it fires 10 ms later.
    arm_watchdog: bool,
    /// The guest ignores the power button.
    ignore_shutdown: bool,
    /// The guest powers off right after booting.
    poweroff_at_boot: bool,
    /// The vCPU fails right after booting.
    error_at_boot: bool,
    /// The guest asks for a reset at its first boot.
    reset_at_first_boot: bool,
    /// Creating the VM fails.
    fail_create: bool,
    /// Starting the VM fails.
    fail_start: bool,
    /// Resetting, pausing, injecting an NMI fails.
    fail_reset: bool,
    fail_pause: bool,
    fail_nmi: bool,
    /// What the probe set reports, relative to each start of its schedule.
    probe_plan: Vec<(Duration, Vec<ProbeReport>)>,
}

/// Something the fake world will report at `at`.
struct Pending {
    at: Duration,
    input: Input,
    /// From the probe set (cancelled when its schedule stops).
    probe: bool,
}

/// A simulated shell: carries out every command at once, in virtual time.
struct Sim {
    ctl: Controller,
    now: Duration,
    script: Script,
    events: Vec<(Duration, Event)>,
    calls: Vec<&'static str>,
    logs: Vec<String>,
    created: u32,
    alive: bool,
    timeout_flag: bool,
    reset_asked: bool,
    watchdog_at: Option<Duration>,
    probe_ready: bool,
    world: Vec<Pending>,
    finished: bool,
}

fn config(strategy: RunStrategy) -> ControllerConfig {
    ControllerConfig {
        strategy,
        watchdog_name: Some("mywatchdog".into()),
        liveness_action: LivenessAction::Stop,
        grace_period: ms(50),
        probes: false,
        max_restarts: None,
        // A bound on every test: none may run longer than this in virtual time.
        run_for: Some(Duration::from_secs(5)),
        backoff: ms(10),
    }
}

fn armed(action: WatchdogAction) -> Script {
    Script {
        action: Some(action),
        arm_watchdog: true,
        ..Script::default()
    }
}

impl Sim {
    fn new(cfg: ControllerConfig, script: Script) -> Self {
        Sim {
            ctl: Controller::new(cfg),
            now: Duration::ZERO,
            script,
            events: Vec::new(),
            calls: Vec::new(),
            logs: Vec::new(),
            created: 0,
            alive: false,
            timeout_flag: false,
            reset_asked: false,
            watchdog_at: None,
            probe_ready: false,
            world: Vec::new(),
            finished: false,
        }
    }

    fn at(&mut self, after: Duration, input: Input, probe: bool) {
        self.world.push(Pending {
            at: self.now + after,
            input,
            probe,
        });
    }

    fn boot(&mut self) {
        let line = format!("fake: boot, timeout flag {}", u8::from(self.timeout_flag));
        self.at(
            Duration::ZERO,
            Input::Machine(MachineEvent::ConsoleLine(line)),
            false,
        );
        if self.script.arm_watchdog {
            self.watchdog_at = Some(self.now + ms(10));
        }
        if self.script.poweroff_at_boot {
            self.at(
                Duration::ZERO,
                Input::Machine(MachineEvent::GuestPoweroff),
                false,
            );
        }
        if self.script.error_at_boot {
            let e = MachineEvent::Error("fake vCPU failure".into());
            self.at(Duration::ZERO, Input::Machine(e), false);
        }
        if self.script.reset_at_first_boot && !self.reset_asked {
            self.reset_asked = true;
            self.at(
                Duration::ZERO,
                Input::Machine(MachineEvent::GuestReset),
                false,
            );
        }
    }

    /// The probe set's schedule stops. As the real set does, it then reports, at its next
    /// `process`, the Ready changes it had published but nobody had processed yet, and
    /// `Ready(false)` if it was ready.
    fn stop_probes(&mut self) {
        let mut leftover = Vec::new();
        let mut ready = self.probe_ready;
        for p in self.world.iter().filter(|p| p.probe && p.at <= self.now) {
            if let Input::Probes(batch) = &p.input {
                for r in batch {
                    if let ProbeReport::Ready(r) = r {
                        leftover.push(ProbeReport::Ready(*r));
                        ready = *r;
                    }
                }
            }
        }
        self.world.retain(|p| !p.probe);
        if ready {
            leftover.push(ProbeReport::Ready(false));
        }
        self.probe_ready = false;
        if !leftover.is_empty() {
            self.at(Duration::ZERO, Input::Probes(leftover), true);
        }
    }

    fn outcome_of(fail: bool, what: &str) -> Result<(), String> {
        if fail {
            Err(format!("{what} refused"))
        } else {
            Ok(())
        }
    }

    /// Carry out every command.
    fn drain(&mut self) {
        while let Some(command) = self.ctl.poll_command() {
            let outcome = match command {
                Command::Start => {
                    self.created += 1;
                    // A new VM: its watchdog is powered on afresh.
                    self.timeout_flag = false;
                    if self.script.fail_create {
                        Some(Err("cannot create the VM: no KVM here".to_string()))
                    } else {
                        self.calls.push("start");
                        self.alive = true;
                        if self.script.fail_start {
                            Some(Err("cannot start the VM: KVM_RUN refused".to_string()))
                        } else {
                            self.boot();
                            Some(Ok(()))
                        }
                    }
                }
                Command::Stop => {
                    if std::mem::take(&mut self.alive) {
                        self.calls.push("stop");
                    }
                    self.watchdog_at = None;
                    self.world.retain(|p| !matches!(p.input, Input::Machine(_)));
                    self.stop_probes();
                    None
                }
                Command::Reset => {
                    self.calls.push("reset");
                    let r = Self::outcome_of(self.script.fail_reset, "reset");
                    if r.is_ok() {
                        self.boot();
                    }
                    Some(r)
                }
                Command::Pause => {
                    self.calls.push("pause");
                    let r = Self::outcome_of(self.script.fail_pause, "pause");
                    if r.is_ok() {
                        self.watchdog_at = None;
                    }
                    Some(r)
                }
                Command::Resume => {
                    self.calls.push("resume");
                    Some(Ok(()))
                }
                Command::PowerButton => {
                    self.calls.push("power_button");
                    if !self.script.ignore_shutdown {
                        let line = MachineEvent::ConsoleLine("fake: shutting down".into());
                        self.at(Duration::ZERO, Input::Machine(line), false);
                        self.at(ms(1), Input::Machine(MachineEvent::GuestPoweroff), false);
                    }
                    None
                }
                Command::InjectNmi => {
                    self.calls.push("inject_nmi");
                    let r = Self::outcome_of(self.script.fail_nmi, "nmi");
                    if r.is_ok() {
                        let line = MachineEvent::ConsoleLine("guest: NMI received".into());
                        self.at(Duration::ZERO, Input::Machine(line), false);
                    }
                    Some(r)
                }
                Command::StartProbes => {
                    self.calls.push("start_probes");
                    for (after, batch) in self.script.probe_plan.clone() {
                        self.at(after, Input::Probes(batch), true);
                    }
                    None
                }
                Command::StopProbes => {
                    self.calls.push("stop_probes");
                    self.stop_probes();
                    None
                }
                Command::HoldLiveness => {
                    self.calls.push("hold_liveness");
                    None
                }
                Command::ArmTimer { at, .. } => {
                    assert!(at >= self.now, "a timer armed in the past");
                    None
                }
                Command::DisarmTimer(_) => None,
                Command::Log(line) => {
                    self.logs.push(line);
                    None
                }
                Command::Emit { at, event } => {
                    assert!(!self.finished, "{event:?} after finished");
                    assert_eq!(at, self.now, "events carry the time they happened");
                    self.finished = matches!(event, Event::Finished { .. });
                    self.events.push((at, event));
                    None
                }
            };
            if let Some(result) = outcome {
                assert!(self.ctl.awaiting_outcome());
                self.ctl.command_done(self.now, result);
            }
        }
    }

    /// Run until `finished`, stepping virtual time from one deadline to the next.
    fn run(mut self) -> Self {
        self.ctl.begin(self.now);
        self.drain();
        for _ in 0..10_000 {
            if self.ctl.phase() == Phase::Finished {
                assert!(self.finished);
                return self;
            }
            self.step();
        }
        panic!("the run never ended: {:?}", self.events);
    }

    /// Go to the next moment anything happens, and deliver it: the VM's and the probes'
    /// reports first, then the watchdog, then the timers (the runner's order).
    fn step(&mut self) {
        let next = [
            self.world.iter().map(|p| p.at).min(),
            self.watchdog_at,
            self.ctl.next_deadline().map(|(at, _)| at),
        ]
        .into_iter()
        .flatten()
        .min()
        .unwrap_or_else(|| panic!("nothing more can happen: {:?}", self.events));
        self.now = self.now.max(next);
        while let Some(i) = self.world.iter().position(|p| p.at <= self.now) {
            let p = self.world.remove(i);
            if let Input::Probes(batch) = &p.input {
                for r in batch {
                    if let ProbeReport::Ready(ready) = r {
                        self.probe_ready = *ready;
                    }
                }
            }
            self.ctl.handle(self.now, p.input);
            self.drain();
        }
        if self.watchdog_at.is_some_and(|at| at <= self.now) {
            self.watchdog_at = None;
            let action = self.script.action.unwrap_or(WatchdogAction::None);
            if action == WatchdogAction::Reset {
                self.timeout_flag = true;
            }
            let time_ns = u64::try_from(self.now.as_nanos()).unwrap();
            self.ctl
                .handle(self.now, Input::Expiry(Expiry { action, time_ns }));
            self.drain();
        }
        self.ctl.fire_due_timers(self.now);
        self.drain();
    }

    /// Run until virtual time `t` (or the end of the run).
    fn run_until(&mut self, t: Duration) {
        if self.ctl.phase() == Phase::Idle {
            self.ctl.begin(self.now);
            self.drain();
        }
        while self.ctl.phase() != Phase::Finished {
            let next = [
                self.world.iter().map(|p| p.at).min(),
                self.watchdog_at,
                self.ctl.next_deadline().map(|(at, _)| at),
            ]
            .into_iter()
            .flatten()
            .min();
            match next {
                Some(n) if n <= t => self.step(),
                _ => break,
            }
        }
        self.now = self.now.max(t);
    }

    fn input(&mut self, input: Input) {
        self.ctl.handle(self.now, input);
        self.drain();
    }

    fn outcome(&self) -> Outcome {
        self.ctl.outcome().cloned().expect("the run is over")
    }

    fn kinds(&self) -> Vec<String> {
        kinds(&self.events)
    }

    fn times_of(&self, pred: impl Fn(&Event) -> bool) -> Vec<u64> {
        self.events
            .iter()
            .filter(|(_, e)| pred(e))
            .map(|(at, _)| u64::try_from(at.as_millis()).unwrap())
            .collect()
    }

    fn console(&self) -> Vec<&str> {
        self.events
            .iter()
            .filter_map(|(_, e)| match e {
                Event::Console { line } => Some(line.as_str()),
                _ => None,
            })
            .collect()
    }
}

fn kinds(events: &[(Duration, Event)]) -> Vec<String> {
    events
        .iter()
        .filter(|(_, e)| !matches!(e, Event::Console { .. } | Event::Info { .. }))
        .map(|(_, e)| match e {
            Event::Started { boot } => format!("started {boot}"),
            Event::Watchdog { action, device, .. } => format!("watchdog {action} {device}"),
            Event::Stopped {
                reason,
                trigger,
                forced,
            } => format!("stopped {} {trigger:?} {forced:?}", reason.name()),
            Event::Restart { count, .. } => format!("restart {count}"),
            Event::Error { .. } => "error".into(),
            Event::Finished { exit_code, .. } => format!("finished {exit_code}"),
            Event::Ready { ready } => format!("ready {ready}"),
            Event::Liveness { action, .. } => format!("liveness {action}"),
            Event::Probe { probe, result, .. } => format!("probe {probe} {result}"),
            other => format!("{other:?}"),
        })
        .collect()
}

fn attempt(probe: &str, success: bool) -> ProbeReport {
    ProbeReport::Attempt(Event::Probe {
        probe: probe.into(),
        result: if success { "success" } else { "failure" }.into(),
        message: "fake".into(),
        address: Some("127.0.0.1:1".into()),
        exit_code: None,
        output: None,
        duration_us: 0,
        streak: None,
    })
}

/// A liveness probe refused at once at every start of its schedule.
fn failing_liveness() -> Vec<(Duration, Vec<ProbeReport>)> {
    vec![(
        Duration::ZERO,
        vec![
            // No readiness probe: the set is ready at once.
            ProbeReport::Ready(true),
            attempt("liveness", false),
            ProbeReport::LivenessFailed {
                message: "connect: Connection refused".into(),
            },
        ],
    )]
}

/// A controller already running boot 1 at time 0, its commands drained.
fn running(cfg: ControllerConfig) -> (Controller, Vec<Command>) {
    let mut ctl = Controller::new(cfg);
    ctl.begin(Duration::ZERO);
    let mut commands = drain(&mut ctl);
    assert_eq!(commands.pop(), Some(Command::Start));
    ctl.command_done(Duration::ZERO, Ok(()));
    commands.extend(drain(&mut ctl));
    assert_eq!(ctl.phase(), Phase::Running);
    (ctl, commands)
}

fn drain(ctl: &mut Controller) -> Vec<Command> {
    std::iter::from_fn(|| ctl.poll_command()).collect()
}

fn emitted(commands: &[Command]) -> Vec<Event> {
    commands
        .iter()
        .filter_map(|c| match c {
            Command::Emit { event, .. } => Some(event.clone()),
            _ => None,
        })
        .collect()
}

fn expiry(action: WatchdogAction) -> Input {
    Input::Expiry(Expiry { action, time_ns: 0 })
}

// ---- the runner's scenarios, in virtual time ------------------------------------------

#[test]
fn poweroff_once_stops_and_ends() {
    let sim = Sim::new(config(RunStrategy::Once), armed(WatchdogAction::Poweroff)).run();
    assert_eq!(
        sim.kinds(),
        [
            "started 1",
            "watchdog poweroff mywatchdog",
            "stopped watchdog Some(Watchdog) None",
            "finished 0"
        ]
    );
    let outcome = sim.outcome();
    assert_eq!(
        outcome.ending,
        Ending::NoRestart(RunStrategy::Once, StopReason::Watchdog)
    );
    assert_eq!(outcome.exit_code, 0);
    assert_eq!(sim.created, 1);
    assert_eq!(sim.calls, ["start", "stop"]);
    // The watchdog fired 10 ms after boot; the run ended then.
    assert_eq!(sim.times_of(|e| matches!(e, Event::Finished { .. })), [10]);
}

#[test]
fn poweroff_always_restarts_up_to_max_restarts() {
    let mut cfg = config(RunStrategy::Always);
    cfg.max_restarts = Some(2);
    let sim = Sim::new(cfg, armed(WatchdogAction::Poweroff)).run();
    assert_eq!(
        sim.kinds(),
        [
            "started 1",
            "watchdog poweroff mywatchdog",
            "stopped watchdog Some(Watchdog) None",
            "restart 1",
            "started 2",
            "watchdog poweroff mywatchdog",
            "stopped watchdog Some(Watchdog) None",
            "restart 2",
            "started 3",
            "watchdog poweroff mywatchdog",
            "stopped watchdog Some(Watchdog) None",
            "finished 0"
        ]
    );
    let outcome = sim.outcome();
    assert_eq!(outcome.ending, Ending::MaxRestarts(2));
    assert_eq!((outcome.boots, outcome.restarts), (3, 2));
    assert_eq!(sim.created, 3);
    let delays: Vec<u64> = sim
        .events
        .iter()
        .filter_map(|(_, e)| match e {
            Event::Restart { delay_ms, .. } => Some(*delay_ms),
            _ => None,
        })
        .collect();
    assert_eq!(delays, [10, 20]);
    // Exactly: stop at 10, back-off 10 → boot at 20; stop at 30, back-off 20 → boot at 50.
    assert_eq!(
        sim.times_of(|e| matches!(e, Event::Started { .. })),
        [0, 20, 50]
    );
    // Every restart is a new VM: the watchdog's timeout flag starts cleared.
    assert_eq!(sim.console(), ["fake: boot, timeout flag 0"; 3]);
}

#[test]
fn reset_boots_again_with_the_flag_kept_until_run_for() {
    let mut cfg = config(RunStrategy::Always);
    cfg.run_for = Some(ms(35));
    let sim = Sim::new(cfg, armed(WatchdogAction::Reset)).run();
    let outcome = sim.outcome();
    assert_eq!(outcome.ending, Ending::RunFor);
    assert_eq!(outcome.exit_code, 0);
    assert_eq!(
        sim.times_of(|e| matches!(e, Event::Started { .. })),
        [0, 10, 20, 30]
    );
    assert_eq!(outcome.boots, 4);
    assert_eq!(
        sim.console(),
        [
            "fake: boot, timeout flag 0",
            "fake: boot, timeout flag 1",
            "fake: boot, timeout flag 1",
            "fake: boot, timeout flag 1"
        ],
        "a warm reset keeps the flag"
    );
    assert_eq!(
        sim.kinds()[sim.kinds().len() - 2..],
        ["stopped runtime None None", "finished 0"]
    );
    assert_eq!(sim.created, 1, "warm resets keep the VM");
    assert_eq!(sim.calls, ["start", "reset", "reset", "reset", "stop"]);
}

#[test]
fn graceful_shutdown_does_not_rerun() {
    let sim = Sim::new(
        config(RunStrategy::RerunOnFailure),
        armed(WatchdogAction::Shutdown),
    )
    .run();
    assert_eq!(
        sim.kinds(),
        [
            "started 1",
            "watchdog shutdown mywatchdog",
            "stopped shutdown Some(Watchdog) Some(false)",
            "finished 0"
        ]
    );
    assert_eq!(
        sim.outcome().ending,
        Ending::NoRestart(RunStrategy::RerunOnFailure, StopReason::Shutdown)
    );
    assert_eq!(sim.calls, ["start", "power_button", "stop"]);
}

#[test]
fn forced_shutdown_after_the_grace_period_reruns() {
    let mut cfg = config(RunStrategy::RerunOnFailure);
    cfg.max_restarts = Some(1);
    let script = Script {
        ignore_shutdown: true,
        ..armed(WatchdogAction::Shutdown)
    };
    let sim = Sim::new(cfg, script).run();
    assert_eq!(
        sim.kinds(),
        [
            "started 1",
            "watchdog shutdown mywatchdog",
            "stopped shutdown Some(Watchdog) Some(true)",
            "restart 1",
            "started 2",
            "watchdog shutdown mywatchdog",
            "stopped shutdown Some(Watchdog) Some(true)",
            "finished 0"
        ]
    );
    assert_eq!(sim.outcome().ending, Ending::MaxRestarts(1));
    // Fired at 10, forced after the 50 ms grace period at 60, restarted at 70, …
    assert_eq!(
        sim.times_of(|e| matches!(e, Event::Stopped { .. })),
        [60, 130]
    );
}

#[test]
fn inject_nmi_none_and_debug_keep_the_vm_running() {
    for (action, nmi, log) in [
        (WatchdogAction::InjectNmi, true, false),
        (WatchdogAction::None, false, false),
        (WatchdogAction::Debug, false, true),
    ] {
        let mut cfg = config(RunStrategy::Once);
        cfg.run_for = Some(ms(100));
        let sim = Sim::new(cfg, armed(action)).run();
        assert_eq!(sim.outcome().ending, Ending::RunFor, "{action}");
        let nmis = sim
            .console()
            .iter()
            .filter(|l| **l == "guest: NMI received")
            .count();
        assert_eq!(nmis > 0, nmi, "{action}");
        assert_eq!(sim.calls.contains(&"inject_nmi"), nmi, "{action}");
        assert_eq!(sim.logs.len(), usize::from(log), "{action}");
        assert_eq!(
            sim.kinds(),
            [
                "started 1".to_string(),
                format!("watchdog {} mywatchdog", action.name()),
                "stopped runtime None None".to_string(),
                "finished 0".to_string()
            ]
        );
        assert_eq!(sim.created, 1);
    }
}

#[test]
fn pause_freezes_until_run_for() {
    let mut cfg = config(RunStrategy::Always);
    cfg.run_for = Some(ms(100));
    let sim = Sim::new(cfg, armed(WatchdogAction::Pause)).run();
    assert_eq!(sim.outcome().ending, Ending::RunFor);
    assert_eq!(sim.calls, ["start", "pause", "stop"]);
    assert_eq!(
        sim.kinds(),
        [
            "started 1",
            "watchdog pause mywatchdog",
            "stopped runtime None None",
            "finished 0"
        ]
    );
    assert!(sim.events.iter().any(|(_, e)| *e
        == Event::Info {
            message: "the VM is paused".into()
        }));
}

#[test]
fn guest_poweroff_is_not_a_failure() {
    let script = Script {
        poweroff_at_boot: true,
        ..Script::default()
    };
    let sim = Sim::new(config(RunStrategy::RerunOnFailure), script.clone()).run();
    assert_eq!(
        sim.kinds(),
        ["started 1", "stopped guest None None", "finished 0"]
    );
    assert_eq!(sim.outcome().exit_code, 0);
    let mut cfg = config(RunStrategy::Always);
    cfg.max_restarts = Some(1);
    let sim = Sim::new(cfg, script).run();
    assert_eq!(
        sim.kinds(),
        [
            "started 1",
            "stopped guest None None",
            "restart 1",
            "started 2",
            "stopped guest None None",
            "finished 0"
        ]
    );
    assert_eq!(sim.outcome().ending, Ending::MaxRestarts(1));
}

#[test]
fn halted_never_creates_a_vm() {
    let sim = Sim::new(config(RunStrategy::Halted), armed(WatchdogAction::Reset)).run();
    assert_eq!(sim.outcome().ending, Ending::Halted);
    assert_eq!(sim.outcome().exit_code, 0);
    assert_eq!(sim.created, 0);
    assert_eq!(sim.kinds(), ["finished 0"]);
    assert_eq!(sim.ctl.next_deadline(), None, "no --run-for timer either");
}

#[test]
fn errors_make_the_exit_code_one() {
    let script = Script {
        fail_create: true,
        ..armed(WatchdogAction::Reset)
    };
    let sim = Sim::new(config(RunStrategy::Always), script).run();
    assert!(matches!(sim.outcome().ending, Ending::Fatal(ref m) if m.contains("no KVM here")));
    assert_eq!(sim.outcome().exit_code, 1);
    assert_eq!(sim.kinds(), ["error", "finished 1"]);
    assert!(sim.calls.is_empty());

    let script = Script {
        error_at_boot: true,
        ..Script::default()
    };
    let sim = Sim::new(config(RunStrategy::Once), script).run();
    assert_eq!(
        sim.kinds(),
        [
            "started 1",
            "error",
            "stopped error None None",
            "finished 1"
        ]
    );
    assert!(sim.events.iter().any(|(_, e)| *e
        == Event::Error {
            message: "the VM failed: fake vCPU failure".into()
        }));
    assert_eq!(sim.outcome().exit_code, 1);
    assert_eq!(sim.outcome().errors, 1);
}

#[test]
fn liveness_failure_stops_the_vm_through_the_router() {
    let mut cfg = config(RunStrategy::RerunOnFailure);
    cfg.probes = true;
    cfg.max_restarts = Some(1);
    let script = Script {
        probe_plan: failing_liveness(),
        ..Script::default()
    };
    let sim = Sim::new(cfg, script).run();
    assert_eq!(
        sim.kinds(),
        [
            "started 1",
            "ready true",
            "probe liveness failure",
            "liveness stop",
            "ready false",
            "stopped liveness Some(Liveness) None",
            "restart 1",
            "started 2",
            "ready true",
            "probe liveness failure",
            "liveness stop",
            "ready false",
            "stopped liveness Some(Liveness) None",
            "finished 0"
        ]
    );
    assert_eq!(sim.outcome().ending, Ending::MaxRestarts(1));
    assert_eq!(sim.created, 2);
    assert_eq!(
        sim.calls,
        [
            "start",
            "start_probes",
            "stop",
            "start",
            "start_probes",
            "stop"
        ]
    );
}

#[test]
fn liveness_resets_are_rate_limited_by_the_back_off() {
    let mut cfg = config(RunStrategy::Once);
    cfg.probes = true;
    cfg.liveness_action = LivenessAction::Reset;
    cfg.backoff = ms(200);
    cfg.run_for = Some(ms(1500));
    let script = Script {
        probe_plan: failing_liveness(),
        ..Script::default()
    };
    let sim = Sim::new(cfg, script).run();
    assert_eq!(sim.outcome().ending, Ending::RunFor);
    // The probe fails at once whenever it runs: resets at 0, 200, 600 and 1400 ms
    // (the pause before the probes resume doubles); the next would be at 3000.
    assert_eq!(
        sim.times_of(|e| matches!(e, Event::Started { .. })),
        [0, 0, 200, 600, 1400]
    );
    let notes: Vec<String> = sim
        .events
        .iter()
        .filter_map(|(_, e)| match e {
            Event::Info { message } if message.starts_with("probes resume") => {
                Some(message.clone())
            }
            _ => None,
        })
        .collect();
    assert_eq!(
        notes[..2],
        [
            "probes resume in 200 ms (back-off of liveness resets)",
            "probes resume in 400 ms (back-off of liveness resets)"
        ]
    );
    assert_eq!(sim.created, 1, "warm resets keep the VM");
    assert!(!sim
        .kinds()
        .iter()
        .any(|k| k.starts_with("stopped liveness")));
}

#[test]
fn a_guest_reset_request_reboots_in_place() {
    let mut cfg = config(RunStrategy::Once);
    cfg.run_for = Some(ms(100));
    let script = Script {
        action: Some(WatchdogAction::Poweroff),
        reset_at_first_boot: true,
        ..Script::default()
    };
    let sim = Sim::new(cfg, script).run();
    assert_eq!(
        sim.kinds(),
        [
            "started 1",
            "started 2",
            "stopped runtime None None",
            "finished 0"
        ]
    );
    assert_eq!(sim.calls, ["start", "reset", "stop"]);
    assert_eq!(sim.outcome().boots, 2);
    assert!(sim.events.iter().any(|(_, e)| *e
        == Event::Info {
            message: "the guest asked for a reset".into()
        }));
}

#[test]
fn a_vm_that_cannot_start_is_stopped_and_ends_the_run() {
    let script = Script {
        fail_start: true,
        ..Script::default()
    };
    let sim = Sim::new(config(RunStrategy::Always), script).run();
    assert_eq!(sim.kinds(), ["error", "finished 1"]);
    assert!(
        matches!(sim.outcome().ending, Ending::Fatal(ref m) if m == "cannot start the VM: KVM_RUN refused")
    );
    assert_eq!(sim.calls, ["start", "stop"]);
}

// ---- every runStrategy, every action ---------------------------------------------------

/// How the first VM stops, as scripted.
#[derive(Clone, Copy, Debug)]
enum HowItStops {
    WatchdogPoweroff,
    GuestPoweroff,
    GracefulShutdown,
    ForcedShutdown,
    VcpuError,
    Liveness,
}

fn stopping(how: HowItStops) -> (ControllerConfig, Script) {
    let mut cfg = config(RunStrategy::Always);
    cfg.max_restarts = Some(1);
    let script = match how {
        HowItStops::WatchdogPoweroff => armed(WatchdogAction::Poweroff),
        HowItStops::GuestPoweroff => Script {
            poweroff_at_boot: true,
            ..Script::default()
        },
        HowItStops::GracefulShutdown => armed(WatchdogAction::Shutdown),
        HowItStops::ForcedShutdown => Script {
            ignore_shutdown: true,
            ..armed(WatchdogAction::Shutdown)
        },
        HowItStops::VcpuError => Script {
            error_at_boot: true,
            ..Script::default()
        },
        HowItStops::Liveness => {
            cfg.probes = true;
            Script {
                probe_plan: failing_liveness(),
                ..Script::default()
            }
        }
    };
    (cfg, script)
}

#[test]
fn every_run_strategy_decides_on_restarts_as_kubevirt() {
    use HowItStops::*;
    // Whether each strategy restarts after each kind of stop: Always, RerunOnFailure,
    // Once, Manual (KubeVirt's table; see strategy.rs).
    let table = [
        (WatchdogPoweroff, [true, true, false, false]),
        (GuestPoweroff, [true, false, false, false]),
        (GracefulShutdown, [true, false, false, false]),
        (ForcedShutdown, [true, true, false, false]),
        (VcpuError, [true, true, false, false]),
        (Liveness, [true, true, false, false]),
    ];
    let strategies = [
        RunStrategy::Always,
        RunStrategy::RerunOnFailure,
        RunStrategy::Once,
        RunStrategy::Manual,
    ];
    for (how, restarts) in table {
        for (strategy, restart) in strategies.into_iter().zip(restarts) {
            let (mut cfg, script) = stopping(how);
            cfg.strategy = strategy;
            let sim = Sim::new(cfg, script).run();
            let kinds = sim.kinds();
            assert_eq!(
                kinds.contains(&"restart 1".to_string()),
                restart,
                "{strategy:?} after {how:?}: {kinds:?}"
            );
            let outcome = sim.outcome();
            assert_eq!(outcome.boots, if restart { 2 } else { 1 }, "{how:?}");
            if restart {
                assert_eq!(outcome.ending, Ending::MaxRestarts(1), "{how:?}");
            } else {
                assert!(
                    matches!(outcome.ending, Ending::NoRestart(s, _) if s == strategy),
                    "{strategy:?} after {how:?}: {:?}",
                    outcome.ending
                );
            }
        }
        // Halted never starts, whatever would have happened.
        let (mut cfg, script) = stopping(how);
        cfg.strategy = RunStrategy::Halted;
        let sim = Sim::new(cfg, script).run();
        assert_eq!((sim.created, sim.kinds().len()), (0, 1));
    }
}

#[test]
fn every_watchdog_action_is_carried_out_as_the_router_says() {
    use Command::*;
    let at = Duration::ZERO;
    let table: [(WatchdogAction, Vec<Command>); 7] = [
        (
            WatchdogAction::Poweroff,
            vec![
                Stop,
                Emit {
                    at,
                    event: Event::Stopped {
                        reason: StopReason::Watchdog,
                        trigger: Some(Cause::Watchdog),
                        forced: None,
                    },
                },
            ],
        ),
        (WatchdogAction::Reset, vec![Reset]),
        (
            WatchdogAction::Shutdown,
            vec![
                PowerButton,
                ArmTimer {
                    timer: Timer::Grace,
                    at: ms(50),
                },
            ],
        ),
        (WatchdogAction::Pause, vec![Pause]),
        (WatchdogAction::InjectNmi, vec![InjectNmi]),
        (WatchdogAction::None, vec![]),
        (
            WatchdogAction::Debug,
            vec![Log(
                "watchdog expired (action debug): the VM keeps running".into()
            )],
        ),
    ];
    assert_eq!(table.len(), WatchdogAction::ALL.len());
    for (action, expected) in table {
        let mut cfg = config(RunStrategy::Always);
        cfg.run_for = None;
        let (mut ctl, _) = running(cfg);
        ctl.handle(Duration::ZERO, expiry(action));
        let commands = drain(&mut ctl);
        assert_eq!(
            commands[0],
            Emit {
                at,
                event: Event::Watchdog {
                    action: action.name().into(),
                    device: "mywatchdog".into(),
                    late_us: None
                }
            },
            "{action}"
        );
        let n = expected.len();
        assert_eq!(
            commands.get(1..=n),
            Some(&expected[..]),
            "{action}: {commands:?}"
        );
        assert_eq!(
            ctl.awaiting_outcome(),
            expected.last().is_some_and(Command::needs_outcome),
            "{action}"
        );
    }
}

#[test]
fn every_liveness_action_is_carried_out_as_the_router_says() {
    for (action, first, phase) in [
        (
            LivenessAction::Stop,
            Command::Stop,
            Phase::Stopped { restart: 1 },
        ),
        (LivenessAction::Reset, Command::Reset, Phase::Running),
        (
            LivenessAction::Shutdown,
            Command::PowerButton,
            Phase::ShuttingDown(Cause::Liveness),
        ),
    ] {
        let mut cfg = config(RunStrategy::Always);
        cfg.probes = true;
        cfg.liveness_action = action;
        let (mut ctl, commands) = running(cfg);
        assert!(commands.contains(&Command::StartProbes));
        let failure = ProbeReport::LivenessFailed {
            message: "refused".into(),
        };
        ctl.handle(
            ms(5),
            Input::Probes(vec![attempt("liveness", false), failure]),
        );
        let commands = drain(&mut ctl);
        let events = emitted(&commands);
        assert_eq!(
            events[1],
            Event::Liveness {
                action: liveness_action_name(action).into(),
                message: "refused".into(),
                failures: None,
            },
            "the attempt, then the failure: {events:?}"
        );
        let at = commands.iter().position(|c| *c == first);
        let liveness = commands.iter().position(|c| {
            matches!(
                c,
                Command::Emit {
                    event: Event::Liveness { .. },
                    ..
                }
            )
        });
        assert!(at > liveness, "{action:?}: {commands:?}");
        if action == LivenessAction::Reset {
            ctl.command_done(ms(5), Ok(()));
            let after = drain(&mut ctl);
            // The probes resume after the first back-off, not at once.
            assert!(after.contains(&Command::ArmTimer {
                timer: Timer::ProbeResume,
                at: ms(15)
            }));
            assert!(!after.contains(&Command::StartProbes));
            ctl.fire_due_timers(ms(15));
            assert_eq!(drain(&mut ctl), [Command::StartProbes]);
        }
        if action == LivenessAction::Stop {
            assert!(events.contains(&Event::Stopped {
                reason: StopReason::Liveness,
                trigger: Some(Cause::Liveness),
                forced: None
            }));
        }
        assert_eq!(ctl.phase(), phase, "{action:?}");
    }
}

// ---- liveness during shutdown, signals, the end of a run -------------------------------

#[test]
fn liveness_is_on_hold_during_a_graceful_shutdown() {
    let mut cfg = config(RunStrategy::Once);
    cfg.probes = true;
    let script = Script {
        ignore_shutdown: true,
        // Ready at once; the liveness probe fails 20 ms after the start, during the
        // shutdown the watchdog asks for at 10 ms.
        probe_plan: vec![
            (Duration::ZERO, vec![ProbeReport::Ready(true)]),
            (
                ms(20),
                vec![
                    attempt("liveness", false),
                    ProbeReport::LivenessFailed {
                        message: "refused".into(),
                    },
                    attempt("readiness", false),
                    ProbeReport::Ready(false),
                ],
            ),
        ],
        ..armed(WatchdogAction::Shutdown)
    };
    let sim = Sim::new(cfg, script).run();
    assert_eq!(
        sim.kinds(),
        [
            "started 1",
            "ready true",
            "watchdog shutdown mywatchdog",
            // Readiness keeps probing; the liveness failure does nothing.
            "probe liveness failure",
            "probe readiness failure",
            "ready false",
            "stopped shutdown Some(Watchdog) Some(true)",
            "finished 0"
        ]
    );
    assert_eq!(
        sim.calls,
        [
            "start",
            "start_probes",
            "power_button",
            "hold_liveness",
            "stop"
        ]
    );
    // Forced at the end of the grace period (10 + 50 ms), not stopped by liveness at 20.
    assert_eq!(sim.times_of(|e| matches!(e, Event::Stopped { .. })), [60]);
}

#[test]
fn a_second_shutdown_request_keeps_the_first_grace_period() {
    let mut cfg = config(RunStrategy::Once);
    cfg.probes = true;
    cfg.liveness_action = LivenessAction::Shutdown;
    let (mut ctl, _) = running(cfg);
    ctl.handle(ms(10), expiry(WatchdogAction::Shutdown));
    let commands = drain(&mut ctl);
    assert!(commands.contains(&Command::ArmTimer {
        timer: Timer::Grace,
        at: ms(60)
    }));
    assert!(commands.contains(&Command::HoldLiveness));
    ctl.handle(ms(30), expiry(WatchdogAction::Shutdown));
    let commands = drain(&mut ctl);
    assert_eq!(
        emitted(&commands).len(),
        1,
        "only the watchdog event: {commands:?}"
    );
    assert!(!commands
        .iter()
        .any(|c| matches!(c, Command::PowerButton | Command::ArmTimer { .. })));
    assert_eq!(ctl.next_deadline(), Some((ms(60), Timer::Grace)));
}

#[test]
fn a_signal_during_the_back_off_ends_the_run_without_a_restart() {
    let mut cfg = config(RunStrategy::Always);
    cfg.backoff = ms(100);
    let mut sim = Sim::new(cfg, armed(WatchdogAction::Poweroff));
    sim.run_until(ms(50));
    assert_eq!(sim.ctl.phase(), Phase::Stopped { restart: 1 });
    sim.input(Input::Signal(15));
    assert_eq!(
        sim.kinds(),
        [
            "started 1",
            "watchdog poweroff mywatchdog",
            "stopped watchdog Some(Watchdog) None",
            "restart 1",
            "finished 143"
        ]
    );
    assert_eq!(sim.outcome().ending, Ending::Interrupted(15));
    assert_eq!(
        sim.calls,
        ["start", "stop"],
        "no second VM, nothing to stop"
    );
    // The back-off's deadline passes: nothing happens any more.
    sim.ctl.fire_due_timers(ms(200));
    sim.drain();
    assert_eq!(sim.created, 1);
    assert_eq!(sim.kinds().len(), 5);
}

#[test]
fn a_signal_stops_a_running_vm_cleanly() {
    for (sig, code) in [(2, 130), (15, 143)] {
        let mut sim = Sim::new(config(RunStrategy::Always), Script::default());
        sim.run_until(ms(20));
        sim.input(Input::Signal(sig));
        assert_eq!(
            sim.kinds(),
            [
                "started 1".to_string(),
                "stopped signal None None".to_string(),
                format!("finished {code}")
            ]
        );
        assert_eq!(sim.calls, ["start", "stop"]);
        assert_eq!(sim.outcome().exit_code, code);
    }
}

#[test]
fn ready_false_comes_before_stopped_at_the_end_of_a_run() {
    let mut cfg = config(RunStrategy::Once);
    cfg.probes = true;
    cfg.run_for = Some(ms(1000));
    let script = Script {
        probe_plan: vec![
            (
                ms(5),
                vec![attempt("readiness", true), ProbeReport::Ready(true)],
            ),
            (ms(995), vec![attempt("readiness", true)]),
        ],
        ..Script::default()
    };
    let sim = Sim::new(cfg, script).run();
    assert_eq!(
        sim.kinds(),
        [
            "started 1",
            "probe readiness success",
            "ready true",
            "probe readiness success",
            "ready false",
            "stopped runtime None None",
            "finished 0"
        ]
    );
    // The last three at the same instant: the --run-for deadline.
    assert_eq!(
        sim.times_of(|e| matches!(
            e,
            Event::Ready { ready: false } | Event::Stopped { .. } | Event::Finished { .. }
        )),
        [1000, 1000, 1000]
    );
}

#[test]
fn run_for_just_after_a_restart_reports_in_order() {
    // `--restart-backoff 0s --run-for 1s` ending just after a restart emitted
    // started, stopped, ready: true, ready: false.
    let mut cfg = config(RunStrategy::Always);
    cfg.probes = true;
    cfg.backoff = Duration::ZERO;
    cfg.run_for = Some(ms(10));
    let script = Script {
        // No readiness probe: the probe set is ready as soon as its schedule starts.
        probe_plan: vec![(Duration::ZERO, vec![ProbeReport::Ready(true)])],
        ..armed(WatchdogAction::Poweroff)
    };
    let sim = Sim::new(cfg, script).run();
    assert_eq!(
        sim.kinds(),
        [
            "started 1",
            "ready true",
            "watchdog poweroff mywatchdog",
            "ready false",
            "stopped watchdog Some(Watchdog) None",
            "restart 1",
            "started 2",
            "stopped runtime None None",
            "finished 0"
        ]
    );
    assert_eq!(sim.outcome().ending, Ending::RunFor);
}

#[test]
fn nothing_follows_finished() {
    let mut cfg = config(RunStrategy::Once);
    cfg.probes = true;
    let (mut ctl, _) = running(cfg);
    ctl.handle(ms(1), Input::Probes(vec![ProbeReport::Ready(true)]));
    ctl.handle(ms(2), Input::Machine(MachineEvent::GuestPoweroff));
    let events = emitted(&drain(&mut ctl));
    assert!(matches!(events.last(), Some(Event::Finished { .. })));
    assert_eq!(ctl.phase(), Phase::Finished);
    let outcome = ctl.outcome().cloned();
    // Everything a shell could still deliver: a dead VM's events, the stopped probe set's
    // last reports, a late expiry, every timer, a signal, a fault, a stray outcome.
    let late = [
        Input::Machine(MachineEvent::ConsoleLine("late".into())),
        Input::Machine(MachineEvent::GuestReset),
        Input::Machine(MachineEvent::Error("late".into())),
        Input::Probes(vec![
            ProbeReport::Ready(true),
            ProbeReport::Ready(false),
            ProbeReport::LivenessFailed {
                message: "late".into(),
            },
        ]),
        expiry(WatchdogAction::Reset),
        Input::Signal(2),
        Input::Fault("late".into()),
    ];
    for input in late {
        ctl.handle(ms(3), input);
    }
    for timer in Timer::ALL {
        ctl.handle(Duration::from_secs(10), Input::Timer(timer));
    }
    ctl.fire_due_timers(Duration::from_secs(10));
    ctl.command_done(ms(4), Ok(()));
    ctl.begin(ms(5));
    assert_eq!(drain(&mut ctl), []);
    assert_eq!(ctl.outcome().cloned(), outcome);
}

// ---- what else the runner did, pinned down --------------------------------------------

#[test]
fn a_warm_reset_is_not_ready_before_it_boots_again() {
    let mut cfg = config(RunStrategy::Always);
    cfg.probes = true;
    let (mut ctl, _) = running(cfg);
    ctl.handle(ms(1), Input::Probes(vec![ProbeReport::Ready(true)]));
    assert!(ctl.ready());
    drain(&mut ctl);
    ctl.handle(ms(10), expiry(WatchdogAction::Reset));
    let before = drain(&mut ctl);
    assert_eq!(before.last(), Some(&Command::Reset));
    // Nothing is decided past the reset until the shell says how it went.
    ctl.handle(
        ms(10),
        Input::Machine(MachineEvent::ConsoleLine("queued".into())),
    );
    assert_eq!(ctl.poll_command(), None);
    ctl.command_done(ms(11), Ok(()));
    let at = ms(11);
    assert_eq!(
        drain(&mut ctl),
        [
            Command::Emit {
                at,
                event: Event::Ready { ready: false }
            },
            Command::StopProbes,
            Command::Emit {
                at,
                event: Event::Started { boot: 2 }
            },
            // A watchdog reset restarts the probes at once.
            Command::StartProbes,
            Command::Emit {
                at,
                event: Event::Console {
                    line: "queued".into()
                }
            },
        ]
    );
    // The stopped schedule's own `ready: false` comes late and changes nothing.
    ctl.handle(ms(12), Input::Probes(vec![ProbeReport::Ready(false)]));
    assert_eq!(drain(&mut ctl), []);
}

#[test]
fn failed_resets_pauses_and_nmis_are_errors() {
    // A reset that fails stops the VM (reason error); runStrategy Always restarts it.
    let (mut ctl, _) = running(config(RunStrategy::Always));
    ctl.handle(ms(10), expiry(WatchdogAction::Reset));
    drain(&mut ctl);
    ctl.command_done(ms(10), Err("KVM_SET_REGS refused".into()));
    let commands = drain(&mut ctl);
    assert_eq!(
        kinds(
            &emitted(&commands)
                .into_iter()
                .map(|e| (Duration::ZERO, e))
                .collect::<Vec<_>>()
        ),
        ["error", "stopped error None None", "restart 1"]
    );
    assert_eq!(
        emitted(&commands)[0],
        Event::Error {
            message: "cannot reset the VM: KVM_SET_REGS refused".into()
        }
    );
    assert_eq!(commands[1], Command::Stop);

    // A pause or an NMI that fails is reported; the VM keeps running.
    for (action, message) in [
        (WatchdogAction::Pause, "cannot pause the VM: no"),
        (WatchdogAction::InjectNmi, "cannot inject an NMI: no"),
    ] {
        let (mut ctl, _) = running(config(RunStrategy::Once));
        ctl.handle(ms(10), expiry(action));
        drain(&mut ctl);
        ctl.command_done(ms(10), Err("no".into()));
        assert_eq!(
            emitted(&drain(&mut ctl)),
            [Event::Error {
                message: message.into()
            }]
        );
        assert_eq!(ctl.phase(), Phase::Running, "{action}");
        // The run goes on; its exit code will say an error was reported.
        ctl.handle(ms(20), Input::Machine(MachineEvent::GuestPoweroff));
        drain(&mut ctl);
        assert_eq!(ctl.outcome().map(|o| (o.errors, o.exit_code)), Some((1, 1)));
    }
}

#[test]
fn stale_and_early_timers_are_ignored() {
    let mut cfg = config(RunStrategy::Always);
    cfg.run_for = None;
    let (mut ctl, _) = running(cfg);
    // Early: the grace period is not armed yet.
    ctl.handle(ms(1), Input::Timer(Timer::Grace));
    assert_eq!(drain(&mut ctl), []);
    ctl.handle(ms(10), expiry(WatchdogAction::Shutdown));
    drain(&mut ctl);
    // Early: armed for 60 ms.
    ctl.handle(ms(59), Input::Timer(Timer::Grace));
    assert_eq!(drain(&mut ctl), []);
    // The guest powers off in time: the grace period is disarmed.
    ctl.handle(ms(59), Input::Machine(MachineEvent::GuestPoweroff));
    let commands = drain(&mut ctl);
    assert!(commands.contains(&Command::DisarmTimer(Timer::Grace)));
    assert_eq!(ctl.next_deadline(), Some((ms(69), Timer::Backoff)));
    // A timerfd that fired anyway changes nothing: no forced stop follows.
    ctl.handle(ms(60), Input::Timer(Timer::Grace));
    ctl.handle(ms(61), Input::Timer(Timer::ProbeResume));
    assert_eq!(drain(&mut ctl), []);
}

#[test]
fn a_fault_ends_the_run_and_leaves_nothing_running() {
    let (mut ctl, _) = running(config(RunStrategy::Always));
    ctl.handle(ms(3), Input::Fault("event loop: EBADF".into()));
    let commands = drain(&mut ctl);
    assert_eq!(commands[1], Command::Stop);
    assert_eq!(
        emitted(&commands),
        [
            Event::Error {
                message: "event loop: EBADF".into()
            },
            Event::Finished {
                exit_code: 1,
                message: "cannot go on: event loop: EBADF".into()
            }
        ]
    );
    assert_eq!(
        ctl.outcome().map(|o| o.ending.clone()),
        Some(Ending::Fatal("event loop: EBADF".into()))
    );
}

#[test]
fn the_restart_back_off_resets_after_a_long_run() {
    let mut cfg = config(RunStrategy::Always);
    cfg.run_for = None;
    let mut sim = Sim::new(cfg, Script::default());
    sim.run_until(ms(1));
    let mut delays = Vec::new();
    // Up 1 s, 1 s, then 60 s, then 1 s again.
    for up in [1000, 1000, 60_000, 1000] {
        let stop_at = sim.now + ms(up);
        sim.run_until(stop_at);
        sim.input(Input::Machine(MachineEvent::Error("crash".into())));
        let Some((at, Timer::Backoff)) = sim.ctl.next_deadline() else {
            panic!("no back-off: {:?}", sim.events);
        };
        delays.push((at - sim.now).as_millis());
        sim.run_until(at);
        assert_eq!(sim.ctl.phase(), Phase::Running);
    }
    assert_eq!(delays, [10, 20, 10, 20]);
}

#[test]
fn a_dead_vms_leftovers_are_ignored_during_the_back_off() {
    let mut cfg = config(RunStrategy::Always);
    cfg.probes = true;
    cfg.backoff = ms(100);
    cfg.run_for = None;
    let (mut ctl, _) = running(cfg);
    ctl.handle(ms(5), Input::Machine(MachineEvent::GuestPoweroff));
    // The rest of that batch, a late expiry and the probe set's last words.
    ctl.handle(
        ms(5),
        Input::Machine(MachineEvent::ConsoleLine("bye".into())),
    );
    ctl.handle(ms(5), Input::Machine(MachineEvent::GuestReset));
    ctl.handle(ms(6), expiry(WatchdogAction::Poweroff));
    ctl.handle(
        ms(6),
        Input::Probes(vec![
            ProbeReport::Ready(true),
            ProbeReport::LivenessFailed {
                message: "x".into(),
            },
        ]),
    );
    let events = emitted(&drain(&mut ctl));
    assert_eq!(
        events,
        [
            Event::Stopped {
                reason: StopReason::Guest,
                trigger: None,
                forced: None
            },
            Event::Restart {
                count: 1,
                delay_ms: 100
            }
        ]
    );
    assert_eq!(ctl.phase(), Phase::Stopped { restart: 1 });
    ctl.fire_due_timers(ms(105));
    assert_eq!(drain(&mut ctl), [Command::Start]);
    assert_eq!(ctl.phase(), Phase::Starting);
}

#[test]
fn from_run_config_takes_what_the_controller_needs() {
    use super::super::runner::AgentSpec;
    let cfg = RunConfig {
        vm_name: "vm".into(),
        strategy: RunStrategy::Manual,
        watchdog: Some(("wd".into(), WatchdogAction::Pause)),
        liveness_action: LivenessAction::Reset,
        grace_period: Duration::from_secs(7),
        probes: Vec::new(),
        probe_addresses: Vec::new(),
        agent: AgentSpec::None,
        max_restarts: Some(3),
        run_for: Some(Duration::from_secs(9)),
        backoff: Duration::from_secs(2),
        handle_signals: true,
        ops: Default::default(),
        realtime_priority: None,
    };
    assert_eq!(
        ControllerConfig::from_run_config(&cfg),
        ControllerConfig {
            strategy: RunStrategy::Manual,
            watchdog_name: Some("wd".into()),
            liveness_action: LivenessAction::Reset,
            grace_period: Duration::from_secs(7),
            probes: false,
            max_restarts: Some(3),
            run_for: Some(Duration::from_secs(9)),
            backoff: Duration::from_secs(2),
        }
    );
    // Without a watchdog in the manifest, expiries are still reported, by a stand-in name.
    let mut c = ControllerConfig::from_run_config(&RunConfig {
        watchdog: None,
        ..cfg
    });
    c.run_for = None;
    let (mut ctl, _) = running(c);
    ctl.handle(MS, expiry(WatchdogAction::None));
    assert_eq!(
        emitted(&drain(&mut ctl)),
        [Event::Watchdog {
            action: "none".into(),
            device: "(none in the manifest)".into(),
            late_us: None
        }]
    );
}

#[test]
fn inputs_during_a_start_wait_for_its_outcome() {
    let mut ctl = Controller::new(config(RunStrategy::Always));
    ctl.begin(Duration::ZERO);
    assert_eq!(
        drain(&mut ctl),
        [
            Command::ArmTimer {
                timer: Timer::RunFor,
                at: Duration::from_secs(5)
            },
            Command::Start
        ]
    );
    assert_eq!(ctl.phase(), Phase::Starting);
    // SIGINT arrives while the VM is being created: it applies to the VM once it runs.
    ctl.handle(ms(1), Input::Signal(2));
    assert_eq!(ctl.poll_command(), None);
    ctl.command_done(ms(2), Ok(()));
    let events = emitted(&drain(&mut ctl));
    assert_eq!(
        kinds(
            &events
                .into_iter()
                .map(|e| (Duration::ZERO, e))
                .collect::<Vec<_>>()
        ),
        ["started 1", "stopped signal None None", "finished 130"]
    );
}

#[test]
fn max_restarts_zero_never_restarts() {
    let mut cfg = config(RunStrategy::Always);
    cfg.max_restarts = Some(0);
    let sim = Sim::new(cfg, armed(WatchdogAction::Poweroff)).run();
    assert_eq!(
        sim.kinds(),
        [
            "started 1",
            "watchdog poweroff mywatchdog",
            "stopped watchdog Some(Watchdog) None",
            "finished 0"
        ]
    );
    assert_eq!(sim.outcome().ending, Ending::MaxRestarts(0));
}

#[test]
fn a_signal_during_a_graceful_shutdown_stops_the_vm_at_once() {
    let script = Script {
        ignore_shutdown: true,
        ..armed(WatchdogAction::Shutdown)
    };
    let mut sim = Sim::new(config(RunStrategy::Always), script);
    sim.run_until(ms(20));
    assert_eq!(sim.ctl.phase(), Phase::ShuttingDown(Cause::Watchdog));
    sim.input(Input::Signal(2));
    assert_eq!(
        sim.kinds(),
        [
            "started 1",
            "watchdog shutdown mywatchdog",
            "stopped signal None None",
            "finished 130"
        ]
    );
    assert_eq!(sim.calls, ["start", "power_button", "stop"]);
    // The grace period went with the VM.
    assert_ne!(sim.ctl.next_deadline().map(|(_, t)| t), Some(Timer::Grace));
}

// ---- the ops API's actions ------------------------------------------------------------

#[test]
fn api_actions_go_through_the_router_with_cause_api() {
    let (mut ctl, _) = running(config(RunStrategy::Always));
    ctl.handle(ms(10), Input::Api(ApiAction::Pause));
    assert_eq!(drain(&mut ctl), [Command::Pause]);
    ctl.command_done(ms(10), Ok(()));
    assert_eq!(ctl.phase(), Phase::Paused);
    drain(&mut ctl);
    ctl.handle(ms(20), Input::Api(ApiAction::Resume));
    assert_eq!(drain(&mut ctl), [Command::Resume]);
    ctl.command_done(ms(20), Ok(()));
    assert_eq!(ctl.phase(), Phase::Running);
    drain(&mut ctl);
    ctl.handle(ms(30), Input::Api(ApiAction::Shutdown));
    let commands = drain(&mut ctl);
    assert_eq!(commands[0], Command::PowerButton);
    assert_eq!(ctl.phase(), Phase::ShuttingDown(Cause::Api));
    ctl.handle(ms(40), Input::Api(ApiAction::Stop));
    let events = emitted(&drain(&mut ctl));
    assert_eq!(
        events[0],
        Event::Stopped {
            reason: StopReason::Api,
            trigger: Some(Cause::Api),
            forced: None
        }
    );
}

#[test]
fn an_api_reset_of_a_paused_vm_resumes_it_first() {
    let (mut ctl, _) = running(config(RunStrategy::Always));
    ctl.handle(ms(10), Input::Api(ApiAction::Pause));
    drain(&mut ctl);
    ctl.command_done(ms(10), Ok(()));
    drain(&mut ctl);
    ctl.handle(ms(20), Input::Api(ApiAction::Reset));
    // The reset waits for the resume's outcome.
    assert_eq!(drain(&mut ctl), [Command::Resume]);
    ctl.command_done(ms(21), Ok(()));
    let commands = drain(&mut ctl);
    assert_eq!(commands.last(), Some(&Command::Reset));
    ctl.command_done(ms(22), Ok(()));
    let events = emitted(&drain(&mut ctl));
    assert_eq!(events, [Event::Started { boot: 2 }]);
    assert_eq!(ctl.phase(), Phase::Running);
}

#[test]
fn an_api_action_without_a_vm_is_ignored() {
    let mut cfg = config(RunStrategy::Always);
    cfg.backoff = ms(500);
    let (mut ctl, _) = running(cfg);
    ctl.handle(ms(10), Input::Machine(MachineEvent::GuestPoweroff));
    drain(&mut ctl);
    assert!(matches!(ctl.phase(), Phase::Stopped { .. }));
    ctl.handle(ms(20), Input::Api(ApiAction::Reset));
    assert_eq!(drain(&mut ctl), []);
}
