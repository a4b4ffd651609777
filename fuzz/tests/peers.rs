//! The hostile-peer targets' code on deterministic inputs, so `cargo test`
//! exercises them (and their checks) without libFuzzer.

use vmpulse::probes::agent::AgentOutcome;
use vmpulse_fuzz::peers::{run_agent_replies, run_http_response};

/// A small deterministic generator (xorshift), enough to vary inputs.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u8 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 24) as u8
    }
}

const RESPONSES: [&[u8]; 7] = [
    b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello",
    b"HTTP/1.1 102 Processing\r\n\r\nHTTP/1.1 103 Hints\nLink: x\n\nHTTP/1.1 204 No\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3;x\r\nabc\r\n0\r\nT: 1\r\n\r\nextra",
    b"HTTP/1.1 302 Found\r\nLocation: /x\r\nContent-Length: 9\r\n\r\nshort",
    b"HTTP/1.1 200 OK\r\n\r\nbody until the end",
    b"HTTP/1.1 102 Processing\r\n\r\n",
    b"SSH-2.0-OpenSSH\r\n\r\n",
];

#[test]
fn http_responses_in_every_split_and_deadline() {
    for resp in RESPONSES {
        for seed in 0..24u8 {
            for deadline in [1u8, 2, 3, 7, 255] {
                let mut data = vec![seed, deadline, 0];
                data.extend_from_slice(resp);
                run_http_response(&data);
            }
        }
    }
}

#[test]
fn http_responses_past_the_bounds() {
    // Repeat byte 7: 300 copies, past the 1 MiB head bound for interim
    // responses, and a body far past the 10 KiB cap.
    for resp in [
        &b"HTTP/1.1 102 Processing\r\n\r\n".repeat(200)[..],
        &b"X-Endless-Header: yes\r\n".repeat(200)[..],
    ] {
        let mut data = vec![3, 255, 7];
        data.extend_from_slice(resp);
        run_http_response(&data);
    }
    let mut data = vec![5, 255, 7, b'H'];
    data.extend_from_slice(b"TTP/1.1 200 OK\r\n\r\n");
    data.extend(std::iter::repeat_n(b'x', 100));
    run_http_response(&data);
}

#[test]
fn http_random_bytes_and_mutations() {
    let mut rng = Rng(0x5eed_7777_0000_0001);
    for n in 0..3000usize {
        let mut data: Vec<u8> = vec![rng.next(), rng.next() % 16, rng.next()];
        if n % 2 == 0 {
            let base = RESPONSES[n % RESPONSES.len()];
            data.extend_from_slice(base);
            for _ in 0..(n % 4) {
                let at = 3 + usize::from(rng.next()) % base.len();
                data[at] = rng.next();
            }
        } else {
            data.extend((0..(n % 200)).map(|_| rng.next()));
        }
        run_http_response(&data);
    }
}

#[test]
fn agent_scripted_sessions() {
    // Ping; the well-formed sync and ping replies.
    let got = run_agent_replies(&[0, 51, 3, 0, 3, 5, 6, 0]);
    assert_eq!(got, [(0, AgentOutcome::Pong)]);
    // Exec; sync; exec reply; status polls (running, then exited) with time steps.
    let got = run_agent_replies(&[1, 201, 3, 1, 3, 3, 5, 5, 3, 3, 5, 20, 3, 4, 6, 0]);
    assert_eq!(got.len(), 1);
    assert!(
        matches!(&got[0], (0, AgentOutcome::Exited { code: Some(0), output, .. }) if output == "hi"),
        "{got:?}"
    );
    // Floods of each kind around a ping: it fails at its deadline at the latest.
    for kind in 0..4u8 {
        let got = run_agent_replies(&[0, 100, 4, kind + 4 * 30, 3, 0, 4, kind, 6, 0, 6, 0]);
        assert_eq!(got.len(), 1, "{got:?}");
    }
    // Cancel while waiting: no result for it; a second attempt of the same id
    // gets one.
    let got = run_agent_replies(&[0, 9, 7, 0, 0, 9, 6, 0]);
    assert_eq!(got.len(), 1, "{got:?}");
    assert!(matches!(&got[0], (0, AgentOutcome::Failed(_))), "{got:?}");
}

#[test]
fn agent_random_sessions() {
    let mut rng = Rng(0x5eed_4a6e_0000_0002);
    for n in 0..1500usize {
        let data: Vec<u8> = (0..(n % 120)).map(|_| rng.next()).collect();
        let _ = run_agent_replies(&data);
    }
}

#[test]
fn committed_peer_seeds_pass() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("peer-seeds");
    let mut seen = 0;
    for (target, run) in [
        ("http_response", run_http_response as fn(&[u8])),
        ("agent_replies", |d: &[u8]| {
            let _ = run_agent_replies(d);
        }),
    ] {
        for entry in std::fs::read_dir(dir.join(target)).unwrap() {
            run(&std::fs::read(entry.unwrap().path()).unwrap());
            seen += 1;
        }
    }
    assert!(seen >= 20, "only {seen} seeds");
}
