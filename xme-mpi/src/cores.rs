//! Which core each logical process runs on.
//!
//! MPI launchers bind each rank to a core by default, and so does `Mpi`:
//! left free, the scheduler tends to put a process next to the one that woke
//! it (both then share one core while another idles, and every spinning wait
//! becomes a wait for the other's time slice), and two busy logical processes
//! can end up on one core. The main process is never bound: it is the user's.

use nix::sched::{CpuSet, sched_getaffinity, sched_getcpu, sched_setaffinity};
use nix::unistd::Pid;

/// The cores logical processes are bound to, in turn.
#[derive(Debug, Clone)]
pub(crate) struct CorePlan {
    cpus: Vec<usize>,
}

impl CorePlan {
    /// The cores this process may use, starting after the one it runs on, so
    /// that logical process 1 gets a core the main process is not on. `None`
    /// where the cores cannot be read, or there is only one.
    pub fn new() -> Option<CorePlan> {
        let allowed = sched_getaffinity(Pid::from_raw(0)).ok()?;
        let mut cpus: Vec<usize> = (0..CpuSet::count())
            .filter(|&c| allowed.is_set(c).unwrap_or(false))
            .collect();
        if cpus.len() < 2 {
            return None;
        }
        if let Some(at) = sched_getcpu()
            .ok()
            .and_then(|me| cpus.iter().position(|&c| c == me))
        {
            cpus.rotate_left(at + 1);
        }
        Some(CorePlan { cpus })
    }

    /// The core of logical process `id` (1-based).
    pub fn core_of(&self, id: usize) -> usize {
        self.cpus[(id - 1) % self.cpus.len()]
    }

    /// Binds process `pid` (logical process `id`) to its core; false if the
    /// system refused (the process then runs unbound).
    pub fn bind(&self, id: usize, pid: i32) -> bool {
        let mut set = CpuSet::new();
        set.set(self.core_of(id)).is_ok() && sched_setaffinity(Pid::from_raw(pid), &set).is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logical_processes_take_the_allowed_cores_in_turn_starting_off_ours() {
        let Some(plan) = CorePlan::new() else {
            return; // one core: nothing to plan
        };
        let n = plan.cpus.len();
        let mut seen: Vec<usize> = (1..=n).map(|id| plan.core_of(id)).collect();
        assert_eq!(plan.core_of(n + 1), plan.core_of(1));
        seen.sort();
        seen.dedup();
        assert_eq!(seen.len(), n, "each allowed core once per round");
    }
}
