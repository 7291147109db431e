//! The loop of a logical process: take a request, run it, reply; until EXIT.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use crate::call_frame::{self, KIND_BATCH, KIND_CALL, KIND_CALL_FN, KIND_EXIT, Request};
use crate::channel::{RecvChannel, SendChannel, Waited};
use crate::unit::{Ran, Registry};
use crate::watch::{CallClock, Heart, StopFlag, WatchPlan, watch_calls};

/// Status words (shared memory), as the seed names them.
pub(crate) const ST_BEGIN: u32 = 0;
pub(crate) const ST_IDLE: u32 = 1;
pub(crate) const ST_INRUN: u32 = 3;
pub(crate) const ST_END: u32 = 4;

/// Exit status of a logical process whose request channel was corrupt.
pub(crate) const EXIT_CORRUPT: i32 = 3;

/// Exit status of a logical process that could not start its watcher
/// thread (the system refused a thread: see `ulimit -u`).
pub(crate) const EXIT_NO_WATCHER: i32 = 5;

/// How often a refused watcher thread is tried (5, 10, 20, 40, 80 ms apart).
const WATCHER_SPAWN_TRIES: u32 = 5;

/// How serving ended.
enum Served {
    /// The main process closed this one: acknowledge, then exit 0.
    Closed,
    /// Exit with this status at once (the main process is gone, or the
    /// request channel broke).
    Exit(i32),
}

/// A logical process over any channel pair: forked (shared-memory rings)
/// or a rank of an MPI job.
pub(crate) struct LogicalProcess<'a, Rx, Tx> {
    pub id: usize,
    pub token: u64,
    pub requests: Rx,
    pub replies: Tx,
    /// Where the main process reads this process's state (shared memory
    /// when forked; a local word on another host).
    pub status: &'a AtomicU32,
    pub registry: &'a Registry,
    /// The main process's pid when forked from it: once it is gone, exit.
    pub parent: Option<u32>,
    /// How the watcher thread beats and times calls.
    pub plan: WatchPlan,
}

impl<Rx: RecvChannel, Tx: SendChannel> LogicalProcess<'_, Rx, Tx> {
    /// Serves requests until EXIT, with a watcher thread beside that beats
    /// through `heart` and reports a call past the deadline; returns the
    /// exit status. The acknowledgement of EXIT is sent after the watcher
    /// stopped, so it is the last thing the main process hears.
    pub fn run(mut self, heart: impl Heart) -> i32 {
        xme_core::process::install_quiet_panic_hook();
        let clock = CallClock::default();
        let stop = StopFlag::default();
        let plan = self.plan;
        // Shared by reference so that a failed spawn can be retried.
        let heart = std::sync::Mutex::new(heart);
        let served = std::thread::scope(|s| {
            // Without its watcher a process keeps no deadline and sends no
            // beat: the main process would kill it as silent much later,
            // for the wrong reason. Retry a transient refusal (EAGAIN: too
            // many threads), then exit with a status that says why.
            let mut watcher = None;
            for attempt in 0..WATCHER_SPAWN_TRIES {
                let spawned = std::thread::Builder::new()
                    .name("xme-mpi-watch".into())
                    .spawn_scoped(s, || {
                        let mut heart = heart.lock().unwrap_or_else(|p| p.into_inner());
                        watch_calls(&clock, &mut *heart, plan, &stop);
                    });
                match spawned {
                    Ok(w) => {
                        watcher = Some(w);
                        break;
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5 << attempt)),
                }
            }
            let Some(w) = watcher else {
                return Served::Exit(EXIT_NO_WATCHER);
            };
            let served = self.serve(&clock);
            stop.stop(w.thread());
            let _ = w.join();
            served
        });
        match served {
            Served::Closed => {
                let mut rep = Vec::with_capacity(64);
                call_frame::reply_header(
                    self.token,
                    call_frame::EXIT_ACK_SLOT,
                    0,
                    call_frame::REPLY_VALUE,
                    &mut rep,
                );
                self.send_reply(&rep, None);
                self.status.store(ST_END, Ordering::Release);
                0
            }
            Served::Exit(code) => code,
        }
    }

    /// The serving loop: take a request, run it, reply; until EXIT.
    fn serve(&mut self, clock: &CallClock) -> Served {
        let log = xme_log::Logger::new();
        let mut count = 0u64;
        let (mut req, mut rep) = (Vec::with_capacity(256), Vec::with_capacity(256));
        self.status.store(ST_IDLE, Ordering::Release);
        // The fast-lane request expected next (the main process numbers them from 1).
        let mut fast_next = 1;
        self.requests.expect_fast(fast_next);
        loop {
            // The fast lane first: its caller waits for nothing else.
            let mut fast = None;
            let popped = match self.requests.recv_fast(&mut req) {
                Ok(true) => {
                    fast = Some(fast_next);
                    fast_next += 1;
                    self.requests.expect_fast(fast_next);
                    Ok(true)
                }
                Ok(false) => self.requests.try_recv(&mut req),
                Err(corrupt) => Err(corrupt),
            };
            match popped {
                Ok(true) => {}
                Ok(false) => {
                    if let Waited::Idle = self.requests.wait_recv(Duration::from_millis(100))
                        && self.parent_gone()
                    {
                        return Served::Exit(0); // the main process is gone
                    }
                    continue;
                }
                Err(corrupt) => {
                    let _ = log.entry().msgtype("Error").print(format!(
                        "MPI logical process {}: request channel corrupt ({}); exiting",
                        self.id, corrupt.0
                    ));
                    self.status.store(ST_END, Ordering::Release);
                    return Served::Exit(EXIT_CORRUPT);
                }
            }
            let Some((r, args)) = Request::read(self.token, &req) else {
                let _ = log.entry().msgtype("Error").print(format!(
                    "MPI logical process {}: dropped a frame of {} bytes without this run's token",
                    self.id,
                    req.len()
                ));
                continue;
            };
            // The reply header first; a unit that succeeds appends its result.
            call_frame::reply_header(
                self.token,
                r.slot,
                r.generation,
                call_frame::REPLY_VALUE,
                &mut rep,
            );
            clock.request(r.unit, r.slot);
            let ran = match r.kind {
                // Acknowledged (every reply before it sent) once the watcher stopped.
                KIND_EXIT => return Served::Closed,
                KIND_BATCH => {
                    self.status.store(ST_INRUN, Ordering::Release);
                    self.run_batch(r.unit, args, &mut rep, clock, &mut count)
                }
                KIND_CALL => {
                    self.status.store(ST_INRUN, Ordering::Release);
                    clock.start(&mut count, 0);
                    let ran = self.registry.run(r.unit, args, &mut rep);
                    clock.end(&mut count);
                    ran
                }
                // Function addresses mean something only in a forked copy of
                // the main process; a rank (no parent) refuses them, whatever
                // arrives over MPI (rank 0 never sends them: FnAcrossHosts).
                KIND_CALL_FN if self.parent.is_none() => Ran::Failed(
                    "a call by function address reached a rank of an MPI job: \
                     only forked logical processes run those (register the unit)"
                        .into(),
                ),
                KIND_CALL_FN => {
                    self.status.store(ST_INRUN, Ordering::Release);
                    clock.start(&mut count, 0);
                    // SAFETY: this process is forked (`parent` is set: the arm
                    // above refuses ranks). What is trusted: the request ring lies in an
                    // anonymous memfd mapping (no name in /dev/shm) that only the
                    // main process and its forked logical processes map; another
                    // process could reach it only through /proc/<pid>/fd, which
                    // needs the ptrace access that would let it rewrite this
                    // process anyway. Within the family, only the main process
                    // produces requests (it owns the ring's single Producer), and
                    // the frame carries this run's random token. So this frame is
                    // the main process's, which put there the address of a
                    // `fn(A) -> R` and of `trampoline::<A, R>` for the same A and
                    // R (see MpiHandle::acquire_fn); both are valid in this forked
                    // copy of the same program.
                    let ran = unsafe {
                        let t: unsafe fn(usize, &[u8], &mut Vec<u8>) -> Ran =
                            std::mem::transmute::<
                                usize,
                                unsafe fn(usize, &[u8], &mut Vec<u8>) -> Ran,
                            >(r.tramp_addr as usize);
                        t(r.fn_addr as usize, args, &mut rep)
                    };
                    clock.end(&mut count);
                    ran
                }
                other => Ran::Failed(format!("unknown request kind {other}")),
            };
            // Replaces whatever the unit appended with a failure reply.
            let token = self.token;
            let fail = |rep: &mut Vec<u8>, status: u8, body: &[u8]| {
                call_frame::reply_header(token, r.slot, r.generation, status, rep);
                rep.extend_from_slice(body);
            };
            match ran {
                Ran::Value => {}
                Ran::Panicked(p) => fail(
                    &mut rep,
                    call_frame::REPLY_PANICKED,
                    &postcard::to_stdvec(&p).unwrap_or_default(),
                ),
                Ran::Failed(why) => fail(&mut rep, call_frame::REPLY_FAILED, why.as_bytes()),
                Ran::NotRegistered(why) => {
                    fail(&mut rep, call_frame::REPLY_NOT_REGISTERED, why.as_bytes())
                }
            }
            if rep.len() > self.replies.max_frame() {
                let why = format!(
                    "result of {} bytes does not fit the reply channel",
                    rep.len()
                );
                fail(&mut rep, call_frame::REPLY_FAILED, why.as_bytes());
            }
            if !self.send_reply(&rep, fast) {
                return Served::Exit(0); // the main process is gone
            }
            self.status.store(ST_IDLE, Ordering::Release);
        }
    }

    /// Sends a reply (by the fast lane if it answers fast request `fast`);
    /// false if the main process went away meanwhile.
    fn send_reply(&mut self, rep: &[u8], fast: Option<u64>) -> bool {
        if fast.is_some_and(|seq| self.replies.send_fast(seq, rep)) {
            return true;
        }
        while !self.replies.try_send(rep) {
            if let Waited::Idle = self
                .replies
                .wait_send(rep.len(), Duration::from_millis(100))
                && self.parent_gone()
            {
                return false;
            }
        }
        true
    }

    /// Runs the calls of a batch request, appending each one's outcome to
    /// `rep` until the next would not fit the reply channel (the main
    /// process sends the rest again). A batch whose first call's outcome
    /// alone does not fit answers that call with a failure.
    fn run_batch(
        &self,
        unit: u32,
        body: &[u8],
        rep: &mut Vec<u8>,
        clock: &CallClock,
        count: &mut u64,
    ) -> Ran {
        let max = self.replies.max_frame();
        let done_at = rep.len();
        rep.extend_from_slice(&[0; 4]);
        let mut done = 0u32;
        for args in call_frame::batch_calls(body) {
            let Some(args) = args else {
                return Ran::Failed("a malformed batch request".into());
            };
            let at = rep.len();
            rep.extend_from_slice(&[0; call_frame::BATCH_ENTRY_HEADER]);
            clock.start(count, done);
            let ran = self.registry.run(unit, args, rep);
            clock.end(count);
            let status = match ran {
                Ran::Value => call_frame::REPLY_VALUE,
                Ran::Panicked(p) => {
                    rep.truncate(at + call_frame::BATCH_ENTRY_HEADER);
                    rep.extend_from_slice(&postcard::to_stdvec(&p).unwrap_or_default());
                    call_frame::REPLY_PANICKED
                }
                Ran::Failed(why) => {
                    rep.truncate(at + call_frame::BATCH_ENTRY_HEADER);
                    rep.extend_from_slice(why.as_bytes());
                    call_frame::REPLY_FAILED
                }
                Ran::NotRegistered(why) => {
                    rep.truncate(at + call_frame::BATCH_ENTRY_HEADER);
                    rep.extend_from_slice(why.as_bytes());
                    call_frame::REPLY_NOT_REGISTERED
                }
            };
            if rep.len() > max {
                rep.truncate(at);
                if done > 0 {
                    break;
                }
                let why = format!("result does not fit the reply channel ({max} bytes at most)");
                rep.push(call_frame::REPLY_FAILED);
                rep.extend_from_slice(&(why.len() as u32).to_le_bytes());
                rep.extend_from_slice(why.as_bytes());
                done = 1;
                break;
            }
            rep[at] = status;
            let len = (rep.len() - at - call_frame::BATCH_ENTRY_HEADER) as u32;
            rep[at + 1..at + 5].copy_from_slice(&len.to_le_bytes());
            done += 1;
        }
        rep[done_at..done_at + 4].copy_from_slice(&done.to_le_bytes());
        Ran::Value
    }

    /// Whether the main process this one was forked from is gone.
    fn parent_gone(&self) -> bool {
        self.parent
            .is_some_and(|p| nix::unistd::getppid().as_raw() as u32 != p)
    }
}
