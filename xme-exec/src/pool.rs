//! A warm pool of worker processes forked from a single-threaded zygote.

use std::collections::VecDeque;
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde::Serialize;
use serde::de::DeserializeOwned;
use xme_array::SplitArgs;

use crate::pool_job::{Call, PoolJob, PoolJobs};
use crate::zygote::{self, Zygote};
use crate::{ExecError, Outcomes, TaskFailure};

/// A pool of worker processes kept across batches, safe to use from many
/// threads of a program that has threads.
///
/// Make it **first thing in `main`, before any thread starts**: it forks a
/// single-threaded *zygote* (a fork server) at once, and every worker is
/// forked from the zygote, never from your possibly threaded program. So a
/// task may use rayon, tokio or any lock, even after the parent started
/// rayon's pool or holds a mutex in another thread; workers are reused from
/// one batch to the next (no fork per batch).
///
/// Tasks are functions: `fn` items or closures without captures (a
/// capturing closure is refused at compile time), with arguments and results
/// that cross with serde. Results come back in call order, as with
/// [`Xme::fun`](crate::Xme::fun); a call that panics, is killed, exits or
/// runs past its time limit gives a [`TaskError`](crate::TaskError) naming the call, and its
/// worker is replaced.
///
/// ```
/// use xme_exec::{Array, Pool};
///
/// fn square(x: u64) -> u64 {
///     x * x
/// }
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let pool = Pool::new(2)?; // first thing in main
/// for round in 0..3u64 {
///     let out = pool.fun(square, Array::new(round..round + 10))?;
///     assert_eq!(out.into_result()?[0], round * round);
/// }
/// // Closures work too, if they capture nothing:
/// let out = pool.fun(|s: String| s.len(), Array::new(["a", "bc"].map(String::from)))?;
/// assert_eq!(out.into_result()?, [1, 2]);
/// # Ok(())
/// # }
/// ```
///
/// A closure that captures is refused when the program is compiled:
///
/// ```compile_fail
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let pool = xme_exec::Pool::new(1)?;
/// let offset = 10u64;
/// pool.fun(move |x: u64| x + offset, xme_exec::Array::new([1u64]))?; // captures `offset`
/// # Ok(())
/// # }
/// ```
///
/// `Pool` is `Send + Sync` and cheap to clone (clones share the workers):
/// several threads may submit batches at once, each getting workers as
/// they free up, at most `pnum` calls running in all. From async code, call
/// it inside `tokio::task::spawn_blocking` (a batch blocks its thread).
///
/// The zygote and the workers die with the parent (even by `SIGKILL`);
/// dropping the last clone ends and reaps them. If the zygote is killed, the
/// next batch fails with [`ExecError::PoolGone`]; make a new pool.
#[derive(Debug, Clone)]
pub struct Pool {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    pnum: usize,
    timeout: Option<Duration>,
    zygote_pid: i32,
    zygote: Mutex<Option<Zygote>>,
    idle: Mutex<Vec<Worker>>,
    returned: Condvar,
    /// Workers that exist (idle or running a call).
    live: AtomicUsize,
}

#[derive(Debug)]
struct Worker {
    pid: i32,
    socket: UnixStream,
}

/// Builds a [`Pool`].
#[derive(Debug, Clone, Default)]
pub struct PoolBuilder {
    pnum: Option<usize>,
    timeout: Option<Duration>,
}

impl PoolBuilder {
    /// Worker processes (default: one per CPU).
    #[must_use]
    pub fn pnum(mut self, pnum: usize) -> PoolBuilder {
        self.pnum = Some(pnum);
        self
    }

    /// Time limit of each call (default: none): a call past it fails with
    /// [`TaskFailure::TimedOut`] and its worker is killed and replaced.
    #[must_use]
    pub fn timeout(mut self, limit: Duration) -> PoolBuilder {
        self.timeout = Some(limit);
        self
    }

    /// Forks the zygote (workers are forked from it when first needed).
    ///
    /// # Errors
    /// [`ExecError::Setup`] when the zygote cannot be forked; [`ExecError::Config`]
    /// for a `pnum` of 0.
    pub fn build(self) -> Result<Pool, ExecError> {
        let pnum = self.pnum.unwrap_or_else(crate::cpus);
        if pnum == 0 {
            return Err(ExecError::Config(
                "a pool needs at least 1 worker (pnum 0)".into(),
            ));
        }
        let threads = crate::threads::count();
        if threads > 1 {
            log::warn!(
                "xme: Pool made while this process has {threads} threads; make it first in main, before any thread starts (a thread holding a lock at the zygote's fork leaves that lock held in every worker)"
            );
        }
        let zygote = Zygote::start()?;
        Ok(Pool {
            shared: Arc::new(Shared {
                pnum,
                timeout: self.timeout,
                zygote_pid: zygote.pid(),
                zygote: Mutex::new(Some(zygote)),
                idle: Mutex::new(Vec::new()),
                returned: Condvar::new(),
                live: AtomicUsize::new(0),
            }),
        })
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding these locks leaves plain data behind: go on.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Pool {
    /// A pool of `pnum` workers, no time limit.
    ///
    /// # Errors
    /// As [`PoolBuilder::build`].
    pub fn new(pnum: usize) -> Result<Pool, ExecError> {
        Pool::builder().pnum(pnum).build()
    }

    /// A builder: `pnum`, per-call `timeout`.
    pub fn builder() -> PoolBuilder {
        PoolBuilder::default()
    }

    /// The number of workers.
    pub fn pnum(&self) -> usize {
        self.shared.pnum
    }

    /// The zygote's pid.
    pub fn zygote_pid(&self) -> i32 {
        self.shared.zygote_pid
    }

    /// Pids of the workers waiting for work now.
    pub fn idle_workers(&self) -> Vec<i32> {
        lock(&self.shared.idle).iter().map(|w| w.pid).collect()
    }

    /// Calls `f` once per call of the split plan of `args`, at most `pnum`
    /// at once (with other threads' batches), and returns the outcomes in
    /// call order.
    ///
    /// # Errors
    /// [`ExecError::Arguments`] for arguments that cannot be split;
    /// [`ExecError::PoolGone`] when the zygote died (make a new pool).
    /// Failures of single calls are in the [`Outcomes`].
    pub fn fun<A, R, F>(&self, f: F, args: A) -> Result<Outcomes<R>, ExecError>
    where
        A: SplitArgs,
        A::Call: Serialize + DeserializeOwned,
        F: Fn(A::Call) -> R + Copy + 'static,
        R: Serialize + DeserializeOwned,
    {
        self.fun_within(f, args, None)
    }

    /// [`fun`](Self::fun) with a time limit for the whole batch: calls still
    /// running when it passes fail with [`TaskFailure::TimedOut`] (their
    /// workers are killed and replaced), calls not started with
    /// [`TaskFailure::NotRun`].
    ///
    /// # Errors
    /// As [`fun`](Self::fun).
    pub fn fun_within<A, R, F>(
        &self,
        f: F,
        args: A,
        job_limit: impl Into<Option<Duration>>,
    ) -> Result<Outcomes<R>, ExecError>
    where
        A: SplitArgs,
        A::Call: Serialize + DeserializeOwned,
        F: Fn(A::Call) -> R + Copy + 'static,
        R: Serialize + DeserializeOwned,
    {
        let (out,) = self.funs_within((PoolJob::new(f, args),), job_limit)?;
        Ok(out)
    }

    /// Multi-function model: runs every job of `table` (a tuple of
    /// [`PoolJob`]s) in one batch, calls taken top to bottom, at most `pnum`
    /// at once; returns each job's outcomes, shaped like the table. See
    /// [`PoolJob`] for an example.
    ///
    /// # Errors
    /// As [`fun`](Self::fun).
    pub fn funs<T: PoolJobs>(&self, table: T) -> Result<T::Output, ExecError> {
        self.funs_within(table, None)
    }

    /// [`funs`](Self::funs) with a time limit for the whole batch, as
    /// [`fun_within`](Self::fun_within).
    ///
    /// # Errors
    /// As [`fun`](Self::fun).
    pub fn funs_within<T: PoolJobs>(
        &self,
        table: T,
        job_limit: impl Into<Option<Duration>>,
    ) -> Result<T::Output, ExecError> {
        let jobs = table.calls()?;
        let counts: Vec<usize> = jobs.iter().map(Vec::len).collect();
        let calls: Vec<Call> = jobs.into_iter().flatten().collect();
        let deadline = job_limit.into().map(|d| Instant::now() + d);
        let mut raw = self.run_calls(&calls, deadline)?.into_iter();
        let per_job = counts
            .iter()
            .map(|&n| raw.by_ref().take(n).collect())
            .collect();
        Ok(table.outcomes(per_job))
    }

    fn gone(&self, why: impl std::fmt::Display) -> ExecError {
        ExecError::PoolGone {
            zygote: self.shared.zygote_pid,
            why: why.to_string(),
        }
    }

    /// An idle worker, or a new one while fewer than `pnum` exist; waits for
    /// one to come back if `block`, else `None`.
    fn take_worker(&self, block: bool) -> Result<Option<Worker>, ExecError> {
        let s = &self.shared;
        let mut idle = lock(&s.idle);
        loop {
            if let Some(w) = idle.pop() {
                return Ok(Some(w));
            }
            if s.live.load(Ordering::Acquire) < s.pnum {
                s.live.fetch_add(1, Ordering::AcqRel);
                drop(idle);
                return self.spawn().map(Some).inspect_err(|_| {
                    s.live.fetch_sub(1, Ordering::AcqRel);
                });
            }
            if !block {
                return Ok(None);
            }
            idle = s.returned.wait(idle).unwrap_or_else(|e| e.into_inner());
        }
    }

    fn spawn(&self) -> Result<Worker, ExecError> {
        let mut z = lock(&self.shared.zygote);
        let zygote = z.as_mut().ok_or_else(|| self.gone("it died earlier"))?;
        match zygote.spawn() {
            Ok((pid, socket)) => Ok(Worker { pid, socket }),
            Err(e) => {
                *z = None;
                Err(self.gone(e))
            }
        }
    }

    /// Reaps a worker that ended (or was killed): how it ended.
    fn reap(&self, pid: i32) -> Result<xme_core::Fate, TaskFailure> {
        self.shared.live.fetch_sub(1, Ordering::AcqRel);
        self.shared.returned.notify_one();
        let mut z = lock(&self.shared.zygote);
        let fate = z.as_mut().map(|zygote| zygote.fate(pid));
        match fate {
            Some(Ok(fate)) => Ok(fate),
            _ => {
                *z = None;
                Err(TaskFailure::ZygoteDied {
                    zygote: self.shared.zygote_pid,
                })
            }
        }
    }

    fn give_back(&self, workers: Vec<Worker>) {
        if workers.is_empty() {
            return;
        }
        lock(&self.shared.idle).extend(workers);
        self.shared.returned.notify_all();
    }

    fn run_calls(
        &self,
        calls: &[Call],
        deadline: Option<Instant>,
    ) -> Result<Vec<Result<Vec<u8>, TaskFailure>>, ExecError> {
        if !lock(&self.shared.zygote)
            .as_mut()
            .is_some_and(Zygote::is_alive)
        {
            return Err(self.gone("it is not running"));
        }
        let mut results: Vec<Option<Result<Vec<u8>, TaskFailure>>> =
            (0..calls.len()).map(|_| None).collect();
        let mut pending: VecDeque<usize> = VecDeque::new();
        for (call, c) in calls.iter().enumerate() {
            match &c.args {
                Ok(_) => pending.push_back(call),
                Err(e) => results[call] = Some(Err(TaskFailure::Encode(e.clone()))),
            }
        }
        let mut busy: Vec<Busy> = Vec::new();
        let outcome = loop {
            // Enough workers for the calls left (waiting for one only when
            // we hold none).
            while busy.len() < self.shared.pnum.min(pending.len() + busy.len()) {
                match self.take_worker(busy.is_empty()) {
                    Ok(Some(worker)) => busy.push(Busy::new(worker)),
                    Ok(None) => break,
                    Err(e) => {
                        self.give_back(busy.into_iter().map(|b| b.worker).collect());
                        return Err(e);
                    }
                }
            }
            // Queue calls on the workers, one each in turn, while they take
            // them: a worker runs its queue without waiting for us.
            let mut sent = true;
            while sent && !pending.is_empty() {
                sent = false;
                let mut i = 0;
                while i < busy.len() {
                    let Some(&call) = pending.front() else { break };
                    let args = calls[call].args.as_deref().unwrap_or_default();
                    let address = (calls[call].trampoline as u64).to_le_bytes();
                    if !busy[i].has_room(args.len()) {
                        i += 1;
                        continue;
                    }
                    if zygote::write_frame(&mut busy[i].worker.socket, &[&address, args]).is_err() {
                        // It died: its queue goes back, the death is reported
                        // against the call it was running, if any.
                        let dead = busy.swap_remove(i);
                        self.worker_died(dead, &mut pending, &mut results);
                        continue;
                    }
                    pending.pop_front();
                    busy[i].push(call, args.len());
                    sent = true;
                    i += 1;
                }
            }
            // Workers with nothing queued go back to the pool at once.
            let (idle, working): (Vec<Busy>, Vec<Busy>) =
                busy.into_iter().partition(|b| b.queue.is_empty());
            busy = working;
            if pending.is_empty() || busy.is_empty() {
                self.give_back(idle.into_iter().map(|b| b.worker).collect());
            } else {
                busy.extend(idle);
            }
            if busy.is_empty() {
                if pending.is_empty() {
                    break Ok(());
                }
                continue;
            }
            // Wait for a reply, a death, or the nearest deadline.
            let now = Instant::now();
            let nearest = busy
                .iter()
                .filter(|b| !b.queue.is_empty())
                .filter_map(|b| self.shared.timeout.map(|t| b.head_started + t))
                .chain(deadline)
                .min();
            let wait = nearest.map_or(-1, |d| {
                d.saturating_duration_since(now).as_millis().min(60_000) as i32 + 1
            });
            let mut fds: Vec<nix::poll::PollFd<'_>> = busy
                .iter()
                .map(|b| {
                    nix::poll::PollFd::new(b.worker.socket.as_fd(), nix::poll::PollFlags::POLLIN)
                })
                .collect();
            // Replies of short calls come back within microseconds: look
            // without sleeping for a moment (a sleep and wake-up costs more),
            // then sleep until one comes.
            let spin_until = now + SPIN;
            let polled = loop {
                match nix::poll::poll(&mut fds, nix::poll::PollTimeout::ZERO) {
                    Ok(0) if Instant::now() < spin_until => std::hint::spin_loop(),
                    Ok(0) => {
                        let timeout = nix::poll::PollTimeout::try_from(wait)
                            .unwrap_or(nix::poll::PollTimeout::NONE);
                        break nix::poll::poll(&mut fds, timeout);
                    }
                    other => break other,
                }
            };
            match polled {
                Ok(_) | Err(nix::Error::EINTR) => {}
                Err(e) => break Err(self.gone(format!("poll failed: {e}"))),
            }
            let ready: Vec<bool> = fds.iter().map(|f| f.any().unwrap_or(true)).collect();
            drop(fds);
            let now = Instant::now();
            let job_over = deadline.is_some_and(|d| now >= d);
            let mut still = Vec::with_capacity(busy.len());
            for (mut b, ready) in busy.into_iter().zip(ready) {
                if ready {
                    match zygote::read_frame(&mut b.worker.socket) {
                        Ok(reply) if !reply.is_empty() => {
                            let call = b.pop();
                            results[call] = Some(decode_reply(&reply));
                            still.push(b);
                        }
                        _ => self.worker_died(b, &mut pending, &mut results),
                    }
                    continue;
                }
                let call_over = self.shared.timeout.filter(|&t| now >= b.head_started + t);
                if b.queue.is_empty() || (call_over.is_none() && !job_over) {
                    still.push(b);
                    continue;
                }
                let after = call_over.unwrap_or(now - b.head_started);
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(b.worker.pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
                let call = b.pop();
                results[call] = Some(Err(match self.reap(b.worker.pid) {
                    Ok(_) => TaskFailure::TimedOut { after },
                    Err(f) => f,
                }));
                pending.extend(b.queue.drain(..));
            }
            busy = still;
            if job_over {
                for call in pending.drain(..) {
                    results[call] = Some(Err(TaskFailure::NotRun(
                        "the batch's time limit passed first".into(),
                    )));
                }
            }
        };
        self.give_back(busy.into_iter().map(|b| b.worker).collect());
        outcome?;
        Ok(results
            .into_iter()
            .map(|r| r.unwrap_or_else(|| Err(TaskFailure::NotRun("no worker took it".into()))))
            .collect())
    }

    /// A worker that died (its socket closed): the call it was running fails
    /// with its fate; the calls queued behind it go back to `pending`.
    fn worker_died(
        &self,
        mut dead: Busy,
        pending: &mut VecDeque<usize>,
        results: &mut [Option<Result<Vec<u8>, TaskFailure>>],
    ) {
        let fate = self.reap(dead.worker.pid);
        if dead.queue.is_empty() {
            return; // died while idle: no call's doing
        }
        let call = dead.pop();
        results[call] = Some(Err(match fate {
            Ok(fate) => TaskFailure::from_fate(fate),
            Err(f) => f,
        }));
        for call in dead.queue.drain(..).rev() {
            pending.push_front(call);
        }
    }
}

/// A worker held by a batch, with the calls sent to it in order (the first
/// is running since `head_started`).
struct Busy {
    worker: Worker,
    queue: VecDeque<usize>,
    lens: VecDeque<usize>,
    queued_bytes: usize,
    head_started: Instant,
}

/// How long a batch looks for replies before sleeping in `poll`.
const SPIN: Duration = Duration::from_micros(30);

/// Calls and bytes a worker may have queued: small enough that a write never
/// waits on a full socket (which, with a worker waiting on its own full
/// reply socket, would deadlock).
const QUEUE_CALLS: usize = 32;
const QUEUE_BYTES: usize = 32 * 1024;

impl Busy {
    fn new(worker: Worker) -> Busy {
        Busy {
            worker,
            queue: VecDeque::new(),
            lens: VecDeque::new(),
            queued_bytes: 0,
            head_started: Instant::now(),
        }
    }

    /// Whether a call of `len` bytes of arguments may be queued (always, on
    /// an empty queue).
    fn has_room(&self, len: usize) -> bool {
        self.queue.is_empty()
            || (self.queue.len() < QUEUE_CALLS && self.queued_bytes + len + 12 <= QUEUE_BYTES)
    }

    fn push(&mut self, call: usize, len: usize) {
        if self.queue.is_empty() {
            self.head_started = Instant::now();
        }
        self.queue.push_back(call);
        self.lens.push_back(len + 12);
        self.queued_bytes += len + 12;
    }

    /// The running call is done: the next one starts now.
    fn pop(&mut self) -> usize {
        self.queued_bytes -= self.lens.pop_front().unwrap_or(0);
        self.head_started = Instant::now();
        self.queue.pop_front().expect("a call was queued")
    }
}

fn decode_reply(reply: &[u8]) -> Result<Vec<u8>, TaskFailure> {
    let (status, body) = (reply[0], &reply[1..]);
    match status {
        zygote::OK => Ok(body.to_vec()),
        zygote::PANICKED => Err(TaskFailure::Panicked(zygote::panic_report(body))),
        zygote::ENCODE => Err(TaskFailure::Encode(
            String::from_utf8_lossy(body).into_owned(),
        )),
        zygote::DECODE => Err(TaskFailure::Decode(format!(
            "the worker could not decode the call's arguments: {}",
            String::from_utf8_lossy(body)
        ))),
        other => Err(TaskFailure::Decode(format!("reply status {other}"))),
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        // Idle workers see their socket close and exit; then the zygote sees
        // its control socket close, kills and reaps any worker left, and
        // exits; we reap it (killing it only if it does not end in time).
        lock(&self.idle).clear();
        if let Some(zygote) = lock(&self.zygote).take() {
            zygote.finish(Duration::from_secs(2));
        }
    }
}
