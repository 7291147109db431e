use std::path::PathBuf;

/// What can go wrong when logging.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LogError {
    /// The log file could not be opened for appending.
    #[error(
        "could not open log file {path:?} for appending (check the directory exists and is writable)"
    )]
    OpenLogfile {
        /// The file.
        path: PathBuf,
        /// The system error.
        #[source]
        source: std::io::Error,
    },
    /// A line could not be written.
    #[error("could not write a log line to {target}")]
    Write {
        /// `"screen"` or `"log file"`.
        target: &'static str,
        /// The system error.
        #[source]
        source: std::io::Error,
    },
    /// Another `log` backend is already installed in this process.
    #[error("a logger for the `log` crate is already installed in this process")]
    AlreadyInstalled,
}
