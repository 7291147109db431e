//! RPC on loopback TCP and Unix sockets: errors, load, replays, bad frames,
//! timeouts, a killed server, graceful shutdown.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::json;
use xme_core::process::fork_child;
use xme_monitor::rpc::{Client, Server, ServerHandle};
use xme_monitor::{Codec, MonitorError, Sealed};

static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

const KEY: [u8; 32] = [11; 32];
const WAIT: Duration = Duration::from_secs(10);

fn server() -> Server {
    Server::new(Sealed::new(KEY))
        .register("add", |(a, b): (i64, i64)| a + b)
        .register("echo", |s: String| s)
        .register("sleep", |ms: u64| {
            std::thread::sleep(Duration::from_millis(ms));
            ms
        })
        .register("boom", |_: ()| -> u8 { panic!("boom on purpose") })
}

fn tcp() -> (ServerHandle, Client) {
    let handle = server().serve_tcp("127.0.0.1:0").unwrap();
    let client = Client::connect_tcp(handle.local_addr().unwrap(), Sealed::new(KEY)).unwrap();
    (handle, client)
}

fn remote_kind(e: &MonitorError) -> &str {
    match e {
        MonitorError::Remote { kind, .. } => kind,
        _ => "",
    }
}

#[test]
fn calls_and_typed_error_replies_over_tcp_and_unix() {
    let (handle, client) = tcp();
    assert_eq!(client.call::<_, i64>("add", &(2, 40), WAIT).unwrap(), 42);
    let e = client.call::<_, i64>("nope", &(), WAIT).unwrap_err();
    assert_eq!(remote_kind(&e), "unknown-function", "{e}");
    let e = client
        .call::<_, i64>("add", &"not a pair", WAIT)
        .unwrap_err();
    assert_eq!(remote_kind(&e), "bad-arguments", "{e}");
    let e = client.call::<_, u8>("boom", &(), WAIT).unwrap_err();
    assert_eq!(remote_kind(&e), "panicked", "{e}");
    assert!(e.to_string().contains("boom on purpose"));
    // The server goes on.
    assert_eq!(
        client.call::<_, String>("echo", &"ü😀", WAIT).unwrap(),
        "ü😀"
    );
    drop(client);
    handle.shutdown();

    let path = std::env::temp_dir().join(format!("xme-rpc-{}.sock", std::process::id()));
    let handle = server().serve_unix(&path).unwrap();
    let client = Client::connect_unix(&path, Sealed::new(KEY)).unwrap();
    assert_eq!(client.call::<_, i64>("add", &(1, 1), WAIT).unwrap(), 2);
    drop(client);
    handle.shutdown();
    assert!(!path.exists());
}

#[test]
fn eight_clients_five_thousand_calls_some_pipelined_none_lost() {
    let handle = server().serve_tcp("127.0.0.1:0").unwrap();
    let addr = handle.local_addr().unwrap();
    std::thread::scope(|s| {
        for c in 0..8i64 {
            s.spawn(move || {
                let client = Client::connect_tcp(addr, Sealed::new(KEY)).unwrap();
                // Two threads share the connection.
                std::thread::scope(|s2| {
                    for half in 0..2i64 {
                        let client = &client;
                        s2.spawn(move || {
                            let base = c * 1_000_000 + half * 100_000;
                            // Half serial, half pipelined in batches of 50.
                            for i in 0..1250 {
                                let r: i64 = client.call("add", &(base, i), WAIT).unwrap();
                                assert_eq!(r, base + i);
                            }
                            for batch in 0..25 {
                                let pending: Vec<_> = (0..50)
                                    .map(|j| {
                                        let i = 10_000 + batch * 50 + j;
                                        (i, client.start::<_, i64>("add", &(base, i)).unwrap())
                                    })
                                    .collect();
                                for (i, p) in pending {
                                    assert_eq!(p.wait(WAIT).unwrap(), base + i);
                                }
                            }
                        });
                    }
                });
            });
        }
    });
    handle.shutdown();
}

fn sealed_request(mark: &str, fun: &str, args: serde_json::Value) -> Vec<u8> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let msg = json!({"mark": mark, "time": now, "fun": fun, "args": args});
    let body = Sealed::new(KEY).encode(msg.as_object().unwrap()).unwrap();
    let mut frame = (body.len() as u32).to_le_bytes().to_vec();
    frame.extend_from_slice(&body);
    frame
}

fn read_reply(s: &mut TcpStream) -> serde_json::Value {
    let mut len = [0u8; 4];
    s.read_exact(&mut len).unwrap();
    let mut body = vec![0; u32::from_le_bytes(len) as usize];
    s.read_exact(&mut body).unwrap();
    serde_json::Value::Object(Sealed::new(KEY).decode(&body).unwrap())
}

#[test]
fn a_replayed_request_is_refused() {
    let handle = server().serve_tcp("127.0.0.1:0").unwrap();
    let mut s = TcpStream::connect(handle.local_addr().unwrap()).unwrap();
    let frame = sealed_request("0123456789abcdef", "add", json!([1, 2]));
    s.write_all(&frame).unwrap();
    assert_eq!(read_reply(&mut s)["ok"], 3);
    s.write_all(&frame).unwrap();
    let r = read_reply(&mut s);
    assert_eq!(r["err"]["kind"], "replayed", "{r}");
    // Replayed on another connection: refused too.
    let mut s2 = TcpStream::connect(handle.local_addr().unwrap()).unwrap();
    s2.write_all(&frame).unwrap();
    assert_eq!(read_reply(&mut s2)["err"]["kind"], "replayed");
    drop((s, s2));
    handle.shutdown();
}

#[test]
fn bad_frames_close_only_their_connection() {
    let (handle, client) = tcp();
    let addr = handle.local_addr().unwrap();
    for garbage in [
        b"\x05\x00\x00\x00hello".to_vec(), // not sealed
        b"\xff\xff\xff\xff".to_vec(),      // larger than the limit
        sealed_request("m1", "add", json!([1, 2]))[..30].to_vec(), // cut short, then closed
    ] {
        let mut s = TcpStream::connect(addr).unwrap();
        s.write_all(&garbage).unwrap();
        s.shutdown(std::net::Shutdown::Write).unwrap();
        let mut rest = Vec::new();
        s.set_read_timeout(Some(WAIT)).unwrap();
        // The server closes the connection without a reply.
        assert_eq!(s.read_to_end(&mut rest).unwrap(), 0);
    }
    // A client with the wrong key: its requests are unauthenticated.
    let stranger = Client::connect_tcp(addr, Sealed::new([12; 32])).unwrap();
    let e = stranger.call::<_, i64>("add", &(1, 2), WAIT).unwrap_err();
    assert!(matches!(e, MonitorError::ConnectionClosed(_)), "{e}");
    assert!(matches!(
        stranger.call::<_, i64>("add", &(1, 2), WAIT),
        Err(MonitorError::ConnectionClosed(_) | MonitorError::Io { .. })
    ));
    // Nothing else is affected.
    assert_eq!(client.call::<_, i64>("add", &(5, 5), WAIT).unwrap(), 10);
    drop(client);
    handle.shutdown();
}

#[test]
fn a_call_times_out_and_the_connection_goes_on() {
    let (handle, client) = tcp();
    let t = Instant::now();
    let e = client
        .call::<_, u64>("sleep", &300, Duration::from_millis(50))
        .unwrap_err();
    assert!(matches!(e, MonitorError::Timeout { .. }), "{e}");
    assert!(t.elapsed() < Duration::from_millis(250));
    // The late reply is dropped; the next call gets its own.
    assert_eq!(client.call::<_, i64>("add", &(1, 2), WAIT).unwrap(), 3);
    drop(client);
    handle.shutdown();
}

#[test]
fn a_killed_server_fails_calls_in_flight_without_hanging() {
    let _s = serial();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let child = fork_child(move || {
        let _h = server().serve_tcp(addr).unwrap();
        std::thread::sleep(Duration::from_secs(60));
        0
    })
    .unwrap();
    let client = loop {
        match Client::connect_tcp(addr, Sealed::new(KEY)) {
            Ok(c) => break c,
            Err(_) => std::thread::sleep(Duration::from_millis(5)),
        }
    };
    let pending = client.start::<_, u64>("sleep", &5000).unwrap();
    std::thread::sleep(Duration::from_millis(50));
    child.kill().unwrap();
    let t = Instant::now();
    let e = pending.wait(WAIT).unwrap_err();
    assert!(matches!(e, MonitorError::ConnectionClosed(_)), "{e}");
    assert!(t.elapsed() < Duration::from_secs(2));
    assert!(client.call::<_, i64>("add", &(1, 2), WAIT).is_err());
}

#[test]
fn shutdown_lets_calls_in_flight_finish() {
    let (handle, client) = tcp();
    let pending = client.start::<_, u64>("sleep", &300).unwrap();
    std::thread::sleep(Duration::from_millis(50));
    let t = Instant::now();
    handle.shutdown();
    assert!(t.elapsed() >= Duration::from_millis(200));
    assert_eq!(pending.wait(WAIT).unwrap(), 300);
    assert!(client.call::<_, i64>("add", &(1, 2), WAIT).is_err());
}

fn threads(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .count()
}

fn rss_bytes(pid: i32) -> usize {
    let statm = std::fs::read_to_string(format!("/proc/{pid}/statm")).unwrap();
    let pages: usize = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    pages * 4096
}

/// A server in a process of its own (so that its threads and memory are
/// measured alone), serving on loopback until killed.
fn server_in_child(
    configure: fn(Server) -> Server,
) -> (xme_core::process::Child, std::net::SocketAddr) {
    use std::sync::atomic::{AtomicU64, Ordering};
    let region = xme_core::SharedRegion::anonymous(64).unwrap();
    let port: &AtomicU64 = region.place(0).unwrap();
    let child = fork_child(|| {
        let h = configure(server()).serve_tcp("127.0.0.1:0").unwrap();
        port.store(u64::from(h.local_addr().unwrap().port()), Ordering::Release);
        loop {
            std::thread::sleep(Duration::from_secs(1));
        }
    })
    .unwrap();
    let t = Instant::now();
    while port.load(Ordering::Acquire) == 0 {
        assert!(t.elapsed() < WAIT, "the server did not start");
        std::thread::sleep(Duration::from_millis(2));
    }
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port.load(Ordering::Acquire) as u16));
    (child, addr)
}

#[test]
fn connections_past_the_bound_are_refused_with_a_reason_and_cost_no_thread() {
    let (child, addr) = server_in_child(|s| s.max_connections(8));
    let before = threads(child.pid());
    // 300 idle connections: 8 are served, the rest refused and closed.
    let idle: Vec<TcpStream> = (0..300)
        .map(|_| TcpStream::connect(addr).unwrap())
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let grown = threads(child.pid()) - before;
    assert!(
        grown <= 8,
        "{grown} threads for 300 connections with a bound of 8"
    );
    // A client past the bound learns why.
    let refused = Client::connect_tcp(addr, Sealed::new(KEY)).unwrap();
    let e = refused.call::<_, i64>("add", &(1, 2), WAIT).unwrap_err();
    assert!(
        matches!(&e, MonitorError::ConnectionClosed(why) if why.contains("refused") && why.contains("at most 8")),
        "{e}"
    );
    // Once the idle ones go, new clients are served again.
    drop(idle);
    let t = Instant::now();
    let answer = loop {
        let c = Client::connect_tcp(addr, Sealed::new(KEY)).unwrap();
        match c.call::<_, i64>("add", &(2, 3), WAIT) {
            Ok(v) => break v,
            Err(_) if t.elapsed() < WAIT => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => panic!("{e}"),
        }
    };
    assert_eq!(answer, 5);
    child.kill().unwrap();
}

#[test]
fn idle_and_slow_connections_are_closed() {
    let _s = serial();
    let handle = server()
        .idle_timeout(Duration::from_millis(200))
        .read_timeout(Duration::from_millis(300))
        .serve_tcp("127.0.0.1:0")
        .unwrap();
    let addr = handle.local_addr().unwrap();
    // Idle: nothing sent.
    let mut idle = TcpStream::connect(addr).unwrap();
    idle.set_read_timeout(Some(WAIT)).unwrap();
    let t = Instant::now();
    assert_eq!(idle.read(&mut [0u8; 16]).unwrap(), 0);
    assert!(
        t.elapsed() >= Duration::from_millis(150),
        "{:?}",
        t.elapsed()
    );
    // Slow: a frame started and never finished.
    let frame = sealed_request("slow0123", "add", json!([1, 2]));
    let mut slow = TcpStream::connect(addr).unwrap();
    slow.write_all(&frame[..frame.len() / 2]).unwrap();
    slow.set_read_timeout(Some(WAIT)).unwrap();
    let t = Instant::now();
    assert_eq!(slow.read(&mut [0u8; 16]).unwrap(), 0);
    assert!(t.elapsed() < WAIT);
    // A client that keeps calling is not idle.
    let client = Client::connect_tcp(addr, Sealed::new(KEY)).unwrap();
    for i in 0..5 {
        std::thread::sleep(Duration::from_millis(100));
        assert_eq!(client.call::<_, i64>("add", &(i, 1), WAIT).unwrap(), i + 1);
    }
    drop(client);
    handle.shutdown();
}

#[test]
fn unauthenticated_peers_announcing_huge_frames_cost_little_memory() {
    let (child, addr) = server_in_child(|s| s);
    let before = rss_bytes(child.pid());
    // 16 peers announce 60 MiB frames and send 1 MiB of garbage each.
    let mut peers = Vec::new();
    for _ in 0..16 {
        let mut s = TcpStream::connect(addr).unwrap();
        s.write_all(&(60u32 << 20).to_le_bytes()).unwrap();
        let _ = s.write_all(&vec![0x5a; 1 << 20]);
        peers.push(s);
    }
    std::thread::sleep(Duration::from_millis(300));
    let grown = rss_bytes(child.pid()).saturating_sub(before);
    assert!(grown < 8 << 20, "the server grew by {grown} bytes");
    // Each was closed: the frame is over the unauthenticated limit.
    for mut s in peers {
        s.set_read_timeout(Some(WAIT)).unwrap();
        let mut rest = Vec::new();
        let _ = s.read_to_end(&mut rest);
        assert!(rest.is_empty());
    }
    // A keyed client may still send a large frame once it has authenticated.
    let client = Client::connect_tcp(addr, Sealed::new(KEY)).unwrap();
    assert_eq!(client.call::<_, i64>("add", &(1, 1), WAIT).unwrap(), 2);
    let big = "x".repeat(1 << 20);
    assert_eq!(
        client.call::<_, String>("echo", &big, WAIT).unwrap().len(),
        1 << 20
    );
    drop(client);
    child.kill().unwrap();
}

#[test]
fn a_unix_socket_left_by_a_dead_server_is_reclaimed() {
    let _s = serial();
    let path = std::env::temp_dir().join(format!("xme-rpc-stale-{}.sock", std::process::id()));
    let _ = std::fs::remove_file(&path);
    // A server process that dies by SIGKILL leaves its socket file behind.
    let child = fork_child(|| {
        let h = server().serve_unix(&path).unwrap();
        std::mem::forget(h);
        loop {
            std::thread::sleep(Duration::from_secs(1));
        }
    })
    .unwrap();
    let t = Instant::now();
    while !path.exists() && t.elapsed() < WAIT {
        std::thread::sleep(Duration::from_millis(5));
    }
    // While it lives, a second server is refused with a clear reason.
    let e = server().serve_unix(&path).unwrap_err();
    // The message says what failed; its source says why.
    let why = std::error::Error::source(&e)
        .map(ToString::to_string)
        .unwrap_or_default();
    assert!(why.contains("listening"), "{e}: {why}");
    child.kill().unwrap();
    assert!(path.exists(), "the killed server left its socket");
    let handle = server().serve_unix(&path).unwrap();
    let client = Client::connect_unix(&path, Sealed::new(KEY)).unwrap();
    assert_eq!(client.call::<_, i64>("add", &(4, 5), WAIT).unwrap(), 9);
    drop(client);
    handle.shutdown();
    assert!(!path.exists());
    // A path that is not a socket is never removed.
    std::fs::write(&path, b"user data").unwrap();
    let e = server().serve_unix(&path).unwrap_err();
    assert!(chain(&e).contains("not a socket"), "{}", chain(&e));
    assert_eq!(std::fs::read(&path).unwrap(), b"user data");
    std::fs::remove_file(&path).unwrap();
}

/// An error and its sources, as error reporters print them.
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text = format!("{text}: {s}");
        source = s.source();
    }
    text
}
