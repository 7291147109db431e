//! The Manager's value table against an in-process `Mutex<HashMap>`, in one run.
//!
//! - map/*: `Mutex<HashMap<String, Vec<u8>>>` holding postcard bytes, the
//!   same encoding the Manager uses (get = lock, copy, decode; set = encode,
//!   lock, insert).
//! - manager/*: the same operations on a Manager in shared memory.
//! - two_procs/*: two forked processes each doing 20,000 sets, on distinct
//!   keys or on one key; time for the whole batch (throughput = 40,000 / time).
//!
//! - value_1mib/*, value_32b/*: one value's get and set on the Manager
//!   (`get_raw` / `set_raw`: bytes as stored, no encoding), on LMDB (heed,
//!   `WRITE_MAP | NO_SYNC`, on /dev/shm: get = read txn + copy out, since a
//!   borrowed LMDB value dies with its transaction; set = write txn + put +
//!   commit), and on an in-process `Mutex<HashMap>`; `memcpy` of the same
//!   bytes is the floor.
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

/// An LMDB environment on /dev/shm (removed on drop).
struct Lmdb {
    env: heed::Env,
    db: heed::Database<heed::types::Str, heed::types::Bytes>,
    dir: std::path::PathBuf,
}

impl Lmdb {
    fn new() -> Lmdb {
        let dir =
            std::path::PathBuf::from(format!("/dev/shm/xme-bench-lmdb-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut options = heed::EnvOpenOptions::new();
        options.map_size(1 << 30);
        // SAFETY: WRITE_MAP and NO_SYNC trade durability for speed, which a
        // benchmark on tmpfs does not need; nothing else opens this directory.
        unsafe {
            options.flags(heed::EnvFlags::WRITE_MAP | heed::EnvFlags::NO_SYNC);
        }
        // SAFETY: the directory is new and used by this process only.
        let env = unsafe { options.open(&dir) }.unwrap();
        let mut wtxn = env.write_txn().unwrap();
        let db = env.create_database(&mut wtxn, None).unwrap();
        wtxn.commit().unwrap();
        Lmdb { env, db, dir }
    }

    fn get(&self, key: &str) -> Vec<u8> {
        let rtxn = self.env.read_txn().unwrap();
        self.db.get(&rtxn, key).unwrap().unwrap().to_vec()
    }

    fn set(&self, key: &str, value: &[u8]) {
        let mut wtxn = self.env.write_txn().unwrap();
        self.db.put(&mut wtxn, key, value).unwrap();
        wtxn.commit().unwrap();
    }
}

impl Drop for Lmdb {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn one_value(c: &mut Criterion) {
    let lmdb = Lmdb::new();
    let xmem = XmemBuilder::new().arena_bytes(64 << 20).build().unwrap();
    for (group, len) in [("value_1mib", 1usize << 20), ("value_32b", 32)] {
        let mut g = c.benchmark_group(group);
        if len > 1024 {
            g.throughput(criterion::Throughput::Bytes(len as u64));
        }
        let bytes: Vec<u8> = (0..len).map(|i| i as u8).collect();
        let raw = xme::shm::RawValue::encode(&bytes).unwrap();
        let stored = raw.bytes().to_vec();
        g.bench_function("memcpy", |b| {
            let mut dst = vec![0u8; stored.len()];
            b.iter(|| {
                dst.copy_from_slice(black_box(&stored));
                black_box(&dst);
            })
        });
        let map: Mutex<HashMap<String, Vec<u8>>> = Mutex::new(HashMap::new());
        map.lock().unwrap().insert("v".into(), stored.clone());
        g.bench_function("map_get", |b| {
            b.iter(|| black_box(map.lock().unwrap().get("v").cloned().unwrap()))
        });
        g.bench_function("map_set", |b| {
            b.iter(|| {
                let v = black_box(&stored).clone();
                map.lock().unwrap().insert("v".to_string(), v);
            })
        });
        lmdb.set("v", &stored);
        g.bench_function("lmdb_get", |b| b.iter(|| black_box(lmdb.get("v"))));
        g.bench_function("lmdb_set", |b| b.iter(|| lmdb.set("v", black_box(&stored))));
        xmem.set_raw("v", &raw).unwrap();
        g.bench_function("manager_get", |b| {
            b.iter(|| black_box(xmem.get_raw("v").unwrap().unwrap()))
        });
        g.bench_function("manager_set", |b| {
            b.iter(|| xmem.set_raw("v", black_box(&raw)).unwrap())
        });
        g.finish();
    }
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

criterion_group!(benches, single_process, one_value, two_processes);
criterion_main!(benches);
