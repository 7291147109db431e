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
//! Three [`EventCount`]s (`work`, `space`, `done`) before the header: a
//! waiter announces itself, re-checks, and sleeps; a signaller wakes only
//! when someone sleeps.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use xme_core::sync::{EventCount, SeqLock};
use xme_core::{Mapped, Operator, SharedRegion, process};

use crate::ShmError;
use crate::buffer::call_ring::{
    BufferHeader, CELL_HEADER, HEADER_WORDS, Orphan, PAYLOAD_HEADER, Pop, Ring,
};
use crate::store::block::{load_bytes, store_bytes, words};

// The header (`BufferHeader`) is declared with the ring, which uses its first words.
// Words 9 to 11 once counted each event's sleepers (now in its EventCount).
/// The three event counts, before the header.
const FUTEX_BYTES: usize = 64;
const _: () = assert!(3 * std::mem::size_of::<EventCount>() <= FUTEX_BYTES);

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

/// A mailbox's header; its result's words follow it.
#[repr(C)]
struct MailboxHeader {
    /// The operator's id, 0 (never used) or `BOX_TOMB` (freed).
    op: AtomicU64,
    /// Serial of the operator's latest call, with the `CLOSED` bit.
    appended: AtomicU64,
    /// Serial of the latest result stored.
    done: AtomicU64,
    /// Serial of the latest result taken.
    taken: AtomicU64,
    /// Guards `len` and the result words (written in place by the Guard).
    result: SeqLock,
    /// Bytes of the latest result.
    len: AtomicU64,
    /// Pid of the process that claimed the mailbox.
    owner: AtomicU64,
}
// SAFETY: `#[repr(C)]` of `AtomicU64`s and a `SeqLock` (itself InRegion):
// no padding, no pointers, valid for every bit pattern; every field is
// range-checked or compared where it is read.
unsafe impl xme_core::InRegion for MailboxHeader {}

const BOX_HEADER: usize = std::mem::size_of::<MailboxHeader>() / 8;
const _: () = assert!(
    BOX_HEADER == 8,
    "the mailbox layout changed: bump REGION_VERSION"
);

/// Mailbox `i`: its header and its result's words.
struct Mailbox<'a> {
    header: &'a MailboxHeader,
    data: &'a [AtomicU64],
}

impl<'a> std::ops::Deref for Mailbox<'a> {
    type Target = MailboxHeader;
    fn deref(&self) -> &MailboxHeader {
        self.header
    }
}
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
    events: Mapped<[EventCount]>,
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
            events: region.slice_owned(offset, 3)?,
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
        let h = BufferHeader::of(&b.words);
        h.capacity.store(config.capacity as u64, Ordering::Relaxed);
        h.cell_words
            .store(config.cell_words() as u64, Ordering::Relaxed);
        h.boxes.store(config.mailboxes as u64, Ordering::Relaxed);
        h.reply_words
            .store(words(config.reply_bytes) as u64, Ordering::Relaxed);
        Ring::init(&b.words, config.capacity, config.cell_words());
        Ok(b)
    }

    /// Maps the buffer another process laid out at `offset`.
    pub fn attach(region: &Arc<SharedRegion>, offset: usize) -> Result<CallBuffer, ShmError> {
        let h = BufferHeader::of(region.slice(offset + FUTEX_BYTES, HEADER_WORDS)?);
        let cell_words = h.cell_words.load(Ordering::Acquire) as usize;
        let reply_words = h.reply_words.load(Ordering::Acquire) as usize;
        let config = BufferConfig {
            capacity: h.capacity.load(Ordering::Acquire) as usize,
            call_bytes: (cell_words.saturating_sub(CELL_HEADER) * 8).saturating_sub(PAYLOAD_HEADER),
            mailboxes: h.boxes.load(Ordering::Acquire) as usize,
            reply_bytes: reply_words * 8,
        };
        config
            .check()
            .map_err(|e| ShmError::BadLayout(format!("call buffer header: {e}")))?;
        CallBuffer::map(region, offset, config)
    }

    fn header(&self) -> &BufferHeader {
        BufferHeader::of(&self.words)
    }

    pub fn config(&self) -> BufferConfig {
        self.config
    }

    /// The call ring in the buffer's words.
    fn ring(&self) -> Ring<'_> {
        Ring::attach(&self.words, self.config.capacity, self.config.cell_words())
    }

    fn mailbox_at(&self, i: usize) -> Mailbox<'_> {
        let bw = self.config.box_words();
        let at = Ring::words_for(self.config.capacity, self.config.cell_words()) + i * bw;
        let words = &self.words[at..at + bw];
        Mailbox {
            header: xme_core::view(words).expect("a mailbox is longer than its header"),
            data: &words[BOX_HEADER..],
        }
    }

    // ---- events ----------------------------------------------------------

    /// Wakes the sleepers of `e`, if any.
    pub fn signal(&self, e: Event) {
        self.events[e as usize].notify();
    }

    /// Wakes every sleeper of `e`, announced or not.
    pub fn signal_all(&self, e: Event) {
        self.events[e as usize].notify_all();
    }

    /// Sleeps until `e` is signalled or `timeout` passes, unless `ready()`
    /// already holds after announcing (so no signal is missed).
    pub fn wait(&self, e: Event, timeout: Duration, ready: impl Fn() -> bool) {
        let sleeper = self.events[e as usize].prepare_wait();
        let ticket = sleeper.ticket();
        if !ready() {
            sleeper.wait(ticket, Some(timeout));
        }
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
        self.header().guard.load(Ordering::Acquire) as u32
    }

    /// Records that the Guard is looking at the ring now (see
    /// `BufferHeader::guard_beat`): called when a wait on an empty ring ran
    /// out, never on a call's path.
    pub fn guard_beat(&self) {
        self.header()
            .guard_beat
            .store(xme_core::monotonic_ns(), Ordering::Relaxed);
    }

    /// Registers this process as the Guard, replacing a dead one; returns the
    /// live Guard's pid if there is one.
    pub fn register_guard(&self) -> Result<(), u32> {
        let me = process::current_pid();
        let g = &self.header().guard;
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
        let _ = self
            .header()
            .guard
            .compare_exchange(me, 0, Ordering::AcqRel, Ordering::Relaxed);
        // Waiters re-check the Guard when woken.
        self.signal_all(Event::Done);
    }

    // ---- mailboxes -------------------------------------------------------

    /// The index of `op`'s mailbox, if it has one.
    fn find_mailbox(&self, id: u64) -> Option<usize> {
        let n = self.config.mailboxes;
        let start = (id.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 32) as usize % n;
        (0..n).map(|k| (start + k) % n).find_map(|i| {
            match self.mailbox_at(i).op.load(Ordering::Acquire) {
                w if w == id => Some(Some(i)),
                0 => Some(None),
                _ => None,
            }
        })?
    }

    fn box_lock(&self) -> xme_core::sync::PidLock<'_> {
        // Held for a short scan; a holder that died is taken over (claims
        // and frees leave each word whole), one stuck is seized.
        xme_core::sync::PidLock::take_within(&self.header().box_lock, WRITER_WAIT)
            .unwrap_or_else(|_| xme_core::sync::PidLock::seize(&self.header().box_lock))
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
            let w = self.mailbox_at(i).op.load(Ordering::Acquire);
            w == 0 || w == BOX_TOMB
        });
        // Full: take over a slot whose owner died with nothing in flight.
        let taken_over = || {
            (0..n).map(|k| (start + k) % n).find(|&i| {
                let b = self.mailbox_at(i);
                let owner = b.owner.load(Ordering::Acquire);
                let (_, done, _) = self.counters(i);
                let appended = b.appended.load(Ordering::Acquire);
                owner != 0
                    && owner != me
                    && appended & CLOSED == 0
                    && appended <= done
                    && !b.result.is_held()
                    && !alive(owner as u32)
            })
        };
        let Some(i) = free.or_else(taken_over) else {
            return Err(ShmError::MailboxesFull { mailboxes: n });
        };
        let b = self.mailbox_at(i);
        // Closed first: an appender that found this box under its old
        // operator cannot count a call in it while it changes hands.
        b.appended.store(CLOSED, Ordering::Release);
        b.op.store(id, Ordering::Release);
        b.owner.store(me, Ordering::Release);
        b.done.store(0, Ordering::Release);
        b.taken.store(0, Ordering::Release);
        b.appended.store(0, Ordering::Release);
        Ok(Some(i))
    }

    /// Frees `op`'s mailbox `i` if no call of it is in flight and no result
    /// waits; false if it stays.
    pub fn free_mailbox(&self, op: Operator, i: usize) -> bool {
        let b = self.mailbox_at(i);
        let _lock = self.box_lock();
        let (_, done, taken) = self.counters(i);
        let appended = b.appended.load(Ordering::Acquire);
        if b.op.load(Ordering::Acquire) != op.id()
            || appended & CLOSED != 0
            || appended != done
            || done != taken
            || b.appended
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
        b.op.store(BOX_TOMB, Ordering::Release);
        b.owner.store(0, Ordering::Release);
        true
    }

    /// Counts one more call by `op` in its mailbox (claimed if needed):
    /// (mailbox, the call's serial).
    pub fn note_append(&self, op: Operator) -> Result<(usize, u64), ShmError> {
        loop {
            let i = self.mailbox(op, true)?.expect("created");
            let appended = &self.mailbox_at(i).appended;
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
        self.mailbox_at(i).appended.fetch_sub(1, Ordering::AcqRel);
    }

    /// Stores `reply` as the result of call `serial` of mailbox `i`.
    pub fn store_reply(&self, i: usize, serial: u64, reply: &[u8]) {
        let b = self.mailbox_at(i);
        // Writer word: free, or held by a dead process, is ours to take
        // (continuing its write). Only the registered Guard writes mailboxes,
        // so a word another live process keeps holding is a corrupt one:
        // after a while, seize it.
        {
            let _write = b.result.write_in_place_or_seize(WRITER_WAIT);
            let reply = &reply[..reply.len().min(self.config.reply_bytes)];
            b.len.store(reply.len() as u64, Ordering::Relaxed);
            store_bytes(b.data, reply);
        }
        b.done.fetch_max(serial, Ordering::AcqRel);
        self.signal(Event::Done);
    }

    /// Largest reply a mailbox holds.
    pub fn reply_bytes(&self) -> usize {
        self.config.reply_bytes
    }

    /// (appended, done, taken) of mailbox `i` (`appended` without its CLOSED
    /// bit: a closed mailbox has nothing in flight).
    pub fn counters(&self, i: usize) -> (u64, u64, u64) {
        let b = self.mailbox_at(i);
        (
            b.appended.load(Ordering::Acquire) & !CLOSED,
            b.done.load(Ordering::Acquire),
            b.taken.load(Ordering::Acquire),
        )
    }

    /// Takes the latest result of mailbox `i` if it is newer than the last
    /// taken one and no older than the latest append; `None` otherwise.
    pub fn try_take(&self, i: usize) -> Option<Vec<u8>> {
        let b = self.mailbox_at(i);
        let mut odd_spins = 0u32;
        loop {
            if b.appended.load(Ordering::Acquire) & CLOSED != 0 {
                return None;
            }
            let (appended, done, taken) = self.counters(i);
            if done < appended || done <= taken {
                return None;
            }
            let Some(stamp) = b.result.read_begin() else {
                // A write in progress. One that no live process is making (its
                // writer died, or the word was overwritten) will not finish
                // by itself: report nothing rather than spin (the caller's
                // wait is bounded; the next writer finishes the write).
                odd_spins += 1;
                if odd_spins.is_multiple_of(1024) && !b.result.writer_alive() {
                    return None;
                }
                std::hint::spin_loop();
                continue;
            };
            let len = (b.len.load(Ordering::Relaxed) as usize).min(self.config.reply_bytes);
            let mut out = Vec::new();
            load_bytes(b.data, len, &mut out);
            if !b.result.read_validate(stamp) || b.done.load(Ordering::Acquire) != done {
                continue;
            }
            if b.taken
                .compare_exchange(taken, done, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
            {
                return Some(out);
            }
        }
    }

    /// Discards the waiting result of mailbox `i` (the seed's `clean`).
    pub fn discard(&self, i: usize) {
        let b = self.mailbox_at(i);
        let done = b.done.load(Ordering::Acquire);
        b.taken.fetch_max(done, Ordering::AcqRel);
    }

    /// Operators with a result waiting: (operator, serial of the result).
    pub fn waiting_results(&self) -> Vec<(Operator, u64)> {
        (0..self.config.mailboxes)
            .filter_map(|i| {
                let op = self.mailbox_at(i).op.load(Ordering::Acquire);
                let (_, done, taken) = self.counters(i);
                let op = Operator::from_id(op).filter(|_| op != BOX_TOMB)?;
                (done > taken).then_some((op, done))
            })
            .collect()
    }
}

/// The call buffer's counters, read from outside with loads only (for
/// tools such as the `xme` command).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct BufferCensus {
    /// The registered Guard's pid (0: none).
    pub guard_pid: u32,
    /// Calls the Guard ran so far.
    pub executed: u64,
    /// Calls appended and not yet taken by the Guard.
    pub queued: u64,
    /// Cells of the ring.
    pub capacity: u64,
    /// `monotonic_ns` when a wait of the Guard on an empty ring last ran
    /// out (0: never).
    pub guard_beat: u64,
}

/// Reads the buffer at `offset` bytes into the region's payload `words`.
pub(crate) fn census(payload: &[AtomicU64], offset: usize) -> Option<BufferCensus> {
    let start = (offset + FUTEX_BYTES) / 8;
    let h = BufferHeader::of(payload.get(start..start + HEADER_WORDS)?);
    let tail = h.tail.load(Ordering::Relaxed);
    let head = h.head.load(Ordering::Relaxed);
    Some(BufferCensus {
        guard_pid: h.guard.load(Ordering::Relaxed) as u32,
        executed: h.executed.load(Ordering::Relaxed),
        queued: tail.saturating_sub(head),
        capacity: h.capacity.load(Ordering::Relaxed),
        guard_beat: h.guard_beat.load(Ordering::Relaxed),
    })
}
