//! Helpers shared by the RPC test files: the server under test and a raw
//! peer's view of the wire (sealed request frames, replies).

#![allow(dead_code)] // each test file uses some

use std::io::Read;
use std::sync::Mutex;
use std::time::Duration;

use serde_json::json;
use xme_monitor::rpc::Server;
use xme_monitor::{Codec, Sealed};

static SERIAL: Mutex<()> = Mutex::new(());

/// Serialises the tests of a file: some count threads and memory.
pub fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

pub const KEY: [u8; 32] = [11; 32];
pub const WAIT: Duration = Duration::from_secs(10);

/// The server under test, with its functions (not yet serving).
pub fn server() -> Server {
    Server::new(Sealed::new(KEY))
        .register("add", |(a, b): (i64, i64)| a + b)
        .register("echo", |s: String| s)
        .register("sleep", |ms: u64| {
            std::thread::sleep(Duration::from_millis(ms));
            ms
        })
        .register("boom", |_: ()| -> u8 { panic!("boom on purpose") })
        .register("blob", |n: usize| "x".repeat(n))
}

/// A request frame sealed with the key, as a client would send it.
pub fn sealed_request(mark: &str, fun: &str, args: serde_json::Value) -> Vec<u8> {
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

/// The next reply frame, opened; None once the connection ended.
pub fn read_reply(s: &mut impl Read) -> Option<serde_json::Value> {
    let mut len = [0u8; 4];
    s.read_exact(&mut len).ok()?;
    let mut body = vec![0; u32::from_le_bytes(len) as usize];
    s.read_exact(&mut body).ok()?;
    Some(serde_json::Value::Object(
        Sealed::new(KEY).decode(&body).unwrap(),
    ))
}
