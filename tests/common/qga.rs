//! The real `qemu-ga` (Debian's qemu-guest-agent) for the tests and benchmarks: started in
//! `unix-listen` mode with its socket, state directory, pidfile and log all in one directory,
//! and waited for (bounded) until it accepts connections.
//!
//! Included with `#[path = "common/qga.rs"] mod qga;` (benches: `"../tests/common/qga.rs"`).
#![allow(dead_code)]

use std::ffi::OsStr;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Where Debian installs the agent.
pub const QEMU_GA: &str = "/usr/sbin/qemu-ga";

/// How long the agent may take to start listening.
const START_LIMIT: Duration = Duration::from_secs(10);

/// Whether qemu-ga is installed; prints a loud SKIP line when not.
pub fn available_or_skip() -> bool {
    let ok = Path::new(QEMU_GA).exists();
    if !ok {
        eprintln!("SKIP: {QEMU_GA} is missing (apt-get install -y qemu-guest-agent)");
    }
    ok
}

/// The agent's socket in `dir`.
pub fn socket_in(dir: &Path) -> PathBuf {
    dir.join("qga.sock")
}

/// Starts qemu-ga with its socket ([`socket_in`]), state directory, pidfile and log in `dir`
/// and `extra` arguments, then waits (at most 10 s) until the socket accepts a connection.
/// Panics with a clear message when the agent is missing or never listens (and kills it).
pub fn spawn_in<S: AsRef<OsStr>>(dir: &Path, extra: &[S]) -> Child {
    assert!(
        Path::new(QEMU_GA).exists(),
        "{QEMU_GA} is missing: apt-get install -y qemu-guest-agent"
    );
    let sock = socket_in(dir);
    let mut child = Command::new(QEMU_GA)
        .args(["-m", "unix-listen", "-p"])
        .arg(&sock)
        .arg("-t")
        .arg(dir)
        .arg("-f")
        .arg(dir.join("qga.pid"))
        .arg("-l")
        .arg(dir.join("qga.log"))
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn qemu-ga");
    let until = Instant::now() + START_LIMIT;
    // A throw-away connection proves the agent listens; it serves the next client as soon
    // as this one closes.
    while UnixStream::connect(&sock).is_err() {
        if Instant::now() >= until {
            let _ = child.kill();
            let _ = child.wait();
            panic!("qemu-ga did not start listening");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    child
}

/// A qemu-ga in a temporary directory of its own; killed on drop.
pub struct TempQga {
    /// The agent process.
    pub child: Child,
    /// Its socket.
    pub sock: PathBuf,
    /// The directory (removed on drop).
    pub dir: tempfile::TempDir,
}

impl TempQga {
    /// Starts the agent (see [`spawn_in`]).
    pub fn start() -> TempQga {
        let dir = tempfile::tempdir().expect("temporary directory");
        let child = spawn_in::<&str>(dir.path(), &[]);
        TempQga {
            child,
            sock: socket_in(dir.path()),
            dir,
        }
    }
}

impl Drop for TempQga {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
