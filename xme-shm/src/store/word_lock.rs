//! The table's locks are words of the table: [`PidLock`]s naming the
//! holder's pid, so a holder killed at any instruction is named by the word,
//! and the next taker that finds that pid dead takes over (and repairs what
//! the holder left).

use xme_core::sync::PidLock;

use crate::ShmError;
use crate::primitive::AtomicU64;

/// How long one live holder may keep the word before the taker reports it
/// (critical sections are a few microseconds; a holder stopped with SIGSTOP,
/// or a corrupt word naming an unrelated process, would otherwise hang us).
const MAX_HOLD: std::time::Duration = std::time::Duration::from_secs(2);

/// Takes the table's `what` lock `word` for `pid`. Threads of one process
/// share the pid, so a word naming our own pid is another thread's: waited for.
pub(crate) fn take<'m>(
    word: &'m AtomicU64,
    pid: u32,
    what: &'static str,
) -> Result<PidLock<'m>, ShmError> {
    PidLock::take_as(word, pid, MAX_HOLD).map_err(|w| {
        ShmError::BadLayout(format!(
            "the table's {what} lock has been held by live pid {w} for {MAX_HOLD:?}: that process is stopped, or the word is corrupt"
        ))
    })
}

#[cfg(not(loom))]
pub(crate) fn alive(pid: u32) -> bool {
    xme_core::process::is_alive(pid as i32)
}

/// Under loom, pids from `LOOM_DEAD_PIDS` up stand for dead processes.
#[cfg(loom)]
pub(crate) fn alive(pid: u32) -> bool {
    u64::from(pid) < xme_core::sync::LOOM_DEAD_PIDS
}
