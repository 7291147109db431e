//! Asymmetric fences between processes: a nearly free [`light`] fence for the
//! side of a handshake that runs on every message, and an expensive [`heavy`]
//! one (`membarrier(2)`) for the side that runs only before going to sleep.
//!
//! A sleep handshake is Dekker-shaped: the producer publishes a message, then
//! looks for sleepers; a sleeper announces itself, then looks for messages.
//! Each side needs a store-load fence between its store and its load, else
//! both can miss the other's store (a lost wake-up). On x86 that fence is a
//! locked instruction that waits for the store buffer to drain, including the
//! cache-line transfers of the message just written, on every message.
//! `MEMBARRIER_CMD_GLOBAL_EXPEDITED` moves that cost to the sleeper: it runs a
//! full barrier on every CPU running a process that registered for it, so a
//! registered producer needs only a compiler fence.
//!
//! ```
//! use std::sync::atomic::{AtomicU32, Ordering};
//! use xme_core::fence;
//!
//! let light = fence::register(); // false where membarrier(2) is unavailable
//! let (data, sleepers) = (AtomicU32::new(0), AtomicU32::new(0));
//! // Producer: publish, fence, look for sleepers.
//! data.store(1, Ordering::Release);
//! fence::light(light);
//! let wake_needed = sleepers.load(Ordering::Relaxed) > 0;
//! // Sleeper: announce, fence, look for data.
//! sleepers.fetch_add(1, Ordering::SeqCst);
//! fence::heavy();
//! assert!(wake_needed || data.load(Ordering::Acquire) == 1);
//! ```

use std::sync::atomic::{Ordering, compiler_fence, fence};

use rustix::thread::{MembarrierCommand, MembarrierQuery, membarrier, membarrier_query};

/// Registers this process so that [`heavy`] fences reach its threads; true if
/// it may use [`light`] fences. Call it in each process (a fork child
/// too: registration is not promised to survive `fork`). Idempotent.
pub fn register() -> bool {
    let needed = MembarrierQuery::GLOBAL_EXPEDITED | MembarrierQuery::REGISTER_GLOBAL_EXPEDITED;
    membarrier_query().contains(needed)
        && membarrier(MembarrierCommand::RegisterGlobalExpedited).is_ok()
}

/// The frequent side's store-load fence: a compiler fence if this process is
/// `registered` (see [`register`]), else a full fence.
#[inline]
pub fn light(registered: bool) {
    if registered {
        compiler_fence(Ordering::SeqCst);
    } else {
        fence(Ordering::SeqCst);
    }
}

/// The rare side's store-load fence: a full barrier on every CPU running a
/// registered process, then a local one. Where the kernel refuses, only the
/// local fence runs; the light side's stores are then ordered only if it was
/// not registered either, so callers bound their sleeps (they all do).
pub fn heavy() {
    fence(Ordering::SeqCst);
    let _ = membarrier(MembarrierCommand::GlobalExpedited);
    fence(Ordering::SeqCst);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn register_is_idempotent_and_heavy_returns() {
        let first = register();
        assert_eq!(register(), first);
        heavy();
        light(first);
        light(false);
    }
}

#[cfg(test)]
mod litmus {
    use super::*;
    use crate::SharedRegion;
    use std::sync::atomic::AtomicU64;

    /// Store buffering between two processes: each stores its flag, fences,
    /// then loads the other's. Returns the rounds where both loads missed the
    /// other's store (what the fences exist to forbid). `fenced`: the child
    /// runs `light`, the parent `heavy`; else both only stop the compiler.
    fn store_buffering(rounds: u64, fenced: bool) -> u64 {
        let region = SharedRegion::anonymous(5 * 64).unwrap();
        let word = |line: usize| -> &AtomicU64 { region.place(line * 64).unwrap() };
        let (go, x, y, seen, done) = (word(0), word(1), word(2), word(3), word(4));
        let child = crate::process::fork_child(|| {
            let registered = register();
            for i in 1..=rounds {
                while go.load(Ordering::Acquire) < i {
                    std::hint::spin_loop();
                }
                x.store(i, Ordering::Relaxed);
                if fenced {
                    light(registered);
                } else {
                    compiler_fence(Ordering::SeqCst);
                }
                seen.store(y.load(Ordering::Relaxed), Ordering::Relaxed);
                done.store(i, Ordering::Release);
            }
            0
        })
        .unwrap();
        let mut both_missed = 0;
        for i in 1..=rounds {
            go.store(i, Ordering::Release);
            y.store(i, Ordering::Relaxed);
            if fenced {
                heavy();
            } else {
                compiler_fence(Ordering::SeqCst);
            }
            let parent_saw = x.load(Ordering::Relaxed);
            while done.load(Ordering::Acquire) < i {
                std::hint::spin_loop();
            }
            if parent_saw < i && seen.load(Ordering::Relaxed) < i {
                both_missed += 1;
            }
        }
        assert!(child.wait().unwrap().is_success());
        both_missed
    }

    #[test]
    fn light_and_heavy_fences_forbid_store_buffering_across_processes() {
        let registered = register();
        // Without fences the reordering is common on x86; the test can see it.
        let unfenced = store_buffering(20_000, false);
        let fenced = store_buffering(20_000, true);
        eprintln!(
            "store buffering: {unfenced} rounds without fences, {fenced} with light + heavy \
             (membarrier registered: {registered})"
        );
        assert_eq!(fenced, 0);
    }
}
