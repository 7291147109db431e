//! Shared memory for xme (seed 2.1–2.2): an arena and a lock-free value table
//! in a shared region, and the XMEManager over them.
//!
//! ```
//! use xme_shm::XmemBuilder;
//! use xme_core::{Operator, process};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let xmem = XmemBuilder::new().value("visits", &0u32)?.build()?;
//! let child = process::fork_child(|| {
//!     let op = Operator::alloc();
//!     xmem.update_with("visits", |v: Option<u32>| v.unwrap_or(0) + 1).unwrap();
//!     xmem.status(op, "done").unwrap();
//!     0
//! })?;
//! child.wait()?;
//! assert_eq!(xmem.get::<u32>("visits")?, 1);
//! assert_eq!(xmem.statuses()?.values().next().unwrap().status, "done");
//! # Ok(())
//! # }
//! ```
//!
//! # How it holds up when processes die
//! The table is a hash table of slots, each one word: the handle of a block
//! holding a key and its current value. A writer fills a fresh block and
//! publishes it with one compare-and-swap; a reader copies a block and checks
//! its generation did not move. The arena's blocks change state with single
//! CASes on one word (generation | owner pid | state). So a process killed at any
//! instruction leaves every key with its old or its new whole value and holds
//! no lock; at worst it leaves a block marked as being written by a dead pid,
//! a page's count off by one, or a delete half done, which the next taker of
//! the lock it held finishes and [`Manager::sweep`] cleans (a full arena
//! sweeps by itself): after a sweep, every page in use holds a live entry.
//!
//! # Nothing ages
//! A delete moves the keys after it back along their probe chains, so the
//! table is always what inserting its keys into a fresh one would give:
//! probes do not lengthen however many keys came and went
//! ([`Manager::table_stats`]). Block generations have 40 bits (a handle
//! keeps at least 32), so a stalled `update_with` notices its key changed
//! across any realistic number of writes.
//!
//! # Limits
//! - Capacity (live keys) and arena size are fixed at build time; past them,
//!   [`ShmError::CapacityFull`] / [`ShmError::ArenaFull`], nothing lost.
//! - A value may use the whole arena: entries (32-byte header, key, value) up
//!   to 32 KiB take a block of a size class, larger ones a run of 64 KiB pages
//!   ([`ShmError::ValueTooLarge`] past the arena). Keys are at most
//!   [`MAX_KEY`] bytes ([`ShmError::KeyTooLong`]).
//! - A delete frees the key's block at once and never needs room; a page
//!   whose blocks are all free returns to the pool for any size class.
//! - Writes are copy-on-write: overwriting a key needs room for the new value
//!   until the old one is released.
//! - `__STATUS__` keeps one entry per operator; past the builder's
//!   `status_keep` (plus a quarter) the oldest are pruned, ended processes'
//!   first.
//!
//! Linux only: xme uses shared regions and futexes.

// Under loom only the table and arena are built, and model-checked.
#![cfg_attr(loom, allow(dead_code))]

// Rooms, lowest first (arrows point down only):
// `store` (the table and its arena) and `buffer` (the call ring and
// mailboxes) know nothing of the Manager; `manager` builds on both; `calls`
// (append / exec / get, the Guard, HeartJump) and `shared_object` build on
// the Manager.
#[cfg(not(target_os = "linux"))]
compile_error!(
    "xme-shm runs on Linux only (shared regions and futexes): build it for a Linux target"
);

mod buffer;
#[cfg(not(loom))]
mod calls;
mod error;
#[doc(hidden)]
pub mod hooks;
#[cfg(not(loom))]
mod manager;
mod primitive;
#[cfg(not(loom))]
mod raw;
#[cfg(not(loom))]
mod shared_object;
mod store;

pub use error::ShmError;
// Types of other crates in this crate's signatures, so it can be used alone.
#[cfg(not(loom))]
pub use manager::{
    BUILTINS, GUARD_KEY, GuardTable, Manager, ProcessStatus, RESERVED_KEYS, STATUS_KEY,
    StatusTable, XMEM_KEY, XmemBuilder,
};
// Reading a Manager from outside (`xme show`).
#[cfg(not(loom))]
pub use manager::{
    ClassPages, GuardSnapshot, KeySnapshot, MANAGER_KIND, MANAGER_LAYOUT, ManagerSnapshot,
    PREVIEW_BYTES, PageCensus, StatusSnapshot,
};
#[cfg(not(loom))]
pub use raw::RawValue;
pub use store::arena::ArenaStats;
pub use store::layout::{Layout, MAX_BLOCK, PAGE_BYTES};
pub use store::table::{MAX_KEY, TableStats};
pub use xme_core::{Operator, SharedRegion};
#[cfg(not(loom))]
pub use xme_exec::Context;
#[cfg(not(loom))]
pub use xme_security::LockSnapshot;
#[cfg(not(loom))]
pub use xme_security::{LockType, Security, SecurityError};
#[cfg(not(loom))]
pub use {
    buffer::call_buffer::BufferConfig,
    calls::call::{Builtin, Call, GUARD_FUN_FAIL, Named, XMEM_GET_FAIL},
    calls::guard::{Guard, GuardProcess, GuardReport, StopReason},
    calls::heartjump::HeartJump,
    calls::manager_calls::{BufferSnapshot, Executed, PendingCall, TableCopy, Ticket},
    shared_object::SharedObject,
};

// The README's example runs as a doctest (and, depending on this crate
// alone, in CI: scripts/standalone-check.sh).
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
