//! Machine control ports: the PC reset control register and a small paravirtual
//! control block for poweroff, the power button and benchmark marks.
//!
//! Port map (byte registers):
//!
//! | port | dir | meaning |
//! |---|---|---|
//! | 0xCF9 | w | reset control: 0x06 or 0x0E requests a reset ([`MachineEvent::GuestReset`]); other values are stored |
//! | 0xCF9 | r | the last value written |
//! | 0x510 | w | command: 0x01 powers the machine off ([`MachineEvent::GuestPoweroff`]); other values are counted and ignored |
//! | 0x511 | r | status: bit 0 = the power button was pressed (latched) |
//! | 0x511 | w | write 1 to bit 0 to acknowledge the press |
//! | 0x512 | w | mark: the host records the value and the time (for benchmarks) |
//! | 0x513 | r | signature 0x56 (`'V'`), to detect the block |
//!
//! Everything else in 0x510–0x513 reads 0xFF and ignores writes. A poweroff or reset
//! request parks the vCPU; the machine's owner decides what happens next.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use vm_device::bus::{PioAddress, PioAddressOffset};
use vm_device::MutDevicePio;

use super::platform::{EventQueue, MachineEvent};

/// The reset control register's port.
pub const RESET_CONTROL_PORT: u16 = 0xcf9;
/// Bits 1 (system reset) and 2 (reset CPU): 0x06 is a hard reset, 0x0E adds a full
/// power cycle; both mean "reset the machine" here.
const RESET_CPU: u8 = 0x04;
const RESET_SYSTEM: u8 = 0x02;
/// The value a guest writes for a hard reset.
pub const RESET_HARD: u8 = RESET_CPU | RESET_SYSTEM;

/// First port of the paravirtual control block.
pub const PV_BASE: u16 = 0x510;
/// Ports the block decodes.
pub const PV_PORTS: u16 = 4;
/// Command register port.
pub const PV_COMMAND_PORT: u16 = PV_BASE;
/// Status register port.
pub const PV_STATUS_PORT: u16 = PV_BASE + 1;
/// Mark register port.
pub const PV_MARK_PORT: u16 = PV_BASE + 2;
/// Signature register port.
pub const PV_SIGNATURE_PORT: u16 = PV_BASE + 3;
/// Command: power the machine off.
pub const PV_CMD_POWEROFF: u8 = 0x01;
/// Status bit: the power button was pressed.
pub const PV_STATUS_BUTTON: u8 = 0x01;
/// What the signature register reads.
pub const PV_SIGNATURE: u8 = b'V';

/// What a control port tells the vCPU loop: the guest asked to stop running.
#[derive(Default)]
pub struct HaltRequest(AtomicBool);

impl HaltRequest {
    /// Ask the vCPU loop to park after this exit.
    pub fn raise(&self) {
        self.0.store(true, Ordering::SeqCst);
    }
    /// Take the request (the vCPU loop does this after every exit).
    pub fn take(&self) -> bool {
        self.0.swap(false, Ordering::SeqCst)
    }
}

/// Port 0xCF9.
pub struct ResetControl {
    value: u8,
    events: Arc<EventQueue>,
    halt: Arc<HaltRequest>,
}

impl ResetControl {
    /// The register, reporting on `events` and parking the vCPU through `halt`.
    pub fn new(events: Arc<EventQueue>, halt: Arc<HaltRequest>) -> Self {
        ResetControl {
            value: 0,
            events,
            halt,
        }
    }
}

impl ResetControl {
    /// A read of the register (`offset` is ignored: the register is one byte).
    pub fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
        data[0] = self.value;
    }

    /// A write of the register.
    pub fn write(&mut self, _offset: u64, data: &[u8]) {
        let v = data[0];
        if v & RESET_CPU != 0 && v & RESET_SYSTEM != 0 {
            self.value = 0;
            self.events.push(MachineEvent::GuestReset);
            self.halt.raise();
        } else {
            self.value = v;
        }
    }
}

/// The paravirtual control block at 0x510.
pub struct PvControl {
    events: Arc<EventQueue>,
    halt: Arc<HaltRequest>,
    button: Arc<AtomicBool>,
    marks: Arc<Mutex<Vec<(u8, Instant)>>>,
    ignored: Arc<AtomicU64>,
}

impl PvControl {
    /// The block; `button` is the power button latch the host sets.
    pub fn new(events: Arc<EventQueue>, halt: Arc<HaltRequest>, button: Arc<AtomicBool>) -> Self {
        PvControl {
            events,
            halt,
            button,
            marks: Arc::new(Mutex::new(Vec::new())),
            ignored: Arc::new(AtomicU64::new(0)),
        }
    }

    /// The marks the guest wrote, with the time each arrived.
    pub fn marks(&self) -> Arc<Mutex<Vec<(u8, Instant)>>> {
        self.marks.clone()
    }

    /// Count of accesses the block ignored.
    pub fn ignored(&self) -> Arc<AtomicU64> {
        self.ignored.clone()
    }
}

impl PvControl {
    /// A read at `offset` (0..4) of the block.
    pub fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0xff);
        match (offset, data.len()) {
            (1, 1) => data[0] = u8::from(self.button.load(Ordering::SeqCst)) * PV_STATUS_BUTTON,
            (3, 1) => data[0] = PV_SIGNATURE,
            _ => {
                self.ignored.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// A write at `offset` (0..4) of the block.
    pub fn write(&mut self, offset: u64, data: &[u8]) {
        match (offset, data.len(), data[0]) {
            (0, 1, PV_CMD_POWEROFF) => {
                self.events.push(MachineEvent::GuestPoweroff);
                self.halt.raise();
            }
            (1, 1, v) => {
                if v & PV_STATUS_BUTTON != 0 {
                    self.button.store(false, Ordering::SeqCst);
                }
            }
            (2, 1, v) => self
                .marks
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push((v, Instant::now())),
            _ => {
                self.ignored.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// Both blocks on vm-device's port bus.
macro_rules! pio_device {
    ($t:ty) => {
        impl MutDevicePio for $t {
            fn pio_read(&mut self, _base: PioAddress, offset: PioAddressOffset, data: &mut [u8]) {
                self.read(u64::from(offset), data)
            }

            fn pio_write(&mut self, _base: PioAddress, offset: PioAddressOffset, data: &[u8]) {
                self.write(u64::from(offset), data)
            }
        }
    };
}
pio_device!(ResetControl);
pio_device!(PvControl);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reset_control_requests_reset_on_06_and_0e_only() {
        let events = Arc::new(EventQueue::new().unwrap());
        let halt = Arc::new(HaltRequest::default());
        let mut r = ResetControl::new(events.clone(), halt.clone());
        r.write(0, &[0x02]);
        let mut b = [0u8];
        r.read(0, &mut b);
        assert_eq!(b, [0x02]);
        assert!(events.drain().is_empty());
        assert!(!halt.take());
        for v in [0x06u8, 0x0e] {
            r.write(0, &[v]);
            assert_eq!(events.drain(), vec![MachineEvent::GuestReset]);
            assert!(halt.take());
        }
    }

    #[test]
    fn pv_block_button_poweroff_and_marks() {
        let events = Arc::new(EventQueue::new().unwrap());
        let halt = Arc::new(HaltRequest::default());
        let button = Arc::new(AtomicBool::new(false));
        let mut pv = PvControl::new(events.clone(), halt.clone(), button.clone());
        let mut b = [0u8];
        pv.read(1, &mut b);
        assert_eq!(b, [0]);
        pv.read(3, &mut b);
        assert_eq!(b, [b'V']);
        button.store(true, Ordering::SeqCst);
        pv.read(1, &mut b);
        assert_eq!(b, [1]);
        pv.write(1, &[1]);
        pv.read(1, &mut b);
        assert_eq!(b, [0]);
        pv.write(0, &[0x07]);
        assert!(events.drain().is_empty());
        assert_eq!(pv.ignored().load(Ordering::Relaxed), 1);
        pv.write(2, &[9]);
        assert_eq!(pv.marks().lock().unwrap()[0].0, 9);
        pv.write(0, &[PV_CMD_POWEROFF]);
        assert_eq!(events.drain(), vec![MachineEvent::GuestPoweroff]);
        assert!(halt.take());
    }
}
