//! The Monitor (seed 2.4): a JSON message map in shared memory.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use serde_json::Value;
use xme_core::sync::SeqLock;
use xme_core::{Mapped, Operator, SharedRegion};
use xme_security::{LockType, Security, SecurityState};

use crate::codec::Codec;
#[cfg(feature = "sealed")]
use crate::codec::Sealed;
use crate::{Message, MonitorError};

/// Layout version of a Monitor region.
pub(crate) const REGION_VERSION: u32 = 0x4d4f_0002;

/// The control words after the lock.
#[repr(C)]
pub(crate) struct Control {
    /// Which of the two copies of the map is current, and the writer's pid
    /// (a double-buffered [`SeqLock`]).
    pub(crate) map: SeqLock,
    /// Bytes of JSON text in each copy.
    pub(crate) len: [AtomicU64; 2],
    /// Bytes the map may take.
    pub(crate) capacity: AtomicU64,
    _reserved: [AtomicU64; 3],
}
// SAFETY: `#[repr(C)]` of a `SeqLock` (InRegion) and `AtomicU64`s: no
// padding, no pointers, valid for every bit pattern; lengths and capacity
// are clamped to the region where they are read.
unsafe impl xme_core::InRegion for Control {}
pub(crate) const CONTROL_BYTES: usize = std::mem::size_of::<Control>();
const _: () = assert!(
    CONTROL_BYTES == 64,
    "the Monitor layout changed: bump REGION_VERSION"
);

/// Builds a [`Monitor`].
#[derive(Debug, Clone)]
pub struct MonitorBuilder {
    capacity: usize,
    lock_type: LockType,
    name: Option<String>,
    key: Option<[u8; 32]>,
}

impl Default for MonitorBuilder {
    fn default() -> Self {
        MonitorBuilder {
            capacity: 1 << 20,
            lock_type: LockType::ReadWrite,
            name: None,
            key: None,
        }
    }
}

impl MonitorBuilder {
    /// Bytes the message map may take as JSON text (default 1 MiB; the
    /// region holds two copies).
    ///
    /// ```
    /// use xme_monitor::serde_json::json;
    /// use xme_monitor::{LockType, Monitor, MonitorError, Operator};
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let monitor = Monitor::builder().capacity(16).build()?;
    /// let err = monitor.update(json!({"long": "more than sixteen bytes"}), Operator::ADMIN).unwrap_err();
    /// assert!(matches!(err, MonitorError::MonitorFull { capacity: 16, .. }));
    /// # Ok(())
    /// # }
    /// ```
    pub fn capacity(mut self, bytes: usize) -> MonitorBuilder {
        self.capacity = bytes;
        self
    }

    /// The type of the Monitor's lock, taken by `update` and `delete`
    /// (default READWRITE, whose writer is `Operator::ADMIN` until another is
    /// registered).
    ///
    /// ```
    /// use xme_monitor::serde_json::json;
    /// use xme_monitor::{LockType, Monitor, MonitorError, Operator};
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let monitor = Monitor::builder().lock_type(LockType::Mutex).build()?;
    /// assert_eq!(monitor.security().lock_type(), LockType::Mutex);
    /// monitor.update(json!({"any": "operator"}), Operator::alloc())?; // MUTEX: anyone may write
    /// # Ok(())
    /// # }
    /// ```
    pub fn lock_type(mut self, lock_type: LockType) -> MonitorBuilder {
        self.lock_type = lock_type;
        self
    }

    /// Puts the Monitor in the named region `name`, which other programs
    /// attach with [`Monitor::attach`]. Without a name the region is
    /// anonymous: this process and the children it forks share it.
    ///
    /// ```
    /// use xme_monitor::serde_json::json;
    /// use xme_monitor::{LockType, Monitor, MonitorError, Operator};
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let name = format!("xme-doc-monitor-{}", std::process::id());
    /// let monitor = Monitor::builder().named(&name).build()?; // /dev/shm/<name>, removed on drop
    /// monitor.update(json!({"hello": "there"}), Operator::ADMIN)?;
    /// let other = Monitor::attach(&name, None)?; // as another program would
    /// assert_eq!(other.get(&["hello"])?, json!("there"));
    /// # Ok(())
    /// # }
    /// ```
    pub fn named(mut self, name: impl Into<String>) -> MonitorBuilder {
        self.name = Some(name.into());
        self
    }

    /// The 32-byte key of the default (sealed) codec.
    ///
    /// ```
    /// use xme_monitor::serde_json::json;
    /// use xme_monitor::{LockType, Monitor, MonitorError, Operator};
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let monitor = Monitor::builder().key([3; 32]).build()?;
    /// assert!(!monitor.marshal()?.is_empty());
    /// assert!(matches!(Monitor::new()?.marshal(), Err(MonitorError::NoKey)));
    /// # Ok(())
    /// # }
    /// ```
    #[cfg(feature = "sealed")]
    pub fn key(mut self, key: [u8; 32]) -> MonitorBuilder {
        self.key = Some(key);
        self
    }

    /// Builds the Monitor with an empty map.
    ///
    /// # Errors
    /// [`MonitorError::Config`] for a capacity outside 2 bytes ..= 4 GiB;
    /// [`MonitorError::Region`] if the region cannot be made (a named one that a
    /// live process already has).
    ///
    /// ```
    /// use xme_monitor::serde_json::json;
    /// use xme_monitor::{LockType, Monitor, MonitorError, Operator};
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// assert!(matches!(Monitor::builder().capacity(1).build(), Err(MonitorError::Config(_))));
    /// assert_eq!(Monitor::builder().build()?.get(&[])?, json!({}));
    /// # Ok(())
    /// # }
    /// ```
    pub fn build(self) -> Result<Monitor, MonitorError> {
        if self.capacity < 2 || self.capacity > 1 << 32 {
            return Err(MonitorError::Config(format!(
                "capacity {} bytes is outside 2..=4 GiB",
                self.capacity
            )));
        }
        let slot_words = self.capacity.div_ceil(8);
        let data_offset = (SecurityState::SIZE.next_multiple_of(64)) + CONTROL_BYTES;
        let bytes = data_offset + 2 * slot_words * 8;
        let region = Arc::new(match &self.name {
            Some(name) => SharedRegion::create_named(name, bytes, REGION_VERSION)?,
            None => SharedRegion::anonymous_versioned(bytes, REGION_VERSION)?,
        });
        let monitor = Monitor::map(region, self.lock_type, self.key)?;
        monitor
            .control
            .capacity
            .store(self.capacity as u64, Ordering::Relaxed);
        // An empty map, "{}", in copy 0 (current at stamp 0); nobody else
        // maps the region yet.
        store_bytes(monitor.slot(0), b"{}");
        monitor.control.len[0].store(2, Ordering::Relaxed);
        Ok(monitor)
    }
}

/// The seed's Monitor: a map from string keys to JSON values, shared by every
/// process that forked from its builder or attached it by name.
///
/// - Reads ([`get`](Self::get), [`items`](Self::items)) never block and never
///   see half of an update: the map is kept as two copies; a writer fills
///   the spare copy and switches to it with one atomic store, and a reader
///   retries if a switch happened while it copied.
/// - Writes ([`update`](Self::update), [`delete`](Self::delete),
///   [`unmarshal`](Self::unmarshal)) take the Monitor's Security lock as the
///   given operator, so they are refused by its rules; an update that does
///   not fit is refused whole. A writer killed mid-write leaves the previous
///   map in place.
///
/// ```
/// use serde_json::json;
/// use xme_core::{Operator, process};
/// use xme_monitor::{Monitor, XmeWire};
/// use xme_security::LockType;
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let monitor = Monitor::builder().lock_type(LockType::Mutex).key([42; 32]).build()?;
/// let child = process::fork_child(|| {
///     let op = Operator::alloc();
///     monitor.update(json!({"child": process::current_pid()}), op).unwrap();
///     0
/// })?;
/// child.wait()?;
/// assert!(monitor.get(&["child"])?.is_u64());
/// let frame = monitor.marshal()?; // sealed with the key
/// let copy = Monitor::builder().key([42; 32]).build()?;
/// copy.unmarshal(&frame, Operator::ADMIN)?;
/// assert_eq!(copy.get(&[])?, monitor.get(&[])?);
/// let wire = monitor.marshal_with(&XmeWire::default())?; // Python XME format
/// assert_eq!(wire[0], 0xb7);
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct Monitor {
    security: Security<'static>,
    control: Mapped<Control>,
    data: Mapped<[AtomicU64]>,
    slot_words: usize,
    #[cfg(feature = "sealed")]
    sealed: Option<Arc<Sealed>>,
    /// Keeps the mapping behind the slices alive; declared last.
    region: Arc<SharedRegion>,
}

impl std::fmt::Debug for Monitor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Monitor")
            .field("region", &self.region)
            .field("capacity", &self.capacity())
            .field("lock", &self.security)
            .finish()
    }
}

/// Longest wait for the writer word while another live process holds it: a
/// write holds it for one copy of the map, so past this it is stuck or the
/// word is corrupt.
const WRITER_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

fn store_bytes(dst: &[AtomicU64], bytes: &[u8]) {
    for (w, chunk) in dst.iter().zip(bytes.chunks(8)) {
        let mut b = [0u8; 8];
        b[..chunk.len()].copy_from_slice(chunk);
        w.store(u64::from_le_bytes(b), Ordering::Relaxed);
    }
}

pub(crate) fn load_bytes(src: &[AtomicU64], len: usize, out: &mut Vec<u8>) {
    out.clear();
    out.reserve(len);
    for w in src.iter().take(len.div_ceil(8)) {
        out.extend_from_slice(&w.load(Ordering::Relaxed).to_le_bytes());
    }
    out.truncate(len);
}

impl Monitor {
    /// A builder: capacity, lock type, name, key.
    ///
    /// ```
    /// use xme_monitor::serde_json::json;
    /// use xme_monitor::{LockType, Monitor, MonitorError, Operator};
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let monitor = Monitor::builder().capacity(4096).lock_type(LockType::Mutex).build()?;
    /// assert_eq!(monitor.capacity(), 4096);
    /// # Ok(())
    /// # }
    /// ```
    pub fn builder() -> MonitorBuilder {
        MonitorBuilder::default()
    }

    /// An anonymous Monitor with the defaults and no key.
    ///
    /// # Errors
    /// [`MonitorError::Region`] if the shared memory cannot be made.
    ///
    /// ```
    /// use xme_monitor::serde_json::json;
    /// use xme_monitor::{LockType, Monitor, MonitorError, Operator};
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let monitor = Monitor::new()?;
    /// assert_eq!(monitor.items()?.len(), 0);
    /// # Ok(())
    /// # }
    /// ```
    pub fn new() -> Result<Monitor, MonitorError> {
        MonitorBuilder::default().build()
    }

    /// Attaches to the Monitor built in the named region `name` by another
    /// program; `key` is the sealed codec's key, if this side marshals
    /// (ignored without the `sealed` feature).
    ///
    /// # Errors
    /// [`MonitorError::Region`] if no Monitor of that name exists, its creator
    /// died (a stale region), or the region is not a Monitor of this layout.
    ///
    /// ```
    /// use xme_monitor::serde_json::json;
    /// use xme_monitor::{LockType, Monitor, MonitorError, Operator};
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// assert!(matches!(Monitor::attach("xme-doc-no-such-monitor", None), Err(MonitorError::Region(_))));
    /// # Ok(())
    /// # }
    /// ```
    pub fn attach(name: &str, key: Option<[u8; 32]>) -> Result<Monitor, MonitorError> {
        let region = Arc::new(SharedRegion::open_named(name, REGION_VERSION)?);
        Monitor::map(region, LockType::ReadWrite, key)
    }

    fn map(
        region: Arc<SharedRegion>,
        lock_type: LockType,
        key: Option<[u8; 32]>,
    ) -> Result<Monitor, MonitorError> {
        #[cfg(not(feature = "sealed"))]
        let _ = key; // no sealed codec to key
        let control_offset = SecurityState::SIZE.next_multiple_of(64);
        let data_offset = control_offset + CONTROL_BYTES;
        let data_words = region.payload_len().saturating_sub(data_offset) / 8;
        let control = region.place_owned(control_offset)?;
        let data = region.slice_owned(data_offset, data_words)?;
        let security = Security::in_shared_region(region.clone(), 0, lock_type)?;
        Ok(Monitor {
            security,
            control,
            data,
            slot_words: data_words / 2,
            #[cfg(feature = "sealed")]
            sealed: key.map(|k| Arc::new(Sealed::new(k))),
            region,
        })
    }

    fn slot(&self, s: usize) -> &[AtomicU64] {
        &self.data[s * self.slot_words..(s + 1) * self.slot_words]
    }

    /// Bytes the map may take as JSON text.
    ///
    /// ```
    /// use xme_monitor::serde_json::json;
    /// use xme_monitor::{LockType, Monitor, MonitorError, Operator};
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// assert_eq!(Monitor::new()?.capacity(), 1 << 20);
    /// # Ok(())
    /// # }
    /// ```
    pub fn capacity(&self) -> usize {
        (self.control.capacity.load(Ordering::Relaxed) as usize).min(self.slot_words * 8)
    }

    /// The Monitor's lock: set its type, writer, authorised operators.
    ///
    /// ```
    /// use xme_monitor::serde_json::json;
    /// use xme_monitor::{LockType, Monitor, MonitorError, Operator};
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let monitor = Monitor::new()?; // READWRITE, writer ADMIN
    /// let writer = Operator::alloc();
    /// monitor.security().register(writer);
    /// monitor.update(json!({"by": "the new writer"}), writer)?;
    /// assert!(monitor.update(json!({"by": "admin"}), Operator::ADMIN).is_err());
    /// # Ok(())
    /// # }
    /// ```
    pub fn security(&self) -> &Security<'static> {
        &self.security
    }

    /// The region holding the Monitor.
    ///
    /// ```
    /// use xme_monitor::serde_json::json;
    /// use xme_monitor::{LockType, Monitor, MonitorError, Operator};
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let monitor = Monitor::new()?;
    /// assert_eq!(monitor.region().name(), None); // anonymous
    /// # Ok(())
    /// # }
    /// ```
    pub fn region(&self) -> &Arc<SharedRegion> {
        &self.region
    }

    /// A consistent copy of the map's JSON text (seqlock read over the two copies).
    fn snapshot(&self) -> Vec<u8> {
        let mut out = Vec::new();
        loop {
            let (stamp, s) = self.control.map.read_copy_begin();
            let len =
                (self.control.len[s].load(Ordering::Relaxed) as usize).min(self.slot_words * 8);
            load_bytes(self.slot(s), len, &mut out);
            if self.control.map.read_validate(stamp) {
                return out;
            }
        }
    }

    fn read_map(&self) -> Result<Message, MonitorError> {
        let text = self.snapshot();
        match serde_json::from_slice(&text).map_err(MonitorError::BadJson)? {
            Value::Object(m) => Ok(m),
            other => Err(MonitorError::NotAnObject {
                found: crate::python::kind(&other),
            }),
        }
    }

    /// With no key, a copy of the whole map (as a JSON object); with one key,
    /// its value; with several, the sub-map of those keys (the seed's `get`).
    /// A missing key is [`MonitorError::NotFound`].
    ///
    /// # Errors
    /// [`MonitorError::NotFound`] for a missing key; [`MonitorError::BadJson`] if
    /// the region's text is not a JSON object (a corrupt region).
    ///
    /// ```
    /// use xme_monitor::serde_json::json;
    /// use xme_monitor::{LockType, Monitor, MonitorError, Operator};
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let monitor = Monitor::new()?;
    /// monitor.update(json!({"a": 1, "b": 2, "c": 3}), Operator::ADMIN)?;
    /// assert_eq!(monitor.get(&["a"])?, json!(1));
    /// assert_eq!(monitor.get(&["a", "c"])?, json!({"a": 1, "c": 3}));
    /// assert_eq!(monitor.get(&[])?, json!({"a": 1, "b": 2, "c": 3}));
    /// assert!(matches!(monitor.get(&["z"]), Err(MonitorError::NotFound(_))));
    /// # Ok(())
    /// # }
    /// ```
    pub fn get(&self, keys: &[&str]) -> Result<Value, MonitorError> {
        crate::select(self.read_map()?, keys)
    }

    /// Every entry, in insertion order (the seed's `items`).
    ///
    /// # Errors
    /// As [`get`](Self::get) for a corrupt region.
    ///
    /// ```
    /// use xme_monitor::serde_json::json;
    /// use xme_monitor::{LockType, Monitor, MonitorError, Operator};
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let monitor = Monitor::new()?;
    /// monitor.update(json!({"first": 1, "second": 2}), Operator::ADMIN)?;
    /// let keys: Vec<String> = monitor.items()?.into_iter().map(|(k, _)| k).collect();
    /// assert_eq!(keys, ["first", "second"]); // insertion order
    /// # Ok(())
    /// # }
    /// ```
    pub fn items(&self) -> Result<Vec<(String, Value)>, MonitorError> {
        Ok(self.read_map()?.into_iter().collect())
    }

    /// Applies `change` to the map under the lock as `op`, and publishes the
    /// result whole, or nothing (if `change` fails or the result does not
    /// fit). Use it for read-modify-write such as counters.
    ///
    /// # Errors
    /// The lock's refusal ([`MonitorError::Lock`]); the error `change` returns;
    /// [`MonitorError::MonitorFull`] if the result does not fit;
    /// [`MonitorError::WriterStuck`] if another live process holds the writer
    /// word for a second.
    ///
    /// ```
    /// use xme_monitor::serde_json::json;
    /// use xme_monitor::{LockType, Monitor, MonitorError, Operator};
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let monitor = Monitor::new()?;
    /// for _ in 0..3 {
    ///     monitor.modify(Operator::ADMIN, |map| {
    ///         let n = map.get("count").and_then(|v| v.as_u64()).unwrap_or(0);
    ///         map.insert("count".into(), json!(n + 1));
    ///         Ok(())
    ///     })?;
    /// }
    /// assert_eq!(monitor.get(&["count"])?, json!(3));
    /// # Ok(())
    /// # }
    /// ```
    pub fn modify<T>(
        &self,
        op: Operator,
        change: impl FnOnce(&mut Message) -> Result<T, MonitorError>,
    ) -> Result<T, MonitorError> {
        let _lock = self.security.lock(op)?;
        // The writer word names its pid: a writer that died is taken over (it
        // left only the unpublished spare copy half-written).
        let write =
            self.control
                .map
                .write_spare(WRITER_WAIT)
                .map_err(|pid| MonitorError::WriterStuck {
                    pid,
                    waited: WRITER_WAIT,
                })?;
        let mut map = self.read_map()?;
        let out = change(&mut map)?;
        let text = serde_json::to_vec(&map).map_err(MonitorError::BadJson)?;
        let capacity = self.capacity();
        if text.len() > capacity {
            return Err(MonitorError::MonitorFull {
                needed: text.len(),
                capacity,
            });
        }
        let spare = write.spare();
        store_bytes(self.slot(spare), &text);
        self.control.len[spare].store(text.len() as u64, Ordering::Relaxed);
        write.publish();
        Ok(out)
    }

    /// Merges `message` (a JSON object) into the map as `op` (the seed's
    /// `update(newmessage, Operator)`).
    ///
    /// # Errors
    /// [`MonitorError::NotAnObject`] unless `message` is a JSON object; otherwise
    /// as [`modify`](Self::modify).
    ///
    /// ```
    /// use xme_monitor::serde_json::json;
    /// use xme_monitor::{LockType, Monitor, MonitorError, Operator};
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let monitor = Monitor::new()?;
    /// monitor.update(json!({"a": 1}), Operator::ADMIN)?;
    /// monitor.update(json!({"a": 2, "b": 3}), Operator::ADMIN)?; // merged
    /// assert_eq!(monitor.get(&[])?, json!({"a": 2, "b": 3}));
    /// assert!(matches!(monitor.update(json!([1]), Operator::ADMIN), Err(MonitorError::NotAnObject { .. })));
    /// # Ok(())
    /// # }
    /// ```
    pub fn update(&self, message: impl Into<Value>, op: Operator) -> Result<(), MonitorError> {
        let new = match message.into() {
            Value::Object(m) => m,
            other => {
                return Err(MonitorError::NotAnObject {
                    found: crate::python::kind(&other),
                });
            }
        };
        self.modify(op, |map| {
            map.extend(new);
            Ok(())
        })
    }

    /// Deletes `keys` as `op`; with no key, every key (the seed's `delete`).
    /// Returns how many existed.
    ///
    /// # Errors
    /// As [`modify`](Self::modify).
    ///
    /// ```
    /// use xme_monitor::serde_json::json;
    /// use xme_monitor::{LockType, Monitor, MonitorError, Operator};
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let monitor = Monitor::new()?;
    /// monitor.update(json!({"a": 1, "b": 2, "c": 3}), Operator::ADMIN)?;
    /// assert_eq!(monitor.delete(&["a", "zz"], Operator::ADMIN)?, 1);
    /// assert_eq!(monitor.delete(&[], Operator::ADMIN)?, 2); // every key
    /// # Ok(())
    /// # }
    /// ```
    pub fn delete(&self, keys: &[&str], op: Operator) -> Result<usize, MonitorError> {
        self.modify(op, |map| {
            if keys.is_empty() {
                let n = map.len();
                map.clear();
                return Ok(n);
            }
            Ok(keys
                .iter()
                .filter(|k| map.shift_remove(**k).is_some())
                .count())
        })
    }

    /// Replaces the whole map as `op`.
    ///
    /// # Errors
    /// As [`modify`](Self::modify).
    ///
    /// ```
    /// use xme_monitor::serde_json::json;
    /// use xme_monitor::{LockType, Monitor, MonitorError, Operator};
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let monitor = Monitor::new()?;
    /// monitor.update(json!({"old": true}), Operator::ADMIN)?;
    /// let new = json!({"new": true}).as_object().unwrap().clone();
    /// monitor.replace(new, Operator::ADMIN)?;
    /// assert_eq!(monitor.get(&[])?, json!({"new": true}));
    /// # Ok(())
    /// # }
    /// ```
    pub fn replace(&self, message: Message, op: Operator) -> Result<(), MonitorError> {
        self.modify(op, |map| {
            *map = message;
            Ok(())
        })
    }

    #[cfg(feature = "sealed")]
    fn default_codec(&self) -> Result<&Sealed, MonitorError> {
        self.sealed.as_deref().ok_or(MonitorError::NoKey)
    }

    /// The map as bytes with the default codec ([`Sealed`] under the
    /// Monitor's key).
    ///
    /// # Errors
    /// [`MonitorError::NoKey`] if the Monitor was built without a key.
    ///
    /// ```
    /// use xme_monitor::serde_json::json;
    /// use xme_monitor::{LockType, Monitor, MonitorError, Operator};
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let monitor = Monitor::builder().key([9; 32]).build()?;
    /// monitor.update(json!({"secret": 42}), Operator::ADMIN)?;
    /// let frame = monitor.marshal()?;
    /// assert!(!frame.windows(6).any(|w| w == b"secret")); // encrypted
    /// # Ok(())
    /// # }
    /// ```
    #[cfg(feature = "sealed")]
    pub fn marshal(&self) -> Result<Vec<u8>, MonitorError> {
        self.marshal_with(self.default_codec()?)
    }

    /// The map as bytes with `codec`.
    ///
    /// # Errors
    /// The codec's error (a map too large for its frame limit).
    ///
    /// ```
    /// use xme_monitor::XmeWire;
    /// use xme_monitor::serde_json::json;
    /// use xme_monitor::{LockType, Monitor, MonitorError, Operator};
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let monitor = Monitor::new()?;
    /// monitor.update(json!({"a": 1}), Operator::ADMIN)?;
    /// let wire = monitor.marshal_with(&XmeWire::default())?; // Python XME 4.2's bytes
    /// assert_eq!(wire[0], 0xb7); // '{' with its nibbles swapped
    /// # Ok(())
    /// # }
    /// ```
    pub fn marshal_with(&self, codec: &dyn Codec) -> Result<Vec<u8>, MonitorError> {
        codec.encode(&self.read_map()?)
    }

    #[cfg(feature = "sealed")]
    /// Decodes `bytes` with the default codec and merges them into the map
    /// as `op`. A frame that fails to decode changes nothing.
    ///
    /// # Errors
    /// [`MonitorError::NoKey`] without a key; the sealed codec's errors
    /// ([`MonitorError::WrongKey`], [`MonitorError::Tampered`], …), then as
    /// [`update`](Self::update). A frame that fails changes nothing.
    ///
    /// ```
    /// use xme_monitor::serde_json::json;
    /// use xme_monitor::{LockType, Monitor, MonitorError, Operator};
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let a = Monitor::builder().key([5; 32]).build()?;
    /// a.update(json!({"x": 1}), Operator::ADMIN)?;
    /// let b = Monitor::builder().key([5; 32]).build()?;
    /// b.unmarshal(&a.marshal()?, Operator::ADMIN)?;
    /// assert_eq!(b.get(&["x"])?, json!(1));
    /// let c = Monitor::builder().key([6; 32]).build()?;
    /// assert!(matches!(c.unmarshal(&a.marshal()?, Operator::ADMIN), Err(MonitorError::WrongKey)));
    /// # Ok(())
    /// # }
    /// ```
    pub fn unmarshal(&self, bytes: &[u8], op: Operator) -> Result<(), MonitorError> {
        self.unmarshal_with(self.default_codec()?, bytes, op)
    }

    /// Decodes `bytes` with `codec` and merges them into the map as `op`.
    ///
    /// # Errors
    /// The codec's errors, then as [`update`](Self::update).
    ///
    /// ```
    /// use xme_monitor::XmeWire;
    /// use xme_monitor::serde_json::json;
    /// use xme_monitor::{LockType, Monitor, MonitorError, Operator};
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let monitor = Monitor::new()?;
    /// let wire = XmeWire::default();
    /// let mut bytes = br#"{"from": "python"}"#.to_vec();
    /// xme_monitor::swap_nibbles(&mut bytes); // what Python XME sends
    /// monitor.unmarshal_with(&wire, &bytes, Operator::ADMIN)?;
    /// assert_eq!(monitor.get(&["from"])?, json!("python"));
    /// # Ok(())
    /// # }
    /// ```
    pub fn unmarshal_with(
        &self,
        codec: &dyn Codec,
        bytes: &[u8],
        op: Operator,
    ) -> Result<(), MonitorError> {
        let message = codec.decode(bytes)?;
        self.update(Value::Object(message), op)
    }
}
