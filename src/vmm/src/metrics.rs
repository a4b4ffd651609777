//! The Prometheus series of `vmpulse run --metrics-addr`, kept with `prometheus-client`.
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
//! | `vmpulse_probe_results_total` | counter | `probe` (the handler), `type`, `result` |
//! | `vmpulse_probe_duration_seconds` | histogram | `probe`, `type` |
//!
//! The counters follow the run's events (see [`super::status`]); the gauges and the kick
//! counter are brought up to date just before each scrape.

use std::borrow::Cow;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// The content type of [`Metrics::encode`]'s text (OpenMetrics, which Prometheus reads).
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The phases `vmpulse_vm_phase` reports, KubeVirt's VMI phase words.
pub const PHASES: [&str; 4] = ["Scheduled", "Running", "Succeeded", "Failed"];

/// Upper bounds of the probe duration buckets, in seconds (1 ms to 10 s).
const DURATION_BUCKETS: [f64; 13] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

type Labels = Vec<(&'static str, String)>;

fn duration_histogram() -> Histogram {
    Histogram::new(DURATION_BUCKETS)
}

/// The run's metrics registry.
pub struct Metrics {
    registry: Registry,
    boots: Counter,
    restarts: Counter,
    ready: Gauge,
    phase: Family<Labels, Gauge>,
    expiries: Family<Labels, Counter>,
    kicks: Counter,
    kicks_seen: u64,
    probe_results: Family<Labels, Counter>,
    probe_duration: Family<Labels, Histogram, fn() -> Histogram>,
}

impl Metrics {
    /// The series of the VM named `vm`, all at zero.
    pub fn new(vm: &str) -> Self {
        let mut registry = Registry::with_labels(std::iter::once((
            Cow::Borrowed("vm"),
            Cow::Owned(vm.to_string()),
        )));
        let m = Metrics {
            boots: Counter::default(),
            restarts: Counter::default(),
            ready: Gauge::default(),
            phase: Family::default(),
            expiries: Family::default(),
            kicks: Counter::default(),
            kicks_seen: 0,
            probe_results: Family::default(),
            probe_duration: Family::new_with_constructor(duration_histogram),
            registry: Registry::default(),
        };
        // The encoder adds `_total` to counters.
        registry.register(
            "vmpulse_vm_boots",
            "Boots of the VM, warm resets included",
            m.boots.clone(),
        );
        registry.register(
            "vmpulse_vm_restarts",
            "runStrategy restarts of the VM",
            m.restarts.clone(),
        );
        registry.register(
            "vmpulse_vm_ready",
            "1 when the VM is Ready, else 0",
            m.ready.clone(),
        );
        registry.register(
            "vmpulse_vm_phase",
            "1 for the VM's current phase (KubeVirt's VMI phase words), 0 for the others",
            m.phase.clone(),
        );
        registry.register(
            "vmpulse_watchdog_expiries",
            "Expiries of the i6300esb watchdog, by action",
            m.expiries.clone(),
        );
        registry.register(
            "vmpulse_watchdog_guest_kicks",
            "Times the guest kicked (reloaded) the watchdog",
            m.kicks.clone(),
        );
        registry.register(
            "vmpulse_probe_results",
            "Completed probe attempts, by probe handler, type and result",
            m.probe_results.clone(),
        );
        registry.register(
            "vmpulse_probe_duration_seconds",
            "How long probe attempts took",
            m.probe_duration.clone(),
        );
        for phase in PHASES {
            m.phase
                .get_or_create(&vec![("phase", phase.to_string())])
                .set(0);
        }
        Metrics { registry, ..m }
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
        self.expiries
            .get_or_create(&vec![("action", action.to_string())])
            .inc();
    }

    /// The probe with handler `kind` (`httpGet`, ...) and type `probe_type` (`liveness`,
    /// `readiness`) completed an attempt with `result` in `seconds`.
    pub fn probe_result(&self, kind: &str, probe_type: &str, result: &str, seconds: f64) {
        self.probe_results
            .get_or_create(&vec![
                ("probe", kind.to_string()),
                ("type", probe_type.to_string()),
                ("result", result.to_string()),
            ])
            .inc();
        self.probe_duration
            .get_or_create(&vec![
                ("probe", kind.to_string()),
                ("type", probe_type.to_string()),
            ])
            .observe(seconds);
    }

    /// The text exposition, with the gauges set to `ready` and `phase` and the kick counter
    /// brought up to `kicks` (the device's count, which only grows).
    pub fn encode(&mut self, ready: bool, phase: &str, kicks: u64) -> String {
        self.ready.set(i64::from(ready));
        for p in PHASES {
            self.phase
                .get_or_create(&vec![("phase", p.to_string())])
                .set(i64::from(p == phase));
        }
        if kicks > self.kicks_seen {
            self.kicks.inc_by(kicks - self.kicks_seen);
            self.kicks_seen = kicks;
        }
        let mut text = String::new();
        if let Err(e) = encode(&mut text, &self.registry) {
            log::warn!("cannot encode the metrics: {e}");
        }
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(text: &str, prefix: &str) -> Option<f64> {
        text.lines()
            .find(|l| l.starts_with(prefix))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
    }

    #[test]
    fn series_carry_the_vm_label_and_follow_the_hooks() {
        let mut m = Metrics::new("testvm");
        m.boot();
        m.boot();
        m.restart();
        m.expiry("reset");
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
                "vmpulse_probe_duration_seconds_bucket{vm=\"testvm\",le=\"0.005\",probe=\"httpGet\",type=\"readiness\"}"
            ),
            Some(1.0),
            "{text}"
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
        assert!(text.ends_with("# EOF\n"), "{text}");
    }
}
