//! What processes that died leave in the arena, and how it is counted:
//! the repair a taker of the page lock makes after a dead holder, the
//! sweep (blocks of dead writers, entries replaced by writers that died
//! before freeing them, and a close of every class page with an exact
//! count), and the arena's statistics.

use crate::primitive::Ordering;
use crate::store::arena::{Arena, ArenaStats};
use crate::store::block::{FREE, LIVE, Meta, WRITING};
use crate::store::layout::{GEN_BITS, Layout, PAGE_BYTES};
use crate::store::page::{ROLE_FREE, ROLE_HEAD, ROLE_INIT, ROLE_TAIL, Role};

impl Arena<'_> {
    /// Under the page lock: undoes what a holder that died left (INIT pages,
    /// CLOSING pages, TAILs without their HEAD, freed HEADs) and closes
    /// every empty class page.
    pub(super) fn repair(&self) {
        for page in 0..self.layout.page_count {
            let w = self.role_word(page).load(Ordering::Acquire);
            let r = Role::unpack(w);
            match r.role {
                ROLE_INIT => {
                    let floor = self.word(self.layout.floor_word(page));
                    floor.store(floor.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
                    self.role_word(page)
                        .store(r.next(ROLE_FREE, 0), Ordering::Release);
                }
                ROLE_TAIL => {
                    let head = self
                        .word(self.layout.extent_word(page))
                        .load(Ordering::Acquire) as usize;
                    let headed = head < page
                        && self.role(head).role == ROLE_HEAD
                        && self.extent_pages(head).is_some_and(|n| head + n > page);
                    if !headed {
                        self.role_word(page)
                            .store(r.next(ROLE_FREE, 0), Ordering::Release);
                    }
                }
                ROLE_HEAD => self.release_extent(page),
                _ if r.closing() => self.settle_closing(page),
                _ => {
                    // Empty class pages go back, even a class's current one
                    // (the arena may be full, and another class need it).
                    if let Some(class) = r.class()
                        && r.count == 0
                    {
                        self.close_locked(page, r.epoch, class, false);
                    }
                }
            }
        }
    }

    /// Every block of every class page and every extent: (block word index,
    /// bytes it spans, its page).
    pub fn blocks(&self) -> impl Iterator<Item = (usize, usize, usize)> + '_ {
        (0..self.layout.page_count).flat_map(move |page| {
            let r = self.role(page);
            let (n, words) = match r.class() {
                Some(c) => (Layout::blocks_per_page(c), Layout::class_words(c)),
                None if r.role == ROLE_HEAD => {
                    (1, self.extent_pages(page).unwrap_or(1) * PAGE_BYTES / 8)
                }
                None => (0, 1),
            };
            (0..n).map(move |i| (self.layout.page_start(page) + i * words, words * 8, page))
        })
    }

    /// Frees blocks left by dead processes (and entries replaced by writers
    /// that died before freeing them), repairs what a dead page-lock holder
    /// left, and closes every class page with an exact count (the empty
    /// ones become free). Holds the page lock throughout; if a live holder
    /// keeps it, does nothing.
    ///
    /// `published(block, generation)` says whether the block's entry may be
    /// in its slot (true when unsure). `alive(pid)` says whether a pid runs.
    pub fn sweep(
        &self,
        published: impl Fn(usize, u64) -> bool,
        alive: impl Fn(u32) -> bool,
        pid: u32,
    ) -> usize {
        let Ok(_lock) = self.page_lock(pid) else {
            return 0;
        };
        self.repair();
        let mut freed = 0;
        for page in 0..self.layout.page_count {
            let r = self.role(page);
            let (n, words) = match r.class() {
                Some(c) => (Layout::blocks_per_page(c), Layout::class_words(c)),
                None if r.role == ROLE_HEAD => (1, 0),
                None => continue,
            };
            for i in 0..n {
                let block = self.layout.page_start(page) + i * words;
                let meta = self.meta(block);
                let raw = meta.load(Ordering::Acquire);
                let m = Meta::unpack(raw);
                match m.state {
                    WRITING if !alive(m.owner) => {
                        if published(block, m.generation) {
                            let live = Meta::live(m.generation);
                            let _ = meta.compare_exchange(
                                raw,
                                live,
                                Ordering::AcqRel,
                                Ordering::Relaxed,
                            );
                        } else if self.free(block, raw, r.epoch, pid, true) {
                            freed += 1;
                        }
                    }
                    // A LIVE block no longer in its slot was replaced by a
                    // writer that died before freeing it (or is about to
                    // free it: one CAS wins).
                    LIVE if !published(block, m.generation)
                        && self.free(block, raw, r.epoch, pid, true) =>
                    {
                        freed += 1
                    }
                    _ => {}
                }
            }
        }
        for page in 0..self.layout.page_count {
            let r = self.role(page);
            if let Some(class) = r.class() {
                self.close_locked(page, r.epoch, class, true);
            }
        }
        freed
    }

    /// Moves the generation of every FREE block of a class page on by
    /// `reuses`, as that many takes and frees of each would (a test hook:
    /// it stands for billions of writes). Returns how many blocks.
    pub fn age_free_blocks(&self, reuses: u64) -> usize {
        let mut aged = 0;
        for (block, _, page) in self.blocks() {
            if self.role(page).class().is_none() {
                continue;
            }
            let meta = self.meta(block);
            let raw = meta.load(Ordering::Acquire);
            let m = Meta::unpack(raw);
            let older = Meta::free(m.generation.wrapping_add(reuses) & ((1 << GEN_BITS) - 1));
            if m.state == FREE
                && meta
                    .compare_exchange(raw, older, Ordering::AcqRel, Ordering::Relaxed)
                    .is_ok()
            {
                aged += 1;
            }
        }
        aged
    }

    /// Counts pages and blocks by state.
    pub fn stats(&self) -> ArenaStats {
        let mut s = ArenaStats {
            pages_total: self.layout.page_count,
            ..ArenaStats::default()
        };
        let mut taken = vec![0u64; self.layout.page_count];
        let mut live = vec![false; self.layout.page_count];
        for (block, bytes, page) in self.blocks() {
            match Meta::unpack(self.meta(block).load(Ordering::Acquire)).state {
                FREE => s.free_blocks += 1,
                LIVE => {
                    s.live_blocks += 1;
                    s.live_bytes += bytes;
                    taken[page] += 1;
                    live[page] = true;
                }
                _ => {
                    s.writing_blocks += 1;
                    taken[page] += 1;
                }
            }
        }
        for (page, &taken) in taken.iter().enumerate() {
            let r = self.role(page);
            if r.role != ROLE_FREE {
                s.pages_used += 1;
            }
            if r.class().is_some() && r.count != taken {
                s.pages_miscounted += 1;
            }
            let head = match r.role {
                ROLE_TAIL => self
                    .word(self.layout.extent_word(page))
                    .load(Ordering::Acquire) as usize,
                _ => page,
            };
            if live.get(head).copied().unwrap_or(false) {
                s.pages_live += 1;
            }
        }
        s
    }
}
