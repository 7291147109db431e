//! Loom models of the byte ring: the ring's own code, over memory loom owns
//! (`data_area.rs`), with loom's atomics and the loom stand-in of the event
//! counts' futex (timeouts ignored, so a lost wake-up is a deadlock loom
//! reports).
//!
//! `RUSTFLAGS="--cfg loom" cargo test -p xme-mpi --release --lib`
//!
//! What the models check:
//! - a frame read is the frame written, byte for byte: the stamp's release
//!   and acquire order the payload (a payload copy that races with the
//!   other side's is reported by loom's cells);
//! - the producer never writes over bytes the consumer has not read yet
//!   (`head`'s release and acquire);
//! - a stale stamp from an earlier lap never reads as a frame;
//! - neither side sleeps through the other's signal (data, space, the fast
//!   lane), with the light/heavy fence pair modelled as two SeqCst fences;
//! - the fast lane, reused for the next call, never hands over a stale or
//!   torn frame.

use std::time::Duration;

use loom::sync::Arc;
use loom::thread;

use super::data_area::{DataArea, ModelMemory};
use super::*;

/// A ring in memory loom owns.
struct ModelRing {
    ctl: Control,
    sig: Signals,
    lane: FastLane,
    memory: ModelMemory,
    cap: usize,
}

fn zeroed<const N: usize>() -> [AtomicU64; N] {
    std::array::from_fn(|_| AtomicU64::new(0))
}

impl ModelRing {
    fn new(cap: usize) -> ModelRing {
        ModelRing {
            ctl: Control {
                head: AtomicU64::new(0),
                _pad0: zeroed(),
                tail: AtomicU64::new(0),
                _pad1: zeroed(),
            },
            sig: Signals {
                data: EventCount::new(),
                space: EventCount::new(),
            },
            lane: FastLane {
                stamp: AtomicU64::new(0),
                len: AtomicU64::new(0),
                payload: zeroed(),
            },
            memory: ModelMemory::new(cap),
            cap,
        }
    }

    /// Both sides; each thread keeps the one it uses, as each process does
    /// after fork.
    fn split(&self) -> (Producer<'_>, Consumer<'_>) {
        RingParts {
            ctl: &self.ctl,
            sig: &self.sig,
            lane: &self.lane,
            data: DataArea::of(&self.memory),
            cap: self.cap,
            key: 0x1234_5678_9abc_def0 | 1 << 63,
        }
        .halves(SPIN_SHARED)
    }
}

/// Loom ignores timeouts: a wait ends only when the other side signals.
const FOREVER: Duration = Duration::from_secs(3600);

fn send(p: &mut Producer<'_>, frame: &[u8]) {
    while !p.try_push(frame) {
        p.wait_space(frame.len(), FOREVER);
    }
}

fn receive(c: &mut Consumer<'_>, out: &mut Vec<u8>) {
    while !c.try_pop(out).expect("only frames the producer wrote") {
        c.wait_data(FOREVER);
    }
}

fn send_fast(p: &mut Producer<'_>, seq: u64, frame: &[u8]) {
    assert!(p.send_fast(seq, frame));
}

fn receive_fast(c: &mut Consumer<'_>, seq: u64, out: &mut Vec<u8>) {
    c.expect_fast(seq);
    while !c.recv_fast(out).expect("only frames the producer wrote") {
        c.wait_data(FOREVER);
    }
}

/// Frame `n`'s bytes: no two frames share a byte at the same offset.
fn frame(n: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| n.wrapping_mul(53).wrapping_add(i as u8))
        .collect()
}

/// Three frames through a ring of four cache lines: two of two lines and one
/// of one, so the third finds the ring full (the producer sleeps for space),
/// then wraps (a wrap marker, then the frame at the start, over the first
/// frame's stale bytes and stamp).
#[test]
fn frames_cross_a_ring_that_fills_and_wraps() {
    xme_core::sync::loom_model(3, || {
        let ring = Arc::new(ModelRing::new(256));
        let frames = [frame(1, 60), frame(2, 20), frame(3, 60)];
        let producer = {
            let (ring, frames) = (ring.clone(), frames.clone());
            thread::spawn(move || {
                let (mut p, _) = ring.split();
                for f in &frames {
                    send(&mut p, f);
                }
            })
        };
        let (_, mut c) = ring.split();
        let mut out = Vec::new();
        for f in &frames {
            receive(&mut c, &mut out);
            assert_eq!(&out, f);
        }
        producer.join().unwrap();
        assert!(!c.try_pop(&mut out).unwrap(), "no frame after the last");
        assert_eq!(
            ring.ctl.head.load(Ordering::Relaxed),
            384,
            "the wrap happened"
        );
    });
}

/// Two round trips through the fast lanes of two rings (a call out, its
/// reply back), the second call reusing the lane the first one crossed.
#[test]
fn fast_lane_round_trips_reuse_the_lane() {
    xme_core::sync::loom_model(3, || {
        let calls = Arc::new(ModelRing::new(128));
        let replies = Arc::new(ModelRing::new(128));
        let logical = {
            let (calls, replies) = (calls.clone(), replies.clone());
            thread::spawn(move || {
                let (_, mut call_in) = calls.split();
                let (mut reply_out, _) = replies.split();
                let mut out = Vec::new();
                for seq in 1..=2u8 {
                    receive_fast(&mut call_in, u64::from(seq), &mut out);
                    assert_eq!(out, frame(seq, 12));
                    send_fast(&mut reply_out, u64::from(seq), &frame(seq + 100, 9));
                }
            })
        };
        let (mut call_out, _) = calls.split();
        let (_, mut reply_in) = replies.split();
        let mut out = Vec::new();
        for seq in 1..=2u8 {
            send_fast(&mut call_out, u64::from(seq), &frame(seq, 12));
            receive_fast(&mut reply_in, u64::from(seq), &mut out);
            assert_eq!(out, frame(seq + 100, 9));
        }
        logical.join().unwrap();
    });
}

/// A logical process's loop: it expects the next fast-lane call and any
/// ring frame at once, and sleeps until either comes (`has_data`).
#[test]
fn one_wait_covers_the_ring_and_the_lane() {
    xme_core::sync::loom_model(3, || {
        let ring = Arc::new(ModelRing::new(128));
        let main = {
            let ring = ring.clone();
            thread::spawn(move || {
                let (mut p, _) = ring.split();
                send(&mut p, &frame(1, 30));
                send_fast(&mut p, 1, &frame(2, 40));
            })
        };
        let (_, mut c) = ring.split();
        c.expect_fast(1);
        let (mut from_ring, mut from_lane) = (None, None);
        let mut out = Vec::new();
        while from_ring.is_none() || from_lane.is_none() {
            if c.recv_fast(&mut out).unwrap() {
                assert!(from_lane.replace(out.clone()).is_none());
            } else if c.try_pop(&mut out).unwrap() {
                assert!(from_ring.replace(out.clone()).is_none());
            } else {
                c.wait_data(FOREVER);
            }
        }
        assert_eq!(from_ring.unwrap(), frame(1, 30));
        assert_eq!(from_lane.unwrap(), frame(2, 40));
        main.join().unwrap();
    });
}
