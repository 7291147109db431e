//! The pool's table of work: tasks waiting for a worker, and the *sinks*
//! their results go to, shared by the threads that submit and wait and the
//! driver thread that runs them.
//!
//! A **task** is one or more calls of one function, sent to one worker
//! together (a chunk); its calls are numbered in its sink's numbering from
//! `first`. A **sink** is where an owner (a `Call`, a `CallSet`, a stream, a
//! batch) receives its results: blocks of results in arrival order, plus a
//! `closed` mark once a cancellation is complete (no result will come after
//! it). The driver never decodes a result; owners do, on their own thread.

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::task::Waker;
use std::time::{Duration, Instant};

use crate::TaskFailure;

/// Locks a mutex whose data stays consistent even if a holder panicked
/// (plain queues and flags): go on with it.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Calls of one function for one worker.
#[derive(Debug)]
pub(crate) struct Task {
    pub sink: Arc<Sink>,
    /// The trampoline's offset (`entry.rs`).
    pub entry: u64,
    /// The sink's index of the task's first call.
    pub first: usize,
    pub calls: u32,
    /// `[len u32][bytes]` per call.
    pub args: Vec<u8>,
    /// Each call's time limit.
    pub limit: Option<Duration>,
    /// Times it was sent back to the queue because its worker ended before
    /// it started.
    pub requeued: u8,
}

/// How one call ended, as the driver saw it.
#[derive(Debug)]
pub(crate) enum Item {
    /// The worker's status byte (`entry.rs`) and where its bytes lie in
    /// the block's `data`.
    Done {
        status: u8,
        start: usize,
        end: usize,
    },
    /// It gave no bytes: killed, timed out, cancelled, lost.
    Failed(Box<TaskFailure>),
}

/// Results of consecutive calls of a sink, from `first` on.
#[derive(Debug, Default)]
pub(crate) struct Block {
    pub first: usize,
    pub data: Vec<u8>,
    pub items: Vec<Item>,
    /// The task's run time in the worker (0 if it did not end normally),
    /// for automatic chunking.
    pub elapsed_ns: u64,
}

impl Block {
    pub fn new(first: usize) -> Block {
        Block {
            first,
            ..Block::default()
        }
    }

    /// The bytes of item `k`.
    pub fn bytes(&self, k: usize) -> &[u8] {
        match &self.items[k] {
            Item::Done { start, end, .. } => &self.data[*start..*end],
            Item::Failed(_) => &[],
        }
    }
}

/// Why an owner cancels its calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CancelReason {
    /// The owner cancelled or was dropped: a running call's worker is
    /// killed and the call fails as cancelled.
    Cancelled,
    /// A batch's time limit passed: a running call's worker is killed and
    /// the call fails as timed out after this limit.
    Deadline(Duration),
}

impl CancelReason {
    /// The failure of a call killed for this reason.
    pub fn failure(self) -> TaskFailure {
        match self {
            CancelReason::Cancelled => TaskFailure::Cancelled,
            CancelReason::Deadline(after) => TaskFailure::TimedOut { after },
        }
    }
}

/// Where an owner's results arrive.
#[derive(Debug, Default)]
pub(crate) struct Sink {
    state: Mutex<SinkState>,
    ready: Condvar,
}

#[derive(Debug, Default)]
pub(crate) struct SinkState {
    pub blocks: VecDeque<Block>,
    pub waker: Option<Waker>,
    /// Set by the owner: deliveries after it are dropped by the driver.
    pub cancel: Option<CancelReason>,
    /// Set by the driver once a cancellation is complete: nothing of this
    /// sink is queued or running any more.
    pub closed: bool,
}

impl Sink {
    pub fn new() -> Arc<Sink> {
        Arc::new(Sink::default())
    }

    pub fn state(&self) -> MutexGuard<'_, SinkState> {
        lock(&self.state)
    }

    /// Driver: hands over a block (dropped if the owner cancelled).
    pub fn deliver(&self, block: Block) {
        let waker = {
            let mut s = self.state();
            if s.cancel == Some(CancelReason::Cancelled) {
                return;
            }
            s.blocks.push_back(block);
            s.waker.take()
        };
        self.ready.notify_all();
        wake(waker);
    }

    /// Driver: the owner's cancellation is complete.
    pub fn close(&self) {
        let waker = {
            let mut s = self.state();
            s.closed = true;
            s.waker.take()
        };
        self.ready.notify_all();
        wake(waker);
    }

    /// Owner: waits until `done` holds for the state, or until `deadline`;
    /// returns the guard either way.
    pub fn wait_until(
        &self,
        deadline: Option<Instant>,
        mut done: impl FnMut(&SinkState) -> bool,
    ) -> MutexGuard<'_, SinkState> {
        let mut s = self.state();
        while !done(&s) {
            match deadline {
                None => s = self.ready.wait(s).unwrap_or_else(|e| e.into_inner()),
                Some(d) => {
                    let now = Instant::now();
                    if now >= d {
                        break;
                    }
                    s = self
                        .ready
                        .wait_timeout(s, d - now)
                        .unwrap_or_else(|e| e.into_inner())
                        .0;
                }
            }
        }
        s
    }
}

/// Wakes an owner's task; a waker that panics (foreign executor code) must
/// not take the driver thread with it.
fn wake(waker: Option<Waker>) {
    if let Some(w) = waker {
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| w.wake()));
    }
}

/// What the submitting threads and the driver share.
#[derive(Debug, Default)]
pub(crate) struct State {
    /// Tasks submitted since the driver last looked.
    pub submitted: Vec<Task>,
    /// Sinks whose owners cancelled, with why.
    pub cancels: Vec<(Arc<Sink>, CancelReason)>,
    /// The driver sleeps (in `poll`) and must be woken.
    pub parked: bool,
    /// The zygote is gone: nothing can run any more (its pid).
    pub gone: Option<i32>,
    /// The last owner dropped the pool.
    pub shutdown: bool,
    /// Pids of workers with nothing to do, and of all live workers.
    pub idle: Vec<i32>,
    pub workers: Vec<i32>,
}
