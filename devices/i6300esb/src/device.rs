//! The whole PCI function: the standard header plus the watchdog, on an injected clock.

use crate::action::{ActionSink, WatchdogAction};
use crate::clock::Clock;
use crate::config_space::ConfigHeader;
use crate::deadline::{DeadlineListener, Notifier};
use crate::events::{NoEvents, WatchdogEvents};
use crate::profile::Profile;
use crate::regs::{
    BAR0_SIZE, CONFIG_HEADER_SIZE, CONFIG_SPACE_SIZE, CONFIG_STORAGE_SIZE, QEMU_SUBSYSTEM_ID,
    QEMU_SUBSYSTEM_VENDOR_ID,
};
use crate::state::{I6300EsbState, StateError, DEVICE_STATE_VERSION};
use crate::watchdog::Watchdog;

/// The i6300esb PCI function as QEMU 7.2 presents it.
///
/// Configuration accesses take `(offset, data)` with 1, 2 or 4 bytes; BAR0
/// accesses take the offset inside the 16-byte window. Nothing here fails or
/// panics: accesses the device cannot take read as zeros, writes to them are
/// dropped, and both are counted through the events hook. Time comes from the
/// injected [`Clock`].
///
/// Configuration space 0x40-0xFF follows the profile. In [`Profile::Qemu`] it is
/// plain storage, as in QEMU (whose generic PCI code makes every byte from 0x40
/// up writable): only a 16-bit access at exactly 0x60 and an 8-bit access at
/// exactly 0x68 reach the watchdog's registers; any other access (another
/// offset, or another width at 0x60 or 0x68) is stored and read back, survives
/// [`Self::warm_reset`] and is part of the saved state. So after a dword write
/// of 2 at 0x68 a dword read there returns 2, while a byte read returns the
/// lock register and the timer stays off. In [`Profile::Hardware`] the bytes
/// other than WDTCR and WDTLR are reserved: they read 0 and writes to them are
/// dropped.
///
/// ```
/// use i6300esb::{I6300Esb, ManualClock, WatchdogAction};
///
/// let mut dev = I6300Esb::new(WatchdogAction::Reset, ManualClock::new(0));
/// dev.config_write(0x68, &2u32.to_le_bytes()); // not the lock register's width
/// assert_eq!(dev.config_read_u32(0x68), 2); // stored
/// let mut b = [0u8; 1];
/// dev.config_read(0x68, &mut b); // the register itself
/// assert_eq!(b[0], 0);
/// assert!(!dev.watchdog().is_enabled());
/// ```
///
/// BAR0 accesses must be naturally aligned; [`Self::bar0_read_split`] and
/// [`Self::bar0_write_split`] take any access the way QEMU on KVM delivers it
/// (see [`crate::split_access`]).
#[derive(Debug)]
pub struct I6300Esb<C: Clock, E: WatchdogEvents = NoEvents> {
    header: ConfigHeader,
    /// Configuration bytes 0x40-0xFF as plain storage (QEMU profile only).
    storage: [u8; CONFIG_STORAGE_SIZE],
    watchdog: Watchdog<E>,
    clock: C,
    notifier: Notifier,
}

impl<C: Clock> I6300Esb<C, NoEvents> {
    /// A device in its power-on state that requests `action` when it fires.
    pub fn new(action: WatchdogAction, clock: C) -> Self {
        I6300Esb::with_events(action, clock, NoEvents)
    }
}

impl<C: Clock, E: WatchdogEvents> I6300Esb<C, E> {
    /// A device in its power-on state reporting to `events`.
    pub fn with_events(action: WatchdogAction, clock: C, events: E) -> Self {
        I6300Esb {
            header: ConfigHeader::new(QEMU_SUBSYSTEM_VENDOR_ID, QEMU_SUBSYSTEM_ID),
            storage: [0; CONFIG_STORAGE_SIZE],
            watchdog: Watchdog::with_events(action, events),
            clock,
            notifier: Notifier::default(),
        }
    }

    /// The same device following `profile` (builder style); see [`Profile`] for
    /// what changes. The default is [`Profile::Qemu`].
    ///
    /// ```
    /// use i6300esb::{I6300Esb, ManualClock, Profile, WatchdogAction};
    ///
    /// let mut dev = I6300Esb::new(WatchdogAction::Reset, ManualClock::new(0))
    ///     .with_profile(Profile::Hardware);
    /// dev.config_write(0x68, &0x0002u32.to_le_bytes()); // a dword write enables
    /// assert!(dev.watchdog().is_enabled());
    /// assert_eq!(dev.state().watchdog.profile, Profile::Hardware);
    /// ```
    pub fn with_profile(mut self, profile: Profile) -> Self {
        self.set_profile(profile);
        self
    }

    /// Switch the watchdog to `profile`; see [`Watchdog::set_profile`].
    /// Switching to [`Profile::Hardware`] also clears the configuration storage
    /// at 0x40-0xFF, which that profile does not have.
    pub fn set_profile(&mut self, profile: Profile) {
        self.watchdog.set_profile(profile);
        if profile == Profile::Hardware {
            self.storage = [0; CONFIG_STORAGE_SIZE];
        }
        self.report_deadline();
    }

    /// Present other subsystem IDs than QEMU's 1AF4:1100.
    pub fn with_subsystem_ids(mut self, vendor_id: u16, subsystem_id: u16) -> Self {
        let (command, bar0, cls, line) = self.header.writable_fields();
        self.header = ConfigHeader::new(vendor_id, subsystem_id);
        self.header.set_writable_fields(command, bar0, cls, line);
        self
    }

    /// The watchdog part.
    pub fn watchdog(&self) -> &Watchdog<E> {
        &self.watchdog
    }

    /// The watchdog part, mutably (for `set_action` and the like).
    pub fn watchdog_mut(&mut self) -> &mut Watchdog<E> {
        &mut self.watchdog
    }

    /// The standard header.
    pub fn header(&self) -> &ConfigHeader {
        &self.header
    }

    /// The clock the device reads.
    pub fn clock(&self) -> &C {
        &self.clock
    }

    /// The events hook.
    pub fn events(&self) -> &E {
        self.watchdog.events()
    }

    fn config_access_ok(offset: usize, len: usize) -> bool {
        matches!(len, 1 | 2 | 4)
            && offset
                .checked_add(len)
                .is_some_and(|end| end <= CONFIG_SPACE_SIZE)
    }

    /// Read `data.len()` bytes of configuration space at `offset`.
    ///
    /// Bytes below 0x40 come from the standard header; see the type's docs for
    /// 0x40-0xFF in each profile.
    pub fn config_read(&mut self, offset: usize, data: &mut [u8]) {
        data.fill(0);
        if !Self::config_access_ok(offset, data.len()) {
            self.watchdog.events().ignored_config_access();
            return;
        }
        // Only the watchdog's own registers need the time; header reads (most of
        // config traffic) skip the clock.
        if self.watchdog.claims_config(offset, data.len()) {
            let now = self.clock.now_ns();
            let decoded = self.watchdog.config_read(now, offset, data);
            self.report_deadline();
            if decoded {
                return;
            }
        }
        let storage = self.watchdog.profile() == Profile::Qemu;
        for (i, b) in data.iter_mut().enumerate() {
            let at = offset + i;
            *b = match at.checked_sub(CONFIG_HEADER_SIZE) {
                None => self.header.read_byte(at),
                // QEMU: plain storage. Hardware: reserved, reads 0.
                Some(s) if storage => self.storage[s],
                Some(_) => 0,
            };
        }
        if offset + data.len() > CONFIG_HEADER_SIZE {
            self.note_odd_specific_access(offset, data.len());
        }
    }

    /// Write `data` (1, 2 or 4 bytes) to configuration space at `offset`.
    ///
    /// The header applies its write masks; see the type's docs for 0x40-0xFF.
    pub fn config_write(&mut self, offset: usize, data: &[u8]) {
        if !Self::config_access_ok(offset, data.len()) {
            self.watchdog.events().ignored_config_access();
            return;
        }
        if self.watchdog.claims_config(offset, data.len()) {
            let now = self.clock.now_ns();
            let decoded = self.watchdog.config_write(now, offset, data);
            self.report_deadline();
            if decoded {
                return;
            }
        }
        let storage = self.watchdog.profile() == Profile::Qemu;
        for (i, &b) in data.iter().enumerate() {
            let at = offset + i;
            match at.checked_sub(CONFIG_HEADER_SIZE) {
                None => self.header.write_byte(at, b),
                // QEMU makes every byte from 0x40 up writable (pci_init_wmask).
                Some(s) if storage => self.storage[s] = b,
                // Hardware: reserved, the write is dropped.
                Some(_) => {}
            }
        }
        if offset + data.len() > CONFIG_HEADER_SIZE {
            self.note_odd_specific_access(offset, data.len());
        }
    }

    /// An access overlapping 0x60/0x68 with a width those registers do not decode
    /// (stored as plain bytes in the QEMU profile, but the register missed it).
    fn note_odd_specific_access(&self, offset: usize, len: usize) {
        use crate::regs::{CFG_WDT_CONFIG, CFG_WDT_LOCK};
        let overlaps = |reg: usize, width: usize| offset < reg + width && reg < offset + len;
        if overlaps(CFG_WDT_CONFIG, 2) || overlaps(CFG_WDT_LOCK, 1) {
            self.watchdog.events().ignored_config_access();
        }
    }

    /// Read BAR0 at `offset` (0x00–0x0F). Routing by address, and honouring the
    /// command register's memory-decode bit, is the bus's job: see [`Self::bar0_address`].
    pub fn bar0_read(&mut self, offset: u64, data: &mut [u8]) {
        let now = self.clock.now_ns();
        self.watchdog.mmio_read(now, offset, data);
        self.report_deadline();
    }

    /// Write BAR0 at `offset` (0x00–0x0F).
    pub fn bar0_write(&mut self, offset: u64, data: &[u8]) {
        let now = self.clock.now_ns();
        self.watchdog.mmio_write(now, offset, data);
        self.report_deadline();
    }

    /// Where BAR0 is decoded: `Some(base)` while memory decode is on and BAR0 holds
    /// a real address. The window is [`BAR0_SIZE`] bytes long.
    pub fn bar0_address(&self) -> Option<u64> {
        self.header.bar0_address()
    }

    /// `(base, size)` of the decoded BAR0 window, if any.
    pub fn bar0_region(&self) -> Option<(u64, u64)> {
        self.bar0_address().map(|base| (base, BAR0_SIZE))
    }

    /// When to call [`Self::poll`] next, in the clock's nanoseconds.
    pub fn next_deadline(&self) -> Option<u64> {
        self.watchdog.next_deadline()
    }

    /// Run whatever is due now and hand each expiry to `sink`. Returns how many.
    ///
    /// The deadline listener is not called for the change a poll makes: the
    /// caller (the host's timer) asks [`Self::next_deadline`] afterwards.
    pub fn poll<S: ActionSink + ?Sized>(&mut self, sink: &mut S) -> usize {
        let now = self.clock.now_ns();
        let delivered = self.watchdog.poll(now, sink);
        self.notifier.record(self.watchdog.next_deadline());
        delivered
    }

    /// Tell `listener` whenever [`Self::next_deadline`] changes: after guest
    /// accesses (configuration and BAR0), resets, [`Self::load_state`],
    /// [`Self::state`], pause, resume and [`Self::set_profile`]; never for a read
    /// or write that leaves the deadline where it was. The listener hears the
    /// current deadline at once. It replaces any listener installed before.
    ///
    /// It runs inside the device method, under whatever lock guards the device:
    /// it must not lock the device. See [`crate::deadline`].
    ///
    /// ```
    /// use std::sync::mpsc;
    /// use i6300esb::{I6300Esb, ManualClock, WatchdogAction};
    ///
    /// let (tx, rx) = mpsc::channel();
    /// let mut dev = I6300Esb::new(WatchdogAction::Reset, ManualClock::new(0));
    /// dev.set_deadline_listener(move |d: Option<u64>| tx.send(d).unwrap());
    /// assert_eq!(rx.try_recv(), Ok(None)); // the current deadline, at once
    /// dev.config_write(0x68, &[0x02]); // enable: a deadline appears
    /// assert_eq!(rx.try_recv(), Ok(dev.next_deadline()));
    /// let mut b = [0u8; 4];
    /// dev.bar0_read(0x00, &mut b); // a read moves nothing: no call
    /// assert!(rx.try_recv().is_err());
    /// ```
    pub fn set_deadline_listener<L: DeadlineListener + 'static>(&mut self, listener: L) {
        let current = self.watchdog.next_deadline();
        self.notifier.set(Box::new(listener), current);
    }

    /// Remove the deadline listener and return it.
    pub fn take_deadline_listener(&mut self) -> Option<Box<dyn DeadlineListener>> {
        self.notifier.take()
    }

    /// Call the deadline listener if [`Self::next_deadline`] differs from what it
    /// last heard. Every method of this type that can move the deadline does this;
    /// call it after changing the watchdog through [`Self::watchdog_mut`].
    #[inline]
    pub fn report_deadline(&mut self) {
        self.notifier.update(self.watchdog.next_deadline());
    }

    /// The machine reset a VMM performs (for example after the `reset` action):
    /// header and watchdog back to reset values, the timeout flag kept. As in
    /// QEMU, whose PCI reset only clears command, status, cache line size,
    /// interrupt line and the BARs, the configuration storage at 0x40-0xFF
    /// keeps its bytes.
    pub fn warm_reset(&mut self) {
        self.header.reset();
        self.watchdog.warm_reset();
        self.report_deadline();
    }

    /// A power-on reset: as [`Self::warm_reset`], the timeout flag and the
    /// configuration storage at 0x40-0xFF cleared (a new QEMU process starts with
    /// zeroed configuration space), and expiries not yet polled dropped (see
    /// [`Watchdog::power_on_reset`]).
    pub fn power_on_reset(&mut self) {
        self.header.reset();
        self.storage = [0; CONFIG_STORAGE_SIZE];
        self.watchdog.power_on_reset();
        self.report_deadline();
    }

    /// Freeze the countdown while the VM is paused.
    pub fn pause(&mut self) {
        let now = self.clock.now_ns();
        self.watchdog.pause(now);
        self.report_deadline();
    }

    /// Resume the countdown with the time it had left.
    pub fn resume(&mut self) {
        let now = self.clock.now_ns();
        self.watchdog.resume(now);
        self.report_deadline();
    }

    /// The saved state now.
    pub fn state(&mut self) -> I6300EsbState {
        let now = self.clock.now_ns();
        let (command, bar0, cache_line_size, interrupt_line) = self.header.writable_fields();
        let state = I6300EsbState {
            version: DEVICE_STATE_VERSION,
            command,
            bar0,
            cache_line_size,
            interrupt_line,
            config_storage: self.storage,
            watchdog: self.watchdog.state(now),
        };
        self.report_deadline();
        state
    }

    /// Load a saved state into this device in place, validated first: what
    /// [`Self::restore`] does, for a device already on a bus and followed by a host
    /// timer. The clock, events hook, deadline listener and subsystem IDs stay;
    /// the listener hears the restored deadline. On error nothing changes.
    pub fn load_state(&mut self, state: &I6300EsbState) -> Result<(), StateError> {
        state.validate()?;
        let now = self.clock.now_ns();
        self.watchdog.load_state(&state.watchdog, now)?;
        self.header.reset();
        self.header.set_writable_fields(
            state.command,
            state.bar0,
            state.cache_line_size,
            state.interrupt_line,
        );
        self.storage = state.config_storage;
        self.report_deadline();
        Ok(())
    }

    /// Rebuild a device from a saved state, validated first, in the saved profile. The countdown resumes
    /// with the time it had left, measured on `clock` from now. A version-1
    /// state (before the configuration storage) restores with zeroed storage.
    ///
    /// Subsystem IDs are configuration, not state: the device comes back with
    /// QEMU's; chain [`Self::with_subsystem_ids`] to present others. The new
    /// device has no deadline listener: to restore a device a host timer follows
    /// (such as `adapters::timer::WatchdogTimer`), use [`Self::load_state`].
    pub fn restore(state: &I6300EsbState, clock: C, events: E) -> Result<Self, StateError> {
        state.validate()?;
        let now = clock.now_ns();
        let mut header = ConfigHeader::new(QEMU_SUBSYSTEM_VENDOR_ID, QEMU_SUBSYSTEM_ID);
        header.set_writable_fields(
            state.command,
            state.bar0,
            state.cache_line_size,
            state.interrupt_line,
        );
        Ok(I6300Esb {
            header,
            storage: state.config_storage,
            watchdog: Watchdog::restore(&state.watchdog, now, events)?,
            clock,
            notifier: Notifier::default(),
        })
    }

    /// Read a configuration dword (convenience for PCI host bridges).
    pub fn config_read_u32(&mut self, offset: usize) -> u32 {
        let mut b = [0u8; 4];
        self.config_read(offset, &mut b);
        u32::from_le_bytes(b)
    }
}
