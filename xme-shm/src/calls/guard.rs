//! The Guard (seed 2.5): a process that runs the Manager's buffered calls.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use xme_core::process::{self, Child};
use xme_exec::Context;
use xme_log::Logger;

use crate::buffer::call_buffer::Event;
use crate::calls::manager_calls::Executed;
use crate::{Manager, ShmError};

/// How long an idle Guard checks for work before it sleeps.
const IDLE_SPIN: Duration = Duration::from_micros(50);

type Script = Arc<dyn Fn(&Manager) + Send + Sync>;

/// Runs the calls appended to a [`Manager`]'s buffer, in order, one at a time
/// (the seed's `XME.Manager.Guard`).
///
/// Options keep the seed's names: `ExitTime` ([`exit_time`](Self::exit_time)),
/// `LoopTime`, `EmpLoopTime`, `VerboseTime`, `script`. The loop never
/// sleep-polls: it blocks on a shared futex that `append` signals, and the
/// loop times only bound each wait.
///
/// It stops when `__GUARD__["Status"]` becomes false (by a buffered
/// `"Table::update"`, right after that call; set directly, once the buffer is
/// empty), after `ExitTime` with an empty buffer and no call (heartbeats
/// included), or, run as a task of the standard interface
/// ([`serve`](Self::serve)), once every other task of the run has ended.
///
/// ```
/// use std::time::Duration;
/// use serde::{Deserialize, Serialize};
/// use xme_exec::{Array, Context, Job, Xme};
/// use xme_shm::{Guard, Manager, SharedObject, XmemBuilder};
///
/// #[derive(Serialize, Deserialize, Default)]
/// struct V { value: i64 }
/// impl V { fn add(&mut self, n: i64) { self.value += n } }
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let xmem = XmemBuilder::new().build()?;
/// let v = SharedObject::create(&xmem, "v", &V::default())?;
/// let guard = Guard::new();
/// let child = |ctx: &mut Context<Manager>, _i: usize| {
///     let (m, op) = (ctx.data(), ctx.data().alloc_operator());
///     for _ in 0..100 {
///         m.append(&v.call(V::add, &1).unwrap(), op).unwrap();
///     }
/// };
/// // The Guard goes first in the table so that it starts before the children.
/// let (g, c) = Xme::new().pnum(3).print_in_screen(false).gfuns(&xmem, (
///     Job::with_context(|ctx: &mut Context<Manager>, ()| guard.serve(ctx), ()),
///     Job::with_context(child, Array::new(0..4usize)),
/// ))?;
/// assert_eq!(g.into_result()?[0].executed, 400);
/// assert!(c.into_result().is_ok());
/// assert_eq!(v.get(&xmem)?.value, 400);
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct Guard {
    exit_time: Duration,
    loop_time: Duration,
    emp_loop_time: Duration,
    verbose_time: Duration,
    script: Option<Script>,
    logger: Option<Logger>,
}

impl std::fmt::Debug for Guard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Guard")
            .field("exit_time", &self.exit_time)
            .field("loop_time", &self.loop_time)
            .field("emp_loop_time", &self.emp_loop_time)
            .field("verbose_time", &self.verbose_time)
            .field("script", &self.script.is_some())
            .finish()
    }
}

impl Default for Guard {
    fn default() -> Self {
        Guard::new()
    }
}

/// Why a Guard stopped.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum StopReason {
    /// `__GUARD__["Status"]` became false.
    StatusFalse,
    /// `ExitTime` passed with an empty buffer and no call.
    ExitTime,
    /// Every other task of its run ended ([`Guard::serve`]).
    RunEnded,
    /// The loop could not go on (the region is unusable, or another Guard
    /// is running).
    Error(String),
}

/// What a Guard did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuardReport {
    /// Calls it ran.
    pub executed: u64,
    /// Of those, calls that failed (their error is in the caller's mailbox).
    pub failed: u64,
    /// Calls of a dead Guard it reported as failed at start.
    pub recovered: usize,
    /// Why it stopped.
    pub stopped: StopReason,
}

impl Guard {
    /// The seed's defaults: `ExitTime` 10 s, `LoopTime` 1 µs, `EmpLoopTime`
    /// 100 ms, `VerboseTime` 0 (never; the seed's 5 s is one call away), no script.
    ///
    /// ```
    /// use std::time::Duration;
    /// use xme_shm::{Call, Guard, ShmError, XmemBuilder};
    /// const WAIT: Duration = Duration::from_secs(5);
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let xmem = XmemBuilder::new().build()?;
    /// let guard = Guard::new().exit_time(Duration::from_millis(50)).spawn(&xmem)?;
    /// guard.stop(WAIT)?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn new() -> Guard {
        Guard {
            exit_time: Duration::from_secs(10),
            loop_time: Duration::from_micros(1),
            emp_loop_time: Duration::from_millis(100),
            verbose_time: Duration::ZERO,
            script: None,
            logger: None,
        }
    }

    /// `ExitTime`: stop after this long with an empty buffer and no call.
    ///
    /// ```
    /// use std::time::Duration;
    /// use xme_shm::{Call, Guard, ShmError, XmemBuilder};
    /// const WAIT: Duration = Duration::from_secs(5);
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use xme_shm::StopReason;
    /// let xmem = XmemBuilder::new().build()?;
    /// let report = Guard::new().exit_time(Duration::from_millis(20)).run(&xmem)?; // idle: stops
    /// assert!(matches!(report.stopped, StopReason::ExitTime));
    /// # Ok(())
    /// # }
    /// ```
    pub fn exit_time(mut self, d: Duration) -> Guard {
        self.exit_time = d;
        self
    }

    /// `LoopTime`: longest wait for a call that is being appended.
    ///
    /// ```
    /// use std::time::Duration;
    /// use xme_shm::{Call, Guard, ShmError, XmemBuilder};
    /// const WAIT: Duration = Duration::from_secs(5);
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let xmem = XmemBuilder::new().build()?;
    /// Guard::new().loop_time(Duration::from_millis(1)).exit_time(Duration::from_millis(10)).run(&xmem)?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn loop_time(mut self, d: Duration) -> Guard {
        self.loop_time = d;
        self
    }

    /// `EmpLoopTime`: longest single wait on an empty buffer (an `append`
    /// wakes the Guard at once; this only bounds how stale its checks get).
    ///
    /// ```
    /// use std::time::Duration;
    /// use xme_shm::{Call, Guard, ShmError, XmemBuilder};
    /// const WAIT: Duration = Duration::from_secs(5);
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let xmem = XmemBuilder::new().build()?;
    /// Guard::new().emp_loop_time(Duration::from_millis(5)).exit_time(Duration::from_millis(10)).run(&xmem)?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn emp_loop_time(mut self, d: Duration) -> Guard {
        self.emp_loop_time = d;
        self
    }

    /// `VerboseTime`: how often to log a status line (0: never).
    ///
    /// ```
    /// use std::time::Duration;
    /// use xme_shm::{Call, Guard, ShmError, XmemBuilder};
    /// const WAIT: Duration = Duration::from_secs(5);
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let xmem = XmemBuilder::new().build()?;
    /// let quiet = xme_log::Logger::new().screen(false);
    /// Guard::new().verbose_time(Duration::from_millis(1)).logger(quiet).exit_time(Duration::from_millis(10)).run(&xmem)?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn verbose_time(mut self, d: Duration) -> Guard {
        self.verbose_time = d;
        self
    }

    /// `script`: a closure run on its own thread in the Guard's process,
    /// beside the loop, when the Guard starts.
    ///
    /// ```
    /// use std::time::Duration;
    /// use xme_shm::{Call, Guard, ShmError, XmemBuilder};
    /// const WAIT: Duration = Duration::from_secs(5);
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let xmem = XmemBuilder::new().build()?;
    /// let guard = Guard::new().script(|m| m.set("script ran", &true).unwrap()).spawn(&xmem)?;
    /// let t = std::time::Instant::now();
    /// while xmem.get::<bool>("script ran").is_err() {
    ///     assert!(t.elapsed() < WAIT, "the script did not run");
    ///     std::thread::sleep(Duration::from_millis(1)); // it runs beside the loop
    /// }
    /// guard.stop(WAIT)?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn script(mut self, f: impl Fn(&Manager) + Send + Sync + 'static) -> Guard {
        self.script = Some(Arc::new(f));
        self
    }

    /// The logger for status lines (default: a plain one to the screen).
    ///
    /// ```
    /// use std::time::Duration;
    /// use xme_shm::{Call, Guard, ShmError, XmemBuilder};
    /// const WAIT: Duration = Duration::from_secs(5);
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let xmem = XmemBuilder::new().build()?;
    /// let log = xme_log::Logger::new().screen(false);
    /// Guard::new().logger(log).exit_time(Duration::from_millis(10)).run(&xmem)?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn logger(mut self, logger: Logger) -> Guard {
        self.logger = Some(logger);
        self
    }

    /// Runs the Guard in this process until it stops.
    ///
    /// # Errors
    /// [`ShmError::GuardRunning`] if another live Guard serves the buffer;
    /// [`ShmError::BadLayout`] if the region is unusable.
    ///
    /// ```
    /// use std::time::Duration;
    /// use xme_shm::{Call, Guard, ShmError, XmemBuilder};
    /// const WAIT: Duration = Duration::from_secs(5);
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let xmem = XmemBuilder::new().build()?;
    /// xmem.append(&Call::table_set("k", &1u8)?, xmem.alloc_operator())?;
    /// let report = Guard::new().exit_time(Duration::from_millis(20)).run(&xmem)?;
    /// assert_eq!(report.executed, 1);
    /// # Ok(())
    /// # }
    /// ```
    pub fn run(&self, manager: &Manager) -> Result<GuardReport, ShmError> {
        manager.set_guard_status(true)?;
        self.run_until(manager, || false)
    }

    /// Runs the Guard as a task of the standard interface, with the Manager
    /// as the run's data (the seed's `xme.gfun(…, xmem, garg=(xmem,))`). It
    /// also stops once every other task of the run has ended, so a run never
    /// hangs on its Guard. Put it first in the table so it starts first.
    ///
    /// ```
    /// use std::time::Duration;
    /// use xme_shm::{Call, Guard, ShmError, XmemBuilder};
    /// const WAIT: Duration = Duration::from_secs(5);
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use xme_exec::{Array, Context, Job, Xme};
    /// use xme_shm::Manager;
    /// let xmem = XmemBuilder::new().build()?;
    /// let guard = Guard::new();
    /// Xme::new().pnum(2).gfuns(&xmem, (
    ///     Job::with_context(|ctx: &mut Context<Manager>, ()| guard.serve(ctx), ()),
    ///     Job::with_context(|ctx: &mut Context<Manager>, i: u32| {
    ///         let (m, op) = (ctx.data(), ctx.operator());
    ///         m.append(&Call::table_set(&format!("k{i}"), &i).unwrap(), op).unwrap().wait(m, WAIT).unwrap();
    ///     }, Array::new(0..3u32)),
    /// ))?;
    /// assert_eq!(xmem.get::<u32>("k2")?, 2);
    /// # Ok(())
    /// # }
    /// ```
    pub fn serve(&self, ctx: &mut Context<'_, Manager>) -> GuardReport {
        let mut guard = self.clone();
        if guard.logger.is_none() {
            guard.logger = Some(ctx.logger().clone());
        }
        let run = ctx
            .data()
            .set_guard_status(true)
            .and_then(|()| guard.run_until(ctx.data(), || ctx.others_ended()));
        match run {
            Ok(report) => report,
            Err(e) => GuardReport {
                executed: 0,
                failed: 0,
                recovered: 0,
                stopped: StopReason::Error(e.to_string()),
            },
        }
    }

    /// Forks a process that runs the Guard; stop it with [`GuardProcess::stop`].
    ///
    /// # Errors
    /// [`ShmError::Region`] if the process cannot be forked.
    ///
    /// ```
    /// use std::time::Duration;
    /// use xme_shm::{Call, Guard, ShmError, XmemBuilder};
    /// const WAIT: Duration = Duration::from_secs(5);
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let xmem = XmemBuilder::new().build()?;
    /// let guard = Guard::new().spawn(&xmem)?;
    /// assert!(guard.pid() > 0);
    /// guard.stop(WAIT)?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn spawn(&self, manager: &Manager) -> Result<GuardProcess, ShmError> {
        manager.set_guard_status(true)?;
        let child = process::fork_child(|| match self.run_until(manager, || false) {
            Ok(_) => 0,
            Err(e) => {
                eprintln!("xme Guard: {}", xme_core::error_chain(&e));
                1
            }
        })?;
        Ok(GuardProcess {
            child: Some(child),
            manager: manager.clone(),
        })
    }

    /// Runs the Guard in this process until it stops or `stop()` returns
    /// true (checked when the buffer is empty). Unlike [`run`](Self::run), it
    /// leaves `__GUARD__["Status"]` as it is: false stops it at once.
    ///
    /// # Errors
    /// As [`run`](Self::run).
    ///
    /// ```
    /// use std::time::Duration;
    /// use xme_shm::{Call, Guard, ShmError, XmemBuilder};
    /// const WAIT: Duration = Duration::from_secs(5);
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let xmem = XmemBuilder::new().build()?;
    /// xmem.append(&Call::table_set("k", &1u8)?, xmem.alloc_operator())?;
    /// let report = Guard::new().run_until(&xmem, || xmem.buffer_len() == 0)?;
    /// assert_eq!(report.executed, 1);
    /// # Ok(())
    /// # }
    /// ```
    pub fn run_until(
        &self,
        manager: &Manager,
        mut stop: impl FnMut() -> bool,
    ) -> Result<GuardReport, ShmError> {
        manager
            .buffer
            .register_guard()
            .map_err(|pid| ShmError::GuardRunning { pid })?;
        let result = self.serve_loop(manager, &mut stop);
        manager.buffer.unregister_guard();
        result
    }

    fn serve_loop(
        &self,
        m: &Manager,
        stop: &mut dyn FnMut() -> bool,
    ) -> Result<GuardReport, ShmError> {
        let mut report = GuardReport {
            executed: 0,
            failed: 0,
            recovered: m.recover(),
            stopped: StopReason::ExitTime,
        };
        if let Some(script) = &self.script {
            let (script, m) = (script.clone(), m.clone());
            std::thread::spawn(move || script(&m));
        }
        let mut last_call = Instant::now();
        let mut last_verbose = Instant::now();
        loop {
            if !self.verbose_time.is_zero() && last_verbose.elapsed() >= self.verbose_time {
                last_verbose = Instant::now();
                self.log_status(m, &report, last_call.elapsed());
            }
            match m.exec()? {
                Executed::Ran {
                    failed,
                    touched_guard,
                    ..
                } => {
                    report.executed += 1;
                    report.failed += u64::from(failed);
                    last_call = Instant::now();
                    if touched_guard && !m.guard_status()? {
                        report.stopped = StopReason::StatusFalse;
                        return Ok(report);
                    }
                }
                Executed::Busy => {
                    m.buffer.wait(
                        Event::Work,
                        self.loop_time.max(Duration::from_micros(50)),
                        || m.buffer.head_ready(),
                    );
                }
                Executed::Empty => {
                    if self.idle_spin(m) {
                        continue;
                    }
                    // Each stop condition is re-checked against the buffer
                    // *after* it was seen: a call appended between our empty
                    // check and the condition (say, a task's last call before
                    // it ended) is visible now, and runs before we stop.
                    if !m.guard_status()? {
                        if m.buffer.has_work() {
                            continue;
                        }
                        report.stopped = StopReason::StatusFalse;
                        return Ok(report);
                    }
                    if stop() {
                        if m.buffer.has_work() {
                            continue;
                        }
                        report.stopped = StopReason::RunEnded;
                        return Ok(report);
                    }
                    let idle = last_call.elapsed();
                    if idle >= self.exit_time {
                        report.stopped = StopReason::ExitTime;
                        return Ok(report);
                    }
                    let mut wait = self.emp_loop_time.min(self.exit_time - idle);
                    if !self.verbose_time.is_zero() {
                        wait = wait.min(self.verbose_time);
                    }
                    m.buffer
                        .wait(Event::Work, wait.max(Duration::from_micros(1)), || {
                            m.buffer.has_work()
                        });
                    // Woken with nothing to do (the wait ran out): an idle
                    // Guard says it lives, for tools (`xme top`). Never on
                    // a call's path: a call that woke us skips it.
                    if !m.buffer.has_work() {
                        m.buffer.guard_beat();
                    }
                }
            }
        }
    }

    /// Watches an empty buffer briefly; true if work arrived.
    fn idle_spin(&self, m: &Manager) -> bool {
        let started = Instant::now();
        while started.elapsed() < IDLE_SPIN {
            if m.buffer.has_work() {
                return true;
            }
            std::thread::yield_now();
        }
        false
    }

    fn log_status(&self, m: &Manager, report: &GuardReport, idle: Duration) {
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let heartbeat = m
            .statuses()
            .ok()
            .and_then(|t| t.values().map(|s| s.time_ms).max())
            .map_or("none".to_string(), |t| {
                format!("{:?} ago", Duration::from_millis(now_ms.saturating_sub(t)))
            });
        let line = format!(
            "Guard: {} calls pending, {} run ({} failed), idle {:?}, last heartbeat {}",
            m.buffer_len(),
            report.executed,
            report.failed,
            idle,
            heartbeat
        );
        let logger = self.logger.clone().unwrap_or_default();
        let _ = logger.print(line);
    }
}

/// A Guard running in a forked process ([`Guard::spawn`]). Dropping it stops
/// the Guard as [`stop`](Self::stop) would, waiting up to a second.
#[derive(Debug)]
#[must_use = "dropping a GuardProcess stops the Guard"]
pub struct GuardProcess {
    child: Option<Child>,
    manager: Manager,
}

impl GuardProcess {
    /// The Guard's pid.
    ///
    /// ```
    /// use std::time::Duration;
    /// use xme_shm::{Call, Guard, ShmError, XmemBuilder};
    /// const WAIT: Duration = Duration::from_secs(5);
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let xmem = XmemBuilder::new().build()?;
    /// let guard = Guard::new().spawn(&xmem)?;
    /// assert_ne!(guard.pid() as u32, std::process::id());
    /// guard.stop(WAIT)?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn pid(&self) -> i32 {
        self.child.as_ref().map_or(0, Child::pid)
    }

    /// Asks the Guard to stop once the buffer is empty (sets
    /// `__GUARD__["Status"]` to false) and waits for it; past `max_wait` it
    /// is killed. Returns whether it ended by itself.
    ///
    /// # Errors
    /// [`ShmError::Region`] if it could not be waited for.
    ///
    /// ```
    /// use std::time::Duration;
    /// use xme_shm::{Call, Guard, ShmError, XmemBuilder};
    /// const WAIT: Duration = Duration::from_secs(5);
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let xmem = XmemBuilder::new().build()?;
    /// let guard = Guard::new().spawn(&xmem)?;
    /// assert!(guard.stop(WAIT)?); // ended by itself
    /// # Ok(())
    /// # }
    /// ```
    pub fn stop(mut self, max_wait: Duration) -> Result<bool, ShmError> {
        self.stop_mut(max_wait)
    }

    fn stop_mut(&mut self, max_wait: Duration) -> Result<bool, ShmError> {
        let Some(mut child) = self.child.take() else {
            return Ok(true);
        };
        self.manager.set_guard_status(false)?;
        self.manager.buffer.signal_all(Event::Work);
        let deadline = Instant::now() + max_wait;
        loop {
            if let Some(fate) = child.try_wait()? {
                return Ok(fate.is_success());
            }
            if Instant::now() >= deadline {
                child.kill_mut()?;
                return Ok(false);
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Kills the Guard with SIGKILL and reaps it (for tests of recovery).
    ///
    /// # Errors
    /// [`ShmError::Region`] if it could not be killed or reaped.
    ///
    /// ```
    /// use std::time::Duration;
    /// use xme_shm::{Call, Guard, ShmError, XmemBuilder};
    /// const WAIT: Duration = Duration::from_secs(5);
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let xmem = XmemBuilder::new().build()?;
    /// Guard::new().spawn(&xmem)?.kill()?; // a new Guard may start at once
    /// Guard::new().spawn(&xmem)?.stop(WAIT)?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn kill(mut self) -> Result<(), ShmError> {
        if let Some(child) = self.child.take() {
            child.kill()?;
        }
        Ok(())
    }
}

impl Drop for GuardProcess {
    fn drop(&mut self) {
        let _ = self.stop_mut(Duration::from_secs(1));
    }
}
