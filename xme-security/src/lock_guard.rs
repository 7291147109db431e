use xme_core::Operator;

use crate::{Acquired, Security, SecurityError};

/// An exclusive hold (a write hold under READWRITE); released on drop.
#[must_use = "the lock is released when the guard is dropped"]
pub struct LockGuard<'l> {
    sec: &'l Security<'l>,
    op: Operator,
    died: bool,
    held: bool,
}

impl std::fmt::Debug for LockGuard<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LockGuard")
            .field("operator", &self.op)
            .field("previous_owner_died", &self.died)
            .field("held", &self.held)
            .finish()
    }
}

impl<'l> LockGuard<'l> {
    #[inline]
    pub(crate) fn new(sec: &'l Security<'l>, op: Operator, a: Acquired) -> Self {
        LockGuard {
            sec,
            op,
            died: a.previous_owner_died,
            held: true,
        }
    }

    /// The previous holder died holding the lock: check the data it protects.
    pub fn previous_owner_died(&self) -> bool {
        self.died
    }

    /// The operator holding this guard.
    pub fn operator(&self) -> Operator {
        self.op
    }

    /// Releases now, reporting a failure (dropping the guard releases too).
    pub fn release(mut self) -> Result<(), SecurityError> {
        self.held = false;
        self.sec.release(self.op)
    }
}

impl Drop for LockGuard<'_> {
    #[inline]
    fn drop(&mut self) {
        if self.held {
            // Cannot fail: this guard's operator holds the lock in this process.
            let _ = self.sec.release(self.op);
        }
    }
}

pub(crate) enum ReadHold<'l> {
    Shared(usize),
    Exclusive(#[expect(dead_code, reason = "held for its Drop, which releases")] LockGuard<'l>),
    Disabled,
}

/// A read hold: shared under READWRITE, exclusive under the exclusive types;
/// released on drop.
#[must_use = "the read hold is released when the guard is dropped"]
pub struct ReadGuard<'l> {
    sec: &'l Security<'l>,
    hold: ReadHold<'l>,
    died: bool,
}

impl std::fmt::Debug for ReadGuard<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReadGuard")
            .field("previous_owner_died", &self.died)
            .finish_non_exhaustive()
    }
}

impl<'l> ReadGuard<'l> {
    #[inline]
    pub(crate) fn new(sec: &'l Security<'l>, hold: ReadHold<'l>, died: bool) -> Self {
        ReadGuard { sec, hold, died }
    }

    /// A writer died holding the lock before this read: the data may be half-written.
    pub fn previous_owner_died(&self) -> bool {
        self.died
    }

    /// True when other readers may hold the lock at the same time.
    pub fn is_shared(&self) -> bool {
        matches!(self.hold, ReadHold::Shared(_))
    }
}

impl Drop for ReadGuard<'_> {
    #[inline]
    fn drop(&mut self) {
        if let ReadHold::Shared(slot) = self.hold {
            self.sec.release_read_slot(slot);
        }
    }
}
