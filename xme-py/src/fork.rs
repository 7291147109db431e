//! Forking an interpreter as CPython's own `os.fork` does, through
//! xme-core's fork hooks, so every fork xme makes in this process is safe
//! for Python:
//! - prepare: take the GIL, flush `sys.stdout` and `sys.stderr` (so text
//!   buffered before the fork is not written twice), then
//!   `PyOS_BeforeFork` (the import lock, `os.register_at_fork` handlers).
//!   No Python code runs after it until `fork(2)`.
//! - parent: `PyOS_AfterFork_Parent`, then give the GIL back, so the
//!   parent waits for its workers with the GIL released.
//! - child, first thing: `PyOS_AfterFork_Child` (the interpreter's state
//!   after a fork, `threading`'s and `os.register_at_fork`'s handlers). The
//!   child keeps the GIL: it runs Python calls until it leaves with `_exit`.
//! - before the child's `_exit` (which skips `atexit`): flush `sys.stdout`
//!   and `sys.stderr` (each call's wrapper flushes too, so a worker killed
//!   later keeps the output of its earlier calls).

use std::cell::{Cell, RefCell};
use std::sync::Once;

use pyo3::exceptions::PyException;
use pyo3::prelude::*;
use pyo3::{ffi, intern};
use xme_core::process::{self, ForkHooks};

use crate::shutdown;

thread_local! {
    /// What this thread's prepare hook took, for its parent hook.
    static HELD: Cell<Option<Held>> = const { Cell::new(None) };
    /// The exception that interrupted a pre-fork flush of this thread.
    static FLUSH_INTERRUPT: RefCell<Option<PyErr>> = const { RefCell::new(None) };
    /// In a child: it was forked with the interpreter prepared, and holds the GIL.
    static PYTHON_CHILD: Cell<bool> = const { Cell::new(false) };
}

/// The GIL state taken by a prepare hook, and whether it counted the thread
/// into the shutdown gate.
#[derive(Clone, Copy)]
struct Held {
    state: ffi::PyGILState_STATE,
    gated: bool,
}

/// Registers the hooks once per process.
pub(crate) fn register() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        process::at_fork(
            ForkHooks::new()
                .prepare(prepare)
                .parent(parent)
                .child(child)
                .before_exit(before_exit),
        )
    });
}

fn prepare() {
    // Off the main thread, the whole of this fork's time with the GIL (the
    // flush and `os.register_at_fork`'s handlers may release and retake
    // it) is inside the shutdown gate, up to the parent hook: the thread is
    // never ended by a finalizing interpreter inside these Rust frames, and
    // never forks a worker from one.
    let gated = shutdown::gated();
    if gated {
        shutdown::enter();
    }
    // SAFETY: Py_IsInitialized may be called at any time, with or without
    // the GIL.
    if unsafe { ffi::Py_IsInitialized() } == 0 {
        if gated {
            shutdown::leave();
        }
        return;
    }
    // SAFETY: the interpreter is initialized; PyGILState_Ensure attaches
    // this thread and takes the GIL (or nests, if it already holds it).
    let state = unsafe { ffi::PyGILState_Ensure() };
    let interrupted = Python::try_attach(flush_std_streams).flatten();
    if let Some(interrupt) = interrupted {
        // Ctrl-C while flushing (a full pipe): what was buffered is still
        // there, and a child would write it again. Cancel this fork and
        // stop the batch; run_batch raises the exception.
        FLUSH_INTERRUPT.with_borrow_mut(|slot| *slot = Some(interrupt));
        if gated {
            shutdown::leave();
        }
        // SAFETY: gives back what PyGILState_Ensure took above; the parent
        // hook does not run for a prepare hook that failed.
        unsafe { ffi::PyGILState_Release(state) };
        // Unwinds to fork_child's catch_unwind (which cancels the fork)
        // without the panic hook printing anything.
        std::panic::resume_unwind(Box::new("interrupted while flushing before a fork"));
    }
    // SAFETY: this thread holds the GIL, as PyOS_BeforeFork requires; the
    // matching PyOS_AfterFork_* call is made by the parent or child hook
    // right after fork(2), and no Python code runs in between.
    unsafe { ffi::PyOS_BeforeFork() };
    HELD.set(Some(Held { state, gated }));
}

fn parent() {
    let Some(Held { state, gated }) = HELD.take() else {
        return;
    };
    // SAFETY: the prepare hook of this thread called PyOS_BeforeFork and
    // still holds the GIL; `state` is what its PyGILState_Ensure returned.
    unsafe { ffi::PyOS_AfterFork_Parent() };
    if gated {
        shutdown::leave();
    }
    // SAFETY: as above; this gives back what PyGILState_Ensure took.
    unsafe { ffi::PyGILState_Release(state) };
}

fn child() {
    // The child has one thread, and no one in the gate.
    shutdown::forget_in_child();
    if HELD.take().is_some() {
        // SAFETY: we are the forking thread, just after fork(2), holding
        // the GIL taken by the prepare hook before PyOS_BeforeFork, which is
        // what PyOS_AfterFork_Child requires. The GIL stays held: the child
        // runs Python until it exits.
        unsafe { ffi::PyOS_AfterFork_Child() };
        PYTHON_CHILD.set(true);
    }
}

fn before_exit() {
    if PYTHON_CHILD.get() {
        let _ = Python::try_attach(|py| {
            join_non_daemon_threads(py);
            // Nothing to raise it to: the worker is leaving.
            let _ = flush_std_streams(py);
        });
    }
}

/// Waits for the threads a worker's tasks started and did not mark daemon,
/// as an interpreter does before it exits (and as `os.fork`'s children do
/// through `sys.exit`): `_exit` would kill them mid-work. `threading` is
/// only looked at if a task imported it.
fn join_non_daemon_threads(py: Python<'_>) {
    let Ok(modules) = py
        .import(intern!(py, "sys"))
        .and_then(|sys| sys.getattr(intern!(py, "modules")))
    else {
        return;
    };
    // `_shutdown` costs a fresh worker ~40 us of page faults; with no
    // thread but this one (`active_count` counts threading's threads, the
    // only ones it would join) there is nothing to wait for.
    if let Ok(threading) = modules.get_item(intern!(py, "threading"))
        && threading
            .call_method0(intern!(py, "active_count"))
            .and_then(|n| n.extract::<usize>())
            .map_or(true, |n| n > 1)
        && let Ok(shutdown) = threading.getattr(intern!(py, "_shutdown"))
        && let Err(e) = shutdown.call0()
    {
        // Reported, not raised: the worker is leaving anyway.
        e.print(py);
    }
}

/// Flushes Python's `sys.stdout` and `sys.stderr`; a stream that is
/// missing, closed or refuses (an `Exception`) is left as it is. What is
/// not an `Exception` (`KeyboardInterrupt` while a flush waited on a full
/// pipe, `SystemExit`) stops the flushing and is returned, to be raised.
pub(crate) fn flush_std_streams(py: Python<'_>) -> Option<PyErr> {
    let sys = py.import(intern!(py, "sys")).ok()?;
    for name in [intern!(py, "stdout"), intern!(py, "stderr")] {
        if let Ok(stream) = sys.getattr(name)
            && !stream.is_none()
            && let Err(e) = stream.call_method0(intern!(py, "flush"))
            && !e.is_instance_of::<PyException>(py)
        {
            return Some(e);
        }
    }
    None
}

/// Whether a pre-fork flush of this thread was interrupted (the batch stops).
pub(crate) fn flush_was_interrupted() -> bool {
    FLUSH_INTERRUPT.with_borrow(Option::is_some)
}

/// The exception that interrupted this thread's last pre-fork flush, if
/// any (the fork was cancelled for it).
pub(crate) fn take_flush_interrupt() -> Option<PyErr> {
    FLUSH_INTERRUPT.with_borrow_mut(Option::take)
}
