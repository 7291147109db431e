//! Test hooks: a pause at a chosen point of the table's protocols, so that a
//! test can land a SIGKILL inside a window of a few instructions (between
//! taking a block and counting it, between freeing a block and counting it
//! out, in the middle of moving an entry along its probe chain). Not for
//! programs: a pause slows every write of the process that set it.
//!
//! ```
//! use std::time::Duration;
//! use xme_shm::hooks::{Window, pause_in};
//!
//! pause_in(Window::BlockTaken, Duration::from_micros(1));
//! let xmem = xme_shm::XmemBuilder::new().build().unwrap();
//! xmem.set("k", &1).unwrap(); // paused 1 µs after taking its block
//! pause_in(Window::BlockTaken, Duration::ZERO); // off again
//! ```

#[cfg(not(loom))]
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// A window of a protocol a pause can be put in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Window {
    /// A writer has taken a block (it is `WRITING` by its pid) and not yet
    /// counted it in its page.
    BlockTaken,
    /// A block was freed and not yet counted out of its page.
    BlockFreed,
    /// A delete is moving an entry back along its probe chain: the entry is
    /// in both slots, marked.
    EntryMoving,
    /// A lookup has read a slot and goes on to the next one of its chain.
    ProbeStep,
}

#[cfg(not(loom))]
static PAUSES: [AtomicU64; 4] = [const { AtomicU64::new(0) }; 4];
#[cfg(not(loom))]
static FLAG: std::sync::atomic::AtomicPtr<AtomicU64> =
    std::sync::atomic::AtomicPtr::new(std::ptr::null_mut());

/// Makes every pause of this process set `word` to 1 while it lasts (0
/// after), so that a test can tell whether the process it kills was inside
/// a window.
#[cfg(not(loom))]
pub fn flag_pauses_in(word: &'static AtomicU64) {
    FLAG.store(std::ptr::from_ref(word).cast_mut(), Ordering::Relaxed);
}

/// Pauses this process for `pause` each time it passes `window` (zero: no
/// pause). Inherited by processes forked afterwards.
#[cfg_attr(loom, allow(unused_variables))]
pub fn pause_in(window: Window, pause: Duration) {
    #[cfg(not(loom))]
    PAUSES[window as usize].store(pause.as_nanos() as u64, Ordering::Relaxed);
}

/// Where a protocol passes `window`. Under loom, a yield: the model's first
/// schedule lets the other threads run inside the window (loom's search
/// alone misses many such interleavings, tokio-rs/loom#166 and #392).
#[inline]
#[cfg_attr(loom, allow(unused_variables))]
pub(crate) fn at(window: Window) {
    #[cfg(loom)]
    loom::thread::yield_now();
    #[cfg(not(loom))]
    {
        let ns = PAUSES[window as usize].load(Ordering::Relaxed);
        if ns != 0 {
            // SAFETY: FLAG is null or was stored from a `&'static AtomicU64`.
            let flag = unsafe { FLAG.load(Ordering::Relaxed).as_ref() };
            if let Some(f) = flag {
                f.store(1, Ordering::SeqCst);
            }
            std::thread::sleep(Duration::from_nanos(ns));
            if let Some(f) = flag {
                f.store(0, Ordering::SeqCst);
            }
        }
    }
}
