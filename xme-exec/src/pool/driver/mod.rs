//! The driver thread: the one place that talks to the zygote and the workers.
//!
//! It owns every worker link and runs one loop: take what owners submitted
//! or cancelled, hear the zygote (new workers, ended ones), start workers,
//! send tasks, read sockets and rings, settle dead workers, move stops and
//! time limits along, hand results to sinks, and sleep in `poll(2)` when
//! there is nothing to do. It never waits on another process: the zygote's
//! answers and reports arrive on its control socket like any other event,
//! and owners touch only the shared `State` and their sinks.
//!
//! Rooms: `link.rs` (one worker: its socket and ring), `schedule.rs` (which
//! worker runs what), `settle.rs` (cancels, time limits, dead workers).

mod link;
mod schedule;
mod settle;

use std::collections::VecDeque;
use std::os::fd::AsFd;
use std::sync::Arc;
use std::time::Duration;

use nix::poll::{PollFd, PollFlags, PollTimeout};
use nix::sys::eventfd::EventFd;

use super::doorbell;
use super::engine::{Block, CancelReason, Item, Sink, State, Task, lock};
use super::layout::PoolRegion;
use super::zygote::{FromZygote, PoolStart, Zygote};
use crate::TaskFailure;
use link::WorkerLink;

/// What owners and the driver share.
#[derive(Debug)]
pub(crate) struct Shared {
    pub state: std::sync::Mutex<State>,
    /// Written to wake the driver from `poll`.
    pub wake: EventFd,
    pub pnum: usize,
    /// Each call's default time limit.
    pub limit: Option<Duration>,
    pub zygote_pid: std::sync::atomic::AtomicI32,
    /// The measured time of one call (`f64` bits; 0 until measured), for
    /// the first chunk size of new batches.
    pub call_ns: std::sync::atomic::AtomicU64,
    /// The process whose driver thread runs the pool: a forked child of it
    /// has a copy of this value but no driver.
    pub owner: u32,
    /// Bumped after each submission, cancellation or shutdown: what the
    /// driver watches while it spins before sleeping (see `Driver::spin`).
    pub nudges: std::sync::atomic::AtomicU64,
}

impl Shared {
    /// This process is a fork of the pool's owner: it cannot use the pool
    /// (its driver thread and zygote are the parent's).
    pub fn foreign(&self) -> bool {
        xme_core::process::current_pid() != self.owner
    }

    /// Hands tasks to the driver (or fails them at once if the pool is
    /// gone, or this is not the pool's process).
    pub fn submit(&self, tasks: Vec<Task>) {
        if tasks.is_empty() {
            return;
        }
        if self.foreign() {
            for t in tasks {
                fail_all(&t, &foreign_failure(self.owner));
            }
            return;
        }
        let mut s = lock(&self.state);
        if let Some(zygote) = s.gone {
            drop(s);
            for t in tasks {
                fail_all(&t, &TaskFailure::ZygoteDied { zygote });
            }
            return;
        }
        s.submitted.extend(tasks);
        self.wake_locked(&mut s);
    }

    /// Cancels every call of `sink` (see [`CancelReason`]); the sink is
    /// closed once nothing of it is queued or running.
    pub fn cancel(&self, sink: &Arc<Sink>, reason: CancelReason) {
        {
            let mut st = sink.state();
            if st.closed || st.cancel.is_some() {
                return;
            }
            st.cancel = Some(reason);
        }
        if self.foreign() {
            sink.close();
            return;
        }
        let mut s = lock(&self.state);
        if s.gone.is_some() {
            drop(s);
            sink.close();
            return;
        }
        s.cancels.push((sink.clone(), reason));
        self.wake_locked(&mut s);
    }

    pub fn shut_down(&self) {
        let mut s = lock(&self.state);
        s.shutdown = true;
        self.wake_locked(&mut s);
    }

    fn wake_locked(&self, s: &mut State) {
        self.nudges
            .fetch_add(1, std::sync::atomic::Ordering::Release);
        if s.parked {
            s.parked = false;
            let _ = self.wake.write(1);
        }
    }
}

/// The failure of a call submitted in a forked child of the pool's owner.
fn foreign_failure(owner: u32) -> TaskFailure {
    TaskFailure::NotRun(format!(
        "the pool belongs to process {owner}; a forked child of it cannot use it (make a pool in the child)"
    ))
}

/// Delivers a failure for every call of `t`.
pub(super) fn fail_all(t: &Task, failure: &TaskFailure) {
    let mut block = Block::new(t.first);
    for _ in 0..t.calls {
        block.items.push(Item::Failed(Box::new(failure.clone())));
    }
    t.sink.deliver(block);
}

/// The driver's own state, on its thread.
pub(crate) struct Driver {
    shared: Arc<Shared>,
    region: PoolRegion,
    zygote: Option<Zygote>,
    workers: Vec<WorkerLink>,
    free_slots: Vec<usize>,
    queue: VecDeque<Task>,
    /// Sinks being cancelled, until nothing of theirs is queued or running.
    cancelling: Vec<(Arc<Sink>, CancelReason)>,
    /// Mean run time of one call (exponentially weighted), once measured.
    call_ns: Option<f64>,
    /// Why the last spawn failed, while no worker could be started.
    spawn_refused: Option<String>,
    /// The slot of the worker asked of the zygote and not yet given.
    spawning: Option<usize>,
    /// The zygote's pid, once it is gone.
    gone: Option<i32>,
    read_buf: Vec<u8>,
    published: (Vec<i32>, Vec<i32>),
    /// Tasks that ended, delivered once the worker lists are published (so
    /// an owner woken by its result sees its worker idle).
    outbox: Vec<(Arc<Sink>, Block)>,
    /// Whether the driver's last wait was short enough for a spin to
    /// catch what ended it (see `spin`).
    spin_pays: bool,
}

/// Starts the driver thread, which starts the zygote; returns once the
/// zygote serves (or failed to start).
pub(crate) fn start(
    shared: Arc<Shared>,
    region: PoolRegion,
    how: PoolStart,
) -> Result<std::thread::JoinHandle<()>, xme_core::Error> {
    let (tx, rx) = std::sync::mpsc::channel();
    let handle = std::thread::Builder::new()
        .name("xme-pool".into())
        .spawn(move || {
            // The zygote is a child of this thread (its death signal is
            // tied to it), which lives exactly as long as the pool.
            let zygote = match Zygote::start(how, &region) {
                Ok(z) => z,
                Err(e) => {
                    let _ = tx.send(Err(e));
                    return;
                }
            };
            shared
                .zygote_pid
                .store(zygote.pid(), std::sync::atomic::Ordering::Relaxed);
            let _ = tx.send(Ok(()));
            let slots = region.slots();
            let mut driver = Driver {
                shared,
                region,
                zygote: Some(zygote),
                workers: Vec::new(),
                free_slots: (0..slots).rev().collect(),
                queue: VecDeque::new(),
                cancelling: Vec::new(),
                call_ns: None,
                spawn_refused: None,
                spawning: None,
                gone: None,
                read_buf: vec![0; 64 * 1024],
                published: (Vec::new(), Vec::new()),
                outbox: Vec::new(),
                spin_pays: true,
            };
            let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| driver.run()));
            if ran.is_err() {
                // A bug in the driver: end the pool cleanly rather than
                // leave every waiting owner waiting for ever.
                driver.zygote_died();
            }
            driver.shut_down();
        })
        .map_err(|source| xme_core::Error::Io {
            doing: "starting the pool's driver thread",
            source,
        })?;
    match rx.recv() {
        Ok(Ok(())) => Ok(handle),
        Ok(Err(e)) => {
            let _ = handle.join();
            Err(e)
        }
        Err(_) => {
            let _ = handle.join();
            Err(xme_core::Error::Io {
                doing: "starting the pool's zygote",
                source: std::io::Error::other("the driver thread ended first"),
            })
        }
    }
}

/// The longest `poll` while any call is in flight: a worker whose wake-up
/// was lost (its region scribbled over by a task) costs at most this.
const TICK: Duration = Duration::from_millis(100);

impl Driver {
    fn run(&mut self) {
        loop {
            let (submitted, cancels, shutdown) = {
                let mut s = lock(&self.shared.state);
                (
                    std::mem::take(&mut s.submitted),
                    std::mem::take(&mut s.cancels),
                    s.shutdown,
                )
            };
            if shutdown {
                return;
            }
            for t in submitted {
                self.accept(t);
            }
            for (sink, reason) in cancels {
                self.cancel(&sink, reason);
            }
            self.hear_zygote();
            self.start_workers();
            self.steal();
            self.dispatch();
            self.flush();
            self.read_sockets();
            self.drain_rings();
            self.settle_dead();
            self.pursue_cancels();
            self.enforce_limits();
            self.advance_stops();
            self.publish_workers();
            for (sink, block) in self.outbox.drain(..) {
                sink.deliver(block);
            }
            self.close_cancelled();
            self.sleep();
        }
    }

    fn accept(&mut self, t: Task) {
        if let Some(zygote) = self.gone {
            fail_all(&t, &TaskFailure::ZygoteDied { zygote });
        } else if t.sink.state().cancel.is_none() {
            self.queue.push_back(t);
        }
    }

    /// Takes in what the zygote said: new workers, refusals, ended workers.
    fn hear_zygote(&mut self) {
        loop {
            let Some(zygote) = self.zygote.as_mut() else {
                return;
            };
            let heard = match zygote.receive() {
                Ok(Some(heard)) => heard,
                Ok(None) => return,
                Err(_) => {
                    self.zygote_died();
                    return;
                }
            };
            match heard {
                FromZygote::Spawned { pid, socket, pidfd } => {
                    let slot = self.spawning.take();
                    match (slot, socket) {
                        (Some(slot), Some(socket)) if socket.set_nonblocking(true).is_ok() => {
                            self.spawn_refused = None;
                            self.workers.push(WorkerLink::new(pid, slot, socket, pidfd));
                        }
                        (slot, _) => {
                            // Its socket did not reach us (our descriptor
                            // table is full): it ends by itself (its
                            // socket's other end is closed).
                            self.spawning = slot;
                            self.spawn_refused(
                                "no descriptor left in this process for the worker's socket".into(),
                            );
                        }
                    }
                }
                FromZygote::Refused(e) => self.spawn_refused(e.to_string()),
                FromZygote::Died { pid, fate } => {
                    if let Some(w) = self.workers.iter_mut().find(|w| w.pid == pid) {
                        w.fate = Some(fate);
                        w.ended = true;
                    }
                }
            }
        }
    }

    fn publish_workers(&mut self) {
        let idle: Vec<i32> = self
            .workers
            .iter()
            .filter(|w| w.is_idle())
            .map(|w| w.pid)
            .collect();
        let all: Vec<i32> = self.workers.iter().map(|w| w.pid).collect();
        if (&idle, &all) != (&self.published.0, &self.published.1) {
            let mut s = lock(&self.shared.state);
            s.idle.clone_from(&idle);
            s.workers.clone_from(&all);
            self.published = (idle, all);
        }
    }

    /// Looks for a worker's event or an owner's submission for up to
    /// [`SPIN`] before the driver sleeps: whether one came. Awake, the
    /// driver needs no byte from a worker nor an eventfd write from an
    /// owner, and a call that ends within the spin costs no wake-up of a
    /// sleeping thread (on this kind of machine an idle virtual CPU takes
    /// several microseconds to wake, twice per call otherwise).
    ///
    /// Only while it pays: after a sleep that a spin would have cut short
    /// (or a spin that found something). Where events come further apart
    /// (the chunks of a stream), each spin would take the time a worker
    /// needs from its core, for nothing.
    fn spin(&mut self) -> bool {
        use std::sync::atomic::Ordering;
        if !self.spin_pays || !self.queue.is_empty() {
            return false;
        }
        // Calls in flight beyond one task per worker (a stream's window):
        // the workers are fed, and the owner has results to take; a spin
        // would only compete with them for the cores.
        let in_flight: usize = self.workers.iter().map(|w| w.pending().count()).sum();
        if in_flight > self.shared.pnum {
            return false;
        }
        // The soonest task end, by the measured time of a call: one due
        // later than the spin lasts is not caught by it, and a spin after
        // each submission (short waits, so `spin_pays`) would cost its
        // whole length per call of such a pool.
        if let Some(call_ns) = self.call_ns {
            let soonest = self
                .workers
                .iter()
                .filter_map(|w| w.pending().next())
                .map(|s| (s.task.calls as usize).saturating_sub(s.received()) as f64 * call_ns)
                .fold(f64::INFINITY, f64::min);
            if soonest.is_finite() && soonest > SPIN.as_nanos() as f64 {
                return false;
            }
        }
        let nudges = self.shared.nudges.load(Ordering::Acquire);
        let until = std::time::Instant::now() + SPIN;
        loop {
            for _ in 0..64 {
                let mut moved = false;
                for link in &mut self.workers {
                    let events = &self.region.slot(link.slot).header.events;
                    moved |= doorbell::changed(events, &mut link.events_seen);
                }
                if moved {
                    return true;
                }
                if self.shared.nudges.load(Ordering::Acquire) != nudges {
                    return true;
                }
                std::hint::spin_loop();
            }
            if std::time::Instant::now() >= until {
                return false;
            }
        }
    }

    /// Sleeps in `poll` until something happens, unless something already
    /// did.
    fn sleep(&mut self) {
        let dispatchable = !self.queue.is_empty()
            && self.gone.is_none()
            && (self.workers.iter().any(|w| self.has_room(w))
                || (self.workers.len() < self.shared.pnum
                    && self.spawn_refused.is_none()
                    && self.spawning.is_none()));
        // A socket to read now (a large result's bytes): no spin, no poll.
        let readable = self.workers.iter().any(|w| w.readable && !w.hup);
        if dispatchable || readable || self.spin() {
            return;
        }
        doorbell::prepare_sleep(&self.region.header().driver_sleeping);
        let mut busy = false;
        for link in &mut self.workers {
            let events = &self.region.slot(link.slot).header.events;
            busy |= doorbell::changed(events, &mut link.events_seen);
        }
        if !busy {
            let mut s = lock(&self.shared.state);
            if s.submitted.is_empty() && s.cancels.is_empty() && !s.shutdown {
                s.parked = true;
            } else {
                busy = true;
            }
        }
        if !busy {
            let slept = std::time::Instant::now();
            self.poll();
            self.spin_pays = slept.elapsed() <= SPIN;
            lock(&self.shared.state).parked = false;
        }
        doorbell::woke(&self.region.header().driver_sleeping);
    }

    fn poll(&mut self) {
        let mut timeout = self.nearest_limit();
        let in_flight = self.workers.iter().any(|w| w.pending().next().is_some());
        if in_flight || !self.cancelling.is_empty() {
            timeout = Some(timeout.map_or(TICK, |t| t.min(TICK)));
        }
        if self.stopping() {
            timeout = Some(Duration::from_millis(1));
        }
        if self.spawn_refused.is_some() && !self.queue.is_empty() {
            // Try to start a worker again soon.
            timeout = Some(timeout.map_or(RETRY_SPAWN, |t| t.min(RETRY_SPAWN)));
            self.spawn_refused = None;
        }
        let mut fds: Vec<PollFd<'_>> = Vec::with_capacity(3 + 2 * self.workers.len());
        fds.push(PollFd::new(self.shared.wake.as_fd(), PollFlags::POLLIN));
        let mut zygote_at = None;
        if let Some(z) = self.zygote.as_ref() {
            fds.push(PollFd::new(z.control(), PollFlags::POLLIN));
            if let Some(fd) = z.pidfd() {
                fds.push(PollFd::new(fd, PollFlags::POLLIN));
                zygote_at = Some(fds.len() - 1);
            }
        }
        let mut at = Vec::with_capacity(self.workers.len());
        for link in &self.workers {
            let mut flags = PollFlags::empty();
            if !link.hup {
                flags |= PollFlags::POLLIN;
                if link.out_at < link.out.len() {
                    flags |= PollFlags::POLLOUT;
                }
            }
            let socket = (!flags.is_empty()).then(|| {
                fds.push(PollFd::new(link.socket.as_fd(), flags));
                fds.len() - 1
            });
            at.push(socket);
        }
        let timeout = timeout.map_or(PollTimeout::NONE, |t| {
            PollTimeout::try_from(t.as_millis().min(60_000) as i32 + 1).unwrap_or(PollTimeout::MAX)
        });
        if nix::poll::poll(&mut fds, timeout).is_err() {
            return; // EINTR: look again
        }
        let ready = |i: usize| fds[i].revents().is_some_and(|r| !r.is_empty());
        let zygote_ended = zygote_at.is_some_and(ready);
        let readable: Vec<bool> = at.iter().map(|&s| s.is_some_and(ready)).collect();
        let woken = ready(0);
        drop(fds);
        for (link, readable) in self.workers.iter_mut().zip(readable) {
            link.readable |= readable;
        }
        if woken {
            let _ = self.shared.wake.read();
        }
        if zygote_ended {
            // Hear what it said before it ended (its last reports).
            self.hear_zygote();
            self.zygote_died();
        }
    }

    fn shut_down(&mut self) {
        for link in &self.workers {
            let _ = link.socket.shutdown(std::net::Shutdown::Both);
        }
        self.workers.clear();
        if let Some(z) = self.zygote.take() {
            z.finish(Duration::from_secs(2));
        }
        // Owners are gone; sinks of detached calls just drop.
    }
}

/// How long the driver looks for work before it sleeps (see `Driver::spin`).
const SPIN: Duration = Duration::from_micros(50);

/// How soon to try starting a worker again after the zygote could not fork.
const RETRY_SPAWN: Duration = Duration::from_millis(50);
