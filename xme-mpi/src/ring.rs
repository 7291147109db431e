//! A single-producer single-consumer byte ring in shared memory: the channel
//! between the main process and one logical process.
//!
//! Frames are `[len:u32][kind:u32][payload][pad to 8]`; a frame that would
//! cross the end is preceded by a wrap marker. `tail` (producer) and `head`
//! (consumer) count bytes forever; the producer writes only `[tail, head+cap)`
//! and the consumer reads only `[head, tail)`, each after an acquire load of
//! the other's counter, so no byte is accessed by both at once.
//!
//! Waiting: spin, then yield, then sleep on a futex eventcount (`sleepers`
//! announced before the re-check, SeqCst on both sides), each sleep bounded
//! so the caller can check its peer is alive.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering, fence};
use std::time::{Duration, Instant};

use xme_core::{SharedRegion, futex};

const KIND_FRAME: u32 = 0;
const KIND_WRAP: u32 = 1;
/// Control words and signals, each on its own cache lines, before the data.
const HEADER_BYTES: usize = 256;

/// The ring's control words, each pair on its own cache line.
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

const _: () = assert!(
    std::mem::size_of::<Control>() + std::mem::size_of::<Signals>() <= HEADER_BYTES,
    "ring control words overlap the data"
);

/// One ring inside a region (the region outlives it).
pub(crate) struct Ring<'r> {
    ctl: &'r Control,
    sig: &'r Signals,
    data: *mut u8,
    cap: usize,
    /// How long to spin before yielding: long when every process has a core
    /// (an idle spinner costs nobody anything and answers at once), very short
    /// when processes outnumber cores (a spinner then steals the time its peer
    /// needs to answer).
    spin: Duration,
    /// The producer's last view of `head` (process-local): re-read only when
    /// it says the ring is full, so the consumer's line is not pulled over
    /// on every push.
    seen_head: AtomicU64,
    /// The consumer's last view of `tail` (process-local), likewise.
    seen_tail: AtomicU64,
}

// SAFETY: the ring is used by one producer and one consumer (callers serialise
// each side with a mutex); `data` accesses are confined to the regions the
// SPSC protocol gives each side, synchronised by the acquire/release counters.
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
    /// Writes a raw word where the next frame header goes (tests of broken channels).
    fn inject_raw(&self, word: u64);
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
    fn inject_raw(&self, word: u64) {
        self.push_raw_word(word)
    }
}

/// Spin time before sleeping when every process has a core of its own.
pub(crate) const SPIN_DEDICATED: Duration = Duration::from_micros(200);
/// Spin time before sleeping when processes outnumber cores.
pub(crate) const SPIN_SHARED: Duration = Duration::from_micros(2);
/// Yields before sleeping.
const YIELDS: u32 = 4;

impl<'r> Ring<'r> {
    /// Bytes a ring with `cap` data bytes takes in a region.
    pub fn bytes(cap: usize) -> usize {
        HEADER_BYTES + cap
    }

    /// The ring at `offset` of `region`, `cap` data bytes (a multiple of 8).
    pub fn at(
        region: &'r SharedRegion,
        offset: usize,
        cap: usize,
        spin: Duration,
    ) -> Result<Ring<'r>, xme_core::Error> {
        Ok(Ring {
            ctl: region.place(offset)?,
            sig: region.place(offset + std::mem::size_of::<Control>())?,
            data: region.raw(offset + HEADER_BYTES, cap)?,
            cap,
            spin,
            seen_head: AtomicU64::new(0),
            seen_tail: AtomicU64::new(0),
        })
    }

    /// Bytes a frame of `len` payload bytes occupies.
    fn frame_bytes(len: usize) -> usize {
        8 + len.next_multiple_of(8)
    }

    /// Largest payload one frame can carry.
    pub fn max_payload(&self) -> usize {
        self.cap / 2 - 8
    }

    /// Writes a frame if there is room; false if the ring is full.
    pub fn try_push(&self, payload: &[u8]) -> bool {
        let need = Self::frame_bytes(payload.len());
        debug_assert!(payload.len() <= self.max_payload());
        let tail = self.ctl.tail.load(Ordering::Relaxed);
        let pos = (tail % self.cap as u64) as usize;
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
            self.write_header(at, 0, KIND_WRAP);
            at = 0;
        }
        self.write_header(at, payload.len() as u32, KIND_FRAME);
        // SAFETY: [at+8, at+8+len) lies inside the data area (need fits before
        // the end, checked above) and in the producer's part of the ring.
        unsafe {
            std::ptr::copy_nonoverlapping(payload.as_ptr(), self.data.add(at + 8), payload.len());
        }
        // SeqCst: orders the publish before the sleeper check (eventcount).
        self.ctl
            .tail
            .store(tail + (wrap + need) as u64, Ordering::SeqCst);
        if self.sig.data_sleepers.load(Ordering::SeqCst) > 0 {
            self.sig.data_seq.fetch_add(1, Ordering::SeqCst);
            futex::wake(&self.sig.data_seq, u32::MAX);
        }
        true
    }

    fn write_header(&self, at: usize, len: u32, kind: u32) {
        let word = u64::from(len) | (u64::from(kind) << 32);
        // SAFETY: `at` is 8-aligned inside the data area, in the producer's part.
        unsafe { (self.data.add(at) as *mut u64).write_volatile(word) };
    }

    /// Reads the next frame into `out`; false if the ring is empty.
    pub fn try_pop(&self, out: &mut Vec<u8>) -> Result<bool, Corrupt> {
        let mut head = self.ctl.head.load(Ordering::Relaxed);
        let mut tail = self.seen_tail.load(Ordering::Relaxed);
        loop {
            if head == tail {
                // Acquire: the producer's bytes before `tail` are visible.
                tail = self.ctl.tail.load(Ordering::Acquire);
                self.seen_tail.store(tail, Ordering::Relaxed);
                if head == tail {
                    return Ok(false);
                }
            }
            let pos = (head % self.cap as u64) as usize;
            // SAFETY: `pos` is 8-aligned inside the data area, in [head, tail).
            let word = unsafe { (self.data.add(pos) as *const u64).read_volatile() };
            let (len, kind) = (word as u32 as usize, (word >> 32) as u32);
            let avail = (tail - head) as usize;
            match kind {
                KIND_WRAP if self.cap - pos <= avail => {
                    head += (self.cap - pos) as u64;
                    continue;
                }
                KIND_FRAME
                    if Self::frame_bytes(len) <= avail
                        && pos + Self::frame_bytes(len) <= self.cap =>
                {
                    out.clear();
                    out.reserve(len);
                    // SAFETY: the frame lies inside the data area and in [head, tail),
                    // the consumer's part, published by the producer's release store.
                    unsafe {
                        std::ptr::copy_nonoverlapping(
                            self.data.add(pos + 8),
                            out.as_mut_ptr(),
                            len,
                        );
                        out.set_len(len);
                    }
                    let new_head = head + Self::frame_bytes(len) as u64;
                    self.ctl.head.store(new_head, Ordering::SeqCst);
                    if self.sig.space_sleepers.load(Ordering::SeqCst) > 0 {
                        self.sig.space_seq.fetch_add(1, Ordering::SeqCst);
                        futex::wake(&self.sig.space_seq, u32::MAX);
                    }
                    return Ok(true);
                }
                _ => {
                    return Err(Corrupt(format!(
                        "frame header {word:#018x} at byte {pos} does not fit the {avail} bytes written"
                    )));
                }
            }
        }
    }

    /// Waits until the ring may hold a frame, at most `max`.
    pub fn wait_data(&self, max: Duration) -> Waited {
        self.wait(
            max,
            |r| r.ctl.tail.load(Ordering::SeqCst) != r.ctl.head.load(Ordering::Relaxed),
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
                let used = r.ctl.tail.load(Ordering::Relaxed) - r.ctl.head.load(Ordering::SeqCst);
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
        let spin_start = Instant::now();
        'spin: loop {
            for _ in 0..256 {
                if ready(self) {
                    return Waited::Ready;
                }
                std::hint::spin_loop();
            }
            if spin_start.elapsed() >= self.spin {
                break 'spin;
            }
        }
        for _ in 0..YIELDS {
            if ready(self) {
                return Waited::Ready;
            }
            std::thread::yield_now();
        }
        let start = Instant::now();
        sleepers.fetch_add(1, Ordering::SeqCst);
        let seen = seq.load(Ordering::SeqCst);
        fence(Ordering::SeqCst);
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

    /// Writes raw bytes as if they were a frame header (tests of corrupt channels).
    #[doc(hidden)]
    pub fn push_raw_word(&self, word: u64) {
        let tail = self.ctl.tail.load(Ordering::Relaxed);
        let pos = (tail % self.cap as u64) as usize;
        // SAFETY: 8-aligned, inside the data area, in the producer's part.
        unsafe { (self.data.add(pos) as *mut u64).write_volatile(word) };
        self.ctl.tail.store(tail + 8, Ordering::SeqCst);
        if self.sig.data_sleepers.load(Ordering::SeqCst) > 0 {
            self.sig.data_seq.fetch_add(1, Ordering::SeqCst);
            futex::wake(&self.sig.data_seq, u32::MAX);
        }
    }
}
