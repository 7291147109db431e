//! The status table (`__STATUS__`, one key per operator, pruned past
//! `status_keep`) and the Guard's status (`__GUARD__`).

use std::sync::atomic::Ordering;

use xme_core::{Operator, process};

use super::keys::{
    GUARD_KEY, GuardTable, ProcessStatus, STATUS_PREFIX, StatusTable, decode, encode,
    is_status_key, status_key, status_limit,
};
use super::{Manager, ManagerHeader};
use crate::ShmError;
use crate::store::table::Stored;

impl Manager {
    /// Records `status` for `op` in `__STATUS__` (the seed's `status`).
    ///
    /// Each operator's entry is a key of its own: recording never fails for
    /// the status table's size. Past the builder's
    /// [`status_keep`](crate::XmemBuilder::status_keep) plus a quarter, the oldest
    /// entries are pruned (ended processes' first).
    ///
    /// # Errors
    /// [`ShmError::ArenaFull`] if the arena has no room for the entry;
    /// [`ShmError::CapacityFull`] only if other keys, beyond the builder's
    /// [`capacity`](crate::XmemBuilder::capacity), took the status room:
    /// the table adds that room to the capacity but does not keep the two
    /// apart, so size `capacity` for every key you set.
    ///
    /// ```
    /// use xme_shm::{Operator, ShmError, XmemBuilder};
    /// # fn main() -> Result<(), xme_shm::ShmError> {
    /// let xmem = XmemBuilder::new().build()?;
    /// let op = xmem.alloc_operator();
    /// xmem.status(op, "loading")?;
    /// xmem.status(op, "ready")?;
    /// assert_eq!(xmem.statuses()?[&op].status, "ready");
    /// # Ok(())
    /// # }
    /// ```
    pub fn status(&self, op: Operator, status: &str) -> Result<(), ShmError> {
        self.record_status(op, ProcessStatus::now(status))
    }

    /// Stores `entry` as `op`'s status. A heartbeat (`beat`) leaves an
    /// entry that is its operator's last word unchanged.
    pub(crate) fn record_status_as(
        &self,
        op: Operator,
        mut entry: ProcessStatus,
        beat: bool,
    ) -> Result<(), ShmError> {
        let key = status_key(op);
        entry.serial = self.header().status_serial.fetch_add(1, Ordering::Relaxed) + 1;
        let bytes = encode(&key, &entry)?;
        let pid = process::current_pid();
        let store = || -> Result<Stored, ShmError> {
            if !beat {
                return self.table().set(&key, &bytes, pid);
            }
            let mut inserted = false;
            self.table().update(&key, pid, |old| {
                inserted = old.is_none();
                let last_word = old
                    .and_then(|b| decode::<ProcessStatus>(&key, b).ok())
                    .is_some_and(|s| s.last_word);
                Ok::<_, ShmError>((!last_word).then(|| bytes.clone()))
            })??;
            Ok(if inserted {
                Stored::Inserted
            } else {
                Stored::Replaced
            })
        };
        let stored = match store() {
            Err(ShmError::CapacityFull { .. }) => {
                // Status entries have room of their own, unless other keys
                // took it: prune to the limit and try once more.
                self.prune_statuses(true);
                store()?
            }
            other => other?,
        };
        if stored == Stored::Inserted {
            let count = self.header().status_count.fetch_add(1, Ordering::Relaxed) + 1;
            let keep = self.header().status_keep.load(Ordering::Relaxed) as usize;
            if count as usize > status_limit(keep) {
                self.prune_statuses(false);
            }
        }
        Ok(())
    }

    pub(crate) fn record_status(&self, op: Operator, entry: ProcessStatus) -> Result<(), ShmError> {
        self.record_status_as(op, entry, false)
    }

    fn header(&self) -> &ManagerHeader {
        // The header was placed at build; it is always there.
        self.region.place(0).expect("the Manager header is mapped")
    }

    /// Deletes the oldest status entries until `status_keep` remain: those
    /// of processes that ended first, then the oldest reports. One process
    /// prunes at a time; the others go on (unless `wait`).
    fn prune_statuses(&self, wait: bool) {
        let header = self.header();
        let word = &header.prune_lock;
        let patience = std::time::Duration::from_secs(if wait { 1 } else { 0 });
        let Ok(_lock) = xme_core::sync::PidLock::take_within(word, patience) else {
            return; // another process prunes
        };
        let keep = header.status_keep.load(Ordering::Relaxed) as usize;
        let Ok(entries) = self
            .table()
            .entries_where(is_status_key, process::current_pid())
        else {
            return;
        };
        // Most entries share a few pids: ask the kernel once for each.
        let mut alive = std::collections::HashMap::new();
        let mut entries: Vec<(bool, u64, String)> = entries
            .into_iter()
            .map(|(key, bytes)| {
                let s = decode::<ProcessStatus>(&key, &bytes).ok();
                let running = s.as_ref().is_some_and(|s| {
                    *alive
                        .entry(s.pid)
                        .or_insert_with(|| process::is_alive(s.pid as i32))
                });
                (running, s.map_or(0, |s| s.serial), key)
            })
            .collect();
        let total = entries.len();
        entries.sort();
        let pid = process::current_pid();
        let mut deleted = 0;
        for (_, _, key) in entries.iter().take(total.saturating_sub(keep)) {
            if self.table().delete(key, pid).unwrap_or(false) {
                deleted += 1;
            }
        }
        // Recount (a process killed between a store and its count leaves the
        // count off): entries inserted meanwhile are counted by their inserter.
        header
            .status_count
            .store((total - deleted) as u64, Ordering::Relaxed);
    }

    /// The status table (`__STATUS__`): every operator's last report.
    ///
    /// # Errors
    /// [`ShmError::BadLayout`] if the table is corrupt.
    ///
    /// ```
    /// use xme_shm::{Operator, ShmError, XmemBuilder};
    /// # fn main() -> Result<(), xme_shm::ShmError> {
    /// let xmem = XmemBuilder::new().build()?;
    /// let op = xmem.alloc_operator();
    /// xmem.status(op, "working")?;
    /// let table = xmem.statuses()?;
    /// assert_eq!(table[&op].pid, std::process::id());
    /// # Ok(())
    /// # }
    /// ```
    pub fn statuses(&self) -> Result<StatusTable, ShmError> {
        self.table()
            .entries_where(is_status_key, process::current_pid())?
            .into_iter()
            .map(|(key, bytes)| {
                let op = key[STATUS_PREFIX.len()..]
                    .parse::<Operator>()
                    .map_err(|_| {
                        ShmError::BadLayout(format!("status key {key:?} names no operator"))
                    })?;
                Ok((op, decode::<ProcessStatus>(&key, &bytes)?))
            })
            .collect()
    }

    /// `__GUARD__["Status"]`: whether the Guard should keep running.
    ///
    /// # Errors
    /// As [`get`](Self::get) for `__GUARD__`.
    ///
    /// ```
    /// use xme_shm::{Operator, ShmError, XmemBuilder};
    /// # fn main() -> Result<(), xme_shm::ShmError> {
    /// let xmem = XmemBuilder::new().build()?;
    /// xmem.set_guard_status(true)?;
    /// assert!(xmem.guard_status()?);
    /// # Ok(())
    /// # }
    /// ```
    pub fn guard_status(&self) -> Result<bool, ShmError> {
        Ok(self
            .get::<GuardTable>(GUARD_KEY)?
            .get("Status")
            .copied()
            .unwrap_or(false))
    }

    /// Sets `__GUARD__["Status"]`.
    ///
    /// # Errors
    /// As [`update_with`](Self::update_with).
    ///
    /// ```
    /// use xme_shm::{Operator, ShmError, XmemBuilder};
    /// # fn main() -> Result<(), xme_shm::ShmError> {
    /// let xmem = XmemBuilder::new().build()?;
    /// xmem.set_guard_status(false)?; // a Guard serving the buffer stops at its next look
    /// assert!(!xmem.guard_status()?);
    /// # Ok(())
    /// # }
    /// ```
    pub fn set_guard_status(&self, running: bool) -> Result<(), ShmError> {
        self.update_with_as(GUARD_KEY, true, |t: Option<GuardTable>| {
            let mut t = t.unwrap_or_default();
            t.insert("Status".to_string(), running);
            t
        })
        .map(drop)
    }
}
