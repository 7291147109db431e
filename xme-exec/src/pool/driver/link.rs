//! One worker as the driver sees it: the tasks sent to it, its socket (bytes
//! out, wake-ups and large results in) and its result ring.

use std::collections::VecDeque;
use std::io::{ErrorKind, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::time::Instant;

use xme_core::Fate;

use super::Driver;
use crate::TaskFailure;
use crate::pool::claims;
use crate::pool::engine::{Block, Item, Task};
use crate::pool::ring::{self, KIND_BIG, KIND_END, KIND_RESULT};
use crate::pool::wire;

/// A task sent to a worker.
#[derive(Debug)]
pub(super) struct Sent {
    pub ordinal: u64,
    pub task: Task,
    /// Results received so far (calls `0..block.items.len()`).
    pub block: Block,
    /// Cancelled before it started: the worker skips it.
    pub skipped: bool,
    /// Its end record came: every result is in `block`.
    pub ended: bool,
}

impl Sent {
    pub fn received(&self) -> usize {
        self.block.items.len()
    }

    /// Nothing more will come of it.
    pub fn complete(&self) -> bool {
        self.skipped || self.ended
    }
}

/// What a kill is aimed at, checked while the worker is stopped.
#[derive(Debug, Clone, Copy)]
pub(super) enum Aim {
    /// One call, running since `started` (a time limit).
    Call {
        ordinal: u64,
        call: usize,
        started: u64,
    },
    /// Any part of a task not finished yet (a cancellation).
    Task { ordinal: u64, calls: usize },
}

impl Aim {
    pub fn holds(self, p: claims::Progress, started_ns: u64) -> bool {
        match self {
            Aim::Call {
                ordinal,
                call,
                started,
            } => {
                p.ordinal == ordinal
                    && p.call == call
                    && p.phase == claims::PHASE_RUNNING
                    && started_ns == started
            }
            Aim::Task { ordinal, calls } => {
                p.ordinal == ordinal && !(p.call + 1 >= calls && p.phase == claims::PHASE_DONE)
            }
        }
    }
}

/// A worker the driver stopped (`SIGSTOP`) to check where it is before
/// killing it.
#[derive(Debug)]
pub(super) struct Stopping {
    pub aim: Aim,
    pub failure: TaskFailure,
    pub since: Instant,
}

/// A kill the driver issued, and the failure of the call it was aimed at.
#[derive(Debug)]
pub(super) struct Kill {
    pub ordinal: u64,
    pub call: usize,
    pub failure: TaskFailure,
}

#[derive(Debug)]
pub(super) struct WorkerLink {
    pub pid: i32,
    pub slot: usize,
    pub socket: UnixStream,
    /// The worker's pidfd (from the zygote): signals go through it, so
    /// they never reach a process that reused the pid.
    pub pidfd: Option<OwnedFd>,
    /// Bytes to send, from `out_at` on.
    pub out: Vec<u8>,
    pub out_at: usize,
    /// Bytes read from the socket and not yet parsed.
    pub inbuf: Vec<u8>,
    /// Whole results that came over the socket, in order.
    pub bigs: VecDeque<Vec<u8>>,
    pub tasks: VecDeque<Sent>,
    pub next_ordinal: u64,
    /// The ring's consumer position.
    pub head: u64,
    pub events_seen: u64,
    /// Bytes of arguments of tasks in flight.
    pub args_in_flight: usize,
    pub stopping: Option<Stopping>,
    /// No new stop before this (after one that could not complete).
    pub stop_again: Option<Instant>,
    pub kill: Option<Kill>,
    /// The socket may have bytes (poll said so, or we have not looked).
    pub readable: bool,
    /// The ring position of a large result whose bytes were not read yet
    /// when its record was (the socket is then read once more at once).
    pub big_retry: Option<u64>,
    /// The worker closed its socket.
    pub hup: bool,
    /// Its pidfd says it ended.
    pub ended: bool,
    /// How it ended, as the zygote reported.
    pub fate: Option<Fate>,
    /// The worker broke the protocol (it is killed).
    pub broken: Option<String>,
}

impl WorkerLink {
    pub fn new(pid: i32, slot: usize, socket: UnixStream, pidfd: Option<OwnedFd>) -> WorkerLink {
        WorkerLink {
            pid,
            slot,
            socket,
            pidfd,
            out: Vec::new(),
            out_at: 0,
            inbuf: Vec::new(),
            bigs: VecDeque::new(),
            tasks: VecDeque::new(),
            next_ordinal: 1,
            head: 0,
            events_seen: 0,
            args_in_flight: 0,
            stopping: None,
            stop_again: None,
            kill: None,
            readable: true,
            big_retry: None,
            hup: false,
            ended: false,
            fate: None,
            broken: None,
        }
    }

    /// Tasks it still has to run (cancelled ones excluded).
    pub fn pending(&self) -> impl Iterator<Item = &Sent> {
        self.tasks.iter().filter(|s| !s.complete())
    }

    pub fn is_idle(&self) -> bool {
        self.pending().next().is_none() && self.out_at == self.out.len()
    }

    /// Sends `signal` through the pidfd (nothing if the worker is reaped).
    pub fn signal(&self, signal: rustix::process::Signal) {
        if let Some(fd) = &self.pidfd {
            let _ = rustix::process::pidfd_send_signal(fd.as_fd(), signal);
        }
    }

    /// Whether its pidfd says it has ended (a look, no wait).
    pub fn has_ended(&self) -> bool {
        let Some(fd) = &self.pidfd else {
            return self.fate.is_some();
        };
        let mut fds = [nix::poll::PollFd::new(
            fd.as_fd(),
            nix::poll::PollFlags::POLLIN,
        )];
        matches!(
            nix::poll::poll(&mut fds, nix::poll::PollTimeout::ZERO),
            Ok(1)
        )
    }

    /// Stops trusting it: it broke the protocol.
    pub fn break_off(&mut self, why: String) {
        if self.broken.is_none() {
            self.broken = Some(why);
            self.signal(rustix::process::Signal::KILL);
        }
    }
}

impl Driver {
    pub(super) fn flush(&mut self) {
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

    pub(super) fn read_sockets(&mut self) {
        for w in 0..self.workers.len() {
            if self.workers[w].readable {
                self.read_socket(w);
            }
        }
    }

    /// Reads what worker `w` sent until the socket has no more.
    pub(super) fn read_socket(&mut self, w: usize) {
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
        let mut broken = None;
        while at < link.inbuf.len() {
            match link.inbuf[at] {
                wire::WAKE => at += 1,
                wire::BIG => {
                    let Some(len) = link.inbuf.get(at + 1..at + 5) else {
                        break;
                    };
                    let len = u32::from_le_bytes(len.try_into().expect("4 bytes")) as usize;
                    if len > wire::MAX_FRAME {
                        broken = Some(format!("a result of {len} bytes"));
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
                    broken = Some(format!("a message of kind {other}"));
                    break;
                }
            }
        }
        link.inbuf.drain(..at);
        if let Some(why) = broken {
            link.break_off(why);
        }
    }

    pub(super) fn drain_rings(&mut self) {
        for w in 0..self.workers.len() {
            self.drain_ring(w);
        }
    }

    /// Moves worker `w`'s published results into its tasks' blocks, and
    /// puts every task that ended in the outbox.
    pub(super) fn drain_ring(&mut self, w: usize) {
        let slot = self.region.slot(self.workers[w].slot);
        let ring = slot.ring();
        let link = &mut self.workers[w];
        if !ring.has_data(link.head) {
            return;
        }
        let mut broken = None;
        let mut big_unread = false;
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
                            big_unread = true;
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
        // The worker wrote the result's bytes before its record: they are
        // in the socket, which the driver awake (spinning) did not poll.
        // Read it at once, not after a spin and a poll; once per record, so
        // a record with no bytes behind it cannot keep the driver busy.
        if big_unread && link.big_retry != Some(link.head) {
            link.big_retry = Some(link.head);
            link.readable = true;
        }
        ring.release(link.head);
        slot.header.space.notify();
        // The tasks that ended, in order; cancelled ones the worker has
        // passed are dropped (their claim words may then be reused).
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
            link.break_off(why);
        }
    }
}
