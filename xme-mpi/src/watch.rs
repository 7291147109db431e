//! Failure detection and deadlines: how the main process learns that a
//! logical process died, stopped answering, or runs a call past its
//! deadline.
//!
//! Each logical process runs a *watcher* thread beside its serving loop. The
//! loop counts calls in a [`CallClock`] (two plain stores per call); the
//! watcher, every tick:
//! - beats: a forked process bumps [`Watch::beats`] in shared memory, a rank
//!   sends rank 0 a message (and watches rank 0's beats in turn);
//! - with a deadline set, sees whether the same call has been running for
//!   longer than it, and if so reports it once ([`Watch::overdue_unit`]).
//!
//! The main process reads its copy of each [`Watch`] (the shared words for a
//! forked process; for a rank, words rank 0's monitor thread keeps from the
//! messages) whenever a wait for that process comes up empty: an overdue
//! call ends the process (killed if forked, declared hung if a rank), and
//! beats that stop for three quarters of the run's detection bound end it as
//! unresponsive. Beats come every quarter of the bound: a death is noticed
//! within the bound, and a busy machine must delay a watcher by three beats
//! in a row to be mistaken for a dead process.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// The words the main process reads about one logical process. For a forked
/// process they lie in the run's shared region and the process writes them;
/// for a rank they are rank 0's own, kept from the rank's messages.
#[repr(C)]
#[derive(Default)]
pub(crate) struct Watch {
    /// The process's state (`logical::ST_*`), when it shares memory with us.
    pub(crate) status: AtomicU32,
    /// Id + 1 (in the process's own numbering) of the unit of a call that
    /// ran past the deadline; 0: none. Written last, with release.
    pub(crate) overdue_unit: AtomicU32,
    /// Counts up while the process lives.
    pub(crate) beats: AtomicU64,
    /// How long the overdue call had run when reported, in milliseconds.
    pub(crate) overdue_ms: AtomicU64,
    /// The overdue call's request slot, and its place in a batch (0 alone).
    pub(crate) overdue_slot: AtomicU32,
    pub(crate) overdue_position: AtomicU32,
}

/// A call that ran past the deadline, as its process reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) struct Overdue {
    /// The unit, in the process's own numbering.
    pub(crate) unit: u32,
    /// The request's slot.
    pub(crate) slot: u32,
    /// The call's place in a batch request (0 for a single call).
    pub(crate) position: u32,
    /// How long it had run when reported.
    pub(crate) ran: Duration,
}

// SAFETY: only integer atomics (valid for every bit pattern, no pointers);
// zero is a process that has not started, every value is checked where read.
unsafe impl xme_core::InRegion for Watch {}

impl Watch {
    /// The overdue call, once reported.
    pub(crate) fn overdue(&self) -> Option<Overdue> {
        match self.overdue_unit.load(Ordering::Acquire) {
            0 => None,
            unit => Some(Overdue {
                unit: unit - 1,
                slot: self.overdue_slot.load(Ordering::Relaxed),
                position: self.overdue_position.load(Ordering::Relaxed),
                ran: Duration::from_millis(self.overdue_ms.load(Ordering::Relaxed)),
            }),
        }
    }

    /// Records an overdue call (see [`Heart::overdue`]): the details first,
    /// the unit last, with release, so a reader that sees it sees them.
    pub(crate) fn set_overdue(&self, call: Overdue) {
        self.overdue_ms
            .store(call.ran.as_millis() as u64, Ordering::Relaxed);
        self.overdue_slot.store(call.slot, Ordering::Relaxed);
        self.overdue_position
            .store(call.position, Ordering::Relaxed);
        self.overdue_unit
            .store(call.unit.wrapping_add(1).max(1), Ordering::Release);
    }
}

/// How the watcher of a logical process works: beat every `period` (a
/// quarter of the detection bound); with a `deadline`, look at the running
/// call every eighth of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) struct WatchPlan {
    pub(crate) detection: Duration,
    pub(crate) deadline: Option<Duration>,
}

impl WatchPlan {
    pub(crate) fn period(&self) -> Duration {
        self.detection / 4
    }

    /// How long without a new beat means lost: three periods. The last beat
    /// came at most a period before a death, so the death is noticed within
    /// the detection bound; three beats missed in a row is no scheduling
    /// hiccup.
    pub(crate) fn silence_limit(&self) -> Duration {
        self.detection - self.period()
    }

    /// How often rank 0's monitor reads the ranks' notes: a note is seen at
    /// most this late.
    #[cfg_attr(not(feature = "cluster"), allow(dead_code))]
    pub(crate) fn note_reading(&self) -> Duration {
        self.tick().min(self.period() / 4)
    }

    /// How often the running call is looked at (and notes read).
    pub(crate) fn tick(&self) -> Duration {
        match self.deadline {
            Some(d) => (d / 8).clamp(Duration::from_millis(1), self.period()),
            None => self.period(),
        }
    }
}

/// What the serving loop of a logical process tells its watcher: a count
/// that goes up when a call starts and again when it ends (odd while one
/// runs), and which call runs. Process-local; plain stores, so the loop
/// pays next to nothing per call.
#[derive(Default)]
pub(crate) struct CallClock {
    progress: AtomicU64,
    unit: AtomicU32,
    slot: AtomicU32,
    position: AtomicU32,
}

impl CallClock {
    /// A request for `slot` of `unit` starts (one call, or a batch).
    #[inline]
    pub(crate) fn request(&self, unit: u32, slot: u32) {
        self.unit.store(unit, Ordering::Relaxed);
        self.slot.store(slot, Ordering::Relaxed);
    }

    /// Call `position` of the request starts (`count` is the serving
    /// loop's own count).
    #[inline]
    pub(crate) fn start(&self, count: &mut u64, position: u32) {
        self.position.store(position, Ordering::Relaxed);
        *count += 1;
        self.progress.store(*count, Ordering::Relaxed);
    }

    /// The running call ended.
    #[inline]
    pub(crate) fn end(&self, count: &mut u64) {
        *count += 1;
        self.progress.store(*count, Ordering::Relaxed);
    }
}

/// How a logical process shows the main process it lives, and reports a
/// call past its deadline.
pub(crate) trait Heart: Send {
    /// One beat. A rank also checks rank 0's beats here (and ends the job
    /// if rank 0 went silent).
    fn beat(&mut self);
    /// The running call has run past the deadline.
    fn overdue(&mut self, call: Overdue);
}

/// A forked process's heart: words in the shared region.
pub(crate) struct SharedHeart<'r>(pub(crate) &'r Watch);

impl Heart for SharedHeart<'_> {
    fn beat(&mut self) {
        self.0.beats.fetch_add(1, Ordering::Relaxed);
    }
    fn overdue(&mut self, call: Overdue) {
        self.0.set_overdue(call);
    }
}

/// Tells a watcher thread to stop.
#[derive(Default)]
pub(crate) struct StopFlag(AtomicBool);

impl StopFlag {
    pub(crate) fn stop(&self, watcher: &std::thread::Thread) {
        self.0.store(true, Ordering::Release);
        watcher.unpark();
    }

    pub(crate) fn stopped(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

/// The watcher thread's loop (see the module docs); returns when `stop` is
/// set. Beats at once, so the main process hears from it before the first
/// period ends.
pub(crate) fn watch_calls(
    clock: &CallClock,
    heart: &mut dyn Heart,
    plan: WatchPlan,
    stop: &StopFlag,
) {
    let tick = plan.tick();
    let mut next_beat = Instant::now();
    // The call seen running, since when, and whether it was reported.
    let mut seen = (clock.progress.load(Ordering::Relaxed), Instant::now());
    let mut reported = false;
    loop {
        if stop.stopped() {
            return;
        }
        let now = Instant::now();
        if now >= next_beat {
            heart.beat();
            next_beat = now + plan.period();
        }
        if let Some(deadline) = plan.deadline {
            let progress = clock.progress.load(Ordering::Relaxed);
            if progress != seen.0 {
                seen = (progress, now);
                reported = false;
            } else if progress % 2 == 1 && !reported && now - seen.1 >= deadline {
                heart.overdue(Overdue {
                    unit: clock.unit.load(Ordering::Relaxed),
                    slot: clock.slot.load(Ordering::Relaxed),
                    position: clock.position.load(Ordering::Relaxed),
                    ran: now - seen.1,
                });
                reported = true;
            }
        }
        // Woken early only to stop (spurious wake-ups just tick sooner).
        std::thread::park_timeout(tick.min(next_beat.saturating_duration_since(Instant::now())));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_call_past_the_deadline_is_reported_once_and_beats_go_on() {
        let watch = Watch::default();
        let clock = CallClock::default();
        let stop = StopFlag::default();
        let plan = WatchPlan {
            detection: Duration::from_millis(200),
            deadline: Some(Duration::from_millis(80)),
        };
        std::thread::scope(|s| {
            let w = s.spawn(|| watch_calls(&clock, &mut SharedHeart(&watch), plan, &stop));
            let mut count = 0;
            // Short calls: never overdue.
            clock.request(7, 0);
            for _ in 0..20 {
                clock.start(&mut count, 0);
                std::thread::sleep(Duration::from_millis(5));
                clock.end(&mut count);
            }
            assert_eq!(watch.overdue(), None);
            // Idle longer than the deadline: not a call, not overdue.
            std::thread::sleep(Duration::from_millis(150));
            assert_eq!(watch.overdue(), None);
            let t = Instant::now();
            clock.request(3, 11);
            clock.start(&mut count, 5);
            while watch.overdue().is_none() {
                assert!(t.elapsed() < Duration::from_secs(5), "never reported");
                std::thread::sleep(Duration::from_millis(1));
            }
            let call = watch.overdue().unwrap();
            assert_eq!((call.unit, call.slot, call.position), (3, 11, 5));
            assert!(call.ran >= Duration::from_millis(80), "{call:?}");
            assert!(t.elapsed() >= Duration::from_millis(80));
            let beats = watch.beats.load(Ordering::Relaxed);
            assert!(beats >= 2, "{beats} beats");
            stop.stop(w.thread());
        });
    }
}
