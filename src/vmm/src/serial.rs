//! The two 16550 UARTs: COM1 for the console, COM2 as a byte pipe to a guest agent.
//!
//! Both are vm-superio's [`Serial`] on the port I/O bus. COM1's output is split
//! into lines that become [`MachineEvent::ConsoleLine`]s. COM2 is bridged to a Unix
//! socket (the host end of a `qemu-ga -m isa-serial` channel): what the guest
//! transmits is written to the socket, and what arrives on the socket is queued
//! into the receive FIFO as the guest makes room for it.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

use vm_superio::{Serial, Trigger};
use vmm_sys_util::eventfd::EventFd;

use vm_device::bus::{PioAddress, PioAddressOffset};
use vm_device::MutDevicePio;

use super::platform::{EventQueue, MachineEvent};

/// COM1's first port.
pub const COM1_BASE: u64 = 0x3f8;
/// COM1's ISA interrupt line.
pub const COM1_IRQ: u32 = 4;
/// COM2's first port.
pub const COM2_BASE: u64 = 0x2f8;
/// COM2's ISA interrupt line.
pub const COM2_IRQ: u32 = 3;
/// Number of registers a 16550 decodes.
pub const UART_REGS: u64 = 8;
/// A console line longer than this is cut into pieces.
pub const MAX_LINE: usize = 4096;
/// Host-to-guest bytes held back while the guest's FIFO is full.
const MAX_PENDING: usize = 64 * 1024;

/// An interrupt line: an eventfd registered with KVM as an irqfd.
pub struct IrqLine(pub EventFd);

impl Trigger for IrqLine {
    type E = io::Error;

    fn trigger(&self) -> io::Result<()> {
        self.0.write(1)
    }
}

impl IrqLine {
    fn try_clone(&self) -> io::Result<IrqLine> {
        Ok(IrqLine(self.0.try_clone()?))
    }
}

/// COM1's output: bytes in, [`MachineEvent::ConsoleLine`]s out.
pub struct LineSplitter {
    line: Vec<u8>,
    events: Arc<EventQueue>,
}

impl LineSplitter {
    /// A splitter that queues its lines on `events`.
    pub fn new(events: Arc<EventQueue>) -> Self {
        LineSplitter {
            line: Vec::new(),
            events,
        }
    }

    /// Emit what is left of an unfinished line (at reset).
    pub fn flush_line(&mut self) {
        if !self.line.is_empty() {
            let text = String::from_utf8_lossy(&self.line).into_owned();
            self.line.clear();
            self.events.push(MachineEvent::ConsoleLine(text));
        }
    }
}

impl Write for LineSplitter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        for &b in buf {
            match b {
                b'\n' => {
                    let text = String::from_utf8_lossy(&self.line).into_owned();
                    self.line.clear();
                    self.events.push(MachineEvent::ConsoleLine(text));
                }
                b'\r' => {}
                _ => {
                    self.line.push(b);
                    if self.line.len() >= MAX_LINE {
                        self.flush_line();
                    }
                }
            }
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// COM2's output: bytes go to the agent socket; if the peer does not keep up,
/// they are dropped and counted rather than stalling the vCPU.
pub struct AgentWriter {
    stream: UnixStream,
    dropped: Arc<AtomicU64>,
}

impl AgentWriter {
    /// One non-blocking send that never raises SIGPIPE. (`O_NONBLOCK` would be
    /// shared with the blocking reader's clone of the socket; a per-call flag is not.)
    fn send(&self, buf: &[u8]) -> io::Result<usize> {
        socket2::SockRef::from(&self.stream)
            .send_with_flags(buf, libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL)
    }
}

impl Write for AgentWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self.send(buf) {
            Ok(n) => {
                if n < buf.len() {
                    self.dropped
                        .fetch_add((buf.len() - n) as u64, Ordering::Relaxed);
                }
            }
            Err(e) => {
                let n = self.dropped.fetch_add(buf.len() as u64, Ordering::Relaxed);
                if n == 0 {
                    log::warn!("com2: agent socket write failed: {e}; dropping output");
                }
            }
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A 16550 on the port I/O bus.
pub struct SerialPort<W: Write + Send> {
    name: &'static str,
    uart: Option<Serial<IrqLine, vm_superio::serial::NoEvents, W>>,
    irq: IrqLine,
    pending: VecDeque<u8>,
    room: Arc<Condvar>,
    odd_accesses: u64,
}

impl<W: Write + Send> SerialPort<W> {
    /// A UART raising `irq` and sending its output to `out`.
    pub fn new(name: &'static str, irq: EventFd, out: W) -> io::Result<Self> {
        let irq = IrqLine(irq);
        Ok(SerialPort {
            name,
            uart: Some(Serial::new(irq.try_clone()?, out)),
            irq,
            pending: VecDeque::new(),
            room: Arc::new(Condvar::new()),
            odd_accesses: 0,
        })
    }

    /// The UART's output sink.
    pub fn writer_mut(&mut self) -> Option<&mut W> {
        self.uart.as_mut().map(|u| u.writer_mut())
    }

    /// Back to power-on register state (the output sink and pending input stay).
    pub fn reset(&mut self) {
        if let Some(old) = self.uart.take() {
            let out = old.into_writer();
            match self.irq.try_clone() {
                Ok(irq) => self.uart = Some(Serial::new(irq, out)),
                Err(e) => log::error!("{}: cannot reset: {e}", self.name),
            }
        }
    }

    /// Queue bytes for the guest to receive; false if the backlog is full.
    fn offer(&mut self, bytes: &[u8]) -> bool {
        if self.pending.len() >= MAX_PENDING {
            return false;
        }
        self.pending.extend(bytes);
        self.refill();
        true
    }

    /// Move held-back input into the receive FIFO as far as it has room.
    fn refill(&mut self) {
        let Some(uart) = self.uart.as_mut() else {
            return;
        };
        while !self.pending.is_empty() && uart.fifo_capacity() > 0 {
            let (front, _) = self.pending.as_slices();
            let n = front.len().min(uart.fifo_capacity());
            match uart.enqueue_raw_bytes(&front[..n]) {
                Ok(done) => {
                    self.pending.drain(..done);
                }
                Err(e) => {
                    log::warn!("{}: cannot queue input: {e:?}", self.name);
                    break;
                }
            }
        }
        if self.pending.len() < MAX_PENDING {
            self.room.notify_all();
        }
    }
}

impl<W: Write + Send> MutDevicePio for SerialPort<W> {
    fn pio_read(&mut self, _base: PioAddress, offset: PioAddressOffset, data: &mut [u8]) {
        self.read(u64::from(offset), data)
    }

    fn pio_write(&mut self, _base: PioAddress, offset: PioAddressOffset, data: &[u8]) {
        self.write(u64::from(offset), data)
    }
}

impl<W: Write + Send> SerialPort<W> {
    /// A read of the register at `offset` (0..8); only byte accesses are obeyed.
    pub fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0xff);
        if data.len() != 1 || offset >= UART_REGS {
            self.odd_accesses += 1;
            return;
        }
        if let Some(uart) = self.uart.as_mut() {
            data[0] = uart.read(offset as u8);
        }
        if !self.pending.is_empty() {
            self.refill();
        }
    }

    /// A write of the register at `offset` (0..8); only byte accesses are obeyed.
    pub fn write(&mut self, offset: u64, data: &[u8]) {
        if data.len() != 1 || offset >= UART_REGS {
            self.odd_accesses += 1;
            return;
        }
        if let Some(uart) = self.uart.as_mut() {
            if let Err(e) = uart.write(offset as u8, data[0]) {
                log::debug!("{}: write failed: {e:?}", self.name);
            }
        }
    }
}

/// COM1 as the machine builds it.
pub type ConsolePort = SerialPort<LineSplitter>;
/// COM2 bridged to an agent socket.
pub type AgentPort = SerialPort<AgentWriter>;

/// Build COM2 on `stream` and start the thread that feeds the socket's bytes to it.
///
/// The thread ends when the socket reaches end of file or fails; [`AgentBridge::stop`]
/// shuts the socket down to make that happen.
pub struct AgentBridge {
    stream: UnixStream,
    thread: Option<JoinHandle<()>>,
    /// Bytes the guest sent that the socket did not take.
    pub dropped: Arc<AtomicU64>,
}

impl AgentBridge {
    /// COM2 on `stream`, raising `irq`.
    pub fn new(
        stream: UnixStream,
        irq: EventFd,
    ) -> io::Result<(AgentBridge, Arc<Mutex<AgentPort>>)> {
        let dropped = Arc::new(AtomicU64::new(0));
        let out = stream.try_clone()?;
        let port = Arc::new(Mutex::new(SerialPort::new(
            "com2",
            irq,
            AgentWriter {
                stream: out,
                dropped: dropped.clone(),
            },
        )?));
        let mut input = stream.try_clone()?;
        let feed = port.clone();
        let thread = std::thread::Builder::new()
            .name("vmpulse-com2".into())
            .spawn(move || {
                let mut buf = [0u8; 512];
                loop {
                    let n = match input.read(&mut buf) {
                        Ok(0) => return,
                        Ok(n) => n,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                        Err(e) => {
                            log::debug!("com2: agent socket read ended: {e}");
                            return;
                        }
                    };
                    let mut port = feed.lock().unwrap_or_else(|e| e.into_inner());
                    loop {
                        if port.offer(&buf[..n]) {
                            break;
                        }
                        let room = port.room.clone();
                        port = room.wait(port).unwrap_or_else(|e| e.into_inner());
                    }
                }
            })?;
        Ok((
            AgentBridge {
                stream,
                thread: Some(thread),
                dropped,
            },
            port,
        ))
    }

    /// Close the socket and wait for the feeding thread.
    pub fn stop(&mut self, port: &Mutex<AgentPort>) {
        let _ = self.stream.shutdown(std::net::Shutdown::Both);
        // Wake the thread if it waits for room in the FIFO.
        {
            let mut p = port.lock().unwrap_or_else(|e| e.into_inner());
            p.pending.clear();
            p.room.notify_all();
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmm_sys_util::eventfd::EFD_NONBLOCK;

    // 16550 register offsets used below.
    const THR: u64 = 0;
    const RBR: u64 = 0;
    const LSR: u64 = 5;
    const LSR_DATA_READY: u8 = 0x01;

    #[test]
    fn console_lines_are_split_and_cr_dropped() {
        let events = Arc::new(EventQueue::new().unwrap());
        let mut port = SerialPort::new(
            "com1",
            EventFd::new(EFD_NONBLOCK).unwrap(),
            LineSplitter::new(events.clone()),
        )
        .unwrap();
        for b in b"guest: boot\r\nkick 1\nhalf" {
            port.write(THR, &[*b]);
        }
        // A 2-byte access is not a 16550 access: ignored.
        port.write(THR, b"xy");
        assert_eq!(
            events.drain(),
            vec![
                MachineEvent::ConsoleLine("guest: boot".into()),
                MachineEvent::ConsoleLine("kick 1".into())
            ]
        );
        port.reset();
        port.writer_mut().unwrap().flush_line();
        assert_eq!(
            events.drain(),
            vec![MachineEvent::ConsoleLine("half".into())]
        );
    }

    #[test]
    fn agent_bridge_carries_bytes_both_ways() {
        let (host, mut peer) = UnixStream::pair().unwrap();
        peer.set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .unwrap();
        let (mut bridge, port) =
            AgentBridge::new(host, EventFd::new(EFD_NONBLOCK).unwrap()).unwrap();
        for b in b"{\"execute\":\"guest-ping\"}\n" {
            port.lock().unwrap().write(THR, &[*b]);
        }
        let mut got = vec![0u8; 25];
        peer.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"{\"execute\":\"guest-ping\"}\n");

        peer.write_all(b"{\"return\": {}}\n").unwrap();
        let give_up = std::time::Instant::now() + std::time::Duration::from_secs(5);
        let mut received = Vec::new();
        while received.len() < 15 && std::time::Instant::now() < give_up {
            let mut p = port.lock().unwrap();
            let mut lsr = [0u8];
            p.read(LSR, &mut lsr);
            if lsr[0] & LSR_DATA_READY != 0 {
                let mut b = [0u8];
                p.read(RBR, &mut b);
                received.push(b[0]);
            } else {
                drop(p);
                std::thread::yield_now();
            }
        }
        assert_eq!(&received, b"{\"return\": {}}\n");
        bridge.stop(&port);
    }

    #[test]
    fn a_peer_that_does_not_read_never_blocks_the_guest() {
        let (host, peer) = UnixStream::pair().unwrap();
        let (mut bridge, port) =
            AgentBridge::new(host, EventFd::new(EFD_NONBLOCK).unwrap()).unwrap();
        // Far more than a socket buffer holds; every write returns.
        for _ in 0..(1 << 20) {
            port.lock().unwrap().write(THR, b"x");
        }
        assert!(bridge.dropped.load(Ordering::Relaxed) > 0);
        // A closed peer: writes fail quietly (no SIGPIPE), counted as dropped.
        drop(peer);
        let before = bridge.dropped.load(Ordering::Relaxed);
        port.lock().unwrap().write(THR, b"y");
        assert_eq!(bridge.dropped.load(Ordering::Relaxed), before + 1);
        bridge.stop(&port);
    }
}
