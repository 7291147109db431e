//! Writing requests: encoding, slots taken for them, and direct calls.

use std::marker::PhantomData;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::{MpiHandle, To};
use crate::MpiError;
use crate::call_frame::{self, KIND_CALL, Request};
use crate::channel::Waited;
use crate::link::{
    Ended, LIVENESS, Link, LivenessCheck, RecvSide, SendSide, lock, log_foreign_reply,
};
use crate::slots::{Slot, decode_result, reply_outcome};

/// What follows a request's header.
pub(crate) trait Body {
    /// Appends the encoded body to `out`.
    fn append(&self, out: Vec<u8>) -> Result<Vec<u8>, postcard::Error>;
}

/// One call's arguments.
pub(crate) struct Args<'a, A: ?Sized>(pub &'a A);

impl<A: Serialize + ?Sized> Body for Args<'_, A> {
    fn append(&self, out: Vec<u8>) -> Result<Vec<u8>, postcard::Error> {
        postcard::to_extend(self.0, out)
    }
}

/// The arguments of a batch of calls ([`frame::push_batch_call`]).
pub(crate) struct BatchArgs<'a, A>(pub &'a [A]);

impl<A: Serialize> Body for BatchArgs<'_, A> {
    fn append(&self, mut out: Vec<u8>) -> Result<Vec<u8>, postcard::Error> {
        for a in self.0 {
            call_frame::push_batch_call(&mut out, a)?;
        }
        Ok(out)
    }
}

impl<'r> MpiHandle<'r> {
    pub(crate) fn send<B: Body + ?Sized, R>(
        &self,
        mut req: Request,
        unit: &'static str,
        args: &B,
        to: To,
        wait: Option<Duration>,
    ) -> Result<Slot<'_, R>, MpiError> {
        let link = self.choose(to)?;
        req.unit = link.unit_id(req.unit);
        let (index, generation) = self.take_slot(link.id, unit, wait)?;
        let slot = Slot {
            handle: self,
            index,
            generation,
            process: link.id,
            taken: false,
            _result: PhantomData,
        };
        req.slot = index;
        req.generation = generation;
        if let Err(e) = self.write_request(link, req, unit, args, None) {
            // If the process ended, its pending slots (this one too) failed;
            // dropping `slot` frees it. Else free it here.
            if link.ended.get().is_none() {
                self.release(index, generation);
            }
            return Err(e);
        }
        Ok(slot)
    }

    /// Encodes `req` with `args` and writes it to `link`'s request channel,
    /// waiting for room; counts it in the link's load once it is written.
    /// A direct call passes `direct`: the fast-lane sequence number to use,
    /// and the reply buffer whose lock (`link.recv`) it holds. Returns
    /// whether the request went by the fast lane.
    pub(crate) fn write_request<B: Body + ?Sized>(
        &self,
        link: &Link<'_>,
        req: Request,
        unit: &'static str,
        args: &B,
        mut direct: Option<(u64, &mut RecvSide<'_>)>,
    ) -> Result<bool, MpiError> {
        let mut tx = lock(&link.send);
        let tx = &mut *tx;
        req.write(self.token, &mut tx.buf);
        tx.buf = args
            .append(std::mem::take(&mut tx.buf))
            .map_err(|e| MpiError::Encode {
                unit: unit.to_string(),
                reason: e.to_string(),
            })?;
        if tx.buf.len() > link.max_frame {
            return Err(MpiError::FrameTooLarge {
                len: tx.buf.len(),
                max: link.max_frame,
                capacity: link.capacity,
            });
        }
        link.load.fetch_add(1, Ordering::AcqRel);
        if let Some((seq, _)) = direct
            && tx.channel.send_fast(seq, &tx.buf)
        {
            return Ok(true);
        }
        while !tx.channel.try_send(&tx.buf) {
            // `close` waits for this lock to queue EXIT: a call not yet
            // queued when it starts is refused, never waited for (the
            // process may run a unit for ever, and take nothing more).
            if link.closing.load(Ordering::Acquire) {
                // Never below 0: `fail_pending` may have zeroed it.
                let _ = link
                    .load
                    .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                        Some(n.saturating_sub(1))
                    });
                return Err(MpiError::Closed {
                    process: link.id,
                    reason: CLOSED_WHILE_QUEUED.to_string(),
                });
            }
            // The process may itself wait for room for its replies: read
            // them before waiting, so that neither side waits on the other
            // (a thread that holds the replies' lock reads them itself; the
            // lock order is recv, then send: only try).
            match direct.as_mut() {
                Some((_, reader)) => self.make_room(link, reader, tx)?,
                None => match link.recv.try_lock() {
                    Some(mut reader) => self.make_room(link, &mut reader, tx)?,
                    None => {
                        if let Waited::Idle = tx.channel.wait_send(tx.buf.len(), LIVENESS)
                            && let Some(ended) = link.ended.get()
                        {
                            self.fail_pending(link);
                            return Err(self.ended_error(link, ended));
                        }
                    }
                },
            }
        }
        Ok(false)
    }

    /// While `link`'s request channel is full: reads its replies (`reader` is
    /// the held `link.recv`), else waits a while for room, then checks the
    /// process lives.
    fn make_room(
        &self,
        link: &Link<'_>,
        reader: &mut RecvSide<'_>,
        tx: &mut SendSide<'_>,
    ) -> Result<(), MpiError> {
        if self.pump(link, reader) > 0 {
            return Ok(());
        }
        if let Waited::Idle = tx.channel.wait_send(tx.buf.len(), LIVENESS)
            && !self.check_alive(link, reader)
        {
            self.fail_pending(link);
            return Err(self.ended_error(link, link.ended.get().expect("just ended")));
        }
        Ok(())
    }

    /// `block_acquire` without a slot, when no other call waits on `link` and
    /// no other thread reads its replies: the reply is read straight from the
    /// channel (replies of calls sent meanwhile by other threads are
    /// delivered to their slots on the way).
    pub(crate) fn direct_call<A: Serialize, R: DeserializeOwned>(
        &self,
        link: &Link<'_>,
        reader: &mut RecvSide<'_>,
        mut req: Request,
        unit: &'static str,
        args: &A,
    ) -> Result<R, MpiError> {
        req.slot = DIRECT_SLOT;
        req.unit = link.unit_id(req.unit);
        // Only the holder of `link.recv` (the caller) counts: no atomic adds.
        req.generation = link.direct_generation.load(Ordering::Relaxed);
        link.direct_generation
            .store(req.generation.wrapping_add(1), Ordering::Relaxed);
        let seq = link.fast_seq.load(Ordering::Relaxed) + 1;
        if self.write_request(link, req, unit, &Args(args), Some((seq, reader)))? {
            link.fast_seq.store(seq, Ordering::Relaxed);
            reader.channel.expect_fast(seq);
        }
        let out = self.direct_reply(link, reader, req.generation, unit);
        reader.channel.expect_fast(0);
        out
    }

    /// Reads `link`'s replies until the direct call `generation`'s arrives,
    /// by the fast lane or the channel (delivering other calls' replies to
    /// their slots on the way).
    pub(crate) fn direct_reply<R: DeserializeOwned>(
        &self,
        link: &Link<'_>,
        reader: &mut RecvSide<'_>,
        generation: u32,
        unit: &'static str,
    ) -> Result<R, MpiError> {
        let mut liveness = LivenessCheck::default();
        let sent = Instant::now();
        loop {
            let got = match reader.channel.recv_fast(&mut reader.buf) {
                Ok(false) => reader.channel.try_recv(&mut reader.buf),
                fast => fast,
            };
            match got {
                Ok(true) => match call_frame::read_reply(self.token, &reader.buf) {
                    Some((DIRECT_SLOT, g, status, body)) if g == generation => {
                        link.load.fetch_sub(1, Ordering::AcqRel);
                        return reply_outcome(unit, link.id, status, body)
                            .and_then(|()| decode_result(body, unit));
                    }
                    Some((slot, g, status, body)) => {
                        self.deliver(link, slot, g, status, body);
                    }
                    None => log_foreign_reply(link, reader.buf.len()),
                },
                Ok(false) => {
                    if liveness.due(reader.channel.wait_recv(LIVENESS))
                        && (!self.check_alive(link, reader)
                            || self.direct_call_overdue(link, reader, sent, unit))
                    {
                        self.fail_pending(link);
                        return Err(self.direct_error(link, unit));
                    }
                }
                Err(corrupt) => {
                    self.corrupt_replies(link, reader, &corrupt);
                    return Err(self.direct_error(link, unit));
                }
            }
        }
    }
}

impl MpiHandle<'_> {
    /// The main process's own clock on a direct call, a backstop for the
    /// process's watcher thread (which keeps the deadline, see `watch`): a
    /// process that cannot report (stopped, starved, its watcher could not
    /// start) is past the deadline once the call has waited
    /// [`direct_backstop`] since it was sent. A direct call is sent only to
    /// a process with nothing queued, so that wait is all the call's own.
    /// Ends the process as overdue and returns true then.
    fn direct_call_overdue(
        &self,
        link: &Link<'_>,
        reader: &mut RecvSide<'_>,
        sent: Instant,
        unit: &'static str,
    ) -> bool {
        let Some(deadline) = self.plan.deadline else {
            return false;
        };
        let ran = sent.elapsed();
        if ran < direct_backstop(deadline) {
            return false;
        }
        let why = Ended::Overdue {
            unit,
            slot: DIRECT_SLOT,
            position: 0,
            ran,
        };
        self.end(link, why, reader);
        true
    }
}

/// How long the main process waits for a direct call before it declares it
/// past `deadline` itself: the deadline and half of it again (at least
/// 100 ms more), so that a live watcher, which reports within an eighth of
/// the deadline, always speaks first.
pub(crate) fn direct_backstop(deadline: Duration) -> Duration {
    deadline.saturating_add((deadline / 2).max(Duration::from_millis(100)))
}

/// Why a call that waited for room in a closing process's request
/// channel was refused.
const CLOSED_WHILE_QUEUED: &str = "the main process closed it (MpiHandle::close) while this call waited for room in its \
     request channel";

/// The slot number of a direct call (`block_acquire` without a slot).
pub(crate) const DIRECT_SLOT: u32 = u32::MAX;

pub(crate) fn unit_request(id: u32) -> Request {
    Request {
        kind: KIND_CALL,
        slot: 0,
        generation: 0,
        unit: id,
        fn_addr: 0,
        tramp_addr: 0,
    }
}
