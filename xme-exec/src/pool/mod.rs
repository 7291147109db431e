//! A warm pool of worker processes: [`Pool`].
//!
//! Rooms: `mod.rs` (the pool and its builder), `call.rs` / `call_set.rs`
//! (handles), `stream.rs` + `feed.rs` + `chunk.rs` (streams and batches on
//! the caller's thread), `job.rs` (the multi-function table of `funs`),
//! `engine.rs` (tasks and sinks, shared with the driver), `driver/` (the
//! driver thread), `zygote.rs` (starting the zygote, and the driver's side
//! of it), `fork_server.rs` and `worker.rs` (the zygote's and a worker's
//! loops), `layout.rs`, `ring.rs`, `claims.rs`, `doorbell.rs` (what they
//! share in memory), `wire.rs` and `entry.rs` (what crosses their sockets).

mod call;
mod call_set;
mod chunk;
mod claims;
mod doorbell;
mod driver;
mod engine;
mod entry;
mod feed;
mod fork_server;
mod job;
mod layout;
mod ring;
mod stream;
mod sync;
mod wire;
mod worker;
mod zygote;

use std::ops::Range;
use std::sync::atomic::{AtomicI32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use serde::de::DeserializeOwned;
use xme_array::SplitArgs;

pub use call::Call;
pub use call_set::CallSet;
pub use job::{PoolJob, PoolJobs};
pub use stream::{Ordered, StreamBuilder, Unordered};
pub use zygote::PoolStart;

use crate::{ExecError, Outcomes, TaskFailure};
use driver::Shared;
use engine::{CancelReason, Sink, Task, lock};
use feed::Feed;
use job::BatchSource;

/// A pool of worker processes kept across calls, usable from any thread,
/// made at any point of any program.
///
/// Its workers are forked from a *zygote* that starts as a fresh `exec` of
/// the running program, before `main` runs there: nothing your program did
/// at run time (threads, rayon's or tokio's pools, locks held, globals set)
/// exists in a worker. So a `Pool` can be made after rayon started, inside
/// `#[tokio::main]`, in a `LazyLock`, or from a thread that then exits.
///
/// A task is a function: a `fn` item or a closure that captures nothing
/// (checked at compile time). It can rely on its arguments, which cross
/// with serde, and on what the program sets up before `main` (statics,
/// `LazyLock`s it initialises itself), **not** on globals the parent set at
/// run time. Results cross back with serde.
///
/// Four ways to run calls, all on one engine:
/// - [`spawn`](Self::spawn): one call, a [`Call`] handle to join, join with
///   a time limit, cancel, or `.await`;
/// - [`call_set`](Self::call_set): many calls taken back as they finish;
/// - [`stream`](Self::stream): one function over a lazy input, results in
///   order or as they finish, with a bounded window and automatic chunking;
/// - [`fun`](Self::fun) / [`funs`](Self::funs): the seed's standard
///   interface (split arguments, results in call order).
///
/// ```
/// use xme_exec::{Array, Pool};
///
/// fn square(x: u64) -> u64 {
///     x * x
/// }
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let pool = Pool::new(2)?;
/// assert_eq!(pool.spawn(square, 7).join()?, 49);
/// let squares: Vec<u64> = pool.stream(square, 0..10_000u64).ordered().collect::<Result<_, _>>()?;
/// assert_eq!(squares[100], 10_000);
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
/// let _ = pool.spawn(move |x: u64| x + offset, 1u64); // captures `offset`
/// # Ok(())
/// # }
/// ```
///
/// **Exactly once, or an error naming the call.** Every call runs at most
/// once. A worker records in shared memory which call it runs, and puts
/// each result there as soon as it has it, so when a worker dies (killed,
/// crashed, `exit` in a task) exactly the call it was running fails with its
/// fate; calls queued behind it run on another worker; a call that returned
/// but whose result the worker could not hand over fails as
/// [`ResultLost`](TaskFailure::ResultLost), never silently run again.
///
/// `Pool` is `Send + Sync` and cheap to clone (clones share the workers).
/// The zygote and the workers die with the program (even by `SIGKILL`);
/// when the last clone and the last handle are dropped, they are ended and
/// reaped. If the zygote is killed, every waiting call fails with
/// [`TaskFailure::ZygoteDied`] and later ones at once; make a new pool.
#[derive(Debug, Clone)]
pub struct Pool {
    inner: Arc<PoolInner>,
}

#[derive(Debug)]
pub(crate) struct PoolInner {
    shared: Arc<Shared>,
    /// The executable's address range (exec start): tasks must lie in it.
    exe: Option<Range<usize>>,
    driver: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl PoolInner {
    /// The entry offset of task type `F`, or why it cannot run.
    pub(crate) fn entry_of<F, A, R>(&self) -> Result<u64, TaskFailure>
    where
        F: Fn(A) -> R + Copy + 'static,
        A: DeserializeOwned,
        R: Serialize,
    {
        const {
            assert!(
                std::mem::size_of::<F>() == 0,
                "a Pool task must be a fn item or a closure that captures nothing: pass what it needs as arguments"
            )
        };
        let t: entry::Trampoline = entry::trampoline::<F, A, R>;
        if let Some(exe) = &self.exe
            && !exe.contains(&(t as usize))
        {
            return Err(TaskFailure::NotRun(
                "its function lies outside the program's executable (in a shared library), where the zygote cannot find it; build the pool with PoolStart::Fork".into(),
            ));
        }
        Ok(entry::offset_of(t))
    }

    /// The pool's measured time of one call, if any call ran yet.
    pub(crate) fn measured_call_ns(&self) -> Option<f64> {
        let bits = self.shared.call_ns.load(Ordering::Relaxed);
        (bits != 0).then(|| f64::from_bits(bits))
    }
}

impl Drop for PoolInner {
    fn drop(&mut self) {
        if self.shared.foreign() {
            // A forked child's copy: the driver thread and the zygote are
            // the parent's (a thread of another process cannot be joined).
            if let Some(h) = lock(&self.driver).take() {
                std::mem::forget(h);
            }
            return;
        }
        self.shared.shut_down();
        let handle = lock(&self.driver).take();
        if let Some(h) = handle
            && h.thread().id() != std::thread::current().id()
        {
            let _ = h.join();
        }
    }
}

/// Builds a [`Pool`].
#[derive(Debug, Clone, Default)]
pub struct PoolBuilder {
    pnum: Option<usize>,
    timeout: Option<Duration>,
    start: PoolStart,
    max_result: Option<usize>,
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
    /// `Duration::MAX` means no limit.
    #[must_use]
    pub fn timeout(mut self, limit: Duration) -> PoolBuilder {
        self.timeout = (limit != Duration::MAX).then_some(limit);
        self
    }

    /// The largest result a call may return, in encoded bytes (default and
    /// most: 1 GiB). A larger one fails that call with
    /// [`TaskFailure::Encode`] saying so; its worker goes on.
    #[must_use]
    pub fn max_result(mut self, bytes: usize) -> PoolBuilder {
        self.max_result = Some(bytes);
        self
    }

    /// How the zygote starts (default: [`PoolStart::Exec`]).
    #[must_use]
    pub fn start(mut self, how: PoolStart) -> PoolBuilder {
        self.start = how;
        self
    }

    /// Starts the zygote (workers are forked from it when first needed).
    ///
    /// ```
    /// use std::time::Duration;
    /// use xme_exec::Pool;
    ///
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let pool = Pool::builder().pnum(2).timeout(Duration::from_secs(5)).build()?;
    /// assert_eq!(pool.pnum(), 2);
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    /// [`ExecError::Config`] for a `pnum` of 0, or when the zygote cannot be
    /// started by `exec` (this crate is in a shared library rather than the
    /// program, or its start-up entry point was not linked in: the message
    /// says which; `PoolStart::Fork` works there); [`ExecError::Setup`] when
    /// the shared memory, the driver thread or the zygote cannot be started.
    pub fn build(self) -> Result<Pool, ExecError> {
        let pnum = self.pnum.unwrap_or_else(crate::cpus);
        if pnum == 0 {
            return Err(ExecError::Config(
                "a pool needs at least 1 worker (pnum 0)".into(),
            ));
        }
        let exe = match self.start {
            PoolStart::Exec => {
                if !zygote::entry_linked() {
                    return Err(ExecError::Config(
                        "this program's copy of xme-exec has no start-up entry point (its constructor was not linked in), so a pool cannot start its zygote by exec without running main again; build the pool with PoolStart::Fork".into(),
                    ));
                }
                Some(entry::executable_range().map_err(|why| {
                    ExecError::Config(format!(
                        "a pool cannot start its zygote by exec here: {why}; build it with PoolStart::Fork"
                    ))
                })?)
            }
            PoolStart::Fork => {
                let threads = crate::threads::count();
                if threads > 1 {
                    log::warn!(
                        "xme: Pool started by fork while this process has {threads} threads: a lock another thread held at the fork stays held in every worker (PoolStart::Exec avoids this)"
                    );
                }
                None
            }
        };
        let max_result = self
            .max_result
            .unwrap_or(wire::MAX_FRAME)
            .min(wire::MAX_FRAME);
        let region = layout::PoolRegion::create(pnum, max_result)?;
        let shared = Arc::new(Shared {
            state: Mutex::default(),
            wake: nix::sys::eventfd::EventFd::from_flags(
                nix::sys::eventfd::EfdFlags::EFD_CLOEXEC
                    | nix::sys::eventfd::EfdFlags::EFD_NONBLOCK,
            )
            .map_err(|e| xme_core::Error::Io {
                doing: "making the pool's wake-up descriptor",
                source: e.into(),
            })?,
            pnum,
            limit: self.timeout,
            zygote_pid: AtomicI32::new(0),
            call_ns: AtomicU64::new(0),
            owner: xme_core::process::current_pid(),
            nudges: AtomicU64::new(0),
        });
        let handle = driver::start(shared.clone(), region, self.start)?;
        Ok(Pool {
            inner: Arc::new(PoolInner {
                shared,
                exe,
                driver: Mutex::new(Some(handle)),
            }),
        })
    }
}

impl Pool {
    /// A pool of `pnum` workers, no time limit.
    ///
    /// # Errors
    /// As [`PoolBuilder::build`].
    pub fn new(pnum: usize) -> Result<Pool, ExecError> {
        Pool::builder().pnum(pnum).build()
    }

    /// A builder: `pnum`, per-call `timeout`, how the zygote `start`s.
    pub fn builder() -> PoolBuilder {
        PoolBuilder::default()
    }

    /// The number of workers.
    pub fn pnum(&self) -> usize {
        self.inner.shared.pnum
    }

    /// The zygote's pid.
    pub fn zygote_pid(&self) -> i32 {
        self.inner.shared.zygote_pid.load(Ordering::Relaxed)
    }

    /// Pids of the workers with nothing to do now.
    pub fn idle_workers(&self) -> Vec<i32> {
        lock(&self.inner.shared.state).idle.clone()
    }

    /// Pids of the live workers.
    pub fn workers(&self) -> Vec<i32> {
        lock(&self.inner.shared.state).workers.clone()
    }

    /// Starts `f(arg)` on a worker and returns its handle at once (the call
    /// waits in the pool's queue if every worker is busy). See [`Call`].
    pub fn spawn<F, A, R>(&self, f: F, arg: A) -> Call<R>
    where
        F: Fn(A) -> R + Copy + 'static,
        A: Serialize + DeserializeOwned,
        R: Serialize + DeserializeOwned,
    {
        let _ = f; // zero-sized: the worker makes its own
        let sink = Sink::new();
        let mut args = Vec::new();
        let entry = self
            .inner
            .entry_of::<F, A, R>()
            .and_then(|entry| feed::encode_call(&arg, &mut args).map(|()| entry));
        let function = std::any::type_name::<F>();
        match entry {
            Ok(entry) => self.inner.shared.submit(vec![Task {
                sink: sink.clone(),
                entry,
                first: 0,
                calls: 1,
                args,
                limit: self.inner.shared.limit,
                requeued: 0,
            }]),
            Err(failure) => {
                let mut block = engine::Block::new(0);
                block.items.push(engine::Item::Failed(Box::new(failure)));
                sink.deliver(block);
            }
        }
        Call::new(self.clone(), sink, function)
    }

    /// An empty [`CallSet`] on this pool.
    pub fn call_set<R: DeserializeOwned>(&self) -> CallSet<R> {
        CallSet::new(self.clone())
    }

    /// `f` over every item of `inputs`, pulled lazily on the caller's thread
    /// as room frees: see [`StreamBuilder`].
    pub fn stream<F, I, A, R>(&self, f: F, inputs: I) -> StreamBuilder<F, I::IntoIter, R>
    where
        I: IntoIterator<Item = A>,
        A: Serialize + DeserializeOwned,
        F: Fn(A) -> R + Copy + 'static,
        R: Serialize + DeserializeOwned,
    {
        let _ = f;
        StreamBuilder::new(self.clone(), inputs.into_iter())
    }

    /// Calls `f` once per call of the split plan of `args`, at most `pnum`
    /// at once (with everything else on the pool), and returns the outcomes
    /// in call order.
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
        let jobs = table.calls(&self.inner)?;
        let counts: Vec<usize> = jobs.iter().map(Vec::len).collect();
        let calls: Vec<job::BatchCall> = jobs.into_iter().flatten().collect();
        let mut raw = self.run_batch(calls, job_limit.into())?.into_iter();
        let per_job = counts
            .iter()
            .map(|&n| raw.by_ref().take(n).collect())
            .collect();
        Ok(table.outcomes(per_job))
    }

    fn run_batch(
        &self,
        calls: Vec<job::BatchCall>,
        limit: Option<Duration>,
    ) -> Result<Vec<Result<Vec<u8>, TaskFailure>>, ExecError> {
        if self.inner.shared.foreign() {
            return Err(ExecError::PoolGone {
                zygote: self.zygote_pid(),
                why: format!(
                    "this process is a fork of process {}, which owns the pool; make a pool in the child",
                    self.inner.shared.owner
                ),
            });
        }
        if let Some(zygote) = lock(&self.inner.shared.state).gone {
            return Err(ExecError::PoolGone {
                zygote,
                why: "it died earlier".into(),
            });
        }
        let n = calls.len();
        let deadline = limit.and_then(|l| Instant::now().checked_add(l));
        let mut feed = Feed::batch(self.clone(), BatchSource(calls.into_iter()), n);
        let mut results: Vec<Option<Result<Vec<u8>, TaskFailure>>> = (0..n).map(|_| None).collect();
        let mut got = 0;
        loop {
            for block in feed.inbox.drain(..) {
                for k in 0..block.items.len() {
                    results[block.first + k] = Some(feed::raw(&block, k).map(<[u8]>::to_vec));
                }
                got += block.items.len();
            }
            feed.yielded = got;
            if got >= n {
                break;
            }
            feed.fill();
            feed.send();
            if feed.receive(deadline) || deadline.is_none_or(|d| Instant::now() < d) {
                continue;
            }
            // The batch's time limit passed: stop what runs, keep what came.
            let after = limit.unwrap_or_default();
            feed.cancel(CancelReason::Deadline(after), Duration::from_secs(10));
            for block in feed.inbox.drain(..) {
                for k in 0..block.items.len() {
                    results[block.first + k] = Some(feed::raw(&block, k).map(<[u8]>::to_vec));
                }
            }
            break;
        }
        if let Some(zygote) = lock(&self.inner.shared.state).gone
            && results
                .iter()
                .any(|r| matches!(r, Some(Err(TaskFailure::ZygoteDied { .. }))))
        {
            return Err(ExecError::PoolGone {
                zygote,
                why: "it died during the batch".into(),
            });
        }
        Ok(results
            .into_iter()
            .map(|r| {
                r.unwrap_or_else(|| {
                    Err(TaskFailure::NotRun(
                        "the batch's time limit passed before it started".into(),
                    ))
                })
            })
            .collect())
    }
}
