//! The warm pool across real processes: reuse, a threaded parent, killed
//! workers and zygotes, timeouts, and no leaks.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use xme_core::SharedRegion;
use xme_core::process::{children_of, fork_child, is_alive};
use xme_exec::{Array, ExecError, Pool, Same, TaskFailure};

/// Tests of this file run one at a time: some count processes and fds.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    // Every test collects warnings: the fork-with-threads warning is logged
    // once per process, by whichever test forks first.
    let _ = log::set_logger(&WARNINGS);
    log::set_max_level(log::LevelFilter::Warn);
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn square(x: u64) -> u64 {
    x * x
}

/// Held for ever by a parent thread after the pool was made.
static HELD: Mutex<u64> = Mutex::new(7);

/// Uses rayon's pool and the mutex the parent holds.
fn rayon_sum_and_lock(n: u64) -> u64 {
    use rayon::prelude::*;
    let sum: u64 = (0..=n).into_par_iter().sum();
    sum + *HELD.lock().unwrap()
}

fn fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

fn rss_kib() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
    statm
        .split_whitespace()
        .nth(1)
        .unwrap()
        .parse::<u64>()
        .unwrap()
        * 4
}

#[test]
fn workers_are_reused_across_batches() {
    let _s = serial();
    let pool = Pool::new(2).unwrap();
    let out = pool.fun(square, Array::new(0..10u64)).unwrap();
    assert_eq!(
        out.into_result().unwrap(),
        (0..10).map(|x| x * x).collect::<Vec<_>>()
    );
    // Calls long enough that both workers start (a short batch may run
    // whole on the first before the second is forked).
    let out = pool
        .fun(
            |ms: u64| {
                std::thread::sleep(Duration::from_millis(ms));
                ms
            },
            Array::new([100u64, 100]),
        )
        .unwrap();
    assert_eq!(out.into_result().unwrap(), [100, 100]);
    let mut first = pool.idle_workers();
    first.sort();
    assert_eq!(first.len(), 2);
    for round in 0..20u64 {
        let out = pool
            .fun(
                |(a, b): (u64, u64)| a + b,
                (Array::new(0..5u64), Same(round)),
            )
            .unwrap();
        assert_eq!(
            out.into_result().unwrap(),
            (0..5).map(|a| a + round).collect::<Vec<_>>()
        );
    }
    let mut now = pool.idle_workers();
    now.sort();
    assert_eq!(now, first, "a batch forked new workers");
    assert_eq!(children_of(pool.zygote_pid()).len(), 2);
}

#[test]
fn a_threaded_parent_with_rayon_tokio_and_a_held_lock_submits_from_four_threads() {
    let _s = serial();
    // First, before any thread: the pool.
    let pool = Pool::new(2).unwrap();
    // Then the parent becomes a threaded program: rayon's global pool, a tokio
    // runtime, and a thread that holds a lock for ever.
    use rayon::prelude::*;
    let warm: u64 = (0..1000u64).into_par_iter().sum();
    assert_eq!(warm, 499_500);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .unwrap();
    let locked = std::sync::Arc::new(AtomicBool::new(false));
    let l = locked.clone();
    std::thread::spawn(move || {
        let _held = HELD.lock().unwrap();
        l.store(true, Ordering::SeqCst);
        loop {
            std::thread::park();
        }
    });
    while !locked.load(Ordering::SeqCst) {
        std::thread::yield_now();
    }
    // Four threads (two of them tokio's blocking threads) submit at once.
    let results: Vec<Vec<u64>> = std::thread::scope(|scope| {
        let mut handles = Vec::new();
        for t in 0..2u64 {
            let pool = &pool;
            handles.push(scope.spawn(move || {
                let out = pool
                    .fun(rayon_sum_and_lock, Array::new((0..8).map(|i| 1000 * t + i)))
                    .unwrap();
                out.into_result().unwrap()
            }));
        }
        let from_tokio: Vec<_> = (2..4u64)
            .map(|t| {
                let pool = pool.clone();
                runtime.spawn_blocking(move || {
                    let out = pool
                        .fun(rayon_sum_and_lock, Array::new((0..8).map(|i| 1000 * t + i)))
                        .unwrap();
                    out.into_result().unwrap()
                })
            })
            .collect();
        let mut all: Vec<Vec<u64>> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        for h in from_tokio {
            all.push(runtime.block_on(h).unwrap());
        }
        all
    });
    for (t, got) in results.iter().enumerate() {
        let want: Vec<u64> = (0..8)
            .map(|i| {
                let n = 1000 * t as u64 + i;
                n * (n + 1) / 2 + 7
            })
            .collect();
        assert_eq!(got, &want, "thread {t}");
    }
    runtime.shutdown_background();
}

#[test]
fn ten_thousand_batches_leak_no_fd_process_or_memory() {
    let _s = serial();
    let pool = Pool::new(2).unwrap();
    let run = |n: usize| {
        for b in 0..n as u64 {
            let out = pool.fun(square, Array::new(b..b + 10)).unwrap();
            assert_eq!(out.into_result().unwrap()[9], (b + 9) * (b + 9));
        }
    };
    run(500);
    let (fd0, rss0) = (fds(), rss_kib());
    run(10_000);
    let (fd1, rss1) = (fds(), rss_kib());
    assert_eq!(fd1, fd0, "fds grew");
    assert!(
        rss1 < rss0 + 4096,
        "memory grew from {rss0} KiB to {rss1} KiB"
    );
    assert_eq!(
        children_of(pool.zygote_pid()).len(),
        2,
        "workers were not reused"
    );
    assert_eq!(
        children_of(std::process::id() as i32).len(),
        1,
        "only the zygote is our child"
    );
}

#[test]
fn killed_workers_fail_only_their_calls_and_are_replaced() {
    let _s = serial();
    let pool = Pool::new(2).unwrap();
    let zygote = pool.zygote_pid();
    let stop = AtomicBool::new(false);
    let killed = AtomicU64::new(0);
    let (mut ok, mut failed) = (0, 0);
    std::thread::scope(|scope| {
        scope.spawn(|| {
            let mut x = 0x9e37_79b9_u64;
            while !stop.load(Ordering::Relaxed) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let workers = children_of(zygote);
                if let Some(&pid) = workers.get((x % 4) as usize) {
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(pid),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                    killed.fetch_add(1, Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_micros(200 + x % 800));
            }
        });
        for b in 0..1000u64 {
            let out = pool
                .fun(
                    |x: u64| {
                        std::thread::sleep(Duration::from_micros(50));
                        x * 3
                    },
                    Array::new(b..b + 10),
                )
                .unwrap();
            for (i, r) in out.iter().enumerate() {
                match r {
                    Ok(v) => {
                        assert_eq!(*v, (b + i as u64) * 3);
                        ok += 1;
                    }
                    Err(e) => {
                        // Killed while running, or after it returned and
                        // before its result was handed over.
                        assert!(
                            e.signal() == Some(9) || e.failure == TaskFailure::ResultLost,
                            "batch {b} call {i}: {e}"
                        );
                        assert_eq!(e.call, i);
                        failed += 1;
                    }
                }
            }
        }
        stop.store(true, Ordering::Relaxed);
    });
    assert!(
        killed.load(Ordering::Relaxed) > 100,
        "the killer hardly ran"
    );
    assert!(failed > 0 && ok > 5000, "ok {ok}, failed {failed}");
    // Nothing left behind: the zygote has at most pnum workers, no zombie.
    let workers = children_of(zygote);
    assert!(workers.len() <= 2, "{workers:?}");
}

#[test]
fn a_killed_zygote_is_a_typed_error_and_a_new_pool_works() {
    let _s = serial();
    let pool = Pool::new(2).unwrap();
    pool.fun(square, Array::new(0..4u64)).unwrap();
    let workers = children_of(pool.zygote_pid());
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pool.zygote_pid()),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let t = Instant::now();
    while workers.iter().any(|&w| is_alive(w)) {
        assert!(
            t.elapsed() < Duration::from_secs(2),
            "workers outlived their zygote"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let err = pool.fun(square, Array::new(0..4u64)).unwrap_err();
    assert!(matches!(err, ExecError::PoolGone { .. }), "{err}");
    assert!(err.to_string().contains("make a new Pool"), "{err}");
    let pool = Pool::new(2).unwrap();
    assert_eq!(
        pool.fun(square, Array::new(0..4u64))
            .unwrap()
            .into_result()
            .unwrap(),
        [0, 1, 4, 9]
    );
}

#[test]
fn the_zygote_and_workers_die_with_a_killed_parent() {
    let _s = serial();
    let shared = SharedRegion::anonymous(64).unwrap();
    let pids: &[AtomicU64] = shared.slice(0, 4).unwrap();
    let parent = fork_child(|| {
        let pool = Pool::new(2).unwrap();
        pool.fun(square, Array::new(0..4u64)).unwrap();
        let workers = children_of(pool.zygote_pid());
        pids[0].store(pool.zygote_pid() as u64, Ordering::SeqCst);
        for (i, w) in workers.iter().take(2).enumerate() {
            pids[1 + i].store(*w as u64, Ordering::SeqCst);
        }
        pids[3].store(1, Ordering::SeqCst);
        loop {
            std::thread::sleep(Duration::from_secs(1));
        }
    })
    .unwrap();
    while pids[3].load(Ordering::SeqCst) == 0 {
        std::thread::sleep(Duration::from_millis(1));
    }
    let family: Vec<i32> = pids[..3]
        .iter()
        .map(|p| p.load(Ordering::SeqCst) as i32)
        .filter(|&p| p > 0)
        .collect();
    assert_eq!(family.len(), 3, "{family:?}");
    parent.kill().unwrap();
    let t = Instant::now();
    while family.iter().any(|&p| is_alive(p)) {
        assert!(
            t.elapsed() < Duration::from_secs(2),
            "left after 2 s: {family:?}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn calls_past_their_time_limit_fail_and_the_batch_limit_holds() {
    let _s = serial();
    let pool = Pool::builder()
        .pnum(2)
        .timeout(Duration::from_millis(200))
        .build()
        .unwrap();
    let out = pool
        .fun(
            |ms: u64| {
                std::thread::sleep(Duration::from_millis(ms));
                ms
            },
            Array::new([1u64, 5_000, 2]),
        )
        .unwrap();
    assert_eq!(out[0].as_ref().unwrap(), &1);
    assert!(out[1].as_ref().unwrap_err().is_timeout(), "{:?}", out[1]);
    assert_eq!(out[2].as_ref().unwrap(), &2);
    // Panics and exits name the call; the pool goes on.
    let out = pool
        .fun(
            |x: i32| {
                if x == 1 {
                    panic!("one is refused");
                }
                if x == 2 {
                    std::process::exit(0);
                }
                x
            },
            Array::new([0, 1, 2, 3]),
        )
        .unwrap();
    assert_eq!(out[0].as_ref().unwrap(), &0);
    assert_eq!(
        out[1].as_ref().unwrap_err().panic_message(),
        Some("one is refused")
    );
    assert_eq!(
        out[2].as_ref().unwrap_err().failure,
        TaskFailure::Exited { code: 0 }
    );
    assert_eq!(out[3].as_ref().unwrap(), &3);
    // A whole batch limit.
    let pool = Pool::new(1).unwrap();
    let t = Instant::now();
    let out = pool
        .fun_within(
            |ms: u64| {
                std::thread::sleep(Duration::from_millis(ms));
                ms
            },
            Array::new([10u64, 10_000, 10]),
            Duration::from_millis(300),
        )
        .unwrap();
    assert!(t.elapsed() < Duration::from_secs(3));
    assert_eq!(out[0].as_ref().unwrap(), &10);
    assert!(out[1].as_ref().unwrap_err().is_timeout());
    assert!(matches!(
        out[2].as_ref().unwrap_err().failure,
        TaskFailure::NotRun(_)
    ));
}

/// Collects warnings logged in this process.
struct Warnings(Mutex<Vec<String>>);

impl log::Log for Warnings {
    fn enabled(&self, m: &log::Metadata<'_>) -> bool {
        m.level() <= log::Level::Warn
    }
    fn log(&self, r: &log::Record<'_>) {
        if r.level() <= log::Level::Warn {
            self.0.lock().unwrap().push(r.args().to_string());
        }
    }
    fn flush(&self) {}
}

static WARNINGS: Warnings = Warnings(Mutex::new(Vec::new()));

#[test]
fn xme_fun_in_a_threaded_process_logs_one_warning() {
    let _s = serial();
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let t = std::thread::spawn(move || rx.recv());
    for _ in 0..3 {
        let out = xme_exec::Xme::new()
            .pnum(2)
            .fun(square, Array::new(0..4u64))
            .unwrap();
        assert_eq!(out.into_result().unwrap(), [0, 1, 4, 9]);
    }
    tx.send(()).unwrap();
    t.join().unwrap().unwrap();
    let warnings = WARNINGS.0.lock().unwrap();
    let hazard: Vec<_> = warnings
        .iter()
        .filter(|w| w.contains("forking workers while"))
        .collect();
    assert_eq!(hazard.len(), 1, "{warnings:?}");
    assert!(
        hazard[0].contains("xme::Pool") && hazard[0].contains("timeout"),
        "{}",
        hazard[0]
    );
}

/// Seed 1.2.1's function: the sum of `v + 1 ..= v + width`.
fn seed_fun((v, width): (u64, u64)) -> u64 {
    (v + 1..=v + width).sum()
}

/// Seed 1.2.2's service A: a word count of document `doc_id`.
fn service_a(doc_id: u32) -> (u32, usize) {
    let doc = "the quick brown fox jumps over the lazy dog ".repeat(doc_id as usize + 1);
    (doc_id, doc.split_whitespace().count())
}

/// Seed 1.2.2's service B: readings over a limit.
fn service_b((readings, limit): (Vec<f64>, f64)) -> Vec<bool> {
    readings.iter().map(|r| *r > limit).collect()
}

/// What the seed examples print, from their outcomes.
fn seed_lines(total: u64, a: Vec<(u32, usize)>, b: Vec<Vec<bool>>) -> Vec<String> {
    let mut lines = vec![format!("xme {total}")];
    lines.extend(
        a.into_iter()
            .map(|(id, words)| format!("ServicesA: document {id} has {words} words")),
    );
    lines.extend(
        b.into_iter()
            .enumerate()
            .map(|(i, f)| format!("ServicesB: batch {i} over the limit: {f:?}")),
    );
    lines
}

#[test]
fn the_seed_examples_written_with_a_pool_print_the_same() {
    let _s = serial();
    let v: Vec<u64> = (0..10).map(|k| k * 10).collect();
    let readings = || Array::from(vec![vec![0.5, 2.5], vec![3.0, 0.1, 9.9]]);

    let xme = xme_exec::Xme::new().pnum(2);
    let total: u64 = xme
        .fun(seed_fun, (Array::from(v.clone()), Same(10u64)))
        .unwrap()
        .into_result()
        .unwrap()
        .iter()
        .sum();
    let (a, b) = xme
        .funs((
            xme_exec::Job::new(service_a, Array::new(0..3u32)),
            xme_exec::Job::new(service_b, (readings(), Same(1.0))),
        ))
        .unwrap();
    let with_xme = seed_lines(total, a.into_result().unwrap(), b.into_result().unwrap());

    let pool = Pool::new(2).unwrap();
    let total: u64 = pool
        .fun(seed_fun, (Array::from(v), Same(10u64)))
        .unwrap()
        .into_result()
        .unwrap()
        .iter()
        .sum();
    let (a, b) = pool
        .funs((
            xme_exec::PoolJob::new(service_a, Array::new(0..3u32)).named("ServicesA"),
            xme_exec::PoolJob::new(service_b, (readings(), Same(1.0))).named("ServicesB"),
        ))
        .unwrap();
    let with_pool = seed_lines(total, a.into_result().unwrap(), b.into_result().unwrap());

    assert_eq!(with_pool, with_xme);
    assert_eq!(with_pool[0], "xme 5050");
    assert_eq!(
        with_pool[4],
        "ServicesB: batch 0 over the limit: [false, true]"
    );
}
