//! A block: a 4-word header, then the key and the value, all as 64-bit words.
//! A block of a size class sits inside one page; an extent's block starts at
//! its first page and runs over the following ones.
//!
//! ```text
//! word 0  meta      generation:24 | owner pid:32 | state:8     (one word: one CAS changes all)
//! word 1  place     slot index:32 | key hash:32          (written before publishing)
//! word 2  key bytes
//! word 3  value bytes
//! word 4… key bytes, then value bytes from the next word boundary
//! ```
//!
//! States: FREE (generation counts how often the block was freed), WRITING by a pid
//! (being filled, or published but not yet marked), LIVE (published).
//! Freeing is one CAS that also bumps the generation, so a reader holding a handle with
//! the old generation knows its copy may be torn, and a late free by an old handle fails.
//! A generation is `page epoch:8 | count:16`: blocks of a page given to a class
//! again start from the page's new epoch, so a handle from the page's earlier
//! life does not match them.

use crate::primitive::AtomicU64;
use crate::primitive::Ordering;

/// The header of a block (or extent): its first `HEADER` words; the key and
/// the value follow.
#[repr(C)]
pub(crate) struct BlockHeader {
    /// `generation:24 | owner pid:32 | state:8` (see [`Meta`]).
    pub meta: AtomicU64,
    /// The slot the entry was published in (a hint for the sweep).
    pub place: AtomicU64,
    /// Bytes of the key.
    pub key_len: AtomicU64,
    /// Bytes of the value.
    pub value_len: AtomicU64,
}
/// Words of a block's header.
pub(crate) const HEADER: usize = 4;
const _: () =
    assert!(std::mem::size_of::<BlockHeader>() == HEADER * std::mem::size_of::<AtomicU64>());

/// The header of the block that starts at word `b` of `mem`.
///
/// # Panics
/// If the block's header lies past `mem` (callers index blocks inside the
/// arena's pages).
#[inline]
pub(crate) fn header(mem: &[AtomicU64], b: usize) -> &BlockHeader {
    // SAFETY: `BlockHeader` is `#[repr(C)]` and made only of `AtomicU64`
    // fields (std's, or loom's in models: the type of `mem`).
    unsafe { crate::primitive::view_words(&mem[b..b + HEADER]) }
}

pub(crate) const FREE: u64 = 0;
pub(crate) const WRITING: u64 = 1;
pub(crate) const LIVE: u64 = 2;

const GEN_MASK: u64 = (1 << 24) - 1;
const COUNT_MASK: u64 = (1 << 16) - 1;

/// A slot's word for a deleted key: no block (word index all ones is past
/// any table).
pub(crate) const TOMB: u64 = u64::MAX;

/// A block's meta word, unpacked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Meta {
    pub generation: u64,
    pub owner: u32,
    pub state: u64,
}

impl Meta {
    pub fn unpack(w: u64) -> Meta {
        Meta {
            generation: w >> 40,
            owner: (w >> 8) as u32,
            state: w & 0xff,
        }
    }

    pub fn pack(self) -> u64 {
        ((self.generation & GEN_MASK) << 40) | (u64::from(self.owner) << 8) | self.state
    }

    pub fn free(generation: u64) -> u64 {
        Meta {
            generation: generation & GEN_MASK,
            owner: 0,
            state: FREE,
        }
        .pack()
    }

    pub fn writing(generation: u64, pid: u32) -> u64 {
        Meta {
            generation,
            owner: pid,
            state: WRITING,
        }
        .pack()
    }

    /// The meta word after freeing this block: the count part of the
    /// generation moves on, the epoch part stays.
    pub fn freed(self) -> u64 {
        let count = (self.generation + 1) & COUNT_MASK;
        Meta::free((self.generation & !COUNT_MASK) | count)
    }
}

/// The first generation of blocks in a page of `epoch`.
pub(crate) fn first_generation(epoch: u64) -> u64 {
    (epoch & 0xff) << 16
}

/// Whether `generation` belongs to a page's life of `epoch`.
pub(crate) fn of_epoch(generation: u64, epoch: u64) -> bool {
    generation >> 16 == epoch & 0xff
}

/// A published reference to a block: generation:24 | word index:40. Never 0
/// nor [`TOMB`].
pub(crate) fn handle(generation: u64, block: usize) -> u64 {
    ((generation & GEN_MASK) << 40) | block as u64
}

/// (generation, block word index) of a handle.
pub(crate) fn unhandle(h: u64) -> (u64, usize) {
    (h >> 40, (h & ((1 << 40) - 1)) as usize)
}

/// Words needed for `bytes` bytes.
pub(crate) fn words(bytes: usize) -> usize {
    bytes.div_ceil(8)
}

/// Bytes a block needs for this key and value (saturating: a length no
/// arena holds stays too large).
pub(crate) fn entry_bytes(key: usize, value: usize) -> usize {
    (HEADER + words(key))
        .saturating_add(words(value))
        .saturating_mul(8)
}

/// From this length on, bytes are copied with `memcpy` rather than word by
/// word (a word loop of atomic operations cannot be vectorised: a 1 MiB value
/// copied that way takes four times as long).
#[cfg(not(loom))]
const BULK: usize = 4096;

/// Writes `bytes` into `dst` words (little-endian), zero-padding the last word.
pub(crate) fn store_bytes(dst: &[AtomicU64], bytes: &[u8]) {
    #[cfg(not(loom))]
    if bytes.len() >= BULK {
        let n = bytes.len().min(dst.len() * 8);
        let full = n / 8 * 8;
        // SAFETY: `dst` spans `dst.len() * 8` bytes and `full <= n <= that`;
        // `AtomicU64` has the size and alignment of `u64`, and any bytes are a
        // valid `u64`. The words belong to a block this process took (WRITING
        // by its pid), so no other writer touches them; a reader holding a
        // stale handle may read them at the same time, as in a seqlock
        // (crossbeam's `AtomicCell` and the `seqlock` crate copy the same
        // way), and keeps its copy only if the block's generation, which
        // moved before these writes (release fence in the allocator), did not.
        unsafe {
            std::ptr::copy_nonoverlapping(
                bytes.as_ptr(),
                dst.as_ptr().cast::<u8>().cast_mut(),
                full,
            );
        }
        if n > full {
            let mut b = [0u8; 8];
            b[..n - full].copy_from_slice(&bytes[full..n]);
            dst[full / 8].store(u64::from_le_bytes(b), Ordering::Relaxed);
        }
        return;
    }
    let mut chunks = bytes.chunks_exact(8);
    let mut words = dst.iter();
    // Chunks first: zip pulls from its first iterator first, so no word is
    // skipped when the chunks run out.
    for (chunk, w) in chunks.by_ref().zip(words.by_ref()) {
        let b: [u8; 8] = chunk.try_into().expect("chunks of 8");
        w.store(u64::from_le_bytes(b), Ordering::Relaxed);
    }
    let rest = chunks.remainder();
    if !rest.is_empty()
        && let Some(w) = words.next()
    {
        let mut b = [0u8; 8];
        b[..rest.len()].copy_from_slice(rest);
        w.store(u64::from_le_bytes(b), Ordering::Relaxed);
    }
}

/// Reads `len` bytes from `src` words into `out`.
pub(crate) fn load_bytes(src: &[AtomicU64], len: usize, out: &mut Vec<u8>) {
    out.clear();
    #[cfg(not(loom))]
    if len >= BULK {
        let n = len.min(src.len() * 8);
        out.reserve(n);
        // SAFETY: `src` spans `src.len() * 8` bytes and `n` is at most that;
        // `out` has room for `n` bytes, written in full before `set_len`.
        // Every byte pattern is a valid `u8`. A writer may change the words
        // while we copy (the seqlock pattern, as crossbeam's `AtomicCell`
        // copies): every caller re-checks the block's generation after an
        // acquire fence and drops this copy if it moved.
        unsafe {
            std::ptr::copy_nonoverlapping(src.as_ptr().cast::<u8>(), out.as_mut_ptr(), n);
            out.set_len(n);
        }
        return;
    }
    out.resize(len, 0);
    let mut words = src.iter();
    let mut chunks = out.chunks_exact_mut(8);
    for (dst, w) in chunks.by_ref().zip(words.by_ref()) {
        dst.copy_from_slice(&w.load(Ordering::Relaxed).to_le_bytes());
    }
    let rest = chunks.into_remainder();
    if !rest.is_empty()
        && let Some(w) = words.next()
    {
        let n = rest.len();
        rest.copy_from_slice(&w.load(Ordering::Relaxed).to_le_bytes()[..n]);
    }
}

/// Whether the words of `src` hold exactly `bytes` (compared word by word,
/// without copying).
pub(crate) fn equals(src: &[AtomicU64], bytes: &[u8]) -> bool {
    if src.len() < words(bytes.len()) {
        return false;
    }
    let mut words = src.iter();
    let mut chunks = bytes.chunks_exact(8);
    for (chunk, w) in chunks.by_ref().zip(words.by_ref()) {
        if w.load(Ordering::Relaxed).to_le_bytes() != chunk {
            return false;
        }
    }
    let rest = chunks.remainder();
    rest.is_empty()
        || words
            .next()
            .is_some_and(|w| &w.load(Ordering::Relaxed).to_le_bytes()[..rest.len()] == rest)
}

/// The key hash (FNV-1a, stable across builds).
pub(crate) fn key_hash(key: &[u8]) -> u64 {
    use std::hash::Hasher;
    let mut h = fnv::FnvHasher::default();
    h.write(key);
    h.finish()
}
