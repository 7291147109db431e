//! The pool's reported defects (issue #25, items 1-9), each reproduced
//! across real processes: every other call must succeed exactly once with
//! its own result, and nothing may hang.

mod pool_support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use pool_support::{Ledger, bump, eventually, kill9, serial};
use xme_core::process::children_of;
use xme_exec::{Array, ExecError, Pool, Same, TaskFailure};

/// Runs call `i` of ledger `name`; calls with `i % every == 0` SIGKILL their
/// own worker (after counting themselves).
fn maybe_kill_self((name, i, every): (String, u64, u64)) -> u64 {
    bump(&name, i as usize);
    if every > 0 && i % every == 0 {
        let _ = nix::sys::signal::kill(nix::unistd::getpid(), nix::sys::signal::Signal::SIGKILL);
        std::thread::sleep(Duration::from_secs(10));
    }
    i * 2
}

/// Defect 1: Calls queued behind a call that kills its worker never fail for it.
#[test]
fn innocent_calls_behind_a_killer_succeed_exactly_once() {
    let _s = serial();
    let pool = Pool::new(2).unwrap();
    for batch in 0..20u64 {
        let ledger = Ledger::new(40);
        let out = pool
            .fun(
                maybe_kill_self,
                (Same(ledger.name.clone()), Array::new(0..40u64), Same(5u64)),
            )
            .unwrap();
        for (i, r) in out.iter().enumerate() {
            if i % 5 == 0 {
                let e = r.as_ref().unwrap_err();
                assert_eq!(e.signal(), Some(9), "batch {batch} call {i}: {e}");
                assert_eq!(e.call, i);
            } else {
                assert_eq!(
                    r.as_ref().ok(),
                    Some(&(i as u64 * 2)),
                    "batch {batch} call {i}"
                );
            }
            assert_eq!(
                ledger.runs(i),
                1,
                "batch {batch} call {i} ran {} times",
                ledger.runs(i)
            );
        }
    }
    assert!(children_of(pool.zygote_pid()).len() <= 2);
}

/// A call that ends its worker with `exit(7)` when `i == 5`; the others are
/// instant, so the worker has finished several calls before it exits.
fn exit_at_five((name, i): (String, u64)) -> u64 {
    bump(&name, i as usize);
    if i == 5 {
        std::process::exit(7);
    }
    i
}

/// Defect 2: A worker that finished several calls and then exited: no call runs
/// twice, and only the exiting call is blamed.
#[test]
fn finished_calls_are_not_run_again_and_only_the_exiting_call_is_blamed() {
    let _s = serial();
    let pool = Pool::new(2).unwrap();
    for round in 0..30 {
        let ledger = Ledger::new(64);
        let out = pool
            .fun(
                exit_at_five,
                (Same(ledger.name.clone()), Array::new(0..64u64)),
            )
            .unwrap();
        for (i, r) in out.iter().enumerate() {
            if i == 5 {
                assert_eq!(
                    r.as_ref().unwrap_err().failure,
                    TaskFailure::Exited { code: 7 },
                    "round {round}"
                );
            } else {
                assert_eq!(
                    r.as_ref().ok(),
                    Some(&(i as u64)),
                    "round {round} call {i}: {r:?}"
                );
            }
        }
        assert_eq!(ledger.twice(), [], "round {round}: calls ran twice");
    }
}

fn sleep_ms(ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    ms
}

/// Defect 3: The zygote killed while batches wait for workers: every batch returns,
/// with the pool-gone error. (One worker and three batches: two of them wait
/// for it when the zygote dies.)
#[test]
fn a_killed_zygote_wakes_every_waiting_batch() {
    let _s = serial();
    let pool = Pool::new(1).unwrap();
    let zygote = pool.zygote_pid();
    let done = Arc::new(AtomicUsize::new(0));
    let threads: Vec<_> = (0..3)
        .map(|_| {
            let (pool, done) = (pool.clone(), done.clone());
            std::thread::spawn(move || {
                let r = pool.fun(sleep_ms, Array::new(vec![300u64; 6]));
                done.fetch_add(1, Ordering::SeqCst);
                r
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(100));
    kill9(zygote);
    assert!(
        eventually(Duration::from_secs(10), || done.load(Ordering::SeqCst) == 3),
        "a batch hangs after the zygote died"
    );
    for t in threads {
        let err = t.join().unwrap().unwrap_err();
        assert!(matches!(err, ExecError::PoolGone { .. }), "{err}");
    }
    // Later work fails at once too.
    let err = pool.spawn(sleep_ms, 1).join().unwrap_err();
    assert!(err.is_pool_gone(), "{err}");
}

fn result_of(n: usize) -> Vec<u8> {
    vec![1u8; n]
}

/// Defect 4: A result over the size limit is a typed error for that call alone;
/// the worker goes on and nothing deadlocks.
#[test]
fn a_result_over_the_limit_fails_that_call_only() {
    let _s = serial();
    let pool = Pool::builder().pnum(1).max_result(1 << 20).build().unwrap();
    let out = pool
        .fun(
            result_of,
            Array::new([10usize, 2 << 20, 1 << 19, 5 << 20, 7]),
        )
        .unwrap();
    assert_eq!(out[0].as_ref().unwrap().len(), 10);
    let e = out[1].as_ref().unwrap_err();
    assert!(
        e.to_string().contains("larger than the pool accepts"),
        "{e}"
    );
    assert_eq!(out[2].as_ref().unwrap().len(), 1 << 19);
    assert!(out[3].is_err());
    assert_eq!(out[4].as_ref().unwrap().len(), 7);
    // Large results within the limit cross whole (they go over the socket).
    let pool = Pool::new(1).unwrap();
    let big = pool.spawn(result_of, 64 << 20).join().unwrap();
    assert_eq!(big.len(), 64 << 20);
    assert!(big.iter().all(|&b| b == 1));
}

fn square(x: u64) -> u64 {
    x * x
}

/// Defect 5: Many threads submitting small batches to a pool of one worker,
/// which keeps being killed (so workers are reaped and replaced while
/// others wait for one): no wake-up is lost (each batch returns) and every
/// call that did not kill its worker succeeds.
#[test]
fn no_wake_up_is_lost_between_many_submitting_threads() {
    let _s = serial();
    let pool = Pool::new(1).unwrap();
    let done = Arc::new(AtomicUsize::new(0));
    let threads: Vec<_> = (0..8u64)
        .map(|t| {
            let (pool, done) = (pool.clone(), done.clone());
            std::thread::spawn(move || {
                for b in 0..100u64 {
                    let ledger = Ledger::new(4);
                    // Every third batch, its middle call kills the worker.
                    let every = if b % 3 == 0 { 2 } else { 0 };
                    let out = pool
                        .fun(
                            maybe_kill_self,
                            (
                                Same(ledger.name.clone()),
                                Array::new([1u64, 2, 3]),
                                Same(every),
                            ),
                        )
                        .unwrap();
                    for (i, r) in out.iter().enumerate() {
                        let x = i as u64 + 1;
                        if every == 2 && x == 2 {
                            assert_eq!(
                                r.as_ref().unwrap_err().signal(),
                                Some(9),
                                "thread {t} batch {b}"
                            );
                        } else {
                            assert_eq!(
                                r.as_ref().ok(),
                                Some(&(x * 2)),
                                "thread {t} batch {b}: {r:?}"
                            );
                        }
                    }
                    let x = t * 1000 + b;
                    assert_eq!(pool.spawn(square, x).join().unwrap(), x * x);
                }
                done.fetch_add(1, Ordering::SeqCst);
            })
        })
        .collect();
    assert!(
        eventually(Duration::from_secs(120), || done.load(Ordering::SeqCst)
            == 8),
        "a submitter hangs"
    );
    for t in threads {
        t.join().unwrap();
    }
}

/// Defect 6: A panic in a thread holding streams and handles gives nothing away
/// for ever; `Duration::MAX` limits are "no limit".
#[test]
fn panics_mid_batch_and_huge_limits_leave_the_pool_whole() {
    let _s = serial();
    let pool = Pool::builder()
        .pnum(2)
        .timeout(Duration::MAX)
        .build()
        .unwrap();
    for _ in 0..4 {
        let p = pool.clone();
        let r = std::thread::spawn(move || {
            let mut s = p.stream(sleep_ms, [50u64; 8]).ordered();
            let _first = s.next();
            let _call = p.spawn(sleep_ms, 500);
            panic!("the caller panics mid-stream");
        })
        .join();
        assert!(r.is_err());
    }
    let out = pool
        .fun_within(square, Array::new(0..10u64), Duration::MAX)
        .unwrap();
    assert_eq!(out.into_result().unwrap()[9], 81);
    // Both workers still serve at once: two 300 ms calls take about 300 ms.
    let t = Instant::now();
    let out = pool.fun(sleep_ms, Array::new([300u64, 300])).unwrap();
    assert_eq!(out.into_result().unwrap(), [300, 300]);
    assert!(
        t.elapsed() < Duration::from_millis(590),
        "{:?}",
        t.elapsed()
    );
}

/// Defect 7: A pool made in a thread that then exits keeps working.
#[test]
fn a_pool_made_in_a_short_lived_thread_outlives_it() {
    let _s = serial();
    let pool = std::thread::spawn(|| Pool::new(2).unwrap()).join().unwrap();
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(pool.spawn(square, 9).join().unwrap(), 81);
    // And one made inside tokio's spawn_blocking.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .max_blocking_threads(1)
        .thread_keep_alive(Duration::from_millis(10))
        .build()
        .unwrap();
    let pool = rt.block_on(async {
        tokio::task::spawn_blocking(|| Pool::new(2).unwrap())
            .await
            .unwrap()
    });
    // The blocking thread ends after its keep-alive.
    std::thread::sleep(Duration::from_millis(200));
    let out = pool.fun(square, Array::new(0..4u64)).unwrap();
    assert_eq!(out.into_result().unwrap(), [0, 1, 4, 9]);
    rt.shutdown_timeout(Duration::from_secs(1));
    assert_eq!(pool.spawn(square, 3).join().unwrap(), 9);
}

static LAZY_POOL: std::sync::LazyLock<Pool> = std::sync::LazyLock::new(|| Pool::new(2).unwrap());

#[test]
fn a_pool_in_a_lazy_lock_first_touched_by_a_worker_thread() {
    let _s = serial();
    let first = std::thread::spawn(|| LAZY_POOL.spawn(square, 4).join().unwrap())
        .join()
        .unwrap();
    assert_eq!(first, 16);
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(LAZY_POOL.spawn(square, 5).join().unwrap(), 25);
}

/// Uses rayon's pool inside a worker, and says how many threads it has.
fn rayon_sum(n: u64) -> (u64, usize) {
    use rayon::prelude::*;
    ((0..=n).into_par_iter().sum(), rayon::current_num_threads())
}

/// Defect 8: A pool made after rayon's pool and a tokio runtime started: tasks
/// that use rayon get a rayon with threads.
#[test]
fn a_pool_made_after_rayon_and_tokio_started_runs_rayon_tasks() {
    let _s = serial();
    use rayon::prelude::*;
    let warm: u64 = (0..1000u64).into_par_iter().sum();
    assert_eq!(warm, 499_500);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .unwrap();
    let pool = rt.block_on(async { Pool::new(2).unwrap() });
    let out = pool
        .fun_within(
            rayon_sum,
            Array::new([10_000u64, 20_000, 30_000, 40_000]),
            Duration::from_secs(60),
        )
        .unwrap();
    for (r, n) in out.iter().zip([10_000u64, 20_000, 30_000, 40_000]) {
        let (sum, threads) = r.as_ref().unwrap();
        assert_eq!(*sum, n * (n + 1) / 2);
        assert!(*threads >= 1);
    }
    rt.shutdown_background();
}

/// Defect 9: Signals interrupting the driver's system calls (EINTR) never break
/// the pool: a handler without SA_RESTART, and a storm of that signal while
/// workers start, die and run calls.
#[test]
fn interrupted_system_calls_do_not_break_the_pool() {
    let _s = serial();
    extern "C" fn nothing(_: i32) {}
    let action = nix::sys::signal::SigAction::new(
        nix::sys::signal::SigHandler::Handler(nothing),
        nix::sys::signal::SaFlags::empty(),
        nix::sys::signal::SigSet::empty(),
    );
    // SAFETY: the handler does nothing (async-signal-safe).
    unsafe { nix::sys::signal::sigaction(nix::sys::signal::Signal::SIGUSR1, &action) }.unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let storm = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::getpid(),
                    nix::sys::signal::Signal::SIGUSR1,
                );
                std::thread::sleep(Duration::from_micros(100));
            }
        })
    };
    for round in 0..20u64 {
        let pool = Pool::new(2).unwrap();
        let ledger = Ledger::new(20);
        let out = pool
            .fun(
                maybe_kill_self,
                (Same(ledger.name.clone()), Array::new(0..20u64), Same(7u64)),
            )
            .unwrap();
        for (i, r) in out.iter().enumerate() {
            if i % 7 == 0 {
                assert_eq!(
                    r.as_ref().unwrap_err().signal(),
                    Some(9),
                    "round {round} call {i}"
                );
            } else {
                assert_eq!(
                    r.as_ref().ok(),
                    Some(&(i as u64 * 2)),
                    "round {round} call {i}: {r:?}"
                );
            }
        }
        assert_eq!(ledger.twice(), []);
    }
    stop.store(true, Ordering::Relaxed);
    storm.join().unwrap();
}

/// The zygote killed while a batch, a stream, a handle and a call set all
/// wait: every one of them ends, with the pool-gone failure.
#[test]
fn a_killed_zygote_ends_batches_streams_handles_and_call_sets() {
    let _s = serial();
    let pool = Pool::new(2).unwrap();
    let zygote = pool.zygote_pid();
    let p = pool.clone();
    let batch = std::thread::spawn(move || p.fun(sleep_ms, Array::new(vec![400u64; 8])));
    let p = pool.clone();
    let stream = std::thread::spawn(move || {
        p.stream(sleep_ms, std::iter::repeat(400u64))
            .unordered()
            .find_map(|(_, r)| r.err())
    });
    let p = pool.clone();
    let handle = std::thread::spawn(move || p.spawn(sleep_ms, 5_000).join());
    let p = pool.clone();
    let set = std::thread::spawn(move || {
        let mut set = p.call_set();
        for _ in 0..4 {
            set.spawn(sleep_ms, 5_000);
        }
        let mut errors = Vec::new();
        while let Some((_, r)) = set.join_next() {
            errors.push(r.unwrap_err());
        }
        errors
    });
    std::thread::sleep(Duration::from_millis(200));
    kill9(zygote);
    let t = Instant::now();
    let err = batch.join().unwrap().unwrap_err();
    assert!(matches!(err, ExecError::PoolGone { .. }), "{err}");
    let err = stream
        .join()
        .unwrap()
        .expect("the endless stream ended in an error");
    assert!(err.is_pool_gone(), "{err}");
    let err = handle.join().unwrap().unwrap_err();
    assert!(err.is_pool_gone(), "{err}");
    let errors = set.join().unwrap();
    assert_eq!(errors.len(), 4);
    assert!(errors.iter().all(|e| e.is_pool_gone()), "{errors:?}");
    assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
    assert!(eventually(Duration::from_secs(5), || children_of(zygote).is_empty()));
}
