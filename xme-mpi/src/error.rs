use std::time::Duration;

use xme_core::{Fate, PanicReport};

/// The seed's mark for a unit that could not run (`TASK_RUN_FAILURE`).
pub const TASK_RUN_FAILURE: &str = "<XME-MPI-RUN: TASK_NO_REGISTERED>";

/// Why an MPI operation failed.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum MpiError {
    /// Fewer than 2 processes were asked for.
    #[error("MPI needs pnum >= 2 (one main process and at least one logical process); got {0}")]
    PnumTooSmall(usize),
    /// The unit panicked in the logical process (which lives on).
    #[error("unit `{unit}` panicked in logical process {process}: {panic}")]
    UnitPanicked {
        /// The unit's name.
        unit: String,
        /// The logical process.
        process: usize,
        /// The panic.
        panic: PanicReport,
    },
    /// The logical process has no such unit (the seed's `TASK_NO_REGISTERED`):
    /// the program that forked it (or rank 0's binary) registered another set.
    #[error(
        "{TASK_RUN_FAILURE}: logical process {process} has no unit `{unit}` (register every unit \
         before Mpi::run, in every rank's binary)"
    )]
    UnitNotRegistered {
        /// The unit's name.
        unit: String,
        /// The logical process.
        process: usize,
    },
    /// The logical process could not run the unit (bad arguments, a result
    /// that could not be encoded or does not fit the reply channel).
    #[error("unit `{unit}` could not run in logical process {process}: {reason}")]
    UnitFailed {
        /// The unit's name.
        unit: String,
        /// The logical process.
        process: usize,
        /// Why.
        reason: String,
    },
    /// The logical process died with the call pending.
    #[error("logical process {process} (pid {pid}) {fate} with the call pending")]
    ProcessDied {
        /// The logical process.
        process: usize,
        /// Its pid.
        pid: i32,
        /// How it ended.
        fate: Fate,
    },
    /// The logical process was closed (or its channel broke) before
    /// answering; `reason` says which.
    #[error("logical process {process} is closed: {reason}")]
    Closed {
        /// The logical process.
        process: usize,
        /// Why.
        reason: String,
    },
    /// [`MpiHandle::get_timeout`](crate::MpiHandle::get_timeout) waited its
    /// whole time: the call goes on, and its slot stays valid.
    #[error(
        "no result from `{unit}` on {} within {waited:?}: the call goes on; get its slot \
         again later, or drop the slot to discard the result",
        place(*.process, None, .host.as_deref())
    )]
    Timeout {
        /// The unit.
        unit: String,
        /// The logical process the call went to.
        process: usize,
        /// Its host, for a rank of an MPI job.
        host: Option<String>,
        /// How long the caller waited.
        waited: Duration,
    },
    /// The call ran past the run's deadline ([`Mpi::call_timeout`](crate::Mpi::call_timeout)).
    /// Its process was ended: killed if forked; if a rank of an MPI job
    /// (`host` is set), declared hung: it gets no more calls, and the MPI job
    /// ends when `run` returns.
    #[error(
        "the call of `{unit}` ran {ran:?}, past the {deadline:?} deadline (Mpi::call_timeout), \
         on {}: {}",
        place(*.process, Some(*.pid), .host.as_deref()),
        if .host.is_some() {
            "the rank is treated as hung: it gets no more calls, and the MPI job ends when run returns"
        } else {
            "the process was killed"
        }
    )]
    DeadlineExceeded {
        /// The unit.
        unit: String,
        /// The logical process (rank).
        process: usize,
        /// Its pid (on its host).
        pid: i32,
        /// Its host, for a rank of an MPI job.
        host: Option<String>,
        /// The deadline.
        deadline: Duration,
        /// How long the call had run when noticed.
        ran: Duration,
    },
    /// The logical process gave no sign of life (no heartbeat) for the run's
    /// detection bound ([`Mpi::failure_detection`](crate::Mpi::failure_detection)):
    /// it died, its host went down, or it was stopped. Every call pending on
    /// it fails with this error; a forked one is killed; a rank of an MPI job
    /// (`host` is set) ends the job when `run` returns.
    #[error(
        "{} gave no sign of life for {silent:?} (Mpi::failure_detection): it died or \
         stopped answering; {}",
        place(*.process, Some(*.pid), .host.as_deref()),
        if .host.is_some() {
            "it gets no more calls, and the MPI job ends when run returns"
        } else {
            "it was killed"
        }
    )]
    Unresponsive {
        /// The logical process (rank).
        process: usize,
        /// Its pid (on its host).
        pid: i32,
        /// Its host, for a rank of an MPI job.
        host: Option<String>,
        /// How long it was silent.
        silent: Duration,
    },
    /// No logical process is alive to take the call.
    #[error("no logical process is alive to take the call")]
    NoLiveProcess,
    /// A logical process id outside `1..pnum`.
    #[error("there is no logical process {0} (they are numbered 1..pnum)")]
    NoSuchProcess(usize),
    /// `To::All` was given where one process is meant (use `broadcast`).
    #[error("acquire sends to one process; use broadcast for all")]
    UseBroadcast,
    /// Every slot stayed taken for the whole wait.
    #[error(
        "all {size} result slots stayed taken for {waited:?} (get some results, or raise mpi_buffer_size)"
    )]
    BufferFull {
        /// The buffer size.
        size: usize,
        /// How long the caller waited.
        waited: Duration,
    },
    /// The call's frame is larger than one frame may be (half the channel,
    /// less a header, so two frames always fit).
    #[error(
        "a call of {len} bytes is larger than the {max} bytes one frame may carry on a channel \
         of {capacity} bytes (raise channel_bytes)"
    )]
    FrameTooLarge {
        /// The frame's size.
        len: usize,
        /// The largest frame the channel carries.
        max: usize,
        /// The channel's capacity.
        capacity: usize,
    },
    /// The arguments could not be encoded.
    #[error("could not encode the arguments of `{unit}`: {reason}")]
    Encode {
        /// The unit.
        unit: String,
        /// Why.
        reason: String,
    },
    /// The result could not be decoded.
    #[error("could not decode the result of `{unit}`: {reason}")]
    Decode {
        /// The unit.
        unit: String,
        /// Why.
        reason: String,
    },
    /// The program runs under an MPI launcher (or `XME_MPI_BACKEND=cluster`)
    /// but was built without the `cluster` feature.
    #[error(
        "this program runs under an MPI launcher ({found}) but xme-mpi was built without the \
         `cluster` feature: every rank would fork its own pool. Build with \
         `--features cluster`, or run it without the launcher (or set XME_MPI_BACKEND=fork)"
    )]
    ClusterNotBuilt {
        /// What told it runs under a launcher.
        found: String,
    },
    /// One of several tasks of an `srun` step whose MPI library cannot reach
    /// the others (no PMI, or one it does not speak): each task would run
    /// the whole program alone. Every task gets this error.
    #[error(
        "this is one of {tasks} tasks of an srun step, but {reason}, so each task would run the \
         whole program alone: {advice} (or set XME_MPI_BACKEND=fork if each task should run alone)"
    )]
    SrunWithoutPmi {
        /// The tasks of the step.
        tasks: usize,
        /// What is missing.
        reason: String,
        /// Which `srun --mpi=` to use.
        advice: String,
    },
    /// `XME_MPI_BACKEND` holds neither `fork` nor `cluster`.
    #[error("XME_MPI_BACKEND is {0:?}: it takes `fork` or `cluster`")]
    BadBackend(String),
    /// The MPI job has another number of ranks than `Mpi::new(pnum)` asked for.
    #[error(
        "Mpi::new({pnum}) runs in an MPI job of {world} ranks: launch it with `-n {pnum}` \
         (or make pnum the world size, see xme_mpi::launcher_size)"
    )]
    WorldSize {
        /// The pnum asked for.
        pnum: usize,
        /// The ranks of the job.
        world: usize,
    },
    /// A rank's units differ from rank 0's (a unit missing, or with other
    /// argument or result types): every rank ends its run with this error.
    #[error("rank {rank}'s units differ from rank 0's: {detail}")]
    UnitMismatch {
        /// The rank whose registry differs.
        rank: usize,
        /// Which units and how.
        detail: String,
    },
    /// `acquire_fn` in a cluster run: a function's address differs on every
    /// rank (and host), so only registered units can be called.
    #[error(
        "acquire_fn cannot call a function by address on an MPI cluster (addresses differ \
         per rank): register it with Mpi::register and call the unit"
    )]
    FnAcrossHosts,
    /// The MPI library could not be used (initialised already, thread
    /// level too low, a rank that never answered).
    #[error("MPI: {0}")]
    Cluster(String),
    /// A call of [`MpiHandle::map`](crate::MpiHandle::map) failed (the
    /// others' results are discarded).
    #[error("call {index} of the map failed: {error}")]
    MapCall {
        /// The call's index in the map's arguments.
        index: usize,
        /// Why it failed.
        error: Box<MpiError>,
    },
    /// The slot belongs to another run, or was already taken.
    #[error(
        "this slot belongs to another MPI run or was already taken: pass a slot to the handle that made it"
    )]
    BadSlot,
    /// Setting up the run failed.
    #[error("could not start the MPI run: {0}")]
    Setup(String),
}

impl From<xme_core::Error> for MpiError {
    fn from(e: xme_core::Error) -> Self {
        MpiError::Setup(xme_core::error_chain(&e))
    }
}

/// "logical process 2 (pid 17 on host n1)", "rank 2 (host n1)".
fn place(process: usize, pid: Option<i32>, host: Option<&str>) -> String {
    match (pid, host) {
        (Some(pid), Some(host)) => format!("rank {process} (pid {pid} on host {host})"),
        (None, Some(host)) => format!("rank {process} (host {host})"),
        (Some(pid), None) => format!("logical process {process} (pid {pid})"),
        (None, None) => format!("logical process {process}"),
    }
}
