//! The XME standard interface (XMESI): run a table of functions over forked
//! worker processes, with `Array` arguments split across calls.
//!
//! ```
//! use xme_exec::{Array, Xme};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let xme = Xme::new().pnum(2);
//! let squares = xme.fun(|x: u64| x * x, Array::new(1..=5))?.into_result()?;
//! assert_eq!(squares, [1, 4, 9, 16, 25]);
//! # Ok(())
//! # }
//! ```
//!
//! # How a run works
//! - `calnum` calls per function ([`xme_array`]'s split plan); at most `pnum`
//!   worker processes live at once, each forked from the caller and reused for
//!   many calls. Workers take calls top to bottom through a shared counter, so
//!   one slow call never holds back others.
//! - Tasks are closures run in the worker as they are: they may capture
//!   anything, even what is neither `Send` nor serializable. Each call's result
//!   crosses back over a pipe, postcard-encoded.
//! - A call that panics, whose worker is killed or exits, or that runs past its
//!   [`timeout`](Xme::timeout) yields a [`TaskError`] naming the call, the
//!   function and what happened; a replacement worker takes the remaining
//!   calls, and every other result is kept.
//! - Every worker is reaped before the run returns; workers die with their
//!   parent (`PR_SET_PDEATHSIG`).
//!
//! # The warm pool
//! [`Pool`] keeps workers across calls and can be made at any point of any
//! program: its zygote is a fresh `exec` of the program that becomes a fork
//! server before `main` runs. It runs single calls ([`Pool::spawn`] → a
//! [`Call`] to join, cancel or await), sets of calls ([`CallSet`]), streams
//! over lazy inputs ([`Pool::stream`]) and the standard interface
//! ([`Pool::fun`]), each call at most once.
//!
//! # Fork before threads
//! An [`Xme`] worker is a fork of the calling process, which copies only the calling
//! thread. Tasks must not take locks another thread of the parent might have
//! held at fork time (see [`xme_core::process`]). Start runs before threads, or
//! keep tasks free of such locks; the xme logger takes none.
//!
//! # Features
//! - `progress`: `Xme::progress` shows a progress bar (calls done / total).
//!
//! Linux only: xme uses fork, pidfd, SCM_RIGHTS and /proc.

#![cfg_attr(loom, allow(dead_code))] // only the models use the claim protocol then

#[cfg(not(target_os = "linux"))]
compile_error!(
    "xme-exec runs on Linux only (fork, pidfd, SCM_RIGHTS and /proc): build it for a Linux target"
);

// Under `--cfg loom` only the claim protocol is built, and model-checked.
#[cfg(not(loom))]
mod board;
mod claim;
#[cfg(not(loom))]
mod context;
#[cfg(not(loom))]
mod error;
#[cfg(not(loom))]
mod fanout;
#[cfg(not(loom))]
mod job;
#[cfg(not(loom))]
mod outcomes;
#[cfg(not(loom))]
mod pool;
// Under loom only the pool's shared-memory protocols are built, and checked.
#[cfg(loom)]
mod pool {
    mod claims;
    mod doorbell;
    mod ring;
    mod sync;
}
#[cfg(not(loom))]
mod reply;
#[cfg(not(loom))]
mod runner;
mod sigchld;
#[cfg(not(loom))]
mod threads;
#[cfg(not(loom))]
mod worker;
#[cfg(not(loom))]
mod xme;

#[cfg(not(loom))]
pub use context::Context;
#[cfg(not(loom))]
pub use error::{ExecError, TaskError, TaskFailure};
#[cfg(not(loom))]
pub use fanout::Spawning;
#[cfg(not(loom))]
#[doc(hidden)]
pub use job::ErasedJob;
#[cfg(not(loom))]
pub use job::{CallWith, Job, JobTable, Plain, WithContext};
#[cfg(not(loom))]
pub use outcomes::Outcomes;
#[cfg(not(loom))]
pub use pool::{
    Call, CallSet, Ordered, Pool, PoolBuilder, PoolJob, PoolJobs, PoolStart, StreamBuilder,
    Unordered,
};
#[cfg(not(loom))]
pub use reply::{RawBytes, Reply};
#[cfg(not(loom))]
pub use xme::{Xme, cpus};
pub use xme_array::{Array, Same};
pub use xme_core::{Fate, Operator, PanicReport};

// The README's example runs as a doctest (and, depending on this crate
// alone, in CI: scripts/standalone-check.sh).
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
