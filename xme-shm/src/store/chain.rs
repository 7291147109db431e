//! Probe chains: what changes only under the table's key lock (inserting a
//! key, deleting one), and scans that see every live key exactly once.
//!
//! A delete empties its key's slot into a hole ([`TOMB`]), then closes the
//! hole the way backward-shift deletion does: each entry after it in the
//! cluster whose home is not between the hole and itself moves back into
//! the hole, and the hole moves on to where it was; the last hole becomes
//! empty. The table is then as if the deleted key had never been inserted,
//! so probe lengths depend only on the keys present, never on the history.
//!
//! Moving an entry from slot `j` to the hole `i` while readers and writers
//! run without the lock:
//! 1. `moves` becomes odd (a lookup overlapping it will not trust a miss)
//!    and the move is recorded (`move_from`, `move_to`);
//! 2. `j` is marked [`MOVING`] (one CAS: a writer replacing the value loses
//!    it and retries; writers never CAS a marked slot, they wait);
//! 3. `i` gets the same marked handle; 4. `j` becomes the next hole;
//!    5. `i` is unmarked; 6. `moves` becomes even.
//!
//! While marked, the entry's value is frozen and readable in either slot.
//! A lookup that passed `i` before step 3 and reaches `j` after step 4
//! misses the key, and sees `moves` changed, so it probes again. A holder
//! killed anywhere leaves the record, the marks and the holes; the next
//! taker of the key lock (a writer or a reader spoiled too long) finishes
//! the move and closes the holes.

use crate::ShmError;
use crate::primitive::{Ordering, fence, spin};
use crate::store::block;
use crate::store::layout::{MOVING, TOMB};
use crate::store::table::{Slot, Snapshot, ValueTable, check_progress};
use crate::store::word_lock;
use xme_core::sync::PidLock;

/// Scans in a row that moves spoiled before a scan holds the key lock.
const SPOILED_SCANS: usize = 4;

impl<'m> ValueTable<'m> {
    /// Takes the key lock. A taker that finds its holder dead (or a move
    /// left half done) finishes what the holder left: the move, the holes,
    /// the counters.
    pub(super) fn key_lock(&self, pid: u32) -> Result<PidLock<'m>, ShmError> {
        let h = self.header();
        let lock = word_lock::take(&h.key_lock, pid, "key")?;
        if lock.took_over() || h.moves.load(Ordering::Acquire) & 1 == 1 {
            self.repair_chains()?;
        }
        Ok(lock)
    }

    /// Under the key lock: puts `new`, the handle of `key`'s first value,
    /// in the first free slot of its chain. `false` if the key is there
    /// already (inserted meanwhile).
    pub(super) fn insert(
        &self,
        key: &[u8],
        hash: u64,
        new: u64,
        pid: u32,
    ) -> Result<bool, ShmError> {
        let _lock = self.key_lock(pid)?;
        // No key is inserted or deleted while we hold the lock, so what the
        // chain shows now stays true until we publish.
        if self.lookup(key, hash, None, pid)?.is_some() {
            return Ok(false);
        }
        let free = self.probe(hash).find_map(|i| {
            let w = self.slot(i).load(Ordering::Acquire);
            (w == 0 || w == TOMB).then_some((i, w))
        });
        let h = self.header();
        let live = h.live.load(Ordering::Relaxed) as usize;
        let used = h.used.load(Ordering::Relaxed) as usize;
        let Some((i, w)) = free.filter(|&(_, w)| {
            live < self.layout.capacity && (w == TOMB || used < self.layout.max_used())
        }) else {
            return Err(ShmError::CapacityFull {
                capacity: self.layout.capacity,
            });
        };
        if self
            .slot(i)
            .compare_exchange(w, new, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            return Err(ShmError::BadLayout(format!(
                "slot {i} changed while the key lock was held: the table is corrupt"
            )));
        }
        h.live.fetch_add(1, Ordering::Relaxed);
        if w == 0 {
            h.used.fetch_add(1, Ordering::Relaxed);
        }
        Ok(true)
    }

    /// Deletes `key` and frees its block at once; false if it was absent.
    /// Never allocates.
    pub fn delete(&self, key: &str, pid: u32) -> Result<bool, ShmError> {
        let k = key.as_bytes();
        let hash = block::key_hash(k);
        if self.lookup(k, hash, None, pid)?.is_none() {
            return Ok(false);
        }
        let lock = self.key_lock(pid)?;
        let mut last = None;
        // Under the key lock nothing moves: the key stays in its slot while
        // writers may replace its value.
        let (i, old) = loop {
            let found = self.lookup(k, hash, None, pid)?;
            let Some((i, w)) = found else {
                return Ok(false); // deleted before we held the lock
            };
            check_progress(&mut last, found, k)?;
            if self
                .slot(i)
                .compare_exchange(w, TOMB, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
            {
                break (i, w);
            }
        };
        self.header().live.fetch_sub(1, Ordering::Relaxed);
        self.close_hole(i)?;
        drop(lock);
        self.arena().retire(old, pid);
        Ok(true)
    }

    /// Under the key lock: closes the hole at slot `hole` by moving back the
    /// entries after it that may move, then empties the last hole.
    fn close_hole(&self, mut hole: usize) -> Result<(), ShmError> {
        let mask = self.layout.nslots - 1;
        let mut j = hole;
        for _ in 1..self.layout.nslots {
            j = (j + 1) & mask;
            let home = match self.read_slot(j, |e: &Snapshot<'_>| self.layout.home(e.hash))? {
                Slot::Empty => break,
                // Another hole (one a dead holder left): an entry past it
                // may still move into ours; it is closed in its turn.
                Slot::Tomb => continue,
                Slot::Entry(_, home) => home,
            };
            // An entry whose home lies in (hole, j] must not pass the hole.
            let (to_home, to_j) = (home.wrapping_sub(hole) & mask, j.wrapping_sub(hole) & mask);
            if to_home != 0 && to_home <= to_j {
                continue;
            }
            self.move_entry(j, hole);
            hole = j;
        }
        self.slot(hole).store(0, Ordering::Release);
        self.header().used.fetch_sub(1, Ordering::Relaxed);
        Ok(())
    }

    /// Under the key lock: moves the entry in slot `from` to the hole `to`
    /// (see the module's docs); `from` is the hole after.
    fn move_entry(&self, from: usize, to: usize) {
        let h = self.header();
        h.move_from.store(from as u64, Ordering::Relaxed);
        h.move_to.store(to as u64, Ordering::Relaxed);
        h.moves.fetch_add(1, Ordering::Relaxed);
        // Seqlock writer side: a lookup that reads any slot written below
        // also reads `moves` odd or past.
        fence(Ordering::Release);
        let word = self.slot(from);
        let mut w = word.load(Ordering::Acquire);
        // A writer may replace the value until the mark is on.
        while let Err(now) =
            word.compare_exchange_weak(w, w | MOVING, Ordering::AcqRel, Ordering::Acquire)
        {
            w = now;
        }
        self.slot(to).store(w | MOVING, Ordering::Release);
        crate::hooks::at(crate::hooks::Window::EntryMoving);
        word.store(TOMB, Ordering::Release);
        self.slot(to).store(w, Ordering::Release);
        h.moves.fetch_add(1, Ordering::Release);
    }

    /// Under the key lock, after its holder died (or a corrupt word): ends
    /// the recorded move, unmarks what is marked, closes every hole and
    /// recounts the counters.
    fn repair_chains(&self) -> Result<(), ShmError> {
        let h = self.header();
        let n = self.layout.nslots;
        let marked = |w: u64| w != TOMB && w & MOVING != 0;
        if h.moves.load(Ordering::Acquire) & 1 == 1 {
            let from = h.move_from.load(Ordering::Relaxed) as usize;
            let to = h.move_to.load(Ordering::Relaxed) as usize;
            if from < n && to < n && from != to {
                let (wf, wt) = (
                    self.slot(from).load(Ordering::Acquire),
                    self.slot(to).load(Ordering::Acquire),
                );
                match (marked(wf), marked(wt)) {
                    // Killed after marking `from`: the entry stays there.
                    (true, false) if wt == TOMB => {
                        self.slot(from).store(wf & !MOVING, Ordering::Release)
                    }
                    // Killed with the entry in both: finish the move.
                    (true, true) if wf == wt => {
                        self.slot(from).store(TOMB, Ordering::Release);
                        self.slot(to).store(wt & !MOVING, Ordering::Release);
                    }
                    // Killed after emptying `from`.
                    (false, true) if wf == TOMB => {
                        self.slot(to).store(wt & !MOVING, Ordering::Release)
                    }
                    _ => {}
                }
            }
            h.moves.fetch_add(1, Ordering::Release);
        }
        // A mark nothing explains (a corrupt word) is dropped.
        for i in 0..n {
            let w = self.slot(i).load(Ordering::Acquire);
            if marked(w) {
                self.slot(i).store(w & !MOVING, Ordering::Release);
            }
        }
        for i in 0..n {
            if self.slot(i).load(Ordering::Acquire) == TOMB {
                h.used.fetch_add(1, Ordering::Relaxed); // close_hole counts it out
                self.close_hole(i)?;
            }
        }
        let (mut used, mut live) = (0, 0);
        for i in 0..n {
            match self.slot(i).load(Ordering::Acquire) {
                0 => {}
                TOMB => used += 1,
                _ => (used, live) = (used + 1, live + 1),
            }
        }
        h.used.store(used, Ordering::Relaxed);
        h.live.store(live, Ordering::Relaxed);
        Ok(())
    }

    /// Every live entry, once: (slot, slot word, what `take` copied of its
    /// block). A scan that entries moving spoiled (one seen twice or not at
    /// all) runs again; after a few, under the key lock.
    pub(super) fn scan<T>(
        &self,
        mut take: impl FnMut(&Snapshot<'_>) -> T,
        pid: u32,
    ) -> Result<Vec<(usize, u64, T)>, ShmError> {
        let moves = &self.header().moves;
        let mut once = |out: &mut Vec<(usize, u64, T)>| -> Result<(), ShmError> {
            out.clear();
            for i in 0..self.layout.nslots {
                if let Slot::Entry(w, t) = self.read_slot(i, &mut take)? {
                    out.push((i, w, t));
                }
            }
            Ok(())
        };
        let mut out = Vec::new();
        for _ in 0..SPOILED_SCANS {
            let before = moves.load(Ordering::Acquire);
            if before & 1 == 1 {
                spin();
                continue;
            }
            once(&mut out)?;
            fence(Ordering::Acquire);
            if moves.load(Ordering::Relaxed) == before {
                return Ok(out);
            }
        }
        let _lock = self.key_lock(pid)?;
        once(&mut out)?;
        Ok(out)
    }
}
