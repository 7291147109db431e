//! A program that ignores `SIGCHLD` (so the kernel would reap its children
//! and drop their statuses) still gets every call's outcome, and its
//! `SIGCHLD` action back after the run.
//!
//! Each case runs in a child process of the test: the action is process-wide.

use xme_core::process::{self, children_of};
use xme_exec::{Array, TaskFailure, Xme};

fn sigchld_action() -> libc::sigaction {
    // SAFETY: reads the current action into a zeroed, valid sigaction.
    unsafe {
        let mut old: libc::sigaction = std::mem::zeroed();
        assert_eq!(
            libc::sigaction(libc::SIGCHLD, std::ptr::null(), &mut old),
            0
        );
        old
    }
}

fn ignore_sigchld(flags: libc::c_int, handler: libc::sighandler_t) {
    // SAFETY: sets a plain action (SIG_IGN or SIG_DFL) with valid pointers.
    unsafe {
        let mut act: libc::sigaction = std::mem::zeroed();
        act.sa_sigaction = handler;
        act.sa_flags = flags;
        assert_eq!(
            libc::sigaction(libc::SIGCHLD, &act, std::ptr::null_mut()),
            0
        );
    }
}

/// In a child of the test: ignores SIGCHLD as told, runs a batch whose call
/// 2 ends its worker with status 6, and checks everything; exit 0 if fine.
fn batch_with_sigchld(flags: libc::c_int, handler: libc::sighandler_t) {
    let child = process::fork_child(|| {
        ignore_sigchld(flags, handler);
        let outcomes = Xme::new()
            .pnum(2)
            .fun(
                |x: i64| {
                    if x == 2 {
                        // SAFETY: ends this worker at once, as the test wants.
                        unsafe { libc::_exit(6) };
                    }
                    x * 10
                },
                Array::new((0..6i64).collect::<Vec<_>>()),
            )
            .expect("the run works with SIGCHLD ignored");
        for (i, outcome) in outcomes.into_iter().enumerate() {
            match (i, outcome) {
                (2, Err(e)) => assert_eq!(e.failure, TaskFailure::Exited { code: 6 }),
                (i, Ok(v)) => assert_eq!(v, i as i64 * 10),
                (i, other) => panic!("call {i}: {other:?}"),
            }
        }
        let after = sigchld_action();
        assert_eq!(after.sa_sigaction, handler, "SIGCHLD's action is put back");
        assert_eq!(
            after.sa_flags & libc::SA_NOCLDWAIT,
            flags & libc::SA_NOCLDWAIT
        );
        assert!(
            children_of(std::process::id() as i32).is_empty(),
            "a worker was left"
        );
        0
    })
    .unwrap();
    assert_eq!(child.wait().unwrap(), xme_core::Fate::Exited(0));
}

#[test]
fn sigchld_ignored_keeps_every_outcome_and_is_put_back() {
    batch_with_sigchld(0, libc::SIG_IGN);
}

#[test]
fn sa_nocldwait_keeps_every_outcome_and_is_put_back() {
    batch_with_sigchld(libc::SA_NOCLDWAIT, libc::SIG_DFL);
}
