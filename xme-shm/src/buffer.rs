//! The call buffer (the seed's `__Buffer_Call__`): a bounded many-producer,
//! many-consumer ring of fixed-size cells, and one mailbox per operator, all in
//! the Manager's region.
//!
//! The ring's protocol is in `ring.rs`.
//!
//! # Mailboxes
//! One per operator with a call in flight or a result waiting, found by
//! hashing the operator (linear probing): `appended` (serial of its latest
//! call), `done` (serial of the latest result stored), `taken` (serial of
//! the latest result taken by `get`), and the latest result under a seqlock
//! whose writer lock names its holder's pid (a writer that died is taken
//! over). A mailbox is freed once its last result is taken or cleaned: a CAS
//! closes `appended` (so no call can be counted in it any more), then its
//! operator word becomes a tombstone, which probes pass and the next claim
//! reuses. Claiming and freeing take the mailbox lock (a pid-named word), so
//! an operator never has two mailboxes. When every slot is taken, a slot
//! whose owner process died with no call in flight is handed to the new
//! operator.
//!
//! # Waiting
//! Three event counts (`work`, `space`, `done`), each a shared futex word and
//! a sleeper count: a waiter registers, re-checks, and sleeps; a signaller
//! bumps the word and wakes only when someone sleeps.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use xme_core::{Mapped, Operator, SharedRegion, futex, process};

use crate::ShmError;
use crate::block::{load_bytes, store_bytes, words};
use crate::ring::{CELL_HEADER, HEADER_WORDS, Orphan, PAYLOAD_HEADER, Pop, Ring};

// Header words (the ring's tail, head and executed count are words 0, 1, 3).
const H_GUARD: usize = 2;
const H_CAPACITY: usize = 4;
const H_CELL_WORDS: usize = 5;
const H_BOXES: usize = 6;
const H_REPLY_WORDS: usize = 7;
/// Pid-named lock taken to claim or free a mailbox (word 8 once held a
/// fork-family token, which the region must not carry: see `FamilyKey`).
const H_BOX_LOCK: usize = 8;
const H_SLEEPERS: usize = 9; // three words: work, space, done
/// Futex words (u32) before the header.
const FUTEX_BYTES: usize = 64;

/// The three events.
#[derive(Clone, Copy)]
pub(crate) enum Event {
    /// A call was published.
    Work = 0,
    /// A cell was freed.
    Space = 1,
    /// A result was stored.
    Done = 2,
}

// Mailbox words.
const B_OP: usize = 0;
const B_APPENDED: usize = 1;
const B_DONE: usize = 2;
const B_TAKEN: usize = 3;
const B_VERSION: usize = 4;
const B_WRITER: usize = 5;
const B_LEN: usize = 6;
const B_OWNER: usize = 7;
const BOX_HEADER: usize = 8;
/// A freed mailbox's operator word (`Operator::alloc` never makes this id).
const BOX_TOMB: u64 = u64::MAX - 1;
/// Set in `appended` while a mailbox is freed or changes hands.
const CLOSED: u64 = 1 << 63;

/// Sizes of a call buffer, fixed when the Manager is built.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BufferConfig {
    /// Calls the ring holds.
    pub capacity: usize,
    /// Largest encoded call, in bytes.
    pub call_bytes: usize,
    /// Operators that can have a mailbox.
    pub mailboxes: usize,
    /// Largest encoded result, in bytes.
    pub reply_bytes: usize,
}

impl Default for BufferConfig {
    fn default() -> Self {
        BufferConfig {
            capacity: 1024,
            call_bytes: 256,
            mailboxes: 256,
            reply_bytes: 4096,
        }
    }
}

impl BufferConfig {
    fn check(&self) -> Result<(), ShmError> {
        let bad = |what: String| Err(ShmError::Config(what));
        if !(2..=1 << 24).contains(&self.capacity) {
            return bad(format!(
                "buffer capacity {} is outside 2..=2^24",
                self.capacity
            ));
        }
        if !(16..=1 << 20).contains(&self.call_bytes) {
            return bad(format!(
                "call_bytes {} is outside 16..=1 MiB",
                self.call_bytes
            ));
        }
        if !(1..=1 << 20).contains(&self.mailboxes) {
            return bad(format!("mailboxes {} is outside 1..=2^20", self.mailboxes));
        }
        if !(16..=1 << 24).contains(&self.reply_bytes) {
            return bad(format!(
                "reply_bytes {} is outside 16..=16 MiB",
                self.reply_bytes
            ));
        }
        Ok(())
    }

    fn cell_words(&self) -> usize {
        CELL_HEADER + words(PAYLOAD_HEADER + self.call_bytes)
    }

    fn box_words(&self) -> usize {
        BOX_HEADER + words(self.reply_bytes)
    }

    /// Bytes of region the buffer needs.
    pub(crate) fn bytes(&self) -> usize {
        FUTEX_BYTES
            + 8 * (Ring::words_for(self.capacity, self.cell_words())
                + self.mailboxes * self.box_words())
    }
}

/// Longest wait for a mailbox's writer word held by another live process.
const WRITER_WAIT: Duration = Duration::from_secs(1);

/// The call buffer in a region; see the module docs.
#[derive(Clone)]
pub(crate) struct CallBuffer {
    futexes: Mapped<[AtomicU32]>,
    words: Mapped<[AtomicU64]>,
    config: BufferConfig,
}

fn alive(pid: u32) -> bool {
    process::is_alive(pid as i32)
}

impl CallBuffer {
    fn map(
        region: &Arc<SharedRegion>,
        offset: usize,
        config: BufferConfig,
    ) -> Result<CallBuffer, ShmError> {
        let n = (config.bytes() - FUTEX_BYTES) / 8;
        Ok(CallBuffer {
            futexes: region.slice_owned(offset, FUTEX_BYTES / 4)?,
            words: region.slice_owned(offset + FUTEX_BYTES, n)?,
            config,
        })
    }

    /// Lays out a new buffer at `offset` of a zeroed region.
    pub fn init(
        region: &Arc<SharedRegion>,
        offset: usize,
        config: BufferConfig,
    ) -> Result<CallBuffer, ShmError> {
        config.check()?;
        let b = CallBuffer::map(region, offset, config)?;
        let h = &*b.words;
        h[H_CAPACITY].store(config.capacity as u64, Ordering::Relaxed);
        h[H_CELL_WORDS].store(config.cell_words() as u64, Ordering::Relaxed);
        h[H_BOXES].store(config.mailboxes as u64, Ordering::Relaxed);
        h[H_REPLY_WORDS].store(words(config.reply_bytes) as u64, Ordering::Relaxed);
        Ring::init(&b.words, config.capacity, config.cell_words());
        Ok(b)
    }

    /// Maps the buffer another process laid out at `offset`.
    pub fn attach(region: &Arc<SharedRegion>, offset: usize) -> Result<CallBuffer, ShmError> {
        let h: &[AtomicU64] = region.slice(offset + FUTEX_BYTES, HEADER_WORDS)?;
        let cell_words = h[H_CELL_WORDS].load(Ordering::Acquire) as usize;
        let reply_words = h[H_REPLY_WORDS].load(Ordering::Acquire) as usize;
        let config = BufferConfig {
            capacity: h[H_CAPACITY].load(Ordering::Acquire) as usize,
            call_bytes: (cell_words.saturating_sub(CELL_HEADER) * 8).saturating_sub(PAYLOAD_HEADER),
            mailboxes: h[H_BOXES].load(Ordering::Acquire) as usize,
            reply_bytes: reply_words * 8,
        };
        config
            .check()
            .map_err(|e| ShmError::BadLayout(format!("call buffer header: {e}")))?;
        CallBuffer::map(region, offset, config)
    }

    pub fn config(&self) -> BufferConfig {
        self.config
    }

    /// The call ring in the buffer's words.
    fn ring(&self) -> Ring<'_> {
        Ring::attach(&self.words, self.config.capacity, self.config.cell_words())
    }

    fn mailbox_words(&self, i: usize) -> &[AtomicU64] {
        let bw = self.config.box_words();
        let at = Ring::words_for(self.config.capacity, self.config.cell_words()) + i * bw;
        &self.words[at..at + bw]
    }

    // ---- events ----------------------------------------------------------

    /// Wakes the sleepers of `e`, if any. The SeqCst load pairs with the
    /// waiter's SeqCst registration (see [`CallBuffer::wait`]).
    pub fn signal(&self, e: Event) {
        if self.words[H_SLEEPERS + e as usize].load(Ordering::SeqCst) > 0 {
            self.futexes[e as usize].fetch_add(1, Ordering::SeqCst);
            futex::wake(&self.futexes[e as usize], u32::MAX);
        }
    }

    /// Wakes every sleeper of `e`, registered or not.
    pub fn signal_all(&self, e: Event) {
        self.futexes[e as usize].fetch_add(1, Ordering::SeqCst);
        futex::wake(&self.futexes[e as usize], u32::MAX);
    }

    /// Sleeps until `e` is signalled or `timeout` passes, unless `ready()`
    /// already holds after registering (so no signal is missed).
    pub fn wait(&self, e: Event, timeout: Duration, ready: impl Fn() -> bool) {
        let sleepers = &self.words[H_SLEEPERS + e as usize];
        sleepers.fetch_add(1, Ordering::SeqCst);
        let seen = self.futexes[e as usize].load(Ordering::SeqCst);
        if !ready() {
            futex::wait(&self.futexes[e as usize], seen, Some(timeout));
        }
        sleepers.fetch_sub(1, Ordering::SeqCst);
    }

    // ---- producers -------------------------------------------------------

    /// Appends a call (at most `call_bytes`, checked by the caller) if a
    /// cell is free; false when the ring is full, `Err` when it is corrupt.
    fn try_push(&self, op: Operator, serial: u64, call: &[u8]) -> Result<bool, String> {
        let pushed = self
            .ring()
            .try_push(process::current_pid(), op.id(), serial, call)?;
        if pushed {
            self.signal(Event::Work);
        }
        Ok(pushed)
    }

    /// Appends, waiting while the ring is full: forever with `deadline` None.
    pub fn push(
        &self,
        op: Operator,
        serial: u64,
        call: &[u8],
        deadline: Option<Instant>,
    ) -> Result<(), ShmError> {
        let started = Instant::now();
        let mut spins = 0u32;
        loop {
            if self
                .try_push(op, serial, call)
                .map_err(ShmError::BadLayout)?
            {
                return Ok(());
            }
            let now = Instant::now();
            if let Some(d) = deadline
                && now >= d
            {
                return Err(ShmError::BufferFull {
                    capacity: self.config.capacity,
                    waited: now - started,
                });
            }
            if spins < 64 {
                spins += 1;
                std::thread::yield_now();
                continue;
            }
            let slice = deadline.map_or(Duration::from_millis(50), |d| {
                d.saturating_duration_since(now)
                    .min(Duration::from_millis(50))
            });
            self.wait(Event::Space, slice, || self.has_space());
        }
    }

    fn has_space(&self) -> bool {
        self.ring().has_space()
    }

    /// True when a published or in-progress call is at the head.
    pub fn has_work(&self) -> bool {
        self.ring().has_work()
    }

    /// True when the call at the head is published (or the head moved on).
    pub fn head_ready(&self) -> bool {
        self.ring().head_ready()
    }

    /// Calls appended (or being appended) and not yet taken by a consumer.
    pub fn len(&self) -> usize {
        self.ring().len()
    }

    /// Takes the call at the head, marking it as run by this process.
    pub fn pop(&self) -> Pop {
        self.ring().pop(process::current_pid(), alive)
    }

    /// Frees the cell of position `pos` after its call ran.
    pub fn complete(&self, pos: u64) {
        self.ring().complete(pos);
        self.signal(Event::Space);
    }

    /// Calls run so far (skipped entries included).
    pub fn executed(&self) -> u64 {
        self.ring().executed()
    }

    /// Takes over the calls a dead consumer was running (for the caller to
    /// report as failed, then [`complete`](Self::complete) by position).
    pub fn recover(&self) -> Vec<(u64, Orphan)> {
        self.ring().recover(process::current_pid(), alive)
    }

    /// A snapshot of the cells holding calls: (position, payload, running pid).
    pub fn pending(&self) -> Vec<(u64, Vec<u8>, Option<u32>)> {
        self.ring().pending()
    }

    // ---- the Guard's registration ----------------------------------------

    /// The registered Guard's pid (0: none).
    pub fn guard_pid(&self) -> u32 {
        self.words[H_GUARD].load(Ordering::Acquire) as u32
    }

    /// Registers this process as the Guard, replacing a dead one; returns the
    /// live Guard's pid if there is one.
    pub fn register_guard(&self) -> Result<(), u32> {
        let me = process::current_pid();
        let g = &self.words[H_GUARD];
        loop {
            let cur = g.load(Ordering::Acquire);
            if cur != 0 && cur as u32 != me && alive(cur as u32) {
                return Err(cur as u32);
            }
            if g.compare_exchange(cur, u64::from(me), Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
            {
                return Ok(());
            }
        }
    }

    /// Removes this process's registration.
    pub fn unregister_guard(&self) {
        let me = u64::from(process::current_pid());
        let _ = self.words[H_GUARD].compare_exchange(me, 0, Ordering::AcqRel, Ordering::Relaxed);
        // Waiters re-check the Guard when woken.
        self.signal_all(Event::Done);
    }

    // ---- mailboxes -------------------------------------------------------

    /// The index of `op`'s mailbox, if it has one.
    fn find_mailbox(&self, id: u64) -> Option<usize> {
        let n = self.config.mailboxes;
        let start = (id.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 32) as usize % n;
        (0..n).map(|k| (start + k) % n).find_map(|i| {
            match self.mailbox_words(i)[B_OP].load(Ordering::Acquire) {
                w if w == id => Some(Some(i)),
                0 => Some(None),
                _ => None,
            }
        })?
    }

    fn box_lock(&self) -> process::PidLock<'_> {
        // Held for a short scan; a holder that died is taken over (claims
        // and frees leave each word whole), one stuck is seized.
        process::PidLock::take_within(&self.words[H_BOX_LOCK], WRITER_WAIT)
            .unwrap_or_else(|_| process::PidLock::seize(&self.words[H_BOX_LOCK]))
    }

    /// The index of `op`'s mailbox, claiming one if `create`.
    pub fn mailbox(&self, op: Operator, create: bool) -> Result<Option<usize>, ShmError> {
        let id = op.id();
        if let Some(i) = self.find_mailbox(id) {
            return Ok(Some(i));
        }
        if !create {
            return Ok(None);
        }
        let _lock = self.box_lock();
        if let Some(i) = self.find_mailbox(id) {
            return Ok(Some(i));
        }
        let n = self.config.mailboxes;
        let start = (id.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 32) as usize % n;
        let me = u64::from(process::current_pid());
        let free = (0..n).map(|k| (start + k) % n).find(|&i| {
            let w = self.mailbox_words(i)[B_OP].load(Ordering::Acquire);
            w == 0 || w == BOX_TOMB
        });
        // Full: take over a slot whose owner died with nothing in flight.
        let taken_over = || {
            (0..n).map(|k| (start + k) % n).find(|&i| {
                let b = self.mailbox_words(i);
                let owner = b[B_OWNER].load(Ordering::Acquire);
                let (_, done, _) = self.counters(i);
                let appended = b[B_APPENDED].load(Ordering::Acquire);
                owner != 0
                    && owner != me
                    && appended & CLOSED == 0
                    && appended <= done
                    && b[B_WRITER].load(Ordering::Acquire) == 0
                    && !alive(owner as u32)
            })
        };
        let Some(i) = free.or_else(taken_over) else {
            return Err(ShmError::MailboxesFull { mailboxes: n });
        };
        let b = self.mailbox_words(i);
        // Closed first: an appender that found this box under its old
        // operator cannot count a call in it while it changes hands.
        b[B_APPENDED].store(CLOSED, Ordering::Release);
        b[B_OP].store(id, Ordering::Release);
        b[B_OWNER].store(me, Ordering::Release);
        b[B_DONE].store(0, Ordering::Release);
        b[B_TAKEN].store(0, Ordering::Release);
        b[B_APPENDED].store(0, Ordering::Release);
        Ok(Some(i))
    }

    /// Frees `op`'s mailbox `i` if no call of it is in flight and no result
    /// waits; false if it stays.
    pub fn free_mailbox(&self, op: Operator, i: usize) -> bool {
        let b = self.mailbox_words(i);
        let _lock = self.box_lock();
        let (_, done, taken) = self.counters(i);
        let appended = b[B_APPENDED].load(Ordering::Acquire);
        if b[B_OP].load(Ordering::Acquire) != op.id()
            || appended & CLOSED != 0
            || appended != done
            || done != taken
            || b[B_APPENDED]
                .compare_exchange(
                    appended,
                    appended | CLOSED,
                    Ordering::AcqRel,
                    Ordering::Acquire,
                )
                .is_err()
        {
            return false;
        }
        b[B_OP].store(BOX_TOMB, Ordering::Release);
        b[B_OWNER].store(0, Ordering::Release);
        true
    }

    /// Counts one more call by `op` in its mailbox (claimed if needed):
    /// (mailbox, the call's serial).
    pub fn note_append(&self, op: Operator) -> Result<(usize, u64), ShmError> {
        loop {
            let i = self.mailbox(op, true)?.expect("created");
            let appended = &self.mailbox_words(i)[B_APPENDED];
            let mut a = appended.load(Ordering::Acquire);
            while a & CLOSED == 0 {
                match appended.compare_exchange_weak(a, a + 1, Ordering::AcqRel, Ordering::Acquire)
                {
                    Ok(_) => return Ok((i, a + 1)),
                    Err(now) => a = now,
                }
            }
            // Closed: freed, or changing hands. Look again.
            std::thread::yield_now();
        }
    }

    /// Undoes [`note_append`](Self::note_append) for a call that was not appended.
    pub fn unnote_append(&self, i: usize) {
        self.mailbox_words(i)[B_APPENDED].fetch_sub(1, Ordering::AcqRel);
    }

    /// Stores `reply` as the result of call `serial` of mailbox `i`.
    pub fn store_reply(&self, i: usize, serial: u64, reply: &[u8]) {
        let b = self.mailbox_words(i);
        // Writer lock: free, or held by a dead process, is ours to take. Only
        // the registered Guard writes mailboxes, so a word another live
        // process keeps holding is a corrupt one: after a while, seize it.
        let writer = process::PidLock::take_within(&b[B_WRITER], WRITER_WAIT)
            .unwrap_or_else(|_| process::PidLock::seize(&b[B_WRITER]));
        let v = b[B_VERSION].load(Ordering::Relaxed);
        // An odd version is a dead writer's unfinished write: continue from it.
        let start = if v % 2 == 1 { v } else { v + 1 };
        b[B_VERSION].store(start, Ordering::Relaxed);
        std::sync::atomic::fence(Ordering::Release);
        let reply = &reply[..reply.len().min(self.config.reply_bytes)];
        b[B_LEN].store(reply.len() as u64, Ordering::Relaxed);
        store_bytes(&b[BOX_HEADER..], reply);
        b[B_VERSION].store(start + 1, Ordering::Release);
        b[B_DONE].fetch_max(serial, Ordering::AcqRel);
        drop(writer);
        self.signal(Event::Done);
    }

    /// Largest reply a mailbox holds.
    pub fn reply_bytes(&self) -> usize {
        self.config.reply_bytes
    }

    /// (appended, done, taken) of mailbox `i` (`appended` without its CLOSED
    /// bit: a closed mailbox has nothing in flight).
    pub fn counters(&self, i: usize) -> (u64, u64, u64) {
        let b = self.mailbox_words(i);
        (
            b[B_APPENDED].load(Ordering::Acquire) & !CLOSED,
            b[B_DONE].load(Ordering::Acquire),
            b[B_TAKEN].load(Ordering::Acquire),
        )
    }

    /// Takes the latest result of mailbox `i` if it is newer than the last
    /// taken one and no older than the latest append; `None` otherwise.
    pub fn try_take(&self, i: usize) -> Option<Vec<u8>> {
        let b = self.mailbox_words(i);
        let mut odd_spins = 0u32;
        loop {
            if self.mailbox_words(i)[B_APPENDED].load(Ordering::Acquire) & CLOSED != 0 {
                return None;
            }
            let (appended, done, taken) = self.counters(i);
            if done < appended || done <= taken {
                return None;
            }
            let v1 = b[B_VERSION].load(Ordering::Acquire);
            if v1 % 2 == 1 {
                // A write in progress. One that no live process is making (its
                // writer died, or the word was overwritten) will not finish
                // by itself: report nothing rather than spin (the caller's
                // wait is bounded; the next writer finishes the write).
                odd_spins += 1;
                if odd_spins.is_multiple_of(1024) {
                    let w = b[B_WRITER].load(Ordering::Acquire);
                    if w == 0 || w > u64::from(u32::MAX) || !alive(w as u32) {
                        return None;
                    }
                }
                std::hint::spin_loop();
                continue;
            }
            let len = (b[B_LEN].load(Ordering::Relaxed) as usize).min(self.config.reply_bytes);
            let mut out = Vec::new();
            load_bytes(&b[BOX_HEADER..], len, &mut out);
            std::sync::atomic::fence(Ordering::Acquire);
            if b[B_VERSION].load(Ordering::Relaxed) != v1
                || b[B_DONE].load(Ordering::Acquire) != done
            {
                continue;
            }
            if b[B_TAKEN]
                .compare_exchange(taken, done, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
            {
                return Some(out);
            }
        }
    }

    /// Discards the waiting result of mailbox `i` (the seed's `clean`).
    pub fn discard(&self, i: usize) {
        let b = self.mailbox_words(i);
        let done = b[B_DONE].load(Ordering::Acquire);
        b[B_TAKEN].fetch_max(done, Ordering::AcqRel);
    }

    /// Operators with a result waiting: (operator, serial of the result).
    pub fn waiting_results(&self) -> Vec<(Operator, u64)> {
        (0..self.config.mailboxes)
            .filter_map(|i| {
                let op = self.mailbox_words(i)[B_OP].load(Ordering::Acquire);
                let (_, done, taken) = self.counters(i);
                let op = Operator::from_id(op).filter(|_| op != BOX_TOMB)?;
                (done > taken).then_some((op, done))
            })
            .collect()
    }
}
