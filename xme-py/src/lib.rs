//! `XME._xme`: the compiled half of XME for Python (the `xme-py` package).
//!
//! The Python half (`python/XME/`) keeps the seed's API: `XME.XME(f, ...)`,
//! `xme.Array`, `fun`, `funs`, the special parameters `print` and
//! `logobj`; it plans each call and wraps it (pickling its result or its
//! exception). This half runs a batch on xme's standard interface
//! (`xme_exec::Xme::fun`, fork per batch), makes every fork safe for the
//! interpreter (`fork` module: xme-core's fork hooks), and provides the
//! seed's logger on xme's (`Logputter`).

mod batch;
mod fork;
mod logputter;
mod shutdown;

pyo3::create_exception!(
    XME,
    XMEError,
    pyo3::exceptions::PyRuntimeError,
    "A batch could not run (no worker could be forked, the log file could not be written, ...)."
);

/// The compiled half of XME: batches on xme's standard interface.
#[pyo3::pymodule(gil_used = true)]
mod _xme {
    use pyo3::exceptions::PyImportError;
    use pyo3::prelude::*;

    #[pymodule_export]
    use super::XMEError;
    #[pymodule_export]
    use super::batch::run_batch;
    #[pymodule_export]
    use super::logputter::Logputter;
    #[pymodule_export]
    use super::shutdown::_close_gil_gate;

    /// The version of xme this module was built from.
    #[pymodule_export]
    const XME_VERSION: &str = xme_core::VERSION;

    /// Threads of this process, as the kernel counts them (Python's own,
    /// and any a library started).
    #[pyfunction]
    fn thread_count() -> usize {
        std::fs::read_dir("/proc/self/task").map_or(1, |d| d.count().max(1))
    }

    /// CPUs this process may run on: the most workers a batch runs at once.
    #[pyfunction]
    fn cpu_count() -> usize {
        xme_exec::cpus()
    }

    #[pymodule_init]
    fn init(m: &Bound<'_, PyModule>) -> PyResult<()> {
        let py = m.py();
        let gil_disabled = py
            .import("sysconfig")?
            .call_method1("get_config_var", ("Py_GIL_DISABLED",))?
            .is_truthy()?;
        if gil_disabled {
            return Err(PyImportError::new_err(crate::FREE_THREADED_REFUSAL));
        }
        super::shutdown::init(py)?;
        super::fork::register();
        // Run by CPython before it marks the runtime finalizing (see
        // `shutdown`). CPython 3.14 parks a thread that takes the GIL while
        // finalizing instead of ending it: the gate is not needed there.
        if py.version_info() < (3, 14) {
            let close = m.getattr("_close_gil_gate")?;
            py.import("atexit")?.call_method1("register", (close,))?;
        }
        Ok(())
    }
}

/// Why a free-threaded interpreter is refused (also raised by the Python
/// half before it loads this module, which an abi3 build cannot be there).
const FREE_THREADED_REFUSAL: &str = "XME (xme-py) does not support free-threaded CPython builds yet: it forks while holding the GIL, as CPython's os.fork does, and a build without a GIL has not been made safe for that. Use a standard CPython build (python3.x, not python3.xt).";
