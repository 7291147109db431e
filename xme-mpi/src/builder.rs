//! `Mpi`: how a run is set up (pnum, buffers, units), and `run`.

use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::MpiError;
use crate::backend::{self, Backend};
use crate::config::RunConfig;
use crate::fork;
use crate::handle::MpiHandle;
use crate::unit::{Registry, Unit};

/// The seed's default `mpi_buffer_size`.
pub const DEFAULT_BUFFER_SIZE: usize = 255;
/// Default bytes of each direction's channel to a logical process.
pub const DEFAULT_CHANNEL_BYTES: usize = 1 << 20;
/// Default bound on noticing a logical process that died or stopped
/// answering ([`Mpi::failure_detection`]).
pub const DEFAULT_FAILURE_DETECTION: Duration = Duration::from_secs(10);
/// The shortest detection bound [`Mpi::failure_detection`] accepts.
const MIN_FAILURE_DETECTION: Duration = Duration::from_millis(100);

/// An MPI run: one main process and `pnum - 1` logical processes (seed 3).
///
/// ```
/// use xme_mpi::{Mpi, To};
///
/// fn distance((p, q): ((f64, f64), (f64, f64))) -> f64 {
///     ((q.0 - p.0).powi(2) + (q.1 - p.1).powi(2)).sqrt()
/// }
///
/// # fn main() -> Result<(), xme_mpi::MpiError> {
/// let mut mpi = Mpi::new(3)?;
/// let distance = mpi.register("distance", distance);
/// let right = mpi.run(|m| -> Result<bool, xme_mpi::MpiError> {
///     let (a, b, c) = ((0.0, 0.0), (3.0, 0.0), (0.0, 4.0));
///     let ab = m.block_acquire(&distance, &(a, b), To::Any)?;
///     let ac = m.acquire(&distance, &(a, c), To::Process(1))?;
///     let bc = m.acquire(&distance, &(b, c), To::Any)?;
///     let (ac, bc) = (m.get(ac)?, m.get(bc)?);
///     Ok((ab * ab + ac * ac - bc * bc).abs() < 1e-9)
/// })??;
/// assert!(right);
/// # Ok(())
/// # }
/// ```
pub struct Mpi {
    config: RunConfig,
}

impl std::fmt::Debug for Mpi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let c = &self.config;
        f.debug_struct("Mpi")
            .field("pnum", &c.pnum)
            .field("buffer_size", &c.buffer_size)
            .field("channel_bytes", &c.channel_bytes)
            .field("bind_to_cores", &c.bind_to_cores)
            .field("call_timeout", &c.call_timeout)
            .field("failure_detection", &c.failure_detection)
            .field("units", &c.registry.signatures().len())
            .finish()
    }
}

impl Mpi {
    /// An MPI of `pnum` processes: the main one and `pnum - 1` logical ones.
    pub fn new(pnum: usize) -> Result<Mpi, MpiError> {
        if pnum < 2 {
            return Err(MpiError::PnumTooSmall(pnum));
        }
        Ok(Mpi {
            config: RunConfig {
                pnum,
                buffer_size: DEFAULT_BUFFER_SIZE,
                channel_bytes: DEFAULT_CHANNEL_BYTES,
                bind_to_cores: true,
                registry: Registry::default(),
                call_timeout: None,
                failure_detection: DEFAULT_FAILURE_DETECTION,
            },
        })
    }

    /// Result slots (the seed's `mpi_buffer_size`, default 255): calls in
    /// flight at most; `acquire` waits while every slot is taken.
    pub fn buffer_size(mut self, slots: usize) -> Mpi {
        self.config.buffer_size = slots.max(1);
        self
    }

    /// Bytes of each direction's channel to a logical process (default 1 MiB,
    /// rounded up to a power of two, 4 KiB to 1 TiB); one call's arguments or
    /// result must fit in half of it.
    pub fn channel_bytes(mut self, bytes: usize) -> Mpi {
        self.config.channel_bytes = bytes.clamp(4096, 1 << 40).next_power_of_two();
        self
    }

    /// Whether each logical process is bound to a core of its own, in turn
    /// over the cores this process may use, starting off the one the main
    /// process runs on (default: yes, as MPI launchers bind ranks). Unbound,
    /// the scheduler tends to put a process on the core of the one that woke
    /// it, where their spinning waits then take turns. The main process is
    /// never bound.
    pub fn bind_to_cores(mut self, bind: bool) -> Mpi {
        self.config.bind_to_cores = bind;
        self
    }

    /// A deadline for every call (default: none): a call that has *run*
    /// longer than `deadline` in its logical process (time queued behind
    /// other calls does not count) fails with [`MpiError::DeadlineExceeded`],
    /// and its process is ended, since a unit cannot be stopped from outside
    /// in any other way: a forked process is killed (and reaped), a rank of
    /// an MPI job is declared hung and gets no more calls (the job is then
    /// ended when `run` returns, see the crate docs). The other calls still
    /// pending on that process fail with [`MpiError::Closed`] naming why;
    /// calls on the other processes go on. `get`, `block_acquire`, `map` and
    /// streams all honour it; noticed within about an eighth of `deadline`
    /// after it passes. To wait less for one result without ending anything,
    /// use [`MpiHandle::get_timeout`].
    ///
    /// ```
    /// use std::time::Duration;
    /// use xme_mpi::{Mpi, MpiError, To};
    /// # fn main() -> Result<(), MpiError> {
    /// let mut mpi = Mpi::new(3)?.call_timeout(Duration::from_millis(300));
    /// let nap = mpi.register("nap", |ms: u64| { std::thread::sleep(Duration::from_millis(ms)); ms });
    /// mpi.run(|m| -> Result<(), MpiError> {
    ///     let e = m.block_acquire(&nap, &60_000, To::Process(1)).unwrap_err();
    ///     assert!(matches!(e, MpiError::DeadlineExceeded { process: 1, .. }), "{e}");
    ///     assert_eq!(m.block_acquire(&nap, &1, To::Any)?, 1); // process 2 goes on
    ///     Ok(())
    /// })??;
    /// # Ok(())
    /// # }
    /// ```
    pub fn call_timeout(mut self, deadline: Duration) -> Mpi {
        self.config.call_timeout = Some(deadline.max(Duration::from_millis(1)));
        self
    }

    /// How soon a logical process that dies or stops answering is noticed
    /// (default [`DEFAULT_FAILURE_DETECTION`], 10 s; at least 100 ms). Each
    /// logical process beats four times per `bound` from a thread of its
    /// own, also while a unit runs; one that misses three beats in a row (a rank
    /// that was killed, a host that went down, a stopped process) is ended:
    /// its pending calls fail with [`MpiError::Unresponsive`] naming it and
    /// its host, and `To::Any` skips it. A forked process that dies is
    /// noticed at once (it is the main process's child); a rank that dies is
    /// noticed through its beats, and then ends the MPI job when `run`
    /// returns. Ranks watch rank 0 the same way and end the job if it goes
    /// silent, and a cluster run's start (`MPI_Init` and the exchange of
    /// units) must end within 3 × `bound` + 5 s: a rank that dies while the
    /// job starts would leave the others in `MPI_Init` for ever, so past
    /// that each rank leaves with [`ABORT_STATUS`](crate::ABORT_STATUS).
    /// Too short a bound on a loaded machine mistakes a slow process for a
    /// dead one.
    ///
    /// ```
    /// use std::time::Duration;
    /// let mpi = xme_mpi::Mpi::new(2).unwrap().failure_detection(Duration::from_secs(3));
    /// ```
    pub fn failure_detection(mut self, bound: Duration) -> Mpi {
        self.config.failure_detection = bound.max(MIN_FAILURE_DETECTION);
        self
    }

    /// Registers a computing unit under `name` (the seed's `mpi["distance"] = distance`).
    pub fn register<A, R, F>(&mut self, name: &'static str, f: F) -> Unit<A, R>
    where
        A: Serialize + DeserializeOwned,
        R: Serialize + DeserializeOwned,
        F: Fn(A) -> R + Send + Sync + 'static,
    {
        self.config.registry.register(name, f)
    }

    /// Starts the logical processes, runs `main` with the handle in this
    /// process, and closes every logical process afterwards, also when `main`
    /// panics (the panic then continues). Returns what `main` returns.
    ///
    /// Started directly, the logical processes are forked from this one.
    /// Started by an MPI launcher (`mpirun -n N prog`, `srun -n N prog`; or
    /// with `XME_MPI_BACKEND=cluster`) and built with the `cluster` feature,
    /// rank 0 runs `main` and ranks `1..N` are the logical processes: code
    /// before `run` runs on every rank, code after it only on rank 0 (the
    /// other ranks serve until closed, then finalise MPI and exit 0 inside
    /// `run`). One cluster `run` per launch. See the crate docs.
    ///
    /// # Errors
    /// [`MpiError::ClusterNotBuilt`] under a launcher without the `cluster`
    /// feature; [`MpiError::SrunWithoutPmi`] in one of several `srun` tasks
    /// that have no PMI (or one the MPI library does not speak); [`MpiError::WorldSize`], [`MpiError::UnitMismatch`] and
    /// [`MpiError::Cluster`] in a cluster run (on every rank); a region or
    /// fork that failed.
    pub fn run<T>(self, main: impl FnOnce(&MpiHandle<'_>) -> T) -> Result<T, MpiError> {
        match backend::choose()? {
            Backend::Fork => fork::run(self.config, main),
            #[cfg(feature = "cluster")]
            Backend::Cluster { .. } => crate::cluster::run(self.config, main),
            #[cfg(not(feature = "cluster"))]
            Backend::Cluster { found } => Err(MpiError::ClusterNotBuilt {
                found: found.to_string(),
            }),
        }
    }
}
