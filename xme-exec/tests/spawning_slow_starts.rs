//! On-demand forking when a worker is slow to start, or never starts: the
//! fan-out waits for one start at a time, but not for ever, and does not
//! spin meanwhile. (Its own test binary: its fork hook stalls children.)

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, Once};
use std::time::{Duration, Instant};

use xme_core::SharedRegion;
use xme_core::process::{self, ForkHooks};
use xme_exec::{Array, Spawning, Xme};

/// Forks made so far (the child sees its own number).
static FORK_NO: AtomicU64 = AtomicU64::new(0);
/// The fork whose child stalls in its hook (0: none), and the last one
/// that does (forks `STALLED_FORK..=STALLED_UNTIL` stall).
static STALLED_FORK: AtomicU64 = AtomicU64::new(0);
static STALLED_UNTIL: AtomicU64 = AtomicU64::new(0);
/// How long it stalls (`u64::MAX`: for ever).
static STALL_MS: AtomicU64 = AtomicU64::new(0);
/// How long the first fork's child takes to start (ms).
static FIRST_START_MS: AtomicU64 = AtomicU64::new(0);
static TURN: Mutex<()> = Mutex::new(());

fn turn(stalled_fork: u64, stall_ms: u64) -> MutexGuard<'static, ()> {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        process::at_fork(
            ForkHooks::new()
                .prepare(|| {
                    FORK_NO.fetch_add(1, Ordering::SeqCst);
                })
                .child(|| {
                    if FORK_NO.load(Ordering::SeqCst) == 1 {
                        let ms = FIRST_START_MS.load(Ordering::SeqCst);
                        std::thread::sleep(Duration::from_millis(ms));
                    }
                    let n = FORK_NO.load(Ordering::SeqCst);
                    if n >= STALLED_FORK.load(Ordering::SeqCst)
                        && n <= STALLED_UNTIL.load(Ordering::SeqCst)
                    {
                        let ms = STALL_MS.load(Ordering::SeqCst);
                        loop {
                            std::thread::sleep(Duration::from_millis(ms.min(1000)));
                            if ms != u64::MAX {
                                break;
                            }
                        }
                    }
                }),
        )
    });
    let guard = TURN.lock().unwrap_or_else(|p| p.into_inner());
    FORK_NO.store(0, Ordering::SeqCst);
    STALLED_FORK.store(stalled_fork, Ordering::SeqCst);
    STALLED_UNTIL.store(stalled_fork, Ordering::SeqCst);
    STALL_MS.store(stall_ms, Ordering::SeqCst);
    FIRST_START_MS.store(0, Ordering::SeqCst);
    guard
}

/// Two workers at most, quiet, and a 20 s guard: a run that would hang is
/// stopped (`ExecError::Interrupted`), and the test says so.
fn guarded(spawning: Spawning) -> Xme {
    let stop_at = Instant::now() + Duration::from_secs(20);
    Xme::new()
        .pnum(2)
        .print_in_screen(false)
        .spawning(spawning)
        .interrupt_when(move || Instant::now() > stop_at)
}

fn thread_cpu_ms() -> f64 {
    // SAFETY: getrusage fills the zeroed struct it is given.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `ru` is a valid rusage to fill.
    unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut ru) };
    let ms = |t: libc::timeval| t.tv_sec as f64 * 1e3 + t.tv_usec as f64 / 1e3;
    ms(ru.ru_utime) + ms(ru.ru_stime)
}

/// The first worker takes 3 ms to start (a worker's cost: 3 ms); call 0
/// runs 0.5 ms, long enough for the parent to see it, too short to be
/// worth a second worker (5 x 0.5 ms < 2 x 3 ms); call 1 kills the worker;
/// its replacement (fork 2) stalls for `stall_ms`. Calls 2..6 wait, and
/// no call runs.
fn a_stalled_replacement(stall_ms: u64) {
    if xme_exec::cpus() < 2 {
        return; // one worker at most: nothing to fork instead
    }
    let _turn = turn(2, stall_ms);
    FIRST_START_MS.store(3, Ordering::SeqCst);
    let region = SharedRegion::anonymous(8 * 12).unwrap();
    let words: &[AtomicU64] = region.slice(0, 12).unwrap();
    let (started, runs) = words.split_at(6);
    let cpu0 = thread_cpu_ms();
    let out = guarded(Spawning::OnDemand)
        .timeout(Duration::from_secs(1))
        .fun(
            |i: usize| {
                runs[i].fetch_add(1, Ordering::SeqCst);
                started[i].store(xme_core::monotonic_ns(), Ordering::SeqCst);
                if i == 0 {
                    std::thread::sleep(Duration::from_micros(500));
                }
                if i == 1 {
                    // SAFETY: raise has no memory-safety preconditions.
                    unsafe { libc::raise(libc::SIGKILL) };
                }
                if i >= 2 {
                    std::thread::sleep(Duration::from_millis(50));
                }
                i * 10
            },
            Array::new(0..6usize),
        )
        .expect("the run ends by itself, not by the 20 s guard");
    let cpu = thread_cpu_ms() - cpu0;
    for (i, r) in out.iter().enumerate() {
        match i {
            1 => assert!(
                r.as_ref().unwrap_err().to_string().contains("SIGKILL"),
                "{r:?}"
            ),
            _ => assert_eq!(*r.as_ref().unwrap(), i * 10),
        }
        assert_eq!(runs[i].load(Ordering::SeqCst), 1, "call {i}");
    }
    // The next worker comes once the stalled start passed its hold
    // (5 ms here), not after the stall (1 s or for ever).
    let died = started[1].load(Ordering::SeqCst);
    let waited_ms = (started[2].load(Ordering::SeqCst) - died) as f64 / 1e6;
    assert!(
        waited_ms < 500.0,
        "call 2 waited {waited_ms:.1} ms for a worker"
    );
    assert!(cpu < 200.0, "the parent took {cpu:.1} ms of CPU");
    assert!(process::children_of(std::process::id() as i32).is_empty());
}

#[test]
fn a_replacement_slow_to_start_does_not_hold_the_calls_back() {
    a_stalled_replacement(2000);
}

#[test]
fn a_replacement_that_never_starts_does_not_hang_the_run() {
    a_stalled_replacement(u64::MAX);
}

#[test]
fn workers_slow_to_start_cost_the_parent_little() {
    let _turn = turn(1, 1500);
    let cpu0 = thread_cpu_ms();
    let out = Xme::new()
        .pnum(2)
        .print_in_screen(false)
        .spawning(Spawning::OnDemand)
        .fun(|i: usize| i, Array::new(0..6usize))
        .unwrap();
    let cpu = thread_cpu_ms() - cpu0;
    assert_eq!(out.into_result().unwrap(), (0..6).collect::<Vec<_>>());
    assert!(
        cpu < 100.0,
        "the parent took {cpu:.1} ms of CPU while a worker started"
    );
}

#[test]
fn a_worker_that_never_started_does_not_keep_a_finished_run_waiting() {
    if xme_exec::cpus() < 2 {
        return;
    }
    // Both workers forked at once; the second never gets past its fork
    // hook, the first takes every call: the run ends without waiting for
    // the second (no timeout is set: it would be waited for for ever).
    let _turn = turn(2, u64::MAX);
    let t = Instant::now();
    let out = guarded(Spawning::Eager)
        .fun(|i: u32| i * 3, Array::new(0..10u32))
        .expect("the run ends by itself, not by the 20 s guard");
    assert_eq!(
        out.into_result().unwrap(),
        (0..10).map(|i| i * 3).collect::<Vec<_>>()
    );
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "took {:?}",
        t.elapsed()
    );
    assert!(process::children_of(std::process::id() as i32).is_empty());
}

#[test]
fn workers_stuck_in_their_start_are_replaced_when_the_run_has_a_timeout() {
    if xme_exec::cpus() < 2 {
        return;
    }
    // Fork 2 (the second worker) and fork 3 (the first one's replacement,
    // after call 1 kills it) never get past their fork hooks: every slot
    // holds a worker that will never take a call. The run's timeout (1 s)
    // bounds their start too: they are killed and replaced.
    let _turn = turn(2, u64::MAX);
    STALLED_UNTIL.store(3, Ordering::SeqCst);
    let region = SharedRegion::anonymous(8 * 10).unwrap();
    let runs: &[AtomicU64] = region.slice(0, 10).unwrap();
    let t = Instant::now();
    let out = guarded(Spawning::Eager)
        .timeout(Duration::from_secs(1))
        .fun(
            |i: usize| {
                runs[i].fetch_add(1, Ordering::SeqCst);
                if i == 1 {
                    // SAFETY: raise has no memory-safety preconditions.
                    unsafe { libc::raise(libc::SIGKILL) };
                }
                std::thread::sleep(Duration::from_millis(20));
                i
            },
            Array::new(0..10usize),
        )
        .expect("the run ends by itself, not by the 20 s guard");
    for (i, r) in out.iter().enumerate() {
        match i {
            1 => assert!(
                r.as_ref().unwrap_err().to_string().contains("SIGKILL"),
                "{r:?}"
            ),
            _ => assert_eq!(*r.as_ref().unwrap(), i),
        }
        assert_eq!(runs[i].load(Ordering::SeqCst), 1, "call {i}");
    }
    assert!(
        t.elapsed() < Duration::from_secs(10),
        "took {:?}",
        t.elapsed()
    );
    assert!(process::children_of(std::process::id() as i32).is_empty());
}
