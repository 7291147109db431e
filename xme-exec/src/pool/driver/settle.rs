//! Ends of calls other than a result: cancellations, time limits, and dead
//! workers.
//!
//! A kill is aimed: the driver stops the worker (`SIGSTOP`), waits (across
//! loop turns, never blocking) until `/proc` says it is stopped, reads its
//! progress, and kills it only if it is still where the aim says; otherwise
//! it lets it go on (`SIGCONT`). A worker that cannot stop in time (for
//! example in uninterruptible sleep) is let go and tried again later.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rustix::process::Signal;

use super::Driver;
use super::link::{Aim, Kill, Stopping};
use crate::TaskFailure;
use crate::pool::claims::{self, PHASE_REPLYING, PHASE_RUNNING};
use crate::pool::engine::{CancelReason, Item, Sink, Task};
use crate::pool::wire;
use crate::pool::worker::EXIT_BROKEN_FRAME;

/// How long a stop may take before the worker is let go and tried later.
const STOP_PATIENCE: Duration = Duration::from_millis(200);
/// How long to wait before stopping that worker again.
const STOP_AGAIN: Duration = Duration::from_millis(50);
/// A task sent back this many times without starting fails instead.
const MAX_REQUEUES: u8 = 8;

/// A duration in nanoseconds, saturating (`Duration::MAX` means never).
pub(super) fn saturating_ns(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

impl Driver {
    pub(super) fn cancel(&mut self, sink: &Arc<Sink>, reason: CancelReason) {
        self.queue.retain(|t| !Arc::ptr_eq(&t.sink, sink));
        self.cancelling.push((sink.clone(), reason));
        self.cancel_on_workers(sink, reason);
    }

    /// Cancels what `sink` has on workers: tasks not started never start;
    /// a worker running one is stopped and killed. Called again on every
    /// turn until the cancellation completes (a stop may have to wait).
    fn cancel_on_workers(&mut self, sink: &Arc<Sink>, reason: CancelReason) {
        for w in 0..self.workers.len() {
            self.drain_ring(w);
            let link = &mut self.workers[w];
            let claims = &self.region.slot(link.slot).header.claims;
            let mut running = None;
            for sent in link.tasks.iter_mut() {
                if !Arc::ptr_eq(&sent.task.sink, sink) || sent.complete() {
                    continue;
                }
                if claims::cancel(claims, sent.ordinal) {
                    sent.skipped = true;
                    link.args_in_flight -= sent.task.args.len();
                } else if running.is_none() {
                    running = Some((sent.ordinal, sent.task.calls as usize));
                }
            }
            if let Some((ordinal, calls)) = running {
                self.aim_kill(w, Aim::Task { ordinal, calls }, reason.failure());
            }
        }
    }

    /// Cancellations not complete yet: try again what could not be done.
    pub(super) fn pursue_cancels(&mut self) {
        let open: Vec<(Arc<Sink>, CancelReason)> = self.cancelling.clone();
        for (sink, reason) in open {
            let running = self
                .workers
                .iter()
                .any(|w| w.pending().any(|s| Arc::ptr_eq(&s.task.sink, &sink)));
            if running {
                self.cancel_on_workers(&sink, reason);
            }
        }
    }

    /// Starts stopping worker `w` to kill it if `aim` still holds.
    pub(super) fn aim_kill(&mut self, w: usize, aim: Aim, failure: TaskFailure) {
        let link = &mut self.workers[w];
        if link.kill.is_some() || link.stopping.is_some() || link.ended {
            return;
        }
        if link.stop_again.is_some_and(|t| Instant::now() < t) {
            return;
        }
        link.signal(Signal::STOP);
        link.stopping = Some(Stopping {
            aim,
            failure,
            since: Instant::now(),
        });
    }

    /// Moves every stop along: kill, let go, or keep waiting.
    pub(super) fn advance_stops(&mut self) {
        for link in &mut self.workers {
            let Some(stopping) = &link.stopping else {
                continue;
            };
            if link.has_ended() {
                link.stopping = None;
                continue;
            }
            match proc_state(link.pid) {
                Some('T' | 't') => {
                    let header = self.region.slot(link.slot).header;
                    let p = claims::read(&header.progress);
                    let started = header.started_ns.load(std::sync::atomic::Ordering::Relaxed);
                    if stopping.aim.holds(p, started) {
                        link.signal(Signal::KILL);
                        link.kill = Some(Kill {
                            ordinal: p.ordinal,
                            call: p.call,
                            failure: stopping.failure.clone(),
                        });
                    }
                    link.signal(Signal::CONT);
                    link.stopping = None;
                }
                _ if stopping.since.elapsed() > STOP_PATIENCE => {
                    // Not stopped in time: let it go (this also discards
                    // the pending stop) and try again later.
                    link.signal(Signal::CONT);
                    link.stopping = None;
                    link.stop_again = Some(Instant::now() + STOP_AGAIN);
                }
                _ => {}
            }
        }
    }

    /// Whether a stop is under way (the driver then looks again soon).
    pub(super) fn stopping(&self) -> bool {
        self.workers.iter().any(|w| w.stopping.is_some())
    }

    /// Stops, to kill, workers whose call ran past its time limit.
    pub(super) fn enforce_limits(&mut self) {
        let now = xme_core::monotonic_ns();
        for w in 0..self.workers.len() {
            let Some((ordinal, limit)) = self.running_limit(w) else {
                continue;
            };
            let header = self.region.slot(self.workers[w].slot).header;
            let p = claims::read(&header.progress);
            let started = header.started_ns.load(std::sync::atomic::Ordering::Relaxed);
            if p.ordinal == ordinal
                && p.phase == PHASE_RUNNING
                && now.saturating_sub(started) >= saturating_ns(limit)
            {
                let aim = Aim::Call {
                    ordinal,
                    call: p.call,
                    started,
                };
                self.aim_kill(w, aim, TaskFailure::TimedOut { after: limit });
            }
        }
    }

    /// The ordinal and time limit of the task worker `w` runs or runs next,
    /// if it has a limit.
    fn running_limit(&self, w: usize) -> Option<(u64, Duration)> {
        let link = &self.workers[w];
        let sent = link.pending().next()?;
        Some((sent.ordinal, sent.task.limit?))
    }

    /// When the nearest time limit may pass.
    pub(super) fn nearest_limit(&self) -> Option<Duration> {
        let now = xme_core::monotonic_ns();
        (0..self.workers.len())
            .filter_map(|w| {
                let (ordinal, limit) = self.running_limit(w)?;
                let header = self.region.slot(self.workers[w].slot).header;
                let p = claims::read(&header.progress);
                let started = header.started_ns.load(std::sync::atomic::Ordering::Relaxed);
                let left = if p.ordinal == ordinal && p.phase == PHASE_RUNNING {
                    started
                        .saturating_add(saturating_ns(limit))
                        .saturating_sub(now)
                } else {
                    // Not started yet, or between calls: look again soon.
                    saturating_ns(limit).min(20_000_000)
                };
                Some(Duration::from_nanos(left))
            })
            .min()
    }

    /// Settles every worker that ended and whose end the zygote reported
    /// (or all of them, once the zygote is gone).
    pub(super) fn settle_dead(&mut self) {
        let mut w = 0;
        while w < self.workers.len() {
            let link = &self.workers[w];
            let dead = link.fate.is_some() || (self.gone.is_some() && (link.ended || link.hup));
            if dead {
                self.settle(w);
            } else {
                w += 1;
            }
        }
    }

    /// A dead worker: keep what it handed over, fail the call it was
    /// running (with the reason it was killed for, else its fate), fail as
    /// lost a call that returned without handing its result over, and send
    /// back the calls it never started.
    pub(super) fn settle(&mut self, w: usize) {
        // Everything it published: the rest of its socket, then its ring.
        self.workers[w].readable = true;
        self.read_socket(w);
        self.drain_ring(w);
        let mut link = self.workers.swap_remove(w);
        let header = self.region.slot(link.slot).header;
        let p = claims::read(&header.progress);
        let killed = link
            .kill
            .as_ref()
            .filter(|k| (k.ordinal, k.call) == (p.ordinal, p.call));
        let blamed = match (self.gone, killed, link.fate) {
            (Some(zygote), _, _) => TaskFailure::ZygoteDied { zygote },
            (None, Some(k), _) => k.failure.clone(),
            _ if link.broken.is_some() => TaskFailure::ChannelClosed,
            (None, None, Some(fate)) => TaskFailure::from_fate(fate),
            (None, None, None) => TaskFailure::ChannelClosed,
        };
        // A worker that could not read the frame sent to it: sending its
        // tasks again would end the next worker the same way.
        let unreadable = link.fate == Some(xme_core::Fate::Exited(EXIT_BROKEN_FRAME));
        let mut again: Vec<Task> = Vec::new();
        for sent in link.tasks.drain(..) {
            if sent.skipped {
                continue;
            }
            let (ordinal, task, mut block) = (sent.ordinal, sent.task, sent.block);
            let calls = task.calls as usize;
            let received = block.items.len();
            // Calls `received..started` had begun; `started..` never did.
            let started = if ordinal < p.ordinal {
                calls
            } else if ordinal == p.ordinal {
                (p.call + 1).min(calls)
            } else {
                0
            };
            for call in received..started.max(received) {
                // The call it was running fails with its fate (or the
                // reason it was killed for, also while it was handing its
                // result over); any other started call without a result had
                // returned and lost it: never run again.
                let at_it = ordinal == p.ordinal && call == p.call;
                let failure = if at_it
                    && (p.phase == PHASE_RUNNING || (p.phase == PHASE_REPLYING && killed.is_some()))
                {
                    blamed.clone()
                } else {
                    TaskFailure::ResultLost
                };
                block.items.push(Item::Failed(Box::new(failure)));
            }
            let done = block.items.len();
            if !block.items.is_empty() {
                task.sink.deliver(block);
            }
            if done >= calls {
                continue;
            }
            let rest = Task {
                first: task.first + done,
                calls: (calls - done) as u32,
                args: task.args[wire::call_offset(&task.args, done)..].to_vec(),
                requeued: task.requeued.saturating_add(1),
                ..task
            };
            let cancelled = rest.sink.state().cancel.is_some();
            if let Some(zygote) = self.gone {
                super::fail_all(&rest, &TaskFailure::ZygoteDied { zygote });
            } else if unreadable {
                super::fail_all(
                    &rest,
                    &TaskFailure::NotRun(
                        "its worker could not read the frame that carried it".into(),
                    ),
                );
            } else if rest.requeued >= MAX_REQUEUES {
                super::fail_all(
                    &rest,
                    &TaskFailure::NotRun(format!(
                        "{MAX_REQUEUES} workers ended before it could start; the last: {blamed}"
                    )),
                );
            } else if !cancelled {
                again.push(rest);
            }
        }
        for t in again.into_iter().rev() {
            self.queue.push_front(t);
        }
        self.free_slots.push(link.slot);
    }

    /// Closes the sinks whose cancellation is complete.
    pub(super) fn close_cancelled(&mut self) {
        let workers = &self.workers;
        let queue = &self.queue;
        self.cancelling.retain(|(sink, _)| {
            let busy = workers
                .iter()
                .any(|w| w.pending().any(|s| Arc::ptr_eq(&s.task.sink, sink)))
                || queue.iter().any(|t| Arc::ptr_eq(&t.sink, sink));
            if !busy {
                sink.close();
            }
            busy
        });
    }

    /// The zygote is gone: its workers die with it; every call not finished
    /// fails, now and later.
    pub(super) fn zygote_died(&mut self) {
        if self.gone.is_some() {
            return;
        }
        let pid = self
            .shared
            .zygote_pid
            .load(std::sync::atomic::Ordering::Relaxed);
        self.gone = Some(pid);
        lock_state(self).gone = Some(pid);
        if let Some(z) = self.zygote.take() {
            z.finish(Duration::from_millis(100));
        }
        for w in &self.workers {
            w.signal(Signal::KILL);
        }
        while !self.workers.is_empty() {
            self.settle(0);
        }
        for t in self.queue.drain(..) {
            super::fail_all(&t, &TaskFailure::ZygoteDied { zygote: pid });
        }
        let cancelling: Vec<_> = self.cancelling.drain(..).collect();
        for (sink, _) in cancelling {
            sink.close();
        }
    }
}

fn lock_state(d: &Driver) -> std::sync::MutexGuard<'_, crate::pool::engine::State> {
    crate::pool::engine::lock(&d.shared.state)
}

/// A process's state letter from `/proc/<pid>/stat` (`None` if it is gone).
fn proc_state(pid: i32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // "pid (comm) S ...": the state follows the last ')'.
    stat.rfind(')')
        .and_then(|i| stat[i + 1..].split_whitespace().next())
        .and_then(|s| s.chars().next())
}
