//! `XME.Logputter`: the seed's logger (`print` and `logobj`, section 1.3),
//! on xme's: one line at a time across processes, in the seed's format
//! `2023-10-20 03:34:27(pid@114796):message`.

use std::path::PathBuf;

use pyo3::exceptions::{PyOSError, PyTypeError, PyValueError};
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyDict, PyInt, PyString, PyTuple};
use xme_log::Logger;

/// The XME logger: what a task's `print` writes with (`write_log`) and what
/// its `logobj` is. Attributes as in the seed: `logfile`, `time`,
/// `msgtype`, `default_msgtype`, `processing` (the pid), `indent`,
/// `indent_type`, `indent_num`, `print_in_screen`.
#[pyclass(module = "XME", name = "Logputter")]
pub(crate) struct Logputter {
    /// Holds the log file, when there is one.
    base: Logger,
    logfile: Option<PathBuf>,
    /// Show the time.
    #[pyo3(get, set)]
    time: bool,
    /// Show message types.
    #[pyo3(get, set)]
    msgtype: bool,
    /// The type `msgtype=True` shows.
    #[pyo3(get, set)]
    default_msgtype: String,
    /// Show the pid.
    #[pyo3(get, set)]
    processing: bool,
    /// Indent sub-log lines.
    #[pyo3(get, set)]
    indent: bool,
    /// One indent level is `indent_type` × `indent_num`.
    #[pyo3(get, set)]
    indent_num: usize,
    /// See `indent_num`.
    #[pyo3(get, set)]
    indent_type: String,
    /// Write lines to the screen (`sys.stdout`).
    #[pyo3(get, set)]
    print_in_screen: bool,
}

fn open_logfile(path: Option<PathBuf>) -> PyResult<Logger> {
    let base = Logger::new().screen(false);
    match path {
        None => Ok(base),
        Some(path) => base
            .logfile(&path)
            .map_err(|e| PyOSError::new_err(xme_core::error_chain(&e))),
    }
}

#[pymethods]
impl Logputter {
    #[new]
    #[pyo3(signature = (logfile=None, show_version_info=false, print_in_screen=true))]
    fn new(
        py: Python<'_>,
        logfile: Option<PathBuf>,
        show_version_info: bool,
        print_in_screen: bool,
    ) -> PyResult<Logputter> {
        let logger = Logputter {
            base: open_logfile(logfile.clone())?,
            logfile,
            time: true,
            msgtype: true,
            default_msgtype: "Message".into(),
            processing: true,
            indent: true,
            indent_num: 4,
            indent_type: "-".into(),
            print_in_screen,
        };
        if show_version_info {
            logger.write(
                py,
                None,
                0,
                Some(None),
                &format!(
                    "XME on xme {} (a Rust re-creation of XME 4.2)",
                    xme_core::VERSION
                ),
            )?;
        }
        Ok(logger)
    }

    /// The log file lines are appended to, or `None`.
    #[getter]
    fn logfile(&self) -> Option<PathBuf> {
        self.logfile.clone()
    }

    #[setter]
    fn set_logfile(&mut self, path: Option<PathBuf>) -> PyResult<()> {
        self.base = open_logfile(path.clone())?;
        self.logfile = path;
        Ok(())
    }

    /// Writes one line: the messages joined by spaces, after the time, the
    /// pid and the indent. Options: `msgtype` (a type shown as `(Type)`;
    /// `True` for `default_msgtype`; default none), `indent` (levels, default
    /// 0), `pid` (default this process's; `None` hides it). The built-in
    /// `print`'s `sep` is honoured; `end`, `file` and `flush` are accepted
    /// and ignored (a log line is always one whole line, flushed).
    #[pyo3(signature = (*message, **options))]
    fn write_log(
        &self,
        py: Python<'_>,
        message: &Bound<'_, PyTuple>,
        options: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<()> {
        // It writes to `sys.stdout`, which releases the GIL around write(2).
        let _counted = crate::shutdown::Counted::new(py);
        let mut msgtype = None;
        let mut indent = 0usize;
        let mut pid = Some(None);
        let mut sep = intern!(py, " ").clone();
        for (key, value) in options.into_iter().flatten() {
            match key.extract::<String>()?.as_str() {
                "msgtype" => {
                    msgtype = if value.is_none() {
                        None
                    } else if let Ok(flag) = value.cast::<PyBool>() {
                        // True: the default type; False: none, as None.
                        flag.is_true().then(|| self.default_msgtype.clone())
                    } else {
                        Some(value.str()?.to_string())
                    }
                }
                "indent" => indent = int_option(&value, "indent", "a number of levels")?,
                "pid" => {
                    pid = if value.is_none() {
                        None
                    } else {
                        Some(Some(int_option(&value, "pid", "a process id")?))
                    }
                }
                "sep" if !value.is_none() => {
                    sep = value.cast_into::<PyString>().map_err(|e| {
                        PyTypeError::new_err(format!(
                            "write_log: sep must be None or a string, not {}",
                            repr_of(e.into_inner().as_any())
                        ))
                    })?
                }
                "sep" | "end" | "file" | "flush" => {}
                other => {
                    return Err(PyTypeError::new_err(format!(
                        "write_log() got an unexpected keyword argument '{other}' (it takes msgtype, indent, pid, and print's sep, end, file, flush)"
                    )));
                }
            }
        }
        let parts = message
            .iter()
            .map(|m| m.str())
            .collect::<PyResult<Vec<_>>>()?;
        let text = sep.call_method1(intern!(py, "join"), (parts,))?;
        self.write(
            py,
            msgtype.as_deref(),
            indent,
            pid,
            &text.extract::<String>()?,
        )
    }

    fn __repr__(&self) -> String {
        format!(
            "<XME.Logputter logfile={:?} print_in_screen={}>",
            self.logfile, self.print_in_screen
        )
    }
}

impl Logputter {
    /// The xme logger these settings describe (screen on when
    /// `print_in_screen`).
    pub(crate) fn rust_logger(&self) -> Logger {
        self.base
            .clone()
            .time(self.time)
            .msgtype(self.msgtype)
            .default_msgtype(self.default_msgtype.clone())
            .pid(self.processing)
            .indent(self.indent)
            .indent_style(self.indent_type.clone(), self.indent_num)
            .screen(self.print_in_screen)
    }

    fn write(
        &self,
        py: Python<'_>,
        msgtype: Option<&str>,
        indent: usize,
        pid: Option<Option<u32>>,
        message: &str,
    ) -> PyResult<()> {
        let logger = self.rust_logger();
        let mut entry = logger.entry().indent(indent);
        if let Some(ty) = msgtype {
            entry = entry.msgtype(ty);
        }
        entry = match pid {
            None => entry.no_pid(),
            Some(Some(p)) => entry.pid_value(p),
            Some(None) => entry,
        };
        let line = logger.format(&entry, message);
        // Where Python's `sys.stdout` is the process's fd 1, the line goes
        // there in one write(2) under xme's cross-process line lock, after
        // what Python buffered; where it is another object (a notebook, a
        // capture, a StringIO), through it, as `print` would.
        let screen = if self.print_in_screen {
            python_stdout(py)?
        } else {
            Screen::Off
        };
        if let Screen::Object(stdout) = &screen {
            let mut text = line.clone();
            text.push('\n');
            stdout.call_method1(intern!(py, "write"), (text,))?;
            stdout.call_method0(intern!(py, "flush"))?;
        }
        logger
            .screen(matches!(screen, Screen::Fd1))
            .write_line(line)
            .map_err(|e| PyOSError::new_err(xme_core::error_chain(&e)))
    }
}

enum Screen<'py> {
    Off,
    Fd1,
    Object(Bound<'py, PyAny>),
}

/// A whole-number option of `write_log`: a `TypeError` for a non-int, a
/// `ValueError` for an int out of range (negative, too large).
fn int_option<'a, 'py, T: FromPyObject<'a, 'py>>(
    value: &'a Bound<'py, PyAny>,
    name: &str,
    what: &str,
) -> PyResult<T> {
    let wrong = |what_went_wrong: &str| {
        format!(
            "write_log: {name} must be {what} (an int >= 0{}), not {}{what_went_wrong}",
            if name == "pid" { ", or None" } else { "" },
            repr_of(value)
        )
    };
    if value.is_instance_of::<PyBool>() || !value.is_instance_of::<PyInt>() {
        return Err(PyTypeError::new_err(wrong("")));
    }
    value
        .extract()
        .map_err(|_| PyValueError::new_err(wrong(" (out of range)")))
}

/// `repr(value)`, or a stand-in if its `__repr__` fails.
fn repr_of(value: &Bound<'_, PyAny>) -> String {
    value.repr().map_or_else(
        |_| "(an object whose repr failed)".into(),
        |r| r.to_string(),
    )
}

/// Where `sys.stdout` writes: fd 1 (flushed, so the line follows what it
/// holds), another object, or nowhere (`None`).
fn python_stdout(py: Python<'_>) -> PyResult<Screen<'_>> {
    let stdout = py
        .import(intern!(py, "sys"))?
        .getattr(intern!(py, "stdout"))?;
    if stdout.is_none() {
        return Ok(Screen::Off);
    }
    let fd = stdout
        .call_method0(intern!(py, "fileno"))
        .and_then(|fd| fd.extract::<i32>());
    match fd {
        Ok(1) => {
            stdout.call_method0(intern!(py, "flush"))?;
            Ok(Screen::Fd1)
        }
        _ => Ok(Screen::Object(stdout)),
    }
}
