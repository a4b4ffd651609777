//! The event loop of `vmpulse run`: one epoll loop in the calling thread.
//!
//! One [`event_manager::EventManager`] watches, in the calling thread:
//! - the machine's event fd (console lines, guest poweroff/reset, vCPU errors);
//! - the watchdog's timerfd, through the device crate's
//!   [`WatchdogTimer`] subscriber (armed at the device's deadline; the device itself
//!   tells it when a guest access, a reset, a pause or a resume moves the deadline
//!   earlier, so the loop never services the watchdog by hand);
//! - the probes' inner epoll fd ([`ProbeSet::fd`]);
//! - three timerfds of the runner: the shutdown grace period, the restart back-off and
//!   `--run-for`.
//!
//! No thread sleeps: the only other thread is the machine's vCPU thread (KVM_RUN blocks).
//! Subscribers only record what became ready; after every `run()` of the manager the loop
//! dispatches with full access to its state: machine events first, then watchdog expiries,
//! then probe results, then timers. Watchdog expiries and liveness failures both go through
//! [`router::route`](super::router::route), and stops through
//! [`RestartPolicy`].
//!
//! The machine sits behind the small [`Vm`] trait (implemented by
//! [`Machine`]), so the loop is tested here with a fake VM that
//! drives a real i6300esb model on a real timerfd, without KVM.
//!
//! Every start of the VM (first start and runStrategy restarts) is a new VM, as a new VMI
//! is in KubeVirt: the watchdog gets a power-on reset (its timeout flag cleared) and the
//! probes a new schedule. A warm reset (watchdog or liveness `reset`, or the guest's own
//! reboot) keeps the VM and the watchdog's timeout flag, and restarts the probes' schedule
//! (`initialDelaySeconds` counts from every boot). A paused VM is not probed and not ready.
//! After a liveness-triggered reset the probes resume only after the restart back-off
//! (1 s, doubling, as for restarts; a fourth timerfd), so a probe that fails at once cannot
//! reset the VM in a tight loop.
//!
//! With [`OpsConfig`]'s API socket or metrics address, the [`HttpServer`] is one more
//! subscriber of the same manager; its requests are answered after each dispatch
//! ([`api::answer`]), and `PUT /vm/...` goes through the router as
//! [`Trigger::Api`]. Every event passes through a [`RunStatus`] on its way to the sink,
//! which keeps the status, the metrics and the end-of-run `summary`.

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
use i6300esb::{ActionSink, EventCounters, Expiry, I6300Esb, WatchdogAction};
use vmm_sys_util::timerfd::TimerFd;

use super::api::{self, CommandError, Control, HttpServer, OpsConfig};
use super::events::{Cause, Event, EventSink, FinalPhase, StopReason};
use super::machine::{Machine, MachineEvent, SharedEsb};
use super::router::{liveness_action_name, route, ApiAction, Decision, Trigger};
use super::status::{RunStatus, StatusDoc, WatchdogLive};
use super::strategy::{exit_code, starts, AfterStop, Backoff, Ending, RestartPolicy, Stop};
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
    /// The exit code ([`exit_code`]; 3 instead of 0 when [`OpsConfig::exit_code_from_phase`]
    /// is set and the final phase is `Failed`).
    pub exit_code: u8,
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

// Tokens of the runner's own fds.
const TOKEN_MACHINE: u32 = 1;
const TOKEN_PROBES: u32 = 2;
const TOKEN_GRACE: u32 = 3;
const TOKEN_BACKOFF: u32 = 4;
const TOKEN_RUN_FOR: u32 = 5;
const TOKEN_PROBE_RESUME: u32 = 6;
const TOKEN_SIGINT: u32 = 7;
const TOKEN_SIGTERM: u32 = 8;

/// SIGINT and SIGTERM turned into readable sockets for the loop (signal-hook's self-pipe),
/// registered for the run only.
struct Interrupts {
    /// (signal, token, read end).
    pipes: Vec<(i32, u32, UnixStream)>,
    ids: Vec<signal_hook::SigId>,
}

impl Interrupts {
    fn register() -> io::Result<Self> {
        let mut out = Interrupts {
            pipes: Vec::new(),
            ids: Vec::new(),
        };
        for (sig, token) in [
            (signal_hook::consts::SIGINT, TOKEN_SIGINT),
            (signal_hook::consts::SIGTERM, TOKEN_SIGTERM),
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
    fn take(&mut self, token: u32) -> Option<i32> {
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
    ready: Rc<RefCell<Vec<u32>>>,
}

impl MutEventSubscriber for ReadyFds {
    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        self.ready.borrow_mut().push(events.data());
    }
    fn init(&mut self, _ops: &mut EventOps) {}
}

/// Queues watchdog expiries for the loop.
struct ExpiryQueue(Rc<RefCell<Vec<Expiry>>>);

impl ActionSink for ExpiryQueue {
    fn watchdog_expired(&mut self, expiry: Expiry) {
        self.0.borrow_mut().push(expiry);
    }
}

type Subscriber = Rc<RefCell<dyn MutEventSubscriber>>;
type EsbTimer = WatchdogTimer<MonotonicClock, Arc<EventCounters>, ExpiryQueue>;

/// The runner's own timers.
struct Timers {
    grace: Deadline,
    backoff: Deadline,
    run_for: Deadline,
    probe_resume: Deadline,
}

/// A one-shot timerfd with its deadline remembered, so the loop never reads a timerfd that
/// might have been disarmed (a read would block): a ready token whose deadline is not set
/// or not reached is stale and ignored.
struct Deadline {
    fd: TimerFd,
    at: Option<Instant>,
}

impl Deadline {
    fn new() -> io::Result<Self> {
        Ok(Deadline {
            fd: TimerFd::new()?,
            at: None,
        })
    }
    fn arm(&mut self, after: Duration) -> io::Result<()> {
        self.at = Some(Instant::now() + after);
        // A zero duration would disarm a timerfd; one nanosecond fires at once.
        self.fd.reset(after.max(Duration::from_nanos(1)), None)?;
        Ok(())
    }
    fn disarm(&mut self) {
        self.at = None;
        // Disarming also drops a pending expiration, so the fd stops being readable.
        if let Err(e) = self.fd.clear() {
            log::warn!("cannot disarm a timer: {e}");
        }
    }
    /// Whether the deadline has passed; if so it is consumed (disarmed).
    fn take_if_due(&mut self) -> bool {
        match self.at {
            Some(at) if Instant::now() >= at => {
                self.disarm();
                true
            }
            Some(_) => false,
            None => {
                // Stale readiness: make sure the fd is quiet.
                self.disarm();
                false
            }
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// The VM runs.
    Running,
    /// A shutdown was requested; the grace timer runs.
    ShuttingDown(Cause),
    /// The VM is paused (watchdog `pause`).
    Paused,
    /// The VM is stopped; a restart waits for the back-off timer.
    BackingOff { count: u32 },
}

/// Counts errors and keeps the status on the events' way to the real sink.
struct Out<'s, S: EventSink> {
    sink: &'s mut S,
    errors: u32,
    /// Boxed: large, and carried through `Runner::new`'s error path.
    status: Box<RunStatus>,
}

impl<S: EventSink> Out<'_, S> {
    fn emit(&mut self, mut event: Event) {
        if let Event::Error { message } = &event {
            self.errors += 1;
            log::debug!("error event: {message}");
        }
        self.status.observe(&mut event, Instant::now());
        self.sink.emit(event);
    }
    fn error(&mut self, message: String) {
        self.emit(Event::Error { message });
    }
}

/// The whole run's state.
struct Runner<'a, F: VmFactory, S: EventSink> {
    cfg: RunConfig,
    factory: &'a mut F,
    out: Out<'a, S>,
    manager: EventManager<Subscriber>,
    fds_id: SubscriberId,
    ready: Rc<RefCell<Vec<u32>>>,
    expiries: Rc<RefCell<Vec<Expiry>>>,
    esb: SharedEsb,
    grace: Deadline,
    backoff: Deadline,
    run_for: Deadline,
    /// Resumes the probes after a liveness-triggered reset, after a back-off.
    probe_resume: Deadline,
    /// Back-off of liveness-triggered resets, so that a probe failing at once cannot
    /// reset the VM in a tight loop.
    liveness_backoff: Backoff,
    last_liveness_reset: Option<Instant>,
    /// The probes were (re)started outside their fd's readiness: process them before
    /// blocking again.
    probes_due: bool,
    vm: Option<Box<dyn Vm>>,
    vm_fd: Option<RawFd>,
    probes: Option<ProbeSet>,
    probes_fd: Option<RawFd>,
    phase: Phase,
    policy: RestartPolicy,
    boots: u32,
    run_started: Instant,
    ending: Option<Ending>,
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
    };
    if !starts(cfg.strategy) {
        out.emit(Event::Info {
            message: "runStrategy Halted: the VM is not started".into(),
        });
        return finish(out, Ending::Halted, 0, 0);
    }
    let runner = match Runner::new(cfg, factory, out) {
        Ok(r) => r,
        Err((mut out, e)) => {
            let message = e.to_string();
            out.error(message.clone());
            return finish(out, Ending::Fatal(message), 0, 0);
        }
    };
    runner.run()
}

fn finish<S: EventSink>(mut out: Out<'_, S>, ending: Ending, boots: u32, restarts: u32) -> Outcome {
    let summary = out.status.summary(&ending, Instant::now());
    let failed = summary.phase == FinalPhase::Failed;
    out.emit(Event::Summary(summary));
    let mut code = exit_code(&ending, out.errors);
    if code == 0 && failed && out.status.exit_code_from_phase {
        code = EXIT_FAILED_PHASE;
    }
    out.emit(Event::Finished {
        exit_code: code,
        message: ending.message(),
    });
    Outcome {
        ending,
        errors: out.errors,
        boots,
        restarts,
        exit_code: code,
    }
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
            let esb: SharedEsb = Arc::new(Mutex::new(I6300Esb::with_events(
                action,
                MonotonicClock::new(),
                Arc::new(EventCounters::default()),
            )));
            let expiries = Rc::new(RefCell::new(Vec::new()));
            // Its constructor installs the device's deadline listener: from here on the
            // timer follows the device with no help from this loop.
            let esb_timer: Rc<RefCell<EsbTimer>> = Rc::new(RefCell::new(WatchdogTimer::new(
                esb.clone(),
                ExpiryQueue(expiries.clone()),
            )?));
            let ready = Rc::new(RefCell::new(Vec::new()));
            let mut manager: EventManager<Subscriber> = EventManager::new().map_err(em_err)?;
            manager.add_subscriber(esb_timer.clone());
            let fds_id = manager.add_subscriber(Rc::new(RefCell::new(ReadyFds {
                ready: ready.clone(),
            })));
            let grace = Deadline::new()?;
            let backoff = Deadline::new()?;
            let run_for = Deadline::new()?;
            let probe_resume = Deadline::new()?;
            {
                let mut ops = manager.event_ops(fds_id).map_err(em_err)?;
                for (fd, token) in [
                    (grace.fd.as_raw_fd(), TOKEN_GRACE),
                    (backoff.fd.as_raw_fd(), TOKEN_BACKOFF),
                    (run_for.fd.as_raw_fd(), TOKEN_RUN_FOR),
                    (probe_resume.fd.as_raw_fd(), TOKEN_PROBE_RESUME),
                ] {
                    ops.add(Events::with_data_raw(fd, token, EventSet::IN))
                        .map_err(em_err)?;
                }
            }
            let timers = Timers {
                grace,
                backoff,
                run_for,
                probe_resume,
            };
            let interrupts = if cfg.handle_signals {
                let interrupts = Interrupts::register()?;
                let mut ops = manager.event_ops(fds_id).map_err(em_err)?;
                for (_, token, rx) in &interrupts.pipes {
                    ops.add(Events::with_data_raw(rx.as_raw_fd(), *token, EventSet::IN))
                        .map_err(em_err)?;
                }
                Some(interrupts)
            } else {
                None
            };
            Ok((esb, expiries, ready, manager, fds_id, timers, interrupts))
        })();
        let (esb, expiries, ready, manager, fds_id, timers, interrupts) = match parts {
            Ok(p) => p,
            Err(e) => return Err((out, e)),
        };
        let (mut manager, mut api) = (manager, None);
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
        let policy = RestartPolicy::new(cfg.strategy, cfg.max_restarts, Backoff::new(cfg.backoff));
        let cfg_backoff = cfg.backoff;
        Ok(Runner {
            cfg,
            factory,
            out,
            manager,
            fds_id,
            ready,
            expiries,
            esb,
            grace: timers.grace,
            backoff: timers.backoff,
            run_for: timers.run_for,
            probe_resume: timers.probe_resume,
            liveness_backoff: Backoff::new(cfg_backoff),
            last_liveness_reset: None,
            probes_due: false,
            vm: None,
            vm_fd: None,
            probes: None,
            probes_fd: None,
            phase: Phase::Running,
            policy,
            boots: 0,
            run_started: Instant::now(),
            ending: None,
            interrupts,
            api,
            held: Vec::new(),
        })
    }

    fn run(mut self) -> Outcome {
        if let Some(limit) = self.cfg.run_for {
            if let Err(e) = self.run_for.arm(limit) {
                self.fatal(format!("cannot arm the --run-for timer: {e}"));
            }
        }
        if self.ending.is_none() {
            self.start_vm();
        }
        while self.ending.is_none() {
            if std::mem::take(&mut self.probes_due) {
                // Handled here, not where the probes were started, so that an action they
                // trigger never recurses into the code that started them.
                self.probe_events();
                continue;
            }
            if !self.expiries.borrow().is_empty() {
                // Left over by a dispatch that stopped early: handle it before waiting.
                self.dispatch();
                continue;
            }
            if let Err(e) = self.manager.run() {
                self.fatal(format!("event loop: {e}"));
                break;
            }
            self.dispatch();
            self.serve_requests();
        }
        // Answer what is still waiting (a shutdown that ended the run, among others).
        self.serve_requests();
        // Whatever ended the run, leave nothing running.
        if let Some(mut vm) = self.take_vm() {
            vm.stop();
        }
        let ending = self
            .ending
            .take()
            .unwrap_or(Ending::Fatal("no ending".into()));
        let (boots, restarts) = (self.boots, self.policy.restarts());
        finish(self.out, ending, boots, restarts)
    }

    fn dispatch(&mut self) {
        let mut tokens = std::mem::take(&mut *self.ready.borrow_mut());
        // Handle each fd once per round, in a fixed order: the machine before the timers.
        tokens.sort_unstable();
        tokens.dedup();
        if tokens.contains(&TOKEN_MACHINE) {
            self.machine_events();
        }
        let expiries = std::mem::take(&mut *self.expiries.borrow_mut());
        for expiry in expiries {
            if self.ending.is_some() {
                return;
            }
            self.watchdog_expired(expiry);
        }
        for token in tokens {
            if self.ending.is_some() {
                return;
            }
            match token {
                TOKEN_PROBES => self.probe_events(),
                TOKEN_GRACE if self.grace.take_if_due() => self.grace_expired(),
                TOKEN_BACKOFF if self.backoff.take_if_due() => self.backoff_expired(),
                TOKEN_RUN_FOR if self.run_for.take_if_due() => self.run_for_expired(),
                TOKEN_PROBE_RESUME if self.probe_resume.take_if_due() => self.resume_probes(),
                TOKEN_SIGINT | TOKEN_SIGTERM => {
                    if let Some(sig) = self.interrupts.as_mut().and_then(|i| i.take(token)) {
                        self.interrupted(sig);
                    }
                }
                _ => {}
            }
        }
    }

    fn fatal(&mut self, message: String) {
        self.out.error(message.clone());
        self.ending = Some(Ending::Fatal(message));
    }

    fn watch(&mut self, fd: RawFd, token: u32) -> Result<(), String> {
        self.manager
            .event_ops(self.fds_id)
            .and_then(|mut ops| ops.add(Events::with_data_raw(fd, token, EventSet::IN)))
            .map_err(|e| format!("cannot watch fd {fd}: {e}"))
    }

    fn unwatch(&mut self, fd: RawFd, token: u32) {
        let removed = self
            .manager
            .event_ops(self.fds_id)
            .and_then(|mut ops| ops.remove(Events::with_data_raw(fd, token, EventSet::IN)));
        if let Err(e) = removed {
            log::warn!("cannot stop watching fd {fd}: {e}");
        }
    }

    // ---- starting and stopping --------------------------------------------------------

    fn start_vm(&mut self) {
        if let Err(message) = self.try_start_vm() {
            if let Some(mut vm) = self.take_vm() {
                vm.stop();
            }
            self.drop_probes();
            self.fatal(message);
        }
    }

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
        self.watch(fd, TOKEN_MACHINE)?;
        self.vm_fd = Some(fd);
        // Owned by the runner before it can fail, so a failure unregisters its fd first.
        let vm = self.vm.insert(vm);
        vm.start()
            .map_err(|e| format!("cannot start the VM: {e}"))?;
        self.phase = Phase::Running;
        self.run_started = Instant::now();
        self.boots += 1;
        self.out.emit(Event::Started { boot: self.boots });
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
            let mut probes = ProbeSet::new(self.cfg.probes.clone(), env)
                .map_err(|e| format!("cannot set up the probes: {e}"))?;
            let pfd = probes.fd();
            self.watch(pfd, TOKEN_PROBES)?;
            self.probes_fd = Some(pfd);
            probes.vm_started(self.run_started);
            self.probes = Some(probes);
            self.probes_due = true;
        }
        Ok(())
    }

    fn take_vm(&mut self) -> Option<Box<dyn Vm>> {
        if let Some(fd) = self.vm_fd.take() {
            self.unwatch(fd, TOKEN_MACHINE);
        }
        self.vm.take()
    }

    fn drop_probes(&mut self) {
        if let Some(mut probes) = self.probes.take() {
            let now = Instant::now();
            probes.vm_stopped(now);
            let events = probes.process(now);
            self.report_probe_events(events, false);
            if let Some(fd) = self.probes_fd.take() {
                self.unwatch(fd, TOKEN_PROBES);
            }
        }
    }

    /// The VM stopped (or is stopped now) for `stop`; apply runStrategy.
    fn stop_vm(&mut self, stop: Stop) {
        if let Some(mut vm) = self.take_vm() {
            vm.stop();
        }
        self.grace.disarm();
        self.probe_resume.disarm();
        // The device is powered off with the VM: no expiry may follow the stop (a
        // power-on reset drops those not yet polled; the queue holds those polled).
        self.esb
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .power_on_reset();
        self.expiries.borrow_mut().clear();
        self.out.emit(Event::Stopped {
            reason: stop.reason,
            trigger: stop.trigger,
            forced: stop.forced,
        });
        // Then the probes: the VM is not ready any more.
        self.drop_probes();
        let lasted = self.run_started.elapsed();
        match self.policy.after_stop(&stop, lasted) {
            AfterStop::Restart { count, delay } => {
                self.out.emit(Event::Restart {
                    count,
                    delay_ms: u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
                });
                self.phase = Phase::BackingOff { count };
                if let Err(e) = self.backoff.arm(delay) {
                    self.fatal(format!("cannot arm the back-off timer: {e}"));
                }
            }
            AfterStop::End(ending) => self.ending = Some(ending),
        }
    }

    // ---- event handlers ---------------------------------------------------------------

    fn machine_events(&mut self) {
        let events = match self.vm.as_mut() {
            Some(vm) => vm.drain_events(),
            None => return,
        };
        for event in events {
            if self.vm.is_none() {
                // Stopped by an earlier event of this batch; the rest belongs to a dead VM.
                break;
            }
            match event {
                MachineEvent::ConsoleLine(line) => self.out.emit(Event::Console { line }),
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
                    self.out.emit(Event::Info {
                        message: "the guest asked for a reset".into(),
                    });
                    self.warm_reset(None);
                }
                MachineEvent::Error(message) => {
                    self.out.error(format!("the VM failed: {message}"));
                    self.stop_vm(Stop::plain(StopReason::Error));
                }
            }
        }
    }

    fn watchdog_expired(&mut self, expiry: Expiry) {
        if self.vm.is_none() {
            return;
        }
        let device = self
            .cfg
            .watchdog
            .as_ref()
            .map_or_else(|| "(none in the manifest)".to_string(), |(n, _)| n.clone());
        self.out.emit(Event::Watchdog {
            action: expiry.action.name().to_string(),
            device,
        });
        self.carry_out(Trigger::Watchdog(expiry.action));
    }

    fn probe_events(&mut self) {
        let Some(probes) = self.probes.as_mut() else {
            return;
        };
        let events = probes.process(Instant::now());
        self.report_probe_events(events, true);
    }

    /// Report probe events; with `act`, carry out a liveness failure once the whole batch
    /// is reported (its other attempts completed before the action).
    fn report_probe_events(&mut self, events: Vec<ProbeEvent>, act: bool) {
        let mut failed = false;
        for event in events {
            match event {
                ProbeEvent::Attempt(a) => self.out.emit(Event::Probe {
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
                ProbeEvent::Ready(ready) => self.out.emit(Event::Ready { ready }),
                ProbeEvent::LivenessFailed { message } => {
                    let action = self.cfg.liveness_action;
                    self.out.emit(Event::Liveness {
                        action: liveness_action_name(action).to_string(),
                        message,
                        failures: None,
                    });
                    failed = true;
                }
            }
        }
        if failed && act && self.vm.is_some() {
            self.carry_out(Trigger::Liveness(self.cfg.liveness_action));
        }
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
                    .map_or(Duration::MAX, |t| t.elapsed());
                let delay = self.liveness_backoff.next_delay(lasted);
                self.last_liveness_reset = Some(Instant::now());
                self.warm_reset(Some(delay));
            }
            Decision::Reset => self.warm_reset(None),
            Decision::Shutdown => {
                if let Phase::ShuttingDown(_) = self.phase {
                    // Already asked; the grace period already runs.
                    return;
                }
                if let Some(vm) = self.vm.as_mut() {
                    vm.power_button();
                }
                self.phase = Phase::ShuttingDown(cause);
                if let Err(e) = self.grace.arm(self.cfg.grace_period) {
                    self.out
                        .error(format!("cannot arm the grace-period timer: {e}"));
                    self.grace_expired();
                }
            }
            Decision::Pause => {
                let paused = self.vm.as_mut().map(|vm| vm.pause());
                match paused {
                    Some(Err(e)) => self.out.error(format!("cannot pause the VM: {e}")),
                    Some(Ok(())) => {
                        self.phase = Phase::Paused;
                        self.out.status.set_paused(true, Instant::now());
                        self.grace.disarm();
                        self.out.emit(Event::Info {
                            message: "the VM is paused".into(),
                        });
                        self.drop_probes_schedule();
                    }
                    None => {}
                }
            }
            Decision::Resume => {
                if self.phase != Phase::Paused {
                    return;
                }
                match self.vm.as_mut().map(|vm| vm.resume()) {
                    Some(Err(e)) => self.out.error(format!("cannot resume the VM: {e}")),
                    Some(Ok(())) => {
                        self.phase = Phase::Running;
                        self.out.status.set_paused(false, Instant::now());
                        self.out.emit(Event::Info {
                            message: "the VM is resumed".into(),
                        });
                        self.resume_probes();
                    }
                    None => {}
                }
            }
            Decision::InjectNmi => {
                if let Some(Err(e)) = self.vm.as_mut().map(|vm| vm.inject_nmi()) {
                    self.out.error(format!("cannot inject an NMI: {e}"));
                }
            }
            Decision::Report { log } => {
                if log {
                    log::warn!("watchdog expired (action debug): the VM keeps running");
                }
            }
        }
    }

    /// The probes stop while the VM is paused (a paused VM is not ready).
    fn drop_probes_schedule(&mut self) {
        if let Some(probes) = self.probes.as_mut() {
            let now = Instant::now();
            probes.vm_stopped(now);
            let events = probes.process(now);
            self.report_probe_events(events, false);
        }
    }

    /// Warm-reset the VM; the probes restart at once, or after `probe_delay`.
    fn warm_reset(&mut self, probe_delay: Option<Duration>) {
        let Some(vm) = self.vm.as_mut() else {
            return;
        };
        if let Err(e) = vm.reset() {
            self.out.error(format!("cannot reset the VM: {e}"));
            self.stop_vm(Stop::plain(StopReason::Error));
            return;
        }
        self.grace.disarm();
        self.phase = Phase::Running;
        self.boots += 1;
        self.out.emit(Event::Started { boot: self.boots });
        self.probe_resume.disarm();
        if let Some(probes) = self.probes.as_mut() {
            let now = Instant::now();
            probes.vm_stopped(now);
            let events = probes.process(now);
            self.report_probe_events(events, false);
            match probe_delay {
                None => self.resume_probes(),
                Some(delay) => {
                    self.out.emit(Event::Info {
                        message: format!(
                            "probes resume in {} ms (back-off of liveness resets)",
                            delay.as_millis()
                        ),
                    });
                    if let Err(e) = self.probe_resume.arm(delay) {
                        self.out
                            .error(format!("cannot arm the probe back-off timer: {e}"));
                        self.resume_probes();
                    }
                }
            }
        }
    }

    fn resume_probes(&mut self) {
        if self.phase != Phase::Running {
            return;
        }
        if let Some(probes) = self.probes.as_mut() {
            probes.vm_started(Instant::now());
            self.probes_due = true;
        }
    }

    fn grace_expired(&mut self) {
        if let Phase::ShuttingDown(cause) = self.phase {
            self.stop_vm(Stop {
                reason: StopReason::Shutdown,
                trigger: Some(cause),
                forced: Some(true),
            });
        }
    }

    fn backoff_expired(&mut self) {
        if let Phase::BackingOff { .. } = self.phase {
            self.start_vm();
        }
    }

    /// SIGINT or SIGTERM: stop the VM cleanly (no restart) and end the run.
    fn interrupted(&mut self, sig: i32) {
        if self.vm.is_some() {
            self.stop_vm(Stop::plain(StopReason::Signal));
        }
        self.ending = Some(Ending::Interrupted(sig));
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
        matches!(self.phase, Phase::ShuttingDown(_)) && self.vm.is_some() && self.ending.is_none()
    }

    fn run_for_expired(&mut self) {
        if self.vm.is_some() {
            self.stop_vm(Stop::plain(StopReason::Runtime));
        }
        self.ending = Some(Ending::RunFor);
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
        if self.vm.is_none() || self.ending.is_some() {
            return Err(CommandError::Conflict("the VM is not running".into()));
        }
        let errors = self.out.errors;
        if action == ApiAction::Reset && self.phase == Phase::Paused {
            // A paused machine would stay paused through a reset (QEMU's `system_reset`);
            // asked through the API, the user wants the guest to boot again.
            self.carry_out(Trigger::Api(ApiAction::Resume));
        }
        self.carry_out(Trigger::Api(action));
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
            Ok(())
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
                Event::Watchdog { action, device } => format!("watchdog {action} {device}"),
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
