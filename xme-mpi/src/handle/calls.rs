//! The calls of the public face: acquire, block_acquire, broadcast, get.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::send::{Args, unit_request};
use super::{MpiHandle, To};
use crate::MpiError;
use crate::call_frame::{KIND_CALL_FN, Request};
use crate::slots::{Slot, SlotOwner, decode_result};
use crate::unit::{self, Unit};

impl MpiHandle<'_> {
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
            && let Some(mut reader) = link.recv.try_lock()
        {
            return self.direct_call(link, &mut reader, unit_request(unit.id), unit.name, args);
        }
        let slot = self.acquire(unit, args, To::Process(link.id))?;
        self.get(slot)
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
        self.wait_result(slot.index, slot.generation, None, decode_result)
    }

    /// [`get`](Self::get), waiting at most `wait`. On expiry the call goes
    /// on and `slot` stays valid: `get` it (or `get_timeout` again) later,
    /// or drop it to discard the result. Unlike
    /// [`Mpi::call_timeout`](crate::Mpi::call_timeout), this ends nothing.
    ///
    /// # Errors
    /// [`MpiError::Timeout`] (naming the unit, the process and its host) if
    /// no result came within `wait`; [`MpiError::BadSlot`] for a slot already
    /// taken or of another run; else the call's own error.
    ///
    /// ```
    /// use std::time::{Duration, Instant};
    /// use xme_mpi::{Mpi, MpiError, To};
    /// # fn main() -> Result<(), MpiError> {
    /// let mut mpi = Mpi::new(3)?;
    /// let nap = mpi.register("nap", |ms: u64| { std::thread::sleep(Duration::from_millis(ms)); ms });
    /// mpi.run(|m| -> Result<(), MpiError> {
    ///     let mut slow = m.acquire(&nap, &300, To::Process(1))?;
    ///     let e = m.get_timeout(&mut slow, Duration::from_millis(10)).unwrap_err();
    ///     assert!(matches!(e, MpiError::Timeout { process: 1, .. }), "{e}");
    ///     assert_eq!(m.block_acquire(&nap, &1, To::Process(2))?, 1); // others serve
    ///     assert_eq!(m.get(slow)?, 300); // the slot is still good
    ///     Ok(())
    /// })??;
    /// # Ok(())
    /// # }
    /// ```
    pub fn get_timeout<R: DeserializeOwned>(
        &self,
        slot: &mut Slot<'_, R>,
        wait: Duration,
    ) -> Result<R, MpiError> {
        if slot.taken
            || slot.handle.token() != self.token
            || !std::ptr::addr_eq(slot.handle as *const dyn SlotOwner, self as *const Self)
        {
            return Err(MpiError::BadSlot);
        }
        // A wait too long for the clock (Duration::MAX) is no limit.
        let until = Instant::now().checked_add(wait);
        let out = self.wait_result(slot.index, slot.generation, until, decode_result);
        if !matches!(out, Err(MpiError::Timeout { .. })) {
            slot.taken = true;
        }
        out
    }
}
