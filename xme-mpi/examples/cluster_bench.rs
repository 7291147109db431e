//! Benchmarks of the cluster backend, run under a launcher (one MPI run per
//! launch, so each mode is its own launch; `scripts/cluster-bench.sh` runs
//! them all in one session and prints the ratios):
//!
//! ```text
//! mpirun -n 2 target/release/examples/cluster_bench raw   # rsmpi 8-byte ping-pong: the floor
//! mpirun -n 2 target/release/examples/cluster_bench xme   # block_acquire, serial calls, map
//! ```
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

fn main() {
    match std::env::args().nth(1).as_deref() {
        Some("raw") => raw(),
        Some("xme") => xme(),
        _ => {
            eprintln!("usage: cluster_bench raw|xme (under mpirun -n 2)");
            std::process::exit(2);
        }
    }
}
