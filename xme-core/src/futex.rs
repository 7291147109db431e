//! Shared (cross-process) futex wait and wake on a 32-bit word.
//!
//! The futex is *shared*, not private: the word may live in memory mapped by
//! several processes, and the kernel keys the wait queue by the physical page.

use std::sync::atomic::AtomicU32;
use std::time::Duration;

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
    let ts = timeout.map(|t| libc::timespec {
        tv_sec: t.as_secs().min(i64::MAX as u64) as libc::time_t,
        tv_nsec: t.subsec_nanos() as libc::c_long,
    });
    let ts_ptr = ts
        .as_ref()
        .map_or(std::ptr::null(), |t| t as *const libc::timespec);
    // SAFETY: `word` is a valid, aligned 32-bit atomic for the duration of the
    // call; FUTEX_WAIT only reads it; `ts_ptr` is null or points to a timespec
    // that outlives the call.
    let r = unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAIT,
            expected,
            ts_ptr,
        )
    };
    if r == -1 && std::io::Error::last_os_error().raw_os_error() == Some(libc::ETIMEDOUT) {
        Wake::TimedOut
    } else {
        Wake::Woken
    }
}

/// Wakes up to `n` waiters sleeping on `word`; returns how many were woken.
pub fn wake(word: &AtomicU32, n: u32) -> usize {
    let n = n.min(i32::MAX as u32) as i32;
    // SAFETY: `word` is a valid, aligned 32-bit atomic; FUTEX_WAKE does not
    // access user memory beyond keying the wait queue by its address.
    let r = unsafe { libc::syscall(libc::SYS_futex, word.as_ptr(), libc::FUTEX_WAKE, n) };
    r.max(0) as usize
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
