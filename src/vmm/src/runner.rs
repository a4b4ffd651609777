//! The shell of `vmpulse run`: one epoll loop in the calling thread around the pure
//! [`Controller`].
//!
//! The [`Controller`] decides everything (runStrategy, restart back-off, the action
//! router, phases and readiness); this shell owns the fds, the VM and the probe set, feeds
//! the controller [`Input`]s and carries out its [`Command`]s in order, reporting the
//! outcome of those that can fail. One [`event_manager::EventManager`] watches:
//! - the runner's own fds, each under a typed token (`Token`): the machine's event fd
//!   (console lines, guest poweroff/reset, vCPU errors), the probes' inner epoll fd
//!   ([`ProbeSet::fd`]), ONE timerfd kept at the controller's next deadline
//!   ([`Controller::next_deadline`]; a wake-up fires every due timer with
//!   [`Controller::fire_due_timers`]) and, with [`RunConfig::handle_signals`], the
//!   SIGINT/SIGTERM self-pipes;
//! - the watchdog's timerfd, through the device crate's [`WatchdogTimer`] subscriber: the
//!   device tells it when a guest access, a reset, a pause or a resume moves the deadline,
//!   and its expiries go into its action sink, from which the loop hands them to the
//!   controller (nobody services the watchdog by hand);
//! - the ops [`HttpServer`], with [`OpsConfig`]'s API socket or metrics address.
//!
//! After every `run()` of the manager the loop hands what became ready to the
//! controller in a fixed order: machine events first, then watchdog expiries, then probe
//! results, timers and signals. No thread of this module sleeps; the other threads of a
//! run are the machine's vCPU thread (KVM_RUN blocks) and, with `--agent-serial`, the
//! machine's COM2 reader thread.
//!
//! API and metrics requests are answered after each dispatch ([`api::answer`]); a
//! `PUT /vm/...` is the controller's [`Input::Api`], so it goes through the router as
//! `Trigger::Api`. Every event passes through a [`RunStatus`] on its way to the sink, which
//! keeps the status, the metrics and the end-of-run `summary`; the shell emits the
//! `summary` just before the controller's `finished` (whose exit code becomes
//! [`EXIT_FAILED_PHASE`] with `--exit-code-from-phase` and a `Failed` final phase).
//!
//! The machine sits behind the small [`Vm`] trait (implemented by [`Machine`]), so the
//! shell is tested here with a fake VM that drives a real i6300esb model on a real
//! timerfd, without KVM; the decisions themselves are tested in virtual time in the
//! controller's tests.
//!
//! Every start of the VM (first start and runStrategy restarts) is a new VM, as a new VMI
//! is in KubeVirt: the watchdog gets a power-on reset (its timeout flag cleared) and the
//! probes a new set. A warm reset (watchdog or liveness `reset`, or the guest's own
//! reboot) keeps the VM and the watchdog's timeout flag, and restarts the probes' schedule.

use std::cell::RefCell;
use std::io;
use std::net::IpAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use event_manager::{
    EventManager, EventOps, EventSet, Events, MutEventSubscriber, SubscriberId, SubscriberOps,
};
use i6300esb::adapters::timer::{MonotonicClock, WatchdogTimer};
use i6300esb::{ActionSink, Clock, EventCounters, Expiry, I6300Esb, WatchdogAction};
use vmm_sys_util::timerfd::TimerFd;

use super::api::{self, CommandError, Control, HttpServer, OpsConfig};
use super::controller::{Command, Controller, ControllerConfig, Input, Phase, ProbeReport};
use super::events::{Event, EventSink, FinalPhase};
use super::machine::{GuestOptions, Machine, MachineConfig, MachineEvent, SharedEsb};
use super::router::ApiAction;
use super::sched;
use super::status::{RunStatus, StatusDoc, WatchdogLive};
use super::strategy::{exit_code, Ending};
use vmpulse_manifest::{LivenessAction, RunStrategy};
use vmpulse_probes::config::ProbeConfig;
use vmpulse_probes::tracker::Outcome as ProbeOutcome;
use vmpulse_probes::{AgentChannel, ProbeEnv, ProbeEvent, ProbeSet};

/// What the event loop needs from a virtual machine ([`Machine`] in production).
pub trait Vm {
    /// Start the guest.
    fn start(&mut self) -> Result<(), String>;
    /// Readable when [`Vm::drain_events`] has something.
    fn event_fd(&self) -> RawFd;
    /// Every queued event, in order.
    fn drain_events(&mut self) -> Vec<MachineEvent>;
    /// Freeze the vCPU and the watchdog.
    fn pause(&mut self) -> Result<(), String>;
    /// Undo [`Vm::pause`].
    fn resume(&mut self) -> Result<(), String>;
    /// Warm reset; the guest boots again.
    fn reset(&mut self) -> Result<(), String>;
    /// Graceful shutdown request.
    fn power_button(&mut self);
    /// An NMI into the vCPU.
    fn inject_nmi(&mut self) -> Result<(), String>;
    /// Power off; idempotent.
    fn stop(&mut self);
    /// When the VM last carried out a request of the calls above (see
    /// [`Machine::last_done`]), if it knows better than the return of the call; the
    /// lateness of a watchdog action is measured to it.
    fn last_done(&self) -> Option<Instant> {
        None
    }
}

impl Vm for Machine {
    fn start(&mut self) -> Result<(), String> {
        Machine::start(self).map_err(|e| e.to_string())
    }
    fn event_fd(&self) -> RawFd {
        Machine::event_fd(self)
    }
    fn drain_events(&mut self) -> Vec<MachineEvent> {
        Machine::drain_events(self)
    }
    fn pause(&mut self) -> Result<(), String> {
        Machine::pause(self).map_err(|e| e.to_string())
    }
    fn resume(&mut self) -> Result<(), String> {
        Machine::resume(self).map_err(|e| e.to_string())
    }
    fn reset(&mut self) -> Result<(), String> {
        Machine::reset(self).map_err(|e| e.to_string())
    }
    fn power_button(&mut self) {
        Machine::power_button(self)
    }
    fn inject_nmi(&mut self) -> Result<(), String> {
        Machine::inject_nmi(self).map_err(|e| e.to_string())
    }
    fn stop(&mut self) {
        Machine::stop(self)
    }
    fn last_done(&self) -> Option<Instant> {
        Machine::last_done(self)
    }
}

/// Creates a fresh VM for every start.
pub trait VmFactory {
    /// A new VM using `esb` (just power-on reset), with `agent_serial` as the host end
    /// of its COM2 when asked for. The watchdog's timer follows the device on its own.
    fn create(
        &mut self,
        esb: SharedEsb,
        agent_serial: Option<UnixStream>,
    ) -> Result<Box<dyn Vm>, String>;
}

/// The factory `vmpulse run` uses: a new KVM [`Machine`] with the built-in test guest
/// for every start.
#[derive(Clone, Debug)]
pub struct KvmFactory {
    /// Guest memory of each machine, in bytes.
    pub memory_bytes: u64,
    /// What the built-in guest does.
    pub guest: GuestOptions,
}

impl VmFactory for KvmFactory {
    fn create(
        &mut self,
        esb: SharedEsb,
        agent_serial: Option<UnixStream>,
    ) -> Result<Box<dyn Vm>, String> {
        let cfg = MachineConfig {
            memory_bytes: self.memory_bytes,
            guest: self.guest.clone(),
            agent_serial,
        };
        let machine = Machine::new(cfg, esb).map_err(|e| e.to_string())?;
        Ok(Box::new(machine))
    }
}

/// Where the probes' guest-agent client finds the agent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AgentSpec {
    /// No agent (exec and guestAgentPing probes fail).
    None,
    /// A Unix socket where `qemu-ga -m unix-listen` listens.
    Socket(PathBuf),
    /// The VM's COM2, for guests running `qemu-ga -m isa-serial`.
    Com2,
}

/// Everything the loop needs to know about the run.
#[derive(Clone, Debug)]
pub struct RunConfig {
    /// `metadata.name`.
    pub vm_name: String,
    /// `spec.runStrategy`.
    pub strategy: RunStrategy,
    /// The watchdog's name and action (`None`: the manifest has no watchdog; expiries of the
    /// machine's device are then reported with action `none`).
    pub watchdog: Option<(String, WatchdogAction)>,
    /// What a liveness failure does.
    pub liveness_action: LivenessAction,
    /// `terminationGracePeriodSeconds`.
    pub grace_period: Duration,
    /// The probes (each knows whether it is the liveness or the readiness probe).
    pub probes: Vec<ProbeConfig>,
    /// The VM's addresses for probes (`--probe-host`).
    pub probe_addresses: Vec<IpAddr>,
    /// The guest agent channel.
    pub agent: AgentSpec,
    /// `--max-restarts`.
    pub max_restarts: Option<u32>,
    /// `--run-for`.
    pub run_for: Option<Duration>,
    /// The first restart back-off.
    pub backoff: Duration,
    /// Stop the VM cleanly and end the run on SIGINT or SIGTERM (the `vmpulse` binary sets
    /// this; an embedding program that handles signals itself leaves it off).
    pub handle_signals: bool,
    /// The API socket, the metrics listener and `--exit-code-from-phase`.
    pub ops: OpsConfig,
    /// `--realtime-priority`: run the loop's thread, and so the vCPU threads it starts,
    /// under `SCHED_FIFO` at this priority (1-99) for the run (see [`crate::sched`]).
    /// `None`: the caller's policy, unchanged.
    pub realtime_priority: Option<u8>,
}

pub use super::controller::Outcome;

impl ControllerConfig {
    /// The controller's part of the runner's configuration.
    pub fn from_run_config(cfg: &RunConfig) -> Self {
        ControllerConfig {
            strategy: cfg.strategy,
            watchdog_name: cfg.watchdog.as_ref().map(|(name, _)| name.clone()),
            liveness_action: cfg.liveness_action,
            grace_period: cfg.grace_period,
            probes: !cfg.probes.is_empty(),
            max_restarts: cfg.max_restarts,
            run_for: cfg.run_for,
            backoff: cfg.backoff,
        }
    }
}

/// The exit code of a run whose final phase is `Failed`, with `--exit-code-from-phase`.
pub const EXIT_FAILED_PHASE: u8 = 3;

/// Errors setting up the loop.
#[derive(Debug, thiserror::Error)]
pub enum RunnerError {
    /// A file descriptor could not be created.
    #[error("cannot create a file descriptor: {0}")]
    Fd(#[from] io::Error),
    /// The event manager refused something.
    #[error("event loop: {0}")]
    EventManager(String),
    /// The API socket or the metrics address cannot be listened on.
    #[error("cannot listen: {0}")]
    Listen(io::Error),
}

/// How long past the grace period a `PUT /vm/shutdown` may wait for its answer.
const SHUTDOWN_ANSWER_MARGIN: Duration = Duration::from_secs(5);

/// The runner's own fds in its epoll (the watchdog's timer and the ops server are
/// subscribers of their own). The value is the epoll data of the fd.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u32)]
enum Token {
    /// The machine's event fd.
    Machine = 1,
    /// The probe set's inner epoll fd.
    Probes = 2,
    /// The one timerfd of the controller's timers.
    Timer = 3,
    /// SIGINT's self-pipe.
    Sigint = 4,
    /// SIGTERM's self-pipe.
    Sigterm = 5,
}

impl Token {
    const ALL: [Token; 5] = [
        Token::Machine,
        Token::Probes,
        Token::Timer,
        Token::Sigint,
        Token::Sigterm,
    ];

    fn from_data(data: u32) -> Option<Token> {
        Token::ALL.into_iter().find(|t| *t as u32 == data)
    }
}

/// SIGINT and SIGTERM turned into readable sockets for the loop (signal-hook's self-pipe),
/// registered for the run only.
struct Interrupts {
    /// (signal, token, read end).
    pipes: Vec<(i32, Token, UnixStream)>,
    ids: Vec<signal_hook::SigId>,
}

impl Interrupts {
    fn register() -> io::Result<Self> {
        let mut out = Interrupts {
            pipes: Vec::new(),
            ids: Vec::new(),
        };
        for (sig, token) in [
            (signal_hook::consts::SIGINT, Token::Sigint),
            (signal_hook::consts::SIGTERM, Token::Sigterm),
        ] {
            let (rx, tx) = UnixStream::pair()?;
            rx.set_nonblocking(true)?;
            tx.set_nonblocking(true)?;
            out.ids
                .push(signal_hook::low_level::pipe::register(sig, tx)?);
            out.pipes.push((sig, token, rx));
        }
        Ok(out)
    }

    /// Empty the pipe of `token`; returns its signal if anything had arrived.
    fn take(&mut self, token: Token) -> Option<i32> {
        let (sig, _, rx) = self.pipes.iter_mut().find(|(_, t, _)| *t == token)?;
        let mut buf = [0u8; 64];
        let mut got = false;
        while let Ok(n @ 1..) = io::Read::read(rx, &mut buf) {
            got |= n > 0;
        }
        got.then_some(*sig)
    }
}

impl Drop for Interrupts {
    fn drop(&mut self) {
        for id in self.ids.drain(..) {
            signal_hook::low_level::unregister(id);
        }
    }
}

/// Records which of the runner's fds became ready; the loop handles them after `run()`.
struct ReadyFds {
    ready: Rc<RefCell<Vec<Token>>>,
}

impl MutEventSubscriber for ReadyFds {
    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        match Token::from_data(events.data()) {
            Some(token) => self.ready.borrow_mut().push(token),
            None => log::warn!("event for an unknown token {}", events.data()),
        }
    }
    fn init(&mut self, _ops: &mut EventOps) {}
}

/// Queues watchdog expiries for the loop (the device adapter's action sink).
struct ExpiryQueue(Rc<RefCell<Vec<Expiry>>>);

impl ActionSink for ExpiryQueue {
    fn watchdog_expired(&mut self, expiry: Expiry) {
        self.0.borrow_mut().push(expiry);
    }
}

type Subscriber = Rc<RefCell<dyn MutEventSubscriber>>;
type EsbTimer = WatchdogTimer<MonotonicClock, Arc<EventCounters>, ExpiryQueue>;

/// Counts errors and keeps the status on the events' way to the real sink.
struct Out<'s, S: EventSink> {
    sink: &'s mut S,
    errors: u32,
    /// Boxed: large, and carried through `Runner::new`'s error path.
    status: Box<RunStatus>,
    /// Events held back while a watchdog expiry's commands run, with their instants: the
    /// `watchdog` event gets its lateness once the action is done, and nothing it caused
    /// may reach the sink before it.
    held: Option<Vec<(Event, Instant)>>,
}

impl<S: EventSink> Out<'_, S> {
    /// Report `event`, which happened `at`.
    fn emit_at(&mut self, mut event: Event, at: Instant) {
        if let Event::Error { message } = &event {
            self.errors += 1;
            log::debug!("error event: {message}");
        }
        self.status.observe(&mut event, at);
        match self.held.as_mut() {
            Some(held) => held.push((event, at)),
            None => self.sink.emit_at(at, event),
        }
    }
    /// Keep events back until [`Out::release`].
    fn hold(&mut self) {
        self.held.get_or_insert_with(Vec::new);
    }
    /// Pass on the held events in order, the first `watchdog` event among them with
    /// `late`, which also goes to the metrics.
    fn release(&mut self, mut late: Option<Duration>) {
        let Some(held) = self.held.take() else {
            return;
        };
        for (mut event, at) in held {
            if let Event::Watchdog {
                action, late_us, ..
            } = &mut event
            {
                if let Some(late) = late.take() {
                    *late_us = Some(u64::try_from(late.as_micros()).unwrap_or(u64::MAX));
                    self.status.action_lateness(action, late);
                }
            }
            self.sink.emit_at(at, event);
        }
    }
    fn emit(&mut self, event: Event) {
        self.emit_at(event, Instant::now());
    }
    fn error(&mut self, message: String) {
        self.emit(Event::Error { message });
    }
}

/// The shell of the run: it owns the fds, the VM and the probe set, and carries out the
/// [`Controller`]'s commands.
struct Runner<'a, F: VmFactory, S: EventSink> {
    cfg: RunConfig,
    factory: &'a mut F,
    out: Out<'a, S>,
    ctl: Controller,
    manager: EventManager<Subscriber>,
    fds_id: SubscriberId,
    ready: Rc<RefCell<Vec<Token>>>,
    expiries: Rc<RefCell<Vec<Expiry>>>,
    esb: SharedEsb,
    /// The device's clock (a copy: the same origin), to measure expiry lateness.
    clock: MonotonicClock,
    /// While a watchdog expiry's commands run: its deadline on `clock`, until the first
    /// command that carries out its action has returned.
    expiry_deadline: Option<u64>,
    /// How late that action was carried out.
    expiry_late: Option<Duration>,
    /// When the last VM stopped ([`Vm::last_done`] before it was released).
    stopped_at: Option<Instant>,
    /// Armed at the controller's next deadline.
    timer: TimerFd,
    /// What `timer` is armed for (time since the run started).
    timer_at: Option<Duration>,
    /// The probes were (re)started outside their fd's readiness: process them before
    /// blocking again.
    probes_due: bool,
    vm: Option<Box<dyn Vm>>,
    vm_fd: Option<RawFd>,
    probes: Option<ProbeSet>,
    probes_fd: Option<RawFd>,
    /// Time 0 of the controller.
    run_started: Instant,
    /// The exit code of the `finished` event (the controller's, or
    /// [`EXIT_FAILED_PHASE`]).
    exit_code: Option<u8>,
    /// SIGINT/SIGTERM, when [`RunConfig::handle_signals`] is set.
    interrupts: Option<Interrupts>,
    /// The API and metrics server, when asked for.
    api: Option<(Rc<RefCell<HttpServer>>, SubscriberId)>,
    /// Connections whose `PUT /vm/shutdown` is answered once the shutdown is over.
    held: Vec<u32>,
}

/// Run the VM described by `cfg` until the run ends; report every event to `sink`.
///
/// Never panics on machine or probe failures: they become `error` events and an exit code.
pub fn run<F: VmFactory, S: EventSink>(cfg: RunConfig, factory: &mut F, sink: &mut S) -> Outcome {
    let action = cfg
        .watchdog
        .as_ref()
        .map_or(WatchdogAction::None, |(_, a)| *a);
    let mut status = RunStatus::new(&cfg.vm_name, action.name(), &cfg.probes);
    status.exit_code_from_phase = cfg.ops.exit_code_from_phase;
    let mut out = Out {
        sink,
        errors: 0,
        status: Box::new(status),
        held: None,
    };
    let runner = match Runner::new(cfg, factory, out) {
        Ok(r) => r,
        Err((o, e)) => {
            out = o;
            let message = e.to_string();
            out.error(message.clone());
            let code = exit_code(&Ending::Fatal(message.clone()), out.errors);
            let code = summary_then_finished(&mut out, &Ending::Fatal(message.clone()), code);
            return Outcome {
                ending: Ending::Fatal(message),
                errors: out.errors,
                boots: 0,
                restarts: 0,
                exit_code: code,
            };
        }
    };
    runner.run()
}

/// Emit the `summary`, then `finished` with `code` (or [`EXIT_FAILED_PHASE`] instead of 0
/// when the final phase is `Failed` and `--exit-code-from-phase` is set); returns the
/// exit code.
fn summary_then_finished<S: EventSink>(out: &mut Out<'_, S>, ending: &Ending, code: u8) -> u8 {
    let summary = out.status.summary(ending, Instant::now());
    let failed = summary.phase == FinalPhase::Failed;
    out.emit(Event::Summary(summary));
    let code = if code == 0 && failed && out.status.exit_code_from_phase {
        EXIT_FAILED_PHASE
    } else {
        code
    };
    out.emit(Event::Finished {
        exit_code: code,
        message: ending.message(),
    });
    code
}

fn em_err(e: event_manager::Error) -> RunnerError {
    RunnerError::EventManager(e.to_string())
}

impl<'a, F: VmFactory, S: EventSink> Runner<'a, F, S> {
    #[allow(clippy::type_complexity)]
    fn new(
        cfg: RunConfig,
        factory: &'a mut F,
        out: Out<'a, S>,
    ) -> Result<Self, (Out<'a, S>, RunnerError)> {
        let parts = (|| -> Result<_, RunnerError> {
            let action = cfg
                .watchdog
                .as_ref()
                .map_or(WatchdogAction::None, |(_, a)| *a);
            let clock = MonotonicClock::new();
            let esb: SharedEsb = Arc::new(Mutex::new(I6300Esb::with_events(
                action,
                clock,
                Arc::new(EventCounters::default()),
            )));
            let expiries = Rc::new(RefCell::new(Vec::new()));
            let ready = Rc::new(RefCell::new(Vec::new()));
            let mut manager: EventManager<Subscriber> = EventManager::new().map_err(em_err)?;
            let fds_id = manager.add_subscriber(Rc::new(RefCell::new(ReadyFds {
                ready: ready.clone(),
            })));
            let timer = TimerFd::new().map_err(io::Error::from)?;
            manager
                .event_ops(fds_id)
                .map_err(em_err)?
                .add(Events::with_data_raw(
                    timer.as_raw_fd(),
                    Token::Timer as u32,
                    EventSet::IN,
                ))
                .map_err(em_err)?;
            let interrupts = if cfg.handle_signals {
                let interrupts = Interrupts::register()?;
                let mut ops = manager.event_ops(fds_id).map_err(em_err)?;
                for (_, token, rx) in &interrupts.pipes {
                    ops.add(Events::with_data_raw(
                        rx.as_raw_fd(),
                        *token as u32,
                        EventSet::IN,
                    ))
                    .map_err(em_err)?;
                }
                Some(interrupts)
            } else {
                None
            };
            // Its constructor installs the device's deadline listener: from here on the
            // timer follows the device with no help from this loop, and expiries go to
            // its sink.
            let esb_timer: Rc<RefCell<EsbTimer>> = Rc::new(RefCell::new(WatchdogTimer::new(
                esb.clone(),
                ExpiryQueue(expiries.clone()),
            )?));
            manager.add_subscriber(esb_timer);
            Ok((
                esb, clock, expiries, ready, manager, fds_id, timer, interrupts,
            ))
        })();
        let (esb, clock, expiries, ready, mut manager, fds_id, timer, interrupts) = match parts {
            Ok(p) => p,
            Err(e) => return Err((out, e)),
        };
        let mut api = None;
        if cfg.ops.api_socket.is_some() || cfg.ops.metrics_addr.is_some() {
            match HttpServer::bind(
                cfg.ops.api_socket.as_deref(),
                cfg.ops.metrics_addr,
                cfg.ops.limits,
            ) {
                Ok(server) => {
                    let server = Rc::new(RefCell::new(server));
                    let id = manager.add_subscriber(server.clone());
                    api = Some((server, id));
                }
                Err(e) => return Err((out, RunnerError::Listen(e))),
            }
        }
        let ctl = Controller::new(ControllerConfig::from_run_config(&cfg));
        Ok(Runner {
            cfg,
            factory,
            out,
            ctl,
            manager,
            fds_id,
            ready,
            expiries,
            esb,
            clock,
            expiry_deadline: None,
            expiry_late: None,
            stopped_at: None,
            timer,
            timer_at: None,
            probes_due: false,
            vm: None,
            vm_fd: None,
            probes: None,
            probes_fd: None,
            run_started: Instant::now(),
            exit_code: None,
            interrupts,
            api,
            held: Vec::new(),
        })
    }

    /// The controller's time.
    fn now(&self) -> Duration {
        self.run_started.elapsed()
    }

    fn finished(&self) -> bool {
        self.ctl.outcome().is_some()
    }

    fn run(mut self) -> Outcome {
        let previous = self
            .cfg
            .realtime_priority
            .and_then(|priority| match sched::realtime(priority) {
                Ok(previous) => Some(previous),
                Err(e) => {
                    self.out.emit(Event::Info {
                        message: format!(
                            "cannot run at real-time priority {priority} ({e}): the run goes on at normal priority"
                        ),
                    });
                    None
                }
            });
        let outcome = self.run_loop();
        if let Some(previous) = previous {
            if let Err(e) = sched::restore(previous) {
                log::warn!("cannot restore the thread's scheduling policy: {e}");
            }
        }
        outcome
    }

    fn run_loop(mut self) -> Outcome {
        self.run_started = Instant::now();
        self.ctl.begin(Duration::ZERO);
        self.drive();
        while !self.finished() {
            if std::mem::take(&mut self.probes_due) {
                // Handled here, not where the probes were started, so that an action they
                // trigger never recurses into the code that started them.
                self.probe_events();
                self.drive();
                continue;
            }
            if !self.expiries.borrow().is_empty() {
                // Left over by a dispatch that stopped early: handle it before waiting.
                self.dispatch();
                continue;
            }
            if let Err(e) = self.manager.run() {
                let now = self.now();
                self.ctl
                    .handle(now, Input::Fault(format!("event loop: {e}")));
                self.drive();
                break;
            }
            self.dispatch();
            self.serve_requests();
        }
        // Answer what is still waiting (a shutdown that ended the run, among others).
        self.serve_requests();
        // The controller stopped the VM; make sure.
        if let Some(mut vm) = self.take_vm() {
            vm.stop();
        }
        match self.ctl.outcome() {
            Some(outcome) => Outcome {
                exit_code: self.exit_code.unwrap_or(outcome.exit_code),
                ..outcome.clone()
            },
            None => {
                // Unreachable in practice: the controller always finishes on a fault.
                let ending = Ending::Fatal("the run loop ended early".into());
                self.out.error("the run loop ended early".into());
                let code = exit_code(&ending, self.out.errors);
                let code = summary_then_finished(&mut self.out, &ending, code);
                Outcome {
                    ending,
                    errors: self.out.errors,
                    boots: self.ctl.boots(),
                    restarts: 0,
                    exit_code: code,
                }
            }
        }
    }

    /// Hand what became ready to the controller, in a fixed order: the machine's events,
    /// then watchdog expiries, then probe results, timers and signals.
    fn dispatch(&mut self) {
        let mut tokens = std::mem::take(&mut *self.ready.borrow_mut());
        tokens.sort_unstable();
        tokens.dedup();
        if tokens.contains(&Token::Machine) {
            if let Some(vm) = self.vm.as_mut() {
                let events = vm.drain_events();
                let now = self.now();
                for event in events {
                    self.ctl.handle(now, Input::Machine(event));
                }
                self.drive();
            }
        }
        let expiries = std::mem::take(&mut *self.expiries.borrow_mut());
        for expiry in expiries {
            let now = self.now();
            self.expiry_deadline = Some(expiry.time_ns);
            self.out.hold();
            self.ctl.handle(now, Input::Expiry(expiry));
            self.drive();
            // An action without a command of its own (`none`, `debug`) is carried out
            // once handled.
            self.action_done(None);
            let late = self.expiry_late.take();
            self.out.release(late);
        }
        for token in tokens {
            if self.finished() {
                return;
            }
            match token {
                Token::Machine => {}
                Token::Probes => self.probe_events(),
                Token::Timer => {
                    // Disarming drops the expiration, so the fd is quiet until `drive` arms
                    // it again for the next deadline.
                    self.timer_at = None;
                    if let Err(e) = self.timer.clear() {
                        log::warn!("cannot disarm the timer: {e}");
                    }
                    let now = self.now();
                    self.ctl.fire_due_timers(now);
                }
                Token::Sigint | Token::Sigterm => {
                    if let Some(sig) = self.interrupts.as_mut().and_then(|i| i.take(token)) {
                        let now = self.now();
                        self.ctl.handle(now, Input::Signal(sig));
                    }
                }
            }
            self.drive();
        }
    }

    /// Carry out the controller's commands, reporting the outcomes it waits for; then
    /// keep the timerfd at its next deadline.
    fn drive(&mut self) {
        loop {
            while let Some(command) = self.ctl.poll_command() {
                let needs_outcome = command.needs_outcome();
                let result = self.execute(command);
                if needs_outcome {
                    let now = self.now();
                    self.ctl.command_done(now, result);
                }
            }
            match self.sync_timer() {
                Ok(()) => return,
                Err(e) => {
                    let now = self.now();
                    self.ctl
                        .handle(now, Input::Fault(format!("cannot arm a timer: {e}")));
                    self.timer_at = None;
                    if self.finished() {
                        // The fault ended the run: its last commands need no timer.
                        while let Some(command) = self.ctl.poll_command() {
                            let _ = self.execute(command);
                        }
                        return;
                    }
                }
            }
        }
    }

    /// Arm the timerfd for the controller's next deadline (disarm it without one).
    fn sync_timer(&mut self) -> io::Result<()> {
        let next = self.ctl.next_deadline().map(|(at, _)| at);
        if next == self.timer_at {
            return Ok(());
        }
        self.timer_at = next;
        match next {
            // Setting a timerfd also drops an expiration not yet read, so a fired
            // timerfd stops being readable.
            Some(at) => {
                let after = at.saturating_sub(self.now());
                // A zero duration would disarm a timerfd; one nanosecond fires at once.
                self.timer
                    .reset(after.max(Duration::from_nanos(1)), None)
                    .map_err(io::Error::from)
            }
            None => self.timer.clear().map_err(io::Error::from),
        }
    }

    /// A watchdog expiry's action has been carried out (or failed), at `done` if the VM
    /// said when, else now: its lateness is known.
    fn action_done(&mut self, done: Option<Instant>) {
        if let Some(deadline) = self.expiry_deadline.take() {
            let now = self.clock.now_ns();
            let ago = done.map_or(0, |t| {
                u64::try_from(t.elapsed().as_nanos()).unwrap_or(u64::MAX)
            });
            let late = now.saturating_sub(ago).saturating_sub(deadline);
            self.expiry_late = Some(Duration::from_nanos(late));
        }
    }

    /// Carry out one command; `Err` is the outcome of a failed one.
    fn execute(&mut self, command: Command) -> Result<(), String> {
        let action = matches!(
            command,
            Command::Stop
                | Command::Reset
                | Command::Pause
                | Command::PowerButton
                | Command::InjectNmi
        );
        let issued = Instant::now();
        let stop = command == Command::Stop;
        let result = self.carry_out(command);
        if action {
            // When the VM itself says it was done (the vCPU thread's confirmation, which
            // the loop hears of later), as long as it belongs to this command.
            let done = if stop {
                self.stopped_at.take()
            } else {
                self.vm.as_ref().and_then(|vm| vm.last_done())
            }
            .filter(|t| *t >= issued);
            self.action_done(done);
        }
        result
    }

    fn carry_out(&mut self, command: Command) -> Result<(), String> {
        match command {
            Command::Start => self.try_start_vm(),
            Command::Stop => {
                self.stop_vm();
                Ok(())
            }
            Command::Reset => self.with_vm(|vm| vm.reset()),
            Command::Pause => {
                self.with_vm(|vm| vm.pause())?;
                self.out.status.set_paused(true, Instant::now());
                Ok(())
            }
            Command::Resume => {
                self.with_vm(|vm| vm.resume())?;
                self.out.status.set_paused(false, Instant::now());
                Ok(())
            }
            Command::PowerButton => self.with_vm(|vm| {
                vm.power_button();
                Ok(())
            }),
            Command::InjectNmi => self.with_vm(|vm| vm.inject_nmi()),
            Command::StartProbes => {
                if let Some(probes) = self.probes.as_mut() {
                    probes.vm_started(Instant::now());
                    self.probes_due = true;
                }
                Ok(())
            }
            Command::StopProbes => {
                if let Some(probes) = self.probes.as_mut() {
                    let now = Instant::now();
                    probes.vm_stopped(now);
                    // The controller already reported the VM not ready; what the stopped
                    // schedule still has is dropped.
                    let _ = probes.process(now);
                }
                Ok(())
            }
            Command::HoldLiveness => {
                if let Some(probes) = self.probes.as_mut() {
                    probes.vm_stopping(Instant::now());
                }
                Ok(())
            }
            // The timerfd follows the controller's deadlines after every command batch.
            Command::ArmTimer { .. } | Command::DisarmTimer(_) => Ok(()),
            Command::Log(message) => {
                log::warn!("{message}");
                Ok(())
            }
            Command::Emit {
                event: Event::Finished { exit_code, .. },
                ..
            } => {
                let ending = self
                    .ctl
                    .outcome()
                    .map(|o| o.ending.clone())
                    .unwrap_or(Ending::Fatal("no ending".into()));
                let code = summary_then_finished(&mut self.out, &ending, exit_code);
                self.exit_code = Some(code);
                Ok(())
            }
            Command::Emit { at, event } => {
                self.out.emit_at(event, self.run_started + at);
                Ok(())
            }
        }
    }

    fn with_vm(
        &mut self,
        f: impl FnOnce(&mut Box<dyn Vm>) -> Result<(), String>,
    ) -> Result<(), String> {
        match self.vm.as_mut() {
            Some(vm) => f(vm),
            None => Err("there is no VM".into()),
        }
    }

    fn watch(&mut self, fd: RawFd, token: Token) -> Result<(), String> {
        self.manager
            .event_ops(self.fds_id)
            .and_then(|mut ops| ops.add(Events::with_data_raw(fd, token as u32, EventSet::IN)))
            .map_err(|e| format!("cannot watch fd {fd}: {e}"))
    }

    fn unwatch(&mut self, fd: RawFd, token: Token) {
        let removed = self
            .manager
            .event_ops(self.fds_id)
            .and_then(|mut ops| ops.remove(Events::with_data_raw(fd, token as u32, EventSet::IN)));
        if let Err(e) = removed {
            log::warn!("cannot stop watching fd {fd}: {e}");
        }
    }

    // ---- starting and stopping --------------------------------------------------------

    /// A new VM, its watchdog powered on afresh and its probe set made (not scheduled).
    /// On failure, whatever was made is released by the `Stop` that follows.
    fn try_start_vm(&mut self) -> Result<(), String> {
        // A new VM: the watchdog is powered on afresh (timeout flag cleared).
        self.esb
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .power_on_reset();
        let (vm_serial, probe_serial) = if self.cfg.agent == AgentSpec::Com2 {
            let (a, b) =
                UnixStream::pair().map_err(|e| format!("cannot create the COM2 channel: {e}"))?;
            (Some(a), Some(b))
        } else {
            (None, None)
        };
        let vm = self
            .factory
            .create(self.esb.clone(), vm_serial)
            .map_err(|e| format!("cannot create the VM: {e}"))?;
        let fd = vm.event_fd();
        self.watch(fd, Token::Machine)?;
        self.vm_fd = Some(fd);
        // Owned by the runner before it can fail, so a failure unregisters its fd first.
        let vm = self.vm.insert(vm);
        vm.start()
            .map_err(|e| format!("cannot start the VM: {e}"))?;
        if !self.cfg.probes.is_empty() {
            let agent = match (&self.cfg.agent, probe_serial) {
                (AgentSpec::Socket(path), _) => Some(AgentChannel::UnixSocket(path.clone())),
                (AgentSpec::Com2, Some(stream)) => Some(AgentChannel::Stream(stream)),
                _ => None,
            };
            let env = ProbeEnv {
                vm_addresses: self.cfg.probe_addresses.clone(),
                agent,
            };
            let probes = ProbeSet::new(self.cfg.probes.clone(), env)
                .map_err(|e| format!("cannot set up the probes: {e}"))?;
            let pfd = probes.fd();
            self.watch(pfd, Token::Probes)?;
            self.probes_fd = Some(pfd);
            self.probes = Some(probes);
        }
        Ok(())
    }

    fn take_vm(&mut self) -> Option<Box<dyn Vm>> {
        if let Some(fd) = self.vm_fd.take() {
            self.unwatch(fd, Token::Machine);
        }
        self.vm.take()
    }

    /// Power the VM off and release it with its probe set; power the watchdog off.
    fn stop_vm(&mut self) {
        if let Some(mut vm) = self.take_vm() {
            vm.stop();
            self.stopped_at = vm.last_done();
        }
        // The device is powered off with the VM: no expiry may follow the stop (a
        // power-on reset drops those not yet polled; the queue holds those polled).
        self.esb
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .power_on_reset();
        self.expiries.borrow_mut().clear();
        if let Some(mut probes) = self.probes.take() {
            probes.vm_stopped(Instant::now());
            if let Some(fd) = self.probes_fd.take() {
                self.unwatch(fd, Token::Probes);
            }
        }
        self.probes_due = false;
    }

    // ---- inputs -----------------------------------------------------------------------

    /// Hand the probe set's results to the controller.
    fn probe_events(&mut self) {
        let Some(probes) = self.probes.as_mut() else {
            return;
        };
        let events = probes.process(Instant::now());
        if events.is_empty() {
            return;
        }
        let reports = events
            .into_iter()
            .map(|event| match event {
                ProbeEvent::Attempt(a) => ProbeReport::Attempt(Event::Probe {
                    probe: a.probe.name().to_string(),
                    result: match a.outcome {
                        ProbeOutcome::Success => "success",
                        ProbeOutcome::Failure => "failure",
                        ProbeOutcome::Error => "error",
                    }
                    .to_string(),
                    message: a.message,
                    address: a.address,
                    exit_code: a.exit_code,
                    output: a.output,
                    duration_us: u64::try_from(a.duration.as_micros()).unwrap_or(u64::MAX),
                    streak: None,
                }),
                ProbeEvent::Ready(ready) => ProbeReport::Ready(ready),
                ProbeEvent::LivenessFailed { message } => ProbeReport::LivenessFailed { message },
            })
            .collect();
        let now = self.now();
        self.ctl.handle(now, Input::Probes(reports));
    }

    /// Answer the API and metrics requests that arrived in this round.
    fn serve_requests(&mut self) {
        let Some((server, id)) = self.api.clone() else {
            return;
        };
        let requests = server.borrow_mut().take_requests();
        let mut answers = Vec::new();
        for request in requests {
            let response = api::answer(&request, self);
            if response.status == 204 && request.path == "/vm/shutdown" && self.shutting_down() {
                // Answered once done: when the VM is off (or a reset or pause ended the
                // shutdown), within the grace period.
                server
                    .borrow_mut()
                    .hold(request.conn, self.cfg.grace_period + SHUTDOWN_ANSWER_MARGIN);
                self.held.push(request.conn);
                continue;
            }
            answers.push((request.conn, response));
        }
        if !self.shutting_down() {
            answers.extend(
                self.held
                    .drain(..)
                    .map(|c| (c, api::Response::no_content())),
            );
        }
        for (conn, response) in answers {
            match self.manager.event_ops(id) {
                Ok(mut ops) => server.borrow_mut().respond(&mut ops, conn, &response),
                Err(e) => log::warn!("cannot answer an API request: {e}"),
            }
        }
    }

    /// A shutdown request is in progress.
    fn shutting_down(&self) -> bool {
        matches!(self.ctl.phase(), Phase::ShuttingDown(_)) && !self.finished()
    }
}

impl<F: VmFactory, S: EventSink> Control for Runner<'_, F, S> {
    fn status(&mut self) -> StatusDoc {
        self.out.status.status(WatchdogLive::read(&self.esb))
    }

    fn metrics(&mut self) -> String {
        self.out.status.metrics_text(WatchdogLive::read(&self.esb))
    }

    fn command(&mut self, action: ApiAction) -> Result<(), CommandError> {
        if self.vm.is_none() || self.finished() {
            return Err(CommandError::Conflict("the VM is not running".into()));
        }
        let errors = self.out.errors;
        let now = self.now();
        self.ctl.handle(now, Input::Api(action));
        self.drive();
        if self.out.errors > errors {
            return Err(CommandError::Failed(format!(
                "{action:?} failed: see the error event"
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::{Cause, StopReason};
    use std::collections::VecDeque;
    use vmm_sys_util::eventfd::EventFd;

    /// Register offsets used to program the device as the guest would.
    const CFG_CONFIG: usize = 0x60;
    const CFG_LOCK: usize = 0x68;
    const BAR_TIMER1: u64 = 0x00;
    const BAR_TIMER2: u64 = 0x04;
    const BAR_RELOAD: u64 = 0x0c;

    /// What the fake guest does.
    #[derive(Clone, Copy, Default)]
    struct Script {
        /// Arm the watchdog at every boot (and never kick): it fires ~10 ms later.
        arm_watchdog: bool,
        /// Ignore the power button.
        ignore_shutdown: bool,
        /// Power off right after booting.
        poweroff_at_boot: bool,
        /// Report a vCPU error right after booting.
        error_at_boot: bool,
        /// Ask for a reset (port 0xCF9) at the first boot.
        reset_at_first_boot: bool,
        /// `start` fails.
        fail_start: bool,
        /// `reset` says it was done (`last_done`), then takes 50 ms more to return, as an
        /// owner woken late would.
        slow_confirm: bool,
    }

    #[derive(Default)]
    struct Log {
        created: u32,
        calls: Vec<&'static str>,
    }

    struct FakeVm {
        evt: EventFd,
        queue: VecDeque<MachineEvent>,
        esb: SharedEsb,
        script: Script,
        log: Rc<RefCell<Log>>,
        reset_asked: bool,
        done_at: Option<Instant>,
    }

    impl FakeVm {
        fn push(&mut self, e: MachineEvent) {
            self.queue.push_back(e);
            self.evt.write(1).unwrap();
        }
        fn boot(&mut self) {
            let flag = self.esb.lock().unwrap().watchdog().timeout_flag();
            self.push(MachineEvent::ConsoleLine(format!(
                "fake: boot, timeout flag {}",
                u8::from(flag)
            )));
            if self.script.arm_watchdog {
                let mut d = self.esb.lock().unwrap();
                // 5000 units per stage at the 1 MHz prescaler: about 4.8 ms each.
                d.config_write(CFG_CONFIG, &0x0004u16.to_le_bytes());
                for (reg, value) in [(BAR_TIMER1, 5000u32), (BAR_TIMER2, 5000u32)] {
                    d.bar0_write(BAR_RELOAD, &0x80u16.to_le_bytes());
                    d.bar0_write(BAR_RELOAD, &0x86u16.to_le_bytes());
                    d.bar0_write(reg, &value.to_le_bytes());
                }
                // No re-arm call: the device tells the runner's timer itself.
                d.config_write(CFG_LOCK, &[0x02]);
            }
            if self.script.poweroff_at_boot {
                self.push(MachineEvent::GuestPoweroff);
            }
            if self.script.error_at_boot {
                self.push(MachineEvent::Error("fake vCPU failure".into()));
            }
            if self.script.reset_at_first_boot && !self.reset_asked {
                self.reset_asked = true;
                self.push(MachineEvent::GuestReset);
            }
        }
    }

    impl Vm for FakeVm {
        fn start(&mut self) -> Result<(), String> {
            self.log.borrow_mut().calls.push("start");
            if self.script.fail_start {
                return Err("KVM_RUN refused".into());
            }
            self.boot();
            Ok(())
        }
        fn event_fd(&self) -> RawFd {
            self.evt.as_raw_fd()
        }
        fn drain_events(&mut self) -> Vec<MachineEvent> {
            let _ = self.evt.read();
            self.queue.drain(..).collect()
        }
        fn pause(&mut self) -> Result<(), String> {
            self.log.borrow_mut().calls.push("pause");
            self.esb.lock().unwrap().pause();
            Ok(())
        }
        fn resume(&mut self) -> Result<(), String> {
            self.log.borrow_mut().calls.push("resume");
            self.esb.lock().unwrap().resume();
            Ok(())
        }
        fn reset(&mut self) -> Result<(), String> {
            self.log.borrow_mut().calls.push("reset");
            self.esb.lock().unwrap().warm_reset();
            self.boot();
            if self.script.slow_confirm {
                self.done_at = Some(Instant::now());
                std::thread::sleep(Duration::from_millis(50));
            }
            Ok(())
        }
        fn last_done(&self) -> Option<Instant> {
            self.done_at
        }
        fn power_button(&mut self) {
            self.log.borrow_mut().calls.push("power_button");
            if !self.script.ignore_shutdown {
                self.push(MachineEvent::ConsoleLine("fake: shutting down".into()));
                self.push(MachineEvent::GuestPoweroff);
            }
        }
        fn inject_nmi(&mut self) -> Result<(), String> {
            self.log.borrow_mut().calls.push("inject_nmi");
            self.push(MachineEvent::ConsoleLine("guest: NMI received".into()));
            Ok(())
        }
        fn stop(&mut self) {
            self.log.borrow_mut().calls.push("stop");
        }
    }

    struct FakeFactory {
        script: Script,
        fail: bool,
        log: Rc<RefCell<Log>>,
    }

    impl VmFactory for FakeFactory {
        fn create(
            &mut self,
            esb: SharedEsb,
            _agent_serial: Option<UnixStream>,
        ) -> Result<Box<dyn Vm>, String> {
            self.log.borrow_mut().created += 1;
            if self.fail {
                return Err("no KVM here".into());
            }
            Ok(Box::new(FakeVm {
                evt: EventFd::new(libc::EFD_NONBLOCK).unwrap(),
                queue: VecDeque::new(),
                esb,
                script: self.script,
                log: self.log.clone(),
                reset_asked: false,
                done_at: None,
            }))
        }
    }

    fn config(strategy: RunStrategy, action: WatchdogAction) -> RunConfig {
        RunConfig {
            vm_name: "testvm".into(),
            strategy,
            watchdog: Some(("mywatchdog".into(), action)),
            liveness_action: LivenessAction::Stop,
            grace_period: Duration::from_millis(50),
            probes: Vec::new(),
            probe_addresses: vec!["127.0.0.1".parse().unwrap()],
            agent: AgentSpec::None,
            max_restarts: None,
            // A bound on every test: none may run longer than this.
            run_for: Some(Duration::from_secs(5)),
            backoff: Duration::from_millis(10),
            handle_signals: false,
            ops: OpsConfig::default(),
            realtime_priority: None,
        }
    }

    fn run_fake(cfg: RunConfig, script: Script) -> (Outcome, Vec<Event>, Log) {
        let log = Rc::new(RefCell::new(Log::default()));
        let mut factory = FakeFactory {
            script,
            fail: false,
            log: log.clone(),
        };
        let mut events = Vec::new();
        let outcome = run(cfg, &mut factory, &mut events);
        let log = std::mem::take(&mut *log.borrow_mut());
        (outcome, events, log)
    }

    fn kinds(events: &[Event]) -> Vec<String> {
        events
            .iter()
            .filter(|e| {
                !matches!(
                    e,
                    Event::Console { .. } | Event::Info { .. } | Event::Summary(_)
                )
            })
            .map(|e| match e {
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
                other => format!("{other:?}"),
            })
            .collect()
    }

    const ARMED: Script = Script {
        arm_watchdog: true,
        ignore_shutdown: false,
        poweroff_at_boot: false,
        error_at_boot: false,
        reset_at_first_boot: false,
        fail_start: false,
        slow_confirm: false,
    };

    #[test]
    fn poweroff_once_stops_and_ends() {
        let (outcome, events, log) =
            run_fake(config(RunStrategy::Once, WatchdogAction::Poweroff), ARMED);
        assert_eq!(
            kinds(&events),
            [
                "started 1",
                "watchdog poweroff mywatchdog",
                "stopped watchdog Some(Watchdog) None",
                "finished 0"
            ]
        );
        assert_eq!(
            outcome.ending,
            Ending::NoRestart(RunStrategy::Once, StopReason::Watchdog)
        );
        assert_eq!(outcome.exit_code, 0);
        assert_eq!(log.created, 1);
        assert_eq!(log.calls, ["start", "stop"]);
    }

    #[test]
    fn poweroff_always_restarts_up_to_max_restarts() {
        let mut cfg = config(RunStrategy::Always, WatchdogAction::Poweroff);
        cfg.max_restarts = Some(2);
        let (outcome, events, log) = run_fake(cfg, ARMED);
        assert_eq!(
            kinds(&events),
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
        assert_eq!(outcome.ending, Ending::MaxRestarts(2));
        assert_eq!((outcome.boots, outcome.restarts), (3, 2));
        assert_eq!(log.created, 3);
        // Back-off doubles: 10 ms then 20 ms.
        let delays: Vec<u64> = events
            .iter()
            .filter_map(|e| match e {
                Event::Restart { delay_ms, .. } => Some(*delay_ms),
                _ => None,
            })
            .collect();
        assert_eq!(delays, [10, 20]);
        // Every restart is a fresh VM: the watchdog's timeout flag was cleared.
        let boots: Vec<&str> = events
            .iter()
            .filter_map(|e| match e {
                Event::Console { line } => Some(line.as_str()),
                _ => None,
            })
            .collect();
        assert_eq!(boots, ["fake: boot, timeout flag 0"; 3]);
    }

    #[test]
    fn reset_boots_again_with_the_flag_kept_until_run_for() {
        let mut cfg = config(RunStrategy::Always, WatchdogAction::Reset);
        cfg.run_for = Some(Duration::from_millis(300));
        let started = Instant::now();
        let (outcome, events, log) = run_fake(cfg, ARMED);
        assert!(started.elapsed() < Duration::from_secs(3));
        assert_eq!(outcome.ending, Ending::RunFor);
        assert_eq!(outcome.exit_code, 0);
        let boots: Vec<u32> = events
            .iter()
            .filter_map(|e| match e {
                Event::Started { boot } => Some(*boot),
                _ => None,
            })
            .collect();
        assert!(boots.len() >= 3, "several warm resets in 300 ms: {boots:?}");
        assert_eq!(boots, (1..=boots.len() as u32).collect::<Vec<_>>());
        let lines: Vec<&str> = events
            .iter()
            .filter_map(|e| match e {
                Event::Console { line } => Some(line.as_str()),
                _ => None,
            })
            .collect();
        assert_eq!(lines[0], "fake: boot, timeout flag 0");
        assert_eq!(
            lines[1], "fake: boot, timeout flag 1",
            "warm reset keeps the flag"
        );
        let last_stop = events
            .iter()
            .rev()
            .find(|e| matches!(e, Event::Stopped { .. }))
            .unwrap();
        assert_eq!(
            *last_stop,
            Event::Stopped {
                reason: StopReason::Runtime,
                trigger: None,
                forced: None
            }
        );
        assert_eq!(log.created, 1, "warm resets keep the VM");
        assert_eq!(log.calls.last(), Some(&"stop"));
    }

    #[test]
    fn graceful_shutdown_does_not_rerun() {
        let (outcome, events, log) = run_fake(
            config(RunStrategy::RerunOnFailure, WatchdogAction::Shutdown),
            ARMED,
        );
        assert_eq!(
            kinds(&events),
            [
                "started 1",
                "watchdog shutdown mywatchdog",
                "stopped shutdown Some(Watchdog) Some(false)",
                "finished 0"
            ]
        );
        assert_eq!(
            outcome.ending,
            Ending::NoRestart(RunStrategy::RerunOnFailure, StopReason::Shutdown)
        );
        assert_eq!(log.calls, ["start", "power_button", "stop"]);
    }

    #[test]
    fn forced_shutdown_after_the_grace_period_reruns() {
        let mut cfg = config(RunStrategy::RerunOnFailure, WatchdogAction::Shutdown);
        cfg.max_restarts = Some(1);
        let script = Script {
            ignore_shutdown: true,
            ..ARMED
        };
        let started = Instant::now();
        let (outcome, events, _) = run_fake(cfg, script);
        assert_eq!(
            kinds(&events),
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
        assert_eq!(outcome.ending, Ending::MaxRestarts(1));
        // Two grace periods of 50 ms were waited for.
        assert!(started.elapsed() >= Duration::from_millis(100));
    }

    #[test]
    fn inject_nmi_and_none_keep_the_vm_running() {
        for (action, nmi) in [
            (WatchdogAction::InjectNmi, true),
            (WatchdogAction::None, false),
        ] {
            let mut cfg = config(RunStrategy::Once, action);
            cfg.run_for = Some(Duration::from_millis(100));
            let (outcome, events, log) = run_fake(cfg, ARMED);
            assert_eq!(outcome.ending, Ending::RunFor, "{action}");
            let nmis = events
                .iter()
                .filter(|e| matches!(e, Event::Console { line } if line == "guest: NMI received"))
                .count();
            assert_eq!(nmis > 0, nmi, "{action}");
            assert_eq!(log.calls.contains(&"inject_nmi"), nmi);
            // The watchdog fires once: the fake guest arms it only at boot.
            let fired = events
                .iter()
                .filter(|e| matches!(e, Event::Watchdog { .. }))
                .count();
            assert_eq!(fired, 1, "{action}");
            assert_eq!(log.created, 1);
        }
    }

    #[test]
    fn watchdog_events_say_how_late_the_action_was_carried_out() {
        for action in [
            WatchdogAction::Reset,
            WatchdogAction::Poweroff,
            WatchdogAction::InjectNmi,
            WatchdogAction::None,
        ] {
            let mut cfg = config(RunStrategy::Once, action);
            cfg.run_for = Some(Duration::from_millis(200));
            let started = Instant::now();
            let (_, events, _) = run_fake(cfg, ARMED);
            let elapsed = started.elapsed();
            let late: Vec<u64> = events
                .iter()
                .filter_map(|e| match e {
                    Event::Watchdog { late_us, .. } => Some(late_us.expect("late_ms is filled in")),
                    _ => None,
                })
                .collect();
            assert!(!late.is_empty(), "{action}: {events:?}");
            // Never later than the whole run; a fake VM carries its actions out at once.
            let bound = u64::try_from(elapsed.as_micros()).unwrap();
            assert!(late.iter().all(|&us| us < bound), "{action}: {late:?}");
            // The event still comes before what the action caused.
            let first = |f: &dyn Fn(&Event) -> bool| events.iter().position(f);
            let fired = first(&|e| matches!(e, Event::Watchdog { .. })).unwrap();
            let after = match action {
                WatchdogAction::Reset => first(&|e| matches!(e, Event::Started { boot: 2 })),
                WatchdogAction::Poweroff => first(&|e| matches!(e, Event::Stopped { .. })),
                _ => first(
                    &|e| matches!(e, Event::Console { line } if line == "guest: NMI received"),
                )
                .or(Some(usize::MAX)),
            }
            .unwrap();
            assert!(fired < after, "{action}: {events:?}");
        }
    }

    #[test]
    fn lateness_runs_to_when_the_vm_says_the_action_was_done() {
        let mut cfg = config(RunStrategy::Once, WatchdogAction::Reset);
        cfg.run_for = Some(Duration::from_millis(150));
        let script = Script {
            slow_confirm: true,
            ..ARMED
        };
        let (_, events, _) = run_fake(cfg, script);
        let late: Vec<u64> = events
            .iter()
            .filter_map(|e| match e {
                Event::Watchdog { late_us, .. } => *late_us,
                _ => None,
            })
            .collect();
        assert!(!late.is_empty(), "{events:?}");
        // The reset returned 50 ms after it was done: none of that is the first expiry's
        // lateness. (The next expiries come due while the loop sleeps in that reset, so
        // their lateness is real.)
        assert!(late[0] < 40_000, "{late:?}");
    }

    #[test]
    fn the_lateness_histogram_follows_the_watchdog_events() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("api.sock");
        let mut cfg = config(RunStrategy::Always, WatchdogAction::Reset);
        cfg.ops.api_socket = Some(socket.clone());
        cfg.run_for = Some(Duration::from_secs(4));
        let client = std::thread::spawn(move || {
            let end = Instant::now() + Duration::from_secs(3);
            loop {
                if let Ok(_s) = UnixStream::connect(&socket) {
                    let (_, status) = http(&socket, "GET", "/status");
                    let v: serde_json::Value = serde_json::from_str(&status).unwrap();
                    if v["boots"].as_u64().unwrap_or(0) >= 3 {
                        break;
                    }
                }
                assert!(Instant::now() < end, "no resets");
                std::thread::sleep(Duration::from_millis(5));
            }
            let (_, metrics) = http(&socket, "GET", "/metrics");
            let (code, _) = http(&socket, "PUT", "/vm/stop");
            assert_eq!(code, 204);
            metrics
        });
        let (_, events, _) = run_fake(cfg, ARMED);
        let metrics = client.join().unwrap();
        let count = metrics
            .lines()
            .find(|l| {
                l.starts_with("vmpulse_watchdog_action_lateness_seconds_count")
                    && l.contains("action=\"reset\"")
            })
            .and_then(|l| l.rsplit_once(' '))
            .map(|(_, v)| v.parse::<f64>().unwrap())
            .unwrap_or_else(|| panic!("no lateness histogram: {metrics}"));
        assert!(count >= 2.0, "{metrics}");
        let fired = events
            .iter()
            .filter(|e| matches!(e, Event::Watchdog { .. }))
            .count();
        assert!(count <= fired as f64);
    }

    #[test]
    fn pause_freezes_until_run_for() {
        let mut cfg = config(RunStrategy::Always, WatchdogAction::Pause);
        cfg.run_for = Some(Duration::from_millis(100));
        let (outcome, events, log) = run_fake(cfg, ARMED);
        assert_eq!(outcome.ending, Ending::RunFor);
        assert_eq!(log.calls, ["start", "pause", "stop"]);
        assert_eq!(
            kinds(&events),
            [
                "started 1",
                "watchdog pause mywatchdog",
                "stopped runtime None None",
                "finished 0"
            ]
        );
    }

    #[test]
    fn guest_poweroff_is_not_a_failure() {
        let script = Script {
            poweroff_at_boot: true,
            ..Script::default()
        };
        let (outcome, events, _) = run_fake(
            config(RunStrategy::RerunOnFailure, WatchdogAction::Reset),
            script,
        );
        assert_eq!(
            kinds(&events),
            ["started 1", "stopped guest None None", "finished 0"]
        );
        assert_eq!(outcome.exit_code, 0);
        let mut cfg = config(RunStrategy::Always, WatchdogAction::Reset);
        cfg.max_restarts = Some(1);
        let (outcome, events, _) = run_fake(cfg, script);
        assert_eq!(
            kinds(&events),
            [
                "started 1",
                "stopped guest None None",
                "restart 1",
                "started 2",
                "stopped guest None None",
                "finished 0"
            ]
        );
        assert_eq!(outcome.ending, Ending::MaxRestarts(1));
    }

    #[test]
    fn halted_never_creates_a_vm() {
        let (outcome, events, log) =
            run_fake(config(RunStrategy::Halted, WatchdogAction::Reset), ARMED);
        assert_eq!(outcome.ending, Ending::Halted);
        assert_eq!(outcome.exit_code, 0);
        assert_eq!(log.created, 0);
        assert_eq!(kinds(&events), ["finished 0"]);
    }

    #[test]
    fn errors_make_the_exit_code_one() {
        let log = Rc::new(RefCell::new(Log::default()));
        let mut factory = FakeFactory {
            script: ARMED,
            fail: true,
            log,
        };
        let mut events = Vec::new();
        let outcome = run(
            config(RunStrategy::Always, WatchdogAction::Reset),
            &mut factory,
            &mut events,
        );
        assert!(matches!(outcome.ending, Ending::Fatal(ref m) if m.contains("no KVM here")));
        assert_eq!(outcome.exit_code, 1);
        assert_eq!(kinds(&events), ["error", "finished 1"]);

        let script = Script {
            error_at_boot: true,
            ..Script::default()
        };
        let (outcome, events, _) =
            run_fake(config(RunStrategy::Once, WatchdogAction::Reset), script);
        assert_eq!(
            kinds(&events),
            [
                "started 1",
                "error",
                "stopped error None None",
                "finished 1"
            ]
        );
        assert_eq!(outcome.exit_code, 1);
    }

    fn refused_tcp_liveness() -> ProbeConfig {
        // A port nobody listens on: every attempt is refused at once.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let handler = vmpulse_probes::config::ProbeHandler::tcp_socket(port);
        ProbeConfig::builder(vmpulse_probes::config::ProbeKind::Liveness, handler)
            .period(Duration::from_secs(1))
            .failure_threshold(1)
            .build()
            .unwrap()
    }

    #[test]
    fn liveness_failure_stops_the_vm_through_the_router() {
        let mut cfg = config(RunStrategy::RerunOnFailure, WatchdogAction::Reset);
        // A readiness probe on the same refused port completes in the same round.
        let liveness = refused_tcp_liveness();
        let readiness = ProbeConfig::builder(
            vmpulse_probes::config::ProbeKind::Readiness,
            liveness.handler().clone(),
        )
        .period(Duration::from_secs(1))
        .failure_threshold(3)
        .build()
        .unwrap();
        cfg.probes = vec![liveness, readiness];
        cfg.max_restarts = Some(1);
        let (outcome, events, log) = run_fake(cfg, Script::default());
        let story: Vec<String> = kinds(&events)
            .into_iter()
            .filter(|k| !k.starts_with("Probe") && !k.starts_with("Ready"))
            .collect();
        assert_eq!(
            story,
            [
                "started 1",
                "Liveness { action: \"stop\", message: \"connect: Connection refused\", failures: Some(1) }",
                "stopped liveness Some(Liveness) None",
                "restart 1",
                "started 2",
                "Liveness { action: \"stop\", message: \"connect: Connection refused\", failures: Some(1) }",
                "stopped liveness Some(Liveness) None",
                "finished 0"
            ]
        );
        assert_eq!(outcome.ending, Ending::MaxRestarts(1));
        assert_eq!(log.created, 2);
        // No attempt is reported after the stop it caused.
        let stop = events
            .iter()
            .position(|e| matches!(e, Event::Stopped { .. }))
            .unwrap();
        assert!(!matches!(events[stop + 1], Event::Probe { .. }));
        let attempts = events
            .iter()
            .filter(|e| matches!(e, Event::Probe { probe, result, .. } if probe == "liveness" && result == "failure"))
            .count();
        assert_eq!(attempts, 2);
    }

    #[test]
    fn liveness_resets_are_rate_limited_by_the_back_off() {
        let mut cfg = config(RunStrategy::Once, WatchdogAction::Reset);
        cfg.probes = vec![refused_tcp_liveness()];
        cfg.liveness_action = LivenessAction::Reset;
        cfg.backoff = Duration::from_millis(200);
        cfg.run_for = Some(Duration::from_millis(1500));
        let (outcome, events, log) = run_fake(cfg, Script::default());
        assert_eq!(outcome.ending, Ending::RunFor);
        // Resets at about 0, 0.2, 0.6 and 1.4 s: the probe fails at once after each.
        let boots = events
            .iter()
            .filter(|e| matches!(e, Event::Started { .. }))
            .count();
        assert!((4..=6).contains(&boots), "{boots} boots: {events:?}");
        assert_eq!(log.created, 1, "warm resets keep the VM");
        assert!(!events.iter().any(
            |e| matches!(e, Event::Stopped { reason, .. } if *reason == StopReason::Liveness)
        ));
    }

    #[test]
    fn a_guest_reset_request_reboots_in_place() {
        let mut cfg = config(RunStrategy::Once, WatchdogAction::Poweroff);
        cfg.run_for = Some(Duration::from_millis(100));
        let script = Script {
            reset_at_first_boot: true,
            ..Script::default()
        };
        let (outcome, events, log) = run_fake(cfg, script);
        assert_eq!(
            kinds(&events),
            [
                "started 1",
                "started 2",
                "stopped runtime None None",
                "finished 0"
            ]
        );
        assert_eq!(log.calls, ["start", "reset", "stop"]);
        assert_eq!(outcome.boots, 2);
    }

    #[test]
    fn a_vm_that_cannot_start_is_stopped_and_ends_the_run() {
        let script = Script {
            fail_start: true,
            ..Script::default()
        };
        let (outcome, events, log) =
            run_fake(config(RunStrategy::Always, WatchdogAction::Reset), script);
        assert_eq!(kinds(&events), ["error", "finished 1"]);
        assert!(
            matches!(outcome.ending, Ending::Fatal(ref m) if m == "cannot start the VM: KVM_RUN refused")
        );
        assert_eq!(log.calls, ["start", "stop"]);
    }

    #[test]
    fn the_summary_comes_just_before_finished_and_the_phase_can_set_the_exit_code() {
        for (flag, code) in [(false, 0), (true, EXIT_FAILED_PHASE)] {
            let mut cfg = config(RunStrategy::Once, WatchdogAction::Poweroff);
            cfg.ops.exit_code_from_phase = flag;
            let (outcome, events, _) = run_fake(cfg, ARMED);
            assert_eq!(outcome.exit_code, code);
            let n = events.len();
            let Event::Summary(summary) = &events[n - 2] else {
                panic!("no summary before finished: {events:?}");
            };
            assert_eq!(summary.phase, FinalPhase::Failed);
            assert_eq!(summary.watchdog_expiries["poweroff"], 1);
            assert_eq!((summary.boots, summary.restarts), (1, 0));
            assert!(
                matches!(events[n - 1], Event::Finished { exit_code, .. } if exit_code == code)
            );
        }
        // A guest that powers itself off succeeds: exit code 0 even with the flag.
        let mut cfg = config(RunStrategy::Once, WatchdogAction::Poweroff);
        cfg.ops.exit_code_from_phase = true;
        let script = Script {
            poweroff_at_boot: true,
            ..Script::default()
        };
        let (outcome, events, _) = run_fake(cfg, script);
        assert_eq!(outcome.exit_code, 0);
        assert!(events
            .iter()
            .any(|e| matches!(e, Event::Summary(s) if s.phase == FinalPhase::Succeeded)));
    }

    /// One request on the API socket; the status code and body.
    fn http(path: &std::path::Path, method: &str, target: &str) -> (u16, String) {
        use std::io::{Read, Write};
        let mut s = UnixStream::connect(path).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        write!(s, "{method} {target} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        let mut answer = String::new();
        s.read_to_string(&mut answer).unwrap();
        let code = answer[9..12].parse().unwrap();
        let body = answer.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
        (code, body)
    }

    #[test]
    fn api_requests_go_through_the_router() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("api.sock");
        let mut cfg = config(RunStrategy::Always, WatchdogAction::Reset);
        cfg.ops.api_socket = Some(socket.clone());
        let client = std::thread::spawn(move || {
            let end = Instant::now() + Duration::from_secs(4);
            while UnixStream::connect(&socket).is_err() {
                assert!(Instant::now() < end, "no API socket");
                std::thread::sleep(Duration::from_millis(5));
            }
            let mut seen = Vec::new();
            let (_, body) = http(&socket, "GET", "/status");
            let v: serde_json::Value = serde_json::from_str(&body).unwrap();
            seen.push(format!("{} {} {}", v["vm"], v["phase"], v["paused"]));
            for action in ["pause", "resume", "pause", "reset"] {
                let (code, _) = http(&socket, "PUT", &format!("/vm/{action}"));
                let (_, body) = http(&socket, "GET", "/status");
                let v: serde_json::Value = serde_json::from_str(&body).unwrap();
                seen.push(format!("{action} {code} {} {}", v["paused"], v["boots"]));
            }
            let (code, _) = http(&socket, "PUT", "/vm/stop");
            seen.push(format!("stop {code}"));
            seen
        });
        let (outcome, events, log) = run_fake(cfg, Script::default());
        let seen = client.join().unwrap();
        assert_eq!(
            seen,
            [
                "\"testvm\" \"Running\" false",
                "pause 204 true 1",
                "resume 204 false 1",
                "pause 204 true 1",
                "reset 204 false 2",
                "stop 204"
            ]
        );
        // A reset of a paused VM resumes it first, so that the guest boots again.
        assert_eq!(
            log.calls,
            ["start", "pause", "resume", "pause", "resume", "reset", "stop"]
        );
        // Stopped through the API: runStrategy Always does not restart it.
        assert_eq!(
            outcome.ending,
            Ending::NoRestart(RunStrategy::Always, StopReason::Api)
        );
        assert!(events.contains(&Event::Stopped {
            reason: StopReason::Api,
            trigger: Some(Cause::Api),
            forced: None
        }));
    }

    #[test]
    fn an_api_shutdown_is_answered_once_the_vm_is_off() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("api.sock");
        let mut cfg = config(RunStrategy::Always, WatchdogAction::Reset);
        cfg.ops.api_socket = Some(socket.clone());
        cfg.grace_period = Duration::from_millis(300);
        let client = std::thread::spawn(move || {
            let end = Instant::now() + Duration::from_secs(4);
            while UnixStream::connect(&socket).is_err() {
                assert!(Instant::now() < end, "no API socket");
                std::thread::sleep(Duration::from_millis(5));
            }
            let asked = Instant::now();
            let (code, _) = http(&socket, "PUT", "/vm/shutdown");
            (code, asked.elapsed())
        });
        // The guest ignores the power button: the VM is forced off after the grace period.
        let script = Script {
            ignore_shutdown: true,
            ..Script::default()
        };
        let (outcome, events, _) = run_fake(cfg, script);
        let (code, waited) = client.join().unwrap();
        assert_eq!(code, 204);
        assert!(
            waited >= Duration::from_millis(290),
            "answered after {waited:?}"
        );
        assert!(events.contains(&Event::Stopped {
            reason: StopReason::Shutdown,
            trigger: Some(Cause::Api),
            forced: Some(true)
        }));
        assert_eq!(
            outcome.ending,
            Ending::NoRestart(RunStrategy::Always, StopReason::Shutdown)
        );
    }
}
