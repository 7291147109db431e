//! `MpiHandle`: the main function's handle on the logical processes.
//!
//! Rooms: `calls` (the public calls), `map`, `stream` (lazy inputs, results
//! in order or as they finish), `send` (writing requests, direct calls),
//! `replies` (slots, waiting, delivering), `health` (noticing an ended
//! process, failing its calls), `close`, `inject` (broken frames for tests).

use std::sync::atomic::Ordering;
use std::sync::{Condvar, Mutex};

use crate::MpiError;
use crate::link::{Ended, Link, lock};
use crate::logical;
use crate::slots::{SlotOwner, SlotTable};
use crate::watch::WatchPlan;

mod calls;
mod close;
mod health;
mod inject;
mod map;
mod replies;
mod send;
mod stream;

pub use close::CLOSE_GRACE;
pub use stream::{Ordered, StreamBuilder, Unordered};

/// Where a call goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum To {
    /// The least loaded live logical process (the seed's `ANY_PROCESS`).
    Any,
    /// Logical process `n`, in `1..pnum`.
    Process(usize),
    /// Every live logical process (the seed's `ALL_PROCESSES`): `broadcast`, `close`.
    All,
}

/// A logical process's state (the seed's `STATUS_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LpStatus {
    /// Started, not yet waiting for calls.
    Begin,
    /// Waiting for calls, none queued.
    Idle,
    /// Calls queued for it, not running one right now.
    Allocated,
    /// Running a call.
    InRun,
    /// Closed or dead.
    End,
}

/// The main function's handle on the logical processes (the seed's `XMEMPI`).
/// It may be used from several threads at once.
pub struct MpiHandle<'r> {
    pub(crate) token: u64,
    pub(crate) links: Vec<Link<'r>>,
    pub(crate) slots: Mutex<SlotTable>,
    pub(crate) slot_freed: Condvar,
    /// The logical processes are ranks of an MPI job (not forks of this one).
    pub(crate) cluster: bool,
    /// The run's detection bound and call deadline.
    pub(crate) plan: WatchPlan,
    /// Unit names by id (this process's ids), for messages.
    pub(crate) unit_names: Vec<&'static str>,
}

impl std::fmt::Debug for MpiHandle<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MpiHandle")
            .field("processes", &self.links.len())
            .field("cluster", &self.cluster)
            .finish_non_exhaustive()
    }
}

impl<'r> MpiHandle<'r> {
    pub(crate) fn new(
        token: u64,
        links: Vec<Link<'r>>,
        slots: usize,
        plan: WatchPlan,
        unit_names: Vec<&'static str>,
    ) -> Self {
        MpiHandle {
            token,
            cluster: links.iter().any(|l| !l.forked),
            links,
            slots: Mutex::new(SlotTable::new(slots)),
            slot_freed: Condvar::new(),
            plan,
            unit_names,
        }
    }

    /// Runs `main`, then closes every logical process, also when `main`
    /// panics (the panic then continues).
    pub(crate) fn run_main<T>(&self, main: impl FnOnce(&MpiHandle<'_>) -> T) -> T {
        let out = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| main(self)));
        let _ = self.close(To::All);
        match out {
            Ok(v) => v,
            Err(p) => std::panic::resume_unwind(p),
        }
    }

    /// Result slots of this run.
    fn slot_count(&self) -> usize {
        lock(&self.slots).entries.len()
    }

    /// Ids of the logical processes, `1..pnum`.
    ///
    /// ```
    /// use xme_mpi::{Mpi, To};
    /// # fn main() -> Result<(), xme_mpi::MpiError> {
    /// let mut mpi = Mpi::new(3)?;
    /// let square = mpi.register("square", |x: u64| x * x);
    /// mpi.run(|m| -> Result<(), xme_mpi::MpiError> {
    ///     assert_eq!(m.processes(), [1, 2]);
    ///     let _ = &square;
    ///     Ok(())
    /// })??;
    /// # Ok(())
    /// # }
    /// ```
    pub fn processes(&self) -> Vec<usize> {
        self.links.iter().map(|l| l.id).collect()
    }

    /// The pid of logical process `id`.
    ///
    /// # Errors
    /// [`MpiError::NoSuchProcess`] for an id outside `1..pnum`.
    ///
    /// ```
    /// use xme_mpi::{Mpi, To};
    /// # fn main() -> Result<(), xme_mpi::MpiError> {
    /// let mut mpi = Mpi::new(3)?;
    /// let square = mpi.register("square", |x: u64| x * x);
    /// mpi.run(|m| -> Result<(), xme_mpi::MpiError> {
    ///     assert_ne!(m.pid(1)?, std::process::id() as i32); // a forked process
    ///     assert!(m.pid(7).is_err());
    ///     let _ = &square;
    ///     Ok(())
    /// })??;
    /// # Ok(())
    /// # }
    /// ```
    pub fn pid(&self, id: usize) -> Result<i32, MpiError> {
        self.link(id).map(|l| l.pid)
    }

    /// The host logical process `id` runs on: the name its MPI library
    /// reports, in a cluster run; `None` for a process forked on this host.
    ///
    /// # Errors
    /// [`MpiError::NoSuchProcess`] for an id outside `1..pnum`.
    ///
    /// ```
    /// use xme_mpi::{Mpi, To};
    /// # fn main() -> Result<(), xme_mpi::MpiError> {
    /// let mut mpi = Mpi::new(3)?;
    /// let square = mpi.register("square", |x: u64| x * x);
    /// mpi.run(|m| -> Result<(), xme_mpi::MpiError> {
    ///     assert_eq!(m.host(1)?, None); // forked on this host
    ///     let _ = &square;
    ///     Ok(())
    /// })??;
    /// # Ok(())
    /// # }
    /// ```
    pub fn host(&self, id: usize) -> Result<Option<String>, MpiError> {
        self.link(id).map(|l| l.host.clone())
    }

    /// Each logical process's state.
    ///
    /// ```
    /// use xme_mpi::{Mpi, To};
    /// # fn main() -> Result<(), xme_mpi::MpiError> {
    /// let mut mpi = Mpi::new(3)?;
    /// let square = mpi.register("square", |x: u64| x * x);
    /// mpi.run(|m| -> Result<(), xme_mpi::MpiError> {
    ///     m.block_acquire(&square, &2, To::Process(1))?;
    ///     let (id, status) = m.status()[0];
    ///     assert_eq!(id, 1);
    ///     assert_ne!(status, xme_mpi::LpStatus::End);
    ///     Ok(())
    /// })??;
    /// # Ok(())
    /// # }
    /// ```
    pub fn status(&self) -> Vec<(usize, LpStatus)> {
        self.links
            .iter()
            .map(|l| {
                let s = if l.ended.get().is_some() {
                    LpStatus::End
                } else {
                    // A rank on another host shares no status word: it is
                    // Allocated while calls to it are unanswered, else Idle.
                    let shared = l.forked.then(|| l.watch.status.load(Ordering::Acquire));
                    match shared {
                        Some(logical::ST_BEGIN) => LpStatus::Begin,
                        Some(logical::ST_INRUN) => LpStatus::InRun,
                        Some(logical::ST_END) => LpStatus::End,
                        _ if l.load.load(Ordering::Acquire) > 0 => LpStatus::Allocated,
                        _ => LpStatus::Idle,
                    }
                };
                (l.id, s)
            })
            .collect()
    }

    pub(crate) fn link(&self, id: usize) -> Result<&Link<'r>, MpiError> {
        id.checked_sub(1)
            .and_then(|i| self.links.get(i))
            .ok_or(MpiError::NoSuchProcess(id))
    }

    pub(crate) fn choose(&self, to: To) -> Result<&Link<'r>, MpiError> {
        match to {
            To::All => Err(MpiError::UseBroadcast),
            To::Process(id) => {
                let l = self.link(id)?;
                match l.ended.get() {
                    None => Ok(l),
                    Some(e) => Err(self.ended_error(l, e)),
                }
            }
            To::Any => self
                .links
                .iter()
                .filter(|l| l.ended.get().is_none())
                .min_by_key(|l| l.load.load(Ordering::Relaxed))
                .ok_or(MpiError::NoLiveProcess),
        }
    }

    /// The error of a call to (or pending on) an ended process, unless it
    /// is the call that ran past the deadline (see `health::overdue_error`).
    pub(crate) fn ended_error(&self, l: &Link<'_>, e: &Ended) -> MpiError {
        match e {
            Ended::Died(fate) => MpiError::ProcessDied {
                process: l.id,
                pid: l.pid,
                fate: *fate,
            },
            Ended::Closed(reason) | Ended::Broken(reason) => MpiError::Closed {
                process: l.id,
                reason: reason.clone(),
            },
            Ended::Overdue { unit, ran, .. } => MpiError::Closed {
                process: l.id,
                reason: format!(
                    "{} after a call of `{unit}` ran {ran:?}, past the {:?} deadline \
                     (Mpi::call_timeout)",
                    if l.forked {
                        "it was killed"
                    } else {
                        "the rank is treated as hung (the MPI job ends when run returns)"
                    },
                    self.plan.deadline.unwrap_or_default()
                ),
            },
            Ended::Silent(silent) => MpiError::Unresponsive {
                process: l.id,
                pid: l.pid,
                host: l.host.clone(),
                silent: *silent,
            },
            Ended::Lingered => MpiError::Closed {
                process: l.id,
                reason: format!(
                    "rank {} (host {}) had not finished its queued calls {CLOSE_GRACE:?} after \
                     close (the MPI job ends when run returns)",
                    l.id,
                    l.host.as_deref().unwrap_or("?")
                ),
            },
        }
    }
}

impl SlotOwner for MpiHandle<'_> {
    fn abandon(&self, index: u32, generation: u32) {
        MpiHandle::abandon(self, index, generation)
    }
    fn token(&self) -> u64 {
        self.token
    }
}
