//! Which backend a run uses: forked logical processes on this machine, or
//! the ranks of an MPI job started by a launcher.

use crate::MpiError;

/// Where the logical processes of a run live.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Backend {
    /// Forked from this process.
    Fork,
    /// Ranks of the MPI job this process is part of; `found` says what told so.
    Cluster { found: &'static str },
}

/// Variables a launcher sets for every rank (`SLURM_NTASKS` is not one:
/// an sbatch allocation sets it for every step, launched or not).
const LAUNCHER_VARS: [&str; 3] = ["OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK"];

/// `XME_MPI_BACKEND=fork|cluster` if set, else a launcher's variables.
pub(crate) fn choose() -> Result<Backend, MpiError> {
    match std::env::var("XME_MPI_BACKEND") {
        Ok(v) if v == "fork" => return Ok(Backend::Fork),
        Ok(v) if v == "cluster" => {
            return Ok(Backend::Cluster {
                found: "XME_MPI_BACKEND=cluster",
            });
        }
        Ok(v) => return Err(MpiError::BadBackend(v)),
        Err(_) => {}
    }
    Ok(LAUNCHER_VARS
        .iter()
        .find(|v| std::env::var_os(v).is_some())
        .map_or(Backend::Fork, |found| Backend::Cluster { found }))
}

/// The number of ranks of the MPI job this process was launched in, from
/// the launcher's variables (`OMPI_COMM_WORLD_SIZE`, `PMI_SIZE`); `None`
/// when not launched (or the launcher does not say).
///
/// A program that should fill whatever job it is launched in passes it to
/// [`Mpi::new`](crate::Mpi::new):
///
/// ```
/// let pnum = xme_mpi::launcher_size().unwrap_or(3);
/// let mpi = xme_mpi::Mpi::new(pnum);
/// ```
pub fn launcher_size() -> Option<usize> {
    ["OMPI_COMM_WORLD_SIZE", "PMI_SIZE"]
        .iter()
        .find_map(|v| std::env::var(v).ok()?.parse().ok())
}
