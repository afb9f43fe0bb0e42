//! Random bytes in the tenant and priority headers through a real Envoy (issue 15, item 8):
//! every byte Envoy lets through (visible ASCII, spaces, tabs and 0x80-0xFF, up to 300 bytes)
//! reaches the filter; each request is answered 200 or with the contract's rejection (or
//! Envoy's own 400 for what it refuses itself), the VMs never trap, and every slot comes
//! back.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use serde_json::json;
use wipgate_e2e::{require_envoy, wait_until, Envoy, EnvoyConfig, Upstream};

const REQUESTS_PER_THREAD: usize = 60;
const THREADS: usize = 12;

/// xorshift64*: reproducible bytes without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    /// A header value: any byte HTTP/1.1 allows in a field value, spaces and tabs inside
    /// only; sometimes a valid tenant, a configured class, or empty.
    fn value(&mut self) -> Vec<u8> {
        match self.below(8) {
            0 => b"acme".to_vec(),
            1 => b"batch".to_vec(),
            2 => Vec::new(),
            _ => {
                let len = 1 + self.below(300);
                let mut v: Vec<u8> = (0..len)
                    .map(|_| match self.below(4) {
                        0 => 0x80 + u8::try_from(self.below(0x80)).unwrap(),
                        1 => {
                            [b' ', b'\t', b'.', b'_', b'-'][usize::try_from(self.below(5)).unwrap()]
                        }
                        _ => 0x21 + u8::try_from(self.below(0x5e)).unwrap(),
                    })
                    .collect();
                // No leading or trailing whitespace (HTTP trims it anyway).
                for end in [0, v.len() - 1] {
                    if v[end] == b' ' || v[end] == b'\t' {
                        v[end] = b'x';
                    }
                }
                v
            }
        }
    }
}

/// Sends one request with raw header values; returns the status (None: no HTTP answer).
fn send(addr: SocketAddr, tenant: &[u8], priority: &[u8], delay_ms: u64) -> Option<u16> {
    let mut req = format!(
        "GET /fuzz HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\nx-delay-ms: {delay_ms}\r\n"
    )
    .into_bytes();
    for (name, value) in [(&b"x-tenant-id"[..], tenant), (b"x-priority", priority)] {
        req.extend_from_slice(name);
        req.extend_from_slice(b": ");
        req.extend_from_slice(value);
        req.extend_from_slice(b"\r\n");
    }
    req.extend_from_slice(b"\r\n");
    let mut stream = TcpStream::connect(addr).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .ok()?;
    stream.write_all(&req).ok()?;
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response);
    let line = response.split(|b| *b == b'\r').next()?;
    std::str::from_utf8(line)
        .ok()?
        .split(' ')
        .nth(1)?
        .parse()
        .ok()
}

#[test]
#[ignore = "needs Envoy"]
fn random_bytes_in_tenant_and_priority_headers_never_trap_the_filter() {
    require_envoy();
    let upstream = Upstream::start_default().unwrap();
    let config = json!({"max_inflight": 6,
        "tenants": {"acme": {"reserved": 1, "max": 3}, "*": {"max": 4}},
        "classes": {"interactive": {"reserved": 1}, "batch": {"max": 3}},
        "default_class": "interactive",
        "adaptive": {}, "queue": {"timeout_ms": 20}});
    let envoy =
        Envoy::start(&EnvoyConfig::new(upstream.addr()).with_filter(config.to_string())).unwrap();
    let addr = envoy.listener_addr();
    let statuses: Vec<u16> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..THREADS)
            .map(|i| {
                s.spawn(move || {
                    let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ (i as u64 + 1));
                    (0..REQUESTS_PER_THREAD)
                        .map(|_| {
                            let (t, p) = (rng.value(), rng.value());
                            let status = send(addr, &t, &p, rng.below(80));
                            status.unwrap_or_else(|| {
                                panic!("no HTTP answer for tenant {t:?} priority {p:?}")
                            })
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    });
    let count = |code: u16| statuses.iter().filter(|s| **s == code).count();
    eprintln!(
        "{} requests: 200={} 503={} 429={} 400={}",
        statuses.len(),
        count(200),
        count(503),
        count(429),
        count(400)
    );
    assert!(
        statuses.iter().all(|s| [200, 503, 429, 400].contains(s)),
        "{statuses:?}"
    );
    assert!(
        count(200) > statuses.len() / 4,
        "most requests went through"
    );
    let log = envoy.log();
    for sign in [
        "panicked",
        "wasm trap",
        "Function: proxy_on",
        "failed: uncaught",
    ] {
        assert!(!log.contains(sign), "the VM trapped ({sign}):\n{log}");
    }
    wait_until(Duration::from_secs(15), "every slot back", || {
        envoy.wasm_stat("wipgate.rq_inflight") == Some(0) && upstream.inflight() == 0
    })
    .unwrap();
    let reached = envoy.wasm_stat("wipgate.rq_admitted").unwrap_or(0)
        + ["wip_limit", "tenant_limit", "class_limit", "queue_timeout"]
            .iter()
            .map(|r| {
                envoy
                    .wasm_stat(&format!("wipgate.rq_rejected.reason.{r}"))
                    .unwrap_or(0)
            })
            .sum::<u64>();
    assert_eq!(
        reached,
        (statuses.len() - count(400)) as u64,
        "every request Envoy passed on was decided by the filter"
    );
    assert_eq!(envoy.wasm_stat("wipgate.gate_errors"), Some(0));
}
