//! How a waiter spends the time before it sleeps: spin, then yield.

use std::time::{Duration, Instant};

/// What a waiter should do before it sleeps, step by step: spin on the CPU
/// while an answer is likely to come within microseconds, then yield (a peer
/// on this core runs meanwhile), then sleep (on an [`EventCount`](super::EventCount)).
///
/// Two policies share the type: [`exponential`](Self::exponential) (rounds of
/// 1, 2, 4 … spin hints: a lock that is usually free) and [`timed`](Self::timed)
/// (a spin budget in time that adapts to how often spinning pays off: a
/// channel whose peer may or may not have a core of its own).
///
/// ```
/// use std::sync::atomic::{AtomicBool, Ordering};
/// use xme_core::sync::{Backoff, Step};
///
/// let flag = AtomicBool::new(false);
/// let mut backoff = Backoff::exponential(6, 4);
/// let mut slept = false;
/// while !flag.load(Ordering::Acquire) {
///     if backoff.snooze() == Step::Sleep {
///         slept = true; // here a real waiter sleeps on an EventCount
///         flag.store(true, Ordering::Release);
///     }
/// }
/// assert!(slept);
/// ```
#[derive(Debug, Clone)]
pub struct Backoff {
    policy: Policy,
    /// Snoozes in the current phase's count (rounds, or spins/yields).
    step: u32,
    /// Whether the current wait is past its spin phase.
    yielding: bool,
    /// When the current phase's clock started (read lazily).
    since: Option<Instant>,
    /// Timed policy: the spin budget in nanoseconds, at most `max_spin`.
    budget_ns: u64,
}

#[derive(Debug, Clone, Copy)]
enum Policy {
    Rounds {
        spins: u32,
        yields: u32,
    },
    Timed {
        max_spin: Duration,
        yields: u32,
        yield_for: Duration,
    },
}

/// What [`Backoff::snooze`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Spun on the CPU.
    Spun,
    /// Yielded the CPU to another thread or process.
    Yielded,
    /// Spinning and yielding are spent: sleep now (the step did nothing).
    Sleep,
}

/// Spin hints between two clock reads of the timed policy.
const SPINS_PER_CLOCK_READ: u32 = 64;
/// The timed policy's budget never falls below this (about 40 polls).
const MIN_SPIN: Duration = Duration::from_micros(1);

impl Backoff {
    /// Rounds of 1, 2, 4 … 2^(`spin_rounds` − 1) spin hints, then
    /// `yields` yields, then [`Step::Sleep`].
    pub fn exponential(spin_rounds: u32, yields: u32) -> Backoff {
        Backoff::with(Policy::Rounds {
            spins: spin_rounds.min(20),
            yields,
        })
    }

    /// One spin hint per step for a budget of at most `max_spin`, then at
    /// least `yields` yields and until `yield_for` passed, then
    /// [`Step::Sleep`]. The budget adapts over the waits of one `Backoff`:
    /// doubled (up to `max_spin`) each time the condition held while
    /// spinning ([`ready`](Self::ready)), cut to a sixteenth each time a
    /// spin found nothing, so two processes sharing one core do not each
    /// burn `max_spin` per wait while the other cannot run.
    pub fn timed(max_spin: Duration, yields: u32, yield_for: Duration) -> Backoff {
        let mut b = Backoff::with(Policy::Timed {
            max_spin,
            yields,
            yield_for,
        });
        b.budget_ns = max_spin.as_nanos().min(u128::from(u64::MAX)) as u64;
        b
    }

    fn with(policy: Policy) -> Backoff {
        Backoff {
            policy,
            step: 0,
            yielding: false,
            since: None,
            budget_ns: 0,
        }
    }

    /// Starts a new wait (the timed policy keeps its learned budget).
    pub fn reset(&mut self) {
        self.step = 0;
        self.yielding = false;
        self.since = None;
    }

    /// Whether the current wait is still in its spin phase.
    pub fn is_spinning(&self) -> bool {
        !self.yielding
    }

    /// Tells the policy the awaited condition held: a timed backoff that was
    /// still spinning grows its budget. Call [`reset`](Self::reset) before
    /// the next wait.
    pub fn ready(&mut self) {
        if let Policy::Timed { max_spin, .. } = self.policy
            && !self.yielding
        {
            self.budget_ns = (self.budget_ns.saturating_mul(2))
                .min(max_spin.as_nanos().min(u128::from(u64::MAX)) as u64)
                .max(MIN_SPIN.as_nanos() as u64);
        }
    }

    /// Waits one step: spin, yield, or return [`Step::Sleep`] when both are
    /// spent.
    pub fn snooze(&mut self) -> Step {
        match self.policy {
            Policy::Rounds { spins, yields } => {
                if self.step < spins {
                    for _ in 0..1u32 << self.step {
                        std::hint::spin_loop();
                    }
                    self.step += 1;
                    return Step::Spun;
                }
                self.yielding = true;
                if self.step < spins.saturating_add(yields) {
                    self.step += 1;
                    std::thread::yield_now();
                    return Step::Yielded;
                }
                Step::Sleep
            }
            Policy::Timed {
                yields, yield_for, ..
            } => {
                if !self.yielding {
                    self.step += 1;
                    // Read the clock only once the first spins found nothing:
                    // most waits of a round trip end within them.
                    if !self.step.is_multiple_of(SPINS_PER_CLOCK_READ)
                        || self.since.get_or_insert_with(Instant::now).elapsed()
                            < Duration::from_nanos(self.budget_ns)
                    {
                        std::hint::spin_loop();
                        return Step::Spun;
                    }
                    self.budget_ns = (self.budget_ns / 16).max(MIN_SPIN.as_nanos() as u64);
                    self.yielding = true;
                    self.step = 0;
                    self.since = Some(Instant::now());
                }
                if self.step >= yields
                    && (yield_for.is_zero() || self.since.is_some_and(|t| t.elapsed() >= yield_for))
                {
                    return Step::Sleep;
                }
                self.step += 1;
                std::thread::yield_now();
                Step::Yielded
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exponential_spins_then_yields_then_says_sleep() {
        let mut b = Backoff::exponential(3, 2);
        let steps: Vec<Step> = (0..7).map(|_| b.snooze()).collect();
        use Step::*;
        assert_eq!(steps, [Spun, Spun, Spun, Yielded, Yielded, Sleep, Sleep]);
        b.reset();
        assert!(b.is_spinning());
        assert_eq!(b.snooze(), Spun);
    }

    #[test]
    fn the_timed_budget_shrinks_when_spinning_fails_and_grows_when_it_pays() {
        let max = Duration::from_micros(200);
        let mut b = Backoff::timed(max, 2, Duration::ZERO);
        let start = b.budget_ns;
        while b.snooze() != Step::Sleep {}
        assert_eq!(b.budget_ns, start / 16);
        b.reset();
        b.snooze();
        b.ready();
        assert_eq!(b.budget_ns, start / 8);
        for _ in 0..10 {
            b.ready();
        }
        assert_eq!(b.budget_ns, start, "never above max_spin");
    }
}
