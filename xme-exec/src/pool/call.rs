//! [`Call`]: the handle of one call made with [`Pool::spawn`].

use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;

use super::Pool;
use super::engine::{Block, CancelReason, Sink};
use super::feed;
use crate::{TaskError, TaskFailure};

/// One call running (or queued) on a [`Pool`]: wait for it, with or without
/// a time limit, await it, or cancel it.
///
/// ```
/// use std::time::Duration;
/// use xme_exec::Pool;
///
/// fn add_one(x: u64) -> u64 { x + 1 }
/// fn forever(_: ()) { loop { std::thread::park() } }
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let pool = Pool::new(2)?;
/// let call = pool.spawn(add_one, 41);
/// assert_eq!(call.join()?, 42);
///
/// // Waiting with a limit kills nothing: the call goes on.
/// let mut slow = pool.spawn(forever, ());
/// assert!(slow.join_timeout(Duration::from_millis(20)).is_none());
/// // Cancelling a running call kills its worker (a new one replaces it).
/// slow.cancel();
/// assert!(slow.join().unwrap_err().is_cancelled());
/// # Ok(())
/// # }
/// ```
///
/// Dropping a `Call` cancels it, unless it was [`detach`](Self::detach)ed.
/// A `Call` is also a [`Future`] (with no runtime of its own: the pool's
/// driver thread wakes it), so it can be awaited under tokio, smol or any
/// executor. A handle holds no file descriptor: 100,000 outstanding calls
/// cost memory only.
#[must_use = "dropping a Call cancels it: join it, await it, or detach it"]
pub struct Call<R> {
    pool: Pool,
    sink: Arc<Sink>,
    function: &'static str,
    taken: bool,
    detached: bool,
    _result: PhantomData<fn() -> R>,
}

impl<R> std::fmt::Debug for Call<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Call")
            .field("function", &self.function)
            .field("finished", &self.is_finished())
            .finish_non_exhaustive()
    }
}

impl<R> Call<R> {
    /// Whether the call has ended (its result can be taken without waiting).
    pub fn is_finished(&self) -> bool {
        let s = self.sink.state();
        !s.blocks.is_empty() || s.closed
    }
}

impl<R: DeserializeOwned> Call<R> {
    pub(crate) fn new(pool: Pool, sink: Arc<Sink>, function: &'static str) -> Call<R> {
        Call {
            pool,
            sink,
            function,
            taken: false,
            detached: false,
            _result: PhantomData,
        }
    }

    fn error(&self, failure: TaskFailure) -> TaskError {
        TaskError {
            call: 0,
            job: 0,
            function: self.function.to_string(),
            failure,
        }
    }

    /// The result if it has come, else `None` (after waiting until
    /// `deadline`, if one is given).
    fn wait(&mut self, deadline: Option<Instant>) -> Option<Result<R, TaskError>> {
        if self.taken {
            return Some(Err(self.error(TaskFailure::Taken)));
        }
        let block: Option<Block> = {
            let mut s = self
                .sink
                .wait_until(deadline, |s| !s.blocks.is_empty() || s.closed);
            match s.blocks.pop_front() {
                Some(b) => Some(b),
                None if s.closed => None,
                None => return None,
            }
        };
        self.taken = true;
        Some(match block {
            Some(b) => feed::decode::<R>(&b, 0).map_err(|f| self.error(f)),
            None => Err(self.error(TaskFailure::Cancelled)),
        })
    }

    /// Waits for the call and returns its result.
    ///
    /// # Errors
    /// A [`TaskError`] saying why the call gave no result: it panicked, its
    /// worker was killed or exited, it ran past the pool's time limit, it was
    /// cancelled ([`TaskError::is_cancelled`]), its result was lost with its
    /// worker, or the pool's zygote died.
    pub fn join(mut self) -> Result<R, TaskError> {
        self.wait(None)
            .unwrap_or_else(|| Err(self.error(TaskFailure::Cancelled)))
    }

    /// Waits at most `limit` for the call: `None` if it is still pending
    /// (waiting kills nothing; the call goes on and can be joined later).
    /// After a result was returned, later calls return
    /// [`TaskFailure::Taken`].
    pub fn join_timeout(&mut self, limit: Duration) -> Option<Result<R, TaskError>> {
        // A limit too far to represent is no limit.
        let deadline = Instant::now().checked_add(limit);
        match deadline {
            Some(d) => self.wait(Some(d)),
            None => self.wait(None),
        }
    }

    /// The result if the call has ended, without waiting.
    pub fn try_join(&mut self) -> Option<Result<R, TaskError>> {
        self.wait(Some(Instant::now()))
    }

    /// Cancels the call: if it is queued, it never runs; if it is running,
    /// its worker is killed and replaced. Its result is then an error for
    /// which [`TaskError::is_cancelled`] is true; a call that had already
    /// finished keeps its result. Returns at once; `join` waits for the
    /// cancellation to complete.
    pub fn cancel(&mut self) {
        if !self.taken {
            self.pool
                .inner
                .shared
                .cancel(&self.sink, CancelReason::Cancelled);
        }
    }

    /// Lets the call run to its end without a handle; its result is
    /// dropped. (If every handle of the pool is dropped before it ends, the
    /// pool's processes end, and the call with them.)
    pub fn detach(mut self) {
        self.detached = true;
    }
}

impl<R> Drop for Call<R> {
    fn drop(&mut self) {
        if self.taken || self.detached {
            return;
        }
        if !self.is_finished() {
            self.pool
                .inner
                .shared
                .cancel(&self.sink, CancelReason::Cancelled);
        }
    }
}

impl<R: DeserializeOwned> Future for Call<R> {
    type Output = Result<R, TaskError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        {
            let mut s = this.sink.state();
            if !this.taken && s.blocks.is_empty() && !s.closed {
                s.waker = Some(cx.waker().clone());
                return Poll::Pending;
            }
        }
        Poll::Ready(
            this.wait(Some(Instant::now()))
                .unwrap_or_else(|| Err(this.error(TaskFailure::Cancelled))),
        )
    }
}
