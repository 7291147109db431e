//! A run needs its workers' exit statuses: while it lasts, `SIGCHLD` is not
//! ignored.
//!
//! A process that ignores `SIGCHLD` (`SIG_IGN`, or `SA_NOCLDWAIT`; common
//! in daemons and servers) has its ended children reaped by the kernel,
//! which drops their status: `waitpid` fails with `ECHILD`, and a worker's
//! death could not be told from its success. So a run sets `SIGCHLD` to
//! its default for its duration and puts the old action back after.
//! Trade-off: another child of the program that ends meanwhile stays a
//! zombie until the program reaps it (the kernel does not reap zombies
//! when `SIG_IGN` comes back); and a second run in another thread may put
//! `SIG_IGN` back while this one still runs, whose workers then end as
//! [`TaskFailure::StatusLost`](crate::TaskFailure::StatusLost) if they die
//! during a call (replies still arrive).

/// Restores the saved `SIGCHLD` action when dropped; holds nothing when
/// `SIGCHLD` was not ignored.
pub(crate) struct ChildStatusesKept(Option<libc::sigaction>);

impl ChildStatusesKept {
    pub(crate) fn new() -> ChildStatusesKept {
        // SAFETY: a zeroed sigaction is a valid "no handler" value to be
        // filled by the kernel; a null new action only reads the current one.
        let mut old: libc::sigaction = unsafe { std::mem::zeroed() };
        // SAFETY: as above; `old` is a valid out-pointer.
        if unsafe { libc::sigaction(libc::SIGCHLD, std::ptr::null(), &mut old) } != 0 {
            return ChildStatusesKept(None);
        }
        let ignored = old.sa_sigaction == libc::SIG_IGN || old.sa_flags & libc::SA_NOCLDWAIT != 0;
        if !ignored {
            return ChildStatusesKept(None);
        }
        // SAFETY: zeroed flags and mask with SIG_DFL is the default action.
        let mut default: libc::sigaction = unsafe { std::mem::zeroed() };
        default.sa_sigaction = libc::SIG_DFL;
        // SAFETY: both pointers are valid sigaction values.
        if unsafe { libc::sigaction(libc::SIGCHLD, &default, std::ptr::null_mut()) } != 0 {
            return ChildStatusesKept(None);
        }
        ChildStatusesKept(Some(old))
    }
}

impl Drop for ChildStatusesKept {
    fn drop(&mut self) {
        if let Some(old) = &self.0 {
            // SAFETY: `old` is the action the kernel gave us, put back as it was.
            unsafe { libc::sigaction(libc::SIGCHLD, old, std::ptr::null_mut()) };
        }
    }
}
