/// Why a shared-memory operation did not happen. Nothing already stored is
/// lost when one of these is returned.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ShmError {
    /// No block of the needed size class is free, even after reclaiming
    /// blocks left by dead processes.
    #[error(
        "the arena is full: no free block of {class_bytes} bytes for a {needed}-byte entry (build the Manager with a larger arena_bytes, or delete keys)"
    )]
    ArenaFull {
        /// Bytes the entry needed (header, key and value).
        needed: usize,
        /// The size class it fell into.
        class_bytes: usize,
    },
    /// The table already holds its capacity of keys.
    #[error("the table is full: {capacity} keys (build the Manager with a larger capacity)")]
    CapacityFull {
        /// The number of keys the table was built for.
        capacity: usize,
    },
    /// The entry is larger than the largest block.
    #[error(
        "entry of {len} bytes (key + encoded value + header) exceeds the largest block of {max} bytes"
    )]
    ValueTooLarge {
        /// The entry's size.
        len: usize,
        /// The largest block.
        max: usize,
    },
    /// No such key.
    #[error("no key {0:?} in the table")]
    NotFound(String),
    /// The stored bytes are not a value of the requested type.
    #[error("the value of key {key:?} is not a {type_name}: {source}")]
    WrongType {
        /// The key.
        key: String,
        /// The requested type.
        type_name: &'static str,
        /// The decoding error.
        #[source]
        source: postcard::Error,
    },
    /// A value could not be encoded.
    #[error("could not encode the value for key {key:?}: {source}")]
    Encode {
        /// The key.
        key: String,
        /// The encoding error.
        #[source]
        source: postcard::Error,
    },
    /// A reserved key (`__STATUS__`, `__GUARD__`, `__XMEM__`) cannot be deleted,
    /// or was given a value of the wrong type.
    #[error("{key} is reserved: {what}")]
    Reserved {
        /// The key.
        key: String,
        /// What was refused.
        what: &'static str,
    },
    /// A key longer than the table allows.
    #[error("key of {len} bytes is longer than the {max}-byte limit")]
    KeyTooLong {
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The memory does not hold a table of this layout.
    #[error("not an xme value table: {0}")]
    BadLayout(String),
    /// The Manager's lock refused or timed out.
    #[error(transparent)]
    Lock(#[from] xme_security::SecurityError),
    /// The region could not be created, opened or used.
    #[error(transparent)]
    Region(#[from] xme_core::Error),
    /// Invalid builder settings.
    #[error("invalid Manager settings: {0}")]
    Config(String),
}
