//! When a run forks its workers: all `pnum` at once, or one at first and
//! more only while the work left is worth a fork.
//!
//! A fork is not free: here a Python process of 15 MiB takes about 0.3 ms
//! to fork and its child about 0.7 ms more to reach its first call (page
//! faults on every page it touches), then 0.4 ms to exit. Ten trivial calls
//! take a worker 0.2 ms in all, so a second worker arrives after the first
//! has finished every call, and only costs its fork, its faults and its exit.
//! [`Spawning::OnDemand`] forks one worker, measures how long it took to
//! reach its first call (the cost of a worker), and forks another each time
//! the calls not yet taken would keep one worker busy for more than twice
//! that cost, judged by the oldest running call: `unclaimed × its time so
//! far`, a lower bound on the work left when the calls are alike.

use std::time::Duration;

/// How a run forks its workers (see [`Xme::spawning`](crate::Xme::spawning)).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Spawning {
    /// One worker at first; another, up to `pnum`, while the calls not yet
    /// taken would keep the workers busy for longer than forking one takes
    /// (twice the time the first worker took from its fork to its first
    /// call). Calls that block each other still all run: a call waiting
    /// for another one makes the run fork the worker that will take it.
    #[default]
    OnDemand,
    /// Every worker (`pnum`, or fewer when there are fewer calls) forked at
    /// the start of the run, as XME 4.2 does.
    Eager,
}

/// The least and the most a worker's start is taken to cost.
const MIN_COST_NS: u64 = 100_000;
const MAX_COST_NS: u64 = 5_000_000;
/// If no worker has taken a call this long after the first fork (a slow
/// fork hook, a loaded machine), the rest are forked at once: their
/// start-ups then overlap instead of adding up.
const PATIENCE_NS: u64 = 5_000_000;
/// How soon to look again when calls wait but no worker runs one (a worker
/// between two calls, or one still starting).
const RECHECK_NS: u64 = 50_000;

/// What the run should do about its workers now.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Decision {
    /// Fork one more worker now.
    Fork,
    /// Look again after this long (or sooner, when something happens).
    LookAgainIn(Duration),
    /// Nothing to decide until a worker ends.
    Idle,
}

/// The fan-out of one run.
pub(crate) struct Fanout {
    policy: Spawning,
    /// Most workers at once.
    slots: usize,
    /// Slots given a worker so far (workers replacing dead ones reuse theirs).
    opened: usize,
    /// When the first worker was forked.
    first_fork_ns: u64,
    /// What a worker's start costs, once the first one took a call.
    cost_ns: Option<u64>,
}

impl Fanout {
    pub fn new(policy: Spawning, slots: usize, now_ns: u64) -> Fanout {
        Fanout {
            policy,
            slots,
            opened: 0,
            first_fork_ns: now_ns,
            cost_ns: None,
        }
    }

    /// Workers to fork at the start of the run.
    pub fn initial(&self) -> usize {
        match self.policy {
            Spawning::Eager => self.slots,
            Spawning::OnDemand => self.slots.min(1),
        }
    }

    /// The slot for the next worker forked to widen the run (not one
    /// replacing a dead worker), and counts it.
    pub fn open_slot(&mut self) -> Option<usize> {
        (self.opened < self.slots).then(|| {
            self.opened += 1;
            self.opened - 1
        })
    }

    /// Decides, at `now_ns`, with `unclaimed` calls not yet taken and the
    /// start times of the calls workers run now.
    pub fn decide(
        &mut self,
        now_ns: u64,
        unclaimed: usize,
        running_since: impl Iterator<Item = u64>,
    ) -> Decision {
        if self.opened >= self.slots || unclaimed == 0 {
            return Decision::Idle;
        }
        let oldest = running_since.min();
        let cost = match (self.cost_ns, oldest) {
            (Some(cost), _) => cost,
            (None, Some(first_call)) => {
                let cost = first_call
                    .saturating_sub(self.first_fork_ns)
                    .clamp(MIN_COST_NS, MAX_COST_NS);
                *self.cost_ns.get_or_insert(cost)
            }
            (None, None) => {
                let waited = now_ns.saturating_sub(self.first_fork_ns);
                return if waited >= PATIENCE_NS {
                    Decision::Fork
                } else {
                    Decision::LookAgainIn(Duration::from_nanos(PATIENCE_NS - waited))
                };
            }
        };
        let Some(oldest) = oldest else {
            return Decision::LookAgainIn(Duration::from_nanos(RECHECK_NS));
        };
        // Fork once unclaimed × (now - oldest) >= 2 × cost.
        let due = oldest.saturating_add(2 * cost / unclaimed as u64);
        if now_ns >= due {
            Decision::Fork
        } else {
            Decision::LookAgainIn(Duration::from_nanos(due - now_ns))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const US: u64 = 1_000;

    fn on_demand(slots: usize) -> Fanout {
        let mut f = Fanout::new(Spawning::OnDemand, slots, 0);
        for _ in 0..f.initial() {
            f.open_slot();
        }
        f
    }

    #[test]
    fn eager_forks_every_slot_at_once_and_never_more() {
        let mut f = Fanout::new(Spawning::Eager, 3, 0);
        assert_eq!(f.initial(), 3);
        assert_eq!(
            (f.open_slot(), f.open_slot(), f.open_slot()),
            (Some(0), Some(1), Some(2))
        );
        assert_eq!(f.open_slot(), None);
        assert_eq!(f.decide(10_000 * US, 50, [0].into_iter()), Decision::Idle);
    }

    #[test]
    fn short_calls_keep_one_worker() {
        // The first worker took its first call 700 us after its fork; nine
        // calls wait and the running one has run 40 us: 360 us of work left
        // at least, less than twice the cost of a worker.
        let mut f = on_demand(2);
        assert_eq!(
            f.decide(740 * US, 9, [700 * US].into_iter()),
            Decision::LookAgainIn(Duration::from_nanos(855_555 - 740_000))
        );
    }

    #[test]
    fn a_long_call_with_calls_waiting_forks_another_worker() {
        let mut f = on_demand(2);
        // Cost 700 us; one call waits: fork once the running call is 1.4 ms old.
        assert!(matches!(
            f.decide(800 * US, 1, [700 * US].into_iter()),
            Decision::LookAgainIn(_)
        ));
        assert_eq!(
            f.decide(2_100 * US, 1, [700 * US].into_iter()),
            Decision::Fork
        );
        assert_eq!(f.open_slot(), Some(1));
        assert_eq!(
            f.decide(3_000 * US, 1, [700 * US].into_iter()),
            Decision::Idle
        );
    }

    #[test]
    fn many_calls_waiting_fork_at_once() {
        let mut f = on_demand(4);
        assert_eq!(
            f.decide(701 * US, 10_000, [700 * US].into_iter()),
            Decision::Fork
        );
    }

    #[test]
    fn nothing_waits_nothing_forks() {
        let mut f = on_demand(2);
        assert_eq!(f.decide(1_000_000 * US, 0, [0].into_iter()), Decision::Idle);
    }

    #[test]
    fn a_worker_slow_to_start_makes_the_rest_start_too() {
        let mut f = on_demand(3);
        assert_eq!(
            f.decide(1_000 * US, 5, std::iter::empty()),
            Decision::LookAgainIn(Duration::from_millis(4))
        );
        assert_eq!(f.decide(5_000 * US, 5, std::iter::empty()), Decision::Fork);
    }

    #[test]
    fn calls_waiting_between_two_calls_are_looked_at_again_soon() {
        let mut f = on_demand(2);
        f.decide(800 * US, 5, [700 * US].into_iter());
        assert_eq!(
            f.decide(900 * US, 5, std::iter::empty()),
            Decision::LookAgainIn(Duration::from_nanos(RECHECK_NS))
        );
    }
}
