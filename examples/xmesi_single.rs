//! Seed 1.2.1, the single-function model: the sum of 1..=100 as ten calls.
//!
//! `cargo run --release --example xmesi_single`          prints `xme 5050`, `noxme 5050` and both times.
//! `cargo run --release --example xmesi_single -- --big` sums 1..=10^8 instead, split over the cores.

use std::hint::black_box;
use std::time::Instant;

use xme::{Array, Xme};

/// The sum of `v+1 ..= v+width`, one addition at a time (black_box keeps the
/// compiler from replacing the loop by a closed form: this is the real work).
fn fun(v: u64, width: u64) -> u64 {
    let mut sum = 0u64;
    for i in v + 1..=v + width {
        sum += black_box(i);
    }
    sum
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let big = std::env::args().any(|a| a == "--big");
    let (calls, width) = if big { (10, 10_000_000) } else { (10, 10) };
    let v: Vec<u64> = (0..calls).map(|k| k * width).collect();

    let t0 = Instant::now();
    let xme = Xme::new();
    let total: u64 = xme
        .fun(|v: u64| fun(v, width), Array::from(v.clone()))?
        .into_result()?
        .iter()
        .sum();
    println!("xme {total}");
    let xme_time = t0.elapsed();

    let t0 = Instant::now();
    println!("noxme {}", v.iter().map(|&v| fun(v, width)).sum::<u64>());
    let noxme_time = t0.elapsed();

    println!("xme {}", xme_time.as_secs_f64());
    println!("noxme {}", noxme_time.as_secs_f64());
    Ok(())
}
