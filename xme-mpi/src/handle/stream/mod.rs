//! Streams: a unit over inputs of any length, pulled lazily, results as
//! an iterator (and a `futures_core::Stream`), in input order or as calls
//! finish (see [`MpiHandle::stream`]).

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::MpiHandle;
use super::map::FRAMES_PER_PROCESS;
use crate::MpiError;
use crate::unit::Unit;
use engine::{Chunk, Engine, Indexed, NotYet, Wait};

mod engine;
mod wake;

impl<'r> MpiHandle<'r> {
    /// Runs `unit` on each of `inputs` (any `IntoIterator`, of any length)
    /// over the logical processes, as a stream of results (beyond the seed;
    /// mpi4py.futures' `map`, with `unordered=True` too).
    ///
    /// The builder sets `.window(n)` (calls pulled from `inputs` and not yet
    /// yielded, at most; never exceeded, not even inside `next`; by default
    /// enough to keep every process busy: five frames of `chunk` calls per
    /// live process, four in flight and one being handed out) and `.chunk(n)` (calls per frame; by default grown
    /// from 1 towards frames of about a millisecond, at most 512), then
    /// `.ordered()` (results in input order) or `.unordered()` (results as
    /// calls finish, each with its input's index).
    ///
    /// Calls travel in batch frames as in [`map`](Self::map), several in
    /// flight to every live process. Inputs are pulled lazily, on the
    /// caller's thread, only as room frees: an input of 10^7 items is never
    /// held whole. Each call's result is its own: a unit that panics, a
    /// process that dies or runs past [`Mpi::call_timeout`](crate::Mpi::call_timeout)
    /// fails the calls it took (as [`MpiError`]s in the stream), and the
    /// stream goes on with the other processes. Dropping a stream early
    /// pulls nothing more, sends nothing more, and returns at once: calls
    /// already sent run to their end and their results are discarded; other
    /// calls on the handle are not disturbed.
    ///
    /// Both results are also `futures_core::Stream`s, for async code: a
    /// poll never blocks (a channel has no waker, so a stream with nothing
    /// ready asks to be polled again after 50 µs to 1 ms).
    ///
    /// ```
    /// use xme_mpi::Mpi;
    ///
    /// # fn main() -> Result<(), xme_mpi::MpiError> {
    /// let mut mpi = Mpi::new(3)?;
    /// let square = mpi.register("square", |x: u64| x * x);
    /// mpi.run(|m| -> Result<(), xme_mpi::MpiError> {
    ///     // In order, over an input never held in memory.
    ///     let total: u64 = m.stream(&square, 0..100_000u64).ordered().map(|r| r.unwrap()).sum();
    ///     assert_eq!(total, (0..100_000u64).map(|x| x * x).sum());
    ///     // As calls finish, each with its input's index; at most 8 pulled ahead.
    ///     for (i, r) in m.stream(&square, vec![3, 4, 5]).window(8).chunk(1).unordered() {
    ///         assert_eq!(r?, [9, 16, 25][i]);
    ///     }
    ///     Ok(())
    /// })??;
    /// # Ok(())
    /// # }
    /// ```
    pub fn stream<'h, A, R, I>(
        &'h self,
        unit: &Unit<A, R>,
        inputs: I,
    ) -> StreamBuilder<'h, 'r, I::IntoIter, R>
    where
        I: IntoIterator<Item = A>,
        A: Serialize,
        R: DeserializeOwned,
    {
        StreamBuilder {
            handle: self,
            unit: *unit,
            inputs: inputs.into_iter(),
            window: None,
            chunk: None,
        }
    }
}

/// A stream being set up: see [`MpiHandle::stream`].
#[must_use = "a stream does nothing until .ordered() or .unordered() is iterated"]
pub struct StreamBuilder<'h, 'r, I: Iterator, R> {
    handle: &'h MpiHandle<'r>,
    unit: Unit<I::Item, R>,
    inputs: I,
    window: Option<usize>,
    chunk: Option<usize>,
}

impl<I: Iterator, R> std::fmt::Debug for StreamBuilder<'_, '_, I, R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamBuilder")
            .field("unit", &self.unit.name)
            .field("window", &self.window)
            .field("chunk", &self.chunk)
            .finish_non_exhaustive()
    }
}

impl<'h, 'r, I, R> StreamBuilder<'h, 'r, I, R>
where
    I: Iterator,
    I::Item: Serialize,
    R: DeserializeOwned,
{
    /// At most `n` calls (at least 1) pulled from the inputs and not yet
    /// yielded, results waiting their turn included.
    ///
    /// ```
    /// # let mut mpi = xme_mpi::Mpi::new(2).unwrap();
    /// # let id = mpi.register("id", |x: u32| x);
    /// # mpi.run(|m| {
    /// let pulled = std::cell::Cell::new(0);
    /// let inputs = (0..100u32).inspect(|_| pulled.set(pulled.get() + 1));
    /// let mut results = m.stream(&id, inputs).window(4).ordered();
    /// assert_eq!(results.next().unwrap().unwrap(), 0);
    /// assert!(pulled.get() <= 4);
    /// # }).unwrap();
    /// ```
    pub fn window(mut self, n: usize) -> Self {
        self.window = Some(n.max(1));
        self
    }

    /// `n` calls (at least 1) to a frame, instead of the automatic size.
    ///
    /// ```
    /// # let mut mpi = xme_mpi::Mpi::new(2).unwrap();
    /// # let id = mpi.register("id", |x: u32| x);
    /// # mpi.run(|m| {
    /// let all: Vec<u32> = m.stream(&id, 0..1000u32).chunk(100).ordered().map(Result::unwrap).collect();
    /// assert_eq!(all.len(), 1000);
    /// # }).unwrap();
    /// ```
    pub fn chunk(mut self, n: usize) -> Self {
        self.chunk = Some(n.max(1));
        self
    }

    /// Results in input order.
    ///
    /// ```
    /// # let mut mpi = xme_mpi::Mpi::new(3).unwrap();
    /// # let id = mpi.register("id", |x: u32| x);
    /// # mpi.run(|m| {
    /// let got: Vec<u32> = m.stream(&id, 0..50u32).ordered().collect::<Result<_, _>>().unwrap();
    /// assert_eq!(got, (0..50).collect::<Vec<_>>());
    /// # }).unwrap();
    /// ```
    pub fn ordered(self) -> Ordered<'h, 'r, I, R> {
        Ordered {
            engine: self.engine(true),
            pause: wake::FIRST_PAUSE,
        }
    }

    /// Results as calls finish, each with its input's index.
    ///
    /// ```
    /// # let mut mpi = xme_mpi::Mpi::new(3).unwrap();
    /// # let id = mpi.register("id", |x: u32| x);
    /// # mpi.run(|m| {
    /// let mut got: Vec<(usize, u32)> = m
    ///     .stream(&id, 0..50u32)
    ///     .unordered()
    ///     .map(|(i, r)| (i, r.unwrap()))
    ///     .collect();
    /// got.sort();
    /// assert!(got.iter().enumerate().all(|(k, &(i, x))| k == i && x == i as u32));
    /// # }).unwrap();
    /// ```
    pub fn unordered(self) -> Unordered<'h, 'r, I, R> {
        Unordered {
            engine: self.engine(false),
            pause: wake::FIRST_PAUSE,
        }
    }

    fn engine(self, ordered: bool) -> Engine<'h, 'r, I, R> {
        let chunk = self.chunk.map_or_else(Chunk::auto, Chunk::Fixed);
        let live = self
            .handle
            .links
            .iter()
            .filter(|l| l.ended.get().is_none())
            .count()
            .max(1);
        // Frames in flight to every process, and one more landed while its
        // results are handed out: the processes never wait for the caller.
        let window = self
            .window
            .unwrap_or((FRAMES_PER_PROCESS + 1) * live * chunk.max());
        Engine::new(self.handle, self.unit, self.inputs, window, chunk, ordered)
    }
}

/// Results of a stream in input order: an iterator, and a
/// `futures_core::Stream` (see [`MpiHandle::stream`]).
pub struct Ordered<'h, 'r, I: Iterator, R> {
    engine: Engine<'h, 'r, I, R>,
    /// Before the next poll when nothing was ready (async).
    pause: Duration,
}

/// Results of a stream as calls finish, with their inputs' indexes: an
/// iterator, and a `futures_core::Stream` (see [`MpiHandle::stream`]).
pub struct Unordered<'h, 'r, I: Iterator, R> {
    engine: Engine<'h, 'r, I, R>,
    pause: Duration,
}

macro_rules! stream_results {
    ($name:ident, $item:ty, $from:expr) => {
        impl<I: Iterator, R> std::fmt::Debug for $name<'_, '_, I, R> {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.debug_struct(stringify!($name)).finish_non_exhaustive()
            }
        }

        impl<I, R> Iterator for $name<'_, '_, I, R>
        where
            I: Iterator,
            I::Item: Serialize,
            R: DeserializeOwned,
        {
            type Item = $item;

            fn next(&mut self) -> Option<$item> {
                let out = self.engine.step(Wait::Block).ok().flatten()?;
                Some($from(out))
            }
        }

        // Nothing is pinned in place: the engine moves freely.
        impl<I: Iterator, R> Unpin for $name<'_, '_, I, R> {}

        impl<I, R> futures_core::Stream for $name<'_, '_, I, R>
        where
            I: Iterator,
            I::Item: Serialize,
            R: DeserializeOwned,
        {
            type Item = $item;

            fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<$item>> {
                let this = self.get_mut();
                match this.engine.step(Wait::No) {
                    Ok(out) => {
                        this.pause = wake::FIRST_PAUSE;
                        Poll::Ready(out.map($from))
                    }
                    Err(NotYet) => {
                        wake::wake_after(cx.waker(), this.pause);
                        this.pause = (this.pause * 2).min(wake::LONGEST_PAUSE);
                        Poll::Pending
                    }
                }
            }
        }
    };
}

stream_results!(Ordered, Result<R, MpiError>, |(_, r): Indexed<R>| r
    .map_err(|e| *e));
stream_results!(
    Unordered,
    (usize, Result<R, MpiError>),
    |(i, r): Indexed<R>| (i, r.map_err(|e| *e))
);
