//! MPI calls against the two-process floors, in one run.
//!
//! - floor/pipe_pingpong: 8 bytes to a forked process and back over two pipes.
//! - floor/spin_pingpong: a word flipped back and forth in shared memory.
//! - roundtrip/pnum2, roundtrip/pnum4: `block_acquire` of a trivial unit
//!   (pnum = 4 puts 4 processes on this 2-core machine).
//! - calls10k/serial vs calls10k/pipelined: 10,000 trivial calls, each
//!   waited for, or all acquired (in windows of 250) then got.
//! - calls1m/*: 10^6 trivial calls over pnum = 2 (one logical process):
//!   `map` of a slice against streams of a lazy range, ordered and
//!   unordered (target: streams at >= 80 % of map's calls/s).
//! - pi/*: the mpi_pi workload, 10^7 points in calls of 10^4: pnum = 3 vs one
//!   process, and vs the same calls on two threads of one process (what two
//!   cores of this machine give at best); `mpi_pnum3_no_calls` is the fixed
//!   cost, the forks and the close.
//!
//! Run: `cargo bench --bench mpi`.

// criterion's macros generate undocumented functions.
#![allow(missing_docs)]

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};

mod common;
use xme::mpi::{Mpi, To};

fn floors(c: &mut Criterion) {
    let mut g = c.benchmark_group("floor");
    common::pipe_pingpong(&mut g, "pipe_pingpong");
    common::spin_pingpong(&mut g, "spin_pingpong");
    g.finish();
}

fn roundtrips(c: &mut Criterion) {
    let mut g = c.benchmark_group("roundtrip");
    for pnum in [2, 4] {
        g.bench_function(format!("pnum{pnum}"), |b| {
            let mut mpi = Mpi::new(pnum).unwrap();
            let inc = mpi.register("inc", |x: u64| x + 1);
            mpi.run(|m| b.iter(|| black_box(m.block_acquire(&inc, &41, To::Any).unwrap())))
                .unwrap();
        });
    }
    g.finish();
}

fn pipelined(c: &mut Criterion) {
    let mut g = c.benchmark_group("calls10k");
    g.sample_size(10);
    g.bench_function("serial", |b| {
        let mut mpi = Mpi::new(2).unwrap();
        let inc = mpi.register("inc", |x: u64| x + 1);
        mpi.run(|m| {
            b.iter(|| {
                for i in 0..10_000u64 {
                    black_box(m.block_acquire(&inc, &i, To::Any).unwrap());
                }
            })
        })
        .unwrap();
    });
    g.bench_function("pipelined", |b| {
        let mut mpi = Mpi::new(2).unwrap();
        let inc = mpi.register("inc", |x: u64| x + 1);
        mpi.run(|m| {
            b.iter(|| {
                for w in 0..40u64 {
                    let slots: Vec<_> = (0..250u64)
                        .map(|i| m.acquire(&inc, &(w * 250 + i), To::Any).unwrap())
                        .collect();
                    for s in slots {
                        black_box(m.get(s).unwrap());
                    }
                }
            })
        })
        .unwrap();
    });
    g.bench_function("map", |b| {
        let mut mpi = Mpi::new(2).unwrap();
        let inc = mpi.register("inc", |x: u64| x + 1);
        let args: Vec<u64> = (0..10_000).collect();
        mpi.run(|m| b.iter(|| black_box(m.map(&inc, &args).unwrap())))
            .unwrap();
    });
    g.finish();
}

fn streams(c: &mut Criterion) {
    const N: u64 = 1_000_000;
    let mut g = c.benchmark_group("calls1m");
    g.sample_size(10);
    g.measurement_time(Duration::from_secs(6));
    g.throughput(criterion::Throughput::Elements(N));
    let mut mpi = Mpi::new(2).unwrap();
    let inc = mpi.register("inc", |x: u64| x + 1);
    let args: Vec<u64> = (0..N).collect();
    mpi.run(|m| {
        g.bench_function("map", |b| b.iter(|| black_box(m.map(&inc, &args).unwrap())));
        g.bench_function("stream_ordered", |b| {
            b.iter(|| {
                m.stream(&inc, 0..N)
                    .ordered()
                    .map(|r| r.unwrap())
                    .fold(0u64, |a, x| a.wrapping_add(black_box(x)))
            })
        });
        g.bench_function("stream_unordered", |b| {
            b.iter(|| {
                m.stream(&inc, 0..N)
                    .unordered()
                    .map(|(_, r)| r.unwrap())
                    .fold(0u64, |a, x| a.wrapping_add(black_box(x)))
            })
        });
    })
    .unwrap();
    g.finish();
}

/// The mpi_pi unit: points of `nums` throws inside the unit circle.
fn scatter((nums, seed): (u64, u64)) -> u64 {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut next = || {
        s ^= s >> 12;
        s ^= s << 25;
        s ^= s >> 27;
        (s.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0
    };
    (0..nums)
        .filter(|_| {
            let (x, y) = (next(), next());
            x * x + y * y <= 1.0
        })
        .count() as u64
}

fn pi(c: &mut Criterion) {
    const NUMS: u64 = 10_000_000;
    const SUB: u64 = 10_000;
    let mut g = c.benchmark_group("pi");
    g.sample_size(10);
    g.measurement_time(Duration::from_secs(8));
    g.bench_function("one_process", |b| {
        b.iter(|| black_box((0..NUMS / SUB).map(|i| scatter((SUB, i + 1))).sum::<u64>()))
    });
    // The machine's own ceiling: the same calls over two threads of one
    // process, no messages at all (two vCPUs need not give twice the work).
    g.bench_function("two_threads", |b| {
        b.iter(|| {
            std::thread::scope(|s| {
                let half = |first: u64| {
                    move || {
                        (first..NUMS / SUB)
                            .step_by(2)
                            .map(|i| scatter((SUB, i + 1)))
                            .sum::<u64>()
                    }
                };
                let (a, b) = (s.spawn(half(0)), s.spawn(half(1)));
                black_box(a.join().unwrap() + b.join().unwrap())
            })
        })
    });
    // The fixed part of mpi_pnum3: forking two logical processes and closing them.
    g.bench_function("mpi_pnum3_no_calls", |b| {
        b.iter(|| Mpi::new(3).unwrap().run(|_| ()).unwrap())
    });
    g.bench_function("mpi_pnum3", |b| {
        b.iter(|| {
            Mpi::new(3)
                .unwrap()
                .run(|m| {
                    let (tx, rx) = std::sync::mpsc::channel();
                    std::thread::scope(|s| {
                        let collector = s.spawn(move || {
                            rx.into_iter().map(|slot| m.get(slot).unwrap()).sum::<u64>()
                        });
                        for i in 0..NUMS / SUB {
                            tx.send(m.acquire_fn(scatter, &(SUB, i + 1), To::Any).unwrap())
                                .unwrap();
                        }
                        drop(tx);
                        black_box(collector.join().unwrap())
                    })
                })
                .unwrap()
        })
    });
    g.finish();
}

criterion_group!(benches, floors, roundtrips, pipelined, streams, pi);
criterion_main!(benches);
