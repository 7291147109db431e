//! xme-security's locks against `std::sync::Mutex`, raw_sync's shared mutex,
//! and the two-process ping-pong floors, in one run.
//!
//! - uncontended/*: acquire + release with no other process around.
//! - pingpong/futex_floor: two processes hand a shared word back and forth,
//!   each sleeping on a shared futex until it is its turn (one round trip).
//! - pingpong/spin_floor: the same, spinning on the word instead of sleeping.
//! - pingpong/<type>: the same hand-off through the lock: a turn word that each
//!   process flips only while holding the lock.
//!
//! Run: `cargo bench --bench security`.

// criterion's macros generate undocumented functions.
#![allow(missing_docs)]

use std::hint::black_box;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};

mod common;
use raw_sync::locks::{LockInit, Mutex as RawMutex};
use xme::core::process::{Child, fork_child};
use xme::core::{Operator, SharedRegion};
use xme::security::{LockType, Security};

fn uncontended(c: &mut Criterion) {
    let mut g = c.benchmark_group("uncontended");
    let std_mutex = std::sync::Mutex::new(0u64);
    g.bench_function("std_mutex", |b| {
        b.iter(|| {
            *std_mutex.lock().unwrap() += 1;
        })
    });
    let region = SharedRegion::anonymous(4096).unwrap();
    let mem = region.raw(0, 128).unwrap();
    let data = region.raw(128, 8).unwrap();
    // SAFETY: both pointers are inside the region, which outlives the lock.
    let (raw, _) = unsafe { RawMutex::new(mem, data) }.unwrap();
    g.bench_function("raw_sync_mutex", |b| {
        b.iter(|| {
            let guard = raw.lock().unwrap();
            black_box(&guard);
        })
    });
    let op = Operator::alloc();
    for (name, t) in [
        ("disable", LockType::Disable),
        ("mutex", LockType::Mutex),
        ("authorisation", LockType::Authorisation),
        ("readwrite_write", LockType::ReadWrite),
        ("spin", LockType::Spin),
    ] {
        let sec = Security::new(t).unwrap();
        sec.authorize(&[op]).unwrap();
        sec.register(op);
        g.bench_function(name, |b| {
            b.iter(|| {
                let guard = sec.lock(op).unwrap();
                black_box(&guard);
            })
        });
    }
    let sec = Security::new(LockType::ReadWrite).unwrap();
    g.bench_function("readwrite_read", |b| {
        b.iter(|| {
            let guard = sec.read(op).unwrap();
            black_box(&guard);
        })
    });
    g.finish();
}

/// A partner process answering each ping until `stop` is set.
struct Partner {
    _child: Child,
}

fn partner(body: impl FnOnce() -> i32) -> Partner {
    Partner {
        _child: fork_child(body).unwrap(),
    }
}

fn pingpong(c: &mut Criterion) {
    let mut g = c.benchmark_group("pingpong");
    g.measurement_time(Duration::from_secs(4));

    common::futex_pingpong(&mut g, "futex_floor");
    common::spin_pingpong(&mut g, "spin_floor");
    let region = SharedRegion::anonymous(64).unwrap();

    // Through the lock: the turn word is only read and flipped under the lock.
    for (name, t) in [
        ("mutex", LockType::Mutex),
        ("spin", LockType::Spin),
        ("readwrite", LockType::ReadWrite),
    ] {
        let sec = Security::new(t).unwrap();
        let op = Operator::alloc();
        sec.register(op);
        let turn: &AtomicU32 = region.place(8).unwrap();
        turn.store(0, Ordering::Relaxed);
        let stop: &AtomicU32 = region.place(16).unwrap();
        stop.store(0, Ordering::Relaxed);
        let _p = partner(|| {
            while stop.load(Ordering::Relaxed) == 0 {
                let guard = sec.lock(op).unwrap();
                if turn.load(Ordering::Relaxed) == 1 {
                    turn.store(0, Ordering::Relaxed);
                }
                drop(guard);
            }
            0
        });
        g.bench_function(name, |b| {
            b.iter(|| {
                let guard = sec.lock(op).unwrap();
                turn.store(1, Ordering::Relaxed);
                drop(guard);
                loop {
                    let guard = sec.lock(op).unwrap();
                    let back = turn.load(Ordering::Relaxed) == 0;
                    drop(guard);
                    if back {
                        break;
                    }
                }
            })
        });
        stop.store(1, Ordering::Relaxed);
    }
    g.finish();
}

criterion_group!(benches, uncontended, pingpong);
criterion_main!(benches);
