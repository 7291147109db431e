//! What a table holds, read from outside with loads only (for tools such as
//! the `xme` command, over a read-only mapping): its entries and how its
//! pages are used. Never takes a lock, never helps a writer: a scan that a
//! move or a write overlaps says so (`changing`) rather than wait.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;

use crate::ShmError;
use crate::store::block;
use crate::store::layout::{CLASSES, Layout, MIN_BLOCK};
use crate::store::page::{ROLE_FREE, ROLE_HEAD, ROLE_TAIL, Role};
use crate::store::table::{Slot, ValueTable};

/// How the arena's pages are used.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PageCensus {
    /// Pages in the arena.
    pub total: usize,
    /// Free pages.
    pub free: usize,
    /// Per size class (64 B, 128 B, … 32 KiB): pages, blocks counted taken.
    pub classes: Vec<ClassPages>,
    /// Extents (entries larger than 32 KiB), and the pages they take.
    pub extents: usize,
    /// Pages taken by extents, heads and tails.
    pub extent_pages: usize,
    /// Pages between two lives (being set up or closed) when read.
    pub changing: usize,
}

/// One size class's pages.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ClassPages {
    /// Bytes of one block of the class.
    pub block_bytes: usize,
    /// Pages given to the class.
    pub pages: usize,
    /// Blocks the pages count as taken.
    pub blocks_taken: usize,
    /// Blocks the pages hold in all.
    pub blocks_total: usize,
}

/// One entry, as copied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct EntryCopy {
    /// Bytes of the value.
    pub value_len: usize,
    /// The value's first bytes (as many as asked for the key).
    pub value: Vec<u8>,
}

impl ValueTable<'_> {
    /// Values stored so far (see `TableHeader::writes`).
    pub(crate) fn writes(&self) -> u64 {
        self.header().writes.load(Ordering::Relaxed)
    }

    /// Counts the pages by role.
    pub(crate) fn census_pages(&self) -> PageCensus {
        let layout = self.layout();
        let mut census = PageCensus {
            total: layout.page_count,
            classes: (0..CLASSES)
                .map(|c| ClassPages {
                    block_bytes: MIN_BLOCK << c,
                    ..ClassPages::default()
                })
                .collect(),
            ..PageCensus::default()
        };
        for page in 0..layout.page_count {
            let role = Role::unpack(self.mem[layout.role_word(page)].load(Ordering::Relaxed));
            match (role.class(), role.role) {
                (Some(c), _) if !role.closing() => {
                    let class = &mut census.classes[c];
                    class.pages += 1;
                    class.blocks_taken += role.count as usize;
                    class.blocks_total += Layout::blocks_per_page(c);
                }
                (None, ROLE_FREE) => census.free += 1,
                (None, ROLE_HEAD) => {
                    census.extents += 1;
                    census.extent_pages += 1;
                }
                (None, ROLE_TAIL) => census.extent_pages += 1,
                _ => census.changing += 1,
            }
        }
        census
    }

    /// Every entry, keyed by its key (lossy UTF-8), copying `want(key)`
    /// bytes of each value at most; and whether an entry moved along its
    /// chain while the slots were read (then a key may be missing).
    pub(crate) fn census_entries(
        &self,
        want: impl Fn(&[u8]) -> usize,
    ) -> Result<(BTreeMap<String, EntryCopy>, bool), ShmError> {
        let moves = &self.header().moves;
        let before = moves.load(Ordering::Acquire);
        let mut entries = BTreeMap::new();
        for i in 0..self.layout().nslots {
            let read = self.read_slot(i, |e| {
                let mut key = Vec::new();
                block::load_bytes(e.data, e.klen, &mut key);
                let mut value = Vec::new();
                let keep = want(&key).min(e.vlen);
                block::load_bytes(&e.data[block::words(e.klen)..], keep, &mut value);
                (key, e.vlen, value)
            })?;
            if let Slot::Entry(_, (key, value_len, value)) = read {
                entries.insert(
                    String::from_utf8_lossy(&key).into_owned(),
                    EntryCopy { value_len, value },
                );
            }
        }
        std::sync::atomic::fence(Ordering::Acquire);
        let changing = before & 1 == 1 || moves.load(Ordering::Relaxed) != before;
        Ok((entries, changing))
    }
}
