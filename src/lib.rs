//! xme: many processes working together on one job.
//!
//! A Rust re-creation of the Python XME 4.2 (Xenon Multiprocessing Engine),
//! built from small crates, each usable alone:
//!
//! | module | crate | what |
//! | --- | --- | --- |
//! | [`exec`] | `xme-exec` | the standard interface: a table of functions run over forked processes |
//! | [`array`](mod@array) | `xme-array` | `Array` arguments and the split plan |
//! | [`log`] | `xme-log` | the pid-stamped logger (`print` / `logobj`) |
//! | [`mpi`] | `xme-mpi` | one main process + logical processes, typed calls |
//! | [`shm`] | `xme-shm` | shared-memory arena, lock-free value table, Manager, call buffer, Guard, HeartJump |
//! | [`monitor`] | `xme-monitor` | JSON message map, sealed and Python-XME codecs, RPC |
//! | [`security`] | `xme-security` | the five lock types across processes |
//! | [`core`] | `xme-core` | operators, errors, shared regions, process helpers |
//!
//! ```
//! use xme::{Array, Xme};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let sums = Xme::new().pnum(2).fun(|v: u64| (v + 1..v + 11).sum::<u64>(), Array::new((0..10).map(|v| v * 10)))?;
//! assert_eq!(sums.into_result()?.iter().sum::<u64>(), 5050);
//! # Ok(())
//! # }
//! ```
//!
//! Linux only: xme uses fork, memfd, futexes, pidfd and /proc.
//!
//! # Features
//!
//! - `progress`: `Xme::progress`, a progress bar on stderr (through `indicatif`).
//! - `cluster`: [`mpi`] runs on the ranks of a real MPI job started by
//!   `mpirun` (Open MPI or MPICH through the `mpi` crate; building needs an
//!   MPI library and libclang). Without it, a program started by a launcher
//!   gets an error rather than a forked pool per rank.
//!
//! The crates' own features are on here: `xme-core`'s `named` (named regions),
//! `xme-monitor`'s `sealed` (the sealed codec) and `rpc`. Depend on a single
//! crate with `default-features = false` for a smaller tree (see the README).

#[cfg(not(target_os = "linux"))]
compile_error!(
    "xme runs on Linux only (fork, memfd, futexes, pidfd and /proc): build it for a Linux target"
);

#[doc(inline)]
pub use xme_array as array;
#[doc(inline)]
pub use xme_core as core;
#[doc(inline)]
pub use xme_exec as exec;
#[doc(inline)]
pub use xme_log as log;
#[doc(inline)]
pub use xme_monitor as monitor;
#[doc(inline)]
pub use xme_mpi as mpi;
#[doc(inline)]
pub use xme_security as security;
#[doc(inline)]
pub use xme_shm as shm;

pub use xme_array::{Array, Same};
pub use xme_core::Operator;
pub use xme_exec::{
    Call, CallSet, Context, ExecError, Job, Outcomes, Pool, PoolJob, Spawning, TaskError,
    TaskFailure, Xme,
};
pub use xme_log::Logger;

// The README's Rust examples run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
