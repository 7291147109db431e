//! The five XME lock types across processes (seed 2.3, `Security`):
//! DISABLE, MUTEX, AUTHORISATION, READWRITE and SPIN, held by
//! [`Operator`]s, with `WaitTime` deadlock detection and recovery from a holder
//! that died, even by `SIGKILL`.
//!
//! ```
//! use xme_core::Operator;
//! use xme_security::{LockType, Security, SecurityError};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let sec = Security::new(LockType::ReadWrite)?; // shared with forked children
//! let writer = Operator::alloc();
//! let reader = Operator::alloc();
//! sec.register(writer);
//!
//! {
//!     let a = sec.read(reader)?; // any operator may read,
//!     let b = sec.read(writer)?; // several at once
//!     assert!(a.is_shared() && b.is_shared());
//! }
//! let w = sec.lock(writer)?; // only the registered writer writes
//! assert!(matches!(sec.lock(reader), Err(SecurityError::NotWriter { .. })));
//! drop(w);
//! # Ok(())
//! # }
//! ```
//!
//! # Where the state lives
//! A lock's whole state (type, holder pid and operator, reader slots,
//! settings, authorised list) is a [`SecurityState`] of `#[repr(C)]` atomics.
//! [`Security::new`] puts it in its own shared memory, shared with every child
//! forked afterwards; [`Security::in_region`] and [`Security::from_state`] place
//! it in a region other processes map too. Fixed capacities:
//! [`AUTH_CAPACITY`] authorised operators, [`READER_SLOTS`] concurrent read guards.
//!
//! # Waiting
//! A blocked caller spins briefly (exponential `spin_loop`), yields a few
//! times, then, except under SPIN, sleeps on a shared futex that every release
//! wakes, each sleep at most `MuteTime`. SPIN never sleeps: after spinning it
//! keeps yielding, so it backs off when processes outnumber cores. The seed's
//! MUTEX slept `MuteTime` between tries; a futex wakes the waiter at the
//! release instead, and `MuteTime` bounds how late a dead holder is noticed.
//!
//! # A holder that dies
//! The holder's pid is part of the lock word. A waiter that finds that process
//! gone takes the lock over and learns it through
//! [`Acquired::previous_owner_died`] / [`LockGuard::previous_owner_died`]. Pids
//! can be reused by the system: a lock held by a dead process whose pid was
//! given to a new process stays held until that process ends too.
//!
//! Linux only: xme uses shared futexes and /proc.

// Under loom only the protocol is built; the handle's helpers go unused.
#![cfg_attr(loom, allow(dead_code))]

#[cfg(not(target_os = "linux"))]
compile_error!(
    "xme-security runs on Linux only (shared futexes and /proc): build it for a Linux target"
);

mod error;
#[cfg(not(loom))]
mod inspect;
mod lock_type;
mod primitive;
mod state;
// The handle waits on real futexes and reads /proc: not for loom. Under
// `--cfg loom` only the state protocol is built, and model-checked.
#[cfg(not(loom))]
mod lock_guard;
#[cfg(not(loom))]
mod security;
#[cfg(not(loom))]
mod wait;

pub use error::{DEADLOCKMARK_ONLOCK, DEADLOCKMARK_UNLOCK, Deadlock, SecurityError};
#[cfg(not(loom))]
pub use inspect::LockSnapshot;
#[cfg(not(loom))]
pub use lock_guard::{LockGuard, ReadGuard};
pub use lock_type::LockType;
#[cfg(not(loom))]
pub use security::{Acquired, DEFAULT_MUTE_TIME, DeadLockFun, Security};
pub use state::{AUTH_CAPACITY, READER_SLOTS, SecurityState};
pub use xme_core::{Operator, SharedRegion};

// The README's example runs as a doctest (and, depending on this crate
// alone, in CI: scripts/standalone-check.sh).
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
