//! The pid-stamped logger of xme (`print` and `logobj` of the XME seed, 1.3).
//!
//! Every line has the seed's format, `2023-10-20 03:34:27(pid@114796):message`,
//! with an optional `(Type)` prefix and indent, and goes to the screen and/or an
//! append-only log file. Each line is one `write(2)` call on an `O_APPEND`
//! descriptor, made while holding a pid-named word in a shared region that
//! the program's first logger creates: processes forked after it write one
//! line at a time, so lines never interleave, even lines longer than a
//! pipe's atomic `PIPE_BUF` (4,096 bytes). The word is not a thread lock: a
//! forked child can log even if another thread of its parent held one at
//! fork time (a holder that died is taken over, one stopped for a second is
//! passed over).
//!
//! ```
//! use xme_log::Logger;
//!
//! # fn main() -> Result<(), xme_log::LogError> {
//! let dir = std::env::temp_dir().join(format!("xme-log-doc-{}", std::process::id()));
//! std::fs::create_dir_all(&dir).unwrap();
//! let path = dir.join("run.log");
//! let log = Logger::new().screen(false).logfile(&path)?;
//! log.print("This is function fun")?;
//! log.entry().msgtype("Warn").indent(1).print("a sub-step")?;
//!
//! let text = std::fs::read_to_string(&path).unwrap();
//! let pid = std::process::id();
//! assert!(text.lines().next().unwrap().ends_with(&format!("(pid@{pid}):This is function fun")));
//! assert!(text.lines().nth(1).unwrap().starts_with("(Warn)"));
//! assert!(text.lines().nth(1).unwrap().ends_with(":----a sub-step"));
//! # std::fs::remove_dir_all(&dir).unwrap();
//! # Ok(())
//! # }
//! ```
//!
//! A logger also works as the [`log`] crate's backend, in the parent and every
//! forked child: see [`Logger::install`].
//!
//! Linux only: xme uses fork-safe raw writes and shared regions.

#[cfg(not(target_os = "linux"))]
compile_error!(
    "xme-log runs on Linux only (fork-safe raw writes and shared regions): build it for a Linux target"
);

mod error;
mod logger;

pub use error::LogError;
pub use logger::{Entry, Logger};

// The README's example runs as a doctest (and, depending on this crate
// alone, in CI: scripts/standalone-check.sh).
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
