//! An event count: sleep until something changes, without a lost wake-up and
//! without a system call on the signalling side while nobody sleeps.

use std::time::Duration;

use super::primitive::{AtomicU32, Ordering};
use crate::futex::Wake;

/// A futex word plus a count of sleepers, placeable in a shared region, so
/// that processes can sleep until another one signals.
///
/// A waiter announces itself ([`prepare_wait`](Self::prepare_wait)), takes a
/// [`ticket`](Sleeper::ticket), looks at its condition once more, and
/// [`wait`](Sleeper::wait)s only if it still does not hold: a
/// [`notify`](Self::notify) after the announcement either changed what the
/// last look saw, or bumps the word so the wait returns at once. A notify
/// that finds no sleeper is one load.
///
/// ```
/// use std::sync::atomic::{AtomicU32, Ordering};
/// use std::time::Duration;
/// use xme_core::{SharedRegion, process, sync::EventCount};
///
/// # fn main() -> Result<(), xme_core::Error> {
/// let region = SharedRegion::anonymous(64)?;
/// let ready: &EventCount = region.place(0)?;
/// let data: &AtomicU32 = region.place(8)?;
/// let child = process::fork_child(|| {
///     data.store(7, Ordering::Release);
///     ready.notify();
///     0
/// })?;
/// while data.load(Ordering::Acquire) == 0 {
///     let sleeper = ready.prepare_wait();
///     let ticket = sleeper.ticket();
///     if data.load(Ordering::Acquire) == 0 {
///         sleeper.wait(ticket, Some(Duration::from_secs(5)));
///     }
/// }
/// assert!(child.wait()?.is_success());
/// # Ok(())
/// # }
/// ```
#[repr(C)]
pub struct EventCount {
    /// The futex word: bumped by each notify that found a sleeper.
    seq: AtomicU32,
    /// Waiters between `prepare_wait` and the end of their wait.
    sleepers: AtomicU32,
    /// Stands in for the kernel's futex queue in loom models.
    #[cfg(loom)]
    queue: loom::sync::Mutex<()>,
    #[cfg(loom)]
    woken: loom::sync::Condvar,
}

#[cfg(not(loom))]
// SAFETY: two `AtomicU32`s in a `#[repr(C)]` struct (no padding, no
// pointers): valid for every bit pattern; any `seq` is a valid count, and a
// wrong `sleepers` costs at most a spurious futex wake or a bounded sleep
// (every caller bounds its waits).
unsafe impl crate::InRegion for EventCount {}

/// Loom treats SeqCst accesses as AcqRel (its documented limitation), which
/// would break the store-load pairs above that SeqCst guarantees; a SeqCst
/// fence, which loom models, restores that guarantee in the models only.
#[inline(always)]
fn loom_sc_fence() {
    #[cfg(loom)]
    super::primitive::fence(Ordering::SeqCst);
}

/// A waiter announced by [`EventCount::prepare_wait`]; dropping it withdraws
/// the announcement.
#[derive(Debug)]
#[must_use = "a Sleeper announces a waiter until it drops"]
pub struct Sleeper<'a> {
    events: &'a EventCount,
}

impl Default for EventCount {
    fn default() -> Self {
        EventCount::new()
    }
}

impl std::fmt::Debug for EventCount {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventCount")
            .field("seq", &self.seq.load(Ordering::Relaxed))
            .field("sleepers", &self.sleepers.load(Ordering::Relaxed))
            .finish()
    }
}

impl EventCount {
    /// A count with no event and no sleeper.
    pub fn new() -> EventCount {
        EventCount {
            seq: AtomicU32::new(0),
            sleepers: AtomicU32::new(0),
            #[cfg(loom)]
            queue: loom::sync::Mutex::new(()),
            #[cfg(loom)]
            woken: loom::sync::Condvar::new(),
        }
    }

    /// Announces a waiter. From now until the [`Sleeper`] drops, every
    /// [`notify`](Self::notify) bumps the word and wakes.
    pub fn prepare_wait(&self) -> Sleeper<'_> {
        // SeqCst: a store-load pair with `notify` (the waiter stores here then
        // loads its condition; the notifier stores its condition then loads
        // `sleepers`): in the single total order one of the two sees the other.
        self.sleepers.fetch_add(1, Ordering::SeqCst);
        loom_sc_fence();
        Sleeper { events: self }
    }

    /// Wakes the sleepers if there are any: call after making the condition
    /// true (with a SeqCst or release store, or a read-modify-write).
    #[inline]
    pub fn notify(&self) {
        // SeqCst: pairs with `prepare_wait` (see there).
        loom_sc_fence();
        if self.sleepers.load(Ordering::SeqCst) > 0 {
            self.notify_all();
        }
    }

    /// [`notify`](Self::notify) on the frequent side of an asymmetric
    /// handshake: a [`fence::light`](crate::fence::light) (`registered`: this
    /// process registered for heavy fences), then a plain look for sleepers,
    /// who use [`Sleeper::ticket_after_heavy_fence`].
    #[cfg(not(loom))]
    #[inline]
    pub fn notify_after_light_fence(&self, registered: bool) {
        crate::fence::light(registered);
        // Relaxed: the light fence above, paired with the sleeper's heavy
        // one, orders the condition's store before this load.
        if self.sleepers.load(Ordering::Relaxed) > 0 {
            self.notify_all();
        }
    }

    /// Loom: the asymmetric pair is modelled as two SeqCst fences, which is
    /// what the heavy fence guarantees the light side (see [`crate::fence`]).
    #[cfg(loom)]
    pub fn notify_after_light_fence(&self, _registered: bool) {
        self.notify();
    }

    /// Bumps the word and wakes every sleeper, announced or not (for a
    /// waiter that may sleep on the word without announcing, or to end all
    /// waits at once).
    #[cold]
    pub fn notify_all(&self) {
        // SeqCst: a ticket taken after this sees the bump; one taken before
        // makes the futex wait return at once.
        self.seq.fetch_add(1, Ordering::SeqCst);
        #[cfg(not(loom))]
        crate::futex::wake(&self.seq, u32::MAX);
        #[cfg(loom)]
        {
            drop(self.queue.lock().unwrap());
            self.woken.notify_all();
        }
    }

    /// How many waiters are announced now (a hint: it changes at any time).
    pub fn sleepers(&self) -> u32 {
        self.sleepers.load(Ordering::Relaxed)
    }
}

impl Sleeper<'_> {
    /// The count to pass to [`wait`](Self::wait): take it, look at the
    /// condition once more, then wait if it still does not hold.
    pub fn ticket(&self) -> u32 {
        // SeqCst: ordered after the announcement (see `prepare_wait`).
        self.events.seq.load(Ordering::SeqCst)
    }

    /// [`ticket`](Self::ticket) after a heavy fence ([`fence::heavy`](crate::fence::heavy)),
    /// for counts whose notifier uses [`EventCount::notify_after_light_fence`].
    #[cfg(not(loom))]
    pub fn ticket_after_heavy_fence(&self) -> u32 {
        crate::fence::heavy();
        self.ticket()
    }

    /// Loom: see [`EventCount::notify_after_light_fence`].
    #[cfg(loom)]
    pub fn ticket_after_heavy_fence(&self) -> u32 {
        loom_sc_fence();
        self.ticket()
    }

    /// Sleeps while the count still is `ticket`, at most `timeout` (`None`:
    /// no limit). Returns early on a notify or a signal: re-check the
    /// condition.
    pub fn wait(&self, ticket: u32, timeout: Option<Duration>) -> Wake {
        #[cfg(not(loom))]
        {
            crate::futex::wait(&self.events.seq, ticket, timeout)
        }
        // Loom: the futex's check-and-sleep is atomic against its wake, which
        // the queue mutex reproduces. Timeouts are ignored, so a lost wake-up
        // shows as a deadlock the model reports.
        #[cfg(loom)]
        {
            let _ = timeout;
            let mut held = self.events.queue.lock().unwrap();
            while self.events.seq.load(Ordering::SeqCst) == ticket {
                held = self.events.woken.wait(held).unwrap();
            }
            Wake::Woken
        }
    }
}

impl Drop for Sleeper<'_> {
    fn drop(&mut self) {
        // SeqCst: keeps the sleepers count in the same total order as the
        // announcements and the notifiers' loads.
        self.events.sleepers.fetch_sub(1, Ordering::SeqCst);
    }
}

#[cfg(all(test, loom))]
mod loom_models {
    //! `RUSTFLAGS="--cfg loom" cargo test -p xme-core --release --lib`

    use super::*;
    use loom::sync::Arc;
    use loom::sync::atomic::AtomicBool;
    use loom::thread;

    fn model(f: impl Fn() + Sync + Send + 'static) {
        crate::sync::loom_model(3, f);
    }

    /// The wait loop every user of an EventCount runs.
    fn wait_until(events: &EventCount, ready: impl Fn() -> bool) {
        while !ready() {
            let sleeper = events.prepare_wait();
            let ticket = sleeper.ticket();
            if ready() {
                break;
            }
            sleeper.wait(ticket, None);
        }
    }

    #[test]
    fn a_notify_is_never_lost() {
        model(|| {
            let events = Arc::new(EventCount::new());
            let flag = Arc::new(AtomicBool::new(false));
            let (e2, f2) = (events.clone(), flag.clone());
            let notifier = thread::spawn(move || {
                f2.store(true, Ordering::SeqCst);
                e2.notify();
            });
            // Deadlocks (reported by loom) if the wake-up were lost.
            wait_until(&events, || flag.load(Ordering::SeqCst));
            notifier.join().unwrap();
            assert_eq!(events.sleepers(), 0);
        });
    }

    #[test]
    fn two_waiters_are_both_woken() {
        model(|| {
            let events = Arc::new(EventCount::new());
            let flag = Arc::new(AtomicBool::new(false));
            let waiters: Vec<_> = (0..2)
                .map(|_| {
                    let (e, f) = (events.clone(), flag.clone());
                    thread::spawn(move || wait_until(&e, || f.load(Ordering::SeqCst)))
                })
                .collect();
            flag.store(true, Ordering::SeqCst);
            events.notify();
            for w in waiters {
                w.join().unwrap();
            }
        });
    }
}
