//! The claim board: shared memory through which workers take calls. The
//! protocol itself is in `claim.rs` (model-checked with loom).
//!
//! - `cursor`: the lowest call that may still be free.
//! - `ended`: how many calls have ended (replied, or failed by the parent), so
//!   a long-running task such as a Guard can tell that the rest of its run is over.
//! - `claims[g]`: 0 while call `g` is free, else the serial of the worker that
//!   took it. A worker claims with one compare-and-swap, so each call is taken
//!   by exactly one worker, however many race for it.
//! - `slots[w]`: what worker slot `w` runs now (`call + 1`, 0 when idle) and
//!   since when. A worker writes its slot *before* the claim CAS, so a worker
//!   killed right after the CAS still names its call; the parent trusts a slot
//!   only when `claims[call]` holds that worker's serial.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use xme_core::{Error, SharedRegion, monotonic_ns};

use crate::claim;

/// Layout version of the board region.
const VERSION: u32 = 2;
/// Bytes before the worker slots: `cursor` and `ended`.
const HEAD: usize = 16;

pub(crate) struct Board {
    region: SharedRegion,
    workers: usize,
    calls: usize,
}

/// A worker slot as the parent sees it.
pub(crate) struct Running {
    pub call: usize,
    pub started_ns: u64,
}

impl Board {
    pub fn new(workers: usize, calls: usize) -> Result<Board, Error> {
        let bytes = HEAD + workers * 16 + calls * 4;
        let region = SharedRegion::anonymous_versioned(bytes, VERSION)?;
        Ok(Board {
            region,
            workers,
            calls,
        })
    }

    fn cursor(&self) -> &AtomicU64 {
        self.region.place(0).expect("board layout: cursor at 0")
    }

    fn ended(&self) -> &AtomicU64 {
        self.region.place(8).expect("board layout: ended at 8")
    }

    /// Counts one call as ended (a worker after its reply, or the parent when
    /// it fails a call).
    pub fn note_ended(&self) {
        self.ended().fetch_add(1, Ordering::AcqRel);
    }

    /// True once every call but one has ended: seen from the task that is
    /// still running, the rest of its run is over.
    pub fn all_others_ended(&self) -> bool {
        self.ended().load(Ordering::Acquire) as usize + 1 >= self.calls
    }

    fn slot(&self, w: usize) -> claim::Slot<'_> {
        let s: &[AtomicU64] = self
            .region
            .slice(HEAD + w * 16, 2)
            .expect("board layout: slots after the cursor");
        claim::Slot {
            current: &s[0],
            started: &s[1],
        }
    }

    fn claims(&self) -> &[AtomicU32] {
        self.region
            .slice(HEAD + self.workers * 16, self.calls)
            .expect("board layout: claims after the slots")
    }

    /// In a worker: takes the next free call for worker `serial` in slot `w`.
    pub fn claim(&self, w: usize, serial: u32) -> Option<usize> {
        claim::claim(
            self.cursor(),
            self.claims(),
            &self.slot(w),
            serial,
            monotonic_ns(),
        )
    }

    /// In a worker: marks slot `w` idle after its reply was written.
    pub fn finish(&self, w: usize) {
        self.slot(w).current.store(0, Ordering::Release);
        self.note_ended();
    }

    /// In the parent: the call worker `serial` in slot `w` has claimed and runs
    /// (or ran until it died), if any.
    pub fn running(&self, w: usize, serial: u32) -> Option<Running> {
        claim::running(self.claims(), &self.slot(w), serial)
            .map(|(call, started_ns)| Running { call, started_ns })
    }

    /// In the parent: resets slot `w` before a replacement worker uses it.
    pub fn clear_slot(&self, w: usize) {
        self.slot(w).current.store(0, Ordering::Release);
    }

    /// In the parent: the calls worker `serial` claimed (a scan of every
    /// claim word: only for a worker lost in an unusual way).
    pub fn claimed_by(&self, serial: u32) -> Vec<usize> {
        self.claims()
            .iter()
            .enumerate()
            .filter(|(_, c)| c.load(Ordering::Acquire) == serial)
            .map(|(g, _)| g)
            .collect()
    }

    /// In the parent: whether some worker took call `g`.
    pub fn was_claimed(&self, g: usize) -> bool {
        self.claims()
            .get(g)
            .is_some_and(|c| c.load(Ordering::Acquire) != 0)
    }

    /// True while some call has not been claimed yet.
    pub fn has_unclaimed(&self) -> bool {
        self.unclaimed() > 0
    }

    /// How many calls may still be free (calls from the cursor on).
    pub fn unclaimed(&self) -> usize {
        self.calls
            .saturating_sub(self.cursor().load(Ordering::Acquire) as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_call_is_claimed_exactly_once_across_processes() {
        const CALLS: usize = 20_000;
        const WORKERS: usize = 4;
        let board = Board::new(WORKERS, CALLS).unwrap();
        let children: Vec<_> = (0..WORKERS)
            .map(|w| {
                let board = &board;
                xme_core::process::fork_child(move || {
                    while let Some(g) = board.claim(w, w as u32 + 1) {
                        assert!(board.running(w, w as u32 + 1).is_some_and(|r| r.call == g));
                        board.finish(w);
                    }
                    0
                })
                .unwrap()
            })
            .collect();
        for c in children {
            assert!(c.wait().unwrap().is_success());
        }
        let claims = board.claims();
        assert!(
            claims
                .iter()
                .all(|c| (1..=WORKERS as u32).contains(&c.load(Ordering::Relaxed)))
        );
        assert!(!board.has_unclaimed());
    }
}
