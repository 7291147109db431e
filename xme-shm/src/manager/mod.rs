use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use xme_core::{Mapped, Operator, SharedRegion, process};
use xme_security::{LockType, Security, SecurityState};

use crate::buffer::call_buffer::{BufferConfig, CallBuffer};
use crate::store::arena::ArenaStats;
mod registry;
mod status;

use crate::store::layout::Layout;
use crate::store::table::{Stored, ValueTable};
use crate::{RawValue, ShmError};
pub(crate) use registry::{FamilyKey, Registry, Trampoline};

/// Reserved key: the status table ([`StatusTable`]), one entry per operator.
/// Each entry is kept under its own key, `__STATUS__/` and the operator's 16
/// hex digits, so the table has no size limit; `get("__STATUS__")` and
/// [`Manager::statuses`] gather them.
pub const STATUS_KEY: &str = "__STATUS__";
/// The prefix of the per-operator status keys.
const STATUS_PREFIX: &str = "__STATUS__/";
/// Reserved key: the Guard's table, initially `{"Status": true}`.
pub const GUARD_KEY: &str = "__GUARD__";
/// Reserved key: the names of the Manager's built-in operations.
pub const XMEM_KEY: &str = "__XMEM__";
/// The reserved keys, which exist from the start and cannot be deleted.
pub const RESERVED_KEYS: [&str; 3] = [STATUS_KEY, GUARD_KEY, XMEM_KEY];

/// The built-in operations of the seed's `__XMEM__` map.
/// Functions registered by name ([`Manager::register`]) are added after them.
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
            last_word: false,
        }
    }
}

fn status_key(op: Operator) -> String {
    format!("{STATUS_PREFIX}{op}")
}

fn is_status_key(key: &[u8]) -> bool {
    key.starts_with(STATUS_PREFIX.as_bytes())
}

/// The `__STATUS__` table: each operator's last status.
pub type StatusTable = BTreeMap<Operator, ProcessStatus>;
/// The `__GUARD__` table.
pub type GuardTable = BTreeMap<String, bool>;

/// Region layout version of a Manager (header + lock + table).
const REGION_VERSION: u32 = 0x4d47_0004;
/// The Manager's header, at the start of its region.
#[repr(C)]
struct ManagerHeader {
    /// Characters of an operator's name (`XmemBuilder::op_size`).
    op_size: AtomicU64,
    /// Where the value table starts (0 until the Manager is built).
    table_offset: AtomicU64,
    /// Where the call buffer starts.
    buffer_offset: AtomicU64,
    /// Status entries in the table (counted by inserts and prunes).
    status_count: AtomicU64,
    /// Status entries kept before the oldest are pruned.
    status_keep: AtomicU64,
    /// Pid-named word held by the process pruning status entries.
    prune_lock: AtomicU64,
    /// Room for later fields without moving the lock.
    _reserved: [AtomicU64; 26],
}
// SAFETY: `#[repr(C)]` of `AtomicU64`s: no padding, no pointers, valid for
// every bit pattern; offsets are bounds-checked by `slice`/`place` where they
// are used, and sizes are clamped.
unsafe impl xme_core::InRegion for ManagerHeader {}
const LOCK_OFFSET: usize = std::mem::size_of::<ManagerHeader>();
const _: () = assert!(
    LOCK_OFFSET == 256,
    "the Manager header moved: bump REGION_VERSION"
);

/// Builds a [`Manager`] (the seed's `XMEMBuilder`).
///
/// ```
/// use xme_shm::XmemBuilder;
///
/// # fn main() -> Result<(), xme_shm::ShmError> {
/// let xmem = XmemBuilder::new()
///     .op_size(32)
///     .value("key", &"the initial key-value pairs")?
///     .build()?;
/// assert_eq!(xmem.get::<String>("key")?, "the initial key-value pairs");
/// assert!(xmem.guard_status()?); // __GUARD__ = {"Status": true}
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct XmemBuilder {
    op_size: usize,
    capacity: usize,
    arena_bytes: usize,
    lock_type: LockType,
    name: Option<String>,
    initial: Vec<(String, Vec<u8>)>,
    buffer: BufferConfig,
    status_keep: usize,
}

impl Default for XmemBuilder {
    fn default() -> Self {
        XmemBuilder::new()
    }
}

impl XmemBuilder {
    /// Defaults: operator names of 32 characters, 4096 keys, a 16 MiB arena,
    /// a READWRITE lock (writer `ADMIN`), anonymous memory.
    ///
    /// ```
    /// use xme_shm::{ShmError, XmemBuilder};
    /// # fn main() -> Result<(), xme_shm::ShmError> {
    /// let xmem = XmemBuilder::new().build()?;
    /// assert_eq!(xmem.arena_bytes(), 16 << 20);
    /// # Ok(())
    /// # }
    /// ```
    pub fn new() -> XmemBuilder {
        XmemBuilder {
            op_size: 32,
            capacity: 4096,
            arena_bytes: 16 << 20,
            lock_type: LockType::ReadWrite,
            name: None,
            initial: Vec::new(),
            buffer: BufferConfig::default(),
            status_keep: 1024,
        }
    }

    /// Characters of an operator's name in [`Manager::operator_name`] (the
    /// seed's `size`; operators themselves are 64 random bits, 16 hex digits).
    ///
    /// ```
    /// use xme_shm::{ShmError, XmemBuilder};
    /// # fn main() -> Result<(), xme_shm::ShmError> {
    /// let xmem = XmemBuilder::new().op_size(4).build()?;
    /// assert_eq!(xmem.operator_name(xmem.alloc_operator()).len(), "<Operator::>".len() + 4);
    /// # Ok(())
    /// # }
    /// ```
    pub fn op_size(mut self, size: usize) -> XmemBuilder {
        self.op_size = size;
        self
    }

    /// Live keys the value table can hold (default 4096; reserved keys and
    /// status entries have room of their own). A deleted key's slot is
    /// reused; past the capacity, [`ShmError::CapacityFull`].
    ///
    /// ```
    /// use xme_shm::{ShmError, XmemBuilder};
    /// # fn main() -> Result<(), xme_shm::ShmError> {
    /// let xmem = XmemBuilder::new().capacity(2).build()?;
    /// let mut stored = 0;
    /// let err = loop {
    ///     match xmem.set(&format!("k{stored}"), &1) {
    ///         Ok(()) => stored += 1,
    ///         Err(e) => break e,
    ///     }
    /// };
    /// assert!(stored >= 2); // at least the capacity (status entries' room may add more)
    /// assert!(matches!(err, ShmError::CapacityFull { .. }));
    /// # Ok(())
    /// # }
    /// ```
    pub fn capacity(mut self, keys: usize) -> XmemBuilder {
        self.capacity = keys;
        self
    }

    /// Status entries kept in `__STATUS__` (default 1024): past `keep` plus a
    /// quarter, the oldest entries are pruned, those of ended processes first.
    /// Keep it above the number of operators that report at once.
    ///
    /// ```
    /// use xme_shm::{ShmError, XmemBuilder};
    /// # fn main() -> Result<(), xme_shm::ShmError> {
    /// let xmem = XmemBuilder::new().status_keep(16).build()?;
    /// for _ in 0..100 {
    ///     xmem.status(xmem.alloc_operator(), "done")?;
    /// }
    /// assert!(xmem.statuses()?.len() <= 16 + 16); // pruned past keep plus a quarter (at least 16)
    /// # Ok(())
    /// # }
    /// ```
    pub fn status_keep(mut self, keep: usize) -> XmemBuilder {
        self.status_keep = keep;
        self
    }

    /// Bytes of the arena holding keys and values (default 16 MiB), rounded up
    /// to 64 KiB pages (at least 4). An entry (32-byte header, key, value) up
    /// to 32 KiB takes a block of a size class; a larger one takes a run of
    /// whole pages, so one value can use almost the whole arena. Deleting or
    /// replacing a value frees its space at once; a page whose blocks are all
    /// free returns to the pool. Memory is committed only as it is used, so a
    /// generous arena costs little. Past it, [`ShmError::ArenaFull`].
    ///
    /// ```
    /// use xme_shm::{ShmError, XmemBuilder};
    /// # fn main() -> Result<(), xme_shm::ShmError> {
    /// let xmem = XmemBuilder::new().arena_bytes(1 << 20).build()?;
    /// let err = xmem.set("big", &vec![0u8; 2 << 20]).unwrap_err();
    /// assert!(matches!(err, ShmError::ValueTooLarge { .. }));
    /// # Ok(())
    /// # }
    /// ```
    pub fn arena_bytes(mut self, bytes: usize) -> XmemBuilder {
        self.arena_bytes = bytes;
        self
    }

    /// The type of the Manager's lock, taken by `update` and `delete`.
    ///
    /// ```
    /// use xme_shm::{ShmError, XmemBuilder};
    /// # fn main() -> Result<(), xme_shm::ShmError> {
    /// use xme_shm::LockType;
    /// let xmem = XmemBuilder::new().lock_type(LockType::Mutex).build()?;
    /// xmem.update([("k", 1)], xmem.alloc_operator())?; // MUTEX: any operator may write
    /// # Ok(())
    /// # }
    /// ```
    pub fn lock_type(mut self, lock_type: LockType) -> XmemBuilder {
        self.lock_type = lock_type;
        self
    }

    /// Puts the Manager in the named region `name`, which other processes
    /// attach with [`Manager::attach`].
    ///
    /// ```
    /// use xme_shm::{ShmError, XmemBuilder};
    /// # fn main() -> Result<(), xme_shm::ShmError> {
    /// let name = format!("xme-doc-named-{}", std::process::id());
    /// let xmem = XmemBuilder::new().named(&name).build()?;
    /// assert_eq!(xmem.region().name(), Some(name.as_str())); // removed when xmem drops
    /// # Ok(())
    /// # }
    /// ```
    pub fn named(mut self, name: impl Into<String>) -> XmemBuilder {
        self.name = Some(name.into());
        self
    }

    /// Calls the call buffer holds (default 1024): `append` waits while it is full.
    ///
    /// ```
    /// use xme_shm::{ShmError, XmemBuilder};
    /// # fn main() -> Result<(), xme_shm::ShmError> {
    /// let xmem = XmemBuilder::new().buffer_capacity(16).build()?;
    /// # let _ = xmem;
    /// # Ok(())
    /// # }
    /// ```
    pub fn buffer_capacity(mut self, calls: usize) -> XmemBuilder {
        self.buffer.capacity = calls;
        self
    }

    /// Largest encoded call (arguments included) in bytes (default 256).
    ///
    /// ```
    /// use xme_shm::{ShmError, XmemBuilder};
    /// # fn main() -> Result<(), xme_shm::ShmError> {
    /// use xme_shm::Call;
    /// let xmem = XmemBuilder::new().call_bytes(64).build()?;
    /// let big = Call::table_set("k", &vec![0u8; 200])?;
    /// assert!(matches!(xmem.append(&big, xmem.alloc_operator()), Err(ShmError::CallTooLarge { .. })));
    /// # Ok(())
    /// # }
    /// ```
    pub fn call_bytes(mut self, bytes: usize) -> XmemBuilder {
        self.buffer.call_bytes = bytes;
        self
    }

    /// Operators that can have a mailbox for call results (default 256).
    ///
    /// ```
    /// use xme_shm::{ShmError, XmemBuilder};
    /// # fn main() -> Result<(), xme_shm::ShmError> {
    /// let xmem = XmemBuilder::new().mailboxes(1024).build()?;
    /// # let _ = xmem;
    /// # Ok(())
    /// # }
    /// ```
    pub fn mailboxes(mut self, operators: usize) -> XmemBuilder {
        self.buffer.mailboxes = operators;
        self
    }

    /// Largest encoded call result in bytes (default 4096).
    ///
    /// ```
    /// use xme_shm::{ShmError, XmemBuilder};
    /// # fn main() -> Result<(), xme_shm::ShmError> {
    /// let xmem = XmemBuilder::new().reply_bytes(64 << 10).build()?; // results up to 64 KiB
    /// # let _ = xmem;
    /// # Ok(())
    /// # }
    /// ```
    pub fn reply_bytes(mut self, bytes: usize) -> XmemBuilder {
        self.buffer.reply_bytes = bytes;
        self
    }

    /// An initial key-value pair (the seed's `**initialtable`).
    ///
    /// # Errors
    /// As [`Manager::set`] (checked at once for the key, when building for room).
    ///
    /// ```
    /// use xme_shm::{ShmError, XmemBuilder};
    /// # fn main() -> Result<(), xme_shm::ShmError> {
    /// let xmem = XmemBuilder::new().value("a", &1u8)?.value("b", "two")?.build()?;
    /// assert_eq!(xmem.get::<String>("b")?, "two");
    /// # Ok(())
    /// # }
    /// ```
    pub fn value<T: Serialize + ?Sized>(
        mut self,
        key: &str,
        value: &T,
    ) -> Result<XmemBuilder, ShmError> {
        let bytes = encode(key, value)?;
        self.initial.push((key.to_string(), bytes));
        Ok(self)
    }

    /// Builds the Manager.
    ///
    /// # Errors
    /// [`ShmError::Config`] for sizes out of range; [`ShmError::Region`] if the
    /// region cannot be made (a named one a live process already has).
    ///
    /// ```
    /// use xme_shm::{ShmError, XmemBuilder};
    /// # fn main() -> Result<(), xme_shm::ShmError> {
    /// assert!(matches!(XmemBuilder::new().capacity(0).build(), Err(ShmError::Config(_))));
    /// let _xmem = XmemBuilder::new().build()?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn build(self) -> Result<Manager, ShmError> {
        if self.op_size == 0 || self.op_size > 64 {
            return Err(ShmError::Config(format!(
                "op_size {} is outside 1..=64",
                self.op_size
            )));
        }
        if self.capacity == 0 {
            return Err(ShmError::Config("capacity must be at least 1 key".into()));
        }
        if !(1..=1 << 20).contains(&self.status_keep) {
            return Err(ShmError::Config(format!(
                "status_keep {} is outside 1..=2^20",
                self.status_keep
            )));
        }
        let arena_bytes = self.arena_bytes.max(4 * crate::store::layout::PAGE_BYTES);
        let status_room = status_limit(self.status_keep) + self.status_keep / 4 + 16;
        let keys = self
            .capacity
            .checked_add(RESERVED_KEYS.len() + status_room)
            .ok_or_else(|| ShmError::Config(format!("capacity {} is too large", self.capacity)))?;
        let layout = Layout::new(keys, arena_bytes)?;
        let buffer_offset = (LOCK_OFFSET + SecurityState::SIZE).next_multiple_of(64);
        let table_offset = (buffer_offset + self.buffer.bytes()).next_multiple_of(64);
        let bytes = table_offset + layout.bytes();
        let region = Arc::new(match &self.name {
            Some(name) => SharedRegion::create_named(name, bytes, REGION_VERSION)?,
            None => SharedRegion::anonymous_versioned(bytes, REGION_VERSION)?,
        });
        let header: &ManagerHeader = region.place(0)?;
        header
            .op_size
            .store(self.op_size as u64, std::sync::atomic::Ordering::Relaxed);
        header.status_keep.store(
            self.status_keep as u64,
            std::sync::atomic::Ordering::Relaxed,
        );
        // The fork family's key: children forked from here inherit it in their
        // handle; a process attaching by name does not (it is never written
        // to the region).
        let family = Some(FamilyKey::random());
        let buffer = CallBuffer::init(&region, buffer_offset, self.buffer)?;
        header
            .buffer_offset
            .store(buffer_offset as u64, std::sync::atomic::Ordering::Relaxed);
        // Release: an attacher that sees the table offset sees the rest.
        header
            .table_offset
            .store(table_offset as u64, std::sync::atomic::Ordering::Release);
        let security = Security::in_shared_region(region.clone(), LOCK_OFFSET, self.lock_type)?;
        let table_mem = region.slice_owned(table_offset, layout.words())?;
        ValueTable::init(&table_mem, layout)?;
        let manager = Manager {
            table_mem,
            layout,
            security,
            buffer,
            family,
            registry: Arc::default(),
            op_size: self.op_size,
            region,
        };
        let pid = process::current_pid();
        let guard: GuardTable = [("Status".to_string(), true)].into();
        manager
            .table()
            .set(GUARD_KEY, &encode(GUARD_KEY, &guard)?, pid)?;
        let builtins: Vec<String> = BUILTINS.iter().map(|s| s.to_string()).collect();
        manager
            .table()
            .set(XMEM_KEY, &encode(XMEM_KEY, &builtins)?, pid)?;
        for (key, bytes) in &self.initial {
            check_reserved_value(key, bytes)?;
            manager.table().set(key, bytes, pid)?;
        }
        Ok(manager)
    }
}

/// The seed's XMEManager: a lock-free value table in shared memory, with its
/// status table and lock, shared by every child forked after it was built and,
/// when named, by unrelated processes that [`attach`](Manager::attach) to it.
///
/// Reads never block. `set` and `update_with` are lock-free; `update` and
/// `delete` take the Manager's lock as the given operator, as in the seed.
///
/// ```
/// use xme_shm::XmemBuilder;
/// use xme_core::{Operator, process};
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let xmem = XmemBuilder::new().value("hits", &0u64)?.build()?;
/// let children: Vec<_> = (0..4)
///     .map(|_| process::fork_child(|| {
///         for _ in 0..100 {
///             xmem.update_with("hits", |n: Option<u64>| n.unwrap_or(0) + 1).unwrap();
///         }
///         0
///     }))
///     .collect::<Result<_, _>>()?;
/// for c in children {
///     c.wait()?;
/// }
/// assert_eq!(xmem.get::<u64>("hits")?, 400);
/// xmem.update([("greeting", "hello")], Operator::ADMIN)?; // under the lock
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct Manager {
    /// The value table's words and its layout (checked once, at build or
    /// attach): [`Manager::table`] views them.
    table_mem: Mapped<[AtomicU64]>,
    layout: Layout,
    security: Security<'static>,
    pub(crate) buffer: CallBuffer,
    /// The builder's fork-family key; `None` in a process that attached by name.
    pub(crate) family: Option<FamilyKey>,
    pub(crate) registry: Arc<Registry>,
    op_size: usize,
    region: Arc<SharedRegion>,
}

impl std::fmt::Debug for Manager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Manager")
            .field("region", &self.region)
            .field("capacity", &self.table().layout().capacity)
            .field("lock", &self.security)
            .finish()
    }
}

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
fn status_limit(keep: usize) -> usize {
    keep + (keep / 4).max(16)
}

/// The error of a multi-key call that stopped at `keys[at]`.
fn partly_done<'k>(
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
fn refuse_reserved_key(key: &str) -> Result<(), ShmError> {
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

impl Manager {
    /// Attaches to the Manager built in the named region `name` by another process.
    ///
    /// # Errors
    /// [`ShmError::Region`] if no Manager of that name exists, its creator died
    /// (a stale region) or the region has another layout version;
    /// [`ShmError::BadLayout`] if its header is corrupt.
    ///
    /// ```
    /// use xme_shm::{Operator, ShmError, XmemBuilder};
    /// # fn main() -> Result<(), xme_shm::ShmError> {
    /// let name = format!("xme-doc-manager-{}", std::process::id());
    /// let xmem = XmemBuilder::new().named(&name).value("answer", &42u32)?.build()?;
    /// let other = xme_shm::Manager::attach(&name)?; // as an unrelated program would
    /// assert_eq!(other.get::<u32>("answer")?, 42);
    /// assert!(xme_shm::Manager::attach("xme-doc-no-such-manager").is_err());
    /// # drop(xmem);
    /// # Ok(())
    /// # }
    /// ```
    pub fn attach(name: &str) -> Result<Manager, ShmError> {
        let region = Arc::new(SharedRegion::open_named(name, REGION_VERSION)?);
        let header: &ManagerHeader = region.place(0)?;
        let op_size = header.op_size.load(std::sync::atomic::Ordering::Relaxed) as usize;
        let table_offset = header
            .table_offset
            .load(std::sync::atomic::Ordering::Acquire) as usize;
        let words = region.payload_len().saturating_sub(table_offset) / 8;
        if table_offset == 0 || words == 0 {
            return Err(ShmError::BadLayout(
                "the Manager header is not initialised".into(),
            ));
        }
        let buffer_offset = header
            .buffer_offset
            .load(std::sync::atomic::Ordering::Relaxed) as usize;
        let security =
            Security::in_shared_region(region.clone(), LOCK_OFFSET, LockType::ReadWrite)?;
        let table_mem = region.slice_owned(table_offset, words)?;
        let layout = ValueTable::attach(&table_mem)?.layout();
        let buffer = CallBuffer::attach(&region, buffer_offset)?;
        Ok(Manager {
            table_mem,
            layout,
            security,
            buffer,
            family: None,
            registry: Arc::default(),
            op_size,
            region,
        })
    }

    /// The value table, viewed over this handle's mapping.
    pub(crate) fn table(&self) -> ValueTable<'_> {
        ValueTable::with_layout(&self.table_mem, self.layout)
    }

    /// A fresh operator (the seed's `AllocOperator`).
    ///
    /// ```
    /// use xme_shm::{Operator, ShmError, XmemBuilder};
    /// # fn main() -> Result<(), xme_shm::ShmError> {
    /// let xmem = XmemBuilder::new().build()?;
    /// assert_ne!(xmem.alloc_operator(), xmem.alloc_operator());
    /// # Ok(())
    /// # }
    /// ```
    pub fn alloc_operator(&self) -> Operator {
        Operator::alloc()
    }

    /// An operator's name, `<Operator::…>` with `op_size` characters of its id
    /// (the id has 16 hex digits; a larger `op_size` repeats it).
    ///
    /// ```
    /// use xme_shm::{Operator, ShmError, XmemBuilder};
    /// # fn main() -> Result<(), xme_shm::ShmError> {
    /// let xmem = XmemBuilder::new().op_size(8).build()?;
    /// let name = xmem.operator_name(xmem.alloc_operator());
    /// assert!(name.starts_with("<Operator::") && name.len() == "<Operator::>".len() + 8);
    /// # Ok(())
    /// # }
    /// ```
    pub fn operator_name(&self, op: Operator) -> String {
        let hex = op.to_string();
        let name: String = hex.chars().cycle().take(self.op_size).collect();
        format!("<Operator::{name}>")
    }

    /// The Manager's lock (the seed's Security object): set its type, writer,
    /// wait time.
    ///
    /// ```
    /// use xme_shm::{Operator, ShmError, XmemBuilder};
    /// # fn main() -> Result<(), xme_shm::ShmError> {
    /// let xmem = XmemBuilder::new().build()?; // READWRITE, writer ADMIN
    /// let writer = xmem.alloc_operator();
    /// xmem.security().register(writer);
    /// xmem.update([("k", 1)], writer)?;
    /// assert!(matches!(xmem.update([("k", 2)], Operator::ADMIN), Err(ShmError::Lock(_))));
    /// # Ok(())
    /// # }
    /// ```
    pub fn security(&self) -> &Security<'static> {
        &self.security
    }

    /// The region holding the Manager.
    ///
    /// ```
    /// use xme_shm::{Operator, ShmError, XmemBuilder};
    /// # fn main() -> Result<(), xme_shm::ShmError> {
    /// let xmem = XmemBuilder::new().build()?;
    /// assert_eq!(xmem.region().name(), None); // anonymous: shared with forked children
    /// # Ok(())
    /// # }
    /// ```
    pub fn region(&self) -> &Arc<SharedRegion> {
        &self.region
    }

    /// Stores `value` under `key` (the seed's `set`): lock-free, replaces any value.
    ///
    /// # Errors
    /// [`ShmError::Reserved`] for a reserved key, [`ShmError::KeyTooLong`],
    /// [`ShmError::Encode`], [`ShmError::CapacityFull`] for a new key past the
    /// capacity, [`ShmError::ArenaFull`] / [`ShmError::ValueTooLarge`].
    ///
    /// ```
    /// use xme_shm::{Operator, ShmError, XmemBuilder};
    /// # fn main() -> Result<(), xme_shm::ShmError> {
    /// let xmem = XmemBuilder::new().build()?;
    /// xmem.set("point", &(1.5f64, -2.0f64))?;
    /// assert_eq!(xmem.get::<(f64, f64)>("point")?, (1.5, -2.0));
    /// assert!(matches!(xmem.set("__XMEM__", &0), Err(ShmError::Reserved { .. })));
    /// # Ok(())
    /// # }
    /// ```
    pub fn set<T: Serialize + ?Sized>(&self, key: &str, value: &T) -> Result<(), ShmError> {
        let bytes = encode(key, value)?;
        check_reserved_value(key, &bytes)?;
        self.table()
            .set(key, &bytes, process::current_pid())
            .map(drop)
    }

    /// Stores bytes already encoded (from [`RawValue::encode`] or
    /// [`get_raw`](Self::get_raw)) under `key`, without encoding them again:
    /// the fast way to move large values.
    ///
    /// ```
    /// use xme_shm::{RawValue, XmemBuilder};
    ///
    /// # fn main() -> Result<(), xme_shm::ShmError> {
    /// let xmem = XmemBuilder::new().arena_bytes(8 << 20).build()?;
    /// let big = RawValue::encode(&vec![7u8; 4 << 20])?; // 4 MiB: an extent of pages
    /// xmem.set_raw("big", &big)?;
    /// assert_eq!(xmem.get_raw("big")?.as_ref(), Some(&big));
    /// assert_eq!(xmem.get::<Vec<u8>>("big")?.len(), 4 << 20);
    /// # Ok(())
    /// # }
    /// ```
    pub fn set_raw(&self, key: &str, value: &RawValue) -> Result<(), ShmError> {
        check_reserved_value(key, value.bytes())?;
        self.table()
            .set(key, value.bytes(), process::current_pid())
            .map(drop)
    }

    /// The value of `key` as a `T`.
    ///
    /// Values are postcard bytes, which do not record their type: bytes that
    /// are not a valid `T` give [`ShmError::WrongType`], but a value of another
    /// type whose bytes happen to be a valid `T` decodes (a `0i32` reads as an
    /// empty `String`). Keep one type per key.
    ///
    /// # Errors
    /// [`ShmError::NotFound`], or [`ShmError::WrongType`] when the bytes are
    /// not a `T`.
    ///
    /// ```
    /// use xme_shm::{Operator, ShmError, XmemBuilder};
    /// # fn main() -> Result<(), xme_shm::ShmError> {
    /// let xmem = XmemBuilder::new().value("name", "xme")?.build()?;
    /// assert_eq!(xmem.get::<String>("name")?, "xme");
    /// assert!(matches!(xmem.get::<String>("nobody"), Err(ShmError::NotFound(_))));
    /// # Ok(())
    /// # }
    /// ```
    pub fn get<T: DeserializeOwned>(&self, key: &str) -> Result<T, ShmError> {
        let raw = self
            .get_raw(key)?
            .ok_or_else(|| ShmError::NotFound(key.to_string()))?;
        decode(key, raw.bytes())
    }

    /// The encoded value of `key`, if present.
    ///
    /// # Errors
    /// [`ShmError::BadLayout`] if the table is corrupt.
    ///
    /// ```
    /// use xme_shm::{Operator, ShmError, XmemBuilder};
    /// # fn main() -> Result<(), xme_shm::ShmError> {
    /// let xmem = XmemBuilder::new().value("n", &7u8)?.build()?;
    /// assert_eq!(xmem.get_raw("n")?.unwrap().decode::<u8>()?, 7);
    /// assert_eq!(xmem.get_raw("missing")?, None);
    /// # Ok(())
    /// # }
    /// ```
    pub fn get_raw(&self, key: &str) -> Result<Option<RawValue>, ShmError> {
        if key == STATUS_KEY {
            return Ok(Some(RawValue::new(encode(key, &self.statuses()?)?)));
        }
        let mut out = Vec::new();
        Ok(self
            .table()
            .get_into(key, &mut out)?
            .then(|| RawValue::new(out)))
    }

    /// A copy of the entries for `keys` (the seed's `get_table(*keys)`); with no
    /// key, the whole table. A missing key is [`ShmError::NotFound`].
    ///
    /// # Errors
    /// [`ShmError::NotFound`] for a missing key.
    ///
    /// ```
    /// use xme_shm::{Operator, ShmError, XmemBuilder};
    /// # fn main() -> Result<(), xme_shm::ShmError> {
    /// let xmem = XmemBuilder::new().value("a", &1)?.value("b", &2)?.build()?;
    /// let t = xmem.get_table(&["a", "b"])?;
    /// assert_eq!(t["b"].decode::<i32>()?, 2);
    /// assert!(xmem.get_table(&[])?.contains_key("__XMEM__")); // the whole table
    /// # Ok(())
    /// # }
    /// ```
    pub fn get_table(&self, keys: &[&str]) -> Result<BTreeMap<String, RawValue>, ShmError> {
        if keys.is_empty() {
            return Ok(self.items()?.into_iter().collect());
        }
        keys.iter()
            .map(|&k| {
                let v = self
                    .get_raw(k)?
                    .ok_or_else(|| ShmError::NotFound(k.to_string()))?;
                Ok((k.to_string(), v))
            })
            .collect()
    }

    /// Every entry (the seed's `items`), `__STATUS__` gathered into one.
    ///
    /// # Errors
    /// [`ShmError::BadLayout`] if the table is corrupt.
    ///
    /// ```
    /// use xme_shm::{Operator, ShmError, XmemBuilder};
    /// # fn main() -> Result<(), xme_shm::ShmError> {
    /// let xmem = XmemBuilder::new().value("a", &1)?.build()?;
    /// let keys: Vec<String> = xmem.items()?.into_iter().map(|(k, _)| k).collect();
    /// assert!(keys.contains(&"a".to_string()) && keys.contains(&"__STATUS__".to_string()));
    /// # Ok(())
    /// # }
    /// ```
    pub fn items(&self) -> Result<Vec<(String, RawValue)>, ShmError> {
        let mut items: Vec<(String, RawValue)> = self
            .table()
            .entries_where(|k| !is_status_key(k))?
            .into_iter()
            .map(|(k, v)| (k, RawValue::new(v)))
            .collect();
        let statuses = encode(STATUS_KEY, &self.statuses()?)?;
        items.push((STATUS_KEY.to_string(), RawValue::new(statuses)));
        Ok(items)
    }

    /// Number of keys, reserved keys included (`__STATUS__` counts as one).
    ///
    /// # Errors
    /// As [`items`](Self::items).
    ///
    /// ```
    /// use xme_shm::{Operator, ShmError, XmemBuilder};
    /// # fn main() -> Result<(), xme_shm::ShmError> {
    /// let xmem = XmemBuilder::new().build()?;
    /// let reserved = xmem.len()?; // __STATUS__, __GUARD__, __XMEM__
    /// xmem.set("k", &1)?;
    /// assert_eq!(xmem.len()?, reserved + 1);
    /// # Ok(())
    /// # }
    /// ```
    pub fn len(&self) -> Result<usize, ShmError> {
        Ok(self.table().keys_where(|k| !is_status_key(k))?.len() + 1)
    }

    /// True when only the reserved keys exist.
    ///
    /// # Errors
    /// As [`items`](Self::items).
    ///
    /// ```
    /// use xme_shm::{Operator, ShmError, XmemBuilder};
    /// # fn main() -> Result<(), xme_shm::ShmError> {
    /// let xmem = XmemBuilder::new().build()?;
    /// assert!(xmem.is_empty()?);
    /// xmem.set("k", &1)?;
    /// assert!(!xmem.is_empty()?);
    /// # Ok(())
    /// # }
    /// ```
    pub fn is_empty(&self) -> Result<bool, ShmError> {
        Ok(self.len()? <= RESERVED_KEYS.len())
    }

    /// Stores every entry while holding the Manager's lock as `op` (the seed's
    /// `update(newtable, Operator)`). All values are encoded and checked before
    /// the first is stored. Each key changes atomically; readers may see some
    /// keys of the batch updated before others.
    ///
    /// # Errors
    /// The lock's refusal ([`ShmError::Lock`]); as [`set`](Self::set) for each
    /// entry, checked before any is stored; [`ShmError::PartlyDone`] if storing
    /// failed part-way (the entries before it stay).
    ///
    /// ```
    /// use xme_shm::{Operator, ShmError, XmemBuilder};
    /// # fn main() -> Result<(), xme_shm::ShmError> {
    /// let xmem = XmemBuilder::new().build()?;
    /// xmem.update([("a", 1), ("b", 2)], Operator::ADMIN)?;
    /// assert_eq!(xmem.get::<i32>("b")?, 2);
    /// # Ok(())
    /// # }
    /// ```
    pub fn update<K, V, I>(&self, entries: I, op: Operator) -> Result<(), ShmError>
    where
        I: IntoIterator<Item = (K, V)>,
        K: AsRef<str>,
        V: Serialize,
    {
        let encoded = entries
            .into_iter()
            .map(|(k, v)| {
                let key = k.as_ref().to_string();
                let bytes = encode(&key, &v)?;
                check_reserved_value(&key, &bytes)?;
                Ok((key, bytes))
            })
            .collect::<Result<Vec<_>, ShmError>>()?;
        self.update_encoded(&encoded, op)
    }

    /// `update` with values already encoded and checked.
    pub(crate) fn update_encoded(
        &self,
        encoded: &[(String, Vec<u8>)],
        op: Operator,
    ) -> Result<(), ShmError> {
        let _guard = self.security.lock(op)?;
        let pid = process::current_pid();
        for (n, (key, bytes)) in encoded.iter().enumerate() {
            if let Err(e) = self.table().set(key, bytes, pid) {
                return Err(partly_done(encoded.iter().map(|(k, _)| k), n, e));
            }
        }
        Ok(())
    }

    /// Applies `f` to the value of `key` atomically, as
    /// [`update_with`](Self::update_with) does, and returns what `f` returned;
    /// a missing key is [`ShmError::NotFound`]. `f` may run more than once if
    /// another process changes the key meanwhile.
    ///
    /// # Errors
    /// [`ShmError::NotFound`]; as [`update_with`](Self::update_with).
    ///
    /// ```
    /// use xme_shm::{Operator, ShmError, XmemBuilder};
    /// # fn main() -> Result<(), xme_shm::ShmError> {
    /// let xmem = XmemBuilder::new().value("queue", &vec![1, 2, 3])?.build()?;
    /// let first = xmem.modify("queue", |q: &mut Vec<i32>| q.remove(0))?;
    /// assert_eq!((first, xmem.get::<Vec<i32>>("queue")?), (1, vec![2, 3]));
    /// # Ok(())
    /// # }
    /// ```
    pub fn modify<T, R, F>(&self, key: &str, mut f: F) -> Result<R, ShmError>
    where
        T: Serialize + DeserializeOwned,
        F: FnMut(&mut T) -> R,
    {
        refuse_reserved_key(key)?;
        let mut out = None;
        self.table().update(key, process::current_pid(), |old| {
            let Some(old) = old else {
                return Err(ShmError::NotFound(key.to_string()));
            };
            let mut value = decode::<T>(key, old)?;
            let r = f(&mut value);
            let bytes = encode(key, &value)?;
            check_reserved_value(key, &bytes)?;
            out = Some(r);
            Ok(Some(bytes))
        })??;
        Ok(out.expect("modify stored a value"))
    }

    /// Deletes `keys` while holding the lock as `op`; with no key, every
    /// non-reserved key. Returns how many existed. Reserved keys are refused
    /// before anything is deleted.
    ///
    /// # Errors
    /// The lock's refusal; [`ShmError::Reserved`] for a reserved key (nothing
    /// deleted); [`ShmError::PartlyDone`] if it failed part-way.
    ///
    /// ```
    /// use xme_shm::{Operator, ShmError, XmemBuilder};
    /// # fn main() -> Result<(), xme_shm::ShmError> {
    /// let xmem = XmemBuilder::new().value("a", &1)?.value("b", &2)?.build()?;
    /// assert_eq!(xmem.delete(&["a", "zz"], Operator::ADMIN)?, 1);
    /// assert_eq!(xmem.delete(&[], Operator::ADMIN)?, 1); // every non-reserved key
    /// assert!(xmem.is_empty()?);
    /// # Ok(())
    /// # }
    /// ```
    pub fn delete(&self, keys: &[&str], op: Operator) -> Result<usize, ShmError> {
        if let Some(k) = keys
            .iter()
            .find(|k| RESERVED_KEYS.contains(k) || is_status_key(k.as_bytes()))
        {
            return Err(ShmError::Reserved {
                key: k.to_string(),
                what: "it cannot be deleted",
            });
        }
        let _guard = self.security.lock(op)?;
        let pid = process::current_pid();
        let all: Vec<String>;
        let keys: Vec<&str> = if keys.is_empty() {
            all = self.table().keys_where(|k| {
                !is_status_key(k) && !RESERVED_KEYS.iter().any(|r| r.as_bytes() == k)
            })?;
            all.iter().map(String::as_str).collect()
        } else {
            keys.to_vec()
        };
        let mut n = 0;
        for (i, key) in keys.iter().enumerate() {
            match self.table().delete(key, pid) {
                Ok(existed) => n += usize::from(existed),
                Err(e) => return Err(partly_done(keys.iter(), i, e)),
            }
        }
        Ok(n)
    }

    /// Changes `key` atomically: `f` gets the current value (`None` if absent)
    /// and returns the new one; if another process changed the key meanwhile,
    /// `f` runs again on the newer value. Lock-free, no lost update. Returns
    /// the value stored.
    ///
    /// # Errors
    /// As [`set`](Self::set); [`ShmError::WrongType`] if the current value is
    /// not a `T`.
    ///
    /// ```
    /// use xme_shm::{Operator, ShmError, XmemBuilder};
    /// # fn main() -> Result<(), xme_shm::ShmError> {
    /// let xmem = XmemBuilder::new().build()?;
    /// for _ in 0..3 {
    ///     xmem.update_with("hits", |n: Option<u64>| n.unwrap_or(0) + 1)?;
    /// }
    /// assert_eq!(xmem.get::<u64>("hits")?, 3);
    /// # Ok(())
    /// # }
    /// ```
    pub fn update_with<T, F>(&self, key: &str, f: F) -> Result<T, ShmError>
    where
        T: Serialize + DeserializeOwned,
        F: FnMut(Option<T>) -> T,
    {
        self.update_with_as(key, false, f)
    }

    /// [`update_with`](Self::update_with) as the owner of a reserved key
    /// (`owner`: no reserved-key check).
    pub(crate) fn update_with_as<T, F>(
        &self,
        key: &str,
        owner: bool,
        mut f: F,
    ) -> Result<T, ShmError>
    where
        T: Serialize + DeserializeOwned,
        F: FnMut(Option<T>) -> T,
    {
        if !owner {
            refuse_reserved_key(key)?;
        }
        let mut stored = None;
        let result = self.table().update(key, process::current_pid(), |old| {
            let old = old.map(|b| decode::<T>(key, b)).transpose()?;
            let new = f(old);
            let bytes = encode(key, &new)?;
            if !owner {
                check_reserved_value(key, &bytes)?;
            }
            stored = Some(new);
            Ok::<_, ShmError>(Some(bytes))
        })?;
        result?;
        Ok(stored.expect("update stored a value"))
    }

    /// Keys the table can hold: the builder's capacity, plus room for the
    /// reserved keys and the status entries.
    ///
    /// ```
    /// use xme_shm::{Operator, ShmError, XmemBuilder};
    /// # fn main() -> Result<(), xme_shm::ShmError> {
    /// let xmem = XmemBuilder::new().capacity(100).build()?;
    /// assert!(xmem.capacity() >= 100);
    /// # Ok(())
    /// # }
    /// ```
    pub fn capacity(&self) -> usize {
        self.table().layout().capacity
    }

    /// Slots taken by live keys and by tombstones of deleted keys (a
    /// tombstone is emptied again once no probe chain runs through it).
    ///
    /// ```
    /// use xme_shm::{Operator, ShmError, XmemBuilder};
    /// # fn main() -> Result<(), xme_shm::ShmError> {
    /// let xmem = XmemBuilder::new().build()?;
    /// let before = xmem.keys_claimed();
    /// xmem.set("k", &1)?;
    /// assert_eq!(xmem.keys_claimed(), before + 1);
    /// # Ok(())
    /// # }
    /// ```
    pub fn keys_claimed(&self) -> usize {
        self.table().keys_claimed()
    }

    /// Bytes of the arena.
    ///
    /// ```
    /// use xme_shm::{Operator, ShmError, XmemBuilder};
    /// # fn main() -> Result<(), xme_shm::ShmError> {
    /// let xmem = XmemBuilder::new().arena_bytes(1 << 20).build()?;
    /// assert_eq!(xmem.arena_bytes(), 1 << 20);
    /// # Ok(())
    /// # }
    /// ```
    pub fn arena_bytes(&self) -> usize {
        self.table().layout().arena_bytes()
    }

    /// Frees blocks left by processes that died while writing, and pages a
    /// dead process left half made; returns how many blocks. Runs by itself
    /// when the arena seems full.
    ///
    /// ```
    /// use xme_shm::{Operator, ShmError, XmemBuilder};
    /// # fn main() -> Result<(), xme_shm::ShmError> {
    /// let xmem = XmemBuilder::new().build()?;
    /// assert_eq!(xmem.sweep(), 0); // nobody died writing
    /// # Ok(())
    /// # }
    /// ```
    pub fn sweep(&self) -> usize {
        self.table().sweep(process::current_pid())
    }

    /// Checks the table's consistency and counts the arena's blocks. Safe
    /// while other processes write: a slot being written is read again until
    /// it reads whole, so only lasting damage is reported; the counts are
    /// then a close estimate.
    ///
    /// # Errors
    /// [`ShmError::BadLayout`] naming the damage found.
    ///
    /// ```
    /// use xme_shm::{Operator, ShmError, XmemBuilder};
    /// # fn main() -> Result<(), xme_shm::ShmError> {
    /// let xmem = XmemBuilder::new().value("k", "v")?.build()?;
    /// let stats = xmem.check()?;
    /// assert!(stats.live_blocks >= 1);
    /// # Ok(())
    /// # }
    /// ```
    pub fn check(&self) -> Result<ArenaStats, ShmError> {
        self.table().check()
    }
}
