//! `vmpulse ctl --api-socket PATH status|pause|resume|reset|stop|shutdown`: the client of
//! `vmpulse run --api-socket PATH`.
//!
//! `status` prints a short table (the VM's name, phase, Ready, the watchdog, the probes);
//! with `--json` it prints the raw object of `GET /status`. The other commands send
//! `PUT /vm/<command>` and print nothing when it was carried out. Exit code 0 on success,
//! 1 when the API cannot be reached or refuses the request (its message on stderr).

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use serde_json::Value;

/// How long the client waits for an answer. A shutdown is answered once the VM is off, and
/// the server closes it at the latest 5 s after the VM's grace period: this only guards
/// against a server that is not vmpulse.
const TIMEOUT: Duration = Duration::from_secs(600);
/// The largest answer read.
const MAX_ANSWER: u64 = 4 << 20;

/// What to ask.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum CtlCommand {
    /// Print the VM's status.
    Status,
    /// Pause the VM (vCPU and watchdog frozen).
    Pause,
    /// Resume a paused VM.
    Resume,
    /// Warm-reset the VM (the guest boots again).
    Reset,
    /// Stop the VM at once (it is not restarted).
    Stop,
    /// Press the power button; answered once the VM is off (forced after its grace period).
    Shutdown,
}

/// Arguments of `vmpulse ctl`.
#[derive(clap::Args, Debug)]
#[command(
    after_help = "Exit code: 0 when the request was carried out; 1 when the API socket cannot be \
reached or the request was refused (the reason on stderr)."
)]
pub struct CtlArgs {
    /// The API socket of `vmpulse run --api-socket PATH`.
    #[arg(long, value_name = "PATH")]
    pub api_socket: PathBuf,
    /// `status`: print the raw JSON object instead of the table.
    #[arg(long)]
    pub json: bool,
    /// What to do.
    #[arg(value_enum)]
    pub command: CtlCommand,
}

/// An answer of the API.
#[derive(Debug, PartialEq, Eq)]
pub struct Answer {
    /// The status code.
    pub status: u16,
    /// The body.
    pub body: String,
}

/// Send one request to the API socket and read the whole answer.
pub fn request(socket: &Path, method: &str, path: &str) -> Result<Answer, String> {
    let mut stream = UnixStream::connect(socket)
        .map_err(|e| format!("cannot connect to {}: {e}", socket.display()))?;
    stream
        .set_read_timeout(Some(TIMEOUT))
        .and_then(|()| stream.set_write_timeout(Some(TIMEOUT)))
        .map_err(|e| e.to_string())?;
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
    stream
        .write_all(head.as_bytes())
        .map_err(|e| format!("cannot send the request: {e}"))?;
    let mut raw = Vec::new();
    stream
        .take(MAX_ANSWER)
        .read_to_end(&mut raw)
        .map_err(|e| format!("cannot read the answer: {e}"))?;
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut response = httparse::Response::new(&mut headers);
    match response.parse(&raw) {
        Ok(httparse::Status::Complete(n)) => Ok(Answer {
            status: response.code.unwrap_or(0),
            body: String::from_utf8_lossy(&raw[n..]).into_owned(),
        }),
        Ok(httparse::Status::Partial) => Err("the answer was cut short".into()),
        Err(e) => Err(format!("not an HTTP answer: {e}")),
    }
}

fn error_message(answer: &Answer) -> String {
    serde_json::from_str::<Value>(&answer.body)
        .ok()
        .and_then(|v| v["error"].as_str().map(str::to_string))
        .unwrap_or_else(|| answer.body.trim().to_string())
}

fn ms(v: &Value) -> String {
    match v.as_u64() {
        Some(n) => format!("{n} ms"),
        None => "-".into(),
    }
}

/// The short human table of a status object.
pub fn status_table(v: &Value) -> String {
    let mut out = String::new();
    let mut row = |k: &str, val: String| out.push_str(&format!("{k:<10}{val}\n"));
    row("VM", v["vm"].as_str().unwrap_or("?").to_string());
    row("PHASE", v["phase"].as_str().unwrap_or("?").to_string());
    row("READY", v["ready"].to_string());
    row("PAUSED", v["paused"].to_string());
    row("BOOTS", v["boots"].to_string());
    row("RESTARTS", v["restarts"].to_string());
    let w = &v["watchdog"];
    let expiries = w["expiries"]
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(a, n)| format!("{a} {n}"))
                .collect::<Vec<_>>()
                .join(", ")
        })
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "none".into());
    let state = if w["armed"] == true {
        format!(
            "armed, stage {}, expires in {}",
            w["stage"],
            ms(&w["ms_until_expiry"])
        )
    } else {
        "not armed".into()
    };
    row(
        "WATCHDOG",
        format!(
            "{state}; action {}; timeout flag {}; expiries: {expiries}",
            w["action"].as_str().unwrap_or("?"),
            w["timeout_flag"]
        ),
    );
    let probes = v["probes"].as_array().cloned().unwrap_or_default();
    if probes.is_empty() {
        out.push_str("PROBES    none\n");
    } else {
        out.push_str(&format!(
            "{:<10} {:<16} {:>8} {:>8} {:>8}  {}\n",
            "TYPE", "PROBE", "ATTEMPTS", "FAILED", "IN A ROW", "LAST RESULT"
        ));
        for p in probes {
            let row_count = if p["consecutive_failures"].as_u64().unwrap_or(0) > 0 {
                format!("{} fail", p["consecutive_failures"])
            } else {
                format!("{} ok", p["consecutive_successes"])
            };
            let last = p["last_results"]
                .as_array()
                .and_then(|r| r.last())
                .map(|r| {
                    format!(
                        "{}: {}",
                        r["result"].as_str().unwrap_or("?"),
                        r["message"].as_str().unwrap_or("")
                    )
                })
                .unwrap_or_else(|| "-".into());
            out.push_str(&format!(
                "{:<10} {:<16} {:>8} {:>8} {:>8}  {}\n",
                p["type"].as_str().unwrap_or("?"),
                p["kind"].as_str().unwrap_or("?"),
                p["attempts"],
                p["failures"],
                row_count,
                last
            ));
        }
    }
    out
}

/// Entry point of `vmpulse ctl`.
pub fn ctl_command(args: CtlArgs) -> ExitCode {
    let (method, path) = match args.command {
        CtlCommand::Status => ("GET", "/status"),
        CtlCommand::Pause => ("PUT", "/vm/pause"),
        CtlCommand::Resume => ("PUT", "/vm/resume"),
        CtlCommand::Reset => ("PUT", "/vm/reset"),
        CtlCommand::Stop => ("PUT", "/vm/stop"),
        CtlCommand::Shutdown => ("PUT", "/vm/shutdown"),
    };
    let answer = match request(&args.api_socket, method, path) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("vmpulse ctl: {e}");
            return ExitCode::from(1);
        }
    };
    if !(200..300).contains(&answer.status) {
        eprintln!(
            "vmpulse ctl: {} refused ({}): {}",
            path,
            answer.status,
            error_message(&answer)
        );
        return ExitCode::from(1);
    }
    if args.command == CtlCommand::Status {
        if args.json {
            println!("{}", answer.body.trim());
        } else {
            match serde_json::from_str::<Value>(&answer.body) {
                Ok(v) => print!("{}", status_table(&v)),
                Err(e) => {
                    eprintln!("vmpulse ctl: the status is not JSON: {e}");
                    return ExitCode::from(1);
                }
            }
        }
    }
    ExitCode::SUCCESS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_names_the_vm_and_its_probes() {
        let v = serde_json::json!({
            "vm": "testvm", "phase": "Running", "ready": true, "paused": false,
            "boots": 2, "restarts": 1,
            "watchdog": {"armed": true, "action": "reset", "stage": 1, "ms_until_expiry": 480,
                "timeout_flag": true, "expiries": {"reset": 1}, "guest_kicks": 5},
            "probes": [{"kind": "httpGet", "type": "readiness", "consecutive_successes": 3,
                "consecutive_failures": 0, "attempts": 4, "failures": 1,
                "last_results": [{"result": "success", "message": "HTTP 200 OK"}]}]
        });
        let t = status_table(&v);
        assert!(t.starts_with("VM        testvm\n"), "{t}");
        assert!(t.contains("PHASE     Running\n"), "{t}");
        assert!(
            t.contains("armed, stage 1, expires in 480 ms; action reset; timeout flag true; expiries: reset 1"),
            "{t}"
        );
        assert!(t.contains("readiness  httpGet"), "{t}");
        assert!(t.contains("3 ok  success: HTTP 200 OK"), "{t}");
    }

    #[test]
    fn an_absent_socket_is_a_clear_error() {
        let e = request(Path::new("/nonexistent/vmpulse.sock"), "GET", "/status").unwrap_err();
        assert!(
            e.starts_with("cannot connect to /nonexistent/vmpulse.sock"),
            "{e}"
        );
    }
}
