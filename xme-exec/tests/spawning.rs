//! When a run forks its workers (`Spawning`): one first and more only while
//! the work left is worth a fork, or all at once. Real forks, counted by a
//! parent fork hook; tests take turns so each counts only its own forks.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, Once};
use std::time::{Duration, Instant};

use xme_core::SharedRegion;
use xme_core::process::{self, ForkHooks};
use xme_exec::{Array, Spawning, Xme};

static FORKS: AtomicUsize = AtomicUsize::new(0);
static TURN: Mutex<()> = Mutex::new(());

/// This test's turn, with the fork count at zero.
fn turn() -> MutexGuard<'static, ()> {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        process::at_fork(ForkHooks::new().parent(|| {
            FORKS.fetch_add(1, Ordering::SeqCst);
        }))
    });
    let guard = TURN.lock().unwrap_or_else(|p| p.into_inner());
    FORKS.store(0, Ordering::SeqCst);
    guard
}

fn quiet(spawning: Spawning) -> Xme {
    Xme::new().pnum(2).print_in_screen(false).spawning(spawning)
}

#[test]
fn short_calls_take_one_fork_unless_eager() {
    let _turn = turn();
    let mut on_demand = Vec::new();
    for _ in 0..5 {
        FORKS.store(0, Ordering::SeqCst);
        let out = quiet(Spawning::OnDemand)
            .fun(|i: u64| i * i, Array::new(0..10u64))
            .unwrap();
        assert_eq!(
            out.into_result().unwrap(),
            (0..10).map(|i| i * i).collect::<Vec<_>>()
        );
        on_demand.push(FORKS.load(Ordering::SeqCst));
    }
    // A call held up past a fork's cost (a loaded machine) may fork a
    // second worker now and then; never more than pnum.
    assert!(on_demand.contains(&1), "forks per run: {on_demand:?}");
    assert!(
        on_demand.iter().all(|&n| n <= 2),
        "forks per run: {on_demand:?}"
    );
    if xme_exec::cpus() >= 2 {
        for _ in 0..3 {
            FORKS.store(0, Ordering::SeqCst);
            let out = quiet(Spawning::Eager)
                .fun(|i: u64| i * i, Array::new(0..10u64))
                .unwrap();
            assert_eq!(out.into_result().unwrap().len(), 10);
            assert_eq!(FORKS.load(Ordering::SeqCst), 2, "eager forks pnum workers");
        }
    }
}

#[test]
fn long_calls_reach_every_worker_within_a_few_ms() {
    if xme_exec::cpus() < 2 {
        return; // pnum is clamped to the CPUs
    }
    let _turn = turn();
    // Each call notes when it started; three calls of 300 ms on two workers.
    let region = SharedRegion::anonymous(24).unwrap();
    let started: &[AtomicU64] = region.slice(0, 3).unwrap();
    let pids = quiet(Spawning::OnDemand)
        .fun(
            |i: usize| {
                started[i].store(xme_core::monotonic_ns(), Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(300));
                std::process::id()
            },
            Array::new(0..3usize),
        )
        .unwrap()
        .into_result()
        .unwrap();
    assert_eq!(pids.iter().collect::<HashSet<_>>().len(), 2, "{pids:?}");
    let gap_ms = started[1]
        .load(Ordering::SeqCst)
        .abs_diff(started[0].load(Ordering::SeqCst)) as f64
        / 1e6;
    // About three worker starts (0.1-5 ms each); generous for a loaded machine.
    assert!(
        gap_ms < 100.0,
        "the second call started {gap_ms:.1} ms after the first"
    );
    assert_eq!(FORKS.load(Ordering::SeqCst), 2);
}

#[test]
fn a_call_for_each_worker_forks_them_all_at_once() {
    if xme_exec::cpus() < 2 {
        return;
    }
    let _turn = turn();
    // pnum calls: the work was split for the workers, as XME 4.2 users do.
    let out = quiet(Spawning::OnDemand)
        .fun(|i: u32| i + 1, Array::new(0..2u32))
        .unwrap();
    assert_eq!(out.into_result().unwrap(), [1, 2]);
    assert_eq!(FORKS.load(Ordering::SeqCst), 2);
}

#[test]
fn a_call_waiting_for_a_later_call_gets_its_worker() {
    if xme_exec::cpus() < 2 {
        return;
    }
    let _turn = turn();
    // Call 0 waits until call 2 has run: with one worker that would never
    // happen, so the run must fork the worker that takes calls 1 and 2.
    let region = SharedRegion::anonymous(8).unwrap();
    let flag: &AtomicU32 = region.place(0).unwrap();
    let t = Instant::now();
    let out = quiet(Spawning::OnDemand)
        .timeout(Duration::from_secs(20))
        .fun(
            |i: u32| {
                if i == 0 {
                    while flag.load(Ordering::SeqCst) == 0 {
                        std::thread::sleep(Duration::from_micros(200));
                    }
                } else if i == 2 {
                    flag.store(1, Ordering::SeqCst);
                }
                i
            },
            Array::new(0..3u32),
        )
        .unwrap();
    assert_eq!(out.into_result().unwrap(), [0, 1, 2]);
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "took {:?}",
        t.elapsed()
    );
    assert_eq!(FORKS.load(Ordering::SeqCst), 2);
}

#[test]
fn workers_read_cpus_while_another_thread_does() {
    let _turn = turn();
    // cpus() keeps its answer for a second: a lock held across a fork by
    // another thread reading it would leave a worker waiting for ever.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reader = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                std::hint::black_box(xme_exec::cpus());
            }
        })
    };
    let xme = quiet(Spawning::OnDemand).timeout(Duration::from_secs(1));
    let mut hung = 0;
    for _ in 0..100 {
        let out = xme.fun(|()| xme_exec::cpus(), ()).unwrap();
        match &out[0] {
            Ok(n) => assert_eq!(*n, xme_exec::cpus()),
            Err(e) if e.is_timeout() => hung += 1,
            Err(e) => panic!("{e}"),
        }
    }
    stop.store(true, Ordering::Relaxed);
    reader.join().unwrap();
    assert_eq!(hung, 0, "workers hung in cpus()");
}

#[test]
fn many_short_calls_are_worth_a_second_worker() {
    if xme_exec::cpus() < 2 {
        return;
    }
    let _turn = turn();
    // 400 calls of 1 ms: far more work than a fork costs.
    let pids = quiet(Spawning::OnDemand)
        .fun(
            |_: u32| {
                std::thread::sleep(Duration::from_millis(1));
                std::process::id()
            },
            Array::new(0..400u32),
        )
        .unwrap()
        .into_result()
        .unwrap();
    let per_pid: Vec<usize> = pids
        .iter()
        .collect::<HashSet<_>>()
        .iter()
        .map(|p| pids.iter().filter(|q| q == p).count())
        .collect();
    assert_eq!(per_pid.len(), 2, "calls per worker: {per_pid:?}");
    assert!(
        per_pid.iter().all(|&n| n >= 100),
        "calls per worker: {per_pid:?}"
    );
}

#[test]
fn a_worker_killed_mid_run_is_replaced_and_the_others_run_once() {
    let _turn = turn();
    // Call 3 kills its worker; the rest run exactly once each (a ledger in
    // shared memory counts every run of every call).
    let region = SharedRegion::anonymous(8 * 20).unwrap();
    let runs: &[AtomicU64] = region.slice(0, 20).unwrap();
    let out = quiet(Spawning::OnDemand)
        .fun(
            |i: usize| {
                runs[i].fetch_add(1, Ordering::SeqCst);
                if i == 3 {
                    let _ = nix::sys::signal::kill(
                        nix::unistd::getpid(),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                }
                i * 10
            },
            Array::new(0..20usize),
        )
        .unwrap();
    for (i, r) in out.iter().enumerate() {
        if i == 3 {
            assert!(
                r.as_ref().unwrap_err().to_string().contains("SIGKILL"),
                "{r:?}"
            );
        } else {
            assert_eq!(*r.as_ref().unwrap(), i * 10);
        }
        assert_eq!(
            runs[i].load(Ordering::SeqCst),
            1,
            "call {i} ran more or less than once"
        );
    }
    assert!(process::children_of(std::process::id() as i32).is_empty());
}
