//! The RPC server: typed functions by name, one thread per connection.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, BufWriter, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use super::frame::{HELLO, decode_request, encode_reply, push_frame, read_frame};
use super::replays::{MARK_BYTES, Replays};
use super::stream::{DeadlineWriter, Stream};
use crate::codec::DEFAULT_MAX_FRAME;
use crate::{Codec, MonitorError};

type Handler = Arc<dyn Fn(Value) -> Result<Value, (&'static str, String)> + Send + Sync>;

/// Default bytes of memory for request marks ([`Server::replay_memory_bytes`]):
/// about a million marks.
pub const DEFAULT_REPLAY_MEMORY_BYTES: usize = 128 << 20;
/// Default bound on open connections ([`Server::max_connections`]).
pub const DEFAULT_MAX_CONNECTIONS: usize = 256;
/// Default wait for the next request on an idle connection ([`Server::idle_timeout`]).
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(300);
/// Default time a whole frame may take to arrive from its first byte ([`Server::read_timeout`]).
pub const DEFAULT_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// Default time a reply may take to leave ([`Server::write_timeout`]).
pub const DEFAULT_WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// Default largest frame before a connection's first request authenticates
/// ([`Server::max_unauthenticated_frame`]).
pub const DEFAULT_MAX_UNAUTHENTICATED_FRAME: usize = 64 << 10;
/// How long a shutdown lets replies drain to their peers once every call in
/// flight has finished, before it cuts the connections.
const SHUTDOWN_GRACE: Duration = Duration::from_millis(500);

/// An RPC server: register functions, then serve them on a TCP address or a
/// Unix socket path.
///
/// What a peer without the key can do is bounded: it holds a connection
/// (one thread) for at most [`read_timeout`](Self::read_timeout) from its
/// connect unless its first request authenticates, and at most
/// [`max_unauthenticated_frame`](Self::max_unauthenticated_frame) bytes
/// meanwhile; when all [`max_connections`](Self::max_connections) are
/// taken, a new connection replaces the oldest one that has not
/// authenticated, so such peers never keep a client with the key out (only
/// connections that all authenticated make a new one refused, with a reply
/// saying so). Every frame must arrive whole within `read_timeout` of its
/// first byte, every reply leave within [`write_timeout`](Self::write_timeout),
/// and an authenticated connection is closed after
/// [`idle_timeout`](Self::idle_timeout) without a request. Replayed
/// requests are refused (see [`replay_memory_bytes`](Self::replay_memory_bytes)).
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
    write_timeout: Duration,
    replay_memory_bytes: usize,
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

/// What the server knows of one connection.
struct Connection {
    /// A clone of its socket, to shut it down from outside its thread.
    control: Stream,
    thread: JoinHandle<()>,
    state: Arc<ConnectionState>,
}

struct ConnectionState {
    accepted: Instant,
    /// Whether one of its requests authenticated.
    authenticated: AtomicBool,
    /// Whether a newer connection took its place.
    evicted: AtomicBool,
    /// Whether one of its calls is running (or its reply being made).
    in_call: AtomicBool,
}

struct Shared {
    functions: HashMap<String, Handler>,
    codec: Arc<dyn Codec>,
    limits: Limits,
    replays: Mutex<Replays>,
    stopping: AtomicBool,
    connections: Mutex<Vec<Connection>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
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
                write_timeout: DEFAULT_WRITE_TIMEOUT,
                replay_memory_bytes: DEFAULT_REPLAY_MEMORY_BYTES,
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

    /// Connections served at once (default 256), one thread each. Past the
    /// bound, a new connection takes the place of the oldest one whose
    /// first request has not authenticated (which gets an `evicted` reply
    /// and is closed); if all authenticated, the new one gets a `refused`
    /// reply and is closed. Either client's calls fail with
    /// [`MonitorError::ConnectionClosed`] saying so.
    #[must_use]
    pub fn max_connections(mut self, connections: usize) -> Server {
        self.limits.max_connections = connections.max(1);
        self
    }

    /// How long an authenticated connection may wait between requests
    /// before the server closes it (default 5 minutes).
    #[must_use]
    pub fn idle_timeout(mut self, idle: Duration) -> Server {
        self.limits.idle_timeout = idle.max(Duration::from_millis(1));
        self
    }

    /// How long a whole frame may take to arrive, from its first byte
    /// (default 30 s), and a connection's first frame from its connect: a
    /// slower connection is closed, however its bytes trickle in.
    #[must_use]
    pub fn read_timeout(mut self, wait: Duration) -> Server {
        self.limits.read_timeout = wait.max(Duration::from_millis(1));
        self
    }

    /// How long a reply may take to leave (default 30 s): a peer that stops
    /// reading has its connection closed then, and never holds a thread
    /// (or a shutdown) longer.
    #[must_use]
    pub fn write_timeout(mut self, wait: Duration) -> Server {
        self.limits.write_timeout = wait.max(Duration::from_millis(1));
        self
    }

    /// Bytes of memory for the marks of requests already served (default
    /// 128 MiB, about a million marks; each costs at most 128 bytes,
    /// whatever its length). A mark is kept while its request's time is
    /// within 5 minutes of the server's clock; when the memory is full, new
    /// requests are refused (`busy`) rather than a mark forgotten early.
    #[must_use]
    pub fn replay_memory_bytes(mut self, bytes: usize) -> Server {
        self.limits.replay_memory_bytes = bytes.max(MARK_BYTES);
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
            replays: Mutex::new(Replays::new(self.limits.replay_memory_bytes)),
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
        let wake = listener.try_clone().ok().map(OwnedFd::from);
        let incoming = std::iter::from_fn(move || {
            Some(listener.accept().map(|(c, _)| {
                let _ = c.set_nodelay(true);
                Stream::Tcp(c)
            }))
        });
        self.serve(incoming, local, None, wake)
    }

    /// Serves on a Unix socket at `path` (removed again at shutdown). A
    /// socket left at `path` by a server that died is reclaimed; one a live
    /// server listens on is an error, and so is a path that is not a socket.
    pub fn serve_unix(self, path: impl AsRef<Path>) -> Result<ServerHandle, MonitorError> {
        let path = path.as_ref().to_path_buf();
        let listener = bind_unix(&path)?;
        let wake = listener.try_clone().ok().map(OwnedFd::from);
        let incoming =
            std::iter::from_fn(move || Some(listener.accept().map(|(c, _)| Stream::Unix(c))));
        self.serve(incoming, None, Some(path), wake)
    }

    fn serve(
        self,
        incoming: impl Iterator<Item = std::io::Result<Stream>> + Send + 'static,
        local: Option<SocketAddr>,
        path: Option<PathBuf>,
        wake: Option<OwnedFd>,
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
            wake,
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

/// Tells a connection why it is closed (`kind`: refused, evicted), then
/// closes it. Sent only on a connection that has had no reply.
fn refuse_connection(shared: &Shared, stream: &mut Stream, kind: &'static str, why: String) {
    log::warn!("xme rpc: {kind} a connection: {why}");
    if let Ok(reply) = encode_reply(&*shared.codec, "", Err((kind, why))) {
        stream.set_write_timeout(Some(Duration::from_millis(100)));
        let _ = push_frame(stream, &reply).and_then(|()| stream.flush());
    }
    stream.shutdown(Shutdown::Both);
}

fn start_connection(shared: &Arc<Shared>, mut stream: Stream) {
    let mut conns = lock(&shared.connections);
    conns.retain(|c| !c.thread.is_finished());
    let open = conns
        .iter()
        .filter(|c| !c.state.evicted.load(Ordering::Acquire))
        .count();
    if open >= shared.limits.max_connections {
        // A connection that has not authenticated gives its place: peers
        // without the key never keep one with it out.
        let oldest = conns
            .iter()
            .filter(|c| {
                !c.state.authenticated.load(Ordering::Acquire)
                    && !c.state.evicted.load(Ordering::Acquire)
            })
            .min_by_key(|c| c.state.accepted);
        match oldest.and_then(|c| Some((c.control.try_clone().ok()?, c))) {
            Some((mut victim, c)) => {
                c.state.evicted.store(true, Ordering::Release);
                let why = format!(
                    "the server serves at most {} connections at once, and a newer one took this one's place before its first request authenticated",
                    shared.limits.max_connections
                );
                refuse_connection(shared, &mut victim, "evicted", why);
            }
            None => {
                drop(conns);
                let why = format!(
                    "the server serves at most {} connections at once; try again later",
                    shared.limits.max_connections
                );
                refuse_connection(shared, &mut stream, "refused", why);
                return;
            }
        }
    }
    let Ok(control) = stream.try_clone() else {
        log::error!("xme rpc: could not clone a connection; closing it");
        return;
    };
    let state = Arc::new(ConnectionState {
        accepted: Instant::now(),
        authenticated: AtomicBool::new(false),
        evicted: AtomicBool::new(false),
        in_call: AtomicBool::new(false),
    });
    let (s, st) = (shared.clone(), state.clone());
    match std::thread::Builder::new()
        .name("xme-rpc-conn".into())
        .spawn(move || {
            serve_connection(&s, &st, stream);
            // Close the last descriptor (the control copy) now, not at the
            // next accept: a peer still sending then gets a reset instead
            // of a socket that nobody reads.
            lock(&s.connections).retain(|c| !Arc::ptr_eq(&c.state, &st));
        }) {
        Ok(thread) => conns.push(Connection {
            control,
            thread,
            state,
        }),
        Err(e) => log::error!("xme rpc: could not start a connection thread: {e}"),
    }
}

/// A socket whose reads end at a deadline: each read waits at most for
/// what is left, so a frame's bytes trickling in cannot stretch it.
struct Timed {
    stream: Stream,
    deadline: Option<Instant>,
    /// What the deadline applies to, for the error.
    what: &'static str,
}

impl Read for Timed {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        loop {
            if let Some(deadline) = self.deadline {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        format!("{} did not arrive in time", self.what),
                    ));
                }
                self.stream
                    .set_read_timeout(Some(left.max(Duration::from_millis(1))));
            }
            match self.stream.read(buf) {
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock
                            | std::io::ErrorKind::TimedOut
                            | std::io::ErrorKind::Interrupted
                    ) => {} // the deadline decides
                other => return other,
            }
        }
    }
}

/// Reads requests and answers them in order until the client closes, a
/// frame is bad or late, a reply cannot leave, or the server shuts down
/// (after the request in hand).
fn serve_connection(s: &Shared, state: &ConnectionState, stream: Stream) {
    let Ok(write_half) = stream.try_clone() else {
        return;
    };
    // Each reply leaves by its own deadline (set before it is written).
    let write_half = DeadlineWriter::new(write_half, Some(s.limits.write_timeout));
    let timed = Timed {
        stream,
        deadline: None,
        what: "the first request",
    };
    let mut reader = BufReader::with_capacity(64 * 1024, timed);
    let mut writer = BufWriter::with_capacity(64 * 1024, write_half);
    // Until a request authenticates, frames are capped small and the first
    // one must arrive within the read timeout of the connect: a peer
    // without the key cannot make the server hold much, or for long.
    let first_frame_by = state.accepted + s.limits.read_timeout;
    loop {
        let authenticated = state.authenticated.load(Ordering::Relaxed);
        let max = if authenticated {
            s.limits.max_frame
        } else {
            s.limits.max_unauthenticated_frame.min(s.limits.max_frame)
        };
        // What the next reads must get by when.
        let deadline = |after: Duration, what| {
            let t = if authenticated {
                (Instant::now() + after, what)
            } else {
                (first_frame_by, "the first request")
            };
            (Some(t.0), t.1)
        };
        let t = reader.get_mut();
        (t.deadline, t.what) = deadline(s.limits.idle_timeout, "the next request");
        match reader.fill_buf() {
            Ok([]) => break,
            Ok(_) => {}
            Err(e) => {
                log::warn!("xme rpc: closing a connection: {e}");
                break;
            }
        }
        let t = reader.get_mut();
        (t.deadline, t.what) = deadline(s.limits.read_timeout, "a whole frame");
        let body = match read_frame(&mut reader, max) {
            Ok(Some(body)) => body,
            Ok(None) => break,
            Err(e) => {
                log::warn!("xme rpc: closing a connection: {e}");
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
        if s.stopping.load(Ordering::Acquire) {
            break; // shutting down: no new call starts
        }
        let admitted = lock(&s.replays).admit(&request.mark, request.time_ms, now_ms());
        // Only a fresh request proves the key: a captured frame replayed (or
        // an old one) decodes too, and must not lift the connection out of
        // eviction and the unauthenticated frame cap.
        if admitted.is_ok() {
            state.authenticated.store(true, Ordering::Release);
            if state.evicted.load(Ordering::Acquire) {
                break; // replaced just before its request authenticated
            }
        }
        state.in_call.store(true, Ordering::Release);
        let result = match admitted {
            Err(refused) => Err(refused),
            Ok(()) if request.fun == HELLO => Ok(Value::Null),
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
        state.in_call.store(false, Ordering::Release);
        // A reply that does not leave within the write timeout fails: the
        // peer stopped reading (or reads a trickle). Flush once the requests
        // already received are answered: pipelined calls share one write.
        writer.get_mut().deadline = Some(Instant::now() + s.limits.write_timeout);
        let sent = push_frame(&mut writer, &reply).and_then(|()| {
            if reader.buffer().is_empty() {
                writer.flush()
            } else {
                Ok(())
            }
        });
        if let Err(e) = sent {
            log::warn!("xme rpc: closing a connection: a reply could not be sent: {e}");
            writer.get_ref().stream().abort();
            return;
        }
    }
    writer.get_mut().deadline = Some(Instant::now() + s.limits.write_timeout);
    let _ = writer.flush();
    writer.get_ref().stream().shutdown(Shutdown::Both);
}

/// A running server. [`shutdown`](Self::shutdown) (or dropping it) stops
/// accepting and starts no new call, lets every call in flight finish, gives
/// the replies half a second to leave, then closes every connection (a peer
/// that does not read holds it no longer: it returns within about half a
/// second of the last running call, whatever the peers do).
#[must_use = "dropping a ServerHandle shuts the server down"]
pub struct ServerHandle {
    shared: Arc<Shared>,
    accept: Option<JoinHandle<()>>,
    local: Option<SocketAddr>,
    path: Option<PathBuf>,
    /// The listening socket (a duplicate): shut down to wake the accept
    /// loop whatever happened to its address (a removed socket file).
    wake: Option<OwnedFd>,
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
        // Wake the accept loop: shutdown(2) on a listening socket makes a
        // blocked accept fail at once (Linux), even when no connection
        // could reach it (its socket file was removed). Failing that, with
        // a connection of our own.
        let woken = self.wake.as_ref().is_some_and(|fd| {
            // SAFETY: `fd` is an open socket this handle owns; shutdown
            // changes no memory.
            unsafe { libc::shutdown(fd.as_raw_fd(), libc::SHUT_RDWR) == 0 }
        });
        if !woken {
            if let Some(addr) = self.local {
                let _ = TcpStream::connect_timeout(&addr, Duration::from_secs(1));
            }
            if let Some(path) = &self.path {
                let _ = UnixStream::connect(path);
            }
        }
        let _ = accept.join();
        let conns = std::mem::take(&mut *lock(&self.shared.connections));
        // No more requests; the ones being served still get their replies,
        // for as long as their calls run and a grace period after, then the
        // connections are cut (a peer that does not read cannot hold a
        // writing thread, so the shutdown returns whatever the peers do).
        for c in &conns {
            c.control.shutdown(Shutdown::Read);
        }
        let mut calls_done = Instant::now();
        while conns.iter().any(|c| !c.thread.is_finished()) {
            if conns
                .iter()
                .any(|c| !c.thread.is_finished() && c.state.in_call.load(Ordering::Acquire))
            {
                calls_done = Instant::now();
            } else if calls_done.elapsed() >= SHUTDOWN_GRACE {
                for c in &conns {
                    c.control.abort();
                }
                break;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        for c in conns {
            let _ = c.thread.join();
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
