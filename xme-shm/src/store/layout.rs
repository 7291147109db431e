//! Where everything lives in the table's memory, in 64-bit words.
//!
//! ```text
//! word 0            header (HEADER_WORDS): magic, version, sizes, counters, locks, hints
//! slots             nslots words: 0 = empty, TOMB = a deleted key, else a block handle
//! page meta         per page: role word, extent word, BITMAP_WORDS free-block hints
//! pages             page_count × PAGE_WORDS: blocks of one size class, or part of an extent
//! ```

use crate::ShmError;
use crate::primitive::AtomicU64;

/// Bytes in a page; a page holds blocks of one size class, or is part of
/// one extent (a run of pages holding one large entry).
#[cfg(not(loom))]
pub const PAGE_BYTES: usize = 64 * 1024;
/// Tiny pages keep loom's models small.
#[cfg(loom)]
pub const PAGE_BYTES: usize = 512;
pub(crate) const PAGE_WORDS: usize = PAGE_BYTES / 8;
/// Smallest block, in bytes.
pub const MIN_BLOCK: usize = 64;
/// Size classes: 64 B, 128 B, … 32 KiB; larger entries take an extent of pages.
#[cfg(not(loom))]
pub(crate) const CLASSES: usize = 10;
#[cfg(loom)]
pub(crate) const CLASSES: usize = 3;
/// The largest entry (header + key + value) kept in a block of a size class,
/// in bytes; a larger one takes whole pages.
pub const MAX_BLOCK: usize = MIN_BLOCK << (CLASSES - 1);
pub(crate) const BITMAP_WORDS: usize = (PAGE_BYTES / MIN_BLOCK).div_ceil(64);
/// Per page: the role word, the extent word, the hint bitmap.
pub(crate) const PAGE_META_WORDS: usize = 2 + BITMAP_WORDS;

pub(crate) const MAGIC: u64 = u64::from_le_bytes(*b"XMEVTAB1");
/// Layout version: bump when anything in this file, `block.rs` or `page.rs` changes.
pub(crate) const VERSION: u64 = 2;

/// The table's header: its first `HEADER_WORDS` words.
#[repr(C)]
pub(crate) struct TableHeader {
    pub magic: AtomicU64,
    pub version: AtomicU64,
    /// Keys the table accepts.
    pub capacity: AtomicU64,
    pub nslots: AtomicU64,
    pub pages: AtomicU64,
    /// Slots that are not empty (live keys and tombstones).
    pub used: AtomicU64,
    /// Live keys.
    pub live: AtomicU64,
    /// Pid-named lock taken to insert or delete a key (replacing a value does not).
    pub key_lock: AtomicU64,
    /// Pid-named lock taken to change a page's role (give it to a class, make
    /// or free an extent).
    pub page_lock: AtomicU64,
    /// Per size class: a page that had room lately.
    pub class_hint: [AtomicU64; CLASSES],
    _reserved: [AtomicU64; HEADER_WORDS - 9 - CLASSES],
}
pub(crate) const HEADER_WORDS: usize = 32;
const _: () = assert!(
    std::mem::size_of::<TableHeader>() == HEADER_WORDS * std::mem::size_of::<AtomicU64>(),
    "the table header is HEADER_WORDS words"
);

impl TableHeader {
    /// The header at the start of the table's words.
    ///
    /// # Panics
    /// If `words` is shorter than the header (the table's callers check the
    /// mapping's size first).
    #[inline]
    pub fn of(words: &[AtomicU64]) -> &TableHeader {
        // SAFETY: `TableHeader` is `#[repr(C)]` and made only of `AtomicU64`
        // fields and arrays of them (std's, or loom's in models: the type of
        // `words`).
        unsafe { crate::primitive::view_words(words) }
    }
}

/// Positions of the parts of one table, in words from its start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    /// Keys the table accepts.
    pub capacity: usize,
    pub(crate) nslots: usize,
    pub(crate) slots: usize,
    pub(crate) page_count: usize,
    pub(crate) page_meta: usize,
    pub(crate) pages: usize,
    pub(crate) total_words: usize,
}

impl Layout {
    /// The layout for `capacity` keys and an arena of at least `arena_bytes`.
    pub fn new(capacity: usize, arena_bytes: usize) -> Result<Layout, ShmError> {
        if capacity == 0 {
            return Err(ShmError::Config("capacity must be at least 1 key".into()));
        }
        // Load factor at most 1/2 keeps probe chains short.
        let nslots = capacity
            .checked_mul(2)
            .and_then(usize::checked_next_power_of_two)
            .ok_or_else(|| ShmError::Config(format!("capacity {capacity} is too large")))?;
        let page_count = arena_bytes.div_ceil(PAGE_BYTES).max(1);
        let slots = HEADER_WORDS;
        let page_meta = slots + nslots;
        let pages = (page_meta + page_count * PAGE_META_WORDS).next_multiple_of(8);
        let total_words = pages + page_count * PAGE_WORDS;
        // Handles keep a block's word index in 40 bits (and all ones is TOMB).
        if total_words >= (1 << 40) - 1 || page_count >= 1 << 32 {
            return Err(ShmError::Config(format!(
                "arena of {arena_bytes} bytes is too large"
            )));
        }
        Ok(Layout {
            capacity,
            nslots,
            slots,
            page_count,
            page_meta,
            pages,
            total_words,
        })
    }

    /// Words the table needs.
    pub(crate) fn words(&self) -> usize {
        self.total_words
    }

    /// Bytes the table needs.
    pub fn bytes(&self) -> usize {
        self.total_words * 8
    }

    /// Bytes of the arena (its pages).
    pub fn arena_bytes(&self) -> usize {
        self.page_count * PAGE_BYTES
    }

    /// Slots a table may fill with keys and tombstones before refusing new
    /// keys (3/4 of them, so a probe always meets an empty slot soon).
    pub(crate) fn max_used(&self) -> usize {
        (self.nslots * 3 / 4).max(self.capacity)
    }

    /// The size class for an entry of `bytes`, if one is large enough.
    pub(crate) fn class_for(bytes: usize) -> Option<usize> {
        (0..CLASSES).find(|&c| MIN_BLOCK << c >= bytes)
    }

    pub(crate) fn class_words(class: usize) -> usize {
        (MIN_BLOCK << class) / 8
    }

    /// Blocks in a page of `class`.
    pub(crate) fn blocks_per_page(class: usize) -> usize {
        PAGE_WORDS / Self::class_words(class)
    }

    pub(crate) fn page_start(&self, page: usize) -> usize {
        self.pages + page * PAGE_WORDS
    }

    pub(crate) fn role_word(&self, page: usize) -> usize {
        self.page_meta + page * PAGE_META_WORDS
    }

    pub(crate) fn extent_word(&self, page: usize) -> usize {
        self.role_word(page) + 1
    }

    pub(crate) fn bitmap_word(&self, page: usize, i: usize) -> usize {
        self.role_word(page) + 2 + i
    }

    /// The page and word offset in it of the block starting at word `block`.
    pub(crate) fn block_position(&self, block: usize) -> Option<(usize, usize)> {
        let rel = block.checked_sub(self.pages)?;
        let page = rel / PAGE_WORDS;
        (page < self.page_count).then_some((page, rel % PAGE_WORDS))
    }
}
