use std::time::Duration;

use xme_core::Operator;

/// The seed's mark for a lock that could not be acquired (`Security.DEADLOCKMARK_ONLOCK`).
pub const DEADLOCKMARK_ONLOCK: &str = "Onlock failure: illegal operator or deadlock!";
/// The seed's mark for a lock that could not be released (`Security.DEADLOCKMARK_UNLOCK`).
pub const DEADLOCKMARK_UNLOCK: &str = "Unlock failure: illegal operator or deadlock!";

/// What a deadlock handler (`DeadLockFun`) is told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deadlock {
    /// [`DEADLOCKMARK_ONLOCK`] or [`DEADLOCKMARK_UNLOCK`].
    pub mark: &'static str,
    /// The operator that asked.
    pub operator: Operator,
    /// How long it waited (zero for a refused release).
    pub waited: Duration,
    /// The pid holding the lock exclusively when it gave up, if any.
    pub holder_pid: Option<u32>,
}

/// Why a lock operation did not happen.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SecurityError {
    /// The wait limit passed: a deadlock, or a holder that keeps the lock too long.
    #[error("{}: waited {:?} for the lock{} (raise WaitTime, or find who keeps it)", .0.mark, .0.waited, holder_text(.0.holder_pid))]
    Deadlock(Deadlock),
    /// Release by an operator that does not hold the lock.
    #[error("{}: operator {operator} does not hold this lock{}", DEADLOCKMARK_UNLOCK, match holder { Some(h) => format!(" (held by operator {h})"), None => " (nobody holds it)".to_string() })]
    NotHolder {
        /// Who tried to release.
        operator: Operator,
        /// Who holds it, if anyone.
        holder: Option<Operator>,
    },
    /// An AUTHORISATION lock refused an operator not on its list.
    #[error(
        "operator {operator} is not authorised for this AUTHORISATION lock (add it with authorize)"
    )]
    Unauthorised {
        /// Who tried.
        operator: Operator,
    },
    /// A READWRITE lock refused a write by an operator other than the registered writer.
    #[error(
        "operator {operator} may not write: this READWRITE lock's writer is {writer} (change it with register)"
    )]
    NotWriter {
        /// Who tried.
        operator: Operator,
        /// The registered writer.
        writer: Operator,
    },
    /// The operator already holds the lock; acquiring it again would deadlock
    /// or, as in the seed, make an inner release free the outer hold.
    #[error("operator {operator} already holds this lock (release it first)")]
    AlreadyHeld {
        /// Who tried.
        operator: Operator,
    },
    /// The authorised list is full.
    #[error(
        "the authorised list is full ({capacity} operators): a lock's list has a fixed capacity in shared memory"
    )]
    AuthListFull {
        /// Its capacity.
        capacity: usize,
    },
    /// The lock state could not be placed in or attached from shared memory.
    #[error("lock state unusable")]
    Region(#[from] xme_core::Error),
    /// The lock memory holds something else, or a creator died while initialising it.
    #[error("not an xme lock: {0}")]
    NotALock(String),
}

fn holder_text(pid: Option<u32>) -> String {
    pid.map(|p| format!(" held by pid {p}")).unwrap_or_default()
}

impl SecurityError {
    /// The seed's deadlock mark for this error, if it is a wait that gave up or
    /// a refused release.
    pub fn mark(&self) -> Option<&'static str> {
        match self {
            SecurityError::Deadlock(d) => Some(d.mark),
            SecurityError::NotHolder { .. } => Some(DEADLOCKMARK_UNLOCK),
            _ => None,
        }
    }
}
