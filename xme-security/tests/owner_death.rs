//! A holder killed with SIGKILL never leaves the lock stuck.

mod common;

use std::time::Duration;

use common::Shared;
use nix::sys::signal::Signal;
use xme_security::{LockType, Operator, Security};

/// A child takes the lock (as `holder`) and is SIGKILLed while holding it;
/// the parent must get it within WaitTime and learn the owner died.
fn kill_holder_then_acquire(
    sec: &Security<'_>,
    shared: &Shared,
    holder: Operator,
    taker: Operator,
) {
    let fate = common::killed_after(shared, || std::mem::forget(sec.lock(holder).unwrap()));
    assert_eq!(fate.signal(), Some(Signal::SIGKILL as i32));
    let got = sec
        .acquire(taker)
        .expect("the lock was recovered within WaitTime");
    assert!(
        got.previous_owner_died,
        "the taker was not told the owner died"
    );
    sec.release(taker).unwrap();
}

#[test]
fn mutex_holder_killed_200_times() {
    let sec = Security::new(LockType::Mutex).unwrap();
    sec.set_wait_time(Some(Duration::from_secs(5)));
    let shared = Shared::new();
    for _ in 0..200 {
        kill_holder_then_acquire(&sec, &shared, Operator::alloc(), Operator::alloc());
    }
}

#[test]
fn spin_holder_killed_50_times() {
    let sec = Security::new(LockType::Spin).unwrap();
    sec.set_wait_time(Some(Duration::from_secs(5)));
    let shared = Shared::new();
    for _ in 0..50 {
        kill_holder_then_acquire(&sec, &shared, Operator::alloc(), Operator::alloc());
    }
}

#[test]
fn readwrite_writer_killed_50_times() {
    let sec = Security::new(LockType::ReadWrite).unwrap();
    sec.set_wait_time(Some(Duration::from_secs(5)));
    let writer = Operator::alloc();
    sec.register(writer);
    let shared = Shared::new();
    for _ in 0..50 {
        kill_holder_then_acquire(&sec, &shared, writer, writer);
    }
}

#[test]
fn a_reader_after_a_killed_writer_learns_it_died() {
    let sec = Security::new(LockType::ReadWrite).unwrap();
    sec.set_wait_time(Some(Duration::from_secs(5)));
    let writer = Operator::alloc();
    sec.register(writer);
    let shared = Shared::new();
    common::killed_after(&shared, || std::mem::forget(sec.lock(writer).unwrap()));
    let r = sec.read(Operator::alloc()).unwrap();
    assert!(r.previous_owner_died());
}

#[test]
fn a_killed_reader_does_not_block_the_writer() {
    let sec = Security::new(LockType::ReadWrite).unwrap();
    sec.set_wait_time(Some(Duration::from_secs(5)));
    let writer = Operator::alloc();
    sec.register(writer);
    let shared = Shared::new();
    for _ in 0..20 {
        common::killed_after(&shared, || {
            std::mem::forget(sec.read(Operator::alloc()).unwrap())
        });
        let g = sec.lock(writer).expect("writer got past the dead reader");
        drop(g);
    }
}
