//! Reading replies: slots, waiting, delivering, and noticing an ended process.

use std::time::{Duration, Instant};

use super::MpiHandle;
use crate::MpiError;
use crate::call_frame;
use crate::link::{LIVENESS, Link, LivenessCheck, RecvSide, lock, log_foreign_reply};
use crate::slots::{SLOT_RECHECK, SlotState, deliver_to};

/// How long a caller with a time limit sleeps while another thread reads
/// the replies it waits for.
const BUSY_READER_PAUSE: Duration = Duration::from_millis(1);

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
            // Slots of dropped calls free when their replies land: read
            // what came (lock order: recv, then slots). A dropped call's
            // process may never answer (dead, stopped, past its deadline),
            // and nobody else may be waiting on it: check every LIVENESS
            // (across callers, so repeated non-blocking tries check too)
            // that the processes live, which fails their pending calls and
            // frees the slots of the dropped ones.
            let check = table
                .liveness_checked
                .is_none_or(|t| t.elapsed() >= LIVENESS);
            if check {
                table.liveness_checked = Some(Instant::now());
            }
            drop(table);
            let all: Vec<usize> = self.links.iter().map(|l| l.id).collect();
            let landed = self.pump_each(&all, check);
            table = lock(&self.slots);
            if (landed > 0 || check) && !table.free.is_empty() {
                continue;
            }
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
    /// `decode` reads a value's bytes (with the unit's name) in place. With
    /// `until`, gives up then with [`MpiError::Timeout`], leaving the slot
    /// pending.
    pub(crate) fn wait_result<T>(
        &self,
        index: u32,
        generation: u32,
        until: Option<Instant>,
        decode: impl FnOnce(&[u8], &'static str) -> Result<T, MpiError>,
    ) -> Result<T, MpiError> {
        let mut decode = Some(decode);
        let mut liveness = LivenessCheck::default();
        let started = Instant::now();
        loop {
            let (lp, unit) = {
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
                        (lp, unit)
                    }
                    other => {
                        e.state = other;
                        return Err(MpiError::BadSlot);
                    }
                }
            };
            let link = &self.links[lp - 1];
            let left = match until.map(|t| t.saturating_duration_since(Instant::now())) {
                Some(Duration::ZERO) => {
                    return Err(MpiError::Timeout {
                        unit: unit.to_string(),
                        process: lp,
                        host: link.host.clone(),
                        waited: started.elapsed(),
                    });
                }
                left => left,
            };
            // One thread reads a process's replies at a time; the others find
            // their slot filled when they get the lock (a caller with a time
            // limit does not queue for it: it looks again shortly).
            let mut reader = match left {
                None => link.recv.lock(),
                Some(left) => match link.recv.try_lock() {
                    Some(reader) => reader,
                    None => {
                        std::thread::sleep(left.min(BUSY_READER_PAUSE));
                        continue;
                    }
                },
            };
            if self.slot_ready(index, generation) {
                continue;
            }
            if self.pump(link, &mut reader) > 0 {
                continue;
            }
            let max = left.map_or(LIVENESS, |left| left.min(LIVENESS));
            if liveness.due(reader.channel.wait_recv(max)) && !self.check_alive(link, &mut reader) {
                self.fail_pending(link);
            }
            // Hand the lock to a thread waiting for it (`close`, another
            // caller) rather than take it back at the top of the loop.
            parking_lot::MutexGuard::unlock_fair(reader);
        }
    }

    /// The first of `slots` (index, generation) that holds its result or
    /// its error, under one lock of the slot table.
    pub(crate) fn first_ready(&self, slots: impl IntoIterator<Item = (u32, u32)>) -> Option<usize> {
        let table = lock(&self.slots);
        slots.into_iter().position(|(index, generation)| {
            let e = &table.entries[index as usize];
            e.generation != generation || !matches!(e.state, SlotState::Pending { .. })
        })
    }

    /// Reads the waiting replies of processes `lps` (each once; those
    /// another thread reads are left to it) without waiting; with `check`,
    /// also checks each lives (see `check_alive`). Returns the replies read.
    pub(crate) fn pump_each(&self, lps: &[usize], check: bool) -> usize {
        let mut n = 0;
        for (i, &lp) in lps.iter().enumerate() {
            if lps[..i].contains(&lp) {
                continue;
            }
            let link = &self.links[lp - 1];
            let Some(mut reader) = link.recv.try_lock() else {
                continue;
            };
            n += self.pump(link, &mut reader);
            if check && !self.check_alive(link, &mut reader) {
                drop(reader);
                self.fail_pending(link);
            }
        }
        n
    }

    /// Waits at most `max` for a reply from process `lp`, reading what came
    /// (a thread that reads its replies already does it for us: then sleep
    /// briefly). Returns the replies read.
    pub(crate) fn wait_replies(&self, lp: usize, max: Duration) -> usize {
        let link = &self.links[lp - 1];
        let mut reader = match link.recv.try_lock() {
            Some(reader) => reader,
            None => {
                std::thread::sleep(max.min(BUSY_READER_PAUSE));
                return 0;
            }
        };
        match self.pump(link, &mut reader) {
            0 => {
                reader.channel.wait_recv(max);
                self.pump(link, &mut reader)
            }
            n => n,
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
                    self.corrupt_replies(link, rx, &corrupt);
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
}
