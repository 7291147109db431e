//! The standard interface against the floors of this machine, in one run.
//!
//! - floor/fork_exit_wait: `fork` + child `_exit(0)` + `waitpid`.
//! - floor/fork_pipe8: the same, the child writing 8 bytes to a pipe first.
//! - floor/2forks_10frames: 2 forks, 10 frames of 8 bytes over their pipes,
//!   2 reaps: the least any 2-process run of 10 calls can cost.
//! - fun/10_trivial_pnum2: `Xme::fun` over 10 trivial calls with pnum = 2
//!   (`Spawning::OnDemand`, the default: one worker is worth forking here);
//!   fun/10_trivial_pnum2_eager: the same with both workers forked at once.
//! - sum/*: a CPU-bound sum, split in 2 calls with pnum = 2, vs one process,
//!   and vs the same two halves in two raw forked processes (the machine's ceiling).
//! - result/*: one call returning 10 MiB of bytes already encoded by the task
//!   (a pickled Python object, say): as `RawBytes` (sent as they are) vs as a
//!   `Vec<u8>` (encoded again by postcard, byte by byte).
//!
//! Run: `cargo bench --bench exec`.

// criterion's macros generate undocumented functions.
#![allow(missing_docs)]

use std::hint::black_box;
use std::os::fd::{AsFd, OwnedFd};

use criterion::{Criterion, criterion_group, criterion_main};
use nix::sys::wait::waitpid;
use nix::unistd::{ForkResult, fork, pipe, read, write};
use xme::exec::RawBytes;
use xme::{Array, Spawning, Xme};

/// Forks a child that writes `frames` 8-byte frames to a new pipe and exits.
fn fork_writer(frames: usize) -> (nix::unistd::Pid, OwnedFd) {
    let (r, w) = pipe().unwrap();
    // SAFETY: the benchmark process is single-threaded at this point of the
    // measurement loop, and the child only calls write and _exit.
    match unsafe { fork() }.unwrap() {
        ForkResult::Child => {
            drop(r);
            for i in 0..frames as u64 {
                let _ = write(w.as_fd(), &i.to_le_bytes());
            }
            // SAFETY: leaving the child without running the parent's destructors.
            unsafe { libc::_exit(0) }
        }
        ForkResult::Parent { child } => (child, r),
    }
}

fn read_frames(r: &OwnedFd, frames: usize) {
    let mut buf = [0u8; 8];
    for _ in 0..frames {
        let mut got = 0;
        while got < 8 {
            got += read(r, &mut buf[got..]).unwrap();
        }
    }
}

fn floors(c: &mut Criterion) {
    let mut g = c.benchmark_group("floor");
    g.bench_function("fork_exit_wait", |b| {
        b.iter(|| {
            // SAFETY: as in fork_writer; the child only calls _exit.
            match unsafe { fork() }.unwrap() {
                // SAFETY: as above.
                ForkResult::Child => unsafe { libc::_exit(0) },
                ForkResult::Parent { child } => {
                    waitpid(child, None).unwrap();
                }
            }
        })
    });
    g.bench_function("fork_pipe8", |b| {
        b.iter(|| {
            let (child, r) = fork_writer(1);
            read_frames(&r, 1);
            waitpid(child, None).unwrap();
        })
    });
    g.bench_function("2forks_10frames", |b| {
        b.iter(|| {
            let (c1, r1) = fork_writer(5);
            let (c2, r2) = fork_writer(5);
            read_frames(&r1, 5);
            read_frames(&r2, 5);
            waitpid(c1, None).unwrap();
            waitpid(c2, None).unwrap();
        })
    });
    g.finish();
}

fn fun(c: &mut Criterion) {
    for (name, spawning) in [
        ("fun/10_trivial_pnum2", Spawning::OnDemand),
        ("fun/10_trivial_pnum2_eager", Spawning::Eager),
    ] {
        let xme = Xme::new().pnum(2).print_in_screen(false).spawning(spawning);
        c.bench_function(name, |b| {
            b.iter(|| {
                let out = xme.fun(|x: u64| x + 1, Array::new(0..10u64)).unwrap();
                black_box(out.into_result().unwrap())
            })
        });
    }
}

/// One addition at a time (black_box: no closed form), from `lo` to `hi`.
/// Never inlined, so the one-process and the xme runs execute the same code.
#[inline(never)]
fn sum_range(lo: u64, hi: u64) -> u64 {
    let mut s = 0u64;
    for i in lo..hi {
        s += black_box(i);
    }
    s
}

fn sum(c: &mut Criterion) {
    const N: u64 = 400_000_000;
    let mut g = c.benchmark_group("sum");
    g.sample_size(10);
    g.bench_function("one_process", |b| {
        b.iter(|| black_box(sum_range(0, N / 2) + sum_range(N / 2, N)))
    });
    // The machine's own ceiling: the two halves in two raw forked processes.
    let region = xme::core::SharedRegion::anonymous(16).unwrap();
    let halves: &[std::sync::atomic::AtomicU64] = region.slice(0, 2).unwrap();
    g.bench_function("two_raw_forks", |b| {
        b.iter(|| {
            let children: Vec<_> = (0..2u64)
                .map(|k| {
                    xme::core::process::fork_child(move || {
                        let v = sum_range(k * N / 2, (k + 1) * N / 2);
                        halves[k as usize].store(v, std::sync::atomic::Ordering::SeqCst);
                        0
                    })
                    .unwrap()
                })
                .collect();
            for c in children {
                c.wait().unwrap();
            }
            black_box(
                halves[0].load(std::sync::atomic::Ordering::SeqCst)
                    + halves[1].load(std::sync::atomic::Ordering::SeqCst),
            )
        })
    });
    let xme = Xme::new().pnum(2).print_in_screen(false);
    g.bench_function("xme_2calls_pnum2", |b| {
        b.iter(|| {
            let parts = xme
                .fun(
                    |k: u64| sum_range(k * N / 2, (k + 1) * N / 2),
                    Array::new(0..2u64),
                )
                .unwrap()
                .into_result()
                .unwrap();
            black_box(parts.iter().sum::<u64>())
        })
    });
    g.finish();
}

fn result(c: &mut Criterion) {
    const LEN: usize = 10 << 20;
    let bytes: Vec<u8> = (0..LEN).map(|i| (i % 251) as u8).collect();
    let xme = Xme::new().pnum(1).print_in_screen(false);
    let mut g = c.benchmark_group("result");
    g.sample_size(20);
    g.bench_function("10MiB_raw_bytes", |b| {
        b.iter(|| {
            let out = xme.fun(|()| RawBytes(bytes.clone()), ()).unwrap();
            black_box(out.into_result().unwrap()[0].len())
        })
    });
    g.bench_function("10MiB_postcard_vec_u8", |b| {
        b.iter(|| {
            let out = xme.fun(|()| bytes.clone(), ()).unwrap();
            black_box(out.into_result().unwrap()[0].len())
        })
    });
    g.finish();
}

criterion_group!(benches, floors, fun, sum, result);
criterion_main!(benches);
