//! The RPC server: typed functions by name, one thread per connection.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet};
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use super::frame::{decode_request, encode_reply, push_frame, read_frame};
use super::stream::Stream;
use crate::codec::DEFAULT_MAX_FRAME;
use crate::{Codec, MonitorError};

type Handler = Arc<dyn Fn(Value) -> Result<Value, (&'static str, String)> + Send + Sync>;

/// How far a request's time may be from the server's clock. A mark is
/// remembered for as long as its request's time is admissible (until that
/// time plus the window has passed), so a replay within it is refused as a
/// replay and one after it as stale.
const REPLAY_WINDOW_MS: u64 = 5 * 60 * 1000;
/// Default number of marks remembered at once ([`Server::replay_memory`]).
pub const DEFAULT_REPLAY_MEMORY: usize = 1 << 20;
/// Default bound on open connections ([`Server::max_connections`]).
pub const DEFAULT_MAX_CONNECTIONS: usize = 256;
/// Default wait for the next request on an idle connection ([`Server::idle_timeout`]).
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(300);
/// Default time a frame's bytes may take to arrive once it began ([`Server::read_timeout`]).
pub const DEFAULT_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// Default largest frame before a connection's first request authenticates
/// ([`Server::max_unauthenticated_frame`]).
pub const DEFAULT_MAX_UNAUTHENTICATED_FRAME: usize = 64 << 10;

/// An RPC server: register functions, then serve them on a TCP address or a
/// Unix socket path.
///
/// What a peer without the key can do is bounded: at most
/// [`max_connections`](Self::max_connections) connections (more are refused
/// with a reply saying so), each closed after
/// [`idle_timeout`](Self::idle_timeout) without a request or when a frame
/// takes longer than [`read_timeout`](Self::read_timeout) to arrive, and each
/// holding at most [`max_unauthenticated_frame`](Self::max_unauthenticated_frame)
/// bytes until one of its requests authenticates. Replayed requests are
/// refused (see [`replay_memory`](Self::replay_memory)).
pub struct Server {
    functions: HashMap<String, Handler>,
    codec: Arc<dyn Codec>,
    limits: Limits,
}

#[derive(Debug, Clone, Copy)]
struct Limits {
    max_frame: usize,
    max_unauthenticated_frame: usize,
    max_connections: usize,
    idle_timeout: Duration,
    read_timeout: Duration,
    replay_memory: usize,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("functions", &self.functions.keys().collect::<Vec<_>>())
            .field("codec", &self.codec.name())
            .field("limits", &self.limits)
            .finish()
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Marks of requests whose time is still admissible, server-wide.
struct Replays {
    /// Marks of admitted requests whose time is still admissible.
    seen: HashSet<String>,
    /// The same marks by expiry, soonest first.
    expiry: BinaryHeap<Reverse<(u64, String)>>,
    capacity: usize,
}

impl Replays {
    fn new(capacity: usize) -> Replays {
        Replays {
            seen: HashSet::new(),
            expiry: BinaryHeap::new(),
            capacity,
        }
    }

    /// `Err` with the kind and reason if the request must be refused.
    fn admit(&mut self, mark: &str, time_ms: u64, now: u64) -> Result<(), (&'static str, String)> {
        // Forget only marks whose requests can no longer be admitted anyway.
        while let Some(Reverse((until, _))) = self.expiry.peek() {
            if *until >= now {
                break;
            }
            let Reverse((_, old)) = self.expiry.pop().expect("peeked");
            self.seen.remove(&old);
        }
        if time_ms.abs_diff(now) > REPLAY_WINDOW_MS {
            return Err((
                "stale",
                format!(
                    "request time {time_ms} is more than {REPLAY_WINDOW_MS} ms from the server's clock {now}"
                ),
            ));
        }
        if self.seen.contains(mark) {
            return Err((
                "replayed",
                format!("mark {mark} was already used: a replayed request"),
            ));
        }
        if self.seen.len() >= self.capacity {
            // Forgetting a live mark would let its request be replayed: refuse instead.
            return Err((
                "busy",
                format!(
                    "the server remembers {} request marks of the last {} s and can take no more; try again later",
                    self.capacity,
                    REPLAY_WINDOW_MS / 1000
                ),
            ));
        }
        self.seen.insert(mark.to_string());
        self.expiry
            .push(Reverse((time_ms + REPLAY_WINDOW_MS, mark.to_string())));
        Ok(())
    }
}

struct Shared {
    functions: HashMap<String, Handler>,
    codec: Arc<dyn Codec>,
    limits: Limits,
    /// Connections being served.
    open: AtomicUsize,
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
            limits: Limits {
                max_frame: DEFAULT_MAX_FRAME,
                max_unauthenticated_frame: DEFAULT_MAX_UNAUTHENTICATED_FRAME,
                max_connections: DEFAULT_MAX_CONNECTIONS,
                idle_timeout: DEFAULT_IDLE_TIMEOUT,
                read_timeout: DEFAULT_READ_TIMEOUT,
                replay_memory: DEFAULT_REPLAY_MEMORY,
            },
        }
    }

    /// Largest frame accepted or sent (default 64 MiB).
    #[must_use]
    pub fn max_frame(mut self, bytes: usize) -> Server {
        self.limits.max_frame = bytes;
        self
    }

    /// Largest frame read on a connection before one of its requests
    /// authenticated (default 64 KiB): a peer without the key can make the
    /// server hold at most this much per connection. Raise it if a first
    /// request is larger. (A codec without a key, such as
    /// [`XmeWire`](crate::XmeWire), authenticates any well-formed request.)
    #[must_use]
    pub fn max_unauthenticated_frame(mut self, bytes: usize) -> Server {
        self.limits.max_unauthenticated_frame = bytes;
        self
    }

    /// Connections served at once (default 256), one thread each. A
    /// connection past the bound gets a `refused` reply and is closed; its
    /// client's calls fail with [`MonitorError::ConnectionClosed`] saying so.
    #[must_use]
    pub fn max_connections(mut self, connections: usize) -> Server {
        self.limits.max_connections = connections.max(1);
        self
    }

    /// How long a connection may wait between requests before the server
    /// closes it (default 5 minutes).
    #[must_use]
    pub fn idle_timeout(mut self, idle: Duration) -> Server {
        self.limits.idle_timeout = idle.max(Duration::from_millis(1));
        self
    }

    /// How long the rest of a frame may take to arrive once its first byte
    /// did (default 30 s); a slower connection is closed.
    #[must_use]
    pub fn read_timeout(mut self, wait: Duration) -> Server {
        self.limits.read_timeout = wait.max(Duration::from_millis(1));
        self
    }

    /// Request marks remembered at once (default 2^20). A mark is kept while
    /// its request's time is within 5 minutes of the server's clock; when the
    /// memory is full, new requests are refused (`busy`) rather than a mark
    /// forgotten early.
    #[must_use]
    pub fn replay_memory(mut self, marks: usize) -> Server {
        self.limits.replay_memory = marks.max(1);
        self
    }

    /// Serves `f` as `name`: its argument and result cross as JSON. A
    /// panic in `f` becomes a `panicked` error reply; the server goes on.
    #[must_use]
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
            limits: self.limits,
            open: AtomicUsize::new(0),
            replays: Mutex::new(Replays::new(self.limits.replay_memory)),
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

    /// Serves on a Unix socket at `path` (removed again at shutdown). A
    /// socket left at `path` by a server that died is reclaimed; one a live
    /// server listens on is an error, and so is a path that is not a socket.
    pub fn serve_unix(self, path: impl AsRef<Path>) -> Result<ServerHandle, MonitorError> {
        let path = path.as_ref().to_path_buf();
        let listener = bind_unix(&path)?;
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

/// Binds `path`, reclaiming a socket file whose server is gone (nothing
/// accepts on it: connecting is refused).
fn bind_unix(path: &Path) -> Result<UnixListener, MonitorError> {
    use std::os::unix::fs::FileTypeExt;
    let err = |source| MonitorError::Io {
        doing: "binding the RPC server's Unix socket",
        source,
    };
    match UnixListener::bind(path) {
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
            let is_socket = std::fs::symlink_metadata(path)
                .map(|m| m.file_type().is_socket())
                .unwrap_or(false);
            if !is_socket {
                return Err(err(std::io::Error::new(
                    std::io::ErrorKind::AddrInUse,
                    format!(
                        "{} exists and is not a socket; remove it or choose another path",
                        path.display()
                    ),
                )));
            }
            match UnixStream::connect(path) {
                Ok(_) => Err(err(std::io::Error::new(
                    std::io::ErrorKind::AddrInUse,
                    format!("a server is listening on {} already", path.display()),
                ))),
                Err(c) if c.kind() == std::io::ErrorKind::ConnectionRefused => {
                    // Its server died without removing it: reclaim the name.
                    let _ = std::fs::remove_file(path);
                    UnixListener::bind(path).map_err(err)
                }
                Err(_) => Err(err(e)),
            }
        }
        other => other.map_err(err),
    }
}

/// Tells a connection past the bound why it is closed, then closes it.
fn refuse_connection(shared: &Shared, mut stream: Stream) {
    let why = format!(
        "the server serves at most {} connections at once; try again later",
        shared.limits.max_connections
    );
    log::warn!("xme rpc: refused a connection: {why}");
    if let Ok(reply) = encode_reply(&*shared.codec, "", Err(("refused", why))) {
        stream.set_write_timeout(Some(Duration::from_secs(1)));
        let _ = push_frame(&mut stream, &reply).and_then(|()| stream.flush());
    }
    stream.shutdown(Shutdown::Both);
}

/// Counts a connection as open until dropped.
struct OpenConnection<'a>(&'a AtomicUsize);

impl Drop for OpenConnection<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

fn start_connection(shared: &Arc<Shared>, stream: Stream) {
    if shared.open.fetch_add(1, Ordering::AcqRel) >= shared.limits.max_connections {
        shared.open.fetch_sub(1, Ordering::AcqRel);
        refuse_connection(shared, stream);
        return;
    }
    // Wakes a blocked read at least this often, so the idle clock is checked.
    let tick = shared.limits.read_timeout.min(shared.limits.idle_timeout);
    stream.set_read_timeout(Some(tick));
    let Ok(control) = stream.try_clone() else {
        shared.open.fetch_sub(1, Ordering::AcqRel);
        log::error!("xme rpc: could not clone a connection; closing it");
        return;
    };
    let s = shared.clone();
    match std::thread::Builder::new()
        .name("xme-rpc-conn".into())
        .spawn(move || {
            let _open = OpenConnection(&s.open);
            serve_connection(&s, stream)
        }) {
        Ok(handle) => {
            let mut conns = shared.connections.lock().unwrap_or_else(|e| e.into_inner());
            conns.retain(|(_, h)| !h.is_finished());
            conns.push((control, handle));
        }
        Err(e) => {
            shared.open.fetch_sub(1, Ordering::AcqRel);
            log::error!("xme rpc: could not start a connection thread: {e}");
        }
    }
}

/// Waits for the first byte of the next frame: `Ok(false)` at the end of
/// the stream, an error once the connection was idle too long.
fn wait_for_request(reader: &mut BufReader<Stream>, idle: Duration) -> Result<bool, MonitorError> {
    let start = Instant::now();
    loop {
        match reader.fill_buf() {
            Ok(b) => return Ok(!b.is_empty()),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                if start.elapsed() >= idle {
                    return Err(MonitorError::Io {
                        doing: "waiting for the next request",
                        source: std::io::Error::new(
                            std::io::ErrorKind::TimedOut,
                            format!("idle for {idle:?}"),
                        ),
                    });
                }
            }
            Err(source) => {
                return Err(MonitorError::Io {
                    doing: "waiting for the next request",
                    source,
                });
            }
        }
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
    // Until a request authenticates, frames are capped small: a peer
    // without the key cannot make the server hold much.
    let mut authenticated = false;
    loop {
        let max = if authenticated {
            s.limits.max_frame
        } else {
            s.limits.max_unauthenticated_frame.min(s.limits.max_frame)
        };
        let tick = s.limits.read_timeout.min(s.limits.idle_timeout);
        let body = match wait_for_request(&mut reader, s.limits.idle_timeout).and_then(|more| {
            if !more {
                return Ok(None);
            }
            // The frame's bytes get the read timeout, not the idle tick.
            if tick != s.limits.read_timeout {
                reader
                    .get_ref()
                    .set_read_timeout(Some(s.limits.read_timeout));
            }
            let frame = read_frame(&mut reader, max);
            if tick != s.limits.read_timeout {
                reader.get_ref().set_read_timeout(Some(tick));
            }
            frame
        }) {
            Ok(Some(body)) => body,
            Ok(None) => break,
            Err(e) => {
                log::warn!("xme rpc: closing a connection: {e}");
                break;
            }
        };
        let request = match decode_request(&*s.codec, &body) {
            Ok(r) => {
                authenticated = true;
                r
            }
            Err(e) => {
                // Unauthenticated or malformed: no reply, the connection ends.
                log::error!("xme rpc: closing a connection after a bad request: {e}");
                break;
            }
        };
        let admitted = s.replays.lock().unwrap_or_else(|e| e.into_inner()).admit(
            &request.mark,
            request.time_ms,
            now_ms(),
        );
        let result = match admitted {
            Err(refused) => Err(refused),
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
#[must_use = "dropping a ServerHandle shuts the server down"]
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

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: u64 = 60 * 1000;

    #[test]
    fn a_mark_is_remembered_while_its_time_is_admissible() {
        let mut r = Replays::new(100);
        let now = 1_000 * MIN;
        // A request stamped 4 minutes ahead of the server's clock.
        r.admit("ahead", now + 4 * MIN, now).unwrap();
        // 305 s later its time is still admissible: a replay is refused as one.
        let later = now + 5 * MIN + 5_000;
        assert_eq!(
            r.admit("ahead", now + 4 * MIN, later).unwrap_err().0,
            "replayed"
        );
        // Once its time is past the window, it is refused as stale.
        let much_later = now + 9 * MIN + 1;
        assert_eq!(
            r.admit("ahead", now + 4 * MIN, much_later).unwrap_err().0,
            "stale"
        );
        // ... and only then forgotten.
        assert!(!r.seen.contains("ahead"));
    }

    #[test]
    fn a_full_memory_refuses_new_requests_and_forgets_nothing_early() {
        let mut r = Replays::new(3);
        let now = 1_000 * MIN;
        for m in ["a", "b", "c"] {
            r.admit(m, now, now).unwrap();
        }
        let (kind, why) = r.admit("d", now, now + 1).unwrap_err();
        assert_eq!(kind, "busy", "{why}");
        for m in ["a", "b", "c"] {
            assert_eq!(r.admit(m, now, now + 2).unwrap_err().0, "replayed");
        }
        // When the old marks' times pass the window, room is made again.
        r.admit("d", now + 6 * MIN, now + 6 * MIN).unwrap();
    }
}
