//! The owner side of streams and batches: pull calls from a source as room
//! frees, pack them into chunks, submit them, and take back blocks of
//! results, all on the consumer's thread.
//!
//! Room is the *window*: calls pulled from the source and not yet taken by
//! the consumer, never more than `window`, checked before each pull. Chunks
//! in flight are also bounded (two per worker), so a slow start does not
//! turn the whole window into chunks of one call before the first chunk
//! size is measured.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use serde::Serialize;

use super::chunk::Chunker;
use super::claims::MAX_TASK_CALLS;
use super::engine::{Block, CancelReason, Item, Sink, Task};
use super::{Pool, wire};
use crate::TaskFailure;

/// Arguments of one chunk stop growing at this size.
const CHUNK_BYTES: usize = 1 << 20;
/// A chunk waiting this long for more calls is sent as it is.
const CHUNK_AGE: Duration = Duration::from_millis(1);

/// Where a feed's calls come from.
pub(crate) trait Source {
    /// Appends the next call's arguments (`[len u32][bytes]`) to `args` and
    /// returns its entry (trampoline offset); `Some(Err)` for a call that
    /// cannot be sent (its failure), `None` when there are no more calls.
    fn next_call(&mut self, args: &mut Vec<u8>) -> Option<Result<u64, TaskFailure>>;
}

/// Encodes one call's argument as `[len u32][postcard bytes]`.
pub(crate) fn encode_call<A: Serialize>(arg: &A, args: &mut Vec<u8>) -> Result<(), TaskFailure> {
    let at = args.len();
    args.extend_from_slice(&[0; 4]);
    let failed =
        |why: String| TaskFailure::Encode(format!("its arguments could not be encoded: {why}"));
    match super::entry::encode_into(arg, args) {
        Ok(()) => {
            let len = args.len() - at - 4;
            // A worker refuses frames over its limit; one call must fit one.
            let limit = wire::MAX_FRAME - 64;
            if len > limit {
                args.truncate(at);
                return Err(failed(format!(
                    "{len} bytes, over the {limit} bytes a call may carry"
                )));
            }
            args[at..at + 4].copy_from_slice(&(len as u32).to_le_bytes());
            Ok(())
        }
        Err(e) => {
            args.truncate(at);
            Err(failed(xme_core::CodecError::encoding(e, arg).to_string()))
        }
    }
}

pub(crate) struct Feed<S> {
    pool: Pool,
    sink: Arc<Sink>,
    source: S,
    exhausted: bool,
    window: usize,
    /// Calls taken from the source.
    pub pulled: usize,
    /// Calls whose results the consumer took.
    pub yielded: usize,
    chunker: Chunker,
    limit: Option<Duration>,
    // The chunk being built.
    args: Vec<u8>,
    entry: Option<u64>,
    first: usize,
    calls: u32,
    began: Option<Instant>,
    /// Chunks in flight: first call → calls without a result yet.
    chunks: BTreeMap<usize, usize>,
    max_chunks: usize,
    /// Blocks received (or failures decided here), not yet consumed.
    pub inbox: VecDeque<Block>,
    /// Chunks made by one `fill`, submitted together.
    outgoing: Vec<Task>,
    /// Result bytes received and not yet taken by the consumer.
    held: usize,
    /// Nothing more is pulled while `held` is at least this.
    pub max_held: usize,
}

/// Result bytes a stream holds for its consumer before it stops pulling
/// (results of chunks already sent still come).
pub(crate) const DEFAULT_MAX_HELD: usize = 64 << 20;

impl<S: Source> Feed<S> {
    /// A stream's feed: chunks start at one call (so the first result comes
    /// at once) and grow as call times are measured; at most two chunks per
    /// worker in flight.
    pub fn stream(pool: Pool, source: S, window: usize, chunk: Option<usize>) -> Feed<S> {
        let pnum = pool.pnum();
        let window = window.max(1);
        let max_chunk = (window / (2 * pnum)).clamp(1, MAX_TASK_CALLS);
        let chunker = Chunker::new(chunk, max_chunk, None);
        Feed::new(pool, source, window, chunker, 2 * pnum)
    }

    /// A batch's feed (`calls` known up front, all wanted before any is
    /// used): every chunk is sent at once, sized from the pool's measured
    /// call time when there is one (two chunks per worker at most), else one
    /// call each, so idle workers can take back what waits behind a slow
    /// call.
    pub fn batch(pool: Pool, source: S, calls: usize) -> Feed<S> {
        let pnum = pool.pnum();
        let max_chunk = calls.div_ceil(2 * pnum).clamp(1, MAX_TASK_CALLS);
        let chunker = Chunker::new(None, max_chunk, pool.inner.measured_call_ns());
        Feed::new(pool, source, calls.max(1), chunker, usize::MAX)
    }

    fn new(pool: Pool, source: S, window: usize, chunker: Chunker, max_chunks: usize) -> Feed<S> {
        let limit = pool.inner.shared.limit;
        Feed {
            pool,
            sink: Sink::new(),
            source,
            exhausted: false,
            window,
            pulled: 0,
            yielded: 0,
            chunker,
            limit,
            args: Vec::new(),
            entry: None,
            first: 0,
            calls: 0,
            began: None,
            chunks: BTreeMap::new(),
            max_chunks,
            inbox: VecDeque::new(),
            outgoing: Vec::new(),
            held: 0,
            max_held: DEFAULT_MAX_HELD,
        }
    }

    /// Every call was pulled, and the consumer took every result.
    pub fn finished(&self) -> bool {
        self.exhausted && self.yielded == self.pulled
    }

    /// Whether [`fill`](Self::fill) would pull anything now.
    #[inline]
    pub fn has_room(&self) -> bool {
        !self.exhausted
            && self.pulled - self.yielded < self.window
            && self.chunks.len() < self.max_chunks
            && self.held < self.max_held
    }

    /// Pulls calls while the window and the chunks in flight allow.
    pub fn fill(&mut self) {
        while self.has_room() {
            let before = self.args.len();
            match self.source.next_call(&mut self.args) {
                None => self.exhausted = true,
                Some(Ok(entry)) => {
                    if self.entry.is_some_and(|e| e != entry) {
                        // Another function: the call starts a chunk of its own.
                        let call = self.args.split_off(before);
                        self.seal();
                        self.args = call;
                    }
                    if self.calls == 0 {
                        self.first = self.pulled;
                        self.entry = Some(entry);
                        self.began = Some(Instant::now());
                    }
                    self.calls += 1;
                    self.pulled += 1;
                    if self.calls as usize >= self.chunker.size() || self.args.len() >= CHUNK_BYTES
                    {
                        self.seal();
                    }
                }
                Some(Err(failure)) => {
                    self.args.truncate(before);
                    self.seal();
                    let mut block = Block::new(self.pulled);
                    block.items.push(Item::Failed(Box::new(failure)));
                    self.inbox.push_back(block);
                    self.pulled += 1;
                }
            }
        }
        // The clock is read once every 64 calls pulled.
        if self.calls > 0
            && (self.exhausted
                || self.pulled - self.yielded >= self.window
                || (self.pulled.is_multiple_of(64)
                    && self.began.is_some_and(|t| t.elapsed() >= CHUNK_AGE)))
        {
            self.seal();
        }
        self.submit();
    }

    /// Submits the chunk being built, and any made before it.
    pub fn send(&mut self) {
        self.seal();
        self.submit();
    }

    fn submit(&mut self) {
        if !self.outgoing.is_empty() {
            self.pool
                .inner
                .shared
                .submit(std::mem::take(&mut self.outgoing));
        }
    }

    /// Closes the chunk being built (submitted with the next `submit`).
    fn seal(&mut self) {
        if self.calls == 0 {
            return;
        }
        let task = Task {
            sink: self.sink.clone(),
            entry: self.entry.take().expect("a chunk has an entry"),
            first: self.first,
            calls: self.calls,
            args: std::mem::take(&mut self.args),
            limit: self.limit,
            requeued: 0,
        };
        self.chunks.insert(self.first, self.calls as usize);
        self.calls = 0;
        self.began = None;
        self.outgoing.push(task);
    }

    /// Takes delivered blocks into the inbox, waiting for one until
    /// `deadline` (`None`: as long as it takes). Returns whether any came.
    pub fn receive(&mut self, deadline: Option<Instant>) -> bool {
        let blocks: Vec<Block> = {
            let mut s = self
                .sink
                .wait_until(deadline, |s| !s.blocks.is_empty() || s.closed);
            s.blocks.drain(..).collect()
        };
        self.absorb(blocks)
    }

    /// As [`receive`](Self::receive) for async consumers: registers the
    /// waker when nothing is there.
    pub fn poll_receive(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let blocks: Vec<Block> = {
            let mut s = self.sink.state();
            if s.blocks.is_empty() {
                s.waker = Some(cx.waker().clone());
                return Poll::Pending;
            }
            s.blocks.drain(..).collect()
        };
        self.absorb(blocks);
        Poll::Ready(())
    }

    fn absorb(&mut self, blocks: Vec<Block>) -> bool {
        let any = !blocks.is_empty();
        for block in blocks {
            let n = block.items.len();
            if block.elapsed_ns > 0 {
                self.chunker.observe(n, block.elapsed_ns);
            }
            self.held += block.data.len();
            if let Some((&first, left)) = self.chunks.range_mut(..=block.first).next_back() {
                *left = left.saturating_sub(n);
                if *left == 0 {
                    self.chunks.remove(&first);
                }
            }
            self.inbox.push_back(block);
        }
        any
    }

    /// Cancels what was sent and not answered, and waits (boundedly) until
    /// the driver has settled it: queued calls never run, running ones'
    /// workers are killed.
    pub fn cancel(&mut self, reason: CancelReason, patience: Duration) {
        self.calls = 0;
        self.args.clear();
        self.exhausted = true;
        if self.chunks.is_empty() {
            return;
        }
        self.pool.inner.shared.cancel(&self.sink, reason);
        let deadline = Instant::now().checked_add(patience);
        let blocks: Vec<Block> = {
            let mut s = self.sink.wait_until(deadline, |s| s.closed);
            s.blocks.drain(..).collect()
        };
        self.absorb(blocks);
        self.chunks.clear();
    }
}

impl<S> Feed<S> {
    /// The consumer took a whole block of `bytes` result bytes.
    pub fn taken(&mut self, bytes: usize) {
        self.held = self.held.saturating_sub(bytes);
    }
}

impl<S> Drop for Feed<S> {
    fn drop(&mut self) {
        if !self.chunks.is_empty() {
            // Dropped early: nothing more is pulled, and what is queued or
            // running is cancelled before the drop returns.
            self.pool
                .inner
                .shared
                .cancel(&self.sink, CancelReason::Cancelled);
            let deadline = Instant::now().checked_add(Duration::from_secs(5));
            drop(self.sink.wait_until(deadline, |s| s.closed));
        }
    }
}

/// A call's bytes delivered by the driver turned into the caller's type.
pub(crate) fn decode<R: serde::de::DeserializeOwned>(
    block: &Block,
    k: usize,
) -> Result<R, TaskFailure> {
    raw(block, k).and_then(|bytes| {
        postcard::from_bytes(bytes)
            .map_err(|e| TaskFailure::Decode(xme_core::CodecError::decoding(e).to_string()))
    })
}

/// A call's result bytes, or why it has none.
pub(crate) fn raw(block: &Block, k: usize) -> Result<&[u8], TaskFailure> {
    use super::entry::{DECODE, ENCODE, OK, PANICKED, TOO_LARGE};
    match &block.items[k] {
        Item::Failed(f) => Err((**f).clone()),
        Item::Done { status, .. } => {
            let bytes = block.bytes(k);
            let text = || String::from_utf8_lossy(bytes).into_owned();
            match *status {
                OK => Ok(bytes),
                PANICKED => Err(TaskFailure::Panicked(super::entry::panic_report(bytes))),
                ENCODE | TOO_LARGE => Err(TaskFailure::Encode(text())),
                DECODE => Err(TaskFailure::Decode(format!(
                    "the worker could not decode the call's arguments: {}",
                    text()
                ))),
                other => Err(TaskFailure::Decode(format!("result status {other}"))),
            }
        }
    }
}

/// Keeps the wire's frame limit visible where chunks are sized.
const _: () = assert!(CHUNK_BYTES < wire::MAX_FRAME);
