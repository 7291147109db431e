//! What can go wrong in a command.

/// An `xme` command's error: printed as `xme: <message>`, exit status 1.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// A region could not be opened, is not an xme region, or its header
    /// says another layout.
    #[error(transparent)]
    Region(#[from] xme_core::Error),
    /// A Manager could not be read (corrupt, or another layout version).
    #[error(transparent)]
    Manager(#[from] xme_shm::ShmError),
    /// A Monitor could not be read (corrupt, or another layout version).
    #[error(transparent)]
    Monitor(#[from] xme_monitor::MonitorError),
    /// An xme region of a kind this build does not read.
    #[error(
        "{name:?} is an xme region of a kind this xme does not know (version word {version:#010x}, tag {tag:#06x}): use the xme that made it"
    )]
    Unknown {
        /// The region.
        name: String,
        /// Its header's version word.
        version: u32,
        /// Its kind tag.
        tag: u16,
    },
    /// `rm` refused: live processes use the region.
    #[error(
        "{name:?} is in use by live process(es) {pids:?}: stop them first, or remove it anyway with --force (they keep their mapping; new attaches fail)"
    )]
    InUse {
        /// The region.
        name: String,
        /// The live processes.
        pids: Vec<u32>,
    },
    /// `rm` refused: some processes could not be looked at, and any of them
    /// may use the region.
    #[error(
        "cannot tell whether {name:?} is in use: the memory maps of {unseen} process(es) of other users could not be read{hidden}; run as root to see them, or remove it anyway with --force"
    )]
    UsersUnknown {
        /// The region.
        name: String,
        /// How many processes could not be looked at.
        unseen: usize,
        /// ", and /proc hides other users' processes" when it does.
        hidden: &'static str,
    },
    /// The terminal could not be set up or drawn on.
    #[error("the terminal could not be used for the live view (try --once)")]
    Terminal(#[from] std::io::Error),
    /// The region went away while `top` watched it.
    #[error("{name:?} disappeared: {reason}")]
    Disappeared {
        /// The region.
        name: String,
        /// What reading it said.
        reason: String,
    },
}
