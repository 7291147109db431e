//! The parent side of a run: forks workers, reads their replies, and accounts
//! for every call: a result, or a failure naming what happened.

use std::os::fd::{AsFd, OwnedFd};
use std::time::{Duration, Instant};

use nix::fcntl::OFlag;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::signal::Signal;
use xme_core::process::{self, Child};
use xme_core::result_frame::FrameReader;
use xme_core::{Error, Fate, monotonic_ns};

use crate::board::Board;
use crate::fanout::{Decision, Fanout, Seen, Spawning};
use crate::job::ErasedJob;
use crate::worker::WorkerPlan;
use crate::{ExecError, TaskFailure};

/// How long a worker may live on after closing its pipe before it is killed.
const LINGER: Duration = Duration::from_secs(1);
/// Longest sleep of the parent between liveness checks of every worker.
const TICK: Duration = Duration::from_millis(100);
/// Longest time between two calls of a run's interrupt check.
const INTERRUPT_EVERY: Duration = Duration::from_millis(50);
/// Bytes before a reply body: the global call index.
const CALL_BYTES: usize = 8;
/// Workers in a row that may end before taking any call (a fork handler or
/// child hook that ends every child) before the run stops replacing them.
const BARREN_LIMIT: usize = 4;

pub(crate) struct RunSpec<'a> {
    pub pnum: usize,
    pub spawning: Spawning,
    pub default_timeout: Option<Duration>,
    pub logger: &'a xme_log::Logger,
    /// Stops the run when it returns true (`Xme::interrupt_when`).
    pub interrupt: Option<&'a (dyn Fn() -> bool + Send + Sync)>,
}

/// Why a worker that never took a call was killed.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Unstarted {
    /// Every call was taken by others: it could only start to leave.
    NotNeeded,
    /// Its start outlasted the run's longest timeout (a fork hook that
    /// does not return): it counts as barren and is replaced.
    Stuck,
}

struct Worker {
    slot: usize,
    serial: u32,
    /// When it was forked (`monotonic_ns`).
    forked_ns: u64,
    child: Child,
    pipe: Option<OwnedFd>,
    reader: FrameReader,
    /// When the pipe reached EOF (or was dropped as corrupt).
    closed_at: Option<Instant>,
    /// The call this worker was killed for running too long.
    timed_out: Option<(usize, Duration)>,
    /// Since when it has had no call to run and none is left to take: it is
    /// leaving (its exit hooks wait for the threads its tasks started).
    leaving_since: Option<Instant>,
    /// It was killed for taking longer than the run's timeout to leave.
    killed_leaving: bool,
    /// It was killed before it took any call: not needed (every call was
    /// taken by others), or stuck in its start past the run's timeout.
    killed_unstarted: Option<Unstarted>,
    /// Its pidfd reported the process ended.
    ended: bool,
    /// It sent at least one reply.
    replied: bool,
    /// Its result pipe broke under it (closed while it ran on, or corrupt):
    /// the call it was running failed for that, whatever ended it.
    channel_lost: bool,
}

/// Every call's fate, settled exactly once.
struct Ledger<'s, 't, D> {
    jobs: &'s mut [&'t mut dyn ErasedJob<D>],
    offsets: Vec<usize>,
    done: Vec<bool>,
    remaining: usize,
    /// Called once per settled call with the run's total (progress display).
    on_settled: &'s mut dyn FnMut(usize),
}

impl<D> Ledger<'_, '_, D> {
    fn locate(&self, g: usize) -> (usize, usize) {
        let job = self.offsets.partition_point(|&o| o <= g) - 1;
        (job, g - self.offsets[job])
    }

    fn settle(&mut self, g: usize, reply: Result<&[u8], TaskFailure>) {
        if g >= self.done.len() || self.done[g] {
            return;
        }
        let (job, call) = self.locate(g);
        self.jobs[job].deliver(job, call, reply);
        self.done[g] = true;
        self.remaining -= 1;
        (self.on_settled)(self.done.len());
    }
}

/// Runs every call of `jobs` and delivers each call's reply or failure.
pub(crate) fn run<D>(
    spec: &RunSpec<'_>,
    data: &D,
    jobs: &mut [&mut dyn ErasedJob<D>],
    on_settled: &mut dyn FnMut(usize),
) -> Result<(), ExecError> {
    let mut offsets = Vec::with_capacity(jobs.len());
    let mut counts = Vec::with_capacity(jobs.len());
    let mut total = 0usize;
    for (j, job) in jobs.iter_mut().enumerate() {
        offsets.push(total);
        let calnum = job.prepare().map_err(|source| ExecError::Arguments {
            job: j,
            function: job.name().to_string(),
            source,
        })?;
        counts.push(calnum);
        total = total.saturating_add(calnum);
    }
    if total == 0 {
        return Ok(());
    }
    // The run's bookkeeping grows with its calls: too many for the memory
    // this process may use is an error, not an abort.
    let out_of_memory = |source| ExecError::OutOfMemory {
        calls: total,
        source,
    };
    for (job, &calnum) in jobs.iter_mut().zip(&counts) {
        job.make_room(calnum).map_err(out_of_memory)?;
    }
    let mut done = Vec::new();
    done.try_reserve_exact(total).map_err(out_of_memory)?;
    done.resize(total, false);
    let timeouts: Vec<Option<Duration>> = jobs
        .iter()
        .map(|j| j.timeout().or(spec.default_timeout))
        .collect();
    // What bounds a worker's start and its leaving, when any call has one.
    let longest_timeout = timeouts.iter().flatten().max().copied();
    // Workers' exit statuses are kept while the run lasts.
    let _statuses = crate::sigchld::ChildStatusesKept::new();
    let slots = spec.pnum.min(total).max(1);
    let board = Board::new(slots, total)?;
    let mut ledger = Ledger {
        jobs,
        offsets,
        done,
        remaining: total,
        on_settled,
    };
    // Once per run, not per fork: counting threads reads /proc.
    crate::threads::warn_if_threaded();
    let mut serials = 1u32..;
    let mut live: Vec<Worker> = Vec::with_capacity(slots);
    let mut spawn_error = None;
    let mut fanout = Fanout::new(spec.spawning, slots, total, monotonic_ns());
    for _ in 0..fanout.initial() {
        let slot = fanout.open_slot().expect("initial() <= slots");
        let serial = serials.next().expect("unbounded range");
        match spawn(&mut ledger, &board, spec, data, slot, serial) {
            Ok(w) => live.push(w),
            Err(e) => {
                spawn_error.get_or_insert(e);
            }
        }
    }
    fanout.first_forks_done(monotonic_ns());
    if live.is_empty() {
        return Err(ExecError::NoWorker(
            spawn_error.expect("slots >= 1, so an empty pool means a spawn failed"),
        ));
    }
    let mut warned_short = false;
    let mut warn_if_short = |live: &[Worker], spawn_error: &Option<Error>| {
        if let Some(e) = spawn_error
            && !warned_short
        {
            warned_short = true;
            let _ = spec.logger.entry().msgtype("Warning").print(format!(
                "only {} of {slots} worker processes started: {e}",
                live.len()
            ));
        }
    };
    warn_if_short(&live, &spawn_error);

    // The earliest sign that a worker took a call (the fan-out's measure
    // of what a worker's start costs).
    let mut first_progress: Option<u64> = None;
    // Workers in a row that ended without taking a call, and how the last did.
    let mut barren = 0usize;
    let mut last_barren: Option<Option<Fate>> = None;
    let mut buf = vec![0u8; 64 * 1024];
    let mut last_sweep = Instant::now();
    let mut last_interrupt_check = Instant::now();
    while !live.is_empty() {
        let mut wait = next_deadline(&live, &board, &ledger, &timeouts).unwrap_or(TICK);
        if let Some(look_again) = widen(
            &mut fanout,
            &mut first_progress,
            &mut live,
            &mut ledger,
            &board,
            spec,
            data,
            &mut serials,
            &mut spawn_error,
        ) {
            wait = wait.min(look_again);
        }
        warn_if_short(&live, &spawn_error);
        if spec.interrupt.is_some() {
            wait = wait.min(INTERRUPT_EVERY);
        }
        let signalled = wait_readable(&mut live, &mut buf, &mut ledger, wait)?;
        if let Some(stop) = spec.interrupt
            && (signalled || last_interrupt_check.elapsed() >= INTERRUPT_EVERY)
        {
            last_interrupt_check = Instant::now();
            if stop() {
                for w in &mut live {
                    // A worker the kernel reaped itself is gone already.
                    if let Err(e) = w.child.kill_mut()
                        && !w.child.vanished()
                    {
                        return Err(e.into());
                    }
                }
                return Err(ExecError::Interrupted {
                    settled: total - ledger.remaining,
                    total,
                });
            }
        }
        kill_overdue(&mut live, &board, &ledger, &timeouts);
        kill_slow_leavers(&mut live, &board, longest_timeout, spec.logger);
        kill_unstarted(&mut live, &board, longest_timeout, spec.logger);

        // Reap workers whose process ended (pidfd), whose pipe closed, or that
        // were killed; check every worker once per tick as well (kernels
        // without pidfd, or a grandchild holding a pipe open).
        let sweep = last_sweep.elapsed() >= TICK;
        if sweep {
            last_sweep = Instant::now();
        }
        let mut i = 0;
        while i < live.len() {
            let w = &mut live[i];
            if !(sweep || w.ended || w.pipe.is_none() || w.timed_out.is_some()) {
                i += 1;
                continue;
            }
            let Some(fate) = reap_if_ended(w, &mut buf, &mut ledger)? else {
                i += 1;
                continue;
            };
            let w = live.swap_remove(i);
            let running = board.running(w.slot, w.serial);
            // Ended without taking a call, yet not because none was left
            // (that worker exits 0 once the board is empty).
            if running.is_none()
                && !w.replied
                && w.killed_unstarted != Some(Unstarted::NotNeeded)
                && (!fate.is_some_and(|f| f.is_success()) || board.has_unclaimed())
            {
                barren += 1;
                last_barren = Some(fate);
            } else {
                barren = 0;
            }
            if let Some(r) = running {
                let failure = match w.timed_out {
                    Some((call, after)) if call == r.call => TaskFailure::TimedOut { after },
                    // Its pipe closed under it, then it lingered (killed) or
                    // left because it could not write its reply.
                    _ if w.channel_lost
                        || (w.closed_at.is_some()
                            && fate == Some(Fate::Exited(crate::worker::EXIT_REPLY_FAILED))) =>
                    {
                        TaskFailure::ChannelClosed
                    }
                    // Still running a call when it ended, even with status
                    // 0: the call ended the process (`exit(0)`).
                    _ => fate.map_or(TaskFailure::StatusLost, TaskFailure::from_fate),
                };
                if !ledger.done[r.call] {
                    board.note_ended();
                }
                ledger.settle(r.call, Err(failure));
            }
            if board.has_unclaimed() && barren < BARREN_LIMIT {
                board.clear_slot(w.slot);
                let serial = serials.next().expect("unbounded range");
                match spawn(&mut ledger, &board, spec, data, w.slot, serial) {
                    Ok(nw) => live.push(nw),
                    Err(e) => {
                        spawn_error.get_or_insert(e);
                    }
                }
            }
        }
    }

    // Every worker is reaped. A call still open that a worker took sent no
    // reply the parent could read, though it may have run: its worker's
    // pipe was lost under it (a task closed the descriptor and opened
    // something else in its place, which took the replies).
    if ledger.remaining > 0 {
        let taken: Vec<usize> = (0..total)
            .filter(|&g| !ledger.done[g] && board.was_claimed(g))
            .collect();
        if !taken.is_empty() {
            let _ = spec.logger.entry().msgtype("Warning").print(format!(
                "{} calls were taken by a worker whose replies never arrived (calls {taken:?}): \
                 they may have run, but their worker's result pipe was lost (did a task close \
                 or reuse file descriptors it did not open?)",
                taken.len()
            ));
            for g in taken {
                ledger.settle(g, Err(TaskFailure::ChannelClosed));
            }
        }
    }
    // A call still open now was never claimed, because no replacement
    // worker could be forked: fail it rather than lose it.
    if ledger.remaining > 0 {
        let why = match (spawn_error, last_barren) {
            (Some(e), _) => xme_core::error_chain(&e),
            (None, Some(fate)) if barren >= BARREN_LIMIT => format!(
                "{barren} worker processes in a row ended before taking any call (the last {}), \
                 so no more were started; something ends every new worker before it runs \
                 anything (a fork handler such as os.register_at_fork's after_in_child, a \
                 fork hook, a resource limit)",
                describe_fate(fate)
            ),
            _ => "no worker was left to run it".into(),
        };
        let _ = spec
            .logger
            .entry()
            .msgtype("Warning")
            .print(format!("{} calls were never run: {why}", ledger.remaining));
        for g in 0..total {
            ledger.settle(g, Err(TaskFailure::NotRun(why.clone())));
        }
    }
    Ok(())
}

/// Forks the workers the fan-out asks for now; the time until it should be
/// asked again, if it should.
#[allow(clippy::too_many_arguments)]
fn widen<D>(
    fanout: &mut Fanout,
    first_progress: &mut Option<u64>,
    live: &mut Vec<Worker>,
    ledger: &mut Ledger<'_, '_, D>,
    board: &Board,
    spec: &RunSpec<'_>,
    data: &D,
    serials: &mut std::ops::RangeFrom<u32>,
    spawn_error: &mut Option<Error>,
) -> Option<Duration> {
    // A fork that failed is not retried here: the run goes on with the
    // workers it has (a dead one is still replaced).
    while spawn_error.is_none() {
        let now = monotonic_ns();
        // Calls running now (since when), and the latest worker forked
        // that has taken none yet.
        let mut running = Vec::with_capacity(live.len());
        let mut starting_since_ns = None;
        for w in live.iter() {
            match board.running(w.slot, w.serial) {
                Some(r) if !ledger.done[r.call] => running.push(r.started_ns),
                Some(_) => {}
                None if !w.replied => starting_since_ns = starting_since_ns.max(Some(w.forked_ns)),
                None => {}
            }
        }
        if first_progress.is_none() {
            // A call settled since the last look (a reply read, or a
            // worker that died running it, reaped since): it began before now.
            let settled = (ledger.remaining < ledger.done.len()).then_some(now);
            *first_progress = running.iter().copied().chain(settled).min();
        }
        let seen = Seen {
            now_ns: now,
            unclaimed: board.unclaimed(),
            running_since: &running,
            starting_since_ns,
            first_progress_ns: *first_progress,
        };
        match fanout.decide(seen) {
            Decision::Idle => return None,
            Decision::LookAgainIn(after) => return Some(after),
            Decision::Fork => {
                let slot = fanout
                    .open_slot()
                    .expect("decide forks only with a slot free");
                let serial = serials.next().expect("unbounded range");
                match spawn(ledger, board, spec, data, slot, serial) {
                    Ok(w) => live.push(w),
                    Err(e) => *spawn_error = Some(e),
                }
                fanout.forked(monotonic_ns());
            }
        }
    }
    None
}

/// How a worker process ended (`None`: reaped by the kernel, status
/// unknown), in a few words.
fn describe_fate(fate: Option<Fate>) -> String {
    match fate {
        None => "ended with a status nobody can know (SIGCHLD is ignored)".into(),
        Some(Fate::Exited(code)) => format!("exited with status {code}"),
        Some(Fate::Signaled { signal, .. }) => {
            let name = Signal::try_from(signal).map_or("unknown signal", |s| s.as_str());
            format!("was killed by signal {signal} ({name})")
        }
    }
}

fn spawn<D>(
    ledger: &mut Ledger<'_, '_, D>,
    board: &Board,
    spec: &RunSpec<'_>,
    data: &D,
    slot: usize,
    serial: u32,
) -> Result<Worker, Error> {
    let (read, write) = nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(|source| Error::Pipe {
        doing: "creating a worker's result pipe",
        source: source.into(),
    })?;
    let plan = WorkerPlan {
        jobs: &*ledger.jobs,
        offsets: &ledger.offsets,
        board,
        logger: spec.logger,
        data,
    };
    // The closure owns the write end: the child uses it, and in the parent it
    // is closed when fork_child drops the closure, so EOF means "worker gone".
    let child = match process::fork_child(move || plan.run(slot, serial, write)) {
        Ok(child) => child,
        Err(e) => {
            // A parent fork hook failed after the fork: fork_child killed
            // and reaped the child, which may have run calls by then.
            salvage(read, serial, board, ledger, &e);
            return Err(e);
        }
    };
    Ok(Worker {
        slot,
        serial,
        // After the fork returned: a slow fork (a big parent, a parent
        // hook) is not the child's start.
        forked_ns: monotonic_ns(),
        child,
        pipe: Some(read),
        reader: FrameReader::new(u32::MAX as usize),
        closed_at: None,
        timed_out: None,
        leaving_since: None,
        killed_leaving: false,
        killed_unstarted: None,
        ended: false,
        replied: false,
        channel_lost: false,
    })
}

/// Accounts for the calls of worker `serial`, killed by `fork_child` just
/// after the fork (`why`): replies it wrote settle their calls; a call it
/// took without replying fails as [`TaskFailure::WorkerDiscarded`] (it may
/// have run), never as not run.
fn salvage<D>(
    read: OwnedFd,
    serial: u32,
    board: &Board,
    ledger: &mut Ledger<'_, '_, D>,
    why: &Error,
) {
    let mut reader = FrameReader::new(u32::MAX as usize);
    let mut buf = vec![0u8; 64 * 1024];
    // The child is reaped: what it wrote is all in the pipe. Poll, do not
    // block: a child forked meanwhile by another thread may hold the write end.
    loop {
        let mut fd = [PollFd::new(read.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fd, PollTimeout::ZERO) {
            Ok(n) if n > 0 => {}
            Err(nix::Error::EINTR) => continue,
            _ => break,
        }
        match nix::unistd::read(&read, &mut buf) {
            Ok(0) => break,
            Ok(n) => {
                reader.extend(&buf[..n]);
                while let Ok(Some(frame)) = reader.next_frame() {
                    if frame.len() > CALL_BYTES {
                        let (g, body) = frame.split_at(CALL_BYTES);
                        let g = u64::from_le_bytes(g.try_into().expect("8 bytes")) as usize;
                        ledger.settle(g, Ok(body));
                    }
                }
            }
            Err(nix::Error::EINTR) => {}
            Err(_) => break,
        }
    }
    let why = xme_core::error_chain(why);
    for g in board.claimed_by(serial) {
        if g < ledger.done.len() && !ledger.done[g] {
            board.note_ended();
            ledger.settle(g, Err(TaskFailure::WorkerDiscarded(why.clone())));
        }
    }
}

/// Time until the earliest running call's deadline, if any call has one.
fn next_deadline<D>(
    live: &[Worker],
    board: &Board,
    ledger: &Ledger<'_, '_, D>,
    timeouts: &[Option<Duration>],
) -> Option<Duration> {
    let now = monotonic_ns();
    live.iter()
        .filter_map(|w| {
            let r = board.running(w.slot, w.serial)?;
            let limit = timeouts[ledger.locate(r.call).0]?;
            (!ledger.done[r.call] && w.timed_out.is_none()).then(|| {
                let deadline = r.started_ns + limit.as_nanos() as u64;
                Duration::from_nanos(deadline.saturating_sub(now))
            })
        })
        .min()
        .map(|d| d.min(TICK))
}

/// Sleeps until a pipe is readable, a worker ends, a signal arrives, or
/// `wait` passes; reads every ready pipe and marks every worker whose
/// process ended. True if a signal cut the wait short.
fn wait_readable<D>(
    live: &mut [Worker],
    buf: &mut [u8],
    ledger: &mut Ledger<'_, '_, D>,
    wait: Duration,
) -> Result<bool, Error> {
    // Per worker: (pipe readable, process ended).
    let mut signalled = false;
    let events: Vec<(bool, bool)> = {
        let mut fds: Vec<PollFd<'_>> = Vec::with_capacity(live.len() * 2);
        for w in live.iter() {
            if let Some(p) = &w.pipe {
                fds.push(PollFd::new(p.as_fd(), PollFlags::POLLIN));
            }
            if let Some(p) = w.child.pidfd() {
                fds.push(PollFd::new(p, PollFlags::POLLIN));
            }
        }
        // ppoll, not poll: the fan-out's next look may be 0.1 ms away.
        let timeout = nix::sys::time::TimeSpec::from_duration(wait);
        match nix::poll::ppoll(&mut fds, Some(timeout), None) {
            Ok(_) => {}
            Err(nix::Error::EINTR) => signalled = true,
            Err(source) => {
                return Err(Error::Pipe {
                    doing: "waiting for worker replies",
                    source: source.into(),
                });
            }
        }
        let mut it = fds.iter();
        let mut fired = |present: bool| {
            present
                && it
                    .next()
                    .and_then(PollFd::revents)
                    .is_some_and(|r| !r.is_empty())
        };
        live.iter()
            .map(|w| (fired(w.pipe.is_some()), fired(w.child.pidfd().is_some())))
            .collect()
    };
    for (w, (readable, ended)) in live.iter_mut().zip(events) {
        if readable {
            read_some(w, buf, ledger);
        }
        w.ended |= ended;
    }
    Ok(signalled)
}

/// One `read` from a worker's pipe; complete frames are settled at once.
fn read_some<D>(w: &mut Worker, buf: &mut [u8], ledger: &mut Ledger<'_, '_, D>) {
    let Some(pipe) = &w.pipe else { return };
    match nix::unistd::read(pipe, buf) {
        Ok(0) => {
            w.pipe = None;
            w.closed_at = Some(Instant::now());
        }
        Ok(n) => {
            w.reader.extend(&buf[..n]);
            loop {
                match w.reader.next_frame() {
                    Ok(Some(frame)) if frame.len() > CALL_BYTES => {
                        let (g, body) = frame.split_at(CALL_BYTES);
                        let g = u64::from_le_bytes(g.try_into().expect("8 bytes")) as usize;
                        ledger.settle(g, Ok(body));
                        w.replied = true;
                    }
                    Ok(None) => break,
                    // A frame too short or too long cannot come from our worker
                    // code: the channel is corrupt. Stop trusting it.
                    Ok(Some(_)) | Err(_) => {
                        corrupt(w);
                        break;
                    }
                }
            }
        }
        Err(nix::Error::EINTR) | Err(nix::Error::EAGAIN) => {}
        Err(_) => corrupt(w),
    }
}

fn corrupt(w: &mut Worker) {
    w.channel_lost = true;
    w.pipe = None;
    w.closed_at = Some(Instant::now());
    let _ = w.child.signal(Signal::SIGKILL);
}

/// Kills workers whose current call ran past its limit.
fn kill_overdue<D>(
    live: &mut [Worker],
    board: &Board,
    ledger: &Ledger<'_, '_, D>,
    timeouts: &[Option<Duration>],
) {
    let now = monotonic_ns();
    for w in live.iter_mut().filter(|w| w.timed_out.is_none()) {
        if let Some(r) = board.running(w.slot, w.serial)
            && !ledger.done[r.call]
            && let Some(limit) = timeouts[ledger.locate(r.call).0]
            && now.saturating_sub(r.started_ns) >= limit.as_nanos() as u64
        {
            w.timed_out = Some((r.call, limit));
            let _ = w.child.signal(Signal::SIGKILL);
        }
    }
}

/// Kills workers that have had nothing to run for longer than the run's
/// longest timeout, if it has one: a worker waits, before it leaves, for the
/// non-daemon threads its tasks started, and one that never ends would keep
/// the run waiting for ever. Without a timeout it is waited for, as an
/// interpreter waits for them before it exits.
fn kill_slow_leavers(
    live: &mut [Worker],
    board: &Board,
    longest_timeout: Option<Duration>,
    logger: &xme_log::Logger,
) {
    let Some(limit) = longest_timeout else {
        return;
    };
    if board.has_unclaimed() {
        return;
    }
    for w in live.iter_mut().filter(|w| !w.killed_leaving) {
        if board.running(w.slot, w.serial).is_some() {
            w.leaving_since = None;
            continue;
        }
        let since = *w.leaving_since.get_or_insert_with(Instant::now);
        if since.elapsed() >= limit {
            w.killed_leaving = true;
            let _ = w.child.signal(Signal::SIGKILL);
            let _ = logger.entry().msgtype("Warning").print(format!(
                "worker process {} was killed: {:.3} s after its last call it was still \
                 waiting to leave (for a thread a task started and did not mark daemon)",
                w.child.pid(),
                limit.as_secs_f64()
            ));
        }
    }
}

/// Kills workers that never took a call and will not be missed: once every
/// call is taken (none can take one any more: the cursor is past the end),
/// at once, rather than wait for their start and their exit; and, when the
/// run has a timeout, one whose start has outlasted it (a fork hook that
/// does not return), which is then replaced as a barren worker. (A stuck
/// worker that takes a call in the instant it is killed fails that call
/// as killed.)
fn kill_unstarted(
    live: &mut [Worker],
    board: &Board,
    limit: Option<Duration>,
    logger: &xme_log::Logger,
) {
    let all_taken = !board.has_unclaimed();
    let now = monotonic_ns();
    for w in live.iter_mut() {
        if w.killed_unstarted.is_some() || w.replied || w.ended {
            continue;
        }
        let stuck =
            limit.is_some_and(|l| Duration::from_nanos(now.saturating_sub(w.forked_ns)) >= l);
        if !(all_taken || stuck)
            || board.running(w.slot, w.serial).is_some()
            || !board.claimed_by(w.serial).is_empty()
        {
            continue;
        }
        let why = if all_taken {
            Unstarted::NotNeeded
        } else {
            Unstarted::Stuck
        };
        w.killed_unstarted = Some(why);
        let _ = w.child.signal(Signal::SIGKILL);
        if why == Unstarted::Stuck {
            let _ = logger.entry().msgtype("Warning").print(format!(
                "worker process {} was killed: {:.3} s after it was forked it had not taken                  a call (a fork hook that does not return?); another takes its place",
                w.child.pid(),
                limit.map_or(0.0, |l| l.as_secs_f64())
            ));
        }
    }
}

/// Reaps `w` if it has ended, after reading what it left in its pipe. A worker
/// that closed its pipe but lingers past [`LINGER`] is killed. `Some(None)`:
/// it ended, but the kernel reaped it (`SIGCHLD` ignored), so how is unknown.
fn reap_if_ended<D>(
    w: &mut Worker,
    buf: &mut [u8],
    ledger: &mut Ledger<'_, '_, D>,
) -> Result<Option<Option<Fate>>, Error> {
    let reaped = match w.child.try_wait() {
        Ok(None) if w.closed_at.is_some_and(|t| t.elapsed() >= LINGER) => {
            w.channel_lost = true;
            w.child.kill_mut().map(Some)
        }
        other => other,
    };
    let fate = match reaped {
        Ok(Some(fate)) => Some(fate),
        Ok(None) => return Ok(None),
        Err(_) if w.child.vanished() => None,
        Err(e) => return Err(e),
    };
    // Replies written just before the end are still in the pipe.
    while let Some(pipe) = &w.pipe {
        let mut fd = [PollFd::new(pipe.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fd, PollTimeout::ZERO) {
            Ok(n) if n > 0 => read_some(w, buf, ledger),
            Err(nix::Error::EINTR) => {}
            _ => break,
        }
    }
    Ok(Some(fate))
}
