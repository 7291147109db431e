//! The RPC server against peers that replay captured frames, read a
//! trickle, or remove its socket file, and a client whose server stops
//! reading (regressions found by an independent
//! review of #26; each failed before its fix).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use serde_json::json;
use xme_monitor::rpc::Client;
use xme_monitor::{Codec, Sealed};

mod common;
use common::{KEY, WAIT, read_reply, sealed_request, serial, server};

fn rss_bytes() -> usize {
    let s = std::fs::read_to_string("/proc/self/statm").unwrap();
    s.split_whitespace()
        .nth(1)
        .unwrap()
        .parse::<usize>()
        .unwrap()
        * 4096
}

/// A peer without the key that saw one sealed request on the wire replays
/// it on every connection: each is refused as `replayed` and the connection
/// stays unauthenticated (evictable, small frames only), so a keyed client
/// still gets in. (Before: a decoded frame authenticated the connection
/// even when refused.)
#[test]
fn a_replayed_request_authenticates_nothing_and_a_keyed_client_gets_in() {
    let _s = serial();
    let handle = server()
        .max_connections(4)
        .read_timeout(Duration::from_secs(1))
        .serve_tcp("127.0.0.1:0")
        .unwrap();
    let addr = handle.local_addr().unwrap();
    let captured = sealed_request("captured-once", "add", json!([1, 2]));
    // The legitimate use of the frame, which the attacker observed.
    let mut first = TcpStream::connect(addr).unwrap();
    first.write_all(&captured).unwrap();
    let r = read_reply(&mut first).unwrap();
    assert_eq!(r["ok"], json!(3));
    drop(first);
    std::thread::sleep(Duration::from_millis(100));
    // The attacker: the same bytes on 4 connections.
    let mut squatters: Vec<TcpStream> = (0..4)
        .map(|_| {
            let mut s = TcpStream::connect(addr).unwrap();
            s.write_all(&captured).unwrap();
            let r = read_reply(&mut s).unwrap();
            assert_eq!(r["err"]["kind"], json!("replayed"), "{r}");
            s
        })
        .collect();
    // Past the read timeout (the unauthenticated deadline) they are still open.
    std::thread::sleep(Duration::from_millis(1500));
    let t = Instant::now();
    let got = Client::connect_tcp(addr, Sealed::new(KEY))
        .and_then(|c| c.call::<_, i64>("add", &(40, 2), WAIT));
    eprintln!(
        "keyed client after replaying squatters: {got:?} in {:?}",
        t.elapsed()
    );
    // Keep them "alive" (a replay every while resets the idle timeout).
    for s in &mut squatters {
        let _ = s.write_all(&captured);
    }
    handle.shutdown();
    assert_eq!(
        got.ok(),
        Some(42),
        "four keyless peers replaying one captured frame kept a keyed client out"
    );
}

/// A keyed peer that reads its large reply as a trickle: the reply is cut at
/// `write_timeout` (how long a reply may take to leave). Before, only each
/// send was bounded (`SO_SNDTIMEO`), and one send goes on while the peer
/// frees some room in time.
#[test]
fn a_reply_read_by_a_trickle_is_cut_at_the_write_timeout() {
    let _s = serial();
    let path = std::env::temp_dir().join(format!("xme-review-slow-{}.sock", std::process::id()));
    let handle = server()
        .write_timeout(Duration::from_millis(500))
        .serve_unix(&path)
        .unwrap();
    let mut s = std::os::unix::net::UnixStream::connect(&path).unwrap();
    s.write_all(&sealed_request("slow-1", "blob", json!(4 << 20)))
        .unwrap();
    let t = Instant::now();
    let mut got = 0usize;
    let mut buf = vec![0u8; 8 << 10];
    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    // 8 KiB every 50 ms: each send of the server makes progress well within
    // its 500 ms, so only a deadline on the whole reply ends it. Uncut, the
    // 4 MiB would take about 26 s; cut, the connection ends once what the
    // kernel had queued (well under 1 MiB) is read.
    let mut ended = false;
    while t.elapsed() < Duration::from_secs(12) {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => {
                ended = true;
                break;
            }
            Ok(n) => got += n,
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let held = t.elapsed();
    eprintln!("slow reader got {got} bytes over {held:?} (write timeout 500 ms)");
    handle.shutdown();
    assert!(
        ended && got < 1 << 20,
        "a trickle reader was still being sent the reply after {held:?} ({got} bytes) \
         with a write timeout of 500 ms"
    );
}

/// A frame captured an hour ago is refused as stale and authenticates
/// nothing: the keyless peer stays under the 64 KiB unauthenticated cap (it
/// could announce and send 64 MiB frames on every connection before).
#[test]
fn a_stale_captured_frame_keeps_the_unauthenticated_frame_cap() {
    let _s = serial();
    let handle = server()
        .max_connections(8)
        .read_timeout(Duration::from_secs(20))
        .serve_tcp("127.0.0.1:0")
        .unwrap();
    let addr = handle.local_addr().unwrap();
    let hour_ago = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
        - 3_600_000;
    let msg = json!({"mark": "old", "time": hour_ago, "fun": "add", "args": [1, 2]});
    let body = Sealed::new(KEY).encode(msg.as_object().unwrap()).unwrap();
    let mut captured = (body.len() as u32).to_le_bytes().to_vec();
    captured.extend_from_slice(&body);
    let big = vec![0x55u8; 48 << 20];
    let before = rss_bytes();
    let mut peers = Vec::new();
    for _ in 0..4 {
        let mut s = TcpStream::connect(addr).unwrap();
        s.write_all(&captured).unwrap();
        let r = read_reply(&mut s).unwrap();
        assert_eq!(r["err"]["kind"], json!("stale"), "{r}");
        // Now a 60 MiB frame, of which 48 MiB are sent: the server, holding
        // this connection to the small unauthenticated cap, cuts it (the
        // writes fail) instead of reading it.
        let _ = s.write_all(&(60u32 << 20).to_le_bytes());
        let _ = s.write_all(&big);
        peers.push(s);
    }
    std::thread::sleep(Duration::from_millis(500));
    let grew = rss_bytes().saturating_sub(before);
    eprintln!(
        "4 keyless peers with one stale captured frame grew the server by {} MiB",
        grew >> 20
    );
    drop(peers);
    handle.shutdown();
    assert!(
        grew < 16 << 20,
        "keyless peers made the server hold {} MiB",
        grew >> 20
    );
}

/// Shutdown returns although the Unix socket file was removed meanwhile (a
/// tmp cleaner, an operator): the accept loop is woken by shutdown(2) on the
/// listener, not by a connection to the path, which blocked for ever.
#[test]
fn shutdown_returns_when_the_unix_socket_file_is_gone() {
    let _s = serial();
    let path = std::env::temp_dir().join(format!("xme-review-gone-{}.sock", std::process::id()));
    let handle = server().serve_unix(&path).unwrap();
    let client = Client::connect_unix(&path, Sealed::new(KEY)).unwrap();
    assert_eq!(client.call::<_, i64>("add", &(1, 2), WAIT).unwrap(), 3);
    std::fs::remove_file(&path).unwrap();
    let (done, waited) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let t = Instant::now();
        handle.shutdown();
        let _ = done.send(t.elapsed());
    });
    let took = waited.recv_timeout(Duration::from_secs(5));
    eprintln!("shutdown with the socket file removed: {took:?}");
    assert!(
        took.is_ok(),
        "shutdown did not return in 5 s (the accept thread is never woken)"
    );
}

/// `Client::call(.., timeout)` returns by its timeout although the server is
/// not reading (its thread runs a long call) and the request is larger than
/// the socket buffers: sending counts against the timeout.
#[test]
fn a_call_with_a_timeout_returns_in_time_while_the_server_does_not_read() {
    let _s = serial();
    let path = std::env::temp_dir().join(format!("xme-rpc-send-{}.sock", std::process::id()));
    let handle = server()
        .register("sleep", |ms: u64| {
            std::thread::sleep(Duration::from_millis(ms));
            ms
        })
        .register("len", |s: String| s.len())
        .serve_unix(&path)
        .unwrap();
    let client = Client::connect_unix(&path, Sealed::new(KEY)).unwrap();
    let slow = client.start::<_, u64>("sleep", &3000u64).unwrap();
    std::thread::sleep(Duration::from_millis(100));
    let t = Instant::now();
    let r = client.call::<_, usize>("len", &"y".repeat(1 << 20), Duration::from_millis(500));
    let took = t.elapsed();
    eprintln!("call with a 500 ms timeout returned {r:?} after {took:?}");
    let _ = slow.wait(WAIT);
    handle.shutdown();
    assert!(
        took < Duration::from_millis(1500),
        "a call with a 500 ms timeout took {took:?}"
    );
}
