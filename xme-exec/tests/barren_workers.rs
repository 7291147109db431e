//! Workers that end before taking any call (here a fork hook ends every
//! new child, as a Python `os.register_at_fork(after_in_child=os._exit)`
//! does) are replaced only a few times: the run ends, and each call fails
//! saying why, instead of forking for ever.
//!
//! Its own test binary: fork hooks are process-wide and cannot be removed.

use std::sync::atomic::{AtomicI32, Ordering};
use std::time::{Duration, Instant};

use xme_core::process::{self, ForkHooks};
use xme_exec::{Array, TaskFailure, Xme};

/// 0: children run; > 0: they `_exit` with it; < 0: they kill themselves
/// with that signal.
static END_CHILDREN: AtomicI32 = AtomicI32::new(0);

fn run(how: i32) {
    static HOOK: std::sync::Once = std::sync::Once::new();
    HOOK.call_once(|| {
        process::at_fork(
            ForkHooks::new().child(|| match END_CHILDREN.load(Ordering::SeqCst) {
                0 => {}
                // SAFETY: _exit ends the child at once; nothing of it is needed.
                code if code > 0 => unsafe { libc::_exit(code) },
                signal => {
                    // SAFETY: raising a signal in the child itself.
                    unsafe { libc::raise(-signal) };
                }
            }),
        )
    });
    END_CHILDREN.store(how, Ordering::SeqCst);
    let started = Instant::now();
    let outcomes = Xme::new()
        .pnum(2)
        .timeout(Duration::from_secs(1))
        .fun(|x: i64| -x, Array::new(vec![1i64, 2, 3]))
        .expect("the run itself ends normally");
    END_CHILDREN.store(0, Ordering::SeqCst);
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "took {:?}",
        started.elapsed()
    );
    assert_eq!(outcomes.len(), 3);
    for outcome in outcomes {
        let failure = outcome.expect_err("no worker ever ran a call").failure;
        match failure {
            TaskFailure::NotRun(why) => {
                assert!(why.contains("ended before taking any call"), "{why}");
                let how_text = if how > 0 {
                    format!("exited with status {how}")
                } else {
                    format!("killed by signal {}", -how)
                };
                assert!(why.contains(&how_text), "{why}");
            }
            other => panic!("expected NotRun, got {other:?}"),
        }
    }
    assert!(
        process::children_of(std::process::id() as i32).is_empty(),
        "no worker may be left behind"
    );
    // The hook is off again: a run works, every call exactly once.
    let again = Xme::new()
        .pnum(2)
        .fun(|x: i64| -x, Array::new(vec![1i64, 2, 3]))
        .unwrap();
    let again: Vec<i64> = again.into_iter().map(Result::unwrap).collect();
    assert_eq!(again, vec![-1, -2, -3]);
}

#[test]
fn workers_that_exit_before_taking_a_call_stop_the_respawns() {
    run(3);
    run(-libc::SIGKILL);
}
