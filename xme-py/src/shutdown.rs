//! Off the main thread, taking the GIL (back) inside XME's Rust frames
//! without ever being ended there by a finalizing interpreter.
//!
//! From CPython 3.9 to 3.13, once `Py_FinalizeEx` has marked the runtime as
//! finalizing, a thread that takes the GIL (`PyEval_RestoreThread`,
//! `PyGILState_Ensure`, or CPython itself after a blocking write) is ended
//! with `pthread_exit`, which unwinds its stack. Through a PyO3 function
//! (nounwind `extern "C"`, `catch_unwind`) that is undefined behaviour: in
//! practice a segfault at exit. A daemon thread inside a batch when the main
//! thread exits would take the GIL there: at the end of its batch, to fork a
//! replacement worker, or to log a failed call.
//!
//! The gate closes that door. A non-main thread is *counted in* while it
//! holds the GIL inside this module's Rust frames (from entering
//! `run_batch` or `write_log` to leaving them, except while it waits for
//! workers with the GIL released). An `atexit` handler ([`_close_gil_gate`]),
//! which CPython runs on the finalizing thread *before* it marks the
//! runtime finalizing, runs the program's other `atexit` handlers first
//! (with the gate open: one may join a thread running batches), then
//! closes the gate and waits, with the GIL
//! released, until no thread is counted in. After it, a non-main thread that
//! would take the GIL in these frames, or enters them, is parked for ever
//! instead (with the GIL released): the process is exiting, its daemon
//! threads end with it, and CPython 3.14 does the same to them (so the
//! handler is registered on 3.9-3.13 only).

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use pyo3::prelude::*;

thread_local! {
    /// This thread runs a batch off the main thread: its fork hooks take the
    /// GIL through the gate.
    static GATED: Cell<bool> = const { Cell::new(false) };
}

/// Set by the `atexit` handler: the interpreter is about to finalize.
static CLOSED: AtomicBool = AtomicBool::new(false);
/// Non-main threads counted in.
static IN_FLIGHT: AtomicUsize = AtomicUsize::new(0);
/// `PyThread_get_thread_ident()` of the interpreter's main thread.
static MAIN_THREAD: AtomicU64 = AtomicU64::new(0);

/// Records the main thread (at module init).
pub(crate) fn init(py: Python<'_>) -> PyResult<()> {
    let threading = py.import(pyo3::intern!(py, "threading"))?;
    let ident: u64 = threading
        .call_method0(pyo3::intern!(py, "main_thread"))?
        .getattr(pyo3::intern!(py, "ident"))?
        .extract()?;
    MAIN_THREAD.store(ident, Ordering::SeqCst);
    Ok(())
}

/// Whether the calling thread is the interpreter's main thread (the one
/// that finalizes it, and the only one CPython never ends).
pub(crate) fn on_main_thread() -> bool {
    thread_ident() == MAIN_THREAD.load(Ordering::SeqCst)
}

/// CPython's id of the calling thread (`threading.get_ident()`).
#[allow(clippy::useless_conversion)] // c_ulong is not u64 everywhere
fn thread_ident() -> u64 {
    // SAFETY: PyThread_get_thread_ident only reads the calling thread's id.
    u64::from(unsafe { pyo3::ffi::PyThread_get_thread_ident() })
}

/// Counts a non-main thread in before it takes the GIL, or parks it for
/// ever if the interpreter is finalizing.
pub(crate) fn enter() {
    IN_FLIGHT.fetch_add(1, Ordering::SeqCst);
    if CLOSED.load(Ordering::SeqCst) {
        IN_FLIGHT.fetch_sub(1, Ordering::SeqCst);
        park_forever();
    }
}

/// Counts out a thread counted in by [`enter`] or [`Counted::new`]: it runs
/// no more Python code in these frames until it is counted in again.
pub(crate) fn leave() {
    IN_FLIGHT.fetch_sub(1, Ordering::SeqCst);
}

/// A thread counted in while it holds the GIL in one of this module's
/// functions; dropping it counts the thread out. `None` on the main thread.
pub(crate) struct Counted(());

impl Counted {
    /// Counts the calling thread in (it holds the GIL). If the gate is
    /// closed, the thread gives the GIL back and parks for ever.
    pub(crate) fn new(_py: Python<'_>) -> Option<Counted> {
        if on_main_thread() {
            return None;
        }
        IN_FLIGHT.fetch_add(1, Ordering::SeqCst);
        if CLOSED.load(Ordering::SeqCst) {
            IN_FLIGHT.fetch_sub(1, Ordering::SeqCst);
            // SAFETY: this thread holds the GIL (`_py`); releasing it cannot
            // end the thread, and it never takes it back.
            unsafe { pyo3::ffi::PyEval_SaveThread() };
            park_forever();
        }
        Some(Counted(()))
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        leave();
    }
}

/// In a forked child: the forking thread's count is not the child's (it has
/// one thread, which holds the GIL), and that thread is its main thread.
pub(crate) fn forget_in_child() {
    IN_FLIGHT.store(0, Ordering::SeqCst);
    // CPython makes the forking thread the child's main thread.
    MAIN_THREAD.store(thread_ident(), Ordering::SeqCst);
}

/// Whether this thread's GIL re-acquisitions must pass the gate.
pub(crate) fn gated() -> bool {
    GATED.get()
}

/// `py.detach(f)` for a thread counted in (`counted`, from
/// [`Counted::new`]) or the main thread (`None`): the thread is counted
/// out while it waits, and counted in again (or parked) before it takes
/// the GIL back; the fork hooks run by `f` take the GIL through the gate.
pub(crate) fn detach_gated<T: Send>(
    py: Python<'_>,
    counted: &Option<Counted>,
    f: impl FnOnce() -> T + Send,
) -> T {
    if counted.is_none() {
        return py.detach(f);
    }
    let was = GATED.replace(true);
    leave();
    let out = py.detach(|| {
        let out = f();
        // pyo3 takes the GIL back as this closure returns.
        enter();
        out
    });
    GATED.set(was);
    out
}

/// Never returns: the thread sleeps until the process exits. Nothing is
/// unwound, so no Rust frame is left half run.
fn park_forever() -> ! {
    loop {
        std::thread::park();
    }
}

/// The `atexit` handler: runs the program's other `atexit` handlers, then
/// closes the gate and lets every thread already through it take the GIL
/// before finalization begins.
///
/// `atexit` runs handlers last registered first, so when XME is imported
/// after a program registered its own (lazily, in a thread), this handler
/// runs before them. A handler that stops and joins a thread running
/// batches would then wait for ever for a thread parked at the gate. So
/// this handler runs the handlers still to come itself, first, with the
/// gate open (`atexit._run_exitfuncs`, which runs each once and clears the
/// list: CPython's own loop then finds nothing left), and closes the gate
/// only after the last of them.
///
/// It closes nothing when the interpreter is not exiting: a program may
/// run the handlers by hand (`atexit._run_exitfuncs()`) and go on. An
/// exiting interpreter has run `threading._shutdown`, which marks the main
/// thread stopped, before any `atexit` handler.
#[pyfunction]
pub(crate) fn _close_gil_gate(py: Python<'_>) {
    /// Set while this handler runs the others (it is one of them).
    static RUNNING: AtomicBool = AtomicBool::new(false);
    if RUNNING.swap(true, Ordering::SeqCst) {
        return;
    }
    if !interpreter_is_exiting(py) {
        RUNNING.store(false, Ordering::SeqCst);
        return;
    }
    // `atexit` reports a failing handler itself and goes on to the next;
    // an error here (no `atexit` module) leaves the rest to CPython.
    if let Err(e) = py
        .import(pyo3::intern!(py, "atexit"))
        .and_then(|atexit| atexit.call_method0(pyo3::intern!(py, "_run_exitfuncs")))
    {
        e.print(py);
    }
    CLOSED.store(true, Ordering::SeqCst);
    py.detach(|| {
        while IN_FLIGHT.load(Ordering::SeqCst) > 0 {
            std::thread::sleep(Duration::from_millis(1));
        }
    });
}

/// Whether `threading._shutdown` has run: the interpreter is exiting
/// (its main thread is marked stopped). True if that cannot be told.
fn interpreter_is_exiting(py: Python<'_>) -> bool {
    let alive = py
        .import(pyo3::intern!(py, "threading"))
        .and_then(|t| t.call_method0(pyo3::intern!(py, "main_thread")))
        .and_then(|main| main.call_method0(pyo3::intern!(py, "is_alive")))
        .and_then(|alive| alive.is_truthy());
    !alive.unwrap_or(false)
}
