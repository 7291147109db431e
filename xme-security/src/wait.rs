//! How a blocked caller waits: `xme_core`'s exponential [`Backoff`] (a short
//! spin, a few yields), then (for all but SPIN) sleeps on the lock's
//! [`EventCount`](xme_core::sync::EventCount), each sleep at most `MuteTime`.

use std::time::{Duration, Instant};

use xme_core::sync::{Backoff, Sleeper, Step};

use crate::state::SecurityState;

/// Spin rounds of 1, 2, 4 … 512 `spin_loop`s before yielding.
const SPIN_ROUNDS: u32 = 10;
/// Yields after spinning, before the first sleep: lets a holder on this core run.
const YIELD_ROUNDS: u32 = 4;
/// Least time between two checks that a holder is still alive.
const CHECK_INTERVAL: Duration = Duration::from_millis(1);

pub(crate) struct Waiter<'s> {
    state: &'s SecurityState,
    spin_only: bool,
    start: Instant,
    deadline: Option<Instant>,
    mute: Duration,
    backoff: Backoff,
    next_check: Option<Instant>,
    /// Announced on the lock's event count (from the first sleep on, until dropped).
    sleeper: Option<Sleeper<'s>>,
}

/// The wait limit passed.
pub(crate) struct TimedOut;

impl<'s> Waiter<'s> {
    /// Starts waiting now; `limit` bounds the whole wait.
    pub fn new(
        state: &'s SecurityState,
        spin_only: bool,
        limit: Option<Duration>,
        mute: Duration,
    ) -> Self {
        let start = Instant::now();
        Waiter {
            state,
            spin_only,
            start,
            deadline: limit.map(|l| start + l),
            mute,
            backoff: Backoff::exponential(SPIN_ROUNDS, YIELD_ROUNDS),
            next_check: None,
            sleeper: None,
        }
    }

    /// When the wait began.
    pub fn start(&self) -> Instant {
        self.start
    }

    /// The ticket to take before an attempt (0 until announced: only an
    /// announced sleeper relies on it).
    pub fn seen(&self) -> u32 {
        self.sleeper.as_ref().map_or(0, Sleeper::ticket)
    }

    /// Whether to check now that the process in the way is alive: never while
    /// spinning (a check is a syscall), then at most every millisecond.
    pub fn liveness_due(&mut self) -> bool {
        if self.backoff.is_spinning() {
            return false;
        }
        let now = Instant::now();
        if self.next_check.is_none_or(|t| now >= t) {
            self.next_check = Some(now + CHECK_INTERVAL);
            true
        } else {
            false
        }
    }

    /// Waits a little after an attempt that failed at ticket `seen`.
    pub fn pause(&mut self, seen: u32) -> Result<(), TimedOut> {
        let now = Instant::now();
        if self.deadline.is_some_and(|d| now >= d) {
            return Err(TimedOut);
        }
        if self.backoff.snooze() != Step::Sleep {
            return Ok(());
        }
        if self.spin_only {
            // SPIN never sleeps: it keeps yielding.
            std::thread::yield_now();
            return Ok(());
        }
        let Some(sleeper) = &self.sleeper else {
            // Announce, then let the caller take a ticket and retry: a
            // release after this point either is seen by the retry or wakes us.
            self.sleeper = Some(self.state.wake.prepare_wait());
            return Ok(());
        };
        let sleep = match self.deadline {
            Some(d) => self.mute.min(d - now),
            None => self.mute,
        };
        sleeper.wait(seen, Some(sleep.max(Duration::from_micros(1))));
        Ok(())
    }
}
