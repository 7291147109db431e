//! Reading replies: slots, waiting, delivering, and noticing an ended process.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use xme_core::process::Child;

use super::MpiHandle;
use crate::MpiError;
use crate::call_frame;
use crate::link::{Ended, LIVENESS, Link, LivenessCheck, RecvSide, lock, log_foreign_reply};
use crate::slots::{SLOT_RECHECK, SlotState, deliver_to};

impl MpiHandle<'_> {
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
}
