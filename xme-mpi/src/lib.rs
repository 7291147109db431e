//! xme's MPI (seed section 3): one main process and `pnum - 1` logical
//! processes that run computing units for it.
//!
//! ```
//! use xme_mpi::{Mpi, To};
//!
//! # fn main() -> Result<(), xme_mpi::MpiError> {
//! let mut mpi = Mpi::new(2)?;
//! let square = mpi.register("square", |x: u64| x * x);
//! let sum = mpi.run(|m| {
//!     let slots: Vec<_> = (1..=10).map(|i| m.acquire(&square, &i, To::Any).unwrap()).collect();
//!     slots.into_iter().map(|s| m.get(s).unwrap()).sum::<u64>()
//! })?;
//! assert_eq!(sum, 385);
//! # Ok(())
//! # }
//! ```
//!
//! # One machine or many: two backends, one program
//! Started directly, [`Mpi::run`] forks its logical processes (below). Started
//! by an MPI launcher (`mpirun -n N prog`, `srun -n N prog`: detected by
//! `OMPI_COMM_WORLD_SIZE`, `PMI_SIZE` or `PMIX_RANK`, or forced with
//! `XME_MPI_BACKEND=fork|cluster`) and built with the `cluster` feature, the
//! same program runs on the ranks of a real MPI job, through the `mpi` crate
//! (rsmpi) over Open MPI or MPICH, on one host or many:
//!
//! - rank 0 runs `main`; ranks `1..N` are the logical processes. Code before
//!   `run` runs on every rank, code after it only on rank 0: the other ranks
//!   serve until closed, then finalise MPI and exit 0 inside `run`. One
//!   cluster `run` per launch (MPI initialises once per process).
//! - `Mpi::new(pnum)` must match the job's size ([`MpiError::WorldSize`]);
//!   [`launcher_size`] gives it, for a program that fills any job.
//! - Units are matched across ranks by name and type names at start: a unit
//!   missing or typed differently on a rank ends the run on every rank with
//!   [`MpiError::UnitMismatch`] naming the rank and the unit. `acquire_fn`
//!   (a function's address, which differs per rank) is refused with
//!   [`MpiError::FnAcrossHosts`].
//! - Every call works the same (`acquire`, `block_acquire`, `get`, timeouts,
//!   broadcast, [`MpiHandle::map`], `close`, several threads at once). MPI is
//!   initialised with `MPI_THREAD_SERIALIZED`: every MPI call of rank 0 holds
//!   one lock, so any thread may call. Sends are non-blocking and own their
//!   buffers until `MPI_Test` says done; receives probe and never block in
//!   MPI: a waiting side spins, yields, then sleeps, so an idle rank leaves
//!   its core free (briefly, where ranks outnumber cores).
//! - [`LpStatus`] of a rank: `Allocated` while calls to it are unanswered,
//!   else `Idle` (a remote rank shares no status word, so `InRun` is not
//!   reported); [`MpiHandle::pid`] and [`MpiHandle::host`] name the rank's
//!   process and host.
//! - **A rank that dies or hangs** (see [Failures](#failures)): rank 0
//!   notices it within [`Mpi::failure_detection`] (default 10 s) through
//!   heartbeats, its pending calls fail with [`MpiError::Unresponsive`] or
//!   [`MpiError::DeadlineExceeded`] naming the rank and its host, and calls
//!   to the other ranks go on. MPI cannot finalise without that rank, so
//!   once `main` returns, `run` ends the whole job with `MPI_Abort`
//!   ([`ABORT_STATUS`]) after printing why: every launcher (`mpirun`,
//!   `mpiexec`, `srun` with or without `-K`) then exits non-zero, leaving no
//!   process. Code after `run` does not run then. A rank that hears nothing
//!   from rank 0 for the bound ends the job too. (`mpirun` and MPICH's
//!   `mpiexec` end the job themselves, at once, when a rank *dies*.) A unit
//!   that panics still gives [`MpiError::UnitPanicked`] and the rank goes
//!   on. When a start error ends every rank's run, the first rank to exit
//!   non-zero makes Open MPI end the others, which may not get to print
//!   theirs (`--mca orte_abort_on_non_zero_status 0` lets them).
//! - **Slurm**: `srun --mpi=pmix` (Open MPI) or `srun --mpi=pmi2` (MPICH)
//!   starts the ranks; several `srun` tasks without PMI (`--mpi=none`,
//!   Slurm's default where the site set no `MpiDefault`), or with one the
//!   MPI library does not speak, get [`MpiError::SrunWithoutPmi`] on every
//!   task, naming the `--mpi=` to use. A batch script's own process is a
//!   program like any other (its logical processes are forked).
//! - Without the `cluster` feature, a program started by a launcher gets
//!   [`MpiError::ClusterNotBuilt`] on every rank, never N silent pools.
//!
//! ```text
//! cargo build --release --features cluster --example mpi_pi
//! mpirun -n 3 target/release/examples/mpi_pi                      # one host
//! mpirun --hostfile hosts -n 8 target/release/examples/mpi_pi     # many
//! srun --mpi=pmix -N 2 -n 8 target/release/examples/mpi_pi        # Slurm, Open MPI
//! ```
//!
//! # How calls travel (forked)
//! Each logical process is forked at [`Mpi::run`] and joined to the main process
//! by two single-producer single-consumer byte rings in shared memory (requests
//! in, replies out); a blocking call that nothing else waits behind takes each
//! ring's one-line fast lane instead. A waiting side spins briefly, yields,
//! then sleeps on a futex, so a round trip costs no system call while both
//! sides are busy, and nothing burns a core when idle or when processes
//! outnumber cores; logical processes are bound to cores in turn
//! ([`Mpi::bind_to_cores`]). Calls are
//! pipelined: `acquire` only writes the request; `get` reads replies. Every
//! frame carries the run's random token: a frame without it is dropped with a
//! logged error; a frame that breaks the channel's format ends that logical
//! process, whose pending calls then fail with an error naming it.
//!
//! [`MpiHandle::map`] sends many calls of one unit in batches (many calls to
//! a frame each way, several frames in flight to every process), results in
//! order: where calls are cheap it is many times faster than one `acquire`
//! per call, and on a cluster it hides the network's round trip.
//! [`MpiHandle::stream`] does the same over inputs of any length, pulled
//! lazily within a window, results in order or as they finish (also as a
//! `futures_core::Stream`).
//!
//! # Failures
//! A unit that panics gives [`MpiError::UnitPanicked`] (the seed's
//! `TASK_RUN_FAILURE`) and its process goes on. A logical process that dies
//! fails its pending calls with [`MpiError::ProcessDied`]; `To::Any` skips
//! it; the others go on. One that stops answering (no heartbeat from its
//! watcher thread for [`Mpi::failure_detection`]) is killed and its calls
//! fail with [`MpiError::Unresponsive`]. With [`Mpi::call_timeout`], a call
//! that runs longer fails with [`MpiError::DeadlineExceeded`] and its process
//! is killed (a unit cannot be stopped otherwise). [`MpiHandle::get_timeout`]
//! waits a bounded time for one result and ends nothing. [`MpiHandle::close`]
//! ends processes after their queued calls, kills one that lingers, and reaps
//! them all; `run` closes everything even if `main` panics.
//!
//! Linux only: xme uses fork, memfd, futexes and membarrier.

#![cfg_attr(loom, allow(dead_code))]

#[cfg(not(target_os = "linux"))]
compile_error!(
    "xme-mpi runs on Linux only (fork, memfd, futexes and membarrier): build it for a Linux target"
);

// Under `--cfg loom` only the byte ring (and the channel traits it
// implements) is built, and model-checked.
#[cfg(not(loom))]
mod backend;
#[cfg(not(loom))]
mod builder;
mod byte_ring;
#[cfg(not(loom))]
mod call_frame;
mod channel;
#[cfg(all(feature = "cluster", not(loom)))]
mod cluster;
#[cfg(not(loom))]
mod config;
#[cfg(not(loom))]
mod cores;
#[cfg(not(loom))]
mod error;
#[cfg(not(loom))]
mod fork;
#[cfg(not(loom))]
mod handle;
#[cfg(not(loom))]
mod link;
#[cfg(not(loom))]
mod logical;
#[cfg(not(loom))]
mod slots;
#[cfg(not(loom))]
mod unit;
#[cfg(not(loom))]
mod watch;

#[cfg(not(loom))]
pub use backend::{ABORT_STATUS, launcher_size};
#[cfg(not(loom))]
pub use builder::{DEFAULT_BUFFER_SIZE, DEFAULT_CHANNEL_BYTES, DEFAULT_FAILURE_DETECTION, Mpi};
#[cfg(not(loom))]
pub use error::{MpiError, TASK_RUN_FAILURE};
#[cfg(not(loom))]
pub use handle::CLOSE_GRACE;
#[cfg(not(loom))]
pub use handle::{LpStatus, MpiHandle, Ordered, StreamBuilder, To, Unordered};
#[cfg(not(loom))]
pub use slots::Slot;
#[cfg(not(loom))]
pub use unit::Unit;
pub use xme_core::{Fate, PanicReport};

// The README's example runs as a doctest (and, depending on this crate
// alone, in CI: scripts/standalone-check.sh).
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
