//! `MpiHandle`: the main function's handle on the logical processes.

use std::marker::PhantomData;
use std::sync::atomic::Ordering;
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use serde::de::DeserializeOwned;
use xme_core::process::Child;

use crate::MpiError;
use crate::call_frame::{self, KIND_BATCH, KIND_CALL, KIND_CALL_FN, Request};
use crate::channel::Waited;
use crate::link::{Ended, LIVENESS, Link, LivenessCheck, RecvSide, lock, log_foreign_reply};
use crate::logical::{self};
use crate::slots::{
    SLOT_RECHECK, Slot, SlotOwner, SlotState, SlotTable, decode_result, deliver_to, reply_outcome,
};
use crate::unit::{self, Unit};

/// Where a call goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum To {
    /// The least loaded live logical process (the seed's `ANY_PROCESS`).
    Any,
    /// Logical process `n`, in `1..pnum`.
    Process(usize),
    /// Every live logical process (the seed's `ALL_PROCESSES`): `broadcast`, `close`.
    All,
}

/// A logical process's state (the seed's `STATUS_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LpStatus {
    /// Started, not yet waiting for calls.
    Begin,
    /// Waiting for calls, none queued.
    Idle,
    /// Calls queued for it, not running one right now.
    Allocated,
    /// Running a call.
    InRun,
    /// Closed or dead.
    End,
}

/// Most calls in one batch frame of [`MpiHandle::map`].
const MAP_BATCH_CALLS: usize = 512;

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
            call_frame::push_batch_call(&mut out, |v| postcard::to_extend(a, v))?;
        }
        Ok(out)
    }
}

/// Decodes a batch reply into `results` (calls `first..` of a map): how
/// many calls it answered, or the first call's error.
fn decode_batch<R: DeserializeOwned>(
    body: &[u8],
    unit: &'static str,
    process: usize,
    first: usize,
    results: &mut [Option<R>],
) -> Result<usize, MpiError> {
    let malformed = || MpiError::Decode {
        unit: unit.to_string(),
        reason: "a malformed batch reply".into(),
    };
    let (done, entries) = call_frame::batch_replies(body).ok_or_else(malformed)?;
    if done > results.len() {
        return Err(malformed());
    }
    let mut n = 0;
    for (i, entry) in entries.enumerate() {
        let (status, bytes) = entry.ok_or_else(malformed)?;
        let slot = results.get_mut(i).ok_or_else(malformed)?;
        let value = reply_outcome(unit, process, status, bytes)
            .and_then(|()| decode_result(bytes, unit))
            .map_err(|e| MpiError::MapCall {
                index: first + i,
                error: Box::new(e),
            })?;
        *slot = Some(value);
        n += 1;
    }
    if n != done {
        return Err(malformed());
    }
    Ok(done)
}

/// The main function's handle on the logical processes (the seed's `XMEMPI`).
/// It may be used from several threads at once.
pub struct MpiHandle<'r> {
    pub(crate) token: u64,
    pub(crate) links: Vec<Link<'r>>,
    pub(crate) slots: Mutex<SlotTable>,
    pub(crate) slot_freed: Condvar,
    /// The logical processes are ranks of an MPI job (not forks of this one).
    pub(crate) cluster: bool,
}

impl std::fmt::Debug for MpiHandle<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MpiHandle")
            .field("processes", &self.links.len())
            .field("cluster", &self.cluster)
            .finish_non_exhaustive()
    }
}

impl<'r> MpiHandle<'r> {
    pub(crate) fn new(token: u64, links: Vec<Link<'r>>, slots: usize, cluster: bool) -> Self {
        MpiHandle {
            token,
            links,
            slots: Mutex::new(SlotTable::new(slots)),
            slot_freed: Condvar::new(),
            cluster,
        }
    }

    /// Runs `main`, then closes every logical process, also when `main`
    /// panics (the panic then continues).
    pub(crate) fn run_main<T>(&self, main: impl FnOnce(&MpiHandle<'_>) -> T) -> T {
        let out = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| main(self)));
        let _ = self.close(To::All);
        match out {
            Ok(v) => v,
            Err(p) => std::panic::resume_unwind(p),
        }
    }

    /// Result slots of this run.
    fn slot_count(&self) -> usize {
        lock(&self.slots).entries.len()
    }

    /// Ids of the logical processes, `1..pnum`.
    ///
    /// ```
    /// use xme_mpi::{Mpi, To};
    /// # fn main() -> Result<(), xme_mpi::MpiError> {
    /// let mut mpi = Mpi::new(3)?;
    /// let square = mpi.register("square", |x: u64| x * x);
    /// mpi.run(|m| -> Result<(), xme_mpi::MpiError> {
    ///     assert_eq!(m.processes(), [1, 2]);
    ///     let _ = &square;
    ///     Ok(())
    /// })??;
    /// # Ok(())
    /// # }
    /// ```
    pub fn processes(&self) -> Vec<usize> {
        self.links.iter().map(|l| l.id).collect()
    }

    /// The pid of logical process `id`.
    ///
    /// # Errors
    /// [`MpiError::NoSuchProcess`] for an id outside `1..pnum`.
    ///
    /// ```
    /// use xme_mpi::{Mpi, To};
    /// # fn main() -> Result<(), xme_mpi::MpiError> {
    /// let mut mpi = Mpi::new(3)?;
    /// let square = mpi.register("square", |x: u64| x * x);
    /// mpi.run(|m| -> Result<(), xme_mpi::MpiError> {
    ///     assert_ne!(m.pid(1)?, std::process::id() as i32); // a forked process
    ///     assert!(m.pid(7).is_err());
    ///     let _ = &square;
    ///     Ok(())
    /// })??;
    /// # Ok(())
    /// # }
    /// ```
    pub fn pid(&self, id: usize) -> Result<i32, MpiError> {
        self.link(id).map(|l| l.pid)
    }

    /// The host logical process `id` runs on: the name its MPI library
    /// reports, in a cluster run; `None` for a process forked on this host.
    ///
    /// # Errors
    /// [`MpiError::NoSuchProcess`] for an id outside `1..pnum`.
    ///
    /// ```
    /// use xme_mpi::{Mpi, To};
    /// # fn main() -> Result<(), xme_mpi::MpiError> {
    /// let mut mpi = Mpi::new(3)?;
    /// let square = mpi.register("square", |x: u64| x * x);
    /// mpi.run(|m| -> Result<(), xme_mpi::MpiError> {
    ///     assert_eq!(m.host(1)?, None); // forked on this host
    ///     let _ = &square;
    ///     Ok(())
    /// })??;
    /// # Ok(())
    /// # }
    /// ```
    pub fn host(&self, id: usize) -> Result<Option<String>, MpiError> {
        self.link(id).map(|l| l.host.clone())
    }

    /// Each logical process's state.
    ///
    /// ```
    /// use xme_mpi::{Mpi, To};
    /// # fn main() -> Result<(), xme_mpi::MpiError> {
    /// let mut mpi = Mpi::new(3)?;
    /// let square = mpi.register("square", |x: u64| x * x);
    /// mpi.run(|m| -> Result<(), xme_mpi::MpiError> {
    ///     m.block_acquire(&square, &2, To::Process(1))?;
    ///     let (id, status) = m.status()[0];
    ///     assert_eq!(id, 1);
    ///     assert_ne!(status, xme_mpi::LpStatus::End);
    ///     Ok(())
    /// })??;
    /// # Ok(())
    /// # }
    /// ```
    pub fn status(&self) -> Vec<(usize, LpStatus)> {
        self.links
            .iter()
            .map(|l| {
                let s = if l.ended.get().is_some() {
                    LpStatus::End
                } else {
                    // A rank on another host shares no status word: it is
                    // Allocated while calls to it are unanswered, else Idle.
                    match l.status.map(|s| s.load(Ordering::Acquire)) {
                        Some(logical::ST_BEGIN) => LpStatus::Begin,
                        Some(logical::ST_INRUN) => LpStatus::InRun,
                        Some(logical::ST_END) => LpStatus::End,
                        _ if l.load.load(Ordering::Acquire) > 0 => LpStatus::Allocated,
                        _ => LpStatus::Idle,
                    }
                };
                (l.id, s)
            })
            .collect()
    }

    /// Sends a call of `unit` to a logical process and returns its slot at once
    /// (the seed's `acquire`). Waits while every slot is taken: only `get`
    /// (or dropping a slot) frees one, so a thread holding `mpi_buffer_size`
    /// slots must `get` some before acquiring more, or use
    /// [`acquire_timeout`](Self::acquire_timeout).
    ///
    /// # Errors
    /// [`MpiError::NoLiveProcess`], [`MpiError::NoSuchProcess`],
    /// [`MpiError::Closed`] for a closed target, [`MpiError::FrameTooLarge`],
    /// [`MpiError::Encode`].
    ///
    /// ```
    /// use xme_mpi::{Mpi, To};
    /// # fn main() -> Result<(), xme_mpi::MpiError> {
    /// let mut mpi = Mpi::new(3)?;
    /// let square = mpi.register("square", |x: u64| x * x);
    /// mpi.run(|m| -> Result<(), xme_mpi::MpiError> {
    ///     let slot = m.acquire(&square, &7, To::Any)?; // returns at once
    ///     assert_eq!(m.get(slot)?, 49);
    ///     Ok(())
    /// })??;
    /// # Ok(())
    /// # }
    /// ```
    pub fn acquire<A, R>(
        &self,
        unit: &Unit<A, R>,
        args: &A,
        to: To,
    ) -> Result<Slot<'_, R>, MpiError>
    where
        A: Serialize,
        R: DeserializeOwned,
    {
        self.send(unit_request(unit.id), unit.name, &Args(args), to, None)
    }

    /// [`acquire`](Self::acquire), waiting at most `wait` for a free slot.
    ///
    /// # Errors
    /// [`MpiError::BufferFull`] if no slot frees within `wait`; else as
    /// [`acquire`](Self::acquire).
    ///
    /// ```
    /// use xme_mpi::{Mpi, To};
    /// # fn main() -> Result<(), xme_mpi::MpiError> {
    /// let mut mpi = Mpi::new(3)?;
    /// let square = mpi.register("square", |x: u64| x * x);
    /// mpi.run(|m| -> Result<(), xme_mpi::MpiError> {
    ///     let slot = m.acquire_timeout(&square, &3, To::Process(2), std::time::Duration::from_secs(1))?;
    ///     assert_eq!(m.get(slot)?, 9);
    ///     Ok(())
    /// })??;
    /// # Ok(())
    /// # }
    /// ```
    pub fn acquire_timeout<A, R>(
        &self,
        unit: &Unit<A, R>,
        args: &A,
        to: To,
        wait: Duration,
    ) -> Result<Slot<'_, R>, MpiError>
    where
        A: Serialize,
        R: DeserializeOwned,
    {
        self.send(
            unit_request(unit.id),
            unit.name,
            &Args(args),
            to,
            Some(wait),
        )
    }

    /// Calls a plain function directly, without registering it (seed 3.3's
    /// `acquire(scatter, …)`). Works because logical processes are forks of
    /// this program; a closure that captures nothing coerces to a `fn`.
    ///
    /// # Errors
    /// [`MpiError::FnAcrossHosts`] in a cluster run (addresses differ per
    /// rank), before anything is sent; else as [`acquire`](Self::acquire).
    ///
    /// ```
    /// use xme_mpi::{Mpi, To};
    /// # fn main() -> Result<(), xme_mpi::MpiError> {
    /// let mut mpi = Mpi::new(3)?;
    /// let square = mpi.register("square", |x: u64| x * x);
    /// mpi.run(|m| -> Result<(), xme_mpi::MpiError> {
    ///     fn cube(x: u64) -> u64 { x * x * x }
    ///     let slot = m.acquire_fn(cube, &3, To::Any)?;
    ///     assert_eq!(m.get(slot)?, 27);
    ///     let _ = &square;
    ///     Ok(())
    /// })??;
    /// # Ok(())
    /// # }
    /// ```
    pub fn acquire_fn<A, R>(&self, f: fn(A) -> R, args: &A, to: To) -> Result<Slot<'_, R>, MpiError>
    where
        A: Serialize + DeserializeOwned,
        R: Serialize + DeserializeOwned,
    {
        if self.cluster {
            return Err(MpiError::FnAcrossHosts);
        }
        let req = Request {
            kind: KIND_CALL_FN,
            slot: 0,
            generation: 0,
            unit: u32::MAX,
            fn_addr: f as *const () as usize as u64,
            tramp_addr: unit::trampoline::<A, R> as *const () as usize as u64,
        };
        self.send(req, "fn", &Args(args), to, None)
    }

    /// Calls and waits for the result (the seed's `acquire(…, block=True)`).
    ///
    /// # Errors
    /// As [`acquire`](Self::acquire), then as [`get`](Self::get).
    ///
    /// ```
    /// use xme_mpi::{Mpi, To};
    /// # fn main() -> Result<(), xme_mpi::MpiError> {
    /// let mut mpi = Mpi::new(3)?;
    /// let square = mpi.register("square", |x: u64| x * x);
    /// mpi.run(|m| -> Result<(), xme_mpi::MpiError> {
    ///     assert_eq!(m.block_acquire(&square, &12, To::Any)?, 144);
    ///     Ok(())
    /// })??;
    /// # Ok(())
    /// # }
    /// ```
    pub fn block_acquire<A, R>(&self, unit: &Unit<A, R>, args: &A, to: To) -> Result<R, MpiError>
    where
        A: Serialize,
        R: DeserializeOwned,
    {
        let link = self.choose(to)?;
        if link.load.load(Ordering::Acquire) == 0
            && let Ok(mut reader) = link.recv.try_lock()
        {
            return self.direct_call(link, &mut reader, unit_request(unit.id), unit.name, args);
        }
        let slot = self.acquire(unit, args, To::Process(link.id))?;
        self.get(slot)
    }

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
        let per_batch = args.len().div_ceil(4 * live).clamp(1, MAP_BATCH_CALLS);
        let window = (4 * live).min(self.slot_count());
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
            let done = self.wait_result(slot.index, slot.generation, |body, unit| {
                decode_batch(body, unit, process, r.start, results)
            })?;
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

    /// Sends the call to every live logical process: one slot each.
    ///
    /// # Errors
    /// [`MpiError::NoLiveProcess`]; else as [`acquire`](Self::acquire).
    ///
    /// ```
    /// use xme_mpi::{Mpi, To};
    /// # fn main() -> Result<(), xme_mpi::MpiError> {
    /// let mut mpi = Mpi::new(3)?;
    /// let square = mpi.register("square", |x: u64| x * x);
    /// mpi.run(|m| -> Result<(), xme_mpi::MpiError> {
    ///     let slots = m.broadcast(&square, &4)?; // one call per logical process
    ///     let all: Vec<u64> = slots.into_iter().map(|s| m.get(s)).collect::<Result<_, _>>()?;
    ///     assert_eq!(all, [16, 16]);
    ///     Ok(())
    /// })??;
    /// # Ok(())
    /// # }
    /// ```
    pub fn broadcast<A, R>(&self, unit: &Unit<A, R>, args: &A) -> Result<Vec<Slot<'_, R>>, MpiError>
    where
        A: Serialize,
        R: DeserializeOwned,
    {
        let live: Vec<usize> = self
            .links
            .iter()
            .filter(|l| l.ended.get().is_none())
            .map(|l| l.id)
            .collect();
        if live.is_empty() {
            return Err(MpiError::NoLiveProcess);
        }
        live.into_iter()
            .map(|id| self.acquire(unit, args, To::Process(id)))
            .collect()
    }

    /// Waits for a call's result and frees its slot (the seed's `get`).
    ///
    /// # Errors
    /// [`MpiError::BadSlot`] for a slot of another run (a nested or
    /// concurrent [`Mpi::run`](crate::Mpi::run)): it is left to its own run, which discards
    /// its result. Else the call's own error (see [`MpiError`]).
    ///
    /// ```
    /// use xme_mpi::{Mpi, To};
    /// # fn main() -> Result<(), xme_mpi::MpiError> {
    /// let mut mpi = Mpi::new(3)?;
    /// let square = mpi.register("square", |x: u64| x * x);
    /// mpi.run(|m| -> Result<(), xme_mpi::MpiError> {
    ///     let a = m.acquire(&square, &5, To::Any)?;
    ///     let b = m.acquire(&square, &6, To::Any)?;
    ///     assert_eq!((m.get(b)?, m.get(a)?), (36, 25)); // in any order
    ///     Ok(())
    /// })??;
    /// # Ok(())
    /// # }
    /// ```
    pub fn get<R: DeserializeOwned>(&self, mut slot: Slot<'_, R>) -> Result<R, MpiError> {
        if slot.handle.token() != self.token
            || !std::ptr::addr_eq(slot.handle as *const dyn SlotOwner, self as *const Self)
        {
            return Err(MpiError::BadSlot);
        }
        slot.taken = true;
        self.wait_result(slot.index, slot.generation, decode_result)
    }

    pub(crate) fn link(&self, id: usize) -> Result<&Link<'r>, MpiError> {
        id.checked_sub(1)
            .and_then(|i| self.links.get(i))
            .ok_or(MpiError::NoSuchProcess(id))
    }

    pub(crate) fn choose(&self, to: To) -> Result<&Link<'r>, MpiError> {
        match to {
            To::All => Err(MpiError::UseBroadcast),
            To::Process(id) => {
                let l = self.link(id)?;
                match l.ended.get() {
                    None => Ok(l),
                    Some(e) => Err(self.ended_error(l, e)),
                }
            }
            To::Any => self
                .links
                .iter()
                .filter(|l| l.ended.get().is_none())
                .min_by_key(|l| l.load.load(Ordering::Relaxed))
                .ok_or(MpiError::NoLiveProcess),
        }
    }

    pub(crate) fn ended_error(&self, l: &Link<'_>, e: &Ended) -> MpiError {
        match e {
            Ended::Died(fate) => MpiError::ProcessDied {
                process: l.id,
                pid: l.pid,
                fate: *fate,
            },
            Ended::Closed(reason) => MpiError::Closed {
                process: l.id,
                reason: reason.clone(),
            },
        }
    }

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
            if !matches!(e, MpiError::ProcessDied { .. } | MpiError::Closed { .. }) {
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
            // The process is slow or gone: check before waiting again.
            if let Waited::Idle = tx.channel.wait_send(tx.buf.len(), LIVENESS) {
                let alive = match direct.as_mut() {
                    Some((_, reader)) => self.check_alive(link, reader),
                    None => self.check_alive(link, &mut lock(&link.recv)),
                };
                if !alive {
                    return Err(self.ended_error(link, link.ended.get().expect("just ended")));
                }
            }
        }
        Ok(false)
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
                        && !self.check_alive(link, reader)
                    {
                        self.fail_pending(link);
                        return Err(self.ended_error(link, link.ended.get().expect("ended")));
                    }
                }
                Err(corrupt) => {
                    self.corrupt_replies(link, &corrupt);
                    return Err(self.ended_error(link, link.ended.get().expect("ended")));
                }
            }
        }
    }

    /// Takes a free slot, waiting while all are taken (at most `wait`).
    pub(crate) fn take_slot(
        &self,
        lp: usize,
        unit: &'static str,
        wait: Option<Duration>,
    ) -> Result<(u32, u32), MpiError> {
        let mut start = None;
        let mut table = lock(&self.slots);
        loop {
            if let Some(index) = table.free.pop() {
                let e = &mut table.entries[index as usize];
                e.state = SlotState::Pending { lp, unit };
                e.unit = unit;
                return Ok((index, e.generation));
            }
            let start = *start.get_or_insert_with(Instant::now);
            table.waiters += 1;
            // Woken when a batch of slots is free (see `SlotTable::release`),
            // and at least every SLOT_RECHECK to take a single freed slot.
            table = match wait {
                None => {
                    self.slot_freed
                        .wait_timeout(table, SLOT_RECHECK)
                        .unwrap_or_else(|p| p.into_inner())
                        .0
                }
                Some(w) => match w.checked_sub(start.elapsed()) {
                    Some(left) => {
                        self.slot_freed
                            .wait_timeout(table, left.min(SLOT_RECHECK))
                            .unwrap_or_else(|p| p.into_inner())
                            .0
                    }
                    None => {
                        table.waiters -= 1;
                        return Err(MpiError::BufferFull {
                            size: table.entries.len(),
                            waited: start.elapsed(),
                        });
                    }
                },
            };
            table.waiters -= 1;
        }
    }

    pub(crate) fn release(&self, index: u32, generation: u32) {
        let mut table = lock(&self.slots);
        if table.entries[index as usize].generation == generation && table.release(index) {
            self.slot_freed.notify_one();
        }
    }

    pub(crate) fn abandon(&self, index: u32, generation: u32) {
        let mut table = lock(&self.slots);
        let e = &mut table.entries[index as usize];
        if e.generation != generation {
            return;
        }
        let release = match e.state {
            SlotState::Pending { lp, .. } => {
                e.state = SlotState::Abandoned { lp };
                false
            }
            SlotState::Ready(_) => true,
            _ => false,
        };
        if release && table.release(index) {
            self.slot_freed.notify_one();
        }
    }

    /// Waits for slot `index` to hold its result, reading replies meanwhile;
    /// `decode` reads a value's bytes (with the unit's name) in place.
    pub(crate) fn wait_result<T>(
        &self,
        index: u32,
        generation: u32,
        decode: impl FnOnce(&[u8], &'static str) -> Result<T, MpiError>,
    ) -> Result<T, MpiError> {
        let mut decode = Some(decode);
        let mut liveness = LivenessCheck::default();
        loop {
            let lp = {
                let mut table = lock(&self.slots);
                let e = &mut table.entries[index as usize];
                if e.generation != generation {
                    return Err(MpiError::BadSlot);
                }
                match std::mem::replace(&mut e.state, SlotState::Free) {
                    SlotState::Ready(r) => {
                        let decode = decode.take().expect("returns after decoding");
                        let out = r.and_then(|()| decode(&e.body, e.unit));
                        if table.release(index) {
                            self.slot_freed.notify_one();
                        }
                        return out;
                    }
                    SlotState::Pending { lp, unit } => {
                        e.state = SlotState::Pending { lp, unit };
                        lp
                    }
                    other => {
                        e.state = other;
                        return Err(MpiError::BadSlot);
                    }
                }
            };
            let link = &self.links[lp - 1];
            // One thread reads a process's replies at a time; the others find
            // their slot filled when they get the lock.
            let mut reader = lock(&link.recv);
            if self.slot_ready(index, generation) {
                continue;
            }
            if self.pump(link, &mut reader) > 0 {
                continue;
            }
            if liveness.due(reader.channel.wait_recv(LIVENESS))
                && !self.check_alive(link, &mut reader)
            {
                self.fail_pending(link);
            }
        }
    }

    pub(crate) fn slot_ready(&self, index: u32, generation: u32) -> bool {
        let table = lock(&self.slots);
        let e = &table.entries[index as usize];
        e.generation != generation || !matches!(e.state, SlotState::Pending { .. })
    }

    /// Delivers every reply waiting in `link`'s channel; returns how many.
    /// `rx` is `link.recv`, whose lock the caller holds.
    pub(crate) fn pump(&self, link: &Link<'_>, rx: &mut RecvSide<'_>) -> usize {
        let mut n = 0;
        // One slot-table lock for every reply waiting (lock order: recv, then slots).
        let mut table = lock(&self.slots);
        let mut notify = false;
        loop {
            match rx.channel.try_recv(&mut rx.buf) {
                Ok(true) => {
                    n += 1;
                    match call_frame::read_reply(self.token, &rx.buf) {
                        Some((slot, generation, status, body)) => {
                            notify |= deliver_to(&mut table, link, slot, generation, status, body);
                        }
                        None => log_foreign_reply(link, rx.buf.len()),
                    }
                }
                Ok(false) => break,
                Err(corrupt) => {
                    drop(table);
                    self.corrupt_replies(link, &corrupt);
                    return n;
                }
            }
        }
        drop(table);
        if notify {
            self.slot_freed.notify_all();
        }
        n
    }

    /// Ends `link` whose reply channel broke the ring's format.
    pub(crate) fn corrupt_replies(&self, link: &Link<'_>, corrupt: &crate::channel::Corrupt) {
        log::error!(
            "MPI: reply channel of logical process {} is corrupt ({}); closing it",
            link.id,
            corrupt.0
        );
        if let Some(c) = lock(&link.child).as_mut() {
            let _ = c.kill_mut();
        }
        let _ = link
            .ended
            .set(Ended::Closed("its reply channel was corrupt".into()));
        self.fail_pending(link);
    }

    pub(crate) fn deliver(
        &self,
        link: &Link<'_>,
        slot: u32,
        generation: u32,
        status: u8,
        body: &[u8],
    ) {
        let notify = deliver_to(&mut lock(&self.slots), link, slot, generation, status, body);
        if notify {
            self.slot_freed.notify_all();
        }
    }

    /// Whether `link`'s process lives; records its death if not. `reader` is
    /// the held `link.recv`.
    pub(crate) fn check_alive(&self, link: &Link<'_>, reader: &mut RecvSide<'_>) -> bool {
        if link.ended.get().is_some() {
            return false;
        }
        if !link.forked {
            // A rank that dies ends the whole job (the launcher's rule).
            return true;
        }
        let mut child = lock(&link.child);
        match child.as_mut().map(Child::try_wait) {
            Some(Ok(None)) => true,
            Some(Ok(Some(fate))) => {
                drop(child);
                self.pump(link, reader); // replies it wrote before dying still count
                let _ = link.ended.set(Ended::Died(fate));
                false
            }
            _ => {
                let _ = link
                    .ended
                    .set(Ended::Closed("its process could not be waited for".into()));
                false
            }
        }
    }

    /// Fails every slot still pending on an ended process.
    pub(crate) fn fail_pending(&self, link: &Link<'_>) {
        let Some(ended) = link.ended.get() else {
            return;
        };
        let err = self.ended_error(link, ended);
        let mut table = lock(&self.slots);
        let mut freed = false;
        for i in 0..table.entries.len() {
            match table.entries[i].state {
                SlotState::Pending { lp, .. } if lp == link.id => {
                    table.entries[i].state = SlotState::Ready(Err(err.clone()));
                }
                SlotState::Abandoned { lp } if lp == link.id => {
                    freed |= table.release(i as u32);
                }
                _ => {}
            }
        }
        link.load.store(0, Ordering::Release);
        if freed {
            self.slot_freed.notify_all();
        }
    }

    /// Writes a frame with a foreign token to logical process `id` (tests).
    #[doc(hidden)]
    pub fn inject_foreign_frame(&self, id: usize) -> Result<(), MpiError> {
        let l = self.link(id)?;
        let mut tx = lock(&l.send);
        let mut junk = vec![0xA5u8; 64];
        junk[..8].copy_from_slice(&(!self.token).to_le_bytes());
        while !tx.channel.try_send(&junk) {
            tx.channel.wait_send(junk.len(), LIVENESS);
        }
        Ok(())
    }

    /// Writes a fast-lane frame header that breaks the channel of logical
    /// process `id` (tests).
    #[doc(hidden)]
    pub fn inject_corrupt_fast_frame(&self, id: usize) -> Result<(), MpiError> {
        let l = self.link(id)?;
        let _reader = lock(&l.recv); // the fast lane's numbers are kept under it
        let seq = l.fast_seq.load(Ordering::Relaxed) + 1;
        l.fast_seq.store(seq, Ordering::Relaxed);
        lock(&l.send).channel.inject_corrupt_fast(seq);
        Ok(())
    }

    /// Writes a frame header that breaks the channel of logical process `id` (tests).
    #[doc(hidden)]
    pub fn inject_corrupt_header(&self, id: usize) -> Result<(), MpiError> {
        let l = self.link(id)?;
        lock(&l.send).channel.inject_corrupt();
        Ok(())
    }
}

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
