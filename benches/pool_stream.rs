//! The pool's streams and handles against Python's `multiprocessing.Pool(2)`,
//! in one run.
//!
//! - stream_1e6/*: 10^6 trivial calls on 2 workers: xme streams (automatic
//!   chunks, unordered and ordered) vs `Pool(2).imap_unordered(...,
//!   chunksize=1000)` and `imap` (a long-lived Python helper, timing the map
//!   alone; skipped if `python3` is missing). Throughput in calls/s.
//! - stream_chunk/*: unordered streams with fixed chunk sizes 1 … 10,000
//!   (fewer calls for the small sizes), to compare the automatic size with
//!   the best fixed one.
//! - call/*: one warm `spawn(f, x).join()`; the same awaited on a tokio
//!   current-thread runtime; cancelling a running call (cancel + join);
//!   the first result of a lazy 10^7-call stream.
//!
//! Run: `cargo bench --bench pool_stream` (then `python3 scripts/medians.py`).

// criterion's macros generate undocumented functions.
#![allow(missing_docs)]

use std::hint::black_box;
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput};
use xme::Pool;

fn trivial(x: u64) -> u64 {
    x + 1
}

fn forever(_: ()) -> u64 {
    loop {
        std::thread::park();
    }
}

const N: u64 = 1_000_000;

/// The Python helper (benches/peers/mp_pool.py), if python3 runs here.
struct PythonPool {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl PythonPool {
    fn start() -> Option<PythonPool> {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/benches/peers/mp_pool.py");
        let mut child = Command::new("python3")
            .arg(script)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .ok()?;
        let stdin = child.stdin.take()?;
        let mut stdout = BufReader::new(child.stdout.take()?);
        let mut line = String::new();
        stdout.read_line(&mut line).ok()?;
        (line.trim() == "ready").then_some(PythonPool {
            child,
            stdin,
            stdout,
        })
    }

    /// Nanoseconds of one map of `n` calls.
    fn map(&mut self, kind: &str, n: u64, chunk: u64) -> Duration {
        writeln!(self.stdin, "{kind} {n} {chunk}").unwrap();
        let mut line = String::new();
        self.stdout.read_line(&mut line).unwrap();
        Duration::from_nanos(line.trim().parse().unwrap())
    }
}

impl Drop for PythonPool {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn streams(c: &mut Criterion, pool: &Pool) {
    let mut g = c.benchmark_group("stream_1e6");
    g.sample_size(10);
    g.throughput(Throughput::Elements(N));
    g.bench_function("xme_unordered_auto", |b| {
        b.iter(|| {
            let s: u64 = pool
                .stream(trivial, 0..N)
                .unordered()
                .map(|(_, r)| r.unwrap())
                .sum();
            black_box(s)
        })
    });
    g.bench_function("xme_ordered_auto", |b| {
        b.iter(|| {
            let s: u64 = pool
                .stream(trivial, 0..N)
                .ordered()
                .map(Result::unwrap)
                .sum();
            black_box(s)
        })
    });
    match PythonPool::start() {
        Some(mut py) => {
            g.bench_function("python_imap_unordered_chunk1000", |b| {
                b.iter_custom(|iters| (0..iters).map(|_| py.map("imap_unordered", N, 1000)).sum())
            });
            g.bench_function("python_imap_chunk1000", |b| {
                b.iter_custom(|iters| (0..iters).map(|_| py.map("imap", N, 1000)).sum())
            });
        }
        None => eprintln!("python3 with multiprocessing not found: the Python peer is skipped"),
    }
    g.finish();

    let mut g = c.benchmark_group("stream_chunk");
    g.sample_size(10);
    for chunk in [1u64, 10, 100, 1000, 10_000] {
        let n = match chunk {
            1 => 20_000,
            10 => 100_000,
            _ => N,
        };
        g.throughput(Throughput::Elements(n));
        g.bench_with_input(
            BenchmarkId::new("xme_unordered", chunk),
            &chunk,
            |b, &chunk| {
                b.iter(|| {
                    let s: u64 = pool
                        .stream(trivial, 0..n)
                        .chunk(chunk as usize)
                        .unordered()
                        .map(|(_, r)| r.unwrap())
                        .sum();
                    black_box(s)
                })
            },
        );
    }
    g.finish();
}

fn calls(c: &mut Criterion, pool: &Pool) {
    let mut g = c.benchmark_group("call");
    g.bench_function("spawn_join", |b| {
        b.iter(|| black_box(pool.spawn(trivial, black_box(7)).join().unwrap()))
    });
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    g.bench_function("spawn_await_current_thread", |b| {
        b.iter(|| black_box(rt.block_on(pool.spawn(trivial, black_box(7))).unwrap()))
    });
    g.sample_size(20);
    g.bench_function("cancel_running", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let mut call = pool.spawn(forever, ());
                // Let it start running.
                assert!(call.join_timeout(Duration::from_millis(3)).is_none());
                let t = Instant::now();
                call.cancel();
                assert!(call.join().unwrap_err().is_cancelled());
                total += t.elapsed();
            }
            total
        })
    });
    g.bench_function("first_result_of_1e7_lazy", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let t = Instant::now();
                let mut s = pool.stream(trivial, 0..10_000_000u64).unordered();
                black_box(s.next().unwrap().1.unwrap());
                total += t.elapsed();
                drop(s);
            }
            total
        })
    });
    g.finish();
}

fn main() {
    let pool = Pool::new(2).unwrap();
    let mut c = Criterion::default().configure_from_args();
    streams(&mut c, &pool);
    calls(&mut c, &pool);
    c.final_summary();
}
