//! Atomics from `std`, or from `loom` when model-checking (`--cfg loom`).

#[cfg(loom)]
pub(crate) use loom::sync::atomic::{AtomicU64, Ordering, fence};
#[cfg(not(loom))]
pub(crate) use std::sync::atomic::{AtomicU64, Ordering, fence};

/// Views the start of `words` as `T`, a header declared as a struct.
///
/// # Safety
/// `T` must be `#[repr(C)]` and made only of [`AtomicU64`] fields (or arrays
/// of them): it then has the layout of `size_of::<T>() / size_of::<AtomicU64>()`
/// consecutive words (one type, one alignment: no padding), and every field
/// is an atomic like the words it overlays.
///
/// # Panics
/// If `words` is shorter than `T`.
#[inline]
pub(crate) unsafe fn view_words<T>(words: &[AtomicU64]) -> &T {
    assert!(
        std::mem::size_of_val(words) >= std::mem::size_of::<T>(),
        "a header longer than its words"
    );
    assert!(std::mem::align_of::<T>() <= std::mem::align_of::<AtomicU64>());
    // SAFETY: the length and alignment are checked above; the layout of `T`
    // is the caller's promise (see # Safety); the reference borrows `words`.
    unsafe { &*(words.as_ptr() as *const T) }
}

/// One turn of a wait loop: a spin hint, or under loom a yield (so that a
/// model lets the awaited thread run).
#[inline]
pub(crate) fn spin() {
    #[cfg(loom)]
    loom::thread::yield_now();
    #[cfg(not(loom))]
    std::hint::spin_loop();
}

/// Turns a wait loop spins before it waits some other way (fewer in models,
/// where each turn is explored).
pub(crate) const SPINS: u32 = if cfg!(loom) { 2 } else { 1024 };
