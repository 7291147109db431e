//! Streams over lazy inputs across real processes: order, the window bound,
//! early drop, killed workers mid-stream (exactly the killed calls fail, no
//! call runs twice), chunks, and the async form.

mod pool_support;

use std::cell::Cell;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use pool_support::{Ledger, bump, eventually, kill9, me, serial};
use xme_core::process::children_of;
use xme_exec::{Pool, TaskFailure};

fn triple(x: u64) -> u64 {
    x * 3
}

fn sleep_ms(ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    ms
}

#[test]
fn ordered_and_unordered_give_every_result_once() {
    let _s = serial();
    let pool = Pool::new(2).unwrap();
    let ordered: Vec<u64> = pool
        .stream(triple, 0..100_000u64)
        .ordered()
        .map(Result::unwrap)
        .collect();
    assert_eq!(ordered, (0..100_000u64).map(triple).collect::<Vec<_>>());
    let mut seen = vec![false; 100_000];
    for (i, r) in pool.stream(triple, 0..100_000u64).unordered() {
        assert_eq!(r.unwrap(), i as u64 * 3);
        assert!(!seen[i], "index {i} twice");
        seen[i] = true;
    }
    assert!(seen.iter().all(|&s| s));
    // Fixed chunk sizes give the same results.
    for chunk in [1, 7, 1000] {
        let got: Vec<u64> = pool
            .stream(triple, 0..5000u64)
            .chunk(chunk)
            .ordered()
            .map(Result::unwrap)
            .collect();
        assert_eq!(got.len(), 5000);
        assert_eq!(got[4999], 4999 * 3);
    }
    // An empty input ends at once.
    assert_eq!(pool.stream(triple, std::iter::empty()).ordered().count(), 0);
}

/// An input that counts what was pulled, and checks the window on every
/// pull against what the consumer has taken.
struct Watched {
    next: u64,
    pulled: Rc<Cell<u64>>,
    taken: Rc<Cell<u64>>,
    window: u64,
    worst: Rc<Cell<u64>>,
}

impl Iterator for Watched {
    type Item = u64;
    fn next(&mut self) -> Option<u64> {
        let in_window = self.pulled.get() + 1 - self.taken.get();
        self.worst.set(self.worst.get().max(in_window));
        assert!(
            in_window <= self.window,
            "pulled {in_window} past the window"
        );
        self.pulled.set(self.pulled.get() + 1);
        self.next += 1;
        Some(self.next - 1)
    }
}

#[test]
fn the_window_is_never_exceeded_and_input_is_lazy() {
    let _s = serial();
    let pool = Pool::new(2).unwrap();
    for (window, ordered) in [(1u64, true), (7, false), (64, true), (1000, false)] {
        let (pulled, taken, worst) = (
            Rc::new(Cell::new(0)),
            Rc::new(Cell::new(0)),
            Rc::new(Cell::new(0)),
        );
        let input = Watched {
            next: 0,
            pulled: pulled.clone(),
            taken: taken.clone(),
            window,
            worst: worst.clone(),
        };
        let n = 3000;
        let mut count = 0;
        if ordered {
            let mut s = pool.stream(triple, input).window(window as usize).ordered();
            for want in 0..n {
                assert_eq!(s.next().unwrap().unwrap(), want * 3);
                taken.set(taken.get() + 1);
                count += 1;
            }
        } else {
            let mut s = pool
                .stream(triple, input)
                .window(window as usize)
                .unordered();
            for _ in 0..n {
                let (i, r) = s.next().unwrap();
                assert_eq!(r.unwrap(), i as u64 * 3);
                taken.set(taken.get() + 1);
                count += 1;
            }
        }
        assert_eq!(count, n);
        assert!(
            worst.get() <= window,
            "window {window}: {} in flight",
            worst.get()
        );
        // An endless input was pulled no further than the window.
        assert!(
            pulled.get() <= n + window,
            "window {window}: pulled {}",
            pulled.get()
        );
    }
}

#[test]
fn dropping_a_stream_of_an_endless_input_returns_fast_and_leaves_no_process() {
    let _s = serial();
    let pool = Pool::new(2).unwrap();
    let pulled = Rc::new(Cell::new(0u64));
    let counter = pulled.clone();
    let endless = (0u64..).map(move |i| {
        counter.set(counter.get() + 1);
        i % 50
    });
    let mut s = pool.stream(sleep_ms, endless).window(16).ordered();
    for _ in 0..10 {
        s.next().unwrap().unwrap();
    }
    let at_drop = pulled.get();
    let t = Instant::now();
    drop(s);
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "drop took {:?}",
        t.elapsed()
    );
    assert_eq!(
        pulled.get(),
        at_drop,
        "the input was advanced after the drop"
    );
    assert!(at_drop <= 10 + 16);
    // Only the zygote is our child; it has at most pnum workers, all idle.
    assert_eq!(children_of(me()), [pool.zygote_pid()]);
    assert!(
        eventually(Duration::from_secs(5), || {
            let mut w = pool.workers();
            let mut i = pool.idle_workers();
            w.sort_unstable();
            i.sort_unstable();
            w == i && children_of(pool.zygote_pid()).len() == w.len()
        }),
        "workers {:?}, idle {:?}, the zygote's children {:?}",
        pool.workers(),
        pool.idle_workers(),
        children_of(pool.zygote_pid())
    );
    assert!(children_of(pool.zygote_pid()).len() <= 2);
    assert_eq!(pool.spawn(triple, 1).join().unwrap(), 3);
}

#[test]
fn a_dropped_stream_leaves_other_streams_and_batches_alone() {
    let _s = serial();
    let pool = Pool::new(2).unwrap();
    let p = pool.clone();
    let other = std::thread::spawn(move || {
        p.stream(sleep_ms, vec![20u64; 60])
            .ordered()
            .map(Result::unwrap)
            .sum::<u64>()
    });
    for _ in 0..5 {
        let mut s = pool
            .stream(sleep_ms, std::iter::repeat(30u64))
            .window(4)
            .unordered();
        s.next().unwrap().1.unwrap();
        drop(s);
    }
    assert_eq!(other.join().unwrap(), 20 * 60);
}

/// Counts the call in the ledger, works a little, and returns its index.
fn counted((name, i): (String, u64)) -> u64 {
    bump(&name, i as usize);
    std::thread::sleep(Duration::from_micros(20));
    i
}

#[test]
fn killing_workers_mid_stream_fails_exactly_the_killed_calls_and_runs_none_twice() {
    let _s = serial();
    let pool = Pool::new(2).unwrap();
    let n = 100_000usize;
    let ledger = Ledger::new(n);
    let zygote = pool.zygote_pid();
    let stop = Arc::new(AtomicBool::new(false));
    let kills = Arc::new(AtomicU64::new(0));
    let killer = {
        let (stop, kills) = (stop.clone(), kills.clone());
        std::thread::spawn(move || {
            let mut x = 0x2545_f491_u64;
            while !stop.load(Ordering::Relaxed) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                std::thread::sleep(Duration::from_millis(20 + x % 30));
                let workers = children_of(zygote);
                if let Some(&w) = workers.get((x % 2) as usize) {
                    kill9(w);
                    kills.fetch_add(1, Ordering::Relaxed);
                }
            }
        })
    };
    let name = ledger.name.clone();
    let mut failed = Vec::new();
    let mut ok = 0usize;
    for (i, r) in pool
        .stream(counted, (0..n as u64).map(|i| (name.clone(), i)))
        .unordered()
    {
        match r {
            Ok(v) => {
                assert_eq!(v, i as u64);
                ok += 1;
            }
            Err(e) => {
                assert_eq!(e.call, i, "{e}");
                assert!(
                    e.signal() == Some(9) || e.failure == TaskFailure::ResultLost,
                    "call {i}: {e}"
                );
                failed.push(i);
            }
        }
    }
    stop.store(true, Ordering::Relaxed);
    killer.join().unwrap();
    let kills = kills.load(Ordering::Relaxed);
    assert!(kills >= 20, "only {kills} kills");
    assert_eq!(ok + failed.len(), n);
    // A kill fails at most the one call its worker was running.
    assert!(
        failed.len() as u64 <= kills,
        "{} failed for {kills} kills",
        failed.len()
    );
    assert_eq!(ledger.twice(), [], "calls ran twice");
    // Every call that succeeded ran once; a killed one at most once (it
    // may be killed before its first line).
    for i in 0..n {
        let runs = ledger.runs(i);
        if failed.contains(&i) {
            assert!(runs <= 1, "killed call {i} ran {runs} times");
        } else {
            assert_eq!(runs, 1, "call {i} ran {runs} times");
        }
    }
}

/// Kills its worker at index 5 of a chunk.
fn kill_at_five((name, i): (String, u64)) -> u64 {
    bump(&name, i as usize);
    if i == 5 {
        let _ = nix::sys::signal::kill(nix::unistd::getpid(), nix::sys::signal::Signal::SIGKILL);
        std::thread::sleep(Duration::from_secs(5));
    }
    i
}

#[test]
fn a_worker_killed_mid_chunk_fails_only_its_call() {
    let _s = serial();
    let pool = Pool::new(2).unwrap();
    let ledger = Ledger::new(16);
    let name = ledger.name.clone();
    let out: Vec<_> = pool
        .stream(kill_at_five, (0..16u64).map(|i| (name.clone(), i)))
        .chunk(16)
        .ordered()
        .collect();
    for (i, r) in out.iter().enumerate() {
        if i == 5 {
            assert_eq!(r.as_ref().unwrap_err().signal(), Some(9));
        } else {
            assert_eq!(r.as_ref().ok(), Some(&(i as u64)), "call {i}");
        }
        assert_eq!(ledger.runs(i), 1, "call {i}");
    }
}

#[test]
fn streams_as_async_streams() {
    let _s = serial();
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    rt.block_on(async_streams());
}

async fn async_streams() {
    let pool = Pool::new(2).unwrap();
    let mut s = pool.stream(triple, 0..10_000u64).ordered();
    let mut want = 0;
    while let Some(r) =
        std::future::poll_fn(|cx| futures_core::Stream::poll_next(std::pin::Pin::new(&mut s), cx))
            .await
    {
        assert_eq!(r.unwrap(), want * 3);
        want += 1;
    }
    assert_eq!(want, 10_000);
    let mut s = pool.stream(triple, 0..1000u64).unordered();
    let mut n = 0;
    while let Some((i, r)) =
        std::future::poll_fn(|cx| futures_core::Stream::poll_next(std::pin::Pin::new(&mut s), cx))
            .await
    {
        assert_eq!(r.unwrap(), i as u64 * 3);
        n += 1;
    }
    assert_eq!(n, 1000);
}

#[test]
fn the_first_result_of_a_lazy_ten_million_comes_at_once_and_memory_stays_flat() {
    let _s = serial();
    let pool = Pool::new(2).unwrap();
    let _ = pool.stream(triple, 0..1000u64).unordered().count();
    let before = pool_support::rss_kib();
    let t = Instant::now();
    let mut s = pool.stream(triple, 0..10_000_000u64).unordered();
    let first = s.next().unwrap();
    let first_after = t.elapsed();
    assert!(first.1.is_ok());
    let mut n = 1;
    let mut peak = before;
    for (k, (_, r)) in s.enumerate() {
        r.unwrap();
        n += 1;
        if k % 100_000 == 0 {
            peak = peak.max(pool_support::rss_kib());
        }
    }
    assert_eq!(n, 10_000_000);
    assert!(
        peak < before + 32 * 1024,
        "memory grew from {before} KiB to {peak} KiB"
    );
    // Loose here (a loaded, debug-built test); the bench measures it.
    assert!(
        first_after < Duration::from_millis(500),
        "first result after {first_after:?}"
    );
}
