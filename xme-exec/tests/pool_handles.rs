//! Per-call handles ([`Call`]) and sets of them ([`CallSet`]) across real
//! processes: join, time limits on waiting, cancellation of queued and
//! running calls, drop and detach, futures under tokio and a bare
//! `block_on`, and no descriptor per outstanding call.

mod pool_support;

use std::future::Future;
use std::pin::pin;
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};

use pool_support::{Ledger, bump, eventually, fds, serial};
use xme_core::process::{children_of, is_alive};
use xme_exec::Pool;

fn add_one(x: u64) -> u64 {
    x + 1
}

fn sleep_then((name, i, ms): (String, usize, u64)) -> usize {
    std::thread::sleep(Duration::from_millis(ms));
    bump(&name, i);
    i
}

fn forever(_: ()) -> u64 {
    loop {
        std::thread::park();
    }
}

fn forever_usize(_: ()) -> usize {
    loop {
        std::thread::park();
    }
}

/// The worker's own pid, after `ms`.
fn pid_after(ms: u64) -> i32 {
    std::thread::sleep(Duration::from_millis(ms));
    std::process::id() as i32
}

#[test]
fn join_join_timeout_and_try_join() {
    let _s = serial();
    let pool = Pool::new(2).unwrap();
    assert_eq!(pool.spawn(add_one, 41).join().unwrap(), 42);
    let ledger = Ledger::new(1);
    let mut call = pool.spawn(sleep_then, (ledger.name.clone(), 0, 300));
    assert!(call.try_join().is_none());
    assert!(!call.is_finished());
    // Waiting kills nothing: the call finishes and can be joined.
    assert!(call.join_timeout(Duration::from_millis(50)).is_none());
    let r = call.join_timeout(Duration::from_secs(30)).unwrap();
    assert_eq!(r.unwrap(), 0);
    assert_eq!(ledger.runs(0), 1);
    // Taken once only.
    let again = call.try_join().unwrap().unwrap_err();
    assert_eq!(again.failure, xme_exec::TaskFailure::Taken);
    // A huge limit is "no limit".
    let mut call = pool.spawn(add_one, 1);
    assert_eq!(call.join_timeout(Duration::MAX).unwrap().unwrap(), 2);
}

#[test]
fn a_cancelled_queued_call_never_runs_and_the_others_do() {
    let _s = serial();
    let pool = Pool::new(1).unwrap();
    let ledger = Ledger::new(4);
    let busy = pool.spawn(sleep_then, (ledger.name.clone(), 0, 400));
    let mut queued = pool.spawn(sleep_then, (ledger.name.clone(), 1, 0));
    let after = pool.spawn(sleep_then, (ledger.name.clone(), 2, 0));
    std::thread::sleep(Duration::from_millis(50));
    queued.cancel();
    assert!(queued.join().unwrap_err().is_cancelled());
    assert_eq!(busy.join().unwrap(), 0);
    assert_eq!(after.join().unwrap(), 2);
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!((ledger.runs(0), ledger.runs(1), ledger.runs(2)), (1, 0, 1));
}

#[test]
fn a_cancelled_running_call_kills_its_worker_which_is_replaced() {
    let _s = serial();
    let pool = Pool::new(2).unwrap();
    let worker = pool.spawn(pid_after, 0).join().unwrap();
    let mut call = pool.spawn(forever, ());
    let other = pool.spawn(pid_after, 300);
    std::thread::sleep(Duration::from_millis(100));
    let t = Instant::now();
    call.cancel();
    let err = call.join().unwrap_err();
    assert!(err.is_cancelled(), "{err}");
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    // The other call, on the other worker, is untouched.
    let survivor = other.join().unwrap();
    assert!(is_alive(survivor));
    // The pool has pnum workers again: two calls at once run in two
    // processes, neither of them the killed one.
    assert!(eventually(Duration::from_secs(5), || {
        let (a, b) = (pool.spawn(pid_after, 100), pool.spawn(pid_after, 100));
        let (a, b) = (a.join().unwrap(), b.join().unwrap());
        a != b && children_of(pool.zygote_pid()).len() == 2
    }));
    let _ = worker;
    assert_eq!(pool.spawn(add_one, 1).join().unwrap(), 2);
}

#[test]
fn dropping_a_call_cancels_it_and_detach_lets_it_run() {
    let _s = serial();
    let pool = Pool::new(1).unwrap();
    let ledger = Ledger::new(3);
    let busy = pool.spawn(sleep_then, (ledger.name.clone(), 0, 200));
    drop(pool.spawn(sleep_then, (ledger.name.clone(), 1, 0)));
    pool.spawn(sleep_then, (ledger.name.clone(), 2, 0)).detach();
    assert_eq!(busy.join().unwrap(), 0);
    assert!(eventually(Duration::from_secs(5), || ledger.runs(2) == 1));
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(ledger.runs(1), 0, "a dropped call ran");
    // A dropped running call: its worker is killed, the pool goes on.
    let running = pool.spawn(forever, ());
    std::thread::sleep(Duration::from_millis(50));
    drop(running);
    assert_eq!(pool.spawn(add_one, 6).join().unwrap(), 7);
}

#[test]
fn a_thousand_calls_awaited_on_a_tokio_runtime() {
    let _s = serial();
    let pool = Pool::new(2).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let sum = rt.block_on(async {
        let mut total = 0;
        let calls: Vec<_> = (0..1000u64).map(|i| pool.spawn(add_one, i)).collect();
        for c in calls {
            total += c.await.unwrap();
        }
        // One at a time too, and raced with a timer.
        for i in 0..50u64 {
            total += pool.spawn(add_one, i).await.unwrap();
        }
        let slow = pool.spawn(forever, ());
        let timed = tokio::time::timeout(Duration::from_millis(50), slow).await;
        assert!(timed.is_err(), "a call that never returns returned");
        total
    });
    let want: u64 = (1..=1000u64).sum::<u64>() + (1..=50u64).sum::<u64>();
    assert_eq!(sum, want);
}

/// A minimal executor: poll, park until woken.
fn block_on<F: Future>(f: F) -> F::Output {
    struct Unpark(std::thread::Thread);
    impl Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    let mut f = pin!(f);
    loop {
        if let Poll::Ready(v) = f.as_mut().poll(&mut cx) {
            return v;
        }
        std::thread::park();
    }
}

#[test]
fn calls_and_call_sets_work_under_a_bare_block_on() {
    let _s = serial();
    let pool = Pool::new(2).unwrap();
    assert_eq!(block_on(pool.spawn(add_one, 9)).unwrap(), 10);
    let mut set = pool.call_set();
    for i in 0..100 {
        set.spawn(add_one, i);
    }
    let mut seen = [false; 100];
    block_on(async {
        while let Some((i, r)) = std::future::poll_fn(|cx| set.poll_join_next(cx)).await {
            assert_eq!(r.unwrap(), i as u64 + 1);
            assert!(!seen[i]);
            seen[i] = true;
        }
    });
    assert!(seen.iter().all(|&s| s));
}

#[test]
fn a_call_set_yields_in_finishing_order_and_cancels_the_rest() {
    let _s = serial();
    let pool = Pool::new(2).unwrap();
    let ledger = Ledger::new(8);
    let mut set = pool.call_set();
    let slow = set.spawn(sleep_then, (ledger.name.clone(), 0, 400));
    let fast = set.spawn(sleep_then, (ledger.name.clone(), 1, 1));
    let (first, r) = set.join_next().unwrap();
    assert_eq!((first, r.unwrap()), (fast, 1));
    let (second, r) = set.join_next().unwrap();
    assert_eq!((second, r.unwrap()), (slow, 0));
    assert!(set.join_next().is_none());
    // Cancel all: a running and a queued call.
    let a = set.spawn(forever_usize, ());
    let b = set.spawn(forever_usize, ());
    let c = set.spawn(sleep_then, (ledger.name.clone(), 2, 0));
    assert!(set.join_next_timeout(Duration::from_millis(100)).is_none());
    set.cancel_all();
    let mut got: Vec<usize> = Vec::new();
    while let Some((i, r)) = set.join_next() {
        assert!(r.unwrap_err().is_cancelled(), "call {i}");
        got.push(i);
    }
    got.sort_unstable();
    assert_eq!(got, [a, b, c]);
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(ledger.runs(2), 0);
    // Usable again after a cancellation.
    let d = set.spawn(sleep_then, (ledger.name.clone(), 3, 0));
    assert_eq!(set.join_next().unwrap(), (d, Ok(3)));
}

#[test]
fn a_hundred_thousand_outstanding_calls_hold_no_descriptor_each() {
    let _s = serial();
    let pool = Pool::new(2).unwrap();
    let _ = pool.spawn(add_one, 0).join();
    let before = fds();
    let calls: Vec<_> = (0..100_000u64).map(|i| pool.spawn(add_one, i)).collect();
    let during = fds();
    assert!(
        during <= before + 4,
        "{before} descriptors before, {during} with 100,000 calls"
    );
    let mut sum = 0;
    for c in calls {
        sum += c.join().unwrap();
    }
    assert_eq!(sum, (1..=100_000u64).sum::<u64>());
    let mut set = pool.call_set();
    for i in 0..100_000u64 {
        set.spawn(add_one, i);
    }
    assert!(fds() <= before + 4);
    let mut n = 0;
    while let Some((i, r)) = set.join_next() {
        assert_eq!(r.unwrap(), i as u64 + 1);
        n += 1;
    }
    assert_eq!(n, 100_000);
}

fn sleep_ms(ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    ms
}

#[test]
fn a_slow_call_holds_back_only_itself() {
    let _s = serial();
    let pool = Pool::new(2).unwrap();
    // Warm both workers, and teach the pool that calls are short.
    let _ = pool
        .fun(sleep_ms, xme_exec::Array::new([0u64; 64]))
        .unwrap();
    let mut set = pool.call_set();
    for ms in [400u64, 20, 100, 20, 20] {
        set.spawn(sleep_ms, ms);
    }
    let order: Vec<u64> = std::iter::from_fn(|| set.join_next())
        .map(|(_, r)| r.unwrap())
        .collect();
    // The short calls run on the other worker while the 400 ms call runs,
    // even those first queued behind it.
    assert_eq!(order.last(), Some(&400), "{order:?}");
    let t = Instant::now();
    let out = pool
        .fun(
            sleep_ms,
            xme_exec::Array::new([400u64, 20, 20, 20, 20, 20, 20, 20]),
        )
        .unwrap();
    assert_eq!(out.into_result().unwrap()[0], 400);
    assert!(
        t.elapsed() < Duration::from_millis(700),
        "{:?}",
        t.elapsed()
    );
}
