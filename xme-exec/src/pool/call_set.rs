//! [`CallSet`]: many calls, taken back as each one finishes.

use std::collections::{HashMap, VecDeque};
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::Pool;
use super::engine::{Block, CancelReason, Sink, Task};
use super::feed;
use crate::{TaskError, TaskFailure};

/// A set of calls on a [`Pool`] whose results come back as each call
/// finishes (tokio's `JoinSet`, Python's `as_completed`). Each call gets an
/// index, in the order of [`spawn`](Self::spawn); results come with it.
///
/// ```
/// use xme_exec::Pool;
///
/// fn sleepy(ms: u64) -> u64 {
///     std::thread::sleep(std::time::Duration::from_millis(ms));
///     ms
/// }
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let pool = Pool::new(2)?;
/// let mut set = pool.call_set();
/// let slow = set.spawn(sleepy, 200);
/// let fast = set.spawn(sleepy, 1);
/// let (first, result) = set.join_next().expect("two calls");
/// assert_eq!((first, result?), (fast, 1));
/// let (second, result) = set.join_next().expect("one call");
/// assert_eq!((second, result?), (slow, 200));
/// assert!(set.join_next().is_none());
/// # Ok(())
/// # }
/// ```
///
/// Also a [`futures_core::Stream`] of `(index, result)`. Dropping the set
/// cancels its calls that have not finished.
pub struct CallSet<R> {
    pool: Pool,
    sink: Arc<Sink>,
    next: usize,
    /// Calls without a result yet, with their function's name.
    pending: HashMap<usize, &'static str>,
    inbox: VecDeque<Block>,
    /// The next item of the inbox's front block.
    at: usize,
    _result: PhantomData<fn() -> R>,
}

impl<R> std::fmt::Debug for CallSet<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CallSet")
            .field("pending", &self.pending.len())
            .finish_non_exhaustive()
    }
}

impl<R: DeserializeOwned> CallSet<R> {
    pub(crate) fn new(pool: Pool) -> CallSet<R> {
        CallSet {
            pool,
            sink: Sink::new(),
            next: 0,
            pending: HashMap::new(),
            inbox: VecDeque::new(),
            at: 0,
            _result: PhantomData,
        }
    }

    /// Starts `f(arg)` in the set; returns its index. Never waits for the
    /// call.
    pub fn spawn<F, A>(&mut self, f: F, arg: A) -> usize
    where
        F: Fn(A) -> R + Copy + 'static,
        A: Serialize + DeserializeOwned,
        R: Serialize,
    {
        let _ = f;
        let index = self.next;
        self.next += 1;
        let function = std::any::type_name::<F>();
        self.pending.insert(index, function);
        let mut args = Vec::new();
        let entry = self
            .pool
            .inner
            .entry_of::<F, A, R>()
            .and_then(|entry| feed::encode_call(&arg, &mut args).map(|()| entry));
        match entry {
            Ok(entry) => self.pool.inner.shared.submit(vec![Task {
                sink: self.sink.clone(),
                entry,
                first: index,
                calls: 1,
                args,
                limit: self.pool.inner.shared.limit,
                requeued: 0,
            }]),
            Err(failure) => {
                let mut block = Block::new(index);
                block
                    .items
                    .push(super::engine::Item::Failed(Box::new(failure)));
                self.inbox.push_back(block);
            }
        }
        index
    }

    /// Calls without a result taken yet.
    pub fn len(&self) -> usize {
        self.pending.len()
    }

    /// No call left to take.
    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    fn take(&mut self) -> Option<(usize, Result<R, TaskError>)> {
        loop {
            let block = self.inbox.front()?;
            if self.at >= block.items.len() {
                self.inbox.pop_front();
                self.at = 0;
                continue;
            }
            let index = block.first + self.at;
            let result = feed::decode::<R>(block, self.at);
            self.at += 1;
            let function = self.pending.remove(&index).unwrap_or("?");
            return Some((
                index,
                result.map_err(|failure| error(index, function, failure)),
            ));
        }
    }

    /// Moves delivered blocks in, waiting until `deadline` for one (`None`:
    /// as long as it takes). Calls of a completed cancellation become
    /// `Cancelled` results; returns whether one completed.
    fn receive(&mut self, deadline: Option<Instant>) -> bool {
        let (blocks, closed) = {
            let mut s = self
                .sink
                .wait_until(deadline, |s| !s.blocks.is_empty() || s.closed);
            (s.blocks.drain(..).collect::<Vec<_>>(), s.closed)
        };
        self.inbox.extend(blocks);
        if closed {
            self.settle_cancelled();
        }
        closed
    }

    /// After a completed cancellation: every call with no result coming is
    /// cancelled; a fresh sink takes later calls.
    fn settle_cancelled(&mut self) {
        let mut delivered = std::collections::HashSet::new();
        for b in &self.inbox {
            delivered.extend(b.first..b.first + b.items.len());
        }
        let mut lost: Vec<usize> = self
            .pending
            .keys()
            .copied()
            .filter(|i| !delivered.contains(i))
            .collect();
        lost.sort_unstable();
        for index in lost {
            let mut block = Block::new(index);
            block.items.push(super::engine::Item::Failed(Box::new(
                TaskFailure::Cancelled,
            )));
            self.inbox.push_back(block);
        }
        self.sink = Sink::new();
    }

    /// Waits for the next call to finish: its index and result; `None` when
    /// the set is empty.
    pub fn join_next(&mut self) -> Option<(usize, Result<R, TaskError>)> {
        loop {
            if let Some(r) = self.take() {
                return Some(r);
            }
            if self.pending.is_empty() {
                return None;
            }
            self.receive(None);
        }
    }

    /// As [`join_next`](Self::join_next), waiting at most `limit`: `None`
    /// when no call finished in time (or the set is empty).
    pub fn join_next_timeout(&mut self, limit: Duration) -> Option<(usize, Result<R, TaskError>)> {
        let deadline = Instant::now().checked_add(limit);
        if let Some(r) = self.take() {
            return Some(r);
        }
        while !self.pending.is_empty() {
            self.receive(deadline);
            if let Some(r) = self.take() {
                return Some(r);
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                break;
            }
        }
        None
    }

    /// The next finished call, without waiting.
    pub fn try_join_next(&mut self) -> Option<(usize, Result<R, TaskError>)> {
        if let Some(r) = self.take() {
            return Some(r);
        }
        self.receive(Some(Instant::now()));
        self.take()
    }

    /// The next finished call, as a future.
    pub fn poll_join_next(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<(usize, Result<R, TaskError>)>> {
        loop {
            if let Some(r) = self.take() {
                return Poll::Ready(Some(r));
            }
            if self.pending.is_empty() {
                return Poll::Ready(None);
            }
            let (blocks, closed) = {
                let mut s = self.sink.state();
                if s.blocks.is_empty() && !s.closed {
                    s.waker = Some(cx.waker().clone());
                    return Poll::Pending;
                }
                (s.blocks.drain(..).collect::<Vec<_>>(), s.closed)
            };
            self.inbox.extend(blocks);
            if closed {
                self.settle_cancelled();
            }
        }
    }

    /// Cancels every call of the set that has not finished (queued ones
    /// never run; running ones' workers are killed) and waits until that is
    /// done; their results are then `Cancelled` errors. The set can be used
    /// again afterwards.
    pub fn cancel_all(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        self.pool
            .inner
            .shared
            .cancel(&self.sink, CancelReason::Cancelled);
        while !self.receive(None) {}
    }
}

fn error(call: usize, function: &str, failure: TaskFailure) -> TaskError {
    TaskError {
        call,
        job: 0,
        function: function.to_string(),
        failure,
    }
}

impl<R> Drop for CallSet<R> {
    fn drop(&mut self) {
        if !self.pending.is_empty() {
            self.pool
                .inner
                .shared
                .cancel(&self.sink, CancelReason::Cancelled);
        }
    }
}

impl<R: DeserializeOwned> futures_core::Stream for CallSet<R> {
    type Item = (usize, Result<R, TaskError>);

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.get_mut().poll_join_next(cx)
    }
}
