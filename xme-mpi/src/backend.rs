//! Which backend a run uses: forked logical processes on this machine, or
//! the ranks of an MPI job started by a launcher.

use crate::MpiError;

/// The exit status with which xme ends an MPI job (`MPI_Abort`) once a
/// rank died, hung or went silent: the launcher (`mpirun`, `mpiexec`,
/// `srun`) then exits non-zero (this status, or its own).
pub const ABORT_STATUS: i32 = 70;

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
/// Several tasks of one `srun` step without any (srun `--mpi=none`, Slurm's
/// default where the site set no `MpiDefault`) are refused on every task:
/// each would fork its own pool and run the whole job alone. A batch
/// script's one process (no step variables) is a program like any other.
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
    if let Some(found) = LAUNCHER_VARS.iter().find(|v| std::env::var_os(v).is_some()) {
        return Ok(Backend::Cluster { found });
    }
    match srun_tasks() {
        Some(tasks) if tasks > 1 => Err(MpiError::SrunWithoutPmi {
            tasks,
            reason: "srun gave it no PMI to reach the others (srun --mpi=none, Slurm's default \
                     where slurm.conf sets no MpiDefault)"
                .into(),
            advice: srun_advice(),
        }),
        _ => Ok(Backend::Fork),
    }
}

/// The tasks of the `srun` step this process is one of (`None` outside a
/// step, as in a batch script itself).
pub(crate) fn srun_tasks() -> Option<usize> {
    std::env::var("SLURM_STEP_NUM_TASKS").ok()?.parse().ok()
}

/// Which `srun --mpi=` makes this program's MPI library reach its peers.
pub(crate) fn srun_advice() -> String {
    #[cfg(feature = "cluster")]
    {
        // MPI_Get_library_version may be called before MPI_Init.
        let library = mpi::environment::library_version().unwrap_or_default();
        if library.contains("Open MPI") {
            return "launch it with `srun --mpi=pmix` (this program's MPI library is Open MPI)"
                .into();
        }
        if library.contains("MPICH") {
            return "launch it with `srun --mpi=pmi2` (this program's MPI library is MPICH)".into();
        }
        "launch it with the `srun --mpi=` its MPI library speaks: `pmix` for Open MPI, `pmi2` \
         for MPICH (`srun --mpi=list` shows what Slurm offers)"
            .into()
    }
    #[cfg(not(feature = "cluster"))]
    {
        "build it with the `cluster` feature and launch it with `srun --mpi=pmix` (Open MPI) or \
         `srun --mpi=pmi2` (MPICH)"
            .into()
    }
}

/// The number of ranks of the MPI job this process was launched in, from
/// the launcher's variables (`OMPI_COMM_WORLD_SIZE`, `PMI_SIZE`; under
/// `srun --mpi=pmix`, which sets neither, the step's `SLURM_STEP_NUM_TASKS`);
/// `None` when not launched (or the launcher does not say).
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
        .or_else(|| std::env::var_os("PMIX_RANK").and(srun_tasks()))
}
