//! The pool's fork server (*zygote*): how it starts, its loop, and the
//! driver's side of its control socket.
//!
//! **Started by `exec`** (the default): the driver thread runs the program
//! again (`/proc/self/exe`) with `XME_POOL_ZYGOTE` in its environment. A
//! constructor of this crate ([`entry_point`], run by the loader before
//! `main`) sees the variable, removes it and becomes the zygote: it never
//! returns, so the program's `main` never runs there, and nothing the parent
//! did at run time (threads started, locks held, globals set) exists in it.
//! **Started by `fork`** (`PoolStart::Fork`, for hosts whose executable is
//! not the program, such as a Python extension): a fork of the driver
//! thread, with the usual fork-with-threads hazards.
//!
//! Either way the zygote is a child of the driver thread, which lives as long
//! as the pool, with `PR_SET_PDEATHSIG = SIGKILL`; it sits in its own process
//! group (a terminal's Ctrl-C goes to the program, which then ends the pool)
//! and ignores `SIGPIPE`. Workers are forked from it with the same death
//! signal, so the whole family ends with the pool.

use std::collections::HashMap;
use std::io::{IoSlice, IoSliceMut, Read, Write};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use xme_core::{Fate, SharedRegion, process};

use super::layout::{self, PoolRegion};
use super::wire;

/// The variable that turns a run of the program into a zygote.
const ZYGOTE_ENV: &str = "XME_POOL_ZYGOTE";

/// Set by [`entry_point`] in every process of a program that links it: if it
/// is not set, the constructor is not in the executable, and an `exec`ed copy
/// would run `main` again.
static ENTRY_LINKED: AtomicBool = AtomicBool::new(false);

/// Exit status of a zygote that could not adopt what its parent passed.
const EXIT_BAD_START: i32 = 93;

#[ctor::ctor(unsafe)]
fn entry_point() {
    ENTRY_LINKED.store(true, Ordering::Relaxed);
    let Some(value) = std::env::var_os(ZYGOTE_ENV) else {
        return;
    };
    // SAFETY: constructors run before `main`, on the only thread there is,
    // so nothing reads the environment while it changes.
    unsafe { std::env::remove_var(ZYGOTE_ENV) };
    let code = match parse_env(&value.to_string_lossy()) {
        Some((control, region)) => {
            // SAFETY: the parent cleared close-on-exec on these two
            // descriptors for this process alone and named them in the
            // variable; nothing else here owns them.
            let (control, region) = unsafe {
                (
                    UnixStream::from(OwnedFd::from_raw_fd(control)),
                    OwnedFd::from_raw_fd(region),
                )
            };
            match SharedRegion::from_memfd(region, layout::VERSION).and_then(PoolRegion::adopt) {
                Ok(region) => serve(control, &region),
                Err(_) => EXIT_BAD_START,
            }
        }
        None => EXIT_BAD_START,
    };
    process::exit_now(code)
}

fn parse_env(value: &str) -> Option<(RawFd, RawFd)> {
    let mut parts = value.split(':');
    (parts.next()? == "1").then_some(())?;
    let control = parts.next()?.parse().ok()?;
    let region = parts.next()?.parse().ok()?;
    Some((control, region))
}

/// How the zygote is started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum PoolStart {
    /// A fresh `exec` of the running program that becomes the zygote before
    /// `main` (the default): safe whatever threads the program runs.
    #[default]
    Exec,
    /// A fork of the pool's driver thread: for hosts whose executable is not
    /// the program that links xme (a Python extension, a plug-in). The
    /// parent's other threads are absent in the zygote, but a lock one of
    /// them held at that instant stays held there.
    Fork,
}

/// Why no worker came.
#[derive(Debug)]
pub(crate) enum SpawnError {
    /// The zygote could not fork (it goes on serving).
    Refused(std::io::Error),
    /// The control socket broke: the zygote is gone or stuck.
    Broken,
}

/// The driver's link to its zygote.
#[derive(Debug)]
pub(crate) struct Zygote {
    control: UnixStream,
    pid: i32,
    /// Readable once the zygote has ended.
    pidfd: Option<OwnedFd>,
    /// Reaped already.
    reaped: bool,
    /// The fork-mode handle (reaps on drop); `None` in exec mode.
    forked: Option<process::Child>,
}

fn io(doing: &'static str) -> impl Fn(std::io::Error) -> xme_core::Error {
    move |source| xme_core::Error::Io { doing, source }
}

impl Zygote {
    /// Starts the zygote (on the driver thread, which it dies with).
    pub fn start(how: PoolStart, region: &PoolRegion) -> Result<Zygote, xme_core::Error> {
        let (driver_end, zygote_end) =
            UnixStream::pair().map_err(io("making the zygote's control socket"))?;
        let mut zygote = match how {
            PoolStart::Exec => Self::exec(driver_end, zygote_end, region)?,
            PoolStart::Fork => Self::fork(driver_end, zygote_end, region)?,
        };
        // A zygote that cannot answer within this bound is stuck: say so
        // instead of blocking the driver for ever.
        zygote
            .control
            .set_read_timeout(Some(Duration::from_secs(10)))
            .map_err(io("setting the zygote socket's timeout"))?;
        let mut ready = [0u8; 1];
        let said = zygote.control.read_exact(&mut ready);
        if said.is_err() || ready[0] != wire::READY {
            let fate = zygote.reap_now();
            return Err(xme_core::Error::Io {
                doing: "starting the pool's zygote",
                source: std::io::Error::other(format!(
                    "it did not start serving (it ended: {fate:?})"
                )),
            });
        }
        Ok(zygote)
    }

    fn exec(
        driver_end: UnixStream,
        zygote_end: UnixStream,
        region: &PoolRegion,
    ) -> Result<Zygote, xme_core::Error> {
        let control_fd = zygote_end.as_raw_fd();
        let region_fd = region
            .shared()
            .memfd()
            .expect("the pool's region is anonymous")
            .as_raw_fd();
        let parent = std::process::id() as libc::pid_t;
        let mut cmd = std::process::Command::new("/proc/self/exe");
        if let Some(arg0) = std::env::args_os().next() {
            cmd.arg0(arg0);
        }
        cmd.env(ZYGOTE_ENV, format!("1:{control_fd}:{region_fd}"))
            .stdin(std::process::Stdio::null());
        // SAFETY: the closure runs in the forked child before `exec` and
        // calls only async-signal-safe functions (prctl, getppid, setpgid,
        // fcntl), allocating nothing and taking no lock.
        unsafe {
            cmd.pre_exec(move || {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0
                    || libc::getppid() != parent
                {
                    return Err(std::io::Error::from_raw_os_error(libc::ESRCH));
                }
                libc::setpgid(0, 0);
                for fd in [control_fd, region_fd] {
                    let flags = libc::fcntl(fd, libc::F_GETFD);
                    if flags < 0 || libc::fcntl(fd, libc::F_SETFD, flags & !libc::FD_CLOEXEC) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
        let child = cmd.spawn().map_err(io("starting the pool's zygote"))?;
        drop(zygote_end);
        let pid = child.id() as i32;
        // `std::process::Child` does not reap on drop; the pid is ours to
        // reap (below, through `process::reap`).
        drop(child);
        Ok(Zygote {
            control: driver_end,
            pid,
            pidfd: pidfd_open(pid),
            reaped: false,
            forked: None,
        })
    }

    fn fork(
        driver_end: UnixStream,
        zygote_end: UnixStream,
        region: &PoolRegion,
    ) -> Result<Zygote, xme_core::Error> {
        let driver_fd = driver_end.as_raw_fd();
        let region = region.clone();
        let child = process::fork_child(move || {
            // SAFETY: inherited by fork; only the parent uses it, and the
            // value owning it is never dropped here (the zygote leaves with
            // `_exit`).
            drop(unsafe { OwnedFd::from_raw_fd(driver_fd) });
            // SAFETY: as for the exec'd zygote; this is the fork's process
            // group, not the program's.
            unsafe { libc::setpgid(0, 0) };
            serve(zygote_end, &region)
        })?;
        Ok(Zygote {
            control: driver_end,
            pid: child.pid(),
            pidfd: child.pidfd().and_then(|fd| fd.try_clone_to_owned().ok()),
            reaped: false,
            forked: Some(child),
        })
    }

    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// Readable once the zygote has ended.
    pub fn pidfd(&self) -> Option<std::os::fd::BorrowedFd<'_>> {
        self.pidfd.as_ref().map(|fd| fd.as_fd())
    }

    /// A new worker using slot `slot`: its pid and the driver's end of its
    /// socket.
    pub fn spawn(&mut self, slot: usize) -> Result<(i32, UnixStream), SpawnError> {
        self.request_worker(slot).map_err(|_| SpawnError::Broken)?
    }

    fn request_worker(
        &mut self,
        slot: usize,
    ) -> std::io::Result<Result<(i32, UnixStream), SpawnError>> {
        let mut req = [wire::SPAWN, 0, 0, 0, 0];
        req[1..].copy_from_slice(&(slot as u32).to_le_bytes());
        self.control.write_all(&req)?;
        let mut pid = [0u8; 4];
        let mut space = nix::cmsg_space!([RawFd; 1]);
        let mut fd = None;
        let n = {
            let mut iov = [IoSliceMut::new(&mut pid)];
            let msg = loop {
                match nix::sys::socket::recvmsg::<()>(
                    self.control.as_raw_fd(),
                    &mut iov,
                    Some(&mut space),
                    nix::sys::socket::MsgFlags::MSG_CMSG_CLOEXEC,
                ) {
                    Err(nix::Error::EINTR) => continue,
                    other => break other.map_err(std::io::Error::from)?,
                }
            };
            for c in msg.cmsgs().map_err(std::io::Error::from)? {
                if let nix::sys::socket::ControlMessageOwned::ScmRights(fds) = c {
                    for &f in &fds {
                        // SAFETY: SCM_RIGHTS gave this process new
                        // descriptors, owned by nobody else here; extra ones
                        // are closed.
                        let owned = unsafe { OwnedFd::from_raw_fd(f) };
                        fd.get_or_insert(owned);
                    }
                }
            }
            msg.bytes
        };
        let pid = i32::from_le_bytes(pid);
        if n == 4 && pid < 0 {
            return Ok(Err(SpawnError::Refused(std::io::Error::from_raw_os_error(
                -pid,
            ))));
        }
        let fd = fd.filter(|_| n == 4).ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "the zygote closed its control socket",
            )
        })?;
        Ok(Ok((pid, UnixStream::from(fd))))
    }

    /// Reaps worker `pid`, which has ended (its pidfd said so), through the
    /// zygote, its parent: how it ended.
    pub fn fate(&mut self, pid: i32) -> std::io::Result<Fate> {
        let mut req = [wire::FATE, 0, 0, 0, 0];
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

    /// Whether the zygote has ended (reaping it if so).
    pub fn has_ended(&mut self) -> bool {
        if self.reaped {
            return true;
        }
        if let Some(child) = &mut self.forked {
            self.reaped = !matches!(child.try_wait(), Ok(None));
            return self.reaped;
        }
        self.reaped = !matches!(process::reap(self.pid, false), Ok(None));
        self.reaped
    }

    fn reap_now(&mut self) -> Option<Fate> {
        if let Some(child) = &mut self.forked {
            self.reaped = true;
            return child.kill_mut().ok();
        }
        if self.reaped {
            return None;
        }
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.pid),
            nix::sys::signal::Signal::SIGKILL,
        );
        self.reaped = true;
        process::reap(self.pid, true).ok().flatten()
    }

    /// Closes the control socket (the zygote then kills and reaps its
    /// workers and exits) and reaps the zygote, killing it after `grace`.
    pub fn finish(mut self, grace: Duration) {
        let _ = self.control.shutdown(std::net::Shutdown::Both);
        let until = std::time::Instant::now() + grace;
        while !self.has_ended() && std::time::Instant::now() < until {
            std::thread::sleep(Duration::from_millis(1));
        }
        self.reap_now();
    }
}

impl Drop for Zygote {
    fn drop(&mut self) {
        if !self.reaped {
            self.reap_now();
        }
    }
}

fn pidfd_open(pid: i32) -> Option<OwnedFd> {
    let pid = rustix::process::Pid::from_raw(pid)?;
    rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty()).ok()
}

/// Opens a pidfd for a worker (a child of the zygote, which reaps it only
/// when the driver asks, so the pid names the worker until then).
pub(crate) fn worker_pidfd(pid: i32) -> Option<OwnedFd> {
    pidfd_open(pid)
}

/// Whether the zygote entry point is in this executable, so that an `exec`
/// of it becomes a zygote (and never runs `main` again).
pub(crate) fn entry_linked() -> bool {
    ENTRY_LINKED.load(Ordering::Relaxed)
}

/// Forks a worker for `slot`: its handle and the driver's end of its
/// socket, or the errno that stopped it.
fn spawn_worker(
    control: &UnixStream,
    region: &PoolRegion,
    slot: usize,
) -> Result<(process::Child, UnixStream), i32> {
    let (driver_end, worker_end) =
        UnixStream::pair().map_err(|e| e.raw_os_error().unwrap_or(libc::EMFILE))?;
    let control_fd = control.as_raw_fd();
    let driver_fd = driver_end.as_raw_fd();
    // The closure owns the worker's end: dropped here once forked (so the
    // driver sees EOF when the worker ends).
    let child = process::fork_child(move || {
        // SAFETY: both descriptors were inherited by fork and are not used in
        // the worker (the zygote and the driver use them); the values owning
        // them are never dropped here (the worker leaves with `_exit`).
        unsafe {
            drop(OwnedFd::from_raw_fd(driver_fd));
            drop(OwnedFd::from_raw_fd(control_fd));
        }
        super::worker::work(worker_end, region.slot(slot), region.header())
    })
    .map_err(|_| libc::EAGAIN)?;
    Ok((child, driver_end))
}

/// The zygote's loop: answers requests until the driver closes the socket
/// (then its workers are killed as their `Child` handles drop).
fn serve(mut control: UnixStream, region: &PoolRegion) -> i32 {
    // SAFETY: setting a signal's disposition to "ignore" runs no handler
    // code; a worker writing to a closed socket then gets EPIPE, as in any
    // Rust program (whose runtime ignores SIGPIPE the same way).
    let _ = unsafe {
        nix::sys::signal::signal(
            nix::sys::signal::Signal::SIGPIPE,
            nix::sys::signal::SigHandler::SigIgn,
        )
    };
    if control.write_all(&[wire::READY]).is_err() {
        return 2;
    }
    let mut workers: HashMap<i32, process::Child> = HashMap::new();
    let mut op = [0u8; 1];
    while control.read_exact(&mut op).is_ok() {
        let mut arg = [0u8; 4];
        if control.read_exact(&mut arg).is_err() {
            return 3;
        }
        match op[0] {
            wire::SPAWN => {
                let slot = u32::from_le_bytes(arg) as usize;
                if slot >= region.slots() {
                    return 4;
                }
                let (pid, driver_end) = match spawn_worker(&control, region, slot) {
                    Ok((child, driver_end)) => {
                        let pid = child.pid();
                        workers.insert(pid, child);
                        (pid, Some(driver_end))
                    }
                    // Say why instead of ending: the driver decides.
                    Err(errno) => (-errno, None),
                };
                let fds: Vec<RawFd> = driver_end.iter().map(|s| s.as_raw_fd()).collect();
                let cmsg = [nix::sys::socket::ControlMessage::ScmRights(&fds)];
                let bytes = pid.to_le_bytes();
                let iov = [IoSlice::new(&bytes)];
                let cmsgs: &[_] = if fds.is_empty() { &[] } else { &cmsg };
                if nix::sys::socket::sendmsg::<()>(
                    control.as_raw_fd(),
                    &iov,
                    cmsgs,
                    nix::sys::socket::MsgFlags::empty(),
                    None,
                )
                .is_err()
                {
                    return 7;
                }
            }
            wire::FATE => {
                let pid = i32::from_le_bytes(arg);
                let (kind, value) = match workers.remove(&pid).map(process::Child::wait) {
                    Some(Ok(Fate::Exited(code))) => (0u8, code),
                    Some(Ok(Fate::Signaled { signal, .. })) => (1u8, signal),
                    // Not ours, or not reapable: say "killed by SIGKILL".
                    _ => (1u8, 9),
                };
                let mut reply = [kind, 0, 0, 0, 0];
                reply[1..].copy_from_slice(&value.to_le_bytes());
                if control.write_all(&reply).is_err() {
                    return 8;
                }
            }
            _ => return 9,
        }
    }
    0
}
