//! A parent fork hook that panics makes `fork_child` kill the child it just
//! forked; that worker may already have taken and run calls. Their replies
//! still count, and a call it took without replying is reported as possibly
//! run, never as "never run".
//!
//! Its own test binary: fork hooks are process-wide and cannot be removed.

use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::time::Duration;

use xme_core::SharedRegion;
use xme_core::process::{self, ForkHooks};
use xme_exec::{Array, TaskFailure, Xme};

const CALLS: usize = 12;

#[test]
fn calls_of_a_worker_killed_by_a_parent_hook_panic_are_not_reported_as_never_run() {
    static FORKS: AtomicUsize = AtomicUsize::new(0);
    // The second fork's parent hook panics, late enough that its worker has
    // taken (and run) calls by then.
    process::at_fork(ForkHooks::new().parent(|| {
        if FORKS.fetch_add(1, Ordering::SeqCst) == 1 {
            std::thread::sleep(Duration::from_millis(300));
            panic!("a parent hook gives up");
        }
    }));
    // Which calls started in a worker (the pid that ran them).
    let ran = SharedRegion::anonymous(CALLS * 4).unwrap();
    let ran_ref = &ran;
    let outcomes = Xme::new()
        .pnum(2)
        .fun(
            move |x: u32| {
                let slot: &AtomicU32 = ran_ref.place(x as usize * 4).unwrap();
                slot.store(std::process::id(), Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(50));
                x + 1
            },
            Array::new((0..CALLS as u32).collect::<Vec<_>>()),
        )
        .expect("one worker started, so the run goes on");
    let mut discarded = 0;
    for (x, outcome) in outcomes.into_iter().enumerate() {
        let started = ran
            .place::<AtomicU32>(x * 4)
            .unwrap()
            .load(Ordering::SeqCst)
            != 0;
        match outcome {
            Ok(v) => assert_eq!(v, x as u32 + 1),
            Err(e) => match e.failure {
                TaskFailure::WorkerDiscarded(why) => {
                    assert!(why.contains("a parent hook gives up"), "{why}");
                    discarded += 1;
                }
                TaskFailure::NotRun(why) => {
                    assert!(
                        !started,
                        "call {x} ran, yet is reported as never run: {why}"
                    )
                }
                other => panic!("call {x}: {other:?}"),
            },
        }
    }
    assert!(discarded <= 1, "only the call it was running when killed");
    assert!(process::children_of(std::process::id() as i32).is_empty());
}
