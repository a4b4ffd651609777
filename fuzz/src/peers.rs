//! The targets for what faces hostile peers: HTTP responses and the
//! guest agent's replies, as arbitrary bytes in arbitrary chunks.
//!
//! - [`run_http_response`] feeds `vmpulse::probes::http::ResponseReader` (the
//!   parser `HttpCheck` drives from its socket) and checks that each attempt
//!   reaches a result by its deadline, that the bytes held stay bounded, that
//!   the 10 KiB body cap holds, and that the result does not depend on how the
//!   bytes were split (the same bytes in one piece give the same result).
//! - [`run_agent_replies`] drives an `AgentClient` over a Unix socket pair in
//!   virtual time: pings and execs start, the peer sends arbitrary bytes,
//!   delimiters and well-formed replies in arbitrary chunks, time moves. Every
//!   attempt gets exactly one result, by its deadline, and the input buffer stays
//!   bounded.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use vmpulse::probes::agent::{self, AgentClient, AgentOutcome};
use vmpulse::probes::http::{ResponseReader, MAX_BODY, MAX_HEAD};
use vmpulse::probes::tracker::Outcome;
use vmpulse::probes::AgentChannel;

/// A small deterministic generator (xorshift) for chunk sizes.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// What an HTTP attempt ended with, as far as the reader decides it.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    /// The response is complete: its status and body.
    Complete(u16, Vec<u8>),
    /// An error or failure, with its message.
    Ended(Outcome, String),
    /// Still reading at the deadline; whether the headers were in.
    Pending(bool),
}

fn verdict(r: &ResponseReader, ended: Option<&vmpulse::probes::CheckResult>) -> Verdict {
    if let Some(e) = ended {
        return Verdict::Ended(e.outcome, e.message.clone());
    }
    if r.complete() {
        let resp = r.response().expect("complete implies a response");
        return Verdict::Complete(resp.status, resp.body.clone());
    }
    Verdict::Pending(r.headers_done())
}

/// Check the bounds that hold after any successful feed.
fn check_bounds(r: &ResponseReader) {
    match r.response() {
        None => assert!(r.buffered() <= MAX_HEAD, "{} head bytes held", r.buffered()),
        Some(resp) => {
            assert!(resp.body.len() <= MAX_BODY, "body of {}", resp.body.len());
            assert_eq!(r.buffered(), resp.body.len(), "head bytes left over");
            if let Some(n) = resp.content_length {
                assert!(resp.body.len() <= n, "body past its Content-Length");
            }
        }
    }
    assert_eq!(r.complete(), r.room() == 0);
}

/// Input: a chunk-size seed, the deadline (in chunks; 255 = the peer closes
/// after its last byte), a repeat byte (7 mod 8: the payload is sent 300 times,
/// to reach the 1 MiB head bound), then the payload.
pub fn run_http_response(data: &[u8]) {
    let [seed, deadline, repeat, payload @ ..] = data else {
        return;
    };
    let times = if repeat % 8 == 7 { 300 } else { 1 };
    let bytes: Vec<u8> = payload.repeat(times);
    let mut rng = Rng(u64::from(*seed) * 0x9e37_79b9 + 1);
    let mut r = ResponseReader::new();
    let mut fed = 0;
    let mut chunks = 0;
    let mut ended = None;
    while fed < bytes.len() && ended.is_none() && !r.complete() {
        if *deadline != 255 && chunks >= usize::from(*deadline) {
            break;
        }
        let size = match rng.next() % 4 {
            0 => 1 + (rng.next() % 4) as usize,
            1 => 1 + (rng.next() % 64) as usize,
            2 => 1 + (rng.next() % 4096) as usize,
            _ => 1 + (rng.next() % 65536) as usize,
        };
        let chunk = &bytes[fed..(fed + size).min(bytes.len())];
        fed += chunk.len();
        chunks += 1;
        match r.feed(chunk) {
            Ok(done) => {
                assert_eq!(done, r.complete());
                check_bounds(&r);
            }
            Err(e) => {
                assert_ne!(e.outcome, Outcome::Success);
                // Before the headers: a failure; after them: an error.
                let expected = if r.headers_done() {
                    Outcome::Error
                } else {
                    Outcome::Failure
                };
                assert_eq!(e.outcome, expected, "{e:?}");
                ended = Some(e);
            }
        }
    }
    // The result at the deadline, or when the peer closed after its last byte.
    let closed = *deadline == 255 && fed == bytes.len();
    if closed && ended.is_none() && !r.complete() {
        if let Err(e) = r.eof() {
            let expected = if r.headers_done() {
                Outcome::Error
            } else {
                Outcome::Failure
            };
            assert_eq!(e.outcome, expected, "{e:?}");
            ended = Some(e);
        } else {
            assert!(r.headers_done() && r.complete());
        }
    }
    let split = verdict(&r, ended.as_ref());
    if closed {
        // Every attempt has a result once the peer closed.
        assert!(!matches!(split, Verdict::Pending(_)), "{split:?}");
    }
    // The same bytes in one piece: the same result.
    let mut whole = ResponseReader::new();
    let mut whole_end = whole.feed(&bytes[..fed]).err();
    if whole_end.is_none() && closed && !whole.complete() {
        whole_end = whole.eof().err();
    }
    if whole_end.is_none() {
        check_bounds(&whole);
    }
    assert_eq!(split, verdict(&whole, whole_end.as_ref()), "split vs whole");
}

/// The peer's side of the agent link.
struct Peer {
    sock: UnixStream,
    /// What the client wrote, not yet looked at.
    from_client: Vec<u8>,
}

impl Peer {
    /// Send bytes (dropping what the socket does not take now).
    fn send(&mut self, bytes: &[u8]) {
        let _ = self.sock.write(bytes);
    }

    /// Read what the client wrote.
    fn drain(&mut self) {
        let mut buf = [0u8; 4096];
        while let Ok(n) = self.sock.read(&mut buf) {
            if n == 0 {
                break;
            }
            self.from_client.extend_from_slice(&buf[..n]);
        }
    }

    /// A well-formed reply to the client's last request, if any.
    fn reply(&mut self, variant: u8) -> Option<Vec<u8>> {
        self.drain();
        let text = String::from_utf8_lossy(&self.from_client).into_owned();
        self.from_client.clear();
        let line = text.lines().rev().find(|l| l.contains("execute"))?;
        let start = line.find('{')?;
        let req: serde_json::Value = serde_json::from_str(&line[start..]).ok()?;
        let reply = match req["execute"].as_str()? {
            "guest-sync-delimited" => {
                let mut b = vec![0xff];
                b.extend_from_slice(
                    format!("{{\"return\": {}}}\n", req["arguments"]["id"]).as_bytes(),
                );
                return Some(b);
            }
            "guest-ping" => "{\"return\": {}}".to_string(),
            "guest-exec" => format!("{{\"return\": {{\"pid\": {}}}}}", 100 + u32::from(variant)),
            "guest-exec-status" => match variant % 3 {
                0 => "{\"return\": {\"exited\": false}}".to_string(),
                1 => "{\"return\": {\"exited\": true, \"exitcode\": 0, \"out-data\": \"aGk=\"}}"
                    .to_string(),
                _ => "{\"error\": {\"class\": \"GenericError\", \"desc\": \"no\"}}".to_string(),
            },
            _ => return None,
        };
        Some(format!("{reply}\n").into_bytes())
    }
}

/// Input: one operation byte each, some with argument bytes (see the match).
/// Returns the results in the order they came (for tests).
pub fn run_agent_replies(data: &[u8]) -> Vec<(u64, AgentOutcome)> {
    let (ours, theirs) = UnixStream::pair().expect("socketpair");
    theirs.set_nonblocking(true).expect("nonblocking");
    let mut peer = Peer {
        sock: theirs,
        from_client: Vec::new(),
    };
    let mut client = AgentClient::new(AgentChannel::Stream(ours));
    let t0 = Instant::now();
    let mut now = t0;
    // Attempts waiting for a result: id → deadline.
    let mut pending: HashMap<u64, Instant> = HashMap::new();
    let bound = agent::MAX_REPLY_LINE + agent::READ_BUDGET;

    let mut results = Vec::new();
    let mut collect =
        |client: &mut AgentClient, now: Instant, pending: &mut HashMap<u64, Instant>| {
            for (id, outcome) in client.take_completions() {
                assert!(
                    pending.remove(&id).is_some(),
                    "a result for attempt {id}, which was not waiting for one"
                );
                results.push((id, outcome));
            }
            for (id, deadline) in pending.iter() {
                assert!(
                    *deadline > now,
                    "attempt {id} has no result {:?} after its deadline",
                    now - *deadline
                );
            }
            assert!(
                client.buffered() <= bound,
                "{} bytes held",
                client.buffered()
            );
        };

    let mut i = 0;
    while i < data.len() {
        let op = data[i];
        let arg = data.get(i + 1).copied().unwrap_or(0);
        i += 2;
        match op % 8 {
            0 | 1 => {
                let id = u64::from(arg % 3);
                if let std::collections::hash_map::Entry::Vacant(slot) = pending.entry(id) {
                    let deadline = now + Duration::from_millis(1 + u64::from(arg) * 4);
                    slot.insert(deadline);
                    if op % 8 == 1 {
                        client.start_exec(id, &["true".to_string()], now, deadline);
                    } else {
                        client.start_ping(id, now, deadline);
                    }
                }
            }
            2 => {
                // Arbitrary bytes from the input, as one chunk.
                let from = i.min(data.len());
                let n = usize::from(arg).min(data.len() - from);
                peer.send(&data[from..from + n]);
                i = from + n;
                client.on_ready(now);
            }
            3 => {
                // A well-formed reply, split at `arg`.
                if let Some(bytes) = peer.reply(arg) {
                    let cut = usize::from(arg) % (bytes.len() + 1);
                    peer.send(&bytes[..cut]);
                    client.on_ready(now);
                    peer.send(&bytes[cut..]);
                }
                client.on_ready(now);
            }
            4 => {
                // A flood: the same line many times.
                let line: &[u8] = match arg % 4 {
                    0 => b"\xff{\"return\": 1}\n",
                    1 => b"{\"execute\": \"guest-ping\"}\n",
                    2 => b"\n",
                    _ => b"garbage without an end ",
                };
                peer.send(&line.repeat(1 + usize::from(arg) * 8));
                client.on_ready(now);
            }
            5 => {
                now += Duration::from_millis(u64::from(arg));
                if client.next_deadline().is_some_and(|d| d <= now) {
                    client.on_timer(now);
                }
            }
            6 => {
                // Straight to the client's next deadline.
                if let Some(d) = client.next_deadline() {
                    now = now.max(d);
                    client.on_timer(now);
                }
            }
            _ => {
                let id = u64::from(arg % 3);
                if pending.remove(&id).is_some() {
                    // A cancelled attempt reports no result.
                    client.cancel(id);
                }
            }
        }
        peer.drain();
        collect(&mut client, now, &mut pending);
    }
    // Past every deadline: every attempt has its result.
    if let Some(last) = pending.values().max().copied() {
        now = now.max(last);
        client.on_timer(now);
        collect(&mut client, now, &mut pending);
    }
    assert!(pending.is_empty(), "attempts without a result: {pending:?}");
    assert!(now >= t0);
    results
}
