use xme_core::Operator;

/// Why a shared-memory operation did not happen. Nothing already stored is
/// lost when one of these is returned.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ShmError {
    /// No room is left for the entry, even after reclaiming blocks left by
    /// dead processes.
    #[error(
        "the arena is full: no room for a {needed}-byte entry in the {arena_bytes}-byte arena (build the Manager with a larger arena_bytes, or delete keys: a delete frees its space at once)"
    )]
    ArenaFull {
        /// Bytes the entry needed (header, key and value).
        needed: usize,
        /// The arena's size.
        arena_bytes: usize,
    },
    /// The table already holds its capacity of live keys (or, rarely, so many
    /// deleted keys' tombstones that its slots are 3/4 full).
    #[error(
        "the table is full: {capacity} keys (build the Manager with a larger capacity, or delete keys)"
    )]
    CapacityFull {
        /// The number of keys the table was built for.
        capacity: usize,
    },
    /// The entry is larger than the whole arena.
    #[error(
        "entry of {len} bytes (key + encoded value + 32-byte header) is larger than the arena of {max} bytes (build the Manager with a larger arena_bytes)"
    )]
    ValueTooLarge {
        /// The entry's size.
        len: usize,
        /// The arena's size.
        max: usize,
    },
    /// A call on several keys stopped part-way: the keys in `done` were
    /// changed, `failed` and those after it were not.
    #[error("stopped at key {failed:?} after {} of {total} keys were done", done.len())]
    PartlyDone {
        /// The keys done, in order.
        done: Vec<String>,
        /// The key whose change failed.
        failed: String,
        /// Keys in the call.
        total: usize,
        /// Why `failed` failed.
        #[source]
        source: Box<ShmError>,
    },
    /// No such key.
    #[error("no key {0:?} in the table")]
    NotFound(String),
    /// The stored bytes are not a value of the requested type.
    #[error("the value of key {key:?} is not a {type_name}")]
    WrongType {
        /// The key.
        key: String,
        /// The requested type.
        type_name: &'static str,
        /// Why it did not decode.
        #[source]
        source: xme_core::CodecError,
    },
    /// A value could not be encoded.
    #[error("could not encode the value for key {key:?}")]
    Encode {
        /// The key.
        key: String,
        /// Why it did not encode.
        #[source]
        source: xme_core::CodecError,
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
    /// An encoded call is larger than a buffer cell.
    #[error(
        "the call encodes to {len} bytes, more than the buffer's call_bytes of {max} (build the Manager with a larger call_bytes, or pass a key to the data instead of the data)"
    )]
    CallTooLarge {
        /// The call's size.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The call buffer stayed full for the whole wait.
    #[error(
        "the call buffer stayed full ({capacity} calls) for {waited:?}: is a Guard running? (build with a larger buffer_capacity, or wait longer)"
    )]
    BufferFull {
        /// Calls the buffer holds.
        capacity: usize,
        /// How long `append` waited.
        waited: std::time::Duration,
    },
    /// Every mailbox is taken by another operator.
    #[error(
        "all {mailboxes} mailboxes are taken by other operators (build the Manager with more mailboxes, or reuse operators)"
    )]
    MailboxesFull {
        /// Mailboxes the Manager has.
        mailboxes: usize,
    },
    /// A call names a function that is neither built in nor registered.
    #[error(
        "no function {name:?} in __XMEM__: neither built in nor registered (register it with Manager::register before appending)"
    )]
    UnknownFunction {
        /// The name.
        name: String,
    },
    /// A function pointer was appended from outside the builder's fork family.
    #[error(
        "function pointers only work in processes forked from the one that built the Manager; this process attached by name: register the function by name instead"
    )]
    ForeignFunction,
    /// `get` found no result within its wait (the seed's `XMEM_GET_FAIL`).
    #[error("<-XMEM GET Failure->: no result for operator {operator} within {waited:?}")]
    GetTimeout {
        /// The operator.
        operator: Operator,
        /// How long `get` waited.
        waited: std::time::Duration,
    },
    /// `get` for an operator with no call waiting for a result.
    #[error(
        "operator {operator} has no call waiting for a result (append a call first; a result can be taken once)"
    )]
    NoCallPending {
        /// The operator.
        operator: Operator,
    },
    /// The Guard died: `get` will not receive the result from it.
    #[error("the Guard (pid {pid}) died; calls not yet run stay in the buffer for a new Guard")]
    GuardDied {
        /// The dead Guard's pid.
        pid: u32,
    },
    /// Another live process is the Guard of this buffer.
    #[error("a Guard (pid {pid}) already serves this buffer")]
    GuardRunning {
        /// Its pid.
        pid: u32,
    },
    /// The call panicked in the Guard (the seed's `GUARD_FUN_FAIL`).
    #[error("<-Guard Function Executes Failure->: {call} panicked: {message}")]
    CallPanicked {
        /// What the call named.
        call: String,
        /// The panic message.
        message: String,
    },
    /// The call could not run or its result could not be returned.
    #[error("<-Guard Function Executes Failure->: {call}: {message}")]
    CallFailed {
        /// What the call named.
        call: String,
        /// What went wrong.
        message: String,
    },
    /// Invalid builder settings.
    #[error("invalid Manager settings: {0}")]
    Config(String),
}
