//! The lock-free value table: string keys to byte values, in shared memory.
//!
//! - A slot is one word: 0 (empty), [`TOMB`] (a deleted key: no block), or
//!   the handle of the block holding the key and its current value. Keys are
//!   placed by linear probing from their FNV hash.
//! - Replacing a key's value is lock-free: the writer fills a fresh block,
//!   publishes it with one CAS on the key's slot, then frees the block it
//!   replaced. A reader copies a block and checks its generation (and its
//!   page's role word) did not move, seqlock style, else retries.
//! - Inserting a new key and deleting one take the table's key lock (a
//!   pid-named word), so the probe chains do not change under them: an insert
//!   takes the first tombstone or empty slot of its chain, knowing the key is
//!   in no other slot; a delete leaves a tombstone, or an empty slot when the
//!   next slot is empty (and then empties the tombstones just before it),
//!   since no chain runs through such a slot. Deleting never allocates.
//!
//! A process killed at any instruction leaves each slot holding a whole old
//! or new entry; a key lock it held is taken over by the next taker, which
//! recounts the table's counters.

use crate::ShmError;
use crate::primitive::{AtomicU64, Ordering, fence};
use crate::store::arena::{Arena, ArenaStats, Role};
use crate::store::block::{self, HEADER, Meta, TOMB};
use crate::store::layout::{self, Layout, TableHeader};
use crate::store::word_lock;
use xme_core::sync::PidLock;

/// Longest key, in bytes.
pub const MAX_KEY: usize = 1024;

/// A value table over shared words.
#[derive(Clone, Copy)]
pub struct ValueTable<'m> {
    mem: &'m [AtomicU64],
    layout: Layout,
}

/// What a slot holds, for a reader.
enum Slot<T> {
    Empty,
    Tomb,
    /// A block's handle, and what the reader's copy returned.
    Entry(u64, T),
}

/// What a store did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stored {
    /// The key was new.
    Inserted,
    /// The key had a value, now replaced.
    Replaced,
}

/// Consecutive inconsistent reads of one unchanged slot after which the table
/// is reported corrupt (a live writer changes the slot long before).
const STALE_READS: u32 = 1 << 12;

/// Called before each publish attempt of a read-modify-write with what the
/// lookup found. A publish conflicts only when the key's slot changed since
/// its lookup, so the next lookup finds something else; finding the same
/// slot and handle again means the table is corrupt.
fn check_progress(
    last: &mut Option<Option<(usize, u64)>>,
    found: Option<(usize, u64)>,
    key: &[u8],
) -> Result<(), ShmError> {
    if *last == Some(found) {
        return Err(ShmError::BadLayout(format!(
            "key {:?} cannot be written: its slot does not change yet every write conflicts; the table is corrupt",
            String::from_utf8_lossy(key)
        )));
    }
    *last = Some(found);
    Ok(())
}

/// Whether block `e` holds `key`; copies the value into `value` if so and asked.
fn matches(e: &Snapshot<'_>, key: &[u8], hash: u64, value: Option<&mut Vec<u8>>) -> bool {
    if e.hash != hash & 0xffff_ffff || e.klen != key.len() || !block::equals(e.data, key) {
        return false;
    }
    if let Some(out) = value {
        block::load_bytes(&e.data[block::words(e.klen)..], e.vlen, out);
    }
    true
}

/// What [`ValueTable::snapshot`] lets a reader see of a block.
struct Snapshot<'m> {
    /// Low 32 bits of the key's hash.
    hash: u64,
    klen: usize,
    vlen: usize,
    /// The key's words, then the value's.
    data: &'m [AtomicU64],
}

/// What a publish expects to find in the key's slot.
#[derive(Clone, Copy)]
enum Expect {
    /// Anything: replace or insert.
    Any,
    /// Exactly this handle (0: the key is absent).
    Exactly(u64),
}

/// A publish that found something else than expected.
struct Conflict;

impl<'m> ValueTable<'m> {
    /// Makes a new table in zeroed memory of at least `layout.bytes()`.
    /// The table's header (its first words).
    #[inline]
    fn header(&self) -> &'m TableHeader {
        TableHeader::of(self.mem)
    }

    pub(crate) fn init(mem: &'m [AtomicU64], layout: Layout) -> Result<Self, ShmError> {
        if mem.len() < layout.total_words {
            return Err(ShmError::BadLayout(format!(
                "{} words of memory for a table of {}",
                mem.len(),
                layout.total_words
            )));
        }
        let h = TableHeader::of(mem);
        h.version.store(layout::VERSION, Ordering::Relaxed);
        h.capacity.store(layout.capacity as u64, Ordering::Relaxed);
        h.nslots.store(layout.nslots as u64, Ordering::Relaxed);
        h.pages.store(layout.page_count as u64, Ordering::Relaxed);
        // Release: whoever sees the magic sees the fields above.
        h.magic.store(layout::MAGIC, Ordering::Release);
        Ok(ValueTable { mem, layout })
    }

    /// Attaches to a table another process made in `mem`.
    pub(crate) fn attach(mem: &'m [AtomicU64]) -> Result<Self, ShmError> {
        if mem.len() < layout::HEADER_WORDS {
            return Err(ShmError::BadLayout(format!(
                "{} words of memory: too few for a table header",
                mem.len()
            )));
        }
        let h = TableHeader::of(mem);
        let magic = h.magic.load(Ordering::Acquire);
        if magic != layout::MAGIC {
            return Err(ShmError::BadLayout(format!("magic {magic:#x}")));
        }
        let version = h.version.load(Ordering::Acquire);
        if version != layout::VERSION {
            return Err(ShmError::BadLayout(format!(
                "layout version {version}, this build reads {}",
                layout::VERSION
            )));
        }
        let capacity = h.capacity.load(Ordering::Acquire) as usize;
        let pages = h.pages.load(Ordering::Acquire) as usize;
        let layout = Layout::new(capacity, pages.saturating_mul(layout::PAGE_BYTES))?;
        let nslots = h.nslots.load(Ordering::Acquire);
        if layout.nslots as u64 != nslots || layout.total_words > mem.len() {
            return Err(ShmError::BadLayout(format!(
                "sizes do not match: {} slots in the header, {} computed; {} words needed, {} mapped",
                nslots,
                layout.nslots,
                layout.total_words,
                mem.len()
            )));
        }
        Ok(ValueTable { mem, layout })
    }

    /// The table in `mem` with a layout [`attach`](Self::attach) or
    /// [`init`](Self::init) already checked against it.
    pub(crate) fn with_layout(mem: &'m [AtomicU64], layout: Layout) -> Self {
        debug_assert!(mem.len() >= layout.total_words);
        ValueTable { mem, layout }
    }

    /// The table's layout.
    pub fn layout(&self) -> Layout {
        self.layout
    }

    fn arena(&self) -> Arena<'m> {
        Arena {
            mem: self.mem,
            layout: self.layout,
        }
    }

    fn slot(&self, i: usize) -> &'m AtomicU64 {
        &self.mem[self.layout.slots + i]
    }

    fn probe(&self, hash: u64) -> impl Iterator<Item = usize> + use<> {
        let n = self.layout.nslots;
        let start = hash as usize & (n - 1);
        (0..n).map(move |k| (start + k) & (n - 1))
    }

    /// Takes the key lock; a taker that finds its holder dead recounts the
    /// counters the holder may have left half-updated.
    fn key_lock(&self, pid: u32) -> Result<PidLock<'m>, ShmError> {
        let lock = word_lock::take(&self.header().key_lock, pid, "key")?;
        if lock.took_over() {
            let (mut used, mut live) = (0, 0);
            for i in 0..self.layout.nslots {
                match self.slot(i).load(Ordering::Acquire) {
                    0 => {}
                    TOMB => used += 1,
                    _ => (used, live) = (used + 1, live + 1),
                }
            }
            self.header().used.store(used, Ordering::Relaxed);
            self.header().live.store(live, Ordering::Relaxed);
        }
        Ok(lock)
    }

    /// Reads block `h` the seqlock way: `copy` sees the block's key hash,
    /// lengths and data words (only when the lengths fit the block), and its
    /// result is kept only if neither the block's generation nor its page's
    /// role moved meanwhile. `None`: the block changed under us; reload the slot.
    fn snapshot<T>(
        &self,
        h: u64,
        copy: impl FnOnce(&Snapshot<'_>) -> T,
    ) -> Result<Option<T>, ShmError> {
        let (generation, b) = block::unhandle(h);
        let Some((page, offset)) = self.layout.block_position(b) else {
            return Err(ShmError::BadLayout(format!(
                "a slot holds an invalid handle {h:#x}"
            )));
        };
        let role_word = &self.mem[self.layout.role_word(page)];
        let r1 = role_word.load(Ordering::Acquire);
        let Some(room) = self.arena().block_room(page, offset, Role::unpack(r1)) else {
            return Ok(None); // the page has another role now
        };
        let meta = &block::header(self.mem, b).meta;
        let m1 = Meta::unpack(meta.load(Ordering::Acquire));
        if m1.generation != generation || m1.state == block::FREE {
            return Ok(None);
        }
        let place = block::header(self.mem, b).place.load(Ordering::Relaxed);
        let klen = block::header(self.mem, b).key_len.load(Ordering::Relaxed) as usize;
        let vlen = block::header(self.mem, b).value_len.load(Ordering::Relaxed) as usize;
        // Lengths from a block being reused may be garbage: never read past it.
        let fits = block::words(klen)
            .checked_add(block::words(vlen))
            .is_some_and(|w| w <= room / 8);
        let out = fits.then(|| {
            copy(&Snapshot {
                hash: place >> 32,
                klen,
                vlen,
                data: &self.mem[b + HEADER..],
            })
        });
        // Seqlock check: nothing we read came from a later owner of the block
        // or a later life of its page.
        fence(Ordering::Acquire);
        if Meta::unpack(meta.load(Ordering::Relaxed)).generation != generation
            || role_word.load(Ordering::Relaxed) != r1
        {
            return Ok(None);
        }
        Ok(out)
    }

    /// Reads slot `i`, copying its block the seqlock way (see
    /// [`snapshot`](Self::snapshot)) and reloading the slot while its block
    /// changes under the reader. A block changes only after its slot was
    /// given another word, so a slot that keeps the same handle while its
    /// block never reads consistently is corrupt: reported, never waited on.
    fn read_slot<T>(
        &self,
        i: usize,
        mut copy: impl FnMut(&Snapshot<'_>) -> T,
    ) -> Result<Slot<T>, ShmError> {
        let (mut last, mut same) = (0, 0u32);
        loop {
            let h = self.slot(i).load(Ordering::Acquire);
            match h {
                0 => return Ok(Slot::Empty),
                TOMB => return Ok(Slot::Tomb),
                _ => {}
            }
            if let Some(t) = self.snapshot(h, &mut copy)? {
                return Ok(Slot::Entry(h, t));
            }
            if h != last {
                (last, same) = (h, 0);
                continue;
            }
            same += 1;
            if same >= STALE_READS {
                return Err(ShmError::BadLayout(format!(
                    "slot {i} holds handle {h:#x}, whose block does not match it: the table is corrupt"
                )));
            }
            std::hint::spin_loop();
        }
    }

    /// Finds `key`: (slot, handle), copying its value into `value`.
    fn lookup(
        &self,
        key: &[u8],
        hash: u64,
        mut value: Option<&mut Vec<u8>>,
    ) -> Result<Option<(usize, u64)>, ShmError> {
        for i in self.probe(hash) {
            match self.read_slot(i, |e| matches(e, key, hash, value.as_deref_mut()))? {
                Slot::Empty => return Ok(None),
                Slot::Entry(h, true) => return Ok(Some((i, h))),
                Slot::Tomb | Slot::Entry(_, false) => {}
            }
        }
        Ok(None)
    }

    /// Copies `key`'s value into `out`; false if the key is absent.
    pub fn get_into(&self, key: &str, out: &mut Vec<u8>) -> Result<bool, ShmError> {
        let k = key.as_bytes();
        Ok(self.lookup(k, block::key_hash(k), Some(out))?.is_some())
    }

    /// Stores `value` under `key`, replacing any value.
    pub(crate) fn set(&self, key: &str, value: &[u8], pid: u32) -> Result<Stored, ShmError> {
        let (b, generation) = self.fill(key.as_bytes(), value, pid)?;
        match self.publish(key.as_bytes(), b, generation, pid, Expect::Any)? {
            Ok(stored) => Ok(stored),
            Err(Conflict) => unreachable!("Expect::Any never conflicts"),
        }
    }

    /// Deletes `key` and frees its block at once; false if it was absent.
    /// Never allocates.
    pub fn delete(&self, key: &str, pid: u32) -> Result<bool, ShmError> {
        let k = key.as_bytes();
        let hash = block::key_hash(k);
        let mut last = None;
        loop {
            let Some((i, h)) = self.lookup(k, hash, None)? else {
                return Ok(false);
            };
            check_progress(&mut last, Some((i, h)), k)?;
            let lock = self.key_lock(pid)?;
            let mask = self.layout.nslots - 1;
            // No chain runs through a slot followed by an empty one: it can
            // become empty itself (only key-lock holders fill empty slots).
            let next_empty = self.slot((i + 1) & mask).load(Ordering::Acquire) == 0;
            let new = if next_empty { 0 } else { TOMB };
            if self
                .slot(i)
                .compare_exchange(h, new, Ordering::AcqRel, Ordering::Acquire)
                .is_err()
            {
                continue; // replaced meanwhile: delete the new value
            }
            self.header().live.fetch_sub(1, Ordering::Relaxed);
            if next_empty {
                let mut emptied = 1;
                let mut j = i;
                for _ in 1..self.layout.nslots {
                    j = (j + mask) & mask;
                    if self
                        .slot(j)
                        .compare_exchange(TOMB, 0, Ordering::AcqRel, Ordering::Acquire)
                        .is_err()
                    {
                        break;
                    }
                    emptied += 1;
                }
                self.header().used.fetch_sub(emptied, Ordering::Relaxed);
            }
            drop(lock);
            self.arena().retire(h, pid);
            return Ok(true);
        }
    }

    /// Replaces `key`'s value with `f(current)` atomically: if another writer
    /// changed the key in between, `f` runs again on the new value. `f` may
    /// return `Ok(None)` to leave the key unchanged. Returns the bytes stored.
    pub fn update<E>(
        &self,
        key: &str,
        pid: u32,
        mut f: impl FnMut(Option<&[u8]>) -> Result<Option<Vec<u8>>, E>,
    ) -> Result<Result<Option<Vec<u8>>, E>, ShmError> {
        let k = key.as_bytes();
        let hash = block::key_hash(k);
        let mut current = Vec::new();
        let mut last = None;
        loop {
            let found = self.lookup(k, hash, Some(&mut current))?;
            check_progress(&mut last, found, k)?;
            let (expected, old) = match found {
                Some((_, h)) => (h, Some(current.as_slice())),
                None => (0, None),
            };
            let new = match f(old) {
                Ok(Some(new)) => new,
                Ok(None) => return Ok(Ok(None)),
                Err(e) => return Ok(Err(e)),
            };
            let (b, generation) = self.fill(k, &new, pid)?;
            if self
                .publish(k, b, generation, pid, Expect::Exactly(expected))?
                .is_ok()
            {
                return Ok(Ok(Some(new)));
            }
        }
    }

    /// Takes a block and writes `key` and `value` into it.
    fn fill(&self, key: &[u8], value: &[u8], pid: u32) -> Result<(usize, u64), ShmError> {
        if key.len() > MAX_KEY {
            return Err(ShmError::KeyTooLong {
                len: key.len(),
                max: MAX_KEY,
            });
        }
        let needed = block::entry_bytes(key.len(), value.len());
        let arena_bytes = self.layout.arena_bytes();
        if needed > arena_bytes {
            return Err(ShmError::ValueTooLarge {
                len: needed,
                max: arena_bytes,
            });
        }
        let arena = self.arena();
        let (b, generation) = match arena.alloc(needed, pid)? {
            Some(found) => found,
            None => {
                self.sweep(pid);
                arena.alloc(needed, pid)?.ok_or(ShmError::ArenaFull {
                    needed,
                    arena_bytes,
                })?
            }
        };
        block::header(self.mem, b)
            .key_len
            .store(key.len() as u64, Ordering::Relaxed);
        block::header(self.mem, b)
            .value_len
            .store(value.len() as u64, Ordering::Relaxed);
        let data = &self.mem[b + HEADER..];
        block::store_bytes(data, key);
        block::store_bytes(&data[block::words(key.len())..], value);
        Ok((b, generation))
    }

    /// Publishes the filled block `b` for `key`: in the key's slot if it has
    /// one, else (under the key lock) in the first tombstone or empty slot of
    /// its chain. Gives the block back on a conflict or an error.
    fn publish(
        &self,
        key: &[u8],
        b: usize,
        generation: u64,
        pid: u32,
        expect: Expect,
    ) -> Result<Result<Stored, Conflict>, ShmError> {
        let result = self.try_publish(key, b, generation, pid, expect);
        if !matches!(result, Ok(Ok(_))) {
            self.arena().free(b, Meta::writing(generation, pid), pid);
        }
        result
    }

    fn try_publish(
        &self,
        key: &[u8],
        b: usize,
        generation: u64,
        pid: u32,
        expect: Expect,
    ) -> Result<Result<Stored, Conflict>, ShmError> {
        let hash = block::key_hash(key);
        let new = block::handle(generation, b);
        let place = &block::header(self.mem, b).place;
        let mut last = None;
        loop {
            let found = self.lookup(key, hash, None)?;
            if let Expect::Exactly(want) = expect
                && found.map_or(0, |(_, h)| h) != want
            {
                return Ok(Err(Conflict));
            }
            check_progress(&mut last, found, key)?;
            if let Some((i, cur)) = found {
                place.store(i as u64 | (hash << 32), Ordering::Relaxed);
                // AcqRel: publishes the block's contents to readers of the slot.
                if self
                    .slot(i)
                    .compare_exchange(cur, new, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok()
                {
                    self.arena().mark_live(b, generation, pid);
                    self.arena().retire(cur, pid);
                    return Ok(Ok(Stored::Replaced));
                }
                continue;
            }
            // A new key: under the key lock no key is inserted or deleted, so
            // what the chain shows now stays true until we publish.
            let lock = self.key_lock(pid)?;
            if self.lookup(key, hash, None)?.is_some() {
                drop(lock); // inserted meanwhile: replace it
                last = None;
                continue;
            }
            let free = self.probe(hash).find_map(|i| {
                let w = self.slot(i).load(Ordering::Acquire);
                (w == 0 || w == TOMB).then_some((i, w))
            });
            let live = self.header().live.load(Ordering::Relaxed) as usize;
            let used = self.header().used.load(Ordering::Relaxed) as usize;
            let Some((i, w)) = free.filter(|&(_, w)| {
                live < self.layout.capacity && (w == TOMB || used < self.layout.max_used())
            }) else {
                return Err(ShmError::CapacityFull {
                    capacity: self.layout.capacity,
                });
            };
            place.store(i as u64 | (hash << 32), Ordering::Relaxed);
            if self
                .slot(i)
                .compare_exchange(w, new, Ordering::AcqRel, Ordering::Acquire)
                .is_err()
            {
                return Err(ShmError::BadLayout(format!(
                    "slot {i} changed while the key lock was held: the table is corrupt"
                )));
            }
            self.header().live.fetch_add(1, Ordering::Relaxed);
            if w == 0 {
                self.header().used.fetch_add(1, Ordering::Relaxed);
            }
            drop(lock);
            self.arena().mark_live(b, generation, pid);
            return Ok(Ok(Stored::Inserted));
        }
    }

    /// The live keys `want` accepts, with their values, in slot order.
    pub(crate) fn entries_where(
        &self,
        want: impl Fn(&[u8]) -> bool,
    ) -> Result<Vec<(String, Vec<u8>)>, ShmError> {
        self.scan(want, |e| {
            let mut value = Vec::new();
            block::load_bytes(&e.data[block::words(e.klen)..], e.vlen, &mut value);
            value
        })
    }

    /// The live keys `want` accepts, in slot order; copies no value.
    pub(crate) fn keys_where(&self, want: impl Fn(&[u8]) -> bool) -> Result<Vec<String>, ShmError> {
        Ok(self
            .scan(want, |_| ())?
            .into_iter()
            .map(|(k, ())| k)
            .collect())
    }

    /// Every live key `want` accepts, with what `take` copies of its block.
    fn scan<T>(
        &self,
        want: impl Fn(&[u8]) -> bool,
        take: impl Fn(&Snapshot<'_>) -> T,
    ) -> Result<Vec<(String, T)>, ShmError> {
        let mut out = Vec::new();
        for i in 0..self.layout.nslots {
            let copied = self.read_slot(i, |e| {
                let mut key = Vec::new();
                block::load_bytes(e.data, e.klen, &mut key);
                want(&key).then(|| (key, take(e)))
            })?;
            if let Slot::Entry(_, Some((key, taken))) = copied {
                let key = String::from_utf8(key).map_err(|_| {
                    ShmError::BadLayout(format!("slot {i} holds a key that is not UTF-8"))
                })?;
                out.push((key, taken));
            }
        }
        Ok(out)
    }

    /// Frees blocks left by processes that died while writing; returns how many.
    pub fn sweep(&self, pid: u32) -> usize {
        self.arena().sweep(
            |b, generation| {
                let place = block::header(self.mem, b).place.load(Ordering::Acquire);
                let slot = (place & 0xffff_ffff) as usize;
                slot < self.layout.nslots
                    && self.slot(slot).load(Ordering::Acquire) == block::handle(generation, b)
            },
            crate::store::word_lock::alive,
            pid,
        )
    }

    /// Checks every slot's block reads consistently (waiting out writers,
    /// so it is safe while other processes write) and no block is in two
    /// slots. Returns block counts.
    pub fn check(&self) -> Result<ArenaStats, ShmError> {
        let mut seen = std::collections::HashSet::new();
        for i in 0..self.layout.nslots {
            if let Slot::Entry(h, ()) = self.read_slot(i, |_| ())?
                && !seen.insert(h)
            {
                return Err(ShmError::BadLayout(format!(
                    "handle {h:#x} is in two slots"
                )));
            }
        }
        Ok(self.arena().stats())
    }

    /// Slots taken by keys and tombstones.
    pub fn keys_claimed(&self) -> usize {
        self.header().used.load(Ordering::Acquire) as usize
    }

    /// Live keys, as counted by inserts and deletes.
    #[cfg(loom)]
    pub fn live_keys(&self) -> usize {
        self.header().live.load(Ordering::Acquire) as usize
    }
}

#[cfg(all(test, loom))]
mod loom_models {
    //! `RUSTFLAGS="--cfg loom" cargo test -p xme-shm --release --lib`

    use super::*;
    use loom::sync::Arc;
    use loom::thread;

    fn model(f: impl Fn() + Sync + Send + 'static) {
        xme_core::sync::loom_model(2, f);
    }

    /// A table of 2 slots over 4 tiny pages.
    fn table() -> (Arc<Vec<AtomicU64>>, Layout) {
        let layout = Layout::new(1, 4 * layout::PAGE_BYTES).unwrap();
        let mem: Vec<AtomicU64> = (0..layout.total_words).map(|_| AtomicU64::new(0)).collect();
        let mem = Arc::new(mem);
        ValueTable::init(&mem, layout).unwrap();
        (mem, layout)
    }

    fn value(id: u8) -> Vec<u8> {
        vec![id; 24]
    }

    fn whole(v: &[u8]) -> Option<u8> {
        (v.len() == 24 && v.iter().all(|&b| b == v[0])).then_some(v[0])
    }

    #[test]
    fn a_reader_sees_a_whole_old_or_new_value_while_blocks_are_reused() {
        model(|| {
            let (mem, _) = table();
            ValueTable::attach(&mem)
                .unwrap()
                .set("k", &value(1), 1)
                .unwrap();
            let m2 = mem.clone();
            let writer = thread::spawn(move || {
                let t = ValueTable::attach(&m2).unwrap();
                t.set("k", &value(2), 2).unwrap(); // frees value 1's block
                t.set("k", &value(3), 2).unwrap(); // may reuse it
            });
            let t = ValueTable::attach(&mem).unwrap();
            let mut out = Vec::new();
            assert!(t.get_into("k", &mut out).unwrap());
            let id = whole(&out).expect("torn read");
            assert!((1..=3).contains(&id));
            writer.join().unwrap();
            assert!(t.get_into("k", &mut out).unwrap());
            assert_eq!(whole(&out), Some(3));
            let stats = t.check().unwrap();
            assert_eq!(stats.live_blocks, 1);
        });
    }

    #[test]
    fn concurrent_updates_lose_nothing() {
        model(|| {
            let (mem, _) = table();
            let t = ValueTable::attach(&mem).unwrap();
            t.set("n", &[0], 1).unwrap();
            let bump = |t: &ValueTable<'_>, pid| {
                t.update("n", pid, |old| Ok::<_, ()>(Some(vec![old.unwrap()[0] + 1])))
                    .unwrap()
                    .unwrap();
            };
            let m2 = mem.clone();
            let other = thread::spawn(move || bump(&ValueTable::attach(&m2).unwrap(), 2));
            bump(&t, 1);
            other.join().unwrap();
            let mut out = Vec::new();
            assert!(t.get_into("n", &mut out).unwrap());
            assert_eq!(out, [2]);
        });
    }

    #[test]
    fn delete_and_set_race_to_a_whole_state() {
        model(|| {
            let (mem, _) = table();
            let t = ValueTable::attach(&mem).unwrap();
            t.set("k", &value(1), 1).unwrap();
            let m2 = mem.clone();
            let other = thread::spawn(move || {
                ValueTable::attach(&m2).unwrap().delete("k", 2).unwrap();
            });
            t.set("k", &value(2), 1).unwrap();
            other.join().unwrap();
            let mut out = Vec::new();
            if t.get_into("k", &mut out).unwrap() {
                assert_eq!(whole(&out), Some(2));
            }
            let present = t.get_into("k", &mut out).unwrap();
            assert_eq!(t.live_keys(), usize::from(present));
            assert!(t.keys_claimed() <= 1);
            t.check().unwrap();
        });
    }

    /// Two keys whose probe chains start at the same slot of a 4-slot table.
    fn colliding_keys() -> (String, String) {
        let keys: Vec<String> = (0..64).map(|i| format!("k{i}")).collect();
        let start = |k: &String| block::key_hash(k.as_bytes()) & 3;
        for a in &keys {
            if let Some(b) = keys.iter().find(|b| *b != a && start(b) == start(a)) {
                return (a.clone(), b.clone());
            }
        }
        unreachable!("64 keys over 4 slots collide")
    }

    #[test]
    fn deleting_a_key_never_hides_the_key_after_it_in_its_chain() {
        model(|| {
            let layout = Layout::new(2, 4 * layout::PAGE_BYTES).unwrap();
            let mem: Vec<AtomicU64> = (0..layout.total_words).map(|_| AtomicU64::new(0)).collect();
            let mem = Arc::new(mem);
            let t = ValueTable::init(&mem, layout).unwrap();
            let (first, second) = colliding_keys();
            t.set(&first, &value(1), 1).unwrap();
            t.set(&second, &value(2), 1).unwrap();
            let m2 = mem.clone();
            let deleter = thread::spawn(move || {
                let t = ValueTable::attach(&m2).unwrap();
                assert!(t.delete(&first, 2).unwrap());
                // Set again: into the tombstone before `second`.
                t.set(&first, &value(3), 2).unwrap();
            });
            let mut out = Vec::new();
            assert!(t.get_into(&second, &mut out).unwrap(), "a delete hid a key");
            assert_eq!(whole(&out), Some(2));
            deleter.join().unwrap();
            assert_eq!(t.live_keys(), 2);
            assert_eq!(t.keys_claimed(), 2);
            t.check().unwrap();
        });
    }
}
