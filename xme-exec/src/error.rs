use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use xme_core::{Fate, PanicReport};

/// Why a run could not start or go on. Failures of single calls are not
/// `ExecError`s: they are [`TaskError`]s inside the run's [`Outcomes`](crate::Outcomes).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ExecError {
    /// A function's arguments cannot be split.
    #[error("function {job} (`{function}`) has unusable arguments")]
    Arguments {
        /// Index of the function in the table.
        job: usize,
        /// Its name.
        function: String,
        /// Why.
        #[source]
        source: xme_array::ArrayError,
    },
    /// No worker process could be started.
    #[error("no worker process could be started")]
    NoWorker(#[source] xme_core::Error),
    /// The run's shared memory or pipes could not be set up or used.
    #[error("the run could not be set up")]
    Setup(#[from] xme_core::Error),
    /// A setting is out of range.
    #[error("{0}")]
    Config(String),
    /// The pool's zygote is gone (killed, or its control socket broke): the
    /// pool can start no worker. Make a new [`Pool`](crate::Pool).
    #[error("the pool's zygote (pid {zygote}) is gone ({why}): make a new Pool")]
    PoolGone {
        /// The zygote's pid.
        zygote: i32,
        /// What showed it.
        why: String,
    },
    /// The run's [interrupt check](crate::Xme::interrupt_when) returned true:
    /// every worker was killed and reaped, and the run's results dropped.
    #[error(
        "the run was interrupted after {settled} of {total} calls; every worker was killed and reaped"
    )]
    Interrupted {
        /// Calls that had ended when the run stopped.
        settled: usize,
        /// Calls in the run.
        total: usize,
    },
    /// The log file could not be opened.
    #[error(transparent)]
    Log(#[from] xme_log::LogError),
    /// The run's bookkeeping for its calls does not fit in the memory this
    /// process may use (its resource limits included): run fewer calls at once.
    #[error(
        "a run of {calls} calls needs more memory for its bookkeeping than this process may \
         use: run the work in smaller runs"
    )]
    OutOfMemory {
        /// Calls in the run.
        calls: usize,
        /// The allocation that failed.
        #[source]
        source: std::collections::TryReserveError,
    },
}

/// What happened to a call that gave no result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum TaskFailure {
    /// The function panicked.
    Panicked(PanicReport),
    /// The worker process running the call was killed by a signal.
    Killed {
        /// The signal number (9 for `SIGKILL`, 6 for `SIGABRT`, …).
        signal: i32,
    },
    /// The worker process exited (`std::process::exit`) during the call.
    Exited {
        /// Its exit status.
        code: i32,
    },
    /// The call ran past its time limit and its worker was killed.
    TimedOut {
        /// The limit.
        after: Duration,
    },
    /// The result could not be encoded in the worker.
    Encode(String),
    /// The result could not be decoded in the parent.
    Decode(String),
    /// The worker closed or corrupted its result channel during the call.
    ChannelClosed,
    /// The call was never started: no worker process could be started for it.
    NotRun(String),
    /// The call's worker ended with the pool's zygote, which died (or the
    /// call was submitted after it died): make a new pool.
    ZygoteDied {
        /// The zygote's pid.
        zygote: i32,
    },
    /// The call was cancelled (its handle or stream was cancelled or
    /// dropped) before it gave a result; if it was running, its worker was
    /// killed.
    Cancelled,
    /// The call's worker was killed as soon as it was forked, because
    /// something failed in the parent then (a parent fork hook panicked);
    /// it had taken the call, which may have run in part or whole.
    WorkerDiscarded(String),
    /// The call's worker ended during the call, but how is unknown: the
    /// process ignores `SIGCHLD` (`SIG_IGN` or `SA_NOCLDWAIT`), so the kernel
    /// reaped the worker and dropped its exit status.
    StatusLost,
    /// The call returned in its worker, but the worker died before its
    /// result reached the parent. It is not run again (it may have had
    /// effects).
    ResultLost,
    /// The result was already taken from this handle.
    Taken,
}

impl fmt::Display for TaskFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TaskFailure::Panicked(p) => write!(f, "panicked: {p}"),
            TaskFailure::Killed { signal } => {
                let fate = Fate::Signaled {
                    signal: *signal,
                    core_dumped: false,
                };
                write!(f, "failed: its worker {fate}")
            }
            TaskFailure::Exited { code } => {
                write!(f, "its worker exited with status {code} before returning")
            }
            TaskFailure::TimedOut { after } => {
                write!(f, "timed out after {after:?}; its worker was killed")
            }
            TaskFailure::Encode(e) => write!(f, "its result could not be encoded: {e}"),
            TaskFailure::Decode(e) => write!(f, "its result could not be decoded: {e}"),
            TaskFailure::ChannelClosed => {
                write!(
                    f,
                    "failed: its worker's result channel was closed or corrupted during the \
                     call, so its outcome is unknown (a task that closes file descriptors it \
                     did not open, such as os.closerange(3, ...), closes it too)"
                )
            }
            TaskFailure::NotRun(why) => write!(f, "was never run: {why}"),
            TaskFailure::ZygoteDied { zygote } => write!(
                f,
                "failed: the pool's zygote (pid {zygote}) died, taking its workers; make a new Pool"
            ),
            TaskFailure::Cancelled => write!(f, "was cancelled before it gave a result"),
            TaskFailure::WorkerDiscarded(why) => write!(
                f,
                "failed: its worker took it, then was killed as soon as it was forked \
                 because {why}; the call may have run, in part or whole"
            ),
            TaskFailure::StatusLost => write!(
                f,
                "failed: its worker ended during the call, how is unknown (this process \
                 ignores SIGCHLD, so the kernel reaped the worker and dropped its exit status)"
            ),
            TaskFailure::ResultLost => write!(
                f,
                "returned, but its worker died before the result reached the parent (it is not run again)"
            ),
            TaskFailure::Taken => write!(f, "has no result here any more: it was already taken"),
        }
    }
}

impl TaskFailure {
    pub(crate) fn from_fate(fate: Fate) -> TaskFailure {
        match fate {
            Fate::Signaled { signal, .. } => TaskFailure::Killed { signal },
            Fate::Exited(code) => TaskFailure::Exited { code },
        }
    }
}

/// A call that gave no result: which call, of which function, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("call {call} of function {job} (`{function}`) {failure}")]
pub struct TaskError {
    /// The call's index among its function's calls.
    pub call: usize,
    /// The function's index in the table.
    pub job: usize,
    /// The function's name.
    pub function: String,
    /// What happened.
    pub failure: TaskFailure,
}

impl TaskError {
    /// True if the function panicked.
    pub fn is_panic(&self) -> bool {
        matches!(self.failure, TaskFailure::Panicked(_))
    }

    /// The panic message, if the function panicked.
    pub fn panic_message(&self) -> Option<&str> {
        match &self.failure {
            TaskFailure::Panicked(p) => Some(&p.message),
            _ => None,
        }
    }

    /// True if the call ran past its time limit.
    pub fn is_timeout(&self) -> bool {
        matches!(self.failure, TaskFailure::TimedOut { .. })
    }

    /// The signal that killed the worker during the call, if one did.
    pub fn signal(&self) -> Option<i32> {
        match self.failure {
            TaskFailure::Killed { signal } => Some(signal),
            _ => None,
        }
    }

    /// True if the call was cancelled (see [`Call::cancel`](crate::Call::cancel)).
    pub fn is_cancelled(&self) -> bool {
        matches!(self.failure, TaskFailure::Cancelled)
    }

    /// True if the call returned but its result was lost with its worker.
    pub fn is_result_lost(&self) -> bool {
        matches!(self.failure, TaskFailure::ResultLost)
    }

    /// True if the pool's zygote died: nothing more runs on that pool.
    pub fn is_pool_gone(&self) -> bool {
        matches!(self.failure, TaskFailure::ZygoteDied { .. })
    }

    /// The worker's exit status, if it exited during the call.
    pub fn exit_code(&self) -> Option<i32> {
        match self.failure {
            TaskFailure::Exited { code } => Some(code),
            _ => None,
        }
    }
}
