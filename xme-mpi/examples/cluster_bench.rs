//! Benchmarks of the cluster backend, run under a launcher (one MPI run per
//! launch, so each mode is its own launch; `scripts/cluster-bench.sh` runs
//! them all in one session and prints the ratios):
//!
//! ```text
//! mpirun -n 2 target/release/examples/cluster_bench raw   # rsmpi 8-byte ping-pong: the floor
//! mpirun -n 2 target/release/examples/cluster_bench xme   # block_acquire, serial calls, map
//! mpirun -n 2 target/release/examples/cluster_bench streams   # map vs streams, 10^6 calls
//! target/release/examples/cluster_bench streams             # the same on a forked process
//! ```
//!
//! `streams` times `map` of 10^6 trivial calls against streams of a lazy
//! range (ordered, unordered), the three interleaved in each of the 15
//! samples so that a change of the machine's pace hits all alike; then the
//! growth of this process's resident memory over a stream of 10^7 inputs.
//!
//! Each figure is the median of 15 samples; prints `name: value unit` lines.

use std::time::Instant;

use mpi::traits::*;
use xme_mpi::{Mpi, To};

const SAMPLES: usize = 15;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// Times `f` (which does `per_sample` operations) `SAMPLES` times after a
/// warm-up; the median time per operation in nanoseconds.
fn per_op(per_sample: usize, mut f: impl FnMut()) -> f64 {
    f();
    median(
        (0..SAMPLES)
            .map(|_| {
                let t = Instant::now();
                f();
                t.elapsed().as_nanos() as f64 / per_sample as f64
            })
            .collect(),
    )
}

fn raw() {
    let universe = mpi::initialize().expect("MPI initialises once");
    let world = universe.world();
    const N: usize = 50_000;
    let mut x = [0u8; 8];
    match world.rank() {
        0 => {
            let peer = world.process_at_rank(1);
            let ns = per_op(N, || {
                for _ in 0..N {
                    peer.send(&x[..]);
                    peer.receive_into(&mut x[..]);
                }
            });
            println!("raw_pingpong_8B: {ns:.0} ns");
        }
        1 => {
            let peer = world.process_at_rank(0);
            for _ in 0..(SAMPLES + 1) * N {
                peer.receive_into(&mut x[..]);
                peer.send(&x[..]);
            }
        }
        _ => {}
    }
}

fn xme() {
    let size = xme_mpi::launcher_size().unwrap_or(2);
    let mut mpi = Mpi::new(size).expect("pnum");
    let inc = mpi.register("inc", |x: u64| x + 1);
    mpi.run(|m| {
        let ns = per_op(20_000, || {
            for i in 0..20_000u64 {
                std::hint::black_box(m.block_acquire(&inc, &i, To::Any).unwrap());
            }
        });
        println!("block_acquire_roundtrip: {ns:.0} ns");
        let serial = per_op(10_000, || {
            for i in 0..10_000u64 {
                std::hint::black_box(m.block_acquire(&inc, &i, To::Any).unwrap());
            }
        });
        println!("calls10k_serial: {:.3} ms", serial * 10_000.0 / 1e6);
        let args: Vec<u64> = (0..10_000).collect();
        let map = per_op(10_000, || {
            std::hint::black_box(m.map(&inc, &args).unwrap());
        });
        println!("calls10k_map: {:.3} ms", map * 10_000.0 / 1e6);
        println!("map_calls_per_second: {:.0}", 1e9 / map);
        println!("map_vs_serial: {:.2}x", serial / map);
    })
    .expect("the run");
}

/// Resident memory of this process, in bytes.
fn rss() -> usize {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: usize = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

fn streams() {
    const N: u64 = 1_000_000;
    let size = xme_mpi::launcher_size().unwrap_or(2);
    let mut mpi = Mpi::new(size).expect("pnum");
    let inc = mpi.register("inc", |x: u64| x + 1);
    mpi.run(|m| {
        // Memory first, before the timed runs' large vectors raise the
        // allocator's high-water mark.
        let _ = m.stream(&inc, 0..100_000u64).ordered().count();
        let before = rss();
        let mut peak = before;
        let mut sum = 0u64;
        let t = Instant::now();
        for (k, r) in m.stream(&inc, 0..10 * N).ordered().enumerate() {
            sum = sum.wrapping_add(r.unwrap());
            if k % 100_000 == 0 {
                peak = peak.max(rss());
            }
        }
        std::hint::black_box(sum);
        println!(
            "stream_10m_lazy: {:.2} s, resident memory {:.1} MiB, grew {:.1} MiB",
            t.elapsed().as_secs_f64(),
            before as f64 / (1 << 20) as f64,
            peak.saturating_sub(before) as f64 / (1 << 20) as f64
        );
        let args: Vec<u64> = (0..N).collect();
        let time = |f: &mut dyn FnMut() -> u64| {
            let t = Instant::now();
            std::hint::black_box(f());
            t.elapsed().as_secs_f64()
        };
        let mut map = || m.map(&inc, &args).unwrap().iter().sum::<u64>();
        let mut ordered = || {
            m.stream(&inc, 0..N)
                .ordered()
                .map(|r| r.unwrap())
                .sum::<u64>()
        };
        let mut unordered = || {
            m.stream(&inc, 0..N)
                .unordered()
                .map(|(_, r)| r.unwrap())
                .sum::<u64>()
        };
        let (mut tm, mut to, mut tu) = (Vec::new(), Vec::new(), Vec::new());
        time(&mut map); // warm-up
        for _ in 0..SAMPLES {
            tm.push(time(&mut map));
            to.push(time(&mut ordered));
            tu.push(time(&mut unordered));
        }
        let ratios = |t: &[f64]| median(t.iter().zip(&tm).map(|(s, m)| m / s).collect());
        let (ro, ru, rm) = (ratios(&to), ratios(&tu), median(tm.clone()));
        println!("map_1m: {:.2} M calls/s", N as f64 / rm / 1e6);
        println!(
            "stream_ordered_1m: {:.2} M calls/s ({:.0} % of map, median of paired samples)",
            N as f64 / median(to) / 1e6,
            ro * 100.0
        );
        println!(
            "stream_unordered_1m: {:.2} M calls/s ({:.0} % of map)",
            N as f64 / median(tu) / 1e6,
            ru * 100.0
        );
    })
    .expect("the run");
}

fn main() {
    match std::env::args().nth(1).as_deref() {
        Some("raw") => raw(),
        Some("xme") => xme(),
        Some("streams") => streams(),
        _ => {
            eprintln!("usage: cluster_bench raw|xme|streams (under mpirun -n 2)");
            std::process::exit(2);
        }
    }
}
