//! Processes that stop answering while the main process waits for
//! something other than their reply: a free slot held by dropped calls, a
//! direct call whose process stalls before its watcher can report. Each
//! wait ends in bounded time with a typed error naming the process, and the
//! other process serves every call once with its own result.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use xme_mpi::{CLOSE_GRACE, Mpi, MpiError, To};

mod common;
use common::{clean, survivors, survivors_by};

fn nap(ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    ms
}

/// Runs `f`; if it takes longer than `limit`, ends the whole test process
/// (a hang must fail the run, not stall it).
fn bounded<T>(what: &str, limit: Duration, f: impl FnOnce() -> T) -> T {
    let done = Arc::new(AtomicBool::new(false));
    let watch = done.clone();
    let what = what.to_string();
    std::thread::spawn(move || {
        let t = Instant::now();
        while t.elapsed() < limit {
            if watch.load(Ordering::Acquire) {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        // Straight to the descriptor: `eprintln!` is captured by the test
        // harness, and the capture is lost when the process exits here.
        use std::io::Write;
        let _ = writeln!(
            std::io::stderr(),
            "HANG: {what} still waiting after {limit:?}"
        );
        std::process::exit(99);
    });
    let out = f();
    done.store(true, Ordering::Release);
    out
}

/// How process 1 is made to stop answering.
#[derive(Clone, Copy, Debug)]
enum Stall {
    Killed,
    Stopped,
    Overdue,
}

/// Every slot is taken by a dropped call on process 1, which then stops
/// answering: an `acquire` for process 2 gets a slot once process 1 is
/// found out, and process 2 serves 200 calls, each once.
fn dropped_slots_on(stall: Stall) {
    clean(|| {
        let mut mpi = Mpi::new(3)
            .unwrap()
            .buffer_size(4)
            .failure_detection(Duration::from_secs(1));
        if matches!(stall, Stall::Overdue) {
            mpi = mpi.call_timeout(Duration::from_millis(300));
        }
        let nap = mpi.register("nap", nap);
        let inc = mpi.register("inc", |x: u64| x + 1);
        mpi.run(|m| {
            let pid1 = m.pid(1).unwrap();
            for _ in 0..4 {
                drop(m.acquire(&nap, &600_000, To::Process(1)).unwrap());
            }
            std::thread::sleep(Duration::from_millis(100));
            match stall {
                Stall::Killed => kill(Pid::from_raw(pid1), Signal::SIGKILL).unwrap(),
                Stall::Stopped => kill(Pid::from_raw(pid1), Signal::SIGSTOP).unwrap(),
                Stall::Overdue => {}
            }
            let first = bounded("acquire for process 2", Duration::from_secs(20), || {
                let s = m.acquire(&inc, &1, To::Process(2)).unwrap();
                m.get(s).unwrap()
            });
            assert_eq!(first, 2, "{stall:?}");
            // Three in flight: the run has four slots.
            survivors_by(m, &inc, To::Process(2), 0..200, 3);
            // Process 1 is gone (killed and reaped, whatever its stall).
            assert!(!xme_core::process::is_alive(pid1), "{stall:?}");
            assert!(matches!(
                m.block_acquire(&inc, &1, To::Process(1)),
                Err(MpiError::Closed { process: 1, .. }
                    | MpiError::ProcessDied { process: 1, .. }
                    | MpiError::Unresponsive { process: 1, .. })
            ));
        })
        .unwrap();
    });
}

#[test]
fn a_slot_held_by_dropped_calls_on_a_killed_process_is_freed() {
    dropped_slots_on(Stall::Killed);
}

#[test]
fn a_slot_held_by_dropped_calls_on_a_stopped_process_is_freed() {
    dropped_slots_on(Stall::Stopped);
}

#[test]
fn a_slot_held_by_dropped_calls_on_an_overdue_process_is_freed() {
    dropped_slots_on(Stall::Overdue);
}

/// The process of a direct call stalls (SIGSTOP) before its watcher can
/// report the deadline: the main process's own clock says so, well before
/// the detection bound, and the other process serves on.
#[test]
fn a_direct_call_whose_process_stalls_still_meets_its_deadline() {
    clean(|| {
        let deadline = Duration::from_millis(300);
        let mut mpi = Mpi::new(3).unwrap().call_timeout(deadline);
        let nap = mpi.register("nap", nap);
        let inc = mpi.register("inc", |x: u64| x + 1);
        mpi.run(|m| {
            let pid1 = m.pid(1).unwrap();
            let stopper = std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(100));
                kill(Pid::from_raw(pid1), Signal::SIGSTOP).unwrap();
            });
            let t = Instant::now();
            let e = bounded("direct call", Duration::from_secs(30), || {
                m.block_acquire(&nap, &600_000, To::Process(1)).unwrap_err()
            });
            let took = t.elapsed();
            stopper.join().unwrap();
            assert!(
                matches!(e, MpiError::DeadlineExceeded { process: 1, .. }),
                "after {took:?}: {e}"
            );
            // The detection bound is 10 s: the deadline, not silence, ended it.
            assert!(took < Duration::from_secs(5), "{took:?}");
            assert!(!xme_core::process::is_alive(pid1));
            survivors(m, &inc, To::Process(2), 0, 100);
        })
        .unwrap();
    });
}

#[test]
fn get_timeout_of_duration_max_waits_without_limit() {
    clean(|| {
        let mut mpi = Mpi::new(2).unwrap();
        let inc = mpi.register("inc", |x: u64| x + 1);
        mpi.run(|m| {
            let mut s = m.acquire(&inc, &1, To::Process(1)).unwrap();
            assert_eq!(m.get_timeout(&mut s, Duration::MAX).unwrap(), 2);
        })
        .unwrap();
    });
}

/// `close` of a process while another thread waits for its long call
/// (through a slot, or a direct `block_acquire`, which holds the replies'
/// lock for the whole call): `close` returns after its grace (the waiter
/// hands it the lock between turns; it once took back the lock for up to
/// 90 s), the waiter is told the process was closed (not that it died of
/// the kill that ended the grace), and process 2 serves on.
fn close_against_a_waiter(direct: bool) {
    // Twice: the lock was lost to `close` in most runs, not all.
    for round in 0..2 {
        clean(|| {
            let mut mpi = Mpi::new(3).unwrap();
            let nap = mpi.register("nap", nap);
            let inc = mpi.register("inc", |x: u64| x + 1);
            mpi.run(|m| {
                let (got, took) =
                    bounded("close against a waiter", Duration::from_secs(20), || {
                        std::thread::scope(|sc| {
                            let waiter = sc.spawn(|| {
                                if direct {
                                    m.block_acquire(&nap, &600_000, To::Process(1))
                                } else {
                                    m.get(m.acquire(&nap, &600_000, To::Process(1)).unwrap())
                                }
                            });
                            std::thread::sleep(Duration::from_millis(100));
                            let t = Instant::now();
                            m.close(To::Process(1)).unwrap();
                            let took = t.elapsed();
                            (waiter.join().unwrap(), took)
                        })
                    });
                let limit = CLOSE_GRACE + Duration::from_millis(1500);
                assert!(took < limit, "round {round}: close took {took:?}");
                match got {
                    Err(MpiError::Closed { process: 1, reason }) => {
                        assert!(reason.contains("closed it"), "{reason}")
                    }
                    other => panic!("round {round}: {other:?}"),
                }
                survivors(m, &inc, To::Process(2), 0, 100);
            })
            .unwrap();
        });
    }
}

#[test]
fn a_call_cut_by_close_is_reported_closed_not_died() {
    close_against_a_waiter(false);
}

#[test]
fn a_direct_call_cut_by_close_is_reported_closed_and_close_keeps_its_grace() {
    close_against_a_waiter(true);
}

/// `close` of a process that runs a unit for ever while another thread
/// waits for room in its full request channel (holding the channel's send
/// lock, which `close` needs to queue EXIT): `close` returns after its
/// grace (it once waited for that room for ever), the waiting call is
/// refused as closed, the calls queued before are failed as closed, and
/// process 2 serves on.
#[test]
fn close_ends_a_process_behind_a_caller_waiting_for_room() {
    clean(|| {
        // 4 KiB channels: two 1,500-byte requests fill one.
        let mut mpi = Mpi::new(3).unwrap().channel_bytes(4096);
        let nap = mpi.register("nap", nap);
        let echo = mpi.register("echo", |v: Vec<u8>| v.len() as u64);
        let inc = mpi.register("inc", |x: u64| x + 1);
        mpi.run(|m| {
            let busy = m.acquire(&nap, &600_000, To::Process(1)).unwrap();
            let (queued, refused, took) = bounded(
                "close behind a full channel",
                Duration::from_secs(20),
                || {
                    std::thread::scope(|sc| {
                        let writer = sc.spawn(|| {
                            let mut queued = Vec::new();
                            loop {
                                match m.acquire(&echo, &vec![7u8; 1500], To::Process(1)) {
                                    Ok(s) => queued.push(s),
                                    Err(e) => return (queued, e),
                                }
                            }
                        });
                        std::thread::sleep(Duration::from_millis(300));
                        let t = Instant::now();
                        m.close(To::Process(1)).unwrap();
                        let took = t.elapsed();
                        let (queued, refused) = writer.join().unwrap();
                        (queued, refused, took)
                    })
                },
            );
            let limit = CLOSE_GRACE + Duration::from_millis(1500);
            assert!(took < limit, "close took {took:?}");
            assert!(
                matches!(refused, MpiError::Closed { process: 1, .. }),
                "{refused}"
            );
            assert!(!queued.is_empty(), "the channel never filled");
            for s in std::iter::once(m.get(busy).map(|_| ()))
                .chain(queued.into_iter().map(|s| m.get(s).map(|_| ())))
            {
                assert!(
                    matches!(s, Err(MpiError::Closed { process: 1, .. })),
                    "{s:?}"
                );
            }
            survivors(m, &inc, To::Process(2), 0, 100);
        })
        .unwrap();
    });
}
