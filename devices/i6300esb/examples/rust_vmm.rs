//! The i6300esb in a rust-vmm shaped VMM: a vm-device `IoManager` routes the
//! guest's port and memory accesses, an event-manager loop runs the watchdog's
//! timer, and nothing connects the two but the device itself.
//!
//! A thread plays the Linux driver (`i6300esb.ko`) through the buses as a vCPU
//! would after its exits: probe, a 1 s heartbeat, a few pings, then it hangs.
//! The event loop fires the watchdog about 1 s (2 × 512 units of 983,040 ns)
//! after the last ping; the action handler resets the device as a VMM would.
//!
//! Run with `cargo run -p i6300esb --all-features --example rust_vmm`.

use std::process::ExitCode;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use event_manager::{EventManager, SubscriberOps};
use i6300esb::adapters::timer::WatchdogTimer;
use i6300esb::{ActionSink, Expiry, I6300Esb, MonotonicClock, NoEvents, WatchdogAction};
use vm_device::bus::{MmioAddress, MmioRange, PioAddress, PioAddressOffset, PioRange};
use vm_device::device_manager::{IoManager, MmioManager, PioManager};
use vm_device::MutDevicePio;

type Esb = Arc<Mutex<I6300Esb<MonotonicClock>>>;

/// Where the firmware puts BAR0, and the i6300esb's slot (00:04.0, as in QEMU).
const BAR0: u64 = 0xfebf_1000;
const ESB_DEVICE: u32 = 4;
const PCI_CONFIG_PORT: u16 = 0xcf8;

// ---- The VMM side: this is all the wiring there is. ----

/// PCI configuration mechanism #1 at 0xCF8 (address) and 0xCFC (data), with the
/// i6300esb as the only function on bus 0.
struct PciConfigIo {
    address: u32,
    esb: Esb,
}

impl PciConfigIo {
    /// The configuration offset the latched address selects, if it is ours.
    fn target(&self, data_offset: u64) -> Option<usize> {
        let enabled = self.address & 0x8000_0000 != 0;
        let bdf = (self.address >> 8) & 0xffff;
        (enabled && bdf == ESB_DEVICE << 3)
            .then(|| (self.address & 0xfc) as usize + data_offset as usize)
    }
}

impl MutDevicePio for PciConfigIo {
    fn pio_read(&mut self, _base: PioAddress, offset: PioAddressOffset, data: &mut [u8]) {
        match offset {
            0..=3 if data.len() == 4 => data.copy_from_slice(&self.address.to_le_bytes()),
            4..=7 => match self.target(u64::from(offset) - 4) {
                Some(reg) => self.esb.lock().unwrap().config_read(reg, data),
                None => data.fill(0xff),
            },
            _ => data.fill(0xff),
        }
    }

    fn pio_write(&mut self, _base: PioAddress, offset: PioAddressOffset, data: &[u8]) {
        match offset {
            0..=3 if data.len() == 4 => {
                self.address = u32::from_le_bytes(data.try_into().unwrap());
            }
            4..=7 => {
                if let Some(reg) = self.target(u64::from(offset) - 4) {
                    self.esb.lock().unwrap().config_write(reg, data);
                }
            }
            _ => {}
        }
    }
}

/// The action handler: runs outside the device's lock, so it may reset the
/// device, as a VMM does for `reset` before rebooting the guest.
struct Vmm {
    esb: Esb,
    fired: mpsc::Sender<(WatchdogAction, Instant)>,
}

impl ActionSink for Vmm {
    fn watchdog_expired(&mut self, expiry: Expiry) {
        let at = Instant::now();
        self.esb.lock().unwrap().warm_reset();
        let _ = self.fired.send((expiry.action, at));
    }
}

// ---- The guest side: the Linux driver, one bus access per exit. ----

struct Driver {
    io: Arc<IoManager>,
}

impl Driver {
    fn config_address(reg: u32) -> [u8; 4] {
        (0x8000_0000 | ESB_DEVICE << 11 | (reg & 0xfc)).to_le_bytes()
    }

    fn config_write(&self, reg: u32, data: &[u8]) {
        let port = PCI_CONFIG_PORT;
        self.io
            .pio_write(PioAddress(port), &Self::config_address(reg))
            .unwrap();
        let data_port = port + 4 + (reg & 3) as u16;
        self.io.pio_write(PioAddress(data_port), data).unwrap();
    }

    fn config_read(&self, reg: u32, data: &mut [u8]) {
        let port = PCI_CONFIG_PORT;
        self.io
            .pio_write(PioAddress(port), &Self::config_address(reg))
            .unwrap();
        let data_port = port + 4 + (reg & 3) as u16;
        self.io.pio_read(PioAddress(data_port), data).unwrap();
    }

    fn bar0_write(&self, offset: u64, data: &[u8]) {
        self.io
            .mmio_write(MmioAddress(BAR0 + offset), data)
            .unwrap();
    }

    fn bar0_read(&self, offset: u64, data: &mut [u8]) {
        self.io.mmio_read(MmioAddress(BAR0 + offset), data).unwrap();
    }

    /// The unlock sequence, then a 16-bit write to the reload register.
    fn reload(&self, value: u16) {
        self.bar0_write(0x0c, &0x0080u16.to_le_bytes());
        self.bar0_write(0x0c, &0x0086u16.to_le_bytes());
        self.bar0_write(0x0c, &value.to_le_bytes());
    }

    fn unlock(&self) {
        self.bar0_write(0x0c, &0x0080u16.to_le_bytes());
        self.bar0_write(0x0c, &0x0086u16.to_le_bytes());
    }

    /// Probe, `set_timeout(heartbeat_s)`, `start`, as `i6300esb.ko` does.
    fn probe_and_start(&self, heartbeat_s: u32) {
        self.config_write(0x60, &0x0003u16.to_le_bytes());
        let mut lock = [0u8; 1];
        self.config_read(0x68, &mut lock);
        self.config_write(0x68, &[0x00]);
        self.unlock();
        let mut reload = [0u8; 2];
        self.bar0_read(0x0c, &mut reload);
        self.reload(0x0300);
        for preload in [0x00, 0x04] {
            self.unlock();
            self.bar0_write(preload, &(heartbeat_s << 9).to_le_bytes());
        }
        self.reload(0x0100);
        self.reload(0x0100);
        self.config_write(0x68, &[0x02]);
    }

    fn ping(&self) {
        self.reload(0x0100);
    }
}

fn main() -> ExitCode {
    let esb: Esb = Arc::new(Mutex::new(I6300Esb::new(
        WatchdogAction::Reset,
        MonotonicClock::new(),
    )));
    // Firmware: BAR0 placed, memory decode on.
    {
        let mut dev = esb.lock().unwrap();
        dev.config_write(0x10, &(BAR0 as u32).to_le_bytes());
        dev.config_write(0x04, &0x0002u16.to_le_bytes());
    }

    // The buses: configuration ports and BAR0 on one IoManager.
    let mut io = IoManager::new();
    let pci = PciConfigIo {
        address: 0,
        esb: esb.clone(),
    };
    io.register_pio(
        PioRange::new(PioAddress(PCI_CONFIG_PORT), 8).unwrap(),
        Arc::new(Mutex::new(pci)),
    )
    .unwrap();
    let (base, size) = esb.lock().unwrap().bar0_region().unwrap();
    io.register_mmio(
        MmioRange::new(MmioAddress(base), size).unwrap(),
        esb.clone(),
    )
    .unwrap();
    let io = Arc::new(io);

    // The timer: one subscriber on the event manager. It installs the device's
    // deadline listener itself; no re-arm calls anywhere.
    let (fired_tx, fired_rx) = mpsc::channel();
    let sink = Vmm {
        esb: esb.clone(),
        fired: fired_tx,
    };
    type Timer = Arc<Mutex<WatchdogTimer<MonotonicClock, NoEvents, Vmm>>>;
    let timer: Timer = Arc::new(Mutex::new(
        WatchdogTimer::new(esb.clone(), sink).expect("timerfd"),
    ));
    let mut manager: EventManager<Timer> = EventManager::new().expect("epoll");
    manager.add_subscriber(timer);

    // The guest: arm with a 1 s heartbeat, ping every 300 ms for a while, hang.
    let (hung_tx, hung_rx) = mpsc::channel();
    let driver = Driver { io };
    thread::spawn(move || {
        driver.probe_and_start(1);
        println!("driver: started with a 1 s heartbeat");
        for _ in 0..4 {
            thread::sleep(Duration::from_millis(300));
            driver.ping();
            println!("driver: ping");
        }
        let _ = hung_tx.send(Instant::now());
        println!("driver: hung");
    });

    let give_up = Instant::now() + Duration::from_secs(20);
    while Instant::now() < give_up {
        if let Err(e) = manager.run_with_timeout(100) {
            eprintln!("event loop: {e:?}");
            return ExitCode::FAILURE;
        }
        if let Ok((action, at)) = fired_rx.try_recv() {
            let Ok(hung) = hung_rx.try_recv() else {
                eprintln!("fired while the driver was still pinging");
                return ExitCode::FAILURE;
            };
            let ms = at.saturating_duration_since(hung).as_millis();
            println!("fired: {action} after {ms} ms");
            return ExitCode::SUCCESS;
        }
    }
    eprintln!("the watchdog never fired");
    ExitCode::FAILURE
}
