//! The arena: pages that each hold blocks of one size class, or belong to
//! one *extent* (a run of pages holding one entry larger than a class block).
//!
//! Every page has a role word outside its data, `epoch:32 | count:16 |
//! role:8`: FREE, a size class (with `count` blocks taken or reserved),
//! INIT (being set up under the page lock), or the HEAD or a TAIL of an
//! extent. A page's role changes only with one CAS that also moves its epoch,
//! and readers re-check the role word with the block's meta, so a handle from
//! a page's earlier life never reads as valid.
//!
//! - Taking a block of a class: reserve one in a page of the class (CAS on
//!   the role word, `count + 1`; a page with a reservation cannot be freed),
//!   then take a FREE block by CAS on its meta (`FREE → WRITING(pid)`),
//!   found through the page's bitmap of hints.
//! - Freeing a block: CAS its meta to FREE with the next generation, then
//!   `count - 1`; the CAS that takes a page's count to 0 also makes the page
//!   FREE (except the class's current page, kept to avoid churn).
//! - Giving a FREE page to a class, making an extent and freeing one happen
//!   under the page lock (a pid-named word): they are rare, and a holder that
//!   died leaves only INIT pages, orphan TAILs or a freed HEAD, which the next
//!   holder repairs. Class pages are taken from the low end of the arena,
//!   extents from the high end, so small blocks do not split the runs large
//!   values need.
//!
//! A process killed anywhere leaves at worst a block `WRITING` by a dead pid
//! (freed by [`Arena::sweep`], or marked `LIVE` if it had been published), or
//! a page's count one too high (the page keeps serving its class).

use crate::ShmError;
use crate::primitive::{AtomicU64, Ordering, fence};
use crate::store::block::{self, FREE, HEADER, LIVE, Meta, WRITING};
use crate::store::layout::{BITMAP_WORDS, CLASSES, Layout, PAGE_BYTES, TableHeader};
use crate::store::word_lock;
use xme_core::sync::PidLock;

const ROLE_FREE: u64 = 0;
const ROLE_INIT: u64 = 0xf0;
const ROLE_HEAD: u64 = 0xf1;
const ROLE_TAIL: u64 = 0xf2;

/// A page's role word, unpacked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Role {
    pub epoch: u64,
    pub count: u64,
    pub role: u64,
}

impl Role {
    pub fn unpack(w: u64) -> Role {
        Role {
            epoch: w >> 32,
            count: (w >> 8) & 0xffff,
            role: w & 0xff,
        }
    }

    pub fn pack(self) -> u64 {
        ((self.epoch & 0xffff_ffff) << 32) | ((self.count & 0xffff) << 8) | (self.role & 0xff)
    }

    /// The size class of a class page.
    pub fn class(self) -> Option<usize> {
        (1..=CLASSES as u64)
            .contains(&self.role)
            .then(|| self.role as usize - 1)
    }

    fn of_class(class: usize) -> u64 {
        class as u64 + 1
    }

    /// This page in its next life, as `role`.
    fn next(self, role: u64, count: u64) -> u64 {
        Role {
            epoch: self.epoch.wrapping_add(1),
            count,
            role,
        }
        .pack()
    }
}

/// A view of the arena part of a table's memory.
#[derive(Clone, Copy)]
pub(crate) struct Arena<'m> {
    pub mem: &'m [AtomicU64],
    pub layout: Layout,
}

/// What a count of the arena found (`Manager::check`). Counted without
/// stopping writers, so while processes write it is a close estimate.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ArenaStats {
    /// Pages given to a size class or to an extent.
    pub pages_used: usize,
    /// Pages in the arena.
    pub pages_total: usize,
    /// Blocks and extents holding a published entry.
    pub live_blocks: usize,
    /// Free blocks in class pages.
    pub free_blocks: usize,
    /// Blocks being written by a live process.
    pub writing_blocks: usize,
    /// Bytes in live blocks and extents.
    pub live_bytes: usize,
}

impl<'m> Arena<'m> {
    fn word(&self, i: usize) -> &'m AtomicU64 {
        &self.mem[i]
    }

    fn role_word(&self, page: usize) -> &'m AtomicU64 {
        self.word(self.layout.role_word(page))
    }

    pub fn role(&self, page: usize) -> Role {
        Role::unpack(self.role_word(page).load(Ordering::Acquire))
    }

    /// Pages of the extent headed by `page` (checked to stay in the arena).
    fn extent_pages(&self, page: usize) -> Option<usize> {
        let n = self
            .word(self.layout.extent_word(page))
            .load(Ordering::Acquire) as usize;
        (n >= 1 && n <= self.layout.page_count - page).then_some(n)
    }

    /// Room for key and value in the block at `offset` words into `page`,
    /// whose role word reads `role`; `None` if no block starts there.
    pub fn block_room(&self, page: usize, offset: usize, role: Role) -> Option<usize> {
        if let Some(class) = role.class() {
            let words = Layout::class_words(class);
            return offset.is_multiple_of(words).then_some((words - HEADER) * 8);
        }
        (role.role == ROLE_HEAD && offset == 0)
            .then(|| self.extent_pages(page))
            .flatten()
            .map(|n| n * PAGE_BYTES - HEADER * 8)
    }

    fn page_lock(&self, pid: u32) -> Result<PidLock<'m>, ShmError> {
        let lock = word_lock::take(&TableHeader::of(self.mem).page_lock, pid, "page")?;
        if lock.took_over() {
            self.repair();
        }
        Ok(lock)
    }

    /// Takes a free block for an entry of `needed` bytes: its word index and
    /// generation; `None` when no room is left.
    pub fn alloc(&self, needed: usize, pid: u32) -> Result<Option<(usize, u64)>, ShmError> {
        match Layout::class_for(needed) {
            Some(class) => self.alloc_in_class(class, pid),
            None => self.alloc_extent(needed.div_ceil(PAGE_BYTES), pid),
        }
    }

    fn alloc_in_class(&self, class: usize, pid: u32) -> Result<Option<(usize, u64)>, ShmError> {
        let pages = self.layout.page_count;
        let hint = &TableHeader::of(self.mem).class_hint[class];
        let start = hint.load(Ordering::Relaxed) as usize % pages;
        let want = Role::of_class(class);
        let per_page = Layout::blocks_per_page(class) as u64;
        for k in 0..pages {
            let page = (start + k) % pages;
            let word = self.role_word(page);
            let mut w = word.load(Ordering::Acquire);
            loop {
                let r = Role::unpack(w);
                if r.role != want || r.count >= per_page {
                    break;
                }
                let reserved = Role {
                    count: r.count + 1,
                    ..r
                }
                .pack();
                match word.compare_exchange_weak(w, reserved, Ordering::AcqRel, Ordering::Acquire) {
                    Ok(_) => {
                        if let Some(found) = self.take_reserved(page, class, pid) {
                            hint.store(page as u64, Ordering::Relaxed);
                            return Ok(Some(found));
                        }
                        break;
                    }
                    Err(now) => w = now,
                }
            }
        }
        // No page of the class has room: give it a free page.
        let lock = self.page_lock(pid)?;
        for page in 0..pages {
            let Some(epoch) = self.claim_free(page) else {
                continue;
            };
            // Seqlock writer side: a reader holding a handle from the page's
            // earlier life that sees any write below also sees the role change.
            fence(Ordering::Release);
            let words = Layout::class_words(class);
            let start = self.layout.page_start(page);
            for i in 0..per_page as usize {
                block::header(self.mem, start + i * words).meta.store(
                    Meta::free(block::first_generation(epoch)),
                    Ordering::Relaxed,
                );
            }
            self.fill_hints(page, class);
            // One block reserved for us; Release publishes the metas above.
            let ours = Role {
                epoch,
                count: 1,
                role: want,
            };
            self.role_word(page).store(ours.pack(), Ordering::Release);
            drop(lock);
            hint.store(page as u64, Ordering::Relaxed);
            return Ok(self.take_reserved(page, class, pid));
        }
        Ok(None)
    }

    fn fill_hints(&self, page: usize, class: usize) {
        let n = Layout::blocks_per_page(class);
        for i in 0..BITMAP_WORDS {
            let bits = match n.saturating_sub(i * 64) {
                0 => 0,
                k if k >= 64 => u64::MAX,
                k => (1u64 << k) - 1,
            };
            self.word(self.layout.bitmap_word(page, i))
                .store(bits, Ordering::Relaxed);
        }
    }

    /// Takes a FREE block in `page`, where the caller holds a reservation
    /// (so one is free, or about to be freed by a live freer). Gives the
    /// reservation back and returns `None` only if the page's blocks never
    /// show one (a corrupt page).
    fn take_reserved(&self, page: usize, class: usize, pid: u32) -> Option<(usize, u64)> {
        let words = Layout::class_words(class);
        let per_page = Layout::blocks_per_page(class);
        let start = self.layout.page_start(page);
        let try_take = |block: usize| -> Option<(usize, u64)> {
            let meta = &block::header(self.mem, block).meta;
            let m = Meta::unpack(meta.load(Ordering::Acquire));
            if m.state != FREE {
                return None;
            }
            meta.compare_exchange(
                m.pack(),
                Meta::writing(m.generation, pid),
                Ordering::AcqRel,
                Ordering::Acquire,
            )
            .ok()?;
            // Seqlock writer side: a reader that sees any of our data
            // writes also sees the generation bump of the free before them.
            fence(Ordering::Release);
            Some((block, m.generation))
        };
        for _round in 0..64 {
            // The hints first: whether we win a hinted block or find it
            // taken, nobody else needs to try it.
            for i in 0..BITMAP_WORDS {
                let bitmap = self.word(self.layout.bitmap_word(page, i));
                loop {
                    let bits = bitmap.load(Ordering::Acquire);
                    if bits == 0 {
                        break;
                    }
                    let bit = bits.trailing_zeros() as usize;
                    bitmap.fetch_and(!(1u64 << bit), Ordering::AcqRel);
                    let n = i * 64 + bit;
                    if n < per_page
                        && let Some(found) = try_take(start + n * words)
                    {
                        return Some(found);
                    }
                }
            }
            // Hints can be stale (a free whose hint is not set yet): look at
            // every block.
            for n in 0..per_page {
                if let Some(found) = try_take(start + n * words) {
                    return Some(found);
                }
            }
            std::hint::spin_loop();
        }
        self.unreserve(page, class);
        None
    }

    /// Gives back one reservation of a class page; the last one frees the
    /// page (unless it is its class's current page).
    fn unreserve(&self, page: usize, class: usize) {
        let word = self.role_word(page);
        let current = TableHeader::of(self.mem).class_hint[class].load(Ordering::Relaxed) as usize;
        let mut w = word.load(Ordering::Acquire);
        loop {
            let r = Role::unpack(w);
            if r.class() != Some(class) || r.count == 0 {
                return; // not ours to change (a corrupt word)
            }
            let next = if r.count == 1 && page != current {
                r.next(ROLE_FREE, 0)
            } else {
                Role {
                    count: r.count - 1,
                    ..r
                }
                .pack()
            };
            match word.compare_exchange_weak(w, next, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return,
                Err(now) => w = now,
            }
        }
    }

    /// Moves a FREE page to INIT (under the page lock); its new epoch.
    fn claim_free(&self, page: usize) -> Option<u64> {
        let word = self.role_word(page);
        let w = word.load(Ordering::Acquire);
        let r = Role::unpack(w);
        (r.role == ROLE_FREE
            && word
                .compare_exchange(w, r.next(ROLE_INIT, 0), Ordering::AcqRel, Ordering::Acquire)
                .is_ok())
        .then(|| r.epoch.wrapping_add(1))
    }

    /// Makes an extent of `n` pages (from the high end of the arena).
    fn alloc_extent(&self, n: usize, pid: u32) -> Result<Option<(usize, u64)>, ShmError> {
        if n > self.layout.page_count {
            return Ok(None);
        }
        let lock = self.page_lock(pid)?;
        let mut run = 0;
        let mut head = None;
        for page in (0..self.layout.page_count).rev() {
            if self.role(page).role == ROLE_FREE {
                run += 1;
                if run == n {
                    head = Some(page);
                    break;
                }
            } else {
                run = 0;
            }
        }
        let Some(head) = head else {
            return Ok(None);
        };
        // Under the page lock only we move pages out of FREE.
        let mut epochs = Vec::with_capacity(n);
        for page in head..head + n {
            let Some(epoch) = self.claim_free(page) else {
                // Cannot happen unless the memory is corrupt: undo.
                for (p, e) in (head..).zip(&epochs) {
                    self.role_word(p).store(
                        Role {
                            epoch: e + 1,
                            count: 0,
                            role: ROLE_FREE,
                        }
                        .pack(),
                        Ordering::Release,
                    );
                }
                return Err(ShmError::BadLayout(format!(
                    "page {page} left the free pages while the page lock was held"
                )));
            };
            epochs.push(epoch);
        }
        fence(Ordering::Release);
        for (page, &epoch) in (head..).zip(&epochs).skip(1) {
            self.word(self.layout.extent_word(page))
                .store(head as u64, Ordering::Relaxed);
            let tail = Role {
                epoch,
                count: 0,
                role: ROLE_TAIL,
            };
            self.role_word(page).store(tail.pack(), Ordering::Release);
        }
        let epoch = epochs[0];
        let generation = block::first_generation(epoch);
        let block = self.layout.page_start(head);
        self.word(self.layout.extent_word(head))
            .store(n as u64, Ordering::Relaxed);
        block::header(self.mem, block)
            .meta
            .store(Meta::writing(generation, pid), Ordering::Relaxed);
        let head_role = Role {
            epoch,
            count: 0,
            role: ROLE_HEAD,
        };
        self.role_word(head)
            .store(head_role.pack(), Ordering::Release);
        drop(lock);
        Ok(Some((block, generation)))
    }

    /// Frees the block at `block` if its meta is still `expected`.
    pub fn free(&self, block: usize, expected: u64, pid: u32) -> bool {
        let meta = &block::header(self.mem, block).meta;
        let freed = Meta::unpack(expected).freed();
        if meta
            .compare_exchange(expected, freed, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            return false;
        }
        let Some((page, offset)) = self.layout.block_position(block) else {
            return true;
        };
        let r = self.role(page);
        if let Some(class) = r.class() {
            let n = offset / Layout::class_words(class);
            self.word(self.layout.bitmap_word(page, n / 64))
                .fetch_or(1 << (n % 64), Ordering::Release);
            self.unreserve(page, class);
        } else if r.role == ROLE_HEAD {
            // Without the lock (a holder stuck), the pages stay until the
            // next repair finds this freed head.
            if let Ok(_lock) = self.page_lock(pid) {
                self.release_extent(page);
            }
        }
        true
    }

    /// Makes the pages of the extent headed by `head` free (under the page lock).
    fn release_extent(&self, head: usize) {
        let r = self.role(head);
        if r.role != ROLE_HEAD {
            return;
        }
        let n = self.extent_pages(head).unwrap_or(1);
        for page in head + 1..head + n {
            let t = self.role(page);
            let of_head = self
                .word(self.layout.extent_word(page))
                .load(Ordering::Acquire)
                == head as u64;
            if t.role == ROLE_TAIL && of_head {
                self.role_word(page)
                    .store(t.next(ROLE_FREE, 0), Ordering::Release);
            }
        }
        self.role_word(head)
            .store(r.next(ROLE_FREE, 0), Ordering::Release);
    }

    /// Under the page lock: undoes what a holder that died left (INIT pages,
    /// TAILs without their HEAD, freed HEADs) and frees every empty class page.
    fn repair(&self) {
        for page in 0..self.layout.page_count {
            let w = self.role_word(page).load(Ordering::Acquire);
            let r = Role::unpack(w);
            match r.role {
                ROLE_INIT => self
                    .role_word(page)
                    .store(r.next(ROLE_FREE, 0), Ordering::Release),
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
                ROLE_HEAD => {
                    let meta = block::header(self.mem, self.layout.page_start(page))
                        .meta
                        .load(Ordering::Acquire);
                    if Meta::unpack(meta).state == FREE {
                        self.release_extent(page);
                    }
                }
                _ => {
                    // Empty class pages go back, even a class's current one
                    // (the arena may be full, and another class need it).
                    if r.class().is_some() && r.count == 0 {
                        {
                            let _ = self.role_word(page).compare_exchange(
                                w,
                                r.next(ROLE_FREE, 0),
                                Ordering::AcqRel,
                                Ordering::Relaxed,
                            );
                        }
                    }
                }
            }
        }
    }

    /// Marks a block this pid wrote and published as `LIVE`.
    pub fn mark_live(&self, block: usize, generation: u64, pid: u32) {
        let live = Meta {
            generation,
            owner: 0,
            state: LIVE,
        }
        .pack();
        // Fails only if the block was already replaced and freed: nothing to do.
        let _ = block::header(self.mem, block).meta.compare_exchange(
            Meta::writing(generation, pid),
            live,
            Ordering::AcqRel,
            Ordering::Relaxed,
        );
    }

    /// Frees a block whose handle was just replaced in its slot, whatever
    /// state it is in, as long as it still has that handle's generation.
    pub fn retire(&self, handle: u64, pid: u32) {
        let (generation, block) = block::unhandle(handle);
        let Some((page, offset)) = self.layout.block_position(block) else {
            return; // not a block of this arena (a corrupt handle)
        };
        // The page must still be in the life the handle came from: never CAS
        // a word that is now another page's data.
        let r = self.role(page);
        if self.block_room(page, offset, r).is_none() || !block::of_epoch(generation, r.epoch) {
            return;
        }
        let meta = &block::header(self.mem, block).meta;
        loop {
            let m = Meta::unpack(meta.load(Ordering::Acquire));
            if m.generation != generation || m.state == FREE {
                return; // already freed (by a sweep)
            }
            if self.free(block, m.pack(), pid) {
                return;
            }
        }
    }

    /// Every block of every class page and every extent: (block word index,
    /// bytes it spans).
    pub fn blocks(&self) -> impl Iterator<Item = (usize, usize)> + '_ {
        (0..self.layout.page_count).flat_map(move |page| {
            let r = self.role(page);
            let (n, words) = match r.class() {
                Some(c) => (Layout::blocks_per_page(c), Layout::class_words(c)),
                None if r.role == ROLE_HEAD => {
                    (1, self.extent_pages(page).unwrap_or(1) * PAGE_BYTES / 8)
                }
                None => (0, 1),
            };
            (0..n).map(move |i| (self.layout.page_start(page) + i * words, words * 8))
        })
    }

    /// Frees blocks left by dead processes, repairs the pages a dead page-lock
    /// holder left, and frees empty class pages.
    ///
    /// `published(block, generation)` says whether the table's slot recorded in the
    /// block holds this block's handle. `alive(pid)` says whether a pid runs.
    pub fn sweep(
        &self,
        published: impl Fn(usize, u64) -> bool,
        alive: impl Fn(u32) -> bool,
        pid: u32,
    ) -> usize {
        if let Ok(_lock) = self.page_lock(pid) {
            self.repair();
        }
        let mut freed = 0;
        let blocks: Vec<usize> = self.blocks().map(|(b, _)| b).collect();
        for block in blocks {
            let meta = &block::header(self.mem, block).meta;
            let raw = meta.load(Ordering::Acquire);
            let m = Meta::unpack(raw);
            match m.state {
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
                    } else if self.free(block, raw, pid) {
                        freed += 1;
                    }
                }
                // A LIVE block no longer in its slot was replaced by a writer that
                // died before freeing it (or is about to free it: one CAS wins).
                LIVE if !published(block, m.generation) && self.free(block, raw, pid) => freed += 1,
                _ => {}
            }
        }
        freed
    }

    /// Counts pages and blocks by state.
    pub fn stats(&self) -> ArenaStats {
        let mut s = ArenaStats {
            pages_total: self.layout.page_count,
            ..ArenaStats::default()
        };
        s.pages_used = (0..self.layout.page_count)
            .filter(|&p| self.role(p).role != ROLE_FREE)
            .count();
        for (block, bytes) in self.blocks() {
            match Meta::unpack(block::header(self.mem, block).meta.load(Ordering::Acquire)).state {
                FREE => s.free_blocks += 1,
                LIVE => {
                    s.live_blocks += 1;
                    s.live_bytes += bytes;
                }
                _ => s.writing_blocks += 1,
            }
        }
        s
    }
}

// Keep the class count and page size consistent with the bitmap size and
// the role word's 16-bit count.
const _: () = assert!(PAGE_BYTES / crate::store::layout::MIN_BLOCK <= BITMAP_WORDS * 64);
const _: () = assert!(PAGE_BYTES / crate::store::layout::MIN_BLOCK < 1 << 16);
const _: () = assert!(CLASSES < ROLE_INIT as usize);
