//! `exec` and `guestAgentPing` probes through `ProbeSet` against the real
//! `qemu-ga` (Debian's qemu-guest-agent) in `unix-listen` mode, started by the tests.

mod probes_util;
#[path = "common/qga.rs"]
mod qga;

use std::time::Duration;

use probes_util::*;
use qga::TempQga;
use vmpulse::probes::config::{ProbeConfig, ProbeHandler, ProbeKind};
use vmpulse::probes::{AgentChannel, ProbeAttempt, ProbeEnv, ProbeEvent};

fn ms(x: u64) -> Duration {
    Duration::from_millis(x)
}

/// A real qemu-ga on a Unix socket in a temporary directory (killed on drop); `None`
/// (after a loud SKIP line) when it is not installed.
fn start_qga() -> Option<TempQga> {
    qga::available_or_skip().then(TempQga::start)
}

/// Probes that reach the agent at `qga`'s socket.
fn env(qga: &TempQga) -> ProbeEnv {
    ProbeEnv {
        vm_addresses: vec![V4],
        agent: Some(AgentChannel::UnixSocket(qga.sock.clone())),
    }
}

fn exec(argv: &[&str]) -> ProbeHandler {
    ProbeHandler::Exec {
        command: argv.iter().map(|s| s.to_string()).collect(),
    }
}

/// Run probes until `n` attempts completed (bounded by `limit`).
fn attempts(
    probes: Vec<ProbeConfig>,
    env: ProbeEnv,
    n: usize,
    limit: Duration,
) -> Vec<(Duration, ProbeAttempt)> {
    let mut d = Driver::new(probes, env);
    d.start_vm();
    let done = d.run_until(limit, |ev| {
        ev.iter()
            .filter(|(_, e)| matches!(e, ProbeEvent::Attempt(_)))
            .count()
            >= n
    });
    assert!(done, "only {:?} within {limit:?}", d.attempts());
    d.attempts()
}

fn once(handler: ProbeHandler, timeout_ms: u64, qga: &TempQga) -> (Duration, ProbeAttempt) {
    let probes = vec![config(ProbeKind::Readiness, handler, 60_000, timeout_ms)];
    attempts(probes, env(qga), 1, Duration::from_secs(10)).remove(0)
}

#[test]
fn exec_cat_of_a_file_that_exists_then_does_not() {
    let Some(qga) = start_qga() else { return };
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("healthy.txt");
    std::fs::write(&file, "all good\n").unwrap();
    let path = file.to_str().unwrap();
    let (_, a) = once(exec(&["cat", path]), 2000, &qga);
    assert!(a.success, "{a:?}");
    assert_eq!(a.exit_code, Some(0));
    assert_eq!(a.output.as_deref(), Some("all good\n"));
    assert_eq!(a.message, "exit code 0");
    std::fs::remove_file(&file).unwrap();
    let (_, a) = once(exec(&["cat", path]), 2000, &qga);
    assert!(!a.success);
    assert_eq!(a.exit_code, Some(1));
    assert_eq!(a.message, "exit code 1");
    assert!(
        a.output.as_deref().unwrap_or("").contains("No such file"),
        "{a:?}"
    );
}

#[test]
fn exec_exit_code_signal_and_quoting() {
    let Some(qga) = start_qga() else { return };
    let (_, a) = once(exec(&["sh", "-c", "echo out; exit 3"]), 2000, &qga);
    assert!(!a.success);
    assert_eq!(a.exit_code, Some(3));
    assert_eq!(a.output.as_deref(), Some("out\n"));
    let (_, a) = once(exec(&["sh", "-c", "kill -9 $$"]), 2000, &qga);
    assert!(!a.success);
    assert_eq!(a.exit_code, None);
    assert_eq!(a.message, "killed by signal 9");
    // Quotes and backslashes pass through intact.
    let (_, a) = once(
        exec(&["sh", "-c", r#"[ "$1" = 'q"uo\te' ]"#, "sh", r#"q"uo\te"#]),
        2000,
        &qga,
    );
    assert!(a.success, "{a:?}");
    let (_, a) = once(
        exec(&["sh", "-c", r#"[ "$1" = 'q"uo\te' ]"#, "sh", r#"q"uo\\te"#]),
        2000,
        &qga,
    );
    assert_eq!(a.exit_code, Some(1), "{a:?}");
    let (_, a) = once(exec(&["/no/such/binary"]), 2000, &qga);
    assert!(!a.success);
    assert_eq!(a.exit_code, None);
}

#[test]
fn exec_longer_than_the_timeout_fails_at_the_timeout() {
    let Some(qga) = start_qga() else { return };
    let (t, a) = once(exec(&["sleep", "3"]), 500, &qga);
    assert!(!a.success, "{a:?}");
    assert!(t >= ms(500) && t < ms(800), "{t:?}");
}

#[test]
fn guest_agent_ping_and_two_probes_on_one_agent() {
    let Some(qga) = start_qga() else { return };
    let (t, a) = once(ProbeHandler::GuestAgentPing, 1000, &qga);
    assert!(a.success, "{a:?}");
    assert!(t < ms(500), "{t:?}");
    // Readiness ping and liveness exec on the same agent, 1 s apart.
    let probes = vec![
        config(
            ProbeKind::Readiness,
            ProbeHandler::GuestAgentPing,
            1000,
            1000,
        ),
        config(ProbeKind::Liveness, exec(&["true"]), 1000, 1000),
    ];
    let got = attempts(probes, env(&qga), 6, Duration::from_secs(5));
    assert!(got.iter().all(|(_, a)| a.success), "{got:?}");
    let liveness = got
        .iter()
        .filter(|(_, a)| a.probe == ProbeKind::Liveness)
        .count();
    assert!(liveness >= 2, "{got:?}");
}

#[test]
fn absent_agent_fails_within_the_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let env = ProbeEnv {
        vm_addresses: vec![V4],
        agent: Some(AgentChannel::UnixSocket(dir.path().join("nobody.sock"))),
    };
    let probes = vec![config(
        ProbeKind::Readiness,
        ProbeHandler::GuestAgentPing,
        60_000,
        500,
    )];
    let got = attempts(probes, env, 1, Duration::from_secs(5));
    let (t, a) = &got[0];
    assert!(!a.success);
    assert!(!a.message.is_empty());
    assert!(*t <= ms(700), "{t:?}");
}
