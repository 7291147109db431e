//! How a blocked caller waits: a short exponential spin, a few yields, then (for
//! all but SPIN) sleeps on the shared futex, each sleep at most `MuteTime`.

use std::time::{Duration, Instant};

use crate::primitive::Ordering;
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
    round: u32,
    next_check: Option<Instant>,
    /// Counted in `state.waiters` (from the first sleep on, until dropped).
    registered: bool,
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
            round: 0,
            next_check: None,
            registered: false,
        }
    }

    /// When the wait began.
    pub fn start(&self) -> Instant {
        self.start
    }

    /// The `seq` value to read before an attempt (0 until registered: only a
    /// registered sleeper relies on it).
    pub fn seen(&self) -> u32 {
        if self.registered {
            self.state.seq.load(Ordering::SeqCst)
        } else {
            0
        }
    }

    /// Whether to check now that the process in the way is alive: never while
    /// spinning (a check is a syscall), then at most every millisecond.
    pub fn liveness_due(&mut self) -> bool {
        if self.round < SPIN_ROUNDS {
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

    /// Waits a little after an attempt that failed when `seq` was `seen`.
    pub fn pause(&mut self, seen: u32) -> Result<(), TimedOut> {
        let now = Instant::now();
        if self.deadline.is_some_and(|d| now >= d) {
            return Err(TimedOut);
        }
        if self.round < SPIN_ROUNDS {
            for _ in 0..1u32 << self.round {
                std::hint::spin_loop();
            }
            self.round += 1;
            return Ok(());
        }
        if self.spin_only || self.round < SPIN_ROUNDS + YIELD_ROUNDS {
            self.round = self.round.saturating_add(1);
            std::thread::yield_now();
            return Ok(());
        }
        if !self.registered {
            // Count ourselves, then let the caller re-read `seq` and retry:
            // a release after this point either is seen by the retry or wakes us.
            self.state.waiters.fetch_add(1, Ordering::SeqCst);
            self.registered = true;
            return Ok(());
        }
        let sleep = match self.deadline {
            Some(d) => self.mute.min(d - now),
            None => self.mute,
        };
        xme_core::futex::wait(
            &self.state.seq,
            seen,
            Some(sleep.max(Duration::from_micros(1))),
        );
        Ok(())
    }
}

impl Drop for Waiter<'_> {
    fn drop(&mut self) {
        if self.registered {
            self.state.waiters.fetch_sub(1, Ordering::SeqCst);
        }
    }
}
