//! The arena: pages of fixed-size blocks per size class, found through
//! per-page bitmaps of *hints*. The block's meta word is the truth: taking a
//! block is a CAS `FREE → WRITING(pid)`, freeing is a CAS to `FREE` with the
//! next generation. A hint may be stale (a set bit for a taken block, a clear bit for a
//! free one); the sweep repairs hints, and allocation skips stale ones.
//!
//! Everything is a single atomic step, so a process killed anywhere leaves at
//! worst a block `WRITING` by a dead pid, which [`Arena::sweep`] frees (or marks
//! `LIVE` if it had been published).

use crate::block::{self, FREE, LIVE, Meta, WRITING};
use crate::layout::{BITMAP_WORDS, CLASSES, H_CLASS_HINT, Layout, PAGE_WORDS};
use crate::primitive::{AtomicU64, Ordering, fence};

/// A view of the arena part of a table's memory.
#[derive(Clone, Copy)]
pub(crate) struct Arena<'m> {
    pub mem: &'m [AtomicU64],
    pub layout: Layout,
}

/// What a consistency check of the arena found (`Manager::check`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ArenaStats {
    /// Pages given to a size class.
    pub pages_used: usize,
    /// Pages in the arena.
    pub pages_total: usize,
    /// Blocks holding a published entry.
    pub live_blocks: usize,
    /// Free blocks in assigned pages.
    pub free_blocks: usize,
    /// Blocks being written by a live process.
    pub writing_blocks: usize,
    /// Bytes in live blocks.
    pub live_bytes: usize,
}

impl<'m> Arena<'m> {
    fn word(&self, i: usize) -> &'m AtomicU64 {
        &self.mem[i]
    }

    /// Takes a free block of `class` for `pid`; returns its word index and generation.
    pub fn alloc(&self, class: usize, pid: u32) -> Option<(usize, u64)> {
        let pages = self.layout.page_count;
        let hint = self.word(H_CLASS_HINT + class);
        let start = hint.load(Ordering::Relaxed) as usize % pages;
        let want = class as u64 + 1;
        for k in 0..pages {
            let page = (start + k) % pages;
            let class_word = self.word(self.layout.page_class_word(page));
            let mut c = class_word.load(Ordering::Acquire);
            if c == 0 {
                // Give this empty page to our class; fill its hints.
                match class_word.compare_exchange(0, want, Ordering::AcqRel, Ordering::Acquire) {
                    Ok(_) => {
                        self.fill_hints(page, class);
                        c = want;
                    }
                    Err(other) => c = other,
                }
            }
            if c != want {
                continue;
            }
            if let Some(found) = self.alloc_in_page(page, class, pid) {
                hint.store(page as u64, Ordering::Relaxed);
                return Some(found);
            }
        }
        None
    }

    fn fill_hints(&self, page: usize, class: usize) {
        let n = Layout::blocks_per_page(class);
        for i in 0..BITMAP_WORDS {
            let bits = match n.saturating_sub(i * 64) {
                0 => 0,
                k if k >= 64 => u64::MAX,
                k => (1u64 << k) - 1,
            };
            if bits != 0 {
                self.word(self.layout.bitmap_word(page, i))
                    .fetch_or(bits, Ordering::Release);
            }
        }
    }

    fn alloc_in_page(&self, page: usize, class: usize, pid: u32) -> Option<(usize, u64)> {
        let class_words = Layout::class_words(class);
        for i in 0..BITMAP_WORDS {
            let bitmap = self.word(self.layout.bitmap_word(page, i));
            loop {
                let bits = bitmap.load(Ordering::Acquire);
                if bits == 0 {
                    break;
                }
                let bit = bits.trailing_zeros() as usize;
                let block = self.layout.page_start(page) + (i * 64 + bit) * class_words;
                // Clear the hint first: whether we win the block or find it taken,
                // nobody else needs to try it.
                bitmap.fetch_and(!(1u64 << bit), Ordering::AcqRel);
                let meta = self.word(block + block::W_META);
                let m = Meta::unpack(meta.load(Ordering::Acquire));
                if m.state != FREE {
                    continue;
                }
                let taken = Meta {
                    generation: m.generation,
                    owner: pid,
                    state: WRITING,
                }
                .pack();
                if meta
                    .compare_exchange(m.pack(), taken, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok()
                {
                    // Seqlock writer side: a reader that sees any of our data
                    // writes also sees the generation bump of the free before them.
                    fence(Ordering::Release);
                    return Some((block, m.generation));
                }
            }
        }
        None
    }

    /// Frees the block at `block` if its meta is still `expected`; sets its hint.
    pub fn free(&self, block: usize, expected: u64) -> bool {
        let meta = self.word(block + block::W_META);
        let freed = Meta::unpack(expected).freed();
        if meta
            .compare_exchange(expected, freed, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            return false;
        }
        self.set_hint(block);
        true
    }

    fn set_hint(&self, block: usize) {
        if let Some((page, offset)) = self.layout.block_position(block) {
            let c = self
                .word(self.layout.page_class_word(page))
                .load(Ordering::Acquire);
            let Some(class) = Layout::class_of(c) else {
                return;
            };
            let n = offset / Layout::class_words(class);
            self.word(self.layout.bitmap_word(page, n / 64))
                .fetch_or(1 << (n % 64), Ordering::Release);
        }
    }

    /// Marks a block this pid wrote and published as `LIVE`.
    pub fn mark_live(&self, block: usize, generation: u64, pid: u32) {
        let writing = Meta {
            generation,
            owner: pid,
            state: WRITING,
        }
        .pack();
        let live = Meta {
            generation,
            owner: 0,
            state: LIVE,
        }
        .pack();
        // Fails only if the block was already replaced and freed: nothing to do.
        let _ = self.word(block + block::W_META).compare_exchange(
            writing,
            live,
            Ordering::AcqRel,
            Ordering::Relaxed,
        );
    }

    /// Frees a block whose handle was just replaced in its slot, whatever
    /// state it is in, as long as it still has that handle's generation.
    pub fn retire(&self, handle: u64) {
        let (generation, block) = block::unhandle(handle);
        if self.layout.block_position(block).is_none() {
            return; // not a block of this arena (a corrupt handle)
        }
        let meta = self.word(block + block::W_META);
        loop {
            let m = Meta::unpack(meta.load(Ordering::Acquire));
            if m.generation != generation || m.state == FREE {
                return; // already freed (by a sweep)
            }
            if self.free(block, m.pack()) {
                return;
            }
        }
    }

    /// Visits every block of every assigned page: (block word index, class).
    pub fn blocks(&self) -> impl Iterator<Item = (usize, usize)> + '_ {
        (0..self.layout.page_count).flat_map(move |page| {
            // A page without a class (or with a corrupt class word) has no blocks.
            let class = Layout::class_of(
                self.word(self.layout.page_class_word(page))
                    .load(Ordering::Acquire),
            );
            let (n, words) = class.map_or((0, 1), |c| {
                (Layout::blocks_per_page(c), Layout::class_words(c))
            });
            let class = class.unwrap_or(0);
            (0..n).map(move |i| (self.layout.page_start(page) + i * words, class))
        })
    }

    /// Frees blocks left by dead processes and repairs hints.
    ///
    /// `published(block, generation)` says whether the table's slot recorded in the
    /// block holds this block's handle. `alive(pid)` says whether a pid runs.
    pub fn sweep(
        &self,
        published: impl Fn(usize, u64) -> bool,
        alive: impl Fn(u32) -> bool,
    ) -> usize {
        let mut freed = 0;
        for (block, _) in self.blocks() {
            let meta = self.word(block + block::W_META);
            let raw = meta.load(Ordering::Acquire);
            let m = Meta::unpack(raw);
            match m.state {
                FREE => self.set_hint(block),
                WRITING if !alive(m.owner) => {
                    if published(block, m.generation) {
                        let live = Meta {
                            owner: 0,
                            state: LIVE,
                            ..m
                        }
                        .pack();
                        let _ =
                            meta.compare_exchange(raw, live, Ordering::AcqRel, Ordering::Relaxed);
                    } else if self.free(block, raw) {
                        freed += 1;
                    }
                }
                // A LIVE block no longer in its slot was replaced by a writer that
                // died before freeing it (or is about to free it: one CAS wins).
                LIVE if !published(block, m.generation) && self.free(block, raw) => freed += 1,
                _ => {}
            }
        }
        freed
    }

    /// Counts blocks by state.
    pub fn stats(&self) -> ArenaStats {
        let mut s = ArenaStats {
            pages_total: self.layout.page_count,
            ..ArenaStats::default()
        };
        s.pages_used = (0..self.layout.page_count)
            .filter(|&p| {
                self.word(self.layout.page_class_word(p))
                    .load(Ordering::Acquire)
                    != 0
            })
            .count();
        for (block, class) in self.blocks() {
            match Meta::unpack(self.word(block + block::W_META).load(Ordering::Acquire)).state {
                FREE => s.free_blocks += 1,
                LIVE => {
                    s.live_blocks += 1;
                    s.live_bytes += Layout::class_words(class) * 8;
                }
                _ => s.writing_blocks += 1,
            }
        }
        s
    }
}

// Keep the class count and page size consistent with the bitmap size.
const _: () = assert!(PAGE_WORDS * 8 / crate::layout::MIN_BLOCK <= BITMAP_WORDS * 64);
const _: () = assert!(CLASSES <= 16);
