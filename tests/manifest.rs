//! The manifest front-end: the seed examples, every validation rule with the
//! exact field path it reports, and hostile input.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use i6300esb::WatchdogAction;
use serde_yaml_ng::Value;
use vmpulse::manifest::{self, LivenessAction, ManifestProblem, RunStrategy, VmSpec};
use vmpulse::probes::config::{HttpScheme, ProbeConfig, ProbeHandler, ProbeKind};

const BIN: &str = env!("CARGO_BIN_EXE_vmpulse");

const SEEDS: [&str; 5] = [
    "example-agent-readiness-probe.yaml",
    "example-http-liveness-probe.yaml",
    "example-readiness-probe.yaml",
    "example-tcp-liveness-probe.yaml",
    "example-watchdog.yaml",
];

fn seed_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/seed")
}

fn seed(name: &str) -> VmSpec {
    manifest::load(&seed_dir().join(name)).unwrap_or_else(|p| panic!("{name}: {p:?}"))
}

fn validate(file: &Path) -> Output {
    let out = Command::new(BIN)
        .arg("validate")
        .arg(file)
        .output()
        .expect("run vmpulse");
    eprintln!(
        "vmpulse validate {}: {:?}\nstdout:\n{}stderr:\n{}",
        file.display(),
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

// ---------------------------------------------------------------- seeds

#[test]
fn seed_examples_are_verbatim_copies_of_the_shared_ones() {
    let shared = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/seed");
    if !shared.is_dir() {
        eprintln!("SKIP: {} does not exist", shared.display());
        return;
    }
    for name in SEEDS {
        let ours = std::fs::read(seed_dir().join(name)).unwrap();
        let theirs = std::fs::read(shared.join(name)).unwrap();
        assert_eq!(ours, theirs, "{name}");
    }
}

#[test]
fn all_five_seed_examples_validate_through_the_binary() {
    for name in SEEDS {
        let file = seed_dir().join(name);
        let out = validate(&file);
        assert_eq!(out.status.code(), Some(0), "{name}");
        let stdout = String::from_utf8(out.stdout).unwrap();
        let mut lines = stdout.lines();
        assert_eq!(
            lines.next(),
            Some(format!("{}: ok", file.display()).as_str())
        );
        let rest: Vec<&str> = lines.collect();
        for ignored in [
            "spec.template.spec.volumes[0].containerDisk",
            "spec.template.spec.volumes[1].cloudInitNoCloud",
            "spec.template.spec.domain.devices.disks",
            "spec.template.spec.domain.devices.rng",
        ] {
            assert!(
                rest.contains(&format!("  ignored by the built-in test guest: {ignored}").as_str()),
                "{name}: {ignored} not listed in {rest:?}"
            );
        }
        assert!(
            !rest.iter().any(|l| l.contains("warning")),
            "{name}: {rest:?}"
        );
        assert!(out.stderr.is_empty());
    }
}

#[test]
fn every_example_manifest_validates() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "yaml") {
            n += 1;
            let spec =
                manifest::load(&path).unwrap_or_else(|p| panic!("{}: {p:#?}", path.display()));
            assert!(!spec.name.is_empty());
        }
    }
    eprintln!("{n} example manifests under {}", dir.display());
}

fn probe(
    kind: ProbeKind,
    delay: u64,
    period: u64,
    timeout: u64,
    success: u32,
    failure: u32,
    handler: ProbeHandler,
) -> ProbeConfig {
    ProbeConfig::builder(kind, handler)
        .initial_delay(Duration::from_secs(delay))
        .period(Duration::from_secs(period))
        .timeout(Duration::from_secs(timeout))
        .success_threshold(success)
        .failure_threshold(failure)
        .build()
        .unwrap()
}

fn http(port: u16) -> ProbeHandler {
    ProbeHandler::HttpGet {
        path: "/".into(),
        port,
        host: None,
        scheme: HttpScheme::Http,
        headers: vec![],
    }
}

#[test]
fn seed_probes_parse_to_the_numbers_in_the_yaml() {
    const GIB: u64 = 1 << 30;

    let s = seed("example-agent-readiness-probe.yaml");
    assert_eq!(s.name, "example-agent-readiness-probe");
    assert_eq!(s.run_strategy, RunStrategy::Always);
    assert_eq!(s.memory_bytes, Some(GIB));
    assert_eq!(s.termination_grace_period, Duration::from_secs(180));
    assert_eq!(s.liveness, None);
    // failureThreshold 10, initialDelaySeconds 120, periodSeconds 10, timeoutSeconds 5.
    let exec = ProbeHandler::Exec {
        command: vec!["cat".into(), "/tmp/healthy.txt".into()],
    };
    assert_eq!(
        s.readiness,
        Some(probe(ProbeKind::Readiness, 120, 10, 5, 1, 10, exec))
    );
    assert_eq!(s.watchdog, None);
    assert_eq!(s.liveness_action, LivenessAction::Stop);

    let s = seed("example-http-liveness-probe.yaml");
    assert_eq!(s.termination_grace_period, Duration::ZERO);
    assert_eq!(
        s.liveness,
        Some(probe(ProbeKind::Liveness, 120, 20, 10, 1, 3, http(1500)))
    );
    assert_eq!(s.readiness, None);

    let s = seed("example-readiness-probe.yaml");
    assert_eq!(
        s.readiness,
        Some(probe(ProbeKind::Readiness, 120, 20, 10, 3, 3, http(1500)))
    );
    assert_eq!(s.liveness, None);

    let s = seed("example-tcp-liveness-probe.yaml");
    let tcp = ProbeHandler::TcpSocket {
        port: 1501,
        host: None,
    };
    assert_eq!(
        s.liveness,
        Some(probe(ProbeKind::Liveness, 120, 20, 10, 1, 3, tcp))
    );
    assert_eq!(s.memory_bytes, Some(GIB));

    let s = seed("example-watchdog.yaml");
    let w = s.watchdog.expect("watchdog");
    assert_eq!(w.name, "mywatchdog");
    assert_eq!(w.action, WatchdogAction::Poweroff);
    assert_eq!((s.liveness, s.readiness), (None, None));
    assert!(s.warnings.is_empty(), "{:?}", s.warnings);
}

// ---------------------------------------------------------------- rules

const BASE: &str = "\
apiVersion: kubevirt.io/v1
kind: VirtualMachine
metadata:
  name: t
spec:
  runStrategy: Always
  template:
    spec:
      domain:
        devices: {}
";

const DEVICES: &[&str] = &["spec", "template", "spec", "domain", "devices"];
const VMI: &[&str] = &["spec", "template", "spec"];
const DOMAIN: &[&str] = &["spec", "template", "spec", "domain"];

/// A manifest built from BASE by a list of edits: (path, Some(yaml)) sets the
/// field (creating mappings on the way), (path, None) removes it.
fn build(edits: &[(&[&str], Option<&str>)]) -> String {
    let mut doc: Value = serde_yaml_ng::from_str(BASE).unwrap();
    for (path, value) in edits {
        let (last, parents) = path.split_last().unwrap();
        let mut node = &mut doc;
        for key in parents {
            let map = node.as_mapping_mut().expect("mapping on the way");
            if !map.contains_key(*key) {
                map.insert(Value::from(*key), Value::Mapping(Default::default()));
            }
            node = map.get_mut(*key).unwrap();
        }
        let map = node.as_mapping_mut().expect("parent mapping");
        match value {
            Some(v) => {
                map.insert(Value::from(*last), serde_yaml_ng::from_str(v).unwrap());
            }
            None => {
                map.remove(*last);
            }
        }
    }
    serde_yaml_ng::to_string(&doc).unwrap()
}

fn at<'a>(base: &[&'a str], rest: &[&'a str]) -> Vec<&'a str> {
    base.iter().chain(rest).copied().collect()
}

fn ok(edits: &[(&[&str], Option<&str>)]) -> VmSpec {
    let text = build(edits);
    manifest::parse_str(&text).unwrap_or_else(|p| panic!("{text}\n{p:#?}"))
}

fn problems(edits: &[(&[&str], Option<&str>)]) -> Vec<ManifestProblem> {
    let text = build(edits);
    match manifest::parse_str(&text) {
        Ok(s) => panic!("accepted:\n{text}\n{s:#?}"),
        Err(p) => p,
    }
}

/// Exactly one problem, at `path`, whose message contains `needle`.
fn fails_at(edits: &[(&[&str], Option<&str>)], path: &str, needle: &str) {
    let p = problems(edits);
    assert_eq!(p.len(), 1, "{p:#?}");
    assert_eq!(p[0].path, path, "{p:#?}");
    assert!(p[0].message.contains(needle), "{p:#?}");
}

#[test]
fn the_base_manifest_is_valid_with_defaults() {
    let s = ok(&[]);
    assert_eq!(s.name, "t");
    assert_eq!(s.run_strategy, RunStrategy::Always);
    assert_eq!(s.watchdog, None);
    assert_eq!(s.memory_bytes, None);
    assert_eq!(s.termination_grace_period, Duration::from_secs(30));
    assert_eq!(s.liveness_action, LivenessAction::Stop);
    assert!(s.ignored.is_empty() && s.warnings.is_empty());
}

#[test]
fn api_version_and_kind() {
    fails_at(
        &[(&["apiVersion"], None)],
        "apiVersion",
        "required field missing",
    );
    fails_at(
        &[(&["apiVersion"], Some("kubevirt.io/v2"))],
        "apiVersion",
        "unsupported apiVersion \"kubevirt.io/v2\"",
    );
    assert_eq!(
        ok(&[(&["apiVersion"], Some("kubevirt.io/v1alpha3"))]).name,
        "t"
    );
    fails_at(&[(&["kind"], None)], "kind", "required field missing");
    fails_at(
        &[(&["kind"], Some("VirtualMachineInstance"))],
        "kind",
        "expected VirtualMachine",
    );
    fails_at(
        &[(&["kind"], Some("[1]"))],
        "kind",
        "invalid type: sequence",
    );
}

#[test]
fn metadata_name_and_annotations() {
    fails_at(
        &[(&["metadata", "name"], None)],
        "metadata.name",
        "required field missing",
    );
    fails_at(
        &[(&["metadata", "name"], Some("Not_Valid"))],
        "metadata.name",
        "not a valid name",
    );
    fails_at(
        &[(&["metadata"], None)],
        "metadata",
        "required field missing",
    );
    const ANN: &[&str] = &["metadata", "annotations", "vmpulse.io/liveness-action"];
    fails_at(
        &[(ANN, Some("explode"))],
        "metadata.annotations.vmpulse.io/liveness-action",
        "unknown liveness action \"explode\"",
    );
    for (v, want) in [
        ("stop", LivenessAction::Stop),
        ("reset", LivenessAction::Reset),
        ("shutdown", LivenessAction::Shutdown),
    ] {
        assert_eq!(ok(&[(ANN, Some(v))]).liveness_action, want);
    }
    let s = ok(&[(
        &["metadata", "annotations"],
        Some("{vmpulse.io/guest-timeout: '2', other.io/x: 3}"),
    )]);
    assert_eq!(
        s.annotations
            .get("vmpulse.io/guest-timeout")
            .map(String::as_str),
        Some("2")
    );
    assert_eq!(
        s.annotations.get("other.io/x").map(String::as_str),
        Some("3")
    );
    fails_at(
        &[(&["metadata", "annotations", "a"], Some("[1, 2]"))],
        "metadata.annotations.a",
        "annotation values are strings",
    );
}

#[test]
fn run_strategy_and_legacy_running() {
    for (name, want) in [
        ("Always", RunStrategy::Always),
        ("RerunOnFailure", RunStrategy::RerunOnFailure),
        ("Once", RunStrategy::Once),
        ("Halted", RunStrategy::Halted),
        ("Manual", RunStrategy::Manual),
    ] {
        assert_eq!(
            ok(&[(&["spec", "runStrategy"], Some(name))]).run_strategy,
            want
        );
    }
    fails_at(
        &[(&["spec", "runStrategy"], Some("Sometimes"))],
        "spec.runStrategy",
        "unknown runStrategy \"Sometimes\"",
    );
    let running = |v: &'static str| -> Vec<(&'static [&'static str], Option<&'static str>)> {
        vec![
            (&["spec", "runStrategy"], None),
            (&["spec", "running"], Some(v)),
        ]
    };
    assert_eq!(ok(&running("true")).run_strategy, RunStrategy::Always);
    assert_eq!(ok(&running("false")).run_strategy, RunStrategy::Halted);
    fails_at(
        &[(&["spec", "running"], Some("true"))],
        "spec.running",
        "mutually exclusive",
    );
    fails_at(&running("yes please"), "spec.running", "invalid type");
    // Neither: KubeVirt's default, Halted, with a warning.
    let s = ok(&[(&["spec", "runStrategy"], None)]);
    assert_eq!(s.run_strategy, RunStrategy::Halted);
    assert_eq!(s.warnings.len(), 1);
    assert_eq!(s.warnings[0].path, "spec.runStrategy");
}

#[test]
fn required_structure() {
    fails_at(&[(&["spec"], None)], "spec", "required field missing");
    fails_at(
        &[(&["spec", "template"], None)],
        "spec.template",
        "required field missing",
    );
    fails_at(
        &[(VMI, None)],
        "spec.template.spec",
        "required field missing",
    );
    fails_at(
        &[(DOMAIN, None)],
        "spec.template.spec.domain",
        "required field missing",
    );
    fails_at(
        &[(DEVICES, None)],
        "spec.template.spec.domain.devices",
        "required field missing",
    );
    fails_at(
        &[(&["spec"], Some("5"))],
        "spec",
        "invalid type: integer `5`",
    );
}

#[test]
fn watchdog_actions() {
    const W: &str = "spec.template.spec.domain.devices.watchdog";
    let wd = at(DEVICES, &["watchdog"]);
    // The exact message the manifest crate's documentation shows.
    let p = problems(&[(&wd, Some("{name: w, i6300esb: {action: explode}}"))]);
    assert_eq!(p.len(), 1);
    assert_eq!(
        p[0].to_string(),
        "spec.template.spec.domain.devices.watchdog.i6300esb.action: unknown action \"explode\""
    );
    // Default reset; KubeVirt's three without warnings.
    let s = ok(&[(&wd, Some("{name: w, i6300esb: {}}"))]);
    assert_eq!(s.watchdog.unwrap().action, WatchdogAction::Reset);
    for (name, want) in [
        ("poweroff", WatchdogAction::Poweroff),
        ("reset", WatchdogAction::Reset),
        ("shutdown", WatchdogAction::Shutdown),
    ] {
        let yaml = format!("{{name: w, i6300esb: {{action: {name}}}}}");
        let s = ok(&[(&wd, Some(&yaml))]);
        assert_eq!(s.watchdog.unwrap().action, want);
        assert!(s.warnings.is_empty());
    }
    // vmpulse's extensions: accepted, with a warning at the action's path.
    for (name, want) in [
        ("pause", WatchdogAction::Pause),
        ("none", WatchdogAction::None),
        ("inject-nmi", WatchdogAction::InjectNmi),
        ("debug", WatchdogAction::Debug),
    ] {
        let yaml = format!("{{name: w, i6300esb: {{action: {name}}}}}");
        let s = ok(&[(&wd, Some(&yaml))]);
        assert_eq!(s.watchdog.unwrap().action, want);
        assert_eq!(s.warnings.len(), 1);
        assert_eq!(s.warnings[0].path, format!("{W}.i6300esb.action"));
    }
    // Case matters, as in KubeVirt.
    fails_at(
        &[(&wd, Some("{name: w, i6300esb: {action: Reset}}"))],
        &format!("{W}.i6300esb.action"),
        "unknown action \"Reset\"",
    );
    fails_at(
        &[(&wd, Some("{name: w}"))],
        &format!("{W}.i6300esb"),
        "i6300esb",
    );
    let p = problems(&[(&wd, Some("{name: w, diag288: {action: reset}}"))]);
    let paths: Vec<&str> = p.iter().map(|p| p.path.as_str()).collect();
    assert_eq!(paths, [format!("{W}.diag288"), format!("{W}.i6300esb")]);
    fails_at(
        &[(&wd, Some("{i6300esb: {}}"))],
        &format!("{W}.name"),
        "required field missing",
    );
    fails_at(
        &[(&wd, Some("{name: w, i6300esb: {action: 3}}"))],
        &format!("{W}.i6300esb.action"),
        "invalid type",
    );
}

#[test]
fn memory_quantities() {
    let req = at(DOMAIN, &["resources", "requests", "memory"]);
    let guest = at(DOMAIN, &["memory", "guest"]);
    for (yaml, bytes) in [
        ("1Gi", 1u64 << 30),
        ("512Mi", 512 << 20),
        ("64M", 64_000_000),
        ("1G", 1_000_000_000),
        ("1073741824", 1 << 30),
        ("'1e9'", 1_000_000_000),
        ("1e9", 1_000_000_000),
        ("'0.5Gi'", 1 << 29),
    ] {
        assert_eq!(
            ok(&[(&req, Some(yaml))]).memory_bytes,
            Some(bytes),
            "{yaml}"
        );
        assert_eq!(
            ok(&[(&guest, Some(yaml))]).memory_bytes,
            Some(bytes),
            "{yaml}"
        );
    }
    const R: &str = "spec.template.spec.domain.resources.requests.memory";
    fails_at(&[(&req, Some("1GB"))], R, "not a Kubernetes quantity");
    fails_at(&[(&req, Some("-1Gi"))], R, "negative");
    fails_at(&[(&req, Some("-5"))], R, "negative");
    fails_at(&[(&req, Some("99999Ei"))], R, "too large");
    fails_at(&[(&req, Some("[1]"))], R, "expected a quantity");
    fails_at(
        &[(&guest, Some("lots"))],
        "spec.template.spec.domain.memory.guest",
        "not a Kubernetes quantity",
    );
    // memory.guest wins over the request, as in KubeVirt.
    let s = ok(&[(&req, Some("1Gi")), (&guest, Some("256Mi"))]);
    assert_eq!(s.memory_bytes, Some(256 << 20));
    // Other resources are ignored, not errors.
    let s = ok(&[(&at(DOMAIN, &["resources", "requests", "cpu"]), Some("2"))]);
    assert_eq!(
        s.ignored,
        ["spec.template.spec.domain.resources.requests.cpu"]
    );
}

#[test]
fn termination_grace_period() {
    let g = at(VMI, &["terminationGracePeriodSeconds"]);
    assert_eq!(
        ok(&[(&g, Some("0"))]).termination_grace_period,
        Duration::ZERO
    );
    assert_eq!(
        ok(&[(&g, Some("7"))]).termination_grace_period,
        Duration::from_secs(7)
    );
    fails_at(
        &[(&g, Some("-1"))],
        "spec.template.spec.terminationGracePeriodSeconds",
        "must be greater than or equal to 0",
    );
    fails_at(
        &[(&g, Some("'30'"))],
        "spec.template.spec.terminationGracePeriodSeconds",
        "invalid type: string",
    );
}

const LP: &str = "spec.template.spec.livenessProbe";
const RP: &str = "spec.template.spec.readinessProbe";

fn liveness(yaml: &str) -> Result<VmSpec, Vec<ManifestProblem>> {
    manifest::parse_str(&build(&[(&at(VMI, &["livenessProbe"]), Some(yaml))]))
}

fn readiness(yaml: &str) -> Result<VmSpec, Vec<ManifestProblem>> {
    manifest::parse_str(&build(&[(&at(VMI, &["readinessProbe"]), Some(yaml))]))
}

fn one_problem(r: Result<VmSpec, Vec<ManifestProblem>>, path: &str, needle: &str) {
    let p = r.expect_err("should fail");
    assert_eq!(p.len(), 1, "{p:#?}");
    assert_eq!(p[0].path, path, "{p:#?}");
    assert!(p[0].message.contains(needle), "{p:#?}");
}

#[test]
fn probe_defaults_and_explicit_zero() {
    let s = liveness("{tcpSocket: {port: 80}}").unwrap();
    let tcp = ProbeHandler::TcpSocket {
        port: 80,
        host: None,
    };
    assert_eq!(
        s.liveness,
        Some(probe(ProbeKind::Liveness, 0, 10, 1, 1, 3, tcp.clone()))
    );
    let s = liveness(
        "{tcpSocket: {port: 80}, initialDelaySeconds: 0, periodSeconds: 0, timeoutSeconds: 0, successThreshold: 0, failureThreshold: 0}",
    )
    .unwrap();
    assert_eq!(
        s.liveness,
        Some(probe(ProbeKind::Liveness, 0, 10, 1, 1, 3, tcp))
    );
    let s = readiness("{guestAgentPing: {}, successThreshold: 2, initialDelaySeconds: 5}").unwrap();
    assert_eq!(
        s.readiness,
        Some(probe(
            ProbeKind::Readiness,
            5,
            10,
            1,
            2,
            3,
            ProbeHandler::GuestAgentPing
        ))
    );
    let s = liveness("{guestAgentPing: {}}").unwrap();
    assert_eq!(*s.liveness.unwrap().handler(), ProbeHandler::GuestAgentPing);
}

#[test]
fn probe_numbers_are_never_negative() {
    for field in [
        "initialDelaySeconds",
        "periodSeconds",
        "timeoutSeconds",
        "successThreshold",
        "failureThreshold",
    ] {
        let yaml = format!("{{tcpSocket: {{port: 80}}, {field}: -1}}");
        one_problem(
            readiness(&yaml),
            &format!("{RP}.{field}"),
            "must be greater than or equal to 0, found -1",
        );
    }
    one_problem(
        readiness("{tcpSocket: {port: 80}, periodSeconds: 3000000000}"),
        &format!("{RP}.periodSeconds"),
        "32-bit",
    );
    one_problem(
        readiness("{tcpSocket: {port: 80}, periodSeconds: '10'}"),
        &format!("{RP}.periodSeconds"),
        "invalid type: string",
    );
}

#[test]
fn liveness_success_threshold_must_be_1() {
    one_problem(
        liveness("{tcpSocket: {port: 80}, successThreshold: 2}"),
        &format!("{LP}.successThreshold"),
        "must be 1",
    );
    assert!(liveness("{tcpSocket: {port: 80}, successThreshold: 1}").is_ok());
    assert_eq!(
        readiness("{tcpSocket: {port: 80}, successThreshold: 2}")
            .unwrap()
            .readiness
            .unwrap()
            .success_threshold(),
        2
    );
}

#[test]
fn exactly_one_handler() {
    one_problem(
        liveness("{periodSeconds: 5}"),
        LP,
        "must specify a handler type",
    );
    one_problem(
        liveness("{tcpSocket: {port: 80}, exec: {command: [x]}}"),
        LP,
        "may not specify more than 1 handler type (found tcpSocket, exec)",
    );
    // grpc is Kubernetes-only: a warning, and no handler.
    let p = liveness("{grpc: {port: 80}}").unwrap_err();
    assert_eq!(p.len(), 1);
    assert_eq!(p[0].path, LP);
}

#[test]
fn ports() {
    for bad in ["0", "65536", "-1", "70000"] {
        one_problem(
            liveness(&format!("{{httpGet: {{port: {bad}}}}}")),
            &format!("{LP}.httpGet.port"),
            "must be between 1 and 65535",
        );
        one_problem(
            readiness(&format!("{{tcpSocket: {{port: {bad}}}}}")),
            &format!("{RP}.tcpSocket.port"),
            "must be between 1 and 65535",
        );
    }
    one_problem(
        liveness("{httpGet: {path: /x}}"),
        &format!("{LP}.httpGet.port"),
        "required field missing",
    );
    one_problem(
        liveness("{tcpSocket: {port: [1]}}"),
        &format!("{LP}.tcpSocket.port"),
        "expected a port number or name",
    );
    assert_eq!(
        liveness("{tcpSocket: {port: 65535}}")
            .unwrap()
            .liveness
            .unwrap()
            .handler()
            .clone(),
        ProbeHandler::TcpSocket {
            port: 65535,
            host: None
        }
    );
    // Named ports resolve against the VM's declared ports.
    let ifaces = at(DEVICES, &["interfaces"]);
    let declared = "[{name: default, masquerade: {}, ports: [{name: http, port: 8080}, {name: ssh, port: 22, protocol: TCP}]}]";
    let lp = at(VMI, &["livenessProbe"]);
    let s = ok(&[
        (&ifaces, Some(declared)),
        (&lp, Some("{httpGet: {port: http}}")),
    ]);
    assert!(matches!(
        *s.liveness.unwrap().handler(),
        ProbeHandler::HttpGet { port: 8080, .. }
    ));
    assert!(s
        .ignored
        .contains(&"spec.template.spec.domain.devices.interfaces".to_string()));
    let s = ok(&[
        (&ifaces, Some(declared)),
        (&lp, Some("{tcpSocket: {port: ssh}}")),
    ]);
    assert!(matches!(
        *s.liveness.unwrap().handler(),
        ProbeHandler::TcpSocket { port: 22, .. }
    ));
    fails_at(
        &[
            (&ifaces, Some(declared)),
            (&lp, Some("{httpGet: {port: web}}")),
        ],
        &format!("{LP}.httpGet.port"),
        "named port \"web\" is not declared",
    );
    fails_at(
        &[(&lp, Some("{tcpSocket: {port: http}}"))],
        &format!("{LP}.tcpSocket.port"),
        "not declared",
    );
    // Not IANA_SVC_NAMEs: digits only, upper case, too long, double dash.
    for bad in ["'8080'", "HTTP", "a-very-long-port-name", "a--b"] {
        fails_at(
            &[
                (&ifaces, Some(declared)),
                (&lp, Some(&format!("{{httpGet: {{port: {bad}}}}}"))),
            ],
            &format!("{LP}.httpGet.port"),
            "not a valid port name",
        );
    }
    // Declared ports are checked too.
    fails_at(
        &[(&ifaces, Some("[{name: d, ports: [{name: http, port: 0}]}]"))],
        "spec.template.spec.domain.devices.interfaces[0].ports[0].port",
        "must be between 1 and 65535",
    );
}

#[test]
fn http_get_fields() {
    let s = liveness(
        "{httpGet: {port: 80, path: /healthz?x=1, host: '::1', scheme: HTTPS, httpHeaders: [{name: X-A, value: '1'}, {name: X-A, value: '2'}, {name: Host, value: example.com}]}}",
    )
    .unwrap();
    assert_eq!(
        *s.liveness.unwrap().handler(),
        ProbeHandler::HttpGet {
            path: "/healthz?x=1".into(),
            port: 80,
            host: Some("::1".into()),
            scheme: HttpScheme::Https,
            headers: vec![
                ("X-A".into(), "1".into()),
                ("X-A".into(), "2".into()),
                ("Host".into(), "example.com".into())
            ],
        }
    );
    for bad in ["FTP", "https", "''"] {
        one_problem(
            liveness(&format!("{{httpGet: {{port: 80, scheme: {bad}}}}}")),
            &format!("{LP}.httpGet.scheme"),
            "unsupported scheme",
        );
    }
    one_problem(
        liveness("{httpGet: {port: 80, httpHeaders: [{name: X-Ok, value: a}, {name: 'Bad Header', value: b}]}}"),
        &format!("{LP}.httpGet.httpHeaders[1].name"),
        "not a valid HTTP header name",
    );
    one_problem(
        liveness("{httpGet: {port: 80, httpHeaders: [{value: b}]}}"),
        &format!("{LP}.httpGet.httpHeaders[0].name"),
        "required field missing",
    );
    one_problem(
        liveness("{httpGet: {port: 80, httpHeaders: [{name: X, value: \"a\\r\\nEvil: 1\"}]}}"),
        &format!("{LP}.httpGet.httpHeaders[0].value"),
        "control characters",
    );
    one_problem(
        liveness("{httpGet: {port: 80, path: '/a b'}}"),
        &format!("{LP}.httpGet.path"),
        "spaces or control characters",
    );
}

#[test]
fn exec_command() {
    one_problem(
        readiness("{exec: {command: []}}"),
        &format!("{RP}.exec.command"),
        "must not be empty",
    );
    one_problem(
        readiness("{exec: {command: ['']}}"),
        &format!("{RP}.exec.command"),
        "must not be empty",
    );
    one_problem(
        readiness("{exec: {}}"),
        &format!("{RP}.exec.command"),
        "required field missing",
    );
    one_problem(
        readiness("{exec: {command: cat}}"),
        &format!("{RP}.exec.command"),
        "invalid type: string",
    );
    one_problem(
        readiness("{exec: {command: [cat, [x]]}}"),
        &format!("{RP}.exec.command[1]"),
        "invalid type",
    );
    let s = readiness("{exec: {command: [cat, /tmp/x]}}").unwrap();
    assert_eq!(
        *s.readiness.unwrap().handler(),
        ProbeHandler::Exec {
            command: vec!["cat".into(), "/tmp/x".into()]
        }
    );
}

#[test]
fn unknown_fields_are_warnings_with_paths_and_known_unused_ones_are_ignored() {
    let s = ok(&[
        (&at(VMI, &["livenesProbe"]), Some("{tcpSocket: {port: 80}}")),
        (&["spec", "colour"], Some("blue")),
        (
            &at(DEVICES, &["watchdog"]),
            Some("{name: w, i6300esb: {actoin: reset}}"),
        ),
        (&at(VMI, &["networks"]), Some("[{name: default, pod: {}}]")),
        (&at(DOMAIN, &["cpu"]), Some("{cores: 2}")),
        (&["metadata", "labels"], Some("{a: b}")),
    ]);
    let warnings: Vec<String> = s.warnings.iter().map(ToString::to_string).collect();
    assert_eq!(warnings.len(), 3, "{warnings:#?}");
    assert!(
        warnings.iter().any(
            |w| w.starts_with("spec.template.spec.livenesProbe: unknown field")
                && w.contains("did you mean \"livenessProbe\"")
        ),
        "{warnings:#?}"
    );
    assert!(
        warnings
            .iter()
            .any(|w| w.starts_with("spec.colour: unknown field")),
        "{warnings:#?}"
    );
    assert!(
        warnings.iter().any(|w| w.starts_with(
            "spec.template.spec.domain.devices.watchdog.i6300esb.actoin: unknown field"
        ) && w.contains("\"action\"")),
        "{warnings:#?}"
    );
    // The typo means the probe is not there: the defaulted action is used.
    assert_eq!(s.liveness, None);
    assert_eq!(s.watchdog.unwrap().action, WatchdogAction::Reset);
    for p in [
        "spec.template.spec.networks",
        "spec.template.spec.domain.cpu",
        "metadata.labels",
    ] {
        assert!(s.ignored.contains(&p.to_string()), "{p}: {:?}", s.ignored);
    }
}

#[test]
fn validate_prints_ignored_and_warnings_on_success() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("vm.yaml");
    std::fs::write(
        &file,
        build(&[
            (
                &at(DEVICES, &["disks"]),
                Some("[{name: d, disk: {bus: virtio}}]"),
            ),
            (&["spec", "colour"], Some("blue")),
        ]),
    )
    .unwrap();
    let out = validate(&file);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        format!(
            "{}: ok\n  ignored by the built-in test guest: spec.template.spec.domain.devices.disks\n  warning: spec.colour: unknown field, not part of KubeVirt's VirtualMachine schema; ignored\n",
            file.display()
        )
    );
}

#[test]
fn every_problem_is_reported_at_once() {
    let text = build(&[
        (&["apiVersion"], Some("v1")),
        (
            &["metadata", "annotations", "vmpulse.io/liveness-action"],
            Some("explode"),
        ),
        (&["spec", "runStrategy"], Some("Never")),
        (&at(VMI, &["terminationGracePeriodSeconds"]), Some("-3")),
        (
            &at(DOMAIN, &["resources", "requests", "memory"]),
            Some("1GB"),
        ),
        (
            &at(DEVICES, &["watchdog"]),
            Some("{name: w, i6300esb: {action: explode}}"),
        ),
        (
            &at(VMI, &["livenessProbe"]),
            Some("{periodSeconds: -1, httpGet: {port: 0, scheme: FTP}}"),
        ),
        (&at(VMI, &["readinessProbe"]), Some("{exec: {command: []}}")),
    ]);
    let p = manifest::parse_str(&text).unwrap_err();
    let paths: Vec<&str> = p.iter().map(|p| p.path.as_str()).collect();
    let want = [
        "apiVersion",
        "metadata.annotations.vmpulse.io/liveness-action",
        "spec.runStrategy",
        "spec.template.spec.terminationGracePeriodSeconds",
        "spec.template.spec.domain.resources.requests.memory",
        "spec.template.spec.domain.devices.watchdog.i6300esb.action",
        "spec.template.spec.livenessProbe.periodSeconds",
        "spec.template.spec.livenessProbe.httpGet.port",
        "spec.template.spec.livenessProbe.httpGet.scheme",
        "spec.template.spec.readinessProbe.exec.command",
    ];
    let mut sorted = paths.clone();
    sorted.sort();
    let mut want_sorted = want.to_vec();
    want_sorted.sort();
    assert_eq!(sorted, want_sorted, "{p:#?}");

    // Through the binary: one `path: message` per line on stderr, exit 2.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bad.yaml");
    std::fs::write(&file, &text).unwrap();
    let out = validate(&file);
    assert_eq!(out.status.code(), Some(2));
    assert!(out.stdout.is_empty());
    let stderr = String::from_utf8(out.stderr).unwrap();
    for problem in &p {
        assert!(
            stderr.lines().any(|l| l == problem.to_string()),
            "{problem} not in {stderr}"
        );
    }
    assert!(stderr.lines().any(|l| l == "spec.template.spec.domain.devices.watchdog.i6300esb.action: unknown action \"explode\""));
}

#[test]
fn validate_refuses_unreadable_and_syntax_errors() {
    let out = validate(Path::new("/nonexistent/vm.yaml"));
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/vm.yaml: cannot read"));

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("syntax.yaml");
    std::fs::write(
        &file,
        "apiVersion: kubevirt.io/v1\nkind: [VirtualMachine\nmetadata: {}\n",
    )
    .unwrap();
    let out = validate(&file);
    assert_eq!(out.status.code(), Some(2));
    let p = manifest::parse_str(&std::fs::read_to_string(&file).unwrap()).unwrap_err();
    assert_eq!(p.len(), 1, "{p:#?}");
    assert_eq!(p[0].path, manifest::DOCUMENT_PATH);
    assert!(p[0].message.contains("line 3 column"), "{p:#?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("YAML syntax error"));
}

// ---------------------------------------------------------------- hostile input

/// Parse and check the invariants: no panic, problems have text.
fn survive(text: &str) {
    let v = manifest::validate_str(text);
    assert_eq!(v.spec.is_some(), v.problems.is_empty());
    for p in &v.problems {
        assert!(!p.path.is_empty() && !p.message.is_empty(), "{p:?}");
    }
}

#[test]
fn truncated_seeds_never_panic() {
    for name in SEEDS {
        let text = std::fs::read_to_string(seed_dir().join(name)).unwrap();
        // Every third byte, and both sides of every line break.
        let b = text.as_bytes();
        let cuts = (0..b.len())
            .filter(|&c| c % 3 == 0 || b[c] == b'\n' || b[c.saturating_sub(1)] == b'\n');
        for cut in cuts {
            if text.is_char_boundary(cut) {
                survive(&text[..cut]);
            }
        }
    }
}

#[test]
fn garbage_never_panics() {
    let deep_seq = "[".repeat(20_000);
    let deep_map = (0..400)
        .map(|i| format!("{}a:\n", " ".repeat(i)))
        .collect::<String>();
    let deep_flow = format!("{}1{}", "{a: ".repeat(2_000), "}".repeat(2_000));
    // "Billion laughs": 9^11 nodes if aliases were expanded naively.
    let laughs = {
        let mut s = String::from("a: &a [x, x, x, x, x, x, x, x, x]\n");
        for i in 1..12 {
            let prev = if i == 1 {
                "a".to_string()
            } else {
                format!("a{}", i - 1)
            };
            let refs = vec![format!("*{prev}"); 9].join(", ");
            s.push_str(&format!("a{i}: &a{i} [{refs}]\n"));
        }
        s
    };
    let huge = build(&[
        (&at(VMI, &["terminationGracePeriodSeconds"]), Some("1e400")),
        (
            &at(VMI, &["livenessProbe"]),
            Some("{periodSeconds: 7, tcpSocket: {port: 1e300}}"),
        ),
        (
            &at(DOMAIN, &["resources", "requests", "memory"]),
            Some("-1e400"),
        ),
        (&at(DOMAIN, &["memory", "guest"]), Some(".inf")),
    ]);
    // An integer beyond 64 bits cannot even become a YAML value: one problem,
    // at its path.
    let too_wide = huge.replace(
        "periodSeconds: 7",
        "periodSeconds: 99999999999999999999999999",
    );
    assert_ne!(too_wide, huge);
    let p = manifest::parse_str(&too_wide).unwrap_err();
    assert_eq!(p.len(), 1, "{p:#?}");
    assert_eq!(p[0].path, "spec.template.spec.livenessProbe.periodSeconds");
    assert!(
        p[0].message.contains("99999999999999999999999999"),
        "{p:#?}"
    );
    let inputs: Vec<String> = vec![
        String::new(),
        "\n".into(),
        "~".into(),
        "42".into(),
        "- a\n- b\n".into(),
        "\"just a string\"".into(),
        "\t\tapiVersion: x".into(),
        "a: b\n---\nc: d\n".into(),
        "!!binary aGVsbG8=".into(),
        "? [a, b]\n: c\n".into(),
        "{1: 2, [3]: 4, {5: 6}: 7}".into(),
        "apiVersion: kubevirt.io/v1\napiVersion: kubevirt.io/v1\n".into(),
        "spec: &s {template: *s}".into(),
        "\u{feff}apiVersion: kubevirt.io/v1".into(),
        "\0\u{1}\u{7f}".into(),
        deep_seq,
        deep_map,
        deep_flow,
        laughs,
        huge.clone(),
        too_wide,
    ];
    for text in &inputs {
        survive(text);
    }
    let p = manifest::parse_str(&huge).unwrap_err();
    let paths: Vec<&str> = p.iter().map(|p| p.path.as_str()).collect();
    for want in [
        "spec.template.spec.terminationGracePeriodSeconds",
        "spec.template.spec.livenessProbe.tcpSocket.port",
        "spec.template.spec.domain.resources.requests.memory",
        "spec.template.spec.domain.memory.guest",
    ] {
        assert!(paths.contains(&want), "{want} not in {p:#?}");
    }
    // Pseudo-random byte soup from YAML's own alphabet.
    let alphabet = b"ab:-[]{}&*!|>'\"#%@` \n\t?,.0123456789";
    let mut seed = 0x9e37_79b9u32;
    for _ in 0..3_000 {
        let mut s = String::new();
        seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
        for _ in 0..(seed >> 24) {
            seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            s.push(alphabet[(seed >> 16) as usize % alphabet.len()] as char);
        }
        survive(&s);
    }
}

// ---------------------------------------------------------------- manifests that blow up

/// Run `vmpulse ARGS...` and return its output and wall time.
fn vmpulse(args: &[&std::ffi::OsStr]) -> (Output, Duration) {
    let t = std::time::Instant::now();
    let out = Command::new(BIN).args(args).output().expect("run vmpulse");
    (out, t.elapsed())
}

#[test]
fn deep_nesting_is_refused_before_parsing_by_validate_and_run() {
    const DOC: &str = manifest::DOCUMENT_PATH;
    let head =
        "apiVersion: kubevirt.io/v1\nkind: VirtualMachine\nmetadata: {name: x}\nspec:\n  a: ";
    let flow = format!("{head}{}{}\n", "[".repeat(40_000), "]".repeat(40_000));
    let mixed = format!("{head}{}1{}\n", "{a: [".repeat(20_000), "]}".repeat(20_000));
    let compact = format!("{head}\n    {}x\n", "- ".repeat(40_000));
    let block: String = (0..1_000)
        .map(|d| format!("{}k:\n", " ".repeat(d)))
        .collect();
    // Quotes inside plain scalars do not hide what follows.
    let quote_in_plain = format!(
        "{head}[x'\n  \"{}{}]\n",
        "[".repeat(40_000),
        "]".repeat(40_000)
    );
    for text in [&flow, &mixed, &compact, &block, &quote_in_plain] {
        let t = std::time::Instant::now();
        let v = manifest::validate_str(text);
        let took = t.elapsed();
        assert_eq!(v.problems.len(), 1, "{:#?}", v.problems);
        assert_eq!(v.problems[0].path, DOC);
        assert_eq!(
            v.problems[0].message,
            "collections are nested more than 128 deep"
        );
        // Linear: a 40,000-level document took 10 s before.
        assert!(took < Duration::from_secs(1), "{took:?}");
    }
    // 128 levels are fine as far as nesting goes; 129 are refused, as the
    // deserializer would.
    let at_limit = format!("{}{}", "[".repeat(128), "]".repeat(128));
    let v = manifest::validate_str(&at_limit);
    assert!(
        !v.problems.iter().any(|p| p.message.contains("nested")),
        "{v:?}"
    );
    let past = format!("{}{}", "[".repeat(129), "]".repeat(129));
    let v = manifest::validate_str(&past);
    assert!(
        v.problems[0].message.contains("nested more than 128"),
        "{v:?}"
    );

    // Both commands go through the same check, and refuse fast with exit 2.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("deep.yaml");
    std::fs::write(&file, &flow).unwrap();
    for cmd in ["validate", "run"] {
        let (out, took) = vmpulse(&[cmd.as_ref(), file.as_os_str()]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{cmd}: {stderr}");
        assert!(
            stderr.contains("(document): collections are nested more than 128 deep"),
            "{cmd}: {stderr}"
        );
        assert!(took < Duration::from_secs(5), "{cmd}: {took:?}");
    }
}

#[test]
fn manifests_over_1_mib_are_refused_when_read() {
    let limit = manifest::limits::MAX_MANIFEST_BYTES;
    assert_eq!(limit, 1 << 20);
    // A 10 MB manifest whose bulk is a 5-million-element list in an ignored field.
    let big = format!("{}\nstatus: [{}0]\n", build(&[]), "0,".repeat(5_000_000));
    assert!(big.len() > 10_000_000);
    let v = manifest::validate_str(&big);
    assert_eq!(v.problems.len(), 1, "{:#?}", v.problems);
    assert_eq!(v.problems[0].path, manifest::DOCUMENT_PATH);
    assert!(v.problems[0].message.contains("larger than 1048576 bytes"));

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("big.yaml");
    std::fs::write(&file, &big).unwrap();
    let p = manifest::read(&file).unwrap_err();
    assert_eq!(p.path, file.display().to_string());
    assert_eq!(
        p.message,
        "the manifest is larger than 1048576 bytes (1 MiB), the most vmpulse reads"
    );
    for cmd in ["validate", "run"] {
        let (out, took) = vmpulse(&[cmd.as_ref(), file.as_os_str()]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{cmd}: {stderr}");
        assert!(
            stderr.contains("larger than 1048576 bytes"),
            "{cmd}: {stderr}"
        );
        assert!(took < Duration::from_secs(5), "{cmd}: {took:?}");
    }

    // Exactly at the limit (padded with a comment) is read and validated.
    let base = build(&[]);
    let mut exact = base.clone();
    exact.push('#');
    exact.push_str(&"x".repeat(limit - base.len() - 2));
    exact.push('\n');
    assert_eq!(exact.len(), limit);
    std::fs::write(&file, &exact).unwrap();
    let text = manifest::read(&file).unwrap();
    assert!(manifest::parse_str(&text).is_ok());
    exact.push('\n');
    std::fs::write(&file, &exact).unwrap();
    assert!(manifest::read(&file).is_err());

    // A file that never ends is not read to its end: /dev/zero.
    let p = manifest::read(Path::new("/dev/zero")).unwrap_err();
    assert!(p.message.contains("larger than"), "{p:?}");
}

#[test]
fn echoed_values_are_cut_to_200_characters() {
    let long = "x".repeat(100_000);
    let key = "k".repeat(100_000);
    let text = build(&[
        (
            &at(DEVICES, &["watchdog"]),
            Some(&format!("{{name: w, i6300esb: {{action: {long}}}}}")),
        ),
        (
            &at(DOMAIN, &["resources", "requests", "memory"]),
            Some(&long),
        ),
        (&["spec", "runStrategy"], Some(&long)),
        (&["metadata", "name"], Some(&long)),
        (&at(VMI, &["terminationGracePeriodSeconds"]), Some(&long)),
        (&["spec", key.as_str()], Some("1")),
    ]);
    let v = manifest::validate_str(&text);
    assert_eq!(v.problems.len(), 5, "{:#?}", v.problems);
    for p in v.problems.iter().chain(&v.warnings) {
        // The value (and a key in a path) keeps its first 199 characters and an ellipsis.
        let shown = p.to_string();
        assert!(
            shown.chars().count() < 600,
            "{} characters: {shown}",
            shown.len()
        );
        assert!(
            shown.contains(&format!("{}…", &long[..199]))
                || shown.contains(&format!("{}…", &key[..199])),
            "{shown}"
        );
        assert!(!shown.contains(&long[..201]) && !shown.contains(&key[..201]));
    }
    assert_eq!(v.warnings.len(), 1, "{:#?}", v.warnings);
    assert_eq!(v.warnings[0].path, format!("spec.{}…", &key[..199]));
    // Through the binary too.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("long.yaml");
    std::fs::write(&file, &text).unwrap();
    let out = validate(&file);
    assert_eq!(out.status.code(), Some(2));
    for line in String::from_utf8_lossy(&out.stderr).lines() {
        assert!(line.chars().count() < 600, "{line}");
    }
}

#[test]
fn huge_lists_within_1_mib_are_refused_before_parsing() {
    let base = build(&[]);
    // 500,000 numbers in an ignored field: under 1 MiB, over 100 MB once parsed.
    let list = format!("{base}status: [{}0]\n", "0,".repeat(500_000));
    assert!(list.len() <= manifest::limits::MAX_MANIFEST_BYTES);
    let t = std::time::Instant::now();
    let v = manifest::validate_str(&list);
    assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
    assert_eq!(v.problems.len(), 1, "{:#?}", v.problems);
    assert_eq!(
        v.problems[0].message,
        "more than 50000 entries (keys and list items); a VirtualMachine has a few hundred"
    );
    // As a block sequence too.
    let block = format!("{base}status:\n{}", "- 0\n".repeat(60_000));
    let v = manifest::validate_str(&block);
    assert!(v.problems[0].message.starts_with("more than 50000 entries"));
    // Ten thousand entries are still a manifest.
    let many = format!("{base}status: [{}0]\n", "0,".repeat(10_000));
    let v = manifest::validate_str(&many);
    assert!(v.problems.is_empty(), "{:#?}", v.problems);
    assert_eq!(v.ignored, ["status"]);
}
