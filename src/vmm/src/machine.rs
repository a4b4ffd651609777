//! The KVM machine: VM, vCPU, buses, PCI, serial ports and the built-in test guest.
//!
//! A [`Machine`] is one KVM VM with one vCPU, guest RAM from address 0, the
//! in-kernel irqchip (8259 PICs, IOAPIC, local APIC) and PIT, and these devices on
//! vm-device buses ([`super::bus`]: an `IoManager` for ports, one for memory):
//!
//! | where | what |
//! |---|---|
//! | ports 0x3F8–0x3FF | COM1, 16550 (vm-superio): the console, one [`MachineEvent::ConsoleLine`] per line |
//! | ports 0x2F8–0x2FF | COM2, 16550: bytes to/from [`MachineConfig::agent_serial`] (IRQ 3) |
//! | ports 0xCF8–0xCFF | PCI configuration mechanism #1 ([`super::pci`]) |
//! | port 0xCF9 (byte) | reset control: 0x06/0x0E → [`MachineEvent::GuestReset`] ([`super::control`]) |
//! | ports 0x510–0x513 | paravirtual control: poweroff, power button, marks ([`super::control`]) |
//! | PCI 00:00.0 | host bridge 8086:1237 |
//! | PCI 00:04.0 | the i6300esb 8086:25ab; BAR0 (16 bytes) routed wherever the guest puts it |
//!
//! The vCPU runs on its own thread because `KVM_RUN` blocks; everything the owner
//! does ([`Machine::pause`], [`Machine::reset`], [`Machine::inject_nmi`],
//! [`Machine::stop`]) is a request the vCPU thread carries out: the owner records
//! it, kicks the thread out of `KVM_RUN` with a real-time signal (whose handler sets
//! `kvm_run.immediate_exit`, so a signal that lands just before `KVM_RUN` is not
//! lost) and, where the call promises it, waits for the thread to confirm.
//!
//! The machine does not poll the watchdog and does not carry out its actions: the
//! owner's event loop keeps the device's deadline on a timerfd (the device crate's
//! `WatchdogTimer`, which hears of every deadline change from the device itself,
//! whichever thread made it) and calls the methods here. Nothing on the vCPU's
//! path signals the event loop on the watchdog's behalf.
//!
//! When the guest powers off (0x510 ← 0x01), asks for a reset (0xCF9), triple
//! faults, or the vCPU fails, the vCPU thread reports it and parks: the owner calls
//! [`Machine::reset`] to boot again or [`Machine::stop`].
//!
//! ```no_run
//! use std::sync::{Arc, Mutex};
//! use std::time::Duration;
//! use i6300esb::{adapters::timer::MonotonicClock, EventCounters, I6300Esb, WatchdogAction};
//! use vmpulse_vmm::machine::{GuestOptions, Machine, MachineConfig, MachineEvent};
//!
//! let esb = Arc::new(Mutex::new(I6300Esb::with_events(
//!     WatchdogAction::Reset,
//!     MonotonicClock::new(),
//!     Arc::new(EventCounters::default()),
//! )));
//! let cfg = MachineConfig {
//!     memory_bytes: 16 << 20,
//!     guest: GuestOptions {
//!         timeout_secs: 30,
//!         kick_every: Duration::from_secs(1),
//!         hang_after: None,
//!         ignore_shutdown: false,
//!         stage_timeout: None,
//!         rearm_after_nmi: false,
//!     },
//!     agent_serial: None,
//! };
//! let mut vm = Machine::new(cfg, esb)?;
//! vm.start()?;
//! // A real owner polls `vm.event_fd()` in its event loop.
//! loop {
//!     std::thread::sleep(Duration::from_millis(100));
//!     for event in vm.drain_events() {
//!         if let MachineEvent::ConsoleLine(line) = event {
//!             println!("{line}");
//!             if line == "guest: kick 1" {
//!                 vm.stop();
//!                 return Ok(());
//!             }
//!         }
//!     }
//! }
//! # Ok::<(), vmpulse_vmm::machine::MachineError>(())
//! ```

use std::cell::Cell;
use std::io;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use kvm_bindings::{
    kvm_irqchip, kvm_lapic_state, kvm_mp_state, kvm_pit_config, kvm_pit_state2, kvm_regs, kvm_run,
    kvm_segment, kvm_sregs, kvm_userspace_memory_region, kvm_vcpu_events, KVM_MP_STATE_RUNNABLE,
    KVM_PIT_SPEAKER_DUMMY,
};
use kvm_ioctls::{Kvm, VcpuExit, VcpuFd, VmFd};
use vm_device::bus::{PioAddress, PioRange};
use vm_device::device_manager::{IoManager, PioManager};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};
use vmm_sys_util::signal::{register_signal_handler, Killable, SIGRTMIN};

use super::bus::{Buses, SharedMmio};
use super::control::{HaltRequest, PvControl, ResetControl, PV_BASE, PV_PORTS};
use super::guest::{self, GuestImage, MIN_MEMORY};
use super::pci::{
    devfn, AccessLog, EsbFunction, HostBridge, PciConfigIo, PciRoot, PioDevice, PCI_CONFIG_PORT,
    PCI_CONFIG_PORTS,
};
pub use super::platform::{
    EventQueue, GuestOptions, MachineEvent, SharedEsb, DEFAULT_TIMEOUT_SECS, MAX_QUEUED_LINES,
};
use super::serial::{
    AgentBridge, AgentPort, ConsolePort, LineSplitter, SerialPort, COM1_BASE, COM1_IRQ, COM2_BASE,
    COM2_IRQ, UART_REGS,
};

/// How to build a [`Machine`].
pub struct MachineConfig {
    /// Guest memory size, already clamped by the runner.
    pub memory_bytes: u64,
    /// The built-in test guest's behaviour.
    pub guest: GuestOptions,
    /// Host end of COM2 (0x2F8), the agent channel for `qemu-ga -m isa-serial` guests.
    pub agent_serial: Option<std::os::unix::net::UnixStream>,
}

/// Errors of the machine.
#[derive(Debug, thiserror::Error)]
pub enum MachineError {
    /// Opening /dev/kvm or a KVM ioctl failed.
    #[error("kvm {what}: {err}")]
    Kvm {
        /// The operation.
        what: &'static str,
        /// The kernel's error.
        err: kvm_ioctls::Error,
    },
    /// Guest memory could not be set up.
    #[error("guest memory: {0}")]
    Memory(String),
    /// The guest program could not be built.
    #[error("guest program: {0}")]
    Guest(#[from] guest::GuestError),
    /// An eventfd, thread or socket could not be set up.
    #[error("{what}: {err}")]
    Io {
        /// The operation.
        what: &'static str,
        /// The error.
        err: io::Error,
    },
    /// A device could not be placed on a bus.
    #[error("bus: {0}")]
    Bus(#[from] vm_device::bus::Error),
    /// `start` was called twice.
    #[error("the machine is already started")]
    AlreadyStarted,
    /// The machine was stopped.
    #[error("the machine is stopped")]
    Stopped,
    /// The vCPU thread did not confirm a request in time.
    #[error("the vCPU did not {0} in time")]
    Timeout(&'static str),
    /// The vCPU thread could not carry out a reset.
    #[error("reset failed: {0}")]
    Reset(String),
}

fn kvm_err(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> MachineError {
    move |err| MachineError::Kvm { what, err }
}

fn io_err(what: &'static str) -> impl FnOnce(io::Error) -> MachineError {
    move |err| MachineError::Io { what, err }
}

/// Exit counts, for tests and benchmarks.
#[derive(Debug, Default)]
pub struct ExitCounters {
    /// Port I/O exits.
    pub pio: AtomicU64,
    /// MMIO exits.
    pub mmio: AtomicU64,
    /// Other exits (signals, unexpected reasons).
    pub other: AtomicU64,
}

/// The devices, shared by the vCPU thread and the owner.
struct Devices {
    buses: Buses,
    pci: Arc<Mutex<PciConfigIo>>,
    com1: Arc<Mutex<ConsolePort>>,
    com2: Option<Arc<Mutex<AgentPort>>>,
    esb: SharedEsb,
    events: Arc<EventQueue>,
    halt: Arc<HaltRequest>,
    button: Arc<AtomicBool>,
    exits: Arc<ExitCounters>,
    boots: Arc<AtomicU32>,
    marks: Arc<Mutex<Vec<(u8, Instant)>>>,
    esb_log: AccessLog,
}

/// What the owner asks of the vCPU thread.
#[derive(Default)]
struct Requests {
    stop: bool,
    pause: bool,
    /// The guest stopped itself (poweroff, reset request, failure).
    halted: bool,
    /// The vCPU thread is parked (confirms pause).
    parked: bool,
    reset_requested: u64,
    reset_done: u64,
    reset_error: Option<String>,
    /// NMIs asked for so far, and those the vCPU thread has handed to KVM (any
    /// requested beyond `nmi_done` are pending; they are delivered as one).
    nmi_requested: u64,
    nmi_done: u64,
    /// When the vCPU thread last carried out a request (reset, NMI, pause, stop).
    done_at: Option<Instant>,
    exited: bool,
}

#[derive(Default)]
struct Control {
    req: Mutex<Requests>,
    cond: Condvar,
    /// Something in `req` may need the vCPU thread: set with `req` locked by whoever
    /// changes it, cleared with `req` locked by the vCPU thread once it has looked. The
    /// vCPU thread reads it after every exit and takes the lock only when it is set: an
    /// owner woken by `cond` must take the lock too, and a vCPU thread that took it at
    /// every exit (thousands a second while a guest boots) kept an owner waiting for its
    /// reset to return for as long as the boot's exits lasted, 2-2.5 ms.
    pending: AtomicBool,
}

impl Control {
    /// Change the requests (`f`) and tell the vCPU thread to look at them.
    fn ask<T>(&self, f: impl FnOnce(&mut Requests) -> T) -> T {
        let mut r = self.lock();
        let out = f(&mut r);
        self.pending.store(true, Ordering::Release);
        out
    }

    fn lock(&self) -> MutexGuard<'_, Requests> {
        self.req.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Wait until `done` holds or `timeout` passes; true if it holds.
    fn wait_for(&self, timeout: Duration, done: impl Fn(&Requests) -> bool) -> bool {
        let give_up = Instant::now() + timeout;
        let mut r = self.lock();
        loop {
            if done(&r) {
                return true;
            }
            let now = Instant::now();
            if now >= give_up {
                return false;
            }
            r = self
                .cond
                .wait_timeout(r, give_up - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }
}

/// KVM state captured right after creation, restored at every reset.
struct InitialState {
    irqchips: Vec<kvm_irqchip>,
    pit: kvm_pit_state2,
    lapic: kvm_lapic_state,
    sregs: kvm_sregs,
    events: kvm_vcpu_events,
}

/// CR0: protected mode.
const CR0_PE: u64 = 1 << 0;
/// CR0: extension type (always 1 on anything newer than a 386).
const CR0_ET: u64 = 1 << 4;
/// CR0: paging.
const CR0_PG: u64 = 1 << 31;
/// CR4: physical address extension (required by long mode).
const CR4_PAE: u64 = 1 << 5;
/// EFER: long mode enabled.
const EFER_LME: u64 = 1 << 8;
/// EFER: long mode active.
const EFER_LMA: u64 = 1 << 10;
/// Local APIC LVT LINT0 register: in virtual-wire mode it takes the 8259's
/// interrupts (ExtINT), which is how the in-kernel PIT reaches the guest.
const APIC_LVT0: usize = 0x350;
/// Local APIC LVT LINT1 register: NMIs.
const APIC_LVT1: usize = 0x360;
/// LVT delivery mode ExtINT (unmasked).
const APIC_MODE_EXTINT: u32 = 0x700;
/// LVT delivery mode NMI (unmasked).
const APIC_MODE_NMI: u32 = 0x400;

fn set_apic_reg(lapic: &mut kvm_lapic_state, offset: usize, value: u32) {
    for (i, b) in value.to_le_bytes().iter().enumerate() {
        lapic.regs[offset + i] = *b as _;
    }
}

/// Everything the vCPU thread owns.
struct Vcpu {
    fd: VcpuFd,
    vm: Arc<VmFd>,
    mem: GuestMemoryMmap,
    image: GuestImage,
    initial: InitialState,
    devices: Arc<Devices>,
    control: Arc<Control>,
}

// Where the kick signal handler finds this thread's `kvm_run.immediate_exit`.
thread_local! {
    static IMMEDIATE_EXIT: Cell<*mut u8> = const { Cell::new(std::ptr::null_mut()) };
}

extern "C" fn kick_handler(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    let _ = IMMEDIATE_EXIT.try_with(|p| {
        let p = p.get();
        if !p.is_null() {
            // SAFETY: the pointer is set by this thread's vCPU loop to the
            // `immediate_exit` byte of its mapped `kvm_run`, and cleared before the
            // mapping goes away; a byte store is async-signal-safe.
            unsafe { p.write_volatile(1) };
        }
    });
}

/// The real-time signal that kicks a vCPU thread out of `KVM_RUN`.
fn kick_signal() -> Result<libc::c_int, MachineError> {
    static REGISTERED: OnceLock<Result<libc::c_int, i32>> = OnceLock::new();
    let r = REGISTERED.get_or_init(|| {
        let sig = SIGRTMIN() + 2;
        register_signal_handler(sig, kick_handler)
            .map(|()| sig)
            .map_err(|e| e.errno())
    });
    r.map_err(|errno| MachineError::Io {
        what: "register the vCPU kick signal",
        err: io::Error::from_raw_os_error(errno),
    })
}

impl Vcpu {
    /// Put memory, devices and the CPU in their boot state.
    fn load(&mut self) -> Result<(), MachineError> {
        let d = &self.devices;
        // Devices first, while the CPU is not running.
        d.esb.lock().unwrap_or_else(|e| e.into_inner()).warm_reset();
        d.pci.lock().unwrap_or_else(|e| e.into_inner()).reset();
        {
            let mut com1 = d.com1.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(w) = com1.writer_mut() {
                w.flush_line();
            }
            com1.reset();
        }
        if let Some(com2) = &d.com2 {
            com2.lock().unwrap_or_else(|e| e.into_inner()).reset();
        }
        d.button.store(false, Ordering::SeqCst);
        d.halt.take();

        for (addr, bytes) in &self.image.blocks {
            self.mem
                .write_slice(bytes, GuestAddress(*addr))
                .map_err(|e| MachineError::Memory(e.to_string()))?;
        }

        let init = &self.initial;
        for chip in &init.irqchips {
            self.vm
                .set_irqchip(chip)
                .map_err(kvm_err("restore the irqchip"))?;
        }
        self.vm
            .set_pit2(&init.pit)
            .map_err(kvm_err("restore the PIT"))?;
        self.fd
            .set_lapic(&init.lapic)
            .map_err(kvm_err("set the local APIC"))?;
        self.fd
            .set_vcpu_events(&init.events)
            .map_err(kvm_err("clear pending events"))?;
        self.fd
            .set_mp_state(kvm_mp_state {
                mp_state: KVM_MP_STATE_RUNNABLE,
            })
            .map_err(kvm_err("set the MP state"))?;

        let img = &self.image;
        let mut sregs = init.sregs;
        let code = kvm_segment {
            base: 0,
            limit: 0xffff_ffff,
            selector: img.code_selector,
            type_: 0xb,
            present: 1,
            dpl: 0,
            db: 0,
            s: 1,
            l: 1,
            g: 1,
            avl: 0,
            unusable: 0,
            padding: 0,
        };
        let data = kvm_segment {
            selector: img.data_selector,
            type_: 0x3,
            db: 1,
            l: 0,
            ..code
        };
        sregs.cs = code;
        sregs.ds = data;
        sregs.es = data;
        sregs.fs = data;
        sregs.gs = data;
        sregs.ss = data;
        sregs.gdt.base = img.gdt.0;
        sregs.gdt.limit = img.gdt.1;
        sregs.idt.base = img.idt.0;
        sregs.idt.limit = img.idt.1;
        // Long mode: protection, paging through the image's identity map, PAE.
        sregs.cr0 = CR0_PE | CR0_ET | CR0_PG;
        sregs.cr3 = img.cr3;
        sregs.cr4 = CR4_PAE;
        sregs.efer = EFER_LME | EFER_LMA;
        self.fd
            .set_sregs(&sregs)
            .map_err(kvm_err("set segment registers"))?;
        let regs = kvm_regs {
            rip: img.entry,
            rsp: img.stack_top,
            rflags: 0x2,
            ..Default::default()
        };
        self.fd.set_regs(&regs).map_err(kvm_err("set registers"))?;
        Ok(())
    }

    /// Carry out what the owner asked; false when the thread must end.
    fn service(&mut self) -> bool {
        // After almost every exit nothing was asked for: no lock.
        if !self.control.pending.load(Ordering::Acquire) {
            return true;
        }
        let control = self.control.clone();
        let mut r = control.lock();
        loop {
            if r.stop {
                return false;
            }
            if r.reset_requested != r.reset_done {
                let target = r.reset_requested;
                drop(r);
                let result = self.load();
                r = control.lock();
                r.reset_done = target;
                match result {
                    Ok(()) => {
                        r.halted = false;
                        r.reset_error = None;
                        self.devices.boots.fetch_add(1, Ordering::SeqCst);
                    }
                    Err(e) => {
                        r.halted = true;
                        r.reset_error = Some(e.to_string());
                        self.devices
                            .events
                            .push(MachineEvent::Error(format!("reset: {e}")));
                    }
                }
                r = Self::confirm(&control, r);
                continue;
            }
            if r.nmi_requested > r.nmi_done {
                let target = r.nmi_requested;
                drop(r);
                if let Err(e) = self.fd.nmi() {
                    log::error!("machine: KVM_NMI failed: {e}");
                }
                r = control.lock();
                r.nmi_done = target;
                r = Self::confirm(&control, r);
                continue;
            }
            if r.pause || r.halted {
                if !r.parked {
                    r.parked = true;
                    r = Self::confirm(&control, r);
                }
                r = control.cond.wait(r).unwrap_or_else(|e| e.into_inner());
                continue;
            }
            // Everything asked for is done; a later request sets the flag again (and its
            // kick makes `KVM_RUN` return at once, so it is seen).
            control.pending.store(false, Ordering::Release);
            if r.parked {
                r.parked = false;
                control.cond.notify_all();
                drop(r);
                self.restart_pit();
            }
            return true;
        }
    }

    /// Tell the owner a request is done, and when ([`Machine::last_done`]): the owner's
    /// own wake-up comes later, by as much as a scheduler slice on busy cores.
    fn confirm<'c>(
        control: &'c Control,
        mut r: MutexGuard<'c, Requests>,
    ) -> MutexGuard<'c, Requests> {
        r.done_at = Some(Instant::now());
        control.cond.notify_all();
        r
    }

    /// After a pause: reload the PIT with its own state, which restarts the current
    /// period and drops the ticks the in-kernel PIT kept for re-injection while the
    /// vCPU was parked, so the guest's clock stands still during a pause (as QEMU's
    /// does) instead of catching up in a burst.
    fn restart_pit(&self) {
        let reload = self.vm.get_pit2().and_then(|pit| self.vm.set_pit2(&pit));
        if let Err(e) = reload {
            log::warn!("machine: cannot reload the PIT after a pause: {e}");
        }
    }

    /// Report a failure and park.
    fn fail(&self, msg: String) {
        log::error!("machine: {msg}");
        self.devices.events.push(MachineEvent::Error(msg));
        self.devices.halt.raise();
    }

    fn run(mut self) {
        let run: *mut kvm_run = self.fd.get_kvm_run();
        let immediate_exit = std::ptr::addr_of_mut!(self.fd.get_kvm_run().immediate_exit);
        IMMEDIATE_EXIT.with(|p| p.set(immediate_exit));
        while self.service() {
            // Borrowed, not cloned: an `Arc` clone per exit is two atomic
            // read-modify-writes on a count other threads share.
            let d = &self.devices;
            match self.fd.run() {
                Ok(exit) => match exit {
                    // String I/O (`rep insb`/`outsb`) arrives as `count` accesses in one
                    // exit; each goes to the bus on its own.
                    VcpuExit::IoIn(port, data) => {
                        d.exits.pio.fetch_add(1, Ordering::Relaxed);
                        let size = io_access_size(run, data.len());
                        for chunk in data.chunks_mut(size) {
                            d.buses.pio_read(port, chunk);
                        }
                    }
                    VcpuExit::IoOut(port, data) => {
                        d.exits.pio.fetch_add(1, Ordering::Relaxed);
                        let size = io_access_size(run, data.len());
                        for chunk in data.chunks(size) {
                            d.buses.pio_write(port, chunk);
                        }
                    }
                    VcpuExit::MmioRead(addr, data) => {
                        d.exits.mmio.fetch_add(1, Ordering::Relaxed);
                        d.buses.mmio_read(addr, data);
                    }
                    VcpuExit::MmioWrite(addr, data) => {
                        d.exits.mmio.fetch_add(1, Ordering::Relaxed);
                        d.buses.mmio_write(addr, data);
                    }
                    VcpuExit::Intr => {
                        d.exits.other.fetch_add(1, Ordering::Relaxed);
                    }
                    VcpuExit::Shutdown => {
                        // A triple fault: a PC resets.
                        d.exits.other.fetch_add(1, Ordering::Relaxed);
                        log::warn!("machine: the guest triple faulted");
                        d.events.push(MachineEvent::GuestReset);
                        d.halt.raise();
                    }
                    VcpuExit::Hlt => {
                        d.exits.other.fetch_add(1, Ordering::Relaxed);
                        self.fail("the vCPU halted outside the in-kernel irqchip".into());
                    }
                    other => {
                        d.exits.other.fetch_add(1, Ordering::Relaxed);
                        let msg = format!("unexpected vCPU exit: {other:?}");
                        self.fail(msg);
                    }
                },
                Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                    d.exits.other.fetch_add(1, Ordering::Relaxed);
                    self.fd.set_kvm_immediate_exit(0);
                }
                Err(e) => self.fail(format!("KVM_RUN: {e}")),
            }
            if d.halt.take() {
                self.control.ask(|r| r.halted = true);
            }
        }
        IMMEDIATE_EXIT.with(|p| p.set(std::ptr::null_mut()));
        let mut r = self.control.lock();
        r.exited = true;
        let _r = Self::confirm(&self.control, r);
    }
}

/// Width of one access of the current I/O exit (string I/O repeats it `count`
/// times in the same data area).
fn io_access_size(run: *const kvm_run, total: usize) -> usize {
    // SAFETY: `run` is this thread's mapped `kvm_run`, alive as long as the vCPU fd
    // the caller owns; after a KVM_EXIT_IO exit the kernel has filled the `io`
    // member, and this reads one plain byte of it, apart from the data slice.
    let size = usize::from(unsafe { std::ptr::addr_of!((*run).__bindgen_anon_1.io.size).read() });
    if (1..=4).contains(&size) && total % size == 0 {
        size
    } else {
        total.max(1)
    }
}

/// The i6300esb's PCI device number on bus 0 (QEMU's `pc` machine puts it at 00:04.0).
pub const ESB_SLOT: u8 = 4;

/// How long the owner waits for the vCPU thread to confirm a pause or reset.
const CONFIRM_TIMEOUT: Duration = Duration::from_secs(5);

/// A small KVM virtual machine with the i6300esb.
pub struct Machine {
    esb: SharedEsb,
    devices: Arc<Devices>,
    control: Arc<Control>,
    vcpu: Option<Vcpu>,
    thread: Option<JoinHandle<()>>,
    agent: Option<AgentBridge>,
    paused: bool,
    stopped: bool,
    // Keeps the VM alive as long as the machine (the vCPU thread holds a clone).
    /// Taken by `Drop`, which closes it on a thread of its own.
    vm: Option<Arc<VmFd>>,
}

impl Machine {
    /// Create the VM with the built-in watchdog test guest; does not run it yet.
    pub fn new(cfg: MachineConfig, esb: SharedEsb) -> Result<Machine, MachineError> {
        let image = guest::watchdog_guest(&cfg.guest)?;
        Machine::with_image(cfg, esb, image)
    }

    /// Create the VM running `image` instead of the watchdog guest (`cfg.guest` is
    /// not used), for example [`guest::kick_loop_guest`].
    pub fn with_image(
        cfg: MachineConfig,
        esb: SharedEsb,
        image: GuestImage,
    ) -> Result<Machine, MachineError> {
        if cfg.memory_bytes < MIN_MEMORY || cfg.memory_bytes > (1 << 32) - (1 << 28) {
            return Err(MachineError::Memory(format!(
                "{} bytes: the machine takes 1 MiB to 3.75 GiB",
                cfg.memory_bytes
            )));
        }
        let kvm = Kvm::new().map_err(kvm_err("open /dev/kvm"))?;
        let vm = Arc::new(kvm.create_vm().map_err(kvm_err("create the VM"))?);
        vm.set_tss_address(0xfffb_d000)
            .map_err(kvm_err("set the TSS address"))?;
        vm.create_irq_chip()
            .map_err(kvm_err("create the irqchip"))?;
        vm.create_pit2(kvm_pit_config {
            flags: KVM_PIT_SPEAKER_DUMMY,
            ..Default::default()
        })
        .map_err(kvm_err("create the PIT"))?;

        let mem =
            GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), cfg.memory_bytes as usize)])
                .map_err(|e| MachineError::Memory(e.to_string()))?;
        let host = mem
            .get_host_address(GuestAddress(0))
            .map_err(|e| MachineError::Memory(e.to_string()))?;
        let region = kvm_userspace_memory_region {
            slot: 0,
            flags: 0,
            guest_phys_addr: 0,
            memory_size: cfg.memory_bytes,
            userspace_addr: host as u64,
        };
        // SAFETY: the region is one anonymous mapping of `memory_bytes` that `mem`
        // owns; `mem` lives in the vCPU state, next to the VM, until both are dropped.
        unsafe { vm.set_user_memory_region(region) }.map_err(kvm_err("register guest memory"))?;

        let fd = vm.create_vcpu(0).map_err(kvm_err("create the vCPU"))?;
        let cpuid = kvm
            .get_supported_cpuid(kvm_bindings::KVM_MAX_CPUID_ENTRIES)
            .map_err(kvm_err("read supported CPUID"))?;
        fd.set_cpuid2(&cpuid).map_err(kvm_err("set CPUID"))?;

        let mut irqchips = Vec::new();
        for chip_id in 0..3 {
            let mut chip = kvm_irqchip {
                chip_id,
                ..Default::default()
            };
            vm.get_irqchip(&mut chip)
                .map_err(kvm_err("read the irqchip"))?;
            irqchips.push(chip);
        }
        let mut lapic = fd.get_lapic().map_err(kvm_err("read the local APIC"))?;
        set_apic_reg(&mut lapic, APIC_LVT0, APIC_MODE_EXTINT);
        set_apic_reg(&mut lapic, APIC_LVT1, APIC_MODE_NMI);
        let initial = InitialState {
            irqchips,
            pit: vm.get_pit2().map_err(kvm_err("read the PIT"))?,
            lapic,
            sregs: fd.get_sregs().map_err(kvm_err("read segment registers"))?,
            events: fd.get_vcpu_events().map_err(kvm_err("read vCPU events"))?,
        };

        // Devices.
        let events = Arc::new(EventQueue::new().map_err(io_err("create the event fd"))?);
        let halt = Arc::new(HaltRequest::default());
        let button = Arc::new(AtomicBool::new(false));
        let mut pio = IoManager::new();
        let mmio: SharedMmio = Arc::new(RwLock::new(IoManager::new()));
        let ports = |base: u64, len: u64| {
            let (base, len) = (u16::try_from(base), u16::try_from(len));
            match (base, len) {
                (Ok(base), Ok(len)) => PioRange::new(PioAddress(base), len),
                _ => Err(vm_device::bus::Error::InvalidRange),
            }
        };

        let irq = |gsi: u32| -> Result<EventFd, MachineError> {
            let e = EventFd::new(EFD_NONBLOCK).map_err(io_err("create an irq fd"))?;
            vm.register_irqfd(&e, gsi)
                .map_err(kvm_err("register an irq fd"))?;
            Ok(e)
        };
        let com1 = Arc::new(Mutex::new(
            SerialPort::new("com1", irq(COM1_IRQ)?, LineSplitter::new(events.clone()))
                .map_err(io_err("create COM1"))?,
        ));
        pio.register_pio(ports(COM1_BASE, UART_REGS)?, com1.clone())?;
        let (agent, com2) = match cfg.agent_serial {
            Some(stream) => {
                let (bridge, port) =
                    AgentBridge::new(stream, irq(COM2_IRQ)?).map_err(io_err("bridge COM2"))?;
                pio.register_pio(ports(COM2_BASE, UART_REGS)?, port.clone())?;
                (Some(bridge), Some(port))
            }
            None => (None, None),
        };

        let reset_control: PioDevice =
            Arc::new(Mutex::new(ResetControl::new(events.clone(), halt.clone())));
        let mut root = PciRoot::new(mmio.clone());
        root.add(devfn(0, 0), Box::new(HostBridge::default()));
        let esb_function = EsbFunction::new(esb.clone());
        let esb_log = esb_function.access_log();
        root.add(devfn(ESB_SLOT, 0), Box::new(esb_function));
        let pci = Arc::new(Mutex::new(PciConfigIo::new(root, reset_control)));
        pio.register_pio(
            PioRange::new(PioAddress(PCI_CONFIG_PORT), PCI_CONFIG_PORTS)?,
            pci.clone(),
        )?;

        let pv = PvControl::new(events.clone(), halt.clone(), button.clone());
        let marks = pv.marks();
        pio.register_pio(
            PioRange::new(PioAddress(PV_BASE), PV_PORTS)?,
            Arc::new(Mutex::new(pv)),
        )?;

        let devices = Arc::new(Devices {
            buses: Buses::new(pio, mmio),
            pci,
            com1,
            com2,
            esb: esb.clone(),
            events,
            halt,
            button,
            exits: Arc::new(ExitCounters::default()),
            boots: Arc::new(AtomicU32::new(0)),
            marks,
            esb_log,
        });
        let control = Arc::new(Control::default());
        let mut vcpu = Vcpu {
            fd,
            vm: vm.clone(),
            mem,
            image,
            initial,
            devices: devices.clone(),
            control: control.clone(),
        };
        vcpu.load()?;
        Ok(Machine {
            esb,
            devices,
            control,
            vcpu: Some(vcpu),
            thread: None,
            agent,
            paused: false,
            stopped: false,
            vm: Some(vm),
        })
    }

    /// Start the vCPU thread: the guest boots.
    pub fn start(&mut self) -> Result<(), MachineError> {
        if self.stopped {
            return Err(MachineError::Stopped);
        }
        let vcpu = self.vcpu.take().ok_or(MachineError::AlreadyStarted)?;
        kick_signal()?;
        self.devices.boots.store(1, Ordering::SeqCst);
        let thread = std::thread::Builder::new()
            .name("vmpulse-vcpu0".into())
            .spawn(move || vcpu.run())
            .map_err(io_err("spawn the vCPU thread"))?;
        self.thread = Some(thread);
        Ok(())
    }

    /// An eventfd that becomes readable whenever `drain_events` has something.
    pub fn event_fd(&self) -> RawFd {
        self.devices.events.fd()
    }

    /// Take every queued event, in order.
    pub fn drain_events(&mut self) -> Vec<MachineEvent> {
        self.devices.events.drain()
    }

    /// Kick the vCPU thread out of `KVM_RUN`.
    fn kick(&self) {
        if let (Some(t), Ok(sig)) = (&self.thread, kick_signal()) {
            if let Err(e) = t.kill(sig) {
                log::debug!("machine: cannot signal the vCPU thread: {e}");
            }
        }
    }

    /// Freeze the vCPU and the watchdog countdown. Returns once the vCPU is parked.
    pub fn pause(&mut self) -> Result<(), MachineError> {
        if self.stopped {
            return Err(MachineError::Stopped);
        }
        self.control.ask(|r| r.pause = true);
        if self.thread.is_some() {
            self.kick();
            if !self
                .control
                .wait_for(CONFIRM_TIMEOUT, |r| r.parked || r.exited)
            {
                return Err(MachineError::Timeout("pause"));
            }
        }
        if !self.paused {
            self.esb.lock().unwrap_or_else(|e| e.into_inner()).pause();
            self.paused = true;
        }
        Ok(())
    }

    /// Undo pause.
    pub fn resume(&mut self) -> Result<(), MachineError> {
        if self.stopped {
            return Err(MachineError::Stopped);
        }
        if self.paused {
            self.esb.lock().unwrap_or_else(|e| e.into_inner()).resume();
            self.paused = false;
        }
        self.control.ask(|r| r.pause = false);
        self.control.cond.notify_all();
        Ok(())
    }

    /// Whether [`Machine::pause`] is in effect.
    pub fn is_paused(&self) -> bool {
        self.paused
    }

    /// Warm reset of the whole VM; the guest boots again. Returns once the vCPU
    /// thread has reloaded the machine. A paused machine stays paused (its guest
    /// boots on [`Machine::resume`]), as QEMU's `system_reset` leaves a stopped VM.
    pub fn reset(&mut self) -> Result<(), MachineError> {
        if self.stopped {
            return Err(MachineError::Stopped);
        }
        if let Some(vcpu) = self.vcpu.as_mut() {
            // Not started yet: reload in place.
            return vcpu.load();
        }
        let target = self.control.ask(|r| {
            r.reset_requested += 1;
            r.reset_requested
        });
        self.control.cond.notify_all();
        self.kick();
        if !self
            .control
            .wait_for(CONFIRM_TIMEOUT, |r| r.reset_done >= target || r.exited)
        {
            return Err(MachineError::Timeout("reset"));
        }
        let r = self.control.lock();
        if r.reset_done < target {
            return Err(MachineError::Stopped);
        }
        match &r.reset_error {
            Some(e) => Err(MachineError::Reset(e.clone())),
            None => Ok(()),
        }
    }

    /// A graceful shutdown request (ACPI power button): the test guest sees it on
    /// its next timer tick.
    pub fn power_button(&mut self) {
        self.devices.button.store(true, Ordering::SeqCst);
    }

    /// Inject an NMI into the vCPU (delivered once it runs, if paused). Returns once the
    /// vCPU thread has handed it to KVM (`KVM_NMI`), or at once before the start.
    pub fn inject_nmi(&mut self) -> Result<(), MachineError> {
        if self.stopped {
            return Err(MachineError::Stopped);
        }
        let target = self.control.ask(|r| {
            r.nmi_requested += 1;
            r.nmi_requested
        });
        self.control.cond.notify_all();
        if self.thread.is_some() {
            self.kick();
            if !self
                .control
                .wait_for(CONFIRM_TIMEOUT, |r| r.nmi_done >= target || r.exited)
            {
                return Err(MachineError::Timeout("take the NMI"));
            }
        }
        Ok(())
    }

    /// Stop the vCPU thread and release the VM. Idempotent.
    pub fn stop(&mut self) {
        if self.stopped {
            return;
        }
        self.stopped = true;
        self.control.ask(|r| r.stop = true);
        self.control.cond.notify_all();
        self.kick();
        if let Some(t) = self.thread.take() {
            if t.join().is_err() {
                log::error!("machine: the vCPU thread panicked");
            }
        }
        self.vcpu = None;
        if let (Some(agent), Some(port)) = (self.agent.as_mut(), self.devices.com2.as_ref()) {
            agent.stop(port);
        }
        self.agent = None;
    }

    /// When the vCPU thread last carried out one of the owner's requests: the reload of
    /// [`Machine::reset`], the `KVM_NMI` of [`Machine::inject_nmi`], the parking of
    /// [`Machine::pause`], the end of the thread for [`Machine::stop`]. Those calls return
    /// once the owner's thread has heard of it, which on busy cores can be a scheduler
    /// slice later; this is when the VM was actually reset, interrupted, paused or stopped.
    pub fn last_done(&self) -> Option<Instant> {
        self.control.lock().done_at
    }

    /// How many times the guest has been started.
    pub fn boot_count(&self) -> u32 {
        self.devices.boots.load(Ordering::SeqCst)
    }

    /// Exit counts since creation.
    pub fn exits(&self) -> Arc<ExitCounters> {
        self.devices.exits.clone()
    }

    /// Accesses that no device claimed, on the port and MMIO buses.
    pub fn unclaimed_accesses(&self) -> (u64, u64) {
        self.devices.buses.unclaimed()
    }

    /// Console lines dropped because the owner did not drain events.
    pub fn dropped_console_lines(&self) -> u64 {
        self.devices.events.dropped_lines()
    }

    /// Values the guest wrote to the mark port, with their arrival times.
    pub fn marks(&self) -> Vec<(u8, Instant)> {
        self.devices
            .marks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The MMIO window currently routed to the watchdog's BAR0.
    pub fn esb_route(&self) -> Option<(u64, u64)> {
        self.devices
            .pci
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .root()
            .route(devfn(ESB_SLOT, 0))
    }

    /// The record of the guest's accesses to the watchdog (start it before
    /// [`Machine::start`] to see the whole boot).
    pub fn esb_access_log(&self) -> AccessLog {
        self.devices.esb_log.clone()
    }
}

impl Drop for Machine {
    fn drop(&mut self) {
        self.stop();
        // Closing the last fd of a KVM VM tears it down in the kernel: about 15 ms on a
        // nested KVM, which would hold up the owner's event loop after every poweroff
        // (and count in the poweroff's lateness). The vCPU thread is gone, so this is the
        // last reference: close it on a thread of its own, at normal priority.
        if let Some(vm) = self.vm.take() {
            let released = std::thread::Builder::new()
                .name("vmpulse-vm-release".into())
                .spawn(move || {
                    let _ = super::sched::normal();
                    drop(vm);
                });
            if let Err(e) = released {
                // No thread (the VM was closed here, on the error path).
                log::debug!("machine: cannot release the VM on a thread: {e}");
            }
        }
    }
}
