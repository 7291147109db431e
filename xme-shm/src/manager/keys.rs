//! Reserved keys, the status entries' keys, and the encoding of values:
//! what every write path checks before it stores.

use std::collections::BTreeMap;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use xme_core::{Operator, process};

use crate::ShmError;

/// Reserved key: the status table ([`StatusTable`]), one entry per operator.
/// Each entry is kept under its own key, `__STATUS__/` and the operator's 16
/// hex digits, so the table has no size limit; `get("__STATUS__")` and
/// [`Manager::statuses`](crate::Manager::statuses) gather them.
pub const STATUS_KEY: &str = "__STATUS__";
/// The prefix of the per-operator status keys.
pub(crate) const STATUS_PREFIX: &str = "__STATUS__/";
/// Reserved key: the Guard's table, initially `{"Status": true}`.
pub const GUARD_KEY: &str = "__GUARD__";
/// Reserved key: the names of the Manager's built-in operations.
pub const XMEM_KEY: &str = "__XMEM__";
/// The reserved keys, which exist from the start and cannot be deleted.
pub const RESERVED_KEYS: [&str; 3] = [STATUS_KEY, GUARD_KEY, XMEM_KEY];

/// The built-in operations of the seed's `__XMEM__` map.
/// Functions registered by name ([`Manager::register`](crate::Manager::register)) are added after them.
pub const BUILTINS: [&str; 7] = [
    "Table::update",
    "Table::set",
    "Table::delete",
    "Table::get",
    "Table::items",
    "Lock::update",
    "Status::update",
];

/// One process's last reported status.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessStatus {
    /// What it reported.
    pub status: String,
    /// Its pid.
    pub pid: u32,
    /// When, in milliseconds since the Unix epoch.
    pub time_ms: u64,
    /// Where the report stands among the Manager's reports: a later report
    /// has a larger serial (given when recorded; 0 from [`now`](Self::now)).
    /// The oldest reports, by serial, are the first pruned.
    pub serial: u64,
    /// The operator's last word (a stopped [`HeartJump`](crate::HeartJump)):
    /// a heartbeat still in the call buffer does not replace it.
    pub last_word: bool,
}

impl ProcessStatus {
    /// `status`, reported now by this process.
    ///
    /// ```
    /// use xme_shm::{ShmError, XmemBuilder};
    /// # fn main() -> Result<(), xme_shm::ShmError> {
    /// let s = xme_shm::ProcessStatus::now("ready");
    /// assert_eq!((s.status.as_str(), s.pid), ("ready", std::process::id()));
    /// # Ok(())
    /// # }
    /// ```
    pub fn now(status: &str) -> ProcessStatus {
        ProcessStatus {
            status: status.to_string(),
            pid: process::current_pid(),
            time_ms: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
            serial: 0,
            last_word: false,
        }
    }
}

pub(crate) fn status_key(op: Operator) -> String {
    format!("{STATUS_PREFIX}{op}")
}

pub(crate) fn is_status_key(key: &[u8]) -> bool {
    key.starts_with(STATUS_PREFIX.as_bytes())
}

/// The `__STATUS__` table: each operator's last status.
pub type StatusTable = BTreeMap<Operator, ProcessStatus>;
/// The `__GUARD__` table.
pub type GuardTable = BTreeMap<String, bool>;

pub(crate) fn encode<T: Serialize + ?Sized>(key: &str, value: &T) -> Result<Vec<u8>, ShmError> {
    postcard::to_stdvec(value).map_err(|e| ShmError::Encode {
        key: key.to_string(),
        source: xme_core::CodecError::encoding(e, value),
    })
}

pub(crate) fn decode<T: DeserializeOwned>(key: &str, bytes: &[u8]) -> Result<T, ShmError> {
    xme_core::result_frame::decode(bytes, std::any::type_name::<T>()).map_err(|e| match e {
        xme_core::Error::Decode { source, .. } => ShmError::WrongType {
            key: key.to_string(),
            type_name: std::any::type_name::<T>(),
            source,
        },
        other => ShmError::Region(other),
    })
}

/// The status entries past which a prune starts.
pub(crate) fn status_limit(keep: usize) -> usize {
    keep + (keep / 4).max(16)
}

/// The error of a multi-key call that stopped at `keys[at]`.
pub(crate) fn partly_done<'k>(
    keys: impl Iterator<Item = &'k (impl AsRef<str> + 'k)>,
    at: usize,
    source: ShmError,
) -> ShmError {
    let keys: Vec<String> = keys.map(|k| k.as_ref().to_string()).collect();
    if at == 0 {
        return source;
    }
    ShmError::PartlyDone {
        total: keys.len(),
        failed: keys[at].clone(),
        done: keys[..at].to_vec(),
        source: Box::new(source),
    }
}

/// Refuses a read-modify-write of the status table, which only
/// [`Manager::status`] writes (before the missing key is noticed).
pub(crate) fn refuse_reserved_key(key: &str) -> Result<(), ShmError> {
    if key == STATUS_KEY || is_status_key(key.as_bytes()) {
        return Err(ShmError::Reserved {
            key: key.to_string(),
            what: "only Manager::status writes it",
        });
    }
    Ok(())
}

/// Whether a caller may write `bytes` under `key`. `__STATUS__` and
/// `__XMEM__` belong to the Manager (written only through
/// [`Manager::status`] and [`Manager::register`]); `__GUARD__` accepts a
/// [`GuardTable`] from anyone, since writing it is the seed's way of stopping
/// the Guard; every other key is the caller's.
pub(crate) fn check_reserved_value(key: &str, bytes: &[u8]) -> Result<(), ShmError> {
    match key {
        _ if is_status_key(key.as_bytes()) => Err(ShmError::Reserved {
            key: key.to_string(),
            what: "only Manager::status writes status entries",
        }),
        STATUS_KEY => Err(ShmError::Reserved {
            key: key.to_string(),
            what: "only Manager::status writes it",
        }),
        XMEM_KEY => Err(ShmError::Reserved {
            key: key.to_string(),
            what: "only Manager::register writes it",
        }),
        GUARD_KEY if decode::<GuardTable>(key, bytes).is_err() => Err(ShmError::Reserved {
            key: key.to_string(),
            what: "the value is not of this reserved table's type",
        }),
        _ => Ok(()),
    }
}
