//! Where everything lives in the table's memory, in 64-bit words.
//!
//! ```text
//! word 0            header (HEADER_WORDS): magic, version, sizes, key count, class hints
//! slots             nslots words: 0 = empty, else a block handle
//! page meta         per page: class word + BITMAP_WORDS free-block hints
//! pages             page_count × PAGE_WORDS: blocks of one size class each
//! ```

use crate::ShmError;

/// Bytes in a page; a page holds blocks of one size class.
#[cfg(not(loom))]
pub const PAGE_BYTES: usize = 64 * 1024;
/// Tiny pages keep loom's models small.
#[cfg(loom)]
pub const PAGE_BYTES: usize = 512;
pub(crate) const PAGE_WORDS: usize = PAGE_BYTES / 8;
/// Smallest block, in bytes.
pub const MIN_BLOCK: usize = 64;
/// Size classes: 64 B, 128 B, … 64 KiB.
#[cfg(not(loom))]
pub(crate) const CLASSES: usize = 11;
#[cfg(loom)]
pub(crate) const CLASSES: usize = 3;
/// The largest entry a block can hold (header + key + value), in bytes.
pub const MAX_BLOCK: usize = MIN_BLOCK << (CLASSES - 1);
pub(crate) const BITMAP_WORDS: usize = (PAGE_BYTES / MIN_BLOCK).div_ceil(64);
pub(crate) const PAGE_META_WORDS: usize = 1 + BITMAP_WORDS;

pub(crate) const MAGIC: u64 = u64::from_le_bytes(*b"XMEVTAB1");
/// Layout version: bump when anything in this file or in `block.rs` changes.
pub(crate) const VERSION: u64 = 1;

pub(crate) const H_MAGIC: usize = 0;
pub(crate) const H_VERSION: usize = 1;
pub(crate) const H_CAPACITY: usize = 2;
pub(crate) const H_NSLOTS: usize = 3;
pub(crate) const H_PAGES: usize = 4;
pub(crate) const H_USED: usize = 5;
pub(crate) const H_CLASS_HINT: usize = 8;
pub(crate) const HEADER_WORDS: usize = H_CLASS_HINT + CLASSES + 5; // 24: room to grow

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
        let pages = page_meta + page_count * PAGE_META_WORDS;
        let total_words = pages + page_count * PAGE_WORDS;
        // Handles keep a block's word index in 40 bits.
        if total_words >= 1 << 40 {
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

    /// The size class for an entry of `bytes`, if one is large enough.
    pub(crate) fn class_for(bytes: usize) -> Option<usize> {
        (0..CLASSES).find(|&c| MIN_BLOCK << c >= bytes)
    }

    /// The size class a page's class word names (`class + 1`; 0: no class
    /// yet), or `None` for 0 and for a value no class has (a corrupt word).
    pub(crate) fn class_of(word: u64) -> Option<usize> {
        (1..=CLASSES as u64)
            .contains(&word)
            .then(|| word as usize - 1)
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

    pub(crate) fn page_class_word(&self, page: usize) -> usize {
        self.page_meta + page * PAGE_META_WORDS
    }

    pub(crate) fn bitmap_word(&self, page: usize, i: usize) -> usize {
        self.page_class_word(page) + 1 + i
    }

    /// The page and block number of the block starting at word `block`.
    pub(crate) fn block_position(&self, block: usize) -> Option<(usize, usize)> {
        let rel = block.checked_sub(self.pages)?;
        let page = rel / PAGE_WORDS;
        (page < self.page_count).then_some((page, rel % PAGE_WORDS))
    }
}
