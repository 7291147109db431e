//! MPI calls against the two-process floors, in one run.
//!
//! - floor/pipe_pingpong: 8 bytes to a forked process and back over two pipes.
//! - floor/spin_pingpong: a word flipped back and forth in shared memory.
//! - roundtrip/pnum2, roundtrip/pnum4: `block_acquire` of a trivial unit
//!   (pnum = 4 puts 4 processes on this 2-core machine).
//! - calls10k/serial vs calls10k/pipelined: 10,000 trivial calls, each
//!   waited for, or all acquired (in windows of 250) then got.
//! - pi/*: the mpi_pi workload, 10^7 points in calls of 10^4, pnum = 3 vs one process.
//!
//! Run: `cargo bench --bench mpi`.

// criterion's macros generate undocumented functions.
#![allow(missing_docs)]

use std::hint::black_box;
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use xme::core::SharedRegion;
use xme::core::process::fork_child;
use xme::mpi::{Mpi, To};

fn floors(c: &mut Criterion) {
    let mut g = c.benchmark_group("floor");
    // pipe() gives (read end, write end).
    let (to_child, child_in) = nix::unistd::pipe().unwrap();
    let (from_child, child_out) = nix::unistd::pipe().unwrap();
    {
        let echo = fork_child(|| {
            let mut buf = [0u8; 8];
            while let Ok(8) = nix::unistd::read(&to_child, &mut buf) {
                if nix::unistd::write(child_out.as_fd(), &buf).is_err() {
                    break;
                }
            }
            0
        })
        .unwrap();
        g.bench_function("pipe_pingpong", |b| {
            let mut buf = [0u8; 8];
            b.iter(|| {
                nix::unistd::write(child_in.as_fd(), &7u64.to_le_bytes()).unwrap();
                nix::unistd::read(&from_child, &mut buf).unwrap();
            })
        });
        // The child holds a copy of the write end too, so it would never see
        // EOF: end it.
        echo.kill().unwrap();
    }
    let region = SharedRegion::anonymous(64).unwrap();
    let word: &AtomicU32 = region.place(0).unwrap();
    {
        let partner = fork_child(|| {
            loop {
                match word.load(Ordering::Acquire) {
                    1 => word.store(0, Ordering::Release),
                    2 => return 0,
                    _ => std::hint::spin_loop(),
                }
            }
        })
        .unwrap();
        g.bench_function("spin_pingpong", |b| {
            b.iter(|| {
                word.store(1, Ordering::Release);
                while word.load(Ordering::Acquire) != 0 {
                    std::hint::spin_loop();
                }
            })
        });
        word.store(2, Ordering::Release);
        partner.wait().unwrap();
    }
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
    g.bench_function("one_process", |b| b.iter(|| black_box(scatter((NUMS, 1)))));
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

criterion_group!(benches, floors, roundtrips, pipelined, pi);
criterion_main!(benches);
