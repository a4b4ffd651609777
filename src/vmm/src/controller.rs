//! The decisions of a run, as a pure state machine: runStrategy, restart back-off, the
//! action router, the phases of the VM and its readiness.
//!
//! The [`Controller`] owns no fd, no thread, no clock and no VM. The shell around it (the
//! run loop) owns all of those and
//! - feeds it [`Input`]s — machine events, watchdog expiries, probe results, timers that
//!   fired, signals — each with an explicit `now` (the time since the run started);
//! - pulls [`Command`]s from it with [`Controller::poll_command`] and carries them out in
//!   order: start, stop, reset, pause, power button, NMI, the probes' schedule, timers to
//!   arm or disarm, events to emit;
//! - reports the outcome of every command that can fail ([`Command::needs_outcome`]) with
//!   [`Controller::command_done`] before it pulls the next one. The controller decides
//!   nothing past such a command until it knows how it went, so an event such as
//!   `started` is only ever emitted for a reset that happened.
//!
//! Everything is therefore tested in virtual time, without KVM and without sleeping.
//!
//! # Timers
//!
//! The controller asks for its four [`Timer`]s with [`Command::ArmTimer`] (an absolute time)
//! and [`Command::DisarmTimer`]; the shell reports a timer that fired with
//! [`Input::Timer`]. The controller remembers every deadline: a report for a timer that is
//! not armed, or whose deadline has not come, is stale and ignored. A shell with a single
//! timerfd can instead use [`Controller::next_deadline`] and
//! [`Controller::fire_due_timers`].
//!
//! # Readiness
//!
//! The controller reports `ready` events itself, on every change of its own Ready
//! condition. It takes `Ready` reports from the probes only while their schedule runs
//! (between [`Command::StartProbes`] and the next [`Command::StopProbes`], [`Command::Stop`]
//! or pause) and turns not-ready itself, *before* the event that ends the VM's run:
//! `ready: false` comes before `stopped`, before the `started` of a warm reset and before
//! the note that the VM is paused. Reports of a schedule that was stopped (a stopped probe
//! set turns not ready on its own) are dropped, and nothing at all follows `finished`.
//!
//! # Liveness during a graceful shutdown
//!
//! Once the power button is pressed the liveness probe is put on hold
//! ([`Command::HoldLiveness`], `ProbeSet::vm_stopping`) and a liveness failure reported
//! during the shutdown is ignored, as kubelet does during a pod's termination: nothing
//! kills a VM that is already shutting down. Readiness keeps probing.
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use vmpulse_manifest::{LivenessAction, RunStrategy};
//! use vmpulse_vmm::controller::{Command, Controller, ControllerConfig, Input};
//! use vmpulse_vmm::events::Event;
//! use vmpulse_vmm::machine::MachineEvent;
//!
//! let mut ctl = Controller::new(ControllerConfig {
//!     strategy: RunStrategy::Once,
//!     watchdog_name: Some("mywatchdog".into()),
//!     liveness_action: LivenessAction::Stop,
//!     grace_period: Duration::from_secs(30),
//!     probes: false,
//!     max_restarts: None,
//!     run_for: None,
//!     backoff: Duration::from_secs(1),
//! });
//! ctl.begin(Duration::ZERO);
//! assert_eq!(ctl.poll_command(), Some(Command::Start));
//! // The shell created and started the VM.
//! ctl.command_done(Duration::from_millis(5), Ok(()));
//! let at = Duration::from_millis(5);
//! assert_eq!(ctl.poll_command(), Some(Command::Emit { at, event: Event::Started { boot: 1 } }));
//! // The guest powers itself off: runStrategy Once ends the run.
//! ctl.handle(Duration::from_secs(2), Input::Machine(MachineEvent::GuestPoweroff));
//! let commands: Vec<Command> = std::iter::from_fn(|| ctl.poll_command()).collect();
//! assert_eq!(commands[0], Command::Stop);
//! assert!(matches!(commands.last(), Some(Command::Emit { event: Event::Finished { exit_code: 0, .. }, .. })));
//! assert_eq!(ctl.outcome().unwrap().exit_code, 0);
//! ```

use std::collections::VecDeque;
use std::time::Duration;

use i6300esb::Expiry;
use vmpulse_manifest::{LivenessAction, RunStrategy};

use super::events::{Cause, Event, StopReason};
use super::platform::MachineEvent;
use super::router::{liveness_action_name, route, ApiAction, Decision, Trigger};
use super::strategy::{exit_code, starts, AfterStop, Backoff, Ending, RestartPolicy, Stop};

/// What the controller needs to know about the run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ControllerConfig {
    /// `spec.runStrategy`.
    pub strategy: RunStrategy,
    /// The watchdog's name in the manifest, for `watchdog` events (`None`: the manifest has
    /// no watchdog).
    pub watchdog_name: Option<String>,
    /// What a liveness failure does.
    pub liveness_action: LivenessAction,
    /// `terminationGracePeriodSeconds`.
    pub grace_period: Duration,
    /// Whether the run has probes (the shell then keeps a probe set per VM).
    pub probes: bool,
    /// `--max-restarts`.
    pub max_restarts: Option<u32>,
    /// `--run-for`.
    pub run_for: Option<Duration>,
    /// The first restart back-off (also the first pause before the probes resume after a
    /// liveness reset).
    pub backoff: Duration,
}

/// How a run ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    /// Why.
    pub ending: Ending,
    /// How many `error` events were reported.
    pub errors: u32,
    /// Boots, warm resets included.
    pub boots: u32,
    /// runStrategy restarts.
    pub restarts: u32,
    /// The exit code ([`exit_code`]; the runner's outcome has 3 instead of 0 when
    /// `--exit-code-from-phase` is set and the final phase is `Failed`).
    pub exit_code: u8,
}

/// The controller's timers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Timer {
    /// The shutdown grace period: the VM is powered off when it runs out.
    Grace,
    /// The restart back-off: the next VM starts when it runs out.
    Backoff,
    /// `--run-for`: the run ends when it runs out.
    RunFor,
    /// The pause before the probes resume after a liveness-triggered reset.
    ProbeResume,
}

impl Timer {
    /// Every timer.
    pub const ALL: [Timer; 4] = [
        Timer::Grace,
        Timer::Backoff,
        Timer::RunFor,
        Timer::ProbeResume,
    ];

    fn index(self) -> usize {
        self as usize
    }
}

/// One result reported by the probes (`ProbeSet::process`), in the controller's terms.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProbeReport {
    /// One completed attempt, as the `probe` event to report. The shell builds it from the
    /// probe set's attempt; the controller passes it on unchanged while the probes run.
    Attempt(Event),
    /// The probe set's Ready condition changed.
    Ready(bool),
    /// The liveness probe reached its failure threshold.
    LivenessFailed {
        /// The last failure's message.
        message: String,
    },
}

/// Something that happened, for the controller to decide on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Input {
    /// One event of the machine, in the order the machine queued them.
    Machine(MachineEvent),
    /// The watchdog's stage 2 ran out (from the device adapter's action sink).
    Expiry(Expiry),
    /// One batch of probe results (one `ProbeSet::process`). A liveness failure in it is
    /// carried out once the whole batch is reported.
    Probes(Vec<ProbeReport>),
    /// A timer fired.
    Timer(Timer),
    /// vmpulse received this signal (SIGINT or SIGTERM): stop the VM, end the run.
    Signal(i32),
    /// A `PUT /vm/<action>` of the ops API, carried out through the router (cause `api`).
    /// A reset of a paused VM resumes it first, so that the guest boots again. Ignored
    /// when no VM is present (the shell answers such a request with a conflict).
    Api(ApiAction),
    /// The shell cannot go on (its event loop or a timer failed): the run ends with this
    /// error.
    Fault(String),
}

/// What the shell must do, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    /// Create a new VM — its watchdog powered on afresh (timeout flag cleared), its probe
    /// set made (not yet scheduled) — and start it. Report the outcome; the error message
    /// is reported as the `error` event and ends the run, so it says what failed
    /// (e.g. "cannot start the VM: …").
    Start,
    /// Power the VM off and release it, with its probe set; power its watchdog off and
    /// drop any expiry still queued. Idempotent; never fails.
    Stop,
    /// Warm-reset the VM (the watchdog keeps its timeout flag). Report the outcome.
    Reset,
    /// Pause the VM (vCPU and watchdog frozen). Report the outcome.
    Pause,
    /// Resume a paused VM (vCPU and watchdog run again). Report the outcome.
    Resume,
    /// Press the power button.
    PowerButton,
    /// Inject an NMI into the vCPU. Report the outcome.
    InjectNmi,
    /// Start the probes' schedule now (`ProbeSet::vm_started`), then process the probe set
    /// before blocking: it may already have results.
    StartProbes,
    /// Stop the probes' schedule (`ProbeSet::vm_stopped`); keep the set.
    StopProbes,
    /// The VM is shutting down gracefully: put liveness on hold (`ProbeSet::vm_stopping`).
    HoldLiveness,
    /// Arm `timer` to fire at `at` (time since the run started), replacing its deadline.
    ArmTimer {
        /// Which.
        timer: Timer,
        /// When.
        at: Duration,
    },
    /// Disarm `timer`.
    DisarmTimer(Timer),
    /// Write this warning to the log (watchdog action `debug`).
    Log(String),
    /// Emit `event`, which happened at `at` (time since the run started).
    Emit {
        /// When.
        at: Duration,
        /// What.
        event: Event,
    },
}

impl Command {
    /// Whether the shell must report this command's outcome with
    /// [`Controller::command_done`] before it pulls the next command.
    pub fn needs_outcome(&self) -> bool {
        matches!(
            self,
            Command::Start | Command::Reset | Command::Pause | Command::Resume | Command::InjectNmi
        )
    }
}

/// Where the run is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// [`Controller::begin`] was not called yet.
    Idle,
    /// A VM is being created and started.
    Starting,
    /// The VM runs.
    Running,
    /// The VM is paused (watchdog `pause`).
    Paused,
    /// The power button was pressed for this cause; the grace period runs.
    ShuttingDown(Cause),
    /// The VM is stopped; restart number `restart` waits for the back-off.
    Stopped {
        /// The restart that follows (1, 2, …).
        restart: u32,
    },
    /// The run is over: `finished` was emitted.
    Finished,
}

/// The continuation of a command whose outcome the controller waits for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Pending {
    Start,
    /// A warm reset; the probes resume at once (`None`) or after a back-off.
    Reset {
        probe_delay: Option<Duration>,
    },
    Pause,
    Resume,
    Nmi,
}

/// The decisions of one `vmpulse run`; see the [module documentation](self).
#[derive(Debug)]
pub struct Controller {
    cfg: ControllerConfig,
    phase: Phase,
    policy: RestartPolicy,
    /// Back-off of liveness-triggered resets, so that a probe failing at once cannot reset
    /// the VM in a tight loop.
    liveness_backoff: Backoff,
    last_liveness_reset: Option<Duration>,
    /// When the current VM started (for the restart back-off's reset after 60 s).
    vm_started_at: Duration,
    boots: u32,
    errors: u32,
    deadlines: [Option<Duration>; 4],
    /// The probes' schedule runs: their reports count.
    probes_on: bool,
    /// The Ready condition as last reported.
    ready: bool,
    ending: Option<Ending>,
    outcome: Option<Outcome>,
    awaiting: Option<Pending>,
    /// Inputs that arrived while an outcome was awaited.
    inbox: VecDeque<(Duration, Input)>,
    outbox: VecDeque<Command>,
    /// The time of what is being handled.
    now: Duration,
}

impl Controller {
    /// A controller for a run configured by `cfg`; nothing happens before
    /// [`Controller::begin`].
    pub fn new(cfg: ControllerConfig) -> Self {
        let policy = RestartPolicy::new(cfg.strategy, cfg.max_restarts, Backoff::new(cfg.backoff));
        let liveness_backoff = Backoff::new(cfg.backoff);
        Controller {
            cfg,
            phase: Phase::Idle,
            policy,
            liveness_backoff,
            last_liveness_reset: None,
            vm_started_at: Duration::ZERO,
            boots: 0,
            errors: 0,
            deadlines: [None; 4],
            probes_on: false,
            ready: false,
            ending: None,
            outcome: None,
            awaiting: None,
            inbox: VecDeque::new(),
            outbox: VecDeque::new(),
            now: Duration::ZERO,
        }
    }

    /// The run starts at `now`: the first VM is started (unless runStrategy is Halted) and
    /// `--run-for` is armed. Only the first call does anything.
    pub fn begin(&mut self, now: Duration) {
        if self.phase != Phase::Idle {
            return;
        }
        self.now = now;
        if !starts(self.cfg.strategy) {
            self.emit(Event::Info {
                message: "runStrategy Halted: the VM is not started".into(),
            });
            self.ending = Some(Ending::Halted);
        } else {
            if let Some(limit) = self.cfg.run_for {
                self.arm(Timer::RunFor, limit);
            }
            self.start_vm();
        }
        self.settle();
    }

    /// `input` happened at `now`. Ignored once the run is finished; queued while the
    /// outcome of a command is awaited.
    pub fn handle(&mut self, now: Duration, input: Input) {
        if self.phase == Phase::Finished {
            return;
        }
        self.inbox.push_back((now, input));
        self.settle();
    }

    /// The last command that [needs an outcome](Command::needs_outcome) was carried out
    /// at `now`, with this result. Ignored when no outcome is awaited.
    pub fn command_done(&mut self, now: Duration, result: Result<(), String>) {
        let Some(pending) = self.awaiting.take() else {
            return;
        };
        self.now = self.now.max(now);
        match (pending, result) {
            (Pending::Start, Ok(())) => self.started(),
            (Pending::Start, Err(message)) => {
                // Whatever was created goes away with the run.
                self.outbox.push_back(Command::Stop);
                self.phase = Phase::Stopped {
                    restart: self.policy.restarts(),
                };
                self.fatal(message);
            }
            (Pending::Reset { probe_delay }, Ok(())) => self.reset_done(probe_delay),
            (Pending::Reset { .. }, Err(e)) => {
                self.error(format!("cannot reset the VM: {e}"));
                self.stop_vm(Stop::plain(StopReason::Error));
            }
            (Pending::Pause, Ok(())) => {
                self.phase = Phase::Paused;
                self.disarm(Timer::Grace);
                self.probes_off();
                self.emit(Event::Info {
                    message: "the VM is paused".into(),
                });
            }
            (Pending::Pause, Err(e)) => self.error(format!("cannot pause the VM: {e}")),
            (Pending::Resume, Ok(())) => {
                self.phase = Phase::Running;
                self.emit(Event::Info {
                    message: "the VM is resumed".into(),
                });
                self.resume_probes();
            }
            (Pending::Resume, Err(e)) => self.error(format!("cannot resume the VM: {e}")),
            (Pending::Nmi, Ok(())) => {}
            (Pending::Nmi, Err(e)) => self.error(format!("cannot inject an NMI: {e}")),
        }
        self.settle();
    }

    /// The next command to carry out, if any.
    pub fn poll_command(&mut self) -> Option<Command> {
        self.outbox.pop_front()
    }

    /// The earliest armed timer and its deadline.
    pub fn next_deadline(&self) -> Option<(Duration, Timer)> {
        Timer::ALL
            .iter()
            .filter_map(|&t| self.deadlines[t.index()].map(|at| (at, t)))
            .min()
    }

    /// Fire, in deadline order, every timer due at `now` (for a shell that keeps one
    /// timer at [`Controller::next_deadline`], and for tests).
    pub fn fire_due_timers(&mut self, now: Duration) {
        let mut due: Vec<(Duration, Timer)> = Timer::ALL
            .iter()
            .filter_map(|&t| self.deadlines[t.index()].map(|at| (at, t)))
            .filter(|&(at, _)| at <= now)
            .collect();
        due.sort_unstable();
        for (_, timer) in due {
            self.handle(now, Input::Timer(timer));
        }
    }

    /// Where the run is.
    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// The Ready condition as last reported.
    pub fn ready(&self) -> bool {
        self.ready
    }

    /// Boots so far, warm resets included.
    pub fn boots(&self) -> u32 {
        self.boots
    }

    /// Whether the controller waits for the outcome of a command.
    pub fn awaiting_outcome(&self) -> bool {
        self.awaiting.is_some()
    }

    /// How the run ended, once it has.
    pub fn outcome(&self) -> Option<&Outcome> {
        self.outcome.as_ref()
    }

    // ---- plumbing -------------------------------------------------------------------

    /// Handle queued inputs while no outcome is awaited; finish the run once it ended.
    fn settle(&mut self) {
        while self.awaiting.is_none() {
            if self.ending.is_some() {
                self.finish();
                return;
            }
            let Some((now, input)) = self.inbox.pop_front() else {
                return;
            };
            self.now = self.now.max(now);
            self.dispatch(input);
        }
    }

    fn dispatch(&mut self, input: Input) {
        match input {
            Input::Machine(event) => self.machine_event(event),
            Input::Expiry(expiry) => self.watchdog_expired(expiry),
            Input::Probes(reports) => self.probe_reports(reports),
            Input::Timer(timer) => {
                let slot = &mut self.deadlines[timer.index()];
                match *slot {
                    Some(at) if at <= self.now => {
                        *slot = None;
                        self.timer_fired(timer);
                    }
                    // Stale (disarmed since) or early: nothing is due.
                    _ => {}
                }
            }
            Input::Signal(sig) => self.interrupted(sig),
            Input::Api(action) => self.api_action(action),
            Input::Fault(message) => self.fatal(message),
        }
    }

    fn finish(&mut self) {
        let Some(ending) = self.ending.take() else {
            return;
        };
        // Whatever ended the run, leave nothing running.
        if self.vm_present() {
            self.outbox.push_back(Command::Stop);
        }
        let code = exit_code(&ending, self.errors);
        self.emit(Event::Finished {
            exit_code: code,
            message: ending.message(),
        });
        self.outcome = Some(Outcome {
            ending,
            errors: self.errors,
            boots: self.boots,
            restarts: self.policy.restarts(),
            exit_code: code,
        });
        self.phase = Phase::Finished;
        self.inbox.clear();
    }

    fn emit(&mut self, event: Event) {
        if matches!(event, Event::Error { .. }) {
            self.errors += 1;
        }
        self.outbox.push_back(Command::Emit {
            at: self.now,
            event,
        });
    }

    fn error(&mut self, message: String) {
        self.emit(Event::Error { message });
    }

    fn fatal(&mut self, message: String) {
        self.error(message.clone());
        self.ending = Some(Ending::Fatal(message));
    }

    fn arm(&mut self, timer: Timer, after: Duration) {
        let at = self.now.saturating_add(after);
        self.deadlines[timer.index()] = Some(at);
        self.outbox.push_back(Command::ArmTimer { timer, at });
    }

    fn disarm(&mut self, timer: Timer) {
        if self.deadlines[timer.index()].take().is_some() {
            self.outbox.push_back(Command::DisarmTimer(timer));
        }
    }

    fn vm_present(&self) -> bool {
        matches!(
            self.phase,
            Phase::Starting | Phase::Running | Phase::Paused | Phase::ShuttingDown(_)
        )
    }

    /// Push a command that needs an outcome; nothing is decided past it until it comes.
    fn request(&mut self, command: Command, pending: Pending) {
        self.outbox.push_back(command);
        self.awaiting = Some(pending);
    }

    // ---- readiness and the probes' schedule ---------------------------------------------

    fn not_ready(&mut self) {
        if std::mem::take(&mut self.ready) {
            self.emit(Event::Ready { ready: false });
        }
    }

    /// The probes' schedule stops (the VM is reset or paused): not ready, first.
    fn probes_off(&mut self) {
        self.not_ready();
        if std::mem::take(&mut self.probes_on) {
            self.outbox.push_back(Command::StopProbes);
        }
    }

    fn resume_probes(&mut self) {
        if self.phase != Phase::Running || !self.cfg.probes {
            return;
        }
        self.outbox.push_back(Command::StartProbes);
        self.probes_on = true;
    }

    // ---- starting and stopping --------------------------------------------------------

    fn start_vm(&mut self) {
        self.phase = Phase::Starting;
        self.request(Command::Start, Pending::Start);
    }

    fn started(&mut self) {
        self.phase = Phase::Running;
        self.vm_started_at = self.now;
        self.boots += 1;
        self.emit(Event::Started { boot: self.boots });
        // A new VM is not ready until its probes say so.
        self.ready = false;
        self.resume_probes();
    }

    /// The VM stopped (or is stopped now) for `stop`; apply runStrategy.
    fn stop_vm(&mut self, stop: Stop) {
        self.outbox.push_back(Command::Stop);
        self.disarm(Timer::Grace);
        self.disarm(Timer::ProbeResume);
        // The probe set goes with the VM; what it still reports is dropped.
        self.probes_on = false;
        self.not_ready();
        self.emit(Event::Stopped {
            reason: stop.reason,
            trigger: stop.trigger,
            forced: stop.forced,
        });
        let lasted = self.now.saturating_sub(self.vm_started_at);
        match self.policy.after_stop(&stop, lasted) {
            AfterStop::Restart { count, delay } => {
                self.emit(Event::Restart {
                    count,
                    delay_ms: u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
                });
                self.phase = Phase::Stopped { restart: count };
                self.arm(Timer::Backoff, delay);
            }
            AfterStop::End(ending) => {
                self.phase = Phase::Stopped {
                    restart: self.policy.restarts(),
                };
                self.ending = Some(ending);
            }
        }
    }

    // ---- input handlers ---------------------------------------------------------------

    fn machine_event(&mut self, event: MachineEvent) {
        if !self.vm_present() {
            // Left over from a VM that is gone.
            return;
        }
        match event {
            MachineEvent::ConsoleLine(line) => self.emit(Event::Console { line }),
            MachineEvent::GuestPoweroff => {
                let stop = match self.phase {
                    Phase::ShuttingDown(cause) => Stop {
                        reason: StopReason::Shutdown,
                        trigger: Some(cause),
                        forced: Some(false),
                    },
                    _ => Stop::plain(StopReason::Guest),
                };
                self.stop_vm(stop);
            }
            MachineEvent::GuestReset => {
                self.emit(Event::Info {
                    message: "the guest asked for a reset".into(),
                });
                self.warm_reset(None);
            }
            MachineEvent::Error(message) => {
                self.error(format!("the VM failed: {message}"));
                self.stop_vm(Stop::plain(StopReason::Error));
            }
        }
    }

    fn watchdog_expired(&mut self, expiry: Expiry) {
        if !self.vm_present() {
            return;
        }
        let device = self
            .cfg
            .watchdog_name
            .clone()
            .unwrap_or_else(|| "(none in the manifest)".to_string());
        // No clock here: the shell fills in `late_us` once it has carried out the action.
        self.emit(Event::Watchdog {
            action: expiry.action.name().to_string(),
            device,
            late_us: None,
        });
        self.carry_out(Trigger::Watchdog(expiry.action));
    }

    fn probe_reports(&mut self, reports: Vec<ProbeReport>) {
        if !self.probes_on {
            // A stopped schedule: the VM's readiness was already reported.
            return;
        }
        let shutting_down = matches!(self.phase, Phase::ShuttingDown(_));
        let mut failed = false;
        for report in reports {
            match report {
                ProbeReport::Attempt(event) => self.emit(event),
                ProbeReport::Ready(ready) => {
                    if ready != self.ready {
                        self.ready = ready;
                        self.emit(Event::Ready { ready });
                    }
                }
                // Liveness is on hold during a graceful shutdown.
                ProbeReport::LivenessFailed { .. } if shutting_down => {}
                ProbeReport::LivenessFailed { message } => {
                    self.emit(Event::Liveness {
                        action: liveness_action_name(self.cfg.liveness_action).to_string(),
                        message,
                        failures: None,
                    });
                    failed = true;
                }
            }
        }
        if failed {
            self.carry_out(Trigger::Liveness(self.cfg.liveness_action));
        }
    }

    fn timer_fired(&mut self, timer: Timer) {
        match timer {
            Timer::Grace => {
                if let Phase::ShuttingDown(cause) = self.phase {
                    self.stop_vm(Stop {
                        reason: StopReason::Shutdown,
                        trigger: Some(cause),
                        forced: Some(true),
                    });
                }
            }
            Timer::Backoff => {
                if let Phase::Stopped { .. } = self.phase {
                    self.start_vm();
                }
            }
            Timer::RunFor => {
                if self.vm_present() {
                    self.stop_vm(Stop::plain(StopReason::Runtime));
                }
                self.ending = Some(Ending::RunFor);
            }
            Timer::ProbeResume => self.resume_probes(),
        }
    }

    /// SIGINT or SIGTERM: stop the VM cleanly (no restart) and end the run.
    fn interrupted(&mut self, sig: i32) {
        if self.vm_present() {
            self.stop_vm(Stop::plain(StopReason::Signal));
        }
        self.ending = Some(Ending::Interrupted(sig));
    }

    /// A `PUT /vm/<action>` of the ops API.
    fn api_action(&mut self, action: ApiAction) {
        if !self.vm_present() {
            return;
        }
        if action == ApiAction::Reset && self.phase == Phase::Paused {
            // A paused machine would stay paused through a reset (QEMU's `system_reset`);
            // asked through the API, the user wants the guest to boot again: resume
            // first, and reset once the resume is done.
            self.inbox
                .push_front((self.now, Input::Api(ApiAction::Reset)));
            self.carry_out(Trigger::Api(ApiAction::Resume));
            return;
        }
        self.carry_out(Trigger::Api(action));
    }

    /// Carry out the router's decision for `trigger`.
    fn carry_out(&mut self, trigger: Trigger) {
        let cause = trigger.cause();
        match route(trigger) {
            Decision::PowerOff(reason) => self.stop_vm(Stop {
                reason,
                trigger: Some(cause),
                forced: None,
            }),
            Decision::Reset if cause == Cause::Liveness => {
                let lasted = self
                    .last_liveness_reset
                    .map_or(Duration::MAX, |t| self.now.saturating_sub(t));
                let delay = self.liveness_backoff.next_delay(lasted);
                self.last_liveness_reset = Some(self.now);
                self.warm_reset(Some(delay));
            }
            Decision::Reset => self.warm_reset(None),
            Decision::Shutdown => {
                if let Phase::ShuttingDown(_) = self.phase {
                    // Already asked; the grace period already runs.
                    return;
                }
                self.outbox.push_back(Command::PowerButton);
                self.phase = Phase::ShuttingDown(cause);
                if self.probes_on {
                    self.outbox.push_back(Command::HoldLiveness);
                }
                self.arm(Timer::Grace, self.cfg.grace_period);
            }
            Decision::Pause => self.request(Command::Pause, Pending::Pause),
            // Only a paused VM can be resumed; anything else ignores the request.
            Decision::Resume if self.phase == Phase::Paused => {
                self.request(Command::Resume, Pending::Resume)
            }
            Decision::Resume => {}
            Decision::InjectNmi => self.request(Command::InjectNmi, Pending::Nmi),
            Decision::Report { log } => {
                if log {
                    self.outbox.push_back(Command::Log(
                        "watchdog expired (action debug): the VM keeps running".into(),
                    ));
                }
            }
        }
    }

    /// Warm-reset the VM; the probes restart at once, or after `probe_delay`.
    fn warm_reset(&mut self, probe_delay: Option<Duration>) {
        if !self.vm_present() {
            return;
        }
        self.request(Command::Reset, Pending::Reset { probe_delay });
    }

    fn reset_done(&mut self, probe_delay: Option<Duration>) {
        self.disarm(Timer::Grace);
        self.disarm(Timer::ProbeResume);
        self.probes_off();
        self.phase = Phase::Running;
        self.boots += 1;
        self.emit(Event::Started { boot: self.boots });
        if !self.cfg.probes {
            return;
        }
        match probe_delay {
            None => self.resume_probes(),
            Some(delay) => {
                self.emit(Event::Info {
                    message: format!(
                        "probes resume in {} ms (back-off of liveness resets)",
                        delay.as_millis()
                    ),
                });
                self.arm(Timer::ProbeResume, delay);
            }
        }
    }
}

#[cfg(test)]
mod tests;
