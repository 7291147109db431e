//! The RPC client: one connection, many calls in flight, from many threads.

use std::collections::HashMap;
use std::io::{BufReader, BufWriter, Write};
use std::marker::PhantomData;
use std::net::{Shutdown, TcpStream, ToSocketAddrs};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use super::frame::{HELLO, decode_reply, encode_request, push_frame, read_frame};
use super::stream::{DeadlineWriter, Stream};
use crate::codec::DEFAULT_MAX_FRAME;
use crate::{Codec, MonitorError};

type Outcome = Result<Value, MonitorError>;

struct Inner {
    codec: Arc<dyn Codec>,
    writer: Mutex<BufWriter<DeadlineWriter>>,
    pending: Mutex<HashMap<String, SyncSender<Outcome>>>,
    /// Why the connection closed, once it has.
    closed: Mutex<Option<String>>,
}

/// An RPC client on one connection. Calls may come from several threads at
/// once; replies are matched to calls by their marks. A dead server gives
/// [`MonitorError::ConnectionClosed`] to every waiting call, never a hang.
#[must_use = "dropping a Client closes its connection"]
pub struct Client {
    inner: Arc<Inner>,
    control: Stream,
    reader: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("codec", &self.inner.codec.name())
            .finish_non_exhaustive()
    }
}

/// A call sent and not yet answered ([`Client::start`]).
#[derive(Debug)]
pub struct PendingReply<R> {
    function: String,
    mark: String,
    rx: Receiver<Outcome>,
    inner: Arc<Inner>,
    _result: PhantomData<fn() -> R>,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClientConnection")
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl<R: DeserializeOwned> PendingReply<R> {
    /// Waits up to `timeout` for the reply.
    pub fn wait(self, timeout: Duration) -> Result<R, MonitorError> {
        let started = Instant::now();
        let outcome = match self.rx.recv_timeout(timeout) {
            Ok(outcome) => outcome,
            Err(RecvTimeoutError::Timeout) => {
                lock(&self.inner.pending).remove(&self.mark);
                return Err(MonitorError::Timeout {
                    function: self.function,
                    waited: started.elapsed(),
                });
            }
            Err(RecvTimeoutError::Disconnected) => {
                let why = lock(&self.inner.closed)
                    .clone()
                    .unwrap_or_else(|| "closed".into());
                return Err(MonitorError::ConnectionClosed(why));
            }
        };
        let value = outcome.map_err(|e| match e {
            MonitorError::Remote { kind, message, .. } => MonitorError::Remote {
                function: self.function.clone(),
                kind,
                message,
            },
            other => other,
        })?;
        serde_json::from_value(value).map_err(|source| MonitorError::Convert {
            what: "the result",
            source,
        })
    }
}

fn new_mark() -> Result<String, MonitorError> {
    let mut b = [0u8; 16];
    getrandom::fill(&mut b).map_err(|e| MonitorError::Random(e.to_string()))?;
    Ok(b.iter().map(|x| format!("{x:02x}")).collect())
}

impl Client {
    /// Connects to a server on TCP.
    pub fn connect_tcp(
        addr: impl ToSocketAddrs,
        codec: impl Codec + 'static,
    ) -> Result<Client, MonitorError> {
        let s = TcpStream::connect(addr).map_err(|source| MonitorError::Io {
            doing: "connecting to the RPC server",
            source,
        })?;
        let _ = s.set_nodelay(true);
        Client::start_on(Stream::Tcp(s), Arc::new(codec))
    }

    /// Connects to a server on a Unix socket.
    pub fn connect_unix(
        path: impl AsRef<Path>,
        codec: impl Codec + 'static,
    ) -> Result<Client, MonitorError> {
        let s = UnixStream::connect(path).map_err(|source| MonitorError::Io {
            doing: "connecting to the RPC server's Unix socket",
            source,
        })?;
        Client::start_on(Stream::Unix(s), Arc::new(codec))
    }

    fn start_on(stream: Stream, codec: Arc<dyn Codec>) -> Result<Client, MonitorError> {
        let io = |source| MonitorError::Io {
            doing: "cloning the RPC connection",
            source,
        };
        let read_half = stream.try_clone().map_err(io)?;
        let control = stream.try_clone().map_err(io)?;
        let inner = Arc::new(Inner {
            codec,
            writer: Mutex::new(BufWriter::with_capacity(
                64 * 1024,
                DeadlineWriter::new(stream, None),
            )),
            pending: Mutex::default(),
            closed: Mutex::default(),
        });
        let i = inner.clone();
        let reader = std::thread::Builder::new()
            .name("xme-rpc-client".into())
            .spawn(move || read_replies(&i, read_half))
            .map_err(|source| MonitorError::Io {
                doing: "starting the RPC client thread",
                source,
            })?;
        let client = Client {
            inner,
            control,
            reader: Some(reader),
        };
        // Authenticate the connection at once: a server closes one whose
        // first request does not come within its read timeout (and gives
        // its place to a newer one when full). The reply has no caller.
        client.send(&new_mark()?, HELLO, Value::Null, None)?;
        Ok(client)
    }

    /// Sends one request under `mark`, by `deadline` if one is given: the
    /// wait for the connection's writer and the send itself both end then
    /// (a frame cut half-way breaks the connection, which is then closed).
    fn send(
        &self,
        mark: &str,
        function: &str,
        args: Value,
        deadline: Option<Instant>,
    ) -> Result<(), MonitorError> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let frame = encode_request(&*self.inner.codec, mark, now, function, args)?;
        let started = Instant::now();
        let late = || MonitorError::Timeout {
            function: function.to_string(),
            waited: started.elapsed(),
        };
        let mut w = match deadline {
            None => lock(&self.inner.writer),
            // Another caller may be sending a long frame: wait for it only
            // so long.
            Some(deadline) => loop {
                match self.inner.writer.try_lock() {
                    Ok(w) => break w,
                    Err(std::sync::TryLockError::Poisoned(p)) => break p.into_inner(),
                    Err(std::sync::TryLockError::WouldBlock) if Instant::now() < deadline => {
                        std::thread::sleep(Duration::from_micros(200));
                    }
                    Err(std::sync::TryLockError::WouldBlock) => return Err(late()),
                }
            },
        };
        // Every byte of the frame leaves by the deadline, or the connection
        // is given up.
        w.get_mut().deadline = deadline;
        let before = w.get_ref().written;
        let result = push_frame(&mut *w, &frame).and_then(|()| w.flush());
        w.get_mut().deadline = None;
        match result {
            Ok(()) => Ok(()),
            Err(e) => {
                if w.get_ref().written != before || !w.buffer().is_empty() {
                    // Part of a frame went out (or waits in the buffer): the
                    // connection cannot carry another. The reader thread
                    // fails the calls in flight.
                    self.control.shutdown(std::net::Shutdown::Both);
                }
                match e.kind() {
                    std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock => Err(late()),
                    _ => Err(MonitorError::Io {
                        doing: "sending an RPC request",
                        source: e,
                    }),
                }
            }
        }
    }

    /// Sends a call of `function` with `args` and returns at once; take the
    /// reply with [`PendingReply::wait`]. Many calls may be in flight.
    pub fn start<A: Serialize, R: DeserializeOwned>(
        &self,
        function: &str,
        args: &A,
    ) -> Result<PendingReply<R>, MonitorError> {
        self.start_by(function, args, None)
    }

    /// [`start`](Self::start), with the request sent by `deadline`.
    fn start_by<A: Serialize, R: DeserializeOwned>(
        &self,
        function: &str,
        args: &A,
        deadline: Option<Instant>,
    ) -> Result<PendingReply<R>, MonitorError> {
        if let Some(why) = lock(&self.inner.closed).clone() {
            return Err(MonitorError::ConnectionClosed(why));
        }
        let args = serde_json::to_value(args).map_err(|source| MonitorError::Convert {
            what: "the arguments",
            source,
        })?;
        let mark = new_mark()?;
        let (tx, rx) = mpsc::sync_channel(1);
        lock(&self.inner.pending).insert(mark.clone(), tx);
        // The reader may have ended between the check above and the insert:
        // then nobody would ever answer this call.
        if let Some(why) = lock(&self.inner.closed).clone() {
            lock(&self.inner.pending).remove(&mark);
            return Err(MonitorError::ConnectionClosed(why));
        }
        if let Err(e) = self.send(&mark, function, args, deadline) {
            lock(&self.inner.pending).remove(&mark);
            if matches!(e, MonitorError::Timeout { .. }) {
                return Err(e); // the caller's time is up: no wait for a reason
            }
            // A server that refused the connection said why before closing
            // it: the reader thread is about to record it.
            let t = Instant::now();
            while t.elapsed() < Duration::from_secs(1) {
                if let Some(why) = lock(&self.inner.closed).clone() {
                    return Err(MonitorError::ConnectionClosed(why));
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            return Err(e);
        }
        Ok(PendingReply {
            function: function.to_string(),
            mark,
            rx,
            inner: self.inner.clone(),
            _result: PhantomData,
        })
    }

    /// Calls `function` with `args` and waits up to `timeout` for the result:
    /// sending the request counts (a server that stops reading cannot hold
    /// the caller past it). A request cut half-way by the timeout leaves the
    /// connection unusable: it is closed, and the calls in flight on it fail
    /// with [`MonitorError::ConnectionClosed`].
    pub fn call<A: Serialize, R: DeserializeOwned>(
        &self,
        function: &str,
        args: &A,
        timeout: Duration,
    ) -> Result<R, MonitorError> {
        let started = Instant::now();
        let deadline = started.checked_add(timeout);
        let pending = self.start_by(function, args, deadline)?;
        match pending.wait(timeout.saturating_sub(started.elapsed())) {
            Err(MonitorError::Timeout { function, .. }) => Err(MonitorError::Timeout {
                function,
                waited: started.elapsed(),
            }),
            other => other,
        }
    }
}

/// The client's reader thread: hands each reply to its caller; at the end of
/// the connection, fails every call still waiting.
fn read_replies(inner: &Inner, stream: Stream) {
    let mut reader = BufReader::with_capacity(64 * 1024, stream);
    let why = loop {
        let body = match read_frame(&mut reader, DEFAULT_MAX_FRAME) {
            Ok(Some(b)) => b,
            Ok(None) => break "the server closed the connection".to_string(),
            Err(e) => break e.to_string(),
        };
        let reply = match decode_reply(&*inner.codec, &body) {
            Ok(r) => r,
            Err(e) => break format!("bad reply from the server: {e}"),
        };
        if reply.mark.is_empty()
            && let Err((kind, message)) = &reply.result
        {
            // Not an answer to a call: the server refuses the connection.
            break format!("the server refused the connection ({kind}): {message}");
        }
        let waiter = lock(&inner.pending).remove(&reply.mark);
        if let Some(tx) = waiter {
            let outcome = reply
                .result
                .map_err(|(kind, message)| MonitorError::Remote {
                    function: String::new(),
                    kind,
                    message,
                });
            let _ = tx.send(outcome);
        }
    };
    *lock(&inner.closed) = Some(why);
    // Dropping the senders wakes every waiter with "disconnected".
    lock(&inner.pending).clear();
}

impl Drop for Client {
    fn drop(&mut self) {
        self.control.shutdown(Shutdown::Both);
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
    }
}
