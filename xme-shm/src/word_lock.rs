//! A lock that is one word of the table: the holder's pid, so a holder
//! killed at any instruction is named by the word, and the next taker that
//! finds that pid dead takes over (and repairs what the holder left).

use crate::ShmError;
use crate::primitive::{AtomicU64, Ordering};

/// A held word lock; dropping it releases the word. Threads of one process
/// share the pid, so a word naming our own pid is another thread's: waited for.
pub(crate) struct WordLock<'m> {
    word: &'m AtomicU64,
    /// The previous holder died holding it.
    pub took_over: bool,
}

/// How long one live holder may keep the word before the taker reports it
/// (critical sections are a few microseconds; a holder stopped with SIGSTOP,
/// or a corrupt word naming an unrelated process, would otherwise hang us).
#[cfg(not(loom))]
const MAX_HOLD: std::time::Duration = std::time::Duration::from_secs(2);

impl<'m> WordLock<'m> {
    /// Takes `word` (`what` names it in the error).
    pub fn take(word: &'m AtomicU64, pid: u32, what: &'static str) -> Result<Self, ShmError> {
        let me = u64::from(pid);
        let mut spins = 0u32;
        #[cfg(not(loom))]
        let mut since: Option<(u64, std::time::Instant)> = None;
        loop {
            let w = word.load(Ordering::Acquire);
            let dead = w != 0 && w != me && (w > u64::from(u32::MAX) || !alive(w as u32));
            if (w == 0 || dead)
                && word
                    .compare_exchange(w, me, Ordering::AcqRel, Ordering::Relaxed)
                    .is_ok()
            {
                return Ok(WordLock {
                    word,
                    took_over: dead,
                });
            }
            spins += 1;
            #[cfg(loom)]
            {
                let _ = spins;
                loom::thread::yield_now();
            }
            #[cfg(not(loom))]
            if spins.is_multiple_of(64) {
                match since {
                    Some((holder, t)) if holder == w && t.elapsed() >= MAX_HOLD => {
                        return Err(ShmError::BadLayout(format!(
                            "the table's {what} lock has been held by live pid {w} for {MAX_HOLD:?}: that process is stopped, or the word is corrupt"
                        )));
                    }
                    Some((holder, _)) if holder == w => {}
                    _ => since = Some((w, std::time::Instant::now())),
                }
                std::thread::yield_now();
            } else {
                std::hint::spin_loop();
            }
        }
    }
}

impl Drop for WordLock<'_> {
    fn drop(&mut self) {
        self.word.store(0, Ordering::Release);
    }
}

#[cfg(not(loom))]
pub(crate) fn alive(pid: u32) -> bool {
    xme_core::process::is_alive(pid as i32)
}

#[cfg(loom)]
pub(crate) fn alive(_pid: u32) -> bool {
    true
}
