//! The Prometheus series of `vmpulse run --metrics-addr`, kept with the `prometheus` crate.
//!
//! Every series carries a `vm` label (the manifest's name):
//!
//! | series | type | labels |
//! | --- | --- | --- |
//! | `vmpulse_vm_boots_total` | counter | |
//! | `vmpulse_vm_restarts_total` | counter | |
//! | `vmpulse_vm_ready` | gauge (0 or 1) | |
//! | `vmpulse_vm_phase` | gauge (1 for the current phase, 0 for the others) | `phase` |
//! | `vmpulse_watchdog_expiries_total` | counter | `action` |
//! | `vmpulse_watchdog_guest_kicks_total` | counter | |
//! | `vmpulse_watchdog_action_lateness_seconds` | histogram | `action` |
//! | `vmpulse_probe_results_total` | counter | `probe` (the handler), `type`, `result` |
//! | `vmpulse_probe_duration_seconds` | histogram | `probe`, `type` |
//!
//! The counters follow the run's events (see [`super::status`]); the gauges and the kick
//! counter are brought up to date just before each scrape. The text is the Prometheus text
//! exposition format 0.0.4, encoded by the `prometheus` crate, which both `promtool check
//! metrics` and a Prometheus server read.

use std::collections::HashMap;

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

/// The content type of [`Metrics::encode`]'s text.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The phases `vmpulse_vm_phase` reports, KubeVirt's VMI phase words.
pub const PHASES: [&str; 4] = ["Scheduled", "Running", "Succeeded", "Failed"];

/// Upper bounds of the probe duration buckets, in seconds (1 ms to 10 s).
const DURATION_BUCKETS: [f64; 13] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Upper bounds of the watchdog action lateness buckets, in seconds (50 µs to 1 s): from
/// the device's stage-2 deadline to the action carried out (the `late_ms` of `watchdog`
/// events).
const LATENESS_BUCKETS: [f64; 14] = [
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
];

/// The run's metrics registry.
pub struct Metrics {
    registry: Option<Registry>,
    boots: IntCounter,
    restarts: IntCounter,
    ready: IntGauge,
    phase: IntGaugeVec,
    expiries: IntCounterVec,
    kicks: IntCounter,
    kicks_seen: u64,
    lateness: HistogramVec,
    probe_results: IntCounterVec,
    probe_duration: HistogramVec,
}

fn counter(name: &str, help: &str) -> IntCounter {
    IntCounter::new(name, help).expect("a valid metric name")
}

fn counter_vec(name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    IntCounterVec::new(Opts::new(name, help), labels).expect("a valid metric name")
}

impl Metrics {
    /// The series of the VM named `vm`, all at zero.
    pub fn new(vm: &str) -> Self {
        let mut m = Metrics {
            registry: None,
            boots: counter(
                "vmpulse_vm_boots_total",
                "Boots of the VM, warm resets included.",
            ),
            restarts: counter(
                "vmpulse_vm_restarts_total",
                "runStrategy restarts of the VM.",
            ),
            ready: IntGauge::new("vmpulse_vm_ready", "1 when the VM is Ready, else 0.")
                .expect("a valid metric name"),
            phase: IntGaugeVec::new(
                Opts::new(
                    "vmpulse_vm_phase",
                    "1 for the VM's current phase (KubeVirt's VMI phase words), 0 for the others.",
                ),
                &["phase"],
            )
            .expect("a valid metric name"),
            expiries: counter_vec(
                "vmpulse_watchdog_expiries_total",
                "Expiries of the i6300esb watchdog, by action.",
                &["action"],
            ),
            kicks: counter(
                "vmpulse_watchdog_guest_kicks_total",
                "Times the guest kicked (reloaded) the watchdog.",
            ),
            kicks_seen: 0,
            lateness: HistogramVec::new(
                HistogramOpts::new(
                    "vmpulse_watchdog_action_lateness_seconds",
                    "From the watchdog's stage-2 deadline to its action carried out, by action.",
                )
                .buckets(LATENESS_BUCKETS.to_vec()),
                &["action"],
            )
            .expect("a valid metric name"),
            probe_results: counter_vec(
                "vmpulse_probe_results_total",
                "Completed probe attempts, by probe handler, type and result.",
                &["probe", "type", "result"],
            ),
            probe_duration: HistogramVec::new(
                HistogramOpts::new(
                    "vmpulse_probe_duration_seconds",
                    "How long probe attempts took.",
                )
                .buckets(DURATION_BUCKETS.to_vec()),
                &["probe", "type"],
            )
            .expect("a valid metric name"),
        };
        for phase in PHASES {
            m.phase.with_label_values(&[phase]).set(0);
        }
        let labels = HashMap::from([("vm".to_string(), vm.to_string())]);
        // A manifest name is a DNS label, a valid label value; should registering fail
        // anyway, the run goes on without metrics, said once.
        let registry = Registry::new_custom(None, Some(labels)).and_then(|r| {
            r.register(Box::new(m.boots.clone()))?;
            r.register(Box::new(m.restarts.clone()))?;
            r.register(Box::new(m.ready.clone()))?;
            r.register(Box::new(m.phase.clone()))?;
            r.register(Box::new(m.expiries.clone()))?;
            r.register(Box::new(m.kicks.clone()))?;
            r.register(Box::new(m.lateness.clone()))?;
            r.register(Box::new(m.probe_results.clone()))?;
            r.register(Box::new(m.probe_duration.clone()))?;
            Ok(r)
        });
        match registry {
            Ok(r) => m.registry = Some(r),
            Err(e) => log::warn!("no metrics for this run: {e}"),
        }
        m
    }

    /// Show the expiry counter of `action` (at 0) before its first expiry, so that rates
    /// and alerts have a series from the start.
    pub fn declare_expiry(&self, action: &str) {
        self.expiries.with_label_values(&[action]);
    }

    /// Show the result counters of a probe (at 0) before its first attempt.
    pub fn declare_probe(&self, kind: &str, probe_type: &str) {
        for result in ["success", "failure"] {
            self.probe_results
                .with_label_values(&[kind, probe_type, result]);
        }
    }

    /// The VM booted.
    pub fn boot(&self) {
        self.boots.inc();
    }

    /// runStrategy restarts the VM.
    pub fn restart(&self) {
        self.restarts.inc();
    }

    /// The watchdog fired with `action`.
    pub fn expiry(&self, action: &str) {
        self.expiries.with_label_values(&[action]).inc();
    }

    /// The watchdog's `action` was carried out `seconds` after its deadline.
    pub fn action_lateness(&self, action: &str, seconds: f64) {
        self.lateness.with_label_values(&[action]).observe(seconds);
    }

    /// The probe with handler `kind` (`httpGet`, ...) and type `probe_type` (`liveness`,
    /// `readiness`) completed an attempt with `result` in `seconds`.
    pub fn probe_result(&self, kind: &str, probe_type: &str, result: &str, seconds: f64) {
        self.probe_results
            .with_label_values(&[kind, probe_type, result])
            .inc();
        self.probe_duration
            .with_label_values(&[kind, probe_type])
            .observe(seconds);
    }

    /// The text exposition, with the gauges set to `ready` and `phase` and the kick counter
    /// brought up to `kicks` (the device's count, which only grows).
    pub fn encode(&mut self, ready: bool, phase: &str, kicks: u64) -> String {
        self.ready.set(i64::from(ready));
        for p in PHASES {
            self.phase
                .with_label_values(&[p])
                .set(i64::from(p == phase));
        }
        if kicks > self.kicks_seen {
            self.kicks.inc_by(kicks - self.kicks_seen);
            self.kicks_seen = kicks;
        }
        let Some(registry) = &self.registry else {
            return String::new();
        };
        let mut text = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&registry.gather(), &mut text) {
            log::warn!("cannot encode the metrics: {e}");
        }
        String::from_utf8(text).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A series' name and its labels in a fixed order.
    fn key(series: &str) -> (String, Vec<String>) {
        let (name, labels) = series.split_once('{').unwrap_or((series, "}"));
        let mut labels: Vec<String> = labels
            .trim_end_matches('}')
            .split(',')
            .filter(|l| !l.is_empty())
            .map(str::to_string)
            .collect();
        labels.sort();
        (name.to_string(), labels)
    }

    /// The value of `series` (`name{label="value",...}`, labels in any order).
    fn sample(text: &str, series: &str) -> Option<f64> {
        let want = key(series);
        text.lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| l.rsplit_once(' '))
            .find(|(s, _)| key(s) == want)
            .and_then(|(_, v)| v.parse().ok())
    }

    #[test]
    fn declared_series_start_at_zero() {
        let mut m = Metrics::new("vm2");
        m.declare_expiry("poweroff");
        m.declare_probe("exec", "liveness");
        let text = m.encode(false, "Scheduled", 0);
        assert_eq!(
            sample(
                &text,
                "vmpulse_watchdog_expiries_total{vm=\"vm2\",action=\"poweroff\"}"
            ),
            Some(0.0)
        );
        assert_eq!(
            sample(
                &text,
                "vmpulse_probe_results_total{vm=\"vm2\",probe=\"exec\",type=\"liveness\",result=\"failure\"}"
            ),
            Some(0.0)
        );
        assert_eq!(
            sample(&text, "vmpulse_vm_phase{vm=\"vm2\",phase=\"Scheduled\"}"),
            Some(1.0)
        );
    }

    #[test]
    fn series_carry_the_vm_label_and_follow_the_hooks() {
        let mut m = Metrics::new("testvm");
        m.boot();
        m.boot();
        m.restart();
        m.expiry("reset");
        m.action_lateness("reset", 0.0003);
        m.probe_result("httpGet", "readiness", "failure", 0.003);
        m.probe_result("httpGet", "readiness", "success", 0.2);
        let text = m.encode(true, "Running", 7);
        assert_eq!(
            sample(&text, "vmpulse_vm_boots_total{vm=\"testvm\"}"),
            Some(2.0)
        );
        assert_eq!(
            sample(&text, "vmpulse_vm_restarts_total{vm=\"testvm\"}"),
            Some(1.0)
        );
        assert_eq!(sample(&text, "vmpulse_vm_ready{vm=\"testvm\"}"), Some(1.0));
        assert_eq!(
            sample(&text, "vmpulse_vm_phase{vm=\"testvm\",phase=\"Running\"}"),
            Some(1.0)
        );
        assert_eq!(
            sample(&text, "vmpulse_vm_phase{vm=\"testvm\",phase=\"Failed\"}"),
            Some(0.0)
        );
        assert_eq!(
            sample(
                &text,
                "vmpulse_watchdog_expiries_total{vm=\"testvm\",action=\"reset\"}"
            ),
            Some(1.0)
        );
        assert_eq!(
            sample(&text, "vmpulse_watchdog_guest_kicks_total{vm=\"testvm\"}"),
            Some(7.0)
        );
        assert_eq!(
            sample(
                &text,
                "vmpulse_probe_results_total{vm=\"testvm\",probe=\"httpGet\",type=\"readiness\",result=\"failure\"}"
            ),
            Some(1.0)
        );
        assert_eq!(
            sample(
                &text,
                "vmpulse_probe_duration_seconds_count{vm=\"testvm\",probe=\"httpGet\",type=\"readiness\"}"
            ),
            Some(2.0)
        );
        assert_eq!(
            sample(
                &text,
                "vmpulse_probe_duration_seconds_bucket{probe=\"httpGet\",type=\"readiness\",vm=\"testvm\",le=\"0.005\"}"
            ),
            Some(1.0),
            "{text}"
        );
        assert_eq!(
            sample(
                &text,
                "vmpulse_watchdog_action_lateness_seconds_bucket{vm=\"testvm\",action=\"reset\",le=\"0.0005\"}"
            ),
            Some(1.0),
            "{text}"
        );
        assert_eq!(
            sample(
                &text,
                "vmpulse_watchdog_action_lateness_seconds_bucket{vm=\"testvm\",action=\"reset\",le=\"0.00025\"}"
            ),
            Some(0.0)
        );
        // The kick counter only grows, by the device's delta.
        let text = m.encode(false, "Failed", 9);
        assert_eq!(
            sample(&text, "vmpulse_watchdog_guest_kicks_total{vm=\"testvm\"}"),
            Some(9.0)
        );
        assert_eq!(sample(&text, "vmpulse_vm_ready{vm=\"testvm\"}"), Some(0.0));
        assert_eq!(
            sample(&text, "vmpulse_vm_phase{vm=\"testvm\",phase=\"Failed\"}"),
            Some(1.0)
        );
    }
}
