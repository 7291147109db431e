//! The lock-free value table: string keys to byte values, in shared memory.
//!
//! - A slot is one word: 0 (empty), [`TOMB`] (the hole a delete is
//!   closing), or the handle of the block holding the key and its current
//!   value (see `layout.rs`). Keys are placed by linear probing from their
//!   FNV hash.
//! - Replacing a key's value is lock-free: the writer fills a fresh block,
//!   publishes it with one CAS on the key's slot, then frees the block it
//!   replaced. A reader copies a block and checks its generation (and its
//!   page's life) did not move, seqlock style, else retries.
//! - Inserting a new key and deleting one take the table's key lock (a
//!   pid-named word), so probe chains change only under it (`chain.rs`): a
//!   delete moves the entries after it back along their chains, so no
//!   tombstone outlives it and probes stay as short as on a fresh table. A
//!   lookup that finds nothing trusts that answer only if no entry moved
//!   while it probed (the header's `moves` count, seqlock style).
//!
//! A process killed at any instruction leaves each slot holding a whole old
//! or new entry; a key lock it held is taken over by the next taker, which
//! finishes its move, closes its hole and recounts the table's counters.

use crate::ShmError;
use crate::primitive::{AtomicU64, Ordering, SPINS, fence, spin};
use crate::store::arena::{Arena, ArenaStats, Taken};
use crate::store::block::{self, HEADER, Meta};
use crate::store::layout::{self, Layout, MOVING, TOMB, TableHeader};
use crate::store::page::{LIFE_MASK, Role};

/// Longest key, in bytes.
pub const MAX_KEY: usize = 1024;

/// A value table over shared words.
#[derive(Clone, Copy)]
pub struct ValueTable<'m> {
    pub(super) mem: &'m [AtomicU64],
    pub(super) layout: Layout,
}

/// What a slot holds, for a reader.
pub(super) enum Slot<T> {
    Empty,
    Tomb,
    /// A block's handle (as the slot holds it: maybe marked [`MOVING`]), and
    /// what the reader's copy returned.
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

/// How the table's keys sit in their slots (`Manager::table_stats`).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
#[non_exhaustive]
pub struct TableStats {
    /// Live keys.
    pub keys: usize,
    /// Slots in the table.
    pub slots: usize,
    /// Mean slots a lookup of a live key reads (1 when every key sits in
    /// its home slot).
    pub mean_probe: f64,
    /// The most slots a lookup of a live key reads.
    pub max_probe: usize,
}

/// Consecutive inconsistent reads of one unchanged slot after which the table
/// is reported corrupt (a live writer changes the slot long before).
const STALE_READS: u32 = 1 << 12;
/// Lookups in a row that a move spoiled before the reader waits for the
/// mover on the key lock (taking it over if the mover died).
const SPOILED_LOOKUPS: u32 = if cfg!(loom) { 2 } else { 64 };

/// Called before each publish attempt of a read-modify-write with what the
/// lookup found. A publish conflicts only when the key's slot changed since
/// its lookup, so the next lookup finds something else; finding the same
/// slot and handle again means the table is corrupt.
pub(super) fn check_progress(
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
    if e.hash != hash || e.klen != key.len() || !block::equals(e.data, key) {
        return false;
    }
    if let Some(out) = value {
        block::load_bytes(&e.data[block::words(e.klen)..], e.vlen, out);
    }
    true
}

/// What [`ValueTable::snapshot`] lets a reader see of a block.
pub(super) struct Snapshot<'m> {
    /// The key's hash.
    pub hash: u64,
    pub klen: usize,
    pub vlen: usize,
    /// The key's words, then the value's.
    pub data: &'m [AtomicU64],
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
    /// The table's header (its first words).
    #[inline]
    pub(super) fn header(&self) -> &'m TableHeader {
        TableHeader::of(self.mem)
    }

    /// Makes a new table in zeroed memory of at least `layout.bytes()`.
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

    pub(crate) fn arena(&self) -> Arena<'m> {
        Arena {
            mem: self.mem,
            layout: self.layout,
        }
    }

    pub(super) fn slot(&self, i: usize) -> &'m AtomicU64 {
        &self.mem[self.layout.slots + i]
    }

    pub(super) fn probe(&self, hash: u64) -> impl Iterator<Item = usize> + use<> {
        let n = self.layout.nslots;
        let start = self.layout.home(hash);
        (0..n).map(move |k| (start + k) & (n - 1))
    }

    /// Reads block `h` the seqlock way: `copy` sees the block's key hash,
    /// lengths and data words (only when the lengths fit the block), and its
    /// result is kept only if neither the block's generation nor its page's
    /// life moved meanwhile. `None`: the block changed under us; reload the slot.
    fn snapshot<T>(
        &self,
        h: u64,
        copy: impl FnOnce(&Snapshot<'_>) -> T,
    ) -> Result<Option<T>, ShmError> {
        let Some((bits, b)) = self.layout.unhandle(h) else {
            return Err(ShmError::BadLayout(format!(
                "a slot holds an invalid handle {h:#x}"
            )));
        };
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
        let header = block::header(self.mem, b);
        let m1 = Meta::unpack(header.meta.load(Ordering::Acquire));
        if !self.layout.same_generation(m1.generation, bits) || m1.state == block::FREE {
            return Ok(None);
        }
        let hash = header.hash.load(Ordering::Relaxed);
        let klen = header.key_len.load(Ordering::Relaxed) as usize;
        let vlen = header.value_len.load(Ordering::Relaxed) as usize;
        // Lengths from a block being reused may be garbage: never read past it.
        let fits = block::words(klen)
            .checked_add(block::words(vlen))
            .is_some_and(|w| w <= room / 8);
        let out = fits.then(|| {
            copy(&Snapshot {
                hash,
                klen,
                vlen,
                data: &self.mem[b + HEADER..],
            })
        });
        // Seqlock check: nothing we read came from a later owner of the block
        // or a later life of its page (a count or a close in the same life
        // moves no block).
        fence(Ordering::Acquire);
        if Meta::unpack(header.meta.load(Ordering::Relaxed)).generation != m1.generation
            || (role_word.load(Ordering::Relaxed) ^ r1) & LIFE_MASK != 0
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
    pub(super) fn read_slot<T>(
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
            spin();
        }
    }

    /// One probe for `key`: (slot, slot word) if found.
    fn probe_once(
        &self,
        key: &[u8],
        hash: u64,
        mut value: Option<&mut Vec<u8>>,
    ) -> Result<Option<(usize, u64)>, ShmError> {
        for i in self.probe(hash) {
            match self.read_slot(i, |e| matches(e, key, hash, value.as_deref_mut()))? {
                Slot::Empty => return Ok(None),
                Slot::Entry(w, true) => return Ok(Some((i, w))),
                Slot::Tomb | Slot::Entry(_, false) => {}
            }
            // Models: let writers run between two slots of a probe (loom's
            // search alone misses such interleavings, tokio-rs/loom#166).
            crate::hooks::at(crate::hooks::Window::ProbeStep);
        }
        Ok(None)
    }

    /// Finds `key`: (slot, slot word, maybe marked [`MOVING`]), copying its
    /// value into `value`. A key found is there; a key not found is absent
    /// only if no entry moved while we probed (a move could have carried it
    /// behind us), else we probe again.
    pub(super) fn lookup(
        &self,
        key: &[u8],
        hash: u64,
        mut value: Option<&mut Vec<u8>>,
        pid: u32,
    ) -> Result<Option<(usize, u64)>, ShmError> {
        // A key found is there: most lookups need nothing more (and never
        // touch the header's line, which deletes elsewhere keep writing).
        if let Some(found) = self.probe_once(key, hash, value.as_deref_mut())? {
            return Ok(Some(found));
        }
        let moves = &self.header().moves;
        let mut spoiled = 0;
        loop {
            let before = moves.load(Ordering::Acquire);
            if let Some(found) = self.probe_once(key, hash, value.as_deref_mut())? {
                return Ok(Some(found));
            }
            // Seqlock reader side: a slot we read that a move wrote makes
            // `moves` read odd or changed here.
            fence(Ordering::Acquire);
            if before & 1 == 0 && moves.load(Ordering::Relaxed) == before {
                return Ok(None);
            }
            spoiled += 1;
            if spoiled % SPOILED_LOOKUPS == 0 {
                // A mover that does not finish: wait for it on the key lock,
                // or take over from it if it died.
                drop(self.key_lock(pid)?);
            } else {
                spin();
            }
        }
    }

    /// Copies `key`'s value into `out`; false if the key is absent.
    pub fn get_into(&self, key: &str, out: &mut Vec<u8>, pid: u32) -> Result<bool, ShmError> {
        let k = key.as_bytes();
        Ok(self
            .lookup(k, block::key_hash(k), Some(out), pid)?
            .is_some())
    }

    /// Stores `value` under `key`, replacing any value.
    pub(crate) fn set(&self, key: &str, value: &[u8], pid: u32) -> Result<Stored, ShmError> {
        let k = key.as_bytes();
        let hash = block::key_hash(k);
        let taken = self.fill(k, hash, value, pid)?;
        match self.publish(k, hash, taken, pid, Expect::Any)? {
            Ok(stored) => Ok(stored),
            Err(Conflict) => unreachable!("Expect::Any never conflicts"),
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
            let found = self.lookup(k, hash, Some(&mut current), pid)?;
            if found.is_some() {
                check_progress(&mut last, found, k)?;
            } else {
                // Absent again after a conflict: another writer inserted the
                // key and one deleted it meanwhile. That is their progress,
                // not a stuck slot (a slot's handle never repeats, absence
                // does).
                last = None;
            }
            let (expected, old) = match found {
                Some((_, w)) => (w & !MOVING, Some(current.as_slice())),
                None => (0, None),
            };
            let new = match f(old) {
                Ok(Some(new)) => new,
                Ok(None) => return Ok(Ok(None)),
                Err(e) => return Ok(Err(e)),
            };
            let taken = self.fill(k, hash, &new, pid)?;
            if self
                .publish(k, hash, taken, pid, Expect::Exactly(expected))?
                .is_ok()
            {
                return Ok(Ok(Some(new)));
            }
        }
    }

    /// Takes a block and writes `key` and `value` into it.
    fn fill(&self, key: &[u8], hash: u64, value: &[u8], pid: u32) -> Result<Taken, ShmError> {
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
        let taken = match arena.alloc(needed, pid)? {
            Some(found) => found,
            None => {
                self.sweep(pid);
                arena.alloc(needed, pid)?.ok_or(ShmError::ArenaFull {
                    needed,
                    arena_bytes,
                })?
            }
        };
        let b = taken.block;
        let header = block::header(self.mem, b);
        header.hash.store(hash, Ordering::Relaxed);
        header.key_len.store(key.len() as u64, Ordering::Relaxed);
        header
            .value_len
            .store(value.len() as u64, Ordering::Relaxed);
        let data = &self.mem[b + HEADER..];
        block::store_bytes(data, key);
        block::store_bytes(&data[block::words(key.len())..], value);
        Ok(taken)
    }

    /// Publishes the filled block for `key`: in the key's slot if it has
    /// one, else (under the key lock) in the first free slot of its chain.
    /// Gives the block back on a conflict or an error.
    fn publish(
        &self,
        key: &[u8],
        hash: u64,
        taken: Taken,
        pid: u32,
        expect: Expect,
    ) -> Result<Result<Stored, Conflict>, ShmError> {
        let result = self.try_publish(key, hash, taken, pid, expect);
        if matches!(result, Ok(Ok(_))) {
            // Relaxed: a count for rates, ordered with nothing.
            self.header().writes.fetch_add(1, Ordering::Relaxed);
        } else {
            self.arena().free(
                taken.block,
                Meta::writing(taken.generation, pid),
                taken.epoch,
                pid,
                false,
            );
        }
        result
    }

    fn try_publish(
        &self,
        key: &[u8],
        hash: u64,
        taken: Taken,
        pid: u32,
        expect: Expect,
    ) -> Result<Result<Stored, Conflict>, ShmError> {
        let new = self.layout.handle(taken.generation, taken.block);
        let mut last = None;
        loop {
            let found = self.lookup(key, hash, None, pid)?;
            if let Expect::Exactly(want) = expect
                && found.map_or(0, |(_, w)| w & !MOVING) != want
            {
                return Ok(Err(Conflict));
            }
            if let Some((i, cur)) = found {
                if cur & MOVING != 0 {
                    // A delete is moving the key along its chain: frozen
                    // until the move ends, which is no conflict.
                    self.wait_for_move(i, cur, pid)?;
                    continue;
                }
                check_progress(&mut last, found, key)?;
                // AcqRel: publishes the block's contents to readers of the slot.
                if self
                    .slot(i)
                    .compare_exchange(cur, new, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok()
                {
                    self.arena().mark_live(taken, pid);
                    self.arena().retire(cur, pid);
                    return Ok(Ok(Stored::Replaced));
                }
                continue;
            }
            check_progress(&mut last, found, key)?;
            if self.insert(key, hash, new, pid)? {
                self.arena().mark_live(taken, pid);
                return Ok(Ok(Stored::Inserted));
            }
            last = None; // inserted meanwhile: replace it
        }
    }

    /// Waits until slot `i` no longer holds `marked` (a move lasts a few
    /// instructions); past a short spin, waits for the mover on the key
    /// lock, taking over from it if it died.
    fn wait_for_move(&self, i: usize, marked: u64, pid: u32) -> Result<(), ShmError> {
        for _ in 0..SPINS {
            if self.slot(i).load(Ordering::Acquire) != marked {
                return Ok(());
            }
            spin();
        }
        drop(self.key_lock(pid)?);
        Ok(())
    }

    /// The live keys `want` accepts, with their values, in slot order.
    pub(crate) fn entries_where(
        &self,
        want: impl Fn(&[u8]) -> bool,
        pid: u32,
    ) -> Result<Vec<(String, Vec<u8>)>, ShmError> {
        self.scan(
            |e| {
                let mut key = Vec::new();
                block::load_bytes(e.data, e.klen, &mut key);
                want(&key).then(|| {
                    let mut value = Vec::new();
                    block::load_bytes(&e.data[block::words(e.klen)..], e.vlen, &mut value);
                    (key, value)
                })
            },
            pid,
        )?
        .into_iter()
        .filter_map(|(i, _, kv)| kv.map(|kv| (i, kv)))
        .map(|(i, (key, value))| Ok((utf8(i, key)?, value)))
        .collect()
    }

    /// The live keys `want` accepts, in slot order; copies no value.
    pub(crate) fn keys_where(
        &self,
        want: impl Fn(&[u8]) -> bool,
        pid: u32,
    ) -> Result<Vec<String>, ShmError> {
        self.scan(
            |e| {
                let mut key = Vec::new();
                block::load_bytes(e.data, e.klen, &mut key);
                want(&key).then_some(key)
            },
            pid,
        )?
        .into_iter()
        .filter_map(|(i, _, k)| k.map(|k| (i, k)))
        .map(|(i, key)| utf8(i, key))
        .collect()
    }

    /// Repairs what processes killed while holding the key lock left (a
    /// move, holes) and frees blocks left by processes that died while
    /// writing; returns how many blocks.
    pub fn sweep(&self, pid: u32) -> usize {
        // Taking the key lock repairs a dead holder's leftovers; a live
        // holder stuck past the lock's patience is left for the next taker.
        drop(self.key_lock(pid));
        self.arena().sweep(
            |b, generation| self.published(b, generation),
            crate::store::word_lock::alive,
            pid,
        )
    }

    /// Whether block `b` of `generation` may be published: its handle is in
    /// its key's chain, or entries moved while we looked (then we cannot
    /// tell, and say yes: the block is not freed).
    fn published(&self, b: usize, generation: u64) -> bool {
        let handle = self.layout.handle(generation, b);
        let hash = block::header(self.mem, b).hash.load(Ordering::Acquire);
        let moves = &self.header().moves;
        let before = moves.load(Ordering::Acquire);
        for i in self.probe(hash) {
            match self.slot(i).load(Ordering::Acquire) {
                0 => break,
                w if w & !MOVING == handle => return true,
                _ => {}
            }
            #[cfg(loom)]
            loom::thread::yield_now();
        }
        fence(Ordering::Acquire);
        !(before & 1 == 0 && moves.load(Ordering::Relaxed) == before)
    }

    /// Checks every slot's block reads consistently (waiting out writers,
    /// so it is safe while other processes write) and no block is in two
    /// slots. Returns block counts.
    pub fn check(&self, pid: u32) -> Result<ArenaStats, ShmError> {
        let mut seen = std::collections::HashSet::new();
        for (_, w, ()) in self.scan(|_| (), pid)? {
            let h = w & !MOVING;
            if !seen.insert(h) {
                return Err(ShmError::BadLayout(format!(
                    "handle {h:#x} is in two slots"
                )));
            }
        }
        Ok(self.arena().stats())
    }

    /// How the live keys sit in their slots.
    pub fn stats(&self, pid: u32) -> Result<TableStats, ShmError> {
        let mask = self.layout.nslots - 1;
        let probes: Vec<usize> = self
            .scan(|e| self.layout.home(e.hash), pid)?
            .into_iter()
            .map(|(i, _, home)| (i.wrapping_sub(home) & mask) + 1)
            .collect();
        Ok(TableStats {
            keys: probes.len(),
            slots: self.layout.nslots,
            mean_probe: if probes.is_empty() {
                0.0
            } else {
                probes.iter().sum::<usize>() as f64 / probes.len() as f64
            },
            max_probe: probes.iter().copied().max().unwrap_or(0),
        })
    }

    /// Slots taken by keys (and a delete's hole while it lasts).
    pub fn keys_claimed(&self) -> usize {
        self.header().used.load(Ordering::Acquire) as usize
    }

    /// Live keys, as counted by inserts and deletes.
    #[cfg(loom)]
    pub fn live_keys(&self) -> usize {
        self.header().live.load(Ordering::Acquire) as usize
    }
}

fn utf8(slot: usize, key: Vec<u8>) -> Result<String, ShmError> {
    String::from_utf8(key)
        .map_err(|_| ShmError::BadLayout(format!("slot {slot} holds a key that is not UTF-8")))
}
