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

use std::io::IoSliceMut;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use nix::sys::socket::{
    AddressFamily, ControlMessageOwned, MsgFlags, SockFlag, SockType, recvmsg, socketpair,
};
use xme_core::{Fate, SharedRegion, process};

use super::fork_server::{self, send_packet};
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
    // SAFETY: constructors run before `main`, and this process was started by
    // the pool (the variable says so) from a program whose other
    // constructors start no thread before `main` (none of xme's do; a
    // program whose own constructors start threads would break this, as it
    // breaks any use of the environment before `main`): nothing reads the
    // environment while it changes.
    unsafe { std::env::remove_var(ZYGOTE_ENV) };
    fork_server::fill_standard_descriptors();
    let code = match parse_env(&value.to_string_lossy()) {
        Some((control, region)) => {
            // SAFETY: the parent cleared close-on-exec on these two
            // descriptors for this process alone and named them in the
            // variable; nothing else here owns them.
            let (control, region) =
                unsafe { (OwnedFd::from_raw_fd(control), OwnedFd::from_raw_fd(region)) };
            match SharedRegion::from_memfd(region, layout::VERSION).and_then(PoolRegion::adopt) {
                Ok(region) => fork_server::serve(control, &region),
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

/// What the zygote said.
#[derive(Debug)]
pub(crate) enum FromZygote {
    /// A worker for the requested slot: its pid, the driver's end of its
    /// socket and its pidfd (`None` when the descriptors did not fit: the
    /// driver's descriptor table is full; the worker then ends by itself).
    Spawned {
        pid: i32,
        socket: Option<UnixStream>,
        pidfd: Option<OwnedFd>,
    },
    /// It could not fork; it goes on serving.
    Refused(std::io::Error),
    /// A worker ended and was reaped.
    Died { pid: i32, fate: Fate },
}

/// The driver's link to its zygote.
#[derive(Debug)]
pub(crate) struct Zygote {
    control: OwnedFd,
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

/// A descriptor copy numbered 3 or above, close-on-exec: descriptors 0-2
/// may be closed in the program (a daemon's stdin), and `exec` would make
/// the copy there stdin, stdout or stderr.
fn above_standard(fd: BorrowedFd<'_>) -> Result<OwnedFd, xme_core::Error> {
    rustix::io::fcntl_dupfd_cloexec(fd, 3).map_err(|e| xme_core::Error::Io {
        doing: "copying a descriptor for the pool's zygote",
        source: e.into(),
    })
}

impl Zygote {
    /// Starts the zygote (on the driver thread, which it dies with).
    pub fn start(how: PoolStart, region: &PoolRegion) -> Result<Zygote, xme_core::Error> {
        let (driver_end, zygote_end) = socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC,
        )
        .map_err(|e| xme_core::Error::Io {
            doing: "making the zygote's control socket",
            source: e.into(),
        })?;
        let mut zygote = match how {
            PoolStart::Exec => Self::exec(driver_end, zygote_end, region)?,
            PoolStart::Fork => Self::fork(driver_end, zygote_end, region)?,
        };
        // Wait for READY: a zygote that cannot answer within this bound is
        // stuck; say so instead of blocking the driver for ever.
        let until = Instant::now() + Duration::from_secs(10);
        loop {
            match zygote.receive_raw() {
                Ok(Some((n, packet))) if n == 1 && packet[0] == wire::READY => break,
                Ok(None) if Instant::now() < until && !zygote.has_ended() => {
                    std::thread::sleep(Duration::from_millis(1));
                }
                other => {
                    let fate = zygote.reap_now();
                    return Err(xme_core::Error::Io {
                        doing: "starting the pool's zygote",
                        source: std::io::Error::other(format!(
                            "it did not start serving ({other:?}; it ended: {fate:?})"
                        )),
                    });
                }
            }
        }
        Ok(zygote)
    }

    fn exec(
        driver_end: OwnedFd,
        zygote_end: OwnedFd,
        region: &PoolRegion,
    ) -> Result<Zygote, xme_core::Error> {
        let memfd = region
            .shared()
            .memfd()
            .expect("the pool's region is anonymous");
        let control = above_standard(zygote_end.as_fd())?;
        let region_copy = above_standard(memfd)?;
        drop(zygote_end);
        let (control_fd, region_fd) = (control.as_raw_fd(), region_copy.as_raw_fd());
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
        drop((control, region_copy));
        let pid = child.id() as i32;
        // `std::process::Child` does not reap on drop; the pid is ours to
        // reap (below, through `process::reap`).
        drop(child);
        set_nonblocking(&driver_end)?;
        Ok(Zygote {
            control: driver_end,
            pid,
            pidfd: pidfd_open(pid),
            reaped: false,
            forked: None,
        })
    }

    fn fork(
        driver_end: OwnedFd,
        zygote_end: OwnedFd,
        region: &PoolRegion,
    ) -> Result<Zygote, xme_core::Error> {
        let driver_fd = driver_end.as_raw_fd();
        let region = region.clone();
        let child = process::fork_child(move || {
            // SAFETY: inherited by fork; only the parent uses it, and the
            // value owning it is never dropped in the zygote (it leaves with
            // `_exit`).
            drop(unsafe { OwnedFd::from_raw_fd(driver_fd) });
            // SAFETY: setpgid only changes this process's group (the fork's,
            // not the program's).
            unsafe { libc::setpgid(0, 0) };
            fork_server::serve(zygote_end, &region)
        })?;
        set_nonblocking(&driver_end)?;
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
    pub fn pidfd(&self) -> Option<BorrowedFd<'_>> {
        self.pidfd.as_ref().map(|fd| fd.as_fd())
    }

    /// Readable when the zygote has something to say.
    pub fn control(&self) -> BorrowedFd<'_> {
        self.control.as_fd()
    }

    /// Asks for a worker using slot `slot` (answered by `Spawned` or
    /// `Refused`).
    pub fn request_spawn(&mut self, slot: usize) -> std::io::Result<()> {
        let mut req = [wire::SPAWN, 0, 0, 0, 0];
        req[1..].copy_from_slice(&(slot as u32).to_le_bytes());
        send_packet(&self.control, &req, &[]).map_err(std::io::Error::from)
    }

    /// One packet, if one is there: its length and bytes, and any
    /// descriptors it carried (in `fds`).
    fn receive_packet(
        &mut self,
        fds: &mut Vec<OwnedFd>,
    ) -> std::io::Result<Option<(usize, [u8; 16])>> {
        let mut packet = [0u8; 16];
        let mut space = nix::cmsg_space!([RawFd; 2]);
        let (n, truncated) = {
            let mut iov = [IoSliceMut::new(&mut packet)];
            let msg = loop {
                match recvmsg::<()>(
                    self.control.as_raw_fd(),
                    &mut iov,
                    Some(&mut space),
                    MsgFlags::MSG_CMSG_CLOEXEC | MsgFlags::MSG_DONTWAIT,
                ) {
                    Err(nix::Error::EINTR) => continue,
                    Err(nix::Error::EAGAIN) => return Ok(None),
                    other => break other.map_err(std::io::Error::from)?,
                }
            };
            let truncated = msg.flags.contains(MsgFlags::MSG_CTRUNC);
            // Truncated: the descriptors did not fit this process's table
            // (nix then refuses to walk the control data; whatever was
            // installed is lost, at most the two descriptors of one worker).
            if !truncated {
                for c in msg.cmsgs().map_err(std::io::Error::from)? {
                    if let ControlMessageOwned::ScmRights(raw) = c {
                        for f in raw {
                            // SAFETY: SCM_RIGHTS gave this process new
                            // descriptors, owned by nobody else here.
                            fds.push(unsafe { OwnedFd::from_raw_fd(f) });
                        }
                    }
                }
            }
            (msg.bytes, truncated)
        };
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "the zygote closed its control socket",
            ));
        }
        if truncated {
            fds.clear();
        }
        Ok(Some((n, packet)))
    }

    fn receive_raw(&mut self) -> std::io::Result<Option<(usize, [u8; 16])>> {
        self.receive_packet(&mut Vec::new())
    }

    /// The next message, if one is there; an error when the control socket
    /// broke (the zygote is gone) or carried something else.
    pub fn receive(&mut self) -> std::io::Result<Option<FromZygote>> {
        let mut fds = Vec::new();
        let Some((n, p)) = self.receive_packet(&mut fds)? else {
            return Ok(None);
        };
        let i32_at = |at: usize| i32::from_le_bytes(p[at..at + 4].try_into().expect("4 bytes"));
        Ok(Some(match (p[0], n) {
            (wire::SPAWNED, 5) => {
                let mut fds = fds.into_iter();
                let (socket, pidfd) = match (fds.next(), fds.next()) {
                    (Some(s), p) => (Some(UnixStream::from(s)), p),
                    (None, _) => (None, None),
                };
                FromZygote::Spawned {
                    pid: i32_at(1),
                    socket,
                    pidfd,
                }
            }
            (wire::REFUSED, 5) => FromZygote::Refused(std::io::Error::from_raw_os_error(i32_at(1))),
            (wire::DIED, 10) => FromZygote::Died {
                pid: i32_at(1),
                fate: match p[5] {
                    0 => Fate::Exited(i32_at(6)),
                    _ => Fate::Signaled {
                        signal: i32_at(6),
                        core_dumped: false,
                    },
                },
            },
            _ => {
                return Err(std::io::Error::other(format!(
                    "the zygote sent a packet of kind {} and {n} bytes",
                    p[0]
                )));
            }
        }))
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
        // Our child, not yet reaped: the pid names it.
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
        let _ =
            nix::sys::socket::shutdown(self.control.as_raw_fd(), nix::sys::socket::Shutdown::Both);
        let until = Instant::now() + grace;
        while !self.has_ended() && Instant::now() < until {
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

fn set_nonblocking(fd: &OwnedFd) -> Result<(), xme_core::Error> {
    let flags =
        nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_GETFL).map_err(|e| xme_core::Error::Io {
            doing: "setting up the zygote's control socket",
            source: e.into(),
        })?;
    let flags = nix::fcntl::OFlag::from_bits_truncate(flags) | nix::fcntl::OFlag::O_NONBLOCK;
    nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_SETFL(flags)).map_err(|e| {
        xme_core::Error::Io {
            doing: "setting up the zygote's control socket",
            source: e.into(),
        }
    })?;
    Ok(())
}

fn pidfd_open(pid: i32) -> Option<OwnedFd> {
    let pid = rustix::process::Pid::from_raw(pid)?;
    rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty()).ok()
}

/// Whether the zygote entry point is in this executable, so that an `exec`
/// of it becomes a zygote (and never runs `main` again).
pub(crate) fn entry_linked() -> bool {
    ENTRY_LINKED.load(Ordering::Relaxed)
}
