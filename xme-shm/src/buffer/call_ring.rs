//! The call buffer's ring: a bounded many-producer, many-consumer queue of
//! fixed-size cells in shared words, safe against processes killed at any
//! instruction. Only the lock-free protocol lives here, so that loom can
//! check it (`--cfg loom`); waiting and mailboxes are in `buffer.rs`.
//!
//! # Cells
//! `tail` and `head` count positions; position `p` uses cell `p % capacity`.
//! Each cell has one state word `seq:32 | tag:32` (seq is `p` truncated):
//!
//! | seq   | tag             | meaning                                      |
//! |-------|-----------------|----------------------------------------------|
//! | p     | 0               | free for the producer of position `p`        |
//! | p     | pid             | producer `pid` is writing it                 |
//! | p + 1 | 0               | published: ready to run                      |
//! | p + 1 | `SKIP`          | its producer died mid-write: never runs      |
//! | p + 1 | pid \| RUNNING  | consumer `pid` took it and runs it           |
//! | p + cap | 0             | done: free for the producer of `p + cap`     |
//!
//! Every transition is one compare-and-swap or store on that word, and the
//! producer's pid is in the word from the first step. So a producer killed at
//! any instruction leaves either nothing, or a cell naming a dead pid, which
//! the consumer turns into `SKIP` (no half entry ever runs); and a consumer
//! killed while running leaves a cell naming it, which the next Guard reports
//! as failed (never runs twice). `tail` and `head` are advanced by whoever
//! sees them lag, so a process killed between steps blocks no one.
//!
//! Ordering: cells are published in claim order of `tail`, and consumed in
//! order of `head`, so calls from one producer thread run in the order it
//! appended them (FIFO per producer); with one consumer (the Guard), they also
//! finish in that order.

use crate::primitive::{AtomicU64, Ordering};
use crate::store::block::{load_bytes, store_bytes};

/// A cell whose producer died while writing it.
pub(crate) const SKIP: u32 = u32::MAX;
/// Tag bit of a cell taken by a consumer (pids are below 2^22 on Linux).
pub(crate) const RUNNING: u32 = 1 << 31;

/// The call buffer's header: the ring's counters and the buffer's sizes.
/// Cells follow it.
#[repr(C)]
pub(crate) struct BufferHeader {
    /// Positions appended (claimed) so far; lags by a few when a producer
    /// died between its claim and advancing it.
    pub tail: AtomicU64,
    /// Positions taken by a consumer so far (lags likewise).
    pub head: AtomicU64,
    /// The registered Guard's pid (0: none).
    pub guard: AtomicU64,
    /// Calls run so far (skipped entries included).
    pub executed: AtomicU64,
    /// Cells of the ring.
    pub capacity: AtomicU64,
    /// Words of one cell.
    pub cell_words: AtomicU64,
    /// Mailboxes.
    pub boxes: AtomicU64,
    /// Words of one mailbox's result.
    pub reply_words: AtomicU64,
    /// Pid-named lock taken to claim or free a mailbox.
    pub box_lock: AtomicU64,
    /// When a wait of the Guard on an empty ring last ran out
    /// (`xme_core::monotonic_ns`; 0: never), for tools showing it lives.
    pub guard_beat: AtomicU64,
    /// Words 10 to 11 once counted each event's sleepers (now in the event
    /// counts before the header).
    _reserved: [AtomicU64; 6],
}
/// Words of the buffer header.
pub(crate) const HEADER_WORDS: usize = 16;
const _: () = assert!(
    std::mem::size_of::<BufferHeader>() == HEADER_WORDS * std::mem::size_of::<AtomicU64>(),
    "the buffer header is HEADER_WORDS words"
);

impl BufferHeader {
    /// The header at the start of the buffer's words.
    #[inline]
    pub fn of(words: &[AtomicU64]) -> &BufferHeader {
        // SAFETY: `BufferHeader` is `#[repr(C)]` and made only of
        // `AtomicU64` fields and an array of them (std's, or loom's in
        // models: the type of `words`).
        unsafe { crate::primitive::view_words(words) }
    }
}

/// A cell's header; the payload's words follow.
#[repr(C)]
struct CellHeader {
    /// `seq:32 | tag:32` (see the module docs).
    state: AtomicU64,
    /// Bytes of the payload.
    len: AtomicU64,
}
/// Words of a cell's header.
pub(crate) const CELL_HEADER: usize = 2;
const _: () =
    assert!(std::mem::size_of::<CellHeader>() == CELL_HEADER * std::mem::size_of::<AtomicU64>());

/// The header of a cell's words.
#[inline]
fn head_of(cell: &[AtomicU64]) -> &CellHeader {
    // SAFETY: `CellHeader` is `#[repr(C)]` and made only of `AtomicU64`
    // fields (std's, or loom's in models: the type of `cell`).
    unsafe { crate::primitive::view_words(cell) }
}
/// Bytes of a payload before the call itself: operator and serial.
pub(crate) const PAYLOAD_HEADER: usize = 16;

/// What [`Ring::pop`] found at the head.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Pop {
    /// A call to run: its position and payload (operator, serial, call).
    Call { pos: u64, payload: Vec<u8> },
    /// Nothing published.
    Empty,
    /// The head call is being written by a live producer.
    Busy,
    /// The cell at the head names a position no consumer or producer can
    /// have given it: the ring is corrupt.
    Corrupt(String),
}

/// A cell's sequence number `d` positions ahead of the head or tail that
/// reads it. Legitimately `d` stays within a few laps of a lagging head or
/// tail; beyond that the cell was not written by the ring's protocol.
fn impossible_lag(d: i32, capacity: usize) -> bool {
    d as i64 > 2 * capacity as i64 + 2
}

/// Whether a cell `d` positions ahead of `pos`, read from `counter` (tail
/// or head), proves the ring corrupt. A reader that paused between loading
/// the counter and the cell (preempted while other processes went round the
/// ring many times) sees the same lag with a stale `pos`: only a counter that
/// still holds `pos` makes the lag impossible.
fn corrupt_lag(counter: &AtomicU64, pos: u64, d: i32, capacity: usize) -> bool {
    impossible_lag(d, capacity) && counter.load(Ordering::Acquire) == pos
}

/// A call whose consumer died while running it.
#[derive(Debug)]
pub(crate) struct Orphan {
    pub consumer: u32,
    pub payload: Vec<u8>,
}

fn state(seq: u32, tag: u32) -> u64 {
    (u64::from(seq) << 32) | u64::from(tag)
}

fn split(st: u64) -> (u32, u32) {
    ((st >> 32) as u32, st as u32)
}

/// The ring over `words`: `HEADER_WORDS` of header (tail, head, executed at
/// their indexes), then `capacity` cells of `cell_words` words.
#[derive(Clone, Copy)]
pub(crate) struct Ring<'m> {
    words: &'m [AtomicU64],
    capacity: usize,
    cell_words: usize,
}

impl<'m> Ring<'m> {
    /// Words a ring of this shape needs.
    pub fn words_for(capacity: usize, cell_words: usize) -> usize {
        HEADER_WORDS + capacity * cell_words
    }

    #[inline]
    fn header(&self) -> &'m BufferHeader {
        BufferHeader::of(self.words)
    }

    /// The ring in `words`, already laid out.
    pub fn attach(words: &'m [AtomicU64], capacity: usize, cell_words: usize) -> Ring<'m> {
        Ring {
            words,
            capacity,
            cell_words,
        }
    }

    /// Lays out an empty ring in zeroed `words`.
    pub fn init(words: &'m [AtomicU64], capacity: usize, cell_words: usize) -> Ring<'m> {
        let ring = Ring::attach(words, capacity, cell_words);
        for p in 0..capacity {
            head_of(ring.cell(p as u64))
                .state
                .store(state(p as u32, 0), Ordering::Release);
        }
        ring
    }

    fn cell(&self, pos: u64) -> &'m [AtomicU64] {
        let i = (pos % self.capacity as u64) as usize;
        let at = HEADER_WORDS + i * self.cell_words;
        &self.words[at..at + self.cell_words]
    }

    fn payload_bytes(&self) -> usize {
        (self.cell_words - CELL_HEADER) * 8
    }

    /// Largest call (after the payload header) a cell holds.
    pub fn call_bytes(&self) -> usize {
        self.payload_bytes() - PAYLOAD_HEADER
    }

    fn read_payload(&self, cell: &[AtomicU64]) -> Vec<u8> {
        let len = (head_of(cell).len.load(Ordering::Relaxed) as usize).min(self.payload_bytes());
        let mut payload = Vec::new();
        load_bytes(&cell[CELL_HEADER..], len, &mut payload);
        payload
    }

    /// Appends a call as process `me` if a cell is free; false when full.
    /// `call` must fit ([`call_bytes`](Self::call_bytes)). `Err`: the cell at
    /// the tail is corrupt.
    pub fn try_push(&self, me: u32, op: u64, serial: u64, call: &[u8]) -> Result<bool, String> {
        debug_assert!(call.len() <= self.call_bytes());
        let tail = &self.header().tail;
        loop {
            let pos = tail.load(Ordering::Acquire);
            let cell = self.cell(pos);
            let st = head_of(cell).state.load(Ordering::Acquire);
            let (seq, tag) = split(st);
            let d = seq.wrapping_sub(pos as u32) as i32;
            if d < 0 {
                return Ok(false); // the lap before still holds this cell
            }
            if impossible_lag(d, self.capacity) {
                if corrupt_lag(tail, pos, d, self.capacity) {
                    return Err(format!(
                        "the call buffer's cell for position {pos} holds sequence {seq}: the ring is corrupt"
                    ));
                }
                continue; // our tail was stale: read it again
            }
            if d == 0 && tag == 0 {
                // Claim: from here on the cell names us.
                if head_of(cell)
                    .state
                    .compare_exchange(st, state(seq, me), Ordering::AcqRel, Ordering::Relaxed)
                    .is_err()
                {
                    continue;
                }
                let _ = tail.compare_exchange(pos, pos + 1, Ordering::AcqRel, Ordering::Relaxed);
                let data = &cell[CELL_HEADER..];
                data[0].store(op, Ordering::Relaxed);
                data[1].store(serial, Ordering::Relaxed);
                store_bytes(&data[2..], call);
                head_of(cell)
                    .len
                    .store((PAYLOAD_HEADER + call.len()) as u64, Ordering::Relaxed);
                // Publish: one store. SeqCst pairs with the waiters' SeqCst
                // sleeper registration (buffer.rs).
                head_of(cell)
                    .state
                    .store(state(seq.wrapping_add(1), 0), Ordering::SeqCst);
                return Ok(true);
            }
            // Claimed by someone else (or tail lags): help tail along.
            let _ = tail.compare_exchange(pos, pos + 1, Ordering::AcqRel, Ordering::Relaxed);
        }
    }

    /// True when the cell at the tail is free (an append would not wait).
    pub fn has_space(&self) -> bool {
        let pos = self.header().tail.load(Ordering::SeqCst);
        let (seq, _) = split(head_of(self.cell(pos)).state.load(Ordering::SeqCst));
        seq.wrapping_sub(pos as u32) as i32 >= 0
    }

    /// True when a published or in-progress call is at the head.
    pub fn has_work(&self) -> bool {
        let pos = self.header().head.load(Ordering::SeqCst);
        let (seq, tag) = split(head_of(self.cell(pos)).state.load(Ordering::SeqCst));
        let d = seq.wrapping_sub(pos as u32) as i32;
        d > 0 || (d == 0 && tag != 0)
    }

    /// True when the call at the head is published (or the head moved on).
    pub fn head_ready(&self) -> bool {
        let pos = self.header().head.load(Ordering::SeqCst);
        let (seq, _) = split(head_of(self.cell(pos)).state.load(Ordering::SeqCst));
        seq.wrapping_sub(pos as u32) as i32 > 0
    }

    /// Calls appended (or being appended) and not yet taken by a consumer.
    pub fn len(&self) -> usize {
        let head = self.header().head.load(Ordering::Acquire);
        let tail = self.header().tail.load(Ordering::Acquire);
        tail.saturating_sub(head) as usize
    }

    /// Takes the call at the head as process `me`; `alive` says whether a
    /// pid still runs (a dead producer's half-written cell is skipped).
    pub fn pop(&self, me: u32, alive: impl Fn(u32) -> bool) -> Pop {
        let head = &self.header().head;
        loop {
            let pos = head.load(Ordering::Acquire);
            let cell = self.cell(pos);
            let st = head_of(cell).state.load(Ordering::Acquire);
            let (seq, tag) = split(st);
            let p = pos as u32;
            match seq.wrapping_sub(p) as i32 {
                d if d < 0 => return Pop::Empty,
                d if corrupt_lag(head, pos, d, self.capacity) => {
                    return Pop::Corrupt(format!(
                        "the call buffer's cell for position {pos} holds sequence {seq}: the ring is corrupt"
                    ));
                }
                // Our head was stale (the ring went round meanwhile): again.
                d if impossible_lag(d, self.capacity) => {}
                0 if tag == 0 => return Pop::Empty,
                0 if alive(tag) => return Pop::Busy,
                0 => {
                    // Its producer died mid-write: the entry never runs.
                    let _ = head_of(cell).state.compare_exchange(
                        st,
                        state(p.wrapping_add(1), SKIP),
                        Ordering::AcqRel,
                        Ordering::Relaxed,
                    );
                }
                1 if tag == 0 || tag == SKIP => {
                    if head_of(cell)
                        .state
                        .compare_exchange(
                            st,
                            state(seq, me | RUNNING),
                            Ordering::AcqRel,
                            Ordering::Relaxed,
                        )
                        .is_err()
                    {
                        continue;
                    }
                    let _ =
                        head.compare_exchange(pos, pos + 1, Ordering::AcqRel, Ordering::Relaxed);
                    if tag == SKIP {
                        self.complete(pos);
                        continue;
                    }
                    return Pop::Call {
                        pos,
                        payload: self.read_payload(cell),
                    };
                }
                // Taken by a consumer (or head lags): help head along.
                _ => {
                    let _ =
                        head.compare_exchange(pos, pos + 1, Ordering::AcqRel, Ordering::Relaxed);
                }
            }
        }
    }

    /// Frees the cell of position `pos` after its call ran.
    pub fn complete(&self, pos: u64) {
        let next = (pos + self.capacity as u64) as u32;
        head_of(self.cell(pos))
            .state
            .store(state(next, 0), Ordering::SeqCst);
        self.header().executed.fetch_add(1, Ordering::Relaxed);
    }

    /// Calls run so far (skipped entries included).
    pub fn executed(&self) -> u64 {
        self.header().executed.load(Ordering::Relaxed)
    }

    /// Takes over, as `me`, the cells a dead consumer was running: returned
    /// for the caller to report as failed, then [`complete`](Self::complete).
    pub fn recover(&self, me: u32, alive: impl Fn(u32) -> bool) -> Vec<(u64, Orphan)> {
        let mut orphans = Vec::new();
        let head = self.header().head.load(Ordering::Acquire);
        let cap = self.capacity as u64;
        // Running cells lie within the lap before head (or at head, if their
        // consumer died before moving it).
        for pos in head.saturating_sub(cap)..=head {
            let cell = self.cell(pos);
            let st = head_of(cell).state.load(Ordering::Acquire);
            let (seq, tag) = split(st);
            if seq == (pos as u32).wrapping_add(1)
                && tag != SKIP
                && tag & RUNNING != 0
                && !alive(tag & !RUNNING)
                && head_of(cell)
                    .state
                    .compare_exchange(
                        st,
                        state(seq, me | RUNNING),
                        Ordering::AcqRel,
                        Ordering::Relaxed,
                    )
                    .is_ok()
            {
                orphans.push((
                    pos,
                    Orphan {
                        consumer: tag & !RUNNING,
                        payload: self.read_payload(cell),
                    },
                ));
            }
        }
        orphans
    }

    /// A snapshot of the cells holding calls: (position, payload, running pid).
    pub fn pending(&self) -> Vec<(u64, Vec<u8>, Option<u32>)> {
        let head = self.header().head.load(Ordering::Acquire);
        let cap = self.capacity as u64;
        let mut out = Vec::new();
        for pos in head.saturating_sub(cap)..head + cap {
            let cell = self.cell(pos);
            let (seq, tag) = split(head_of(cell).state.load(Ordering::Acquire));
            if seq != (pos as u32).wrapping_add(1) || tag == SKIP {
                continue;
            }
            let payload = self.read_payload(cell);
            // Keep the copy only if the cell did not move on meanwhile.
            if head_of(cell).state.load(Ordering::Acquire) >> 32 == u64::from(seq) {
                let running = (tag & RUNNING != 0).then_some(tag & !RUNNING);
                out.push((pos, payload, running));
            }
        }
        out
    }
}

#[cfg(all(test, loom))]
mod loom_models {
    //! `RUSTFLAGS="--cfg loom" cargo test -p xme-shm --release --lib`

    use super::*;
    use loom::sync::Arc;
    use loom::thread;

    const CELL_WORDS: usize = CELL_HEADER + 3; // 16-byte header + 8 bytes of call

    fn model(f: impl Fn() + Sync + Send + 'static) {
        xme_core::sync::loom_model(2, f);
    }

    fn ring_words(capacity: usize) -> Arc<Vec<AtomicU64>> {
        let words: Vec<AtomicU64> = (0..Ring::words_for(capacity, CELL_WORDS))
            .map(|_| AtomicU64::new(0))
            .collect();
        Ring::init(&words, capacity, CELL_WORDS);
        Arc::new(words)
    }

    /// Pops until `n` calls came out; returns their (operator, serial).
    fn drain(ring: Ring<'_>, n: usize, alive: impl Fn(u32) -> bool) -> Vec<(u64, u64)> {
        let mut got = Vec::new();
        while got.len() < n {
            match ring.pop(9, &alive) {
                Pop::Call { pos, payload } => {
                    let word = |i: usize| u64::from_le_bytes(payload[i..i + 8].try_into().unwrap());
                    assert_eq!(payload.len(), PAYLOAD_HEADER + 8);
                    assert_eq!(word(16), word(0) * 100 + word(8), "torn payload");
                    got.push((word(0), word(8)));
                    ring.complete(pos);
                }
                Pop::Empty | Pop::Busy => thread::yield_now(),
                Pop::Corrupt(why) => panic!("{why}"),
            }
        }
        got
    }

    fn push(ring: Ring<'_>, me: u32, op: u64, serial: u64) {
        let call = (op * 100 + serial).to_le_bytes();
        while !ring.try_push(me, op, serial, &call).unwrap() {
            thread::yield_now();
        }
    }

    #[test]
    fn a_producer_and_a_consumer_each_call_once_in_order_through_a_wrap() {
        model(|| {
            let words = ring_words(2);
            let w2 = words.clone();
            let producer = thread::spawn(move || {
                let ring = Ring::attach(&w2, 2, CELL_WORDS);
                push(ring, 1, 1, 1);
                push(ring, 1, 1, 2);
            });
            let ring = Ring::attach(&words, 2, CELL_WORDS);
            let got = drain(ring, 2, |_| true);
            producer.join().unwrap();
            assert_eq!(got, [(1, 1), (1, 2)], "FIFO");
            // Positions 2 and 3 reuse both cells.
            push(ring, 2, 2, 1);
            push(ring, 2, 2, 2);
            assert!(
                !ring.try_push(2, 2, 3, &[0; 8]).unwrap(),
                "full at capacity"
            );
            assert_eq!(drain(ring, 2, |_| true), [(2, 1), (2, 2)]);
            assert_eq!(ring.pop(9, |_| true), Pop::Empty);
            assert_eq!(ring.executed(), 4);
        });
    }

    #[test]
    fn two_producers_race_for_one_cell() {
        model(|| {
            let words = ring_words(2);
            let w2 = words.clone();
            let other = thread::spawn(move || {
                let ring = Ring::attach(&w2, 2, CELL_WORDS);
                push(ring, 1, 1, 1);
            });
            let ring = Ring::attach(&words, 2, CELL_WORDS);
            push(ring, 2, 2, 1);
            other.join().unwrap();
            let mut got = drain(ring, 2, |_| true);
            got.sort();
            assert_eq!(got, [(1, 1), (2, 1)]);
            assert_eq!(ring.len(), 0);
        });
    }

    #[test]
    fn a_producer_dead_after_its_claim_is_skipped_and_blocks_no_one() {
        model(|| {
            let words = ring_words(2);
            let ring = Ring::attach(&words, 2, CELL_WORDS);
            // Producer 7 claimed position 0 and was killed before publishing.
            let cell = ring.cell(0);
            head_of(cell).state.store(state(0, 7), Ordering::Release);
            let w2 = words.clone();
            let producer = thread::spawn(move || {
                let ring = Ring::attach(&w2, 2, CELL_WORDS);
                push(ring, 1, 1, 1);
                push(ring, 1, 1, 2);
            });
            let got = drain(ring, 2, |pid| pid != 7);
            producer.join().unwrap();
            assert_eq!(got, [(1, 1), (1, 2)]);
        });
    }

    #[test]
    fn a_call_of_a_dead_consumer_is_recovered_once() {
        model(|| {
            let words = ring_words(2);
            let ring = Ring::attach(&words, 2, CELL_WORDS);
            push(ring, 1, 1, 1);
            // Consumer 5 takes it and dies while running it.
            assert!(matches!(ring.pop(5, |_| true), Pop::Call { pos: 0, .. }));
            let w2 = words.clone();
            let other = thread::spawn(move || {
                let ring = Ring::attach(&w2, 2, CELL_WORDS);
                let orphans = ring.recover(6, |pid| pid != 5);
                for (pos, _) in &orphans {
                    ring.complete(*pos);
                }
                orphans.len()
            });
            let mine = ring.recover(9, |pid| pid != 5);
            for (pos, o) in &mine {
                assert_eq!(o.consumer, 5);
                ring.complete(*pos);
            }
            let theirs = other.join().unwrap();
            assert_eq!(mine.len() + theirs, 1, "reported exactly once");
            // The ring goes on.
            push(ring, 1, 1, 2);
            assert_eq!(drain(ring, 1, |_| true), [(1, 2)]);
        });
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    /// A reader whose tail or head went stale while the ring went round many
    /// laps reads again; only a lag against a counter that has not moved is
    /// corruption. (Under load, 10 producers and a Guard on 2 cores, an
    /// append once failed with "the ring is corrupt" after a producer was
    /// preempted between its two loads.)
    #[test]
    fn a_stale_position_is_not_corruption() {
        let cap = 8;
        let far = 5 * cap as i32 + 1;
        let counter = AtomicU64::new(1000);
        assert!(
            !corrupt_lag(&counter, 900, far, cap),
            "the counter moved on"
        );
        assert!(
            corrupt_lag(&counter, 1000, far, cap),
            "the counter is current"
        );
        assert!(
            !corrupt_lag(&counter, 1000, cap as i32 + 1, cap),
            "a legal lag"
        );
    }

    #[test]
    fn push_and_pop_still_refuse_a_cell_from_nowhere() {
        let words: Vec<AtomicU64> = (0..Ring::words_for(4, 8))
            .map(|_| AtomicU64::new(0))
            .collect();
        let ring = Ring::init(&words, 4, 8);
        // The cell at the (current) tail and head claims a sequence 100 laps on.
        head_of(ring.cell(0))
            .state
            .store(state(400, 0), Ordering::Relaxed);
        assert!(
            ring.try_push(1, 1, 1, b"x")
                .unwrap_err()
                .contains("the ring is corrupt")
        );
        assert!(matches!(ring.pop(1, |_| true), Pop::Corrupt(_)));
    }
}
