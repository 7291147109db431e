/// What went wrong in a Monitor, a codec, or an RPC call.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MonitorError {
    /// Another live process kept the Monitor's writer word past the wait: a
    /// writer stuck mid-write, or a word another process overwrote.
    #[error(
        "the Monitor's writer word is held by live pid {pid} after {waited:?}: a writer is stuck \
         or the region was overwritten; retry, or rebuild the Monitor"
    )]
    WriterStuck {
        /// The pid the word names.
        pid: u32,
        /// How long this writer waited.
        waited: std::time::Duration,
    },
    /// The Monitor's lock refused the operator or timed out.
    #[error(transparent)]
    Lock(#[from] xme_security::SecurityError),
    /// The shared region could not be created, opened or used.
    #[error(transparent)]
    Region(#[from] xme_core::Error),
    /// The Manager refused (for the `*_msg` methods).
    #[error(transparent)]
    Manager(#[from] xme_shm::ShmError),
    /// No such key in the message map.
    #[error("no key {0:?} in the message map")]
    NotFound(String),
    /// The updated map does not fit; the map keeps its previous content.
    #[error(
        "the message map would take {needed} bytes, more than the {capacity} bytes it has (build the Monitor with a larger capacity); nothing was changed"
    )]
    MonitorFull {
        /// Bytes the new map needs.
        needed: usize,
        /// Bytes the Monitor holds.
        capacity: usize,
    },
    /// Invalid builder settings.
    #[error("invalid Monitor settings: {0}")]
    Config(String),
    /// `marshal`/`unmarshal` with the default (sealed) codec, but no key given.
    #[error(
        "the Monitor has no key for its sealed codec: build it with .key([u8; 32]), or use marshal_with / unmarshal_with and another codec"
    )]
    NoKey,
    /// A frame larger than the codec's limit.
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    FrameTooLarge {
        /// The frame's size.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A frame too short to be whole.
    #[error("truncated frame: {len} bytes, at least {min} needed")]
    Truncated {
        /// Its size.
        len: usize,
        /// The smallest whole frame.
        min: usize,
    },
    /// Not a sealed frame at all.
    #[error("not a sealed xme frame (bad magic): foreign or garbage bytes")]
    Foreign,
    /// A sealed frame of a layout version this build does not know.
    #[error("sealed frame version {0} is not supported (this build reads version 1)")]
    UnsupportedVersion(u8),
    /// Sealed under another key.
    #[error("the frame was sealed with another key (key ids differ)")]
    WrongKey,
    /// Authentication failed with the right key: the frame was altered.
    #[error("the frame failed authentication: it was altered or corrupted")]
    Tampered,
    /// The bytes are not JSON.
    #[error("not valid JSON")]
    BadJson(#[source] serde_json::Error),
    /// JSON, but not an object.
    #[error("the message is {found}, not a JSON object")]
    NotAnObject {
        /// What it was.
        found: &'static str,
    },
    /// The system's random source failed.
    #[error("no random bytes: {0}")]
    Random(String),
    /// A socket failed.
    #[error("I/O error while {doing}")]
    Io {
        /// What was being done.
        doing: &'static str,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The RPC connection is closed (server gone, or shut down).
    #[error("the RPC connection is closed: {0}")]
    ConnectionClosed(String),
    /// No reply within the call's timeout.
    #[error("no reply to {function:?} within {waited:?}")]
    Timeout {
        /// The function called.
        function: String,
        /// How long the client waited.
        waited: std::time::Duration,
    },
    /// The server answered with an error.
    #[error("the server refused {function:?}: {kind}: {message}")]
    Remote {
        /// The function called.
        function: String,
        /// The kind of error: `unknown-function`, `bad-arguments`,
        /// `panicked`, `replayed`, `bad-request`.
        kind: String,
        /// What the server said.
        message: String,
    },
    /// Arguments or a result could not be converted to or from JSON.
    #[error("could not convert {what} to or from JSON")]
    Convert {
        /// What was converted.
        what: &'static str,
        /// Why not.
        #[source]
        source: serde_json::Error,
    },
}
