//! A lock's state read from outside, without touching it (for tools such
//! as the `xme` command, over a read-only mapping: only loads).

use std::sync::atomic::{AtomicU64, Ordering};

use xme_core::Operator;

use crate::LockType;
use crate::state::{AUTH_CAPACITY, MAGIC, SecurityState};

/// What a lock's state held when read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockSnapshot {
    /// The lock's type.
    pub lock_type: LockType,
    /// The exclusive holder: its pid and, when recorded, its operator.
    pub holder: Option<(u32, Option<Operator>)>,
    /// Pids holding a read guard.
    pub readers: Vec<u32>,
    /// Waiters asleep on the lock now (spinning waiters are not counted).
    pub waiters: u32,
    /// The registered writer of a READWRITE lock.
    pub writer: Operator,
    /// The AUTHORISATION list.
    pub authorised: Vec<Operator>,
}

impl LockSnapshot {
    /// Reads the lock whose state starts at `words[0]`; `None` if the words
    /// are too few or hold no initialised lock.
    ///
    /// ```
    /// use std::sync::atomic::AtomicU64;
    /// use xme_security::{LockSnapshot, LockType, Operator, Security, SecurityState, SharedRegion};
    ///
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let region = SharedRegion::anonymous(SecurityState::SIZE)?;
    /// let sec = Security::in_region(&region, 0, LockType::Mutex)?;
    /// let op = Operator::alloc();
    /// let guard = sec.lock(op)?;
    /// let words: &[AtomicU64] = region.slice(0, SecurityState::SIZE / 8)?;
    /// let snap = LockSnapshot::read(words).unwrap();
    /// assert_eq!(snap.lock_type, LockType::Mutex);
    /// assert_eq!(snap.holder, Some((std::process::id(), Some(op))));
    /// drop(guard);
    /// assert_eq!(LockSnapshot::read(words).unwrap().holder, None);
    /// assert!(LockSnapshot::read(&[AtomicU64::new(0)]).is_none());
    /// # Ok(())
    /// # }
    /// ```
    pub fn read(words: &[AtomicU64]) -> Option<LockSnapshot> {
        let s: &SecurityState = xme_core::view(words)?;
        if s.magic.load(Ordering::Acquire) != MAGIC {
            return None;
        }
        let holder = match s.holder.load(Ordering::Acquire) {
            0 => None,
            pid => Some((pid, Operator::from_id(s.holder_op.load(Ordering::Relaxed)))),
        };
        let auth_len = (s.auth_len.load(Ordering::Relaxed) as usize).min(AUTH_CAPACITY);
        Some(LockSnapshot {
            lock_type: LockType::from_raw(s.lock_type.load(Ordering::Relaxed)),
            holder,
            readers: s
                .readers
                .iter()
                .map(|r| r.load(Ordering::Relaxed))
                .filter(|&pid| pid != 0)
                .collect(),
            waiters: s.wake.sleepers(),
            writer: Operator::from_id(s.writer.load(Ordering::Relaxed)).unwrap_or(Operator::ADMIN),
            authorised: s.auth[..auth_len]
                .iter()
                .filter_map(|a| Operator::from_id(a.load(Ordering::Relaxed)))
                .collect(),
        })
    }
}
