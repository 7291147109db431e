//! The RPC server: typed functions by name, one thread per connection.

use std::collections::{HashMap, HashSet, VecDeque};
use std::io::{BufReader, BufWriter, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use super::frame::{decode_request, encode_reply, push_frame, read_frame};
use super::stream::Stream;
use crate::codec::DEFAULT_MAX_FRAME;
use crate::{Codec, MonitorError};

type Handler = Arc<dyn Fn(Value) -> Result<Value, (&'static str, String)> + Send + Sync>;

/// How far a request's time may be from the server's clock; marks are
/// remembered this long, so a replay within it is refused and one outside
/// it is refused as stale.
const REPLAY_WINDOW_MS: u64 = 5 * 60 * 1000;
/// Most marks remembered (older ones are forgotten first).
const REPLAY_MEMORY: usize = 1 << 20;

/// An RPC server: register functions, then serve them on a TCP address or a
/// Unix socket path.
pub struct Server {
    functions: HashMap<String, Handler>,
    codec: Arc<dyn Codec>,
    max_frame: usize,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("functions", &self.functions.keys().collect::<Vec<_>>())
            .field("codec", &self.codec.name())
            .finish()
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Marks seen recently, server-wide.
#[derive(Default)]
struct Replays {
    seen: HashSet<String>,
    order: VecDeque<(u64, String)>,
}

impl Replays {
    /// `Err` with the reason if the request must be refused.
    fn admit(&mut self, mark: &str, time_ms: u64) -> Result<(), String> {
        let now = now_ms();
        if time_ms.abs_diff(now) > REPLAY_WINDOW_MS {
            return Err(format!(
                "request time {time_ms} is more than {REPLAY_WINDOW_MS} ms from the server's clock {now}"
            ));
        }
        while let Some((t, _)) = self.order.front() {
            if now.saturating_sub(*t) > REPLAY_WINDOW_MS || self.order.len() >= REPLAY_MEMORY {
                let (_, old) = self.order.pop_front().expect("non-empty");
                self.seen.remove(&old);
            } else {
                break;
            }
        }
        if !self.seen.insert(mark.to_string()) {
            return Err(format!("mark {mark} was already used: a replayed request"));
        }
        self.order.push_back((now, mark.to_string()));
        Ok(())
    }
}

struct Shared {
    functions: HashMap<String, Handler>,
    codec: Arc<dyn Codec>,
    max_frame: usize,
    replays: Mutex<Replays>,
    stopping: AtomicBool,
    connections: Mutex<Vec<(Stream, JoinHandle<()>)>>,
}

impl Server {
    /// A server whose connections use `codec` (normally [`Sealed`](crate::Sealed)).
    pub fn new(codec: impl Codec + 'static) -> Server {
        Server {
            functions: HashMap::new(),
            codec: Arc::new(codec),
            max_frame: DEFAULT_MAX_FRAME,
        }
    }

    /// Largest frame accepted or sent (default 64 MiB).
    pub fn max_frame(mut self, bytes: usize) -> Server {
        self.max_frame = bytes;
        self
    }

    /// Serves `f` as `name`: its argument and result cross as JSON. A
    /// panic in `f` becomes a `panicked` error reply; the server goes on.
    pub fn register<A, R, F>(mut self, name: &str, f: F) -> Server
    where
        A: DeserializeOwned,
        R: Serialize,
        F: Fn(A) -> R + Send + Sync + 'static,
    {
        let handler: Handler = Arc::new(move |args| {
            let a: A =
                serde_json::from_value(args).map_err(|e| ("bad-arguments", e.to_string()))?;
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(a)))
                .map_err(|p| ("panicked", xme_core::process::panic_message(&*p)))?;
            serde_json::to_value(r).map_err(|e| ("bad-result", e.to_string()))
        });
        self.functions.insert(name.to_string(), handler);
        self
    }

    fn shared(self) -> Arc<Shared> {
        Arc::new(Shared {
            functions: self.functions,
            codec: self.codec,
            max_frame: self.max_frame,
            replays: Mutex::default(),
            stopping: AtomicBool::new(false),
            connections: Mutex::default(),
        })
    }

    /// Serves on a TCP address (`"127.0.0.1:0"` picks a free port; see
    /// [`ServerHandle::local_addr`]).
    pub fn serve_tcp(self, addr: impl ToSocketAddrs) -> Result<ServerHandle, MonitorError> {
        let listener = TcpListener::bind(addr).map_err(|source| MonitorError::Io {
            doing: "binding the RPC server's TCP address",
            source,
        })?;
        let local = listener.local_addr().ok();
        let incoming = std::iter::from_fn(move || {
            Some(listener.accept().map(|(c, _)| {
                let _ = c.set_nodelay(true);
                Stream::Tcp(c)
            }))
        });
        self.serve(incoming, local, None)
    }

    /// Serves on a Unix socket at `path` (removed again at shutdown).
    pub fn serve_unix(self, path: impl AsRef<Path>) -> Result<ServerHandle, MonitorError> {
        let path = path.as_ref().to_path_buf();
        let listener = UnixListener::bind(&path).map_err(|source| MonitorError::Io {
            doing: "binding the RPC server's Unix socket",
            source,
        })?;
        let incoming =
            std::iter::from_fn(move || Some(listener.accept().map(|(c, _)| Stream::Unix(c))));
        self.serve(incoming, None, Some(path))
    }

    fn serve(
        self,
        incoming: impl Iterator<Item = std::io::Result<Stream>> + Send + 'static,
        local: Option<SocketAddr>,
        path: Option<PathBuf>,
    ) -> Result<ServerHandle, MonitorError> {
        let shared = self.shared();
        let s = shared.clone();
        let accept = std::thread::Builder::new()
            .name("xme-rpc-accept".into())
            .spawn(move || {
                for conn in incoming {
                    if s.stopping.load(Ordering::Acquire) {
                        return;
                    }
                    match conn {
                        Ok(c) => start_connection(&s, c),
                        Err(e) => log::error!("xme rpc: accept failed: {e}"),
                    }
                }
            })
            .map_err(|source| MonitorError::Io {
                doing: "starting the RPC accept thread",
                source,
            })?;
        Ok(ServerHandle {
            shared,
            accept: Some(accept),
            local,
            path,
        })
    }
}

fn start_connection(shared: &Arc<Shared>, stream: Stream) {
    let Ok(control) = stream.try_clone() else {
        log::error!("xme rpc: could not clone a connection; closing it");
        return;
    };
    let s = shared.clone();
    match std::thread::Builder::new()
        .name("xme-rpc-conn".into())
        .spawn(move || serve_connection(&s, stream))
    {
        Ok(handle) => {
            let mut conns = shared.connections.lock().unwrap_or_else(|e| e.into_inner());
            conns.retain(|(_, h)| !h.is_finished());
            conns.push((control, handle));
        }
        Err(e) => log::error!("xme rpc: could not start a connection thread: {e}"),
    }
}

/// Reads requests and answers them in order until the client closes, a
/// frame is bad, or the server shuts down (after the request in hand).
fn serve_connection(s: &Shared, stream: Stream) {
    let Ok(write_half) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::with_capacity(64 * 1024, stream);
    let mut writer = BufWriter::with_capacity(64 * 1024, write_half);
    loop {
        let body = match read_frame(&mut reader, s.max_frame) {
            Ok(Some(body)) => body,
            Ok(None) => break,
            Err(e) => {
                log::error!("xme rpc: closing a connection: {e}");
                break;
            }
        };
        let request = match decode_request(&*s.codec, &body) {
            Ok(r) => r,
            Err(e) => {
                // Unauthenticated or malformed: no reply, the connection ends.
                log::error!("xme rpc: closing a connection after a bad request: {e}");
                break;
            }
        };
        let admitted = s
            .replays
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .admit(&request.mark, request.time_ms);
        let result = match admitted {
            Err(why) => Err(("replayed", why)),
            Ok(()) => match s.functions.get(&request.fun) {
                Some(f) => f(request.args),
                None => Err((
                    "unknown-function",
                    format!("no function {:?} on this server", request.fun),
                )),
            },
        };
        let reply = match encode_reply(&*s.codec, &request.mark, result) {
            Ok(r) => r,
            Err(e) => {
                match encode_reply(&*s.codec, &request.mark, Err(("bad-result", e.to_string()))) {
                    Ok(r) => r,
                    Err(_) => break,
                }
            }
        };
        if push_frame(&mut writer, &reply).is_err() {
            break;
        }
        // Flush once the requests already received are answered: pipelined
        // calls share one write.
        if reader.buffer().is_empty() && writer.flush().is_err() {
            break;
        }
    }
    let _ = writer.flush();
    writer.get_ref().shutdown(Shutdown::Both);
}

/// A running server. [`shutdown`](Self::shutdown) (or dropping it) stops
/// accepting, lets every call in flight finish and send its reply, then
/// closes every connection.
pub struct ServerHandle {
    shared: Arc<Shared>,
    accept: Option<JoinHandle<()>>,
    local: Option<SocketAddr>,
    path: Option<PathBuf>,
}

impl std::fmt::Debug for ServerHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerHandle")
            .field("local", &self.local)
            .field("path", &self.path)
            .finish()
    }
}

impl ServerHandle {
    /// The TCP address served, if TCP.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.local
    }

    /// The Unix socket path served, if Unix.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// Stops gracefully (see the type's docs).
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        let Some(accept) = self.accept.take() else {
            return;
        };
        self.shared.stopping.store(true, Ordering::Release);
        // Wake the accept loop with a connection of our own.
        if let Some(addr) = self.local {
            let _ = TcpStream::connect_timeout(&addr, Duration::from_secs(1));
        }
        if let Some(path) = &self.path {
            let _ = UnixStream::connect(path);
        }
        let _ = accept.join();
        let conns = std::mem::take(
            &mut *self
                .shared
                .connections
                .lock()
                .unwrap_or_else(|e| e.into_inner()),
        );
        for (stream, handle) in conns {
            // No more requests; the one being served still gets its reply.
            stream.shutdown(Shutdown::Read);
            let _ = handle.join();
        }
        if let Some(path) = &self.path {
            let _ = std::fs::remove_file(path);
        }
    }
}

impl Drop for ServerHandle {
    fn drop(&mut self) {
        self.stop();
    }
}
