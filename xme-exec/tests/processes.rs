//! No zombie, no orphan, nothing printed twice. One test per concern, run in
//! sequence inside one test so that counting this process's children is exact.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use xme_core::SharedRegion;
use xme_core::process::{children_of, fork_child, is_alive};
use xme_exec::{Array, Xme};

#[test]
fn no_zombies_no_orphans() {
    let me = std::process::id() as i32;

    // 1. After runs with every kind of failure, this process has no child left.
    let _ = Xme::new()
        .pnum(2)
        .timeout(Duration::from_millis(200))
        .fun(
            |i: u32| match i {
                1 => panic!("p"),
                2 => std::process::abort(),
                3 => std::process::exit(4),
                4 => {
                    std::thread::sleep(Duration::from_secs(10));
                    0
                }
                _ => i,
            },
            Array::new(0..8u32),
        )
        .unwrap();
    assert_eq!(
        children_of(me),
        Vec::<i32>::new(),
        "children left after a run"
    );

    // 2. Workers die with their parent: a middle process starts a run of long
    //    calls and is SIGKILLed; its workers must not survive it.
    let region = SharedRegion::anonymous(64).unwrap();
    let pids: &[AtomicU64] = region.slice(0, 2).unwrap();
    let middle = fork_child(|| {
        let _ = Xme::new().pnum(2).print_in_screen(false).fun(
            |i: usize| {
                pids[i].store(u64::from(std::process::id()), Ordering::SeqCst);
                std::thread::sleep(Duration::from_secs(60));
            },
            Array::new(0..2usize),
        );
        0
    })
    .unwrap();
    let t = Instant::now();
    while pids.iter().any(|p| p.load(Ordering::SeqCst) == 0) {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "workers never started"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    middle.kill().unwrap();
    let workers: Vec<i32> = pids
        .iter()
        .map(|p| p.load(Ordering::SeqCst) as i32)
        .collect();
    let t = Instant::now();
    while workers.iter().any(|&p| is_alive(p)) {
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "orphaned workers {workers:?} outlived their parent"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(children_of(me), Vec::<i32>::new());
}

/// Run by `text_buffered_before_a_fork_is_printed_once` in a fresh process.
#[test]
#[ignore = "helper: run by another test in its own process"]
fn helper_print_then_run() {
    print!("MARKER-BEFORE-FORK ");
    let _ = Xme::new()
        .pnum(2)
        .fun(|i: u32| println!("child line {i}"), Array::new(0..4u32))
        .unwrap();
}

#[test]
fn text_buffered_before_a_fork_is_printed_once() {
    let out = xme_test_support::run_test_helper("helper_print_then_run", &[]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert_eq!(stdout.matches("MARKER-BEFORE-FORK").count(), 1, "{stdout}");
    assert_eq!(stdout.matches("child line").count(), 4, "{stdout}");
}
