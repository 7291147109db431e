//! Fork hooks: order, the child's hooks before its body, and what a
//! panicking hook does at each stage. Hooks are process-wide and permanent,
//! so every scenario runs in one test, one after the other, with panics
//! armed by flags.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use xme_core::process::{self, ForkHooks};
use xme_core::{Error, Fate, SharedRegion};

/// What the parent-side hooks did, in order.
static PARENT_LOG: Mutex<Vec<&str>> = Mutex::new(Vec::new());
/// The child-side hooks' trace, digit by digit (1 = first registered, 2 =
/// second), so the body can report it through shared memory.
static CHILD_TRACE: AtomicU64 = AtomicU64::new(0);
static PANIC_IN_PREPARE: AtomicBool = AtomicBool::new(false);
static PANIC_IN_PARENT: AtomicBool = AtomicBool::new(false);
static PANIC_IN_CHILD: AtomicBool = AtomicBool::new(false);

fn log(what: &'static str) {
    PARENT_LOG.lock().unwrap().push(what);
}

fn take_log() -> Vec<&'static str> {
    std::mem::take(&mut *PARENT_LOG.lock().unwrap())
}

fn trace(digit: u64) {
    let t = CHILD_TRACE.load(Ordering::Relaxed);
    CHILD_TRACE.store(t * 10 + digit, Ordering::Relaxed);
}

fn children() -> Vec<i32> {
    process::children_of(std::process::id() as i32)
}

#[test]
fn hooks_run_in_order_and_a_panicking_hook_is_contained() {
    let before = children();
    // Where the children's exit hooks leave their trace: they run after
    // the body, so only shared memory sees them.
    let exits: &'static SharedRegion = Box::leak(Box::new(SharedRegion::anonymous(8).unwrap()));
    let exit_trace: &'static AtomicU64 = exits.place(0).unwrap();
    let exit_digit = move |digit: u64| {
        let t = exit_trace.load(Ordering::SeqCst);
        exit_trace.store(t * 10 + digit, Ordering::SeqCst);
    };
    process::at_fork(
        ForkHooks::new()
            .prepare(|| {
                assert!(!PANIC_IN_PREPARE.load(Ordering::Relaxed), "prepare refused");
                log("prepare 1")
            })
            .parent(|| log("parent 1"))
            .child(|| trace(1))
            .before_exit(move || {
                exit_digit(3);
                panic!("an exit hook's panic is ignored");
            }),
    );
    process::at_fork(
        ForkHooks::new()
            .prepare(|| log("prepare 2"))
            .parent(|| {
                log("parent 2");
                assert!(!PANIC_IN_PARENT.load(Ordering::Relaxed), "parent refused");
            })
            .child(|| {
                assert!(!PANIC_IN_CHILD.load(Ordering::Relaxed), "child refused");
                trace(2)
            })
            .before_exit(move || exit_digit(4)),
    );
    let region = SharedRegion::anonymous(8).unwrap();
    let seen: &AtomicU64 = region.place(0).unwrap();

    // Order: prepare hooks latest first, parent and child hooks in
    // registration order, and the child's hooks before its body.
    let child = process::fork_child(|| {
        seen.store(CHILD_TRACE.load(Ordering::Relaxed), Ordering::SeqCst);
        0
    })
    .unwrap();
    assert_eq!(child.wait().unwrap(), Fate::Exited(0));
    assert_eq!(seen.load(Ordering::SeqCst), 12);
    // Exit hooks in registration order, after the body; a panic in the
    // first did not stop the second nor change the exit status.
    assert_eq!(exit_trace.swap(0, Ordering::SeqCst), 34);
    assert_eq!(
        CHILD_TRACE.load(Ordering::Relaxed),
        0,
        "child hooks ran in the parent"
    );
    assert_eq!(
        take_log(),
        ["prepare 2", "prepare 1", "parent 1", "parent 2"]
    );

    // A panicking prepare hook (the oldest, so the last to run) cancels the
    // fork; the parent hook of the one prepared before it undoes it.
    PANIC_IN_PREPARE.store(true, Ordering::Relaxed);
    let err = process::fork_child(|| 0).unwrap_err();
    PANIC_IN_PREPARE.store(false, Ordering::Relaxed);
    assert!(
        matches!(&err, Error::ForkHook { stage: "prepare", message } if message == "prepare refused"),
        "{err:?}"
    );
    assert_eq!(take_log(), ["prepare 2", "parent 2"]);
    assert_eq!(children(), before, "a cancelled fork left a child");

    // A panicking parent hook: the other parent hooks still run, the child
    // is killed and reaped, the caller gets the error.
    PANIC_IN_PARENT.store(true, Ordering::Relaxed);
    let err = process::fork_child(|| {
        std::thread::sleep(std::time::Duration::from_secs(30));
        0
    })
    .unwrap_err();
    PANIC_IN_PARENT.store(false, Ordering::Relaxed);
    assert!(
        matches!(
            &err,
            Error::ForkHook {
                stage: "parent",
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(
        take_log(),
        ["prepare 2", "prepare 1", "parent 1", "parent 2"]
    );
    assert_eq!(
        children(),
        before,
        "the child of a failed parent hook was left"
    );

    // A panicking child hook: the child exits with EXIT_PANICKED and its
    // body never runs.
    seen.store(0, Ordering::SeqCst);
    PANIC_IN_CHILD.store(true, Ordering::Relaxed);
    let child = process::fork_child(|| {
        seen.store(1, Ordering::SeqCst);
        0
    })
    .unwrap();
    PANIC_IN_CHILD.store(false, Ordering::Relaxed);
    assert_eq!(child.wait().unwrap(), Fate::Exited(process::EXIT_PANICKED));
    assert_eq!(
        seen.load(Ordering::SeqCst),
        0,
        "the body ran after a child hook panicked"
    );
    take_log();

    // And forks work again afterwards.
    let child = process::fork_child(|| 3).unwrap();
    assert_eq!(child.wait().unwrap(), Fate::Exited(3));
    assert_eq!(children(), before);
}
