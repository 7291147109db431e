//! Waking the driver thread from a worker process without a system call
//! while the driver is awake.
//!
//! The driver sleeps in `poll(2)` on its workers' sockets. Before it does, it
//! raises `sleeping` and then looks at every slot's `events` counter once
//! more; a worker that has something to say (a task ended, its ring is half
//! full or full) bumps its `events`, then looks at `sleeping` and, only if it
//! is raised and the worker is the one that lowers it, writes a byte to its
//! socket. The two SeqCst fences make it a store-load pair on each side: one
//! of the two sees the other, so a driver never sleeps on an event it missed.

use super::sync::{AtomicU32, AtomicU64, Ordering, fence};

/// Worker: announces an event; `true` if the caller must wake the driver
/// (write a byte to its socket).
pub(crate) fn ring(events: &AtomicU64, sleeping: &AtomicU32) -> bool {
    events.fetch_add(1, Ordering::Release);
    // SeqCst fence: orders the bump before the load of `sleeping`, against
    // the driver's store of `sleeping` and its load of `events`.
    fence(Ordering::SeqCst);
    sleeping.load(Ordering::Relaxed) != 0 && sleeping.swap(0, Ordering::AcqRel) != 0
}

/// Driver: raises `sleeping`; then it must re-read every `events` counter
/// ([`changed`]) and sleep only if none changed.
pub(crate) fn prepare_sleep(sleeping: &AtomicU32) {
    sleeping.store(1, Ordering::Relaxed);
    // SeqCst fence: the store above is ordered before the loads of `events`.
    fence(Ordering::SeqCst);
}

/// Driver: whether a slot announced something since `seen` (updated).
pub(crate) fn changed(events: &AtomicU64, seen: &mut u64) -> bool {
    let now = events.load(Ordering::Acquire);
    let moved = now != *seen;
    *seen = now;
    moved
}

/// Driver: awake again.
pub(crate) fn woke(sleeping: &AtomicU32) {
    sleeping.store(0, Ordering::Relaxed);
}

#[cfg(all(test, loom))]
mod loom_models {
    use super::*;
    use loom::sync::Arc;
    use loom::sync::atomic::AtomicBool;

    /// A worker announces an event while the driver decides whether to
    /// sleep: the driver either sees the event or is woken.
    #[test]
    fn no_event_is_slept_through() {
        static RUNS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        xme_core::sync::loom_model(3, || {
            RUNS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let events = Arc::new(AtomicU64::new(0));
            let sleeping = Arc::new(AtomicU32::new(0));
            let byte = Arc::new(AtomicBool::new(false));
            let (e, s, b) = (events.clone(), sleeping.clone(), byte.clone());
            let worker = loom::thread::spawn(move || {
                if ring(&e, &s) {
                    b.store(true, Ordering::SeqCst);
                }
            });
            let mut seen = 0;
            prepare_sleep(&sleeping);
            if !changed(&events, &mut seen) {
                // Asleep: only the worker's byte can end this.
                while !byte.load(Ordering::SeqCst) {
                    loom::thread::yield_now();
                }
            }
            woke(&sleeping);
            worker.join().unwrap();
        });
        // loom's search can stop after one execution when a thread reads a
        // word before it writes it; a model that explored one checked
        // nothing.
        let runs = RUNS.load(std::sync::atomic::Ordering::Relaxed);
        assert!(runs > 1, "the model explored {runs} execution(s)");
    }
}
