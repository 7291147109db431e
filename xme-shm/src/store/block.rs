//! A block: a 4-word header, then the key and the value, all as 64-bit words.
//! A block of a size class sits inside one page; an extent's block starts at
//! its first page and runs over the following ones.
//!
//! ```text
//! word 0  meta      generation:40 | owner pid:22 | state:2   (one word: one CAS changes all)
//! word 1  hash      the key's hash                     (written before publishing)
//! word 2  key bytes
//! word 3  value bytes
//! word 4… key bytes, then value bytes from the next word boundary
//! ```
//!
//! States: FREE, WRITING by a pid (being filled, or published but not yet
//! marked), LIVE (published). Taking a block is one CAS `FREE → WRITING(pid)`,
//! so a block is never taken without naming its taker; freeing is one CAS
//! that also moves the generation on, so a reader holding a handle with the
//! old generation knows its copy may be torn, and a late free by an old
//! handle fails. A page given to a class again starts its blocks above every
//! generation they had before (the page's generation floor).

use crate::primitive::AtomicU64;
use crate::primitive::Ordering;

/// The header of a block (or extent): its first `HEADER` words; the key and
/// the value follow.
#[repr(C)]
pub(crate) struct BlockHeader {
    /// `generation:40 | owner pid:22 | state:2` (see [`Meta`]).
    pub meta: AtomicU64,
    /// The key's hash (its home slot, for the sweep; a quick mismatch for readers).
    pub hash: AtomicU64,
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

const GEN_MASK: u64 = (1 << crate::store::layout::GEN_BITS) - 1;
/// Pids stay below 2^22 on Linux (`PID_MAX_LIMIT`).
const OWNER_MASK: u64 = (1 << 22) - 1;

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
            generation: w >> 24,
            owner: ((w >> 2) & OWNER_MASK) as u32,
            state: w & 3,
        }
    }

    pub fn pack(self) -> u64 {
        ((self.generation & GEN_MASK) << 24)
            | ((u64::from(self.owner) & OWNER_MASK) << 2)
            | (self.state & 3)
    }

    pub fn free(generation: u64) -> u64 {
        Meta {
            generation,
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

    pub fn live(generation: u64) -> u64 {
        Meta {
            generation,
            owner: 0,
            state: LIVE,
        }
        .pack()
    }

    /// The meta word after freeing this block: the next generation.
    pub fn freed(self) -> u64 {
        Meta::free(self.generation.wrapping_add(1) & GEN_MASK)
    }
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
        // Models: let a writer run in the middle of a copy (loom's search
        // alone misses such interleavings, tokio-rs/loom#166).
        #[cfg(loom)]
        loom::thread::yield_now();
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
