//! Forking children that die with their parent and are always reaped.
//!
//! # Fork before threads
//!
//! `fork(2)` copies only the calling thread. A lock held by another thread at
//! that moment stays locked forever in the child. xme's own child paths take no
//! such lock (the logger writes with one `write(2)`, results leave through a
//! pipe), but a task that locks a `Mutex` shared with a parent thread, or prints
//! with `println!` while a parent thread holds stdout, can deadlock in the
//! child. Start worker processes before starting threads, or keep the tasks
//! free of locks that other threads take.
//!
//! # Fork hooks
//! [`at_fork`] registers [`ForkHooks`] that every fork made through
//! [`fork_child`] calls: prepare hooks before `fork(2)`, parent hooks after
//! it, child hooks first thing in the child, exit hooks last thing in the
//! child (before `_exit`, which skips `atexit`). An embedded interpreter uses
//! them to hold its own locks across the fork; a program, to reseed a
//! random generator in every worker.

use std::any::Any;
use std::cell::RefCell;
use std::io::Write;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::panic::{self, AssertUnwindSafe};

use nix::errno::Errno;
use nix::sys::signal::{self, Signal};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::{ForkResult, Pid};

use crate::{Error, Fate, PanicReport};

mod hooks;

pub use hooks::{ForkHooks, at_fork};

/// Exit status of a child whose parent died before it could start.
pub const EXIT_ORPHANED: i32 = 125;
/// Exit status of a child whose body panicked.
pub const EXIT_PANICKED: i32 = 101;

/// A forked child process. Dropping it without waiting kills it (`SIGKILL`) and
/// reaps it, so no zombie and no orphan is left behind.
#[derive(Debug)]
#[must_use = "dropping a Child kills it: wait for it, or keep it while it should run"]
pub struct Child {
    pid: Pid,
    fate: Option<Fate>,
    /// `waitpid` said it is no child of ours any more (`ECHILD`): with
    /// `SIGCHLD` ignored the kernel reaped it itself, so its pid may name
    /// another process now and is never signalled again.
    vanished: bool,
    /// Readable once the child has ended (Linux 5.3+; `None` on older kernels).
    pidfd: Option<OwnedFd>,
}

impl Child {
    /// The child's process id.
    pub fn pid(&self) -> i32 {
        self.pid.as_raw()
    }

    /// A descriptor that polls readable once the child has ended, so a parent
    /// can wait for a child's death in the same `poll` as its pipes. `None`
    /// where the kernel has no `pidfd_open` (before Linux 5.3).
    pub fn pidfd(&self) -> Option<BorrowedFd<'_>> {
        self.pidfd.as_ref().map(|fd| fd.as_fd())
    }

    /// Waits for the child to end and reaps it.
    pub fn wait(mut self) -> Result<Fate, Error> {
        self.wait_mut()
    }

    /// Waits for the child to end and reaps it, keeping the handle.
    ///
    /// # Errors
    /// [`Error::Wait`] if `waitpid` fails; with `ECHILD` (the process
    /// ignores `SIGCHLD`, so the kernel reaped the child and its status is
    /// lost) the handle then counts the child as gone ([`Child::vanished`]).
    pub fn wait_mut(&mut self) -> Result<Fate, Error> {
        if let Some(fate) = self.fate {
            return Ok(fate);
        }
        let fate = self
            .note_vanished(reap(self.pid.as_raw(), true))?
            .expect("blocking waitpid returns a status");
        self.fate = Some(fate);
        Ok(fate)
    }

    /// Reaps the child if it has ended; `None` while it still runs.
    ///
    /// # Errors
    /// As [`Child::wait_mut`].
    pub fn try_wait(&mut self) -> Result<Option<Fate>, Error> {
        if self.fate.is_none() {
            self.fate = self.note_vanished(reap(self.pid.as_raw(), false))?;
        }
        Ok(self.fate)
    }

    /// True once `waitpid` said the child was reaped by someone else (the
    /// kernel, when `SIGCHLD` is ignored): it has ended, with an unknown
    /// status.
    pub fn vanished(&self) -> bool {
        self.vanished
    }

    fn note_vanished<T>(&mut self, reaped: Result<T, Error>) -> Result<T, Error> {
        if let Err(Error::Wait { source, .. }) = &reaped
            && source.raw_os_error() == Some(libc::ECHILD)
        {
            self.vanished = true;
        }
        reaped
    }

    /// Sends `signal` to the child (no-op once it has been reaped).
    pub fn signal(&self, signal: Signal) -> Result<(), Error> {
        if self.fate.is_some() || self.vanished {
            return Ok(());
        }
        signal::kill(self.pid, signal).map_err(|e| Error::Signal {
            pid: self.pid.as_raw(),
            source: e.into(),
        })
    }

    /// Kills the child with `SIGKILL` and reaps it.
    pub fn kill(mut self) -> Result<Fate, Error> {
        self.kill_mut()
    }

    /// Kills the child with `SIGKILL` and reaps it, keeping the handle.
    pub fn kill_mut(&mut self) -> Result<Fate, Error> {
        if let Some(fate) = self.fate {
            return Ok(fate);
        }
        if self.vanished {
            return Err(Error::Wait {
                pid: self.pid.as_raw(),
                source: std::io::Error::from_raw_os_error(libc::ECHILD),
            });
        }
        // ESRCH cannot happen for an unreaped child; a zombie accepts signals.
        let _ = signal::kill(self.pid, Signal::SIGKILL);
        self.wait_mut()
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        if self.fate.is_none() && !self.vanished {
            let _ = self.kill_mut();
        }
    }
}

/// Forks a child that runs `body` and exits with the status it returns.
///
/// Before forking, the [prepare hooks](ForkHooks::prepare) run and the
/// parent's stdout and stderr are flushed, so text buffered before the fork
/// is not printed twice; after it, the [parent hooks](ForkHooks::parent) run
/// in the parent. In the child:
/// - the [child hooks](ForkHooks::child) run first;
/// - `PR_SET_PDEATHSIG` is set to `SIGKILL` and the parent is re-checked, so the
///   child dies with the parent (note: with the *thread* that forked it);
/// - a panic in `body` ends the child with [`EXIT_PANICKED`];
/// - the [exit hooks](ForkHooks::before_exit) run, stdout and stderr are
///   flushed and the child leaves with `_exit`, so the
///   parent's destructors and `atexit` handlers do not run twice.
///
/// See the module docs for the "fork before threads" rule.
///
/// # Errors
/// [`Error::Fork`] if `fork(2)` fails; [`Error::ForkHook`] if a prepare or
/// parent hook panicked (the fork did not happen, or its child was killed
/// and reaped).
///
/// ```
/// # fn main() -> Result<(), xme_core::Error> {
/// let child = xme_core::process::fork_child(|| 7)?;
/// assert_eq!(child.wait()?, xme_core::Fate::Exited(7));
/// # Ok(())
/// # }
/// ```
pub fn fork_child<F: FnOnce() -> i32>(body: F) -> Result<Child, Error> {
    let parent = nix::unistd::getpid();
    let hooks = hooks::Snapshot::take();
    hooks.prepare()?;
    // Hold stdout and stderr across the fork: no other thread can hold them at
    // that instant, and in the child these re-entrant locks belong to the
    // forking thread, which releases them like the parent does.
    let forked = {
        let mut out = std::io::stdout().lock();
        let mut err = std::io::stderr().lock();
        let _ = out.flush();
        let _ = err.flush();
        // SAFETY: after fork the child is single-threaded and owns a full copy
        // of the parent's memory, so every Rust reference it uses stays valid.
        // The child runs `body` and leaves with `_exit` without returning into
        // the caller's frames. Locks held by other parent threads could only
        // deadlock the child, never break memory safety (see the module docs).
        unsafe { nix::unistd::fork() }
    };
    match forked {
        Ok(ForkResult::Parent { child }) => {
            let child = Child {
                pid: child,
                fate: None,
                vanished: false,
                pidfd: pidfd_open(child),
            };
            // A failed parent hook drops (kills and reaps) the child.
            hooks.parent()?;
            Ok(child)
        }
        Ok(ForkResult::Child) => {
            let code = match hooks.child() {
                Ok(()) => {
                    let code = run_child(parent, body);
                    hooks.before_exit();
                    code
                }
                Err(()) => EXIT_PANICKED,
            };
            exit_now(code)
        }
        Err(e) => {
            // The prepare hooks ran: let their parent hooks undo them.
            let _ = hooks.parent();
            Err(Error::Fork(e.into()))
        }
    }
}

/// Opens a pidfd for an unreaped child (the pid cannot be reused before we
/// reap it, so this names the right process).
fn pidfd_open(pid: Pid) -> Option<OwnedFd> {
    let pid = rustix::process::Pid::from_raw(pid.as_raw())?;
    rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty()).ok()
}

fn run_child<F: FnOnce() -> i32>(parent: Pid, body: F) -> i32 {
    if die_with_parent(parent).is_err() {
        return EXIT_ORPHANED;
    }
    panic::catch_unwind(AssertUnwindSafe(body)).unwrap_or(EXIT_PANICKED)
}

/// Sets `PR_SET_PDEATHSIG` to `SIGKILL` and checks that `parent` is still our
/// parent (it may have died between `fork` and `prctl`).
pub fn die_with_parent(parent: Pid) -> Result<(), Errno> {
    nix::sys::prctl::set_pdeathsig(Signal::SIGKILL)?;
    if nix::unistd::getppid() != parent {
        return Err(Errno::ESRCH);
    }
    Ok(())
}

/// Flushes stdout and stderr and leaves the process at once with `_exit(code)`.
pub fn exit_now(code: i32) -> ! {
    flush_std_streams();
    // SAFETY: `_exit` is async-signal-safe and never returns; skipping destructors
    // and atexit handlers is the point (they belong to the parent).
    unsafe { libc::_exit(code) }
}

fn flush_std_streams() {
    let _ = std::io::stdout().flush();
    let _ = std::io::stderr().flush();
}

static CACHED_PID: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
/// 0: atfork handler not registered; 1: being registered; 2: registered.
/// Not a `Once`: a `Once` held by another thread at fork time would block the
/// child forever.
static ATFORK_STATE: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(0);

extern "C" fn forget_pid_in_child() {
    CACHED_PID.store(0, std::sync::atomic::Ordering::Relaxed);
}

/// This process's pid, without a syscall after the first call.
///
/// `getpid` is a system call (glibc no longer caches it); lock fast paths need
/// the pid on every acquire. The cache is cleared in every child forked through
/// libc's `fork` (a `pthread_atfork` handler), so a child sees its own pid.
#[inline]
pub fn current_pid() -> u32 {
    use std::sync::atomic::Ordering;
    let pid = CACHED_PID.load(Ordering::Relaxed);
    if pid != 0 {
        return pid;
    }
    let pid = std::process::id();
    match ATFORK_STATE.compare_exchange(0, 1, Ordering::AcqRel, Ordering::Acquire) {
        Ok(_) => {
            // SAFETY: registers a plain extern "C" function with no captured
            // state, run in the child right after fork; it only stores to an atomic.
            unsafe { libc::pthread_atfork(None, None, Some(forget_pid_in_child)) };
            ATFORK_STATE.store(2, Ordering::Release);
            CACHED_PID.store(pid, Ordering::Relaxed);
        }
        // Cache only once the handler runs in every later child.
        Err(2) => CACHED_PID.store(pid, Ordering::Relaxed),
        Err(_) => {}
    }
    pid
}

/// Reaps `pid`: blocking, or with `WNOHANG` when `block` is false (then `None`
/// means it still runs). Retries on `EINTR`; stop/continue reports are skipped.
pub fn reap(pid: i32, block: bool) -> Result<Option<Fate>, Error> {
    let flags = if block {
        None
    } else {
        Some(WaitPidFlag::WNOHANG)
    };
    loop {
        match waitpid(Pid::from_raw(pid), flags) {
            Ok(WaitStatus::Exited(_, code)) => return Ok(Some(Fate::Exited(code))),
            Ok(WaitStatus::Signaled(_, sig, core_dumped)) => {
                return Ok(Some(Fate::Signaled {
                    signal: sig as i32,
                    core_dumped,
                }));
            }
            Ok(WaitStatus::StillAlive) => return Ok(None),
            Ok(_) => continue,
            Err(Errno::EINTR) => continue,
            Err(e) => {
                return Err(Error::Wait {
                    pid,
                    source: e.into(),
                });
            }
        }
    }
}

/// Whether a process with this pid exists and has not ended (a zombie counts as
/// ended). Works for any process, not only children.
pub fn is_alive(pid: i32) -> bool {
    if pid <= 0 {
        return false;
    }
    match signal::kill(Pid::from_raw(pid), None) {
        Ok(()) | Err(Errno::EPERM) => !is_zombie(pid),
        Err(_) => false,
    }
}

/// When process `pid` started: field 22 of `/proc/<pid>/stat` (clock ticks
/// since boot); `None` if it does not exist. With the pid it names one
/// process for the life of the system (a pid alone may be reused).
///
/// ```
/// let me = std::process::id() as i32;
/// assert!(xme_core::process::start_time(me).is_some());
/// assert_eq!(xme_core::process::start_time(me), xme_core::process::start_time(me));
/// ```
pub fn start_time(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the last ')' (comm may hold spaces and parentheses):
    // state is field 3, starttime field 22, so the 20th after the ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// Whether the process `pid` that started at `start` (see [`start_time`])
/// still runs: alive, and the pid not taken by a later process. A `start`
/// of 0 (not recorded) checks the pid alone.
///
/// ```
/// use xme_core::process::{is_same_process, start_time};
/// let me = std::process::id() as i32;
/// assert!(is_same_process(me, start_time(me).unwrap()));
/// assert!(!is_same_process(me, start_time(me).unwrap() + 1)); // another life of this pid
/// assert!(is_same_process(me, 0));
/// ```
pub fn is_same_process(pid: i32, start: u64) -> bool {
    is_alive(pid) && (start == 0 || start_time(pid) == Some(start))
}

fn is_zombie(pid: i32) -> bool {
    // /proc/<pid>/stat: "pid (comm) S ..."; comm may hold spaces or parentheses,
    // so the state is the first field after the last ')'.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rfind(')')
            .and_then(|i| stat[i + 1..].split_whitespace().next())
            .is_some_and(|state| state == "Z" || state == "X"),
        Err(_) => true,
    }
}

/// The pids of this process's direct children, zombies included, read from `/proc`.
pub fn children_of(parent: i32) -> Vec<i32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|stat| {
                    let rest = &stat[stat.rfind(')')? + 1..];
                    rest.split_whitespace().nth(1)?.parse::<i32>().ok()
                })
                == Some(parent)
        })
        .collect()
}

thread_local! {
    static LAST_PANIC_LOCATION: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// Replaces the panic hook with one that records the panic's location for
/// [`catch_panic`] and prints nothing (the report travels to the parent instead).
/// Meant for worker processes; call it once, in the child.
pub fn install_quiet_panic_hook() {
    panic::set_hook(Box::new(|info| {
        let loc = info
            .location()
            .map(|l| format!("{}:{}:{}", l.file(), l.line(), l.column()));
        LAST_PANIC_LOCATION.with(|cell| *cell.borrow_mut() = loc);
    }));
}

/// Runs `f`, turning a panic into a [`PanicReport`] (message and, when the quiet
/// hook is installed, location).
pub fn catch_panic<R>(f: impl FnOnce() -> R) -> Result<R, PanicReport> {
    LAST_PANIC_LOCATION.with(|cell| cell.borrow_mut().take());
    panic::catch_unwind(AssertUnwindSafe(f)).map_err(|payload| PanicReport {
        message: panic_message(&*payload),
        location: LAST_PANIC_LOCATION.with(|cell| cell.borrow_mut().take()),
    })
}

/// The text of a panic payload.
pub fn panic_message(payload: &(dyn Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "Box<dyn Any>".to_string()
    }
}

#[cfg(test)]
mod tests {

    use super::*;

    #[test]
    fn a_child_reaped_by_the_kernel_is_gone_not_an_error_for_ever() {
        // In a child of the test: SIGCHLD ignored there only.
        let outer = fork_child(|| {
            // SAFETY: sets SIGCHLD to SIG_IGN in this single-threaded child.
            unsafe { libc::signal(libc::SIGCHLD, libc::SIG_IGN) };
            let mut child = fork_child(|| 0).unwrap();
            let err = child.wait_mut().unwrap_err();
            let echild = matches!(&err, Error::Wait { source, .. }
                if source.raw_os_error() == Some(libc::ECHILD));
            // Gone: never signalled again (its pid may be another's now).
            let ok = echild
                && child.vanished()
                && child.signal(Signal::SIGTERM).is_ok()
                && child.kill_mut().is_err();
            drop(child);
            if ok { 0 } else { 1 }
        })
        .unwrap();
        assert_eq!(outer.wait().unwrap(), Fate::Exited(0));
    }

    #[test]
    fn the_cached_pid_is_the_childs_own_after_fork() {
        let parent = current_pid();
        assert_eq!(parent, std::process::id());
        let region = crate::SharedRegion::anonymous(8).unwrap();
        let seen: &std::sync::atomic::AtomicU32 = region.place(0).unwrap();
        let child = fork_child(|| {
            seen.store(current_pid(), std::sync::atomic::Ordering::SeqCst);
            0
        })
        .unwrap();
        let child_pid = child.pid() as u32;
        assert!(child.wait().unwrap().is_success());
        assert_eq!(seen.load(std::sync::atomic::Ordering::SeqCst), child_pid);
        assert_ne!(child_pid, parent);
    }
}
