//! The foundation every xme crate stands on.
//!
//! - [`Operator`]: unguessable ids of the processes or threads that act on shared state.
//! - [`Error`]: the error vocabulary shared by the xme crates.
//! - [`process`]: forking children that die with their parent and are always reaped.
//! - [`SharedRegion`]: memory shared between a process and its forked children.
//! - [`sync`]: the lock-free patterns the other crates use (`PidLock`,
//!   `EventCount`, `Backoff`, `SeqLock`), each model-checked once.
//!
//! ```
//! use xme_core::{process, SharedRegion};
//! use std::sync::atomic::{AtomicU64, Ordering};
//!
//! # fn main() -> Result<(), xme_core::Error> {
//! let region = SharedRegion::anonymous(4096)?;
//! let counter: &AtomicU64 = region.place(0)?;
//! let child = process::fork_child(|| {
//!     counter.fetch_add(41, Ordering::SeqCst);
//!     0
//! })?;
//! assert!(child.wait()?.is_success());
//! assert_eq!(counter.load(Ordering::SeqCst), 41);
//! # Ok(())
//! # }
//! ```
//!
//! Linux only: xme uses memfd, futexes, pidfd and /proc.

#[cfg(not(target_os = "linux"))]
compile_error!(
    "xme-core runs on Linux only (memfd, futexes, pidfd and /proc): build it for a Linux target"
);

mod codec_error;
mod error;
#[doc(hidden)] // plumbing for xme's crates, not for users
pub mod fdio;
#[doc(hidden)] // plumbing for xme's crates, not for users
pub mod fence;
#[doc(hidden)] // plumbing for xme's crates, not for users
pub mod futex;
pub mod inspect;
mod operator;
pub mod process;
mod region;
#[doc(hidden)] // plumbing for xme's crates, not for users
pub mod result_frame;
pub mod sync;
mod time;

pub use codec_error::CodecError;
pub use error::{Error, Fate, PanicReport, error_chain};
pub use operator::{Operator, ParseOperatorError};
pub use region::{InRegion, Mapped, RegionHeader, SharedRegion, view};
pub use time::monotonic_ns;

/// The crate version, as shown by `show_version_info`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

// The README's example runs as a doctest (and, depending on this crate
// alone, in CI: scripts/standalone-check.sh).
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
