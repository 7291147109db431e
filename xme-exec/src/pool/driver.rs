//! The driver thread: the one place that talks to the zygote and the workers.
//!
//! It owns every worker link and runs one loop: take what owners submitted
//! or cancelled, start workers, send tasks, read sockets and rings, hand
//! results to sinks, settle dead workers, enforce time limits, and sleep in
//! `poll(2)` when there is nothing to do. No lock is held while it waits on
//! another process: owners touch only the shared `State` and their sinks.
//!
//! A dead worker is settled from its slot (see `claims.rs`): results in its
//! ring are kept, the call its progress word names fails with its fate (or
//! with the reason the driver killed it), a call that had returned but whose
//! result was not yet in the ring fails as lost, and calls that never started
//! are queued again at the front.

use std::collections::VecDeque;
use std::io::{ErrorKind, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, PollTimeout};
use nix::sys::eventfd::EventFd;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use super::claims::{self, CLAIMS, PHASE_RUNNING};
use super::engine::{Block, CancelReason, Item, Sink, State, Task, lock};
use super::layout::PoolRegion;
use super::ring::{self, KIND_BIG, KIND_END, KIND_RESULT};
use super::zygote::{self, PoolStart, SpawnError, Zygote};
use super::{doorbell, wire};
use crate::TaskFailure;

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
    /// the first chunk size of new streams.
    pub call_ns: std::sync::atomic::AtomicU64,
}

impl Shared {
    /// Hands tasks to the driver (or fails them at once if the pool is
    /// gone).
    pub fn submit(&self, tasks: Vec<Task>) {
        if tasks.is_empty() {
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
        if s.parked {
            s.parked = false;
            let _ = self.wake.write(1);
        }
    }
}

/// Delivers a failure for every call of `t`.
fn fail_all(t: &Task, failure: &TaskFailure) {
    let mut block = Block::new(t.first);
    for _ in 0..t.calls {
        block.items.push(Item::Failed(Box::new(failure.clone())));
    }
    t.sink.deliver(block);
}

/// A task sent to a worker.
#[derive(Debug)]
struct Sent {
    ordinal: u64,
    task: Task,
    /// Results received so far (calls `0..block.items.len()`).
    block: Block,
    /// Cancelled before it started: the worker skips it.
    skipped: bool,
    /// Its end record came: every result is in `block`.
    ended: bool,
}

impl Sent {
    fn received(&self) -> usize {
        self.block.items.len()
    }

    /// Nothing more will come of it.
    fn complete(&self) -> bool {
        self.skipped || self.ended
    }
}

/// A kill the driver issued, and the failure of the call it was aimed at.
#[derive(Debug)]
struct Kill {
    ordinal: u64,
    call: usize,
    failure: TaskFailure,
}

#[derive(Debug)]
struct WorkerLink {
    pid: i32,
    slot: usize,
    socket: UnixStream,
    pidfd: Option<OwnedFd>,
    /// Bytes to send, from `out_at` on.
    out: Vec<u8>,
    out_at: usize,
    /// Bytes read from the socket and not yet parsed.
    inbuf: Vec<u8>,
    /// Whole results that came over the socket, in order.
    bigs: VecDeque<Vec<u8>>,
    tasks: VecDeque<Sent>,
    next_ordinal: u64,
    /// The ring's consumer position.
    head: u64,
    events_seen: u64,
    /// Bytes of arguments of tasks in flight.
    args_in_flight: usize,
    kill: Option<Kill>,
    /// The socket may have bytes (poll said so, or we have not looked).
    readable: bool,
    /// The worker closed its socket.
    hup: bool,
    /// The worker has ended (its pidfd said so).
    ended: bool,
    /// The worker broke the protocol (it is killed).
    broken: Option<String>,
}

impl WorkerLink {
    /// Tasks it still has to run (cancelled ones excluded).
    fn pending(&self) -> impl Iterator<Item = &Sent> {
        self.tasks.iter().filter(|s| !s.complete())
    }

    fn is_idle(&self) -> bool {
        self.pending().next().is_none() && self.out_at == self.out.len()
    }
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
    cancelling: Vec<Arc<Sink>>,
    /// Mean run time of one call (exponentially weighted), once measured.
    call_ns: Option<f64>,
    /// Why the last spawn failed, while no worker could be started.
    spawn_refused: Option<String>,
    /// The zygote's pid, once it is gone.
    gone: Option<i32>,
    read_buf: Vec<u8>,
    published: (Vec<i32>, Vec<i32>),
    /// Tasks that ended, delivered once the worker lists are published (so
    /// an owner woken by its result sees its worker idle).
    outbox: Vec<(Arc<Sink>, Block)>,
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
            let driver = Driver {
                shared,
                region,
                zygote: Some(zygote),
                workers: Vec::new(),
                free_slots: (0..slots).rev().collect(),
                queue: VecDeque::new(),
                cancelling: Vec::new(),
                call_ns: None,
                spawn_refused: None,
                gone: None,
                read_buf: vec![0; 64 * 1024],
                published: (Vec::new(), Vec::new()),
                outbox: Vec::new(),
            };
            driver.run();
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

/// A worker may hold this many bytes of arguments in flight.
const ARGS_IN_FLIGHT: usize = 1 << 20;
/// And this much estimated work queued behind its running task.
const QUEUED_WORK_NS: f64 = 1_000_000.0;

impl Driver {
    fn run(mut self) {
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
                self.shut_down();
                return;
            }
            for t in submitted {
                self.accept(t);
            }
            for (sink, reason) in cancels {
                self.cancel(&sink, reason);
            }
            self.start_workers();
            self.steal();
            self.dispatch();
            self.flush();
            self.read_sockets();
            self.drain_rings();
            self.settle_dead();
            self.enforce_limits();
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

    fn cancel(&mut self, sink: &Arc<Sink>, reason: CancelReason) {
        self.queue.retain(|t| !Arc::ptr_eq(&t.sink, sink));
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
                    running = Some(sent.ordinal);
                }
            }
            if let Some(ordinal) = running {
                let failure = reason.failure();
                self.kill_if(w, failure, |p, _| p.ordinal == ordinal);
            }
        }
        self.cancelling.push(sink.clone());
    }

    /// Stops worker `w`, and kills it if `aimed` still holds for where it
    /// is (its progress and the call's start time), so a kill never lands
    /// on a call that started after the decision; else lets it go on.
    fn kill_if(
        &mut self,
        w: usize,
        failure: TaskFailure,
        aimed: impl Fn(claims::Progress, u64) -> bool,
    ) {
        let link = &mut self.workers[w];
        if link.kill.is_some() || link.ended {
            return;
        }
        let pid = Pid::from_raw(link.pid);
        let header = self.region.slot(link.slot).header;
        if kill(pid, Signal::SIGSTOP).is_err() || !wait_stopped(link.pid) {
            return; // it ended on its own: settled as a death
        }
        let p = claims::read(&header.progress);
        let started = header.started_ns.load(std::sync::atomic::Ordering::Relaxed);
        let unfinished = p.phase == PHASE_RUNNING;
        if unfinished && aimed(p, started) {
            let _ = kill(pid, Signal::SIGKILL);
            link.kill = Some(Kill {
                ordinal: p.ordinal,
                call: p.call,
                failure,
            });
        }
        let _ = kill(pid, Signal::SIGCONT);
    }

    fn start_workers(&mut self) {
        if self.gone.is_some() || self.queue.is_empty() || self.workers.len() >= self.shared.pnum {
            return;
        }
        // Only when no live worker is free for the next task.
        if self.workers.iter().any(|w| self.has_room(w)) {
            return;
        }
        let Some(slot) = self.free_slots.pop() else {
            return;
        };
        self.region.reset(slot);
        let Some(zygote) = self.zygote.as_mut() else {
            return;
        };
        match zygote.spawn(slot) {
            Ok((pid, socket)) => {
                self.spawn_refused = None;
                if socket.set_nonblocking(true).is_err() {
                    let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
                }
                self.workers.push(WorkerLink {
                    pid,
                    slot,
                    socket,
                    pidfd: zygote::worker_pidfd(pid),
                    out: Vec::new(),
                    out_at: 0,
                    inbuf: Vec::new(),
                    bigs: VecDeque::new(),
                    tasks: VecDeque::new(),
                    next_ordinal: 1,
                    head: 0,
                    events_seen: 0,
                    args_in_flight: 0,
                    kill: None,
                    readable: true,
                    hup: false,
                    ended: false,
                    broken: None,
                });
            }
            Err(SpawnError::Refused(e)) => {
                self.free_slots.push(slot);
                if self.workers.is_empty() {
                    // Nothing can run these calls now: say why.
                    let why = format!("no worker process could be started: {e}");
                    for t in self.queue.drain(..) {
                        fail_all(&t, &TaskFailure::NotRun(why.clone()));
                    }
                }
                self.spawn_refused = Some(e.to_string());
            }
            Err(SpawnError::Broken) => {
                self.free_slots.push(slot);
                self.zygote_died();
            }
        }
    }

    fn has_room(&self, w: &WorkerLink) -> bool {
        if w.kill.is_some() || w.hup || w.ended || w.broken.is_some() {
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
    fn steal(&mut self) {
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
            let task = Task {
                sink: sent.task.sink.clone(),
                entry: sent.task.entry,
                first: sent.task.first,
                calls: sent.task.calls,
                args: std::mem::take(&mut sent.task.args),
                limit: sent.task.limit,
            };
            taken.push(task);
        }
        // Oldest first.
        for task in taken.into_iter().rev() {
            self.queue.push_back(task);
        }
    }

    /// Sends queued tasks to workers with room, one task to each in turn
    /// (so a batch spreads over the workers), as one frame per worker.
    fn dispatch(&mut self) {
        if self.queue.is_empty() {
            return;
        }
        let mut frames: Vec<Option<(usize, u32)>> = vec![None; self.workers.len()];
        loop {
            let mut gave = false;
            // The least loaded first: an idle worker before a busy one.
            let mut order: Vec<usize> = (0..self.workers.len()).collect();
            order.sort_by_key(|&w| self.workers[w].pending().count());
            for w in order {
                let frame = &mut frames[w];
                if self.queue.is_empty() {
                    break;
                }
                if !self.has_room(&self.workers[w]) {
                    continue;
                }
                let Some(task) = self.queue.pop_front() else {
                    break;
                };
                let claims = &self.region.slot(self.workers[w].slot).header.claims;
                let link = &mut self.workers[w];
                let (_, count) = frame.get_or_insert_with(|| (wire::start_frame(&mut link.out), 0));
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

    fn flush(&mut self) {
        for link in &mut self.workers {
            while link.out_at < link.out.len() && !link.hup {
                match link.socket.write(&link.out[link.out_at..]) {
                    Ok(0) => break,
                    Ok(n) => link.out_at += n,
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == ErrorKind::Interrupted => {}
                    Err(_) => {
                        // EPIPE and the like: the worker ended; its death
                        // settles its tasks.
                        link.hup = true;
                    }
                }
            }
            if link.out_at == link.out.len() && link.out_at > 0 {
                link.out.clear();
                link.out_at = 0;
            }
        }
    }

    fn read_sockets(&mut self) {
        for w in 0..self.workers.len() {
            if self.workers[w].readable {
                self.read_socket(w);
            }
        }
    }

    /// Reads what worker `w` sent until the socket has no more.
    fn read_socket(&mut self, w: usize) {
        let link = &mut self.workers[w];
        loop {
            if link.hup {
                break;
            }
            match link.socket.read(&mut self.read_buf) {
                Ok(0) => link.hup = true,
                Ok(n) => link.inbuf.extend_from_slice(&self.read_buf[..n]),
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => link.hup = true,
            }
        }
        link.readable = false;
        // Parse: WAKE bytes, and BIG results once whole.
        let mut at = 0;
        while at < link.inbuf.len() {
            match link.inbuf[at] {
                wire::WAKE => at += 1,
                wire::BIG => {
                    let Some(len) = link.inbuf.get(at + 1..at + 5) else {
                        break;
                    };
                    let len = u32::from_le_bytes(len.try_into().expect("4 bytes")) as usize;
                    if len > wire::MAX_FRAME {
                        link.broken = Some(format!("a result of {len} bytes"));
                        break;
                    }
                    if link.inbuf.len() < at + 5 + len {
                        link.inbuf.reserve(at + 5 + len - link.inbuf.len());
                        break;
                    }
                    link.bigs
                        .push_back(link.inbuf[at + 5..at + 5 + len].to_vec());
                    at += 5 + len;
                }
                other => {
                    link.broken = Some(format!("a message of kind {other}"));
                    break;
                }
            }
        }
        link.inbuf.drain(..at);
        if link.broken.is_some() {
            let _ = kill(Pid::from_raw(link.pid), Signal::SIGKILL);
        }
    }

    fn drain_rings(&mut self) {
        for w in 0..self.workers.len() {
            self.drain_ring(w);
        }
    }

    /// Moves worker `w`'s published results into its tasks' blocks and
    /// delivers every task that ended.
    fn drain_ring(&mut self, w: usize) {
        let slot = self.region.slot(self.workers[w].slot);
        let ring = slot.ring();
        let link = &mut self.workers[w];
        if !ring.has_data(link.head) {
            return;
        }
        let mut broken = None;
        let tasks = &mut link.tasks;
        let bigs = &mut link.bigs;
        let mut current = tasks.iter().position(|s| !s.complete());
        let drained = ring.drain(&mut link.head, |kind, status, len, words| {
            let Some(k) = current else {
                broken = Some(format!("a ring record of kind {kind} for no task"));
                return false;
            };
            let sent = &mut tasks[k];
            match kind {
                KIND_RESULT | KIND_BIG if sent.received() < sent.task.calls as usize => {
                    let start = sent.block.data.len();
                    if kind == KIND_RESULT {
                        ring::copy_payload(words, len, &mut sent.block.data);
                    } else {
                        let Some(big) = bigs.pop_front() else {
                            return false; // still on its way: read the socket first
                        };
                        sent.block.data.extend_from_slice(&big);
                    }
                    let end = sent.block.data.len();
                    sent.block.items.push(Item::Done { status, start, end });
                    true
                }
                KIND_END if sent.received() == sent.task.calls as usize => {
                    let ns = words
                        .first()
                        .map_or(0, |w| w.load(std::sync::atomic::Ordering::Relaxed));
                    sent.block.elapsed_ns = ns.max(1);
                    sent.ended = true;
                    current = tasks
                        .iter()
                        .enumerate()
                        .skip(k + 1)
                        .find(|(_, s)| !s.complete())
                        .map(|(i, _)| i);
                    true
                }
                _ => {
                    broken = Some(format!("a ring record of kind {kind} out of order"));
                    false
                }
            }
        });
        if drained.is_err() {
            broken = Some("a corrupt ring".to_string());
        }
        ring.release(link.head);
        slot.header.space.notify();
        // Deliver the tasks that ended, in order; drop cancelled ones the
        // worker has passed (their claim words may then be reused).
        let passed = claims::read(&slot.header.progress).ordinal;
        while let Some(front) = link.tasks.front() {
            if !(front.ended || (front.skipped && front.ordinal < passed)) {
                break;
            }
            let sent = link.tasks.pop_front().expect("a front task");
            if sent.skipped {
                continue;
            }
            link.args_in_flight -= sent.task.args.len();
            let per_call = sent.block.elapsed_ns as f64 / f64::from(sent.task.calls.max(1));
            let avg = match self.call_ns {
                Some(avg) => avg * 0.8 + per_call * 0.2,
                None => per_call,
            };
            self.call_ns = Some(avg);
            self.shared
                .call_ns
                .store(avg.to_bits(), std::sync::atomic::Ordering::Relaxed);
            self.outbox.push((sent.task.sink, sent.block));
        }
        if let Some(why) = broken {
            link.broken = Some(why);
            let _ = kill(Pid::from_raw(link.pid), Signal::SIGKILL);
        }
    }

    /// Settles every worker that ended.
    fn settle_dead(&mut self) {
        let mut w = 0;
        while w < self.workers.len() {
            let link = &self.workers[w];
            let dead = link.ended || (link.pidfd.is_none() && link.hup);
            if dead {
                self.settle(w);
            } else {
                w += 1;
            }
        }
    }

    fn settle(&mut self, w: usize) {
        // Everything it published: the rest of its socket, then its ring.
        self.workers[w].readable = true;
        self.read_socket(w);
        self.drain_ring(w);
        let mut link = self.workers.swap_remove(w);
        let header = self.region.slot(link.slot).header;
        let p = claims::read(&header.progress);
        // Reap it (the zygote is its parent) whatever the blame.
        let fate = match self.gone {
            Some(_) => None,
            None => match self.zygote.as_mut().map(|z| z.fate(link.pid)) {
                Some(Ok(fate)) => Some(fate),
                _ => {
                    self.zygote_died();
                    None
                }
            },
        };
        let blamed = match (&link.kill, self.gone, fate) {
            (_, Some(zygote), _) => TaskFailure::ZygoteDied { zygote },
            (Some(k), _, _) if (k.ordinal, k.call) == (p.ordinal, p.call) => k.failure.clone(),
            _ if link.broken.is_some() => TaskFailure::ChannelClosed,
            (_, _, Some(fate)) => TaskFailure::from_fate(fate),
            (_, None, None) => TaskFailure::ZygoteDied {
                zygote: self
                    .shared
                    .zygote_pid
                    .load(std::sync::atomic::Ordering::Relaxed),
            },
        };
        let mut again: Vec<Task> = Vec::new();
        for sent in link.tasks.drain(..) {
            if sent.skipped {
                continue;
            }
            let Sent {
                ordinal,
                task,
                mut block,
                ..
            } = sent;
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
            let cancelled = task.sink.state().cancel;
            for call in received..started.max(received) {
                // The call it was running fails with its fate; any other
                // started call without a result had returned (REPLYING) and
                // lost it: never run again.
                let running = ordinal == p.ordinal && call == p.call && p.phase == PHASE_RUNNING;
                let failure = if running {
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
            if done < calls {
                if let Some(zygote) = self.gone {
                    let rest = Task {
                        first: task.first + done,
                        calls: (calls - done) as u32,
                        args: Vec::new(),
                        ..task
                    };
                    fail_all(&rest, &TaskFailure::ZygoteDied { zygote });
                } else if cancelled.is_none() {
                    let at = wire::call_offset(&task.args, done);
                    again.push(Task {
                        first: task.first + done,
                        calls: (calls - done) as u32,
                        args: task.args[at..].to_vec(),
                        ..task
                    });
                }
            }
        }
        for t in again.into_iter().rev() {
            self.queue.push_front(t);
        }
        self.free_slots.push(link.slot);
        link.pidfd = None;
    }

    /// Kills workers whose call ran past its time limit.
    fn enforce_limits(&mut self) {
        let now = xme_core::monotonic_ns();
        for w in 0..self.workers.len() {
            let Some((ordinal, limit)) = self.running_limit(w) else {
                continue;
            };
            let header = self.region.slot(self.workers[w].slot).header;
            let p = claims::read(&header.progress);
            let started = header.started_ns.load(std::sync::atomic::Ordering::Relaxed);
            let limit_ns = saturating_ns(limit);
            if p.ordinal == ordinal
                && p.phase == PHASE_RUNNING
                && now.saturating_sub(started) >= limit_ns
            {
                let call = p.call;
                self.kill_if(w, TaskFailure::TimedOut { after: limit }, |q, s| {
                    q.ordinal == ordinal && q.call == call && s == started
                });
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
    fn nearest_limit(&self) -> Option<Duration> {
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
                    // Not started yet (or between calls): look again soon.
                    saturating_ns(limit)
                };
                Some(Duration::from_nanos(left))
            })
            .min()
    }

    /// Closes the sinks whose cancellation is complete.
    fn close_cancelled(&mut self) {
        let workers = &self.workers;
        let queue = &self.queue;
        self.cancelling.retain(|sink| {
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

    fn zygote_died(&mut self) {
        if self.gone.is_some() {
            return;
        }
        let pid = self
            .shared
            .zygote_pid
            .load(std::sync::atomic::Ordering::Relaxed);
        self.gone = Some(pid);
        lock(&self.shared.state).gone = Some(pid);
        if let Some(z) = self.zygote.take() {
            z.finish(Duration::from_millis(100));
        }
        // Its workers die with it (their death signal); settle them now.
        for w in &self.workers {
            let _ = kill(Pid::from_raw(w.pid), Signal::SIGKILL);
        }
        while !self.workers.is_empty() {
            self.settle(0);
        }
        for t in self.queue.drain(..) {
            fail_all(&t, &TaskFailure::ZygoteDied { zygote: pid });
        }
    }

    /// Sleeps in `poll` until something happens, unless something already
    /// did.
    fn sleep(&mut self) {
        doorbell::prepare_sleep(&self.region.header().driver_sleeping);
        let mut busy = false;
        for link in &mut self.workers {
            let events = &self.region.slot(link.slot).header.events;
            busy |= doorbell::changed(events, &mut link.events_seen);
        }
        let dispatchable = !self.queue.is_empty()
            && self.gone.is_none()
            && (self.workers.iter().any(|w| self.has_room(w))
                || (self.workers.len() < self.shared.pnum && self.spawn_refused.is_none()));
        busy |= dispatchable;
        if !busy {
            let mut s = lock(&self.shared.state);
            if s.submitted.is_empty() && s.cancels.is_empty() && !s.shutdown {
                s.parked = true;
            } else {
                busy = true;
            }
        }
        if !busy {
            self.poll();
            lock(&self.shared.state).parked = false;
        }
        doorbell::woke(&self.region.header().driver_sleeping);
    }

    fn poll(&mut self) {
        let mut timeout = self.nearest_limit();
        if self.spawn_refused.is_some() && !self.queue.is_empty() {
            // Try to start a worker again soon.
            timeout = Some(timeout.map_or(RETRY_SPAWN, |t| t.min(RETRY_SPAWN)));
        }
        let mut fds: Vec<PollFd<'_>> = Vec::with_capacity(2 + 2 * self.workers.len());
        fds.push(PollFd::new(self.shared.wake.as_fd(), PollFlags::POLLIN));
        let zygote_fd = self.zygote.as_ref().and_then(|z| z.pidfd());
        let zygote_at = zygote_fd.map(|fd| {
            fds.push(PollFd::new(fd, PollFlags::POLLIN));
            fds.len() - 1
        });
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
            let pidfd = link.pidfd.as_ref().map(|fd| {
                fds.push(PollFd::new(fd.as_fd(), PollFlags::POLLIN));
                fds.len() - 1
            });
            at.push((socket, pidfd));
        }
        let timeout = timeout.map_or(PollTimeout::NONE, |t| {
            PollTimeout::try_from(t.as_millis().min(60_000) as i32 + 1).unwrap_or(PollTimeout::MAX)
        });
        let polled = nix::poll::poll(&mut fds, timeout);
        if polled.is_err() {
            return; // EINTR: look again
        }
        let ready = |i: usize| fds[i].revents().is_some_and(|r| !r.is_empty());
        let zygote_ended = zygote_at.is_some_and(ready);
        let states: Vec<(bool, bool)> = at
            .iter()
            .map(|&(socket, pidfd)| (socket.is_some_and(ready), pidfd.is_some_and(ready)))
            .collect();
        let woken = ready(0);
        drop(fds);
        for (link, (socket, ended)) in self.workers.iter_mut().zip(states) {
            link.readable |= socket;
            link.ended |= ended;
        }
        if woken {
            let _ = self.shared.wake.read();
        }
        if zygote_ended {
            self.zygote_died();
        }
    }

    fn shut_down(mut self) {
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

/// A duration in nanoseconds, saturating (`Duration::MAX` means never).
fn saturating_ns(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// How soon to try starting a worker again after the zygote could not fork.
const RETRY_SPAWN: Duration = Duration::from_millis(50);

/// Waits until process `pid` is stopped; `false` if it ended first.
fn wait_stopped(pid: i32) -> bool {
    let path = format!("/proc/{pid}/stat");
    let until = Instant::now() + Duration::from_millis(500);
    let mut pause = Duration::from_micros(20);
    loop {
        let Ok(stat) = std::fs::read_to_string(&path) else {
            return false;
        };
        // "pid (comm) S ...": the state follows the last ')'.
        let state = stat
            .rfind(')')
            .and_then(|i| stat[i + 1..].split_whitespace().next())
            .unwrap_or("?");
        match state {
            "T" | "t" => return true,
            "Z" | "X" | "x" => return false,
            _ => {}
        }
        if Instant::now() >= until {
            return false;
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(1));
    }
}
