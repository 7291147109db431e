//! The result ring: one worker (the producer) hands each call's result to the
//! parent's driver thread (the consumer) through shared memory, so a result is
//! safe the moment it is published, before any system call.
//!
//! That is what lets the pool keep chunks of calls on the wire and still fail
//! exactly the call a killed worker was running: every earlier call of the
//! chunk has its result in the ring already.
//!
//! The ring is an array of 64-bit words (atomics, so a copy that races the
//! other side is a stale value, never undefined behaviour, and loom can check
//! it). `head` and `tail` count words for ever (never wrapped); a word's index
//! is its position modulo the capacity. A record is one header word (`len:32 |
//! status:8 | kind:8`) and `len` bytes packed little-endian in the following
//! words. A record never wraps: when it would not fit before the end, a `WRAP`
//! header sends the consumer to the next lap.
//!
//! Orderings: the producer writes a record's words (Relaxed) and publishes
//! them with a Release store of `tail`; the consumer's Acquire load of `tail`
//! makes them visible. The consumer gives space back with a Release store of
//! `head`, which the producer loads with Acquire before it overwrites.

use super::sync::{AtomicU64, Ordering};

/// A call's result bytes.
pub(crate) const KIND_RESULT: u8 = 1;
/// A call's result went over the socket (`len` bytes): it was too large.
pub(crate) const KIND_BIG: u8 = 2;
/// A task ended; the payload is its run time in nanoseconds (8 bytes).
pub(crate) const KIND_END: u8 = 3;
/// Padding to the end of the lap: go on at the next lap's start.
const KIND_WRAP: u8 = 4;

fn header(kind: u8, status: u8, len: usize) -> u64 {
    (len as u64) | (u64::from(status) << 32) | (u64::from(kind) << 40)
}

/// Words a record of `len` payload bytes takes (header included).
fn words_for(len: usize) -> usize {
    1 + len.div_ceil(8)
}

/// A ring that holds something the consumer could not accept: a worker wrote
/// nonsense over its own ring. The worker is then treated as broken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct CorruptRing {
    pub at: u64,
}

/// The producer's own view: where it writes next, and where it last saw
/// the consumer.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Producer {
    pub tail: u64,
    pub head: u64,
}

impl Producer {
    /// Words in use, as far as the producer knows.
    pub fn used(&self) -> u64 {
        self.tail - self.head
    }
}

/// The two ends of one ring, over words that live in shared memory (or, in
/// loom models, in memory loom owns).
pub(crate) struct Ring<'a> {
    pub head: &'a AtomicU64,
    pub tail: &'a AtomicU64,
    pub data: &'a [AtomicU64],
    /// In loom models, a cell beside each word, written and read with it:
    /// loom cannot see a read that returns a later store (load buffering),
    /// but it reports a cell written while a read of it may still be under
    /// way, which is what the `head` orderings prevent.
    #[cfg(loom)]
    pub shadow: &'a [loom::cell::UnsafeCell<u64>],
}

impl Ring<'_> {
    /// The largest payload a record may carry: half the ring, so that a
    /// record plus the padding before it always fits an empty ring.
    pub fn max_payload(&self) -> usize {
        (self.data.len() / 2 - 1) * 8
    }

    /// Producer: appends a record if there is room, and publishes it.
    /// Returns `false` when the consumer must free space first. Only one
    /// process may push into a ring, keeping its own position in `at` (the
    /// shared `tail` is only ever stored): `at.head` is its last view of the
    /// consumer's position, read again only when that view shows too little
    /// room, so a busy producer does not pull the consumer's cache line on
    /// every record.
    #[cfg(loom)]
    fn touch_written(&self, from: usize, to: usize) {
        for cell in &self.shadow[from..to] {
            // SAFETY: loom checks this access; no real memory is involved.
            cell.with_mut(|p| unsafe { *p = 1 });
        }
    }

    #[cfg(loom)]
    fn touch_read(&self, from: usize, to: usize) {
        for cell in &self.shadow[from..to] {
            // SAFETY: as above.
            cell.with(|p| unsafe { *p });
        }
    }

    pub fn try_push(&self, at: &mut Producer, kind: u8, status: u8, payload: &[u8]) -> bool {
        debug_assert!(payload.len() <= self.max_payload());
        let cap = self.data.len() as u64;
        let (tail, head) = (&mut at.tail, &mut at.head);
        let n = words_for(payload.len()) as u64;
        let index = *tail % cap;
        let padding = if index + n > cap { cap - index } else { 0 };
        if *tail + padding + n - *head > cap {
            // Acquire: the consumer's reads of the words we are about to
            // reuse happened before it released them.
            *head = self.head.load(Ordering::Acquire);
            if *tail + padding + n - *head > cap {
                return false;
            }
        }
        if padding > 0 {
            #[cfg(loom)]
            self.touch_written(index as usize, index as usize + 1);
            self.data[index as usize].store(header(KIND_WRAP, 0, 0), Ordering::Relaxed);
        }
        let start = ((*tail + padding) % cap) as usize;
        #[cfg(loom)]
        self.touch_written(start, start + n as usize);
        let mut chunks = payload.chunks_exact(8);
        for (word, chunk) in self.data[start + 1..].iter().zip(chunks.by_ref()) {
            let bytes: [u8; 8] = chunk.try_into().expect("chunks of 8");
            word.store(u64::from_le_bytes(bytes), Ordering::Relaxed);
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let word = rest
                .iter()
                .rev()
                .fold(0u64, |w, &b| (w << 8) | u64::from(b));
            self.data[start + n as usize - 1].store(word, Ordering::Relaxed);
        }
        self.data[start].store(header(kind, status, payload.len()), Ordering::Relaxed);
        *tail += padding + n;
        // Release: the record's words are visible to whoever sees this tail.
        self.tail.store(*tail, Ordering::Release);
        true
    }

    /// Whether the producer has published records the consumer at `pos` has
    /// not read.
    pub fn has_data(&self, pos: u64) -> bool {
        self.tail.load(Ordering::Acquire) != pos
    }

    /// Consumer: reads the records published after `pos`, calling `each`
    /// with (kind, status, payload length, payload words), and moves `pos`
    /// past each one `each` accepts (returns `true`); it stops at the first
    /// it refuses, which is read again next time. Space is given back by
    /// [`release`](Self::release).
    pub fn drain(
        &self,
        pos: &mut u64,
        mut each: impl FnMut(u8, u8, usize, &[AtomicU64]) -> bool,
    ) -> Result<usize, CorruptRing> {
        let cap = self.data.len() as u64;
        // Acquire: pairs with the producer's Release store of `tail`.
        let tail = self.tail.load(Ordering::Acquire);
        if tail < *pos || tail - *pos > cap {
            return Err(CorruptRing { at: tail });
        }
        let mut records = 0;
        while *pos < tail {
            let index = (*pos % cap) as usize;
            #[cfg(loom)]
            self.touch_read(index, index + 1);
            let word = self.data[index].load(Ordering::Relaxed);
            let kind = (word >> 40) as u8;
            let status = (word >> 32) as u8;
            let len = (word & 0xffff_ffff) as usize;
            if kind == KIND_WRAP {
                *pos += cap - index as u64;
                continue;
            }
            let n = words_for(len);
            if len > self.max_payload() || index + n > cap as usize || *pos + n as u64 > tail {
                return Err(CorruptRing { at: *pos });
            }
            #[cfg(loom)]
            self.touch_read(index + 1, index + n);
            if !each(kind, status, len, &self.data[index + 1..index + n]) {
                break;
            }
            *pos += n as u64;
            records += 1;
        }
        Ok(records)
    }

    /// Consumer: gives the words before `pos` back to the producer.
    pub fn release(&self, pos: u64) {
        // Release: our reads of those words happen before the producer's
        // reuse of them (it loads `head` with Acquire).
        self.head.store(pos, Ordering::Release);
    }
}

/// Appends a record's payload words to `out` as bytes (`len` of them).
pub(crate) fn copy_payload(words: &[AtomicU64], len: usize, out: &mut Vec<u8>) {
    let start = out.len();
    out.reserve(words.len() * 8);
    for w in words {
        out.extend_from_slice(&w.load(Ordering::Relaxed).to_le_bytes());
    }
    out.truncate(start + len);
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    fn ring(words: usize) -> (AtomicU64, AtomicU64, Vec<AtomicU64>) {
        (
            AtomicU64::new(0),
            AtomicU64::new(0),
            (0..words).map(|_| AtomicU64::new(0)).collect(),
        )
    }

    #[test]
    fn records_cross_in_order_across_many_laps() {
        let (head, tail, data) = ring(16);
        let r = Ring {
            head: &head,
            tail: &tail,
            data: &data,
        };
        let mut pos = 0;
        let mut head = Producer::default();
        let mut seen = Vec::new();
        for round in 0..200u32 {
            let payload: Vec<u8> = (0..(round % 37) as u8).collect();
            if !r.try_push(&mut head, KIND_RESULT, (round % 7) as u8, &payload) {
                // Full: drain, then the push must succeed.
                r.drain(&mut pos, |k, s, len, words| {
                    let mut out = Vec::new();
                    copy_payload(words, len, &mut out);
                    seen.push((k, s, out));
                    true
                })
                .unwrap();
                r.release(pos);
                assert!(r.try_push(&mut head, KIND_RESULT, (round % 7) as u8, &payload));
            }
            let _ = payload;
        }
        r.drain(&mut pos, |k, s, len, words| {
            let mut out = Vec::new();
            copy_payload(words, len, &mut out);
            seen.push((k, s, out));
            true
        })
        .unwrap();
        assert_eq!(seen.len(), 200);
        for (round, (k, s, out)) in seen.into_iter().enumerate() {
            assert_eq!(k, KIND_RESULT);
            assert_eq!(s, (round % 7) as u8);
            assert_eq!(out, (0..(round % 37) as u8).collect::<Vec<u8>>());
        }
    }

    #[test]
    fn a_scribbled_header_is_reported_not_followed() {
        let (head, tail, data) = ring(16);
        let r = Ring {
            head: &head,
            tail: &tail,
            data: &data,
        };
        assert!(r.try_push(&mut Producer::default(), KIND_RESULT, 0, b"hello"));
        data[0].store(header(KIND_RESULT, 0, 1 << 20), Ordering::Relaxed);
        let mut pos = 0;
        assert!(r.drain(&mut pos, |_, _, _, _| true).is_err());
        tail.store(1 << 40, Ordering::Relaxed);
        let mut pos = 0;
        assert!(r.drain(&mut pos, |_, _, _, _| true).is_err());
    }
}

#[cfg(all(test, loom))]
mod loom_models {
    //! `RUSTFLAGS="--cfg loom" cargo test -p xme-exec --release --lib`
    use super::*;
    use loom::sync::Arc;

    /// Three records through a ring of 8 words: the producer fills it,
    /// waits for space, pads to the end of the lap and writes over words the
    /// consumer read; the consumer reads every record exactly as written.
    #[test]
    fn records_survive_wrapping_and_reuse() {
        static RUNS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        xme_core::sync::loom_model(3, || {
            RUNS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            #[allow(clippy::type_complexity)]
            let words: Arc<(
                AtomicU64,
                AtomicU64,
                Vec<AtomicU64>,
                Vec<loom::cell::UnsafeCell<u64>>,
            )> = Arc::new((
                AtomicU64::new(0),
                AtomicU64::new(0),
                (0..8).map(|_| AtomicU64::new(0)).collect(),
                (0..8).map(|_| loom::cell::UnsafeCell::new(0)).collect(),
            ));
            let payloads: [&[u8]; 3] = [b"0123456789abcdefghij", b"xyz", b"ABCDEFGHIJKLMNOP"];
            let w = words.clone();
            let producer = loom::thread::spawn(move || {
                let r = Ring {
                    head: &w.0,
                    tail: &w.1,
                    data: &w.2,
                    shadow: &w.3,
                };
                let mut head = Producer::default();
                for (i, p) in payloads.iter().enumerate() {
                    while !r.try_push(&mut head, KIND_RESULT, i as u8, p) {
                        loom::thread::yield_now();
                    }
                }
            });
            let r = Ring {
                head: &words.0,
                tail: &words.1,
                data: &words.2,
                shadow: &words.3,
            };
            let mut pos = 0;
            let mut got: Vec<(u8, Vec<u8>)> = Vec::new();
            while got.len() < 3 {
                r.drain(&mut pos, |_, status, len, payload| {
                    let mut out = Vec::new();
                    copy_payload(payload, len, &mut out);
                    got.push((status, out));
                    true
                })
                .expect("never corrupt");
                r.release(pos);
                loom::thread::yield_now();
            }
            producer.join().unwrap();
            for (i, (status, bytes)) in got.iter().enumerate() {
                assert_eq!(*status as usize, i);
                assert_eq!(bytes.as_slice(), payloads[i]);
            }
        });
        // loom's search can stop after one execution when a thread reads a
        // word before it writes it; a model that explored one checked
        // nothing.
        let runs = RUNS.load(std::sync::atomic::Ordering::Relaxed);
        assert!(runs > 1, "the model explored {runs} execution(s)");
    }
}
