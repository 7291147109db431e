//! The warm pool (`xme::Pool`) against procspawn's pool and `Xme::fun`, in
//! one run.
//!
//! - warm/*: 10 trivial calls on 2 workers made beforehand: xme's `Pool`
//!   vs `procspawn::Pool` (both keep their workers).
//! - cold/*: pool creation + the 10 calls + drop (xme `Pool`, procspawn), and
//!   `Xme::fun` (which forks per batch).
//! - sum/*: the 4·10^8 split sum of `benches/exec.rs` on a warm `Pool` of 2
//!   vs one process.
//!
//! Run: `cargo bench --bench pool`.

// criterion's macros generate undocumented functions.
#![allow(missing_docs)]

use std::hint::black_box;

use criterion::Criterion;
use xme::{Array, Pool, Xme};

fn trivial(x: u64) -> u64 {
    x + 1
}

/// One addition at a time (black_box: no closed form), from `lo` to `hi`.
#[inline(never)]
fn sum_range(lo: u64, hi: u64) -> u64 {
    let mut s = 0u64;
    for i in lo..hi {
        s += black_box(i);
    }
    s
}

const N: u64 = 400_000_000;

fn half(k: u64) -> u64 {
    sum_range(k * N / 2, (k + 1) * N / 2)
}

fn warm(c: &mut Criterion, pool: &Pool) {
    let mut g = c.benchmark_group("warm");
    g.bench_function("xme_pool_10_calls", |b| {
        b.iter(|| {
            black_box(
                pool.fun(trivial, Array::new(0..10u64))
                    .unwrap()
                    .into_result()
                    .unwrap(),
            )
        })
    });
    let spawn_pool = procspawn::Pool::new(2).unwrap();
    g.bench_function("procspawn_pool_10_calls", |b| {
        b.iter(|| {
            let handles: Vec<_> = (0..10u64).map(|i| spawn_pool.spawn(i, trivial)).collect();
            black_box(
                handles
                    .into_iter()
                    .map(|h| h.join().unwrap())
                    .collect::<Vec<u64>>(),
            )
        })
    });
    g.finish();
    spawn_pool.shutdown();
}

fn cold(c: &mut Criterion) {
    let mut g = c.benchmark_group("cold");
    g.sample_size(20);
    g.bench_function("xme_pool_new_10_calls_drop", |b| {
        b.iter(|| {
            let pool = Pool::new(2).unwrap();
            black_box(
                pool.fun(trivial, Array::new(0..10u64))
                    .unwrap()
                    .into_result()
                    .unwrap(),
            )
        })
    });
    g.bench_function("procspawn_pool_new_10_calls_drop", |b| {
        b.iter(|| {
            let pool = procspawn::Pool::new(2).unwrap();
            let handles: Vec<_> = (0..10u64).map(|i| pool.spawn(i, trivial)).collect();
            let out: Vec<u64> = handles.into_iter().map(|h| h.join().unwrap()).collect();
            pool.shutdown();
            black_box(out)
        })
    });
    let xme = Xme::new().pnum(2).print_in_screen(false);
    g.bench_function("xme_fun_10_calls", |b| {
        b.iter(|| {
            black_box(
                xme.fun(trivial, Array::new(0..10u64))
                    .unwrap()
                    .into_result()
                    .unwrap(),
            )
        })
    });
    g.finish();
}

fn sum(c: &mut Criterion, pool: &Pool) {
    let mut g = c.benchmark_group("sum");
    g.sample_size(10);
    g.bench_function("one_process", |b| b.iter(|| black_box(half(0) + half(1))));
    g.bench_function("xme_pool_2calls_pnum2", |b| {
        b.iter(|| {
            let parts = pool
                .fun(half, Array::new(0..2u64))
                .unwrap()
                .into_result()
                .unwrap();
            black_box(parts.iter().sum::<u64>())
        })
    });
    g.finish();
}

fn main() {
    // procspawn re-runs this binary for its workers: this returns at once in
    // the parent and never returns in a procspawn worker.
    procspawn::init();
    // First, before criterion or procspawn start any thread: the pool.
    let pool = Pool::new(2).unwrap();
    let mut c = Criterion::default().configure_from_args();
    warm(&mut c, &pool);
    cold(&mut c);
    sum(&mut c, &pool);
    c.final_summary();
}
