//! A worker's loop (in the worker process): read a frame of tasks, run each
//! call, put each result in the ring at once, wake the driver when a task
//! ends.

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::claims::{self, PHASE_DONE, PHASE_REPLYING, PHASE_RUNNING, Start};
use super::entry::{self, TOO_LARGE};
use super::layout::{PoolHeader, Slot};
use super::ring::{KIND_BIG, KIND_END, KIND_RESULT, Producer};
use super::{doorbell, wire};

/// Exit statuses of a worker that stopped for a reason of its own.
pub(crate) const EXIT_BROKEN_FRAME: i32 = 90;
pub(crate) const EXIT_CORRUPT_SLOT: i32 = 91;
pub(crate) const EXIT_SOCKET: i32 = 92;

struct Worker<'a> {
    socket: UnixStream,
    slot: Slot<'a>,
    header: &'a PoolHeader,
    /// Our position in the ring, and our last view of the driver's.
    at: Producer,
}

impl Worker<'_> {
    /// Tells the driver to look at this slot (a byte on the socket, only if
    /// it sleeps).
    fn announce(&mut self) -> Result<(), i32> {
        announce(&mut self.socket, &self.slot, self.header)
    }

    /// Appends a record, waiting for the driver to free space if the ring
    /// is full.
    fn push(&mut self, kind: u8, status: u8, payload: &[u8]) -> Result<(), i32> {
        let Worker {
            socket,
            slot,
            header,
            at,
        } = self;
        let ring = slot.ring();
        loop {
            if ring.try_push(at, kind, status, payload) {
                // Half full as far as we know: have the driver drain it
                // before we must wait for room.
                let cap = slot.ring_words.len() as u64;
                if at.used() > cap / 2 {
                    at.head = slot.header.head.load(Ordering::Acquire);
                    announce(socket, slot, header)?;
                }
                return Ok(());
            }
            announce(socket, slot, header)?;
            let sleeper = slot.header.space.prepare_wait();
            let ticket = sleeper.ticket();
            if ring.try_push(at, kind, status, payload) {
                return Ok(());
            }
            // Bounded: the driver notifies after each drain, and a worker
            // whose parent died is killed by its death signal.
            sleeper.wait(ticket, Some(Duration::from_millis(50)));
        }
    }

    fn run_task(&mut self, task: &wire::TaskView<'_>, out: &mut Vec<u8>) -> Result<(), i32> {
        match claims::start(&self.slot.header.claims, task.ordinal) {
            Start::Run => {}
            Start::Skip => return Ok(()),
            Start::Corrupt => return Err(EXIT_CORRUPT_SLOT),
        }
        // SAFETY: the entry offset comes from the driver over this worker's
        // private socket (the zygote made the pair and passed the other end
        // to the parent alone), computed by `entry::offset_of` in a process
        // running this same executable.
        let run = unsafe { entry::at_offset(task.entry) };
        let timed = task.flags & wire::FLAG_TIMED != 0;
        let progress = &self.slot.header.progress;
        let began = Instant::now();
        let mut done = 0;
        for (call, args) in wire::calls(task.args).enumerate() {
            let args = args.ok_or(EXIT_BROKEN_FRAME)?;
            if timed {
                self.slot.header.started_ns.store(
                    xme_core::monotonic_ns(),
                    std::sync::atomic::Ordering::Relaxed,
                );
            }
            claims::record(progress, task.ordinal, call, PHASE_RUNNING);
            out.clear();
            let mut status = run(args, out);
            claims::record(progress, task.ordinal, call, PHASE_REPLYING);
            let max = (self
                .header
                .max_result
                .load(std::sync::atomic::Ordering::Relaxed) as usize)
                .min(wire::MAX_FRAME);
            if out.len() > max {
                let len = out.len();
                out.clear();
                let _ = write!(
                    out,
                    "a result of {len} bytes is larger than the pool accepts ({max} bytes; see PoolBuilder::max_result)"
                );
                status = TOO_LARGE;
            }
            if out.len() >= wire::BIG_RESULT {
                let mut head = [wire::BIG, 0, 0, 0, 0];
                head[1..].copy_from_slice(&(out.len() as u32).to_le_bytes());
                self.socket.write_all(&head).map_err(|_| EXIT_SOCKET)?;
                self.socket.write_all(out).map_err(|_| EXIT_SOCKET)?;
                self.push(KIND_BIG, status, &(out.len() as u64).to_le_bytes())?;
            } else {
                self.push(KIND_RESULT, status, out)?;
            }
            claims::record(progress, task.ordinal, call, PHASE_DONE);
            done += 1;
        }
        if done != task.calls {
            return Err(EXIT_BROKEN_FRAME);
        }
        let elapsed = began.elapsed().as_nanos() as u64;
        self.push(KIND_END, 0, &elapsed.to_le_bytes())?;
        self.announce()
    }
}

/// Tells the driver to look at `slot` (a byte on the socket, only if it
/// sleeps).
fn announce(socket: &mut UnixStream, slot: &Slot<'_>, header: &PoolHeader) -> Result<(), i32> {
    if doorbell::ring(&slot.header.events, &header.driver_sleeping) {
        socket.write_all(&[wire::WAKE]).map_err(|_| EXIT_SOCKET)?;
    }
    Ok(())
}

/// Runs tasks until the parent closes the socket; the exit status.
pub(crate) fn work(socket: UnixStream, slot: Slot<'_>, header: &PoolHeader) -> i32 {
    xme_core::process::install_quiet_panic_hook();
    let mut worker = Worker {
        socket,
        slot,
        header,
        at: Producer::default(),
    };
    let mut frame = Vec::new();
    let mut out = Vec::with_capacity(256);
    loop {
        match wire::read_frame(&mut worker.socket, &mut frame) {
            Ok(()) => {}
            // The parent closed the socket (or died).
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return 0,
            Err(_) => return EXIT_BROKEN_FRAME,
        }
        let Some(tasks) = wire::parse_tasks(&frame) else {
            return EXIT_BROKEN_FRAME;
        };
        for task in &tasks {
            if let Err(code) = worker.run_task(task, &mut out) {
                return code;
            }
        }
    }
}
