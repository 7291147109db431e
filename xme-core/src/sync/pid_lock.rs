//! A lock word naming its holder's pid, taken over when the holder died.

use super::primitive::{AtomicU64, Ordering};

/// A lock word in shared memory that names its holder: 0 when free, else the
/// holder's pid. A waiter takes it when free, or when its holder died (a
/// process killed while holding it never blocks the others). The holder's
/// threads are told apart by nothing but the pid, so one process must not
/// take the same word from two threads at once without its own lock.
///
/// ```
/// use std::sync::atomic::AtomicU64;
/// use xme_core::sync::PidLock;
///
/// let word = AtomicU64::new(0);
/// {
///     let held = PidLock::take(&word);
///     assert!(!held.took_over());
/// }
/// // A holder that does not run (pids stay below 2^22 on Linux):
/// word.store(1 << 22, std::sync::atomic::Ordering::Relaxed);
/// assert!(PidLock::take(&word).took_over());
/// ```
#[derive(Debug)]
#[must_use = "the lock is released when this guard drops"]
pub struct PidLock<'a> {
    word: &'a AtomicU64,
    took_over: bool,
}

/// Largest pid Linux hands out (`PID_MAX_LIMIT`): a word above it names no
/// process (a corrupt word), never a holder to wait for.
#[cfg_attr(loom, allow(dead_code))]
pub(crate) const PID_MAX: u64 = 1 << 22;

/// Whether the process `pid` named by a lock word runs. Under loom, threads
/// stand for processes: pids from [`LOOM_DEAD_PIDS`] up stand for dead ones.
#[cfg(not(loom))]
pub(crate) fn holder_alive(pid: u64) -> bool {
    pid <= PID_MAX && crate::process::is_alive(pid as i32)
}

/// Under loom, pids from here up are "dead" holders (models write one into a
/// word to stand for a process killed while holding it).
#[cfg(loom)]
pub const LOOM_DEAD_PIDS: u64 = 1000;

#[cfg(loom)]
pub(crate) fn holder_alive(pid: u64) -> bool {
    pid < LOOM_DEAD_PIDS
}

impl<'a> PidLock<'a> {
    /// Takes `word`, spinning then yielding while a live process holds it.
    /// Where a stranger may have written the word (a region another process
    /// can corrupt), use [`take_within`](Self::take_within).
    #[cfg(not(loom))]
    pub fn take(word: &'a AtomicU64) -> PidLock<'a> {
        loop {
            if let Ok(held) = Self::take_within(word, std::time::Duration::from_secs(3600)) {
                return held;
            }
        }
    }

    /// Takes `word` like [`take`](Self::take), but gives up after `max` while
    /// one live process holds it: `Err(its pid)` (a holder stuck, or a word
    /// that names an unrelated process).
    #[cfg(not(loom))]
    pub fn take_within(word: &'a AtomicU64, max: std::time::Duration) -> Result<PidLock<'a>, u32> {
        Self::take_as(word, crate::process::current_pid(), max)
    }

    /// [`take_within`](Self::take_within) for the holder `pid` (the calling
    /// process's pid, or under loom the thread's stand-in pid).
    pub fn take_as(
        word: &'a AtomicU64,
        pid: u32,
        #[cfg_attr(loom, allow(unused_variables))] max: std::time::Duration,
    ) -> Result<PidLock<'a>, u32> {
        let me = u64::from(pid);
        #[cfg(not(loom))]
        let mut spins = 0u32;
        #[cfg(not(loom))]
        let mut since: Option<(u64, std::time::Instant)> = None;
        loop {
            // Acquire: the previous holder's writes (a dead holder's partial
            // ones too) happen before ours.
            let w = word.load(Ordering::Acquire);
            let dead = w != 0 && w != me && !holder_alive(w);
            // AcqRel on success: acquire as above (the CAS may read a value
            // newer than the load), release so a later taker sees our writes
            // ordered after the previous holder's.
            if (w == 0 || dead)
                && word
                    .compare_exchange(w, me, Ordering::AcqRel, Ordering::Relaxed)
                    .is_ok()
            {
                return Ok(PidLock {
                    word,
                    took_over: dead,
                });
            }
            // Under loom a waiter yields (loom has no clock; a holder always
            // finishes in a model).
            #[cfg(loom)]
            loom::thread::yield_now();
            #[cfg(not(loom))]
            {
                spins += 1;
                if spins.is_multiple_of(64) {
                    // The clock is read only once waiting lasts: the same holder
                    // for `max` gives up; a new holder restarts the count.
                    match since {
                        Some((holder, t)) if holder == w && t.elapsed() >= max => {
                            return Err(w as u32);
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

    /// Takes `word` whoever holds it (for a word only this process may hold
    /// by the protocol, after [`take_within`](Self::take_within) gave up).
    #[cfg(not(loom))]
    pub fn seize(word: &'a AtomicU64) -> PidLock<'a> {
        // Release: as a taker's CAS; a later taker acquires our writes.
        word.store(u64::from(crate::process::current_pid()), Ordering::Release);
        PidLock {
            word,
            took_over: true,
        }
    }

    /// Whether the previous holder had died holding it.
    pub fn took_over(&self) -> bool {
        self.took_over
    }
}

impl Drop for PidLock<'_> {
    fn drop(&mut self) {
        // Release: our writes under the lock happen before the next taker's.
        self.word.store(0, Ordering::Release);
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn a_pid_lock_held_by_a_live_stranger_is_given_up_and_a_non_pid_is_taken() {
        use std::sync::atomic::AtomicU64;
        use std::time::{Duration, Instant};
        // Our parent lives and never takes the word: a stuck holder.
        let parent = nix::unistd::getppid().as_raw() as u64;
        let word = AtomicU64::new(parent);
        let t = Instant::now();
        assert_eq!(
            PidLock::take_within(&word, Duration::from_millis(50)).unwrap_err() as u64,
            parent
        );
        assert!(t.elapsed() >= Duration::from_millis(50));
        assert!(t.elapsed() < Duration::from_secs(2));
        // A value no pid can have (its low bits may name a live process).
        let word = AtomicU64::new((1 << 32) | 1);
        assert!(
            PidLock::take_within(&word, Duration::from_millis(50))
                .unwrap()
                .took_over()
        );
        assert_eq!(word.load(std::sync::atomic::Ordering::Relaxed), 0);
        // seize takes it whoever holds it.
        let word = AtomicU64::new(parent);
        assert!(PidLock::seize(&word).took_over());
    }
}
