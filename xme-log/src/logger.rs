use std::borrow::Cow;
use std::fs::OpenOptions;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::LogError;

/// The word every logger's process takes while it writes a line, in a
/// region made by the first logger of the program (so shared by every
/// process forked after it). `None` if no region could be made: lines up to
/// PIPE_BUF bytes are still whole.
#[cfg_attr(loom, allow(dead_code))]
fn line_lock() -> Option<&'static std::sync::atomic::AtomicU64> {
    static REGION: std::sync::OnceLock<Option<xme_core::SharedRegion>> = std::sync::OnceLock::new();
    REGION
        .get_or_init(|| xme_core::SharedRegion::anonymous(64).ok())
        .as_ref()
        .and_then(|r| r.place(0).ok())
}

/// A logger with the seed's options (`logobj` attributes).
///
/// Cloning is cheap and clones share the log file descriptor. Setters take and
/// return `self` so a logger reads like the seed's keyword options:
///
/// ```
/// let log = xme_log::Logger::new().time(false).indent_style("*", 2);
/// ```
#[derive(Clone, Debug)]
pub struct Logger {
    file: Option<Arc<LogFile>>,
    time: bool,
    show_msgtype: bool,
    default_msgtype: String,
    show_pid: bool,
    indent: bool,
    indent_type: String,
    indent_num: usize,
    screen: bool,
}

#[derive(Debug)]
struct LogFile {
    path: PathBuf,
    fd: OwnedFd,
}

impl Default for Logger {
    fn default() -> Self {
        Logger::new()
    }
}

impl Logger {
    /// The seed's defaults: time, message type and pid shown, indent `-` × 4,
    /// screen on, no log file, default message type `Message`.
    ///
    /// ```
    /// use xme_log::Logger;
    /// let log = Logger::new();
    /// let line = log.format(&log.entry(), "hello");
    /// assert!(line.contains(&format!("(pid@{}):hello", std::process::id())));
    /// ```
    pub fn new() -> Logger {
        // Made now, before the program forks, so that its children share it.
        let _ = line_lock();
        Logger {
            file: None,
            time: true,
            show_msgtype: true,
            default_msgtype: "Message".to_string(),
            show_pid: true,
            indent: true,
            indent_type: "-".to_string(),
            indent_num: 4,
            screen: true,
        }
    }

    /// Appends every line to `path` too (opened `O_APPEND`, created if missing).
    ///
    /// # Errors
    /// [`LogError::OpenLogfile`] if the file cannot be opened for appending.
    ///
    /// ```
    /// use xme_log::Logger;
    /// # fn main() -> Result<(), xme_log::LogError> {
    /// let path = std::env::temp_dir().join(format!("xme-doc-{}.log", std::process::id()));
    /// let log = Logger::new().screen(false).logfile(&path)?;
    /// log.print("to the file")?;
    /// assert!(std::fs::read_to_string(&path).unwrap().ends_with(":to the file\n"));
    /// # std::fs::remove_file(&path).unwrap();
    /// assert!(Logger::new().logfile("/no/such/dir/x.log").is_err());
    /// # Ok(())
    /// # }
    /// ```
    pub fn logfile(mut self, path: impl AsRef<Path>) -> Result<Logger, LogError> {
        let path = path.as_ref().to_path_buf();
        let file = OpenOptions::new()
            .append(true)
            .create(true)
            .mode(0o644)
            .open(&path)
            .map_err(|source| LogError::OpenLogfile {
                path: path.clone(),
                source,
            })?;
        self.file = Some(Arc::new(LogFile {
            path,
            fd: file.into(),
        }));
        Ok(self)
    }

    /// Stops writing to a log file.
    ///
    /// ```
    /// use xme_log::Logger;
    /// # fn main() -> Result<(), xme_log::LogError> {
    /// let path = std::env::temp_dir().join(format!("xme-doc-nolog-{}.log", std::process::id()));
    /// let log = Logger::new().logfile(&path)?.no_logfile();
    /// assert_eq!(log.logfile_path(), None);
    /// # std::fs::remove_file(&path).unwrap();
    /// # Ok(())
    /// # }
    /// ```
    pub fn no_logfile(mut self) -> Logger {
        self.file = None;
        self
    }

    /// The log file's path, if any.
    ///
    /// ```
    /// use xme_log::Logger;
    /// assert_eq!(Logger::new().logfile_path(), None);
    /// ```
    pub fn logfile_path(&self) -> Option<&Path> {
        self.file.as_deref().map(|f| f.path.as_path())
    }

    /// Show the local time (`2023-10-20 03:34:27`).
    ///
    /// ```
    /// use xme_log::Logger;
    /// let log = Logger::new().time(false).pid(false);
    /// assert_eq!(log.format(&log.entry(), "no time"), "no time");
    /// ```
    pub fn time(mut self, on: bool) -> Logger {
        self.time = on;
        self
    }

    /// Show message types (`(Type)` before the line).
    ///
    /// ```
    /// use xme_log::Logger;
    /// let log = Logger::new().time(false).pid(false).msgtype(false);
    /// assert_eq!(log.format(&log.entry().msgtype("Warn"), "x"), "x"); // types hidden
    /// ```
    pub fn msgtype(mut self, on: bool) -> Logger {
        self.show_msgtype = on;
        self
    }

    /// The type [`Entry::default_type`] uses (seed default: `Message`).
    ///
    /// ```
    /// use xme_log::Logger;
    /// let log = Logger::new().time(false).pid(false).default_msgtype("Info");
    /// assert_eq!(log.format(&log.entry().default_type(), "x"), "(Info):x");
    /// ```
    pub fn default_msgtype(mut self, ty: impl Into<String>) -> Logger {
        self.default_msgtype = ty.into();
        self
    }

    /// Show the pid (`(pid@27896)`).
    ///
    /// ```
    /// use xme_log::Logger;
    /// let log = Logger::new().time(false);
    /// assert_eq!(log.format(&log.entry(), "x"), format!("(pid@{}):x", std::process::id()));
    /// ```
    pub fn pid(mut self, on: bool) -> Logger {
        self.show_pid = on;
        self
    }

    /// Indent sub-log lines.
    ///
    /// ```
    /// use xme_log::Logger;
    /// let log = Logger::new().time(false).pid(false).indent(false);
    /// assert_eq!(log.format(&log.entry().indent(2), "x"), "x");
    /// ```
    pub fn indent(mut self, on: bool) -> Logger {
        self.indent = on;
        self
    }

    /// One indent level is `indent_type` repeated `indent_num` times (seed: `-`, 4).
    ///
    /// ```
    /// use xme_log::Logger;
    /// let log = Logger::new().time(false).pid(false).indent_style("·", 2);
    /// assert_eq!(log.format(&log.entry().indent(2), "x"), "····x");
    /// ```
    pub fn indent_style(mut self, indent_type: impl Into<String>, indent_num: usize) -> Logger {
        self.indent_type = indent_type.into();
        self.indent_num = indent_num;
        self
    }

    /// Write lines to the screen (standard output).
    ///
    /// ```
    /// use xme_log::Logger;
    /// # fn main() -> Result<(), xme_log::LogError> {
    /// Logger::new().screen(false).print("written nowhere: no screen, no file")?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn screen(mut self, on: bool) -> Logger {
        self.screen = on;
        self
    }

    /// Writes one plain line: no type, no indent (the seed's `print(message)`).
    ///
    /// # Errors
    /// [`LogError::Write`] if standard output or the log file refuses the line.
    ///
    /// ```
    /// use xme_log::Logger;
    /// # fn main() -> Result<(), xme_log::LogError> {
    /// Logger::new().print("one line, one write(2)")?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn print(&self, message: impl AsRef<str>) -> Result<(), LogError> {
        self.entry().print(message)
    }

    /// Starts a line with a type or an indent (the seed's `print(message, msgtype=…, indent=…)`).
    ///
    /// ```
    /// use xme_log::Logger;
    /// # fn main() -> Result<(), xme_log::LogError> {
    /// let log = Logger::new().time(false);
    /// log.entry().msgtype("Warn").indent(1).no_pid().print("disk almost full")?;
    /// // prints: (Warn):----disk almost full
    /// # Ok(())
    /// # }
    /// ```
    pub fn entry(&self) -> Entry<'_> {
        Entry {
            logger: self,
            msgtype: None,
            indent: 0,
            pid: Some(None),
        }
    }

    /// Formats a line without writing it (no trailing newline).
    ///
    /// ```
    /// use xme_log::Logger;
    /// let log = Logger::new().time(false).pid(false);
    /// assert_eq!(log.format(&log.entry().msgtype("Error").indent(1), "x"), "(Error):----x");
    /// ```
    pub fn format(&self, entry: &Entry<'_>, message: &str) -> String {
        let mut line = String::with_capacity(48 + message.len());
        if self.show_msgtype
            && let Some(ty) = &entry.msgtype
        {
            line.push('(');
            line.push_str(ty);
            line.push(')');
        }
        if self.time {
            use std::fmt::Write;
            let _ = write!(line, "{}", chrono::Local::now().format("%Y-%m-%d %H:%M:%S"));
        }
        if self.show_pid
            && let Some(pid) = entry.pid
        {
            use std::fmt::Write;
            let _ = write!(line, "(pid@{})", pid.unwrap_or_else(std::process::id));
        }
        if !line.is_empty() {
            line.push(':');
        }
        if self.indent {
            for _ in 0..entry.indent * self.indent_num {
                line.push_str(&self.indent_type);
            }
        }
        line.push_str(message);
        line
    }

    /// Writes a line made by [`format`](Self::format) (or any text without
    /// a newline) to the screen and the log file, as [`Entry::print`]
    /// does: one `write(2)` per target, one line at a time across processes.
    ///
    /// # Errors
    /// [`LogError::Write`] if standard output or the log file refuses the line.
    ///
    /// ```
    /// use xme_log::Logger;
    /// # fn main() -> Result<(), xme_log::LogError> {
    /// let log = Logger::new().time(false);
    /// let line = log.format(&log.entry().msgtype("Info"), "formatted once");
    /// log.write_line(line)?; // prints: (Info)(pid@4242):formatted once
    /// # Ok(())
    /// # }
    /// ```
    pub fn write_line(&self, mut line: String) -> Result<(), LogError> {
        line.push('\n');
        // One line at a time across processes: a write of more than
        // PIPE_BUF bytes to a pipe may be split, and another process's line
        // written in between. A holder that died is taken over; one stuck
        // (stopped) for a second is ignored. (Not under loom, whose builds
        // model xme's protocols, not the logger.)
        #[cfg(not(loom))]
        let _held = line_lock().map(|word| {
            xme_core::sync::PidLock::take_within(word, std::time::Duration::from_secs(1))
                .unwrap_or_else(|_| xme_core::sync::PidLock::seize(word))
        });
        if self.screen {
            // Straight to fd 1, not through `Stdout`'s buffer and lock (see
            // the module docs): the handle only lends the descriptor.
            let stdout = std::io::stdout();
            xme_core::fdio::write_all(stdout.as_fd(), line.as_bytes()).map_err(|source| {
                LogError::Write {
                    target: "screen",
                    source: source.into(),
                }
            })?;
        }
        if let Some(file) = &self.file {
            xme_core::fdio::write_all(file.fd.as_fd(), line.as_bytes()).map_err(|source| {
                LogError::Write {
                    target: "log file",
                    source: source.into(),
                }
            })?;
        }
        Ok(())
    }

    /// Installs a clone of this logger as the [`log`] crate's backend for the
    /// whole process (and its future forked children) with `level` as the
    /// maximum level. A record's level is shown as its message type.
    ///
    /// ```
    /// let log = xme_log::Logger::new().screen(false);
    /// log.install(log::LevelFilter::Info).unwrap();
    /// log::info!("visible in every process forked from here");
    /// ```
    pub fn install(&self, level: log::LevelFilter) -> Result<(), LogError> {
        log::set_boxed_logger(Box::new(self.clone())).map_err(|_| LogError::AlreadyInstalled)?;
        log::set_max_level(level);
        Ok(())
    }
}

/// One line being built: its type, indent and whether to show the pid.
#[derive(Debug, Clone)]
pub struct Entry<'a> {
    logger: &'a Logger,
    msgtype: Option<Cow<'a, str>>,
    indent: usize,
    /// `None`: no pid; `Some(None)`: this process's; `Some(Some(p))`: `p`.
    pid: Option<Option<u32>>,
}

impl<'a> Entry<'a> {
    /// Show `(ty)` before the line (when the logger shows types).
    ///
    /// ```
    /// let log = xme_log::Logger::new().time(false).pid(false);
    /// assert_eq!(log.format(&log.entry().msgtype("Debug"), "x"), "(Debug):x");
    /// ```
    pub fn msgtype(mut self, ty: impl Into<Cow<'a, str>>) -> Self {
        self.msgtype = Some(ty.into());
        self
    }

    /// Use the logger's default message type.
    ///
    /// ```
    /// let log = xme_log::Logger::new().time(false).pid(false);
    /// assert_eq!(log.format(&log.entry().default_type(), "x"), "(Message):x");
    /// ```
    pub fn default_type(mut self) -> Self {
        self.msgtype = Some(Cow::Borrowed(&self.logger.default_msgtype));
        self
    }

    /// Indent by `levels` (each `indent_type` × `indent_num`).
    ///
    /// ```
    /// let log = xme_log::Logger::new().time(false).pid(false);
    /// assert_eq!(log.format(&log.entry().indent(1), "x"), "----x");
    /// ```
    pub fn indent(mut self, levels: usize) -> Self {
        self.indent = levels;
        self
    }

    /// Hide the pid for this line (the seed's `pid=None`).
    ///
    /// ```
    /// let log = xme_log::Logger::new().time(false);
    /// assert_eq!(log.format(&log.entry().no_pid(), "x"), "x");
    /// ```
    pub fn no_pid(mut self) -> Self {
        self.pid = None;
        self
    }

    /// Show `pid` instead of this process's pid (the seed's `pid=…`).
    ///
    /// ```
    /// let log = xme_log::Logger::new().time(false);
    /// assert_eq!(log.format(&log.entry().pid_value(7), "x"), "(pid@7):x");
    /// ```
    pub fn pid_value(mut self, pid: u32) -> Self {
        self.pid = Some(Some(pid));
        self
    }

    /// Writes the line.
    ///
    /// # Errors
    /// As [`Logger::print`].
    ///
    /// ```
    /// # fn main() -> Result<(), xme_log::LogError> {
    /// xme_log::Logger::new().entry().msgtype("Info").print("done")?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn print(self, message: impl AsRef<str>) -> Result<(), LogError> {
        let line = self.logger.format(&self, message.as_ref());
        self.logger.write_line(line)
    }
}

impl log::Log for Logger {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }

    fn log(&self, record: &log::Record<'_>) {
        let entry = self.entry().msgtype(record.level().as_str());
        // The `log` facade has no way to return an error; a failed screen or file
        // write is dropped here, as every `log` backend does.
        let _ = entry.print(record.args().to_string());
    }

    fn flush(&self) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_format_matches_the_seed() {
        let log = Logger::new();
        let line = log.format(&log.entry(), "This is function fun");
        // 2023-10-20 03:34:27(pid@114796):This is function fun
        let (time, rest) = line.split_at(19);
        assert!(
            chrono::NaiveDateTime::parse_from_str(time, "%Y-%m-%d %H:%M:%S").is_ok(),
            "{line}"
        );
        assert_eq!(
            rest,
            format!("(pid@{}):This is function fun", std::process::id())
        );
    }

    #[test]
    fn type_indent_and_switches() {
        let log = Logger::new().time(false);
        let pid = std::process::id();
        assert_eq!(
            log.format(&log.entry().msgtype("Warn").indent(2), "m"),
            format!("(Warn)(pid@{pid}):--------m")
        );
        assert_eq!(
            log.format(&log.entry().default_type(), "m"),
            format!("(Message)(pid@{pid}):m")
        );
        let log = log.msgtype(false).pid(false).indent_style("*", 1);
        assert_eq!(
            log.format(&log.entry().msgtype("Warn").indent(3), "m"),
            "***m"
        );
        let log = log.indent(false);
        assert_eq!(log.format(&log.entry().indent(3), "m"), "m");
        let log = Logger::new().time(false);
        assert_eq!(log.format(&log.entry().no_pid(), "m"), "m");
    }

    #[test]
    fn bad_logfile_is_a_clear_error() {
        let err = Logger::new().logfile("/nonexistent-dir/x.log").unwrap_err();
        assert!(matches!(err, LogError::OpenLogfile { .. }));
        assert!(err.to_string().contains("/nonexistent-dir/x.log"));
    }
}
