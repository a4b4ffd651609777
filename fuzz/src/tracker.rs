//! The probe tracker target: random schedules of starts, stops, holds, time steps
//! and attempt outcomes against `vmpulse::probes::tracker::Tracker`, checked
//! against a small independent model of the Kubernetes rules the tracker follows.
//!
//! Input layout: six parameter bytes (kind, initial delay, period, timeout,
//! success threshold, failure threshold; times in units of 37 ms), then one
//! operation byte each (with an argument byte for time steps and attempts).

use std::time::Duration;

use vmpulse::probes::config::ProbeKind;
use vmpulse::probes::tracker::{Outcome, Tracker, Transition, MIN_PERIOD};

fn ms(b: u8) -> Duration {
    Duration::from_millis(u64::from(b) * 37)
}

/// The reference model: the next start on the grid D + k·P (or at the completion
/// of an overrunning attempt) and the consecutive-result thresholds.
struct Model {
    kind: ProbeKind,
    delay: Duration,
    period: Duration,
    st: u32,
    ft: u32,
    running: bool,
    held: bool,
    next: Duration,
    last: Option<bool>,
    run: u32,
    published: bool,
}

impl Model {
    fn initial(kind: ProbeKind) -> bool {
        kind == ProbeKind::Liveness
    }

    fn start(&mut self) {
        self.running = true;
        self.held = false;
        self.next = self.delay;
        self.last = None;
        self.run = 0;
        self.published = Self::initial(self.kind);
    }

    /// The first tick of the grid strictly after `t`.
    fn tick_after(&self, t: Duration) -> Duration {
        if t < self.delay {
            return self.delay;
        }
        let mut k = (t - self.delay).as_nanos() / self.period.as_nanos() + 1;
        // Guard against rounding: the tick must be strictly after `t`.
        loop {
            let tick = self.delay + self.period * u32::try_from(k).unwrap_or(u32::MAX);
            if tick > t || k >= u128::from(u32::MAX) {
                return tick;
            }
            k += 1;
        }
    }

    fn complete(
        &mut self,
        started: Duration,
        now: Duration,
        outcome: Outcome,
    ) -> Option<Transition> {
        self.next = self.tick_after(started).max(now);
        let success = match outcome {
            Outcome::Success => true,
            Outcome::Failure => false,
            Outcome::Error => return None,
        };
        if self.last == Some(success) {
            self.run += 1;
        } else {
            self.last = Some(success);
            self.run = 1;
        }
        let threshold = if success { self.st } else { self.ft };
        if self.run < threshold {
            return None;
        }
        let changed = self.published != success;
        self.published = success;
        if self.kind == ProbeKind::Liveness && !success {
            self.held = true;
            self.run = 0;
            return changed.then_some(Transition::LivenessFailed);
        }
        match (changed, self.kind) {
            (true, ProbeKind::Readiness) => Some(if success {
                Transition::Ready
            } else {
                Transition::NotReady
            }),
            _ => None,
        }
    }
}

/// Decode `data` and drive a tracker and the model side by side; panics on any
/// disagreement or broken invariant.
pub fn run_tracker(data: &[u8]) {
    let mut it = data.iter().copied();
    let mut next = || it.next();
    let (Some(k), Some(d), Some(p), Some(t), Some(st), Some(ft)) =
        (next(), next(), next(), next(), next(), next())
    else {
        return;
    };
    let kind = if k & 1 == 0 {
        ProbeKind::Liveness
    } else {
        ProbeKind::Readiness
    };
    let (st, ft) = (u32::from(st % 5), u32::from(ft % 5));
    let mut tr = Tracker::with_params(kind, ms(d), ms(p), ms(t), st, ft);
    let mut model = Model {
        kind,
        delay: ms(d),
        period: ms(p).max(MIN_PERIOD),
        st: st.max(1),
        ft: ft.max(1),
        running: false,
        held: false,
        next: ms(d),
        last: None,
        run: 0,
        published: Model::initial(kind),
    };
    tr.start();
    model.start();
    let mut now = Duration::ZERO;
    while let Some(op) = next() {
        match op % 8 {
            0 => {
                tr.stop();
                tr.start();
                model.start();
                now = Duration::ZERO;
            }
            1 => {
                tr.hold();
                model.held = true;
            }
            2 => now += ms(next().unwrap_or(0)),
            _ => {
                let expected = (model.running && !model.held).then_some(model.next);
                assert_eq!(tr.next_start(), expected, "next start");
                let Some(start) = expected else { continue };
                assert!(start >= model.delay, "an attempt before the initial delay");
                now = now.max(start);
                let deadline = tr.begin(now).expect("an attempt is due at its start time");
                assert_eq!(deadline, now + tr.timeout());
                let started = now;
                assert!(tr.begin(now).is_none(), "two attempts in flight");
                now = (now + ms(next().unwrap_or(0))).min(deadline);
                let outcome =
                    [Outcome::Success, Outcome::Failure, Outcome::Error][usize::from(op % 3)];
                let want = model.complete(started, now, outcome);
                assert_eq!(tr.complete(now, outcome), want, "transition");
                assert_eq!(tr.state(), model.published, "published state");
            }
        }
        tr.check_invariants().expect("tracker invariants");
    }
}
