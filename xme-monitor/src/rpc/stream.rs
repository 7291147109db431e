//! A connected socket: TCP or Unix.

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

pub(crate) enum Stream {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Stream {
    pub fn try_clone(&self) -> io::Result<Stream> {
        Ok(match self {
            Stream::Tcp(s) => Stream::Tcp(s.try_clone()?),
            Stream::Unix(s) => Stream::Unix(s.try_clone()?),
        })
    }

    /// Bounds each blocking read (a timed-out read fails with `WouldBlock`).
    pub fn set_read_timeout(&self, t: Option<Duration>) {
        let _ = match self {
            Stream::Tcp(s) => s.set_read_timeout(t),
            Stream::Unix(s) => s.set_read_timeout(t),
        };
    }

    /// Bounds each blocking write.
    pub fn set_write_timeout(&self, t: Option<Duration>) {
        let _ = match self {
            Stream::Tcp(s) => s.set_write_timeout(t),
            Stream::Unix(s) => s.set_write_timeout(t),
        };
    }

    /// Ends the connection now: a TCP socket is reset when closed (its
    /// unsent bytes dropped, so a peer that stopped reading does not keep it
    /// in the kernel), and both directions shut.
    pub fn abort(&self) {
        if let Stream::Tcp(s) = self {
            use std::os::fd::AsRawFd;
            let linger = libc::linger {
                l_onoff: 1,
                l_linger: 0,
            };
            // SAFETY: a valid socket descriptor (borrowed from `s`), and a
            // `linger` value whose size is passed with it.
            unsafe {
                libc::setsockopt(
                    s.as_raw_fd(),
                    libc::SOL_SOCKET,
                    libc::SO_LINGER,
                    std::ptr::from_ref(&linger).cast(),
                    std::mem::size_of::<libc::linger>() as libc::socklen_t,
                );
            }
        }
        self.shutdown(Shutdown::Both);
    }

    pub fn shutdown(&self, how: Shutdown) {
        let _ = match self {
            Stream::Tcp(s) => s.shutdown(how),
            Stream::Unix(s) => s.shutdown(how),
        };
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.read(buf),
            Stream::Unix(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.write(buf),
            Stream::Unix(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s.flush(),
            Stream::Unix(s) => s.flush(),
        }
    }
}

/// The most one `send` carries: one send of a large buffer goes on as long
/// as the peer frees some room within the send timeout, so a deadline is
/// checked between bounded pieces.
const WRITE_PIECE: usize = 64 * 1024;

/// A socket's write side whose writes end by a deadline when one is set
/// (`SO_SNDTIMEO` alone bounds each `send`: a peer reading a trickle could
/// hold a long frame for ever). Counts the bytes it wrote, so a caller can
/// tell a frame cut half-way from one never started.
pub(crate) struct DeadlineWriter {
    stream: Stream,
    /// When the writes in progress must be done, if ever.
    pub deadline: Option<Instant>,
    /// The send timeout set on the socket now (set again only when it must
    /// shrink or go: the common fast write costs no system call).
    applied: Option<Duration>,
    /// Bytes written so far.
    pub written: u64,
}

impl DeadlineWriter {
    /// `stream`'s writes, each bounded by `timeout` (`None`: unbounded).
    pub fn new(stream: Stream, timeout: Option<Duration>) -> DeadlineWriter {
        stream.set_write_timeout(timeout);
        DeadlineWriter {
            stream,
            deadline: None,
            applied: timeout,
            written: 0,
        }
    }

    /// The socket.
    pub fn stream(&self) -> &Stream {
        &self.stream
    }
}

impl Write for DeadlineWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        // Each send may wait for what is left of the deadline: shrink the
        // send timeout as the deadline nears, grow it back for a new one
        // (and drop it when there is none).
        let wanted = match self.deadline {
            Some(deadline) => {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "the write did not end by its deadline",
                    ));
                }
                let stale = self.applied.is_none_or(|a| left < a || a < left / 2);
                stale.then(|| Some(left.max(Duration::from_millis(1))))
            }
            None => self.applied.is_some().then_some(None),
        };
        if let Some(timeout) = wanted {
            self.applied = timeout;
            self.stream.set_write_timeout(timeout);
        }
        let n = self.stream.write(&buf[..buf.len().min(WRITE_PIECE)])?;
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.stream.flush()
    }
}
