//! The warm pool: made after threads started, single calls with handles, a
//! stream over a lazy input, a set of calls, a killed worker, a cancelled
//! call, and an awaited one.
//!
//! Run: `cargo run --release --example pool`

use std::time::{Duration, Instant};

use xme::Pool;

fn collatz_steps(mut n: u64) -> u32 {
    let mut steps = 0;
    while n != 1 {
        n = if n.is_multiple_of(2) {
            n / 2
        } else {
            3 * n + 1
        };
        steps += 1;
    }
    steps
}

fn sleepy(ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    ms
}

fn die_at(n: u64) -> u64 {
    if n == 3 {
        // The worker dies; only this call fails.
        std::process::abort();
    }
    n
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // A pool is safe to make after the program started threads.
    let busy = std::thread::spawn(|| std::thread::sleep(Duration::from_millis(200)));
    let pool = Pool::new(2)?;

    let call = pool.spawn(collatz_steps, 27);
    println!("collatz(27) takes {} steps", call.join()?);

    // A lazy input: pulled only as the window has room.
    let t = Instant::now();
    let longest = pool
        .stream(collatz_steps, 1..1_000_000u64)
        .window(50_000)
        .unordered()
        .map(|(i, r)| (r.unwrap(), i + 1))
        .max()
        .unwrap();
    println!(
        "longest collatz below 10^6: {} ({} steps), in {:?}",
        longest.1,
        longest.0,
        t.elapsed()
    );

    let mut set = pool.call_set();
    for ms in [80, 10, 40] {
        set.spawn(sleepy, ms);
    }
    let order: Vec<u64> = std::iter::from_fn(|| set.join_next())
        .map(|(_, r)| r.unwrap())
        .collect();
    println!("finished in order: {order:?}");

    let results: Vec<String> = pool
        .stream(die_at, 0..6u64)
        .ordered()
        .map(|r| match r {
            Ok(v) => v.to_string(),
            Err(e) => format!("failed ({})", e.failure),
        })
        .collect();
    println!("a worker killed mid-stream: {results:?}");

    let mut slow = pool.spawn(sleepy, 60_000);
    std::thread::sleep(Duration::from_millis(20));
    let t = Instant::now();
    slow.cancel();
    let cancelled = slow.join().unwrap_err().is_cancelled();
    println!(
        "cancelled a running call: {cancelled}, in {:?}",
        t.elapsed()
    );

    // A handle is a Future: await it on any executor.
    let rt = tokio::runtime::Builder::new_current_thread().build()?;
    let awaited = rt.block_on(pool.spawn(collatz_steps, 97))?;
    println!("awaited collatz(97): {awaited} steps");

    busy.join().unwrap();
    Ok(())
}
