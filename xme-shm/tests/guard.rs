//! The call buffer, Guard and HeartJump across real processes.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};
use xme_core::process::{self, fork_child};
use xme_core::{Operator, SharedRegion};
use xme_exec::{Array, Context, Job, Xme};
use xme_security::LockType;
use xme_shm::{
    Call, Executed, GUARD_KEY, Guard, GuardTable, HeartJump, Manager, RawValue, SharedObject,
    ShmError, StopReason, XmemBuilder,
};

/// Tests that fork or count children run one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

const WAIT: Duration = Duration::from_secs(10);

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
struct V {
    value: i64,
}

impl V {
    fn add(&mut self, n: i64) -> i64 {
        self.value += n;
        self.value
    }

    /// Adds `n` only if its check word matches: a torn call would panic.
    fn add_checked(&mut self, (n, check): (i64, i64)) {
        assert_eq!(n ^ 0x5a5a_5a5a, check, "torn arguments");
        self.value += n;
    }
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Log {
    seen: Vec<(u32, u32)>,
}

impl Log {
    fn push(&mut self, entry: (u32, u32)) {
        self.seen.push(entry);
    }
}

fn no_children_left() {
    let me = std::process::id() as i32;
    let deadline = Instant::now() + Duration::from_secs(5);
    while !process::children_of(me).is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(process::children_of(me), Vec::<i32>::new());
}

fn slow(_m: &Manager, ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    ms
}

fn boom(_m: &Manager, what: String) -> u8 {
    panic!("{what}")
}

#[test]
fn eight_producers_exact_totals_by_both_paths() {
    let _s = serial();
    let xmem = XmemBuilder::new().buffer_capacity(64).build().unwrap();
    let v = SharedObject::create(&xmem, "v", &V::default()).unwrap();
    let direct = SharedObject::create(&xmem, "direct", &V::default()).unwrap();
    let guard = Guard::new().spawn(&xmem).unwrap();
    let producers: Vec<_> = (0..8)
        .map(|_| {
            fork_child(|| {
                let op = xmem.alloc_operator();
                for _ in 0..2000 {
                    xmem.append(&v.call(V::add, &1).unwrap(), op).unwrap();
                    direct.invoke(&xmem, V::add, 1).unwrap();
                }
                // The last result of this operator is the running total then.
                let total: i64 = xmem.get_result(op, WAIT).unwrap();
                assert!(total >= 2000);
                0
            })
            .unwrap()
        })
        .collect();
    for p in producers {
        assert!(p.wait().unwrap().is_success());
    }
    assert!(guard.stop(WAIT).unwrap());
    assert_eq!(v.get(&xmem).unwrap().value, 16_000);
    assert_eq!(direct.get(&xmem).unwrap().value, 16_000);
    assert_eq!(xmem.executed(), 16_000);
    assert_eq!(xmem.buffer_len(), 0);
    no_children_left();
}

#[test]
fn calls_from_one_producer_run_in_order() {
    let _s = serial();
    let xmem = XmemBuilder::new().buffer_capacity(16).build().unwrap();
    let log = SharedObject::create(&xmem, "log", &Log::default()).unwrap();
    let guard = Guard::new().spawn(&xmem).unwrap();
    let producers: Vec<_> = (0..4u32)
        .map(|p| {
            let log = log.clone();
            let xmem = &xmem;
            fork_child(move || {
                let op = xmem.alloc_operator();
                for i in 0..500u32 {
                    xmem.append(&log.call(Log::push, &(p, i)).unwrap(), op)
                        .unwrap();
                }
                0
            })
            .unwrap()
        })
        .collect();
    for p in producers {
        assert!(p.wait().unwrap().is_success());
    }
    assert!(guard.stop(WAIT).unwrap());
    let seen = log.get(&xmem).unwrap().seen;
    assert_eq!(seen.len(), 2000);
    for p in 0..4 {
        let mine: Vec<u32> = seen.iter().filter(|e| e.0 == p).map(|e| e.1).collect();
        assert_eq!(mine, (0..500).collect::<Vec<_>>(), "producer {p}");
    }
}

#[test]
fn every_builtin_operation_through_the_buffer() {
    let _s = serial();
    let xmem = XmemBuilder::new()
        .value("a", &1u32)
        .unwrap()
        .build()
        .unwrap();
    let guard = Guard::new().spawn(&xmem).unwrap();
    let op = Operator::ADMIN; // the default READWRITE lock's writer
    let get = |t: &str| -> RawValue { xmem.get_raw(t).unwrap().unwrap() };

    xmem.append(&Call::table_update([("b", 2u32), ("c", 3u32)]).unwrap(), op)
        .unwrap();
    xmem.get_result::<()>(op, WAIT).unwrap();
    assert_eq!(get("b").decode::<u32>().unwrap(), 2);

    xmem.append(&Call::table_set("d", "four").unwrap(), op)
        .unwrap();
    xmem.get_result::<()>(op, WAIT).unwrap();
    assert_eq!(xmem.get::<String>("d").unwrap(), "four");

    xmem.append(&Call::table_get(&["a", "d"]).unwrap(), op)
        .unwrap();
    let copy: BTreeMap<String, RawValue> = xmem.get_result(op, WAIT).unwrap();
    assert_eq!(copy["a"].decode::<u32>().unwrap(), 1);
    assert_eq!(copy.len(), 2);

    xmem.append(&Call::table_items().unwrap(), op).unwrap();
    let items: Vec<(String, RawValue)> = xmem.get_result(op, WAIT).unwrap();
    assert_eq!(items.len(), 3 + 4);

    xmem.append(&Call::table_delete(&["b", "c", "zz"]).unwrap(), op)
        .unwrap();
    assert_eq!(xmem.get_result::<usize>(op, WAIT).unwrap(), 2);
    assert!(xmem.get_raw("b").unwrap().is_none());

    xmem.append(&Call::status_update("working").unwrap(), op)
        .unwrap();
    xmem.get_result::<()>(op, WAIT).unwrap();
    assert_eq!(xmem.statuses().unwrap()[&op].status, "working");

    xmem.append(&Call::lock_update(LockType::Mutex).unwrap(), op)
        .unwrap();
    xmem.get_result::<()>(op, WAIT).unwrap();
    assert_eq!(xmem.security().lock_type(), LockType::Mutex);

    // An update the lock refuses is an error in the mailbox, not a crash.
    xmem.security().update_lock(LockType::ReadWrite);
    let stranger = xmem.alloc_operator();
    xmem.append(&Call::table_update([("x", 1u8)]).unwrap(), stranger)
        .unwrap();
    let refused = xmem.get_result::<()>(stranger, WAIT).unwrap_err();
    assert!(matches!(refused, ShmError::CallFailed { .. }), "{refused}");
    assert!(
        refused
            .to_string()
            .contains("Guard Function Executes Failure")
    );

    // The seed's stop: Table::update of __GUARD__ ends the Guard right after.
    let stop: GuardTable = [("Status".to_string(), false)].into();
    xmem.append(&Call::table_update([(GUARD_KEY, stop)]).unwrap(), op)
        .unwrap();
    let deadline = Instant::now() + WAIT;
    while xmem.buffer_len() > 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(1));
    }
    assert!(guard.stop(WAIT).unwrap());
    assert!(!xmem.guard_status().unwrap());
}

#[test]
fn get_timeout_nothing_pending_unknown_name_and_too_large_calls() {
    let _s = serial();
    let xmem = XmemBuilder::new().call_bytes(64).build().unwrap();
    let op = xmem.alloc_operator();
    assert!(matches!(
        xmem.get_result::<()>(op, WAIT),
        Err(ShmError::NoCallPending { .. })
    ));
    // No Guard: the result never comes.
    xmem.append(&Call::table_set("k", &1u8).unwrap(), op)
        .unwrap();
    let t = Instant::now();
    let e = xmem
        .get_result::<()>(op, Duration::from_millis(50))
        .unwrap_err();
    assert!(matches!(e, ShmError::GetTimeout { .. }), "{e}");
    assert!(e.to_string().contains("<-XMEM GET Failure->"));
    assert!(t.elapsed() >= Duration::from_millis(50));
    // Run it by hand; then the result is there, once.
    assert!(matches!(
        xmem.exec().unwrap(),
        Executed::Ran { failed: false, .. }
    ));
    xmem.get_result::<()>(op, WAIT).unwrap();
    assert!(matches!(
        xmem.get_result::<()>(op, WAIT),
        Err(ShmError::NoCallPending { .. })
    ));
    assert_eq!(xmem.exec().unwrap(), Executed::Empty);

    assert!(matches!(
        xmem.named::<u8, u8>("nope"),
        Err(ShmError::UnknownFunction { .. })
    ));
    assert!(matches!(
        xmem.register("Table::set", |_m, x: u8| x),
        Err(ShmError::Reserved { .. })
    ));
    let big = Call::table_set("k", &vec![7u8; 100]).unwrap();
    assert!(matches!(
        xmem.append(&big, op),
        Err(ShmError::CallTooLarge { max: 64, .. })
    ));
    // clean discards a waiting result.
    xmem.append(&Call::table_set("k", &2u8).unwrap(), op)
        .unwrap();
    xmem.exec().unwrap();
    xmem.clean(op).unwrap();
    assert!(matches!(
        xmem.get_result::<()>(op, WAIT),
        Err(ShmError::NoCallPending { .. })
    ));
}

#[test]
fn a_panicking_call_leaves_an_error_and_the_guard_goes_on() {
    let _s = serial();
    let xmem = XmemBuilder::new().build().unwrap();
    let v = SharedObject::create(&xmem, "v", &V::default()).unwrap();
    let guard = Guard::new().spawn(&xmem).unwrap();
    let op = xmem.alloc_operator();
    xmem.append(&Call::function(boom, &"kaboom".to_string()).unwrap(), op)
        .unwrap();
    let e = xmem.get_result::<u8>(op, WAIT).unwrap_err();
    match &e {
        ShmError::CallPanicked { message, .. } => assert!(message.contains("kaboom")),
        other => panic!("expected a panic error, got {other}"),
    }
    assert!(e.to_string().starts_with(xme_shm::GUARD_FUN_FAIL));
    xmem.append(&v.call(V::add, &5).unwrap(), op).unwrap();
    assert_eq!(xmem.get_result::<i64>(op, WAIT).unwrap(), 5);
    assert!(guard.stop(WAIT).unwrap());
}

#[test]
fn a_full_buffer_waits_and_times_out() {
    let _s = serial();
    let xmem = XmemBuilder::new().buffer_capacity(4).build().unwrap();
    let v = SharedObject::create(&xmem, "v", &V::default()).unwrap();
    let op = xmem.alloc_operator();
    for _ in 0..4 {
        xmem.append(&v.call(V::add, &1).unwrap(), op).unwrap();
    }
    let t = Instant::now();
    let e = xmem
        .append_timeout(&v.call(V::add, &1).unwrap(), op, Duration::from_millis(30))
        .unwrap_err();
    assert!(matches!(e, ShmError::BufferFull { capacity: 4, .. }), "{e}");
    assert!(t.elapsed() >= Duration::from_millis(30));
    // A blocked append goes on once a Guard makes room.
    let guard = Guard::new().spawn(&xmem).unwrap();
    for _ in 0..100 {
        xmem.append(&v.call(V::add, &1).unwrap(), op).unwrap();
    }
    assert_eq!(xmem.get_result::<i64>(op, WAIT).unwrap(), 104);
    assert!(guard.stop(WAIT).unwrap());
}

#[test]
fn producers_killed_mid_append_leave_no_half_entry_and_block_no_one() {
    let _s = serial();
    let xmem = XmemBuilder::new().buffer_capacity(64).build().unwrap();
    let v = SharedObject::create(&xmem, "v", &V::default()).unwrap();
    let guard = Guard::new().spawn(&xmem).unwrap();
    let mut rng = 0x9e37_79b9u64;
    for round in 0..60 {
        let child = fork_child(|| {
            let op = xmem.alloc_operator();
            for n in 1..i64::MAX {
                let call = v.call(V::add_checked, &(n, n ^ 0x5a5a_5a5a)).unwrap();
                xmem.append(&call, op).unwrap();
            }
            0
        })
        .unwrap();
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        std::thread::sleep(Duration::from_micros(200 + rng % 3000));
        kill(Pid::from_raw(child.pid()), Signal::SIGKILL).unwrap();
        let fate = child.wait().unwrap();
        assert!(!fate.is_success(), "round {round}");
    }
    // The buffer drains and still works for everyone.
    let op = xmem.alloc_operator();
    xmem.append(&v.call(V::add, &0).unwrap(), op).unwrap();
    let total = xmem.get_result::<i64>(op, WAIT).unwrap();
    assert!(total > 0);
    assert_eq!(xmem.buffer_len(), 0);
    assert!(guard.stop(WAIT).unwrap());
    assert_eq!(v.get(&xmem).unwrap().value, total);
    // No torn call ran: each would have panicked and been counted as failed.
    assert!(xmem.get_buffers().pending.is_empty());
    no_children_left();
}

#[test]
fn a_killed_guard_fails_its_running_call_once_and_a_new_guard_resumes() {
    let _s = serial();
    let xmem = XmemBuilder::new().build().unwrap();
    let v = SharedObject::create(&xmem, "v", &V::default()).unwrap();
    let starts = SharedObject::create(&xmem, "starts", &V::default()).unwrap();
    fn slow_counted(m: &Manager, ms: u64) -> u64 {
        SharedObject::<V>::named("starts")
            .invoke(m, V::add, 1)
            .unwrap();
        slow(m, ms)
    }
    let guard = Guard::new().spawn(&xmem).unwrap();
    let (a, b) = (xmem.alloc_operator(), xmem.alloc_operator());
    xmem.append(&Call::function(slow_counted, &2000).unwrap(), a)
        .unwrap();
    for _ in 0..10 {
        xmem.append(&v.call(V::add, &1).unwrap(), b).unwrap();
    }
    // Wait until the slow call runs, then kill the Guard.
    let deadline = Instant::now() + WAIT;
    while starts.get(&xmem).unwrap().value == 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(1));
    }
    let pid = guard.pid() as u32;
    guard.kill().unwrap();
    let t = Instant::now();
    let e = xmem
        .get_result::<u64>(a, Duration::from_secs(1))
        .unwrap_err();
    assert!(
        matches!(e, ShmError::GuardDied { pid: p } if p == pid),
        "{e}"
    );
    assert!(t.elapsed() < Duration::from_secs(1));
    // Nothing lost: the ten adds wait in the buffer.
    let snap = xmem.get_buffers();
    assert_eq!(snap.pending.len(), 11, "{snap:?}");
    assert_eq!(snap.pending[0].running_in, Some(pid));

    let guard = Guard::new().spawn(&xmem).unwrap();
    // Until the new Guard registers, the dead one is the registered Guard
    // and get_result reports it (GuardDied): wait for the hand-over.
    let deadline = Instant::now() + WAIT;
    while xmem.guard_pid() != Some(guard.pid() as u32) {
        assert!(Instant::now() < deadline, "the new Guard never registered");
        std::thread::sleep(Duration::from_millis(1));
    }
    let e = xmem.get_result::<u64>(a, WAIT).unwrap_err();
    assert!(
        matches!(&e, ShmError::CallFailed { message, .. } if message.contains("died while running")),
        "{e}"
    );
    assert_eq!(xmem.get_result::<i64>(b, WAIT).unwrap(), 10);
    assert_eq!(starts.get(&xmem).unwrap().value, 1, "never run twice");
    assert!(guard.stop(WAIT).unwrap());
    no_children_left();
}

#[test]
fn a_second_live_guard_is_refused() {
    let _s = serial();
    let xmem = XmemBuilder::new().build().unwrap();
    let guard = Guard::new().spawn(&xmem).unwrap();
    let deadline = Instant::now() + WAIT;
    while xmem.guard_pid() != Some(guard.pid() as u32) {
        assert!(
            Instant::now() < deadline,
            "the first Guard never registered"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    let e = Guard::new().run(&xmem).unwrap_err();
    assert!(
        matches!(e, ShmError::GuardRunning { pid } if pid as i32 == guard.pid()),
        "{e}"
    );
    assert!(guard.stop(WAIT).unwrap());
}

#[test]
fn the_guard_ends_with_its_run_and_by_exit_time() {
    let _s = serial();
    let xmem = XmemBuilder::new().build().unwrap();
    let v = SharedObject::create(&xmem, "v", &V::default()).unwrap();
    let guard = Guard::new(); // ExitTime 10 s: the run's end must stop it first
    let child = |ctx: &mut Context<Manager>, i: i64| {
        let (m, op) = (ctx.data(), ctx.data().alloc_operator());
        for _ in 0..100 {
            m.append(&v.call(V::add, &i).unwrap(), op).unwrap();
        }
    };
    let t = Instant::now();
    let (report, _) = Xme::new()
        .pnum(3)
        .print_in_screen(false)
        .gfuns(
            &xmem,
            (
                Job::with_context(|ctx: &mut Context<Manager>, ()| guard.serve(ctx), ()),
                Job::with_context(child, Array::new(0..10i64)),
            ),
        )
        .unwrap();
    let report = report.into_result().unwrap().remove(0);
    assert_eq!(report.stopped, StopReason::RunEnded);
    assert_eq!(report.executed, 1000);
    assert!(t.elapsed() < Duration::from_secs(5));
    assert_eq!(v.get(&xmem).unwrap().value, 4500);

    // On its own, an idle Guard ends after ExitTime.
    let t = Instant::now();
    let r = Guard::new()
        .exit_time(Duration::from_millis(100))
        .run(&xmem)
        .unwrap();
    assert_eq!(r.stopped, StopReason::ExitTime);
    assert!(t.elapsed() >= Duration::from_millis(100));
    assert!(t.elapsed() < Duration::from_secs(2));
}

#[test]
fn heartbeats_keep_the_guard_and_a_killed_child_does_not() {
    let _s = serial();
    let xmem = XmemBuilder::new().build().unwrap();
    let exit = Duration::from_millis(300);
    let guard_proc = fork_child(|| {
        let r = Guard::new().exit_time(exit).run(&xmem).unwrap();
        i32::from(r.stopped != StopReason::ExitTime)
    })
    .unwrap();
    // A child beats for a second (> ExitTime), then is killed mid-beat.
    let child = fork_child(|| {
        let op = xmem.alloc_operator();
        let mut hj = HeartJump::new(op, &xmem, Duration::from_millis(50));
        hj.start().unwrap();
        std::thread::sleep(Duration::from_secs(60));
        0
    })
    .unwrap();
    std::thread::sleep(Duration::from_secs(1));
    let mut guard_proc = guard_proc;
    assert!(
        guard_proc.try_wait().unwrap().is_none(),
        "the Guard ended while a heartbeat was alive"
    );
    let beats = xmem.statuses().unwrap();
    assert_eq!(beats.len(), 1);
    assert_eq!(beats.values().next().unwrap().status, "alive");
    child.kill().unwrap();
    let t = Instant::now();
    let fate = guard_proc.wait_mut().unwrap();
    assert!(fate.is_success(), "{fate:?}");
    assert!(t.elapsed() < Duration::from_secs(3));
    no_children_left();
}

fn add_pair(_m: &Manager, (a, b): (i64, i64)) -> i64 {
    a + b
}

#[test]
fn an_unrelated_process_appends_named_calls_and_cannot_send_pointers() {
    let _s = serial();
    let n = format!("xme-guard-test-{}", std::process::id());
    let xmem = XmemBuilder::new().named(&n).build().unwrap();
    xmem.register("add", |_m: &Manager, (a, b): (i64, i64)| a + b)
        .unwrap();
    let guard = Guard::new().spawn(&xmem).unwrap();
    let out =
        xme_test_support::run_test_helper("helper_attached_producer", &[("XME_TEST_REGION", &n)]);
    assert!(out.status.success(), "{}", xme_test_support::text(&out));
    assert_eq!(xmem.get::<i64>("sum").unwrap(), 4950);
    // A forked child that attached by name is outside the fork family too.
    let child = fork_child(|| {
        let attached = Manager::attach(&n).unwrap();
        let op = attached.alloc_operator();
        let e = attached
            .append(&Call::function(add_pair, &(1, 2)).unwrap(), op)
            .unwrap_err();
        i32::from(!matches!(e, ShmError::ForeignFunction))
    })
    .unwrap();
    assert!(child.wait().unwrap().is_success());
    assert!(guard.stop(WAIT).unwrap());
    drop(xmem);
    assert!(!std::path::Path::new("/dev/shm").join(&n).exists());
    assert!(SharedRegion::open_named(&n, 0).is_err());
}

/// Run by `an_unrelated_process_appends_named_calls_and_cannot_send_pointers`.
#[test]
#[ignore = "helper: run by another test in its own process"]
fn helper_attached_producer() {
    let n = std::env::var("XME_TEST_REGION").unwrap();
    let xmem = Manager::attach(&n).unwrap();
    let op = xmem.alloc_operator();
    let add = xmem.named::<(i64, i64), i64>("add").unwrap();
    let mut sum = 0;
    for i in 0..100 {
        xmem.append(&add.call(&(sum, i)).unwrap(), op).unwrap();
        sum = xmem.get_result(op, WAIT).unwrap();
    }
    xmem.set("sum", &sum).unwrap();
    assert!(matches!(
        xmem.append(&Call::function(add_pair, &(1, 2)).unwrap(), op),
        Err(ShmError::ForeignFunction)
    ));
    assert!(matches!(
        xmem.named::<u8, u8>("missing"),
        Err(ShmError::UnknownFunction { .. })
    ));
}

#[test]
fn mailboxes_are_freed_by_taken_results_and_clean_and_reused_from_dead_processes() {
    let _s = serial();
    let xmem = XmemBuilder::new().mailboxes(4).build().unwrap();
    let guard = Guard::new().spawn(&xmem).unwrap();
    // Dead processes that left a result waiting: their mailboxes are taken over.
    for _ in 0..20 {
        let child = fork_child(|| {
            let op = xmem.alloc_operator();
            let t = xmem
                .append(&Call::table_set("k", &1u8).unwrap(), op)
                .unwrap();
            while xmem.get_buffers().results.iter().all(|r| r.0 != t.operator) {
                std::thread::yield_now();
            }
            0 // exits without taking it
        })
        .unwrap();
        assert!(child.wait().unwrap().is_success());
    }
    // Taken results free their mailboxes: far more operators than mailboxes.
    for _ in 0..200 {
        let op = xmem.alloc_operator();
        xmem.append(&Call::table_set("k", &1u8).unwrap(), op)
            .unwrap();
        xmem.get_result::<()>(op, WAIT).unwrap();
    }
    // Four results left waiting in this live process hold every mailbox.
    let waiting: Vec<_> = (0..4)
        .map(|_| {
            let op = xmem.alloc_operator();
            xmem.append(&Call::table_set("k", &1u8).unwrap(), op)
                .unwrap();
            op
        })
        .collect();
    while xmem.get_buffers().results.len() < 4 {
        std::thread::yield_now();
    }
    let op = xmem.alloc_operator();
    let e = xmem
        .append(&Call::table_set("k", &1u8).unwrap(), op)
        .unwrap_err();
    assert!(matches!(e, ShmError::MailboxesFull { mailboxes: 4 }), "{e}");
    // Taking one result, and cleaning another, free two.
    xmem.get_result::<()>(waiting[0], WAIT).unwrap();
    xmem.clean(waiting[1]).unwrap();
    for _ in 0..2 {
        let op = xmem.alloc_operator();
        xmem.append(&Call::table_set("k", &1u8).unwrap(), op)
            .unwrap();
    }
    let e = xmem
        .append(&Call::table_set("k", &1u8).unwrap(), op)
        .unwrap_err();
    assert!(matches!(e, ShmError::MailboxesFull { mailboxes: 4 }), "{e}");
    assert!(matches!(
        xmem.get_result::<()>(waiting[1], WAIT),
        Err(ShmError::NoCallPending { .. })
    ));
    assert!(guard.stop(WAIT).unwrap());
}

#[test]
fn verbose_status_lines_and_a_script_beside_the_loop() {
    let _s = serial();
    let xmem = XmemBuilder::new().build().unwrap();
    let log = std::env::temp_dir().join(format!("xme-guard-verbose-{}.log", std::process::id()));
    let _ = std::fs::remove_file(&log);
    let logger = xme_log::Logger::new().screen(false).logfile(&log).unwrap();
    let report = Guard::new()
        .exit_time(Duration::from_millis(150))
        .verbose_time(Duration::from_millis(20))
        .logger(logger)
        .script(|m: &Manager| {
            m.set("script ran in", &process::current_pid()).unwrap();
        })
        .run(&xmem)
        .unwrap();
    assert_eq!(report.stopped, StopReason::ExitTime);
    assert_eq!(
        xmem.get::<u32>("script ran in").unwrap(),
        process::current_pid()
    );
    let text = std::fs::read_to_string(&log).unwrap();
    let lines = text
        .lines()
        .filter(|l| l.contains("Guard: 0 calls pending"))
        .count();
    assert!(lines >= 3, "{text}");
    let _ = std::fs::remove_file(&log);
}

/// What a forged pointer call would make the Guard run, if it ran it.
fn evil_trampoline(m: &Manager, _f: u64, _object: &str, _args: &[u8]) -> Result<Vec<u8>, String> {
    m.set("jumped", &true).map_err(|e| e.to_string())?;
    Ok(Vec::new())
}

#[test]
fn a_pointer_call_forged_outside_the_fork_family_never_runs() {
    let _s = serial();
    let n = format!("xme-forge-test-{}", std::process::id());
    let xmem = XmemBuilder::new().named(&n).build().unwrap();
    let guard = Guard::new().spawn(&xmem).unwrap();
    // A child that attached by name has the same addresses (a fork) but not
    // the family key: it tries every word it can read in the region as a tag.
    let child = fork_child(|| {
        let attached = Manager::attach(&n).unwrap();
        let op = attached.alloc_operator();
        let words = attached.region().payload_len().min(64 * 1024) / 8;
        let region: &[std::sync::atomic::AtomicU64] = attached.region().slice(0, words).unwrap();
        let mut tags: Vec<u64> = region
            .iter()
            .map(|w| w.load(std::sync::atomic::Ordering::Relaxed))
            .collect();
        tags.sort_unstable();
        tags.dedup();
        let evil = evil_trampoline as fn(&Manager, u64, &str, &[u8]) -> _ as usize;
        for tag in tags {
            attached
                .append_forged_pointer_call(evil, evil, tag, op)
                .unwrap();
            match attached.get_result::<()>(op, WAIT) {
                Err(ShmError::CallFailed { message, .. }) if message.contains("does not check") => {
                }
                other => {
                    eprintln!("tag {tag:#x}: {other:?}");
                    return 1;
                }
            }
        }
        0
    })
    .unwrap();
    assert!(child.wait().unwrap().is_success());
    assert_eq!(xmem.get::<bool>("jumped").ok(), None, "the Guard jumped");
    // The family's own pointer calls still run.
    let op = xmem.alloc_operator();
    xmem.append(&Call::function(add_pair, &(2, 3)).unwrap(), op)
        .unwrap();
    assert_eq!(xmem.get_result::<i64>(op, WAIT).unwrap(), 5);
    assert!(guard.stop(WAIT).unwrap());
}
