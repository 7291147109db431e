//! A Monitor read from outside, without changing it (`xme show`): loads
//! only, over any words (a read-only mapping of `/dev/shm/<name>`).

use std::sync::atomic::Ordering;

use serde_json::Value;
use xme_core::inspect::{HeaderSnapshot, RegionFile, kind_tag};
use xme_security::{LockSnapshot, SecurityState};

use crate::MonitorError;
use crate::monitor::{CONTROL_BYTES, Control, REGION_VERSION, load_bytes};

/// The kind tag (high 16 bits of the region header's version) of a
/// Monitor's region: `"MO"`.
pub const MONITOR_KIND: u16 = kind_tag(REGION_VERSION);
/// The Monitor layout version this build reads.
pub const MONITOR_LAYOUT: u16 = REGION_VERSION as u16;

/// Everything `xme show` says about a Monitor.
#[derive(Debug, Clone, PartialEq)]
pub struct MonitorSnapshot {
    /// The region header.
    pub header: HeaderSnapshot,
    /// Bytes the message map may take as JSON text.
    pub capacity: usize,
    /// Bytes of JSON text now.
    pub bytes: usize,
    /// The messages (a JSON object).
    pub messages: Value,
    /// Maps published so far (each write publishes one).
    pub publishes: u64,
    /// The Monitor's lock (`None` if its state is not initialised).
    pub lock: Option<LockSnapshot>,
}

impl MonitorSnapshot {
    /// Reads the Monitor in `file`.
    ///
    /// # Errors
    /// [`MonitorError::Region`] if the file is not an xme region, not a
    /// Monitor's, or a Monitor of another layout version (saying which);
    /// [`MonitorError::BadJson`] if its text is not JSON (a corrupt region).
    ///
    /// ```
    /// use serde_json::json;
    /// use xme_core::inspect::RegionFile;
    /// use xme_monitor::{Monitor, MonitorSnapshot, Operator};
    ///
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let name = format!("xme-doc-monitor-snapshot-{}", std::process::id());
    /// let monitor = Monitor::builder().named(&name).build()?;
    /// monitor.update(json!({"stage": 2}), Operator::ADMIN)?;
    /// let snap = MonitorSnapshot::read(&RegionFile::open(&name)?)?;
    /// assert_eq!(snap.messages, json!({"stage": 2}));
    /// # Ok(())
    /// # }
    /// ```
    pub fn read(file: &RegionFile) -> Result<MonitorSnapshot, MonitorError> {
        let header = file.header()?;
        let what = if kind_tag(header.version) != MONITOR_KIND {
            Some(format!(
                "version word {:#010x} is not a Monitor's",
                header.version
            ))
        } else if header.version != REGION_VERSION {
            Some(format!(
                "a Monitor of layout version {}, this xme reads layout version {MONITOR_LAYOUT} (use the xme that made it)",
                header.version as u16
            ))
        } else {
            None
        };
        if let Some(what) = what {
            return Err(xme_core::Error::HeaderMismatch { what }.into());
        }
        let payload = file.payload();
        let control_word = SecurityState::SIZE.next_multiple_of(64) / 8;
        let data_word = control_word + CONTROL_BYTES / 8;
        let control: &Control = payload
            .get(control_word..)
            .and_then(xme_core::view)
            .ok_or_else(|| MonitorError::Config("the region is too small for a Monitor".into()))?;
        let data = payload.get(data_word..).unwrap_or(&[]);
        let slot_words = data.len() / 2;
        let mut text = Vec::new();
        // Seqlock reader: copy the current copy, keep it if no publish
        // happened meanwhile (a few tries; a busy writer is no error).
        let mut publishes = 0;
        for _ in 0..100 {
            let (stamp, s) = control.map.read_copy_begin();
            let len = (control.len[s].load(Ordering::Relaxed) as usize).min(slot_words * 8);
            load_bytes(&data[s * slot_words..(s + 1) * slot_words], len, &mut text);
            publishes = stamp / 2;
            if control.map.read_validate(stamp) {
                break;
            }
        }
        let messages: Value = serde_json::from_slice(&text).map_err(MonitorError::BadJson)?;
        Ok(MonitorSnapshot {
            header,
            capacity: control.capacity.load(Ordering::Relaxed) as usize,
            bytes: text.len(),
            messages,
            publishes,
            lock: LockSnapshot::read(payload),
        })
    }
}
