//! Seed 3.3: pi by throwing points at a square, the throws split into calls
//! run by logical processes; a second thread collects results as they come.
//!
//! `cargo run --release --example mpi_pi -- -n 100000000 -s 10000 -p 3`
//! (defaults: 10^8 points, 10^4 per call, number of CPUs + 1 processes, or
//! the job's size under an MPI launcher; `-p 1` runs everything in this one
//! process). The same binary runs on the ranks of an MPI job, built with
//! `--features cluster`:
//! `mpirun -n 3 target/release/examples/mpi_pi`.

use std::sync::mpsc;
use std::time::Instant;

use xme::mpi::{Mpi, MpiHandle, To, Unit};

/// Points of `nums` throws falling inside the unit circle. Each call seeds its
/// own generator (xorshift64*), so calls are independent.
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

fn with_mpi(m: &MpiHandle, scatter_unit: &Unit<(u64, u64), u64>, nums: u64, subnums: u64) -> u64 {
    let (tx, rx) = mpsc::channel();
    std::thread::scope(|s| {
        // The collector: gets each result as the main thread acquires.
        let collector = s.spawn(move || {
            rx.into_iter()
                .map(|slot| m.get(slot).expect("scatter failed"))
                .sum::<u64>()
        });
        for (i, _) in (0..nums / subnums).enumerate() {
            tx.send(
                m.acquire(scatter_unit, &(subnums, i as u64 + 1), To::Any)
                    .expect("acquire failed"),
            )
            .expect("collector gone");
        }
        drop(tx);
        let rest = scatter((nums % subnums, 0));
        collector.join().expect("collector panicked") + rest
    })
}

fn arg(args: &[String], flag: &str) -> Option<u64> {
    args.iter()
        .position(|a| a == flag)
        .and_then(|i| args.get(i + 1))
        .map(|v| {
            v.parse().unwrap_or_else(|_| {
                eprintln!("{flag} takes a number, got {v:?}");
                std::process::exit(1)
            })
        })
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let nums = arg(&args, "-n").unwrap_or(100_000_000);
    let subnums = arg(&args, "-s").unwrap_or(10_000).max(1);
    let pnum = arg(&args, "-p")
        .map(|p| p as usize)
        .or_else(xme::mpi::launcher_size)
        .unwrap_or(xme::exec::cpus() + 1);
    // Timed from when the logical processes are ready (forked, or the MPI
    // job started) to the result; the start-up is reported apart.
    let t0 = Instant::now();
    let (inside, elapsed) = if pnum >= 2 {
        let mut mpi = Mpi::new(pnum)?;
        // Registered by name: a function's address differs on every rank.
        let scatter_unit = mpi.register("scatter", scatter);
        let (inside, started, elapsed) = mpi.run(|m| {
            let started = t0.elapsed();
            let t = Instant::now();
            (
                with_mpi(m, &scatter_unit, nums, subnums),
                started,
                t.elapsed(),
            )
        })?;
        println!("Start-up: {}", started.as_secs_f64());
        (inside, elapsed)
    } else {
        (scatter((nums, 1)), t0.elapsed())
    };
    println!("pi: {}", 4.0 * inside as f64 / nums as f64);
    println!("Time usage: {}", elapsed.as_secs_f64());
    Ok(())
}
