//! The Manager's value table against an in-process `Mutex<HashMap>`, in one run.
//!
//! - map/*: `Mutex<HashMap<String, Vec<u8>>>` holding postcard bytes, the
//!   same encoding the Manager uses (get = lock, copy, decode; set = encode,
//!   lock, insert).
//! - manager/*: the same operations on a Manager in shared memory.
//! - two_procs/*: two forked processes each doing 20,000 sets, on distinct
//!   keys or on one key; time for the whole batch (throughput = 40,000 / time).
//!
//! Run: `cargo bench --bench shm`.

// criterion's macros generate undocumented functions.
#![allow(missing_docs)]

use std::collections::HashMap;
use std::hint::black_box;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use serde::{Deserialize, Serialize};
use xme::core::SharedRegion;
use xme::core::process::fork_child;
use xme::shm::XmemBuilder;

/// A small value: 32 bytes once encoded.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Small {
    id: u64,
    name: String,
}

fn small(id: u64) -> Small {
    Small {
        id,
        name: "a value of about thirty bytes".into(),
    }
}

fn single_process(c: &mut Criterion) {
    let mut g = c.benchmark_group("single");
    let map: Mutex<HashMap<String, Vec<u8>>> = Mutex::new(HashMap::new());
    for i in 0..100 {
        map.lock()
            .unwrap()
            .insert(format!("key{i}"), postcard::to_stdvec(&small(i)).unwrap());
    }
    map.lock()
        .unwrap()
        .insert("counter".into(), postcard::to_stdvec(&0u64).unwrap());
    g.bench_function("map_get", |b| {
        b.iter(|| {
            let bytes = map.lock().unwrap().get("key42").cloned().unwrap();
            black_box(postcard::from_bytes::<Small>(&bytes).unwrap())
        })
    });
    g.bench_function("map_set", |b| {
        let v = small(7);
        b.iter(|| {
            let bytes = postcard::to_stdvec(&v).unwrap();
            map.lock().unwrap().insert("key42".to_string(), bytes);
        })
    });
    g.bench_function("map_update_counter", |b| {
        b.iter(|| {
            let mut m = map.lock().unwrap();
            let n: u64 = postcard::from_bytes(&m["counter"]).unwrap();
            m.insert(
                "counter".to_string(),
                postcard::to_stdvec(&(n + 1)).unwrap(),
            );
        })
    });

    let xmem = XmemBuilder::new().build().unwrap();
    for i in 0..100 {
        xmem.set(&format!("key{i}"), &small(i)).unwrap();
    }
    xmem.set("counter", &0u64).unwrap();
    g.bench_function("manager_get", |b| {
        b.iter(|| black_box(xmem.get::<Small>("key42").unwrap()))
    });
    g.bench_function("manager_set", |b| {
        let v = small(7);
        b.iter(|| xmem.set("key42", &v).unwrap())
    });
    g.bench_function("manager_update_counter", |b| {
        b.iter(|| {
            xmem.update_with("counter", |n: Option<u64>| n.unwrap_or(0) + 1)
                .unwrap()
        })
    });
    g.finish();
}

fn two_processes(c: &mut Criterion) {
    const SETS: u64 = 20_000;
    let mut g = c.benchmark_group("two_procs");
    g.sample_size(10);
    g.measurement_time(Duration::from_secs(10));
    let xmem = XmemBuilder::new().build().unwrap();
    let gate = SharedRegion::anonymous(64).unwrap();
    let go: &AtomicU64 = gate.place(0).unwrap();
    for (name, same_key) in [("distinct_keys", false), ("same_key", true)] {
        g.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    go.store(0, Ordering::SeqCst);
                    let children: Vec<_> = (0..2)
                        .map(|p| {
                            let xmem = &xmem;
                            fork_child(move || {
                                while go.load(Ordering::Acquire) == 0 {
                                    std::hint::spin_loop();
                                }
                                let key = if same_key {
                                    "shared".to_string()
                                } else {
                                    format!("own{p}")
                                };
                                for i in 0..SETS {
                                    xmem.set(&key, &small(i)).unwrap();
                                }
                                0
                            })
                            .unwrap()
                        })
                        .collect();
                    let t = Instant::now();
                    go.store(1, Ordering::Release);
                    for c in children {
                        c.wait().unwrap();
                    }
                    total += t.elapsed();
                }
                total
            })
        });
    }
    g.finish();
}

criterion_group!(benches, single_process, two_processes);
criterion_main!(benches);
