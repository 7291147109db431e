//! `map`: many calls of one unit in batch frames.

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::send::{BatchArgs, unit_request};
use super::{MpiHandle, To};
use crate::MpiError;
use crate::call_frame::{self, KIND_BATCH, Request};
use crate::link::Ended;
use crate::slots::{decode_result, reply_outcome};
use crate::unit::Unit;

/// Most calls in one batch frame (of [`MpiHandle::map`] and streams).
pub(super) const BATCH_CALLS: usize = 512;
/// Batch frames in flight per live logical process: enough for every
/// process to have work while the main process encodes the next frame and
/// decodes the last.
pub(super) const FRAMES_PER_PROCESS: usize = 4;

/// Decodes a batch reply of at most `sent` calls, handing each answered
/// call's result to `each` (with its place in the batch); returns how many
/// were answered (the rest did not fit the reply: send them again).
///
/// # Errors
/// [`MpiError::Decode`] for a reply that does not follow the batch format.
pub(super) fn decode_batch_each<R: DeserializeOwned>(
    body: &[u8],
    unit: &'static str,
    process: usize,
    sent: usize,
    mut each: impl FnMut(usize, Result<R, MpiError>),
) -> Result<usize, MpiError> {
    let malformed = || MpiError::Decode {
        unit: unit.to_string(),
        reason: "a malformed batch reply".into(),
    };
    let (done, entries) = call_frame::batch_replies(body).ok_or_else(malformed)?;
    if done > sent {
        return Err(malformed());
    }
    let mut n = 0;
    for (i, entry) in entries.enumerate() {
        let (status, bytes) = entry.ok_or_else(malformed)?;
        if i >= done {
            return Err(malformed());
        }
        each(
            i,
            reply_outcome(unit, process, status, bytes).and_then(|()| decode_result(bytes, unit)),
        );
        n += 1;
    }
    if n != done {
        return Err(malformed());
    }
    Ok(done)
}

/// Decodes a batch reply into `results` (calls `first..` of a map): how
/// many calls it answered, or the first failed call's error.
fn decode_batch<R: DeserializeOwned>(
    body: &[u8],
    unit: &'static str,
    process: usize,
    first: usize,
    results: &mut [Option<R>],
) -> Result<usize, MpiError> {
    let mut failed = None;
    let done = decode_batch_each(body, unit, process, results.len(), |i, r| match r {
        Ok(v) => results[i] = Some(v),
        Err(e) => {
            failed.get_or_insert(MpiError::MapCall {
                index: first + i,
                error: Box::new(e),
            });
        }
    })?;
    failed.map_or(Ok(done), Err)
}

impl MpiHandle<'_> {
    /// Runs `unit` on every element of `args` over the logical processes and
    /// returns the results in the order of `args` (beyond the seed).
    ///
    /// Calls travel in batches, many to a frame each way, several batches
    /// in flight to every live logical process at once: where a call is
    /// cheap this is many times faster than one [`acquire`](Self::acquire)
    /// per call (on a cluster it hides the network's round trip).
    ///
    /// ```
    /// use xme_mpi::Mpi;
    ///
    /// # fn main() -> Result<(), xme_mpi::MpiError> {
    /// let mut mpi = Mpi::new(3)?;
    /// let square = mpi.register("square", |x: u64| x * x);
    /// let squares = mpi.run(|m| m.map(&square, &(0..1000).collect::<Vec<u64>>()))??;
    /// assert_eq!(squares[999], 998_001);
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    /// The first call that fails, as [`MpiError::MapCall`] with its index
    /// (the other results are discarded); [`MpiError::NoLiveProcess`];
    /// [`MpiError::FrameTooLarge`] for one call's arguments too large for the
    /// channel.
    pub fn map<A, R>(&self, unit: &Unit<A, R>, args: &[A]) -> Result<Vec<R>, MpiError>
    where
        A: Serialize,
        R: DeserializeOwned,
    {
        let mut out: Vec<Option<R>> = std::iter::repeat_with(|| None).take(args.len()).collect();
        let live = self
            .links
            .iter()
            .filter(|l| l.ended.get().is_none())
            .count();
        if args.is_empty() {
            return Ok(Vec::new());
        }
        if live == 0 {
            return Err(MpiError::NoLiveProcess);
        }
        // Enough batches for every process to have work while the main
        // process encodes the next and decodes the last.
        let per_batch = args
            .len()
            .div_ceil(FRAMES_PER_PROCESS * live)
            .clamp(1, BATCH_CALLS);
        let window = (FRAMES_PER_PROCESS * live).min(self.slot_count());
        let mut queue: std::collections::VecDeque<std::ops::Range<usize>> = (0..args.len())
            .step_by(per_batch)
            .map(|s| s..(s + per_batch).min(args.len()))
            .collect();
        let mut pending = std::collections::VecDeque::new();
        loop {
            while pending.len() < window
                && let Some(r) = queue.pop_front()
            {
                let req = Request {
                    kind: KIND_BATCH,
                    ..unit_request(unit.id)
                };
                match self.send::<_, ()>(
                    req,
                    unit.name,
                    &BatchArgs(&args[r.clone()]),
                    To::Any,
                    None,
                ) {
                    Ok(slot) => pending.push_back((r, slot)),
                    // Too large for one frame: split it (one call alone is an error).
                    Err(MpiError::FrameTooLarge { .. }) if r.len() > 1 => {
                        let mid = r.start + r.len() / 2;
                        queue.push_front(mid..r.end);
                        queue.push_front(r.start..mid);
                    }
                    Err(e) => return Err(e),
                }
            }
            let Some((r, mut slot)) = pending.pop_front() else {
                break;
            };
            slot.taken = true;
            let process = slot.process;
            let results = &mut out[r.clone()];
            let done = self
                .wait_result(slot.index, slot.generation, None, |body, unit| {
                    decode_batch(body, unit, process, r.start, results)
                })
                .map_err(|e| self.name_overdue_call(e, process, r.start))?;
            if done < r.len() {
                // The rest did not fit the reply: send it again.
                queue.push_front(r.start + done..r.end);
            }
        }
        Ok(out
            .into_iter()
            .map(|r| r.expect("every call of the map was answered"))
            .collect())
    }
}

impl MpiHandle<'_> {
    /// A batch's [`MpiError::DeadlineExceeded`] as the failure of the call
    /// that ran over (`first` is the batch's first call); other errors as
    /// they are.
    pub(crate) fn name_overdue_call(&self, e: MpiError, process: usize, first: usize) -> MpiError {
        match (&e, self.links[process - 1].ended.get()) {
            (MpiError::DeadlineExceeded { .. }, Some(Ended::Overdue { position, .. })) => {
                MpiError::MapCall {
                    index: first + *position as usize,
                    error: Box::new(e),
                }
            }
            _ => e,
        }
    }
}
