//! The Manager's call buffer and Guard (issue: Manager execution), in one run.
//!
//! - roundtrip/futex_floor: two processes hand a shared word back and forth,
//!   each sleeping on a shared futex until its turn (the floor).
//! - roundtrip/append_exec_get: `append` a trivial call, a running Guard
//!   `exec`s it, `get_result` takes the result.
//! - throughput/buffered: 10 producer processes append 10,000 fire-and-forget
//!   `add(1)` calls each; one Guard runs them (time until the last one ran).
//! - throughput/direct: the same 100,000 `add(1)` as in-caller atomic
//!   read-modify-writes (`SharedObject::invoke`), no Guard.
//! - seed_2_5/end_to_end: examples/guard.rs without printing: Manager, Guard
//!   and ten children through the standard interface, forks included.
//!
//! Run: `cargo bench --bench guard`.

// criterion's macros generate undocumented functions.
#![allow(missing_docs)]

use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};

mod common;
use serde::{Deserialize, Serialize};
use xme::core::process::fork_child;
use xme::shm::{Call, Guard, Manager, SharedObject, XmemBuilder};
use xme::{Array, Context, Job, Xme};

#[derive(Debug, Default, Serialize, Deserialize)]
struct V {
    value: i64,
}

impl V {
    fn add(&mut self, n: i64) {
        self.value += n;
    }
}

fn trivial(_m: &Manager, x: u32) -> u32 {
    x + 1
}

fn roundtrip(c: &mut Criterion) {
    let mut g = c.benchmark_group("roundtrip");
    g.measurement_time(Duration::from_secs(4));

    common::futex_pingpong(&mut g, "futex_floor");

    let xmem = XmemBuilder::new().build().unwrap();
    let guard = Guard::new().spawn(&xmem).unwrap();
    let op = xmem.alloc_operator();
    let call = Call::function(trivial, &41).unwrap();
    g.bench_function("append_exec_get", |b| {
        b.iter(|| {
            xmem.append(&call, op).unwrap();
            assert_eq!(
                xmem.get_result::<u32>(op, Duration::from_secs(5)).unwrap(),
                42
            );
        })
    });
    guard.stop(Duration::from_secs(5)).unwrap();
    g.finish();
}

const PRODUCERS: usize = 10;
const PER_PRODUCER: usize = 10_000;

fn throughput(c: &mut Criterion) {
    let mut g = c.benchmark_group("throughput");
    g.sample_size(10);
    g.measurement_time(Duration::from_secs(8));
    let xmem = XmemBuilder::new().build().unwrap();
    let v = SharedObject::create(&xmem, "v", &V::default()).unwrap();
    let guard = Guard::new().spawn(&xmem).unwrap();
    g.bench_function("buffered", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let target = xmem.executed() + (PRODUCERS * PER_PRODUCER) as u64;
                let t = Instant::now();
                let producers: Vec<_> = (0..PRODUCERS)
                    .map(|_| {
                        fork_child(|| {
                            let op = xmem.alloc_operator();
                            let call = v.call(V::add, &1).unwrap();
                            for _ in 0..PER_PRODUCER {
                                xmem.append(&call, op).unwrap();
                            }
                            0
                        })
                        .unwrap()
                    })
                    .collect();
                while xmem.executed() < target {
                    std::thread::sleep(Duration::from_micros(200));
                }
                total += t.elapsed();
                for p in producers {
                    assert!(p.wait().unwrap().is_success());
                }
            }
            total
        })
    });
    guard.stop(Duration::from_secs(5)).unwrap();
    g.bench_function("direct", |b| {
        b.iter(|| {
            let producers: Vec<_> = (0..PRODUCERS)
                .map(|_| {
                    fork_child(|| {
                        for _ in 0..PER_PRODUCER {
                            v.invoke(&xmem, V::add, 1).unwrap();
                        }
                        0
                    })
                    .unwrap()
                })
                .collect();
            for p in producers {
                assert!(p.wait().unwrap().is_success());
            }
        })
    });
    g.finish();
}

fn seed_2_5(c: &mut Criterion) {
    let mut g = c.benchmark_group("seed_2_5");
    g.sample_size(20);
    g.bench_function("end_to_end", |b| {
        b.iter(|| {
            let xmem = XmemBuilder::new().build().unwrap();
            let v = SharedObject::create(&xmem, "v", &V::default()).unwrap();
            let fun = |ctx: &mut Context<Manager>, _i: u32| {
                let (xmem, op) = (ctx.data(), ctx.data().alloc_operator());
                for _ in 0..100 {
                    xmem.append(&v.call(V::add, &1).unwrap(), op).unwrap();
                }
            };
            let guard = Guard::new();
            let (r, _) = Xme::new()
                .pnum(11)
                .print_in_screen(false)
                .gfuns(
                    &xmem,
                    (
                        Job::with_context(|ctx: &mut Context<Manager>, ()| guard.serve(ctx), ()),
                        Job::with_context(fun, Array::new(0..10u32)),
                    ),
                )
                .unwrap();
            assert_eq!(r.into_result().unwrap()[0].executed, 1000);
            assert_eq!(v.get(&xmem).unwrap().value, 1000);
        })
    });
    g.finish();
}

criterion_group!(benches, roundtrip, throughput, seed_2_5);
criterion_main!(benches);
