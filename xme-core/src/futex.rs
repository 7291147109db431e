//! Shared (cross-process) futex wait and wake on a 32-bit word.
//!
//! The futex is *shared*, not private: the word may live in memory mapped by
//! several processes, and the kernel keys the wait queue by the physical page.

use std::sync::atomic::AtomicU32;
use std::time::Duration;

use rustix::thread::futex;

/// Why [`wait`] returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wake {
    /// Woken by [`wake`], or the word no longer held `expected`, or a signal:
    /// re-check the condition.
    Woken,
    /// The timeout passed.
    TimedOut,
}

/// Sleeps while `word` holds `expected`, at most `timeout` (`None`: no limit).
pub fn wait(word: &AtomicU32, expected: u32, timeout: Option<Duration>) -> Wake {
    let ts = timeout.map(|t| futex::Timespec {
        tv_sec: t.as_secs().min(i64::MAX as u64) as i64,
        tv_nsec: t.subsec_nanos().into(),
    });
    // No PRIVATE flag: the word may be shared with other processes.
    match futex::wait(word, futex::Flags::empty(), expected, ts.as_ref()) {
        Err(rustix::io::Errno::TIMEDOUT) => Wake::TimedOut,
        _ => Wake::Woken,
    }
}

/// Wakes up to `n` waiters sleeping on `word`; returns how many were woken.
pub fn wake(word: &AtomicU32, n: u32) -> usize {
    futex::wake(word, futex::Flags::empty(), n.min(i32::MAX as u32)).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::Ordering;
    use std::time::Instant;

    #[test]
    fn wait_times_out_and_a_changed_word_returns_at_once() {
        let w = AtomicU32::new(5);
        let t = Instant::now();
        assert_eq!(wait(&w, 5, Some(Duration::from_millis(20))), Wake::TimedOut);
        assert!(t.elapsed() >= Duration::from_millis(15));
        assert_eq!(wait(&w, 6, Some(Duration::from_secs(5))), Wake::Woken);
    }

    #[test]
    fn a_forked_child_wakes_the_parent() {
        let region = crate::SharedRegion::anonymous(64).unwrap();
        let w: &AtomicU32 = region.place(0).unwrap();
        let child = crate::process::fork_child(|| {
            std::thread::sleep(Duration::from_millis(20));
            w.store(1, Ordering::SeqCst);
            wake(w, 1);
            0
        })
        .unwrap();
        while w.load(Ordering::SeqCst) == 0 {
            wait(w, 0, Some(Duration::from_secs(5)));
        }
        assert!(child.wait().unwrap().is_success());
    }
}
