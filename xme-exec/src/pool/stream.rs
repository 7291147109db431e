//! Streams: one function over a lazy input, results as they come
//! ([`Unordered`]) or in input order ([`Ordered`]), with a bounded window.

use std::collections::BTreeMap;
use std::marker::PhantomData;
use std::pin::Pin;
use std::task::{Context, Poll};

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::Pool;
use super::engine::Block;
use super::feed::{self, Feed, Source};
use crate::{TaskError, TaskFailure};

/// A stream being set up: [`Pool::stream`] makes it; [`window`](Self::window)
/// and [`chunk`](Self::chunk) tune it; [`ordered`](Self::ordered) or
/// [`unordered`](Self::unordered) start it.
///
/// ```
/// use xme_exec::Pool;
///
/// fn slow_square(x: u64) -> u64 { x * x }
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let pool = Pool::new(2)?;
/// // A lazy input: pulled only as the window has room.
/// let squares: Vec<u64> = pool
///     .stream(slow_square, 0..1000u64)
///     .window(64)
///     .ordered()
///     .collect::<Result<_, _>>()?;
/// assert_eq!(squares[999], 999 * 999);
///
/// // As calls finish, with each input's index:
/// let mut seen = vec![false; 100];
/// for (i, r) in pool.stream(slow_square, 0..100u64).unordered() {
///     assert_eq!(r?, (i * i) as u64);
///     seen[i] = true;
/// }
/// assert!(seen.iter().all(|&s| s));
/// # Ok(())
/// # }
/// ```
#[must_use = "a stream does nothing until `ordered()` or `unordered()` is iterated"]
pub struct StreamBuilder<F, I, R> {
    pool: Pool,
    inputs: I,
    window: Option<usize>,
    chunk: Option<usize>,
    max_held: Option<usize>,
    _task: PhantomData<fn() -> (F, R)>,
}

impl<F, I, R> std::fmt::Debug for StreamBuilder<F, I, R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamBuilder")
            .field("window", &self.window)
            .field("chunk", &self.chunk)
            .finish_non_exhaustive()
    }
}

/// The default window: enough calls in flight that every worker stays busy
/// with chunks of the largest automatic size.
pub(crate) fn default_window(pnum: usize) -> usize {
    pnum.saturating_mul(16 * 1024)
}

impl<F, I, A, R> StreamBuilder<F, I, R>
where
    I: Iterator<Item = A>,
    A: Serialize + DeserializeOwned,
    F: Fn(A) -> R + Copy + 'static,
    R: Serialize + DeserializeOwned,
{
    pub(crate) fn new(pool: Pool, inputs: I) -> Self {
        StreamBuilder {
            pool,
            inputs,
            window: None,
            chunk: None,
            max_held: None,
            _task: PhantomData,
        }
    }

    /// At most `n` calls pulled from the input and not yet yielded (default:
    /// 16,384 per worker). Never exceeded, not even inside `next`. A window of
    /// 0 is taken as 1.
    pub fn window(mut self, n: usize) -> Self {
        self.window = Some(n.max(1));
        self
    }

    /// Calls sent to a worker together (default: automatic, from the
    /// measured call time, starting small so the first result comes at
    /// once). Chunks change the wire, not the results: a worker killed in a
    /// chunk fails only the call it was running.
    pub fn chunk(mut self, n: usize) -> Self {
        self.chunk = Some(n.clamp(1, super::claims::MAX_TASK_CALLS));
        self
    }

    /// Stops pulling while results of this many bytes (encoded) wait for
    /// the consumer (default: 64 MiB); results of chunks already sent still
    /// come. The window bounds calls; this bounds memory when results are
    /// large and an ordered stream waits for a slow call.
    pub fn max_buffered_bytes(mut self, bytes: usize) -> Self {
        self.max_held = Some(bytes.max(1));
        self
    }

    fn feed(self) -> Feed<Typed<I, F, R>> {
        let entry = self.pool.inner.entry_of::<F, A, R>();
        let window = self
            .window
            .unwrap_or_else(|| default_window(self.pool.pnum()));
        let source = Typed {
            inputs: self.inputs,
            entry,
            _task: PhantomData,
        };
        let mut feed = Feed::stream(self.pool, source, window, self.chunk);
        if let Some(max) = self.max_held {
            feed.max_held = max;
        }
        feed
    }

    /// The results in input order.
    pub fn ordered(self) -> Ordered<I, F, R> {
        Ordered {
            feed: self.feed(),
            pending: BTreeMap::new(),
        }
    }

    /// The results as calls finish, each with its input's index.
    pub fn unordered(self) -> Unordered<I, F, R> {
        Unordered {
            feed: self.feed(),
            at: 0,
        }
    }
}

/// One function over an input iterator.
pub(crate) struct Typed<I, F, R> {
    inputs: I,
    entry: Result<u64, TaskFailure>,
    _task: PhantomData<fn() -> (F, R)>,
}

impl<I, A, F, R> Source for Typed<I, F, R>
where
    I: Iterator<Item = A>,
    A: Serialize,
{
    fn next_call(&mut self, args: &mut Vec<u8>) -> Option<Result<u64, TaskFailure>> {
        let arg = self.inputs.next()?;
        Some(match &self.entry {
            Ok(entry) => feed::encode_call(&arg, args).map(|()| *entry),
            Err(failure) => Err(failure.clone()),
        })
    }
}

fn task_error<F>(call: usize, failure: TaskFailure) -> TaskError {
    TaskError {
        call,
        job: 0,
        function: std::any::type_name::<F>().to_string(),
        failure,
    }
}

/// A stream's results in input order: `Result<R, TaskError>` per input.
/// Also a [`futures_core::Stream`].
///
/// Dropping it early pulls nothing more from the input, cancels the calls
/// sent and not answered (queued ones never run; running ones' workers are
/// killed and replaced) and returns once that is done.
pub struct Ordered<I, F, R> {
    feed: Feed<Typed<I, F, R>>,
    /// Blocks by their first index.
    pending: BTreeMap<usize, Block>,
}

impl<I, F, R> std::fmt::Debug for Ordered<I, F, R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ordered")
            .field("pulled", &self.feed.pulled)
            .field("yielded", &self.feed.yielded)
            .finish_non_exhaustive()
    }
}

impl<I, A, F, R> Ordered<I, F, R>
where
    I: Iterator<Item = A>,
    A: Serialize,
    R: DeserializeOwned,
{
    fn step(&mut self, cx: Option<&mut Context<'_>>) -> Poll<Option<Result<R, TaskError>>> {
        let pending = &mut self.pending;
        step(&mut self.feed, cx, |feed| {
            take_in_order::<F, R, _>(feed, pending)
        })
    }
}

impl<I, A, F, R> Iterator for Ordered<I, F, R>
where
    I: Iterator<Item = A>,
    A: Serialize,
    R: DeserializeOwned,
{
    type Item = Result<R, TaskError>;

    fn next(&mut self) -> Option<Self::Item> {
        match self.step(None) {
            Poll::Ready(r) => r,
            Poll::Pending => unreachable!("a blocking step never pends"),
        }
    }
}

impl<I, A, F, R> futures_core::Stream for Ordered<I, F, R>
where
    I: Iterator<Item = A> + Unpin,
    A: Serialize,
    R: DeserializeOwned,
{
    type Item = Result<R, TaskError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.get_mut().step(Some(cx))
    }
}

/// A stream's results as calls finish: `(input index, Result<R, TaskError>)`.
/// Also a [`futures_core::Stream`]. Dropping it early behaves as for
/// [`Ordered`].
pub struct Unordered<I, F, R> {
    feed: Feed<Typed<I, F, R>>,
    /// The next item of the feed's front block.
    at: usize,
}

impl<I, F, R> std::fmt::Debug for Unordered<I, F, R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Unordered")
            .field("pulled", &self.feed.pulled)
            .field("yielded", &self.feed.yielded)
            .finish_non_exhaustive()
    }
}

impl<I, A, F, R> Unordered<I, F, R>
where
    I: Iterator<Item = A>,
    A: Serialize,
    R: DeserializeOwned,
{
    fn step(
        &mut self,
        cx: Option<&mut Context<'_>>,
    ) -> Poll<Option<(usize, Result<R, TaskError>)>> {
        let at = &mut self.at;
        step(&mut self.feed, cx, |feed| take_any::<F, R, _>(feed, at))
    }
}

impl<I, A, F, R> Iterator for Unordered<I, F, R>
where
    I: Iterator<Item = A>,
    A: Serialize,
    R: DeserializeOwned,
{
    type Item = (usize, Result<R, TaskError>);

    fn next(&mut self) -> Option<Self::Item> {
        match self.step(None) {
            Poll::Ready(r) => r,
            Poll::Pending => unreachable!("a blocking step never pends"),
        }
    }
}

impl<I, A, F, R> futures_core::Stream for Unordered<I, F, R>
where
    I: Iterator<Item = A> + Unpin,
    A: Serialize,
    R: DeserializeOwned,
{
    type Item = (usize, Result<R, TaskError>);

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.get_mut().step(Some(cx))
    }
}

/// The next result in input order, if it has come.
fn take_in_order<F, R: DeserializeOwned, S>(
    feed: &mut Feed<S>,
    pending: &mut BTreeMap<usize, Block>,
) -> Option<Result<R, TaskError>> {
    for block in feed.inbox.drain(..) {
        pending.insert(block.first, block);
    }
    let next = feed.yielded;
    let (&first, block) = pending.range(..=next).next_back()?;
    let k = next - first;
    if k >= block.items.len() {
        return None;
    }
    let out = feed::decode::<R>(block, k).map_err(|f| task_error::<F>(next, f));
    if k + 1 == block.items.len() {
        let bytes = block.data.len();
        pending.remove(&first);
        feed.taken(bytes);
    }
    feed.yielded += 1;
    Some(out)
}

/// The next result that has come, with its input's index.
fn take_any<F, R: DeserializeOwned, S>(
    feed: &mut Feed<S>,
    at: &mut usize,
) -> Option<(usize, Result<R, TaskError>)> {
    loop {
        let block = feed.inbox.front()?;
        if *at >= block.items.len() {
            let bytes = block.data.len();
            feed.inbox.pop_front();
            feed.taken(bytes);
            *at = 0;
            continue;
        }
        let index = block.first + *at;
        let out = feed::decode::<R>(block, *at).map_err(|f| task_error::<F>(index, f));
        *at += 1;
        feed.yielded += 1;
        return Some((index, out));
    }
}

/// Advances a stream: yields what has come, pulls and sends calls as the
/// window allows, and waits (blocking without `cx`, else registering its
/// waker) when nothing can be yielded yet.
fn step<S: Source, T>(
    feed: &mut Feed<S>,
    mut cx: Option<&mut Context<'_>>,
    mut take: impl FnMut(&mut Feed<S>) -> Option<T>,
) -> Poll<Option<T>> {
    loop {
        // Keep the workers fed while results are handed out, so they never
        // wait for the consumer to empty what has come.
        if feed.has_room() {
            feed.fill();
        }
        if let Some(r) = take(feed) {
            return Poll::Ready(Some(r));
        }
        feed.fill();
        feed.receive(Some(std::time::Instant::now()));
        if let Some(r) = take(feed) {
            return Poll::Ready(Some(r));
        }
        if feed.finished() {
            return Poll::Ready(None);
        }
        feed.send();
        match cx.as_deref_mut() {
            None => {
                feed.receive(None);
            }
            Some(cx) => {
                if feed.poll_receive(cx).is_pending() {
                    return Poll::Pending;
                }
            }
        }
    }
}
