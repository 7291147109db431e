//! Exclusion across real processes: exact totals under each exclusive type,
//! lost updates without a lock, concurrent readers, writers excluding readers.

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use common::Shared;
use xme_core::process::fork_child;
use xme_security::{LockType, Operator, Security};

const PROCS: usize = 4;
const ADDS: u64 = 50_000;

/// 4 processes add 1 to the plain counter 50,000 times each, under `lock_type`.
fn hammer(lock_type: LockType) -> u64 {
    let shared = Shared::new();
    let sec = Security::new(lock_type).unwrap();
    let ops: Vec<Operator> = (0..PROCS).map(|_| Operator::alloc()).collect();
    sec.authorize(&ops).unwrap();
    let writer = Operator::alloc();
    sec.register(writer);
    let children: Vec<_> = (0..PROCS)
        .map(|p| {
            let (sec, shared) = (&sec, &shared);
            // READWRITE admits only its registered writer; the others each use their own.
            let op = if lock_type == LockType::ReadWrite {
                writer
            } else {
                ops[p]
            };
            fork_child(move || {
                for _ in 0..ADDS {
                    let g = sec.lock(op).unwrap();
                    shared.bump_plain();
                    drop(g);
                }
                0
            })
            .unwrap()
        })
        .collect();
    for c in children {
        assert!(c.wait().unwrap().is_success());
    }
    shared.plain()
}

#[test]
fn mutex_total_is_exact() {
    assert_eq!(hammer(LockType::Mutex), PROCS as u64 * ADDS);
}

#[test]
fn authorisation_total_is_exact() {
    assert_eq!(hammer(LockType::Authorisation), PROCS as u64 * ADDS);
}

#[test]
fn readwrite_write_total_is_exact() {
    assert_eq!(hammer(LockType::ReadWrite), PROCS as u64 * ADDS);
}

#[test]
fn spin_total_is_exact() {
    assert_eq!(hammer(LockType::Spin), PROCS as u64 * ADDS);
}

#[test]
fn disable_does_not_exclude() {
    let total = hammer(LockType::Disable);
    assert!(
        total < PROCS as u64 * ADDS,
        "DISABLE lost no update: {total}"
    );
}

#[test]
fn readers_run_concurrently_and_a_writer_excludes_them() {
    let shared = Shared::new();
    let sec = Security::new(LockType::ReadWrite).unwrap();
    let writer = Operator::alloc();
    sec.register(writer);
    let (inside, max_inside, writing, overlap) = (
        shared.cell(0),
        shared.cell(1),
        shared.cell(2),
        shared.cell(3),
    );
    let readers: Vec<_> = (0..4)
        .map(|_| {
            let sec = &sec;
            fork_child(move || {
                let op = Operator::alloc();
                for _ in 0..30 {
                    let g = sec.read(op).unwrap();
                    assert!(g.is_shared());
                    let now = inside.fetch_add(1, Ordering::SeqCst) + 1;
                    max_inside.fetch_max(now, Ordering::SeqCst);
                    if writing.load(Ordering::SeqCst) != 0 {
                        overlap.fetch_add(1, Ordering::SeqCst);
                    }
                    std::thread::sleep(Duration::from_millis(2));
                    inside.fetch_sub(1, Ordering::SeqCst);
                    drop(g);
                }
                0
            })
            .unwrap()
        })
        .collect();
    let w = {
        let sec = &sec;
        fork_child(move || {
            for _ in 0..20 {
                let g = sec.lock(writer).unwrap();
                writing.store(1, Ordering::SeqCst);
                if inside.load(Ordering::SeqCst) != 0 {
                    overlap.fetch_add(1, Ordering::SeqCst);
                }
                std::thread::sleep(Duration::from_millis(1));
                writing.store(0, Ordering::SeqCst);
                drop(g);
                std::thread::sleep(Duration::from_millis(1));
            }
            0
        })
        .unwrap()
    };
    for c in readers.into_iter().chain([w]) {
        assert!(c.wait().unwrap().is_success());
    }
    assert!(
        max_inside.load(Ordering::SeqCst) >= 2,
        "readers never overlapped"
    );
    assert_eq!(
        overlap.load(Ordering::SeqCst),
        0,
        "a writer and a reader were inside together"
    );
}
