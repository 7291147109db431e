//! The lock's state in shared memory, and the protocol on it.
//!
//! # The protocol
//! - `holder` is the pid of the exclusive holder, 0 when none. Taking the lock
//!   is one compare-and-swap `0 → pid`, so a holder killed at any instruction
//!   is named by the word itself: a waiter that finds the pid dead takes the
//!   lock over with a CAS `dead pid → own pid`. Every write to `holder` is a
//!   read-modify-write, so they form one release sequence.
//! - `readers` has one slot per read guard holding the reader's pid. A reader
//!   sets the sticky `reads_seen` flag, claims a slot, *then* checks `holder`
//!   with a read-modify-write (`CAS 0 → 0`, AcqRel). A writer takes `holder`,
//!   *then* reads `reads_seen` and the slots. If the reader's check comes first
//!   in `holder`'s modification order, the writer's CAS synchronises with it and
//!   sees the slot; otherwise the reader sees the writer and backs off. (A
//!   plain SeqCst load on the reader's side would do on x86, but an RMW makes
//!   the argument hold in the C++ model and lets loom check it.) The writer
//!   keeps `holder` while waiting for readers inside, so new readers back off
//!   and writers are not starved. Locks that never had a reader never scan.
//! - `wake` is an [`EventCount`] (model-checked in `xme_core::sync`): a
//!   sleeper announces itself, takes a ticket, retries, and sleeps only while
//!   the ticket holds; a release notifies, which costs one load when nobody
//!   sleeps, so an uncontended release makes no syscall and a wake-up is
//!   never lost.

use crate::primitive::{AtomicU32, AtomicU64, Ordering};
use xme_core::sync::EventCount;

/// Operators on an AUTHORISATION list, at most.
pub const AUTH_CAPACITY: usize = 32;
/// Read guards held at once, at most (more readers wait for a free slot).
#[cfg(not(loom))]
pub const READER_SLOTS: usize = 64;
/// Fewer slots under loom keep the model's state space small.
#[cfg(loom)]
pub const READER_SLOTS: usize = 2;

pub(crate) const MAGIC: u32 = u32::from_le_bytes(*b"XSEC");
pub(crate) const INITIALISING: u32 = 1;

/// The whole state of one lock: `#[repr(C)]` atomics, placeable in a shared
/// region (see [`Security::in_region`](crate::Security::in_region)). Its size
/// is [`SecurityState::SIZE`].
#[repr(C)]
#[cfg_attr(loom, allow(missing_debug_implementations))] // loom's atomics: no Debug impl here
pub struct SecurityState {
    pub(crate) magic: AtomicU32,
    pub(crate) lock_type: AtomicU32,
    pub(crate) holder: AtomicU32,
    /// Where waiters sleep (two `u32` words: the futex word and the sleepers).
    pub(crate) wake: EventCount,
    pub(crate) auth_len: AtomicU32,
    pub(crate) reads_seen: AtomicU32,
    pub(crate) _pad: AtomicU32,
    pub(crate) holder_op: AtomicU64,
    pub(crate) writer: AtomicU64,
    pub(crate) mute_time_ns: AtomicU64,
    pub(crate) wait_time_ns: AtomicU64,
    pub(crate) auth: [AtomicU64; AUTH_CAPACITY],
    pub(crate) readers: [AtomicU32; READER_SLOTS],
}

#[cfg(not(loom))]
impl std::fmt::Debug for SecurityState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecurityState")
            .field(
                "lock_type",
                &self.lock_type.load(std::sync::atomic::Ordering::Relaxed),
            )
            .field(
                "holder_pid",
                &self.holder.load(std::sync::atomic::Ordering::Relaxed),
            )
            .finish_non_exhaustive()
    }
}

#[cfg(not(loom))]
// SAFETY: all fields are atomics of primitive integers or an `EventCount`
// (itself InRegion: two u32 atomics) (valid for every bit pattern, no
// pointers; `_pad` fills the only gap); all-zero means "not
// initialised", which attach checks, and every other value is range-checked
// where it is used (lock type, auth_len, pids).
unsafe impl xme_core::InRegion for SecurityState {}

// The layout other processes (and older builds) map: the event count took the
// place of two u32 words without moving anything.
#[cfg(not(loom))]
const _: () = assert!(
    std::mem::offset_of!(SecurityState, wake) == 12
        && std::mem::offset_of!(SecurityState, holder_op) == 32
);

/// What a read attempt found.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum ReadTry {
    /// A slot was taken and no writer holds the lock.
    Acquired(usize),
    /// A writer holds the lock (its pid).
    WriterHolds(u32),
    /// Every reader slot is taken.
    NoSlot,
}

impl SecurityState {
    /// Bytes one lock takes in a region.
    pub const SIZE: usize = std::mem::size_of::<SecurityState>();

    /// A fresh, uninitialised state (zero), for loom models and local locks.
    #[cfg(loom)]
    pub fn zeroed() -> SecurityState {
        SecurityState {
            magic: AtomicU32::new(0),
            lock_type: AtomicU32::new(0),
            holder: AtomicU32::new(0),
            wake: EventCount::new(),
            auth_len: AtomicU32::new(0),
            reads_seen: AtomicU32::new(0),
            _pad: AtomicU32::new(0),
            holder_op: AtomicU64::new(0),
            writer: AtomicU64::new(0),
            mute_time_ns: AtomicU64::new(0),
            wait_time_ns: AtomicU64::new(0),
            auth: std::array::from_fn(|_| AtomicU64::new(0)),
            readers: std::array::from_fn(|_| AtomicU32::new(0)),
        }
    }

    /// Takes the exclusive hold for `pid` if nobody has it; else the holder's pid.
    #[inline]
    pub(crate) fn try_lock(&self, pid: u32) -> Result<(), u32> {
        // AcqRel: acquires the previous holder's writes (and a reader's check,
        // see module docs); SeqCst orders it against the sleepers for wake-ups.
        self.holder
            .compare_exchange(0, pid, Ordering::SeqCst, Ordering::SeqCst)
            .map(|_| ())
    }

    /// Takes the hold from a holder found dead.
    pub(crate) fn take_over(&self, dead: u32, pid: u32) -> bool {
        self.holder
            .compare_exchange(dead, pid, Ordering::SeqCst, Ordering::SeqCst)
            .is_ok()
    }

    /// The exclusive holder's pid, 0 if none.
    #[inline]
    pub(crate) fn holder_pid(&self) -> u32 {
        self.holder.load(Ordering::SeqCst)
    }

    /// A reader slot still taken, with its pid, if any. Call while holding
    /// `holder`: a reader that checked `holder` before our CAS is visible here.
    #[inline]
    pub(crate) fn busy_reader(&self) -> Option<(usize, u32)> {
        if self.reads_seen.load(Ordering::Acquire) == 0 {
            return None;
        }
        self.readers.iter().enumerate().find_map(|(i, r)| {
            let pid = r.load(Ordering::Acquire);
            (pid != 0).then_some((i, pid))
        })
    }

    /// Clears slot `slot` if it still holds `dead` (a reader that died).
    pub(crate) fn clear_reader(&self, slot: usize, dead: u32) -> bool {
        let cleared = self.readers[slot]
            .compare_exchange(dead, 0, Ordering::SeqCst, Ordering::SeqCst)
            .is_ok();
        if cleared {
            self.notify();
        }
        cleared
    }

    /// Gives up the exclusive hold of `pid`; false if `pid` did not hold it.
    #[inline]
    pub(crate) fn unlock(&self, pid: u32) -> bool {
        // Release (part of SeqCst): the protected writes happen-before the next
        // holder's successful CAS.
        let ok = self
            .holder
            .compare_exchange(pid, 0, Ordering::SeqCst, Ordering::SeqCst)
            .is_ok();
        if ok {
            self.notify();
        }
        ok
    }

    /// One attempt to take a read slot for `pid`, starting the search at `hint`.
    #[inline]
    pub(crate) fn try_read(&self, pid: u32, hint: usize) -> ReadTry {
        if self.reads_seen.load(Ordering::Relaxed) == 0 {
            // Release: ordered before our slot claim and holder check.
            self.reads_seen.fetch_or(1, Ordering::AcqRel);
        }
        let n = self.readers.len();
        let Some(slot) = (0..n).map(|k| (hint + k) % n).find(|&i| {
            self.readers[i]
                .compare_exchange(0, pid, Ordering::SeqCst, Ordering::Relaxed)
                .is_ok()
        }) else {
            return ReadTry::NoSlot;
        };
        // An RMW, not a load: see the module docs.
        match self
            .holder
            .compare_exchange(0, 0, Ordering::AcqRel, Ordering::Acquire)
        {
            Ok(_) => ReadTry::Acquired(slot),
            Err(writer) => {
                // Back off so the writer (maybe waiting for us) can go on.
                self.readers[slot].store(0, Ordering::SeqCst);
                self.notify();
                ReadTry::WriterHolds(writer)
            }
        }
    }

    /// Leaves read slot `slot`.
    #[inline]
    pub(crate) fn unlock_read(&self, slot: usize) {
        self.readers[slot].store(0, Ordering::SeqCst);
        self.notify();
    }

    /// Tells sleepers something changed. Costs one load when nobody waits.
    #[inline]
    pub(crate) fn notify(&self) {
        self.wake.notify();
    }
}

#[cfg(all(test, loom))]
mod loom_models {
    //! `RUSTFLAGS="--cfg loom" cargo test -p xme-security --release --lib`

    use super::*;
    use loom::sync::Arc;
    use loom::sync::atomic::AtomicUsize;
    use loom::thread;

    fn model(f: impl Fn() + Sync + Send + 'static) {
        xme_core::sync::loom_model(3, f);
    }

    /// The writer's path of `Security::acquire`, waiting by yielding.
    fn lock(s: &SecurityState, pid: u32) {
        while s.try_lock(pid).is_err() {
            thread::yield_now();
        }
        while s.busy_reader().is_some() {
            thread::yield_now();
        }
    }

    #[test]
    fn two_writers_exclude_each_other() {
        model(|| {
            let s = Arc::new(SecurityState::zeroed());
            let inside = Arc::new(AtomicUsize::new(0));
            let hs: Vec<_> = (1..=2u32)
                .map(|pid| {
                    let (s, inside) = (s.clone(), inside.clone());
                    thread::spawn(move || {
                        lock(&s, pid);
                        assert_eq!(inside.fetch_add(1, Ordering::SeqCst), 0);
                        inside.fetch_sub(1, Ordering::SeqCst);
                        assert!(s.unlock(pid));
                    })
                })
                .collect();
            for h in hs {
                h.join().unwrap();
            }
            assert_eq!(s.holder_pid(), 0);
        });
    }

    #[test]
    fn a_reader_and_a_writer_are_never_inside_together() {
        model(|| {
            let s = Arc::new(SecurityState::zeroed());
            let writing = Arc::new(AtomicUsize::new(0));
            let reading = Arc::new(AtomicUsize::new(0));
            let (s2, w2, r2) = (s.clone(), writing.clone(), reading.clone());
            // The reader tries a bounded number of times (an unbounded retry
            // loop explodes loom's state space); exclusion is what is checked.
            let reader = thread::spawn(move || {
                for _ in 0..2 {
                    if let ReadTry::Acquired(slot) = s2.try_read(7, 0) {
                        r2.fetch_add(1, Ordering::SeqCst);
                        assert_eq!(w2.load(Ordering::SeqCst), 0);
                        r2.fetch_sub(1, Ordering::SeqCst);
                        s2.unlock_read(slot);
                        return;
                    }
                    thread::yield_now();
                }
            });
            lock(&s, 1);
            writing.store(1, Ordering::SeqCst);
            assert_eq!(reading.load(Ordering::SeqCst), 0);
            writing.store(0, Ordering::SeqCst);
            assert!(s.unlock(1));
            reader.join().unwrap();
            assert!(s.busy_reader().is_none());
        });
    }

    #[test]
    fn a_dead_holder_is_taken_over_exactly_once() {
        model(|| {
            let s = Arc::new(SecurityState::zeroed());
            s.try_lock(99).unwrap(); // pid 99 "died" holding the lock
            let winners = Arc::new(AtomicUsize::new(0));
            let hs: Vec<_> = (1..=2u32)
                .map(|pid| {
                    let (s, winners) = (s.clone(), winners.clone());
                    thread::spawn(move || {
                        if s.take_over(99, pid) {
                            winners.fetch_add(1, Ordering::SeqCst);
                        }
                    })
                })
                .collect();
            for h in hs {
                h.join().unwrap();
            }
            assert_eq!(winners.load(Ordering::SeqCst), 1);
        });
    }
}
