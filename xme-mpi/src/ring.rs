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
//! Waiting: spin, then yield, then sleep on a futex eventcount. The side that
//! publishes runs a light fence before looking for sleepers; a sleeper runs
//! the heavy one (see [`xme_core::fence`]) before its last look. Each sleep is
//! bounded so the caller can check its peer is alive.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use xme_core::{SharedRegion, fence, futex};

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
// SAFETY: only atomics; zero is an empty ring.
unsafe impl xme_core::InRegion for Control {}

#[repr(C)]
struct Signals {
    /// Bumped by the producer when a consumer may sleep.
    data_seq: AtomicU32,
    data_sleepers: AtomicU32,
    /// Bumped by the consumer when a producer may sleep.
    space_seq: AtomicU32,
    space_sleepers: AtomicU32,
}
// SAFETY: only atomics.
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
// SAFETY: only atomics; zero is an empty lane (no stamp is zero).
unsafe impl xme_core::InRegion for FastLane {}

const FAST_WORDS: usize = 6;
/// Largest frame the fast lane carries.
pub(crate) const FAST_BYTES: usize = FAST_WORDS * 8;
/// Where the fast lane lies in the header.
const FAST_OFFSET: usize = HEADER_BYTES - std::mem::size_of::<FastLane>();

const _: () = assert!(
    std::mem::size_of::<Control>() + std::mem::size_of::<Signals>() <= FAST_OFFSET
        && std::mem::size_of::<FastLane>() == 64,
    "ring control words overlap the fast lane"
);

/// One ring inside a region (the region outlives it).
pub(crate) struct Ring<'r> {
    ctl: &'r Control,
    sig: &'r Signals,
    lane: &'r FastLane,
    /// The sequence number of the fast-lane frame this process's consumer
    /// waits for; 0: none (process-local).
    lane_expects: AtomicU64,
    data: *mut u8,
    cap: usize,
    /// XORed with a frame's position to make its stamp; top bit set, so no
    /// stamp is zero (the ring starts zeroed).
    key: u64,
    /// Longest spin before yielding: long when every process has a core
    /// (an idle spinner costs nobody anything and answers at once), very short
    /// when processes outnumber cores (a spinner then steals the time its peer
    /// needs to answer).
    spin: Duration,
    /// This process's current spin budget in nanoseconds, at most `spin`:
    /// cut to a sixteenth each time a spin finds nothing, doubled each time
    /// one succeeds. Two processes that share a core for a while (a fork
    /// child starts on its parent's CPU until the scheduler moves it) would
    /// otherwise each burn a full `spin` per wait while the other cannot run.
    spin_budget: AtomicU64,
    /// The producer's last view of `head` (process-local): re-read only when
    /// it says the ring is full, so the consumer's line is not pulled over
    /// on every push.
    seen_head: AtomicU64,
    /// Whether this process registered for heavy fences, so that its side of
    /// each handshake may use a light one (process-local, set after fork).
    light: AtomicBool,
}

// SAFETY: the ring is used by one producer and one consumer (callers serialise
// each side with a mutex); `data` accesses are confined to the regions the
// SPSC protocol gives each side, synchronised by the acquire/release stamps
// and `head`.
unsafe impl Send for Ring<'_> {}
// SAFETY: as above.
unsafe impl Sync for Ring<'_> {}

/// The frame read or written does not follow the ring's format.
#[derive(Debug)]
pub(crate) struct Corrupt(pub String);

/// How a wait ended.
pub(crate) enum Waited {
    /// Something changed: try again.
    Ready,
    /// The bounded sleep passed: check the peer, then wait again.
    Idle,
}

/// How frames travel between the main process and one logical process, in
/// one direction. The shared-memory [`Ring`] is today's only kind; a backend
/// over a real MPI library or sockets would implement this too.
pub(crate) trait Channel: Send + Sync {
    /// Writes a frame if there is room.
    fn try_send(&self, frame: &[u8]) -> bool;
    /// Waits at most `max` for room for a frame of `len` bytes.
    fn wait_send(&self, len: usize, max: Duration) -> Waited;
    /// Reads the next frame into `out`, if any.
    fn try_recv(&self, out: &mut Vec<u8>) -> Result<bool, Corrupt>;
    /// Waits at most `max` for a frame.
    fn wait_recv(&self, max: Duration) -> Waited;
    /// Largest frame the channel carries.
    fn max_frame(&self) -> usize;
    /// Bytes the channel holds.
    fn capacity(&self) -> usize;
    /// Publishes a frame header that breaks the format (tests of broken channels).
    fn inject_corrupt(&self);
    /// Publishes fast frame `seq` with a header that breaks the format (tests).
    fn inject_corrupt_fast(&self, _seq: u64) {}
    /// Sends frame `seq` (from 1) of a one-at-a-time exchange by the
    /// channel's fastest path; false if it has none for this frame (then
    /// [`try_send`](Self::try_send) it).
    fn send_fast(&self, _seq: u64, _frame: &[u8]) -> bool {
        false
    }
    /// Makes the receiver wait for fast frame `seq` as well (0: none).
    fn expect_fast(&self, _seq: u64) {}
    /// Takes the expected fast frame, if it arrived.
    fn recv_fast(&self, _out: &mut Vec<u8>) -> Result<bool, Corrupt> {
        Ok(false)
    }
}

impl Channel for Ring<'_> {
    fn try_send(&self, frame: &[u8]) -> bool {
        self.try_push(frame)
    }
    fn wait_send(&self, len: usize, max: Duration) -> Waited {
        self.wait_space(len, max)
    }
    fn try_recv(&self, out: &mut Vec<u8>) -> Result<bool, Corrupt> {
        self.try_pop(out)
    }
    fn wait_recv(&self, max: Duration) -> Waited {
        self.wait_data(max)
    }
    fn max_frame(&self) -> usize {
        self.max_payload()
    }
    fn capacity(&self) -> usize {
        self.cap
    }
    fn inject_corrupt(&self) {
        self.push_corrupt_header()
    }
    fn inject_corrupt_fast(&self, seq: u64) {
        self.push_corrupt_fast(seq)
    }
    fn send_fast(&self, seq: u64, frame: &[u8]) -> bool {
        Ring::send_fast(self, seq, frame)
    }
    fn expect_fast(&self, seq: u64) {
        Ring::expect_fast(self, seq)
    }
    fn recv_fast(&self, out: &mut Vec<u8>) -> Result<bool, Corrupt> {
        Ring::recv_fast(self, out)
    }
}

/// Spin time before sleeping when every process has a core of its own.
pub(crate) const SPIN_DEDICATED: Duration = Duration::from_micros(200);
/// Spin time before sleeping when processes outnumber cores.
pub(crate) const SPIN_SHARED: Duration = Duration::from_micros(2);
/// The spin budget never falls below this (about 40 polls).
const MIN_SPIN: Duration = Duration::from_micros(1);
/// Yields before sleeping, at least.
const YIELDS: u32 = 4;
/// How long to keep yielding before sleeping when every process has a core.
const YIELD_DEDICATED: Duration = Duration::from_micros(100);

impl<'r> Ring<'r> {
    /// Bytes a ring with `cap` data bytes takes in a region.
    pub fn bytes(cap: usize) -> usize {
        HEADER_BYTES + cap
    }

    /// The ring at `offset` of `region` (64-byte aligned), `cap` data bytes (a
    /// power of two, at least 128), its stamps keyed by `key`.
    pub fn at(
        region: &'r SharedRegion,
        offset: usize,
        cap: usize,
        key: u64,
        spin: Duration,
    ) -> Result<Ring<'r>, xme_core::Error> {
        let data = region.raw(offset + HEADER_BYTES, cap)?;
        if !cap.is_power_of_two()
            || cap < 2 * FRAME_ALIGN
            || !(data as usize).is_multiple_of(FRAME_ALIGN)
        {
            return Err(xme_core::Error::OutOfRegion {
                offset: offset + HEADER_BYTES,
                len: cap,
                size: region.payload_len(),
                align: FRAME_ALIGN,
            });
        }
        Ok(Ring {
            ctl: region.place(offset)?,
            sig: region.place(offset + std::mem::size_of::<Control>())?,
            lane: region.place(offset + FAST_OFFSET)?,
            lane_expects: AtomicU64::new(0),
            data,
            cap,
            key: key | 1 << 63,
            spin,
            spin_budget: AtomicU64::new(spin.as_nanos() as u64),
            seen_head: AtomicU64::new(0),
            light: AtomicBool::new(false),
        })
    }

    /// Lets this process's side use light fences: call after a successful
    /// [`fence::register`] in the process that uses this ring.
    pub fn use_light_fences(&self, registered: bool) {
        self.light.store(registered, Ordering::Relaxed);
    }

    /// After publishing a frame: wakes a consumer that sleeps on the ring.
    fn wake_consumer(&self) {
        self.wake(&self.sig.data_seq, &self.sig.data_sleepers);
    }

    /// After freeing space: wakes a producer that sleeps on the ring.
    fn wake_producer(&self) {
        self.wake(&self.sig.space_seq, &self.sig.space_sleepers);
    }

    /// The publishing side of the eventcount: the light fence orders the
    /// store just made before the look for sleepers (who fenced heavily after
    /// announcing themselves, see `wait`).
    fn wake(&self, seq: &AtomicU32, sleepers: &AtomicU32) {
        fence::light(self.light.load(Ordering::Relaxed));
        if sleepers.load(Ordering::Relaxed) > 0 {
            seq.fetch_add(1, Ordering::SeqCst);
            futex::wake(seq, u32::MAX);
        }
    }

    /// Bytes a frame of `len` payload bytes occupies.
    fn frame_bytes(len: usize) -> usize {
        (FRAME_HEADER + len).next_multiple_of(FRAME_ALIGN)
    }

    /// Largest payload one frame can carry.
    pub fn max_payload(&self) -> usize {
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

    /// The stamp word of the frame at data offset `at`.
    fn stamp_word(&self, at: usize) -> &AtomicU64 {
        debug_assert!(at.is_multiple_of(FRAME_ALIGN) && at < self.cap);
        // SAFETY: `at` is a 64-aligned offset inside the data area (frames
        // start on cache lines, and the area is 64-aligned); the word is only
        // accessed atomically while it may be a frame's stamp.
        unsafe { &*(self.data.add(at) as *const AtomicU64) }
    }

    /// The length-and-kind word of the frame at data offset `at`.
    fn kind_word(&self, at: usize) -> &AtomicU64 {
        // SAFETY: as for `stamp_word`: `at + 8` is 8-aligned and, the frame
        // header being 16 bytes inside one line, inside the data area.
        unsafe { &*(self.data.add(at + 8) as *const AtomicU64) }
    }

    /// Writes a frame's length and kind, then publishes it with its stamp.
    fn publish(&self, at: usize, position: u64, len: usize, kind: u32) {
        let word = len as u64 | (u64::from(kind) << 32);
        self.kind_word(at).store(word, Ordering::Relaxed);
        self.stamp_word(at)
            .store(self.stamp(position), Ordering::Release);
    }

    /// Writes a frame if there is room; false if the ring is full.
    pub fn try_push(&self, payload: &[u8]) -> bool {
        let need = Self::frame_bytes(payload.len());
        debug_assert!(payload.len() <= self.max_payload());
        let tail = self.ctl.tail.load(Ordering::Relaxed);
        let pos = self.offset(tail);
        let to_end = self.cap - pos;
        let wrap = if need > to_end { to_end } else { 0 };
        let mut head = self.seen_head.load(Ordering::Relaxed);
        if self.cap - ((tail - head) as usize) < need + wrap {
            // Acquire: the consumer is done with the bytes before `head`.
            head = self.ctl.head.load(Ordering::Acquire);
            self.seen_head.store(head, Ordering::Relaxed);
            if self.cap - ((tail - head) as usize) < need + wrap {
                return false;
            }
        }
        let mut at = pos;
        if wrap > 0 {
            self.publish(at, tail, wrap, KIND_WRAP);
            at = 0;
        }
        // SAFETY: [at+16, at+16+len) lies inside the data area (the frame fits
        // before the end, checked above) and in the producer's part of the
        // ring, [tail, head + cap), which the consumer does not read.
        unsafe {
            std::ptr::copy_nonoverlapping(
                payload.as_ptr(),
                self.data.add(at + FRAME_HEADER),
                payload.len(),
            );
        }
        self.publish(at, tail + wrap as u64, payload.len(), KIND_FRAME);
        self.ctl
            .tail
            .store(tail + (wrap + need) as u64, Ordering::Relaxed);
        self.wake_consumer();
        true
    }

    /// Reads the next frame into `out`; false if the ring is empty.
    pub fn try_pop(&self, out: &mut Vec<u8>) -> Result<bool, Corrupt> {
        let mut head = self.ctl.head.load(Ordering::Relaxed);
        loop {
            let pos = self.offset(head);
            // Acquire: the frame's bytes, written before its stamp, are visible.
            if self.stamp_word(pos).load(Ordering::Acquire) != self.stamp(head) {
                return Ok(false);
            }
            let word = self.kind_word(pos).load(Ordering::Relaxed);
            let (len, kind) = (word as u32 as usize, (word >> 32) as u32);
            match kind {
                KIND_WRAP if len == self.cap - pos => {
                    head += len as u64;
                    self.ctl.head.store(head, Ordering::Release);
                    continue;
                }
                KIND_FRAME
                    if len <= self.max_payload() && pos + Self::frame_bytes(len) <= self.cap =>
                {
                    out.clear();
                    out.reserve(len);
                    // SAFETY: the frame lies inside the data area (checked just
                    // above) and was published by its stamp (acquired above);
                    // the producer does not touch it until `head` passes it.
                    unsafe {
                        std::ptr::copy_nonoverlapping(
                            self.data.add(pos + FRAME_HEADER),
                            out.as_mut_ptr(),
                            len,
                        );
                        out.set_len(len);
                    }
                    self.ctl
                        .head
                        .store(head + Self::frame_bytes(len) as u64, Ordering::Release);
                    self.wake_producer();
                    return Ok(true);
                }
                _ => {
                    return Err(Corrupt(format!(
                        "frame header {word:#018x} at byte {pos} does not fit a ring of {} bytes",
                        self.cap
                    )));
                }
            }
        }
    }

    /// Whether the consumer has a frame (or a wrap marker) to read, in the
    /// ring or, if it expects one, in the fast lane.
    fn has_data(&self) -> bool {
        let head = self.ctl.head.load(Ordering::Relaxed);
        let pos = self.offset(head);
        self.stamp_word(pos).load(Ordering::Acquire) == self.stamp(head) || self.lane_ready()
    }

    fn lane_ready(&self) -> bool {
        let seq = self.lane_expects.load(Ordering::Relaxed);
        seq != 0 && self.lane.stamp.load(Ordering::Acquire) == self.stamp(seq)
    }

    /// Puts frame number `seq` (from 1, one at a time: the consumer has
    /// taken the one before) in the fast lane; false if it is too large for
    /// it (send it through the ring instead).
    pub fn send_fast(&self, seq: u64, frame: &[u8]) -> bool {
        if frame.len() > FAST_BYTES || seq == 0 {
            return false;
        }
        for (word, chunk) in self.lane.payload.iter().zip(frame.chunks(8)) {
            let mut bytes = [0u8; 8];
            bytes[..chunk.len()].copy_from_slice(chunk);
            word.store(u64::from_le_bytes(bytes), Ordering::Relaxed);
        }
        self.lane.len.store(frame.len() as u64, Ordering::Relaxed);
        self.lane.stamp.store(self.stamp(seq), Ordering::Release);
        self.wake_consumer();
        true
    }

    /// Makes this consumer wait for fast-lane frame `seq` too (0: none).
    pub fn expect_fast(&self, seq: u64) {
        self.lane_expects.store(seq, Ordering::Relaxed);
    }

    /// Takes the expected fast-lane frame into `out`, if it is there; the
    /// lane then expects nothing until told again.
    pub fn recv_fast(&self, out: &mut Vec<u8>) -> Result<bool, Corrupt> {
        if !self.lane_ready() {
            return Ok(false);
        }
        let len = self.lane.len.load(Ordering::Relaxed) as usize;
        if len > FAST_BYTES {
            return Err(Corrupt(format!(
                "fast-lane frame of {len} bytes, at most {FAST_BYTES} fit"
            )));
        }
        out.clear();
        for word in &self.lane.payload[..len.div_ceil(8)] {
            out.extend_from_slice(&word.load(Ordering::Relaxed).to_le_bytes());
        }
        out.truncate(len);
        self.lane_expects.store(0, Ordering::Relaxed);
        Ok(true)
    }

    /// Waits until the ring may hold a frame, at most `max`.
    pub fn wait_data(&self, max: Duration) -> Waited {
        self.wait(
            max,
            Self::has_data,
            &self.sig.data_seq,
            &self.sig.data_sleepers,
        )
    }

    /// Waits until the ring may have room, at most `max`.
    pub fn wait_space(&self, need: usize, max: Duration) -> Waited {
        let need = Self::frame_bytes(need) * 2;
        self.wait(
            max,
            |r| {
                let used = r.ctl.tail.load(Ordering::Relaxed) - r.ctl.head.load(Ordering::Acquire);
                r.cap - used as usize >= need
            },
            &self.sig.space_seq,
            &self.sig.space_sleepers,
        )
    }

    fn wait(
        &self,
        max: Duration,
        ready: impl Fn(&Self) -> bool,
        seq: &AtomicU32,
        sleepers: &AtomicU32,
    ) -> Waited {
        // Read the clock only once the first round of spins found nothing:
        // most waits of a round trip end within it.
        let budget = Duration::from_nanos(self.spin_budget.load(Ordering::Relaxed));
        let mut spin_start = None;
        'spin: loop {
            for _ in 0..64 {
                if ready(self) {
                    let grown = (budget.as_nanos() as u64 * 2).min(self.spin.as_nanos() as u64);
                    self.spin_budget.store(grown, Ordering::Relaxed);
                    return Waited::Ready;
                }
                std::hint::spin_loop();
            }
            if spin_start.get_or_insert_with(Instant::now).elapsed() >= budget {
                break 'spin;
            }
        }
        let cut = (budget.as_nanos() as u64 / 16).max(MIN_SPIN.as_nanos() as u64);
        self.spin_budget.store(cut, Ordering::Relaxed);
        // Then yield: where each process has a core, for a while (if the
        // peer shares this core for now, it runs meanwhile, and no futex
        // wake-up ties the two to one core again); else a few times.
        let yield_start = Instant::now();
        let dedicated = self.spin >= SPIN_DEDICATED;
        for n in 1.. {
            if ready(self) {
                return Waited::Ready;
            }
            std::thread::yield_now();
            if n >= YIELDS && (!dedicated || yield_start.elapsed() >= YIELD_DEDICATED) {
                break;
            }
        }
        let start = Instant::now();
        sleepers.fetch_add(1, Ordering::SeqCst);
        // Announce, then look: the heavy fence pairs with the publisher's light one.
        fence::heavy();
        let seen = seq.load(Ordering::SeqCst);
        let result = if ready(self) {
            Waited::Ready
        } else {
            futex::wait(seq, seen, Some(max));
            if ready(self) || start.elapsed() < max {
                Waited::Ready
            } else {
                Waited::Idle
            }
        };
        sleepers.fetch_sub(1, Ordering::SeqCst);
        result
    }

    /// Publishes fast-lane frame `seq` with a length the lane cannot hold
    /// (tests of corrupt channels).
    #[doc(hidden)]
    pub fn push_corrupt_fast(&self, seq: u64) {
        self.lane.len.store(u64::MAX, Ordering::Relaxed);
        self.lane.stamp.store(self.stamp(seq), Ordering::Release);
        self.wake_consumer();
    }

    /// Publishes a frame whose length does not fit the ring (tests of corrupt channels).
    #[doc(hidden)]
    pub fn push_corrupt_header(&self) {
        let tail = self.ctl.tail.load(Ordering::Relaxed);
        let pos = self.offset(tail);
        self.publish(pos, tail, u32::MAX as usize, KIND_FRAME);
        self.ctl
            .tail
            .store(tail + FRAME_ALIGN as u64, Ordering::Relaxed);
        self.wake_consumer();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ring(region: &SharedRegion, cap: usize) -> Ring<'_> {
        Ring::at(region, 0, cap, 0x1234_5678_9abc_def0, SPIN_SHARED).unwrap()
    }

    #[test]
    fn frames_cross_in_order_through_many_wraps() {
        let region = SharedRegion::anonymous(Ring::bytes(4096)).unwrap();
        let r = ring(&region, 4096);
        let mut out = Vec::new();
        let mut next_in = 0u32;
        let mut next_out = 0u32;
        // Frames of varying sizes, so that wraps land at many offsets.
        while next_out < 5000 {
            let len = (next_in as usize * 7) % 300;
            let mut frame = next_in.to_le_bytes().to_vec();
            frame.resize(4 + len, next_in as u8);
            if r.try_push(&frame) {
                next_in += 1;
                continue;
            }
            while r.try_pop(&mut out).unwrap() {
                let n = u32::from_le_bytes(out[..4].try_into().unwrap());
                assert_eq!(n, next_out);
                assert_eq!(out.len(), 4 + (n as usize * 7) % 300);
                assert!(out[4..].iter().all(|&b| b == n as u8));
                next_out += 1;
            }
        }
        assert!(!r.try_pop(&mut out).unwrap() || next_in > next_out);
    }

    #[test]
    fn a_full_ring_refuses_and_stale_bytes_are_not_frames() {
        let region = SharedRegion::anonymous(Ring::bytes(1024)).unwrap();
        let r = ring(&region, 1024);
        let mut out = Vec::new();
        assert!(!r.try_pop(&mut out).unwrap(), "a zeroed ring is empty");
        let mut pushed = 0;
        while r.try_push(&[7u8; 100]) {
            pushed += 1;
        }
        assert_eq!(pushed, 1024 / 128);
        for _ in 0..pushed {
            assert!(r.try_pop(&mut out).unwrap());
        }
        // Every byte now holds an old frame: none of it reads as a new one.
        assert!(!r.try_pop(&mut out).unwrap());
        assert!(!r.has_data());
    }

    #[test]
    fn the_fast_lane_carries_the_expected_frame_once() {
        let region = SharedRegion::anonymous(Ring::bytes(1024)).unwrap();
        let r = ring(&region, 1024);
        let mut out = Vec::new();
        assert!(
            !r.recv_fast(&mut out).unwrap(),
            "nothing expected, nothing read"
        );
        assert!(
            !r.send_fast(1, &[1u8; FAST_BYTES + 1]),
            "too large for the lane"
        );
        assert!(!r.send_fast(0, b"x"), "sequence numbers start at 1");
        r.expect_fast(1);
        assert!(!r.has_data());
        assert!(r.send_fast(1, b"hello, fast lane"));
        assert!(r.has_data());
        assert!(r.recv_fast(&mut out).unwrap());
        assert_eq!(out, b"hello, fast lane");
        assert!(!r.recv_fast(&mut out).unwrap(), "taken once");
        r.expect_fast(2);
        assert!(!r.has_data(), "the old frame is not the next one");
        assert!(r.send_fast(2, &[7u8; FAST_BYTES]));
        assert!(r.recv_fast(&mut out).unwrap());
        assert_eq!(out, [7u8; FAST_BYTES]);
        // The ring beside it is untouched.
        assert!(!r.try_pop(&mut out).unwrap());
        r.expect_fast(3);
        r.push_corrupt_fast(3);
        assert!(
            r.recv_fast(&mut out)
                .unwrap_err()
                .0
                .contains("fast-lane frame")
        );
    }

    #[test]
    fn a_corrupt_header_is_reported() {
        let region = SharedRegion::anonymous(Ring::bytes(1024)).unwrap();
        let r = ring(&region, 1024);
        r.push_corrupt_header();
        let err = r.try_pop(&mut Vec::new()).unwrap_err();
        assert!(err.0.contains("does not fit"), "{}", err.0);
    }
}
