//! Where a ring's frames lie: shared memory behind a pointer, or, in loom
//! models, memory that loom owns, so that a model runs the ring's own code.
//!
//! Both give the same three accesses: a frame's stamp and kind words
//! (atomic), and its payload bytes (plain copies, each side owning its part
//! of the ring at the time).

#[cfg(loom)]
pub(super) use model::DataArea;
#[cfg(all(loom, test))]
pub(super) use model::ModelMemory;
#[cfg(not(loom))]
pub(super) use shared::DataArea;

#[cfg(not(loom))]
mod shared {
    use std::marker::PhantomData;
    use std::sync::atomic::AtomicU64;

    use xme_core::SharedRegion;

    /// `cap` bytes of a shared region, 64-byte aligned.
    #[derive(Clone, Copy)]
    pub(crate) struct DataArea<'r> {
        data: *mut u8,
        cap: usize,
        _region: PhantomData<&'r SharedRegion>,
    }

    impl<'r> DataArea<'r> {
        /// The `cap` bytes at `offset` of `region`, if they lie inside it.
        pub(crate) fn new(
            region: &'r SharedRegion,
            offset: usize,
            cap: usize,
        ) -> Result<DataArea<'r>, xme_core::Error> {
            Ok(DataArea {
                data: region.raw(offset, cap)?,
                cap,
                _region: PhantomData,
            })
        }

        /// Whether the area starts at a multiple of `align` bytes.
        pub(crate) fn is_aligned(&self, align: usize) -> bool {
            (self.data as usize).is_multiple_of(align)
        }

        /// The 8-byte word at byte `at` (a multiple of 8), accessed atomically.
        pub(crate) fn word(&self, at: usize) -> &'r AtomicU64 {
            debug_assert!(at.is_multiple_of(8) && at + 8 <= self.cap);
            // SAFETY: `at` is 8-aligned (the area is 64-aligned, checked by
            // `split`) and the word lies inside the mapping, which outlives
            // 'r (the ring's callers pass offsets masked by the capacity); while a word may be a frame's stamp or kind, both sides
            // access it only atomically.
            unsafe { &*(self.data.add(at) as *const AtomicU64) }
        }

        /// Copies `bytes` to byte `at`.
        ///
        /// # Safety
        /// `[at, at + bytes.len())` lies inside the area, and no other
        /// process or thread reads or writes it meanwhile (the producer's
        /// part of the ring).
        pub(crate) unsafe fn write(&self, at: usize, bytes: &[u8]) {
            debug_assert!(at + bytes.len() <= self.cap);
            // SAFETY: in bounds and owned by the caller (this function's contract).
            unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), self.data.add(at), bytes.len()) }
        }

        /// Replaces `out` with the `len` bytes at byte `at`.
        ///
        /// # Safety
        /// `[at, at + len)` lies inside the area, was published to this side
        /// (an acquire load saw its stamp), and nobody writes it meanwhile
        /// (the consumer's part of the ring).
        pub(crate) unsafe fn read(&self, at: usize, len: usize, out: &mut Vec<u8>) {
            debug_assert!(at + len <= self.cap);
            out.clear();
            out.reserve(len);
            // SAFETY: in bounds, published and not written meanwhile (this
            // function's contract); `out` has room for `len` bytes, all
            // initialised by the copy before `set_len`.
            unsafe {
                std::ptr::copy_nonoverlapping(self.data.add(at), out.as_mut_ptr(), len);
                out.set_len(len);
            }
        }
    }
}

#[cfg(loom)]
mod model {
    use loom::cell::UnsafeCell;
    use loom::sync::atomic::{AtomicU64, Ordering};

    /// A ring's data area as loom sees it: each 8-byte word is an atomic
    /// (what the stamp and kind loads read) and a cell (what payload copies
    /// read and write, so that loom reports a copy that races with another
    /// access). A payload word written where a later frame's stamp or kind
    /// will lie is stored in the atomic too, as the bytes would be in real
    /// memory: a stale payload must never read as a stamp.
    pub(crate) struct ModelMemory {
        words: Box<[AtomicU64]>,
        cells: Box<[UnsafeCell<u64>]>,
    }

    // SAFETY: the cells are accessed only through loom's `with`/`with_mut`,
    // which report any two accesses of a cell that are not ordered (the race
    // a real `Sync` bound would forbid); the rest are atomics.
    unsafe impl Sync for ModelMemory {}

    impl ModelMemory {
        /// `cap` zeroed bytes (a multiple of 64).
        pub(crate) fn new(cap: usize) -> ModelMemory {
            ModelMemory {
                words: (0..cap / 8).map(|_| AtomicU64::new(0)).collect(),
                cells: (0..cap / 8).map(|_| UnsafeCell::new(0)).collect(),
            }
        }
    }

    /// The model's view of a [`ModelMemory`], with the accesses of the real one.
    #[derive(Clone, Copy)]
    pub(crate) struct DataArea<'r> {
        memory: &'r ModelMemory,
    }

    impl<'r> DataArea<'r> {
        pub(crate) fn of(memory: &'r ModelMemory) -> DataArea<'r> {
            DataArea { memory }
        }

        pub(crate) fn word(&self, at: usize) -> &'r AtomicU64 {
            assert!(at.is_multiple_of(8));
            &self.memory.words[at / 8]
        }

        /// As the real area's `write`, whose contract the ring keeps.
        pub(crate) unsafe fn write(&self, at: usize, bytes: &[u8]) {
            assert!(at.is_multiple_of(8), "payloads start on words");
            for (i, chunk) in bytes.chunks(8).enumerate() {
                let w = at / 8 + i;
                let word = self.memory.cells[w].with_mut(|cell| {
                    // SAFETY: loom checks this access is not concurrent with
                    // any other of the cell (it panics if it is).
                    let old = unsafe { *cell };
                    let mut b = old.to_le_bytes();
                    b[..chunk.len()].copy_from_slice(chunk);
                    let new = u64::from_le_bytes(b);
                    // SAFETY: as above.
                    unsafe { *cell = new };
                    new
                });
                // Bytes 0..16 of a line are where a frame's stamp and kind lie.
                if (w * 8) % 64 < 16 {
                    self.memory.words[w].store(word, Ordering::Relaxed);
                }
            }
        }

        /// As the real area's `read`, whose contract the ring keeps.
        pub(crate) unsafe fn read(&self, at: usize, len: usize, out: &mut Vec<u8>) {
            out.clear();
            for w in at / 8..(at + len).div_ceil(8) {
                // SAFETY: loom checks this read is not concurrent with a write
                // of the cell (it panics if it is).
                let word = self.memory.cells[w].with(|cell| unsafe { *cell });
                out.extend_from_slice(&word.to_le_bytes());
            }
            out.truncate(len);
        }
    }
}
