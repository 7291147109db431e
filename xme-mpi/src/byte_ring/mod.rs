//! A single-producer single-consumer byte ring in shared memory: the channel
//! between the main process and one logical process.
//!
//! Frames start on cache lines: `[stamp:u64][len:u32][kind:u32][payload]`,
//! padded to a multiple of 64 bytes; a frame that would cross the end is
//! preceded by a wrap marker. `tail` (producer) and `head` (consumer) count
//! bytes forever. The producer writes the payload and `len`/`kind`, then
//! publishes the frame by storing its stamp (release): the frame's position
//! XOR the run's key. The consumer polls the stamp word at `head` (acquire),
//! so a small frame crosses between cores as one cache line, with no shared
//! counter to pull over as well. Stale bytes from an earlier lap never match:
//! an old stamp names another position, and other bytes would have to guess
//! the 64-bit key. The producer reads `head` only when its last view says the
//! ring is full.
//!
//! Beside the ring, in its header, a *fast lane*: one fixed cache line that
//! carries one small frame at a time, numbered by the two sides, for a
//! blocking call nothing else waits behind (see [`FastLane`]).
//!
//! Waiting: spin, then yield ([`Backoff::timed`]), then sleep on an
//! [`EventCount`]. The side that publishes runs a light fence before
//! looking for sleepers; a sleeper runs the heavy one (see
//! [`xme_core::fence`]) before its last look. Each sleep is bounded so the
//! caller can check its peer is alive.
//!
//! The protocol is model-checked with loom (`--cfg loom`, see
//! `loom_models.rs`): its atomics are then loom's and its data area is
//! memory loom owns ([`data_area`]).

#[cfg(loom)]
use loom::sync::atomic::{AtomicU64, Ordering};
#[cfg(not(loom))]
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

#[cfg(not(loom))]
use xme_core::SharedRegion;
use xme_core::sync::{Backoff, EventCount, Step};

use crate::channel::{Corrupt, RecvChannel, SendChannel, Waited};
use data_area::DataArea;

mod data_area;
#[cfg(all(test, loom))]
mod loom_models;

const KIND_FRAME: u32 = 0;
const KIND_WRAP: u32 = 1;
/// Control words and signals, each on its own cache lines, before the data.
const HEADER_BYTES: usize = 256;
/// Frames start on cache-line boundaries.
const FRAME_ALIGN: usize = 64;
/// Stamp, then length and kind.
const FRAME_HEADER: usize = 16;

/// The ring's control words, each on its own cache line.
#[repr(C)]
struct Control {
    head: AtomicU64,
    _pad0: [AtomicU64; 7],
    tail: AtomicU64,
    _pad1: [AtomicU64; 7],
}
#[cfg(not(loom))]
// SAFETY: only integer atomics (valid for every bit pattern, no pointers);
// zero is an empty ring, other values are checked where they are read.
unsafe impl xme_core::InRegion for Control {}

#[repr(C)]
struct Signals {
    /// Notified by the producer: a consumer may sleep on it.
    data: EventCount,
    /// Notified by the consumer: a producer may sleep on it.
    space: EventCount,
}
#[cfg(not(loom))]
// SAFETY: two `EventCount`s (each InRegion: integer atomics, valid for every
// bit pattern, no pointers), no padding.
unsafe impl xme_core::InRegion for Signals {}

/// The fast lane: one small frame on a cache line that never moves, for a
/// call nothing else waits behind (Open MPI's shared-memory "fast box"). A
/// round trip through the ring crosses a fresh line each way; through the
/// lane, the same two lines each time, which stay in both cores' caches.
#[repr(C, align(64))]
struct FastLane {
    /// `seq ^ key` of the frame in the lane (written last, release).
    stamp: AtomicU64,
    len: AtomicU64,
    payload: [AtomicU64; FAST_WORDS],
}
#[cfg(not(loom))]
// SAFETY: only integer atomics (valid for every bit pattern, no pointers);
// zero is an empty lane (no stamp is zero), a bad length is refused on read.
unsafe impl xme_core::InRegion for FastLane {}

const FAST_WORDS: usize = 6;
/// Largest frame the fast lane carries.
pub(crate) const FAST_BYTES: usize = FAST_WORDS * 8;
/// Where the fast lane lies in the header.
const FAST_OFFSET: usize = HEADER_BYTES - std::mem::size_of::<FastLane>();

// (Loom's atomics are larger: the layout holds for the real ones.)
#[cfg(not(loom))]
const _: () = assert!(
    std::mem::size_of::<Control>() + std::mem::size_of::<Signals>() <= FAST_OFFSET
        && std::mem::size_of::<FastLane>() == 64,
    "ring control words overlap the fast lane"
);

/// Where one ring lies and how its stamps are keyed: what both sides share.
#[derive(Clone, Copy)]
struct RingParts<'r> {
    ctl: &'r Control,
    sig: &'r Signals,
    lane: &'r FastLane,
    data: DataArea<'r>,
    cap: usize,
    /// XORed with a frame's position to make its stamp; top bit set, so no
    /// stamp is zero (the ring starts zeroed).
    key: u64,
}

/// How one side of a ring waits (process-local).
struct Waiting {
    /// Spin then yield. The spin lasts long when every process has a core
    /// (an idle spinner costs nobody anything and answers at once), very
    /// short when processes outnumber cores (a spinner then steals the time
    /// its peer needs to answer); the yields last a while only in the first
    /// case (a peer that shares this core for now runs meanwhile, and no futex
    /// wake-up ties the two to one core again). The spin budget adapts
    /// (see [`Backoff::timed`]).
    backoff: Backoff,
    /// Whether this process registered for heavy fences, so that its side of
    /// each handshake may use a light one (set after fork).
    light: bool,
}

/// The producing side of a ring: the only writer of its frames and of the
/// fast lane. Its methods take `&mut self` and it is not `Sync`, so within a
/// process one thread at a time produces (share it behind a `Mutex`); across
/// processes, [`split`] hands out one producer per ring, which one process
/// keeps after fork and the other drops.
pub(crate) struct Producer<'r> {
    ring: RingParts<'r>,
    /// The last view of `head`: re-read only when it says the ring is full,
    /// so the consumer's line is not pulled over on every push.
    seen_head: u64,
    waiting: Waiting,
}

/// The consuming side of a ring (see [`Producer`] for who may hold it).
pub(crate) struct Consumer<'r> {
    ring: RingParts<'r>,
    /// The sequence number of the fast-lane frame this consumer waits for;
    /// 0: none.
    lane_expects: u64,
    waiting: Waiting,
}

// SAFETY: a Producer is the one writer of its ring's frames, tail and fast
// lane (`split` makes one per ring and it is not Clone); moving it to another
// thread keeps it the only one. Its data area points into a mapping that
// outlives 'r. It is deliberately not Sync: `&mut self` methods plus a Mutex (or one
// owning thread) serialise production.
unsafe impl Send for Producer<'_> {}
// SAFETY: as for Producer, for the reader of frames and the writer of `head`.
unsafe impl Send for Consumer<'_> {}

/// The producer and the consumer of the ring at `offset` of `region`
/// (64-byte aligned), `cap` data bytes (a power of two, at least 128), its
/// stamps keyed by `key`. Call once per ring; after fork, each process keeps
/// the half it uses and drops the other.
#[cfg(not(loom))]
pub(crate) fn split<'r>(
    region: &'r SharedRegion,
    offset: usize,
    cap: usize,
    key: u64,
    spin: Duration,
) -> Result<(Producer<'r>, Consumer<'r>), xme_core::Error> {
    let data = DataArea::new(region, offset + HEADER_BYTES, cap)?;
    if !cap.is_power_of_two() || cap < 2 * FRAME_ALIGN || !data.is_aligned(FRAME_ALIGN) {
        return Err(xme_core::Error::OutOfRegion {
            offset: offset + HEADER_BYTES,
            len: cap,
            size: region.payload_len(),
            align: FRAME_ALIGN,
        });
    }
    let ring = RingParts {
        ctl: region.place(offset)?,
        sig: region.place(offset + std::mem::size_of::<Control>())?,
        lane: region.place(offset + FAST_OFFSET)?,
        data,
        cap,
        key: key | 1 << 63,
    };
    Ok(ring.halves(spin))
}

impl SendChannel for Producer<'_> {
    fn try_send(&mut self, frame: &[u8]) -> bool {
        self.try_push(frame)
    }
    fn wait_send(&mut self, len: usize, max: Duration) -> Waited {
        self.wait_space(len, max)
    }
    fn max_frame(&self) -> usize {
        self.ring.max_payload()
    }
    fn capacity(&self) -> usize {
        self.ring.cap
    }
    fn send_fast(&mut self, seq: u64, frame: &[u8]) -> bool {
        Producer::send_fast(self, seq, frame)
    }
    fn inject_corrupt(&mut self) {
        self.push_corrupt_header()
    }
    fn inject_corrupt_fast(&mut self, seq: u64) {
        self.push_corrupt_fast(seq)
    }
}

impl RecvChannel for Consumer<'_> {
    fn try_recv(&mut self, out: &mut Vec<u8>) -> Result<bool, Corrupt> {
        self.try_pop(out)
    }
    fn wait_recv(&mut self, max: Duration) -> Waited {
        self.wait_data(max)
    }
    fn expect_fast(&mut self, seq: u64) {
        Consumer::expect_fast(self, seq)
    }
    fn recv_fast(&mut self, out: &mut Vec<u8>) -> Result<bool, Corrupt> {
        Consumer::recv_fast(self, out)
    }
}

/// Spin time before sleeping when every process has a core of its own.
pub(crate) const SPIN_DEDICATED: Duration = Duration::from_micros(200);
/// Spin time before sleeping when processes outnumber cores.
pub(crate) const SPIN_SHARED: Duration = Duration::from_micros(2);
/// Yields before sleeping, at least.
const YIELDS: u32 = 4;
/// How long to keep yielding before sleeping when every process has a core.
const YIELD_DEDICATED: Duration = Duration::from_micros(100);

/// Bytes a ring with `cap` data bytes takes in a region.
pub(crate) fn ring_bytes(cap: usize) -> usize {
    HEADER_BYTES + cap
}

impl<'r> RingParts<'r> {
    /// The two sides of this ring, each waiting with a spin of `spin`.
    fn halves(self, spin: Duration) -> (Producer<'r>, Consumer<'r>) {
        (
            Producer {
                ring: self,
                seen_head: 0,
                waiting: Waiting::new(spin),
            },
            Consumer {
                ring: self,
                lane_expects: 0,
                waiting: Waiting::new(spin),
            },
        )
    }

    /// Bytes a frame of `len` payload bytes occupies.
    fn frame_bytes(len: usize) -> usize {
        (FRAME_HEADER + len).next_multiple_of(FRAME_ALIGN)
    }

    /// Largest payload one frame can carry.
    fn max_payload(&self) -> usize {
        // Two largest frames fit in the ring (see `wait_space`).
        (self.cap / 2) / FRAME_ALIGN * FRAME_ALIGN - FRAME_HEADER
    }

    /// Where byte `position` (counted forever) lies in the data area: the
    /// capacity is a power of two, so a mask, not a division, on every
    /// push, pop and poll.
    fn offset(&self, position: u64) -> usize {
        (position & (self.cap as u64 - 1)) as usize
    }

    fn stamp(&self, position: u64) -> u64 {
        position ^ self.key
    }

    /// The stamp word of the frame at data offset `at` (a frame start).
    fn stamp_word(&self, at: usize) -> &'r AtomicU64 {
        debug_assert!(at.is_multiple_of(FRAME_ALIGN));
        self.data.word(at)
    }

    /// The length-and-kind word of the frame at data offset `at`.
    fn kind_word(&self, at: usize) -> &'r AtomicU64 {
        self.data.word(at + 8)
    }

    /// Writes a frame's length and kind, then publishes it with its stamp.
    fn publish(&self, at: usize, position: u64, len: usize, kind: u32) {
        let word = len as u64 | (u64::from(kind) << 32);
        self.kind_word(at).store(word, Ordering::Relaxed);
        self.stamp_word(at)
            .store(self.stamp(position), Ordering::Release);
    }

    /// Whether a frame (or a wrap marker) waits at `head`, or the expected
    /// fast-lane frame `lane_expects` (0: none) is in the lane.
    fn has_data(&self, lane_expects: u64) -> bool {
        let head = self.ctl.head.load(Ordering::Relaxed);
        let pos = self.offset(head);
        self.stamp_word(pos).load(Ordering::Acquire) == self.stamp(head)
            || self.lane_ready(lane_expects)
    }

    fn lane_ready(&self, seq: u64) -> bool {
        seq != 0 && self.lane.stamp.load(Ordering::Acquire) == self.stamp(seq)
    }
}

impl Waiting {
    fn new(spin: Duration) -> Waiting {
        let yield_for = if spin >= SPIN_DEDICATED {
            YIELD_DEDICATED
        } else {
            Duration::ZERO
        };
        // Loom: straight to the event count (a timed spin is not
        // deterministic, and the sleep is the protocol to check).
        let backoff = if cfg!(loom) {
            Backoff::exponential(0, 0)
        } else {
            Backoff::timed(spin, YIELDS, yield_for)
        };
        Waiting {
            backoff,
            light: false,
        }
    }

    fn wait(&mut self, max: Duration, ready: impl Fn() -> bool, events: &EventCount) -> Waited {
        self.backoff.reset();
        loop {
            if ready() {
                self.backoff.ready();
                return Waited::Ready;
            }
            if self.backoff.snooze() == Step::Sleep {
                break;
            }
        }
        let start = Instant::now();
        // Announce, then look: the heavy fence pairs with the publisher's light one.
        let sleeper = events.prepare_wait();
        let ticket = sleeper.ticket_after_heavy_fence();
        if ready() {
            return Waited::Ready;
        }
        sleeper.wait(ticket, Some(max));
        if ready() || start.elapsed() < max {
            Waited::Ready
        } else {
            Waited::Idle
        }
    }
}

impl Producer<'_> {
    /// Lets this side use light fences: call after a successful
    /// [`xme_core::fence::register`] in the process that uses it.
    pub fn use_light_fences(&mut self, registered: bool) {
        self.waiting.light = registered;
    }

    /// After publishing a frame: wakes a consumer that sleeps on the ring.
    fn wake_consumer(&self) {
        let r = &self.ring;
        r.sig.data.notify_after_light_fence(self.waiting.light);
    }

    /// Writes a frame if there is room; false if the ring is full.
    pub fn try_push(&mut self, payload: &[u8]) -> bool {
        let r = self.ring;
        let need = RingParts::frame_bytes(payload.len());
        debug_assert!(payload.len() <= r.max_payload());
        let tail = r.ctl.tail.load(Ordering::Relaxed);
        let pos = r.offset(tail);
        let to_end = r.cap - pos;
        let wrap = if need > to_end { to_end } else { 0 };
        let mut head = self.seen_head;
        if r.cap - ((tail - head) as usize) < need + wrap {
            // Acquire: the consumer is done with the bytes before `head`.
            head = r.ctl.head.load(Ordering::Acquire);
            self.seen_head = head;
            if r.cap - ((tail - head) as usize) < need + wrap {
                return false;
            }
        }
        let mut at = pos;
        if wrap > 0 {
            r.publish(at, tail, wrap, KIND_WRAP);
            at = 0;
        }
        // SAFETY: [at+16, at+16+len) lies inside the data area (the frame fits
        // before the end, checked above) and in the producer's part of the
        // ring, [tail, head + cap), which the consumer does not read; this is
        // the ring's only producer (`&mut self`, one per ring).
        unsafe { r.data.write(at + FRAME_HEADER, payload) };
        r.publish(at, tail + wrap as u64, payload.len(), KIND_FRAME);
        r.ctl
            .tail
            .store(tail + (wrap + need) as u64, Ordering::Relaxed);
        self.wake_consumer();
        true
    }

    /// Puts frame number `seq` (from 1, one at a time: the consumer has
    /// taken the one before) in the fast lane; false if it is too large for
    /// it (send it through the ring instead).
    pub fn send_fast(&mut self, seq: u64, frame: &[u8]) -> bool {
        if frame.len() > FAST_BYTES || seq == 0 {
            return false;
        }
        let lane = self.ring.lane;
        for (word, chunk) in lane.payload.iter().zip(frame.chunks(8)) {
            let mut bytes = [0u8; 8];
            bytes[..chunk.len()].copy_from_slice(chunk);
            word.store(u64::from_le_bytes(bytes), Ordering::Relaxed);
        }
        lane.len.store(frame.len() as u64, Ordering::Relaxed);
        lane.stamp.store(self.ring.stamp(seq), Ordering::Release);
        self.wake_consumer();
        true
    }

    /// Waits until the ring may have room, at most `max`.
    pub fn wait_space(&mut self, need: usize, max: Duration) -> Waited {
        let need = RingParts::frame_bytes(need) * 2;
        let r = self.ring;
        self.waiting.wait(
            max,
            || {
                let used = r.ctl.tail.load(Ordering::Relaxed) - r.ctl.head.load(Ordering::Acquire);
                r.cap - used as usize >= need
            },
            &r.sig.space,
        )
    }

    /// Publishes fast-lane frame `seq` with a length the lane cannot hold
    /// (tests of corrupt channels).
    pub fn push_corrupt_fast(&mut self, seq: u64) {
        self.ring.lane.len.store(u64::MAX, Ordering::Relaxed);
        self.ring
            .lane
            .stamp
            .store(self.ring.stamp(seq), Ordering::Release);
        self.wake_consumer();
    }

    /// Publishes a frame whose length does not fit the ring (tests of corrupt channels).
    pub fn push_corrupt_header(&mut self) {
        let r = self.ring;
        let tail = r.ctl.tail.load(Ordering::Relaxed);
        let pos = r.offset(tail);
        r.publish(pos, tail, u32::MAX as usize, KIND_FRAME);
        r.ctl
            .tail
            .store(tail + FRAME_ALIGN as u64, Ordering::Relaxed);
        self.wake_consumer();
    }
}

impl Consumer<'_> {
    /// Lets this side use light fences (see [`Producer::use_light_fences`]).
    pub fn use_light_fences(&mut self, registered: bool) {
        self.waiting.light = registered;
    }

    /// Reads the next frame into `out`; false if the ring is empty.
    pub fn try_pop(&mut self, out: &mut Vec<u8>) -> Result<bool, Corrupt> {
        let r = self.ring;
        let mut head = r.ctl.head.load(Ordering::Relaxed);
        loop {
            let pos = r.offset(head);
            // Acquire: the frame's bytes, written before its stamp, are visible.
            if r.stamp_word(pos).load(Ordering::Acquire) != r.stamp(head) {
                return Ok(false);
            }
            let word = r.kind_word(pos).load(Ordering::Relaxed);
            let (len, kind) = (word as u32 as usize, (word >> 32) as u32);
            match kind {
                KIND_WRAP if len == r.cap - pos => {
                    head += len as u64;
                    r.ctl.head.store(head, Ordering::Release);
                    continue;
                }
                KIND_FRAME
                    if len <= r.max_payload() && pos + RingParts::frame_bytes(len) <= r.cap =>
                {
                    // SAFETY: the frame lies inside the data area (checked just
                    // above) and was published by its stamp (acquired above);
                    // the producer does not touch it until `head` passes it,
                    // and only this consumer (`&mut self`) moves `head`.
                    unsafe { r.data.read(pos + FRAME_HEADER, len, out) };
                    r.ctl
                        .head
                        .store(head + RingParts::frame_bytes(len) as u64, Ordering::Release);
                    r.sig.space.notify_after_light_fence(self.waiting.light);
                    return Ok(true);
                }
                _ => {
                    return Err(Corrupt(format!(
                        "frame header {word:#018x} at byte {pos} does not fit a ring of {} bytes",
                        r.cap
                    )));
                }
            }
        }
    }

    /// Whether a frame waits in the ring or the expected one in the lane.
    #[cfg(test)]
    fn has_data(&self) -> bool {
        self.ring.has_data(self.lane_expects)
    }

    /// Makes this consumer wait for fast-lane frame `seq` too (0: none).
    pub fn expect_fast(&mut self, seq: u64) {
        self.lane_expects = seq;
    }

    /// Takes the expected fast-lane frame into `out`, if it is there; the
    /// lane then expects nothing until told again.
    pub fn recv_fast(&mut self, out: &mut Vec<u8>) -> Result<bool, Corrupt> {
        let r = self.ring;
        if !r.lane_ready(self.lane_expects) {
            return Ok(false);
        }
        let len = r.lane.len.load(Ordering::Relaxed) as usize;
        if len > FAST_BYTES {
            return Err(Corrupt(format!(
                "fast-lane frame of {len} bytes, at most {FAST_BYTES} fit"
            )));
        }
        out.clear();
        for word in &r.lane.payload[..len.div_ceil(8)] {
            out.extend_from_slice(&word.load(Ordering::Relaxed).to_le_bytes());
        }
        out.truncate(len);
        self.lane_expects = 0;
        Ok(true)
    }

    /// Waits until the ring may hold a frame, at most `max`.
    pub fn wait_data(&mut self, max: Duration) -> Waited {
        let (r, expects) = (self.ring, self.lane_expects);
        self.waiting.wait(max, || r.has_data(expects), &r.sig.data)
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    fn ring(region: &SharedRegion, cap: usize) -> (Producer<'_>, Consumer<'_>) {
        split(region, 0, cap, 0x1234_5678_9abc_def0, SPIN_SHARED).unwrap()
    }

    #[test]
    fn frames_cross_in_order_through_many_wraps() {
        let region = SharedRegion::anonymous(ring_bytes(4096)).unwrap();
        let (mut p, mut c) = ring(&region, 4096);
        let mut out = Vec::new();
        let mut next_in = 0u32;
        let mut next_out = 0u32;
        // Frames of varying sizes, so that wraps land at many offsets.
        while next_out < 5000 {
            let len = (next_in as usize * 7) % 300;
            let mut frame = next_in.to_le_bytes().to_vec();
            frame.resize(4 + len, next_in as u8);
            if p.try_push(&frame) {
                next_in += 1;
                continue;
            }
            while c.try_pop(&mut out).unwrap() {
                let n = u32::from_le_bytes(out[..4].try_into().unwrap());
                assert_eq!(n, next_out);
                assert_eq!(out.len(), 4 + (n as usize * 7) % 300);
                assert!(out[4..].iter().all(|&b| b == n as u8));
                next_out += 1;
            }
        }
        assert!(!c.try_pop(&mut out).unwrap() || next_in > next_out);
    }

    #[test]
    fn a_full_ring_refuses_and_stale_bytes_are_not_frames() {
        let region = SharedRegion::anonymous(ring_bytes(1024)).unwrap();
        let (mut p, mut c) = ring(&region, 1024);
        let mut out = Vec::new();
        assert!(!c.try_pop(&mut out).unwrap(), "a zeroed ring is empty");
        let mut pushed = 0;
        while p.try_push(&[7u8; 100]) {
            pushed += 1;
        }
        assert_eq!(pushed, 1024 / 128);
        for _ in 0..pushed {
            assert!(c.try_pop(&mut out).unwrap());
        }
        // Every byte now holds an old frame: none of it reads as a new one.
        assert!(!c.try_pop(&mut out).unwrap());
        assert!(!c.has_data());
    }

    #[test]
    fn the_fast_lane_carries_the_expected_frame_once() {
        let region = SharedRegion::anonymous(ring_bytes(1024)).unwrap();
        let (mut p, mut c) = ring(&region, 1024);
        let mut out = Vec::new();
        assert!(
            !c.recv_fast(&mut out).unwrap(),
            "nothing expected, nothing read"
        );
        assert!(
            !p.send_fast(1, &[1u8; FAST_BYTES + 1]),
            "too large for the lane"
        );
        assert!(!p.send_fast(0, b"x"), "sequence numbers start at 1");
        c.expect_fast(1);
        assert!(!c.has_data());
        assert!(p.send_fast(1, b"hello, fast lane"));
        assert!(c.has_data());
        assert!(c.recv_fast(&mut out).unwrap());
        assert_eq!(out, b"hello, fast lane");
        assert!(!c.recv_fast(&mut out).unwrap(), "taken once");
        c.expect_fast(2);
        assert!(!c.has_data(), "the old frame is not the next one");
        assert!(p.send_fast(2, &[7u8; FAST_BYTES]));
        assert!(c.recv_fast(&mut out).unwrap());
        assert_eq!(out, [7u8; FAST_BYTES]);
        // The ring beside it is untouched.
        assert!(!c.try_pop(&mut out).unwrap());
        c.expect_fast(3);
        p.push_corrupt_fast(3);
        assert!(
            c.recv_fast(&mut out)
                .unwrap_err()
                .0
                .contains("fast-lane frame")
        );
    }

    #[test]
    fn a_corrupt_header_is_reported() {
        let region = SharedRegion::anonymous(ring_bytes(1024)).unwrap();
        let (mut p, mut c) = ring(&region, 1024);
        p.push_corrupt_header();
        let err = c.try_pop(&mut Vec::new()).unwrap_err();
        assert!(err.0.contains("does not fit"), "{}", err.0);
    }
}
