//! The builder of a Manager (the seed's `XMEMBuilder`).

use std::sync::Arc;

use serde::Serialize;
use xme_core::{SharedRegion, process};
use xme_security::{LockType, Security, SecurityState};

use super::keys::{
    BUILTINS, GUARD_KEY, GuardTable, RESERVED_KEYS, XMEM_KEY, check_reserved_value, encode,
    status_limit,
};
use super::{FamilyKey, LOCK_OFFSET, Manager, ManagerHeader, REGION_VERSION};
use crate::ShmError;
use crate::buffer::call_buffer::{BufferConfig, CallBuffer};
use crate::store::layout::Layout;
use crate::store::table::ValueTable;

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
