//! Where everything lives in the table's memory, in 64-bit words, and how a
//! slot names a block.
//!
//! ```text
//! word 0            header (HEADER_WORDS): magic, version, sizes, counters, locks, hints
//! slots             nslots words: 0 = empty, TOMB = a deleted key's hole, else a handle
//! page meta         per page: role word, extent word, generation floor, BITMAP_WORDS free-block hints
//! pages             page_count × PAGE_WORDS: blocks of one size class, or part of an extent
//! ```
//!
//! A handle is `moving:1 | generation:G | location:L`: the location is the
//! block's start in 64-byte units from the first page, plus one (so no
//! handle is 0), in as few bits as the arena needs; the generation takes the
//! low `G = min(40, 63 − L)` bits of the block's 40-bit generation. The top
//! bit marks a slot whose entry is being moved along its probe chain.

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
/// Words in the unit a handle's location counts (the smallest block).
const UNIT_WORDS: usize = MIN_BLOCK / 8;
/// Size classes: 64 B, 128 B, … 32 KiB; larger entries take an extent of pages.
#[cfg(not(loom))]
pub(crate) const CLASSES: usize = 10;
#[cfg(loom)]
pub(crate) const CLASSES: usize = 3;
/// The largest entry (header + key + value) kept in a block of a size class,
/// in bytes; a larger one takes whole pages.
pub const MAX_BLOCK: usize = MIN_BLOCK << (CLASSES - 1);
pub(crate) const BITMAP_WORDS: usize = (PAGE_BYTES / MIN_BLOCK).div_ceil(64);
/// Per page: the role word, the extent word, the generation floor, the hint bitmap.
pub(crate) const PAGE_META_WORDS: usize = 3 + BITMAP_WORDS;

/// Bits of a block's generation (in its meta word).
pub(crate) const GEN_BITS: u32 = 40;
/// Fewest generation bits a handle may carry: an `update_with` stalled
/// across 2^32 writes of its key (2^31 reuses of each of the two blocks a
/// hot key alternates between) still sees its conflict.
const MIN_HANDLE_GEN_BITS: u32 = 32;

/// A slot whose entry is being moved: set on both copies while the move
/// lasts (readers use either; writers wait).
pub(crate) const MOVING: u64 = 1 << 63;
/// A slot's word for a hole a delete left: no block. All ones is no handle
/// (a location is never all ones).
pub(crate) const TOMB: u64 = u64::MAX;

pub(crate) const MAGIC: u64 = u64::from_le_bytes(*b"XMEVTAB1");
/// Layout version: bump when anything in this file, `block.rs`, `page.rs`
/// or the meaning of a slot changes.
pub(crate) const VERSION: u64 = 3;

/// The table's header: its first `HEADER_WORDS` words, in four cache lines:
/// fixed sizes; the key-lock holder's words (which readers of missing keys
/// also load: `moves`); the page lock and hints; room for later counters.
#[repr(C)]
pub(crate) struct TableHeader {
    pub magic: AtomicU64,
    pub version: AtomicU64,
    /// Keys the table accepts.
    pub capacity: AtomicU64,
    pub nslots: AtomicU64,
    pub pages: AtomicU64,
    _fixed: [AtomicU64; 3],
    /// Pid-named lock taken to insert or delete a key (replacing a value does not).
    pub key_lock: AtomicU64,
    /// Slots that are not empty (live keys, and a delete's hole while it lasts).
    pub used: AtomicU64,
    /// Live keys.
    pub live: AtomicU64,
    /// Odd while an entry moves along its chain (see `chain.rs`): a lookup
    /// that found nothing trusts its answer only if `moves` was even and
    /// unchanged across it.
    pub moves: AtomicU64,
    /// The move in progress: from slot, to slot (for a taker of the key
    /// lock whose holder died mid-move).
    pub move_from: AtomicU64,
    pub move_to: AtomicU64,
    _keys: [AtomicU64; 2],
    /// Pid-named lock taken to change a page's role (give it to a class,
    /// close it, make or free an extent).
    pub page_lock: AtomicU64,
    /// Per size class: a page that had room lately.
    pub class_hint: [AtomicU64; CLASSES],
    /// Values stored (sets and read-modify-writes published), counted
    /// relaxed, for rates shown by tools; wraps.
    pub writes: AtomicU64,
    /// Room for later fields (process counts, rates) without moving the others.
    _reserved: [AtomicU64; HEADER_WORDS - 18 - CLASSES],
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
    /// Bits of a handle's location.
    loc_bits: u32,
    /// Bits of a handle's generation.
    gen_bits: u32,
}

impl Layout {
    /// The layout for `capacity` keys and an arena of at least `arena_bytes`.
    pub fn new(capacity: usize, arena_bytes: usize) -> Result<Layout, ShmError> {
        if capacity == 0 {
            return Err(ShmError::Config("capacity must be at least 1 key".into()));
        }
        // Load factor at most 1/2 keeps probe chains short (deletes move
        // entries back, so it stays so whatever the history).
        let nslots = capacity
            .checked_mul(2)
            .and_then(usize::checked_next_power_of_two)
            .filter(|&n| n <= 1 << 40)
            .ok_or_else(|| ShmError::Config(format!("capacity {capacity} is too large")))?;
        let page_count = arena_bytes.div_ceil(PAGE_BYTES).max(1);
        let too_large = || ShmError::Config(format!("arena of {arena_bytes} bytes is too large"));
        let units = page_count
            .checked_mul(PAGE_WORDS / UNIT_WORDS)
            .ok_or_else(too_large)?;
        // Locations 1..=units, never all ones; the rest of the word is generation.
        let loc_bits = usize::BITS - (units + 1).leading_zeros();
        let gen_bits = GEN_BITS.min(63 - loc_bits);
        if gen_bits < MIN_HANDLE_GEN_BITS {
            return Err(ShmError::Config(format!(
                "arena of {arena_bytes} bytes is too large: at most {} bytes keep a generation of {MIN_HANDLE_GEN_BITS} bits in each slot",
                ((1usize << (63 - MIN_HANDLE_GEN_BITS)) - 2) * MIN_BLOCK
            )));
        }
        let slots = HEADER_WORDS;
        let page_meta = slots + nslots;
        let pages = (page_meta + page_count * PAGE_META_WORDS).next_multiple_of(8);
        let total_words = pages + page_count * PAGE_WORDS;
        Ok(Layout {
            capacity,
            nslots,
            slots,
            page_count,
            page_meta,
            pages,
            total_words,
            loc_bits,
            gen_bits,
        })
    }

    /// Words the table needs.
    pub(crate) fn words(&self) -> usize {
        self.total_words
    }

    /// The home slot of a key of `hash`: its top bits after a Fibonacci
    /// multiply (FNV's low bits depend only on the keys' low bits, which
    /// similar keys share).
    pub(crate) fn home(&self, hash: u64) -> usize {
        let bits = self.nslots.trailing_zeros();
        if bits == 0 {
            return 0;
        }
        (hash.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> (64 - bits)) as usize
    }

    /// Bytes the table needs.
    pub fn bytes(&self) -> usize {
        self.total_words * 8
    }

    /// Bytes of the arena (its pages).
    pub fn arena_bytes(&self) -> usize {
        self.page_count * PAGE_BYTES
    }

    /// Slots a table may fill before refusing new keys (3/4 of them, so a
    /// probe always meets an empty slot soon).
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

    /// The page's generation floor: every generation its blocks had in
    /// earlier lives is below it.
    pub(crate) fn floor_word(&self, page: usize) -> usize {
        self.role_word(page) + 2
    }

    pub(crate) fn bitmap_word(&self, page: usize, i: usize) -> usize {
        self.role_word(page) + 3 + i
    }

    /// The page and word offset in it of the block starting at word `block`.
    pub(crate) fn block_position(&self, block: usize) -> Option<(usize, usize)> {
        let rel = block.checked_sub(self.pages)?;
        let page = rel / PAGE_WORDS;
        (page < self.page_count).then_some((page, rel % PAGE_WORDS))
    }

    /// The handle naming the block at word `block` in its life of
    /// `generation`. Never 0, [`TOMB`], nor marked [`MOVING`].
    pub(crate) fn handle(&self, generation: u64, block: usize) -> u64 {
        let loc = ((block - self.pages) / UNIT_WORDS + 1) as u64;
        ((generation & self.gen_mask()) << self.loc_bits) | loc
    }

    /// (generation bits, block word index) of a handle (its [`MOVING`] mark
    /// ignored); `None` if it names no block start of this arena.
    pub(crate) fn unhandle(&self, h: u64) -> Option<(u64, usize)> {
        let h = h & !MOVING;
        let loc = (h & ((1 << self.loc_bits) - 1)) as usize;
        let unit = loc.checked_sub(1)?;
        (unit < self.page_count * (PAGE_WORDS / UNIT_WORDS))
            .then(|| (h >> self.loc_bits, self.pages + unit * UNIT_WORDS))
    }

    /// The generation bits a handle keeps.
    pub(crate) fn gen_mask(&self) -> u64 {
        (1 << self.gen_bits) - 1
    }

    /// Whether a block's `generation` is the one a handle's `bits` name.
    pub(crate) fn same_generation(&self, generation: u64, bits: u64) -> bool {
        generation & self.gen_mask() == bits
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn handles_name_every_block_and_keep_enough_generation() {
        for arena in [4 * PAGE_BYTES, 16 << 20, 512 << 20, 8 << 30] {
            let l = Layout::new(100, arena).unwrap();
            assert!(l.gen_bits >= 32 && l.gen_bits <= GEN_BITS, "{l:?}");
            let last = l.pages + l.page_count * PAGE_WORDS - UNIT_WORDS;
            for block in [l.pages, l.pages + UNIT_WORDS, last] {
                for generation in [0, 1, (1 << GEN_BITS) - 1] {
                    let h = l.handle(generation, block);
                    assert!(h != 0 && h != TOMB && h & MOVING == 0);
                    assert_eq!(
                        l.unhandle(h | MOVING),
                        Some((generation & l.gen_mask(), block))
                    );
                }
            }
            assert_eq!(l.unhandle(0), None);
            assert_eq!(l.unhandle(TOMB), None);
        }
        // The default arena keeps all 40 bits of a block's generation.
        assert_eq!(Layout::new(100, 16 << 20).unwrap().gen_bits, GEN_BITS);
        assert!(matches!(
            Layout::new(100, 1 << 40),
            Err(ShmError::Config(_))
        ));
    }
}
