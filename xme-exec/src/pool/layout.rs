//! The pool's shared region: a header, then one slot per worker (its progress
//! and claim words, the doorbell counter, and its result ring).
//!
//! The parent makes the region (a memfd) before it starts the zygote, which
//! maps it from the inherited descriptor; workers are forks of the zygote and
//! keep its mapping. A slot belongs to one live worker at a time: the driver
//! resets it before it asks for the worker that will use it.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use xme_core::sync::EventCount;
use xme_core::{InRegion, SharedRegion};

use super::claims::CLAIMS;
use super::ring::Ring;

/// Layout version of the pool's region ("PO", 1).
pub(crate) const VERSION: u32 = 0x504f_0001;
/// Words of each worker's result ring (256 KiB).
pub(crate) const RING_WORDS: usize = 32 * 1024;

/// The region's first line.
#[repr(C)]
pub(crate) struct PoolHeader {
    /// Raised while the driver sleeps in `poll` (see `doorbell.rs`).
    pub driver_sleeping: AtomicU32,
    _pad: AtomicU32,
    /// How many slots follow.
    pub slots: AtomicU64,
    /// The largest result a worker hands over, in bytes.
    pub max_result: AtomicU64,
    _reserved: [AtomicU64; 5],
}

/// One worker's slot, before its ring. The worker writes the first line, the
/// driver the second, so neither pulls the other's line on its hot path.
#[repr(C)]
pub(crate) struct SlotHeader {
    /// Where the worker is (`claims.rs`).
    pub progress: AtomicU64,
    /// When the current call started (`CLOCK_MONOTONIC` ns), for time limits.
    pub started_ns: AtomicU64,
    /// The ring's producer position.
    pub tail: AtomicU64,
    /// Bumped by the worker when the driver should look (`doorbell.rs`).
    pub events: AtomicU64,
    _worker_line: [AtomicU64; 4],
    /// The ring's consumer position.
    pub head: AtomicU64,
    _driver_line: [AtomicU64; 7],
    /// The worker sleeps here while its ring is full.
    pub space: EventCount,
    _space_line: [AtomicU32; 14],
    /// One claim word per task in flight.
    pub claims: [AtomicU64; CLAIMS],
}

// SAFETY: both structs are `#[repr(C)]` and made only of integer atomics, arrays
// of them and `EventCount` (itself InRegion): no padding-sensitive field, no
// pointer, valid for every bit pattern. What the words mean is checked where
// they are read (the ring and progress readers bound every value).
unsafe impl InRegion for PoolHeader {}
// SAFETY: as above.
unsafe impl InRegion for SlotHeader {}

const _: () = assert!(std::mem::size_of::<PoolHeader>() == 64);
const _: () = assert!(std::mem::size_of::<SlotHeader>() == 3 * 64 + CLAIMS * 8);

const SLOT_BYTES: usize = std::mem::size_of::<SlotHeader>() + RING_WORDS * 8;

/// The pool's region, shared by the parent, the zygote and the workers.
#[derive(Debug, Clone)]
pub(crate) struct PoolRegion {
    region: Arc<SharedRegion>,
    slots: usize,
}

/// One slot, borrowed from the region.
pub(crate) struct Slot<'a> {
    pub header: &'a SlotHeader,
    pub ring_words: &'a [AtomicU64],
}

impl Slot<'_> {
    pub fn ring(&self) -> Ring<'_> {
        Ring {
            head: &self.header.head,
            tail: &self.header.tail,
            data: self.ring_words,
        }
    }
}

impl PoolRegion {
    /// A region with `slots` worker slots, whose workers hand over results
    /// of at most `max_result` bytes.
    pub fn create(slots: usize, max_result: usize) -> Result<PoolRegion, xme_core::Error> {
        let len = 64 + slots * SLOT_BYTES;
        let region = SharedRegion::anonymous_versioned(len, VERSION)?;
        let this = PoolRegion {
            region: Arc::new(region),
            slots,
        };
        this.header().slots.store(slots as u64, Ordering::Relaxed);
        this.header()
            .max_result
            .store(max_result as u64, Ordering::Relaxed);
        Ok(this)
    }

    /// The region made by the parent, from its inherited memfd.
    pub fn adopt(region: SharedRegion) -> Result<PoolRegion, xme_core::Error> {
        let header: &PoolHeader = region.place(0)?;
        let slots = header.slots.load(Ordering::Relaxed) as usize;
        if 64 + slots.saturating_mul(SLOT_BYTES) > region.payload_len() {
            return Err(xme_core::Error::HeaderMismatch {
                what: format!("a pool region of {slots} slots is larger than its mapping"),
            });
        }
        Ok(PoolRegion {
            region: Arc::new(region),
            slots,
        })
    }

    pub fn shared(&self) -> &SharedRegion {
        &self.region
    }

    pub fn header(&self) -> &PoolHeader {
        self.region.place(0).expect("checked at creation")
    }

    pub fn slots(&self) -> usize {
        self.slots
    }

    /// Slot `k` (`k < slots`).
    pub fn slot(&self, k: usize) -> Slot<'_> {
        let at = 64 + k * SLOT_BYTES;
        Slot {
            header: self.region.place(at).expect("slot inside the region"),
            ring_words: self
                .region
                .slice(at + std::mem::size_of::<SlotHeader>(), RING_WORDS)
                .expect("ring inside the region"),
        }
    }

    /// Clears slot `k` for a new worker (no worker uses it now).
    pub fn reset(&self, k: usize) {
        let s = self.slot(k);
        let h = s.header;
        for w in [&h.progress, &h.started_ns, &h.tail, &h.events, &h.head] {
            w.store(0, Ordering::Relaxed);
        }
        for c in &h.claims {
            c.store(0, Ordering::Relaxed);
        }
        // Release: the worker forked after this (a socket round trip later)
        // sees a clean slot.
        std::sync::atomic::fence(Ordering::Release);
    }
}
