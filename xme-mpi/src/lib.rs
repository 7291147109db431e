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
//! # How calls travel
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
//! # Failures
//! A unit that panics gives [`MpiError::UnitPanicked`] (the seed's
//! `TASK_RUN_FAILURE`) and its process goes on. A logical process that dies
//! fails its pending calls with [`MpiError::ProcessDied`]; `To::Any` skips
//! it; the others go on. [`MpiHandle::close`] ends processes after their queued
//! calls, kills one that lingers, and reaps them all; `run` closes everything
//! even if `main` panics.

mod backend;
mod builder;
mod close;
#[cfg(feature = "cluster")]
mod cluster;
mod cores;
mod error;
mod fork;
mod frame;
mod handle;
mod link;
mod logical;
mod ring;
mod slots;
mod unit;

pub use backend::launcher_size;
pub use builder::{DEFAULT_BUFFER_SIZE, DEFAULT_CHANNEL_BYTES, Mpi};
pub use close::CLOSE_GRACE;
pub use error::{MpiError, TASK_RUN_FAILURE};
pub use handle::{LpStatus, MpiHandle, To};
pub use slots::Slot;
pub use unit::Unit;
