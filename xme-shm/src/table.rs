//! The lock-free value table: string keys to byte values, in shared memory.
//!
//! - A slot is one word: 0 (empty) or the handle of the block holding the key
//!   and its current value. Keys are placed by linear probing from their FNV
//!   hash; a slot never becomes empty again (a deleted key leaves a tombstone
//!   block), so a key can never end up in two slots.
//! - A writer fills a fresh block, then publishes it with one CAS on the slot;
//!   then it frees the block it replaced. A reader copies a block and checks
//!   its generation did not move (seqlock style), else retries. A process killed at
//!   any instruction leaves each slot holding a whole old or new entry.

use crate::ShmError;
use crate::arena::{Arena, ArenaStats};
use crate::block::{self, HEADER, Meta, TOMBSTONE, W_LENS, W_META, W_PLACE};
use crate::layout::{self, H_CAPACITY, H_MAGIC, H_NSLOTS, H_PAGES, H_USED, H_VERSION, Layout};
use crate::primitive::{AtomicU64, Ordering, fence};

/// Longest key, in bytes.
pub const MAX_KEY: usize = 1024;

/// A value table over shared words.
#[derive(Clone, Copy)]
pub struct ValueTable<'m> {
    mem: &'m [AtomicU64],
    layout: Layout,
}

/// What reading one block found.
enum Read {
    /// The block holds another key.
    OtherKey,
    /// The block holds our key; `true` if it is a tombstone.
    OurKey { deleted: bool },
}

/// Consecutive inconsistent reads of one unchanged slot after which the table
/// is reported corrupt (a live writer changes the slot long before).
const STALE_READS: u32 = 1 << 12;

/// Called before each publish attempt of a read-modify-write with what the
/// lookup found. A publish conflicts only when the key's slot changed since
/// its lookup, so the next lookup finds something else; finding the same
/// slot and handle again means the table is corrupt (two slots claim the
/// key, or an empty slot before it is not empty to the writer).
fn check_progress(
    last: &mut Option<Option<(usize, u64)>>,
    found: Option<(usize, u64)>,
    key: &str,
) -> Result<(), ShmError> {
    if *last == Some(found) {
        return Err(ShmError::BadLayout(format!(
            "key {key:?} cannot be written: its slot does not change yet every write conflicts; the table is corrupt"
        )));
    }
    *last = Some(found);
    Ok(())
}

/// What block `e` holds for a reader of `key`; copies the value into `value`
/// if asked and the key matches.
fn classify(
    e: &Snapshot<'_>,
    key: &[u8],
    hash: u64,
    scratch: &mut Vec<u8>,
    value: Option<&mut Vec<u8>>,
) -> Read {
    if e.hash != hash & 0xffff_ffff || e.klen != key.len() {
        return Read::OtherKey;
    }
    block::load_bytes(e.data, e.klen, scratch);
    if scratch != key {
        return Read::OtherKey;
    }
    if let Some(out) = value {
        block::load_bytes(&e.data[block::words(e.klen)..], e.vlen, out);
    }
    Read::OurKey { deleted: e.deleted }
}

/// What [`ValueTable::snapshot`] lets a reader see of a block.
struct Snapshot<'m> {
    /// Low 32 bits of the key's hash.
    hash: u64,
    klen: usize,
    vlen: usize,
    deleted: bool,
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
    pub(crate) fn init(mem: &'m [AtomicU64], layout: Layout) -> Result<Self, ShmError> {
        if mem.len() < layout.total_words {
            return Err(ShmError::BadLayout(format!(
                "{} words of memory for a table of {}",
                mem.len(),
                layout.total_words
            )));
        }
        mem[H_VERSION].store(layout::VERSION, Ordering::Relaxed);
        mem[H_CAPACITY].store(layout.capacity as u64, Ordering::Relaxed);
        mem[H_NSLOTS].store(layout.nslots as u64, Ordering::Relaxed);
        mem[H_PAGES].store(layout.page_count as u64, Ordering::Relaxed);
        // Release: whoever sees the magic sees the fields above.
        mem[H_MAGIC].store(layout::MAGIC, Ordering::Release);
        Ok(ValueTable { mem, layout })
    }

    /// Attaches to a table another process made in `mem`.
    pub(crate) fn attach(mem: &'m [AtomicU64]) -> Result<Self, ShmError> {
        let word = |i: usize| mem.get(i).map(|w| w.load(Ordering::Acquire)).unwrap_or(0);
        if word(H_MAGIC) != layout::MAGIC {
            return Err(ShmError::BadLayout(format!("magic {:#x}", word(H_MAGIC))));
        }
        if word(H_VERSION) != layout::VERSION {
            return Err(ShmError::BadLayout(format!(
                "layout version {}, this build reads {}",
                word(H_VERSION),
                layout::VERSION
            )));
        }
        let capacity = word(H_CAPACITY) as usize;
        let pages = word(H_PAGES) as usize;
        let layout = Layout::new(capacity, pages * layout::PAGE_BYTES)?;
        if layout.nslots as u64 != word(H_NSLOTS) || layout.total_words > mem.len() {
            return Err(ShmError::BadLayout(format!(
                "sizes do not match: {} slots in the header, {} computed; {} words needed, {} mapped",
                word(H_NSLOTS),
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

    /// Checks a handle read from a slot points at a block boundary.
    fn block_of(&self, h: u64) -> Result<(u64, usize), ShmError> {
        let (generation, b) = block::unhandle(h);
        let ok = self.layout.block_position(b).is_some_and(|(page, offset)| {
            let c = self.mem[self.layout.page_class_word(page)].load(Ordering::Acquire);
            Layout::class_of(c).is_some_and(|class| offset % Layout::class_words(class) == 0)
        });
        if ok {
            Ok((generation, b))
        } else {
            Err(ShmError::BadLayout(format!(
                "a slot holds an invalid handle {h:#x}"
            )))
        }
    }

    /// Room for key and value in the block at `b`, in bytes (0 if its page's
    /// class word no longer names a class: nothing then fits).
    fn capacity_of(&self, b: usize) -> usize {
        let class = self.layout.block_position(b).and_then(|(page, _)| {
            Layout::class_of(self.mem[self.layout.page_class_word(page)].load(Ordering::Acquire))
        });
        class.map_or(0, |c| (Layout::class_words(c) - HEADER) * 8)
    }

    /// Reads block `h` the seqlock way: `copy` sees the block's key hash,
    /// lengths and data words (only when the lengths fit the block), and its
    /// result is kept only if the block's generation did not move meanwhile.
    /// `None`: the block changed under us; reload the slot.
    fn snapshot<T>(
        &self,
        h: u64,
        copy: impl FnOnce(&Snapshot<'_>) -> T,
    ) -> Result<Option<T>, ShmError> {
        let (generation, b) = self.block_of(h)?;
        let meta = &self.mem[b + W_META];
        let m1 = Meta::unpack(meta.load(Ordering::Acquire));
        if m1.generation != generation || m1.state == block::FREE {
            return Ok(None);
        }
        let place = self.mem[b + W_PLACE].load(Ordering::Relaxed);
        let lens = self.mem[b + W_LENS].load(Ordering::Relaxed);
        let (klen, vlen) = (lens as u32 as usize, (lens >> 32) as u32);
        let deleted = vlen == TOMBSTONE;
        let vlen = if deleted { 0 } else { vlen as usize };
        // Lengths from a block being reused may be garbage: never read past it.
        let fits = (block::words(klen) + block::words(vlen)) * 8 <= self.capacity_of(b);
        let out = fits.then(|| {
            copy(&Snapshot {
                hash: place >> 32,
                klen,
                vlen,
                deleted,
                data: &self.mem[b + HEADER..],
            })
        });
        // Seqlock check: nothing we read came from a later owner of the block.
        fence(Ordering::Acquire);
        if Meta::unpack(meta.load(Ordering::Relaxed)).generation != generation {
            return Ok(None);
        }
        Ok(out)
    }

    /// Reads the block in slot `i` the seqlock way (see
    /// [`snapshot`](Self::snapshot)), reloading the slot while its block
    /// changes under the reader: `Some((handle, copy's result))`, or `None`
    /// for an empty slot. A block changes only after its slot was given
    /// another handle, so a slot that keeps the same handle while its block
    /// never reads consistently is corrupt: reported, never waited on.
    fn read_slot<T>(
        &self,
        i: usize,
        mut copy: impl FnMut(&Snapshot<'_>) -> T,
    ) -> Result<Option<(u64, T)>, ShmError> {
        let (mut last, mut same) = (0, 0u32);
        loop {
            let h = self.slot(i).load(Ordering::Acquire);
            if h == 0 {
                return Ok(None);
            }
            if let Some(t) = self.snapshot(h, &mut copy)? {
                return Ok(Some((h, t)));
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

    /// Finds `key`: (slot, handle, deleted), copying its value into `value`.
    fn lookup(
        &self,
        key: &[u8],
        hash: u64,
        mut value: Option<&mut Vec<u8>>,
    ) -> Result<Option<(usize, u64, bool)>, ShmError> {
        let mut scratch = Vec::new();
        for i in self.probe(hash) {
            let found = self.read_slot(i, |e| {
                classify(e, key, hash, &mut scratch, value.as_deref_mut())
            })?;
            match found {
                None => return Ok(None),
                Some((_, Read::OtherKey)) => {}
                Some((h, Read::OurKey { deleted })) => return Ok(Some((i, h, deleted))),
            }
        }
        Ok(None)
    }

    /// Copies `key`'s value into `out`; false if the key is absent.
    pub fn get_into(&self, key: &str, out: &mut Vec<u8>) -> Result<bool, ShmError> {
        let k = key.as_bytes();
        Ok(matches!(
            self.lookup(k, block::key_hash(k), Some(out))?,
            Some((_, _, false))
        ))
    }

    /// Stores `value` under `key`, replacing any value.
    pub fn set(&self, key: &str, value: &[u8], pid: u32) -> Result<(), ShmError> {
        let (b, generation) = self.fill(key.as_bytes(), Some(value), pid)?;
        match self.publish(key.as_bytes(), b, generation, pid, Expect::Any) {
            Ok(Ok(())) => Ok(()),
            Ok(Err(Conflict)) => unreachable!("Expect::Any never conflicts"),
            Err(e) => Err(e),
        }
    }

    /// Deletes `key`; false if it was absent.
    pub fn delete(&self, key: &str, pid: u32) -> Result<bool, ShmError> {
        let k = key.as_bytes();
        let hash = block::key_hash(k);
        let mut last = None;
        loop {
            let Some((i, h, false)) = self.lookup(k, hash, None)? else {
                return Ok(false);
            };
            check_progress(&mut last, Some((i, h)), key)?;
            let (b, generation) = self.fill(k, None, pid)?;
            if self
                .publish(k, b, generation, pid, Expect::Exactly(h))?
                .is_ok()
            {
                return Ok(true);
            }
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
            check_progress(&mut last, found.map(|(i, h, _)| (i, h)), key)?;
            let (expected, old) = match found {
                Some((_, h, false)) => (h, Some(current.as_slice())),
                Some((_, h, true)) => (h, None),
                None => (0, None),
            };
            let new = match f(old) {
                Ok(Some(new)) => new,
                Ok(None) => return Ok(Ok(None)),
                Err(e) => return Ok(Err(e)),
            };
            let (b, generation) = self.fill(k, Some(&new), pid)?;
            if self
                .publish(k, b, generation, pid, Expect::Exactly(expected))?
                .is_ok()
            {
                return Ok(Ok(Some(new)));
            }
        }
    }

    /// Takes a block and writes `key` and `value` (None: a tombstone) into it.
    fn fill(&self, key: &[u8], value: Option<&[u8]>, pid: u32) -> Result<(usize, u64), ShmError> {
        if key.len() > MAX_KEY {
            return Err(ShmError::KeyTooLong {
                len: key.len(),
                max: MAX_KEY,
            });
        }
        let vlen = value.map_or(0, <[u8]>::len);
        let needed = block::entry_bytes(key.len(), vlen);
        let class = Layout::class_for(needed).ok_or(ShmError::ValueTooLarge {
            len: needed,
            max: layout::MAX_BLOCK,
        })?;
        let arena = self.arena();
        let (b, generation) = match arena.alloc(class, pid) {
            Some(found) => found,
            None => {
                self.sweep();
                arena.alloc(class, pid).ok_or(ShmError::ArenaFull {
                    needed,
                    class_bytes: layout::MIN_BLOCK << class,
                })?
            }
        };
        let vlen_word = match value {
            Some(v) => {
                let vlen = u32::try_from(v.len()).map_err(|_| ShmError::ValueTooLarge {
                    len: needed,
                    max: layout::MAX_BLOCK,
                })?;
                u64::from(vlen)
            }
            None => u64::from(TOMBSTONE),
        };
        self.mem[b + W_LENS].store(key.len() as u64 | (vlen_word << 32), Ordering::Relaxed);
        let data = &self.mem[b + HEADER..];
        block::store_bytes(data, key);
        if let Some(v) = value {
            block::store_bytes(&data[block::words(key.len())..], v);
        }
        Ok((b, generation))
    }

    /// Publishes the filled block `b` for `key` in the key's slot.
    fn publish(
        &self,
        key: &[u8],
        b: usize,
        generation: u64,
        pid: u32,
        expect: Expect,
    ) -> Result<Result<(), Conflict>, ShmError> {
        let hash = block::key_hash(key);
        let new = block::handle(generation, b);
        let arena = self.arena();
        let give_back = |arena: &Arena<'_>| {
            let writing = Meta {
                generation,
                owner: pid,
                state: block::WRITING,
            }
            .pack();
            arena.free(b, writing);
        };
        let mut scratch = Vec::new();
        for i in self.probe(hash) {
            let place = &self.mem[b + W_PLACE];
            loop {
                let (cur, ours) =
                    match self.read_slot(i, |e| classify(e, key, hash, &mut scratch, None)) {
                        Ok(None) => (0, true),
                        Ok(Some((h, Read::OtherKey))) => (h, false),
                        Ok(Some((h, Read::OurKey { .. }))) => (h, true),
                        Err(e) => {
                            give_back(&arena);
                            return Err(e);
                        }
                    };
                if !ours {
                    break;
                }
                if let Expect::Exactly(want) = expect
                    && want != cur
                {
                    give_back(&arena);
                    return Ok(Err(Conflict));
                }
                if cur == 0 && !self.reserve_key() {
                    give_back(&arena);
                    return Err(ShmError::CapacityFull {
                        capacity: self.layout.capacity,
                    });
                }
                place.store(i as u64 | (hash << 32), Ordering::Relaxed);
                // AcqRel: publishes the block's contents to readers of the slot.
                match self
                    .slot(i)
                    .compare_exchange(cur, new, Ordering::AcqRel, Ordering::Acquire)
                {
                    Ok(_) => {
                        arena.mark_live(b, generation, pid);
                        if cur != 0 {
                            arena.retire(cur);
                        }
                        return Ok(Ok(()));
                    }
                    Err(_) => {
                        if cur == 0 {
                            self.mem[H_USED].fetch_sub(1, Ordering::AcqRel);
                        }
                    }
                }
            }
        }
        give_back(&arena);
        Err(ShmError::CapacityFull {
            capacity: self.layout.capacity,
        })
    }

    fn reserve_key(&self) -> bool {
        let used = &self.mem[H_USED];
        if used.fetch_add(1, Ordering::AcqRel) as usize >= self.layout.capacity {
            used.fetch_sub(1, Ordering::AcqRel);
            return false;
        }
        true
    }

    /// Every live key and its value bytes, in slot order.
    pub fn entries(&self) -> Result<Vec<(String, Vec<u8>)>, ShmError> {
        let mut out = Vec::new();
        for i in 0..self.layout.nslots {
            if let Some((key, value)) = self.entry_at(i)? {
                out.push((key, value));
            }
        }
        Ok(out)
    }

    /// The live entry in slot `i`, if any.
    fn entry_at(&self, i: usize) -> Result<Option<(String, Vec<u8>)>, ShmError> {
        let copied = self.read_slot(i, |e| {
            (!e.deleted).then(|| {
                let (mut key, mut value) = (Vec::new(), Vec::new());
                block::load_bytes(e.data, e.klen, &mut key);
                block::load_bytes(&e.data[block::words(e.klen)..], e.vlen, &mut value);
                (key, value)
            })
        })?;
        let Some((_, Some((key, value)))) = copied else {
            return Ok(None);
        };
        let key = String::from_utf8(key)
            .map_err(|_| ShmError::BadLayout(format!("slot {i} holds a key that is not UTF-8")))?;
        Ok(Some((key, value)))
    }

    /// Number of live keys (deleted keys not counted); copies no key or value.
    pub fn len(&self) -> Result<usize, ShmError> {
        let mut n = 0;
        for i in 0..self.layout.nslots {
            if let Some((_, deleted)) = self.read_slot(i, |e| e.deleted)? {
                n += usize::from(!deleted);
            }
        }
        Ok(n)
    }

    /// Frees blocks left by processes that died while writing; returns how many.
    pub fn sweep(&self) -> usize {
        self.arena().sweep(
            |b, generation| {
                let place = self.mem[b + W_PLACE].load(Ordering::Acquire);
                let slot = (place & 0xffff_ffff) as usize;
                slot < self.layout.nslots
                    && self.slot(slot).load(Ordering::Acquire) == block::handle(generation, b)
            },
            xme_alive,
        )
    }

    /// Checks the table and arena agree: every slot's block is published, no
    /// block is referenced twice. Returns block counts.
    pub fn check(&self) -> Result<ArenaStats, ShmError> {
        let mut seen = std::collections::HashSet::new();
        for i in 0..self.layout.nslots {
            let h = self.slot(i).load(Ordering::Acquire);
            if h == 0 {
                continue;
            }
            let (generation, b) = self.block_of(h)?;
            let m = Meta::unpack(self.mem[b + W_META].load(Ordering::Acquire));
            if m.generation != generation || m.state == block::FREE {
                return Err(ShmError::BadLayout(format!(
                    "slot {i} points at a block that is {m:?}, handle generation {generation}"
                )));
            }
            if !seen.insert(b) {
                return Err(ShmError::BadLayout(format!("block {b} is in two slots")));
            }
        }
        Ok(self.arena().stats())
    }

    /// Slots claimed by keys (live or deleted).
    pub fn keys_claimed(&self) -> usize {
        self.mem[H_USED].load(Ordering::Acquire) as usize
    }
}

#[cfg(not(loom))]
fn xme_alive(pid: u32) -> bool {
    xme_core::process::is_alive(pid as i32)
}

#[cfg(loom)]
fn xme_alive(_pid: u32) -> bool {
    true
}

#[cfg(all(test, loom))]
mod loom_models {
    //! `RUSTFLAGS="--cfg loom" cargo test -p xme-shm --release --lib`

    use super::*;
    use loom::sync::Arc;
    use loom::thread;

    fn model(f: impl Fn() + Sync + Send + 'static) {
        let mut b = loom::model::Builder::new();
        b.preemption_bound = Some(2);
        b.check(f);
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
            assert_eq!(t.keys_claimed(), 1);
            t.check().unwrap();
        });
    }
}
