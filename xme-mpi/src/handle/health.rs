//! Noticing that a logical process ended: it died, stopped answering, ran
//! a call past the deadline, or broke its channel; and failing its calls.

use std::sync::atomic::Ordering;
use std::time::Instant;

use xme_core::Fate;
use xme_core::process::Child;

use super::MpiHandle;
use super::send::DIRECT_SLOT;
use crate::MpiError;
use crate::channel::Corrupt;
use crate::link::{Ended, Link, RecvSide, lock};
use crate::logical::EXIT_NO_WATCHER;
use crate::slots::SlotState;

impl MpiHandle<'_> {
    /// Whether `link`'s process lives and answers; if not, ends it (see
    /// [`end`](Self::end)). `reader` is the held `link.recv`. Called by
    /// every wait that comes up empty for a while.
    pub(crate) fn check_alive(&self, link: &Link<'_>, reader: &mut RecvSide<'_>) -> bool {
        if link.ended.get().is_some() {
            return false;
        }
        if let Some(ended) = self.health(link) {
            self.end(link, ended, reader);
            return false;
        }
        if !link.forked {
            return true;
        }
        let mut child = lock(&link.child);
        match child.as_mut().map(Child::try_wait) {
            Some(Ok(None)) => true,
            Some(Ok(Some(fate))) => {
                drop(child);
                self.pump(link, reader); // replies it wrote before dying still count
                let ended = if link.closing.load(Ordering::Acquire) {
                    // `close` ended it (and may be about to say so itself).
                    Ended::Closed(super::close::closed_reason(Some(fate)))
                } else if matches!(fate, Fate::Exited(EXIT_NO_WATCHER)) {
                    Ended::Broken(
                        "it exited at start: the system refused its watcher thread \
                         (too many threads or processes: raise `ulimit -u`, or run fewer \
                         logical processes)"
                            .to_string(),
                    )
                } else {
                    Ended::Died(fate)
                };
                let _ = link.ended.set(ended);
                false
            }
            _ => {
                drop(child);
                let why = "its process could not be waited for".to_string();
                self.end(link, Ended::Broken(why), reader);
                false
            }
        }
    }

    /// A call past the deadline, or beats silent for the detection bound.
    fn health(&self, link: &Link<'_>) -> Option<Ended> {
        if let Some(call) = link.watch.overdue() {
            return Some(Ended::Overdue {
                unit: self.unit_name(link, call.unit),
                slot: call.slot,
                position: call.position,
                ran: call.ran,
            });
        }
        let beats = link.watch.beats.load(Ordering::Relaxed);
        let mut seen = lock(&link.beat_seen);
        if beats != seen.beats {
            seen.beats = beats;
            seen.since = Instant::now();
            return None;
        }
        let silent = seen.since.elapsed();
        (silent >= self.plan.silence_limit()).then_some(Ended::Silent(silent))
    }

    /// The name of unit `id` as `link`'s process numbers it.
    fn unit_name(&self, link: &Link<'_>, id: u32) -> &'static str {
        let ours = if link.unit_ids.is_empty() {
            Some(id as usize)
        } else {
            link.unit_ids.iter().position(|&theirs| theirs == id)
        };
        ours.and_then(|i| self.unit_names.get(i).copied())
            .unwrap_or("fn")
    }

    /// Ends `link` for `why` (the first reason recorded wins): a forked
    /// process is killed and reaped; a rank gets no more calls (the cluster
    /// backend ends the job when `run` returns). Replies that arrived before
    /// still count. `reader` is the held `link.recv`.
    pub(crate) fn end(&self, link: &Link<'_>, why: Ended, reader: &mut RecvSide<'_>) {
        if link.ended.set(why).is_err() {
            return;
        }
        if let Some(c) = lock(&link.child).as_mut() {
            let _ = c.kill_mut();
        }
        let ended = link.ended.get().expect("just set");
        match ended {
            Ended::Overdue { unit, ran, .. } => log::error!(
                "MPI: a call of `{unit}` ran {ran:?} on logical process {}, past the {:?} \
                 deadline: {}",
                link.id,
                self.plan.deadline.unwrap_or_default(),
                if link.forked {
                    "killed it"
                } else {
                    "the rank is treated as hung"
                }
            ),
            Ended::Silent(silent) => log::error!(
                "MPI: logical process {} (pid {}{}) gave no sign of life for {silent:?}: \
                 treated as dead",
                link.id,
                link.pid,
                link.host
                    .as_deref()
                    .map(|h| format!(" on host {h}"))
                    .unwrap_or_default()
            ),
            _ => {}
        }
        if !matches!(ended, Ended::Broken(_)) {
            self.pump(link, reader);
        }
    }

    /// Ends `link` whose reply channel broke the channel's format.
    pub(crate) fn corrupt_replies(
        &self,
        link: &Link<'_>,
        reader: &mut RecvSide<'_>,
        corrupt: &Corrupt,
    ) {
        log::error!(
            "MPI: reply channel of logical process {} is corrupt ({}); closing it",
            link.id,
            corrupt.0
        );
        let why = "its reply channel was corrupt".to_string();
        self.end(link, Ended::Broken(why), reader);
        self.fail_pending(link);
    }

    /// The error of the call that ran past the deadline.
    pub(crate) fn overdue_error(
        &self,
        link: &Link<'_>,
        unit: &str,
        ran: std::time::Duration,
    ) -> MpiError {
        MpiError::DeadlineExceeded {
            unit: unit.to_string(),
            process: link.id,
            pid: link.pid,
            host: link.host.clone(),
            deadline: self.plan.deadline.unwrap_or_default(),
            ran,
        }
    }

    /// The error of a direct call (slot [`DIRECT_SLOT`]) to ended `link`.
    pub(crate) fn direct_error(&self, link: &Link<'_>, unit: &str) -> MpiError {
        match link.ended.get().expect("ended") {
            Ended::Overdue {
                slot: DIRECT_SLOT,
                ran,
                ..
            } => self.overdue_error(link, unit, *ran),
            ended => self.ended_error(link, ended),
        }
    }

    /// Fails every slot still pending on an ended process: the call that
    /// ran past the deadline with [`MpiError::DeadlineExceeded`], the
    /// others with the reason the process ended.
    pub(crate) fn fail_pending(&self, link: &Link<'_>) {
        let Some(ended) = link.ended.get() else {
            return;
        };
        let err = self.ended_error(link, ended);
        let overdue = match ended {
            Ended::Overdue { slot, ran, .. } => Some((*slot, *ran)),
            _ => None,
        };
        let mut table = lock(&self.slots);
        let mut freed = false;
        for i in 0..table.entries.len() {
            match table.entries[i].state {
                SlotState::Pending { lp, unit } if lp == link.id => {
                    let e = match overdue {
                        Some((slot, ran)) if slot as usize == i => {
                            self.overdue_error(link, unit, ran)
                        }
                        _ => err.clone(),
                    };
                    table.entries[i].state = SlotState::Ready(Err(e));
                }
                SlotState::Abandoned { lp } if lp == link.id => {
                    freed |= table.release(i as u32);
                }
                _ => {}
            }
        }
        link.load.store(0, Ordering::Release);
        if freed {
            self.slot_freed.notify_all();
        }
    }

    /// Every process lost (died, hung, silent, or lingering after close),
    /// said in one line; `None` if none was.
    #[cfg_attr(not(feature = "cluster"), allow(dead_code))]
    pub(crate) fn lost_processes(&self) -> Option<String> {
        let lost: Vec<String> = self
            .links
            .iter()
            .filter_map(|l| {
                let ended = l.ended.get().filter(|e| e.lost())?;
                Some(match ended {
                    Ended::Overdue { unit, ran, .. } => self.overdue_error(l, unit, *ran),
                    other => self.ended_error(l, other),
                })
            })
            .map(|e| e.to_string())
            .collect();
        (!lost.is_empty()).then(|| lost.join("; "))
    }
}
