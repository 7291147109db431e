//! The engine of a stream: pulls inputs as room frees, sends them in batch
//! frames (as `map` does), lands the replies, and keeps each call's result
//! until it is yielded, in input order or as calls finish.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::super::map::{BATCH_CALLS, FRAMES_PER_PROCESS, decode_batch_each};
use super::super::send::{BatchArgs, unit_request};
use super::super::{MpiHandle, To};
use crate::MpiError;
use crate::call_frame::{KIND_BATCH, Request};
use crate::link::{Ended, LIVENESS};
use crate::slots::Slot;
use crate::unit::Unit;

/// How long a frame of calls should take, for the automatic chunk: long
/// enough that a frame's own cost (a few µs) does not count, short enough
/// that slow calls still spread over every process.
const FRAME_TARGET: Duration = Duration::from_millis(1);
/// Longest wait on one process's replies before looking at every frame
/// again (another process may answer first).
const ANY_WAIT: Duration = Duration::from_millis(1);

/// How many calls go in a frame.
#[derive(Debug, Clone, Copy)]
pub(super) enum Chunk {
    /// Always this many.
    Fixed(usize),
    /// Grown from 1 (eightfold per landed frame at most) towards what makes
    /// a frame take [`FRAME_TARGET`], from the time frames took.
    Auto { next: usize, per_call_ns: f64 },
}

impl Chunk {
    pub(super) fn auto() -> Chunk {
        Chunk::Auto {
            next: 1,
            per_call_ns: 0.0,
        }
    }

    /// The most calls a frame may get.
    pub(super) fn max(&self) -> usize {
        match *self {
            Chunk::Fixed(n) => n,
            Chunk::Auto { .. } => BATCH_CALLS,
        }
    }

    fn next(&self) -> usize {
        match *self {
            Chunk::Fixed(n) => n,
            Chunk::Auto { next, .. } => next,
        }
    }

    /// A frame of `calls` kept its process busy for `busy`.
    fn observe(&mut self, calls: usize, busy: Duration) {
        if let Chunk::Auto { next, per_call_ns } = self {
            let sample = busy.as_nanos() as f64 / calls.max(1) as f64;
            *per_call_ns = if *per_call_ns == 0.0 {
                sample
            } else {
                0.75 * *per_call_ns + 0.25 * sample
            };
            let fits = (FRAME_TARGET.as_nanos() as f64 / per_call_ns.max(1.0)) as usize;
            *next = fits.clamp(1, (*next * 8).min(BATCH_CALLS));
        }
    }
}

/// Results waiting to be yielded.
enum Landed<R> {
    /// In input order: `[i]` is call `yielded + i`'s, once it landed.
    Ordered(VecDeque<Option<Kept<R>>>),
    /// As they landed, with their input's index.
    Unordered(VecDeque<Indexed<R>>),
}

impl<R> Landed<R> {
    /// A result for call `index` (`yielded` results were yielded so far).
    fn keep(&mut self, yielded: usize, index: usize, result: Kept<R>) {
        match self {
            Landed::Ordered(waiting) => {
                let at = index - yielded;
                if at == waiting.len() {
                    waiting.push_back(Some(result)); // in order: the usual case
                } else {
                    if waiting.len() < at {
                        waiting.resize_with(at, || None);
                    }
                    match waiting.get_mut(at) {
                        Some(place) => *place = Some(result),
                        None => waiting.push_back(Some(result)),
                    }
                }
            }
            Landed::Unordered(done) => done.push_back((index, result)),
        }
    }

    /// How many results wait (a mark to go back to).
    fn mark(&self) -> usize {
        match self {
            Landed::Ordered(waiting) => waiting.len(),
            Landed::Unordered(done) => done.len(),
        }
    }

    /// Forgets what was kept since `mark`: the calls of one frame whose
    /// reply turned out malformed (their errors are kept instead).
    fn back_to(&mut self, mark: usize) {
        match self {
            // Ordered places are overwritten by the errors.
            Landed::Ordered(_) => {}
            Landed::Unordered(done) => done.truncate(mark),
        }
    }
}

/// A frame sent and not yet landed.
struct Flight<'h, A> {
    first: usize,
    args: Vec<A>,
    slot: Slot<'h, ()>,
    sent: Instant,
}

/// A call's result as kept until yielded: the error boxed, so that a result
/// moves as a few words (an `MpiError` is about a hundred bytes).
pub(super) type Kept<R> = Result<R, Box<MpiError>>;

/// A call's result with its input's index.
pub(super) type Indexed<R> = (usize, Kept<R>);

/// [`Engine::step`] found no result ready and may not wait.
#[derive(Debug)]
pub(super) struct NotYet;

/// What the next call of [`Engine::step`] may do.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Wait {
    /// Block until a result is ready (the iterators).
    Block,
    /// Never block (a `Stream` polled by an executor).
    No,
}

pub(super) struct Engine<'h, 'r, I: Iterator, R> {
    handle: &'h MpiHandle<'r>,
    unit: Unit<I::Item, R>,
    /// `None` once it returned `None` (or the stream was built empty).
    input: Option<I>,
    window: usize,
    chunk: Chunk,
    /// Inputs pulled so far: the next input's index.
    pulled: usize,
    /// Results yielded so far.
    yielded: usize,
    flights: VecDeque<Flight<'h, I::Item>>,
    /// Calls pulled and not in flight: a frame's rest that did not fit its
    /// reply, a frame split for size, a frame that found no free slot.
    unsent: VecDeque<(usize, Vec<I::Item>)>,
    landed: Landed<R>,
    /// When each process (by id) last landed a frame: a frame's busy time
    /// starts at the later of that and its sending.
    last_landed: Vec<Option<Instant>>,
    /// When the processes with frames were last checked to live (async).
    last_check: Instant,
    /// The processes of the frames in flight (reused).
    lps: Vec<usize>,
    /// Calls in the next new frame: the chunk, less if the window is narrow.
    frame_calls: usize,
}

impl<'h, 'r, I, R> Engine<'h, 'r, I, R>
where
    I: Iterator,
    I::Item: Serialize,
    R: DeserializeOwned,
{
    pub(super) fn new(
        handle: &'h MpiHandle<'r>,
        unit: Unit<I::Item, R>,
        input: I,
        window: usize,
        chunk: Chunk,
        ordered: bool,
    ) -> Self {
        Engine {
            handle,
            unit,
            input: Some(input),
            window: window.max(1),
            chunk,
            pulled: 0,
            yielded: 0,
            flights: VecDeque::new(),
            unsent: VecDeque::new(),
            landed: if ordered {
                Landed::Ordered(VecDeque::new())
            } else {
                Landed::Unordered(VecDeque::new())
            },
            last_landed: vec![None; handle.links.len() + 1],
            last_check: Instant::now(),
            lps: Vec::new(),
            frame_calls: 1,
        }
    }

    /// The next result, with its input's index: waits for it (`Wait::Block`),
    /// or gives [`NotYet`] when none is ready (`Wait::No`); `Ok(None)` once
    /// every input's result was yielded.
    pub(super) fn step(&mut self, wait: Wait) -> Result<Option<Indexed<R>>, NotYet> {
        loop {
            self.fill(wait);
            if let Some(out) = self.pop() {
                self.yielded += 1;
                return Ok(Some(out));
            }
            if self.flights.is_empty() {
                if self.input.is_none() && self.unsent.is_empty() {
                    return Ok(None);
                }
                if wait == Wait::No {
                    return Err(NotYet); // no free slot yet
                }
                continue;
            }
            if let Some(k) = self.ready_flight() {
                self.land(k);
                continue;
            }
            self.lps.clear();
            self.lps.extend(self.flights.iter().map(|f| f.slot.process));
            let check = self.last_check.elapsed() >= LIVENESS;
            if check {
                self.last_check = Instant::now();
            }
            if self.handle.pump_each(&self.lps, check) > 0 || check {
                continue;
            }
            if wait == Wait::No {
                return Err(NotYet);
            }
            // Wait a while for the process of the frame holding the next
            // result in order (ordered), or of the oldest frame (unordered),
            // then look at every frame again; processes are checked to live
            // and keep their deadlines every `LIVENESS` above.
            let k = match self.landed {
                Landed::Ordered(_) => self.head_flight(),
                Landed::Unordered(_) => 0,
            };
            self.handle
                .wait_replies(self.flights[k].slot.process, ANY_WAIT);
        }
    }

    /// Sends frames while there is room: frames in flight (four per live
    /// process), the window (calls pulled and not yet yielded: a new frame
    /// waits until a whole chunk fits, or the window is empty), free slots.
    /// Only a stream with nothing in flight waits for a slot (`Wait::Block`).
    fn fill(&mut self, wait: Wait) {
        // The common case, once per result: no room for a new frame yet.
        let room = self.window - (self.pulled - self.yielded);
        if self.unsent.is_empty() && (self.input.is_none() || room < self.frame_calls) {
            return;
        }
        let live = self
            .handle
            .links
            .iter()
            .filter(|l| l.ended.get().is_none())
            .count();
        // With no live process, one attempt still goes out, to fail its calls.
        let max_frames = (FRAMES_PER_PROCESS * live).max(1);
        // A narrow window makes smaller frames, so that several are in flight.
        self.frame_calls = self.chunk.next().min((self.window / max_frames).max(1));
        while self.flights.len() < max_frames {
            let (first, args) = match self.unsent.pop_front() {
                Some(unsent) => unsent,
                None => {
                    let room = self.window - (self.pulled - self.yielded);
                    let Some(input) = self.input.as_mut().filter(|_| room >= self.frame_calls)
                    else {
                        break;
                    };
                    let want = self.frame_calls;
                    let args: Vec<I::Item> = input.by_ref().take(want).collect();
                    if args.len() < want {
                        self.input = None; // never called again once it said None
                    }
                    if args.is_empty() {
                        break;
                    }
                    self.pulled += args.len();
                    (self.pulled - args.len(), args)
                }
            };
            let slot_wait = match wait {
                Wait::Block if self.flights.is_empty() => None,
                _ => Some(Duration::ZERO),
            };
            let req = Request {
                kind: KIND_BATCH,
                ..unit_request(self.unit.id)
            };
            let sent = self.handle.send::<_, ()>(
                req,
                self.unit.name,
                &BatchArgs(&args),
                To::Any,
                slot_wait,
            );
            match sent {
                Ok(slot) => self.flights.push_back(Flight {
                    first,
                    args,
                    slot,
                    sent: Instant::now(),
                }),
                Err(MpiError::BufferFull { .. }) => {
                    self.unsent.push_front((first, args));
                    break;
                }
                // Too large for one frame: split it (one call alone fails).
                Err(MpiError::FrameTooLarge { .. } | MpiError::Encode { .. }) if args.len() > 1 => {
                    let mut args = args;
                    let rest = args.split_off(args.len() / 2);
                    self.unsent.push_front((first + args.len(), rest));
                    self.unsent.push_front((first, args));
                }
                Err(e) => {
                    for i in 0..args.len() {
                        self.keep(first + i, Err(Box::new(e.clone())));
                    }
                }
            }
        }
    }

    /// A result for call `index`.
    fn keep(&mut self, index: usize, result: Kept<R>) {
        self.landed.keep(self.yielded, index, result);
    }

    /// The next result to yield, if it landed.
    fn pop(&mut self) -> Option<Indexed<R>> {
        match &mut self.landed {
            Landed::Ordered(waiting) => match waiting.front() {
                Some(Some(_)) => waiting.pop_front().flatten().map(|r| (self.yielded, r)),
                _ => None,
            },
            Landed::Unordered(done) => done.pop_front(),
        }
    }

    /// A frame whose reply (or error) is in its slot.
    fn ready_flight(&self) -> Option<usize> {
        self.handle.first_ready(
            self.flights
                .iter()
                .map(|f| (f.slot.index, f.slot.generation)),
        )
    }

    /// The frame holding the next call to yield in order (else the oldest:
    /// the next call is unsent, waiting for a slot one of them frees).
    fn head_flight(&self) -> usize {
        let next = self.yielded;
        self.flights
            .iter()
            .position(|f| (f.first..f.first + f.args.len()).contains(&next))
            .unwrap_or(0)
    }

    /// Takes frame `k`'s reply (waiting for it if it has not come), keeps
    /// each call's result, and queues the calls it did not answer.
    fn land(&mut self, k: usize) {
        let Flight {
            first,
            mut args,
            mut slot,
            sent,
        } = self.flights.remove(k).expect("a frame in flight");
        slot.taken = true;
        let process = slot.process;
        // Each result goes straight to its place; a reply found malformed
        // half-way is taken back, and the whole frame fails instead.
        let (handle, yielded, landed) = (self.handle, self.yielded, &mut self.landed);
        let mark = landed.mark();
        let out = handle.wait_result(slot.index, slot.generation, None, |body, unit| {
            decode_batch_each(body, unit, process, args.len(), |i, r| {
                landed.keep(yielded, first + i, r.map_err(Box::new))
            })
        });
        if out.is_err() {
            self.landed.back_to(mark);
        }
        match out {
            Ok(done) => {
                let now = Instant::now();
                let since = self.last_landed[process].map_or(sent, |t| t.max(sent));
                self.last_landed[process] = Some(now);
                self.chunk.observe(done, now - since);
                if done < args.len() {
                    // The rest did not fit the reply: send it again.
                    let rest = args.split_off(done);
                    self.unsent.push_front((first + done, rest));
                }
            }
            Err(e) => {
                // The whole frame failed: its process ended (or the reply
                // broke). Only the call that ran past a deadline gets that
                // error; the others, why the process ended.
                let link = &self.handle.links[process - 1];
                let (overdue_at, others) = match (&e, link.ended.get()) {
                    (
                        MpiError::DeadlineExceeded { .. },
                        Some(ended @ Ended::Overdue { position, .. }),
                    ) => (
                        Some(*position as usize),
                        self.handle.ended_error(link, ended),
                    ),
                    _ => (None, e.clone()),
                };
                for i in 0..args.len() {
                    let r = if overdue_at == Some(i) {
                        e.clone()
                    } else {
                        others.clone()
                    };
                    self.keep(first + i, Err(Box::new(r)));
                }
            }
        }
    }
}
