use std::fmt;
use std::marker::PhantomData;
use std::ptr::NonNull;
use std::sync::Arc;
use std::time::{Duration, Instant};

use xme_core::{Operator, SharedRegion, process};

use crate::lock_guard::{LockGuard, ReadGuard, ReadHold};
use crate::primitive::Ordering;
use crate::state::{AUTH_CAPACITY, INITIALISING, MAGIC, READER_SLOTS, ReadTry, SecurityState};
use crate::wait::Waiter;
use crate::{DEADLOCKMARK_ONLOCK, DEADLOCKMARK_UNLOCK, Deadlock, LockType, SecurityError};

/// A deadlock handler (the seed's `DeadLockFun`): called when a wait gives up
/// or a release is refused, before the error is returned.
pub type DeadLockFun = Arc<dyn Fn(&Deadlock) + Send + Sync>;

/// The seed's default `MuteTime`: 0.1 s.
pub const DEFAULT_MUTE_TIME: Duration = Duration::from_millis(100);

/// How an acquire went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use = "check previous_owner_died: the data the lock protects may be half-written"]
pub struct Acquired {
    /// The previous holder died while holding the lock (its process ended, even
    /// by SIGKILL): the data it protected may be half-updated.
    pub previous_owner_died: bool,
}

/// A lock of one of the five types, shared by processes (the seed's `Security`).
///
/// The state lives in shared memory: a lock made with [`Security::new`] works in
/// every child forked afterwards; one placed with [`Security::in_region`] works
/// in every process that maps the region. Deadlock handlers are per handle.
///
/// ```
/// use xme_core::{Operator, process};
/// use xme_security::{LockType, Security};
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let sec = Security::new(LockType::Mutex)?;
/// let me = Operator::alloc();
/// let guard = sec.lock(me)?;
/// assert!(!guard.previous_owner_died());
/// let child = process::fork_child(|| {
///     // The child sees the parent's hold: a short wait gives up.
///     let other = Operator::alloc();
///     match sec.acquire_timeout(other, std::time::Duration::from_millis(20)) {
///         Err(e) if e.mark().is_some() => 0,
///         _ => 1,
///     }
/// })?;
/// assert!(child.wait()?.is_success());
/// drop(guard);
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct Security<'a> {
    /// The lock's state: borrowed for `'a`, or inside the mapping `_owner`
    /// keeps alive (then `'a` is `'static` and only `state()` reaches it,
    /// with a borrow of `self`).
    state: NonNull<SecurityState>,
    _borrow: PhantomData<&'a SecurityState>,
    on_lock: Option<DeadLockFun>,
    on_unlock: Option<DeadLockFun>,
    /// Keeps the mapping behind `state` alive for locks that own their region.
    _owner: Option<Arc<SharedRegion>>,
}

// SAFETY: a Security hands out only `&SecurityState` (atomics, Sync), valid
// for 'a or while `_owner` lives; the handlers are Send + Sync.
unsafe impl Send for Security<'_> {}
// SAFETY: as above.
unsafe impl Sync for Security<'_> {}

impl fmt::Debug for Security<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Security")
            .field("lock_type", &self.lock_type())
            .field("holder_pid", &self.state().holder_pid())
            .finish()
    }
}

impl Security<'static> {
    /// A lock of `lock_type` in its own anonymous shared memory, shared with
    /// every child forked after this call.
    ///
    /// # Errors
    /// [`SecurityError::Region`] if the shared memory cannot be made.
    ///
    /// ```
    /// use xme_security::{LockType, Operator, Security};
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let sec = Security::new(LockType::Mutex)?;
    /// assert_eq!(sec.lock_type(), LockType::Mutex);
    /// drop(sec.lock(Operator::alloc())?);
    /// # Ok(())
    /// # }
    /// ```
    pub fn new(lock_type: LockType) -> Result<Security<'static>, SecurityError> {
        let region = Arc::new(SharedRegion::anonymous(SecurityState::SIZE)?);
        Security::in_shared_region(region, 0, lock_type)
    }

    /// The lock at `offset` in a region this handle keeps alive (initialised
    /// with `lock_type` if still zero, else attached).
    ///
    /// # Errors
    /// [`SecurityError::Region`] if `offset` is outside the region or misaligned,
    /// [`SecurityError::NotALock`] if the memory there holds something else.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use xme_security::{LockType, Security, SecurityState, SharedRegion};
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let region = Arc::new(SharedRegion::anonymous(2 * SecurityState::SIZE)?);
    /// let first = Security::in_shared_region(region.clone(), 0, LockType::Mutex)?;
    /// let again = Security::in_shared_region(region, 0, LockType::Spin)?; // attached: keeps MUTEX
    /// assert_eq!(again.lock_type(), first.lock_type());
    /// # Ok(())
    /// # }
    /// ```
    pub fn in_shared_region(
        region: Arc<SharedRegion>,
        offset: usize,
        lock_type: LockType,
    ) -> Result<Security<'static>, SecurityError> {
        let sec = Security::from_state(region.place(offset)?, lock_type)?;
        Ok(Security {
            state: sec.state,
            _borrow: PhantomData,
            on_lock: None,
            on_unlock: None,
            _owner: Some(region),
        })
    }
}

impl<'a> Security<'a> {
    /// The lock whose state is at `offset` in `region`: initialised with
    /// `lock_type` if that memory is still zero, else attached as it is.
    ///
    /// # Errors
    /// As [`in_shared_region`](Security::in_shared_region).
    ///
    /// ```
    /// use xme_security::{LockType, Security, SecurityState, SharedRegion};
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let region = SharedRegion::anonymous(SecurityState::SIZE)?;
    /// let sec = Security::in_region(&region, 0, LockType::ReadWrite)?;
    /// assert_eq!(sec.lock_type(), LockType::ReadWrite);
    /// # Ok(())
    /// # }
    /// ```
    pub fn in_region(
        region: &'a SharedRegion,
        offset: usize,
        lock_type: LockType,
    ) -> Result<Security<'a>, SecurityError> {
        Security::from_state(region.place(offset)?, lock_type)
    }

    /// The lock whose state is `state` (embedded in a larger shared structure):
    /// initialised with `lock_type` if still zero, else attached.
    ///
    /// # Errors
    /// [`SecurityError::NotALock`] if `state` holds something other than a lock
    /// (or one still being initialised after a while).
    ///
    /// ```
    /// use xme_security::{LockType, Security, SecurityState, SharedRegion};
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let region = SharedRegion::anonymous(SecurityState::SIZE)?;
    /// let state: &SecurityState = region.place(0)?;
    /// let sec = Security::from_state(state, LockType::Spin)?;
    /// assert_eq!(sec.lock_type(), LockType::Spin);
    /// # Ok(())
    /// # }
    /// ```
    pub fn from_state(
        state: &'a SecurityState,
        lock_type: LockType,
    ) -> Result<Security<'a>, SecurityError> {
        match state
            .magic
            .compare_exchange(0, INITIALISING, Ordering::AcqRel, Ordering::Acquire)
        {
            Ok(_) => {
                state.lock_type.store(lock_type as u32, Ordering::Relaxed);
                state.writer.store(Operator::ADMIN.id(), Ordering::Relaxed);
                state.auth[0].store(Operator::ADMIN.id(), Ordering::Relaxed);
                state.auth_len.store(1, Ordering::Relaxed);
                state
                    .mute_time_ns
                    .store(DEFAULT_MUTE_TIME.as_nanos() as u64, Ordering::Relaxed);
                // Release: whoever sees MAGIC sees the defaults above.
                state.magic.store(MAGIC, Ordering::Release);
            }
            Err(_) => wait_initialised(state)?,
        }
        Ok(Security {
            state: NonNull::from(state),
            _borrow: PhantomData,
            on_lock: None,
            on_unlock: None,
            _owner: None,
        })
    }

    /// The lock's state in shared memory.
    #[inline]
    fn state(&self) -> &SecurityState {
        // SAFETY: `state` came from a `&'a SecurityState` (valid for 'a, which
        // `_borrow` ties this handle to) or from a place in the region that
        // `_owner` keeps mapped for as long as `self` lives; the borrow
        // returned cannot outlive `self`.
        unsafe { self.state.as_ref() }
    }

    /// The lock's current type.
    ///
    /// ```
    /// use xme_security::{LockType, Security};
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// assert_eq!(Security::new(LockType::Disable)?.lock_type(), LockType::Disable);
    /// # Ok(())
    /// # }
    /// ```
    pub fn lock_type(&self) -> LockType {
        LockType::from_raw(self.state().lock_type.load(Ordering::Acquire))
    }

    /// Switches the lock's type (the seed's `update_lock`), for every process.
    ///
    /// A current holder keeps its hold and releases it normally; read guards
    /// stay valid; waiters apply the new type's rules at their next attempt
    /// (an operator no longer allowed is then refused).
    ///
    /// ```
    /// use xme_security::{LockType, Security};
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let sec = Security::new(LockType::Mutex)?;
    /// sec.update_lock(LockType::ReadWrite); // seen by every process sharing the lock
    /// assert_eq!(sec.lock_type(), LockType::ReadWrite);
    /// # Ok(())
    /// # }
    /// ```
    pub fn update_lock(&self, lock_type: LockType) {
        self.state()
            .lock_type
            .store(lock_type as u32, Ordering::Release);
        self.state().notify();
    }

    /// How long a MUTEX, AUTHORISATION or READWRITE waiter sleeps at most
    /// before re-checking (the seed's `MuteTime`): it bounds how late a dead
    /// holder is noticed. Default 0.1 s.
    ///
    /// ```
    /// use std::time::Duration;
    /// use xme_security::{LockType, Security};
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let sec = Security::new(LockType::Mutex)?;
    /// sec.set_mute_time(Duration::from_millis(10));
    /// assert_eq!(sec.mute_time(), Duration::from_millis(10));
    /// # Ok(())
    /// # }
    /// ```
    pub fn set_mute_time(&self, mute: Duration) {
        let ns = mute.as_nanos().clamp(1_000, u64::MAX as u128) as u64;
        self.state().mute_time_ns.store(ns, Ordering::Relaxed);
    }

    /// The current `MuteTime`.
    ///
    /// ```
    /// use xme_security::{DEFAULT_MUTE_TIME, LockType, Security};
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// assert_eq!(Security::new(LockType::Mutex)?.mute_time(), DEFAULT_MUTE_TIME);
    /// # Ok(())
    /// # }
    /// ```
    pub fn mute_time(&self) -> Duration {
        Duration::from_nanos(self.state().mute_time_ns.load(Ordering::Relaxed))
    }

    /// Bounds every wait (the seed's `WaitTime`); `None`, the default, waits
    /// without limit. Past it the deadlock handler runs and a
    /// [`SecurityError::Deadlock`] is returned.
    ///
    /// ```
    /// use std::time::Duration;
    /// use xme_security::{LockType, Operator, Security, SecurityError};
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let sec = Security::new(LockType::Mutex)?;
    /// sec.set_wait_time(Some(Duration::from_millis(20)));
    /// let _held = sec.lock(Operator::alloc())?;
    /// let err = sec.acquire(Operator::alloc()).unwrap_err();
    /// assert!(matches!(err, SecurityError::Deadlock(_)));
    /// # Ok(())
    /// # }
    /// ```
    pub fn set_wait_time(&self, wait: Option<Duration>) {
        let ns = wait.map_or(0, |w| w.as_nanos().clamp(1, u64::MAX as u128) as u64);
        self.state().wait_time_ns.store(ns, Ordering::Relaxed);
    }

    /// The current `WaitTime`.
    ///
    /// ```
    /// use xme_security::{LockType, Security};
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// assert_eq!(Security::new(LockType::Mutex)?.wait_time(), None); // waits without limit
    /// # Ok(())
    /// # }
    /// ```
    pub fn wait_time(&self) -> Option<Duration> {
        match self.state().wait_time_ns.load(Ordering::Relaxed) {
            0 => None,
            ns => Some(Duration::from_nanos(ns)),
        }
    }

    /// Sets this handle's deadlock handlers (the seed's `DeadLockFun(acquire, release)`);
    /// `None` leaves a handler as it is.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use std::sync::atomic::{AtomicBool, Ordering};
    /// use std::time::Duration;
    /// use xme_security::{LockType, Operator, Security};
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let mut sec = Security::new(LockType::Mutex)?;
    /// let called = Arc::new(AtomicBool::new(false));
    /// let seen = called.clone();
    /// sec.dead_lock_fun(None, Some(Arc::new(move |_| seen.store(true, Ordering::SeqCst))));
    /// assert!(sec.release(Operator::alloc()).is_err()); // not held: the release handler runs
    /// assert!(called.load(Ordering::SeqCst));
    /// # let _ = Duration::ZERO;
    /// # Ok(())
    /// # }
    /// ```
    pub fn dead_lock_fun(&mut self, acquire: Option<DeadLockFun>, release: Option<DeadLockFun>) {
        if acquire.is_some() {
            self.on_lock = acquire;
        }
        if release.is_some() {
            self.on_unlock = release;
        }
    }

    /// Adds operators to the AUTHORISATION list (which starts with `ADMIN`).
    /// Capacity: [`AUTH_CAPACITY`]; past it, [`SecurityError::AuthListFull`]
    /// and nothing of this call is added.
    ///
    /// # Errors
    /// [`SecurityError::AuthListFull`] past [`AUTH_CAPACITY`] operators.
    ///
    /// ```
    /// use xme_security::{LockType, Operator, Security, SecurityError};
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let sec = Security::new(LockType::Authorisation)?;
    /// let (allowed, stranger) = (Operator::alloc(), Operator::alloc());
    /// sec.authorize(&[allowed])?;
    /// drop(sec.lock(allowed)?);
    /// assert!(matches!(sec.acquire(stranger), Err(SecurityError::Unauthorised { .. })));
    /// # Ok(())
    /// # }
    /// ```
    pub fn authorize(&self, operators: &[Operator]) -> Result<(), SecurityError> {
        for op in operators {
            if self.is_authorised(*op) {
                continue;
            }
            let i = self.state().auth_len.fetch_add(1, Ordering::AcqRel) as usize;
            if i >= AUTH_CAPACITY {
                self.state().auth_len.fetch_sub(1, Ordering::AcqRel);
                return Err(SecurityError::AuthListFull {
                    capacity: AUTH_CAPACITY,
                });
            }
            self.state().auth[i].store(op.id(), Ordering::Release);
        }
        Ok(())
    }

    /// Whether `op` is on the AUTHORISATION list.
    ///
    /// ```
    /// use xme_security::{LockType, Operator, Security};
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let sec = Security::new(LockType::Authorisation)?;
    /// assert!(sec.is_authorised(Operator::ADMIN)); // the list starts with ADMIN
    /// assert!(!sec.is_authorised(Operator::alloc()));
    /// # Ok(())
    /// # }
    /// ```
    pub fn is_authorised(&self, op: Operator) -> bool {
        let len = (self.state().auth_len.load(Ordering::Acquire) as usize).min(AUTH_CAPACITY);
        self.state().auth[..len]
            .iter()
            .any(|a| a.load(Ordering::Acquire) == op.id())
    }

    /// Makes `op` the only writer of a READWRITE lock (the seed's `registe`;
    /// initially `ADMIN`).
    ///
    /// ```
    /// use xme_security::{LockType, Operator, Security, SecurityError};
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let sec = Security::new(LockType::ReadWrite)?;
    /// let writer = Operator::alloc();
    /// sec.register(writer);
    /// assert_eq!(sec.writer(), writer);
    /// drop(sec.lock(writer)?);
    /// assert!(matches!(sec.acquire(Operator::ADMIN), Err(SecurityError::NotWriter { .. })));
    /// # Ok(())
    /// # }
    /// ```
    pub fn register(&self, op: Operator) {
        self.state().writer.store(op.id(), Ordering::Release);
    }

    /// The registered writer of a READWRITE lock.
    ///
    /// ```
    /// use xme_security::{LockType, Operator, Security};
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// assert_eq!(Security::new(LockType::ReadWrite)?.writer(), Operator::ADMIN);
    /// # Ok(())
    /// # }
    /// ```
    pub fn writer(&self) -> Operator {
        Operator::from_id(self.state().writer.load(Ordering::Acquire)).unwrap_or(Operator::ADMIN)
    }

    /// The exclusive holder's operator and pid, if the lock is held.
    ///
    /// ```
    /// use xme_security::{LockType, Operator, Security};
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let sec = Security::new(LockType::Mutex)?;
    /// let op = Operator::alloc();
    /// let guard = sec.lock(op)?;
    /// assert_eq!(sec.holder(), Some((Some(op), std::process::id())));
    /// drop(guard);
    /// assert_eq!(sec.holder(), None);
    /// # Ok(())
    /// # }
    /// ```
    pub fn holder(&self) -> Option<(Option<Operator>, u32)> {
        match self.state().holder_pid() {
            0 => None,
            pid => Some((
                Operator::from_id(self.state().holder_op.load(Ordering::Acquire)),
                pid,
            )),
        }
    }

    /// Acquires the lock for `op`, waiting at most `WaitTime` (the seed's
    /// `acquire`). Under READWRITE this is the write lock.
    ///
    /// # Errors
    /// [`SecurityError::Deadlock`] past `WaitTime`; [`SecurityError::Unauthorised`]
    /// or [`SecurityError::NotWriter`] at once when the type's rules refuse `op`;
    /// [`SecurityError::AlreadyHeld`] if this process holds it already.
    ///
    /// ```
    /// use xme_security::{LockType, Operator, Security};
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let sec = Security::new(LockType::Mutex)?;
    /// let op = Operator::alloc();
    /// let acquired = sec.acquire(op)?;
    /// assert!(!acquired.previous_owner_died);
    /// sec.release(op)?;
    /// # Ok(())
    /// # }
    /// ```
    #[inline]
    pub fn acquire(&self, op: Operator) -> Result<Acquired, SecurityError> {
        self.acquire_within(op, self.wait_time())
    }

    /// [`acquire`](Self::acquire) with this call's own wait limit.
    ///
    /// # Errors
    /// As [`acquire`](Self::acquire), with `wait` for `WaitTime`.
    ///
    /// ```
    /// use std::time::Duration;
    /// use xme_security::{LockType, Operator, Security, SecurityError};
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let sec = Security::new(LockType::Mutex)?;
    /// let _held = sec.lock(Operator::alloc())?;
    /// let err = sec.acquire_timeout(Operator::alloc(), Duration::from_millis(10)).unwrap_err();
    /// assert!(matches!(err, SecurityError::Deadlock(_)));
    /// # Ok(())
    /// # }
    /// ```
    #[inline]
    pub fn acquire_timeout(&self, op: Operator, wait: Duration) -> Result<Acquired, SecurityError> {
        self.acquire_within(op, Some(wait))
    }

    /// Releases the lock held by `op` (the seed's `release`). Refused, after the
    /// release deadlock handler runs, if `op` does not hold it.
    ///
    /// # Errors
    /// [`SecurityError::NotHolder`] if `op` in this process does not hold it.
    ///
    /// ```
    /// use xme_security::{LockType, Operator, Security, SecurityError};
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let sec = Security::new(LockType::Mutex)?;
    /// let (a, b) = (Operator::alloc(), Operator::alloc());
    /// sec.acquire(a)?;
    /// assert!(matches!(sec.release(b), Err(SecurityError::NotHolder { .. })));
    /// sec.release(a)?;
    /// # Ok(())
    /// # }
    /// ```
    #[inline]
    pub fn release(&self, op: Operator) -> Result<(), SecurityError> {
        let pid = process::current_pid();
        if self.state().holder_pid() == pid
            && self.state().holder_op.load(Ordering::Acquire) == op.id()
        {
            self.state().holder_op.store(0, Ordering::Relaxed);
            self.state().unlock(pid);
            return Ok(());
        }
        self.release_refused(op)
    }

    #[cold]
    fn release_refused(&self, op: Operator) -> Result<(), SecurityError> {
        if self.lock_type() == LockType::Disable {
            return Ok(());
        }
        let holder_pid = Some(self.state().holder_pid()).filter(|&p| p != 0);
        self.run_handler(
            &self.on_unlock,
            DEADLOCKMARK_UNLOCK,
            op,
            Duration::ZERO,
            holder_pid,
        );
        Err(SecurityError::NotHolder {
            operator: op,
            holder: holder_pid
                .and_then(|_| Operator::from_id(self.state().holder_op.load(Ordering::Acquire))),
        })
    }

    /// Acquires and returns a guard that releases on drop.
    ///
    /// # Errors
    /// As [`acquire`](Self::acquire).
    ///
    /// ```
    /// use xme_security::{LockType, Operator, Security};
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let sec = Security::new(LockType::Mutex)?;
    /// {
    ///     let guard = sec.lock(Operator::alloc())?;
    ///     assert!(!guard.previous_owner_died());
    /// } // released here
    /// assert_eq!(sec.holder(), None);
    /// # Ok(())
    /// # }
    /// ```
    #[inline]
    pub fn lock(&self, op: Operator) -> Result<LockGuard<'_>, SecurityError> {
        self.acquire(op).map(|a| LockGuard::new(self, op, a))
    }

    /// [`lock`](Self::lock) with this call's own wait limit.
    ///
    /// # Errors
    /// As [`acquire_timeout`](Self::acquire_timeout).
    ///
    /// ```
    /// use std::time::Duration;
    /// use xme_security::{LockType, Operator, Security};
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let sec = Security::new(LockType::Spin)?;
    /// let guard = sec.lock_timeout(Operator::alloc(), Duration::from_secs(1))?;
    /// guard.release()?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn lock_timeout(
        &self,
        op: Operator,
        wait: Duration,
    ) -> Result<LockGuard<'_>, SecurityError> {
        self.acquire_timeout(op, wait)
            .map(|a| LockGuard::new(self, op, a))
    }

    /// A read guard. Under READWRITE, any operator may read, concurrently with
    /// other readers; under the exclusive types a read is an exclusive hold (with
    /// that type's rules); under DISABLE it always succeeds.
    ///
    /// Do not take the write lock while holding a read guard in the same
    /// process: the writer would wait for itself until `WaitTime`.
    ///
    /// # Errors
    /// Under READWRITE, [`SecurityError::Deadlock`] past `WaitTime` while a writer
    /// holds it; under the exclusive types, as [`acquire`](Self::acquire).
    ///
    /// ```
    /// use xme_security::{LockType, Operator, Security};
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let sec = Security::new(LockType::ReadWrite)?;
    /// let (r1, r2) = (sec.read(Operator::alloc())?, sec.read(Operator::alloc())?);
    /// assert!(r1.is_shared() && r2.is_shared()); // readers share the lock
    /// # Ok(())
    /// # }
    /// ```
    #[inline]
    pub fn read(&self, op: Operator) -> Result<ReadGuard<'_>, SecurityError> {
        if self.lock_type() == LockType::ReadWrite {
            // Fast path: no writer, a free slot.
            let pid = process::current_pid();
            if let ReadTry::Acquired(slot) = self.state().try_read(pid, pid as usize % READER_SLOTS)
            {
                return Ok(ReadGuard::new(self, ReadHold::Shared(slot), false));
            }
        }
        self.read_within(op, self.wait_time())
    }

    /// [`read`](Self::read) with this call's own wait limit.
    ///
    /// # Errors
    /// As [`read`](Self::read), with `wait` for `WaitTime`.
    ///
    /// ```
    /// use std::time::Duration;
    /// use xme_security::{LockType, Operator, Security};
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let sec = Security::new(LockType::ReadWrite)?;
    /// let guard = sec.read_timeout(Operator::alloc(), Duration::from_secs(1))?;
    /// assert!(guard.is_shared());
    /// # Ok(())
    /// # }
    /// ```
    pub fn read_timeout(
        &self,
        op: Operator,
        wait: Duration,
    ) -> Result<ReadGuard<'_>, SecurityError> {
        self.read_within(op, Some(wait))
    }

    #[cold]
    fn read_within(
        &self,
        op: Operator,
        limit: Option<Duration>,
    ) -> Result<ReadGuard<'_>, SecurityError> {
        match self.lock_type() {
            LockType::Disable => return Ok(ReadGuard::new(self, ReadHold::Disabled, false)),
            LockType::ReadWrite => {}
            _ => {
                let a = self.acquire_within(op, limit)?;
                return Ok(ReadGuard::new(
                    self,
                    ReadHold::Exclusive(LockGuard::new(self, op, a)),
                    a.previous_owner_died,
                ));
            }
        }
        let pid = process::current_pid();
        let hint = pid as usize % READER_SLOTS;
        let mut waiter = self.waiter(false, limit);
        let mut died = false;
        loop {
            let seen = waiter.seen();
            if self.lock_type() != LockType::ReadWrite {
                // The type changed while we waited: read under its rules,
                // within what is left of the wait.
                let left = limit.map(|l| l.saturating_sub(waiter.start().elapsed()));
                return self.read_within(op, left);
            }
            match self.state().try_read(pid, hint) {
                ReadTry::Acquired(slot) => {
                    return Ok(ReadGuard::new(self, ReadHold::Shared(slot), died));
                }
                ReadTry::WriterHolds(writer) => {
                    if writer != pid
                        && waiter.liveness_due()
                        && !process::is_alive(writer as i32)
                        && self.state().take_over(writer, 0)
                    {
                        self.state().holder_op.store(0, Ordering::Release);
                        self.state().notify();
                        died = true;
                        continue;
                    }
                }
                ReadTry::NoSlot => {
                    if waiter.liveness_due() {
                        self.clear_dead_readers();
                    }
                }
            }
            if waiter.pause(seen).is_err() {
                return Err(self.give_up(op, &waiter));
            }
        }
    }

    /// The uncontended path, inlined: one CAS for MUTEX, SPIN and the READWRITE
    /// writer when the lock is free and no reader was ever seen.
    #[inline]
    fn acquire_within(
        &self,
        op: Operator,
        limit: Option<Duration>,
    ) -> Result<Acquired, SecurityError> {
        let lock_type = self.lock_type();
        let fast = match lock_type {
            LockType::Disable => {
                return Ok(Acquired {
                    previous_owner_died: false,
                });
            }
            LockType::Mutex | LockType::Spin => true,
            LockType::ReadWrite => self.state().writer.load(Ordering::Acquire) == op.id(),
            LockType::Authorisation => false,
        };
        if fast {
            let pid = process::current_pid();
            if self.state().try_lock(pid).is_ok() {
                if self.state().busy_reader().is_none() {
                    self.state().holder_op.store(op.id(), Ordering::Release);
                    return Ok(Acquired {
                        previous_owner_died: false,
                    });
                }
                // Readers inside: give the word back and take the full path.
                self.state().unlock(pid);
            }
        }
        self.acquire_slow(op, limit)
    }

    /// The rules as they stand now, for `op`: the lock type if `op` may take
    /// the lock under it, else the refusal. Waiters call it at every attempt,
    /// so `update_lock`, `register` and `authorize` reach them mid-wait.
    fn admit(&self, op: Operator) -> Result<LockType, SecurityError> {
        let lock_type = self.lock_type();
        match lock_type {
            LockType::Authorisation if !self.is_authorised(op) => {
                Err(SecurityError::Unauthorised { operator: op })
            }
            LockType::ReadWrite if self.writer() != op => Err(SecurityError::NotWriter {
                operator: op,
                writer: self.writer(),
            }),
            _ => Ok(lock_type),
        }
    }

    #[cold]
    fn acquire_slow(
        &self,
        op: Operator,
        limit: Option<Duration>,
    ) -> Result<Acquired, SecurityError> {
        let free = Acquired {
            previous_owner_died: false,
        };
        if self.admit(op)? == LockType::Disable {
            return Ok(free);
        }
        let pid = process::current_pid();
        let spin_only = self.lock_type() == LockType::Spin;
        let mut died = false;
        // 1. Take the holder word: one CAS when the lock is free.
        if let Err(holder) = self.state().try_lock(pid) {
            if holder == pid && self.state().holder_op.load(Ordering::Acquire) == op.id() {
                return Err(SecurityError::AlreadyHeld { operator: op });
            }
            let mut waiter = self.waiter(spin_only, limit);
            loop {
                let seen = waiter.seen();
                // The rules may have changed while we waited.
                if self.admit(op)? == LockType::Disable {
                    return Ok(free);
                }
                match self.state().try_lock(pid) {
                    Ok(()) => break,
                    Err(other) => {
                        if other != pid
                            && waiter.liveness_due()
                            && !process::is_alive(other as i32)
                            && self.state().take_over(other, pid)
                        {
                            died = true;
                            break;
                        }
                        if waiter.pause(seen).is_err() {
                            return Err(self.give_up(op, &waiter));
                        }
                    }
                }
            }
        }
        // The word is ours: the rules are checked once more, since a change
        // made while we took it must not let a refused operator in.
        match self.admit(op) {
            Ok(LockType::Disable) => {
                self.state().unlock(pid);
                return Ok(free);
            }
            Ok(_) => {}
            Err(refused) => {
                self.state().unlock(pid);
                return Err(refused);
            }
        }
        // 2. Wait for readers inside to leave (new ones back off from us).
        if self.state().busy_reader().is_some() {
            let mut waiter = self.waiter(spin_only, limit);
            loop {
                let seen = waiter.seen();
                let Some((slot, reader)) = self.state().busy_reader() else {
                    break;
                };
                if let Err(refused) = self.admit(op) {
                    self.state().unlock(pid);
                    return Err(refused);
                }
                if waiter.liveness_due() && !process::is_alive(reader as i32) {
                    self.state().clear_reader(slot, reader);
                    continue;
                }
                if waiter.pause(seen).is_err() {
                    self.state().unlock(pid);
                    return Err(self.give_up(op, &waiter));
                }
            }
        }
        self.state().holder_op.store(op.id(), Ordering::Release);
        Ok(Acquired {
            previous_owner_died: died,
        })
    }

    fn waiter(&self, spin_only: bool, limit: Option<Duration>) -> Waiter<'_> {
        Waiter::new(self.state(), spin_only, limit, self.mute_time())
    }

    fn clear_dead_readers(&self) {
        for (slot, r) in self.state().readers.iter().enumerate() {
            let pid = r.load(Ordering::SeqCst);
            if pid != 0 && !process::is_alive(pid as i32) {
                self.state().clear_reader(slot, pid);
            }
        }
    }

    fn give_up(&self, op: Operator, waiter: &Waiter<'_>) -> SecurityError {
        let holder_pid = Some(self.state().holder_pid()).filter(|&p| p != 0);
        let waited = waiter.start().elapsed();
        self.run_handler(&self.on_lock, DEADLOCKMARK_ONLOCK, op, waited, holder_pid);
        SecurityError::Deadlock(Deadlock {
            mark: DEADLOCKMARK_ONLOCK,
            operator: op,
            waited,
            holder_pid,
        })
    }

    fn run_handler(
        &self,
        handler: &Option<DeadLockFun>,
        mark: &'static str,
        operator: Operator,
        waited: Duration,
        holder_pid: Option<u32>,
    ) {
        if let Some(h) = handler {
            h(&Deadlock {
                mark,
                operator,
                waited,
                holder_pid,
            });
        }
    }

    pub(crate) fn release_read_slot(&self, slot: usize) {
        self.state().unlock_read(slot);
    }
}

/// Waits for another process to finish initialising the state; a creator that
/// died half-way leaves it unusable, reported rather than waited on forever.
fn wait_initialised(state: &SecurityState) -> Result<(), SecurityError> {
    let t = Instant::now();
    loop {
        match state.magic.load(Ordering::Acquire) {
            MAGIC => return Ok(()),
            INITIALISING if t.elapsed() < Duration::from_secs(1) => std::thread::yield_now(),
            INITIALISING => {
                return Err(SecurityError::NotALock(
                    "its creator died while initialising it".into(),
                ));
            }
            other => {
                return Err(SecurityError::NotALock(format!(
                    "magic word {other:#x}, expected {MAGIC:#x}"
                )));
            }
        }
    }
}
