//! A Manager read from outside, without changing it: the snapshot behind
//! `xme show` and `xme top`. Works over any words (a read-only mapping of
//! `/dev/shm/<name>`, [`RegionFile`]) with loads only: it takes no lock,
//! helps no writer and registers nowhere.

use std::sync::atomic::{AtomicU64, Ordering};

use xme_core::Operator;
use xme_core::inspect::{HeaderSnapshot, RegionFile, kind_tag};
use xme_security::LockSnapshot;

use super::keys::{GUARD_KEY, GuardTable, ProcessStatus, STATUS_PREFIX, decode};
use super::{LOCK_OFFSET, ManagerHeader, REGION_VERSION};
use crate::ShmError;
use crate::buffer::call_buffer;
pub use crate::store::census::{ClassPages, PageCensus};
use crate::store::table::ValueTable;

/// The kind tag (high 16 bits of the region header's version) of a
/// Manager's region: `"MG"`.
pub const MANAGER_KIND: u16 = kind_tag(REGION_VERSION);
/// The Manager layout version this build reads.
pub const MANAGER_LAYOUT: u16 = REGION_VERSION as u16;
/// Bytes of each ordinary value copied for a preview.
pub const PREVIEW_BYTES: usize = 32;
/// Bytes copied of values shown whole (statuses, `__GUARD__`, `__MSG__`).
const WHOLE_BYTES: usize = 1 << 16;

/// One key of the table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeySnapshot {
    /// The key.
    pub key: String,
    /// Bytes of its value (postcard or raw bytes: values are typeless).
    pub value_len: usize,
    /// The value's first bytes ([`PREVIEW_BYTES`]; whole for `__MSG__`,
    /// the Manager's JSON messages).
    pub preview: Vec<u8>,
}

/// One operator's status entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusSnapshot {
    /// The operator.
    pub operator: Operator,
    /// What it last reported, its pid and when.
    pub status: ProcessStatus,
}

/// The Guard, as its registration and the call buffer's counters say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GuardSnapshot {
    /// The registered Guard's pid (`None`: no Guard registered).
    pub pid: Option<u32>,
    /// Calls appended and not yet taken.
    pub calls_queued: u64,
    /// Calls run so far (skipped ones included).
    pub calls_run: u64,
    /// Cells of the call ring.
    pub ring_capacity: u64,
    /// `xme_core::monotonic_ns` when a wait of the Guard on an empty ring
    /// last ran out (at most `EmpLoopTime` apart while it idles; `None`:
    /// never); a busy Guard keeps an old one while `calls_run` moves.
    pub last_beat_ns: Option<u64>,
    /// `__GUARD__`'s `"Status"` (false asks the Guard to stop).
    pub enabled: Option<bool>,
}

/// Everything `xme show` says about a Manager.
#[derive(Debug, Clone, PartialEq)]
pub struct ManagerSnapshot {
    /// The region header.
    pub header: HeaderSnapshot,
    /// Keys the table accepts.
    pub capacity: usize,
    /// Slots of the table.
    pub slots: usize,
    /// Slots taken (live keys, and a delete's hole while it lasts).
    pub keys_claimed: usize,
    /// Bytes of the arena.
    pub arena_bytes: usize,
    /// How the arena's pages are used.
    pub pages: PageCensus,
    /// The keys (reserved ones included, status entries apart), by key.
    pub keys: Vec<KeySnapshot>,
    /// The status table, by operator.
    pub statuses: Vec<StatusSnapshot>,
    /// Status reports recorded so far.
    pub status_reports: u64,
    /// Values stored so far (sets and read-modify-writes; wraps).
    pub writes: u64,
    /// The Guard.
    pub guard: GuardSnapshot,
    /// The Manager's lock (`None` if its state is not initialised).
    pub lock: Option<LockSnapshot>,
    /// An entry moved along its chain while the table was read: a key may
    /// be missing from this snapshot (read again).
    pub changing: bool,
}

impl ManagerSnapshot {
    /// Reads the Manager in `file`.
    ///
    /// # Errors
    /// [`ShmError::Region`] if the file is not an xme region, not a
    /// Manager's, or a Manager of another layout version (saying which);
    /// [`ShmError::BadLayout`] if its header or table is corrupt.
    ///
    /// ```
    /// use xme_core::inspect::RegionFile;
    /// use xme_shm::{ManagerSnapshot, XmemBuilder};
    ///
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let name = format!("xme-doc-snapshot-{}", std::process::id());
    /// let xmem = XmemBuilder::new().named(&name).value("answer", &42u32)?.build()?;
    /// xmem.status(xmem.alloc_operator(), "ready")?;
    /// let snap = ManagerSnapshot::read(&RegionFile::open(&name)?)?;
    /// let answer = snap.keys.iter().find(|k| k.key == "answer").unwrap();
    /// assert_eq!(answer.preview, postcard::to_stdvec(&42u32)?);
    /// assert_eq!(snap.statuses[0].status.status, "ready");
    /// assert!(snap.guard.pid.is_none());
    /// # Ok(())
    /// # }
    /// ```
    pub fn read(file: &RegionFile) -> Result<ManagerSnapshot, ShmError> {
        let header = file.header()?;
        check_version(header.version)?;
        let payload = file.payload();
        let bad = |what: String| ShmError::BadLayout(format!("{:?}: {what}", file.name()));
        let mh: &ManagerHeader =
            xme_core::view(payload).ok_or_else(|| bad("too small for a Manager header".into()))?;
        let table_offset = mh.table_offset.load(Ordering::Acquire) as usize;
        let buffer_offset = mh.buffer_offset.load(Ordering::Relaxed) as usize;
        let words_at = |offset: usize| -> Option<&[AtomicU64]> {
            (offset.is_multiple_of(8) && offset > 0).then_some(())?;
            payload.get(offset / 8..).filter(|w| !w.is_empty())
        };
        let table_words = words_at(table_offset).ok_or_else(|| {
            bad(format!(
                "table offset {table_offset} is not initialised or outside the region"
            ))
        })?;
        let table = ValueTable::attach(table_words).map_err(|e| bad(e.to_string()))?;
        let layout = table.layout();
        let (entries, changing) = table.census_entries(|key| {
            if key.starts_with(STATUS_PREFIX.as_bytes())
                || key == GUARD_KEY.as_bytes()
                || key == b"__MSG__"
            {
                WHOLE_BYTES
            } else {
                PREVIEW_BYTES
            }
        })?;
        let mut keys = Vec::new();
        let mut statuses = Vec::new();
        let mut enabled = None;
        for (key, entry) in entries {
            if let Some(op) = key.strip_prefix(STATUS_PREFIX) {
                // A status entry cut short (larger than WHOLE_BYTES) or
                // foreign is shown as a key instead.
                if let (Ok(operator), Ok(status)) = (
                    op.parse::<Operator>(),
                    decode::<ProcessStatus>(&key, &entry.value),
                ) {
                    statuses.push(StatusSnapshot { operator, status });
                    continue;
                }
            }
            if key == GUARD_KEY {
                enabled = decode::<GuardTable>(&key, &entry.value)
                    .ok()
                    .and_then(|t| t.get("Status").copied());
            }
            keys.push(KeySnapshot {
                key,
                value_len: entry.value_len,
                preview: entry.value,
            });
        }
        let buffer = words_at(buffer_offset)
            .and_then(|_| call_buffer::census(payload, buffer_offset))
            .ok_or_else(|| {
                bad(format!(
                    "call buffer offset {buffer_offset} is outside the region"
                ))
            })?;
        Ok(ManagerSnapshot {
            header,
            capacity: layout.capacity,
            slots: layout.nslots,
            keys_claimed: table.keys_claimed(),
            arena_bytes: layout.arena_bytes(),
            pages: table.census_pages(),
            keys,
            statuses,
            status_reports: mh.status_serial.load(Ordering::Relaxed),
            writes: table.writes(),
            guard: GuardSnapshot {
                pid: (buffer.guard_pid != 0).then_some(buffer.guard_pid),
                calls_queued: buffer.queued,
                calls_run: buffer.executed,
                ring_capacity: buffer.capacity,
                last_beat_ns: (buffer.guard_beat != 0).then_some(buffer.guard_beat),
                enabled,
            },
            lock: LockSnapshot::read(&payload[LOCK_OFFSET / 8..]),
            changing,
        })
    }
}

/// Checks a region header's version is a Manager's of this layout.
fn check_version(version: u32) -> Result<(), ShmError> {
    let what = if kind_tag(version) != MANAGER_KIND {
        format!("version word {version:#010x} is not a Manager's")
    } else if version != REGION_VERSION {
        format!(
            "a Manager of layout version {}, this xme reads layout version {MANAGER_LAYOUT} (use the xme that made it)",
            version as u16
        )
    } else {
        return Ok(());
    };
    Err(ShmError::Region(xme_core::Error::HeaderMismatch { what }))
}
