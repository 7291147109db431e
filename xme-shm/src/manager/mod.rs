//! The Manager: its region (a header, the Security lock, the call buffer,
//! the value table) and its rooms: `builder` (`XmemBuilder`), `keys`
//! (reserved keys, encoding, the checks every write makes), `values` (get,
//! set, update, delete …), `status` (the status table), `registry`
//! (functions registered by name).

use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use xme_core::{Mapped, Operator, SharedRegion, process};
use xme_security::{LockType, Security};

use crate::ShmError;
use crate::buffer::call_buffer::CallBuffer;
use crate::store::arena::ArenaStats;
use crate::store::layout::Layout;
use crate::store::table::{TableStats, ValueTable};

mod builder;
mod inspect;
mod keys;
mod registry;
mod status;
mod values;

pub use builder::XmemBuilder;
pub use inspect::{
    ClassPages, GuardSnapshot, KeySnapshot, MANAGER_KIND, MANAGER_LAYOUT, ManagerSnapshot,
    PREVIEW_BYTES, PageCensus, StatusSnapshot,
};
pub(crate) use keys::check_reserved_value;
pub use keys::{
    BUILTINS, GUARD_KEY, GuardTable, ProcessStatus, RESERVED_KEYS, STATUS_KEY, StatusTable,
    XMEM_KEY,
};
pub(crate) use registry::{FamilyKey, Registry, Trampoline};

/// Region layout version of a Manager (header + lock + table).
const REGION_VERSION: u32 = 0x4d47_0005;
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
    /// Status reports recorded (the serial of the latest).
    status_serial: AtomicU64,
    /// Room for later fields (processes using the region, rates) without
    /// moving the lock.
    _reserved: [AtomicU64; 25],
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

    /// Test hook: moves the generation of every free block on by `reuses`,
    /// as that many takes and frees of each would (standing for billions of
    /// writes a test cannot wait for). Returns how many blocks.
    #[doc(hidden)]
    pub fn age_free_blocks(&self, reuses: u64) -> usize {
        self.table().arena().age_free_blocks(reuses)
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
        self.table().check(process::current_pid())
    }

    /// How the table's keys sit in their slots: the mean and longest probe
    /// of a lookup. Deletes move entries back along their chains, so these
    /// depend only on the keys present, however many came and went.
    ///
    /// # Errors
    /// [`ShmError::BadLayout`] if the table is corrupt.
    ///
    /// ```
    /// use xme_shm::{Operator, ShmError, XmemBuilder};
    /// # fn main() -> Result<(), xme_shm::ShmError> {
    /// let xmem = XmemBuilder::new().capacity(100).build()?;
    /// for i in 0..50 {
    ///     xmem.set(&format!("k{i}"), &i)?;
    /// }
    /// let stats = xmem.table_stats()?;
    /// assert!(stats.keys >= 50 && stats.mean_probe >= 1.0 && stats.mean_probe < 2.0);
    /// # Ok(())
    /// # }
    /// ```
    pub fn table_stats(&self) -> Result<TableStats, ShmError> {
        self.table().stats(process::current_pid())
    }
}
