//! One batch of the standard interface: `Xme::fun` over the batch's calls,
//! each running a Python callable in a forked worker, its pickled result
//! coming back as raw bytes, while the parent waits with the GIL released
//! and checks for Ctrl-C.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use pyo3::exceptions::{PyKeyboardInterrupt, PyMemoryError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyTuple};
use xme_exec::{Array, ExecError, RawBytes, Spawning, TaskFailure, Xme};

use crate::XMEError;
use crate::logputter::Logputter;
use crate::shutdown;

/// First byte of the reply a worker makes itself when the call wrapper
/// raised (the Python wrapper catches everything, so this is a last resort).
const WRAPPER_RAISED: u8 = b'R';

/// Runs `run_call(0) … run_call(calls - 1)` in forked workers, at most
/// `pnum` at a time, calls taken in order, and returns one outcome per call
/// in call order: the `bytes` its `run_call` returned in the worker, or a
/// tuple saying why the call gave none: `("signal", n)`, `("exit", status)`,
/// `("timeout", seconds)` or `("lost", why)`.
///
/// The parent waits with the GIL released and checks for signals at least
/// every 50 ms: a pending exception (`KeyboardInterrupt` after Ctrl-C)
/// stops the batch, kills and reaps every worker, and is raised.
#[pyfunction]
#[pyo3(signature = (calls, run_call, *, pnum, timeout=None, logger=None, eager=false))]
pub(crate) fn run_batch(
    py: Python<'_>,
    calls: usize,
    run_call: Py<PyAny>,
    pnum: usize,
    timeout: Option<f64>,
    logger: Option<PyRef<'_, Logputter>>,
    eager: bool,
) -> PyResult<Vec<Py<PyAny>>> {
    check_calls_fit(calls)?;
    if pnum == 0 {
        return Err(PyValueError::new_err(
            "pnum must be at least 1 (the most worker processes at once)",
        ));
    }
    let mut xme = Xme::new().pnum(pnum).spawning(if eager {
        Spawning::Eager
    } else {
        Spawning::OnDemand
    });
    if let Some(logger) = logger {
        xme = xme.logger(logger.rust_logger());
    }
    if let Some(seconds) = timeout {
        let limit = Duration::try_from_secs_f64(seconds)
            .ok()
            .filter(|d| !d.is_zero())
            .ok_or_else(|| {
                PyValueError::new_err(format!(
                    "timeout must be a positive number of seconds, not {seconds}"
                ))
            })?;
        xme = xme.timeout(limit);
    }
    let pending: Arc<Mutex<Option<PyErr>>> = Arc::default();
    // Only the main thread handles signals (elsewhere `check_signals` has
    // nothing to say), and only it may re-attach without the shutdown gate.
    let counted = shutdown::Counted::new(py);
    if counted.is_none() {
        let slot = pending.clone();
        xme = xme.interrupt_when(move || {
            if crate::fork::flush_was_interrupted() {
                return true;
            }
            Python::try_attach(|py| match py.check_signals() {
                Ok(()) => false,
                Err(e) => {
                    *slot.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
                    true
                }
            })
            .unwrap_or(false)
        });
    }
    let outcomes = shutdown::detach_gated(py, &counted, || {
        xme.fun(
            |g: usize| Python::attach(|py| call_in_worker(py, &run_call, g)),
            Array::new(0..calls),
        )
    });
    // Ctrl-C during a pre-fork flush cancelled that fork and stopped the
    // batch: raise it now that every worker is reaped.
    if let Some(interrupt) = crate::fork::take_flush_interrupt() {
        return Err(interrupt);
    }
    let outcomes = match outcomes {
        Ok(outcomes) => outcomes,
        Err(ExecError::Interrupted { .. }) => {
            let raised = pending.lock().unwrap_or_else(|p| p.into_inner()).take();
            return Err(raised.unwrap_or_else(|| PyKeyboardInterrupt::new_err(())));
        }
        Err(e @ ExecError::OutOfMemory { .. }) => {
            return Err(PyMemoryError::new_err(xme_core::error_chain(&e)));
        }
        Err(e) => return Err(XMEError::new_err(xme_core::error_chain(&e))),
    };
    let mut replies = Vec::new();
    replies.try_reserve_exact(outcomes.len()).map_err(|_| {
        PyMemoryError::new_err(format!(
            "no memory for the {} results of the batch: run the work in smaller batches",
            outcomes.len()
        ))
    })?;
    for outcome in outcomes {
        replies.push(reply_object(py, outcome)?);
    }
    Ok(replies)
}

/// A call's outcome as `run_batch` returns it.
fn reply_object(
    py: Python<'_>,
    outcome: Result<RawBytes, xme_exec::TaskError>,
) -> PyResult<Py<PyAny>> {
    match outcome {
        Ok(bytes) => Ok(PyBytes::new(py, &bytes).into_any().unbind()),
        Err(e) => {
            let why = match e.failure {
                TaskFailure::Killed { signal } => ("signal", signal.into_pyobject(py)?.into_any()),
                TaskFailure::Exited { code } => ("exit", code.into_pyobject(py)?.into_any()),
                TaskFailure::TimedOut { after } => {
                    ("timeout", after.as_secs_f64().into_pyobject(py)?.into_any())
                }
                other => {
                    let text = other.to_string();
                    let text = text.strip_prefix("failed: ").unwrap_or(&text);
                    ("lost", text.into_pyobject(py)?.into_any())
                }
            };
            Ok(
                PyTuple::new(py, [why.0.into_pyobject(py)?.into_any(), why.1])?
                    .into_any()
                    .unbind(),
            )
        }
    }
}

/// Bytes of the parent's own bookkeeping per call (its index, claim word,
/// outcome slot, settled flag, result tuple slot), rounded up generously.
const BOOKKEEPING_PER_CALL: usize = 128;
/// Bookkeeping small enough not to check against the memory limits.
const SMALL_BOOKKEEPING: usize = 8 << 20;

/// A batch whose bookkeeping alone would not fit in the memory this process
/// may use is refused with a `ValueError`, before anything is allocated:
/// the machine's memory, the process's `RLIMIT_AS` and `RLIMIT_DATA`, and
/// its cgroup's `memory.max`, whichever is least. (Allocations past this
/// check are fallible too: a `MemoryError`, never an abort.)
fn check_calls_fit(calls: usize) -> PyResult<()> {
    let need = calls.saturating_mul(BOOKKEEPING_PER_CALL);
    // Asking the system takes a dozen calls; a few MiB fit anywhere (and
    // would fail as a MemoryError, not an abort).
    if need <= SMALL_BOOKKEEPING {
        return Ok(());
    }
    if let Some((memory, what)) = memory_limit()
        && need > memory
    {
        return Err(PyValueError::new_err(format!(
            "a batch of {calls} calls needs about {} MiB for its bookkeeping alone \
             ({BOOKKEEPING_PER_CALL} bytes a call), more than {what} ({} MiB): \
             run the work in smaller batches",
            need >> 20,
            memory >> 20
        )));
    }
    Ok(())
}

/// The least of the memory limits this process is under, and what it is.
fn memory_limit() -> Option<(usize, &'static str)> {
    // SAFETY: sysconf only reads system configuration.
    let (pages, page) = unsafe {
        (
            libc::sysconf(libc::_SC_PHYS_PAGES),
            libc::sysconf(libc::_SC_PAGESIZE),
        )
    };
    let physical = usize::try_from(pages)
        .ok()
        .filter(|&p| p > 0)
        .map(|p| p.saturating_mul(usize::try_from(page).unwrap_or(4096)));
    let rlimit = |resource| {
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit writes one rlimit into `limit`, which we own.
        let ok = unsafe { libc::getrlimit(resource, &mut limit) } == 0;
        (ok && limit.rlim_cur != libc::RLIM_INFINITY)
            .then(|| usize::try_from(limit.rlim_cur).unwrap_or(usize::MAX))
    };
    [
        (physical, "this machine's memory"),
        (
            rlimit(libc::RLIMIT_AS),
            "this process's address-space limit (RLIMIT_AS)",
        ),
        (
            rlimit(libc::RLIMIT_DATA),
            "this process's data limit (RLIMIT_DATA)",
        ),
        (
            cgroup_memory_max(),
            "its cgroup's memory limit (memory.max)",
        ),
    ]
    .into_iter()
    .filter_map(|(limit, what)| Some((limit?, what)))
    .min_by_key(|&(limit, _)| limit)
}

/// The memory limit of this process's cgroup (v2 `memory.max`), if it has one.
fn cgroup_memory_max() -> Option<usize> {
    let cgroups = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let path = cgroups.lines().find_map(|l| l.strip_prefix("0::"))?;
    let max = std::fs::read_to_string(format!("/sys/fs/cgroup{path}/memory.max")).ok()?;
    max.trim().parse().ok()
}

/// In a worker: the bytes `run_call(g)` returns. The Python wrapper catches
/// everything a call raises; should it raise itself, or return something
/// other than bytes, the reply says so instead.
fn call_in_worker(py: Python<'_>, run_call: &Py<PyAny>, g: usize) -> RawBytes {
    let why = match run_call.call1(py, (g,)) {
        Ok(reply) => match reply.extract::<&[u8]>(py) {
            Ok(bytes) => return RawBytes(bytes.to_vec()),
            Err(e) => format!("the XME call wrapper returned no bytes: {e}"),
        },
        Err(e) => format!("the XME call wrapper raised {e}"),
    };
    let mut bytes = vec![WRAPPER_RAISED];
    bytes.extend_from_slice(why.as_bytes());
    RawBytes(bytes)
}
