//! The built-in test guest, assembled at run time with iced-x86's `CodeAssembler`.
//!
//! The guest behaves like Linux with busybox's `watchdog` daemon, in a few hundred
//! bytes of x86-64 code: it enumerates PCI bus 0 through 0xCF8/0xCFC, finds
//! 8086:25ab, sizes and programs BAR0 and turns memory decode on as firmware
//! would, runs the Linux driver's probe (`i6300esb.ko`: output on at 0x60, lock
//! check and disable at 0x68, boot status from bit 9 of the reload register and its
//! clearing with 0x0300, `set_timeout` on both preloads, `start`), then kicks every
//! [`GuestOptions::kick_every`] and stops after [`GuestOptions::hang_after`].
//!
//! It runs in 64-bit long mode with identity-mapped 2 MiB pages over the low
//! 4 GiB, set up by the VMM (control and segment registers through
//! `KVM_SET_SREGS`, descriptor and page tables written into memory). Long mode
//! rather than the simpler flat 32-bit mode because this host's nested KVM fails
//! to emulate a 32-bit `iret` (the kernel logs an internal error and the vCPU
//! stops at the instruction), while 64-bit guests run. Time
//! comes from the in-kernel PIT (channel 0 at [`TICK_HZ`], or [`FAST_TICK_HZ`] when
//! the kick period or the hang time is not a whole number of 10 ms ticks: see
//! [`tick_hz`]) through the in-kernel 8259 PIC; between ticks the guest sleeps in
//! `hlt`. On every tick it also looks at
//! the paravirtual power-button status (see [`super::control`]) and at a flag its
//! NMI handler sets, so that console lines are never interleaved.
//!
//! Memory map (all below 1 MiB):
//!
//! | address | content |
//! |---|---|
//! | 0x1000 | GDT: null, 64-bit code (0x08), flat data (0x10) |
//! | 0x2000 | IDT: 256 interrupt gates (16 bytes each) |
//! | 0x3000 | variables (ticks, kick count, flags), zeroed at every boot |
//! | 0x4000 | strings |
//! | 0x5000 | page tables: PML4, PDPT, 4 page directories (to 0xAFFF) |
//! | 0x10000 | code |
//! | 0x70000–0x80000 | the stack (zeroed at every boot), growing down from 0x80000 |
//!
//! Console lines (COM1), in order: `guest: boot`, `guest: found i6300esb at
//! 00:04.0 bar0=0xfebf0000`, `guest: bootstatus=0` or `guest: bootstatus=0x20
//! (previous reset caused by the watchdog)`, `guest: watchdog armed, timeout=T s` (or
//! `timeout=N us per stage` with [`GuestOptions::stage_timeout`], which selects the 1 MHz
//! prescaler),
//! then `guest: kick N` lines, `guest: hanging (no more kicks)`, and on events
//! `guest: power button pressed, powering off` / `..., ignored` and
//! `guest: NMI received` (after arming the watchdog again, as the probe did, with
//! [`GuestOptions::rearm_after_nmi`]).
//!
//! Smaller guests for tests and benchmarks share the same frame:
//! [`kick_loop_guest`] (N Linux pings between two marks, then poweroff),
//! [`reset_request_guest`] (0xCF9 ← 0x06), [`com2_echo_guest`] (echoes COM2),
//! [`stray_access_guest`] (reads what nobody decodes), [`unaligned_access_guest`]
//! (unaligned configuration and BAR0 accesses) and [`halt_guest`] (`cli; hlt`,
//! woken only by NMIs).

use std::time::Duration;

use iced_x86::code_asm::*;
use iced_x86::BlockEncoderOptions;

use super::control::{
    PV_CMD_POWEROFF, PV_COMMAND_PORT, PV_MARK_PORT, PV_STATUS_BUTTON, PV_STATUS_PORT,
    RESET_CONTROL_PORT, RESET_HARD,
};
use super::platform::GuestOptions;

/// Guest timer rate: PIT channel 0 interrupts per second.
pub const TICK_HZ: u32 = 100;
/// The faster rate, for kick periods and hang times finer than 10 ms: 1 ms
/// resolution at ten times the timer exits (a few per tick, ~7 µs each in a
/// nested KVM: under 3% of a CPU).
pub const FAST_TICK_HZ: u32 = 1000;
/// The PIT's input clock.
const PIT_HZ: u32 = 1_193_182;
/// Where the guest puts the watchdog's BAR0 (QEMU's `pc` firmware picks 0xfebf1000;
/// any free address works).
pub const GUEST_BAR0: u32 = 0xfebf_0000;
/// Largest heartbeat the test guest programs, in seconds: the preload `T << 9` must fit
/// the device's 20 bits, so 2047 (`--guest-timeout`'s bound, `cli::MAX_GUEST_TIMEOUT`).
/// The Linux driver itself stops one short, at [`LINUX_MAX_TIMEOUT_SECS`].
pub const MAX_TIMEOUT_SECS: u32 = 2047;
/// Largest heartbeat the Linux driver accepts, in seconds (`2 * 0x3ff`).
pub const LINUX_MAX_TIMEOUT_SECS: u32 = 2046;

const GDT_BASE: u64 = 0x1000;
const IDT_BASE: u64 = 0x2000;
const VARS_BASE: u64 = 0x3000;
const VARS_SIZE: usize = 0x1000;
const STRINGS_BASE: u64 = 0x4000;
const PML4_BASE: u64 = 0x5000;
const PDPT_BASE: u64 = 0x6000;
const PD_BASE: u64 = 0x7000;
/// Page directories: 4 × 1 GiB of 2 MiB pages.
const PD_COUNT: u64 = 4;
const CODE_BASE: u64 = 0x1_0000;
const STACK_TOP: u64 = 0x8_0000;
/// The stack, zeroed at every boot.
const STACK_SIZE: u64 = 0x1_0000;
/// Lowest guest memory size the image fits in.
pub const MIN_MEMORY: u64 = 1 << 20;

/// Segment selectors of the flat GDT.
const CODE_SELECTOR: u16 = 0x08;
/// Data segment selector (for the VMM's segment setup).
pub const DATA_SELECTOR: u16 = 0x10;

// Variables: dwords at fixed addresses, so that a reset can simply zero their page.
const VAR_TICKS: i32 = VARS_BASE as i32;
const VAR_NMI: i32 = VARS_BASE as i32 + 4;
const VAR_NEXT_KICK: i32 = VARS_BASE as i32 + 8;
const VAR_KICKS: i32 = VARS_BASE as i32 + 12;
const VAR_HUNG: i32 = VARS_BASE as i32 + 16;
const VAR_DEVICE: i32 = VARS_BASE as i32 + 20;
const VAR_RELOAD: i32 = VARS_BASE as i32 + 24;

// Ports the guest uses (it is a program for this machine, so it knows them).
const COM1: i32 = 0x3f8;
const PIC1_CMD: i32 = 0x20;
const PIC1_DATA: i32 = 0x21;
const PIC2_CMD: i32 = 0xa0;
const PIC2_DATA: i32 = 0xa1;
const PIC_EOI: i32 = 0x20;
const PIT_CH0: i32 = 0x40;
const PIT_MODE: i32 = 0x43;
const PCI_ADDRESS: i32 = 0xcf8;
const PCI_DATA: i32 = 0xcfc;
/// Vector of IRQ 0 after the PIC is remapped.
const IRQ_BASE: u32 = 0x20;
const NMI_VECTOR: u32 = 2;

// i6300esb registers (offsets in configuration space and BAR0).
const ESB_ID: u32 = 0x25ab_8086;
const CFG_COMMAND: u32 = 0x04;
const CFG_BAR0: u32 = 0x10;
const CFG_WDT_CONFIG: u32 = 0x60;
const CFG_WDT_LOCK: u32 = 0x68;
const CMD_MEMORY: i32 = 0x0002;
const WDT_CONFIG_LINUX: i32 = 0x0003;
/// Config bit 2, WDT_PRE_SEL: count the preloads at the 1 MHz prescaler.
const WDT_PRE_SEL: i32 = 0x0004;
/// One preload unit at the 1 MHz prescaler (QEMU's 2^5 clocks of 30 ns).
const UNIT_1MHZ_NS: u128 = 960;
/// The device's preloads are 20 bits.
const MAX_PRELOAD: u32 = 0xF_FFFF;
const WDT_ENABLE: i32 = 0x02;
const BAR_PRELOAD1: i32 = 0x00;
const BAR_PRELOAD2: i32 = 0x04;
const BAR_RELOAD: i32 = 0x0c;
const UNLOCK1: i32 = 0x80;
const UNLOCK2: i32 = 0x86;
const RELOAD_KICK: i32 = 0x0100;
const RELOAD_CLEAR_FLAG: i32 = 0x0300;
const RELOAD_TIMEOUT_FLAG: i32 = 0x0200;

/// Errors building a guest image.
#[derive(Debug, thiserror::Error)]
pub enum GuestError {
    /// The assembler refused the program.
    #[error("assembler: {0}")]
    Assemble(#[from] iced_x86::IcedError),
}

/// A guest ready to load: memory contents and the CPU state to start it in.
#[derive(Clone, Debug)]
pub struct GuestImage {
    /// Blocks to copy into guest memory at their addresses.
    pub blocks: Vec<(u64, Vec<u8>)>,
    /// First instruction.
    pub entry: u64,
    /// Initial stack pointer.
    pub stack_top: u64,
    /// GDT base and limit.
    pub gdt: (u64, u16),
    /// IDT base and limit.
    pub idt: (u64, u16),
    /// Root of the identity-mapping page tables (CR3).
    pub cr3: u64,
    /// Code segment selector (a 64-bit code segment).
    pub code_selector: u16,
    /// Data segment selector (DS, ES, FS, GS, SS).
    pub data_selector: u16,
}

/// The GDT: null, 64-bit code (execute/read, L=1), flat data (read/write).
fn gdt() -> Vec<u8> {
    [0u64, 0x00af_9a00_0000_ffff, 0x00cf_9200_0000_ffff]
        .iter()
        .flat_map(|d| d.to_le_bytes())
        .collect()
}

/// A 64-bit interrupt gate to `handler` (present, DPL 0, type 0xE, no IST).
fn gate(handler: u64) -> [u8; 16] {
    let low = (u32::from(CODE_SELECTOR) << 16) | (handler as u32 & 0xffff);
    let high = (handler as u32 & 0xffff_0000) | 0x8e00;
    let mut g = [0u8; 16];
    g[..4].copy_from_slice(&low.to_le_bytes());
    g[4..8].copy_from_slice(&high.to_le_bytes());
    g[8..12].copy_from_slice(&((handler >> 32) as u32).to_le_bytes());
    g
}

/// Page tables identity-mapping the low 4 GiB with 2 MiB pages: the PML4, the
/// PDPT and [`PD_COUNT`] directories, contiguous from [`PML4_BASE`].
fn page_tables() -> Vec<u8> {
    const PRESENT_WRITABLE: u64 = 0x3;
    const LARGE: u64 = 0x80;
    let mut t = vec![0u8; (2 + PD_COUNT as usize) * 0x1000];
    let mut put = |table: u64, index: u64, entry: u64| {
        let at = (table - PML4_BASE + index * 8) as usize;
        t[at..at + 8].copy_from_slice(&entry.to_le_bytes());
    };
    put(PML4_BASE, 0, PDPT_BASE | PRESENT_WRITABLE);
    for dir in 0..PD_COUNT {
        let pd = PD_BASE + dir * 0x1000;
        put(PDPT_BASE, dir, pd | PRESENT_WRITABLE);
        for i in 0..512 {
            let phys = (dir << 30) | (i << 21);
            put(pd, i, phys | PRESENT_WRITABLE | LARGE);
        }
    }
    t
}

/// Null-terminated strings at fixed addresses.
struct Strings {
    bytes: Vec<u8>,
}

impl Strings {
    fn add(&mut self, s: &str) -> i32 {
        let addr = STRINGS_BASE as i32 + self.bytes.len() as i32;
        self.bytes.extend_from_slice(s.as_bytes());
        self.bytes.push(0);
        addr
    }
}

/// Helpers that emit common sequences.
struct Asm {
    a: CodeAssembler,
    puts: CodeLabel,
    print_dec: CodeLabel,
    print_hex: CodeLabel,
}

impl Asm {
    fn new() -> Result<Self, GuestError> {
        let mut a = CodeAssembler::new(64)?;
        let puts = a.create_label();
        let print_dec = a.create_label();
        let print_hex = a.create_label();
        Ok(Asm {
            a,
            puts,
            print_dec,
            print_hex,
        })
    }

    /// Ask the VMM to power the machine off (the paravirtual command port).
    fn power_off(&mut self) -> Result<(), GuestError> {
        self.a.mov(dx, PV_COMMAND_PORT as i32)?;
        self.a.mov(al, PV_CMD_POWEROFF as i32)?;
        self.a.out(dx, al)?;
        Ok(())
    }

    /// Print the string at `addr`.
    fn print(&mut self, addr: i32) -> Result<(), GuestError> {
        self.a.mov(rsi, i64::from(addr))?;
        self.a.call(self.puts)?;
        Ok(())
    }

    /// Select configuration register `reg` of the function in EBX; DX ends up at
    /// the data port byte that matches the register's low bits.
    fn cfg_select(&mut self, reg: u32) -> Result<(), GuestError> {
        self.a.mov(eax, ebx)?;
        self.a.or(eax, (reg & 0xfc) as i32)?;
        self.a.mov(dx, PCI_ADDRESS)?;
        self.a.out(dx, eax)?;
        self.a.mov(dx, PCI_DATA + (reg & 3) as i32)?;
        Ok(())
    }

    /// The unlock sequence ("U"): two word writes to the reload register.
    fn unlock(&mut self) -> Result<(), GuestError> {
        self.a.mov(word_ptr(rbp + BAR_RELOAD), UNLOCK1)?;
        self.a.mov(word_ptr(rbp + BAR_RELOAD), UNLOCK2)?;
        Ok(())
    }

    /// A Linux ping: unlock, then 0x0100 to the reload register.
    fn kick(&mut self) -> Result<(), GuestError> {
        self.unlock()?;
        self.a.mov(word_ptr(rbp + BAR_RELOAD), RELOAD_KICK)?;
        Ok(())
    }

    /// The Linux driver's `set_timeout` (both preloads, then a ping) and `start` (a
    /// ping, then the enable bit at 0x68), for the function in EBX with BAR0 in EBP.
    fn set_timeout_and_start(&mut self, preload: i32) -> Result<(), GuestError> {
        self.unlock()?;
        self.a.mov(dword_ptr(rbp + BAR_PRELOAD1), preload)?;
        self.unlock()?;
        self.a.mov(dword_ptr(rbp + BAR_PRELOAD2), preload)?;
        self.kick()?;
        self.kick()?;
        self.cfg_select(CFG_WDT_LOCK)?;
        self.a.mov(al, WDT_ENABLE)?;
        self.a.out(dx, al)?;
        Ok(())
    }

    /// The subroutines: puts (ESI), print_dec (EAX), print_hex (EAX, ECX digits).
    fn subroutines(&mut self) -> Result<(), GuestError> {
        let a = &mut self.a;
        // puts: the zero-terminated string at RSI to COM1, as one string-I/O
        // instruction (one exit per line instead of one per byte).
        a.set_label(&mut self.puts)?;
        a.mov(rdi, rsi)?;
        a.xor(eax, eax)?;
        a.mov(rcx, -1i64)?;
        a.repne().scasb()?;
        a.not(rcx)?;
        a.dec(rcx)?;
        a.mov(dx, COM1)?;
        a.rep().outsb()?;
        a.ret()?;

        // print_dec: EAX in decimal.
        let mut divide = a.create_label();
        let mut emit = a.create_label();
        a.set_label(&mut self.print_dec)?;
        a.mov(ecx, 10)?;
        a.xor(edi, edi)?;
        a.set_label(&mut divide)?;
        a.xor(edx, edx)?;
        a.div(ecx)?;
        a.add(dl, b'0' as i32)?;
        a.push(rdx)?;
        a.inc(edi)?;
        a.test(eax, eax)?;
        a.jnz(divide)?;
        a.mov(dx, COM1)?;
        a.set_label(&mut emit)?;
        a.pop(rax)?;
        a.out(dx, al)?;
        a.dec(edi)?;
        a.jnz(emit)?;
        a.ret()?;

        // print_hex: the low ECX nibbles of EAX, most significant first, lower case.
        let mut digit = a.create_label();
        let mut decimal = a.create_label();
        a.set_label(&mut self.print_hex)?;
        a.mov(edi, eax)?;
        a.push(rcx)?;
        a.neg(ecx)?;
        a.add(ecx, 8)?;
        a.shl(ecx, 2)?;
        a.rol(edi, cl)?;
        a.pop(rcx)?;
        a.mov(dx, COM1)?;
        a.set_label(&mut digit)?;
        a.rol(edi, 4)?;
        a.mov(eax, edi)?;
        a.and(eax, 0xf)?;
        a.add(al, b'0' as i32)?;
        a.cmp(al, b'9' as i32)?;
        a.jbe(decimal)?;
        a.add(al, (b'a' - b'9' - 1) as i32)?;
        a.set_label(&mut decimal)?;
        a.out(dx, al)?;
        a.dec(ecx)?;
        a.jnz(digit)?;
        a.ret()?;
        Ok(())
    }
}

/// Ticks of a timer at `hz` in `d`, rounded up, at least `min`.
fn ticks(d: Duration, min: u32, hz: u32) -> u32 {
    let t = d.as_micros().div_ceil(1_000_000 / u128::from(hz));
    u32::try_from(t).unwrap_or(u32::MAX).max(min)
}

/// The timer rate the watchdog guest runs at for `opts`: [`TICK_HZ`] when the kick
/// period and the hang time are whole numbers of its ticks, else [`FAST_TICK_HZ`],
/// so that periods down to 1 ms are honoured (rounded up to whole milliseconds).
pub fn tick_hz(opts: &GuestOptions) -> u32 {
    let period_us = u128::from(1_000_000 / TICK_HZ);
    let whole = |d: Duration| d.as_micros() % period_us == 0;
    if whole(opts.kick_every) && opts.hang_after.map_or(true, whole) {
        TICK_HZ
    } else {
        FAST_TICK_HZ
    }
}

/// Everything common to the guests: descriptor tables and interrupt handlers.
struct Frame {
    asm: Asm,
    strings: Strings,
    handlers: Vec<(u32, CodeLabel)>,
    exception_stubs: Vec<CodeLabel>,
    irq_other: CodeLabel,
}

impl Frame {
    fn new() -> Result<Frame, GuestError> {
        let mut asm = Asm::new()?;
        let exception_stubs = (0..32).map(|_| asm.a.create_label()).collect();
        let irq_other = asm.a.create_label();
        Ok(Frame {
            asm,
            strings: Strings { bytes: Vec::new() },
            handlers: Vec::new(),
            exception_stubs,
            irq_other,
        })
    }

    /// Interrupt handlers: timer tick, NMI flag, other IRQs, and exception stubs
    /// that report the vector and stop the CPU.
    fn handlers(&mut self) -> Result<(), GuestError> {
        let exc = self.strings.add("guest: unexpected exception 0x");
        let nl = self.strings.add("\n");
        let a = &mut self.asm.a;

        let mut timer = a.create_label();
        a.set_label(&mut timer)?;
        a.push(rax)?;
        a.inc(dword_ptr(VAR_TICKS))?;
        a.mov(al, PIC_EOI)?;
        a.out(PIC1_CMD, al)?;
        a.pop(rax)?;
        a.iretq()?;
        self.handlers.push((IRQ_BASE, timer));

        let mut nmi = a.create_label();
        a.set_label(&mut nmi)?;
        a.mov(dword_ptr(VAR_NMI), 1)?;
        a.iretq()?;
        self.handlers.push((NMI_VECTOR, nmi));

        a.set_label(&mut self.irq_other)?;
        a.push(rax)?;
        a.mov(al, PIC_EOI)?;
        a.out(PIC2_CMD, al)?;
        a.out(PIC1_CMD, al)?;
        a.pop(rax)?;
        a.iretq()?;

        let mut common = a.create_label();
        for (vector, stub) in self.exception_stubs.iter_mut().enumerate() {
            a.set_label(stub)?;
            a.push(vector as i32)?;
            a.jmp(common)?;
        }
        let mut stop = a.create_label();
        a.set_label(&mut common)?;
        a.cli()?;
        self.asm.print(exc)?;
        let a = &mut self.asm.a;
        a.pop(rax)?;
        a.mov(ecx, 2)?;
        a.call(self.asm.print_hex)?;
        self.asm.print(nl)?;
        let a = &mut self.asm.a;
        a.set_label(&mut stop)?;
        a.hlt()?;
        a.jmp(stop)?;
        Ok(())
    }

    /// Remap the PIC to vectors 0x20–0x2f with only IRQ 0 unmasked, and start PIT
    /// channel 0 as a rate generator at `hz` interrupts per second.
    fn start_timer(&mut self, hz: u32) -> Result<(), GuestError> {
        let a = &mut self.asm.a;
        // ICW1: edge triggered, cascade, ICW4 follows.
        a.mov(al, 0x11)?;
        a.out(PIC1_CMD, al)?;
        a.out(PIC2_CMD, al)?;
        // ICW2: vector bases.
        a.mov(al, IRQ_BASE as i32)?;
        a.out(PIC1_DATA, al)?;
        a.mov(al, IRQ_BASE as i32 + 8)?;
        a.out(PIC2_DATA, al)?;
        // ICW3: slave on IRQ 2.
        a.mov(al, 0x04)?;
        a.out(PIC1_DATA, al)?;
        a.mov(al, 0x02)?;
        a.out(PIC2_DATA, al)?;
        // ICW4: 8086 mode.
        a.mov(al, 0x01)?;
        a.out(PIC1_DATA, al)?;
        a.out(PIC2_DATA, al)?;
        // Masks: IRQ 0 only.
        a.mov(al, 0xfe)?;
        a.out(PIC1_DATA, al)?;
        a.mov(al, 0xff)?;
        a.out(PIC2_DATA, al)?;
        // Channel 0, low then high byte, mode 2 (rate generator), binary.
        let divisor = (PIT_HZ + hz / 2) / hz;
        a.mov(al, 0x34)?;
        a.out(PIT_MODE, al)?;
        a.mov(al, (divisor & 0xff) as i32)?;
        a.out(PIT_CH0, al)?;
        a.mov(al, (divisor >> 8) as i32)?;
        a.out(PIT_CH0, al)?;
        Ok(())
    }

    /// Scan bus 0 for the i6300esb; on success EBX holds its configuration address
    /// (enable bit set) and the device number is stored; otherwise print and stop.
    fn find_esb(&mut self) -> Result<(), GuestError> {
        let missing = self.strings.add("guest: no i6300esb found\n");
        let a = &mut self.asm.a;
        let mut scan = a.create_label();
        let mut found = a.create_label();
        let mut dead = a.create_label();
        a.xor(ecx, ecx)?;
        a.set_label(&mut scan)?;
        a.mov(eax, ecx)?;
        a.shl(eax, 11)?;
        a.or(eax, 0x8000_0000u32 as i32)?;
        a.mov(dx, PCI_ADDRESS)?;
        a.out(dx, eax)?;
        a.mov(dx, PCI_DATA)?;
        a.in_(eax, dx)?;
        a.cmp(eax, ESB_ID as i32)?;
        a.je(found)?;
        a.inc(ecx)?;
        a.cmp(ecx, 32)?;
        a.jb(scan)?;
        self.asm.print(missing)?;
        let a = &mut self.asm.a;
        a.set_label(&mut dead)?;
        a.cli()?;
        a.hlt()?;
        a.jmp(dead)?;
        a.set_label(&mut found)?;
        a.mov(dword_ptr(VAR_DEVICE), ecx)?;
        a.mov(ebx, ecx)?;
        a.shl(ebx, 11)?;
        a.or(ebx, 0x8000_0000u32 as i32)?;
        Ok(())
    }

    /// Firmware's part: size BAR0, place it at [`GUEST_BAR0`], turn memory decode
    /// on; EBP = BAR0 as read back. Prints the `found` line.
    fn program_bar0(&mut self) -> Result<(), GuestError> {
        let found = self.strings.add("guest: found i6300esb at 00:");
        let bar = self.strings.add(".0 bar0=0x");
        let nl = self.strings.add("\n");
        let asm = &mut self.asm;
        asm.cfg_select(CFG_BAR0)?;
        asm.a.mov(eax, -1)?;
        asm.a.out(dx, eax)?;
        asm.a.in_(eax, dx)?;
        asm.a.mov(eax, GUEST_BAR0 as i32)?;
        asm.a.out(dx, eax)?;
        asm.cfg_select(CFG_COMMAND)?;
        asm.a.in_(ax, dx)?;
        asm.a.or(ax, CMD_MEMORY)?;
        asm.a.out(dx, ax)?;
        asm.cfg_select(CFG_BAR0)?;
        asm.a.in_(eax, dx)?;
        asm.a.and(eax, !0xf)?;
        asm.a.mov(ebp, eax)?;
        asm.print(found)?;
        asm.a.mov(eax, dword_ptr(VAR_DEVICE))?;
        asm.a.mov(ecx, 2)?;
        asm.a.call(asm.print_hex)?;
        asm.print(bar)?;
        asm.a.mov(eax, ebp)?;
        asm.a.mov(ecx, 8)?;
        asm.a.call(asm.print_hex)?;
        asm.print(nl)?;
        Ok(())
    }

    /// Assemble at [`CODE_BASE`] and lay out memory.
    fn finish(mut self) -> Result<GuestImage, GuestError> {
        let r = self.asm.a.assemble_options(
            CODE_BASE,
            BlockEncoderOptions::RETURN_NEW_INSTRUCTION_OFFSETS,
        )?;
        let mut idt = vec![0u8; 256 * 16];
        let other = r.label_ip(&self.irq_other)?;
        for v in 0..256usize {
            let target = if v < 32 {
                r.label_ip(&self.exception_stubs[v])?
            } else {
                other
            };
            idt[v * 16..v * 16 + 16].copy_from_slice(&gate(target));
        }
        for (v, l) in &self.handlers {
            let v = *v as usize;
            idt[v * 16..v * 16 + 16].copy_from_slice(&gate(r.label_ip(l)?));
        }
        Ok(GuestImage {
            blocks: vec![
                (GDT_BASE, gdt()),
                (IDT_BASE, idt),
                (VARS_BASE, vec![0u8; VARS_SIZE]),
                (STRINGS_BASE, self.strings.bytes),
                (PML4_BASE, page_tables()),
                (STACK_TOP - STACK_SIZE, vec![0u8; STACK_SIZE as usize]),
                (CODE_BASE, r.inner.code_buffer),
            ],
            entry: CODE_BASE,
            stack_top: STACK_TOP,
            gdt: (GDT_BASE, 3 * 8 - 1),
            idt: (IDT_BASE, 256 * 16 - 1),
            cr3: PML4_BASE,
            code_selector: CODE_SELECTOR,
            data_selector: DATA_SELECTOR,
        })
    }
}

/// The preload that makes a stage last `d` at the 1 MHz prescaler: whole 960 ns units,
/// rounded up, within the device's 20 bits.
pub fn stage_units(d: Duration) -> u32 {
    let units = d.as_nanos().div_ceil(UNIT_1MHZ_NS);
    u32::try_from(units)
        .unwrap_or(MAX_PRELOAD)
        .clamp(1, MAX_PRELOAD)
}

/// The watchdog test guest with `opts` baked in.
pub fn watchdog_guest(opts: &GuestOptions) -> Result<GuestImage, GuestError> {
    let timeout = opts.timeout_secs.clamp(1, MAX_TIMEOUT_SECS);
    // What the guest writes at 0x60 and into both preloads, and the figure it prints.
    let (config, preload, shown) = match opts.stage_timeout {
        Some(d) => {
            let units = stage_units(d);
            let us = u64::from(units) * UNIT_1MHZ_NS as u64 / 1000;
            (WDT_CONFIG_LINUX | WDT_PRE_SEL, units as i32, us as i32)
        }
        None => (WDT_CONFIG_LINUX, (timeout << 9) as i32, timeout as i32),
    };
    let hz = tick_hz(opts);
    let kick_ticks = ticks(opts.kick_every, 1, hz) as i32;
    let hang_ticks = opts.hang_after.map(|d| ticks(d, 0, hz) as i32);

    let mut f = Frame::new()?;
    let boot = f.strings.add("guest: boot\n");
    let bs_watchdog = f
        .strings
        .add("guest: bootstatus=0x20 (previous reset caused by the watchdog)\n");
    let bs_zero = f.strings.add("guest: bootstatus=0\n");
    let armed = f.strings.add("guest: watchdog armed, timeout=");
    let unit = f.strings.add(if opts.stage_timeout.is_some() {
        " us per stage\n"
    } else {
        " s\n"
    });
    let kick = f.strings.add("guest: kick ");
    let nl = f.strings.add("\n");
    let hanging = f.strings.add("guest: hanging (no more kicks)\n");
    let pb_off = f.strings.add("guest: power button pressed, powering off\n");
    let pb_ignored = f.strings.add("guest: power button pressed, ignored\n");
    let nmi = f.strings.add("guest: NMI received\n");

    f.asm.print(boot)?;
    f.start_timer(hz)?;
    f.find_esb()?;
    f.program_bar0()?;

    // The Linux driver's probe, register by register.
    let asm = &mut f.asm;
    asm.cfg_select(CFG_WDT_CONFIG)?;
    asm.a.mov(ax, config)?;
    asm.a.out(dx, ax)?;
    asm.cfg_select(CFG_WDT_LOCK)?;
    asm.a.in_(al, dx)?;
    asm.a.xor(al, al)?;
    asm.a.out(dx, al)?;
    asm.unlock()?;
    asm.a.movzx(eax, word_ptr(rbp + BAR_RELOAD))?;
    asm.a.mov(dword_ptr(VAR_RELOAD), eax)?;
    asm.unlock()?;
    asm.a.mov(word_ptr(rbp + BAR_RELOAD), RELOAD_CLEAR_FLAG)?;
    asm.set_timeout_and_start(preload)?;

    // Boot status, as Linux reports it.
    let mut bs_clear = asm.a.create_label();
    let mut bs_done = asm.a.create_label();
    asm.a.test(dword_ptr(VAR_RELOAD), RELOAD_TIMEOUT_FLAG)?;
    asm.a.jz(bs_clear)?;
    asm.print(bs_watchdog)?;
    asm.a.jmp(bs_done)?;
    asm.a.set_label(&mut bs_clear)?;
    asm.print(bs_zero)?;
    asm.a.set_label(&mut bs_done)?;
    asm.print(armed)?;
    asm.a.mov(eax, shown)?;
    asm.a.call(asm.print_dec)?;
    asm.print(unit)?;

    // The daemon: sleep until the next tick, then see what is due.
    asm.a.mov(dword_ptr(VAR_NEXT_KICK), kick_ticks)?;
    asm.a.sti()?;
    let mut idle = asm.a.create_label();
    let mut no_nmi = asm.a.create_label();
    let mut no_button = asm.a.create_label();
    asm.a.set_label(&mut idle)?;
    asm.a.hlt()?;

    asm.a.cmp(dword_ptr(VAR_NMI), 0)?;
    asm.a.je(no_nmi)?;
    asm.a.mov(dword_ptr(VAR_NMI), 0)?;
    if opts.rearm_after_nmi {
        // QEMU's device reset itself when it fired: arm it again as the driver's
        // probe did (prescaler and output at 0x60, then set_timeout and start).
        asm.cfg_select(CFG_WDT_CONFIG)?;
        asm.a.mov(ax, config)?;
        asm.a.out(dx, ax)?;
        asm.set_timeout_and_start(preload)?;
    }
    asm.print(nmi)?;
    asm.a.set_label(&mut no_nmi)?;

    asm.a.mov(dx, PV_STATUS_PORT as i32)?;
    asm.a.in_(al, dx)?;
    asm.a.test(al, PV_STATUS_BUTTON as i32)?;
    asm.a.jz(no_button)?;
    asm.a.mov(al, PV_STATUS_BUTTON as i32)?;
    asm.a.out(dx, al)?;
    if opts.ignore_shutdown {
        asm.print(pb_ignored)?;
    } else {
        let mut off = asm.a.create_label();
        asm.print(pb_off)?;
        asm.a.mov(dx, PV_COMMAND_PORT as i32)?;
        asm.a.mov(al, PV_CMD_POWEROFF as i32)?;
        asm.a.set_label(&mut off)?;
        asm.a.out(dx, al)?;
        asm.a.cli()?;
        asm.a.hlt()?;
        asm.a.jmp(off)?;
    }
    asm.a.set_label(&mut no_button)?;

    asm.a.cmp(dword_ptr(VAR_HUNG), 0)?;
    asm.a.jne(idle)?;
    asm.a.mov(eax, dword_ptr(VAR_TICKS))?;
    if let Some(hang) = hang_ticks {
        let mut not_yet = asm.a.create_label();
        asm.a.cmp(eax, hang)?;
        asm.a.jb(not_yet)?;
        asm.a.mov(dword_ptr(VAR_HUNG), 1)?;
        asm.print(hanging)?;
        asm.a.jmp(idle)?;
        asm.a.set_label(&mut not_yet)?;
    }
    asm.a.cmp(eax, dword_ptr(VAR_NEXT_KICK))?;
    asm.a.jb(idle)?;
    asm.a.add(dword_ptr(VAR_NEXT_KICK), kick_ticks)?;
    asm.kick()?;
    asm.a.inc(dword_ptr(VAR_KICKS))?;
    asm.print(kick)?;
    asm.a.mov(eax, dword_ptr(VAR_KICKS))?;
    asm.a.call(asm.print_dec)?;
    asm.print(nl)?;
    asm.a.jmp(idle)?;

    asm.subroutines()?;
    f.handlers()?;
    f.finish()
}

/// MMIO writes the kick loop guest makes before its loop (arming the watchdog).
pub const KICK_LOOP_SETUP_WRITES: u64 = 6;

/// A benchmark guest: finds and maps the watchdog, arms it with the longest Linux
/// heartbeat (2046 s, so it never fires), writes a start mark to the paravirtual
/// mark port, performs `kicks` Linux pings (3 MMIO writes each), writes an end
/// mark, and powers off.
pub fn kick_loop_guest(kicks: u32) -> Result<GuestImage, GuestError> {
    let mut f = Frame::new()?;
    let boot = f.strings.add("guest: boot (kick loop)\n");
    f.asm.print(boot)?;
    f.find_esb()?;
    f.program_bar0()?;
    let asm = &mut f.asm;
    let preload = (LINUX_MAX_TIMEOUT_SECS << 9) as i32;
    asm.cfg_select(CFG_WDT_CONFIG)?;
    asm.a.mov(ax, WDT_CONFIG_LINUX)?;
    asm.a.out(dx, ax)?;
    asm.unlock()?;
    asm.a.mov(dword_ptr(rbp + BAR_PRELOAD1), preload)?;
    asm.unlock()?;
    asm.a.mov(dword_ptr(rbp + BAR_PRELOAD2), preload)?;
    asm.cfg_select(CFG_WDT_LOCK)?;
    asm.a.mov(al, WDT_ENABLE)?;
    asm.a.out(dx, al)?;
    let mut again = asm.a.create_label();
    asm.a.mov(dx, PV_MARK_PORT as i32)?;
    asm.a.mov(al, 1)?;
    asm.a.out(dx, al)?;
    asm.a.mov(esi, kicks.max(1) as i32)?;
    asm.a.set_label(&mut again)?;
    asm.kick()?;
    asm.a.dec(esi)?;
    asm.a.jnz(again)?;
    asm.a.mov(dx, PV_MARK_PORT as i32)?;
    asm.a.mov(al, 2)?;
    asm.a.out(dx, al)?;
    asm.power_off()?;
    let mut stop = asm.a.create_label();
    asm.a.set_label(&mut stop)?;
    asm.a.cli()?;
    asm.a.hlt()?;
    asm.a.jmp(stop)?;
    asm.subroutines()?;
    f.handlers()?;
    f.finish()
}

/// A guest that prints `guest: boot (reset request)` and asks the chipset for a
/// reset through the reset control register (0xCF9 ← 0x06), as Linux's
/// `reboot=pci` does.
pub fn reset_request_guest() -> Result<GuestImage, GuestError> {
    let mut f = Frame::new()?;
    let boot = f.strings.add("guest: boot (reset request)\n");
    f.asm.print(boot)?;
    let a = &mut f.asm.a;
    a.mov(dx, RESET_CONTROL_PORT as i32)?;
    a.mov(al, RESET_HARD as i32)?;
    a.out(dx, al)?;
    let mut stop = a.create_label();
    a.set_label(&mut stop)?;
    a.cli()?;
    a.hlt()?;
    a.jmp(stop)?;
    f.asm.subroutines()?;
    f.handlers()?;
    f.finish()
}

/// A guest that prints `guest: boot (halt)` and stops with interrupts off
/// (`cli; hlt`): only an NMI, a reset or the end of the VM moves it.
pub fn halt_guest() -> Result<GuestImage, GuestError> {
    let mut f = Frame::new()?;
    let boot = f.strings.add("guest: boot (halt)\n");
    let nmi = f.strings.add("guest: NMI received\n");
    f.asm.print(boot)?;
    let a = &mut f.asm.a;
    let mut wait = a.create_label();
    let mut sleep = a.create_label();
    a.cli()?;
    a.set_label(&mut wait)?;
    a.cmp(dword_ptr(VAR_NMI), 0)?;
    a.je(sleep)?;
    a.mov(dword_ptr(VAR_NMI), 0)?;
    f.asm.print(nmi)?;
    let a = &mut f.asm.a;
    a.jmp(wait)?;
    // An NMI between the check and `hlt` is reported at the next one.
    a.set_label(&mut sleep)?;
    a.hlt()?;
    a.jmp(wait)?;
    f.asm.subroutines()?;
    f.handlers()?;
    f.finish()
}

/// A guest that echoes COM2: on every timer tick it moves whatever the UART has
/// received back to its transmitter (polling the line status register), so bytes
/// the host writes to the agent socket come back on it.
pub fn com2_echo_guest() -> Result<GuestImage, GuestError> {
    const COM2: i32 = 0x2f8;
    const LSR: i32 = 5;
    const LSR_DATA_READY: i32 = 0x01;
    let mut f = Frame::new()?;
    let boot = f.strings.add("guest: boot (COM2 echo)\n");
    f.asm.print(boot)?;
    f.start_timer(TICK_HZ)?;
    let a = &mut f.asm.a;
    let mut idle = a.create_label();
    let mut drain = a.create_label();
    a.sti()?;
    a.set_label(&mut idle)?;
    a.hlt()?;
    a.set_label(&mut drain)?;
    a.mov(dx, COM2 + LSR)?;
    a.in_(al, dx)?;
    a.test(al, LSR_DATA_READY)?;
    a.jz(idle)?;
    a.mov(dx, COM2)?;
    a.in_(al, dx)?;
    a.out(dx, al)?;
    a.jmp(drain)?;
    f.asm.subroutines()?;
    f.handlers()?;
    f.finish()
}

/// A guest that touches what nobody decodes, reports what it read
/// (`guest: port 0x99=0x..`, `guest: mmio 0xfeb00000=0x........`) and powers off.
pub fn stray_access_guest() -> Result<GuestImage, GuestError> {
    const STRAY_PORT: i32 = 0x99;
    const STRAY_MMIO: i32 = 0xfeb0_0000u32 as i32;
    let mut f = Frame::new()?;
    let port = f.strings.add("guest: port 0x99=0x");
    let mmio = f.strings.add("guest: mmio 0xfeb00000=0x");
    let nl = f.strings.add("\n");
    let asm = &mut f.asm;
    asm.a.mov(dx, STRAY_PORT)?;
    asm.a.in_(al, dx)?;
    asm.a.mov(al, 0x55)?;
    asm.a.out(dx, al)?;
    asm.a.in_(al, dx)?;
    asm.a.movzx(ebx, al)?;
    asm.print(port)?;
    asm.a.mov(eax, ebx)?;
    asm.a.mov(ecx, 2)?;
    asm.a.call(asm.print_hex)?;
    asm.print(nl)?;
    asm.a.mov(ebp, STRAY_MMIO)?;
    asm.a.mov(dword_ptr(rbp), 0x1234_5678)?;
    asm.a.mov(ebx, dword_ptr(rbp))?;
    asm.print(mmio)?;
    asm.a.mov(eax, ebx)?;
    asm.a.mov(ecx, 8)?;
    asm.a.call(asm.print_hex)?;
    asm.print(nl)?;
    asm.power_off()?;
    asm.a.hlt()?;
    asm.subroutines()?;
    f.handlers()?;
    f.finish()
}

/// A guest that reaches the watchdog with unaligned accesses (split as QEMU splits them; docs/DESIGN.md) and
/// prints what it read: a word at 0xCFD and a dword at 0xCFE of the ID register
/// (`guest: cfd=0x....`, `guest: cfe=0x........`); a word write at 0xCFF after
/// clearing configuration dword 0x40, read back (`guest: cfg40=0x........`); the
/// unlock sequence as word writes of 0x8000 and 0x8600 at BAR0+0x0B, then 0x321 to
/// preload 1; dword reads at BAR0+0x0A and BAR0+0x0E (`guest: bar0+0a=0x........`,
/// `guest: bar0+0e=0x........`). Then it powers off.
pub fn unaligned_access_guest() -> Result<GuestImage, GuestError> {
    const CFG_SCRATCH: u32 = 0x40;
    let mut f = Frame::new()?;
    let boot = f.strings.add("guest: boot (unaligned)\n");
    let lines = [
        (f.strings.add("guest: cfd=0x"), 4),
        (f.strings.add("guest: cfe=0x"), 8),
        (f.strings.add("guest: cfg40=0x"), 8),
        (f.strings.add("guest: bar0+0a=0x"), 8),
        (f.strings.add("guest: bar0+0e=0x"), 8),
    ];
    let nl = f.strings.add("\n");
    f.asm.print(boot)?;
    f.find_esb()?;
    f.program_bar0()?;
    let asm = &mut f.asm;
    // Configuration space, values kept in R12-R14 (the print routines leave them).
    asm.cfg_select(0)?;
    asm.a.mov(dx, PCI_DATA + 1)?;
    asm.a.in_(ax, dx)?;
    asm.a.movzx(r12d, ax)?;
    asm.a.mov(dx, PCI_DATA + 2)?;
    asm.a.in_(eax, dx)?;
    asm.a.mov(r13d, eax)?;
    asm.cfg_select(CFG_SCRATCH)?;
    asm.a.xor(eax, eax)?;
    asm.a.out(dx, eax)?;
    asm.a.mov(dx, PCI_DATA + 3)?;
    asm.a.mov(ax, 0x5aa5)?;
    asm.a.out(dx, ax)?;
    asm.a.mov(dx, PCI_DATA)?;
    asm.a.in_(eax, dx)?;
    asm.a.mov(r14d, eax)?;
    // BAR0: an unlock sequence of unaligned word writes, then preload 1.
    asm.a.mov(word_ptr(rbp + 0x0b), UNLOCK1 << 8)?;
    asm.a.mov(word_ptr(rbp + 0x0b), UNLOCK2 << 8)?;
    asm.a.mov(dword_ptr(rbp + BAR_PRELOAD1), 0x321)?;
    asm.a.mov(r15d, dword_ptr(rbp + 0x0a))?;
    asm.a.mov(ebx, dword_ptr(rbp + 0x0e))?;
    for (i, (label, digits)) in lines.into_iter().enumerate() {
        asm.print(label)?;
        match i {
            0 => asm.a.mov(eax, r12d)?,
            1 => asm.a.mov(eax, r13d)?,
            2 => asm.a.mov(eax, r14d)?,
            3 => asm.a.mov(eax, r15d)?,
            _ => asm.a.mov(eax, ebx)?,
        }
        asm.a.mov(ecx, digits)?;
        asm.a.call(asm.print_hex)?;
        asm.print(nl)?;
    }
    asm.power_off()?;
    asm.a.hlt()?;
    asm.subroutines()?;
    f.handlers()?;
    f.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts() -> GuestOptions {
        GuestOptions {
            timeout_secs: 30,
            kick_every: Duration::from_secs(1),
            hang_after: None,
            ignore_shutdown: false,
            stage_timeout: None,
            rearm_after_nmi: false,
        }
    }

    #[test]
    fn image_is_small_and_fits_its_map() {
        let img = watchdog_guest(&opts()).unwrap();
        let code = &img.blocks.iter().find(|b| b.0 == CODE_BASE).unwrap().1;
        assert!(code.len() < 2048, "code is {} bytes", code.len());
        let strings = &img.blocks.iter().find(|b| b.0 == STRINGS_BASE).unwrap().1;
        assert!(strings.len() < 0x1000);
        assert!(CODE_BASE + code.len() as u64 <= STACK_TOP - STACK_SIZE);
        let idt = &img.blocks.iter().find(|b| b.0 == IDT_BASE).unwrap().1;
        assert_eq!(idt.len(), 4096);
        // Vector 2 points into the code, as an interrupt gate through selector 0x08.
        let g = &idt[32..48];
        assert_eq!(u16::from_le_bytes([g[2], g[3]]), CODE_SELECTOR);
        assert_eq!(u16::from_le_bytes([g[4], g[5]]), 0x8e00);
        let target = u32::from(u16::from_le_bytes([g[0], g[1]]))
            | (u32::from(u16::from_le_bytes([g[6], g[7]])) << 16);
        assert!((CODE_BASE..CODE_BASE + code.len() as u64).contains(&u64::from(target)));
    }

    #[test]
    fn options_are_baked_in() {
        let a = watchdog_guest(&opts()).unwrap();
        let mut o = opts();
        o.timeout_secs = 1;
        let b = watchdog_guest(&o).unwrap();
        let code = |i: &GuestImage| i.blocks.last().unwrap().1.clone();
        assert_ne!(code(&a), code(&b));
        // The preload 30 << 9 = 0x3c00 appears as an immediate in the code.
        let needle = 0x3c00u32.to_le_bytes();
        assert!(code(&a).windows(4).any(|w| w == needle));
    }

    #[test]
    fn a_stage_timeout_selects_the_1_mhz_prescaler() {
        assert_eq!(stage_units(Duration::from_millis(2)), 2084);
        assert_eq!(stage_units(Duration::from_nanos(960)), 1);
        assert_eq!(stage_units(Duration::ZERO), 1);
        assert_eq!(stage_units(Duration::from_secs(5)), MAX_PRELOAD);
        let mut o = opts();
        o.stage_timeout = Some(Duration::from_millis(2));
        let code = watchdog_guest(&o).unwrap().blocks.last().unwrap().1.clone();
        // mov ax, 0x0007 (Linux's 0x0003 plus WDT_PRE_SEL), and the preload 2084 = 0x824.
        assert!(code.windows(4).any(|w| w == [0x66, 0xb8, 0x07, 0x00]));
        assert!(code.windows(4).any(|w| w == 2084u32.to_le_bytes()));
        let slow = watchdog_guest(&opts())
            .unwrap()
            .blocks
            .last()
            .unwrap()
            .1
            .clone();
        assert!(slow.windows(4).any(|w| w == [0x66, 0xb8, 0x03, 0x00]));
        assert!(!slow.windows(4).any(|w| w == [0x66, 0xb8, 0x07, 0x00]));
    }

    #[test]
    fn tick_rounding() {
        assert_eq!(ticks(Duration::from_secs(1), 1, TICK_HZ), 100);
        assert_eq!(ticks(Duration::from_millis(15), 1, TICK_HZ), 2);
        assert_eq!(ticks(Duration::ZERO, 1, TICK_HZ), 1);
        assert_eq!(ticks(Duration::ZERO, 0, TICK_HZ), 0);
        assert_eq!(ticks(Duration::from_millis(15), 1, FAST_TICK_HZ), 15);
        assert_eq!(ticks(Duration::from_micros(1500), 1, FAST_TICK_HZ), 2);
        assert_eq!(ticks(Duration::from_millis(1), 1, FAST_TICK_HZ), 1);
    }

    #[test]
    fn periods_finer_than_10_ms_run_the_timer_at_1_khz() {
        let with = |kick_us: u64, hang_us: Option<u64>| GuestOptions {
            kick_every: Duration::from_micros(kick_us),
            hang_after: hang_us.map(Duration::from_micros),
            ..opts()
        };
        let cases = [
            (1_000_000, None, TICK_HZ),
            (10_000, Some(3_000_000), TICK_HZ),
            (500_000, Some(20_000), TICK_HZ),
            (1_000, None, FAST_TICK_HZ),
            (9_000, None, FAST_TICK_HZ),
            (15_000, None, FAST_TICK_HZ),
            (1_000_000, Some(1_005_000), FAST_TICK_HZ),
        ];
        for (kick, hang, hz) in cases {
            assert_eq!(tick_hz(&with(kick, hang)), hz, "{kick} µs, {hang:?}");
        }
        // The PIT divisor baked into the code: 1193 (0x04a9) at 1 kHz, 11932
        // (0x2e9c) at 100 Hz, written low byte then high byte.
        let code = |o: &GuestOptions| watchdog_guest(o).unwrap().blocks.last().unwrap().1.clone();
        let has_divisor = |c: &[u8], d: u16| {
            let [lo, hi] = d.to_le_bytes();
            // mov al, lo; out 0x40, al; mov al, hi; out 0x40, al
            c.windows(8)
                .any(|w| w == [0xb0, lo, 0xe6, 0x40, 0xb0, hi, 0xe6, 0x40])
        };
        let slow = code(&opts());
        let fast = code(&with(2_000, None));
        assert!(has_divisor(&slow, 11932) && !has_divisor(&slow, 1193));
        assert!(has_divisor(&fast, 1193) && !has_divisor(&fast, 11932));
    }
}
