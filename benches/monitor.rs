//! The Monitor's codecs and RPC (issue: xme-monitor), in one run.
//!
//! - codec/<size>/serde_json: `serde_json::to_vec` + `from_slice` of the
//!   message map (the peer).
//! - codec/<size>/sealed: `Sealed::encode` + `decode` (JSON + XChaCha20-Poly1305).
//! - codec/<size>/xme_wire: `XmeWire::encode` + `decode` (Python's format).
//! - rpc/raw_tcp_pingpong: a frame of the size of an RPC request sent and
//!   echoed on loopback TCP, one at a time (the floor).
//! - rpc/call: one `Client::call` of a trivial function (sealed).
//! - rpc/serial_100 and rpc/pipelined_100: 100 calls one after another, or
//!   all started before the first reply is awaited, on one connection.
//!
//! Run: `cargo bench --bench monitor`.

// criterion's macros generate undocumented functions.
#![allow(missing_docs)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use serde_json::{Value, json};
use xme::monitor::rpc::{Client, Server};
use xme::monitor::{Codec, Message, Sealed, XmeWire};

/// A message map of about `bytes` bytes of JSON: records of mixed values.
fn message(bytes: usize) -> Message {
    let mut m = Message::new();
    let mut i = 0;
    while serde_json::to_vec(&m).unwrap().len() < bytes {
        for _ in 0..(bytes / 1000).max(1) {
            m.insert(
                format!("sensor-{i:06}"),
                json!({"t": 21.5 + i as f64 / 7.0, "ok": i % 3 != 0, "tags": ["a", "β"], "n": i}),
            );
            i += 1;
        }
    }
    m
}

fn codecs(c: &mut Criterion) {
    for (label, bytes) in [("1KiB", 1024), ("1MiB", 1 << 20)] {
        let msg = message(bytes);
        let len = serde_json::to_vec(&msg).unwrap().len();
        let mut g = c.benchmark_group(format!("codec/{label}"));
        g.throughput(Throughput::Bytes(len as u64));
        if bytes > 4096 {
            g.sample_size(20);
        }
        g.bench_function("serde_json", |b| {
            b.iter(|| {
                let text = serde_json::to_vec(&msg).unwrap();
                let back: Value = serde_json::from_slice(&text).unwrap();
                back
            })
        });
        let sealed = Sealed::new([1; 32]);
        g.bench_function("sealed", |b| {
            b.iter(|| sealed.decode(&sealed.encode(&msg).unwrap()).unwrap())
        });
        let wire = XmeWire::default();
        g.bench_function("xme_wire", |b| {
            b.iter(|| wire.decode(&wire.encode(&msg).unwrap()).unwrap())
        });
        g.finish();
    }
}

fn rpc(c: &mut Criterion) {
    let mut g = c.benchmark_group("rpc");
    g.measurement_time(Duration::from_secs(4));
    let key = [2; 32];
    let server = Server::new(Sealed::new(key))
        .register("inc", |x: u64| x + 1)
        .serve_tcp("127.0.0.1:0")
        .unwrap();
    let client = Client::connect_tcp(server.local_addr().unwrap(), Sealed::new(key)).unwrap();
    let wait = Duration::from_secs(5);

    // The floor: an echo of a request-sized frame on loopback TCP.
    let request_len = 4 + Sealed::new(key)
        .encode(
            json!({"mark": "0123456789abcdef0123456789abcdef", "time": 1_700_000_000_000u64, "fun": "inc", "args": 41})
                .as_object()
                .unwrap(),
        )
        .unwrap()
        .len();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let echo = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        s.set_nodelay(true).unwrap();
        let mut buf = vec![0u8; request_len];
        while s.read_exact(&mut buf).is_ok() {
            if s.write_all(&buf).is_err() {
                break;
            }
        }
    });
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_nodelay(true).unwrap();
    let frame = vec![7u8; request_len];
    let mut back = vec![0u8; request_len];
    g.bench_function("raw_tcp_pingpong", |b| {
        b.iter(|| {
            s.write_all(&frame).unwrap();
            s.read_exact(&mut back).unwrap();
        })
    });
    drop(s);
    echo.join().unwrap();

    g.bench_function("call", |b| {
        b.iter(|| assert_eq!(client.call::<_, u64>("inc", &41, wait).unwrap(), 42))
    });
    g.throughput(Throughput::Elements(100));
    g.bench_function("serial_100", |b| {
        b.iter(|| {
            for i in 0..100u64 {
                assert_eq!(client.call::<_, u64>("inc", &i, wait).unwrap(), i + 1);
            }
        })
    });
    g.bench_function("pipelined_100", |b| {
        b.iter(|| {
            let pending: Vec<_> = (0..100u64)
                .map(|i| client.start::<_, u64>("inc", &i).unwrap())
                .collect();
            for (i, p) in pending.into_iter().enumerate() {
                assert_eq!(p.wait(wait).unwrap(), i as u64 + 1);
            }
        })
    });
    g.finish();
    drop(client);
    server.shutdown();
}

criterion_group!(benches, codecs, rpc);
criterion_main!(benches);
