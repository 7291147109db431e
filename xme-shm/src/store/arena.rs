//! The arena: pages that each hold blocks of one size class, or belong to
//! one *extent* (a run of pages holding one entry larger than a class block).
//!
//! - Taking a block of a class: in a page of the class (its role word, see
//!   `page.rs`), take a FREE block by CAS on its meta (`FREE → WRITING(pid)`,
//!   found through the page's bitmap of hints), then count it with a CAS on
//!   the role word that also checks the page is still in the same life. The
//!   block names its taker from its first instant, so a taker killed before
//!   counting leaves only a block `WRITING` by a dead pid, which the sweep
//!   frees, and a count one too low, which the next close makes exact.
//! - Freeing a block: CAS its meta to FREE with the next generation, then
//!   count it out; a count that reaches 0 (except on the class's current
//!   page) closes the page.
//! - Closing a class page (under the page lock): CAS its role to CLOSING,
//!   count the blocks that are not FREE, and store FREE (the next epoch) if
//!   there are none, else the class with the exact count. A taker that
//!   counts after the CLOSING CAS sees it and waits for the closer (taking
//!   the page lock); one that counted before it made the closer's CAS fail
//!   or happened before its count (the role word's RMWs are ordered). The
//!   sweep closes every class page this way, so after it the counts are
//!   exact and an empty page is free, whatever processes were killed where.
//! - Giving a FREE page to a class, making an extent and freeing one happen
//!   under the page lock (a pid-named word): they are rare, and a holder that
//!   died leaves only INIT or CLOSING pages, orphan TAILs or a freed HEAD,
//!   which the next holder repairs. Class pages are taken from the low end of
//!   the arena, extents from the high end, so small blocks do not split the
//!   runs large values need.
//!
//! Generations: a page's blocks start each life at the page's generation
//! floor, which a page leaving a life raises above every generation its
//! blocks had, and each free moves a block's generation on by one (40 bits).

use crate::ShmError;
use crate::hooks::{self, Window};
use crate::primitive::{AtomicU64, Ordering, fence};
use crate::store::block::{self, FREE, HEADER, Meta};
use crate::store::layout::{BITMAP_WORDS, CLASSES, GEN_BITS, Layout, PAGE_BYTES, TableHeader};
use crate::store::page::{ROLE_FREE, ROLE_HEAD, ROLE_INIT, ROLE_TAIL, Role};
use crate::store::word_lock;
use xme_core::sync::PidLock;

/// A view of the arena part of a table's memory.
#[derive(Clone, Copy)]
pub(crate) struct Arena<'m> {
    pub mem: &'m [AtomicU64],
    pub layout: Layout,
}

/// A block taken for a writer: where, its generation, and the epoch of its
/// page's life.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Taken {
    pub block: usize,
    pub generation: u64,
    pub epoch: u64,
}

/// What a count of the arena found (`Manager::check`). Counted without
/// stopping writers, so while processes write it is a close estimate.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ArenaStats {
    /// Pages given to a size class or to an extent.
    pub pages_used: usize,
    /// Pages in the arena.
    pub pages_total: usize,
    /// Pages in use that hold a live block or a live extent: equal to
    /// `pages_used` after a sweep with no writer at work.
    pub pages_live: usize,
    /// Class pages whose count of taken blocks differs from what their
    /// blocks say: 0 after a sweep with no writer at work.
    pub pages_miscounted: usize,
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
    pub(super) fn word(&self, i: usize) -> &'m AtomicU64 {
        &self.mem[i]
    }

    pub(super) fn role_word(&self, page: usize) -> &'m AtomicU64 {
        self.word(self.layout.role_word(page))
    }

    pub fn role(&self, page: usize) -> Role {
        Role::unpack(self.role_word(page).load(Ordering::Acquire))
    }

    pub(super) fn meta(&self, block: usize) -> &'m AtomicU64 {
        &block::header(self.mem, block).meta
    }

    /// Pages of the extent headed by `page` (checked to stay in the arena).
    pub(super) fn extent_pages(&self, page: usize) -> Option<usize> {
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

    pub(super) fn page_lock(&self, pid: u32) -> Result<PidLock<'m>, ShmError> {
        let lock = word_lock::take(&TableHeader::of(self.mem).page_lock, pid, "page")?;
        if lock.took_over() {
            self.repair();
        }
        Ok(lock)
    }

    /// The page lock if nobody holds it (no waiting).
    fn try_page_lock(&self, pid: u32) -> Option<PidLock<'m>> {
        let word = &TableHeader::of(self.mem).page_lock;
        if word.load(Ordering::Relaxed) != 0 {
            return None;
        }
        self.page_lock(pid).ok()
    }

    /// Takes a free block for an entry of `needed` bytes; `None` when no
    /// room is left.
    pub fn alloc(&self, needed: usize, pid: u32) -> Result<Option<Taken>, ShmError> {
        match Layout::class_for(needed) {
            Some(class) => self.alloc_in_class(class, pid),
            None => self.alloc_extent(needed.div_ceil(PAGE_BYTES), pid),
        }
    }

    fn alloc_in_class(&self, class: usize, pid: u32) -> Result<Option<Taken>, ShmError> {
        let pages = self.layout.page_count;
        let hint = &TableHeader::of(self.mem).class_hint[class];
        let start = hint.load(Ordering::Relaxed) as usize % pages;
        let per_page = Layout::blocks_per_page(class) as u64;
        for k in 0..pages {
            let page = (start + k) % pages;
            let r = self.role(page);
            if r.class() != Some(class) || r.closing() || r.count >= per_page {
                continue;
            }
            if let Some(taken) = self.take_in(page, r, pid)? {
                if k != 0 {
                    hint.store(page as u64, Ordering::Relaxed);
                }
                return Ok(Some(taken));
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
            let floor = self.floor(page);
            // Block 0 is ours, taken before anyone can see the page.
            self.meta(start)
                .store(Meta::writing(floor, pid), Ordering::Relaxed);
            for i in 1..per_page as usize {
                self.meta(start + i * words)
                    .store(Meta::free(floor), Ordering::Relaxed);
            }
            self.fill_hints(page, class);
            // Release publishes the metas above with the role.
            let ours = Role {
                epoch,
                count: 1,
                role: Role::of_class(class),
            };
            self.role_word(page).store(ours.pack(), Ordering::Release);
            drop(lock);
            hint.store(page as u64, Ordering::Relaxed);
            return Ok(Some(Taken {
                block: start,
                generation: floor,
                epoch,
            }));
        }
        Ok(None)
    }

    pub(super) fn floor(&self, page: usize) -> u64 {
        self.word(self.layout.floor_word(page))
            .load(Ordering::Relaxed)
            & ((1 << GEN_BITS) - 1)
    }

    /// Hints for every block of a fresh page but its first (taken).
    fn fill_hints(&self, page: usize, class: usize) {
        let n = Layout::blocks_per_page(class);
        for i in 0..BITMAP_WORDS {
            let bits = match n.saturating_sub(i * 64) {
                0 => 0,
                k if k >= 64 => u64::MAX,
                k => (1u64 << k) - 1,
            };
            let bits = if i == 0 { bits & !1 } else { bits };
            self.word(self.layout.bitmap_word(page, i))
                .store(bits, Ordering::Relaxed);
        }
    }

    /// Takes a FREE block in `page` (a page of `class` in its life of
    /// `epoch`) and counts it; `None` if the page has none or left that life.
    fn take_in(&self, page: usize, seen: Role, pid: u32) -> Result<Option<Taken>, ShmError> {
        let (epoch, Some(class)) = (seen.epoch, seen.class()) else {
            return Ok(None);
        };
        let Some((b, generation)) = self.take_free_block(page, class, pid) else {
            // The count said there was room. If nobody took or freed a
            // block meanwhile, it was low (a race with a close): make it
            // exact, so that takers skip the page.
            if self.role(page) == seen
                && let Some(_lock) = self.try_page_lock(pid)
            {
                self.close_locked(page, epoch, class, true);
            }
            return Ok(None);
        };
        hooks::at(Window::BlockTaken);
        if self.count_taken(page, epoch, class, b, generation, pid)? {
            Ok(Some(Taken {
                block: b,
                generation,
                epoch,
            }))
        } else {
            Ok(None)
        }
    }

    /// CASes a FREE block of `page` to `WRITING(pid)`: the hinted ones
    /// first, then every block (hints can be stale).
    fn take_free_block(&self, page: usize, class: usize, pid: u32) -> Option<(usize, u64)> {
        let words = Layout::class_words(class);
        let per_page = Layout::blocks_per_page(class);
        let start = self.layout.page_start(page);
        let try_take = |block: usize| -> Option<(usize, u64)> {
            let meta = self.meta(block);
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
        // The hints first: whether we win a hinted block or find it taken,
        // nobody else needs to try it.
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
        (0..per_page).find_map(|n| try_take(start + n * words))
    }

    /// Counts the block `b` just taken in `page`. `false` (the block given
    /// back) if the page left its life of `epoch` meanwhile: a closer found
    /// it empty before our block was taken.
    fn count_taken(
        &self,
        page: usize,
        epoch: u64,
        class: usize,
        b: usize,
        generation: u64,
        pid: u32,
    ) -> Result<bool, ShmError> {
        let word = self.role_word(page);
        let per_page = Layout::blocks_per_page(class) as u64;
        let mut waited = false;
        loop {
            let w = word.load(Ordering::Acquire);
            let r = Role::unpack(w);
            if r.epoch != epoch || r.class() != Some(class) {
                let _ = self.meta(b).compare_exchange(
                    Meta::writing(generation, pid),
                    Meta::unpack(Meta::writing(generation, pid)).freed(),
                    Ordering::AcqRel,
                    Ordering::Relaxed,
                );
                return Ok(false);
            }
            if r.closing() {
                // Its closer holds the page lock: wait for it (or repair it).
                drop(self.page_lock(pid)?);
                waited = true;
                continue;
            }
            // A closer that ran meanwhile counted the page's blocks; ours
            // among them unless it looked before our CAS, so add nothing:
            // a count too low is made exact by the next close, one too high
            // would keep the page from ever closing.
            let count = if waited {
                r.count
            } else {
                (r.count + 1).min(per_page)
            };
            // Release (even when the count does not change): our meta CAS
            // happens before the count any later closer starts from.
            if word
                .compare_exchange(
                    w,
                    r.with(r.role, count),
                    Ordering::AcqRel,
                    Ordering::Acquire,
                )
                .is_ok()
            {
                return Ok(true);
            }
        }
    }

    /// Counts out one block of `page` (class `class`, life `epoch`), just
    /// freed. Closes the page when its count reaches 0, unless it is its
    /// class's current page or the caller holds the page lock (`locked`).
    fn uncount(&self, page: usize, class: usize, epoch: u64, pid: u32, locked: bool) {
        let word = self.role_word(page);
        loop {
            let w = word.load(Ordering::Acquire);
            let r = Role::unpack(w);
            if r.epoch != epoch || r.class() != Some(class) {
                return; // its closer found it empty, counting without us
            }
            if r.closing() {
                if locked {
                    return; // not ours (a corrupt word): the holder closes only
                }
                // Its closer holds the page lock: wait for it. If the page
                // lock is stuck the count stays one high until a sweep.
                if self.page_lock(pid).is_err() {
                    return;
                }
                continue;
            }
            let count = r.count.saturating_sub(1);
            if word
                .compare_exchange(
                    w,
                    r.with(r.role, count),
                    Ordering::AcqRel,
                    Ordering::Acquire,
                )
                .is_ok()
            {
                let current = TableHeader::of(self.mem).class_hint[class].load(Ordering::Relaxed);
                if count == 0
                    && !locked
                    && page as u64 != current
                    && let Some(_lock) = self.try_page_lock(pid)
                {
                    self.close_locked(page, epoch, class, false);
                }
                return;
            }
        }
    }

    /// Under the page lock: closes `page` (class `class`, life `epoch`) if
    /// its count is 0, or whatever its count if `recount`: it becomes FREE
    /// if none of its blocks is taken, else keeps its class with the exact
    /// count.
    pub(super) fn close_locked(&self, page: usize, epoch: u64, class: usize, recount: bool) {
        let word = self.role_word(page);
        loop {
            let w = word.load(Ordering::Acquire);
            let r = Role::unpack(w);
            if r.epoch != epoch || r.class() != Some(class) || r.closing() {
                return;
            }
            if !recount && r.count != 0 {
                return;
            }
            let closing = r.with(Role::closing_of(class), r.count);
            // Acquire: every block counted before this CAS was taken before
            // it (the takers' count CASes release their meta CASes).
            if word
                .compare_exchange(w, closing, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
            {
                self.settle_closing(page);
                return;
            }
        }
    }

    /// Under the page lock, for a page whose role is CLOSING: counts its
    /// taken blocks and stores the outcome.
    pub(super) fn settle_closing(&self, page: usize) {
        let r = self.role(page);
        let Some(class) = r.class() else {
            return;
        };
        let words = Layout::class_words(class);
        let start = self.layout.page_start(page);
        let (mut taken, mut highest) = (0, 0);
        for i in 0..Layout::blocks_per_page(class) {
            let m = Meta::unpack(self.meta(start + i * words).load(Ordering::Acquire));
            if m.state != FREE {
                taken += 1;
            }
            highest = highest.max(m.generation);
        }
        if taken == 0 {
            // Every generation this life used is at most `highest`.
            self.word(self.layout.floor_word(page))
                .store(highest + 1, Ordering::Relaxed);
            self.role_word(page)
                .store(r.next(ROLE_FREE, 0), Ordering::Release);
        } else {
            self.role_word(page)
                .store(r.with(Role::of_class(class), taken), Ordering::Release);
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
    fn alloc_extent(&self, n: usize, pid: u32) -> Result<Option<Taken>, ShmError> {
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
                    let free = Role {
                        epoch: e + 1,
                        count: 0,
                        role: ROLE_FREE,
                    };
                    self.role_word(p).store(free.pack(), Ordering::Release);
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
        let generation = self.floor(head);
        let block = self.layout.page_start(head);
        self.word(self.layout.extent_word(head))
            .store(n as u64, Ordering::Relaxed);
        self.meta(block)
            .store(Meta::writing(generation, pid), Ordering::Relaxed);
        let head_role = Role {
            epoch,
            count: 0,
            role: ROLE_HEAD,
        };
        self.role_word(head)
            .store(head_role.pack(), Ordering::Release);
        drop(lock);
        Ok(Some(Taken {
            block,
            generation,
            epoch,
        }))
    }

    /// Frees the block at `block` (taken in its page's life of `epoch`) if
    /// its meta is still `expected`. `locked`: the caller holds the page lock.
    pub fn free(&self, block: usize, expected: u64, epoch: u64, pid: u32, locked: bool) -> bool {
        if self
            .meta(block)
            .compare_exchange(
                expected,
                Meta::unpack(expected).freed(),
                Ordering::AcqRel,
                Ordering::Acquire,
            )
            .is_err()
        {
            return false;
        }
        hooks::at(Window::BlockFreed);
        let Some((page, offset)) = self.layout.block_position(block) else {
            return true;
        };
        let r = self.role(page);
        if let Some(class) = r.class() {
            let n = offset / Layout::class_words(class);
            self.word(self.layout.bitmap_word(page, n / 64))
                .fetch_or(1 << (n % 64), Ordering::Release);
            self.uncount(page, class, epoch, pid, locked);
        } else if r.role == ROLE_HEAD {
            if locked {
                self.release_extent(page);
            } else if let Ok(_lock) = self.page_lock(pid) {
                // Without the lock (a holder stuck), the pages stay until
                // the next repair finds this freed head.
                self.release_extent(page);
            }
        }
        true
    }

    /// Makes the pages of the extent headed by `head` free (under the page lock).
    pub(super) fn release_extent(&self, head: usize) {
        let r = self.role(head);
        if r.role != ROLE_HEAD {
            return;
        }
        let meta = Meta::unpack(
            self.meta(self.layout.page_start(head))
                .load(Ordering::Acquire),
        );
        if meta.state != FREE {
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
        // The head's block had generations up to its freed one, exclusive.
        self.word(self.layout.floor_word(head))
            .store(meta.generation + 1, Ordering::Relaxed);
        self.role_word(head)
            .store(r.next(ROLE_FREE, 0), Ordering::Release);
    }

    /// Marks a block this pid wrote and published as `LIVE`.
    pub fn mark_live(&self, taken: Taken, pid: u32) {
        // Fails only if the block was already replaced and freed, or a
        // sweep marked it: nothing to do.
        let _ = self.meta(taken.block).compare_exchange(
            Meta::writing(taken.generation, pid),
            Meta::live(taken.generation),
            Ordering::AcqRel,
            Ordering::Relaxed,
        );
    }

    /// Frees a block whose handle was just replaced in its slot, whatever
    /// state it is in, as long as it still has that handle's generation.
    pub fn retire(&self, handle: u64, pid: u32) {
        let Some((bits, block)) = self.layout.unhandle(handle) else {
            return; // not a block of this arena (a corrupt handle)
        };
        let Some((page, offset)) = self.layout.block_position(block) else {
            return;
        };
        // The page must still be in a life with a block there: never CAS a
        // word that is now another block's data.
        let r = self.role(page);
        if self.block_room(page, offset, r).is_none() {
            return;
        }
        loop {
            let m = Meta::unpack(self.meta(block).load(Ordering::Acquire));
            if !self.layout.same_generation(m.generation, bits) || m.state == FREE {
                return; // already freed (by a sweep)
            }
            if self.free(block, m.pack(), r.epoch, pid, false) {
                return;
            }
        }
    }
}

// Keep the class count and page size consistent with the bitmap size and
// the role word's 16-bit count.
const _: () = assert!(PAGE_BYTES / crate::store::layout::MIN_BLOCK <= BITMAP_WORDS * 64);
const _: () = assert!(PAGE_BYTES / crate::store::layout::MIN_BLOCK < 1 << 16);
const _: () = assert!(CLASSES < ROLE_INIT as usize);
