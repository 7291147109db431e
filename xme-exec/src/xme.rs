use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use xme_array::SplitArgs;
use xme_log::Logger;

use crate::fanout::Spawning;
use crate::job::{JobTable, Plain, WithContext};
use crate::runner::{self, RunSpec};
use crate::{Context, ExecError, Job, Outcomes, Reply};

/// The standard interface (XMESI): runs a table of functions over forked
/// worker processes.
///
/// Options are the seed's: `pnum`, `do_with_log`, `logfile`,
/// `show_version_info`, `print_in_screen`, plus a per-call `timeout`.
///
/// # Single-function model
/// ```
/// use xme_exec::{Array, Xme};
///
/// fn fun(v: u64) -> u64 { (v + 1..v + 11).sum() }
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let xme = Xme::new().pnum(2);
/// let v = Array::new((0..10).map(|v| v * 10));
/// let sums = xme.fun(fun, v)?.into_result()?;
/// assert_eq!(sums.iter().sum::<u64>(), 5050);
/// # Ok(())
/// # }
/// ```
///
/// # Multi-function model
/// Each function has its own argument and result types; results come back
/// typed, in table order.
/// ```
/// use xme_exec::{Array, Job, Same, Xme};
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let (squares, greetings) = Xme::new().funs((
///     Job::new(|x: u32| x * x, Array::new(1..=3)),
///     Job::new(|(name, punct): (String, char)| format!("hello {name}{punct}"),
///              (Array::from(vec!["ann".to_string(), "bob".to_string()]), Same('!'))),
/// ))?;
/// assert_eq!(squares.into_result()?, [1, 4, 9]);
/// assert_eq!(greetings.into_result()?, ["hello ann!", "hello bob!"]);
/// # Ok(())
/// # }
/// ```
///
/// Tasks are closures and may capture anything, even what cannot be sent or
/// serialized (an open file, an `Rc`): each worker is a fork of this process.
/// Only results cross back, so they are [`Reply`]s: any serde type
/// (postcard-encoded), or [`RawBytes`](crate::RawBytes) sent as they are.
#[derive(Clone, Debug)]
pub struct Xme {
    requested_pnum: Option<usize>,
    spawning: Spawning,
    do_with_log: bool,
    show_version_info: bool,
    logger: Logger,
    timeout: Option<Duration>,
    interrupt: Option<InterruptCheck>,
    #[cfg(feature = "progress")]
    progress: bool,
}

/// The check a waiting run consults (see [`Xme::interrupt_when`]).
#[derive(Clone)]
struct InterruptCheck(Arc<dyn Fn() -> bool + Send + Sync>);

impl std::fmt::Debug for InterruptCheck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("InterruptCheck(..)")
    }
}

impl Default for Xme {
    fn default() -> Self {
        Xme::new()
    }
}

/// Number of CPUs this process may run on (its affinity and its cgroup's
/// CPU quota), read at most once a second: reading it takes a dozen system
/// calls, more than the rest of a small run's set-up. Kept in atomics, not
/// behind a lock: a worker forked while another thread held such a lock
/// would wait for it for ever.
pub fn cpus() -> usize {
    use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
    const FRESH_NS: u64 = 1_000_000_000;
    static READ_AT_NS: AtomicU64 = AtomicU64::new(0);
    static COUNT: AtomicUsize = AtomicUsize::new(0);
    let now = xme_core::monotonic_ns();
    let count = COUNT.load(Ordering::Acquire);
    if count != 0 && now.saturating_sub(READ_AT_NS.load(Ordering::Relaxed)) < FRESH_NS {
        return count;
    }
    // Two threads may both read it: they store the same answer.
    let count = std::thread::available_parallelism().map_or(1, |n| n.get());
    READ_AT_NS.store(now, Ordering::Relaxed);
    COUNT.store(count, Ordering::Release);
    count
}

impl Xme {
    /// The seed's defaults: `pnum` = number of CPUs, logging on, to the screen.
    ///
    /// ```
    /// use xme_exec::{Array, Xme};
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let out = Xme::new().fun(|x: i32| x + 1, Array::new([1, 2, 3]))?;
    /// assert_eq!(out.into_result()?, [2, 3, 4]);
    /// # Ok(())
    /// # }
    /// ```
    pub fn new() -> Xme {
        Xme {
            requested_pnum: None,
            spawning: Spawning::OnDemand,
            do_with_log: true,
            show_version_info: false,
            logger: Logger::new(),
            timeout: None,
            interrupt: None,
            #[cfg(feature = "progress")]
            progress: false,
        }
    }

    /// Most worker processes alive at once. Clamped to `1..=cpus` as in the
    /// seed; a clamp is logged when a run starts.
    ///
    /// ```
    /// use xme_exec::{Array, Xme};
    /// assert_eq!(Xme::new().pnum(1).effective_pnum(), 1);
    /// assert_eq!(Xme::new().pnum(0).effective_pnum(), 1); // clamped to 1..=cpus
    /// assert_eq!(Xme::new().pnum(10_000).effective_pnum(), xme_exec::cpus());
    /// ```
    pub fn pnum(mut self, pnum: usize) -> Xme {
        self.requested_pnum = Some(pnum);
        self
    }

    /// The `pnum` runs use: the requested one clamped to `1..=cpus`.
    ///
    /// ```
    /// assert_eq!(xme_exec::Xme::new().effective_pnum(), xme_exec::cpus());
    /// ```
    pub fn effective_pnum(&self) -> usize {
        self.requested_pnum.unwrap_or_else(cpus).clamp(1, cpus())
    }

    /// When workers are forked ([`Spawning`]). By default
    /// ([`Spawning::OnDemand`]) a run with no more calls than `pnum` forks a
    /// worker for each at once; a longer run forks one, then more, one start
    /// at a time and up to `pnum`, while the calls not yet taken would keep
    /// the workers busy for longer than a fork takes. Short calls then cost
    /// one fork instead of `pnum`; a second worker joins long calls after
    /// about three worker starts (each 0.1 to 5 ms; here the second call of
    /// a small Rust program starts 0.6-1.2 ms into the run, 0.3-0.5 ms when
    /// eager, and a Python process's 2.7-3.8 ms, 1.3-1.6 ms when eager).
    /// [`Spawning::Eager`] forks every worker at the start.
    ///
    /// ```
    /// use std::collections::HashSet;
    /// use std::time::Duration;
    /// use xme_exec::{Array, Spawning, Xme};
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let slow = |_: u32| { std::thread::sleep(Duration::from_millis(300)); std::process::id() };
    /// // Three calls of 300 ms on two workers: the second joins within a few ms.
    /// let pids = Xme::new().pnum(2).fun(slow, Array::new(0..3u32))?.into_result()?;
    /// assert_eq!(pids.iter().collect::<HashSet<_>>().len(), 2.min(xme_exec::cpus()));
    /// // Eager: both workers forked at once, whatever the calls.
    /// let out = Xme::new().pnum(2).spawning(Spawning::Eager).fun(|x: u32| x + 1, Array::new(0..10u32))?;
    /// assert_eq!(out.into_result()?, (1..=10).collect::<Vec<_>>());
    /// # Ok(())
    /// # }
    /// ```
    pub fn spawning(mut self, spawning: Spawning) -> Xme {
        self.spawning = spawning;
        self
    }

    /// Whether tasks log through the xme logger (`true`) or print plain lines
    /// (`false`, like the built-in `print` of the seed).
    ///
    /// ```
    /// use xme_exec::{Array, Context, Xme};
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// // Tasks print plain lines (no time, no pid) through their context's logger.
    /// let xme = Xme::new().do_with_log(false);
    /// xme.fun_ctx(|ctx: &mut Context, i: u8| ctx.logger().print(format!("call {i}")).unwrap(), Array::new([1u8]))?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn do_with_log(mut self, on: bool) -> Xme {
        self.do_with_log = on;
        self
    }

    /// Appends log lines to `path` too.
    ///
    /// # Errors
    /// [`ExecError::Log`] if the file cannot be opened for appending.
    ///
    /// ```
    /// use xme_exec::{Array, Context, Xme};
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let path = std::env::temp_dir().join(format!("xme-doc-exec-{}.log", std::process::id()));
    /// let xme = Xme::new().print_in_screen(false).logfile(&path)?;
    /// xme.fun_ctx(|ctx: &mut Context, ()| ctx.logger().print("from a worker").unwrap(), ())?;
    /// assert!(std::fs::read_to_string(&path)?.contains("from a worker"));
    /// # std::fs::remove_file(&path)?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn logfile(mut self, path: impl AsRef<Path>) -> Result<Xme, ExecError> {
        self.logger = self.logger.logfile(path)?;
        Ok(self)
    }

    /// Logs the xme version when a run starts.
    ///
    /// ```
    /// use xme_exec::{Array, Xme};
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// Xme::new().show_version_info(true).fun(|()| (), ())?; // logs "xme <version>" first
    /// # Ok(())
    /// # }
    /// ```
    pub fn show_version_info(mut self, on: bool) -> Xme {
        self.show_version_info = on;
        self
    }

    /// Whether log lines go to the screen.
    ///
    /// ```
    /// use xme_exec::{Context, Xme};
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let quiet = Xme::new().print_in_screen(false);
    /// quiet.fun_ctx(|ctx: &mut Context, ()| ctx.logger().print("nowhere").unwrap(), ())?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn print_in_screen(mut self, on: bool) -> Xme {
        self.logger = self.logger.screen(on);
        self
    }

    /// Replaces the logger (all the seed's `logobj` options).
    ///
    /// ```
    /// use xme_exec::{Context, Xme};
    /// use xme_log::Logger;
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let xme = Xme::new().logger(Logger::new().time(false).indent_style(">", 1));
    /// xme.fun_ctx(|ctx: &mut Context, ()| ctx.logger().entry().indent(2).print("nested").unwrap(), ())?;
    /// // prints: (pid@4243):>>nested
    /// # Ok(())
    /// # }
    /// ```
    pub fn logger(mut self, logger: Logger) -> Xme {
        self.logger = logger;
        self
    }

    /// Limits every call to `limit` (a [`Job::timeout`] overrides it). A call
    /// running longer is killed with its worker and reported `TimedOut`.
    ///
    /// ```
    /// use std::time::Duration;
    /// use xme_exec::{Array, Xme};
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let xme = Xme::new().timeout(Duration::from_millis(200));
    /// let out = xme.fun(|ms: u64| std::thread::sleep(Duration::from_millis(ms)), Array::new([1, 10_000]))?;
    /// assert!(out[0].is_ok());
    /// assert!(out[1].as_ref().unwrap_err().is_timeout());
    /// # Ok(())
    /// # }
    /// ```
    pub fn timeout(mut self, limit: Duration) -> Xme {
        self.timeout = Some(limit);
        self
    }

    /// Stops a run when `stop` returns true: while a run waits for its
    /// workers, it calls `stop` at least every 50 ms, and at once when a
    /// signal cuts a wait short (a handler for Ctrl-C that sets a flag, an
    /// interpreter that must run its own signal handlers). A run stopped
    /// this way kills and reaps every worker and returns
    /// [`ExecError::Interrupted`]; its results are dropped.
    ///
    /// `stop` runs in the calling thread, between waits; it must be quick.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use std::sync::atomic::{AtomicBool, Ordering};
    /// use std::time::{Duration, Instant};
    /// use xme_exec::{Array, ExecError, Xme};
    ///
    /// let stop = Arc::new(AtomicBool::new(false));
    /// let flag = stop.clone();
    /// std::thread::spawn(move || {
    ///     std::thread::sleep(Duration::from_millis(200));
    ///     flag.store(true, Ordering::Relaxed); // what a Ctrl-C handler would do
    /// });
    /// let started = Instant::now();
    /// let xme = Xme::new().pnum(2).interrupt_when(move || stop.load(Ordering::Relaxed));
    /// let err = xme.fun(|s: u64| std::thread::sleep(Duration::from_secs(s)), Array::new([60u64, 60])).unwrap_err();
    /// assert!(matches!(err, ExecError::Interrupted { .. }));
    /// assert!(started.elapsed() < Duration::from_secs(30));
    /// ```
    pub fn interrupt_when(mut self, stop: impl Fn() -> bool + Send + Sync + 'static) -> Xme {
        self.interrupt = Some(InterruptCheck(Arc::new(stop)));
        self
    }

    /// Shows a progress bar (calls done / total) on stderr.
    ///
    /// ```
    /// use xme_exec::{Array, Xme};
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let out = Xme::new().progress(true).fun(|x: u32| x * 2, Array::new(0..100u32))?;
    /// assert_eq!(out.into_result()?.len(), 100);
    /// # Ok(())
    /// # }
    /// ```
    #[cfg(feature = "progress")]
    pub fn progress(mut self, on: bool) -> Xme {
        self.progress = on;
        self
    }

    /// Single-function model: calls `f` once per call of the split plan of
    /// `args` and returns the outcomes in call order.
    ///
    /// # Forking a program that has threads
    /// Each call runs in a process forked from this one, which has only the
    /// forking thread. A lock that another thread held at the fork stays
    /// held in the worker (a task taking it hangs), and pools such as
    /// rayon's have no threads there: after the parent used `par_iter`, a
    /// task using rayon waits for ever. When this process has more than one
    /// thread, `fun` logs one warning (through the `log` crate). In a
    /// threaded program use a [`Pool`](crate::Pool), made first in `main`,
    /// whose workers are forked from a single-threaded zygote; or give calls
    /// a [`timeout`](Self::timeout) so a hung call fails instead.
    ///
    /// # Errors
    /// [`ExecError::Arguments`] for an empty `Array`; [`ExecError::NoWorker`]
    /// if not even one worker could be forked; [`ExecError::Interrupted`] if
    /// the [interrupt check](Self::interrupt_when) stopped the run. A call that fails is not an
    /// error of `fun`: it is the [`TaskError`](crate::TaskError) in its
    /// place of the [`Outcomes`].
    ///
    /// ```
    /// use xme_exec::{Array, Pool};
    ///
    /// fn uses_rayon(n: u64) -> u64 {
    ///     use rayon::prelude::*;
    ///     (0..=n).into_par_iter().sum()
    /// }
    ///
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let pool = Pool::new(2)?; // before any thread
    /// use rayon::prelude::*;
    /// let _: u64 = (0..10u64).into_par_iter().sum(); // the parent starts rayon
    /// let out = pool.fun(uses_rayon, Array::new([10u64, 100]))?; // safe
    /// assert_eq!(out.into_result()?, [55, 5050]);
    /// # Ok(())
    /// # }
    /// ```
    pub fn fun<A, R, F>(&self, f: F, args: A) -> Result<Outcomes<R>, ExecError>
    where
        A: SplitArgs,
        F: Fn(A::Call) -> R,
        R: Reply,
    {
        self.funs(Job::<Plain<F>, A, R>::new(f, args))
    }

    /// Like [`fun`](Self::fun), the function also receiving a [`Context`]
    /// (logger, call index, operator).
    ///
    /// # Errors
    /// As [`fun`](Self::fun).
    ///
    /// ```
    /// use xme_exec::{Array, Context, Xme};
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let out = Xme::new().fun_ctx(|ctx: &mut Context, x: u32| (ctx.call(), x), Array::new([7u32, 8]))?;
    /// assert_eq!(out.into_result()?, [(0, 7), (1, 8)]);
    /// # Ok(())
    /// # }
    /// ```
    pub fn fun_ctx<A, R, F>(&self, f: F, args: A) -> Result<Outcomes<R>, ExecError>
    where
        A: SplitArgs,
        F: Fn(&mut Context<'_>, A::Call) -> R,
        R: Reply,
    {
        self.funs(Job::<WithContext<F>, A, R>::with_context(f, args))
    }

    /// Multi-function model: runs every job of `table` (a tuple of jobs, a
    /// `Vec` of them, or one [`Job`]) at once, at most `pnum` processes at a
    /// time, calls taken top to bottom. Returns each job's outcomes, shaped
    /// like the table.
    ///
    /// # Errors
    /// As [`fun`](Self::fun), for any job of the table.
    ///
    /// ```
    /// use xme_exec::{Array, Job, Same, Xme};
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let (lengths, flags) = Xme::new().pnum(2).funs((
    ///     Job::new(|s: &str| s.len(), Array::from(["ab", "cde"])),
    ///     Job::new(|(x, limit): (f64, f64)| x > limit, (Array::from([0.5, 2.0]), Same(1.0))),
    /// ))?;
    /// assert_eq!(lengths.into_result()?, [2, 3]);
    /// assert_eq!(flags.into_result()?, [false, true]);
    /// # Ok(())
    /// # }
    /// ```
    #[doc(alias = "run")]
    pub fn funs<T: JobTable<()>>(&self, table: T) -> Result<T::Output, ExecError> {
        self.run_table(&(), table)
    }

    /// Like [`fun_ctx`](Self::fun_ctx), the tasks also reaching `data` (the
    /// seed's XMEManager) through [`Context::data`] (the seed's `gfun`).
    ///
    /// # Errors
    /// As [`fun`](Self::fun).
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use xme_exec::{Array, Context, Xme};
    /// let shared_config = vec![10, 20, 30];
    /// let out = Xme::new().gfun(&shared_config, |ctx: &mut Context<Vec<i32>>, i: usize| {
    ///     ctx.data()[i] + 1
    /// }, Array::new(0..3usize))?;
    /// assert_eq!(out.into_result()?, [11, 21, 31]);
    /// # Ok(())
    /// # }
    /// ```
    pub fn gfun<D, A, R, F>(&self, data: &D, f: F, args: A) -> Result<Outcomes<R>, ExecError>
    where
        A: SplitArgs,
        F: Fn(&mut Context<'_, D>, A::Call) -> R,
        R: Reply,
    {
        self.run_table(data, Job::<WithContext<F>, A, R, D>::with_context(f, args))
    }

    /// Like [`funs`](Self::funs), the tasks also reaching `data` through
    /// [`Context::data`] (the seed's `gfuns`; how the Manager handle reaches
    /// tasks).
    ///
    /// # Errors
    /// As [`fun`](Self::fun).
    ///
    /// ```
    /// use xme_exec::{Array, Context, Job, Xme};
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let scale = 10;
    /// let (a, b) = Xme::new().gfuns(&scale, (
    ///     Job::with_context(|ctx: &mut Context<i32>, x: i32| x * ctx.data(), Array::new([1, 2])),
    ///     Job::with_context(|ctx: &mut Context<i32>, ()| -ctx.data(), ()),
    /// ))?;
    /// assert_eq!((a.into_result()?, b.into_result()?), (vec![10, 20], vec![-10]));
    /// # Ok(())
    /// # }
    /// ```
    #[doc(alias = "run_with")]
    pub fn gfuns<D, T: JobTable<D>>(&self, data: &D, table: T) -> Result<T::Output, ExecError> {
        self.run_table(data, table)
    }

    /// Runs a table whose tasks see `data` through [`Context::data`].
    fn run_table<D, T: JobTable<D>>(&self, data: &D, mut table: T) -> Result<T::Output, ExecError> {
        let pnum = self.effective_pnum();
        self.announce(pnum);
        let task_logger = if self.do_with_log {
            self.logger.clone()
        } else {
            plain_print_logger()
        };
        let spec = RunSpec {
            pnum,
            spawning: self.spawning,
            default_timeout: self.timeout,
            logger: &task_logger,
            interrupt: self.interrupt.as_ref().map(|c| &*c.0),
        };
        {
            let mut erased = table.erased();
            let mut progress = self.progress_bar();
            let mut on_settled = |total| progress.tick(total);
            runner::run(&spec, data, &mut erased, &mut on_settled)?;
            progress.finish();
        }
        Ok(table.finish(0))
    }

    fn announce(&self, pnum: usize) {
        if self.show_version_info {
            let _ = self.logger.entry().msgtype("Version").print(format!(
                "xme {} (Rust re-creation of XME 4.2), pnum={pnum}",
                xme_core::VERSION
            ));
        }
        if let Some(asked) = self.requested_pnum
            && asked != pnum
        {
            // A library diagnostic: through `log`, never on the program's stdout.
            log::warn!("xme: pnum {asked} is outside 1..={}; using {pnum}", cpus());
        }
    }

    #[cfg(feature = "progress")]
    fn progress_bar(&self) -> Progress {
        Progress(self.progress.then(|| {
            let bar = indicatif::ProgressBar::new(0);
            bar.set_style(
                indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} calls {elapsed}")
                    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
            );
            bar
        }))
    }

    #[cfg(not(feature = "progress"))]
    fn progress_bar(&self) -> Progress {
        Progress
    }
}

/// A logger writing bare lines to the screen, like a built-in `print`.
fn plain_print_logger() -> Logger {
    Logger::new()
        .time(false)
        .msgtype(false)
        .pid(false)
        .indent(false)
}

#[cfg(feature = "progress")]
struct Progress(Option<indicatif::ProgressBar>);

#[cfg(feature = "progress")]
impl Progress {
    fn tick(&mut self, total: usize) {
        if let Some(bar) = &self.0 {
            bar.set_length(total as u64);
            bar.inc(1);
        }
    }

    fn finish(&mut self) {
        if let Some(bar) = &self.0 {
            bar.finish();
            // indicatif leaves the cursor at the end of the bar's line: end
            // the line, so what the program prints next starts on its own.
            if !bar.is_hidden() {
                use std::io::Write;
                let _ = writeln!(std::io::stderr());
            }
        }
    }
}

#[cfg(not(feature = "progress"))]
struct Progress;

#[cfg(not(feature = "progress"))]
impl Progress {
    fn tick(&mut self, _total: usize) {}
    fn finish(&mut self) {}
}
