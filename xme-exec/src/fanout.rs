//! When a run forks its workers: all `pnum` at once, or one at first and
//! more only while the work left is worth a fork.
//!
//! A fork is not free: here a Python process of 15 MiB takes about 0.3 ms
//! to fork and its child about 0.7 ms more to reach its first call (page
//! faults on every page it touches), then 0.4 ms to exit. Ten trivial calls
//! take a worker 0.2 ms in all, so a second worker arrives after the first
//! has finished every call, and only costs its fork, its faults and its exit.
//! [`Spawning::OnDemand`] forks every worker at once when there are no more
//! calls than workers (one call each: the work was split for them), and
//! otherwise one: it measures how long that one took from its fork to its
//! first call (the cost of a worker) and forks another, one start at a
//! time, each time the calls not yet taken would keep a worker busy for more
//! than twice that cost, judged by the oldest running call: `unclaimed ×
//! its time so far`, a lower bound on the work left when the calls are alike.

use std::time::Duration;

/// How a run forks its workers (see [`Xme::spawning`](crate::Xme::spawning)).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Spawning {
    /// Every worker at once when the run has no more calls than `pnum`;
    /// otherwise one at first, and another, up to `pnum`, one start at a
    /// time, while the calls not yet taken would keep the workers busy for
    /// longer than forking one takes (twice the time the first worker took
    /// from its fork to its first call, 0.1 to 5 ms). A call waiting for
    /// another call makes the run fork the worker that will take it, as
    /// long as a worker may still be forked (`pnum` is clamped to the CPUs,
    /// and a run whose fork failed goes on with the workers it has).
    #[default]
    OnDemand,
    /// Every worker (`pnum`, or fewer when there are fewer calls) forked at
    /// the start of the run, as XME 4.2 does.
    Eager,
}

/// The least and the most a worker's start is taken to cost.
const MIN_COST_NS: u64 = 100_000;
const MAX_COST_NS: u64 = 5_000_000;
/// If no worker has taken a call this long after the first fork returned
/// (a slow fork hook, a loaded machine), or twice as long as that fork
/// took if more, one more worker is forked per such wait: their start-ups
/// then overlap instead of adding up. A worker still starting after it (or
/// after four times the cost of a worker) no longer holds the next back.
const PATIENCE_NS: u64 = 5_000_000;
/// How soon to look again when calls wait but no worker runs one (a worker
/// between two calls), or while a worker is starting (nothing wakes the
/// parent when it takes its first call): at first; a start that lasts is
/// looked at less often (a quarter of its age so far, at most 100 ms).
const RECHECK_NS: u64 = 250_000;
const MAX_RECHECK_NS: u64 = 100_000_000;

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
    /// Calls of the run.
    calls: usize,
    /// Slots given a worker so far (workers replacing dead ones reuse theirs).
    opened: usize,
    /// When the first worker was forked.
    first_fork_ns: u64,
    /// How long to wait for any progress before forking another worker
    /// (see [`PATIENCE_NS`]), and since when: the latest fork's return.
    patience_ns: u64,
    patience_from_ns: u64,
    /// What a worker's start costs, once the first one took a call.
    cost_ns: Option<u64>,
}

/// What the run knows of its workers when the fan-out decides.
pub(crate) struct Seen<'a> {
    pub now_ns: u64,
    /// Calls not yet taken.
    pub unclaimed: usize,
    /// When the calls workers run now started.
    pub running_since: &'a [u64],
    /// When the latest worker that has not taken a call yet was forked.
    pub starting_since_ns: Option<u64>,
    /// The earliest sign that a worker took a call: the start of a call
    /// seen running, or when a reply was read.
    pub first_progress_ns: Option<u64>,
}

impl Fanout {
    pub fn new(policy: Spawning, slots: usize, calls: usize, now_ns: u64) -> Fanout {
        Fanout {
            policy,
            slots,
            calls,
            opened: 0,
            first_fork_ns: now_ns,
            patience_ns: PATIENCE_NS,
            patience_from_ns: now_ns,
            cost_ns: None,
        }
    }

    /// Workers to fork at the start of the run.
    pub fn initial(&self) -> usize {
        match self.policy {
            Spawning::OnDemand if self.calls > self.slots => self.slots.min(1),
            _ => self.slots,
        }
    }

    /// Notes that the first workers were forked, at `now_ns`.
    pub fn first_forks_done(&mut self, now_ns: u64) {
        let fork_took = now_ns.saturating_sub(self.first_fork_ns);
        self.patience_ns = PATIENCE_NS.max(2 * fork_took);
        self.patience_from_ns = now_ns;
    }

    /// Notes that a worker forked to widen the run was forked, at `now_ns`:
    /// the patience for the next one runs from here, so a late look never
    /// makes up for missed intervals with a burst.
    pub fn forked(&mut self, now_ns: u64) {
        self.patience_from_ns = now_ns;
    }

    /// The slot for the next worker forked to widen the run (not one
    /// replacing a dead worker), and counts it.
    pub fn open_slot(&mut self) -> Option<usize> {
        (self.opened < self.slots).then(|| {
            self.opened += 1;
            self.opened - 1
        })
    }

    /// Decides what to do now, from what the run has seen.
    pub fn decide(&mut self, seen: Seen<'_>) -> Decision {
        if self.opened >= self.slots || seen.unclaimed == 0 {
            return Decision::Idle;
        }
        let cost = match (self.cost_ns, seen.first_progress_ns) {
            (Some(cost), _) => cost,
            (None, Some(first)) => {
                let cost = first
                    .saturating_sub(self.first_fork_ns)
                    .clamp(MIN_COST_NS, MAX_COST_NS);
                *self.cost_ns.get_or_insert(cost)
            }
            (None, None) => {
                // No progress yet: one more worker per patience interval.
                let waited = seen.now_ns.saturating_sub(self.patience_from_ns);
                return if waited >= self.patience_ns {
                    Decision::Fork
                } else {
                    Decision::LookAgainIn(look_again(waited, self.patience_ns - waited))
                };
            }
        };
        // One start at a time: the worker just forked will take calls (the
        // decision would otherwise fork every free slot at once) unless its
        // start takes far longer than a worker's cost.
        if let Some(since) = seen.starting_since_ns {
            let age = seen.now_ns.saturating_sub(since);
            let hold = PATIENCE_NS.max(4 * cost);
            if age < hold {
                return Decision::LookAgainIn(look_again(age, hold - age));
            }
            // A start that late, and no call running: nothing else will
            // take the calls that wait.
            if seen.running_since.is_empty() {
                return Decision::Fork;
            }
        }
        let Some(&oldest) = seen.running_since.iter().min() else {
            return Decision::LookAgainIn(Duration::from_nanos(RECHECK_NS));
        };
        // Fork once unclaimed × (now - oldest) >= 2 × cost.
        let due = oldest.saturating_add(2 * cost / seen.unclaimed as u64);
        if seen.now_ns >= due {
            Decision::Fork
        } else {
            Decision::LookAgainIn(Duration::from_nanos(due - seen.now_ns))
        }
    }
}

/// When to look again at a start that has lasted `age`, at most `left`
/// before something is due.
fn look_again(age: u64, left: u64) -> Duration {
    Duration::from_nanos((age / 4).clamp(RECHECK_NS, MAX_RECHECK_NS).min(left))
}

#[cfg(test)]
mod tests {
    use super::*;

    const US: u64 = 1_000;

    /// A run of `calls` calls, `slots` workers at most, its first worker
    /// forked at 0 and started at 700 us.
    fn on_demand(slots: usize, calls: usize) -> Fanout {
        let mut f = Fanout::new(Spawning::OnDemand, slots, calls, 0);
        for _ in 0..f.initial() {
            f.open_slot();
        }
        f
    }

    /// What the run saw at `now_us`, calls running since `running` (us);
    /// its first progress the oldest of them. (The small vector is leaked:
    /// a test's few bytes.)
    fn seen(now_us: u64, unclaimed: usize, running: &[u64]) -> Seen<'static> {
        Seen {
            now_ns: now_us * US,
            unclaimed,
            running_since: running.iter().map(|r| r * US).collect::<Vec<_>>().leak(),
            starting_since_ns: None,
            first_progress_ns: running.iter().min().map(|r| r * US),
        }
    }

    #[test]
    fn eager_forks_every_slot_at_once_and_never_more() {
        let mut f = Fanout::new(Spawning::Eager, 3, 100, 0);
        assert_eq!(f.initial(), 3);
        assert_eq!(
            (f.open_slot(), f.open_slot(), f.open_slot()),
            (Some(0), Some(1), Some(2))
        );
        assert_eq!(f.open_slot(), None);
        assert_eq!(f.decide(seen(10_000, 50, &[0])), Decision::Idle);
    }

    #[test]
    fn a_call_for_each_worker_forks_them_all_at_once() {
        assert_eq!(Fanout::new(Spawning::OnDemand, 2, 2, 0).initial(), 2);
        assert_eq!(Fanout::new(Spawning::OnDemand, 4, 4, 0).initial(), 4);
        assert_eq!(Fanout::new(Spawning::OnDemand, 2, 3, 0).initial(), 1);
    }

    #[test]
    fn short_calls_keep_one_worker() {
        // The first worker took its first call 700 us after its fork; nine
        // calls wait and the running one has run 40 us: 360 us of work left
        // at least, less than twice the cost of a worker (look again when
        // 9 x its time reaches 1.4 ms).
        let mut f = on_demand(2, 10);
        assert_eq!(
            f.decide(seen(740, 9, &[700])),
            Decision::LookAgainIn(Duration::from_nanos(855_555 - 740_000))
        );
    }

    #[test]
    fn a_long_call_with_calls_waiting_forks_another_worker() {
        let mut f = on_demand(2, 3);
        // Cost 700 us; one call waits: fork once the running call is 1.4 ms old.
        assert!(matches!(
            f.decide(seen(800, 1, &[700])),
            Decision::LookAgainIn(_)
        ));
        assert_eq!(f.decide(seen(2_100, 1, &[700])), Decision::Fork);
        assert_eq!(f.open_slot(), Some(1));
        assert_eq!(f.decide(seen(3_000, 1, &[700])), Decision::Idle);
    }

    #[test]
    fn many_calls_waiting_fork_at_once_but_one_start_at_a_time() {
        let mut f = on_demand(4, 10_000);
        assert_eq!(f.decide(seen(701, 10_000, &[700])), Decision::Fork);
        f.open_slot();
        // The new worker has not taken a call: no second fork yet.
        let mut s = seen(702, 9_990, &[700]);
        s.starting_since_ns = Some(701 * US);
        assert_eq!(
            f.decide(s),
            Decision::LookAgainIn(Duration::from_nanos(RECHECK_NS))
        );
        assert_eq!(
            f.decide(seen(1_500, 9_900, &[1_499, 1_400])),
            Decision::Fork
        );
    }

    #[test]
    fn nothing_waits_nothing_forks() {
        let mut f = on_demand(2, 10);
        assert_eq!(f.decide(seen(1_000_000, 0, &[0])), Decision::Idle);
    }

    #[test]
    fn before_the_first_call_the_run_looks_often_and_forks_one_more_per_5_ms() {
        let mut f = on_demand(3, 5);
        f.first_forks_done(300 * US);
        assert_eq!(
            f.decide(seen(1_000, 5, &[])),
            Decision::LookAgainIn(Duration::from_nanos(RECHECK_NS))
        );
        // 4.5 ms waited: a quarter of it (1.1 ms) is past the 0.5 ms left.
        assert_eq!(
            f.decide(seen(4_800, 5, &[])),
            Decision::LookAgainIn(Duration::from_micros(500))
        );
        assert_eq!(f.decide(seen(5_300, 5, &[])), Decision::Fork);
        f.open_slot();
        f.forked(5_400 * US);
        // Not every slot in one look: the next one 5 ms after that fork.
        assert!(matches!(
            f.decide(seen(5_401, 5, &[])),
            Decision::LookAgainIn(_)
        ));
        assert_eq!(f.decide(seen(10_400, 5, &[])), Decision::Fork);
    }

    #[test]
    fn a_late_look_forks_one_worker_not_every_missed_one() {
        let mut f = on_demand(16, 100);
        f.first_forks_done(100 * US);
        // The parent looks 60 ms late: one fork, then 5 ms more to wait.
        assert_eq!(f.decide(seen(60_000, 100, &[])), Decision::Fork);
        f.open_slot();
        f.forked(60_300 * US);
        assert!(matches!(
            f.decide(seen(60_301, 100, &[])),
            Decision::LookAgainIn(_)
        ));
    }

    #[test]
    fn a_slow_first_fork_stretches_the_patience() {
        // A 15 ms fork (a parent of a few GiB): no other fork before 30 ms.
        let mut f = on_demand(64, 100);
        f.first_forks_done(15_000 * US);
        assert!(matches!(
            f.decide(seen(40_000, 100, &[])),
            Decision::LookAgainIn(_)
        ));
        assert_eq!(f.decide(seen(45_000, 100, &[])), Decision::Fork);
    }

    #[test]
    fn a_start_that_never_ends_holds_the_next_fork_back_only_a_while() {
        // Cost 700 us; a replacement forked at 2 ms never takes a call,
        // 99 calls wait, none runs: after 5 ms the next worker is forked,
        // and the looks in between grow apart.
        let mut f = on_demand(3, 100);
        let mut s = seen(2_000, 99, &[]);
        s.first_progress_ns = Some(700 * US);
        s.starting_since_ns = Some(2_000 * US);
        assert_eq!(
            f.decide(s),
            Decision::LookAgainIn(Duration::from_nanos(RECHECK_NS))
        );
        let mut s = seen(6_000, 99, &[]);
        s.starting_since_ns = Some(2_000 * US);
        assert_eq!(f.decide(s), Decision::LookAgainIn(Duration::from_millis(1)));
        // Past the hold, with calls waiting and none running: fork.
        let mut s = seen(7_000, 99, &[]);
        s.starting_since_ns = Some(2_000 * US);
        assert_eq!(f.decide(s), Decision::Fork);
        // With a call running, fork once it has run long enough.
        let mut s = seen(7_000, 99, &[6_990]);
        s.starting_since_ns = Some(2_000 * US);
        assert!(matches!(f.decide(s), Decision::LookAgainIn(_)));
        let mut s = seen(7_000, 99, &[6_900]);
        s.starting_since_ns = Some(2_000 * US);
        assert_eq!(f.decide(s), Decision::Fork);
    }

    #[test]
    fn the_cost_is_measured_from_the_first_progress_seen() {
        // A reply read at 900 us, though the call running now began at 4.5 ms.
        let mut f = on_demand(2, 10);
        let mut s = seen(4_600, 5, &[4_500]);
        s.first_progress_ns = Some(900 * US);
        // Cost 900 us: fork once 5 x (now - 4.5 ms) >= 1.8 ms, at 4.86 ms.
        assert_eq!(
            f.decide(s),
            Decision::LookAgainIn(Duration::from_micros(260))
        );
    }

    #[test]
    fn calls_waiting_between_two_calls_are_looked_at_again_soon() {
        let mut f = on_demand(2, 10);
        f.decide(seen(800, 5, &[700]));
        let mut s = seen(900, 5, &[]);
        s.first_progress_ns = Some(700 * US);
        assert_eq!(
            f.decide(s),
            Decision::LookAgainIn(Duration::from_nanos(RECHECK_NS))
        );
    }
}
