//! A block: a 4-word header, then the key and the value, all as 64-bit words.
//!
//! ```text
//! word 0  meta      generation:24 | owner pid:32 | state:8     (one word: one CAS changes all)
//! word 1  place     slot index:32 | key hash:32          (written before publishing)
//! word 2  lengths   key bytes:32 | value bytes:32        (value u32::MAX: deleted key)
//! word 3  reserved
//! word 4… key bytes, then value bytes from the next word boundary
//! ```
//!
//! States: FREE (generation counts how often the block was freed), WRITING by a pid
//! (being filled, or published but not yet marked), LIVE (published).
//! Freeing is one CAS that also bumps generation, so a reader holding a handle with
//! the old generation knows its copy may be torn, and a late free by an old handle fails.

use crate::primitive::AtomicU64;
use crate::primitive::Ordering;

pub(crate) const HEADER: usize = 4;
pub(crate) const W_META: usize = 0;
pub(crate) const W_PLACE: usize = 1;
pub(crate) const W_LENS: usize = 2;

pub(crate) const FREE: u64 = 0;
pub(crate) const WRITING: u64 = 1;
pub(crate) const LIVE: u64 = 2;

/// Value length that marks a deleted key.
pub(crate) const TOMBSTONE: u32 = u32::MAX;

const GEN_MASK: u64 = (1 << 24) - 1;

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

    /// The meta word after freeing this block.
    pub fn freed(self) -> u64 {
        Meta::free(self.generation + 1)
    }
}

/// A published reference to a block: generation:24 | word index:40. Never 0.
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

/// Bytes a block needs for this key and value.
pub(crate) fn entry_bytes(key: usize, value: usize) -> usize {
    (HEADER + words(key) + words(value)) * 8
}

/// Writes `bytes` into `dst` words (little-endian), zero-padding the last word.
pub(crate) fn store_bytes(dst: &[AtomicU64], bytes: &[u8]) {
    for (w, chunk) in dst.iter().zip(bytes.chunks(8)) {
        let mut b = [0u8; 8];
        b[..chunk.len()].copy_from_slice(chunk);
        w.store(u64::from_le_bytes(b), Ordering::Relaxed);
    }
}

/// Reads `len` bytes from `src` words into `out`.
pub(crate) fn load_bytes(src: &[AtomicU64], len: usize, out: &mut Vec<u8>) {
    out.clear();
    out.reserve(len);
    for w in src.iter().take(words(len)) {
        out.extend_from_slice(&w.load(Ordering::Relaxed).to_le_bytes());
    }
    out.truncate(len);
}

/// The 32-bit key hash kept in a block (FNV-1a, stable across builds).
pub(crate) fn key_hash(key: &[u8]) -> u64 {
    use std::hash::Hasher;
    let mut h = fnv::FnvHasher::default();
    h.write(key);
    h.finish()
}
