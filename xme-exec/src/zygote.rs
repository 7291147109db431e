//! The pool's fork server (*zygote*) and its workers.
//!
//! The zygote is forked once, when the [`Pool`](crate::Pool) is made, and
//! then only reads requests on its control socket: it never starts a thread.
//! Workers are forked from it, so a worker never inherits the threads (nor the
//! locks those threads held) of a parent that started rayon, tokio or a logger
//! after making the pool. Every process of the family is a fork of the same
//! program, so a function's address means the same code in each.
//!
//! Control protocol (parent → zygote, one request at a time):
//! - `SPAWN` → `[pid i32]` and, as `SCM_RIGHTS`, the parent's end of a new
//!   socket pair whose other end the worker keeps.
//! - `FATE pid` → `[kind u8][value i32]`: the zygote reaps that worker
//!   (waiting for it to end) and says how it ended.
//!
//! Worker protocol (parent ↔ worker, frames `[len u32][bytes]`): a task is
//! `[trampoline u64][args]`; a reply is `[status u8][bytes]` (OK: the encoded
//! result; PANICKED: a postcard `PanicReport`; ENCODE: the error's text).

use std::collections::HashMap;
use std::io::{IoSlice, IoSliceMut, Read, Write};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use xme_core::CodecError;

use serde::Serialize;
use serde::de::DeserializeOwned;
use xme_core::{Fate, PanicReport, process};

const SPAWN: u8 = 1;
const FATE: u8 = 2;

pub(crate) const OK: u8 = 0;
pub(crate) const PANICKED: u8 = 1;
pub(crate) const ENCODE: u8 = 2;
pub(crate) const DECODE: u8 = 3;

/// Largest frame either side accepts (a corrupt length is not an allocation).
const MAX_FRAME: usize = 1 << 30;

/// What a worker runs: decodes the arguments, calls the task, encodes the
/// result. Monomorphised per task; its address crosses the socket.
pub(crate) type Trampoline = fn(&[u8]) -> (u8, Vec<u8>);

/// The trampoline of task type `F` (a zero-sized `fn` item or closure
/// without captures, checked at compile time by the caller).
pub(crate) fn trampoline<F, T, R>(args: &[u8]) -> (u8, Vec<u8>)
where
    F: Fn(T) -> R + Copy + 'static,
    T: DeserializeOwned,
    R: Serialize,
{
    const { assert!(std::mem::size_of::<F>() == 0) };
    // SAFETY: `F` is zero-sized (asserted above): reading one reads no
    // bytes, so a dangling, aligned pointer is valid for it. `F` is `Copy`:
    // making one is what copying the value the caller passed to `Pool::fun`
    // would do, and the caller had such a value, so the type is inhabited.
    let f: F = unsafe { std::ptr::NonNull::<F>::dangling().as_ptr().read() };
    let arg: T = match postcard::from_bytes(args) {
        Ok(arg) => arg,
        Err(e) => return (DECODE, CodecError::decoding(e).to_string().into_bytes()),
    };
    match process::catch_panic(|| f(arg)) {
        Ok(r) => match postcard::to_stdvec(&r) {
            Ok(bytes) => (OK, bytes),
            Err(e) => (ENCODE, CodecError::encoding(e, &r).to_string().into_bytes()),
        },
        Err(panic) => (
            PANICKED,
            postcard::to_stdvec(&panic).unwrap_or_else(|_| Vec::new()),
        ),
    }
}

pub(crate) fn write_frame(s: &mut UnixStream, parts: &[&[u8]]) -> std::io::Result<()> {
    let len: usize = parts.iter().map(|p| p.len()).sum();
    let len = u32::try_from(len).map_err(|_| std::io::Error::other("frame over 4 GiB"))?;
    let mut frame = Vec::with_capacity(4 + len as usize);
    frame.extend_from_slice(&len.to_le_bytes());
    for p in parts {
        frame.extend_from_slice(p);
    }
    s.write_all(&frame)
}

pub(crate) fn read_frame(s: &mut UnixStream) -> std::io::Result<Vec<u8>> {
    let mut len = [0u8; 4];
    s.read_exact(&mut len)?;
    let len = u32::from_le_bytes(len) as usize;
    if len > MAX_FRAME {
        return Err(std::io::Error::other(format!("frame of {len} bytes")));
    }
    let mut buf = vec![0u8; len];
    s.read_exact(&mut buf)?;
    Ok(buf)
}

/// The parent's link to its zygote.
#[derive(Debug)]
pub(crate) struct Zygote {
    control: UnixStream,
    child: process::Child,
}

impl Zygote {
    /// Forks the zygote.
    pub fn start() -> Result<Zygote, xme_core::Error> {
        let io = |doing| move |source| xme_core::Error::Io { doing, source };
        let (parent_end, zygote_end) =
            UnixStream::pair().map_err(io("making the zygote's control socket"))?;
        let parent_fd = parent_end.as_raw_fd();
        // The closure owns the zygote's end: closed here once forked.
        let child = process::fork_child(move || {
            // SAFETY: inherited by fork, used only by the parent; the value
            // owning it is never dropped in the zygote (it leaves with `_exit`).
            drop(unsafe { OwnedFd::from_raw_fd(parent_fd) });
            serve(zygote_end)
        })?;
        Ok(Zygote {
            control: parent_end,
            child,
        })
    }

    pub fn pid(&self) -> i32 {
        self.child.pid()
    }

    /// A new worker: its pid and the parent's end of its socket.
    pub fn spawn(&mut self) -> std::io::Result<(i32, UnixStream)> {
        self.control.write_all(&[SPAWN])?;
        let mut pid = [0u8; 4];
        let mut space = nix::cmsg_space!([std::os::fd::RawFd; 1]);
        let mut iov = [IoSliceMut::new(&mut pid)];
        let msg = nix::sys::socket::recvmsg::<()>(
            self.control.as_raw_fd(),
            &mut iov,
            Some(&mut space),
            nix::sys::socket::MsgFlags::MSG_CMSG_CLOEXEC,
        )
        .map_err(std::io::Error::from)?;
        let mut fd = None;
        for c in msg.cmsgs().map_err(std::io::Error::from)? {
            if let nix::sys::socket::ControlMessageOwned::ScmRights(fds) = c {
                // SAFETY: SCM_RIGHTS gave this process a new descriptor,
                // owned by nobody else here.
                fd = fds.first().map(|&f| unsafe { OwnedFd::from_raw_fd(f) });
            }
        }
        let n = msg.bytes;
        let fd = fd.filter(|_| n == 4).ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "the zygote closed its control socket",
            )
        })?;
        Ok((i32::from_le_bytes(pid), UnixStream::from(fd)))
    }

    /// Reaps worker `pid` (which has ended, or was just killed) through the
    /// zygote, its parent.
    pub fn fate(&mut self, pid: i32) -> std::io::Result<Fate> {
        let mut req = [FATE, 0, 0, 0, 0];
        req[1..].copy_from_slice(&pid.to_le_bytes());
        self.control.write_all(&req)?;
        let mut reply = [0u8; 5];
        self.control.read_exact(&mut reply)?;
        let value = i32::from_le_bytes(reply[1..].try_into().expect("4 bytes"));
        Ok(match reply[0] {
            0 => Fate::Exited(value),
            _ => Fate::Signaled {
                signal: value,
                core_dumped: false,
            },
        })
    }

    /// Closes the control socket (the zygote then kills and reaps its
    /// workers and exits) and reaps the zygote, killing it after `grace`.
    pub fn finish(self, grace: std::time::Duration) {
        let Zygote { control, mut child } = self;
        drop(control);
        let until = std::time::Instant::now() + grace;
        while matches!(child.try_wait(), Ok(None)) && std::time::Instant::now() < until {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        drop(child); // kills and reaps it if it is still there
    }

    /// Whether the zygote still runs.
    pub fn is_alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

/// The zygote's loop: answers requests until the parent closes the socket
/// (then its workers are killed as their `Child` handles drop).
fn serve(mut control: UnixStream) -> i32 {
    let mut workers: HashMap<i32, process::Child> = HashMap::new();
    let mut op = [0u8; 1];
    while control.read_exact(&mut op).is_ok() {
        match op[0] {
            SPAWN => {
                let Ok((parent_end, worker_end)) = UnixStream::pair() else {
                    return 3;
                };
                let control_fd = control.as_raw_fd();
                let parent_fd = parent_end.as_raw_fd();
                // The closure owns the worker's end: dropped here once forked
                // (so the parent sees EOF when the worker ends), kept there.
                let child = process::fork_child(move || {
                    // SAFETY: both descriptors were inherited by fork and are
                    // not used in the worker (the zygote and the parent use
                    // them); the values owning them are never dropped here
                    // (the worker leaves with `_exit`).
                    unsafe {
                        drop(OwnedFd::from_raw_fd(parent_fd));
                        drop(OwnedFd::from_raw_fd(control_fd));
                    }
                    work(worker_end)
                });
                let Ok(child) = child else {
                    return 4;
                };
                let pid = child.pid();
                workers.insert(pid, child);
                let fds = [parent_end.as_fd().as_raw_fd()];
                let cmsg = [nix::sys::socket::ControlMessage::ScmRights(&fds)];
                let bytes = pid.to_le_bytes();
                let iov = [IoSlice::new(&bytes)];
                if nix::sys::socket::sendmsg::<()>(
                    control.as_raw_fd(),
                    &iov,
                    &cmsg,
                    nix::sys::socket::MsgFlags::empty(),
                    None,
                )
                .is_err()
                {
                    return 5;
                }
            }
            FATE => {
                let mut pid = [0u8; 4];
                if control.read_exact(&mut pid).is_err() {
                    return 6;
                }
                let pid = i32::from_le_bytes(pid);
                let (kind, value) = match workers.remove(&pid).map(process::Child::wait) {
                    Some(Ok(Fate::Exited(code))) => (0u8, code),
                    Some(Ok(Fate::Signaled { signal, .. })) => (1u8, signal),
                    // Not ours, or not reapable: say "killed by SIGKILL".
                    _ => (1u8, 9),
                };
                let mut reply = [kind, 0, 0, 0, 0];
                reply[1..].copy_from_slice(&value.to_le_bytes());
                if control.write_all(&reply).is_err() {
                    return 7;
                }
            }
            _ => return 8,
        }
    }
    0
}

/// A worker's loop: runs tasks until the parent closes the socket.
fn work(mut socket: UnixStream) -> i32 {
    while let Ok(task) = read_frame(&mut socket) {
        if task.len() < 8 {
            return 9;
        }
        let address = u64::from_le_bytes(task[..8].try_into().expect("8 bytes")) as usize;
        // SAFETY: only the parent writes this socket (a socket pair made by
        // the zygote, the parent's end passed to the parent alone), and it
        // writes the address of a `Trampoline` of this very program: the
        // worker is a fork of the zygote, itself a fork of the parent, so the
        // code is mapped at the same address.
        let run: Trampoline = unsafe { std::mem::transmute::<usize, Trampoline>(address) };
        let (status, bytes) = run(&task[8..]);
        if write_frame(&mut socket, &[&[status], &bytes]).is_err() {
            return 10;
        }
    }
    0
}

/// Decodes a PANICKED reply.
pub(crate) fn panic_report(bytes: &[u8]) -> PanicReport {
    postcard::from_bytes(bytes).unwrap_or_else(|_| PanicReport {
        message: "a panic whose report could not be read".into(),
        location: None,
    })
}
