//! Atomics from `std`, or from `loom` when model-checking (`--cfg loom`), so
//! the protocol code (`ring.rs`, `claim_word.rs`, `doorbell.rs`) is what loom
//! explores.

#[cfg(loom)]
pub(crate) use loom::sync::atomic::{AtomicU32, AtomicU64, Ordering, fence};
#[cfg(not(loom))]
pub(crate) use std::sync::atomic::{AtomicU32, AtomicU64, Ordering, fence};
