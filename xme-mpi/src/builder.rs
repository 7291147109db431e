//! `Mpi`: how a run is set up (pnum, buffers, units), and `run`.

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
    /// feature; [`MpiError::WorldSize`], [`MpiError::UnitMismatch`] and
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
