//! Which worker runs what: starting workers, room on a worker, sending
//! tasks, and taking back tasks queued behind a slow call.

use super::Driver;
use super::link::{Sent, WorkerLink};
use crate::TaskFailure;
use crate::pool::claims::{self, CLAIMS};
use crate::pool::engine::{Block, Task};
use crate::pool::wire;

/// A worker may hold this many bytes of arguments in flight.
const ARGS_IN_FLIGHT: usize = 1 << 20;
/// And this much estimated work queued behind its running task.
const QUEUED_WORK_NS: f64 = 1_000_000.0;

impl Driver {
    /// Asks the zygote for a worker when no live one is free for the next
    /// task, up to `pnum` (one request in flight at a time).
    pub(super) fn start_workers(&mut self) {
        if self.gone.is_some()
            || self.spawning.is_some()
            || self.queue.is_empty()
            || self.workers.len() >= self.shared.pnum
            || self.workers.iter().any(|w| self.has_room(w))
        {
            return;
        }
        let Some(slot) = self.free_slots.pop() else {
            return;
        };
        self.region.reset(slot);
        let Some(zygote) = self.zygote.as_mut() else {
            return;
        };
        match zygote.request_spawn(slot) {
            Ok(()) => self.spawning = Some(slot),
            Err(_) => {
                self.free_slots.push(slot);
                self.zygote_died();
            }
        }
    }

    /// The zygote could not give the worker asked for: say why while no
    /// worker can run the queue.
    pub(super) fn spawn_refused(&mut self, why: String) {
        if let Some(slot) = self.spawning.take() {
            self.free_slots.push(slot);
        }
        if self.workers.is_empty() {
            let why = format!("no worker process could be started: {why}");
            for t in self.queue.drain(..) {
                super::fail_all(&t, &TaskFailure::NotRun(why.clone()));
            }
        }
        self.spawn_refused = Some(why);
    }

    pub(super) fn has_room(&self, w: &WorkerLink) -> bool {
        if w.kill.is_some() || w.stopping.is_some() || w.hup || w.ended || w.broken.is_some() {
            return false;
        }
        if w.tasks.len() >= CLAIMS {
            return false;
        }
        let pending: Vec<&Sent> = w.pending().collect();
        if pending.is_empty() {
            return true;
        }
        // Queue behind a running task only once every worker exists: a new
        // worker takes the task sooner than a busy one would.
        if self.workers.len() < self.shared.pnum && self.spawn_refused.is_none() {
            return false;
        }
        if pending.len() < 2 {
            return true;
        }
        let Some(call_ns) = self.call_ns else {
            return false;
        };
        let queued_calls: usize = pending.iter().map(|s| s.task.calls as usize).sum();
        w.args_in_flight < ARGS_IN_FLIGHT && queued_calls as f64 * call_ns < QUEUED_WORK_NS
    }

    /// When a worker is idle and nothing is queued, takes back tasks queued
    /// behind a running one on another worker (cancelled there by their
    /// claim word, so each runs once) for the idle worker: a slow call then
    /// holds back only itself.
    pub(super) fn steal(&mut self) {
        if !self.queue.is_empty() || self.gone.is_some() {
            return;
        }
        let idle = self
            .workers
            .iter()
            .filter(|w| self.has_room(w) && w.pending().next().is_none())
            .count();
        if idle == 0 {
            return;
        }
        // The most loaded worker with tasks not started yet.
        let Some(victim) = (0..self.workers.len())
            .filter(|&w| self.workers[w].pending().count() >= 2)
            .max_by_key(|&w| self.workers[w].pending().count())
        else {
            return;
        };
        let claims = &self.region.slot(self.workers[victim].slot).header.claims;
        let link = &mut self.workers[victim];
        let waiting = link.pending().count() - 1;
        let mut taken = Vec::new();
        // From the back, at most half of what waits, one per idle worker.
        for sent in link.tasks.iter_mut().rev() {
            if taken.len() >= idle.min(waiting.div_ceil(2)) {
                break;
            }
            if sent.complete() || sent.received() > 0 {
                continue;
            }
            if !claims::cancel(claims, sent.ordinal) {
                break; // it started: so did everything before it
            }
            sent.skipped = true;
            link.args_in_flight -= sent.task.args.len();
            taken.push(sent.task.take());
        }
        // Oldest first.
        for task in taken.into_iter().rev() {
            self.queue.push_back(task);
        }
    }

    /// Sends queued tasks to workers with room, one task to each in turn
    /// (the least loaded first, so a batch spreads over the workers), as
    /// one frame per worker, never larger than a worker accepts.
    pub(super) fn dispatch(&mut self) {
        if self.queue.is_empty() {
            return;
        }
        let mut frames: Vec<Option<(usize, u32)>> = vec![None; self.workers.len()];
        loop {
            let mut gave = false;
            let mut order: Vec<usize> = (0..self.workers.len()).collect();
            order.sort_by_key(|&w| self.workers[w].pending().count());
            for w in order {
                let Some(next) = self.queue.front() else {
                    break;
                };
                if !self.has_room(&self.workers[w]) {
                    continue;
                }
                // A frame holds tasks up to the worker's frame limit (a
                // task alone always fits: its arguments were checked).
                let frame_len = frames[w].map_or(0, |(at, _)| self.workers[w].out.len() - at);
                if frame_len > 0 && frame_len + next.args.len() + 64 > wire::MAX_FRAME {
                    continue;
                }
                let task = self.queue.pop_front().expect("a front task");
                let claims = &self.region.slot(self.workers[w].slot).header.claims;
                let link = &mut self.workers[w];
                let (_, count) =
                    frames[w].get_or_insert_with(|| (wire::start_frame(&mut link.out), 0));
                *count += 1;
                let ordinal = link.next_ordinal;
                link.next_ordinal += 1;
                claims::queue(claims, ordinal);
                let flags = if task.limit.is_some() {
                    wire::FLAG_TIMED
                } else {
                    0
                };
                wire::push_task(
                    &mut link.out,
                    ordinal,
                    task.entry,
                    task.calls,
                    flags,
                    &task.args,
                );
                link.args_in_flight += task.args.len();
                let first = task.first;
                link.tasks.push_back(Sent {
                    ordinal,
                    task,
                    block: Block::new(first),
                    skipped: false,
                    ended: false,
                });
                gave = true;
            }
            if !gave || self.queue.is_empty() {
                break;
            }
        }
        for (link, frame) in self.workers.iter_mut().zip(frames) {
            if let Some((at, count)) = frame {
                wire::finish_frame(&mut link.out, at, count);
            }
        }
    }
}

impl Task {
    /// Moves this task's work out (for sending again elsewhere), leaving
    /// an empty shell behind.
    pub(crate) fn take(&mut self) -> Task {
        Task {
            sink: self.sink.clone(),
            entry: self.entry,
            first: self.first,
            calls: self.calls,
            args: std::mem::take(&mut self.args),
            limit: self.limit,
            requeued: self.requeued,
        }
    }
}
