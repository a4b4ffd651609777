//! The pure state of one probe: its schedule, its thresholds and what it publishes.
//!
//! A [`Tracker`] holds no clock, no file descriptor and no handler. Time comes in
//! as a [`Duration`] since the VM (this run of it) started, so tests and fuzz
//! targets drive it in virtual time, instantly and deterministically.
//!
//! Timing model (vmpulse's own, docs/PROBES.md §2.8):
//! - attempts may start on the grid `D + k·P` (`D` = initialDelay, `P` = period),
//!   so the first attempt is at exactly `D` and starts never drift;
//! - an attempt still running at the next tick delays only the next attempt,
//!   which starts when it completes (one pending tick); later ticks stay on the grid
//!   and missed ticks are dropped;
//! - the thresholds follow the kubelet (docs/PROBES.md §2.4): consecutive runs of
//!   equal results, a change published only once a run reaches its threshold;
//! - readiness starts not ready, liveness starts alive; a liveness failure puts the
//!   tracker on hold until the next [`Tracker::start`].
//!
//! A fuzz target drives it with a sequence of operations: [`Tracker::start`],
//! [`Tracker::stop`], [`Tracker::hold`], [`Tracker::begin`] at or after
//! [`Tracker::next_start`], and [`Tracker::complete`] at or before
//! [`Tracker::deadline`]; [`Tracker::check_invariants`] states what must hold after
//! each step.
//!
//! ```
//! use std::time::Duration;
//! use vmpulse_probes::config::ProbeKind;
//! use vmpulse_probes::tracker::{Outcome, Tracker, Transition};
//!
//! let s = Duration::from_secs;
//! let mut t = Tracker::with_params(ProbeKind::Readiness, s(5), s(10), s(1), 1, 3);
//! t.start();
//! assert_eq!(t.next_start(), Some(s(5)));
//! let deadline = t.begin(s(5)).unwrap();
//! assert_eq!(deadline, s(6));
//! assert_eq!(t.complete(s(5), Outcome::Success), Some(Transition::Ready));
//! assert_eq!(t.next_start(), Some(s(15)));
//! ```

use std::time::Duration;

use super::config::{ProbeConfig, ProbeKind};

/// The smallest period the tracker accepts (a zero period would be a busy loop).
pub const MIN_PERIOD: Duration = Duration::from_millis(1);

/// What one completed attempt counts as.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// Counted as a success.
    Success,
    /// Counted as a failure (refused, timed out, bad status, non-zero exit…).
    Failure,
    /// Not counted at all (the kubelet's "error" results): the run is neither
    /// reset nor extended.
    Error,
}

/// A change of the published state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Transition {
    /// Readiness became true.
    Ready,
    /// Readiness became false.
    NotReady,
    /// Liveness reached its failure threshold; the tracker is now on hold.
    LivenessFailed,
}

/// The state of one probe, in virtual time since the VM started.
#[derive(Clone, Debug)]
pub struct Tracker {
    kind: ProbeKind,
    initial_delay: Duration,
    period: Duration,
    timeout: Duration,
    success_threshold: u32,
    failure_threshold: u32,
    running: bool,
    held: bool,
    /// Start time of the attempt in flight.
    in_flight: Option<Duration>,
    /// When the next attempt may start (meaningful while running, not held, idle).
    next: Duration,
    last: Option<bool>,
    run: u32,
    /// Readiness: ready; liveness: alive.
    published: bool,
    attempts: u64,
}

impl Tracker {
    /// A tracker for `config`; nothing is scheduled until [`Tracker::start`].
    pub fn new(config: &ProbeConfig) -> Self {
        Self::with_params(
            config.kind(),
            config.initial_delay(),
            config.period(),
            config.timeout(),
            config.success_threshold(),
            config.failure_threshold(),
        )
    }

    /// A tracker from raw parameters. A period below [`MIN_PERIOD`] is raised to
    /// it and thresholds of 0 count as 1, so any input is safe to drive.
    pub fn with_params(
        kind: ProbeKind,
        initial_delay: Duration,
        period: Duration,
        timeout: Duration,
        success_threshold: u32,
        failure_threshold: u32,
    ) -> Self {
        Tracker {
            kind,
            initial_delay,
            period: period.max(MIN_PERIOD),
            timeout,
            success_threshold: success_threshold.max(1),
            failure_threshold: failure_threshold.max(1),
            running: false,
            held: false,
            in_flight: None,
            next: initial_delay,
            last: None,
            run: 0,
            published: Self::initial_state(kind),
            attempts: 0,
        }
    }

    fn initial_state(kind: ProbeKind) -> bool {
        // Readiness starts not ready; liveness starts alive.
        kind == ProbeKind::Liveness
    }

    /// Which probe this is.
    pub fn kind(&self) -> ProbeKind {
        self.kind
    }

    /// `timeoutSeconds` of the probe.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// The VM (a new run of it) started: time 0. Counters, hold and published
    /// state are reset; the first attempt is due at the initial delay.
    pub fn start(&mut self) {
        self.running = true;
        self.held = false;
        self.in_flight = None;
        self.next = self.initial_delay;
        self.last = None;
        self.run = 0;
        self.published = Self::initial_state(self.kind);
    }

    /// The VM stopped: nothing is scheduled, the attempt in flight (if any) is
    /// forgotten and the published state returns to its initial value. Returns
    /// [`Transition::NotReady`] if a readiness probe was ready.
    pub fn stop(&mut self) -> Option<Transition> {
        let was_ready = self.kind == ProbeKind::Readiness && self.published;
        self.running = false;
        self.in_flight = None;
        self.last = None;
        self.run = 0;
        self.published = Self::initial_state(self.kind);
        was_ready.then_some(Transition::NotReady)
    }

    /// Stop probing without changing the published state (a liveness probe while
    /// the VM shuts down gracefully). The attempt in flight is forgotten.
    pub fn hold(&mut self) {
        self.held = true;
        self.in_flight = None;
    }

    /// Whether the VM is running for this tracker.
    pub fn running(&self) -> bool {
        self.running
    }

    /// Whether the tracker is on hold (after a liveness failure or [`Tracker::hold`]).
    pub fn held(&self) -> bool {
        self.held
    }

    /// When the next attempt may start, or `None` while stopped, held or busy.
    pub fn next_start(&self) -> Option<Duration> {
        (self.running && !self.held && self.in_flight.is_none()).then_some(self.next)
    }

    /// Whether an attempt should start at `now`.
    pub fn due(&self, now: Duration) -> bool {
        self.next_start().is_some_and(|t| now >= t)
    }

    /// Start an attempt at `now` if one is due; returns its deadline.
    pub fn begin(&mut self, now: Duration) -> Option<Duration> {
        if !self.due(now) {
            return None;
        }
        self.in_flight = Some(now);
        self.attempts += 1;
        Some(now.saturating_add(self.timeout))
    }

    /// The deadline of the attempt in flight.
    pub fn deadline(&self) -> Option<Duration> {
        self.in_flight.map(|s| s.saturating_add(self.timeout))
    }

    /// Whether an attempt is in flight.
    pub fn in_flight(&self) -> bool {
        self.in_flight.is_some()
    }

    /// Attempts started since the tracker was made.
    pub fn attempts(&self) -> u64 {
        self.attempts
    }

    /// The first grid tick strictly after `t`.
    fn grid_after(&self, t: Duration) -> Duration {
        if t < self.initial_delay {
            return self.initial_delay;
        }
        let since = (t - self.initial_delay).as_nanos();
        let p = self.period.as_nanos();
        // 64-bit division when it fits (584 years of nanoseconds): u128
        // division is a slow library call.
        let k = match (u64::try_from(since), u64::try_from(p)) {
            (Ok(a), Ok(b)) => u128::from(a / b) + 1,
            _ => since / p + 1,
        };
        self.initial_delay
            .saturating_add(duration_from_nanos(k.saturating_mul(p)))
    }

    /// The attempt in flight completed at `now` with `outcome`. Applies the
    /// thresholds, schedules the next attempt and returns the transition, if any.
    /// Without an attempt in flight (cancelled, stopped) nothing happens.
    pub fn complete(&mut self, now: Duration, outcome: Outcome) -> Option<Transition> {
        let started = self.in_flight.take()?;
        // Start-to-start on the grid; an overrun makes the next attempt start at
        // completion (one pending tick), later ticks stay on the grid.
        self.next = self.grid_after(started).max(now);
        let success = match outcome {
            Outcome::Success => true,
            Outcome::Failure => false,
            Outcome::Error => return None,
        };
        if self.last == Some(success) {
            self.run = self.run.saturating_add(1);
        } else {
            self.last = Some(success);
            self.run = 1;
        }
        let threshold = if success {
            self.success_threshold
        } else {
            self.failure_threshold
        };
        if self.run < threshold {
            return None;
        }
        let changed = self.published != success;
        self.published = success;
        if self.kind == ProbeKind::Liveness && !success {
            self.held = true;
            self.run = 0;
        }
        match (changed, self.kind, success) {
            (false, _, _) => None,
            (true, ProbeKind::Readiness, true) => Some(Transition::Ready),
            (true, ProbeKind::Readiness, false) => Some(Transition::NotReady),
            (true, ProbeKind::Liveness, false) => Some(Transition::LivenessFailed),
            // Liveness only changes from alive to failed.
            (true, ProbeKind::Liveness, true) => None,
        }
    }

    /// Readiness: whether ready. Liveness: whether alive.
    pub fn state(&self) -> bool {
        self.published
    }

    /// The current run of equal results: (last result was a success, length).
    pub fn run(&self) -> Option<(bool, u32)> {
        self.last.map(|l| (l, self.run))
    }

    /// Check the tracker's internal invariants; returns a description of the
    /// first one broken. For tests and fuzz targets.
    pub fn check_invariants(&self) -> Result<(), String> {
        if self.period < MIN_PERIOD {
            return Err("period below the minimum".into());
        }
        if !self.running && self.in_flight.is_some() {
            return Err("attempt in flight while stopped".into());
        }
        if self.next < self.initial_delay && self.running {
            return Err("next attempt before the initial delay".into());
        }
        if self.kind == ProbeKind::Liveness && !self.published && !self.held {
            return Err("liveness failed but not on hold".into());
        }
        if self.run > self.failure_threshold.max(self.success_threshold)
            && self.last == Some(false)
            && self.kind == ProbeKind::Liveness
        {
            return Err("liveness failure run past the threshold".into());
        }
        Ok(())
    }
}

/// `n` nanoseconds as a [`Duration`], saturating at [`Duration::MAX`].
fn duration_from_nanos(n: u128) -> Duration {
    const NANOS_PER_SEC: u128 = 1_000_000_000;
    match u64::try_from(n / NANOS_PER_SEC) {
        // The remainder is below 10^9, so it fits in u32.
        Ok(secs) => Duration::new(secs, (n % NANOS_PER_SEC) as u32),
        Err(_) => Duration::MAX,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(x: f64) -> Duration {
        Duration::from_secs_f64(x)
    }

    /// What the simulated target does with an attempt started at a given time:
    /// (response time, outcome). Responses slower than T fail at T.
    type Target<'a> = &'a dyn Fn(f64) -> (f64, Outcome);

    #[derive(Debug, Default)]
    struct Log {
        /// (start, end, outcome) of every attempt.
        attempts: Vec<(f64, f64, Outcome)>,
        /// (time, transition).
        transitions: Vec<(f64, Transition)>,
    }

    /// Run the tracker from `from` to `until` (seconds since VM start) against `target`.
    fn simulate(tr: &mut Tracker, from: f64, until: f64, target: Target, log: &mut Log) {
        let mut now = s(from);
        while let Some(start) = tr.next_start() {
            let start = start.max(now);
            if start > s(until) {
                break;
            }
            let deadline = tr.begin(start).expect("due");
            let (resp, outcome) = target(start.as_secs_f64());
            let (end, outcome) = if start + s(resp) > deadline {
                (deadline, Outcome::Failure)
            } else {
                (start + s(resp), outcome)
            };
            if let Some(t) = tr.complete(end, outcome) {
                log.transitions.push((round(end), t));
            }
            log.attempts.push((round(start), round(end), outcome));
            tr.check_invariants().unwrap();
            now = end;
        }
    }

    fn round(d: Duration) -> f64 {
        (d.as_secs_f64() * 1e6).round() / 1e6
    }

    fn starts(log: &Log) -> Vec<f64> {
        log.attempts.iter().map(|a| a.0).collect()
    }

    fn readiness(d: f64, p: f64, t: f64, st: u32, ft: u32) -> Tracker {
        let mut tr = Tracker::with_params(ProbeKind::Readiness, s(d), s(p), s(t), st, ft);
        tr.start();
        tr
    }

    fn liveness(d: f64, p: f64, t: f64, ft: u32) -> Tracker {
        let mut tr = Tracker::with_params(ProbeKind::Liveness, s(d), s(p), s(t), 1, ft);
        tr.start();
        tr
    }

    const OK: (f64, Outcome) = (0.005, Outcome::Success);
    const REFUSED: (f64, Outcome) = (0.0, Outcome::Failure);

    #[test]
    fn initial_state_and_idle_before_start() {
        let r = Tracker::with_params(ProbeKind::Readiness, s(0.0), s(10.0), s(1.0), 1, 3);
        assert!(!r.state());
        assert_eq!(r.next_start(), None);
        let l = Tracker::with_params(ProbeKind::Liveness, s(0.0), s(10.0), s(1.0), 1, 3);
        assert!(l.state());
        assert_eq!(l.next_start(), None);
    }

    #[test]
    fn p01_readiness_defaults_healthy() {
        let mut tr = readiness(0.0, 10.0, 1.0, 1, 3);
        let mut log = Log::default();
        simulate(&mut tr, 0.0, 45.0, &|_| OK, &mut log);
        assert_eq!(starts(&log), vec![0.0, 10.0, 20.0, 30.0, 40.0]);
        assert_eq!(log.transitions, vec![(0.005, Transition::Ready)]);
        assert!(tr.state());
    }

    #[test]
    fn p02_readiness_never_healthy_emits_nothing() {
        let mut tr = readiness(0.0, 10.0, 1.0, 1, 3);
        let mut log = Log::default();
        simulate(&mut tr, 0.0, 100.0, &|_| REFUSED, &mut log);
        assert_eq!(log.attempts.len(), 11);
        assert!(log.transitions.is_empty());
        assert!(!tr.state());
        assert_eq!(tr.run(), Some((false, 11)));
    }

    #[test]
    fn p03_liveness_down_from_start_then_on_hold() {
        let mut tr = liveness(0.0, 10.0, 1.0, 3);
        let mut log = Log::default();
        simulate(&mut tr, 0.0, 100.0, &|_| REFUSED, &mut log);
        assert_eq!(starts(&log), vec![0.0, 10.0, 20.0]);
        assert_eq!(log.transitions, vec![(20.0, Transition::LivenessFailed)]);
        assert!(tr.held());
        assert_eq!(tr.next_start(), None);
        assert!(!tr.state());
    }

    #[test]
    fn p04_liveness_failure_threshold_one() {
        let mut tr = liveness(0.0, 5.0, 1.0, 1);
        let mut log = Log::default();
        let target = |t: f64| if t < 12.0 { OK } else { REFUSED };
        simulate(&mut tr, 0.0, 100.0, &target, &mut log);
        assert_eq!(starts(&log), vec![0.0, 5.0, 10.0, 15.0]);
        assert_eq!(log.transitions, vec![(15.0, Transition::LivenessFailed)]);
    }

    #[test]
    fn p05_readiness_success_threshold_three() {
        let mut tr = readiness(0.0, 1.0, 1.0, 3, 1);
        let mut log = Log::default();
        let target = |t: f64| {
            if (4.5..9.5).contains(&t) {
                (0.0, Outcome::Success)
            } else {
                REFUSED
            }
        };
        simulate(&mut tr, 0.0, 12.0, &target, &mut log);
        assert_eq!(
            log.transitions,
            vec![(7.0, Transition::Ready), (10.0, Transition::NotReady)]
        );
        assert_eq!(log.attempts.len(), 13);
    }

    #[test]
    fn p06_failure_run_broken_by_a_success() {
        let mut tr = readiness(0.0, 10.0, 1.0, 1, 3);
        let mut log = Log::default();
        let target = |t: f64| {
            if (25.0..35.0).contains(&t) || (45.0..75.0).contains(&t) {
                REFUSED
            } else {
                (0.0, Outcome::Success)
            }
        };
        simulate(&mut tr, 0.0, 85.0, &target, &mut log);
        assert_eq!(
            log.transitions,
            vec![
                (0.0, Transition::Ready),
                (70.0, Transition::NotReady),
                (80.0, Transition::Ready)
            ]
        );
    }

    #[test]
    fn p07_delay_off_the_grid_first_attempt_at_exactly_d() {
        let mut tr = readiness(15.0, 10.0, 1.0, 1, 3);
        let mut log = Log::default();
        simulate(&mut tr, 0.0, 40.0, &|_| (0.0, Outcome::Success), &mut log);
        assert_eq!(starts(&log), vec![15.0, 25.0, 35.0]);
        assert_eq!(log.transitions, vec![(15.0, Transition::Ready)]);
    }

    #[test]
    fn p08_delay_on_the_grid() {
        let mut tr = readiness(10.0, 10.0, 1.0, 1, 3);
        let mut log = Log::default();
        simulate(&mut tr, 0.0, 30.0, &|_| (0.0, Outcome::Success), &mut log);
        assert_eq!(starts(&log), vec![10.0, 20.0, 30.0]);
        assert_eq!(log.transitions, vec![(10.0, Transition::Ready)]);
    }

    #[test]
    fn p09_delay_below_the_period() {
        let mut tr = readiness(3.0, 10.0, 1.0, 1, 3);
        let mut log = Log::default();
        simulate(&mut tr, 0.0, 30.0, &|_| (0.0, Outcome::Success), &mut log);
        assert_eq!(starts(&log), vec![3.0, 13.0, 23.0]);
    }

    #[test]
    fn p10_attempt_longer_than_the_period() {
        let mut tr = liveness(0.0, 1.0, 5.0, 3);
        let mut log = Log::default();
        // Accepts and never answers: every attempt ends at its timeout.
        simulate(&mut tr, 0.0, 100.0, &|_| (1e9, Outcome::Success), &mut log);
        assert_eq!(
            log.attempts,
            vec![
                (0.0, 5.0, Outcome::Failure),
                (5.0, 10.0, Outcome::Failure),
                (10.0, 15.0, Outcome::Failure)
            ]
        );
        assert_eq!(log.transitions, vec![(15.0, Transition::LivenessFailed)]);
    }

    #[test]
    fn overrun_delays_only_the_next_attempt() {
        let mut tr = readiness(0.0, 2.0, 5.0, 1, 3);
        let mut log = Log::default();
        // The first attempt takes 3 s (past the tick at 2), later ones 0.1 s.
        let target = |t: f64| {
            if t == 0.0 {
                (3.0, Outcome::Success)
            } else {
                (0.1, Outcome::Success)
            }
        };
        simulate(&mut tr, 0.0, 10.0, &target, &mut log);
        assert_eq!(starts(&log), vec![0.0, 3.0, 4.0, 6.0, 8.0, 10.0]);
    }

    #[test]
    fn overrun_across_several_ticks_drops_missed_ticks() {
        let mut tr = readiness(1.0, 1.0, 10.0, 1, 3);
        let mut log = Log::default();
        let target = |t: f64| {
            if t == 1.0 {
                (3.5, Outcome::Success)
            } else {
                (0.2, Outcome::Success)
            }
        };
        simulate(&mut tr, 0.0, 8.0, &target, &mut log);
        // Ticks 2, 3, 4 missed: one pending start at 4.5, then the grid again.
        assert_eq!(starts(&log), vec![1.0, 4.5, 5.0, 6.0, 7.0, 8.0]);
    }

    #[test]
    fn no_drift_over_many_periods() {
        let mut tr = readiness(0.25, 10.0, 1.0, 1, 3);
        let mut log = Log::default();
        simulate(
            &mut tr,
            0.0,
            10_000.0,
            &|_| (0.3, Outcome::Success),
            &mut log,
        );
        assert_eq!(log.attempts.len(), 1000);
        for (k, a) in log.attempts.iter().enumerate() {
            assert_eq!(a.0, 0.25 + 10.0 * k as f64, "attempt {k}");
        }
    }

    #[test]
    fn p11_errors_are_not_counted() {
        let mut tr = readiness(0.0, 10.0, 1.0, 1, 3);
        let results = [
            Outcome::Success,
            Outcome::Failure,
            Outcome::Error,
            Outcome::Failure,
            Outcome::Failure,
        ];
        let mut transitions = Vec::new();
        for (k, r) in results.iter().enumerate() {
            let t = s(10.0 * k as f64);
            tr.begin(t).unwrap();
            transitions.push(tr.complete(t, *r));
        }
        assert_eq!(
            transitions,
            vec![
                Some(Transition::Ready),
                None,
                None,
                None,
                Some(Transition::NotReady)
            ]
        );
    }

    #[test]
    fn p12_readiness_counters_reset_at_restart() {
        let mut tr = readiness(0.0, 10.0, 1.0, 3, 3);
        let mut log = Log::default();
        let ok = |_| (0.0, Outcome::Success);
        simulate(&mut tr, 0.0, 14.0, &ok, &mut log);
        assert_eq!(tr.run(), Some((true, 2)));
        assert_eq!(tr.stop(), None);
        // Restart at 15: the grid is re-anchored, runs start afresh.
        tr.start();
        let mut log2 = Log::default();
        simulate(&mut tr, 0.0, 30.0, &ok, &mut log2);
        assert_eq!(starts(&log2), vec![0.0, 10.0, 20.0, 30.0]);
        // 15 + 20 = 35 in absolute time.
        assert_eq!(log2.transitions, vec![(20.0, Transition::Ready)]);
    }

    #[test]
    fn p13_liveness_after_restart_is_alive_and_re_anchored() {
        let mut tr = liveness(0.0, 10.0, 1.0, 3);
        let mut log = Log::default();
        simulate(&mut tr, 0.0, 100.0, &|_| REFUSED, &mut log);
        assert_eq!(log.transitions, vec![(20.0, Transition::LivenessFailed)]);
        assert_eq!(tr.stop(), None);
        tr.start();
        assert!(tr.state());
        assert!(!tr.held());
        let mut log2 = Log::default();
        simulate(&mut tr, 0.0, 100.0, &|_| REFUSED, &mut log2);
        // Attempts at 25, 35, 45 in absolute time.
        assert_eq!(starts(&log2), vec![0.0, 10.0, 20.0]);
        assert_eq!(log2.transitions, vec![(20.0, Transition::LivenessFailed)]);
    }

    #[test]
    fn p14_stop_makes_not_ready_at_once() {
        let mut tr = readiness(0.0, 10.0, 1.0, 1, 3);
        let mut log = Log::default();
        simulate(&mut tr, 0.0, 41.0, &|_| OK, &mut log);
        assert!(tr.state());
        // An attempt in flight when the VM stops is forgotten.
        tr.begin(s(42.0));
        assert_eq!(tr.stop(), Some(Transition::NotReady));
        assert!(!tr.state());
        assert_eq!(tr.next_start(), None);
        assert_eq!(tr.complete(s(42.1), Outcome::Success), None);
        assert!(!tr.state());
        tr.start();
        assert!(!tr.state());
        assert_eq!(tr.next_start(), Some(s(0.0)));
    }

    #[test]
    fn p15_hold_stops_liveness_probing_and_keeps_it_alive() {
        let mut tr = liveness(0.0, 10.0, 1.0, 1);
        tr.begin(s(0.0)).unwrap();
        tr.hold();
        assert_eq!(tr.complete(s(0.5), Outcome::Failure), None);
        assert!(tr.state());
        assert_eq!(tr.next_start(), None);
        assert!(!tr.due(s(1000.0)));
    }

    fn flapping(st: u32, ft: u32) -> Vec<(f64, Transition)> {
        let mut tr = readiness(0.0, 1.0, 1.0, st, ft);
        let mut log = Log::default();
        let target = |t: f64| {
            if (t as u64) % 2 == 0 {
                (0.0, Outcome::Success)
            } else {
                REFUSED
            }
        };
        simulate(&mut tr, 0.0, 5.0, &target, &mut log);
        log.transitions
    }

    #[test]
    fn p16_flapping() {
        assert_eq!(
            flapping(1, 1),
            vec![
                (0.0, Transition::Ready),
                (1.0, Transition::NotReady),
                (2.0, Transition::Ready),
                (3.0, Transition::NotReady),
                (4.0, Transition::Ready),
                (5.0, Transition::NotReady)
            ]
        );
        assert_eq!(flapping(1, 3), vec![(0.0, Transition::Ready)]);
        assert_eq!(flapping(2, 1), vec![]);
    }

    #[test]
    fn begin_refuses_early_or_double_starts() {
        let mut tr = readiness(5.0, 10.0, 1.0, 1, 3);
        assert_eq!(tr.begin(s(4.999)), None);
        assert_eq!(tr.begin(s(5.0)), Some(s(6.0)));
        assert_eq!(tr.begin(s(5.5)), None);
        assert_eq!(tr.deadline(), Some(s(6.0)));
        assert_eq!(tr.attempts(), 1);
    }

    #[test]
    fn zero_period_and_thresholds_are_safe() {
        let mut tr = Tracker::with_params(
            ProbeKind::Readiness,
            Duration::ZERO,
            Duration::ZERO,
            Duration::ZERO,
            0,
            0,
        );
        tr.start();
        tr.begin(Duration::ZERO).unwrap();
        assert_eq!(
            tr.complete(Duration::ZERO, Outcome::Success),
            Some(Transition::Ready)
        );
        assert_eq!(tr.next_start(), Some(MIN_PERIOD));
        tr.check_invariants().unwrap();
    }

    #[test]
    fn huge_times_saturate() {
        let mut tr = readiness(0.0, 1.0, 1.0, 1, 1);
        let late = Duration::from_secs(u64::MAX / 4);
        tr.begin(late).unwrap();
        tr.complete(late, Outcome::Success);
        assert!(tr.next_start().unwrap() > late);
    }

    /// A fuzz-like run: random configurations and outcomes driven through the
    /// public API the way a fuzz target would, checking after every step that
    /// attempts start on the grid or at the completion of an overrun, never
    /// before the initial delay, and that invariants hold.
    #[test]
    fn random_operation_sequences_keep_the_invariants() {
        let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut rand = move |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        for _ in 0..500 {
            let kind = if rand(2) == 0 {
                ProbeKind::Liveness
            } else {
                ProbeKind::Readiness
            };
            let d = Duration::from_millis(rand(5000));
            let p = Duration::from_millis(1 + rand(3000));
            let t = Duration::from_millis(1 + rand(4000));
            let st = 1 + rand(3) as u32;
            let ft = 1 + rand(4) as u32;
            let mut tr = Tracker::with_params(kind, d, p, t, st, ft);
            tr.start();
            let mut now = Duration::ZERO;
            let mut last_completion = None;
            for _ in 0..200 {
                match rand(20) {
                    0 => {
                        tr.stop();
                        assert_eq!(tr.next_start(), None);
                        tr.start();
                        now = Duration::ZERO;
                        last_completion = None;
                    }
                    1 => {
                        tr.hold();
                        assert_eq!(tr.next_start(), None);
                        tr.start();
                        now = Duration::ZERO;
                        last_completion = None;
                    }
                    _ => {}
                }
                let Some(next) = tr.next_start() else {
                    assert!(tr.held() && kind == ProbeKind::Liveness && !tr.state());
                    break;
                };
                assert!(next >= d, "start {next:?} before the delay {d:?}");
                let on_grid = (next - d).as_nanos() % p.as_nanos() == 0;
                assert!(
                    on_grid || Some(next) == last_completion,
                    "start {next:?} neither on the grid nor at a completion"
                );
                now = now.max(next);
                let deadline = tr.begin(now).unwrap();
                assert_eq!(deadline, now + t);
                let took = Duration::from_millis(rand(t.as_millis() as u64 + 1));
                let outcome = match rand(3) {
                    0 => Outcome::Success,
                    1 => Outcome::Failure,
                    _ => Outcome::Error,
                };
                now += took;
                let before = tr.state();
                let transition = tr.complete(now, outcome);
                // A transition is reported exactly when the published state changes.
                assert_eq!(transition.is_some(), before != tr.state());
                last_completion = Some(now);
                tr.check_invariants().unwrap();
            }
        }
    }
}
