use std::fmt;

use serde::{Deserialize, Serialize};

/// The error vocabulary shared by the xme crates.
///
/// Higher crates wrap it in their own error enums; every variant says what
/// happened and, where it helps, what to do about it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// `fork(2)` failed.
    #[error(
        "could not fork a child process (the system may be out of processes or memory; lower pnum)"
    )]
    Fork(#[source] std::io::Error),
    /// A pipe could not be created or used.
    #[error("pipe failure while {doing}")]
    Pipe {
        /// What xme was doing.
        doing: &'static str,
        /// The system error.
        #[source]
        source: std::io::Error,
    },
    /// Waiting for a child process failed.
    #[error("could not wait for child process {pid}")]
    Wait {
        /// The child.
        pid: i32,
        /// The system error.
        #[source]
        source: std::io::Error,
    },
    /// Sending a signal failed.
    #[error("could not send a signal to process {pid}")]
    Signal {
        /// The target process.
        pid: i32,
        /// The system error.
        #[source]
        source: std::io::Error,
    },
    /// A shared-memory region could not be created or mapped.
    #[error("could not create a shared-memory region of {size} bytes")]
    RegionCreate {
        /// Requested size in bytes.
        size: usize,
        /// The system error.
        #[source]
        source: std::io::Error,
    },
    /// A region's header does not describe what the caller expected.
    #[error(
        "shared-memory region header mismatch: {what} (the region was made by another program or another xme layout version)"
    )]
    HeaderMismatch {
        /// Which field did not match, with both values.
        what: String,
    },
    /// A named region already exists and its creator is alive.
    #[error(
        "shared-memory region {name:?} already exists, created by live process {creator_pid} (pick another name, or attach with open_named)"
    )]
    RegionExists {
        /// The name.
        name: String,
        /// Its creator.
        creator_pid: u32,
    },
    /// A named region's creator is dead: the region was left behind.
    #[error(
        "shared-memory region {name:?} was left behind by process {creator_pid}, which is dead (remove it with SharedRegion::remove_named, or create it anew)"
    )]
    StaleRegion {
        /// The name.
        name: String,
        /// Its dead creator.
        creator_pid: u32,
    },
    /// A named region could not be opened, or its name is unusable.
    #[error("cannot open shared-memory region {name:?}: {reason}")]
    RegionOpen {
        /// The name.
        name: String,
        /// Why.
        reason: String,
    },
    /// An access fell outside a region or was misaligned.
    #[error(
        "shared-memory access out of bounds: offset {offset} + {len} bytes in a region of {size} bytes (align {align})"
    )]
    OutOfRegion {
        /// Requested offset.
        offset: usize,
        /// Requested length.
        len: usize,
        /// Region size.
        size: usize,
        /// Required alignment.
        align: usize,
    },
    /// A value could not be encoded with postcard.
    #[error("could not encode {what}")]
    Encode {
        /// What was being encoded.
        what: &'static str,
        /// Why.
        #[source]
        source: crate::CodecError,
    },
    /// Bytes could not be decoded as the expected type.
    #[error("could not decode {what}")]
    Decode {
        /// What was being decoded.
        what: &'static str,
        /// Why.
        #[source]
        source: crate::CodecError,
    },
    /// A frame announced a length above the allowed maximum.
    #[error(
        "frame of {len} bytes exceeds the maximum of {max} bytes (garbage on the channel, or raise the limit)"
    )]
    FrameTooLarge {
        /// Announced length.
        len: usize,
        /// Allowed maximum.
        max: usize,
    },
    /// A frame ended before its announced length.
    #[error("truncated frame: {got} of {expected} bytes arrived before the channel closed")]
    FrameTruncated {
        /// Announced length.
        expected: usize,
        /// Bytes received.
        got: usize,
    },
    /// A wait ran past its limit.
    #[error("timed out after {after:?} while {doing}")]
    Timeout {
        /// What was being waited for.
        doing: &'static str,
        /// The limit.
        after: std::time::Duration,
    },
    /// A fork hook ([`ForkHooks`](crate::process::ForkHooks)) panicked.
    #[error(
        "a {stage} fork hook panicked: {message} (fork hooks must not panic; the fork was cancelled or its child killed)"
    )]
    ForkHook {
        /// Which hook: `"prepare"` or `"parent"`.
        stage: &'static str,
        /// The panic message.
        message: String,
    },
    /// Other I/O failure.
    #[error("I/O error while {doing}")]
    Io {
        /// What xme was doing.
        doing: &'static str,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Fate {
    /// It called `exit` / `_exit` with this status.
    Exited(i32),
    /// A signal ended it.
    Signaled {
        /// The signal number.
        signal: i32,
        /// Whether a core file was written.
        core_dumped: bool,
    },
}

impl Fate {
    /// True for a clean `exit(0)`.
    pub fn is_success(&self) -> bool {
        matches!(self, Fate::Exited(0))
    }

    /// The signal that ended the process, if a signal did.
    pub fn signal(&self) -> Option<i32> {
        match self {
            Fate::Signaled { signal, .. } => Some(*signal),
            Fate::Exited(_) => None,
        }
    }
}

impl fmt::Display for Fate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Fate::Exited(code) => write!(f, "exited with status {code}"),
            Fate::Signaled {
                signal,
                core_dumped,
            } => {
                let name = nix::sys::signal::Signal::try_from(*signal)
                    .map(|s| s.as_str())
                    .unwrap_or("unknown signal");
                write!(f, "was killed by signal {signal} ({name})")?;
                if *core_dumped {
                    write!(f, ", core dumped")?;
                }
                Ok(())
            }
        }
    }
}

/// A panic that happened in another process, carried back across the boundary.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PanicReport {
    /// The panic message (`"Box<dyn Any>"` when the payload was not a string).
    pub message: String,
    /// `file:line:column` of the panic, when known.
    pub location: Option<String>,
}

impl fmt::Display for PanicReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.location {
            Some(loc) => write!(f, "'{}' at {loc}", self.message),
            None => write!(f, "'{}'", self.message),
        }
    }
}

/// The text of `e` followed by that of every error it came from, joined by
/// ": ". Messages do not repeat their source (a reporter walks the chain);
/// where an error is kept as text (sent across a pipe, stored in a `String`
/// field), this keeps the cause.
///
/// ```
/// let e = xme_core::result_frame::decode::<bool>(&[7], "a flag").unwrap_err();
/// assert_eq!(e.to_string(), "could not decode a flag");
/// assert!(xme_core::error_chain(&e).starts_with("could not decode a flag: the bytes are not"));
/// ```
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        text.push_str(": ");
        text.push_str(&c.to_string());
        cause = c.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A message says what xme was doing; the cause is the source, not
    /// printed again (error reporters such as anyhow print the chain).
    #[test]
    fn a_message_does_not_repeat_its_source() {
        let e = Error::Io {
            doing: "reading a result",
            source: std::io::Error::from(std::io::ErrorKind::BrokenPipe),
        };
        assert_eq!(e.to_string(), "I/O error while reading a result");
        let cause = std::error::Error::source(&e).expect("a source").to_string();
        assert!(!e.to_string().contains(&cause), "{e} repeats {cause}");
        assert_eq!(error_chain(&e), format!("{e}: {cause}"));
    }
}
